//! Composite files (FORMAT.md 5.2, entry kind 4): a file whose chunk list holds the whole
//! chunk list of another regular file of the tree as a run (an ISO image cut along its
//! files' extents holds each of its files' chunks) names that file by path instead of
//! repeating its chunks, as jigdo's template names each file once. The node shrinks from
//! 53 bytes per chunk of the image to a path per file inside it.
//!
//! Which files are named is decided from the chunk lists alone, the same way on every
//! publish: a file of at least [`MIN_TARGET`] bytes may be named; a file that holds
//! another such file (and is longer) is composite and is never named itself, so a part
//! always names a plain file. Among files with the same chunks, the first in walk order is
//! named.

use std::collections::{HashMap, HashSet};

use pulpdist_format::{ChunkId, MAX_PART_PATH};

use super::chunking::{ChunkList, FileChunks};
use crate::walk::Walk;

/// Smallest file a part names: below it, a path costs about what the chunks do.
pub(super) const MIN_TARGET: u64 = 1024;

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
    /// Finds, over the whole tree, which files may be named and which are composite.
    pub(super) fn new(walk: &Walk, chunks: &[Option<FileChunks<'_>>]) -> Self {
        let mut t = Targets {
            by_first: HashMap::new(),
            lists: HashMap::new(),
            composite: HashSet::new(),
        };
        for (fi, c) in chunks.iter().enumerate() {
            let Some(c) = c else { continue };
            let f = &walk.files[fi];
            if f.stat.size < MIN_TARGET || path_len(walk, fi) > MAX_PART_PATH {
                continue;
            }
            let list = c.to_vec();
            let Some((first, _)) = list.first() else {
                continue;
            };
            t.by_first.entry(*first).or_default().push(fi);
            t.lists.insert(fi, list);
        }
        // A file holding another candidate is composite: it cannot be named.
        let mut composite = HashSet::new();
        for (fi, c) in chunks.iter().enumerate() {
            let Some(c) = c else { continue };
            let list = c.to_vec();
            if list.len() >= 2 && !t.regions(fi, &list, &HashSet::new()).is_empty() {
                composite.insert(fi);
            }
        }
        t.composite = composite;
        t
    }

    /// The regions of file `fi` (chunks `list`), if it is composite: runs of its own chunks
    /// and the files it holds, longest match first (then the first in walk order). `None`:
    /// a plain file.
    pub(super) fn parts(&self, fi: usize, list: &ChunkList) -> Option<Vec<Region>> {
        if !self.composite.contains(&fi) {
            return None;
        }
        let regions = self.regions(fi, list, &self.composite);
        regions
            .iter()
            .any(|r| matches!(r, Region::File { .. }))
            .then_some(regions)
    }

    /// `list` cut into regions naming the candidates not in `skip` (other than `fi`, and
    /// shorter than it); empty if it names none.
    fn regions(&self, fi: usize, list: &ChunkList, skip: &HashSet<usize>) -> Vec<Region> {
        let mut out = Vec::new();
        let (mut i, mut run) = (0, 0);
        let mut found = false;
        while i < list.len() {
            let best = self
                .by_first
                .get(&list[i].0)
                .into_iter()
                .flatten()
                .filter(|t| **t != fi && !skip.contains(t))
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
