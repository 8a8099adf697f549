//! Rewriting sparse packs (`gc --max-unused PERCENT --key KEY`): a pack whose objects are
//! more than the limit unreached has its reached objects copied into new packs, and the
//! kept versions that reach it are re-encoded to name the copies, so that nothing kept
//! reaches the old pack and the next runs remove it (FORMAT.md 8.10).
//!
//! A node names its chunks and children by location, so a version whose objects move has
//! a new root, and its head must be signed again (the tree's key is needed). The current
//! version is not re-signed in place (a site holding it would see one version with two
//! roots, which it refuses as equivocation): it is published again as the next version,
//! with the same content, filter rules and delta list, and its tree's new index pack
//! listed as that version's. Every kept version keeps its number; its archived head is
//! replaced by one naming the new root. Objects are copied as stored (each chunk checked
//! against its id on the way), nodes re-encoded only where a location changed.
//!
//! Only trees whose heads, current and archived, all verify against the key, whose
//! publish lock is free (held to the end) and that a `--tree` names (if any) are
//! rewritten; a pack any other tree's kept version reaches is not rewritten (it could not
//! be emptied).
//!
//! Order, so that a kill at any point leaves every version whole: the new data packs,
//! then the index packs, then the archived heads, then the next version's head (a
//! compare-and-swap against the head checked first: a publish that got there first wins,
//! and its tree is left for a later run), then its archived copy.

mod writer;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use pulpdist_format::pack::{self, FOOTER_LEN, HEADER_LEN};
use pulpdist_format::{
    ChunkRef, EntryKind, Head, Node, NodeId, NodeRef, PackId, PackInfo, SecretKey, SignedHead,
    TrustedKeys, VerifiedChunk, VersionPacks, MAX_HEAD_SIZE, MAX_NODE_SIZE,
};
use pulpdist_publish::Store;
use pulpdist_publish::{ListedPack, PublishError, StoreLock, StoredHead};

use crate::error::GcError;
use crate::reach::Reach;
use crate::survey::Tree;
use writer::Writer;

/// A sparse pack larger than this is copied from chunk by chunk, not read whole.
const WHOLE_READ_LIMIT: u64 = 256 << 20;

/// How sparse packs are rewritten.
#[derive(Clone)]
pub struct Repack {
    /// A pack whose unreached bytes are more than this percentage of its objects is
    /// rewritten.
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
    /// The sparse packs rewritten (or, in a dry run, to rewrite), and their sizes.
    pub sparse: Vec<(PackId, u64)>,
    /// Bytes of reached objects copied into new packs.
    pub bytes_copied: u64,
    /// New packs written.
    pub packs_written: Vec<PackInfo>,
    /// Versions re-encoded: (tree, old version, version now naming the new root).
    pub versions: Vec<(String, u64, u64)>,
    /// Trees left out, and why.
    pub skipped: Vec<(String, String)>,
}

/// An index pack is compacted when more than this percentage of it is unreached (or more
/// than `--max-unused`, if that is higher).
const INDEX_MAX_UNUSED: u8 = 50;

/// The packs to rewrite: the data packs whose objects (header, trailer and footer left
/// out) are more than `max_unused` percent unreached; and, when any index pack is more
/// than half unreached, every index pack the kept versions reach (the whole index is
/// rewritten into one pack per tree, so that no live node stays beside dead ones: a
/// partial rewrite leaves old root paths behind and would never settle). Delta packs are
/// reached whole; unreached packs are for the plan.
pub(crate) fn sparse(
    store: &dyn Store,
    packs: &[ListedPack],
    reach: &Reach,
    max_unused: u8,
) -> Result<Vec<(PackId, u64)>, GcError> {
    let index_limit = max_unused.max(INDEX_MAX_UNUSED);
    let over = |objects: u64, live: u64, limit: u8| {
        objects.saturating_sub(live) * 100 > u64::from(limit) * objects
    };
    let mut data = Vec::new();
    let mut index_sparse = false;
    for l in packs {
        let Some(&live) = reach.live.get(&l.id) else {
            continue;
        };
        let is_index = reach.index_packs.contains(&l.id);
        let limit = if is_index { index_limit } else { max_unused };
        // The whole file first (cheap); then what its footer says its objects take.
        if l.size < HEADER_LEN + FOOTER_LEN || !over(l.size, live, limit) {
            continue;
        }
        let footer = store.read_pack_range(l.id, l.size - FOOTER_LEN..l.size)?;
        let trailer = pack::decode_footer(&footer, l.size)
            .map_err(|e| unreadable(store, &l.id, e.to_string()))?;
        if over(trailer.start.saturating_sub(HEADER_LEN), live, limit) {
            match is_index {
                true => index_sparse = true,
                false => data.push((l.id, l.size)),
            }
        }
    }
    if index_sparse {
        data.extend(
            packs
                .iter()
                .filter(|l| reach.index_packs.contains(&l.id))
                .map(|l| (l.id, l.size)),
        );
        data.sort();
    }
    Ok(data)
}

/// A tree that can be rewritten: its lock (none in a dry run), and its current head as
/// checked.
struct Eligible<'a> {
    tree: &'a Tree,
    stored: StoredHead,
    _lock: Option<StoreLock>,
}

/// What a rewrite would do, for a dry run: the sparse packs it would rewrite (those of the
/// trees it could rewrite now, their locks aside) and the trees it would leave out.
pub(crate) fn would(
    store: &dyn Store,
    trees: &[Tree],
    sparse: &[(PackId, u64)],
    opts: &Repack,
    selected: &[String],
) -> Result<Repacked, GcError> {
    let mut out = Repacked::default();
    sort_trees(store, trees, sparse, opts, selected, None, &mut out)?;
    Ok(out)
}

/// Copies what the kept versions reach in `sparse` packs into new packs and re-signs the
/// versions that reached them (of the trees `selected` names; all when empty).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rewrite(
    store: &dyn Store,
    trees: &[Tree],
    sparse: &[(PackId, u64)],
    opts: &Repack,
    selected: &[String],
    now: Option<i64>,
    state_dir: &Path,
    progress: &pulpdist_progress::Reporter,
) -> Result<Repacked, GcError> {
    let mut out = Repacked::default();
    let lock_dir = state_dir.join("trees");
    std::fs::create_dir_all(&lock_dir).map_err(|source| io(&lock_dir, source))?;
    let (eligible, sparse_ids) = sort_trees(
        store,
        trees,
        sparse,
        opts,
        selected,
        Some(&lock_dir),
        &mut out,
    )?;
    if sparse_ids.is_empty() {
        return Ok(out);
    }
    let heads: Vec<(&Eligible<'_>, u64, &Head)> = eligible
        .iter()
        .flat_map(|e| {
            e.tree
                .retained
                .iter()
                .filter_map(move |v| Some((e, *v, e.tree.versions.get(v)?.head()?)))
        })
        .collect();
    // Pass 1: the chunks in sparse packs that kept versions reach.
    let mut wanted: BTreeMap<PackId, BTreeMap<u64, ChunkRef>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (_, _, h) in &heads {
        walk(store, h.root, &mut seen, &mut |_, node| {
            for e in node.entries() {
                for c in e.kind.own_chunks() {
                    if sparse_ids.contains(&c.loc.pack) {
                        wanted
                            .entry(c.loc.pack)
                            .or_default()
                            .insert(c.loc.offset, *c);
                    }
                }
            }
        })?;
    }
    let mut w = Writer::new(store, state_dir, opts.pack_size)?;
    // Pass 2: copy them, pack by pack.
    let size_of = |pack: &PackId| sparse.iter().find(|(id, _)| id == pack).map_or(0, |s| s.1);
    let total: u64 = wanted.keys().map(size_of).sum();
    progress.start("repack", wanted.len() as u64, total);
    for (pack, chunks) in &wanted {
        out.bytes_copied += copy(store, &mut w, *pack, size_of(pack), chunks)?;
        progress.advance(1, size_of(pack));
    }
    progress.finish();
    // Pass 3: every kept version's nodes, re-encoded where a location changed.
    let mut roots = Vec::with_capacity(heads.len());
    for (e, v, h) in &heads {
        roots.push((*e, *v, *h, w.node(h.root, &sparse_ids, &e.tree.name)?));
    }
    let (data, index) = w.finish()?;
    out.packs_written = data.iter().chain(index.values()).cloned().collect();
    // The heads, tree by tree.
    for e in &eligible {
        let mine: Vec<_> = roots
            .iter()
            .filter(|(x, _, h, root)| x.tree.name == e.tree.name && *root != h.root)
            .map(|(_, v, h, root)| (*v, *h, *root))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let listed: Vec<PackInfo> = index.get(&e.tree.name).cloned().into_iter().collect();
        match resign(store, e, &mine, &listed, opts, now)? {
            Ok(done) => out.versions.extend(done),
            Err(why) => out.skipped.push((e.tree.name.clone(), why)),
        }
    }
    Ok(out)
}

/// The trees that can be rewritten (their locks taken), and the sparse packs that no
/// other tree's kept version reaches (`out` gets those packs and the trees left out).
fn sort_trees<'a>(
    store: &dyn Store,
    trees: &'a [Tree],
    sparse: &[(PackId, u64)],
    opts: &Repack,
    selected: &[String],
    lock_dir: Option<&Path>,
    out: &mut Repacked,
) -> Result<(Vec<Eligible<'a>>, HashSet<PackId>), GcError> {
    let mut eligible = Vec::new();
    let mut others = Vec::new();
    for t in trees {
        match check(store, t, opts, selected, lock_dir)? {
            Ok(e) => eligible.push(e),
            Err(why) => others.push((t, why)),
        }
    }
    // A pack another tree's kept version reaches cannot be emptied: it is left alone.
    let mut sparse_ids: HashSet<PackId> = sparse.iter().map(|(id, _)| *id).collect();
    for (t, why) in others {
        let blocked = packs_reached(store, kept_heads(t))?;
        if blocked.iter().any(|p| sparse_ids.contains(p)) {
            out.skipped.push((t.name.clone(), why));
            sparse_ids.retain(|p| !blocked.contains(p));
        }
    }
    out.sparse = sparse
        .iter()
        .filter(|(id, _)| sparse_ids.contains(id))
        .copied()
        .collect();
    Ok((eligible, sparse_ids))
}

/// Copies the `chunks` of `pack` (of `size` bytes) into the writer; the bytes copied.
fn copy(
    store: &dyn Store,
    w: &mut Writer<'_>,
    pack: PackId,
    size: u64,
    chunks: &BTreeMap<u64, ChunkRef>,
) -> Result<u64, GcError> {
    // A pack of reasonable size is read once; a huge one chunk by chunk.
    let whole = match size <= WHOLE_READ_LIMIT {
        true => Some(store.read_pack_range(pack, 0..size)?),
        false => None,
    };
    let mut copied = 0;
    for (offset, c) in chunks {
        let range = c.loc.range();
        let piece;
        let stored = match &whole {
            Some(bytes) => bytes
                .get(range.start as usize..range.end as usize)
                .ok_or_else(|| {
                    unreadable(store, &pack, format!("shorter than its chunk at {offset}"))
                })?,
            None => {
                piece = store.read_pack_range(pack, range)?;
                &piece[..]
            }
        };
        VerifiedChunk::from_stored(c.id, c.loc.codec, stored, c.loc.raw_len)
            .map_err(|e| unreadable(store, &pack, format!("chunk at {offset}: {e}")))?;
        let loc = w.chunk(c, stored)?;
        w.moved.insert((pack, *offset), loc);
        copied += stored.len() as u64;
    }
    Ok(copied)
}

/// Whether tree `t` can be rewritten: named (if `selected` names any), its publish lock
/// free (on an object store the head's compare-and-swap keeps a publish and the gc
/// apart), its current head the one surveyed and, like every kept archived head, signed
/// by the key (the gc signs again only what the key signed). `Err(why)` otherwise.
fn check<'a>(
    store: &dyn Store,
    t: &'a Tree,
    opts: &Repack,
    selected: &[String],
    lock_dir: Option<&Path>,
) -> Result<Result<Eligible<'a>, String>, GcError> {
    let name = &t.name;
    if !selected.is_empty() && !selected.contains(name) {
        return Ok(Err("not among the trees named with --tree".into()));
    }
    let lock = match lock_dir.map(|d| store.lock(name, d)) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(PublishError::Locked { holder, .. })) => {
            return Ok(Err(format!("its publish lock is held{holder}")))
        }
        Some(Err(e)) => return Err(e.into()),
    };
    let keys = TrustedKeys::new(vec![opts.key.public()]);
    let Some(stored) = store.read_head(name)? else {
        return Ok(Err("its head is gone".into()));
    };
    match SignedHead::decode_and_verify(&stored.bytes, &keys) {
        Ok(h) if h.head().expires < crate::unix_now() => {
            return Ok(Err("its head has expired: publish it first".into()))
        }
        Ok(h) if h.head().version == t.current => {}
        Ok(_) => return Ok(Err("a publish moved its head on".into())),
        Err(_) => return Ok(Err("its head is not signed by the key given".into())),
    }
    for v in &t.retained {
        let Some(x) = t.versions.get(v) else { continue };
        if x.heads.len() > 1 {
            return Ok(Err(format!(
                "version {v}'s archived head differs from its current head"
            )));
        }
        if !x.archived {
            continue;
        }
        let key = pulpdist_format::history_key(name, *v);
        let ok = store
            .read_object(&key, MAX_HEAD_SIZE)?
            .and_then(|b| SignedHead::decode_and_verify(&b, &keys).ok())
            .is_some_and(|h| h.head().tree == *name && h.head().version == *v);
        if !ok {
            return Ok(Err(format!(
                "its archived head of version {v} is not signed by the key given"
            )));
        }
    }
    Ok(Ok(Eligible {
        tree: t,
        stored,
        _lock: lock,
    }))
}

/// The versions a tree's rewrite re-signed (tree, old version, version now), or why the
/// tree was left for a later run.
type Outcome = Result<Vec<(String, u64, u64)>, String>;

/// Signs the kept versions of one tree again with their new roots (`versions`: version,
/// old head, new root): each archived head in place, and the current version as the next.
fn resign(
    store: &dyn Store,
    e: &Eligible<'_>,
    versions: &[(u64, &Head, NodeRef)],
    listed: &[PackInfo],
    opts: &Repack,
    now: Option<i64>,
) -> Result<Outcome, GcError> {
    let name = &e.tree.name;
    let current = e.tree.current;
    let sign = |h: &Head| {
        h.sign(&opts.key).map_err(|source| PublishError::Format {
            object: format!("{}/heads/{name}", store.describe()),
            source,
        })
    };
    let mut done = Vec::new();
    // Every version's archived head names its new root (the current one's too: its
    // objects are then all reached through the new packs; sites holding it move on to
    // the next version below, never to the same version with another root).
    for (v, old, root) in versions {
        let head = Head {
            root: *root,
            ..(*old).clone()
        };
        let key = pulpdist_format::history_key(name, *v);
        store.replace_object(&key, &sign(&head)?)?;
        pulpdist_failpoint::hit("gc.repack_history");
        if *v != current {
            done.push((name.clone(), *v, *v));
        }
    }
    let Some((_, old, root)) = versions.iter().find(|(v, _, _)| *v == current) else {
        return Ok(Ok(done));
    };
    // The time the head is written, not the run's start: the old version was current
    // until now, and the grace period of a sync that started from it counts from here.
    let now = now.unwrap_or_else(crate::unix_now);
    if old.expires < now {
        // Expired since it was checked (`check` refuses an expired head before anything).
        return Ok(Err("its head has expired: publish it first".into()));
    }
    let next = current.checked_add(1).ok_or_else(|| {
        GcError::BadPolicy(format!("tree '{name}' is at the last version number"))
    })?;
    let mut recent = vec![VersionPacks {
        version: next,
        packs: listed.to_vec(),
    }];
    recent.extend(old.recent.iter().cloned());
    recent.truncate(old.recent.len().max(1));
    let head = Head {
        version: next,
        created: now,
        // The same expiry: a gc never keeps a tree in service longer than its publisher
        // did (freeze protection counts on the publisher alone).
        expires: old.expires,
        root: *root,
        recent,
        ..(*old).clone()
    };
    let bytes = sign(&head)?;
    if bytes.len() > MAX_HEAD_SIZE {
        return Ok(Err("its next head would be too large".into()));
    }
    pulpdist_failpoint::hit("gc.repack_head");
    match store.put_head(name, &bytes, Some(&e.stored), Some(current)) {
        Ok(()) => {}
        Err(PublishError::HeadChanged { .. }) => {
            return Ok(Err("a publish wrote its head meanwhile".into()))
        }
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = store.put_history(name, next, &bytes) {
        tracing::warn!(tree = %name, version = next, error = %e, "the repacked version could not be archived; the next publish archives it");
    }
    done.push((name.clone(), current, next));
    Ok(Ok(done))
}

/// The heads of the versions of `t` that are kept.
fn kept_heads(t: &Tree) -> impl Iterator<Item = &Head> {
    t.retained
        .iter()
        .filter_map(|v| t.versions.get(v))
        .flat_map(|x| x.heads.iter())
}

/// Every pack a node or chunk under the heads lies in.
fn packs_reached<'a>(
    store: &dyn Store,
    heads: impl Iterator<Item = &'a Head>,
) -> Result<HashSet<PackId>, GcError> {
    let mut packs = HashSet::new();
    let mut seen = HashSet::new();
    for h in heads {
        walk(store, h.root, &mut seen, &mut |r, node| {
            packs.insert(r.loc.pack);
            for e in node.entries() {
                packs.extend(e.kind.own_chunks().map(|c| c.loc.pack));
            }
        })?;
    }
    Ok(packs)
}

/// Calls `visit` with every node under `root` not seen yet (by id and location: a node
/// stored twice is visited at each location).
fn walk(
    store: &dyn Store,
    root: NodeRef,
    seen: &mut HashSet<(NodeId, PackId, u64)>,
    visit: &mut dyn FnMut(&NodeRef, &Node),
) -> Result<(), GcError> {
    let mut todo = vec![root];
    while let Some(r) = todo.pop() {
        if !seen.insert((r.id, r.loc.pack, r.loc.offset)) {
            continue;
        }
        let node = read_node(store, &r)?;
        visit(&r, &node);
        for e in node.entries() {
            if let EntryKind::Dir { node } = &e.kind {
                todo.push(*node);
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
    use pulpdist_publish::LocalStore;

    /// A pack of `objects` bytes of objects, in a store.
    fn pack(store: &LocalStore, dir: &Path, n: u8, objects: usize) -> ListedPack {
        let id = PackId([n; 32]);
        let (mut b, mut bytes) = pack::PackBuilder::new(id);
        let data = vec![n; objects];
        let cid = pulpdist_format::ChunkId::of(&data);
        b.add(
            pack::ObjectKind::Chunk,
            cid.0,
            pulpdist_format::Codec::Raw,
            objects as u32,
            objects as u32,
        );
        bytes.extend(&data);
        let (tail, size) = b.finish();
        bytes.extend(tail);
        let file = dir.join(format!("{n}.part"));
        std::fs::write(&file, &bytes).expect("pack file");
        store.put_pack(id, &file).expect("put");
        ListedPack {
            id,
            size,
            modified: 0,
        }
    }

    #[test]
    fn a_pack_is_sparse_when_more_than_the_limit_of_its_objects_is_unreached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path().join("store")).expect("store");
        let packs = [
            pack(&store, dir.path(), 1, 1000),
            pack(&store, dir.path(), 2, 1000),
            pack(&store, dir.path(), 3, 1000),
        ];
        let mut reach = Reach::default();
        // All reached: the header and trailer are not "unused".
        reach.live.insert(PackId([1; 32]), 1000);
        // 4 % unreached is within 5 %; 6 % is not; an unreached pack is for the plan.
        reach.live.insert(PackId([2; 32]), 940);
        let got = sparse(&store, &packs, &reach, 5).expect("sparse");
        assert_eq!(got, [(PackId([2; 32]), packs[1].size)]);
        reach.live.insert(PackId([2; 32]), 960);
        assert!(sparse(&store, &packs, &reach, 5)
            .expect("sparse")
            .is_empty());
        assert!(sparse(&store, &packs, &reach, 0).expect("sparse").len() == 1);
    }
}
