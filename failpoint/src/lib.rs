//! Fail points: named steps of a sync or a publish at which a test can stop the process
//! dead, as `kill -9` or a power cut would, deterministically instead of by a timed kill.
//!
//! Two environment variables, read once per process:
//!
//! - `PULPDIST_FAILPOINT=STEP[:N]`: the `N`th time (default 1) the process reaches `STEP`,
//!   it aborts at once (`std::process::abort`: no destructor runs, nothing is flushed or
//!   cleaned up, exactly what a killed process leaves).
//! - `PULPDIST_FAILPOINT=STEP:N:wait:FILE`: instead, it creates `FILE.reached` and waits
//!   until `FILE` exists (at most 5 minutes, then aborts), so a test can hold a process at
//!   a step while another runs (two publishers racing for one head).
//! - `PULPDIST_FAILPOINT_LOG=FILE`: every step reached is appended to `FILE`, one a line
//!   (`STEP`, or `STEP<TAB>PATH` for a step done to a path), so a test can list the points
//!   of a run, stop a run at each of them, and check the order of renames and deletions.
//!
//! Without them [`hit`] costs one load of an initialised `OnceLock`. The steps are named
//! `sync.*`, `publish.*` and `gc.*`; docs/ARCHITECTURE.md lists them.
//!
//! ```
//! pulpdist_failpoint::hit("example.step"); // nothing happens unless a test asked for it
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

struct Armed {
    /// The step to stop at, after how many hits, and the file to wait for (else abort).
    stop: Option<(String, u64, Option<std::path::PathBuf>)>,
    hits: AtomicU64,
    log: Option<Mutex<std::fs::File>>,
}

fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        let stop = std::env::var("PULPDIST_FAILPOINT").ok().and_then(|v| {
            let mut parts = v.splitn(4, ':');
            let name = parts.next()?.to_string();
            let n = match parts.next() {
                Some(n) => n.parse().ok()?,
                None => 1,
            };
            let wait = match (parts.next(), parts.next()) {
                (Some("wait"), Some(file)) => Some(std::path::PathBuf::from(file)),
                (None, None) => None,
                _ => return None,
            };
            Some((name, n, wait))
        });
        let log = std::env::var_os("PULPDIST_FAILPOINT_LOG").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        });
        Armed {
            stop,
            hits: AtomicU64::new(0),
            log,
        }
    })
}

/// Marks that the process reached `step`: logs it if asked to, and aborts the process if
/// this is the hit a test asked to stop at.
pub fn hit(step: &str) {
    hit_at(step, std::path::Path::new(""));
}

/// [`hit`], naming what the step was done to (a path): the log line is `STEP<TAB>PATH`, so a
/// test can check the order in which paths were renamed and deleted.
pub fn hit_at(step: &str, what: &std::path::Path) {
    let a = armed();
    if let Some(log) = &a.log {
        if let Ok(mut f) = log.lock() {
            let _ = if what.as_os_str().is_empty() {
                writeln!(f, "{step}")
            } else {
                writeln!(f, "{step}\t{}", what.display())
            };
        }
    }
    if let Some((name, n, wait)) = &a.stop {
        if name == step && a.hits.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            if let Some(file) = wait {
                hold(step, file);
                return;
            }
            let _ = writeln!(std::io::stderr(), "pulpdist: fail point {step}:{n} reached");
            std::process::abort();
        }
    }
}

/// Announces that `step` is reached and waits for the test to create `file`.
fn hold(step: &str, file: &std::path::Path) {
    let mut reached = file.as_os_str().to_owned();
    reached.push(".reached");
    let _ = std::fs::write(&reached, step);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !file.exists() {
        if std::time::Instant::now() > deadline {
            std::process::abort();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
