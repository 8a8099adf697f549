//! Rewriting sparse packs (`gc --max-unused PERCENT --key KEY`): a pack whose unreached
//! share is above the limit has its reached objects copied into new packs, and the kept
//! versions that reach it are re-encoded to name the copies, so that nothing kept reaches
//! the old pack and the next runs remove it.
//!
//! A node names its chunks and children by location, so a version whose objects move has
//! a new root, and its head must be signed again (the tree's key is needed). The current
//! version is not re-signed in place (a site holding it would see one version with two
//! roots, which it refuses as equivocation): it is published again as the next version,
//! with the same content, the same filter rules and delta list, and the new packs listed
//! as that version's. Every kept version keeps its number; its archived head is replaced
//! by one naming the new root (the current version's too: `heads/<tree>` moves on). Objects are copied as stored (each chunk
//! checked against its id on the way), nodes re-encoded only where a location changed.
//!
//! Order, so that a kill at any point leaves every version whole: the new data packs,
//! then the index pack, then the archived heads, then the next version's head (a
//! compare-and-swap against the head the gc read: a publish that got there first wins,
//! and its tree is left for the next run), then its archived copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use pulpdist_chunker::Compressor;
use pulpdist_format::pack::{ObjectKind, PackBuilder};
use pulpdist_format::{
    ChunkRef, Entry, EntryKind, Head, Location, Node, NodeId, NodeRef, PackId, PackInfo, PackKind,
    SecretKey, VerifiedChunk, VersionPacks, MAX_HEAD_SIZE, MAX_NODE_SIZE,
};
use pulpdist_publish::{ListedPack, PublishError, Store};

use crate::error::GcError;
use crate::reach::Reach;
use crate::survey::Tree;

/// How sparse packs are rewritten.
#[derive(Clone)]
pub struct Repack {
    /// A pack whose unreached bytes are more than this percentage of it is rewritten.
    pub max_unused: u8,
    /// The trees' signing key.
    pub key: std::sync::Arc<SecretKey>,
    /// Data packs close at about this size.
    pub pack_size: u64,
}

impl std::fmt::Debug for Repack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repack")
            .field("max_unused", &self.max_unused)
            .field("key", &self.key.public())
            .field("pack_size", &self.pack_size)
            .finish()
    }
}

/// What a rewrite did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repacked {
    /// The sparse packs found, and their bytes.
    pub sparse: Vec<(PackId, u64)>,
    /// Bytes of reached objects copied into new packs.
    pub bytes_copied: u64,
    /// New packs written.
    pub packs_written: Vec<PackInfo>,
    /// Versions re-encoded: (tree, old version, version now naming the new root).
    pub versions: Vec<(String, u64, u64)>,
    /// Trees left for a later run, and why.
    pub skipped: Vec<(String, String)>,
}

/// The packs more than `max_unused` percent unreached (delta packs are reached whole).
pub(crate) fn sparse(packs: &[ListedPack], reach: &Reach, max_unused: u8) -> Vec<(PackId, u64)> {
    packs
        .iter()
        .filter_map(|l| {
            let live = *reach.live.get(&l.id)?;
            let unused = l.size.saturating_sub(live);
            (unused * 100 > u64::from(max_unused) * l.size).then_some((l.id, l.size))
        })
        .collect()
}

/// Copies what the kept versions of `trees` reach in `sparse` packs into new packs and
/// re-signs the versions that reached them.
pub(crate) fn rewrite(
    store: &dyn Store,
    trees: &[Tree],
    sparse: &[(PackId, u64)],
    opts: &Repack,
    now: i64,
    state_dir: &Path,
    progress: &pulpdist_progress::Reporter,
) -> Result<Repacked, GcError> {
    let mut out = Repacked {
        sparse: sparse.to_vec(),
        ..Repacked::default()
    };
    let sparse_ids: HashSet<PackId> = sparse.iter().map(|(id, _)| *id).collect();
    let heads: Vec<(&Tree, u64, &Head)> = trees
        .iter()
        .flat_map(|t| {
            t.retained
                .iter()
                .filter_map(move |v| Some((t, *v, t.versions.get(v)?.head()?)))
        })
        .collect();
    // Pass 1: the chunks in sparse packs that kept versions reach.
    let mut wanted: BTreeMap<PackId, BTreeMap<u64, ChunkRef>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (_, _, h) in &heads {
        collect(store, h.root, &sparse_ids, &mut seen, &mut wanted)?;
    }
    // Where the store builds packs (its own tmp/ for a directory: the same file system).
    let tmp = store.tmp_dir().unwrap_or_else(|| state_dir.join("repack"));
    fs::create_dir_all(&tmp).map_err(|source| io(&tmp, source))?;
    let mut w = Writer::new(store, tmp, opts.pack_size)?;
    // Pass 2: copy them, pack by pack, each read once.
    let size_of = |pack: &PackId| sparse.iter().find(|(id, _)| id == pack).map_or(0, |s| s.1);
    let total: u64 = wanted.keys().map(size_of).sum();
    progress.start("repack", wanted.len() as u64, total);
    for (pack, chunks) in &wanted {
        let size = size_of(pack);
        let bytes = store.read_pack_range(*pack, 0..size)?;
        progress.advance(1, size);
        for (offset, c) in chunks {
            let stored = bytes
                .get(c.loc.range().start as usize..c.loc.range().end as usize)
                .ok_or_else(|| {
                    unreadable(store, pack, format!("shorter than chunk at {offset}"))
                })?;
            VerifiedChunk::from_stored(c.id, c.loc.codec, stored, c.loc.raw_len)
                .map_err(|e| unreadable(store, pack, format!("chunk at {offset}: {e}")))?;
            let loc = w.chunk(c, stored)?;
            w.moved.insert((*pack, *offset), loc);
            out.bytes_copied += stored.len() as u64;
        }
    }
    progress.finish();
    // Pass 3: every kept version's nodes, re-encoded where a location changed.
    let mut roots = Vec::with_capacity(heads.len());
    for (t, v, h) in &heads {
        roots.push((*t, *v, *h, w.node(h.root, &sparse_ids)?));
    }
    let packs = w.finish()?;
    out.packs_written = packs.clone();
    // The heads, tree by tree.
    for t in trees {
        let mine: Vec<_> = roots
            .iter()
            .filter(|(x, _, h, root)| x.name == t.name && *root != h.root)
            .collect();
        if mine.is_empty() {
            continue;
        }
        match resign(store, t, &mine, &packs, opts, now, state_dir)? {
            Ok(done) => out.versions.extend(done),
            Err(why) => out.skipped.push((t.name.clone(), why)),
        }
    }
    Ok(out)
}

type Rewritten<'a> = (&'a Tree, u64, &'a Head, NodeRef);

/// The versions a tree's rewrite re-signed (tree, old version, version now), or why the
/// tree was left for a later run.
type Outcome = Result<Vec<(String, u64, u64)>, String>;

/// Signs the kept versions of one tree again: older ones in place (archived heads), the
/// current one as the next version. `Err(why)` when the tree is left for a later run.
fn resign(
    store: &dyn Store,
    tree: &Tree,
    versions: &[&Rewritten<'_>],
    packs: &[PackInfo],
    opts: &Repack,
    now: i64,
    state_dir: &Path,
) -> Result<Outcome, GcError> {
    let name = &tree.name;
    let object = |key: &str| format!("{}/{key}", store.describe());
    // The tree's publish lock on a directory store (a publish running: next time); on an
    // object store the head's compare-and-swap is what keeps a publish and the gc apart.
    let lock_dir = state_dir.join("trees");
    fs::create_dir_all(&lock_dir).map_err(|source| io(&lock_dir, source))?;
    let _lock = match store.lock(name, &lock_dir) {
        Ok(l) => l,
        Err(PublishError::Locked { holder, .. }) => {
            return Ok(Err(format!("its publish lock is held{holder}")))
        }
        Err(e) => return Err(e.into()),
    };
    let Some(stored) = store.read_head(name)? else {
        return Ok(Err("its head is gone".into()));
    };
    let (current, signer, _) =
        Head::decode_unverified(&stored.bytes).map_err(|e| GcError::Unreadable {
            object: object(&format!("heads/{name}")),
            reason: e.to_string(),
        })?;
    if signer != opts.key.public() {
        return Ok(Err(format!(
            "its head is signed by {signer}, not by the key given"
        )));
    }
    let mut done = Vec::new();
    let sign = |h: &Head| {
        h.sign(&opts.key).map_err(|source| PublishError::Format {
            object: object(&format!("heads/{name}")),
            source,
        })
    };
    // Every version's archived head names its new root (the current one's too: its
    // objects are then all reached through the new packs; sites holding it move on to
    // the next version below, never to the same version with another root).
    for (_, v, old, root) in versions.iter() {
        let head = Head {
            root: *root,
            ..(*old).clone()
        };
        let key = pulpdist_format::history_key(name, *v);
        store.replace_object(&key, &sign(&head)?)?;
        pulpdist_failpoint::hit("gc.repack_history");
        if *v != current.version {
            done.push((name.clone(), *v, *v));
        }
    }
    let Some((_, _, old, root)) = versions.iter().find(|(_, v, _, _)| *v == current.version) else {
        return Ok(Ok(done));
    };
    let next = current.version.checked_add(1).ok_or_else(|| {
        GcError::BadPolicy(format!("tree '{name}' is at the last version number"))
    })?;
    let mut recent = vec![VersionPacks {
        version: next,
        packs: packs.to_vec(),
    }];
    recent.extend(old.recent.iter().cloned());
    recent.truncate(old.recent.len().max(1));
    let head = Head {
        version: next,
        created: now,
        expires: now.saturating_add(old.expires.saturating_sub(old.created)),
        root: *root,
        recent,
        ..(*old).clone()
    };
    let bytes = sign(&head)?;
    if bytes.len() > MAX_HEAD_SIZE {
        return Ok(Err("its next head would be too large".into()));
    }
    pulpdist_failpoint::hit("gc.repack_head");
    match store.put_head(name, &bytes, Some(&stored), Some(current.version)) {
        Ok(()) => {}
        Err(PublishError::HeadChanged { .. }) => {
            return Ok(Err("a publish wrote its head meanwhile".into()))
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = store.put_history(name, next, &bytes) {
        tracing::warn!(tree = %name, version = next, error = %e, "the repacked version could not be archived; the next publish archives it");
    }
    done.push((name.clone(), current.version, next));
    Ok(Ok(done))
}

/// Every chunk in a sparse pack that the nodes under `root` name.
fn collect(
    store: &dyn Store,
    root: NodeRef,
    sparse: &HashSet<PackId>,
    seen: &mut HashSet<NodeId>,
    wanted: &mut BTreeMap<PackId, BTreeMap<u64, ChunkRef>>,
) -> Result<(), GcError> {
    let mut todo = vec![root];
    while let Some(r) = todo.pop() {
        if !seen.insert(r.id) {
            continue;
        }
        for e in read_node(store, &r)?.entries() {
            match &e.kind {
                EntryKind::Dir { node } => todo.push(*node),
                EntryKind::File { chunks, .. } => {
                    for c in chunks.iter().filter(|c| sparse.contains(&c.loc.pack)) {
                        wanted
                            .entry(c.loc.pack)
                            .or_default()
                            .insert(c.loc.offset, *c);
                    }
                }
                EntryKind::Symlink { .. } => {}
            }
        }
    }
    Ok(())
}

fn read_node(store: &dyn Store, r: &NodeRef) -> Result<Node, GcError> {
    let bad = |reason: String| GcError::Unreadable {
        object: format!(
            "{}/{} (index node {})",
            store.describe(),
            r.loc.pack.object_key(),
            r.id
        ),
        reason,
    };
    r.loc
        .validate("index node", MAX_NODE_SIZE)
        .map_err(|e| bad(e.to_string()))?;
    let stored = store.read_pack_range(r.loc.pack, r.loc.range())?;
    r.open(&stored).map_err(|e| bad(e.to_string()))
}

/// The new packs: data packs (closed at about `pack_size`), then one index pack.
struct Writer<'a> {
    store: &'a dyn Store,
    tmp: PathBuf,
    pack_size: u64,
    data: Option<Open>,
    index: Option<Open>,
    written: Vec<PackInfo>,
    comp: Compressor,
    /// (old pack, old offset) → where the chunk is now.
    moved: HashMap<(PackId, u64), Location>,
    /// Old node id → the node that replaces it.
    nodes: HashMap<NodeId, NodeRef>,
}

struct Open {
    builder: PackBuilder,
    file: File,
    path: PathBuf,
}

impl<'a> Writer<'a> {
    fn new(store: &'a dyn Store, tmp: PathBuf, pack_size: u64) -> Result<Self, GcError> {
        let comp = Compressor::new(pulpdist_chunker::DEFAULT_ZSTD_LEVEL).map_err(|e| {
            GcError::Store(PublishError::Compressor {
                what: "index nodes",
                detail: e.to_string(),
            })
        })?;
        Ok(Writer {
            store,
            tmp,
            pack_size,
            data: None,
            index: None,
            written: Vec::new(),
            comp,
            moved: HashMap::new(),
            nodes: HashMap::new(),
        })
    }

    fn open(&self) -> Result<Open, GcError> {
        let id = PackId::random().map_err(|source| PublishError::Format {
            object: "a new pack id".into(),
            source,
        })?;
        let path = self.tmp.join(format!("{}.pack.part", id.to_hex()));
        let mut file = File::create(&path).map_err(|source| io(&path, source))?;
        let (builder, header) = PackBuilder::new(id);
        file.write_all(&header)
            .map_err(|source| io(&path, source))?;
        Ok(Open {
            builder,
            file,
            path,
        })
    }

    fn chunk(&mut self, c: &ChunkRef, stored: &[u8]) -> Result<Location, GcError> {
        if self
            .data
            .as_ref()
            .is_some_and(|o| o.builder.len() + stored.len() as u64 > self.pack_size)
        {
            self.close(PackKind::Data)?;
        }
        if self.data.is_none() {
            self.data = Some(self.open()?);
        }
        let Some(o) = self.data.as_mut() else {
            unreachable!("opened above")
        };
        let loc = o.builder.add(
            ObjectKind::Chunk,
            c.id.0,
            c.loc.codec,
            stored.len() as u32,
            c.loc.raw_len,
        );
        o.file
            .write_all(stored)
            .map_err(|source| io(&o.path, source))?;
        Ok(loc)
    }

    /// The node replacing `r`: re-encoded if an entry's location changed, copied if it
    /// lies in a sparse pack, else `r` itself.
    fn node(&mut self, r: NodeRef, sparse: &HashSet<PackId>) -> Result<NodeRef, GcError> {
        if let Some(n) = self.nodes.get(&r.id) {
            return Ok(*n);
        }
        let node = read_node(self.store, &r)?;
        let mut changed = false;
        let mut entries: Vec<Entry> = Vec::with_capacity(node.entries().len());
        for e in node.entries() {
            let kind = match &e.kind {
                EntryKind::Dir { node } => {
                    let n = self.node(*node, sparse)?;
                    changed |= n != *node;
                    EntryKind::Dir { node: n }
                }
                EntryKind::File { size, chunks } => {
                    let mut refs = chunks.clone();
                    for c in refs.iter_mut() {
                        if let Some(loc) = self.moved.get(&(c.loc.pack, c.loc.offset)) {
                            c.loc = *loc;
                            changed = true;
                        }
                    }
                    EntryKind::File {
                        size: *size,
                        chunks: refs,
                    }
                }
                other => other.clone(),
            };
            entries.push(Entry { kind, ..e.clone() });
        }
        let out = if changed || sparse.contains(&r.loc.pack) {
            let node = Node::new(entries).map_err(|source| PublishError::Format {
                object: format!("index node {}", r.id),
                source,
            })?;
            let encoded = node.encode();
            let id = NodeId::of(&encoded);
            let stored = self.comp.compress(&encoded);
            if self.index.is_none() {
                self.index = Some(self.open()?);
            }
            let Some(o) = self.index.as_mut() else {
                unreachable!("opened above")
            };
            let loc = o.builder.add(
                ObjectKind::Node,
                id.0,
                stored.codec,
                stored.bytes.len() as u32,
                encoded.len() as u32,
            );
            o.file
                .write_all(&stored.bytes)
                .map_err(|source| io(&o.path, source))?;
            NodeRef { id, loc }
        } else {
            r
        };
        self.nodes.insert(r.id, out);
        Ok(out)
    }

    /// Ends the open pack of `kind` and puts it into the store.
    fn close(&mut self, kind: PackKind) -> Result<(), GcError> {
        let open = match kind {
            PackKind::Data => self.data.take(),
            PackKind::Index => self.index.take(),
        };
        let Some(mut o) = open else {
            return Ok(());
        };
        let id = o.builder.id();
        let (tail, size) = o.builder.finish();
        o.file
            .write_all(&tail)
            .and_then(|()| o.file.sync_all())
            .map_err(|source| io(&o.path, source))?;
        drop(o.file);
        self.store.put_pack(id, &o.path)?;
        pulpdist_failpoint::hit("gc.repack_pack");
        self.written.push(PackInfo { id, size, kind });
        Ok(())
    }

    /// Closes the data pack, then the index pack (after every chunk it names is stored).
    fn finish(mut self) -> Result<Vec<PackInfo>, GcError> {
        self.close(PackKind::Data)?;
        self.close(PackKind::Index)?;
        // Index packs first, as a head lists them.
        let mut packs = self.written;
        packs.sort_by_key(|p| p.kind != PackKind::Index);
        Ok(packs)
    }
}

fn io(path: &Path, source: std::io::Error) -> GcError {
    GcError::Store(PublishError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn unreadable(store: &dyn Store, pack: &PackId, reason: String) -> GcError {
    GcError::Unreadable {
        object: format!("{}/{}", store.describe(), pack.object_key()),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pack_is_sparse_when_more_than_the_limit_is_unreached() {
        let listed = |n: u8, size: u64| ListedPack {
            id: PackId([n; 32]),
            size,
            modified: 0,
        };
        let mut reach = Reach::default();
        reach.live.insert(PackId([1; 32]), 960);
        reach.live.insert(PackId([2; 32]), 940);
        reach.live.insert(PackId([3; 32]), 1);
        let packs = [
            listed(1, 1000),
            listed(2, 1000),
            listed(3, 1000),
            listed(4, 1000),
        ];
        // 4 % unused is within 5 %; 6 % is not; an unreached pack is for the plan.
        let got = sparse(&packs, &reach, 5);
        assert_eq!(got, [(PackId([2; 32]), 1000), (PackId([3; 32]), 1000)]);
        assert!(sparse(&packs, &reach, 100).is_empty());
    }
}
