//! Delta packs (FORMAT.md 5.6): each file that changed since an earlier version, compressed
//! with that version's copy as zstd prefix. The earlier version's file comes from the store
//! (its chunks), the new one from the source, checked against the chunk list just indexed.
//!
//! The walk compares the new index with the old one and descends only where directory
//! node ids differ, so its cost follows the change, not the tree.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use pulpdist_chunker::delta;
use pulpdist_format::delta::{
    BatchItem, BatchKind, DeltaInfo, DeltaRecord, RecordKind, MAX_BATCH, MAX_BATCH_NAMES,
    MAX_DELTA_PACK, MAX_DELTA_PARTS,
};
use pulpdist_format::pack::ObjectKind;
use pulpdist_format::{
    ChunkId, ChunkRef, Codec, EntryKind, Name, Node, NodeId, NodeRef, PackId, PackKind,
    VerifiedChunk,
};

use crate::error::{IoContext, PublishError};
use crate::packer::{Naming, Packer};
use crate::store::Store;

/// What deltas to write and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeltaSettings {
    /// zstd level of delta frames.
    pub(crate) level: i32,
    /// Largest size of one delta pack; a larger delta is written as several
    /// ([`MAX_DELTA_PARTS`] at most).
    pub(crate) part_size: u64,
}

/// Counts of a delta publish.
#[derive(Clone, Debug, Default)]
pub struct DeltaReport {
    /// The version the delta applies to.
    pub from_version: u64,
    /// Files in it.
    pub files: u64,
    /// Of those, compressed against a reference.
    pub with_reference: u64,
    /// Index nodes in it.
    pub nodes: u64,
    /// Bytes of the files it rebuilds.
    pub bytes_rebuilt: u64,
    /// Size of the delta's packs together (0: none written).
    pub size: u64,
    /// Packs it was written as (a delta larger than the part size is several).
    pub parts: u64,
    /// zstd level of its file records (node batches above 8 MiB use at most 9).
    pub level: i32,
    /// Why files (or the whole delta) were left out: unreadable, changed since they were
    /// indexed, or the pack full. Such files are fetched as chunks; a publish never fails
    /// for a delta.
    pub skipped: Vec<String>,
}

/// Nodes of the version being published that are new to the store (in memory), and a
/// reader for the others.
pub(crate) struct Nodes<'a> {
    /// Their encodings (decoded when the delta walk reaches them: a 1,000-entry node
    /// takes about 45 kB encoded and 200 kB decoded).
    pub(crate) fresh: HashMap<NodeId, Vec<u8>>,
    pub(crate) store: &'a dyn Store,
}

impl Nodes<'_> {
    /// A node and its encoding: decoded from this publish's encoding, or read and checked.
    fn get(&self, r: &NodeRef) -> Result<(Node, Vec<u8>), PublishError> {
        if let Some(bytes) = self.fresh.get(&r.id) {
            let node = Node::decode(bytes).map_err(|source| PublishError::Format {
                object: format!("node {} of this publish", r.id),
                source,
            })?;
            return Ok((node, bytes.clone()));
        }
        let stored = self.store.read_pack_range(r.loc.pack, r.loc.range())?;
        r.open_with_bytes(&stored)
            .map_err(|source| PublishError::Format {
                object: format!("node {} in {}", r.id, r.loc.pack.object_key()),
                source,
            })
    }
}

/// Where a record's content, or its reference, comes from.
enum Content {
    /// A file of the source tree, checked against these chunks.
    Source(Vec<ChunkRef>),
    /// Chunks in the store.
    Stored(Vec<ChunkRef>),
    /// Bytes in hand (index node encodings).
    Bytes(Vec<u8>),
}

/// A file or directory node to put in a delta.
struct Job {
    kind: RecordKind,
    path: Vec<Name>,
    size: u64,
    content: Content,
    reference: Option<Reference>,
    /// A composite file's own chunks (an own-chunk batch, kind 5), not a whole file.
    own: bool,
}

/// What a record is encoded against: the old file's (or node's) path, size and content.
type Reference = (Vec<Name>, u64, Content);

/// The name a package file keeps across versions: what precedes the first `_` (Debian:
/// `name_version_arch.deb`) or the first `-` followed by a digit (`name-1.2.tar.gz`, RPM),
/// whichever comes first. `None` for names without either.
fn package_key(name: &[u8]) -> Option<&[u8]> {
    let underscore = name.iter().position(|b| *b == b'_');
    let dash_digit = name
        .windows(2)
        .position(|w| w[0] == b'-' && w[1].is_ascii_digit());
    let end = match (underscore, dash_digit) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    (end > 0).then(|| &name[..end])
}

/// For a file new at its path, the old directory's file of the same package name that
/// resembles it most (longest common name prefix, then size closest): a plain file of at
/// most [`delta::MAX_DELTA_FILE`], or with `composite` a composite file (an image named by
/// its version, `debian-12.1.0-amd64-netinst.iso` after `debian-12.0.0-…`).
fn closest_package<'n>(
    old: &'n Node,
    name: &[u8],
    size: u64,
    composite: bool,
) -> Option<&'n pulpdist_format::Entry> {
    let key = package_key(name)?;
    old.entries()
        .iter()
        .filter(|e| {
            e.name.as_bytes() != name
                && package_key(e.name.as_bytes()) == Some(key)
                && match (&e.kind, composite) {
                    (EntryKind::File { size, .. }, false) => *size <= delta::MAX_DELTA_FILE,
                    (EntryKind::Composite { .. }, true) => true,
                    _ => false,
                }
        })
        .max_by_key(|e| {
            let common = e
                .name
                .as_bytes()
                .iter()
                .zip(name)
                .take_while(|(a, b)| a == b)
                .count();
            let s = e.kind.file_size().unwrap_or(0);
            (common, std::cmp::Reverse(s.abs_diff(size)))
        })
}

/// A changed file's record, if it is worth one: its reference (the old file of that name,
/// else the closest package of the old directory) and its content. None for a file whose
/// chunks did not change, one too large for a delta, or one with nothing to refer to and
/// most of its bytes not new since the old version (a copy, a move, an image of files the
/// tree has: the site has them already).
fn file_job(
    old: Option<&Node>,
    rel: &[Name],
    name: &[u8],
    (size, chunks): (u64, &Vec<ChunkRef>),
    old_file: Option<(u64, &Vec<ChunkRef>)>,
    new_packs: &HashSet<PackId>,
) -> Option<(Option<Reference>, Content)> {
    if let Some((_, oc)) = old_file {
        if oc.len() == chunks.len() && oc.iter().zip(chunks).all(|(a, b)| a.id == b.id) {
            return None;
        }
    }
    // An empty file needs nothing from a delta; one too large gets none.
    if chunks.is_empty() || size > delta::MAX_DELTA_FILE {
        return None;
    }
    let path_of = |n: &Name| {
        let mut p = rel.to_vec();
        p.push(n.clone());
        p
    };
    let reference = match old_file {
        Some((s, oc)) if s <= delta::MAX_DELTA_FILE => {
            let own = old.and_then(|o| o.get(name)).map(|oe| path_of(&oe.name))?;
            Some((own, s, Content::Stored(oc.clone())))
        }
        _ => old
            .and_then(|o| closest_package(o, name, size, false))
            .and_then(|oe| match &oe.kind {
                EntryKind::File { size, chunks } => {
                    Some((path_of(&oe.name), *size, Content::Stored(chunks.clone())))
                }
                _ => None,
            }),
    };
    if reference.is_none() && !mostly_new(chunks, size, new_packs) {
        return None;
    }
    Some((reference, Content::Source(chunks.clone())))
}

/// Whether more than half of `size` bytes of `chunks` are in packs written since the old
/// version: content without a reference is worth a record only then (otherwise the site
/// most likely has it already: a copy, a move, an image of the tree's own files).
fn mostly_new(chunks: &[ChunkRef], size: u64, new_packs: &HashSet<PackId>) -> bool {
    let fresh: u64 = chunks
        .iter()
        .filter(|c| new_packs.contains(&c.loc.pack))
        .map(|c| u64::from(c.loc.raw_len))
        .sum();
    fresh * 2 > size
}

fn diff(
    nodes: &Nodes<'_>,
    new: &(Node, Vec<u8>),
    old: Option<&(Node, Vec<u8>)>,
    rel: &[Name],
    new_packs: &HashSet<PackId>,
    jobs: &mut Vec<Job>,
) -> Result<(), PublishError> {
    // The directory's node itself, against its old node.
    jobs.push(Job {
        kind: RecordKind::Node,
        path: rel.to_vec(),
        size: new.1.len() as u64,
        content: Content::Bytes(new.1.clone()),
        reference: old.map(|o| (rel.to_vec(), o.1.len() as u64, Content::Bytes(o.1.clone()))),
        own: false,
    });
    let (new, old) = (&new.0, old.map(|o| &o.0));
    for e in new.entries() {
        // The entry's path, made only for what goes on (most entries are unchanged).
        let path = || {
            let mut p = rel.to_vec();
            p.push(e.name.clone());
            p
        };
        let old_e = old.and_then(|o| o.get(e.name.as_bytes()));
        match &e.kind {
            EntryKind::File { size, chunks } => {
                let old_file = match old_e.map(|o| &o.kind) {
                    Some(EntryKind::File { size, chunks }) => Some((*size, chunks)),
                    _ => None,
                };
                let job = file_job(
                    old,
                    rel,
                    e.name.as_bytes(),
                    (*size, chunks),
                    old_file,
                    new_packs,
                );
                jobs.extend(job.map(|(reference, content)| Job {
                    kind: RecordKind::File,
                    path: path(),
                    size: *size,
                    content,
                    reference,
                    own: false,
                }));
            }
            EntryKind::Dir { node } => {
                let old_child = match old_e.map(|o| &o.kind) {
                    Some(EntryKind::Dir { node: on }) if on.id == node.id => continue,
                    Some(EntryKind::Dir { node: on }) => Some(nodes.get(on)?),
                    _ => None,
                };
                let child = nodes.get(node)?;
                diff(nodes, &child, old_child.as_ref(), &path(), new_packs, jobs)?;
            }
            // A composite file's file parts are files of the tree, with records of their
            // own when they changed; its own chunks (an image's metadata) go in an
            // own-chunk batch.
            EntryKind::Composite { .. } => {
                jobs.extend(
                    own_chunks_job(e, old, new_packs).map(|(size, content, reference)| Job {
                        kind: RecordKind::File,
                        path: path(),
                        size,
                        content,
                        reference: reference.map(|(name, s, c)| {
                            let mut p = rel.to_vec();
                            p.push(name);
                            (p, s, c)
                        }),
                        own: true,
                    }),
                );
            }
            EntryKind::Symlink { .. } => {}
        }
    }
    Ok(())
}

/// The old composite file whose own chunks an own-chunk item is compressed against: its
/// name (in the same directory), and its own chunks' size and chunks.
type OwnReference = (Name, u64, Content);

/// A changed composite file's own chunks (FORMAT.md 5.6, kind 5), if worth a record: their
/// size and chunks, and as the reference the own chunks of the old directory's composite
/// file of the same name, else of the same package name (an image named by its version).
/// None when its own chunks did not change (a package it names did: that file has its
/// own record), it has none, more than [`delta::MAX_DELTA_FILE`] of them, or no reference
/// and most of them not new since the old version.
fn own_chunks_job(
    new: &pulpdist_format::Entry,
    old_dir: Option<&Node>,
    new_packs: &HashSet<PackId>,
) -> Option<(u64, Content, Option<OwnReference>)> {
    let own: Vec<ChunkRef> = new.kind.own_chunks().copied().collect();
    let size: u64 = own.iter().map(|c| u64::from(c.loc.raw_len)).sum();
    let name = new.name.as_bytes();
    let same = old_dir.and_then(|o| o.get(name));
    if let Some(o @ EntryKind::Composite { .. }) = same.map(|o| &o.kind) {
        let mut old_own = o.own_chunks();
        if own
            .iter()
            .all(|c| old_own.next().map(|oc| oc.id) == Some(c.id))
            && old_own.next().is_none()
        {
            return None;
        }
    }
    if own.is_empty() || size > delta::MAX_DELTA_FILE {
        return None;
    }
    let old = match same {
        Some(e) => Some(e).filter(|e| matches!(e.kind, EntryKind::Composite { .. })),
        None => old_dir.and_then(|o| closest_package(o, name, new.kind.file_size()?, true)),
    };
    let reference = old.and_then(|o| {
        let chunks: Vec<ChunkRef> = o.kind.own_chunks().copied().collect();
        let s: u64 = chunks.iter().map(|c| u64::from(c.loc.raw_len)).sum();
        (s > 0 && s <= delta::MAX_DELTA_FILE).then(|| (o.name.clone(), s, Content::Stored(chunks)))
    });
    if reference.is_none() && !mostly_new(&own, size, new_packs) {
        return None;
    }
    Some((size, Content::Stored(own), reference))
}

/// The bytes of a file of an earlier version, from its chunks in the store (runs of
/// adjacent chunks read at once), each chunk verified.
fn read_old(store: &dyn Store, chunks: &[ChunkRef]) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let first = chunks[i].loc;
        let mut j = i + 1;
        while j < chunks.len()
            && chunks[j].loc.pack == first.pack
            && chunks[j].loc.offset == chunks[j - 1].loc.range().end
        {
            j += 1;
        }
        let range = first.offset..chunks[j - 1].loc.range().end;
        let buf = store.read_pack_range(first.pack, range.clone())?;
        for c in &chunks[i..j] {
            let at = (c.loc.offset - range.start) as usize;
            let stored =
                buf.get(at..at + c.loc.stored_len as usize)
                    .ok_or_else(|| PublishError::Short {
                        object: format!("{} (chunk {})", first.pack.object_key(), c.id),
                        got: buf.len() as u64,
                        wanted: (at + c.loc.stored_len as usize) as u64,
                    })?;
            let v = VerifiedChunk::from_stored(c.id, c.loc.codec, stored, c.loc.raw_len).map_err(
                |source| PublishError::Format {
                    object: format!("chunk {} in {}", c.id, c.loc.pack.object_key()),
                    source,
                },
            )?;
            out.extend_from_slice(v.data());
        }
        i = j;
    }
    Ok(out)
}

fn to_path(source: &Path, path: &[Name]) -> PathBuf {
    let mut p = source.to_path_buf();
    for n in path {
        p.push(n.to_os_string());
    }
    p
}

/// A file of the source, if it still is what the index says.
fn read_source(
    source: &Path,
    path: &[Name],
    size: u64,
    chunks: &[ChunkRef],
) -> Result<Option<Vec<u8>>, PublishError> {
    let abs = to_path(source, path);
    let data = fs::read(&abs).at(&abs)?;
    if data.len() as u64 != size {
        return Ok(None);
    }
    // Cut where the index cut it (ISO images are cut along their extents, not by CDC).
    let mut offset = 0usize;
    for c in chunks {
        let end = offset + c.loc.raw_len as usize;
        match data.get(offset..end) {
            Some(piece) if ChunkId::of(piece) == c.id => offset = end,
            _ => return Ok(None),
        }
    }
    Ok((offset == data.len()).then_some(data))
}

fn content(
    store: &dyn Store,
    source: &Path,
    path: &[Name],
    size: u64,
    c: &Content,
) -> Result<Option<Vec<u8>>, PublishError> {
    match c {
        Content::Source(chunks) => read_source(source, path, size, chunks),
        Content::Stored(chunks) => read_old(store, chunks).map(Some),
        Content::Bytes(b) => Ok(Some(b.clone())),
    }
}

/// A job's content and its reference's path and content (none if it cannot be read: a
/// reference that cannot be read is no reason to leave the file out). `Err`: why the job
/// is left out.
#[allow(clippy::type_complexity)]
fn read_job<'j>(
    store: &dyn Store,
    source: &Path,
    job: &'j Job,
) -> Result<(Vec<u8>, Option<(&'j Vec<Name>, Vec<u8>)>), String> {
    let shown =
        || String::from_utf8_lossy(&pulpdist_format::delta::join_path(&job.path)).into_owned();
    let too_long = |p: &[Name]| pulpdist_format::delta::join_path(p).len() > usize::from(u16::MAX);
    if too_long(&job.path) || job.reference.as_ref().is_some_and(|(p, _, _)| too_long(p)) {
        return Err(format!("{}: path longer than 65,535 bytes", shown()));
    }
    let data = content(store, source, &job.path, job.size, &job.content)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: changed since it was indexed", shown()))?;
    let reference = job.reference.as_ref().and_then(|(p, size, c)| {
        content(store, source, p, *size, c)
            .ok()
            .flatten()
            .filter(|r| r.len() as u64 == *size)
            .map(|r| (p, r))
    });
    Ok((data, reference))
}

/// Encodes one job's record. `Err`: why the job is left out.
fn encode_job(store: &dyn Store, source: &Path, level: i32, job: &Job) -> Result<Vec<u8>, String> {
    let shown =
        || String::from_utf8_lossy(&pulpdist_format::delta::join_path(&job.path)).into_owned();
    let (data, reference) = read_job(store, source, job)?;
    let frame = delta::encode(
        reference.as_ref().map_or(&[][..], |(_, r)| r.as_slice()),
        &data,
        level,
    )
    .map_err(|e| format!("{}: {e}", shown()))?;
    let rec = DeltaRecord {
        kind: job.kind,
        path: job.path.clone(),
        reference: reference.as_ref().map(|(p, _)| (*p).clone()),
        size: job.size,
        ref_size: reference.as_ref().map_or(0, |(_, r)| r.len() as u64),
    };
    Ok(rec.encode(&frame))
}

/// Splits the node jobs (in index order: a directory before its subdirectories) into
/// batches whose new nodes, and whose references, each add up to at most
/// [`NODE_BATCH_TARGET`] (a node larger than that gets a batch of its own, up to
/// [`MAX_BATCH`]). Nodes whose path cannot be carried are left out (noted).
fn node_batches(jobs: Vec<Job>, report: &mut DeltaReport) -> Vec<Vec<Job>> {
    let mut out: Vec<Vec<Job>> = Vec::new();
    let (mut size, mut ref_size, mut names) = (0u64, 0u64, 0usize);
    for job in jobs {
        let path = pulpdist_format::delta::join_path(&job.path);
        let job_ref = job.reference.as_ref().map_or(0, |(_, s, _)| *s);
        let ref_path_len = job
            .reference
            .as_ref()
            .map_or(0, |(p, _, _)| pulpdist_format::delta::join_path(p).len());
        if path.len() > usize::from(u16::MAX)
            || ref_path_len > usize::from(u16::MAX)
            || job.size > MAX_BATCH
            || job_ref > MAX_BATCH
        {
            report.skipped.push(format!(
                "{}/: directory node too large, or its path too long, for a delta",
                String::from_utf8_lossy(&path)
            ));
            continue;
        }
        let job_names = names_of(&job);
        let full = size + job.size > NODE_BATCH_TARGET
            || ref_size + job_ref > NODE_BATCH_TARGET
            || names + job_names > MAX_BATCH_NAMES;
        if full {
            (size, ref_size, names) = (0, 0, 0);
        }
        size += job.size;
        ref_size += job_ref;
        names += job_names;
        match out.last_mut() {
            Some(batch) if !full => batch.push(job),
            _ => out.push(vec![job]),
        }
    }
    out
}

/// The zstd level of a node batch: the delta level (at most 19), or at most
/// [`NODE_BATCH_LARGE_LEVEL`] above [`NODE_BATCH_SMALL`] bytes of new or of old nodes.
fn node_batch_level(batch: &[Job], level: i32) -> i32 {
    let size: u64 = batch.iter().map(|j| j.size).sum();
    let refs: u64 = batch
        .iter()
        .map(|j| j.reference.as_ref().map_or(0, |(_, s, _)| *s))
        .sum();
    match size.max(refs) <= NODE_BATCH_SMALL {
        true => level.min(19),
        false => level.min(NODE_BATCH_LARGE_LEVEL),
    }
}

/// One node batch record (FORMAT.md 5.6, kind 4) and its trailer id (BLAKE3 of its list).
/// `Err`: why the batch is left out (its nodes are then fetched).
fn encode_node_batch(jobs: &[Job], level: i32) -> Result<(Vec<u8>, [u8; 32]), String> {
    use pulpdist_format::delta::{blank_children, join_path, NodeItem, NodeList};
    let at: HashMap<Vec<u8>, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (join_path(&j.path), i))
        .collect();
    // The old subdirectories' names of each referenced directory, decoded once.
    let mut old_subdirs: HashMap<usize, Vec<Name>> = HashMap::new();
    let mut last = HashMap::new();
    let mut items = Vec::with_capacity(jobs.len());
    let (mut prefix, mut data) = (Vec::new(), Vec::new());
    let (mut ref_sizes, mut sizes) = (Vec::new(), Vec::new());
    for (i, job) in jobs.iter().enumerate() {
        let shown = || String::from_utf8_lossy(&join_path(&job.path)).into_owned();
        let Content::Bytes(bytes) = &job.content else {
            return Err(format!("{}/: not a node", shown()));
        };
        let node = Node::decode(bytes).map_err(|e| format!("{}/: {e}", shown()))?;
        let carried = blank_children(&node, |name| {
            let mut p = job.path.clone();
            p.push(name.clone());
            at.contains_key(&join_path(&p))
        })
        .map_err(|e| format!("{}/: {e}", shown()))?;
        let reference = match &job.reference {
            Some((p, _, Content::Bytes(old))) if *p == job.path => {
                prefix.extend_from_slice(old);
                ref_sizes.push(old.len() as u32);
                true
            }
            _ => false,
        };
        items.push(NodeItem {
            path: node_path(jobs, &at, &mut old_subdirs, &mut last, i)?,
            reference,
        });
        sizes.push(carried.len() as u32);
        data.extend_from_slice(&carried);
    }
    // In columns: a release's re-stamped mtimes and the entries around them then match the
    // old nodes in long runs.
    let columns = |bytes: &[u8], sizes: &[u32]| {
        pulpdist_format::delta::to_columns(bytes, sizes)
            .map_err(|e| format!("directory nodes: {e}"))
    };
    let (data, prefix) = (columns(&data, &sizes)?, columns(&prefix, &ref_sizes)?);
    let list = NodeList {
        nodes_size: u32::try_from(data.len()).map_err(|_| "directory nodes: too large")?,
        items,
    };
    encode_batch(
        BatchKind::NodeColumns,
        (list.items.len(), &list.encode()),
        &prefix,
        &data,
        level,
    )
    .map_err(|e| format!("directory nodes: {e}"))
}

/// Where the `i`-th directory of a node batch is, in its list (FORMAT.md 5.6, kind 4): an
/// old subdirectory of an earlier item with a reference (`last`: per parent item, the old
/// subdirectory its last such child was), or a named subdirectory of an earlier item, or
/// the whole path (the root, or a directory whose parent is in no batch or in another).
fn node_path(
    jobs: &[Job],
    at: &HashMap<Vec<u8>, usize>,
    old_subdirs: &mut HashMap<usize, Vec<Name>>,
    last: &mut HashMap<usize, usize>,
    i: usize,
) -> Result<pulpdist_format::delta::NodePath, String> {
    use pulpdist_format::delta::{join_path, NodePath};
    let path = &jobs[i].path;
    let Some((name, parent)) = path.split_last() else {
        return Ok(NodePath::Full(Vec::new()));
    };
    let Some(&j) = at.get(&join_path(parent)).filter(|j| **j < i) else {
        return Ok(NodePath::Full(path.clone()));
    };
    let back = u32::try_from(i - j).map_err(|_| "directory nodes: too many")?;
    let subdirs = match &jobs[j].reference {
        Some((p, _, Content::Bytes(old))) if p == parent => match old_subdirs.entry(j) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let node = Node::decode(old).map_err(|e| format!("old node: {e}"))?;
                e.insert(
                    node.entries()
                        .iter()
                        .filter(|e| matches!(e.kind, EntryKind::Dir { .. }))
                        .map(|e| e.name.clone())
                        .collect(),
                )
            }
        },
        _ => {
            return Ok(NodePath::Named {
                back,
                name: name.clone(),
            })
        }
    };
    let Ok(index) = subdirs.binary_search_by(|n| n.as_bytes().cmp(name.as_bytes())) else {
        return Ok(NodePath::Named {
            back,
            name: name.clone(),
        });
    };
    // Items are in index order, so a parent's old subdirectories come in name order: the
    // skip counts from the last one named.
    let skip = match last.insert(j, index) {
        Some(prev) if prev < index => index - prev - 1,
        None => index,
        Some(_) => return Err("directory nodes: not in index order".into()),
    };
    Ok(NodePath::OldSubdir {
        back,
        skip: skip as u32,
    })
}

/// A batch record from its item count and list, the references concatenated in list
/// order (the prefix) and the items' bytes concatenated likewise; and its trailer id
/// (BLAKE3 of the list). Long-distance matching: an item's reference may lie megabytes
/// back.
fn encode_batch(
    kind: BatchKind,
    (count, list): (usize, &[u8]),
    prefix: &[u8],
    data: &[u8],
    level: i32,
) -> Result<(Vec<u8>, [u8; 32]), delta::DeltaError> {
    let list_size =
        u32::try_from(list.len()).map_err(|_| delta::DeltaError::TooLarge(list.len() as u64))?;
    let list_frame = delta::encode(&[], list, 19)?;
    let frame = delta::encode_with(prefix, data, level, true)?;
    let rec = pulpdist_format::delta::Batch {
        kind,
        count: count as u32,
        list_size,
        list_frame: &list_frame,
        frame: &frame,
    }
    .encode();
    Ok((rec, *blake3::hash(list).as_bytes()))
}

/// Splits the file jobs into batches of small files (each file and its reference at most
/// [`FILE_BATCH_ITEM`]; the files of a batch, and their references, each adding up to
/// about [`FILE_BATCH_TARGET`]) and the files that get a record each. Index order is kept.
fn file_batches(jobs: Vec<Job>) -> (Vec<Vec<Job>>, Vec<Job>) {
    let (mut batches, mut single): (Vec<Vec<Job>>, Vec<Job>) = (Vec::new(), Vec::new());
    let (mut size, mut ref_size, mut list, mut names) = (0u64, 0u64, 0u64, 0usize);
    for job in jobs {
        let job_ref = job.reference.as_ref().map_or(0, |(_, s, _)| *s);
        if job.size > FILE_BATCH_ITEM || job_ref > FILE_BATCH_ITEM {
            single.push(job);
            continue;
        }
        // The item's bytes in the list (FORMAT.md 5.6): paths and 11 bytes of sizes and
        // flags, and 2 for another reference path.
        let path_len = |p: &[Name]| p.iter().map(|n| n.as_bytes().len() as u64 + 1).sum::<u64>();
        let item =
            13 + path_len(&job.path) + job.reference.as_ref().map_or(0, |(p, _, _)| path_len(p));
        let job_names = names_of(&job);
        let full = size + job.size > FILE_BATCH_TARGET
            || ref_size + job_ref > FILE_BATCH_TARGET
            || list + item > FILE_BATCH_LIST
            || names + job_names > MAX_BATCH_NAMES
            || batches.last().is_some_and(|b| b.len() >= FILE_BATCH_ITEMS);
        if full {
            (size, ref_size, list, names) = (0, 0, 0, 0);
        }
        size += job.size;
        ref_size += job_ref;
        list += item;
        names += job_names;
        match batches.last_mut() {
            Some(batch) if !full => batch.push(job),
            _ => batches.push(vec![job]),
        }
    }
    (batches, single)
}

/// One file batch record (FORMAT.md 5.6, kind 3), its trailer id, and per job whether it
/// is in the batch with a reference (`Some(true)`), without one (`Some(false)`), or left
/// out (`None`, the reason in the last list: a file changed since it was indexed, a path
/// too long). `Err`: why the whole batch is left out.
fn encode_file_batch(
    store: &dyn Store,
    source: &Path,
    level: i32,
    jobs: &[Job],
) -> Result<EncodedFiles, String> {
    use pulpdist_format::delta::join_path;
    let mut items = Vec::with_capacity(jobs.len());
    let mut included = Vec::with_capacity(jobs.len());
    let mut skipped = Vec::new();
    let (mut prefix, mut data) = (Vec::new(), Vec::new());
    for job in jobs {
        let read = read_job(store, source, job);
        let (content, reference) = match read {
            Ok(r) => r,
            Err(why) => {
                included.push(None);
                skipped.push(why);
                continue;
            }
        };
        included.push(Some(reference.is_some()));
        items.push(BatchItem {
            path: job.path.clone(),
            size: content.len() as u32,
            ref_size: reference.as_ref().map_or(0, |(_, r)| r.len() as u32),
            reference: reference.as_ref().map(|(p, _)| (*p).clone()),
        });
        if let Some((_, r)) = reference {
            prefix.extend_from_slice(&r);
        }
        data.extend_from_slice(&content);
    }
    if items.is_empty() {
        return Err(skipped.join("; "));
    }
    let first = String::from_utf8_lossy(&join_path(&items[0].path)).into_owned();
    let list = pulpdist_format::delta::encode_batch_list(&items);
    let kind = match jobs.first().is_some_and(|j| j.own) {
        true => BatchKind::OwnChunks,
        false => BatchKind::Files,
    };
    let (rec, id) = encode_batch(kind, (items.len(), &list), &prefix, &data, level)
        .map_err(|e| format!("{} files from {first}: {e}", items.len()))?;
    Ok(EncodedFiles {
        rec,
        id,
        included,
        skipped,
    })
}

/// A file batch as [`encode_file_batch`] made it.
struct EncodedFiles {
    rec: Vec<u8>,
    id: [u8; 32],
    included: Vec<Option<bool>>,
    skipped: Vec<String>,
}

/// The path components a batch list holds for a job (its path's and its reference's), as
/// a reader counts them against [`MAX_BATCH_NAMES`].
fn names_of(job: &Job) -> usize {
    job.path.len() + job.reference.as_ref().map_or(0, |(p, _, _)| p.len())
}

/// The most files in one file batch, and about the most bytes of its list: far below what
/// a reader accepts ([`pulpdist_format::delta::MAX_BATCH_ITEMS`], [`MAX_BATCH`]), however
/// small the files and long their paths.
const FILE_BATCH_ITEMS: usize = 1 << 16;
const FILE_BATCH_LIST: u64 = 16 << 20;

/// Files (and references) of at most this size go in file batches; larger ones get a
/// record each, encoded in parallel and decoded one at a time.
const FILE_BATCH_ITEM: u64 = 256 << 10;

/// The files of a file batch, and their references, each add up to about this much. On a
/// source release (1,401 changed files, 42 MB), batches of 1 MiB took the files from
/// 352,524 bytes as a frame each to 250,836 bytes (4 MiB: 243,213, at 1.4 × the time;
/// 256 KiB: 263,600), and the per-record paths and trailer entries to one list. With the
/// index in columns, the lists were a tenth of a source update's delta: 4 MiB took
/// Debian's kernel source update from 372,351 bytes to 360,260 (76 lists to 19), the
/// source scenario's from 356,204 to 343,726 (benchmarks/README.md, "File batches").
const FILE_BATCH_TARGET: u64 = 4 << 20;

/// New nodes (and references) of one batch add up to about this much at most.
const NODE_BATCH_TARGET: u64 = 64 << 20;

/// A node batch of at most this many bytes of new nodes is compressed at the delta level
/// (19 by default); a larger one at most at [`NODE_BATCH_LARGE_LEVEL`]. In rows, level 19
/// indexed the old nodes at about 1 MB/s (14 s for 300 directories of 1,000 files); in
/// columns the unchanged entries are long matches, and level 19 took the publish of those
/// 13.5 MB of nodes to 6.4 s (7.0 s at level 9 in rows), and of Debian's kernel source
/// (8.6 MB) to 11.8 s, as at level 9 in rows, for 181 kB where level 9 made 219 kB
/// (benchmarks/README.md, "Node batches in columns").
const NODE_BATCH_SMALL: u64 = 16 << 20;

/// The highest zstd level of a node batch above [`NODE_BATCH_SMALL`].
const NODE_BATCH_LARGE_LEVEL: i32 = 9;

/// Jobs are encoded in parallel in batches of about this many input bytes (new content and
/// reference), written in order: memory stays bounded however large the change.
const BATCH_BYTES: u64 = 256 << 20;

/// Writes the delta from version `from` (root `from_root`) to the new root, if anything
/// changed: one pack, or several (parts) when it would exceed `settings.part_size`.
/// Returns what the head lists (empty: no pack) and the counts. Only a failure to write
/// the store is an error; anything else leaves files (or the delta) out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_delta(
    nodes: &Nodes<'_>,
    source: &Path,
    new_root: &NodeRef,
    from: (u64, NodeRef),
    new_packs: &HashSet<PackId>,
    settings: DeltaSettings,
    tmp_dir: PathBuf,
) -> Result<(Vec<DeltaInfo>, DeltaReport), PublishError> {
    let (from_version, from_root) = from;
    let mut report = DeltaReport {
        from_version,
        ..Default::default()
    };
    if from_root.id == new_root.id {
        return Ok((Vec::new(), report));
    }
    let walked = (|| -> Result<Vec<Job>, PublishError> {
        let new = nodes.get(new_root)?;
        let old = nodes.get(&from_root)?;
        let mut jobs = Vec::new();
        diff(nodes, &new, Some(&old), &[], new_packs, &mut jobs)?;
        Ok(jobs)
    })();
    let jobs = match walked {
        Ok(j) => j,
        Err(e) => {
            report
                .skipped
                .push(format!("no delta from version {from_version}: {e}"));
            return Ok((Vec::new(), report));
        }
    };
    let store = nodes.store;
    let mut packs = Parts {
        packer: Packer::new(store, tmp_dir, PackKind::Data, u64::MAX, Naming::Content).hashing(),
        len: pulpdist_format::pack::HEADER_LEN,
        parts: 1,
        part_size: settings.part_size.clamp(1 << 20, MAX_DELTA_PACK),
    };
    let (node_jobs, jobs): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| j.kind == RecordKind::Node);
    let batches = node_batches(node_jobs, &mut report);
    // A composite file's own chunks: a batch of their own (kind 5) each, after the file
    // batches.
    let (own, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.own);
    let (file_batches, single) = file_batches(jobs);
    let mut units = file_batches
        .into_iter()
        .chain(own.into_iter().map(|j| vec![j]))
        .map(Unit::Files)
        .chain(single.into_iter().map(Unit::File))
        .collect::<Vec<_>>()
        .into_iter()
        .peekable();
    let next_batch = |units: &mut std::iter::Peekable<std::vec::IntoIter<Unit>>| {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(unit) = units.next_if(|_| bytes < BATCH_BYTES) {
            bytes += unit.bytes();
            batch.push(unit);
        }
        batch
    };
    let encode_files = |batch: &[Unit]| -> Vec<Encoded> {
        batch
            .par_iter()
            .map(|unit| match unit {
                Unit::File(job) => Encoded::File(encode_job(store, source, settings.level, job)),
                Unit::Files(jobs) => {
                    Encoded::Files(encode_file_batch(store, source, settings.level, jobs))
                }
            })
            .collect()
    };
    // The node batches (one thread each) while the first files are encoded: a large batch
    // at level 19 takes seconds on one core.
    let first = next_batch(&mut units);
    let (nodes_encoded, first_encoded) = rayon::join(
        || {
            batches
                .par_iter()
                .map(|b| encode_node_batch(b, node_batch_level(b, settings.level)))
                .collect::<Vec<_>>()
        },
        || encode_files(&first),
    );
    // Node batches only in the first part: a site rebuilds nodes before it walks the
    // tree, from the first part alone.
    for (batch, encoded) in batches.iter().zip(nodes_encoded) {
        match encoded {
            Ok((rec, id)) if packs.fits(rec.len(), false)? => {
                packs.add(id, &rec)?;
                report.nodes += batch.len() as u64;
            }
            Ok(_) => report.skipped.push(format!(
                "{} directory nodes: the first delta pack is full ({} bytes)",
                batch.len(),
                packs.part_size
            )),
            Err(why) => report.skipped.push(why),
        }
    }
    for (unit, enc) in first.iter().zip(first_encoded) {
        add_unit(&mut packs, unit, enc, &mut report)?;
    }
    while units.peek().is_some() {
        let batch = next_batch(&mut units);
        for (unit, enc) in batch.iter().zip(encode_files(&batch)) {
            add_unit(&mut packs, unit, enc, &mut report)?;
        }
    }
    let done = packs.packer.finish()?;
    let (packs, hashes) = (done.packs, done.hashes);
    report.size = packs.iter().map(|p| p.size).sum();
    report.parts = packs.len() as u64;
    let infos = packs
        .iter()
        .zip(hashes)
        .map(|(pack, hash)| DeltaInfo {
            from_version,
            from_root,
            pack: pack.id,
            size: pack.size,
            hash,
        })
        .collect();
    Ok((infos, report))
}

/// The packs of one delta as they are written: records go in the open part until the
/// next would take it past `part_size`; then the next part opens, up to
/// [`MAX_DELTA_PARTS`].
struct Parts<'a> {
    packer: Packer<'a>,
    /// Size of the open part so far (header and records, 50 trailer bytes each).
    len: u64,
    /// Parts opened so far.
    parts: usize,
    part_size: u64,
}

impl Parts<'_> {
    /// Whether a record of `len` bytes fits in the open part, or (with `roll`) in a new
    /// one, which is then opened.
    fn fits(&mut self, len: usize, roll: bool) -> Result<bool, PublishError> {
        // Its trailer entry, and 20 bytes for the trailer's count and the footer.
        let room = |used: u64| used + len as u64 + 50 + 20 <= self.part_size;
        if room(self.len) {
            return Ok(true);
        }
        let empty = pulpdist_format::pack::HEADER_LEN;
        if !roll || self.parts >= MAX_DELTA_PARTS || self.len == empty || !room(empty) {
            return Ok(false);
        }
        self.packer.roll()?;
        self.parts += 1;
        self.len = empty;
        Ok(true)
    }

    /// Appends a record that [`Parts::fits`].
    fn add(&mut self, id: [u8; 32], rec: &[u8]) -> Result<(), PublishError> {
        // A part is at most 256 MiB, so a record in it is far below 4 GiB.
        let len = rec.len() as u32;
        self.packer
            .add(ObjectKind::Delta, id, Codec::Raw, len, rec)?;
        self.len += rec.len() as u64 + 50;
        Ok(())
    }

    /// Why a record of `len` bytes is left out.
    fn full(&self, len: usize) -> String {
        let empty = pulpdist_format::pack::HEADER_LEN;
        match empty + len as u64 + 50 + 20 > self.part_size {
            true => format!(
                "its record, {len} bytes, is larger than a delta pack may be ({} bytes)",
                self.part_size
            ),
            false => format!(
                "the delta is full ({} packs of {} bytes)",
                MAX_DELTA_PARTS, self.part_size
            ),
        }
    }
}

/// What file records are encoded from: a batch of small files, or one file.
enum Unit {
    Files(Vec<Job>),
    File(Job),
}

impl Unit {
    /// Bytes of new content and references it reads.
    fn bytes(&self) -> u64 {
        let job_bytes = |j: &Job| j.size + j.reference.as_ref().map_or(0, |(_, s, _)| *s);
        match self {
            Unit::Files(jobs) => jobs.iter().map(job_bytes).sum(),
            Unit::File(job) => job_bytes(job),
        }
    }
}

/// A [`Unit`] encoded.
enum Encoded {
    Files(Result<EncodedFiles, String>),
    File(Result<Vec<u8>, String>),
}

/// Appends an encoded unit to the delta: a file's record ([`add_record`]), or a file batch
/// unless it failed or the delta is full (noted in `report`).
fn add_unit(
    packs: &mut Parts<'_>,
    unit: &Unit,
    enc: Encoded,
    report: &mut DeltaReport,
) -> Result<(), PublishError> {
    let (jobs, enc) = match (unit, enc) {
        (Unit::File(job), Encoded::File(rec)) => return add_record(packs, job, rec, report),
        (Unit::Files(jobs), Encoded::Files(enc)) => (jobs, enc),
        _ => unreachable!("units are encoded as what they are"),
    };
    let enc = match enc {
        Ok(e) => e,
        Err(why) => {
            report.skipped.push(why);
            return Ok(());
        }
    };
    report.skipped.extend(enc.skipped);
    if !packs.fits(enc.rec.len(), true)? {
        report.skipped.push(format!(
            "{} small files: {}",
            jobs.len(),
            packs.full(enc.rec.len())
        ));
        return Ok(());
    }
    packs.add(enc.id, &enc.rec)?;
    for (job, with_ref) in jobs.iter().zip(&enc.included) {
        if let Some(with_ref) = with_ref {
            report.files += 1;
            report.with_reference += u64::from(*with_ref);
            report.bytes_rebuilt += job.size;
        }
    }
    Ok(())
}

/// Appends one encoded record to the delta, unless it failed or the delta is full (noted in
/// `report`).
fn add_record(
    packs: &mut Parts<'_>,
    job: &Job,
    rec: Result<Vec<u8>, String>,
    report: &mut DeltaReport,
) -> Result<(), PublishError> {
    let rec = match rec {
        Ok(r) => r,
        Err(why) => {
            report.skipped.push(why);
            return Ok(());
        }
    };
    let path =
        || String::from_utf8_lossy(&pulpdist_format::delta::join_path(&job.path)).into_owned();
    if !packs.fits(rec.len(), true)? {
        report
            .skipped
            .push(format!("{}: {}", path(), packs.full(rec.len())));
        return Ok(());
    }
    packs.add(DeltaRecord::trailer_id(&job.path), &rec)?;
    report.files += 1;
    report.with_reference += u64::from(rec_has_reference(&rec));
    report.bytes_rebuilt += job.size;
    Ok(())
}

fn rec_has_reference(rec: &[u8]) -> bool {
    DeltaRecord::decode(rec).is_ok_and(|(r, _)| r.reference.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(path: &str, size: u64, ref_size: Option<u64>) -> Job {
        let p: Vec<Name> = path
            .split('/')
            .map(|n| Name::new(n.as_bytes().to_vec()).expect("name"))
            .collect();
        Job {
            kind: RecordKind::File,
            path: p.clone(),
            size,
            content: Content::Bytes(Vec::new()),
            reference: ref_size.map(|s| (p, s, Content::Bytes(Vec::new()))),
            own: false,
        }
    }

    fn sizes(batches: &[Vec<Job>]) -> Vec<Vec<u64>> {
        batches
            .iter()
            .map(|b| b.iter().map(|j| j.size).collect())
            .collect()
    }

    /// A node job at `path` (empty: the root), against `old` (an old node) if given.
    fn node_job(path: &str, old: Option<&Node>) -> Job {
        let p: Vec<Name> = path
            .split('/')
            .filter(|n| !n.is_empty())
            .map(|n| Name::new(n.as_bytes().to_vec()).expect("name"))
            .collect();
        Job {
            kind: RecordKind::Node,
            path: p.clone(),
            size: 0,
            content: Content::Bytes(Node::default().encode()),
            reference: old.map(|o| (p, 0, Content::Bytes(o.encode()))),
            own: false,
        }
    }

    #[test]
    fn a_node_list_names_each_directory_by_what_the_site_holds() {
        use pulpdist_format::delta::NodePath;
        let dir = |name: &str| pulpdist_format::Entry {
            name: Name::new(name.as_bytes().to_vec()).expect("name"),
            mode: 0o755,
            mtime: Default::default(),
            kind: EntryKind::Dir {
                node: NodeRef {
                    id: NodeId([1; 32]),
                    loc: pulpdist_format::Location {
                        pack: PackId([2; 32]),
                        offset: 40,
                        stored_len: 1,
                        raw_len: 1,
                        codec: Codec::Raw,
                    },
                },
            },
        };
        let file = pulpdist_format::Entry {
            name: Name::new(b"0-file".to_vec()).expect("name"),
            mode: 0o644,
            mtime: Default::default(),
            kind: EntryKind::File {
                size: 0,
                chunks: vec![],
            },
        };
        // The old root holds a file and the subdirectories a and b.
        let old_root = Node::new(vec![file, dir("a"), dir("b")]).expect("old root");
        let jobs = [
            node_job("", Some(&old_root)),
            node_job("b", Some(&Node::default())),
            node_job("b/new", None),
            node_job("c", None),
            node_job("x/y", Some(&Node::default())),
        ];
        let at: HashMap<Vec<u8>, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (pulpdist_format::delta::join_path(&j.path), i))
            .collect();
        let (mut old_subdirs, mut last) = (HashMap::new(), HashMap::new());
        let paths: Vec<NodePath> = (0..jobs.len())
            .map(|i| node_path(&jobs, &at, &mut old_subdirs, &mut last, i).expect("path"))
            .collect();
        let name = |s: &str| Name::new(s.as_bytes().to_vec()).expect("name");
        assert_eq!(
            paths,
            [
                NodePath::Full(vec![]),
                // b is the old root's second subdirectory (the file does not count).
                NodePath::OldSubdir { back: 1, skip: 1 },
                // b/ had no b/new; the old root no c; x/ is in no batch.
                NodePath::Named {
                    back: 1,
                    name: name("new"),
                },
                NodePath::Named {
                    back: 3,
                    name: name("c"),
                },
                NodePath::Full(vec![name("x"), name("y")]),
            ]
        );
    }

    #[test]
    fn an_images_own_chunks_refer_to_the_old_image_of_its_name_or_version() {
        use pulpdist_format::Part;
        let chunk = |b: u8| ChunkRef {
            id: ChunkId([b; 32]),
            loc: pulpdist_format::Location {
                pack: PackId([b; 32]),
                offset: 40,
                stored_len: 10,
                raw_len: 10,
                codec: Codec::Raw,
            },
        };
        let image = |name: &str, own: [u8; 2]| pulpdist_format::Entry {
            name: Name::new(name.as_bytes().to_vec()).expect("name"),
            mode: 0o644,
            mtime: Default::default(),
            kind: EntryKind::Composite {
                size: 30,
                chunk_hash: [0; 32],
                parts: vec![
                    Part::Chunks(vec![chunk(own[0])]),
                    Part::File {
                        path: b"pkg".to_vec(),
                        size: 10,
                    },
                    Part::Chunks(vec![chunk(own[1])]),
                ],
            },
        };
        let new_packs: HashSet<PackId> = [PackId([3; 32]), PackId([4; 32])].into();
        let reference = |old: Vec<pulpdist_format::Entry>, new: &pulpdist_format::Entry| {
            let old = Node::new(old).expect("old");
            own_chunks_job(new, Some(&old), &new_packs).map(|(size, _, r)| {
                assert_eq!(size, 20);
                r.map(|(n, s, _)| (String::from_utf8_lossy(n.as_bytes()).into_owned(), s))
            })
        };
        let new = image("debian-12.2.0-netinst.iso", [3, 4]);
        // The old image of the same name; of the same package name (an older version);
        // none (own chunks mostly new: an item without a reference); an old plain file of
        // the same name is no reference.
        assert_eq!(
            reference(vec![image("debian-12.2.0-netinst.iso", [1, 2])], &new),
            Some(Some(("debian-12.2.0-netinst.iso".into(), 20)))
        );
        assert_eq!(
            reference(
                vec![
                    image("debian-12.1.0-netinst.iso", [1, 2]),
                    image("other-1.iso", [1, 2])
                ],
                &new
            ),
            Some(Some(("debian-12.1.0-netinst.iso".into(), 20)))
        );
        assert_eq!(
            reference(vec![image("other-1.iso", [1, 2])], &new),
            Some(None)
        );
        let mut plain = image("debian-12.2.0-netinst.iso", [1, 2]);
        plain.kind = EntryKind::File {
            size: 10,
            chunks: vec![chunk(1)],
        };
        assert_eq!(reference(vec![plain], &new), Some(None));
        // Own chunks as before (only a package it names changed): no item at all.
        let mut same = image("debian-12.2.0-netinst.iso", [3, 4]);
        if let EntryKind::Composite { parts, size, .. } = &mut same.kind {
            parts[1] = Part::File {
                path: b"pkg".to_vec(),
                size: 12,
            };
            *size = 32;
        }
        assert_eq!(reference(vec![same], &new), None);
    }

    #[test]
    fn small_files_are_batched_in_index_order_up_to_the_target() {
        const K: u64 = 1 << 10;
        assert_eq!(FILE_BATCH_TARGET, 4096 * K);
        let mut jobs = vec![
            job("a", 300 * K, Some(10)),      // too large: a record of its own
            job("b", 256 * K, Some(256 * K)), // the largest that is batched
        ];
        // Fifteen of 250 KiB: 4,006 KiB with b.
        jobs.extend((0..15).map(|i| job(&format!("c{i:02}"), 250 * K, Some(100))));
        jobs.extend([
            job("h", 100 * K, Some(100)), // 4,106 KiB with it: the next batch
            job("f", 10, Some(300 * K)),  // its reference too large
            job("g", 10, Some(200 * K)),
        ]);
        let (batches, single) = file_batches(jobs);
        let mut first = vec![256 * K];
        first.extend([250 * K; 15]);
        assert_eq!(sizes(&batches), [first, vec![100 * K, 10]]);
        let names: Vec<u64> = single.iter().map(|j| j.size).collect();
        assert_eq!(names, [300 * K, 10]);

        // References fill a batch as files do: twenty of 200 KiB.
        let jobs = (0..21)
            .map(|i| job(&format!("r{i:02}"), 10, Some(200 * K)))
            .collect();
        let (batches, _) = file_batches(jobs);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [20, 1]);

        // Many tiny files with long paths: the list, not the bytes, closes a batch, so no
        // batch is one a reader refuses.
        let long = "d".repeat(200);
        let jobs = (0..200_000)
            .map(|i| job(&format!("{long}/{long}/{i}"), 1, Some(1)))
            .collect();
        let (batches, _) = file_batches(jobs);
        assert!(batches.len() > 1);
        for b in &batches {
            let items: Vec<BatchItem> = b
                .iter()
                .map(|j| BatchItem {
                    path: j.path.clone(),
                    reference: j.reference.as_ref().map(|(p, _, _)| p.clone()),
                    size: j.size as u32,
                    ref_size: 1,
                })
                .collect();
            let list = pulpdist_format::delta::encode_batch_list(&items);
            assert!(list.len() as u64 <= FILE_BATCH_LIST && b.len() <= FILE_BATCH_ITEMS);
        }
    }

    #[test]
    fn a_delta_rolls_into_new_packs_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::LocalStore::open(dir.path().join("store")).expect("store");
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp).expect("tmp");
        let part_size = 1u64 << 20;
        let mut packs = Parts {
            packer: Packer::new(&store, tmp, PackKind::Data, u64::MAX, Naming::Content).hashing(),
            len: pulpdist_format::pack::HEADER_LEN,
            parts: 1,
            part_size,
        };
        let rec = vec![7u8; 400 << 10];
        let mut added = 0;
        // Two records a part; a node batch (no roll) does not open a part.
        for i in 0..(2 * MAX_DELTA_PARTS + 3) {
            let roll = i != 2;
            if packs.fits(rec.len(), roll).expect("fits") {
                packs.add([i as u8; 32], &rec).expect("add");
                added += 1;
            }
        }
        assert_eq!(added, 2 * MAX_DELTA_PARTS);
        // Larger than a part: never fits, and opens nothing.
        assert!(!packs.fits(part_size as usize, true).expect("fits"));
        let done = packs.packer.finish().expect("finish");
        let (finished, hashes) = (done.packs, done.hashes);
        assert_eq!(
            (finished.len(), hashes.len()),
            (MAX_DELTA_PARTS, MAX_DELTA_PARTS)
        );
        assert!(finished.iter().all(|p| p.size <= part_size));
    }

    #[test]
    fn package_keys() {
        assert_eq!(package_key(b"libfoo_1.2-3_amd64.deb"), Some(&b"libfoo"[..]));
        assert_eq!(package_key(b"linux-6.1.tar.xz"), Some(&b"linux"[..]));
        assert_eq!(
            package_key(b"gcc-c++-12.2-1.x86_64.rpm"),
            Some(&b"gcc-c++"[..])
        );
        assert_eq!(package_key(b"README"), None);
        assert_eq!(package_key(b"_x"), None);
    }
}
