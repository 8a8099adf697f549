//! `pulpdist coordinator`: the network's one view and one hand (HTTPS, client
//! certificates), and `pulpdist network` and `pulpdist status`, its admin commands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pulpdist_coordinator::{server, Coordinator, Db};
use pulpdist_serve::tls::TlsFiles;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Address to listen on (port 0: any free port; the printed line says which).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// The database: a SQLite file (created if missing), or a PostgreSQL URL
    /// (postgres://user@host/db; ?host=/run/postgresql for a socket) that two coordinators
    /// may share: the one holding its advisory lock watches the heads, probes and raises
    /// events, the other takes over within one --watch period if it dies.
    #[arg(long, value_name = "FILE|URL")]
    db: String,
    /// The coordinator's certificate chain (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// The CA (PEM) that issues site and admin certificates; every client needs one.
    #[arg(long)]
    client_ca: PathBuf,
    /// A revocation list (PEM) of the client CA; may be repeated.
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// A network file to start with when the database holds none.
    #[arg(long)]
    network: Option<PathBuf>,
    /// How often each tree's head is fetched and verified (a new version wakes its sites),
    /// and events are evaluated.
    #[arg(long, default_value = "30s", value_parser = at_least_a_second)]
    watch: Duration,
    /// How long each run's report is kept; older ones are summed into daily rollups (the
    /// last report and the last success of each site and tree are always kept).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    keep_reports: Duration,
    /// Also serve the dashboard (HTML pages, their JSON twins, /metrics) over plain HTTP
    /// here: for reading only, keep it on loopback or behind a proxy that authenticates.
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<String>,
    /// A name the dashboard is reached by (repeatable), besides IP addresses and
    /// localhost: requests for other names are refused (a page that points its own name at
    /// the dashboard's address reads nothing).
    #[arg(long, value_name = "NAME")]
    dashboard_host: Vec<String>,
    /// Trust only these CA certificates (PEM) when reading https:// stores' heads.
    #[arg(long)]
    store_ca: Option<PathBuf>,
    #[command(flatten)]
    s3: super::stores::S3Args,
}

pub(crate) fn run(a: Args) -> Result<()> {
    // One connection per agent's long-poll: thousands of sites need more than 1,024 files.
    let _ = super::raise_open_files();
    let initial = match &a.network {
        Some(p) => {
            let text = super::read_small(p, "network file")?;
            pulpdist_network::Network::parse(&text)
                .map_err(|e| super::usage(format!("{}: {e}", p.display())))?;
            Some(text)
        }
        None => None,
    };
    let files = TlsFiles {
        cert: a.tls_cert.clone(),
        key: a.tls_key.clone(),
        client_ca: Some(a.client_ca.clone()),
        crls: a.crl.clone(),
    };
    let tls: pulpdist_coordinator::server::TlsInForce = Arc::new(std::sync::RwLock::new(
        pulpdist_serve::tls::server_config(&files)?.config,
    ));
    let mut http = pulpdist_sync::HttpOptions::default();
    super::stores::add_tls(&mut http, a.store_ca.as_deref(), None)?;
    let open = super::stores::opener(http, a.s3.clone());
    let rt = super::stores::runtime(2)?;
    rt.block_on(async {
        let db = Db::open(&a.db).await?;
        let coord = Arc::new(Coordinator::open(db, initial.as_deref()).await?);
        coord.keep_reports.store(
            a.keep_reports.as_secs().min(i64::MAX as u64) as i64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("listening on {}", a.listen))?;
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "coordinating on https://{addr}");
        let dashboard = match &a.dashboard {
            Some(listen) => {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let _ = writeln!(out, "dashboard on http://{}", l.local_addr()?);
                Some(tokio::spawn(pulpdist_coordinator::dashboard::serve(
                    l,
                    coord.clone(),
                    a.dashboard_host.clone(),
                    std::future::pending(),
                )))
            }
            None => None,
        };
        let _ = out.flush();
        drop(out);
        let watcher = tokio::spawn(coord.clone().run(open, a.watch));
        // SIGHUP reads the certificate, its key and the revocation lists again: a site
        // revoked with `pulpdist ca revoke` is refused from its next connection.
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            let tls = tls.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // Read on a blocking thread, at most 10 s: a FIFO or a slow disk holds
                    // no request.
                    let f = files.clone();
                    let read = tokio::task::spawn_blocking(move || pulpdist_serve::tls::server_config(&f));
                    let loaded = match tokio::time::timeout(Duration::from_secs(10), read).await {
                        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                        _ => Err("the TLS files could not be read within 10 s".to_string()),
                    };
                    match loaded {
                        Ok(setup) => {
                            if let Ok(mut c) = tls.write() {
                                *c = setup.config;
                            }
                            eprintln!("pulpdist coordinator: TLS files reloaded");
                        }
                        Err(e) => eprintln!("pulpdist coordinator: reload failed, the old TLS files stay in force: {e}"),
                    }
                }
            });
        }
        server::serve(listener, coord, tls, super::serve::shutdown_signal()).await;
        watcher.abort();
        if let Some(d) = dashboard {
            d.abort();
        }
        eprintln!("pulpdist coordinator: stopped");
        anyhow::Ok(())
    })
}

/// How an admin command reaches the coordinator.
#[derive(clap::Args)]
pub(crate) struct Reach {
    /// The coordinator: https://host:port. Repeat it for coordinators sharing one
    /// database: requests go to the next when one does not answer.
    #[arg(long, required = true)]
    coordinator: Vec<String>,
    /// The CA (PEM) that issued the coordinator's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This admin's (or site's) certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
}

impl Reach {
    pub(crate) fn client(&self) -> Result<pulpdist_agent::Client> {
        let mut http = pulpdist_sync::HttpOptions::default();
        super::stores::add_tls(&mut http, self.ca.as_deref(), Some((&self.cert, &self.key)))?;
        Ok(pulpdist_agent::Client::with_fallbacks(
            &self.coordinator,
            &http,
        )?)
    }
}

#[derive(clap::Args)]
pub(crate) struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(clap::Subcommand)]
enum NetworkCommand {
    /// Check a network file here, without a coordinator (errors name the line or key).
    Check {
        /// The network file (TOML).
        file: PathBuf,
    },
    /// Send a network file to the coordinator (the same file again changes nothing).
    Apply {
        /// The network file (TOML).
        file: PathBuf,
        #[command(flatten)]
        reach: Reach,
    },
    /// Print the network file in force.
    Export {
        #[command(flatten)]
        reach: Reach,
    },
    /// Accept the next certificate of a site (a new key): the coordinator enrols each site
    /// with the key of the certificate it first connects with.
    Reenrol {
        /// The site.
        #[arg(long)]
        site: String,
        #[command(flatten)]
        reach: Reach,
    },
    /// Wake the sites that carry a tree now (what a new head does).
    Push {
        /// The tree.
        #[arg(long)]
        tree: String,
        #[command(flatten)]
        reach: Reach,
    },
}

pub(crate) fn network(a: NetworkArgs) -> Result<()> {
    match a.command {
        NetworkCommand::Check { file } => {
            let text = super::read_small(&file, "network file")?;
            let net = pulpdist_network::Network::parse(&text)
                .map_err(|e| super::usage(format!("{}: {e}", file.display())))?;
            super::say(format_args!(
                "{}: {} trees, {} sites, {} assignments\n",
                file.display(),
                net.trees.len(),
                net.sites.len(),
                net.assignments.len()
            ))
        }
        NetworkCommand::Apply { file, reach } => {
            let text = super::read_small(&file, "network file")?;
            pulpdist_network::Network::parse(&text)
                .map_err(|e| super::usage(format!("{}: {e}", file.display())))?;
            let (revision, changed) = reach.client()?.apply(&text)?;
            super::say(format_args!(
                "{}: revision {revision}{}\n",
                file.display(),
                if changed { "" } else { " (unchanged)" }
            ))
        }
        NetworkCommand::Export { reach } => super::say(reach.client()?.export()?),
        NetworkCommand::Reenrol { site, reach } => {
            pulpdist_format::validate_tree_name(&site).map_err(|e| super::usage(e.to_string()))?;
            reach.client()?.reenrol(&site)?;
            super::say(format_args!("{site}: its next certificate is enrolled\n"))
        }
        NetworkCommand::Push { tree, reach } => {
            pulpdist_format::validate_tree_name(&tree).map_err(|e| super::usage(e.to_string()))?;
            reach.client()?.trigger(&tree)?;
            super::say(format_args!("pushed {tree}\n"))
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    reach: Reach,
    /// Only this tree (repeatable).
    #[arg(long)]
    tree: Vec<String>,
    /// Only this site (repeatable).
    #[arg(long)]
    site: Vec<String>,
    /// Only sites with this label, KEY:VALUE (repeatable: all must match).
    #[arg(long)]
    label: Vec<String>,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn status(a: StatusArgs) -> Result<()> {
    let mut query = Vec::new();
    for (k, vs) in [("tree", &a.tree), ("site", &a.site), ("label", &a.label)] {
        for v in vs {
            if v.contains(['&', '=', ' ', '#', '?']) {
                return Err(super::usage(format!("--{k} {v}: not a name")));
            }
            query.push(format!("{k}={v}"));
        }
    }
    let rows = a.reach.client()?.status(&query.join("&"))?;
    let empty = Vec::new();
    let list = rows.as_array().unwrap_or(&empty);
    super::emit(a.json, rows.clone(), || {
        let cell = |v: &serde_json::Value| match v {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut s = format!(
            "{:<16} {:<16} {:>8} {:>8} {:>7} {:<11} {}\n",
            "SITE", "TREE", "VERSION", "NEWEST", "BEHIND", "LAST", "ERROR"
        );
        for r in list {
            s.push_str(&format!(
                "{:<16} {:<16} {:>8} {:>8} {:>7} {:<11} {}\n",
                cell(&r["site"]),
                cell(&r["tree"]),
                cell(&r["version"]),
                cell(&r["newest"]),
                cell(&r["versions_behind"]),
                cell(&r["last_outcome"]),
                cell(&r["last_error"])
            ));
        }
        s
    })
}

/// `publish --notify`: wake the sites that carry the tree once it is published.
#[derive(clap::Args)]
pub(crate) struct NotifyArgs {
    /// After publishing, push the tree through this coordinator (https://host:port), so its
    /// sites sync now rather than on their schedule; needs --notify-cert and --notify-key
    /// (an admin's). A push that fails is a warning: the sites' timers still bring them.
    /// Repeat it for coordinators sharing one database: the next is asked if one does not
    /// answer.
    #[arg(long, requires_all = ["notify_cert", "notify_key"])]
    notify: Vec<String>,
    /// The CA (PEM) that issued the coordinator's certificate.
    #[arg(long)]
    notify_ca: Option<PathBuf>,
    /// The admin certificate (PEM) for --notify.
    #[arg(long)]
    notify_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    notify_key: Option<PathBuf>,
}

impl NotifyArgs {
    /// Pushes `tree`, if asked to; a failure is a warning.
    pub(crate) fn send(&self, tree: &str) {
        let (false, Some(cert), Some(key)) =
            (self.notify.is_empty(), &self.notify_cert, &self.notify_key)
        else {
            return;
        };
        let reach = Reach {
            coordinator: self.notify.clone(),
            ca: self.notify_ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        };
        if let Err(e) = reach.client().and_then(|c| Ok(c.trigger(tree)?)) {
            eprintln!(
                "pulpdist: warning: the sites of '{tree}' were not pushed ({}); their schedules bring them the version",
                super::describe(&e)
            );
        }
    }
}

/// A duration of at least a second (`--watch`: shorter would spin the duties).
fn at_least_a_second(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err(format!("'{text}' is shorter than a second")),
        Err(e) => Err(format!("'{text}': {e}")),
    }
}
