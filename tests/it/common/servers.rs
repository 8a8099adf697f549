//! Real servers for the tests, each a child process on loopback, stopped on drop:
//! `pulpdist serve`, s3s-fs (an S3-compatible server) and nginx with the configuration in
//! deploy/nginx/. `./scripts/test` installs s3s-fs and nginx; a missing one fails the test
//! with a message saying so (it is never skipped).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{bin, s};

/// A child process, sent SIGTERM and reaped on drop.
pub(crate) struct Proc {
    pub child: Child,
    pub name: &'static str,
    /// Where its standard error goes, when the test reads it.
    pub log: Option<tempfile::NamedTempFile>,
}

impl Proc {
    /// Waits (with a deadline) until its standard error holds `needle` `count` times.
    pub(crate) fn wait_log(&self, needle: &str, count: usize) {
        let log = self.log.as_ref().expect("a process started with a log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            if text.matches(needle).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never said '{needle}' {count} times: {text}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait up to 10 s; returns whether it exited by itself.
    pub(crate) fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The TCP ports process `pid` listens on: its sockets' inodes (/proc/PID/fd) found among
/// the listening sockets of /proc/net/tcp. This tells our server from another process that
/// took the port.
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|f| std::fs::read_link(f.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            if *state != "0A" || !inodes.contains(*inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Starts a server that cannot bind port 0 and say which port it got (nginx refuses port
/// 0; rsync takes it for 873): `spawn` starts it on a port found free, which is then
/// checked to be the child's own listening socket (not a connection to whoever else took
/// the port meanwhile). If the child exits first (it lost the port), another port is tried.
pub(crate) fn start_on_a_free_port(mut spawn: impl FnMut(u16) -> Proc) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut proc = spawn(port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if listening_ports(proc.child.id()).contains(&port) {
                return (proc, port);
            }
            if let Ok(Some(_)) = proc.child.try_wait() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {port} within 30 s",
                proc.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("could not start a server on a free port in 5 tries");
}

/// Finds a tool: the environment variable, then the given paths, then PATH.
fn tool(env: &str, candidates: &[PathBuf], name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    for c in candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            if d.join(name).is_file() {
                return d.join(name);
            }
        }
    }
    panic!("{name} is not installed: run ./scripts/test, which installs it (or set {env})");
}

/// `pulpdist serve` on a free port.
pub(crate) struct Builtin {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
}

/// Runs `pulpdist serve ARGS` (which must listen on port 0) and reads the URL it prints.
pub(crate) fn spawn_serve<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (Proc, u16) {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = bin()
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("spawn pulpdist serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read serve's first line");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in '{line}'"));
    (
        Proc {
            child,
            name: "pulpdist serve",
            log: Some(log),
        },
        port,
    )
}

impl Builtin {
    pub(crate) fn start(store: &Path) -> Self {
        let (proc, port) = spawn_serve(&["--store", s(store), "--listen", "127.0.0.1:0"]);
        Builtin {
            proc,
            url: format!("http://127.0.0.1:{port}"),
            port,
        }
    }
}

pub(crate) const S3_ACCESS_KEY: &str = "pulpdist-test";
pub(crate) const S3_SECRET_KEY: &str = "pulpdist-test-secret-key";

/// s3s-fs serving `root`; buckets are its subdirectories.
pub(crate) struct S3 {
    pub proc: Proc,
    pub root: PathBuf,
    pub endpoint: String,
}

impl S3 {
    /// The flags that give a command this server and its credentials (the secret in a
    /// file written into `dir`).
    pub(crate) fn cli_flags(&self, dir: &Path) -> Vec<String> {
        let secret = dir.join("s3-secret");
        std::fs::write(&secret, format!("{S3_SECRET_KEY}\n")).expect("secret file");
        let secret = secret.to_str().expect("utf8 path").to_string();
        [
            "--s3-endpoint",
            &self.endpoint,
            "--s3-access-key-id",
            S3_ACCESS_KEY,
            "--s3-secret-key-file",
            &secret,
        ]
        .map(String::from)
        .to_vec()
    }

    pub(crate) fn start(root: &Path, buckets: &[&str]) -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let exe = tool(
            "PULPDIST_S3S_FS",
            &[home.join(".cache/pulpdist/s3s-fs-0.14.1/bin/s3s-fs")],
            "s3s-fs",
        );
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).expect("bucket dir");
        }
        // s3s-fs binds port 0 and says which port it got.
        let mut child = Command::new(&exe)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(root)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut port = None;
        let mut line = String::new();
        while port.is_none() && out.read_line(&mut line).is_ok_and(|n| n > 0) {
            port = line
                .split("server is running at http://127.0.0.1:")
                .nth(1)
                .and_then(|p| p.trim().parse::<u16>().ok());
            line.clear();
        }
        let port = port.expect("s3s-fs did not say which port it listens on");
        // Keep reading its output, so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let proc = Proc {
            child,
            name: "s3s-fs",
            log: None,
        };
        S3 {
            proc,
            root: root.to_path_buf(),
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The environment a client of this server needs (the usual AWS variables).
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// nginx with deploy/nginx/pulpdist-cdn.conf in front of `upstream` (host:port).
pub(crate) struct Nginx {
    pub proc: Proc,
    pub url: String,
    pub access_log: PathBuf,
}

impl Nginx {
    pub(crate) fn start(dir: &Path, upstream: &str) -> Self {
        Self::start_with(dir, upstream, None)
    }

    /// With `tls` (certificate and key files), the edge listens for HTTPS.
    pub(crate) fn start_with(dir: &Path, upstream: &str, tls: Option<(&Path, &Path)>) -> Self {
        let exe = tool(
            "PULPDIST_NGINX",
            &[PathBuf::from("/usr/sbin/nginx")],
            "nginx",
        );
        std::fs::create_dir_all(dir.join("cache")).expect("nginx dir");
        let (proc, port) = start_on_a_free_port(|port| Self::spawn(&exe, dir, upstream, tls, port));
        Nginx {
            proc,
            url: match tls {
                None => format!("http://127.0.0.1:{port}"),
                Some(_) => format!("https://localhost:{port}"),
            },
            access_log: dir.join("access.log"),
        }
    }

    /// nginx serving the store directory `root` with the shipped relay configuration
    /// (deploy/nginx/pulpdist-relay.conf).
    pub(crate) fn start_relay(dir: &Path, root: &Path) -> Self {
        let exe = tool(
            "PULPDIST_NGINX",
            &[PathBuf::from("/usr/sbin/nginx")],
            "nginx",
        );
        std::fs::create_dir_all(dir).expect("nginx dir");
        let access_log = dir.join("access.log");
        let (proc, port) = start_on_a_free_port(|port| {
            let site = shipped("pulpdist-relay.conf");
            let site = replace(site, "/srv/pulpdist/relay", s(root));
            let site = replace(
                site,
                "/var/log/nginx/pulpdist-relay-access.log",
                s(&access_log),
            );
            let site = replace(site, "listen 8082;", &format!("listen 127.0.0.1:{port};"));
            Self::run(&exe, dir, &site)
        });
        Nginx {
            proc,
            url: format!("http://127.0.0.1:{port}"),
            access_log,
        }
    }

    fn spawn(
        exe: &Path,
        dir: &Path,
        upstream: &str,
        tls: Option<(&Path, &Path)>,
        port: u16,
    ) -> Proc {
        let site = shipped("pulpdist-cdn.conf");
        let access_log = dir.join("access.log");
        // The shipped file, with only its paths, ports and origin replaced.
        let site = replace(site, "/var/cache/nginx/pulpdist", s(&dir.join("cache")));
        let site = replace(site, "/var/log/nginx/pulpdist-access.log", s(&access_log));
        let site = replace(
            site,
            "server 127.0.0.1:8080;",
            &format!("server {upstream};"),
        );
        let listen = match tls {
            None => format!("listen 127.0.0.1:{port};"),
            Some((cert, key)) => format!(
                "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
                s(cert),
                s(key)
            ),
        };
        let site = replace(site, "listen 8081;", &listen);
        Self::run(exe, dir, &site)
    }

    /// Runs nginx in `dir` with `site` as its only server.
    fn run(exe: &Path, dir: &Path, site: &str) -> Proc {
        std::fs::write(dir.join("pulpdist-site.conf"), site).expect("write site conf");
        let d = s(dir);
        let main = format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n  \
             fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n  \
             include {d}/pulpdist-site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        let child = Command::new(exe)
            .args(["-p", d, "-c", s(&dir.join("nginx.conf"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        Proc {
            child,
            name: "nginx",
            log: None,
        }
    }

    /// The access log's lines so far.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A configuration file shipped in deploy/nginx/.
fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/nginx")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("deploy/nginx/{name}: {e}"))
}

/// `s` with `from` replaced by `to`; `from` must be in it (the shipped file keeps it).
fn replace(s: String, from: &str, to: &str) -> String {
    assert!(s.contains(from), "deploy config lost '{from}'");
    s.replace(from, to)
}

/// An rsync daemon on loopback serving `modules` (name, directory), read-only, with a
/// transfer log.
pub(crate) struct RsyncD {
    pub proc: Proc,
    pub url: String,
    pub log: PathBuf,
}

impl RsyncD {
    pub(crate) fn start(dir: &Path, modules: &[(&str, &Path)]) -> Self {
        std::fs::create_dir_all(dir).expect("rsyncd dir");
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).output().expect("id");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let log = dir.join("rsyncd.log");
        let mut conf = format!(
            "use chroot = no\npid file = {}\nlog file = {}\ntransfer logging = yes\n\
             log format = %o %f\nuid = {}\ngid = {}\n",
            s(&dir.join("rsyncd.pid")),
            s(&log),
            id("-u"),
            id("-g"),
        );
        for (name, path) in modules {
            conf.push_str(&format!(
                "[{name}]\n    path = {}\n    read only = yes\n",
                s(path)
            ));
        }
        let conf_path = dir.join("rsyncd.conf");
        std::fs::write(&conf_path, conf).expect("rsyncd.conf");
        let (proc, port) = start_on_a_free_port(|port| {
            let child = Command::new("rsync")
                .args(["--daemon", "--no-detach", "--address", "127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--config={}", s(&conf_path)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rsync --daemon (rsync is installed by ./scripts/test)");
            Proc {
                child,
                name: "rsync --daemon",
                log: None,
            }
        });
        RsyncD {
            proc,
            url: format!("rsync://127.0.0.1:{port}"),
            log,
        }
    }

    /// The transfer log: (session pid, file) for each file sent, in order.
    pub(crate) fn sent(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once('[')?;
                let (pid, rest) = rest.split_once(']')?;
                let f = rest.trim().strip_prefix("send ")?;
                Some((pid.to_string(), f.to_string()))
            })
            .collect()
    }
}

/// A PostgreSQL server for this test process, started on first use: a cluster of its own
/// in a temporary directory, listening on a Unix socket only (no port to choose), run as
/// the `postgres` user (the server refuses root). Its shell waits on a pipe from this
/// process: when the test process ends, however it ends, the pipe closes and the shell
/// stops the server and removes the cluster. `./scripts/test` installs PostgreSQL.
pub(crate) struct Postgres {
    /// The socket's directory.
    pub(crate) socket: PathBuf,
    _cluster: std::sync::Mutex<Cluster>,
}

impl Postgres {
    /// A URL for database `db` (created by the coordinator on first use).
    pub(crate) fn url(&self, db: &str) -> String {
        pg_url(&self.socket, db)
    }
}

fn pg_url(socket: &Path, db: &str) -> String {
    format!("postgres://postgres@localhost/{db}?host={}", s(socket))
}

/// The PostgreSQL server of this process (see [`Postgres`]).
pub(crate) fn postgres() -> &'static Postgres {
    static PG: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    PG.get_or_init(|| {
        let cluster = Cluster::start_new(true);
        Postgres {
            socket: cluster.socket.clone(),
            _cluster: std::sync::Mutex::new(cluster),
        }
    })
}

/// A PostgreSQL cluster of a test's own, which it may stop and start again (the server
/// going away under a coordinator); removed on drop.
pub(crate) struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) socket: PathBuf,
    /// The shell running the server; closing its standard input stops the server.
    shell: Option<Child>,
    /// The shell removes the cluster once the server stopped (for the process's server,
    /// which is never dropped).
    removed_by_shell: bool,
}

impl Cluster {
    /// A new cluster, started.
    pub(crate) fn new() -> Cluster {
        Cluster::start_new(false)
    }

    fn start_new(removed_by_shell: bool) -> Cluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|b| b.join("postgres").exists())
                    .max()
            })
            .expect(
                "PostgreSQL is not installed (/usr/lib/postgresql/*/bin): ./scripts/test installs it",
            );
        let dir = tempfile::Builder::new()
            .prefix("pulpdist-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        chown_to_postgres(&dir);
        let (data, socket) = (dir.join("data"), dir.join("socket"));
        let out = as_postgres(&[
            s(&bin.join("initdb")),
            "-D",
            s(&data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])
        .output()
        .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::create_dir(&socket).expect("socket dir");
        chown_to_postgres(&socket);
        let mut c = Cluster {
            bin,
            dir,
            socket,
            shell: None,
            removed_by_shell,
        };
        c.start();
        c
    }

    /// A URL for database `db`.
    pub(crate) fn url(&self, db: &str) -> String {
        pg_url(&self.socket, db)
    }

    /// Starts the server (on the same data and socket as before) and waits until it
    /// answers.
    pub(crate) fn start(&mut self) {
        assert!(self.shell.is_none(), "already running");
        let script = format!(
            "'{pg}' -D '{data}' -k '{socket}' -c listen_addresses= -c fsync=off -c max_connections=300 \
             >>'{dir}/log' 2>&1 & pid=$!; cat >/dev/null; kill -INT $pid; wait $pid{remove}",
            pg = s(&self.bin.join("postgres")),
            data = s(&self.dir.join("data")),
            socket = s(&self.socket),
            dir = s(&self.dir),
            remove = match self.removed_by_shell {
                true => format!("; rm -rf '{}'", s(&self.dir)),
                false => String::new(),
            },
        );
        let child = as_postgres(&["sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.shell = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", s(&self.socket), "-U", "postgres"])
                .status()
                .is_ok_and(|st| st.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within 60 s: {}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown: its sessions are cut) and waits until it is gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            drop(shell.stdin.take());
            let _ = shell.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args);
    c
}

fn chown_to_postgres(path: &Path) {
    let uid = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user (the package creates it)")
    };
    std::os::unix::fs::chown(path, Some(uid("-u")), Some(uid("-g"))).expect("chown");
}
