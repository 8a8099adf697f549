//! `pulpdist gc`: retention, the two phases (condemn, then remove a grace period later),
//! dry runs that list exactly what the real run removes, sites behind the kept versions,
//! publishes running at the same time, damaged archived heads, and a bucket.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::servers::S3;
use common::{assert_same_tree, gc, hold_at, run, run_json, s, strs, sync_cmd, verify_clean, Site};

fn keys(report: &serde_json::Value, field: &str) -> BTreeSet<String> {
    report[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Every object under `store` (a directory), relative, except locks and temporaries.
fn objects(store: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sub in ["packs", "history", "heads"] {
        let mut todo = vec![store.join(sub)];
        while let Some(d) = todo.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    let rel = p.strip_prefix(store).expect("under store");
                    out.insert(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

fn pack_bytes(store: &Path) -> u64 {
    fs::read_dir(store.join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum()
}

/// Ten versions of a generated package repository, `--keep-last 3`: the dry runs list
/// exactly what the real runs then remove (archived heads, then packs a grace period
/// after they were condemned); the kept versions verify; sites left at versions the store
/// no longer keeps sync to the current one.
#[test]
fn ten_versions_keep_last_three() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 61, 1).expect("generate");
    site.publish();
    site.sync();
    let behind = site.p("behind");
    for step in 1..10u64 {
        pulpdist_testdata::evolve(&site.src(), 61, step).expect("evolve");
        site.publish();
        if step == 6 {
            let args = sync_cmd(s(&site.store()), "tree", &site.trust(), &behind, &[]);
            run_json(&strs(&args));
        }
    }
    let store = site.store();
    let st = s(&store);
    let policy = ["--keep-last", "3", "--grace", "0s"];
    let before = objects(&store);

    // First run: the archived heads of versions 1-7 go; unreached packs are condemned.
    let dry = gc(st, &[&policy[..], &["--dry-run"]].concat());
    assert_eq!(objects(&store), before, "a dry run changes nothing");
    let real = gc(st, &policy);
    assert_eq!(keys(&dry, "removed"), keys(&real, "removed"));
    assert_eq!(keys(&dry, "condemned"), keys(&real, "condemned"));
    assert_eq!(dry["removed_bytes"], real["removed_bytes"]);
    let history: BTreeSet<String> = (1..=7)
        .map(|v| pulpdist_format::history_key("tree", v))
        .collect();
    assert_eq!(keys(&real, "removed"), history, "{real}");
    assert!(!keys(&real, "condemned").is_empty(), "{real}");
    assert_eq!(real["trees"][0]["kept"], serde_json::json!([8, 9, 10]));
    let gone: BTreeSet<String> = before.difference(&objects(&store)).cloned().collect();
    assert_eq!(gone, history);

    // Second run: the condemned packs go, exactly those the dry run lists.
    let mid = objects(&store);
    let dry = gc(st, &[&policy[..], &["--dry-run"]].concat());
    assert_eq!(objects(&store), mid);
    let real = gc(st, &policy);
    assert_eq!(keys(&dry, "removed"), keys(&real, "removed"));
    let gone: BTreeSet<String> = mid.difference(&objects(&store)).cloned().collect();
    assert_eq!(gone, keys(&real, "removed"));
    assert_eq!(
        gone.len() as u64,
        real["removed"].as_array().map_or(0, |a| a.len() as u64)
    );
    assert!(!gone.is_empty());
    let removed_bytes: u64 = real["removed_bytes"].as_u64().expect("bytes");
    assert_eq!(
        pack_bytes(&store),
        real["bytes_after"].as_u64().expect("after")
    );
    assert!(removed_bytes > 0);
    // A third run finds nothing more to do.
    let again = gc(st, &policy);
    assert!(keys(&again, "removed").is_empty() && keys(&again, "condemned").is_empty());
    let (live, after) = (
        again["live_bytes"].as_u64().expect("live"),
        again["bytes_after"].as_u64().expect("after"),
    );
    eprintln!(
        "store {after} bytes for {live} live bytes ({:.3}x)",
        after as f64 / live as f64
    );

    verify_clean(&site);
    // Every delta pack a kept head lists is kept.
    for v in [8u64, 9, 10] {
        let bytes = fs::read(store.join(pulpdist_format::history_key("tree", v))).expect("head");
        let (h, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("decodes");
        for d in h.deltas().expect("deltas") {
            assert!(
                store.join(d.pack.object_key()).exists(),
                "version {v}'s delta"
            );
        }
    }
    let r = site.sync();
    assert_eq!(r["version"], 10, "{r}");

    // Packs partly unreached stay: rewriting those more than 5 % unreached brings the
    // store within 1.05 x of what the kept versions reach. The current version comes
    // back as version 11 (same content and root as 10 now); 8 and 9 keep their numbers,
    // and --keep-last counts 10 and 11 as one.
    let key = site.key();
    let repack = [&policy[..], &["--max-unused", "5", "--key", s(&key)]].concat();
    let dry = gc(st, &[&repack[..], &["--dry-run"]].concat());
    let sparse = dry["repacked"]["sparse"].as_array().map_or(0, Vec::len);
    assert!(sparse > 0, "{dry}");
    let r = gc(st, &repack);
    assert_eq!(keys(&dry, "removed"), keys(&r, "removed"));
    assert_eq!(r["repacked"]["sparse"], dry["repacked"]["sparse"], "{r}");
    let moved: Vec<(u64, u64)> = r["repacked"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap_or(0),
                v["now"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(moved.contains(&(10, 11)), "{r}");
    assert!(moved.contains(&(8, 8)) || moved.contains(&(9, 9)), "{r}");
    let r = gc(st, &policy);
    assert_eq!(
        r["trees"][0]["kept"],
        serde_json::json!([8, 9, 10, 11]),
        "one content, two numbers: {r}"
    );
    let last = gc(st, &policy);
    let (live, after) = (
        last["live_bytes"].as_u64().expect("live"),
        last["bytes_after"].as_u64().expect("after"),
    );
    eprintln!(
        "after the rewrite: {after} bytes for {live} live ({:.3}x)",
        after as f64 / live as f64
    );
    assert!(
        after as f64 <= 1.05 * live as f64,
        "{after} > 1.05 x {live}"
    );
    verify_clean(&site);
    let log = run_json(&[
        "log",
        "--store",
        st,
        "--tree",
        "tree",
        "--trust",
        &site.trust(),
    ]);
    let versions: Vec<u64> = log
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions, [8, 9, 10, 11], "{log}");

    // The mirror at 10 moves to 11 fetching index nodes only (its files are all there);
    // the site at 7, no longer kept, syncs to 11 too.
    let r = site.sync();
    assert_eq!(r["version"], 11, "{r}");
    assert_eq!(r["chunks_fetched"], 0, "{r}");
    assert_same_tree(&site.src(), &site.mirror());
    let args = sync_cmd(st, "tree", &site.trust(), &behind, &[]);
    let r = run_json(&strs(&args));
    assert_eq!(r["version"], 11, "{r}");
    assert_same_tree(&site.src(), &behind);
}

/// A pack is not condemned while younger than the grace period, nor removed until it has
/// been condemned for that long; a pack a new version names again is taken off the list.
#[test]
fn the_grace_period_protects_young_packs_and_a_reused_pack_is_rescued() {
    let site = Site::new();
    fs::write(site.src().join("a.bin"), common::noise(200_000, 3)).expect("a");
    site.publish();
    fs::remove_file(site.src().join("a.bin")).expect("rm a");
    fs::write(site.src().join("b.txt"), b"b\n").expect("b");
    site.publish();
    let store = site.store();
    let st = s(&store);
    // A day of grace: version 1 was current a moment ago, so it is kept, and nothing goes.
    let r = gc(st, &["--keep-last", "1"]);
    assert_eq!(r["trees"][0]["kept"], serde_json::json!([1, 2]), "{r}");
    assert!(keys(&r, "removed").is_empty() && keys(&r, "condemned").is_empty());
    // Without grace: version 1's packs are condemned; with a day, they wait.
    let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
    let condemned = keys(&r, "condemned");
    assert!(!condemned.is_empty(), "{r}");
    let history: BTreeSet<String> = [pulpdist_format::history_key("tree", 1)].into();
    assert_eq!(keys(&r, "removed"), history, "{r}");
    let r = gc(st, &["--keep-last", "1", "--grace", "1h"]);
    assert!(keys(&r, "removed").is_empty(), "{r}");
    assert_eq!(r["waiting"].as_u64(), Some(condemned.len() as u64), "{r}");
    // The publisher reuses nothing condemned: a.bin back stores its chunks again, in a new
    // pack; the condemned ones stay unreached and go. That pack holds what a condemned
    // one holds, so its name by content is condemned: it is named at random.
    let before = objects(&store);
    fs::write(site.src().join("a.bin"), common::noise(200_000, 3)).expect("a again");
    let p = site.publish();
    assert!(p["chunks_new"].as_u64() > Some(0), "{p}");
    let added: BTreeSet<String> = objects(&store).difference(&before).cloned().collect();
    let added_packs = added.iter().filter(|k| k.starts_with("packs/")).count();
    assert_eq!(
        added_packs, 3,
        "a data pack, an index pack, a delta: {added:?}"
    );
    assert!(added.is_disjoint(&condemned), "{added:?}");
    let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
    let packs: BTreeSet<String> = keys(&r, "removed")
        .into_iter()
        .filter(|k| k.starts_with("packs/"))
        .collect();
    assert_eq!(packs, condemned, "{r}");
    verify_clean(&site);
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

/// A publish that reuses a chunk of a pack a gc condemns while it runs refuses to name it
/// (nothing is published; the next publish stores the chunk again), and one whose new
/// packs a gc without grace removes while it runs fails instead of naming them. With the
/// grace period, a gc during a publish touches nothing of it.
#[test]
fn a_gc_during_a_publish_never_leaves_a_head_naming_a_missing_pack() {
    let site = Site::new();
    fs::write(site.src().join("a.bin"), common::noise(200_000, 5)).expect("a");
    site.publish();
    fs::rename(site.src().join("a.bin"), site.p("a.bin")).expect("set a aside");
    site.publish();
    let store = site.store();
    let st = s(&store);
    gc(st, &["--keep-last", "1", "--grace", "0s"]);
    gc(st, &["--keep-last", "1", "--grace", "0s"]);

    // a.bin is back; the publish is held before its head while a gc runs (no grace).
    fs::rename(site.p("a.bin"), site.src().join("a.bin")).expect("a back");
    fs::write(site.src().join("c.bin"), common::noise(100_000, 7)).expect("c");
    let cmd = site.publish_cmd(&site.key(), &["--json"]);
    let release = site.p("release-1");
    let held = hold_at(&cmd, "publish.head", &release);
    let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
    assert!(
        !keys(&r, "condemned").is_empty(),
        "its new packs look unreached: {r}"
    );
    fs::write(&release, b"go").expect("release");
    let out = held.wait_with_output().expect("held publish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "published over condemned packs");
    assert!(err.contains("by a gc while the publish ran"), "{err}");
    verify_clean(&site);

    // Held again; the gc condemns and then removes its packs (no grace at all).
    let release = site.p("release-2");
    let held = hold_at(&cmd, "publish.head", &release);
    gc(st, &["--keep-last", "1", "--grace", "0s"]);
    let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
    assert!(!keys(&r, "removed").is_empty(), "{r}");
    fs::write(&release, b"go").expect("release");
    let out = held.wait_with_output().expect("held publish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "published a head naming removed packs"
    );
    assert!(err.contains("removed by a gc"), "{err}");
    verify_clean(&site);

    // With the default grace, a gc during the publish leaves it alone.
    let release = site.p("release-3");
    let held = hold_at(&cmd, "publish.head", &release);
    let r = gc(st, &["--keep-last", "1"]);
    assert!(keys(&r, "condemned").is_empty(), "{r}");
    assert!(r["young"].as_u64() > Some(0), "{r}");
    fs::write(&release, b"go").expect("release");
    let out = held.wait_with_output().expect("held publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_clean(&site);
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

/// A damaged archived head of a kept version stops the gc before anything is removed; one
/// of a version not kept is removed with it. Without a policy, gc refuses to run.
#[test]
fn damaged_archived_heads_and_an_empty_policy() {
    let site = Site::new();
    for v in 0..4u32 {
        fs::write(site.src().join("f.bin"), common::noise(50_000, v)).expect("f");
        site.publish();
    }
    let store = site.store();
    let st = s(&store);
    let out = run(&["gc", "--store", st]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no retention policy"));

    let h3 = store.join(pulpdist_format::history_key("tree", 3));
    fs::write(&h3, b"not a head").expect("damage");
    let before = objects(&store);
    // Pinned, the damaged version stops the run before anything is removed.
    let out = run(&[
        "gc",
        "--store",
        st,
        "--tree",
        "tree",
        "--keep-last",
        "1",
        "--keep-version",
        "3",
        "--grace",
        "0s",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("00000000000000000003") && err.contains("nothing was removed"),
        "{err}"
    );
    assert_eq!(objects(&store), before);
    // Not pinned, it is not kept (what it names cannot be known, nor can a reader use
    // it): the two newest readable versions are. When 3 was published (so when 2 stopped
    // being current) is unknown, so 2 is kept by the grace rule too.
    let r = gc(st, &["--keep-last", "2", "--grace", "0s"]);
    let removed: BTreeSet<String> = [1, 3]
        .map(|v| pulpdist_format::history_key("tree", v))
        .into();
    assert_eq!(keys(&r, "removed"), removed, "{r}");
    assert_eq!(r["trees"][0]["kept"], serde_json::json!([2, 4]), "{r}");
    let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
    let removed = keys(&r, "removed");
    assert!(
        removed.contains(&pulpdist_format::history_key("tree", 2)),
        "{r}"
    );
    // Foreign objects in packs/ are never touched: a file, an upper-case name, a
    // directory with a pack's name, a FIFO.
    let upper = format!("packs/{}.pack", "AB".repeat(32));
    let dir = format!("packs/{}.pack", "cd".repeat(32));
    fs::write(store.join("packs/README"), b"mine").expect("foreign");
    fs::write(store.join(&upper), b"mine").expect("upper");
    fs::create_dir(store.join(&dir)).expect("dir");
    let fifo = store.join(format!("packs/{}.pack", "ef".repeat(32)));
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let foreign = [
        upper.to_lowercase(),
        dir.clone(),
        format!("packs/{}.pack", "ef".repeat(32)),
    ];
    for _ in 0..2 {
        let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
        for k in keys(&r, "removed")
            .iter()
            .chain(keys(&r, "condemned").iter())
        {
            assert!(!foreign.contains(k), "{k}: {r}");
        }
    }
    for p in ["packs/README", upper.as_str(), dir.as_str()] {
        assert!(store.join(p).exists(), "{p}");
    }
    assert!(fifo.exists());
    verify_clean(&site);
    // A FIFO planted as a head: verify says it cannot read it, and does not hang.
    let head_fifo = store.join("heads/fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&head_fifo)
        .status()
        .expect("mkfifo")
        .success());
    let trust = site.trust();
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            env!("CARGO_BIN_EXE_pulpdist"),
            "verify",
            "--store",
            st,
            "--trust",
            &trust,
        ])
        .output()
        .expect("verify");
    assert_ne!(out.status.code(), Some(124), "verify hung on a FIFO");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
    fs::remove_file(&head_fifo).expect("rm fifo");
    // Pins name a tree and version; one that does not exist is refused.
    for (pin, says) in [
        ("tree:99", "no version 99"),
        ("nosuch:1", "no tree 'nosuch'"),
    ] {
        let out = run(&[
            "gc",
            "--store",
            st,
            "--keep-last",
            "1",
            "--keep-version",
            pin,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
    let r = gc(st, &["--keep-last", "1", "--keep-version", "tree:4"]);
    assert!(r["trees"][0]["kept"].to_string().contains('4'), "{r}");
}

/// The current version is kept whatever the archive holds above it (a rollback), and a
/// tree whose head is a symlink is a tree: nothing either reaches is removed. An archived
/// heads directory that is a symlink is refused, and nothing outside the store is removed.
#[test]
fn rollbacks_and_symlinks_lose_nothing() {
    let site = Site::new();
    for v in 0..3u32 {
        fs::write(site.src().join("f.bin"), common::noise(60_000, v)).expect("f");
        site.publish();
    }
    let store = site.store();
    let st = s(&store);
    // Roll the head back to version 2; the archive still goes to 3.
    fs::copy(
        store.join(pulpdist_format::history_key("tree", 2)),
        store.join("heads/tree"),
    )
    .expect("rollback");
    // A second tree whose head is a symlink to a file beside the store.
    let other = site.p("other-src");
    fs::create_dir_all(&other).expect("other");
    fs::write(other.join("g.bin"), common::noise(70_000, 9)).expect("g");
    let key = site.key();
    run_json(&[
        "publish",
        "--store",
        st,
        "--tree",
        "u",
        "--key",
        s(&key),
        s(&other),
    ]);
    let moved = site.p("u-head");
    fs::rename(store.join("heads/u"), &moved).expect("move head");
    std::os::unix::fs::symlink(&moved, store.join("heads/u")).expect("symlink head");
    for _ in 0..2 {
        let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
        let t = r["trees"]
            .as_array()
            .expect("trees")
            .iter()
            .find(|t| t["tree"] == "tree")
            .cloned()
            .expect("tree");
        assert_eq!(t["current"], 2, "{r}");
        assert!(
            t["kept"]
                .as_array()
                .expect("kept")
                .contains(&serde_json::json!(2)),
            "{r}"
        );
    }
    verify_clean(&site);
    let args = sync_cmd(st, "u", &site.trust(), &site.p("u-mirror"), &[]);
    run_json(&strs(&args));
    assert_same_tree(&other, &site.p("u-mirror"));
    // history/u as a symlink to a directory outside: refused, and nothing there removed.
    let outside = site.p("outside");
    fs::create_dir_all(&outside).expect("outside");
    let victim = outside.join(
        pulpdist_format::history_key("u", 1)
            .rsplit('/')
            .next()
            .expect("name"),
    );
    fs::write(&victim, b"not yours").expect("victim");
    fs::remove_dir_all(store.join("history/u")).expect("rm history/u");
    std::os::unix::fs::symlink(&outside, store.join("history/u")).expect("symlink dir");
    let out = run(&["gc", "--store", st, "--keep-last", "1", "--grace", "0s"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(victim.exists());
}

/// The same on a bucket (s3s-fs): condemned, then removed; the current version syncs.
#[test]
fn gc_of_a_bucket() {
    let site = Site::new();
    let s3 = S3::start(&site.p("s3"), &["gcbucket"]);
    let flags = s3.cli_flags(&site.p(""));
    let creds: Vec<&str> = flags.iter().map(String::as_str).collect();
    let store = "s3://gcbucket/p";
    for v in 0..4u32 {
        fs::write(site.src().join("f.bin"), common::noise(80_000, v)).expect("f");
        let mut a = vec!["publish", "--store", store, "--tree", "tree"];
        let key = site.key();
        a.extend(["--key", s(&key)]);
        a.extend(&creds);
        let (state, src) = (site.p("publish-state"), site.src());
        a.extend(["--state", s(&state), s(&src)]);
        run_json(&a);
    }
    let gc_state = site.p("gc-state");
    let mut args = vec!["--keep-last", "1", "--grace", "0s", "--state", s(&gc_state)];
    args.extend(&creds);
    let first = gc(store, &args);
    assert_eq!(keys(&first, "removed").len(), 3, "{first}");
    assert!(!keys(&first, "condemned").is_empty(), "{first}");
    let dry = gc(store, &[&args[..], &["--dry-run"]].concat());
    let second = gc(store, &args);
    assert_eq!(keys(&dry, "removed"), keys(&second, "removed"));
    assert_eq!(
        keys(&second, "removed"),
        keys(&first, "condemned"),
        "{second}"
    );
    let bucket_dir = site.p("s3/gcbucket/p/packs");
    let left: BTreeSet<String> = fs::read_dir(&bucket_dir)
        .expect("bucket packs")
        .map(|e| format!("packs/{}", e.expect("entry").file_name().to_string_lossy()))
        .collect();
    assert!(left.is_disjoint(&keys(&second, "removed")), "{left:?}");
    let mut v = vec!["verify", "--store", store, "--trust"];
    let trust = site.trust();
    v.extend([trust.as_str(), "--read-data"]);
    v.extend(&creds);
    let r = run_json(&v);
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r}");
    let mut a = sync_cmd(store, "tree", &site.trust(), &site.mirror(), &[]);
    let dest = a.pop().expect("dest");
    a.extend(creds.iter().map(|x| x.to_string()));
    a.push(dest);
    run_json(&strs(&a));
    assert_same_tree(&site.src(), &site.mirror());
}

/// A site a few versions behind fetches the index packs of the versions since its own
/// whole, as the head lists them; when a gc removed one of them (no kept version reaches
/// it), the site fetches the nodes it needs one by one instead, and still syncs.
#[test]
fn a_site_behind_syncs_when_a_listed_index_pack_is_gone() {
    let site = Site::new();
    fs::write(site.src().join("a.bin"), common::noise(40_000, 1)).expect("a");
    site.publish();
    site.sync();
    for v in 2..=3u32 {
        fs::write(site.src().join("a.bin"), common::noise(40_000, v)).expect("a");
        site.publish();
    }
    let store = site.store();
    let st = s(&store);
    // The head of 3 lists version 2's index pack, which only version 2 reaches.
    let bytes = fs::read(store.join("heads/tree")).expect("head");
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("head");
    let two = head
        .recent
        .iter()
        .find(|v| v.version == 2)
        .expect("2 listed");
    let index = two
        .packs
        .iter()
        .find(|p| p.kind == pulpdist_format::PackKind::Index)
        .expect("an index pack");
    gc(st, &["--keep-last", "1", "--grace", "0s"]);
    let r = gc(st, &["--keep-last", "1", "--grace", "0s"]);
    assert!(keys(&r, "removed").contains(&index.id.object_key()), "{r}");
    let r = site.sync();
    assert_eq!(r["version"], 3, "{r}");
    assert_same_tree(&site.src(), &site.mirror());
}

/// Compacting signs again only what the key signed: a tree with an archived head signed
/// by another key is left out (and the packs it reaches with it), its heads untouched. A
/// store with nothing unreached has nothing sparse (a pack's header and trailer are not
/// "unused"), and a second compacting run after a first does nothing.
#[test]
fn compacting_resigns_only_what_the_key_signed_and_settles() {
    let site = Site::new();
    let store = site.store();
    let st = s(&store);
    let key = site.key();
    let compact = [
        "--keep-last",
        "5",
        "--grace",
        "0s",
        "--max-unused",
        "5",
        "--key",
        s(&key),
    ];
    fs::write(site.src().join("a.bin"), common::noise(90_000, 1)).expect("a");
    fs::write(site.src().join("b.bin"), common::noise(90_000, 2)).expect("b");
    // One thread, so that both files' chunks share one data pack (each chunking worker
    // writes its own).
    site.publish_with(&["--threads", "1"]);
    let r = gc(st, &compact);
    assert_eq!(r["repacked"]["sparse"], serde_json::json!([]), "{r}");
    assert_eq!(r["trees"][0]["current"], 1, "{r}");
    // b.bin goes: the first data pack is half unreached once version 1 is not kept. The
    // head is then refreshed (the same version and root, signed again): still rewritten.
    fs::remove_file(site.src().join("b.bin")).expect("rm b");
    site.publish_with(&["--threads", "1"]);
    let out = site.publish_raw(&["--refresh"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keep_one = [
        "--keep-last",
        "1",
        "--grace",
        "0s",
        "--max-unused",
        "5",
        "--key",
        s(&key),
    ];
    let r = gc(st, &keep_one);
    assert!(
        r["repacked"]["sparse"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{r}"
    );
    assert_eq!(r["trees"][0]["current"], 3, "republished: {r}");
    let again = gc(st, &keep_one);
    assert_eq!(
        again["repacked"]["sparse"],
        serde_json::json!([]),
        "{again}"
    );
    assert_eq!(again["trees"][0]["current"], 3, "{again}");
    gc(st, &keep_one);
    verify_clean(&site);
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());

    // Another key's head planted as an archived version that is kept (pinned), in a
    // store where compacting has work: the tree is left out, its heads untouched.
    let site = Site::new();
    let store = site.store();
    let st = s(&store);
    let key = site.key();
    fs::write(site.src().join("a.bin"), common::noise(90_000, 1)).expect("a");
    fs::write(site.src().join("b.bin"), common::noise(90_000, 2)).expect("b");
    site.publish();
    fs::remove_file(site.src().join("b.bin")).expect("rm b");
    site.publish();
    let other = site.p("other.key");
    run(&["keygen", s(&other)]);
    let elsewhere = site.p("elsewhere");
    let (o, src) = (s(&other), site.src());
    let a = [
        "publish",
        "--store",
        s(&elsewhere),
        "--tree",
        "tree",
        "--key",
        o,
        s(&src),
    ];
    let out = run(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted = store.join(pulpdist_format::history_key("tree", 1));
    let foreign = fs::read(elsewhere.join("heads/tree")).expect("foreign head");
    fs::write(&planted, &foreign).expect("plant");
    // With its packs: a store writer without the key planting a version of their own.
    for e in fs::read_dir(elsewhere.join("packs")).expect("packs") {
        let p = e.expect("entry").path();
        fs::copy(&p, store.join("packs").join(p.file_name().expect("name"))).expect("copy");
    }
    let args = [
        "--tree",
        "tree",
        "--keep-last",
        "1",
        "--keep-version",
        "1",
        "--grace",
        "0s",
        "--max-unused",
        "5",
        "--key",
        s(&key),
    ];
    // The dry run lists only what the run would rewrite: nothing here.
    let dry = gc(st, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry["repacked"]["sparse"], serde_json::json!([]), "{dry}");
    let r = gc(st, &args);
    let skipped = r["repacked"]["skipped"].to_string();
    assert!(skipped.contains("not signed by the key given"), "{r}");
    assert_eq!(dry["repacked"]["skipped"], r["repacked"]["skipped"], "{r}");
    assert_eq!(r["repacked"]["versions"], serde_json::json!([]), "{r}");
    assert_eq!(fs::read(&planted).expect("planted"), foreign, "re-signed");
    assert_eq!(r["trees"][0]["current"], 2, "{r}");
}

/// A pack a kept version needs, deleted by hand: gc stops before removing anything,
/// names the pack, and exits 3.
#[test]
fn a_pack_deleted_by_hand_stops_the_gc() {
    let site = Site::new();
    for v in 0..3u32 {
        fs::write(site.src().join("f.bin"), common::noise(50_000, v)).expect("f");
        site.publish();
    }
    let store = site.store();
    let st = s(&store);
    let bytes = fs::read(store.join("heads/tree")).expect("head");
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("head");
    fs::remove_file(store.join(head.root.loc.pack.object_key())).expect("rm");
    let before = objects(&store);
    let out = run(&["gc", "--store", st, "--keep-last", "1", "--grace", "0s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&head.root.loc.pack.to_hex()) && err.contains("nothing was removed"),
        "{err}"
    );
    assert_eq!(objects(&store), before);
}

/// Compacting settles: once the sparse data packs are rewritten, and the index (whole,
/// when its packs are more than half dead, so that no old root path stays beside live
/// nodes), later runs find nothing to rewrite and publish nothing.
#[test]
fn compacting_settles() {
    let site = Site::new();
    for d in 1..=3u32 {
        fs::create_dir_all(site.src().join(format!("d{d}"))).expect("dir");
        for f in 0..4u32 {
            let path = site.src().join(format!("d{d}/f{f}"));
            fs::write(path, common::noise(30_000, (d - 1) * 4 + f)).expect("file");
        }
    }
    site.publish();
    for f in 0..4u32 {
        fs::remove_file(site.src().join(format!("d1/f{f}"))).expect("rm");
    }
    fs::write(site.src().join("d1/g"), common::noise(30_000, 12)).expect("g");
    site.publish();
    for f in 0..2u32 {
        fs::remove_file(site.src().join(format!("d3/f{f}"))).expect("rm");
    }
    site.publish();
    let (store, key) = (site.store(), site.key());
    let args = [
        "--keep-last",
        "2",
        "--grace",
        "0s",
        "--max-unused",
        "20",
        "--key",
        s(&key),
    ];
    let mut currents = Vec::new();
    let mut last = serde_json::Value::Null;
    for _ in 0..5 {
        last = gc(s(&store), &args);
        currents.push(last["trees"][0]["current"].as_u64().expect("current"));
    }
    // The first run rewrites the sparse data packs (the current version published again
    // as 4); the second finds the index packs more than half dead and rewrites the whole
    // index (5); after that, nothing.
    assert_eq!(
        currents,
        [4, 5, 5, 5, 5],
        "at most two republishes, then none: {last}"
    );
    assert_eq!(last["repacked"]["sparse"], serde_json::json!([]), "{last}");
}
