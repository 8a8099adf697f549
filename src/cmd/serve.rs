//! `pulpdist serve`: serve a store directory over HTTP or HTTPS until SIGTERM or SIGINT.
//! SIGHUP reloads the authorization file (it is also reloaded when it changes), the TLS
//! certificates and the revocation lists.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pulpdist_serve::tls::TlsFiles;
use pulpdist_serve::{Handler, ServeOptions};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The store directory.
    #[arg(long)]
    store: PathBuf,
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Seconds a CDN or client may cache a tree head.
    #[arg(long, default_value_t = 10)]
    head_max_age: u32,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds open requests may take to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,
    /// Serve HTTPS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Certificate revocation list (PEM) of the client CA; may be repeated. Reloaded on SIGHUP.
    #[arg(long, requires = "client_ca")]
    crl: Vec<PathBuf>,
    /// Authorization file: which certificate identities may read which trees (needs
    /// --client-ca). Reloaded on SIGHUP and when it changes.
    #[arg(long, requires = "client_ca")]
    authz: Option<PathBuf>,
    /// Public key file(s) of the trees' publishers: with --authz, a tree's packs are served
    /// only through a head one of them signed (a planted head widens nothing).
    #[arg(long, requires = "authz")]
    trust: Vec<PathBuf>,
    /// Open connections at most; more are closed as they are accepted.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Open connections from one client address at most.
    #[arg(long, default_value_t = 32)]
    max_per_address: usize,
    /// Seconds a response may wait for a client that stopped reading before the connection
    /// is closed.
    #[arg(long, default_value_t = 60)]
    stall_seconds: u64,
}

pub(crate) fn run(a: Args) -> Result<()> {
    if !a.store.join("heads").is_dir() || !a.store.join("packs").is_dir() {
        anyhow::bail!(
            "{}: not a store (no heads/ and packs/ directories)",
            a.store.display()
        );
    }
    let mut opts = ServeOptions::new(&a.store);
    opts.head_max_age = a.head_max_age;
    opts.drain_timeout = Duration::from_secs(a.drain_seconds);
    opts.max_connections = a.max_connections;
    opts.max_per_address = a.max_per_address;
    opts.stall_timeout = Duration::from_secs(a.stall_seconds.max(1));
    // The connection cap, not the descriptor table, is what a flood runs into.
    let files = super::raise_open_files();
    if files.is_some_and(|f| (f as usize) < a.max_connections.saturating_add(64)) {
        eprintln!(
            "pulpdist serve: warning: {} open files allowed, fewer than --max-connections {} needs",
            files.unwrap_or(0),
            a.max_connections
        );
    }
    opts.authz = a.authz.clone();
    if !a.trust.is_empty() {
        opts.trusted = Some(super::sync::load_trust(&a.trust)?);
    }
    opts.tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.client_ca.clone(),
            crls: a.crl.clone(),
        }),
        _ => None,
    };
    let handler = std::sync::Arc::new(Handler::new(opts)?);
    let rt = super::stores::runtime(a.threads)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("listening on {}", a.listen))?;
        // One line on stdout, for scripts and tests that asked for port 0.
        let scheme = if handler.is_tls() { "https" } else { "http" };
        // A server keeps serving whoever reads its output (a closed stdout is no reason to
        // stop).
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "serving {} on {scheme}://{addr}", a.store.display());
        let _ = out.flush();
        drop(out);
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            let h = handler.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // Reading files: on a blocking thread, not the request threads.
                    let h = h.clone();
                    let _ = tokio::task::spawn_blocking(move || h.reload()).await;
                }
            });
        }
        pulpdist_serve::serve(listener, handler, shutdown_signal()).await;
        eprintln!("pulpdist serve: stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
