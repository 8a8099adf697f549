//! The coordinator's API from the other side (blocking HTTPS, a client certificate): what
//! the agent and the admin commands (`network apply`, `status`) call.

use std::time::Duration;

use pulpdist_network::{Report, SiteAssignment};
use pulpdist_sync::HttpOptions;

use crate::AgentError;

/// A connection to a coordinator.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the coordinator at `base` (`https://host:port`), with `http`'s CA and
    /// client certificate.
    pub fn new(base: &str, http: &HttpOptions) -> Result<Client, AgentError> {
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
            base: base.trim_end_matches('/').to_string(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn fail(&self, path: &str, e: impl std::fmt::Display) -> AgentError {
        AgentError::Coordinator {
            url: self.url(path),
            detail: e.to_string(),
        }
    }

    /// Reads a response: its body if 200, else an error with the coordinator's message.
    fn body(
        &self,
        path: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Option<String>, AgentError> {
        let mut resp = resp.map_err(|e| self.fail(path, e))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| self.fail(path, e))?;
        match status {
            200 => Ok(Some(text)),
            304 => Ok(None),
            // Not for good: a coordinator whose database is down has answered 404 before.
            404 => Err(self.fail(path, "404: not found (or not for this certificate)")),
            s => {
                let detail = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(String::from))
                    .unwrap_or(text);
                match s {
                    400 | 413 => Err(AgentError::Refused {
                        url: self.url(path),
                        detail: format!("{s}: {detail}"),
                    }),
                    _ => Err(self.fail(path, format!("{s}: {detail}"))),
                }
            }
        }
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
        let req = self
            .agent
            .get(self.url(&path))
            .config()
            .timeout_global(Some(deadline))
            .build();
        let got = self.body(&path, req.call())?;
        got.map(|t| serde_json::from_str(&t).map_err(|e| self.fail(&path, e)))
            .transpose()
    }

    /// Delivers reports.
    pub fn report(&self, reports: &[Report]) -> Result<(), AgentError> {
        let path = "/api/v1/reports";
        let body = serde_json::to_vec(reports).map_err(|e| self.fail(path, e))?;
        self.body(path, self.agent.post(self.url(path)).send(&body[..]))?;
        Ok(())
    }

    /// Applies a network file (admin): `(revision, changed)`.
    pub fn apply(&self, text: &str) -> Result<(u64, bool), AgentError> {
        let path = "/api/v1/network";
        let got = self
            .body(path, self.agent.put(self.url(path)).send(text))?
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
            .body(path, self.agent.get(self.url(path)).call())?
            .unwrap_or_default())
    }

    /// The status rows (admin), filtered by `query` (`tree=…&site=…&label=k:v`).
    pub fn status(&self, query: &str) -> Result<serde_json::Value, AgentError> {
        let path = format!("/api/v1/status?{query}");
        let got = self
            .body(&path, self.agent.get(self.url(&path)).call())?
            .unwrap_or_default();
        serde_json::from_str(&got).map_err(|e| self.fail(&path, e))
    }

    /// Forgets the key `site` was enrolled with: its next certificate is enrolled (admin).
    pub fn reenrol(&self, site: &str) -> Result<(), AgentError> {
        let path = format!("/api/v1/sites/{site}/enrolment");
        self.body(&path, self.agent.delete(self.url(&path)).call())?;
        Ok(())
    }

    /// Wakes the sites that carry `tree` (admin; `publish --notify`).
    pub fn trigger(&self, tree: &str) -> Result<(), AgentError> {
        let path = format!("/api/v1/trigger?tree={tree}");
        self.body(&path, self.agent.post(self.url(&path)).send(&[][..]))?;
        Ok(())
    }
}
