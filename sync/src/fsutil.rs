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

/// `path` made absolute: `.` and `..` resolved and the symlinks of its existing ancestors
/// followed, so that `.`, `..` or `dir/.` name the directory they mean. Only the last
/// component, when it is a plain name, is kept as given (a mirror that is itself a symlink
/// keeps its state beside the link); components that do not exist yet are appended as
/// they are, and a `..` among them is refused.
pub fn absolute_dir(path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(path)?;
    let (base, last) = match abs.components().next_back() {
        Some(Component::Normal(n)) => (abs.parent().map(Path::to_path_buf), Some(n.to_owned())),
        _ => (Some(abs.clone()), None),
    };
    let mut resolved = match base {
        Some(b) => {
            // The deepest ancestor that exists, resolved; the rest appended.
            let mut rest = Vec::new();
            let mut cur = b.as_path();
            loop {
                match fs::canonicalize(cur) {
                    Ok(c) => break rest.into_iter().rev().fold(c, |p: PathBuf, n| p.join(n)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        match (cur.components().next_back(), cur.parent()) {
                            (Some(Component::Normal(n)), Some(parent)) => {
                                rest.push(n.to_owned());
                                cur = parent;
                            }
                            _ => {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::InvalidInput,
                                    "a '..' below a directory that does not exist",
                                ))
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        None => PathBuf::from("/"),
    };
    if let Some(n) = last {
        resolved.push(n);
    }
    Ok(resolved)
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

/// Opens a local file to read chunks from it: a regular file only, not through a symlink
/// as its last component, and without blocking on a FIFO (a local user can put anything
/// at a path between the listing and the read). Returns it with its size. Whatever is read
/// is verified against chunk ids before use; this keeps the read from hanging or running
/// forever on `/dev/zero`.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<(fs::File, u64)> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((fs::File::from(fd), st.st_size.max(0) as u64))
}

/// Flushes a directory's entries (the renames, creations and deletions in it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SyncError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
