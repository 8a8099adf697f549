//! A valid, signed index built from fuzz input: nodes whose directory entries point to
//! earlier nodes (so any shape the format allows: repeated children, long names, wide and
//! deep trees), raw in one pack, the last node the root.

use pulpdist_format::pack::{ObjectKind, PackBuilder};
use pulpdist_format::{
    ChunkParams, Codec, Entry, EntryKind, Head, Mtime, Name, Node, NodeId, NodeRef, PackId,
    PackInfo, PackKind, Part, SecretKey, VersionPacks,
};

pub struct Built {
    pub pack_id: PackId,
    pub pack: Vec<u8>,
    pub head: Vec<u8>,
    pub key: SecretKey,
}

pub fn build(data: &[u8]) -> Option<Built> {
    let mut it = data.iter().copied();
    let mut byte = move || it.next();
    let pack_id = PackId::derived(b"fuzz index");
    let (mut b, mut out) = PackBuilder::new(pack_id);
    let mut refs: Vec<NodeRef> = Vec::new();
    let nodes = usize::from(byte()? % 24) + 1;
    for _ in 0..nodes {
        let count = usize::from(byte().unwrap_or(0));
        let mut entries: Vec<Entry> = Vec::new();
        for k in 0..count {
            let Some(sel) = byte() else { break };
            // A name: `len` copies of a byte (long names, up to 255 bytes), or a short one.
            let name = if sel & 0x80 != 0 {
                vec![b'a' + (sel % 26); usize::from(byte().unwrap_or(1)).max(1)]
            } else {
                format!("n{k}-{sel}").into_bytes()
            };
            let Ok(name) = Name::new(name) else { continue };
            if entries.iter().any(|e| e.name == name) {
                continue;
            }
            let kind = match (sel % 3, refs.is_empty()) {
                (0, false) => EntryKind::Dir {
                    node: refs[usize::from(byte().unwrap_or(0)) % refs.len()],
                },
                (1, _) => EntryKind::Symlink {
                    target: b"t".to_vec(),
                },
                // A composite file naming a path of one or two names (FORMAT.md 5.2): the
                // files here are empty, so it never resolves; the walk to it is what runs.
                (2, _) if sel & 0x40 != 0 => {
                    let mut path = format!("n{}-{}", byte().unwrap_or(0) % 8, byte().unwrap_or(0));
                    if byte().unwrap_or(0) & 1 == 1 {
                        path = format!("n{}-{}/{path}", byte().unwrap_or(0) % 8, byte().unwrap_or(0));
                    }
                    let size = u64::from(byte().unwrap_or(0)) + 1;
                    EntryKind::Composite {
                        size,
                        chunk_hash: [0; 32],
                        parts: vec![Part::File {
                            path: path.into_bytes(),
                            size,
                        }],
                    }
                }
                _ => EntryKind::File {
                    size: 0,
                    chunks: Vec::new(),
                },
            };
            entries.push(Entry {
                name,
                mode: 0o755,
                mtime: Mtime::default(),
                kind,
            });
        }
        let node = Node::new(entries).ok()?;
        let bytes = node.encode();
        let id = NodeId::of(&bytes);
        let loc = b.add(
            ObjectKind::Node,
            id.0,
            Codec::Raw,
            bytes.len() as u32,
            bytes.len() as u32,
        );
        out.extend_from_slice(&bytes);
        refs.push(NodeRef { id, loc });
    }
    let (tail, size) = b.finish();
    out.extend_from_slice(&tail);
    let key = SecretKey::from_seed([7; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    let head = Head {
        tree: "t".into(),
        version: 1,
        created: now,
        expires: now + 3600,
        root: *refs.last()?,
        params: ChunkParams::DEFAULT,
        recent: vec![VersionPacks {
            version: 1,
            packs: vec![PackInfo {
                id: pack_id,
                size,
                kind: PackKind::Index,
            }],
        }],
        extensions: Vec::new(),
    }
    .sign(&key)
    .ok()?;
    Some(Built {
        pack_id,
        pack: out,
        head,
        key,
    })
}
