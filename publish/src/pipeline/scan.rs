//! Phase 2, the scan: the source walked (rsync filter rules applied, entries the format
//! cannot carry counted as skipped) while the store's catalog (where every chunk and node
//! is) and the publisher's cache (each directory and file as the last publish saw it)
//! load; one waits on the file system's metadata, the others mostly on memory. A file
//! whose inode, size and change and modification times match its cached record keeps its
//! chunk list, if the store still has every chunk.
//!
//! When the tree's summary is sealed to the store's packs and the cache as they are, the
//! tree may be unchanged: the walk runs alone, and the catalog and the cache load only if
//! the walk finds a change ([`super::unchanged`]).

use std::collections::HashSet;
use std::path::PathBuf;

use pulpdist_format::ChunkParams;

use super::chunking::FileChunks;
use super::{PublishOptions, PublishReport, Run};
use crate::cache::{DirCache, DirRecord};
use crate::catalog::{self, Catalog};
use crate::error::PublishError;
use crate::summary::{self, Summary, SummaryFile};
use crate::walk::{self, Walk, WalkKind};

/// The publisher's cache file of a tree, and the identity its content must carry (a tree
/// cut with other parameters invalidates every cached chunk list); and the tree's summary.
pub(super) struct CacheFile {
    pub(super) path: PathBuf,
    pub(super) identity: Vec<u8>,
    pub(super) summary: SummaryFile,
}

impl CacheFile {
    pub(super) fn new(opts: &PublishOptions, params: ChunkParams) -> Self {
        CacheFile {
            path: opts.state_dir.join(format!("files-{}", opts.tree)),
            identity: format!(
                "tree {} chunks {} {} {}",
                opts.tree, params.min, params.avg, params.max
            )
            .into_bytes(),
            summary: SummaryFile::new(&opts.state_dir, &opts.tree, params, opts.composites),
        }
    }

    /// Writes the next publish's cache, unless it is unchanged; why it failed, if it did.
    pub(super) fn save(&self, next: &[u8], old: &[u8]) -> Option<String> {
        if next == old {
            return None;
        }
        let failed = crate::cache::save(&self.path, next)
            .err()
            .map(|e| e.to_string());
        pulpdist_failpoint::hit("publish.cache");
        failed
    }

    /// Seals `summary` to the cache as it is now, or removes the old summary when the
    /// cache could not be written (`cache_written` false: the next publish is an ordinary
    /// one, and writes the cache). Why the summary could not be written, if it could not.
    pub(super) fn seal(&self, cache_written: bool, mut summary: Summary) -> Option<String> {
        summary.cache = summary::cache_stat(&self.path);
        if !cache_written || summary.cache.is_none() {
            self.summary.remove();
            return None;
        }
        let failed = self.summary.save(&summary).err().map(|e| {
            self.summary.remove();
            e.to_string()
        });
        pulpdist_failpoint::hit("publish.summary");
        failed
    }

    /// The tree's summary, if it is sealed to the store's packs and to this cache as they
    /// are now.
    fn sealed(&self, store: &dyn crate::store::Store) -> Result<Option<Summary>, PublishError> {
        let Some(s) = self.summary.load() else {
            return Ok(None);
        };
        if s.cache.is_none() || s.cache != summary::cache_stat(&self.path) {
            return Ok(None);
        }
        let listing = catalog::listing(store)?;
        Ok((summary::packs_hash(listing.packs) == s.packs).then_some(s))
    }
}

/// What the scan found.
pub(super) struct Scanned {
    pub(super) walk: Walk,
    /// The tree's summary, sealed to the store and the cache as they are: the catalog and
    /// the cache were not loaded.
    pub(super) summary: Option<Summary>,
    /// The catalog and the cache, loaded while the walk ran (there was no sealed summary).
    pub(super) loaded: Option<(Catalog, DirCache)>,
}

/// Walks the source: alone if the tree's summary is sealed to the store and the cache as
/// they are, else while the catalog and the cache load.
pub(super) fn scan(run: &Run<'_>, cache: &CacheFile) -> Result<Scanned, PublishError> {
    let opts = run.opts;
    if let Some(summary) = cache.sealed(run.store)? {
        let walk = run.workers.run(|| walk::walk(&opts.source, &opts.filter))?;
        pulpdist_failpoint::hit("publish.walked");
        return Ok(Scanned {
            walk,
            summary: Some(summary),
            loaded: None,
        });
    }
    let (catalog, old_cache, walk) = load_beside(run, cache, || {
        run.workers.run(|| walk::walk(&opts.source, &opts.filter))
    });
    let catalog = catalog?;
    let walk = walk?;
    pulpdist_failpoint::hit("publish.walked");
    Ok(Scanned {
        walk,
        summary: None,
        loaded: Some((catalog, old_cache)),
    })
}

/// The catalog and the cache, one beside the other, for a tree the summary did not find
/// unchanged.
pub(super) fn load(run: &Run<'_>, cache: &CacheFile) -> Result<(Catalog, DirCache), PublishError> {
    let (catalog, old_cache, ()) = load_beside(run, cache, || ());
    Ok((catalog?, old_cache))
}

/// Loads the catalog on a thread of its own and the cache while `work` runs.
fn load_beside<T: Send>(
    run: &Run<'_>,
    cache: &CacheFile,
    work: impl FnOnce() -> T + Send,
) -> (Result<Catalog, PublishError>, DirCache, T) {
    std::thread::scope(|s| {
        let catalog = s.spawn(|| Catalog::load(run.store, &run.opts.state_dir));
        let old_cache = DirCache::load(&cache.path, &cache.identity);
        let done = work();
        let catalog = catalog
            .join()
            .unwrap_or(Err(PublishError::Panicked("reading the store's catalog")));
        (catalog, old_cache, done)
    })
}

/// The scan, and the catalog and the cache whether the scan loaded them or not.
#[cfg(test)]
pub(super) fn scan_all(run: &Run<'_>, cache: &CacheFile) -> (Catalog, DirCache, Walk) {
    let scanned = scan(run, cache).expect("scanned");
    let (catalog, old) = match scanned.loaded {
        Some(loaded) => loaded,
        None => load(run, cache).expect("loaded"),
    };
    (catalog, old, scanned.walk)
}

/// The report's counts of what the walk found; `unreadable`: the packs the catalog could
/// not read.
pub(super) fn count(walk: &Walk, unreadable: &[String], version: u64, stale: u64) -> PublishReport {
    let symlinks = walk
        .dirs
        .iter()
        .flat_map(|d| d.entries.iter())
        .filter(|e| matches!(e.kind, WalkKind::Symlink(_)))
        .count();
    PublishReport {
        version,
        stale_parts_removed: stale,
        unreadable_packs: unreadable.to_vec(),
        dirs: walk.dirs.len() as u64,
        symlinks: symlinks as u64,
        files: walk.files.len() as u64,
        bytes_total: walk.files.iter().map(|f| f.stat.size).sum(),
        skipped: walk.skipped.clone(),
        ..Default::default()
    }
}

/// Each walked directory's record from the last publish.
pub(super) fn records<'c>(walk: &Walk, cache: &'c DirCache) -> Vec<Option<DirRecord<'c>>> {
    walk.dirs.iter().map(|d| cache.dir(&d.rel)).collect()
}

/// The chunk list of every file unchanged since the last publish (`None`: to be read).
pub(super) fn reuse<'c>(
    walk: &Walk,
    records: &[Option<DirRecord<'c>>],
    catalog: &Catalog,
) -> Vec<Option<FileChunks<'c>>> {
    let mut file_chunks: Vec<Option<FileChunks<'_>>> = Vec::new();
    file_chunks.resize_with(walk.files.len(), || None);
    for (d, record) in walk.dirs.iter().zip(records) {
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
            let present = || {
                c.chunks()
                    .iter()
                    .all(|(id, _)| catalog.chunks.contains_key(&id))
            };
            if c.stat.unchanged(&walk.files[fi].stat, c.legacy) && (packs_readable || present()) {
                file_chunks[fi] = Some(FileChunks::Cached(c.chunks()));
            }
        }
    }
    file_chunks
}

/// Whether each file is an ISO image cut along its files' extents: for a file read now,
/// what the chunking found (`read_images`); for a cached one, its record's flag (a cache
/// written before the flag: whether it is an ISO 9660 image, read from its header).
pub(super) fn images(
    walk: &Walk,
    records: &[Option<DirRecord<'_>>],
    file_chunks: &[Option<FileChunks<'_>>],
    read_images: &HashSet<usize>,
    source: &std::path::Path,
) -> Vec<bool> {
    let mut images = read_images
        .iter()
        .fold(vec![false; walk.files.len()], |mut v, &fi| {
            v[fi] = true;
            v
        });
    for (d, record) in walk.dirs.iter().zip(records) {
        // A directory that held no image when last built has a real fingerprint (one that
        // held an image has zeros, so that it is built again): its cached files are not
        // images, and its records need not be read (most of an unchanged tree).
        let Some(record) = record
            .as_ref()
            .filter(|r| !r.current() || r.fingerprint == [0; 32])
        else {
            continue;
        };
        let mut cached = record.files().peekable();
        for e in &d.entries {
            let WalkKind::File(fi) = e.kind else { continue };
            if !matches!(file_chunks[fi], Some(FileChunks::Cached(_))) {
                continue;
            }
            let name = e.name.as_bytes();
            while cached.next_if(|c| c.name < name).is_some() {}
            let Some(c) = cached.next_if(|c| c.name == name) else {
                continue;
            };
            let f = &walk.files[fi];
            images[fi] = c.image.unwrap_or_else(|| {
                f.stat.size >= super::chunking::ISO_MIN
                    && pulpdist_isos::is_iso9660(&walk.path(source, f)).unwrap_or(false)
            });
        }
    }
    images
}

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;

    #[test]
    fn unchanged_files_keep_their_chunks_and_a_touched_one_is_read_again() {
        let site = testkit::site();
        site.publish();
        let run = site.run(2);
        let cache = CacheFile::new(&site.opts, ChunkParams::DEFAULT);
        let (catalog, old, walk) = scan_all(&run, &cache);
        let report = count(&walk, &catalog.unreadable, 2, 0);
        let counts = (
            report.files,
            report.dirs,
            report.symlinks,
            report.bytes_total,
        );
        assert_eq!(counts, (2, 2, 1, 300_005));
        let recs = records(&walk, &old);
        assert!(reuse(&walk, &recs, &catalog).iter().all(Option::is_some));
        let when = filetime::FileTime::from_unix_time(5, 0);
        filetime::set_file_mtime(site.src().join("a.txt"), when).expect("touched");
        let (catalog, old, walk) = scan_all(&run, &cache);
        let recs = records(&walk, &old);
        let reused = reuse(&walk, &recs, &catalog);
        assert_eq!(reused.iter().filter(|c| c.is_none()).count(), 1);
        // Other chunk parameters: nothing in the cache holds.
        let other = CacheFile::new(
            &site.opts,
            ChunkParams {
                min: 4096,
                avg: 16384,
                max: 65536,
            },
        );
        let (catalog, old, walk) = scan_all(&run, &other);
        let recs = records(&walk, &old);
        assert!(reuse(&walk, &recs, &catalog).iter().all(Option::is_none));
    }
}
