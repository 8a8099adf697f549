//! Phase 2½, the unchanged tree: when the tree's summary ([`crate::summary`]) is sealed to
//! the store's packs as they are and to the publisher's cache as it is, and the walk gives
//! every directory the fingerprint the summary has, the tree is the one the last publish
//! indexed: its root is published again without the catalog, the cache or a node built.

use std::collections::BTreeSet;

use rayon::prelude::*;

use pulpdist_format::{NodeRef, PackId};

use super::index::fingerprint;
use super::Run;
use crate::summary::Summary;
use crate::walk::Walk;

/// The last publish's tree, found again.
pub(super) struct Unchanged {
    pub(super) root: NodeRef,
    /// Every pack the version names.
    pub(super) reached: BTreeSet<PackId>,
    /// Packs the catalog could not read when the summary was written (the store's packs
    /// are the same).
    pub(super) unreadable: Vec<String>,
}

/// The summary's tree, if the walk found it unchanged: the same directories in the same
/// order, each with the fingerprint the summary has (computed with the summary's nodes for
/// its subdirectories, so the root's covers the whole tree).
///
/// All or nothing: a directory holding an image is recorded with its real fingerprint,
/// which is sound only because every other file of the tree must match too (an image may
/// name any of them). Keeping some directories' nodes from the summary while building
/// others would need those directories left out.
pub(super) fn check(run: &Run<'_>, walk: &Walk, summary: Summary) -> Option<Unchanged> {
    let same_dirs = walk.dirs.len() == summary.dirs.len()
        && walk
            .dirs
            .iter()
            .zip(&summary.dirs)
            .all(|(d, s)| d.rel == s.rel);
    let root = summary.dirs.first()?.node;
    if !same_dirs {
        return None;
    }
    let refs: Vec<Option<NodeRef>> = summary.dirs.iter().map(|s| Some(s.node)).collect();
    let what = || String::from("a directory");
    let unchanged = run.workers.run(|| {
        walk.dirs
            .par_iter()
            .zip(summary.dirs.par_iter())
            .all(|(d, s)| fingerprint(d, &walk.files, &refs, &what).ok() == Some(s.fingerprint))
    });
    unchanged.then_some(Unchanged {
        root,
        reached: summary.reached,
        unreadable: summary.unreadable,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testkit;
    use crate::store::Store;

    /// A named change made to the site.
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);

    /// The root a publish of the same source gives with no state at all (every file read,
    /// every node built): what any publish of it must give.
    fn root_from_scratch(site: &testkit::Site) -> Option<pulpdist_format::NodeId> {
        let mut opts = site.opts.clone();
        opts.state_dir = site
            .dir
            .path()
            .join(format!("scratch-{}", site.head().version));
        let r = super::super::publish(&site.store, &testkit::key(), &opts).expect("published");
        assert!(!r.unchanged && r.files_read > 0, "{r:?}");
        r.root
    }

    #[test]
    fn an_unchanged_tree_is_published_from_its_summary_and_no_change_goes_unseen() {
        let site = testkit::site();
        let first = site.publish();
        assert!(!first.unchanged);
        let again = site.publish();
        assert!(again.unchanged, "{again:?}");
        assert_eq!(
            (again.root, again.files_read, again.nodes_new),
            (first.root, 0, 0)
        );
        assert_eq!((again.files, again.dirs, again.symlinks), (2, 2, 1));
        let src = site.src().to_path_buf();
        let changes: Vec<Step<'_>> = vec![
            (
                "a file grown",
                Box::new(|| fs::write(src.join("a.txt"), b"alpha!").expect("write")),
            ),
            (
                "a file's mode",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    let p = fs::Permissions::from_mode(0o600);
                    fs::set_permissions(src.join("sub/b.bin"), p).expect("chmod")
                }),
            ),
            (
                "a new file",
                Box::new(|| fs::write(src.join("sub/c"), b"c").expect("write")),
            ),
            (
                "a symlink retargeted",
                Box::new(|| {
                    fs::remove_file(src.join("link")).expect("unlink");
                    std::os::unix::fs::symlink("sub/c", src.join("link")).expect("link")
                }),
            ),
            (
                "a directory renamed",
                Box::new(|| fs::rename(src.join("sub"), src.join("sub2")).expect("rename")),
            ),
            (
                "a new empty directory",
                Box::new(|| fs::create_dir(src.join("sub2/d")).expect("mkdir")),
            ),
            (
                "a file removed",
                Box::new(|| fs::remove_file(src.join("sub2/c")).expect("rm")),
            ),
            (
                "a file replaced by rename, its size and mtime kept",
                Box::new(|| {
                    let (old, new) = (src.join("sub2/b.bin"), src.join("sub2/.b.new"));
                    let mtime = filetime::FileTime::from_last_modification_time(
                        &fs::metadata(&old).expect("stat"),
                    );
                    fs::write(&new, vec![8u8; 300_000]).expect("write");
                    filetime::set_file_mtime(&new, mtime).expect("mtime");
                    fs::rename(&new, &old).expect("rename");
                }),
            ),
        ];
        for (what, change) in changes {
            change();
            let r = site.publish();
            assert!(!r.unchanged, "{what}: {r:?}");
            assert_eq!(r.root, root_from_scratch(&site), "{what}");
            let again = site.publish();
            assert!(again.unchanged, "{what}, then nothing: {again:?}");
            assert_eq!(again.root, r.root, "{what}");
        }
    }

    #[test]
    fn a_change_to_the_stores_packs_the_cache_or_the_summary_breaks_the_seal() {
        let site = testkit::site();
        let first = site.publish();
        let cache = site.opts.state_dir.join("files-t");
        let summary = site.opts.state_dir.join("summary-t");
        let when = filetime::FileTime::from_unix_time(5, 0);
        let breaks: Vec<Step<'_>> = vec![
            (
                "another tree published into the store",
                Box::new(|| {
                    let mut other = site.opts.clone();
                    other.tree = "u".into();
                    other.source = site.dir.path().join("scratch-src");
                    fs::create_dir_all(&other.source).expect("src");
                    fs::write(other.source.join("u"), b"a file of its own").expect("u");
                    super::super::publish(&site.store, &testkit::key(), &other).expect("published");
                }),
            ),
            (
                "a pack grown",
                Box::new(|| {
                    let p = site.store.list_packs().expect("packs")[0].id;
                    let path = site
                        .dir
                        .path()
                        .join(format!("store/packs/{}.pack", p.to_hex()));
                    let mut bytes = fs::read(&path).expect("pack");
                    bytes.push(0);
                    fs::write(&path, bytes).expect("grown");
                }),
            ),
            (
                "the cache rewritten",
                Box::new(|| {
                    fs::write(&cache, fs::read(&cache).expect("cache")).expect("rewritten");
                    filetime::set_file_mtime(&cache, when).expect("mtime");
                }),
            ),
            (
                "the summary damaged",
                Box::new(|| {
                    let mut bytes = fs::read(&summary).expect("summary");
                    bytes[20] ^= 1;
                    fs::write(&summary, bytes).expect("damaged");
                }),
            ),
            (
                "the summary removed",
                Box::new(|| fs::remove_file(&summary).expect("rm")),
            ),
        ];
        let mut root = first.root;
        for (what, change) in breaks {
            assert!(site.publish().unchanged, "before {what}");
            change();
            let r = site.publish();
            assert!(!r.unchanged, "{what}: {r:?}");
            match what {
                // Its footer is not at its end any more: read again (the cached trailer
                // is for the size listed before), left out, its objects stored again (a
                // data pack's chunks in a new pack: another root from then on).
                "a pack grown" => {
                    assert_eq!(r.unreadable_packs.len(), 1, "{r:?}");
                    root = r.root;
                }
                _ => assert_eq!(r.root, root, "{what}"),
            }
        }
        assert!(site.publish().unchanged);
        // Composite files turned off: another identity, an ordinary publish.
        let mut plain = site.opts.clone();
        plain.composites = false;
        let r = super::super::publish(&site.store, &testkit::key(), &plain).expect("published");
        assert!(!r.unchanged && r.root == root, "{r:?}");
    }

    /// Publishes a tree "u" of one file into the site's store.
    fn publish_another_tree(site: &testkit::Site) -> crate::PublishReport {
        let mut other = site.opts.clone();
        other.tree = "u".into();
        other.source = site.dir.path().join("u-src");
        fs::create_dir_all(&other.source).expect("src");
        fs::write(other.source.join("u"), b"a file of its own").expect("u");
        super::super::publish(&site.store, &testkit::key(), &other).expect("published")
    }

    #[test]
    fn a_condemned_pack_breaks_the_seal_and_a_deleted_head_keeps_the_root() {
        let site = testkit::site();
        let first = site.publish();
        let u = publish_another_tree(&site);
        assert!(!site.publish().unchanged, "another tree's packs");
        assert!(site.publish().unchanged);
        // A gc condemns the other tree's pack: the store's packs, as a catalog reads them,
        // are not those the summary is sealed to.
        let condemned = pulpdist_format::Condemned {
            packs: u.packs.iter().map(|p| (p.id, 1)).collect(),
        };
        let list = site
            .dir
            .path()
            .join("store")
            .join(pulpdist_format::CONDEMNED_KEY);
        fs::create_dir_all(list.parent().expect("gc/")).expect("gc/");
        fs::write(list, condemned.encode()).expect("condemn");
        let r = site.publish();
        assert!(!r.unchanged && r.root == first.root, "{r:?}");
        assert!(site.publish().unchanged);
        // The head removed: version 1 again, with the same root.
        fs::remove_file(site.dir.path().join("store/heads/t")).expect("rm head");
        let r = site.publish();
        assert_eq!((r.version, r.root), (1, first.root));
    }
}
