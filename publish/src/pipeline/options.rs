//! What a publish is asked to do ([`PublishOptions`]) and what it did ([`PublishReport`]).

use std::path::PathBuf;

use pulpdist_chunker::DEFAULT_ZSTD_LEVEL;
use pulpdist_format::{ChunkParams, NodeId, PackInfo};

use crate::delta::DeltaReport;

/// The default zstd level of delta frames (benchmarks/README.md, "Deltas").
pub const DEFAULT_DELTA_LEVEL: i32 = 19;

/// zstd level of the deltas from versions before the previous one (for sites two or more
/// versions behind, fewer than those one behind). On eleven real botocore releases, ten
/// deltas (the newest at 19, nine at 9) took 2.6 s to publish against 17.8 s all at 19,
/// and came out 26 to 31 % larger: a third of rsync's bytes or less (benchmarks/README.md).
pub const DEFAULT_OLD_DELTA_LEVEL: i32 = 9;

/// What to publish and how.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Tree name.
    pub tree: String,
    /// The directory to publish.
    pub source: PathBuf,
    /// The publisher's cache directory (trailer cache, file cache). Losing it costs a re-read.
    pub state_dir: PathBuf,
    /// Chunk parameters for the first version; later versions keep the tree's.
    pub params: Option<ChunkParams>,
    /// zstd level for chunks and nodes.
    pub zstd_level: i32,
    /// Seconds until the head expires (a client refuses it afterwards).
    pub expires_in: i64,
    /// How many recent versions the head lists packs for.
    pub keep_versions: usize,
    /// Data packs are closed once they reach this size.
    pub pack_target: u64,
    /// The time to record as "created" (seconds since the epoch); `None`: now.
    pub now: Option<i64>,
    /// Chunking threads; `None`: every core. Chunks reach the packs in file order on any
    /// number of threads, and packs are named by their content: the same input gives the
    /// same packs.
    pub threads: Option<usize>,
    /// Keys (besides the signing key) whose signature on the previous head is accepted:
    /// the old key during a key rotation.
    pub previous_keys: Vec<pulpdist_format::PublicKey>,
    /// rsync filter rules: what of the source the tree carries (recorded in the head).
    pub filter: pulpdist_format::filter::Filter,
    /// Write a delta pack from each of this many previous versions (0: none).
    pub deltas: usize,
    /// zstd level of delta frames (node batches above 8 MiB use at most level 9).
    pub delta_level: i32,
    /// zstd level of the deltas from versions before the previous one (at most
    /// `delta_level`).
    pub old_delta_level: i32,
    /// Largest delta pack in bytes (1 MiB to 256 MiB, the most a site fetches); a larger
    /// delta is written as several packs, up to 8.
    pub delta_pack_size: u64,
    /// Write an ISO image that holds other files of the tree as a composite file naming
    /// them (FORMAT.md 5.2; default). Off: every file is plain, for sites whose readers
    /// predate composite files.
    pub composites: bool,
    /// Where the reading of changed files reports how far it is (default: nowhere).
    pub progress: pulpdist_progress::Reporter,
}

impl PublishOptions {
    /// Defaults: 7-day expiry, 8 recent versions, 64 MiB packs, zstd level 2.
    pub fn new(
        tree: impl Into<String>,
        source: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        PublishOptions {
            tree: tree.into(),
            source: source.into(),
            state_dir: state_dir.into(),
            params: None,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            expires_in: 7 * 24 * 3600,
            keep_versions: 8,
            pack_target: 64 << 20,
            now: None,
            threads: None,
            previous_keys: Vec::new(),
            filter: pulpdist_format::filter::Filter::new(),
            deltas: 1,
            delta_level: DEFAULT_DELTA_LEVEL,
            old_delta_level: DEFAULT_OLD_DELTA_LEVEL,
            delta_pack_size: pulpdist_format::delta::MAX_DELTA_PACK,
            composites: true,
            progress: pulpdist_progress::Reporter::default(),
        }
    }
}

/// What a publish did.
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    /// The version written.
    pub version: u64,
    /// Regular files in the tree.
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes in all files.
    pub bytes_total: u64,
    /// Files read and chunked (the others matched the file cache).
    pub files_read: u64,
    /// Bytes read and chunked.
    pub bytes_read: u64,
    /// New chunks stored.
    pub chunks_new: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes added to the store (packs, head excluded).
    pub bytes_stored: u64,
    /// New index nodes stored.
    pub nodes_new: u64,
    /// Packs written.
    pub packs: Vec<PackInfo>,
    /// The root node.
    pub root: Option<NodeId>,
    /// Entries that are neither file, directory nor symlink (sockets, devices), not published.
    pub skipped: Vec<PathBuf>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// ISO 9660 images chunked along their files' extents.
    pub isos: u64,
    /// Images published as plain chunks instead (xorriso missing, image damaged), and why.
    pub isos_plain: Vec<String>,
    /// Delta packs written by this publish (one per earlier version with changes).
    pub deltas: Vec<DeltaReport>,
    /// Partial packs older than a day (left by a killed publish) removed from the
    /// temporary directory.
    pub stale_parts_removed: u64,
    /// The head was written but could not be archived (`history/`), and why: the next
    /// publish archives it.
    pub history_error: Option<String>,
    /// The publisher's cache or the tree's summary could not be written (the version is
    /// published; the next publish uses the last cache written and reads the files changed
    /// since), and why.
    pub cache_error: Option<String>,
    /// Packs in the store whose footer or trailer does not decode: left out of the
    /// catalog (their objects are stored again where needed), and why.
    pub unreadable_packs: Vec<String>,
    /// The tree was found as the last publish left it, from the tree's summary, with the
    /// store's packs unchanged: neither the catalog nor the cache was read.
    pub unchanged: bool,
}
