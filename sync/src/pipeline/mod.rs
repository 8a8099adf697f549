//! A sync, as a pipeline of typed phases. Each module is one phase, a function from the
//! previous phase's value to its own:
//!
//! 1. [`head`]: options → [`head::Accepted`] (the signed head fetched and checked: tree,
//!    lifetime, expiry, rollback, equivocation).
//! 2. [`changes`]: → [`changes::Changes`] (the directories whose index node changed, and
//!    the delta that may rebuild their files).
//! 3. [`survey`]: → [`survey::Planned`] (the mirror observed, the pure [`plan`]ner's plan,
//!    and where each needed chunk is found locally).
//! 4. [`stage`]: → [`stage::Staged`] (every missing chunk fetched, verified and staged;
//!    the mirror untouched).
//! 5. [`apply`]: the mirror changed in the order that keeps it usable at every instant,
//!    and flushed.
//! 6. [`record`]: the version recorded as applied, only then.
//!
//! [`sync`] holds the locks (the state directory, then the mirror itself) around them.

use std::fs;
use std::time::Instant;

mod apply;
mod changes;
pub(crate) mod delta;
mod head;
mod options;
pub(crate) mod plan;
mod record;
mod stage;
mod survey;
#[cfg(test)]
mod testkit;
pub(crate) mod walk;
mod waves;

pub use head::check as check_head;
pub use options::{SyncOptions, SyncReport};

use crate::error::SyncError;
use crate::state::{Access, Mirror, State};
use crate::store::{CountingReader, StoreReader};

/// Brings `opts.dest` to the version of `opts.tree` that `reader` offers.
pub fn sync(reader: &dyn StoreReader, opts: &SyncOptions) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    pulpdist_format::validate_tree_name(&opts.tree).map_err(|e| SyncError::Usage(e.to_string()))?;
    let (dest, state_dir) = opts.dirs()?;
    let opts = &SyncOptions {
        dest,
        state_dir: Some(state_dir.clone()),
        ..opts.clone()
    };
    // One sync of a mirror at a time, for the whole sync: two at once would rename older
    // files over newer ones and pull staging and cached nodes from under each other. The
    // state first (its lock file names the holder's pid), then the mirror itself (a sync
    // keeping its state elsewhere, or an rsync:// sync, holds that one).
    let access = match opts.dry_run {
        true => Access::ReadOnly { wait: opts.wait },
        false => Access::Write { wait: opts.wait },
    };
    let state = State::open(&state_dir, access)?;
    let made_dest = !opts.dry_run && fs::symlink_metadata(&opts.dest).is_err();
    let mirror_lock = crate::state::lock_mirror(&opts.dest, opts.dry_run, opts.wait)?;
    let store = CountingReader::new(reader);
    let result = run(&store, opts, &state, mirror_lock.as_ref()).map_err(|e| state.named(e));
    drop(mirror_lock);
    if result.is_err() && made_dest {
        // A first sync that failed before writing anything leaves no empty mirror behind
        // (only an empty directory is removed).
        let _ = fs::remove_dir(&opts.dest);
    }
    let mut report = result?;
    let (requests, bytes) = store.totals();
    report.requests = requests;
    report.bytes_fetched = bytes;
    report.retries = store.retries();
    report.stores = reader.per_store();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The phases, once the state and the mirror are locked (`mirror`: none for a dry run of
/// a mirror that does not exist yet).
fn run(
    store: &CountingReader<'_>,
    opts: &SyncOptions,
    state: &State,
    mirror: Option<&Mirror>,
) -> Result<SyncReport, SyncError> {
    let acc = head::accept(store, opts, state)?;
    let name = acc.served_by.clone();
    tracing::info!(tree = %opts.tree, version = acc.head.version, store = %name, "head accepted");
    let mut report = SyncReport {
        filter: acc.filter(),
        version: acc.head.version,
        previous_version: acc.applied.as_ref().map(|a| a.version),
        head_store: name.clone(),
        head_created: acc.head.created,
        root: acc.head.root.id.to_hex(),
        ..Default::default()
    };
    if acc.up_to_date() {
        report.up_to_date = true;
        record::record_unchanged(state, opts, &acc, &name)?;
        return Ok(report);
    }
    // What the mirror's path shows is planned from: it must still be the locked directory
    // (checked again before every write and before the version is recorded).
    if let Some(m) = mirror {
        m.check()?;
    }
    // Whatever a store sends, no more than a pack's signed size is read.
    store.expect_sizes(&acc.pack_sizes());
    let changes = changes::find(store, state, opts, &acc, &mut report)?;
    let delta = changes.delta.is_some();
    tracing::info!(
        dirs = report.dirs_examined,
        delta,
        "changed directories walked"
    );
    if let Some(e) = &report.delta_error {
        tracing::warn!(error = %e, "delta not used; chunks are fetched instead");
    }
    let first_sync = acc.applied.is_none();
    report.chunks_fetched = match waves::split(state, opts, &acc, &changes)? {
        Some(waves) => {
            tracing::info!(waves = waves.len(), "a large first sync, in waves");
            let mirror = locked(mirror)?;
            waves::sync(
                store,
                state,
                (opts, mirror),
                &acc,
                (changes, waves),
                &mut report,
            )?
        }
        None => {
            let planned = survey::survey(store, state, opts, &acc, changes, &mut report)?;
            let plan = &planned.plan;
            tracing::info!(
                files = plan.files.len(),
                deletes = plan.deletes.len(),
                requests = plan.request_count(),
                chunks_reused = report.chunks_reused,
                "planned"
            );
            pulpdist_failpoint::hit("sync.planned");
            if opts.dry_run {
                report.plan = Some(planned.plan.to_string());
                report.chunks_fetched = planned
                    .plan
                    .fetches
                    .iter()
                    .map(|f| f.chunks.len() as u64)
                    .sum();
                return Ok(report);
            }
            let staged = stage::stage(store, state, opts, &planned, stage::WINDOW)?;
            tracing::info!(
                chunks = staged.chunks_fetched,
                rsync_files = staged.rsync_files,
                "staged"
            );
            report.rsync_files = staged.rsync_files;
            report.rsync_bytes = staged.rsync_bytes;
            let version = acc.head.version;
            let late = apply::apply(
                store,
                state,
                (opts, locked(mirror)?),
                &planned,
                (first_sync, version),
            )?;
            staged.chunks_fetched + late
        }
    };
    tracing::info!(
        files = report.files,
        deleted = report.deleted,
        "applied to the mirror"
    );
    locked(mirror)?.check()?;
    record::record(state, opts, &acc, &name, &mut report)?;
    tracing::info!(version = acc.head.version, "recorded");
    if let Some(e) = &report.prune_error {
        tracing::warn!(error = %e, "the node cache was not pruned");
    }
    Ok(report)
}

/// The locked mirror of a sync that writes (only a dry run has none).
fn locked(mirror: Option<&Mirror>) -> Result<&Mirror, SyncError> {
    mirror.ok_or_else(|| SyncError::Usage("internal error: the mirror is not locked".into()))
}

/// Whether a component of `rel` below `dest` (the last one included) is a symlink.
pub(crate) fn through_symlink(dest: &std::path::Path, rel: &std::path::Path) -> bool {
    changes::symlink_on_the_way(dest, rel)
}
