//! A delta pack as a client reads it: the pack's records, each record's fixed part, and
//! its frame decoded against a reference with the size bound the record claims (capped);
//! batches: the list decoded and parsed, the items' frame decoded (and put back together
//! from its columns for kind 4), each node filled.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_format::delta::{
    decode_batch_list, decode_deltas, fill_children, from_columns, records, to_columns, Batch,
    BatchKind, DeltaRecord,
};
use pulpdist_format::NodeId;
use pulpdist_format::PackId;

fuzz_target!(|data: &[u8]| {
    let _ = decode_deltas(data);
    let id = match data.get(8..40).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        Some(b) => PackId(b),
        None => return,
    };
    let recs = records(id, data).unwrap_or_default();
    let lone = DeltaRecord::decode(data).ok().map(|(_, f)| f);
    let reference = b"a reference the frames may refer to, repeated. a reference".repeat(20);
    for batch in recs
        .iter()
        .filter_map(|r| Batch::decode(r).ok().flatten())
    {
        let Ok(list) = pulpdist_chunker::delta::decode(
            &[],
            batch.list_frame,
            u64::from(batch.list_size).min(1 << 16),
        ) else {
            continue;
        };
        let Ok(items) = decode_batch_list(&list, batch.count, batch.kind) else {
            continue;
        };
        let total: u64 = items.iter().map(|it| u64::from(it.size)).sum();
        if let Ok(mut nodes) =
            pulpdist_chunker::delta::decode(&reference, batch.frame, total.min(1 << 16))
        {
            if batch.kind == BatchKind::NodeColumns {
                let sizes: Vec<u32> = items.iter().map(|it| it.size).collect();
                if let Ok(rows) = from_columns(&nodes, &sizes) {
                    // Taken apart again, the nodes give the same columns.
                    assert_eq!(to_columns(&rows, &sizes).ok().as_ref(), Some(&nodes));
                    nodes = rows;
                }
            }
            let mut at = 0usize;
            for it in &items {
                let Some(node) = nodes.get(at..at + it.size as usize) else {
                    break;
                };
                at += it.size as usize;
                if batch.kind.carries_nodes() {
                    let _ = fill_children(node, |_| Some(NodeId([7; 32])));
                }
            }
        }
    }
    for frame in recs
        .iter()
        .filter_map(|r| DeltaRecord::decode(r).ok().map(|(_, f)| f))
        .chain(lone)
    {
        let _ = pulpdist_chunker::delta::decode(&reference, frame, 1 << 16);
        let _ = pulpdist_chunker::delta::decode(&[], frame, 1 << 16);
    }
});
