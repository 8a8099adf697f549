//! Garbage collection of a PulpDist store (`pulpdist gc`): which versions of each tree are
//! kept (a retention policy), and the two-phase removal of the packs no kept version
//! reaches, so that a store does not grow forever and no publish or sync running at the
//! same time loses an object.
//!
//! A run is four phases:
//!
//! 1. [`survey`]: every tree's current and archived heads, and which versions the policy
//!    keeps (the current one always, and each one current less than the grace period ago);
//! 2. [`reach`]: every index node and chunk the kept versions reach, and the delta packs
//!    their heads list;
//! 3. [`plan`]: packs unreached and condemned at least the grace period ago are removed;
//!    unreached packs older than the grace period are condemned (listed in `gc/condemned`,
//!    which publishers read: they reuse nothing from a condemned pack, and refuse to name
//!    one in a head); the archived heads of versions not kept are removed;
//! 4. [`apply`]: the list, then the removals, in an order a kill at any point leaves safe.
//!
//! Nothing is locked against publishers (FORMAT.md 8.10 gives the protocol). A dry run
//! stops after phase 3 and reports exactly what phase 4 would remove.
//!
//! ```no_run
//! use pulpdist_gc::{gc, GcOptions, Policy};
//! use pulpdist_publish::LocalStore;
//! let store = LocalStore::open("store").unwrap();
//! let policy = Policy { keep_last: Some(3), ..Policy::default() };
//! let report = gc(&store, &GcOptions::new(policy, "gc-state"), &Default::default()).unwrap();
//! println!("{} objects removed", report.removed.len());
//! ```

mod apply;
mod error;
mod options;
mod plan;
mod reach;
mod survey;

pub use error::GcError;
pub use options::{GcOptions, Policy, DEFAULT_GRACE};
pub use plan::Object;

use pulpdist_publish::Store;

/// A tree's versions and which were kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeVersions {
    /// The tree.
    pub tree: String,
    /// Every version the store had (archived or current).
    pub versions: Vec<u64>,
    /// The versions kept.
    pub kept: Vec<u64>,
}

/// What a gc did (or, in a dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Whether this was a dry run (nothing removed or condemned).
    pub dry_run: bool,
    /// Each tree's versions.
    pub trees: Vec<TreeVersions>,
    /// The objects removed: archived heads of versions not kept, then packs.
    pub removed: Vec<Object>,
    /// The packs condemned by this run (removed by a later one, a grace period from now,
    /// if still unreached).
    pub condemned: Vec<Object>,
    /// Condemned packs that a kept version reaches again (taken off the list).
    pub rescued: u64,
    /// Condemned packs whose grace period has not passed yet.
    pub waiting: u64,
    /// Unreached packs younger than the grace period (a publish may be writing them).
    pub young: u64,
    /// Packs in the store before, and their bytes.
    pub packs_before: u64,
    /// Bytes of all packs before.
    pub bytes_before: u64,
    /// Bytes of all packs after.
    pub bytes_after: u64,
    /// Bytes of the objects the kept versions reach (chunks, nodes, delta packs).
    pub live_bytes: u64,
    /// Index nodes read.
    pub nodes: u64,
    /// Distinct chunks reached.
    pub chunks: u64,
}

/// Runs a garbage collection of `store`.
pub fn gc(
    store: &dyn Store,
    opts: &GcOptions,
    progress: &pulpdist_progress::Reporter,
) -> Result<GcReport, GcError> {
    opts.policy.check()?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| {
        pulpdist_publish::PublishError::Io {
            path: opts.state_dir.clone(),
            source,
        }
    })?;
    // One gc of a store at a time (a directory store's `locks/.gc.lock`; on an object
    // store, a lock in the gc's state directory). Publishers are not locked out.
    let _lock = store.lock(".gc", &opts.state_dir)?;
    let now = opts.now.unwrap_or_else(unix_now);
    let condemned = store.read_condemned()?;
    let packs = store.list_packs()?;
    let trees = survey::survey(store, opts, now, progress)?;
    let reach = reach::reach(store, &trees, progress)?;
    let plan = plan::plan(&trees, &packs, &condemned, &reach, now, opts.grace);
    tracing::info!(
        remove = plan.remove.len(),
        history = plan.history.len(),
        condemn = plan.condemn.len(),
        "gc planned"
    );
    let bytes_before: u64 = packs.iter().map(|l| l.size).sum();
    let removed_bytes: u64 = plan.remove.iter().map(|l| l.size).sum();
    let report = GcReport {
        dry_run: opts.dry_run,
        trees: trees
            .iter()
            .map(|t| TreeVersions {
                tree: t.name.clone(),
                versions: t.versions.keys().copied().collect(),
                kept: t.retained.iter().copied().collect(),
            })
            .collect(),
        removed: plan.removed(),
        condemned: plan.condemned(),
        rescued: plan.rescued,
        waiting: plan.waiting,
        young: plan.young,
        packs_before: packs.len() as u64,
        bytes_before,
        bytes_after: bytes_before - removed_bytes,
        live_bytes: reach.live_bytes(),
        nodes: reach.nodes,
        chunks: reach.chunks,
    };
    if !opts.dry_run {
        apply::apply(store, &plan, progress)?;
    }
    Ok(report)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
