//! What stops a garbage collection. Each says whether anything was removed: every check
//! that can stop a run comes before the first removal.

use pulpdist_publish::PublishError;

/// Why a gc stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
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
