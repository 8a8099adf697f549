//! rsync in three roles, against a real rsync daemon on loopback: an upstream origin pulled
//! before publishing (tree definitions in TOML), a plain downstream origin (two passes:
//! payload, then metadata and deletions), and the fallback that fills gaps in a store.

use crate::common;

use std::fs;
use std::path::Path;

use common::servers::RsyncD;
use common::{
    assert_same_tree, mirror_swapped_at, run, run_json, s, snapshot, strs, sync_cmd, Site,
};

/// The paths of `root` that `rules` select, as a directory tree (made by rsync itself).
fn filtered_copy(root: &Path, rules: &[&str], dest: &Path) {
    let mut cmd = std::process::Command::new("rsync");
    cmd.args(["-rlpt", "--modify-window=-1"]);
    for r in rules {
        cmd.arg(format!("--filter={r}"));
    }
    let st = cmd
        .arg(format!("{}/", s(root)))
        .arg(format!("{}/", s(dest)))
        .status()
        .expect("rsync");
    assert!(st.success());
}

#[test]
fn publish_pulls_an_rsync_origin_through_tree_definitions() {
    let site = Site::new();
    let origin = site.p("origin");
    pulpdist_testdata::generate(&origin, 91, 2).expect("generate");
    let d = RsyncD::start(&site.p("rsyncd"), &[("up", &origin)]);
    let trees = site.p("trees.toml");
    fs::write(
        &trees,
        format!(
            "[trees.debian]\nsource = \"{}/up\"\nsubtrees = [\"dists\", \"pool/main\"]\n\
             filter = [\"- *.iso\", \"- Packages.gz\"]\n\n[trees.other]\nsource = \"/nowhere\"\n",
            d.url
        ),
    )
    .expect("trees.toml");
    let publish = |json: bool| {
        let mut a = vec![
            "publish".to_string(),
            "--trees".into(),
            s(&trees).into(),
            "--tree".into(),
            "debian".into(),
            "--store".into(),
            s(&site.store()).into(),
            "--key".into(),
            s(&site.key()).into(),
        ];
        if json {
            a.push("--json".into());
        }
        let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = publish(false);
    assert!(first.contains("pulled rsync://"), "{first}");
    let sync = || {
        run_json(&strs(&sync_cmd(
            s(&site.store()),
            "debian",
            &site.trust(),
            &site.mirror(),
            &[],
        )))
    };
    let r = sync();
    let expected = site.p("expected");
    let rules = [
        "- *.iso",
        "- Packages.gz",
        "+ /dists/***",
        "+ /pool/",
        "+ /pool/main/***",
        "- *",
    ];
    filtered_copy(&origin, &rules, &expected);
    assert_same_tree(&expected, &site.mirror());
    assert_eq!(r["filter"].as_array().expect("filter").len(), rules.len());

    // The next pull is incremental: after a change upstream, only what changed comes.
    pulpdist_testdata::evolve(&origin, 91, 1).expect("evolve");
    let second = publish(false);
    let pulled: u64 = second
        .lines()
        .find_map(|l| l.strip_prefix("pulled "))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("pulled N files");
    let total = snapshot(&expected)
        .values()
        .filter(|v| v.starts_with("file"))
        .count() as u64;
    assert!(pulled < total, "pulled {pulled} of {total} files again");
    sync();
    fs::remove_dir_all(&expected).expect("rm");
    filtered_copy(&origin, &rules, &expected);
    assert_same_tree(&expected, &site.mirror());

    // A bad rule in the file is named with the file.
    fs::write(
        &trees,
        "[trees.debian]\nsource = \"/x\"\nfilter = [\"merge /etc/x\"]\n",
    )
    .expect("write");
    let out = run(&[
        "publish",
        "--trees",
        s(&trees),
        "--tree",
        "debian",
        "--store",
        s(&site.store()),
        "--key",
        s(&site.key()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("merge /etc/x") && err.contains(s(&trees)),
        "{err}"
    );
}

#[test]
fn sync_from_a_plain_rsync_origin_payload_first_metadata_after() {
    let site = Site::new();
    let origin = site.p("origin");
    pulpdist_testdata::generate(&origin, 92, 2).expect("generate");
    let d = RsyncD::start(&site.p("rsyncd"), &[("debian", &origin)]);
    let url = format!("{}/debian", d.url);
    let sync = || {
        run_json(&[
            "sync",
            "--store",
            &url,
            "--tree",
            "debian",
            "--filter",
            "- *.iso",
            s(&site.mirror()),
        ])
    };
    let r = sync();
    assert!(r["files"].as_u64().expect("files") > 0, "{r}");
    let expected = site.p("expected");
    filtered_copy(&origin, &["- *.iso"], &expected);
    assert_same_tree(&expected, &site.mirror());
    assert_eq!(sync()["up_to_date"], true);

    // After a change: payload in the first session, metadata only in the second.
    pulpdist_testdata::evolve(&origin, 92, 1).expect("evolve");
    let before = d.sent().len();
    let r = sync();
    assert!(r["deleted"].as_u64().expect("deleted") > 0, "{r}");
    fs::remove_dir_all(&expected).expect("rm");
    filtered_copy(&origin, &["- *.iso"], &expected);
    assert_same_tree(&expected, &site.mirror());
    let sent = d.sent()[before..].to_vec();
    let sessions: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for (pid, _) in &sent {
            if v.last() != Some(pid) {
                v.push(pid.clone());
            }
        }
        v
    };
    assert_eq!(sessions.len(), 2, "two rsync sessions: {sent:?}");
    let is_meta = |f: &str| {
        let name = f.rsplit('/').next().unwrap_or(f);
        pulpdist_sync::DEFAULT_METADATA_PATTERNS
            .iter()
            .any(|p| pulpdist_sync::glob_match(p.as_bytes(), name.as_bytes()))
    };
    for (pid, f) in &sent {
        if pid == &sessions[0] {
            assert!(!is_meta(f), "metadata {f} sent with the payload");
        }
    }
    assert!(
        sent.iter().any(|(p, f)| p == &sessions[1] && is_meta(f)),
        "{sent:?}"
    );
}

/// Regression: a sync from an rsync origin ran rsync on the mirror's path, twice; a local
/// user who could write the mirror's parent could swap the mirror for a symlink between
/// the passes (or during one), and the second pass, with deletions, filled and pruned
/// whatever the symlink named. Now rsync writes through the locked directory's handle and
/// the path is checked before each pass and after the last.
#[test]
fn a_mirror_swapped_between_the_rsync_passes_sends_nothing_elsewhere() {
    let site = Site::new();
    let origin = site.p("origin");
    pulpdist_testdata::generate(&origin, 93, 2).expect("generate");
    let d = RsyncD::start(&site.p("rsyncd"), &[("debian", &origin)]);
    let url = format!("{}/debian", d.url);
    let args: Vec<String> = [
        "sync",
        "--store",
        &url,
        "--tree",
        "debian",
        s(&site.mirror()),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    run_json(&strs(&args));
    pulpdist_testdata::evolve(&origin, 93, 1).expect("evolve");

    let victim = site.p("victim");
    fs::create_dir_all(&victim).expect("victim");
    fs::write(victim.join("precious"), b"precious").expect("victim file");
    let before = snapshot(&victim);
    let (out, moved) = mirror_swapped_at(&site, &args, "sync.rsync_payload", &victim, "rsync");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        before,
        snapshot(&victim),
        "written through the symlink: {err}"
    );
    assert!(!out.status.success(), "the racing sync succeeded");
    assert!(
        err.contains("the mirror directory was replaced while the sync ran"),
        "{err}"
    );
    fs::remove_file(site.mirror()).expect("unplant");
    fs::rename(&moved, site.mirror()).expect("move back");
    run_json(&strs(&args));
    assert_same_tree(&origin, &site.mirror());
}

#[test]
fn gaps_in_a_store_are_filled_by_rsync_and_checked() {
    for damage in ["delete", "corrupt"] {
        let site = Site::new();
        pulpdist_testdata::generate(&site.src(), 93, 3).expect("generate");
        site.publish();
        let d = RsyncD::start(&site.p("rsyncd"), &[("tree", &site.src())]);
        // Damage the biggest data pack.
        let pack = fs::read_dir(site.store().join("packs"))
            .expect("packs")
            .map(|e| e.expect("entry").path())
            .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("pack");
        if damage == "delete" {
            fs::remove_file(&pack).expect("rm");
        } else {
            let mut b = fs::read(&pack).expect("read");
            for i in (100..b.len() - 100).step_by(5000) {
                b[i] ^= 0x33;
            }
            fs::write(&pack, b).expect("write");
        }
        // Without a fallback: refused, nothing written.
        assert!(!site.try_sync(&[]).status.success(), "{damage}");
        assert!(!site.mirror().join("dists").exists(), "{damage}");
        // With it: complete, at the signed version, and reported.
        let url = format!("{}/tree", d.url);
        // The fallback by flag, or (second round) from the config file.
        let conf = site.p("sync.conf");
        fs::write(&conf, format!("rsync-fallback = {url:?}\n")).expect("conf");
        let out = if damage == "delete" {
            site.try_sync(&["--rsync-fallback", &url, "--json"])
        } else {
            site.try_sync(&["--config", s(&conf), "--json"])
        };
        assert!(
            out.status.success(),
            "{damage}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(r["rsync_files"].as_u64().expect("n") > 0, "{damage}: {r}");
        assert_eq!(r["version"], 1);
        assert_same_tree(&site.src(), &site.mirror());
    }
}

#[test]
fn a_fallback_with_other_content_is_refused() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 94, 2).expect("generate");
    site.publish();
    // The fallback serves a changed copy of the tree.
    let other = site.p("other");
    filtered_copy(&site.src(), &[], &other);
    for (p, d) in snapshot(&other) {
        if d.starts_with("file") && p.to_string_lossy().ends_with(".deb") {
            fs::write(other.join(&p), b"not the signed content").expect("write");
        }
    }
    let d = RsyncD::start(&site.p("rsyncd"), &[("tree", &other)]);
    let pack = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("pack");
    fs::remove_file(&pack).expect("rm");
    let out = site.try_sync(&["--rsync-fallback", &format!("{}/tree", d.url)]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!site.mirror().join("pool").exists());
}
