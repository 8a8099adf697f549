//! A delta pack as a client reads it: the pack's records, each record's fixed part, and
//! its frame decoded against a reference with the size bound the record claims (capped);
//! batches: the list decoded and parsed (for kind 4, its paths resolved), the items' frame
//! decoded (and put back together from its columns for kind 4), each node filled.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_format::delta::{
    decode_batch_list, decode_deltas, fill_children, from_columns, records, to_columns, Batch,
    BatchKind, DeltaRecord, NodeList,
};
use pulpdist_format::{Name, NodeId};
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
        // Kind 4: its list resolved against an old tree whose every directory has the
        // subdirectories `d0`, `d1`, ...; the frame put back together from its columns.
        if batch.kind == BatchKind::NodeColumns {
            let Ok(list) = NodeList::decode(&list, batch.count) else {
                continue;
            };
            // (Indices past 9 are not there.)
            let _ = list.paths(1 << 20, |_, index| {
                (index < 10).then(|| Name::new(format!("d{index}").into_bytes()).ok())?
            });
            let total = u64::from(list.nodes_size).min(1 << 16);
            if let Ok(columns) = pulpdist_chunker::delta::decode(&reference, batch.frame, total)
            {
                if let Ok((rows, sizes)) = from_columns(&columns, list.items.len()) {
                    // Taken apart again, the nodes give the same columns.
                    assert_eq!(to_columns(&rows, &sizes).ok().as_ref(), Some(&columns));
                    let mut at = 0usize;
                    for size in sizes {
                        let node = &rows[at..at + size as usize];
                        at += size as usize;
                        let _ = fill_children(node, |_| Some(NodeId([7; 32])));
                    }
                }
            }
            continue;
        }
        let Ok(items) = decode_batch_list(&list, batch.count, batch.kind) else {
            continue;
        };
        let total: u64 = items.iter().map(|it| u64::from(it.size)).sum();
        if let Ok(nodes) =
            pulpdist_chunker::delta::decode(&reference, batch.frame, total.min(1 << 16))
        {
            let mut at = 0usize;
            for it in &items {
                let Some(node) = nodes.get(at..at + it.size as usize) else {
                    break;
                };
                at += it.size as usize;
                if batch.kind == BatchKind::Nodes {
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
