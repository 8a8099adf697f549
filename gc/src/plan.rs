//! Phase 3, the plan: from the packs the store lists, the condemned list and what the kept
//! versions reach, which objects go now, which are condemned, and the list to write.
//!
//! - A pack the kept versions reach stays; if it was condemned, it is taken off the list
//!   (a publish named it again).
//! - An unreached pack condemned at least the grace period ago is removed.
//! - An unreached pack not yet condemned is condemned now, unless it is younger than the
//!   grace period (a publish may be writing the version that names it) and not one this
//!   run's rewrite emptied.
//! - The archived heads of the versions not kept are removed.

use std::collections::BTreeMap;

use pulpdist_format::{history_key, Condemned, PackId};
use pulpdist_publish::ListedPack;

use crate::reach::Reach;
use crate::survey::Tree;

/// An object a gc removes or condemns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Object {
    /// Its key in the store (`packs/<id>.pack`, `history/<tree>/<version>`).
    pub key: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What a run does.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Archived heads removed: tree, version, size.
    pub(crate) history: Vec<(String, u64, u64)>,
    /// Packs removed (condemned a grace period ago, still unreached).
    pub(crate) remove: Vec<ListedPack>,
    /// Packs condemned by this run.
    pub(crate) condemn: Vec<ListedPack>,
    /// Condemned packs a kept version reaches again.
    pub(crate) rescued: u64,
    /// Condemned packs whose grace period has not passed.
    pub(crate) waiting: u64,
    /// Unreached packs younger than the grace period.
    pub(crate) young: u64,
    /// The condemned list while the removals run (the packs removed still on it, so a gc
    /// killed midway removes them next time).
    pub(crate) during: Condemned,
    /// The condemned list after.
    pub(crate) after: Condemned,
}

/// The times a plan is made with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Times {
    /// The run's start: what is removed, and which packs are young, is decided as of it.
    pub(crate) now: i64,
    /// The grace period, in seconds.
    pub(crate) grace: u64,
    /// The time a pack condemned by this run is listed with (the end of a rewrite, if the
    /// run rewrote packs; else `now`).
    pub(crate) condemn_at: i64,
}

/// Decides what a run does.
pub(crate) fn plan(
    trees: &[Tree],
    packs: &[ListedPack],
    condemned: &Condemned,
    reach: &Reach,
    times: Times,
    emptied: &std::collections::HashSet<PackId>,
) -> Plan {
    let mut p = Plan::default();
    let Times {
        now,
        grace,
        condemn_at,
    } = times;
    let since = now.saturating_sub(i64::try_from(grace).unwrap_or(i64::MAX));
    let listed: BTreeMap<PackId, &ListedPack> = packs.iter().map(|l| (l.id, l)).collect();
    p.rescued = condemned
        .packs
        .keys()
        .filter(|id| reach.live.contains_key(id) && listed.contains_key(id))
        .count() as u64;
    for l in packs.iter().filter(|l| !reach.live.contains_key(&l.id)) {
        match condemned.packs.get(&l.id) {
            Some(&at) if at <= since => {
                p.remove.push(*l);
                p.during.packs.insert(l.id, at);
            }
            Some(&at) => {
                p.waiting += 1;
                p.during.packs.insert(l.id, at);
                p.after.packs.insert(l.id, at);
            }
            None if l.modified <= since || emptied.contains(&l.id) => {
                p.condemn.push(*l);
                p.during.packs.insert(l.id, condemn_at);
                p.after.packs.insert(l.id, condemn_at);
            }
            None => p.young += 1,
        }
    }
    for t in trees {
        for (v, x) in &t.versions {
            if x.archived && !t.retained.contains(v) {
                p.history.push((t.name.clone(), *v, x.size));
            }
        }
    }
    p
}

impl Plan {
    /// The objects removed, archived heads first, in the order removed.
    pub(crate) fn removed(&self) -> Vec<Object> {
        let history = self.history.iter().map(|(t, v, size)| Object {
            key: history_key(t, *v),
            bytes: *size,
        });
        history.chain(objects(&self.remove)).collect()
    }

    /// The packs condemned.
    pub(crate) fn condemned(&self) -> Vec<Object> {
        objects(&self.condemn).collect()
    }
}

fn objects(packs: &[ListedPack]) -> impl Iterator<Item = Object> + '_ {
    packs.iter().map(|l| Object {
        key: l.id.object_key(),
        bytes: l.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8, modified: i64) -> ListedPack {
        ListedPack {
            id: PackId([n; 32]),
            size: u64::from(n) * 100,
            modified,
        }
    }

    #[test]
    fn reached_packs_stay_old_unreached_ones_are_condemned_then_removed() {
        // 1 reached; 2 unreached, condemned long ago; 3 unreached, condemned just now;
        // 4 unreached, old, not condemned; 5 unreached and young; 6 reached, condemned.
        let packs = [
            pack(1, 0),
            pack(2, 0),
            pack(3, 0),
            pack(4, 0),
            pack(5, 990),
            pack(6, 0),
        ];
        let mut reach = Reach::default();
        reach.live.insert(PackId([1; 32]), 10);
        reach.live.insert(PackId([6; 32]), 10);
        let mut condemned = Condemned::default();
        condemned.packs.insert(PackId([2; 32]), 100);
        condemned.packs.insert(PackId([3; 32]), 950);
        condemned.packs.insert(PackId([6; 32]), 100);
        // A pack on the list that the store no longer has is dropped from it.
        condemned.packs.insert(PackId([9; 32]), 100);
        // Condemned as of a later time (the end of a rewrite); removals as of 1000.
        let times = Times {
            now: 1000,
            grace: 100,
            condemn_at: 1010,
        };
        let p = plan(&[], &packs, &condemned, &reach, times, &Default::default());
        assert_eq!(p.remove, [pack(2, 0)]);
        assert_eq!(p.condemn, [pack(4, 0)]);
        assert_eq!((p.rescued, p.waiting, p.young), (1, 1, 1));
        let ids = |c: &Condemned| c.packs.keys().map(|k| k.0[0]).collect::<Vec<_>>();
        assert_eq!(ids(&p.during), [2, 3, 4]);
        assert_eq!(ids(&p.after), [3, 4]);
        assert_eq!(p.after.packs[&PackId([4; 32])], 1010);
        assert_eq!(
            p.removed(),
            [Object {
                key: PackId([2; 32]).object_key(),
                bytes: 200
            }]
        );
    }
}
