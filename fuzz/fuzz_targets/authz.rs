//! The server's authorization file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_serve::fuzzing::{Authz, Identity};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(a) = Authz::parse(text) {
            let g = a.grant(&[Identity::Cn("site".into()), Identity::Dns("m.example.org".into())]);
            let _ = g.allows("debian");
        }
    }
});
