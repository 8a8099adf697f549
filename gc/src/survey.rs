//! Phase 1, the versions: every tree's current head and archived heads, decoded (not
//! verified: a head reaches what it names whoever signed it, and keeping too much is the
//! safe side), and which of them the policy keeps.

use std::collections::{BTreeMap, BTreeSet};

use pulpdist_format::{history_key, Head, MAX_HEAD_SIZE};
use pulpdist_publish::Store;

use crate::error::GcError;
use crate::options::{GcOptions, Policy};

/// One version of a tree as the store holds it.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    /// Its heads that decode: for the current version the current head first, then the
    /// archived one if it differs (a tree published again from version 1, a rollback);
    /// empty when none does.
    pub(crate) heads: Vec<Head>,
    /// Whether `history/<tree>/<version>` exists.
    pub(crate) archived: bool,
    /// Why the archived head is unusable, if it is.
    pub(crate) damaged: Option<String>,
    /// The archived head's size in bytes.
    pub(crate) size: u64,
}

impl Version {
    /// The version's head (the current one for the current version).
    pub(crate) fn head(&self) -> Option<&Head> {
        self.heads.first()
    }
}

/// A tree's versions and which are kept.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    pub(crate) name: String,
    /// The version `heads/<tree>` holds.
    pub(crate) current: u64,
    pub(crate) versions: BTreeMap<u64, Version>,
    pub(crate) retained: BTreeSet<u64>,
}

/// Reads every tree's versions and applies the policy to the trees `opts` names.
pub(crate) fn survey(
    store: &dyn Store,
    opts: &GcOptions,
    now: i64,
    progress: &pulpdist_progress::Reporter,
) -> Result<Vec<Tree>, GcError> {
    let names = store.list_trees()?;
    let pinned = opts
        .policy
        .keep_versions
        .iter()
        .filter_map(|(t, _)| t.as_ref());
    for t in opts.trees.iter().chain(pinned) {
        if !names.contains(t) {
            return Err(GcError::NoSuchTree {
                store: store.describe(),
                tree: t.clone(),
            });
        }
    }
    progress.start("versions", names.len() as u64, 0);
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let (current, versions) = versions(store, &name)?;
        let selected = opts.trees.is_empty() || opts.trees.contains(&name);
        let retained = match selected {
            true => retain(&name, current, &versions, &opts.policy, now, opts.grace)?,
            false => versions.keys().copied().collect(),
        };
        for v in &retained {
            if versions.get(v).is_none_or(|x| x.heads.is_empty()) {
                let reason = versions
                    .get(v)
                    .and_then(|x| x.damaged.clone())
                    .unwrap_or_else(|| "not there".into());
                return Err(GcError::Unreadable {
                    object: format!("{}/{}", store.describe(), history_key(&name, *v)),
                    reason: format!("version {v} is kept, but {reason}"),
                });
            }
        }
        out.push(Tree {
            name,
            current,
            versions,
            retained,
        });
        progress.advance(1, 0);
    }
    progress.finish();
    Ok(out)
}

/// The current version of `tree`, and every version with its heads.
fn versions(store: &dyn Store, tree: &str) -> Result<(u64, BTreeMap<u64, Version>), GcError> {
    let mut out = BTreeMap::new();
    let key = format!("heads/{tree}");
    let unreadable = |key: &str, reason: String| GcError::Unreadable {
        object: format!("{}/{key}", store.describe()),
        reason,
    };
    // A tree's current head must decode: a gc cannot know what it reaches otherwise.
    let bytes = store
        .read_object(&key, MAX_HEAD_SIZE)?
        .ok_or_else(|| unreadable(&key, "gone while listed".into()))?;
    let current = decode(&bytes, tree, None).map_err(|r| unreadable(&key, r))?;
    for v in store.list_history(tree)? {
        let key = history_key(tree, v);
        let (decoded, size) = match store.read_object(&key, MAX_HEAD_SIZE)? {
            Some(bytes) => (decode(&bytes, tree, Some(v)), bytes.len() as u64),
            None => (Err("gone while listed".into()), 0),
        };
        let (heads, damaged) = match decoded {
            Ok(h) => (vec![h], None),
            Err(reason) => (Vec::new(), Some(reason)),
        };
        out.insert(
            v,
            Version {
                heads,
                archived: true,
                damaged,
                size,
            },
        );
    }
    let version = current.version;
    let entry = out.entry(version).or_insert(Version {
        heads: Vec::new(),
        archived: false,
        damaged: None,
        size: 0,
    });
    // A refresh signs the same version again with a new expiry: the same root is the
    // same version (only another root is walked as well).
    entry.heads.retain(|h| h.root != current.root);
    entry.heads.insert(0, current);
    Ok((version, out))
}

/// A head's content, if it decodes and names `tree` (and `version`, for an archived one).
fn decode(bytes: &[u8], tree: &str, version: Option<u64>) -> Result<Head, String> {
    if bytes.len() > MAX_HEAD_SIZE {
        return Err(format!("larger than {MAX_HEAD_SIZE} bytes"));
    }
    let (head, _, _) = Head::decode_unverified(bytes).map_err(|e| e.to_string())?;
    if head.tree != tree {
        return Err(format!("names tree '{}'", head.tree));
    }
    if version.is_some_and(|v| v != head.version) {
        return Err(format!("holds version {}", head.version));
    }
    Ok(head)
}

/// The versions `policy` keeps of a tree: the current one; the `keep_last` highest whose
/// heads can be read (versions with the same root counting as one); those created within `keep_within`; the pinned ones; and those that
/// were current less than `grace` ago (the next version was created since, or its time is
/// unknown). A version whose archived head cannot be read is kept only if current (its
/// current head is read) or pinned (which stops the run: what it reaches is unknown).
pub(crate) fn retain(
    tree: &str,
    current: u64,
    versions: &BTreeMap<u64, Version>,
    policy: &Policy,
    now: i64,
    grace: u64,
) -> Result<BTreeSet<u64>, GcError> {
    let created = |v: &Version| v.head().map(|h| h.created);
    let readable = || versions.iter().filter(|(_, x)| !x.heads.is_empty());
    let mut keep = BTreeSet::from([current]);
    if let Some(n) = policy.keep_last {
        // Versions with the same root (a publish of an unchanged tree, the version a
        // repack publishes again) count as one.
        let mut roots = std::collections::HashSet::new();
        for (v, x) in readable().rev() {
            let root = x.head().map(|h| h.root.id);
            if !roots.contains(&root) {
                if roots.len() as u64 >= n {
                    break;
                }
                roots.insert(root);
            }
            keep.insert(*v);
        }
    }
    if let Some(within) = policy.keep_within {
        let since = now.saturating_sub(i64::try_from(within).unwrap_or(i64::MAX));
        keep.extend(
            readable()
                .filter(|(_, x)| created(x).is_some_and(|c| c >= since))
                .map(|(v, _)| *v),
        );
    }
    let pins = policy
        .keep_versions
        .iter()
        .filter(|(t, _)| t.as_deref().is_none_or(|t| t == tree))
        .map(|(_, v)| v);
    for v in pins {
        if !versions.contains_key(v) {
            return Err(GcError::NoSuchVersion {
                tree: tree.to_string(),
                version: *v,
            });
        }
        keep.insert(*v);
    }
    let since = now.saturating_sub(i64::try_from(grace).unwrap_or(i64::MAX));
    let list: Vec<_> = versions.iter().collect();
    for pair in list.windows(2) {
        let ((v, x), (_, next)) = (pair[0], pair[1]);
        if !x.heads.is_empty() && created(next).is_none_or(|c| c > since) {
            keep.insert(*v);
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(created: &[(u64, Option<i64>)]) -> BTreeMap<u64, Version> {
        let head = |v: u64, c: i64| {
            let root = pulpdist_format::NodeRef {
                id: pulpdist_format::NodeId([v as u8; 32]),
                loc: pulpdist_format::Location {
                    pack: pulpdist_format::PackId([0; 32]),
                    offset: 0,
                    stored_len: 0,
                    raw_len: 0,
                    codec: pulpdist_format::Codec::Raw,
                },
            };
            Head {
                tree: "t".into(),
                version: v,
                created: c,
                expires: c,
                root,
                params: pulpdist_format::ChunkParams::DEFAULT,
                recent: Vec::new(),
                extensions: Vec::new(),
            }
        };
        created
            .iter()
            .map(|&(v, c)| {
                let x = Version {
                    heads: c.map(|c| head(v, c)).into_iter().collect(),
                    archived: true,
                    damaged: c.is_none().then(|| "damaged".into()),
                    size: 0,
                };
                (v, x)
            })
            .collect()
    }

    fn keep(t: &BTreeMap<u64, Version>, p: Policy, now: i64, grace: u64) -> Vec<u64> {
        let current = *t.keys().next_back().expect("a version");
        retain("t", current, t, &p, now, grace)
            .expect("retained")
            .into_iter()
            .collect()
    }

    #[test]
    fn each_rule_keeps_its_versions_and_the_current_one_is_always_kept() {
        let t = tree(&[
            (1, Some(100)),
            (2, Some(200)),
            (3, Some(300)),
            (5, Some(500)),
        ]);
        let last = |n| Policy {
            keep_last: Some(n),
            ..Policy::default()
        };
        assert_eq!(keep(&t, last(1), 10_000, 0), [5]);
        assert_eq!(keep(&t, last(2), 10_000, 0), [3, 5]);
        assert_eq!(keep(&t, last(9), 10_000, 0), [1, 2, 3, 5]);
        let within = Policy {
            keep_within: Some(250),
            ..Policy::default()
        };
        // Created at 300 or later is within 250 s of 550.
        assert_eq!(keep(&t, within, 550, 0), [3, 5]);
        let pinned = Policy {
            keep_last: Some(1),
            keep_versions: vec![(None, 2), (Some("other".into()), 3)],
            ..Policy::default()
        };
        assert_eq!(keep(&t, pinned, 10_000, 0), [2, 5]);
        let missing = Policy {
            keep_versions: vec![(Some("t".into()), 4)],
            ..Policy::default()
        };
        let e = retain("t", 5, &t, &missing, 0, 0).expect_err("no version 4");
        assert!(
            matches!(e, GcError::NoSuchVersion { version: 4, .. }),
            "{e}"
        );
    }

    #[test]
    fn versions_with_one_root_count_once_for_keep_last() {
        let mut t = tree(&[
            (1, Some(100)),
            (2, Some(200)),
            (3, Some(300)),
            (4, Some(400)),
        ]);
        // 4 is 3 published again (an unchanged tree, or a repack): the same root.
        let three = t[&3].heads[0].root;
        if let Some(x) = t.get_mut(&4) {
            x.heads[0].root = three;
        }
        let last = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        assert_eq!(keep(&t, last, 10_000, 0), [2, 3, 4]);
    }

    #[test]
    fn a_version_current_within_the_grace_period_is_kept() {
        let t = tree(&[(1, Some(100)), (2, Some(200)), (3, Some(300))]);
        let p = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        // At 350 with 100 s of grace, version 2 was current until 300: kept; 1 until 200: not.
        assert_eq!(keep(&t, p.clone(), 350, 100), [2, 3]);
        assert_eq!(keep(&t, p.clone(), 350, 200), [1, 2, 3]);
        assert_eq!(keep(&t, p, 350, 0), [3]);
    }

    #[test]
    fn an_unreadable_version_is_kept_only_if_current_or_pinned() {
        let t = tree(&[(1, None), (2, Some(200)), (3, None), (4, Some(400))]);
        let within = Policy {
            keep_within: Some(1_000_000),
            ..Policy::default()
        };
        // 1 and 3 cannot be read: no time rule keeps them; 2 was current until 3's
        // unknown time, so the grace rule keeps it.
        assert_eq!(keep(&t, within, 10_000, 60), [2, 4]);
        let last = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        assert_eq!(keep(&t, last, 10_000, 0), [2, 4]);
        let policy_refused = Policy::default().check().expect_err("empty");
        assert!(matches!(policy_refused, GcError::EmptyPolicy));
    }

    #[test]
    fn the_current_version_is_kept_even_below_archived_ones() {
        // A rollback: heads/ holds version 2, the archive goes on to 5.
        let t = tree(&[(1, Some(100)), (2, Some(200)), (5, Some(500))]);
        let last = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let got: Vec<u64> = retain("t", 2, &t, &last, 10_000, 0)
            .expect("retained")
            .into_iter()
            .collect();
        assert_eq!(got, [2, 5]);
        // Huge durations do not wrap around into keeping nothing.
        let within = Policy {
            keep_within: Some(u64::MAX),
            ..Policy::default()
        };
        let got: Vec<u64> = retain("t", 5, &t, &within, 10_000, u64::MAX)
            .expect("retained")
            .into_iter()
            .collect();
        assert_eq!(got, [1, 2, 5]);
    }
}
