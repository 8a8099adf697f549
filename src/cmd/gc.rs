//! `pulpdist gc`: keep the versions a retention policy names, and remove, in two phases a
//! grace period apart, the packs and archived heads nothing kept reaches.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pulpdist_gc::{gc, GcOptions, GcReport, Object, Policy, Repack, Repacked};
use serde_json::json;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The store: a directory, or s3://bucket[/prefix].
    #[arg(long)]
    store: String,
    /// Trees the policy applies to (repeatable) [default: every tree]; every version of
    /// the other trees is kept.
    #[arg(long = "tree")]
    trees: Vec<String>,
    /// Keep the N highest versions of each tree.
    #[arg(long, value_name = "N")]
    keep_last: Option<u64>,
    /// Keep the versions published within this long (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_within: Option<Duration>,
    /// Keep this version too (repeatable): TREE:V pins tree TREE's version V; V alone
    /// needs exactly one --tree. Pins last as long as the command line carries them (for
    /// the timer, PULPDIST_GC_POLICY in /etc/default/pulpdist-gc).
    #[arg(long = "keep-version", value_name = "[TREE:]V", value_parser = parse_pin)]
    keep_versions: Vec<(Option<String>, u64)>,
    /// Remove a pack only once it has been condemned (unreached) this long, and keep each
    /// version that was current less than this ago: longer than the longest publish and
    /// sync.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Rewrite each pack more than PERCENT unreached: its reached objects are copied into
    /// new packs and the kept versions re-encoded to name them (the current version is
    /// published again as the next one), so the old pack goes. Needs --key.
    #[arg(long, value_name = "PERCENT", requires = "key", value_parser = clap::value_parser!(u8).range(0..=100))]
    max_unused: Option<u8>,
    /// The trees' signing key (for --max-unused).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print what would be removed and condemned; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The gc's state directory, for its lock on an object store
    /// [default: ~/.cache/pulpdist/gc/<bucket>/<prefix>; a directory store locks
    /// locks/.gc.lock].
    #[arg(long)]
    state: Option<PathBuf>,
    #[command(flatten)]
    s3: super::stores::S3Args,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
}

fn parse_pin(s: &str) -> Result<(Option<String>, u64), String> {
    let (tree, v) = match s.rsplit_once(':') {
        Some((t, v)) => {
            pulpdist_format::validate_tree_name(t).map_err(|e| e.to_string())?;
            (Some(t.to_string()), v)
        }
        None => (None, s),
    };
    let v = v
        .parse()
        .map_err(|_| format!("'{s}' is not a version, or TREE:VERSION"))?;
    Ok((tree, v))
}

pub(crate) fn run(a: Args) -> Result<()> {
    if a.keep_versions.iter().any(|(t, _)| t.is_none()) && a.trees.len() != 1 {
        return Err(super::usage(
            "--keep-version V needs exactly one --tree (or name the tree: --keep-version TREE:V)",
        ));
    }
    if let super::stores::Location::Dir(d) = super::stores::parse(&a.store)? {
        // Opening a directory store creates its layout: not for a mistyped path.
        if !d.join("heads").is_dir() {
            anyhow::bail!("{}: not a store (no heads/ directory)", d.display());
        }
    }
    let store = super::stores::target(&a.store, &a.s3)?;
    let state = match (&a.state, super::stores::parse(&a.store)?) {
        (Some(s), _) => s.clone(),
        (None, super::stores::Location::Dir(d)) => d.join("locks"),
        (None, super::stores::Location::S3 { bucket, prefix }) => {
            super::stores::bucket_state("gc", &bucket, &prefix)
        }
        (None, super::stores::Location::Http(_)) => unreachable!("refused by stores::target"),
    };
    let policy = Policy {
        keep_last: a.keep_last,
        keep_within: a.keep_within.map(|d| d.as_secs()),
        keep_versions: a.keep_versions.clone(),
    };
    let mut opts = GcOptions::new(policy, state);
    opts.trees = a.trees.clone();
    opts.grace = a.grace.as_secs();
    opts.dry_run = a.dry_run;
    if let (Some(max_unused), Some(path)) = (a.max_unused, &a.key) {
        let text = super::read_small(path, "key")?;
        let key = pulpdist_format::SecretKey::from_text(&text)
            .with_context(|| format!("parsing key {}", path.display()))?;
        opts.repack = Some(Repack {
            max_unused,
            key: std::sync::Arc::new(key),
            pack_size: 64 << 20,
        });
    }
    let report = gc(&*store, &opts, &a.progress.reporter())
        .with_context(|| format!("collecting garbage in {}", a.store))?;
    print_report(a.json, &report)
}

fn print_report(json: bool, r: &GcReport) -> Result<()> {
    let objects = |list: &[Object]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|o| json!({"key": o.key, "bytes": o.bytes}))
            .collect()
    };
    let bytes = |list: &[Object]| -> u64 { list.iter().map(|o| o.bytes).sum() };
    let trees: Vec<_> = r
        .trees
        .iter()
        .map(|t| json!({"tree": t.tree, "current": t.current, "versions": t.versions, "kept": t.kept}))
        .collect();
    let value = json!({
        "dry_run": r.dry_run,
        "trees": trees,
        "removed": objects(&r.removed),
        "removed_bytes": bytes(&r.removed),
        "condemned": objects(&r.condemned),
        "condemned_bytes": bytes(&r.condemned),
        "rescued": r.rescued,
        "waiting": r.waiting,
        "young": r.young,
        "packs_before": r.packs_before,
        "bytes_before": r.bytes_before,
        "bytes_after": r.bytes_after,
        "live_bytes": r.live_bytes,
        "nodes": r.nodes,
        "chunks": r.chunks,
        "repacked": r.repacked.as_ref().map(repacked_json),
    });
    super::emit(json, value, || human(r))
}

/// The report as lines for a person.
fn human(r: &GcReport) -> String {
    let bytes = |list: &[Object]| -> u64 { list.iter().map(|o| o.bytes).sum() };
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let cverb = if r.dry_run {
        "would condemn"
    } else {
        "condemned"
    };
    let mut s = String::new();
    let list = |v: &mut dyn Iterator<Item = u64>| -> String {
        let v: std::collections::BTreeSet<u64> = v.collect();
        v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
    };
    for t in &r.trees {
        let all = list(&mut t.versions.iter().copied());
        let kept = list(&mut t.kept.iter().copied());
        s.push_str(&format!(
            "tree {}: versions {all} (current {}), keeping {kept}\n",
            t.tree, t.current
        ));
    }
    for o in &r.removed {
        s.push_str(&format!("{verb} {} ({} bytes)\n", o.key, o.bytes));
    }
    for o in &r.condemned {
        s.push_str(&format!("{cverb} {} ({} bytes)\n", o.key, o.bytes));
    }
    s.push_str(&format!(
        "{verb} {} object(s), {} bytes; {cverb} {} pack(s), {} bytes; {} waiting out the grace period, {} too young, {} rescued\n",
        r.removed.len(),
        bytes(&r.removed),
        r.condemned.len(),
        bytes(&r.condemned),
        r.waiting,
        r.young,
        r.rescued
    ));
    if let Some(p) = &r.repacked {
        let sparse: u64 = p.sparse.iter().map(|(_, b)| b).sum();
        let verb = if r.dry_run {
            "would rewrite"
        } else {
            "rewrote"
        };
        s.push_str(&format!(
            "{verb} {} sparse pack(s) ({sparse} bytes): {} bytes copied into {} new pack(s)\n",
            p.sparse.len(),
            p.bytes_copied,
            p.packs_written.len()
        ));
        for (tree, from, to) in &p.versions {
            match from == to {
                true => s.push_str(&format!(
                    "  tree {tree}: version {from} signed again with its new root\n"
                )),
                false => s.push_str(&format!(
                    "  tree {tree}: version {from} published again as {to}\n"
                )),
            }
        }
        for (tree, why) in &p.skipped {
            s.push_str(&format!("  tree {tree} left out: {why}\n"));
        }
    }
    s.push_str(&format!(
        "packs: {} bytes before, {} after; the kept versions reach {} bytes\n",
        r.bytes_before, r.bytes_after, r.live_bytes
    ));
    s
}

fn repacked_json(p: &Repacked) -> serde_json::Value {
    let sparse: Vec<_> = p
        .sparse
        .iter()
        .map(|(id, bytes)| json!({"key": id.object_key(), "bytes": bytes}))
        .collect();
    let versions: Vec<_> = p
        .versions
        .iter()
        .map(|(tree, from, to)| json!({"tree": tree, "version": from, "now": to}))
        .collect();
    let skipped: Vec<_> = p
        .skipped
        .iter()
        .map(|(tree, why)| json!({"tree": tree, "why": why}))
        .collect();
    json!({
        "sparse": sparse,
        "bytes_copied": p.bytes_copied,
        "packs_written": p.packs_written.len(),
        "versions": versions,
        "skipped": skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree's line names its versions and the kept ones (it read "2 version(s),
    /// keeping 3": a count beside a version number).
    #[test]
    fn a_trees_line_names_its_versions_and_the_kept_ones() {
        let r = GcReport {
            trees: vec![pulpdist_gc::TreeVersions {
                tree: "t".into(),
                current: 3,
                versions: vec![2, 3],
                kept: vec![3],
            }],
            ..GcReport::default()
        };
        let text = human(&r);
        let line = text.lines().next().expect("a line");
        assert_eq!(line, "tree t: versions 2 3 (current 3), keeping 3");
    }
}
