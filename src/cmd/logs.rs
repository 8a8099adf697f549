//! Log lines on stderr through `tracing`: warnings and errors by default, what each phase
//! did with `-v`, details with `-vv`, errors only with `-q`; `RUST_LOG` chooses instead when
//! set. Under systemd (`JOURNAL_STREAM` set) or into a pipe, lines are plain: no colours,
//! no timestamps (the journal stamps them).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether `-q` was given (no progress bar either).
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Installs the subscriber for this process.
pub(crate) fn init(verbose: u8, quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let plain = std::env::var_os("JOURNAL_STREAM").is_some() || !std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!plain)
        .with_target(true);
    let _ = match plain {
        true => builder.without_time().try_init(),
        false => builder.try_init(),
    };
}
