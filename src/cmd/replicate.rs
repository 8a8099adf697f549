//! `pulpdist replicate`: copy trees' current signed versions from one store into another
//! (a relay's), verified object by object, head last.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pulpdist_publish::Store;
use pulpdist_replicate::{replicate, ReplicateOptions, ReplicateReport};
use pulpdist_sync::StoreReader;
use serde_json::json;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The store to copy from: a directory, http(s)://host[:port][/prefix], or
    /// s3://bucket[/prefix].
    #[arg(long)]
    from: String,
    /// The store to copy into: a directory, or s3://bucket[/prefix].
    #[arg(long)]
    to: String,
    /// A tree to copy (repeatable).
    #[arg(long = "tree", required = true)]
    trees: Vec<String>,
    /// Trusted public key file(s): every head copied must be signed by one of them.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    /// Packs fetched at once, 1 to 64.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    connections: u64,
    /// The replicate's own directory (packs on their way into a bucket, its lock there)
    /// [default: ~/.cache/pulpdist/replicate/<bucket>/<prefix>; unused for a directory].
    #[arg(long)]
    state: Option<PathBuf>,
    #[command(flatten)]
    tls: super::stores::TlsArgs,
    #[command(flatten)]
    s3: super::stores::S3Args,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    /// Pretend the clock says this (seconds since the epoch); for testing expiry.
    #[arg(long, hide = true)]
    now: Option<i64>,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let trusted = super::sync::load_trust(&a.trust)?;
    let source = super::stores::reader(&a.from, a.tls.http()?, &a.s3)?;
    let (target, work_dir) = open_target(&a.to, a.state.clone(), &a.s3)?;
    let mut reports = Vec::new();
    let mut failed = None;
    for tree in &a.trees {
        let mut opts = ReplicateOptions::new(tree, trusted.clone(), &work_dir);
        opts.connections = a.connections as usize;
        opts.now = a.now;
        opts.progress = a.progress.reporter();
        match one(&*source, &*target, &opts, (&a.from, &a.to)) {
            Ok(r) => reports.push(Ok(r)),
            // The other trees are still copied; the first failure decides the exit code.
            Err(e) => {
                tracing::error!(tree = %tree, "{}", super::describe(&e));
                reports.push(Err((tree.clone(), super::describe(&e))));
                failed.get_or_insert(e);
            }
        }
    }
    print_reports(a.json, &reports)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The target store and the replicate's own directory for it.
pub(crate) fn open_target(
    to: &str,
    state: Option<PathBuf>,
    s3: &super::stores::S3Args,
) -> Result<(super::stores::Opened<dyn Store>, PathBuf)> {
    let work_dir = match (state, super::stores::parse(to)?) {
        (Some(s), _) => s,
        (None, super::stores::Location::Dir(d)) => d.join("tmp"),
        (None, super::stores::Location::S3 { bucket, prefix }) => {
            super::stores::bucket_state("replicate", &bucket, &prefix)
        }
        (None, super::stores::Location::Http(u)) => {
            return Err(super::usage(format!(
                "{u}: an HTTP store is read-only; replicate into its directory or bucket and serve that"
            )))
        }
    };
    Ok((super::stores::target(to, s3)?, work_dir))
}

/// One tree, with the stores named in the error.
pub(crate) fn one(
    source: &dyn StoreReader,
    target: &dyn Store,
    opts: &ReplicateOptions,
    (from, to): (&str, &str),
) -> Result<ReplicateReport> {
    replicate(source, target, opts)
        .with_context(|| format!("replicating tree '{}' from {from} into {to}", opts.tree))
}

/// One report as JSON.
pub(crate) fn report_json(r: &ReplicateReport) -> serde_json::Value {
    json!({
        "tree": r.tree, "version": r.version, "previous_version": r.previous_version,
        "source_version": r.source_version, "up_to_date": r.up_to_date, "target_ahead": r.target_ahead,
        "packs_copied": r.packs_copied, "bytes_copied": r.bytes_copied,
        "packs_skipped": r.packs_skipped, "bytes_skipped": r.bytes_skipped,
        "objects_verified": r.objects_verified, "nodes_walked": r.nodes_walked, "packs_repaired": r.packs_repaired,
        "requests": r.requests, "bytes_fetched": r.bytes_fetched,
        "history_error": r.history_error, "elapsed_ms": r.elapsed_ms,
    })
}

/// One line for a person.
pub(crate) fn report_line(r: &ReplicateReport) -> String {
    if r.up_to_date {
        format!("{}: up to date at version {}\n", r.tree, r.version)
    } else if r.target_ahead {
        format!(
            "{}: the target holds version {}, newer than the source's {}; left as it is\n",
            r.tree, r.version, r.source_version
        )
    } else {
        let prev = r
            .previous_version
            .map_or("nothing".to_string(), |v| format!("version {v}"));
        format!(
            "{}: {prev} -> version {}: copied {} packs ({} bytes, {} objects verified), skipped {} packs the target held ({} bytes); {} requests, {} ms\n",
            r.tree, r.version, r.packs_copied, r.bytes_copied, r.objects_verified, r.packs_skipped, r.bytes_skipped, r.requests, r.elapsed_ms
        )
    }
}

fn print_reports(
    json: bool,
    reports: &[std::result::Result<ReplicateReport, (String, String)>],
) -> Result<()> {
    let done: Vec<&ReplicateReport> = reports.iter().filter_map(|r| r.as_ref().ok()).collect();
    let sum = |f: fn(&ReplicateReport) -> u64| done.iter().map(|r| f(r)).sum::<u64>();
    let trees: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| match r {
            Ok(r) => report_json(r),
            Err((tree, error)) => json!({"tree": tree, "error": error}),
        })
        .collect();
    super::emit(
        json,
        json!({
            "trees": trees,
            "packs_copied": sum(|r| r.packs_copied), "bytes_copied": sum(|r| r.bytes_copied),
            "packs_skipped": sum(|r| r.packs_skipped), "bytes_skipped": sum(|r| r.bytes_skipped),
        }),
        || done.iter().map(|r| report_line(r)).collect(),
    )
}
