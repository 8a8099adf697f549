//! A publish, as a pipeline of typed phases. Each module is one phase:
//!
//! 1. [`previous`]: the store's head for the tree, verified → [`previous::Previous`]
//!    (parameters, next version).
//! 2. [`scan`]: the source walked (rsync filter rules applied) while the store's catalog
//!    and the publisher's cache load → each file's chunks reused where its stat is
//!    unchanged. When the tree's summary is sealed to the store's packs and the cache as
//!    they are, the walk runs alone, and [`unchanged`] checks it against the summary: a
//!    tree found unchanged goes straight to the head with the last publish's root.
//! 3. [`chunking`]: the other files read and cut on every core, new chunks compressed
//!    and appended to data packs → [`chunking::DataPacks`].
//! 4. [`index`]: each directory's node built, children before parents, only nodes the
//!    store lacks written → [`index::Index`] (root, index packs, next cache).
//! 5. [`deltas`]: a delta pack from each of the last few trees.
//! 6. [`head`]: the signed head written last (compare-and-swap against the previous
//!    one), then the publisher's cache and the tree's summary.
//!
//! [`publish`] holds the tree's lock around them.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use pulpdist_chunker::Chunker;
use pulpdist_format::delta::DeltaInfo;
use pulpdist_format::{NodeId, NodeRef, PackId, PackInfo, SecretKey};

mod chunking;
mod composite;
mod deltas;
mod head;
mod index;
mod options;
mod previous;
mod refresh;
mod scan;
#[cfg(test)]
mod testkit;
mod unchanged;
mod workers;

pub use options::{PublishOptions, PublishReport, DEFAULT_DELTA_LEVEL, DEFAULT_OLD_DELTA_LEVEL};
pub use refresh::{refresh, RefreshReport};

use crate::error::{IoContext, PublishError};
use crate::store::Store;
use crate::summary::{self, Summary, SummaryDir};
use workers::Workers;

/// What every phase of one publish shares.
struct Run<'a> {
    store: &'a dyn Store,
    opts: &'a PublishOptions,
    workers: Workers,
    /// Where partial packs are written.
    tmp_dir: PathBuf,
    /// The version being written.
    version: u64,
}

/// Publishes `opts.source` as the next version of `opts.tree` in `store`, signed by `key`.
pub fn publish(
    store: &dyn Store,
    key: &SecretKey,
    opts: &PublishOptions,
) -> Result<PublishReport, PublishError> {
    let started = Instant::now();
    let _lock = lock(store, opts)?;
    let workers = Workers::new(opts.threads)?;
    let tmp_dir = tmp_dir(store, opts)?;
    // Under the tree's lock: partial packs a killed publish left behind.
    let stale_parts_removed = crate::packer::remove_stale_parts(&tmp_dir);
    let prev = previous::read(store, key, opts)?;
    if let (Some(created), Some(h)) = (opts.now, &prev.head) {
        if created < h.created {
            return Err(PublishError::CreatedBefore {
                tree: opts.tree.clone(),
                created,
                previous: h.created,
            });
        }
    }
    let run = Run {
        store,
        opts,
        workers,
        tmp_dir,
        version: prev.version,
    };
    let chunker = Chunker::new(prev.params)?;
    let cache = scan::CacheFile::new(opts, prev.params);
    let scanned = scan::scan(&run, &cache)?;
    let walk = scanned.walk;
    if let Some(tree) = scanned
        .summary
        .and_then(|s| unchanged::check(&run, &walk, s))
    {
        let mut report = scan::count(&walk, &tree.unreadable, prev.version, stale_parts_removed);
        report.unchanged = true;
        tracing::info!(tree = %opts.tree, version = prev.version, files = report.files, dirs = report.dirs, "source walked: unchanged since the last publish");
        let root = (tree.root, &tree.reached);
        finish(
            &run,
            key,
            &prev,
            root,
            Default::default(),
            Vec::new(),
            Vec::new(),
            &mut report,
        )?;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let (catalog, old_cache) = match scanned.loaded {
        Some(loaded) => loaded,
        None => scan::load(&run, &cache)?,
    };
    let mut report = scan::count(
        &walk,
        &catalog.unreadable,
        prev.version,
        stale_parts_removed,
    );
    tracing::info!(tree = %opts.tree, version = prev.version, files = report.files, dirs = report.dirs, "source walked");
    let records = scan::records(&walk, &old_cache);
    let mut file_chunks = scan::reuse(&walk, &records, &catalog);
    let data = chunking::chunk_new(
        &run,
        &chunker,
        &walk,
        &catalog,
        &mut file_chunks,
        &mut report,
    )?;
    tracing::info!(
        files_read = report.files_read,
        bytes_read = report.bytes_read,
        chunks_new = report.chunks_new,
        packs = data.packs.len(),
        "changed files read and packed"
    );
    let mut catalog = catalog;
    catalog.chunks.extend(data.locs);
    let keep_fresh = opts.deltas > 0 && prev.head.is_some();
    let images = scan::images(&walk, &records, &file_chunks, &data.images, &opts.source);
    let inputs = index::Inputs {
        walk: &walk,
        records: &records,
        file_chunks: &file_chunks,
        images: &images,
    };
    let mut index = index::build(&run, &inputs, &mut catalog, &cache, keep_fresh, &mut report)?;
    report.bytes_stored = data.bytes + index.bytes;
    (report.isos, report.isos_plain) = (data.isos.along_extents, data.isos.plain);
    let fresh = std::mem::take(&mut index.fresh);
    let index_packs = std::mem::take(&mut index.packs);
    let root = (index.root, &index.reached);
    let deltas = finish(
        &run,
        key,
        &prev,
        root,
        fresh,
        data.packs,
        index_packs,
        &mut report,
    )?;
    // The head is out: a cache that cannot be written costs the next publish a full
    // read, not this version.
    report.cache_error = cache.save(&index.next_cache, old_cache.bytes());
    // The summary is sealed to the packs the catalog was read from and those this
    // publish added, and to the cache just written.
    // (The previous head's deltas, kept by a tree whose root did not change, are not
    // packs this publish added: they may be gone from the store.)
    let kept_deltas = prev.head.as_ref().and_then(|h| h.deltas().ok());
    let kept_deltas: Vec<PackId> = kept_deltas.iter().flatten().map(|d| d.pack).collect();
    let written = deltas.iter().filter(|d| !kept_deltas.contains(&d.pack));
    let added = report.packs.iter().map(|p| (p.id, p.size));
    let added = added.chain(written.map(|d| (d.pack, d.size)));
    let summary = Summary {
        cache: None,
        packs: summary::packs_hash(catalog.listing.iter().copied().chain(added)),
        reached: index.reached,
        unreadable: catalog.unreadable,
        dirs: walk
            .dirs
            .iter()
            .zip(index.dirs)
            .map(|(d, (node, fingerprint))| SummaryDir {
                rel: d.rel.clone(),
                fingerprint,
                node,
            })
            .collect(),
    };
    let sealed = cache.seal(report.cache_error.is_none(), summary);
    report.cache_error = report.cache_error.take().or(sealed);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Phases 5 and 6, the deltas and the head, and what the report says of them; the deltas
/// the head lists.
#[allow(clippy::too_many_arguments)]
fn finish(
    run: &Run<'_>,
    key: &SecretKey,
    prev: &previous::Previous,
    (root, reached): (NodeRef, &BTreeSet<PackId>),
    fresh: HashMap<NodeId, Vec<u8>>,
    data_packs: Vec<PackInfo>,
    index_packs: Vec<PackInfo>,
    report: &mut PublishReport,
) -> Result<Vec<DeltaInfo>, PublishError> {
    let (deltas, delta_reports, delta_bytes) =
        deltas::write(run, prev.head.as_ref(), fresh, &root, &data_packs)?;
    let mut packs = index_packs;
    packs.extend(data_packs);
    tracing::info!(
        nodes_new = report.nodes_new,
        deltas = deltas.len(),
        "index and deltas written"
    );
    report.history_error = head::write(run, key, prev, (root, reached), &packs, &deltas)?;
    tracing::info!(version = prev.version, "head written");
    report.bytes_stored += delta_bytes;
    report.deltas = delta_reports;
    report.packs = packs;
    report.root = Some(root.id);
    Ok(deltas)
}

/// Checks the tree name, makes the state directory and takes the tree's lock (held until
/// the returned lock is dropped): how a publish and a refresh begin.
fn lock(store: &dyn Store, opts: &PublishOptions) -> Result<crate::store::StoreLock, PublishError> {
    pulpdist_format::validate_tree_name(&opts.tree).map_err(|source| PublishError::Format {
        object: "tree name".into(),
        source,
    })?;
    std::fs::create_dir_all(&opts.state_dir).at(&opts.state_dir)?;
    store.lock(&opts.tree, &opts.state_dir)
}

/// Where partial packs go: the store's own temporary directory, or one in the state.
fn tmp_dir(store: &dyn Store, opts: &PublishOptions) -> Result<PathBuf, PublishError> {
    if let Some(d) = store.tmp_dir() {
        return Ok(d);
    }
    let d = opts.state_dir.join("tmp");
    std::fs::create_dir_all(&d).at(&d)?;
    Ok(d)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
