//! Phases 3 to 5 in waves, for a large first sync: the changed directories (parents first)
//! are cut into waves of about [`SyncOptions::wave_files`] files, and each wave is planned,
//! staged and written beside its targets before the next is planned. Only what every wave
//! leaves is kept across them (each written file's temporary name and target, in flat
//! buffers; the symlinks, attribute fixes, deletions and directory attributes, few in a
//! first sync into an empty directory), so the memory of a sync of many small
//! files follows the wave, not the tree (issue 20, item 5). Nothing is renamed before every
//! wave is written and the filesystem flushed once: the order of the renames, and what a
//! failure or a kill leaves, are those of a sync planned at once (see [`super::apply`]).
//!
//! Only a first sync is cut: an update's plan follows what changed, and a delta or the
//! files of unchanged directories may serve any of its files.

use std::collections::HashSet;
use std::ops::Range;

use pulpdist_format::{ChunkId, EntryKind};

use super::apply::{Applier, Prepared};
use super::changes::Changes;
use super::head::Accepted;
use super::plan::{sort_deepest_first, Plan, Source};
use super::{stage, survey, SyncOptions, SyncReport};
use crate::error::SyncError;
use crate::state::{Mirror, State};
use crate::store::StoreReader;

/// The most files and chunks room is made for at once (2,097,152: 120 MB of staging index
/// and 100 MB of written-file list at most; past it, they grow as they need).
const RESERVE_AT_MOST: usize = 1 << 21;

/// A first sync cut into waves.
pub(super) struct Waves {
    /// Each wave's directories (indexes into the changed directories).
    ranges: Vec<Range<usize>>,
    /// Entries and chunk references of the whole tree: room made for them at once.
    entries: usize,
    chunks: usize,
}

impl Waves {
    pub(super) fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// The waves of `changes`, or `None` when the sync is planned at once: not a first sync,
/// a dry run, a delta in play, or one wave would hold every directory.
pub(super) fn split(
    state: &State,
    opts: &SyncOptions,
    acc: &Accepted,
    changes: &Changes,
) -> Result<Option<Waves>, SyncError> {
    let first_sync = acc.applied.is_none();
    let delta = changes.delta.is_some() || !changes.rest.is_empty() || !changes.spare.is_empty();
    if !first_sync || opts.dry_run || delta {
        return Ok(None);
    }
    let mut waves = Waves {
        ranges: Vec::new(),
        entries: 0,
        chunks: 0,
    };
    let (mut start, mut files) = (0, 0usize);
    for (i, c) in changes.dirs.iter().enumerate() {
        let node = state.node(&c.new).ok_or_else(|| state.lost_node(&c.new))?;
        let entries = node.entries();
        files += entries.len();
        waves.entries += entries.len();
        let chunks = |e: &pulpdist_format::Entry| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.len(),
            _ => 0,
        };
        waves.chunks += entries.iter().map(chunks).sum::<usize>();
        if files >= opts.wave_files {
            waves.ranges.push(start..i + 1);
            (start, files) = (i + 1, 0);
        }
    }
    if start < changes.dirs.len() {
        waves.ranges.push(start..changes.dirs.len());
    }
    Ok((waves.ranges.len() > 1).then_some(waves))
}

/// Plans, stages and writes each wave, then flushes, renames, deletes and settles as one
/// plan would; counts what it did in `report`. The chunks fetched.
pub(super) fn sync(
    store: &dyn StoreReader,
    state: &State,
    (opts, mirror): (&SyncOptions, &Mirror),
    acc: &Accepted,
    (changes, waves): (Changes, Waves),
    report: &mut SyncReport,
) -> Result<u64, SyncError> {
    let version = acc.head.version;
    let mut applier = Applier::begin((opts, mirror), (true, version))?;
    // Room made at once, up to a bound: the counts come from the index, and a hostile
    // one (a node naming one chunk millions of times) must not make it reserve the world.
    let mut prepared = Prepared::with_room(waves.entries.min(RESERVE_AT_MOST));
    state.reserve_staged(waves.chunks.min(RESERVE_AT_MOST))?;
    // Reused: from local files, or staged before this sync (a killed one's); not a chunk
    // an earlier wave fetched. Each counted once, as a sync planned at once counts them.
    let staged_before: HashSet<ChunkId> = state.staged()?.into_iter().collect();
    let mut reused = HashSet::new();
    // What the renames, deletions and directory attributes need of every wave.
    let mut rest = Plan::default();
    let mut fetched = 0;
    let mut dirs = changes.dirs.into_iter();
    for range in waves.ranges {
        let wave = Changes {
            dirs: dirs.by_ref().take(range.len()).collect(),
            delta: None,
            rest: Vec::new(),
            spare: Vec::new(),
        };
        let mut counts = SyncReport::default();
        let done = (|| {
            let planned = survey::survey(store, state, opts, acc, wave, &mut counts)?;
            tracing::info!(files = planned.plan.files.len(), "wave planned");
            pulpdist_failpoint::hit("sync.planned");
            let staged = stage::stage(store, state, opts, &planned, stage::WAVE_WINDOW)?;
            applier.write(store, state, &planned, true, &mut prepared)?;
            Ok((planned.plan, staged))
        })();
        let (plan, staged) = match done {
            Ok(d) => d,
            Err(e) => {
                applier.undo(state, &prepared);
                return Err(e);
            }
        };
        fetched += staged.chunks_fetched;
        report.rsync_files += staged.rsync_files;
        report.rsync_bytes += staged.rsync_bytes;
        report.files += counts.files;
        report.symlinks += counts.symlinks;
        report.deleted += counts.deleted;
        let (n, b) = plan.reused_where(&mut reused, |id, src| match src {
            Source::Staged => staged_before.contains(id),
            _ => true,
        });
        report.chunks_reused += n;
        report.bytes_reused += b;
        report.files_rehashed += counts.files_rehashed;
        rest.symlinks.extend(plan.symlinks);
        rest.attrs.extend(plan.attrs);
        rest.deletes.extend(plan.deletes);
        rest.dir_attrs.extend(plan.dir_attrs);
    }
    sort_deepest_first(&mut rest);
    let late = applier.finish(state, &rest, prepared, true, (true, version))?;
    Ok(fetched + late)
}
