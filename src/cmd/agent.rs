//! `pulpdist agent`: the site agent, a long-running service that keeps the site's
//! assigned trees synced and reports every run to the coordinator.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pulpdist_agent::{Agent, AgentOptions};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    reach: super::coordinator::Reach,
    /// Where the mirrors go: one directory per tree.
    #[arg(long)]
    mirrors: PathBuf,
    /// The agent's own directory (the cached assignment, the report queue).
    #[arg(long)]
    state: PathBuf,
    /// One round (the assignment, the trees due, the queued reports), then stop.
    #[arg(long)]
    once: bool,
    /// A pushed sync waits a random time up to this long (spreads a push's load on the origin).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    jitter: Duration,
    /// The longest a poll of the coordinator is held open.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// The keys every tree's heads must be signed with [default: each tree's keys as the
    /// coordinator first names them, pinned in STATE/keys/<tree>.pub and never taken from
    /// it again; replace the file to rotate].
    #[arg(long)]
    trust: Vec<PathBuf>,
    /// A store directory this site relays (serves to the sites below it): each tree is
    /// replicated into it, verified, before the mirror is synced from it.
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Trust only these CA certificates (PEM) for https:// stores [default: the system's].
    #[arg(long)]
    store_ca: Option<PathBuf>,
    /// Serve the agent's Prometheus metrics on this address (plain HTTP, `GET /metrics`;
    /// keep it on loopback or a monitoring network). Port 0 takes a free port; the address
    /// taken is printed.
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    s3: super::stores::S3Args,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let _ = super::raise_open_files();
    let mut http = pulpdist_sync::HttpOptions::default();
    super::stores::add_tls(&mut http, a.store_ca.as_deref(), None)?;
    let opts = AgentOptions {
        state: a.state,
        mirrors: a.mirrors,
        open: super::stores::opener(http, a.s3),
        once: a.once,
        jitter: a.jitter,
        poll: a.poll.max(Duration::from_secs(1)),
        relay: a.relay,
        trust: match a.trust.is_empty() {
            true => None,
            false => Some(super::sync::load_trust(&a.trust)?),
        },
    };
    let mut agent = Agent::new(a.reach.client()?, opts)?;
    if let Some(addr) = a.metrics {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        let bound = listener
            .local_addr()
            .context("the metrics listener's address")?;
        pulpdist_agent::serve_metrics(listener, agent.metrics())
            .context("starting the metrics listener")?;
        println!("metrics on http://{bound}/metrics");
    }
    agent.run()?;
    Ok(())
}
