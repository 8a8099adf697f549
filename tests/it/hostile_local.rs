//! Hostile input that is not the network's: modes a publisher should not be able to plant,
//! a first sync into a directory that holds other files, damaged packs in a local store,
//! oversized key and definition files, malformed rsync URLs, S3 without credentials.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

fn mode(p: &std::path::Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").permissions().mode() & 0o7777
}

/// Regression: setuid/setgid bits and world-writable directories from the index were
/// applied as they were (a root sync made `-rwsr-sr-x root` files).
#[test]
fn special_modes_are_masked_unless_asked_for() {
    let site = Site::new();
    fs::create_dir_all(site.src().join("bin")).expect("dir");
    fs::write(site.src().join("bin/tool"), b"#!/bin/sh\n").expect("file");
    fs::set_permissions(
        site.src().join("bin/tool"),
        fs::Permissions::from_mode(0o6755),
    )
    .expect("chmod");
    fs::create_dir_all(site.src().join("drop")).expect("dir");
    fs::set_permissions(site.src().join("drop"), fs::Permissions::from_mode(0o1777))
        .expect("chmod");
    site.publish();
    site.sync();
    assert_eq!(mode(&site.mirror().join("bin/tool")), 0o755);
    assert_eq!(mode(&site.mirror().join("drop")), 0o775);
    // The next sync changes nothing (the masked modes are what the plan expects).
    assert_eq!(site.sync()["requests"], 1);
    // A site that opts in gets them as published.
    let other = site.p("other/tree");
    let a = sync_cmd(
        s(&site.store()),
        "tree",
        &site.trust(),
        &other,
        &["--special-modes"],
    );
    run_json(&strs(&a));
    assert_eq!(mode(&other.join("bin/tool")), 0o6755);
    assert_eq!(mode(&other.join("drop")), 0o1777);
}

/// Regression: the first sync into a non-empty directory deleted everything the tree
/// lacked, with no guard (a dry run into / planned deleting it all).
#[test]
fn a_first_sync_into_a_directory_with_files_needs_adopt() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 71, 1).expect("generate");
    site.publish();
    fs::create_dir_all(site.mirror()).expect("mirror");
    fs::write(site.mirror().join("precious"), b"not the tree's").expect("file");
    for extra in [&[][..], &["--dry-run"][..]] {
        let out = site.try_sync(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("--adopt"), "{err}");
        assert!(site.mirror().join("precious").exists());
    }
    // With --adopt the mirror becomes the tree.
    let out = site.try_sync(&["--adopt"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&site.src(), &site.mirror());

    // A first sync killed after it began writing is finished by the next, without --adopt.
    let fresh = site.p("fresh/tree");
    let a = sync_cmd(s(&site.store()), "tree", &site.trust(), &fresh, &[]);
    let out = bin()
        .args(&a)
        .env("PULPDIST_FAILPOINT", "sync.write:3")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fail point"));
    assert!(fs::read_dir(&fresh).expect("written into").next().is_some());
    let out = bin().args(&a).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&site.src(), &fresh);
}

/// Regression: a truncated or swapped pack in a local store exited 1; the store serving
/// other bytes than the signed index names is a verification failure (3).
#[test]
fn a_truncated_or_swapped_pack_is_refused_with_3() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 72, 2).expect("generate");
    site.publish_with(&["--pack-size", "200000"]);
    let mut packs: Vec<_> = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .flatten()
        .map(|e| e.path())
        .collect();
    packs.sort_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let (small, big) = (packs[0].clone(), packs[packs.len() - 1].clone());
    let keep = site.p("keep.pack");
    fs::copy(&big, &keep).expect("keep");
    let len = fs::metadata(&big).expect("len").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let refused = || {
        let out = site.try_sync(&[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{err}");
    };
    refused();
    // Swapped: another pack's bytes under this pack's name.
    fs::copy(&small, &big).expect("swap");
    refused();
    assert!(!site.mirror().join("dists").exists());
    // Over HTTP: a range past the end of the truncated pack (416), or a body shorter than
    // the signed size.
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let server = common::servers::Builtin::start(&site.store());
    let a = sync_cmd(
        &server.url,
        "tree",
        &site.trust(),
        &site.mirror(),
        &["--retries", "0"],
    );
    let out = run(&strs(&a));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    fs::copy(&keep, &big).expect("restore");
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

/// Regression (from a review): every directory written stayed open, so a sync into more
/// directories than the open-files limit failed. Run under a limit of 128 open files, a
/// tree of 600 directories syncs; so does a name of 255 bytes (its temporary name is cut by
/// bytes, not characters).
#[test]
fn many_directories_and_long_names_under_a_small_open_files_limit() {
    let site = Site::new();
    for i in 0..600 {
        let d = site.src().join(format!("d{}/e{i}", i % 30));
        fs::create_dir_all(&d).expect("dir");
        fs::write(d.join("f"), format!("{i}")).expect("file");
    }
    let long: String = std::iter::repeat_n('\u{6587}', 85).collect(); // 85 x 3 bytes
    assert_eq!(long.len(), 255);
    fs::write(site.src().join(&long), b"long").expect("long name");
    site.publish();
    let mut a = vec![
        "--nofile=128".to_string(),
        env!("CARGO_BIN_EXE_pulpdist").to_string(),
    ];
    a.extend(site.sync_args());
    let synced = || {
        let out = std::process::Command::new("prlimit")
            .args(&a)
            .output()
            .expect("prlimit (util-linux)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&site.src(), &site.mirror());
    };
    synced();
    // And an update touching all of them.
    for i in 0..600 {
        fs::write(
            site.src().join(format!("d{}/e{i}/f", i % 30)),
            format!("{i} v2"),
        )
        .expect("file");
    }
    site.publish();
    synced();
}

/// Regression: --trees, --trust and key files were read whole, so `/dev/zero` exhausted
/// memory. Each is refused past 1 MiB, at once.
#[test]
fn key_trust_and_definition_files_are_size_capped() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 73, 1).expect("generate");
    site.publish();
    let zero = "/dev/zero";
    let cases: Vec<Vec<String>> = vec![
        sync_cmd(s(&site.store()), "tree", zero, &site.mirror(), &[]),
        sync_cmd(
            "https://127.0.0.1:1",
            "tree",
            &site.trust(),
            &site.mirror(),
            &["--ca", zero],
        ),
        site.publish_cmd(std::path::Path::new(zero), &[]),
        site.publish_cmd(&site.key(), &["--trees", zero]),
    ];
    for a in cases {
        let out = bin_timed().args(&a).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains("larger than"), "{err}");
        assert!(peak_rss_kb(&err) < 64 * 1024, "{a:?}: {err}");
    }
}

/// Regression: `--store rsync://` with an empty host made rsync run ssh to a host named
/// `rsync`. A malformed rsync URL is a usage error before rsync runs.
#[test]
fn malformed_rsync_urls_are_refused_before_rsync_runs() {
    let site = Site::new();
    for url in [
        "rsync://",
        "rsync:///debian",
        "rsync://-oProxyCommand=x/m",
        "rsync://host",
    ] {
        let a = sync_cmd(url, "tree", &site.trust(), &site.mirror(), &[]);
        let out = run(&strs(&a));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains("not an rsync URL"), "{url}: {err}");
        // The same URL as a publish source (regression: exit 1 once rsync had its own error).
        let out = site.publish_raw(&[url]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "publish {url}: {err}");
        assert!(err.contains("not an rsync URL"), "publish {url}: {err}");
    }
}

/// Regression: an s3:// store without credentials had the AWS client query the cloud
/// instance-metadata address and wait on it. Now it is an error at once, naming the ways
/// to give credentials.
#[test]
fn s3_without_credentials_fails_at_once() {
    let site = Site::new();
    let a = sync_cmd(
        "s3://bucket/prefix",
        "tree",
        &site.trust(),
        &site.mirror(),
        &[],
    );
    let out = bin()
        .args(&a)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no S3 credentials") && err.contains("--s3-instance-credentials"),
        "{err}"
    );
}

/// A site whose mirror holds version 1 of six files in `sub`, and version 2 published
/// (without a delta): three rewritten (and made `0600` with `chmod`), one deleted, one new.
fn synced_then_changed(sub: &str, chmod: bool) -> Site {
    let site = Site::new();
    let dir = site.src().join(sub);
    fs::create_dir_all(&dir).expect("dir");
    for i in 0..6 {
        fs::write(dir.join(format!("f{i}")), format!("v1 {i}")).expect("file");
    }
    site.publish_with(&["--deltas", "0"]);
    site.sync();
    for i in 0..3 {
        let f = dir.join(format!("f{i}"));
        fs::write(&f, format!("v2 {i} longer")).expect("file");
        if chmod {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
    fs::remove_file(dir.join("f5")).expect("rm");
    fs::write(dir.join("f6"), b"new").expect("new");
    site.publish_with(&["--deltas", "0"]);
    site
}

/// Regression: a directory swapped for a symlink while a (root) sync ran sent later writes
/// outside the mirror: the "real directory" check was cached, then path-based create,
/// rename, chmod, utimes and delete followed the symlink. Now every write is relative to a
/// directory handle opened without following symlinks. Held by a fail point at two moments
/// (before the directory is opened for writing, and after), the swap changes nothing
/// outside the mirror.
#[test]
fn a_directory_swapped_for_a_symlink_mid_sync_cannot_redirect_writes() {
    for (round, at) in ["sync.fetch:1", "sync.write:1"].into_iter().enumerate() {
        let site = synced_then_changed("pub/a", true);

        let victim = site.p("victim");
        fs::create_dir_all(&victim).expect("victim");
        for i in 0..7 {
            fs::write(victim.join(format!("f{i}")), b"precious").expect("victim file");
        }
        let before = snapshot(&victim);
        let release = site.p(&format!("release{round}"));
        let child = hold_at(&site.sync_args(), at, &release);
        // The local user's move: the directory goes away, a symlink to the victim in its place.
        let m = site.mirror().join("pub/a");
        fs::rename(&m, site.p(&format!("moved{round}"))).expect("move away");
        std::os::unix::fs::symlink(&victim, &m).expect("plant");
        fs::write(&release, b"go").expect("release");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            before,
            snapshot(&victim),
            "{at}: written through the symlink ({})",
            String::from_utf8_lossy(&out.stderr)
        );
        // The racing sync did not record the version over a mirror it could not finish:
        // it failed, and the next ordinary sync puts the mirror right, inside.
        assert!(
            !out.status.success(),
            "{at}: the racing sync recorded its version"
        );
        let out = site.try_sync(&[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&site.src(), &site.mirror());
        assert_eq!(before, snapshot(&victim));
    }
}

/// Regression: the mirror directory itself, swapped for a symlink by a local user who can
/// write its parent while a (root) sync ran, sent the sync's writes and deletions into
/// whatever the symlink named: the mirror was locked by one open, then looked up by its
/// path again to plan and to write. Now every write goes through the locked directory,
/// and the sync checks that the path still names it before it writes, before it renames
/// and before it records the version. Held by a fail point before planning, after
/// planning, mid-write and after the flush, the swap changes nothing outside the mirror,
/// the racing sync fails naming the replaced mirror, and once the mirror is back the next
/// sync puts it right.
#[test]
fn the_mirror_swapped_for_a_symlink_mid_sync_writes_nothing_outside_it() {
    let points = [
        "sync.head:1",
        "sync.planned:1",
        "sync.write:2",
        "sync.applying:1",
    ];
    for (round, at) in points.into_iter().enumerate() {
        let site = synced_then_changed("pub", false);

        // What the symlink will name: files the tree has (to be rewritten) and lacks (to
        // be deleted), as a mirror would hold them.
        let victim = site.p("victim");
        fs::create_dir_all(victim.join("pub")).expect("victim");
        for name in ["f0", "f1", "f5", "precious"] {
            fs::write(victim.join("pub").join(name), b"precious").expect("victim file");
        }
        fs::write(victim.join("outside"), b"precious").expect("victim file");
        let before = snapshot(&victim);
        let args = site.sync_args();
        let (out, moved) = mirror_swapped_at(&site, &args, at, &victim, &round.to_string());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            before,
            snapshot(&victim),
            "{at}: written through the symlink ({err})"
        );
        assert!(
            !out.status.success(),
            "{at}: the racing sync recorded its version"
        );
        assert!(
            err.contains("the mirror directory was replaced while the sync ran"),
            "{at}: {err}"
        );
        // Left in place, the planted symlink (another user's) is refused by the next sync,
        // which would otherwise take it for the operator's way of naming the mirror.
        std::os::unix::fs::lchown(site.mirror(), Some(65534), Some(65534)).expect("chown -h");
        let out = site.try_sync(&[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{at}: synced through another user's symlink"
        );
        assert!(err.contains("symlink owned by uid 65534"), "{at}: {err}");
        assert_eq!(
            before,
            snapshot(&victim),
            "{at}: written through the symlink"
        );
        // The operator puts the mirror back; the next sync finishes or redoes the update.
        fs::remove_file(site.mirror()).expect("unplant");
        fs::rename(&moved, site.mirror()).expect("move back");
        let out = site.try_sync(&[]);
        assert!(
            out.status.success(),
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&site.src(), &site.mirror());
        assert_eq!(before, snapshot(&victim));
    }
}

/// Regression: the state directory beside the mirror (in the same parent), swapped for a
/// symlink by a local user who can write that parent while a (root) sync ran, received the
/// sync's writes by path: staged chunks, cached nodes, the applying mark and the applied
/// head went into whatever the symlink named, and the staging area's clearing deleted
/// there. Now the state is reached through the directory the sync opened and locked, so
/// the swap changes nothing outside it: the sync finishes into its own state, wherever
/// that was moved.
#[test]
fn the_state_swapped_for_a_symlink_mid_sync_receives_nothing_outside_it() {
    for (round, at) in [
        "sync.head:1",
        "sync.planned:1",
        "sync.write:2",
        "sync.applying:1",
    ]
    .into_iter()
    .enumerate()
    {
        let site = synced_then_changed("pub", false);
        let state = site.p("downstream/.tree.pulpdist");
        assert!(
            state.join("nodes").is_dir(),
            "the state is not where the test thinks"
        );
        let victim = site.p("victim");
        for sub in ["nodes", "staging"] {
            fs::create_dir_all(victim.join(sub)).expect("victim");
        }
        fs::write(victim.join("precious"), b"precious").expect("victim file");
        let before = snapshot(&victim);
        let args = site.sync_args();
        let (out, moved) = swapped_at(&site, &args, at, &state, &victim, &round.to_string());
        assert_eq!(
            before,
            snapshot(&victim),
            "{at}: written through the symlink ({})",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{at}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(&site.src(), &site.mirror());
        // The operator puts the state back: it records the version the sync applied.
        fs::remove_file(&state).expect("unplant");
        fs::rename(&moved, &state).expect("move back");
        let report = site.sync();
        assert_eq!(report["up_to_date"], true, "{at}: {report}");
        assert_eq!(before, snapshot(&victim));
    }
}

/// The operator may name the mirror through a symlink of their own (root's, here); the
/// same link owned by another user is refused before anything is written.
#[test]
fn a_mirror_named_through_a_symlink_is_synced_if_it_is_ours() {
    let site = Site::new();
    fs::write(site.src().join("a"), b"one").expect("file");
    site.publish();
    let real = site.p("real");
    fs::create_dir_all(&real).expect("real");
    fs::create_dir_all(site.p("downstream")).expect("the mirror's parent");
    std::os::unix::fs::symlink(&real, site.mirror()).expect("link");
    site.sync();
    assert_same_tree(&site.src(), &real);
    fs::write(site.src().join("a"), b"two").expect("file");
    site.publish();
    std::os::unix::fs::lchown(site.mirror(), Some(65534), Some(65534)).expect("chown -h");
    let before = snapshot(&real);
    let out = site.try_sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "through another's symlink: {err}"
    );
    assert!(
        err.contains("refusing to write: the mirror is named through a symlink owned by uid 65534"),
        "{err}"
    );
    assert_eq!(before, snapshot(&real));

    // Likewise the state directory beside it, in the same parent.
    fs::remove_file(site.mirror()).expect("unlink");
    std::os::unix::fs::symlink(&real, site.mirror()).expect("link");
    let state = site.p("downstream/.tree.pulpdist");
    let elsewhere = site.p("state-elsewhere");
    fs::rename(&state, &elsewhere).expect("move the state");
    std::os::unix::fs::symlink(&elsewhere, &state).expect("link the state");
    std::os::unix::fs::lchown(&state, Some(65534), Some(65534)).expect("chown -h");
    let out = site.try_sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the state directory is named through a symlink owned by uid 65534"),
        "{err}"
    );
    assert_eq!(before, snapshot(&real));
    std::os::unix::fs::lchown(&state, Some(0), Some(0)).expect("chown -h");
    site.sync();
    assert_same_tree(&site.src(), &real);

    // A state directory another user owns (who could plant symlinks in it) is refused too,
    // and its lock is never opened through a symlink.
    fs::write(site.src().join("a"), b"three").expect("file");
    site.publish();
    let before = snapshot(&real);
    std::os::unix::fs::chown(&elsewhere, Some(65534), Some(65534)).expect("chown");
    let out = site.try_sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the state directory is owned by uid 65534"),
        "{err}"
    );
    std::os::unix::fs::chown(&elsewhere, Some(0), Some(0)).expect("chown");
    let target = site.p("not-a-lock");
    fs::write(&target, b"precious").expect("target");
    fs::remove_file(elsewhere.join("lock")).expect("rm lock");
    std::os::unix::fs::symlink(&target, elsewhere.join("lock")).expect("plant");
    let out = site.try_sync(&[]);
    assert!(!out.status.success(), "locked through a symlink");
    assert_eq!(fs::read(&target).expect("target"), b"precious");
    assert_eq!(before, snapshot(&real));
    fs::remove_file(elsewhere.join("lock")).expect("unplant");
    site.sync();
    assert_same_tree(&site.src(), &real);
}

/// From a review: a mode change of a file with other hard links (a mirror deduplicated by
/// links, or a link to a file outside planted by a local user) changed every name of it,
/// or, refused, stopped every sync at the same point. The file is replaced by a copy with
/// the new mode; the other names keep theirs.
#[test]
fn a_mode_change_of_a_hard_linked_file_leaves_the_other_links_alone() {
    let site = Site::new();
    fs::write(site.src().join("tool"), b"same bytes").expect("file");
    site.publish();
    site.sync();
    let outside = site.p("outside-file");
    fs::hard_link(site.mirror().join("tool"), &outside).expect("link");
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o640)).expect("chmod");
    let before = fs::metadata(&outside).expect("stat");
    fs::set_permissions(site.src().join("tool"), fs::Permissions::from_mode(0o755)).expect("chmod");
    site.publish();
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    let after = fs::metadata(&outside).expect("stat");
    assert_eq!(
        after.permissions().mode() & 0o7777,
        0o640,
        "the other link's mode changed"
    );
    assert_eq!(
        after.modified().ok(),
        before.modified().ok(),
        "the other link's mtime changed"
    );
    assert_eq!(fs::read(&outside).expect("read"), b"same bytes");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(site.mirror().join("tool"))
            .expect("stat")
            .nlink(),
        1
    );
}

/// A release re-stamped a file the mirror holds; between the survey and the attribute fix
/// a local user rewrites it (same size). The sync refuses to put the new version's mtime
/// on content it no longer trusts and records nothing; the next sync rewrites the file.
#[test]
fn a_restamped_file_changed_during_the_sync_is_not_stamped_current() {
    let site = Site::new();
    let dir = site.src().join("src");
    fs::create_dir_all(&dir).expect("dir");
    for i in 0..3 {
        fs::write(dir.join(format!("f{i}.c")), format!("int f{i};\n")).expect("file");
    }
    site.publish();
    site.sync();
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    for i in 0..3 {
        filetime::set_file_mtime(dir.join(format!("f{i}.c")), later).expect("touch");
    }
    site.publish();
    let release = site.p("release");
    let child = hold_at(&site.sync_args(), "sync.planned", &release);
    // Same size, other bytes, a fresh mtime: not the old version's file any more.
    fs::write(site.mirror().join("src/f1.c"), b"int XX;\n").expect("tamper");
    fs::write(&release, b"go").expect("release");
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success(), "the sync stamped a changed file");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("changed during the sync"), "{err}");
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}
