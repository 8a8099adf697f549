//! What crosses the wire between an agent and the coordinator (JSON).

use serde::{Deserialize, Serialize};

/// The largest report body the coordinator reads.
pub const MAX_REPORT_BODY: usize = 1 << 20;
/// The most reports one request may carry.
pub const MAX_REPORTS: usize = 1000;
/// The longest error text a report carries (longer ones are cut).
pub const MAX_ERROR_TEXT: usize = 4096;

/// The header an agent sends with its reports: what its clock read (Unix seconds) when it
/// sent them. The coordinator measures how far the agent's clock is off from it, places
/// each run on its own clock, and raises a `clock` event past `alerts.clock_seconds`.
pub const CLOCK_HEADER: &str = "x-pulpdist-clock";

/// What one site carries.
// The wire types accept fields they do not know: an agent and a coordinator of different
// versions keep working together.

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteAssignment {
    /// The site.
    pub site: String,
    /// Names the space the push counters (`trigger`) count in: the coordinator's
    /// database's (kept across restarts, shared by coordinators on one database). An agent
    /// takes the counters of another space as they are (no push storm after a change).
    #[serde(default)]
    pub boot: u64,
    /// The network's revision (a long-poll returns when it, or a trigger, changes).
    pub revision: u64,
    /// Its trees.
    pub trees: Vec<TreeAssignment>,
}

/// One tree of a site's assignment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeAssignment {
    /// The tree.
    pub tree: String,
    /// Stores in order: the upstream site's first, if any, then the tree's.
    pub stores: Vec<String>,
    /// Trusted keys, one `.pub` line each.
    pub trust: Vec<String>,
    /// Seconds between syncs.
    pub schedule_secs: u64,
    /// Pushes so far for the tree: a site syncs again when it rises.
    pub trigger: u64,
    /// The site this one syncs from first (its `serves` store leads `stores`), if any: its
    /// pushes come once that site holds the new version.
    #[serde(default)]
    pub upstream: Option<String>,
    /// When the site may fetch the tree: minutes of the day, UTC, `[start, end)` (wrapping
    /// past midnight when `end < start`); none: at any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<[u32; 2]>,
    /// The most a sync of the tree fetches a second, in bytes; none: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
}

/// How a sync run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing to do.
    UpToDate,
    /// A new version applied.
    Completed,
    /// Refused by verification (a bad head or object): the mirror kept its version.
    Refused,
    /// Another sync of the mirror was running.
    Busy,
    /// Stopped when the tree's window closed: the mirror kept its version, and what the
    /// run fetched is kept for the next window.
    Partial,
    /// Any other failure.
    Failed,
}

impl Outcome {
    /// Whether the run ended with the site holding the version it reports.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::UpToDate | Outcome::Completed)
    }
}

/// One sync run of one tree at one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// A random id the agent gives it: a report delivered twice (its acknowledgement lost)
    /// is stored once.
    #[serde(default)]
    pub id: String,
    /// The tree.
    pub tree: String,
    /// How it ended.
    pub outcome: Outcome,
    /// When it started (Unix seconds, the agent's clock).
    pub started: i64,
    /// The version before.
    pub from_version: Option<u64>,
    /// The version after (the one held).
    pub to_version: Option<u64>,
    /// The root node id of the version held.
    pub root: Option<String>,
    /// The store that served the head.
    pub head_store: Option<String>,
    /// Bytes fetched from stores.
    pub bytes_fetched: u64,
    /// Bytes of chunks reused from the mirror.
    pub bytes_reused: u64,
    /// Store requests.
    pub requests: u64,
    /// Wall time.
    pub duration_ms: u64,
    /// Files that came from the rsync fallback.
    pub rsync_files: u64,
    /// The error, for a run that did not end well.
    pub error: Option<String>,
    /// The agent's version.
    pub agent_version: String,
}
