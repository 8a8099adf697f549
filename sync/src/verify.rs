//! Checking a store (`pulpdist verify --store`): every head, current and archived, of the
//! trees asked for (all the store lists, by default) verifies against the trusted keys and
//! names its tree; every index node each of those versions reaches is fetched, decoded and checked against its id; every
//! pack a chunk is located in exists and reaches past that chunk's last byte. With
//! `read_data`, every chunk of the packs selected is fetched and checked against its BLAKE3
//! id: all packs, or one subset in M (`N/M`, by pack id), so that M runs cover the store.
//!
//! What is wrong with the store (a missing object, a short one, bytes that fail their hash,
//! an untrusted or malformed head) is a [`Problem`] in the report: the check goes on. What
//! stops the check (the store cannot be reached, a local error) is an error: the store could
//! not be checked, which is not the same as damaged.

use std::collections::{BTreeMap, HashSet};

use pulpdist_format::{
    ChunkId, ChunkRef, EntryKind, NodeRef, PackId, SignedHead, TrustedKeys, MAX_RESOLVE_READ,
    MAX_TREE_RESOLVED_CHUNKS,
};

use crate::error::SyncError;
use crate::store::{HeadFetch, StoreReader};

/// Which chunks' bytes a check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadData {
    /// None: the structure only (heads, nodes, each pack's extent).
    No,
    /// Every pack's.
    All,
    /// The packs of subset `n` of `m` (1 ≤ n ≤ m), by pack id.
    Subset {
        /// Which subset, from 1.
        n: u64,
        /// How many subsets.
        m: u64,
    },
}

impl ReadData {
    fn selects(&self, pack: &PackId) -> bool {
        match *self {
            ReadData::No => false,
            ReadData::All => true,
            ReadData::Subset { n, m } => {
                let mut first = [0u8; 8];
                first.copy_from_slice(&pack.0[..8]);
                u64::from_be_bytes(first) % m.max(1) == (n.max(1) - 1) % m.max(1)
            }
        }
    }
}

/// One thing wrong with the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The object (head, node, pack or chunk) it concerns.
    pub object: String,
    /// What is wrong.
    pub what: String,
}

/// What a check looked at and found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Trees checked.
    pub trees: u64,
    /// Archived heads (`history/`) checked: each verifies and names its tree and version.
    pub archived: u64,
    /// Distinct index nodes fetched and checked.
    pub nodes: u64,
    /// Chunk references in files (with repeats).
    pub chunk_refs: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Packs referenced (by nodes' chunks).
    pub packs: u64,
    /// Packs whose chunks were read and checked.
    pub packs_read: u64,
    /// Chunks read and checked.
    pub chunks_read: u64,
    /// Bytes read from the store for chunk data.
    pub bytes_read: u64,
    /// Everything found wrong, in the order found.
    pub problems: Vec<Problem>,
}

/// Whether an error says the store is damaged (as opposed to "could not check").
fn is_damage(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::NotFound { .. }
            | SyncError::Format { .. }
            | SyncError::Short { .. }
            | SyncError::Mismatch { .. }
            | SyncError::WrongTree { .. }
    )
}

/// Checks trees `trees` (all the store lists when empty) of `store`.
pub fn verify_store(
    store: &dyn StoreReader,
    trees: &[String],
    trusted: &TrustedKeys,
    read_data: ReadData,
    progress: &pulpdist_progress::Reporter,
) -> Result<VerifyReport, SyncError> {
    let trees = match (trees.is_empty(), store.list_trees()) {
        (false, _) => trees.to_vec(),
        (true, Some(listed)) => listed?,
        (true, None) => {
            return Err(SyncError::Usage(format!(
                "{}: cannot list this store's trees; name them with --tree",
                store.describe()
            )))
        }
    };
    let mut report = VerifyReport::default();
    let mut chunks: BTreeMap<PackId, BTreeMap<ChunkId, ChunkRef>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for tree in &trees {
        report.trees += 1;
        // Every archived version the store keeps is checked whole, not only the current
        // one: a gc must not leave a kept version missing an object.
        let roots = check_archived(store, tree, trusted, &mut report)?;
        if let Some(root) = checked_head(store, tree, trusted, &mut report)? {
            walk(store, root, &mut seen, &mut chunks, &mut report)?;
        }
        for root in roots {
            walk(store, root, &mut seen, &mut chunks, &mut report)?;
        }
    }
    report.packs = chunks.len() as u64;
    report.chunks = chunks.values().map(|c| c.len() as u64).sum();
    progress.start("check", chunks.len() as u64, 0);
    for (pack, refs) in &chunks {
        check_pack(store, pack, refs, read_data, &mut report)?;
        progress.advance(1, 0);
    }
    progress.finish();
    Ok(report)
}

/// Every archived head of `tree` the store lists verifies and names its tree and version;
/// the roots of those that do.
fn check_archived(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
    report: &mut VerifyReport,
) -> Result<Vec<NodeRef>, SyncError> {
    let mut roots = Vec::new();
    let Some(versions) = store.list_versions(tree) else {
        return Ok(roots);
    };
    for v in versions? {
        report.archived += 1;
        let object = format!(
            "{}/{}",
            store.describe(),
            pulpdist_format::history_key(tree, v)
        );
        let what = match store.get_archived(tree, v) {
            Ok(Some(bytes)) => match SignedHead::decode_and_verify(&bytes, trusted) {
                Ok(h) if h.head().tree == tree && h.head().version == v => {
                    roots.push(h.head().root);
                    continue;
                }
                Ok(h) => format!(
                    "holds tree '{}' version {}",
                    h.head().tree,
                    h.head().version
                ),
                Err(e) => e.to_string(),
            },
            // Removed since it was listed (a gc running at the same time): not damage.
            Ok(None) => continue,
            Err(e) if is_damage(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        report.problems.push(Problem { object, what });
    }
    Ok(roots)
}

/// The root of tree `tree`'s head, if it verifies; a problem noted otherwise.
fn checked_head(
    store: &dyn StoreReader,
    tree: &str,
    trusted: &TrustedKeys,
    report: &mut VerifyReport,
) -> Result<Option<NodeRef>, SyncError> {
    let object = format!("{}/heads/{tree}", store.describe());
    let mut problem = |what: String| {
        report.problems.push(Problem {
            object: object.clone(),
            what,
        });
        Ok(None)
    };
    let bytes = match store.get_head(tree, None) {
        Ok(HeadFetch::Found { bytes, .. }) => bytes,
        Ok(_) => return problem("no such head".into()),
        Err(e) if is_damage(&e) => return problem(e.to_string()),
        Err(e) => return Err(e),
    };
    match SignedHead::decode_and_verify(&bytes, trusted) {
        Ok(h) if h.head().tree != tree => problem(format!("names tree '{}'", h.head().tree)),
        Ok(h) => Ok(Some(h.head().root)),
        Err(e) => problem(e.to_string()),
    }
}

/// Fetches and checks every node from `root` not seen yet; collects the chunks files name.
fn walk(
    store: &dyn StoreReader,
    root: NodeRef,
    // By id and location: a node stored at two locations (stored again after a gc
    // condemned its pack, or moved by a repack) is checked at each a version names.
    seen: &mut HashSet<NodeRef>,
    chunks: &mut BTreeMap<PackId, BTreeMap<ChunkId, ChunkRef>>,
    report: &mut VerifyReport,
) -> Result<(), SyncError> {
    let mut todo = vec![root];
    let mut composites = Vec::new();
    while let Some(r) = todo.pop() {
        if !seen.insert(r) {
            continue;
        }
        let object = format!("index node {} in {}", r.id, r.loc.pack.object_key());
        let stored = match store.get_range(&r.loc.pack, r.loc.range()) {
            Ok(b) => b,
            Err(e) if is_damage(&e) => {
                report.problems.push(Problem {
                    object,
                    what: e.to_string(),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        let node = match r.open(&stored) {
            Ok(n) => n,
            Err(e) => {
                report.problems.push(Problem {
                    object,
                    what: e.to_string(),
                });
                continue;
            }
        };
        report.nodes += 1;
        for e in node.entries() {
            match &e.kind {
                EntryKind::Dir { node } => todo.push(*node),
                kind => {
                    for c in kind.own_chunks() {
                        report.chunk_refs += 1;
                        chunks.entry(c.loc.pack).or_default().insert(c.id, *c);
                    }
                }
            }
        }
        if node.has_composites() {
            composites.push(r);
        }
    }
    check_composites(store, root, composites, report)
}

/// Resolves each composite file against its tree: every file part names a plain file of
/// the tree of its size, the whole resolves to the chunks its entry records, and the
/// tree's composite files to at most [`MAX_TREE_RESOLVED_CHUNKS`] chunks. The nodes are
/// read again (only their references were kept); as a sync does, at most 4 GiB of index
/// nodes is read to find the files they name (beyond, each is a problem).
fn check_composites(
    store: &dyn StoreReader,
    root: NodeRef,
    composites: Vec<NodeRef>,
    report: &mut VerifyReport,
) -> Result<(), SyncError> {
    let open = |r: &NodeRef| -> Result<pulpdist_format::Node, SyncError> {
        let stored = store.get_range(&r.loc.pack, r.loc.range())?;
        r.open(&stored).map_err(|source| SyncError::Format {
            object: format!("index node {} in {}", r.id, r.loc.pack.object_key()),
            source,
        })
    };
    let read_left = std::cell::Cell::new(MAX_RESOLVE_READ);
    let mut files = pulpdist_format::TreeFiles::new(root, |r: &NodeRef| {
        let left = read_left.get().checked_sub(u64::from(r.loc.raw_len));
        read_left.set(left.ok_or_else(|| SyncError::Format {
            object: format!("index node {} in {}", r.id, r.loc.pack.object_key()),
            source: pulpdist_format::FormatError::Invalid {
                what: "composite file",
                reason: format!(
                    "finding the files composite files name reads more than {MAX_RESOLVE_READ} bytes of index nodes"
                ),
            },
        })?);
        open(r)
    });
    let mut chunks_left = MAX_TREE_RESOLVED_CHUNKS;
    for r in composites {
        let what = match open(&r).and_then(|node| node.resolve_files(|path| files.lookup(path))) {
            Ok(Ok(resolved)) => match chunks_left.checked_sub(resolved.chunks()) {
                Some(left) => {
                    chunks_left = left;
                    continue;
                }
                None => format!(
                    "the tree's composite files resolve to more than {MAX_TREE_RESOLVED_CHUNKS} chunks"
                ),
            },
            Ok(Err(e)) => e.to_string(),
            Err(e) if is_damage(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        report.problems.push(Problem {
            object: format!("index node {} in {}", r.id, r.loc.pack.object_key()),
            what,
        });
    }
    Ok(())
}

/// Checks one pack: that it reaches past its last chunk and, if selected, every chunk.
fn check_pack(
    store: &dyn StoreReader,
    pack: &PackId,
    refs: &BTreeMap<ChunkId, ChunkRef>,
    read_data: ReadData,
    report: &mut VerifyReport,
) -> Result<(), SyncError> {
    let object = format!("{}/{}", store.describe(), pack.object_key());
    let end = refs.values().map(|c| c.loc.range().end).max().unwrap_or(0);
    if !read_data.selects(pack) {
        return match store.get_range(pack, end.saturating_sub(1)..end) {
            Ok(_) => Ok(()),
            Err(e) if is_damage(&e) => {
                let what = format!("does not reach byte {end} its chunks need: {e}");
                report.problems.push(Problem { object, what });
                Ok(())
            }
            Err(e) => Err(e),
        };
    }
    report.packs_read += 1;
    let ranges = crate::ranges::coalesce(refs.values().map(|c| c.loc.range()).collect(), 1 << 20);
    for range in ranges {
        let buf = match store.get_range(pack, range.clone()) {
            Ok(b) => b,
            Err(e) if is_damage(&e) => {
                let what = format!("bytes {}..{}: {e}", range.start, range.end);
                report.problems.push(Problem {
                    object: object.clone(),
                    what,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        report.bytes_read += buf.len() as u64;
        let inside = refs
            .values()
            .filter(|c| range.start <= c.loc.offset && c.loc.range().end <= range.end);
        for c in inside {
            let at = (c.loc.offset - range.start) as usize;
            let stored = &buf[at..at + c.loc.stored_len as usize];
            report.chunks_read += 1;
            let codec = c.loc.codec;
            if let Err(e) =
                pulpdist_format::VerifiedChunk::from_stored(c.id, codec, stored, c.loc.raw_len)
            {
                let what = format!("chunk {} at {}: {e}", c.id, c.loc.offset);
                report.problems.push(Problem {
                    object: object.clone(),
                    what,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_partition_the_packs() {
        let packs: Vec<PackId> = (0u8..=255).map(|b| PackId([b; 32])).collect();
        let m = 5;
        for p in &packs {
            let hits = (1..=m)
                .filter(|n| ReadData::Subset { n: *n, m }.selects(p))
                .count();
            assert_eq!(hits, 1, "{p:?}");
        }
        assert!(packs
            .iter()
            .all(|p| ReadData::All.selects(p) && !ReadData::No.selects(p)));
    }
}
