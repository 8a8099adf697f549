//! An assignment's window: the minutes of the day (UTC) in which a site may fetch a tree.
//! The agent syncs only inside it; the coordinator counts a site's silence and lag only in
//! its windows' time (a site that may not sync is neither silent nor late).

/// Minutes in a day.
const DAY: u32 = 24 * 60;

/// A window, minutes of the day (UTC) `[start, end)`, wrapping past midnight if
/// `end < start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    /// The window `[start, end)` in minutes of the day, if both are within a day and it is
    /// not empty.
    pub fn new([start, end]: [u32; 2]) -> Option<Window> {
        (start < DAY && end < DAY && start != end).then_some(Window { start, end })
    }

    /// Whether `unix` (seconds) falls in the window.
    pub fn contains(&self, unix: i64) -> bool {
        let m = minute_of_day(unix);
        match self.start < self.end {
            true => (self.start..self.end).contains(&m),
            false => m >= self.start || m < self.end,
        }
    }

    /// Seconds from `unix` until the window opens (0 inside it).
    pub fn until_open(&self, unix: i64) -> u64 {
        if self.contains(unix) {
            return 0;
        }
        let day_secs = unix.rem_euclid(86_400) as u64;
        let open = u64::from(self.start) * 60;
        (open + 86_400 - day_secs) % 86_400
    }

    /// When (Unix seconds) the window that holds `unix` closes.
    pub fn closes_after(&self, unix: i64) -> i64 {
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

impl Window {
    /// Seconds of `[from, to)` (Unix seconds) inside the window.
    pub fn open_seconds(&self, from: i64, to: i64) -> i64 {
        if to <= from {
            return 0;
        }
        let (start, end) = (i64::from(self.start) * 60, i64::from(self.end) * 60);
        let per_day = match start < end {
            true => end - start,
            false => 86_400 - start + end,
        };
        // Whole days in the middle count whole (a span of years costs no loop of years).
        let first_day = from.div_euclid(86_400);
        let last_day = to.div_euclid(86_400);
        let overlap = |a: i64, b: i64| (b.min(to) - a.max(from)).max(0);
        let in_day = |d: i64| {
            let base = d * 86_400;
            match start < end {
                true => overlap(base + start, base + end),
                false => overlap(base, base + end) + overlap(base + start, base + 86_400),
            }
        };
        if last_day - first_day <= 2 {
            return (first_day..=last_day).map(in_day).sum();
        }
        in_day(first_day) + in_day(last_day) + (last_day - first_day - 1) * per_day
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

    #[test]
    fn open_seconds_count_only_the_windows_time() {
        let day = 20_000 * 86_400_i64;
        let at = |h: i64, m: i64| day + h * 3600 + m * 60;
        let night = Window::new([22 * 60, 6 * 60]).expect("window");
        // 06:00 to 22:00: shut all along.
        assert_eq!(night.open_seconds(at(6, 0), at(22, 0)), 0);
        // 21:00 to 07:00 the next day: the eight hours of the night.
        assert_eq!(night.open_seconds(at(21, 0), at(31, 0)), 8 * 3600);
        // Ten days: eight hours each.
        assert_eq!(night.open_seconds(at(12, 0), at(12 + 240, 0)), 80 * 3600);
        let office = Window::new([9 * 60, 17 * 60]).expect("window");
        assert_eq!(office.open_seconds(at(10, 0), at(10, 30)), 1800);
        assert_eq!(office.open_seconds(at(16, 0), at(34, 0)), 3600 + 3600);
        assert_eq!(office.open_seconds(at(5, 0), at(4, 0)), 0);
        // The sum over ten days equals the day-by-day sum.
        let (a, b) = (at(3, 17), at(3 + 24 * 9 + 5, 41));
        let by_day: i64 = (0..12)
            .map(|d| {
                office.open_seconds(
                    (at(0, 0) + d * 86_400).max(a),
                    (at(24, 0) + d * 86_400).min(b),
                )
            })
            .sum();
        assert_eq!(office.open_seconds(a, b), by_day);
    }
}
