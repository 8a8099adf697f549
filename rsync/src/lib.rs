//! rsync, for origins that are plain rsync servers and for files a store cannot serve.
//!
//! Three uses, all running the `rsync` program with the tree's filter rules, its URL
//! checked first ([`check_url`]) and its `--stats` read back ([`RsyncStats`]):
//! - [`pull`]: upstream, mirror an `rsync://` source into a staging directory kept between
//!   runs (so each pull is incremental), which is then published;
//! - [`mirror_pass`]: downstream, one pass of a sync from an `rsync://` origin with no
//!   PulpDist store (the sync runs two, as Debian's ftpsync does: payload first, then
//!   everything with deletions); each pass delays its renames to its end;
//! - [`fetch_files`]: named files into a scratch directory, to fill gaps in a store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use pulpdist_format::filter::Filter;

/// Why an rsync run did not happen or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RsyncError {
    /// The URL is not one rsync may be given.
    #[error("{0}")]
    Usage(String),
    /// rsync could not run, or exited with an error.
    #[error("{url}: {detail}")]
    Failed {
        /// The URL involved.
        url: String,
        /// What went wrong.
        detail: String,
        /// A network or server problem (rsync's exit codes 10, 12, 23, 24, 30, 35).
        temporary: bool,
    },
    /// A local file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another pull into the same directory is running.
    #[error("{lock}: another pull into {dest} is running")]
    Busy {
        /// The lock file.
        lock: PathBuf,
        /// The directory pulled into.
        dest: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RsyncError + '_ {
    move |source| RsyncError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one rsync run moved, from its `--stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsyncStats {
    /// Regular files transferred.
    pub files: u64,
    /// Entries deleted at the destination.
    pub deleted: u64,
    /// Bytes received over the wire.
    pub bytes_received: u64,
}

/// Compare (and so set) mtimes to the nanosecond, as the index records them; rsync's
/// default treats times within the same second as equal and leaves them alone.
const MODIFY_WINDOW: &str = "--modify-window=-1";

fn err(url: &str, detail: String, temporary: bool) -> RsyncError {
    RsyncError::Failed {
        url: url.to_string(),
        detail,
        temporary,
    }
}

/// Checks an `rsync://host[:port]/module[/path]` URL before rsync sees it: rsync takes an
/// empty host for a remote shell target (`rsync://` alone ran ssh to a host named
/// "rsync"), and a host starting with `-` for an option.
pub fn check_url(url: &str) -> Result<(), RsyncError> {
    let bad = |why: &str| {
        Err(RsyncError::Usage(format!(
            "{url}: not an rsync URL ({why}); expected rsync://host[:port]/module[/path]"
        )))
    };
    let Some(rest) = url.strip_prefix("rsync://") else {
        return bad("it must start with rsync://");
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = match authority.rsplit_once('@') {
        Some((_user, h)) => h,
        None => authority,
    };
    let host = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, port))
                if !addr.is_empty() && (port.is_empty() || port.starts_with(':')) =>
            {
                addr
            }
            _ => return bad("a bracketed address must be closed"),
        },
        None => host.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return bad("no host");
    }
    if host.starts_with('-')
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        return bad("the host has characters a host name does not");
    }
    if path.split('/').next().is_none_or(str::is_empty) {
        return bad("no module");
    }
    if url.bytes().any(|b| b.is_ascii_control()) {
        return bad("control characters");
    }
    Ok(())
}

/// Runs rsync with `args`, returning its stats. Exit codes that mean a network or server
/// problem (10, 12, 23, 24, 30, 35) are temporary.
fn run(url: &str, args: &[String]) -> Result<RsyncStats, RsyncError> {
    run_allowing(url, args, &[])
}

/// [`run`], also accepting the exit codes in `ok` (24: files vanished during the transfer,
/// normal when pulling from a live mirror).
fn run_allowing(url: &str, args: &[String], ok: &[i32]) -> Result<RsyncStats, RsyncError> {
    check_url(url)?;
    let out = Command::new("rsync").args(args).output().map_err(|e| {
        err(
            url,
            format!("running rsync: {e} (is rsync installed?)"),
            false,
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && !out.status.code().is_some_and(|c| ok.contains(&c)) {
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(err(
            url,
            format!("rsync exited with code {code}: {detail}"),
            matches!(code, 10 | 12 | 23 | 24 | 30 | 35),
        ));
    }
    Ok(parse_stats(&stdout))
}

/// Reads the numbers rsync's `--stats` prints.
pub fn parse_stats(text: &str) -> RsyncStats {
    let num = |label: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| {
                rest.trim_start_matches(':')
                    .trim()
                    .split(|c: char| !(c.is_ascii_digit() || c == ','))
                    .next()
                    .unwrap_or("")
                    .replace(',', "")
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    RsyncStats {
        files: num("Number of regular files transferred"),
        deleted: num("Number of deleted files"),
        bytes_received: num("Total bytes received"),
    }
}

fn filter_args(filter: &Filter) -> Vec<String> {
    filter
        .rules()
        .iter()
        .map(|r| format!("--filter={r}"))
        .collect()
}

fn with_slash(url: &str) -> String {
    format!("{}/", url.trim_end_matches('/'))
}

/// Upstream: brings `dest` (created if needed) to a copy of the selected part of `url`.
/// Holds `<dest>.lock` meanwhile, so two pulls into one staging directory cannot interleave.
pub fn pull(url: &str, dest: &Path, filter: &Filter) -> Result<RsyncStats, RsyncError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let lock_path = dest.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(RsyncError::Busy {
            lock: lock_path,
            dest: dest.to_path_buf(),
        });
    }
    let mut args: Vec<String> = [
        "-rlpt",
        MODIFY_WINDOW,
        "--delete",
        "--delete-excluded",
        "--stats",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(filter_args(filter));
    args.push(with_slash(url));
    args.push(with_slash(&dest.display().to_string()));
    let r = run_allowing(url, &args, &[24]);
    drop(lock);
    r
}

/// One pass of a sync from a plain rsync origin into `dest`.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    /// Name patterns left out (and so not deleted either).
    pub exclude: &'a [String],
    /// Delete, after the transfer, what the origin no longer has or the filter leaves out.
    pub delete: bool,
    /// Report only.
    pub dry_run: bool,
}

/// Brings `dest` closer to the selected part of `url` in one rsync run (renames delayed
/// to its end).
pub fn mirror_pass(
    url: &str,
    dest: &Path,
    filter: &Filter,
    pass: Pass<'_>,
) -> Result<RsyncStats, RsyncError> {
    let mut a: Vec<String> = ["-rlpt", MODIFY_WINDOW, "--stats", "--delay-updates"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if pass.dry_run {
        a.push("--dry-run".into());
    }
    a.extend(pass.exclude.iter().map(|p| format!("--exclude={p}")));
    if pass.delete {
        a.extend(["--delete", "--delete-after", "--delete-excluded"].map(String::from));
    }
    a.extend(filter_args(filter));
    a.push(with_slash(url));
    a.push(with_slash(&dest.display().to_string()));
    run(url, &a)
}

/// Fetches `files` (relative paths) from `url` into `scratch`; returns the stats.
pub fn fetch_files(url: &str, files: &[PathBuf], scratch: &Path) -> Result<RsyncStats, RsyncError> {
    std::fs::create_dir_all(scratch).map_err(io(scratch))?;
    let list = scratch.with_extension("files");
    let mut f = std::fs::File::create(&list).map_err(io(&list))?;
    for p in files {
        use std::os::unix::ffi::OsStrExt;
        f.write_all(p.as_os_str().as_bytes())
            .and_then(|_| f.write_all(b"\0"))
            .map_err(io(&list))?;
    }
    drop(f);
    let args = vec![
        "-lpt".to_string(),
        MODIFY_WINDOW.into(),
        "--stats".into(),
        "--from0".into(),
        format!("--files-from={}", list.display()),
        with_slash(url),
        with_slash(&scratch.display().to_string()),
    ];
    let r = run(url, &args);
    let _ = std::fs::remove_file(&list);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_urls_are_checked_before_rsync_runs() {
        for good in [
            "rsync://mirror.example.org/debian",
            "rsync://127.0.0.1:8730/m/sub/dir",
            "rsync://[::1]:873/m",
            "rsync://user@host/m",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        // Regression: `rsync://` with an empty host made rsync run ssh to a host "rsync".
        for bad in [
            "rsync://",
            "rsync:///module",
            "rsync://host",
            "rsync://host/",
            "rsync://-e sh/m",
            "rsync://ho st/m",
            "rsync://[::1/m",
            "http://host/m",
            "rsync://host/m\n",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stats() {
        let s = parse_stats(
            "Number of files: 12 (reg: 9, dir: 3)\nNumber of created files: 2\n\
             Number of deleted files: 3 (reg: 3)\nNumber of regular files transferred: 1,234\n\
             Total bytes sent: 90\nTotal bytes received: 5,000,123\n",
        );
        assert_eq!(
            s,
            RsyncStats {
                files: 1234,
                deleted: 3,
                bytes_received: 5_000_123
            }
        );
        assert_eq!(parse_stats(""), RsyncStats::default());
    }
}
