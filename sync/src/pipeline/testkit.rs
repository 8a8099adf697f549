//! What the phases' unit tests share: a store in memory, a state directory, signed heads,
//! index nodes and chunks.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use pulpdist_format::{
    ChunkId, ChunkParams, ChunkRef, Codec, Entry, EntryKind, Head, Location, Mtime, Name, Node,
    NodeRef, PackId, SecretKey, TrustedKeys, VersionPacks,
};

use super::SyncOptions;
use crate::error::SyncError;
use crate::state::{Access, State};
use crate::store::{HeadFetch, StoreReader};

/// A store in memory: heads with tags, and packs as plain bytes.
#[derive(Default)]
pub(super) struct MemStore {
    pub(super) heads: Mutex<HashMap<String, (Vec<u8>, String)>>,
    pub(super) packs: HashMap<PackId, Vec<u8>>,
    /// Answer 304 whatever is asked (a broken store).
    pub(super) always_304: bool,
    /// The tag each head request carried.
    pub(super) asked: Mutex<Vec<Option<String>>>,
    /// Ranges cost no more than whole packs (as a directory store).
    pub(super) cheap: bool,
    /// The length of every range or pack read.
    pub(super) reads: Mutex<Vec<u64>>,
}

impl StoreReader for MemStore {
    fn describe(&self) -> String {
        "mem:".into()
    }
    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        let tag = if_none_match.map(str::to_string);
        self.asked.lock().expect("asked").push(tag);
        if self.always_304 {
            return Ok(HeadFetch::NotModified);
        }
        let heads = self.heads.lock().expect("heads");
        Ok(match heads.get(tree) {
            None => HeadFetch::Missing,
            Some((_, tag)) if Some(tag.as_str()) == if_none_match => HeadFetch::NotModified,
            Some((bytes, tag)) => HeadFetch::Found {
                bytes: bytes.clone(),
                etag: Some(tag.clone()),
            },
        })
    }
    fn cheap_ranges(&self) -> bool {
        self.cheap
    }
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        self.reads
            .lock()
            .expect("reads")
            .push(range.end - range.start);
        let p = self.pack(pack)?;
        let end = (range.end as usize).min(p.len());
        Ok(p.get(range.start as usize..end)
            .unwrap_or_default()
            .to_vec())
    }
    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        self.reads.lock().expect("reads").push(size);
        self.pack(pack).cloned()
    }
}

impl MemStore {
    fn pack(&self, pack: &PackId) -> Result<&Vec<u8>, SyncError> {
        self.packs.get(pack).ok_or_else(|| SyncError::NotFound {
            store: self.describe(),
            object: pack.object_key(),
        })
    }

    /// Publishes `head` (signed by [`key`]) with tag `tag`.
    pub(super) fn set_head(&self, head: &Head, tag: &str) {
        let bytes = head.sign(&key()).expect("a valid head");
        let mut heads = self.heads.lock().expect("heads");
        heads.insert(head.tree.clone(), (bytes, tag.to_string()));
    }
}

pub(super) fn key() -> SecretKey {
    SecretKey::from_seed([3; 32])
}

/// Options for tree `t` into `root/mirror`, state in `root/state`, trusting [`key`].
pub(super) fn options(root: &Path) -> SyncOptions {
    let trusted = TrustedKeys::new(vec![key().public()]);
    let mut o = SyncOptions::new("t", root.join("mirror"), trusted);
    o.state_dir = Some(root.join("state"));
    o.now = Some(1_000);
    o
}

/// The mirror of `opts`, locked as a sync locks it (made if missing).
pub(super) fn mirror(opts: &SyncOptions) -> crate::state::Mirror {
    crate::state::lock_mirror(&opts.dest, false, std::time::Duration::ZERO)
        .expect("lock")
        .expect("a mirror")
}

pub(super) fn state(root: &Path) -> State {
    let wait = std::time::Duration::ZERO;
    State::open(&root.join("state"), Access::Write { wait }).expect("a state directory")
}

/// Where a node or chunk `n` would be stored (not read by these tests unless a pack holds it).
pub(super) fn loc(n: u8, len: u32) -> Location {
    Location {
        pack: PackId([n; 32]),
        offset: 0,
        stored_len: len,
        raw_len: len,
        codec: Codec::Raw,
    }
}

pub(super) fn mtime(secs: i64) -> Mtime {
    Mtime { secs, nanos: 0 }
}

/// A file entry of one chunk holding `data`, stored raw at `offset` of pack `[1; 32]`.
pub(super) fn file(name: &str, data: &[u8], offset: u64) -> Entry {
    let chunk = ChunkRef {
        id: ChunkId::of(data),
        loc: Location {
            offset,
            ..loc(1, data.len() as u32)
        },
    };
    Entry {
        name: Name::new(name.as_bytes().to_vec()).expect("name"),
        mode: 0o644,
        mtime: mtime(100),
        kind: EntryKind::File {
            size: data.len() as u64,
            chunks: vec![chunk],
        },
    }
}

pub(super) fn dir(name: &str, node: &Node) -> Entry {
    Entry {
        name: Name::new(name.as_bytes().to_vec()).expect("name"),
        mode: 0o755,
        mtime: mtime(100),
        kind: EntryKind::Dir {
            node: NodeRef {
                id: node.id(),
                loc: loc(2, 1),
            },
        },
    }
}

/// A node, put into the state's node cache.
pub(super) fn cached(state: &State, entries: Vec<Entry>) -> Node {
    let node = Node::new(entries).expect("a valid node");
    state.put_node(&node.id(), &node.encode()).expect("cached");
    node
}

/// A head of tree `t` at `version` with root `root`, valid from 0 to 86,400.
pub(super) fn head(version: u64, root: &Node) -> Head {
    Head {
        tree: "t".into(),
        version,
        created: 0,
        expires: 86_400,
        root: NodeRef {
            id: root.id(),
            loc: loc(2, 1),
        },
        params: ChunkParams::DEFAULT,
        recent: vec![VersionPacks {
            version,
            packs: Vec::new(),
        }],
        extensions: Vec::new(),
    }
}
