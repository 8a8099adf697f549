//! The server's reach walk (which packs a tree's index reaches, for per-tree grants) over
//! any index the format allows, validly signed, read from a store directory. It must end
//! with the index's own pack or nothing; never a panic.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pulpdist_format::TrustedKeys;
use pulpdist_serve::fuzzing::Reach;

#[path = "common/index.rs"]
mod index;

fn store() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("pulpdist-fuzz-reach-{}", std::process::id()));
        let _ = std::fs::create_dir_all(d.join("heads"));
        let _ = std::fs::create_dir_all(d.join("packs"));
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(built) = index::build(data) else {
        return;
    };
    let root = store();
    let _ = std::fs::write(root.join(built.pack_id.object_key()), &built.pack);
    let _ = std::fs::write(root.join("heads/t"), &built.head);
    let keys = TrustedKeys::new(vec![built.key.public()]);
    if let Some(packs) = Reach::default().packs(root, "t", Some(&keys)) {
        assert!(packs.iter().all(|p| *p == built.pack_id), "reached a pack the index does not name");
    }
});
