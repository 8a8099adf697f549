//! A mirror that is never wrong: one sync of a mirror at a time, state never inside the
//! tree it belongs to, dry runs that write nothing anywhere, and the documented exit codes.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_same_snapshot, assert_same_tree, bin, hold_at, run, s, snapshot, strs, Site};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Regression: two syncs of one mirror ran at once, and the slower one could rename older
/// files over the faster one's and lower the recorded version.
#[test]
fn one_sync_of_a_mirror_at_a_time() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 11, 1).expect("generate");
    site.publish();
    let release = site.p("release");
    let a = hold_at(&site.sync_args(), "sync.planned", &release);
    // A second sync is refused at once, naming the holder.
    let b = site.try_sync(&[]);
    assert_eq!(b.status.code(), Some(4), "{}", stderr(&b));
    let pid = a.id().to_string();
    assert!(
        stderr(&b).contains("another sync") && stderr(&b).contains(&pid),
        "{}",
        stderr(&b)
    );
    // Another state directory for the same mirror does not get around it (the mirror
    // itself is locked), nor does an rsync:// origin.
    let b = site.try_sync(&["--state", s(&site.p("elsewhere"))]);
    assert_eq!(b.status.code(), Some(4), "{}", stderr(&b));
    let r = run(&[
        "sync",
        "--store",
        "rsync://127.0.0.1:1/m",
        "--tree",
        "tree",
        s(&site.mirror()),
    ]);
    assert_eq!(r.status.code(), Some(4), "{}", stderr(&r));
    // A dry run waits for nobody's half-done state either.
    let d = site.try_sync(&["--dry-run"]);
    assert_eq!(d.status.code(), Some(4), "{}", stderr(&d));
    // With --wait, it waits for the first to finish and then has nothing to do.
    let mut waiting = site.sync_args();
    waiting.splice(
        1..1,
        [
            "--wait".to_string(),
            "120".to_string(),
            "--json".to_string(),
        ],
    );
    let log = site.p("waiting.log");
    let c = bin()
        .args(&waiting)
        .env("PULPDIST_FAILPOINT_LOG", &log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Released only once the second sync says it is waiting for the lock.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sync.waiting")) {
        assert!(Instant::now() < deadline, "the second sync never waited");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&release, b"go").expect("release");
    let a = a.wait_with_output().expect("a");
    assert!(a.status.success(), "{}", stderr(&a));
    let c = c.wait_with_output().expect("c");
    assert!(c.status.success(), "{}", stderr(&c));
    let r: serde_json::Value = serde_json::from_slice(&c.stdout).expect("json");
    assert_eq!(r["up_to_date"], true, "{r}");
    assert_same_tree(&site.src(), &site.mirror());
}

/// Regression: `pulpdist sync ... .` put its default state inside the mirror, deleted it as
/// an extra file, and failed on every run.
#[test]
fn a_mirror_named_dot_or_dotdot_keeps_its_state_beside_it() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 12, 1).expect("generate");
    site.publish();
    let mirror = site.mirror();
    std::fs::create_dir_all(&mirror).expect("mirror");
    let sync_in = |dir: &Path, dest: &str, extra: &[&str]| {
        let mut a = common::sync_cmd(
            s(&site.store()),
            "tree",
            &site.trust(),
            Path::new(dest),
            extra,
        );
        a.push("--json".into());
        Command::new(env!("CARGO_BIN_EXE_pulpdist"))
            .args(&a)
            .current_dir(dir)
            .output()
            .expect("sync")
    };
    for _ in 0..2 {
        let o = sync_in(&mirror, ".", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_same_tree(&site.src(), &mirror);
    assert!(site.p("downstream/.tree.pulpdist/applied-tree").exists());
    // `sub/..` and `tree/.` name the same mirror and find the same state: up to date.
    std::fs::create_dir_all(mirror.join("docs")).ok();
    let o = sync_in(&mirror.join("docs"), "..", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["up_to_date"], true, "{r}");
    // A state directory inside the mirror, or a mirror at /, is refused as a usage error.
    let o = sync_in(&mirror, ".", &["--state", "sub/state"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
    assert!(!mirror.join("sub").exists());
    let o = sync_in(&mirror, "/", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_same_tree(&site.src(), &mirror);
    // The publisher's default state for `--store .` goes beside the store, not in it.
    let key = s(&site.key()).to_string();
    let src = s(&site.src()).to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_pulpdist"))
        .args([
            "publish", "--store", ".", "--tree", "tree", "--key", &key, &src,
        ])
        .current_dir(site.store())
        .output()
        .expect("publish");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!site.store().join(".store.pulpdist-publish").exists());
    assert!(site.p(".store.pulpdist-publish/tree").exists());
    let o = Command::new(env!("CARGO_BIN_EXE_pulpdist"))
        .args([
            "publish", "--store", ".", "--tree", "tree", "--key", &key, "--state", "cache", &src,
        ])
        .current_dir(site.store())
        .output()
        .expect("publish");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Everything observable under `dir`, the state directories included.
fn everything(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, String> {
    snapshot(dir)
}

/// Regression: `--dry-run` created the state directory and filled the node cache.
#[test]
fn a_dry_run_writes_nothing_anywhere() {
    let site = Site::new();
    let parent = site.p("downstream");
    std::fs::create_dir_all(&parent).expect("parent");
    common::repo::write(&site.src(), 1);
    site.publish();
    // Before the first sync: no state directory appears.
    let before = everything(&parent);
    let o = site.try_sync(&["--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_snapshot(
        &before,
        &everything(&parent),
        "a first dry run changed the parent",
    );
    site.sync();
    // An update that deletes, overwrites, changes modes, replaces a file by a directory and
    // a directory by a file; and back (version 3 is version 1 again).
    for v in [2, 1] {
        std::fs::remove_dir_all(site.src()).expect("clear");
        common::repo::write(&site.src(), v);
        site.publish();
        let before = everything(&parent);
        let o = site.try_sync(&["--dry-run"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let plan = String::from_utf8_lossy(&o.stdout);
        assert!(
            plan.contains("would sync") && plan.contains("delete"),
            "{plan}"
        );
        assert_same_snapshot(
            &before,
            &everything(&parent),
            "a dry run changed the parent",
        );
        site.sync();
    }
    assert_same_tree(&site.src(), &site.mirror());
}

/// Every documented exit code, through the binary.
#[test]
fn exit_codes_are_the_documented_ones() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 13, 1).expect("generate");
    site.publish();
    let store = s(&site.store()).to_string();
    let trust = site.trust();
    let mirror = s(&site.mirror()).to_string();
    let code = |args: &[&str]| {
        let o = run(args);
        (o.status.code(), stderr(&o))
    };
    // 0
    assert_eq!(
        code(&["sync", "--store", &store, "--tree", "tree", "--trust", &trust, &mirror]).0,
        Some(0)
    );
    // 2: missing or conflicting options, a bad tree name.
    for args in [
        vec!["sync", "--tree", "tree", "--trust", &trust, &mirror],
        vec!["sync", "--store", &store, "--tree", "tree", &mirror],
        vec![
            "sync", "--store", &store, "--tree", "tree", "--trust", &trust,
        ],
        vec![
            "sync", "--store", &store, "--tree", "tree", "--trust", &trust, "--cert", "c.pem",
            &mirror,
        ],
        vec![
            "sync", "--store", &store, "--tree", "tree", "--trust", &trust, "--filter", "- x",
            &mirror,
        ],
        vec![
            "sync", "--store", &store, "--tree", "../x", "--trust", &trust, &mirror,
        ],
        vec!["sync", "--no-such-flag"],
    ] {
        let (c, e) = code(&args);
        assert_eq!(c, Some(2), "{args:?}: {e}");
    }
    // 1: a failure that is not a refusal (a store directory that does not exist), and a
    // damaged local state file (ours, not the publisher's: not a verification failure).
    let (c, e) = code(&[
        "sync",
        "--store",
        s(&site.p("nowhere")),
        "--tree",
        "tree",
        "--trust",
        &trust,
        &mirror,
    ]);
    assert_eq!(c, Some(1), "{e}");
    let applied = site.p("downstream/.tree.pulpdist/applied-tree");
    let good = std::fs::read(&applied).expect("applied");
    std::fs::write(&applied, b"garbage").expect("damage");
    let (c, e) = code(&[
        "sync", "--store", &store, "--tree", "tree", "--trust", &trust, &mirror,
    ]);
    assert_eq!(c, Some(1), "{e}");
    // Named as the operator named it (the sync reaches its state through a handle).
    assert!(
        e.contains(&format!("{}: local state is damaged", applied.display())),
        "{e}"
    );
    std::fs::write(&applied, good).expect("restore");
    // 3: refused by verification (a foreign key).
    let other = site.p("other.key");
    assert!(run(&["keygen", s(&other)]).status.success());
    let (c, e) = code(&[
        "sync",
        "--store",
        &store,
        "--tree",
        "tree",
        "--trust",
        &format!("{}.pub", s(&other)),
        s(&site.p("m2")),
    ]);
    assert_eq!(c, Some(3), "{e}");
    // 2: a head lifetime out of 1..=366 days.
    for days in ["0", "-3", "367"] {
        let o = site.try_publish(&site.key(), &["--expires-days", days]);
        assert_eq!(
            o.status.code(),
            Some(2),
            "--expires-days {days}: {}",
            stderr(&o)
        );
    }
    // 4: a held lock, for sync and for publish.
    let release = site.p("release");
    let held = hold_at(&site.sync_args(), "sync.head", &release);
    let (c, e) = code(&[
        "sync", "--store", &store, "--tree", "tree", "--trust", &trust, &mirror,
    ]);
    assert_eq!(c, Some(4), "{e}");
    std::fs::write(&release, b"go").expect("release");
    assert!(held.wait_with_output().expect("held").status.success());
    let release = site.p("release-publish");
    let held = hold_at(
        &site.publish_cmd(&site.key(), &[]),
        "publish.walked",
        &release,
    );
    let o = site.try_publish(&site.key(), &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    std::fs::write(&release, b"go").expect("release");
    assert!(held.wait_with_output().expect("held").status.success());
}

/// Regression: each cause was printed twice ("No such file or directory" twice for a
/// missing source; a bad tree name's explanation twice).
#[test]
fn each_cause_is_printed_once() {
    let site = Site::new();
    let o = site.try_publish(&site.key(), &[]);
    assert!(o.status.success());
    let mut args = site.publish_cmd(&site.key(), &[]);
    *args.last_mut().expect("source") = s(&site.p("nonexistent")).to_string();
    let o = run(&strs(&args));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    assert!(e.contains("nonexistent"), "{e}");
    let o = run(&[
        "sync",
        "--store",
        s(&site.store()),
        "--tree",
        "a/b",
        "--trust",
        &site.trust(),
        s(&site.mirror()),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let reason = e.rsplit(": ").next().unwrap_or_default().trim();
    assert_eq!(e.matches(reason).count(), 1, "{e}");
}

/// Durability, checked from the system calls a sync makes (strace): every new file is
/// flushed before it is renamed into place, every directory whose entries change is
/// flushed after its last change and before the version is recorded, and the record is
/// flushed too. So after a power cut a recorded version never has renames that were lost.
#[test]
fn the_version_is_recorded_only_after_its_changes_are_on_disk() {
    let site = Site::new();
    common::repo::write(&site.src(), 1);
    site.publish();
    site.sync();
    std::fs::remove_dir_all(site.src()).expect("clear");
    common::repo::write(&site.src(), 2);
    site.publish();
    let calls = traced_sync(&site);
    assert_durable(&site, &calls);
    // A small plan flushes file by file.
    assert!(!calls.iter().any(|c| c.starts_with("syncfs(")));
}

/// The same for a first sync of many small files, whose new files are flushed together:
/// one `syncfs` after the last is written and before the first is renamed, no flush each.
#[test]
fn a_first_sync_of_many_files_flushes_them_together_before_any_rename() {
    let site = Site::new();
    small_files(&site.src(), "", 10, 30);
    site.publish();
    let calls = traced_sync(&site);
    assert_durable(&site, &calls);
    assert_eq!(flushed_once_between_writes_and_renames(&site, &calls), 1);
}

/// `dirs` directories of `files` small files each under `root/sub`.
fn small_files(root: &Path, sub: &str, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(sub).join(format!("d{d}"));
        std::fs::create_dir_all(&dir).expect("dir");
        for f in 0..files {
            std::fs::write(
                dir.join(format!("f{f}")),
                format!("file {d}/{f}\n").repeat(f + 1),
            )
            .expect("file");
        }
    }
}

/// Checks that every temporary file of the mirror was written before the first `syncfs`,
/// which came before the first rename, and that no temporary file was flushed on its
/// own; the number of `syncfs` calls.
fn flushed_once_between_writes_and_renames(site: &Site, calls: &[String]) -> usize {
    // A temporary file in the mirror (not the state's node cache).
    let mirror = format!("{}/", s(&site.mirror()));
    let temp = |c: &str| c.contains(".pulpdist-") && c.contains(&mirror);
    let syncfs: Vec<usize> = (0..calls.len())
        .filter(|i| calls[*i].starts_with("syncfs("))
        .collect();
    let created = calls
        .iter()
        .rposition(|c| c.starts_with("openat(") && temp(c))
        .expect("temporary files");
    let first_rename = calls
        .iter()
        .position(|c| c.starts_with("renameat") && temp(c))
        .expect("renames");
    assert!(
        !syncfs.is_empty() && created < syncfs[0] && syncfs[0] < first_rename,
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("fsync(") && temp(c)),
        "a file flushed on its own"
    );
    syncfs.len()
}

/// A first sync in waves (`--wave-files`: each wave planned, fetched and written before
/// the next is planned) is as durable and as ordered as one planned at once: every file of
/// every wave written, then one `syncfs`, then the first rename; payload before metadata,
/// the top index last; and the mirror equal to the tree.
#[test]
fn a_first_sync_in_waves_writes_every_wave_then_flushes_once_then_renames() {
    let site = Site::new();
    common::repo::write(&site.src(), 1);
    small_files(&site.src(), "extra", 6, 20);
    std::os::unix::fs::symlink("d0/f1", site.src().join("extra/link")).expect("symlink");
    site.publish();
    let log = site.p("waves.log");
    let mut args = site.sync_args();
    args.extend(["--wave-files".to_string(), "25".to_string()]);
    let calls = traced(&site, &args, &log);
    assert_durable(&site, &calls);
    flushed_once_between_writes_and_renames(&site, &calls);
    // Several waves: planned more than once, each before the files it writes.
    let steps: Vec<String> = std::fs::read_to_string(&log)
        .expect("fail point log")
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(l).to_string())
        .collect();
    let planned = steps.iter().filter(|s| *s == "sync.planned").count();
    assert!(planned >= 4, "{planned} waves: {steps:?}");
    let last_write = steps
        .iter()
        .rposition(|s| s == "sync.write")
        .expect("writes");
    let first_rename = steps
        .iter()
        .position(|s| s == "sync.rename")
        .expect("renames");
    let last_plan = steps
        .iter()
        .rposition(|s| s == "sync.planned")
        .expect("plans");
    assert!(
        last_plan < last_write && last_write < first_rename,
        "{steps:?}"
    );
    // Payload, then metadata, a top index (InRelease, Release, repomd.xml) last.
    let first_meta = steps
        .iter()
        .position(|s| s == "sync.rename_metadata")
        .expect("metadata");
    let last_payload = steps
        .iter()
        .rposition(|s| s == "sync.rename")
        .expect("payload");
    assert!(last_payload < first_meta, "{steps:?}");
    let renamed_last = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .rfind(|l| l.starts_with("sync.rename_metadata\t"))
        .map(str::to_string)
        .expect("metadata renamed");
    let top = ["/InRelease", "/Release", "/repomd.xml"];
    assert!(
        top.iter().any(|t| renamed_last.ends_with(t)),
        "{renamed_last}"
    );
    // Every top index after every other metadata file, though gathered over waves.
    let meta: Vec<bool> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter(|l| l.starts_with("sync.rename_metadata\t"))
        .map(|l| top.iter().any(|t| l.ends_with(t)))
        .collect();
    let first_top = meta.iter().position(|t| *t).expect("a top index");
    assert!(meta[first_top..].iter().all(|t| *t), "{meta:?}");
}

/// A release that re-stamped every file of many directories: the files get their new
/// mtimes in place (no file is rewritten), and the attributes, the directories and the
/// delta's nodes are flushed a filesystem at a time, all before the version is recorded.
#[test]
fn a_release_that_restamps_many_directories_is_flushed_together_before_the_record() {
    let site = Site::new();
    let mut files = Vec::new();
    for d in 0..80 {
        let dir = site.src().join(format!("d{d}"));
        std::fs::create_dir_all(&dir).expect("dir");
        for f in 0..3 {
            let p = dir.join(format!("f{f}.c"));
            std::fs::write(&p, format!("int f{d}_{f};\n").repeat(f + 1)).expect("file");
            files.push(p);
        }
    }
    site.publish();
    site.sync();
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    // One file edited, the rest re-stamped.
    std::fs::write(&files[0], "int edited;\n").expect("edit");
    for p in &files {
        filetime::set_file_mtime(p, later).expect("touch");
    }
    site.publish();
    let calls = traced_sync(&site);
    assert_durable(&site, &calls);
    // The re-stamped files' mtimes (step 6) are flushed by a syncfs of their own, before
    // the directories' attributes are set (a later step, flushed again).
    // The last component of the path strace shows for the call's descriptor.
    let fd_name = |c: &String| {
        c.split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .and_then(|(p, _)| p.rsplit('/').next())
            .map(str::to_string)
            .unwrap_or_default()
    };
    let file_times = |c: &String| c.starts_with("utimensat(") && fd_name(c).ends_with(".c");
    let dir_times = |c: &String| {
        let n = fd_name(c);
        c.starts_with("utimensat(")
            && (n == "tree"
                || n.strip_prefix('d')
                    .is_some_and(|d| d.parse::<u32>().is_ok()))
    };
    let last_file = calls
        .iter()
        .rposition(file_times)
        .expect("files re-stamped");
    let first_dir = calls
        .iter()
        .position(dir_times)
        .expect("directory attributes");
    assert!(last_file < first_dir, "{calls:?}");
    assert!(
        calls[last_file..first_dir]
            .iter()
            .any(|c| c.starts_with("syncfs(")),
        "re-stamped mtimes not flushed before the next step: {calls:?}"
    );
    let mirror = format!("{}/", s(&site.mirror()));
    let rewritten = calls
        .iter()
        .filter(|c| c.starts_with("renameat") && c.contains(".pulpdist-") && c.contains(&mirror))
        .count();
    assert_eq!(rewritten, 1, "re-stamped files were rewritten: {calls:?}");
    let state = s(&site.p("downstream/.tree.pulpdist")).to_string();
    // The sync reaches its state through the directory's handle (/proc/PID/fd/N), which
    // strace shows resolved for a descriptor and as written for a path.
    let in_state = |c: &String, sub: &str| {
        c.contains(&format!("{state}/{sub}"))
            || (c.contains("\"/proc/") && c.contains(&format!("/{sub}")))
    };
    let recorded = calls
        .iter()
        .position(|c| c.starts_with("rename(") && c.contains("/applied-tree\""))
        .expect("recorded");
    // The nodes the delta rebuilt: flushed with the state's filesystem before any takes
    // its name (a power cut leaves none torn under its id), all before the record.
    let nodes_synced = calls[..recorded]
        .iter()
        .position(|c| c.starts_with("syncfs(") && c.contains(&state))
        .expect("the state's filesystem flushed");
    let first_node = calls
        .iter()
        .position(|c| c.starts_with("rename(") && in_state(c, "nodes/"))
        .expect("nodes cached");
    assert!(nodes_synced < first_node, "{calls:?}");
    assert!(
        !calls[..recorded]
            .iter()
            .any(|c| c.starts_with("fsync(") && in_state(c, "nodes/")),
        "a node flushed on its own"
    );
    for p in &files {
        let rel = p.strip_prefix(site.src()).expect("rel");
        let m = std::fs::metadata(site.mirror().join(rel)).expect("mirror file");
        assert_eq!(filetime::FileTime::from_last_modification_time(&m), later);
    }
}

/// A sync of `site` under strace: its successful calls of the kinds that order durability.
fn traced_sync(site: &Site) -> Vec<String> {
    traced(site, &site.sync_args(), &site.p("steps.log"))
}

/// `args` (a sync of `site`) under strace, its fail point steps logged to `log`.
fn traced(site: &Site, sync_args: &[String], log: &Path) -> Vec<String> {
    let trace = site.p("strace.txt");
    let mut args = vec![
        "-f".to_string(),
        "-y".into(),
        "-qq".into(),
        "-e".into(),
        "trace=fsync,syncfs,openat,rename,renameat,renameat2,unlinkat,mkdirat,utimensat".into(),
        "-o".into(),
        s(&trace).to_string(),
        env!("CARGO_BIN_EXE_pulpdist").into(),
    ];
    args.extend(sync_args.iter().cloned());
    let out = Command::new("strace")
        .args(&args)
        .env("PULPDIST_FAILPOINT_LOG", log)
        .output()
        .expect("strace (installed by ./scripts/test)");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&site.src(), &site.mirror());
    let text = std::fs::read_to_string(&trace).expect("trace");
    text.lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, c)| c).trim().to_string())
        .filter(|c| !c.ends_with(" = -1") && !c.contains("= -1 "))
        .collect()
}

/// Every file renamed into the mirror was flushed (by itself, or by a `syncfs` of the
/// filesystem) before; every changed directory and the record are flushed before and
/// after the version is recorded.
fn assert_durable(site: &Site, calls: &[String]) {
    // The path inside `<...>` after `name(`, e.g. `fsync(15</m/a>)` gives `/m/a`.
    let fd_path = |c: &str| {
        c.split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(p, _)| p.to_string())
    };
    let mirror = s(&site.mirror()).to_string();
    let recorded = calls
        .iter()
        .position(|c| c.starts_with("rename(") && c.contains("/applied-tree\""))
        .expect("the version is recorded");
    let text = calls.join("\n");
    let mut last_change: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, c) in calls.iter().enumerate() {
        if c.starts_with("renameat") || c.starts_with("unlinkat") || c.starts_with("mkdirat") {
            if let Some(dir) = fd_path(c).filter(|d| d.starts_with(&mirror)) {
                last_change.insert(dir, i);
            }
        }
    }
    assert!(!last_change.is_empty(), "no change seen: {text}");
    for (dir, changed) in &last_change {
        // A directory removed whole needs no flush of its own (its parent is flushed).
        if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        // Flushed itself, or with the whole mirror filesystem (a plan touching many).
        let flushed = calls[*changed..recorded].iter().any(|c| {
            (c.starts_with("fsync(") && fd_path(c).as_deref() == Some(dir.as_str()))
                || (c.starts_with("syncfs(") && fd_path(c).is_some_and(|p| p.starts_with(&mirror)))
        });
        assert!(flushed, "{dir} changed at call {changed} but not flushed before the version was recorded at {recorded}");
    }
    // Each file renamed into the mirror was flushed under its temporary name first.
    for (i, c) in calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("renameat"))
    {
        let Some(dir) = fd_path(c).filter(|d| d.starts_with(&mirror)) else {
            continue;
        };
        let (Some(tmp), Some(target)) = (c.split('"').nth(1), c.split('"').nth(3)) else {
            continue;
        };
        if !tmp.contains(".pulpdist-") {
            continue;
        }
        let full = format!("{dir}/{tmp}");
        let flushed = calls[..i].iter().any(|p| {
            (p.starts_with("fsync(") && fd_path(p).as_deref() == Some(full.as_str()))
                || p.starts_with("syncfs(")
        });
        // A symlink has no data to flush (its directory is flushed); a file must be.
        let is_link = std::fs::symlink_metadata(format!("{dir}/{target}"))
            .is_ok_and(|m| m.file_type().is_symlink());
        assert!(flushed || is_link, "{full} renamed without a flush");
    }
    // And the record itself is flushed with its directory.
    let state = s(&site.p("downstream/.tree.pulpdist")).to_string();
    assert!(
        calls[recorded..]
            .iter()
            .any(|c| c.starts_with("fsync(") && fd_path(c).as_deref() == Some(state.as_str())),
        "the state directory is not flushed after the record"
    );
}
