//! Phase 6, the recorded state: only once the mirror holds the new version on disk is
//! that version recorded as applied (the head, the store's tag for it), then the
//! interrupted-apply mark and the staging area cleared and the node cache pruned of what
//! no applied tree reaches. A no-op sync records only a newer version or tag.

use super::head::Accepted;
use super::{SyncOptions, SyncReport};
use crate::error::SyncError;
use crate::state::State;

/// Records the applied version after the mirror changed; `store` names where it came from.
pub(super) fn record(
    state: &State,
    opts: &SyncOptions,
    acc: &Accepted,
    store: &str,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    state.set_applied(&opts.tree, &acc.bytes, acc.etag.as_deref(), store)?;
    pulpdist_failpoint::hit("sync.recorded");
    state.clear_applying(&opts.tree)?;
    state.clear_staging()?;
    // Housekeeping: the version is applied whatever happens here.
    match state.prune_nodes() {
        Ok(n) => report.nodes_pruned = n,
        Err(e) => report.prune_error = Some(state.named(e).to_string()),
    }
    Ok(())
}

/// Records a head whose tree did not change: a new version with the same root, or a new
/// tag for the same head (nothing with `--dry-run`).
pub(super) fn record_unchanged(
    state: &State,
    opts: &SyncOptions,
    acc: &Accepted,
    store: &str,
) -> Result<(), SyncError> {
    let applied_version = acc.applied.as_ref().map(|a| a.version);
    if !opts.dry_run
        && (applied_version != Some(acc.head.version) || state.etag(&opts.tree, store) != acc.etag)
    {
        state.set_applied(&opts.tree, &acc.bytes, acc.etag.as_deref(), store)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;

    fn accepted(state: &State, version: u64, etag: &str, applied: Option<u64>) -> Accepted {
        let root = testkit::cached(state, vec![]);
        let head = testkit::head(version, &root);
        Accepted {
            bytes: head.sign(&testkit::key()).expect("signed"),
            etag: Some(etag.into()),
            applied: applied.map(|v| testkit::head(v, &root)),
            head,
            full: false,
            served_by: String::new(),
        }
    }

    #[test]
    fn an_unchanged_tree_records_only_a_newer_version_or_tag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let v1 = accepted(&state, 1, "a", None);
        record(&state, &opts, &v1, "mem:", &mut SyncReport::default()).expect("recorded");
        // The same root in a new version, seen by a dry run: nothing recorded.
        opts.dry_run = true;
        let v2 = accepted(&state, 2, "b", Some(1));
        record_unchanged(&state, &opts, &v2, "mem:").expect("nothing to do");
        assert_eq!(
            state.applied("t").expect("read").map(|h| h.version),
            Some(1)
        );
        opts.dry_run = false;
        record_unchanged(&state, &opts, &v2, "mem:").expect("recorded");
        assert_eq!(
            state.applied("t").expect("read").map(|h| h.version),
            Some(2)
        );
        assert_eq!(state.etag("t", "mem:").as_deref(), Some("b"));
        // An older head is never recorded over a newer one.
        let e = record(&state, &opts, &v1, "mem:", &mut SyncReport::default());
        assert!(matches!(e, Err(SyncError::Rollback { .. })));
    }

    #[test]
    fn recording_clears_staging_and_the_applying_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        state.set_applying("t", 2).expect("marked");
        let chunk = pulpdist_format::VerifiedChunk::from_plain(
            pulpdist_format::ChunkId::of(b"c"),
            b"c".to_vec(),
        )
        .expect("chunk");
        state.stage(&chunk).expect("staged");
        let v1 = accepted(&state, 1, "a", None);
        record(&state, &opts, &v1, "mem:", &mut SyncReport::default()).expect("recorded");
        assert!(!state.applying("t"));
        assert!(state.staged().expect("listed").is_empty());
    }
}
