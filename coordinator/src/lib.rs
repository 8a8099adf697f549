//! The coordinator (`pulpdist coordinator`): one view and one hand over every site of a
//! mirror network.
//!
//! It holds the network's desired state (a [`pulpdist_network::Network`] file, applied by
//! an admin), hands each site's agent its own assignment (long-polled: an agent learns of
//! a change or a push at once), stores the agents' reports, and watches each tree's head
//! itself (verified against the tree's keys, so a version counts as published only once
//! the coordinator checked its signature). From these it computes each site's status per
//! tree: version held, versions and seconds behind, last success, last error.
//!
//! It is out of the trust path (sites verify every head themselves; the coordinator can
//! mis-assign or delay, never inject content) and out of the availability path (agents
//! keep their last assignment and sync on their own schedule while it is down).
//!
//! Modules: [`db`] (SQLite in WAL mode, or PostgreSQL; migrations), [`server`] (the HTTPS
//! API), [`dashboard`], and here the state, the status computation and the head watcher.
//!
//! Two coordinators may share one PostgreSQL database (for availability): what agents
//! wait for (the network, the push counters) is in the database, each coordinator picks
//! up the other's changes within a second ([`Coordinator::refresh`]), and the singleton
//! duties (head watcher, probes, events, rollups) go to the one holding the database's
//! advisory lock ([`Db::lead`]).

pub mod dashboard;
pub mod db;
mod events;
mod metrics;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;

use pulpdist_network::{Network, SiteAssignment};
use pulpdist_sync::StoreReader;
use serde::Serialize;
use tokio::sync::{Mutex, RwLock};

pub use db::{Db, HeadSeen, Latest, Lead, Pushes, Rollup};

/// Why the coordinator could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// The database failed (full, locked, unreadable).
    #[error("database: {what}: {detail}")]
    Db {
        /// What was being done.
        what: String,
        /// The database's error.
        detail: String,
    },
    /// A network file that does not hold together.
    #[error("network file: {0}")]
    Network(#[from] pulpdist_network::NetworkError),
}

impl CoordError {
    pub(crate) fn db(what: impl Into<String>, e: sqlx::Error) -> CoordError {
        CoordError::Db {
            what: what.into(),
            detail: e.to_string(),
        }
    }
}

/// The network in force.
pub struct Held {
    /// The file, checked (shared: a long-poll's answer does not copy the network).
    pub network: Arc<Network>,
    /// Its text as applied (what `network export` returns).
    pub text: String,
    /// Its revision (1 for the first applied).
    pub revision: u64,
}

/// The longest one probe of a site's served copy may take.
const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long raw reports are kept by default: 30 days.
pub const DEFAULT_KEEP_REPORTS: i64 = 30 * 86_400;

/// The longest the sites below a relay wait, after a push, for the relay to hold the new
/// version before they are woken anyway (seconds).
pub const RELAY_WAIT: i64 = 300;

/// Opens a store by its URL, for the head watcher.
pub type OpenStore = dyn Fn(&str) -> Result<Box<dyn StoreReader>, String> + Send + Sync;

/// The coordinator's state.
pub struct Coordinator {
    /// The database.
    pub db: Db,
    /// The network in force.
    pub held: RwLock<Held>,
    /// The push counters by tree, as the database held them at the last [`refresh`]
    /// (`Coordinator::refresh`).
    pushes: Mutex<BTreeMap<String, Pushes>>,
    /// The change serial of the database at the last refresh.
    serial: Mutex<Option<i64>>,
    /// The push counters' space (the database's, so that an agent moving between two
    /// coordinators of one database keeps its counters).
    epoch: u64,
    /// Bumped on every change an agent's long-poll waits for (network, push).
    pub generation: tokio::sync::watch::Sender<u64>,
    /// When this coordinator started (a site that never reported is silent from then).
    pub started: i64,
    /// A random number for this start: generations begin there.
    pub boot: u64,
    /// When each site's client certificate expires, as last written to the database.
    certificates: Mutex<BTreeMap<String, i64>>,
    /// Reports received, by outcome.
    reports_total: metrics::ReportCounter,
    /// Events delivered to the webhook.
    webhook_delivered: Arc<std::sync::atomic::AtomicU64>,
    /// How the head watcher opens stores.
    opener: Mutex<Option<Arc<OpenStore>>>,
    /// Each (tree, store)'s head as last verified, with its entity tag: the watcher asks
    /// with a conditional GET, and a store that answers "not modified" costs no transfer
    /// nor verification.
    head_tags: Arc<std::sync::Mutex<HeadTags>>,
    /// The probes started and not known to have ended.
    probing: Mutex<std::collections::HashSet<(String, String)>>,
    /// Probes that ended (set by their blocking threads).
    probing_done: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    /// How long raw reports are kept before they are summed into daily rollups (seconds).
    pub keep_reports: std::sync::atomic::AtomicI64,
    /// Whether this coordinator did the singleton duties in its last round.
    leading: std::sync::atomic::AtomicBool,
    /// Long-polls held now.
    long_polls: Arc<std::sync::atomic::AtomicI64>,
    /// Wakes the webhook's delivery task (an event was queued).
    webhook_wake: tokio::sync::Notify,
    /// Deliveries given up after their last try.
    webhook_failed: std::sync::atomic::AtomicU64,
    /// Webhook calls per site this hour: (hour, calls).
    webhook_budget: std::sync::Mutex<BTreeMap<String, (i64, u32)>>,
    /// Deliveries waiting in the database's queue (as last counted).
    webhook_queued: std::sync::atomic::AtomicI64,
    /// Sites' keys checked against the database (forgotten when the change serial moves:
    /// `network reenrol` moves it).
    pub(crate) enrolled: Mutex<BTreeMap<String, String>>,
    /// Bumped when `enrolled` is cleared: a key read from the database before is not kept.
    enrolled_epoch: std::sync::atomic::AtomicU64,
    /// Each site's allowance of requests and of reports (token buckets).
    pub(crate) limits: std::sync::Mutex<BTreeMap<String, Allowance>>,
    /// Long-polls held per site.
    polls_by_site: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
    /// Whether a round of probes is running (it runs on its own task).
    probing_round: Arc<std::sync::atomic::AtomicBool>,
}

/// The most long-polls one site may hold at once.
pub const MAX_POLLS_PER_SITE: u32 = 4;

/// A site's requests: a burst of this many, then [`REQUESTS_PER_SECOND`].
const REQUEST_BURST: f64 = 120.0;
/// A site's sustained request rate.
const REQUESTS_PER_SECOND: f64 = 10.0;
/// A site's reports: a burst of this many (a queue delivered after an outage), then a
/// rate its schedules give (see `server.rs`).
const REPORT_BURST: f64 = 20_000.0;

/// A site's token buckets: requests and reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allowance {
    requests: f64,
    requests_at: std::time::Instant,
    reports: f64,
    reports_at: std::time::Instant,
}

impl Allowance {
    fn full() -> Allowance {
        let now = std::time::Instant::now();
        Allowance {
            requests: REQUEST_BURST,
            requests_at: now,
            reports: REPORT_BURST,
            reports_at: now,
        }
    }

    /// Takes one request, if the site has one left.
    fn request(&mut self) -> bool {
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.requests_at).as_secs_f64();
        self.requests_at = now;
        self.requests = (self.requests + dt * REQUESTS_PER_SECOND).min(REQUEST_BURST);
        if self.requests < 1.0 {
            return false;
        }
        self.requests -= 1.0;
        true
    }

    /// Takes `n` reports, refilled at `rate` a second, if the site has them left.
    fn reports(&mut self, n: usize, rate: f64) -> bool {
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.reports_at).as_secs_f64();
        self.reports_at = now;
        self.reports = (self.reports + dt * rate).min(REPORT_BURST);
        if self.reports < n as f64 {
            return false;
        }
        self.reports -= n as f64;
        true
    }
}

/// Takes up the network a database holds, if its revision is newer than `held`'s:
/// whether it did. One that does not parse is logged and left.
fn take_up(held: &mut Held, stored: Option<(String, u64)>) -> bool {
    let Some((text, revision)) = stored else {
        return false;
    };
    if revision <= held.revision {
        return false;
    }
    match Network::parse(&text) {
        Ok(network) => {
            *held = Held {
                network: network.into(),
                text,
                revision,
            };
            true
        }
        Err(e) => {
            tracing::error!(
                "the database holds network revision {revision}, which does not parse: {e}"
            );
            false
        }
    }
}

/// Clears a flag when dropped.
struct Clear(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Clear {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A long-poll held (counted while it lives).
pub struct LongPoll {
    total: Arc<std::sync::atomic::AtomicI64>,
    by_site: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
    site: String,
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.by_site.lock() {
            if let Some(n) = m.get_mut(&self.site) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.site);
                }
            }
        }
    }
}

/// One site's state for one tree.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StatusRow {
    /// The site.
    pub site: String,
    /// The tree.
    pub tree: String,
    /// The site's labels.
    pub labels: BTreeMap<String, String>,
    /// The version it holds (its last run that ended well).
    pub version: Option<u64>,
    /// The newest version the coordinator verified (`None` until its watcher verified one).
    pub newest: Option<u64>,
    /// Versions between them.
    pub versions_behind: Option<u64>,
    /// Seconds since the first version newer than the one held was seen (0: current).
    pub seconds_behind: Option<i64>,
    /// When its last run that ended well was received.
    pub last_success: Option<i64>,
    /// When its last report was received.
    pub last_report: Option<i64>,
    /// Its last run's outcome.
    pub last_outcome: Option<String>,
    /// The error of its last run, if it failed.
    pub last_error: Option<String>,
    /// The store that served the head in its last run.
    pub head_store: Option<String>,
    /// The version the site's served copy holds, by the coordinator's last probe of it
    /// (a site with `serves`); where probe and report disagree, `version` is the probe's.
    pub probe_version: Option<u64>,
    /// Whether the probe found what the site reported (`None`: not probed).
    pub probe_agrees: Option<bool>,
    /// The version the site last reported holding.
    pub reported_version: Option<u64>,
}

/// What a probe of a site's served copy of a tree found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Probe {
    /// The version of the head it serves (verified), if any.
    pub version: Option<u64>,
    /// Its root node id (hex).
    pub root: Option<String>,
    /// When it was probed.
    pub at: i64,
    /// What went wrong, if the site serves no verifiable head or a damaged root node.
    pub error: Option<String>,
    /// The head's entity tag, for the next conditional GET.
    #[serde(skip)]
    pub(crate) etag: Option<String>,
}

/// A random number (from the standard library's randomly keyed hasher).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Coordinator {
    /// The coordinator over `db`, with the network it holds (or `initial`, applied as
    /// revision 1 when it holds none).
    pub async fn open(db: Db, initial: Option<&str>) -> Result<Coordinator, CoordError> {
        let (text, revision) = match (db.network().await?, initial) {
            (Some(held), _) => held,
            (None, Some(text)) => {
                Network::parse(text)?;
                match db.set_network(text, 1).await? {
                    true => (text.to_string(), 1),
                    // Another coordinator on the database stored one first: its network.
                    false => db.network().await?.unwrap_or_default(),
                }
            }
            (None, None) => (String::new(), 0),
        };
        let network = Network::parse(&text)?;
        // Generations start at a random point each boot: an agent's known generation from
        // a previous boot never matches by chance.
        let boot = random_u64();
        let (generation, _) = tokio::sync::watch::channel(boot >> 16);
        // What the database holds now is taken as seen: the first refresh wakes no poll.
        let (serial, epoch) = db.changes().await?;
        let pushes = db.pushes().await?;
        Ok(Coordinator {
            db,
            held: RwLock::new(Held {
                network: network.into(),
                text,
                revision,
            }),
            pushes: Mutex::new(pushes),
            serial: Mutex::new(Some(serial)),
            epoch,
            generation,
            started: now(),
            boot,
            certificates: Mutex::new(BTreeMap::new()),
            reports_total: Default::default(),
            webhook_delivered: Arc::default(),
            opener: Mutex::new(None),
            head_tags: Arc::default(),
            probing: Mutex::new(Default::default()),
            probing_done: Arc::default(),
            keep_reports: std::sync::atomic::AtomicI64::new(DEFAULT_KEEP_REPORTS),
            leading: std::sync::atomic::AtomicBool::new(false),
            long_polls: Arc::default(),
            webhook_wake: tokio::sync::Notify::new(),
            webhook_failed: Default::default(),
            webhook_budget: Default::default(),
            webhook_queued: Default::default(),
            enrolled: Mutex::new(BTreeMap::new()),
            enrolled_epoch: Default::default(),
            limits: std::sync::Mutex::new(BTreeMap::new()),
            polls_by_site: Arc::default(),
            probing_round: Arc::default(),
        })
    }

    /// Applies a network file: `(revision, changed)`. The same network again changes
    /// nothing (applying a file kept in git is idempotent).
    pub async fn apply(&self, text: &str) -> Result<(u64, bool), CoordError> {
        let network = Network::parse(text)?;
        let mut held = self.held.write().await;
        if *held.network == network && held.revision > 0 {
            return Ok((held.revision, false));
        }
        let revision = held.revision + 1;
        if !self.db.set_network(text, revision).await? {
            drop(held);
            self.reload_network().await?;
            return Err(CoordError::Db {
                what: "storing the network".into(),
                detail: "another coordinator on the database applied one meanwhile; check it with `network export` and apply again".into(),
            });
        }
        *held = Held {
            network: network.into(),
            text: text.to_string(),
            revision,
        };
        // Under the lock: a long-poll never sees the new network with the old generation.
        self.generation.send_modify(|g| *g += 1);
        drop(held);
        Ok((revision, true))
    }

    /// Takes up the network the database holds, whatever the change serial says.
    async fn reload_network(&self) -> Result<(), CoordError> {
        let stored = self.db.network().await?;
        let mut held = self.held.write().await;
        if take_up(&mut held, stored) {
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Takes up what the database holds, if it changed since the last call (a network
    /// or a push from this coordinator or another one on the database): the network in
    /// force and the push counters; then wakes the long-polls. Whether anything changed.
    pub async fn refresh(&self) -> Result<bool, CoordError> {
        // One refresh at a time, and the serial seen only moves forward.
        let mut seen = self.serial.lock().await;
        let (serial, _) = self.db.changes().await?;
        if seen.is_some_and(|s| s >= serial) {
            return Ok(false);
        }
        let pushes = self.db.pushes().await?;
        let stored = self.db.network().await?;
        // The network, the counters and the generation change together, under the locks
        // `assignment` reads them under: a long-poll's baseline is always one generation's.
        let mut held = self.held.write().await;
        take_up(&mut held, stored);
        let mut counters = self.pushes.lock().await;
        *counters = pushes;
        self.generation.send_modify(|g| *g += 1);
        drop(counters);
        // A re-enrolment on any coordinator moves the serial: keys are checked again.
        let mut known = self.enrolled.lock().await;
        self.enrolled_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        known.clear();
        drop(held);
        *seen = Some(serial);
        Ok(true)
    }

    /// Records when `site`'s client certificate expires (written only when it changed).
    pub async fn saw_certificate(&self, site: &str, not_after: i64) {
        if self.certificates.lock().await.get(site) == Some(&not_after) {
            return;
        }
        match self.db.set_not_after(site, not_after).await {
            Ok(()) => {
                self.certificates
                    .lock()
                    .await
                    .insert(site.to_string(), not_after);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// Stores a site's reports and counts them; `skew` is how far the site's clock is off
    /// (its clock minus the coordinator's, in seconds), where it said what it read.
    pub async fn add_reports(
        &self,
        site: &str,
        reports: &[pulpdist_network::Report],
        skew: Option<i64>,
    ) -> Result<(), CoordError> {
        self.db.add_reports(site, reports, now(), skew).await?;
        if let Err(e) = self.release_downstream().await {
            tracing::warn!("{e}");
        }
        for r in reports {
            let outcome = serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            self.reports_total
                .get_or_create(&metrics::OutcomeLabel { outcome })
                .inc();
        }
        Ok(())
    }

    /// Wakes the sites that carry `tree` (a new head, `publish --notify`): relays and the
    /// sites that sync from the tree's own stores now, the sites below a relay once every
    /// relay of the tree reported the newest version (or [`RELAY_WAIT`] later).
    pub async fn trigger(&self, tree: &str) {
        let relays = !self
            .held
            .read()
            .await
            .network
            .relays_of_tree(tree)
            .is_empty();
        // The relays' wait restarts with each push: they must report after the last one.
        let wait = relays.then(now);
        let counted = match self.db.push(tree, wait).await {
            Ok(()) => self.refresh().await,
            Err(e) => Err(e),
        };
        if let Err(e) = counted {
            // The sites connected here are still woken; the timer is the guarantee.
            tracing::warn!("{e}: the push of {tree} is counted here only");
            let mut p = self.pushes.lock().await;
            let e = p.entry(tree.to_string()).or_default();
            e.upstream += 1;
            e.waiting_since = wait.or(e.waiting_since);
            self.generation.send_modify(|g| *g += 1);
            drop(p);
        }
    }

    /// Releases the pushes waiting for relays: for each tree, once every relay holds the
    /// newest verified version, or the wait ran out.
    pub async fn release_downstream(&self) -> Result<(), CoordError> {
        let waiting: Vec<(String, i64)> = self
            .pushes
            .lock()
            .await
            .iter()
            .filter_map(|(t, p)| p.waiting_since.map(|s| (t.clone(), s)))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let network = self.held.read().await.network.clone();
        // What a relay serves, where it was probed, rather than what it reports.
        let probes = self.db.probes().await?;
        for (tree, since) in waiting {
            let newest = self.db.heads(&tree, 1).await?.first().map(|h| h.version);
            let mut ready = now() - since >= RELAY_WAIT;
            if !ready {
                ready = true;
                // Each relay reported, after the push, holding the newest version.
                for relay in network.relays_of_tree(&tree) {
                    let latest = self.db.latest(&relay, &tree).await?;
                    // A probe since the push and since the relay's last report, that found
                    // what it serves, wins over that report.
                    let reported = latest.last_report.unwrap_or(0);
                    let held = match probes.get(&(relay.clone(), tree.clone())) {
                        Some(p) if p.at >= since && p.at >= reported && p.error.is_none() => {
                            p.version
                        }
                        _ => latest.held.map(|(v, _)| v),
                    };
                    ready &= newest.is_some_and(|n| held.is_some_and(|h| h >= n))
                        && latest.last_success.is_some_and(|at| at >= since);
                }
            }
            // Not if another push came meanwhile (its own wait decides), nor if another
            // coordinator released it.
            if ready && self.db.release(&tree, since).await? {
                tracing::info!(tree = %tree, "the relays hold the new version: the sites below them are woken");
                self.refresh().await?;
            }
        }
        Ok(())
    }

    /// `site`'s assignment, with the pushes so far and the current generation.
    pub async fn assignment(&self, site: &str) -> Option<SiteAssignment> {
        // The generation read under the locks its changes are made under (see `refresh`).
        let held = self.held.read().await;
        let pushes = self.pushes.lock().await;
        let generation = *self.generation.borrow();
        let mut a = held.network.assignment_of(site, generation)?;
        a.boot = self.epoch;
        for t in &mut a.trees {
            let p = pushes.get(&t.tree).copied().unwrap_or_default();
            t.trigger = match &t.upstream {
                None => p.upstream,
                Some(_) => p.downstream,
            };
        }
        Some(a)
    }

    /// Every (site, tree) the network assigns, with its state; `query` filters by
    /// `tree=`, `site=` and `label=KEY:VALUE`.
    pub async fn status(&self, query: Option<&str>) -> Result<Vec<StatusRow>, CoordError> {
        let want = |k: &str| -> Vec<String> {
            query
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .filter(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
                .collect()
        };
        let (trees, sites, labels) = (want("tree"), want("site"), want("label"));
        let network = self.held.read().await.network.clone();
        let now = now();
        // Four queries for the whole network, not four per row.
        let mut latest = self.db.latest_all().await?;
        let heads = self.db.heads_all().await?;
        let probes = self.db.probes().await?;
        let mut rows = Vec::new();
        for (name, def) in &network.sites {
            if !sites.is_empty() && !sites.contains(name) {
                continue;
            }
            let label_ok = labels.iter().all(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| def.labels.get(k).map(String::as_str) == Some(v))
            });
            if !label_ok {
                continue;
            }
            let Some(a) = network.assignment_of(name, 0) else {
                continue;
            };
            for t in a
                .trees
                .iter()
                .filter(|t| trees.is_empty() || trees.contains(&t.tree))
            {
                let key = (name.clone(), t.tree.clone());
                let last = latest.remove(&key).unwrap_or_default();
                let probe = probes.get(&key).cloned();
                let tree_heads = heads.get(&t.tree).map_or(&[][..], Vec::as_slice);
                rows.push(row(name, def, &t.tree, (last, probe), tree_heads, now));
            }
        }
        Ok(rows)
    }

    /// Checks each tree's head once: fetched from its first store that answers, verified
    /// against the tree's keys, recorded; a version not seen before wakes the tree's
    /// sites. Returns the trees that got a new version.
    pub async fn watch_heads(&self, open: Arc<OpenStore>) -> Vec<String> {
        self.set_opener(open).await;
        let trees: Vec<String> = self
            .held
            .read()
            .await
            .network
            .trees
            .keys()
            .cloned()
            .collect();
        let mut fresh = Vec::new();
        for tree in trees {
            if self.watch_tree(&tree).await {
                fresh.push(tree);
            }
        }
        fresh
    }

    /// The stores' opener the watcher uses (kept for pushes, which check the head first).
    pub async fn set_opener(&self, open: Arc<OpenStore>) {
        *self.opener.lock().await = Some(open);
    }

    /// Checks one tree's head; a version not seen before wakes the tree's sites. Returns
    /// whether it was new.
    pub async fn watch_tree(&self, tree: &str) -> bool {
        let Some(open) = self.opener.lock().await.clone() else {
            return false;
        };
        let Some(def) = self.held.read().await.network.trees.get(tree).cloned() else {
            return false;
        };
        let tree_name = tree.to_string();
        let tags = self.head_tags.clone();
        let got =
            tokio::task::spawn_blocking(move || newest_head(&tree_name, &def, &*open, &tags)).await;
        let Ok(Some(seen)) = got else { return false };
        match self.db.add_head(&seen).await {
            Ok(true) => {
                tracing::info!(tree = %tree, version = seen.version, "new head");
                self.trigger(tree).await;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        }
    }

    /// A push (`publish --notify`, `network push`): the tree's head is checked first, so
    /// that the relays' progress is measured against the version pushed; an unchanged head
    /// still wakes the sites.
    pub async fn push(&self, tree: &str) {
        // A store that does not answer delays the push by a minute at most.
        let seen = tokio::time::timeout(PROBE_DEADLINE, self.watch_tree(tree)).await;
        if !matches!(seen, Ok(true)) {
            self.trigger(tree).await;
        }
    }
}

impl Coordinator {
    /// The coordinator's periodic work, for ever: every second it takes up what the
    /// database holds ([`Coordinator::refresh`]); every `every`, if it leads
    /// ([`Db::lead`]: always on SQLite), it checks the trees' heads, probes the sites that
    /// serve their copy, and evaluates the events. A coordinator that does not lead tries
    /// to each `every` (a leader that died hands over within one period).
    pub async fn run(self: Arc<Self>, open: Arc<OpenStore>, every: std::time::Duration) {
        // A push to a coordinator that stands by checks the head too.
        self.set_opener(open.clone()).await;
        let self_webhooks = self.clone();
        let refresh = {
            let coord = self.clone();
            async move {
                loop {
                    if let Err(e) = coord.refresh().await {
                        tracing::warn!("{e}");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        };
        let duties = async move {
            let mut lead = Lead::default();
            let mut was = None;
            loop {
                let leads = self.db.lead(&mut lead).await;
                self.leading
                    .store(leads, std::sync::atomic::Ordering::Relaxed);
                if was.replace(leads) != Some(leads) {
                    match leads {
                        true => {
                            tracing::info!(db = %self.db.name(), "this coordinator watches the heads, probes the sites and raises the events")
                        }
                        false => {
                            tracing::info!(db = %self.db.name(), "another coordinator on the database leads; this one stands by")
                        }
                    }
                }
                if leads {
                    self.watch_heads(open.clone()).await;
                    // Probes on their own task: a site that answers slowly delays no head.
                    if !self
                        .probing_round
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        let (coord, open) = (self.clone(), open.clone());
                        tokio::spawn(async move {
                            // Cleared however the round ends (a panic included).
                            let _done = Clear(coord.probing_round.clone());
                            coord.probe_sites(open).await;
                        });
                    }
                    if let Err(e) = self.evaluate().await {
                        tracing::warn!("evaluating events: {e}");
                    }
                }
                // One standing by asks for the lock at least every 5 s; the one leading
                // checks it holds it as often, so that a lock the server dropped (a
                // connection cut) stops its duties within seconds, not a watch period.
                let step = std::time::Duration::from_secs(5);
                let until = tokio::time::Instant::now() + every;
                loop {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() || !leads {
                        tokio::time::sleep(left.min(step)).await;
                        break;
                    }
                    tokio::time::sleep(left.min(step)).await;
                    if self.db.shared() && !self.db.lead(&mut lead).await {
                        self.leading
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }
        };
        let webhooks = {
            let coord = self_webhooks;
            async move { coord.deliver_webhooks().await }
        };
        tokio::join!(refresh, duties, webhooks);
    }

    /// Counts a long-poll of `site` held until the guard is dropped; `None` if the site
    /// holds [`MAX_POLLS_PER_SITE`] already.
    pub fn long_poll(&self, site: &str) -> Option<LongPoll> {
        let mut by_site = self.polls_by_site.lock().ok()?;
        let n = by_site.entry(site.to_string()).or_insert(0);
        if *n >= MAX_POLLS_PER_SITE {
            return None;
        }
        *n += 1;
        drop(by_site);
        self.long_polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(LongPoll {
            total: self.long_polls.clone(),
            by_site: self.polls_by_site.clone(),
            site: site.to_string(),
        })
    }

    /// Takes one request from `site`'s allowance: `false` if it has none left (the
    /// answer is 429; the agent tries again later).
    pub fn allow_request(&self, site: &str) -> bool {
        let Ok(mut limits) = self.limits.lock() else {
            return false;
        };
        limits
            .entry(site.to_string())
            .or_insert_with(Allowance::full)
            .request()
    }

    /// Takes `n` reports from `site`'s allowance, refilled at `rate` a second.
    pub fn allow_reports(&self, site: &str, n: usize, rate: f64) -> bool {
        let Ok(mut limits) = self.limits.lock() else {
            return false;
        };
        limits
            .entry(site.to_string())
            .or_insert_with(Allowance::full)
            .reports(n, rate)
    }

    /// Bumped each time the memory of enrolled keys is cleared.
    pub(crate) fn enrolled_epoch(&self) -> u64 {
        self.enrolled_epoch
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Long-polls held now.
    pub fn long_polls(&self) -> i64 {
        self.long_polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this coordinator did the singleton duties in its last round.
    pub fn leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Probes every site that serves its copy (`serves`), for each tree it carries: one
    /// conditional GET of the served head, verified, and one range read of its root node,
    /// verified against its id.
    pub async fn probe_sites(&self, open: Arc<OpenStore>) {
        let network = self.held.read().await.network.clone();
        let known = match self.db.probes().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{e}: no probes this round");
                return;
            }
        };
        for (site, def) in &network.sites {
            let Some(url) = def.serves.clone() else {
                continue;
            };
            let Some(a) = network.assignment_of(site, 0) else {
                continue;
            };
            for t in a.trees {
                let key = (site.clone(), t.tree.clone());
                // A probe still running (a site that drips its answer) is not started again.
                if !self.probing.lock().await.insert(key.clone()) {
                    continue;
                }
                let last = known.get(&key).cloned();
                let (open, url) = (open.clone(), url.clone());
                // At most a minute a probe: a site that drips its answer holds no one up.
                let running = self.probing_done.clone();
                let done_key = key.clone();
                let work = tokio::task::spawn_blocking(move || {
                    let p = probe(&*open, &url, &t.tree, &t.trust, last);
                    if let Ok(mut d) = running.lock() {
                        d.insert(done_key);
                    }
                    p
                });
                let probed = tokio::time::timeout(PROBE_DEADLINE, work).await;
                let p = match probed {
                    Ok(Ok(p)) => p,
                    _ => Probe {
                        at: now(),
                        error: Some(format!("no answer within {} s", PROBE_DEADLINE.as_secs())),
                        ..Probe::default()
                    },
                };
                if let Err(e) = self.db.set_probe(&key.0, &key.1, &p).await {
                    tracing::warn!("{e}");
                }
                // Probes that ended (in time or not) may start again.
                let ended: Vec<(String, String)> = match self.probing_done.lock() {
                    Ok(mut d) => std::mem::take(&mut *d).into_iter().collect(),
                    Err(_) => Vec::new(),
                };
                let mut probing = self.probing.lock().await;
                for k in ended {
                    probing.remove(&k);
                }
            }
        }
    }
}

/// One probe of `tree` as served at `url`; `last` gives the entity tag to send.
fn probe(open: &OpenStore, url: &str, tree: &str, trust: &[String], last: Option<Probe>) -> Probe {
    let at = now();
    let fail = |e: String| Probe {
        at,
        error: Some(e),
        ..Probe::default()
    };
    let keys = match pulpdist_format::TrustedKeys::from_text(&trust.join("\n")) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let reader = match open(url) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let known = last.as_ref().and_then(|p| p.etag.clone());
    let (bytes, etag) = match reader.get_head(tree, known.as_deref()) {
        Ok(pulpdist_sync::HeadFetch::Found { bytes, etag }) => (bytes, etag),
        Ok(pulpdist_sync::HeadFetch::NotModified) => match last {
            Some(p) if p.error.is_none() => return Probe { at, ..p },
            _ => return fail("answered 304 to a probe with nothing to compare".into()),
        },
        Ok(pulpdist_sync::HeadFetch::Missing) => {
            return fail(format!("{url} serves no head of {tree}"))
        }
        Err(e) => return fail(e.to_string()),
    };
    let signed = match pulpdist_format::SignedHead::decode_and_verify(&bytes, &keys) {
        Ok(s) if s.head().tree == tree => s,
        Ok(s) => return fail(format!("{url} serves tree '{}' as {tree}", s.head().tree)),
        Err(e) => return fail(format!("{url}: its head of {tree}: {e}")),
    };
    let h = signed.head();
    // The sampled read: the root node, which every sync of the version fetches.
    let root = match reader.get_range(&h.root.loc.pack, h.root.loc.range()) {
        Ok(stored) => h.root.open(&stored).map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Probe {
        version: Some(h.version),
        root: Some(h.root.id.to_hex()),
        at,
        error: root
            .err()
            .map(|e| format!("{url}: the root node of version {}: {e}", h.version)),
        etag,
    }
}

/// Each (tree, store and trusted keys)'s last verified head and its entity tag.
type HeadTags = std::collections::HashMap<(String, String), (String, HeadSeen)>;

/// The verified head of `tree` from the first of its stores that serves one, asked with
/// the entity tag of the head last verified from that store (kept in `tags`).
fn newest_head(
    tree: &str,
    def: &pulpdist_network::TreeDef,
    open: &OpenStore,
    tags: &std::sync::Mutex<HeadTags>,
) -> Option<HeadSeen> {
    let keys = pulpdist_format::TrustedKeys::from_text(&def.trust.join("\n")).ok()?;
    for store in &def.stores {
        let reader = match open(store) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(store = %store, "{e}");
                continue;
            }
        };
        // The keys are part of what was verified: other keys, no cached head.
        let key = (
            tree.to_string(),
            format!("{store}\n{}", def.trust.join("\n")),
        );
        let known = tags.lock().ok().and_then(|t| t.get(&key).cloned());
        let (bytes, etag) = match reader.get_head(tree, known.as_ref().map(|(e, _)| e.as_str())) {
            Ok(pulpdist_sync::HeadFetch::Found { bytes, etag }) => (bytes, etag),
            Ok(pulpdist_sync::HeadFetch::NotModified) => match known {
                Some((_, seen)) => return Some(seen),
                None => continue,
            },
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(store = %store, "{e}");
                continue;
            }
        };
        match pulpdist_format::SignedHead::decode_and_verify(&bytes, &keys) {
            Ok(s) if s.head().tree == tree => {
                let h = s.head();
                let added = h.recent.iter().find(|v| v.version == h.version);
                let seen = HeadSeen {
                    tree: tree.to_string(),
                    version: h.version,
                    root: h.root.id.to_hex(),
                    created: h.created,
                    seen: now(),
                    added_bytes: added.map(|v| v.packs.iter().map(|p| p.size).sum()),
                    delta_bytes: h.deltas().ok().and_then(|d| {
                        let from = h.version.checked_sub(1)?;
                        let parts = d.iter().filter(|d| d.from_version == from);
                        parts.clone().next()?;
                        Some(parts.map(|d| d.size).sum())
                    }),
                };
                if let (Some(etag), Ok(mut t)) = (etag, tags.lock()) {
                    t.insert(key, (etag, seen.clone()));
                }
                return Some(seen);
            }
            _ => tracing::warn!(store = %store, tree = %tree, "a head that does not verify"),
        }
    }
    None
}

/// Freshness by content: whether the site serves what it reported, and whether the probe
/// (rather than the report) says which version it holds.
///
/// A probe judges only what the site reported it came after (in a later second): a probe
/// taken before the site first reported holding its version says nothing about it, so a
/// site that just moved is not flagged (nor shown at its old version) until the next
/// probe; one taken after is judged however many reports of the same version follow. A site
/// that has not reported yet has nothing to disagree with. A site that serves a newer
/// version than it reported is not flagged either: its report is on the way.
fn judge(latest: &Latest, probe: Option<&Probe>) -> (Option<bool>, bool) {
    let Some(p) = probe else {
        return (None, false);
    };
    let Some((reported, root)) = latest.held.as_ref() else {
        return (None, p.error.is_none());
    };
    if latest
        .held_since
        .or(latest.last_success)
        .is_some_and(|t| p.at <= t)
    {
        return (None, false);
    }
    if p.error.is_some() {
        return (Some(false), false);
    }
    match p.version.cmp(&Some(*reported)) {
        std::cmp::Ordering::Greater => (None, true),
        std::cmp::Ordering::Equal => (Some(p.root.as_deref() == Some(root.as_str())), true),
        std::cmp::Ordering::Less => (Some(false), true),
    }
}

fn row(
    site: &str,
    def: &pulpdist_network::SiteDef,
    tree: &str,
    (latest, probe): (Latest, Option<Probe>),
    heads: &[HeadSeen],
    now: i64,
) -> StatusRow {
    let reported = latest.held.as_ref().map(|(v, _)| *v);
    let (probe_agrees, probe_wins) = judge(&latest, probe.as_ref());
    let probe_version = probe.as_ref().and_then(|p| p.version);
    let version = match &probe {
        Some(p) if probe_wins => p.version,
        _ => reported,
    };
    let newest = heads.first().map(|h| h.version);
    let behind_since = heads
        .iter()
        .filter(|h| version.is_none_or(|v| h.version > v))
        .map(|h| h.seen)
        .min();
    StatusRow {
        site: site.to_string(),
        tree: tree.to_string(),
        labels: def.labels.clone(),
        version,
        newest,
        versions_behind: newest.map(|n| n.saturating_sub(version.unwrap_or(0))),
        seconds_behind: newest.map(|_| behind_since.map_or(0, |s| (now - s).max(0))),
        last_success: latest.last_success,
        last_report: latest.last_report,
        last_outcome: latest.last_outcome,
        last_error: latest.last_error,
        head_store: latest.head_store,
        probe_version,
        probe_agrees,
        reported_version: reported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(version: u64, root: &str, at: i64) -> Probe {
        Probe {
            version: Some(version),
            root: Some(root.into()),
            at,
            ..Probe::default()
        }
    }

    fn held(version: u64, root: &str, at: i64) -> Latest {
        Latest {
            held: Some((version, root.into())),
            last_success: Some(at),
            last_report: Some(at),
            held_since: Some(at),
            ..Latest::default()
        }
    }

    #[test]
    fn a_probe_judges_only_the_report_it_came_after() {
        // The site moved to version 2 at 100; the last probe saw version 1 at 90 (a relay
        // that just synced): no mismatch, and the report stands until the next probe.
        let site = held(2, "r2", 100);
        assert_eq!(judge(&site, Some(&probe(1, "r1", 90))), (None, false));
        // In the same second as the report: still not judged.
        assert_eq!(judge(&site, Some(&probe(1, "r1", 100))), (None, false));
        // A probe after the report that still sees version 1: flagged, and the probe wins.
        assert_eq!(
            judge(&site, Some(&probe(1, "r1", 101))),
            (Some(false), true)
        );
        // The same version with another root: flagged.
        assert_eq!(
            judge(&site, Some(&probe(2, "rX", 101))),
            (Some(false), true)
        );
        // What it reported: agrees.
        assert_eq!(judge(&site, Some(&probe(2, "r2", 101))), (Some(true), true));
        // Newer than it reported (its report is on the way): shown, not flagged.
        assert_eq!(judge(&site, Some(&probe(3, "r3", 101))), (None, true));
        // The site keeps reporting version 2 (up to date) after that probe: the probe still
        // judges it, since it came after the site first reported version 2.
        let again = Latest {
            last_success: Some(130),
            last_report: Some(130),
            ..site.clone()
        };
        assert_eq!(
            judge(&again, Some(&probe(1, "r1", 101))),
            (Some(false), true)
        );
        // A probe that failed after the report: flagged, the report stands.
        let failed = Probe {
            at: 101,
            error: Some("no head".into()),
            ..Probe::default()
        };
        assert_eq!(judge(&site, Some(&failed)), (Some(false), false));
        // No report yet: nothing to disagree with; a good probe says what it serves.
        assert_eq!(
            judge(&Latest::default(), Some(&probe(1, "r1", 5))),
            (None, true)
        );
        assert_eq!(judge(&site, None), (None, false));
    }

    #[test]
    fn a_stale_probe_shows_the_reported_version_and_raises_nothing() {
        let heads = vec![HeadSeen {
            tree: "t".into(),
            version: 2,
            root: "r2".into(),
            created: 0,
            seen: 50,
            added_bytes: None,
            delta_bytes: None,
        }];
        let def = pulpdist_network::SiteDef::default();
        let r = row(
            "s",
            &def,
            "t",
            (held(2, "r2", 100), Some(probe(1, "r1", 90))),
            &heads,
            120,
        );
        assert_eq!(
            (r.version, r.probe_agrees, r.versions_behind),
            (Some(2), None, Some(0))
        );
        let r = row(
            "s",
            &def,
            "t",
            (held(2, "r2", 100), Some(probe(1, "r1", 110))),
            &heads,
            120,
        );
        assert_eq!(
            (r.version, r.probe_agrees, r.versions_behind),
            (Some(1), Some(false), Some(1))
        );
    }
}
