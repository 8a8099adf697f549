//! `pulpdist serve`: serve a store directory over HTTP until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pulpdist_server::ServeOptions;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(a: Args) -> Result<()> {
    if !a.store.join("heads").is_dir() || !a.store.join("packs").is_dir() {
        anyhow::bail!(
            "{}: not a store (no heads/ and packs/ directories)",
            a.store.display()
        );
    }
    let rt = super::stores::runtime(a.threads)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("listening on {}", a.listen))?;
        // One line on stdout, for scripts and tests that asked for port 0.
        println!("serving {} on http://{addr}", a.store.display());
        let mut opts = ServeOptions::new(&a.store);
        opts.head_max_age = a.head_max_age;
        opts.drain_timeout = Duration::from_secs(a.drain_seconds);
        pulpdist_server::serve(listener, opts, shutdown_signal()).await;
        eprintln!("pulpdist serve: stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
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
