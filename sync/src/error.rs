//! Errors of a sync. Each names the object, URL or path involved, and says whether trying
//! again could help ([`SyncError::is_temporary`]), which decides retry versus fallback.

use std::path::PathBuf;

/// Why a sync stopped. The mirror keeps its last good version in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The store has no head for the tree.
    #[error("{store}: no tree '{tree}' (heads/{tree} not found)")]
    NoSuchTree { store: String, tree: String },
    /// An object the index names is missing from the store.
    #[error("{store}: object {object} not found")]
    NotFound { store: String, object: String },
    /// Reading the store failed.
    #[error("{store}: reading {object}: {source}")]
    Read {
        store: String,
        object: String,
        source: std::io::Error,
    },
    /// The head, a node or a chunk is malformed, tampered with, or fails verification.
    #[error("{object}: {source}")]
    Format {
        object: String,
        source: pulpdist_format::FormatError,
    },
    /// The head names another tree than the one asked for (mix-and-match).
    #[error("head fetched for tree '{asked}' is for tree '{found}'; refusing it")]
    WrongTree { asked: String, found: String },
    /// The head is older than the version already applied (rollback).
    #[error("tree '{tree}': store offers version {offered}, older than version {applied} already applied (rollback refused)")]
    Rollback {
        tree: String,
        offered: u64,
        applied: u64,
    },
    /// The same version with different content (equivocation).
    #[error("tree '{tree}': store offers version {version} with a different root than the one applied; refusing")]
    Equivocation { tree: String, version: u64 },
    /// The head has expired (freeze attack or a stalled publisher).
    #[error("tree '{tree}' version {version}: head expired at {expires} (now {now}); refusing a frozen tree")]
    Expired {
        tree: String,
        version: u64,
        expires: i64,
        now: i64,
    },
    /// The store does not hold what the index promises (a byte range shorter than asked).
    #[error("{store}: {object}: short read ({got} of {wanted} bytes)")]
    Short {
        store: String,
        object: String,
        got: u64,
        wanted: u64,
    },
    /// The store answered with another object than the signed index names (another size,
    /// more or fewer bytes): refused like a chunk that fails its hash.
    #[error("{object}: {detail}; refusing it")]
    Mismatch { object: String, detail: String },
    /// An HTTP or object store request failed or was answered wrongly.
    #[error("{url}: {detail}")]
    Http {
        url: String,
        status: Option<u16>,
        detail: String,
        temporary: bool,
    },
    /// A local path could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A write would leave the tree (a symlink or non-directory in a parent).
    #[error("{path}: refusing to write: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    /// Options are wrong (exit code 2: a usage error, not a failure of the sync).
    #[error("{0}")]
    Usage(String),
    /// Something went wrong that is not any other variant's (an internal limit, a thread
    /// pool that did not start).
    #[error("{0}")]
    Config(String),
    /// The threads that fetch in parallel could not be started.
    #[error("starting fetch threads: {0}")]
    Threads(String),
    /// Another sync holds the mirror's state directory.
    #[error("{state}: another sync of this mirror is running{holder}; run again later, or give --wait SECONDS")]
    Busy { state: PathBuf, holder: String },
    /// The client's own state (not the store's objects) is unreadable or damaged.
    #[error("{path}: local state is damaged: {detail} (remove it to sync from scratch)")]
    State { path: PathBuf, detail: String },
}

impl SyncError {
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
