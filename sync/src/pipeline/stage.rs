//! Phase 4, the staged chunks: every chunk the plan does not find in the mirror, fetched
//! and verified into the client's staging area, after the local chunks that live in files
//! about to be replaced are saved there. Every fetch runs even if one fails, so what could
//! be verified is kept for the next try; the store's gaps (missing or damaged objects) come
//! from the rsync fallback when there is one, each file checked against the signed index.
//! Nothing in the mirror changes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use pulpdist_format::{ChunkId, ChunkRef, PackId, VerifiedChunk};

use super::plan::{FetchOp, Plan};
use super::survey::Planned;
use super::walk::slice;
use super::SyncOptions;
use crate::error::{IoContext, SyncError};
use crate::state::State;
use crate::store::{first_ok, StoreReader};

/// What [`stage`] brought.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// Chunks fetched from the store and verified.
    pub(super) chunks_fetched: u64,
    /// Files that came from the rsync fallback.
    pub(super) rsync_files: u64,
    /// Bytes rsync received for them.
    pub(super) rsync_bytes: u64,
}

/// Steps 1 and 2 of applying a plan: the local chunks that live in files about to be
/// replaced saved, then every chunk the plan lacks fetched and verified; a pack of a store
/// where ranges are cheap read at most `window` bytes at a time ([`WINDOW`]).
pub(super) fn stage(
    store: &dyn StoreReader,
    state: &State,
    opts: &SyncOptions,
    planned: &Planned,
    window: u64,
) -> Result<Staged, SyncError> {
    let Planned { plan, refs } = planned;
    let mut out = Staged::default();
    // 1. Save local chunks that live in files about to be replaced.
    let mut late: Vec<ChunkRef> = Vec::new();
    for (id, len, path, offset) in &plan.stage_first {
        match read_local(&opts.dest, path, *offset, *len, *id) {
            Ok(c) => state.stage(&c)?,
            Err(_) => late.extend(refs.get(id).copied()),
        }
        pulpdist_failpoint::hit("sync.stage_first");
    }
    // 2. Fetch and verify everything missing, into staging.
    let results = fetch_all(store, state, plan, opts, window)?;
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
        (out.rsync_files, out.rsync_bytes) = fill_gaps(url, state, plan, &gaps)?;
    }
    out.chunks_fetched = fetched + fetch_loose(store, state, &late, opts.max_gap)?;
    Ok(out)
}

/// Runs every fetch of the plan on `connections` threads; each one's outcome, in order.
fn fetch_all(
    store: &dyn StoreReader,
    state: &State,
    plan: &Plan,
    opts: &SyncOptions,
    window: u64,
) -> Result<Vec<Result<u64, SyncError>>, SyncError> {
    let bytes = |f: &FetchOp| match f.whole {
        true => f.size,
        false => f.ranges.iter().map(|r| r.end - r.start).sum(),
    };
    let progress = &opts.progress;
    progress.start(
        "fetch",
        plan.fetches.len() as u64,
        plan.fetches.iter().map(bytes).sum(),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.connections.max(1))
        .thread_name(|i| format!("pulpdist-fetch-{i}"))
        .build()
        .map_err(|e| SyncError::Threads(e.to_string()))?;
    let results = pool.install(|| {
        plan.fetches
            .par_iter()
            .map(|f| {
                let r = first_ok(store, |s| fetch_op(s, state, f, window));
                progress.advance(1, bytes(f));
                r
            })
            .collect()
    });
    progress.finish();
    Ok(results)
}

/// One chunk of a mirror file, read and verified.
pub(super) fn read_local(
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

/// The most bytes of a pack one fetch holds at once when ranges are cheap (a directory
/// store): a whole pack is read in windows this size, so a first sync with many fetches in
/// flight holds a few windows rather than a few packs.
pub(super) const WINDOW: u64 = 4 << 20;

/// The window of a large first sync in waves ([`super::waves`]): each of its connections
/// holds one, and its memory is meant to follow the wave.
pub(super) const WAVE_WINDOW: u64 = 1 << 20;

/// Executes one fetch: the whole pack or its ranges (in windows, where ranges are cheap
/// and a read would be larger); every chunk verified, then staged.
fn fetch_op(
    store: &dyn StoreReader,
    state: &State,
    op: &FetchOp,
    window: u64,
) -> Result<u64, SyncError> {
    let spans = match op.whole {
        true => op.size,
        false => op.ranges.iter().map(|r| r.end - r.start).max().unwrap_or(0),
    };
    if spans > window && store.cheap_ranges() && op.chunks.len() > 1 {
        let mut chunks = op.chunks.clone();
        chunks.sort_by_key(|c| c.loc.offset);
        let mut n = 0;
        let mut rest = &chunks[..];
        while let Some(first) = rest.first() {
            let start = first.loc.offset;
            // The chunks that end within a window of the first (at least the first).
            let take = rest
                .iter()
                .position(|c| c.loc.range().end.saturating_sub(start) > window)
                .unwrap_or(rest.len())
                .max(1);
            let (now, later) = rest.split_at(take);
            let end = now.iter().map(|c| c.loc.range().end).max().unwrap_or(start);
            let part = FetchOp {
                pack: op.pack,
                whole: false,
                size: 0,
                ranges: std::iter::once(start..end).collect(),
                chunks: now.to_vec(),
            };
            n += fetch_op(store, state, &part, window)?;
            rest = later;
        }
        return Ok(n);
    }
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
pub(super) fn fetch_loose(
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
        let op = FetchOp {
            pack,
            whole: false,
            size: 0,
            ranges,
            chunks,
        };
        n += first_ok(store, |s| fetch_op(s, state, &op, WINDOW))?;
    }
    Ok(n)
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
    plan: &Plan,
    gaps: &[&FetchOp],
) -> Result<(u64, u64), SyncError> {
    let wanted: HashSet<ChunkId> = gaps
        .iter()
        .flat_map(|op| op.chunks.iter().map(|c| c.id))
        .collect();
    let staged: HashSet<ChunkId> = state.staged_of(wanted.iter())?.into_iter().collect();
    let missing: HashSet<ChunkId> = wanted.difference(&staged).copied().collect();
    let files: Vec<&super::plan::FileOp> = plan
        .files
        .iter()
        .filter(|f| f.chunks.iter().any(|(id, _, _)| missing.contains(id)))
        .collect();
    let scratch = state.dir().join("fallback");
    let _ = fs::remove_dir_all(&scratch);
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let stats = pulpdist_rsync::fetch_files(url, &paths, &scratch)?;
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

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, MemStore};
    use super::*;
    use pulpdist_format::{Codec, Location};

    #[test]
    fn a_large_whole_pack_is_read_in_windows_where_ranges_are_cheap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = testkit::state(dir.path());
        // Three chunks of 3 MiB, stored raw one after the other: a 9 MiB pack.
        let pieces: Vec<Vec<u8>> = (0..3u8)
            .map(|i| (0..3u32 << 20).map(|j| (j % 251) as u8 ^ i).collect())
            .collect();
        let mut pack = Vec::new();
        let mut chunks = Vec::new();
        for p in &pieces {
            chunks.push(ChunkRef {
                id: ChunkId::of(p),
                loc: Location {
                    pack: PackId([2; 32]),
                    offset: pack.len() as u64,
                    stored_len: p.len() as u32,
                    raw_len: p.len() as u32,
                    codec: Codec::Raw,
                },
            });
            pack.extend_from_slice(p);
        }
        let op = FetchOp {
            pack: PackId([2; 32]),
            whole: true,
            size: pack.len() as u64,
            ranges: Vec::new(),
            chunks,
        };
        // The same chunks as one coalesced range.
        let ranged = FetchOp {
            whole: false,
            size: 0,
            ranges: std::iter::once(0..9 << 20).collect(),
            ..op.clone()
        };
        for (op, cheap) in [(&op, true), (&op, false), (&ranged, true), (&ranged, false)] {
            let mut store = MemStore {
                cheap,
                ..MemStore::default()
            };
            store.packs.insert(PackId([2; 32]), pack.clone());
            assert_eq!(fetch_op(&store, &state, op, WINDOW).expect("fetched"), 3);
            let reads = store.reads.lock().expect("reads").clone();
            match cheap {
                // A window holds whole chunks, at most 4 MiB of them: one chunk each.
                true => assert_eq!(reads, vec![3 << 20; 3]),
                // Over a network: one request, as planned.
                false => assert_eq!(reads, vec![9 << 20]),
            }
        }
        for p in &pieces {
            assert_eq!(
                state.read_staged(&ChunkId::of(p)).expect("staged").data(),
                &p[..]
            );
        }
    }

    /// A plan fetching "hello" and "world", stored raw at 0 and 5 of pack `[1; 32]`.
    fn planned() -> (Planned, Vec<ChunkId>) {
        let refs: Vec<ChunkRef> = [(b"hello", 0), (b"world", 5)]
            .iter()
            .map(|(data, offset)| ChunkRef {
                id: ChunkId::of(*data),
                loc: Location {
                    pack: PackId([1; 32]),
                    offset: *offset,
                    stored_len: 5,
                    raw_len: 5,
                    codec: Codec::Raw,
                },
            })
            .collect();
        let plan = Plan {
            fetches: vec![FetchOp {
                pack: PackId([1; 32]),
                whole: false,
                size: 10,
                ranges: std::iter::once(0..10).collect(),
                chunks: refs.clone(),
            }],
            ..Plan::default()
        };
        let ids = refs.iter().map(|r| r.id).collect();
        let refs = refs.into_iter().map(|r| (r.id, r)).collect();
        (Planned { plan, refs }, ids)
    }

    fn store(pack: &[u8]) -> MemStore {
        MemStore {
            packs: [(PackId([1; 32]), pack.to_vec())].into(),
            ..MemStore::default()
        }
    }

    #[test]
    fn fetched_chunks_are_verified_then_staged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let (planned, ids) = planned();
        let staged = stage(&store(b"helloworld"), &state, &opts, &planned, WINDOW).expect("staged");
        assert_eq!(staged.chunks_fetched, 2);
        let mut have = state.staged().expect("listed");
        have.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(have, want);
        assert_eq!(state.read_staged(&ids[1]).expect("read").data(), b"world");
    }

    #[test]
    fn a_tampered_or_missing_pack_stages_nothing_it_cannot_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let (planned, _) = planned();
        let e =
            stage(&store(b"helloWorld"), &state, &opts, &planned, WINDOW).expect_err("tampered");
        assert!(matches!(e, SyncError::Format { .. }), "{e}");
        assert!(is_gap(&e));
        // What verified before the damage is kept for the next try; nothing else.
        assert_eq!(state.staged().expect("listed"), [ChunkId::of(b"hello")]);
        let e = stage(&MemStore::default(), &state, &opts, &planned, WINDOW).expect_err("missing");
        assert!(matches!(e, SyncError::NotFound { .. }) && is_gap(&e), "{e}");
        let e = stage(&store(b"hello"), &state, &opts, &planned, WINDOW).expect_err("short");
        assert!(matches!(e, SyncError::Short { .. }) && is_gap(&e), "{e}");
    }

    #[test]
    fn a_chunk_one_store_lacks_or_damages_comes_from_the_next() {
        use crate::store::StoreList;
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let (planned, ids) = planned();
        for first in [store(b"helloWorld"), MemStore::default()] {
            state.clear_staging().expect("cleared");
            let list = StoreList::new(vec![Box::new(first), Box::new(store(b"helloworld"))])
                .expect("list");
            let staged = stage(&list, &state, &opts, &planned, WINDOW).expect("staged");
            assert_eq!(staged.chunks_fetched, 2);
            assert_eq!(state.read_staged(&ids[1]).expect("read").data(), b"world");
            let used = list.per_store();
            assert_eq!((used[0].fell_through, used[1].requests), (1, 1), "{used:?}");
            assert_eq!(used[1].bytes, 10);
            assert!(used[0].last_error.is_some());
        }
        // Every store wrong: the last one's error.
        let list = StoreList::new(vec![
            Box::new(store(b"helloWorld")),
            Box::new(MemStore::default()),
        ])
        .expect("list");
        state.clear_staging().expect("cleared");
        let e = stage(&list, &state, &opts, &planned, WINDOW).expect_err("no store has it");
        assert!(matches!(e, SyncError::NotFound { .. }), "{e}");
    }

    #[test]
    fn only_missing_or_damaged_objects_are_gaps_for_the_fallback() {
        let http = |temporary| SyncError::Http {
            url: "u".into(),
            status: Some(500),
            detail: "d".into(),
            temporary,
        };
        assert!(is_gap(&http(false)));
        assert!(!is_gap(&http(true)));
        assert!(!is_gap(&SyncError::Usage("u".into())));
    }

    #[test]
    fn a_local_chunk_is_read_only_when_it_still_has_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("f"), b"xxhello").expect("file");
        let id = ChunkId::of(b"hello");
        let c = read_local(dir.path(), Path::new("f"), 2, 5, id).expect("read");
        assert_eq!(c.data(), b"hello");
        assert!(read_local(dir.path(), Path::new("f"), 1, 5, id).is_err());
        std::os::unix::fs::symlink("f", dir.path().join("l")).expect("symlink");
        assert!(read_local(dir.path(), Path::new("l"), 2, 5, id).is_err());
    }
}
