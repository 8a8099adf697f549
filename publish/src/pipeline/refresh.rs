//! A head refresh (`pulpdist publish --refresh`): the tree's current head signed again with
//! a new expiry, everything else as it was (version, root, packs, filter, deltas), without
//! reading the source. Heads expire so that a site notices a frozen origin; a timer runs
//! this so that a tree that did not change does not expire either.

use pulpdist_format::{Head, SecretKey};

use super::{previous, PublishOptions};
use crate::error::PublishError;
use crate::store::Store;

/// The head written by a refresh.
#[derive(Clone, Debug)]
pub struct RefreshReport {
    /// The version, unchanged.
    pub version: u64,
    /// The new expiry (seconds since the epoch).
    pub expires: i64,
}

/// Signs `opts.tree`'s current head again, expiring `opts.expires_in` from now.
pub fn refresh(
    store: &dyn Store,
    key: &SecretKey,
    opts: &PublishOptions,
) -> Result<RefreshReport, PublishError> {
    let _lock = super::lock(store, opts)?;
    let prev = previous::read(store, key, opts)?;
    let Some(current) = &prev.head else {
        return Err(PublishError::NothingToRefresh {
            tree: opts.tree.clone(),
        });
    };
    let now = opts.now.unwrap_or_else(super::unix_now);
    let head = Head {
        created: now,
        expires: now.saturating_add(opts.expires_in),
        ..current.clone()
    };
    let bytes = head.sign(key).map_err(|source| PublishError::Format {
        object: format!("{}/heads/{}", store.describe(), opts.tree),
        source,
    })?;
    pulpdist_failpoint::hit("publish.head");
    store.put_head(
        &opts.tree,
        &bytes,
        prev.stored.as_ref(),
        Some(current.version),
    )?;
    pulpdist_failpoint::hit("publish.head_put");
    Ok(RefreshReport {
        version: head.version,
        expires: head.expires,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, key};
    use super::*;

    #[test]
    fn a_refresh_changes_the_expiry_and_nothing_else() {
        let mut site = testkit::site();
        let e = refresh(&site.store, &key(), &site.opts).expect_err("no head yet");
        assert!(matches!(e, PublishError::NothingToRefresh { .. }), "{e}");
        site.publish();
        let before = site.head();
        // The source is not read: gone, it does not matter.
        std::fs::remove_dir_all(site.src()).expect("source removed");
        site.opts.now = Some(5_000);
        site.opts.expires_in = 100;
        let r = refresh(&site.store, &key(), &site.opts).expect("refreshed");
        let after = site.head();
        assert_eq!((r.version, r.expires), (before.version, 5_100));
        assert_eq!((after.created, after.expires), (5_000, 5_100));
        let same = |h: &Head| (h.version, h.root, h.recent.clone(), h.extensions.clone());
        assert_eq!(same(&after), same(&before));
    }
}
