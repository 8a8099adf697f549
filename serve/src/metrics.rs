//! Counters for `/metrics`, in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a request asked for, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `heads/<tree>`.
    Head,
    /// `packs/<id>.pack`.
    Pack,
    /// `/metrics`.
    Metrics,
    /// Anything else (404).
    Other,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Head => "head",
            Kind::Pack => "pack",
            Kind::Metrics => "metrics",
            Kind::Other => "other",
        }
    }
}

/// Server counters, shared by every connection.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(Kind, &'static str, u16), u64>>,
    body_bytes: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    tls_refused: AtomicU64,
    revoked_closed: AtomicU64,
    refused_connections: AtomicU64,
    stalled: AtomicU64,
}

/// Counts one request as in flight until dropped (when its response body has been sent).
#[derive(Debug)]
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Marks a request as started.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts a response by kind, method and status.
    pub fn response(&self, kind: Kind, method: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((kind, method, status)).or_default() += 1;
        }
    }

    /// Counts body bytes sent.
    pub fn sent(&self, n: u64) {
        self.body_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a connection whose TLS handshake failed (no or a bad client certificate).
    pub fn tls_refused(&self) {
        self.tls_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an open connection closed because a reload revoked its client certificate.
    pub fn revoked_closed(&self) {
        self.revoked_closed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed as it was accepted (no slot free for it).
    pub fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed because its client stopped reading.
    pub fn stalled(&self) {
        self.stalled.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted connection.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP pulpdist_http_requests_total HTTP requests answered, by object kind, method and status code.\n");
        s.push_str("# TYPE pulpdist_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((kind, method, code), n) in m.iter() {
                let _ = writeln!(
                    s,
                    "pulpdist_http_requests_total{{kind=\"{}\",method=\"{method}\",code=\"{code}\"}} {n}",
                    kind.label()
                );
            }
        }
        let _ = write!(
            s,
            "# HELP pulpdist_http_response_body_bytes_total Response body bytes sent.\n\
             # TYPE pulpdist_http_response_body_bytes_total counter\n\
             pulpdist_http_response_body_bytes_total {}\n\
             # HELP pulpdist_http_requests_in_flight Requests being answered now.\n\
             # TYPE pulpdist_http_requests_in_flight gauge\n\
             pulpdist_http_requests_in_flight {}\n\
             # HELP pulpdist_http_connections_total Connections accepted.\n\
             # TYPE pulpdist_http_connections_total counter\n\
             pulpdist_http_connections_total {}\n\
             # HELP pulpdist_tls_handshakes_refused_total TLS handshakes that failed (no, untrusted or revoked client certificate).\n\
             # TYPE pulpdist_tls_handshakes_refused_total counter\n\
             pulpdist_tls_handshakes_refused_total {}\n\
             # HELP pulpdist_tls_connections_revoked_total Open connections closed because a reload revoked their client certificate.\n\
             # TYPE pulpdist_tls_connections_revoked_total counter\n\
             pulpdist_tls_connections_revoked_total {}\n\
             # HELP pulpdist_http_connections_refused_total Connections closed on accept: the server, or their address, held all its slots.\n\
             # TYPE pulpdist_http_connections_refused_total counter\n\
             pulpdist_http_connections_refused_total {}\n\
             # HELP pulpdist_http_connections_stalled_total Connections closed because the client stopped reading a response.\n\
             # TYPE pulpdist_http_connections_stalled_total counter\n\
             pulpdist_http_connections_stalled_total {}\n",
            self.body_bytes.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.tls_refused.load(Ordering::Relaxed),
            self.revoked_closed.load(Ordering::Relaxed),
            self.refused_connections.load(Ordering::Relaxed),
            self.stalled.load(Ordering::Relaxed),
        );
        s
    }
}
