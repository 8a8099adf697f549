//! Why a replicate stopped. In every case the target keeps serving the version it had:
//! its head is written last, and only after everything it reaches is in place.

use pulpdist_format::FormatError;
use pulpdist_publish::PublishError;
use pulpdist_sync::SyncError;

/// Why a replicate stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicateError {
    /// Reading the source failed (an object missing, short, the store unreachable), or
    /// the source's head was refused (unsigned, another tree's, expired).
    #[error(transparent)]
    Source(#[from] SyncError),
    /// Reading or writing the target failed (a full disk, a bucket refusing writes, the
    /// tree's lock held).
    #[error(transparent)]
    Target(#[from] PublishError),
    /// An object from the source is not what the signed index says.
    #[error("{object}: {source}; nothing of it was written")]
    Damaged {
        /// The object, with the store it came from.
        object: String,
        /// What is wrong with it.
        source: FormatError,
    },
    /// The target's head does not verify against the trusted keys: a replicate does not
    /// replace what it cannot place in the tree's history.
    #[error("{object}: the target's head does not verify ({source}); remove it to replicate into this store afresh")]
    TargetHead {
        /// The target's head.
        object: String,
        /// Why it does not verify.
        source: FormatError,
    },
    /// The source offers the version the target holds with another root.
    #[error("tree '{tree}': the source offers version {version} with a different root than the target holds; refusing (equivocation)")]
    Equivocation {
        /// The tree.
        tree: String,
        /// The version.
        version: u64,
    },
    /// A pack the new version needs is condemned by the target's garbage collector.
    #[error("{store}: pack {pack} is condemned by the store's gc, and the new version needs it; run again once the gc removed it")]
    Condemned {
        /// The target.
        store: String,
        /// The pack.
        pack: String,
    },
    /// A pack is in the target under its name but is not the pack (not a regular file,
    /// swapped, or gone since it was put).
    #[error("{store}/{pack} is not the pack that was checked (not a regular file, replaced or removed since); remove it and run again")]
    Unusable {
        /// The target.
        store: String,
        /// The pack's key.
        pack: String,
    },
    /// A local file of the replicate's own (a pack on its way to the target).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}
