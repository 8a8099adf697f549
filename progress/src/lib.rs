//! How a long operation (a publish reading files, a sync fetching chunks and writing files,
//! a store check reading packs) says how far it is: a phase starts with what it plans
//! (items and bytes), advances, and finishes. The libraries only call [`Reporter`]; the
//! binary decides what to show (a progress bar on a terminal, JSON lines, nothing).
//!
//! ```
//! let r = pulpdist_progress::Reporter::default(); // reports nothing
//! r.start("fetch", 3, 3 << 20);
//! r.advance(1, 1 << 20);
//! r.finish();
//! ```

use std::sync::Arc;

/// What receives progress. Called from several threads at once.
pub trait Progress: Send + Sync {
    /// Phase `what` begins, planning `items` (files, requests, packs) and `bytes` (0: not
    /// known).
    fn start(&self, what: &str, items: u64, bytes: u64);
    /// `items` and `bytes` more of the current phase are done.
    fn advance(&self, items: u64, bytes: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64, _: u64) {}
    fn advance(&self, _: u64, _: u64) {}
    fn finish(&self) {}
}

/// A shared [`Progress`] that options can carry (cloned, printed); silent by default.
#[derive(Clone)]
pub struct Reporter(Arc<dyn Progress>);

impl Reporter {
    /// Reports to `p`.
    pub fn new(p: Arc<dyn Progress>) -> Self {
        Reporter(p)
    }
    /// See [`Progress::start`].
    pub fn start(&self, what: &str, items: u64, bytes: u64) {
        self.0.start(what, items, bytes)
    }
    /// See [`Progress::advance`].
    pub fn advance(&self, items: u64, bytes: u64) {
        self.0.advance(items, bytes)
    }
    /// See [`Progress::finish`].
    pub fn finish(&self) {
        self.0.finish()
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Reporter(Arc::new(Silent))
    }
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}
