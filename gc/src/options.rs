//! What a gc keeps: the retention policy, and the grace period of its two phases.

use crate::error::GcError;

/// Which versions of a tree are kept. A version any rule names is kept; the current
/// version always is, and so is every version that was current less than the grace
/// period ago (a sync may have started from it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the N highest versions.
    pub keep_last: Option<u64>,
    /// Keep the versions created less than this many seconds ago.
    pub keep_within: Option<u64>,
    /// Keep these versions (pinned): of the tree named, or of each tree collected when
    /// `None`.
    pub keep_versions: Vec<(Option<String>, u64)>,
}

impl Policy {
    /// Refuses a policy without a rule, or one with `keep_last` 0.
    pub fn check(&self) -> Result<(), GcError> {
        if self.keep_last.is_none() && self.keep_within.is_none() && self.keep_versions.is_empty() {
            return Err(GcError::EmptyPolicy);
        }
        if self.keep_last == Some(0) {
            return Err(GcError::BadPolicy(
                "--keep-last must be at least 1 (the current version is always kept)".into(),
            ));
        }
        Ok(())
    }
}

/// The grace period a gc waits by default: a day.
pub const DEFAULT_GRACE: u64 = 24 * 3600;

/// How a gc runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// The trees the policy applies to (every tree of the store when empty); the versions
    /// of other trees are all kept, and what they reach with them.
    pub trees: Vec<String>,
    /// What to keep.
    pub policy: Policy,
    /// Seconds: a pack is removed only when it has been condemned (found unreachable) for
    /// this long and is still unreachable; a pack younger than this is not condemned (a
    /// publish may be writing the version that names it); a version that was current
    /// less than this ago is kept.
    pub grace: u64,
    /// Compute and report, remove nothing.
    pub dry_run: bool,
    /// The time to take as now (Unix seconds); the clock when `None`.
    pub now: Option<i64>,
    /// The gc's own state directory (its lock when the store has no lock of its own).
    pub state_dir: std::path::PathBuf,
    /// Rewrite sparse packs (`--max-unused`), with the trees' key.
    pub repack: Option<crate::repack::Repack>,
}

impl GcOptions {
    /// Options for `policy` over every tree, with the default grace, in `state_dir`.
    pub fn new(policy: Policy, state_dir: impl Into<std::path::PathBuf>) -> Self {
        GcOptions {
            trees: Vec::new(),
            policy,
            grace: DEFAULT_GRACE,
            dry_run: false,
            now: None,
            state_dir: state_dir.into(),
            repack: None,
        }
    }
}
