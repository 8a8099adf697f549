//! File-system safety: a write never follows a symlink out of the tree, and files appear
//! only by rename from a temporary file beside them.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, SyncError};

/// Remembers which directories under the root were checked to be real directories.
pub(crate) struct SafeDirs {
    root: PathBuf,
    checked: HashSet<PathBuf>,
}

impl SafeDirs {
    pub(crate) fn new(root: &Path) -> Self {
        SafeDirs {
            root: root.to_path_buf(),
            checked: HashSet::new(),
        }
    }

    /// Checks that `rel` (relative to the root) and each of its parents is a real
    /// directory, not a symlink; with `create`, makes missing ones and replaces non-directories.
    pub(crate) fn ensure(&mut self, rel: &Path, create: bool) -> Result<PathBuf, SyncError> {
        let mut cur = self.root.clone();
        let mut rel_so_far = PathBuf::new();
        for comp in rel.components() {
            let std::path::Component::Normal(c) = comp else {
                return Err(SyncError::Unsafe {
                    path: self.root.join(rel),
                    reason: "path component is not a plain name".into(),
                });
            };
            cur.push(c);
            rel_so_far.push(c);
            if self.checked.contains(&rel_so_far) {
                continue;
            }
            match fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {}
                Ok(_) if create => {
                    // The index says this is a directory; whatever is here (a file or a
                    // symlink) is replaced, never followed.
                    fs::remove_file(&cur).at(&cur)?;
                    fs::create_dir(&cur).at(&cur)?;
                }
                Ok(md) => {
                    let what = if md.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        "not a directory"
                    };
                    return Err(SyncError::Unsafe {
                        path: cur,
                        reason: format!("parent is {what}"),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    fs::create_dir(&cur).at(&cur)?
                }
                Err(e) => return Err(e).at(&cur),
            }
            self.checked.insert(rel_so_far.clone());
        }
        Ok(cur)
    }
}

/// A temporary name beside `dest`: `.<name>.pulpdist-<random>`.
pub(crate) fn temp_beside(dest: &Path) -> PathBuf {
    let mut r = [0u8; 6];
    let _ = getrandom::getrandom(&mut r);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short: String = name.chars().take(100).collect();
    dest.with_file_name(format!(".{short}.pulpdist-{}", hex::encode(r)))
}

/// Writes bytes to a file atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), SyncError> {
    let tmp = temp_beside(dest);
    let mut f = fs::File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    fs::rename(&tmp, dest).at(dest)
}

/// Removes whatever is at `path` (file, symlink or directory tree), if anything.
pub(crate) fn remove_any(path: &Path) -> Result<(), SyncError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).at(path),
        Ok(_) => fs::remove_file(path).at(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}
