//! Walks the source tree into a flat list of directories (parents before children) and
//! files, with the metadata the index records.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
    pub(crate) entries: Vec<WalkEntry>,
}

pub(crate) struct WalkFile {
    pub(crate) rel: Vec<u8>,
    pub(crate) abs: PathBuf,
    pub(crate) size: u64,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) mtime_ns: i128,
}

#[derive(Default)]
pub(crate) struct Walk {
    /// Directories; index 0 is the root; a parent comes before its children.
    pub(crate) dirs: Vec<WalkDir>,
    pub(crate) files: Vec<WalkFile>,
    pub(crate) skipped: Vec<PathBuf>,
}

/// Walks `root`, leaving out what `filter` excludes (and not descending into excluded
/// directories), as rsync does.
pub(crate) fn walk(root: &Path, filter: &Filter) -> Result<Walk, PublishError> {
    let meta = fs::metadata(root).at(root)?;
    if !meta.is_dir() {
        return Err(PublishError::Config(format!(
            "{}: not a directory",
            root.display()
        )));
    }
    let mut w = Walk::default();
    w.dirs.push(WalkDir {
        entries: Vec::new(),
    });
    let mut stack: Vec<(usize, PathBuf, Vec<u8>)> = vec![(0, root.to_path_buf(), Vec::new())];
    while let Some((idx, abs, rel)) = stack.pop() {
        let mut entries = Vec::new();
        // Sorted before anything is numbered, so a publish of the same tree always lays
        // out its packs the same way, whatever order the file system lists names in.
        let mut listing: Vec<(Name, PathBuf)> = Vec::new();
        for e in fs::read_dir(&abs).at(&abs)? {
            let e = e.at(&abs)?;
            let path = e.path();
            let raw_name = e.file_name();
            if !filter.is_empty() {
                let mut rel_path = String::from_utf8_lossy(&rel).into_owned();
                if !rel_path.is_empty() {
                    rel_path.push('/');
                }
                rel_path.push_str(&raw_name.to_string_lossy());
                let is_dir = e.file_type().at(&path)?.is_dir();
                if !filter.includes(&rel_path, is_dir) {
                    continue;
                }
            }
            let name =
                Name::new(raw_name.as_bytes().to_vec()).map_err(|source| PublishError::Format {
                    object: path.display().to_string(),
                    source,
                })?;
            listing.push((name, path));
        }
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, path) in listing {
            let md = fs::symlink_metadata(&path).at(&path)?;
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            let mtime = Mtime {
                secs: md.mtime(),
                nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
            };
            let mode = md.mode() & 0o7777;
            let ft = md.file_type();
            let kind = if ft.is_file() {
                w.files.push(WalkFile {
                    rel: child_rel,
                    abs: path,
                    size: md.len(),
                    dev: md.dev(),
                    ino: md.ino(),
                    mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
                });
                WalkKind::File(w.files.len() - 1)
            } else if ft.is_dir() {
                w.dirs.push(WalkDir {
                    entries: Vec::new(),
                });
                let child = w.dirs.len() - 1;
                stack.push((child, path, child_rel));
                WalkKind::Dir(child)
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).at(&path)?;
                WalkKind::Symlink(target.as_os_str().as_bytes().to_vec())
            } else {
                w.skipped.push(path);
                continue;
            };
            entries.push(WalkEntry {
                name,
                mode,
                mtime,
                kind,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        w.dirs[idx].entries = entries;
    }
    Ok(w)
}
