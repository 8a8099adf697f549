//! End to end: the real binary publishes generated trees into a local store and syncs a
//! mirror, version after version; every refusal the format promises is exercised.

use crate::common;

use std::fs;
use std::path::Path;

use common::*;

/// Regular files under `dir`, at any depth.
fn walk_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .map(|p| if p.is_dir() { walk_files(&p) } else { 1 })
        .sum()
}

/// The store's largest pack: the one holding the chunks (the others are the index and
/// small packs, if any).
fn largest_pack(site: &Site) -> std::path::PathBuf {
    fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| fs::metadata(p).expect("meta").len())
        .expect("a pack")
}

fn generate(site: &Site) {
    pulpdist_testdata::generate(&site.src(), 11, 1).expect("generate");
}

#[test]
fn versions_sync_byte_identical_and_cost_follows_change() {
    let site = Site::new();
    generate(&site);
    let p1 = site.publish();
    assert_eq!(p1["version"], 1);
    let s1 = site.sync();
    assert_eq!(s1["version"], 1);
    assert_same_tree(&site.src(), &site.mirror());
    for step in 1..=4u64 {
        pulpdist_testdata::evolve(&site.src(), 11, step).expect("evolve");
        let p = site.publish();
        assert_eq!(p["version"], step + 1);
        // Only changed files are read again (the rest match the inode cache).
        assert!(
            p["files_read"].as_u64() < Some(p["files"].as_u64().expect("files") / 2),
            "{p}"
        );
        let s = site.sync();
        assert_eq!(s["version"], step + 1);
        assert_same_tree(&site.src(), &site.mirror());
        // The node cache is pruned once it has grown to twice the applied tree's nodes
        // (at most one per directory) plus a slack of 16 (client/src/state.rs).
        let dirs = 1 + snapshot(&site.src())
            .values()
            .filter(|d| d.starts_with("dir"))
            .count();
        let cached = walk_files(&site.p("downstream/.tree.pulpdist/nodes"));
        assert!(
            cached <= 2 * dirs + 16,
            "{cached} cached nodes for {dirs} directories"
        );
        assert!(s["nodes_pruned"].is_u64(), "{s}");
        // One version behind: the head, the index pack and the new data packs (3 + new packs
        // at most; content that came back from an older version may need one older pack).
        let packs = p["packs"].as_u64().expect("packs");
        assert!(
            s["requests"].as_u64().expect("requests") <= 3 + packs,
            "{s} {p}"
        );
        // Bytes fetched stay within 3 % (plus the head) of what the publish added.
        let stored = p["bytes_stored"].as_u64().expect("stored") as f64;
        assert!(
            (s["bytes_fetched"].as_u64().expect("bytes") as f64) <= stored * 1.03 + 4096.0,
            "{s} {p}"
        );
    }
    // Unchanged tree: publish reads nothing and builds no node (every directory matches
    // the publisher's cache, which is left as it was); sync is one request.
    let cache = site.p(".store.pulpdist-publish/tree/files-tree");
    let cached = fs::read(&cache).expect("publisher cache");
    let p = site.publish();
    assert_eq!(p["files_read"], 0);
    assert_eq!(p["chunks_new"], 0);
    assert_eq!(p["nodes_new"], 0);
    assert_eq!(fs::read(&cache).expect("publisher cache"), cached);
    let s = site.sync();
    assert_eq!(s["requests"], 1);
    assert_eq!(s["up_to_date"], true);
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn a_damaged_publisher_cache_costs_a_read_not_a_wrong_index() {
    let site = Site::new();
    generate(&site);
    let p1 = site.publish();
    let cache = site.p(".store.pulpdist-publish/tree/files-tree");
    let mut bytes = fs::read(&cache).expect("publisher cache");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&cache, &bytes).expect("damage");
    // Every file is read again, and the tree is indexed as before.
    let p2 = site.publish();
    assert_eq!(p2["files_read"], p1["files"], "{p2}");
    assert_eq!(p2["root"], p1["root"]);
    assert_eq!(p2["nodes_new"], 0);
    // The cache was written anew: the next publish reads nothing.
    let p3 = site.publish();
    assert_eq!(p3["files_read"], 0);
    assert_eq!(p3["root"], p1["root"]);
}

#[test]
fn an_unchanged_tree_is_published_again_without_reading_the_catalog() {
    let site = Site::new();
    generate(&site);
    let p1 = site.publish();
    assert_eq!(p1["unchanged"], false);
    // A catalog read writes each pack's trailer here: none is written by the next publish.
    let trailers = site.p(".store.pulpdist-publish/tree/trailers");
    fs::remove_dir_all(&trailers).expect("drop the trailer cache");
    let p2 = site.publish();
    assert_eq!(p2["unchanged"], true, "{p2}");
    assert_eq!((&p2["root"], &p2["files_read"]), (&p1["root"], &0.into()));
    assert_eq!(
        (&p2["nodes_new"], &p2["chunks_new"]),
        (&0.into(), &0.into())
    );
    assert_eq!(p2["packs"], 0);
    assert_eq!((&p2["files"], &p2["version"]), (&p1["files"], &2.into()));
    assert!(!trailers.exists());
    let s = site.sync();
    assert_eq!(s["version"], 2);
    assert_same_tree(&site.src(), &site.mirror());
    // A change: the ordinary publish, which reads the catalog.
    pulpdist_testdata::evolve(&site.src(), 12, 1).expect("evolve");
    let p3 = site.publish();
    assert_eq!(p3["unchanged"], false, "{p3}");
    assert!(p3["files_read"].as_u64() > Some(0), "{p3}");
    assert!(trailers.exists());
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

/// A pack another tree's publish adds while this tree's publish runs (held at its head) is
/// not sealed into the summary, which holds the packs the catalog read and those the
/// publish wrote: the next publish is an ordinary one, then the one after is unchanged.
#[test]
fn a_pack_added_while_a_publish_runs_is_not_sealed_into_its_summary() {
    let site = Site::new();
    generate(&site);
    site.publish();
    pulpdist_testdata::evolve(&site.src(), 13, 1).expect("evolve");
    let release = site.p("release");
    let args = site.publish_cmd(&site.key(), &["--json"]);
    let held = common::hold_at(&args, "publish.head", &release);
    let other = site.p("other-src");
    fs::create_dir_all(&other).expect("other");
    fs::write(other.join("u"), b"a file of another tree").expect("u");
    let store = site.store();
    let key = site.key();
    common::run_json(&[
        "publish",
        "--store",
        s(&store),
        "--tree",
        "other",
        "--key",
        s(&key),
        s(&other),
    ]);
    fs::write(&release, b"").expect("release");
    let out = held.wait_with_output().expect("held publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = site.publish();
    assert_eq!(
        p["unchanged"], false,
        "sealed to a pack its catalog never read: {p}"
    );
    let p = site.publish();
    assert_eq!(p["unchanged"], true, "{p}");
}

/// A first sync in waves killed while writing a later wave leaves the mirror without a
/// single file under its own name (nothing is renamed before every wave is written), and
/// the next sync finishes it: the tree, with no temporary file left. Its counts are those
/// of a sync planned at once.
#[test]
fn a_first_sync_in_waves_killed_midway_is_finished_by_the_next() {
    let site = Site::new();
    generate(&site);
    site.publish();
    let waves = ["--wave-files".to_string(), "8".to_string()];
    let once = site.p("at-once");
    let args = common::sync_cmd(s(&site.store()), "tree", &site.trust(), &once, &[]);
    let whole = common::run_json(&strs(&args));
    let mut args = site.sync_args();
    args.extend(waves.iter().cloned());
    // Killed halfway through the files: waves of 8 entries, so in a later wave.
    let files = whole["files"].as_u64().expect("files");
    assert!(files > 20, "{whole}");
    let out = bin()
        .args(&args)
        .env("PULPDIST_FAILPOINT", format!("sync.write:{}", files / 2))
        .output()
        .expect("run");
    assert!(!out.status.success(), "the fail point stops it");
    let named: Vec<_> = walkdir_files(&site.mirror())
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(".pulpdist-"))
        .collect();
    assert!(
        named.is_empty(),
        "renamed before every wave was written: {named:?}"
    );
    let mut args = site.sync_args();
    args.extend(waves.iter().cloned());
    let log = site.p("waves.log");
    let r = run_json_logged(&args, &log);
    let planned = fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter(|l| *l == "sync.planned")
        .count();
    assert!(planned >= 3, "{planned} waves");
    assert_same_tree(&site.src(), &site.mirror());
    let left: Vec<_> = walkdir_files(&site.mirror())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".pulpdist-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        (&r["files"], &r["symlinks"]),
        (&whole["files"], &whole["symlinks"])
    );
    // A fresh mirror in waves: the same counts and bytes as at once.
    let fresh = site.p("fresh");
    let mut args = common::sync_cmd(s(&site.store()), "tree", &site.trust(), &fresh, &[]);
    args.extend(waves.iter().cloned());
    let w = common::run_json(&strs(&args));
    assert_same_tree(&site.src(), &fresh);
    for k in [
        "files",
        "symlinks",
        "chunks_fetched",
        "chunks_reused",
        "version",
    ] {
        assert_eq!(w[k], whole[k], "{k}: {w} against {whole}");
    }
    let bytes = |v: &serde_json::Value| v["bytes_fetched"].as_u64().expect("bytes") as f64;
    assert!(
        bytes(&w) <= bytes(&whole) * 1.03 + 4096.0,
        "{w} against {whole}"
    );
}

/// A first sync in waves that fails in a later wave (a chunk the store serves damaged)
/// undoes every wave it wrote: no file, temporary file or new directory is left.
#[test]
fn a_first_sync_in_waves_that_fails_in_a_later_wave_leaves_nothing() {
    let site = Site::new();
    generate(&site);
    site.publish();
    let pack = largest_pack(&site);
    let good = fs::read(&pack).expect("pack");
    let mut bad = good.clone();
    // Late in the chunks (packs hold them in walk order): a late wave's.
    let at = good.len() * 9 / 10;
    bad[at] ^= 0xff;
    fs::write(&pack, &bad).expect("damage");
    let mut args = site.sync_args();
    args.extend(["--wave-files".to_string(), "8".to_string()]);
    let log = site.p("waves.log");
    let out = bin()
        .args(&args)
        .env("PULPDIST_FAILPOINT_LOG", &log)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a damaged chunk fails the sync");
    let steps = fs::read_to_string(&log).expect("log");
    assert!(
        steps.lines().any(|l| l == "sync.write"),
        "the damage was in the first wave: nothing was written to undo"
    );
    // The mirror's own directory, made by this sync and left empty, is removed too; and
    // the mark that it was being filled (it is not).
    let left = fs::read_dir(site.mirror()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "files or directories left behind");
    assert!(!site.p("downstream/.tree.pulpdist/applying-tree").exists());
    fs::write(&pack, &good).expect("repair");
    let mut args = site.sync_args();
    args.extend(["--wave-files".to_string(), "8".to_string()]);
    common::run_json(&strs(&args));
    assert_same_tree(&site.src(), &site.mirror());
}

/// Every regular file and symlink under `dir`.
fn walkdir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("list").flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn a_lost_data_pack_is_stored_again_by_the_next_publish() {
    let site = Site::new();
    generate(&site);
    let p1 = site.publish();
    let lost = largest_pack(&site);
    fs::remove_file(&lost).expect("lose the pack");
    // The unchanged tree is published again: what the lost pack held is read and stored
    // again, in the same pack under the same name (named by its content), so the nodes
    // that named it are right again.
    let p2 = site.publish();
    assert!(p2["files_read"].as_u64() > Some(0), "{p2}");
    assert!(p2["chunks_new"].as_u64() > Some(0), "{p2}");
    assert!(lost.exists(), "{} is back", lost.display());
    assert_eq!(p2["root"], p1["root"]);
    let s = site.sync();
    assert_eq!(s["version"], 2);
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn a_closed_stdout_ends_quietly_and_a_full_one_is_an_error() {
    let site = Site::new();
    generate(&site);
    // `pulpdist publish --json | head -c 0`: the reader is gone before the report.
    let mut child = bin()
        .args(strs(&site.publish_cmd(&site.key(), &["--json"])))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    // A report that cannot be written (a full disk) fails the command and says so.
    let full = fs::File::create("/dev/full").expect("/dev/full");
    let out = bin()
        .args(strs(&site.publish_cmd(&site.key(), &[])))
        .stdout(full)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("writing the report to standard output"),
        "{err}"
    );
}

#[test]
fn a_kept_node_names_the_copy_a_fresh_build_would() {
    let site = Site::new();
    generate(&site);
    let p1 = site.publish();
    // A second copy of the data, in a pack whose id is smaller than any (FORMAT.md 8.6:
    // the smallest pack id wins), as two trees publishing the same file at once leave.
    let data = largest_pack(&site);
    fs::copy(
        data,
        site.store().join(format!("packs/{}.pack", "0".repeat(64))),
    )
    .expect("copy");
    // The cached nodes name the other copy: they are built again, as without a cache.
    let p2 = site.publish();
    assert_ne!(p2["root"], p1["root"], "{p2}");
    assert!(p2["nodes_new"].as_u64() > Some(0), "{p2}");
    assert_eq!(p2["files_read"], 0);
    fs::remove_file(site.p(".store.pulpdist-publish/tree/files-tree")).expect("drop the cache");
    let p3 = site.publish();
    assert_eq!(p3["root"], p2["root"]);
}

#[test]
fn the_publisher_cache_holds_only_for_the_same_chunk_sizes() {
    let site = Site::new();
    generate(&site);
    let p1 = site.publish();
    // The tree is made anew with other chunk sizes: every file is cut again.
    fs::remove_file(site.store().join("heads/tree")).expect("drop the head");
    let p2 = site.publish_with(&["--chunk-sizes", "4096,16384,65536"]);
    assert_eq!(p2["version"], 1);
    assert_eq!(p2["files_read"], p1["files"], "{p2}");
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn a_cache_that_cannot_be_written_is_a_warning_after_the_head() {
    let site = Site::new();
    generate(&site);
    site.publish();
    // The temporary file's name is taken by a directory: the cache cannot be written.
    let blocker = site.p(".store.pulpdist-publish/tree/files-tree.tmp");
    fs::create_dir(&blocker).expect("blocker");
    pulpdist_testdata::evolve(&site.src(), 11, 1).expect("evolve");
    let out = site.try_publish(&site.key(), &["--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("files-tree.tmp"),
        "{err}"
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["version"], 2);
    assert!(
        p["cache_error"]
            .as_str()
            .is_some_and(|e| e.contains("files-tree.tmp")),
        "{p}"
    );
    // The version is out and syncs; the next publish uses the last cache that was written.
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    fs::remove_dir(&blocker).expect("unblock");
    let p3 = site.publish();
    assert_eq!(p3["cache_error"], serde_json::Value::Null);
}

#[test]
fn dry_run_prints_plan_and_changes_nothing() {
    let site = Site::new();
    generate(&site);
    site.publish();
    let out = site.try_sync(&["--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("plan:") && text.contains("write ") && text.contains("meta "),
        "{text}"
    );
    // Metadata comes after every payload file in the plan.
    let last_write = text.rfind("write ").expect("write");
    let first_meta = text.find("meta ").expect("meta");
    assert!(last_write < first_meta);
    assert!(!site.mirror().exists() || fs::read_dir(site.mirror()).expect("dir").next().is_none());
}

#[test]
fn rollback_freeze_foreign_key_wrong_tree_refused() {
    let site = Site::new();
    generate(&site);
    site.publish();
    site.sync();
    let v1_head = fs::read(site.store().join("heads/tree")).expect("head");
    pulpdist_testdata::evolve(&site.src(), 11, 1).expect("evolve");
    site.publish();
    site.sync();
    let before = snapshot(&site.mirror());

    // Rollback: the store serves the old (validly signed) head again.
    let v2_head = fs::read(site.store().join("heads/tree")).expect("head");
    fs::write(site.store().join("heads/tree"), &v1_head).expect("write");
    let out = site.try_sync(&[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rollback"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(site.store().join("heads/tree"), &v2_head).expect("write");

    // Freeze: a head past its expiry.
    let out = site.try_sync(&["--now", "99999999999"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));

    // Foreign key.
    let other = site.p("other.key");
    assert!(run(&["keygen", s(&other)]).status.success());
    let out = run(&strs(&sync_cmd(
        s(&site.store()),
        "tree",
        &format!("{}.pub", s(&other)),
        &site.mirror(),
        &[],
    )));
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the trusted keys"));

    // Mix and match: tree 'tree' presented as tree 'other'.
    fs::copy(
        site.store().join("heads/tree"),
        site.store().join("heads/other"),
    )
    .expect("copy");
    let out = run(&strs(&sync_cmd(
        s(&site.store()),
        "other",
        &site.trust(),
        &site.p("other-mirror"),
        &[],
    )));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is for tree 'tree'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        before,
        snapshot(&site.mirror()),
        "a refused sync changed the mirror"
    );
}

fn packs(store: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut v: Vec<_> = fs::read_dir(store.join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let len = fs::metadata(&p).expect("md").len();
            (p, len)
        })
        .collect();
    v.sort();
    v
}

/// Corrupts every 64th byte of a pack's objects (header and trailer left intact), so
/// whichever objects the sync needs from it are damaged.
fn corrupt_objects(path: &Path) {
    let mut b = fs::read(path).expect("read");
    let n = b.len();
    let end = u64::from_le_bytes(b[n - 16..n - 8].try_into().expect("footer")) as usize;
    for i in (40..end).step_by(64) {
        b[i] ^= 0x55;
    }
    fs::write(path, b).expect("write");
}

#[test]
fn tampered_index_and_chunks_refused_previous_version_kept() {
    let site = Site::new();
    generate(&site);
    site.publish();
    site.sync();
    let before_packs = packs(&site.store());
    pulpdist_testdata::evolve(&site.src(), 11, 1).expect("evolve");
    // Chunks and nodes only: a damaged delta pack is not refused but bypassed (deltas.rs).
    site.publish_with(&["--deltas", "0"]);
    let new: Vec<_> = packs(&site.store())
        .into_iter()
        .filter(|p| !before_packs.contains(p))
        .collect();
    let before = snapshot(&site.mirror());
    let backup: Vec<(std::path::PathBuf, Vec<u8>)> = new
        .iter()
        .map(|(p, _)| (p.clone(), fs::read(p).expect("read")))
        .collect();
    // Each new pack in turn: corrupt a byte in the middle of its objects.
    for (path, _) in &new {
        // Forget what an earlier attempt verified (nodes, staged chunks), so this attempt
        // needs the corrupted pack.
        for sub in ["nodes", "staging"] {
            let _ = fs::remove_dir_all(site.p("downstream/.tree.pulpdist").join(sub));
        }
        corrupt_objects(path);
        let out = site.try_sync(&[]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains("hashes to") || err.contains("decompress") || err.contains("invalid"),
            "{err}"
        );
        assert_eq!(
            before,
            snapshot(&site.mirror()),
            "a refused sync changed the mirror"
        );
        for (p, b) in &backup {
            fs::write(p, b).expect("restore");
        }
    }
    // Restored store: the sync completes.
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn symlink_in_mirror_cannot_redirect_writes() {
    let site = Site::new();
    generate(&site);
    let outside = site.p("outside");
    fs::create_dir_all(&outside).expect("outside");
    // Upstream v1: 'escape' is a symlink to a directory outside the tree.
    std::os::unix::fs::symlink(&outside, site.src().join("escape")).expect("symlink");
    site.publish();
    site.sync();
    // Upstream v2: 'escape' is a real directory with a file in it.
    fs::remove_file(site.src().join("escape")).expect("rm");
    fs::create_dir(site.src().join("escape")).expect("mkdir");
    fs::write(site.src().join("escape/payload"), b"must stay inside").expect("write");
    // Someone also plants a symlink where the mirror has a directory.
    let pool = site.mirror().join("pool/main");
    fs::remove_dir_all(&pool).expect("rm pool");
    std::os::unix::fs::symlink(&outside, &pool).expect("plant");
    pulpdist_testdata::evolve(&site.src(), 11, 1).expect("evolve");
    site.publish();
    let s = site.try_sync(&["--full"]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    assert_eq!(
        fs::read_dir(&outside).expect("outside").count(),
        0,
        "a write escaped the tree"
    );
    assert_same_tree(&site.src(), &site.mirror());
}

/// Local chunk sources are read only through real directories of the mirror: a directory
/// replaced by a symlink to matching files elsewhere is not read, whether the new version
/// changes it (`a`) or not (`b`).
#[test]
fn chunks_are_not_reused_through_a_symlinked_directory() {
    let site = Site::new();
    let data: Vec<u8> = common::noise(300_000, 11);
    let other: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    for (dir, bytes) in [("a", &data), ("b", &other)] {
        fs::create_dir_all(site.src().join(dir)).expect("dir");
        fs::write(site.src().join(dir).join("f.bin"), bytes).expect("file");
    }
    site.publish();
    site.sync();
    // v2: copies of both files elsewhere, so a site could take their chunks locally.
    fs::write(site.src().join("a/g.bin"), &data).expect("copy");
    fs::create_dir_all(site.src().join("c")).expect("dir");
    fs::write(site.src().join("c/copy.bin"), &other).expect("copy");
    site.publish_with(&["--deltas", "0"]);
    // The mirror's a/ and b/ become symlinks to identical copies outside the tree.
    for dir in ["a", "b"] {
        let outside = site.p(&format!("outside-{dir}"));
        assert!(std::process::Command::new("cp")
            .args(["-a", s(&site.mirror().join(dir)), s(&outside)])
            .status()
            .expect("cp")
            .success());
        fs::remove_dir_all(site.mirror().join(dir)).expect("rm");
        std::os::unix::fs::symlink(&outside, site.mirror().join(dir)).expect("plant");
    }
    let r = site.sync();
    assert_eq!(r["bytes_reused"], 0, "read through a symlink: {r}");
    assert_eq!(
        fs::read(site.mirror().join("c/copy.bin")).expect("copy"),
        other
    );
    assert!(site.mirror().join("a").is_dir() && !site.mirror().join("a").is_symlink());
    assert_eq!(fs::read(site.mirror().join("a/g.bin")).expect("g"), data);
}

/// A local file whose old and new index entries have the same size and mtime holds its old
/// content: its chunks are taken as the old entry's, never claimed as the new entry's.
#[test]
fn a_file_matching_both_entries_is_read_as_its_old_version() {
    let site = Site::new();
    let old: Vec<u8> = common::noise(200_000, 7);
    let new: Vec<u8> = old.iter().map(|b| b ^ 0xa5).collect();
    let f = site.src().join("f.bin");
    fs::create_dir_all(site.src()).expect("src");
    fs::write(&f, &old).expect("v1");
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let set_mtime = |p: &Path| {
        fs::File::options()
            .write(true)
            .open(p)
            .and_then(|h| h.set_modified(mtime))
            .expect("mtime")
    };
    set_mtime(&f);
    site.publish();
    site.sync();
    // v2: f.bin gets other bytes of the same size and mtime (a new inode, so publish reads
    // it), and g.bin is a copy of the old f.bin.
    let tmp = site.src().join("f.tmp");
    fs::write(&tmp, &new).expect("new");
    set_mtime(&tmp);
    fs::rename(&tmp, &f).expect("rename");
    fs::write(site.src().join("g.bin"), &old).expect("copy");
    site.publish_with(&["--deltas", "0"]);
    let r = site.sync();
    assert_eq!(
        r["bytes_reused"],
        old.len() as u64,
        "only the old content is local: {r}"
    );
    assert_same_tree(&site.src(), &site.mirror());
}

/// A source file rewritten in place with its size and mtime put back (`cp -p` over it, a
/// tool that restores times) is read again by the next publish: its change time moved.
/// Before, the publisher kept its old chunks and every site stayed on the old bytes.
#[test]
fn a_file_rewritten_in_place_with_its_mtime_put_back_is_published_anew() {
    let site = Site::new();
    let old: Vec<u8> = common::noise(100_000, 9);
    let new: Vec<u8> = old.iter().map(|b| b ^ 0x5a).collect();
    let f = site.src().join("f.bin");
    fs::create_dir_all(site.src()).expect("src");
    fs::write(&f, &old).expect("v1");
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let set_mtime = || {
        fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(mtime))
            .expect("mtime")
    };
    set_mtime();
    site.publish();
    site.sync();
    // The same inode, size and mtime; other bytes.
    let ino = fs::metadata(&f)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("ino");
    fs::write(&f, &new).expect("rewrite in place");
    set_mtime();
    assert_eq!(
        fs::metadata(&f)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("ino"),
        ino
    );
    let p = site.publish();
    assert_eq!(p["files_read"], 1, "{p}");
    site.sync();
    assert_eq!(fs::read(site.mirror().join("f.bin")).expect("f"), new);
    assert_same_tree(&site.src(), &site.mirror());
    // Unchanged since: nothing is read.
    let p = site.publish();
    assert_eq!(p["files_read"], 0, "{p}");
}

#[test]
fn killed_sync_resumes_without_refetching_and_never_tears_a_file() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 5, 4).expect("generate");
    site.publish();
    site.sync();
    let v1 = snapshot(&site.mirror());
    pulpdist_testdata::evolve(&site.src(), 5, 1).expect("evolve");
    let old_packs = packs(&site.store());
    // No delta: with one, this site would not need the hidden pack (tests/it/deltas.rs).
    let p = site.publish_with(&["--deltas", "0"]);
    let total_chunks = p["chunks_new"].as_u64().expect("chunks");

    // A sync that dies in the middle: one new pack is missing, so the fetch phase fails
    // after verifying and staging what the other packs held.
    let new_packs: Vec<_> = packs(&site.store())
        .into_iter()
        .filter(|p| !old_packs.contains(p))
        .collect();
    let (victim, _) = new_packs
        .iter()
        .max_by_key(|(_, l)| *l)
        .expect("a pack")
        .clone();
    let hidden = site.p("hidden.pack");
    fs::rename(&victim, &hidden).expect("hide");
    let out = site.try_sync(&[]);
    assert!(!out.status.success());
    assert_eq!(
        v1,
        snapshot(&site.mirror()),
        "a failed fetch changed the mirror"
    );
    fs::rename(&hidden, &victim).expect("restore");

    // Killed (fail points: the process aborts there, as kill -9 would) once every chunk is
    // staged, in the middle of writing, of renaming, and of deleting.
    for at in ["sync.write:1", "sync.rename:2", "sync.delete:1"] {
        let out = bin()
            .args(site.sync_args())
            .env("PULPDIST_FAILPOINT", at)
            .output()
            .expect("run");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("fail point"),
            "{at} not reached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        common::assert_whole(&site.mirror(), &v1, &snapshot(&site.src()), at);
    }
    let s = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    // What the killed attempts verified and staged was not fetched again.
    assert_eq!(s["chunks_fetched"], 0, "{s}, {total_chunks} new chunks");
    // No temporary file is left behind.
    assert!(!snapshot(&site.mirror())
        .keys()
        .any(|k| k.to_string_lossy().contains(".pulpdist-")));
}

#[test]
fn two_publishers_of_one_tree_do_not_corrupt_it() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 3, 6).expect("generate");
    let args = site.publish_cmd(&site.key(), &[]);
    let a = bin()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let b = bin()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (a, b) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    for o in [&a, &b] {
        if !o.status.success() {
            assert_eq!(
                o.status.code(),
                Some(4),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("being published by another process")
            );
        }
    }
    let s1 = site.sync();
    assert!(s1["version"] == 1 || s1["version"] == 2);
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn a_sync_that_died_while_renaming_is_followed_by_a_full_check() {
    let site = Site::new();
    generate(&site);
    site.publish();
    site.sync();
    // As if a sync had died in its rename phase: the mark is left, a file in a directory
    // the next index diff would skip holds other content, and a temporary file lies there.
    let state = site.p("downstream/.tree.pulpdist");
    fs::write(state.join("applying-tree"), b"renaming files into place\n").expect("mark");
    let victim = snapshot(&site.mirror())
        .into_iter()
        .find(|(p, d)| d.starts_with("file") && p.components().count() > 2)
        .map(|(p, _)| p)
        .expect("a nested file");
    fs::write(site.mirror().join(&victim), b"half-applied content").expect("damage");
    let stray = site
        .mirror()
        .join(victim.parent().expect("dir"))
        .join(".x.pulpdist-tmp");
    fs::write(&stray, b"left over").expect("stray");
    let r = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    assert!(!state.join("applying-tree").exists(), "{r}");
    // Back to normal: the next sync is one request.
    assert_eq!(site.sync()["requests"], 1);
}

/// Regression: a directory symlink planted over an unchanged subtree (or the subtree
/// deleted) was replaced by an empty directory and the version recorded; only `--full`
/// refilled it. The sync that replaces it refills it, and writes nothing through the link.
#[test]
fn a_planted_symlink_over_an_unchanged_subtree_is_replaced_and_refilled() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 81, 1).expect("generate");
    site.publish();
    site.sync();
    let victim = site.p("victim");
    fs::create_dir_all(&victim).expect("victim");
    fs::write(victim.join("keep"), b"not the mirror's").expect("victim file");
    let victim_before = snapshot(&victim);
    for round in 0..2 {
        // A change elsewhere: pool/ stays the same in the new version.
        fs::write(site.src().join(format!("docs-change-{round}")), b"new").expect("change");
        site.publish();
        fs::remove_dir_all(site.mirror().join("pool")).expect("remove pool");
        if round == 0 {
            std::os::unix::fs::symlink(&victim, site.mirror().join("pool")).expect("plant");
        }
        site.sync();
        assert!(fs::symlink_metadata(site.mirror().join("pool"))
            .expect("pool")
            .is_dir());
        assert_same_tree(&site.src(), &site.mirror());
        assert_eq!(victim_before, snapshot(&victim), "written through the link");
    }
}

/// A configuration file's relative paths are its own directory's (not the caller's), a
/// flag turns off what the file turns on (`--full=false`), and `adopt`, meant once, is a
/// flag only: a file cannot make every sync delete what a directory held.
#[test]
fn config_paths_are_the_files_and_flags_win() {
    let site = Site::new();
    site.publish();
    let etc = site.p("etc");
    fs::create_dir_all(&etc).expect("etc");
    fs::copy(site.trust(), etc.join("up.pub")).expect("trust");
    let conf = etc.join("sync.toml");
    let text = format!(
        "store = {:?}\ntree = \"tree\"\ndest = \"mirror\"\ntrust = [\"up.pub\"]\nfull = true\n",
        s(&site.store())
    );
    fs::write(&conf, &text).expect("config");
    let out = bin()
        .current_dir("/")
        .args(["sync", "--config", s(&conf), "--json", "--full=false"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_same_tree(&site.src(), &etc.join("mirror"));
    // The flag's false won: a no-op sync is one request, not a full walk.
    let again = bin()
        .current_dir("/")
        .args(["sync", "--config", s(&conf), "--json", "--full=false"])
        .output()
        .expect("run");
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(report["up_to_date"], true, "{report}");
    assert_eq!(report["dirs_examined"], 0, "{report}");
    fs::write(&conf, format!("{text}adopt = true\n")).expect("config");
    let out = bin()
        .args(["sync", "--config", s(&conf)])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("adopt") && err.contains("line 6"),
        "{err}"
    );
}

/// `publish --refresh` signs the current head again with a new expiry, without reading the
/// source: a site past the old expiry syncs again (nothing to fetch), and the version, root
/// and packs are the same.
#[test]
fn a_refreshed_head_keeps_an_unchanged_tree_from_expiring() {
    let site = Site::new();
    fs::write(site.src().join("a"), b"alpha").expect("file");
    site.publish_with(&["--expires-days", "1"]);
    let in_two_days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 2 * 86_400;
    let later = in_two_days.to_string();
    let store = site.store();
    let sync_later = || {
        let extra = ["--json", "--now", later.as_str()];
        run(&strs(&sync_cmd(
            s(&store),
            "tree",
            &site.trust(),
            &site.mirror(),
            &extra,
        )))
    };
    // The site holds version 1 before it expires.
    let now = run(&strs(&sync_cmd(
        s(&store),
        "tree",
        &site.trust(),
        &site.mirror(),
        &[],
    )));
    assert!(now.status.success());
    let first = fs::read(store.join("history/tree/00000000000000000001")).expect("archived");
    assert_eq!(sync_later().status.code(), Some(3), "expired");
    fs::remove_dir_all(site.src()).expect("the source is not needed");
    let out = site.publish_raw(&["--refresh", "--expires-days", "7", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["version"], 1, "{r}");
    let out = sync_later();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["version"], 1, "{report}");
    assert_eq!(fs::read(site.mirror().join("a")).expect("a"), b"alpha");
    assert_eq!(report["up_to_date"], true, "{report}");
    // The archived head stays the one first signed; the current head is the refreshed one.
    let archived = fs::read(store.join("history/tree/00000000000000000001")).expect("archived");
    assert_eq!(archived, first);
    assert_ne!(fs::read(store.join("heads/tree")).expect("head"), first);
    // A refresh with a source is a usage error (exit 2): it does not read one.
    let out = site.publish_raw(&["--refresh", "/tmp"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--progress=json` reports each phase on stderr (start, progress, end, with what was
/// planned and done); the default shows nothing when stderr is not a terminal.
#[test]
fn progress_is_reported_as_json_lines_and_only_on_request() {
    let site = Site::new();
    for i in 0..5 {
        fs::write(site.src().join(format!("f{i}")), vec![i as u8; 100_000 + i]).expect("file");
    }
    let ends = |stderr: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(stderr)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "end")
            .collect()
    };
    let out = run(&strs(&site.publish_cmd(&site.key(), &["--progress=json"])));
    assert!(out.status.success());
    let read = ends(&out.stderr);
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(
        (read[0]["phase"].as_str(), read[0]["items_done"].as_u64()),
        (Some("read"), Some(5))
    );
    assert_eq!(read[0]["bytes_done"], read[0]["bytes"]);
    let store = site.store();
    let a = sync_cmd(
        s(&store),
        "tree",
        &site.trust(),
        &site.mirror(),
        &["--progress=json"],
    );
    let out = run(&strs(&a));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phases = ends(&out.stderr);
    let names: Vec<&str> = phases.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(names, ["fetch", "write"], "{phases:?}");
    for p in &phases {
        assert_eq!(
            (&p["items_done"], &p["bytes_done"]),
            (&p["items"], &p["bytes"]),
            "{p}"
        );
    }
    assert_eq!(phases[1]["items"], 5);
    // By default, with stderr not a terminal: nothing.
    fs::write(site.src().join("f9"), b"more").expect("file");
    let out = run(&strs(&site.publish_cmd(&site.key(), &[])));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // gc: its versions, the walk of the kept ones, the removals.
    let out = run(&[
        "gc",
        "--store",
        s(&store),
        "--keep-last",
        "1",
        "--grace",
        "0s",
        "--progress=json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let phases = ends(&out.stderr);
    let names: Vec<&str> = phases.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(
        names,
        ["versions", "versions walked", "remove"],
        "{phases:?}"
    );
    assert_eq!(
        phases[2]["items_done"], 1,
        "version 1's archived head: {phases:?}"
    );
}

/// `-v` says what each phase did on stderr, in plain lines when stderr is not a terminal;
/// without it a sync says nothing there, and `-q` keeps warnings out too.
#[test]
fn log_lines_on_request() {
    let site = Site::new();
    fs::write(site.src().join("a"), b"alpha").expect("a");
    let out = run(&strs(&site.publish_cmd(&site.key(), &["-v"])));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("head written"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "plain lines into a pipe: {err:?}");
    let store = site.store();
    let a = sync_cmd(s(&store), "tree", &site.trust(), &site.mirror(), &["-v"]);
    let out = run(&strs(&a));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("head accepted") && err.contains("recorded"),
        "{err}"
    );
    fs::write(site.src().join("b"), b"beta").expect("b");
    site.publish();
    let a = sync_cmd(s(&store), "tree", &site.trust(), &site.mirror(), &["-q"]);
    let out = run(&strs(&a));
    assert!(out.status.success() && out.stderr.is_empty());
    let out = run(&strs(&sync_cmd(
        s(&store),
        "tree",
        &site.trust(),
        &site.mirror(),
        &[],
    )));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
