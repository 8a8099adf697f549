//! The sync configuration file.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_client::SyncConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = SyncConfig::parse(text);
    }
});
