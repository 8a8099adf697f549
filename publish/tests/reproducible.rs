//! The same input gives the same store bytes on any number of threads, in any store: packs
//! of the same layout (a site's requests do not depend on thread timing) named by their
//! content (FORMAT.md 3), so that two publishers can check each other.

use std::fs;
use std::path::{Path, PathBuf};

use pulpdist_format::{PackKind, SecretKey};
use pulpdist_publish::{publish, LocalStore, PublishOptions, PublishReport};
use pulpdist_testdata::random_bytes as noise;

/// A large file (several pieces for the pack writer), read beside files that share its
/// chunks (the walk is breadth-first: `c/` comes second) and many small ones.
fn tree(dir: &Path, version: u64) {
    let big = {
        let mut b = noise(20 << 20, 1);
        if version > 1 {
            b[10 << 20..(10 << 20) + 70_000].copy_from_slice(&noise(70_000, 99));
        }
        b
    };
    fs::create_dir_all(dir.join("a")).expect("a");
    fs::write(dir.join("a/big.bin"), &big).expect("big");
    for i in 0..300u64 {
        let d = dir.join(format!("b/{}", i % 7));
        fs::create_dir_all(&d).expect("b");
        let changed = version > 1 && i % 10 == 0;
        let body = if i % 3 == 0 {
            noise(
                5_000 + (i as usize * 911) % 90_000,
                i + 10 * u64::from(changed),
            )
        } else {
            format!(
                "file {i} of version {}\n",
                if changed { version } else { 1 }
            )
            .repeat(1 + i as usize % 40)
            .into_bytes()
        };
        fs::write(d.join(format!("{i}.txt")), body).expect("small");
    }
    // The same chunks as parts of the big file and of each other.
    fs::create_dir_all(dir.join("c")).expect("c");
    fs::write(dir.join("c/copy.bin"), &big[..5 << 20]).expect("copy");
    fs::write(dir.join("c/copy2.bin"), &big[..5 << 20]).expect("copy2");
}

struct Publisher {
    _dir: tempfile::TempDir,
    store: PathBuf,
    opts: PublishOptions,
}

impl Publisher {
    fn new(src: &Path, threads: usize) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let store = dir.path().join("store");
        let mut opts = PublishOptions::new("tree", src, dir.path().join("state"));
        opts.now = Some(1_800_000_000);
        opts.threads = Some(threads);
        // Small packs: where each pack ends depends on the order of everything before.
        opts.pack_target = 3 << 20;
        Publisher {
            _dir: dir,
            store,
            opts,
        }
    }

    fn publish(&self) -> PublishReport {
        let store = LocalStore::open(&self.store).expect("store");
        publish(&store, &SecretKey::from_seed([3; 32]), &self.opts).expect("publish")
    }

    /// Every file of the store but its lock files, by name.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![String::new()];
        while let Some(rel) = todo.pop() {
            for e in fs::read_dir(self.store.join(&rel)).expect("dir") {
                let e = e.expect("entry");
                let file = e.file_name().to_string_lossy().into_owned();
                let name = match rel.is_empty() {
                    true => file,
                    false => format!("{rel}/{file}"),
                };
                if e.file_type().expect("type").is_dir() {
                    if name != "locks" && name != "tmp" {
                        todo.push(name);
                    }
                } else {
                    out.push((name, fs::read(e.path()).expect("read")));
                }
            }
        }
        out.sort();
        out
    }
}

#[test]
fn the_same_two_versions_give_the_same_packs_on_any_number_of_threads() {
    let src = tempfile::tempdir().expect("src");
    let (v1, v2) = (src.path().join("v1"), src.path().join("v2"));
    tree(&v1, 1);
    tree(&v2, 2);
    let mut stores = Vec::new();
    for threads in [1, 2, 4, 4, 8] {
        let source = src.path().join("source");
        fs::rename(&v1, &source).expect("v1 in place");
        let p = Publisher::new(&source, threads);
        let first = p.publish();
        fs::rename(&source, &v1).expect("v1 back");
        fs::rename(&v2, &source).expect("v2 in place");
        let second = p.publish();
        fs::rename(&source, &v2).expect("v2 back");
        let data = |r: &PublishReport| r.packs.iter().filter(|p| p.kind == PackKind::Data).count();
        assert!(data(&first) >= 8, "{} data packs", data(&first));
        assert_eq!(second.deltas.len(), 1, "version 2 carries a delta");
        stores.push((threads, p.files()));
    }
    let (_, one) = &stores[0];
    for (threads, files) in &stores[1..] {
        let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(files), names(one), "{threads} threads: other objects");
        for ((name, a), (_, b)) in files.iter().zip(one) {
            assert!(a == b, "{threads} threads: {name} differs");
        }
    }
}
