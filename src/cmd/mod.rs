//! The subcommands, and how their errors map to exit codes.

pub(crate) mod agent;
pub(crate) mod ca;
pub(crate) mod coordinator;
pub(crate) mod demo;
pub(crate) mod docs;
pub(crate) mod gc;
pub(crate) mod history;
pub(crate) mod iso;
pub(crate) mod keygen;
pub(crate) mod logs;
pub(crate) mod progress;
pub(crate) mod publish;
pub(crate) mod replicate;
pub(crate) mod serve;
pub(crate) mod stores;
pub(crate) mod sync;
pub(crate) mod verify;

use pulpdist_publish::PublishError;
use pulpdist_sync::SyncError;

/// Exit code for an error (documented in main.rs and README.md).
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<verify::Damaged>() {
            return 3;
        }
        if let Some(s) = cause.downcast_ref::<SyncError>() {
            return sync_code(s);
        }
        if let Some(r) = cause.downcast_ref::<pulpdist_rsync::RsyncError>() {
            return match r {
                pulpdist_rsync::RsyncError::Usage(_) => 2,
                pulpdist_rsync::RsyncError::Busy { .. } => 4,
                _ => 1,
            };
        }
        if let Some(r) = cause.downcast_ref::<pulpdist_replicate::ReplicateError>() {
            use pulpdist_replicate::ReplicateError as R;
            return match r {
                R::Source(s) => sync_code(s),
                R::Target(PublishError::Locked { .. } | PublishError::HeadChanged { .. }) => 4,
                R::Damaged { .. } | R::TargetHead { .. } | R::Equivocation { .. } => 3,
                _ => 1,
            };
        }
        if let Some(g) = cause.downcast_ref::<pulpdist_gc::GcError>() {
            use pulpdist_gc::GcError;
            return match g {
                GcError::EmptyPolicy | GcError::BadPolicy(_) | GcError::NoSuchTree { .. } => 2,
                GcError::NoSuchVersion { .. } => 2,
                GcError::Unreadable { .. } => 3,
                GcError::Busy { .. } | GcError::Store(PublishError::Locked { .. }) => 4,
                GcError::Store(_) | GcError::Stopped { .. } => 1,
            };
        }
        if let Some(PublishError::Locked { .. } | PublishError::HeadChanged { .. }) =
            cause.downcast_ref::<PublishError>()
        {
            return 4;
        }
    }
    if e.chain().any(|c| c.is::<Usage>()) {
        return 2;
    }
    1
}

/// The exit code of a sync error (also a replicate's, reading its source).
fn sync_code(s: &SyncError) -> u8 {
    match s {
        SyncError::Usage(_) => 2,
        SyncError::Busy { .. } => 4,
        s if s.is_refusal() => 3,
        _ => 1,
    }
}

/// The error and its causes on one line, each cause once: library errors name their cause
/// in their own message (so it shows wherever they are printed), and a cause already said
/// by an outer message is not repeated.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A command line that cannot work as given (a missing or conflicting option): exit 2.
#[derive(Debug)]
pub(crate) struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A [`Usage`] error.
pub(crate) fn usage(text: impl Into<String>) -> anyhow::Error {
    Usage(text.into()).into()
}

/// Standard output was closed by its reader (`pulpdist ... | head`): `main` ends quietly
/// with success. Only this error does so, not a broken pipe anywhere else (an upload).
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` to standard output. A closed stdout is [`StdoutClosed`]; any other
/// failure (a full disk) is an error naming standard output.
pub(crate) fn say(text: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing the report to standard output")),
    }
}

/// Prints a JSON object on one line, or human lines (through [`say`]).
pub(crate) fn emit(
    json: bool,
    value: serde_json::Value,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        say(format_args!("{value}\n"))
    } else {
        say(human())
    }
}

/// Largest key, trusted-keys, secret or tree definitions file read (a few kB in practice).
pub(crate) const MAX_SMALL_FILE: u64 = 1 << 20;

/// Reads a small text file (`what` names it in errors), refusing one larger than
/// [`MAX_SMALL_FILE`] without reading more: `/dev/zero` given as a key is an error, not an
/// exhausted memory.
pub(crate) fn read_small(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SMALL_FILE + 1).read_to_string(&mut text))
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if text.len() as u64 > MAX_SMALL_FILE {
        anyhow::bail!(
            "reading {what} {}: larger than {MAX_SMALL_FILE} bytes",
            path.display()
        );
    }
    Ok(text)
}

/// The definition of `tree` in a tree definitions file.
pub(crate) fn load_tree_def(
    path: &std::path::Path,
    tree: &str,
) -> anyhow::Result<pulpdist_config::TreeDef> {
    use anyhow::Context;
    let text = read_small(path, "tree definitions")?;
    let defs = pulpdist_config::parse_trees(&text)
        .with_context(|| format!("in tree definitions {}", path.display()))?;
    defs.into_iter()
        .find(|d| d.name == tree)
        .ok_or_else(|| anyhow::anyhow!("{}: no tree '{tree}' defined", path.display()))
}

/// Raises the soft limit on open files to the hard limit: `serve`'s connection cap, not
/// the descriptor table, is then what a flood of connections runs into, and deleting a
/// deep tree in a sync (a descriptor per level) does not fail first. Returns the soft
/// limit now in force.
pub(crate) fn raise_open_files() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    getrlimit(Resource::Nofile).current
}
