//! Index nodes: one directory each, content-addressed, forming a Merkle tree.
//!
//! A node lists its entries sorted by name. A file entry carries its chunk list with the
//! location of each chunk; a directory entry carries the id and location of the child node.
//! Because the location is part of the node, a client needs nothing but the node to fetch
//! what it names, and an unchanged directory encodes to the same bytes, hence the same id,
//! in every version.

use std::collections::HashMap;

use crate::codec::{verified_node_bytes, Codec, MAX_CHUNK_SIZE, MAX_NODE_SIZE};
use crate::error::FormatError;
use crate::id::{ChunkId, NodeId, PackId};
use crate::name::Name;
use crate::wire::{Reader, Writer};

/// Magic and format version of an encoded node.
pub(crate) const NODE_MAGIC: &[u8; 8] = b"PDNODE\x00\x01";
/// Longest symlink target accepted (Linux PATH_MAX).
pub(crate) const MAX_SYMLINK_TARGET: usize = 4096;

/// Where a stored object lies: a byte range of a pack, and how it is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The pack holding the object.
    pub pack: PackId,
    /// Byte offset of the stored object inside the pack object.
    pub offset: u64,
    /// Stored (possibly compressed) length.
    pub stored_len: u32,
    /// Length after decoding.
    pub raw_len: u32,
    /// How it is stored.
    pub codec: Codec,
}

impl Location {
    /// Checks that the location can describe a stored object: it lies after the pack
    /// header, a raw object is stored at its own size, a zstd object is smaller than its
    /// content (the publisher stores raw otherwise), and the content is within `limit`.
    pub fn validate(&self, what: &'static str, limit: u32) -> Result<(), FormatError> {
        let ok_len = match self.codec {
            Codec::Raw => self.stored_len == self.raw_len,
            Codec::Zstd => self.stored_len > 0 && self.stored_len < self.raw_len,
        };
        if !ok_len
            || self.raw_len > limit
            || self.offset < crate::pack::HEADER_LEN
            || self
                .offset
                .checked_add(u64::from(self.stored_len))
                .is_none()
        {
            return Err(FormatError::invalid(
                what,
                format!(
                    "impossible location: offset {} stored {} raw {} codec {:?}",
                    self.offset, self.stored_len, self.raw_len, self.codec
                ),
            ));
        }
        Ok(())
    }

    /// The byte range of the stored object inside its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.stored_len)
    }
}

/// A chunk of a file: its id and where to fetch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk.
    pub id: ChunkId,
    /// Where it is stored.
    pub loc: Location,
}

/// A child directory: its node id and where to fetch the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeRef {
    /// BLAKE3 of the node's encoding.
    pub id: NodeId,
    /// Where it is stored.
    pub loc: Location,
}

impl NodeRef {
    /// Decodes and verifies the stored bytes of the node this reference names.
    pub fn open(&self, stored: &[u8]) -> Result<Node, FormatError> {
        Ok(self.open_with_bytes(stored)?.0)
    }

    /// Like [`NodeRef::open`], also returning the verified plain encoding.
    pub fn open_with_bytes(&self, stored: &[u8]) -> Result<(Node, Vec<u8>), FormatError> {
        let plain = verified_node_bytes(&self.id, self.loc.codec, stored, self.loc.raw_len)?;
        Ok((Node::decode(&plain)?, plain))
    }
}

/// Modification time with nanoseconds, as the file system reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mtime {
    /// Seconds since the Unix epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds, below 1,000,000,000.
    pub nanos: u32,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file: its size and chunks, in order. The chunks' sizes add up to `size`.
    File {
        /// Its size in bytes.
        size: u64,
        /// Its chunks, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A regular file made of parts (an ISO image of the tree's own files): runs of its own
    /// chunks, and regions that are byte for byte another regular file of the same tree,
    /// named by path. A reader turns it into [`EntryKind::File`] with [`Node::resolve`].
    Composite {
        /// Its size in bytes: the parts' sizes add up to it.
        size: u64,
        /// [`chunk_list_hash`] of the chunks it resolves to: the node commits to the content,
        /// not only to the paths it names.
        chunk_hash: [u8; 32],
        /// Its parts, in order.
        parts: Vec<Part>,
    },
    /// A directory and its node.
    Dir {
        /// The subdirectory's node.
        node: NodeRef,
    },
    /// A symbolic link and its target (stored, never followed by PulpDist).
    Symlink {
        /// The link target.
        target: Vec<u8>,
    },
}

impl EntryKind {
    /// The chunks the entry lists itself: a file's, or a composite file's runs (its file
    /// parts' chunks are listed by the files they name).
    pub fn own_chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        let (file, parts): (&[ChunkRef], &[Part]) = match self {
            EntryKind::File { chunks, .. } => (chunks, &[]),
            EntryKind::Composite { parts, .. } => (&[], parts),
            _ => (&[], &[]),
        };
        file.iter().chain(parts.iter().flat_map(|p| match p {
            Part::Chunks(c) => c.as_slice(),
            Part::File { .. } => &[],
        }))
    }

    /// Whether two file entries (plain or composite) stand for the same chunks; `None` if
    /// either is not a file. A composite file is compared by its `chunk_hash`.
    pub fn same_chunks(&self, other: &EntryKind) -> Option<bool> {
        let hash = |k: &EntryKind| match k {
            EntryKind::File { chunks, .. } => Some(chunk_list_hash(chunks.iter().map(|c| &c.id))),
            EntryKind::Composite { chunk_hash, .. } => Some(*chunk_hash),
            _ => None,
        };
        match (self, other) {
            (EntryKind::File { chunks: a, .. }, EntryKind::File { chunks: b, .. }) => {
                Some(a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.id == y.id))
            }
            _ => Some(hash(self)? == hash(other)?),
        }
    }

    /// A file's size, plain or composite.
    pub fn file_size(&self) -> Option<u64> {
        match self {
            EntryKind::File { size, .. } | EntryKind::Composite { size, .. } => Some(*size),
            _ => None,
        }
    }
}

/// BLAKE3 of a chunk list's ids, concatenated in order: what a composite file's entry
/// records of the chunks it resolves to.
pub fn chunk_list_hash<'a>(chunks: impl IntoIterator<Item = &'a ChunkId>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for id in chunks {
        h.update(id.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// A region of a composite file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Chunks of its own, in order (at least one).
    Chunks(Vec<ChunkRef>),
    /// The whole content of the regular file at `path` in the same tree: names joined by
    /// `/`, from the root. That file is a plain [`EntryKind::File`] of exactly `size` bytes.
    File {
        /// The file's path from the tree's root.
        path: Vec<u8>,
        /// Its size (at least 1).
        size: u64,
    },
}

impl Part {
    /// The bytes the part stands for.
    pub fn size(&self) -> u64 {
        match self {
            Part::Chunks(c) => c.iter().map(|c| u64::from(c.loc.raw_len)).sum(),
            Part::File { size, .. } => *size,
        }
    }
}

/// Longest path a composite file's part may name.
pub const MAX_PART_PATH: usize = 4096;

/// Most chunks a node's composite files may resolve to, all together (about 180 MB in
/// memory): images up to 128 GiB at the default average chunk size. A hostile node naming
/// one large file many times is refused here rather than filling memory.
pub const MAX_RESOLVED_CHUNKS: usize = 1 << 21;

/// Most chunks all the composite files of one tree may resolve to (about 700 MB in memory):
/// images up to 512 GiB in one tree at the default average chunk size. A reader holds what
/// the composite files it is about to write resolve to; a publisher keeps a tree under this.
pub const MAX_TREE_RESOLVED_CHUNKS: usize = 1 << 23;

/// Most index bytes a reader reads to find the files one tree's composite files name (the
/// nodes on the way, again when they left its lookup cache): a deep or scattered hostile
/// index is refused rather than costing hours.
pub const MAX_RESOLVE_READ: u64 = 4 << 30;

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name (one validated component).
    pub name: Name,
    /// Permission bits (`0o7777` at most; the kind is in `kind`).
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// File, directory or symlink.
    pub kind: EntryKind,
}

/// One directory of the index: entries sorted by name bytes, names unique.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Node {
    entries: Vec<Entry>,
}

const KIND_FILE: u8 = 1;
const KIND_DIR: u8 = 2;
const KIND_SYMLINK: u8 = 3;
const KIND_COMPOSITE: u8 = 4;
const PART_CHUNKS: u8 = 0;
const PART_FILE: u8 = 1;
const LOC_LEN: usize = 4 + 8 + 4 + 4 + 1;

impl Node {
    /// Builds a node, sorting the entries; duplicate names or inconsistent file sizes are refused.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, FormatError> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let node = Node { entries };
        node.check()?;
        Ok(node)
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry called `name`, if any.
    pub fn get(&self, name: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.name.as_bytes().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    fn check(&self) -> Result<(), FormatError> {
        for pair in self.entries.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(FormatError::invalid(
                    "node",
                    format!("entries not sorted or duplicated at {:?}", pair[1].name),
                ));
            }
        }
        for e in &self.entries {
            if e.mode > 0o7777 {
                return Err(FormatError::invalid(
                    "node",
                    format!("{:?}: mode {:o} has bits above 0o7777", e.name, e.mode),
                ));
            }
            if e.mtime.nanos >= 1_000_000_000 {
                return Err(FormatError::invalid(
                    "node",
                    format!("{:?}: nanoseconds out of range", e.name),
                ));
            }
            match &e.kind {
                EntryKind::File { size, chunks } => {
                    let sum = chunk_sum(&e.name, chunks)?;
                    if sum != *size {
                        return Err(FormatError::invalid(
                            "node",
                            format!(
                                "{:?}: chunks add up to {sum} bytes, size says {size}",
                                e.name
                            ),
                        ));
                    }
                }
                EntryKind::Composite { size, parts, .. } => check_parts(&e.name, *size, parts)?,
                EntryKind::Dir { node } => {
                    if node.loc.raw_len > MAX_NODE_SIZE {
                        return Err(FormatError::invalid(
                            "node",
                            format!("{:?}: child node too large", e.name),
                        ));
                    }
                }
                EntryKind::Symlink { target } => {
                    if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains(&0)
                    {
                        return Err(FormatError::invalid(
                            "node",
                            format!("{:?}: bad symlink target", e.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The canonical encoding (FORMAT.md, "Index nodes"). Its BLAKE3 hash is the node id.
    pub fn encode(&self) -> Vec<u8> {
        // The pack table lists each pack once, in order of first use, so the encoding is a
        // pure function of the entries.
        let mut table: Vec<PackId> = Vec::new();
        let mut index: HashMap<PackId, u32> = HashMap::new();
        let mut pack_index = |p: PackId| -> u32 {
            *index.entry(p).or_insert_with(|| {
                table.push(p);
                (table.len() - 1) as u32
            })
        };
        let mut body = Writer::default();
        body.u32(self.entries.len() as u32);
        for e in &self.entries {
            body.u16(e.name.as_bytes().len() as u16);
            body.bytes(e.name.as_bytes());
            let kind = match e.kind {
                EntryKind::File { .. } => KIND_FILE,
                EntryKind::Composite { .. } => KIND_COMPOSITE,
                EntryKind::Dir { .. } => KIND_DIR,
                EntryKind::Symlink { .. } => KIND_SYMLINK,
            };
            body.u8(kind);
            body.u32(e.mode);
            body.i64(e.mtime.secs);
            body.u32(e.mtime.nanos);
            match &e.kind {
                EntryKind::File { size, chunks } => {
                    body.u64(*size);
                    body.u32(chunks.len() as u32);
                    for c in chunks {
                        body.bytes(c.id.as_bytes());
                        write_loc(&mut body, &c.loc, pack_index(c.loc.pack));
                    }
                }
                EntryKind::Composite {
                    size,
                    chunk_hash,
                    parts,
                } => {
                    body.u64(*size);
                    body.bytes(chunk_hash);
                    body.u32(parts.len() as u32);
                    for part in parts {
                        match part {
                            Part::Chunks(chunks) => {
                                body.u8(PART_CHUNKS);
                                body.u32(chunks.len() as u32);
                                for c in chunks {
                                    body.bytes(c.id.as_bytes());
                                    write_loc(&mut body, &c.loc, pack_index(c.loc.pack));
                                }
                            }
                            Part::File { path, size } => {
                                body.u8(PART_FILE);
                                body.u16(path.len() as u16);
                                body.bytes(path);
                                body.u64(*size);
                            }
                        }
                    }
                }
                EntryKind::Dir { node } => {
                    body.bytes(node.id.as_bytes());
                    write_loc(&mut body, &node.loc, pack_index(node.loc.pack));
                }
                EntryKind::Symlink { target } => {
                    body.u32(target.len() as u32);
                    body.bytes(target);
                }
            }
        }
        let mut out = Writer::default();
        out.bytes(NODE_MAGIC);
        out.u32(table.len() as u32);
        for p in &table {
            out.bytes(p.as_bytes());
        }
        out.bytes(&body.buf);
        out.buf
    }

    /// The id of this node: BLAKE3 of [`Node::encode`].
    pub fn id(&self) -> NodeId {
        NodeId::of(&self.encode())
    }

    /// Decodes and validates an encoded node (after its hash has been checked by the caller,
    /// or use [`NodeRef::open`]). Hostile names, unsorted entries and bad sizes are refused.
    pub fn decode(data: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(data, "index node");
        r.expect_magic(NODE_MAGIC)?;
        let npacks = r.count(32)?;
        let mut table = Vec::with_capacity(npacks);
        for _ in 0..npacks {
            table.push(PackId(r.array()?));
        }
        let n = r.count(2 + 1 + 4 + 8 + 4)?;
        let mut entries = Vec::with_capacity(n);
        // Packs of the table first used so far: the canonical table lists each pack once,
        // in order of first use (checked as locations are read, and at the end).
        let mut used = 0usize;
        for _ in 0..n {
            let len = r.u16()? as usize;
            let name = Name::new(r.take(len)?.to_vec())?;
            let kind = r.u8()?;
            let mode = r.u32()?;
            let secs = r.i64()?;
            let nanos = r.u32()?;
            let kind = match kind {
                KIND_FILE => {
                    let size = r.u64()?;
                    let chunks = read_chunks(&mut r, &table, &mut used)?;
                    EntryKind::File { size, chunks }
                }
                KIND_COMPOSITE => {
                    let size = r.u64()?;
                    let chunk_hash = r.array()?;
                    // The smallest part: a tag, a one-byte path and its size.
                    let nparts = r.count(1 + 2 + 1 + 8)?;
                    let mut parts = Vec::with_capacity(nparts);
                    for _ in 0..nparts {
                        parts.push(match r.u8()? {
                            PART_CHUNKS => Part::Chunks(read_chunks(&mut r, &table, &mut used)?),
                            PART_FILE => {
                                let len = r.u16()? as usize;
                                let path = r.take(len)?.to_vec();
                                let size = r.u64()?;
                                Part::File { path, size }
                            }
                            other => {
                                return Err(FormatError::invalid(
                                    "index node",
                                    format!("{name:?}: unknown part kind {other}"),
                                ))
                            }
                        });
                    }
                    EntryKind::Composite {
                        size,
                        chunk_hash,
                        parts,
                    }
                }
                KIND_DIR => {
                    let id = NodeId(r.array()?);
                    let loc = read_loc(&mut r, &table, &mut used)?;
                    EntryKind::Dir {
                        node: NodeRef { id, loc },
                    }
                }
                KIND_SYMLINK => {
                    let len = r.u32()? as usize;
                    if len > MAX_SYMLINK_TARGET {
                        return Err(FormatError::invalid(
                            "index node",
                            format!("{name:?}: symlink target of {len} bytes"),
                        ));
                    }
                    EntryKind::Symlink {
                        target: r.take(len)?.to_vec(),
                    }
                }
                other => {
                    return Err(FormatError::invalid(
                        "index node",
                        format!("{name:?}: unknown entry kind {other}"),
                    ))
                }
            };
            entries.push(Entry {
                name,
                mode,
                mtime: Mtime { secs, nanos },
                kind,
            });
        }
        r.finish()?;
        if used != table.len() {
            return Err(FormatError::invalid(
                "index node",
                format!(
                    "a pack table of {} packs, {used} of them used: not the canonical encoding",
                    table.len()
                ),
            ));
        }
        let node = Node { entries };
        node.check()?;
        Ok(node)
    }
}

fn read_chunks(
    r: &mut Reader<'_>,
    table: &[PackId],
    used: &mut usize,
) -> Result<Vec<ChunkRef>, FormatError> {
    let nchunks = r.count(32 + LOC_LEN)?;
    let mut chunks = Vec::with_capacity(nchunks);
    for _ in 0..nchunks {
        let id = ChunkId(r.array()?);
        let loc = read_loc(r, table, used)?;
        chunks.push(ChunkRef { id, loc });
    }
    Ok(chunks)
}

/// The size of a chunk list, each chunk's size checked.
fn chunk_sum(name: &Name, chunks: &[ChunkRef]) -> Result<u64, FormatError> {
    let mut sum = 0u64;
    for c in chunks {
        if c.loc.raw_len == 0 || c.loc.raw_len > MAX_CHUNK_SIZE {
            return Err(FormatError::invalid(
                "node",
                format!("{name:?}: chunk size {} out of range", c.loc.raw_len),
            ));
        }
        sum += u64::from(c.loc.raw_len);
    }
    Ok(sum)
}

/// A composite file's parts: one encoding only (no empty run, no two runs in a row, at
/// least one file part), valid paths, and sizes that add up.
fn check_parts(name: &Name, size: u64, parts: &[Part]) -> Result<(), FormatError> {
    let bad = |why: String| Err(FormatError::invalid("node", format!("{name:?}: {why}")));
    let mut sum = 0u64;
    let mut files = 0usize;
    let mut last_was_run = false;
    for part in parts {
        let part_size = match part {
            Part::Chunks(chunks) => {
                if chunks.is_empty() || last_was_run {
                    return bad("an empty run of chunks, or two runs in a row".into());
                }
                last_was_run = true;
                chunk_sum(name, chunks)?
            }
            Part::File { path, size } => {
                last_was_run = false;
                files += 1;
                check_part_path(path).or_else(&bad)?;
                if *size == 0 {
                    return bad("a file part of 0 bytes".into());
                }
                *size
            }
        };
        sum = sum
            .checked_add(part_size)
            .ok_or_else(|| FormatError::invalid("node", format!("{name:?}: parts overflow")))?;
    }
    if files == 0 {
        return bad("a composite file without a file part (a plain file)".into());
    }
    if sum != size {
        return bad(format!("parts add up to {sum} bytes, size says {size}"));
    }
    Ok(())
}

/// A part's path: 1 to [`MAX_PART_PATH`] bytes, names (5.5) joined by `/`.
fn check_part_path(path: &[u8]) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PART_PATH {
        return Err(format!("a part path of {} bytes", path.len()));
    }
    for name in path.split(|b| *b == b'/') {
        Name::new(name.to_vec())
            .map_err(|e| format!("part path {:?}: {e}", String::from_utf8_lossy(path)))?;
    }
    Ok(())
}

impl Node {
    /// Whether an entry is a composite file (which [`Node::resolve`] turns into a plain one).
    pub fn has_composites(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::Composite { .. }))
    }

    /// This node with every composite file turned into a plain [`EntryKind::File`]: each
    /// file part replaced by the chunks of the file it names. `lookup` gives the chunks of
    /// the plain regular file at a path of the same tree (`None`: no such file). A part
    /// naming a missing file, a file of another size, or more than
    /// [`MAX_RESOLVED_CHUNKS`] chunks in all, or resolving to chunks other than its
    /// `chunk_hash` names, is refused: the tree is not valid.
    pub fn resolve<E>(
        &self,
        lookup: impl FnMut(&[u8]) -> Result<Option<Vec<ChunkRef>>, E>,
    ) -> Result<Result<Node, FormatError>, E> {
        Ok(self
            .resolve_files(lookup)?
            .map(|files| self.clone().with_files(&files)))
    }

    /// What [`Node::resolve`] does, as the chunk lists of the composite files only, by
    /// entry index (for [`Node::with_files`]): what a reader keeps of a resolution.
    pub fn resolve_files<E>(
        &self,
        mut lookup: impl FnMut(&[u8]) -> Result<Option<Vec<ChunkRef>>, E>,
    ) -> Result<Result<ResolvedFiles, FormatError>, E> {
        let mut total = 0usize;
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let EntryKind::Composite {
                chunk_hash, parts, ..
            } = &e.kind
            else {
                continue;
            };
            let mut chunks = Vec::new();
            for part in parts {
                let more = match part {
                    Part::Chunks(c) => c.clone(),
                    Part::File { path, size } => {
                        let shown = || String::from_utf8_lossy(path).into_owned();
                        let Some(found) = lookup(path)? else {
                            return Ok(Err(FormatError::invalid(
                                "composite file",
                                format!(
                                    "{:?} names {}, not a plain file of the tree",
                                    e.name,
                                    shown()
                                ),
                            )));
                        };
                        let found_size: u64 = found.iter().map(|c| u64::from(c.loc.raw_len)).sum();
                        if found_size != *size {
                            return Ok(Err(FormatError::invalid(
                                "composite file",
                                format!(
                                    "{:?} names {} as {size} bytes; it has {found_size}",
                                    e.name,
                                    shown()
                                ),
                            )));
                        }
                        found
                    }
                };
                // Parts count too: each costs a lookup, however few chunks it names.
                total += more.len().max(1);
                if total > MAX_RESOLVED_CHUNKS {
                    return Ok(Err(FormatError::invalid(
                        "composite file",
                        format!("{:?}: more than {MAX_RESOLVED_CHUNKS} chunks resolved in one directory", e.name),
                    )));
                }
                chunks.extend(more);
            }
            if chunk_list_hash(chunks.iter().map(|c| &c.id)) != *chunk_hash {
                return Ok(Err(FormatError::invalid(
                    "composite file",
                    format!(
                        "{:?}: its parts resolve to other chunks than it records",
                        e.name
                    ),
                )));
            }
            out.push((i, chunks));
        }
        Ok(Ok(ResolvedFiles(out)))
    }

    /// This node with the composite files `files` (from [`Node::resolve_files`] of this
    /// node) as plain files.
    pub fn with_files(self, files: &ResolvedFiles) -> Node {
        let mut entries = self.entries;
        for (i, chunks) in &files.0 {
            if let Some(e) = entries.get_mut(*i) {
                if let EntryKind::Composite { size, .. } = e.kind {
                    e.kind = EntryKind::File {
                        size,
                        chunks: chunks.clone(),
                    };
                }
            }
        }
        Node { entries }
    }
}

/// The chunk lists a node's composite files resolve to, by entry index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedFiles(Vec<(usize, Vec<ChunkRef>)>);

impl ResolvedFiles {
    /// How many chunks they list in all.
    pub fn chunks(&self) -> usize {
        self.0.iter().map(|(_, c)| c.len()).sum()
    }
}

/// Reads and verifies the node a reference names.
type NodeGetter<'a, E> = Box<dyn FnMut(&NodeRef) -> Result<Node, E> + 'a>;

/// The plain files of one tree, found by path for [`Node::resolve`]: each lookup walks from
/// the root, one binary search per name; nodes come through `get` (which fetches, verifies
/// and may charge a budget) and the last [`TREE_FILES_CACHE`] of them are kept by id, the
/// root always, which serves an image naming its files in path order.
pub struct TreeFiles<'a, E> {
    root: NodeRef,
    get: NodeGetter<'a, E>,
    root_node: Option<std::rc::Rc<Node>>,
    nodes: HashMap<NodeId, std::rc::Rc<Node>>,
}

/// Directory nodes a [`TreeFiles`] keeps besides the root.
const TREE_FILES_CACHE: usize = 256;

impl<'a, E> TreeFiles<'a, E> {
    /// The tree whose root node is `root`.
    pub fn new(root: NodeRef, get: impl FnMut(&NodeRef) -> Result<Node, E> + 'a) -> Self {
        TreeFiles {
            root,
            get: Box::new(get),
            root_node: None,
            nodes: HashMap::new(),
        }
    }

    /// The chunks of the plain regular file at `path` (names joined by `/`), or `None`
    /// when there is none (missing, a directory, a symlink, a composite file, or a path
    /// through one that is not a directory).
    pub fn lookup(&mut self, path: &[u8]) -> Result<Option<Vec<ChunkRef>>, E> {
        let mut node = match &self.root_node {
            Some(n) => n.clone(),
            None => {
                let n = std::rc::Rc::new((self.get)(&self.root)?);
                self.root_node = Some(n.clone());
                n
            }
        };
        let mut names = path.split(|b| *b == b'/').peekable();
        let mut on_path = Vec::new();
        while let Some(name) = names.next() {
            let Some(e) = node.get(name) else {
                return Ok(None);
            };
            match (&e.kind, names.peek().is_none()) {
                (EntryKind::File { chunks, .. }, true) => return Ok(Some(chunks.clone())),
                (EntryKind::Dir { node: child }, false) => {
                    let child = *child;
                    node = self.node(&child, &on_path)?;
                    on_path.push(child.id);
                }
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The node `r` names; a full cache keeps only the nodes `on_path` (the directories
    /// above it), which the next lookups most likely pass through again.
    fn node(&mut self, r: &NodeRef, on_path: &[NodeId]) -> Result<std::rc::Rc<Node>, E> {
        if let Some(n) = self.nodes.get(&r.id) {
            return Ok(n.clone());
        }
        let n = std::rc::Rc::new((self.get)(r)?);
        if self.nodes.len() >= TREE_FILES_CACHE {
            self.nodes.retain(|id, _| on_path.contains(id));
        }
        self.nodes.insert(r.id, n.clone());
        Ok(n)
    }
}

fn write_loc(w: &mut Writer, loc: &Location, pack_index: u32) {
    w.u32(pack_index);
    w.u64(loc.offset);
    w.u32(loc.stored_len);
    w.u32(loc.raw_len);
    w.u8(loc.codec.to_byte());
}

/// A location whose pack is the table's entry `idx`; `used` counts the table entries
/// used so far, and a location may name one of those or the next one only.
fn read_loc(
    r: &mut Reader<'_>,
    table: &[PackId],
    used: &mut usize,
) -> Result<Location, FormatError> {
    let idx = r.u32()? as usize;
    if idx > *used {
        return Err(FormatError::invalid(
            "index node",
            format!("pack index {idx} used before index {used}: not the canonical encoding"),
        ));
    }
    if idx == *used && idx < table.len() {
        *used += 1;
    }
    let pack = *table.get(idx).ok_or_else(|| {
        FormatError::invalid(
            "index node",
            format!("pack index {idx} beyond the table of {}", table.len()),
        )
    })?;
    let offset = r.u64()?;
    let stored_len = r.u32()?;
    let raw_len = r.u32()?;
    let codec = Codec::from_byte(r.u8()?)?;
    if offset.checked_add(u64::from(stored_len)).is_none() {
        return Err(FormatError::invalid("index node", "location overflows"));
    }
    Ok(Location {
        pack,
        offset,
        stored_len,
        raw_len,
        codec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(p: u8, off: u64, len: u32) -> Location {
        Location {
            pack: PackId([p; 32]),
            offset: off,
            stored_len: len,
            raw_len: len,
            codec: Codec::Raw,
        }
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let name = proptest::collection::vec(1u8..=255, 1..20)
            .prop_filter("valid", |b| Name::new(b.clone()).is_ok());
        let kind = prop_oneof![
            proptest::collection::vec(
                (
                    any::<[u8; 32]>(),
                    0u8..3,
                    0u64..1 << 40,
                    1u32..100_000,
                    any::<bool>()
                ),
                0..5
            )
            .prop_map(|cs| {
                let chunks: Vec<ChunkRef> = cs
                    .into_iter()
                    .map(|(id, p, off, len, z)| ChunkRef {
                        id: ChunkId(id),
                        loc: Location {
                            codec: if z { Codec::Zstd } else { Codec::Raw },
                            ..loc(p, off, len)
                        },
                    })
                    .collect();
                let size = chunks.iter().map(|c| u64::from(c.loc.raw_len)).sum();
                EntryKind::File { size, chunks }
            }),
            (any::<[u8; 32]>(), 0u8..3).prop_map(|(id, p)| EntryKind::Dir {
                node: NodeRef {
                    id: NodeId(id),
                    loc: loc(p, 9, 99)
                }
            }),
            proptest::collection::vec(1u8..=255, 1..50)
                .prop_map(|target| EntryKind::Symlink { target }),
            (
                any::<[u8; 32]>(),
                1u32..100_000,
                proptest::collection::vec("[a-z]{1,8}", 1..4),
                1u64..1 << 40,
                any::<bool>(),
            )
                .prop_map(|(id, len, names, fsize, run_after)| {
                    let run = || {
                        Part::Chunks(vec![ChunkRef {
                            id: ChunkId(id),
                            loc: loc(1, 40, len),
                        }])
                    };
                    let mut parts = vec![
                        run(),
                        Part::File {
                            path: names.join("/").into_bytes(),
                            size: fsize,
                        },
                    ];
                    if run_after {
                        parts.push(run());
                    }
                    let size = parts.iter().map(Part::size).sum();
                    EntryKind::Composite {
                        size,
                        chunk_hash: id,
                        parts,
                    }
                }),
        ];
        (name, 0u32..=0o7777, any::<i64>(), 0u32..1_000_000_000, kind).prop_map(
            |(n, mode, secs, nanos, kind)| Entry {
                name: Name::new(n).expect("filtered"),
                mode,
                mtime: Mtime { secs, nanos },
                kind,
            },
        )
    }

    proptest! {
        #[test]
        fn node_round_trip(entries in proptest::collection::vec(arb_entry(), 0..12)) {
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<Entry> = entries.into_iter().filter(|e| seen.insert(e.name.clone())).collect();
            let node = Node::new(entries).expect("valid");
            let bytes = node.encode();
            let back = Node::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &node);
            prop_assert_eq!(back.encode(), bytes);
        }

        #[test]
        fn node_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Node::decode(&bytes);
        }

        /// A damaged valid node: refused, or decoded to a node that encodes back to exactly
        /// those bytes (one encoding per node); never a panic.
        #[test]
        fn damaged_node_is_refused_or_canonical(
            entries in proptest::collection::vec(arb_entry(), 1..8),
            m in crate::mutate::mutation(),
        ) {
            let mut seen = std::collections::HashSet::new();
            let entries: Vec<Entry> = entries.into_iter().filter(|e| seen.insert(e.name.clone())).collect();
            let bad = m.apply(&Node::new(entries).expect("valid").encode());
            if let Ok(node) = Node::decode(&bad) {
                prop_assert_eq!(node.encode(), bad);
            }
        }
    }

    fn chunk(b: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId([b; 32]),
            loc: loc(b, 40, len),
        }
    }

    /// A directory `d` with a plain file `p` (chunks 1 and 2) and a composite `img`:
    /// chunk 9, then `d/p`, then chunk 9 again.
    fn composite_tree() -> (Node, Node) {
        let file = |name: &[u8], kind| Entry {
            name: Name::new(name.to_vec()).expect("name"),
            mode: 0o644,
            mtime: Mtime::default(),
            kind,
        };
        let p = [chunk(1, 100), chunk(2, 50)];
        let whole = [chunk(9, 10), p[0], p[1], chunk(9, 10)];
        let img = EntryKind::Composite {
            size: 170,
            chunk_hash: chunk_list_hash(whole.iter().map(|c| &c.id)),
            parts: vec![
                Part::Chunks(vec![chunk(9, 10)]),
                Part::File {
                    path: b"d/p".to_vec(),
                    size: 150,
                },
                Part::Chunks(vec![chunk(9, 10)]),
            ],
        };
        let d = Node::new(vec![
            file(
                b"p",
                EntryKind::File {
                    size: 150,
                    chunks: p.to_vec(),
                },
            ),
            file(b"img", img),
        ])
        .expect("node");
        (d, Node::default())
    }

    fn lookup_in(d: &Node) -> impl FnMut(&[u8]) -> Result<Option<Vec<ChunkRef>>, ()> + '_ {
        |path| {
            let name = path.strip_prefix(b"d/").ok_or(())?;
            Ok(match d.get(name).map(|e| &e.kind) {
                Some(EntryKind::File { chunks, .. }) => Some(chunks.clone()),
                _ => None,
            })
        }
    }

    #[test]
    fn a_composite_file_resolves_to_its_chunks_and_round_trips() {
        let (d, _) = composite_tree();
        let back = Node::decode(&d.encode()).expect("decode");
        assert_eq!(back, d);
        let resolved = d.resolve(lookup_in(&d)).expect("lookup").expect("valid");
        let EntryKind::File { size, chunks } = &resolved.get(b"img").expect("img").kind else {
            panic!("not resolved");
        };
        let ids: Vec<u8> = chunks.iter().map(|c| c.id.0[0]).collect();
        assert_eq!((*size, ids), (170, vec![9, 1, 2, 9]));
        assert!(!resolved.has_composites() && d.has_composites());
    }

    #[test]
    fn a_composite_file_naming_a_wrong_file_is_refused() {
        let (d, _) = composite_tree();
        let with = |f: &dyn Fn(&mut Vec<Part>, &mut [u8; 32])| {
            let mut n = d.clone();
            let e = n
                .entries
                .iter_mut()
                .find(|e| e.name.as_bytes() == b"img")
                .expect("img");
            if let EntryKind::Composite {
                parts, chunk_hash, ..
            } = &mut e.kind
            {
                f(parts, chunk_hash);
            }
            n
        };
        // Missing, another size, another content than recorded.
        let gone = with(&|parts, _| {
            parts[1] = Part::File {
                path: b"d/q".to_vec(),
                size: 150,
            }
        });
        assert!(gone.resolve(lookup_in(&d)).expect("lookup").is_err());
        let other = with(&|_, h| h[0] ^= 1);
        assert!(other.resolve(lookup_in(&d)).expect("lookup").is_err());
        let mut small = d.clone();
        if let Some(Entry {
            kind: EntryKind::File { chunks, size },
            ..
        }) = small.entries.iter_mut().find(|e| e.name.as_bytes() == b"p")
        {
            chunks.pop();
            *size = 100;
        }
        assert!(d.resolve(lookup_in(&small)).expect("lookup").is_err());
        // Not one encoding: two runs in a row, an empty run, no file part, bad paths.
        let e = |parts: Vec<Part>| {
            let size = parts.iter().map(Part::size).sum();
            Node::new(vec![Entry {
                name: Name::new(b"x".to_vec()).expect("name"),
                mode: 0,
                mtime: Mtime::default(),
                kind: EntryKind::Composite {
                    size,
                    chunk_hash: [0; 32],
                    parts,
                },
            }])
        };
        let f = |p: &[u8]| Part::File {
            path: p.to_vec(),
            size: 5,
        };
        let run = || Part::Chunks(vec![chunk(3, 7)]);
        assert!(e(vec![run(), f(b"a")]).is_ok());
        assert!(e(vec![run(), run(), f(b"a")]).is_err());
        assert!(e(vec![Part::Chunks(Vec::new()), f(b"a")]).is_err());
        assert!(e(vec![run()]).is_err());
        for bad in [&b""[..], b"/a", b"a//b", b"a/../b", b"a/"] {
            assert!(e(vec![f(bad)]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_name_in_encoding_refused() {
        let node = Node::new(vec![Entry {
            name: Name::new(b"xx".to_vec()).expect("ok"),
            mode: 0o644,
            mtime: Mtime::default(),
            kind: EntryKind::Symlink {
                target: b"t".to_vec(),
            },
        }])
        .expect("node");
        let good = node.encode();
        for evil in [&b".."[..], b"/x", b"a\0"] {
            // Same length as "xx" so the rest of the encoding stays aligned.
            let mut bad = good.clone();
            let at = bad.windows(2).position(|w| w == b"xx").expect("name");
            bad[at..at + 2].copy_from_slice(&evil[..2]);
            assert!(Node::decode(&bad).is_err(), "{evil:?} accepted");
        }
    }

    #[test]
    fn unsorted_or_duplicate_refused() {
        let e = |n: &[u8]| Entry {
            name: Name::new(n.to_vec()).expect("ok"),
            mode: 0o644,
            mtime: Mtime::default(),
            kind: EntryKind::Symlink {
                target: b"t".to_vec(),
            },
        };
        assert!(Node::new(vec![e(b"a"), e(b"a")]).is_err());
        let good = Node::new(vec![e(b"a"), e(b"b")]).expect("node").encode();
        let mut swapped = good.clone();
        let a = swapped
            .windows(3)
            .position(|w| w == [1, 0, b'a'])
            .expect("a")
            + 2;
        let b = swapped
            .windows(3)
            .position(|w| w == [1, 0, b'b'])
            .expect("b")
            + 2;
        swapped.swap(a, b);
        assert!(Node::decode(&swapped).is_err());
    }
}
