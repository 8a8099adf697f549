//! A sync from a plain `rsync://` origin (no PulpDist store, no signed index: rsync's own
//! checksums), in two passes as Debian's ftpsync does: payload first (metadata excluded,
//! nothing deleted), then everything with deletions after the transfer, so repository
//! indexes never name a file not yet there. The mirror is locked as for any sync.

use std::path::Path;
use std::time::Instant;

use pulpdist_format::filter::Filter;
use pulpdist_rsync::{mirror_pass, Pass, RsyncError};

use crate::error::SyncError;
use crate::pipeline::SyncReport;

impl From<RsyncError> for SyncError {
    fn from(e: RsyncError) -> Self {
        match e {
            RsyncError::Usage(m) => SyncError::Usage(m),
            RsyncError::Failed {
                url,
                detail,
                temporary,
            } => SyncError::Http {
                url,
                status: None,
                detail,
                temporary,
            },
            RsyncError::Io { path, source } => SyncError::Io { path, source },
            RsyncError::Busy { lock, dest } => SyncError::Busy {
                state: lock,
                holder: format!(" (a pull into {})", dest.display()),
            },
            other => SyncError::Http {
                url: String::new(),
                status: None,
                detail: other.to_string(),
                temporary: false,
            },
        }
    }
}

/// Downstream from a plain rsync origin: payload, then metadata, then deletions.
pub fn sync_rsync(
    url: &str,
    dest: &Path,
    filter: &Filter,
    metadata_patterns: &[String],
    dry_run: bool,
    wait: std::time::Duration,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    pulpdist_rsync::check_url(url)?;
    // One sync of a mirror at a time, whatever its origin (creates the mirror directory).
    // rsync writes into the locked directory through its handle, so a mirror renamed away
    // and replaced by a symlink while rsync runs sends nothing elsewhere; the path is
    // checked to name it still before each pass and after the last.
    let lock = crate::state::lock_mirror(dest, dry_run, wait)?;
    let check = || lock.as_ref().map_or(Ok(()), |m| m.check());
    let into = lock
        .as_ref()
        .map_or_else(|| dest.to_path_buf(), |m| m.handle_path());
    let payload = Pass {
        exclude: metadata_patterns,
        delete: false,
        dry_run,
    };
    check()?;
    let payload = mirror_pass(url, &into, filter, payload)?;
    pulpdist_failpoint::hit("sync.rsync_payload");
    let all = Pass {
        exclude: &[],
        delete: true,
        dry_run,
    };
    check()?;
    let meta = mirror_pass(url, &into, filter, all)?;
    check()?;
    let files = payload.files + meta.files;
    let bytes = payload.bytes_received + meta.bytes_received;
    Ok(SyncReport {
        up_to_date: files == 0 && meta.deleted == 0,
        files,
        deleted: meta.deleted,
        bytes_fetched: bytes,
        requests: 2,
        rsync_files: files,
        rsync_bytes: bytes,
        filter: (!filter.is_empty()).then(|| filter.to_string()),
        plan: dry_run.then(|| {
            format!("rsync from {url} (two passes: payload, then metadata and deletions)\n")
        }),
        elapsed_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    })
}
