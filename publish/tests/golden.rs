//! The golden vectors of docs/FORMAT.md: a fixed tree published with a fixed key, time and
//! pack seed must give exactly the checked-in store in `format/tests/golden/`.
//! Regenerate (after a deliberate format change, with FORMAT.md) with
//! `PULPDIST_REGEN_GOLDEN=1 cargo test -p pulpdist-server --test golden`.

use std::fs;
use std::path::{Path, PathBuf};

use filetime::{set_symlink_file_times, FileTime};
use pulpdist_format::SecretKey;
use pulpdist_publish::{publish, LocalStore, PublishOptions};

const TIME: i64 = 1_767_225_600;

/// The golden tree: a text file, a 100 kB file, an empty file, a symlink, an empty directory.
fn golden_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(root.join("sub")).expect("mkdir");
    fs::create_dir_all(root.join("empty")).expect("mkdir");
    fs::write(root.join("hello.txt"), b"hello, mirror\n").expect("write");
    // Left out by the golden filter rules.
    fs::write(root.join("scratch.tmp"), b"not published\n").expect("write");
    let mut data = vec![0u8; 100_000];
    blake3::Hasher::new()
        .update(b"golden")
        .finalize_xof()
        .fill(&mut data);
    fs::write(root.join("sub/data.bin"), &data).expect("write");
    fs::write(root.join("sub/empty-file"), b"").expect("write");
    std::os::unix::fs::symlink("../hello.txt", root.join("sub/link")).expect("symlink");
    for (p, mode) in [
        ("hello.txt", 0o644),
        ("sub/data.bin", 0o600),
        ("sub/empty-file", 0o644),
        ("empty", 0o755),
        ("sub", 0o755),
    ] {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    for p in [
        "hello.txt",
        "sub/data.bin",
        "sub/empty-file",
        "sub/link",
        "empty",
        "sub",
    ] {
        let t = FileTime::from_unix_time(TIME, 0);
        set_symlink_file_times(root.join(p), t, t).expect("mtime");
    }
}

/// The delta tree (FORMAT.md 5.6): version 1, then version 2 with a text file edited, a
/// package renamed to its next version with a few bytes changed, and a new file.
fn delta_tree(root: &Path, version: u32) {
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root.join("pkgs")).expect("mkdir");
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "line {i}: the quick brown fox mirrors the lazy dog\n"
        ));
    }
    let mut deb = vec![0u8; 5000];
    blake3::Hasher::new()
        .update(b"golden deb")
        .finalize_xof()
        .fill(&mut deb);
    if version == 1 {
        fs::write(root.join("a.txt"), &text).expect("write");
        fs::write(root.join("pkgs/tool_1.0_all.deb"), &deb).expect("write");
    } else {
        fs::write(
            root.join("a.txt"),
            text.replace("line 100:", "line 100 (edited):"),
        )
        .expect("write");
        deb[2000..2010].copy_from_slice(b"version1.1");
        fs::write(root.join("pkgs/tool_1.1_all.deb"), &deb).expect("write");
        fs::write(root.join("new.txt"), b"a new file\n").expect("write");
    }
    for p in [
        "a.txt",
        "pkgs",
        "",
        "new.txt",
        "pkgs/tool_1.0_all.deb",
        "pkgs/tool_1.1_all.deb",
    ] {
        let t = FileTime::from_unix_time(TIME + i64::from(version), 0);
        let _ = set_symlink_file_times(root.join(p), t, t);
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../format/tests/golden")
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo: Vec<String> = vec!["heads".into(), "packs".into(), "history".into()];
    while let Some(rel) = todo.pop() {
        let mut names: Vec<_> = fs::read_dir(dir.join(&rel))
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for p in names {
            let name = format!("{rel}/{}", p.file_name().expect("name").to_string_lossy());
            match p.is_dir() {
                true => todo.push(name),
                false => out.push((name, fs::read(&p).expect("read"))),
            }
        }
    }
    out.sort();
    out
}

#[test]
fn publishing_the_golden_tree_gives_the_checked_in_store() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("tree");
    golden_tree(&src);
    let store = LocalStore::open(tmp.path().join("store")).expect("store");
    let key = SecretKey::from_seed([7; 32]);
    let mut opts = PublishOptions::new("golden", &src, tmp.path().join("state"));
    opts.now = Some(TIME);
    opts.expires_in = 100 * 365 * 86_400;
    // Packs named by their content, chunks in file order: the store is reproducible (on
    // any number of threads; one here).
    opts.threads = Some(1);
    opts.filter = pulpdist_format::filter::Filter::parse_lines("- *.tmp\n+ /sub/***\n")
        .expect("golden filter");
    let report = publish(&store, &key, &opts).expect("publish");
    // A second tree in the same store, published twice: version 2 carries a delta pack.
    let dsrc = tmp.path().join("delta-tree");
    let mut dopts = PublishOptions::new("golden-delta", &dsrc, tmp.path().join("state-delta"));
    dopts.now = Some(TIME);
    dopts.expires_in = 100 * 365 * 86_400;
    dopts.threads = Some(1);
    delta_tree(&dsrc, 1);
    let d1 = publish(&store, &key, &dopts).expect("publish delta tree v1");
    delta_tree(&dsrc, 2);
    let d2 = publish(&store, &key, &dopts).expect("publish delta tree v2");
    assert_eq!(d2.deltas.len(), 1);
    assert_eq!(d2.deltas[0].files, 3);
    assert_eq!(d2.deltas[0].with_reference, 2);
    let fresh = files(store.root());
    let golden = golden_dir();
    if std::env::var_os("PULPDIST_REGEN_GOLDEN").is_some() {
        // Only the store is written again: the other vectors (composite.node, gc/) and
        // their lines in expected.txt come from the format crate's tests.
        for dir in ["heads", "packs", "history"] {
            let _ = fs::remove_dir_all(golden.join(dir));
        }
        for (name, bytes) in &fresh {
            let p = golden.join(name);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, bytes).expect("write");
        }
        fs::write(
            golden.join("golden.key.pub"),
            key.public().to_text("golden"),
        )
        .expect("key");
        let root = report.root.expect("root");
        let kept: String = fs::read_to_string(golden.join("expected.txt"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let key = l.split(' ').next().unwrap_or_default();
                !["root", "hello.txt", "delta-root-1", "delta-root-2"].contains(&key)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(
            golden.join("expected.txt"),
            format!(
                "root {root}\nhello.txt {}\ndelta-root-1 {}\ndelta-root-2 {}\n{kept}",
                blake3::hash(b"hello, mirror\n").to_hex(),
                d1.root.expect("root"),
                d2.root.expect("root"),
            ),
        )
        .expect("expected");
    }
    let checked_in = files(&golden);
    assert_eq!(
        fresh.len(),
        checked_in.len(),
        "different objects than the golden store"
    );
    for ((n1, b1), (n2, b2)) in fresh.iter().zip(&checked_in) {
        assert_eq!(n1, n2);
        assert!(b1 == b2, "{n1} differs from the golden vector: the encoding changed (update docs/FORMAT.md and regenerate)");
    }
}
