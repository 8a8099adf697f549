//! A delta pack as a client reads it: the pack's records, each record's fixed part, and
//! its frame decoded against a reference with the size bound the record claims (capped).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_format::delta::{decode_deltas, records, DeltaRecord};
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
    for frame in recs
        .iter()
        .filter_map(|r| DeltaRecord::decode(r).ok().map(|(_, f)| f))
        .chain(lone)
    {
        let _ = pulpdist_chunker::delta::decode(&reference, frame, 1 << 16);
        let _ = pulpdist_chunker::delta::decode(&[], frame, 1 << 16);
    }
});
