//! Load on the coordinator (issue 19): N simulated sites × T trees, each site reporting
//! on every tree once a round, over its own HTTPS connection and client certificate; then
//! L idle long-polls held open. Prints report ingestion latency (p50, p99), the
//! coordinator's CPU seconds and peak memory, the memory with the long-polls held, and how
//! long Chromium takes to render the matrix page of N sites.
//!
//!   coord-load PULPDIST_BINARY [SITES] [TREES] [ROUNDS] [LONG_POLLS]
//!
//! Needs `chromium` for the page (skipped with a note if it is not installed).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulpdist_benchmarks::coord::{client, pki, usage};
use pulpdist_network::{Outcome, Report};

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let binary = std::env::args()
        .nth(1)
        .expect("usage: coord-load PULPDIST [SITES] [TREES] [ROUNDS] [LONG_POLLS]");
    let (sites, trees, rounds, polls) = (arg(2, 1000), arg(3, 10), arg(4, 3), arg(5, 1000));
    let work = std::env::temp_dir().join(format!("coord-load-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let names: Vec<String> = (0..sites).map(|i| format!("site{i:05}")).collect();
    let mut all = names.clone();
    all.extend(["ops".to_string(), "localhost".to_string()]);
    let ca = pki(&work, &all);
    // The network: every site carries every tree (the stores are never read: no watcher).
    let key = "pulpdist-ed25519 e19b8eb98aaf7fd83c550027737ae9528f6bba78c3865dec8e47b30e17af8ccd";
    let mut net = "admins = [\"cn:ops\"]\n".to_string();
    for t in 0..trees {
        net.push_str(&format!(
            "[trees.tree{t:02}]\nstores = [\"/nonexistent\"]\ntrust = [\"{key}\"]\n"
        ));
    }
    for (i, n) in names.iter().enumerate() {
        net.push_str(&format!(
            "[sites.{n}]\nidentity = \"cn:{n}\"\nlabels = {{ region = \"r{}\" }}\n",
            i % 7
        ));
    }
    net.push_str(&format!(
        "[[assignment]]\nsites = [{}]\ntrees = [{}]\nschedule = \"1h\"\n",
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", "),
        (0..trees)
            .map(|t| format!("\"tree{t:02}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    std::fs::write(work.join("network.toml"), net).expect("network");
    let mut coord = Command::new(&binary)
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--watch",
            "1h",
            "--dashboard",
            "127.0.0.1:0",
        ])
        .arg("--db")
        .arg(work.join("coord.db"))
        .arg("--network")
        .arg(work.join("network.toml"))
        .arg("--tls-cert")
        .arg(work.join("localhost.pem"))
        .arg("--tls-key")
        .arg(work.join("localhost.key"))
        .arg("--client-ca")
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator");
    let pid = coord.id();
    let mut out = BufReader::new(coord.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("line");
    let port = line.trim().rsplit(':').next().unwrap_or("").to_string();
    let url = format!("https://localhost:{port}");
    line.clear();
    out.read_line(&mut line).expect("line");
    let board = line.trim().trim_start_matches("dashboard on ").to_string();
    // Reports: every site, every tree, `rounds` times, from 16 threads.
    let threads = 16;
    let started = Instant::now();
    let (cpu0, _) = usage(pid);
    let mut handles = Vec::new();
    for th in 0..threads {
        let (names, url, work) = (names.clone(), url.clone(), work.clone());
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mine: Vec<&String> = names.iter().skip(th).step_by(threads).collect();
            let clients: Vec<_> = mine.iter().map(|n| client(&url, &work, n)).collect();
            for round in 0..rounds {
                for c in &clients {
                    let reports: Vec<Report> = (0..trees)
                        .map(|t| Report {
                            id: format!("{th}-{round}-{t}-{}", lat.len()),
                            tree: format!("tree{t:02}"),
                            outcome: Outcome::Completed,
                            started: 1,
                            from_version: Some(round as u64),
                            to_version: Some(round as u64 + 1),
                            root: Some("00".repeat(32)),
                            head_store: Some("https://origin.example".into()),
                            bytes_fetched: 1_000_000,
                            bytes_reused: 5_000_000,
                            requests: 12,
                            duration_ms: 2_000,
                            rsync_files: 0,
                            error: None,
                            agent_version: "load".into(),
                        })
                        .collect();
                    let t0 = Instant::now();
                    c.report(&reports).expect("report");
                    lat.push(t0.elapsed());
                }
            }
            lat
        }));
    }
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let wall = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let (cpu1, rss) = usage(pid);
    println!(
        "{sites} sites x {trees} trees x {rounds} rounds: {} report requests ({} reports) in {:.1} s; latency p50 {:.1} ms, p99 {:.1} ms; coordinator CPU {:.1} s, peak RSS {:.0} MB",
        lat.len(),
        lat.len() * trees,
        wall.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        cpu1 - cpu0,
        rss
    );
    // The matrix page of every site, in Chromium; an empty page first, for the browser's
    // own start-up, which is taken off.
    let chromium = |url: &str| {
        let t0 = Instant::now();
        let o = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
            .arg(format!(
                "--user-data-dir={}",
                work.join("chromium").display()
            ))
            .arg(url)
            .output();
        (o, t0.elapsed().as_secs_f64())
    };
    let (_, blank) = chromium("about:blank");
    let (page, took) = chromium(&format!("{board}/"));
    match page {
        Ok(o) if o.status.success() => println!(
            "matrix page of {sites} sites x {trees} trees: {} kB of DOM in {:.2} s in headless Chromium ({:.2} s with the browser's start, {:.2} s for about:blank)",
            o.stdout.len() / 1024,
            (took - blank).max(0.0),
            took,
            blank
        ),
        _ => println!("matrix page: chromium not available"),
    }
    // Idle long-polls, each over its own connection (more polls than sites: sites hold
    // several), until the coordinator counts them all held.
    let before = usage(pid).1;
    let mut pollers = Vec::new();
    let t0 = Instant::now();
    for name in names.iter().cycle().take(polls) {
        let (url, work, n) = (url.clone(), work.clone(), name.clone());
        pollers.push(
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || {
                    let c = client(&url, &work, &n);
                    // As an agent does, a connection refused (past the coordinator's
                    // handshakes from one address) is tried again a little later.
                    let mut g = None;
                    for _ in 0..200 {
                        if let Ok(Some(a)) = c.assignment(None, Duration::ZERO) {
                            g = Some(a.revision);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let _ = c.assignment(g, Duration::from_secs(300));
                })
                .expect("thread"),
        );
    }
    let mut held_now = 0.0;
    while t0.elapsed() < Duration::from_secs(280) {
        held_now = metric(&board, "pulpdist_coordinator_long_polls").unwrap_or(0.0);
        if held_now as usize >= polls {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (cpu, held) = usage(pid);
    println!(
        "{held_now} idle long-polls held (all in {:.1} s): coordinator peak RSS {held:.0} MB (before them {before:.0} MB), CPU so far {cpu:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The coordinator answers them all when it stops.
    let _ = coord.kill();
    let _ = coord.wait();
    for p in pollers {
        let _ = p.join();
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// A value from the coordinator's `/metrics` (plain HTTP on the dashboard listener).
fn metric(board: &str, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(board.trim_start_matches("http://")).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
