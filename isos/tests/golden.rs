//! Golden vector of the image template format (docs/FORMAT.md, "Image templates"): a fixed
//! input gives these exact bytes, and they decode to the same template. Regenerate with
//! PULPDIST_REGEN_GOLDEN=1 after a deliberate format change.

use std::path::Path;

use pulpdist_chunker::Chunker;
use pulpdist_format::ChunkParams;
use pulpdist_isos::template::{Entry, Template};

#[test]
#[allow(clippy::single_range_in_vec_init)]
fn golden_template() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("img");
    let mut data = vec![0u8; 200_000];
    blake3::Hasher::new()
        .update(b"golden image")
        .finalize_xof()
        .fill(&mut data);
    // "Metadata": compressible text at the start and the end.
    for (i, b) in data[..20_000].iter_mut().enumerate() {
        *b = b"volume descriptor "[i % 18];
    }
    std::fs::write(&img, &data).expect("write");
    let chunker = Chunker::new(ChunkParams::DEFAULT).expect("chunker");
    let t =
        Template::make(&img, &[20_000..180_000], &chunker, 3, &Default::default()).expect("make");
    let bytes = t.encode(3).expect("encode");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/golden.tpl");
    if std::env::var_os("PULPDIST_REGEN_GOLDEN").is_some() {
        std::fs::write(&golden, &bytes).expect("write golden");
    }
    let expected = std::fs::read(&golden).expect("golden template");
    assert!(
        bytes == expected,
        "the template encoding changed; see docs/FORMAT.md"
    );
    let d = Template::decode(&expected).expect("decode");
    assert_eq!(d, t);
    assert_eq!(d.size, 200_000);
    assert_eq!(d.hash, *blake3::hash(&data).as_bytes());
    assert!(matches!(d.entries[0], Entry::Literal { .. }));
    assert!(d.entries.iter().any(|e| matches!(e, Entry::File { .. })));
}
