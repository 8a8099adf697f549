//! Reading a store from an object store (`s3://bucket/prefix`, or any `object_store` backend).
//!
//! The object store client retries transient failures itself. The caller owns the tokio
//! runtime and passes its handle; calls block on it, so they must not be made from inside
//! that runtime's tasks (the executor calls them from its own threads).

use std::ops::Range;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt};
use tokio::runtime::Handle;

use pulpdist_format::PackId;

use crate::error::SyncError;
use crate::store::{head_key, HeadFetch, StoreReader};

/// A store under a key prefix of an object store.
#[derive(Debug, Clone)]
pub struct ObjectStoreReader {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: Handle,
}

impl ObjectStoreReader {
    /// Reads under `prefix` of `store`; `url` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str, rt: Handle) -> Self {
        ObjectStoreReader {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.trim_end_matches('/').to_string(),
            rt,
        }
    }

    fn key(&self, k: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(k)
        } else {
            ObjectPath::from(format!("{}/{k}", self.prefix))
        }
    }

    fn err(&self, key: &str, e: object_store::Error) -> SyncError {
        match e {
            object_store::Error::NotFound { .. } => SyncError::NotFound {
                store: self.url.clone(),
                object: key.to_string(),
            },
            e => SyncError::Http {
                url: format!("{}/{key}", self.url),
                status: None,
                temporary: matches!(e, object_store::Error::Generic { .. }),
                detail: e.to_string(),
            },
        }
    }
}

impl StoreReader for ObjectStoreReader {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn get_head(&self, tree: &str, if_none_match: Option<&str>) -> Result<HeadFetch, SyncError> {
        let key = head_key(tree)?;
        let opts = GetOptions {
            if_none_match: if_none_match.map(str::to_string),
            ..Default::default()
        };
        // No more than the format's largest head is read, whatever size the store claims.
        let max = pulpdist_format::MAX_HEAD_SIZE;
        let got = self.rt.block_on(async {
            use futures_util::StreamExt;
            let r = self.store.get_opts(&self.key(&key), opts).await?;
            let etag = r.meta.e_tag.clone();
            let mut bytes = Vec::new();
            if r.meta.size <= max as u64 {
                let mut body = r.into_stream();
                while let Some(part) = body.next().await {
                    bytes.extend_from_slice(&part?);
                    if bytes.len() > max {
                        break;
                    }
                }
            } else {
                bytes.resize(max + 1, 0);
            }
            Ok::<_, object_store::Error>((bytes, etag))
        });
        match got {
            Ok((bytes, etag)) => {
                if bytes.len() > max {
                    return Err(SyncError::Http {
                        url: format!("{}/{key}", self.url),
                        status: None,
                        detail: format!("head larger than {max} bytes"),
                        temporary: false,
                    });
                }
                Ok(HeadFetch::Found { bytes, etag })
            }
            Err(object_store::Error::NotModified { .. }) => Ok(HeadFetch::NotModified),
            Err(object_store::Error::NotFound { .. }) => Ok(HeadFetch::Missing),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn get_range(&self, pack: &PackId, range: Range<u64>) -> Result<Vec<u8>, SyncError> {
        let key = pack.object_key();
        let wanted = range.end - range.start;
        let b = self
            .rt
            .block_on(self.store.get_range(&self.key(&key), range))
            .map_err(|e| self.err(&key, e))?;
        if b.len() as u64 != wanted {
            return Err(SyncError::Short {
                store: self.url.clone(),
                object: key,
                got: b.len() as u64,
                wanted,
            });
        }
        Ok(b.to_vec())
    }

    fn get_pack(&self, pack: &PackId, size: u64) -> Result<Vec<u8>, SyncError> {
        // A GET of the whole object, read no further than the size the head gives.
        let key = pack.object_key();
        let b = self
            .rt
            .block_on(async {
                let r = self.store.get(&self.key(&key)).await?;
                if r.meta.size != size {
                    return Ok(Err(r.meta.size));
                }
                r.bytes().await.map(Ok)
            })
            .map_err(|e| self.err(&key, e))?;
        match b {
            Ok(b) => Ok(b.to_vec()),
            Err(actual) => Err(SyncError::Mismatch {
                object: format!("{}/{key}", self.url),
                detail: format!("object is {actual} bytes; the signed head says {size}"),
            }),
        }
    }
}
