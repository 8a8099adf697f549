//! `serve`: a read-only HTTP server for a local store (hyper 1, tokio).
//!
//! It answers GET and HEAD for `heads/<tree>` and `packs/<id>.pack`, and nothing else but
//! `/metrics`: a path is served only if it parses as one of those names, so no request can
//! reach a file outside them (no `..`, no percent-encoding, no symlinked siblings).
//! Single and multiple byte ranges (`multipart/byteranges`), 416 for unsatisfiable ones,
//! strong ETags with `If-None-Match` (304), and caching headers a CDN can act on: packs are
//! immutable and named by a random id, so they may be kept forever; a head changes with
//! every version and is cached only briefly. Bodies are streamed from the file.
//!
//! The caller owns the runtime and the listener; [`serve`] runs until `shutdown` resolves,
//! then stops accepting and lets open requests finish.

mod authz;
mod files;
mod limits;
mod metrics;
mod range;
mod reach;
pub mod tls;

pub use authz::AuthzError;

/// The parsers and walks the fuzz targets drive (`fuzz/`); not an API for other crates.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::authz::{Authz, Identity};
    pub use crate::range::{none_match, resolve, RangeAnswer};
    pub use crate::reach::Reach;
}

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::SeekFrom;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;

use pulpdist_format::PackId;

use authz::{Authz, Grant, Identity};
pub use metrics::{Kind, Metrics};
use range::RangeAnswer;

/// The response body type: bytes in memory or streamed from a file.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The store directory.
    pub store: PathBuf,
    /// `max-age` of a tree head, in seconds: how stale a CDN or client cache may serve it.
    pub head_max_age: u32,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// On shutdown, how long open requests may take to finish.
    pub drain_timeout: Duration,
    /// The authorization file: who may read which trees. `None`: everything is public.
    pub authz: Option<PathBuf>,
    /// The publishers' keys: with `authz`, a tree's packs are reachable only through a head
    /// one of them signed. `None`: heads are taken as the store holds them.
    pub trusted: Option<pulpdist_format::TrustedKeys>,
    /// Serve HTTPS with these files (client certificates if a client CA is given).
    pub tls: Option<tls::TlsFiles>,
    /// Open connections at most; more are closed as they are accepted.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_per_address: usize,
    /// How long a response may wait for a client that stopped reading before its
    /// connection is closed.
    pub stall_timeout: Duration,
}

impl ServeOptions {
    /// Defaults: heads cached 10 s, 30 s for request headers, 30 s to drain on shutdown,
    /// 512 connections (32 per address), 60 s for a client that stopped reading.
    pub fn new(store: impl Into<PathBuf>) -> Self {
        ServeOptions {
            store: store.into(),
            head_max_age: 10,
            header_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            authz: None,
            trusted: None,
            tls: None,
            max_connections: 512,
            max_per_address: 32,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

pub use pulpdist_format::pack::PACK_CACHE_CONTROL;
const CHUNK: usize = 256 * 1024;
const OCTETS: &str = "application/octet-stream";

/// Why the server could not start (or reload).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The authorization file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The authorization file is malformed.
    #[error("{path}: {source}")]
    Authz {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: AuthzError,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// The request handler, shared by all connections.
#[derive(Debug)]
pub struct Handler {
    opts: ServeOptions,
    metrics: Arc<Metrics>,
    boundaries: AtomicU64,
    access: Option<Access>,
    tls: Option<RwLock<tls::TlsSetup>>,
    /// Counts TLS reloads: open connections re-check their client certificate on each.
    reloads: tokio::sync::watch::Sender<u64>,
}

/// Per-tree access control: the authorization file (reloaded when it changes) and the
/// packs each tree reaches.
#[derive(Debug)]
struct Access {
    path: PathBuf,
    rules: RwLock<(Arc<Authz>, Option<FileStamp>)>,
    reach: Arc<reach::Reach>,
}

type FileStamp = (u64, u64, Option<SystemTime>);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some((md.ino(), md.len(), md.modified().ok()))
}

fn load_authz(path: &std::path::Path) -> Result<Authz, ServeError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            std::io::Read::take(f, authz::MAX_AUTHZ_SIZE as u64 + 1).read_to_string(&mut text)
        })
        .map_err(|source| ServeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Authz::parse(&text).map_err(|source| ServeError::Authz {
        path: path.to_path_buf(),
        source,
    })
}

use std::io::Read as _;

impl Access {
    /// The rules in force (no file access: reloading happens off the request path).
    fn rules(&self) -> Arc<Authz> {
        self.rules.read().map(|r| r.0.clone()).unwrap_or_default()
    }

    /// Reloads the file if it changed since it was last read.
    fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        if self.rules.read().map(|r| r.1 != now).unwrap_or(false) {
            self.reload();
        }
    }

    fn reload(&self) {
        let before = stamp(&self.path);
        match load_authz(&self.path) {
            Ok(a) => {
                eprintln!(
                    "pulpdist serve: loaded {} ({} rules)",
                    self.path.display(),
                    a.len()
                );
                if let Ok(mut r) = self.rules.write() {
                    *r = (Arc::new(a), before);
                }
            }
            Err(e) => {
                // Keep the rules in force; try again when the file changes once more.
                eprintln!("pulpdist serve: keeping the previous rules: {e}");
                if let Ok(mut r) = self.rules.write() {
                    r.1 = before;
                }
            }
        }
    }
}

/// Who is asking: whether a client certificate was verified, and its identities.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// A client certificate was presented and verified.
    pub verified: bool,
    /// Certificate identities.
    pub identities: Vec<Identity>,
}

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A tree head (the key is `heads/<tree>`).
    Head(String),
    /// A pack.
    Pack(PackId),
    /// The metrics page.
    Metrics,
    /// Nothing we serve.
    Other,
}

/// Parses a request path. Only canonical names are accepted: anything else is [`Target::Other`].
pub fn classify(path: &str) -> Target {
    let Some(p) = path.strip_prefix('/') else {
        return Target::Other;
    };
    if p == "metrics" {
        return Target::Metrics;
    }
    if let Some(tree) = p.strip_prefix("heads/") {
        if pulpdist_format::validate_tree_name(tree).is_ok() {
            return Target::Head(p.to_string());
        }
    }
    if let Some(hex) = p
        .strip_prefix("packs/")
        .and_then(|h| h.strip_suffix(".pack"))
    {
        if let Ok(id) = hex.parse::<PackId>() {
            if id.to_hex() == hex {
                return Target::Pack(id);
            }
        }
    }
    Target::Other
}

enum Object {
    Memory(Bytes),
    File(tokio::fs::File, u64),
}

impl Object {
    fn len(&self) -> u64 {
        match self {
            Object::Memory(b) => b.len() as u64,
            Object::File(_, n) => *n,
        }
    }
}

enum Seg {
    Bytes(Bytes),
    Range(Range<u64>),
}

impl Handler {
    /// A handler for `opts.store`; loads the authorization file if there is one.
    pub fn new(opts: ServeOptions) -> Result<Self, ServeError> {
        let access = match &opts.authz {
            None => None,
            Some(path) => {
                let rules = load_authz(path)?;
                Some(Access {
                    path: path.clone(),
                    rules: RwLock::new((Arc::new(rules), stamp(path))),
                    reach: Arc::new(reach::Reach::default()),
                })
            }
        };
        let tls = match &opts.tls {
            Some(files) => Some(RwLock::new(tls::server_config(files)?)),
            None => None,
        };
        Ok(Handler {
            opts,
            metrics: Arc::new(Metrics::default()),
            boundaries: AtomicU64::new(0),
            access,
            tls,
            reloads: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Reloads the authorization file if it changed (the server polls this once a second,
    /// on a blocking thread).
    pub fn reload_if_changed(&self) {
        if let Some(a) = &self.access {
            a.reload_if_changed();
        }
    }

    /// Whether connections start with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reloads the authorization file, and the TLS certificates and revocation lists, now
    /// (SIGHUP). What fails to load leaves what is in force in place.
    pub fn reload(&self) {
        if let Some(a) = &self.access {
            a.reload();
        }
        if let (Some(lock), Some(files)) = (&self.tls, &self.opts.tls) {
            match tls::server_config(files) {
                Ok(c) => {
                    if let Ok(mut w) = lock.write() {
                        *w = c;
                    }
                    eprintln!("pulpdist serve: reloaded TLS certificates and revocation lists");
                    // Open connections re-check their certificate against the new lists.
                    self.reloads.send_modify(|n| *n += 1);
                }
                Err(e) => eprintln!("pulpdist serve: keeping the TLS configuration in force: {e}"),
            }
        }
    }

    fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls
            .as_ref()
            .and_then(|l| l.read().ok().map(|c| c.config.clone()))
    }

    /// Whether a client certificate chain accepted earlier passes the verifier in force
    /// (after a reload: not revoked by a CRL loaded since).
    fn still_valid(&self, chain: &[rustls::pki_types::CertificateDer<'static>]) -> bool {
        self.tls
            .as_ref()
            .and_then(|l| l.read().ok().map(|c| c.still_valid(chain)))
            .unwrap_or(true)
    }

    /// Whether `peer` may read `target`. Without an authorization file everything is public.
    async fn allowed(&self, peer: &Peer, target: &Target) -> bool {
        let Some(access) = &self.access else {
            return true;
        };
        let grant: Grant = if peer.verified {
            access.rules().grant(&peer.identities)
        } else {
            Grant::default()
        };
        match target {
            Target::Other => true,
            Target::Metrics => grant.all,
            Target::Head(key) => grant.allows(key.trim_start_matches("heads/")),
            Target::Pack(id) => {
                if grant.all {
                    return true;
                }
                for tree in &grant.trees {
                    let (root, tree_name) = (self.opts.store.clone(), tree.clone());
                    let reach = access.reach.clone();
                    let trusted = self.opts.trusted.clone();
                    // Walking an index reads files: off the async threads.
                    let packs = tokio::task::spawn_blocking(move || {
                        reach.packs(&root, &tree_name, trusted.as_ref())
                    })
                    .await;
                    if packs.ok().flatten().is_some_and(|p| p.contains(id)) {
                        return true;
                    }
                }
                false
            }
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Answers one request from `peer`.
    pub async fn handle<B>(&self, req: Request<B>, peer: &Peer) -> Response<Body> {
        let in_flight = self.metrics.start();
        let mut target = classify(req.uri().path());
        if !self.allowed(peer, &target).await {
            // Exactly the answer for an object that does not exist.
            target = Target::Other;
        }
        let kind = match &target {
            Target::Head(_) => Kind::Head,
            Target::Pack(_) => Kind::Pack,
            Target::Metrics => Kind::Metrics,
            Target::Other => Kind::Other,
        };
        let method = match *req.method() {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            _ => {
                let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                self.metrics.response(kind, "other", r.status().as_u16());
                return r;
            }
        };
        let resp = self.answer(&req, target, in_flight).await;
        self.metrics.response(kind, method, resp.status().as_u16());
        if method == "HEAD" {
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, empty());
        }
        resp
    }

    async fn answer<B>(
        &self,
        req: &Request<B>,
        target: Target,
        in_flight: metrics::InFlight,
    ) -> Response<Body> {
        let (key, etag, cache) = match &target {
            Target::Metrics => {
                let mut r = Response::new(full(Bytes::from(self.metrics.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return r;
            }
            Target::Other => return plain(StatusCode::NOT_FOUND, "not found\n"),
            Target::Head(key) => (key.clone(), None, None),
            Target::Pack(id) => (
                id.object_key(),
                Some(format!("\"{}\"", id.to_hex())),
                Some(PACK_CACHE_CONTROL.to_string()),
            ),
        };
        let path = self.opts.store.join(&key);
        let (object, etag, cache) = match &target {
            Target::Head(_) => match read_head(self.opts.store.clone(), key.clone()).await {
                Ok(b) => {
                    let tag = blake3::hash(&b).to_hex();
                    (
                        Object::Memory(Bytes::from(b)),
                        format!("\"{}\"", &tag[..32]),
                        format!("public, max-age={}", self.opts.head_max_age),
                    )
                }
                Err(e) => return io_error(&path, e),
            },
            _ => {
                let (root, k) = (self.opts.store.clone(), key.clone());
                let opened = tokio::task::spawn_blocking(move || files::open_regular(&root, &k))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                match opened {
                    Ok((f, len)) => (
                        Object::File(tokio::fs::File::from_std(f), len),
                        etag.unwrap_or_default(),
                        cache.unwrap_or_default(),
                    ),
                    Err(e) => return io_error(&path, e),
                }
            }
        };
        let mut builder = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, &cache)
            .header(header::ACCEPT_RANGES, "bytes");
        if let Some(inm) = header_str(req, header::IF_NONE_MATCH) {
            if range::none_match(inm, &etag) {
                return builder
                    .status(StatusCode::NOT_MODIFIED)
                    .body(empty())
                    .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"));
            }
        }
        let len = object.len();
        // If-Range: ranges only if the client's copy is still this one.
        let if_range_ok =
            header_str(req, header::IF_RANGE).is_none_or(|v| v.trim() == etag.as_str());
        let answer = if if_range_ok {
            range::resolve(header_str(req, header::RANGE), len)
        } else {
            RangeAnswer::Whole
        };
        let (status, segs, body_len) = match answer {
            RangeAnswer::Whole => {
                builder = builder.header(header::CONTENT_TYPE, OCTETS);
                (StatusCode::OK, vec![Seg::Range(0..len)], len)
            }
            RangeAnswer::Unsatisfiable => {
                return builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(empty())
                    .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"));
            }
            RangeAnswer::Partial(ranges) if ranges.len() == 1 => {
                let r = ranges[0].clone();
                builder = builder
                    .header(header::CONTENT_TYPE, OCTETS)
                    .header(header::CONTENT_RANGE, range::content_range(&r, len));
                let n = r.end - r.start;
                (StatusCode::PARTIAL_CONTENT, vec![Seg::Range(r)], n)
            }
            RangeAnswer::Partial(ranges) => {
                let n = self.boundaries.fetch_add(1, Ordering::Relaxed);
                let boundary = format!(
                    "pulpdist-{}",
                    &blake3::hash(format!("{etag}{n}{}", std::process::id()).as_bytes()).to_hex()
                        [..24]
                );
                let (heads, tail) = range::multipart_frame(&ranges, len, &boundary, OCTETS);
                let mut segs = Vec::new();
                let mut total = tail.len() as u64;
                for (h, r) in heads.into_iter().zip(ranges) {
                    total += h.len() as u64 + (r.end - r.start);
                    segs.push(Seg::Bytes(Bytes::from(h)));
                    segs.push(Seg::Range(r));
                }
                segs.push(Seg::Bytes(Bytes::from(tail)));
                builder = builder.header(
                    header::CONTENT_TYPE,
                    format!("multipart/byteranges; boundary={boundary}"),
                );
                (StatusCode::PARTIAL_CONTENT, segs, total)
            }
        };
        let body = stream_body(object, segs, self.metrics.clone(), in_flight);
        builder
            .status(status)
            .header(header::CONTENT_LENGTH, body_len)
            .body(body)
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "error\n"))
    }
}

fn header_str<B>(req: &Request<B>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A head, read as [`files::read_head`] reads it, off the async threads.
async fn read_head(root: std::path::PathBuf, key: String) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || files::read_head(&root, &key))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> Response<Body> {
    if e.kind() == std::io::ErrorKind::NotFound {
        plain(StatusCode::NOT_FOUND, "not found\n")
    } else {
        eprintln!("pulpdist serve: {}: {e}", path.display());
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the object\n",
        )
    }
}

struct BodyState {
    object: Object,
    segs: VecDeque<Seg>,
    pos: Option<u64>,
    metrics: Arc<Metrics>,
    _in_flight: metrics::InFlight,
}

/// Streams the segments: bytes as they are, ranges read from the object 256 KiB at a time.
fn stream_body(
    object: Object,
    segs: Vec<Seg>,
    metrics: Arc<Metrics>,
    in_flight: metrics::InFlight,
) -> Body {
    let state = BodyState {
        object,
        segs: segs.into(),
        pos: None,
        metrics,
        _in_flight: in_flight,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let seg = st.segs.front_mut()?;
            let data = match seg {
                Seg::Bytes(b) => {
                    let b = std::mem::take(b);
                    st.segs.pop_front();
                    b
                }
                Seg::Range(r) if r.start >= r.end => {
                    st.segs.pop_front();
                    continue;
                }
                Seg::Range(r) => {
                    let n = (r.end - r.start).min(CHUNK as u64) as usize;
                    let start = r.start;
                    r.start += n as u64;
                    let read = match &mut st.object {
                        Object::Memory(b) => Ok(b.slice(start as usize..start as usize + n)),
                        Object::File(f, _) => read_at(f, &mut st.pos, start, n)
                            .await
                            .map(BytesMut::freeze),
                    };
                    match read {
                        Ok(b) => b,
                        Err(e) => {
                            // End the body here: the client sees it short and retries.
                            st.segs.clear();
                            return Some((Err(e), st));
                        }
                    }
                }
            };
            if data.is_empty() {
                continue;
            }
            st.metrics.sent(data.len() as u64);
            return Some((Ok(Frame::data(data)), st));
        }
    });
    StreamBody::new(stream).boxed()
}

async fn read_at(
    f: &mut tokio::fs::File,
    pos: &mut Option<u64>,
    start: u64,
    n: usize,
) -> std::io::Result<BytesMut> {
    if *pos != Some(start) {
        f.seek(SeekFrom::Start(start)).await?;
    }
    let mut buf = BytesMut::zeroed(n);
    f.read_exact(&mut buf).await?;
    *pos = Some(start + n as u64);
    Ok(buf)
}

/// Serves the store on `listener` until `shutdown` resolves, then drains open requests
/// (up to the handler's drain timeout). Connections use HTTP/1.1 keep-alive; with TLS,
/// every connection starts with a TLS handshake (bounded by the header timeout), and the
/// client certificate, if the configuration asks for one, names the peer.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
) {
    let drain = handler.opts.drain_timeout;
    let header_timeout = handler.opts.header_timeout;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // The authorization file is watched from here, not from requests: a stat a second (and
    // a read when it changed), on a blocking thread.
    let watcher = handler.access.is_some().then(|| {
        let h = handler.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let h = h.clone();
                let _ = tokio::task::spawn_blocking(move || h.reload_if_changed()).await;
            }
        })
    });
    let slots = limits::Slots::new(handler.opts.max_connections, handler.opts.max_per_address);
    let stall = handler.opts.stall_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, slot) = match accepted {
                    Ok((s, addr)) => match slots.take(addr.ip()) {
                        Some(slot) => (s, slot),
                        None => {
                            // Full, or this address holds its share: closed at once, so a
                            // flood of idle connections cannot starve other clients.
                            handler.metrics.refused_connection();
                            drop(s);
                            continue;
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        eprintln!("pulpdist serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                handler.metrics.connection();
                let h = handler.clone();
                let watcher = graceful.watcher();
                let acceptor = h.tls_config().map(tokio_rustls::TlsAcceptor::from);
                let stream = limits::StallGuard::new(stream, stall, handler.metrics.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match acceptor {
                        None => {
                            run_connection(stream, h, Peer::default(), header_timeout, watcher, None).await;
                        }
                        Some(acceptor) => {
                            let Ok(Ok(tls)) =
                                tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                            else {
                                // No certificate, an untrusted or revoked one, or no handshake.
                                h.metrics.tls_refused();
                                return;
                            };
                            let chain: Vec<rustls::pki_types::CertificateDer<'static>> = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                                .unwrap_or_default();
                            let cert = chain.first();
                            let identities = cert.and_then(tls::identities);
                            if cert.is_some() && identities.is_none() {
                                eprintln!("pulpdist serve: a client certificate with several subject CNs (or unreadable) is granted nothing");
                            }
                            let peer = Peer {
                                verified: identities.is_some(),
                                identities: identities.unwrap_or_default(),
                            };
                            let recheck = (!chain.is_empty()).then(|| (h.reloads.subscribe(), chain));
                            run_connection(tls, h, peer, header_timeout, watcher, recheck).await;
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if let Some(w) = watcher {
        w.abort();
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {}
    }
}

/// Serves HTTP/1.1 on one connection until it closes or a graceful shutdown ends it.
/// With `recheck` (a client certificate chain, and the reload counter), the connection is
/// closed as soon as a reload revokes its certificate: a revoked site does not keep reading
/// over a connection it opened before.
async fn run_connection<IO>(
    io: IO,
    handler: Arc<Handler>,
    peer: Peer,
    header_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
    recheck: Option<(
        tokio::sync::watch::Receiver<u64>,
        Vec<rustls::pki_types::CertificateDer<'static>>,
    )>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let h = handler.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (h, peer) = (h.clone(), peer.clone());
        async move { Ok::<_, Infallible>(h.handle(req, &peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    let Some((mut reloads, chain)) = recheck else {
        let _ = conn.await;
        return;
    };
    tokio::pin!(conn);
    loop {
        tokio::select! {
            _ = &mut conn => return,
            changed = reloads.changed() => {
                if changed.is_err() {
                    let _ = conn.await;
                    return;
                }
                if !handler.still_valid(&chain) {
                    handler.metrics.revoked_closed();
                    eprintln!("pulpdist serve: closed a connection whose client certificate is now revoked");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_names() {
        let id = PackId::derived(b"x");
        assert_eq!(
            classify(&format!("/packs/{}.pack", id.to_hex())),
            Target::Pack(id)
        );
        assert_eq!(
            classify("/heads/debian"),
            Target::Head("heads/debian".into())
        );
        assert_eq!(classify("/metrics"), Target::Metrics);
        for bad in [
            "/heads/../packs",
            "/heads/",
            "/heads/a/b",
            "/heads/%2e%2e",
            "/packs/../heads/debian",
            &format!("/packs/{}.pack", id.to_hex().to_uppercase()),
            &format!("/packs/{}", id.to_hex()),
            "/locks/debian.lock",
            "/tmp/x",
            "heads/debian",
            "/",
        ] {
            assert_eq!(classify(bad), Target::Other, "{bad}");
        }
    }
}
