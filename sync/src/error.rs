//! Errors of a sync. Each names the object, URL or path involved, and says whether trying
//! again could help ([`SyncError::is_temporary`]), which decides retry versus fallback.

use std::path::PathBuf;

/// Why a sync stopped. The mirror keeps its last good version in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The store has no head for the tree.
    #[error("{store}: no tree '{tree}' (heads/{tree} not found)")]
    NoSuchTree {
        /// The store, as shown to the user.
        store: String,
        /// The tree.
        tree: String,
    },
    /// An object the index names is missing from the store.
    #[error("{store}: object {object} not found")]
    NotFound {
        /// The store, as shown to the user.
        store: String,
        /// The object involved (key, URL or description).
        object: String,
    },
    /// Reading the store failed.
    #[error("{store}: reading {object}: {source}")]
    Read {
        /// The store, as shown to the user.
        store: String,
        /// The object involved (key, URL or description).
        object: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The head, a node or a chunk is malformed, tampered with, or fails verification.
    #[error("{object}: {source}")]
    Format {
        /// The object involved (key, URL or description).
        object: String,
        /// The underlying error.
        source: pulpdist_format::FormatError,
    },
    /// The head names another tree than the one asked for (mix-and-match).
    #[error("head fetched for tree '{asked}' is for tree '{found}'; refusing it")]
    WrongTree {
        /// The tree asked for.
        asked: String,
        /// What was found instead.
        found: String,
    },
    /// The head is older than the version already applied (rollback).
    #[error("tree '{tree}': store offers version {offered}, older than version {applied} already applied (rollback refused)")]
    Rollback {
        /// The tree.
        tree: String,
        /// The version offered.
        offered: u64,
        /// The version already applied.
        applied: u64,
    },
    /// The same version with different content (equivocation).
    #[error("tree '{tree}': store offers version {version} with a different root than the one applied; refusing")]
    Equivocation {
        /// The tree.
        tree: String,
        /// The version.
        version: u64,
    },
    /// The head has expired (freeze attack or a stalled publisher).
    #[error("tree '{tree}' version {version}: head expired at {expires} (now {now}); refusing a frozen tree")]
    Expired {
        /// The tree.
        tree: String,
        /// The version.
        version: u64,
        /// When the head expires (seconds since the epoch).
        expires: i64,
        /// The time of the check.
        now: i64,
    },
    /// The store does not hold what the index promises (a byte range shorter than asked).
    #[error("{store}: {object}: short read ({got} of {wanted} bytes)")]
    Short {
        /// The store, as shown to the user.
        store: String,
        /// The object involved (key, URL or description).
        object: String,
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        wanted: u64,
    },
    /// The store answered with another object than the signed index names (another size,
    /// more or fewer bytes): refused like a chunk that fails its hash.
    #[error("{object}: {detail}; refusing it")]
    Mismatch {
        /// The object involved (key, URL or description).
        object: String,
        /// What went wrong.
        detail: String,
    },
    /// An HTTP or object store request failed or was answered wrongly.
    #[error("{url}: {detail}")]
    Http {
        /// The URL involved.
        url: String,
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        /// What went wrong.
        detail: String,
        /// Whether trying again later could succeed.
        temporary: bool,
    },
    /// A local path could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A write would leave the tree (a symlink or non-directory in a parent).
    #[error("{path}: refusing to write: {reason}")]
    Unsafe {
        /// The path involved.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// Options are wrong (exit code 2: a usage error, not a failure of the sync).
    #[error("{0}")]
    Usage(String),
    /// CA certificates, a client certificate or its key could not be used.
    #[error("{what}: {detail}")]
    Credentials {
        /// What it is.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// An internal invariant does not hold (a bug; please report it).
    #[error("internal error: {0}")]
    Internal(String),
    /// The threads that fetch in parallel could not be started.
    #[error("starting fetch threads: {0}")]
    Threads(String),
    /// Another sync holds the mirror's state directory.
    #[error("{state}: another sync of this mirror is running{holder}; run again later, or give --wait SECONDS")]
    Busy {
        /// The state directory.
        state: PathBuf,
        /// Who holds it, when known.
        holder: String,
    },
    /// The client's own state (not the store's objects) is unreadable or damaged.
    #[error("{path}: local state is damaged: {detail} (remove it to sync from scratch)")]
    State {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

impl SyncError {
    /// Whether verification refused what a store offered (a head or an object that is not
    /// what the signed index says): exit 3, and a report's `refused`.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SyncError::Format { .. }
                | SyncError::Short { .. }
                | SyncError::Mismatch { .. }
                | SyncError::WrongTree { .. }
                | SyncError::Rollback { .. }
                | SyncError::Equivocation { .. }
                | SyncError::Expired { .. }
        )
    }

    /// Whether the same request could succeed later (network trouble), as opposed to a
    /// permanent refusal (bad signature, rollback, missing object, corrupt data).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            SyncError::Read { .. }
                | SyncError::Short { .. }
                | SyncError::Http {
                    temporary: true,
                    ..
                }
        )
    }
}

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, SyncError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, SyncError> {
        self.map_err(|source| SyncError::Io {
            path: path.into(),
            source,
        })
    }
}
