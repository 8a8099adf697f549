//! Errors of publishing, each naming the file, object or store involved.

use std::path::PathBuf;

/// Why a publish failed. The store is unchanged unless the head was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A local file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An object in the store is malformed.
    #[error("{object}: {source}")]
    Format {
        object: String,
        source: pulpdist_format::FormatError,
    },
    /// An object store request failed.
    #[error("{object}: {source}")]
    Store {
        object: String,
        source: Box<object_store::Error>,
    },
    /// Another publisher holds the tree's lock.
    #[error("tree '{tree}' is being published by another process (lock {path} is held{holder})")]
    Locked {
        tree: String,
        path: PathBuf,
        holder: String,
    },
    /// The head changed under us (another publisher on a store without locks).
    #[error("head of tree '{tree}' changed during publish (was version {expected:?}); nothing was published, run again")]
    HeadChanged { tree: String, expected: Option<u64> },
    /// The options are inconsistent with the store.
    #[error("{0}")]
    Config(String),
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
