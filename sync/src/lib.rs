//! Downstream side of PulpDist: `sync` a directory from a store.
//!
//! A sync verifies the signed head, walks only the index nodes whose ids changed since the
//! version it last applied, finds which needed chunks are already in local files, rebuilds
//! changed files from a delta pack when the head offers one from that version, builds a
//! plan (pure data, printable with `--dry-run`), and executes it: fetch and verify the
//! missing chunks, write each file to a temporary file and rename it into place (payload
//! before repository metadata), delete last, then record the new version.
//!
//! The store is read through [`StoreReader`]; [`LocalStoreReader`] reads a directory.
//!
//! ```no_run
//! use pulpdist_sync::{sync, LocalStoreReader, SyncOptions};
//! use pulpdist_format::TrustedKeys;
//! let keys = TrustedKeys::from_text(&std::fs::read_to_string("upstream.key.pub").unwrap()).unwrap();
//! let store = LocalStoreReader::new("store");
//! let report = sync(&store, &SyncOptions::new("debian", "/srv/downstream/debian", keys)).unwrap();
//! println!("now at version {}", report.version);
//! ```

mod check;
mod error;
mod fsutil;
mod glob;
mod history;
mod http;
mod locate;
mod objstore;
mod origin;
mod pipeline;
mod ranges;
mod staging;
mod state;
mod store;
mod tree;
mod verify;

pub use check::{invalidate, verify_mirror, MirrorReport};
pub use error::SyncError;
pub use fsutil::absolute_dir;
pub use glob::{glob_match, DEFAULT_METADATA_PATTERNS};
pub use history::{diff, log, Change, PathChange, VersionInfo};
pub use http::{tls_config, HttpOptions, HttpStoreReader};
pub use locate::{fetch_located, locate_chunks, Located, Run, Wanted};
pub use objstore::ObjectStoreReader;
pub use origin::sync_rsync;
pub use pipeline::{check_head, sync, SyncOptions, SyncReport};
pub use store::{
    falls_through, first_ok, AsReader, CountingReader, HeadFetch, LocalStoreReader, Overhead,
    StoreList, StoreReader, StoreUse,
};
pub use verify::{verify_store, Problem, ReadData, VerifyReport};
