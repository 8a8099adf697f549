//! Golden vectors of the image template format (docs/FORMAT.md, "Image templates"): a fixed
//! input gives these exact bytes (version 2), and they decode to the same template; the
//! same image's version 1 template, as written before, still decodes. Regenerate with
//! PULPDIST_REGEN_GOLDEN=1 after a deliberate format change.

use std::path::Path;

use pulpdist_chunker::Chunker;
use pulpdist_format::ChunkParams;
use pulpdist_isos::template::{Entry, Template, MAGIC_V1};

/// The golden input image, and its template.
#[allow(clippy::single_range_in_vec_init)]
fn golden_input() -> (Vec<u8>, Template) {
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
    let t = Template::make(
        &img,
        &[20_000..180_000, 182_000..190_000],
        &chunker,
        &Default::default(),
    )
    .expect("make");
    (data, t)
}

#[test]
fn golden_template() {
    let (data, t) = golden_input();
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
    // The file's 160,000 bytes: one entry naming their chunk list.
    let regions: Vec<_> = d
        .entries
        .iter()
        .filter(|e| matches!(e, Entry::Region { .. }))
        .collect();
    assert_eq!(regions.len(), 1);
    assert_eq!(regions[0].len(), 160_000);
    // The second file, of one chunk: by id.
    assert!(d
        .entries
        .iter()
        .any(|e| matches!(e, Entry::File { len: 8_000, .. })));
}

/// Version 1 (every file chunk by id), as written before regions (of the same image, its
/// first file only): still read, as the same chunks.
#[test]
fn golden_template_version_1() {
    let (data, t) = golden_input();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/golden-v1.tpl");
    let v1 = std::fs::read(&golden).expect("golden template");
    assert_eq!(&v1[..8], MAGIC_V1);
    let d = Template::decode(&v1).expect("decode");
    assert_eq!((d.size, d.hash, d.params), (t.size, t.hash, t.params));
    assert_eq!(d.hash, *blake3::hash(&data).as_bytes());
    let ids: Vec<_> = d
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { id, len } => Some((*id, *len)),
            _ => None,
        })
        .collect();
    assert!(ids.len() >= 2, "{ids:?}");
    let list = pulpdist_format::chunk_list_hash(ids.iter().map(|(id, _)| id));
    assert!(
        t.entries
            .iter()
            .any(|e| matches!(e, Entry::Region { chunk_hash, .. } if *chunk_hash == list)),
        "version 2 names the chunks version 1 lists"
    );
}
