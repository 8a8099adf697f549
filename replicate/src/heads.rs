//! Phase 1, the two heads: the source's, verified (signed by a trusted key, for the tree
//! asked for, within a bounded lifetime and not expired), and the target's, which must
//! verify too. Phase 4 is here as well: the new head, written last.

use std::collections::HashSet;

use pulpdist_format::{PackId, SignedHead};
use pulpdist_publish::{Store, StoredHead};
use pulpdist_sync::{first_ok, HeadFetch, StoreReader, SyncError};

use crate::walk::Needs;
use crate::{ReplicateError, ReplicateOptions};

/// The source's head and the target's, both verified.
pub(crate) struct Heads {
    /// The source's head.
    pub(crate) source: SignedHead,
    /// The target's head as stored (for the compare-and-swap) and verified.
    pub(crate) target: Option<(StoredHead, SignedHead)>,
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The target holds the source's version.
    UpToDate,
    /// The target holds a newer version: a replicate never moves a head back.
    TargetAhead,
    /// Copy the source's version.
    Copy,
}

impl Heads {
    pub(crate) fn target_version(&self) -> Option<u64> {
        self.target.as_ref().map(|(_, h)| h.head().version)
    }

    /// What to do with the two heads; the same version with another root is refused.
    pub(crate) fn decision(&self) -> Result<Decision, ReplicateError> {
        let s = self.source.head();
        let Some((_, t)) = &self.target else {
            return Ok(Decision::Copy);
        };
        let t = t.head();
        Ok(match t.version.cmp(&s.version) {
            std::cmp::Ordering::Greater => Decision::TargetAhead,
            std::cmp::Ordering::Less => Decision::Copy,
            std::cmp::Ordering::Equal if t.root == s.root => Decision::UpToDate,
            std::cmp::Ordering::Equal => {
                return Err(ReplicateError::Equivocation {
                    tree: s.tree.clone(),
                    version: s.version,
                })
            }
        })
    }
}

/// Reads and verifies both heads. Of a list of source stores, the first whose head passes
/// every check and is not older than the target's is taken; if every store that passes
/// offers an older one, the first of those (the target is ahead).
pub(crate) fn read(
    source: &dyn StoreReader,
    target: &dyn Store,
    opts: &ReplicateOptions,
) -> Result<Heads, ReplicateError> {
    let tree = &opts.tree;
    let target = match target.read_head(tree)? {
        None => None,
        Some(stored) => {
            let object = format!("{}/heads/{tree}", target.describe());
            let t =
                SignedHead::decode_and_verify(&stored.bytes, &opts.trusted).map_err(|source| {
                    ReplicateError::TargetHead {
                        object: object.clone(),
                        source,
                    }
                })?;
            if &t.head().tree != tree {
                return Err(ReplicateError::TargetHead {
                    object,
                    source: crate::invalid(
                        "tree head",
                        format!("it is the head of tree '{}'", t.head().tree),
                    ),
                });
            }
            Some((stored, t))
        }
    };
    let floor = target
        .as_ref()
        .map(|(_, t)| (t.head().version, t.head().root));
    let now = opts.now.unwrap_or_else(unix_now);
    let mut older = None;
    let picked = first_ok(source, |s| {
        let signed = source_head(s, tree, &opts.trusted, now)?;
        match floor {
            // The target's version with another root: this store equivocates; the next
            // may not.
            Some((v, root)) if signed.head().version == v && signed.head().root != root => {
                Err(SyncError::Equivocation {
                    tree: tree.clone(),
                    version: v,
                })
            }
            Some((v, _)) if signed.head().version < v => {
                let offered = signed.head().version;
                older.get_or_insert(signed);
                Err(SyncError::Rollback {
                    tree: tree.clone(),
                    offered,
                    applied: v,
                })
            }
            _ => Ok(signed),
        }
    });
    let source = match (picked, older) {
        (Ok(signed), _) => signed,
        (Err(SyncError::Rollback { .. }), Some(signed)) => signed,
        (Err(SyncError::Equivocation { tree, version }), _) => {
            return Err(ReplicateError::Equivocation { tree, version })
        }
        (Err(e), _) => return Err(e.into()),
    };
    Ok(Heads { source, target })
}

/// One store's head of `tree`, checked: signed by a trusted key, for `tree`, with a
/// bounded lifetime, not made in the future, not expired at `now`.
fn source_head(
    s: &dyn StoreReader,
    tree: &str,
    trusted: &pulpdist_format::TrustedKeys,
    now: i64,
) -> Result<SignedHead, SyncError> {
    let object = format!("{}/heads/{tree}", s.describe());
    let bytes = match s.get_head(tree, None)? {
        HeadFetch::Found { bytes, .. } => bytes,
        HeadFetch::Missing | HeadFetch::NotModified => {
            return Err(SyncError::NoSuchTree {
                store: s.describe(),
                tree: tree.to_string(),
            })
        }
    };
    let signed =
        SignedHead::decode_and_verify(&bytes, trusted).map_err(|source| SyncError::Format {
            object: object.clone(),
            source,
        })?;
    pulpdist_sync::check_head(signed.head(), None, tree, now, &object)?;
    Ok(signed)
}

/// Phase 4: the new head, once every pack the version reaches is in the target and none is
/// condemned by its gc (one that a gc condemned since the walk, or removed, is named);
/// compare-and-swap against the head read in phase 1. Then the archived copy: a failure
/// there is returned as text (the version is installed).
pub(crate) fn install(
    target: &dyn Store,
    heads: &Heads,
    needs: &Needs,
) -> Result<Option<String>, ReplicateError> {
    let condemned = target.read_condemned()?;
    let stored: HashSet<PackId> = target.list_packs()?.iter().map(|p| p.id).collect();
    for pack in needs.reached() {
        if condemned.packs.contains_key(&pack) {
            return Err(ReplicateError::Condemned {
                store: target.describe(),
                pack: pack.object_key(),
            });
        }
        if !stored.contains(&pack) {
            return Err(ReplicateError::Unusable {
                store: target.describe(),
                pack: pack.object_key(),
            });
        }
    }
    let head = heads.source.head();
    pulpdist_failpoint::hit("replicate.head");
    let (expected, expected_version) = match &heads.target {
        Some((stored, h)) => (Some(stored), Some(h.head().version)),
        None => (None, None),
    };
    target.put_head(&head.tree, heads.source.bytes(), expected, expected_version)?;
    pulpdist_failpoint::hit("replicate.head_put");
    let archived = target.put_history(&head.tree, head.version, heads.source.bytes());
    Ok(archived.err().map(|e| e.to_string()))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
