//! `pulpdist sync`: bring a mirror to the tree's current version.

use std::path::PathBuf;

use anyhow::{Context, Result};
use pulpdist_format::TrustedKeys;
use pulpdist_sync::{sync, HttpOptions, StoreReader, SyncOptions, SyncReport};
use serde_json::json;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Read settings from this TOML file: each key a flag's name (`store = "..."`,
    /// `trust = ["a.pub"]`, `connections = 8`), S3 settings in an `[s3]` table; flags win.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    progress: super::progress::ProgressArgs,
    /// Pretend the clock says this (seconds since the epoch); for testing expiry.
    #[arg(long, hide = true)]
    now: Option<i64>,
    /// Files in one wave of a large first sync (for testing waves on small trees).
    #[arg(long, hide = true)]
    wave_files: Option<usize>,
}

/// What a sync is told: each setting is a flag and a key of the `--config` file (a new
/// setting is one field here).
#[derive(clap::Args, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    /// The store: a directory, http(s)://host[:port][/prefix], or s3://bucket[/prefix].
    /// Repeat it to give several in order (a relay, then the origin): each object comes
    /// from the first that serves it whole and verified, and the head from the first
    /// whose head passes every check. In --config: a string or a list.
    #[arg(long)]
    #[serde(default, deserialize_with = "one_or_many")]
    store: Vec<String>,
    /// A store this site relays to the sites below it (a directory or s3://bucket): the
    /// tree's version is first copied into it from the stores (verified, head last), then
    /// the mirror is synced from it, with the stores behind it. One timer for a hub.
    #[arg(long)]
    relay: Option<String>,
    /// Tree name.
    #[arg(long)]
    tree: Option<String>,
    /// Trusted public key file(s); each may hold several keys.
    #[arg(long)]
    #[serde(default)]
    trust: Vec<PathBuf>,
    /// Client state directory [default: .<mirror name>.pulpdist beside the mirror].
    #[arg(long)]
    state: Option<PathBuf>,
    /// Check every directory, not only those whose index node changed (repairs local damage).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    full: Option<bool>,
    /// More file-name patterns of repository metadata, written after all payload (added to
    /// the file's).
    #[arg(long = "metadata")]
    #[serde(default)]
    metadata: Vec<String>,
    /// Requests in flight at once (connections to the store), 1 to 256 [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    connections: Option<u64>,
    /// Ask for several ranges of a pack in one HTTP request, while the origin answers correctly.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    multi_range: Option<bool>,
    /// Retries of a failed HTTP request (with backoff, resuming where the body stopped),
    /// 0 to 100 [default: 6].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: Option<u32>,
    /// Seconds an HTTP connection may take to open, and a response may stall between reads,
    /// 1 to 86400 [default: 60].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
    /// Trust only these CA certificates (PEM) for https:// stores [default: the system's CA
    /// bundle, /etc/ssl/certs/ca-certificates.crt, or else the Mozilla roots].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) for https:// stores that require one.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Tree definitions (TOML): the tree's filter rules (for an rsync:// store) and its
    /// rsync fallback come from its entry.
    #[arg(long)]
    trees: Option<PathBuf>,
    /// An rsync filter rule for an rsync:// store ('+ PATTERN', '- PATTERN'); may be repeated.
    #[arg(long = "filter", value_name = "RULE", allow_hyphen_values = true)]
    #[serde(default)]
    filter: Vec<String>,
    /// rsync:// URL of the same tree: files whose objects the store lacks or serves damaged
    /// are fetched from it and checked against the signed index.
    #[arg(long)]
    rsync_fallback: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    s3: super::stores::S3Args,
    /// Allow the first sync into a directory that already holds files: those the tree
    /// lacks are deleted. A flag only, never a key of the file: it is meant once.
    #[arg(long)]
    #[serde(skip)]
    adopt: bool,
    /// Apply setuid, setgid and sticky bits, and world-writable directories, as the index
    /// gives them (masked off by default).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    special_modes: Option<bool>,
    /// If another sync of this mirror is running, wait up to this many seconds for it to
    /// finish [default: 0, exit 4 at once].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=604_800))]
    wait: Option<u64>,
    /// The mirror directory.
    dest: Option<PathBuf>,
}

impl Settings {
    /// Relative paths of a configuration file, taken from the file's directory (not from
    /// wherever the sync is run).
    fn rebase(&mut self, dir: &std::path::Path) {
        let base = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        let paths = [
            &mut self.dest,
            &mut self.state,
            &mut self.ca,
            &mut self.cert,
        ];
        paths.into_iter().flatten().for_each(base);
        let more = [
            &mut self.key,
            &mut self.trees,
            &mut self.s3.s3_secret_key_file,
        ];
        more.into_iter().flatten().for_each(base);
        self.trust.iter_mut().for_each(base);
    }

    /// The settings of `--config` (if given) with the flags over them, checked.
    fn resolve(config: Option<&std::path::Path>, flags: Settings) -> Result<Settings> {
        // A certificate and its key come from the same place.
        if flags.cert.is_some() != flags.key.is_some() {
            return Err(super::usage(
                "a client certificate needs both --cert and --key",
            ));
        }
        let s = match config {
            None => flags,
            Some(p) => {
                let text = super::read_small(p, "sync configuration")?;
                let mut file: Settings =
                    pulpdist_config::parse(&text).with_context(|| format!("in {}", p.display()))?;
                file.rebase(p.parent().unwrap_or(std::path::Path::new(".")));
                if file.cert.is_some() != file.key.is_some() {
                    return Err(super::usage(format!(
                        "{}: a client certificate needs both cert and key",
                        p.display()
                    )));
                }
                // Metadata patterns add up: the flags' come after the file's.
                let metadata = [file.metadata.clone(), flags.metadata.clone()].concat();
                let mut s = pulpdist_config::overlay(&file, &flags)
                    .with_context(|| format!("merging the flags with {}", p.display()))?;
                s.metadata = metadata;
                s.adopt = flags.adopt;
                s
            }
        };
        let bad = |what: &str| Err(super::usage(what.to_string()));
        match (s.connections, s.retries, s.timeout) {
            (Some(n), _, _) if !(1..=256).contains(&n) => bad("connections must be 1 to 256"),
            (_, Some(n), _) if n > 100 => bad("retries must be 0 to 100"),
            (_, _, Some(n)) if !(1..=86_400).contains(&n) => bad("timeout must be 1 to 86400 s"),
            _ => match &s.rsync_fallback {
                Some(u) if !u.starts_with("rsync://") => {
                    bad("rsync-fallback must be an rsync:// URL")
                }
                _ => Ok(s),
            },
        }
    }
}

/// A store setting in a file: one store, or a list in order.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match <OneOrMany as serde::Deserialize>::deserialize(d)
            .map_err(|_| serde::de::Error::custom("store must be a string or a list of strings"))?
        {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        },
    )
}

pub(crate) fn load_trust(files: &[PathBuf]) -> Result<TrustedKeys> {
    let mut keys = Vec::new();
    for f in files {
        let text = super::read_small(f, "trusted keys")?;
        let t = TrustedKeys::from_text(&text)
            .with_context(|| format!("parsing trusted keys {}", f.display()))?;
        keys.extend_from_slice(t.keys());
    }
    Ok(TrustedKeys::new(keys))
}

pub(crate) fn run(a: Args) -> Result<()> {
    let mut cfg = Settings::resolve(a.config.as_deref(), a.settings)?;
    let missing = |what: &str| {
        super::usage(format!(
            "no {what}: give --{what} or '{what} = ...' in --config"
        ))
    };
    let stores = std::mem::take(&mut cfg.store);
    let Some(store) = stores.first().cloned() else {
        return Err(missing("store"));
    };
    let tree = cfg.tree.take().ok_or_else(|| missing("tree"))?;
    let dest = cfg.dest.take().ok_or_else(|| {
        super::usage(
            "no mirror directory: give it as the last argument or 'dest = ...' in --config",
        )
    })?;
    let trees = cfg.trees.clone();
    let def = match &trees {
        Some(p) => Some(super::load_tree_def(p, &tree)?),
        None => None,
    };
    let mut metadata_patterns: Vec<String> = pulpdist_sync::DEFAULT_METADATA_PATTERNS
        .iter()
        .map(|s| s.to_string())
        .collect();
    metadata_patterns.extend(cfg.metadata.iter().cloned());
    if stores.iter().any(|s| s.starts_with("rsync://")) {
        if stores.len() > 1 || cfg.relay.is_some() {
            return Err(super::usage(
                "an rsync:// store is synced on its own: one --store, no --relay (give a PulpDist store's rsync origin as --rsync-fallback)",
            ));
        }
        let at = Origin {
            store: &store,
            tree: &tree,
            dest: &dest,
        };
        let (dry_run, json) = (a.dry_run, a.json);
        return sync_from_rsync((dry_run, json), &cfg, at, def.as_ref(), &metadata_patterns);
    }
    if !cfg.filter.is_empty() {
        return Err(super::usage(
            "--filter applies to rsync:// stores; a PulpDist store carries the filter its publisher applied",
        ));
    }
    if cfg.trust.is_empty() {
        return Err(missing("trust"));
    }
    let timeout = cfg.timeout.unwrap_or(60);

    // Deleting a deep tree holds a descriptor per level: the hard limit, not the default
    // soft one, is what a sync may use.
    let _ = super::raise_open_files();
    let trusted = load_trust(&cfg.trust)?;
    let mut opts = SyncOptions::new(&tree, &dest, trusted);
    opts.state_dir = cfg.state;
    opts.dry_run = a.dry_run;
    opts.full = cfg.full == Some(true);
    opts.now = a.now;
    if let Some(n) = a.wave_files {
        opts.wave_files = n.max(1);
    }
    opts.wait = std::time::Duration::from_secs(cfg.wait.unwrap_or(0));
    opts.adopt = cfg.adopt;
    opts.progress = a.progress.reporter();
    opts.special_modes = cfg.special_modes == Some(true);
    opts.metadata_patterns = metadata_patterns;
    opts.rsync_fallback = cfg
        .rsync_fallback
        .or_else(|| def.as_ref().and_then(|d| d.rsync_fallback.clone()));
    opts.connections = cfg.connections.unwrap_or(8) as usize;
    let mut http = HttpOptions {
        connections: opts.connections,
        retries: cfg.retries.unwrap_or(6),
        multi_range: cfg.multi_range == Some(true),
        connect_timeout: std::time::Duration::from_secs(timeout.min(15)),
        read_timeout: std::time::Duration::from_secs(timeout),
        ..Default::default()
    };
    super::stores::add_tls(
        &mut http,
        cfg.ca.as_deref(),
        cfg.cert.as_deref().zip(cfg.key.as_deref()),
    )?;
    let mut readers = Vec::new();
    for s in &stores {
        readers.push(super::stores::reader(s, http.clone(), &cfg.s3)?);
    }
    let (relay_reader, relay) = match &cfg.relay {
        // A dry run changes nothing, the relay included: it plans from what the relay holds.
        Some(relay) if opts.dry_run => (
            Some(super::stores::reader(relay, http.clone(), &cfg.s3)?),
            None,
        ),
        Some(relay) => {
            let (reader, report) = relay_first(relay, &readers, &opts, &cfg.s3)?;
            // The sync reads through readers of its own: what the replicate spent (retries,
            // bytes) is not counted again.
            readers.clear();
            for s in &stores {
                readers.push(super::stores::reader(s, http.clone(), &cfg.s3)?);
            }
            (Some(reader), Some(report))
        }
        None => (None, None),
    };
    let mut list: Vec<Box<dyn StoreReader + '_>> = Vec::new();
    if let Some(reader) = &relay_reader {
        list.push(Box::new(&**reader));
    }
    list.extend(
        readers
            .iter()
            .map(|r| Box::new(&**r) as Box<dyn StoreReader>),
    );
    let names = match &cfg.relay {
        Some(r) => format!("{r} (relayed from {})", stores.join(", then ")),
        None => stores.join(", then "),
    };
    let result = match list.len() {
        1 => sync(&*readers[0], &opts),
        _ => sync(&pulpdist_sync::StoreList::new(list)?, &opts),
    }
    .with_context(|| format!("syncing tree '{tree}' from {names} into {}", dest.display()));
    let report = result?;
    let relay_shown = relay.as_ref().map(|r| r.as_ref().map_err(super::describe));
    print_report(a.json, &report, relay_shown)?;
    match relay {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// The tree's version copied from the stores into the relay store; the relay's reader, and
/// the replicate's report or error (the mirror is synced from the relay either way: what
/// it holds, with the stores behind it).
fn relay_first(
    relay: &str,
    readers: &[super::stores::Opened<dyn StoreReader>],
    opts: &SyncOptions,
    s3: &super::stores::S3Args,
) -> Result<(
    super::stores::Opened<dyn StoreReader>,
    Result<pulpdist_replicate::ReplicateReport>,
)> {
    let (target, work_dir) = super::replicate::open_target(relay, None, s3)?;
    let mut ropts =
        pulpdist_replicate::ReplicateOptions::new(&opts.tree, opts.trusted.clone(), work_dir);
    ropts.connections = opts.connections.min(64);
    ropts.now = opts.now;
    ropts.progress = opts.progress.clone();
    let sources: Vec<Box<dyn StoreReader + '_>> = readers
        .iter()
        .map(|r| Box::new(&**r) as Box<dyn StoreReader>)
        .collect();
    let list = pulpdist_sync::StoreList::new(sources)?;
    let from = list.describe();
    let report = super::replicate::one(&list, &*target, &ropts, (&from, relay));
    if let Err(e) = &report {
        tracing::warn!(
            "{}; syncing the mirror from what the relay holds",
            super::describe(e)
        );
    }
    let reader = super::stores::reader(relay, Default::default(), s3)?;
    Ok((reader, report))
}

/// Where an rsync origin sync goes.
struct Origin<'a> {
    store: &'a str,
    tree: &'a str,
    dest: &'a std::path::Path,
}

/// A sync from a plain rsync origin: no signed index to check against, rsync's own
/// checksums; payload first, metadata and deletions after.
fn sync_from_rsync(
    (dry_run, json): (bool, bool),
    cfg: &Settings,
    at: Origin<'_>,
    def: Option<&pulpdist_config::TreeDef>,
    metadata_patterns: &[String],
) -> Result<()> {
    let Origin { store, tree, dest } = at;
    let mut cli_rules = pulpdist_format::filter::Filter::new();
    for r in &cfg.filter {
        cli_rules.push(
            pulpdist_format::filter::Rule::parse(r)
                .map_err(|e| super::usage(format!("--filter: {e}")))?,
        );
    }
    let filter = match def {
        Some(d) => d.filter_with(&cli_rules),
        None => cli_rules,
    };
    let report = pulpdist_sync::sync_rsync(
        store,
        dest,
        &filter,
        metadata_patterns,
        dry_run,
        std::time::Duration::from_secs(cfg.wait.unwrap_or(0)),
    )
    .with_context(|| format!("syncing tree '{tree}' from {store} into {}", dest.display()))?;
    if json {
        return print_report(true, &report, None);
    }
    super::say(format_args!(
        "{} from {store} (payload, then metadata and deletions): {} files, {} deleted, {} bytes received\n",
        if dry_run { "would rsync" } else { "rsynced" },
        report.files,
        report.deleted,
        report.rsync_bytes
    ))
}

pub(crate) fn print_report(
    json: bool,
    r: &SyncReport,
    relay: Option<std::result::Result<&pulpdist_replicate::ReplicateReport, String>>,
) -> anyhow::Result<()> {
    let stores: Vec<serde_json::Value> = match r.stores.is_empty() {
        true => vec![json!({"store": r.head_store, "requests": r.requests, "bytes": r.bytes_fetched, "fell_through": 0, "last_error": null})],
        false => r.stores.iter().map(|u| json!({"store": u.store, "requests": u.requests, "bytes": u.bytes, "fell_through": u.fell_through, "last_error": u.last_error})).collect(),
    };
    let relay_json = match &relay {
        None => serde_json::Value::Null,
        Some(Ok(rr)) => super::replicate::report_json(rr),
        Some(Err(e)) => json!({"error": e}),
    };
    super::emit(
        json,
        json!({
            "head_store": r.head_store, "head_created": r.head_created, "stores": stores, "relay": relay_json,
            "version": r.version, "previous_version": r.previous_version, "up_to_date": r.up_to_date,
            "files": r.files, "symlinks": r.symlinks, "deleted": r.deleted,
            "bytes_fetched": r.bytes_fetched, "requests": r.requests, "retries": r.retries,
            "rsync_files": r.rsync_files, "rsync_bytes": r.rsync_bytes,
            "chunks_fetched": r.chunks_fetched, "chunks_reused": r.chunks_reused, "bytes_reused": r.bytes_reused, "files_rehashed": r.files_rehashed,
            "delta_bytes": r.delta_bytes, "delta_files": r.delta_files, "delta_nodes": r.delta_nodes, "delta_failed": r.delta_failed, "delta_by_plan": r.delta_by_plan,
            "chunks_from_delta": r.chunks_from_delta, "delta_error": r.delta_error,
            "nodes_pruned": r.nodes_pruned, "prune_error": r.prune_error,
            "dirs_examined": r.dirs_examined, "dry_run": r.plan.is_some(), "elapsed_ms": r.elapsed_ms,
            "filter": r.filter.as_deref().map(|f| f.lines().collect::<Vec<_>>()),
        }),
        || {
            let mut s = match &relay {
                None => String::new(),
                Some(Ok(rr)) => format!("relay {}", super::replicate::report_line(rr)),
                Some(Err(e)) => format!("relay not updated: {e}\n"),
            };
            s.push_str(&r.plan.clone().unwrap_or_default());
            if let (Some(f), true) = (&r.filter, r.plan.is_some()) {
                s.push_str(&format!(
                    "the tree is published with these filter rules:\n{f}"
                ));
            }
            let prev = r
                .previous_version
                .map_or("nothing".to_string(), |v| format!("version {v}"));
            if r.up_to_date {
                s.push_str(&format!(
                    "up to date at version {} ({} request, {} bytes)\n",
                    r.version, r.requests, r.bytes_fetched
                ));
            } else {
                s.push_str(&format!(
                    "{} {prev} -> version {}: {} files written, {} deleted; fetched {} chunks ({} bytes in {} requests), reused {} local chunks ({} bytes), {} ms\n",
                    if r.plan.is_some() { "would sync" } else { "synced" },
                    r.version, r.files, r.deleted, r.chunks_fetched, r.bytes_fetched, r.requests, r.chunks_reused, r.bytes_reused, r.elapsed_ms
                ));
                if r.delta_bytes > 0 {
                    s.push_str(&format!(
                        "delta: {} bytes rebuilt {} files ({} chunks){}\n",
                        r.delta_bytes,
                        r.delta_files,
                        r.chunks_from_delta,
                        if r.delta_failed > 0 {
                            format!(
                                "; {} records unusable, their chunks fetched",
                                r.delta_failed
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
                if let Some(e) = &r.delta_error {
                    s.push_str(&format!("delta not used ({e}); chunks fetched instead\n"));
                }
                if let Some(e) = &r.prune_error {
                    s.push_str(&format!("warning: the node cache was not pruned: {e}\n"));
                }
            }
            s
        },
    )
}
