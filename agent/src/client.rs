//! The coordinator's API from the other side (blocking HTTPS, a client certificate): what
//! the agent and the admin commands (`network apply`, `status`) call.

use std::time::Duration;

use pulpdist_network::{Report, SiteAssignment};
use pulpdist_sync::HttpOptions;

use crate::AgentError;

/// A connection to a coordinator (or to the first that answers of several sharing one
/// database).
pub struct Client {
    bases: Vec<String>,
    /// The one asked now: a request that gets no answer, or a 5xx, moves to the next.
    current: std::sync::atomic::AtomicUsize,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the coordinator at `base` (`https://host:port`), with `http`'s CA and
    /// client certificate.
    pub fn new(base: &str, http: &HttpOptions) -> Result<Client, AgentError> {
        Client::with_fallbacks(&[base.to_string()], http)
    }

    /// A client of coordinators sharing one database (`https://host:port` each): requests
    /// go to one until it does not answer or answers 5xx, then to the next, in turn.
    pub fn with_fallbacks(bases: &[String], http: &HttpOptions) -> Result<Client, AgentError> {
        if bases.is_empty() {
            return Err(AgentError::Setup("no coordinator given".into()));
        }
        let tls = pulpdist_sync::tls_config(http).map_err(|e| AgentError::Setup(e.to_string()))?;
        // Each request's own deadline (a poll's: its wait and 15 s more; others 30 s): a
        // coordinator that accepts and never answers delays a round by no more.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(Duration::from_secs(30)))
            .max_redirects(0)
            .user_agent(concat!("pulpdist-agent/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        Ok(Client {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            current: Default::default(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len();
        format!("{}{path}", self.bases[i])
    }

    /// How many coordinators it knows.
    pub fn coordinators(&self) -> usize {
        self.bases.len()
    }

    fn fail(&self, path: &str, e: impl std::fmt::Display) -> AgentError {
        AgentError::Coordinator {
            url: self.url(path),
            detail: e.to_string(),
        }
    }

    /// Sends a request (`send` given the URL) to the coordinator in use; one that does not
    /// answer, or answers 5xx, is left for the next, which is asked at once (each once).
    /// Returns the body if 200, `None` if 304, else an error with the coordinator's message.
    fn call(
        &self,
        path: &str,
        send: impl Fn(&str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Option<String>, AgentError> {
        let mut last = None;
        for _ in 0..self.bases.len() {
            let at = self.current.load(std::sync::atomic::Ordering::Relaxed);
            let url = format!("{}{path}", self.bases[at % self.bases.len()]);
            match answer(&url, send(&url)) {
                Err((e, true)) => {
                    // Not past a move another thread made meanwhile.
                    let _ = self.current.compare_exchange(
                        at,
                        at.wrapping_add(1),
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    last = Some(e);
                }
                Err((e, false)) => return Err(e),
                Ok(got) => return Ok(got),
            }
        }
        Err(last.unwrap_or_else(|| AgentError::Setup("no coordinator given".into())))
    }

    /// This site's assignment; with `after` (the generation known), waits up to `wait`
    /// for a change: `None` if there was none.
    pub fn assignment(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Option<SiteAssignment>, AgentError> {
        let path = match after {
            Some(g) => format!("/api/v1/assignment?after={g}&wait={}", wait.as_secs()),
            None => "/api/v1/assignment".to_string(),
        };
        let deadline = wait + Duration::from_secs(15);
        let got = self.call(&path, |url| {
            self.agent
                .get(url)
                .config()
                .timeout_global(Some(deadline))
                .build()
                .call()
        })?;
        got.map(|t| serde_json::from_str(&t).map_err(|e| self.fail(&path, e)))
            .transpose()
    }

    /// Delivers reports.
    pub fn report(&self, reports: &[Report]) -> Result<(), AgentError> {
        let path = "/api/v1/reports";
        let body = serde_json::to_vec(reports).map_err(|e| self.fail(path, e))?;
        self.call(path, |url| {
            self.agent
                .post(url)
                .header(
                    pulpdist_network::CLOCK_HEADER,
                    crate::unix_now().to_string(),
                )
                .send(&body[..])
        })?;
        Ok(())
    }

    /// Applies a network file (admin): `(revision, changed)`.
    pub fn apply(&self, text: &str) -> Result<(u64, bool), AgentError> {
        let path = "/api/v1/network";
        let got = self
            .call(path, |url| self.agent.put(url).send(text))?
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&got).map_err(|e| self.fail(path, e))?;
        Ok((
            v["revision"].as_u64().unwrap_or(0),
            v["changed"].as_bool().unwrap_or(false),
        ))
    }

    /// The network file in force (admin).
    pub fn export(&self) -> Result<String, AgentError> {
        let path = "/api/v1/network";
        Ok(self
            .call(path, |url| self.agent.get(url).call())?
            .unwrap_or_default())
    }

    /// The status rows (admin), filtered by `query` (`tree=…&site=…&label=k:v`).
    pub fn status(&self, query: &str) -> Result<serde_json::Value, AgentError> {
        let path = format!("/api/v1/status?{query}");
        let got = self
            .call(&path, |url| self.agent.get(url).call())?
            .unwrap_or_default();
        serde_json::from_str(&got).map_err(|e| self.fail(&path, e))
    }

    /// Forgets the key `site` was enrolled with: its next certificate is enrolled (admin).
    pub fn reenrol(&self, site: &str) -> Result<(), AgentError> {
        let path = format!("/api/v1/sites/{site}/enrolment");
        self.call(&path, |url| self.agent.delete(url).call())?;
        Ok(())
    }

    /// Wakes the sites that carry `tree` (admin; `publish --notify`).
    pub fn trigger(&self, tree: &str) -> Result<(), AgentError> {
        let path = format!("/api/v1/trigger?tree={tree}");
        self.call(&path, |url| self.agent.post(url).send(&[][..]))?;
        Ok(())
    }
}

/// Reads a response from `url`: its body if 200, `None` if 304, else an error and whether
/// another coordinator may answer better (no answer, or 5xx).
fn answer(
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Option<String>, (AgentError, bool)> {
    let fail = |detail: String| AgentError::Coordinator {
        url: url.to_string(),
        detail,
    };
    let mut resp = resp.map_err(|e| (fail(e.to_string()), true))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .map_err(|e| (fail(e.to_string()), true))?;
    match status {
        200 => Ok(Some(text)),
        304 => Ok(None),
        // Not for good: a coordinator whose database is down has answered 404 before.
        404 => Err((
            fail("404: not found (or not for this certificate)".into()),
            false,
        )),
        s => {
            let detail = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text);
            match s {
                400 | 413 => Err((
                    AgentError::Refused {
                        url: url.to_string(),
                        detail: format!("{s}: {detail}"),
                    },
                    false,
                )),
                // A coordinator whose database is down: the next one may answer.
                _ => Err((fail(format!("{s}: {detail}")), s >= 500)),
            }
        }
    }
}
