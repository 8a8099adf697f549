//! The staging area: chunks fetched and verified by this sync (or by a killed earlier one),
//! kept until the new version is applied, so a sync run again does not fetch them twice.
//!
//! Chunks are appended to segment files (`staging/<random>.seg`, one per process) as
//! records `[chunk id: 32 bytes][length: u32 LE][bytes]`, not written one file each: an
//! initial sync stages every chunk of the tree, and creating a file costs more than writing
//! a small chunk (about 0.4 ms each on this machine kind, twice per chunk with the rename).
//! Segments are never fsynced. A record is kept only if its bytes hash to its id, both when
//! a segment is scanned (the first record that does not ends that segment's scan: a torn
//! tail after a crash or a full disk) and again whenever a chunk is read back.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use pulpdist_format::{ChunkId, VerifiedChunk};

use crate::error::{IoContext, SyncError};

/// Bytes before each chunk: its id and its length.
const HEADER: usize = 36;
/// No chunk is longer (the format's largest `max`).
const MAX_CHUNK: u32 = 16 << 20;

/// Where each staged chunk is: segment, offset of its bytes, length.
type Slot = (usize, u64, u32);

pub(crate) struct Staging {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Whether the segments on disk have been scanned.
    loaded: bool,
    index: HashMap<ChunkId, Slot>,
    /// Each segment's path and a handle to read it.
    segments: Vec<(PathBuf, Arc<File>)>,
    /// The segment this process appends to: its number, handle and length.
    writer: Option<(usize, File, u64)>,
}

impl Staging {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Staging {
            dir,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The index, after scanning the segments on disk once.
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, SyncError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| SyncError::Internal("the staging index lock is poisoned".into()))?;
        if !inner.loaded {
            // No staging directory (a dry run before the first sync): nothing is staged.
            let entries = match fs::read_dir(&self.dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    inner.loaded = true;
                    return Ok(inner);
                }
                r => r.at(&self.dir)?,
            };
            for e in entries {
                let path = e.at(&self.dir)?.path();
                if path.extension().is_some_and(|x| x == "seg") {
                    scan(&path, &mut inner)?;
                }
            }
            inner.loaded = true;
        }
        Ok(inner)
    }

    /// Room for `n` chunks in all in the index, made at once (a large first sync: one
    /// allocation instead of a table doubled and dropped again and again).
    pub(crate) fn reserve(&self, n: usize) -> Result<(), SyncError> {
        let mut inner = self.lock()?;
        let more = n.saturating_sub(inner.index.len());
        inner.index.reserve(more);
        Ok(())
    }

    /// Ids of every staged chunk.
    pub(crate) fn ids(&self) -> Result<Vec<ChunkId>, SyncError> {
        Ok(self.lock()?.index.keys().copied().collect())
    }

    /// Those of `ids` that are staged (without listing every staged chunk).
    pub(crate) fn which<'a>(
        &self,
        ids: impl Iterator<Item = &'a ChunkId>,
    ) -> Result<Vec<ChunkId>, SyncError> {
        let inner = self.lock()?;
        Ok(ids
            .filter(|id| inner.index.contains_key(*id))
            .copied()
            .collect())
    }

    /// Appends a verified chunk (nothing if it is staged already).
    pub(crate) fn put(&self, chunk: &VerifiedChunk) -> Result<(), SyncError> {
        let mut inner = self.lock()?;
        if inner.index.contains_key(&chunk.id()) {
            return Ok(());
        }
        let data = chunk.data();
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| *l <= MAX_CHUNK)
            .ok_or_else(|| {
                SyncError::Internal(format!("chunk {} too long to stage", chunk.id()))
            })?;
        if inner.writer.is_none() {
            let mut r = [0u8; 8];
            let _ = getrandom::getrandom(&mut r);
            let path = self.dir.join(format!("{}.seg", hex::encode(r)));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .at(&path)?;
            let reader = File::open(&path).at(&path)?;
            inner.segments.push((path, Arc::new(reader)));
            inner.writer = Some((inner.segments.len() - 1, file, 0));
        }
        let mut record = Vec::with_capacity(HEADER + data.len());
        record.extend_from_slice(&chunk.id().0);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(data);
        let Some((seg, file, end)) = inner.writer.as_mut() else {
            return Err(SyncError::Internal("no staging segment open".into()));
        };
        let (seg, at) = (*seg, *end + HEADER as u64);
        if let Err(e) = file.write_all(&record) {
            // A partial record ends this segment for later scans: start a new one.
            let path = inner.segments[seg].0.clone();
            inner.writer = None;
            return Err(e).at(&path);
        }
        *end += record.len() as u64;
        inner.index.insert(chunk.id(), (seg, at, len));
        Ok(())
    }

    /// A staged chunk, verified again on the way out.
    pub(crate) fn get(&self, id: &ChunkId) -> Result<VerifiedChunk, SyncError> {
        let (path, file, at, len) = {
            let inner = self.lock()?;
            let (seg, at, len) = *inner.index.get(id).ok_or_else(|| SyncError::State {
                path: self.dir.clone(),
                detail: format!("chunk {id} is not staged"),
            })?;
            let (path, file) = &inner.segments[seg];
            (path.clone(), Arc::clone(file), at, len)
        };
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at).at(&path)?;
        VerifiedChunk::from_plain(*id, buf).map_err(|source| SyncError::Format {
            object: format!("{} at {at}", path.display()),
            source,
        })
    }

    /// Forgets every staged chunk and deletes the segments.
    pub(crate) fn clear(&self) -> Result<(), SyncError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| SyncError::Internal("the staging index lock is poisoned".into()))?;
        *inner = Inner {
            loaded: true,
            ..Inner::default()
        };
        fs::remove_dir_all(&self.dir).at(&self.dir)?;
        fs::create_dir_all(&self.dir).at(&self.dir)
    }
}

/// Adds the records of one segment to the index, up to the first that is short, too long or
/// does not hash to its id.
fn scan(path: &Path, inner: &mut Inner) -> Result<(), SyncError> {
    let file = Arc::new(File::open(path).at(path)?);
    let seg = inner.segments.len();
    inner.segments.push((path.to_path_buf(), Arc::clone(&file)));
    let mut r = BufReader::with_capacity(1 << 20, &*file);
    let mut at = 0u64;
    let mut header = [0u8; HEADER];
    loop {
        if r.read_exact(&mut header).is_err() {
            return Ok(());
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[..32]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[32..]);
        let len = u32::from_le_bytes(len);
        if len > MAX_CHUNK {
            return Ok(());
        }
        let mut data = vec![0u8; len as usize];
        if r.read_exact(&mut data).is_err() {
            return Ok(());
        }
        let id = ChunkId(id);
        if VerifiedChunk::from_plain(id, data).is_err() {
            return Ok(());
        }
        inner
            .index
            .entry(id)
            .or_insert((seg, at + HEADER as u64, len));
        at += (HEADER as u64) + u64::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: u8, n: usize) -> VerifiedChunk {
        let data = vec![b; n];
        VerifiedChunk::from_plain(ChunkId::of(&data), data).expect("chunk")
    }

    #[test]
    fn staged_chunks_survive_a_new_process_and_a_torn_tail_ends_the_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Staging::new(dir.path().to_path_buf());
        let (a, b) = (chunk(1, 100), chunk(2, 5000));
        st.put(&a).expect("put");
        st.put(&b).expect("put");
        st.put(&a).expect("again");
        assert_eq!(st.get(&b.id()).expect("get").data(), b.data());
        // Another process: scans the segment.
        let seg = fs::read_dir(dir.path())
            .expect("dir")
            .next()
            .expect("a segment")
            .expect("entry")
            .path();
        assert_eq!(fs::metadata(&seg).expect("md").len(), 2 * 36 + 5100);
        let again = Staging::new(dir.path().to_path_buf());
        let mut ids = again.ids().expect("ids");
        ids.sort();
        let mut want = vec![a.id(), b.id()];
        want.sort();
        assert_eq!(ids, want);
        // A torn last record, then a damaged first one.
        let f = OpenOptions::new().write(true).open(&seg).expect("open");
        f.set_len(2 * 36 + 5000).expect("truncate");
        assert_eq!(
            Staging::new(dir.path().to_path_buf()).ids().expect("ids"),
            vec![a.id()]
        );
        f.write_all_at(&[9], 40).expect("flip");
        assert!(Staging::new(dir.path().to_path_buf())
            .ids()
            .expect("ids")
            .is_empty());
        // A chunk damaged after it was indexed is refused when read.
        let st = Staging::new(dir.path().to_path_buf());
        st.put(&a).expect("put");
        let seg2 = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .find(|p| *p != seg)
            .expect("new segment");
        OpenOptions::new()
            .write(true)
            .open(&seg2)
            .expect("open")
            .write_all_at(&[0], 36)
            .expect("damage");
        assert!(st.get(&a.id()).is_err());
        st.clear().expect("clear");
        assert!(st.ids().expect("ids").is_empty());
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
