//! An index node: the plain encoding, and stored (maybe zstd) bytes under a reference.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_format::{Codec, Location, Node, NodeId, NodeRef, PackId};

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = Node::decode(data) {
        // What decodes re-encodes to the same bytes (one encoding per node).
        assert_eq!(node.encode(), data);
    }
    let r = NodeRef {
        id: NodeId::of(data),
        loc: Location {
            pack: PackId::derived(b"fuzz"),
            offset: 40,
            stored_len: data.len() as u32,
            raw_len: u32::from_le_bytes([data.first().copied().unwrap_or(0), 0, 1, 0]),
            codec: Codec::Zstd,
        },
    };
    let _ = r.open(data);
});
