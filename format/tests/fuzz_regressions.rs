//! Replays the inputs kept in fuzz/regressions/ (crashes the fuzzers found, and hand-made
//! hostile inputs) through the same decoders the fuzz targets drive: each must be refused
//! with an error, never a panic.

use std::path::Path;

use pulpdist_format::pack::{decode_footer, decode_header, decode_trailer, FOOTER_LEN};
use pulpdist_format::{Head, SignedHead, TrustedKeys};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("entry").path();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

#[test]
fn hostile_heads_are_refused() {
    let keys = TrustedKeys::from_text(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/golden.key.pub"),
        )
        .expect("golden key"),
    )
    .expect("keys");
    for (name, data) in inputs("head") {
        let verified = SignedHead::decode_and_verify(&data, &keys);
        assert!(verified.is_err(), "{name} was accepted");
        let _ = Head::decode_unverified(&data);
    }
}

#[test]
fn hostile_packs_are_refused() {
    for (name, data) in inputs("pack") {
        let size = data.len() as u64;
        let footer = &data[data.len().saturating_sub(FOOTER_LEN as usize)..];
        let refused = match decode_footer(footer, size) {
            Err(_) => true,
            Ok(range) => {
                let body = &data[range.start as usize..range.end as usize];
                let id = decode_header(&data).expect("header");
                decode_trailer(id, body, range.start).is_err()
            }
        };
        assert!(refused, "{name} was accepted");
    }
}

/// Node encodings the `node` fuzz target found: each is refused, or decodes to a node that
/// encodes back to exactly those bytes (one encoding per node, so one id per directory).
#[test]
fn node_encodings_are_refused_or_canonical() {
    for (name, data) in inputs("node") {
        if let Ok(node) = pulpdist_format::Node::decode(&data) {
            let again = node.encode();
            let at = again.iter().zip(&data).position(|(a, b)| a != b);
            assert_eq!(
                again,
                data,
                "{name}: accepted, not canonical (first difference at {at:?}, lengths {} and {})",
                again.len(),
                data.len()
            );
        }
    }
}
