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
//! Modules: [`db`] (SQLite, WAL, migrations), [`server`] (the HTTPS API), and here the
//! state, the status computation and the head watcher.

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

pub use db::{Db, HeadSeen, Latest, Rollup};

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
    /// The file, checked.
    pub network: Network,
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
    /// Pushes so far, by tree: sites that sync from the tree's own stores see them at once.
    triggers: Mutex<BTreeMap<String, u64>>,
    /// Pushes for the sites below a relay, by tree, and since when one is waiting for the
    /// relays to hold the new version.
    downstream: Mutex<BTreeMap<String, (u64, Option<i64>)>>,
    /// Bumped on every change an agent's long-poll waits for (network, push).
    pub generation: tokio::sync::watch::Sender<u64>,
    /// When this coordinator started (a site that never reported is silent from then).
    pub started: i64,
    /// A random number for this start (see [`SiteAssignment::boot`]).
    pub boot: u64,
    /// When each site's client certificate expires (from its last connection).
    pub certificates: Mutex<BTreeMap<String, i64>>,
    /// Reports received, by outcome.
    reports_total: metrics::ReportCounter,
    /// Events delivered to the webhook.
    webhook_delivered: Arc<std::sync::atomic::AtomicU64>,
    /// The last probe of each (site, tree) whose site serves its copy.
    pub probes: Mutex<BTreeMap<(String, String), Probe>>,
    /// How the head watcher opens stores.
    opener: Mutex<Option<Arc<OpenStore>>>,
    /// The probes started and not known to have ended.
    probing: Mutex<std::collections::HashSet<(String, String)>>,
    /// Probes that ended (set by their blocking threads).
    probing_done: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    /// How long raw reports are kept before they are summed into daily rollups (seconds).
    pub keep_reports: std::sync::atomic::AtomicI64,
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
    etag: Option<String>,
}

/// A random number (from the standard library's randomly keyed hasher).
fn random_u64() -> u64 {
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
                db.set_network(text, 1).await?;
                (text.to_string(), 1)
            }
            (None, None) => (String::new(), 0),
        };
        let network = Network::parse(&text)?;
        // Generations start at a random point each boot: an agent's known generation from
        // a previous boot never matches by chance.
        let boot = random_u64();
        let (generation, _) = tokio::sync::watch::channel(boot >> 16);
        let _ = revision;
        Ok(Coordinator {
            db,
            held: RwLock::new(Held {
                network,
                text,
                revision,
            }),
            triggers: Mutex::new(BTreeMap::new()),
            downstream: Mutex::new(BTreeMap::new()),
            generation,
            started: now(),
            boot,
            certificates: Mutex::new(BTreeMap::new()),
            reports_total: Default::default(),
            webhook_delivered: Arc::default(),
            probes: Mutex::new(BTreeMap::new()),
            opener: Mutex::new(None),
            probing: Mutex::new(Default::default()),
            probing_done: Arc::default(),
            keep_reports: std::sync::atomic::AtomicI64::new(DEFAULT_KEEP_REPORTS),
        })
    }

    /// Applies a network file: `(revision, changed)`. The same network again changes
    /// nothing (applying a file kept in git is idempotent).
    pub async fn apply(&self, text: &str) -> Result<(u64, bool), CoordError> {
        let network = Network::parse(text)?;
        let mut held = self.held.write().await;
        if network == held.network && held.revision > 0 {
            return Ok((held.revision, false));
        }
        let revision = held.revision + 1;
        self.db.set_network(text, revision).await?;
        *held = Held {
            network,
            text: text.to_string(),
            revision,
        };
        drop(held);
        self.generation.send_modify(|g| *g += 1);
        Ok((revision, true))
    }

    /// Stores a site's reports and counts them.
    pub async fn add_reports(
        &self,
        site: &str,
        reports: &[pulpdist_network::Report],
    ) -> Result<(), CoordError> {
        self.db.add_reports(site, reports, now()).await?;
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
        *self
            .triggers
            .lock()
            .await
            .entry(tree.to_string())
            .or_insert(0) += 1;
        if !self
            .held
            .read()
            .await
            .network
            .relays_of_tree(tree)
            .is_empty()
        {
            let mut d = self.downstream.lock().await;
            // The wait restarts with each push: the relays must report after the last one.
            let e = d.entry(tree.to_string()).or_insert((0, None));
            e.1 = Some(now());
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Releases the pushes waiting for relays: for each tree, once every relay holds the
    /// newest verified version, or the wait ran out.
    pub async fn release_downstream(&self) -> Result<(), CoordError> {
        let waiting: Vec<(String, i64)> = self
            .downstream
            .lock()
            .await
            .iter()
            .filter_map(|(t, (_, since))| since.map(|s| (t.clone(), s)))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let network = self.held.read().await.network.clone();
        for (tree, since) in waiting {
            let newest = self.db.heads(&tree).await?.first().map(|h| h.version);
            let mut ready = now() - since >= RELAY_WAIT;
            if !ready {
                ready = true;
                // Each relay reported, after the push, holding the newest version.
                for relay in network.relays_of_tree(&tree) {
                    let latest = self.db.latest(&relay, &tree).await?;
                    let held = latest.held.map(|(v, _)| v);
                    ready &= newest.is_some_and(|n| held.is_some_and(|h| h >= n))
                        && latest.last_success.is_some_and(|at| at >= since);
                }
            }
            if ready {
                // Not if another push came meanwhile: its own wait decides.
                match self.downstream.lock().await.get_mut(&tree) {
                    Some(e) if e.1 == Some(since) => *e = (e.0 + 1, None),
                    _ => continue,
                }
                tracing::info!(tree = %tree, "the relays hold the new version: the sites below them are woken");
                self.generation.send_modify(|g| *g += 1);
            }
        }
        Ok(())
    }

    /// `site`'s assignment, with the pushes so far and the current generation.
    pub async fn assignment(&self, site: &str) -> Option<SiteAssignment> {
        let generation = *self.generation.borrow();
        let network = self.held.read().await.network.clone();
        let mut a = network.assignment_of(site, generation)?;
        a.boot = self.boot;
        let triggers = self.triggers.lock().await;
        let downstream = self.downstream.lock().await;
        for t in &mut a.trees {
            t.trigger = match &t.upstream {
                None => triggers.get(&t.tree).copied().unwrap_or(0),
                Some(_) => downstream.get(&t.tree).map_or(0, |d| d.0),
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
        // Three queries for the whole network, not three per row.
        let mut latest = self.db.latest_all().await?;
        let heads = self.db.heads_all().await?;
        let probes = self.probes.lock().await.clone();
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
        let got = tokio::task::spawn_blocking(move || newest_head(&tree_name, &def, &*open)).await;
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
    /// Probes every site that serves its copy (`serves`), for each tree it carries: one
    /// conditional GET of the served head, verified, and one range read of its root node,
    /// verified against its id.
    pub async fn probe_sites(&self, open: Arc<OpenStore>) {
        let network = self.held.read().await.network.clone();
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
                let last = self.probes.lock().await.get(&key).cloned();
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
                self.probes.lock().await.insert(key, p);
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

/// The verified head of `tree` from the first of its stores that serves one.
fn newest_head(tree: &str, def: &pulpdist_network::TreeDef, open: &OpenStore) -> Option<HeadSeen> {
    let keys = pulpdist_format::TrustedKeys::from_text(&def.trust.join("\n")).ok()?;
    for store in &def.stores {
        let reader = match open(store) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(store = %store, "{e}");
                continue;
            }
        };
        let bytes = match reader.get_head(tree, None) {
            Ok(pulpdist_sync::HeadFetch::Found { bytes, .. }) => bytes,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(store = %store, "{e}");
                continue;
            }
        };
        match pulpdist_format::SignedHead::decode_and_verify(&bytes, &keys) {
            Ok(s) if s.head().tree == tree => {
                let h = s.head();
                return Some(HeadSeen {
                    tree: tree.to_string(),
                    version: h.version,
                    root: h.root.id.to_hex(),
                    created: h.created,
                    seen: now(),
                });
            }
            _ => tracing::warn!(store = %store, tree = %tree, "a head that does not verify"),
        }
    }
    None
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
    // Freshness by content: what the site serves, where the coordinator probed it.
    // A site that has not reported yet has nothing to disagree with.
    let probe_agrees = probe.as_ref().filter(|_| reported.is_some()).map(|p| {
        p.error.is_none()
            && p.version == reported
            && p.root.as_deref() == latest.held.as_ref().map(|(_, r)| r.as_str())
    });
    let probe_version = probe.as_ref().and_then(|p| p.version);
    let version = match &probe {
        Some(p) if p.error.is_none() => p.version,
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
