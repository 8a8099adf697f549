//! `pulpdist publish`: the next version of a tree into a store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pulpdist_format::{ChunkParams, SecretKey};
use pulpdist_publish::{publish, PublishOptions, PublishReport};
use serde_json::json;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    notify: super::coordinator::NotifyArgs,
    /// The store: a directory, or s3://bucket[/prefix].
    #[arg(long)]
    store: String,
    /// Tree name.
    #[arg(long)]
    tree: String,
    /// Signing key file (from `pulpdist keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Publisher cache directory [default: .<store>.pulpdist-publish/<tree> beside a store
    /// directory; ~/.cache/pulpdist/publish/<bucket>/<prefix>/<tree> for s3://].
    #[arg(long)]
    state: Option<PathBuf>,
    /// Days until the head expires (1 to 366); clients refuse an expired head, so publish
    /// (or re-sign) more often.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(i64).range(1..=366))]
    expires_days: i64,
    /// zstd level for chunks and index nodes.
    #[arg(long, default_value_t = pulpdist_chunker::DEFAULT_ZSTD_LEVEL)]
    zstd_level: i32,
    /// Chunk sizes MIN,AVG,MAX in bytes for a new tree (later versions keep the tree's).
    #[arg(long, value_parser = parse_params)]
    chunk_sizes: Option<ChunkParams>,
    /// Public key file(s) whose signature on the previous head is accepted: the old key,
    /// when the tree moves to a new signing key (see docs/SECURITY.md, key rotation).
    #[arg(long)]
    previous_key: Vec<PathBuf>,
    /// An rsync filter rule ('+ PATTERN', '- PATTERN'); may be repeated. With --include and
    /// --exclude, rules apply in the order given; the first match decides.
    #[arg(long = "filter", value_name = "RULE", allow_hyphen_values = true)]
    filter: Vec<String>,
    /// Same as --filter '+ PATTERN'.
    #[arg(long = "include", value_name = "PATTERN", allow_hyphen_values = true)]
    include: Vec<String>,
    /// Same as --filter '- PATTERN'.
    #[arg(long = "exclude", value_name = "PATTERN", allow_hyphen_values = true)]
    exclude: Vec<String>,
    /// The three above merged in command-line order (filled in by main).
    #[arg(skip)]
    rules: Vec<String>,
    /// Write a delta pack from each of this many previous versions: each changed file
    /// compressed against its old copy, for sites that far behind (0: none).
    #[arg(long, default_value_t = 1)]
    deltas: usize,
    /// zstd level of delta frames (1-22; higher: smaller deltas, slower publish); node
    /// batches above 8 MiB use at most level 9.
    #[arg(long, default_value_t = pulpdist_publish::DEFAULT_DELTA_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    delta_level: i32,
    /// zstd level of the deltas from versions before the previous one (for sites two or
    /// more behind; at most --delta-level): with `--deltas 10`, nine of the ten are
    /// written at this level, which makes them several times cheaper to publish
    #[arg(long, default_value_t = pulpdist_publish::DEFAULT_OLD_DELTA_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    old_delta_level: i32,
    /// Largest delta pack in bytes (1 MiB to 256 MiB, the most a site fetches): a larger
    /// delta is written as several packs, up to 8, each one request for a site.
    #[arg(long, default_value_t = pulpdist_format::delta::MAX_DELTA_PACK, value_parser = clap::value_parser!(u64).range(1 << 20..=pulpdist_format::delta::MAX_DELTA_PACK))]
    delta_pack_size: u64,
    /// Target size of data packs in bytes (a pack closes once it reaches this).
    #[arg(long, default_value_t = 64 << 20)]
    pack_size: u64,
    /// An ISO image of the tree's own files names them instead of listing their chunks
    /// (a composite file: its index costs a path per file, as jigdo's template). `false`
    /// publishes every file plain, for sites whose pulpdist predates composite files
    /// (they refuse such a tree: "unknown entry kind 4")
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    composites: bool,
    /// The head's creation time in Unix seconds (default: now; not later than now, not
    /// earlier than the previous head's, and the head left at least half its time), from
    /// which it expires --expires-days later.
    /// Packs are named by their content, so two publishers given the same source, store
    /// history and key and this time write the same bytes, heads included
    #[arg(long, value_name = "UNIX_SECONDS", conflicts_with = "refresh")]
    created: Option<i64>,
    /// Threads that read, chunk and compress (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    /// Sign the tree's current head again, expiring --expires-days from now, without
    /// reading the source (for a timer: a tree that does not change does not expire).
    #[arg(long, conflicts_with_all = ["source", "trees", "filter", "include", "exclude", "chunk_sizes"])]
    refresh: bool,
    #[command(flatten)]
    s3: super::stores::S3Args,
    /// Tree definitions (TOML): the tree's source, subtrees and filter rules come from its
    /// entry; rules given on the command line come after the file's.
    #[arg(long)]
    trees: Option<PathBuf>,
    /// The directory to publish, or an rsync:// URL (pulled first into a staging directory
    /// in the state directory, kept between runs) [default: the tree's source in --trees].
    source: Option<String>,
}

pub(crate) fn parse_params(s: &str) -> std::result::Result<ChunkParams, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse::<u32>().map_err(|e| format!("'{x}': {e}")))
        .collect::<std::result::Result<_, _>>()?;
    let [min, avg, max] = v[..] else {
        return Err("expected MIN,AVG,MAX".into());
    };
    let p = ChunkParams { min, avg, max };
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

/// The default publisher cache: beside the store, so it survives with it.
pub(crate) fn default_state(store: &std::path::Path, tree: &str) -> PathBuf {
    let name = store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    store
        .with_file_name(format!(".{name}.pulpdist-publish"))
        .join(tree)
}

impl Args {
    /// Merges --filter, --include and --exclude in the order they were given.
    pub(crate) fn set_rule_order(&mut self, m: &clap::ArgMatches) {
        let mut all: Vec<(usize, String)> = Vec::new();
        for (id, prefix) in [("filter", ""), ("include", "+ "), ("exclude", "- ")] {
            if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
                all.extend(idx.zip(vals).map(|(i, v)| (i, format!("{prefix}{v}"))));
            }
        }
        all.sort_by_key(|(i, _)| *i);
        self.rules = all.into_iter().map(|(_, r)| r).collect();
    }
}

fn parse_rules(rules: &[String]) -> Result<pulpdist_format::filter::Filter> {
    let mut f = pulpdist_format::filter::Filter::new();
    for r in rules {
        f.push(
            pulpdist_format::filter::Rule::parse(r)
                .map_err(|e| super::usage(format!("on the command line: {e}")))?,
        );
    }
    Ok(f)
}

/// The publisher's state directory: `--state`, or the default for the store; never
/// inside a store directory (a web server may serve it), nor the store inside it.
fn state_dir(a: &Args) -> Result<PathBuf> {
    let location = super::stores::parse(&a.store)?;
    let state = match (&a.state, &location) {
        (Some(s), _) => s.clone(),
        (None, super::stores::Location::Dir(d)) => {
            // `--store .` names the directory it is in: the cache goes beside it, not in it.
            let d = pulpdist_sync::absolute_dir(d)
                .with_context(|| format!("resolving store directory {}", d.display()))?;
            default_state(&d, &a.tree)
        }
        (None, super::stores::Location::S3 { bucket, prefix }) => {
            super::stores::bucket_state("publish", bucket, prefix).join(&a.tree)
        }
        (None, super::stores::Location::Http(_)) => unreachable!("refused by stores::target"),
    };
    if let super::stores::Location::Dir(d) = &location {
        let store_dir = pulpdist_sync::absolute_dir(d)
            .with_context(|| format!("resolving store directory {}", d.display()))?;
        let state_dir = pulpdist_sync::absolute_dir(&state)
            .with_context(|| format!("resolving state directory {}", state.display()))?;
        if state_dir.starts_with(&store_dir) || store_dir.starts_with(&state_dir) {
            return Err(super::usage(format!(
                "state directory {} and store {} overlap: keep the publisher's state outside the store",
                state_dir.display(),
                store_dir.display()
            )));
        }
    }
    Ok(state)
}

pub(crate) fn run(a: Args) -> Result<()> {
    pulpdist_format::validate_tree_name(&a.tree).map_err(|e| super::usage(e.to_string()))?;
    let text = super::read_small(&a.key, "key")?;
    let key =
        SecretKey::from_text(&text).with_context(|| format!("parsing key {}", a.key.display()))?;
    let store = super::stores::target(&a.store, &a.s3)?;
    let state = state_dir(&a)?;
    if a.refresh {
        return refresh(&a, &*store, &key, state);
    }
    let def = match &a.trees {
        Some(path) => Some(super::load_tree_def(path, &a.tree)?),
        None => None,
    };
    let cli_rules = parse_rules(&a.rules)?;
    let filter = match &def {
        Some(d) => d.filter_with(&cli_rules),
        None => cli_rules,
    };
    let source = match (&a.source, &def) {
        (Some(s), _) => s.clone(),
        (None, Some(d)) => d.source.clone(),
        (None, None) => anyhow::bail!("no source: give a directory or rsync:// URL, or --trees"),
    };
    let source_dir = if source.starts_with("rsync://") {
        let staging = state.join("rsync-staging");
        let st = pulpdist_rsync::pull(&source, &staging, &filter)
            .with_context(|| format!("pulling {source} into {}", staging.display()))?;
        if !a.json {
            super::say(format_args!(
                "pulled {source}: {} files, {} bytes received, {} deleted\n",
                st.files, st.bytes_received, st.deleted
            ))?;
        }
        staging
    } else {
        PathBuf::from(&source)
    };
    let mut opts = PublishOptions::new(&a.tree, &source_dir, state);
    opts.expires_in = a.expires_days.saturating_mul(86_400);
    if let Some(created) = a.created {
        let expires = created.saturating_add(opts.expires_in);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // Sites refuse an expired head: one that lives less than half its time is a
        // mistake (a stale value passed on), not a reproducible publish.
        if expires.saturating_sub(now) < opts.expires_in / 2 {
            anyhow::bail!("--created {created}: the head would expire at {expires}, less than half its --expires-days from now ({now}); give a later time or more --expires-days");
        }
        if created > now {
            anyhow::bail!("--created {created} is later than now ({now}): sites refuse a head from the future");
        }
        opts.now = Some(created);
    }
    opts.zstd_level = a.zstd_level;
    opts.params = a.chunk_sizes;
    opts.pack_target = a.pack_size.max(1);
    opts.threads = a.threads.map(usize::from);
    opts.filter = filter;
    opts.deltas = a.deltas;
    opts.delta_level = a.delta_level;
    opts.old_delta_level = a.old_delta_level;
    opts.composites = a.composites;
    opts.delta_pack_size = a.delta_pack_size;
    opts.progress = a.progress.reporter();
    opts.previous_keys = super::sync::load_trust(&a.previous_key)?.keys().to_vec();
    let report = publish(&*store, &key, &opts).with_context(|| {
        format!(
            "publishing {} as tree '{}' into {}",
            source, a.tree, a.store
        )
    })?;
    if let Some(why) = &report.history_error {
        eprintln!(
            "pulpdist: warning: version {} is published, but its head was not archived (the next publish archives it): {why}",
            report.version
        );
    }
    if let Some(why) = &report.cache_error {
        eprintln!(
            "pulpdist: warning: version {} is published, but the publisher's cache was not written (the next publish uses the last one written and reads the files changed since): {why}",
            report.version
        );
    }
    print_report(a.json, &report)?;
    a.notify.send(&a.tree);
    Ok(())
}

/// `--refresh`: the current head signed again with a new expiry.
fn refresh(
    a: &Args,
    store: &dyn pulpdist_publish::Store,
    key: &SecretKey,
    state: PathBuf,
) -> Result<()> {
    let mut opts = PublishOptions::new(&a.tree, PathBuf::new(), state);
    opts.expires_in = a.expires_days.saturating_mul(86_400);
    opts.previous_keys = super::sync::load_trust(&a.previous_key)?.keys().to_vec();
    let r = pulpdist_publish::refresh(store, key, &opts)
        .with_context(|| format!("refreshing the head of tree '{}' in {}", a.tree, a.store))?;
    super::emit(
        a.json,
        json!({"version": r.version, "expires": r.expires, "refreshed": true}),
        || {
            format!(
                "refreshed tree '{}' version {}: expires at {}\n",
                a.tree, r.version, r.expires
            )
        },
    )
}

pub(crate) fn print_report(json: bool, r: &PublishReport) -> anyhow::Result<()> {
    super::emit(
        json,
        json!({
            "version": r.version, "files": r.files, "dirs": r.dirs, "symlinks": r.symlinks,
            "bytes_total": r.bytes_total, "files_read": r.files_read, "bytes_read": r.bytes_read,
            "chunks_new": r.chunks_new, "bytes_new": r.bytes_new, "bytes_stored": r.bytes_stored,
            "nodes_new": r.nodes_new, "packs": r.packs.len(),
            "root": r.root.map(|id| id.to_hex()), "skipped": r.skipped.len(),
            "bytes_fetched": 0, "requests": 0, "chunks_fetched": 0, "chunks_reused": 0, "bytes_reused": 0,
            "elapsed_ms": r.elapsed_ms, "isos": r.isos, "isos_plain": r.isos_plain,
            "unreadable_packs": r.unreadable_packs, "cache_error": r.cache_error, "history_error": r.history_error,
            "stale_parts_removed": r.stale_parts_removed, "unchanged": r.unchanged,
            "deltas": r.deltas.iter().map(|d| json!({
                "from_version": d.from_version, "files": d.files, "nodes": d.nodes, "with_reference": d.with_reference,
                "bytes_rebuilt": d.bytes_rebuilt, "size": d.size, "packs": d.parts, "level": d.level, "skipped": d.skipped,
            })).collect::<Vec<_>>(),
        }),
        || {
            let mut s = format!(
                "published version {}: {} files ({} bytes), {} read, {} new chunks ({} bytes, {} stored), {} new nodes, {} packs, {} ms\n",
                r.version, r.files, r.bytes_total, r.files_read, r.chunks_new, r.bytes_new, r.bytes_stored, r.nodes_new, r.packs.len(), r.elapsed_ms
            );
            if r.unchanged {
                s.push_str("unchanged since the last publish (its summary; no file, chunk list or catalog read)\n");
            }
            for d in &r.deltas {
                s.push_str(&format!(
                    "delta from version {}: {} files ({} against their old copy), {} bytes in {} packs (level {}) rebuilding {}\n",
                    d.from_version, d.files, d.with_reference, d.size, d.parts, d.level, d.bytes_rebuilt
                ));
                for why in &d.skipped {
                    s.push_str(&format!(
                        "  left out of the delta (fetched as chunks): {why}\n"
                    ));
                }
            }
            for why in &r.unreadable_packs {
                s.push_str(&format!("unreadable pack left out of the catalog: {why}\n"));
            }
            for why in &r.isos_plain {
                s.push_str(&format!("ISO image published as plain chunks: {why}\n"));
            }

            for p in &r.skipped {
                s.push_str(&format!(
                    "skipped (not a file, directory or symlink): {}\n",
                    p.display()
                ));
            }
            s
        },
    )
}
