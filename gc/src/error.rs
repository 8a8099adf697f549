//! What stops a garbage collection. Each says whether anything was removed: every check
//! that can stop a run comes before the first removal, and a failure during the removals
//! is [`GcError::Stopped`], which says how far they got.

use pulpdist_publish::PublishError;

/// Why a gc stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The removals failed partway (a bucket refusing deletes, a read-only directory):
    /// what was removed is gone, nothing kept was, and the next run goes on from there.
    #[error("{source} (after the condemned list was written and {removed} of {total} objects removed; what is kept is whole, and the next run goes on)")]
    Stopped {
        /// Objects removed before the failure.
        removed: usize,
        /// Objects the run was to remove.
        total: usize,
        /// The failure.
        source: PublishError,
    },
    /// Another gc of the store is running.
    #[error("another gc of this store is running{holder}; one at a time")]
    Busy {
        /// Who holds its lock, if known (` (pid N)`).
        holder: String,
    },
    /// Reading or writing the store failed (the error names the object).
    #[error(transparent)]
    Store(#[from] PublishError),
    /// No retention rule was given: a gc keeps only what a rule names, so it refuses to run
    /// without one rather than keep only the current versions.
    #[error("no retention policy: give --keep-last, --keep-within or --keep-version")]
    EmptyPolicy,
    /// A policy value that keeps nothing (`--keep-last 0`).
    #[error("{0}")]
    BadPolicy(String),
    /// A tree asked for has no head in the store.
    #[error("{store}: no tree '{tree}' (no heads/{tree}); nothing was removed")]
    NoSuchTree {
        /// The store.
        store: String,
        /// The tree.
        tree: String,
    },
    /// `--keep-version` names a version the tree does not have.
    #[error("tree '{tree}' has no version {version} (neither archived nor current); nothing was removed")]
    NoSuchVersion {
        /// The tree.
        tree: String,
        /// The version.
        version: u64,
    },
    /// An object a retained version needs does not decode or cannot be found, so what that
    /// version reaches is unknown: the gc stops before removing anything.
    #[error("{object}: {reason}; a gc cannot tell what the versions it keeps reach, so nothing was removed (run `pulpdist verify --store`)")]
    Unreadable {
        /// The object (a head, an archived head, an index node).
        object: String,
        /// What is wrong with it.
        reason: String,
    },
}
