//! The publisher's directory cache: for each directory, what its entries looked like when
//! its index node was last built (a fingerprint), that node, the packs its chunks are in,
//! and for each file the inode, size and mtime it had when chunked, with its chunk ids.
//!
//! A directory whose fingerprint is unchanged keeps its node without a look at its files'
//! chunks; a file whose stat is unchanged is not read again. The cache is one file, read
//! whole and checked against a trailing BLAKE3 hash: a torn or damaged cache is empty
//! (everything is read again), so it is written without fsync.

use std::collections::HashMap;
use std::fs;
use std::ops::Range;
use std::path::Path;

use pulpdist_format::{ChunkId, NodeId, PackId};

use crate::error::{IoContext, PublishError};
use crate::walk::FileStat;

pub(crate) const MAGIC: &[u8; 8] = b"PDPCACH5";
/// The layout before a file's stamp held its change time: still read, its files compared
/// without it (so an upgrade reads no file again), and its records not copied as they are.
const MAGIC_V4: &[u8; 8] = b"PDPCACH4";
/// The layout before each file record had its image flag: still read (the flag unknown).
const MAGIC_V3: &[u8; 8] = b"PDPCACH3";
const HASH_LEN: usize = 32;
/// Bytes of one chunk in a file record: id and length.
const CHUNK_LEN: usize = 36;

/// One directory's record, borrowed from the cache's bytes.
pub(crate) struct DirRecord<'a> {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) node: NodeId,
    pub(crate) packs: Vec<PackId>,
    files: &'a [u8],
    nfiles: u32,
    /// Whether its file records carry the image flag (version 4 and later).
    flagged: bool,
    /// Whether its stamps are modification times alone (versions 3 and 4).
    legacy: bool,
    /// The whole record, copied as is into the next cache when the directory is unchanged.
    raw: &'a [u8],
}

impl<'a> DirRecord<'a> {
    /// The directory's files, in name order.
    pub(crate) fn files(&self) -> FileRecords<'a> {
        FileRecords {
            r: Reader(self.files),
            left: self.nfiles,
            flagged: self.flagged,
            legacy: self.legacy,
        }
    }

    /// Whether the record can be copied into the next cache as is (its layout is current).
    pub(crate) fn current(&self) -> bool {
        self.flagged && !self.legacy
    }
}

/// A file as it was when chunked.
pub(crate) struct FileRecord<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) stat: FileStat,
    /// Whether the file was cut as an ISO image along its files' extents (`None`: a cache
    /// written before the flag).
    pub(crate) image: Option<bool>,
    /// Its stamp is the modification time alone (a cache written before version 5).
    pub(crate) legacy: bool,
    chunks: &'a [u8],
}

impl<'a> FileRecord<'a> {
    pub(crate) fn chunks(&self) -> CachedChunks<'a> {
        CachedChunks(self.chunks)
    }
}

/// A cached file's chunk list: ids and lengths, in order.
#[derive(Clone, Copy)]
pub(crate) struct CachedChunks<'a>(&'a [u8]);

impl<'a> CachedChunks<'a> {
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (ChunkId, u32)> + 'a {
        self.0.chunks_exact(CHUNK_LEN).map(|c| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&c[..32]);
            let mut len = [0u8; 4];
            len.copy_from_slice(&c[32..]);
            (ChunkId(id), u32::from_le_bytes(len))
        })
    }
}

pub(crate) struct FileRecords<'a> {
    r: Reader<'a>,
    left: u32,
    flagged: bool,
    legacy: bool,
}

impl<'a> Iterator for FileRecords<'a> {
    type Item = FileRecord<'a>;
    fn next(&mut self) -> Option<FileRecord<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = &mut self.r;
        let name_len = r.u32()? as usize;
        let name = r.take(name_len)?;
        let stat = FileStat {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            stamp: i128::from_le_bytes(r.take(16)?.try_into().ok()?),
        };
        let image = match self.flagged {
            true => Some(r.take(1)?[0] == 1),
            false => None,
        };
        let n = r.u32()? as usize;
        let chunks = r.take(n.checked_mul(CHUNK_LEN)?)?;
        Some(FileRecord {
            name,
            stat,
            image,
            legacy: self.legacy,
            chunks,
        })
    }
}

/// Reads little-endian fields off the front of a byte slice (`None`: too short).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn array(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The cache as loaded: its bytes, and where each directory's record is.
#[derive(Default)]
pub(crate) struct DirCache {
    buf: Vec<u8>,
    dirs: HashMap<Vec<u8>, Range<usize>>,
    /// Written with the image flag (version 4 and later).
    flagged: bool,
    /// Written before the stamps held change times (versions 3 and 4).
    legacy: bool,
}

impl DirCache {
    /// Loads the cache; a missing, damaged or foreign cache, or one written for another
    /// `identity` (tree and chunk parameters), is empty.
    pub(crate) fn load(path: &Path, identity: &[u8]) -> DirCache {
        fs::read(path)
            .ok()
            .and_then(|buf| {
                let (dirs, (flagged, legacy)) = index(&buf, identity)?;
                Some(DirCache {
                    buf,
                    dirs,
                    flagged,
                    legacy,
                })
            })
            .unwrap_or_default()
    }

    /// The record of the directory at `rel`, if the cache has one that decodes.
    pub(crate) fn dir(&self, rel: &[u8]) -> Option<DirRecord<'_>> {
        let raw = self.buf.get(self.dirs.get(rel)?.clone())?;
        let mut r = Reader(raw);
        let rel_len = r.u32()? as usize;
        r.take(rel_len)?;
        let fingerprint = r.array()?;
        let node = NodeId(r.array()?);
        let npacks = r.u32()? as usize;
        let mut packs = Vec::with_capacity(npacks.min(r.0.len() / 32));
        for _ in 0..npacks {
            packs.push(PackId(r.array()?));
        }
        let nfiles = r.u32()?;
        Some(DirRecord {
            fingerprint,
            node,
            packs,
            files: r.0,
            nfiles,
            flagged: self.flagged,
            legacy: self.legacy,
            raw,
        })
    }

    /// The cache's bytes: a new cache equal to them need not be written.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Where each directory's record lies in the cache's bytes.
type Records = HashMap<Vec<u8>, Range<usize>>;

/// Checks the magic, the identity and the trailing hash, and finds each record; and
/// whether the records carry the image flag, and whether their stamps are legacy.
fn index(buf: &[u8], identity: &[u8]) -> Option<(Records, (bool, bool))> {
    let body_len = buf.len().checked_sub(HASH_LEN)?;
    let (body, hash) = buf.split_at(body_len);
    if blake3::hash(body).as_bytes() != hash {
        return None;
    }
    let mut r = Reader(body);
    let (flagged, legacy) = match r.take(MAGIC.len())? {
        m if m == MAGIC => (true, false),
        m if m == MAGIC_V4 => (true, true),
        m if m == MAGIC_V3 => (false, true),
        _ => return None,
    };
    let id_len = r.u32()? as usize;
    if r.take(id_len)? != identity {
        return None;
    }
    let n = r.u64()?;
    let mut dirs = HashMap::with_capacity(n.min(body.len() as u64 / 64) as usize);
    for _ in 0..n {
        let start = body.len() - r.0.len();
        let rel_len = r.u32()? as usize;
        let rel = r.take(rel_len)?.to_vec();
        r.take(64)?;
        let npacks = r.u32()? as usize;
        r.take(npacks.checked_mul(32)?)?;
        let nfiles = r.u32()?;
        let mut files = FileRecords {
            r: Reader(r.0),
            left: nfiles,
            flagged,
            legacy,
        };
        for _ in 0..nfiles {
            files.next()?;
        }
        r = files.r;
        dirs.insert(rel, start..body.len() - r.0.len());
    }
    if !r.0.is_empty() {
        return None;
    }
    Some((dirs, (flagged, legacy)))
}

/// The next cache, built a directory at a time.
pub(crate) struct CacheWriter {
    out: Vec<u8>,
    count: u64,
    /// Where the record count goes.
    count_at: usize,
}

impl CacheWriter {
    /// A cache for `identity`: what must match for a later publish to use it.
    pub(crate) fn new(identity: &[u8]) -> Self {
        let mut out = MAGIC.to_vec();
        out.extend((identity.len() as u32).to_le_bytes());
        out.extend_from_slice(identity);
        let count_at = out.len();
        out.extend(0u64.to_le_bytes());
        CacheWriter {
            out,
            count: 0,
            count_at,
        }
    }

    /// Keeps an unchanged directory's record as it was.
    pub(crate) fn keep(&mut self, record: &DirRecord<'_>) {
        self.out.extend_from_slice(record.raw);
        self.count += 1;
    }

    /// Starts a new record; its files follow with [`CacheWriter::file`], `nfiles` of them.
    pub(crate) fn dir(
        &mut self,
        rel: &[u8],
        fingerprint: &[u8; 32],
        node: &NodeId,
        packs: &[PackId],
        nfiles: u32,
    ) {
        self.out.extend((rel.len() as u32).to_le_bytes());
        self.out.extend_from_slice(rel);
        self.out.extend_from_slice(fingerprint);
        self.out.extend_from_slice(node.as_bytes());
        self.out.extend((packs.len() as u32).to_le_bytes());
        for p in packs {
            self.out.extend_from_slice(p.as_bytes());
        }
        self.out.extend(nfiles.to_le_bytes());
        self.count += 1;
    }

    /// A file of the directory last started; `image`: cut as an ISO image.
    pub(crate) fn file(
        &mut self,
        name: &[u8],
        stat: &FileStat,
        image: bool,
        chunks: impl ExactSizeIterator<Item = (ChunkId, u32)>,
    ) {
        let o = &mut self.out;
        o.extend((name.len() as u32).to_le_bytes());
        o.extend_from_slice(name);
        o.extend(stat.dev.to_le_bytes());
        o.extend(stat.ino.to_le_bytes());
        o.extend(stat.size.to_le_bytes());
        o.extend(stat.stamp.to_le_bytes());
        o.push(u8::from(image));
        o.extend((chunks.len() as u32).to_le_bytes());
        for (id, len) in chunks {
            o.extend_from_slice(id.as_bytes());
            o.extend(len.to_le_bytes());
        }
    }

    /// The finished cache's bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out[self.count_at..self.count_at + 8].copy_from_slice(&self.count.to_le_bytes());
        let hash = blake3::hash(&self.out);
        self.out.extend_from_slice(hash.as_bytes());
        self.out
    }
}

/// Writes the cache (by temporary file and rename; no fsync: a torn cache fails its hash).
pub(crate) fn save(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = fs::write(&tmp, bytes)
        .at(&tmp)
        .and_then(|()| fs::rename(&tmp, path).at(path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(n: u64) -> FileStat {
        FileStat {
            dev: n,
            ino: n + 1,
            size: n + 2,
            stamp: -(i128::from(n)),
        }
    }

    #[test]
    fn round_trip_keep_and_damage() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c");
        let mut w = CacheWriter::new(b"t 1 2 3");
        w.dir(b"a/b", &[7; 32], &NodeId([8; 32]), &[PackId([9; 32])], 2);
        w.file(b"x", &stat(1), true, [(ChunkId([5; 32]), 3)].into_iter());
        w.file(b"y", &stat(2), false, std::iter::empty());
        w.dir(b"", &[1; 32], &NodeId([2; 32]), &[], 0);
        save(&p, &w.finish()).expect("save");

        let c = DirCache::load(&p, b"t 1 2 3");
        let rec = c.dir(b"a/b").expect("a/b");
        assert_eq!(rec.fingerprint, [7; 32]);
        assert_eq!(rec.node, NodeId([8; 32]));
        assert_eq!(rec.packs, vec![PackId([9; 32])]);
        let files: Vec<_> = rec.files().collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, b"x");
        assert_eq!(files[0].stat, stat(1));
        assert_eq!(
            files[0].chunks().iter().collect::<Vec<_>>(),
            vec![(ChunkId([5; 32]), 3)]
        );
        assert_eq!(files[1].name, b"y");
        assert_eq!(files[1].chunks().iter().count(), 0);
        assert_eq!((files[0].image, files[1].image), (Some(true), Some(false)));
        assert!(rec.current());
        assert!(c.dir(b"").is_some());
        assert!(c.dir(b"a").is_none());

        // Another tree or other chunk parameters: empty.
        assert!(DirCache::load(&p, b"t 1 2 4").dir(b"").is_none());
        // Kept records copy into an equal cache.
        let mut w = CacheWriter::new(b"t 1 2 3");
        w.keep(&rec);
        w.keep(&c.dir(b"").expect("root"));
        assert_eq!(w.finish(), c.bytes());

        // Any damaged byte empties the cache.
        let mut bytes = fs::read(&p).expect("read");
        for i in [0, 12, bytes.len() / 2, bytes.len() - 1] {
            bytes[i] ^= 1;
            fs::write(&p, &bytes).expect("write");
            assert!(
                DirCache::load(&p, b"t 1 2 3").dir(b"").is_none(),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        fs::write(&p, &bytes[..bytes.len() - 5]).expect("write");
        assert!(DirCache::load(&p, b"t 1 2 3").dir(b"").is_none());
        fs::write(&p, b"PDPCACH1\xff\xff").expect("write");
        assert!(DirCache::load(&p, b"t 1 2 3").dir(b"").is_none());
    }

    /// A cache written before the image flag (version 3) is still read: its files' flag is
    /// unknown, and its records are not copied as they are into a version-4 cache.
    #[test]
    fn a_version_3_cache_is_still_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c");
        let mut out = MAGIC_V3.to_vec();
        out.extend(5u32.to_le_bytes());
        out.extend_from_slice(b"t 1 2");
        out.extend(1u64.to_le_bytes());
        out.extend(0u32.to_le_bytes()); // the root
        out.extend_from_slice(&[7; 32]);
        out.extend_from_slice(&[8; 32]);
        out.extend(0u32.to_le_bytes()); // packs
        out.extend(1u32.to_le_bytes()); // files
        out.extend(1u32.to_le_bytes());
        out.extend_from_slice(b"x");
        let st = stat(1);
        out.extend(st.dev.to_le_bytes());
        out.extend(st.ino.to_le_bytes());
        out.extend(st.size.to_le_bytes());
        out.extend(st.stamp.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend_from_slice(&[5; 32]);
        out.extend(3u32.to_le_bytes());
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        save(&p, &out).expect("save");
        let c = DirCache::load(&p, b"t 1 2");
        let rec = c.dir(b"").expect("root");
        let files: Vec<_> = rec.files().collect();
        assert_eq!((files.len(), files[0].image, files[0].stat), (1, None, st));
        assert!(!rec.current());
    }

    /// A cache written before the change time (version 4) is still read: its files are
    /// compared without it (an upgrade reads no file again), and its records are written
    /// again with change times rather than copied.
    #[test]
    fn a_version_4_cache_is_read_and_its_files_compared_without_the_change_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c");
        let st = FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            stamp: 1_700_000_000_000_000_000,
        };
        let mut w = CacheWriter::new(b"t 1 2");
        w.dir(b"", &[7; 32], &NodeId([8; 32]), &[], 1);
        w.file(b"x", &st, false, [(ChunkId([5; 32]), 3)].into_iter());
        let mut bytes = w.finish();
        bytes.truncate(bytes.len() - HASH_LEN);
        bytes[..MAGIC_V4.len()].copy_from_slice(MAGIC_V4);
        let hash = blake3::hash(&bytes);
        bytes.extend_from_slice(hash.as_bytes());
        save(&p, &bytes).expect("save");
        let c = DirCache::load(&p, b"t 1 2");
        let rec = c.dir(b"").expect("root");
        assert!(!rec.current());
        let f = rec.files().next().expect("file");
        assert!(f.legacy);
        // The same mtime, any change time: unchanged as far as a version-4 record says.
        let now = FileStat {
            stamp: FileStat::stamp_of(1_700_000_000_000_000_000, 1_700_000_100_000_000_000),
            ..st
        };
        assert!(f.stat.unchanged(&now, true));
        // Another mtime: changed.
        let later = FileStat {
            stamp: FileStat::stamp_of(1_700_000_000_000_000_001, 1_700_000_100_000_000_000),
            ..st
        };
        assert!(!f.stat.unchanged(&later, true));
        // A version-5 record compares the change time too.
        assert!(now.unchanged(&now, false));
        let rewritten = FileStat {
            stamp: FileStat::stamp_of(1_700_000_000_000_000_000, 1_700_000_200_000_000_000),
            ..st
        };
        assert!(!now.unchanged(&rewritten, false));
    }
}
