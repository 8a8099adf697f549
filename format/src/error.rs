//! The one error type of the format crate: every variant says what was being decoded.

use crate::id::ChunkId;

/// Why bytes could not be decoded, verified or encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes end before the structure does.
    #[error("{what}: truncated (needed {needed} more bytes at offset {offset})")]
    Truncated {
        /// What it is.
        what: &'static str,
        /// The byte offset.
        offset: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The magic number or format version is not one this reader knows.
    #[error("{what}: unknown magic or format version {found:02x?}")]
    BadMagic {
        /// What it is.
        what: &'static str,
        /// What was found instead.
        found: Vec<u8>,
    },
    /// A field holds a value the format forbids.
    #[error("{what}: invalid: {reason}")]
    Invalid {
        /// What it is.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Bytes remain after a complete structure.
    #[error("{what}: {extra} unexpected trailing bytes")]
    Trailing {
        /// What it is.
        what: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A chunk or node does not hash to the id it was fetched under.
    #[error("object {expected}: content hashes to {actual} (corrupt or substituted)")]
    HashMismatch {
        /// What was expected.
        expected: String,
        /// What was found.
        actual: String,
    },
    /// A stored object could not be decompressed.
    #[error("object {id}: cannot decompress: {reason}")]
    Decompress {
        /// Its id.
        id: String,
        /// Why it is refused.
        reason: String,
    },
    /// The signature on a tree head does not verify.
    #[error("tree head of '{tree}' version {version}: bad signature")]
    BadSignature {
        /// The tree.
        tree: String,
        /// The version.
        version: u64,
    },
    /// The head was signed by a key that is not trusted.
    #[error("tree head of '{tree}' is signed by key {key}, which is not in the trusted keys")]
    UntrustedKey {
        /// The tree.
        tree: String,
        /// The key.
        key: String,
    },
    /// A key file could not be parsed.
    #[error("key: {0}")]
    Key(String),
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn mismatch(expected: &ChunkId, actual: &ChunkId) -> Self {
        FormatError::HashMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }
}
