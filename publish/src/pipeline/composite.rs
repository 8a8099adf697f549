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

use pulpdist_format::{ChunkId, MAX_PART_PATH};

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
    lists: HashMap<usize, ChunkList>,
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
        for (fi, c) in chunks.iter().enumerate() {
            let Some(c) = c else { continue };
            if images[fi] {
                t.composite.insert(fi);
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
                t.lists.insert(fi, list);
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
        while i < list.len() {
            let best = self
                .by_first
                .get(&list[i].0)
                .into_iter()
                .flatten()
                .filter(|t| **t != fi)
                .filter_map(|t| {
                    let l = &self.lists[t];
                    (l.len() < list.len() && list[i..].starts_with(l)).then_some((l.len(), *t))
                })
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            match best {
                Some((n, t)) => {
                    if run < i {
                        out.push(Region::Chunks(run..i));
                    }
                    let size = self.lists[&t].iter().map(|(_, l)| u64::from(*l)).sum();
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
