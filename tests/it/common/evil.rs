//! A hostile HTTP origin: serves a real store's objects, but lies in one chosen way.
//! One request per connection (Connection: close), single ranges only.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// How the origin misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lie {
    /// Pack bytes flipped in transit (same length).
    CorruptPacks,
    /// Every pack body stops halfway (the Content-Length promised it all).
    TruncatePacks,
    /// Content-Length claims 100 bytes more than the body that follows.
    LongContentLength,
    /// Bodies of heads and packs never end (no Content-Length, close-delimited).
    Endless,
    /// Waits this long before answering anything.
    Slow(u64),
    /// Answers a range request for a pack with 200, the whole pack and then 512 MiB more,
    /// without a Content-Length (close-delimited).
    HugeForRange,
}

pub(crate) struct Evil {
    pub url: String,
}

impl Evil {
    pub(crate) fn start(store: &Path, lie: Lie) -> Evil {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let root = store.to_path_buf();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let root = root.clone();
                std::thread::spawn(move || {
                    let _ = answer(c, &root, lie);
                });
            }
        });
        Evil { url }
    }
}

fn answer(mut c: TcpStream, root: &Path, lie: Lie) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            let v = v.trim();
            if let Some((a, b)) = v.split_once('-') {
                range = Some((a.parse().unwrap_or(0), b.parse().ok()));
            }
        }
    }
    if let Lie::Slow(secs) = lie {
        std::thread::sleep(Duration::from_secs(secs));
    }
    let rel = path.trim_start_matches('/');
    let ok_name = (rel.starts_with("heads/") || rel.starts_with("packs/")) && !rel.contains("..");
    let data = if ok_name {
        std::fs::read(root.join(rel)).ok()
    } else {
        None
    };
    let Some(data) = data else {
        return c.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let is_pack = rel.starts_with("packs/");
    let len = data.len() as u64;
    let (status, start, end) = match range {
        Some(_) if lie == Lie::HugeForRange && is_pack => (200, 0, len),
        Some((a, b)) => (206, a, b.map_or(len, |b| (b + 1).min(len))),
        None => (200, 0, len),
    };
    let mut body = data[start as usize..end as usize].to_vec();
    if lie == Lie::CorruptPacks && is_pack {
        for i in (0..body.len()).step_by(997) {
            body[i] ^= 0xA5;
        }
    }
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    if status == 206 {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    match lie {
        Lie::Endless => {}
        Lie::HugeForRange if is_pack && range.is_some() => {}
        Lie::LongContentLength => {
            head.push_str(&format!("Content-Length: {}\r\n", body.len() + 100))
        }
        _ => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes())?;
    match lie {
        Lie::TruncatePacks if is_pack => c.write_all(&body[..body.len() / 2]),
        Lie::HugeForRange if is_pack && range.is_some() => {
            c.write_all(&body)?;
            let junk = vec![0x5Au8; 1 << 20];
            for _ in 0..512 {
                c.write_all(&junk)?;
            }
            Ok(())
        }
        Lie::Endless => {
            c.write_all(&body)?;
            let junk = vec![0x5Au8; 64 * 1024];
            // Until the client hangs up.
            loop {
                c.write_all(&junk)?;
            }
        }
        _ => c.write_all(&body),
    }?;
    let mut sink = [0u8; 1];
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = c.read(&mut sink);
    Ok(())
}
