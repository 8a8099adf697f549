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
use pulpdist_format::delta::{join_path, DeltaInfo, DeltaRecord, RecordKind};
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

    fn records(&self) -> Result<Vec<(DeltaRecord, &[u8])>, SyncError> {
        let object = format!("{} (delta)", self.info.pack.object_key());
        let records =
            pulpdist_format::delta::records(self.info.pack, &self.bytes).map_err(|source| {
                SyncError::Format {
                    object: object.clone(),
                    source,
                }
            })?;
        // A record that does not decode is skipped like one whose reference is gone.
        Ok(records
            .into_iter()
            .filter_map(|r| DeltaRecord::decode(r).ok())
            .collect())
    }
}

/// The old tree's subdirectories, per directory path, as the node records need them: each
/// directory node on the way is decoded once, and only its subdirectory entries are kept
/// (a delta of 1,000 directories under one root used to decode the root 1,000 times).
struct OldDirs<'a> {
    state: &'a State,
    root: NodeId,
    subdirs: HashMap<Vec<u8>, Option<HashMap<Vec<u8>, NodeId>>>,
}

impl<'a> OldDirs<'a> {
    fn new(state: &'a State, root: NodeId) -> Self {
        OldDirs {
            state,
            root,
            subdirs: HashMap::new(),
        }
    }

    /// The id of the old directory at `path`, if the cached index has it. Walks down from
    /// the root (no recursion: a path may have many components).
    fn id(&mut self, path: &[Name]) -> Option<NodeId> {
        let mut id = self.root;
        for (depth, name) in path.iter().enumerate() {
            let key = join_path(&path[..depth]);
            let state = self.state;
            let subdirs = self.subdirs.entry(key).or_insert_with(|| {
                state.node(&id).map(|n| {
                    n.entries()
                        .iter()
                        .filter_map(|e| match &e.kind {
                            EntryKind::Dir { node } => Some((e.name.as_bytes().to_vec(), node.id)),
                            _ => None,
                        })
                        .collect()
                })
            });
            id = *subdirs.as_ref()?.get(name.as_bytes())?;
        }
        Some(id)
    }

    /// The encoding of the old directory node at `path`, from the node cache.
    fn bytes(&mut self, path: &[Name]) -> Option<Vec<u8>> {
        let id = self.id(path)?;
        self.state.node_bytes(&id)
    }
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

/// Stages every chunk in `needed` that a file record of the delta rebuilds. `wanted`:
/// path → chunk list (id, length) of each file the sync writes that still needs chunks; a
/// rebuilt file is cut at exactly those lengths (as the publisher cut it, ISO images
/// included) and each piece kept only if it hashes to its id. Each path is used once.
/// Removes staged chunks from `needed`.
pub(crate) fn apply_files(
    state: &State,
    dest: &Path,
    fetched: &Fetched,
    mut wanted: HashMap<Vec<u8>, Vec<(ChunkId, u32)>>,
    needed: &mut HashSet<ChunkId>,
) -> Result<Applied, SyncError> {
    let object = format!("{} (delta)", fetched.info.pack.object_key());
    let mut safe = SafeDirs::new(dest);
    let mut out = Applied::default();
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
            out.failed += 1;
            continue;
        }
        let reference = match &r.reference {
            Some(p) => match read_reference(&mut safe, p, r.ref_size) {
                Some(d) => d,
                None => {
                    out.failed += 1;
                    continue;
                }
            },
            None => Vec::new(),
        };
        let Ok(data) = delta::decode(&reference, frame, r.size) else {
            out.failed += 1;
            continue;
        };
        let mut useful = false;
        let mut offset = 0usize;
        for (id, len) in &chunks {
            let piece = &data[offset..offset + *len as usize];
            offset += *len as usize;
            if !needed.contains(id) || ChunkId::of(piece) != *id {
                continue;
            }
            let chunk = VerifiedChunk::from_plain(*id, piece.to_vec()).map_err(|source| {
                SyncError::Format {
                    object: format!(
                        "{object}: {}",
                        std::ffi::OsStr::from_bytes(&path).to_string_lossy()
                    ),
                    source,
                }
            })?;
            state.stage(&chunk)?;
            needed.remove(id);
            out.chunks += 1;
            out.bytes += u64::from(*len);
            useful = true;
        }
        if useful {
            out.files += 1;
        } else {
            // Decoded, but nothing in it is what the signed index names: a damaged or
            // changed reference.
            out.failed += 1;
        }
    }
    Ok(out)
}
