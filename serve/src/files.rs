//! Opening store objects to serve them: regular files only, never through a symlink, and
//! heads no larger than the format allows. Someone who can write into `heads/` or
//! `packs/` must not make the server publish another file it can read (its TLS key), read
//! `/dev/zero` into memory, or block on a FIFO.

use std::io::Read;
use std::path::Path;

/// Opens the store object `key` (`heads/<tree>`, `packs/<id>.pack`) of the store at
/// `root` for reading: every directory on the way opened with `O_NOFOLLOW | O_DIRECTORY`
/// from the store root (a `heads/` swapped for a symlink to the TLS directory fails), the
/// object itself with `O_NOFOLLOW` (a symlink is not served) and `O_NONBLOCK` (a FIFO does
/// not block the open), and only a regular file served. Anything else is "not found".
pub(crate) fn open_regular(root: &Path, key: &str) -> std::io::Result<(std::fs::File, u64)> {
    use rustix::fs::{FileType, Mode, OFlags};
    let not_served = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{what}, not served"))
    };
    let mut dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut parts = key.split('/').peekable();
    while let Some(part) = parts.next() {
        if part.is_empty() || part == "." || part == ".." {
            return Err(not_served("not a plain name"));
        }
        let last = parts.peek().is_none();
        let flags = if last {
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
        } else {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        dir = match rustix::fs::openat(&dir, part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                return Err(not_served("a symlink or not a directory on the way"))
            }
            Err(e) => return Err(e.into()),
        };
    }
    let st = rustix::fs::fstat(&dir)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(not_served("not a regular file"));
    }
    Ok((std::fs::File::from(dir), st.st_size.max(0) as u64))
}

/// A head, opened as [`open_regular`] opens it and no larger than the format's limit
/// (checked before reading, and again while reading: the file may grow).
pub(crate) fn read_head(root: &Path, key: &str) -> std::io::Result<Vec<u8>> {
    let (f, len) = open_regular(root, key)?;
    let max = pulpdist_format::MAX_HEAD_SIZE as u64;
    let too_large = || {
        std::io::Error::other(format!(
            "larger than a head may be ({max} bytes); not served"
        ))
    };
    if len > max {
        return Err(too_large());
    }
    let mut b = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut b)?;
    if b.len() as u64 > max {
        return Err(too_large());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: serve followed symlinks in the store and read heads without a limit.
    #[test]
    fn only_regular_files_of_bounded_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("store/heads")).expect("heads");
        std::fs::create_dir_all(d.join("tls")).expect("tls");
        std::fs::write(d.join("tls/server.key"), b"tls key").expect("secret");
        let h = d.join("store/heads");
        std::os::unix::fs::symlink(d.join("tls/server.key"), h.join("link")).expect("link");
        std::os::unix::fs::symlink("/dev/zero", h.join("zero")).expect("zero");
        std::fs::write(h.join("head"), b"a head").expect("head");
        std::fs::File::create(h.join("big"))
            .and_then(|f| f.set_len(pulpdist_format::MAX_HEAD_SIZE as u64 + 1))
            .expect("big");
        let fifo = std::process::Command::new("mkfifo")
            .arg(h.join("fifo"))
            .status()
            .expect("mkfifo");
        assert!(fifo.success());
        let root = d.join("store");
        for bad in [
            "heads/link",
            "heads/zero",
            "heads/fifo",
            "heads/missing",
            "heads/../heads/head",
        ] {
            let e = open_regular(&root, bad).expect_err(bad);
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{bad}: {e}");
        }
        assert!(open_regular(&root, "heads").is_err(), "a directory");
        assert_eq!(read_head(&root, "heads/head").expect("head"), b"a head");
        assert!(read_head(&root, "heads/big").is_err());
        // heads/ itself swapped for a symlink to another directory.
        std::fs::rename(&h, d.join("store/heads.real")).expect("move");
        std::os::unix::fs::symlink(d.join("tls"), &h).expect("swap");
        let e = open_regular(&root, "heads/server.key").expect_err("through heads/");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
}
