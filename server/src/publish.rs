//! The publish pipeline: walk, reuse or chunk, pack, build nodes, sign the head (last).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;

use pulpdist_chunker::{Chunker, Compressor, DEFAULT_ZSTD_LEVEL};
use pulpdist_format::delta::{encode_deltas, DeltaInfo, EXT_DELTAS};
use pulpdist_format::pack::ObjectKind;
use pulpdist_format::{
    ChunkId, ChunkParams, ChunkRef, Codec, Entry, EntryKind, FormatError, Head, Location, Node,
    NodeId, NodeRef, PackId, PackInfo, PackKind, SecretKey, SignedHead, TrustedKeys, VersionPacks,
    MAX_NODE_SIZE,
};

use crate::cache::{self, CacheWriter, CachedChunks, DirCache, DirRecord};
use crate::catalog::Catalog;
use crate::delta::{DeltaReport, DeltaSettings, Nodes};
use crate::error::{IoContext, PublishError};
use crate::packer::Packer;
use crate::store::Store;
use crate::walk::{self, WalkDir, WalkFile, WalkKind};

/// The default zstd level of delta frames (benchmarks/README.md, "Deltas").
pub const DEFAULT_DELTA_LEVEL: i32 = 19;

/// What to publish and how.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Tree name.
    pub tree: String,
    /// The directory to publish.
    pub source: PathBuf,
    /// The publisher's cache directory (trailer cache, file cache). Losing it costs a re-read.
    pub state_dir: PathBuf,
    /// Chunk parameters for the first version; later versions keep the tree's.
    pub params: Option<ChunkParams>,
    /// zstd level for chunks and nodes.
    pub zstd_level: i32,
    /// Seconds until the head expires (a client refuses it afterwards).
    pub expires_in: i64,
    /// How many recent versions the head lists packs for.
    pub keep_versions: usize,
    /// Data packs are closed once they reach this size.
    pub pack_target: u64,
    /// The time to record as "created" (seconds since the epoch); `None`: now.
    pub now: Option<i64>,
    /// Derive pack names from this seed instead of the system's random generator
    /// (reproducible golden vectors; never for a real store).
    pub pack_seed: Option<Vec<u8>>,
    /// Chunking threads; `None`: every core. With one thread, chunks reach the packs in
    /// file order and a publish of the same tree is byte-for-byte reproducible.
    pub threads: Option<usize>,
    /// Keys (besides the signing key) whose signature on the previous head is accepted:
    /// the old key during a key rotation.
    pub previous_keys: Vec<pulpdist_format::PublicKey>,
    /// rsync filter rules: what of the source the tree carries (recorded in the head).
    pub filter: pulpdist_format::filter::Filter,
    /// Write a delta pack from each of this many previous versions (0: none).
    pub deltas: usize,
    /// zstd level of delta frames (node records use at most `NODE_DELTA_LEVEL`, 9).
    pub delta_level: i32,
}

impl PublishOptions {
    /// Defaults: 7-day expiry, 8 recent versions, 64 MiB packs, zstd level 2.
    pub fn new(
        tree: impl Into<String>,
        source: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        PublishOptions {
            tree: tree.into(),
            source: source.into(),
            state_dir: state_dir.into(),
            params: None,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            expires_in: 7 * 24 * 3600,
            keep_versions: 8,
            pack_target: 64 << 20,
            now: None,
            pack_seed: None,
            threads: None,
            previous_keys: Vec::new(),
            filter: pulpdist_format::filter::Filter::new(),
            deltas: 1,
            delta_level: DEFAULT_DELTA_LEVEL,
        }
    }
}

/// What a publish did.
#[derive(Clone, Debug, Default)]
pub struct PublishReport {
    /// The version written.
    pub version: u64,
    /// Regular files in the tree.
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes in all files.
    pub bytes_total: u64,
    /// Files read and chunked (the others matched the file cache).
    pub files_read: u64,
    /// Bytes read and chunked.
    pub bytes_read: u64,
    /// New chunks stored.
    pub chunks_new: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes added to the store (packs, head excluded).
    pub bytes_stored: u64,
    /// New index nodes stored.
    pub nodes_new: u64,
    /// Packs written.
    pub packs: Vec<PackInfo>,
    /// The root node.
    pub root: Option<NodeId>,
    /// Entries that are neither file, directory nor symlink (sockets, devices), not published.
    pub skipped: Vec<PathBuf>,
    /// Wall time.
    pub elapsed_ms: u64,
    /// ISO 9660 images chunked along their files' extents.
    pub isos: u64,
    /// Images published as plain chunks instead (xorriso missing, image damaged), and why.
    pub isos_plain: Vec<String>,
    /// Delta packs written by this publish (one per earlier version with changes).
    pub deltas: Vec<DeltaReport>,
    /// Partial packs older than a day (left by a killed publish) removed from the
    /// temporary directory.
    pub stale_parts_removed: u64,
    /// The publisher's cache could not be written (the version is published; the next
    /// publish uses the last cache written and reads the files changed since), and why.
    pub cache_error: Option<String>,
    /// Packs in the store whose footer or trailer does not decode: left out of the
    /// catalog (their objects are stored again where needed), and why.
    pub unreadable_packs: Vec<String>,
}

/// A file's chunks: id and length, in order.
type ChunkList = Vec<(ChunkId, u32)>;

/// A file's chunks: from the cache (the file is unchanged) or just read.
enum FileChunks<'a> {
    Cached(CachedChunks<'a>),
    Read(ChunkList),
}

impl FileChunks<'_> {
    fn to_vec(&self) -> ChunkList {
        match self {
            FileChunks::Cached(c) => c.iter().collect(),
            FileChunks::Read(v) => v.clone(),
        }
    }
}

/// What a directory's node is built from: each entry's name, mode, mtime and kind; a
/// file's stat (which decides its chunks, through the cache); a symlink's target; a
/// subdirectory's node. Equal fingerprints give equal nodes while the store keeps the
/// packs the node names.
fn fingerprint(
    d: &WalkDir,
    files: &[WalkFile],
    dir_refs: &[Option<NodeRef>],
    what: &dyn Fn() -> String,
) -> Result<[u8; 32], PublishError> {
    let mut h = blake3::Hasher::new();
    h.update(b"pulpdist dir fingerprint 1");
    h.update(&(d.entries.len() as u64).to_le_bytes());
    for e in &d.entries {
        let name = e.name.as_bytes();
        h.update(&(name.len() as u32).to_le_bytes());
        h.update(name);
        h.update(&e.mode.to_le_bytes());
        h.update(&e.mtime.secs.to_le_bytes());
        h.update(&e.mtime.nanos.to_le_bytes());
        match &e.kind {
            WalkKind::File(fi) => {
                let s = &files[*fi].stat;
                h.update(b"f");
                h.update(&s.dev.to_le_bytes());
                h.update(&s.ino.to_le_bytes());
                h.update(&s.size.to_le_bytes());
                h.update(&s.mtime_ns.to_le_bytes());
            }
            WalkKind::Dir(ci) => {
                let r = dir_refs[*ci].ok_or_else(|| {
                    PublishError::Config(format!("internal: a child node of {} missing", what()))
                })?;
                h.update(b"d");
                h.update(r.id.as_bytes());
                h.update(r.loc.pack.as_bytes());
                h.update(&r.loc.offset.to_le_bytes());
                h.update(&r.loc.stored_len.to_le_bytes());
                h.update(&r.loc.raw_len.to_le_bytes());
                h.update(&[r.loc.codec.to_byte()]);
            }
            WalkKind::Symlink(t) => {
                h.update(b"l");
                h.update(&(t.len() as u32).to_le_bytes());
                h.update(t);
            }
        }
    }
    Ok(*h.finalize().as_bytes())
}

struct NewChunk {
    id: ChunkId,
    raw_len: u32,
    codec: Codec,
    bytes: Vec<u8>,
}

/// Publishes `opts.source` as the next version of `opts.tree` in `store`, signed by `key`.
pub fn publish(
    store: &dyn Store,
    key: &SecretKey,
    opts: &PublishOptions,
) -> Result<PublishReport, PublishError> {
    let started = Instant::now();
    pulpdist_format::validate_tree_name(&opts.tree).map_err(|source| PublishError::Format {
        object: "tree name".into(),
        source,
    })?;
    std::fs::create_dir_all(&opts.state_dir).at(&opts.state_dir)?;
    let _lock = store.lock(&opts.tree, &opts.state_dir)?;
    let workers = Workers::new(opts.threads)?;
    let tmp_dir = match store.tmp_dir() {
        Some(d) => d,
        None => {
            let d = opts.state_dir.join("tmp");
            std::fs::create_dir_all(&d).at(&d)?;
            d
        }
    };
    // Under the tree's lock: partial packs a killed publish left behind.
    let stale_parts_removed = crate::packer::remove_stale_parts(&tmp_dir);

    // The previous version, if any.
    let prev_head = store.read_head(&opts.tree)?;
    let head_object = format!("{}/heads/{}", store.describe(), opts.tree);
    let prev = match &prev_head {
        Some(stored) => {
            let b = &stored.bytes;
            // The previous head is verified as a client would: a store writer cannot make
            // us re-sign a version, parameters or pack list of its choosing.
            let mut own = vec![key.public()];
            own.extend(opts.previous_keys.iter().cloned());
            let own = TrustedKeys::new(own);
            let h = match SignedHead::decode_and_verify(b, &own) {
                Ok(v) => v.head().clone(),
                Err(FormatError::UntrustedKey { key: signer, .. }) => {
                    return Err(PublishError::Config(format!(
                        "{head_object} is signed by key {signer}, not by the given key {}; publish with the tree's key, or name the old one with --previous-key when rotating keys",
                        key.public()
                    )))
                }
                Err(source) => return Err(PublishError::Format { object: head_object.clone(), source }),
            };
            if h.tree != opts.tree {
                return Err(PublishError::Config(format!(
                    "{head_object} names tree '{}'",
                    h.tree
                )));
            }
            Some(h)
        }
        None => None,
    };
    let params = match (&prev, opts.params) {
        (Some(h), Some(p)) if h.params != p => {
            return Err(PublishError::Config(format!(
                "tree '{}' is chunked with min {} avg {} max {}; other parameters would need a new tree",
                opts.tree, h.params.min, h.params.avg, h.params.max
            )))
        }
        (Some(h), _) => h.params,
        (None, p) => p.unwrap_or(ChunkParams::DEFAULT),
    };
    let chunker = Chunker::new(params)?;
    let version = prev
        .as_ref()
        .map_or(Some(1), |h| h.version.checked_add(1))
        .ok_or_else(|| PublishError::Config("version overflow".into()))?;

    let cache_path = opts.state_dir.join(format!("files-{}", opts.tree));
    // Cut with other parameters (a tree made anew), the cached chunk lists do not hold.
    let cache_identity = format!(
        "tree {} chunks {} {} {}",
        opts.tree, params.min, params.avg, params.max
    )
    .into_bytes();
    // The store's catalog is read while the tree is walked: one waits on the file
    // system's metadata, the other mostly on memory.
    let (catalog, old_cache, walk) = std::thread::scope(|s| {
        let catalog = s.spawn(|| Catalog::load(store, &opts.state_dir));
        let old_cache = DirCache::load(&cache_path, &cache_identity);
        let walk = workers.run(|| walk::walk(&opts.source, &opts.filter));
        let catalog = catalog
            .join()
            .map_err(|_| PublishError::Config("reading the store's catalog panicked".into()));
        (catalog, old_cache, walk)
    });
    let mut catalog = catalog??;
    let walk = walk?;
    pulpdist_failpoint::hit("publish.walked");
    let mut report = PublishReport {
        version,
        stale_parts_removed,
        unreadable_packs: catalog.unreadable.clone(),
        dirs: walk.dirs.len() as u64,
        skipped: walk.skipped.clone(),
        ..Default::default()
    };
    for d in &walk.dirs {
        report.symlinks += d
            .entries
            .iter()
            .filter(|e| matches!(e.kind, WalkKind::Symlink(_)))
            .count() as u64;
    }
    report.files = walk.files.len() as u64;
    report.bytes_total = walk.files.iter().map(|f| f.stat.size).sum();

    // Each directory's record from the last publish; a file whose inode, size and mtime
    // match its record keeps its chunk list (if the store still has every chunk).
    let records: Vec<Option<DirRecord<'_>>> =
        walk.dirs.iter().map(|d| old_cache.dir(&d.rel)).collect();
    let mut file_chunks: Vec<Option<FileChunks<'_>>> = Vec::new();
    file_chunks.resize_with(walk.files.len(), || None);
    for (d, record) in walk.dirs.iter().zip(&records) {
        let Some(record) = record else { continue };
        let packs_readable = catalog.has_packs(&record.packs);
        let mut cached = record.files().peekable();
        for e in &d.entries {
            let WalkKind::File(fi) = e.kind else { continue };
            let name = e.name.as_bytes();
            while cached.next_if(|c| c.name < name).is_some() {}
            let Some(c) = cached.next_if(|c| c.name == name) else {
                continue;
            };
            if c.stat == walk.files[fi].stat
                && (packs_readable
                    || c.chunks()
                        .iter()
                        .all(|(id, _)| catalog.chunks.contains_key(&id)))
            {
                file_chunks[fi] = Some(FileChunks::Cached(c.chunks()));
            }
        }
    }
    let to_read: Vec<usize> = (0..walk.files.len())
        .filter(|&i| file_chunks[i].is_none())
        .collect();

    let mut namer = pack_namer(opts, version);
    let mut data_packer = Packer::new(
        store,
        tmp_dir.clone(),
        PackKind::Data,
        opts.pack_target,
        Box::new(move || namer("data")),
    );
    let claimed: Mutex<HashSet<ChunkId>> = Mutex::new(HashSet::new());
    let (tx, rx) = mpsc::sync_channel::<NewChunk>(64);
    let level = opts.zstd_level;
    let mut new_locs: HashMap<ChunkId, Location> = HashMap::new();

    // Chunk on every core; append new chunks to packs on this thread as they arrive.
    let isos = Mutex::new(IsoNotes::default());
    let read_results = std::thread::scope(|s| -> Result<Vec<(usize, ChunkList)>, PublishError> {
        let catalog = &catalog;
        let claimed = &claimed;
        let walk = &walk;
        let files = &walk.files;
        let source = opts.source.as_path();
        let to_read = &to_read;
        let chunker = &chunker;
        let isos = &isos;
        let workers = &workers;
        let worker = s.spawn(move || {
            let chunk_all = || {
                to_read
                    .par_iter()
                    .map_init(
                        || Compressor::new(level),
                        |comp, &i| -> Result<(usize, Vec<(ChunkId, u32)>), PublishError> {
                            let comp = comp.as_mut().map_err(|e| {
                                PublishError::Config(format!("compressor for chunks: {e}"))
                            })?;
                            let path = walk.path(source, &files[i]);
                            let chunks =
                                chunk_file(chunker, comp, &path, catalog, claimed, &tx, isos)?;
                            Ok((i, chunks))
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()
            };
            // The pool is installed here, on the thread that runs the parallel loop.
            let r = workers.run(chunk_all);
            drop(tx);
            r
        });
        let mut write_err = None;
        for c in rx.iter() {
            if write_err.is_some() {
                continue;
            }
            report.chunks_new += 1;
            report.bytes_new += u64::from(c.raw_len);
            match data_packer.add(ObjectKind::Chunk, c.id.0, c.codec, c.raw_len, &c.bytes) {
                Ok(loc) => {
                    new_locs.insert(c.id, loc);
                }
                Err(e) => write_err = Some(e),
            }
        }
        let results = worker
            .join()
            .map_err(|_| PublishError::Config("a chunking worker panicked".into()))?;
        if let Some(e) = write_err {
            return Err(e);
        }
        results
    })?;
    for (i, chunks) in read_results {
        report.files_read += 1;
        report.bytes_read += chunks.iter().map(|(_, l)| u64::from(*l)).sum::<u64>();
        file_chunks[i] = Some(FileChunks::Read(chunks));
    }
    let (data_packs, data_bytes) = data_packer.finish()?;
    pulpdist_failpoint::hit("publish.data_packs");
    catalog.chunks.extend(new_locs);
    let mut fresh_nodes: HashMap<NodeId, Vec<u8>> = HashMap::new();

    // Index nodes, children before parents; only nodes the store lacks are written.
    let mut namer = pack_namer(opts, version);
    let mut index_packer = Packer::new(
        store,
        tmp_dir.clone(),
        PackKind::Index,
        u64::MAX,
        Box::new(move || namer("index")),
    );
    let mut dir_refs: Vec<Option<NodeRef>> = vec![None; walk.dirs.len()];
    let mut next_cache = CacheWriter::new(&cache_identity);
    // A level's directories are built in parallel (their children are done), then
    // stored in order: the same tree always gives the same packs.
    for level in walk.levels.iter().rev() {
        let built = workers.run(|| {
            level
                .clone()
                .into_par_iter()
                .map_init(
                    || Compressor::new(opts.zstd_level),
                    |comp, di| {
                        let comp = comp.as_mut().map_err(|e| {
                            PublishError::Config(format!("compressor for index nodes: {e}"))
                        })?;
                        build_dir(
                            opts,
                            &walk,
                            di,
                            &records,
                            &file_chunks,
                            &dir_refs,
                            &catalog,
                            comp,
                        )
                    },
                )
                .collect::<Result<Vec<_>, _>>()
        })?;
        for (di, built) in level.clone().zip(built) {
            let d = &walk.dirs[di];
            let b = match built {
                Built::Kept(r) => {
                    dir_refs[di] = Some(r);
                    if let Some(record) = &records[di] {
                        next_cache.keep(record);
                    }
                    continue;
                }
                Built::New(b) => b,
            };
            let loc = match catalog.nodes.get(&b.id) {
                Some(l) => *l,
                None => {
                    let stored = match b.stored {
                        Some(st) => st,
                        None => Compressor::new(opts.zstd_level)?.compress(&b.encoded),
                    };
                    let loc = index_packer.add(
                        ObjectKind::Node,
                        b.id.0,
                        stored.codec,
                        b.encoded.len() as u32,
                        &stored.bytes,
                    )?;
                    catalog.nodes.insert(b.id, loc);
                    report.nodes_new += 1;
                    // Kept for the delta walk (a first version has nothing to compare with).
                    if opts.deltas > 0 && prev.is_some() {
                        fresh_nodes.insert(b.id, b.encoded);
                    }
                    loc
                }
            };
            dir_refs[di] = Some(NodeRef { id: b.id, loc });
            next_cache.dir(&d.rel, &b.fingerprint, &b.id, &b.packs, b.nfiles);
            for e in &d.entries {
                if let WalkKind::File(fi) = e.kind {
                    let (name, stat) = (e.name.as_bytes(), &walk.files[fi].stat);
                    match &file_chunks[fi] {
                        Some(FileChunks::Cached(c)) => next_cache.file(name, stat, c.iter()),
                        Some(FileChunks::Read(v)) => next_cache.file(name, stat, v.iter().copied()),
                        None => {}
                    }
                }
            }
        }
    }
    let (index_packs, index_bytes) = index_packer.finish()?;
    pulpdist_failpoint::hit("publish.index_packs");
    let root = dir_refs[0].ok_or_else(|| PublishError::Config("internal: no root".into()))?;

    // Deltas from the last K versions, before the head that lists them.
    let nodes = Nodes {
        fresh: fresh_nodes,
        store,
    };
    let make_deltas = || {
        write_deltas(
            opts,
            prev.as_ref(),
            &nodes,
            &root,
            &data_packs,
            version,
            &tmp_dir,
        )
    };
    // On the chunking threads' budget (`threads`), like the chunking itself.
    let (deltas, delta_reports, delta_bytes) = workers.run(make_deltas)?;
    drop(nodes);

    // The head goes last: everything it names is already in place.
    let now = opts.now.unwrap_or_else(unix_now);
    let mut packs = index_packs;
    packs.extend(data_packs);
    let mut recent = vec![VersionPacks {
        version,
        packs: packs.clone(),
    }];
    if let Some(h) = &prev {
        recent.extend(h.recent.iter().cloned());
    }
    recent.truncate(opts.keep_versions.max(1));
    let head = Head {
        tree: opts.tree.clone(),
        version,
        created: now,
        expires: now.saturating_add(opts.expires_in),
        root,
        params,
        recent,
        extensions: {
            let mut ext = Vec::new();
            if !opts.filter.is_empty() {
                ext.push((
                    pulpdist_format::EXT_FILTER,
                    opts.filter.to_string().into_bytes(),
                ));
            }
            if !deltas.is_empty() {
                ext.push((EXT_DELTAS, encode_deltas(&deltas)));
            }
            ext
        },
    };
    let bytes = head.sign(key).map_err(|source| PublishError::Format {
        object: head_object.clone(),
        source,
    })?;
    pulpdist_failpoint::hit("publish.head");
    store.put_head(
        &opts.tree,
        &bytes,
        prev_head.as_ref(),
        prev.as_ref().map(|h| h.version),
    )?;
    pulpdist_failpoint::hit("publish.head_put");

    // The next publish's cache; an unchanged tree leaves it as it was.
    let next_cache = next_cache.finish();
    if next_cache != old_cache.bytes() {
        // The head is out: a cache that cannot be written costs the next publish a full
        // read, not this version.
        if let Err(e) = cache::save(&cache_path, &next_cache) {
            report.cache_error = Some(e.to_string());
        }
        pulpdist_failpoint::hit("publish.cache");
    }

    report.bytes_stored = data_bytes + index_bytes + delta_bytes;
    report.deltas = delta_reports;
    report.packs = packs;
    report.root = Some(root.id);
    if let Ok(n) = isos.into_inner() {
        report.isos = n.along_extents;
        report.isos_plain = n.plain;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Writes the delta packs of version `version` from each of the last `opts.deltas` distinct
/// trees (their roots: the previous head's, and those its deltas name). An unchanged tree
/// writes nothing and keeps the previous head's deltas.
#[allow(clippy::too_many_arguments)]
fn write_deltas(
    opts: &PublishOptions,
    prev: Option<&Head>,
    nodes: &Nodes<'_>,
    root: &NodeRef,
    data_packs: &[PackInfo],
    version: u64,
    tmp_dir: &Path,
) -> Result<(Vec<DeltaInfo>, Vec<DeltaReport>, u64), PublishError> {
    let (Some(prev), true) = (prev, opts.deltas > 0) else {
        return Ok((Vec::new(), Vec::new(), 0));
    };
    // Deltas of a head written by another publisher build are informational: unreadable
    // ones are dropped, never a reason to fail.
    let prev_deltas = prev.deltas().unwrap_or_default();
    if prev.root.id == root.id {
        // Nothing changed: the previous deltas rebuild this very root.
        return Ok((prev_deltas, Vec::new(), 0));
    }
    // The last K distinct trees (a refresh publish that changed nothing is not a new one):
    // a site is matched by the root it holds, not by its version number.
    let mut froms = vec![(prev.version, prev.root)];
    froms.extend(prev_deltas.iter().map(|d| (d.from_version, d.from_root)));
    froms.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut seen = HashSet::new();
    froms.retain(|(_, r)| seen.insert(r.id));
    froms.truncate(opts.deltas);
    let settings = DeltaSettings {
        level: opts.delta_level,
    };
    let (mut infos, mut reports, mut bytes) = (Vec::new(), Vec::new(), 0);
    for from in froms {
        let mut namer = pack_namer(opts, version);
        let tag = format!("delta-{}", from.0);
        // Packs written since that version: chunks in them are new to a site there.
        let new_packs: HashSet<PackId> = data_packs
            .iter()
            .map(|p| p.id)
            .chain(
                prev.recent
                    .iter()
                    .filter(|v| v.version > from.0)
                    .flat_map(|v| v.packs.iter().map(|p| p.id)),
            )
            .collect();
        let written = crate::delta::write_delta(
            nodes,
            &opts.source,
            root,
            from,
            &new_packs,
            settings,
            tmp_dir.to_path_buf(),
            Box::new(move || namer(&tag)),
        )?;
        let (info, rep) = written;
        if let Some(info) = info {
            bytes += info.size;
            infos.push(info);
        }
        if rep.size > 0 || !rep.skipped.is_empty() {
            reports.push(rep);
        }
    }
    Ok((infos, reports, bytes))
}

fn pack_namer(
    opts: &PublishOptions,
    version: u64,
) -> impl FnMut(&str) -> Result<PackId, PublishError> + Send + 'static {
    let seed = opts.pack_seed.clone();
    let tree = opts.tree.clone();
    let mut n = 0u32;
    move |kind: &str| {
        n += 1;
        match &seed {
            Some(s) => {
                let mut material = s.clone();
                material.extend(format!("/{tree}/{version}/{kind}/{n}").as_bytes());
                Ok(PackId::derived(&material))
            }
            None => PackId::random().map_err(|source| PublishError::Format {
                object: "pack id".into(),
                source,
            }),
        }
    }
}

/// Reads one file, chunks and hashes it, and sends chunks the store lacks (compressed) to
/// the pack writer. Returns the file's chunk list.
/// What happened to the ISO 9660 images of a publish.
#[derive(Debug, Default)]
pub(crate) struct IsoNotes {
    /// Images chunked along their files' extents.
    pub(crate) along_extents: u64,
    /// Images published as plain chunks, with the reason.
    pub(crate) plain: Vec<String>,
}

/// Images smaller than this are not worth asking xorriso about.
const ISO_MIN: u64 = 64 * 1024;

fn chunk_file(
    chunker: &Chunker,
    comp: &mut Compressor,
    path: &Path,
    catalog: &Catalog,
    claimed: &Mutex<HashSet<ChunkId>>,
    tx: &mpsc::SyncSender<NewChunk>,
    isos: &Mutex<IsoNotes>,
) -> Result<Vec<(ChunkId, u32)>, PublishError> {
    let file = File::open(path).at(path)?;
    let size = file.metadata().at(path)?.len();
    let regions = if size >= ISO_MIN && pulpdist_isos::is_iso9660(path).unwrap_or(false) {
        match pulpdist_isos::layout(path) {
            Ok(r) => {
                if let Ok(mut n) = isos.lock() {
                    n.along_extents += 1;
                }
                Some(r)
            }
            Err(e) => {
                if let Ok(mut n) = isos.lock() {
                    n.plain.push(e.to_string());
                }
                None
            }
        }
    } else {
        None
    };
    let mut out = Vec::new();
    let Some(regions) = regions else {
        chunk_stream(
            chunker.stream(file),
            path,
            comp,
            catalog,
            claimed,
            tx,
            &mut out,
        )?;
        return Ok(out);
    };
    // The image in segments: each file's data region cut exactly as the file alone would
    // be, and each gap between them (metadata, padding) cut on its own.
    for (range, _) in pulpdist_isos::template::segments(&regions, size) {
        let mut f = &file;
        f.seek(std::io::SeekFrom::Start(range.start)).at(path)?;
        let stream = chunker.stream(f.take(range.end - range.start));
        chunk_stream(stream, path, comp, catalog, claimed, tx, &mut out)?;
    }
    let total: u64 = out.iter().map(|(_, l)| u64::from(*l)).sum();
    if total != size {
        return Err(PublishError::Config(format!(
            "{}: changed while it was read ({total} of {size} bytes)",
            path.display()
        )));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn chunk_stream<R: std::io::Read>(
    mut stream: pulpdist_chunker::StreamChunks<R>,
    path: &Path,
    comp: &mut Compressor,
    catalog: &Catalog,
    claimed: &Mutex<HashSet<ChunkId>>,
    tx: &mpsc::SyncSender<NewChunk>,
    out: &mut Vec<(ChunkId, u32)>,
) -> Result<(), PublishError> {
    while let Some(data) = stream.next_chunk().at(path)? {
        let id = ChunkId::of(data);
        let raw_len = data.len() as u32;
        out.push((id, raw_len));
        if catalog.chunks.contains_key(&id) {
            continue;
        }
        let fresh = claimed.lock().map(|mut c| c.insert(id)).unwrap_or(false);
        if fresh {
            let stored = comp.compress(data);
            if tx
                .send(NewChunk {
                    id,
                    raw_len,
                    codec: stored.codec,
                    bytes: stored.bytes,
                })
                .is_err()
            {
                return Err(PublishError::Config("pack writer stopped".into()));
            }
        }
    }
    Ok(())
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

/// Builds directory `di`'s node; its subdirectories' nodes are in `dir_refs`.
#[allow(clippy::too_many_arguments)]
fn build_dir(
    opts: &PublishOptions,
    walk: &walk::Walk,
    di: usize,
    records: &[Option<DirRecord<'_>>],
    file_chunks: &[Option<FileChunks<'_>>],
    dir_refs: &[Option<NodeRef>],
    catalog: &Catalog,
    comp: &mut Compressor,
) -> Result<Built, PublishError> {
    let d = &walk.dirs[di];
    let what = || {
        format!(
            "directory '{}' of {}",
            String::from_utf8_lossy(&d.rel),
            opts.source.display()
        )
    };
    let fingerprint = fingerprint(d, &walk.files, dir_refs, &what)?;
    // Unchanged since the last publish: the same node, if the store still has it and
    // every pack its chunks are in, and would name the same copies of them today.
    if let Some(record) = &records[di] {
        let chunks = || record.files().flat_map(|f| f.chunks().iter());
        if record.fingerprint == fingerprint
            && catalog.names_first_copies(&record.packs, chunks().map(|(id, _)| id))
        {
            if let Some(loc) = catalog.nodes.get(&record.node) {
                return Ok(Built::Kept(NodeRef {
                    id: record.node,
                    loc: *loc,
                }));
            }
        }
    }
    let mut entries = Vec::with_capacity(d.entries.len());
    let mut packs = BTreeSet::new();
    let mut nfiles = 0u32;
    for e in &d.entries {
        let kind = match &e.kind {
            WalkKind::File(fi) => {
                nfiles += 1;
                let ids = file_chunks[*fi]
                    .as_ref()
                    .ok_or_else(|| {
                        PublishError::Config(format!("internal: a file of {} not chunked", what()))
                    })?
                    .to_vec();
                let mut chunks = Vec::with_capacity(ids.len());
                for (id, _) in &ids {
                    let loc = *catalog.chunks.get(id).ok_or_else(|| {
                        PublishError::Config(format!(
                            "internal: chunk {id} of {} has no location",
                            what()
                        ))
                    })?;
                    packs.insert(loc.pack);
                    chunks.push(ChunkRef { id: *id, loc });
                }
                let size = ids.iter().map(|(_, l)| u64::from(*l)).sum();
                EntryKind::File { size, chunks }
            }
            WalkKind::Dir(ci) => EntryKind::Dir {
                node: dir_refs[*ci].ok_or_else(|| {
                    PublishError::Config(format!("internal: a child node of {} missing", what()))
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
        return Err(PublishError::Config(format!(
            "{} encodes to {} bytes, above the format's limit of {MAX_NODE_SIZE}",
            what(),
            encoded.len()
        )));
    }
    let id = NodeId::of(&encoded);
    let stored = (!catalog.nodes.contains_key(&id)).then(|| comp.compress(&encoded));
    Ok(Built::New(NewNode {
        fingerprint,
        encoded,
        id,
        stored,
        packs: packs.into_iter().collect(),
        nfiles,
    }))
}

/// The publish's worker threads: `threads` of them (one pool for the whole publish), or
/// rayon's global pool (every core).
struct Workers(Option<rayon::ThreadPool>);

impl Workers {
    fn new(threads: Option<usize>) -> Result<Self, PublishError> {
        threads
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| PublishError::Config(format!("cannot start {n} threads: {e}")))
            })
            .transpose()
            .map(Workers)
    }

    /// Runs `f` with its parallel loops on these workers.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.0 {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
