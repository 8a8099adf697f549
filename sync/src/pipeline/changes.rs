//! Phase 2, the changed directories: the index nodes the new head reaches that the mirror's
//! version lacks, walked from the root only into directories whose node id changed. A delta
//! pack from the applied version brings the new nodes in one request when it is smaller than
//! what the versions since added (else it is left to the plan, which fetches it when the
//! chunks still missing come to more: see `survey`); one version (or a few) behind, their index packs are
//! fetched whole instead of level by level. A directory on the way that is a symlink now, or
//! an unchanged one that is gone from disk, makes the walk cover the whole tree.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use pulpdist_format::{EntryKind, PackKind};

use super::delta::Fetched;
use super::head::Accepted;
use super::walk::{changed_dirs, DirChange};
use super::{SyncOptions, SyncReport};
use crate::error::SyncError;
use crate::state::State;
use crate::store::StoreReader;
use pulpdist_format::delta::DeltaInfo;

/// The directories whose index node changed, and the delta that may rebuild their files.
pub(super) struct Changes {
    /// Each changed directory with its old and new node, parents first.
    pub(super) dirs: Vec<DirChange>,
    /// The delta from the applied version (its first pack), its nodes already in the node
    /// cache.
    pub(super) delta: Option<Fetched>,
    /// The delta's further packs (a large delta is written as several), fetched one at a
    /// time once the plan knows what it still lacks.
    pub(super) rest: Vec<DeltaInfo>,
    /// A delta from the applied version left for later (all its packs): it looked no
    /// smaller than the packs the versions since added, but those packs may not hold what
    /// the mirror lacks (their chunks may be in packs written for another tree of the
    /// store). The plan decides: it is fetched if the chunks the plan would fetch come to
    /// more.
    pub(super) spare: Vec<DeltaInfo>,
}

/// Walks the index from the accepted head; notes the delta's use in `report`.
pub(super) fn find(
    store: &dyn StoreReader,
    state: &State,
    opts: &SyncOptions,
    acc: &Accepted,
    report: &mut SyncReport,
) -> Result<Changes, SyncError> {
    let (delta, rest, spare) = match (&acc.applied, acc.full, opts.dry_run) {
        (Some(a), false, false) => match choose_delta(&acc.head, a) {
            Some((mut parts, true)) => {
                let first = parts.remove(0);
                let fetched = fetch_delta(store, state, first, a, report);
                // Without the first pack, the others are still worth their bytes.
                match fetched {
                    Some(f) => (Some(f), parts, Vec::new()),
                    None => (None, parts, Vec::new()),
                }
            }
            Some((parts, false)) => (None, Vec::new(), parts),
            None => (None, Vec::new(), Vec::new()),
        },
        _ => (None, Vec::new(), Vec::new()),
    };
    let mem_packs = match delta {
        None => index_packs(store, acc)?,
        Some(_) => HashMap::new(),
    };
    let base_len = opts.dest.as_os_str().len();
    let walk = |old| {
        let (root, gap) = (acc.head.root, opts.max_gap);
        changed_dirs(store, state, old, root, &mem_packs, gap, base_len)
    };
    let old_root = acc.old_root();
    let mut dirs = walk(old_root)?;
    // A directory on the way to a changed one that is a symlink now (planted by someone
    // who can write the mirror) is replaced by a real directory, and what the unchanged
    // rest of it held must come back too: then every directory is checked, as with --full.
    // Likewise a directory the index keeps unchanged that is gone or not a directory on
    // disk: remade, it would stay empty (its node is not walked).
    if old_root.is_some()
        && (dirs.iter().any(|c| symlink_on_the_way(&opts.dest, &c.rel))
            || unchanged_dir_missing(&opts.dest, state, &dirs))
    {
        dirs = walk(None)?;
    }
    report.dirs_examined = dirs.len() as u64;
    let (root, gap) = (acc.head.root, opts.max_gap);
    super::walk::resolve_composites(store, state, root, &dirs, &mem_packs, gap)?;
    if let (Some(applied), false) = (&acc.applied, acc.full) {
        super::walk::resolve_old_composites(state, applied.root, &dirs);
    }
    Ok(Changes {
        dirs,
        delta,
        rest,
        spare,
    })
}

/// One version (or a few) behind: the index packs of the missing versions, which hold
/// every new node, when the head lists them all.
fn index_packs(
    store: &dyn StoreReader,
    acc: &Accepted,
) -> Result<HashMap<pulpdist_format::PackId, Vec<u8>>, SyncError> {
    let mut packs = HashMap::new();
    let (Some(a), false) = (&acc.applied, acc.full) else {
        return Ok(packs);
    };
    let listed: Vec<_> = acc
        .head
        .recent
        .iter()
        .filter(|v| v.version > a.version)
        .collect();
    if listed.len() as u64 != acc.head.version - a.version {
        return Ok(packs);
    }
    for p in listed
        .iter()
        .flat_map(|v| v.packs.iter())
        .filter(|p| p.kind == PackKind::Index)
    {
        match store.get_pack(&p.id, p.size) {
            Ok(bytes) => packs.insert(p.id, bytes),
            // A gc removed it (no kept version reaches any node in it any more): the
            // nodes still needed are in other packs, fetched one by one.
            Err(SyncError::NotFound { .. }) => {
                tracing::info!(pack = %p.id, "an index pack the head lists is gone (gc); fetching nodes one by one");
                return Ok(HashMap::new());
            }
            Err(e) => return Err(e),
        };
    }
    Ok(packs)
}

/// Whether a changed directory has a subdirectory the index keeps unchanged (so it is not
/// walked) that is not a real directory on disk.
fn unchanged_dir_missing(dest: &Path, state: &State, changes: &[DirChange]) -> bool {
    let walked: HashSet<&Path> = changes.iter().map(|c| c.rel.as_path()).collect();
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
pub(super) fn symlink_on_the_way(dest: &Path, rel: &Path) -> bool {
    let mut cur = dest.to_path_buf();
    rel.components().any(|c| {
        cur.push(c);
        fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// The head's delta from the tree the mirror holds (its root): its packs, in the order
/// listed, up to the first that does not fit in memory and at most
/// [`MAX_DELTA_PARTS`](pulpdist_format::delta::MAX_DELTA_PARTS); and whether it is worth
/// fetching before the walk: when it is smaller than the packs the versions since then
/// added (else the plan decides, see [`Changes::spare`]).
fn choose_delta(
    head: &pulpdist_format::Head,
    applied: &pulpdist_format::Head,
) -> Option<(Vec<DeltaInfo>, bool)> {
    use pulpdist_format::delta::{MAX_DELTA_PACK, MAX_DELTA_PARTS};
    let parts: Vec<DeltaInfo> = head
        .deltas()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.from_root.id == applied.root.id)
        .take(MAX_DELTA_PARTS)
        // Each held whole in memory, so bounded.
        .take_while(|d| d.size <= MAX_DELTA_PACK)
        .collect();
    if parts.is_empty() {
        return None;
    }
    let size: u64 = parts.iter().map(|d| d.size).sum();
    let added: u64 = head
        .recent
        .iter()
        .filter(|v| v.version > applied.version)
        .flat_map(|v| v.packs.iter())
        // Signed, but not bounded: summed without overflow.
        .fold(0u64, |sum, p| sum.saturating_add(p.size));
    Some((parts, added == 0 || size < added))
}

/// Fetches a delta pack (kept in the staging area: a sync killed after this fetch does not
/// fetch it again), and whether it came from the store now (not kept); a delta that cannot
/// be fetched is noted and skipped.
pub(super) fn get_delta(
    store: &dyn StoreReader,
    state: &State,
    info: DeltaInfo,
    report: &mut SyncReport,
) -> Option<(Fetched, bool)> {
    let keep = state
        .dir()
        .join("staging")
        .join(format!("delta-{}", info.pack.to_hex()));
    match super::delta::Fetched::get(store, info, Some(&keep)) {
        Ok((f, from_store)) => {
            if from_store {
                report.delta_bytes += info.size;
            }
            Some((f, from_store))
        }
        Err(e) => {
            report.delta_error.get_or_insert(state.named(e).to_string());
            None
        }
    }
}

/// Fetches the delta and rebuilds the index nodes it carries into the node cache.
fn fetch_delta(
    store: &dyn StoreReader,
    state: &State,
    info: pulpdist_format::delta::DeltaInfo,
    applied: &pulpdist_format::Head,
    report: &mut SyncReport,
) -> Option<Fetched> {
    let (fetched, _) = get_delta(store, state, info, report)?;
    pulpdist_failpoint::hit("sync.delta");
    match super::delta::apply_nodes(state, &fetched, &applied.root.id) {
        Ok(n) => report.delta_nodes = n,
        Err(e) => {
            report.delta_error.get_or_insert(state.named(e).to_string());
            return None;
        }
    }
    Some(fetched)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, MemStore};
    use super::*;
    use pulpdist_format::Node;

    /// Version 1 and 2 of a tree `{a/x, b/y}` where only `a/x` changed, in the node cache;
    /// the mirror holds `a/` and `b/`.
    fn two_versions(root: &Path, opts: &mut SyncOptions, state: &State) -> Accepted {
        let a1 = testkit::cached(state, vec![testkit::file("x", b"one", 0)]);
        let a2 = testkit::cached(state, vec![testkit::file("x", b"two", 3)]);
        let b = testkit::cached(state, vec![testkit::file("y", b"why", 6)]);
        let old: Node = testkit::cached(state, vec![testkit::dir("a", &a1), testkit::dir("b", &b)]);
        let new = testkit::cached(state, vec![testkit::dir("a", &a2), testkit::dir("b", &b)]);
        for d in ["a", "b"] {
            fs::create_dir_all(root.join("mirror").join(d)).expect("mirror dirs");
        }
        opts.dry_run = true;
        Accepted {
            bytes: Vec::new(),
            etag: None,
            head: testkit::head(2, &new),
            applied: Some(testkit::head(1, &old)),
            full: false,
            served_by: String::new(),
        }
    }

    fn walked(root: &Path, change: impl FnOnce(&Path)) -> Vec<String> {
        let (mut opts, state) = (testkit::options(root), testkit::state(root));
        let acc = two_versions(root, &mut opts, &state);
        change(&opts.dest);
        let mut report = SyncReport::default();
        let found = find(&MemStore::default(), &state, &opts, &acc, &mut report).expect("walked");
        assert_eq!(report.dirs_examined, found.dirs.len() as u64);
        found
            .dirs
            .iter()
            .map(|c| c.rel.display().to_string())
            .collect()
    }

    #[test]
    fn only_directories_whose_node_changed_are_walked() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(walked(dir.path(), |_| {}), ["", "a"]);
    }

    #[test]
    fn an_unchanged_directory_gone_from_disk_makes_the_walk_cover_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = walked(dir.path(), |m| fs::remove_dir(m.join("b")).expect("rmdir"));
        assert_eq!(dirs.len(), 3, "{dirs:?}");
    }

    #[test]
    fn a_symlink_on_the_way_to_a_changed_directory_makes_the_walk_cover_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = walked(dir.path(), |m| {
            fs::remove_dir(m.join("a")).expect("rmdir");
            std::os::unix::fs::symlink("/tmp", m.join("a")).expect("symlink");
        });
        assert_eq!(dirs.len(), 3, "{dirs:?}");
        assert!(symlink_on_the_way(
            &dir.path().join("mirror"),
            Path::new("a/x")
        ));
        assert!(!symlink_on_the_way(
            &dir.path().join("mirror"),
            Path::new("b/y")
        ));
    }
}
