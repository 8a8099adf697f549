//! Turning a `--store` argument into a reader or a publish target: a directory,
//! `http(s)://host[:port][/prefix]`, or `s3://bucket[/prefix]`. Also where the tokio runtime
//! that object stores and the server need is built.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use pulpdist_publish::{LocalStore, ObjectStoreTarget, Store};
use pulpdist_sync::{
    HttpOptions, HttpStoreReader, LocalStoreReader, ObjectStoreReader, StoreReader,
};

/// S3 settings given as flags; the usual `AWS_*` environment variables fill in the rest
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
#[derive(clap::Args, Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct S3Args {
    /// S3 endpoint URL (for S3-compatible servers) [env: AWS_ENDPOINT_URL].
    #[arg(long)]
    #[serde(rename = "endpoint", skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// S3 region [env: AWS_REGION, default us-east-1].
    #[arg(long)]
    #[serde(rename = "region", skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// S3 access key id [env: AWS_ACCESS_KEY_ID].
    #[arg(long)]
    #[serde(rename = "access-key-id", skip_serializing_if = "Option::is_none")]
    pub s3_access_key_id: Option<String>,
    /// File holding the S3 secret access key (not a flag value, which `ps` would show)
    /// [env: AWS_SECRET_ACCESS_KEY].
    #[arg(long)]
    #[serde(rename = "secret-key-file", skip_serializing_if = "Option::is_none")]
    pub s3_secret_key_file: Option<PathBuf>,
    /// Take S3 credentials from the cloud instance-metadata service (or a container's
    /// credentials endpoint) when none are given: the AWS default on cloud machines. Without
    /// it, no credentials is an error at once, not a wait on an address nobody answers.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    #[serde(rename = "instance-credentials")]
    pub s3_instance_credentials: Option<bool>,
}

/// The TLS settings of a command that reads an https:// store.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Trust only these CA certificates (PEM) for an https:// store [default: the
    /// system's CA bundle].
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) for an https:// store that requires one.
    #[arg(long, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}

/// How a command reaches a store it reads: TLS for https://, S3 settings for s3://.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct Access {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    s3: S3Args,
}

impl Access {
    /// A reader for `store`.
    pub(crate) fn reader(&self, store: &str) -> Result<Opened<dyn StoreReader>> {
        reader(store, self.tls.http()?, &self.s3)
    }
}

impl TlsArgs {
    /// HTTP settings with these certificates read in.
    pub(crate) fn http(&self) -> anyhow::Result<pulpdist_sync::HttpOptions> {
        let mut http = pulpdist_sync::HttpOptions::default();
        let pair = self.cert.as_deref().zip(self.key.as_deref());
        add_tls(&mut http, self.ca.as_deref(), pair)?;
        Ok(http)
    }
}

/// Reads the CA certificates and the client certificate and key (PEM) an https:// store
/// needs into `http`.
pub(crate) fn add_tls(
    http: &mut pulpdist_sync::HttpOptions,
    ca: Option<&std::path::Path>,
    cert_key: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<()> {
    if let Some(ca) = ca {
        http.ca_pem = Some(super::read_small(ca, "CA certificates")?.into_bytes());
    }
    if let Some((cert, key)) = cert_key {
        let c = super::read_small(cert, "client certificate")?.into_bytes();
        let k = super::read_small(key, "client key")?.into_bytes();
        http.client_cert_pem = Some((c, k));
    }
    Ok(())
}

/// Where a store is.
pub(crate) enum Location {
    Dir(PathBuf),
    Http(String),
    S3 { bucket: String, prefix: String },
}

pub(crate) fn parse(store: &str) -> Result<Location> {
    if store.starts_with("http://") || store.starts_with("https://") {
        return Ok(Location::Http(store.to_string()));
    }
    if let Some(rest) = store.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{store}: no bucket name");
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if store.contains("://") {
        bail!("{store}: unsupported store URL (use a directory, http://, https:// or s3://)");
    }
    Ok(Location::Dir(PathBuf::from(store)))
}

/// A multi-threaded runtime for object store clients and the server.
pub(crate) fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn s3(bucket: &str, s3: &S3Args) -> Result<Arc<dyn ObjectStore>> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = s3
        .s3_endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT").ok());
    if let Some(e) = &endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(id) = &s3.s3_access_key_id {
        b = b.with_access_key_id(id);
    }
    if let Some(f) = &s3.s3_secret_key_file {
        let secret = super::read_small(f, "the S3 secret key")?;
        b = b.with_secret_access_key(secret.trim());
    }
    // Without static credentials or a web-identity or container source, the AWS client
    // asks the instance-metadata address (169.254.169.254), which off a cloud machine only
    // times out: say so now instead.
    let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let has_static = (s3.s3_access_key_id.is_some() || env("AWS_ACCESS_KEY_ID"))
        && (s3.s3_secret_key_file.is_some() || env("AWS_SECRET_ACCESS_KEY"));
    let has_other = env("AWS_WEB_IDENTITY_TOKEN_FILE")
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    if !has_static && !has_other && s3.s3_instance_credentials != Some(true) {
        return Err(super::usage(format!(
            "s3://{bucket}: no S3 credentials: give --s3-access-key-id and --s3-secret-key-file (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or --s3-instance-credentials on a cloud machine"
        )));
    }
    if let Some(r) = &s3.s3_region {
        b = b.with_region(r);
    } else if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    let store = b
        .build()
        .with_context(|| format!("configuring S3 bucket '{bucket}'"))?;
    Ok(Arc::new(store))
}

/// `~/.cache/pulpdist/<command>/<bucket>/<prefix>`: a command's own state for a bucket.
pub(crate) fn bucket_state(command: &str, bucket: &str, prefix: &str) -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let mut p = home.join(".cache/pulpdist").join(command).join(bucket);
    for part in prefix.split('/').filter(|p| !p.is_empty() && *p != "..") {
        p = p.join(part);
    }
    p
}

/// A store client with the async runtime its S3 client runs on: made only for `s3://`
/// (a directory or HTTP(S) store needs none), dropped after the client.
pub(crate) struct Opened<T: ?Sized> {
    store: Box<T>,
    _rt: Option<tokio::runtime::Runtime>,
}

impl<T: ?Sized> std::ops::Deref for Opened<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.store
    }
}

/// A reader for `store`.
pub(crate) fn reader(
    store: &str,
    http: HttpOptions,
    s3args: &S3Args,
) -> Result<Opened<dyn StoreReader>> {
    Ok(match parse(store)? {
        Location::Dir(p) => Opened {
            store: Box::new(LocalStoreReader::new(p)),
            _rt: None,
        },
        Location::Http(url) => Opened {
            store: Box::new(HttpStoreReader::new(&url, http)?),
            _rt: None,
        },
        Location::S3 { bucket, prefix } => {
            let rt = runtime(2)?;
            let client = s3(&bucket, s3args)?;
            let handle = rt.handle().clone();
            Opened {
                store: Box::new(ObjectStoreReader::new(client, &prefix, store, handle)),
                _rt: Some(rt),
            }
        }
    })
}

/// A publish target for `store`.
pub(crate) fn target(store: &str, s3args: &S3Args) -> Result<Opened<dyn Store>> {
    Ok(match parse(store)? {
        Location::Dir(p) => Opened {
            store: Box::new(
                LocalStore::open(&p).with_context(|| format!("opening store {}", p.display()))?,
            ),
            _rt: None,
        },
        Location::Http(url) => bail!(
            "{url}: an HTTP store is read-only; publish to its directory or bucket and serve that"
        ),
        Location::S3 { bucket, prefix } => {
            let rt = runtime(2)?;
            let client = s3(&bucket, s3args)?;
            let handle = rt.handle().clone();
            Opened {
                store: Box::new(ObjectStoreTarget::new(client, &prefix, store, handle)),
                _rt: Some(rt),
            }
        }
    })
}

/// A store opener for long-running services (the coordinator's head watcher, the agent):
/// readers that own themselves, S3 clients on one runtime kept for the process.
pub(crate) fn opener(http: HttpOptions, s3args: S3Args) -> Arc<pulpdist_agent::OpenStore> {
    static RUNTIME: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    Arc::new(move |store: &str| {
        let describe = |e: anyhow::Error| format!("{store}: {}", super::describe(&e));
        Ok(match parse(store).map_err(describe)? {
            Location::Dir(p) => Box::new(LocalStoreReader::new(p)) as Box<dyn StoreReader>,
            Location::Http(url) => {
                Box::new(HttpStoreReader::new(&url, http.clone()).map_err(|e| describe(e.into()))?)
            }
            Location::S3 { bucket, prefix } => {
                let rt = RUNTIME
                    .get_or_init(|| runtime(2).map_err(|e| super::describe(&e)))
                    .as_ref()
                    .map_err(|e| e.clone())?;
                let client = s3(&bucket, &s3args).map_err(describe)?;
                Box::new(ObjectStoreReader::new(
                    client,
                    &prefix,
                    store,
                    rt.handle().clone(),
                ))
            }
        })
    })
}
