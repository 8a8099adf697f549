//! Reading a store from an object store (`s3://bucket/prefix`, or any `object_store`
//! backend), through the adapter the publisher's target uses too ([`pulpdist_bucket`]).
//! Errors are mapped to what a sync does with them: a missing object is
//! [`SyncError::NotFound`] (a gap the rsync fallback may fill), a generic failure is
//! temporary (retried), anything else is not.

use std::ops::Range;
use std::sync::Arc;

use object_store::ObjectStore;
use pulpdist_bucket::{Bucket, HeadRead};
use tokio::runtime::Handle;

use pulpdist_format::PackId;

use crate::error::SyncError;
use crate::store::{head_key, HeadFetch, StoreReader};

/// A store under a key prefix of an object store.
#[derive(Debug, Clone)]
pub struct ObjectStoreReader {
    bucket: Bucket,
}

impl ObjectStoreReader {
    /// Reads under `prefix` of `store`; `url` names it in messages; calls block on `rt`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str, rt: Handle) -> Self {
        ObjectStoreReader {
            bucket: Bucket::new(store, prefix, url, rt),
        }
    }

    fn err(&self, key: &str, e: pulpdist_bucket::Error) -> SyncError {
        match e {
            pulpdist_bucket::Error::NotFound { .. } => SyncError::NotFound {
                store: self.bucket.url().to_string(),
                object: key.to_string(),
            },
            e => SyncError::Http {
                url: self.bucket.object_url(key),
                status: None,
                temporary: matches!(e, pulpdist_bucket::Error::Generic { .. }),
                detail: e.to_string(),
            },
        }
    }
}

impl StoreReader for ObjectStoreReader {
    fn describe(&self) -> String {
        self.bucket.url().to_string()
    }

    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        let key = head_key(tree)?;
        // No more than the format's largest head is read, whatever size the store claims.
        let max = pulpdist_format::MAX_HEAD_SIZE;
        match self.bucket.read_head(&key, if_none_match, max) {
            Ok(HeadRead::Found { bytes, .. }) if bytes.len() > max => Err(SyncError::Http {
                url: self.bucket.object_url(&key),
                status: None,
                detail: format!("head larger than {max} bytes"),
                temporary: false,
            }),
            Ok(HeadRead::Found { bytes, etag, .. }) => Ok(HeadFetch::Found { bytes, etag }),
            Ok(HeadRead::NotModified) => Ok(HeadFetch::NotModified),
            Ok(HeadRead::Missing) => Ok(HeadFetch::Missing),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let key = pack.object_key();
        let wanted = range.end - range.start;
        match self.bucket.read_range(&key, range) {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(got)) => Err(SyncError::Short {
                store: self.bucket.url().to_string(),
                object: key,
                got,
                wanted,
            }),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        // A GET of the whole object, read only if it has the size the head gives.
        let key = pack.object_key();
        match self.bucket.read_sized(&key, size) {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(actual)) => Err(SyncError::Mismatch {
                object: self.bucket.object_url(&key),
                detail: format!("object is {actual} bytes; the signed head says {size}"),
            }),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn pack_size(&self, pack: &PackId) -> Result<u64, SyncError> {
        let key = pack.object_key();
        self.bucket.size(&key).map_err(|e| self.err(&key, e))
    }

    fn list_trees(&self) -> Option<Result<Vec<String>, SyncError>> {
        let listed = self.bucket.list("heads").map_err(|e| self.err("heads/", e));
        Some(listed.map(|metas| {
            let mut names: Vec<String> = metas
                .iter()
                .filter_map(|m| m.location.filename().map(str::to_string))
                .filter(|n| pulpdist_format::validate_tree_name(n).is_ok())
                .collect();
            names.sort();
            names
        }))
    }

    fn list_versions(&self, tree: &str) -> Option<Result<Vec<u64>, SyncError>> {
        let key = format!("history/{tree}");
        let listed = self.bucket.list(&key).map_err(|e| self.err(&key, e));
        Some(listed.map(|metas| {
            let mut v: Vec<u64> = metas
                .iter()
                .filter_map(|m| {
                    m.location
                        .filename()
                        .and_then(pulpdist_format::history_version)
                })
                .collect();
            v.sort_unstable();
            v
        }))
    }

    fn get_archived(&self, tree: &str, version: u64) -> Result<Option<Vec<u8>>, SyncError> {
        head_key(tree)?;
        let key = pulpdist_format::history_key(tree, version);
        match self
            .bucket
            .read_head(&key, None, pulpdist_format::MAX_HEAD_SIZE)
        {
            Ok(HeadRead::Found { bytes, .. }) => Ok(Some(bytes)),
            Ok(_) => Ok(None),
            Err(e) => Err(self.err(&key, e)),
        }
    }
}
