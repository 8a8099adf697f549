//! Reading a store: the trait every transport implements, and the local directory reader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;

use pulpdist_format::PackId;

use crate::error::SyncError;

/// Read access to a store. One call is one store request (what `--json` counts).
pub trait StoreReader: Send + Sync {
    /// Where the store is (a path or URL), for messages.
    fn describe(&self) -> String;
    /// The head of `tree`, or `None` if the store has none.
    fn get_head(&self, tree: &str) -> Result<Option<Vec<u8>>, SyncError>;
    /// One byte range of a pack.
    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError>;
    /// A whole pack.
    fn get_pack(&self, pack: &PackId) -> Result<Vec<u8>, SyncError>;
}

/// A store in a local directory (or a mounted file system).
#[derive(Clone, Debug)]
pub struct LocalStoreReader {
    root: PathBuf,
}

impl LocalStoreReader {
    /// Reads the store at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStoreReader { root: root.into() }
    }

    fn open(&self, key: &str) -> Result<File, SyncError> {
        let path = self.root.join(key);
        File::open(&path).map_err(|e| self.err(key, e))
    }

    fn err(&self, key: &str, e: std::io::Error) -> SyncError {
        if e.kind() == std::io::ErrorKind::NotFound {
            SyncError::NotFound {
                store: self.describe(),
                object: key.into(),
            }
        } else {
            SyncError::Read {
                store: self.describe(),
                object: key.into(),
                source: e,
            }
        }
    }
}

impl StoreReader for LocalStoreReader {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get_head(&self, tree: &str) -> Result<Option<Vec<u8>>, SyncError> {
        pulpdist_format::validate_tree_name(tree).map_err(|source| SyncError::Format {
            object: "tree name".into(),
            source,
        })?;
        let key = format!("heads/{tree}");
        match self.open(&key) {
            Ok(f) => {
                let mut buf = Vec::new();
                f.take(pulpdist_format::MAX_HEAD_SIZE as u64 + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| self.err(&key, e))?;
                Ok(Some(buf))
            }
            Err(SyncError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let key = pack.object_key();
        let mut f = self.open(&key)?;
        f.seek(SeekFrom::Start(range.start))
            .map_err(|e| self.err(&key, e))?;
        let wanted = range.end.saturating_sub(range.start);
        let mut buf = Vec::with_capacity(wanted.min(256 << 20) as usize);
        f.take(wanted)
            .read_to_end(&mut buf)
            .map_err(|e| self.err(&key, e))?;
        if buf.len() as u64 != wanted {
            return Err(SyncError::Short {
                store: self.describe(),
                object: key,
                got: buf.len() as u64,
                wanted,
            });
        }
        Ok(buf)
    }

    fn get_pack(&self, pack: &PackId) -> Result<Vec<u8>, SyncError> {
        let key = pack.object_key();
        let mut buf = Vec::new();
        self.open(&key)?
            .read_to_end(&mut buf)
            .map_err(|e| self.err(&key, e))?;
        Ok(buf)
    }
}
