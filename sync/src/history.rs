//! The versions of a tree, from the heads a store archives (`history/<tree>/<version>`):
//! [`log`] lists them with what each holds and added, [`diff`] compares two. Each archived
//! head is verified against the trusted keys and must name the tree and the version its key
//! says; each index node is checked against its id as in a sync.

use std::collections::{BTreeMap, HashMap};

use pulpdist_format::{EntryKind, Node, NodeId, NodeRef, SignedHead, TrustedKeys};

use crate::error::SyncError;
use crate::store::StoreReader;

/// One archived version.
#[derive(Clone, Debug)]
pub struct VersionInfo {
    /// The version.
    pub version: u64,
    /// When its head was signed (seconds since the epoch).
    pub created: i64,
    /// The key that signed it.
    pub signer: String,
    /// Its root node.
    pub root: NodeId,
    /// Files in the tree.
    pub files: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// Bytes of the packs this version added to the store.
    pub new_bytes: u64,
    /// Why this version could not be read (its archived head does not verify, or its index
    /// is damaged); the other fields are then empty.
    pub problem: Option<String>,
}

/// How a path differs between two versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Only in the newer version.
    Added,
    /// Only in the older version.
    Removed,
    /// In both, with other content (bytes, link target, or kind).
    Changed,
}

/// One path that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChange {
    /// The path, relative to the tree.
    pub path: String,
    /// How.
    pub change: Change,
    /// Its size in the older version (0 if absent or not a file).
    pub old_size: u64,
    /// Its size in the newer version.
    pub new_size: u64,
}

/// Deeper than this, an index is refused (no path can be that deep: 4,095 bytes).
const MAX_DEPTH: usize = 2_048;

/// The archived versions of `tree`, oldest first.
pub fn log(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
) -> Result<Vec<VersionInfo>, SyncError> {
    let versions = store.list_versions(tree).ok_or_else(|| {
        SyncError::Usage(format!(
            "{}: cannot list archived versions of this kind of store (use its directory or bucket)",
            store.describe()
        ))
    })??;
    let mut nodes = Nodes::default();
    let mut out = Vec::with_capacity(versions.len());
    for v in versions {
        match version_info(store, tree, v, trusted, &mut nodes) {
            Ok(info) => out.push(info),
            Err(e) if !e.is_temporary() && !matches!(e, SyncError::Http { .. }) => {
                out.push(VersionInfo {
                    version: v,
                    created: 0,
                    signer: String::new(),
                    root: NodeId([0; 32]),
                    files: 0,
                    bytes: 0,
                    new_bytes: 0,
                    problem: Some(e.to_string()),
                })
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// One version's line of the log.
fn version_info(
    store: &dyn StoreReader,
    tree: &str,
    v: u64,
    trusted: &TrustedKeys,
    nodes: &mut Nodes,
) -> Result<VersionInfo, SyncError> {
    let signed = archived(store, tree, v, trusted)?;
    let head = signed.head();
    let (files, bytes) = nodes.totals(store, &head.root, 0)?;
    let new_bytes = head
        .recent
        .iter()
        .filter(|r| r.version == v)
        .flat_map(|r| r.packs.iter())
        .map(|p| p.size)
        .sum();
    Ok(VersionInfo {
        version: v,
        created: head.created,
        signer: signed.key().to_string(),
        root: head.root.id,
        files,
        bytes,
        new_bytes,
        problem: None,
    })
}

/// The paths that differ between versions `from` and `to` of `tree`, sorted.
pub fn diff(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
    from: u64,
    to: u64,
) -> Result<Vec<PathChange>, SyncError> {
    let a = archived(store, tree, from, trusted)?.head().root;
    let b = archived(store, tree, to, trusted)?.head().root;
    let mut nodes = Nodes::default();
    let mut out = Vec::new();
    nodes.diff(store, "", Some(&a), Some(&b), 0, &mut out)?;
    out.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(out)
}

/// Version `version`'s archived head, verified, naming the tree and the version.
fn archived(
    store: &dyn StoreReader,
    tree: &str,
    version: u64,
    trusted: &TrustedKeys,
) -> Result<SignedHead, SyncError> {
    let object = format!(
        "{}/{}",
        store.describe(),
        pulpdist_format::history_key(tree, version)
    );
    let bytes = store
        .get_archived(tree, version)?
        .ok_or_else(|| SyncError::NotFound {
            store: store.describe(),
            object: object.clone(),
        })?;
    let signed =
        SignedHead::decode_and_verify(&bytes, trusted).map_err(|source| SyncError::Format {
            object: object.clone(),
            source,
        })?;
    let h = signed.head();
    if h.tree != tree || h.version != version {
        return Err(SyncError::Mismatch {
            object,
            detail: format!("holds tree '{}' version {}", h.tree, h.version),
        });
    }
    Ok(signed)
}

/// Index nodes fetched so far, and the totals of the subtrees counted so far.
#[derive(Default)]
struct Nodes {
    nodes: HashMap<NodeId, Node>,
    totals: HashMap<NodeId, (u64, u64)>,
}

impl Nodes {
    fn get(&mut self, store: &dyn StoreReader, r: &NodeRef) -> Result<Node, SyncError> {
        if let Some(n) = self.nodes.get(&r.id) {
            return Ok(n.clone());
        }
        let stored = store.get_range(&r.loc.pack, r.loc.range())?;
        let node = r.open(&stored).map_err(|source| SyncError::Format {
            object: format!("index node {} in {}", r.id, r.loc.pack.object_key()),
            source,
        })?;
        self.nodes.insert(r.id, node.clone());
        Ok(node)
    }

    /// Files and bytes under `r` (shared subtrees counted once per version, fetched once).
    fn totals(
        &mut self,
        store: &dyn StoreReader,
        r: &NodeRef,
        depth: usize,
    ) -> Result<(u64, u64), SyncError> {
        if let Some(t) = self.totals.get(&r.id) {
            return Ok(*t);
        }
        if depth > MAX_DEPTH {
            return Err(too_deep(r));
        }
        let node = self.get(store, r)?;
        let (mut files, mut bytes) = (0u64, 0u64);
        for e in node.entries() {
            match &e.kind {
                EntryKind::File { size, .. } | EntryKind::Composite { size, .. } => {
                    (files, bytes) = (files + 1, bytes.saturating_add(*size))
                }
                EntryKind::Dir { node } => {
                    let (f, b) = self.totals(store, node, depth + 1)?;
                    (files, bytes) = (files + f, bytes.saturating_add(b));
                }
                EntryKind::Symlink { .. } => {}
            }
        }
        self.totals.insert(r.id, (files, bytes));
        Ok((files, bytes))
    }

    /// The differences below `rel` between the directories `a` and `b` (either absent).
    fn diff(
        &mut self,
        store: &dyn StoreReader,
        rel: &str,
        a: Option<&NodeRef>,
        b: Option<&NodeRef>,
        depth: usize,
        out: &mut Vec<PathChange>,
    ) -> Result<(), SyncError> {
        if a.map(|r| r.id) == b.map(|r| r.id) {
            return Ok(());
        }
        if let (true, Some(r)) = (depth > MAX_DEPTH, a.or(b)) {
            return Err(too_deep(r));
        }
        let mut names: BTreeMap<Vec<u8>, [Option<pulpdist_format::Entry>; 2]> = BTreeMap::new();
        for (side, r) in [a, b].into_iter().enumerate() {
            let Some(r) = r else { continue };
            for e in self.get(store, r)?.entries() {
                names.entry(e.name.as_bytes().to_vec()).or_default()[side] = Some(e.clone());
            }
        }
        for (name, [old, new]) in names {
            let path = match rel.is_empty() {
                true => String::from_utf8_lossy(&name).into_owned(),
                false => format!("{rel}/{}", String::from_utf8_lossy(&name)),
            };
            let dir = |e: &Option<pulpdist_format::Entry>| match e.as_ref().map(|e| &e.kind) {
                Some(EntryKind::Dir { node }) => Some(*node),
                _ => None,
            };
            let (old_dir, new_dir) = (dir(&old), dir(&new));
            if old_dir.is_some() || new_dir.is_some() {
                self.diff(
                    store,
                    &path,
                    old_dir.as_ref(),
                    new_dir.as_ref(),
                    depth + 1,
                    out,
                )?;
            }
            let leaf = |e: &Option<pulpdist_format::Entry>| {
                e.clone()
                    .filter(|e| !matches!(e.kind, EntryKind::Dir { .. }))
            };
            let (old, new) = (leaf(&old), leaf(&new));
            let size = |e: &Option<pulpdist_format::Entry>| match e.as_ref().map(|e| &e.kind) {
                Some(EntryKind::File { size, .. } | EntryKind::Composite { size, .. }) => *size,
                _ => 0,
            };
            let change = match (&old, &new) {
                (None, None) => continue,
                (None, Some(_)) => Change::Added,
                (Some(_), None) => Change::Removed,
                (Some(o), Some(n)) if same_content(o, n) => continue,
                _ => Change::Changed,
            };
            out.push(PathChange {
                path,
                change,
                old_size: size(&old),
                new_size: size(&new),
            });
        }
        Ok(())
    }
}

/// Whether two entries (not directories) hold the same bytes or link target.
fn same_content(a: &pulpdist_format::Entry, b: &pulpdist_format::Entry) -> bool {
    match (&a.kind, &b.kind) {
        (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => x == y,
        (x, y) => x.same_chunks(y).unwrap_or(false),
    }
}

fn too_deep(r: &NodeRef) -> SyncError {
    SyncError::Format {
        object: format!("index node {}", r.id),
        source: pulpdist_format::FormatError::Invalid {
            what: "index",
            reason: format!("deeper than {MAX_DEPTH} levels"),
        },
    }
}
