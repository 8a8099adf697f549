//! Phase 2, what the target lacks: the new version's index nodes walked from the root, only
//! where a node differs from the one at the same path in the target's version (the target
//! holds everything its own head reaches, since a head is written last). Each node is
//! verified against its id: read from the target where it holds the pack, else from an
//! index pack fetched whole from the source (kept for phase 3). The chunks of the nodes
//! walked that live in packs the target lacks, and the delta packs the head lists, are what
//! phase 3 copies.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use pulpdist_format::delta::{DeltaInfo, MAX_DELTA_PACK};
use pulpdist_format::{ChunkRef, EntryKind, Node, NodeId, NodeRef, PackId};
use pulpdist_publish::Store;
use pulpdist_sync::{StoreReader, SyncError};

use crate::heads::Heads;
use crate::ReplicateError;

/// What the new version reaches that the target lacks, and what it reaches that it has.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    /// Data packs to copy, each with the chunks of the version in it.
    pub(crate) data: BTreeMap<PackId, Vec<ChunkRef>>,
    /// Index packs to copy, fetched whole and checked (every object in them), with the
    /// number of objects checked.
    pub(crate) index: BTreeMap<PackId, (Vec<u8>, u64)>,
    /// Delta packs to copy.
    pub(crate) deltas: Vec<DeltaInfo>,
    /// Packs reached that the target holds, with their sizes.
    pub(crate) present: BTreeMap<PackId, u64>,
    /// The sizes the signed head gives packs (its recent versions).
    pub(crate) signed_sizes: HashMap<PackId, u64>,
    /// Index nodes walked.
    pub(crate) nodes_walked: u64,
    /// Packs the target held damaged (an object of the version in it not what its id
    /// says, or another size than the head lists): removed, and copied again.
    pub(crate) repaired: u64,
}

impl Needs {
    /// Every pack of the version the walk saw: those to copy and those the target holds.
    pub(crate) fn reached(&self) -> BTreeSet<PackId> {
        let mut all: BTreeSet<PackId> = self.data.keys().copied().collect();
        all.extend(self.index.keys());
        all.extend(self.deltas.iter().map(|d| d.pack));
        all.extend(self.present.keys());
        all
    }
}

struct Walker<'a> {
    source: &'a dyn StoreReader,
    target: &'a dyn Store,
    have: HashMap<PackId, u64>,
    /// Packs the target holds that its gc condemned: the version may not name them.
    condemned: HashSet<PackId>,
    needs: Needs,
    seen_nodes: HashSet<NodeId>,
    seen_chunks: HashSet<ChunkRef>,
    /// The version's chunks in packs the target holds, checked after the walk.
    held: BTreeMap<PackId, Vec<ChunkRef>>,
}

/// Walks the source's version against the target's.
pub(crate) fn walk(
    source: &dyn StoreReader,
    target: &dyn Store,
    heads: &Heads,
) -> Result<Needs, ReplicateError> {
    let head = heads.source.head();
    let have: HashMap<PackId, u64> = target
        .list_packs()?
        .into_iter()
        .map(|p| (p.id, p.size))
        .collect();
    let condemned = target.read_condemned()?;
    let (condemned, have): (HashMap<PackId, u64>, HashMap<PackId, u64>) = have
        .into_iter()
        .partition(|(id, _)| condemned.packs.contains_key(id));
    let mut w = Walker {
        source,
        target,
        have,
        condemned: condemned.into_keys().collect(),
        needs: Needs {
            signed_sizes: head
                .recent
                .iter()
                .flat_map(|v| v.packs.iter())
                .map(|p| (p.id, p.size))
                .collect(),
            ..Needs::default()
        },
        seen_nodes: HashSet::new(),
        seen_chunks: HashSet::new(),
        held: BTreeMap::new(),
    };
    let old = heads.target.as_ref().map(|(_, h)| h.head().root);
    w.tree(head.root, old)?;
    // Readers ignore a delta pack they cannot decode the list of, or one too large.
    for d in head.deltas().unwrap_or_default() {
        if d.size > MAX_DELTA_PACK {
            continue;
        }
        match w.have.get(&d.pack) {
            Some(size) if w.held_delta_ok(&d) => {
                w.needs.present.insert(d.pack, *size);
            }
            Some(_) => {
                w.repair(d.pack)?;
                w.needs.deltas.push(d);
            }
            None => w.needs.deltas.push(d),
        }
    }
    w.check_held()?;
    w.listed_index_packs(head)?;
    Ok(w.needs)
}

impl Walker<'_> {
    /// The nodes under `new` that differ from those under `old` (the same path in the
    /// target's version), depth first.
    fn tree(&mut self, new: NodeRef, old: Option<NodeRef>) -> Result<(), ReplicateError> {
        let mut stack = vec![(new, old)];
        while let Some((new, old)) = stack.pop() {
            if old.is_some_and(|o| o.id == new.id) || !self.seen_nodes.insert(new.id) {
                continue;
            }
            let node = self.node(&new)?;
            self.needs.nodes_walked += 1;
            // The target's node at the same path, if its pack is there (it is, unless the
            // target's head was left incomplete by hand).
            let old_node = match old {
                Some(o) if self.have.contains_key(&o.loc.pack) => Some(self.node(&o)?),
                _ => None,
            };
            for e in node.entries() {
                match &e.kind {
                    EntryKind::File { .. } | EntryKind::Composite { .. } => {
                        // A composite file's file parts are copied with those files.
                        for c in e.kind.own_chunks() {
                            self.chunk(c)?;
                        }
                    }
                    EntryKind::Dir { node: child } => {
                        let old_child = old_node
                            .as_ref()
                            .and_then(|n| n.get(e.name.as_bytes()))
                            .and_then(|oe| match &oe.kind {
                                EntryKind::Dir { node } => Some(*node),
                                _ => None,
                            });
                        stack.push((*child, old_child));
                    }
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        Ok(())
    }

    fn chunk(&mut self, c: &ChunkRef) -> Result<(), ReplicateError> {
        let pack = c.loc.pack;
        self.usable(pack)?;
        if !self.seen_chunks.insert(*c) {
            return Ok(());
        }
        match self.have.get(&pack) {
            Some(size) => {
                self.needs.present.insert(pack, *size);
                self.held.entry(pack).or_default().push(*c);
            }
            None => self.needs.data.entry(pack).or_default().push(*c),
        }
        Ok(())
    }

    /// Checks the version's chunks in the packs the target holds (one read per pack, of
    /// the span they lie in), and each such pack's size against the one the head lists: a
    /// pack found damaged is removed from the target and copied again.
    fn check_held(&mut self) -> Result<(), ReplicateError> {
        for (pack, chunks) in std::mem::take(&mut self.held) {
            let size = self.have.get(&pack).copied().unwrap_or(0);
            let sized = self
                .needs
                .signed_sizes
                .get(&pack)
                .is_none_or(|s| *s == size);
            let start = chunks.iter().map(|c| c.loc.offset).min().unwrap_or(0);
            let end = chunks.iter().map(|c| c.loc.range().end).max().unwrap_or(0);
            let whole = sized
                && end <= size
                && self
                    .target
                    .read_pack_range(pack, start..end)
                    .is_ok_and(|span| {
                        chunks.iter().all(|c| {
                            let r = c.loc.range();
                            span.get((r.start - start) as usize..(r.end - start) as usize)
                                .is_some_and(|stored| {
                                    pulpdist_format::VerifiedChunk::from_stored(
                                        c.id,
                                        c.loc.codec,
                                        stored,
                                        c.loc.raw_len,
                                    )
                                    .is_ok()
                                })
                        })
                    });
            if !whole {
                self.repair(pack)?;
                self.needs.data.entry(pack).or_default().extend(chunks);
            }
        }
        Ok(())
    }

    /// Whether a delta pack the target holds has the size and hash the head lists.
    fn held_delta_ok(&self, d: &DeltaInfo) -> bool {
        self.target
            .read_pack_range(d.pack, 0..d.size)
            .is_ok_and(|b| d.verify(&b).is_ok())
    }

    /// Removes a pack the target holds damaged, so that it is copied again.
    fn repair(&mut self, pack: PackId) -> Result<(), ReplicateError> {
        tracing::warn!(store = %self.target.describe(), pack = %pack, "the target holds this pack damaged: copying it again");
        self.target.remove(&pack.object_key())?;
        self.have.remove(&pack);
        self.needs.present.remove(&pack);
        self.needs.repaired += 1;
        Ok(())
    }

    /// Refuses a pack the target holds but its gc condemned (it will be removed): the
    /// version is replicated once the gc removed it, when it is copied again.
    fn usable(&self, pack: PackId) -> Result<(), ReplicateError> {
        match self.condemned.contains(&pack) {
            true => Err(ReplicateError::Condemned {
                store: self.target.describe(),
                pack: pack.object_key(),
            }),
            false => Ok(()),
        }
    }

    /// The index packs the head lists for its recent versions, which sites a few versions
    /// behind fetch whole (a node the walk did not need may be in one): copied too, where
    /// the source still has them.
    fn listed_index_packs(&mut self, head: &pulpdist_format::Head) -> Result<(), ReplicateError> {
        let listed = head.recent.iter().flat_map(|v| v.packs.iter());
        for p in listed.filter(|p| p.kind == pulpdist_format::PackKind::Index) {
            if let Some(size) = self.have.get(&p.id) {
                self.needs.present.insert(p.id, *size);
                continue;
            }
            if self.condemned.contains(&p.id) || self.needs.index.contains_key(&p.id) {
                continue;
            }
            match crate::copy::fetch_checked(self.source, p.id, Some(p.size), &[]) {
                Ok(got) => {
                    self.needs.index.insert(p.id, got);
                }
                // Removed by the source's gc: no kept version reaches it.
                Err(SyncError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A node, verified: from the target where it holds the pack, else from the whole
    /// index pack fetched from the source.
    fn node(&mut self, r: &NodeRef) -> Result<Node, ReplicateError> {
        let pack = r.loc.pack;
        let damaged = |store: String, source| ReplicateError::Damaged {
            object: format!("{store}/{} (index node {})", pack.object_key(), r.id),
            source,
        };
        if let Some(size) = self.have.get(&pack).copied() {
            let held = self.target.read_pack_range(pack, r.loc.range());
            match held.map(|stored| r.open(&stored)) {
                Ok(Ok(node)) => {
                    self.needs.present.insert(pack, size);
                    return Ok(node);
                }
                // Damaged or short in the target: copied again from the source.
                _ => self.repair(pack)?,
            }
        }
        self.usable(pack)?;
        if !self.needs.index.contains_key(&pack) {
            let size = self.needs.signed_sizes.get(&pack).copied();
            let got = crate::copy::fetch_checked(self.source, pack, size, &[])?;
            self.needs.index.insert(pack, got);
        }
        let bytes = &self.needs.index[&pack].0;
        let range = r.loc.range();
        let stored = bytes
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| {
                damaged(
                    self.source.describe(),
                    crate::invalid(
                        "index node",
                        format!("its location ends past the pack's {} bytes", bytes.len()),
                    ),
                )
            })?;
        r.open(stored)
            .map_err(|e| damaged(self.source.describe(), e))
    }
}
