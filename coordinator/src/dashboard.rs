//! The dashboard: server-rendered HTML, usable without JavaScript, and its JSON twins, on a
//! plain-HTTP listener for reading only (keep it on loopback or behind a proxy that
//! authenticates): the network matrix (`/`), a tree (`/tree/T`), a site (`/site/S`), the
//! events (`/events`), and `/metrics`. The twins are under `/api/v1/` (`status`, `trees/T`,
//! `sites/S`, `events`), here and, for admins, on the HTTPS API.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::{CoordError, Coordinator, StatusRow};

/// The most dashboard connections served at once (more are closed at once).
const MAX_CONNECTIONS: usize = 256;

/// The most dashboard connections from one address (a browser opens a few; a reverse
/// proxy in front counts as one address: raise it there, not here).
const MAX_PER_ADDRESS: usize = 64;

/// The longest a dashboard connection lives (a page and its reloads; a browser opens
/// another).
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves the dashboard on `listener` until `shutdown` resolves. A request whose `Host`
/// is neither an IP address, nor `localhost`, nor one of `hosts` is refused: a web page
/// that points its own name at the dashboard's address (DNS rebinding) reads nothing.
pub async fn serve(
    listener: TcpListener,
    coord: Arc<Coordinator>,
    hosts: Vec<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let hosts = Arc::new(hosts);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = crate::server::PerAddress::new(MAX_PER_ADDRESS);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Out of file descriptors and the like: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let Some(mine) = per_address.start(peer.ip()) else {
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue;
                };
                let (coord, hosts) = (coord.clone(), hosts.clone());
                tokio::spawn(async move {
                    let _slot = (slot, mine);
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (coord, hosts) = (coord.clone(), hosts.clone());
                        async move {
                            if !host_allowed(&req, &hosts) {
                                return Ok::<_, Infallible>(respond(StatusCode::MISDIRECTED_REQUEST, "text/plain", "this dashboard is not served under that name (--dashboard-host)\n"));
                            }
                            Ok::<_, Infallible>(page(&coord, req.method(), req.uri().path()).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service);
                    // A client that never reads its answer, or keeps asking, holds a slot
                    // at most this long.
                    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

/// Whether the request's `Host` is an IP address, `localhost`, or one of `hosts`.
fn host_allowed<B>(req: &Request<B>, hosts: &[String]) -> bool {
    let Some(host) = req.headers().get(hyper::header::HOST) else {
        // HTTP/1.0 without a Host: no browser sends that.
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts.iter().any(|h| {
            h.trim_end_matches('.')
                .eq_ignore_ascii_case(name.trim_end_matches('.'))
        })
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn page(coord: &Coordinator, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let html = |r: Result<Option<String>, CoordError>| match r {
        Ok(Some(b)) => respond(StatusCode::OK, "text/html; charset=utf-8", b),
        Ok(None) => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", e.to_string()),
    };
    if path == "/metrics" {
        return match coord.metrics().await {
            Ok(m) => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m,
            ),
            Err(e) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", e.to_string()),
        };
    }
    if let Some(rest) = path.strip_prefix("/api/v1/") {
        return match twin(coord, rest).await {
            Ok(Some(v)) => respond(StatusCode::OK, "application/json", v.to_string()),
            Ok(None) => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                r#"{"error":"not found"}"#,
            ),
            Err(e) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json!({"error": e.to_string()}).to_string(),
            ),
        };
    }
    match path {
        "/" => html(matrix(coord).await.map(Some)),
        "/events" => html(events_page(coord).await.map(Some)),
        p => match (p.strip_prefix("/tree/"), p.strip_prefix("/site/")) {
            (Some(t), _) => html(tree_page(coord, t).await),
            (_, Some(s)) => html(site_page(coord, s).await),
            _ => html(Ok(None)),
        },
    }
}

/// The JSON twin of a page (`status`, `events`, `trees/T`, `sites/S`); `None`: no such.
pub async fn twin(coord: &Coordinator, rest: &str) -> Result<Option<Value>, CoordError> {
    Ok(match rest {
        "status" => Some(json!(coord.status(None).await?)),
        "events" => Some(json!(coord.db.recent_events(500).await?)),
        r => match (r.strip_prefix("trees/"), r.strip_prefix("sites/")) {
            (Some(t), _) => tree_json(coord, t).await?,
            (_, Some(s)) => site_json(coord, s).await?,
            _ => None,
        },
    })
}

async fn tree_json(coord: &Coordinator, tree: &str) -> Result<Option<Value>, CoordError> {
    if !coord.held.read().await.network.trees.contains_key(tree) {
        return Ok(None);
    }
    let mut heads = Vec::new();
    // The newest 50 versions.
    for h in coord.db.heads(tree, 50).await? {
        let reached: Vec<Value> = coord
            .db
            .reached(tree, h.version)
            .await?
            .into_iter()
            .map(
                |(site, at)| json!({"site": site, "at": at, "after_seconds": (at - h.seen).max(0)}),
            )
            .collect();
        heads.push(
            json!({"version": h.version, "root": h.root, "created": h.created, "seen": h.seen,
            "added_bytes": h.added_bytes, "delta_bytes": h.delta_bytes, "reached": reached}),
        );
    }
    let sites = coord.held.read().await.network.sites_of_tree(tree);
    Ok(Some(json!({"tree": tree, "sites": sites, "heads": heads})))
}

async fn site_json(coord: &Coordinator, site: &str) -> Result<Option<Value>, CoordError> {
    let Some(def) = coord.held.read().await.network.sites.get(site).cloned() else {
        return Ok(None);
    };
    let rows = coord.status(Some(&format!("site={site}"))).await?;
    let (history, daily) = coord.db.site_record(site, 50, 90).await?;
    let expires = coord
        .db
        .not_afters()
        .await
        .ok()
        .and_then(|m| m.get(site).copied());
    Ok(Some(json!({
        "site": site, "identity": def.identity, "labels": def.labels, "contact": def.contact,
        "serves": def.serves, "certificate_expires": expires, "trees": rows, "history": history,
        "daily": daily,
    })))
}

/// Text safe inside HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} — PulpDist</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}\
         td.current{{background:#c8f7c5}}td.behind{{background:#fff3b0}}td.far{{background:#f9c0b8}}\
         td.failing{{background:#e57373}}td.unknown{{background:#ddd}}nav a{{margin-right:1em}}</style>\
         </head><body><nav><a href=\"/\">network</a><a href=\"/events\">events</a><a href=\"/metrics\">metrics</a></nav>\
         <h1>{t}</h1>\n",
        t = esc(title)
    )
}

const FOOT: &str = "</body></html>\n";

/// The lag class of a cell.
fn class(r: &StatusRow) -> &'static str {
    match (r.version, r.versions_behind.unwrap_or(0)) {
        _ if matches!(r.last_outcome.as_deref(), Some("failed" | "refused")) => "failing",
        (None, _) => "unknown",
        (Some(_), 0) => "current",
        (Some(_), 1) => "behind",
        _ => "far",
    }
}

async fn matrix(coord: &Coordinator) -> Result<String, CoordError> {
    let rows = coord.status(None).await?;
    let by_cell: std::collections::HashMap<(&str, &str), &StatusRow> = rows
        .iter()
        .map(|r| ((r.site.as_str(), r.tree.as_str()), r))
        .collect();
    let network = coord.held.read().await.network.clone();
    let trees: Vec<&String> = network.trees.keys().collect();
    let mut s = head("Network");
    let _ = write!(s, "<table id=\"matrix\"><thead><tr><th>site</th>");
    for t in &trees {
        let _ = write!(s, "<th><a href=\"/tree/{0}\">{0}</a></th>", esc(t));
    }
    s.push_str("</tr></thead><tbody>\n");
    for site in network.sites.keys() {
        let _ = write!(
            s,
            "<tr data-site=\"{0}\"><th><a href=\"/site/{0}\">{0}</a></th>",
            esc(site)
        );
        for t in &trees {
            match by_cell.get(&(site.as_str(), t.as_str())) {
                None => s.push_str("<td class=\"none\"></td>"),
                Some(r) => {
                    let v = r.version.map_or("-".into(), |v| v.to_string());
                    let behind = match r.versions_behind {
                        Some(b) if b > 0 => format!(" (−{b})"),
                        _ => String::new(),
                    };
                    let _ = write!(
                        s,
                        "<td class=\"{}\" data-tree=\"{}\" data-version=\"{}\">{}{}</td>",
                        class(r),
                        esc(t),
                        esc(&v),
                        esc(&v),
                        behind
                    );
                }
            }
        }
        s.push_str("</tr>\n");
    }
    let open = coord.db.open_events().await?.len();
    let _ = write!(
        s,
        "</tbody></table>\n<p id=\"open-events\"><a href=\"/events\">{open} open events</a></p>\n"
    );
    s.push_str(FOOT);
    Ok(s)
}

async fn tree_page(coord: &Coordinator, tree: &str) -> Result<Option<String>, CoordError> {
    let Some(v) = tree_json(coord, tree).await? else {
        return Ok(None);
    };
    let sites = v["sites"].as_array().map_or(0, Vec::len);
    let mut s = head(&format!("Tree {tree}"));
    s.push_str("<table id=\"heads\"><thead><tr><th>version</th><th>root</th><th>created</th><th>seen</th><th>packs added</th><th>delta</th><th>sites holding it</th><th>slowest site after</th></tr></thead><tbody>\n");
    for h in v["heads"].as_array().into_iter().flatten() {
        let reached = h["reached"].as_array().map_or(0, Vec::len);
        let slowest = h["reached"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["after_seconds"].as_i64())
            .max()
            .map_or("-".into(), |s| format!("{s} s"));
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"added\">{}</td><td class=\"delta\">{}</td><td>{reached}/{sites}</td><td>{slowest}</td></tr>",
            h["version"],
            esc(h["root"].as_str().unwrap_or("").get(..16).unwrap_or("")),
            h["created"],
            h["seen"],
            bytes(&h["added_bytes"]),
            bytes(&h["delta_bytes"]),
        );
    }
    s.push_str("</tbody></table>\n");
    s.push_str(FOOT);
    Ok(Some(s))
}

/// A byte count as a page shows it (`-` for none).
fn bytes(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(b) if b < 10_000 => format!("{b} B"),
        Some(b) if b < 10_000_000 => format!("{} kB", b / 1000),
        Some(b) => format!("{} MB", b / 1_000_000),
    }
}

/// A small SVG chart of bytes fetched and duration per run (oldest left).
fn chart(history: &[Value]) -> String {
    let (w, h) = (600.0_f64, 120.0_f64);
    let runs: Vec<&Value> = history.iter().rev().collect();
    let line = |key: &str| -> String {
        let vals: Vec<f64> = runs
            .iter()
            .map(|r| r[key].as_f64().unwrap_or(0.0))
            .collect();
        let max = vals.iter().copied().fold(1.0_f64, f64::max);
        let step = if vals.len() > 1 {
            w / (vals.len() - 1) as f64
        } else {
            w
        };
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, h - v / max * (h - 10.0)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
         <title>bytes fetched (blue) and duration (orange) per run</title>\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"2\" points=\"{}\"/></svg>\n",
        line("bytes_fetched"),
        line("duration_ms")
    )
}

async fn site_page(coord: &Coordinator, site: &str) -> Result<Option<String>, CoordError> {
    let Some(v) = site_json(coord, site).await? else {
        return Ok(None);
    };
    let mut s = head(&format!("Site {site}"));
    let expires = v["certificate_expires"]
        .as_i64()
        .map_or("not seen yet".to_string(), |e| {
            format!("{} days left", (e - crate::now()) / 86_400)
        });
    let _ = writeln!(
        s,
        "<p>identity <code>{}</code>; certificate: <span id=\"certificate\">{}</span></p>",
        esc(v["identity"].as_str().unwrap_or("")),
        esc(&expires)
    );
    s.push_str("<table id=\"trees\"><thead><tr><th>tree</th><th>version</th><th>behind</th><th>last run</th><th>last error</th></tr></thead><tbody>\n");
    for r in v["trees"].as_array().into_iter().flatten() {
        let cell = |k: &str| match &r[k] {
            Value::Null => "-".to_string(),
            Value::String(s) => esc(s),
            o => o.to_string(),
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            cell("tree"),
            cell("version"),
            cell("versions_behind"),
            cell("last_outcome"),
            cell("last_error")
        );
    }
    s.push_str("</tbody></table>\n<h2>Runs</h2>\n");
    let history: Vec<Value> = v["history"].as_array().cloned().unwrap_or_default();
    s.push_str(&chart(&history));
    s.push_str("<table id=\"history\"><thead><tr><th>ended</th><th>received</th><th>tree</th><th>outcome</th><th>version</th><th>bytes</th><th>ms</th><th>error</th></tr></thead><tbody>\n");
    for r in &history {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r["ran"],
            r["received"],
            esc(r["tree"].as_str().unwrap_or("")),
            esc(r["outcome"].as_str().unwrap_or("")),
            r["version"],
            r["bytes_fetched"],
            r["duration_ms"],
            esc(r["error"].as_str().unwrap_or(""))
        );
    }
    s.push_str("</tbody></table>\n");
    s.push_str(FOOT);
    Ok(Some(s))
}

async fn events_page(coord: &Coordinator) -> Result<String, CoordError> {
    let mut s = head("Events");
    s.push_str("<table id=\"events\"><thead><tr><th>kind</th><th>site</th><th>tree</th><th>opened</th><th>closed</th><th>detail</th></tr></thead><tbody>\n");
    for e in coord.db.recent_events(500).await? {
        let _ = writeln!(
            s,
            "<tr class=\"{state}\"><td>{kind}</td><td><a href=\"/site/{site}\">{site}</a></td><td>{tree}</td><td>{opened}</td><td>{closed}</td><td>{detail}</td></tr>",
            state = if e.closed.is_some() { "closed" } else { "open" },
            kind = esc(&e.kind),
            site = esc(&e.site),
            tree = esc(&e.tree),
            opened = e.opened,
            closed = e.closed.map_or("open".into(), |c| c.to_string()),
            detail = esc(&e.detail)
        );
    }
    s.push_str("</tbody></table>\n");
    s.push_str(FOOT);
    Ok(s)
}
