//! The agent's Prometheus metrics (`pulpdist agent --metrics ADDR`, plain HTTP, through
//! `prometheus-client`): per tree the runs by outcome, the version held, when the last run
//! and the last successful one ended, the bytes fetched, whether a sync is running; the
//! reports waiting in the queue; whether the coordinator answered the last poll. They tell
//! a site's own Prometheus what the coordinator's view also shows, and keep telling it
//! while the coordinator is down.

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use pulpdist_network::{Outcome, Report};

/// A tree.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TreeLabel {
    tree: String,
}

/// A run's outcome.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum OutcomeValue {
    up_to_date,
    completed,
    refused,
    busy,
    partial,
    failed,
}

/// A tree and a run's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    tree: String,
    outcome: OutcomeValue,
}

/// The agent's version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabel {
    version: String,
}

/// The agent's metrics, updated as it works.
pub struct AgentMetrics {
    registry: Registry,
    runs: Family<RunLabel, Counter>,
    version: Family<TreeLabel, Gauge>,
    last_run: Family<TreeLabel, Gauge>,
    last_success: Family<TreeLabel, Gauge>,
    bytes_fetched: Family<TreeLabel, Counter>,
    syncing: Family<TreeLabel, Gauge>,
    without_success: Family<TreeLabel, Gauge>,
    queued: Gauge,
    reachable: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    /// Every metric at zero.
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("pulpdist_agent");
        let m = AgentMetrics {
            runs: Family::default(),
            version: Family::default(),
            last_run: Family::default(),
            last_success: Family::default(),
            bytes_fetched: Family::default(),
            syncing: Family::default(),
            without_success: Family::default(),
            queued: Gauge::default(),
            reachable: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("runs", "Sync runs, by tree and outcome", m.runs.clone());
        registry.register(
            "version",
            "The version of each tree the site holds (from its last successful run)",
            m.version.clone(),
        );
        registry.register(
            "last_run_timestamp_seconds",
            "When the last run of each tree ended (Unix seconds)",
            m.last_run.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the last successful run of each tree ended (Unix seconds)",
            m.last_success.clone(),
        );
        registry.register(
            "bytes_fetched",
            "Bytes fetched from stores, by tree",
            m.bytes_fetched.clone(),
        );
        registry.register(
            "syncing",
            "1 while a sync of the tree runs",
            m.syncing.clone(),
        );
        registry.register(
            "seconds_without_success",
            "Seconds of the tree's window (all seconds, without one) since its last successful run, or since the agent started",
            m.without_success.clone(),
        );
        registry.register(
            "reports_queued",
            "Reports waiting in the queue for the coordinator",
            m.queued.clone(),
        );
        registry.register(
            "coordinator_reachable",
            "1 if the coordinator answered the agent's last poll",
            m.reachable.clone(),
        );
        let info = Family::<InfoLabel, Gauge>::default();
        info.get_or_create(&InfoLabel {
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
        registry.register("info", "The agent's version", info);
        AgentMetrics { registry, ..m }
    }

    /// A sync of `tree` started (`true`) or ended.
    pub(crate) fn syncing(&self, tree: &str, running: bool) {
        self.syncing
            .get_or_create(&TreeLabel { tree: tree.into() })
            .set(i64::from(running));
    }

    /// A run ended, at `now` (Unix seconds).
    pub(crate) fn run(&self, r: &Report, now: i64) {
        let tree = TreeLabel {
            tree: r.tree.clone(),
        };
        let outcome = match r.outcome {
            Outcome::UpToDate => OutcomeValue::up_to_date,
            Outcome::Completed => OutcomeValue::completed,
            Outcome::Refused => OutcomeValue::refused,
            Outcome::Busy => OutcomeValue::busy,
            Outcome::Partial => OutcomeValue::partial,
            Outcome::Failed => OutcomeValue::failed,
        };
        self.runs
            .get_or_create(&RunLabel {
                tree: r.tree.clone(),
                outcome,
            })
            .inc();
        self.last_run.get_or_create(&tree).set(now);
        self.bytes_fetched
            .get_or_create(&tree)
            .inc_by(r.bytes_fetched);
        if let Some(v) = r.to_version.filter(|_| r.outcome.is_success()) {
            self.version.get_or_create(&tree).set(v as i64);
            self.last_success.get_or_create(&tree).set(now);
        }
    }

    /// How long `tree` has gone without a successful run, in its window's time.
    pub(crate) fn without_success(&self, tree: &str, secs: i64) {
        self.without_success
            .get_or_create(&TreeLabel { tree: tree.into() })
            .set(secs);
    }

    /// Reports waiting, and whether the coordinator answered the last poll.
    pub(crate) fn queue(&self, queued: usize, reachable: bool) {
        self.queued.set(queued as i64);
        self.reachable.set(i64::from(reachable));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The most connections to the metrics listener served at once (more are closed).
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener`, on a thread of its own, for the process's
/// lifetime: at most [`MAX_CONNECTIONS`] at once, each request's header within 10 s and
/// each connection at most a minute.
pub fn serve_metrics(
    listener: std::net::TcpListener,
    metrics: Arc<AgentMetrics>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = Arc::new(AtomicU64::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("metrics listener: {e}");
                        return;
                    }
                };
                let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        continue;
                    };
                    let (metrics, served) = (metrics.clone(), served.clone());
                    tokio::spawn(async move {
                        let _slot = slot;
                        let service = hyper::service::service_fn(move |req: Request<_>| {
                            let (metrics, served) = (metrics.clone(), served.clone());
                            async move { Ok::<_, Infallible>(answer(&metrics, &served, &req)) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(TokioIo::new(stream), service);
                        let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
                    });
                }
            })
        })?;
    Ok(())
}

fn answer<B>(
    metrics: &AgentMetrics,
    served: &AtomicU64,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            )
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_versions_and_the_queue_are_counted() {
        let m = AgentMetrics::new();
        let mut r = Report {
            id: String::new(),
            tree: "debian".into(),
            outcome: Outcome::Completed,
            started: 0,
            from_version: Some(1),
            to_version: Some(2),
            root: None,
            head_store: None,
            bytes_fetched: 1000,
            bytes_reused: 0,
            requests: 2,
            duration_ms: 5,
            rsync_files: 0,
            error: None,
            agent_version: "t".into(),
        };
        m.run(&r, 100);
        r.outcome = Outcome::Failed;
        r.to_version = None;
        r.bytes_fetched = 10;
        m.run(&r, 200);
        m.queue(3, false);
        m.syncing("debian", true);
        m.without_success("debian", 42);
        let text = m.encode();
        for line in [
            "pulpdist_agent_runs_total{tree=\"debian\",outcome=\"completed\"} 1",
            "pulpdist_agent_runs_total{tree=\"debian\",outcome=\"failed\"} 1",
            "pulpdist_agent_version{tree=\"debian\"} 2",
            "pulpdist_agent_last_success_timestamp_seconds{tree=\"debian\"} 100",
            "pulpdist_agent_last_run_timestamp_seconds{tree=\"debian\"} 200",
            "pulpdist_agent_bytes_fetched_total{tree=\"debian\"} 1010",
            "pulpdist_agent_syncing{tree=\"debian\"} 1",
            "pulpdist_agent_reports_queued 3",
            "pulpdist_agent_coordinator_reachable 0",
            "pulpdist_agent_seconds_without_success{tree=\"debian\"} 42",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
