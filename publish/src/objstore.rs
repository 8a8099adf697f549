//! Publishing to an object store (S3 or any other `object_store` backend).
//!
//! Packs go up whole when small and as multipart uploads when large; the head is written
//! with a conditional put (`If-None-Match: *` for the first version, `If-Match: <etag>`
//! after), so of two publishers racing on one tree exactly one wins and the other fails
//! with [`PublishError::HeadChanged`] before anything it wrote is named. A local lock in the
//! publisher's state directory keeps two publishers on one machine apart before that.
//!
//! The caller owns the tokio runtime and passes its handle; every call blocks on it, so
//! these methods must not be called from inside that runtime's tasks.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    UpdateVersion, WriteMultipart,
};
use tokio::runtime::Handle;

use pulpdist_format::PackId;

use crate::error::{IoContext, PublishError};
use crate::store::{lock_file, Store, StoreLock, StoredHead};
use pulpdist_format::pack::PACK_CACHE_CONTROL;

/// Packs larger than this go up as multipart uploads, in parts of this size.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// Parts in flight at once.
const PART_CONCURRENCY: usize = 4;

/// A store in an object store under a key prefix.
#[derive(Debug, Clone)]
pub struct ObjectStoreTarget {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: Handle,
    part_size: usize,
    head_cache_control: String,
}

impl ObjectStoreTarget {
    /// Writes under `prefix` (no leading or trailing slash; may be empty) of `store`;
    /// `url` names the store in messages (`s3://bucket/prefix`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str, rt: Handle) -> Self {
        ObjectStoreTarget {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.trim_end_matches('/').to_string(),
            rt,
            part_size: DEFAULT_PART_SIZE,
            head_cache_control: "public, max-age=10".into(),
        }
    }

    /// Sets the multipart part size (at least 5 MiB on S3).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    fn key(&self, k: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(k)
        } else {
            ObjectPath::from(format!("{}/{k}", self.prefix))
        }
    }

    fn err(&self, key: &str, source: object_store::Error) -> PublishError {
        PublishError::Store {
            object: format!("{}/{key}", self.url),
            source: Box::new(source),
        }
    }

    fn put_pack_inner(&self, key: &str, file: &Path) -> Result<(), PublishError> {
        let path = self.key(key);
        let mut f = File::open(file).at(file)?;
        let len = f.metadata().at(file)?.len();
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::CacheControl, PACK_CACHE_CONTROL.into());
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        if len <= self.part_size as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).at(file)?;
            let opts = PutOptions {
                attributes,
                ..Default::default()
            };
            self.rt
                .block_on(self.store.put_opts(&path, PutPayload::from(buf), opts))
                .map_err(|e| self.err(key, e))?;
            return Ok(());
        }
        self.rt.block_on(async {
            let upload = self
                .store
                .put_multipart_opts(
                    &path,
                    object_store::PutMultipartOptions {
                        attributes,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| self.err(key, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
            let mut buf = vec![0u8; self.part_size];
            loop {
                let n = read_full(&mut f, &mut buf).at(file)?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(|e| self.err(key, e))?;
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(|e| self.err(key, e))?;
            Ok(())
        })
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Store for ObjectStoreTarget {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn lock(&self, tree: &str, state_dir: &Path) -> Result<StoreLock, PublishError> {
        lock_file(state_dir.join("publish.lock"), tree)
    }

    fn read_head(&self, tree: &str) -> Result<Option<StoredHead>, PublishError> {
        let key = format!("heads/{tree}");
        let path = self.key(&key);
        let got = self.rt.block_on(async {
            let r = self.store.get(&path).await?;
            let meta = r.meta.clone();
            let bytes = r.bytes().await?;
            Ok::<_, object_store::Error>((meta, bytes))
        });
        match got {
            Ok((meta, bytes)) => Ok(Some(StoredHead {
                bytes: bytes.to_vec(),
                etag: meta.e_tag,
                version: meta.version,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
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
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::CacheControl,
            self.head_cache_control.clone().into(),
        );
        attributes.insert(Attribute::ContentType, "application/octet-stream".into());
        let opts = PutOptions {
            mode,
            attributes,
            ..Default::default()
        };
        let put = self.rt.block_on(self.store.put_opts(
            &self.key(&key),
            PutPayload::from(bytes.to_vec()),
            opts,
        ));
        match put {
            Ok(_) => Ok(()),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Err(PublishError::HeadChanged {
                tree: tree.into(),
                expected: expected_version,
            }),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    fn list_packs(&self) -> Result<Vec<(PackId, u64)>, PublishError> {
        let dir = self.key("packs");
        let listed = self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(&dir));
            while let Some(meta) = s.next().await {
                out.push(meta?);
            }
            Ok::<_, object_store::Error>(out)
        });
        let mut out: Vec<(PackId, u64)> = listed
            .map_err(|e| self.err("packs/", e))?
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let id = name.strip_suffix(".pack")?.parse::<PackId>().ok()?;
                Some((id, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn read_pack_range(&self, id: PackId, range: Range<u64>) -> Result<Vec<u8>, PublishError> {
        let key = id.object_key();
        let want = range.end - range.start;
        let b = self
            .rt
            .block_on(self.store.get_range(&self.key(&key), range))
            .map_err(|e| self.err(&key, e))?;
        if b.len() as u64 != want {
            return Err(PublishError::Short {
                object: format!("{}/{key}", self.url),
                got: b.len() as u64,
                wanted: want,
            });
        }
        Ok(b.to_vec())
    }

    fn tmp_dir(&self) -> Option<PathBuf> {
        None
    }

    fn put_pack(&self, id: PackId, file: &Path) -> Result<(), PublishError> {
        self.put_pack_inner(&id.object_key(), file)?;
        std::fs::remove_file(file).at(file)
    }
}
