//! Fetching given chunks of a tree, without a mirror: verify the head, walk the signed
//! index until every wanted chunk is located, then fetch and verify those chunks (byte
//! ranges of their packs, nearby ones merged). For rebuilding files, such as ISO images,
//! outside a mirror.

use std::collections::{HashMap, HashSet};

use pulpdist_format::{
    ChunkId, ChunkRef, EntryKind, PackId, SignedHead, TrustedKeys, VerifiedChunk,
};

use crate::error::SyncError;
use crate::store::{HeadFetch, StoreReader};

/// Fetches the chunks in `wanted` that tree `tree` of `store` holds and hands each to
/// `put`, verified, as it arrives (so that memory holds one merged range, not every chunk).
/// Returns the ids handed over; chunks the tree does not hold are not among them.
pub fn fetch_chunks(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
    wanted: &HashSet<ChunkId>,
    max_gap: u64,
    put: &mut dyn FnMut(VerifiedChunk) -> Result<(), SyncError>,
) -> Result<HashSet<ChunkId>, SyncError> {
    let head = verified_head(store, tree, trusted)?;
    let sizes = head.recent.iter().flat_map(|v| v.packs.iter());
    store.expect_sizes(&sizes.map(|p| (p.id, p.size)).collect());
    let found = locate(store, head.root, wanted)?;
    let mut by_pack: HashMap<PackId, Vec<ChunkRef>> = HashMap::new();
    for c in found.values() {
        by_pack.entry(c.loc.pack).or_default().push(*c);
    }
    let mut out = HashSet::new();
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
                out.insert(c.id);
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

/// Walks the index from `root` until every chunk in `wanted` is located (or the tree is
/// walked through): where each one that the tree holds is stored.
fn locate(
    store: &dyn StoreReader,
    root: pulpdist_format::NodeRef,
    wanted: &HashSet<ChunkId>,
) -> Result<HashMap<ChunkId, ChunkRef>, SyncError> {
    let mut found: HashMap<ChunkId, ChunkRef> = HashMap::new();
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(r) = todo.pop() {
        if found.len() == wanted.len() {
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
                    for c in kind.own_chunks().filter(|c| wanted.contains(&c.id)) {
                        found.entry(c.id).or_insert(*c);
                    }
                }
            }
        }
    }
    Ok(found)
}
