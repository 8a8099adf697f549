//! Relays: `pulpdist replicate` into a relay's store, sites syncing from a list of stores
//! (the relay first, the origin behind it), and a hub that keeps its mirror and its relay
//! with one command. A relay can delay what its sites receive but never alter it: each
//! tamper case below is refused by the relay's replicate, or by the leaf, which falls back
//! to the next store.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::servers::{Builtin, Nginx, S3};
use common::{assert_same_tree, bin, run, run_json, run_json_logged, s, snapshot, strs, Site};

/// An origin store (the site's) with a tree published, and a relay directory beside it.
struct Net {
    site: Site,
}

impl Net {
    fn new(seed: u64) -> Net {
        let site = Site::new();
        pulpdist_testdata::generate(&site.src(), seed, 2).expect("generate");
        site.publish();
        Net { site }
    }
    fn relay(&self) -> PathBuf {
        self.site.p("relay")
    }
    fn origin(&self) -> String {
        s(&self.site.store()).to_string()
    }
    fn replicate_args(&self, from: &str, to: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = ["replicate", "--from", from, "--to", to, "--tree", "tree"]
            .map(String::from)
            .to_vec();
        a.extend(["--trust".to_string(), self.site.trust()]);
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    }
    fn replicate(&self, from: &str, to: &str, extra: &[&str]) -> Output {
        run(&strs(&self.replicate_args(from, to, extra)))
    }
    /// The one tree's report of a replicate that must succeed.
    fn replicate_json(&self, from: &str, to: &str) -> serde_json::Value {
        let v = run_json(&strs(&self.replicate_args(from, to, &[])));
        v["trees"][0].clone()
    }
    /// `sync --store S1 --store S2 ... DEST`.
    fn sync_from(&self, stores: &[&str], dest: &Path, extra: &[&str]) -> Output {
        let mut a = vec!["sync".to_string()];
        for st in stores {
            a.extend(["--store".to_string(), st.to_string()]);
        }
        a.extend(["--tree", "tree", "--trust"].map(String::from));
        a.push(self.site.trust());
        a.push("--json".into());
        a.extend(extra.iter().map(|x| x.to_string()));
        a.push(s(dest).to_string());
        run(&strs(&a))
    }
    fn sync_json(&self, stores: &[&str], dest: &Path) -> serde_json::Value {
        let out = self.sync_from(stores, dest, &[]);
        assert!(
            out.status.success(),
            "sync from {stores:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sync JSON")
    }
    /// Publishes the next version of the generated tree.
    fn evolve(&self, step: u64) {
        pulpdist_testdata::evolve(&self.site.src(), 7, step).expect("evolve");
        self.site.publish();
    }
}

/// The packs of a store directory, largest first.
fn packs(store: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(store.join("packs"))
        .expect("packs/")
        .map(|e| {
            let e = e.expect("entry");
            (e.path(), e.metadata().expect("meta").len())
        })
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.1));
    v
}

fn head_of(store: &Path) -> Vec<u8> {
    std::fs::read(store.join("heads/tree")).expect("head")
}

/// `verify --read-data` of a relay's store passes.
fn verify_read_data(net: &Net, store: &Path) {
    let trust = net.site.trust();
    let out = run(&[
        "verify",
        "--store",
        s(store),
        "--trust",
        &trust,
        "--read-data",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_relay_copies_only_what_it_lacks_and_its_sites_get_the_same_tree() {
    let net = Net::new(81);
    let relay = net.relay();
    let r = net.replicate_json(&net.origin(), s(&relay));
    assert_eq!(
        (r["version"].as_u64(), r["previous_version"].as_u64()),
        (Some(1), None)
    );
    let origin_bytes: u64 = packs(&net.site.store()).iter().map(|p| p.1).sum();
    assert_eq!(r["bytes_copied"].as_u64(), Some(origin_bytes), "{r}");
    assert!(r["objects_verified"].as_u64() > Some(10), "{r}");
    // The head and its archived copy are the origin's, byte for byte.
    assert_eq!(head_of(&relay), head_of(&net.site.store()));
    assert_eq!(
        std::fs::read(relay.join("history/tree/00000000000000000001")).expect("archived"),
        head_of(&relay)
    );
    // Again: nothing to do, in one request.
    let again = net.replicate_json(&net.origin(), s(&relay));
    assert_eq!(again["up_to_date"], true, "{again}");
    assert_eq!(again["requests"].as_u64(), Some(1), "{again}");

    // Version 2: only the new packs travel; the ones the relay holds are skipped.
    net.evolve(1);
    let before: std::collections::BTreeSet<PathBuf> = packs(&relay)
        .into_iter()
        .map(|p| p.0.file_name().map(PathBuf::from).unwrap_or_default())
        .collect();
    let r = net.replicate_json(&net.origin(), s(&relay));
    assert_eq!(r["version"].as_u64(), Some(2), "{r}");
    let new: u64 = packs(&net.site.store())
        .iter()
        .filter(|(p, _)| !before.contains(&p.file_name().map(PathBuf::from).unwrap_or_default()))
        .map(|p| p.1)
        .sum();
    assert_eq!(r["bytes_copied"].as_u64(), Some(new), "{r}");
    assert!(r["packs_skipped"].as_u64() >= Some(1), "{r}");
    assert!(r["bytes_fetched"].as_u64() < Some(new + 4096), "{r}");

    // A site syncing from the relay alone gets the source tree, and so does one a version
    // behind (it takes the delta the head lists, which the relay copied).
    let leaf = net.site.p("leaf");
    let v = net.sync_json(&[s(&relay)], &leaf);
    assert_eq!(v["head_store"], s(&relay));
    assert_same_tree(&net.site.src(), &leaf);
    net.evolve(2);
    net.replicate_json(&net.origin(), s(&relay));
    let v = net.sync_json(&[s(&relay)], &leaf);
    assert!(v["delta_bytes"].as_u64() > Some(0), "{v}");
    assert_same_tree(&net.site.src(), &leaf);
    // Every index pack the head lists for its recent versions is at the relay (sites a few
    // versions behind fetch them whole), though the relay skipped a version.
    net.evolve(3);
    net.evolve(4);
    net.replicate_json(&net.origin(), s(&relay));
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&head_of(&relay)).expect("head");
    for p in head.recent.iter().flat_map(|v| v.packs.iter()) {
        if p.kind == pulpdist_format::PackKind::Index {
            assert!(relay.join(p.id.object_key()).exists(), "{} missing", p.id);
        }
    }
    // The relay's store checks out whole, every chunk read.
    verify_read_data(&net, &relay);
}

#[test]
fn a_replicate_refuses_what_it_cannot_vouch_for_and_keeps_the_relay_as_it_was() {
    let net = Net::new(82);
    let relay = net.relay();
    net.replicate_json(&net.origin(), s(&relay));
    let v1 = snapshot(&relay);
    net.evolve(1);

    // A source whose pack was altered: refused (exit 3), nothing installed.
    let bad = net.site.p("bad-source");
    let ok = std::process::Command::new("cp")
        .args(["-a", s(&net.site.store()), s(&bad)])
        .status();
    assert!(ok.expect("cp").success());
    let newest = {
        let mut v: Vec<_> = std::fs::read_dir(bad.join("packs"))
            .expect("packs")
            .map(|e| e.expect("e").path())
            .collect();
        v.retain(|p| {
            !relay
                .join("packs")
                .join(p.file_name().expect("name"))
                .exists()
        });
        v.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
        v.pop().expect("a new pack")
    };
    let mut bytes = std::fs::read(&newest).expect("pack");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&newest, &bytes).expect("tamper");
    let out = net.replicate(s(&bad), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&newest.file_name().expect("n").to_string_lossy().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        snapshot(&relay).get(Path::new("heads/tree")),
        v1.get(Path::new("heads/tree"))
    );
    // An object the source lacks: refused (exit 1, the source's fault is named).
    std::fs::remove_file(&newest).expect("drop pack");
    let out = net.replicate(s(&bad), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert_eq!(
        snapshot(&relay).get(Path::new("heads/tree")),
        v1.get(Path::new("heads/tree"))
    );

    // The good source: version 2. Then a source offering version 1 again (an older head):
    // the relay stays at 2.
    let r = net.replicate_json(&net.origin(), s(&relay));
    assert_eq!(r["version"].as_u64(), Some(2));
    let v1_head =
        std::fs::read(net.site.store().join("history/tree/00000000000000000001")).expect("v1");
    std::fs::write(bad.join("heads/tree"), &v1_head).expect("old head");
    let r = net.replicate_json(s(&bad), s(&relay));
    assert_eq!(
        (r["target_ahead"].as_bool(), r["version"].as_u64()),
        (Some(true), Some(2)),
        "{r}"
    );
    assert_eq!(head_of(&relay), head_of(&net.site.store()));

    // Another tree's head under this tree's name: refused.
    let other = Site::new();
    std::fs::write(other.src().join("f"), b"other").expect("f");
    let out = run(&[
        "publish",
        "--store",
        s(&bad),
        "--tree",
        "other",
        "--key",
        s(&net.site.key()),
        s(&other.src()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(bad.join("heads/other"), bad.join("heads/tree")).expect("foreign head");
    let out = net.replicate(s(&bad), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("'other'"), "{}", stderr(&out));

    // A head signed by a key the relay does not trust: refused.
    let stranger = Site::new();
    std::fs::write(stranger.src().join("f"), b"x").expect("f");
    let out = run(&[
        "publish",
        "--store",
        s(&bad),
        "--tree",
        "tree",
        "--key",
        s(&stranger.key()),
        s(&stranger.src()),
    ]);
    let _ = out;
    let forged = net.site.p("forged");
    std::fs::create_dir_all(forged.join("heads")).expect("dir");
    let out = run(&[
        "publish",
        "--store",
        s(&forged),
        "--tree",
        "tree",
        "--key",
        s(&stranger.key()),
        s(&stranger.src()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = net.replicate(s(&forged), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // The same version with another root (equivocation): refused.
    let e = Site::new();
    std::fs::write(e.src().join("g"), b"equivocating").expect("g");
    let twin = net.site.p("twin");
    for _ in 0..2 {
        let out = run(&[
            "publish",
            "--store",
            s(&twin),
            "--tree",
            "tree",
            "--key",
            s(&net.site.key()),
            s(&e.src()),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::write(e.src().join("g"), b"equivocating, again").expect("g");
    }
    let out = net.replicate(s(&twin), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("equivocation"), "{}", stderr(&out));
    assert_eq!(head_of(&relay), head_of(&net.site.store()));
}

/// A leaf syncing from `[relay, origin]`, where the relay is damaged by `harm`, gets the
/// source tree from what the relay serves whole and the rest from the origin; returns its
/// report.
fn leaf_past(net: &Net, name: &str, harm: impl FnOnce(&Path)) -> serde_json::Value {
    let relay = net.site.p(&format!("relay-{name}"));
    let ok = std::process::Command::new("cp")
        .args(["-a", s(&net.relay()), s(&relay)])
        .status();
    assert!(ok.expect("cp").success());
    harm(&relay);
    let leaf = net.site.p(&format!("leaf-{name}"));
    let v = net.sync_json(&[s(&relay), &net.origin()], &leaf);
    assert_same_tree(&net.site.src(), &leaf);
    v
}

#[test]
fn a_leaf_falls_back_past_a_relay_that_alters_drops_lags_or_lies() {
    let net = Net::new(83);
    net.replicate_json(&net.origin(), s(&net.relay()));
    let biggest = packs(&net.relay())[0]
        .0
        .file_name()
        .expect("name")
        .to_owned();

    // An altered pack: the chunks that fail their ids come from the origin.
    let v = leaf_past(&net, "altered", |r| {
        let p = r.join("packs").join(&biggest);
        let mut b = std::fs::read(&p).expect("pack");
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).expect("tamper");
    });
    assert!(v["stores"][0]["fell_through"].as_u64() >= Some(1), "{v}");
    assert!(v["stores"][1]["bytes"].as_u64() > Some(0), "{v}");
    assert!(
        v["stores"][0]["bytes"].as_u64() > v["stores"][1]["bytes"].as_u64(),
        "{v}"
    );
    // A missing pack: fetched from the origin.
    let v = leaf_past(&net, "dropped", |r| {
        std::fs::remove_file(r.join("packs").join(&biggest)).expect("drop");
    });
    assert!(
        v["stores"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("not found"),
        "{v}"
    );
    assert!(v["stores"][1]["bytes"].as_u64() > Some(0), "{v}");
    // Another tree's head: the origin's head is taken, and the relay still serves objects.
    let v = leaf_past(&net, "foreign", |r| {
        let other = tempfile::tempdir().expect("tmp");
        std::fs::write(other.path().join("f"), b"other").expect("f");
        let key = net.site.key();
        let out = run(&[
            "publish",
            "--store",
            s(r),
            "--tree",
            "other",
            "--key",
            s(&key),
            s(other.path()),
        ]);
        assert!(out.status.success());
        std::fs::copy(r.join("heads/other"), r.join("heads/tree")).expect("foreign");
    });
    assert_eq!(v["head_store"], net.origin(), "{v}");
    assert!(
        v["stores"][0]["bytes"].as_u64() > v["stores"][1]["bytes"].as_u64(),
        "{v}"
    );

    // An older head than the leaf holds: skipped, never a reason to go back.
    let leaf = net.site.p("leaf-behind");
    net.sync_json(&[&net.origin()], &leaf);
    net.evolve(1);
    let v = net.sync_json(&[&net.origin()], &leaf);
    assert_eq!(v["version"].as_u64(), Some(2));
    let v = net.sync_json(&[s(&net.relay()), &net.origin()], &leaf);
    assert_eq!(
        (v["version"].as_u64(), v["up_to_date"].as_bool()),
        (Some(2), Some(true)),
        "{v}"
    );
    assert_eq!(v["head_store"], net.origin(), "{v}");
    assert!(
        v["stores"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("rollback"),
        "{v}"
    );
    assert_same_tree(&net.site.src(), &leaf);
    // A relay that is behind but not older than the leaf delays it (its version is what
    // the leaf's report names, with the store that served it).
    let late = net.site.p("leaf-late");
    let v = net.sync_json(&[s(&net.relay()), &net.origin()], &late);
    assert_eq!(
        (v["version"].as_u64(), v["head_store"].as_str()),
        (Some(1), Some(s(&net.relay()))),
        "{v}"
    );

    // A sync that died renaming version 2 into place is not followed by version 1 from a
    // lagging relay over the half-applied mirror: the origin's version 2 completes it.
    let torn = net.site.p("leaf-torn");
    net.sync_json(&[s(&net.relay())], &torn);
    let out = bin()
        .args([
            "sync",
            "--store",
            &net.origin(),
            "--tree",
            "tree",
            "--trust",
            &net.site.trust(),
            s(&torn),
        ])
        .env("PULPDIST_FAILPOINT", "sync.rename:2")
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", stderr(&out));
    let out = net.sync_from(&[s(&net.relay())], &torn, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = net.sync_json(&[s(&net.relay()), &net.origin()], &torn);
    assert_eq!(v["version"].as_u64(), Some(2), "{v}");
    assert_same_tree(&net.site.src(), &torn);

    // No store can serve the signed version: exit 3, and the leaf keeps what it had.
    net.replicate_json(&net.origin(), s(&net.relay()));
    net.evolve(2);
    let before = snapshot(&leaf);
    let origin_head = net.site.store().join("heads/tree");
    let mut h = std::fs::read(&origin_head).expect("head");
    let n = h.len();
    h[n - 1] ^= 1;
    std::fs::write(&origin_head, h).expect("bad signature");
    std::fs::copy(
        net.site.store().join("history/tree/00000000000000000001"),
        net.relay().join("heads/tree"),
    )
    .expect("old head at the relay");
    let out = net.sync_from(&[s(&net.relay()), &net.origin()], &leaf, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    common::assert_same_snapshot(
        &before,
        &snapshot(&leaf),
        "a refused sync changed the mirror",
    );
}

#[test]
fn a_replicate_killed_at_any_step_leaves_the_relay_serving_and_the_next_run_completes() {
    let net = Net::new(84);
    let relay = net.relay();
    net.replicate_json(&net.origin(), s(&relay));
    // Version 2 in small packs, so that a replicate passes many steps.
    pulpdist_testdata::evolve(&net.site.src(), 7, 1).expect("evolve");
    for i in 0..12 {
        std::fs::write(
            net.site.src().join(format!("new-{i}.bin")),
            common::random_bytes(300_000, i as u64),
        )
        .expect("file");
    }
    net.site.publish_with(&["--pack-size", "262144"]);
    let args = net.replicate_args(&net.origin(), s(&relay), &[]);
    let start = net.site.p("relay-v1");
    let ok = std::process::Command::new("cp")
        .args(["-a", s(&relay), s(&start)])
        .status();
    assert!(ok.expect("cp").success());
    // The steps one run passes.
    let log = net.site.p("trace");
    let whole = run_json_logged(&args, &log);
    let full = whole["trees"][0]["bytes_copied"].as_u64().expect("bytes");
    let mut points: Vec<(String, u64)> = Vec::new();
    for line in std::fs::read_to_string(&log).expect("log").lines() {
        let step = line.split('\t').next().unwrap_or(line).to_string();
        if step.starts_with("replicate.") {
            let n = points.iter().filter(|(s, _)| *s == step).count() as u64 + 1;
            points.push((step, n));
        }
    }
    assert!(
        points.len() >= 20,
        "only {} kill points: {points:?}",
        points.len()
    );
    let v2 = head_of(&net.site.store());
    let v1 = head_of(&start);
    for (step, n) in &points {
        let ok = std::process::Command::new("rm")
            .args(["-rf", s(&relay)])
            .status();
        assert!(ok.expect("rm").success());
        let ok = std::process::Command::new("cp")
            .args(["-a", s(&start), s(&relay)])
            .status();
        assert!(ok.expect("cp").success());
        let out = bin()
            .args(&args)
            .env("PULPDIST_FAILPOINT", format!("{step}:{n}"))
            .output()
            .expect("run");
        assert!(
            !out.status.success() && stderr(&out).contains("fail point"),
            "{step}:{n}: {}",
            stderr(&out)
        );
        // The relay serves a complete version: the old one, or (killed after the head was
        // written) the new one.
        let head = head_of(&relay);
        assert!(
            head == v1 || head == v2,
            "killed at {step}:{n}: the relay's head is neither version"
        );
        let leaf = net.site.p("leaf-kill");
        let _ = std::fs::remove_dir_all(&leaf);
        let _ = std::fs::remove_dir_all(net.site.p(".leaf-kill.pulpdist"));
        net.sync_json(&[s(&relay)], &leaf);
        // The next run completes, copying only what the killed one did not.
        let out = bin().args(&args).arg("--json").output().expect("run");
        assert!(out.status.success(), "after {step}:{n}: {}", stderr(&out));
        assert_eq!(head_of(&relay), v2, "after {step}:{n}");
        let next: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let copied = next["trees"][0]["bytes_copied"].as_u64().expect("bytes");
        // Once a pack is put (every step but the walk and the fetches, which run in parallel
        // and may all come before the first put), it is not copied again.
        if !["replicate.walked", "replicate.fetched"].contains(&step.as_str()) {
            assert!(
                copied < full,
                "after {step}:{n}: copied {copied} of {full} again"
            );
        }
        assert_eq!(
            std::fs::read(relay.join("history/tree/00000000000000000002")).ok(),
            Some(v2.clone()),
            "after {step}:{n}: the archived head"
        );
    }
    let leaf = net.site.p("leaf-final");
    net.sync_json(&[s(&relay)], &leaf);
    assert_same_tree(&net.site.src(), &leaf);
}

#[test]
fn a_replicate_into_a_full_disk_leaves_the_previous_version_served() {
    let net = Net::new(85);
    let disk = net.site.p("small");
    let _mount = common::tmpfs(&disk, 8);
    let relay = disk.join("relay");
    net.replicate_json(&net.origin(), s(&relay));
    let v1 = head_of(&relay);
    std::fs::write(
        net.site.src().join("huge.iso"),
        common::random_bytes(12_000_000, 5),
    )
    .expect("big");
    net.site.publish();
    let out = net.replicate(&net.origin(), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(head_of(&relay), v1);
    let leaf = net.site.p("leaf");
    let v = net.sync_json(&[s(&relay)], &leaf);
    assert_eq!(v["version"].as_u64(), Some(1));
}

#[test]
fn a_replicate_into_a_bucket_serves_sites_and_one_that_refuses_writes_keeps_its_version() {
    let net = Net::new(86);
    let s3 = S3::start(&net.site.p("s3"), &["relay"]);
    let flags = s3.cli_flags(&net.site.p("."));
    let flag_refs: Vec<&str> = strs(&flags);
    let state = net.site.p("replicate-state");
    let mut extra: Vec<&str> = flag_refs.clone();
    extra.extend(["--state", s(&state), "--json"]);
    let out = net.replicate(&net.origin(), "s3://relay/mirror", &extra);
    assert!(out.status.success(), "{}", stderr(&out));
    let leaf = net.site.p("leaf");
    let out = net.sync_from(&["s3://relay/mirror"], &leaf, &flag_refs);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&net.site.src(), &leaf);
    // Version 2 over it, then a bucket that refuses writes (its directory read-only to
    // s3s-fs is not enough as root: the bucket is removed from under it instead).
    net.evolve(1);
    let out = net.replicate(&net.origin(), "s3://relay/mirror", &extra);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = net.sync_from(&["s3://relay/mirror"], &leaf, &flag_refs);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&net.site.src(), &leaf);
    let head = std::fs::read(net.site.p("s3/relay/mirror/heads/tree")).expect("bucket head");
    net.evolve(2);
    let mut bad = flags.clone();
    let i = bad
        .iter()
        .position(|f| f == "--s3-secret-key-file")
        .expect("flag")
        + 1;
    let wrong = net.site.p("wrong-secret");
    std::fs::write(&wrong, "not-the-secret\n").expect("secret");
    bad[i] = s(&wrong).to_string();
    let mut extra: Vec<&str> = strs(&bad);
    extra.extend(["--state", s(&state)]);
    let out = net.replicate(&net.origin(), "s3://relay/mirror", &extra);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(net.site.p("s3/relay/mirror/heads/tree")).expect("head"),
        head
    );
}

/// The value of a counter on a `pulpdist serve` `/metrics`.
fn served_bytes(url: &str) -> u64 {
    let host = url.trim_start_matches("http://");
    let mut c = common::http::Conn::open(host);
    let r = c.send("GET", "/metrics", &[]);
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix("pulpdist_http_response_body_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("bytes served on /metrics")
}

#[test]
fn a_two_tier_network_sends_each_new_byte_over_the_origins_link_once() {
    let net = Net::new(87);
    let origin = Builtin::start(&net.site.store());
    let relay_dir = net.relay();
    std::fs::create_dir_all(&relay_dir).expect("relay");
    let nginx = Nginx::start_relay(&net.site.p("nginx"), &relay_dir);
    let leaves: Vec<PathBuf> = (0..5).map(|i| net.site.p(&format!("leaf{i}"))).collect();
    for version in 1..=2u64 {
        if version == 2 {
            net.evolve(1);
        }
        let before = served_bytes(&origin.url);
        // The relay's timer: a replicate from the origin, over HTTP.
        let r = net.replicate_json(&origin.url, s(&relay_dir));
        assert_eq!(r["version"].as_u64(), Some(version));
        let relay_bytes = r["bytes_fetched"].as_u64().expect("bytes");
        for leaf in &leaves {
            let v = net.sync_json(&[&nginx.url, &origin.url], leaf);
            assert_eq!(v["version"].as_u64(), Some(version), "{v}");
            assert_eq!(v["head_store"], nginx.url.as_str(), "{v}");
            assert_eq!(v["stores"][1]["bytes"].as_u64(), Some(0), "{v}");
            assert_same_tree(&net.site.src(), leaf);
        }
        // The origin sent what the relay needed (its /metrics), not five times that.
        let sent = served_bytes(&origin.url) - before;
        assert!(
            sent <= relay_bytes + 4096 && sent + 4096 >= relay_bytes,
            "version {version}: the origin sent {sent} bytes, the relay needed {relay_bytes}"
        );
    }
    // The relay's nginx served the leaves; nothing of locks/ or tmp/ is exposed.
    assert!(nginx.log_lines().iter().any(|l| l.contains("/packs/")));
    let host = nginx.url.trim_start_matches("http://").to_string();
    let mut c = common::http::Conn::open(&host);
    assert_eq!(c.send("GET", "/locks/tree.lock", &[]).status, 404);
    assert_eq!(c.send("GET", "/tmp/", &[]).status, 404);
}

#[test]
fn a_hub_keeps_its_mirror_and_its_relay_with_one_command_or_one_file() {
    let net = Net::new(88);
    let relay = net.relay();
    let mirror = net.site.p("hub/mirror");
    let out = net.sync_from(&[&net.origin()], &mirror, &["--relay", s(&relay)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["relay"]["version"].as_u64(), Some(1), "{v}");
    assert_eq!(v["head_store"], s(&relay), "{v}");
    assert_same_tree(&net.site.src(), &mirror);
    assert_eq!(head_of(&relay), head_of(&net.site.store()));
    let lagging = net.site.p("lagging");
    let ok = std::process::Command::new("cp")
        .args(["-a", s(&relay), s(&lagging)])
        .status();
    assert!(ok.expect("cp").success());
    // The same from a configuration file: a list of stores and the relay.
    net.evolve(1);
    let cfg = net.site.p("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "store = [\"{}\"]\ntree = \"tree\"\ntrust = [\"{}\"]\nrelay = \"{}\"\ndest = \"{}\"\n",
            net.origin(),
            net.site.trust(),
            s(&relay),
            s(&mirror)
        ),
    )
    .expect("config");
    let v = run_json(&["sync", "--config", s(&cfg)]);
    assert_eq!(
        (v["version"].as_u64(), v["relay"]["version"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_same_tree(&net.site.src(), &mirror);
    // Of the stores a hub replicates from, one older than its relay is passed over for the
    // origin.
    net.evolve(3);
    let out = net.sync_from(
        &[s(&lagging), &net.origin()],
        &mirror,
        &["--relay", s(&relay)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["version"].as_u64(), v["relay"]["version"].as_u64()),
        (Some(3), Some(3)),
        "{v}"
    );
    assert_same_tree(&net.site.src(), &mirror);
    // A relay that cannot be updated (the origin is gone): the mirror is still synced from
    // what the relay holds, and the command fails, saying why.
    net.evolve(4);
    let gone = net.site.p("gone");
    let out = net.sync_from(&[s(&gone)], &mirror, &["--relay", s(&relay)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["relay"]["error"].as_str().is_some(), "{v}");
    assert_eq!(v["version"].as_u64(), Some(3), "{v}");
}

#[test]
fn a_relay_store_tampered_with_locally_is_repaired_or_refused_never_written_through() {
    let net = Net::new(89);
    let relay = net.relay();
    // A pack planted damaged under its own name before the first replicate (and one
    // truncated): checked, removed and copied again; sites of the relay alone get the tree.
    let origin_packs = packs(&net.site.store());
    std::fs::create_dir_all(relay.join("packs")).expect("packs");
    let (big, small) = (&origin_packs[0].0, &origin_packs[origin_packs.len() - 1].0);
    let mut b = std::fs::read(big).expect("pack");
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(relay.join("packs").join(big.file_name().expect("n")), b).expect("plant");
    std::fs::write(
        relay.join("packs").join(small.file_name().expect("n")),
        b"short",
    )
    .expect("plant");
    let r = net.replicate_json(&net.origin(), s(&relay));
    assert_eq!(r["packs_repaired"].as_u64(), Some(2), "{r}");
    let leaf = net.site.p("leaf");
    net.sync_json(&[s(&relay)], &leaf);
    assert_same_tree(&net.site.src(), &leaf);
    verify_read_data(&net, &relay);

    // A symlink as the tree's lock file: refused, its target untouched.
    net.evolve(1);
    let victim = net.site.p("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    let _ = std::fs::remove_file(relay.join("locks/tree.lock"));
    std::os::unix::fs::symlink(&victim, relay.join("locks/tree.lock")).expect("symlink");
    let out = net.replicate(&net.origin(), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("tree.lock"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    std::fs::remove_file(relay.join("locks/tree.lock")).expect("unplant");

    // Another tree's head as the relay's head of this tree: refused.
    let saved = head_of(&relay);
    let other = tempfile::tempdir().expect("tmp");
    std::fs::write(other.path().join("f"), b"other").expect("f");
    let key = net.site.key();
    let out = run(&[
        "publish",
        "--store",
        s(&relay),
        "--tree",
        "other",
        "--key",
        s(&key),
        s(other.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(relay.join("heads/other"), relay.join("heads/tree")).expect("foreign");
    let out = net.replicate(&net.origin(), s(&relay), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("tree 'other'"), "{}", stderr(&out));
    std::fs::write(relay.join("heads/tree"), saved).expect("restore");
    let r = net.replicate_json(&net.origin(), s(&relay));
    assert_eq!(r["version"].as_u64(), Some(2), "{r}");
}
