//! Opening store objects to serve them: regular files only, never through a symlink, and
//! heads no larger than the format allows. Someone who can write into `heads/` or
//! `packs/` must not make the server publish another file it can read (its TLS key), read
//! `/dev/zero` into memory, or block on a FIFO.

use std::io::Read;
use std::path::Path;

/// Opens a store object for reading: a regular file only, opened with `O_NOFOLLOW` (a
/// symlink is not served) and `O_NONBLOCK` (a FIFO does not block the open). Anything else
/// is "not found".
pub(crate) fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                std::io::Error::new(std::io::ErrorKind::NotFound, "a symlink, not served")
            }
            _ => e,
        })?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a regular file, not served",
        ));
    }
    Ok((f, md.len()))
}

/// A head, opened as [`open_regular`] opens it and no larger than the format's limit
/// (checked before reading, and again while reading: the file may grow).
pub(crate) fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
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
        std::fs::write(d.join("secret"), b"tls key").expect("secret");
        std::os::unix::fs::symlink(d.join("secret"), d.join("link")).expect("link");
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).expect("zero");
        std::fs::write(d.join("head"), b"a head").expect("head");
        std::fs::File::create(d.join("big"))
            .and_then(|f| f.set_len(pulpdist_format::MAX_HEAD_SIZE as u64 + 1))
            .expect("big");
        let fifo = std::process::Command::new("mkfifo")
            .arg(d.join("fifo"))
            .status()
            .expect("mkfifo");
        assert!(fifo.success());
        for bad in ["link", "zero", "fifo", "missing"] {
            let e = open_regular(&d.join(bad)).expect_err(bad);
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{bad}: {e}");
        }
        assert!(open_regular(&d.join(".")).is_err(), "a directory");
        assert_eq!(read_head(&d.join("head")).expect("head"), b"a head");
        assert!(read_head(&d.join("big")).is_err());
    }
}
