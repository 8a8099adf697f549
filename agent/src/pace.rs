//! A tree's window and bandwidth: when a site may fetch it and how fast. A sync outside
//! its window waits for it. Within it, each request waits its turn: it starts only once
//! the bytes fetched before it fit the rate since the sync began, so the sync keeps its
//! bandwidth on average (ahead of it by one request at most). A request whose turn would
//! come after the window closes is not made: the sync stops there (reported `partial`;
//! what it fetched stays in its state for the next window). The first request of a
//! window always goes, however large: a pack larger than a window's bytes is still
//! fetched, at the cost of running past the window's end.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pulpdist_format::PackId;
use pulpdist_sync::{HeadFetch, Overhead, StoreReader, StoreUse, SyncError};

/// Minutes in a day.
const DAY: u32 = 24 * 60;

/// A window, minutes of the day (UTC) `[start, end)`, wrapping past midnight if
/// `end < start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    start: u32,
    end: u32,
}

impl Window {
    pub(crate) fn new([start, end]: [u32; 2]) -> Option<Window> {
        (start < DAY && end < DAY && start != end).then_some(Window { start, end })
    }

    /// Whether `unix` (seconds) falls in the window.
    pub(crate) fn contains(&self, unix: i64) -> bool {
        let m = minute_of_day(unix);
        match self.start < self.end {
            true => (self.start..self.end).contains(&m),
            false => m >= self.start || m < self.end,
        }
    }

    /// Seconds from `unix` until the window opens (0 inside it).
    pub(crate) fn until_open(&self, unix: i64) -> u64 {
        if self.contains(unix) {
            return 0;
        }
        let day_secs = unix.rem_euclid(86_400) as u64;
        let open = u64::from(self.start) * 60;
        (open + 86_400 - day_secs) % 86_400
    }

    /// When (Unix seconds) the window that holds `unix` closes.
    pub(crate) fn closes_after(&self, unix: i64) -> i64 {
        let day_start = unix - unix.rem_euclid(86_400);
        let mut close = day_start + i64::from(self.end) * 60;
        if close <= unix {
            close += 86_400;
        }
        close
    }
}

fn minute_of_day(unix: i64) -> u32 {
    (unix.rem_euclid(86_400) / 60) as u32
}

/// One sync's pace: its rate, when its window closes, what it fetched so far.
pub(crate) struct Pace {
    rate: Option<u64>,
    closes: Option<i64>,
    started: Instant,
    fetched: AtomicU64,
    closed: AtomicBool,
}

impl Pace {
    pub(crate) fn new(rate: Option<u64>, closes: Option<i64>) -> Arc<Pace> {
        Arc::new(Pace {
            rate,
            closes,
            started: Instant::now(),
            fetched: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether a request was refused because the window had closed.
    pub(crate) fn window_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Before a request of `n` bytes (0 when not known): waits until the bytes before it
    /// fit the rate; refused if that comes after the window closes.
    fn before(&self, store: &str, n: u64) -> Result<(), SyncError> {
        let wait = match self.rate {
            Some(rate) => {
                let before = self.fetched.fetch_add(n, Ordering::Relaxed);
                Duration::from_secs_f64(before as f64 / rate as f64)
                    .saturating_sub(self.started.elapsed())
            }
            None => Duration::ZERO,
        };
        if let Some(at) = self.closes {
            let left = Duration::from_secs(u64::try_from(at - crate::unix_now()).unwrap_or(0));
            if left.is_zero() || (!wait.is_zero() && wait >= left) {
                self.closed.store(true, Ordering::Relaxed);
                return Err(SyncError::Usage(format!(
                    "{store}: the tree's window closed (at {at}, Unix time) before the turn of its next {n} bytes at its bandwidth; the sync goes on in the next window"
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

    #[test]
    fn windows_open_and_close_across_midnight() {
        let day = 20_000 * 86_400_i64;
        let at = |h: i64, m: i64| day + h * 3600 + m * 60;
        let night = Window::new([22 * 60, 6 * 60]).expect("window");
        assert!(night.contains(at(23, 0)) && night.contains(at(2, 0)));
        assert!(!night.contains(at(6, 0)) && !night.contains(at(12, 0)));
        assert_eq!(night.until_open(at(21, 30)), 1800);
        assert_eq!(night.until_open(at(6, 0)), 16 * 3600);
        assert_eq!(night.until_open(at(23, 0)), 0);
        assert_eq!(night.closes_after(at(23, 0)), at(30, 0));
        assert_eq!(night.closes_after(at(1, 0)), at(6, 0));
        let day_w = Window::new([9 * 60, 17 * 60]).expect("window");
        assert!(day_w.contains(at(9, 0)) && !day_w.contains(at(17, 0)));
        assert_eq!(day_w.closes_after(at(10, 0)), at(17, 0));
        assert_eq!(Window::new([60, 60]), None);
        assert_eq!(Window::new([0, 24 * 60]), None);
    }
}
