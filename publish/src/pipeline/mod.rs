//! A publish, as a pipeline of typed phases. Each module is one phase:
//!
//! 1. [`previous`]: the store's head for the tree, verified → [`previous::Previous`]
//!    (parameters, next version).
//! 2. [`scan`]: the source walked (rsync filter rules applied) while the store's catalog
//!    and the publisher's cache load → each file's chunks reused where its stat is
//!    unchanged.
//! 3. [`chunking`]: the other files read and cut on every core, new chunks compressed
//!    and appended to data packs → [`chunking::DataPacks`].
//! 4. [`index`]: each directory's node built, children before parents, only nodes the
//!    store lacks written → [`index::Index`] (root, index packs, next cache).
//! 5. [`deltas`]: a delta pack from each of the last few trees.
//! 6. [`head`]: the signed head written last (compare-and-swap against the previous
//!    one), then the publisher's cache.
//!
//! [`publish`] holds the tree's lock around them.

use std::path::PathBuf;
use std::time::Instant;

use pulpdist_chunker::Chunker;
use pulpdist_format::SecretKey;

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
mod workers;

pub use options::{PublishOptions, PublishReport, DEFAULT_DELTA_LEVEL, DEFAULT_OLD_DELTA_LEVEL};
pub use refresh::{refresh, RefreshReport};

use crate::error::{IoContext, PublishError};
use crate::store::Store;
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
    let run = Run {
        store,
        opts,
        workers,
        tmp_dir,
        version: prev.version,
    };
    let chunker = Chunker::new(prev.params)?;
    let cache = scan::CacheFile::new(opts, prev.params);
    let (catalog, old_cache, walk) = scan::scan(&run, &cache)?;
    let mut report = scan::count(&walk, &catalog, prev.version, stale_parts_removed);
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
    let (deltas, delta_reports, delta_bytes) = deltas::write(
        &run,
        prev.head.as_ref(),
        std::mem::take(&mut index.fresh),
        &index.root,
        &data.packs,
    )?;
    let mut packs = std::mem::take(&mut index.packs);
    packs.extend(data.packs);
    tracing::info!(
        nodes_new = report.nodes_new,
        deltas = deltas.len(),
        "index and deltas written"
    );
    let root = (index.root, &index.reached);
    report.history_error = head::write(&run, key, &prev, root, &packs, &deltas)?;
    tracing::info!(version = prev.version, "head written");
    // The head is out: a cache that cannot be written costs the next publish a full
    // read, not this version.
    report.cache_error = cache.save(&index.next_cache, old_cache.bytes());
    report.bytes_stored = data.bytes + index.bytes + delta_bytes;
    report.deltas = delta_reports;
    report.packs = packs;
    report.root = Some(index.root.id);
    (report.isos, report.isos_plain) = (data.isos.along_extents, data.isos.plain);
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
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
