//! Composite files (FORMAT.md 5.2, entry kind 4): an ISO image cut along its files'
//! extents holds each of its files' chunks as a run; where such a run is the whole chunk
//! list of another regular file of the tree, the image's entry names that file by path
//! instead of repeating its chunks, as jigdo's template names each file once. The node
//! shrinks from 53 bytes per chunk of the image to a path per file inside it.
//!
//! Which files are named is decided from the chunk lists and the image flags alone, the
//! same way on every publish: only an image is composite; any other file of at least
//! [`MIN_TARGET`] bytes may be named (so a part always names a plain file); the longest
//! match wins, then the first file in walk order. A directory holding an image is built
//! again by every publish (index.rs), so its encoding never depends on history.

use std::collections::{HashMap, HashSet};

use pulpdist_format::{ChunkId, MAX_PART_PATH, MAX_TREE_RESOLVED_CHUNKS};

use super::chunking::{ChunkList, FileChunks};
use crate::walk::Walk;

/// Smallest file a part names: below it, a path costs about what the chunks do.
pub(super) const MIN_TARGET: u64 = 1024;

/// Files that may be named beginning with the same chunk, kept per chunk.
const MAX_SAME_FIRST: usize = 16;

/// A region of a composite file: a run of its own chunks, or another file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Region {
    /// Chunks `range` of the file's list.
    Chunks(std::ops::Range<usize>),
    /// The whole of file `fi` of the walk: `size` bytes.
    File {
        /// The file named.
        fi: usize,
        /// Its size: its chunks' lengths added up.
        size: u64,
    },
}

/// The files a composite file may name, by their first chunk.
pub(super) struct Targets {
    by_first: HashMap<ChunkId, Vec<usize>>,
    /// Each nameable file's chunk list and its [`window`] hash.
    lists: HashMap<usize, (ChunkList, u64)>,
    /// The images that may be composite: in walk order, while their chunks add up to at
    /// most [`MAX_TREE_RESOLVED_CHUNKS`] (what a reader takes of a tree).
    composite: HashSet<usize>,
}

impl Targets {
    /// The files that may be named, over the whole tree: every file that is not an image.
    pub(super) fn new(walk: &Walk, chunks: &[Option<FileChunks<'_>>], images: &[bool]) -> Self {
        let mut t = Targets {
            by_first: HashMap::new(),
            lists: HashMap::new(),
            composite: HashSet::new(),
        };
        let mut resolved = 0usize;
        for (fi, c) in chunks.iter().enumerate() {
            let Some(c) = c else { continue };
            if images[fi] {
                resolved += c.to_vec().len();
                if resolved <= MAX_TREE_RESOLVED_CHUNKS {
                    t.composite.insert(fi);
                }
                continue;
            }
            let f = &walk.files[fi];
            if f.stat.size < MIN_TARGET || path_len(walk, fi) > MAX_PART_PATH {
                continue;
            }
            let list = c.to_vec();
            let Some((first, _)) = list.first() else {
                continue;
            };
            // Files beginning with the same chunk (copies, mostly): a few are enough, and
            // an image's chunk is compared with at most that many.
            let same_first = t.by_first.entry(*first).or_default();
            if same_first.len() < MAX_SAME_FIRST {
                same_first.push(fi);
                let hash = window(&prefix_hashes(&list), 0, list.len());
                t.lists.insert(fi, (list, hash));
            }
        }
        t
    }

    /// The regions of image `fi` (chunks `list`) if it names a file: runs of its own chunks
    /// and the files it holds, longest match first (then the first in walk order). `None`:
    /// a plain file.
    pub(super) fn parts(&self, fi: usize, list: &ChunkList) -> Option<Vec<Region>> {
        if !self.composite.contains(&fi) {
            return None;
        }
        let regions = self.regions(fi, list);
        regions
            .iter()
            .any(|r| matches!(r, Region::File { .. }))
            .then_some(regions)
    }

    /// `list` cut into regions naming the files that may be named (shorter than it);
    /// empty if it names none.
    fn regions(&self, fi: usize, list: &ChunkList) -> Vec<Region> {
        let mut out = Vec::new();
        let (mut i, mut run) = (0, 0);
        let mut found = false;
        // A candidate is compared chunk by chunk only when its window hash matches: a file
        // sharing a long run with the image (zeros) costs no more than any other.
        let prefix = prefix_hashes(list);
        while i < list.len() {
            let best = self
                .by_first
                .get(&list[i].0)
                .into_iter()
                .flatten()
                .filter(|t| **t != fi)
                .filter_map(|t| {
                    let (l, hash) = &self.lists[t];
                    let fits = l.len() < list.len() && i + l.len() <= list.len();
                    (fits && window(&prefix, i, l.len()) == *hash && list[i..].starts_with(l))
                        .then_some((l.len(), *t))
                })
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match best {
                Some((n, t)) => {
                    if run < i {
                        out.push(Region::Chunks(run..i));
                    }
                    let size = self.lists[&t].0.iter().map(|(_, l)| u64::from(*l)).sum();
                    out.push(Region::File { fi: t, size });
                    found = true;
                    i += n;
                    run = i;
                }
                None => i += 1,
            }
        }
        if !found {
            return Vec::new();
        }
        if run < list.len() {
            out.push(Region::Chunks(run..list.len()));
        }
        out
    }
}

/// Rolling hashes of a chunk list's prefixes (each id's first 8 bytes, a random number, in
/// a polynomial over the wrapping u64s): `h[k]` covers the first `k` chunks, and the list's
/// powers of the base ride along as `h[len + 1 + k]`.
fn prefix_hashes(list: &ChunkList) -> Vec<u64> {
    const BASE: u64 = 0x9E37_79B9_7F4A_7C15;
    let n = list.len();
    let mut h = vec![0u64; 2 * n + 2];
    let mut pow = 1u64;
    h[n + 1] = 1;
    for (k, (id, len)) in list.iter().enumerate() {
        let mut x = [0u8; 8];
        x.copy_from_slice(&id.as_bytes()[..8]);
        let x = u64::from_le_bytes(x) ^ u64::from(*len);
        h[k + 1] = h[k].wrapping_mul(BASE).wrapping_add(x);
        pow = pow.wrapping_mul(BASE);
        h[n + 2 + k] = pow;
    }
    h
}

/// The hash of chunks `start..start + n` of the list `prefix` was made from.
fn window(prefix: &[u64], start: usize, n: usize) -> u64 {
    let len = (prefix.len() - 2) / 2;
    let pow = prefix[len + 1 + n];
    prefix[start + n].wrapping_sub(prefix[start].wrapping_mul(pow))
}

/// The file's path from the tree's root: its directory's and its name, joined by `/`.
pub(super) fn path(walk: &Walk, fi: usize) -> Vec<u8> {
    let f = &walk.files[fi];
    let d = &walk.dirs[f.dir];
    let name = d.entries[f.entry].name.as_bytes();
    let mut p = d.rel.clone();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn path_len(walk: &Walk, fi: usize) -> usize {
    let f = &walk.files[fi];
    let d = &walk.dirs[f.dir];
    d.rel.len() + usize::from(!d.rel.is_empty()) + d.entries[f.entry].name.as_bytes().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[u8]) -> ChunkList {
        ids.iter().map(|b| (ChunkId([*b; 32]), 100)).collect()
    }

    #[test]
    fn window_hashes_match_exactly_equal_runs() {
        let image = list(&[1, 2, 3, 4, 2, 3, 9]);
        let p = prefix_hashes(&image);
        let target = list(&[2, 3]);
        let t = window(&prefix_hashes(&target), 0, 2);
        let at: Vec<usize> = (0..6).filter(|&i| window(&p, i, 2) == t).collect();
        assert_eq!(at, vec![1, 4]);
        assert_eq!(window(&p, 0, 7), window(&prefix_hashes(&image), 0, 7));
        assert_ne!(window(&p, 0, 3), window(&p, 1, 3));
    }
}
