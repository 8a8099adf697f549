//! `pulpdist demo`: the main job on an embedded default. Generates a sample repository
//! tree, publishes it to a local store, serves the store with the built-in HTTP server on
//! loopback, syncs a downstream copy over HTTP, changes the tree, and publishes and syncs
//! again, printing what moved each time. Then the network: a CA, a coordinator (HTTPS,
//! client certificates, SQLite) and three site agents on loopback; a third version is
//! published, and the network's state is printed as the sites converge on it.

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
    )
    .and_then(|()| {
        let publish_next = || -> Result<()> {
            pulpdist_testdata::evolve(&source, 2, 2).context("changing the sample tree")?;
            publish(&store, &key, &popts).context("publishing the sample tree")?;
            Ok(())
        };
        network(&rt, dir, (&url, &key), &publish_next, json)
    });
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

const SITES: [&str; 3] = ["berlin", "paris", "tokyo"];

/// The network part: a CA, a coordinator and three agents on loopback, a publish, and the
/// state as the sites converge.
fn network(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    (store_url, key): (&str, &SecretKey),
    publish_next: &dyn Fn() -> Result<()>,
    json: bool,
) -> Result<()> {
    let pki = dir.join("pki");
    super::ca::init(&pki, "demo network CA", 30, false)?;
    let names = |n: &str| (vec![n.to_string()], Vec::new());
    let (dns, uri) = names("localhost");
    super::ca::issue(&pki, "coordinator", true, (&dns, &uri), 30, false)?;
    for who in std::iter::once("ops").chain(SITES) {
        let (dns, uri) = names(who);
        super::ca::issue(&pki, who, false, (&dns, &uri), 30, false)?;
    }
    let trust = format!("{} demo", key.public());
    let mut text = format!(
        "admins = [\"cn:ops\"]\n\n[trees.debian]\nstores = [\"{store_url}\"]\ntrust = [\"pulpdist-ed25519 {}\"]\n",
        trust.split_whitespace().next().unwrap_or_default()
    );
    for (site, region) in SITES.iter().zip(["eu", "eu", "asia"]) {
        text.push_str(&format!(
            "\n[sites.{site}]\nidentity = \"cn:{site}\"\nlabels = {{ region = \"{region}\" }}\n"
        ));
    }
    text.push_str("\n[[assignment]]\nsites = [\"berlin\", \"paris\", \"tokyo\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\n");
    let tls = pulpdist_serve::tls::server_config(&pulpdist_serve::tls::TlsFiles {
        cert: pki.join("coordinator.pem"),
        key: pki.join("coordinator.key"),
        client_ca: Some(pki.join("ca.pem")),
        crls: Vec::new(),
    })?;
    let (coord, listener) = rt.block_on(async {
        let db =
            pulpdist_coordinator::Db::open(&dir.join("coordinator.db").to_string_lossy()).await?;
        let coord = pulpdist_coordinator::Coordinator::open(db, Some(&text)).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok((std::sync::Arc::new(coord), listener))
    })?;
    let url = format!("https://localhost:{}", listener.local_addr()?.port());
    let board = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("listening on 127.0.0.1")?;
    let board_url = format!("http://{}", board.local_addr()?);
    let (stop_board, board_stopped) = tokio::sync::oneshot::channel::<()>();
    let dashboard = rt.spawn(pulpdist_coordinator::dashboard::serve(
        board,
        coord.clone(),
        Vec::new(),
        async {
            let _ = board_stopped.await;
        },
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let open = super::stores::opener(HttpOptions::default(), Default::default());
    let server = rt.spawn(pulpdist_coordinator::server::serve(
        listener,
        coord.clone(),
        std::sync::Arc::new(std::sync::RwLock::new(tls.config)),
        async {
            let _ = stopped.await;
        },
    ));
    let watcher = {
        let (coord, open) = (coord.clone(), open.clone());
        rt.spawn(async move {
            loop {
                coord.watch_heads(open.clone()).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    if !json {
        super::say(format_args!(
            "-- the network: coordinator on {url}, dashboard on {board_url}, sites {}\n   status: pulpdist status --coordinator {url} --ca {} --cert {} --key {}\n",
            SITES.join(", "),
            pki.join("ca.pem").display(),
            pki.join("ops.pem").display(),
            pki.join("ops.key").display()
        ))?;
    }
    let client = |who: &str| -> Result<pulpdist_agent::Client> {
        let mut http = HttpOptions::default();
        super::stores::add_tls(
            &mut http,
            Some(&pki.join("ca.pem")),
            Some((
                &pki.join(format!("{who}.pem")),
                &pki.join(format!("{who}.key")),
            )),
        )?;
        Ok(pulpdist_agent::Client::new(&url, &http)?)
    };
    let result = (|| -> Result<()> {
        let admin = client("ops")?;
        let mut agents = Vec::new();
        for site in SITES {
            let opts = pulpdist_agent::AgentOptions {
                state: dir.join("sites").join(site).join("agent"),
                mirrors: dir.join("sites").join(site).join("mirrors"),
                open: open.clone(),
                once: true,
                jitter: std::time::Duration::ZERO,
                poll: std::time::Duration::from_secs(1),
                trust: None,
                relay: None,
            };
            agents.push(pulpdist_agent::Agent::new(client(site)?, opts)?);
        }
        for step in 1..=2 {
            if step == 2 {
                publish_next()?;
                // What `pulpdist network push` (or the coordinator's head watcher) does.
                admin.trigger("debian")?;
                if !json {
                    super::say(
                        "-- a new version is published; the agents are woken and sync it\n",
                    )?;
                }
            }
            for agent in &mut agents {
                agent.round()?;
            }
            let rows = admin.status("")?;
            super::emit(json, serde_json::json!({ "network": rows }), || {
                status_table(&rows)
            })?;
        }
        Ok(())
    })();
    watcher.abort();
    let _ = stop.send(());
    let _ = stop_board.send(());
    let _ = rt.block_on(server);
    let _ = rt.block_on(dashboard);
    result
}

/// The status rows as a table.
fn status_table(rows: &serde_json::Value) -> String {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut s = format!(
        "   {:<8} {:<8} {:>7} {:>7} {:<11}\n",
        "SITE", "TREE", "VERSION", "BEHIND", "LAST RUN"
    );
    for r in rows.as_array().into_iter().flatten() {
        s.push_str(&format!(
            "   {:<8} {:<8} {:>7} {:>7} {:<11}\n",
            cell(&r["site"]),
            cell(&r["tree"]),
            cell(&r["version"]),
            cell(&r["versions_behind"]),
            cell(&r["last_outcome"])
        ));
    }
    s
}
