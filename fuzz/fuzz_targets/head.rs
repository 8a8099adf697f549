//! A signed tree head from an untrusted store: decode, then verify against a fixed key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_format::{Head, SignedHead, TrustedKeys};

fuzz_target!(|data: &[u8]| {
    let _ = Head::decode_unverified(data);
    let keys = TrustedKeys::from_text(
        "pulpdist-ed25519 ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c fuzz\n",
    );
    if let Ok(keys) = keys {
        let _ = SignedHead::decode_and_verify(data, &keys);
    }
});
