//! The worker threads of a publish, and the names of the packs it writes.

use pulpdist_format::PackId;

use super::PublishOptions;
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

/// Names the packs of version `version`: random, or derived from `opts.pack_seed`.
pub(super) fn pack_namer(
    opts: &PublishOptions,
    version: u64,
) -> impl FnMut(&str) -> Result<PackId, PublishError> + Send + 'static {
    let seed = opts.pack_seed.clone();
    let tree = opts.tree.clone();
    let mut n = 0u32;
    move |kind: &str| {
        n += 1;
        match &seed {
            Some(s) => {
                let mut material = s.clone();
                material.extend(format!("/{tree}/{version}/{kind}/{n}").as_bytes());
                Ok(PackId::derived(&material))
            }
            None => PackId::random().map_err(|source| PublishError::Format {
                object: "pack id".into(),
                source,
            }),
        }
    }
}
