//! Writes into the mirror relative to directory handles, never by re-walking a path.
//!
//! A local user who can write one directory of the mirror can swap it for a symlink while a
//! sync runs. A check made once ("this is a real directory") and then path-based calls
//! (create, rename, chmod, set mtime, delete) would follow whatever is there by the time
//! they run, and write or delete outside the mirror. Here every directory is opened once,
//! component by component, with `O_NOFOLLOW | O_DIRECTORY`, and every write is an `*at`
//! call relative to such a handle (`openat`, `renameat`, `symlinkat`, `unlinkat`,
//! `mkdirat`, `utimensat` with `AT_SYMLINK_NOFOLLOW`, `fchmod`/`futimens` on a handle
//! opened with `O_NOFOLLOW`). A directory swapped after it was opened is the old inode
//! still: writes land in it or fail, never behind the symlink.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use pulpdist_format::Mtime;

use crate::error::{IoContext, SyncError};
use crate::glob::glob_match;

/// An open directory of the mirror.
pub(crate) type DirFd = Arc<OwnedFd>;

/// The mirror's directories, opened without following symlinks. Handles are cached, a few
/// at a time (a mirror has more directories than a process may hold open); each operation
/// resolves its directory again through the cache, component by component.
pub(crate) struct Tree {
    root_path: PathBuf,
    root: DirFd,
    dirs: HashMap<PathBuf, DirFd>,
}

/// Directory handles kept open at most (the cache is emptied when it is full).
const CACHED_DIRS: usize = 64;

fn io(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The parent directory and the name of `rel`.
fn split(rel: &Path) -> Option<(&Path, &OsStr)> {
    Some((rel.parent().unwrap_or(Path::new("")), rel.file_name()?))
}

impl Tree {
    /// The mirror directory `root`, opened (and locked) once by `state::lock_mirror` from
    /// `dest`, which the operator named (so a symlink to it is fine). `dest` only names
    /// things in messages.
    pub(crate) fn at(dest: &Path, root: OwnedFd) -> Tree {
        Tree {
            root_path: dest.to_path_buf(),
            root: Arc::new(root),
            dirs: HashMap::new(),
        }
    }

    /// Where `rel` is, for messages (never opened by this path).
    pub(crate) fn abs(&self, rel: &Path) -> PathBuf {
        self.root_path.join(rel)
    }

    /// Forgets every cached handle: the next operations walk from the root again (and
    /// so notice a directory swapped since it was opened).
    pub(crate) fn refresh(&mut self) {
        self.dirs.clear();
    }

    /// The directory `rel`, each component a real directory opened with `O_NOFOLLOW |
    /// O_DIRECTORY`. Never creates or replaces anything: a symlink or a missing directory
    /// on the way is an error.
    pub(crate) fn dir(&mut self, rel: &Path) -> Result<DirFd, SyncError> {
        if let Some(d) = self.dirs.get(rel) {
            return Ok(Arc::clone(d));
        }
        let mut cur = Arc::clone(&self.root);
        let mut so_far = PathBuf::new();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(SyncError::Unsafe {
                    path: self.abs(rel),
                    reason: "path component is not a plain name".into(),
                });
            };
            so_far.push(name);
            if let Some(d) = self.dirs.get(&so_far) {
                cur = Arc::clone(d);
                continue;
            }
            let path = self.abs(&so_far);
            // O_NOFOLLOW | O_DIRECTORY: a symlink or a file here fails the open.
            let fd = match rustix::fs::openat(&*cur, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                    return Err(SyncError::Unsafe {
                        path,
                        reason: "not a directory (a symlink or a file is there)".into(),
                    })
                }
                Err(e) => return Err(io(e)).at(path),
            };
            if self.dirs.len() >= CACHED_DIRS {
                self.dirs.clear();
            }
            let fd = Arc::new(fd);
            self.dirs.insert(so_far.clone(), Arc::clone(&fd));
            cur = fd;
        }
        Ok(cur)
    }

    /// The directory holding `rel`, and its name there.
    fn parent<'a>(&mut self, rel: &'a Path) -> Result<(DirFd, &'a OsStr), SyncError> {
        let (parent, name) = split(rel).ok_or_else(|| SyncError::Unsafe {
            path: self.abs(rel),
            reason: "no file name".into(),
        })?;
        Ok((self.dir(parent)?, name))
    }

    /// What is at `rel` (not following a symlink); `None` if nothing.
    pub(crate) fn kind(&mut self, rel: &Path) -> Result<Option<FileType>, SyncError> {
        let (dir, name) = self.parent(rel)?;
        kind_at(&dir, name).at(self.abs(rel))
    }

    /// Whether a real directory is at `rel`.
    pub(crate) fn is_dir(&mut self, rel: &Path) -> bool {
        matches!(self.kind(rel), Ok(Some(FileType::Directory)))
    }

    /// Makes the directory `rel` (its parent must be a real directory).
    pub(crate) fn mkdir(&mut self, rel: &Path) -> Result<(), SyncError> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::mkdirat(&*dir, name, Mode::from_raw_mode(0o755))
            .map_err(io)
            .at(self.abs(rel))
    }

    /// Creates a new file at `rel` (never an existing one, never through a symlink).
    pub(crate) fn create_new(&mut self, rel: &Path) -> Result<File, SyncError> {
        let (dir, name) = self.parent(rel)?;
        let fd = rustix::fs::openat(
            &*dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io)
        .at(self.abs(rel))?;
        Ok(File::from(fd))
    }

    /// Renames `from` to `to`.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Result<(), SyncError> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        rustix::fs::renameat(&*from_dir, from_name, &*to_dir, to_name)
            .map_err(io)
            .at(self.abs(to))
    }

    /// Makes a symlink at `rel` pointing to `target`, with its mtime.
    pub(crate) fn symlink(
        &mut self,
        rel: &Path,
        target: &[u8],
        mtime: Mtime,
    ) -> Result<(), SyncError> {
        let (dir, name) = self.parent(rel)?;
        let path = self.abs(rel);
        rustix::fs::symlinkat(OsStr::from_bytes(target), &*dir, name)
            .map_err(io)
            .at(&path)?;
        rustix::fs::utimensat(&*dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io)
            .at(&path)
    }

    /// Sets a regular file's mode and mtime (and with `flush`, flushes them), if it still
    /// has the size and mtime `seen` (an error otherwise), through a handle opened
    /// without following a symlink. Returns that handle, changing nothing, for a file with
    /// other hard links (the change would reach every name of it, inside the mirror or
    /// not): the caller replaces it by a copy of the checked handle's bytes instead.
    /// Anything but a regular file is an error.
    pub(crate) fn set_file_attrs(
        &mut self,
        rel: &Path,
        mode: u32,
        mtime: Mtime,
        seen: Option<(u64, Mtime)>,
        flush: bool,
    ) -> Result<Option<OwnedFd>, SyncError> {
        let (fd, path) = self.open_file(rel)?;
        let st = rustix::fs::fstat(&fd).map_err(io).at(&path)?;
        if let Some((size, m)) = seen {
            let now = Mtime {
                secs: st.st_mtime,
                nanos: (st.st_mtime_nsec as u32).min(999_999_999),
            };
            if st.st_size as u64 != size || now != m {
                // Changed by someone else since the survey: its content is no longer the
                // one the plan trusted, so it must not get the new version's attributes.
                return Err(SyncError::Unsafe {
                    path,
                    reason: "changed during the sync (size or mtime); not recorded, the next \
                             sync rewrites it"
                        .into(),
                });
            }
        }
        if st.st_nlink != 1 {
            return Ok(Some(fd));
        }
        set_fd_attrs(&fd, mode, mtime, flush).at(&path)?;
        Ok(None)
    }

    /// Opens the regular file at `rel` for reading, without following a symlink or
    /// blocking on a FIFO.
    fn open_file(&mut self, rel: &Path) -> Result<(OwnedFd, PathBuf), SyncError> {
        let (dir, name) = self.parent(rel)?;
        let path = self.abs(rel);
        let fd = rustix::fs::openat(
            &*dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)
        .at(&path)?;
        let st = rustix::fs::fstat(&fd).map_err(io).at(&path)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(SyncError::Unsafe {
                path,
                reason: "not a regular file".into(),
            });
        }
        Ok((fd, path))
    }

    /// Copies the open regular file `from` into a new file at `to`; returns the copy, flushed.
    pub(crate) fn copy_file(&mut self, from: OwnedFd, to: &Path) -> Result<File, SyncError> {
        let fd = from;
        let mut out = self.create_new(to)?;
        let copied = std::io::copy(&mut File::from(fd), &mut out).and_then(|_| out.sync_all());
        if let Err(e) = copied {
            let _ = self.remove_file(to);
            return Err(e).at(self.abs(to));
        }
        Ok(out)
    }

    /// Removes the file or symlink at `rel`.
    pub(crate) fn remove_file(&mut self, rel: &Path) -> Result<(), SyncError> {
        let (dir, name) = self.parent(rel)?;
        rustix::fs::unlinkat(&*dir, name, AtFlags::empty())
            .map_err(io)
            .at(self.abs(rel))
    }

    /// Removes the empty directory at `rel`.
    pub(crate) fn remove_dir(&mut self, rel: &Path) -> Result<(), SyncError> {
        self.dirs.retain(|k, _| !k.starts_with(rel));
        let (dir, name) = self.parent(rel)?;
        rustix::fs::unlinkat(&*dir, name, AtFlags::REMOVEDIR)
            .map_err(io)
            .at(self.abs(rel))
    }

    /// Removes whatever is at `rel` (a file, a symlink, or a directory tree, never
    /// followed through a symlink). A directory's contents go in the order of `rank`:
    /// every file of rank 0 in the whole tree, then rank 1, then the rest, then the
    /// directories deepest first, so that no index in it names a file already gone.
    pub(crate) fn remove_ranked(
        &mut self,
        rel: &Path,
        rank: &dyn Fn(&OsStr) -> u8,
        hit: &dyn Fn(&Path),
    ) -> Result<(), SyncError> {
        let path = self.abs(rel);
        match self.kind(rel)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                let (dir, name) = self.parent(rel)?;
                for pass in 0..3u8 {
                    let d = rustix::fs::openat(&*dir, name, DIR_FLAGS, Mode::empty())
                        .map_err(io)
                        .at(&path)?;
                    remove_pass(&d, &path, pass, rank, hit)?;
                }
                self.remove_dir(rel)
            }
            Some(_) => {
                hit(&path);
                self.remove_file(rel)
            }
        }
    }
}

/// What is at `name` in `dir` (not following a symlink); `None` if nothing.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// A temporary name beside `rel`: `.<name>.pulpdist-<random>`, with at most the first 64
/// bytes of the name (a name of 255 bytes must still leave room).
pub(crate) fn temp_beside(rel: &Path) -> PathBuf {
    temp_named(rel, &temp_tag())
}

/// The random part of a temporary name (see [`temp_named`]).
pub(crate) fn temp_tag() -> [u8; 6] {
    let mut r = [0u8; 6];
    let _ = getrandom::getrandom(&mut r);
    r
}

/// The temporary name beside `rel` with the random part `r`: a caller keeping many of
/// them keeps `r` (6 bytes), not the path.
pub(crate) fn temp_named(rel: &Path, r: &[u8; 6]) -> PathBuf {
    let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
    let mut t = b".".to_vec();
    t.extend_from_slice(&name[..name.len().min(64)]);
    t.extend_from_slice(format!(".pulpdist-{}", hex::encode(r)).as_bytes());
    rel.with_file_name(OsStr::from_bytes(&t))
}

/// One pass of [`Tree::remove_ranked`] over the directory `dir` (at `path`): files of rank
/// `pass` (all files, and then the directories, in the last pass).
fn remove_pass(
    dir: &OwnedFd,
    path: &Path,
    pass: u8,
    rank: &dyn Fn(&OsStr) -> u8,
    hit: &dyn Fn(&Path),
) -> Result<(), SyncError> {
    let mut names = Vec::new();
    let mut listing = rustix::fs::Dir::read_from(dir).map_err(io).at(path)?;
    while let Some(e) = listing.read() {
        let e = e.map_err(io).at(path)?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        let p = path.join(&name);
        match kind_at(dir, &name).at(&p)? {
            Some(FileType::Directory) => {
                let sub = rustix::fs::openat(dir, &name, DIR_FLAGS, Mode::empty())
                    .map_err(io)
                    .at(&p)?;
                remove_pass(&sub, &p, pass, rank, hit)?;
                if pass == 2 {
                    rustix::fs::unlinkat(dir, &name, AtFlags::REMOVEDIR)
                        .map_err(io)
                        .at(&p)?;
                }
            }
            Some(_) if pass == 2 || rank(&name) == pass => {
                hit(&p);
                rustix::fs::unlinkat(dir, &name, AtFlags::empty())
                    .map_err(io)
                    .at(&p)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn timestamps(mtime: Mtime) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.secs,
        tv_nsec: i64::from(mtime.nanos),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Sets the mtime of an open file (not through any path).
pub(crate) fn set_file_mtime(f: &File, mtime: Mtime) -> std::io::Result<()> {
    rustix::fs::futimens(f, &timestamps(mtime)).map_err(io)
}

/// Sets the mode and mtime of an open file or directory, and with `flush` flushes them
/// (without: the caller flushes the filesystem once for many).
pub(crate) fn set_fd_attrs(
    fd: &OwnedFd,
    mode: u32,
    mtime: Mtime,
    flush: bool,
) -> std::io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io)?;
    rustix::fs::futimens(fd, &timestamps(mtime)).map_err(io)?;
    if flush {
        rustix::fs::fsync(fd).map_err(io)?;
    }
    Ok(())
}

impl Tree {
    /// Flushes everything written to the mirror's filesystem (one `syncfs`): the files of
    /// a large plan are written unflushed and made durable together before any is renamed.
    pub(crate) fn sync_filesystem(&self) -> Result<(), SyncError> {
        rustix::fs::syncfs(&*self.root)
            .map_err(io)
            .at(&self.root_path)
    }
}

/// Flushes an open directory's entries.
pub(crate) fn sync(fd: &OwnedFd) -> std::io::Result<()> {
    rustix::fs::fsync(fd).map_err(io)
}

/// The mtime of an open directory (to put back if a sync fails).
pub(crate) fn mtime_of(fd: &OwnedFd) -> std::io::Result<Mtime> {
    let st = rustix::fs::fstat(fd).map_err(io)?;
    Ok(Mtime {
        secs: st.st_mtime,
        nanos: (st.st_mtime_nsec as u32).min(999_999_999),
    })
}

/// Puts an mtime back on an open directory.
pub(crate) fn set_mtime(fd: &OwnedFd, mtime: Mtime) -> std::io::Result<()> {
    rustix::fs::futimens(fd, &timestamps(mtime)).map_err(io)
}

/// Whether a file name matches one of `patterns`.
pub(crate) fn named(name: &OsStr, patterns: &[&str]) -> bool {
    patterns
        .iter()
        .any(|p| glob_match(p.as_bytes(), name.as_bytes()))
}
