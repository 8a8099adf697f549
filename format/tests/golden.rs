//! Decodes the checked-in golden store (docs/FORMAT.md, "Golden vectors") with nothing but
//! this crate: the head verifies, the index walks, every chunk verifies and the files
//! come out with the expected content. A decoder change that breaks old stores fails here.

use std::fs;
use std::path::{Path, PathBuf};

use pulpdist_format::pack::{decode_footer, decode_header, decode_trailer};
use pulpdist_format::{ChunkId, EntryKind, NodeRef, SignedHead, TrustedKeys, VerifiedChunk};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn pack_bytes(id: &pulpdist_format::PackId) -> Vec<u8> {
    fs::read(golden().join(id.object_key())).expect("pack in golden store")
}

fn node_at(r: &NodeRef) -> pulpdist_format::Node {
    let bytes = pack_bytes(&r.loc.pack);
    r.open(&bytes[r.loc.range().start as usize..r.loc.range().end as usize])
        .expect("node verifies")
}

fn file_content(chunks: &[pulpdist_format::ChunkRef]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let bytes = pack_bytes(&c.loc.pack);
        let stored = &bytes[c.loc.range().start as usize..c.loc.range().end as usize];
        out.extend(
            VerifiedChunk::from_stored(c.id, c.loc.codec, stored, c.loc.raw_len)
                .expect("chunk verifies")
                .into_data(),
        );
    }
    out
}

fn keys() -> TrustedKeys {
    TrustedKeys::from_text(&fs::read_to_string(golden().join("golden.key.pub")).expect("key"))
        .expect("parse")
}

/// A value from expected.txt.
fn want(k: &str) -> String {
    fs::read_to_string(golden().join("expected.txt"))
        .expect("expected")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{k} ")))
        .expect("key in expected.txt")
        .to_string()
}

#[test]
fn golden_store_decodes_and_verifies() {
    let keys = keys();
    let head_bytes = fs::read(golden().join("heads/golden")).expect("head");
    let head = SignedHead::decode_and_verify(&head_bytes, &keys).expect("head verifies");
    let h = head.head();
    // The filter the publisher applied, in the head's filter extension (FORMAT.md 5.4).
    let filter = h.filter().expect("filter decodes").expect("a filter");
    assert_eq!(filter.to_string(), "- *.tmp\n+ /sub/***\n");
    assert_eq!(h.tree, "golden");
    assert_eq!(h.version, 1);
    assert_eq!(h.created, 1_767_225_600);
    assert_eq!(h.params, pulpdist_format::ChunkParams::DEFAULT);
    assert_eq!(h.root.id.to_hex(), want("root"));
    assert_eq!(h.recent.len(), 1);

    // Every pack listed describes itself consistently.
    for p in &h.recent[0].packs {
        let bytes = pack_bytes(&p.id);
        assert_eq!(bytes.len() as u64, p.size);
        assert_eq!(decode_header(&bytes[..40]).expect("header"), p.id);
        let r = decode_footer(&bytes[bytes.len() - 16..], p.size).expect("footer");
        let entries = decode_trailer(p.id, &bytes[r.start as usize..r.end as usize], r.start)
            .expect("trailer");
        assert!(!entries.is_empty());
    }

    let root = node_at(&h.root);
    let names: Vec<String> = root.entries().iter().map(|e| e.name.to_string()).collect();
    assert_eq!(names, ["empty", "hello.txt", "sub"]);
    let hello = root.get(b"hello.txt").expect("hello");
    assert_eq!(hello.mode, 0o644);
    let EntryKind::File { chunks, size } = &hello.kind else {
        panic!("hello.txt is a file")
    };
    assert_eq!(*size, 14);
    assert_eq!(
        chunks[0].id,
        want("hello.txt").parse::<ChunkId>().expect("id")
    );
    assert_eq!(file_content(chunks), b"hello, mirror\n");

    let EntryKind::Dir { node } = &root.get(b"sub").expect("sub").kind else {
        panic!("sub is a dir")
    };
    let sub = node_at(node);
    let data = sub.get(b"data.bin").expect("data.bin");
    assert_eq!(data.mode, 0o600);
    let EntryKind::File { chunks, .. } = &data.kind else {
        panic!("file")
    };
    let mut expect = vec![0u8; 100_000];
    blake3::Hasher::new()
        .update(b"golden")
        .finalize_xof()
        .fill(&mut expect);
    assert_eq!(file_content(chunks), expect);
    assert!(
        matches!(&sub.get(b"link").expect("link").kind, EntryKind::Symlink { target } if target == b"../hello.txt")
    );
    assert!(
        matches!(&sub.get(b"empty-file").expect("empty").kind, EntryKind::File { size: 0, chunks } if chunks.is_empty())
    );
    let EntryKind::Dir { node } = &root.get(b"empty").expect("empty").kind else {
        panic!("dir")
    };
    assert!(node_at(node).entries().is_empty());
}

#[test]
fn corrupt_golden_copies_are_refused() {
    let keys = keys();
    let head_bytes = fs::read(golden().join("heads/golden")).expect("head");
    let h = SignedHead::decode_and_verify(&head_bytes, &keys)
        .expect("head")
        .head()
        .clone();
    let mut bytes = pack_bytes(&h.root.loc.pack);
    let r = h.root.loc.range();
    bytes[(r.start + 3) as usize] ^= 1;
    assert!(
        h.root
            .open(&bytes[r.start as usize..r.end as usize])
            .is_err(),
        "a flipped bit in the root node went unnoticed"
    );
}

/// Decodes a delta frame against its reference (FORMAT.md 5.6: zstd with the reference as
/// prefix), with nothing but the zstd library.
fn patch(reference: &[u8], frame: &[u8], size: u64) -> Vec<u8> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut d = DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(31))
        .expect("param");
    if !reference.is_empty() {
        d.ref_prefix(reference).expect("prefix");
    }
    let mut out: Vec<u8> = Vec::with_capacity(size as usize);
    d.decompress(&mut out, frame).expect("frame decodes");
    out
}

/// The node (with its encoding) of the directory at `path` under `root`.
fn dir_at(root: &NodeRef, path: &[pulpdist_format::Name]) -> (pulpdist_format::Node, Vec<u8>) {
    let mut r = *root;
    for name in path {
        let node = node_at(&r);
        r = match &node.get(name.as_bytes()).expect("dir on path").kind {
            EntryKind::Dir { node } => *node,
            _ => panic!("not a directory"),
        };
    }
    let bytes = pack_bytes(&r.loc.pack);
    r.open_with_bytes(&bytes[r.loc.range().start as usize..r.loc.range().end as usize])
        .expect("node verifies")
}

fn file_at(root: &NodeRef, path: &[pulpdist_format::Name]) -> Vec<u8> {
    let (dir, _) = dir_at(root, &path[..path.len() - 1]);
    match &dir.get(path[path.len() - 1].as_bytes()).expect("file").kind {
        EntryKind::File { chunks, .. } => file_content(chunks),
        _ => panic!("not a file"),
    }
}

/// Decodes a columnar node batch (FORMAT.md 5.6, kind 4) with plain zstd: its list, each
/// path resolved against version 1 (`pkgs/` is the root's first old subdirectory), then
/// its nodes against the old nodes it names taken apart into columns, put back together
/// and each compared with version 2's node once the zero ids of subdirectories the batch
/// carries are filled in. Returns the nodes.
fn check_node_batch(
    batch: &pulpdist_format::delta::Batch<'_>,
    from_root: &NodeRef,
    root: &NodeRef,
) -> u64 {
    use pulpdist_format::delta::{
        fill_children, from_columns, join_path, to_columns, BatchKind, NodeList, NodePath,
    };
    assert_eq!(batch.kind, BatchKind::NodeColumns);
    let list = patch(&[], batch.list_frame, u64::from(batch.list_size));
    assert_eq!(list.len(), batch.list_size as usize);
    let list = NodeList::decode(&list, batch.count).expect("list");
    assert_eq!(list.items[0].path, NodePath::Full(vec![]));
    assert_eq!(list.items[1].path, NodePath::OldSubdir { back: 1, skip: 0 });
    let (paths, _) = list
        .paths(u64::MAX, |p, index| {
            let subdirs: Vec<_> = dir_at(from_root, p)
                .0
                .entries()
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Dir { .. }))
                .map(|e| e.name.clone())
                .collect();
            subdirs.get(index as usize).cloned()
        })
        .expect("paths");
    let (mut rows, mut ref_sizes) = (Vec::new(), Vec::new());
    for (it, p) in list.items.iter().zip(&paths) {
        if it.reference {
            let old = dir_at(from_root, p).1;
            ref_sizes.push(old.len() as u32);
            rows.extend(old);
        }
    }
    let prefix = to_columns(&rows, &ref_sizes).expect("old nodes in columns");
    let columns = patch(&prefix, batch.frame, u64::from(list.nodes_size));
    assert_eq!(columns.len(), list.nodes_size as usize);
    let (data, sizes) = from_columns(&columns, paths.len()).expect("nodes from columns");
    let mut at = 0;
    let joined: Vec<Vec<u8>> = paths.iter().map(|p| join_path(p)).collect();
    let mut zeroed = 0;
    for (path, size) in paths.iter().zip(sizes) {
        let carried = &data[at..at + size as usize];
        at += size as usize;
        let (new_node, new) = dir_at(root, path);
        // Only the ids of subdirectories in the batch are zero.
        let filled = fill_children(carried, |name| {
            let mut p = path.clone();
            p.push(name.clone());
            assert!(joined.contains(&join_path(&p)), "{:?} zeroed", p);
            zeroed += 1;
            match &new_node.get(name.as_bytes()).expect("entry").kind {
                EntryKind::Dir { node } => Some(node.id),
                _ => None,
            }
        })
        .expect("node")
        .expect("filled");
        assert_eq!(filled, new, "node of {:?}", path);
    }
    assert_eq!(
        zeroed,
        paths.len() - 1,
        "every node but the root is a zeroed child"
    );
    paths.len() as u64
}

/// Decodes a file batch (FORMAT.md 5.6, kind 3) with plain zstd: its list, then its
/// files against the old files it names, each compared with version 2's file. Returns
/// each item's path and reference path.
fn check_file_batch(
    batch: &pulpdist_format::delta::Batch<'_>,
    from_root: &NodeRef,
    root: &NodeRef,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use pulpdist_format::delta::{decode_batch_list, join_path, BatchKind};
    let list = patch(&[], batch.list_frame, u64::from(batch.list_size));
    let items = decode_batch_list(&list, batch.count, BatchKind::Files).expect("list");
    let mut prefix = Vec::new();
    for it in &items {
        if let Some(p) = &it.reference {
            let old = file_at(from_root, p);
            assert_eq!(old.len(), it.ref_size as usize, "{p:?}");
            prefix.extend_from_slice(&old);
        }
    }
    let total: u64 = items.iter().map(|it| u64::from(it.size)).sum();
    let data = patch(&prefix, batch.frame, total);
    let mut at = 0;
    let mut out = Vec::new();
    for it in &items {
        let got = &data[at..at + it.size as usize];
        at += it.size as usize;
        assert_eq!(got, file_at(root, &it.path), "{:?}", it.path);
        out.push((join_path(&it.path), it.reference.as_deref().map(join_path)));
    }
    out
}

#[test]
fn golden_delta_pack_rebuilds_version_2_from_version_1() {
    use pulpdist_format::delta::{records, Batch, DeltaRecord, RecordKind};
    let keys = keys();
    let head_bytes = fs::read(golden().join("heads/golden-delta")).expect("head");
    let head = SignedHead::decode_and_verify(&head_bytes, &keys).expect("verifies");
    let h = head.head();
    assert_eq!(h.version, 2);
    assert_eq!(h.root.id.to_hex(), want("delta-root-2"));
    let deltas = h.deltas().expect("deltas extension decodes");
    assert_eq!(deltas.len(), 1);
    let d = deltas[0];
    assert_eq!(d.from_version, 1);
    assert_eq!(d.from_root.id.to_hex(), want("delta-root-1"));
    let pack = pack_bytes(&d.pack);
    d.verify(&pack).expect("size and hash as the head lists");
    let mut tampered = pack.clone();
    tampered[45] ^= 1;
    assert!(d.verify(&tampered).is_err());
    let mut files = Vec::new();
    let mut nodes = 0;
    let (mut file_batches, mut file_records) = (0, 0);
    for rec in records(d.pack, &pack).expect("delta pack") {
        match Batch::decode(rec).expect("record") {
            Some(b) if b.kind.carries_nodes() => {
                nodes += check_node_batch(&b, &d.from_root, &h.root);
                continue;
            }
            Some(b) => {
                files.extend(check_file_batch(&b, &d.from_root, &h.root));
                file_batches += 1;
                continue;
            }
            None => {}
        }
        let (r, frame) = DeltaRecord::decode(rec).expect("record");
        match r.kind {
            RecordKind::File => {
                file_records += 1;
                let reference = r
                    .reference
                    .as_ref()
                    .map(|p| file_at(&d.from_root, p))
                    .unwrap_or_default();
                assert_eq!(reference.len() as u64, r.ref_size);
                let got = patch(&reference, frame, r.size);
                assert_eq!(got, file_at(&h.root, &r.path), "{:?}", r.path);
                files.push((
                    pulpdist_format::delta::join_path(&r.path),
                    r.reference.map(|p| pulpdist_format::delta::join_path(&p)),
                ));
            }
            RecordKind::Node => {
                let reference = r
                    .reference
                    .as_ref()
                    .map(|p| dir_at(&d.from_root, p).1)
                    .unwrap_or_default();
                let got = patch(&reference, frame, r.size);
                let (_, new) = dir_at(&h.root, &r.path);
                assert_eq!(got, new, "node of {:?}", r.path);
                nodes += 1;
            }
        }
    }
    assert_eq!(nodes, 2, "the root and pkgs/");
    assert_eq!(
        (file_batches, file_records),
        (1, 0),
        "the small files travel as one batch"
    );
    files.sort();
    assert_eq!(
        files,
        [
            (b"a.txt".to_vec(), Some(b"a.txt".to_vec())),
            (b"new.txt".to_vec(), None),
            (
                b"pkgs/tool_1.1_all.deb".to_vec(),
                Some(b"pkgs/tool_1.0_all.deb".to_vec())
            ),
        ]
    );
}

/// The `node` and `delta` fuzz targets start from real encodings: every index node of the
/// golden store (plain) and its delta pack. This checks the seeds are those objects, so a
/// format change that leaves them stale fails here; `PULPDIST_WRITE_FUZZ_SEEDS=1` rewrites
/// them from the golden store.
/// Data and delta packs are named by their content (FORMAT.md 3): BLAKE3, keyed
/// "pulpdist 2026 pack name", of the pack with its header's id zeroed. (An index pack's
/// name comes from a build with the zero id in its own nodes' locations too, which the
/// stored bytes do not give back.)
#[test]
fn golden_data_and_delta_packs_are_named_by_their_content() {
    let mut checked = 0;
    for tree in ["golden", "golden-delta"] {
        let head_bytes = fs::read(golden().join("heads").join(tree)).expect("head");
        let head = SignedHead::decode_and_verify(&head_bytes, &keys()).expect("head verifies");
        let data = head.head().recent.iter().flat_map(|v| v.packs.iter());
        let data = data.filter(|p| p.kind == pulpdist_format::PackKind::Data);
        let deltas = head.head().deltas().expect("deltas");
        for id in data.map(|p| p.id).chain(deltas.iter().map(|d| d.pack)) {
            let mut bytes = pack_bytes(&id);
            bytes[8..40].fill(0);
            let name = blake3::derive_key("pulpdist 2026 pack name", &bytes);
            assert_eq!(name, id.0, "pack {id}");
            checked += 1;
        }
    }
    // golden's data pack, golden-delta's two and its delta.
    assert_eq!(checked, 4);
}

#[test]
fn fuzz_seeds_are_golden_objects() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let keys = keys();
    let mut nodes: Vec<(String, Vec<u8>)> = Vec::new();
    let mut deltas: Vec<(String, Vec<u8>)> = Vec::new();
    for tree in ["golden", "golden-delta"] {
        let head_bytes = fs::read(golden().join("heads").join(tree)).expect("head");
        let head = SignedHead::decode_and_verify(&head_bytes, &keys).expect("head verifies");
        let mut todo = vec![head.head().root];
        while let Some(r) = todo.pop() {
            let node = node_at(&r);
            for e in node.entries() {
                if let EntryKind::Dir { node } = &e.kind {
                    todo.push(*node);
                }
            }
            nodes.push((r.id.to_hex(), node.encode()));
        }
        for d in head.head().deltas().expect("deltas") {
            deltas.push((d.pack.to_hex(), pack_bytes(&d.pack)));
        }
    }
    assert!(nodes.len() >= 4 && !deltas.is_empty());
    let write = std::env::var_os("PULPDIST_WRITE_FUZZ_SEEDS").is_some();
    for (dir, objects) in [("node", &nodes), ("delta", &deltas)] {
        for (name, bytes) in objects {
            let path = seeds.join(dir).join(name);
            if write {
                fs::create_dir_all(seeds.join(dir)).expect("seed dir");
                fs::write(&path, bytes).expect("write seed");
            }
            assert_eq!(
                fs::read(&path).ok().as_ref(),
                Some(bytes),
                "{} is not the golden object (PULPDIST_WRITE_FUZZ_SEEDS=1 rewrites it)",
                path.display()
            );
        }
    }
}

/// Archived heads (FORMAT.md section 2): `history/<tree>/<version, 20 digits>` holds each
/// version's head exactly as signed; the newest is the current head.
#[test]
fn golden_history_holds_every_version_as_signed() {
    use pulpdist_format::{history_key, history_version};
    assert_eq!(
        history_key("debian", 7),
        "history/debian/00000000000000000007"
    );
    assert_eq!(history_version("00000000000000000007"), Some(7));
    assert_eq!(history_version("7"), None);
    for (tree, versions) in [("golden", 1u64), ("golden-delta", 2)] {
        for v in 1..=versions {
            let bytes = fs::read(golden().join(history_key(tree, v))).expect("archived head");
            let h = SignedHead::decode_and_verify(&bytes, &keys()).expect("verifies");
            assert_eq!((h.head().tree.as_str(), h.head().version), (tree, v));
        }
        let current = fs::read(golden().join("heads").join(tree)).expect("head");
        let newest = fs::read(golden().join(history_key(tree, versions))).expect("newest");
        assert_eq!(current, newest);
    }
}

/// The condemned list (FORMAT.md 2 and 8.10): its text decodes to the packs and times it
/// names, and encodes back to the same bytes.
#[test]
fn golden_condemned_list_decodes_and_is_canonical() {
    use pulpdist_format::{Condemned, PackId, CONDEMNED_KEY};
    let bytes = fs::read(golden().join(CONDEMNED_KEY)).expect("condemned list");
    let list = Condemned::decode(&bytes).expect("decodes");
    let mut one = [0u8; 32];
    one[31] = 1;
    let want: Vec<(PackId, i64)> = vec![
        (PackId(one), 1_767_225_600),
        (PackId([0xab; 32]), 1_767_312_000),
    ];
    assert_eq!(list.packs.into_iter().collect::<Vec<_>>(), want);
    let again = Condemned::decode(&bytes).expect("decodes").encode();
    assert_eq!(again, bytes);
}

/// The composite file of FORMAT.md 5.2 (entry kind 4), as fixed bytes: a directory with a
/// plain file `p` and an image `img` made of a chunk, `d/p` and the chunk again. The
/// encoding is exact (no compression is involved), so it is compared byte for byte.
#[test]
fn golden_composite_node_decodes_resolves_and_re_encodes() {
    use pulpdist_format::{
        chunk_list_hash, ChunkId, ChunkRef, Codec, Entry, Location, Mtime, Name, Node, PackId, Part,
    };
    let chunk = |b: u8, len: u32| ChunkRef {
        id: ChunkId([b; 32]),
        loc: Location {
            pack: PackId([b; 32]),
            offset: 40,
            stored_len: len,
            raw_len: len,
            codec: Codec::Raw,
        },
    };
    let p = vec![chunk(1, 100), chunk(2, 50)];
    let whole = [chunk(9, 10), p[0], p[1], chunk(9, 10)];
    let entry = |name: &[u8], kind| Entry {
        name: Name::new(name.to_vec()).expect("name"),
        mode: 0o644,
        mtime: Mtime {
            secs: 1_767_225_600,
            nanos: 0,
        },
        kind,
    };
    let node = Node::new(vec![
        entry(
            b"p",
            EntryKind::File {
                size: 150,
                chunks: p,
            },
        ),
        entry(
            b"img",
            EntryKind::Composite {
                size: 170,
                chunk_hash: chunk_list_hash(whole.iter().map(|c| &c.id)),
                parts: vec![
                    Part::Chunks(vec![chunk(9, 10)]),
                    Part::File {
                        path: b"d/p".to_vec(),
                        size: 150,
                    },
                    Part::Chunks(vec![chunk(9, 10)]),
                ],
            },
        ),
    ])
    .expect("node");
    if std::env::var_os("PULPDIST_REGEN_GOLDEN").is_some() {
        fs::write(golden().join("composite.node"), node.encode()).expect("write");
        eprintln!("composite-node {}", node.id().to_hex());
    }
    let bytes = fs::read(golden().join("composite.node")).expect("composite.node");
    assert_eq!(node.encode(), bytes, "composite.node");
    let decoded = Node::decode(&bytes).expect("decode");
    assert_eq!(decoded, node);
    assert_eq!(
        pulpdist_format::NodeId::of(&bytes).to_hex(),
        want("composite-node")
    );
    let resolved = decoded
        .resolve(|path| {
            Ok::<_, ()>(match path {
                b"d/p" => Some(vec![chunk(1, 100), chunk(2, 50)]),
                _ => None,
            })
        })
        .expect("lookup")
        .expect("resolves");
    let Some(EntryKind::File { size: 170, chunks }) = resolved.get(b"img").map(|e| &e.kind) else {
        panic!("not resolved");
    };
    assert_eq!(chunks.as_slice(), &whole[..]);
}

/// An own-chunk batch (FORMAT.md 5.6, kind 5), as fixed bytes: the old image
/// `own-chunks.old.img` holds an own chunk (0..200), a package of the tree (a file part,
/// 200..204) and another own chunk (204..404); the new image's own chunks differ from them
/// in a byte each. The record's one item, `cd/img`, rebuilds them from the old image's own
/// chunks, read where the old entry puts them; each must hash to the id `expected.txt`
/// gives. Decoded with plain zstd.
#[test]
fn golden_own_chunk_batch_rebuilds_an_images_own_chunks_from_the_old_image() {
    use pulpdist_format::delta::{decode_batch_list, join_path, Batch, BatchItem, BatchKind};
    let dir = golden().join("own-chunks");
    if std::env::var_os("PULPDIST_REGEN_GOLDEN").is_some() {
        let own = |tag: u8, n: u8| -> Vec<u8> {
            let mut c: Vec<u8> = (0..200u32)
                .map(|i| (i * 7 + u32::from(tag)) as u8)
                .collect();
            c[100] = n;
            c
        };
        let (old, new) = ([own(1, 1), own(2, 1)], [own(1, 2), own(2, 2)]);
        let name = |s: &str| pulpdist_format::Name::new(s.as_bytes().to_vec()).expect("name");
        let items = [BatchItem {
            path: vec![name("cd"), name("img")],
            reference: Some(vec![name("cd"), name("img")]),
            size: 400,
            ref_size: 400,
        }];
        let list = pulpdist_format::delta::encode_batch_list(&items);
        let compress = |prefix: &[u8], data: &[u8]| {
            use zstd::zstd_safe::{CCtx, CParameter};
            let mut c = CCtx::create();
            c.set_parameter(CParameter::CompressionLevel(19))
                .expect("level");
            if !prefix.is_empty() {
                c.ref_prefix(prefix).expect("prefix");
            }
            let mut out: Vec<u8> = Vec::with_capacity(data.len() + 64);
            c.compress2(&mut out, data).expect("compress");
            out
        };
        let record = Batch {
            kind: BatchKind::OwnChunks,
            count: 1,
            list_size: list.len() as u32,
            list_frame: &compress(&[], &list),
            frame: &compress(&old.concat(), &new.concat()),
        }
        .encode();
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("record"), record).expect("record");
        fs::write(
            dir.join("old.img"),
            [&old[0][..], b"pkg1", &old[1]].concat(),
        )
        .expect("old image");
        for (i, c) in new.iter().enumerate() {
            eprintln!("own-chunk-{} {}", i + 1, blake3::hash(c).to_hex());
        }
    }
    let record = fs::read(dir.join("record")).expect("record");
    let batch = Batch::decode(&record).expect("decodes").expect("a batch");
    assert_eq!(batch.kind, BatchKind::OwnChunks);
    let list = patch(&[], batch.list_frame, u64::from(batch.list_size));
    let items = decode_batch_list(&list, batch.count, batch.kind).expect("list");
    assert_eq!(items.len(), 1);
    assert_eq!(join_path(&items[0].path), b"cd/img");
    assert_eq!(items[0].reference, Some(items[0].path.clone()));
    // The old entry's parts: an own chunk of 200 bytes, a file part of 4, another own chunk.
    let old_image = fs::read(dir.join("old.img")).expect("old image");
    let prefix = [&old_image[0..200], &old_image[204..404]].concat();
    assert_eq!(prefix.len(), items[0].ref_size as usize);
    let own = patch(&prefix, batch.frame, u64::from(items[0].size));
    assert_eq!(own.len(), 400);
    assert_eq!(
        blake3::hash(&own[..200]).to_hex().to_string(),
        want("own-chunk-1")
    );
    assert_eq!(
        blake3::hash(&own[200..]).to_hex().to_string(),
        want("own-chunk-2")
    );
}
