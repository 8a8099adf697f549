//! `pulpdist demo`: the main job on an embedded default. Generates a sample repository
//! tree, publishes it to a local store, serves the store with the built-in HTTP server on
//! loopback, syncs a downstream copy over HTTP, changes the tree, and publishes and syncs
//! again, printing what moved each time.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pulpdist_format::{SecretKey, TrustedKeys};
use pulpdist_publish::{publish, LocalStore, PublishOptions};
use pulpdist_serve::ServeOptions;
use pulpdist_sync::{sync, HttpOptions, HttpStoreReader, SyncOptions};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Working directory [default: a new temporary directory, removed afterwards].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON objects.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let tmp;
    let dir = match a.dir {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("pulpdist-demo-{}", std::process::id()));
            tmp
        }
    };
    let result = run_in(&dir, a.json);
    if dir.starts_with(std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(dir: &std::path::Path, json: bool) -> Result<()> {
    let (source, store_dir, mirror) = (
        dir.join("upstream/debian"),
        dir.join("store"),
        dir.join("downstream/debian"),
    );
    std::fs::create_dir_all(&source).with_context(|| format!("creating {}", source.display()))?;
    pulpdist_testdata::generate(&source, 1, 2)
        .with_context(|| format!("generating the sample tree in {}", source.display()))?;
    let key = SecretKey::generate()?;
    let trusted = TrustedKeys::new(vec![key.public()]);
    let store = LocalStore::open(&store_dir)?;
    let popts = PublishOptions::new("debian", &source, dir.join("publish-state"));
    let sopts = SyncOptions::new("debian", &mirror, trusted);
    // The built-in server on a free loopback port, stopped when the demo ends.
    let rt = super::stores::runtime(1)?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("listening on 127.0.0.1")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handler = std::sync::Arc::new(pulpdist_serve::Handler::new(ServeOptions::new(&store_dir))?);
    let server = rt.spawn(pulpdist_serve::serve(listener, handler, async {
        let _ = stopped.await;
    }));
    if !json {
        super::say(format_args!("serving {} on {url}\n", store_dir.display()))?;
    }
    let reader = HttpStoreReader::new(&url, HttpOptions::default())?;
    let result = rounds(
        &source, &mirror, &store, &key, &popts, &sopts, &reader, json,
    );
    let _ = stop.send(());
    let _ = rt.block_on(server);
    result
}

#[allow(clippy::too_many_arguments)]
fn rounds(
    source: &std::path::Path,
    mirror: &std::path::Path,
    store: &LocalStore,
    key: &SecretKey,
    popts: &PublishOptions,
    sopts: &SyncOptions,
    reader: &HttpStoreReader,
    json: bool,
) -> Result<()> {
    for round in 1..=2 {
        if round == 2 {
            pulpdist_testdata::evolve(source, 1, 1).context("changing the sample tree")?;
            if !json {
                super::say("-- the upstream tree changed (packages upgraded, metadata edited, files renamed and deleted)\n")?;
            }
        }
        let p = publish(store, key, popts).context("publishing the sample tree")?;
        super::publish::print_report(json, &p)?;
        let s = sync(reader, sopts).context("syncing the sample tree over HTTP")?;
        super::sync::print_report(json, &s, None)?;
        let diff = std::process::Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(source)
            .arg(mirror)
            .output();
        match diff {
            Ok(o) if o.status.success() => {
                if !json {
                    super::say(format_args!(
                        "   downstream {} is identical to upstream\n",
                        mirror.display()
                    ))?;
                }
            }
            Ok(o) => bail!(
                "downstream differs from upstream:\n{}",
                String::from_utf8_lossy(&o.stdout)
            ),
            Err(_) => {}
        }
    }
    Ok(())
}
