//! Phase 5, the deltas: a delta pack from each of the last few distinct trees (the
//! previous head's root, and those its deltas name) to this one, written before the head
//! that lists them, on the chunking threads' budget. An unchanged tree writes nothing and
//! keeps the previous head's deltas.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use pulpdist_format::delta::DeltaInfo;
use pulpdist_format::{Head, NodeId, NodeRef, PackId, PackInfo};

use super::{PublishOptions, Run};
use crate::delta::{DeltaReport, DeltaSettings, Nodes};
use crate::error::PublishError;

/// The deltas the head lists, what each cost, and their bytes.
pub(super) type Written = (Vec<DeltaInfo>, Vec<DeltaReport>, u64);

/// Writes the deltas of this version; `fresh` holds the nodes it wrote.
pub(super) fn write(
    run: &Run<'_>,
    prev: Option<&Head>,
    fresh: HashMap<NodeId, Vec<u8>>,
    root: &NodeRef,
    data_packs: &[PackInfo],
) -> Result<Written, PublishError> {
    let nodes = Nodes {
        fresh,
        store: run.store,
    };
    let (opts, tmp) = (run.opts, run.tmp_dir.as_path());
    run.workers
        .run(|| write_deltas(opts, prev, &nodes, root, data_packs, tmp))
}

/// Writes the delta packs of this version from each of the last `opts.deltas` distinct
/// trees (their roots: the previous head's, and those its deltas name). An unchanged tree
/// writes nothing and keeps the previous head's deltas.
#[allow(clippy::too_many_arguments)]
fn write_deltas(
    opts: &PublishOptions,
    prev: Option<&Head>,
    nodes: &Nodes<'_>,
    root: &NodeRef,
    data_packs: &[PackInfo],
    tmp_dir: &Path,
) -> Result<Written, PublishError> {
    let (Some(prev), true) = (prev, opts.deltas > 0) else {
        return Ok((Vec::new(), Vec::new(), 0));
    };
    // Deltas of a head written by another publisher build are informational: unreadable
    // ones are dropped, never a reason to fail.
    let prev_deltas = prev.deltas().unwrap_or_default();
    if prev.root.id == root.id {
        // Nothing changed: the previous deltas rebuild this very root.
        return Ok((prev_deltas, Vec::new(), 0));
    }
    // The last K distinct trees (a refresh publish that changed nothing is not a new one):
    // a site is matched by the root it holds, not by its version number.
    let mut froms = vec![(prev.version, prev.root)];
    froms.extend(prev_deltas.iter().map(|d| (d.from_version, d.from_root)));
    froms.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut seen = HashSet::new();
    froms.retain(|(_, r)| seen.insert(r.id));
    froms.truncate(opts.deltas);
    let (mut infos, mut reports, mut bytes) = (Vec::new(), Vec::new(), 0);
    for (i, from) in froms.into_iter().enumerate() {
        // The newest source (most sites) at the full level, older ones cheaper.
        let settings = DeltaSettings {
            level: match i {
                0 => opts.delta_level,
                _ => opts.old_delta_level.min(opts.delta_level),
            },
            part_size: opts.delta_pack_size,
        };
        // Packs written since that version: chunks in them are new to a site there.
        let new_packs: HashSet<PackId> = data_packs
            .iter()
            .map(|p| p.id)
            .chain(
                prev.recent
                    .iter()
                    .filter(|v| v.version > from.0)
                    .flat_map(|v| v.packs.iter().map(|p| p.id)),
            )
            .collect();
        let written = crate::delta::write_delta(
            nodes,
            &opts.source,
            root,
            from,
            &new_packs,
            settings,
            tmp_dir.to_path_buf(),
        )?;
        let (parts, mut rep) = written;
        rep.level = settings.level;
        bytes += parts.iter().map(|p| p.size).sum::<u64>();
        infos.extend(parts);
        if rep.size > 0 || !rep.skipped.is_empty() {
            reports.push(rep);
        }
    }
    Ok((infos, reports, bytes))
}

#[cfg(test)]
mod tests {
    use super::super::testkit;

    #[test]
    fn a_change_writes_a_delta_and_an_unchanged_tree_keeps_the_last_one() {
        let site = testkit::site();
        site.publish();
        assert!(site.head().deltas().expect("decodes").is_empty());
        std::fs::write(site.src().join("a.txt"), b"alpha, changed").expect("edit");
        site.publish();
        let deltas = site.head().deltas().expect("decodes");
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].from_version, 1);
        let again = site.publish();
        assert!(again.deltas.is_empty());
        assert_eq!(site.head().deltas().expect("decodes"), deltas);
    }

    /// The delta from the previous version at the full level, older ones at the old
    /// level (never above the full one).
    #[test]
    fn deltas_from_older_versions_are_written_at_the_old_level() {
        for (level, old, expected) in [(19, 9, [19, 9, 9]), (5, 9, [5, 5, 5])] {
            let mut site = testkit::site();
            site.opts.deltas = 3;
            site.opts.delta_level = level;
            site.opts.old_delta_level = old;
            for v in 0..4 {
                std::fs::write(site.src().join("a.txt"), format!("alpha {v}")).expect("edit");
                site.publish();
            }
            std::fs::write(site.src().join("a.txt"), b"alpha, last").expect("edit");
            let r = site.publish();
            let levels: Vec<(u64, i32)> =
                r.deltas.iter().map(|d| (d.from_version, d.level)).collect();
            assert_eq!(
                levels,
                [(4, expected[0]), (3, expected[1]), (2, expected[2])]
            );
        }
    }
}
