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
use pulpdist_format::delta::{DeltaInfo, DeltaRecord, RecordKind, MAX_DELTA_PACK};
use pulpdist_format::pack::ObjectKind;
use pulpdist_format::{
    ChunkId, ChunkRef, Codec, EntryKind, Name, Node, NodeId, NodeRef, PackId, PackKind,
    VerifiedChunk,
};

use crate::error::{IoContext, PublishError};
use crate::packer::{PackNamer, Packer};
use crate::store::Store;

/// What deltas to write and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeltaSettings {
    /// zstd level of delta frames.
    pub(crate) level: i32,
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
    /// Size of the delta pack (0: none written).
    pub size: u64,
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
/// resembles it most (longest common name prefix, then size closest).
fn closest_package<'n>(
    old: &'n Node,
    name: &[u8],
    size: u64,
) -> Option<&'n pulpdist_format::Entry> {
    let key = package_key(name)?;
    old.entries()
        .iter()
        .filter(|e| {
            e.name.as_bytes() != name
                && package_key(e.name.as_bytes()) == Some(key)
                && matches!(e.kind, EntryKind::File { size, .. } if size <= delta::MAX_DELTA_FILE)
        })
        .max_by_key(|e| {
            let common = e
                .name
                .as_bytes()
                .iter()
                .zip(name)
                .take_while(|(a, b)| a == b)
                .count();
            let s = match e.kind {
                EntryKind::File { size: s, .. } => s,
                _ => 0,
            };
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
    if size > delta::MAX_DELTA_FILE {
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
            .and_then(|o| closest_package(o, name, size))
            .and_then(|oe| match &oe.kind {
                EntryKind::File { size, chunks } => {
                    Some((path_of(&oe.name), *size, Content::Stored(chunks.clone())))
                }
                _ => None,
            }),
    };
    let fresh: u64 = chunks
        .iter()
        .filter(|c| new_packs.contains(&c.loc.pack))
        .map(|c| u64::from(c.loc.raw_len))
        .sum();
    if reference.is_none() && fresh * 2 <= size {
        return None;
    }
    Some((reference, Content::Source(chunks.clone())))
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
            EntryKind::Symlink { .. } => {}
        }
    }
    Ok(())
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

/// Encodes one job's record. `Err`: why the job is left out.
fn encode_job(store: &dyn Store, source: &Path, level: i32, job: &Job) -> Result<Vec<u8>, String> {
    let shown =
        || String::from_utf8_lossy(&pulpdist_format::delta::join_path(&job.path)).into_owned();
    let too_long = |p: &[Name]| pulpdist_format::delta::join_path(p).len() > usize::from(u16::MAX);
    if too_long(&job.path) || job.reference.as_ref().is_some_and(|(p, _, _)| too_long(p)) {
        return Err(format!("{}: path longer than 65,535 bytes", shown()));
    }
    let data = content(store, source, &job.path, job.size, &job.content)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: changed since it was indexed", shown()))?;
    // A reference that cannot be read is no reason to leave the file out: compressed alone.
    let reference = job.reference.as_ref().and_then(|(p, size, c)| {
        content(store, source, p, *size, c)
            .ok()
            .flatten()
            .filter(|r| r.len() as u64 == *size)
            .map(|r| (p, r))
    });
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

/// The highest zstd level of a node record. A changed directory's node differs from its
/// old node in a few entries, which any level finds; above 9, a 1,000-entry node costs
/// far more time for little (benchmarks/README.md, "Deltas": 0.6 % of the delta of the
/// large scenario, at half the publish time).
const NODE_DELTA_LEVEL: i32 = 9;

/// Jobs are encoded in parallel in batches of about this many input bytes (new content and
/// reference), written in order: memory stays bounded however large the change.
const BATCH_BYTES: u64 = 256 << 20;

/// Writes the delta pack from version `from` (root `from_root`) to the new root, if
/// anything changed. Returns what the head lists (`None`: no pack) and the counts. Only a
/// failure to write the store is an error; anything else leaves files (or the delta) out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_delta(
    nodes: &Nodes<'_>,
    source: &Path,
    new_root: &NodeRef,
    from: (u64, NodeRef),
    new_packs: &HashSet<PackId>,
    settings: DeltaSettings,
    tmp_dir: PathBuf,
    namer: PackNamer,
) -> Result<(Option<DeltaInfo>, DeltaReport), PublishError> {
    let (from_version, from_root) = from;
    let mut report = DeltaReport {
        from_version,
        ..Default::default()
    };
    if from_root.id == new_root.id {
        return Ok((None, report));
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
            return Ok((None, report));
        }
    };
    let store = nodes.store;
    let mut packer = Packer::new(store, tmp_dir, PackKind::Data, u64::MAX, namer);
    let mut pack_len = pulpdist_format::pack::HEADER_LEN;
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        while let Some(job) = jobs.next_if(|_| bytes < BATCH_BYTES) {
            bytes += job.size + job.reference.as_ref().map_or(0, |(_, s, _)| *s);
            batch.push(job);
        }
        let encoded: Vec<Result<Vec<u8>, String>> = batch
            .par_iter()
            .map(|job| {
                let level = match job.kind {
                    RecordKind::File => settings.level,
                    RecordKind::Node => settings.level.min(NODE_DELTA_LEVEL),
                };
                encode_job(store, source, level, job)
            })
            .collect();
        for (job, rec) in batch.iter().zip(encoded) {
            add_record(&mut packer, &mut pack_len, job, rec, &mut report)?;
        }
    }
    let (packs, hashes, _) = packer.finish_hashed()?;
    let (Some(pack), Some(hash)) = (packs.first(), hashes.first()) else {
        return Ok((None, report));
    };
    report.size = pack.size;
    Ok((
        Some(DeltaInfo {
            from_version,
            from_root,
            pack: pack.id,
            size: pack.size,
            hash: *hash,
        }),
        report,
    ))
}

/// Appends one encoded record to the delta pack, unless it failed (noted in `report`) or a
/// file's record would take the pack past [`MAX_DELTA_PACK`]; `pack_len` is the pack's
/// size so far.
fn add_record(
    packer: &mut Packer<'_>,
    pack_len: &mut u64,
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
    // Header, records, and per record 50 trailer bytes; 20 for the trailer's count and the
    // footer.
    let grown = *pack_len + rec.len() as u64 + 50;
    if job.kind == RecordKind::File && grown + 20 > MAX_DELTA_PACK {
        let why = format!(
            "{}: the delta pack is full ({MAX_DELTA_PACK} bytes)",
            path()
        );
        report.skipped.push(why);
        return Ok(());
    }
    *pack_len = grown;
    let len = u32::try_from(rec.len()).map_err(|_| PublishError::DeltaTooLarge { path: path() })?;
    let id = DeltaRecord::trailer_id(&job.path);
    packer.add(ObjectKind::Delta, id, Codec::Raw, len, &rec)?;
    match job.kind {
        RecordKind::File => {
            report.files += 1;
            report.with_reference += u64::from(rec_has_reference(&rec));
            report.bytes_rebuilt += job.size;
        }
        RecordKind::Node => report.nodes += 1,
    }
    Ok(())
}

fn rec_has_reference(rec: &[u8]) -> bool {
    DeltaRecord::decode(rec).is_ok_and(|(r, _)| r.reference.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

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
