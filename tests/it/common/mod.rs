//! Helpers for the end-to-end tests: run the real binary, compare trees exactly.

#![allow(dead_code)]

pub(crate) mod evil;
pub(crate) mod http;
pub(crate) mod repo;
pub(crate) mod servers;
pub(crate) mod tls;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub(crate) fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pulpdist"))
}

/// The binary run under `/usr/bin/time`, which adds its peak RSS to standard error (read
/// it with [`peak_rss_kb`]).
pub(crate) fn bin_timed() -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "maxrss_kb=%M", env!("CARGO_BIN_EXE_pulpdist")]);
    c
}

/// The peak RSS, in kB, that [`bin_timed`] reported in `stderr`.
pub(crate) fn peak_rss_kb(stderr: &str) -> u64 {
    stderr
        .rsplit("maxrss_kb=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time in: {stderr}"))
}

/// Runs the binary; returns the output (not asserting success).
pub(crate) fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run pulpdist")
}

/// `gc --store STORE ARGS... --json`, asserting success.
pub(crate) fn gc(store: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["gc", "--store", store, "--progress", "none"];
    a.extend(args);
    run_json(&a)
}

/// `verify --store` of the site's store, every chunk read: no problem.
pub(crate) fn verify_clean(site: &Site) {
    let store = site.store();
    let trust = site.trust();
    let r = run_json(&[
        "verify",
        "--store",
        s(&store),
        "--trust",
        &trust,
        "--read-data",
        "--progress",
        "none",
    ]);
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r}");
}

/// Runs the binary with `--json`, asserts success, parses the JSON line.
pub(crate) fn run_json(args: &[&str]) -> serde_json::Value {
    let mut a: Vec<&str> = args.to_vec();
    a.push("--json");
    let out = run(&a);
    assert!(
        out.status.success(),
        "pulpdist {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub(crate) struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub(crate) fn new() -> Self {
        let s = Site {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        fs::create_dir_all(s.src()).expect("src");
        let out = run(&["keygen", s.key().to_str().expect("utf8")]);
        assert!(out.status.success());
        s
    }
    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub(crate) fn src(&self) -> PathBuf {
        self.p("upstream/tree")
    }
    pub(crate) fn store(&self) -> PathBuf {
        self.p("store")
    }
    pub(crate) fn mirror(&self) -> PathBuf {
        self.p("downstream/tree")
    }
    pub(crate) fn key(&self) -> PathBuf {
        self.p("upstream.key")
    }
    pub(crate) fn publish(&self) -> serde_json::Value {
        self.publish_with(&[])
    }
    /// Publishes with extra options (asserting success).
    pub(crate) fn publish_with(&self, extra: &[&str]) -> serde_json::Value {
        run_json(&strs(&self.publish_cmd(&self.key(), extra)))
    }
    /// Publishes with `key` and extra options; the output, whatever it is.
    pub(crate) fn try_publish(&self, key: &Path, extra: &[&str]) -> Output {
        run(&strs(&self.publish_cmd(key, extra)))
    }
    /// `publish --store STORE --tree tree --key KEY ARGS...` for this site, with no source
    /// added (a refresh, an rsync:// source); the output, whatever it is.
    pub(crate) fn publish_raw(&self, args: &[&str]) -> Output {
        let (store, key) = (self.store(), self.key());
        let mut a = vec![
            "publish",
            "--store",
            s(&store),
            "--tree",
            "tree",
            "--key",
            s(&key),
        ];
        a.extend(args);
        run(&a)
    }
    /// `publish --store STORE --tree tree --key KEY EXTRA... SRC` for this site.
    pub(crate) fn publish_cmd(&self, key: &Path, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = ["publish", "--store", s(&self.store()), "--tree", "tree"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(["--key".to_string(), s(key).to_string()]);
        a.extend(extra.iter().map(|x| x.to_string()));
        a.push(s(&self.src()).to_string());
        a
    }
    /// The public key file of the site's key.
    pub(crate) fn trust(&self) -> String {
        format!("{}.pub", s(&self.key()))
    }
    pub(crate) fn sync_args(&self) -> Vec<String> {
        sync_cmd(s(&self.store()), "tree", &self.trust(), &self.mirror(), &[])
    }
    pub(crate) fn sync(&self) -> serde_json::Value {
        run_json(&strs(&self.sync_args()))
    }
    pub(crate) fn try_sync(&self, extra: &[&str]) -> Output {
        run(&strs(&sync_cmd(
            s(&self.store()),
            "tree",
            &self.trust(),
            &self.mirror(),
            extra,
        )))
    }
}

/// `sync --store STORE --tree TREE --trust TRUST EXTRA... DEST`.
pub(crate) fn sync_cmd(
    store: &str,
    tree: &str,
    trust: &str,
    dest: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = ["sync", "--store", store, "--tree", tree, "--trust", trust]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a.push(s(dest).to_string());
    a
}

/// Waits (with a deadline) until `path` exists.
pub(crate) fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Starts `args` held at `step` (`STEP` or `STEP:N`, the `N`th time it is reached; until
/// `release` exists); returns once it is there.
pub(crate) fn hold_at(args: &[String], step: &str, release: &Path) -> std::process::Child {
    let step = match step.contains(':') {
        true => step.to_string(),
        false => format!("{step}:1"),
    };
    let child = bin()
        .args(args)
        .env("PULPDIST_FAILPOINT", format!("{step}:wait:{}", s(release)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut reached = release.as_os_str().to_owned();
    reached.push(".reached");
    wait_for(Path::new(&reached));
    child
}

/// A local user's race: `args` (a sync of `site`'s mirror) held at `step`, the mirror
/// renamed away meanwhile and a symlink to `victim` planted in its place, then released.
/// The sync's output, and where the mirror was moved (`tag` names it and the release file).
pub(crate) fn mirror_swapped_at(
    site: &Site,
    args: &[String],
    step: &str,
    victim: &Path,
    tag: &str,
) -> (std::process::Output, PathBuf) {
    swapped_at(site, args, step, &site.mirror(), victim, tag)
}

/// The same race on any directory `dir` the sync uses (the mirror, its state).
pub(crate) fn swapped_at(
    site: &Site,
    args: &[String],
    step: &str,
    dir: &Path,
    victim: &Path,
    tag: &str,
) -> (std::process::Output, PathBuf) {
    let release = site.p(&format!("release-{tag}"));
    let child = hold_at(args, step, &release);
    let moved = site.p(&format!("moved-{tag}"));
    fs::rename(dir, &moved).expect("move the directory away");
    std::os::unix::fs::symlink(victim, dir).expect("plant");
    fs::write(&release, b"go").expect("release");
    (child.wait_with_output().expect("wait"), moved)
}

/// Runs `args` with `--json`, every fail point it passes logged to `log`; asserts success
/// and returns the report.
pub(crate) fn run_json_logged(args: &[String], log: &Path) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json".into());
    serde_json::from_slice(&run_logged(&a, log).stdout).expect("json")
}

/// Runs `args`, every fail point it passes logged to `log` (one line each: the step, a tab,
/// the path it was done to); asserts success.
pub(crate) fn run_logged(args: &[String], log: &Path) -> Output {
    let out = bin()
        .args(args)
        .env("PULPDIST_FAILPOINT_LOG", log)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Borrows a command line for [`run`] and [`run_json`].
pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// `len` bytes that do not compress (xorshift from `seed`).
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    pulpdist_testdata::random_bytes(len, seed)
}

/// `len` bytes that do not compress and differ with `shift` (a multiplicative hash of each
/// offset, shifted right by `shift` bits).
pub(crate) fn noise(len: u32, shift: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> shift) as u8)
        .collect()
}

/// Everything observable about a tree: kind, content, mode, mtime, symlink target.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            let desc = if md.file_type().is_symlink() {
                format!(
                    "link {:?} mtime {}.{}",
                    fs::read_link(&p).expect("readlink"),
                    md.mtime(),
                    md.mtime_nsec()
                )
            } else if md.is_dir() {
                stack.push(p.clone());
                format!(
                    "dir {:o} mtime {}.{}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    md.mtime_nsec()
                )
            } else {
                // Streamed: the test trees hold files of several GiB.
                let mut hasher = blake3::Hasher::new();
                std::io::copy(&mut fs::File::open(&p).expect("open"), &mut hasher).expect("read");
                format!(
                    "file {:o} mtime {}.{} {}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    md.mtime_nsec(),
                    hasher.finalize().to_hex()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// Every regular file of `mirror` is its `old` or its `new` version, byte for byte
/// (temporary files of the sync aside).
pub(crate) fn assert_whole(
    mirror: &Path,
    old: &BTreeMap<PathBuf, String>,
    new: &BTreeMap<PathBuf, String>,
    at: &str,
) {
    let hash = |d: &String| d.rsplit(' ').next().map(str::to_owned);
    for (path, desc) in snapshot(mirror) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.contains(".pulpdist-") || !desc.starts_with("file") {
            continue;
        }
        let known = [old.get(&path), new.get(&path)]
            .into_iter()
            .flatten()
            .filter(|d| d.starts_with("file"))
            .any(|d| hash(d) == hash(&desc));
        assert!(
            known,
            "killed at {at}: {} is neither its old nor its new version",
            path.display()
        );
    }
}

pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    for (k, v) in &sa {
        assert_eq!(Some(v), sb.get(k), "{} differs", k.display());
    }
    for k in sb.keys() {
        assert!(sa.contains_key(k), "{} only downstream", k.display());
    }
}

/// Asserts two snapshots are equal, listing only the entries that differ.
pub(crate) fn assert_same_snapshot(
    a: &BTreeMap<PathBuf, String>,
    b: &BTreeMap<PathBuf, String>,
    what: &str,
) {
    let mut diff = Vec::new();
    for k in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        if a.get(k) != b.get(k) {
            diff.push(format!("{}: {:?} -> {:?}", k.display(), a.get(k), b.get(k)));
        }
    }
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
}

/// An ISO 9660 image of `dir` made by the real xorriso (Rock Ridge, Joliet, hard links),
/// with `extra` commands before the commit.
pub(crate) fn xorriso(dir: &Path, image: &Path, extra: &[&str]) {
    let out = Command::new("xorriso")
        .args(["-abort_on", "FAILURE", "-outdev"])
        .arg(image)
        .args([
            "-rockridge",
            "on",
            "-joliet",
            "on",
            "-hardlinks",
            "on",
            "-map",
        ])
        .arg(dir)
        .arg("/")
        .args(extra)
        .arg("-commit")
        .output()
        .expect("xorriso (installed by ./scripts/test)");
    assert!(
        out.status.success(),
        "xorriso: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mounts a tmpfs of `mib` MiB at `dir` (the tests run as root, as CI does).
pub(crate) fn tmpfs(dir: &Path, mib: u32) -> TmpfsGuard {
    fs::create_dir_all(dir).expect("mount point");
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m"),
            "tmpfs",
            s(dir),
        ])
        .status()
        .expect("mount");
    assert!(
        st.success(),
        "mounting a tmpfs at {} (needs root)",
        dir.display()
    );
    TmpfsGuard(dir.to_path_buf())
}

pub(crate) struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
