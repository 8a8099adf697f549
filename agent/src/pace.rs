//! A tree's window and bandwidth: when a site may fetch it and how fast. A sync outside
//! its window waits for it. Within it, each request waits its turn: it starts only once
//! the bytes fetched before it fit the rate since the sync began, so the sync keeps its
//! bandwidth on average (ahead of it by one request at most). A request that would end,
//! at the rate, after the window closes is not made (nor any once it has closed): the
//! sync stops there (reported `partial`; what it fetched stays in its state for the next
//! window). The run's first request always goes, however large: a pack larger than a
//! window's bytes is still fetched, at the cost of running past the window's end.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulpdist_format::PackId;
use pulpdist_sync::{HeadFetch, Overhead, StoreReader, StoreUse, SyncError};

/// What a request refused at the window's close says (how a run cut by it is told from
/// one that failed otherwise).
pub(crate) const WINDOW_CLOSED: &str = "the tree's window closed";

/// One sync's pace: its rate, when its window closes, what it fetched so far.
pub(crate) struct Pace {
    rate: Option<u64>,
    closes: Option<i64>,
    started: Instant,
    fetched: AtomicU64,
    closed: AtomicBool,
    /// A request was made already in this run.
    began: AtomicBool,
}

impl Pace {
    pub(crate) fn new(rate: Option<u64>, closes: Option<i64>) -> Arc<Pace> {
        Arc::new(Pace {
            // A rate of 0 (not from a checked network file) is no limit.
            rate: rate.filter(|r| *r > 0),
            closes,
            started: Instant::now(),
            fetched: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            began: AtomicBool::new(false),
        })
    }

    /// Whether a request was refused because the window had closed.
    pub(crate) fn window_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Before a request of `n` bytes (0 when not known): waits until the bytes before it
    /// fit the rate; refused if the window has closed, or if at the rate the request
    /// would end after the close (but for the run's first request, so that every window
    /// makes progress).
    fn before(&self, store: &str, n: u64) -> Result<(), SyncError> {
        // The first request with bytes to fetch (the head's size is not known before).
        let first = n > 0 && !self.began.swap(true, Ordering::Relaxed);
        let secs = |bytes: u64, rate: u64| {
            Duration::try_from_secs_f64(bytes as f64 / rate as f64).unwrap_or(Duration::MAX)
        };
        let (wait, ends) = match self.rate {
            Some(rate) => {
                let before = self.fetched.fetch_add(n, Ordering::Relaxed);
                let elapsed = self.started.elapsed();
                (
                    secs(before, rate).saturating_sub(elapsed),
                    secs(before.saturating_add(n), rate).saturating_sub(elapsed),
                )
            }
            None => (Duration::ZERO, Duration::ZERO),
        };
        if let Some(at) = self.closes {
            let left = Duration::from_secs(u64::try_from(at - crate::unix_now()).unwrap_or(0));
            if left.is_zero() || (!first && ends > left) {
                // Not fetched: not counted.
                if self.rate.is_some() {
                    self.fetched.fetch_sub(n, Ordering::Relaxed);
                }
                self.closed.store(true, Ordering::Relaxed);
                return Err(SyncError::Usage(format!(
                    "{store}: {WINDOW_CLOSED} (at {at}, Unix time) before the turn of its next {n} bytes at its bandwidth; the sync goes on in the next window"
                )));
            }
        }
        std::thread::sleep(wait);
        Ok(())
    }

    /// After a request of unknown size that fetched `n` bytes: counted for the next.
    fn after(&self, n: usize) {
        if self.rate.is_some() {
            self.fetched.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// A store read at a sync's pace.
pub(crate) struct Paced {
    inner: Box<dyn StoreReader>,
    pace: Arc<Pace>,
}

impl Paced {
    pub(crate) fn new(inner: Box<dyn StoreReader>, pace: Arc<Pace>) -> Paced {
        Paced { inner, pace }
    }

    /// A request of `known` bytes; one of unknown size (`None`) is counted by `size` of
    /// what it returned.
    fn paced<T>(
        &self,
        known: Option<u64>,
        size: impl Fn(&T) -> usize,
        call: impl FnOnce() -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        self.pace
            .before(&self.inner.describe(), known.unwrap_or(0))?;
        let got = call()?;
        if known.is_none() {
            self.pace.after(size(&got));
        }
        Ok(got)
    }
}

impl StoreReader for Paced {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        let size = |h: &HeadFetch| match h {
            HeadFetch::Found { bytes, .. } => bytes.len(),
            _ => 0,
        };
        self.paced(None, size, || self.inner.get_head(tree, if_none_match))
    }
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let n = range.end.saturating_sub(range.start);
        self.paced(Some(n), Vec::len, || self.inner.get_range(pack, range))
    }
    fn get_ranges(&self, pack: &PackId, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, SyncError> {
        let n = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        self.paced(Some(n), |_| 0, || self.inner.get_ranges(pack, ranges))
    }
    fn multi_range(&self) -> bool {
        self.inner.multi_range()
    }
    fn cheap_ranges(&self) -> bool {
        self.inner.cheap_ranges()
    }
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        self.paced(Some(size), Vec::len, || self.inner.get_pack(pack, size))
    }
    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        self.paced(Some(0), |_| 0, || self.inner.pack_size(pack))
    }
    fn per_store(&self) -> Vec<StoreUse> {
        self.inner.per_store()
    }
    fn overhead(&self) -> Overhead {
        self.inner.overhead()
    }
    fn expect_sizes(&self, sizes: &std::collections::HashMap<PackId, u64>) {
        self.inner.expect_sizes(sizes)
    }
    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        self.inner.list_trees()
    }
    fn list_versions(&self, tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        self.inner.list_versions(tree)
    }
    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        let size = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        self.paced(None, size, || self.inner.get_archived(tree, version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store of zeros that counts its requests.
    struct Zeros(AtomicU64);

    impl StoreReader for Zeros {
        fn describe(&self) -> String {
            "zeros".into()
        }
        fn get_head(&self, _: &str, _: Option<&str>) -> Result<HeadFetch, SyncError> {
            Ok(HeadFetch::Missing)
        }
        fn get_range(&self, _: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(vec![0; (range.end - range.start) as usize])
        }
        fn get_pack(&self, _: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(vec![0; size as usize])
        }
    }

    #[test]
    fn a_request_that_would_end_after_the_close_is_not_made_but_the_first_always_is() {
        // 1 kB/s, the window closing in 2 s.
        let pace = Pace::new(Some(1000), Some(crate::unix_now() + 2));
        let store = Paced::new(Box::new(Zeros(AtomicU64::new(0))), pace.clone());
        let pack = PackId::derived(b"a pack");
        // A sync asks for the head first (its size unknown): that is not the first
        // request with bytes to fetch. That one goes, however long it takes at the rate
        // (10 s).
        assert!(store.get_head("t", None).is_ok());
        assert_eq!(
            store.get_pack(&pack, 10_000).map(|v| v.len()).ok(),
            Some(10_000)
        );
        assert!(!pace.window_closed());
        // The next would end 10.5 s in, after the close: not made.
        let refused = store.get_range(&pack, 0..500);
        assert!(matches!(refused, Err(SyncError::Usage(ref m)) if m.contains("window closed")));
        assert!(pace.window_closed());
    }

    #[test]
    fn without_a_window_requests_wait_their_turn_at_the_rate() {
        let pace = Pace::new(Some(1_000_000), None);
        let store = Paced::new(Box::new(Zeros(AtomicU64::new(0))), pace);
        let pack = PackId::derived(b"a pack");
        let started = Instant::now();
        for _ in 0..3 {
            store
                .get_range(&pack, 0..100_000)
                .map(|_| ())
                .expect("range");
        }
        // The third starts only once the first two (200 kB) fit 1 MB/s.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
