//! `pulpdist serve` as an HTTP origin, seen from the wire; and sync over HTTP when the
//! network or the origin misbehaves (cut connections, 503s, ranges ignored).

use crate::common;

use std::fs;

use common::http::{Conn, Fault, Proxy};
use common::servers::Builtin;
use common::{assert_same_tree, run_json, s, Site};

fn published(seed: u64, scale: usize) -> Site {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), seed, scale).expect("generate");
    site.publish();
    site
}

fn sync_via(site: &Site, url: &str, extra: &[&str]) -> serde_json::Value {
    let key = format!("{}.pub", s(&site.key()));
    let mut a = vec!["sync", "--store", url, "--tree", "tree", "--trust", &key];
    a.extend_from_slice(extra);
    let mirror = site.mirror();
    a.push(s(&mirror));
    run_json(&a)
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no '{k}' in {v}"))
}

#[test]
fn http_semantics_on_one_keep_alive_connection() {
    let site = published(31, 2);
    let mut server = Builtin::start(&site.store());
    let host = server.url.trim_start_matches("http://").to_string();
    let mut c = Conn::open(&host);

    // The head: short-lived in caches, with a strong ETag that makes a no-op a 304.
    let head = fs::read(site.store().join("heads/tree")).expect("head file");
    let r = c.send("GET", "/heads/tree", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, head);
    assert_eq!(r.header("cache-control"), Some("public, max-age=10"));
    let etag = r.header("etag").expect("etag").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let r = c.send("GET", "/heads/tree", &[("If-None-Match", &etag)]);
    assert_eq!((r.status, r.body.len()), (304, 0));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = c.send("GET", "/heads/tree", &[("If-None-Match", "\"other\"")]);
    assert_eq!(r.status, 200);

    // A pack: immutable, ranges single and multiple, 416 past the end, HEAD without a body.
    let pack = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let bytes = fs::read(&pack).expect("pack");
    let len = bytes.len();
    let path = format!(
        "/packs/{}",
        pack.file_name().expect("name").to_string_lossy()
    );
    let r = c.send("HEAD", &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let r = c.send("GET", &path, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{len}").as_str())
    );
    assert_eq!(r.body, &bytes[100..200]);
    let r = c.send("GET", &path, &[("Range", "bytes=-10")]);
    assert_eq!(r.body, &bytes[len - 10..]);
    let r = c.send("GET", &path, &[("Range", "bytes=0-9,1000-1009")]);
    assert_eq!(r.status, 206);
    let ct = r.header("content-type").expect("content type");
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart");
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(body.matches(&format!("--{boundary}")).count(), 3, "{body}");
    assert!(body.contains(&format!("Content-Range: bytes 0-9/{len}")));
    assert!(body.contains(&format!("Content-Range: bytes 1000-1009/{len}")));
    let r = c.send("GET", &path, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    let r = c.send(
        "GET",
        &path,
        &[("Range", "bytes=0-3"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(
        (r.status, r.body.len()),
        (200, len),
        "If-Range mismatch sends all"
    );
    let r = c.send("GET", &path, &[]);
    assert_eq!(r.body, bytes);

    // Nothing outside heads/ and packs/, however the path is spelled.
    for bad in [
        "/heads/../packs",
        "/heads/..%2f..%2fetc%2fpasswd",
        "/../../etc/passwd",
        "/locks/tree.lock",
        "/tmp/",
        "/heads/.tree",
        "/packs/",
        "/",
        "//etc/passwd",
    ] {
        let r = c.send("GET", bad, &[]);
        assert_eq!(r.status, 404, "{bad}");
        assert!(!r.body.starts_with(b"root:"), "{bad}");
    }
    let r = c.send("POST", "/heads/tree", &[("Content-Length", "0")]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // Prometheus text: requests by kind and status, bytes, in flight (this request).
    let r = c.send("GET", "/metrics", &[]);
    let m = String::from_utf8_lossy(&r.body);
    for want in [
        "pulpdist_http_requests_total{kind=\"head\",method=\"GET\",code=\"304\"} 1",
        "pulpdist_http_requests_total{kind=\"pack\",method=\"GET\",code=\"206\"} 3",
        "pulpdist_http_requests_total{kind=\"pack\",method=\"GET\",code=\"416\"} 1",
        "pulpdist_http_requests_total{kind=\"other\",method=\"GET\",code=\"404\"} 9",
        "pulpdist_http_requests_in_flight 1",
        "pulpdist_http_connections_total 1",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }

    // SIGTERM: a clean exit.
    let status = server.proc.terminate().expect("exited on SIGTERM");
    assert!(status.success(), "{status}");
}

#[test]
fn cut_connections_are_resumed_not_refetched() {
    let site = published(32, 6);
    let server = Builtin::start(&site.store());
    let up = server.url.trim_start_matches("http://").to_string();
    // The first three connections die after 300 KB each.
    let proxy = Proxy::start(&up, Fault::CutAfter(300_000), 3);
    let r = sync_via(&site, &proxy.url, &["--retries", "8"]);
    assert_same_tree(&site.src(), &site.mirror());
    assert!(proxy.faults_done.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(num(&r, "retries") >= 1, "{r}");
    // Resumed from the last byte received: the bytes add up to one clean sync.
    let mirror2 = site.p("clean/tree");
    let key = format!("{}.pub", s(&site.key()));
    let clean = Proxy::start(&up, Fault::CutAfter(0), 0);
    let c = run_json(&[
        "sync",
        "--store",
        &clean.url,
        "--tree",
        "tree",
        "--trust",
        &key,
        s(&mirror2),
    ]);
    // Keep-alive: sequential requests share connections.
    let conns = clean.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(conns < num(&c, "requests"), "{conns} connections for {c}");
    assert_eq!(
        num(&r, "bytes_fetched"),
        num(&c, "bytes_fetched"),
        "cut: {r}\nclean: {c}"
    );
}

#[test]
fn unavailable_origin_is_retried() {
    let site = published(33, 2);
    let server = Builtin::start(&site.store());
    let up = server.url.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(&up, Fault::Unavailable, 2);
    let r = sync_via(&site, &proxy.url, &["--retries", "4"]);
    assert_same_tree(&site.src(), &site.mirror());
    assert!(num(&r, "retries") >= 2, "{r}");

    // With no retries left, the 503 is reported and the mirror is untouched.
    let site2 = published(34, 1);
    let proxy = Proxy::start(&up, Fault::Unavailable, 100);
    let key = format!("{}.pub", s(&site2.key()));
    let out = common::run(&[
        "sync",
        "--store",
        &proxy.url,
        "--tree",
        "tree",
        "--trust",
        &key,
        "--retries",
        "1",
        s(&site2.mirror()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") && err.contains(&proxy.url), "{err}");
    assert!(!site2.mirror().exists());
}

/// Deletes every `step`-th file of the mirror (so a `--full` sync needs scattered ranges).
fn punch_holes(site: &Site, step: usize) -> usize {
    let mut files: Vec<_> = common::snapshot(&site.mirror())
        .into_iter()
        .filter(|(_, d)| d.starts_with("file"))
        .map(|(p, _)| p)
        .collect();
    files.sort();
    let mut n = 0;
    for p in files.iter().step_by(step) {
        fs::remove_file(site.mirror().join(p)).expect("remove");
        n += 1;
    }
    n
}

#[test]
fn multi_range_when_the_origin_answers_it_and_whole_bodies_when_it_ignores_ranges() {
    let site = published(35, 6);
    let server = Builtin::start(&site.store());
    sync_via(&site, &server.url, &[]);
    let up = server.url.trim_start_matches("http://").to_string();

    punch_holes(&site, 7);
    let single = sync_via(&site, &server.url, &["--full"]);
    assert_same_tree(&site.src(), &site.mirror());
    punch_holes(&site, 7);
    let multi = sync_via(&site, &server.url, &["--full", "--multi-range"]);
    assert_same_tree(&site.src(), &site.mirror());
    assert_eq!(single["chunks_fetched"], multi["chunks_fetched"]);
    assert!(
        num(&multi, "requests") < num(&single, "requests"),
        "multi-range should save requests: single {single}\nmulti {multi}"
    );

    // An origin that ignores Range (200 with everything): still correct, with or without
    // multi-range, and the multi-range attempt is given up after the first wrong answer.
    let proxy = Proxy::start(&up, Fault::StripRange, 0);
    for extra in [&["--full"][..], &["--full", "--multi-range"][..]] {
        punch_holes(&site, 7);
        let mut args = extra.to_vec();
        args.extend(["--retries", "0"]);
        let r = sync_via(&site, &proxy.url, &args);
        assert_same_tree(&site.src(), &site.mirror());
        assert!(num(&r, "chunks_fetched") > 0, "{r}");
        // Each pack comes whole at most once, not once per range.
        let store_bytes: u64 = fs::read_dir(site.store().join("packs"))
            .expect("packs")
            .map(|e| e.expect("entry").metadata().expect("stat").len())
            .sum();
        assert!(
            num(&r, "bytes_fetched") <= store_bytes + 4096,
            "{r}: {store_bytes} bytes in the whole store"
        );
    }
    assert!(proxy.faults_done.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

#[test]
fn https_with_a_private_ca() {
    let site = published(36, 2);
    let server = Builtin::start(&site.store());
    let ca = common::tls::TestCa::new("PulpDist test CA");
    let dir = site.p("tls");
    fs::create_dir_all(&dir).expect("tls dir");
    let ca_file = ca.write_ca(&dir.join("ca.pem"));
    let pair = ca.issue(&dir, "edge", &["localhost", "127.0.0.1"]);
    let edge = common::servers::Nginx::start_with(
        &site.p("nginx"),
        &format!("127.0.0.1:{}", server.port),
        Some((&pair.cert, &pair.key)),
    );
    assert!(edge.url.starts_with("https://"));

    // Without the CA the server is not trusted: a clear, permanent error, nothing written.
    let key = format!("{}.pub", s(&site.key()));
    let out = common::run(&[
        "sync",
        "--store",
        &edge.url,
        "--tree",
        "tree",
        "--trust",
        &key,
        s(&site.mirror()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&edge.url) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(!site.mirror().exists());

    let r = sync_via(&site, &edge.url, &["--ca", s(&ca_file)]);
    assert_same_tree(&site.src(), &site.mirror());
    assert_eq!(num(&r, "retries"), 0, "{r}");
    let noop = sync_via(&site, &edge.url, &["--ca", s(&ca_file)]);
    assert_eq!(num(&noop, "requests"), 1, "{noop}");
}

#[test]
fn sigterm_lets_a_response_in_flight_finish() {
    use std::io::{Read, Write};
    let site = published(37, 6);
    let mut server = Builtin::start(&site.store());
    let pack = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let bytes = fs::read(&pack).expect("pack");
    assert!(
        bytes.len() > 4 << 20,
        "want a pack larger than socket buffers"
    );
    let host = server.url.trim_start_matches("http://").to_string();
    let mut c = std::net::TcpStream::connect(&host).expect("connect");
    write!(
        c,
        "GET /packs/{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        pack.file_name().expect("name").to_string_lossy()
    )
    .expect("send");
    let mut first = [0u8; 1024];
    let n = c.read(&mut first).expect("first bytes");
    assert!(n > 0);
    // Stop the server while most of the body is still to be sent.
    std::process::Command::new("kill")
        .args(["-TERM", &server.proc.child.id().to_string()])
        .status()
        .expect("kill");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("rest of the response");
    let mut all = first[..n].to_vec();
    all.extend(rest);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    assert_eq!(&all[split + 4..], &bytes[..], "the body arrived whole");
    let status = server.proc.terminate().expect("exited");
    assert!(status.success(), "{status}");
    // And it no longer accepts connections.
    assert!(std::net::TcpStream::connect(&host).is_err());
}

/// Regression: serve followed symlinks in the store, so whoever could write into `heads/`
/// or `packs/` could publish any file the server reads (its TLS key), and `heads/x ->
/// /dev/zero` took it to gigabytes. Only regular files are served, heads up to 1 MiB.
#[test]
fn symlinks_fifos_and_huge_heads_in_the_store_are_not_served() {
    let site = published(36, 1);
    let store = site.store();
    let secret = site.p("tls.key");
    fs::write(&secret, b"-----BEGIN PRIVATE KEY-----\n").expect("secret");
    std::os::unix::fs::symlink(&secret, store.join("heads/stolen")).expect("link");
    std::os::unix::fs::symlink("/dev/zero", store.join("heads/zero")).expect("zero");
    let fake_pack = format!("packs/{}.pack", "ab".repeat(32));
    std::os::unix::fs::symlink(&secret, store.join(&fake_pack)).expect("pack link");
    fs::File::create(store.join("heads/huge"))
        .and_then(|f| f.set_len(2 << 20))
        .expect("huge");
    let fifo = std::process::Command::new("mkfifo")
        .arg(store.join("heads/fifo"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    let server = Builtin::start(&store);
    let host = server.url.trim_start_matches("http://").to_string();
    let mut c = Conn::open(&host);
    for path in [
        "/heads/stolen",
        "/heads/zero",
        "/heads/fifo",
        &format!("/{fake_pack}"),
    ] {
        let r = c.send("GET", path, &[]);
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.body.starts_with(b"-----BEGIN"), "{path}");
    }
    let r = c.send("GET", "/heads/huge", &[]);
    assert_eq!(r.status, 500);
    assert!(r.body.len() < 1024);
    // The real tree is still served.
    let r = c.send("GET", "/heads/tree", &[]);
    assert_eq!(r.status, 200);
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x), left idle.
fn idle_from(
    rt: &tokio::runtime::Runtime,
    from: &str,
    addr: std::net::SocketAddr,
) -> Option<std::net::TcpStream> {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().ok()?;
        s.bind(format!("{from}:0").parse().ok()?).ok()?;
        s.connect(addr).await.ok()?.into_std().ok()
    })
}

/// The value of a counter or gauge on `/metrics`.
fn metric(c: &mut Conn, name: &str) -> u64 {
    let r = c.send("GET", "/metrics", &[]);
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Regression: about 1,100 idle connections exhausted a 1024-descriptor limit and normal
/// clients timed out; a client that stopped reading held its connection and file for ever.
/// Connections are capped in all and per address, a stalled response is closed, and the
/// soft descriptor limit is raised at start. A normal client is served throughout.
#[test]
fn idle_floods_and_stalled_readers_do_not_starve_other_clients() {
    let site = published(37, 12);
    let (proc, port) = common::servers::spawn_serve(&[
        "--store",
        s(&site.store()),
        "--listen",
        "127.0.0.1:0",
        "--max-connections",
        "64",
        "--max-per-address",
        "8",
        "--stall-seconds",
        "1",
    ]);
    let url = format!("http://127.0.0.1:{port}");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // The descriptor limit was raised to the hard limit.
    let limits = fs::read_to_string(format!("/proc/{}/limits", proc.child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("line");
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(v[3], v[4], "soft limit not raised: {line}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // 300 idle connections from one address: eight are kept, the rest closed at once.
    let flood: Vec<_> = (0..300)
        .filter_map(|_| idle_from(&rt, "127.0.0.2", addr))
        .collect();
    assert!(flood.len() >= 8);
    let mut m = Conn::open(&format!("127.0.0.1:{port}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&mut m, "pulpdist_http_connections_refused_total") < 250 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood was not refused"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A client that asks for the largest pack and never reads.
    let pack = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    assert!(
        fs::metadata(&pack).expect("len").len() > 8 << 20,
        "want a pack larger than socket buffers"
    );
    let mut stalled = idle_from(&rt, "127.0.0.3", addr).expect("connect");
    use std::io::Write;
    write!(
        stalled,
        "GET /packs/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        pack.file_name().expect("name").to_string_lossy()
    )
    .expect("request");
    // A normal client is served meanwhile, and the stalled response is closed.
    let r = sync_via(&site, &url, &[]);
    assert!(r["files"].as_u64().expect("files") > 0, "{r}");
    assert_same_tree(&site.src(), &site.mirror());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&mut m, "pulpdist_http_connections_stalled_total") < 1
        || metric(&mut m, "pulpdist_http_requests_in_flight") > 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled response was never closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(flood);
    drop(stalled);
}
