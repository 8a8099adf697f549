//! Phase 2, the scan: the source walked (rsync filter rules applied, entries the format
//! cannot carry counted as skipped) while the store's catalog (where every chunk and node
//! is) and the publisher's cache (each directory and file as the last publish saw it)
//! load; one waits on the file system's metadata, the others mostly on memory. A file
//! whose inode, size and mtime match its cached record keeps its chunk list, if the store
//! still has every chunk.

use std::collections::HashSet;
use std::path::PathBuf;

use pulpdist_format::ChunkParams;

use super::chunking::FileChunks;
use super::{PublishOptions, PublishReport, Run};
use crate::cache::{DirCache, DirRecord};
use crate::catalog::Catalog;
use crate::error::PublishError;
use crate::walk::{self, Walk, WalkKind};

/// The publisher's cache file of a tree, and the identity its content must carry (a tree
/// cut with other parameters invalidates every cached chunk list).
pub(super) struct CacheFile {
    pub(super) path: PathBuf,
    pub(super) identity: Vec<u8>,
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
}

/// Walks the source while the catalog and the cache load.
pub(super) fn scan(
    run: &Run<'_>,
    cache: &CacheFile,
) -> Result<(Catalog, DirCache, Walk), PublishError> {
    let opts = run.opts;
    let (catalog, old_cache, walk) = std::thread::scope(|s| {
        let catalog = s.spawn(|| Catalog::load(run.store, &opts.state_dir));
        let old_cache = DirCache::load(&cache.path, &cache.identity);
        let walk = run.workers.run(|| walk::walk(&opts.source, &opts.filter));
        let catalog = catalog
            .join()
            .map_err(|_| PublishError::Panicked("reading the store's catalog"));
        (catalog, old_cache, walk)
    });
    let catalog = catalog??;
    let walk = walk?;
    pulpdist_failpoint::hit("publish.walked");
    Ok((catalog, old_cache, walk))
}

/// The report's counts of what the walk found.
pub(super) fn count(walk: &Walk, catalog: &Catalog, version: u64, stale: u64) -> PublishReport {
    let symlinks = walk
        .dirs
        .iter()
        .flat_map(|d| d.entries.iter())
        .filter(|e| matches!(e.kind, WalkKind::Symlink(_)))
        .count();
    PublishReport {
        version,
        stale_parts_removed: stale,
        unreadable_packs: catalog.unreadable.clone(),
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
        let (catalog, old, walk) = scan(&run, &cache).expect("scanned");
        let report = count(&walk, &catalog, 2, 0);
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
        let (catalog, old, walk) = scan(&run, &cache).expect("scanned");
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
        let (catalog, old, walk) = scan(&run, &other).expect("scanned");
        let recs = records(&walk, &old);
        assert!(reuse(&walk, &recs, &catalog).iter().all(Option::is_none));
    }
}
