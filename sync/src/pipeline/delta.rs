//! Applying a delta pack (FORMAT.md 5.6): one request for the whole pack, each record
//! decoded against the local copy of its reference file, the result cut into chunks, and
//! every chunk the signed index needs (its id checked) staged like a fetched one. A record
//! that fails (reference missing or changed, damaged frame) only leaves its chunks to be
//! fetched as before: a delta can save requests and bytes, never lose a file.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pulpdist_chunker::delta;
use pulpdist_format::delta::{
    decode_batch_list, fill_children, from_columns, join_path, to_columns, Batch, BatchKind,
    DeltaInfo, DeltaRecord, NodeList, RecordKind,
};
use pulpdist_format::{ChunkId, EntryKind, Name, Node, NodeId, VerifiedChunk};

use crate::error::SyncError;
use crate::fsutil::SafeDirs;
use crate::state::State;
use crate::store::StoreReader;

/// What a delta did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Records whose file was rebuilt and yielded needed chunks.
    pub(crate) files: u64,
    /// Records for files the sync writes that yielded no needed chunk (reference missing
    /// or changed, damaged frame, or chunks an earlier record already gave).
    pub(crate) failed: u64,
    /// Needed chunks staged from rebuilt files.
    pub(crate) chunks: u64,
    /// Bytes of those chunks.
    pub(crate) bytes: u64,
}

fn to_rel(path: &[Name]) -> PathBuf {
    path.iter().map(|n| n.to_os_string()).collect()
}

/// The record's reference file, read from the mirror if it is a regular file of the
/// recorded size reached without following a symlink.
fn read_reference(safe: &mut SafeDirs, path: &[Name], size: u64) -> Option<Vec<u8>> {
    let rel = to_rel(path);
    let parent = safe.ensure(rel.parent()?, false).ok()?;
    let abs = parent.join(rel.file_name()?);
    let (f, len) = crate::fsutil::open_regular(&abs).ok()?;
    if len != size {
        return None;
    }
    let mut data = Vec::with_capacity(size as usize);
    f.take(size + 1).read_to_end(&mut data).ok()?;
    (data.len() as u64 == size).then_some(data)
}

/// The byte `ranges` of the regular file at `path` under the mirror, concatenated, if it
/// is `size` bytes long: an old composite file's own chunks, the reference of an own-chunk
/// item (FORMAT.md 5.6, kind 5), read without reading the image whole.
fn read_ranges(
    safe: &mut SafeDirs,
    path: &[Name],
    size: u64,
    ranges: &[std::ops::Range<u64>],
) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let rel = to_rel(path);
    let parent = safe.ensure(rel.parent()?, false).ok()?;
    let (f, len) = crate::fsutil::open_regular(&parent.join(rel.file_name()?)).ok()?;
    if len != size {
        return None;
    }
    let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
    let mut out = Vec::with_capacity(usize::try_from(total).ok()?);
    for r in ranges {
        let at = out.len();
        out.resize(at + usize::try_from(r.end.checked_sub(r.start)?).ok()?, 0);
        f.read_exact_at(&mut out[at..], r.start).ok()?;
    }
    Some(out)
}

/// The composite files an own-chunk batch (FORMAT.md 5.6, kind 5) names, looked up in the
/// changed directories' stored nodes (new and old) only for the paths a batch names.
pub(crate) struct Composites<'a> {
    state: &'a State,
    /// Each changed directory by its path.
    dirs: HashMap<&'a [u8], &'a super::walk::DirChange>,
    /// Stored nodes, decoded once.
    nodes: HashMap<NodeId, Option<Node>>,
}

/// Where an old composite file kept its own chunks: its size, their byte ranges in it
/// (adjacent chunks as one range), and their total.
struct OldOwn {
    size: u64,
    ranges: Vec<std::ops::Range<u64>>,
    total: u64,
}

impl<'a> Composites<'a> {
    fn new(state: &'a State, dirs: &'a [super::walk::DirChange]) -> Self {
        Composites {
            state,
            dirs: dirs
                .iter()
                .map(|c| (c.rel.as_os_str().as_bytes(), c))
                .collect(),
            nodes: HashMap::new(),
        }
    }

    /// The stored entry `name` of the changed directory at `dir`, in its new node or
    /// (`old`) in its old one.
    fn entry(&mut self, path: &[u8], old: bool) -> Option<pulpdist_format::Entry> {
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let change = self.dirs.get(dir)?;
        let id = match old {
            true => change.old?,
            false => change.new,
        };
        let state = self.state;
        let node = self
            .nodes
            .entry(id)
            .or_insert_with(|| state.stored_node(&id));
        node.as_ref()?.get(name).cloned()
    }

    /// The own chunks (id, length), in order, of the new composite file at `path`.
    fn own(&mut self, path: &[u8]) -> Option<Vec<(ChunkId, u32)>> {
        let e = self.entry(path, false)?;
        matches!(e.kind, EntryKind::Composite { .. })
            .then(|| e.kind.own_chunks().map(|c| (c.id, c.loc.raw_len)).collect())
    }

    /// Where the old composite file at `path` kept its own chunks.
    fn old(&mut self, path: &[u8]) -> Option<OldOwn> {
        let e = self.entry(path, true)?;
        let EntryKind::Composite { size, parts, .. } = &e.kind else {
            return None;
        };
        let (mut at, mut out) = (
            0u64,
            OldOwn {
                size: *size,
                ranges: Vec::new(),
                total: 0,
            },
        );
        for part in parts {
            match part {
                pulpdist_format::Part::Chunks(chunks) => {
                    let len: u64 = chunks.iter().map(|c| u64::from(c.loc.raw_len)).sum();
                    out.ranges.push(at..at + len);
                    out.total += len;
                    at += len;
                }
                pulpdist_format::Part::File { size, .. } => at += size,
            }
        }
        Some(out)
    }
}

/// A delta pack in memory.
pub(crate) struct Fetched {
    pub(crate) info: DeltaInfo,
    bytes: Vec<u8>,
}

impl Fetched {
    /// Fetches the delta pack `info` and checks it against the hash the signed head lists.
    /// With `keep` (a path in the state's staging area), a copy verified by a killed sync is
    /// used instead of fetching it again, and a fetched one is kept there until the version
    /// is applied. Returns whether it came from the store.
    pub(crate) fn get(
        store: &dyn StoreReader,
        info: DeltaInfo,
        keep: Option<&std::path::Path>,
    ) -> Result<(Self, bool), SyncError> {
        if let Some(p) = keep {
            if let Ok((f, len)) = crate::fsutil::open_regular(p) {
                let mut bytes = Vec::with_capacity(len.min(info.size) as usize);
                if len == info.size
                    && f.take(info.size).read_to_end(&mut bytes).is_ok()
                    && info.verify(&bytes).is_ok()
                {
                    return Ok((Fetched { info, bytes }, false));
                }
            }
        }
        let bytes = crate::store::first_ok(store, |s| {
            let bytes = s.get_pack(&info.pack, info.size)?;
            info.verify(&bytes).map_err(|source| SyncError::Format {
                object: format!("{}/{} (delta)", s.describe(), info.pack.object_key()),
                source,
            })?;
            Ok(bytes)
        })?;
        if let Some(p) = keep {
            // Only to save a refetch: a copy that cannot be kept costs nothing else.
            let _ = crate::fsutil::write_atomic(p, &bytes);
        }
        Ok((Fetched { info, bytes }, true))
    }

    fn raw_records(&self) -> Result<Vec<&[u8]>, SyncError> {
        pulpdist_format::delta::records(self.info.pack, &self.bytes).map_err(|source| {
            SyncError::Format {
                object: format!("{} (delta)", self.info.pack.object_key()),
                source,
            }
        })
    }

    /// The records of kind 0 and 1, decoded one at a time as they are used (each holds its
    /// paths split into names: a pack of them all at once could take gigabytes).
    fn records(&self) -> Result<impl Iterator<Item = (DeltaRecord, &[u8])> + '_, SyncError> {
        // A record that does not decode is skipped like one whose reference is gone.
        Ok(self
            .raw_records()?
            .into_iter()
            .filter_map(|r| DeltaRecord::decode(r).ok()))
    }

    /// The node batches (record kind 2) or file batches (kind 3); damaged ones are
    /// skipped.
    /// The batches of the pack that `wanted` accepts (by kind).
    fn batches(&self, wanted: impl Fn(BatchKind) -> bool) -> Result<Vec<Batch<'_>>, SyncError> {
        Ok(self
            .raw_records()?
            .into_iter()
            .filter_map(|r| Batch::decode(r).ok().flatten())
            .filter(|b| wanted(b.kind))
            .collect())
    }
}

/// The old tree's subdirectories, per directory path, as the node records need them: each
/// directory node on the way is decoded once, and only its subdirectory entries are kept
/// (a delta of 1,000 directories under one root used to decode the root 1,000 times).
struct OldDirs<'a> {
    state: &'a State,
    root: NodeId,
    subdirs: HashMap<Vec<u8>, Option<Vec<(Name, NodeId)>>>,
}

impl<'a> OldDirs<'a> {
    fn new(state: &'a State, root: NodeId) -> Self {
        OldDirs {
            state,
            root,
            subdirs: HashMap::new(),
        }
    }

    /// The subdirectories (name and id, in name order) of the old directory `id` at
    /// `path`, decoded once.
    fn load(&mut self, path: &[Name], id: NodeId) -> Option<&[(Name, NodeId)]> {
        let state = self.state;
        self.subdirs
            .entry(join_path(path))
            .or_insert_with(|| {
                state.node(&id).map(|n| {
                    n.entries()
                        .iter()
                        .filter_map(|e| match &e.kind {
                            EntryKind::Dir { node } => Some((e.name.clone(), node.id)),
                            _ => None,
                        })
                        .collect()
                })
            })
            .as_deref()
    }

    /// The subdirectories of the old directory at `path`, if the cached index has it.
    /// Walks down from the root (no recursion: a path may have many components).
    fn listing(&mut self, path: &[Name]) -> Option<&[(Name, NodeId)]> {
        let mut id = self.root;
        for depth in 0..path.len() {
            let list = self.load(&path[..depth], id)?;
            id = find(list, &path[depth])?;
        }
        self.load(path, id)
    }

    /// The id of the old directory at `path`, if the cached index has it.
    fn id(&mut self, path: &[Name]) -> Option<NodeId> {
        match path.split_last() {
            None => Some(self.root),
            Some((name, parent)) => find(self.listing(parent)?, name),
        }
    }

    /// The name of the `index`-th subdirectory of the old directory at `path`.
    fn subdir(&mut self, path: &[Name], index: u32) -> Option<Name> {
        let list = self.listing(path)?;
        list.get(index as usize).map(|(n, _)| n.clone())
    }

    /// The encoding of the old directory node at `path`, from the node cache.
    fn bytes(&mut self, path: &[Name]) -> Option<Vec<u8>> {
        let id = self.id(path)?;
        self.state.node_bytes(&id)
    }
}

/// The id of subdirectory `name` in a listing (in name order).
fn find(list: &[(Name, NodeId)], name: &Name) -> Option<NodeId> {
    let i = list
        .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
        .ok()?;
    Some(list[i].1)
}

/// Rebuilds the index nodes the delta carries (each against the old node of its
/// directory) into the node cache, which is content-addressed: a node is stored under the
/// hash of its bytes, and used only where a verified parent names that hash. Returns how
/// many were added.
pub(crate) fn apply_nodes(
    state: &State,
    fetched: &Fetched,
    old_root: &NodeId,
) -> Result<u64, SyncError> {
    let mut n = 0;
    let mut seen = HashSet::new();
    let mut old = OldDirs::new(state, *old_root);
    // What the batches may decode in all (lists and nodes): a signed but hostile pack of
    // many small batches must not decode without end.
    let mut budget = 2 * pulpdist_format::delta::MAX_BATCH;
    for batch in fetched.batches(BatchKind::carries_nodes)? {
        n += apply_batch(state, &batch, &mut old, &mut seen, &mut budget)?;
    }
    for (r, frame) in fetched.records()? {
        if r.kind != RecordKind::Node || !seen.insert(join_path(&r.path)) {
            continue;
        }
        let reference = match &r.reference {
            Some(p) => match old.bytes(p) {
                Some(b) if b.len() as u64 == r.ref_size => b,
                _ => continue,
            },
            None => Vec::new(),
        };
        let Ok(plain) = delta::decode(&reference, frame, r.size) else {
            continue;
        };
        let id = NodeId::of(&plain);
        if state.has_node(&id) || Node::decode(&plain).is_err() {
            continue;
        }
        state.put_node(&id, &plain)?;
        n += 1;
    }
    Ok(n)
}

/// Rebuilds the nodes of one batch (FORMAT.md 5.6, kind 2 or 4) into the node cache: the
/// list, the references from the cached old index (all of them, or the batch is skipped:
/// they are the frame's prefix, in columns for kind 4), the frame (put back together from
/// its columns for kind 4), then each node from the last to the first (a
/// directory's subdirectories come after it), its zero subdirectory ids filled with the
/// hashes of the nodes rebuilt for them. A node that fails leaves its parent unfilled:
/// both are fetched instead. Paths in `seen` are used once across the delta. Returns the
/// nodes added (a batch of many is cached with one flush).
fn apply_batch(
    state: &State,
    batch: &Batch<'_>,
    old: &mut OldDirs<'_>,
    seen: &mut HashSet<Vec<u8>>,
    budget: &mut u64,
) -> Result<u64, SyncError> {
    let Some(left) = budget.checked_sub(u64::from(batch.list_size)) else {
        return Ok(0);
    };
    *budget = left;
    let Ok(list) = delta::decode(&[], batch.list_frame, u64::from(batch.list_size)) else {
        return Ok(0);
    };
    let Some(list) = NodeBatchList::decode(&list, batch, old, budget) else {
        return Ok(0);
    };
    let columns = batch.kind == BatchKind::NodeColumns;
    let (mut prefix, mut ref_sizes) = (Vec::new(), Vec::new());
    for (p, size) in list.references.iter().flatten() {
        match old.bytes(p) {
            // The references add up to at most MAX_BATCH, as a kind-2 list's sizes must.
            Some(b)
                if size.is_none_or(|s| b.len() == s as usize)
                    && (prefix.len() + b.len()) as u64 <= pulpdist_format::delta::MAX_BATCH =>
            {
                ref_sizes.push(b.len() as u32);
                prefix.extend_from_slice(&b);
            }
            // Gone from the cache (or another size): the prefix cannot be built, and
            // the batch's nodes are fetched (the cache holds the applied tree whole, so
            // this takes a cache damaged behind the sync's back).
            _ => return Ok(0),
        }
    }
    if columns {
        match to_columns(&prefix, &ref_sizes) {
            Ok(c) => prefix = c,
            Err(_) => return Ok(0),
        }
    }
    let Ok(data) = delta::decode(&prefix, batch.frame, list.total) else {
        return Ok(0);
    };
    drop(prefix);
    let (data, sizes) = match list.sizes {
        Some(sizes) => (data, sizes),
        None => match from_columns(&data, list.paths.len()) {
            Ok(rows) => rows,
            Err(_) => return Ok(0),
        },
    };
    let mut at = 0usize;
    let spans: Vec<std::ops::Range<usize>> = sizes
        .iter()
        .map(|size| {
            let r = at..at + *size as usize;
            at = r.end;
            r
        })
        .collect();
    let mut rebuilt: HashMap<Vec<u8>, NodeId> = HashMap::new();
    let mut new_nodes: Vec<(NodeId, Vec<u8>)> = Vec::new();
    let mut ids: HashSet<NodeId> = HashSet::new();
    for (it_path, span) in list.paths.iter().zip(spans).rev() {
        let path = join_path(it_path);
        if !seen.insert(path.clone()) {
            continue;
        }
        let filled = fill_children(&data[span], |name| {
            let mut p = it_path.clone();
            p.push(name.clone());
            rebuilt.get(&join_path(&p)).copied()
        });
        let Ok(Some(plain)) = filled else {
            continue;
        };
        let id = NodeId::of(&plain);
        rebuilt.insert(path, id);
        if !state.has_node(&id) && ids.insert(id) {
            new_nodes.push((id, plain));
        }
    }
    if new_nodes.len() <= super::apply::FLUSH_EACH_UP_TO {
        for (id, plain) in &new_nodes {
            state.put_node(id, plain)?;
        }
    } else {
        state.put_nodes(&new_nodes)?;
    }
    Ok(new_nodes.len() as u64)
}

/// A node batch's list, of either kind: each directory's path and reference (its path,
/// and its size if the list gives one), each node's size if the list gives them (kind 4:
/// from the columns), and what the frame decodes to.
struct NodeBatchList {
    paths: Vec<Vec<Name>>,
    references: Vec<Option<(Vec<Name>, Option<u32>)>>,
    sizes: Option<Vec<u32>>,
    total: u64,
}

impl NodeBatchList {
    /// `None`: a list that does not decode, (kind 4) names an old subdirectory the cached
    /// old index does not have, or whose nodes (and, kind 4, paths) come to more than
    /// `budget`, which is charged with them.
    fn decode(
        list: &[u8],
        batch: &Batch<'_>,
        old: &mut OldDirs<'_>,
        budget: &mut u64,
    ) -> Option<Self> {
        if batch.kind == BatchKind::NodeColumns {
            let list = NodeList::decode(list, batch.count).ok()?;
            *budget = budget.checked_sub(u64::from(list.nodes_size))?;
            // A few bytes of list name a path of up to 65,535 bytes: charged as well.
            let (paths, bytes) = list.paths(*budget, |p, i| old.subdir(p, i)).ok()?;
            *budget -= bytes;
            let references = list
                .items
                .iter()
                .zip(&paths)
                .map(|(it, p)| it.reference.then(|| (p.clone(), None)))
                .collect();
            return Some(NodeBatchList {
                paths,
                references,
                sizes: None,
                total: u64::from(list.nodes_size),
            });
        }
        let items = decode_batch_list(list, batch.count, batch.kind).ok()?;
        let total = items.iter().map(|it| u64::from(it.size)).sum();
        *budget = budget.checked_sub(total)?;
        Some(NodeBatchList {
            total,
            sizes: Some(items.iter().map(|it| it.size).collect()),
            references: items
                .iter()
                .map(|it| it.reference.clone().map(|p| (p, Some(it.ref_size))))
                .collect(),
            paths: items.into_iter().map(|it| it.path).collect(),
        })
    }
}

/// Path → chunk list (id, length) of each file the sync writes that still needs chunks.
pub(crate) type Wanted = HashMap<Vec<u8>, Vec<(ChunkId, u32)>>;

/// Stages every chunk in `needed` that a file record or file batch of the delta rebuilds.
/// `wanted`: path → chunk list (id, length) of each file the sync writes that still needs
/// chunks; a rebuilt file is cut at exactly those lengths (as the publisher cut it, ISO
/// images included) and each piece kept only if it hashes to its id. Each path is used
/// once. Removes staged chunks from `needed`.
pub(crate) fn apply_files(
    state: &State,
    dest: &Path,
    fetched: &Fetched,
    dirs: &[super::walk::DirChange],
    mut wanted: Wanted,
    needed: &mut HashSet<ChunkId>,
) -> Result<Applied, SyncError> {
    let mut files = Files {
        state,
        safe: SafeDirs::new(dest),
        object: format!("{} (delta)", fetched.info.pack.object_key()),
        out: Applied::default(),
        // What file batches larger than FREE_BATCH may decode in all: what the sync
        // writes, and a margin. A signed but hostile pack of batches of files nobody
        // wants costs no decoding; one that lists a wanted file beside many others cannot
        // decode without end.
        budget: 2 * pulpdist_format::delta::MAX_BATCH
            + wanted
                .values()
                .flatten()
                .map(|(_, l)| u64::from(*l))
                .sum::<u64>(),
        own_used: HashSet::new(),
    };
    for batch in fetched.batches(|k| k == BatchKind::Files)? {
        files.batch(&batch, None, &mut wanted, needed)?;
    }
    // Composite files' own chunks: the changed directories' composite files are looked up
    // only if the pack has such a batch.
    let mut composites = Composites::new(state, dirs);
    for batch in fetched.batches(|k| k == BatchKind::OwnChunks)? {
        files.batch(&batch, Some(&mut composites), &mut wanted, needed)?;
    }
    for (r, frame) in fetched.records()? {
        if r.kind != RecordKind::File {
            continue;
        }
        let path = join_path(&r.path);
        let Some(chunks) = wanted.remove(&path) else {
            continue;
        };
        let size: u64 = chunks.iter().map(|(_, l)| u64::from(*l)).sum();
        if r.size != size || r.ref_size > delta::MAX_DELTA_FILE {
            files.out.failed += 1;
            continue;
        }
        let reference = match &r.reference {
            Some(p) => match read_reference(&mut files.safe, p, r.ref_size) {
                Some(d) => d,
                None => {
                    files.out.failed += 1;
                    continue;
                }
            },
            None => Vec::new(),
        };
        let Ok(data) = delta::decode(&reference, frame, r.size) else {
            files.out.failed += 1;
            continue;
        };
        files.stage(&path, &data, &chunks, needed)?;
    }
    Ok(files.out)
}

/// A file batch whose files and references add up to at most this much is decoded
/// without charging the budget (it must name a file the sync still needs): the writer's
/// batches, of up to 4 MiB of files and 4 MiB of references.
const FREE_BATCH: u64 = 8 << 20;

/// Rebuilding files from a delta pack into the staging area.
struct Files<'a> {
    state: &'a State,
    safe: SafeDirs,
    /// The pack, as errors name it.
    object: String,
    out: Applied,
    /// What file batches may still decode.
    budget: u64,
    /// Composite files whose own chunks an own-chunk batch already gave.
    own_used: HashSet<Vec<u8>>,
}

impl Files<'_> {
    /// Cuts the rebuilt file `data` at the lengths of `chunks` and stages each piece that
    /// is needed and hashes to its id; counts the file as rebuilt if any was, as failed if
    /// it had needed pieces and none hashed right, and as neither if another file of the
    /// delta (a copy of it) already gave all its pieces.
    fn stage(
        &mut self,
        path: &[u8],
        data: &[u8],
        chunks: &[(ChunkId, u32)],
        needed: &mut HashSet<ChunkId>,
    ) -> Result<(), SyncError> {
        let (mut useful, mut wanted_any) = (false, false);
        let mut offset = 0usize;
        for (id, len) in chunks {
            let piece = &data[offset..offset + *len as usize];
            offset += *len as usize;
            if !needed.contains(id) {
                continue;
            }
            wanted_any = true;
            if ChunkId::of(piece) != *id {
                continue;
            }
            let chunk = VerifiedChunk::from_plain(*id, piece.to_vec()).map_err(|source| {
                SyncError::Format {
                    object: format!(
                        "{}: {}",
                        self.object,
                        std::ffi::OsStr::from_bytes(path).to_string_lossy()
                    ),
                    source,
                }
            })?;
            self.state.stage(&chunk)?;
            needed.remove(id);
            self.out.chunks += 1;
            self.out.bytes += u64::from(*len);
            useful = true;
        }
        if useful {
            self.out.files += 1;
        } else if wanted_any {
            // Decoded, but nothing in it is what the signed index names: a damaged or
            // changed reference.
            self.out.failed += 1;
        }
        Ok(())
    }

    /// Rebuilds the wanted files of one file batch (FORMAT.md 5.6, kind 3): the list, then
    /// (if it names a wanted file of the size the index gives) every reference from the
    /// mirror (all of them, or none of the batch's files: they are the frame's prefix),
    /// the frame, and each wanted file's pieces. Wanted files in a batch that cannot be
    /// used count as failed and are fetched. With `own` (kind 5), an item is the own
    /// chunks of a composite file some of which are still needed, and its reference the
    /// old composite file's; the path stays wanted (a record may still give the rest).
    fn batch(
        &mut self,
        batch: &Batch<'_>,
        mut own: Option<&mut Composites<'_>>,
        wanted: &mut Wanted,
        needed: &mut HashSet<ChunkId>,
    ) -> Result<(), SyncError> {
        let Some(left) = self.budget.checked_sub(u64::from(batch.list_size)) else {
            return Ok(());
        };
        self.budget = left;
        let Ok(list) = delta::decode(&[], batch.list_frame, u64::from(batch.list_size)) else {
            return Ok(());
        };
        let Ok(items) = decode_batch_list(&list, batch.count, batch.kind) else {
            return Ok(());
        };
        let mut at = 0usize;
        let mut mine = Vec::new();
        for it in &items {
            let span = at..at + it.size as usize;
            at = span.end;
            let path = join_path(&it.path);
            let size = |chunks: &[(ChunkId, u32)]| {
                chunks.iter().map(|(_, l)| u64::from(*l)).sum::<u64>() == u64::from(it.size)
            };
            match own.as_deref_mut() {
                None => {
                    if let Some(chunks) = wanted.get(&path).filter(|c| size(c)).cloned() {
                        wanted.remove(&path);
                        mine.push((path, span, chunks));
                    }
                }
                Some(own) => {
                    if !wanted.contains_key(&path) || self.own_used.contains(&path) {
                        continue;
                    }
                    let chunks = own
                        .own(&path)
                        .filter(|c| size(c) && c.iter().any(|(id, _)| needed.contains(id)));
                    if let Some(chunks) = chunks {
                        self.own_used.insert(path.clone());
                        mine.push((path, span, chunks));
                    }
                }
            }
        }
        if mine.is_empty() {
            return Ok(());
        }
        let total = at as u64;
        let refs: u64 = items.iter().map(|it| u64::from(it.ref_size)).sum();
        // A batch of the writer's shape (FORMAT.md 5.6: files and references of about
        // 4 MiB each) is not charged: it names a file the sync needs, and each such file is
        // taken from one batch only, so these decode at most FREE_BATCH per needed file.
        let charge = (total + refs).saturating_sub(FREE_BATCH);
        let data = match self.budget.checked_sub(charge) {
            Some(left) => {
                self.budget = left;
                let prefix = self.references(&items, own);
                delta::decode(&prefix, batch.frame, total).ok()
            }
            None => None,
        };
        let Some(data) = data else {
            self.out.failed += mine.len() as u64;
            return Ok(());
        };
        for (path, span, chunks) in mine {
            self.stage(&path, &data[span], &chunks, needed)?;
        }
        Ok(())
    }

    /// The batch's references from the mirror, concatenated in list order. One that cannot
    /// be read with its size is zeros in its place: the files that drew on it come out
    /// wrong and fail their chunk ids, the others are still right (a local user who
    /// removed one old file costs that file, not its batch).
    fn references(
        &mut self,
        items: &[pulpdist_format::delta::BatchItem],
        mut own: Option<&mut Composites<'_>>,
    ) -> Vec<u8> {
        let mut prefix = Vec::new();
        for it in items {
            if let Some(p) = &it.reference {
                let size = it.ref_size as usize;
                let read = match own.as_deref_mut() {
                    None => read_reference(&mut self.safe, p, u64::from(it.ref_size)),
                    // An old composite file of the item's directory: its own chunks where
                    // the old entry puts them.
                    Some(own) => Some(p)
                        .filter(|p| {
                            p.len() == it.path.len() && p[..p.len() - 1] == it.path[..p.len() - 1]
                        })
                        .and_then(|p| own.old(&join_path(p)))
                        .filter(|o| o.total == u64::from(it.ref_size))
                        .and_then(|o| read_ranges(&mut self.safe, p, o.size, &o.ranges)),
                };
                match read {
                    Some(r) => prefix.extend(r),
                    None => prefix.resize(prefix.len() + size, 0),
                }
            }
        }
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;
    use pulpdist_format::delta::{
        blank_children, encode_batch_list, BatchItem, NodeItem, NodePath, RecordKind,
    };
    use pulpdist_format::pack::{ObjectKind, PackBuilder};
    use pulpdist_format::{Codec, PackId};

    /// A delta pack holding `records`, as [`Fetched`] (the head's hash is not checked here).
    fn fetched(records: &[Vec<u8>]) -> Fetched {
        let id = PackId([7; 32]);
        let (mut b, mut bytes) = PackBuilder::new(id);
        for (i, r) in records.iter().enumerate() {
            b.add(
                ObjectKind::Delta,
                [i as u8; 32],
                Codec::Raw,
                r.len() as u32,
                r.len() as u32,
            );
            bytes.extend_from_slice(r);
        }
        let (tail, size) = b.finish();
        bytes.extend_from_slice(&tail);
        let info = DeltaInfo {
            from_version: 1,
            from_root: pulpdist_format::NodeRef {
                id: NodeId([0; 32]),
                loc: testkit::loc(2, 1),
            },
            pack: id,
            size,
            hash: [0; 32],
        };
        Fetched { info, bytes }
    }

    /// Version 1 `{a/x, b/y}` cached; version 2 has `a/x` edited (a new `a/` and root).
    /// Returns (old root, new root, new a/, old root bytes, old a/ bytes).
    fn versions(state: &State) -> (Node, Node, Node, Vec<u8>, Vec<u8>) {
        let a1 = testkit::cached(state, vec![testkit::file("x", b"one", 0)]);
        let b1 = testkit::cached(state, vec![testkit::file("y", b"why", 3)]);
        let r1 = testkit::cached(state, vec![testkit::dir("a", &a1), testkit::dir("b", &b1)]);
        let a2 = Node::new(vec![testkit::file("x", b"two", 6)]).expect("a2");
        let r2 = Node::new(vec![testkit::dir("a", &a2), testkit::dir("b", &b1)]).expect("r2");
        (r1.clone(), r2, a2, r1.encode(), a1.encode())
    }

    fn name(s: &str) -> Name {
        Name::new(s.as_bytes().to_vec()).expect("name")
    }

    /// A batch of `nodes` (path, new node, old node bytes), in the given order, `a/`'s id
    /// blanked in the root when `a` is in the batch.
    fn batch(nodes: &[(Vec<Name>, &Node, &[u8])]) -> Vec<u8> {
        batch_of(BatchKind::Nodes, nodes)
    }

    /// [`batch`] of either node kind: in columns for [`BatchKind::NodeColumns`].
    fn batch_of(kind: BatchKind, nodes: &[(Vec<Name>, &Node, &[u8])]) -> Vec<u8> {
        let paths: Vec<Vec<Name>> = nodes.iter().map(|(p, _, _)| p.clone()).collect();
        let (mut prefix, mut data, mut items) = (Vec::new(), Vec::new(), Vec::new());
        for (path, node, old) in nodes {
            let carried = blank_children(node, |n| {
                let mut p = path.clone();
                p.push(n.clone());
                paths.contains(&p)
            })
            .expect("blank");
            items.push(BatchItem {
                path: path.clone(),
                reference: Some(path.clone()),
                size: carried.len() as u32,
                ref_size: old.len() as u32,
            });
            prefix.extend_from_slice(old);
            data.extend_from_slice(&carried);
        }
        if kind != BatchKind::NodeColumns {
            return batch_record(kind, &items, &prefix, &data);
        }
        // Each path as the first of the old root's subdirectories (`a`) when its parent
        // came first, else whole.
        let list = paths
            .iter()
            .enumerate()
            .map(|(i, p)| match p.split_last() {
                Some((_, parent)) if paths[..i].iter().any(|q| q == parent) => {
                    let j = paths.iter().position(|q| q == parent).expect("parent");
                    NodePath::OldSubdir {
                        back: (i - j) as u32,
                        skip: 0,
                    }
                }
                _ => NodePath::Full(p.clone()),
            })
            .collect();
        let sizes = |f: fn(&BatchItem) -> u32| items.iter().map(f).collect::<Vec<_>>();
        columns_record(
            list,
            (&prefix, &sizes(|it| it.ref_size)),
            (&data, &sizes(|it| it.size)),
            true,
        )
    }

    /// A node batch in columns (kind 4) of nodes at `paths` (each with a reference), the
    /// old and new nodes concatenated with their sizes; taken apart into columns, or (to
    /// check that a reader does not take rows for columns) not.
    fn columns_record(
        paths: Vec<NodePath>,
        (old, old_sizes): (&[u8], &[u32]),
        (new, new_sizes): (&[u8], &[u32]),
        in_columns: bool,
    ) -> Vec<u8> {
        let (prefix, data) = match in_columns {
            true => (
                to_columns(old, old_sizes).expect("old columns"),
                to_columns(new, new_sizes).expect("new columns"),
            ),
            false => (old.to_vec(), new.to_vec()),
        };
        let list = NodeList {
            nodes_size: data.len() as u32,
            items: paths
                .into_iter()
                .map(|path| NodeItem {
                    path,
                    reference: true,
                })
                .collect(),
        }
        .encode();
        Batch {
            kind: BatchKind::NodeColumns,
            count: new_sizes.len() as u32,
            list_size: list.len() as u32,
            list_frame: &delta::encode(&[], &list, 3).expect("list"),
            frame: &delta::encode(&prefix, &data, 3).expect("items"),
        }
        .encode()
    }

    #[test]
    fn a_node_batch_rebuilds_the_nodes_with_their_subdirectory_ids_filled_in() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let (r1, r2, a2, r1b, a1b) = versions(&state);
        let rec = batch(&[(Vec::new(), &r2, &r1b), (vec![name("a")], &a2, &a1b)]);
        let n = apply_nodes(&state, &fetched(&[rec]), &r1.id()).expect("apply");
        assert_eq!(n, 2);
        assert_eq!(state.node_bytes(&r2.id()), Some(r2.encode()));
        assert_eq!(state.node_bytes(&a2.id()), Some(a2.encode()));
    }

    #[test]
    fn a_node_batch_in_columns_rebuilds_the_nodes_and_one_not_in_columns_none() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let (r1, r2, a2, r1b, a1b) = versions(&state);
        let blanked = blank_children(&r2, |n| n.as_bytes() == b"a").expect("blank");
        let (old, new) = (
            [r1b.clone(), a1b.clone()].concat(),
            [blanked.clone(), a2.encode()].concat(),
        );
        let old_sizes = [r1b.len() as u32, a1b.len() as u32];
        let new_sizes = [blanked.len() as u32, a2.encode().len() as u32];
        let record = |paths: Vec<NodePath>, in_columns: bool| {
            columns_record(paths, (&old, &old_sizes), (&new, &new_sizes), in_columns)
        };
        let a_of_root = |skip| {
            vec![
                NodePath::Full(vec![]),
                NodePath::OldSubdir { back: 1, skip },
            ]
        };
        let apply = |rec: Vec<u8>| apply_nodes(&state, &fetched(&[rec]), &r1.id()).expect("apply");
        // Rows where columns belong; a skip past the old root's a and b; the same path
        // twice: nothing is rebuilt.
        assert_eq!(apply(record(a_of_root(0), false)), 0);
        assert_eq!(apply(record(a_of_root(2), true)), 0);
        assert_eq!(apply(record(vec![NodePath::Full(vec![]); 2], true)), 0);
        assert!(!state.has_node(&r2.id()) && !state.has_node(&a2.id()));
        // b is the old root's second subdirectory: the list puts a/'s node at b, whose old
        // node is the reference instead of a/'s. Whatever that rebuilds is cached only
        // under its hash; the root's zero id for a/ has nothing to fill it.
        apply(record(a_of_root(1), true));
        assert!(!state.has_node(&r2.id()));
        assert_eq!(apply(record(a_of_root(0), true)), 2);
        assert_eq!(state.node_bytes(&r2.id()), Some(r2.encode()));
        assert_eq!(state.node_bytes(&a2.id()), Some(a2.encode()));
    }

    #[test]
    fn a_node_batch_in_columns_needs_every_reference_in_the_cache() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let (r1, r2, a2, r1b, a1b) = versions(&state);
        let nodes = [
            (Vec::new(), &r2, &r1b[..]),
            (vec![name("a")], &a2, &a1b[..]),
        ];
        let rec = batch_of(BatchKind::NodeColumns, &nodes);
        // The old a/ gone from the cache: its reference cannot be read.
        let a1 = Node::decode(&a1b).expect("a1");
        std::fs::remove_file(state.node_path(&a1.id())).expect("drop a1");
        assert_eq!(
            apply_nodes(&state, &fetched(&[rec]), &r1.id()).expect("apply"),
            0
        );
        assert!(!state.has_node(&r2.id()));
    }

    #[test]
    fn a_child_listed_before_its_parent_leaves_the_parent_to_be_fetched() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let (r1, r2, a2, r1b, a1b) = versions(&state);
        let rec = batch(&[(vec![name("a")], &a2, &a1b), (Vec::new(), &r2, &r1b)]);
        let n = apply_nodes(&state, &fetched(&[rec]), &r1.id()).expect("apply");
        assert_eq!(n, 1, "a/ rebuilt; the root's zero id could not be filled");
        assert!(state.has_node(&a2.id()) && !state.has_node(&r2.id()));
    }

    #[test]
    fn a_reference_of_another_size_skips_the_batch() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let (r1, r2, a2, r1b, mut a1b) = versions(&state);
        a1b.push(0);
        let rec = batch(&[(Vec::new(), &r2, &r1b), (vec![name("a")], &a2, &a1b)]);
        assert_eq!(
            apply_nodes(&state, &fetched(&[rec]), &r1.id()).expect("apply"),
            0
        );
        assert!(!state.has_node(&r2.id()) && !state.has_node(&a2.id()));
    }

    /// A batch record of `items`, their references and contents concatenated.
    fn batch_record(kind: BatchKind, items: &[BatchItem], prefix: &[u8], data: &[u8]) -> Vec<u8> {
        let list = encode_batch_list(items);
        Batch {
            kind,
            count: items.len() as u32,
            list_size: list.len() as u32,
            list_frame: &delta::encode(&[], &list, 3).expect("list"),
            frame: &delta::encode(prefix, data, 3).expect("items"),
        }
        .encode()
    }

    /// A file of a test batch: path, new content, reference path and content.
    type BatchFile<'a> = (&'a str, &'a [u8], Option<(&'a str, &'a [u8])>);

    /// A file batch of those files.
    fn file_batch(files: &[BatchFile<'_>]) -> Vec<u8> {
        let (mut prefix, mut data, mut items) = (Vec::new(), Vec::new(), Vec::new());
        for (path, new, reference) in files {
            let split = |p: &str| p.split('/').map(name).collect::<Vec<_>>();
            items.push(BatchItem {
                path: split(path),
                reference: reference.map(|(p, _)| split(p)),
                size: new.len() as u32,
                ref_size: reference.map_or(0, |(_, r)| r.len() as u32),
            });
            prefix.extend_from_slice(reference.map_or(&[][..], |(_, r)| r));
            data.extend_from_slice(new);
        }
        batch_record(BatchKind::Files, &items, &prefix, &data)
    }

    /// Wanted files: path → one chunk of `content`; and the needed chunk ids.
    fn wanted(files: &[(&str, &[u8])]) -> (Wanted, HashSet<ChunkId>) {
        let w: HashMap<_, _> = files
            .iter()
            .map(|(p, c)| {
                (
                    p.as_bytes().to_vec(),
                    vec![(ChunkId::of(c), c.len() as u32)],
                )
            })
            .collect();
        let needed = w.values().flatten().map(|(id, _)| *id).collect();
        (w, needed)
    }

    #[test]
    fn a_file_batch_rebuilds_the_wanted_files_against_the_mirror() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let m = tmp.path().join("m");
        std::fs::create_dir_all(m.join("src")).expect("mirror");
        let (old_a, old_b) = (b"int main() { return 0; }\n", b"void b(void) {}\n");
        std::fs::write(m.join("src/a.c"), old_a).expect("a");
        std::fs::write(m.join("src/b.c"), old_b).expect("b");
        let (new_a, new_b, new_c) = (
            &b"int main() { return 1; }\n"[..],
            &b"void b(void) { b(); }\n"[..],
            &b"new file\n"[..],
        );
        let rec = file_batch(&[
            ("src/a.c", new_a, Some(("src/a.c", old_a))),
            ("src/b.c", new_b, Some(("src/b.c", old_b))),
            ("src/c.c", new_c, None),
        ]);
        let apply = |w, needed: &mut HashSet<ChunkId>| {
            apply_files(
                &state,
                &m,
                &fetched(std::slice::from_ref(&rec)),
                &[],
                w,
                needed,
            )
            .expect("apply")
        };
        // b.c is current already: only a.c and c.c are wanted.
        let (w, mut needed) = wanted(&[("src/a.c", new_a), ("src/c.c", new_c)]);
        let got = apply(w, &mut needed);
        assert_eq!((got.files, got.failed, got.chunks), (2, 0, 2));
        assert!(needed.is_empty());
        for c in [new_a, new_c] {
            assert_eq!(
                state.read_staged(&ChunkId::of(c)).expect("staged").data(),
                c
            );
        }

        // b.c's reference gone (or of another size, or other bytes): in its place zeros
        // (or the other bytes) make the prefix; a.c and c.c did not draw on it.
        let b_was = std::fs::read(m.join("src/b.c")).expect("b");
        for damage in ["gone", "size", "bytes"] {
            match damage {
                "gone" => std::fs::remove_file(m.join("src/b.c")).expect("rm"),
                "size" => std::fs::write(m.join("src/b.c"), b"changed").expect("b"),
                _ => std::fs::write(m.join("src/b.c"), b"void c(void) {}\n").expect("b"),
            }
            let (w, mut needed) = wanted(&[("src/a.c", new_a), ("src/c.c", new_c)]);
            let got = apply(w, &mut needed);
            assert_eq!((got.files, got.failed, got.chunks), (2, 0, 2), "{damage}");
        }
        // b.c wanted, its own reference other bytes: what comes out is not b.c.
        let (w, mut needed) = wanted(&[("src/b.c", new_b)]);
        let got = apply(w, &mut needed);
        assert_eq!((got.files, got.failed, needed.len()), (0, 1, 1));
        std::fs::write(m.join("src/b.c"), b_was).expect("b");

        // A wanted file whose indexed size is not the item's is not taken from the batch.
        let (mut w, mut needed) = wanted(&[("src/a.c", new_a)]);
        w.insert(b"src/a.c".to_vec(), vec![(ChunkId::of(new_a), 3)]);
        let got = apply_files(&state, &m, &fetched(&[rec]), &[], w, &mut needed).expect("apply");
        assert_eq!((got.files, got.failed, got.chunks), (0, 0, 0));
    }

    #[test]
    fn an_own_chunk_batch_rebuilds_an_images_own_chunks_against_the_old_image_in_place() {
        let tmp = tempfile::tempdir().expect("tmp");
        let m = tmp.path().join("m");
        std::fs::create_dir_all(m.join("cd")).expect("mirror");
        // The image: an own chunk, a package of the tree (a file part), another own
        // chunk. The new one's own chunks differ from the old ones in a byte each, so that
        // they come out right only from the old ones.
        let own = |tag: u8, n: u8| -> Vec<u8> {
            let mut c: Vec<u8> = (0..200u32)
                .map(|i| (i * 7 + u32::from(tag)) as u8)
                .collect();
            c[100] = n;
            c
        };
        let (h1, t1, h2, t2) = (own(1, 1), own(2, 1), own(1, 2), own(2, 2));
        let old_image = [&h1[..], b"pkg1", &t1].concat();
        std::fs::write(m.join("cd/img"), &old_image).expect("old image");
        let image = |state: &State, name: &str, head: &[u8], pkg: &[u8], tail: &[u8]| {
            let chunk = |d: &[u8]| pulpdist_format::ChunkRef {
                id: ChunkId::of(d),
                loc: testkit::loc(1, d.len() as u32),
            };
            let ids = [ChunkId::of(head), ChunkId::of(pkg), ChunkId::of(tail)];
            let img = pulpdist_format::Entry {
                kind: EntryKind::Composite {
                    size: 404,
                    chunk_hash: pulpdist_format::chunk_list_hash(&ids),
                    parts: vec![
                        pulpdist_format::Part::Chunks(vec![chunk(head)]),
                        pulpdist_format::Part::File {
                            path: b"cd/pkg".to_vec(),
                            size: 4,
                        },
                        pulpdist_format::Part::Chunks(vec![chunk(tail)]),
                    ],
                },
                ..testkit::file(name, b"", 0)
            };
            testkit::cached(state, vec![img, testkit::file("pkg", pkg, 0)])
        };
        let split = |p: &str| p.split('/').map(name).collect::<Vec<_>>();
        // Applies an own-chunk batch of the new image `cd/img` against the old image
        // `old_name` of the same directory, with the own chunks (and the package) still
        // needed or not; returns (files, failed, chunks staged, chunks still needed).
        let apply = |old_name: &str, needed_own: bool| {
            let dir = tempfile::tempdir().expect("state");
            let state = testkit::state(dir.path());
            let old = image(&state, old_name, &h1, b"pkg1", &t1);
            let new = image(&state, "img", &h2, b"pkg2", &t2);
            let change = super::super::walk::DirChange {
                rel: PathBuf::from("cd"),
                old: Some(old.id()),
                new: new.id(),
            };
            let items = [BatchItem {
                path: split("cd/img"),
                reference: Some(split(&format!("cd/{old_name}"))),
                size: 400,
                ref_size: 400,
            }];
            let rec = batch_record(
                BatchKind::OwnChunks,
                &items,
                &[&h1[..], &t1].concat(),
                &[&h2[..], &t2].concat(),
            );
            let chunks = vec![
                (ChunkId::of(&h2), 200),
                (ChunkId::of(b"pkg2"), 4),
                (ChunkId::of(&t2), 200),
            ];
            let w: Wanted = [(b"cd/img".to_vec(), chunks)].into();
            let mut needed: HashSet<ChunkId> = [ChunkId::of(b"pkg2")].into();
            if needed_own {
                needed.extend([ChunkId::of(&h2), ChunkId::of(&t2)]);
            }
            let f = fetched(&[rec]);
            let out = apply_files(
                &state,
                &m,
                &f,
                std::slice::from_ref(&change),
                w,
                &mut needed,
            )
            .expect("apply");
            (out.files, out.failed, out.chunks, needed.len())
        };
        // The package is still needed (from the fetch): the own chunks come from the
        // batch, against the old image's own chunks read around the package in it.
        assert_eq!(apply("img", true), (1, 0, 2, 1));
        // Only the package needed: the batch is not decoded at all.
        assert_eq!(apply("img", false), (0, 0, 0, 1));
        // The old image under another name (named by its version), which the mirror does
        // not hold: the reference is zeros and nothing right comes out (fetched instead).
        assert_eq!(apply("img-1", true), (0, 1, 0, 3));
        // The old image grown on the mirror: its own chunks are not where the old entry
        // says, the reference is zeros.
        std::fs::write(m.join("cd/img"), [&old_image[..], b"+"].concat()).expect("grown");
        assert_eq!(apply("img", true), (0, 1, 0, 3));
    }

    #[test]
    fn a_file_batch_past_the_decode_budget_is_fetched_instead() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let m = tmp.path().join("m");
        std::fs::create_dir_all(&m).expect("mirror");
        let content = vec![7u8; (FREE_BATCH + (1 << 16)) as usize];
        let rec = file_batch(&[("big", &content, None)]);
        let (mut w, mut needed) = wanted(&[("big", &content)]);
        let mut files = Files {
            state: &state,
            safe: SafeDirs::new(&m),
            object: "delta".into(),
            out: Applied::default(),
            budget: 1 << 10,
            own_used: HashSet::new(),
        };
        let b = Batch::decode(&rec).expect("decodes").expect("a batch");
        files.batch(&b, None, &mut w, &mut needed).expect("apply");
        assert_eq!((files.out.files, files.out.failed), (0, 1));
        assert_eq!(needed.len(), 1);
        // The writer's largest batch (4 MiB of files against 4 MiB of references) is not
        // charged either: decoded with only its list's bytes left.
        files.budget = 1 << 10;
        let (old, new) = (vec![1u8; 4 << 20], vec![2u8; 4 << 20]);
        std::fs::write(m.join("whole"), &old).expect("reference");
        let rec = file_batch(&[("whole", &new, Some(("whole", &old)))]);
        let (mut w, mut needed) = wanted(&[("whole", &new)]);
        let b = Batch::decode(&rec).expect("decodes").expect("a batch");
        files.batch(&b, None, &mut w, &mut needed).expect("apply");
        assert!(needed.is_empty(), "the writer's largest batch");
        files.out = Applied::default();
        // A batch of the writer's shape costs only its list (tens of bytes per file): an
        // honest update of many small files never runs out.
        files.budget = 1 << 10;
        for i in 0..3u8 {
            let small = vec![i; 1 << 20];
            let rec = file_batch(&[("small", &small, None)]);
            let (mut w, mut needed) = wanted(&[("small", &small)]);
            let b = Batch::decode(&rec).expect("decodes").expect("a batch");
            files.batch(&b, None, &mut w, &mut needed).expect("apply");
            assert!(needed.is_empty(), "batch {i}");
        }
        assert_eq!((files.out.files, files.out.failed), (3, 0));
    }

    /// Regression: two files of one content (a file and its copy, both changed) in one
    /// delta: the second found its pieces already staged by the first and counted as a
    /// failed record (`delta_failed` in the report, on botocore's real update), though
    /// nothing failed.
    #[test]
    fn a_copy_whose_pieces_the_delta_already_gave_is_not_a_failure() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let m = tmp.path().join("m");
        std::fs::create_dir_all(&m).expect("mirror");
        let content = b"the same new content".to_vec();
        let rec = file_batch(&[("a", &content, None), ("b", &content, None)]);
        let (mut w, mut needed) = wanted(&[("a", &content), ("b", &content)]);
        let mut files = Files {
            state: &state,
            safe: SafeDirs::new(&m),
            object: "delta".into(),
            out: Applied::default(),
            budget: 1 << 20,
            own_used: HashSet::new(),
        };
        let b = Batch::decode(&rec).expect("decodes").expect("a batch");
        files.batch(&b, None, &mut w, &mut needed).expect("apply");
        assert!(needed.is_empty());
        assert_eq!((files.out.files, files.out.failed), (1, 0));
    }

    /// Stores written before node batches carry a record per node (kind 1): still read.
    #[test]
    fn node_records_of_older_writers_are_still_applied() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = testkit::state(tmp.path());
        let (r1, r2, a2, r1b, a1b) = versions(&state);
        let record = |path: Vec<Name>, new: &Node, old: &[u8]| {
            let plain = new.encode();
            DeltaRecord {
                kind: RecordKind::Node,
                reference: Some(path.clone()),
                path,
                size: plain.len() as u64,
                ref_size: old.len() as u64,
            }
            .encode(&delta::encode(old, &plain, 3).expect("frame"))
        };
        let recs = [
            record(Vec::new(), &r2, &r1b),
            record(vec![name("a")], &a2, &a1b),
        ];
        let n = apply_nodes(&state, &fetched(&recs), &r1.id()).expect("apply");
        assert_eq!(n, 2);
        assert_eq!(state.node_bytes(&r2.id()), Some(r2.encode()));
    }
}
