//! Reading a store over HTTP(S): the built-in server, a static web server, a CDN, or an S3
//! bucket's public endpoint.
//!
//! Blocking (ureq), so the executor's fetch threads are the bounded set of connections.
//! Every request that fails in a way that may pass (connection reset or refused, timeout,
//! 5xx, 408, 429, a body cut short) is retried with exponential backoff, and a range or
//! object whose body was cut short is resumed from the last byte received rather than
//! fetched again. A 200 with the whole object is accepted in place of a 206. Multi-range
//! requests are sent only when enabled, and only while the origin answers them correctly
//! (S3 ignores them, Varnish answers 416, nginx answers them only from its cache): the
//! first wrong answer turns them off for the rest of the sync.
//!
//! Retries back off 200 ms × 2ⁿ (n ≤ 6, at most 10 s). Redirects are not followed. The CA
//! certificates trusted are `--ca`, else the first system bundle that reads, else the
//! Mozilla roots. Heads are asked with `Cache-Control: no-cache`; multi-range requests go
//! in batches of 64 ranges; an object whose total size is not the signed size is refused.

use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use pulpdist_format::PackId;
use ureq::Agent;

use crate::error::SyncError;
use crate::store::{head_key, HeadFetch, Overhead, StoreReader};

/// How to talk HTTP.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Idle connections kept per host (set it to the number of fetch threads).
    pub connections: usize,
    /// Retries of one request after a temporary failure.
    pub retries: u32,
    /// The first backoff; it doubles with each retry, up to 10 s.
    pub backoff: Duration,
    /// Connecting (DNS, TCP, TLS) may take this long.
    pub connect_timeout: Duration,
    /// A response may stall this long between reads.
    pub read_timeout: Duration,
    /// Ask for several ranges of a pack in one request (`multipart/byteranges`).
    pub multi_range: bool,
    /// CA certificates (PEM) to trust for `https://` instead of the system's CA bundle
    /// (or, where there is none, the Mozilla roots).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its private key (PEM), for servers that ask for one.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connections: 8,
            retries: 6,
            backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            multi_range: false,
            ca_pem: None,
            client_cert_pem: None,
        }
    }
}

/// Where distributions keep the system's trusted CA certificates.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

const MULTI_UNKNOWN: u8 = 0;
const MULTI_OK: u8 = 1;
const MULTI_NO: u8 = 2;
/// Ranges per multi-range request (keeps the Range header well under common limits).
const MULTI_BATCH: usize = 64;
/// The largest pack accepted (packs are about 64 MiB).
const MAX_PACK: u64 = 16 << 30;

/// A store read over HTTP(S) at a base URL (`http://host:port/prefix`).
#[derive(Debug)]
pub struct HttpStoreReader {
    base: String,
    agent: Agent,
    opts: HttpOptions,
    extra_requests: AtomicU64,
    extra_bytes: AtomicU64,
    multi: AtomicU8,
    /// The origin answered a range request with the whole object (200): from then on, each
    /// pack is fetched whole once and its ranges are cut from that copy.
    ignores_ranges: std::sync::atomic::AtomicBool,
    whole: std::sync::Mutex<Vec<(String, std::sync::Arc<Vec<u8>>)>>,
    saved: AtomicU64,
    saved_bytes: AtomicU64,
    /// Pack sizes from the verified head, by URL: an origin that ignores Range sends the
    /// whole object, and no more than its signed size is read.
    sizes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Whole packs kept for an origin that ignores Range.
const WHOLE_CACHE: usize = 4;
impl HttpStoreReader {
    /// A reader of the store at `base` (`http://` or `https://`).
    pub fn new(base: &str, opts: HttpOptions) -> Result<Self, SyncError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(SyncError::Usage(format!(
                "{base}: not an http:// or https:// URL"
            )));
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections_per_host(opts.connections.max(1))
            .max_idle_connections(opts.connections.max(1) * 4)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .max_redirects(0)
            .user_agent(concat!("pulpdist/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(&opts)?)
            .build()
            .into();
        Ok(HttpStoreReader {
            base: base.trim_end_matches('/').to_string(),
            agent,
            opts,
            extra_requests: AtomicU64::new(0),
            extra_bytes: AtomicU64::new(0),
            multi: AtomicU8::new(MULTI_UNKNOWN),
            ignores_ranges: std::sync::atomic::AtomicBool::new(false),
            whole: std::sync::Mutex::new(Vec::new()),
            saved: AtomicU64::new(0),
            saved_bytes: AtomicU64::new(0),
            sizes: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The size the verified head gives the object at `url`, if it lists it.
    fn signed_size(&self, url: &str) -> Option<u64> {
        self.sizes.lock().ok().and_then(|m| m.get(url).copied())
    }

    /// Keeps a whole object fetched from an origin that ignores Range (a few, newest last).
    fn remember_whole(&self, url: &str, body: Vec<u8>) -> std::sync::Arc<Vec<u8>> {
        let body = std::sync::Arc::new(body);
        if let Ok(mut w) = self.whole.lock() {
            w.retain(|(u, _)| u != url);
            if w.len() >= WHOLE_CACHE {
                w.remove(0);
            }
            w.push((url.to_string(), body.clone()));
        }
        body
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{key}", self.base)
    }

    fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::http::Response<ureq::Body>, SyncError> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call().map_err(|e| transport(url, e))
    }

    /// Runs `attempt` until it succeeds, fails permanently, or retries run out.
    fn retrying<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let mut tries = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_temporary() && tries < self.opts.retries => {
                    let wait = self.opts.backoff.saturating_mul(1 << tries.min(6));
                    std::thread::sleep(wait.min(Duration::from_secs(10)));
                    tries += 1;
                    self.extra_requests.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The bytes of `key` in `range` (all of it, `size` bytes: `None`), resuming after a cut.
    fn fetch(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, SyncError> {
        let url = self.url(key);
        let mut buf = Vec::new();
        self.retrying(|| {
            let start = range.as_ref().map_or(0, |r| r.start) + buf.len() as u64;
            let end = range.as_ref().map(|r| r.end);
            // Everything already arrived (a body cut after its last byte): done.
            if end.or(size).is_some_and(|e| start >= e) {
                return Ok(());
            }
            let header = match end.or(size).filter(|_| start > 0 || end.is_some()) {
                Some(e) => Some(format!("bytes={start}-{}", e - 1)),
                None if start > 0 => Some(format!("bytes={start}-")),
                None => None,
            };
            let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Range", h.as_str())).collect();
            let resp = self.get(&url, &headers)?;
            self.read_answer(&url, resp, start, end, size, &mut buf)
        })?;
        Ok(buf)
    }

    /// Appends the bytes `start..end` from a response to `buf`.
    fn read_answer(
        &self,
        url: &str,
        resp: ureq::http::Response<ureq::Body>,
        start: u64,
        end: Option<u64>,
        size: Option<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<(), SyncError> {
        let status = resp.status().as_u16();
        let (skip, want) = match status {
            206 => self.partial_span(url, &resp, start, end, size)?,
            200 if end.is_some()
                && size.is_none()
                && whole_fits(content_length(&resp), self.signed_size(url)) =>
            {
                return self.keep_whole(url, resp, start, end.unwrap_or(0), buf);
            }
            200 => self.whole_span(url, &resp, start, end, size)?,
            404 => {
                return Err(SyncError::NotFound {
                    store: self.base.clone(),
                    object: url.to_string(),
                })
            }
            // A range inside the signed size that the object does not have: it is shorter
            // than the index says (truncated, or another object).
            416 if self.signed_size(url).is_some() || size.is_some() => {
                let cr = header(&resp, "content-range").unwrap_or_default();
                return Err(mismatch(
                    url,
                    format!("no bytes from {start} ('{cr}'): shorter than the signed head says"),
                ));
            }
            _ => return Err(status_err(url, status)),
        };
        let whole_asked = end.is_none() && size.is_none() && status == 200;
        self.read_span(url, resp, (skip, want), whole_asked, buf)
    }

    /// A 206 answer to a range from `start`: the bytes to skip (none) and to keep, once its
    /// `Content-Range` starts where asked, names the signed size, and reaches far enough.
    fn partial_span(
        &self,
        url: &str,
        resp: &ureq::http::Response<ureq::Body>,
        start: u64,
        end: Option<u64>,
        size: Option<u64>,
    ) -> Result<(u64, u64), SyncError> {
        let cr = header(resp, "content-range").unwrap_or_default();
        let (a, b, total) = parse_content_range(&cr)
            .ok_or_else(|| http_err(url, 206, format!("bad Content-Range '{cr}'"), false))?;
        if a != start {
            let detail = format!("asked for bytes from {start}, got '{cr}'");
            return Err(http_err(url, 206, detail, false));
        }
        if let (Some(t), Some(s)) = (total, size) {
            if t != s {
                let detail = format!("object is {t} bytes; the signed head says {s}");
                return Err(mismatch(url, detail));
            }
        }
        let want_end = end.or(size).unwrap_or(total.unwrap_or(b + 1));
        if b + 1 < want_end {
            let detail = format!("object ends before byte {want_end} ('{cr}')");
            return Err(mismatch(url, detail));
        }
        Ok((0, want_end - start))
    }

    /// A 200 answer with the whole object: skip to `start`, keep what was asked for (and
    /// never more than the signed size).
    fn whole_span(
        &self,
        url: &str,
        resp: &ureq::http::Response<ureq::Body>,
        start: u64,
        end: Option<u64>,
        size: Option<u64>,
    ) -> Result<(u64, u64), SyncError> {
        let len = content_length(resp);
        if let (Some(l), Some(s)) = (len, size.or(self.signed_size(url))) {
            if l != s {
                let detail = format!("object is {l} bytes; the signed head says {s}");
                return Err(mismatch(url, detail));
            }
        }
        let want_end = match (end.or(size), len) {
            (Some(e), Some(l)) if l < e => {
                return Err(mismatch(
                    url,
                    format!("object is {l} bytes, shorter than {e}"),
                ))
            }
            (Some(e), _) => e,
            (None, Some(l)) => l,
            (None, None) => MAX_PACK,
        };
        Ok((start, want_end.saturating_sub(start)))
    }

    /// A range answered with the whole object: the object kept (no more than its signed
    /// size), so later ranges of it are cut from this copy instead of asked for again;
    /// `start..end` of it appended to `buf`.
    fn keep_whole(
        &self,
        url: &str,
        resp: ureq::http::Response<ureq::Body>,
        start: u64,
        end: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), SyncError> {
        self.ignores_ranges.store(true, Ordering::Relaxed);
        let limit = self.signed_size(url).unwrap_or(0);
        let all = read_capped(url, resp, limit)?;
        if all.len() as u64 > limit {
            let detail =
                format!("answered a range with more than the {limit} bytes the object may have");
            return Err(mismatch(url, detail));
        }
        let Some(part) = all.get(start as usize..end as usize) else {
            let detail = format!("object is {} bytes, shorter than {end}", all.len());
            return Err(mismatch(url, detail));
        };
        let extra = (all.len() as u64).saturating_sub(end - start);
        self.extra_bytes.fetch_add(extra, Ordering::Relaxed);
        buf.extend_from_slice(part);
        self.remember_whole(url, all);
        Ok(())
    }

    /// Reads `want` bytes after skipping `skip` from a response's body into `buf`; a body
    /// shorter than asked is [`SyncError::Short`] unless the whole object was asked for
    /// without a known size (`whole_asked`).
    fn read_span(
        &self,
        url: &str,
        resp: ureq::http::Response<ureq::Body>,
        (skip, want): (u64, u64),
        whole_asked: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), SyncError> {
        let status = resp.status().as_u16();
        let mut body = resp.into_body().into_reader();
        if skip > 0 {
            let skipped = std::io::copy(&mut (&mut body).take(skip), &mut std::io::sink())
                .map_err(|e| read_err(url, e))?;
            self.extra_bytes.fetch_add(skipped, Ordering::Relaxed);
            if skipped < skip {
                let detail = format!("body ended at byte {skipped}, before {skip}");
                return Err(http_err(url, status, detail, true));
            }
        }
        let before = buf.len() as u64;
        // A 206 body is read to its end (one byte more is allowed for), so the connection
        // goes back to the pool; the rest of a 200 body, when only a part was asked for, is
        // not worth reading, and that connection is dropped.
        let cap = if status == 206 { want + 1 } else { want };
        let read = (&mut body).take(cap).read_to_end(buf);
        let got = buf.len() as u64 - before;
        if let Err(e) = read {
            return Err(read_err(url, e));
        }
        if got > want {
            buf.truncate((before + want) as usize);
            let detail = format!("body longer than the {want} bytes of its Content-Range");
            return Err(http_err(url, status, detail, false));
        }
        if got < want && !whole_asked {
            return Err(SyncError::Short {
                store: self.base.clone(),
                object: url.to_string(),
                got,
                wanted: want,
            });
        }
        Ok(())
    }

    /// One multi-range request; `None` when the origin did not answer it correctly.
    fn try_multi(
        &self,
        pack: &PackId,
        ranges: &[Range<u64>],
    ) -> Result<Option<Vec<Vec<u8>>>, SyncError> {
        let url = self.url(&pack.object_key());
        let spec = ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end - 1))
            .collect::<Vec<_>>()
            .join(",");
        let header_value = format!("bytes={spec}");
        let resp = self.get(&url, &[("Range", header_value.as_str())])?;
        match resp.status().as_u16() {
            206 => self.multi_parts(&url, resp, ranges),
            200 => self.multi_ignored(&url, resp, ranges),
            s if s >= 500 || s == 408 || s == 429 => Err(status_err(&url, s)),
            _ => Ok(None),
        }
    }

    /// The ranges out of a 206 answer to a multi-range request: `multipart/byteranges`, or
    /// one part when the origin merged them.
    fn multi_parts(
        &self,
        url: &str,
        resp: ureq::http::Response<ureq::Body>,
        ranges: &[Range<u64>],
    ) -> Result<Option<Vec<Vec<u8>>>, SyncError> {
        let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let ct = header(&resp, "content-type").unwrap_or_default();
        let cr = header(&resp, "content-range");
        let limit = wanted + 1024 * (ranges.len() as u64 + 1);
        let body = read_capped(url, resp, limit)?;
        let extra = (body.len() as u64).saturating_sub(wanted);
        self.extra_bytes.fetch_add(extra, Ordering::Relaxed);
        let parts: Vec<(Range<u64>, &[u8])> = if let Some(boundary) = boundary_of(&ct) {
            match parse_multipart(&body, &boundary) {
                Some(p) => p,
                None => return Ok(None),
            }
        } else {
            match cr.as_deref().and_then(parse_content_range) {
                Some((a, b, _)) if (b - a + 1) as usize == body.len() => {
                    vec![(a..b + 1, &body[..])]
                }
                _ => return Ok(None),
            }
        };
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let Some((pr, data)) = parts
                .iter()
                .find(|(pr, _)| pr.start <= r.start && r.end <= pr.end)
            else {
                return Ok(None);
            };
            let off = (r.start - pr.start) as usize;
            out.push(data[off..off + (r.end - r.start) as usize].to_vec());
        }
        Ok(Some(out))
    }

    /// A multi-range request answered with the whole object: single ranges from now on;
    /// the body kept (later ranges of this pack are cut from it) if the head sizes it and
    /// it is no larger, and the ranges taken from it.
    fn multi_ignored(
        &self,
        url: &str,
        resp: ureq::http::Response<ureq::Body>,
        ranges: &[Range<u64>],
    ) -> Result<Option<Vec<Vec<u8>>>, SyncError> {
        self.multi.store(MULTI_NO, Ordering::Relaxed);
        if !whole_fits(content_length(&resp), self.signed_size(url)) {
            return Ok(None);
        }
        let limit = self.signed_size(url).unwrap_or(0);
        let body = read_capped(url, resp, limit)?;
        if body.len() as u64 > limit {
            return Ok(None);
        }
        self.ignores_ranges.store(true, Ordering::Relaxed);
        if (body.len() as u64) < ranges.last().map_or(0, |r| r.end) {
            return Ok(None);
        }
        let wanted: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        let extra = (body.len() as u64).saturating_sub(wanted);
        self.extra_bytes.fetch_add(extra, Ordering::Relaxed);
        let parts = ranges
            .iter()
            .map(|r| body[r.start as usize..r.end as usize].to_vec())
            .collect();
        self.remember_whole(url, body);
        Ok(Some(parts))
    }
}

/// The TLS settings of a reader: the CA certificates it trusts (`--ca`, else the system's
/// bundle, else Mozilla's roots) and the client certificate it shows, if any.
/// The TLS settings of `opts` for a ureq agent: its CA certificates (else the system's,
/// else Mozilla's) and its client certificate (the agent's client of the coordinator uses
/// them too).
pub fn tls_config(opts: &HttpOptions) -> Result<ureq::tls::TlsConfig, SyncError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    // Without --ca: the system's CA bundle, where there is one, else Mozilla's roots.
    let system = if opts.ca_pem.is_none() {
        SYSTEM_CA_BUNDLES.iter().find_map(|p| std::fs::read(p).ok())
    } else {
        None
    };
    if let Some(pem) = opts.ca_pem.as_ref().or(system.as_ref()) {
        let mut certs: Vec<ureq::tls::Certificate<'static>> = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(SyncError::Credentials {
                        what: "CA certificates",
                        detail: e.to_string(),
                    });
                }
            }
        }
        if certs.is_empty() {
            return Err(SyncError::Credentials {
                what: "CA certificates",
                detail: "no certificate in the PEM file".into(),
            });
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    if let Some((cert_pem, key_pem)) = &opts.client_cert_pem {
        let chain = ureq::tls::parse_pem(cert_pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SyncError::Credentials {
                what: "client certificate",
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(SyncError::Credentials {
                what: "client certificate",
                detail: "no certificate in the PEM file".into(),
            });
        }
        let key = ureq::tls::PrivateKey::from_pem(key_pem).map_err(|e| SyncError::Credentials {
            what: "client key",
            detail: e.to_string(),
        })?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(tls.build())
}

/// A response's body, at most `limit + 1` bytes of it (one more than allowed shows that
/// it is too long).
fn read_capped(
    url: &str,
    resp: ureq::http::Response<ureq::Body>,
    limit: u64,
) -> Result<Vec<u8>, SyncError> {
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| read_err(url, e))?;
    Ok(body)
}

impl StoreReader for HttpStoreReader {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        let key = head_key(tree)?;
        let url = self.url(&key);
        self.retrying(|| {
            let mut headers = vec![("Cache-Control", "no-cache")];
            if let Some(tag) = if_none_match {
                headers.push(("If-None-Match", tag));
            }
            let resp = self.get(&url, &headers)?;
            match resp.status().as_u16() {
                200 => {
                    let etag = header(&resp, "etag");
                    let mut bytes = Vec::new();
                    resp.into_body()
                        .into_reader()
                        .take(pulpdist_format::MAX_HEAD_SIZE as u64 + 1)
                        .read_to_end(&mut bytes)
                        .map_err(|e| read_err(&url, e))?;
                    Ok(HeadFetch::Found { bytes, etag })
                }
                304 => Ok(HeadFetch::NotModified),
                404 => Ok(HeadFetch::Missing),
                s => Err(status_err(&url, s)),
            }
        })
    }

    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        if !self.ignores_ranges.load(Ordering::Relaxed) {
            return self.fetch(&pack.object_key(), Some(range), None);
        }
        // An origin that ignores Range: one whole copy per pack, ranges cut from it.
        let url = self.url(&pack.object_key());
        let cached = self
            .whole
            .lock()
            .ok()
            .and_then(|w| w.iter().find(|(u, _)| *u == url).map(|(_, b)| b.clone()));
        let body = match cached {
            Some(b) => {
                self.saved.fetch_add(1, Ordering::Relaxed);
                self.saved_bytes
                    .fetch_add(range.end - range.start, Ordering::Relaxed);
                b
            }
            None if self.signed_size(&url).is_none() => {
                // Not sized by the head: only this range is read from the body.
                return self.fetch(&pack.object_key(), Some(range), None);
            }
            None => {
                let all = self.fetch(&pack.object_key(), None, self.signed_size(&url))?;
                self.extra_bytes.fetch_add(
                    (all.len() as u64).saturating_sub(range.end - range.start),
                    Ordering::Relaxed,
                );
                self.remember_whole(&url, all)
            }
        };
        match body.get(range.start as usize..range.end as usize) {
            Some(s) => Ok(s.to_vec()),
            None => Err(SyncError::Short {
                store: self.base.clone(),
                object: self.url(&pack.object_key()),
                got: body.len() as u64,
                wanted: range.end,
            }),
        }
    }

    fn get_ranges(&self, pack: &PackId, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, SyncError> {
        let mut out = Vec::with_capacity(ranges.len());
        let mut requests = 0u64;
        for batch in ranges.chunks(MULTI_BATCH) {
            if self.multi_range() && batch.len() > 1 {
                requests += 1;
                match self.try_multi(pack, batch) {
                    Ok(Some(parts)) => {
                        self.multi
                            .compare_exchange(
                                MULTI_UNKNOWN,
                                MULTI_OK,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            )
                            .ok();
                        out.extend(parts);
                        continue;
                    }
                    Ok(None) => {
                        self.multi.store(MULTI_NO, Ordering::Relaxed);
                    }
                    Err(e) if e.is_temporary() => {}
                    Err(e) => return Err(e),
                }
            }
            for r in batch {
                requests += 1;
                out.push(self.get_range(pack, r.clone())?);
            }
        }
        self.extra_requests
            .fetch_add(requests.saturating_sub(1), Ordering::Relaxed);
        Ok(out)
    }

    fn multi_range(&self) -> bool {
        self.opts.multi_range && self.multi.load(Ordering::Relaxed) != MULTI_NO
    }

    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        self.fetch(&pack.object_key(), None, Some(size))
    }

    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        let url = self.url(&pack.object_key());
        self.retrying(|| {
            let resp = self
                .agent
                .head(&url)
                .call()
                .map_err(|e| transport(&url, e))?;
            match resp.status().as_u16() {
                200 => content_length(&resp).ok_or_else(|| {
                    mismatch(&url, "no Content-Length in the answer to HEAD".into())
                }),
                404 => Err(SyncError::NotFound {
                    store: self.base.clone(),
                    object: url.clone(),
                }),
                s => Err(status_err(&url, s)),
            }
        })
    }

    fn expect_sizes(&self, sizes: &std::collections::HashMap<PackId, u64>) {
        if let Ok(mut m) = self.sizes.lock() {
            m.extend(sizes.iter().map(|(p, s)| (self.url(&p.object_key()), *s)));
        }
    }

    fn overhead(&self) -> Overhead {
        Overhead {
            requests: self.extra_requests.load(Ordering::Relaxed),
            bytes: self.extra_bytes.load(Ordering::Relaxed),
            saved: self.saved.load(Ordering::Relaxed),
            saved_bytes: self.saved_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Whether a whole object of `len` bytes (its Content-Length, if given) may be kept in
/// memory: only an object the verified head sizes, and no larger than that. Of any other,
/// only the range asked for is read.
fn whole_fits(len: Option<u64>, signed: Option<u64>) -> bool {
    signed.is_some_and(|s| len.is_none_or(|l| l <= s))
}

fn content_length(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The store answered, but not with the object the signed head describes (another size,
/// fewer bytes than its range): a verification failure, not a transport error.
fn mismatch(url: &str, detail: String) -> SyncError {
    SyncError::Mismatch {
        object: url.to_string(),
        detail,
    }
}

fn http_err(url: &str, status: u16, detail: String, temporary: bool) -> SyncError {
    SyncError::Http {
        url: url.to_string(),
        status: Some(status),
        detail,
        temporary,
    }
}

fn status_err(url: &str, status: u16) -> SyncError {
    let temporary = status >= 500 || status == 408 || status == 429;
    http_err(url, status, format!("HTTP status {status}"), temporary)
}

fn read_err(url: &str, e: std::io::Error) -> SyncError {
    SyncError::Http {
        url: url.to_string(),
        status: None,
        detail: format!("reading the body: {e}"),
        temporary: true,
    }
}

fn transport(url: &str, e: ureq::Error) -> SyncError {
    let temporary = match &e {
        ureq::Error::BadUri(_)
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::TooManyRedirects
        | ureq::Error::RequireHttpsOnly(_) => false,
        // A TLS handshake refused (untrusted or mismatched certificate) will not pass by
        // waiting; rustls reports it as invalid data.
        ureq::Error::Io(io) => {
            io.kind() != std::io::ErrorKind::InvalidData
                || io
                    .get_ref()
                    .is_none_or(|inner| inner.downcast_ref::<rustls::Error>().is_none())
        }
        _ => true,
    };
    SyncError::Http {
        url: url.to_string(),
        status: None,
        detail: e.to_string(),
        temporary,
    }
}

/// Parses `bytes a-b/total` (total may be `*`).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    if b < a {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    Some((a, b, total))
}

fn boundary_of(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Splits a `multipart/byteranges` body into its parts, each by its Content-Range. The
/// data of a part is taken by length, so a boundary string inside the data does no harm.
pub(crate) fn parse_multipart<'a>(
    body: &'a [u8],
    boundary: &str,
) -> Option<Vec<(Range<u64>, &'a [u8])>> {
    let delim = format!("--{boundary}");
    let find = |from: usize, pat: &[u8]| {
        body.get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| p + from)
    };
    let mut pos = find(0, delim.as_bytes())? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2)? == b"--" {
            return Some(parts);
        }
        pos = find(pos, b"\r\n")? + 2;
        let headers_end = find(pos, b"\r\n\r\n")?;
        let headers = std::str::from_utf8(&body[pos..headers_end]).ok()?;
        let cr = headers.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-range")
                .then_some(v.trim())
        })?;
        let (a, b, _) = parse_content_range(cr)?;
        let start = headers_end + 4;
        let len = usize::try_from(b - a + 1).ok()?;
        let data = body.get(start..start.checked_add(len)?)?;
        parts.push((a..b + 1, data));
        pos = start + len;
        pos = find(pos, delim.as_bytes())? + delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }

    #[test]
    fn multipart_by_length() {
        let b = "XyZ";
        // The second part's data contains the boundary itself.
        let body = format!(
            "--{b}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-2/10\r\n\r\nabc\r\n--{b}\r\ncontent-range: bytes 5-9/10\r\n\r\n--XyZ\r\n--{b}--\r\n"
        );
        let parts = parse_multipart(body.as_bytes(), b).expect("parses");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], (0..3, &b"abc"[..]));
        assert_eq!(parts[1], (5..10, &b"--XyZ"[..]));
        assert!(parse_multipart(b"garbage", b).is_none());
        assert!(parse_multipart(&body.as_bytes()[..60], b).is_none());
        assert_eq!(
            boundary_of("multipart/byteranges; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary_of("application/octet-stream"), None);
    }
}
