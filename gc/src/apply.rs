//! Phase 4, carrying the plan out, in an order that a kill at any point leaves safe: the
//! condemned list first (still naming the packs about to go, so a gc killed midway finds
//! them condemned next time), then the archived heads of the versions not kept, then the
//! packs, then the list without them.

use pulpdist_format::CONDEMNED_KEY;
use pulpdist_publish::Store;

use crate::error::GcError;
use crate::plan::Plan;

/// Removes what `plan` says; the keys of the objects removed (an object already gone is
/// not counted). A failure names what had been done by then.
pub(crate) fn apply(
    store: &dyn Store,
    plan: &Plan,
    progress: &pulpdist_progress::Reporter,
) -> Result<Vec<String>, GcError> {
    store.replace_object(CONDEMNED_KEY, &plan.during.encode())?;
    pulpdist_failpoint::hit("gc.condemned");
    let bytes: u64 = plan.remove.iter().map(|l| l.size).sum();
    let total = plan.history.len() + plan.remove.len();
    progress.start("remove", total as u64, bytes);
    let mut removed = Vec::with_capacity(total);
    let stopped = |removed: &Vec<String>, source| GcError::Stopped {
        removed: removed.len(),
        total,
        source,
    };
    let keys = plan
        .history
        .iter()
        .map(|(tree, version, _)| {
            (
                pulpdist_format::history_key(tree, *version),
                0,
                "gc.history",
            )
        })
        .chain(
            plan.remove
                .iter()
                .map(|l| (l.id.object_key(), l.size, "gc.pack")),
        );
    for (key, size, step) in keys {
        if store.remove(&key).map_err(|e| stopped(&removed, e))? {
            removed.push(key);
        }
        pulpdist_failpoint::hit(step);
        progress.advance(1, size);
    }
    progress.finish();
    if plan.during != plan.after {
        store
            .replace_object(CONDEMNED_KEY, &plan.after.encode())
            .map_err(|e| stopped(&removed, e))?;
    }
    pulpdist_failpoint::hit("gc.done");
    Ok(removed)
}
