//! Phase 6, the head: written last, when everything it names is in place. It lists the
//! packs of this version and of the recent ones before it, the filter rules and the
//! deltas, expires after `expires_in`, and replaces the previous head only if that is
//! still the one the publish started from (compare-and-swap).

use pulpdist_format::delta::{encode_deltas, DeltaInfo, EXT_DELTAS};
use std::collections::{BTreeSet, HashSet};

use pulpdist_format::{Head, NodeRef, PackId, PackInfo, SecretKey, VersionPacks};

use super::previous::Previous;
use super::Run;
use crate::error::PublishError;

/// Signs and stores the head of this version, then archives it; why archiving failed, if
/// it did (the version is published either way, and the next publish archives it).
pub(super) fn write(
    run: &Run<'_>,
    key: &SecretKey,
    prev: &Previous,
    (root, reached): (NodeRef, &BTreeSet<PackId>),
    packs: &[PackInfo],
    deltas: &[DeltaInfo],
) -> Result<Option<String>, PublishError> {
    let opts = run.opts;
    let now = opts.now.unwrap_or_else(super::unix_now);
    let mut recent = vec![VersionPacks {
        version: run.version,
        packs: packs.to_vec(),
    }];
    if let Some(h) = &prev.head {
        recent.extend(h.recent.iter().cloned());
    }
    recent.truncate(opts.keep_versions.max(1));
    let mut extensions = Vec::new();
    if !opts.filter.is_empty() {
        let rules = opts.filter.to_string().into_bytes();
        extensions.push((pulpdist_format::EXT_FILTER, rules));
    }
    if !deltas.is_empty() {
        extensions.push((EXT_DELTAS, encode_deltas(deltas)));
    }
    let head = Head {
        tree: opts.tree.clone(),
        version: run.version,
        created: now,
        expires: now.saturating_add(opts.expires_in),
        root,
        params: prev.params,
        recent,
        extensions,
    };
    let bytes = head.sign(key).map_err(|source| PublishError::Format {
        object: format!("{}/heads/{}", run.store.describe(), opts.tree),
        source,
    })?;
    pulpdist_failpoint::hit("publish.head");
    // And the delta packs this publish wrote (a pack of the same bytes may have been in the
    // store, unreached, and condemned since).
    let kept: Vec<PackId> = prev
        .head
        .as_ref()
        .and_then(|h| h.deltas().ok())
        .unwrap_or_default()
        .iter()
        .map(|d| d.pack)
        .collect();
    let mut reached = reached.clone();
    reached.extend(deltas.iter().map(|d| d.pack).filter(|p| !kept.contains(p)));
    not_collected(run, &reached)?;
    let prev_version = prev.head.as_ref().map(|h| h.version);
    run.store
        .put_head(&opts.tree, &bytes, prev.stored.as_ref(), prev_version)?;
    pulpdist_failpoint::hit("publish.head_put");
    let archived = run.store.put_history(&opts.tree, run.version, &bytes);
    pulpdist_failpoint::hit("publish.history");
    Ok(archived.err().map(|e| e.to_string()))
}

/// Refuses to name a pack that a garbage collector condemned or removed while this publish
/// ran (FORMAT.md 8.10): the catalog left out the packs condemned when it was read, so a
/// pack of the version on the list now was condemned since. Checked last before the head,
/// so that a gc, which deletes a pack only a grace period after condemning it, cannot have
/// deleted one the head names.
fn not_collected(run: &Run<'_>, reached: &BTreeSet<PackId>) -> Result<(), PublishError> {
    let condemned = run.store.read_condemned()?;
    let stored: HashSet<PackId> = run.store.list_packs()?.iter().map(|p| p.id).collect();
    let lost = reached
        .iter()
        .find(|p| condemned.packs.contains_key(p) || !stored.contains(p));
    match lost {
        None => Ok(()),
        Some(pack) => Err(PublishError::Collected {
            tree: run.opts.tree.clone(),
            pack: *pack,
            removed: !stored.contains(pack),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit;

    #[test]
    fn the_head_lists_recent_versions_filter_and_expiry() {
        let mut site = testkit::site();
        site.opts.keep_versions = 2;
        site.opts.expires_in = 600;
        site.opts.filter = pulpdist_format::filter::Filter::parse_lines("- *.bin").expect("rules");
        for v in 1..=3 {
            std::fs::write(site.src().join("a.txt"), format!("alpha {v}")).expect("edit");
            site.publish();
        }
        let head = site.head();
        assert_eq!(head.version, 3);
        assert_eq!((head.created, head.expires), (1_000, 1_600));
        let listed: Vec<u64> = head.recent.iter().map(|v| v.version).collect();
        assert_eq!(listed, [3, 2]);
        let filter = head.filter().expect("decodes").expect("recorded");
        assert_eq!(filter.to_string().trim_end(), "- *.bin");
    }

    /// The phase alone: a head is written only over the head the publish started from.
    #[test]
    fn the_head_replaces_only_the_head_the_publish_read() {
        use super::super::previous;
        use super::*;
        use crate::error::PublishError;
        let site = testkit::site();
        site.publish();
        let key = testkit::key();
        let prev = previous::read(&site.store, &key, &site.opts).expect("previous");
        let root = site.head().root;
        let run = site.run(prev.version);
        let none = BTreeSet::new();
        write(&run, &key, &prev, (root, &none), &[], &[]).expect("written");
        let head = site.head();
        assert_eq!((head.version, head.root), (2, root));
        assert_eq!(
            head.recent.len(),
            2,
            "this version's packs (none) and version 1's"
        );
        // The same Previous again: the stored head is no longer the one it read.
        let e = write(&run, &key, &prev, (root, &none), &[], &[]).expect_err("lost the race");
        assert!(matches!(e, PublishError::HeadChanged { .. }), "{e}");
        assert_eq!(site.head().version, 2);
    }

    /// A version naming a pack that a gc condemned, or removed, since the catalog was read
    /// is not published.
    #[test]
    fn a_head_naming_a_condemned_or_removed_pack_is_not_written() {
        use super::super::previous;
        use super::*;
        use crate::error::PublishError;
        use crate::store::Store;
        let site = testkit::site();
        site.publish();
        let key = testkit::key();
        let prev = previous::read(&site.store, &key, &site.opts).expect("previous");
        let root = site.head().root;
        let run = site.run(prev.version);
        let mut list = pulpdist_format::Condemned::default();
        list.packs.insert(root.loc.pack, 1);
        let key_c = pulpdist_format::CONDEMNED_KEY;
        site.store
            .replace_object(key_c, &list.encode())
            .expect("condemn");
        let reached = BTreeSet::from([root.loc.pack]);
        let e = write(&run, &key, &prev, (root, &reached), &[], &[]).expect_err("condemned");
        assert!(
            matches!(e, PublishError::Collected { removed: false, .. }),
            "{e}"
        );
        site.store
            .replace_object(key_c, &pulpdist_format::Condemned::default().encode())
            .expect("list emptied");
        let gone = BTreeSet::from([PackId([9; 32])]);
        let e = write(&run, &key, &prev, (root, &gone), &[], &[]).expect_err("removed");
        assert!(
            matches!(e, PublishError::Collected { removed: true, .. }),
            "{e}"
        );
        assert_eq!(site.head().version, 1);
        // A delta pack this publish wrote, reached by no node, is checked too.
        let delta = DeltaInfo {
            from_version: 1,
            from_root: root,
            pack: root.loc.pack,
            size: 1,
            hash: [0; 32],
        };
        site.store
            .replace_object(key_c, &list.encode())
            .expect("condemn");
        let none = BTreeSet::new();
        let e = write(&run, &key, &prev, (root, &none), &[], &[delta]).expect_err("delta");
        assert!(
            matches!(e, PublishError::Collected { removed: false, pack, .. } if pack == root.loc.pack),
            "{e}"
        );
        site.store
            .replace_object(key_c, &pulpdist_format::Condemned::default().encode())
            .expect("list emptied");
        write(&run, &key, &prev, (root, &reached), &[], &[]).expect("written");
    }
}
