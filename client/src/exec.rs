//! The sync executor: head checks, index walk, local observation, plan, then the ordered,
//! atomic execution of the plan. All file-system and store I/O of a sync happens here.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use pulpdist_chunker::Chunker;
use pulpdist_format::{
    ChunkId, ChunkRef, EntryKind, Mtime, Node, PackId, PackKind, SignedHead, TrustedKeys,
    VerifiedChunk,
};

use crate::error::{IoContext, SyncError};
use crate::fsutil::{absolute_dir, SafeDirs};
use crate::glob::glob_match;
use crate::glob::DEFAULT_METADATA_PATTERNS;
use crate::plan::{DirView, FetchOp, Observed, PlanSettings, Planner, Source};
use crate::state::{Access, State};
use crate::store::{CountingReader, HeadFetch, StoreReader};
use crate::walk::{changed_dirs, slice, DirChange};

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
}

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
    /// Why a listed delta was not used, if it failed as a whole.
    pub delta_error: Option<String>,
    /// Cached index nodes deleted after the version was applied (no applied tree reaches them).
    pub nodes_pruned: u64,
    /// Why pruning the node cache failed (the sync itself succeeded).
    pub prune_error: Option<String>,
    /// The plan, printed (with `dry_run`).
    pub plan: Option<String>,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// The longest a head may be valid (what `publish --expires-days` allows).
pub const MAX_HEAD_LIFETIME: i64 = 366 * 86_400;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
    // files over newer ones and pull staging and cached nodes from under each other.
    let access = if opts.dry_run {
        Access::ReadOnly { wait: opts.wait }
    } else {
        Access::Write { wait: opts.wait }
    };
    // The state first (its lock file names the holder's pid), then the mirror itself (a
    // sync keeping its state elsewhere, or an rsync:// sync, holds that one).
    let state = State::open(&state_dir, access)?;
    let made_dest = !opts.dry_run && fs::symlink_metadata(&opts.dest).is_err();
    let mirror_lock = crate::state::lock_mirror(&opts.dest, opts.dry_run, opts.wait)?;
    let result = sync_locked(reader, opts, &state, started);
    drop(mirror_lock);
    if result.is_err() && made_dest {
        // A first sync that failed before writing anything leaves no empty mirror behind
        // (only an empty directory is removed).
        let _ = fs::remove_dir(&opts.dest);
    }
    result
}

/// The sync itself, once the state and the mirror are locked.
fn sync_locked(
    reader: &dyn StoreReader,
    opts: &SyncOptions,
    state: &State,
    started: Instant,
) -> Result<SyncReport, SyncError> {
    let store = CountingReader::new(reader);
    let applied = state.applied(&opts.tree)?;
    let head_object = format!("{}/heads/{}", reader.describe(), opts.tree);
    // A no-op sync is one conditional request: the store's tag for the head we applied.
    // A sync that died while renaming files into place leaves directories the index diff
    // would not look at again: then every directory is checked (as with --full).
    let full = opts.full || state.applying(&opts.tree);
    let known_etag = match (&applied, full) {
        (Some(_), false) => state.etag(&opts.tree, &reader.describe()),
        _ => None,
    };
    let (head_bytes, etag) = match store.get_head(&opts.tree, known_etag.as_deref())? {
        HeadFetch::Found { bytes, etag } => (bytes, etag),
        HeadFetch::NotModified => match (state.applied_bytes(&opts.tree)?, known_etag) {
            (Some(b), Some(tag)) => (b, Some(tag)),
            _ => {
                return Err(SyncError::Config(format!(
                    "{}: answered 304 Not Modified to an unconditional request",
                    reader.describe()
                )))
            }
        },
        HeadFetch::Missing => {
            return Err(SyncError::NoSuchTree {
                store: reader.describe(),
                tree: opts.tree.clone(),
            })
        }
    };
    let signed = SignedHead::decode_and_verify(&head_bytes, &opts.trusted).map_err(|source| {
        SyncError::Format {
            object: head_object.clone(),
            source,
        }
    })?;
    let head = signed.head().clone();
    pulpdist_failpoint::hit("sync.head");
    if head.tree != opts.tree {
        return Err(SyncError::WrongTree {
            asked: opts.tree.clone(),
            found: head.tree,
        });
    }
    let now = opts.now.unwrap_or_else(unix_now);
    // Freeze protection needs a bounded lifetime (publish gives 1 to 366 days) and a head
    // that was not made in the future (a publisher's clock a day ahead is tolerated).
    if head.expires.saturating_sub(head.created) > MAX_HEAD_LIFETIME
        || head.created > now.saturating_add(86_400)
    {
        return Err(SyncError::Format {
            object: head_object.clone(),
            source: pulpdist_format::FormatError::Invalid {
                what: "tree head",
                reason: format!(
                    "created {}, expires {}, now {now}: a head must be valid for at most {} days and not created in the future; refusing it",
                    head.created,
                    head.expires,
                    MAX_HEAD_LIFETIME / 86_400
                ),
            },
        });
    }
    if now > head.expires {
        return Err(SyncError::Expired {
            tree: head.tree,
            version: head.version,
            expires: head.expires,
            now,
        });
    }
    if let Some(a) = &applied {
        if head.version < a.version {
            return Err(SyncError::Rollback {
                tree: head.tree,
                offered: head.version,
                applied: a.version,
            });
        }
        if head.version == a.version && head.root != a.root {
            return Err(SyncError::Equivocation {
                tree: head.tree,
                version: head.version,
            });
        }
    }
    // A first sync deletes whatever the tree lacks: into a directory that already holds
    // files (and no PulpDist state of an earlier, interrupted first sync) only on request.
    if applied.is_none() && !state.applying(&opts.tree) && !opts.adopt {
        let occupied = match fs::read_dir(&opts.dest) {
            Ok(mut rd) => rd.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).at(&opts.dest),
        };
        if occupied {
            return Err(SyncError::Usage(format!(
                "{}: not empty, and no version of tree '{}' was synced into it: a first sync would delete every file the tree lacks; give --adopt to allow it",
                opts.dest.display(),
                opts.tree
            )));
        }
    }

    // The filter extension is informational (not critical): shown, never a reason to refuse.
    let filter = match head.filter() {
        Ok(f) => f.map(|f| f.to_string()),
        Err(_) => head
            .extensions
            .iter()
            .find(|(t, _)| *t == pulpdist_format::EXT_FILTER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned()),
    };
    let mut report = SyncReport {
        filter,
        version: head.version,
        previous_version: applied.as_ref().map(|a| a.version),
        ..Default::default()
    };
    let finish = |mut report: SyncReport, store: &CountingReader<'_>| {
        let (requests, bytes) = store.totals();
        report.requests = requests;
        report.bytes_fetched = bytes;
        report.retries = reader.overhead().requests;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        report
    };

    let old_root = if full {
        None
    } else {
        applied.as_ref().map(|a| a.root.id)
    };
    if old_root == Some(head.root.id) {
        report.up_to_date = true;
        if !opts.dry_run
            && (applied.as_ref().map(|a| a.version) != Some(head.version)
                || state.etag(&opts.tree, &reader.describe()) != etag)
        {
            state.set_applied(&opts.tree, &head_bytes, etag.as_deref(), &reader.describe())?;
        }
        return Ok(finish(report, &store));
    }
    if !opts.dry_run {
        fs::create_dir_all(&opts.dest).at(&opts.dest)?;
    }

    // Whatever a store sends, no more than a pack's signed size is read.
    let pack_sizes: HashMap<PackId, u64> = head
        .recent
        .iter()
        .flat_map(|v| v.packs.iter())
        .map(|p| (p.id, p.size))
        .collect();
    store.expect_sizes(&pack_sizes);

    // A delta from the version applied carries the new index nodes and the changed files,
    // each against its old copy: one request, when it is smaller than what the missing
    // versions added to the store. Whatever it cannot rebuild is fetched as before.
    let mut delta = None;
    if let (Some(a), false, false) = (&applied, full, opts.dry_run) {
        delta = fetch_delta(&store, state, &head, a, &mut report);
    }
    // One version (or a few) behind: the index packs of the missing versions hold every new
    // node, so fetch them whole instead of walking level by level.
    let mut mem_packs = HashMap::new();
    if let (Some(a), false, None) = (&applied, full, &delta) {
        let listed: Vec<_> = head
            .recent
            .iter()
            .filter(|v| v.version > a.version)
            .collect();
        if listed.len() as u64 == head.version - a.version {
            for v in listed {
                for p in v.packs.iter().filter(|p| p.kind == PackKind::Index) {
                    mem_packs.insert(p.id, store.get_pack(&p.id, p.size)?);
                }
            }
        }
    }
    let base_len = opts.dest.as_os_str().len();
    let mut changes = changed_dirs(
        &store,
        state,
        old_root,
        head.root,
        &mem_packs,
        opts.max_gap,
        base_len,
    )?;
    // A directory on the way to a changed one that is a symlink now (planted by someone
    // who can write the mirror) is replaced by a real directory, and what the unchanged
    // rest of it held must come back too: then every directory is checked, as with --full.
    // Likewise a directory the index keeps unchanged that is gone or not a directory on
    // disk: remade, it would stay empty (its node is not walked).
    if old_root.is_some()
        && (changes
            .iter()
            .any(|c| symlink_on_the_way(&opts.dest, &c.rel))
            || unchanged_dir_missing(&opts.dest, state, &changes))
    {
        changes = changed_dirs(
            &store,
            state,
            None,
            head.root,
            &mem_packs,
            opts.max_gap,
            base_len,
        )?;
    }
    drop(mem_packs);
    report.dirs_examined = changes.len() as u64;

    let settings = PlanSettings {
        metadata_patterns: opts.metadata_patterns.clone(),
        max_gap: opts.max_gap,
        whole_ratio: opts.whole_ratio,
        special_modes: opts.special_modes,
    };
    let chunker = Chunker::new(head.params).map_err(|e| SyncError::Config(e.to_string()))?;

    // What is on disk now, planned one directory at a time: memory follows the change, not
    // the size of the changed directories.
    let mut safe = SafeDirs::new(&opts.dest);
    let mut planner = Planner::new(settings);
    let mut rehashed = Vec::new();
    let mut looked = Vec::with_capacity(changes.len());
    for c in &changes {
        let new = state.node(&c.new).ok_or_else(|| {
            SyncError::Config(format!("node {} vanished from the local state", c.new))
        })?;
        let old = c.old.and_then(|id| state.node(&id));
        let observed = observe_dir(&opts.dest, &mut safe, &c.rel)?;
        looked.push(!observed.is_empty());
        rehash_unknown(
            &opts.dest,
            c,
            &old,
            &new,
            &observed,
            &chunker,
            &mut rehashed,
        );
        planner.add_dir(&DirView {
            rel: c.rel.clone(),
            new: &new,
            old: old.as_ref(),
            local: &observed,
        });
    }
    // Which of the chunks the files to write need are already here.
    let mut sources = local_sources(&opts.dest, state, &changes, &looked, &planner, rehashed)?;
    // The delta first: it brings the chunks of the files it carries without touching the
    // rest of the tree.
    if let Some(fetched) = &delta {
        use_delta(state, opts, fetched, &planner, &mut sources, &mut report);
    }
    drop(delta);
    // Chunks still missing may sit in files of directories that did not change (a moved
    // file, an ISO image built from the tree's own packages): look them up in the index of
    // the version applied, in the node cache.
    if let Some(a) = &applied {
        let changed: std::collections::HashSet<&Path> =
            changes.iter().map(|c| c.rel.as_path()).collect();
        let mut needed: std::collections::HashSet<ChunkId> = planner
            .wanted()
            .keys()
            .filter(|id| !sources.contains_key(*id))
            .copied()
            .collect();
        if !needed.is_empty() {
            find_in_unchanged(
                &opts.dest,
                &mut safe,
                state,
                a.root,
                &changed,
                &mut needed,
                &mut sources,
            );
        }
    }
    let (plan, all_refs) = planner.finish(&sources, &pack_sizes);
    drop(sources);
    let (rn, rb) = plan.reused();
    report.chunks_reused = rn;
    report.bytes_reused = rb;
    report.files = plan.files.len() as u64;
    report.symlinks = plan.symlinks.len() as u64;
    report.deleted = plan.deletes.len() as u64;
    pulpdist_failpoint::hit("sync.planned");
    if opts.dry_run {
        report.plan = Some(plan.to_string());
        report.chunks_fetched = plan.fetches.iter().map(|f| f.chunks.len() as u64).sum();
        return Ok(finish(report, &store));
    }

    // 1-2. Everything the plan needs, verified and staged (nothing in the mirror changes).
    let staged = stage(&store, state, opts, &plan, &all_refs)?;
    report.chunks_fetched = staged.chunks_fetched;
    report.rsync_files = staged.rsync_files;
    report.rsync_bytes = staged.rsync_bytes;
    // 3-10. The mirror changed in the order that keeps it usable at every instant, and on
    // disk before the version is recorded.
    report.chunks_fetched +=
        crate::apply::apply(&store, state, opts, &plan, &all_refs, applied.is_none())?;
    // 11. Only now is the new version applied.
    state.set_applied(&opts.tree, &head_bytes, etag.as_deref(), &reader.describe())?;
    pulpdist_failpoint::hit("sync.recorded");
    state.clear_applying(&opts.tree)?;
    state.clear_staging()?;
    // Housekeeping: the version is applied whatever happens here.
    match state.prune_nodes() {
        Ok(n) => report.nodes_pruned = n,
        Err(e) => report.prune_error = Some(e.to_string()),
    }
    Ok(finish(report, &store))
}

/// What [`stage`] brought.
struct Staged {
    chunks_fetched: u64,
    rsync_files: u64,
    rsync_bytes: u64,
}

/// Steps 1 and 2: saves the local chunks that live in files about to be replaced, then
/// fetches and verifies every chunk the plan lacks into the staging area (every fetch runs
/// even if one fails, so what could be verified is staged for the next try), filling the
/// store's gaps from the rsync fallback when there is one. Nothing in the mirror changes.
fn stage(
    store: &dyn StoreReader,
    state: &State,
    opts: &SyncOptions,
    plan: &crate::plan::Plan,
    all_refs: &HashMap<ChunkId, ChunkRef>,
) -> Result<Staged, SyncError> {
    let dest = &opts.dest;
    let mut out = Staged {
        chunks_fetched: 0,
        rsync_files: 0,
        rsync_bytes: 0,
    };
    // 1. Save local chunks that live in files about to be replaced.
    let mut late: Vec<ChunkRef> = Vec::new();
    for (id, len, path, offset) in &plan.stage_first {
        match read_local(dest, path, *offset, *len, *id) {
            Ok(c) => state.stage(&c)?,
            Err(_) => late.extend(all_refs.get(id).copied()),
        }
        pulpdist_failpoint::hit("sync.stage_first");
    }
    // 2. Fetch and verify everything missing, into staging.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.connections.max(1))
        .thread_name(|i| format!("pulpdist-fetch-{i}"))
        .build()
        .map_err(|e| SyncError::Config(format!("starting fetch threads: {e}")))?;
    // Every fetch runs even if one fails, so what could be verified is staged for the next try.
    let results: Vec<Result<u64, SyncError>> = pool.install(|| {
        plan.fetches
            .par_iter()
            .map(|f| fetch_op(store, state, f))
            .collect()
    });
    let mut fetched = 0;
    let mut gaps: Vec<&FetchOp> = Vec::new();
    for (op, r) in plan.fetches.iter().zip(results) {
        match r {
            Ok(n) => fetched += n,
            Err(e) if opts.rsync_fallback.is_some() && is_gap(&e) => gaps.push(op),
            Err(e) => return Err(e),
        }
    }
    if let (Some(url), false) = (&opts.rsync_fallback, gaps.is_empty()) {
        let (files, bytes) = fill_gaps(url, state, plan, &gaps)?;
        out.rsync_files = files;
        out.rsync_bytes = bytes;
    }
    out.chunks_fetched = fetched + fetch_loose(store, state, &late, opts.max_gap)?;
    Ok(out)
}

/// When to delete `path` among the deletions: 0 a top index (Release, repomd.xml), 1 other
/// metadata or a directory holding some, 2 the rest. An index is deleted before what it
/// names, so no index on the mirror ever names a file already gone.
pub(crate) fn deletion_rank(dest: &Path, rel: &Path, patterns: &[String]) -> u8 {
    let named = |p: &Path, pats: &[&str]| {
        let name = p.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        pats.iter().any(|pat| glob_match(pat.as_bytes(), name))
    };
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    if named(rel, crate::glob::TOP_METADATA_PATTERNS) {
        return 0;
    }
    if named(rel, &patterns) {
        return 1;
    }
    // A directory is looked into (never through a symlink, at most 100,000 entries: past
    // that it is taken to hold metadata) for metadata.
    if symlink_on_the_way(dest, rel.parent().unwrap_or(Path::new(""))) {
        return 2;
    }
    let mut todo = vec![dest.join(rel)];
    let mut seen = 0usize;
    while let Some(p) = todo.pop() {
        seen += 1;
        if seen > 100_000 {
            return 1;
        }
        if named(&p, &patterns) {
            return 1;
        }
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            if let Ok(rd) = fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    2
}

/// Whether a changed directory has a subdirectory the index keeps unchanged (so it is not
/// walked) that is not a real directory on disk.
fn unchanged_dir_missing(dest: &Path, state: &State, changes: &[DirChange]) -> bool {
    let walked: std::collections::HashSet<&Path> =
        changes.iter().map(|c| c.rel.as_path()).collect();
    changes.iter().any(|c| {
        let Some(node) = state.node(&c.new) else {
            return false;
        };
        node.entries().iter().any(|e| {
            let rel = c.rel.join(std::ffi::OsStr::from_bytes(e.name.as_bytes()));
            matches!(e.kind, EntryKind::Dir { .. })
                && !walked.contains(rel.as_path())
                && !fs::symlink_metadata(dest.join(&rel)).is_ok_and(|m| m.is_dir())
        })
    })
}

/// Whether a component of `rel` (below `dest`, the last one included) is a symlink.
fn symlink_on_the_way(dest: &Path, rel: &Path) -> bool {
    let mut cur = dest.to_path_buf();
    rel.components().any(|c| {
        cur.push(c);
        fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// Fetches the head's delta from the tree the mirror holds (its root), if it has one and it
/// is smaller than the packs the versions since then added, and rebuilds the index nodes it
/// carries into the node cache. A delta that cannot be fetched is noted and skipped.
fn fetch_delta(
    store: &dyn StoreReader,
    state: &State,
    head: &pulpdist_format::Head,
    applied: &pulpdist_format::Head,
    report: &mut SyncReport,
) -> Option<crate::delta::Fetched> {
    let info = head
        .deltas()
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.from_root.id == applied.root.id)?;
    let added: u64 = head
        .recent
        .iter()
        .filter(|v| v.version > applied.version)
        .flat_map(|v| v.packs.iter())
        .map(|p| p.size)
        .sum();
    // Worth it only when smaller than the packs; held whole in memory, so bounded.
    if (added > 0 && info.size >= added) || info.size > pulpdist_format::delta::MAX_DELTA_PACK {
        return None;
    }
    // Kept in the staging area: a sync killed after this fetch does not fetch it again.
    let keep = state
        .dir()
        .join("staging")
        .join(format!("delta-{}", info.pack.to_hex()));
    let fetched = match crate::delta::Fetched::get(store, info, Some(&keep)) {
        Ok((f, from_store)) => {
            if from_store {
                report.delta_bytes = info.size;
            }
            f
        }
        Err(e) => {
            report.delta_error = Some(e.to_string());
            return None;
        }
    };
    pulpdist_failpoint::hit("sync.delta");
    match crate::delta::apply_nodes(state, &fetched, &applied.root.id) {
        Ok(n) => report.delta_nodes = n,
        Err(e) => {
            report.delta_error = Some(e.to_string());
            return None;
        }
    }
    Some(fetched)
}

/// Rebuilds the changed files the delta carries; records the chunks it staged as sources.
fn use_delta(
    state: &State,
    opts: &SyncOptions,
    fetched: &crate::delta::Fetched,
    planner: &Planner,
    sources: &mut HashMap<ChunkId, Source>,
    report: &mut SyncReport,
) {
    let mut needed: std::collections::HashSet<ChunkId> = std::collections::HashSet::new();
    let mut wanted: HashMap<Vec<u8>, Vec<(ChunkId, u32)>> = HashMap::new();
    for f in planner.files() {
        let mut lacks = false;
        for (id, _, _) in &f.chunks {
            if !sources.contains_key(id) {
                lacks = true;
                needed.insert(*id);
            }
        }
        if lacks {
            wanted.insert(
                f.path.as_os_str().as_bytes().to_vec(),
                f.chunks.iter().map(|(id, len, _)| (*id, *len)).collect(),
            );
        }
    }
    let before = needed.clone();
    match crate::delta::apply_files(state, &opts.dest, fetched, wanted, &mut needed) {
        Ok(applied) => {
            report.delta_files = applied.files;
            report.delta_failed = applied.failed;
            report.chunks_from_delta = applied.chunks;
            for id in before.difference(&needed) {
                sources.insert(*id, Source::Staged);
            }
        }
        Err(e) => report.delta_error = Some(e.to_string()),
    }
}

fn to_mtime(md: &fs::Metadata) -> Mtime {
    Mtime {
        secs: md.mtime(),
        nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

fn observe_dir(
    dest: &Path,
    safe: &mut SafeDirs,
    rel: &Path,
) -> Result<HashMap<Vec<u8>, Observed>, SyncError> {
    let mut out = HashMap::new();
    let dir = dest.join(rel);
    match fs::symlink_metadata(&dir) {
        Ok(md) if md.is_dir() => {}
        _ => return Ok(out),
    }
    // A changed directory reached through a symlink is not looked into.
    if safe.ensure(rel, false).is_err() {
        return Ok(out);
    }
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let md = fs::symlink_metadata(e.path()).at(e.path())?;
        let ft = md.file_type();
        let o = if ft.is_file() {
            Observed::File {
                size: md.len(),
                mtime: to_mtime(&md),
                mode: md.mode() & 0o7777,
            }
        } else if ft.is_dir() {
            Observed::Dir {
                mode: md.mode() & 0o7777,
                mtime: to_mtime(&md),
            }
        } else if ft.is_symlink() {
            let t = fs::read_link(e.path()).at(e.path())?;
            Observed::Symlink {
                target: t.as_os_str().as_bytes().to_vec(),
                mtime: to_mtime(&md),
            }
        } else {
            Observed::Other
        };
        out.insert(e.file_name().as_bytes().to_vec(), o);
    }
    Ok(out)
}

/// Records, for a local file in a changed directory that matches neither its old nor its
/// new index entry but is about to be replaced, the chunks it holds: a killed sync or a local
/// edit may have left content the new version needs.
fn rehash_unknown(
    dest: &Path,
    c: &DirChange,
    old: &Option<Node>,
    new: &Node,
    observed: &HashMap<Vec<u8>, Observed>,
    chunker: &Chunker,
    out: &mut Vec<(PathBuf, Vec<(ChunkId, u32)>)>,
) {
    for (name, o) in observed {
        let Observed::File { size, mtime, .. } = o else {
            continue;
        };
        if new.get(name).is_none()
            || entry_matches(old.as_ref(), name, *size, *mtime).is_some()
            || entry_matches(Some(new), name, *size, *mtime).is_some()
        {
            continue;
        }
        let path = c.rel.join(std::ffi::OsStr::from_bytes(name));
        // At most the size it had when listed (it may have grown, or be another file now).
        let Ok((f, _)) = crate::fsutil::open_regular(&dest.join(&path)) else {
            continue;
        };
        let mut stream = chunker.stream(f.take(*size));
        let mut found = Vec::new();
        while let Ok(Some(chunk)) = stream.next_chunk() {
            found.push((ChunkId::of(chunk), chunk.len() as u32));
        }
        out.push((path, found));
    }
}

/// The chunks of a file entry `name` in `node`, if the entry has this size and mtime.
fn entry_matches<'a>(
    node: Option<&'a Node>,
    name: &[u8],
    size: u64,
    mtime: Mtime,
) -> Option<&'a [ChunkRef]> {
    node.and_then(|n| n.get(name)).and_then(|e| match &e.kind {
        EntryKind::File { size: s, chunks } if *s == size && e.mtime == mtime => {
            Some(chunks.as_slice())
        }
        _ => None,
    })
}

/// Where the chunks the planned files need are available without the store: staged ones,
/// files of the changed directories that still match their old or new index entry (size
/// and mtime), and the files `rehashed` found. Only the wanted chunks are recorded, and only
/// entries holding one are looked at on disk.
fn local_sources(
    dest: &Path,
    state: &State,
    changes: &[DirChange],
    looked: &[bool],
    planner: &Planner,
    rehashed: Vec<(PathBuf, Vec<(ChunkId, u32)>)>,
) -> Result<HashMap<ChunkId, Source>, SyncError> {
    let wanted = planner.wanted();
    let mut sources = HashMap::new();
    let mut add = |path: &Path, chunks: &mut dyn Iterator<Item = (ChunkId, u32)>| {
        let mut offset = 0u64;
        for (id, len) in chunks {
            if wanted.contains_key(&id) && !sources.contains_key(&id) {
                sources.insert(
                    id,
                    Source::Local {
                        path: path.to_path_buf(),
                        offset,
                    },
                );
            }
            offset += u64::from(len);
        }
    };
    if !wanted.is_empty() {
        // Only directories the listing looked into (not reached through a symlink).
        for (c, _) in changes.iter().zip(looked).filter(|(_, l)| **l) {
            let Some(new) = state.node(&c.new) else {
                continue;
            };
            let old = c.old.and_then(|id| state.node(&id));
            let on_disk = |name: &[u8], size: u64, mtime: Mtime| {
                let path = c.rel.join(std::ffi::OsStr::from_bytes(name));
                fs::symlink_metadata(dest.join(&path))
                    .is_ok_and(|md| md.is_file() && md.len() == size && to_mtime(&md) == mtime)
            };
            // A file still as the applied version left it holds its old entry's chunks; only
            // a file that does not match its old entry is taken for its new entry's.
            for (node, is_old) in old.iter().map(|o| (o, true)).chain([(&new, false)]) {
                for e in node.entries() {
                    let EntryKind::File { size, chunks } = &e.kind else {
                        continue;
                    };
                    if !chunks.iter().any(|ch| wanted.contains_key(&ch.id)) {
                        continue;
                    }
                    let name = e.name.as_bytes();
                    if !is_old {
                        let old_here = old.as_ref().and_then(|o| o.get(name)).is_some_and(|oe| {
                            matches!(&oe.kind, EntryKind::File { size, .. } if on_disk(name, *size, oe.mtime))
                        });
                        if old_here {
                            continue;
                        }
                    }
                    if on_disk(name, *size, e.mtime) {
                        let path = c.rel.join(std::ffi::OsStr::from_bytes(name));
                        add(&path, &mut chunks.iter().map(|ch| (ch.id, ch.loc.raw_len)));
                    }
                }
            }
        }
        for (path, found) in rehashed {
            add(&path, &mut found.into_iter());
        }
    }
    for id in state.staged()? {
        sources.insert(id, Source::Staged);
    }
    Ok(sources)
}

fn read_local(
    dest: &Path,
    rel: &Path,
    offset: u64,
    len: u32,
    id: ChunkId,
) -> Result<VerifiedChunk, SyncError> {
    let path = dest.join(rel);
    let (mut f, _) = crate::fsutil::open_regular(&path).at(&path)?;
    f.seek(SeekFrom::Start(offset)).at(&path)?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).at(&path)?;
    VerifiedChunk::from_plain(id, buf).map_err(|source| SyncError::Format {
        object: path.display().to_string(),
        source,
    })
}

/// Executes one fetch: the whole pack or its ranges; every chunk verified, then staged.
fn fetch_op(store: &dyn StoreReader, state: &State, op: &FetchOp) -> Result<u64, SyncError> {
    let bufs: Vec<(u64, Vec<u8>)> = if op.whole {
        vec![(0, store.get_pack(&op.pack, op.size)?)]
    } else if store.multi_range() && op.ranges.len() > 1 {
        op.ranges
            .iter()
            .map(|r| r.start)
            .zip(store.get_ranges(&op.pack, &op.ranges)?)
            .collect()
    } else {
        op.ranges
            .iter()
            .map(|r| Ok((r.start, store.get_range(&op.pack, r.clone())?)))
            .collect::<Result<_, SyncError>>()?
    };
    let mut n = 0;
    for c in &op.chunks {
        let (base, buf) = bufs
            .iter()
            .find(|(base, b)| *base <= c.loc.offset && c.loc.range().end <= base + b.len() as u64)
            .ok_or_else(|| SyncError::Short {
                store: store.describe(),
                object: op.pack.object_key(),
                got: 0,
                wanted: c.loc.range().end,
            })?;
        let stored = slice(buf, *base, c.loc.range(), store, &op.pack)?;
        let chunk = VerifiedChunk::from_stored(c.id, c.loc.codec, stored, c.loc.raw_len).map_err(
            |source| SyncError::Format {
                object: format!("chunk {} in {}", c.id, op.pack.object_key()),
                source,
            },
        )?;
        state.stage(&chunk)?;
        n += 1;
    }
    pulpdist_failpoint::hit("sync.fetch");
    Ok(n)
}

/// Fetches individual chunks (those whose local copy failed verification) into staging.
fn fetch_loose(
    store: &dyn StoreReader,
    state: &State,
    refs: &[ChunkRef],
    max_gap: u64,
) -> Result<u64, SyncError> {
    let mut by_pack: HashMap<PackId, Vec<ChunkRef>> = HashMap::new();
    for r in refs {
        by_pack.entry(r.loc.pack).or_default().push(*r);
    }
    let mut n = 0;
    for (pack, chunks) in by_pack {
        let ranges =
            crate::ranges::coalesce(chunks.iter().map(|c| c.loc.range()).collect(), max_gap);
        n += fetch_op(
            store,
            state,
            &FetchOp {
                pack,
                whole: false,
                size: 0,
                ranges,
                chunks,
            },
        )?;
    }
    Ok(n)
}

/// Writes one file's content into `file` (the new temporary file `tmp`), sets its mode
/// and mtime, and flushes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_file(
    dest: &Path,
    state: &State,
    file: File,
    tmp: &Path,
    op: &crate::plan::FileOp,
    refs: &HashMap<ChunkId, ChunkRef>,
    store: &dyn StoreReader,
    max_gap: u64,
) -> Result<u64, SyncError> {
    let mut late = 0;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    for (id, len, src) in &op.chunks {
        let chunk = match src {
            Source::Local { path, offset } => match read_local(dest, path, *offset, *len, *id) {
                Ok(c) => c,
                Err(_) => {
                    // The local copy changed since it was observed: fetch this chunk instead.
                    let r = refs.get(id).copied().into_iter().collect::<Vec<_>>();
                    late += fetch_loose(store, state, &r, max_gap)?;
                    state.read_staged(id)?
                }
            },
            Source::Staged | Source::Fetch(_) => state.read_staged(id)?,
        };
        f.write_all(chunk.data()).at(tmp)?;
    }
    let file = f.into_inner().map_err(|e| e.into_error()).at(tmp)?;
    file.set_permissions(fs::Permissions::from_mode(op.mode))
        .at(tmp)?;
    // The mtime before the flush (on the open file, not by path), so that it is on disk
    // with the bytes.
    crate::tree::set_file_mtime(&file, op.mtime).at(tmp)?;
    file.sync_all().at(tmp)?;
    Ok(late)
}

/// Whether a fetch failed because the store lacks or damaged an object (not a network
/// hiccup): what the rsync fallback is for.
fn is_gap(e: &SyncError) -> bool {
    match e {
        SyncError::NotFound { .. }
        | SyncError::Format { .. }
        | SyncError::Short { .. }
        | SyncError::Mismatch { .. } => true,
        SyncError::Http { temporary, .. } => !temporary,
        _ => false,
    }
}

/// Fetches, by rsync from `url`, every file that needs a chunk the failed fetches did not
/// stage; checks each against its signed chunk list and stages its chunks. Returns the
/// number of files and bytes that came by rsync.
fn fill_gaps(
    url: &str,
    state: &State,
    plan: &crate::plan::Plan,
    gaps: &[&FetchOp],
) -> Result<(u64, u64), SyncError> {
    let staged: std::collections::HashSet<ChunkId> = state.staged()?.into_iter().collect();
    let missing: std::collections::HashSet<ChunkId> = gaps
        .iter()
        .flat_map(|op| op.chunks.iter().map(|c| c.id))
        .filter(|id| !staged.contains(id))
        .collect();
    let files: Vec<&crate::plan::FileOp> = plan
        .files
        .iter()
        .filter(|f| f.chunks.iter().any(|(id, _, _)| missing.contains(id)))
        .collect();
    let scratch = state.dir().join("fallback");
    let _ = fs::remove_dir_all(&scratch);
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let stats = crate::rsync::fetch_files(url, &paths, &scratch)?;
    for f in &files {
        let local = scratch.join(&f.path);
        let object = format!("{url}/{} (rsync fallback)", f.path.display());
        let mismatch = |got: u64| SyncError::Format {
            object: object.clone(),
            source: pulpdist_format::FormatError::Invalid {
                what: "file from the rsync fallback",
                reason: format!("{got} bytes, but the signed index says {}", f.size),
            },
        };
        // A regular file only: rsync keeps symlinks, and one from the fallback would
        // otherwise be followed here.
        let (mut file, got) = crate::fsutil::open_regular(&local).at(&local)?;
        if got != f.size {
            return Err(mismatch(got));
        }
        // One chunk at a time: verified against the signed index, then staged.
        for (id, len, _) in &f.chunks {
            let mut piece = vec![0u8; *len as usize];
            file.read_exact(&mut piece).at(&local)?;
            let chunk =
                VerifiedChunk::from_plain(*id, piece).map_err(|source| SyncError::Format {
                    object: object.clone(),
                    source,
                })?;
            state.stage(&chunk)?;
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    Ok((files.len() as u64, stats.bytes_received))
}

/// Walks the applied version's index (from the node cache) through directories this sync
/// does not change, and records, for each chunk in `needed`, a file on disk that holds it
/// (its size and mtime still those of the index). Reads verify each chunk later, so a file
/// changed behind our back only costs a fetch.
fn find_in_unchanged(
    dest: &Path,
    safe: &mut SafeDirs,
    state: &State,
    root: pulpdist_format::NodeRef,
    changed: &std::collections::HashSet<&Path>,
    needed: &mut std::collections::HashSet<ChunkId>,
    sources: &mut HashMap<ChunkId, Source>,
) {
    let mut todo = vec![(PathBuf::new(), root.id)];
    while let Some((rel, id)) = todo.pop() {
        if needed.is_empty() {
            return;
        }
        let Some(node) = state.node(&id) else {
            continue;
        };
        let unchanged = !changed.contains(rel.as_path());
        for e in node.entries() {
            let path = rel.join(std::ffi::OsStr::from_bytes(e.name.as_bytes()));
            match &e.kind {
                EntryKind::Dir { node } => todo.push((path, node.id)),
                EntryKind::File { size, chunks } if unchanged => {
                    if !chunks.iter().any(|c| needed.contains(&c.id)) {
                        continue;
                    }
                    // Only through real directories of the mirror, never a symlink.
                    let on_disk = safe.ensure(&rel, false).is_ok()
                        && fs::symlink_metadata(dest.join(&path)).is_ok_and(|md| {
                            md.is_file() && md.len() == *size && to_mtime(&md) == e.mtime
                        });
                    if !on_disk {
                        continue;
                    }
                    let mut offset = 0u64;
                    for c in chunks {
                        if needed.remove(&c.id) {
                            sources.insert(
                                c.id,
                                Source::Local {
                                    path: path.clone(),
                                    offset,
                                },
                            );
                        }
                        offset += u64::from(c.loc.raw_len);
                    }
                }
                _ => {}
            }
        }
    }
}
