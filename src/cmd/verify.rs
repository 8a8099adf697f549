//! `pulpdist verify --store`: check that a store is intact (exit 0), damaged (exit 3, each
//! problem listed), or could not be checked (exit 1).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The store: a directory, http(s)://host[:port][/prefix], or s3://bucket[/prefix].
    #[arg(long)]
    store: String,
    /// Trusted public key file(s) the heads must be signed with.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    /// Trees to check (repeatable) [default: every tree the store lists; an HTTP store
    /// cannot list them].
    #[arg(long = "tree")]
    trees: Vec<String>,
    /// Also read every chunk and check it against its id.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read the chunks of one subset of the packs, N of M (by pack id): M runs, N = 1..M,
    /// read every pack once.
    #[arg(long, value_name = "N/M", value_parser = parse_subset)]
    read_data_subset: Option<(u64, u64)>,
    #[command(flatten)]
    tls: super::stores::TlsArgs,
    #[command(flatten)]
    s3: super::stores::S3Args,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_subset(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("'{s}' is not N/M with 1 <= N <= M");
    let (n, m) = s.split_once('/').ok_or_else(bad)?;
    let (n, m): (u64, u64) = (n.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (1..=m).contains(&n) {
        true => Ok((n, m)),
        false => Err(bad()),
    }
}

/// The store is damaged: exit 3.
#[derive(Debug, thiserror::Error)]
#[error("{store}: damaged: {count} problem(s) found")]
pub(crate) struct Damaged {
    store: String,
    count: usize,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let trusted = super::sync::load_trust(&a.trust)?;
    let reader = super::stores::reader(&a.store, a.tls.http()?, &a.s3)?;
    let read_data = match (a.read_data, a.read_data_subset) {
        (true, _) => pulpdist_sync::ReadData::All,
        (false, Some((n, m))) => pulpdist_sync::ReadData::Subset { n, m },
        (false, None) => pulpdist_sync::ReadData::No,
    };
    let r = pulpdist_sync::verify_store(&*reader, &a.trees, &trusted, read_data)
        .with_context(|| format!("checking {}", a.store))?;
    let problems: Vec<_> = r
        .problems
        .iter()
        .map(|p| json!({"object": p.object, "what": p.what}))
        .collect();
    super::emit(
        a.json,
        json!({
            "trees": r.trees, "nodes": r.nodes, "chunk_refs": r.chunk_refs, "chunks": r.chunks,
            "packs": r.packs, "packs_read": r.packs_read, "chunks_read": r.chunks_read,
            "bytes_read": r.bytes_read, "problems": problems,
        }),
        || {
            let mut s = String::new();
            for p in &r.problems {
                s.push_str(&format!("damaged: {}: {}\n", p.object, p.what));
            }
            s.push_str(&format!(
                "{} trees, {} nodes, {} chunks in {} packs checked; {} packs ({} chunks, {} bytes) read; {} problems\n",
                r.trees, r.nodes, r.chunks, r.packs, r.packs_read, r.chunks_read, r.bytes_read, r.problems.len()
            ));
            s
        },
    )?;
    match r.problems.len() {
        0 => Ok(()),
        count => Err(Damaged {
            store: a.store,
            count,
        }
        .into()),
    }
}
