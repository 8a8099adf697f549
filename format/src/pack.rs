//! Packs: immutable containers of stored chunks and index nodes.
//!
//! Layout: a 40-byte header (magic, pack id), the stored objects back to back, and a
//! trailer listing every object, so a pack describes itself (publishers rebuild their
//! chunk catalog from trailers; `fsck`-like tools verify packs without any index).
//! Readers of a tree never need the trailer: index nodes carry each object's location.

use crate::codec::Codec;
use crate::error::FormatError;
use crate::id::PackId;
use crate::node::Location;
use crate::wire::{Reader, Writer};

/// The HTTP `Cache-Control` of a pack, wherever a store serves it (`serve`, a bucket's
/// object metadata): a pack is immutable, and its name stands for those bytes only (named by
/// its content, or at random: FORMAT.md 3), so it may be kept as long as anyone likes.
pub const PACK_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Magic and format version at the start of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"PDPACK\x00\x01";
/// Magic at the very end of a pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"PDPKEND\x01";
/// Header length: magic and pack id.
pub const HEADER_LEN: u64 = 40;
/// Footer length: trailer offset and end magic.
pub const FOOTER_LEN: u64 = 16;
const ENTRY_LEN: usize = 1 + 32 + 8 + 4 + 4 + 1;

/// What an object in a pack is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A file chunk (id: BLAKE3 of its bytes).
    Chunk,
    /// An index node (id: BLAKE3 of its encoding).
    Node,
    /// A delta record (id: BLAKE3 of its path; see [`crate::delta`]).
    Delta,
}

/// One trailer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrailerEntry {
    /// Chunk or node.
    pub kind: ObjectKind,
    /// The object's id bytes.
    pub id: [u8; 32],
    /// Where it is in this pack.
    pub loc: Location,
}

/// Lays out a pack. Pure: it returns the bytes to write and the location of each object;
/// the caller does the writing.
pub struct PackBuilder {
    id: PackId,
    offset: u64,
    entries: Vec<TrailerEntry>,
}

impl PackBuilder {
    /// Starts pack `id`; returns the builder and the header bytes to write first.
    pub fn new(id: PackId) -> (Self, Vec<u8>) {
        let mut w = Writer::default();
        w.bytes(PACK_MAGIC);
        w.bytes(id.as_bytes());
        (
            PackBuilder {
                id,
                offset: HEADER_LEN,
                entries: Vec::new(),
            },
            w.buf,
        )
    }

    /// The pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes so far (header and objects).
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// Whether no object has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records an object whose stored bytes the caller appends next; returns its location.
    pub fn add(
        &mut self,
        kind: ObjectKind,
        id: [u8; 32],
        codec: Codec,
        stored_len: u32,
        raw_len: u32,
    ) -> Location {
        let loc = Location {
            pack: self.id,
            offset: self.offset,
            stored_len,
            raw_len,
            codec,
        };
        self.offset += u64::from(stored_len);
        self.entries.push(TrailerEntry { kind, id, loc });
        loc
    }

    /// The trailer and footer bytes that end the pack, and the pack's total size.
    pub fn finish(self) -> (Vec<u8>, u64) {
        let mut w = Writer::default();
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            w.u8(match e.kind {
                ObjectKind::Chunk => 0,
                ObjectKind::Node => 1,
                ObjectKind::Delta => 2,
            });
            w.bytes(&e.id);
            w.u64(e.loc.offset);
            w.u32(e.loc.stored_len);
            w.u32(e.loc.raw_len);
            w.u8(e.loc.codec.to_byte());
        }
        w.u64(self.offset);
        w.bytes(PACK_END_MAGIC);
        let total = self.offset + w.buf.len() as u64;
        (w.buf, total)
    }
}

/// Checks a pack header and returns the id it names.
pub fn decode_header(header: &[u8]) -> Result<PackId, FormatError> {
    let mut r = Reader::new(header, "pack header");
    r.expect_magic(PACK_MAGIC)?;
    Ok(PackId(r.array()?))
}

/// Reads the footer (the last 16 bytes of a pack of `pack_size` bytes) and returns the
/// byte range of the trailer to read next.
pub fn decode_footer(footer: &[u8], pack_size: u64) -> Result<std::ops::Range<u64>, FormatError> {
    let mut r = Reader::new(footer, "pack footer");
    let start = r.u64()?;
    let magic: [u8; 8] = r.array()?;
    r.finish()?;
    if &magic != PACK_END_MAGIC {
        return Err(FormatError::BadMagic {
            what: "pack footer",
            found: magic.to_vec(),
        });
    }
    if pack_size < HEADER_LEN + FOOTER_LEN || start < HEADER_LEN || start > pack_size - FOOTER_LEN {
        return Err(FormatError::invalid(
            "pack footer",
            format!("trailer offset {start} outside a pack of {pack_size} bytes"),
        ));
    }
    Ok(start..pack_size - FOOTER_LEN)
}

/// Decodes a pack trailer (without the footer) of pack `id`, whose objects end at `objects_end`.
pub fn decode_trailer(
    id: PackId,
    trailer: &[u8],
    objects_end: u64,
) -> Result<Vec<TrailerEntry>, FormatError> {
    let mut r = Reader::new(trailer, "pack trailer");
    let n = r.count(ENTRY_LEN)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = match r.u8()? {
            0 => ObjectKind::Chunk,
            1 => ObjectKind::Node,
            2 => ObjectKind::Delta,
            k => {
                return Err(FormatError::invalid(
                    "pack trailer",
                    format!("unknown object kind {k}"),
                ))
            }
        };
        let oid: [u8; 32] = r.array()?;
        let offset = r.u64()?;
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        let codec = Codec::from_byte(r.u8()?)?;
        let end = offset.checked_add(u64::from(stored_len));
        if offset < HEADER_LEN || end.is_none_or(|e| e > objects_end) {
            return Err(FormatError::invalid(
                "pack trailer",
                format!("object at {offset}+{stored_len} outside the pack's objects"),
            ));
        }
        out.push(TrailerEntry {
            kind,
            id: oid,
            loc: Location {
                pack: id,
                offset,
                stored_len,
                raw_len,
                codec,
            },
        });
    }
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::any;

    #[test]
    fn pack_round_trip() {
        let id = PackId([4; 32]);
        let (mut b, header) = PackBuilder::new(id);
        let mut bytes = header;
        let l1 = b.add(ObjectKind::Chunk, [1; 32], Codec::Raw, 5, 5);
        bytes.extend_from_slice(b"hello");
        let l2 = b.add(ObjectKind::Node, [2; 32], Codec::Raw, 3, 3);
        bytes.extend_from_slice(b"abc");
        let (tail, total) = b.finish();
        bytes.extend_from_slice(&tail);
        assert_eq!(bytes.len() as u64, total);
        assert_eq!(decode_header(&bytes[..40]).expect("header"), id);
        let r = decode_footer(&bytes[bytes.len() - 16..], total).expect("footer");
        let entries =
            decode_trailer(id, &bytes[r.start as usize..r.end as usize], r.start).expect("trailer");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].loc, l1);
        assert_eq!(entries[1].loc, l2);
        assert_eq!(&bytes[l1.offset as usize..][..5], b"hello");
        // A trailer pointing past the objects is refused.
        assert!(decode_trailer(id, &bytes[r.start as usize..r.end as usize], 41).is_err());
        assert!(decode_footer(&bytes[..16], total).is_err());
    }

    proptest::proptest! {
        #[test]
        fn trailer_round_trip(objs in proptest::collection::vec((any::<[u8; 32]>(), 1u32..5000, any::<bool>()), 0..20)) {
            let id = PackId([9; 32]);
            let (mut b, _) = PackBuilder::new(id);
            let mut locs = Vec::new();
            for (oid, len, node) in &objs {
                let kind = if *node { ObjectKind::Node } else { ObjectKind::Chunk };
                locs.push((kind, *oid, b.add(kind, *oid, Codec::Raw, *len, *len)));
            }
            let end = b.len();
            let (tail, total) = b.finish();
            let r = decode_footer(&tail[tail.len() - 16..], total).expect("footer");
            let start = (r.start - end) as usize;
            let entries = decode_trailer(id, &tail[start..tail.len() - 16], end).expect("trailer");
            proptest::prop_assert_eq!(entries.len(), locs.len());
            for (e, (kind, oid, loc)) in entries.iter().zip(&locs) {
                proptest::prop_assert_eq!((e.kind, e.id, e.loc), (*kind, *oid, *loc));
            }
        }

        #[test]
        fn trailer_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_trailer(PackId([1; 32]), &bytes, 1 << 20);
            let _ = decode_footer(&bytes, bytes.len() as u64);
        }

        /// A damaged pack tail (trailer and footer): refused, or entries that stay inside
        /// the objects area; never a panic.
        #[test]
        fn damaged_trailer_stays_in_bounds(
            objs in proptest::collection::vec((any::<[u8; 32]>(), 1u32..5000), 1..10),
            m in crate::mutate::mutation(),
        ) {
            let id = PackId([9; 32]);
            let (mut b, _) = PackBuilder::new(id);
            for (oid, len) in &objs {
                b.add(ObjectKind::Chunk, *oid, Codec::Raw, *len, *len);
            }
            let end = b.len();
            let (tail, total) = b.finish();
            let bad = m.apply(&tail);
            if bad.len() >= 16 {
                let total = total - tail.len() as u64 + bad.len() as u64;
                if let Ok(r) = decode_footer(&bad[bad.len() - 16..], total) {
                    if let Some(t) = r.start.checked_sub(end).and_then(|s| bad.get(s as usize..bad.len() - 16)) {
                        if let Ok(entries) = decode_trailer(id, t, end) {
                            for e in entries {
                                proptest::prop_assert!(e.loc.offset + u64::from(e.loc.stored_len) <= end);
                            }
                        }
                    }
                }
            }
        }
    }
}
