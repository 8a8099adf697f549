//! Phase 3, the plan: each changed directory as it is on disk now (never through a
//! symlink), set beside its old and new index node, gives the pure [`Planner`] what to
//! write, rename and delete; then where each chunk the new files need is found without the
//! store: files that still match their old or new entry, unknown files rehashed, the staging
//! area, the files the delta rebuilds, and files of unchanged directories (a moved file, an
//! ISO image built from the tree's own packages). Only the mirror is read.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pulpdist_chunker::Chunker;
use pulpdist_format::{ChunkId, ChunkRef, EntryKind, Mtime, Node};

use super::changes::Changes;
use super::head::Accepted;
use super::plan::{DirView, Observed, Plan, PlanSettings, Planner, Source};
use super::walk::DirChange;
use super::{SyncOptions, SyncReport};
use crate::error::{IoContext, SyncError};
use crate::fsutil::SafeDirs;
use crate::state::State;
use crate::store::StoreReader;

/// A plan with the reference (pack and offset) of every chunk it may fetch.
pub(super) struct Planned {
    /// What to fetch, write, rename and delete.
    pub(super) plan: Plan,
    /// Every chunk the new files name, for a late fetch of one whose local copy changed.
    pub(super) refs: HashMap<ChunkId, ChunkRef>,
}

/// Plans the changed directories; counts what the plan reuses and changes in `report`.
pub(super) fn survey(
    store: &dyn StoreReader,
    state: &State,
    opts: &SyncOptions,
    acc: &Accepted,
    changes: Changes,
    report: &mut SyncReport,
) -> Result<Planned, SyncError> {
    let mut safe = SafeDirs::new(&opts.dest);
    let chunker = Chunker::new(acc.head.params).map_err(|e| SyncError::Format {
        object: format!("tree '{}' version {}", acc.head.tree, acc.head.version),
        source: pulpdist_format::FormatError::Invalid {
            what: "chunk parameters",
            reason: e.to_string(),
        },
    })?;
    let Observation {
        planner,
        looked,
        rehashed,
    } = observe(state, opts, &changes.dirs, &chunker, &mut safe)?;
    report.files_rehashed = rehashed.len() as u64;
    let mut sources = local_sources(
        &opts.dest,
        state,
        &changes.dirs,
        &looked,
        &planner,
        rehashed,
    )?;
    // The delta first: it brings the chunks of the files it carries without touching the
    // rest of the tree.
    if let Some(fetched) = &changes.delta {
        use_delta(
            state,
            opts,
            fetched,
            &changes.dirs,
            &planner,
            &mut sources,
            report,
        );
    }
    drop(changes.delta);
    // Chunks still missing may sit in files of directories that did not change.
    if let Some(a) = &acc.applied {
        let changed: HashSet<&Path> = changes.dirs.iter().map(|c| c.rel.as_path()).collect();
        let mut needed: HashSet<ChunkId> = planner
            .wanted()
            .keys()
            .filter(|id| !sources.contains_key(*id))
            .copied()
            .collect();
        if !needed.is_empty() {
            let dest = &opts.dest;
            find_in_unchanged(
                dest,
                &mut safe,
                state,
                a.root,
                &changed,
                &mut needed,
                &mut sources,
            );
        }
    }
    // The delta's further packs (a large delta is several), and a delta left for the plan
    // when the chunks still missing come to more bytes than all its packs (a store whose
    // other trees already hold a version's chunks writes small packs for it, which says
    // nothing of what this mirror lacks): each fetched one at a time (up to 256 MiB in
    // memory), only while the missing chunks come to more bytes than it (their bytes are
    // the most the pack could save), and no more once a pack fetched now saved less than
    // half its size (the mirror had what it carries; the rest likely too). A pack a killed
    // sync kept cost nothing, and saved nothing if that sync staged what it carries.
    let spare_size: u64 = changes.spare.iter().map(|d| d.size).sum();
    let spare = match lacking(&planner, &sources) > spare_size {
        true => changes.spare,
        false => Vec::new(),
    };
    let by_plan = !spare.is_empty();
    for info in changes.rest.into_iter().chain(spare) {
        let before = lacking(&planner, &sources);
        if before <= info.size {
            continue;
        }
        let Some((fetched, now)) = super::changes::get_delta(store, state, info, report) else {
            continue;
        };
        report.delta_by_plan |= by_plan;
        use_delta(
            state,
            opts,
            &fetched,
            &changes.dirs,
            &planner,
            &mut sources,
            report,
        );
        pulpdist_failpoint::hit("sync.delta_part");
        if now && before - lacking(&planner, &sources) < info.size / 2 {
            break;
        }
    }
    let (plan, refs) = planner.finish(&sources, &acc.pack_sizes());
    let (rn, rb) = plan.reused();
    report.chunks_reused = rn;
    report.bytes_reused = rb;
    report.files = plan.files.len() as u64;
    report.symlinks = plan.symlinks.len() as u64;
    report.deleted = plan.deletes.len() as u64;
    Ok(Planned { plan, refs })
}

/// The changed directories as listed on disk, given to the planner.
struct Observation {
    planner: Planner,
    /// Per changed directory: whether the listing looked into it (it exists, and not
    /// through a symlink).
    looked: Vec<bool>,
    /// Files matching neither entry, with the chunks they hold.
    rehashed: Vec<(PathBuf, Vec<(ChunkId, u32)>)>,
}

/// Lists each changed directory, one at a time: memory follows the change, not the size
/// of the changed directories.
fn observe(
    state: &State,
    opts: &SyncOptions,
    dirs: &[DirChange],
    chunker: &Chunker,
    safe: &mut SafeDirs,
) -> Result<Observation, SyncError> {
    let mut planner = Planner::new(PlanSettings {
        metadata_patterns: opts.metadata_patterns.clone(),
        max_gap: opts.max_gap,
        whole_ratio: opts.whole_ratio,
        special_modes: opts.special_modes,
    });
    let mut rehashed = Vec::new();
    let mut looked = Vec::with_capacity(dirs.len());
    for c in dirs {
        let new = state.node(&c.new).ok_or_else(|| state.lost_node(&c.new))?;
        if new.has_composites() {
            // Resolved in phase 2 (`walk::resolve_composites`); never planned unresolved.
            return Err(SyncError::Internal(format!(
                "index node {} of '{}': composite files not resolved",
                c.new,
                c.rel.display()
            )));
        }
        let old = c.old.and_then(|id| state.node(&id));
        let observed = observe_dir(&opts.dest, safe, &c.rel)?;
        looked.push(!observed.is_empty());
        rehash_unknown(&opts.dest, c, &old, &new, &observed, chunker, &mut rehashed);
        planner.add_dir(&DirView {
            rel: c.rel.clone(),
            new: &new,
            old: old.as_ref(),
            local: &observed,
        });
    }
    Ok(Observation {
        planner,
        looked,
        rehashed,
    })
}

/// The stored bytes of the chunks the plan still lacks (not local, not staged).
fn lacking(planner: &Planner, sources: &HashMap<ChunkId, Source>) -> u64 {
    planner
        .wanted()
        .iter()
        .filter(|(id, _)| !sources.contains_key(*id))
        .map(|(_, r)| u64::from(r.loc.stored_len))
        .sum()
}

/// Rebuilds the changed files one delta pack carries; records the chunks it staged as
/// sources (counts add up across a delta's packs).
fn use_delta(
    state: &State,
    opts: &SyncOptions,
    fetched: &super::delta::Fetched,
    dirs: &[super::walk::DirChange],
    planner: &Planner,
    sources: &mut HashMap<ChunkId, Source>,
    report: &mut SyncReport,
) {
    let mut needed: HashSet<ChunkId> = std::collections::HashSet::new();
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
    match super::delta::apply_files(state, &opts.dest, fetched, dirs, wanted, &mut needed) {
        Ok(applied) => {
            report.delta_files += applied.files;
            report.delta_failed += applied.failed;
            report.chunks_from_delta += applied.chunks;
            for id in before.difference(&needed) {
                sources.insert(*id, Source::Staged);
            }
        }
        Err(e) => _ = report.delta_error.get_or_insert(state.named(e).to_string()),
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
    // Only those the files need (a large first sync in waves stages every wave's chunks).
    for id in state.staged_of(wanted.keys())? {
        sources.insert(id, Source::Staged);
    }
    Ok(sources)
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
    changed: &HashSet<&Path>,
    needed: &mut HashSet<ChunkId>,
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

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;

    #[test]
    fn a_listing_sees_each_kind_and_never_looks_through_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path();
        fs::create_dir(m.join("d")).expect("dir");
        fs::write(m.join("f"), b"abc").expect("file");
        std::os::unix::fs::symlink("d", m.join("l")).expect("symlink");
        let _socket = std::os::unix::net::UnixListener::bind(m.join("s")).expect("socket");
        let mut safe = SafeDirs::new(m);
        let seen = observe_dir(m, &mut safe, Path::new("")).expect("listed");
        assert!(matches!(
            seen[&b"f".to_vec()],
            Observed::File { size: 3, .. }
        ));
        assert!(matches!(seen[&b"d".to_vec()], Observed::Dir { .. }));
        assert!(
            matches!(&seen[&b"l".to_vec()], Observed::Symlink { target, .. } if target == b"d")
        );
        assert_eq!(seen[&b"s".to_vec()], Observed::Other);
        fs::write(m.join("d/inside"), b"x").expect("file");
        let through = observe_dir(m, &mut safe, Path::new("l")).expect("listed");
        assert!(through.is_empty(), "{through:?}");
    }

    #[test]
    fn a_file_copied_from_an_unchanged_directory_is_read_from_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        opts.dry_run = true;
        // Version 1: a/m and an empty c/; version 2 adds c/n with a/m's content.
        let a = testkit::cached(&state, vec![testkit::file("m", b"moved", 0)]);
        let c1 = testkit::cached(&state, vec![]);
        let c2 = testkit::cached(&state, vec![testkit::file("n", b"moved", 0)]);
        let old = testkit::cached(&state, vec![testkit::dir("a", &a), testkit::dir("c", &c1)]);
        let new = testkit::cached(&state, vec![testkit::dir("a", &a), testkit::dir("c", &c2)]);
        let m = opts.dest.clone();
        fs::create_dir_all(m.join("c")).expect("c");
        fs::create_dir_all(m.join("a")).expect("a");
        fs::write(m.join("a/m"), b"moved").expect("a/m");
        let when = filetime::FileTime::from_unix_time(100, 0);
        filetime::set_file_mtime(m.join("a/m"), when).expect("mtime");
        let acc = Accepted {
            bytes: Vec::new(),
            etag: None,
            head: testkit::head(2, &new),
            applied: Some(testkit::head(1, &old)),
            full: false,
            served_by: String::new(),
        };
        let mut report = SyncReport::default();
        let store = testkit::MemStore::default();
        let changes =
            super::super::changes::find(&store, &state, &opts, &acc, &mut report).expect("walked");
        let planned = survey(&store, &state, &opts, &acc, changes, &mut report).expect("planned");
        let f = &planned.plan.files[0];
        assert_eq!(f.path, Path::new("c/n"));
        let from_a = Source::Local {
            path: "a/m".into(),
            offset: 0,
        };
        assert_eq!(f.chunks[0].2, from_a);
        assert!(planned.plan.fetches.is_empty());
        assert_eq!(
            (report.files, report.chunks_reused, report.bytes_reused),
            (1, 1, 5)
        );
        // Changed behind the sync's back (another mtime): fetched instead.
        filetime::set_file_mtime(m.join("a/m"), filetime::FileTime::from_unix_time(101, 0))
            .expect("mtime");
        let changes =
            super::super::changes::find(&store, &state, &opts, &acc, &mut report).expect("walked");
        let planned = survey(&store, &state, &opts, &acc, changes, &mut report).expect("planned");
        assert_eq!(planned.plan.fetches.len(), 1);
    }
}
