//! The gc soak test: hundreds of seeded random steps of publish, sync and gc on one store,
//! each op sometimes killed (a fail point aborts it, as `kill -9` would) and sometimes held
//! mid-way while another op runs and then released or killed. After every step the store
//! verifies whole (`verify --store --read-data`: every archived version and the current
//! one, every chunk); every sync that completes leaves the mirror identical to the source
//! of the version it reports; an op held while a gc ran (with a grace period longer than
//! the hold) completes when released. Once on a directory store and once on a bucket
//! (s3s-fs). `PULPDIST_SOAK_STEPS` sets the steps per store (default 200).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::servers::S3;
use common::{bin, s, snapshot, Site};

const PUBLISH_STEPS: &[&str] = &[
    "publish.walked",
    "publish.pack_add",
    "publish.pack_put",
    "publish.data_packs",
    "publish.index_packs",
    "publish.head",
    "publish.head_put",
    "publish.history",
    "publish.cache",
    "publish.summary",
];
const SYNC_STEPS: &[&str] = &[
    "sync.head",
    "sync.planned",
    "sync.fetch",
    "sync.write",
    "sync.rename",
    "sync.delete",
    "sync.synced",
    "sync.recorded",
];
const GC_STEPS: &[&str] = &[
    "gc.repack_pack",
    "gc.repack_history",
    "gc.repack_head",
    "gc.condemned",
    "gc.history",
    "gc.pack",
    "gc.done",
];

/// xorshift64*: seeded, so a failing run repeats exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }
}

/// One store under test, with the flags every command needs to reach it.
struct Soak {
    site: Site,
    store: String,
    flags: Vec<String>,
    rng: Rng,
    /// The source as published, by version.
    versions: HashMap<u64, BTreeMap<PathBuf, String>>,
    /// Contents the source once had, to bring back (chunks of condemned packs).
    gone: Vec<Vec<u8>>,
    /// What the current step did, for messages.
    steps: String,
    /// Where the head's bytes are on disk.
    head_file: PathBuf,
    /// Objects gc runs removed, and ops killed: the soak must have done both.
    removed: u64,
    kills: u64,
    /// Versions re-encoded by repacking gc runs.
    repacked: u64,
}

impl Soak {
    fn new(site: Site, store: String, flags: Vec<String>, seed: u64, head_file: PathBuf) -> Self {
        Soak {
            head_file,
            removed: 0,
            kills: 0,
            repacked: 0,
            site,
            store,
            flags,
            rng: Rng(seed),
            versions: HashMap::new(),
            gone: Vec::new(),
            steps: String::new(),
        }
    }

    fn args(&self, cmd: &str, extra: &[String]) -> Vec<String> {
        let mut a = vec![cmd.to_string(), "--store".into(), self.store.clone()];
        a.extend(self.flags.iter().cloned());
        a.extend(extra.iter().cloned());
        a
    }

    fn publish_args(&self) -> Vec<String> {
        let (state, key, src) = (
            self.site.p("publish-state"),
            self.site.key(),
            self.site.src(),
        );
        let extra = [
            "--tree",
            "tree",
            "--key",
            s(&key),
            "--state",
            s(&state),
            "--json",
            s(&src),
        ];
        self.args("publish", &extra.map(String::from))
    }

    fn sync_args(&self) -> Vec<String> {
        let mirror = self.site.mirror();
        let extra = [
            "--tree",
            "tree",
            "--trust",
            &self.site.trust(),
            "--json",
            s(&mirror),
        ];
        self.args("sync", &extra.map(String::from))
    }

    /// A gc with a random `--keep-last`; with `repack`, one time in three it rewrites
    /// sparse packs too (`--max-unused`).
    fn gc_args(&mut self, grace: &str, repack: bool) -> Vec<String> {
        let keep = (1 + self.rng.below(3)).to_string();
        let (state, key) = (self.site.p("gc-state"), self.site.key());
        let mut extra = vec![
            "--keep-last",
            &keep,
            "--grace",
            grace,
            "--state",
            s(&state),
            "--json",
            "--progress",
            "none",
        ];
        if repack && self.rng.below(3) == 0 {
            self.steps.push_str(" (repack)");
            extra.extend(["--max-unused", "5", "--key", s(&key)]);
        }
        let extra: Vec<String> = extra.into_iter().map(String::from).collect();
        self.args("gc", &extra)
    }

    /// After a gc: a repack publishes the current version again as the next one, with
    /// the same content.
    fn note_gc(&mut self, before: u64) {
        let now = self.current();
        if now > before {
            if let Some(source) = self.versions.get(&before).cloned() {
                self.versions.insert(now, source);
            }
        }
    }

    /// Runs `args`, killed at a random step of `steps` one time in three.
    fn maybe_killed(&mut self, args: &[String], steps: &[&str]) -> (Output, bool) {
        let mut cmd = bin();
        cmd.args(args);
        let killed = self.rng.below(3) == 0;
        if killed {
            self.kills += 1;
            let at = format!("{}:{}", self.rng.pick(steps), 1 + self.rng.below(3));
            self.steps.push_str(&format!(" (kill at {at})"));
            cmd.env("PULPDIST_FAILPOINT", at);
        }
        (cmd.output().expect("run"), killed)
    }

    /// Changes the source a little: new, changed, removed files, and old contents back;
    /// one time in five, nothing (a publish of an unchanged tree, from its summary).
    fn edit(&mut self) {
        if self.rng.below(5) == 0 {
            self.steps.push_str(" (unchanged)");
            return;
        }
        let src = self.site.src();
        for _ in 0..1 + self.rng.below(3) {
            let dir = src.join(format!("d{}", self.rng.below(4)));
            fs::create_dir_all(&dir).expect("dir");
            let path = dir.join(format!("f{}.bin", self.rng.below(8)));
            match self.rng.below(4) {
                0 if path.exists() => {
                    self.gone.push(fs::read(&path).expect("read"));
                    fs::remove_file(&path).expect("rm");
                }
                1 if !self.gone.is_empty() => {
                    let i = self.rng.below(self.gone.len() as u64) as usize;
                    fs::write(&path, &self.gone[i]).expect("back");
                }
                _ => {
                    let len = self.rng.below(120_000) as u32;
                    let shift = self.rng.below(20) as u32;
                    let mut data = common::noise(len, shift);
                    data.extend(self.rng.next().to_le_bytes());
                    fs::write(&path, data).expect("write");
                }
            }
        }
    }

    /// The version of the store's current head (0: none yet), read from the file that
    /// holds it (the store directory, or the bucket's directory on the s3s-fs server).
    fn current(&self) -> u64 {
        match fs::read(&self.head_file) {
            Ok(bytes) => {
                let (h, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("head");
                h.version
            }
            Err(_) => 0,
        }
    }

    /// After a publish, completed or not: the source is the new version's, if there is one.
    fn note_publish(&mut self, before: u64, source: BTreeMap<PathBuf, String>) {
        let now = self.current();
        if now > before {
            self.versions.insert(now, source);
        }
    }

    /// After a sync: a completed one leaves the mirror as its version's source.
    fn check_sync(&self, out: &Output, killed: bool) {
        if !out.status.success() {
            assert!(killed, "{}: sync failed: {}", self.steps, stderr(out));
            return;
        }
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sync json");
        let v = r["version"].as_u64().expect("version");
        let want = self.versions.get(&v).expect("a published version");
        let got = snapshot(&self.site.mirror());
        assert!(
            &got == want,
            "{}: mirror differs from version {v}",
            self.steps
        );
    }

    fn check_store(&self) {
        let trust = self.site.trust();
        let extra = [
            "--trust",
            &trust,
            "--read-data",
            "--json",
            "--progress",
            "none",
        ];
        let out = bin()
            .args(self.args("verify", &extra.map(String::from)))
            .output()
            .expect("verify");
        assert!(
            out.status.success(),
            "{}: verify: {}{}",
            self.steps,
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }

    fn publish(&mut self) {
        self.edit();
        let (before, source) = (self.current(), snapshot(&self.site.src()));
        let args = self.publish_args();
        let (out, killed) = self.maybe_killed(&args, PUBLISH_STEPS);
        assert!(
            out.status.success() || killed,
            "{}: {}",
            self.steps,
            stderr(&out)
        );
        self.note_publish(before, source);
    }

    fn sync(&mut self) {
        if self.versions.is_empty() {
            return;
        }
        let args = self.sync_args();
        let (out, killed) = self.maybe_killed(&args, SYNC_STEPS);
        self.check_sync(&out, killed);
    }

    fn gc(&mut self) {
        if self.versions.is_empty() {
            return;
        }
        let args = self.gc_args("0s", true);
        let before = self.current();
        let (out, killed) = self.maybe_killed(&args, GC_STEPS);
        self.note_gc(before);
        assert!(
            out.status.success() || killed,
            "{}: {}",
            self.steps,
            stderr(&out)
        );
        if let Ok(r) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            self.removed += r["removed"].as_array().map_or(0, |a| a.len() as u64);
            self.repacked += r["repacked"]["versions"]
                .as_array()
                .map_or(0, |a| a.len() as u64);
        }
    }

    /// `held` is started and held at `at`; each of `others` runs to its end (or is
    /// killed); then `held` is released (its output returned), or killed one time in four.
    /// What `held` does must complete.
    fn interleave(
        &mut self,
        held: Vec<String>,
        at: &str,
        others: Vec<(Vec<String>, &[&str])>,
    ) -> Option<Output> {
        let release = self.site.p(&format!("release-{}", self.rng.next()));
        let child = hold(&held, at, &release);
        for (other, steps) in others {
            let (out, killed) = self.maybe_killed(&other, steps);
            assert!(
                out.status.success() || killed,
                "{}: {}",
                self.steps,
                stderr(&out)
            );
        }
        self.release(child, &release)
    }

    /// Lets a held op go on (its output returned; it must succeed), or kills it one time
    /// in four. An op that ended before its step (nothing to do) must have succeeded.
    fn release(
        &mut self,
        held: Result<Child, Output>,
        release: &std::path::Path,
    ) -> Option<Output> {
        let mut child = match held {
            Ok(child) => child,
            Err(done) => {
                assert!(done.status.success(), "{}: {}", self.steps, stderr(&done));
                return Some(done);
            }
        };
        if self.rng.below(4) == 0 {
            self.steps.push_str(" (held one killed)");
            child.kill().expect("kill -9");
            child.wait().expect("reaped");
            return None;
        }
        fs::write(release, b"go").expect("release");
        let done = child.wait_with_output().expect("held op");
        assert!(
            done.status.success(),
            "{}: the held op failed: {}",
            self.steps,
            stderr(&done)
        );
        Some(done)
    }

    fn step(&mut self) {
        match self.rng.below(10) {
            0..=2 => {
                self.steps.push_str("publish");
                self.publish();
            }
            3 | 4 => {
                self.steps.push_str("sync");
                self.sync();
            }
            5 | 6 => {
                self.steps.push_str("gc");
                self.gc();
            }
            7 => {
                // A publish held before its head while a gc (with grace) runs.
                self.steps.push_str("publish held, gc");
                self.edit();
                let (before, source) = (self.current(), snapshot(&self.site.src()));
                // (No repack: it would publish, and on a bucket only one head write wins.)
                let (p, g) = (self.publish_args(), self.gc_args("1h", false));
                self.interleave(p, "publish.head", vec![(g, GC_STEPS)]);
                self.note_publish(before, source);
            }
            8 if !self.versions.is_empty() => {
                // A sync held after reading its head while a publish supersedes that
                // version and a gc with grace runs: the version is kept, the sync completes.
                self.steps.push_str("sync held, publish, gc");
                self.edit();
                let (before, source) = (self.current(), snapshot(&self.site.src()));
                let (sy, p) = (self.sync_args(), self.publish_args());
                let g = self.gc_args("1h", true);
                let at = self.rng.pick(&["sync.head", "sync.planned"]);
                let release = self.site.p(&format!("release-{}", self.rng.next()));
                let held = hold(&sy, at, &release);
                let (out, killed) = self.maybe_killed(&p, PUBLISH_STEPS);
                assert!(
                    out.status.success() || killed,
                    "{}: {}",
                    self.steps,
                    stderr(&out)
                );
                self.note_publish(before, source);
                let published = self.current();
                let (out, killed) = self.maybe_killed(&g, GC_STEPS);
                assert!(
                    out.status.success() || killed,
                    "{}: {}",
                    self.steps,
                    stderr(&out)
                );
                self.note_gc(published);
                let done = self.release(held, &release);
                if let Some(out) = done {
                    self.check_sync(&out, false);
                }
            }
            9 if !self.versions.is_empty() => {
                // A gc held after writing its list while a publish runs.
                self.steps.push_str("gc held, publish");
                self.edit();
                let (before, source) = (self.current(), snapshot(&self.site.src()));
                let (g, p) = (self.gc_args("0s", true), self.publish_args());
                let release = self.site.p(&format!("release-{}", self.rng.next()));
                let held = hold(&g, "gc.condemned", &release);
                // The held gc may have published a repacked version already.
                let repacked = self.current();
                self.note_gc(before);
                let (out, killed) = self.maybe_killed(&p, PUBLISH_STEPS);
                assert!(
                    out.status.success() || killed,
                    "{}: {}",
                    self.steps,
                    stderr(&out)
                );
                self.note_publish(repacked, source);
                self.release(held, &release);
            }
            _ => {
                self.steps.push_str("publish");
                self.publish();
            }
        }
        self.check_store();
    }

    fn run(&mut self, steps: u64) {
        for n in 0..steps {
            self.steps = format!("step {n}: ");
            self.step();
        }
        // In the end, a sync completes.
        let out = bin().args(self.sync_args()).output().expect("sync");
        self.check_sync(&out, false);
        eprintln!(
            "{steps} steps: {} versions, {} objects removed by gc, {} versions repacked, {} ops killed",
            self.current(),
            self.removed,
            self.repacked,
            self.kills
        );
        assert!(self.removed > 0 && self.kills > 0);
        // Sparse packs take a while to appear: a short run (PULPDIST_SOAK_STEPS) may see none.
        assert!(
            self.repacked > 0 || steps < 100,
            "no repack in {steps} steps"
        );
    }
}

/// Starts `args` held at `step` until `release` exists; its output if it ends first.
fn hold(args: &[String], step: &str, release: &std::path::Path) -> Result<Child, Output> {
    let mut child = bin()
        .args(args)
        .env(
            "PULPDIST_FAILPOINT",
            format!("{step}:1:wait:{}", s(release)),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut reached = release.as_os_str().to_owned();
    reached.push(".reached");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::path::Path::new(&reached).exists() {
        if child.try_wait().expect("try_wait").is_some() {
            return Err(child.wait_with_output().expect("output"));
        }
        assert!(Instant::now() < deadline, "{step} never reached");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn steps() -> u64 {
    std::env::var("PULPDIST_SOAK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[test]
fn soak_publish_sync_gc_on_a_directory_store() {
    let site = Site::new();
    let store = s(&site.store()).to_string();
    let head = site.store().join("heads/tree");
    let mut soak = Soak::new(site, store, Vec::new(), 0x5eed_0001, head);
    soak.run(steps());
}

#[test]
fn soak_publish_sync_gc_on_a_bucket() {
    let site = Site::new();
    let s3 = S3::start(&site.p("s3"), &["soak"]);
    let flags = s3.cli_flags(&site.p(""));
    let head = site.p("s3/soak/p/heads/tree");
    let mut soak = Soak::new(site, "s3://soak/p".into(), flags, 0x5eed_0002, head);
    soak.run(steps());
    drop(s3);
}
