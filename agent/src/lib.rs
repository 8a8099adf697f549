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
mod queue;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulpdist_network::{Outcome, Report, SiteAssignment, TreeAssignment};
use pulpdist_sync::{StoreReader, SyncError, SyncOptions};

pub use client::Client;
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
}

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
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Agent {
            client,
            opts,
            queue,
            assignment,
            generation: None,
            last: HashMap::new(),
        })
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
    /// that are due or pushed, the queued reports.
    pub fn round(&mut self) -> Result<Round, AgentError> {
        let mut round = Round::default();
        let wait = match self.opts.once {
            true => Duration::ZERO,
            false => self.until_due().min(self.opts.poll),
        };
        let asked = Instant::now();
        match self.client.assignment(self.generation, wait) {
            Ok(Some(a)) => {
                self.generation = Some(a.revision);
                save(&cache_path(&self.opts.state), &a)?;
                self.assignment = Some(a);
                round.fresh = true;
            }
            Ok(None) => round.fresh = true,
            Err(e) => {
                tracing::warn!("{e}; working from the cached assignment");
                // No poll held the round: wait as long as one would have.
                if !self.opts.once {
                    std::thread::sleep(wait.saturating_sub(asked.elapsed()));
                }
            }
        }
        let due: Vec<TreeAssignment> = self.due();
        for t in due {
            let pushed = self
                .last
                .get(&t.tree)
                .is_some_and(|(_, trig)| *trig != t.trigger);
            if pushed && !self.opts.jitter.is_zero() {
                std::thread::sleep(random_below(self.opts.jitter));
            }
            let report = self.sync(&t);
            self.last
                .insert(t.tree.clone(), (Instant::now(), t.trigger));
            self.queue.push(&report)?;
            round.synced.push(t.tree.clone());
        }
        (round.delivered, round.queued) = self.deliver()?;
        Ok(round)
    }

    /// Trees whose schedule came round, or whose push counter rose since their last sync.
    fn due(&self) -> Vec<TreeAssignment> {
        let Some(a) = &self.assignment else {
            return Vec::new();
        };
        a.trees
            .iter()
            .filter(|t| match self.last.get(&t.tree) {
                None => true,
                Some((at, trigger)) => {
                    *trigger != t.trigger || at.elapsed() >= Duration::from_secs(t.schedule_secs)
                }
            })
            .cloned()
            .collect()
    }

    /// How long until the next tree is due.
    fn until_due(&self) -> Duration {
        let Some(a) = &self.assignment else {
            return Duration::ZERO;
        };
        a.trees
            .iter()
            .map(|t| match self.last.get(&t.tree) {
                None => Duration::ZERO,
                Some((at, _)) => Duration::from_secs(t.schedule_secs).saturating_sub(at.elapsed()),
            })
            .min()
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Sends the queued reports; `(delivered, still queued)`.
    fn deliver(&mut self) -> Result<(usize, usize), AgentError> {
        let pending = self.queue.pending()?;
        if pending.is_empty() {
            return Ok((0, 0));
        }
        for batch in pending.chunks(pulpdist_network::MAX_REPORTS) {
            if let Err(e) = self.client.report(batch) {
                tracing::warn!("{e}; reports kept for later");
                return Ok((0, pending.len()));
            }
        }
        self.queue.clear()?;
        Ok((pending.len(), 0))
    }

    /// One sync of one tree, as a report.
    fn sync(&self, t: &TreeAssignment) -> Report {
        let started = unix_now();
        let clock = Instant::now();
        let result = self.sync_tree(t);
        let mut r = Report {
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
            }
            Err(e) => {
                r.outcome = outcome_of(&e);
                r.error = Some(e.to_string());
            }
        }
        tracing::info!(tree = %t.tree, outcome = ?r.outcome, "synced");
        r
    }

    fn sync_tree(&self, t: &TreeAssignment) -> Result<pulpdist_sync::SyncReport, SyncError> {
        let keys = pulpdist_format::TrustedKeys::from_text(&t.trust.join("\n"))
            .map_err(|e| SyncError::Usage(format!("the assignment's keys for {}: {e}", t.tree)))?;
        let mut readers: Vec<Box<dyn StoreReader>> = Vec::new();
        for s in &t.stores {
            readers.push((self.opts.open)(s).map_err(SyncError::Usage)?);
        }
        let dest = self.opts.mirrors.join(&t.tree);
        let opts = SyncOptions::new(&t.tree, dest, keys);
        match readers.len() {
            1 => pulpdist_sync::sync(&*readers[0], &opts),
            _ => pulpdist_sync::sync(&pulpdist_sync::StoreList::new(readers)?, &opts),
        }
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

/// Writes `value` as JSON, atomically (a temporary file renamed over the old one).
fn save(path: &Path, value: &impl serde::Serialize) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(value).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random duration below `max`.
fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(r % max.as_millis().max(1) as u64)
}
