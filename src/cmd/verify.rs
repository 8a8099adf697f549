//! `pulpdist verify --store` and `verify --mirror`: check that a store, or a mirror against
//! the version it holds, is intact (exit 0), damaged (exit 3, each problem listed), or could
//! not be checked (exit 1); `--repair` brings a damaged mirror back from its store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["store", "mirror"]).multiple(true))]
pub(crate) struct Args {
    /// The store to check (or, with --mirror --repair, to repair from): a directory,
    /// http(s)://host[:port][/prefix], or s3://bucket[/prefix].
    #[arg(long)]
    store: Option<String>,
    /// Check this mirror directory against the version it holds (one --tree).
    #[arg(long)]
    mirror: Option<PathBuf>,
    /// The mirror's state directory [default: .<mirror name>.pulpdist beside it].
    #[arg(long, requires = "mirror")]
    state: Option<PathBuf>,
    /// Bring what is wrong in the mirror back from --store (a full sync after marking
    /// damaged files), then check again.
    #[arg(long, requires_all = ["mirror", "store"])]
    repair: bool,
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
    #[arg(long, value_name = "N/M", value_parser = parse_subset, conflicts_with = "mirror")]
    read_data_subset: Option<(u64, u64)>,
    /// With --mirror: the mirror was synced with --special-modes (setuid, setgid and sticky
    /// bits and world-writable directories as the index gives them), and --repair keeps it so.
    #[arg(long, requires = "mirror")]
    special_modes: bool,
    #[command(flatten)]
    access: super::stores::Access,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
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

impl Damaged {
    /// `count` problems found in `store`.
    pub(crate) fn new(store: &str, count: usize) -> Self {
        Damaged {
            store: store.to_string(),
            count,
        }
    }
}

pub(crate) fn run(a: Args) -> Result<()> {
    let trusted = super::sync::load_trust(&a.trust)?;
    if let Some(mirror) = &a.mirror {
        return run_mirror(&a, mirror, trusted);
    }
    let store = a.store.clone().unwrap_or_default();
    let reader = a.access.reader(&store)?;
    let read_data = match (a.read_data, a.read_data_subset) {
        (true, _) => pulpdist_sync::ReadData::All,
        (false, Some((n, m))) => pulpdist_sync::ReadData::Subset { n, m },
        (false, None) => pulpdist_sync::ReadData::No,
    };
    let r = pulpdist_sync::verify_store(
        &*reader,
        &a.trees,
        &trusted,
        read_data,
        &a.progress.reporter(),
    )
    .with_context(|| format!("checking {store}"))?;
    super::emit(
        a.json,
        json!({
            "trees": r.trees, "archived": r.archived, "nodes": r.nodes, "chunk_refs": r.chunk_refs, "chunks": r.chunks,
            "packs": r.packs, "packs_read": r.packs_read, "chunks_read": r.chunks_read,
            "bytes_read": r.bytes_read, "problems": problems_json(&r.problems),
        }),
        || {
            format!(
                "{}{} trees, {} nodes, {} chunks in {} packs checked; {} packs ({} chunks, {} bytes) read; {} problems\n",
                problems_text(&r.problems), r.trees, r.nodes, r.chunks, r.packs, r.packs_read,
                r.chunks_read, r.bytes_read, r.problems.len()
            )
        },
    )?;
    damaged(&store, r.problems.len())
}

/// `--mirror`: the mirror against its applied version; with `--repair`, fixed from the store.
fn run_mirror(
    a: &Args,
    mirror: &std::path::Path,
    trusted: pulpdist_format::TrustedKeys,
) -> Result<()> {
    let [tree] = a.trees.as_slice() else {
        return Err(super::usage("--mirror checks one tree: give one --tree"));
    };
    if a.store.is_some() && !a.repair {
        return Err(super::usage(
            "--mirror with --store repairs: give --repair, or check the store on its own",
        ));
    }
    let mut opts = pulpdist_sync::SyncOptions::new(tree, mirror, trusted);
    opts.state_dir = a.state.clone();
    opts.special_modes = a.special_modes;
    let what = format!("checking mirror {} (tree '{tree}')", mirror.display());
    let first = pulpdist_sync::verify_mirror(&opts, a.read_data);
    let (found, bad_bytes) = match (&first, a.repair) {
        (Ok(r), _) => (r.problems.len(), r.damaged.clone()),
        // The state cannot say what the mirror holds (a node gone from its cache): a full
        // sync from the store brings both back.
        (Err(pulpdist_sync::SyncError::State { .. }), true) => (1, Vec::new()),
        (Err(_), _) => return first.map(|_| ()).context(what),
    };
    let r = match (a.repair && found > 0, &a.store) {
        (true, Some(store)) => {
            let reader = a.access.reader(store)?;
            pulpdist_sync::invalidate(mirror, &bad_bytes).context(what.clone())?;
            opts.full = true;
            pulpdist_sync::sync(&*reader, &opts)
                .with_context(|| format!("repairing {} from {store}", mirror.display()))?;
            pulpdist_sync::verify_mirror(&opts, a.read_data).context(what)?
        }
        _ => first.context(what)?,
    };
    let repaired = a.repair && found > 0 && r.problems.is_empty();
    super::emit(
        a.json,
        json!({
            "version": r.version, "entries": r.entries, "bytes_read": r.bytes_read,
            "found": found, "repaired": repaired,
            "problems": problems_json(&r.problems),
        }),
        || {
            let fixed = match repaired {
                true => format!("{found} problems repaired; "),
                false => String::new(),
            };
            format!(
                "{}{fixed}version {}: {} entries checked, {} bytes read; {} problems\n",
                problems_text(&r.problems),
                r.version,
                r.entries,
                r.bytes_read,
                r.problems.len()
            )
        },
    )?;
    damaged(&mirror.display().to_string(), r.problems.len())
}

fn problems_json(problems: &[pulpdist_sync::Problem]) -> Vec<serde_json::Value> {
    problems
        .iter()
        .map(|p| json!({"object": p.object, "what": p.what}))
        .collect()
}

fn problems_text(problems: &[pulpdist_sync::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("damaged: {}: {}\n", p.object, p.what))
        .collect()
}

/// Exit 3 when anything was found wrong.
fn damaged(store: &str, count: usize) -> Result<()> {
    match count {
        0 => Ok(()),
        count => Err(Damaged {
            store: store.to_string(),
            count,
        }
        .into()),
    }
}
