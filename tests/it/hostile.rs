//! A validly signed head whose index names hostile paths: refused, nothing written.

use crate::common;

use std::fs;

use common::*;
use pulpdist_format::pack::{ObjectKind, PackBuilder};
use pulpdist_format::{
    chunk_list_hash, ChunkId, ChunkParams, ChunkRef, Codec, Entry, EntryKind, Head, Location,
    Mtime, Name, Node, NodeId, NodeRef, PackId, PackInfo, PackKind, Part, SecretKey, VersionPacks,
};

/// An index pack written by hand, as an attacker holding the signing pipeline would: node
/// encodings added one by one (children first), then a head naming the root, signed with
/// the site's real key.
struct HandIndex {
    pack: PackId,
    builder: PackBuilder,
    out: Vec<u8>,
}

impl HandIndex {
    fn new(tag: &[u8]) -> Self {
        let pack = PackId::derived(tag);
        let (builder, out) = PackBuilder::new(pack);
        HandIndex { pack, builder, out }
    }

    /// Adds a node's encoding; returns the reference a parent names it by.
    fn add(&mut self, bytes: &[u8]) -> NodeRef {
        let id = NodeId::of(bytes);
        let loc = self.builder.add(
            ObjectKind::Node,
            id.0,
            Codec::Raw,
            bytes.len() as u32,
            bytes.len() as u32,
        );
        self.out.extend_from_slice(bytes);
        NodeRef { id, loc }
    }

    /// Writes the pack and a head for `root` as `version` of tree `tree` into the store.
    fn publish(self, site: &Site, root: NodeRef, version: u64) {
        self.publish_for(site, root, version, 3600);
    }

    /// [`HandIndex::publish`] with a head valid for `lifetime` seconds.
    fn publish_for(self, site: &Site, root: NodeRef, version: u64, lifetime: i64) {
        let HandIndex {
            pack,
            builder,
            mut out,
        } = self;
        let (tail, size) = builder.finish();
        out.extend_from_slice(&tail);
        fs::write(site.store().join(pack.object_key()), &out).expect("pack");
        let key =
            SecretKey::from_text(&fs::read_to_string(site.key()).expect("key")).expect("parse key");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let head = Head {
            tree: "tree".into(),
            version,
            created: now,
            expires: now + lifetime,
            root,
            params: ChunkParams::DEFAULT,
            recent: vec![VersionPacks {
                version,
                packs: vec![PackInfo {
                    id: pack,
                    size,
                    kind: PackKind::Index,
                }],
            }],
            extensions: vec![],
        };
        fs::write(
            site.store().join("heads/tree"),
            head.sign(&key).expect("sign"),
        )
        .expect("head");
    }
}

fn dir_entry(name: &[u8], node: NodeRef) -> Entry {
    Entry {
        name: Name::new(name.to_vec()).expect("name"),
        mode: 0o755,
        mtime: Mtime::default(),
        kind: EntryKind::Dir { node },
    }
}

/// Writes a store object set whose root node has one entry named `evil` (patched into the
/// encoding after the fact), signed as version `version` with the site's real key.
fn plant(site: &Site, evil: &[u8; 2], version: u64) {
    let node = Node::new(vec![Entry {
        name: Name::new(b"xx".to_vec()).expect("name"),
        mode: 0o644,
        mtime: Mtime::default(),
        kind: EntryKind::Symlink {
            target: b"/etc/passwd".to_vec(),
        },
    }])
    .expect("node");
    let mut bytes = node.encode();
    let at = bytes
        .windows(2)
        .position(|w| w == b"xx")
        .expect("name in encoding");
    bytes[at..at + 2].copy_from_slice(evil);
    let mut index = HandIndex::new(evil);
    let root = index.add(&bytes);
    index.publish(site, root, version);
}

/// Regression: sync accepted a head valid for centuries (no freeze protection).
#[test]
fn a_head_valid_for_more_than_a_year_is_refused() {
    let site = Site::new();
    fs::write(site.src().join("good"), b"good").expect("write");
    site.publish();
    site.sync();
    let before = snapshot(&site.mirror());
    let mut index = HandIndex::new(b"forever");
    let root = index.add(&Node::new(Vec::new()).expect("empty").encode());
    index.publish_for(&site, root, 5, 100 * 365 * 86_400);
    let out = site.try_sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("at most 366 days"), "{err}");
    assert_eq!(before, snapshot(&site.mirror()));
}

/// Syncs `site` (under /usr/bin/time) and asserts the index is refused (exit 3, `needle` in
/// the message) with bounded memory and the mirror as it was.
fn assert_refused(
    site: &Site,
    before: &std::collections::BTreeMap<std::path::PathBuf, String>,
    needle: &str,
) {
    let out = bin_timed().args(site.sync_args()).output().expect("sync");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(peak_rss_kb(&err) < 256 * 1024, "{err}");
    assert_eq!(
        before,
        &snapshot(&site.mirror()),
        "{needle}: the mirror changed"
    );
}

/// Regression: a 6 kB index whose directory nodes all name the same child (10⁷ paths)
/// drove a sync past 3.6 GB; paths longer than PATH_MAX replaced a file with empty
/// directories and made every rerun fail. Both are refused before anything is written,
/// with bounded memory.
#[test]
fn index_bombs_are_refused_before_anything_is_written() {
    let site = Site::new();
    fs::write(site.src().join("good"), b"good").expect("write");
    site.publish();
    site.sync();
    let before = snapshot(&site.mirror());

    // Seven levels of ten directories, each level naming the one below ten times.
    let mut index = HandIndex::new(b"fanout");
    let leaf = Node::new(vec![Entry {
        name: Name::new(b"f".to_vec()).expect("name"),
        mode: 0o644,
        mtime: Mtime::default(),
        kind: EntryKind::Symlink {
            target: b"x".to_vec(),
        },
    }])
    .expect("leaf");
    let mut child = index.add(&leaf.encode());
    for _ in 0..7 {
        let names: Vec<Vec<u8>> = (0..10).map(|i| format!("d{i}").into_bytes()).collect();
        let node = Node::new(names.iter().map(|n| dir_entry(n, child)).collect()).expect("node");
        child = index.add(&node.encode());
    }
    index.publish(&site, child, 20);
    assert_refused(&site, &before, "repeated");

    // One wide directory of 50,000 entries, all the same empty directory, named forty
    // times: refused before two million paths are queued.
    let mut index = HandIndex::new(b"wide");
    let empty = index.add(&Node::new(Vec::new()).expect("empty").encode());
    let names: Vec<Vec<u8>> = (0..50_000)
        .map(|i| format!("w{i:06}").into_bytes())
        .collect();
    let wide = Node::new(names.iter().map(|n| dir_entry(n, empty)).collect()).expect("wide");
    let wide = index.add(&wide.encode());
    let names: Vec<Vec<u8>> = (0..40).map(|i| format!("c{i:02}").into_bytes()).collect();
    let root = Node::new(names.iter().map(|n| dir_entry(n, wide)).collect()).expect("root");
    let root = index.add(&root.encode());
    index.publish(&site, root, 22);
    assert_refused(&site, &before, "repeated");

    // Twenty nested directories of 250-byte names: paths past 4,095 bytes.
    let mut index = HandIndex::new(b"deep");
    let name = vec![b'x'; 250];
    let mut child = index.add(&leaf.encode());
    for _ in 0..20 {
        let node = Node::new(vec![dir_entry(&name, child)]).expect("node");
        child = index.add(&node.encode());
    }
    index.publish(&site, child, 23);
    let out = site.try_sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("longer than 4095"), "{err}");
    assert_eq!(
        before,
        snapshot(&site.mirror()),
        "the deep tree changed the mirror"
    );
}

#[test]
fn hostile_names_in_a_signed_index_are_refused_with_nothing_written() {
    let site = Site::new();
    fs::write(site.src().join("good"), b"good").expect("write");
    site.publish();
    site.sync();
    let before = snapshot(&site.mirror());
    let outside_before = snapshot(site.dir.path());
    for (i, evil) in [b"..", b"a/", b"/x", b"\0a", b".\0"].iter().enumerate() {
        plant(&site, evil, 10 + i as u64);
        let out = site.try_sync(&[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{evil:?}: {err}");
        assert!(
            err.contains("entry name") || err.contains("invalid"),
            "{err}"
        );
        assert_eq!(
            before,
            snapshot(&site.mirror()),
            "{evil:?} changed the mirror"
        );
    }
    // Nothing appeared anywhere else in the site's directory either (new packs aside).
    let after = snapshot(site.dir.path());
    for k in after.keys() {
        assert!(
            outside_before.contains_key(k)
                || k.starts_with("store/packs")
                || k.starts_with("downstream/.tree.pulpdist"),
            "{} appeared",
            k.display()
        );
    }
}

#[test]
fn same_version_with_another_root_is_refused_and_publisher_needs_the_trees_key() {
    let site = Site::new();
    fs::write(site.src().join("good"), b"good").expect("write");
    site.publish();
    site.sync();
    let before = snapshot(&site.mirror());
    // Equivocation: version 1 again, signed by the right key, with a different root.
    plant(&site, b"ok", 1);
    let out = site.try_sync(&[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("different root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(before, snapshot(&site.mirror()));
    // A publisher holding another key cannot take the tree over.
    let other = site.p("other.key");
    assert!(run(&["keygen", s(&other)]).status.success());
    let out = site.try_publish(&other, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("publish with the tree's key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A composite file (FORMAT.md 5.2, an image naming the tree's files) that names no plain
/// file of the tree, names one as another size, or resolves to other chunks than its
/// entry records: the signed tree is refused before anything is written.
#[test]
fn a_composite_file_naming_what_the_tree_does_not_hold_is_refused() {
    let site = Site::new();
    fs::write(site.src().join("a.txt"), b"first version\n").expect("write");
    site.publish();
    site.sync();
    let before = snapshot(&site.mirror());
    let chunk = |b: u8| ChunkRef {
        id: ChunkId([b; 32]),
        loc: Location {
            pack: PackId([7; 32]),
            offset: 40,
            stored_len: 100,
            raw_len: 100,
            codec: Codec::Raw,
        },
    };
    let entry = |name: &[u8], kind| Entry {
        name: Name::new(name.to_vec()).expect("name"),
        mode: 0o644,
        mtime: Mtime::default(),
        kind,
    };
    let whole = [chunk(9), chunk(1), chunk(2)];
    let cases: [(&[u8], u64, bool, &str); 7] = [
        (b"q", 200, true, "not a plain file of the tree"),
        (b"sub/p", 200, true, "not a plain file of the tree"),
        // Itself (a composite file), a directory, a path through a symlink.
        (b"img", 200, true, "not a plain file of the tree"),
        (b"d", 200, true, "not a plain file of the tree"),
        (b"l/p", 200, true, "not a plain file of the tree"),
        (b"p", 100, true, "as 100 bytes; it has 200"),
        (b"p", 200, false, "other chunks than it records"),
    ];
    for (i, (path, size, hash_ok, needle)) in cases.into_iter().enumerate() {
        let image = EntryKind::Composite {
            size: 100 + size,
            chunk_hash: match hash_ok {
                true => chunk_list_hash(whole.iter().map(|c| &c.id)),
                false => [0; 32],
            },
            parts: vec![
                Part::Chunks(vec![chunk(9)]),
                Part::File {
                    path: path.to_vec(),
                    size,
                },
            ],
        };
        let plain = EntryKind::File {
            size: 200,
            chunks: vec![chunk(1), chunk(2)],
        };
        let mut index = HandIndex::new(format!("composite {i}").as_bytes());
        let d = index.add(&Node::default().encode());
        let link = EntryKind::Symlink {
            target: b".".to_vec(),
        };
        let root = Node::new(vec![
            entry(b"p", plain),
            entry(b"img", image),
            dir_entry(b"d", d),
            entry(b"l", link),
        ])
        .expect("node");
        let r = index.add(&root.encode());
        index.publish(&site, r, 2 + i as u64);
        assert_refused(&site, &before, needle);
        // `verify --store` reports the same, as a problem of that node.
        let out = run(&[
            "verify",
            "--store",
            s(&site.store()),
            "--trust",
            &site.trust(),
            "--json",
            "--progress",
            "none",
        ]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{report}");
        assert!(report.contains(needle), "{report}");
    }
}
