//! The site agent (`pulpdist agent`): a long-running service on each site that keeps the
//! site's assigned trees synced and tells the coordinator about every run.
//!
//! - **Outbound only.** It long-polls the coordinator for its assignment (a change or a
//!   push ends the poll at once), so it works behind NAT and firewalls.
//! - **Out of the availability path.** The last assignment is cached on disk and the
//!   schedule keeps running from it while the coordinator is away; reports queue on disk
//!   and are delivered when it is back.
//! - **Push is an optimisation, the timer the guarantee.** A tree is synced when its
//!   schedule comes round, and at once when its push counter rises; a push that arrives
//!   during a sync of the tree makes the agent sync it again afterwards.
//! - Syncs run through the library ([`pulpdist_sync::sync`]), one at a time, so at most
//!   one per tree.

mod client;
mod metrics;
mod pace;
mod queue;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulpdist_network::{Outcome, Report, SiteAssignment, TreeAssignment};
use pulpdist_sync::{StoreReader, SyncError, SyncOptions};

pub use client::Client;
pub use metrics::{serve_metrics, AgentMetrics};
pub use queue::Queue;

/// Why the agent could not do something (never why a sync failed: that is a report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The coordinator did not answer as it should.
    #[error("{url}: {detail}")]
    Coordinator {
        /// What was asked.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The agent's own files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A setting that cannot work.
    #[error("{0}")]
    Setup(String),
    /// The coordinator refused a request for good (400, 404, 413): sending it again would
    /// not help.
    #[error("{url}: refused: {detail}")]
    Refused {
        /// What was asked.
        url: String,
        /// The coordinator's answer.
        detail: String,
    },
}

/// What a coordinator names is checked as the network file is: a tree name that is a path
/// is not taken, and no schedule is below [`MIN_SCHEDULE`].
fn sanitize(a: &mut SiteAssignment) {
    a.trees.retain(|t| match pulpdist_format::validate_tree_name(&t.tree) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(tree = %t.tree, "the assignment names a tree that is not a tree name ({e}); ignored");
            false
        }
    });
    for t in &mut a.trees {
        t.schedule_secs = t.schedule_secs.max(MIN_SCHEDULE);
    }
}

/// The shortest schedule an agent keeps, whatever its assignment says.
const MIN_SCHEDULE: u64 = 10;

/// Opens a store by its URL (a directory, `http(s)://`, `s3://`).
pub type OpenStore = dyn Fn(&str) -> Result<Box<dyn StoreReader>, String> + Send + Sync;

/// What the agent is told.
pub struct AgentOptions {
    /// The agent's own directory: the cached assignment, the report queue.
    pub state: PathBuf,
    /// Where mirrors go: one directory per tree, `<mirrors>/<tree>`.
    pub mirrors: PathBuf,
    /// Opens the stores an assignment names.
    pub open: Arc<OpenStore>,
    /// Stop after one round (poll, due syncs, delivery): for timers and tests.
    pub once: bool,
    /// At most this long is waited, at random, before a pushed sync (so that a push does
    /// not send every site to the origin in the same second).
    pub jitter: Duration,
    /// The longest a poll waits.
    pub poll: Duration,
    /// The keys every tree's heads must be signed with, given by the site's operator. Without
    /// them, each tree's keys are pinned the first time the coordinator names them
    /// (`<state>/keys/<tree>.pub`) and never taken from it again: the coordinator stays out
    /// of the trust path (a key change is the operator's, by replacing the pinned file).
    pub trust: Option<pulpdist_format::TrustedKeys>,
    /// A store directory this site relays to the sites below it: each tree's version is
    /// replicated into it (verified, head last) before the mirror is synced from it.
    pub relay: Option<PathBuf>,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The assignment came from the coordinator (not the cache).
    pub fresh: bool,
    /// Trees synced.
    pub synced: Vec<String>,
    /// Reports delivered.
    pub delivered: usize,
    /// Reports still queued.
    pub queued: usize,
}

/// The agent.
pub struct Agent {
    client: Client,
    opts: AgentOptions,
    queue: Queue,
    assignment: Option<SiteAssignment>,
    generation: Option<u64>,
    /// When each tree was last synced, and the push counter it was synced for.
    last: HashMap<String, (Instant, u64)>,
    /// The coordinator boot the push counters are from.
    boot: Option<u64>,
    /// How long to wait after a failed poll (doubling, at most a minute).
    backoff: Duration,
    metrics: Arc<AgentMetrics>,
    /// When each tree last synced well (Unix seconds), and when the agent started.
    succeeded: HashMap<String, i64>,
    started: i64,
}

impl Agent {
    /// An agent talking to `client`; the cached assignment, if any, is loaded.
    pub fn new(client: Client, opts: AgentOptions) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&opts.state).map_err(|source| AgentError::Io {
            path: opts.state.clone(),
            source,
        })?;
        let queue = Queue::new(opts.state.join("reports.jsonl"));
        let assignment = std::fs::read(cache_path(&opts.state))
            .ok()
            .and_then(|b| serde_json::from_slice::<SiteAssignment>(&b).ok())
            .map(|mut a| {
                sanitize(&mut a);
                a
            });
        Ok(Agent {
            client,
            opts,
            queue,
            assignment,
            generation: None,
            last: HashMap::new(),
            boot: None,
            backoff: Duration::ZERO,
            metrics: Arc::new(AgentMetrics::new()),
            succeeded: HashMap::new(),
            started: unix_now(),
        })
    }

    /// The agent's metrics, for `/metrics` ([`serve_metrics`]).
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    /// Runs rounds for ever (or one, with `once`).
    pub fn run(&mut self) -> Result<(), AgentError> {
        loop {
            let round = self.round()?;
            tracing::info!(?round, "round");
            if self.opts.once {
                return Ok(());
            }
        }
    }

    /// One round: the assignment (waiting for a change until a tree is due), the trees
    /// that are due or pushed, the queued reports. The agent's own file errors (a full
    /// disk) are logged, never a reason to stop syncing.
    pub fn round(&mut self) -> Result<Round, AgentError> {
        let mut round = Round::default();
        let wait = match self.opts.once {
            true => Duration::ZERO,
            false => self.until_due().min(self.opts.poll),
        };
        let asked = Instant::now();
        let polled = self.client.assignment(self.generation, wait);
        let reachable = polled.is_ok();
        let queued = self.queue.pending().map_or(0, |p| p.len());
        self.metrics.queue(queued, reachable);
        match polled {
            Ok(got) => {
                self.backoff = Duration::ZERO;
                if let Some(a) = got {
                    self.take(a);
                }
                round.fresh = true;
                // A poll answered at once although nothing was due (a proxy that does not
                // hold it): not more than one a second.
                if !self.opts.once && !wait.is_zero() {
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(asked.elapsed()));
                }
            }
            Err(e) => {
                tracing::warn!("{e}; working from the cached assignment");
                self.backoff =
                    (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if !self.opts.once {
                    // With another coordinator to ask, the next one is asked after the
                    // backoff; with one, not before the poll's time is up.
                    let pause = match self.client.coordinators() {
                        1 => wait.saturating_sub(asked.elapsed()).max(self.backoff),
                        _ => self.backoff,
                    };
                    std::thread::sleep(pause.min(self.until_due().max(Duration::from_secs(1))));
                }
            }
        }
        for t in self.due() {
            // The syncs before it may have run past the tree's window.
            if window(&t).is_some_and(|w| !w.contains(unix_now())) {
                continue;
            }
            let pushed = self
                .last
                .get(&t.tree)
                .is_some_and(|(_, trig)| *trig != t.trigger);
            if pushed && !self.opts.jitter.is_zero() {
                std::thread::sleep(random_below(self.opts.jitter));
            }
            self.metrics.syncing(&t.tree, true);
            let report = self.sync(&t);
            self.metrics.syncing(&t.tree, false);
            self.metrics.run(&report, unix_now());
            if report.outcome.is_success() {
                self.succeeded.insert(t.tree.clone(), unix_now());
            }
            self.last
                .insert(t.tree.clone(), (Instant::now(), t.trigger));
            if let Err(e) = self.queue.push(&report) {
                tracing::error!("{e}: the report of this run is lost");
            }
            round.synced.push(t.tree.clone());
        }
        // A coordinator that did not answer the poll is not sent reports this round.
        (round.delivered, round.queued) = match reachable {
            true => self.deliver(),
            false => (0, self.queue.pending().map_or(0, |p| p.len())),
        };
        self.metrics.queue(round.queued, reachable);
        self.count_without_success();
        Ok(round)
    }

    /// Each assigned tree's time without a successful run, in its window's time.
    fn count_without_success(&self) {
        let Some(a) = &self.assignment else { return };
        let now = unix_now();
        for t in &a.trees {
            let since = self.succeeded.get(&t.tree).copied().unwrap_or(self.started);
            let secs = window(t).map_or(now - since, |w| w.open_seconds(since, now));
            self.metrics.without_success(&t.tree, secs);
        }
    }

    /// Takes a new assignment: cached, and, from a new coordinator boot, its push counters
    /// as the baseline (they restarted; no tree is synced for that).
    fn take(&mut self, mut a: SiteAssignment) {
        sanitize(&mut a);
        self.generation = Some(a.revision);
        if let Err(e) = save(&cache_path(&self.opts.state), &a) {
            tracing::warn!("{e}: the assignment is not cached");
        }
        if self.boot.is_some_and(|b| b != a.boot) {
            for t in &a.trees {
                if let Some((_, trig)) = self.last.get_mut(&t.tree) {
                    *trig = t.trigger;
                }
            }
        }
        self.boot = Some(a.boot);
        self.assignment = Some(a);
    }

    /// Trees whose schedule came round, or whose push counter rose since their last sync,
    /// and whose window (if any) is open.
    fn due(&self) -> Vec<TreeAssignment> {
        let Some(a) = &self.assignment else {
            return Vec::new();
        };
        let now = unix_now();
        a.trees
            .iter()
            .filter(|t| window(t).is_none_or(|w| w.contains(now)))
            .filter(|t| match self.last.get(&t.tree) {
                None => true,
                Some((at, trigger)) => {
                    *trigger != t.trigger || at.elapsed() >= Duration::from_secs(t.schedule_secs)
                }
            })
            .cloned()
            .collect()
    }

    /// How long until the next tree is due (with no assignment yet: a poll's length).
    fn until_due(&self) -> Duration {
        let Some(a) = &self.assignment else {
            return self.opts.poll;
        };
        let now = unix_now();
        a.trees
            .iter()
            .map(|t| {
                let due = match self.last.get(&t.tree) {
                    None => Duration::ZERO,
                    Some((at, _)) => {
                        Duration::from_secs(t.schedule_secs).saturating_sub(at.elapsed())
                    }
                };
                // Outside its window: not before the window opens.
                let open = window(t).map_or(0, |w| w.until_open(now));
                due.max(Duration::from_secs(open))
            })
            .min()
            .unwrap_or(self.opts.poll)
    }

    /// Sends the queued reports in batches of at most 512 kB; each batch acknowledged is
    /// taken off the queue at once, and one the coordinator refuses for good (400, 404,
    /// 413) is set aside in `rejected.jsonl` rather than blocking the rest. Returns
    /// `(delivered, still queued)`.
    fn deliver(&mut self) -> (usize, usize) {
        let mut pending = match self.queue.pending() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{e}");
                return (0, 0);
            }
        };
        let mut delivered = 0;
        while !pending.is_empty() {
            let mut size = 0;
            let n = pending
                .iter()
                .take(pulpdist_network::MAX_REPORTS)
                .take_while(|r| {
                    size += serde_json::to_vec(r).map_or(0, |b| b.len() + 1);
                    size <= 512 << 10
                })
                .count()
                .max(1);
            let batch: Vec<Report> = pending.drain(..n).collect();
            // One report larger than the coordinator accepts (written by another version,
            // or edited) is refused for good: set aside here. Sent, it raced the
            // coordinator's early answer (413, then the connection closed under the rest
            // of the body: a broken pipe, taken for a passing failure), and kept every
            // report behind it queued for ever.
            let bytes: usize = batch
                .iter()
                .map(|r| serde_json::to_vec(r).map_or(0, |b| b.len() + 1))
                .sum();
            let sent = match bytes > pulpdist_network::MAX_REPORT_BODY {
                true => Err(AgentError::Refused {
                    url: "the reports queue".into(),
                    detail: format!(
                        "{bytes} bytes of reports in one, more than a coordinator accepts ({})",
                        pulpdist_network::MAX_REPORT_BODY
                    ),
                }),
                false => self.client.report(&batch),
            };
            match sent {
                Ok(()) => delivered += batch.len(),
                Err(e @ AgentError::Refused { .. }) => {
                    tracing::error!("{e}: {} reports set aside", batch.len());
                    if let Err(e) = self.queue.park(&batch) {
                        tracing::warn!("{e}");
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}; reports kept for later");
                    pending.splice(0..0, batch);
                    break;
                }
            }
            if let Err(e) = self.queue.rewrite(&pending) {
                tracing::warn!("{e}");
                break;
            }
        }
        (delivered, pending.len())
    }

    /// One sync of one tree, as a report.
    fn sync(&self, t: &TreeAssignment) -> Report {
        tracing::info!(tree = %t.tree, "sync starts");
        let started = unix_now();
        let clock = Instant::now();
        let (result, relay_error, cut) = self.sync_tree(t);
        let mut r = Report {
            id: format!("{:016x}{:016x}", random_u64(), random_u64()),
            tree: t.tree.clone(),
            outcome: Outcome::Failed,
            started,
            from_version: None,
            to_version: None,
            root: None,
            head_store: None,
            bytes_fetched: 0,
            bytes_reused: 0,
            requests: 0,
            duration_ms: clock.elapsed().as_millis() as u64,
            rsync_files: 0,
            error: None,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        match result {
            Ok(s) => {
                r.outcome = match s.up_to_date {
                    true => Outcome::UpToDate,
                    false => Outcome::Completed,
                };
                r.from_version = s.previous_version;
                r.to_version = Some(s.version);
                r.root = Some(s.root.clone());
                r.head_store = Some(s.head_store.clone());
                r.bytes_fetched = s.bytes_fetched;
                r.bytes_reused = s.bytes_reused;
                r.requests = s.requests;
                r.rsync_files = s.rsync_files;
                r.error = relay_error;
            }
            Err(e) => {
                // Cut by the window's close (not another failure in the same run).
                r.outcome = match cut && e.to_string().contains(pace::WINDOW_CLOSED) {
                    true => Outcome::Partial,
                    false => outcome_of(&e),
                };
                let mut text = e.to_string();
                if text.len() > pulpdist_network::MAX_ERROR_TEXT {
                    let mut cut = pulpdist_network::MAX_ERROR_TEXT;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                r.error = Some(text);
            }
        }
        tracing::info!(tree = %t.tree, outcome = ?r.outcome, "synced");
        r
    }

    /// The tree's version into the relay store (if this site relays), then the mirror.
    /// A relay that could not be updated is the report's error; the mirror is still synced
    /// from what the relay holds and the stores behind it. The stores are read at the
    /// tree's pace (its bandwidth, until its window closes); the last value says whether
    /// the window closed on the run.
    fn sync_tree(
        &self,
        t: &TreeAssignment,
    ) -> (
        Result<pulpdist_sync::SyncReport, SyncError>,
        Option<String>,
        bool,
    ) {
        let keys = match self.keys(t) {
            Ok(k) => k,
            Err(e) => return (Err(e), None, false),
        };
        let now = unix_now();
        let pace = pace::Pace::new(t.bandwidth, window(t).map(|w| w.closes_after(now)));
        let mut readers: Vec<Box<dyn StoreReader>> = Vec::new();
        for s in &t.stores {
            match (self.opts.open)(s) {
                Ok(r) => readers.push(Box::new(pace::Paced::new(r, pace.clone()))),
                Err(e) => return (Err(SyncError::Usage(e)), None, false),
            }
        }
        let mut relay_error = None;
        if let Some(dir) = &self.opts.relay {
            let sources: Vec<Box<dyn StoreReader + '_>> = readers
                .iter()
                .map(|r| Box::new(&**r) as Box<dyn StoreReader>)
                .collect();
            let work = self.opts.state.join("replicate");
            let copied = pulpdist_publish::LocalStore::open(dir)
                .map_err(|e| e.to_string())
                .and_then(|target| {
                    let list = pulpdist_sync::StoreList::new(sources).map_err(|e| e.to_string())?;
                    let ro = pulpdist_replicate::ReplicateOptions::new(&t.tree, keys.clone(), work);
                    pulpdist_replicate::replicate(&list, &target, &ro).map_err(|e| e.to_string())
                });
            match copied {
                Ok(r) => tracing::info!(tree = %t.tree, version = r.version, "relay updated"),
                Err(e) => {
                    relay_error = Some(format!(
                        "the relay store {} was not updated: {e}",
                        dir.display()
                    ))
                }
            }
            readers.insert(0, Box::new(pulpdist_sync::LocalStoreReader::new(dir)));
        }
        let dest = self.opts.mirrors.join(&t.tree);
        let opts = SyncOptions::new(&t.tree, dest, keys);
        let synced = match readers.len() {
            1 => pulpdist_sync::sync(&*readers[0], &opts),
            _ => {
                pulpdist_sync::StoreList::new(readers).and_then(|l| pulpdist_sync::sync(&l, &opts))
            }
        };
        (synced, relay_error, pace.window_closed())
    }
}

impl Agent {
    /// The keys a tree's heads must be signed with: the operator's, else those pinned the
    /// first time the coordinator named the tree's keys.
    fn keys(&self, t: &TreeAssignment) -> Result<pulpdist_format::TrustedKeys, SyncError> {
        if let Some(k) = &self.opts.trust {
            return Ok(k.clone());
        }
        let dir = self.opts.state.join("keys");
        let pin = dir.join(format!("{}.pub", t.tree));
        let text = match std::fs::read_to_string(&pin) {
            Ok(text) => {
                if text.trim() != t.trust.join("\n").trim() {
                    tracing::warn!(tree = %t.tree, pin = %pin.display(), "the coordinator names other keys than the pinned ones; the pinned ones are used (replace the file to change them)");
                }
                text
            }
            Err(_) => {
                let text = t.trust.join("\n") + "\n";
                let saved =
                    std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&pin, &text));
                if let Err(e) = saved {
                    return Err(SyncError::Usage(format!(
                        "{}: pinning the keys: {e}",
                        pin.display()
                    )));
                }
                text
            }
        };
        pulpdist_format::TrustedKeys::from_text(&text)
            .map_err(|e| SyncError::Usage(format!("{}: {e}", pin.display())))
    }
}

/// How a failed sync is reported.
fn outcome_of(e: &SyncError) -> Outcome {
    match e {
        SyncError::Busy { .. } => Outcome::Busy,
        e if e.is_refusal() => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

fn cache_path(state: &Path) -> PathBuf {
    state.join("assignment.json")
}

/// Writes `value` as JSON, atomically and durably (a temporary file, flushed, renamed over
/// the old one, the directory flushed).
fn save(path: &Path, value: &impl serde::Serialize) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other);
    bytes
        .and_then(|b| write_durably(path, &b))
        .map_err(|source| AgentError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Replaces `path` with `bytes`: a temporary file, flushed, renamed, the directory flushed.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A tree's window, if its assignment gives a valid one.
fn window(t: &TreeAssignment) -> Option<pulpdist_network::Window> {
    t.window.and_then(pulpdist_network::Window::new)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random number (from the standard library's randomly keyed hasher).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A random duration below `max`.
fn random_below(max: Duration) -> Duration {
    Duration::from_millis(random_u64() % max.as_millis().max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_naming_a_path_or_a_tiny_schedule_is_not_taken_as_it_is() {
        let t = |tree: &str, secs| TreeAssignment {
            tree: tree.into(),
            schedule_secs: secs,
            ..TreeAssignment::default()
        };
        let mut a = SiteAssignment {
            trees: vec![
                t("debian", 0),
                t("../../etc/cron.d/x", 60),
                t("/abs", 60),
                t("ok", 900),
            ],
            ..SiteAssignment::default()
        };
        sanitize(&mut a);
        let kept: Vec<(&str, u64)> = a
            .trees
            .iter()
            .map(|t| (t.tree.as_str(), t.schedule_secs))
            .collect();
        assert_eq!(kept, [("debian", MIN_SCHEDULE), ("ok", 900)]);
    }
}
