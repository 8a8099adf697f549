//! Errors of publishing, each naming the file, object or store involved.

use std::path::PathBuf;

/// Why a publish failed. The store is unchanged unless the head was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A local file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An object in the store is malformed.
    #[error("{object}: {source}")]
    Format {
        /// The object involved (key, URL or description).
        object: String,
        /// The underlying error.
        source: pulpdist_format::FormatError,
    },
    /// An object store request failed.
    #[error("{object}: {source}")]
    Store {
        /// The object involved (key, URL or description).
        object: String,
        /// The underlying error.
        source: Box<object_store::Error>,
    },
    /// Another publisher holds the tree's lock.
    #[error("tree '{tree}' is being published by another process (lock {path} is held{holder})")]
    Locked {
        /// The tree.
        tree: String,
        /// The path involved.
        path: PathBuf,
        /// Who holds it, when known.
        holder: String,
    },
    /// The head changed under us (another publisher on a store without locks).
    #[error("head of tree '{tree}' changed during publish (was version {expected:?}); nothing was published, run again")]
    HeadChanged {
        /// The tree.
        tree: String,
        /// What was expected.
        expected: Option<u64>,
    },
    /// The creation time given is earlier than the previous head's.
    #[error("tree '{tree}': the creation time given ({created}) is earlier than the previous head's ({previous}); a version's time never goes back")]
    CreatedBefore {
        /// The tree.
        tree: String,
        /// The time given.
        created: i64,
        /// The previous head's.
        previous: i64,
    },
    /// The store holds something else under the new pack's name (its content's): other
    /// bytes, or not a plain file (a symbolic link, a FIFO, a file anyone may write).
    #[error("pack {pack} is in the store, but not as this publish writes it (packs are named by their content): other bytes, a symbolic link or FIFO, or a file anyone may write; look at it, and remove it if nothing needs it")]
    PackExists {
        /// The pack.
        pack: pulpdist_format::PackId,
    },
    /// A garbage collector condemned (or removed) a pack the new version names while the
    /// publish ran.
    #[error("tree '{tree}': pack {pack} that this version names was {} by a gc while the publish ran; nothing was published, run again (a gc that compacted packs, or whose --grace is shorter than this publish, ran meanwhile)", if *removed { "removed" } else { "condemned" })]
    Collected {
        /// The tree.
        tree: String,
        /// The pack.
        pack: pulpdist_format::PackId,
        /// Whether it is gone already (else condemned).
        removed: bool,
    },
    /// The store's head for the tree is signed by a key the publisher was not given.
    #[error("{object} is signed by key {signer}, not by the given key {key}; publish with the tree's key, or name the old one with --previous-key when rotating keys")]
    ForeignKey {
        /// The object involved (key, URL or description).
        object: String,
        /// The key that signed it.
        signer: String,
        /// The key.
        key: String,
    },
    /// The store's head for the tree names another tree.
    #[error("{object} names tree '{found}'")]
    WrongTree {
        /// The object involved (key, URL or description).
        object: String,
        /// What was found instead.
        found: String,
    },
    /// Other chunk parameters than the tree's were asked for.
    #[error("tree '{tree}' is chunked with min {} avg {} max {}; other parameters would need a new tree", params.min, params.avg, params.max)]
    ParamsChanged {
        /// The tree.
        tree: String,
        /// The tree's parameters.
        params: pulpdist_format::ChunkParams,
    },
    /// No version number is left after the tree's last one.
    #[error("tree '{tree}': version {version} is the last one a head can carry")]
    VersionOverflow {
        /// The tree.
        tree: String,
        /// The version.
        version: u64,
    },
    /// The source cannot be published as it is (not a directory, a file that changed
    /// while it was read).
    #[error("{path}: {reason}")]
    Source {
        /// The path involved.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A store answered a read with fewer bytes than asked.
    #[error("{object}: short read ({got} of {wanted} bytes)")]
    Short {
        /// The object involved (key, URL or description).
        object: String,
        /// Bytes received.
        got: u64,
        /// Bytes asked for.
        wanted: u64,
    },
    /// A directory's index node would exceed the format's limit.
    #[error("{dir} encodes to {size} bytes, above the format's limit of {limit}")]
    NodeTooLarge {
        /// The directory.
        dir: String,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: u32,
    },
    /// A delta record would exceed the format's 4 GiB limit.
    #[error("{path}: a delta record above 4 GiB")]
    DeltaTooLarge {
        /// The path involved.
        path: String,
    },
    /// A compression context could not be made.
    #[error("compressor for {what}: {detail}")]
    Compressor {
        /// What it is.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Worker threads could not be started.
    #[error("{0}")]
    Threads(String),
    /// A worker thread panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// A refresh of a tree that has no version yet.
    #[error("tree '{tree}' has no version to refresh: publish it first")]
    NothingToRefresh {
        /// The tree.
        tree: String,
    },
    /// An internal invariant does not hold (a bug; please report it).
    #[error("internal error: {0}")]
    Internal(String),
    /// The chunker could not be set up.
    #[error(transparent)]
    Chunker(#[from] pulpdist_chunker::ChunkerError),
}

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, PublishError>;
    /// Like `at`, with the path made only on error.
    fn at_with(self, path: impl FnOnce() -> PathBuf) -> Result<T, PublishError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, PublishError> {
        self.map_err(|source| PublishError::Io {
            path: path.into(),
            source,
        })
    }
    fn at_with(self, path: impl FnOnce() -> PathBuf) -> Result<T, PublishError> {
        self.map_err(|source| PublishError::Io {
            path: path(),
            source,
        })
    }
}
