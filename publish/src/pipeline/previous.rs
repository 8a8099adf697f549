//! Phase 1, the previous version: the tree's head in the store, verified as a client
//! would (signed by the publisher's key or a named previous key, for this tree), so that
//! a store writer cannot make the publisher re-sign a version, parameters or pack list of
//! its choosing; then the chunk parameters (a tree keeps its own) and the next version.

use pulpdist_format::{ChunkParams, FormatError, Head, SecretKey, SignedHead, TrustedKeys};

use super::PublishOptions;
use crate::error::PublishError;
use crate::store::{Store, StoredHead};

/// The version a publish builds on.
pub(super) struct Previous {
    /// The head as stored (the compare-and-swap of the new head is against it).
    pub(super) stored: Option<StoredHead>,
    /// Its verified content.
    pub(super) head: Option<Head>,
    /// The chunk parameters of the tree.
    pub(super) params: ChunkParams,
    /// The version this publish writes.
    pub(super) version: u64,
}

/// Reads and checks the previous head of `opts.tree`.
pub(super) fn read(
    store: &dyn Store,
    key: &SecretKey,
    opts: &PublishOptions,
) -> Result<Previous, PublishError> {
    let stored = store.read_head(&opts.tree)?;
    let object = format!("{}/heads/{}", store.describe(), opts.tree);
    let head = match &stored {
        Some(s) => Some(verify(&s.bytes, key, opts, &object)?),
        None => None,
    };
    // A publish killed between its head and its archived copy (or a store from before
    // archived heads) is made whole here: the current head is archived if it is not.
    // Best effort: a store that refuses it must not stop publishes (nor refreshes, which
    // keep heads from expiring).
    if let (Some(s), Some(h)) = (&stored, &head) {
        if let Err(e) = store.put_history(&opts.tree, h.version, &s.bytes) {
            tracing::warn!(version = h.version, error = %e, "the current head could not be archived");
        }
    }
    let params = match (&head, opts.params) {
        (Some(h), Some(p)) if h.params != p => {
            return Err(PublishError::ParamsChanged {
                tree: opts.tree.clone(),
                params: h.params,
            })
        }
        (Some(h), _) => h.params,
        (None, p) => p.unwrap_or(ChunkParams::DEFAULT),
    };
    let version = match &head {
        None => 1,
        Some(h) => h
            .version
            .checked_add(1)
            .ok_or(PublishError::VersionOverflow {
                tree: opts.tree.clone(),
                version: h.version,
            })?,
    };
    Ok(Previous {
        stored,
        head,
        params,
        version,
    })
}

/// The previous head's content, if signed by a key the publisher holds, for this tree.
fn verify(
    bytes: &[u8],
    key: &SecretKey,
    opts: &PublishOptions,
    object: &str,
) -> Result<Head, PublishError> {
    let mut own = vec![key.public()];
    own.extend(opts.previous_keys.iter().cloned());
    let h = match SignedHead::decode_and_verify(bytes, &TrustedKeys::new(own)) {
        Ok(v) => v.head().clone(),
        Err(FormatError::UntrustedKey { key: signer, .. }) => {
            return Err(PublishError::ForeignKey {
                object: object.to_string(),
                signer,
                key: key.public().to_string(),
            })
        }
        Err(source) => {
            return Err(PublishError::Format {
                object: object.to_string(),
                source,
            })
        }
    };
    if h.tree != opts.tree {
        return Err(PublishError::WrongTree {
            object: object.to_string(),
            found: h.tree,
        });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, key};
    use super::*;

    #[test]
    fn a_first_version_is_one_then_each_adds_one_keeping_the_trees_parameters() {
        let mut site = testkit::site();
        let first = read(&site.store, &key(), &site.opts).expect("read");
        assert_eq!((first.version, first.params), (1, ChunkParams::DEFAULT));
        assert!(first.stored.is_none() && first.head.is_none());
        site.publish();
        let next = read(&site.store, &key(), &site.opts).expect("read");
        assert_eq!((next.version, next.params), (2, ChunkParams::DEFAULT));
        site.opts.params = Some(ChunkParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        });
        let e = read(&site.store, &key(), &site.opts)
            .err()
            .expect("refused");
        assert!(matches!(e, PublishError::ParamsChanged { .. }), "{e}");
    }

    #[test]
    fn a_head_the_publisher_did_not_sign_is_refused_unless_named_as_a_previous_key() {
        let mut site = testkit::site();
        site.publish();
        let mut head = site.head();
        let other = SecretKey::from_seed([6; 32]);
        site.plant_head(&head, &other);
        let e = read(&site.store, &key(), &site.opts)
            .err()
            .expect("refused");
        assert!(matches!(e, PublishError::ForeignKey { .. }), "{e}");
        site.opts.previous_keys = vec![other.public()];
        assert_eq!(
            read(&site.store, &key(), &site.opts)
                .expect("rotated")
                .version,
            2
        );
        head.tree = "u".into();
        site.plant_head(&head, &key());
        let e = read(&site.store, &key(), &site.opts)
            .err()
            .expect("refused");
        assert!(matches!(e, PublishError::WrongTree { .. }), "{e}");
        head.tree = "t".into();
        head.version = u64::MAX;
        head.recent[0].version = u64::MAX;
        site.plant_head(&head, &key());
        let e = read(&site.store, &key(), &site.opts)
            .err()
            .expect("refused");
        assert!(matches!(e, PublishError::VersionOverflow { .. }), "{e}");
    }
}
