//! Propagation through the coordinator (issue 19): N real `pulpdist agent` processes on
//! loopback carry one tree; a new version is published with `--notify` (a push), then
//! another with no push at all (the coordinator's watcher off: every push "dropped"). For
//! each, how long after the head was written each agent started its sync (the agent's
//! "sync starts" log line, timed as it arrives here), and how long until every site
//! reported the version.
//!
//!   coord-propagation PULPDIST_BINARY [AGENTS] [SCHEDULE_SECONDS] [JITTER_SECONDS]
//!
//! Defaults: 50 agents, a schedule of 30 s, a push jitter of 2 s.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pulpdist_benchmarks::coord::{client, pki};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(binary: &str, args: &[&str]) {
    let out = Command::new(binary).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "pulpdist {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// When the tree's head was written (its file's modification time).
fn head_written(store: &Path) -> SystemTime {
    std::fs::metadata(store.join("heads/tree"))
        .and_then(|m| m.modified())
        .expect("the head")
}

/// Seconds from `from` to each agent's first "sync starts" after it, sorted.
fn delays(starts: &Mutex<Vec<(usize, SystemTime)>>, from: SystemTime, agents: usize) -> Vec<f64> {
    let mut first = vec![None; agents];
    for (i, at) in starts.lock().expect("starts").iter() {
        if *at >= from && first[*i].is_none() {
            first[*i] = at.duration_since(from).ok().map(|d| d.as_secs_f64());
        }
    }
    let mut d: Vec<f64> = first.into_iter().flatten().collect();
    d.sort_by(f64::total_cmp);
    d
}

fn main() {
    let binary = std::env::args()
        .nth(1)
        .expect("usage: coord-propagation PULPDIST [AGENTS] [SCHEDULE_SECONDS] [JITTER_SECONDS]");
    let (agents, schedule, jitter) = (arg(2, 50) as usize, arg(3, 30), arg(4, 2));
    let work = std::env::temp_dir().join(format!("coord-propagation-{}", std::process::id()));
    let (src, store, key) = (work.join("src"), work.join("store"), work.join("key"));
    std::fs::create_dir_all(&src).expect("work dir");
    pulpdist_testdata::generate(&src, 7, 1).expect("tree");
    run(&binary, &["keygen", s(&key)]);
    let publish = |notify: Option<&str>| {
        let mut a = vec![
            "publish",
            "--store",
            s(&store),
            "--tree",
            "tree",
            "--key",
            s(&key),
        ];
        let (ca, cert, k) = (
            work.join("ca.pem"),
            work.join("ops.pem"),
            work.join("ops.key"),
        );
        if let Some(url) = notify {
            a.extend(["--notify", url, "--notify-ca", s(&ca)]);
            a.extend(["--notify-cert", s(&cert), "--notify-key", s(&k)]);
        }
        a.push(s(&src));
        run(&binary, &a);
    };
    publish(None);
    let names: Vec<String> = (0..agents).map(|i| format!("site{i:03}")).collect();
    let mut all = names.clone();
    all.extend(["ops".to_string(), "localhost".to_string()]);
    let ca = pki(&work, &all);
    let trust = std::fs::read_to_string(format!("{}.pub", s(&key))).expect("key");
    let mut net = format!(
        "admins = [\"cn:ops\"]\n[trees.tree]\nstores = [\"{}\"]\ntrust = [\"{}\"]\n",
        s(&store),
        trust.trim()
    );
    for n in &names {
        net.push_str(&format!(
            "[sites.{n}]\nidentity = \"cn:{n}\"\nlabels = {{ tier = \"leaf\" }}\n"
        ));
    }
    net.push_str(&format!(
        "[[assignment]]\nlabels = {{ tier = \"leaf\" }}\ntrees = [\"tree\"]\nschedule = \"{schedule}s\"\n"
    ));
    std::fs::write(work.join("network.toml"), net).expect("network");
    // No head watcher (an hour): the only pushes are the publisher's --notify.
    let mut coord = Command::new(&binary)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--watch", "1h"])
        .args(["--db", s(&work.join("coordinator.db"))])
        .args(["--tls-cert", s(&work.join("localhost.pem"))])
        .args(["--tls-key", s(&work.join("localhost.key"))])
        .args([
            "--client-ca",
            s(&ca),
            "--network",
            s(&work.join("network.toml")),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator");
    let mut line = String::new();
    BufReader::new(coord.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let port = line.trim().rsplit(':').next().unwrap_or("").to_string();
    let url = format!("https://localhost:{port}");
    let starts: Arc<Mutex<Vec<(usize, SystemTime)>>> = Arc::default();
    let mut procs: Vec<Child> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let site = work.join(n);
        let mut child = Command::new(&binary)
            .args(["agent", "--coordinator", &url, "--ca", s(&ca)])
            .args(["--cert", s(&work.join(format!("{n}.pem")))])
            .args(["--key", s(&work.join(format!("{n}.key")))])
            .args([
                "--mirrors",
                s(&site.join("mirrors")),
                "--state",
                s(&site.join("agent")),
            ])
            .args(["--jitter", &format!("{jitter}s"), "--poll", "60s"])
            .env("RUST_LOG", "pulpdist_agent=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent");
        let err = child.stderr.take().expect("stderr");
        let starts = starts.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if l.contains("sync starts") {
                    starts.lock().expect("starts").push((i, SystemTime::now()));
                }
            }
        });
        procs.push(child);
    }
    let admin = client(&url, &work, "ops");
    let all_at = |v: u64, limit: Duration| -> Option<f64> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let rows = admin.status("").unwrap_or_default();
            let done = rows.as_array().map_or(0, |r| {
                r.iter()
                    .filter(|r| r["version"].as_u64() == Some(v))
                    .count()
            });
            if done == agents {
                return Some(t0.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    let first = all_at(1, Duration::from_secs(600));
    println!(
        "{agents} agents, schedule {schedule} s, jitter {jitter} s: first sync of every site reported in {:.1} s",
        first.expect("every site synced version 1")
    );
    let summary = |what: &str, d: &[f64], reported: Option<f64>, from: SystemTime| {
        let pct = |q: f64| {
            d.get(((d.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        let after = reported.map(|r| {
            SystemTime::now()
                .duration_since(from)
                .map_or(r, |d| d.as_secs_f64())
        });
        println!(
            "{what}: {} of {agents} agents started a sync; after the head was written: first {:.2} s, median {:.2} s, last {:.2} s; every site reported the version {}",
            d.len(),
            pct(0.0).unwrap_or(f64::NAN),
            pct(0.5).unwrap_or(f64::NAN),
            pct(1.0).unwrap_or(f64::NAN),
            after.map_or("not within the limit".to_string(), |a| format!("by {a:.1} s"))
        );
    };
    // A push: publish --notify.
    pulpdist_testdata::evolve(&src, 7, 1).expect("evolve");
    publish(Some(&url));
    let written = head_written(&store);
    let reported = all_at(2, Duration::from_secs(120));
    summary(
        "push (publish --notify)",
        &delays(&starts, written, agents),
        reported,
        written,
    );
    // Every push dropped: no --notify, no watcher; the schedule brings it.
    pulpdist_testdata::evolve(&src, 7, 2).expect("evolve");
    publish(None);
    let written = head_written(&store);
    let reported = all_at(3, Duration::from_secs(schedule * 2 + 120));
    summary(
        &format!("no push (schedule {schedule} s)"),
        &delays(&starts, written, agents),
        reported,
        written,
    );
    for mut p in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    let _ = coord.kill();
    let _ = coord.wait();
    let _ = std::fs::remove_dir_all(&work);
}
