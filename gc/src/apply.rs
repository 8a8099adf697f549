//! Phase 4, carrying the plan out, in an order that a kill at any point leaves safe: the
//! condemned list first (still naming the packs about to go, so a gc killed midway finds
//! them condemned next time), then the archived heads of the versions not kept, then the
//! packs, then the list without them.

use pulpdist_format::CONDEMNED_KEY;
use pulpdist_publish::Store;

use crate::error::GcError;
use crate::plan::Plan;

/// Removes what `plan` says.
pub(crate) fn apply(
    store: &dyn Store,
    plan: &Plan,
    progress: &pulpdist_progress::Reporter,
) -> Result<(), GcError> {
    store.replace_object(CONDEMNED_KEY, &plan.during.encode())?;
    pulpdist_failpoint::hit("gc.condemned");
    let bytes: u64 = plan.remove.iter().map(|l| l.size).sum();
    progress.start(
        "remove",
        (plan.history.len() + plan.remove.len()) as u64,
        bytes,
    );
    for (tree, version, _) in &plan.history {
        store.remove(&pulpdist_format::history_key(tree, *version))?;
        pulpdist_failpoint::hit("gc.history");
        progress.advance(1, 0);
    }
    for l in &plan.remove {
        store.remove(&l.id.object_key())?;
        pulpdist_failpoint::hit("gc.pack");
        progress.advance(1, l.size);
    }
    progress.finish();
    if plan.during != plan.after {
        store.replace_object(CONDEMNED_KEY, &plan.after.encode())?;
    }
    pulpdist_failpoint::hit("gc.done");
    Ok(())
}
