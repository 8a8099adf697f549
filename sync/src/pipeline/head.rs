//! Phase 1, the accepted head: the tree's head fetched (one conditional request when the
//! store's tag for the applied head is known), its signature checked against the trusted
//! keys, then every rule a head must pass before anything else of the store is read: the
//! tree asked for, a bounded lifetime, not created in the future, not expired, not older
//! than the version applied (rollback), not the applied version with another root
//! (equivocation). A first sync into a directory that already holds files is refused
//! unless adopting it was asked for.

use std::collections::HashMap;
use std::fs;

use pulpdist_format::{Head, NodeId, PackId, SignedHead};

use super::SyncOptions;
use crate::error::{IoContext, SyncError};
use crate::state::State;
use crate::store::{first_ok, HeadFetch, StoreReader};

/// The longest a head may be valid (what `publish --expires-days` allows).
pub(super) const MAX_HEAD_LIFETIME: i64 = 366 * 86_400;

/// A head that passed every check, with what the mirror held before it.
#[derive(Debug)]
pub(super) struct Accepted {
    /// The head as the store sent it (recorded once applied).
    pub(super) bytes: Vec<u8>,
    /// The store's tag for it, for the next conditional request.
    pub(super) etag: Option<String>,
    /// Its content.
    pub(super) head: Head,
    /// The version the mirror holds (`None`: a first sync).
    pub(super) applied: Option<Head>,
    /// Every directory is checked, not only those whose node changed (`--full`, or a sync
    /// that died while renaming files into place).
    pub(super) full: bool,
    /// The store that served the head (of a list, the first whose head passed).
    pub(super) served_by: String,
}

impl Accepted {
    /// The root the index walk starts from: the applied one, unless every directory is
    /// checked.
    pub(super) fn old_root(&self) -> Option<NodeId> {
        match self.full {
            true => None,
            false => self.applied.as_ref().map(|a| a.root.id),
        }
    }

    /// Nothing in the tree changed since the version applied.
    pub(super) fn up_to_date(&self) -> bool {
        self.old_root() == Some(self.head.root.id)
    }

    /// The signed size of every pack the head lists: no store answer is read past it.
    pub(super) fn pack_sizes(&self) -> HashMap<PackId, u64> {
        self.head
            .recent
            .iter()
            .flat_map(|v| v.packs.iter())
            .map(|p| (p.id, p.size))
            .collect()
    }

    /// The filter rules the publisher applied, one per line. Informational (not
    /// critical): shown, never a reason to refuse.
    pub(super) fn filter(&self) -> Option<String> {
        match self.head.filter() {
            Ok(f) => f.map(|f| f.to_string()),
            Err(_) => self
                .head
                .extensions
                .iter()
                .find(|(t, _)| *t == pulpdist_format::EXT_FILTER)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned()),
        }
    }
}

/// Fetches and checks the head of `opts.tree`.
pub(super) fn accept(
    store: &dyn StoreReader,
    opts: &SyncOptions,
    state: &State,
) -> Result<Accepted, SyncError> {
    let applied = state.applied(&opts.tree)?;
    let full = opts.full || state.applying(&opts.tree);
    let now = opts.now.unwrap_or_else(unix_now);
    // From a list of stores, the first whose head passes every check: a relay behind the
    // mirror, or serving another tree's or an unsigned head, is passed over.
    let (bytes, etag, head, served_by) = first_ok(store, |s| {
        let (bytes, etag) = fetch(s, opts, state, applied.is_some() && !full)?;
        let object = format!("{}/heads/{}", s.describe(), opts.tree);
        let signed = SignedHead::decode_and_verify(&bytes, &opts.trusted).map_err(|source| {
            SyncError::Format {
                object: object.clone(),
                source,
            }
        })?;
        let head = signed.head().clone();
        check(&head, applied.as_ref(), &opts.tree, now, &object)?;
        // A sync that died while renaming a version into place left files of it on the
        // mirror: no older version is applied over them.
        match state.applying_version(&opts.tree) {
            Some(v) if head.version < v => Err(SyncError::Rollback {
                tree: head.tree.clone(),
                offered: head.version,
                applied: v,
            }),
            _ => Ok((bytes, etag, head, s.describe())),
        }
    })?;
    pulpdist_failpoint::hit("sync.head");
    if applied.is_none() && !state.applying(&opts.tree) && !opts.adopt {
        refuse_occupied(opts)?;
    }
    Ok(Accepted {
        bytes,
        etag,
        head,
        applied,
        full,
        served_by,
    })
}

/// The head's bytes and tag: a 304 to the conditional request means the applied head.
fn fetch(
    store: &dyn StoreReader,
    opts: &SyncOptions,
    state: &State,
    conditional: bool,
) -> Result<(Vec<u8>, Option<String>), SyncError> {
    let known = match conditional {
        true => state.etag(&opts.tree, &store.describe()),
        false => None,
    };
    match store.get_head(&opts.tree, known.as_deref())? {
        HeadFetch::Found { bytes, etag } => Ok((bytes, etag)),
        HeadFetch::NotModified => match (state.applied_bytes(&opts.tree)?, known) {
            (Some(b), Some(tag)) => Ok((b, Some(tag))),
            _ => Err(SyncError::Http {
                url: format!("{}/heads/{}", store.describe(), opts.tree),
                status: Some(304),
                detail: "answered 304 Not Modified to an unconditional request".into(),
                temporary: false,
            }),
        },
        HeadFetch::Missing => Err(SyncError::NoSuchTree {
            store: store.describe(),
            tree: opts.tree.clone(),
        }),
    }
}

/// The rules a verified head must pass against the version applied (if any), at time
/// `now`: the tree asked for, a bounded lifetime, not made in the future, not expired, no
/// rollback, no equivocation. `object` names the head in errors. A replicate checks its
/// source's head with it too.
pub fn check(
    head: &Head,
    applied: Option<&Head>,
    tree: &str,
    now: i64,
    object: &str,
) -> Result<(), SyncError> {
    if head.tree != tree {
        return Err(SyncError::WrongTree {
            asked: tree.to_string(),
            found: head.tree.clone(),
        });
    }
    // Freeze protection needs a bounded lifetime (publish gives 1 to 366 days) and a head
    // that was not made in the future (a publisher's clock a day ahead is tolerated).
    if head.expires.saturating_sub(head.created) > MAX_HEAD_LIFETIME
        || head.created > now.saturating_add(86_400)
    {
        return Err(SyncError::Format {
            object: object.to_string(),
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
            tree: head.tree.clone(),
            version: head.version,
            expires: head.expires,
            now,
        });
    }
    let Some(a) = applied else {
        return Ok(());
    };
    if head.version < a.version {
        return Err(SyncError::Rollback {
            tree: head.tree.clone(),
            offered: head.version,
            applied: a.version,
        });
    }
    if head.version == a.version && head.root != a.root {
        return Err(SyncError::Equivocation {
            tree: head.tree.clone(),
            version: head.version,
        });
    }
    Ok(())
}

/// A first sync deletes whatever the tree lacks: into a directory that already holds
/// files (and no state of an earlier, interrupted first sync) only on request.
fn refuse_occupied(opts: &SyncOptions) -> Result<(), SyncError> {
    let occupied = match fs::read_dir(&opts.dest) {
        Ok(mut rd) => rd.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).at(&opts.dest),
    };
    match occupied {
        false => Ok(()),
        true => Err(SyncError::Usage(format!(
            "{}: not empty, and no version of tree '{}' was synced into it: a first sync would delete every file the tree lacks; give --adopt to allow it",
            opts.dest.display(),
            opts.tree
        ))),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulpdist_format::{ChunkParams, Codec, Location, NodeRef};

    fn head(version: u64, root: u8, created: i64, expires: i64) -> Head {
        Head {
            tree: "t".into(),
            version,
            created,
            expires,
            root: NodeRef {
                id: NodeId([root; 32]),
                loc: Location {
                    pack: PackId([7; 32]),
                    offset: 0,
                    stored_len: 1,
                    raw_len: 1,
                    codec: Codec::Raw,
                },
            },
            params: ChunkParams::DEFAULT,
            recent: Vec::new(),
            extensions: Vec::new(),
        }
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_fresh_head_passes() {
        let h = head(2, 1, 1000, 1000 + DAY);
        assert!(check(&h, None, "t", 1001, "o").is_ok());
        assert!(check(&h, Some(&head(1, 9, 0, DAY)), "t", 1001, "o").is_ok());
        // The same version and root: up to date, not equivocation.
        assert!(check(&h, Some(&h.clone()), "t", 1001, "o").is_ok());
    }

    #[test]
    fn another_trees_head_is_refused() {
        let h = head(1, 1, 0, DAY);
        assert!(matches!(
            check(&h, None, "u", 1, "o"),
            Err(SyncError::WrongTree { .. })
        ));
    }

    #[test]
    fn an_older_version_is_a_rollback() {
        let h = head(3, 1, 0, DAY);
        let applied = head(4, 2, 0, DAY);
        assert!(matches!(
            check(&h, Some(&applied), "t", 1, "o"),
            Err(SyncError::Rollback {
                offered: 3,
                applied: 4,
                ..
            })
        ));
    }

    #[test]
    fn the_same_version_with_another_root_is_equivocation() {
        let h = head(4, 1, 0, DAY);
        let applied = head(4, 2, 0, DAY);
        assert!(matches!(
            check(&h, Some(&applied), "t", 1, "o"),
            Err(SyncError::Equivocation { version: 4, .. })
        ));
    }

    #[test]
    fn expiry_and_lifetime_bound_a_frozen_tree() {
        let h = head(1, 1, 0, DAY);
        assert!(matches!(
            check(&h, None, "t", DAY + 1, "o"),
            Err(SyncError::Expired { .. })
        ));
        assert!(check(&h, None, "t", DAY, "o").is_ok());
        // Valid for longer than 366 days: refused even while fresh.
        let long = head(1, 1, 0, MAX_HEAD_LIFETIME + 1);
        assert!(matches!(
            check(&long, None, "t", 1, "o"),
            Err(SyncError::Format { .. })
        ));
        // Created more than a day ahead of the clock.
        let future = head(1, 1, 10 * DAY, 11 * DAY);
        assert!(matches!(
            check(&future, None, "t", 8 * DAY, "o"),
            Err(SyncError::Format { .. })
        ));
        assert!(check(&future, None, "t", 9 * DAY + 1, "o").is_ok());
    }

    mod accept {
        use super::super::super::testkit::{self, MemStore};
        use super::super::*;

        #[test]
        fn a_known_tag_costs_one_conditional_request_answered_from_the_state() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
            let root = testkit::cached(&state, vec![]);
            let store = MemStore::default();
            store.set_head(&testkit::head(1, &root), "v1");
            let acc = accept(&store, &opts, &state).expect("accepted");
            assert_eq!((acc.head.version, acc.etag.as_deref()), (1, Some("v1")));
            assert!(acc.applied.is_none() && !acc.up_to_date());
            state
                .set_applied("t", &acc.bytes, Some("v1"), "mem:")
                .expect("recorded");
            // The store answers 304 to the tag: the head comes from the state.
            let again = accept(&store, &opts, &state).expect("accepted again");
            assert_eq!(again.bytes, acc.bytes);
            assert!(again.up_to_date());
            let asked = store.asked.lock().expect("asked").clone();
            assert_eq!(
                asked,
                [None, Some("v1".to_string())],
                "the second asks with the tag"
            );
            // --full asks unconditionally.
            let full = SyncOptions {
                full: true,
                ..opts.clone()
            };
            accept(&store, &full, &state).expect("accepted");
            assert_eq!(store.asked.lock().expect("asked").last(), Some(&None));
        }

        #[test]
        fn a_304_to_an_unconditional_request_is_refused() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
            let store = MemStore {
                always_304: true,
                ..MemStore::default()
            };
            let e = accept(&store, &opts, &state).expect_err("refused");
            assert!(
                matches!(
                    e,
                    SyncError::Http {
                        status: Some(304),
                        ..
                    }
                ),
                "{e}"
            );
        }

        #[test]
        fn a_missing_tree_and_an_untrusted_head_are_refused() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
            let store = MemStore::default();
            let e = accept(&store, &opts, &state).expect_err("no tree");
            assert!(matches!(e, SyncError::NoSuchTree { .. }), "{e}");
            let root = testkit::cached(&state, vec![]);
            store.set_head(&testkit::head(1, &root), "v1");
            opts.trusted =
                pulpdist_format::TrustedKeys::new(vec![pulpdist_format::SecretKey::from_seed(
                    [4; 32],
                )
                .public()]);
            let e = accept(&store, &opts, &state).expect_err("untrusted");
            assert!(matches!(e, SyncError::Format { .. }), "{e}");
        }

        #[test]
        fn a_first_sync_into_a_directory_with_files_needs_adopt() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
            let root = testkit::cached(&state, vec![]);
            let store = MemStore::default();
            store.set_head(&testkit::head(1, &root), "v1");
            std::fs::create_dir(&opts.dest).expect("mirror");
            accept(&store, &opts, &state).expect("an empty directory is fine");
            std::fs::write(opts.dest.join("local"), b"x").expect("a file");
            let e = accept(&store, &opts, &state).expect_err("refused");
            assert!(matches!(e, SyncError::Usage(_)), "{e}");
            opts.adopt = true;
            accept(&store, &opts, &state).expect("adopted");
        }
    }
}
