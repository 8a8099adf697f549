//! What the store already holds: every chunk and node id with its location, rebuilt from
//! pack trailers (cached in the state directory by pack name, size and modification time:
//! packs never change, but a name the store lists may come back holding other bytes after
//! a damaged or planted pack under it was removed, since packs are named by their
//! content, and a pack restored from a copy has the size it had).
//!
//! When a chunk is stored in several packs, the copy in the pack with the smallest id is
//! the one nodes name (`names_first_copies`), so that a rebuilt node names the same copy
//! a kept one does.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

// Ids are hashes, but of content an uploader may choose: a seeded hasher, yet one much
// faster than SipHash, which was a tenth of an unchanged publish of 1,000,000 files.
use foldhash::fast::RandomState;
use std::fs;
use std::path::Path;

use pulpdist_format::pack::{self, ObjectKind, FOOTER_LEN};
use pulpdist_format::{ChunkId, FormatError, Location, NodeId, PackId};

use crate::error::{IoContext, PublishError};
use crate::store::{write_synced, Store};

/// Id → location for everything in the store. Where an id is in several packs, the
/// smallest pack id wins, so the choice (and with it every node encoding) is stable.
#[derive(Default)]
pub(crate) struct Catalog {
    pub(crate) chunks: HashMap<ChunkId, Location, RandomState>,
    pub(crate) nodes: HashMap<NodeId, Location, RandomState>,
    /// Packs whose trailer decoded: every object they hold is in the maps above.
    pub(crate) packs: HashSet<PackId>,
    /// Packs holding a chunk whose location is taken from another pack (a smaller id),
    /// and those chunks: a node naming such a chunk in such a pack is not what the same
    /// directory encodes to now.
    pub(crate) shadowed: HashSet<PackId>,
    pub(crate) dups: HashSet<ChunkId, RandomState>,
    /// Packs left out because their footer or trailer does not decode, and why.
    pub(crate) unreadable: Vec<String>,
    /// Packs left out because a garbage collector condemned them.
    pub(crate) condemned: HashSet<PackId>,
    /// Every pack the store listed and no garbage collector condemned, with its size: what
    /// the catalog was read from.
    pub(crate) listing: Vec<(PackId, u64)>,
}

/// The store's packs as a catalog reads them.
pub(crate) struct Listing {
    /// Each listed pack (id and size) that no garbage collector condemned.
    pub(crate) packs: Vec<(PackId, u64)>,
    /// The condemned ones.
    pub(crate) condemned: HashSet<PackId>,
    /// When each listed pack was stored (Unix seconds).
    pub(crate) modified: HashMap<PackId, i64>,
}

/// Lists the store's packs, and the condemned ones.
pub(crate) fn listing(store: &dyn Store) -> Result<Listing, PublishError> {
    let condemned: HashSet<PackId> = store.read_condemned()?.packs.keys().copied().collect();
    let listed: Vec<_> = store
        .list_packs()?
        .into_iter()
        .filter(|p| !condemned.contains(&p.id))
        .collect();
    Ok(Listing {
        packs: listed.iter().map(|p| (p.id, p.size)).collect(),
        modified: listed.iter().map(|p| (p.id, p.modified)).collect(),
        condemned,
    })
}

impl Catalog {
    pub(crate) fn load(store: &dyn Store, state: &Path) -> Result<Self, PublishError> {
        let cache_dir = state.join("trailers");
        fs::create_dir_all(&cache_dir).at(&cache_dir)?;
        let mut cat = Catalog::default();
        // Packs sorted by id, first occurrence kept: deterministic.
        // Packs a garbage collector condemned are left out: nothing is reused from them,
        // so no new version names one (FORMAT.md 8.10).
        let listed = listing(store)?;
        (cat.listing, cat.condemned) = (listed.packs, listed.condemned);
        let mut wanted = HashSet::with_capacity(cat.listing.len());
        for &(id, size) in &cat.listing {
            let object = id.object_key();
            let modified = listed.modified.get(&id).copied().unwrap_or_default();
            let name = format!("{}-{size}-{modified}", id.to_hex());
            let cached = cache_dir.join(&name);
            wanted.insert(name);
            // A cached trailer that does not decode (a write cut short) is read again.
            let from_cache = fs::read(&cached).ok();
            let entries = match from_cache.map(|t| decode(id, &t)) {
                Some(Ok(entries)) => entries,
                _ => {
                    let footer =
                        store.read_pack_range(id, size.saturating_sub(FOOTER_LEN)..size)?;
                    let range = match pack::decode_footer(&footer, size) {
                        Ok(r) => r,
                        Err(e) => {
                            cat.unreadable.push(format!("{object}: {e}"));
                            continue;
                        }
                    };
                    let mut trailer = range.start.to_le_bytes().to_vec();
                    trailer.extend(store.read_pack_range(id, range)?);
                    // A pack whose trailer does not decode (damaged, truncated) is left
                    // out: its objects are stored again if needed, and the publish goes on.
                    match decode(id, &trailer) {
                        Ok(entries) => {
                            cache_trailer(&cache_dir, &cached, &trailer);
                            entries
                        }
                        Err(e) => {
                            cat.unreadable.push(format!("{object}: {e}"));
                            continue;
                        }
                    }
                }
            };
            cat.packs.insert(id);
            cat.chunks.reserve(entries.len());
            for e in entries {
                match e.kind {
                    ObjectKind::Chunk => match cat.chunks.entry(ChunkId(e.id)) {
                        Entry::Vacant(v) => {
                            v.insert(e.loc);
                        }
                        Entry::Occupied(_) => {
                            cat.shadowed.insert(id);
                            cat.dups.insert(ChunkId(e.id));
                        }
                    },
                    ObjectKind::Node => {
                        cat.nodes.entry(NodeId(e.id)).or_insert(e.loc);
                    }
                    // Delta records are found through heads, never by id.
                    ObjectKind::Delta => {}
                }
            }
        }
        forget_others(&cache_dir, &wanted);
        Ok(cat)
    }

    /// Whether every one of `packs` is in the store and readable.
    pub(crate) fn has_packs(&self, packs: &[PackId]) -> bool {
        packs.iter().all(|p| self.packs.contains(p))
    }

    /// Whether a node whose chunks are all in `packs` (and are `chunks`) names each chunk
    /// where the catalog would (FORMAT.md 8.6: the smallest pack id wins): every pack
    /// readable, and none shadowed by a smaller one, or else none of the chunks stored
    /// twice (those are looked at only then: duplicates are rare).
    pub(crate) fn names_first_copies(
        &self,
        packs: &[PackId],
        mut chunks: impl Iterator<Item = ChunkId>,
    ) -> bool {
        self.has_packs(packs)
            && (!packs.iter().any(|p| self.shadowed.contains(p))
                || !chunks.any(|id| self.dups.contains(&id)))
    }
}

/// A cached trailer (the objects' end, then the trailer's bytes) decoded.
fn decode(id: PackId, cached: &[u8]) -> Result<Vec<pack::TrailerEntry>, FormatError> {
    let (start, body) = cached.split_at(8.min(cached.len()));
    let objects_end = u64::from_le_bytes(start.try_into().unwrap_or([0; 8]));
    pack::decode_trailer(id, body, objects_end)
}

/// Caches a pack's trailer at `path`, whole or not at all (written aside, then renamed:
/// another publisher sharing the state directory may read or write the same entry), and
/// best effort: without it, the next publish reads the trailer from the store again.
fn cache_trailer(dir: &Path, path: &Path, trailer: &[u8]) {
    let aside = dir.join(format!("part.{}", std::process::id()));
    let written = write_synced(&aside, trailer).and_then(|()| fs::rename(&aside, path).at(path));
    if let Err(e) = written {
        let _ = fs::remove_file(&aside);
        tracing::debug!(error = %e, "a pack's trailer was not cached");
    }
}

/// Removes the cached trailers of packs the store no longer lists (or lists at another
/// size or time), and those cached by an older publisher under the pack's name alone.
/// Best effort: a file left is only never read.
fn forget_others(cache_dir: &Path, wanted: &HashSet<String>) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| wanted.contains(n)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_copies_by_pack_then_by_chunk() {
        let (p1, p2, p3) = (PackId([1; 32]), PackId([2; 32]), PackId([3; 32]));
        let (x, y) = (ChunkId([8; 32]), ChunkId([9; 32]));
        let mut c = Catalog::default();
        c.packs.extend([p1, p2]);
        // Chunk x is in both packs; p1 (the smaller id) gives its location.
        c.shadowed.insert(p2);
        c.dups.insert(x);
        assert!(c.names_first_copies(&[p1], [x].into_iter()));
        assert!(c.names_first_copies(&[p2], [y].into_iter()));
        assert!(!c.names_first_copies(&[p2], [y, x].into_iter()));
        assert!(!c.names_first_copies(&[p1, p3], std::iter::empty()));
    }

    /// A pack whose name the store lists again, at the same size but stored anew (another
    /// pack put back under its name, or one restored from a copy), is read again: its
    /// cached trailer is for the file that was there.
    #[test]
    fn a_pack_stored_anew_at_the_same_size_is_read_again() {
        use pulpdist_format::pack::PackBuilder;
        use pulpdist_format::Codec;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::LocalStore::open(dir.path().join("store")).expect("store");
        let state = dir.path().join("state");
        let id = PackId([5; 32]);
        let path = store.root().join(id.object_key());
        let put = |chunk: ChunkId, mtime: i64| {
            let (mut b, mut bytes) = PackBuilder::new(id);
            b.add(ObjectKind::Chunk, chunk.0, Codec::Raw, 5, 5);
            bytes.extend(b"bytes");
            bytes.extend(b.finish().0);
            fs::write(&path, &bytes).expect("pack");
            let when = filetime::FileTime::from_unix_time(mtime, 0);
            filetime::set_file_mtime(&path, when).expect("mtime");
            bytes.len()
        };
        let (x, y) = (ChunkId([8; 32]), ChunkId([9; 32]));
        let size = put(x, 1_600_000_000);
        let cat = Catalog::load(&store, &state).expect("catalog");
        assert!(cat.chunks.contains_key(&x));
        // The same catalog from the cache; from the store again when the cached entry
        // does not decode (a write cut short), and the entry written anew.
        let cat = Catalog::load(&store, &state).expect("catalog");
        assert!(cat.chunks.contains_key(&x));
        let entries = || -> Vec<_> {
            let dir = fs::read_dir(state.join("trailers")).expect("cache");
            dir.map(|e| e.expect("entry").path()).collect()
        };
        let [entry] = entries().try_into().expect("one entry");
        let whole = fs::read(&entry).expect("entry");
        fs::write(&entry, &whole[..whole.len() - 3]).expect("cut short");
        let cat = Catalog::load(&store, &state).expect("catalog");
        assert!(cat.chunks.contains_key(&x) && cat.unreadable.is_empty());
        assert_eq!(fs::read(&entry).expect("entry"), whole);
        assert_eq!(put(y, 1_700_000_000), size);
        let cat = Catalog::load(&store, &state).expect("catalog");
        assert!(cat.chunks.contains_key(&y) && !cat.chunks.contains_key(&x));
        assert_eq!(entries().len(), 1, "the old entry is removed");
    }
}
