//! The same publish/sync cases over every kind of store: a local directory, the built-in
//! HTTP server, an S3-compatible server (s3s-fs), and nginx caching the built-in server.
//! Costs are counted from `--json` (requests, bytes), never timed.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use common::servers::{Builtin, Nginx, S3};
use common::{assert_same_tree, bin, s, snapshot, Site};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Local,
    Http,
    S3,
    Nginx,
}

/// A site (source, key, mirror) with a store reached through one backend.
struct Rig {
    backend: Backend,
    site: Site,
    publish_store: String,
    sync_store: String,
    /// The directory holding `packs/` (to hide or damage an object behind the server's back).
    objects: PathBuf,
    env: Vec<(String, String)>,
    _servers: (Option<S3>, Option<Builtin>, Option<Nginx>),
}

impl Rig {
    fn new(backend: Backend) -> Rig {
        let site = Site::new();
        let store = site.store();
        fs::create_dir_all(store.join("heads")).expect("heads");
        fs::create_dir_all(store.join("packs")).expect("packs");
        let local = s(&store).to_string();
        match backend {
            Backend::Local => Rig {
                backend,
                publish_store: local.clone(),
                sync_store: local,
                objects: store,
                env: Vec::new(),
                _servers: (None, None, None),
                site,
            },
            Backend::Http => {
                let b = Builtin::start(&store);
                Rig {
                    backend,
                    publish_store: local,
                    sync_store: b.url.clone(),
                    objects: store,
                    env: Vec::new(),
                    _servers: (None, Some(b), None),
                    site,
                }
            }
            Backend::Nginx => {
                let b = Builtin::start(&store);
                let n = Nginx::start(&site.p("nginx"), &format!("127.0.0.1:{}", b.port));
                Rig {
                    backend,
                    publish_store: local,
                    sync_store: n.url.clone(),
                    objects: store,
                    env: Vec::new(),
                    _servers: (None, Some(b), Some(n)),
                    site,
                }
            }
            Backend::S3 => {
                let root = site.p("s3");
                let s3 = S3::start(&root, &["mirror"]);
                let url = "s3://mirror/pub/debian".to_string();
                Rig {
                    backend,
                    publish_store: url.clone(),
                    sync_store: url,
                    objects: root.join("mirror/pub/debian"),
                    env: s3.env(),
                    _servers: (Some(s3), None, None),
                    site,
                }
            }
        }
    }

    fn run(&self, args: &[String]) -> std::process::Output {
        bin()
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run pulpdist")
    }

    fn json(&self, mut args: Vec<String>) -> serde_json::Value {
        args.push("--json".into());
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "pulpdist {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    fn publish(&self) -> serde_json::Value {
        self.publish_with(&[])
    }

    fn publish_with(&self, extra: &[&str]) -> serde_json::Value {
        let state = self.site.p("publish-state");
        let mut args = strings(&[
            "publish",
            "--store",
            &self.publish_store,
            "--tree",
            "tree",
            "--key",
            s(&self.site.key()),
            "--state",
            s(&state),
        ]);
        args.extend(strings(extra));
        args.push(s(&self.site.src()).to_string());
        let report = self.json(args);
        if self.backend == Backend::Nginx {
            // The edge caches a head for 1 s (deploy/nginx/pulpdist-cdn.conf): wait, with a
            // deadline, until it serves the head just published.
            let want = fs::read(Path::new(&self.publish_store).join("heads/tree")).expect("head");
            let url = format!("{}/heads/tree", self.sync_store);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let got = ureq::get(&url)
                    .call()
                    .ok()
                    .and_then(|r| r.into_body().read_to_vec().ok());
                if got.as_deref() == Some(&want[..]) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the edge never served the new head"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        report
    }

    fn sync_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = strings(&[
            "sync",
            "--store",
            &self.sync_store,
            "--tree",
            "tree",
            "--trust",
            &format!("{}.pub", s(&self.site.key())),
            "--retries",
            "1",
        ]);
        a.extend(strings(extra));
        a.push(s(&self.site.mirror()).to_string());
        a
    }

    fn sync(&self) -> serde_json::Value {
        self.json(self.sync_args(&[]))
    }

    fn packs(&self) -> Vec<(PathBuf, u64)> {
        let mut v: Vec<_> = fs::read_dir(self.objects.join("packs"))
            .expect("packs dir")
            .map(|e| {
                let p = e.expect("entry").path();
                let len = fs::metadata(&p).expect("stat").len();
                (p, len)
            })
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        v.sort();
        v
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|x| x.to_string()).collect()
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no number '{k}' in {v}"))
}

/// First sync, a version-to-version update and a no-op, each with its cost bounded.
fn update_costs(backend: Backend) {
    let rig = Rig::new(backend);
    pulpdist_testdata::generate(&rig.site.src(), 11, 4).expect("generate");
    rig.publish();
    let first = rig.sync();
    assert_same_tree(&rig.site.src(), &rig.site.mirror());
    assert_eq!(num(&first, "version"), 1);

    pulpdist_testdata::evolve(&rig.site.src(), 11, 1).expect("evolve");
    let p = rig.publish();
    let s2 = rig.sync();
    assert_same_tree(&rig.site.src(), &rig.site.mirror());
    assert_eq!(num(&s2, "version"), 2);
    let new_packs = num(&p, "packs");
    assert!(
        num(&s2, "requests") <= 3 + new_packs,
        "{backend:?}: one version behind took {} requests for {new_packs} new packs: {s2}",
        num(&s2, "requests")
    );
    // Everything fetched is new chunks and nodes, give or take 3 % (head, pack framing).
    let stored = num(&p, "bytes_stored");
    let fetched = num(&s2, "bytes_fetched");
    assert!(
        fetched as f64 <= stored as f64 * 1.03,
        "{backend:?}: fetched {fetched} bytes for {stored} bytes of new chunks and nodes"
    );
    assert_eq!(num(&s2, "retries"), 0, "{s2}");

    let noop = rig.sync();
    assert!(noop["up_to_date"].as_bool().expect("bool"), "{noop}");
    assert_eq!(
        num(&noop, "requests"),
        1,
        "{backend:?}: a no-op sync: {noop}"
    );
}

/// A sync that fails (a pack missing) or is killed mid-way leaves every file old or new,
/// and the next sync completes without fetching again what was verified before.
fn killed_and_resumed(backend: Backend) {
    let rig = Rig::new(backend);
    pulpdist_testdata::generate(&rig.site.src(), 5, 4).expect("generate");
    rig.publish();
    rig.sync();
    let v1 = snapshot(&rig.site.mirror());
    pulpdist_testdata::evolve(&rig.site.src(), 5, 1).expect("evolve");
    let old = rig.packs();
    // Small packs: a sync missing one of them still verifies and stages all the others.
    // No delta: with one, this site would not need the hidden pack at all (tests/it/deltas.rs).
    let p = rig.publish_with(&["--pack-size", "262144", "--deltas", "0"]);
    let total_chunks = num(&p, "chunks_new");
    assert!(num(&p, "packs") > 3, "{p}");
    let (victim, _) = rig
        .packs()
        .into_iter()
        .filter(|x| !old.contains(x))
        .max_by_key(|(_, l)| *l)
        .expect("a new pack");
    let hidden = rig.site.p("hidden.pack");
    fs::rename(&victim, &hidden).expect("hide");
    let out = rig.run(&rig.sync_args(&[]));
    assert!(
        !out.status.success(),
        "{backend:?}: sync with a pack missing succeeded"
    );
    assert_eq!(
        v1,
        snapshot(&rig.site.mirror()),
        "{backend:?}: a failed sync changed the mirror"
    );
    fs::rename(&hidden, &victim).expect("restore");

    // Killed (a fail point aborts the process, as kill -9 would) once everything is staged,
    // while renaming, and while deleting.
    for at in ["sync.write:1", "sync.rename:2", "sync.delete:1"] {
        let out = bin()
            .args(rig.sync_args(&[]))
            .envs(rig.env.iter().map(|(k, v)| (k, v)))
            .env("PULPDIST_FAILPOINT", at)
            .output()
            .expect("run");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("fail point"),
            "{backend:?}: {at} not reached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        common::assert_whole(&rig.site.mirror(), &v1, &snapshot(&rig.site.src()), at);
    }
    let s = rig.sync();
    assert_same_tree(&rig.site.src(), &rig.site.mirror());
    assert_eq!(
        num(&s, "chunks_fetched"),
        0,
        "{backend:?}: refetched what was staged: {s}, {total_chunks} new chunks"
    );
}

/// A damaged pack is refused (exit 3) and the mirror keeps its version.
fn tampered_pack_refused(backend: Backend) {
    let rig = Rig::new(backend);
    pulpdist_testdata::generate(&rig.site.src(), 7, 3).expect("generate");
    rig.publish();
    rig.sync();
    let v1 = snapshot(&rig.site.mirror());
    pulpdist_testdata::evolve(&rig.site.src(), 7, 1).expect("evolve");
    let old = rig.packs();
    rig.publish();
    for (p, len) in rig.packs().into_iter().filter(|x| !old.contains(x)) {
        let mut b = fs::read(&p).expect("read pack");
        // Flip bytes inside the object area (after the 40-byte header), same length.
        for i in (64..len as usize).step_by(4096) {
            b[i] ^= 0x55;
        }
        fs::write(&p, b).expect("write pack");
    }
    let out = rig.run(&rig.sync_args(&[]));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{backend:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v1, snapshot(&rig.site.mirror()));
}

macro_rules! conformance {
    ($($m:ident => $b:expr),* $(,)?) => {$(
        mod $m {
            #[test]
            fn update_costs() {
                super::update_costs($b)
            }
            #[test]
            fn killed_and_resumed() {
                super::killed_and_resumed($b)
            }
            #[test]
            fn tampered_pack_refused() {
                super::tampered_pack_refused($b)
            }
        }
    )*};
}

conformance! {
    local => super::Backend::Local,
    http => super::Backend::Http,
    s3 => super::Backend::S3,
    nginx => super::Backend::Nginx,
}
