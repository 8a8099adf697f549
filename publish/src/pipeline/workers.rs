//! The worker threads of a publish, and the names of the packs it writes.

use std::collections::HashSet;

use pulpdist_format::PackId;

use super::Run;
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

/// The context of the secret pack names are derived from (FORMAT.md 3).
pub(super) const NAMES_CONTEXT: &str = "pulpdist 2026 pack names";

/// Names the packs of one publish (FORMAT.md 3). A name is derived from a secret of the
/// signing key, the previous head's root (or from `opts.pack_seed` alone, in tests), the
/// tree, the version, the pack's kind and its number: the same input and key give the same
/// store bytes, so two publishers holding the key can compare theirs, and nobody else can
/// guess the name of a pack before it is published. A name the store already holds (a
/// pack a killed publish left, say) is passed over, so one name never stands for two
/// packs.
pub(super) fn pack_namer(
    run: &Run<'_>,
    taken: &HashSet<PackId>,
) -> impl FnMut(&str) -> Result<PackId, PublishError> + Send + 'static {
    let seed = match &run.opts.pack_seed {
        Some(s) => s.clone(),
        None => {
            let mut s = run.names_key.to_vec();
            s.extend(
                run.prev_root
                    .map(|r| r.to_hex())
                    .unwrap_or_default()
                    .as_bytes(),
            );
            s
        }
    };
    let (tree, version) = (run.opts.tree.clone(), run.version);
    let taken = taken.clone();
    let mut n = 0u32;
    move |kind: &str| {
        n += 1;
        let mut material = seed.clone();
        material.extend(format!("/{tree}/{version}/{kind}/{n}").as_bytes());
        let mut id = PackId::derived(&material);
        let mut again = 0u32;
        while taken.contains(&id) {
            again = again
                .checked_add(1)
                .ok_or_else(|| PublishError::Internal("no free pack name".into()))?;
            let mut m = material.clone();
            m.extend(format!("/again/{again}").as_bytes());
            id = PackId::derived(&m);
        }
        Ok(id)
    }
}
