//! The worker threads of a publish.

use crate::error::PublishError;

/// The publish's worker threads: `threads` of them (one pool for the whole publish), or
/// rayon's global pool (every core).
pub(super) struct Workers(Option<rayon::ThreadPool>);

impl Workers {
    pub(super) fn new(threads: Option<usize>) -> Result<Self, PublishError> {
        threads
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| PublishError::Threads(format!("cannot start {n} threads: {e}")))
            })
            .transpose()
            .map(Workers)
    }

    /// Runs `f` with its parallel loops on these workers.
    pub(super) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.0 {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}
