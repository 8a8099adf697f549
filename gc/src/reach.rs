//! Phase 2, what the kept versions reach: from each kept head, every index node (fetched
//! and checked against its id) and every chunk its files name, and the delta packs the
//! head lists; per pack, the bytes of the distinct objects reached (its live bytes).

use std::collections::{BTreeMap, HashSet};

use pulpdist_format::{EntryKind, Head, NodeId, NodeRef, PackId, MAX_NODE_SIZE};
use pulpdist_publish::Store;

use crate::error::GcError;
use crate::survey::Tree;

/// What the kept versions reach.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    /// Pack → bytes of the objects reached in it (a delta pack: all of it).
    pub(crate) live: BTreeMap<PackId, u64>,
    /// Distinct index nodes read.
    pub(crate) nodes: u64,
    /// Distinct chunks reached.
    pub(crate) chunks: u64,
    /// Packs a reached node lies in (index packs).
    pub(crate) index_packs: HashSet<PackId>,
}

impl Reach {
    /// Every byte reached.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.values().sum()
    }
}

/// Walks every kept version of `trees`.
pub(crate) fn reach(
    store: &dyn Store,
    trees: &[Tree],
    progress: &pulpdist_progress::Reporter,
) -> Result<Reach, GcError> {
    let mut walker = Walker {
        store,
        reach: Reach::default(),
        seen_nodes: HashSet::new(),
        seen_objects: HashSet::new(),
    };
    let kept: Vec<&Head> = trees
        .iter()
        .flat_map(|t| t.retained.iter().filter_map(|v| t.versions.get(v)))
        .flat_map(|x| x.heads.iter())
        .collect();
    progress.start("versions walked", kept.len() as u64, 0);
    for head in kept {
        let object = || {
            format!(
                "{}/heads/{} version {}",
                store.describe(),
                head.tree,
                head.version
            )
        };
        let deltas = head.deltas().map_err(|e| GcError::Unreadable {
            object: object(),
            reason: e.to_string(),
        })?;
        for d in deltas {
            walker.reach.live.insert(d.pack, d.size);
        }
        walker.walk(head.root)?;
        progress.advance(1, 0);
    }
    progress.finish();
    Ok(walker.reach)
}

struct Walker<'a> {
    store: &'a dyn Store,
    reach: Reach,
    seen_nodes: HashSet<NodeId>,
    /// (pack, offset) of every node and chunk counted.
    seen_objects: HashSet<(PackId, u64)>,
}

impl Walker<'_> {
    fn count(&mut self, pack: PackId, offset: u64, len: u32) -> bool {
        let new = self.seen_objects.insert((pack, offset));
        if new {
            *self.reach.live.entry(pack).or_default() += u64::from(len);
        }
        new
    }

    /// Reads and checks the node `r` names, at its location.
    fn read(&self, r: &NodeRef) -> Result<pulpdist_format::Node, GcError> {
        let unreadable = |reason: String| GcError::Unreadable {
            object: format!(
                "{}/{} (index node {} at {})",
                self.store.describe(),
                r.loc.pack.object_key(),
                r.id,
                r.loc.offset
            ),
            reason,
        };
        r.loc
            .validate("index node", MAX_NODE_SIZE)
            .map_err(|e| unreadable(e.to_string()))?;
        let stored = self
            .store
            .read_pack_range(r.loc.pack, r.loc.range())
            .map_err(|e| unreadable(e.to_string()))?;
        r.open(&stored).map_err(|e| unreadable(e.to_string()))
    }

    fn walk(&mut self, root: NodeRef) -> Result<(), GcError> {
        let mut todo = vec![root];
        while let Some(r) = todo.pop() {
            // A node can be stored at several locations (stored again after its pack was
            // condemned, or moved by a repack): each location a kept version names is
            // reached, and read (it must be there); what is below it only once.
            let new_location = !self.seen_objects.contains(&(r.loc.pack, r.loc.offset));
            let first = !self.seen_nodes.contains(&r.id);
            if !new_location && !first {
                continue;
            }
            let node = self.read(&r)?;
            self.count(r.loc.pack, r.loc.offset, r.loc.stored_len);
            self.reach.index_packs.insert(r.loc.pack);
            if !self.seen_nodes.insert(r.id) {
                continue;
            }
            self.reach.nodes += 1;
            for e in node.entries() {
                match &e.kind {
                    EntryKind::Dir { node } => todo.push(*node),
                    // A composite file's file parts are reached through those files.
                    kind => {
                        for c in kind.own_chunks() {
                            if self.count(c.loc.pack, c.loc.offset, c.loc.stored_len) {
                                self.reach.chunks += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
