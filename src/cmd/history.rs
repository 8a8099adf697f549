//! `pulpdist log` and `pulpdist diff`: a tree's versions, from the heads its store archives.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

/// Where the archived heads are read and what verifies them.
#[derive(clap::Args)]
pub(crate) struct StoreArgs {
    /// The store: a directory or s3://bucket[/prefix] (an HTTP store does not list its
    /// archived heads).
    #[arg(long)]
    store: String,
    /// Tree name.
    #[arg(long)]
    tree: String,
    /// Trusted public key file(s) the heads must be signed with.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    #[command(flatten)]
    access: super::stores::Access,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct LogArgs {
    #[command(flatten)]
    at: StoreArgs,
}

#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    #[command(flatten)]
    at: StoreArgs,
    /// The older version.
    from: u64,
    /// The newer version.
    to: u64,
    /// Counts and bytes only, not each path.
    #[arg(long)]
    stat: bool,
}

fn open(
    a: &StoreArgs,
) -> Result<(
    super::stores::Opened<dyn pulpdist_sync::StoreReader>,
    pulpdist_format::TrustedKeys,
)> {
    pulpdist_format::validate_tree_name(&a.tree).map_err(|e| super::usage(e.to_string()))?;
    let trusted = super::sync::load_trust(&a.trust)?;
    Ok((a.access.reader(&a.store)?, trusted))
}

pub(crate) fn log(a: LogArgs) -> Result<()> {
    let a = a.at;
    let (reader, trusted) = open(&a)?;
    let versions = pulpdist_sync::log(&*reader, &a.tree, &trusted)
        .with_context(|| format!("listing the versions of tree '{}' in {}", a.tree, a.store))?;
    let rows: Vec<_> = versions
        .iter()
        .map(|v| {
            json!({"version": v.version, "created": v.created, "signer": v.signer,
                   "root": v.root.to_hex(), "files": v.files, "bytes": v.bytes,
                   "new_bytes": v.new_bytes, "problem": v.problem})
        })
        .collect();
    super::emit(a.json, json!(rows), || {
        let mut s =
            String::from("version  created (unix)   files          bytes      new bytes  signer\n");
        for v in &versions {
            if let Some(p) = &v.problem {
                s.push_str(&format!("{:>7}  damaged: {p}\n", v.version));
                continue;
            }
            s.push_str(&format!(
                "{:>7}  {:>14}  {:>6}  {:>13}  {:>13}  {}\n",
                v.version, v.created, v.files, v.bytes, v.new_bytes, v.signer
            ));
        }
        s
    })?;
    let damaged = versions.iter().filter(|v| v.problem.is_some()).count();
    match damaged {
        0 => Ok(()),
        count => Err(super::verify::Damaged::new(&a.store, count).into()),
    }
}

pub(crate) fn diff(a: DiffArgs) -> Result<()> {
    let (reader, trusted) = open(&a.at)?;
    let (tree, store) = (&a.at.tree, &a.at.store);
    let changes =
        pulpdist_sync::diff(&*reader, tree, &trusted, a.from, a.to).with_context(|| {
            format!(
                "comparing versions {} and {} of tree '{tree}' in {store}",
                a.from, a.to
            )
        })?;
    let count = |c: pulpdist_sync::Change| changes.iter().filter(|p| p.change == c).count();
    let sum = |c: pulpdist_sync::Change, new: bool| -> u64 {
        let pick = |p: &pulpdist_sync::PathChange| if new { p.new_size } else { p.old_size };
        changes.iter().filter(|p| p.change == c).map(pick).sum()
    };
    use pulpdist_sync::Change::{Added, Changed, Removed};
    let stat = json!({
        "added": count(Added), "removed": count(Removed), "changed": count(Changed),
        "bytes_added": sum(Added, true), "bytes_removed": sum(Removed, false),
        "bytes_changed_from": sum(Changed, false), "bytes_changed_to": sum(Changed, true),
    });
    let paths: Vec<_> = changes
        .iter()
        .map(|p| {
            let how = match p.change {
                Added => "added",
                Removed => "removed",
                Changed => "changed",
            };
            json!({"path": p.path, "change": how, "old_size": p.old_size, "new_size": p.new_size})
        })
        .collect();
    let value = match a.stat {
        true => stat.clone(),
        false => json!({"stat": stat, "paths": paths}),
    };
    super::emit(a.at.json, value, || {
        let mut s = String::new();
        if !a.stat {
            for p in &changes {
                let (mark, size) = match p.change {
                    Added => ("A", p.new_size.to_string()),
                    Removed => ("D", p.old_size.to_string()),
                    Changed => ("M", format!("{} -> {}", p.old_size, p.new_size)),
                };
                s.push_str(&format!("{mark} {}  ({size} bytes)\n", p.path));
            }
        }
        s.push_str(&format!(
            "{} added ({} bytes), {} removed ({} bytes), {} changed ({} -> {} bytes)\n",
            count(Added),
            sum(Added, true),
            count(Removed),
            sum(Removed, false),
            count(Changed),
            sum(Changed, false),
            sum(Changed, true)
        ));
        s
    })
}
