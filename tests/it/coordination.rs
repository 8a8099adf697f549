//! Central coordination: a coordinator (HTTPS, client certificates, SQLite), agents on
//! loopback syncing what it assigns them, and the admin commands. The coordinator is out of
//! the availability path (agents sync from their cached assignment while it is down, and
//! their reports wait for it) and out of the trust path (agents verify every head).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tls::{Pair, TestCa};
use common::{assert_same_tree, bin, run, s, strs, Site};

/// A running coordinator.
struct Coord {
    child: Child,
    url: String,
    /// Its dashboard (plain HTTP).
    board: String,
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network on loopback: a published tree, a CA, the coordinator's and an admin's
/// certificates, and one certificate per site.
struct Net {
    site: Site,
    ca_file: PathBuf,
    coord_pair: Pair,
    admin: Pair,
    ca: TestCa,
}

impl Net {
    fn new() -> Net {
        let site = Site::new();
        pulpdist_testdata::generate(&site.src(), 91, 1).expect("generate");
        site.publish();
        let ca = TestCa::new("pulpdist network CA");
        let dir = site.p("pki");
        std::fs::create_dir_all(&dir).expect("pki");
        let ca_file = ca.write_ca(&dir.join("ca.pem"));
        let coord_pair = ca.issue(&dir, "coordinator", &["localhost"]);
        let admin = ca.issue(&dir, "ops", &["ops"]);
        Net {
            site,
            ca_file,
            coord_pair,
            admin,
            ca,
        }
    }

    fn cert(&self, name: &str) -> Pair {
        self.ca.issue(&self.site.p("pki"), name, &[name])
    }

    /// The network file: `sites` each carry the tree, every `schedule`.
    fn network(&self, sites: &[&str], schedule: &str) -> String {
        let key = std::fs::read_to_string(self.site.trust()).expect("key");
        let mut t = format!(
            "admins = [\"cn:ops\"]\n\n[trees.tree]\nstores = [\"{}\"]\ntrust = [\"{}\"]\n",
            s(&self.site.store()),
            key.trim()
        );
        for name in sites {
            t.push_str(&format!(
                "\n[sites.{name}]\nidentity = \"cn:{name}\"\nlabels = {{ region = \"eu\" }}\n"
            ));
        }
        t.push_str(&format!(
            "\n[[assignment]]\nlabels = {{ region = \"eu\" }}\ntrees = [\"tree\"]\nschedule = \"{schedule}\"\n"
        ));
        t
    }

    /// Starts the coordinator on its database, with `network` applied if it holds none.
    fn start(&self, network: Option<&str>, watch: &str) -> Coord {
        let tls = [&self.coord_pair.cert, &self.coord_pair.key, &self.ca_file];
        self.start_with(network, watch, tls, &[])
    }

    /// With the coordinator's certificate, key and client CA given, and more flags.
    fn start_with(
        &self,
        network: Option<&str>,
        watch: &str,
        tls: [&PathBuf; 3],
        extra: &[&str],
    ) -> Coord {
        let mut cmd = bin();
        cmd.args(["coordinator", "--listen", "127.0.0.1:0"]);
        if !extra.contains(&"--db") {
            cmd.arg("--db").arg(self.site.p("coordinator.db"));
        }
        cmd.args(["--tls-cert", s(tls[0]), "--tls-key", s(tls[1])])
            .args(["--client-ca", s(tls[2]), "--watch", watch])
            .args(extra);
        if let Some(n) = network {
            let f = self.site.p("network.toml");
            std::fs::write(&f, n).expect("network file");
            cmd.arg("--network").arg(f);
        }
        cmd.args(["--dashboard", "127.0.0.1:0"]);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = |what: &str| {
            let mut l = String::new();
            out.read_line(&mut l).expect("a line");
            l.trim()
                .strip_prefix(what)
                .unwrap_or_else(|| panic!("'{l}' is not '{what}...'"))
                .to_string()
        };
        let api = line("coordinating on https://");
        let port = api.rsplit(':').next().unwrap_or("").to_string();
        let board = line("dashboard on ");
        Coord {
            child,
            url: format!("https://localhost:{port}"),
            board,
        }
    }

    /// `--coordinator URL --ca CA --cert C --key K`.
    fn reach(&self, url: &str, who: &Pair) -> Vec<String> {
        [
            "--coordinator",
            url,
            "--ca",
            s(&self.ca_file),
            "--cert",
            s(&who.cert),
            "--key",
            s(&who.key),
        ]
        .map(String::from)
        .to_vec()
    }

    fn agent_args(&self, url: &str, name: &str, who: &Pair) -> Vec<String> {
        let mut a = vec!["agent".to_string()];
        a.extend(self.reach(url, who));
        a.extend([
            "--mirrors".into(),
            s(&self.site.p(&format!("{name}/mirrors"))).into(),
        ]);
        a.extend([
            "--state".into(),
            s(&self.site.p(&format!("{name}/agent"))).into(),
        ]);
        a.extend(["--jitter".into(), "0s".into()]);
        a
    }

    /// One round of `name`'s agent.
    fn agent_once(&self, url: &str, name: &str, who: &Pair) -> Output {
        let mut a = self.agent_args(url, name, who);
        a.push("--once".into());
        let out = run(&strs(&a));
        assert!(
            out.status.success(),
            "agent {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Publishes the next version with `--notify` to `coord`, as the admin.
    fn publish_notified(&self, coord: &Coord) {
        self.site.publish_with(&[
            "--notify",
            &coord.url,
            "--notify-ca",
            s(&self.ca_file),
            "--notify-cert",
            s(&self.admin.cert),
            "--notify-key",
            s(&self.admin.key),
        ]);
    }

    fn mirror(&self, name: &str) -> PathBuf {
        self.site.p(&format!("{name}/mirrors/tree"))
    }

    fn status(&self, url: &str) -> serde_json::Value {
        let mut a = vec!["status".to_string()];
        a.extend(self.reach(url, &self.admin));
        common::run_json(&strs(&a))
    }
}

fn row<'a>(rows: &'a serde_json::Value, site: &str) -> &'a serde_json::Value {
    rows.as_array()
        .and_then(|r| r.iter().find(|r| r["site"] == site))
        .unwrap_or_else(|| panic!("no row for {site} in {rows}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_network_file_is_checked_applied_once_and_exported() {
    let net = Net::new();
    let text = net.network(&["berlin", "paris"], "15m");
    let coord = net.start(Some(&text), "1h");
    let reach = net.reach(&coord.url, &net.admin);
    // The same file again changes nothing; a changed one is the next revision.
    let f = net.site.p("network.toml");
    let mut apply = vec!["network".to_string(), "apply".into(), s(&f).into()];
    apply.extend(reach.clone());
    let out = run(&strs(&apply));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("revision 1 (unchanged)"));
    std::fs::write(&f, net.network(&["berlin", "paris", "rome"], "15m")).expect("edit");
    let out = run(&strs(&apply));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revision 2"),
        "{}",
        stderr(&out)
    );
    let mut export = vec!["network".to_string(), "export".into()];
    export.extend(reach.clone());
    let out = run(&strs(&export));
    assert!(out.status.success(), "{}", stderr(&out));
    let exported =
        pulpdist_network::Network::parse(&String::from_utf8_lossy(&out.stdout)).expect("parses");
    assert_eq!(exported.sites.len(), 3);
    // A file with errors: refused here and by the coordinator, naming the line or key.
    std::fs::write(
        &f,
        text.replace("schedule = \"15m\"", "schedule = \"15m\"\ncolour = \"red\""),
    )
    .expect("bad");
    let out = run(&["network", "check", s(&f)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 19") && stderr(&out).contains("colour"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        &f,
        text.replace("trees = [\"tree\"]", "trees = [\"ubuntu\"]"),
    )
    .expect("bad");
    let out = run(&strs(&apply));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("assignment[1].trees") && stderr(&out).contains("ubuntu"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn agents_sync_what_they_are_assigned_and_keep_working_while_the_coordinator_is_down() {
    let net = Net::new();
    let (berlin, paris) = (net.cert("berlin"), net.cert("paris"));
    let coord = net.start(Some(&net.network(&["berlin", "paris"], "10s")), "1h");
    for (name, who) in [("berlin", &berlin), ("paris", &paris)] {
        net.agent_once(&coord.url, name, who);
        assert_same_tree(&net.site.src(), &net.mirror(name));
    }
    let rows = net.status(&coord.url);
    for site in ["berlin", "paris"] {
        let r = row(&rows, site);
        assert_eq!(
            (r["version"].as_u64(), r["last_outcome"].as_str()),
            (Some(1), Some("completed")),
            "{r}"
        );
        assert_eq!(r["head_store"], s(&net.site.store()), "{r}");
    }
    // The coordinator goes away; a new version is published; the agents still sync it
    // (from their cached assignment) and keep their reports.
    drop(coord);
    pulpdist_testdata::evolve(&net.site.src(), 3, 1).expect("evolve");
    net.site.publish();
    for (name, who) in [("berlin", &berlin), ("paris", &paris)] {
        let mut a = net.agent_args("https://localhost:1", name, who);
        a.push("--once".into());
        let out = run(&strs(&a));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&net.site.src(), &net.mirror(name));
        let queued = std::fs::read_to_string(net.site.p(&format!("{name}/agent/reports.jsonl")))
            .expect("queue");
        assert_eq!(queued.lines().count(), 1, "{queued}");
    }
    // Back (same database): the queued reports arrive; the status is right.
    let coord = net.start(None, "1h");
    for (name, who) in [("berlin", &berlin), ("paris", &paris)] {
        net.agent_once(&coord.url, name, who);
        assert!(!net.site.p(&format!("{name}/agent/reports.jsonl")).exists());
    }
    let rows = net.status(&coord.url);
    for site in ["berlin", "paris"] {
        let r = row(&rows, site);
        assert_eq!(r["version"].as_u64(), Some(2), "{r}");
        assert_eq!(
            (r["newest"].as_u64(), r["versions_behind"].as_u64()),
            (Some(2), Some(0)),
            "{r}"
        );
    }
}

#[test]
fn a_site_certificate_reads_and_writes_only_its_own() {
    let net = Net::new();
    let (berlin, stranger) = (net.cert("berlin"), net.cert("stranger"));
    let coord = net.start(Some(&net.network(&["berlin"], "1h")), "1h");
    // A site is not an admin: the status, the network and pushes are "not found".
    for cmd in [
        vec!["status"],
        vec!["network", "export"],
        vec!["network", "push", "--tree", "tree"],
    ] {
        let mut a: Vec<String> = cmd.iter().map(|x| x.to_string()).collect();
        a.extend(net.reach(&coord.url, &berlin));
        let out = run(&strs(&a));
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("404"), "{cmd:?}: {}", stderr(&out));
    }
    // A certificate of the CA that names no site gets no assignment.
    let out = run(&strs(&{
        let mut a = net.agent_args(&coord.url, "stranger", &stranger);
        a.push("--once".into());
        a
    }));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!net.mirror("stranger").exists());
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    // A certificate from another CA does not get through the handshake.
    let other = TestCa::new("another CA");
    let forged = other.issue(&net.site.p("pki"), "ops-forged", &["ops"]);
    let mut a = vec!["status".to_string()];
    a.extend(net.reach(&coord.url, &forged));
    let out = run(&strs(&a));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The site's own assignment names only its trees; a report for another is refused.
    net.agent_once(&coord.url, "berlin", &berlin);
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
}

#[test]
fn a_new_head_wakes_a_waiting_agent_long_before_its_schedule() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    // A schedule of an hour: only a push can bring version 2 within the test's deadline.
    let coord = net.start(Some(&net.network(&["berlin"], "1h")), "1s");
    let mut agent = bin()
        .args(net.agent_args(&coord.url, "berlin", &berlin))
        .args(["--poll", "30s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let deadline = |what: &str, done: &dyn Fn() -> bool| {
        let until = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < until, "{what} within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let version = |n: u64| {
        let rows = net.status(&coord.url);
        row(&rows, "berlin")["version"].as_u64() == Some(n)
    };
    deadline("version 1 synced and reported", &|| version(1));
    pulpdist_testdata::evolve(&net.site.src(), 5, 1).expect("evolve");
    net.site.publish();
    deadline("version 2 synced after the push", &|| version(2));
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let _ = agent.kill();
    let _ = agent.wait();
}

/// `chromium --headless` with `args` on `url`; its standard output.
fn chromium(args: &[&str], url: &str) -> String {
    let exe = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium (scripts/test installs it)");
    let home = tempfile::tempdir().expect("profile");
    let out = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", s(home.path())))
        .args(args)
        .arg(url)
        .env("HOME", home.path())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A GET on the dashboard listener: status and body.
fn get(board: &str, path: &str) -> (u16, String) {
    let mut c = common::http::Conn::open(board.trim_start_matches("http://"));
    let r = c.send("GET", path, &[]);
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn the_dashboard_shows_the_network_in_a_browser_and_each_page_has_a_json_twin() {
    let net = Net::new();
    let (berlin, paris) = (net.cert("berlin"), net.cert("paris"));
    let coord = net.start(Some(&net.network(&["berlin", "paris"], "10s")), "1h");
    net.agent_once(&coord.url, "berlin", &berlin);
    net.agent_once(&coord.url, "paris", &paris);
    // The matrix, rendered by a real browser without JavaScript help: one row per site,
    // one coloured cell per tree.
    let dom = chromium(&["--dump-dom"], &format!("{}/", coord.board));
    assert!(dom.contains("<table id=\"matrix\">"), "{dom}");
    for site in ["berlin", "paris"] {
        assert!(dom.contains(&format!("<tr data-site=\"{site}\">")), "{dom}");
    }
    assert_eq!(
        dom.matches("class=\"current\" data-tree=\"tree\" data-version=\"1\"")
            .count(),
        2,
        "{dom}"
    );
    let shot = net.site.p("matrix.png");
    chromium(
        &[
            &format!("--screenshot={}", s(&shot)),
            "--window-size=1024,600",
        ],
        &format!("{}/", coord.board),
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 2000,
        "{} bytes",
        png.len()
    );
    // The site page: its runs, with the chart; the tree page: its versions and who has them.
    let site = chromium(&["--dump-dom"], &format!("{}/site/berlin", coord.board));
    assert!(
        site.contains("<svg id=\"chart\"") && site.contains("<table id=\"history\">"),
        "{site}"
    );
    let tree = get(&coord.board, "/tree/tree").1;
    assert!(tree.contains("<table id=\"heads\">"), "{tree}");
    // Each page's JSON twin, here and (for an admin) on the HTTPS API.
    let (code, status) = get(&coord.board, "/api/v1/status");
    assert_eq!(code, 200);
    let rows: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(rows, net.status(&coord.url));
    let (_, site) = get(&coord.board, "/api/v1/sites/berlin");
    let site: serde_json::Value = serde_json::from_str(&site).expect("json");
    assert_eq!(site["history"][0]["outcome"], "completed", "{site}");
    assert!(site["certificate_expires"].as_i64() > Some(0), "{site}");
    let (_, tree) = get(&coord.board, "/api/v1/trees/tree");
    let tree: serde_json::Value = serde_json::from_str(&tree).expect("json");
    assert_eq!(tree["heads"][0]["version"], 1, "{tree}");
    assert_eq!(
        tree["heads"][0]["reached"].as_array().map(Vec::len),
        Some(2),
        "{tree}"
    );
    assert_eq!(get(&coord.board, "/site/rome").0, 404);
    assert_eq!(get(&coord.board, "/api/v1/sites/rome").0, 404);
}

#[test]
fn events_are_raised_sent_to_the_webhook_and_cleared_and_counted_in_the_metrics() {
    use std::io::{Read, Write as _};
    let net = Net::new();
    let berlin = net.cert("berlin");
    // A webhook endpoint: every request's body, answered 200.
    let hook = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook_url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in hook.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            while let Ok(n) = c.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        let _ = tx.send(body.to_string());
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let text = net.network(&["berlin"], "1h")
        + &format!("\n[alerts]\nbehind_versions = 1\nfailures = 1\nwebhook = \"{hook_url}\"\n");
    let coord = net.start(Some(&text), "1s");
    net.agent_once(&coord.url, "berlin", &berlin);
    // A new version berlin does not have: "behind" is raised and sent.
    pulpdist_testdata::evolve(&net.site.src(), 9, 1).expect("evolve");
    net.site.publish();
    let wait_for = |want: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let body = rx.recv_timeout(left).expect("a webhook call within 60 s");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            if want(&v) {
                return v;
            }
        }
    };
    let e = wait_for(&|v| v["kind"] == "behind" && v["state"] == "open");
    assert_eq!(
        (e["site"].as_str(), e["tree"].as_str()),
        (Some("berlin"), Some("tree")),
        "{e}"
    );
    // Its sync catches up: the event clears, and that is sent too.
    net.agent_once(&coord.url, "berlin", &berlin);
    wait_for(&|v| v["kind"] == "behind" && v["state"] == "resolved");
    let (_, events) = get(&coord.board, "/api/v1/events");
    let events: serde_json::Value = serde_json::from_str(&events).expect("json");
    assert!(
        events.as_array().is_some_and(|l| l
            .iter()
            .any(|e| e["kind"] == "behind" && e["closed"].is_i64())),
        "{events}"
    );
    // The metrics: what the status says, in a format promtool accepts.
    let (code, metrics) = get(&coord.board, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("pulpdist_site_version{site=\"berlin\",tree=\"tree\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pulpdist_reports_total{outcome=\"completed\"}"),
        "{metrics}"
    );
    // OpenMetrics (prometheus-client), as its content type says: typed families, `# EOF`.
    assert!(
        metrics.contains("# TYPE pulpdist_reports counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE pulpdist_site_versions_behind gauge"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
}

#[test]
fn the_shipped_alert_rules_pass_their_promtool_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(["test", "rules", "pulpdist-alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool (scripts/test installs prometheus)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn a_site_that_reports_a_version_it_does_not_serve_is_flagged_by_the_probe() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    // berlin relays the tree from a store of its own: the coordinator probes that.
    let relay = net.site.p("berlin/relay");
    let replicate = |_: ()| {
        let out = run(&[
            "replicate",
            "--from",
            s(&net.site.store()),
            "--to",
            s(&relay),
            "--tree",
            "tree",
            "--trust",
            &net.site.trust(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    replicate(());
    let text = net.network(&["berlin"], "1h").replace(
        "identity = \"cn:berlin\"\n",
        &format!("identity = \"cn:berlin\"\nserves = \"{}\"\n", s(&relay)),
    );
    let coord = net.start(Some(&text), "1s");
    net.agent_once(&coord.url, "berlin", &berlin);
    let row_now = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = net.status(&coord.url);
            let r = row(&rows, "berlin").clone();
            if pred(&r) {
                return r;
            }
            assert!(Instant::now() < until, "not within 60 s: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let r = row_now(&|r| r["probe_agrees"] == true);
    assert_eq!(
        (r["version"].as_u64(), r["probe_version"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    // Version 2: the agent syncs its mirror and reports it, but the copy berlin serves is
    // still version 1. The probe wins, and an event says so.
    pulpdist_testdata::evolve(&net.site.src(), 4, 1).expect("evolve");
    net.site.publish();
    net.agent_once(&coord.url, "berlin", &berlin);
    let r = row_now(&|r| r["probe_agrees"] == false);
    assert_eq!(
        (
            r["version"].as_u64(),
            r["reported_version"].as_u64(),
            r["probe_version"].as_u64()
        ),
        (Some(1), Some(2), Some(1)),
        "{r}"
    );
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, events) = get(&coord.board, "/api/v1/events");
        if events.contains("\"kind\":\"mismatch\"")
            && events.contains("reports version 2, serves version 1")
        {
            break;
        }
        assert!(Instant::now() < until, "no mismatch event: {events}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The relay catches up: the probe agrees again.
    replicate(());
    row_now(&|r| r["probe_agrees"] == true && r["version"] == 2);
}

#[test]
fn a_push_during_a_running_sync_ends_with_the_site_on_the_newer_version() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let coord = net.start(Some(&net.network(&["berlin"], "1h")), "1h");
    // The agent's first sync (of version 1) is held once planned.
    let release = net.site.p("release");
    let mut agent = bin()
        .args(net.agent_args(&coord.url, "berlin", &berlin))
        .args(["--poll", "30s"])
        .env(
            "PULPDIST_FAILPOINT",
            format!("sync.planned:1:wait:{}", s(&release)),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    common::wait_for(&net.site.p("release.reached"));
    // Meanwhile version 2 is published and pushed; then the held sync goes on.
    pulpdist_testdata::evolve(&net.site.src(), 6, 1).expect("evolve");
    net.publish_notified(&coord);
    std::fs::write(&release, b"go").expect("release");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = net.status(&coord.url);
        if row(&rows, "berlin")["version"] == 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the pushed version was not synced: {rows}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let (_, site) = get(&coord.board, "/api/v1/sites/berlin");
    let site: serde_json::Value = serde_json::from_str(&site).expect("json");
    let versions: Vec<u64> = site["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["version"].as_u64())
        .collect();
    assert_eq!(versions, [2, 1], "{site}");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn the_coordinator_cannot_change_the_keys_a_site_trusts_and_a_refused_report_is_set_aside() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let text = net.network(&["berlin"], "10s");
    let coord = net.start(Some(&text), "1h");
    net.agent_once(&coord.url, "berlin", &berlin);
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let pinned = net.site.p("berlin/agent/keys/tree.pub");
    assert!(std::fs::read_to_string(&pinned)
        .expect("pinned")
        .contains("pulpdist-ed25519"));
    // A coordinator that names another store and another key (its own) for the tree.
    let forger = Site::new();
    std::fs::write(forger.src().join("evil"), b"not the tree").expect("file");
    let forged = net.site.p("forged-store");
    let out = run(&[
        "publish",
        "--store",
        s(&forged),
        "--tree",
        "tree",
        "--key",
        s(&forger.key()),
        s(&forger.src()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let their_key = std::fs::read_to_string(forger.trust()).expect("key");
    let evil = text.replace(s(&net.site.store()), s(&forged)).replace(
        std::fs::read_to_string(net.site.trust())
            .expect("key")
            .trim(),
        their_key.trim(),
    );
    let f = net.site.p("evil.toml");
    std::fs::write(&f, evil).expect("file");
    let mut apply = vec!["network".to_string(), "apply".into(), s(&f).into()];
    apply.extend(net.reach(&coord.url, &net.admin));
    let out = run(&strs(&apply));
    assert!(out.status.success(), "{}", stderr(&out));
    // The agent keeps its pinned key: the forged head is refused, the mirror kept.
    let mut a = net.agent_args(&coord.url, "berlin", &berlin);
    a.push("--once".into());
    // Its schedule (10 s) has not come round: a push makes it sync now.
    let mut push = vec![
        "network".to_string(),
        "push".into(),
        "--tree".into(),
        "tree".into(),
    ];
    push.extend(net.reach(&coord.url, &net.admin));
    assert!(run(&strs(&push)).status.success());
    let out = run(&strs(&a));
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = net.status(&coord.url);
    let r = row(&rows, "berlin");
    assert_eq!(r["last_outcome"], "refused", "{r}");
    assert_eq!(r["version"].as_u64(), Some(1), "{r}");
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    // A queued report the coordinator refuses for good (too large) is set aside; the
    // others still arrive.
    let queue = net.site.p("berlin/agent/reports.jsonl");
    let report = |id: &str, error: &str| {
        serde_json::json!({
            "id": id, "tree": "tree", "outcome": "failed", "started": 1, "from_version": 1,
            "to_version": null, "root": null, "head_store": null, "bytes_fetched": 0,
            "bytes_reused": 0, "requests": 0, "duration_ms": 1, "rsync_files": 0,
            "error": error, "agent_version": "test"
        })
        .to_string()
    };
    let huge = "x".repeat(2 << 20);
    std::fs::write(
        &queue,
        format!(
            "{}\n{}\n{}\n",
            report("a", "small"),
            report("b", &huge),
            report("c", "small too")
        ),
    )
    .expect("queue");
    net.agent_once(&coord.url, "berlin", &berlin);
    assert!(!queue.exists(), "the queue was not emptied");
    let rejected =
        std::fs::read_to_string(net.site.p("berlin/agent/rejected.jsonl")).expect("set aside");
    assert_eq!(rejected.lines().count(), 1);
    let (_, site) = get(&coord.board, "/api/v1/sites/berlin");
    assert!(
        site.contains("small too") && site.contains("\"small\""),
        "{site}"
    );
    // Delivered twice (an acknowledgement lost): stored once.
    std::fs::write(&queue, format!("{}\n", report("c", "small too"))).expect("queue");
    net.agent_once(&coord.url, "berlin", &berlin);
    let (_, site) = get(&coord.board, "/api/v1/sites/berlin");
    assert_eq!(site.matches("small too").count(), 1, "{site}");
}

#[test]
fn a_site_revoked_by_the_ca_is_refused_after_the_coordinator_reloads() {
    let net = Net::new();
    // The network's CA made with `pulpdist ca`, which keeps a revocation list.
    let pki = net.site.p("ca");
    let ca = |args: &[&str]| {
        let mut a = vec!["ca"];
        a.extend(args);
        a.extend(["--dir", s(&pki)]);
        let out = run(&a);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    ca(&["init"]);
    ca(&[
        "issue",
        "--site",
        "coordinator",
        "--server",
        "--dns",
        "localhost",
    ]);
    ca(&["issue", "--site", "ops"]);
    ca(&["issue", "--site", "berlin"]);
    let pair = |n: &str| Pair {
        cert: pki.join(format!("{n}.pem")),
        key: pki.join(format!("{n}.key")),
    };
    let (cert, key, ca_pem) = (
        pki.join("coordinator.pem"),
        pki.join("coordinator.key"),
        pki.join("ca.pem"),
    );
    let crl = pki.join("crl.pem");
    let coord = net.start_with(
        Some(&net.network(&["berlin"], "1h")),
        "1h",
        [&cert, &key, &ca_pem],
        &["--crl", s(&crl)],
    );
    let reach = |who: &Pair| {
        let mut a = vec![
            "status".to_string(),
            "--coordinator".into(),
            coord.url.clone(),
        ];
        a.extend(["--ca".into(), s(&pki.join("ca.pem")).into()]);
        a.extend([
            "--cert".into(),
            s(&who.cert).into(),
            "--key".into(),
            s(&who.key).into(),
        ]);
        run(&strs(&a))
    };
    // berlin is known (not an admin: 404), ops reads the status.
    assert!(stderr(&reach(&pair("berlin"))).contains("404"));
    assert!(reach(&pair("ops")).status.success());
    ca(&["revoke", "--site", "berlin"]);
    let ok = Command::new("kill")
        .args(["-HUP", &coord.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let out = reach(&pair("berlin"));
        if !stderr(&out).contains("404") {
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            break;
        }
        assert!(
            Instant::now() < until,
            "berlin still gets through: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reach(&pair("ops")).status.success(), "ops was refused too");
}

#[test]
fn a_push_wakes_the_relay_first_and_the_sites_below_it_once_it_holds_the_version() {
    let net = Net::new();
    let (hub, leaf) = (net.cert("hub"), net.cert("leaf"));
    let relay = net.site.p("hub/relay");
    let key = std::fs::read_to_string(net.site.trust()).expect("key");
    let text = format!(
        "admins = [\"cn:ops\"]\n\n[trees.tree]\nstores = [\"{}\"]\ntrust = [\"{}\"]\n\n\
         [sites.hub]\nidentity = \"cn:hub\"\nserves = \"{}\"\n\n[sites.leaf]\nidentity = \"cn:leaf\"\n\n\
         [[assignment]]\nsites = [\"hub\"]\ntrees = [\"tree\"]\nschedule = \"1h\"\n\n\
         [[assignment]]\nsites = [\"leaf\"]\ntrees = [\"tree\"]\nschedule = \"1h\"\nupstream = \"hub\"\n",
        s(&net.site.store()),
        key.trim(),
        s(&relay)
    );
    let coord = net.start(Some(&text), "1h");
    let spawn = |name: &str, who: &Pair, extra: &[&str]| {
        bin()
            .args(net.agent_args(&coord.url, name, who))
            .args(["--poll", "30s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent")
    };
    let mut agents = [
        spawn("hub", &hub, &["--relay", s(&relay)]),
        spawn("leaf", &leaf, &[]),
    ];
    let until = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = net.status(&coord.url);
            if pred(&rows) {
                return rows;
            }
            assert!(Instant::now() < deadline, "{what} within 60 s: {rows}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("both at version 1", &|rows| {
        row(rows, "hub")["version"] == 1 && row(rows, "leaf")["version"] == 1
    });
    pulpdist_testdata::evolve(&net.site.src(), 8, 1).expect("evolve");
    net.publish_notified(&coord);
    // The leaf syncs version 2 from the relay: it was woken only once the relay held it.
    let rows = until("the leaf at version 2", &|rows| {
        row(rows, "leaf")["version"] == 2
    });
    assert_eq!(row(&rows, "leaf")["head_store"], s(&relay), "{rows}");
    assert_eq!(row(&rows, "hub")["version"], 2, "{rows}");
    assert_same_tree(&net.site.src(), &net.mirror("leaf"));
    assert_same_tree(&net.site.src(), &net.mirror("hub"));
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
}

#[test]
fn old_reports_are_summed_into_daily_rollups_and_the_status_survives() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let coord = net.start_with(
        Some(&net.network(&["berlin"], "10s")),
        "1s",
        [&net.coord_pair.cert, &net.coord_pair.key, &net.ca_file],
        &["--keep-reports", "1s"],
    );
    for _ in 0..3 {
        net.agent_once(&coord.url, "berlin", &berlin);
    }
    let until = Instant::now() + Duration::from_secs(60);
    let site = loop {
        let (_, site) = get(&coord.board, "/api/v1/sites/berlin");
        let v: serde_json::Value = serde_json::from_str(&site).expect("json");
        // (Two days' rows if the runs straddle midnight UTC.)
        let rolled: u64 = v["daily"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["runs"].as_u64())
            .sum();
        if rolled == 2 {
            break v;
        }
        assert!(Instant::now() < until, "no rollup: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(site["history"].as_array().map(Vec::len), Some(1), "{site}");
    assert!(
        site["daily"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|d| d["failures"] == 0),
        "{site}"
    );
    let rows = net.status(&coord.url);
    assert_eq!(row(&rows, "berlin")["version"], 1, "{rows}");
}

#[test]
fn a_site_is_enrolled_with_its_first_key_and_another_key_needs_an_admin() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let coord = net.start(Some(&net.network(&["berlin"], "1h")), "1h");
    net.agent_once(&coord.url, "berlin", &berlin);
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    // The same name from the same CA, another key: not berlin.
    let impostor = net.ca.issue(&net.site.p("pki"), "berlin-2", &["berlin"]);
    let mut a = net.agent_args(&coord.url, "berlin2", &impostor);
    a.push("--once".into());
    let out = run(&strs(&a));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    assert!(!net.mirror("berlin2").exists());
    // An admin accepts the next key; from then on the old one is refused.
    let mut re = vec![
        "network".to_string(),
        "reenrol".into(),
        "--site".into(),
        "berlin".into(),
    ];
    re.extend(net.reach(&coord.url, &net.admin));
    let out = run(&strs(&re));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&strs(&a));
    assert!(!stderr(&out).contains("404"), "{}", stderr(&out));
    assert_same_tree(&net.site.src(), &net.mirror("berlin2"));
    let mut old = net.agent_args(&coord.url, "berlin", &berlin);
    old.push("--once".into());
    assert!(stderr(&run(&strs(&old))).contains("404"));
}

#[test]
fn a_full_disk_under_the_database_loses_no_report_and_passes() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let disk = net.site.p("dbdisk");
    let _mount = common::tmpfs(&disk, 8);
    let cmd_net = net.network(&["berlin"], "10s");
    let db = disk.join("coordinator.db");
    let coord = net.start_with(
        Some(&cmd_net),
        "1h",
        [&net.coord_pair.cert, &net.coord_pair.key, &net.ca_file],
        &["--db", s(&db)],
    );
    net.agent_once(&coord.url, "berlin", &berlin);
    // The disk fills up: the agent keeps its reports (nothing set aside).
    let fill = disk.join("fill");
    let mut f = std::fs::File::create(&fill).expect("fill");
    let block = vec![0u8; 1 << 16];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    let out = net.agent_once(&coord.url, "berlin", &berlin);
    // The poll was answered (from memory); the reports were refused with 503 and kept.
    assert!(
        stderr(&out).contains("/api/v1/reports") && stderr(&out).contains("503"),
        "{}",
        stderr(&out)
    );
    let queue = net.site.p("berlin/agent/reports.jsonl");
    assert!(queue.exists(), "the report was not kept");
    assert!(!net.site.p("berlin/agent/rejected.jsonl").exists());
    // Room again: the queued reports arrive.
    std::fs::remove_file(&fill).expect("unfill");
    let until = Instant::now() + Duration::from_secs(60);
    let mut runs = 2;
    while queue.exists() {
        assert!(Instant::now() < until, "the queued reports never arrived");
        net.agent_once(&coord.url, "berlin", &berlin);
        runs += 1;
    }
    // Every run's report is there, once.
    let (_, site) = get(&coord.board, "/api/v1/sites/berlin");
    let v: serde_json::Value = serde_json::from_str(&site).expect("json");
    assert_eq!(v["history"].as_array().map_or(0, Vec::len), runs, "{v}");
}
