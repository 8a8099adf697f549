//! The tree's summary: what the last publish of a tree found, in a few bytes a directory,
//! so that a publish of a tree that did not change reads neither the store's catalog nor
//! the publisher's cache (issue 20, item 6: an unchanged publish costs about a stat walk).
//!
//! It holds each directory's fingerprint and node (with its location), in walk order; the
//! packs the version names; the packs the catalog could not read; and two seals:
//!
//! - the store's packs as the catalog read them (each listed, uncondemned pack's id and
//!   size, hashed): any pack added, removed, condemned or resized since breaks it;
//! - the stat of the publisher's cache it was written beside: a cache written, damaged or
//!   removed since breaks it.
//!
//! A publish whose walk gives every directory the fingerprint the summary has, with both
//! seals intact, publishes the summary's root again: the nodes are in packs that have not
//! changed, and equal fingerprints mean equal entries and file stats. Anything else is the
//! ordinary publish, which writes a new summary. Like the cache, it is written without
//! fsync and checked against a trailing BLAKE3 hash: a torn one is no summary.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use pulpdist_format::{ChunkParams, Codec, Location, NodeId, NodeRef, PackId};

use crate::cache::Reader;
use crate::error::PublishError;
use crate::walk::FileStat;

const MAGIC: &[u8; 8] = b"PDPSUMM1";
const HASH_LEN: usize = 32;

/// One directory as the last publish left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SummaryDir {
    /// Path relative to the root, as the walk gives it.
    pub(crate) rel: Vec<u8>,
    /// Its entries' fingerprint, as computed (an image's directory included).
    pub(crate) fingerprint: [u8; 32],
    pub(crate) node: NodeRef,
}

/// What the last publish of a tree found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The publisher's cache file it was written beside (its stat).
    pub(crate) cache: Option<FileStat>,
    /// The store's packs the nodes were checked against ([`packs_hash`]).
    pub(crate) packs: [u8; 32],
    /// Every pack the version names (its nodes and their chunks).
    pub(crate) reached: BTreeSet<PackId>,
    /// Packs the catalog could not read, and why.
    pub(crate) unreadable: Vec<String>,
    /// Every directory, in walk order (the root first).
    pub(crate) dirs: Vec<SummaryDir>,
}

/// The hash that seals a summary to the store's packs: of each (id, size), sorted.
pub(crate) fn packs_hash(packs: impl IntoIterator<Item = (PackId, u64)>) -> [u8; 32] {
    let mut packs: Vec<(PackId, u64)> = packs.into_iter().collect();
    packs.sort();
    packs.dedup();
    let mut h = blake3::Hasher::new();
    h.update(b"pulpdist packs 1");
    h.update(&(packs.len() as u64).to_le_bytes());
    for (id, size) in &packs {
        h.update(id.as_bytes());
        h.update(&size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// A tree's summary file in the state directory, and what it must have been written for.
pub(crate) struct SummaryFile {
    pub(crate) path: PathBuf,
    identity: Vec<u8>,
}

impl SummaryFile {
    /// The summary of the tree `tree` cut with `params`, with composite files or not, by
    /// this release of the publisher (another one may build nodes otherwise: its summary is
    /// not used, and the next publish is an ordinary one).
    pub(crate) fn new(state: &Path, tree: &str, params: ChunkParams, composites: bool) -> Self {
        SummaryFile {
            path: state.join(format!("summary-{tree}")),
            identity: format!(
                "tree {tree} chunks {} {} {} composites {composites} publisher {} cache {}",
                params.min,
                params.avg,
                params.max,
                env!("CARGO_PKG_VERSION"),
                String::from_utf8_lossy(crate::cache::MAGIC),
            )
            .into_bytes(),
        }
    }

    /// The summary, if there is one written for this identity that decodes.
    pub(crate) fn load(&self) -> Option<Summary> {
        decode(&fs::read(&self.path).ok()?, &self.identity)
    }

    /// Writes `summary` (by temporary file and rename, no fsync: a torn one fails its hash).
    pub(crate) fn save(&self, summary: &Summary) -> Result<(), PublishError> {
        crate::cache::save(&self.path, &encode(summary, &self.identity))
    }

    /// Removes the summary (the cache it was sealed to could not be written): the next
    /// publish is an ordinary one.
    pub(crate) fn remove(&self) {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                // Left behind, it is still sealed to a cache that is not the next one.
                tracing::warn!(path = %self.path.display(), error = %e, "tree summary not removed");
            }
            _ => {}
        }
    }
}

/// The stat of the cache file at `path` (`None`: there is none).
pub(crate) fn cache_stat(path: &Path) -> Option<FileStat> {
    fs::symlink_metadata(path)
        .ok()
        .filter(fs::Metadata::is_file)
        .map(|md| FileStat::of(&md))
}

fn encode(s: &Summary, identity: &[u8]) -> Vec<u8> {
    let mut o = MAGIC.to_vec();
    o.extend((identity.len() as u32).to_le_bytes());
    o.extend_from_slice(identity);
    match &s.cache {
        None => o.push(0),
        Some(st) => {
            o.push(1);
            o.extend(st.dev.to_le_bytes());
            o.extend(st.ino.to_le_bytes());
            o.extend(st.size.to_le_bytes());
            o.extend(st.stamp.to_le_bytes());
        }
    }
    o.extend_from_slice(&s.packs);
    o.extend((s.reached.len() as u32).to_le_bytes());
    for p in &s.reached {
        o.extend_from_slice(p.as_bytes());
    }
    o.extend((s.unreadable.len() as u32).to_le_bytes());
    for u in &s.unreadable {
        o.extend((u.len() as u32).to_le_bytes());
        o.extend_from_slice(u.as_bytes());
    }
    o.extend((s.dirs.len() as u32).to_le_bytes());
    for d in &s.dirs {
        o.extend((d.rel.len() as u32).to_le_bytes());
        o.extend_from_slice(&d.rel);
        o.extend_from_slice(&d.fingerprint);
        o.extend_from_slice(d.node.id.as_bytes());
        let l = &d.node.loc;
        o.extend_from_slice(l.pack.as_bytes());
        o.extend(l.offset.to_le_bytes());
        o.extend(l.stored_len.to_le_bytes());
        o.extend(l.raw_len.to_le_bytes());
        o.push(l.codec.to_byte());
    }
    let hash = blake3::hash(&o);
    o.extend_from_slice(hash.as_bytes());
    o
}

fn decode(buf: &[u8], identity: &[u8]) -> Option<Summary> {
    let (body, hash) = buf.split_at(buf.len().checked_sub(HASH_LEN)?);
    if blake3::hash(body).as_bytes() != hash {
        return None;
    }
    let mut r = Reader(body);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let id_len = r.u32()? as usize;
    if r.take(id_len)? != identity {
        return None;
    }
    let cache = match r.take(1)?[0] {
        0 => None,
        _ => Some(FileStat {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            stamp: i128::from_le_bytes(r.take(16)?.try_into().ok()?),
        }),
    };
    let packs = r.array()?;
    // Counts are bounded by what is left, so a bad one cannot reserve much.
    let mut reached = BTreeSet::new();
    for _ in 0..r.u32()? {
        reached.insert(PackId(r.array()?));
    }
    let n = r.u32()? as usize;
    let mut unreadable = Vec::with_capacity(n.min(r.0.len() / 4));
    for _ in 0..n {
        let len = r.u32()? as usize;
        unreadable.push(String::from_utf8(r.take(len)?.to_vec()).ok()?);
    }
    let n = r.u32()? as usize;
    let mut dirs = Vec::with_capacity(n.min(r.0.len() / 140));
    for _ in 0..n {
        let rel_len = r.u32()? as usize;
        let rel = r.take(rel_len)?.to_vec();
        let fingerprint = r.array()?;
        let id = NodeId(r.array()?);
        let loc = Location {
            pack: PackId(r.array()?),
            offset: r.u64()?,
            stored_len: r.u32()?,
            raw_len: r.u32()?,
            codec: Codec::from_byte(r.take(1)?[0]).ok()?,
        };
        dirs.push(SummaryDir {
            rel,
            fingerprint,
            node: NodeRef { id, loc },
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Summary {
        cache,
        packs,
        reached,
        unreadable,
        dirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        let node = |b: u8| NodeRef {
            id: NodeId([b; 32]),
            loc: Location {
                pack: PackId([b + 1; 32]),
                offset: 7,
                stored_len: 9,
                raw_len: 11,
                codec: Codec::Zstd,
            },
        };
        Summary {
            cache: Some(FileStat {
                dev: 1,
                ino: 2,
                size: 3,
                stamp: -4,
            }),
            packs: [5; 32],
            reached: [PackId([2; 32]), PackId([3; 32])].into_iter().collect(),
            unreadable: vec!["packs/x.pack: truncated".into()],
            dirs: vec![
                SummaryDir {
                    rel: Vec::new(),
                    fingerprint: [6; 32],
                    node: node(1),
                },
                SummaryDir {
                    rel: b"a/b".to_vec(),
                    fingerprint: [8; 32],
                    node: node(2),
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_any_damage_or_other_identity_is_none() {
        let dir = tempfile::tempdir().expect("tmp");
        let params = ChunkParams::DEFAULT;
        let file = SummaryFile::new(dir.path(), "t", params, true);
        let s = sample();
        file.save(&s).expect("save");
        assert_eq!(file.load(), Some(s.clone()));
        // Another tree, other chunk sizes, composites off: none.
        assert_eq!(
            SummaryFile::new(dir.path(), "u", params, true).path,
            dir.path().join("summary-u")
        );
        let other = SummaryFile {
            path: file.path.clone(),
            identity: b"tree t chunks 1 2 3 composites true publisher 0 cache X".to_vec(),
        };
        assert_eq!(other.load(), None);
        let no_composites = SummaryFile::new(dir.path(), "t", params, false);
        assert_eq!(no_composites.load(), None);
        // Any damaged byte: none.
        let bytes = fs::read(&file.path).expect("read");
        for i in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            fs::write(&file.path, &b).expect("write");
            assert_eq!(file.load(), None, "byte {i}");
        }
        fs::write(&file.path, &bytes[..bytes.len() - 1]).expect("write");
        assert_eq!(file.load(), None);
        file.remove();
        assert!(!file.path.exists());
    }

    #[test]
    fn the_packs_seal_breaks_with_any_pack_added_removed_or_resized() {
        let (a, b) = (PackId([1; 32]), PackId([2; 32]));
        let base = packs_hash([(a, 10), (b, 20)]);
        assert_eq!(
            base,
            packs_hash([(b, 20), (a, 10), (a, 10)]),
            "order and repeats"
        );
        assert_ne!(base, packs_hash([(a, 10)]));
        assert_ne!(base, packs_hash([(a, 10), (b, 21)]));
        assert_ne!(base, packs_hash([(a, 10), (b, 20), (PackId([3; 32]), 1)]));
    }
}
