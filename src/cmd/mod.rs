//! The subcommands, and how their errors map to exit codes.

pub mod ca;
pub mod demo;
pub mod iso;
pub mod keygen;
pub mod publish;
pub mod serve;
pub mod stores;
pub mod sync;

use pulpdist_client::SyncError;
use pulpdist_server::PublishError;

/// Exit code for an error (documented in main.rs and README.md).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<SyncError>() {
            return match s {
                SyncError::Format { .. }
                | SyncError::WrongTree { .. }
                | SyncError::Rollback { .. }
                | SyncError::Equivocation { .. }
                | SyncError::Expired { .. } => 3,
                _ => 1,
            };
        }
        if let Some(PublishError::Locked { .. } | PublishError::HeadChanged { .. }) =
            cause.downcast_ref::<PublishError>()
        {
            return 4;
        }
    }
    1
}

/// Prints a JSON object on one line, or human lines. A closed stdout is an error with
/// the `BrokenPipe` kind, which `main` turns into a quiet success (`... | head`).
pub fn emit(
    json: bool,
    value: serde_json::Value,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{value}")
    } else {
        write!(out, "{}", human())
    }
    .and_then(|()| out.flush())
    .context("writing the report to standard output")
}

/// The definition of `tree` in a tree definitions file.
pub fn load_tree_def(
    path: &std::path::Path,
    tree: &str,
) -> anyhow::Result<pulpdist_server::TreeDef> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading tree definitions {}", path.display()))?;
    let defs = pulpdist_server::parse_trees(&text)
        .with_context(|| format!("in tree definitions {}", path.display()))?;
    defs.into_iter()
        .find(|d| d.name == tree)
        .ok_or_else(|| anyhow::anyhow!("{}: no tree '{tree}' defined", path.display()))
}
