//! The packs a repack writes: data packs of the chunks copied (closed at about the pack
//! size), then one index pack per tree of the nodes re-encoded for it, children first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

use pulpdist_chunker::Compressor;
use pulpdist_format::pack::{ObjectKind, PackBuilder};
use pulpdist_format::{
    ChunkRef, Entry, EntryKind, Location, Node, NodeId, NodeRef, PackId, PackInfo, PackKind, Part,
};
use pulpdist_publish::{PublishError, Store};

use super::{io, read_node};
use crate::error::GcError;

/// The new packs.
pub(super) struct Writer<'a> {
    store: &'a dyn Store,
    tmp: PathBuf,
    pack_size: u64,
    data: Option<Open>,
    /// Tree → its open index pack.
    index: BTreeMap<String, Open>,
    /// Data packs written.
    written: Vec<PackInfo>,
    comp: Compressor,
    /// (old pack, old offset) → where the chunk is now.
    pub(super) moved: HashMap<(PackId, u64), Location>,
    /// Old node id → the node that replaces it.
    nodes: HashMap<NodeId, NodeRef>,
}

struct Open {
    builder: PackBuilder,
    file: File,
    path: PathBuf,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        store: &'a dyn Store,
        state_dir: &std::path::Path,
        pack_size: u64,
    ) -> Result<Self, GcError> {
        // Where the store builds packs (its own tmp/ for a directory: the same file system).
        let tmp = store.tmp_dir().unwrap_or_else(|| state_dir.join("repack"));
        std::fs::create_dir_all(&tmp).map_err(|source| io(&tmp, source))?;
        let comp = Compressor::new(pulpdist_chunker::DEFAULT_ZSTD_LEVEL).map_err(|e| {
            GcError::Store(PublishError::Compressor {
                what: "index nodes",
                detail: e.to_string(),
            })
        })?;
        Ok(Writer {
            store,
            tmp,
            pack_size,
            data: None,
            index: BTreeMap::new(),
            written: Vec::new(),
            comp,
            moved: HashMap::new(),
            nodes: HashMap::new(),
        })
    }

    fn open(&self) -> Result<Open, GcError> {
        let id = PackId::random().map_err(|source| PublishError::Format {
            object: "a new pack id".into(),
            source,
        })?;
        let path = self.tmp.join(format!("{}.pack.part", id.to_hex()));
        let mut file = File::create(&path).map_err(|source| io(&path, source))?;
        let (builder, header) = PackBuilder::new(id);
        file.write_all(&header)
            .map_err(|source| io(&path, source))?;
        Ok(Open {
            builder,
            file,
            path,
        })
    }

    /// Appends a chunk as stored; where it is now.
    pub(super) fn chunk(&mut self, c: &ChunkRef, stored: &[u8]) -> Result<Location, GcError> {
        if self
            .data
            .as_ref()
            .is_some_and(|o| o.builder.len() + stored.len() as u64 > self.pack_size)
        {
            self.close_data()?;
        }
        if self.data.is_none() {
            self.data = Some(self.open()?);
        }
        let Some(o) = self.data.as_mut() else {
            unreachable!("opened above")
        };
        let loc = o.builder.add(
            ObjectKind::Chunk,
            c.id.0,
            c.loc.codec,
            stored.len() as u32,
            c.loc.raw_len,
        );
        o.file
            .write_all(stored)
            .map_err(|source| io(&o.path, source))?;
        Ok(loc)
    }

    /// The node replacing `r` (for tree `tree`, whose index pack a new node goes to):
    /// re-encoded if an entry's location changed or it lies in a sparse pack, else `r`.
    pub(super) fn node(
        &mut self,
        r: NodeRef,
        sparse: &HashSet<PackId>,
        tree: &str,
    ) -> Result<NodeRef, GcError> {
        if let Some(n) = self.nodes.get(&r.id) {
            return Ok(*n);
        }
        let node = read_node(self.store, &r)?;
        let mut changed = false;
        let mut entries: Vec<Entry> = Vec::with_capacity(node.entries().len());
        for e in node.entries() {
            let kind = match &e.kind {
                EntryKind::Dir { node } => {
                    let n = self.node(*node, sparse, tree)?;
                    changed |= n != *node;
                    EntryKind::Dir { node: n }
                }
                EntryKind::File { size, chunks } => EntryKind::File {
                    size: *size,
                    chunks: self.relocated(chunks, &mut changed),
                },
                EntryKind::Composite {
                    size,
                    chunk_hash,
                    parts,
                } => EntryKind::Composite {
                    size: *size,
                    chunk_hash: *chunk_hash,
                    parts: parts
                        .iter()
                        .map(|p| match p {
                            Part::Chunks(c) => Part::Chunks(self.relocated(c, &mut changed)),
                            file => file.clone(),
                        })
                        .collect(),
                },
                other => other.clone(),
            };
            entries.push(Entry { kind, ..e.clone() });
        }
        let out = if changed || sparse.contains(&r.loc.pack) {
            let node = Node::new(entries).map_err(|source| PublishError::Format {
                object: format!("index node {}", r.id),
                source,
            })?;
            let encoded = node.encode();
            let id = NodeId::of(&encoded);
            let stored = self.comp.compress(&encoded);
            if !self.index.contains_key(tree) {
                let open = self.open()?;
                self.index.insert(tree.to_string(), open);
            }
            let Some(o) = self.index.get_mut(tree) else {
                unreachable!("opened above")
            };
            let loc = o.builder.add(
                ObjectKind::Node,
                id.0,
                stored.codec,
                stored.bytes.len() as u32,
                encoded.len() as u32,
            );
            o.file
                .write_all(&stored.bytes)
                .map_err(|source| io(&o.path, source))?;
            NodeRef { id, loc }
        } else {
            r
        };
        self.nodes.insert(r.id, out);
        Ok(out)
    }

    /// Ends an open pack and puts it into the store.
    /// `chunks` with the locations of moved chunks replaced (`changed` set if any was).
    fn relocated(&self, chunks: &[ChunkRef], changed: &mut bool) -> Vec<ChunkRef> {
        let mut refs = chunks.to_vec();
        for c in refs.iter_mut() {
            if let Some(loc) = self.moved.get(&(c.loc.pack, c.loc.offset)) {
                c.loc = *loc;
                *changed = true;
            }
        }
        refs
    }

    fn close(&self, mut o: Open, kind: PackKind) -> Result<PackInfo, GcError> {
        let id = o.builder.id();
        let (tail, size) = o.builder.finish();
        o.file
            .write_all(&tail)
            .and_then(|()| o.file.sync_all())
            .map_err(|source| io(&o.path, source))?;
        drop(o.file);
        self.store.put_pack(id, &o.path)?;
        pulpdist_failpoint::hit("gc.repack_pack");
        Ok(PackInfo { id, size, kind })
    }

    fn close_data(&mut self) -> Result<(), GcError> {
        if let Some(o) = self.data.take() {
            let info = self.close(o, PackKind::Data)?;
            self.written.push(info);
        }
        Ok(())
    }

    /// Closes the data pack, then each tree's index pack (after every chunk it names is
    /// stored): the data packs, and each tree's index pack.
    pub(super) fn finish(mut self) -> Result<(Vec<PackInfo>, BTreeMap<String, PackInfo>), GcError> {
        self.close_data()?;
        let mut index = BTreeMap::new();
        for (tree, o) in std::mem::take(&mut self.index) {
            index.insert(tree, self.close(o, PackKind::Index)?);
        }
        Ok((self.written, index))
    }
}
