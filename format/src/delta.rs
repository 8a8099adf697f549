//! Delta packs: for sites exactly one (or K) versions behind, each changed file of the new
//! version as one zstd frame compressed against the previous version of the file (the
//! reference), in the spirit of `zstd --patch-from`; new files compressed alone.
//!
//! A delta pack is an ordinary pack (`packs/<id>`, same header, trailer and footer) whose
//! objects are [`ObjectKind::Delta`](crate::pack::ObjectKind::Delta) records. The head lists
//! delta packs in its [`EXT_DELTAS`] extension, with the version (and root) each one applies
//! to. Nothing in a record is trusted: a client rebuilds a file from it, cuts the result into
//! chunks and keeps only chunks whose ids the signed index names.

use crate::error::FormatError;
use crate::id::{NodeId, PackId};
use crate::name::Name;
use crate::node::{EntryKind, Location, Node, NodeRef};
use crate::wire::{Reader, Writer};
use crate::Codec;

pub use crate::columns::{from_columns, to_columns};
pub use crate::node_list::{NodeItem, NodeList, NodePath, MIN_NODE_ITEM};

/// Head extension: the delta packs of this version (not critical: a reader that ignores it
/// fetches chunks).
pub const EXT_DELTAS: u16 = 0x0002;

/// The largest delta pack a writer makes and a reader fetches (both hold it whole): a
/// writer leaves out file records that would make it larger; a reader ignores a larger one.
pub const MAX_DELTA_PACK: u64 = 256 << 20;

/// The most packs (parts) one delta may be written as: a head lists them consecutively,
/// each with the same `from_root`, and a reader uses at most this many. 2 GiB of delta
/// from one tree, fetched in as many requests.
pub const MAX_DELTA_PARTS: usize = 8;

/// One delta pack listed by a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaInfo {
    /// The version whose files the records use as references.
    pub from_version: u64,
    /// The root node of that version (a site applies the delta only if it holds this root).
    pub from_root: NodeRef,
    /// The delta pack.
    pub pack: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// BLAKE3 of its bytes: the signed head vouches for the delta as a whole, so a reader
    /// refuses a tampered one before decoding anything in it.
    pub hash: [u8; 32],
}

impl DeltaInfo {
    /// Checks fetched bytes against the size and hash the head lists.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), FormatError> {
        if bytes.len() as u64 != self.size {
            return Err(FormatError::invalid(
                "delta pack",
                format!("{} bytes, the head says {}", bytes.len(), self.size),
            ));
        }
        if blake3::hash(bytes).as_bytes() != &self.hash {
            return Err(FormatError::invalid(
                "delta pack",
                "its BLAKE3 hash differs from the one the head lists",
            ));
        }
        Ok(())
    }
}

pub(crate) fn write_node_ref(w: &mut Writer, r: &NodeRef) {
    w.bytes(r.id.as_bytes());
    w.bytes(r.loc.pack.as_bytes());
    w.u64(r.loc.offset);
    w.u32(r.loc.stored_len);
    w.u32(r.loc.raw_len);
    w.u8(r.loc.codec.to_byte());
}

pub(crate) fn read_node_ref(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<NodeRef, FormatError> {
    let id = NodeId(r.array()?);
    let pack = PackId(r.array()?);
    let offset = r.u64()?;
    let stored_len = r.u32()?;
    let raw_len = r.u32()?;
    let codec = Codec::from_byte(r.u8()?)?;
    if raw_len > crate::MAX_NODE_SIZE || offset.checked_add(u64::from(stored_len)).is_none() {
        return Err(FormatError::invalid(what, "node location out of range"));
    }
    Ok(NodeRef {
        id,
        loc: Location {
            pack,
            offset,
            stored_len,
            raw_len,
            codec,
        },
    })
}

const DELTA_INFO_LEN: usize = 8 + 81 + 32 + 8 + 32;

/// Encodes the value of an [`EXT_DELTAS`] extension.
pub fn encode_deltas(deltas: &[DeltaInfo]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(deltas.len() as u32);
    for d in deltas {
        w.u64(d.from_version);
        write_node_ref(&mut w, &d.from_root);
        w.bytes(d.pack.as_bytes());
        w.u64(d.size);
        w.bytes(&d.hash);
    }
    w.buf
}

/// Decodes the value of an [`EXT_DELTAS`] extension.
pub fn decode_deltas(value: &[u8]) -> Result<Vec<DeltaInfo>, FormatError> {
    const WHAT: &str = "head deltas extension";
    let mut r = Reader::new(value, WHAT);
    let n = r.count(DELTA_INFO_LEN)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(DeltaInfo {
            from_version: r.u64()?,
            from_root: read_node_ref(&mut r, WHAT)?,
            pack: PackId(r.array()?),
            size: r.u64()?,
            hash: r.array()?,
        });
    }
    r.finish()?;
    Ok(out)
}

/// What a delta record rebuilds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A file's content.
    File,
    /// A directory's index node encoding (the reference: the old version's node of the
    /// directory at the reference path), so a site need not fetch the new index.
    Node,
}

/// The fixed part of a delta record: what it rebuilds, from which reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaRecord {
    /// A file or a directory node.
    pub kind: RecordKind,
    /// The path in the new version, component by component (empty: the root directory).
    pub path: Vec<Name>,
    /// The reference's path in the old version; `None`: compressed alone.
    pub reference: Option<Vec<Name>>,
    /// Size of what the frame decodes to.
    pub size: u64,
    /// Size of the reference (0 without one).
    pub ref_size: u64,
}

/// Splits a `/`-separated relative path into checked components (empty: no component).
pub fn split_path(bytes: &[u8]) -> Result<Vec<Name>, FormatError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    bytes.split(|b| *b == b'/').map(Name::new).collect()
}

/// Joins components with `/`.
pub fn join_path(path: &[Name]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, n) in path.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(n.as_bytes());
    }
    out
}

impl DeltaRecord {
    /// The record's bytes: the fixed part followed by the zstd frame.
    pub fn encode(&self, frame: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        let path = join_path(&self.path);
        let reference = self.reference.as_deref().map(join_path).unwrap_or_default();
        w.u8(match self.kind {
            RecordKind::File => 0,
            RecordKind::Node => 1,
        });
        w.u8(u8::from(self.reference.is_some()));
        w.u16(path.len() as u16);
        w.bytes(&path);
        w.u16(reference.len() as u16);
        w.bytes(&reference);
        w.u64(self.size);
        w.u64(self.ref_size);
        w.bytes(frame);
        w.buf
    }

    /// Splits a record into its fixed part and its frame. Paths are checked component by
    /// component (no `..`, no `/` inside a name, no NUL, not absolute).
    pub fn decode(bytes: &[u8]) -> Result<(DeltaRecord, &[u8]), FormatError> {
        const WHAT: &str = "delta record";
        let mut r = Reader::new(bytes, WHAT);
        let kind = match r.u8()? {
            0 => RecordKind::File,
            1 => RecordKind::Node,
            k => {
                return Err(FormatError::invalid(
                    WHAT,
                    format!("unknown record kind {k}"),
                ))
            }
        };
        let has_ref = match r.u8()? {
            0 => false,
            1 => true,
            f => return Err(FormatError::invalid(WHAT, format!("reference flag {f}"))),
        };
        let plen = r.u16()? as usize;
        let path = split_path(r.take(plen)?)?;
        let rlen = r.u16()? as usize;
        let ref_path = split_path(r.take(rlen)?)?;
        if kind == RecordKind::File && (path.is_empty() || (has_ref && ref_path.is_empty())) {
            return Err(FormatError::invalid(
                WHAT,
                "a file record with an empty path",
            ));
        }
        if !has_ref && rlen != 0 {
            return Err(FormatError::invalid(
                WHAT,
                "a reference path without the flag",
            ));
        }
        let reference = has_ref.then_some(ref_path);
        let size = r.u64()?;
        let ref_size = r.u64()?;
        if reference.is_none() && ref_size != 0 {
            return Err(FormatError::invalid(
                WHAT,
                "reference size without a reference",
            ));
        }
        let frame = r.take(r.remaining())?;
        Ok((
            DeltaRecord {
                kind,
                path,
                reference,
                size,
                ref_size,
            },
            frame,
        ))
    }

    /// The trailer id of a record: BLAKE3 of its path, so a reader can find a path's
    /// record from the trailer alone.
    pub fn trailer_id(path: &[Name]) -> [u8; 32] {
        *blake3::hash(&join_path(path)).as_bytes()
    }
}

/// Record kind byte of a node batch ([`Batch`] of [`BatchKind::Nodes`]).
pub const KIND_NODE_BATCH: u8 = 2;

/// Record kind byte of a file batch ([`Batch`] of [`BatchKind::Files`]).
pub const KIND_FILE_BATCH: u8 = 3;

/// Record kind byte of a columnar node batch ([`Batch`] of [`BatchKind::NodeColumns`]).
pub const KIND_NODE_COLUMNS: u8 = 4;

/// Record kind byte of an own-chunk batch ([`Batch`] of [`BatchKind::OwnChunks`]).
pub const KIND_OWN_CHUNKS: u8 = 5;

/// The largest list, and the largest sum of item (or reference) sizes, in one batch: a
/// reader holds them whole. A writer starts another batch past it.
pub const MAX_BATCH: u64 = 128 << 20;

/// The most items one batch may list (a reader holds them decoded): a million directories
/// changed in one version is far beyond a real release.
pub const MAX_BATCH_ITEMS: u32 = 1 << 20;

/// The most path components (names) one batch list may hold, its items' paths and
/// references counted: a reader holds each as its own allocation, so this, not the list's
/// bytes, bounds its memory (a list of 128 MiB of one-byte names would take gigabytes).
pub const MAX_BATCH_NAMES: usize = 1 << 21;

/// What a [`Batch`] rebuilds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchKind {
    /// Directory nodes (kind 2); subdirectories the batch rebuilds have zero ids.
    Nodes,
    /// Directory nodes as [`Nodes`](Self::Nodes), the frame's content (and its prefix, the
    /// references) taken apart into columns ([`to_columns`]) before compression, and the
    /// list a [`NodeList`] (kind 4).
    NodeColumns,
    /// Composite files' own chunks (kind 5): a file batch whose items are composite files
    /// (ISO images), each one's content the chunks of its chunk parts concatenated in
    /// order, its reference likewise those of the old composite file at the reference path.
    OwnChunks,
    /// Files' contents (kind 3), each referring to a file of the old tree.
    Files,
}

/// One directory or file of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchItem {
    /// The path in the new version (empty: the root directory; never empty for a file).
    pub path: Vec<Name>,
    /// What it is compressed against: the old version's directory or file at this path or
    /// another (`None`: none; compressed with the others only).
    pub reference: Option<Vec<Name>>,
    /// Length of the new node's encoding as the batch carries it, or of the file.
    pub size: u32,
    /// Length of the reference (0 without one).
    pub ref_size: u32,
}

/// A batch (FORMAT.md 5.6): a record of many items as one zstd frame instead of a record
/// and frame each, so what repeats across them (a release's mtime, entry shapes, the
/// boilerplate of source files) and the per-record framing cost once. The frame is
/// compressed with the references, concatenated in list order, as its prefix.
///
/// A node batch (kind 2) carries changed directory nodes; a subdirectory whose node the
/// same batch rebuilds has an all-zero id: the reader puts in the hash of what it
/// rebuilt, so 32 bytes of hash per changed directory never travel. A file batch (kind 3)
/// carries small changed files, their references being files of the old tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    /// Nodes or files.
    pub kind: BatchKind,
    /// Number of items in the list.
    pub count: u32,
    /// Length of the list once decoded.
    pub list_size: u32,
    /// The list ([`encode_batch_list`]) as one zstd frame without a prefix.
    pub list_frame: &'a [u8],
    /// The items, concatenated in list order, as one zstd frame with the references as
    /// prefix.
    pub frame: &'a [u8],
}

impl BatchKind {
    /// Whether the batch rebuilds directory nodes (kind 2 or 4).
    pub fn carries_nodes(self) -> bool {
        matches!(self, BatchKind::Nodes | BatchKind::NodeColumns)
    }
}

impl<'a> Batch<'a> {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(match self.kind {
            BatchKind::Nodes => KIND_NODE_BATCH,
            BatchKind::Files => KIND_FILE_BATCH,
            BatchKind::NodeColumns => KIND_NODE_COLUMNS,
            BatchKind::OwnChunks => KIND_OWN_CHUNKS,
        });
        w.u32(self.count);
        w.u32(self.list_size);
        w.u32(self.list_frame.len() as u32);
        w.bytes(self.list_frame);
        w.bytes(self.frame);
        w.buf
    }

    /// Splits a batch record (`None`: a record of another kind).
    pub fn decode(bytes: &'a [u8]) -> Result<Option<Self>, FormatError> {
        const WHAT: &str = "delta batch";
        let mut r = Reader::new(bytes, WHAT);
        let kind = match r.u8()? {
            KIND_NODE_BATCH => BatchKind::Nodes,
            KIND_FILE_BATCH => BatchKind::Files,
            KIND_NODE_COLUMNS => BatchKind::NodeColumns,
            KIND_OWN_CHUNKS => BatchKind::OwnChunks,
            _ => return Ok(None),
        };
        let count = r.u32()?;
        let list_size = r.u32()?;
        if count == 0 || count > MAX_BATCH_ITEMS || u64::from(list_size) > MAX_BATCH {
            return Err(FormatError::invalid(
                WHAT,
                "empty, or too many items, or its list too large",
            ));
        }
        // Each item takes at least 11 bytes (an empty path, no reference, two sizes); in a
        // node list (kind 4), 4 bytes after the nodes' size.
        let least = match kind {
            BatchKind::NodeColumns => 4 + u64::from(count) * MIN_NODE_ITEM,
            _ => u64::from(count) * 11,
        };
        if least > u64::from(list_size) {
            return Err(FormatError::invalid(
                WHAT,
                format!("{count} items cannot fit in a list of {list_size} bytes"),
            ));
        }
        let flen = r.u32()? as usize;
        let list_frame = r.take(flen)?;
        let frame = r.take(r.remaining())?;
        Ok(Some(Batch {
            kind,
            count,
            list_size,
            list_frame,
            frame,
        }))
    }
}

/// The list of a batch: per item the path (u16 length, bytes), the reference (u8: 0 none,
/// 1 the same path, 2 another path given as u16 length and bytes), the item's size and the
/// reference's size (u32 each).
pub fn encode_batch_list(items: &[BatchItem]) -> Vec<u8> {
    let mut w = Writer::default();
    for it in items {
        let path = join_path(&it.path);
        w.u16(path.len() as u16);
        w.bytes(&path);
        match &it.reference {
            None => w.u8(0),
            Some(p) if *p == it.path => w.u8(1),
            Some(p) => {
                let p = join_path(p);
                w.u8(2);
                w.u16(p.len() as u16);
                w.bytes(&p);
            }
        }
        w.u32(it.size);
        w.u32(it.ref_size);
    }
    w.buf
}

/// A path of a batch list (u16 length, names joined by `/`), its names counted into `names`
/// against [`MAX_BATCH_NAMES`] before they are split: each name is an allocation.
pub(crate) fn take_path(
    r: &mut Reader<'_>,
    names: &mut usize,
    what: &'static str,
) -> Result<Vec<Name>, FormatError> {
    let len = r.u16()? as usize;
    let bytes = r.take(len)?;
    *names += match bytes.is_empty() {
        true => 0,
        false => 1 + bytes.iter().filter(|b| **b == b'/').count(),
    };
    if *names > MAX_BATCH_NAMES {
        return Err(FormatError::invalid(what, "too many path components"));
    }
    split_path(bytes)
}

/// Decodes a batch list of exactly `count` items; paths are checked component by
/// component (a file's, and its reference's, not empty), and the sizes of items and of
/// references each add up to at most [`MAX_BATCH`].
pub fn decode_batch_list(
    bytes: &[u8],
    count: u32,
    kind: BatchKind,
) -> Result<Vec<BatchItem>, FormatError> {
    const WHAT: &str = "delta batch list";
    let mut r = Reader::new(bytes, WHAT);
    let mut out = Vec::new();
    let (mut total, mut ref_total, mut names) = (0u64, 0u64, 0usize);
    for _ in 0..count {
        let path = take_path(&mut r, &mut names, WHAT)?;
        let reference = match r.u8()? {
            0 => None,
            1 => Some(path.clone()),
            2 => {
                let rlen = r.u16()? as usize;
                Some(split_path(r.take(rlen)?)?)
            }
            f => return Err(FormatError::invalid(WHAT, format!("reference flag {f}"))),
        };
        names += reference.as_ref().map_or(0, Vec::len);
        if names > MAX_BATCH_NAMES {
            return Err(FormatError::invalid(WHAT, "too many path components"));
        }
        if matches!(kind, BatchKind::Files | BatchKind::OwnChunks)
            && (path.is_empty() || reference.as_ref().is_some_and(|p| p.is_empty()))
        {
            return Err(FormatError::invalid(WHAT, "a file with an empty path"));
        }
        let size = r.u32()?;
        let ref_size = r.u32()?;
        if reference.is_none() && ref_size != 0 {
            return Err(FormatError::invalid(
                WHAT,
                "reference size without a reference",
            ));
        }
        total += u64::from(size);
        ref_total += u64::from(ref_size);
        if total > MAX_BATCH || ref_total > MAX_BATCH {
            return Err(FormatError::invalid(WHAT, "its items add up to too much"));
        }
        out.push(BatchItem {
            path,
            reference,
            size,
            ref_size,
        });
    }
    r.finish()?;
    Ok(out)
}

/// A node's encoding as a batch carries it: the ids of the subdirectories for which
/// `rebuilt(name)` is true set to zero.
pub fn blank_children(
    node: &Node,
    rebuilt: impl Fn(&Name) -> bool,
) -> Result<Vec<u8>, FormatError> {
    let mut entries = node.entries().to_vec();
    for e in &mut entries {
        if let EntryKind::Dir { node } = &mut e.kind {
            if rebuilt(&e.name) {
                node.id = NodeId([0; 32]);
            }
        }
    }
    Ok(Node::new(entries)?.encode())
}

/// The inverse of [`blank_children`]: each all-zero subdirectory id replaced by
/// `id_of(name)`. `Ok(None)`: a zero id that `id_of` cannot fill.
pub fn fill_children(
    carried: &[u8],
    mut id_of: impl FnMut(&Name) -> Option<NodeId>,
) -> Result<Option<Vec<u8>>, FormatError> {
    let node = Node::decode(carried)?;
    let mut entries = node.entries().to_vec();
    let mut changed = false;
    for e in &mut entries {
        if let EntryKind::Dir { node } = &mut e.kind {
            if node.id.0 == [0; 32] {
                match id_of(&e.name) {
                    Some(id) => node.id = id,
                    None => return Ok(None),
                }
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(Some(carried.to_vec()));
    }
    Ok(Some(Node::new(entries)?.encode()))
}

/// Splits a whole delta pack `id` into its records (header, footer and trailer checked;
/// objects of other kinds, or not stored raw, skipped).
pub fn records(id: PackId, bytes: &[u8]) -> Result<Vec<&[u8]>, FormatError> {
    use crate::pack::{
        decode_footer, decode_header, decode_trailer, ObjectKind, FOOTER_LEN, HEADER_LEN,
    };
    let size = bytes.len() as u64;
    if size < HEADER_LEN + FOOTER_LEN {
        return Err(FormatError::invalid("delta pack", "shorter than a pack"));
    }
    if decode_header(&bytes[..HEADER_LEN as usize])? != id {
        return Err(FormatError::invalid(
            "delta pack",
            "header names another pack",
        ));
    }
    let trailer = decode_footer(&bytes[(size - FOOTER_LEN) as usize..], size)?;
    let entries = decode_trailer(
        id,
        &bytes[trailer.start as usize..trailer.end as usize],
        trailer.start,
    )?;
    Ok(entries
        .iter()
        .filter(|e| {
            e.kind == ObjectKind::Delta
                && e.loc.codec == crate::Codec::Raw
                && e.loc.stored_len == e.loc.raw_len
        })
        .map(|e| &bytes[e.loc.offset as usize..e.loc.range().end as usize])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(s: &str) -> Vec<Name> {
        split_path(s.as_bytes()).expect("path")
    }

    #[test]
    fn record_round_trip_and_hostile_paths() {
        let rec = DeltaRecord {
            kind: RecordKind::File,
            path: names("src/kernel/a.c"),
            reference: Some(names("src/kernel/a.c")),
            size: 10,
            ref_size: 9,
        };
        let bytes = rec.encode(b"FRAME");
        let (back, frame) = DeltaRecord::decode(&bytes).expect("decode");
        assert_eq!(back, rec);
        assert_eq!(frame, b"FRAME");
        // The root directory's node: an empty path, referring to the old root.
        let root = DeltaRecord {
            kind: RecordKind::Node,
            path: Vec::new(),
            reference: Some(Vec::new()),
            size: 3,
            ref_size: 2,
        };
        let (back, _) = DeltaRecord::decode(&root.encode(b"F")).expect("root");
        assert_eq!(back, root);
        for bad in [
            "../etc/passwd",
            "/abs",
            "a//b",
            "a/./b",
            "a/../b",
            "a/b\0c",
            "",
        ] {
            let mut w = Writer::default();
            w.u8(0);
            w.u8(0);
            w.u16(bad.len() as u16);
            w.bytes(bad.as_bytes());
            w.u16(0);
            w.u64(1);
            w.u64(0);
            assert!(DeltaRecord::decode(&w.buf).is_err(), "{bad:?}");
        }
    }

    fn dir_entry(name: &str, id: u8) -> crate::Entry {
        crate::Entry {
            name: Name::new(name.as_bytes().to_vec()).expect("name"),
            mode: 0o755,
            mtime: crate::Mtime { secs: 7, nanos: 0 },
            kind: EntryKind::Dir {
                node: NodeRef {
                    id: NodeId([id; 32]),
                    loc: Location {
                        pack: PackId([9; 32]),
                        offset: 40,
                        stored_len: 10,
                        raw_len: 10,
                        codec: Codec::Raw,
                    },
                },
            },
        }
    }

    #[test]
    fn node_batch_and_list_round_trip() {
        let items = vec![
            BatchItem {
                path: Vec::new(),
                reference: Some(Vec::new()),
                size: 300,
                ref_size: 290,
            },
            BatchItem {
                path: names("src/a"),
                reference: Some(names("src/a")),
                size: 80,
                ref_size: 81,
            },
            BatchItem {
                path: names("src/b"),
                reference: Some(names("old/b")),
                size: 90,
                ref_size: 70,
            },
            BatchItem {
                path: names("src/new"),
                reference: None,
                size: 60,
                ref_size: 0,
            },
        ];
        let list = encode_batch_list(&items);
        assert_eq!(
            decode_batch_list(&list, 4, BatchKind::Nodes).expect("list"),
            items
        );
        // One item fewer or more than the list holds: refused.
        assert!(decode_batch_list(&list, 3, BatchKind::Nodes).is_err());
        assert!(decode_batch_list(&list, 5, BatchKind::Nodes).is_err());
        let b = Batch {
            kind: BatchKind::Nodes,
            count: 4,
            list_size: list.len() as u32,
            list_frame: b"LIST",
            frame: b"NODES",
        };
        let rec = b.encode();
        assert_eq!(Batch::decode(&rec).expect("batch"), Some(b));
        // Other records are not batches, and a batch is not a record of kind 0 or 1.
        let file = DeltaRecord {
            kind: RecordKind::File,
            path: names("a"),
            reference: None,
            size: 1,
            ref_size: 0,
        };
        assert_eq!(Batch::decode(&file.encode(b"F")).expect("other"), None);
        assert!(DeltaRecord::decode(&rec).is_err());
        // A count the list cannot hold, an empty batch, an oversized list: refused early.
        for (count, size) in [
            (0, 100),
            (1000, 100),
            (1, (MAX_BATCH + 1) as u32),
            (MAX_BATCH_ITEMS + 1, (MAX_BATCH) as u32),
        ] {
            let bad = Batch {
                kind: BatchKind::Nodes,
                count,
                list_size: size,
                list_frame: b"",
                frame: b"",
            }
            .encode();
            assert!(Batch::decode(&bad).is_err(), "{count} {size}");
        }
        // Sizes that add up past the batch limit: refused.
        let big = vec![BatchItem {
            path: names("a"),
            reference: None,
            size: u32::MAX,
            ref_size: 0,
        }];
        assert!(decode_batch_list(&encode_batch_list(&big), 1, BatchKind::Nodes).is_err());
    }

    #[test]
    fn a_list_of_too_many_names_is_refused_before_they_are_split() {
        // 33 items of 32,767 one-byte names each, and as many in their references (flag 1):
        // 2,162,622 names in 4 MiB of list, past the 2,097,152 allowed.
        let deep = vec!["a"; 32_767].join("/");
        let item = BatchItem {
            path: names(&deep),
            reference: Some(names(&deep)),
            size: 1,
            ref_size: 1,
        };
        let list = encode_batch_list(&vec![item; 33]);
        let err = decode_batch_list(&list, 33, BatchKind::Nodes).expect_err("refused");
        assert!(
            err.to_string().contains("too many path components"),
            "{err}"
        );
        let list = encode_batch_list(&[BatchItem {
            path: names(&deep),
            reference: None,
            size: 1,
            ref_size: 0,
        }]);
        assert!(decode_batch_list(&list, 1, BatchKind::Nodes).is_ok());
    }

    #[test]
    fn file_batches_round_trip_and_name_files() {
        let items = vec![
            BatchItem {
                path: names("src/a.c"),
                reference: Some(names("src/a.c")),
                size: 800,
                ref_size: 790,
            },
            BatchItem {
                path: names("src/new.c"),
                reference: None,
                size: 60,
                ref_size: 0,
            },
        ];
        let list = encode_batch_list(&items);
        assert_eq!(
            decode_batch_list(&list, 2, BatchKind::Files).expect("list"),
            items
        );
        let b = Batch {
            kind: BatchKind::Files,
            count: 2,
            list_size: list.len() as u32,
            list_frame: b"LIST",
            frame: b"FILES",
        };
        let rec = b.encode();
        assert_eq!(rec[0], KIND_FILE_BATCH);
        assert_eq!(Batch::decode(&rec).expect("batch"), Some(b));
        // A file is never the root, nor refers to it; a directory may.
        for (path, reference) in [("", None), ("a", Some(""))] {
            let bad = vec![BatchItem {
                path: names(path),
                reference: reference.map(names),
                size: 1,
                ref_size: u32::from(reference.is_some()),
            }];
            let list = encode_batch_list(&bad);
            assert!(decode_batch_list(&list, 1, BatchKind::Files).is_err());
            assert!(decode_batch_list(&list, 1, BatchKind::Nodes).is_ok());
        }
    }

    #[test]
    fn blanked_children_are_filled_back_exactly() {
        let node = Node::new(vec![
            dir_entry("a", 1),
            dir_entry("b", 2),
            dir_entry("c", 3),
        ])
        .expect("node");
        let carried = blank_children(&node, |n| n.as_bytes() != b"b").expect("blank");
        assert_ne!(carried, node.encode());
        let back = Node::decode(&carried).expect("decodes");
        let ids: Vec<[u8; 32]> = back
            .entries()
            .iter()
            .map(|e| match &e.kind {
                EntryKind::Dir { node } => node.id.0,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, [[0; 32], [2; 32], [0; 32]]);
        let filled = fill_children(&carried, |n| Some(NodeId([n.as_bytes()[0] - b'a' + 1; 32])));
        assert_eq!(filled.expect("fill"), Some(node.encode()));
        // A zero id nothing can fill: no node (its directory is fetched instead).
        assert_eq!(fill_children(&carried, |_| None).expect("fill"), None);
        // Nothing blank: the bytes as they are.
        let plain = node.encode();
        assert_eq!(
            fill_children(&plain, |_| None).expect("fill"),
            Some(plain.clone())
        );
        assert!(fill_children(b"not a node", |_| None).is_err());
    }

    proptest! {
        #[test]
        fn batch_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), count in 0u32..50) {
            let _ = Batch::decode(&bytes);
            let _ = decode_batch_list(&bytes, count, BatchKind::Nodes);
            let _ = fill_children(&bytes, |_| Some(NodeId([1; 32])));
        }

        /// Damaged lists: refused, or decoded with checked paths.
        #[test]
        fn damaged_batch_lists_are_refused_or_checked(m in crate::mutate::mutation()) {
            let items = vec![
                BatchItem { path: names("pool/main"), reference: Some(names("pool/main")), size: 80, ref_size: 81 },
                BatchItem { path: names("pool/x"), reference: Some(names("pool/y")), size: 9, ref_size: 7 },
            ];
            if let Ok(back) = decode_batch_list(&m.apply(&encode_batch_list(&items)), 2, BatchKind::Nodes) {
                for n in back.iter().flat_map(|it| it.path.iter().chain(it.reference.iter().flatten())) {
                    prop_assert!(Name::new(n.as_bytes().to_vec()).is_ok());
                }
            }
        }

        #[test]
        fn deltas_round_trip(v in any::<u64>(), size in any::<u64>(), off in 0u64..1 << 40) {
            let d = DeltaInfo {
                from_version: v,
                from_root: NodeRef {
                    id: NodeId([3; 32]),
                    loc: Location { pack: PackId([4; 32]), offset: off, stored_len: 7, raw_len: 9, codec: Codec::Zstd },
                },
                pack: PackId([5; 32]),
                size,
                hash: [6; 32],
            };
            let enc = encode_deltas(&[d, d]);
            prop_assert_eq!(decode_deltas(&enc).expect("decode"), vec![d, d]);
        }

        #[test]
        fn record_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DeltaRecord::decode(&bytes);
            let _ = decode_deltas(&bytes);
        }

        /// Damaged valid records and extensions: refused, or decoded with checked paths;
        /// never a panic.
        #[test]
        fn damaged_records_are_refused_or_checked(m in crate::mutate::mutation(), size in any::<u64>()) {
            let name = |n: &[u8]| Name::new(n.to_vec()).expect("name");
            let rec = DeltaRecord {
                kind: RecordKind::File,
                path: vec![name(b"pool"), name(b"a.deb")],
                reference: Some(vec![name(b"pool"), name(b"a-old.deb")]),
                size,
                ref_size: 7,
            };
            let bad = m.apply(&rec.encode(b"frame bytes"));
            if let Ok((r, _)) = DeltaRecord::decode(&bad) {
                for n in r.path.iter().chain(r.reference.iter().flatten()) {
                    prop_assert!(Name::new(n.as_bytes().to_vec()).is_ok());
                }
            }
            let d = DeltaInfo {
                from_version: 1,
                from_root: NodeRef {
                    id: NodeId([3; 32]),
                    loc: Location { pack: PackId([4; 32]), offset: 9, stored_len: 7, raw_len: 9, codec: Codec::Zstd },
                },
                pack: PackId([5; 32]),
                size,
                hash: [6; 32],
            };
            let _ = decode_deltas(&m.apply(&encode_deltas(&[d, d])));
        }
    }
}
