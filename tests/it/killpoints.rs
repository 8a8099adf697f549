//! A sync or a publish killed at any step (a fail point aborts the process there, as
//! `kill -9` or a power cut would) loses nothing: every file on the mirror is whole (its old
//! or its new version, byte for byte), every repository index on it names only files that
//! are there with the hashes it states, and the next run completes. For publish: the
//! store's head (old or new) verifies and syncs, and the next publish completes.
//!
//! The kill points are not sampled by timing: a first run lists every step it passes
//! (`PULPDIST_FAILPOINT_LOG`), and then one run is stopped at each of them
//! (`PULPDIST_FAILPOINT=STEP:N`), each from the same starting state.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{assert_same_snapshot, assert_whole, bin, repo, s, snapshot, strs, sync_cmd, Site};

/// The steps a run with `args` passes, in order, each with the path it was done to (empty
/// for a step that names none).
fn trace_of(args: &[String], log: &Path) -> Vec<(String, String)> {
    let _ = std::fs::remove_file(log);
    common::run_logged(args, log);
    std::fs::read_to_string(log)
        .expect("log")
        .lines()
        .map(|l| {
            let (step, path) = l.split_once('\t').unwrap_or((l, ""));
            (step.to_string(), path.to_string())
        })
        .collect()
}

/// Each step of `trace`, with how many times it was passed.
fn count(trace: &[(String, String)]) -> BTreeMap<String, u64> {
    let mut steps = BTreeMap::new();
    for (step, _) in trace {
        *steps.entry(step.clone()).or_insert(0) += 1;
    }
    steps
}

/// Black-box order of a sync's renames and deletions (what inotifywait would record):
/// payload, then metadata with the top indexes last; deletions after every rename, old
/// top indexes first, then other metadata, then payload.
fn assert_order(trace: &[(String, String)]) {
    let name = |p: &str| p.rsplit('/').next().unwrap_or("").to_string();
    let top = |p: &str| ["Release", "InRelease", "repomd.xml"].contains(&name(p).as_str());
    let meta = |p: &str| {
        let n = name(p);
        top(p) || n.starts_with("Packages") || n.ends_with("-primary.xml")
    };
    let pos = |pred: &dyn Fn(&str, &str) -> bool| -> Vec<usize> {
        trace
            .iter()
            .enumerate()
            .filter(|(_, (s, p))| pred(s, p))
            .map(|(i, _)| i)
            .collect()
    };
    let before = |a: &[usize], b: &[usize], what: &str| {
        if let (Some(x), Some(y)) = (a.iter().max(), b.iter().min()) {
            assert!(x < y, "{what}: {trace:#?}");
        }
    };
    let payload = pos(&|s, _| s == "sync.rename" || s == "sync.symlink");
    let lower = pos(&|s, p| s == "sync.rename_metadata" && !top(p));
    let upper = pos(&|s, p| s == "sync.rename_metadata" && top(p));
    assert!(!lower.is_empty() && !upper.is_empty(), "{trace:#?}");
    before(&payload, &lower, "payload before metadata");
    before(&lower, &upper, "indexes before the indexes that list them");
    let deletes = pos(&|s, _| s.starts_with("sync.delete"));
    before(&upper, &deletes, "deletions after every rename");
    let del_file = |pred: &dyn Fn(&str) -> bool| pos(&|s, p| s == "sync.delete_file" && pred(p));
    let (dt, dm, dp) = (
        del_file(&|p| top(p)),
        del_file(&|p| meta(p) && !top(p)),
        del_file(&|p| !meta(p)),
    );
    assert!(
        !dt.is_empty() && !dm.is_empty() && !dp.is_empty(),
        "{trace:#?}"
    );
    // Each old top index goes before the indexes below its directory.
    for &t in &dt {
        let dir = trace[t]
            .1
            .rsplit_once('/')
            .map_or("", |(d, _)| d)
            .to_string();
        let below: Vec<usize> = dm
            .iter()
            .copied()
            .filter(|&i| trace[i].1.starts_with(&format!("{dir}/")))
            .collect();
        before(
            &[t],
            &below,
            "old top indexes deleted before the indexes they list",
        );
    }
    before(&dm, &dp, "old indexes deleted before the files they name");
}

/// Runs `args` stopped at the `n`th pass of `step`; asserts it died there.
fn kill_at(args: &[String], step: &str, n: u64) {
    let out = bin()
        .args(args)
        .env("PULPDIST_FAILPOINT", format!("{step}:{n}"))
        .output()
        .expect("run");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fail point"),
        "{step}:{n} was not reached: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cp -a` (modes, mtimes, symlinks kept): the starting state of each kill.
fn copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success());
}

#[test]
fn a_sync_killed_at_any_step_loses_nothing_and_resumes() {
    let site = Site::new();
    let v1 = site.p("v1");
    repo::write(&v1, 1);
    repo::write(&site.src(), 1);
    repo::check(&site.src()).expect("v1 is consistent");
    site.publish();
    site.sync();
    let old = snapshot(&site.mirror());
    std::fs::remove_dir_all(site.src()).expect("clear");
    repo::write(&site.src(), 2);
    repo::check(&site.src()).expect("v2 is consistent");
    let new = snapshot(&site.src());
    site.publish();

    // The starting state of every kill: the mirror at v1 and its state.
    let downstream = site.p("downstream");
    let pristine = site.p("pristine");
    copy(&downstream, &pristine);
    let args = site.sync_args();
    let trace = trace_of(&args, &site.p("steps.log"));
    let steps = count(&trace);
    assert_order(&trace);
    common::assert_same_tree(&site.src(), &site.mirror());
    for step in [
        "sync.write",
        "sync.rename",
        "sync.rename_metadata",
        "sync.delete",
        "sync.recorded",
    ] {
        assert!(steps.contains_key(step), "{step} not passed: {steps:?}");
    }
    let mut points = 0;
    for (step, count) in &steps {
        for n in 1..=*count {
            let at = format!("{step}:{n}");
            copy(&pristine, &downstream);
            kill_at(&args, step, n);
            assert_whole(&site.mirror(), &old, &new, &at);
            if let Err(e) = repo::check(&site.mirror()) {
                panic!("killed at {at}, an index names what is not there:\n{e}");
            }
            if points % 4 == 0 {
                // The resume is killed too (if it gets that far): the same holds.
                let _ = bin()
                    .args(&args)
                    .env("PULPDIST_FAILPOINT", "sync.rename:2")
                    .output()
                    .expect("run");
                let again = format!("{at}, then in the resume");
                assert_whole(&site.mirror(), &old, &new, &again);
                if let Err(e) = repo::check(&site.mirror()) {
                    panic!("killed at {again}, an index names what is not there:\n{e}");
                }
            }
            let out = bin().args(&args).output().expect("resume");
            assert!(
                out.status.success(),
                "resume after {at}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_same_snapshot(
                &new,
                &snapshot(&site.mirror()),
                &format!("resumed after {at}"),
            );
            points += 1;
        }
    }
    eprintln!("sync: {points} kill points: {steps:?}");
    assert!(
        points >= 60,
        "only {points} kill points in a sync: {steps:?}"
    );
}

#[test]
fn a_publish_killed_at_any_step_keeps_the_store_usable() {
    let site = Site::new();
    repo::write(&site.src(), 1);
    let v1 = snapshot(&site.src());
    site.publish();
    std::fs::remove_dir_all(site.src()).expect("clear");
    repo::write(&site.src(), 2);
    let v2 = snapshot(&site.src());
    let (store, state) = (site.store(), site.p(".store.pulpdist-publish"));
    let (store0, state0) = (site.p("store0"), site.p("state0"));
    copy(&store, &store0);
    copy(&state, &state0);
    // Small packs, so that a publish puts several.
    let args = site.publish_cmd(&site.key(), &["--pack-size", "65536"]);
    let steps = count(&trace_of(&args, &site.p("steps.log")));
    assert!(
        steps.get("publish.pack_put").is_some_and(|n| *n >= 3),
        "{steps:?}"
    );
    let mut points = 0;
    for (step, count) in &steps {
        for n in 1..=*count {
            let at = format!("{step}:{n}");
            copy(&store0, &store);
            copy(&state0, &state);
            kill_at(&args, step, n);
            // Whatever head the store holds verifies, and a fresh mirror syncs to it whole.
            let fresh = site.p("fresh");
            let _ = std::fs::remove_dir_all(&fresh);
            let sync = sync_cmd(
                s(&store),
                "tree",
                &site.trust(),
                &fresh.join("m"),
                &["--json"],
            );
            let out = bin().args(strs(&sync)).output().expect("sync");
            assert!(
                out.status.success(),
                "sync after publish killed at {at}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got = snapshot(&fresh.join("m"));
            assert!(
                got == v1 || got == v2,
                "killed at {at}: the store's head gives neither version"
            );
            // The next publish completes, and syncs to version 2.
            let out = bin().args(&args).output().expect("publish");
            assert!(
                out.status.success(),
                "publish after {at}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = bin().args(strs(&sync)).output().expect("sync");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_same_snapshot(
                &v2,
                &snapshot(&fresh.join("m")),
                &format!("after publish killed at {at}"),
            );
            points += 1;
        }
    }
    eprintln!("publish: {points} kill points: {steps:?}");
    assert!(
        points >= 40,
        "only {points} kill points in a publish: {steps:?}"
    );
}
