//! Walks the source tree into a flat list of directories (parents before children) and
//! files, with the metadata the index records.
//!
//! Directories are listed a level at a time, the level's directories in parallel (on the
//! caller's rayon pool): the walk is mostly `statx` calls, which run on every core. The
//! numbering depends only on the tree, never on which thread listed what.

use std::ffi::OsStr;
use std::fs;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use pulpdist_format::filter::Filter;
use pulpdist_format::{Mtime, Name};

use crate::error::{IoContext, PublishError};

pub(crate) enum WalkKind {
    File(usize),
    Dir(usize),
    Symlink(Vec<u8>),
}

pub(crate) struct WalkEntry {
    pub(crate) name: Name,
    pub(crate) mode: u32,
    pub(crate) mtime: Mtime,
    pub(crate) kind: WalkKind,
}

pub(crate) struct WalkDir {
    /// Path relative to the root ("" for the root), `/`-separated.
    pub(crate) rel: Vec<u8>,
    /// Sorted by name.
    pub(crate) entries: Vec<WalkEntry>,
}

/// A regular file: where it is in the walk, and what the file cache compares.
pub(crate) struct WalkFile {
    /// Its directory (index into [`Walk::dirs`]).
    pub(crate) dir: usize,
    /// Its entry in that directory.
    pub(crate) entry: usize,
    pub(crate) stat: FileStat,
}

/// What a file looked like: a file whose stat is unchanged is not read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStat {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    /// Its modification time (ns, low 64 bits) and status-change time (ns, the bits
    /// above). The change time catches a file rewritten in place with its size and mtime
    /// put back (`cp -p` over it, a tool that restores times): writing a file always
    /// moves it, and no one can set it.
    pub(crate) stamp: i128,
}

impl FileStat {
    /// The stat of a file from its metadata.
    pub(crate) fn of(md: &fs::Metadata) -> FileStat {
        FileStat {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            stamp: FileStat::stamp_of(
                md.mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(md.mtime_nsec()),
                md.ctime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(md.ctime_nsec()),
            ),
        }
    }

    /// The stamp of modification time `mtime_ns` and change time `ctime_ns`.
    pub(crate) fn stamp_of(mtime_ns: i64, ctime_ns: i64) -> i128 {
        (i128::from(ctime_ns) << 64) | i128::from(mtime_ns as u64)
    }

    /// Whether a cache record's stat, `self`, still describes `now`: all of it, or for a
    /// record written before the change time was kept (`legacy`), all but that.
    pub(crate) fn unchanged(&self, now: &FileStat, legacy: bool) -> bool {
        match legacy {
            false => self == now,
            true => {
                (self.dev, self.ino, self.size) == (now.dev, now.ino, now.size)
                    && self.stamp as u64 == now.stamp as u64
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Walk {
    /// Directories; index 0 is the root; a parent comes before its children.
    pub(crate) dirs: Vec<WalkDir>,
    pub(crate) files: Vec<WalkFile>,
    pub(crate) skipped: Vec<PathBuf>,
    /// The directories at each depth (root first): contiguous ranges of `dirs`.
    pub(crate) levels: Vec<Range<usize>>,
}

impl Walk {
    /// The file's path on disk.
    pub(crate) fn path(&self, root: &Path, file: &WalkFile) -> PathBuf {
        let d = &self.dirs[file.dir];
        join(root, &d.rel).join(OsStr::from_bytes(d.entries[file.entry].name.as_bytes()))
    }
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// One listed entry, before it is numbered.
struct Listed {
    name: Name,
    mode: u32,
    mtime: Mtime,
    kind: ListedKind,
}

enum ListedKind {
    File(FileStat),
    Dir,
    Symlink(Vec<u8>),
}

/// Lists one directory: its entries sorted by name, and the paths of entries that are
/// neither file, directory nor symlink.
fn list(
    root: &Path,
    rel: &[u8],
    filter: &Filter,
) -> Result<(Vec<Listed>, Vec<PathBuf>), PublishError> {
    let abs = join(root, rel);
    // Sorted before anything is numbered, so a publish of the same tree always lays
    // out its packs the same way, whatever order the file system lists names in.
    let mut listing: Vec<(Name, fs::DirEntry)> = Vec::new();
    for e in fs::read_dir(&abs).at(&abs)? {
        let e = e.at(&abs)?;
        let raw_name = e.file_name();
        if !filter.is_empty() {
            let mut rel_path = String::from_utf8_lossy(rel).into_owned();
            if !rel_path.is_empty() {
                rel_path.push('/');
            }
            rel_path.push_str(&raw_name.to_string_lossy());
            let is_dir = e.file_type().at_with(|| e.path())?.is_dir();
            if !filter.includes(&rel_path, is_dir) {
                continue;
            }
        }
        let name =
            Name::new(raw_name.as_bytes().to_vec()).map_err(|source| PublishError::Format {
                object: e.path().display().to_string(),
                source,
            })?;
        listing.push((name, e));
    }
    listing.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(listing.len());
    let mut skipped = Vec::new();
    for (name, e) in listing {
        // statx relative to the open directory: no path lookup from the root.
        let md = e.metadata().at_with(|| e.path())?;
        let mtime = Mtime {
            secs: md.mtime(),
            nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        };
        let ft = md.file_type();
        let kind = if ft.is_file() {
            ListedKind::File(FileStat::of(&md))
        } else if ft.is_dir() {
            ListedKind::Dir
        } else if ft.is_symlink() {
            let path = e.path();
            let target = fs::read_link(&path).at(&path)?;
            ListedKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else {
            skipped.push(e.path());
            continue;
        };
        out.push(Listed {
            name,
            mode: md.mode() & 0o7777,
            mtime,
            kind,
        });
    }
    Ok((out, skipped))
}

/// Walks `root`, leaving out what `filter` excludes (and not descending into excluded
/// directories), as rsync does.
pub(crate) fn walk(root: &Path, filter: &Filter) -> Result<Walk, PublishError> {
    let meta = fs::metadata(root).at(root)?;
    if !meta.is_dir() {
        return Err(PublishError::Source {
            path: root.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let mut w = Walk::default();
    w.dirs.push(WalkDir {
        rel: Vec::new(),
        entries: Vec::new(),
    });
    // Breadth first: each level's directories are listed in parallel, then numbered in
    // order.
    let mut level: Vec<usize> = vec![0];
    while !level.is_empty() {
        let listed = level
            .par_iter()
            .map(|&d| list(root, &w.dirs[d].rel, filter))
            .collect::<Vec<_>>();
        w.levels.push(level[0]..level[level.len() - 1] + 1);
        let mut next = Vec::new();
        for (&d, listed) in level.iter().zip(listed) {
            let (items, skipped) = listed?;
            w.skipped.extend(skipped);
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                let kind = match item.kind {
                    ListedKind::File(stat) => {
                        w.files.push(WalkFile {
                            dir: d,
                            entry: entries.len(),
                            stat,
                        });
                        WalkKind::File(w.files.len() - 1)
                    }
                    ListedKind::Dir => {
                        let mut rel = w.dirs[d].rel.clone();
                        if !rel.is_empty() {
                            rel.push(b'/');
                        }
                        rel.extend_from_slice(item.name.as_bytes());
                        w.dirs.push(WalkDir {
                            rel,
                            entries: Vec::new(),
                        });
                        next.push(w.dirs.len() - 1);
                        WalkKind::Dir(w.dirs.len() - 1)
                    }
                    ListedKind::Symlink(t) => WalkKind::Symlink(t),
                };
                entries.push(WalkEntry {
                    name: item.name,
                    mode: item.mode,
                    mtime: item.mtime,
                    kind,
                });
            }
            w.dirs[d].entries = entries;
        }
        level = next;
    }
    Ok(w)
}
