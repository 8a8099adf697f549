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
use std::ffi::{OsStr, OsString};
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

/// A name in an open directory of the mirror: where one write goes.
#[derive(Clone, Debug)]
pub(crate) struct At {
    pub(crate) dir: DirFd,
    pub(crate) name: OsString,
    /// The full path, for messages only (never opened).
    pub(crate) path: PathBuf,
}

/// The mirror's directories, opened without following symlinks.
pub(crate) struct Tree {
    root_path: PathBuf,
    root: DirFd,
    dirs: HashMap<PathBuf, DirFd>,
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Tree {
    /// Opens the mirror directory (which the operator named, so a symlink to it is fine).
    pub(crate) fn open(dest: &Path) -> Result<Tree, SyncError> {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)
        .at(dest)?;
        Ok(Tree {
            root_path: dest.to_path_buf(),
            root: Arc::new(root),
            dirs: HashMap::new(),
        })
    }

    /// The directory `rel`, each component a real directory opened without following a
    /// symlink. With `create`, missing ones are made, and a file or symlink where a
    /// directory goes is removed (the plan moved what it must keep aside before).
    pub(crate) fn dir(&mut self, rel: &Path, create: bool) -> Result<DirFd, SyncError> {
        let mut cur = Arc::clone(&self.root);
        let mut so_far = PathBuf::new();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(SyncError::Unsafe {
                    path: self.root_path.join(rel),
                    reason: "path component is not a plain name".into(),
                });
            };
            so_far.push(name);
            if let Some(d) = self.dirs.get(&so_far) {
                cur = Arc::clone(d);
                continue;
            }
            let path = self.root_path.join(&so_far);
            let kind = kind_at(&cur, name).at(&path)?;
            match kind {
                Some(FileType::Directory) => {}
                Some(_) if create => {
                    rustix::fs::unlinkat(&*cur, name, AtFlags::empty())
                        .map_err(io)
                        .at(&path)?;
                    rustix::fs::mkdirat(&*cur, name, Mode::from_raw_mode(0o755))
                        .map_err(io)
                        .at(&path)?;
                }
                None if create => rustix::fs::mkdirat(&*cur, name, Mode::from_raw_mode(0o755))
                    .map_err(io)
                    .at(&path)?,
                Some(k) => {
                    return Err(SyncError::Unsafe {
                        path,
                        reason: if k == FileType::Symlink {
                            "parent is a symlink".into()
                        } else {
                            "parent is not a directory".into()
                        },
                    })
                }
                None => return Err(std::io::Error::from(std::io::ErrorKind::NotFound)).at(path),
            }
            // O_NOFOLLOW | O_DIRECTORY: swapped for a symlink since the check, it fails.
            let fd = rustix::fs::openat(&*cur, name, DIR_FLAGS, Mode::empty())
                .map_err(io)
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc_eloop()) {
                        std::io::Error::other("a symlink appeared where a directory was")
                    } else {
                        e
                    }
                })
                .at(&path)?;
            let fd = Arc::new(fd);
            self.dirs.insert(so_far.clone(), Arc::clone(&fd));
            cur = fd;
        }
        Ok(cur)
    }

    /// The entry `rel` (a path below the mirror): its directory opened as [`Tree::dir`]
    /// does, and its name.
    pub(crate) fn at(&mut self, rel: &Path, create_parents: bool) -> Result<At, SyncError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel.file_name().ok_or_else(|| SyncError::Unsafe {
            path: self.root_path.join(rel),
            reason: "no file name".into(),
        })?;
        Ok(At {
            dir: self.dir(parent, create_parents)?,
            name: name.to_owned(),
            path: self.root_path.join(rel),
        })
    }

    /// Forgets the handle of `rel` and below (it was removed or replaced).
    pub(crate) fn forget(&mut self, rel: &Path) {
        self.dirs.retain(|k, _| !k.starts_with(rel));
    }
}

/// ELOOP: what `O_NOFOLLOW` answers for a symlink.
fn libc_eloop() -> i32 {
    rustix::io::Errno::LOOP.raw_os_error()
}

/// What is at `name` in `dir` (not following a symlink); `None` if nothing.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

impl At {
    /// The same directory, another name.
    pub(crate) fn sibling(&self, name: OsString) -> At {
        At {
            dir: Arc::clone(&self.dir),
            path: self.path.with_file_name(&name),
            name,
        }
    }

    /// What is here (not following a symlink); `None` if nothing.
    pub(crate) fn kind(&self) -> Result<Option<FileType>, SyncError> {
        kind_at(&self.dir, &self.name).at(&self.path)
    }

    /// Whether a real directory is here.
    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.kind(), Ok(Some(FileType::Directory)))
    }

    /// A temporary name beside this one: `.<name>.pulpdist-<random>`.
    pub(crate) fn temp(&self) -> At {
        let mut r = [0u8; 6];
        let _ = getrandom::getrandom(&mut r);
        let short: String = self.name.to_string_lossy().chars().take(100).collect();
        self.sibling(format!(".{short}.pulpdist-{}", hex::encode(r)).into())
    }

    /// Creates a new file here (never an existing one, never through a symlink).
    pub(crate) fn create_new(&self) -> Result<File, SyncError> {
        let fd = rustix::fs::openat(
            &*self.dir,
            &self.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io)
        .at(&self.path)?;
        Ok(File::from(fd))
    }

    /// Renames this entry to `to` (both in open directories of the mirror).
    pub(crate) fn rename_to(&self, to: &At) -> Result<(), SyncError> {
        rustix::fs::renameat(&*self.dir, &self.name, &*to.dir, &to.name)
            .map_err(io)
            .at(&to.path)
    }

    /// Makes a symlink here pointing to `target`, with its mtime.
    pub(crate) fn symlink(&self, target: &[u8], mtime: Mtime) -> Result<(), SyncError> {
        rustix::fs::symlinkat(OsStr::from_bytes(target), &*self.dir, &self.name)
            .map_err(io)
            .at(&self.path)?;
        let t = timestamps(mtime);
        rustix::fs::utimensat(&*self.dir, &self.name, &t, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io)
            .at(&self.path)
    }

    /// Sets a regular file's mode and mtime through a handle opened without following a
    /// symlink, and flushes them.
    pub(crate) fn set_file_attrs(&self, mode: u32, mtime: Mtime) -> Result<(), SyncError> {
        let fd = rustix::fs::openat(
            &*self.dir,
            &self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)
        .at(&self.path)?;
        set_fd_attrs(&fd, mode, mtime).at(&self.path)
    }

    /// Removes a file or symlink here.
    pub(crate) fn remove_file(&self) -> Result<(), SyncError> {
        rustix::fs::unlinkat(&*self.dir, &self.name, AtFlags::empty())
            .map_err(io)
            .at(&self.path)
    }

    /// Removes an empty directory here.
    pub(crate) fn remove_dir(&self) -> Result<(), SyncError> {
        rustix::fs::unlinkat(&*self.dir, &self.name, AtFlags::REMOVEDIR)
            .map_err(io)
            .at(&self.path)
    }

    /// Opens the directory here without following a symlink.
    fn open_dir(&self) -> Result<OwnedFd, SyncError> {
        rustix::fs::openat(&*self.dir, &self.name, DIR_FLAGS, Mode::empty())
            .map_err(io)
            .at(&self.path)
    }

    /// Removes whatever is here (a file, a symlink, or a directory tree, never followed
    /// through a symlink). A directory's contents go in the order of `rank`: every file of
    /// rank 0 in the whole tree, then rank 1, then the rest, then the directories deepest
    /// first, so that no index in it names a file already gone.
    pub(crate) fn remove_ranked(
        &self,
        rank: &dyn Fn(&OsStr) -> u8,
        hit: &dyn Fn(&Path),
    ) -> Result<(), SyncError> {
        match self.kind()? {
            None => Ok(()),
            Some(FileType::Directory) => {
                for pass in 0..3u8 {
                    let d = self.open_dir()?;
                    remove_pass(&d, &self.path, pass, rank, hit)?;
                }
                self.remove_dir()
            }
            Some(_) => {
                hit(&self.path);
                self.remove_file()
            }
        }
    }
}

/// One pass of [`At::remove_ranked`] over the directory `dir` (at `path`): files of rank
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

/// Sets the mode and mtime of an open file or directory and flushes them.
pub(crate) fn set_fd_attrs(fd: &OwnedFd, mode: u32, mtime: Mtime) -> std::io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(io)?;
    rustix::fs::futimens(fd, &timestamps(mtime)).map_err(io)?;
    rustix::fs::fsync(fd).map_err(io)
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
