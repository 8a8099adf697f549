//! The sync's index walk and planner (a dry run: nothing is written) over any index the
//! format allows, validly signed: repeated children, wide and deep trees, long names. It
//! must end, in bounded memory, with a plan or a refusal; never a panic.
#![no_main]
use std::ops::Range;

use libfuzzer_sys::fuzz_target;
use pulpdist_sync::{sync, HeadFetch, StoreReader, SyncError, SyncOptions};
use pulpdist_format::{PackId, TrustedKeys};

#[path = "common/index.rs"]
mod index;

struct Mem {
    head: Vec<u8>,
    pack_id: PackId,
    pack: Vec<u8>,
}

impl StoreReader for Mem {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn get_head(&self, _tree: &str, _inm: Option<&str>) -> Result<HeadFetch, SyncError> {
        Ok(HeadFetch::Found {
            bytes: self.head.clone(),
            etag: None,
        })
    }
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let short = || SyncError::Short {
            store: "memory".into(),
            object: pack.object_key(),
            got: 0,
            wanted: range.end,
        };
        if *pack != self.pack_id {
            return Err(short());
        }
        self.pack
            .get(range.start as usize..range.end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(short)
    }
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        self.get_range(pack, 0..size)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(built) = index::build(data) else {
        return;
    };
    let store = Mem {
        head: built.head,
        pack_id: built.pack_id,
        pack: built.pack,
    };
    let keys = TrustedKeys::new(vec![built.key.public()]);
    let mut opts = SyncOptions::new("t", "/nonexistent-pulpdist-fuzz/mirror", keys);
    opts.dry_run = true;
    let _ = sync(&store, &opts);
});
