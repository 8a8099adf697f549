//! One adapter over an object store (S3, or any `object_store` backend) under a key prefix,
//! used by both sides: the sync's `ObjectStoreReader` and the publisher's
//! `ObjectStoreTarget`. It names objects (`<prefix>/<key>`, and `<url>/<key>` in
//! messages), bounds every read by what the format allows or the signed head says, and
//! blocks on the caller's tokio runtime; the object store client retries transient
//! failures itself. Calls must not be made from inside that runtime's tasks.
//!
//! Errors are `object_store` errors; each side maps them to its own (a sync decides retry
//! or fallback from them, a publish a lost head race).

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attributes, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use tokio::runtime::Handle;

pub use object_store::Error;

/// Multipart parts in flight at once.
const PART_CONCURRENCY: usize = 4;

/// A key prefix of an object store.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    rt: Handle,
}

/// A head read: its bytes (at most the limit plus one byte, so that a larger one shows),
/// with the store's tag and version for a later conditional request.
#[derive(Debug)]
pub enum HeadRead {
    /// The object, read up to the limit.
    Found {
        /// Its bytes, at most `max + 1` of them.
        bytes: Vec<u8>,
        /// The store's entity tag.
        etag: Option<String>,
        /// The store's object version.
        version: Option<String>,
    },
    /// The tag given is still the object's.
    NotModified,
    /// No such object.
    Missing,
}

/// Why a file could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum PutFileError {
    /// Reading the local file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl Bucket {
    /// Objects under `prefix` (slashes at either end ignored; may be empty) of `store`;
    /// `url` names it in messages (`s3://bucket/prefix`); calls block on `rt`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str, rt: Handle) -> Self {
        Bucket {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.trim_end_matches('/').to_string(),
            rt,
        }
    }

    /// The store's name in messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How messages name object `key`.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    fn path(&self, key: &str) -> ObjectPath {
        match self.prefix.is_empty() {
            true => ObjectPath::from(key),
            false => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    /// Reads object `key` (a head), unless its tag is `if_none_match`, and no more than
    /// `max + 1` bytes of it whatever size the store claims.
    pub fn read_head(
        &self,
        key: &str,
        if_none_match: Option<&str>,
        max: usize,
    ) -> Result<HeadRead, Error> {
        let opts = GetOptions {
            if_none_match: if_none_match.map(str::to_string),
            ..Default::default()
        };
        let got = self.rt.block_on(async {
            let r = self.store.get_opts(&self.path(key), opts).await?;
            let (etag, version) = (r.meta.e_tag.clone(), r.meta.version.clone());
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
            bytes.truncate(max + 1);
            Ok::<_, Error>((bytes, etag, version))
        });
        match got {
            Ok((bytes, etag, version)) => Ok(HeadRead::Found {
                bytes,
                etag,
                version,
            }),
            Err(Error::NotModified { .. }) => Ok(HeadRead::NotModified),
            Err(Error::NotFound { .. }) => Ok(HeadRead::Missing),
            Err(e) => Err(e),
        }
    }

    /// Bytes `range` of object `key`, read no further than the range's length whatever the
    /// store sends: `Ok(Err(got))` when it sent another number of bytes.
    pub fn read_range(&self, key: &str, range: Range<u64>) -> Result<Result<Vec<u8>, u64>, Error> {
        let wanted = range.end - range.start;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        self.rt.block_on(async {
            let r = self.store.get_opts(&self.path(key), opts).await?;
            read_exactly(r.into_stream(), wanted).await
        })
    }

    /// The whole object `key`, read only if the store says it is `size` bytes, and no
    /// further than that whatever it sends: `Ok(Err(actual))` otherwise.
    pub fn read_sized(&self, key: &str, size: u64) -> Result<Result<Vec<u8>, u64>, Error> {
        self.rt.block_on(async {
            let r = self
                .store
                .get_opts(&self.path(key), GetOptions::default())
                .await?;
            if r.meta.size != size {
                return Ok(Err(r.meta.size));
            }
            read_exactly(r.into_stream(), size).await
        })
    }

    /// The size of object `key` (one HEAD request).
    pub fn size(&self, key: &str) -> Result<u64, Error> {
        self.rt
            .block_on(async { Ok(self.store.head(&self.path(key)).await?.size) })
    }

    /// Every object under `dir/`.
    pub fn list(&self, dir: &str) -> Result<Vec<ObjectMeta>, Error> {
        let dir = self.path(dir);
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut s = self.store.list(Some(&dir));
            while let Some(meta) = s.next().await {
                out.push(meta?);
            }
            Ok(out)
        })
    }

    /// Deletes object `key`; `false` if there was none (a store may not say: S3 answers a
    /// delete of a missing object like any other).
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        match self.rt.block_on(self.store.delete(&self.path(key))) {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores `bytes` as object `key`; `mode` makes it conditional (a head's
    /// compare-and-swap).
    pub fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        attributes: Attributes,
        mode: PutMode,
    ) -> Result<(), Error> {
        let opts = PutOptions {
            mode,
            attributes,
            ..Default::default()
        };
        let path = self.path(key);
        let put = self.store.put_opts(&path, PutPayload::from(bytes), opts);
        self.rt.block_on(put).map(|_| ())
    }

    /// Uploads the `len` bytes of `file` as object `key`: in one request up to
    /// `part_size`, else as a multipart upload of `part_size` parts, a few in flight.
    pub fn put_file(
        &self,
        key: &str,
        file: &mut File,
        len: u64,
        part_size: usize,
        attributes: Attributes,
    ) -> Result<(), PutFileError> {
        if len <= part_size as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf)?;
            return Ok(self.put(key, buf, attributes, PutMode::Overwrite)?);
        }
        self.rt.block_on(async {
            let opts = PutMultipartOptions {
                attributes,
                ..Default::default()
            };
            let upload = self.store.put_multipart_opts(&self.path(key), opts).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, part_size);
            let mut buf = vec![0u8; part_size];
            loop {
                let n = read_full(file, &mut buf)?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(PART_CONCURRENCY).await?;
                w.write(&buf[..n]);
            }
            w.finish().await?;
            Ok(())
        })
    }
}

/// Reads `wanted` bytes of a body, and one more at most: `Ok(Err(n))` when it held `n`
/// bytes, fewer or (at least one) more.
async fn read_exactly(
    mut body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, Error>>,
    wanted: u64,
) -> Result<Result<Vec<u8>, u64>, Error> {
    let mut out = Vec::new();
    while let Some(part) = body.next().await {
        let part = part?;
        let room = (wanted + 1).saturating_sub(out.len() as u64) as usize;
        out.extend_from_slice(&part[..part.len().min(room)]);
        if out.len() as u64 > wanted {
            break;
        }
    }
    match out.len() as u64 == wanted {
        true => Ok(Ok(out)),
        false => Ok(Err(out.len() as u64)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn bucket(rt: &tokio::runtime::Runtime) -> Bucket {
        Bucket::new(
            Arc::new(InMemory::new()),
            "/pre/",
            "mem://b/pre/",
            rt.handle().clone(),
        )
    }

    #[test]
    fn reads_are_bounded_and_named_under_the_prefix() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let b = bucket(&rt);
        assert_eq!(b.object_url("heads/t"), "mem://b/pre/heads/t");
        assert!(matches!(
            b.read_head("heads/t", None, 8),
            Ok(HeadRead::Missing)
        ));
        b.put("heads/t", vec![7; 20], Attributes::new(), PutMode::Create)
            .expect("stored");
        let Ok(HeadRead::Found { bytes, etag, .. }) = b.read_head("heads/t", None, 8) else {
            panic!("a head");
        };
        assert_eq!(bytes.len(), 9, "no more than the limit and one byte");
        let etag = etag.expect("a tag");
        assert!(matches!(
            b.read_head("heads/t", Some(&etag), 8),
            Ok(HeadRead::NotModified)
        ));
        assert_eq!(b.read_range("heads/t", 2..5).expect("read"), Ok(vec![7; 3]));
        assert_eq!(b.read_sized("heads/t", 21).expect("read"), Err(20));
        assert_eq!(b.read_sized("heads/t", 20).expect("read"), Ok(vec![7; 20]));
        // A second create loses: the compare-and-swap of a head.
        let again = b.put("heads/t", vec![1], Attributes::new(), PutMode::Create);
        assert!(matches!(again, Err(Error::AlreadyExists { .. })));
        let listed = b.list("heads").expect("listed");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location.as_ref(), "pre/heads/t");
    }

    #[test]
    fn a_file_larger_than_a_part_goes_up_in_parts() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let b = bucket(&rt);
        let dir = std::env::temp_dir().join(format!("pulpdist-bucket-{}", std::process::id()));
        std::fs::write(&dir, vec![3u8; 10_000]).expect("file");
        let mut f = File::open(&dir).expect("open");
        b.put_file("packs/p", &mut f, 10_000, 4096, Attributes::new())
            .expect("uploaded");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(
            b.read_sized("packs/p", 10_000).expect("read"),
            Ok(vec![3u8; 10_000])
        );
    }

    /// A store whose every read goes on past the object, `extra` chunks of 64 KiB (what
    /// a lying endpoint's `Content-Length` or chunked body can do).
    #[derive(Debug)]
    struct Liar(InMemory, usize);

    impl std::fmt::Display for Liar {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("liar")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Liar {
        async fn put_opts(
            &self,
            l: &ObjectPath,
            p: PutPayload,
            o: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.0.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &ObjectPath,
            o: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(
            &self,
            l: &ObjectPath,
            o: GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            let r = self.0.get_opts(l, o).await?;
            let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
            let extensions = r.extensions.clone();
            let more =
                futures_util::stream::repeat_with(|| Ok(bytes::Bytes::from(vec![0u8; 65536])))
                    .take(self.1);
            let body = r.into_stream().chain(more).boxed();
            Ok(object_store::GetResult {
                payload: object_store::GetResultPayload::Stream(body),
                meta,
                range,
                attributes,
                extensions,
            })
        }
        fn delete_stream(
            &self,
            locations: futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures_util::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            o: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, o).await
        }
    }

    #[test]
    fn a_store_that_sends_more_than_asked_is_read_no_further() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        // 16 GiB more than the object: read whole, this would not end well.
        let liar = Arc::new(Liar(InMemory::new(), 262_144));
        let b = Bucket::new(liar, "", "liar://", rt.handle().clone());
        b.put("packs/p", vec![5; 100], Attributes::new(), PutMode::Create)
            .expect("stored");
        assert_eq!(b.read_range("packs/p", 10..20).expect("read"), Err(11));
        assert_eq!(b.read_sized("packs/p", 100).expect("read"), Err(101));
        let Ok(HeadRead::Found { bytes, .. }) = b.read_head("packs/p", None, 200) else {
            panic!("read");
        };
        assert_eq!(bytes.len(), 201);
    }
}
