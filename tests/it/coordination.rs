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
    /// The coordinator's database: a SQLite file, or, with `PULPDIST_TEST_DB=postgres`
    /// (how `./scripts/test` runs this suite a second time), a database of its own on the
    /// test process's PostgreSQL server.
    db: String,
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
        let db = match std::env::var("PULPDIST_TEST_DB").as_deref() {
            Ok("postgres") => common::servers::postgres().url(&fresh_database()),
            _ => s(&site.p("coordinator.db")).to_string(),
        };
        Net {
            site,
            db,
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
            cmd.args(["--db", &self.db]);
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
        // Its log, for the tests that read it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.site.p("coordinator.log"))
            .expect("log");
        let mut child = cmd
            .env("RUST_LOG", "pulpdist_coordinator=info")
            .stdout(Stdio::piped())
            .stderr(log)
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

impl Net {
    /// The coordinator's API as the holder of `who`.
    fn client(&self, coord: &Coord, who: &Pair) -> pulpdist_agent::Client {
        let read = |p: &Path| std::fs::read(p).expect("pem");
        let http = pulpdist_sync::HttpOptions {
            ca_pem: Some(read(&self.ca_file)),
            client_cert_pem: Some((read(&who.cert), read(&who.key))),
            ..Default::default()
        };
        pulpdist_agent::Client::new(&coord.url, &http).expect("client")
    }
}

/// A site's assignment now.
fn current(c: &pulpdist_agent::Client) -> pulpdist_network::SiteAssignment {
    c.assignment(None, Duration::ZERO)
        .expect("assignment")
        .expect("an assignment")
}

/// The long-polls `coord` holds, from its metrics.
fn long_polls(coord: &Coord) -> u64 {
    get(&coord.board, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix("pulpdist_coordinator_long_polls "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// A database name not used before on the test process's PostgreSQL server.
fn fresh_database() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("coord_{}_{n}", std::process::id())
}

/// Waits (30 s at most) until `check` holds.
fn until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(100));
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
    // The file, the line and the key.
    let bad_line = std::fs::read_to_string(&f)
        .expect("file")
        .lines()
        .position(|l| l.contains("\"ubuntu\""))
        .expect("line")
        + 1;
    assert!(
        stderr(&out).contains(&format!("{}: line {bad_line}: assignment[1].trees", s(&f)))
            && stderr(&out).contains("ubuntu"),
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

/// One value of the agent's `/metrics` at `addr` (`None` if it has no such line).
fn agent_metric(addr: &str, series: &str) -> Option<i64> {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn an_agent_syncs_three_publishes_while_the_coordinator_is_down_and_its_metrics_say_so() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let coord = net.start(Some(&net.network(&["berlin"], "10s")), "1h");
    let mut agent = bin()
        .args(net.agent_args(&coord.url, "berlin", &berlin))
        .args(["--poll", "2s", "--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let mut line = String::new();
    BufReader::new(agent.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the agent's first line");
    let metrics = line
        .trim()
        .strip_prefix("metrics on ")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("'{line}'"))
        .to_string();
    let version = "pulpdist_agent_version{tree=\"tree\"}";
    until("version 1 synced", Duration::from_secs(60), || {
        agent_metric(&metrics, version) == Some(1)
    });
    until("the report delivered", Duration::from_secs(60), || {
        row(&net.status(&coord.url), "berlin")["version"] == 1
    });
    assert_eq!(
        agent_metric(&metrics, "pulpdist_agent_coordinator_reachable"),
        Some(1)
    );
    // The coordinator goes away for three publishes: each is synced on the schedule from
    // the cached assignment, none fails, and the reports wait.
    drop(coord);
    for v in 2..=4 {
        pulpdist_testdata::evolve(&net.site.src(), 7, v - 1).expect("evolve");
        net.site.publish();
        until(
            &format!("version {v} synced"),
            Duration::from_secs(60),
            || agent_metric(&metrics, version) == Some(v as i64),
        );
        assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    }
    let failed = "pulpdist_agent_runs_total{tree=\"tree\",outcome=\"failed\"}";
    assert_eq!(agent_metric(&metrics, failed), None);
    assert_eq!(
        agent_metric(
            &metrics,
            "pulpdist_agent_runs_total{tree=\"tree\",outcome=\"completed\"}"
        ),
        Some(4)
    );
    until(
        "the agent sees the coordinator gone",
        Duration::from_secs(30),
        || agent_metric(&metrics, "pulpdist_agent_coordinator_reachable") == Some(0),
    );
    assert!(agent_metric(&metrics, "pulpdist_agent_reports_queued").unwrap_or(0) >= 3);
    let _ = agent.kill();
    let _ = agent.wait();
    // Back on the same database: one round of the agent delivers the queue, and the status
    // is right at once: version 4, nothing behind, the three runs in the site's history.
    let coord = net.start(None, "1h");
    net.agent_once(&coord.url, "berlin", &berlin);
    let r = row(&net.status(&coord.url), "berlin").clone();
    assert_eq!(
        (
            r["version"].as_u64(),
            r["newest"].as_u64(),
            r["versions_behind"].as_u64()
        ),
        (Some(4), Some(4), Some(0)),
        "{r}"
    );
    let (_, page) = get(&coord.board, "/api/v1/sites/berlin");
    let page: serde_json::Value = serde_json::from_str(&page).expect("json");
    let completed: Vec<u64> = page["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|r| r["outcome"] == "completed")
        .filter_map(|r| r["version"].as_u64())
        .collect();
    assert_eq!(completed, [4, 3, 2, 1], "{page}");
}

#[test]
fn a_site_certificate_reads_and_writes_only_its_own() {
    let net = Net::new();
    let (berlin, stranger) = (net.cert("berlin"), net.cert("stranger"));
    let coord = net.start(Some(&net.network(&["berlin", "paris"], "1h")), "1h");
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
        assert!(
            stderr(&out).contains("404: not found"),
            "{cmd:?}: {}",
            stderr(&out)
        );
    }
    // A certificate of the CA that names no site gets no assignment.
    let out = run(&strs(&{
        let mut a = net.agent_args(&coord.url, "stranger", &stranger);
        a.push("--once".into());
        a
    }));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!net.mirror("stranger").exists());
    assert!(stderr(&out).contains("404: not found"), "{}", stderr(&out));
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
    // Through HTTPS by hand: berlin reads no page of the API, its own site's included
    // (the pages are the admins'), nor another site's; its own assignment it reads.
    for path in [
        "/api/v1/sites/berlin",
        "/api/v1/sites/paris",
        "/api/v1/trees/tree",
        "/api/v1/events",
        "/api/v1/status?site=berlin",
    ] {
        let (code, body) = https(&net, &coord, &berlin, "GET", path, "");
        assert_eq!(code, 404, "{path}: {body}");
    }
    assert_eq!(
        https(&net, &coord, &berlin, "GET", "/api/v1/assignment", "").0,
        200
    );
    // A malformed report is refused whole (400), naming what is wrong; nothing is stored.
    let (code, body) = https(
        &net,
        &coord,
        &berlin,
        "POST",
        "/api/v1/reports",
        "[{\"tree\": 5}]",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("reports:"), "{body}");
    let (_, page) = get(&coord.board, "/api/v1/sites/berlin");
    let page: serde_json::Value = serde_json::from_str(&page).expect("json");
    assert_eq!(page["history"].as_array().map(Vec::len), Some(1), "{page}");
}

/// One request to the coordinator's API as the holder of `who`: status and body.
fn https(
    net: &Net,
    coord: &Coord,
    who: &Pair,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let read = |p: &Path| std::fs::read(p).expect("pem");
    let tls = pulpdist_sync::tls_config(&pulpdist_sync::HttpOptions {
        ca_pem: Some(read(&net.ca_file)),
        client_cert_pem: Some((read(&who.cert), read(&who.key))),
        ..Default::default()
    })
    .expect("tls");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{path}", coord.url);
    let resp = match method {
        "POST" => agent.post(&url).send(body),
        _ => agent.get(&url).call(),
    };
    let mut resp = resp.expect("an answer");
    let code = resp.status().as_u16();
    (code, resp.body_mut().read_to_string().unwrap_or_default())
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
    let events = chromium(&["--dump-dom"], &format!("{}/events", coord.board));
    assert!(events.contains("<table id=\"events\">"), "{events}");
    let (_, tree) = get(&coord.board, "/api/v1/trees/tree");
    let tree: serde_json::Value = serde_json::from_str(&tree).expect("json");
    assert_eq!(tree["heads"][0]["version"], 1, "{tree}");
    // Its size: version 1 added every pack of the store, and has no delta.
    let packs: u64 = std::fs::read_dir(net.site.store().join("packs"))
        .expect("packs")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert_eq!(tree["heads"][0]["added_bytes"], packs, "{tree}");
    assert!(tree["heads"][0]["delta_bytes"].is_null(), "{tree}");
    assert_eq!(
        tree["heads"][0]["reached"].as_array().map(Vec::len),
        Some(2),
        "{tree}"
    );
    assert_eq!(get(&coord.board, "/site/rome").0, 404);
    assert_eq!(get(&coord.board, "/api/v1/sites/rome").0, 404);
    // `pulpdist status`: filters, and the table.
    let status = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["status".to_string()];
        a.extend(net.reach(&coord.url, &net.admin));
        a.extend(extra.iter().map(|x| x.to_string()));
        let rows = common::run_json(&strs(&a));
        let mut sites: Vec<String> = rows
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|r| r["site"].as_str().map(String::from))
            .collect();
        sites.sort();
        sites
    };
    assert_eq!(status(&[]), ["berlin", "paris"]);
    assert_eq!(status(&["--site", "paris"]), ["paris"]);
    assert_eq!(
        status(&["--tree", "tree", "--label", "region:eu"]),
        ["berlin", "paris"]
    );
    assert!(status(&["--label", "region:asia"]).is_empty());
    assert!(status(&["--tree", "other"]).is_empty());
    let mut a = vec!["status".to_string()];
    a.extend(net.reach(&coord.url, &net.admin));
    let out = run(&strs(&a));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("SITE") && lines[0].contains("VERSION"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("berlin") && lines[2].starts_with("paris"),
        "{table}"
    );
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
fn an_agent_whose_clock_is_two_hours_ahead_is_flagged_and_its_runs_keep_their_place() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    let text = net.network(&["berlin"], "1h") + "\n[alerts]\nclock_seconds = 600\n";
    let coord = net.start(Some(&text), "1s");
    // The agent under libfaketime: every clock it reads is two hours ahead.
    let out = Command::new("faketime")
        .args(["-f", "+2h", env!("CARGO_BIN_EXE_pulpdist")])
        .args(net.agent_args(&coord.url, "berlin", &berlin))
        .arg("--once")
        .output()
        .expect("faketime (./scripts/test installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    // Its sync worked, and the run is placed on the coordinator's clock, not two hours on.
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let (_, page) = get(&coord.board, "/api/v1/sites/berlin");
    let page: serde_json::Value = serde_json::from_str(&page).expect("json");
    let ran = page["history"][0]["ran"].as_i64().expect("ran");
    assert!((now() - 60..=now()).contains(&ran), "{page}");
    // The event names how far off it is.
    let mut event = serde_json::Value::Null;
    until("a clock event", Duration::from_secs(60), || {
        let (_, events) = get(&coord.board, "/api/v1/events");
        let events: serde_json::Value = serde_json::from_str(&events).expect("json");
        event = events
            .as_array()
            .and_then(|l| l.iter().find(|e| e["kind"] == "clock").cloned())
            .unwrap_or_default();
        !event.is_null()
    });
    let detail = event["detail"].as_str().unwrap_or("");
    let secs: u64 = detail
        .strip_prefix("its clock is ")
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{event}"));
    assert!(
        (7190..=7210).contains(&secs) && detail.contains("ahead"),
        "{event}"
    );
    assert_eq!(event["site"], "berlin");
    // Its clock set right: the event clears on its next delivery.
    net.agent_once(&coord.url, "berlin", &berlin);
    until("the clock event closed", Duration::from_secs(60), || {
        let (_, events) = get(&coord.board, "/api/v1/events");
        let events: serde_json::Value = serde_json::from_str(&events).expect("json");
        events.as_array().is_some_and(|l| {
            l.iter()
                .filter(|e| e["kind"] == "clock")
                .all(|e| e["closed"].is_i64())
        })
    });
}

#[test]
fn the_head_watcher_asks_with_the_entity_tag_and_a_store_answers_not_modified() {
    let net = Net::new();
    let (_serve, port) =
        common::servers::spawn_serve(&["--store", s(&net.site.store()), "--listen", "127.0.0.1:0"]);
    let store = format!("http://127.0.0.1:{port}");
    let text = net.network(&["berlin"], "1h").replace(
        &format!("stores = [\"{}\"]", s(&net.site.store())),
        &format!("stores = [\"{store}\"]"),
    );
    let coord = net.start(Some(&text), "1s");
    let heads = |code: u16| -> u64 {
        let (_, text) = get(&store, "/metrics");
        let series = format!(
            "pulpdist_http_requests_total{{kind=\"head\",method=\"GET\",code=\"{code}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0)
    };
    // Each watch period asks again: once whole, then "not modified".
    until(
        "three conditional head requests",
        Duration::from_secs(60),
        || heads(304) >= 3,
    );
    assert_eq!(heads(200), 1);
    let newest = || row(&net.status(&coord.url), "berlin")["newest"].clone();
    assert_eq!(newest(), 1);
    // A new version: fetched whole once, and recorded.
    pulpdist_testdata::evolve(&net.site.src(), 6, 1).expect("evolve");
    net.site.publish();
    until("version 2 seen", Duration::from_secs(60), || newest() == 2);
    assert_eq!(heads(200), 2);
    // The tree page gives its sizes: the packs it added and its delta from version 1.
    let (_, tree) = get(&coord.board, "/api/v1/trees/tree");
    let tree: serde_json::Value = serde_json::from_str(&tree).expect("json");
    let keys = pulpdist_format::TrustedKeys::from_text(
        &std::fs::read_to_string(net.site.trust()).expect("key"),
    )
    .expect("keys");
    let head = std::fs::read(net.site.store().join("heads/tree")).expect("head");
    let head = pulpdist_format::SignedHead::decode_and_verify(&head, &keys).expect("verify");
    let deltas: u64 = head
        .head()
        .deltas()
        .expect("deltas")
        .iter()
        .filter(|d| d.from_version == 1)
        .map(|d| d.size)
        .sum();
    assert!(deltas > 0);
    assert_eq!(tree["heads"][0]["delta_bytes"], deltas, "{tree}");
    assert!(
        tree["heads"][0]["added_bytes"].as_u64() > Some(deltas),
        "{tree}"
    );
}

#[test]
fn a_sync_waits_for_its_window_keeps_its_bandwidth_and_stops_partial_when_the_window_closes() {
    let net = Net::new();
    let (berlin, paris, tokyo) = (net.cert("berlin"), net.cert("paris"), net.cert("tokyo"));
    // 12 MB more, so that a first sync reads the store in several requests (a directory
    // store is read in windows of 4 MiB).
    std::fs::write(
        net.site.src().join("big.bin"),
        common::random_bytes(12 << 20, 5),
    )
    .expect("big file");
    net.site.publish();
    // berlin and paris may fetch from W:00 to W:59 UTC, W two hours after the real hour (so
    // the coordinator, on the real clock, sees them outside it); tokyo at any time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let w = (now.rem_euclid(86_400) / 3600 + 2) % 24;
    let window = format!("{w:02}:00-{:02}:00", (w + 1) % 24);
    let with = |bandwidth: &str| {
        net.network(&["berlin", "paris", "tokyo"], "1h")
            .replace(
                "labels = { region = \"eu\" }\ntrees",
                "sites = [\"berlin\", \"paris\"]\ntrees",
            )
            .replace(
                "schedule = \"1h\"\n",
                &format!("schedule = \"1h\"\nwindow = \"{window}\"\nbandwidth = \"{bandwidth}\"\n"),
            )
            + "\n[[assignment]]\nsites = [\"tokyo\"]\ntrees = [\"tree\"]\nschedule = \"1h\"\n"
            + "\n[alerts]\nbehind_versions = 1\nbehind_minutes = 1\n"
    };
    let coord = net.start(Some(&with("1MB")), "1s");
    let apply = |text: &str| {
        let f = net.site.p("network.toml");
        std::fs::write(&f, text).expect("network file");
        let mut a = vec!["network".to_string(), "apply".into(), s(&f).into()];
        a.extend(net.reach(&coord.url, &net.admin));
        let out = run(&strs(&a));
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // The agent under libfaketime, its clock at W:00 plus `secs` tomorrow, running on.
    let opens = now - now.rem_euclid(86_400) + 86_400 + w * 3600;
    let agent_at = |secs: i64, name: &str, who: &Pair| {
        let out = Command::new("faketime")
            .args(["-f", &format!("@{}", fake_date(opens + secs))])
            .arg(env!("CARGO_BIN_EXE_pulpdist"))
            .args(net.agent_args(&coord.url, name, who))
            .arg("--once")
            .env("TZ", "UTC")
            .output()
            .expect("faketime (./scripts/test installs it)");
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let history = || -> Vec<serde_json::Value> {
        let (_, page) = get(&coord.board, "/api/v1/sites/berlin");
        let page: serde_json::Value = serde_json::from_str(&page).expect("json");
        page["history"].as_array().cloned().unwrap_or_default()
    };
    // Six hours after it opened the window is shut: nothing is synced, nothing reported.
    agent_at(6 * 3600, "berlin", &berlin);
    assert!(!net.mirror("berlin").join("pool").exists());
    assert!(history().is_empty());
    // Ten seconds before it closes, at 1 MB/s: the first 4 MiB read goes at once, the
    // next two follow at their turns, and the fourth's turn (after 12.6 s) would come
    // after the close, so the sync stops there, reported partial; the mirror keeps what
    // it had (nothing).
    agent_at(3600 - 10, "berlin", &berlin);
    let h = history();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["outcome"], "partial", "{h:?}");
    assert!(
        h[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("window closed")),
        "{h:?}"
    );
    assert!(!net.mirror("berlin").join("pool").exists());
    // The next window, at a higher bandwidth: the sync ends where the last stopped, and
    // the mirror is whole.
    apply(&with("100MB"));
    agent_at(600, "berlin", &berlin);
    let h = history();
    assert_eq!(h[0]["outcome"], "completed", "{h:?}");
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let r = row(&net.status(&coord.url), "berlin").clone();
    assert_eq!(r["version"], 2, "{r}");
    // What the cut run fetched was kept (at least its first 4 MiB read: the first request
    // of a window always goes): this run fetched less than the tree's 12.6 MB.
    assert!(h[0]["bytes_fetched"].as_u64() < Some(10_000_000), "{h:?}");
    // The bandwidth holds: paris's whole first sync at 4 MB/s takes at least the time its
    // bytes take at that rate, but for the last request's (at most one 4 MiB read).
    apply(&with("4MB"));
    let started = Instant::now();
    agent_at(600, "paris", &paris);
    let took = started.elapsed();
    assert_same_tree(&net.site.src(), &net.mirror("paris"));
    let (_, page) = get(&coord.board, "/api/v1/sites/paris");
    let page: serde_json::Value = serde_json::from_str(&page).expect("json");
    let fetched = page["history"][0]["bytes_fetched"].as_u64().unwrap_or(0);
    assert!(fetched > 12_000_000, "{page}");
    let floor = (fetched - (4 << 20)) as f64 / 4e6;
    assert!(took.as_secs_f64() >= floor, "{fetched} B in {took:?}");
    // A new version, on the coordinator's real clock, outside the window: tokyo (no
    // window) is behind and flagged; berlin and paris are as far behind, but it is not
    // their window, so the same evaluation flags neither.
    net.agent_once(&coord.url, "tokyo", &tokyo);
    let behind = || -> Vec<(String, String)> {
        let (_, e) = get(&coord.board, "/api/v1/events");
        let e: serde_json::Value = serde_json::from_str(&e).expect("json");
        e.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "behind" && e["closed"].is_null())
            .map(|e| {
                (
                    e["site"].as_str().unwrap_or("").to_string(),
                    e["detail"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    until("tokyo current", Duration::from_secs(60), || {
        behind().iter().all(|(site, _)| site != "tokyo")
    });
    pulpdist_testdata::evolve(&net.site.src(), 12, 1).expect("evolve");
    net.site.publish();
    until(
        "tokyo flagged behind version 3",
        Duration::from_secs(60),
        || {
            behind().iter().any(|(site, detail)| {
                site == "tokyo" && detail.contains("holds version 2, newest is 3")
            })
        },
    );
    let flagged: Vec<String> = behind().into_iter().map(|(site, _)| site).collect();
    assert_eq!(flagged, ["tokyo"]);
    for site in ["berlin", "paris"] {
        assert_eq!(row(&net.status(&coord.url), site)["versions_behind"], 1);
    }
}

/// `faketime`'s absolute form of Unix time `t` (UTC): `YYYY-MM-DD hh:mm:ss`.
fn fake_date(t: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%d %H:%M:%S"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_webhook_that_hangs_delays_nothing_and_a_restart_loses_no_delivery() {
    use std::io::{Read, Write as _};
    let net = Net::new();
    let berlin = net.cert("berlin");
    // A webhook endpoint that holds every request without answering until the test says
    // it may answer; every request's body goes to the test.
    let hook = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook_url = format!("http://{}/hook", hook.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let answer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let may_answer = answer.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hook.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let Ok(n) = c.read(&mut buf) else { break None };
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((_, body)) = text.split_once("\r\n\r\n") {
                    if body.ends_with('}') {
                        break Some(body.to_string());
                    }
                }
                if n == 0 {
                    break None;
                }
            };
            let Some(body) = body else { continue };
            let _ = tx.send(body);
            if !may_answer.load(std::sync::atomic::Ordering::SeqCst) {
                held.push(c); // never answered
                continue;
            }
            let _ =
                c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    // No webhook until berlin holds version 1 and no event is open.
    let text = net.network(&["berlin"], "1h") + "\n[alerts]\nbehind_versions = 1\n";
    let coord = net.start(Some(&text), "1s");
    net.agent_once(&coord.url, "berlin", &berlin);
    until("no event open", Duration::from_secs(60), || {
        let (_, events) = get(&coord.board, "/api/v1/events");
        row(&net.status(&coord.url), "berlin")["version"] == 1
            && !events.contains("\"closed\":null")
    });
    let f = net.site.p("network.toml");
    std::fs::write(&f, format!("{text}webhook = \"{hook_url}\"\n")).expect("network file");
    let mut a = vec!["network".to_string(), "apply".into(), s(&f).into()];
    a.extend(net.reach(&coord.url, &net.admin));
    let out = run(&strs(&a));
    assert!(out.status.success(), "{}", stderr(&out));
    pulpdist_testdata::evolve(&net.site.src(), 9, 1).expect("evolve");
    net.site.publish();
    let next = || -> serde_json::Value {
        let body = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a webhook call within 60 s");
        serde_json::from_str(&body).expect("json")
    };
    // The event's call hangs (for its 10 s); the coordinator goes on answering, and its
    // metrics count the delivery as waiting.
    let first = next();
    assert_eq!(
        (first["kind"].as_str(), first["state"].as_str()),
        (Some("behind"), Some("open"))
    );
    assert_eq!(row(&net.status(&coord.url), "berlin")["versions_behind"], 1);
    assert!(get(&coord.board, "/metrics")
        .1
        .contains("pulpdist_webhook_queued 1"));
    // The coordinator is killed meanwhile (its own retries, if any came, are set aside
    // unanswered), and started again on its database: the call is made again (same
    // event, same state), answered now; then berlin syncs, and the event's resolution
    // follows it.
    drop(coord);
    while rx.try_recv().is_ok() {}
    answer.store(true, std::sync::atomic::Ordering::SeqCst);
    let coord = net.start(None, "1s");
    let again = next();
    assert_eq!(
        (&again["id"], &again["state"]),
        (&first["id"], &first["state"])
    );
    net.agent_once(&coord.url, "berlin", &berlin);
    let resolved = next();
    assert_eq!(
        (&resolved["id"], resolved["state"].as_str()),
        (&first["id"], Some("resolved"))
    );
    until("the queue emptied", Duration::from_secs(30), || {
        get(&coord.board, "/metrics")
            .1
            .contains("pulpdist_webhook_queued 0")
    });
}

#[test]
fn failures_in_a_row_and_a_certificate_about_to_expire_raise_events_that_clear() {
    let net = Net::new();
    // berlin's certificate expires in two days.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let berlin = net
        .ca
        .issue_until(&net.site.p("pki"), "berlin", &["berlin"], Some(soon));
    let text = net.network(&["berlin"], "1h") + "\n[alerts]\nfailures = 2\ncertificate_days = 14\n";
    let coord = net.start(Some(&text), "1s");
    let events = || -> Vec<serde_json::Value> {
        let (_, e) = get(&coord.board, "/api/v1/events");
        serde_json::from_str::<serde_json::Value>(&e)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let open = |kind: &str| {
        events()
            .into_iter()
            .find(|e| e["kind"] == kind && e["closed"].is_null())
    };
    net.agent_once(&coord.url, "berlin", &berlin);
    until("a certificate event", Duration::from_secs(60), || {
        open("certificate").is_some()
    });
    let cert = open("certificate").expect("event");
    assert_eq!(
        (cert["site"].as_str(), cert["tree"].as_str()),
        (Some("berlin"), Some(""))
    );
    assert!(
        cert["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expires in 1 days") || d.contains("expires in 2 days")),
        "{cert}"
    );
    // The store goes away: two runs in a row fail, and that is an event naming the error.
    let store = net.site.store();
    let aside = store.with_extension("aside");
    std::fs::rename(&store, &aside).expect("rename");
    net.agent_once(&coord.url, "berlin", &berlin);
    net.agent_once(&coord.url, "berlin", &berlin);
    until("a failing event", Duration::from_secs(60), || {
        open("failing").is_some()
    });
    let failing = open("failing").expect("event");
    assert!(
        failing["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("2 runs in a row failed") && d.contains(s(&store))),
        "{failing}"
    );
    // Back: the next run ends well and the event closes; the certificate's stays open.
    std::fs::rename(&aside, &store).expect("rename back");
    net.agent_once(&coord.url, "berlin", &berlin);
    until("the failing event closed", Duration::from_secs(60), || {
        open("failing").is_none()
    });
    assert!(open("certificate").is_some());
    let (_, metrics) = get(&coord.board, "/metrics");
    assert!(
        metrics.contains("pulpdist_events_open{kind=\"certificate\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pulpdist_events_open{kind=\"failing\"} 0"),
        "{metrics}"
    );
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
    let out = net.agent_once(&coord.url, "berlin", &berlin);
    assert!(
        !queue.exists(),
        "the queue was not emptied: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert!(stderr(&reach(&pair("berlin"))).contains("404: not found"));
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
        if !stderr(&out).contains("404: not found") {
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
    assert!(stderr(&out).contains("404: not found"), "{}", stderr(&out));
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
    // Until another key comes, the old one is not enrolled again by using it.
    let mut old = net.agent_args(&coord.url, "berlin", &berlin);
    old.push("--once".into());
    assert!(stderr(&run(&strs(&old))).contains("404: not found"));
    let out = run(&strs(&a));
    assert!(!stderr(&out).contains("404: not found"), "{}", stderr(&out));
    assert_same_tree(&net.site.src(), &net.mirror("berlin2"));
    assert!(stderr(&run(&strs(&old))).contains("404: not found"));
}

#[test]
fn a_second_coordinator_on_one_sqlite_file_is_refused_and_the_first_keeps_serving() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    // A SQLite file of its own (the PostgreSQL pass included: this is about SQLite).
    let db = net.site.p("one.db");
    let tls = [&net.coord_pair.cert, &net.coord_pair.key, &net.ca_file];
    let text = net.network(&["berlin"], "1h");
    let first = net.start_with(Some(&text), "1h", tls, &["--db", s(&db)]);
    let mut second = bin()
        .args(["coordinator", "--listen", "127.0.0.1:0", "--db", s(&db)])
        .args(["--tls-cert", s(&net.coord_pair.cert), "--tls-key"])
        .args([s(&net.coord_pair.key), "--client-ca", s(&net.ca_file)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second coordinator");
    // It must stop by itself (a second coordinator that serves fails the test).
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = second.kill();
            panic!("a second coordinator on one SQLite file kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(
        err.contains("another coordinator has this database open")
            && err.contains(&format!("{}.lock", s(&db))),
        "{err}"
    );
    net.agent_once(&first.url, "berlin", &berlin);
    assert_eq!(row(&net.status(&first.url), "berlin")["version"], 1);
    // Once the first is gone, the file is free again.
    drop(first);
    let again = net.start_with(None, "1h", tls, &["--db", s(&db)]);
    assert_eq!(row(&net.status(&again.url), "berlin")["version"], 1);
}

#[test]
fn postgresql_going_away_fails_no_sync_loses_no_report_and_the_coordinator_leads_again() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    // A PostgreSQL server of this test's own (in both passes: this is about PostgreSQL).
    let mut pg = common::servers::Cluster::new();
    let db = pg.url("coord");
    let tls = [&net.coord_pair.cert, &net.coord_pair.key, &net.ca_file];
    let text = net.network(&["berlin"], "1h");
    let coord = net.start_with(Some(&text), "1s", tls, &["--db", &db]);
    let metric = |name: &str| -> Option<i64> {
        let (status, text) = get(&coord.board, "/metrics");
        (status == 200)
            .then(|| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            })
            .flatten()
    };
    net.agent_once(&coord.url, "berlin", &berlin);
    until(
        "leading, version 1 reported",
        Duration::from_secs(60),
        || {
            metric("pulpdist_coordinator_leading") == Some(1)
                && row(&net.status(&coord.url), "berlin")["version"] == 1
        },
    );
    // The database goes away. A new version is published: the agent syncs it (its poll is
    // answered from the coordinator's memory) and keeps its report; the coordinator
    // answers what needs the database with 503, and keeps running.
    pg.stop();
    pulpdist_testdata::evolve(&net.site.src(), 8, 1).expect("evolve");
    net.site.publish();
    let out = net.agent_once(&coord.url, "berlin", &berlin);
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let queue = net.site.p("berlin/agent/reports.jsonl");
    assert!(queue.exists(), "the report was not kept: {}", stderr(&out));
    assert!(!net.site.p("berlin/agent/rejected.jsonl").exists());
    let (status, body) = get(&coord.board, "/api/v1/status");
    assert_eq!(status, 503, "{body}");
    // Back: the report arrives, and the coordinator leads again: its head watcher records
    // the version published while the database was away.
    pg.start();
    until(
        "the queued report delivered",
        Duration::from_secs(60),
        || {
            net.agent_once(&coord.url, "berlin", &berlin);
            !queue.exists()
        },
    );
    until(
        "leading again, version 2 seen",
        Duration::from_secs(60),
        || {
            let r = row(&net.status(&coord.url), "berlin").clone();
            metric("pulpdist_coordinator_leading") == Some(1)
                && r["version"] == 2
                && r["newest"] == 2
                && r["versions_behind"] == 0
        },
    );
    assert!(!net.site.p("berlin/agent/rejected.jsonl").exists());
}

#[test]
fn one_address_holding_connections_in_their_handshake_takes_64_slots_and_no_agents() {
    use std::io::Read;
    let net = Net::new();
    let berlin = net.cert("berlin");
    let coord = net.start(Some(&net.network(&["berlin"], "1h")), "1h");
    let port: u16 = coord
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    // 200 connections from 127.0.0.2 that never start their handshake.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut held: Vec<std::net::TcpStream> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..200 {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind("127.0.0.2:0".parse().expect("addr"))
                .expect("bind 127.0.0.2");
            let c = sock
                .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
                .await
                .expect("connect");
            out.push(c.into_std().expect("std"));
        }
        out
    });
    // The coordinator closed all but 64 of them at once; those 64 wait for a handshake
    // (for 30 s, its limit).
    let mut open = 0;
    for c in &mut held {
        c.set_nonblocking(false).expect("blocking");
        c.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(0) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => {}
            Err(_) => open += 1,
            Ok(_) => panic!("the coordinator spoke first"),
        }
    }
    assert_eq!(open, 64);
    // An agent from another address is served while they are held.
    net.agent_once(&coord.url, "berlin", &berlin);
    assert_eq!(row(&net.status(&coord.url), "berlin")["version"], 1);
    drop(held);
}

#[test]
fn a_database_locked_by_another_process_loses_no_report_and_passes() {
    let net = Net::new();
    let berlin = net.cert("berlin");
    // A SQLite file of its own (the PostgreSQL pass included: this is about SQLite).
    let db = net.site.p("locked.db");
    let tls = [&net.coord_pair.cert, &net.coord_pair.key, &net.ca_file];
    let text = net.network(&["berlin"], "1h");
    let coord = net.start_with(Some(&text), "1h", tls, &["--db", s(&db)]);
    net.agent_once(&coord.url, "berlin", &berlin);
    // Another process (a backup, an operator's shell) holds the database's write lock.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut holder = rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", s(&db)))
            .await
            .expect("connect");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut c)
            .await
            .expect("lock");
        c
    });
    // The agent syncs; its report waits out the coordinator's busy timeout, is refused
    // with 503, and stays queued; the status still reads.
    pulpdist_testdata::evolve(&net.site.src(), 4, 1).expect("evolve");
    net.site.publish();
    let out = net.agent_once(&coord.url, "berlin", &berlin);
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
    let queue = net.site.p("berlin/agent/reports.jsonl");
    assert!(queue.exists(), "the report was not kept");
    assert_eq!(row(&net.status(&coord.url), "berlin")["version"], 1);
    // The lock released: the report arrives.
    rt.block_on(async {
        sqlx::query("ROLLBACK")
            .execute(&mut holder)
            .await
            .expect("unlock")
    });
    net.agent_once(&coord.url, "berlin", &berlin);
    assert!(!queue.exists());
    assert_eq!(row(&net.status(&coord.url), "berlin")["version"], 2);
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

#[test]
fn two_coordinators_on_postgresql_share_one_network_and_the_second_takes_over_when_the_first_dies()
{
    let net = Net::new();
    let db = common::servers::postgres().url(&fresh_database());
    let tls = [&net.coord_pair.cert, &net.coord_pair.key, &net.ca_file];
    let berlin = net.cert("berlin");
    let text = net.network(&["berlin"], "1h");
    let mut first = net.start_with(Some(&text), "1s", tls, &["--db", &db]);
    let newest = |c: &Coord| row(&net.status(&c.url), "berlin")["newest"].as_u64();
    let wait = Duration::from_secs(30);
    // The first leads: its head watcher verified and recorded version 1.
    until("the first coordinator records version 1", wait, || {
        newest(&first) == Some(1)
    });
    // The second is given another network file: it holds the one in the database (the
    // first's), and stands by.
    let other = net.network(&["berlin"], "2h");
    let second = net.start_with(Some(&other), "1s", tls, &["--db", &db]);
    let log = || std::fs::read_to_string(net.site.p("coordinator.log")).unwrap_or_default();
    until("the second coordinator stands by", wait, || {
        log().contains("this one stands by")
    });
    assert_eq!(newest(&second), Some(1));
    let mut export = vec!["network".to_string(), "export".into()];
    export.extend(net.reach(&second.url, &net.admin));
    let held = run(&strs(&export));
    assert_eq!(String::from_utf8_lossy(&held.stdout), text);
    // Both alive: a push through the second answers a long-poll held by the first.
    let site = net.client(&first, &berlin);
    let before = current(&site);
    std::thread::scope(|scope| {
        let poll = scope.spawn(|| site.assignment(Some(before.revision), Duration::from_secs(60)));
        until("the long-poll held", wait, || long_polls(&first) == 1);
        let mut push = vec![
            "network".to_string(),
            "push".into(),
            "--tree".into(),
            "tree".into(),
        ];
        push.extend(net.reach(&second.url, &net.admin));
        assert!(run(&strs(&push)).status.success());
        let got = poll
            .join()
            .expect("poll")
            .expect("answer")
            .expect("a change");
        assert_eq!(got.trees[0].trigger, before.trees[0].trigger + 1);
    });
    let leading = |c: &Coord| {
        get(&c.board, "/metrics")
            .1
            .contains("pulpdist_coordinator_leading 1")
    };
    let (a, b) = (
        get(&first.board, "/metrics"),
        get(&second.board, "/metrics"),
    );
    assert!(
        a.1.contains("pulpdist_coordinator_leading 1")
            && b.1.contains("pulpdist_coordinator_leading 0"),
        "{a:?} {b:?}"
    );
    // An agent that knows both syncs version 1, through the first.
    let mut args = net.agent_args(&first.url, "berlin", &berlin);
    args.extend([
        "--coordinator".into(),
        second.url.clone(),
        "--poll".into(),
        "30s".into(),
    ]);
    let mut agent = bin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let version = |n: u64| row(&net.status(&second.url), "berlin")["version"].as_u64() == Some(n);
    until(
        "version 1 synced and reported",
        Duration::from_secs(60),
        || version(1),
    );
    // The first dies (its session, and the lock with it, end with its connection); a
    // version is published that only the second can see.
    let _ = first.child.kill();
    let _ = first.child.wait();
    pulpdist_testdata::evolve(&net.site.src(), 5, 1).expect("evolve");
    net.site.publish();
    until("the second coordinator records version 2", wait, || {
        newest(&second) == Some(2)
    });
    assert!(leading(&second), "{}", log());
    // An admin command that names both reaches the second.
    let mut status = vec!["status".to_string()];
    status.extend(net.reach(&first.url, &net.admin));
    status.extend(["--coordinator".into(), second.url.clone()]);
    let rows = common::run_json(&strs(&status));
    assert_eq!(row(&rows, "berlin")["newest"], 2);
    // The agent moved to the second, which pushed it version 2.
    until(
        "version 2 synced through the second",
        Duration::from_secs(60),
        || version(2),
    );
    assert_same_tree(&net.site.src(), &net.mirror("berlin"));
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn a_push_answers_the_long_polls_of_the_sites_that_carry_the_tree_and_no_others() {
    let net = Net::new();
    // Two trees (one store); berlin carries one, paris the other.
    let mut text = net.network(&["berlin", "paris"], "1h");
    text = text.replace(
        "[[assignment]]\nlabels = { region = \"eu\" }\ntrees = [\"tree\"]",
        "[[assignment]]\nsites = [\"berlin\"]\ntrees = [\"tree\"]",
    );
    let key = std::fs::read_to_string(net.site.trust()).expect("key");
    text.push_str(&format!(
        "\n[trees.other]\nstores = [\"{}\"]\ntrust = [\"{}\"]\n\n[[assignment]]\nsites = [\"paris\"]\ntrees = [\"other\"]\nschedule = \"1h\"\n",
        s(&net.site.store()),
        key.trim()
    ));
    let coord = net.start(Some(&text), "1h");
    let (berlin, paris) = (
        net.client(&coord, &net.cert("berlin")),
        net.client(&coord, &net.cert("paris")),
    );
    // The watcher's first round records version 1 and pushes it: the baselines below are
    // taken once that push is in berlin's assignment (on PostgreSQL a coordinator takes up
    // a push within a second of recording it: a baseline taken between the two was
    // answered at once, and the poll never held).
    until(
        "version 1 recorded and pushed",
        Duration::from_secs(30),
        || {
            row(&net.status(&coord.url), "berlin")["newest"] == 1
                && current(&berlin).trees[0].trigger >= 1
        },
    );
    let (b0, p0) = (current(&berlin), current(&paris));
    let polls = || long_polls(&coord);
    std::thread::scope(|scope| {
        let b = scope.spawn(|| berlin.assignment(Some(b0.revision), Duration::from_secs(60)));
        let p = scope.spawn(|| paris.assignment(Some(p0.revision), Duration::from_secs(60)));
        until("both long-polls held", Duration::from_secs(30), || {
            polls() == 2
        });
        let push = |tree: &str| {
            let mut a = vec![
                "network".to_string(),
                "push".into(),
                "--tree".into(),
                tree.into(),
            ];
            a.extend(net.reach(&coord.url, &net.admin));
            run(&strs(&a));
        };
        push("other");
        let p = p.join().expect("paris").expect("answer").expect("a change");
        assert_eq!(p.trees[0].trigger, p0.trees[0].trigger + 1);
        // Berlin's poll is still held: the push was not for its tree.
        until("paris's poll answered", Duration::from_secs(30), || {
            polls() == 1
        });
        push("tree");
        let b = b
            .join()
            .expect("berlin")
            .expect("answer")
            .expect("a change");
        assert_eq!(b.trees[0].tree, "tree");
        assert_eq!(b.trees[0].trigger, b0.trees[0].trigger + 1);
    });
}

#[test]
fn a_site_that_floods_the_coordinator_is_rationed_and_the_dashboard_answers_only_its_names() {
    let net = Net::new();
    let coord = net.start(Some(&net.network(&["berlin", "paris", "rome"], "1h")), "1h");
    let (berlin, paris, rome) = (net.cert("berlin"), net.cert("paris"), net.cert("rome"));
    // Berlin asks for its assignment as fast as it is answered: after its burst (120,
    // then 10 a second), 429.
    let c = net.client(&coord, &berlin);
    let answers: Vec<Result<_, String>> = (0..400)
        .map(|_| {
            c.assignment(None, Duration::ZERO)
                .map_err(|e| e.to_string())
        })
        .collect();
    assert!(answers[..100].iter().all(Result::is_ok), "{:?}", answers[0]);
    let limited = answers
        .iter()
        .filter(|a| matches!(a, Err(e) if e.contains("429")))
        .count();
    assert!(limited >= 100, "{limited} of 400 requests refused");
    // Rome sends reports as fast as they are taken: after its burst of 20,000, 429.
    let c = net.client(&coord, &rome);
    let batch: Vec<pulpdist_network::Report> = (0..1000)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "id": format!("r{i}"), "tree": "tree", "outcome": "up_to_date", "started": 1,
                "from_version": 1, "to_version": 1, "root": null, "head_store": null,
                "bytes_fetched": 0, "bytes_reused": 0, "requests": 1, "duration_ms": 1,
                "rsync_files": 0, "error": null, "agent_version": "test"
            }))
            .expect("report")
        })
        .collect();
    let mut sent = 0;
    let refused = loop {
        let mut b = batch.clone();
        for r in &mut b {
            r.id = format!("{sent}-{}", r.id);
        }
        match c.report(&b) {
            Ok(()) => sent += 1,
            Err(e) => break e.to_string(),
        }
        assert!(sent <= 25, "25,000 reports taken at once");
    };
    assert!(refused.contains("429"), "{refused}");
    assert!((20..=21).contains(&sent), "{sent} batches of 1,000 taken");
    // Paris is served as before.
    current(&net.client(&coord, &paris));
    // Paris may hold four long-polls at once; a fifth is refused. (After the watcher's
    // first round pushed version 1: the polls' baseline is not moved by it.)
    until("version 1 recorded", Duration::from_secs(30), || {
        row(&net.status(&coord.url), "paris")["newest"] == 1
    });
    let base = current(&net.client(&coord, &paris));
    let polls: Vec<_> = (0..4)
        .map(|_| {
            let c = net.client(&coord, &paris);
            let g = base.revision;
            std::thread::spawn(move || c.assignment(Some(g), Duration::from_secs(60)).is_ok())
        })
        .collect();
    until("four long-polls held", Duration::from_secs(30), || {
        long_polls(&coord) == 4
    });
    let fifth = net
        .client(&coord, &paris)
        .assignment(Some(base.revision), Duration::from_secs(60));
    assert!(
        matches!(&fifth, Err(e) if e.to_string().contains("429")),
        "{fifth:?}"
    );
    // The dashboard answers for an IP address or localhost, not for another name (a page
    // that points its own name at this address).
    let port = coord.board.rsplit(':').next().unwrap_or("").to_string();
    let ask = |host: &str| {
        use std::io::{Read, Write};
        let mut t = std::net::TcpStream::connect(coord.board.trim_start_matches("http://"))
            .expect("connect");
        write!(
            t,
            "GET /events HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        t.read_to_string(&mut out).expect("read");
        out.split(' ').nth(1).unwrap_or("").to_string()
    };
    assert_eq!(ask(&format!("rebound.example:{port}")), "421");
    assert_eq!(ask(&format!("localhost:{port}")), "200");
    assert_eq!(ask(&format!("127.0.0.1:{port}")), "200");
    drop(coord);
    for p in polls {
        let _ = p.join();
    }
}
