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
use crate::node::{Location, NodeRef};
use crate::wire::{Reader, Writer};
use crate::Codec;

/// Head extension: the delta packs of this version (not critical: a reader that ignores it
/// fetches chunks).
pub const EXT_DELTAS: u16 = 0x0002;

/// The largest delta pack a writer makes and a reader fetches (both hold it whole): a
/// writer leaves out file records that would make it larger; a reader ignores a larger one.
pub const MAX_DELTA_PACK: u64 = 256 << 20;

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

    proptest! {
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
