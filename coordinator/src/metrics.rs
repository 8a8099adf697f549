//! The coordinator's Prometheus metrics (`/metrics` on the dashboard listener), through
//! `prometheus-client`: per site and tree the version held, versions and seconds behind and
//! the age of the last report; per tree the newest verified version; open events by kind;
//! reports received by outcome; webhook deliveries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{now, CoordError, Coordinator};

/// A site and a tree.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteTree {
    site: String,
    tree: String,
}

/// A tree.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TreeLabel {
    tree: String,
}

/// An event kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// A run's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: String,
}

/// Reports received, by outcome (kept for the coordinator's lifetime).
pub(crate) type ReportCounter = Family<OutcomeLabel, Counter>;

impl Coordinator {
    /// The metrics in the Prometheus text format.
    pub async fn metrics(&self) -> Result<String, CoordError> {
        let rows = self.status(None).await?;
        let now = now();
        let version = Family::<SiteTree, Gauge>::default();
        let behind = Family::<SiteTree, Gauge>::default();
        let seconds = Family::<SiteTree, Gauge>::default();
        let age = Family::<SiteTree, Gauge>::default();
        let newest = Family::<TreeLabel, Gauge>::default();
        for r in &rows {
            let l = SiteTree {
                site: r.site.clone(),
                tree: r.tree.clone(),
            };
            if let Some(v) = r.version {
                version.get_or_create(&l).set(v as i64);
            }
            behind
                .get_or_create(&l)
                .set(r.versions_behind.unwrap_or(0) as i64);
            seconds.get_or_create(&l).set(r.seconds_behind.unwrap_or(0));
            let last = r.last_report.unwrap_or(self.started);
            age.get_or_create(&l).set(now - last);
            if let Some(n) = r.newest {
                newest
                    .get_or_create(&TreeLabel {
                        tree: r.tree.clone(),
                    })
                    .set(n as i64);
            }
        }
        let events = Family::<KindLabel, Gauge>::default();
        for kind in [
            "behind",
            "silent",
            "failing",
            "certificate",
            "mismatch",
            "clock",
        ] {
            events
                .get_or_create(&KindLabel { kind: kind.into() })
                .set(0);
        }
        for e in self.db.open_events().await? {
            events.get_or_create(&KindLabel { kind: e.kind }).inc();
        }
        let delivered = Counter::<u64>::default();
        delivered.inc_by(
            self.webhook_delivered
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let failed = Counter::<u64>::default();
        failed.inc_by(
            self.webhook_failed
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let queued = Gauge::<i64>::default();
        queued.set(
            self.webhook_queued
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let leading = Gauge::<i64>::default();
        leading.set(i64::from(self.leading()));
        let polls = Gauge::<i64>::default();
        polls.set(self.long_polls());
        let mut reg = Registry::default();
        reg.register(
            "pulpdist_coordinator_long_polls",
            "Agents' long-polls held open now",
            polls,
        );
        reg.register(
            "pulpdist_coordinator_leading",
            "1 if this coordinator watches the heads, probes and raises events (holds the database's lock)",
            leading,
        );
        reg.register(
            "pulpdist_site_version",
            "The version a site holds of a tree",
            version,
        );
        reg.register(
            "pulpdist_site_versions_behind",
            "Versions between a site's and the newest",
            behind,
        );
        reg.register(
            "pulpdist_site_seconds_behind",
            "Seconds since the first version newer than a site's was seen",
            seconds,
        );
        reg.register(
            "pulpdist_site_report_age_seconds",
            "Seconds since a site last reported on a tree",
            age,
        );
        reg.register(
            "pulpdist_tree_newest_version",
            "The newest version of a tree the coordinator verified",
            newest,
        );
        reg.register("pulpdist_events_open", "Events open, by kind", events);
        reg.register(
            "pulpdist_reports",
            "Reports received, by outcome",
            self.reports_total.clone(),
        );
        reg.register(
            "pulpdist_webhook_deliveries",
            "Events delivered to the webhook",
            delivered,
        );
        reg.register(
            "pulpdist_webhook_failures",
            "Webhook deliveries given up after their last try",
            failed,
        );
        reg.register(
            "pulpdist_webhook_queued",
            "Webhook deliveries waiting (as the leading coordinator last counted)",
            queued,
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).map_err(|e| CoordError::Db {
            what: "encoding metrics".into(),
            detail: e.to_string(),
        })?;
        Ok(out)
    }
}
