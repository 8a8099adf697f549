//! The server's Range and If-None-Match header handling: never panics, ranges stay inside.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_serve::fuzzing::{none_match, resolve, RangeAnswer};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let len = u64::from(u16::from_le_bytes([data[0], data[1]]));
    if let Ok(h) = std::str::from_utf8(&data[2..]) {
        if let RangeAnswer::Partial(rs) = resolve(Some(h), len) {
            for r in rs {
                assert!(r.start < r.end && r.end <= len);
            }
        }
        let _ = none_match(h, "\"x\"");
    }
});
