//! What a sync is asked to do ([`SyncOptions`]) and what it did ([`SyncReport`]).

use std::fs;
use std::path::{Path, PathBuf};

use pulpdist_format::TrustedKeys;

use crate::error::{IoContext, SyncError};
use crate::fsutil::absolute_dir;
use crate::glob::DEFAULT_METADATA_PATTERNS;

/// How to sync.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Tree name.
    pub tree: String,
    /// The mirror directory.
    pub dest: PathBuf,
    /// The client's state directory; default `.<dest name>.pulpdist` beside the mirror.
    pub state_dir: Option<PathBuf>,
    /// Keys accepted for the head.
    pub trusted: TrustedKeys,
    /// The current time (seconds since the epoch); `None`: the clock.
    pub now: Option<i64>,
    /// Plan only: print what would happen, change nothing in the mirror.
    pub dry_run: bool,
    /// File-name patterns of repository metadata (written after all payload).
    pub metadata_patterns: Vec<String>,
    /// Byte ranges of one pack closer than this are fetched in one request.
    pub max_gap: u64,
    /// Fetch a whole pack when this fraction of it is needed.
    pub whole_ratio: f64,
    /// Check every directory against the index, not only those that changed.
    pub full: bool,
    /// Fetches in flight at once (connections to the store).
    pub connections: usize,
    /// An `rsync://` URL of the same tree: files whose chunks the store lacks (404) or
    /// serves damaged are fetched from it and checked against the signed index.
    pub rsync_fallback: Option<String>,
    /// Apply setuid, setgid and sticky bits and world-writable directories from the index
    /// (default: masked off).
    pub special_modes: bool,
    /// Allow the first sync into a directory that is not empty (its files the tree lacks
    /// are deleted). Without it, such a sync is refused.
    pub adopt: bool,
    /// How long to wait for another sync of the same mirror to finish (default: not at
    /// all, [`SyncError::Busy`] at once).
    pub wait: std::time::Duration,
    /// Where the fetch and write phases report how far they are (default: nowhere).
    pub progress: pulpdist_progress::Reporter,
    /// A first sync of more files than this is planned, fetched and written in waves of
    /// about this many files (whole directories), so that its memory follows the wave, not
    /// the tree; the renames still come after every file is written and flushed.
    pub wave_files: usize,
}

/// Files in one wave of a large first sync ([`SyncOptions::wave_files`]).
pub(super) const DEFAULT_WAVE_FILES: usize = 8_192;

impl SyncOptions {
    /// Defaults: the built-in metadata patterns, 64 KiB gaps merged, whole packs at 50 %.
    pub fn new(tree: impl Into<String>, dest: impl Into<PathBuf>, trusted: TrustedKeys) -> Self {
        SyncOptions {
            tree: tree.into(),
            dest: dest.into(),
            state_dir: None,
            trusted,
            now: None,
            dry_run: false,
            metadata_patterns: DEFAULT_METADATA_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_gap: 64 * 1024,
            whole_ratio: 0.5,
            full: false,
            connections: 8,
            rsync_fallback: None,
            wait: std::time::Duration::ZERO,
            special_modes: false,
            adopt: false,
            progress: pulpdist_progress::Reporter::default(),
            wave_files: DEFAULT_WAVE_FILES,
        }
    }

    /// The mirror and state directories in use, absolute: `dest` with `.`, `..` and the
    /// symlinks of its parents resolved, and the state directory (`.<dest name>.pulpdist`
    /// beside the mirror unless given). The state is never inside the mirror, where the
    /// sync would delete it as a file the tree lacks, nor the mirror inside the state; the
    /// mirror is never `/`.
    pub fn dirs(&self) -> Result<(PathBuf, PathBuf), SyncError> {
        let dest = absolute_dir(&self.dest).at(&self.dest)?;
        let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Err(SyncError::Usage(format!(
                "{}: the mirror cannot be the root directory",
                self.dest.display()
            )));
        };
        let state = match &self.state_dir {
            Some(s) => absolute_dir(s).at(s)?,
            None => dest.with_file_name(format!(".{name}.pulpdist")),
        };
        // Compared as given and fully resolved (a mirror that is a symlink to a directory
        // holding the state is still the same tree).
        let canon = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let overlap = |a: &Path, b: &Path| a.starts_with(b) || b.starts_with(a);
        if overlap(&state, &dest) || overlap(&canon(&state), &canon(&dest)) {
            return Err(SyncError::Usage(format!(
                "state directory {} and mirror {} overlap: the state must lie outside the mirror (a sync deletes what the tree lacks)",
                state.display(),
                dest.display()
            )));
        }
        Ok((dest, state))
    }
}

/// What a sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// The version now in the mirror (or planned, with `dry_run`).
    pub version: u64,
    /// The version before.
    pub previous_version: Option<u64>,
    /// Nothing changed in the tree.
    pub up_to_date: bool,
    /// Files written.
    pub files: u64,
    /// Symlinks written.
    pub symlinks: u64,
    /// Paths deleted.
    pub deleted: u64,
    /// Bytes read from the store.
    pub bytes_fetched: u64,
    /// Store requests (retries included).
    pub requests: u64,
    /// Requests beyond one per store call: retries and resumptions after a temporary
    /// failure, and the extra requests of a multi-range call split or fallen back to ranges.
    pub retries: u64,
    /// Chunks fetched from the store.
    pub chunks_fetched: u64,
    /// Chunks taken from local files or the staging area.
    pub chunks_reused: u64,
    /// Bytes of those chunks.
    pub bytes_reused: u64,
    /// Local files of unknown content read whole to find chunks they may hold (a file
    /// matching neither its old nor its new index entry).
    pub files_rehashed: u64,
    /// Directories examined (whose node changed).
    pub dirs_examined: u64,
    /// Files that came by rsync (a plain rsync origin, or the fallback for gaps in a store).
    pub rsync_files: u64,
    /// Bytes rsync received.
    pub rsync_bytes: u64,
    /// The filter rules the publisher applied (from the signed head), one per line.
    pub filter: Option<String>,
    /// Bytes of the delta pack fetched from the store (0: none used, or the copy a killed
    /// sync kept in the staging area).
    pub delta_bytes: u64,
    /// Index nodes rebuilt from the delta.
    pub delta_nodes: u64,
    /// Files rebuilt from the delta.
    pub delta_files: u64,
    /// Delta records that gave nothing (their chunks were fetched instead).
    pub delta_failed: u64,
    /// Chunks taken from files rebuilt from the delta.
    pub chunks_from_delta: u64,
    /// Why a listed delta pack was not used, if one failed as a whole (the first such
    /// reason, when a delta has several packs).
    pub delta_error: Option<String>,
    /// The delta was fetched after the plan (it looked no smaller than the packs the
    /// versions since added, but the chunks the plan lacked came to more).
    pub delta_by_plan: bool,
    /// Cached index nodes deleted after the version was applied (no applied tree reaches them).
    pub nodes_pruned: u64,
    /// Why pruning the node cache failed (the sync itself succeeded).
    pub prune_error: Option<String>,
    /// The plan, printed (with `dry_run`).
    pub plan: Option<String>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// The store that served the head (of several, the first whose head passed).
    pub head_store: String,
    /// The root node id of the version (hex): what a site holds, by content.
    pub root: String,
    /// When the head was made (its `created`, Unix seconds): how far behind the store that
    /// served it is, against the origin's.
    pub head_created: i64,
    /// What each store served, when several were given (in their order).
    pub stores: Vec<crate::store::StoreUse>,
}
