//! Where publish writes: the [`Store`] trait, and a store in a local directory
//! (`heads/<tree>`, `packs/<id>.pack`, `locks/`, `tmp/`).
//!
//! Local objects are written to `tmp/` first, so a reader (or a web server serving the
//! directory) never sees a partial object: a pack is hard-linked into `packs/` (a pack is
//! written once and never replaced: the link fails if the name exists), a head is written
//! to `tmp/head-<tree>.<pid>`, flushed and renamed over `heads/<tree>`, then `heads/` is
//! flushed. `put_head` compares the stored head with the one the publish started from under
//! the tree's lock, which a second publisher finds held (`PublishError::Locked`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use pulpdist_format::{Condemned, PackId};

use crate::error::{IoContext, PublishError};

/// A head as read from a store, with what the store needs to replace it conditionally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHead {
    /// The signed head.
    pub bytes: Vec<u8>,
    /// The store's entity tag for it, if it has one.
    pub etag: Option<String>,
    /// The store's version id for it, if it has one.
    pub version: Option<String>,
}

/// A store publish can write to. Packs are written once and never replaced; the head is
/// replaced only if it is still the one read at the start (compare and swap).
pub trait Store: Send + Sync {
    /// Where the store is (a path or URL), for messages.
    fn describe(&self) -> String;
    /// Takes the tree's publish lock without waiting; held until the guard is dropped.
    /// `state_dir` is the publisher's own state directory for the tree.
    fn lock(&self, tree: &str, state_dir: &Path) -> Result<StoreLock, PublishError>;
    /// The current head of a tree, if any.
    fn read_head(&self, tree: &str) -> Result<Option<StoredHead>, PublishError>;
    /// Writes the head if the store still holds `expected` (`None`: no head yet).
    fn put_head(
        &self,
        tree: &str,
        bytes: &[u8],
        expected: Option<&StoredHead>,
        expected_version: Option<u64>,
    ) -> Result<(), PublishError>;
    /// Archives a signed head as `history/<tree>/<version>` unless the store has that
    /// version archived already (an archived head is written once, never replaced).
    fn put_history(&self, tree: &str, version: u64, bytes: &[u8]) -> Result<(), PublishError>;
    /// All packs with their sizes and times, sorted by id.
    fn list_packs(&self) -> Result<Vec<ListedPack>, PublishError>;
    /// The trees the store has heads of, sorted.
    fn list_trees(&self) -> Result<Vec<String>, PublishError>;
    /// The versions of `tree` archived under `history/`, sorted.
    fn list_history(&self, tree: &str) -> Result<Vec<u64>, PublishError>;
    /// Object `key` (a head, an archived head, the condemned list), read no further than
    /// `limit + 1` bytes; `None` if there is none.
    fn read_object(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, PublishError>;
    /// Replaces object `key` (the condemned list) atomically: a reader sees the old bytes
    /// or the new.
    fn replace_object(&self, key: &str, bytes: &[u8]) -> Result<(), PublishError>;
    /// Removes object `key` (a pack, an archived head); `false` if it was not there.
    fn remove(&self, key: &str) -> Result<bool, PublishError>;

    /// The garbage collector's condemned list (empty if there is none).
    fn read_condemned(&self) -> Result<Condemned, PublishError> {
        let key = pulpdist_format::CONDEMNED_KEY;
        match self.read_object(key, pulpdist_format::MAX_CONDEMNED_SIZE)? {
            None => Ok(Condemned::default()),
            Some(bytes) => Condemned::decode(&bytes).map_err(|source| PublishError::Format {
                object: format!(
                    "{}/{key} (a gc's list of packs to remove; if it is damaged, remove it: \
                     the next gc lists them again and waits its grace period anew)",
                    self.describe()
                ),
                source,
            }),
        }
    }
    /// One byte range of a pack.
    fn read_pack_range(&self, id: PackId, range: Range<u64>) -> Result<Vec<u8>, PublishError>;
    /// A local directory where packs are built before [`Store::put_pack`], if the store
    /// prefers one (the same file system, so a put is a rename); else the state directory is used.
    fn tmp_dir(&self) -> Option<PathBuf>;
    /// Puts a finished pack file, then removes the file.
    fn put_pack(&self, id: PackId, file: &Path) -> Result<(), PublishError>;
}

/// A pack as a store lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedPack {
    /// Its id.
    pub id: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// When it was stored (Unix seconds; a file's modification time, an object's
    /// last-modified time).
    pub modified: i64,
}

/// A writable store in a local directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

/// An exclusive lock on one tree of a store, released on drop (or when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl LocalStore {
    /// Opens (creating if needed) a store directory. Its own directories must be
    /// directories, not symlinks: one planted by another writer of the store would send
    /// packs, partial files and locks elsewhere. (The store's own path may be a symlink:
    /// that is the operator's.)
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, PublishError> {
        let root = root.into();
        for sub in ["heads", "packs", "locks", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at(&p)?;
            real_dirs(&root, &format!("{sub}/-"))?;
        }
        Ok(LocalStore { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Takes an exclusive lock on `path` (created if needed) without waiting, and writes our pid
/// into it so a second publisher can say who holds it.
pub(crate) fn lock_file(path: PathBuf, tree: &str) -> Result<StoreLock, PublishError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not through a symlink: the lock file is truncated and written.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).at(&path)?;
            let _ = writeln!(file, "pid {}", std::process::id());
            Ok(StoreLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                String::new()
            } else {
                format!(" by {holder}")
            };
            Err(PublishError::Locked {
                tree: tree.into(),
                path,
                holder,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).at(&path),
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn tmp_dir(&self) -> Option<PathBuf> {
        Some(self.root.join("tmp"))
    }

    fn lock(&self, tree: &str, _state_dir: &Path) -> Result<StoreLock, PublishError> {
        lock_file(self.root.join("locks").join(format!("{tree}.lock")), tree)
    }

    fn read_head(&self, tree: &str) -> Result<Option<StoredHead>, PublishError> {
        let path = self.root.join("heads").join(tree);
        regular_or_missing(&path)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(StoredHead {
                bytes,
                etag: None,
                version: None,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Replaces the head atomically if it still holds `expected` (compare and swap under the lock).
    fn put_head(
        &self,
        tree: &str,
        bytes: &[u8],
        expected: Option<&StoredHead>,
        expected_version: Option<u64>,
    ) -> Result<(), PublishError> {
        let now = self.read_head(tree)?;
        if now.as_ref().map(|h| &h.bytes) != expected.map(|h| &h.bytes) {
            return Err(PublishError::HeadChanged {
                tree: tree.into(),
                expected: expected_version,
            });
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("head-{tree}.{}", std::process::id()));
        write_synced(&tmp, bytes)?;
        let dest = self.root.join("heads").join(tree);
        fs::rename(&tmp, &dest).at(&dest)?;
        sync_dir(&self.root.join("heads"))
    }

    fn put_history(&self, tree: &str, version: u64, bytes: &[u8]) -> Result<(), PublishError> {
        let dest = self.root.join(pulpdist_format::history_key(tree, version));
        if fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&dir).at(&dir)?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("history-{tree}.{}", std::process::id()));
        write_synced(&tmp, bytes)?;
        // Written once: a link fails if the version is archived already, which is kept.
        let linked = fs::hard_link(&tmp, &dest);
        fs::remove_file(&tmp).at(&tmp)?;
        match linked {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e).at(&dest),
        }
    }

    fn list_packs(&self) -> Result<Vec<ListedPack>, PublishError> {
        let mut out = Vec::new();
        for (name, meta) in list_dir(&self.root.join("packs"))? {
            // Only regular files under their canonical name (lower-case hex): anything
            // else in packs/ is not a pack of this store, and is never touched.
            let Some(id) = name
                .strip_suffix(".pack")
                .and_then(|h| h.parse::<PackId>().ok())
                .filter(|id| meta.is_file() && id.to_hex() + ".pack" == name)
            else {
                continue;
            };
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            out.push(ListedPack {
                id,
                size: meta.len(),
                modified,
            });
        }
        out.sort();
        Ok(out)
    }

    fn list_trees(&self) -> Result<Vec<String>, PublishError> {
        // A symlinked head is a tree too (a reader follows the link): it is listed, and
        // reading it refuses anything but a regular file.
        let mut out: Vec<String> = list_dir(&self.root.join("heads"))?
            .into_iter()
            .filter(|(n, m)| {
                (m.is_file() || m.file_type().is_symlink())
                    && pulpdist_format::validate_tree_name(n).is_ok()
            })
            .map(|(n, _)| n)
            .collect();
        out.sort();
        Ok(out)
    }

    fn list_history(&self, tree: &str) -> Result<Vec<u64>, PublishError> {
        let dir = self.root.join("history").join(tree);
        // Archived heads are removed by a gc: never through a symlinked directory.
        real_dirs(&self.root, &format!("history/{tree}/x"))?;
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out: Vec<u64> = list_dir(&dir)?
            .into_iter()
            .filter_map(|(n, _)| pulpdist_format::history_version(&n))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn read_object(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, PublishError> {
        let path = self.root.join(key);
        regular_or_missing(&path)?;
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        let mut buf = Vec::new();
        f.take(limit as u64 + 1).read_to_end(&mut buf).at(&path)?;
        Ok(Some(buf))
    }

    fn replace_object(&self, key: &str, bytes: &[u8]) -> Result<(), PublishError> {
        let dest = self.root.join(key);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&dir).at(&dir)?;
        let name = key.replace('/', "-");
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{name}.{}", std::process::id()));
        write_synced(&tmp, bytes)?;
        fs::rename(&tmp, &dest).at(&dest)?;
        sync_dir(&dir)
    }

    fn remove(&self, key: &str) -> Result<bool, PublishError> {
        let path = self.root.join(key);
        real_dirs(&self.root, key)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at(&path),
        }
    }

    fn read_pack_range(&self, id: PackId, range: Range<u64>) -> Result<Vec<u8>, PublishError> {
        let path = self.root.join(id.object_key());
        regular_or_missing(&path)?;
        let mut f = File::open(&path).at(&path)?;
        f.seek(SeekFrom::Start(range.start)).at(&path)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        f.read_exact(&mut buf).at(&path)?;
        Ok(buf)
    }

    /// Moves a finished pack file from `tmp/` into `packs/`.
    fn put_pack(&self, id: PackId, file: &Path) -> Result<(), PublishError> {
        let dest = self.root.join(id.object_key());
        // Packs are written once: never replace one (hard link fails if the name exists).
        // A missing partial pack is named as such (another publish of this store removes
        // partial packs a day old: this process was stopped that long).
        // Twice at most: a pack found under the name may be removed (by a gc) before it
        // is opened, and the link is then tried again.
        let mut tries = 0;
        loop {
            tries += 1;
            match fs::hard_link(file, &dest) {
                Ok(()) => break,
                // Named by content: the same bytes may be there already (another tree, or
                // a publish that failed after its packs).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    match equal_pack(file, &dest)? {
                        Existing::Equal => break,
                        Existing::Other => return Err(PublishError::PackExists { pack: id }),
                        Existing::Gone if tries < 2 => continue,
                        Existing::Gone => {
                            let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
                            return Err(gone).at(&dest);
                        }
                    }
                }
                Err(e) => {
                    return Err(e).at_with(|| match file.exists() {
                        true => dest.clone(),
                        false => file.to_path_buf(),
                    })
                }
            }
        }
        fs::remove_file(file).at(file)?;
        sync_dir(&self.root.join("packs"))
    }
}

/// What is stored under a pack's name when a pack of that name is put.
#[derive(Debug, PartialEq)]
enum Existing {
    /// A regular file of the same bytes that not everyone may write: kept, and made young
    /// for the gc if it has no other link.
    Equal,
    /// Anything else: other bytes, a symbolic link, a FIFO, a directory, a file anyone may
    /// write.
    Other,
    /// Nothing any more.
    Gone,
}

/// Compares the pack at `dest` with the part file `part` through one handle that does not
/// follow a symlink nor wait on a FIFO, and makes an equal one young (8.10: a gc spares
/// an unreached pack while it is young). Only that: a pack that stays old may be
/// condemned while this publish runs, which the check before the head finds. A file
/// with other links (a store copied with `cp -al`, a link to a file elsewhere) is kept
/// but not touched: its time is another name's too.
fn equal_pack(part: &Path, dest: &Path) -> Result<Existing, PublishError> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = File::options()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(dest);
    let mut existing = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Gone),
        Err(e) => {
            use rustix::io::Errno;
            // A symbolic link, or a socket (or a FIFO without a writer would be opened:
            // non-blocking, it is then not a regular file below).
            let errno = Errno::from_io_error(&e);
            if errno == Some(Errno::LOOP) || errno == Some(Errno::NXIO) {
                return Ok(Existing::Other);
            }
            return Err(e).at(dest);
        }
    };
    let meta = existing.metadata().at(dest)?;
    // Not one anyone may change later (a group may write the packs of a store it shares:
    // its publishers' umask is 002).
    if !meta.is_file() || meta.mode() & 0o002 != 0 {
        return Ok(Existing::Other);
    }
    let mut ours = File::open(part).at(part)?;
    if meta.len() != ours.metadata().at(part)?.len()
        || !same_bytes((&mut ours, part), (&mut existing, dest))?
    {
        return Ok(Existing::Other);
    }
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    let times = rustix::fs::Timestamps {
        last_access: now,
        last_modification: now,
    };
    if meta.nlink() != 1 {
        tracing::debug!(pack = %dest.display(), "an equal pack already stored has other links: not made young");
    } else if let Err(e) = rustix::fs::futimens(&existing, &times) {
        tracing::debug!(pack = %dest.display(), error = %e, "an equal pack already stored could not be made young");
    }
    Ok(Existing::Equal)
}

/// Whether the open files `a` and `b` (each with its path), of the same length, hold the
/// same bytes.
fn same_bytes(a: (&mut File, &Path), b: (&mut File, &Path)) -> Result<bool, PublishError> {
    use std::io::Read;
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.0.read(&mut x).at(a.1)?;
        if n == 0 {
            return Ok(b.0.read(&mut y[..1]).at(b.1)? == 0);
        }
        match b.0.read_exact(&mut y[..n]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e).at(b.1),
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// Refuses a path that exists and is not a regular file (after following a link), so that
/// a FIFO or a device planted in the store is not opened (a FIFO would block forever).
fn regular_or_missing(path: &Path) -> Result<(), PublishError> {
    match fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(std::io::Error::other("not a regular file")).at(path),
        _ => Ok(()),
    }
}

/// Refuses `key` when a directory on its way below `root` is a symlink (or not a
/// directory): what a gc removes is removed inside the store only.
fn real_dirs(root: &Path, key: &str) -> Result<(), PublishError> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = key.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                return Err(std::io::Error::other(
                    "not a directory of the store (a symlink?)",
                ))
                .at(&dir)
            }
            _ => {}
        }
    }
    Ok(())
}

/// The entries of a directory whose names are UTF-8, with their metadata (not followed).
fn list_dir(dir: &Path) -> Result<Vec<(String, fs::Metadata)>, PublishError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let meta = e.metadata().at(e.path())?;
        out.push((name, meta));
    }
    Ok(out)
}

/// Writes a file and flushes it to disk.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PublishError> {
    // Made anew, never through whatever is at the name (a symlink planted in `tmp/` would
    // send the write elsewhere; a FIFO would block it).
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(path),
        _ => {}
    }
    let mut f = create_new(path).at(path)?;
    f.write_all(bytes).at(path)?;
    f.sync_all().at(path)
}

/// Creates a file that did not exist, not following a symlink at its name.
pub fn create_new(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_or_fifo_planted_at_a_temporary_name_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").expect("victim");
        let tmp = dir.path().join("head-t.1");
        std::os::unix::fs::symlink(&victim, &tmp).expect("symlink");
        write_synced(&tmp, b"new head").expect("written");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(fs::read(&tmp).expect("tmp"), b"new head");
        assert!(!fs::symlink_metadata(&tmp)
            .expect("meta")
            .file_type()
            .is_symlink());
        // A FIFO there does not block the write.
        fs::remove_file(&tmp).expect("rm");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        write_synced(&tmp, b"again").expect("written");
        assert_eq!(fs::read(&tmp).expect("tmp"), b"again");
        // A store whose own directory is a symlink is not opened.
        let store = dir.path().join("store");
        for sub in ["heads", "packs", "locks"] {
            fs::create_dir_all(store.join(sub)).expect("mkdir");
        }
        std::os::unix::fs::symlink(dir.path(), store.join("tmp")).expect("symlink");
        let err = LocalStore::open(&store).expect_err("tmp is a symlink");
        assert!(err.to_string().contains("store/tmp"), "{err}");
        // The lock file is not opened through a symlink.
        let lock = dir.path().join("t.lock");
        std::os::unix::fs::symlink(&victim, &lock).expect("symlink");
        assert!(lock_file(lock, "t").is_err());
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
    }

    /// What is found under a pack's name decides: only a regular file with the same bytes
    /// that not everyone may write is the same pack, made young unless it has other links;
    /// nothing is written or touched through anything else.
    #[test]
    fn a_pack_already_under_its_name_is_kept_only_if_equal_and_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::open(dir.path().join("store")).expect("store");
        let id = PackId([7; 32]);
        let dest = store.root().join(id.object_key());
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut flipped = bytes.clone();
        flipped[2_500_000] ^= 1;
        let outside = dir.path().join("outside");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        let put = |plant: &dyn Fn()| {
            let _ = fs::remove_file(&dest);
            let _ = fs::remove_dir(&dest);
            fs::write(&outside, &bytes).expect("outside");
            File::options()
                .write(true)
                .open(&outside)
                .and_then(|f| f.set_modified(old))
                .expect("mtime");
            plant();
            let part = store.root().join("tmp/part");
            fs::write(&part, &bytes).expect("part");
            let put = store.put_pack(id, &part);
            let untouched = fs::read(&outside).expect("outside") == bytes
                && fs::metadata(&outside).and_then(|m| m.modified()).ok() == Some(old);
            assert!(untouched, "nothing outside the store changed");
            put.map(|()| fs::read(&dest).expect("stored") == bytes)
        };
        let other = |r: Result<bool, PublishError>| matches!(r, Err(PublishError::PackExists { pack }) if pack == id);
        // Nothing there: linked.
        assert!(put(&|| {}).expect("put"));
        // Equal bytes, old: kept, made young again; so is one its group may write.
        let equal = |mode: u32| {
            fs::copy(&outside, &dest).expect("copy");
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).expect("chmod");
            File::options()
                .write(true)
                .open(&dest)
                .and_then(|f| f.set_modified(old))
                .expect("mtime");
        };
        let young = || {
            let t = fs::metadata(&dest)
                .and_then(|m| m.modified())
                .expect("mtime");
            t > old + std::time::Duration::from_secs(1_000_000)
        };
        for mode in [0o644, 0o664] {
            assert!(put(&|| equal(mode)).expect("equal kept"), "{mode:o}");
            assert!(young(), "{mode:o}");
        }
        // A hard link to a file elsewhere with equal bytes: kept, not touched (checked
        // by `put` for every case).
        let hard = || fs::hard_link(&outside, &dest).expect("link");
        assert!(put(&hard).expect("linked kept"));
        assert!(!young());
        // Same length, one byte other (compared to the end); shorter; longer.
        let dest_ref = &dest;
        let damaged = |b: Vec<u8>| move || fs::write(dest_ref, &b).expect("plant");
        assert!(other(put(&damaged(flipped.clone()))));
        assert!(other(put(&damaged(bytes[..1000].to_vec()))));
        assert!(other(put(&damaged([&bytes[..], b"x"].concat()))));
        // Equal bytes, but through a symlink, or writable by anyone.
        let symlink = || std::os::unix::fs::symlink(&outside, &dest).expect("symlink");
        assert!(other(put(&symlink)));
        assert!(other(put(&|| equal(0o666))));
        // A FIFO (not waited on) and a directory.
        let fifo = || {
            use rustix::fs::{mknodat, FileType, Mode, CWD};
            mknodat(CWD, &dest, FileType::Fifo, Mode::from_raw_mode(0o600), 0).expect("fifo")
        };
        assert!(other(put(&fifo)));
        let directory = || fs::create_dir(&dest).expect("dir");
        assert!(other(put(&directory)));
    }
}
