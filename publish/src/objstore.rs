//! Publishing to an object store (S3 or any other `object_store` backend), through the
//! adapter the sync's reader uses too ([`pulpdist_bucket`]).
//!
//! Packs go up whole when small and as multipart uploads when large; the head is written
//! with a conditional put (`If-None-Match: *` for the first version, `If-Match: <etag>`
//! after), so of two publishers racing on one tree exactly one wins and the other fails
//! with [`PublishError::HeadChanged`] before anything it wrote is named. A local lock in the
//! publisher's state directory keeps two publishers on one machine apart before that. The
//! previous head is read no further than the format's largest head.
//!
//! The caller owns the tokio runtime and passes its handle; every call blocks on it, so
//! these methods must not be called from inside that runtime's tasks.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::{Attribute, Attributes, ObjectStore, PutMode, UpdateVersion};
use pulpdist_bucket::{Bucket, HeadRead, PutFileError};
use tokio::runtime::Handle;

use pulpdist_format::pack::PACK_CACHE_CONTROL;
use pulpdist_format::{FormatError, PackId, MAX_HEAD_SIZE};

use crate::error::{IoContext, PublishError};
use crate::store::{lock_file, ListedPack, Store, StoreLock, StoredHead};

/// Packs larger than this go up as multipart uploads, in parts of this size.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;

/// A store in an object store under a key prefix.
#[derive(Debug, Clone)]
pub struct ObjectStoreTarget {
    bucket: Bucket,
    part_size: usize,
    head_cache_control: String,
}

impl ObjectStoreTarget {
    /// Writes under `prefix` (no leading or trailing slash; may be empty) of `store`;
    /// `url` names the store in messages (`s3://bucket/prefix`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str, rt: Handle) -> Self {
        ObjectStoreTarget {
            bucket: Bucket::new(store, prefix, url, rt),
            part_size: DEFAULT_PART_SIZE,
            head_cache_control: "public, max-age=10".into(),
        }
    }

    /// Sets the multipart part size (at least 5 MiB on S3).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    fn err(&self, key: &str, source: pulpdist_bucket::Error) -> PublishError {
        PublishError::Store {
            object: self.bucket.object_url(key),
            source: Box::new(source),
        }
    }

    /// Every object under `dir/`.
    fn list(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>, PublishError> {
        self.bucket
            .list(dir)
            .map_err(|e| self.err(&format!("{dir}/"), e))
    }

    fn attributes(cache_control: &str) -> Attributes {
        let mut a = Attributes::new();
        a.insert(Attribute::CacheControl, cache_control.to_string().into());
        a.insert(Attribute::ContentType, "application/octet-stream".into());
        a
    }
}

impl Store for ObjectStoreTarget {
    fn describe(&self) -> String {
        self.bucket.url().to_string()
    }

    fn lock(&self, tree: &str, state_dir: &Path) -> Result<StoreLock, PublishError> {
        lock_file(state_dir.join("publish.lock"), tree)
    }

    fn read_head(&self, tree: &str) -> Result<Option<StoredHead>, PublishError> {
        let key = format!("heads/{tree}");
        match self.bucket.read_head(&key, None, MAX_HEAD_SIZE) {
            Ok(HeadRead::Found { bytes, .. }) if bytes.len() > MAX_HEAD_SIZE => {
                Err(PublishError::Format {
                    object: self.bucket.object_url(&key),
                    source: FormatError::Invalid {
                        what: "tree head",
                        reason: format!("larger than {MAX_HEAD_SIZE} bytes"),
                    },
                })
            }
            Ok(HeadRead::Found {
                bytes,
                etag,
                version,
            }) => Ok(Some(StoredHead {
                bytes,
                etag,
                version,
            })),
            Ok(HeadRead::NotModified | HeadRead::Missing) => Ok(None),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn put_head(
        &self,
        tree: &str,
        bytes: &[u8],
        expected: Option<&StoredHead>,
        expected_version: Option<u64>,
    ) -> Result<(), PublishError> {
        let key = format!("heads/{tree}");
        let mode = match expected {
            None => PutMode::Create,
            Some(h) => PutMode::Update(UpdateVersion {
                e_tag: h.etag.clone(),
                version: h.version.clone(),
            }),
        };
        let attributes = Self::attributes(&self.head_cache_control);
        match self.bucket.put(&key, bytes.to_vec(), attributes, mode) {
            Ok(()) => Ok(()),
            Err(pulpdist_bucket::Error::Precondition { .. })
            | Err(pulpdist_bucket::Error::AlreadyExists { .. }) => Err(PublishError::HeadChanged {
                tree: tree.into(),
                expected: expected_version,
            }),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn put_history(&self, tree: &str, version: u64, bytes: &[u8]) -> Result<(), PublishError> {
        let key = pulpdist_format::history_key(tree, version);
        let attributes = Self::attributes(PACK_CACHE_CONTROL);
        match self
            .bucket
            .put(&key, bytes.to_vec(), attributes, PutMode::Create)
        {
            Ok(()) | Err(pulpdist_bucket::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn list_packs(&self) -> Result<Vec<ListedPack>, PublishError> {
        let mut out: Vec<ListedPack> = self
            .list("packs")?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let id = name.strip_suffix(".pack")?.parse::<PackId>().ok()?;
                Some(ListedPack {
                    id,
                    size: m.size,
                    modified: m.last_modified.timestamp(),
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn list_trees(&self) -> Result<Vec<String>, PublishError> {
        let mut out: Vec<String> = self
            .list("heads")?
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter(|n| pulpdist_format::validate_tree_name(n).is_ok())
            .collect();
        out.sort();
        Ok(out)
    }

    fn list_history(&self, tree: &str) -> Result<Vec<u64>, PublishError> {
        let mut out: Vec<u64> = self
            .list(&format!("history/{tree}"))?
            .into_iter()
            .filter_map(|m| pulpdist_format::history_version(m.location.filename()?))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn read_object(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, PublishError> {
        match self.bucket.read_head(key, None, limit) {
            Ok(HeadRead::Found { bytes, .. }) => Ok(Some(bytes)),
            Ok(HeadRead::NotModified | HeadRead::Missing) => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn replace_object(&self, key: &str, bytes: &[u8]) -> Result<(), PublishError> {
        let attributes = Self::attributes("no-store");
        self.bucket
            .put(key, bytes.to_vec(), attributes, PutMode::Overwrite)
            .map_err(|e| self.err(key, e))
    }

    fn remove(&self, key: &str) -> Result<bool, PublishError> {
        self.bucket.delete(key).map_err(|e| self.err(key, e))
    }

    fn read_pack_range(&self, id: PackId, range: Range<u64>) -> Result<Vec<u8>, PublishError> {
        let key = id.object_key();
        let wanted = range.end - range.start;
        match self.bucket.read_range(&key, range) {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(got)) => Err(PublishError::Short {
                object: self.bucket.object_url(&key),
                got,
                wanted,
            }),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn tmp_dir(&self) -> Option<PathBuf> {
        None
    }

    fn put_pack(&self, id: PackId, file: &Path) -> Result<(), PublishError> {
        let key = id.object_key();
        let mut f = File::open(file).at(file)?;
        let len = f.metadata().at(file)?.len();
        let attributes = Self::attributes(PACK_CACHE_CONTROL);
        match self
            .bucket
            .put_file(&key, &mut f, len, self.part_size, attributes)
        {
            Ok(()) => {}
            Err(PutFileError::Io(e)) => return Err(e).at(file),
            Err(PutFileError::Store(e)) => return Err(self.err(&key, e)),
        }
        std::fs::remove_file(file).at(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_larger_than_the_format_allows_is_refused_unread() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let mem = Arc::new(object_store::memory::InMemory::new());
        let t = ObjectStoreTarget::new(mem, "p", "mem://b/p", rt.handle().clone());
        assert!(t.read_head("t").expect("read").is_none());
        let huge = vec![0u8; MAX_HEAD_SIZE + 1];
        t.put_head("t", &huge, None, None).expect("planted");
        let e = t.read_head("t").expect_err("refused");
        assert!(e.to_string().contains("larger than"), "{e}");
        let small = vec![1u8; 10];
        // The head race: a put expecting no head loses to the one already there.
        let e = t.put_head("t", &small, None, None).expect_err("lost");
        assert!(matches!(e, PublishError::HeadChanged { .. }), "{e}");
    }
}
