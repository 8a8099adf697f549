//! Turning the objects needed from one pack into few requests (pure).

use std::ops::Range;

/// Merges byte ranges whose gaps are at most `max_gap`, in order. Overlapping and adjacent
/// ranges always merge. The input need not be sorted.
pub(crate) fn coalesce(mut ranges: Vec<Range<u64>>, max_gap: u64) -> Vec<Range<u64>> {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(max_gap) => {
                last.end = last.end.max(r.end)
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_small_gaps() {
        assert_eq!(
            coalesce(vec![10..20, 0..5, 22..30, 100..110], 2),
            vec![0..5, 10..30, 100..110]
        );
        assert_eq!(coalesce(vec![0..5, 3..4], 0), vec![0..5]);
        assert!(coalesce(vec![], 10).is_empty());
    }

    proptest! {
        #[test]
        fn covers_every_input_and_stays_sorted(rs in proptest::collection::vec((0u64..1000, 1u64..50), 0..30), gap in 0u64..40) {
            let input: Vec<Range<u64>> = rs.iter().map(|(s, l)| *s..s + l).collect();
            let out = coalesce(input.clone(), gap);
            for r in &input {
                prop_assert!(out.iter().any(|o| o.start <= r.start && r.end <= o.end));
            }
            for w in out.windows(2) {
                prop_assert!(w[0].end + gap < w[1].start);
            }
        }
    }
}
