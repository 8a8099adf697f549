//! Fetching given chunks of a tree, without a mirror: verify the head, walk the signed
//! index until every wanted chunk, and every wanted file named by its chunk list's hash, is
//! located, then fetch and verify those chunks (byte ranges of their packs, nearby ones
//! merged). For rebuilding files, such as ISO images, outside a mirror.

use std::collections::{HashMap, HashSet};

use pulpdist_format::{
    chunk_list_hash, ChunkId, ChunkRef, EntryKind, PackId, SignedHead, TrustedKeys, VerifiedChunk,
};

use crate::error::SyncError;
use crate::store::{HeadFetch, StoreReader};

/// What [`fetch_chunks`] looks for in a tree.
pub struct Wanted<'a> {
    /// Chunks, by id.
    pub chunks: &'a HashSet<ChunkId>,
    /// Files, by the BLAKE3 of their chunk ids concatenated (FORMAT.md 5.2's `chunk_hash`):
    /// each resolves to the chunk list of a plain file of the tree that hashes to it.
    pub files: &'a HashSet<[u8; 32]>,
}

/// What [`fetch_chunks`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// The ids handed to `put`.
    pub chunks: HashSet<ChunkId>,
    /// The wanted files the tree holds: their chunks (id, length) in order.
    pub files: HashMap<[u8; 32], Vec<(ChunkId, u32)>>,
}

/// Fetches the chunks in `wanted.chunks` that tree `tree` of `store` holds, and those of
/// the files in `wanted.files` that `have` does not say are at hand, and hands each to
/// `put`, verified, as it arrives (so that memory holds one merged range, not every chunk).
/// Chunks and files the tree does not hold are not in the result.
pub fn fetch_chunks(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
    wanted: Wanted<'_>,
    have: &dyn Fn(&ChunkId) -> bool,
    max_gap: u64,
    put: &mut dyn FnMut(VerifiedChunk) -> Result<(), SyncError>,
) -> Result<Found, SyncError> {
    let head = verified_head(store, tree, trusted)?;
    let sizes = head.recent.iter().flat_map(|v| v.packs.iter());
    store.expect_sizes(&sizes.map(|p| (p.id, p.size)).collect());
    let (mut found, files) = locate(store, head.root, &wanted)?;
    for c in files.values().flatten() {
        if !have(&c.id) {
            found.entry(c.id).or_insert(*c);
        }
    }
    let mut by_pack: HashMap<PackId, Vec<ChunkRef>> = HashMap::new();
    for c in found.values() {
        by_pack.entry(c.loc.pack).or_default().push(*c);
    }
    let mut out = Found {
        files: files
            .into_iter()
            .map(|(h, refs)| (h, refs.iter().map(|c| (c.id, c.loc.raw_len)).collect()))
            .collect(),
        ..Found::default()
    };
    for (pack, chunks) in by_pack {
        let ranges =
            crate::ranges::coalesce(chunks.iter().map(|c| c.loc.range()).collect(), max_gap);
        for range in ranges {
            let buf = store.get_range(&pack, range.clone())?;
            for c in chunks
                .iter()
                .filter(|c| range.start <= c.loc.offset && c.loc.range().end <= range.end)
            {
                let stored =
                    crate::pipeline::walk::slice(&buf, range.start, c.loc.range(), store, &pack)?;
                let chunk = VerifiedChunk::from_stored(c.id, c.loc.codec, stored, c.loc.raw_len)
                    .map_err(|source| SyncError::Format {
                        object: format!("chunk {} in {}", c.id, pack.object_key()),
                        source,
                    })?;
                out.chunks.insert(c.id);
                put(chunk)?;
            }
        }
    }
    Ok(out)
}

/// The tree's head, signed by a trusted key and naming the tree.
fn verified_head(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
) -> Result<pulpdist_format::Head, SyncError> {
    let bytes = match store.get_head(tree, None)? {
        HeadFetch::Found { bytes, .. } => bytes,
        _ => {
            return Err(SyncError::NoSuchTree {
                store: store.describe(),
                tree: tree.into(),
            })
        }
    };
    let object = format!("{}/heads/{tree}", store.describe());
    let signed = SignedHead::decode_and_verify(&bytes, trusted)
        .map_err(|source| SyncError::Format { object, source })?;
    let head = signed.head().clone();
    if head.tree != tree {
        return Err(SyncError::WrongTree {
            asked: tree.into(),
            found: head.tree,
        });
    }
    Ok(head)
}

/// Where each located chunk is stored, and each located file's chunks.
type Located = (HashMap<ChunkId, ChunkRef>, HashMap<[u8; 32], Vec<ChunkRef>>);

/// Walks the index from `root` until every chunk and file in `wanted` is located (or the
/// tree is walked through): where each chunk that the tree holds is stored, and the chunk
/// list of each wanted file it holds.
fn locate(
    store: &dyn StoreReader,
    root: pulpdist_format::NodeRef,
    wanted: &Wanted<'_>,
) -> Result<Located, SyncError> {
    let mut found: HashMap<ChunkId, ChunkRef> = HashMap::new();
    let mut files: HashMap<[u8; 32], Vec<ChunkRef>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(r) = todo.pop() {
        if found.len() == wanted.chunks.len() && files.len() == wanted.files.len() {
            break;
        }
        if !seen.insert(r.id) {
            continue;
        }
        let stored = store.get_range(&r.loc.pack, r.loc.range())?;
        let node = r.open(&stored).map_err(|source| SyncError::Format {
            object: format!("index node {} in {}", r.id, r.loc.pack.object_key()),
            source,
        })?;
        for e in node.entries() {
            match &e.kind {
                EntryKind::Dir { node } => todo.push(*node),
                kind => {
                    for c in kind.own_chunks().filter(|c| wanted.chunks.contains(&c.id)) {
                        found.entry(c.id).or_insert(*c);
                    }
                    if let EntryKind::File { chunks, .. } = kind {
                        if !wanted.files.is_empty() && !chunks.is_empty() {
                            let hash = chunk_list_hash(chunks.iter().map(|c| &c.id));
                            if wanted.files.contains(&hash) {
                                files.entry(hash).or_insert_with(|| chunks.clone());
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((found, files))
}
