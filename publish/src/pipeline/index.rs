//! Phase 4, the index: each directory's node built from its entries (a file's chunks
//! located in the catalog, a subdirectory's node from the level below), children before
//! parents, a level's directories in parallel and stored in order, so that the same tree
//! always gives the same packs. A directory whose fingerprint matches the cache keeps its
//! node while the store still has it and every pack it names; only nodes the store lacks
//! are written.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use rayon::prelude::*;

use pulpdist_chunker::Compressor;
use pulpdist_format::pack::ObjectKind;
use pulpdist_format::{
    chunk_list_hash, ChunkRef, Entry, EntryKind, Node, NodeId, NodeRef, PackId, PackInfo, PackKind,
    Part, MAX_NODE_SIZE, MAX_RESOLVED_CHUNKS,
};

use super::chunking::{ChunkList, FileChunks};
use super::composite::{self, Region, Targets};
use super::scan::CacheFile;
use super::{PublishOptions, PublishReport, Run};
use crate::cache::{CacheWriter, DirRecord};
use crate::catalog::Catalog;
use crate::error::PublishError;
use crate::packer::{random_id, unless_condemned, Naming, Packer};
use crate::walk::{self, WalkDir, WalkFile, WalkKind};

/// What the nodes are built from.
pub(super) struct Inputs<'a, 'c> {
    pub(super) walk: &'a walk::Walk,
    /// Each directory's record in the last publish's cache.
    pub(super) records: &'a [Option<DirRecord<'c>>],
    /// Every file's chunks.
    pub(super) file_chunks: &'a [Option<FileChunks<'c>>],
    /// Whether each file is an ISO image cut along its files' extents.
    pub(super) images: &'a [bool],
}

/// What the index phase wrote.
pub(super) struct Index {
    /// The root node.
    pub(super) root: NodeRef,
    /// The index packs, closed.
    pub(super) packs: Vec<PackInfo>,
    /// Their bytes.
    pub(super) bytes: u64,
    /// The new nodes' encodings, for the delta walk (when asked to keep them).
    pub(super) fresh: HashMap<NodeId, Vec<u8>>,
    /// The next publish's cache.
    pub(super) next_cache: Vec<u8>,
    /// Every pack the version's nodes name (nodes and chunks): checked against the
    /// garbage collector's condemned list before the head is written.
    pub(super) reached: BTreeSet<PackId>,
    /// Each directory's node and fingerprint as computed (for the tree's summary).
    pub(super) dirs: Vec<(NodeRef, [u8; 32])>,
}

/// Builds and stores every directory's node; `keep_fresh`: keep the new nodes' encodings.
///
/// The new nodes go in one index pack, named by its content (FORMAT.md 3); its nodes name
/// it in their children's locations, so it is built twice: once dry (nothing written, the
/// zero id for the pack, nothing recorded) for its name, then with that name (the nodes
/// the first compressed are not compressed again). When every node is already in the
/// store, the second build writes nothing either. A name the store's gc condemned, or
/// that a damaged pack holds, is replaced by a random one.
pub(super) fn build(
    run: &Run<'_>,
    inputs: &Inputs<'_, '_>,
    catalog: &mut Catalog,
    cache: &CacheFile,
    keep_fresh: bool,
    report: &mut PublishReport,
) -> Result<Index, PublishError> {
    // Found over the whole tree the first time a rebuilt directory holds an image of more
    // than one chunk (one that may hold another file).
    let targets = OnceLock::new();
    let mut compressed = Compressed::new();
    // A build's nodes leave the catalog unless it is the index: they name no pack in the
    // store (the zero id, or a pack not put).
    let mut pass = |catalog: &mut Catalog, naming, keep_fresh, recording| {
        let packer = Packer::new(
            run.store,
            run.tmp_dir.clone(),
            PackKind::Index,
            u64::MAX,
            naming,
        );
        let mut inserted = Vec::new();
        let built = levels(
            run,
            inputs,
            catalog,
            cache,
            keep_fresh,
            packer,
            &targets,
            &mut inserted,
            &mut compressed,
            recording,
        );
        let used = matches!(&built, Ok(b) if b.packs.is_empty() || !matches!(naming, Naming::Dry));
        if !used {
            for id in &inserted {
                catalog.nodes.remove(id);
            }
        }
        built.map(|b| (b, inserted))
    };
    // Nothing written, nothing recorded: the name.
    let (dry, _) = pass(catalog, Naming::Dry, false, false)?;
    let named = dry.packs.first().map(|p| p.id);
    drop(dry);
    let (built, inserted) = match named {
        // Every node in the store already: nothing to write, only to record (the same
        // nodes as the first build: none new).
        None => match pass(catalog, Naming::Dry, keep_fresh, true)? {
            (built, _) if !built.packs.is_empty() => {
                let why = "the index's second build has new nodes the first had not";
                return Err(PublishError::Internal(why.into()));
            }
            built => built,
        },
        Some(named) => {
            let name = unless_condemned(run.store, named)?;
            match pass(catalog, Naming::Fixed(name), keep_fresh, true) {
                Err(PublishError::PackExists { pack }) => {
                    tracing::warn!(%pack, "something else is stored under this pack's name (other bytes, a link, a file anyone may write): the index named at random");
                    pass(catalog, Naming::Fixed(random_id()?), keep_fresh, true)?
                }
                built => built?,
            }
        }
    };
    pulpdist_failpoint::hit("publish.index_packs");
    report.nodes_new += inserted.len() as u64;
    let dirs = built
        .dir_refs
        .into_iter()
        .zip(built.fingerprints)
        .map(|(r, f)| Some((r?, f)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| PublishError::Internal("a directory without a node".into()))?;
    let root = dirs
        .first()
        .ok_or_else(|| PublishError::Internal("no root node".into()))?
        .0;
    Ok(Index {
        root,
        packs: built.packs,
        bytes: built.bytes,
        fresh: built.fresh,
        next_cache: built.next_cache.finish(),
        reached: built.reached,
        dirs,
    })
}

/// The nodes the dry build compressed, by id: a node that does not name its own pack (one
/// without a new subdirectory) has the same id and bytes in the build that writes it.
type Compressed = HashMap<NodeId, pulpdist_chunker::Stored>;

/// One build of the index: what [`build`] keeps of it.
struct Levels {
    dir_refs: Vec<Option<NodeRef>>,
    fingerprints: Vec<[u8; 32]>,
    next_cache: CacheWriter,
    fresh: HashMap<NodeId, Vec<u8>>,
    reached: BTreeSet<PackId>,
    packs: Vec<PackInfo>,
    bytes: u64,
}

/// Builds every directory's node, children before parents, into `packer`'s pack; each
/// node written is added to the catalog and to `inserted`. A dry build keeps the nodes it
/// compressed in `compressed`; another takes them from there. Only a `recording` build
/// makes the next publish's cache and the packs the version reaches.
#[allow(clippy::too_many_arguments)]
fn levels(
    run: &Run<'_>,
    inputs: &Inputs<'_, '_>,
    catalog: &mut Catalog,
    cache: &CacheFile,
    keep_fresh: bool,
    mut packer: Packer<'_>,
    targets: &OnceLock<Targets>,
    inserted: &mut Vec<NodeId>,
    compressed: &mut Compressed,
    recording: bool,
) -> Result<Levels, PublishError> {
    let dry = packer.is_dry();
    let walk = inputs.walk;
    let mut out = Levels {
        dir_refs: vec![None; walk.dirs.len()],
        fingerprints: vec![[0u8; 32]; walk.dirs.len()],
        next_cache: CacheWriter::new(&cache.identity),
        fresh: HashMap::new(),
        reached: BTreeSet::new(),
        packs: Vec::new(),
        bytes: 0,
    };
    for level in walk.levels.iter().rev() {
        let (dir_refs, ready) = (&out.dir_refs, &*compressed);
        let built = run.workers.run(|| {
            level
                .clone()
                .into_par_iter()
                .map_init(
                    || Compressor::new(run.opts.zstd_level),
                    |comp, di| {
                        let comp = comp.as_mut().map_err(|e| PublishError::Compressor {
                            what: "index nodes",
                            detail: e.to_string(),
                        })?;
                        let found = |id: &NodeId| ready.get(id).cloned();
                        build_dir(
                            run.opts, inputs, di, dir_refs, catalog, comp, targets, &found,
                        )
                    },
                )
                .collect::<Result<Vec<_>, _>>()
        })?;
        for (di, (built, fingerprint)) in level.clone().zip(built) {
            out.fingerprints[di] = fingerprint;
            let r = match built {
                Built::Kept(r) => {
                    if let Some(record) = inputs.records[di].as_ref().filter(|_| recording) {
                        match record.current() {
                            true => out.next_cache.keep(record),
                            // Written before the image flag: written again with it.
                            false => remember(&mut out.next_cache, inputs, di, &record.into()),
                        }
                        out.reached.extend(record.packs.iter().copied());
                    }
                    r
                }
                Built::New(b) => {
                    out.reached.extend(b.packs.iter().copied());
                    match (&b.stored, dry) {
                        (Some(st), true) => {
                            compressed.insert(b.id, st.clone());
                        }
                        _ => {
                            compressed.remove(&b.id);
                        }
                    }
                    let (r, written) = store_node(run, &mut packer, catalog, &b, inserted)?;
                    if written && keep_fresh {
                        out.fresh.insert(b.id, b.encoded.clone());
                    }
                    if recording {
                        remember(&mut out.next_cache, inputs, di, &(&b).into());
                    }
                    r
                }
            };
            out.reached.insert(r.loc.pack);
            out.dir_refs[di] = Some(r);
        }
    }
    let done = packer.finish()?;
    (out.packs, out.bytes) = (done.packs, done.stored_bytes);
    Ok(out)
}

/// Stores a new node unless the store has it; its reference, and whether it was written.
fn store_node(
    run: &Run<'_>,
    packer: &mut Packer<'_>,
    catalog: &mut Catalog,
    b: &NewNode,
    inserted: &mut Vec<NodeId>,
) -> Result<(NodeRef, bool), PublishError> {
    if let Some(loc) = catalog.nodes.get(&b.id) {
        return Ok((
            NodeRef {
                id: b.id,
                loc: *loc,
            },
            false,
        ));
    }
    let stored = match &b.stored {
        Some(st) => st.clone(),
        None => Compressor::new(run.opts.zstd_level)?.compress(&b.encoded),
    };
    let len = b.encoded.len() as u32;
    let loc = packer.add(ObjectKind::Node, b.id.0, stored.codec, len, &stored.bytes)?;
    catalog.nodes.insert(b.id, loc);
    inserted.push(b.id);
    Ok((NodeRef { id: b.id, loc }, true))
}

/// What the cache records of a directory besides its files.
struct DirFacts<'a> {
    fingerprint: &'a [u8; 32],
    node: &'a NodeId,
    packs: &'a [PackId],
    nfiles: u32,
}

impl<'a> From<&'a NewNode> for DirFacts<'a> {
    fn from(b: &'a NewNode) -> Self {
        DirFacts {
            fingerprint: &b.fingerprint,
            node: &b.id,
            packs: &b.packs,
            nfiles: b.nfiles,
        }
    }
}

impl<'a> From<&'a DirRecord<'_>> for DirFacts<'a> {
    fn from(r: &'a DirRecord<'_>) -> Self {
        DirFacts {
            fingerprint: &r.fingerprint,
            node: &r.node,
            packs: &r.packs,
            nfiles: r.files().count() as u32,
        }
    }
}

/// Records a directory and its files' chunk lists in the next publish's cache.
fn remember(next: &mut CacheWriter, inputs: &Inputs<'_, '_>, di: usize, b: &DirFacts<'_>) {
    let d = &inputs.walk.dirs[di];
    next.dir(&d.rel, b.fingerprint, b.node, b.packs, b.nfiles);
    for e in &d.entries {
        let WalkKind::File(fi) = e.kind else { continue };
        let (name, stat) = (e.name.as_bytes(), &inputs.walk.files[fi].stat);
        let image = inputs.images[fi];
        match &inputs.file_chunks[fi] {
            Some(FileChunks::Cached(c)) => next.file(name, stat, image, c.iter()),
            Some(FileChunks::Read(v)) => next.file(name, stat, image, v.iter().copied()),
            None => {}
        }
    }
}

/// What a directory's node is built from: each entry's name, mode, mtime and kind; a
/// file's stat (which decides its chunks, through the cache); a symlink's target; a
/// subdirectory's node. Equal fingerprints give equal nodes while the store keeps the
/// packs the node names. (Gathered and hashed at once: many small updates of the hasher
/// cost more than the hashing.)
pub(super) fn fingerprint(
    d: &WalkDir,
    files: &[WalkFile],
    dir_refs: &[Option<NodeRef>],
    what: &dyn Fn() -> String,
) -> Result<[u8; 32], PublishError> {
    let mut h: Vec<u8> = Vec::with_capacity(64 + d.entries.len() * 80);
    h.extend_from_slice(b"pulpdist dir fingerprint 1");
    h.extend_from_slice(&(d.entries.len() as u64).to_le_bytes());
    for e in &d.entries {
        let name = e.name.as_bytes();
        h.extend_from_slice(&(name.len() as u32).to_le_bytes());
        h.extend_from_slice(name);
        h.extend_from_slice(&e.mode.to_le_bytes());
        h.extend_from_slice(&e.mtime.secs.to_le_bytes());
        h.extend_from_slice(&e.mtime.nanos.to_le_bytes());
        match &e.kind {
            WalkKind::File(fi) => {
                let s = &files[*fi].stat;
                h.extend_from_slice(b"f");
                h.extend_from_slice(&s.dev.to_le_bytes());
                h.extend_from_slice(&s.ino.to_le_bytes());
                h.extend_from_slice(&s.size.to_le_bytes());
                h.extend_from_slice(&s.stamp.to_le_bytes());
            }
            WalkKind::Dir(ci) => {
                let r = dir_refs[*ci].ok_or_else(|| {
                    PublishError::Internal(format!("a child node of {} missing", what()))
                })?;
                h.extend_from_slice(b"d");
                h.extend_from_slice(r.id.as_bytes());
                h.extend_from_slice(r.loc.pack.as_bytes());
                h.extend_from_slice(&r.loc.offset.to_le_bytes());
                h.extend_from_slice(&r.loc.stored_len.to_le_bytes());
                h.extend_from_slice(&r.loc.raw_len.to_le_bytes());
                h.extend_from_slice(&[r.loc.codec.to_byte()]);
            }
            WalkKind::Symlink(t) => {
                h.extend_from_slice(b"l");
                h.extend_from_slice(&(t.len() as u32).to_le_bytes());
                h.extend_from_slice(t);
            }
        }
    }
    Ok(*blake3::hash(&h).as_bytes())
}

/// Unchanged since the last publish: the same node, if the store still has it and every
/// pack its chunks are in, and would name the same copies of them today.
fn kept(record: &DirRecord<'_>, fingerprint: &[u8; 32], catalog: &Catalog) -> Option<NodeRef> {
    let chunks = || record.files().flat_map(|f| f.chunks().iter());
    let same = record.fingerprint == *fingerprint
        && catalog.names_first_copies(&record.packs, chunks().map(|(id, _)| id));
    let loc = catalog.nodes.get(&record.node).filter(|_| same)?;
    Some(NodeRef {
        id: record.node,
        loc: *loc,
    })
}

/// A file's entry: its chunks located in the catalog (their packs noted in `packs`).
fn file_kind(
    chunks: Option<&FileChunks<'_>>,
    catalog: &Catalog,
    packs: &mut BTreeSet<PackId>,
    what: &dyn Fn() -> String,
) -> Result<EntryKind, PublishError> {
    let ids = chunks
        .ok_or_else(|| PublishError::Internal(format!("a file of {} not chunked", what())))?
        .to_vec();
    let mut refs = Vec::with_capacity(ids.len());
    for (id, _) in &ids {
        let loc = *catalog.chunks.get(id).ok_or_else(|| {
            PublishError::Internal(format!("chunk {id} of {} has no location", what()))
        })?;
        packs.insert(loc.pack);
        refs.push(ChunkRef { id: *id, loc });
    }
    let size = ids.iter().map(|(_, l)| u64::from(*l)).sum();
    Ok(EntryKind::File { size, chunks: refs })
}

/// A file's entry as a composite file if it holds other files of the tree (see
/// [`composite`]), else as it is.
fn composite_kind(
    kind: EntryKind,
    fi: usize,
    inputs: &Inputs<'_, '_>,
    targets: &OnceLock<Targets>,
) -> EntryKind {
    let EntryKind::File { size, chunks } = kind else {
        return kind;
    };
    if chunks.len() < 2 || !inputs.images[fi] {
        return EntryKind::File { size, chunks };
    }
    let targets =
        targets.get_or_init(|| Targets::new(inputs.walk, inputs.file_chunks, inputs.images));
    let list: ChunkList = chunks.iter().map(|c| (c.id, c.loc.raw_len)).collect();
    let Some(regions) = targets.parts(fi, &list) else {
        return EntryKind::File { size, chunks };
    };
    let parts = regions
        .into_iter()
        .map(|r| match r {
            Region::Chunks(range) => Part::Chunks(chunks[range].to_vec()),
            Region::File { fi, size } => Part::File {
                path: composite::path(inputs.walk, fi),
                size,
            },
        })
        .collect();
    EntryKind::Composite {
        size,
        chunk_hash: chunk_list_hash(chunks.iter().map(|c| &c.id)),
        parts,
    }
}

/// A directory's node: the one it had (unchanged since the last publish) or a new one.
enum Built {
    Kept(NodeRef),
    New(NewNode),
}

struct NewNode {
    fingerprint: [u8; 32],
    encoded: Vec<u8>,
    id: NodeId,
    /// Compressed, unless the store already has the node.
    stored: Option<pulpdist_chunker::Stored>,
    /// The packs its files' chunks are in.
    packs: Vec<PackId>,
    nfiles: u32,
}

/// Builds directory `di`'s node; its subdirectories' nodes are in `dir_refs`; a node
/// compressed before is `found`.
#[allow(clippy::too_many_arguments)]
fn build_dir(
    opts: &PublishOptions,
    inputs: &Inputs<'_, '_>,
    di: usize,
    dir_refs: &[Option<NodeRef>],
    catalog: &Catalog,
    comp: &mut Compressor,
    targets: &OnceLock<Targets>,
    found: &dyn Fn(&NodeId) -> Option<pulpdist_chunker::Stored>,
) -> Result<(Built, [u8; 32]), PublishError> {
    let Inputs {
        walk,
        records,
        file_chunks,
        ..
    } = inputs;
    let d = &walk.dirs[di];
    let what = || {
        format!(
            "directory '{}' of {}",
            String::from_utf8_lossy(&d.rel),
            opts.source.display()
        )
    };
    let fingerprint = fingerprint(d, &walk.files, dir_refs, &what)?;
    // A directory holding an image is built again whatever its record says (a record
    // written before the image flag has a real fingerprint).
    let holds_image = d
        .entries
        .iter()
        .any(|e| matches!(e.kind, WalkKind::File(fi) if inputs.images[fi]));
    if let Some(r) = records[di]
        .as_ref()
        .filter(|_| !holds_image)
        .and_then(|r| kept(r, &fingerprint, catalog))
    {
        return Ok((Built::Kept(r), fingerprint));
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    let mut packs = BTreeSet::new();
    let mut nfiles = 0u32;
    // What the directory's composite files resolve to, at most what a reader takes.
    let mut resolved = 0usize;
    for e in &d.entries {
        let kind = match &e.kind {
            WalkKind::File(fi) => {
                nfiles += 1;
                let kind = file_kind(file_chunks[*fi].as_ref(), catalog, &mut packs, &what)?;
                let n = match &kind {
                    EntryKind::File { chunks, .. } => chunks.len(),
                    _ => 0,
                };
                if !opts.composites || resolved + n > MAX_RESOLVED_CHUNKS {
                    kind
                } else {
                    let kind = composite_kind(kind, *fi, inputs, targets);
                    if matches!(kind, EntryKind::Composite { .. }) {
                        resolved += n;
                    }
                    kind
                }
            }
            WalkKind::Dir(ci) => EntryKind::Dir {
                node: dir_refs[*ci].ok_or_else(|| {
                    PublishError::Internal(format!("a child node of {} missing", what()))
                })?,
            },
            WalkKind::Symlink(t) => EntryKind::Symlink { target: t.clone() },
        };
        entries.push(Entry {
            name: e.name.clone(),
            mode: e.mode,
            mtime: e.mtime,
            kind,
        });
    }
    let node = Node::new(entries).map_err(|source| PublishError::Format {
        object: what(),
        source,
    })?;
    let encoded = node.encode();
    if encoded.len() > MAX_NODE_SIZE as usize {
        return Err(PublishError::NodeTooLarge {
            dir: what(),
            size: encoded.len(),
            limit: MAX_NODE_SIZE,
        });
    }
    let id = NodeId::of(&encoded);
    let stored = (!catalog.nodes.contains_key(&id))
        .then(|| found(&id).unwrap_or_else(|| comp.compress(&encoded)));
    // An image may name files elsewhere in the tree, which the fingerprint does not cover:
    // its directory is built again by every publish that builds any node (no fingerprint
    // matches zeros), so its node is what this tree gives, whatever the last publish saw.
    // (A tree found unchanged as a whole from its summary keeps it: nothing an image can
    // name changed, and the summary is sealed to this build of the publisher.)
    let recorded = match holds_image {
        true => [0; 32],
        false => fingerprint,
    };
    let node = NewNode {
        fingerprint: recorded,
        encoded,
        id,
        stored,
        packs: packs.into_iter().collect(),
        nfiles,
    };
    Ok((Built::New(node), fingerprint))
}

#[cfg(test)]
mod tests {
    use super::super::testkit;

    #[test]
    fn an_unchanged_tree_keeps_every_node_and_a_change_rebuilds_only_its_path() {
        let site = testkit::site();
        let first = site.publish();
        assert_eq!(first.nodes_new, 2);
        let again = site.publish();
        assert_eq!((again.nodes_new, again.root), (0, first.root));
        std::fs::write(site.src().join("sub/new.txt"), b"new").expect("new file");
        let changed = site.publish();
        // sub/ and the root: two new nodes; nothing else.
        assert_eq!(changed.nodes_new, 2);
        assert_ne!(changed.root, first.root);
    }

    use super::super::scan::{self, CacheFile};
    use super::super::{chunking, PublishReport, Run};
    use super::*;
    use crate::cache::DirCache;

    /// Runs the earlier phases of a publish of `site` (version 1), then `phase` with their
    /// outcome; file `i` counts as an image where `image(i)`.
    fn after_earlier_phases<T>(
        site: &testkit::Site,
        image: impl Fn(usize) -> bool,
        phase: impl FnOnce(&Run<'_>, &Inputs<'_, '_>, &mut Catalog, &CacheFile, &DirCache) -> T,
    ) -> T {
        let run = site.run(1);
        let params = pulpdist_format::ChunkParams::DEFAULT;
        let cache = CacheFile::new(&site.opts, params);
        let (catalog, old, walk) = scan::scan_all(&run, &cache);
        let records = scan::records(&walk, &old);
        let mut chunks = scan::reuse(&walk, &records, &catalog);
        let chunker = pulpdist_chunker::Chunker::new(params).expect("chunker");
        let mut report = PublishReport::default();
        let data = chunking::chunk_new(&run, &chunker, &walk, &catalog, &mut chunks, &mut report)
            .expect("chunked");
        let mut catalog = catalog;
        catalog.chunks.extend(data.locs);
        let images: Vec<bool> = (0..walk.files.len()).map(image).collect();
        let inputs = Inputs {
            walk: &walk,
            records: &records,
            file_chunks: &chunks,
            images: &images,
        };
        phase(&run, &inputs, &mut catalog, &cache, &old)
    }

    /// The phase alone, on what the earlier phases give it: every directory's node is built
    /// and written once; with the store's catalog holding them, none is written again.
    #[test]
    fn nodes_the_store_lacks_are_written_and_only_those() {
        let site = testkit::site();
        after_earlier_phases(
            &site,
            |_| false,
            |run, inputs, catalog, cache, _| {
                let mut report = PublishReport::default();
                let index = build(run, inputs, catalog, cache, true, &mut report).expect("built");
                assert_eq!(
                    (report.nodes_new, index.fresh.len(), index.packs.len()),
                    (2, 2, 1)
                );
                assert!(catalog.nodes.contains_key(&index.root.id));
                let mut report = PublishReport::default();
                let again = build(run, inputs, catalog, cache, true, &mut report).expect("built");
                assert_eq!((report.nodes_new, again.packs.len()), (0, 0));
                assert_eq!(again.root, index.root, "the same tree, the same node");
            },
        );
    }

    /// The fingerprint's bytes are what every publisher's cache and summary were written
    /// with: a rewrite that changes them costs every directory a rebuild after an upgrade.
    #[test]
    fn the_fingerprint_of_a_fixed_directory_is_pinned() {
        use crate::walk::{FileStat, WalkEntry};
        use pulpdist_format::{Codec, Location, Mtime, Name};
        let entry = |name: &str, kind| WalkEntry {
            name: Name::new(name.as_bytes().to_vec()).expect("name"),
            mode: 0o644,
            mtime: Mtime {
                secs: 1_700_000_000,
                nanos: 5,
            },
            kind,
        };
        let dir = WalkDir {
            rel: b"a".to_vec(),
            entries: vec![
                entry("f", WalkKind::File(0)),
                entry("l", WalkKind::Symlink(b"f".to_vec())),
                entry("s", WalkKind::Dir(1)),
            ],
        };
        let files = [WalkFile {
            dir: 0,
            entry: 0,
            stat: FileStat {
                dev: 1,
                ino: 2,
                size: 3,
                stamp: FileStat::stamp_of(4, 5),
            },
        }];
        let child = NodeRef {
            id: NodeId([7; 32]),
            loc: Location {
                pack: PackId([8; 32]),
                offset: 9,
                stored_len: 10,
                raw_len: 11,
                codec: Codec::Zstd,
            },
        };
        let got = fingerprint(&dir, &files, &[None, Some(child)], &String::new).expect("fp");
        let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
        // As computed by the hasher fed field by field (the code before f8c13dc).
        assert_eq!(
            got,
            "91acc48226b373b8d312601ca1ab3e03e5072977ffa18b5680be535db50566da"
        );
    }

    /// A directory holding an image is built again even when its record's fingerprint
    /// matches (a record from before the image flag): its record then has zeros.
    #[test]
    fn a_directory_holding_an_image_is_never_kept() {
        let site = testkit::site();
        // The fingerprint the next cache records for the first file's directory.
        let built = |first_is_image: bool| {
            after_earlier_phases(
                &site,
                |i| i == 0 && first_is_image,
                |run, inputs, catalog, cache, old| {
                    let mut report = PublishReport::default();
                    let index =
                        build(run, inputs, catalog, cache, false, &mut report).expect("built");
                    cache.save(&index.next_cache, old.bytes());
                    let saved = DirCache::load(&cache.path, &cache.identity);
                    let holder = &inputs.walk.dirs[inputs.walk.files[0].dir].rel;
                    saved.dir(holder).expect("record").fingerprint
                },
            )
        };
        // No image: a real fingerprint, kept by the next build.
        assert_ne!(built(false), [0; 32]);
        // The first file is an image now (its record says otherwise): built again.
        assert_eq!(built(true), [0; 32]);
    }
}
