//! The publisher's file cache: for each path, the inode, size and mtime it had when last
//! chunked, and its chunk ids. A file that matches is not read again.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use pulpdist_format::ChunkId;

use crate::error::{IoContext, PublishError};
use crate::store::write_synced;

const MAGIC: &[u8; 8] = b"PDPCACH1";

/// What a file looked like when it was chunked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CachedFile {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i128,
    pub(crate) chunks: Vec<(ChunkId, u32)>,
}

/// Relative path bytes → cached file.
pub(crate) type FileCache = HashMap<Vec<u8>, CachedFile>;

/// Loads the cache; a missing or unreadable cache is empty (everything is re-read).
pub(crate) fn load(path: &Path) -> FileCache {
    fs::read(path)
        .ok()
        .and_then(|b| decode(&b))
        .unwrap_or_default()
}

pub(crate) fn save(path: &Path, cache: &FileCache) -> Result<(), PublishError> {
    let mut out = MAGIC.to_vec();
    out.extend((cache.len() as u64).to_le_bytes());
    for (p, f) in cache {
        out.extend((p.len() as u32).to_le_bytes());
        out.extend(p);
        out.extend(f.dev.to_le_bytes());
        out.extend(f.ino.to_le_bytes());
        out.extend(f.size.to_le_bytes());
        out.extend(f.mtime_ns.to_le_bytes());
        out.extend((f.chunks.len() as u32).to_le_bytes());
        for (id, len) in &f.chunks {
            out.extend(id.as_bytes());
            out.extend(len.to_le_bytes());
        }
    }
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, &out)?;
    fs::rename(&tmp, path).at(path)
}

fn decode(b: &[u8]) -> Option<FileCache> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
    }
    let mut r = R(b);
    if r.take(8)? != MAGIC {
        return None;
    }
    let n = r.u64()?;
    let mut cache = HashMap::new();
    for _ in 0..n {
        let plen = r.u32()? as usize;
        let p = r.take(plen)?.to_vec();
        let dev = r.u64()?;
        let ino = r.u64()?;
        let size = r.u64()?;
        let mtime_ns = i128::from_le_bytes(r.take(16)?.try_into().ok()?);
        let nchunks = r.u32()? as usize;
        if nchunks > r.0.len() / 36 {
            return None;
        }
        let mut chunks = Vec::with_capacity(nchunks);
        for _ in 0..nchunks {
            let id = ChunkId(r.take(32)?.try_into().ok()?);
            chunks.push((id, r.u32()?));
        }
        cache.insert(
            p,
            CachedFile {
                dev,
                ino,
                size,
                mtime_ns,
                chunks,
            },
        );
    }
    Some(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c");
        let mut c = FileCache::new();
        c.insert(
            b"a/b".to_vec(),
            CachedFile {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: -4,
                chunks: vec![(ChunkId([5; 32]), 3)],
            },
        );
        save(&p, &c).expect("save");
        assert_eq!(load(&p), c);
        fs::write(&p, b"PDPCACH1\xff\xff").expect("write");
        assert!(load(&p).is_empty());
    }
}
