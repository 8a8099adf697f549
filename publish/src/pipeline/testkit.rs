//! What the publish phases' unit tests share: a store, a source tree and a state in one
//! temporary directory, and a run of the pipeline's phases on them.

use std::fs;
use std::path::Path;

use pulpdist_format::{Head, SecretKey, SignedHead, TrustedKeys};

use super::workers::Workers;
use super::{PublishOptions, Run};
use crate::store::{LocalStore, Store};

pub(super) struct Site {
    pub(super) dir: tempfile::TempDir,
    pub(super) store: LocalStore,
    pub(super) opts: PublishOptions,
}

pub(super) fn key() -> SecretKey {
    SecretKey::from_seed([5; 32])
}

/// A source `{a.txt, sub/b.bin, link -> a.txt}`, a store and a state, one thread.
pub(super) fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).expect("source");
    fs::write(src.join("a.txt"), b"alpha").expect("a.txt");
    fs::write(src.join("sub/b.bin"), vec![7u8; 300_000]).expect("b.bin");
    std::os::unix::fs::symlink("a.txt", src.join("link")).expect("link");
    let store = LocalStore::open(dir.path().join("store")).expect("store");
    let mut opts = PublishOptions::new("t", src, dir.path().join("state"));
    opts.threads = Some(1);
    opts.now = Some(1_000);
    Site { dir, store, opts }
}

impl Site {
    pub(super) fn src(&self) -> &Path {
        &self.opts.source
    }

    /// A whole publish.
    pub(super) fn publish(&self) -> super::PublishReport {
        super::publish(&self.store, &key(), &self.opts).expect("published")
    }

    /// The phases' shared context for version `version`.
    pub(super) fn run(&self, version: u64) -> Run<'_> {
        fs::create_dir_all(&self.opts.state_dir).expect("state");
        Run {
            store: &self.store,
            opts: &self.opts,
            workers: Workers::new(Some(1)).expect("threads"),
            tmp_dir: self.store.tmp_dir().expect("a local store has one"),
            version,
        }
    }

    /// The tree's head in the store, verified.
    pub(super) fn head(&self) -> Head {
        let stored = self.store.read_head("t").expect("read").expect("a head");
        let trusted = TrustedKeys::new(vec![key().public()]);
        let signed = SignedHead::decode_and_verify(&stored.bytes, &trusted).expect("verified");
        signed.head().clone()
    }

    /// Writes `head`, signed by `by`, as the tree's head (what a hostile store holds).
    pub(super) fn plant_head(&self, head: &Head, by: &SecretKey) {
        let bytes = head.sign(by).expect("signed");
        fs::write(self.dir.path().join("store/heads/t"), bytes).expect("planted");
    }
}
