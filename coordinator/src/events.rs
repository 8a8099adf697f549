//! Events: conditions the coordinator computes from the status after each watch period: a
//! site behind by versions or by time, a silent agent, failed runs in a row, a client
//! certificate about to expire. Each is stored when first seen (and closed when it
//! clears), shown, counted in the metrics, and sent to the network's webhook: a JSON POST
//! queued in the database in the transaction that opens or closes the event (the
//! `outbox`), delivered in order by the coordinator that leads, on its own task (a webhook
//! that hangs delays nothing else), retried with backoff, and removed once answered 2xx;
//! a restart or a change of leader loses none. Delivery is at least once: a coordinator
//! that dies between the answer and the removal sends that one again (its `id` and
//! `state` tell a receiver it has it).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{now, CoordError, Coordinator};

/// An event's identity: kind, site, tree (empty for a site-wide one).
type Key = (String, String, String);

impl Coordinator {
    /// Opens the events whose condition holds now and closes those whose condition
    /// cleared; returns how many were opened and closed.
    pub async fn evaluate(&self) -> Result<(usize, usize), CoordError> {
        if let Err(e) = self.release_downstream().await {
            tracing::warn!("{e}");
        }
        // Bounded history: raw reports for the retention period, then daily rollups.
        let keep = self.keep_reports.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.db.roll_up(now().saturating_sub(keep)).await {
            tracing::warn!("{e}");
        }
        let network = self.held.read().await.network.clone();
        let alerts = network.alerts.clone();
        let now = now();
        let mut firing: BTreeMap<Key, String> = BTreeMap::new();
        let secs = |minutes: u64| minutes.saturating_mul(60).min(i64::MAX as u64) as i64;
        for r in self.status(None).await? {
            let key = |kind: &str| (kind.to_string(), r.site.clone(), r.tree.clone());
            let assigned = network
                .assignment_of(&r.site, 0)
                .and_then(|a| a.trees.into_iter().find(|t| t.tree == r.tree));
            let schedule = assigned.as_ref().map_or(0, |t| t.schedule_secs);
            let window = assigned
                .and_then(|t| t.window)
                .and_then(pulpdist_network::Window::new);
            let behind_v = r.versions_behind.unwrap_or(0);
            let behind_s = r.seconds_behind.unwrap_or(0);
            // A tree with a window is late only by its windows' time: a site that may not
            // sync is expected to fall behind, by any number of versions, until it may.
            let late = match window {
                None => {
                    behind_v >= alerts.behind_versions
                        || (behind_v > 0 && behind_s >= secs(alerts.behind_minutes))
                }
                Some(w) => {
                    behind_v > 0
                        && w.open_seconds(now - behind_s, now) >= secs(alerts.behind_minutes)
                }
            };
            if late {
                let held = r
                    .version
                    .map_or("nothing".into(), |v| format!("version {v}"));
                firing.insert(
                    key("behind"),
                    format!(
                        "holds {held}, newest is {}: {behind_v} versions and {behind_s} s behind",
                        r.newest.unwrap_or(0)
                    ),
                );
            }
            if r.probe_agrees == Some(false) {
                firing.insert(
                    key("mismatch"),
                    format!(
                        "reports version {}, serves {}",
                        r.reported_version.map_or("-".into(), |v| v.to_string()),
                        r.probe_version
                            .map_or("nothing verifiable".into(), |v| format!("version {v}"))
                    ),
                );
            }
            let last = r.last_report.unwrap_or(self.started);
            // A site on a long schedule is not silent between its runs, nor one outside its
            // window: only the window's time counts.
            let quiet = alerts
                .silent_minutes
                .saturating_mul(60)
                .max(schedule.saturating_mul(2));
            let silent_for = window.map_or(now - last, |w| w.open_seconds(last, now));
            if silent_for >= quiet.min(i64::MAX as u64) as i64 {
                firing.insert(key("silent"), format!("no report for {} s", now - last));
            }
            // Only a site whose last run failed can be failing: one query for those.
            let failed_last = matches!(r.last_outcome.as_deref(), Some("failed" | "refused"));
            let outcomes = match failed_last {
                true => {
                    self.db
                        .last_outcomes(&r.site, &r.tree, alerts.failures as i64)
                        .await?
                }
                false => Vec::new(),
            };
            if outcomes.len() as u64 == alerts.failures
                && outcomes.iter().all(|o| o == "failed" || o == "refused")
            {
                firing.insert(
                    key("failing"),
                    format!(
                        "{} runs in a row failed; the last: {}",
                        alerts.failures,
                        r.last_error.clone().unwrap_or_default()
                    ),
                );
            }
        }
        // A site removed from the network has no certificate to watch.
        let mut certificates = self.db.not_afters().await?;
        certificates.retain(|site, _| network.sites.contains_key(site));
        for (site, expires) in certificates.iter() {
            let left = expires - now;
            if left
                < alerts
                    .certificate_days
                    .saturating_mul(86_400)
                    .min(i64::MAX as u64) as i64
            {
                firing.insert(
                    ("certificate".into(), site.clone(), String::new()),
                    format!("its client certificate expires in {} days", left / 86_400),
                );
            }
        }
        let mut clocks = self.db.clock_offsets().await?;
        clocks.retain(|site, _| network.sites.contains_key(site));
        for (site, skew) in clocks.iter() {
            if skew.unsigned_abs() > alerts.clock_seconds {
                let way = match *skew > 0 {
                    true => "ahead",
                    false => "behind",
                };
                firing.insert(
                    ("clock".into(), site.clone(), String::new()),
                    format!(
                        "its clock is {} s {way} of the coordinator's (its runs are placed by the coordinator's)",
                        skew.unsigned_abs()
                    ),
                );
            }
        }
        let open = self.db.open_events().await?;
        let mut closed = 0;
        for e in &open {
            let key = (e.kind.clone(), e.site.clone(), e.tree.clone());
            // Closed here (not by another coordinator on the database): queued once.
            if firing.remove(&key).is_some() {
                continue;
            }
            // Sent if its opening was (the allowance counts openings only).
            let send = alerts.webhook.is_some().then(|| body(e, "resolved", now));
            if self.db.close_event(e.id, now, send).await? {
                closed += 1;
            }
        }
        let mut opened = 0;
        for ((kind, site, tree), detail) in firing {
            let event = |id| crate::db::Event {
                id,
                kind: kind.clone(),
                site: site.clone(),
                tree: tree.clone(),
                opened: now,
                closed: None,
                detail: detail.clone(),
            };
            let send = |id| body(&event(id), "open", now);
            let send: Option<&(dyn Fn(i64) -> String + Sync)> =
                match alerts.webhook.is_some() && self.webhook_budget(&site, now) {
                    true => Some(&send),
                    false => None,
                };
            let Some(id) = self
                .db
                .open_event(&kind, &site, &tree, &detail, now, send)
                .await?
            else {
                continue;
            };
            opened += 1;
            tracing::warn!(kind = %kind, site = %site, tree = %tree, id, "{detail}");
        }
        if opened + closed > 0 {
            self.webhook_wake.notify_one();
        }
        Ok((opened, closed))
    }

    /// Takes one event opening from `site`'s allowance of [`CALLS_PER_SITE_HOUR`] webhook
    /// calls an hour: a site whose events flap (a clock set back and forth, runs failing
    /// and not) is still shown and counted, but sends no more that hour, and does not
    /// crowd the other sites' calls out of the queue. The resolution of an event whose
    /// opening was sent is always sent; of one whose opening was not, never.
    fn webhook_budget(&self, site: &str, now: i64) -> bool {
        let Ok(mut budget) = self.webhook_budget.lock() else {
            return false;
        };
        let hour = now.div_euclid(3600);
        let (at, n) = budget.entry(site.to_string()).or_insert((hour, 0));
        if *at != hour {
            (*at, *n) = (hour, 0);
        }
        *n += 1;
        if *n == CALLS_PER_SITE_HOUR + 1 {
            tracing::warn!(site = %site, "more than {CALLS_PER_SITE_HOUR} webhook calls this hour: the rest of its events this hour are not sent");
        }
        *n <= CALLS_PER_SITE_HOUR
    }

    /// Delivers the queued webhook calls, in order, for the coordinator's lifetime, while
    /// it leads: each up to [`TRIES`] times, 10 s each, [`backoff`] apart; a delivery
    /// still failing after that is given up (logged and counted), so one bad event does not
    /// hold the rest for ever.
    pub(crate) async fn deliver_webhooks(&self) {
        loop {
            if !self.leading() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let url = self.held.read().await.network.alerts.webhook.clone();
            let Some(url) = url else {
                match self.db.drop_deliveries().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        "the network names no webhook: {n} queued deliveries dropped"
                    ),
                    Err(e) => tracing::warn!("{e}"),
                }
                self.webhook_queued
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(5), self.webhook_wake.notified())
                    .await;
                continue;
            };
            let (due, waiting) = match self.db.next_delivery(now()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("{e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.webhook_queued
                .store(waiting, std::sync::atomic::Ordering::Relaxed);
            let Some((id, text, tries)) = due else {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.webhook_wake.notified())
                    .await;
                continue;
            };
            let (to, b) = (url.clone(), text.clone());
            let sent = tokio::task::spawn_blocking(move || post(&to, &b))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let done = match sent {
                Ok(()) => {
                    self.webhook_delivered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.db.delivered(id).await
                }
                Err(err) if tries + 1 >= TRIES => {
                    tracing::error!(url = %url, "webhook: an event was not delivered after {TRIES} tries, the last: {err}; given up: {text}");
                    self.webhook_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.db.delivered(id).await
                }
                Err(err) => {
                    tracing::warn!(url = %url, "webhook: {err}");
                    self.db
                        .delivery_failed(id, now() + backoff(tries), &err)
                        .await
                }
            };
            if let Err(e) = done {
                tracing::warn!("{e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Webhook calls one site's events may make in an hour.
const CALLS_PER_SITE_HOUR: u32 = 30;

/// How many times a webhook delivery is tried before it is given up.
const TRIES: i64 = 12;

/// Seconds before the next try of a delivery tried `tries` times: 1, 2, 4, … at most an
/// hour (12 tries span about an hour and a quarter).
fn backoff(tries: i64) -> i64 {
    (1_i64 << tries.clamp(0, 12)).min(3600)
}

/// What the webhook is sent for an event in `state` (`open`, `resolved`) at `at`.
fn body(e: &crate::db::Event, state: &str, at: i64) -> String {
    serde_json::json!({
        "kind": e.kind, "site": e.site, "tree": e.tree, "state": state,
        "detail": e.detail, "opened": e.opened, "at": at, "id": e.id,
    })
    .to_string()
}

/// One POST of a JSON body, 10 s at most.
fn post(url: &str, body: &str) -> Result<(), String> {
    let tls = pulpdist_sync::tls_config(&pulpdist_sync::HttpOptions::default())
        .map_err(|e| e.to_string())?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(tls)
        .build()
        .into();
    let resp = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        s => Err(format!("answered {s}")),
    }
}
