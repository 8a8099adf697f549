//! Upstream side of PulpDist: `publish` a directory tree into a store.
//!
//! Publishing walks the tree, reuses the chunk lists of files whose size, mtime and inode
//! did not change, chunks the rest on every core, appends new chunks to new data packs
//! and new index nodes to one new index pack, writes a delta pack from each of the last K
//! versions (each changed file compressed against its old copy), and the signed head last.
//!
//! ```no_run
//! use pulpdist_publish::{publish, LocalStore, PublishOptions};
//! use pulpdist_format::SecretKey;
//! let store = LocalStore::open("store").unwrap();
//! let key = SecretKey::generate().unwrap();
//! let opts = PublishOptions::new("debian", "/srv/mirror/debian", "state");
//! let report = publish(&store, &key, &opts).unwrap();
//! println!("version {} with {} new chunks", report.version, report.chunks_new);
//! ```

mod cache;
mod catalog;
mod delta;
mod error;
mod objstore;
mod packer;
mod pipeline;
mod store;
mod summary;
mod walk;

pub use delta::DeltaReport;
pub use error::PublishError;
pub use objstore::{ObjectStoreTarget, DEFAULT_PART_SIZE};
pub use pipeline::{
    publish, refresh, PublishOptions, PublishReport, RefreshReport, DEFAULT_DELTA_LEVEL,
    DEFAULT_OLD_DELTA_LEVEL,
};
pub use store::{create_new, ListedPack, LocalStore, Store, StoreLock, StoredHead};
