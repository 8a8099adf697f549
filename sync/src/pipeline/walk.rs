//! The index diff: descend from the root only into directories whose node id changed since
//! the applied version, fetching the nodes not yet held locally, one level per round.
//!
//! Every node is checked against its id before it is used (`open_with_bytes`). A hostile
//! index cannot make the walk explode: [`Bounds`] refuses a tree with more than eight times
//! as many directories or entries as distinct ones (plus 100,000 and 1,000,000), and no
//! path the sync writes may be longer than [`MAX_PATH`] with the mirror's own path.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use pulpdist_format::{
    EntryKind, Node, NodeId, NodeRef, PackId, TreeFiles, MAX_RESOLVE_READ, MAX_TREE_RESOLVED_CHUNKS,
};

use crate::error::SyncError;
use crate::ranges::coalesce;
use crate::state::State;
use crate::store::{falls_through, first_ok, StoreReader};

/// A directory whose content changed (or is unknown): its new and old node ids. The nodes
/// themselves stay in the node cache until the planner reads them, one directory at a time.
pub(crate) struct DirChange {
    pub(crate) rel: PathBuf,
    pub(crate) old: Option<NodeId>,
    pub(crate) new: NodeId,
}

/// Walks the changed part of the index. `mem_packs` holds index packs fetched whole.
/// `base_len` is the length of the mirror's own path: with it, no path the sync writes
/// may pass [`MAX_PATH`].
pub(crate) fn changed_dirs(
    reader: &dyn StoreReader,
    state: &State,
    old_root: Option<NodeId>,
    new_root: NodeRef,
    mem_packs: &HashMap<PackId, Vec<u8>>,
    max_gap: u64,
    base_len: usize,
) -> Result<Vec<DirChange>, SyncError> {
    let mut changes = Vec::new();
    if old_root == Some(new_root.id) {
        return Ok(changes);
    }
    let mut frontier: Vec<(PathBuf, Option<NodeId>, NodeRef)> =
        vec![(PathBuf::new(), old_root, new_root)];
    let mut bounds = Bounds {
        base: base_len,
        ..Bounds::default()
    };
    while !frontier.is_empty() {
        let mut seen = HashSet::new();
        let missing: Vec<NodeRef> = frontier
            .iter()
            .map(|f| f.2)
            .filter(|r| seen.insert(r.id) && !state.has_node(&r.id))
            .collect();
        fetch_nodes(reader, state, &missing, mem_packs, max_gap)?;
        let mut next = Vec::new();
        for (rel, old_id, new_ref) in frontier {
            let new = state
                .node(&new_ref.id)
                .ok_or_else(|| state.lost_node(&new_ref.id))?;
            bounds.reach(&rel, new_ref.id, &new)?;
            let old = old_id.and_then(|id| state.node(&id));
            for e in new.entries() {
                if let EntryKind::Dir { node } = &e.kind {
                    let old_child = old
                        .as_ref()
                        .and_then(|o| o.get(e.name.as_bytes()))
                        .and_then(|oe| match &oe.kind {
                            EntryKind::Dir { node } => Some(node.id),
                            _ => None,
                        });
                    if old_child == Some(node.id) {
                        continue;
                    }
                    // Counted before it is queued: a wide node named many times is refused
                    // before its children fill memory.
                    bounds.queue()?;
                    next.push((rel.join(e.name.to_os_string()), old_child, *node));
                }
            }
            changes.push(DirChange {
                rel,
                old: old_id,
                new: new_ref.id,
            });
        }
        frontier = next;
    }
    Ok(changes)
}

/// The longest path written into a mirror, in bytes (PATH_MAX less the terminating NUL).
pub(crate) const MAX_PATH: usize = 4095;

/// Limits on what a (validly signed) index can make a sync walk. Identical directories
/// share one node, so a 6 kB index whose nodes all name the same child spans 10⁷ paths: a
/// directory reached many more times than there are distinct directories is such a bomb.
/// Real trees repeat a node now and then (empty directories, identical copies), never by
/// orders of magnitude.
#[derive(Default)]
struct Bounds {
    /// Length of the mirror's own path.
    base: usize,
    distinct: HashSet<NodeId>,
    distinct_entries: u64,
    /// Directories queued (the root counts as one).
    dirs: u64,
    entries: u64,
}

fn refuse(reason: String) -> SyncError {
    SyncError::Format {
        object: "the tree's index".into(),
        source: pulpdist_format::FormatError::Invalid {
            what: "index",
            reason,
        },
    }
}

impl Bounds {
    /// Directories, and entries, reached beyond this many per distinct one (plus a margin).
    const REPEAT: u64 = 8;
    const DIR_MARGIN: u64 = 100_000;
    const ENTRY_MARGIN: u64 = 1_000_000;

    fn check(&self) -> Result<(), SyncError> {
        let distinct = self.distinct.len().max(1) as u64;
        if self.dirs > Self::REPEAT * distinct + Self::DIR_MARGIN
            || self.entries > Self::REPEAT * self.distinct_entries + Self::ENTRY_MARGIN
        {
            return Err(refuse(format!(
                "{} directories and {} entries reached from {} distinct directories: the same directories repeated to blow the tree up; refused before anything is written",
                self.dirs,
                self.entries,
                self.distinct.len()
            )));
        }
        Ok(())
    }

    /// One more directory to visit.
    fn queue(&mut self) -> Result<(), SyncError> {
        self.dirs += 1;
        self.check()
    }

    fn reach(
        &mut self,
        rel: &std::path::Path,
        id: NodeId,
        node: &pulpdist_format::Node,
    ) -> Result<(), SyncError> {
        let n = node.entries().len() as u64;
        self.entries += n;
        if self.distinct.insert(id) {
            self.distinct_entries += n;
        }
        self.check()?;
        let base = self.base + 1 + rel.as_os_str().len();
        if let Some(e) = node
            .entries()
            .iter()
            .find(|e| base + 1 + e.name.as_bytes().len() > MAX_PATH)
        {
            return Err(refuse(format!(
                "{}/{}: a path longer than {MAX_PATH} bytes; refused before anything is written",
                rel.display(),
                String::from_utf8_lossy(e.name.as_bytes())
            )));
        }
        Ok(())
    }
}

/// Resolves the composite files of the changed directories against the new tree
/// (FORMAT.md 5.2): each file part's file is found by path (the nodes on the way fetched
/// unless held, each verified), and the resolved node stands for the stored one for the
/// rest of the sync ([`State::set_resolved`]). A part that names no plain file of the tree,
/// or resolves to other chunks than its entry records, refuses the tree.
pub(crate) fn resolve_composites(
    reader: &dyn StoreReader,
    state: &State,
    root: NodeRef,
    dirs: &[DirChange],
    mem_packs: &HashMap<PackId, Vec<u8>>,
    max_gap: u64,
) -> Result<(), SyncError> {
    let refused = |c: &DirChange, reason: String| SyncError::Format {
        object: format!("index node {} of '{}'", c.new, c.rel.display()),
        source: pulpdist_format::FormatError::Invalid {
            what: "composite file",
            reason,
        },
    };
    // Bounds on a hostile index: the chunks held for all composite files, and the index
    // bytes read to find the files they name.
    let mut chunks_left = MAX_TREE_RESOLVED_CHUNKS;
    let read_left = std::cell::Cell::new(MAX_RESOLVE_READ);
    let mut files = None;
    for c in dirs {
        let node = state
            .stored_node(&c.new)
            .ok_or_else(|| state.lost_node(&c.new))?;
        if !node.has_composites() {
            continue;
        }
        let files = files.get_or_insert_with(|| {
            TreeFiles::new(root, |r: &NodeRef| -> Result<Node, SyncError> {
                let left = read_left.get().checked_sub(u64::from(r.loc.raw_len));
                read_left.set(left.ok_or_else(|| SyncError::Format {
                    object: format!("index node {}", r.id),
                    source: pulpdist_format::FormatError::Invalid {
                        what: "composite file",
                        reason: format!(
                            "finding the files composite files name reads more than {MAX_RESOLVE_READ} bytes of index nodes"
                        ),
                    },
                })?);
                if !state.has_node(&r.id) {
                    fetch_nodes(reader, state, &[*r], mem_packs, max_gap)?;
                }
                // As stored: a part never names a composite file, resolved or not.
                state.stored_node(&r.id).ok_or_else(|| state.lost_node(&r.id))
            })
        });
        let resolved = node
            .resolve_files(|path| files.lookup(path))?
            .map_err(|source| SyncError::Format {
                object: format!("index node {} of '{}'", c.new, c.rel.display()),
                source,
            })?;
        chunks_left = chunks_left.checked_sub(resolved.chunks()).ok_or_else(|| {
            refused(
                c,
                format!("the tree's composite files resolve to more than {MAX_TREE_RESOLVED_CHUNKS} chunks"),
            )
        })?;
        state.set_resolved(c.new, resolved);
    }
    Ok(())
}

/// Resolves the composite files of the changed directories' old nodes against the applied
/// tree, from the node cache only: an old image then counts as known on disk (not read
/// again to find what it holds) and lends its chunks. Best effort: a node missing from the
/// cache, or anything that does not resolve, leaves that old node as stored (it is only a
/// local source).
pub(crate) fn resolve_old_composites(state: &State, root: NodeRef, dirs: &[DirChange]) {
    let read_left = std::cell::Cell::new(MAX_RESOLVE_READ);
    let mut chunks_left = MAX_TREE_RESOLVED_CHUNKS;
    let mut files = TreeFiles::new(root, |r: &NodeRef| -> Result<Node, ()> {
        read_left.set(
            read_left
                .get()
                .checked_sub(u64::from(r.loc.raw_len))
                .ok_or(())?,
        );
        state.stored_node(&r.id).ok_or(())
    });
    for c in dirs {
        let Some(old) = c.old.filter(|old| *old != c.new) else {
            continue;
        };
        let Some(node) = state.stored_node(&old).filter(Node::has_composites) else {
            continue;
        };
        match node.resolve_files(|path| files.lookup(path)) {
            Ok(Ok(resolved)) if resolved.chunks() <= chunks_left => {
                chunks_left -= resolved.chunks();
                state.set_resolved(old, resolved);
            }
            _ => {
                tracing::debug!(node = %old, dir = %c.rel.display(), "an old composite file does not resolve; left as stored")
            }
        }
    }
}

fn fetch_nodes(
    reader: &dyn StoreReader,
    state: &State,
    refs: &[NodeRef],
    mem_packs: &HashMap<PackId, Vec<u8>>,
    max_gap: u64,
) -> Result<(), SyncError> {
    let mut by_pack: HashMap<PackId, Vec<NodeRef>> = HashMap::new();
    // Of a list of stores, a node a whole index pack holds damaged is fetched on its own
    // (from the next store); one store is not asked again.
    let more_stores = reader.per_store().len() > 1;
    for r in refs {
        if let Some(bytes) = mem_packs.get(&r.loc.pack) {
            match slice(bytes, 0, r.loc.range(), reader, &r.loc.pack)
                .and_then(|stored| store_node(state, r, stored))
            {
                Ok(()) => continue,
                Err(e) if more_stores && falls_through(&e) => {}
                Err(e) => return Err(e),
            }
        }
        by_pack.entry(r.loc.pack).or_default().push(*r);
    }
    for (pack, nodes) in by_pack {
        let ranges = coalesce(nodes.iter().map(|n| n.loc.range()).collect(), max_gap);
        for range in ranges {
            first_ok(reader, |s| {
                let bytes = s.get_range(&pack, range.clone())?;
                for n in nodes
                    .iter()
                    .filter(|n| range.start <= n.loc.offset && n.loc.range().end <= range.end)
                {
                    let stored = slice(&bytes, range.start, n.loc.range(), s, &pack)?;
                    store_node(state, n, stored)?;
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

fn store_node(state: &State, r: &NodeRef, stored: &[u8]) -> Result<(), SyncError> {
    let (_, plain) = r
        .open_with_bytes(stored)
        .map_err(|source| SyncError::Format {
            object: format!("index node {} in {}", r.id, r.loc.pack.object_key()),
            source,
        })?;
    state.put_node(&r.id, &plain)
}

/// The bytes of `want` inside a buffer that starts at pack offset `base`.
pub(crate) fn slice<'a>(
    buf: &'a [u8],
    base: u64,
    want: std::ops::Range<u64>,
    reader: &dyn StoreReader,
    pack: &PackId,
) -> Result<&'a [u8], SyncError> {
    let start = want.start.checked_sub(base);
    let end = want.end.checked_sub(base);
    match (start, end) {
        (Some(s), Some(e)) if e as usize <= buf.len() => Ok(&buf[s as usize..e as usize]),
        _ => Err(SyncError::Short {
            store: reader.describe(),
            object: pack.object_key(),
            got: buf.len() as u64,
            wanted: want.end - base,
        }),
    }
}
