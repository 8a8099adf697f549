//! Raw HTTP/1.1 over a socket, so the tests see exactly what a server sends, and a fault
//! injecting TCP proxy for the retry tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One parsed response.
#[derive(Debug)]
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A connection that can carry several requests (keep-alive).
pub(crate) struct Conn {
    r: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    pub(crate) fn open(host: &str) -> Conn {
        let s = TcpStream::connect(host).expect("connect");
        Conn {
            r: BufReader::new(s),
            host: host.to_string(),
        }
    }

    /// Sends `method path` with extra header lines; reads the response (no body for HEAD).
    pub(crate) fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.r
            .get_mut()
            .write_all(req.as_bytes())
            .expect("send request");
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).expect("header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header colon");
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = resp
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if method != "HEAD" && status != 304 {
            resp.body = vec![0; len];
            self.r.read_exact(&mut resp.body).expect("body");
        }
        resp
    }
}

/// What the proxy does to a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// Close after this many response bytes (the first `n` connections).
    CutAfter(u64),
    /// Answer 503 and close (the first `n` connections).
    Unavailable,
    /// Drop `Range` headers, so the origin answers 200 with the whole object (every connection).
    StripRange,
}

/// A TCP proxy on loopback in front of `upstream`, injecting `fault` into its first `n`
/// connections (all of them for [`Fault::StripRange`]).
pub(crate) struct Proxy {
    pub url: String,
    pub faults_done: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
}

impl Proxy {
    pub(crate) fn start(upstream: &str, fault: Fault, n: u64) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let faults_done = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (fd, cn) = (faults_done.clone(), connections.clone());
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { continue };
                let k = cn.fetch_add(1, Ordering::SeqCst);
                let faulty = matches!(fault, Fault::StripRange) || k < n;
                let (up, fd) = (upstream.clone(), fd.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &up, if faulty { Some(fault) } else { None }, &fd);
                });
            }
        });
        Proxy {
            url,
            faults_done,
            connections,
        }
    }
}

fn relay(
    mut client: TcpStream,
    upstream: &str,
    fault: Option<Fault>,
    done: &AtomicU64,
) -> std::io::Result<()> {
    match fault {
        Some(Fault::Unavailable) => {
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf)?;
            client.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            done.fetch_add(1, Ordering::SeqCst);
            return client.shutdown(Shutdown::Both);
        }
        Some(Fault::StripRange) => {
            // One request per connection: read its head, drop Range, ask to close after.
            let mut r = BufReader::new(client.try_clone()?);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("range:") {
                    done.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if lower.starts_with("connection:") {
                    continue;
                }
                head.push_str(&line);
            }
            head.push_str("Connection: close\r\n\r\n");
            let mut up = TcpStream::connect(upstream)?;
            up.write_all(head.as_bytes())?;
            std::io::copy(&mut up, &mut client)?;
            return client.shutdown(Shutdown::Both);
        }
        _ => {}
    }
    let up = TcpStream::connect(upstream)?;
    let (mut up_r, mut client_w) = (up.try_clone()?, client.try_clone()?);
    let mut client_r = client;
    let mut up_w = up;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    match fault {
        Some(Fault::CutAfter(limit)) => {
            let mut sent = 0u64;
            let mut buf = [0u8; 8192];
            while sent < limit {
                let n = up_r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                let n = n.min((limit - sent) as usize);
                client_w.write_all(&buf[..n])?;
                sent += n as u64;
            }
            eprintln!("proxy: cut connection after {sent} bytes");
            if sent >= limit {
                done.fetch_add(1, Ordering::SeqCst);
            }
            let _ = up_r.shutdown(Shutdown::Both);
            client_w.shutdown(Shutdown::Both)
        }
        _ => {
            let n = std::io::copy(&mut up_r, &mut client_w)?;
            eprintln!("proxy: passed {n} bytes");
            client_w.shutdown(Shutdown::Both)
        }
    }
}
