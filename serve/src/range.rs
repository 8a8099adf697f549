//! HTTP `Range` and `If-None-Match` header logic (RFC 9110 §14 and §13.1.2). Pure.

use std::ops::Range;

/// More ranges than this in one request and the whole object is sent instead (RFC 9110
/// allows ignoring a Range header; a client asking for this many is better served whole).
pub(crate) const MAX_RANGES: usize = 256;

/// What to send for a `Range` header against an object of `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) Range header: 200 with the whole object.
    Whole,
    /// 206 with these ranges (one: a plain body; several: `multipart/byteranges`).
    Partial(Vec<Range<u64>>),
    /// 416: no range overlaps the object.
    Unsatisfiable,
}

/// Resolves a `Range` header value. Syntax errors and units other than `bytes` are ignored
/// (the whole object is sent), as RFC 9110 §14.2 asks.
pub fn resolve(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(h) = header else {
        return RangeAnswer::Whole;
    };
    let Some(specs) = h.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    let mut out = Vec::new();
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let Some((a, b)) = spec.split_once('-') else {
            return RangeAnswer::Whole;
        };
        let (a, b) = (a.trim(), b.trim());
        let r = if a.is_empty() {
            // Suffix: the last N bytes.
            let Ok(n) = b.parse::<u64>() else {
                return RangeAnswer::Whole;
            };
            if n == 0 {
                continue;
            }
            len.saturating_sub(n)..len
        } else {
            let Ok(start) = a.parse::<u64>() else {
                return RangeAnswer::Whole;
            };
            let end = if b.is_empty() {
                len
            } else {
                let Ok(last) = b.parse::<u64>() else {
                    return RangeAnswer::Whole;
                };
                if last < start {
                    return RangeAnswer::Whole;
                }
                last.saturating_add(1).min(len)
            };
            if start >= len {
                continue;
            }
            start..end
        };
        if r.start < r.end {
            out.push(r);
        }
        if out.len() > MAX_RANGES {
            return RangeAnswer::Whole;
        }
    }
    if out.is_empty() {
        return RangeAnswer::Unsatisfiable;
    }
    // Overlapping or adjacent ranges are merged (RFC 9110 §14.2 lets a server coalesce),
    // so no request can make the response larger than the object.
    out.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(out.len());
    for r in out {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    RangeAnswer::Partial(merged)
}

/// `Content-Range` value for one range.
pub(crate) fn content_range(r: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{}", r.start, r.end - 1, len)
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison, RFC 9110 §13.1.2).
pub fn none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let ours = bare(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == ours)
}

/// The parts of a `multipart/byteranges` body: each part's header block (the bytes before
/// its data), then the closing delimiter. The data of range i goes after `heads[i]`.
pub(crate) fn multipart_frame(
    ranges: &[Range<u64>],
    len: u64,
    boundary: &str,
    content_type: &str,
) -> (Vec<String>, String) {
    let heads = ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: {}\r\n\r\n",
                if i == 0 { "" } else { "\r\n" },
                content_range(r, len)
            )
        })
        .collect();
    (heads, format!("\r\n--{boundary}--\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn ranges() {
        assert_eq!(resolve(None, 10), RangeAnswer::Whole);
        assert_eq!(
            resolve(Some("bytes=0-3"), 10),
            RangeAnswer::Partial(vec![0..4])
        );
        assert_eq!(
            resolve(Some("bytes=5-"), 10),
            RangeAnswer::Partial(vec![5..10])
        );
        assert_eq!(
            resolve(Some("bytes=-3"), 10),
            RangeAnswer::Partial(vec![7..10])
        );
        assert_eq!(
            resolve(Some("bytes=-30"), 10),
            RangeAnswer::Partial(vec![0..10])
        );
        assert_eq!(
            resolve(Some("bytes=8-20"), 10),
            RangeAnswer::Partial(vec![8..10])
        );
        assert_eq!(
            resolve(Some("bytes=0-0, 2-3,9-"), 10),
            RangeAnswer::Partial(vec![0..1, 2..4, 9..10])
        );
        assert_eq!(resolve(Some("bytes=10-"), 10), RangeAnswer::Unsatisfiable);
        // Overlaps are merged: the answer is never larger than the object.
        assert_eq!(
            resolve(Some("bytes=0-,0-,5-6,2-3,8-8,9-9"), 10),
            RangeAnswer::Partial(vec![0..10])
        );
        assert_eq!(
            resolve(Some("bytes=6-7,0-1"), 10),
            RangeAnswer::Partial(vec![0..2, 6..8])
        );
        assert_eq!(
            resolve(Some("bytes=10-12,20-"), 10),
            RangeAnswer::Unsatisfiable
        );
        assert_eq!(resolve(Some("bytes=-0"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(resolve(Some("bytes=0-"), 0), RangeAnswer::Unsatisfiable);
        // Ignored: bad syntax, other units, reversed ranges.
        assert_eq!(resolve(Some("bytes=a-b"), 10), RangeAnswer::Whole);
        assert_eq!(resolve(Some("items=0-1"), 10), RangeAnswer::Whole);
        assert_eq!(resolve(Some("bytes=5-2"), 10), RangeAnswer::Whole);
        assert_eq!(resolve(Some("bytes=5"), 10), RangeAnswer::Whole);
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(resolve(Some(&many), 10), RangeAnswer::Whole);
    }

    #[test]
    fn etags() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("\"b\", W/\"a\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
    }

    #[test]
    fn multipart() {
        let (heads, tail) = multipart_frame(&[0..2, 5..6], 10, "B", "application/octet-stream");
        assert_eq!(
            heads[0],
            "--B\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-1/10\r\n\r\n"
        );
        assert!(heads[1].starts_with("\r\n--B\r\n"));
        assert_eq!(tail, "\r\n--B--\r\n");
    }
}
