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
mod repack;
mod survey;

pub use error::GcError;
pub use options::{GcOptions, Policy, DEFAULT_GRACE};
pub use plan::Object;
pub use repack::{Repack, Repacked};

use pulpdist_publish::Store;

/// A tree's versions and which were kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeVersions {
    /// The tree.
    pub tree: String,
    /// The version its head holds.
    pub current: u64,
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
    /// With a repack: the sparse packs, and (unless a dry run) what was rewritten.
    pub repacked: Option<Repacked>,
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
    // A dry run changes nothing and takes no lock (a read-only user can run it).
    let _lock = match opts.dry_run {
        true => None,
        false => match store.lock(".gc", &opts.state_dir) {
            Ok(l) => Some(l),
            Err(pulpdist_publish::PublishError::Locked { holder, .. }) => {
                return Err(GcError::Busy { holder })
            }
            Err(e) => return Err(e.into()),
        },
    };
    let now = opts.now.unwrap_or_else(unix_now);
    let mut s = State {
        condemned: store.read_condemned()?,
        packs: store.list_packs()?,
        trees: survey::survey(store, opts, now, progress)?,
        reach: reach::Reach::default(),
        repacked: None,
    };
    s.reach = reach::reach(store, &s.trees, progress)?;
    let mut times = plan::Times {
        now,
        grace: opts.grace,
        condemn_at: now,
    };
    let mut emptied = std::collections::HashSet::new();
    if let Some(r) = &opts.repack {
        if maybe_repack(store, opts, r, now, &mut s, progress)? {
            // The packs a rewrite emptied are condemned as of the end of the rewrite (its
            // new heads are written by then), whatever their age; what is removed is
            // still decided as of the run's start.
            times.condemn_at = opts.now.unwrap_or_else(unix_now);
            emptied.extend(
                s.repacked
                    .iter()
                    .flat_map(|d| d.sparse.iter().map(|(id, _)| *id)),
            );
        }
    }
    let plan = plan::plan(&s.trees, &s.packs, &s.condemned, &s.reach, times, &emptied);
    tracing::info!(
        remove = plan.remove.len(),
        history = plan.history.len(),
        condemn = plan.condemn.len(),
        "gc planned"
    );
    let mut report = report(opts, &s, &plan);
    if !opts.dry_run {
        let removed = apply::apply(store, &plan, progress)?;
        // An object gone before its removal (another hand) is not reported as removed.
        report.removed.retain(|o| removed.contains(&o.key));
        let gone: u64 = report
            .removed
            .iter()
            .filter(|o| o.key.starts_with("packs/"))
            .map(|o| o.bytes)
            .sum();
        report.bytes_after = report.bytes_before - gone;
    }
    Ok(report)
}

/// What a run found: the condemned list, the packs, the trees and what they reach, and
/// what a repack did.
struct State {
    condemned: pulpdist_format::Condemned,
    packs: Vec<pulpdist_publish::ListedPack>,
    trees: Vec<survey::Tree>,
    reach: reach::Reach,
    repacked: Option<Repacked>,
}

/// Rewrites sparse packs (not in a dry run, which only lists those it would rewrite), then
/// looks at the store again; whether it rewrote any.
fn maybe_repack(
    store: &dyn Store,
    opts: &GcOptions,
    r: &Repack,
    now: i64,
    s: &mut State,
    progress: &pulpdist_progress::Reporter,
) -> Result<bool, GcError> {
    let sparse = repack::sparse(store, &s.packs, &s.reach, r.max_unused)?;
    if opts.dry_run || sparse.is_empty() {
        let listed = match sparse.is_empty() {
            true => Repacked::default(),
            false => repack::would(store, &s.trees, &sparse, r, &opts.trees)?,
        };
        s.repacked = Some(listed);
        return Ok(false);
    }
    let reached_before: std::collections::HashSet<pulpdist_format::PackId> =
        s.reach.live.keys().copied().collect();
    let (trees, state_dir) = (&s.trees, &opts.state_dir);
    let done = repack::rewrite(
        store,
        trees,
        &sparse,
        r,
        &opts.trees,
        opts.now,
        state_dir,
        progress,
    )?;
    (s.packs, s.trees, s.reach) = after_repack(store, opts, now, &s.trees, &done, progress)?;
    // A pack reached when the run started and emptied by the repack is condemned now, not
    // at a time an earlier run gave it: it waits its whole grace period.
    s.condemned
        .packs
        .retain(|id, _| !reached_before.contains(id));
    // Packs written means archived heads may have been signed again: the sparse packs are
    // then treated as emptied even if a tree's new head lost to a publish.
    let rewrote = !done.packs_written.is_empty();
    s.repacked = Some(done);
    Ok(rewrote)
}

/// The report of a run (before its removals).
fn report(opts: &GcOptions, s: &State, plan: &plan::Plan) -> GcReport {
    let bytes_before: u64 = s.packs.iter().map(|l| l.size).sum();
    let removed_bytes: u64 = plan.remove.iter().map(|l| l.size).sum();
    GcReport {
        dry_run: opts.dry_run,
        trees: s
            .trees
            .iter()
            .map(|t| TreeVersions {
                tree: t.name.clone(),
                current: t.current,
                versions: t.versions.keys().copied().collect(),
                kept: t.retained.iter().copied().collect(),
            })
            .collect(),
        removed: plan.removed(),
        condemned: plan.condemned(),
        rescued: plan.rescued,
        waiting: plan.waiting,
        young: plan.young,
        packs_before: s.packs.len() as u64,
        bytes_before,
        bytes_after: bytes_before - removed_bytes,
        live_bytes: s.reach.live_bytes(),
        nodes: s.reach.nodes,
        chunks: s.reach.chunks,
        repacked: s.repacked.clone(),
    }
}

/// The store again after a repack: its packs, its trees (keeping the versions kept before,
/// those the repack published, and any published meanwhile: the policy is applied once
/// per run, so a dry run's list stays what the run removes) and what they reach.
fn after_repack(
    store: &dyn Store,
    opts: &GcOptions,
    now: i64,
    before: &[survey::Tree],
    done: &Repacked,
    progress: &pulpdist_progress::Reporter,
) -> Result<
    (
        Vec<pulpdist_publish::ListedPack>,
        Vec<survey::Tree>,
        reach::Reach,
    ),
    GcError,
> {
    let packs = store.list_packs()?;
    let mut trees = survey::survey(store, opts, now, progress)?;
    for t in &mut trees {
        let old = before.iter().find(|b| b.name == t.name);
        let newest = old.and_then(|b| b.versions.keys().next_back().copied());
        let mut keep: std::collections::BTreeSet<u64> =
            old.map(|b| b.retained.clone()).unwrap_or_default();
        keep.extend(
            done.versions
                .iter()
                .filter(|(n, _, _)| *n == t.name)
                .map(|(_, _, v)| *v),
        );
        keep.extend(t.versions.keys().filter(|v| newest.is_none_or(|n| **v > n)));
        keep.insert(t.current);
        t.retained = keep
            .into_iter()
            .filter(|v| t.versions.contains_key(v))
            .collect();
    }
    let reach = reach::reach(store, &trees, progress)?;
    Ok((packs, trees, reach))
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulpdist_format::{PackId, SecretKey};
    use pulpdist_publish::{
        publish, ListedPack, LocalStore, PublishError, PublishOptions, StoreLock, StoredHead,
    };
    use std::ops::Range;
    use std::path::{Path, PathBuf};

    /// A directory store that refuses every removal (a bucket that refuses deletes).
    struct Refusing(LocalStore);

    impl Store for Refusing {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn lock(&self, tree: &str, state: &Path) -> Result<StoreLock, PublishError> {
            self.0.lock(tree, state)
        }
        fn read_head(&self, tree: &str) -> Result<Option<StoredHead>, PublishError> {
            self.0.read_head(tree)
        }
        fn put_head(
            &self,
            tree: &str,
            bytes: &[u8],
            expected: Option<&StoredHead>,
            version: Option<u64>,
        ) -> Result<(), PublishError> {
            self.0.put_head(tree, bytes, expected, version)
        }
        fn put_history(&self, tree: &str, version: u64, bytes: &[u8]) -> Result<(), PublishError> {
            self.0.put_history(tree, version, bytes)
        }
        fn list_packs(&self) -> Result<Vec<ListedPack>, PublishError> {
            self.0.list_packs()
        }
        fn list_trees(&self) -> Result<Vec<String>, PublishError> {
            self.0.list_trees()
        }
        fn list_history(&self, tree: &str) -> Result<Vec<u64>, PublishError> {
            self.0.list_history(tree)
        }
        fn read_object(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, PublishError> {
            self.0.read_object(key, limit)
        }
        fn replace_object(&self, key: &str, bytes: &[u8]) -> Result<(), PublishError> {
            self.0.replace_object(key, bytes)
        }
        fn remove(&self, key: &str) -> Result<bool, PublishError> {
            Err(PublishError::Io {
                path: key.into(),
                source: std::io::Error::other("AccessDenied: deletes refused"),
            })
        }
        fn read_pack_range(&self, id: PackId, range: Range<u64>) -> Result<Vec<u8>, PublishError> {
            self.0.read_pack_range(id, range)
        }
        fn tmp_dir(&self) -> Option<PathBuf> {
            self.0.tmp_dir()
        }
        fn put_pack(&self, id: PackId, file: &Path) -> Result<(), PublishError> {
            self.0.put_pack(id, file)
        }
    }

    #[test]
    fn a_store_refusing_deletes_stops_the_run_saying_how_far_it_got_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path().join("store")).expect("store");
        let key = SecretKey::from_seed([3; 32]);
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("src");
        for v in 0..3u8 {
            std::fs::write(src.join("f"), vec![v; 70_000]).expect("file");
            let opts = PublishOptions::new("t", &src, dir.path().join("state"));
            publish(&store, &key, &opts).expect("publish");
        }
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let mut opts = GcOptions::new(policy, dir.path().join("gc"));
        opts.grace = 0;
        let refusing = Refusing(store.clone());
        let e = gc(&refusing, &opts, &Default::default()).expect_err("refused");
        assert!(
            matches!(
                e,
                GcError::Stopped {
                    removed: 0,
                    total: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("deletes refused"), "{e}");
        // Nothing was removed; the current version reaches all it needs, and a store that
        // takes deletes finishes the job.
        // (The refused run had condemned its packs: they go now, with the archived heads.)
        let report = gc(&store, &opts, &Default::default()).expect("gc");
        let heads = report
            .removed
            .iter()
            .filter(|o| o.key.starts_with("history/"));
        assert_eq!(heads.count(), 2, "the archived heads of 1 and 2");
        assert!(report.removed.len() > 2);
        let last = gc(&store, &opts, &Default::default()).expect("gc");
        assert!(last.removed.is_empty() && last.condemned.is_empty());
        assert_eq!(last.trees[0].kept, [3]);
    }
}
