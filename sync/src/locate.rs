//! Fetching given chunks of a tree, without a mirror: verify the head, walk the signed
//! index until every wanted chunk, and every wanted run of chunks named by the hash of its
//! ids, is located, then fetch and verify those chunks (byte ranges of their packs, nearby
//! ones merged). For rebuilding files, such as ISO images, outside a mirror.

use std::collections::{HashMap, HashSet};

use pulpdist_format::{
    chunk_list_hash, ChunkId, ChunkRef, EntryKind, PackId, SignedHead, TrustedKeys, VerifiedChunk,
};

use crate::error::SyncError;
use crate::store::{HeadFetch, StoreReader};

/// A run of chunks wanted by the hash of its ids ([`chunk_list_hash`]): it starts with
/// `first` and has `chunks` chunks. A file's whole chunk list is one; so is part of one, or
/// a run of a composite file's own chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The run's first chunk.
    pub first: ChunkId,
    /// How many chunks it has.
    pub chunks: u32,
}

/// What [`locate_chunks`] looks for in a tree.
pub struct Wanted<'a> {
    /// Chunks, by id.
    pub chunks: &'a HashSet<ChunkId>,
    /// Runs of chunks, by the hash of their ids.
    pub runs: &'a HashMap<[u8; 32], Run>,
}

/// Where a tree holds what was wanted (see [`locate_chunks`]).
#[derive(Debug, Default)]
pub struct Located {
    chunks: HashMap<ChunkId, ChunkRef>,
    runs: HashMap<[u8; 32], Vec<ChunkRef>>,
}

impl Located {
    /// Whether the tree holds chunk `id` (one wanted by id, or of a located run).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    /// The located runs: each one's chunks (id, length) in order.
    pub fn runs(&self) -> impl Iterator<Item = ([u8; 32], Vec<(ChunkId, u32)>)> + '_ {
        self.runs
            .iter()
            .map(|(h, refs)| (*h, refs.iter().map(|c| (c.id, c.loc.raw_len)).collect()))
    }
}

/// Verifies the tree's head and walks its index until every wanted chunk and run is
/// located (or the tree is walked through). What the tree does not hold is not in the
/// result.
pub fn locate_chunks(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
    wanted: Wanted<'_>,
) -> Result<Located, SyncError> {
    let head = verified_head(store, tree, trusted)?;
    let sizes = head.recent.iter().flat_map(|v| v.packs.iter());
    store.expect_sizes(&sizes.map(|p| (p.id, p.size)).collect());
    let mut located = locate(store, head.root, &wanted)?;
    let run_chunks: Vec<ChunkRef> = located.runs.values().flatten().copied().collect();
    for c in run_chunks {
        located.chunks.entry(c.id).or_insert(c);
    }
    Ok(located)
}

/// Fetches the located chunks that `want` asks for from `store` and hands each to `put`,
/// verified, as it arrives (so that memory holds one merged range, not every chunk).
/// Returns the ids handed over.
pub fn fetch_located(
    store: &dyn StoreReader,
    located: &Located,
    want: &dyn Fn(&ChunkId) -> bool,
    max_gap: u64,
    put: &mut dyn FnMut(VerifiedChunk) -> Result<(), SyncError>,
) -> Result<HashSet<ChunkId>, SyncError> {
    let mut by_pack: HashMap<PackId, Vec<ChunkRef>> = HashMap::new();
    for c in located.chunks.values().filter(|c| want(&c.id)) {
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

/// Walks the index from `root` until every chunk and run in `wanted` is located (or the
/// tree is walked through): where each wanted chunk is stored, and each run's chunks.
fn locate(
    store: &dyn StoreReader,
    root: pulpdist_format::NodeRef,
    wanted: &Wanted<'_>,
) -> Result<Located, SyncError> {
    let mut found = Located::default();
    // The runs by their first chunk: a file's chunks are searched for each one's start.
    let mut by_first: HashMap<ChunkId, Vec<([u8; 32], usize)>> = HashMap::new();
    for (hash, run) in wanted.runs {
        by_first
            .entry(run.first)
            .or_default()
            .push((*hash, run.chunks as usize));
    }
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(r) = todo.pop() {
        if found.chunks.len() == wanted.chunks.len() && found.runs.len() == wanted.runs.len() {
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
            if let EntryKind::Dir { node } = &e.kind {
                todo.push(*node);
                continue;
            }
            let own: Vec<&ChunkRef> = e.kind.own_chunks().collect();
            for c in own.iter().filter(|c| wanted.chunks.contains(&c.id)) {
                found.chunks.entry(c.id).or_insert(**c);
            }
            for (i, c) in own.iter().enumerate() {
                for (hash, n) in by_first.get(&c.id).into_iter().flatten() {
                    let Some(run) = own.get(i..i + n) else {
                        continue;
                    };
                    if !found.runs.contains_key(hash)
                        && chunk_list_hash(run.iter().map(|c| &c.id)) == *hash
                    {
                        found.runs.insert(*hash, run.iter().map(|c| **c).collect());
                    }
                }
            }
        }
    }
    Ok(found)
}
