//! Reading a store: the trait every transport implements, and the local directory reader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pulpdist_format::PackId;

use crate::error::SyncError;

/// The answer to a (conditional) request for a tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadFetch {
    /// The head, with the store's entity tag for it if it gives one.
    Found {
        /// Its bytes.
        bytes: Vec<u8>,
        /// The store's tag for it, if any.
        etag: Option<String>,
    },
    /// The head still has the entity tag the caller gave (304 Not Modified).
    NotModified,
    /// The store has no head for the tree.
    Missing,
}

/// Requests and bytes a reader spent beyond one request per call and the bytes it
/// returned: retries, resumed bodies, a whole object sent for a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overhead {
    /// Extra requests.
    pub requests: u64,
    /// Extra bytes received.
    pub bytes: u64,
    /// Calls answered without a request (from a copy of a whole object already fetched).
    pub saved: u64,
    /// Bytes those calls returned (not received again).
    pub saved_bytes: u64,
}

/// Read access to a store. One call is one store request (what `--json` counts), plus
/// what [`StoreReader::overhead`] reports.
pub trait StoreReader: AsReader + Send + Sync {
    /// Where the store is (a path or URL), for messages.
    fn describe(&self) -> String;
    /// The head of `tree`; with `if_none_match`, [`HeadFetch::NotModified`] when it still has
    /// that entity tag.
    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError>;
    /// One byte range of a pack.
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError>;
    /// Several byte ranges of one pack (sorted, disjoint), in order. One call; readers that
    /// can ask for them in one request do (HTTP multi-range), others ask one by one.
    fn get_ranges(&self, pack: &PackId, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, SyncError> {
        ranges
            .iter()
            .map(|r| self.get_range(pack, r.clone()))
            .collect()
    }
    /// Whether [`StoreReader::get_ranges`] makes one request for many ranges.
    fn multi_range(&self) -> bool {
        false
    }
    /// Whether a range costs no more than the same bytes in a whole pack (a file read,
    /// not a request over a network): a large pack is then read in windows, so that a
    /// sync holds one window, not the pack, in memory.
    fn cheap_ranges(&self) -> bool {
        false
    }
    /// A whole pack of `size` bytes (its size in the signed head): no more is read.
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError>;
    /// The size of a pack the caller has no signed size for (one request: a file's
    /// metadata, an HTTP HEAD, an object's metadata). What it returns is a claim of the
    /// store: a pack fetched with it is still checked object by object.
    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        Err(SyncError::Usage(format!(
            "{}: cannot tell the size of {}",
            self.describe(),
            pack.object_key()
        )))
    }
    /// Runs `attempt` with this store. A list of stores ([`StoreList`]) runs it with each
    /// store in turn while it fails in a way another store may not ([`falls_through`]):
    /// what lets a caller that verifies what it got fall back to the next store.
    fn try_each(
        &self,
        attempt: &mut dyn FnMut(&dyn StoreReader) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        attempt(self.as_reader())
    }
    /// What each store of a list served (empty for a single store).
    fn per_store(&self) -> Vec<StoreUse> {
        Vec::new()
    }
    /// What the reader spent so far beyond one request per call.
    fn overhead(&self) -> Overhead {
        Overhead::default()
    }
    /// The packs' sizes as a verified head gives them: a reader that may be sent more than
    /// it asked for (an origin that ignores Range) reads no more than these.
    fn expect_sizes(&self, _sizes: &std::collections::HashMap<PackId, u64>) {}
    /// The trees the store holds heads for, where it can list them (a directory, a bucket;
    /// not an HTTP store): `None` when it cannot.
    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        None
    }
    /// The versions of `tree` the store has archived heads of (`history/`), sorted, where
    /// it can list them: `None` when it cannot.
    fn list_versions(&self, _tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        None
    }
    /// The archived head of `tree`'s `version` (`None`: not archived).
    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        let _ = (tree, version);
        Err(SyncError::Usage(format!(
            "{}: archived heads cannot be read from this kind of store (use its directory or bucket)",
            self.describe()
        )))
    }
}

/// Any reader as a trait object (what [`StoreReader::try_each`] hands its attempt).
pub trait AsReader {
    /// This reader as `&dyn StoreReader`.
    fn as_reader(&self) -> &dyn StoreReader;
}

impl<T: StoreReader> AsReader for T {
    fn as_reader(&self) -> &dyn StoreReader {
        self
    }
}

/// A borrowed reader is a reader (to put one into a [`StoreList`] and keep using it).
impl<R: StoreReader + ?Sized> StoreReader for &R {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        (**self).get_head(tree, if_none_match)
    }
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        (**self).get_range(pack, range)
    }
    fn get_ranges(&self, pack: &PackId, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, SyncError> {
        (**self).get_ranges(pack, ranges)
    }
    fn multi_range(&self) -> bool {
        (**self).multi_range()
    }
    fn cheap_ranges(&self) -> bool {
        (**self).cheap_ranges()
    }
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        (**self).get_pack(pack, size)
    }
    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        (**self).pack_size(pack)
    }
    fn try_each(
        &self,
        attempt: &mut dyn FnMut(&dyn StoreReader) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        (**self).try_each(attempt)
    }
    fn per_store(&self) -> Vec<StoreUse> {
        (**self).per_store()
    }
    fn overhead(&self) -> Overhead {
        (**self).overhead()
    }
    fn expect_sizes(&self, sizes: &std::collections::HashMap<PackId, u64>) {
        (**self).expect_sizes(sizes)
    }
    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        (**self).list_trees()
    }
    fn list_versions(&self, tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        (**self).list_versions(tree)
    }
    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        (**self).get_archived(tree, version)
    }
}

/// A store in a local directory (or a mounted file system).
#[derive(Clone, Debug)]
pub struct LocalStoreReader {
    root: PathBuf,
}

impl LocalStoreReader {
    /// Reads the store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStoreReader { root: root.into() }
    }

    fn open(&self, key: &str) -> Result<File, SyncError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.root.join(key);
        // Opened without blocking, then checked: a FIFO planted in the store is refused
        // rather than waited on (reads of a regular file ignore the flag).
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&path)
            .map_err(|e| self.err(key, e))?;
        match f.metadata() {
            Ok(m) if m.is_file() => Ok(f),
            Ok(_) => Err(self.err(
                key,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"),
            )),
            Err(e) => Err(self.err(key, e)),
        }
    }

    /// A head-sized object (no more than the format's largest head and one byte), if any.
    fn read_small(&self, key: &str) -> Result<Option<Vec<u8>>, SyncError> {
        match self.open(key) {
            Ok(f) => {
                let mut buf = Vec::new();
                f.take(pulpdist_format::MAX_HEAD_SIZE as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| self.err(key, e))?;
                Ok(Some(buf))
            }
            Err(SyncError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn err(&self, key: &str, e: std::io::Error) -> SyncError {
        if e.kind() == std::io::ErrorKind::NotFound {
            SyncError::NotFound {
                store: self.describe(),
                object: key.into(),
            }
        } else {
            SyncError::Read {
                store: self.describe(),
                object: key.into(),
                source: e,
            }
        }
    }
}

impl StoreReader for LocalStoreReader {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get_head(&self, tree: &str, _if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        Ok(match self.read_small(&head_key(tree)?)? {
            Some(bytes) => HeadFetch::Found { bytes, etag: None },
            None => HeadFetch::Missing,
        })
    }

    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let key = pack.object_key();
        let mut f = self.open(&key)?;
        f.seek(SeekFrom::Start(range.start))
            .map_err(|e| self.err(&key, e))?;
        let wanted = range.end.saturating_sub(range.start);
        let mut buf = Vec::with_capacity(wanted.min(256 << 20) as usize);
        f.take(wanted)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(&key, e))?;
        if buf.len() as u64 != wanted {
            return Err(SyncError::Short {
                store: self.describe(),
                object: key,
                got: buf.len() as u64,
                wanted,
            });
        }
        Ok(buf)
    }

    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        self.get_range(pack, 0..size)
    }

    fn cheap_ranges(&self) -> bool {
        true
    }

    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        let key = pack.object_key();
        let f = self.open(&key)?;
        f.metadata().map(|m| m.len()).map_err(|e| self.err(&key, e))
    }

    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        let dir = self.root.join("heads");
        let listed = std::fs::read_dir(&dir).and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()
        });
        Some(match listed {
            Ok(mut names) => {
                names.retain(|n| pulpdist_format::validate_tree_name(n).is_ok());
                names.sort();
                Ok(names)
            }
            Err(e) => Err(self.err("heads/", e)),
        })
    }

    fn list_versions(&self, tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        let key = format!("history/{tree}");
        let listed = match std::fs::read_dir(self.root.join(&key)) {
            Ok(rd) => rd
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        Some(match listed {
            Ok(names) => {
                let mut v: Vec<u64> = names
                    .iter()
                    .filter_map(|n| pulpdist_format::history_version(n))
                    .collect();
                v.sort_unstable();
                Ok(v)
            }
            Err(e) => Err(self.err(&key, e)),
        })
    }

    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        head_key(tree)?;
        self.read_small(&pulpdist_format::history_key(tree, version))
    }
}

/// The object key of a tree's head, after checking the name.
pub(crate) fn head_key(tree: &str) -> Result<String, SyncError> {
    pulpdist_format::validate_tree_name(tree).map_err(|e| SyncError::Usage(e.to_string()))?;
    Ok(format!("heads/{tree}"))
}

/// Wraps any reader and counts what crossed the wire: one request per call, plus what the
/// reader reports in [`StoreReader::overhead`] (retries, resumptions, whole objects sent
/// for a range), minus calls it answered from a copy it already had.
pub struct CountingReader<'a> {
    inner: &'a dyn StoreReader,
    counts: Arc<Counts>,
}

/// Calls and bytes counted by [`CountingReader`]s that share them.
#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl<'a> CountingReader<'a> {
    /// Counts the calls made through it to `inner`.
    pub fn new(inner: &'a dyn StoreReader) -> Self {
        CountingReader {
            inner,
            counts: Arc::default(),
        }
    }

    fn note(&self, n: usize) {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Requests beyond one per call so far (retries, resumptions, split multi-range calls).
    pub fn retries(&self) -> u64 {
        self.inner.overhead().requests
    }

    /// Requests made and bytes received so far.
    pub fn totals(&self) -> (u64, u64) {
        let extra = self.inner.overhead();
        (
            (self.counts.requests.load(Ordering::Relaxed) + extra.requests)
                .saturating_sub(extra.saved),
            (self.counts.bytes.load(Ordering::Relaxed) + extra.bytes)
                .saturating_sub(extra.saved_bytes),
        )
    }
}

impl StoreReader for CountingReader<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn cheap_ranges(&self) -> bool {
        self.inner.cheap_ranges()
    }
    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        let r = self.inner.get_head(tree, if_none_match)?;
        self.note(match &r {
            HeadFetch::Found { bytes, .. } => bytes.len(),
            _ => 0,
        });
        Ok(r)
    }
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let r = self.inner.get_range(pack, range)?;
        self.note(r.len());
        Ok(r)
    }
    fn get_ranges(&self, pack: &PackId, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, SyncError> {
        let r = self.inner.get_ranges(pack, ranges)?;
        self.note(r.iter().map(Vec::len).sum());
        Ok(r)
    }
    fn multi_range(&self) -> bool {
        self.inner.multi_range()
    }
    fn expect_sizes(&self, sizes: &std::collections::HashMap<PackId, u64>) {
        self.inner.expect_sizes(sizes)
    }
    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        self.inner.list_trees()
    }
    fn list_versions(&self, tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        self.inner.list_versions(tree)
    }
    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        self.inner.get_archived(tree, version)
    }
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        let r = self.inner.get_pack(pack, size)?;
        self.note(r.len());
        Ok(r)
    }
    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        let r = self.inner.pack_size(pack)?;
        self.note(0);
        Ok(r)
    }
    fn overhead(&self) -> Overhead {
        self.inner.overhead()
    }
    fn try_each(
        &self,
        attempt: &mut dyn FnMut(&dyn StoreReader) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        // Each store the inner reader tries is counted here too.
        self.inner.try_each(&mut |s| {
            attempt(&CountingReader {
                inner: s,
                counts: self.counts.clone(),
            })
        })
    }
    fn per_store(&self) -> Vec<StoreUse> {
        self.inner.per_store()
    }
}

/// What one store of a [`StoreList`] served during a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreUse {
    /// The store, as [`StoreReader::describe`] names it.
    pub store: String,
    /// Requests it answered (retries included).
    pub requests: u64,
    /// Bytes it sent.
    pub bytes: u64,
    /// Calls it failed that the next store was asked instead.
    pub fell_through: u64,
    /// The last such failure, if any.
    pub last_error: Option<String>,
}

/// Whether a failure of one store may not be a failure of the next: the object missing,
/// short or damaged there, the store unreachable or refusing, a head it offers that is
/// refused (older, another tree's, unsigned, expired). Not a local fault or a usage error.
pub fn falls_through(e: &SyncError) -> bool {
    !matches!(
        e,
        SyncError::Io { .. }
            | SyncError::Unsafe { .. }
            | SyncError::Usage(_)
            | SyncError::Internal(_)
            | SyncError::Threads(_)
            | SyncError::Busy { .. }
            | SyncError::State { .. }
    )
}

/// Whether a store failed as a whole (no answer, a server error, a read error), not for one
/// object: a list does not ask it again in the same run, so a relay that is down costs its
/// retries once, not once per object.
fn unreachable(e: &SyncError) -> bool {
    match e {
        SyncError::Http { status, .. } => status.is_none_or(|s| s >= 500),
        SyncError::Read { .. } | SyncError::Credentials { .. } => true,
        _ => false,
    }
}

/// Runs `f` against `store` (each store of a list in turn while `f` fails in a way the
/// next may not); the first success.
pub fn first_ok<T>(
    store: &dyn StoreReader,
    mut f: impl FnMut(&dyn StoreReader) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    let mut out = None;
    store.try_each(&mut |s| {
        out = Some(f(s)?);
        Ok(())
    })?;
    out.ok_or_else(|| SyncError::Internal("no store was asked".into()))
}

/// Several stores that hold the same tree, in order of preference (a relay, then the
/// origin): every object comes from the first store that serves it whole, and a caller
/// that verifies what it got asks the next store through [`StoreReader::try_each`].
/// Counts what each store served ([`StoreReader::per_store`]).
pub struct StoreList<'a> {
    stores: Vec<Member<'a>>,
}

struct Member<'a> {
    reader: Box<dyn StoreReader + 'a>,
    /// It failed as unreachable (after its own retries): not asked again in this run.
    down: std::sync::atomic::AtomicBool,
    counts: Arc<Counts>,
    fell_through: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl<'a> StoreList<'a> {
    /// The stores in order; at least one.
    pub fn new(stores: Vec<Box<dyn StoreReader + 'a>>) -> Result<Self, SyncError> {
        if stores.is_empty() {
            return Err(SyncError::Usage("no store given".into()));
        }
        Ok(StoreList {
            stores: stores
                .into_iter()
                .map(|reader| Member {
                    reader,
                    down: std::sync::atomic::AtomicBool::new(false),
                    counts: Arc::default(),
                    fell_through: AtomicU64::new(0),
                    last_error: std::sync::Mutex::new(None),
                })
                .collect(),
        })
    }
}

impl StoreReader for StoreList<'_> {
    fn describe(&self) -> String {
        let names: Vec<String> = self.stores.iter().map(|m| m.reader.describe()).collect();
        names.join(", then ")
    }
    fn cheap_ranges(&self) -> bool {
        self.stores.iter().all(|m| m.reader.cheap_ranges())
    }
    fn try_each(
        &self,
        attempt: &mut dyn FnMut(&dyn StoreReader) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        let last = self.stores.len() - 1;
        for (i, m) in self.stores.iter().enumerate() {
            if i < last && m.down.load(Ordering::Relaxed) {
                continue;
            }
            let counted = CountingReader {
                inner: &*m.reader,
                counts: m.counts.clone(),
            };
            match attempt(&counted) {
                Ok(()) => return Ok(()),
                Err(e) if i < last && falls_through(&e) => {
                    tracing::warn!(store = %m.reader.describe(), error = %e, "falling back to the next store");
                    if unreachable(&e) {
                        m.down.store(true, Ordering::Relaxed);
                    }
                    m.fell_through.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = m.last_error.lock() {
                        *l = Some(e.to_string());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(SyncError::Internal("no store was asked".into()))
    }
    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        first_ok(self, |s| match s.get_head(tree, if_none_match)? {
            HeadFetch::Missing => Err(SyncError::NoSuchTree {
                store: s.describe(),
                tree: tree.into(),
            }),
            found => Ok(found),
        })
    }
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        first_ok(self, |s| s.get_range(pack, range.clone()))
    }
    fn get_ranges(&self, pack: &PackId, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, SyncError> {
        first_ok(self, |s| s.get_ranges(pack, ranges))
    }
    fn multi_range(&self) -> bool {
        // Each store is asked as it can be answered.
        self.stores.iter().all(|m| m.reader.multi_range())
    }
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        first_ok(self, |s| s.get_pack(pack, size))
    }
    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        first_ok(self, |s| s.pack_size(pack))
    }
    fn expect_sizes(&self, sizes: &std::collections::HashMap<PackId, u64>) {
        self.stores
            .iter()
            .for_each(|m| m.reader.expect_sizes(sizes));
    }
    fn overhead(&self) -> Overhead {
        let mut o = Overhead::default();
        for m in &self.stores {
            let x = m.reader.overhead();
            o.requests += x.requests;
            o.bytes += x.bytes;
            o.saved += x.saved;
            o.saved_bytes += x.saved_bytes;
        }
        o
    }
    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        self.stores.iter().find_map(|m| m.reader.list_trees())
    }
    fn list_versions(&self, tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        self.stores
            .iter()
            .find_map(|m| m.reader.list_versions(tree))
    }
    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        first_ok(self, |s| s.get_archived(tree, version))
    }
    fn per_store(&self) -> Vec<StoreUse> {
        self.stores
            .iter()
            .map(|m| {
                let extra = m.reader.overhead();
                StoreUse {
                    store: m.reader.describe(),
                    requests: (m.counts.requests.load(Ordering::Relaxed) + extra.requests)
                        .saturating_sub(extra.saved),
                    bytes: (m.counts.bytes.load(Ordering::Relaxed) + extra.bytes)
                        .saturating_sub(extra.saved_bytes),
                    fell_through: m.fell_through.load(Ordering::Relaxed),
                    last_error: m.last_error.lock().ok().and_then(|l| l.clone()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that answers every read with `error`, counting the calls.
    struct Failing {
        calls: AtomicU64,
        error: fn() -> SyncError,
    }

    impl StoreReader for Failing {
        fn describe(&self) -> String {
            "failing".into()
        }
        fn get_head(&self, _: &str, _: Option<&str>) -> Result<HeadFetch, SyncError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Err((self.error)())
        }
        fn get_range(&self, _: &PackId, _: Range<u64>) -> Result<Vec<u8>, SyncError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Err((self.error)())
        }
        fn get_pack(&self, _: &PackId, _: u64) -> Result<Vec<u8>, SyncError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Err((self.error)())
        }
    }

    fn store_with_pack() -> (tempfile::TempDir, LocalStoreReader) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("packs")).expect("packs");
        std::fs::write(dir.path().join(PackId([7; 32]).object_key()), b"0123456789").expect("pack");
        let r = LocalStoreReader::new(dir.path());
        (dir, r)
    }

    #[test]
    fn an_unreachable_store_is_asked_once_a_missing_object_each_time() {
        let (_dir, good) = store_with_pack();
        let down = Failing {
            calls: AtomicU64::new(0),
            error: || SyncError::Http {
                url: "http://relay".into(),
                status: None,
                detail: "connection refused".into(),
                temporary: true,
            },
        };
        let lacking = Failing {
            calls: AtomicU64::new(0),
            error: || SyncError::NotFound {
                store: "relay".into(),
                object: "packs/x".into(),
            },
        };
        for (first, asked_again) in [(&down, false), (&lacking, true)] {
            let list = StoreList::new(vec![Box::new(first), Box::new(&good)]).expect("list");
            for _ in 0..3 {
                let got = list
                    .get_range(&PackId([7; 32]), 2..5)
                    .expect("from the next store");
                assert_eq!(got, b"234");
            }
            let calls = first.calls.load(Ordering::Relaxed);
            assert_eq!(calls, if asked_again { 3 } else { 1 });
            let used = list.per_store();
            assert_eq!((used[1].requests, used[1].bytes), (3, 9), "{used:?}");
        }
    }

    #[test]
    fn local_faults_are_not_passed_to_the_next_store() {
        let io = SyncError::Io {
            path: "/staging".into(),
            source: std::io::Error::other("No space left on device"),
        };
        assert!(!falls_through(&io));
        assert!(!falls_through(&SyncError::Usage("u".into())));
        assert!(falls_through(&SyncError::Rollback {
            tree: "t".into(),
            offered: 1,
            applied: 2
        }));
        let (_dir, good) = store_with_pack();
        let list = StoreList::new(vec![Box::new(&good), Box::new(&good)]).expect("list");
        let mut asked = 0;
        let e = first_ok(&list, |_| -> Result<(), SyncError> {
            asked += 1;
            Err(SyncError::Usage("local".into()))
        })
        .expect_err("not passed on");
        assert!(matches!(e, SyncError::Usage(_)));
        assert_eq!(asked, 1);
    }
}
