//! An ISO image template (`pulpdist iso rebuild` reads it from anywhere).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_isos::template::Template;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Template::decode(data) {
        // What decodes re-encodes to something that decodes to the same template.
        if let Ok(bytes) = t.encode(1) {
            assert_eq!(Template::decode(&bytes).ok().as_ref(), Some(&t));
        }
    }
});
