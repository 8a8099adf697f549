//! Relays (`pulpdist replicate`): a tree's current signed version copied from one store
//! into another, so that a site can serve the sites below it what it received, with no
//! new trust. The leaves below a relay verify the origin's signatures and every object's
//! id, so a relay can delay what they receive but never alter it; this crate makes the
//! relay itself refuse what it could not vouch for either.
//!
//! A run is four phases:
//!
//! 1. [`heads`]: the source's head, verified against the trusted keys (the tree asked
//!    for, not expired), and the target's: a target at the same or a newer version is left
//!    as it is, and the same version with another root is refused (equivocation);
//! 2. [`walk`]: the index nodes of the new version, from the root down, only where they
//!    differ from the target's version (the target holds everything its own head reaches);
//!    each node verified against its id; the data, index and delta packs the target lacks;
//! 3. [`copy`]: each missing pack fetched whole, every object in it checked against its
//!    id (a delta pack against the hash the head lists), then put into the target;
//! 4. the head, written last, compare-and-swap: only once every pack the version reaches is
//!    in the target and none is condemned by the target's gc. Then its archived copy.
//!
//! A killed run leaves the target serving its previous version; packs it already put are
//! whole and verified, and the next run skips them.
//!
//! ```no_run
//! use pulpdist_format::TrustedKeys;
//! use pulpdist_publish::LocalStore;
//! use pulpdist_replicate::{replicate, ReplicateOptions};
//! use pulpdist_sync::HttpStoreReader;
//! let keys = TrustedKeys::from_text(&std::fs::read_to_string("origin.key.pub").unwrap()).unwrap();
//! let origin = HttpStoreReader::new("https://origin.example.org/store", Default::default()).unwrap();
//! let relay = LocalStore::open("/srv/relay").unwrap();
//! let report = replicate(&origin, &relay, &ReplicateOptions::new("debian", keys, "/var/lib/pulpdist/replicate")).unwrap();
//! println!("relay at version {}: {} packs copied", report.version, report.packs_copied);
//! ```

mod copy;
mod error;
mod heads;
mod walk;

use std::path::PathBuf;
use std::time::Instant;

use pulpdist_format::TrustedKeys;
use pulpdist_progress::Reporter;
use pulpdist_publish::Store;
use pulpdist_sync::{CountingReader, StoreReader};

pub use error::ReplicateError;

/// What a replicate is told.
#[derive(Clone)]
pub struct ReplicateOptions {
    /// The tree.
    pub tree: String,
    /// The keys the tree's heads must be signed with.
    pub trusted: TrustedKeys,
    /// The replicate's own directory: packs on their way to a target that has no temporary
    /// directory of its own (a bucket), and the lock of such a target's tree.
    pub work_dir: PathBuf,
    /// Packs fetched at once, 1 to 64.
    pub connections: usize,
    /// The time to check expiry against (seconds since the epoch); `None`: the clock.
    pub now: Option<i64>,
    /// Progress reporting.
    pub progress: Reporter,
}

impl ReplicateOptions {
    /// Options for `tree` with the defaults: 4 connections, the clock, no progress.
    pub fn new(
        tree: impl Into<String>,
        trusted: TrustedKeys,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        ReplicateOptions {
            tree: tree.into(),
            trusted,
            work_dir: work_dir.into(),
            connections: 4,
            now: None,
            progress: Reporter::default(),
        }
    }
}

/// What a replicate did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicateReport {
    /// The tree.
    pub tree: String,
    /// The version the target now holds.
    pub version: u64,
    /// The version it held before (`None`: no head).
    pub previous_version: Option<u64>,
    /// The source's version.
    pub source_version: u64,
    /// The target already held the source's version.
    pub up_to_date: bool,
    /// The target holds a newer version than the source offers (left as it is).
    pub target_ahead: bool,
    /// Packs copied into the target (data, index and delta).
    pub packs_copied: u64,
    /// Their bytes.
    pub bytes_copied: u64,
    /// Packs the new version reaches that the target already held.
    pub packs_skipped: u64,
    /// Their bytes.
    pub bytes_skipped: u64,
    /// Packs the target held damaged: removed and copied again.
    pub packs_repaired: u64,
    /// Objects checked against their ids in the copied packs.
    pub objects_verified: u64,
    /// Index nodes walked (only where the version differs from the target's).
    pub nodes_walked: u64,
    /// Requests made to the source.
    pub requests: u64,
    /// Bytes received from the source.
    pub bytes_fetched: u64,
    /// Why the archived copy of the head could not be written (the head was).
    pub history_error: Option<String>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// Copies `opts.tree`'s current version from `source` into `target`.
pub fn replicate(
    source: &dyn StoreReader,
    target: &dyn Store,
    opts: &ReplicateOptions,
) -> Result<ReplicateReport, ReplicateError> {
    let started = Instant::now();
    pulpdist_format::validate_tree_name(&opts.tree)
        .map_err(|e| pulpdist_sync::SyncError::Usage(e.to_string()))?;
    // The tree's publish lock: no publish, compacting gc or other replicate of the tree
    // into this store runs at the same time.
    std::fs::create_dir_all(&opts.work_dir).map_err(|source| ReplicateError::Io {
        path: opts.work_dir.clone(),
        source,
    })?;
    let _lock = target.lock(&opts.tree, &opts.work_dir)?;
    let counted = CountingReader::new(source);
    let mut report = run(&counted, target, opts);
    if let Ok(r) = &mut report {
        (r.requests, r.bytes_fetched) = counted.totals();
        r.elapsed_ms = started.elapsed().as_millis() as u64;
    }
    report
}

fn run(
    source: &dyn StoreReader,
    target: &dyn Store,
    opts: &ReplicateOptions,
) -> Result<ReplicateReport, ReplicateError> {
    let heads = heads::read(source, target, opts)?;
    let mut report = ReplicateReport {
        tree: opts.tree.clone(),
        version: heads.target_version().unwrap_or(0),
        previous_version: heads.target_version(),
        source_version: heads.source.head().version,
        ..Default::default()
    };
    match heads.decision()? {
        heads::Decision::UpToDate => {
            // A run killed between the head and its archived copy left the copy out.
            let h = heads.source.head();
            let archived = target.put_history(&h.tree, h.version, heads.source.bytes());
            report.history_error = archived.err().map(|e| e.to_string());
            report.up_to_date = true;
            return Ok(report);
        }
        heads::Decision::TargetAhead => {
            report.target_ahead = true;
            return Ok(report);
        }
        heads::Decision::Copy => {}
    }
    let needs = walk::walk(source, target, &heads)?;
    report.nodes_walked = needs.nodes_walked;
    report.packs_repaired = needs.repaired;
    pulpdist_failpoint::hit("replicate.walked");
    let copied = copy::copy(source, target, &needs, opts)?;
    report.packs_copied = copied.packs;
    report.bytes_copied = copied.bytes;
    report.objects_verified = copied.objects;
    report.packs_skipped = needs.present.len() as u64;
    report.bytes_skipped = needs.present.values().sum();
    report.history_error = heads::install(target, &heads, &needs)?;
    report.version = heads.source.head().version;
    Ok(report)
}

/// A format error for an object that is not what it should be.
pub(crate) fn invalid(
    what: &'static str,
    reason: impl Into<String>,
) -> pulpdist_format::FormatError {
    pulpdist_format::FormatError::Invalid {
        what,
        reason: reason.into(),
    }
}
