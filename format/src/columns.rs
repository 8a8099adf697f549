//! Node columns: how a columnar node batch (FORMAT.md 5.6, kind 4) lays out its nodes
//! before compression, and back.
//!
//! A release that re-stamps every file changes the 12 bytes of mtime in every entry of
//! every directory, and nothing else in most of them. In the nodes' own layout each mtime
//! cuts the match against the old node in two, so zstd pays a match and a literal per
//! entry (about 8 bytes: 668 kB for the 78,579 entries of a kernel source release). Taken
//! apart into columns (the rest of each entry, then every id, every location, every
//! mtime), the unchanged entries are one long match against the old nodes taken apart the
//! same way, and a column of one repeated mtime costs almost nothing.
//!
//! The columns of N nodes are exactly as long as the nodes (their bytes in another order,
//! but for the locations' offsets, carried as distances), so a batch's sizes stay the
//! nodes' sizes.

use crate::error::FormatError;
use crate::wire::Reader;

const WHAT: &str = "node columns";

/// The columns, in the order they follow each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    /// Everything not in another column: magic, pack table, counts, names, kinds, modes,
    /// sizes, symlink targets, composite parts' paths.
    Rest = 0,
    /// Chunk ids and subdirectory node ids (32 bytes each).
    Id = 1,
    /// Locations (21 bytes each), of chunks and of subdirectory nodes.
    Loc = 2,
    /// Each entry's mtime (seconds and nanoseconds, 12 bytes).
    Time = 3,
}

const ID_LEN: usize = 32;
const LOC_LEN: usize = 21;
const TIME_LEN: usize = 12;

/// Where the walker takes each field from, and where it puts it.
trait Fields<'a> {
    /// A field of the rest column, returned so that the walker can read a length or a
    /// kind from it.
    fn rest(&mut self, n: usize) -> Result<&'a [u8], FormatError>;
    /// A field of another column, which the walker never reads.
    fn other(&mut self, column: Column, n: usize) -> Result<(), FormatError>;
    /// A location, its pack index into `table` (the node's pack table, 32 bytes an id).
    fn loc(&mut self, table: &'a [u8]) -> Result<(), FormatError>;
}

/// A location's offset as the locations column carries it: the distance (wrapping) from
/// where the column's last location in the same pack ended. A publisher writes a file's
/// new chunks one after the other, so most new chunks' offsets become 0, where their
/// absolute offsets in a fresh pack were 8 bytes of noise each (the kernel source
/// update's locations column: 43,242 bytes against 26,307 so).
#[derive(Default)]
struct Offsets {
    end: std::collections::HashMap<[u8; 32], u64>,
}

impl Offsets {
    /// The pack id of location `loc` (21 bytes) in `table`.
    fn pack(table: &[u8], loc: &[u8]) -> Result<[u8; 32], FormatError> {
        let i = u32::from_le_bytes([loc[0], loc[1], loc[2], loc[3]]) as usize;
        table
            .get(i.saturating_mul(32)..i.saturating_mul(32).saturating_add(32))
            .and_then(|id| <[u8; 32]>::try_from(id).ok())
            .ok_or_else(|| FormatError::invalid(WHAT, "a pack index past the pack table"))
    }

    /// `loc` with its offset coded (`carry`: as carried) or decoded (`!carry`).
    fn code(&mut self, table: &[u8], loc: &[u8], carry: bool) -> Result<[u8; 21], FormatError> {
        let mut out = [0u8; LOC_LEN];
        out.copy_from_slice(loc);
        let pack = Self::pack(table, loc)?;
        let field = u64::from_le_bytes(loc[4..12].try_into().map_err(|_| too_large())?);
        let stored = u64::from(u32::from_le_bytes(
            loc[12..16].try_into().map_err(|_| too_large())?,
        ));
        let last = self.end.get(&pack).copied().unwrap_or(0);
        let offset = match carry {
            true => field,
            false => field.wrapping_add(last),
        };
        self.end.insert(pack, offset.wrapping_add(stored));
        let coded = match carry {
            true => offset.wrapping_sub(last),
            false => offset,
        };
        out[4..12].copy_from_slice(&coded.to_le_bytes());
        Ok(out)
    }
}

/// A little-endian unsigned field of the rest column.
fn uint<'a>(f: &mut impl Fields<'a>, n: usize) -> Result<usize, FormatError> {
    let b = f.rest(n)?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(b);
    usize::try_from(u64::from_le_bytes(v)).map_err(|_| FormatError::invalid(WHAT, "a count"))
}

/// Walks one node's fields (FORMAT.md 5.2) in encoding order. Every loop takes at least
/// one byte per turn from a bounded source, so a hostile count ends at the input's end.
fn walk<'a>(f: &mut impl Fields<'a>) -> Result<(), FormatError> {
    if f.rest(8)? != crate::node::NODE_MAGIC {
        return Err(FormatError::invalid(WHAT, "a node without its magic"));
    }
    let packs = uint(f, 4)?;
    let table = f.rest(packs.checked_mul(32).ok_or_else(too_large)?)?;
    let entries = uint(f, 4)?;
    for _ in 0..entries {
        let name = uint(f, 2)?;
        f.rest(name)?;
        let kind = uint(f, 1)?;
        f.rest(4)?;
        f.other(Column::Time, TIME_LEN)?;
        match kind {
            1 => {
                f.rest(8)?;
                let n = uint(f, 4)?;
                chunks(f, table, n)?;
            }
            2 => chunks(f, table, 1)?,
            3 => {
                let target = uint(f, 4)?;
                f.rest(target)?;
            }
            4 => {
                f.rest(8 + 32)?;
                for _ in 0..uint(f, 4)? {
                    match uint(f, 1)? {
                        0 => {
                            let n = uint(f, 4)?;
                            chunks(f, table, n)?;
                        }
                        1 => {
                            let path = uint(f, 2)?;
                            f.rest(path + 8)?;
                        }
                        t => return Err(FormatError::invalid(WHAT, format!("part tag {t}"))),
                    }
                }
            }
            k => return Err(FormatError::invalid(WHAT, format!("entry kind {k}"))),
        }
    }
    Ok(())
}

/// `n` chunk references (or one subdirectory's): an id and a location each.
fn chunks<'a>(f: &mut impl Fields<'a>, table: &'a [u8], n: usize) -> Result<(), FormatError> {
    for _ in 0..n {
        f.other(Column::Id, ID_LEN)?;
        f.loc(table)?;
    }
    Ok(())
}

fn too_large() -> FormatError {
    FormatError::invalid(WHAT, "a count past the input")
}

/// Taking nodes apart: each field copied from the node into its column.
struct Split<'a> {
    node: Reader<'a>,
    columns: [Vec<u8>; 4],
    offsets: Offsets,
}

impl<'a> Fields<'a> for Split<'a> {
    fn rest(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let b = self.node.take(n)?;
        self.columns[Column::Rest as usize].extend_from_slice(b);
        Ok(b)
    }
    fn other(&mut self, column: Column, n: usize) -> Result<(), FormatError> {
        let b = self.node.take(n)?;
        self.columns[column as usize].extend_from_slice(b);
        Ok(())
    }
    fn loc(&mut self, table: &'a [u8]) -> Result<(), FormatError> {
        let loc = self.offsets.code(table, self.node.take(LOC_LEN)?, true)?;
        self.columns[Column::Loc as usize].extend_from_slice(&loc);
        Ok(())
    }
}

/// Node encodings (5.2) concatenated, `sizes` long each, as columns: the rest of every
/// node, then every id, every location and every mtime, each column in node and entry
/// order. The result is as long as the input.
pub fn to_columns(nodes: &[u8], sizes: &[u32]) -> Result<Vec<u8>, FormatError> {
    let mut split = Split {
        node: Reader::new(&[], WHAT),
        columns: Default::default(),
        offsets: Offsets::default(),
    };
    let mut at = 0usize;
    for size in sizes {
        let end = at
            .checked_add(*size as usize)
            .filter(|e| *e <= nodes.len())
            .ok_or_else(too_large)?;
        split.node = Reader::new(&nodes[at..end], WHAT);
        walk(&mut split)?;
        split.node.finish()?;
        at = end;
    }
    if at != nodes.len() {
        return Err(FormatError::Trailing {
            what: WHAT,
            extra: nodes.len() - at,
        });
    }
    Ok(split.columns.concat())
}

/// The first pass over columns: the rest column read, the others only counted, each
/// count against what the input holds.
struct Measure<'a> {
    rest: Reader<'a>,
    others: [usize; 4],
    len: usize,
}

impl<'a> Fields<'a> for Measure<'a> {
    fn rest(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let b = self.rest.take(n)?;
        self.fits()?;
        Ok(b)
    }
    fn other(&mut self, column: Column, n: usize) -> Result<(), FormatError> {
        self.others[column as usize] += n;
        self.fits()
    }
    fn loc(&mut self, _: &'a [u8]) -> Result<(), FormatError> {
        self.other(Column::Loc, LOC_LEN)
    }
}

impl Measure<'_> {
    fn fits(&self) -> Result<(), FormatError> {
        match self.rest.pos() + self.others.iter().sum::<usize>() <= self.len {
            true => Ok(()),
            false => Err(too_large()),
        }
    }
}

/// Putting nodes back together: each field taken from its column.
struct Join<'a> {
    columns: [Reader<'a>; 4],
    out: Vec<u8>,
    offsets: Offsets,
}

impl<'a> Fields<'a> for Join<'a> {
    fn rest(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let b = self.columns[Column::Rest as usize].take(n)?;
        self.out.extend_from_slice(b);
        Ok(b)
    }
    fn other(&mut self, column: Column, n: usize) -> Result<(), FormatError> {
        let b = self.columns[column as usize].take(n)?;
        self.out.extend_from_slice(b);
        Ok(())
    }
    fn loc(&mut self, table: &'a [u8]) -> Result<(), FormatError> {
        let carried = self.columns[Column::Loc as usize].take(LOC_LEN)?;
        let loc = self.offsets.code(table, carried, false)?;
        self.out.extend_from_slice(&loc);
        Ok(())
    }
}

/// The inverse of [`to_columns`]: `count` nodes put back together from their columns,
/// concatenated, and each one's size. Refuses columns that do not split into that many
/// nodes with nothing left over. The nodes are not otherwise checked: a reader keeps a
/// node only under the hash of its bytes.
pub fn from_columns(columns: &[u8], count: usize) -> Result<(Vec<u8>, Vec<u32>), FormatError> {
    let mut measure = Measure {
        rest: Reader::new(columns, WHAT),
        others: [0; 4],
        len: columns.len(),
    };
    for _ in 0..count {
        walk(&mut measure)?;
    }
    let mut at = measure.rest.pos();
    if at + measure.others.iter().sum::<usize>() != columns.len() {
        return Err(FormatError::invalid(
            WHAT,
            "its columns do not add up to its length",
        ));
    }
    let mut readers = [(); 4].map(|_| Reader::new(&[], WHAT));
    readers[0] = Reader::new(&columns[..at], WHAT);
    for c in [Column::Id, Column::Loc, Column::Time] {
        let len = measure.others[c as usize];
        readers[c as usize] = Reader::new(&columns[at..at + len], WHAT);
        at += len;
    }
    let mut join = Join {
        columns: readers,
        out: Vec::with_capacity(columns.len()),
        offsets: Offsets::default(),
    };
    let mut sizes = Vec::with_capacity(count);
    for _ in 0..count {
        let start = join.out.len();
        walk(&mut join)?;
        sizes.push(u32::try_from(join.out.len() - start).map_err(|_| too_large())?);
    }
    Ok((join.out, sizes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ChunkRef, Entry, EntryKind, Location, Node, NodeRef, Part};
    use crate::{ChunkId, Codec, Name, NodeId, PackId};

    fn loc(pack: u8, offset: u64) -> Location {
        Location {
            pack: PackId([pack; 32]),
            offset,
            stored_len: 10,
            raw_len: 12,
            codec: Codec::Zstd,
        }
    }

    fn entry(name: &str, mtime: i64, kind: EntryKind) -> Entry {
        Entry {
            name: Name::new(name.as_bytes().to_vec()).expect("name"),
            mode: 0o644,
            mtime: crate::Mtime {
                secs: mtime,
                nanos: 7,
            },
            kind,
        }
    }

    /// Every entry kind, a composite file with both part kinds.
    fn nodes() -> Vec<Node> {
        let chunk = |b: u8| ChunkRef {
            id: ChunkId([b; 32]),
            loc: loc(1, u64::from(b) * 100),
        };
        let a = Node::new(vec![
            entry(
                "f",
                5,
                EntryKind::File {
                    size: 24,
                    chunks: vec![chunk(1), chunk(2)],
                },
            ),
            entry(
                "l",
                6,
                EntryKind::Symlink {
                    target: b"f".to_vec(),
                },
            ),
        ])
        .expect("a");
        let root = Node::new(vec![
            entry(
                "a",
                8,
                EntryKind::Dir {
                    node: NodeRef {
                        id: NodeId([9; 32]),
                        loc: loc(2, 40),
                    },
                },
            ),
            entry(
                "e",
                9,
                EntryKind::File {
                    size: 0,
                    chunks: vec![],
                },
            ),
            entry(
                "img",
                9,
                EntryKind::Composite {
                    size: 36,
                    chunk_hash: [4; 32],
                    parts: vec![
                        Part::Chunks(vec![chunk(3)]),
                        Part::File {
                            path: b"a/f".to_vec(),
                            size: 24,
                        },
                    ],
                },
            ),
        ])
        .expect("root");
        vec![root, a]
    }

    fn encoded(nodes: &[Node]) -> (Vec<u8>, Vec<u32>) {
        let bytes: Vec<Vec<u8>> = nodes.iter().map(Node::encode).collect();
        let sizes = bytes.iter().map(|b| b.len() as u32).collect();
        (bytes.concat(), sizes)
    }

    #[test]
    fn columns_put_back_together_give_the_nodes() {
        let (bytes, sizes) = encoded(&nodes());
        let columns = to_columns(&bytes, &sizes).expect("columns");
        assert_eq!(columns.len(), bytes.len());
        assert_ne!(columns, bytes);
        assert_eq!(from_columns(&columns, 2).expect("rows"), (bytes, sizes));
    }

    #[test]
    fn the_mtimes_come_last_in_entry_order() {
        let (bytes, sizes) = encoded(&nodes());
        let columns = to_columns(&bytes, &sizes).expect("columns");
        let mut times = Vec::new();
        for t in [8i64, 9, 9, 5, 6] {
            times.extend_from_slice(&t.to_le_bytes());
            times.extend_from_slice(&7u32.to_le_bytes());
        }
        assert!(columns.ends_with(&times));
    }

    #[test]
    fn a_location_carries_its_distance_from_the_last_one_in_its_pack() {
        let (bytes, sizes) = encoded(&nodes());
        let columns = to_columns(&bytes, &sizes).expect("columns");
        // Four locations (a/, img's chunk 3; then f's chunks 1 and 2), then five mtimes.
        let locs = &columns[columns.len() - 60 - 4 * LOC_LEN..columns.len() - 60];
        let offset = |i: usize| {
            let at = i * LOC_LEN + 4;
            u64::from_le_bytes(locs[at..at + 8].try_into().expect("8 bytes"))
        };
        // a/ is the first in pack 2, chunk 3 the first in pack 1 (absolute offsets); chunk
        // 1 (offset 100) follows chunk 3 (300, 10 bytes) in pack 1; chunk 2 (200) follows
        // chunk 1 (100, 10 bytes).
        assert_eq!(
            [offset(0), offset(1), offset(2), offset(3)],
            [40, 300, 100u64.wrapping_sub(310), 90]
        );
        // Back to back in one pack, a location carries 0; past 2^64, the distance wraps.
        let chunk = |offset: u64| ChunkRef {
            id: ChunkId([5; 32]),
            loc: loc(1, offset),
        };
        let file = Node::new(vec![entry(
            "f",
            1,
            EntryKind::File {
                size: 48,
                chunks: vec![chunk(100), chunk(110), chunk(u64::MAX - 20), chunk(5)],
            },
        )])
        .expect("file");
        let bytes = file.encode();
        let columns = to_columns(&bytes, &[bytes.len() as u32]).expect("columns");
        let locs = &columns[columns.len() - 12 - 4 * LOC_LEN..columns.len() - 12];
        let offset = |i: usize| {
            let at = i * LOC_LEN + 4;
            u64::from_le_bytes(locs[at..at + 8].try_into().expect("8 bytes"))
        };
        assert_eq!(
            [offset(0), offset(1), offset(2), offset(3)],
            [
                100,
                0,
                (u64::MAX - 20).wrapping_sub(120),
                5u64.wrapping_sub(u64::MAX - 10)
            ]
        );
        assert_eq!(from_columns(&columns, 1).expect("rows").0, bytes);
        // A pack index past its node's pack table is refused.
        let mut hostile = columns.clone();
        let at = hostile.len() - 60 - 4 * LOC_LEN;
        hostile[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(from_columns(&hostile, 2).is_err());
    }

    #[test]
    fn columns_that_do_not_split_into_the_listed_nodes_are_refused() {
        let (bytes, sizes) = encoded(&nodes());
        let columns = to_columns(&bytes, &sizes).expect("columns");
        // A node too many or too few, a byte more or less.
        assert!(from_columns(&columns, 1).is_err());
        assert!(from_columns(&columns, 3).is_err());
        assert!(from_columns(&columns[..columns.len() - 1], 2).is_err());
        let mut longer = columns.clone();
        longer.push(0);
        assert!(from_columns(&longer, 2).is_err());
        // A count past the input (the root's entry count) ends at the input's end.
        let mut hostile = columns;
        let entries = 8 + 4 + 2 * 32;
        hostile[entries..entries + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(from_columns(&hostile, 2).is_err());
        // A chunk count past the input: the ids and locations take nothing from the rest
        // column, so only the count against the input's length ends the walk.
        let a = Node::encode(&nodes()[1]);
        let mut columns = to_columns(&a, &[a.len() as u32]).expect("columns");
        let chunks = 8 + 4 + 32 + 4 + 2 + 1 + 1 + 4 + 8;
        assert_eq!(columns[chunks..chunks + 4], 2u32.to_le_bytes());
        columns[chunks..chunks + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(from_columns(&columns, 1).is_err());
        assert!(to_columns(&bytes, &[sizes[0] - 1, sizes[1] + 1]).is_err());
    }
}
