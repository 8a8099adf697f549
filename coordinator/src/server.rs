//! The coordinator's HTTPS API (hyper, rustls). Every connection presents a client
//! certificate from the network's CA; its identities make it an admin, a site, or nobody.
//! A site reads only its own assignment and writes only its own reports; anything else
//! gets the same 404 as a path that does not exist.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use pulpdist_network::{Report, MAX_REPORTS, MAX_REPORT_BODY};

use crate::Coordinator;

/// The longest a long-poll for an assignment is held.
const MAX_WAIT: u64 = 300;

/// The most connections held at once (an agent holds one; the rest are refused at once).
pub const MAX_CONNECTIONS: usize = 20_000;

/// The most connections from one address still in their TLS handshake: one address that
/// opens connections and sends nothing (or drips its handshake) takes at most this many of
/// the [`MAX_CONNECTIONS`], and the agents of every other address (and the ones of its own
/// address that finished their handshakes) are served. Agents behind one NAT reconnecting
/// at once past it are closed and retry with their backoff.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;

/// The most connections in their TLS handshake at once, from all addresses: many
/// addresses holding handshakes open take these, not the slots of the connections that
/// finished theirs (the agents already connected are served).
pub const MAX_HANDSHAKES: usize = 2048;

/// The longest a connection lives: then it is closed once its request is answered, so a
/// revoked certificate (or a replaced key) that keeps its connection busy is refused
/// within this time.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// The longest a TLS handshake may take (10,000 agents reconnecting at once after a
/// restart queue for the handshakes' CPU: 30 s, not less).
const SLOW_PEER: Duration = Duration::from_secs(30);

/// The longest a report body may take (an agent's batch is at most 512 kB: 35 kbit/s).
const SLOW_BODY: Duration = Duration::from_secs(120);

fn too_many(what: &str) -> Answer {
    error(StatusCode::TOO_MANY_REQUESTS, what)
}

/// Who is asking.
#[derive(Clone, Debug)]
enum Caller {
    /// The database could not say who it is (503, so that nobody takes it for "unknown").
    Unavailable,
    Admin,
    Site(String),
    Nobody,
    /// A site's name, past its ration of requests (429).
    Limited,
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(value: &impl serde::Serialize) -> Answer {
    match serde_json::to_vec(value) {
        Ok(b) => answer(StatusCode::OK, "application/json", b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, text: &str) -> Answer {
    answer(
        status,
        "application/json",
        serde_json::json!({ "error": text }).to_string(),
    )
}

fn not_found() -> Answer {
    error(StatusCode::NOT_FOUND, "not found")
}

/// The value of `key` in a query string.
fn param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The TLS configuration in force; replaced whole on a reload (new revocation lists).
pub type TlsInForce = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// Serves the API on `listener` until `shutdown` resolves; each connection's handshake
/// uses the configuration `tls` holds at that moment.
pub async fn serve(
    listener: TcpListener,
    coord: Arc<Coordinator>,
    tls: TlsInForce,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let handshakes = PerAddress::new(MAX_HANDSHAKES_PER_ADDRESS);
    let shaking = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // Over a cap: closed at once, before any handshake work.
                let Some(handshake) = handshakes.start(peer.ip()) else {
                    drop(stream);
                    continue;
                };
                let Ok(shake) = shaking.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let Ok(config) = tls.read().map(|c| c.clone()) else { continue };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let coord = coord.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let shaken = tokio::time::timeout(SLOW_PEER, acceptor.accept(stream)).await;
                    drop((handshake, shake));
                    let Ok(Ok(tls)) = shaken else {
                        return;
                    };
                    let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let identities: Vec<String> = cert
                        .and_then(pulpdist_serve::tls::identities)
                        .map(|ids| ids.iter().map(|i| i.to_string()).collect())
                        .unwrap_or_default();
                    // The certificate's key (a site is enrolled with it) and expiry.
                    let parsed = cert.and_then(|c| {
                        x509_parser::parse_x509_certificate(c.as_ref()).ok().map(|(_, x)| {
                            let spki = blake3::hash(x.public_key().raw).to_hex().to_string();
                            (spki, x.validity().not_after.timestamp())
                        })
                    });
                    let spki = parsed.as_ref().map(|(k, _)| k.clone()).unwrap_or_default();
                    let who = caller(&coord, &identities, &spki).await;
                    if let (Caller::Site(site), Some((_, at))) = (&who, parsed) {
                        coord.saw_certificate(site, at).await;
                    }
                    let service = hyper::service::service_fn(move |req| {
                        let (coord, identities, spki) = (coord.clone(), identities.clone(), spki.clone());
                        async move { Ok::<_, Infallible>(route(&coord, (&identities, &spki), req).await) }
                    });
                    // A client that sends no request, or half a header, is not held for ever;
                    // nor is any connection past its lifetime.
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(MAX_WAIT + 30), conn).await;
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

/// What the handshake cap counts by: an IPv4 address, or an IPv6 address's /64 (a host
/// holds a /64 and may pick any address in it).
fn address_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut o = v6.octets();
            o[8..].fill(0);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(o))
        }
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Connections counted by address ([`address_of`]), each address up to a limit.
#[derive(Clone)]
pub(crate) struct PerAddress {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    limit: usize,
}

/// One connection counted for its address until dropped.
pub(crate) struct AddressSlot {
    all: PerAddress,
    ip: std::net::IpAddr,
}

impl PerAddress {
    pub(crate) fn new(limit: usize) -> PerAddress {
        PerAddress {
            counts: Arc::default(),
            limit,
        }
    }

    /// Counts a connection from `ip`; `None` if its address has the limit already.
    pub(crate) fn start(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let ip = address_of(ip);
        let mut by_ip = self.counts.lock().ok()?;
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            all: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut by_ip) = self.all.counts.lock() {
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Who a certificate is: an admin, a site (only with the key the site was enrolled with),
/// or nobody.
async fn caller(coord: &Coordinator, identities: &[String], spki: &str) -> Caller {
    let site = {
        let held = coord.held.read().await;
        if held.network.is_admin(identities) {
            return Caller::Admin;
        }
        match held.network.site_of(identities) {
            Some(s) => s.to_string(),
            None => return Caller::Nobody,
        }
    };
    // Rationed by the site's name, whatever key it comes with: a refused key costs no
    // database query past the ration either.
    if !coord.allow_request(&site) {
        return Caller::Limited;
    }
    // Checked against the database once, then from memory (until a re-enrolment).
    let epoch = coord.enrolled_epoch();
    if coord.enrolled.lock().await.get(&site).map(String::as_str) == Some(spki) {
        return Caller::Site(site);
    }
    match coord.db.enrol(&site, spki, crate::now()).await {
        Ok(true) => {
            let mut known = coord.enrolled.lock().await;
            // Not if a re-enrolment cleared the memory since the database was read.
            if coord.enrolled_epoch() == epoch {
                known.insert(site.clone(), spki.to_string());
            }
            Caller::Site(site)
        }
        Ok(false) => {
            tracing::warn!(site = %site, "a certificate with another key than the site was enrolled with: refused (`pulpdist network reenrol` accepts the next one)");
            Caller::Nobody
        }
        Err(e) => {
            tracing::warn!("{e}");
            Caller::Unavailable
        }
    }
}

async fn route(
    coord: &Arc<Coordinator>,
    (identities, spki): (&[String], &str),
    req: Request<Incoming>,
) -> Answer {
    let who = caller(coord, identities, spki).await;
    let query = req.uri().query().map(str::to_string);
    let q = query.as_deref();
    let path = req.uri().path().to_string();
    if matches!(who, Caller::Limited) {
        return too_many("too many requests from this site; slow down");
    }
    if matches!(who, Caller::Unavailable) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not available; try again",
        );
    }
    match (req.method().clone(), path.as_str(), &who) {
        (Method::GET, "/api/v1/assignment", Caller::Site(site)) => {
            let after = param(q, "after").and_then(|v| v.parse().ok());
            let wait = param(q, "wait")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0u64);
            assignment(coord, site, after, wait.min(MAX_WAIT)).await
        }
        (Method::POST, "/api/v1/reports", Caller::Site(site)) => reports(coord, site, req).await,
        (Method::GET, "/api/v1/status", Caller::Admin) => match coord.status(q).await {
            Ok(rows) => json(&rows),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        (Method::GET, p, Caller::Admin)
            if p == "/api/v1/events"
                || p.starts_with("/api/v1/trees/")
                || p.starts_with("/api/v1/sites/") =>
        {
            match crate::dashboard::twin(coord, &p["/api/v1/".len()..]).await {
                Ok(Some(v)) => json(&v),
                Ok(None) => not_found(),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            }
        }
        (Method::DELETE, p, Caller::Admin)
            if p.strip_prefix("/api/v1/sites/")
                .and_then(|r| r.strip_suffix("/enrolment"))
                .is_some_and(|site| !site.is_empty()) =>
        {
            let site = p
                .strip_prefix("/api/v1/sites/")
                .and_then(|r| r.strip_suffix("/enrolment"))
                .unwrap_or_default();
            match coord.db.unenrol(site).await {
                Ok(had) => {
                    // This coordinator forgets the old key now; others within a second.
                    if let Err(e) = coord.refresh().await {
                        tracing::warn!("{e}");
                    }
                    json(&serde_json::json!({ "site": site, "was_enrolled": had }))
                }
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            }
        }
        (Method::GET, "/api/v1/network", Caller::Admin) => {
            let held = coord.held.read().await;
            answer(StatusCode::OK, "application/toml", held.text.clone())
        }
        (Method::PUT, "/api/v1/network", Caller::Admin) => put_network(coord, req).await,
        (Method::POST, "/api/v1/trigger", Caller::Admin) => match param(q, "tree") {
            Some(tree) if coord.held.read().await.network.trees.contains_key(tree) => {
                coord.push(tree).await;
                json(&serde_json::json!({ "tree": tree, "triggered": true }))
            }
            _ => not_found(),
        },
        _ => not_found(),
    }
}

/// A site's assignment; with `after` (the generation the agent holds), held until it
/// changes for this site or `wait` seconds pass (304). A change elsewhere (a push of a
/// tree the site does not carry, another site's assignment) does not answer the poll: a
/// push wakes only the sites that carry the tree.
async fn assignment(coord: &Coordinator, site: &str, after: Option<u64>, wait: u64) -> Answer {
    // Subscribed first: a change after the baseline below wakes the loop.
    let mut changes = coord.generation.subscribe();
    let Some(held) = coord.assignment(site).await else {
        return not_found();
    };
    // The baseline is the assignment of generation `known` only if that is current;
    // otherwise the agent is behind and is answered at once.
    if after != Some(held.revision) {
        return json(&held);
    }
    let Some(_waiting) = coord.long_poll(site) else {
        return too_many(&format!(
            "this site holds {} long-polls already",
            crate::MAX_POLLS_PER_SITE
        ));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return answer(StatusCode::NOT_MODIFIED, "application/json", ""),
        }
        let Some(now) = coord.assignment(site).await else {
            return not_found();
        };
        let mut same = now.clone();
        same.revision = held.revision;
        if same != held {
            return json(&now);
        }
    }
}

async fn reports(coord: &Coordinator, site: &str, req: Request<Incoming>) -> Answer {
    // What the agent's clock read when it sent them (Unix seconds), if it says: how far
    // it is off, measured when the headers arrived (not after a slow body).
    let skew = req
        .headers()
        .get(pulpdist_network::CLOCK_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|c| (-(1_i64 << 40)..(1_i64 << 40)).contains(c))
        .map(|c| c - crate::now());
    // A body that drips is not waited for.
    let read = tokio::time::timeout(
        SLOW_BODY,
        Limited::new(req.into_body(), MAX_REPORT_BODY).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a report body is at most {MAX_REPORT_BODY} bytes"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the report body took more than {} s", SLOW_BODY.as_secs()),
            )
        }
    };
    let reports: Vec<Report> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reports: {e}")),
    };
    let reports: Vec<Report> = reports.into_iter().map(bounded).collect();
    if reports.len() > MAX_REPORTS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("at most {MAX_REPORTS} reports a request"),
        );
    }
    if reports.is_empty() {
        return json(&serde_json::json!({ "accepted": 0, "dropped": 0 }));
    }
    // Only the site's own trees: a report for a tree no longer assigned to it (the
    // network changed during its run) is dropped, and the others are kept.
    let assigned = coord.assignment(site).await.unwrap_or_default();
    // Reports are rationed by what the site's schedules make: two runs per schedule
    // period of each tree, and one a second more.
    let rate = 1.0
        + 2.0
            * assigned
                .trees
                .iter()
                .map(|t| 1.0 / t.schedule_secs.max(1) as f64)
                .sum::<f64>();
    if !coord.allow_reports(site, reports.len(), rate) {
        return too_many("too many reports from this site; the rest wait in its queue");
    }
    let (mine, dropped): (Vec<Report>, Vec<Report>) = reports
        .into_iter()
        .partition(|r| assigned.trees.iter().any(|t| t.tree == r.tree));
    match coord.add_reports(site, &mine, skew).await {
        Ok(()) => json(&serde_json::json!({ "accepted": mine.len(), "dropped": dropped.len() })),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// A report with its texts cut to sizes a page can show and its numbers to what a run can
/// have (a hostile site's values overflow no sum and flood no page).
fn bounded(mut r: Report) -> Report {
    let cut = |s: &mut String, max: usize| {
        if s.len() > max {
            let mut at = max;
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.truncate(at);
        }
    };
    const BIG: u64 = 1 << 48;
    if let Some(e) = r.error.as_mut() {
        cut(e, pulpdist_network::MAX_ERROR_TEXT);
    }
    for s in [r.root.as_mut(), r.head_store.as_mut()]
        .into_iter()
        .flatten()
    {
        cut(s, 1024);
    }
    cut(&mut r.agent_version, 64);
    cut(&mut r.id, 64);
    for n in [
        &mut r.bytes_fetched,
        &mut r.bytes_reused,
        &mut r.requests,
        &mut r.duration_ms,
        &mut r.rsync_files,
    ] {
        *n = (*n).min(BIG);
    }
    for v in [r.from_version.as_mut(), r.to_version.as_mut()]
        .into_iter()
        .flatten()
    {
        *v = (*v).min(BIG);
    }
    r.started = r.started.clamp(0, BIG as i64);
    r
}

async fn put_network(coord: &Coordinator, req: Request<Incoming>) -> Answer {
    let body = match Limited::new(req.into_body(), pulpdist_config_limit())
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "network file too large"),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the network file is not UTF-8");
    };
    match coord.apply(text).await {
        Ok((revision, changed)) => {
            json(&serde_json::json!({ "revision": revision, "changed": changed }))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn pulpdist_config_limit() -> usize {
    1 << 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_cap_counts_an_ipv6_host_by_its_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("ip");
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_of(a), address_of(b));
        assert_ne!(address_of(a), address_of(c));
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            address_of(mapped),
            "192.0.2.7".parse::<std::net::IpAddr>().expect("ip")
        );
    }

    #[test]
    fn a_hostile_report_is_cut_to_size() {
        let r = Report {
            id: "i".repeat(1000),
            tree: "t".into(),
            outcome: pulpdist_network::Outcome::Failed,
            started: i64::MIN,
            from_version: Some(u64::MAX),
            to_version: Some(u64::MAX),
            root: Some("r".repeat(5000)),
            head_store: None,
            bytes_fetched: u64::MAX,
            bytes_reused: 0,
            requests: u64::MAX,
            duration_ms: 1,
            rsync_files: 0,
            error: Some("é".repeat(10_000)),
            agent_version: "v".repeat(100),
        };
        let b = bounded(r);
        assert!(b
            .error
            .as_deref()
            .is_some_and(|e| e.len() <= pulpdist_network::MAX_ERROR_TEXT));
        assert_eq!((b.id.len(), b.agent_version.len()), (64, 64));
        assert_eq!(b.root.map(|r| r.len()), Some(1024));
        assert_eq!(
            (b.bytes_fetched, b.to_version, b.started),
            (1 << 48, Some(1 << 48), 0)
        );
    }
}
