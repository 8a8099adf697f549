//! Phase 3, the chunking pipeline: the files the cache could not vouch for are read and
//! cut on every core (an ISO 9660 image along its files' extents, so that each file inside
//! cuts as it would alone); a chunk the store lacks is compressed on the worker, and a
//! file's new chunks are sent to this thread together (in pieces of at most
//! [`RUN_BYTES`]), which appends each piece to the data packs whole. So a file's new
//! chunks lie together in runs whatever the workers did at the same time, and a site that
//! lacks that file fetches it in a range per run, one for most files (when they alternated
//! chunk by chunk, one file of 81 chunks took from 26 to 50 requests by thread timing).
//! Each new chunk is claimed once, so two files sharing it store it once.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use rayon::prelude::*;

use pulpdist_chunker::{Chunker, Compressor};
use pulpdist_format::pack::ObjectKind;
use pulpdist_format::{ChunkId, Codec, Location, PackInfo, PackKind};

use super::workers::pack_namer;
use super::{PublishReport, Run};
use crate::cache::CachedChunks;
use crate::catalog::Catalog;
use crate::error::{IoContext, PublishError};
use crate::packer::Packer;
use crate::walk::Walk;

/// A file's chunks: id and length, in order.
pub(super) type ChunkList = Vec<(ChunkId, u32)>;

/// A file's chunks: from the cache (the file is unchanged) or just read.
pub(super) enum FileChunks<'a> {
    Cached(CachedChunks<'a>),
    Read(ChunkList),
}

impl FileChunks<'_> {
    pub(super) fn to_vec(&self) -> ChunkList {
        match self {
            FileChunks::Cached(c) => c.iter().collect(),
            FileChunks::Read(v) => v.clone(),
        }
    }
}

struct NewChunk {
    id: ChunkId,
    raw_len: u32,
    codec: Codec,
    bytes: Vec<u8>,
}

/// What the chunking phase wrote.
pub(super) struct DataPacks {
    /// The data packs, closed.
    pub(super) packs: Vec<PackInfo>,
    /// Their bytes.
    pub(super) bytes: u64,
    /// Where each new chunk is.
    pub(super) locs: HashMap<ChunkId, Location>,
    /// What happened to the ISO images among the files read.
    pub(super) isos: IsoNotes,
}

/// Reads every file `file_chunks` lacks, fills in its chunk list, and stores the new chunks.
pub(super) fn chunk_new(
    run: &Run<'_>,
    chunker: &Chunker,
    walk: &Walk,
    catalog: &Catalog,
    file_chunks: &mut [Option<FileChunks<'_>>],
    report: &mut PublishReport,
) -> Result<DataPacks, PublishError> {
    let to_read: Vec<usize> = (0..walk.files.len())
        .filter(|&i| file_chunks[i].is_none())
        .collect();
    let mut namer = pack_namer(run.opts, run.version);
    let mut packer = Packer::new(
        run.store,
        run.tmp_dir.clone(),
        PackKind::Data,
        run.opts.pack_target,
        Box::new(move || namer("data")),
    );
    let claimed: Mutex<HashSet<ChunkId>> = Mutex::new(HashSet::new());
    let isos = Mutex::new(IsoNotes::default());
    // Each message up to RUN_BYTES: at most a few in flight.
    let (tx, rx) = mpsc::sync_channel::<Vec<NewChunk>>(4);
    let mut locs = HashMap::new();
    let readers = Readers {
        run,
        chunker,
        walk,
        catalog,
        claimed: &claimed,
        isos: &isos,
    };
    let read = std::thread::scope(|s| -> Result<Vec<(usize, ChunkList)>, PublishError> {
        let (to_read, readers) = (&to_read, &readers);
        let worker = s.spawn(move || {
            // The pool is installed here, on the thread that runs the parallel loop.
            let r = run.workers.run(|| readers.read_all(to_read, &tx));
            drop(tx);
            r
        });
        let mut write_err = None;
        for c in rx.iter().flatten() {
            if write_err.is_some() {
                continue;
            }
            report.chunks_new += 1;
            report.bytes_new += u64::from(c.raw_len);
            match packer.add(ObjectKind::Chunk, c.id.0, c.codec, c.raw_len, &c.bytes) {
                Ok(loc) => _ = locs.insert(c.id, loc),
                Err(e) => write_err = Some(e),
            }
        }
        let results = worker
            .join()
            .map_err(|_| PublishError::Panicked("a chunking worker"))?;
        match write_err {
            Some(e) => Err(e),
            None => results,
        }
    })?;
    for (i, chunks) in read {
        report.files_read += 1;
        report.bytes_read += chunks.iter().map(|(_, l)| u64::from(*l)).sum::<u64>();
        file_chunks[i] = Some(FileChunks::Read(chunks));
    }
    let (packs, bytes) = packer.finish()?;
    pulpdist_failpoint::hit("publish.data_packs");
    let isos = isos.into_inner().unwrap_or_default();
    Ok(DataPacks {
        packs,
        bytes,
        locs,
        isos,
    })
}

/// What the chunking workers share.
struct Readers<'a> {
    run: &'a Run<'a>,
    chunker: &'a Chunker,
    walk: &'a Walk,
    catalog: &'a Catalog,
    claimed: &'a Mutex<HashSet<ChunkId>>,
    isos: &'a Mutex<IsoNotes>,
}

impl Readers<'_> {
    /// Reads the files `to_read` (indexes into the walk's files) in parallel.
    fn read_all(
        &self,
        to_read: &[usize],
        tx: &mpsc::SyncSender<Vec<NewChunk>>,
    ) -> Result<Vec<(usize, ChunkList)>, PublishError> {
        let level = self.run.opts.zstd_level;
        let progress = &self.run.opts.progress;
        let bytes = to_read.iter().map(|&i| self.walk.files[i].stat.size).sum();
        progress.start("read", to_read.len() as u64, bytes);
        let read = to_read
            .par_iter()
            .map_init(
                || Compressor::new(level),
                |comp, &i| {
                    let comp = comp.as_mut().map_err(|e| PublishError::Compressor {
                        what: "chunks",
                        detail: e.to_string(),
                    })?;
                    let path = self.walk.path(&self.run.opts.source, &self.walk.files[i]);
                    let (catalog, claimed) = (self.catalog, self.claimed);
                    let chunks =
                        chunk_file(self.chunker, comp, &path, catalog, claimed, tx, self.isos)?;
                    progress.advance(1, self.walk.files[i].stat.size);
                    Ok((i, chunks))
                },
            )
            .collect();
        progress.finish();
        read
    }
}

/// What happened to the ISO 9660 images of a publish.
#[derive(Debug, Default)]
pub(super) struct IsoNotes {
    /// Images chunked along their files' extents.
    pub(super) along_extents: u64,
    /// Images published as plain chunks, with the reason.
    pub(super) plain: Vec<String>,
}

/// Images smaller than this are not worth asking xorriso about.
const ISO_MIN: u64 = 64 * 1024;

/// Reads one file, chunks and hashes it, and sends chunks the store lacks (compressed) to
/// the pack writer. Returns the file's chunk list.
fn chunk_file(
    chunker: &Chunker,
    comp: &mut Compressor,
    path: &Path,
    catalog: &Catalog,
    claimed: &Mutex<HashSet<ChunkId>>,
    tx: &mpsc::SyncSender<Vec<NewChunk>>,
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
    let mut run = Pending::default();
    let Some(regions) = regions else {
        chunk_stream(
            chunker.stream(file),
            path,
            comp,
            catalog,
            claimed,
            (tx, &mut run),
            &mut out,
        )?;
        run.send(tx)?;
        return Ok(out);
    };
    // The image in segments: each file's data region cut exactly as the file alone would
    // be, and each gap between them (metadata, padding) cut on its own.
    for (range, _) in pulpdist_isos::template::segments(&regions, size) {
        let mut f = &file;
        f.seek(std::io::SeekFrom::Start(range.start)).at(path)?;
        let stream = chunker.stream(f.take(range.end - range.start));
        chunk_stream(
            stream,
            path,
            comp,
            catalog,
            claimed,
            (tx, &mut run),
            &mut out,
        )?;
    }
    run.send(tx)?;
    let total: u64 = out.iter().map(|(_, l)| u64::from(*l)).sum();
    if total != size {
        return Err(PublishError::Source {
            path: path.to_path_buf(),
            reason: format!("changed while it was read ({total} of {size} bytes)"),
        });
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
    (tx, run): (&mpsc::SyncSender<Vec<NewChunk>>, &mut Pending),
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
            run.push(
                NewChunk {
                    id,
                    raw_len,
                    codec: stored.codec,
                    bytes: stored.bytes,
                },
                tx,
            )?;
        }
    }
    Ok(())
}

/// A file's new chunks on their way to the pack writer: sent together, in runs of about
/// [`RUN_BYTES`], and the rest once the file is read.
#[derive(Default)]
struct Pending {
    chunks: Vec<NewChunk>,
    bytes: usize,
}

impl Pending {
    fn push(
        &mut self,
        c: NewChunk,
        tx: &mpsc::SyncSender<Vec<NewChunk>>,
    ) -> Result<(), PublishError> {
        self.bytes += c.bytes.len();
        self.chunks.push(c);
        if self.bytes >= RUN_BYTES {
            self.send(tx)?;
        }
        Ok(())
    }

    fn send(&mut self, tx: &mpsc::SyncSender<Vec<NewChunk>>) -> Result<(), PublishError> {
        self.bytes = 0;
        if self.chunks.is_empty() {
            return Ok(());
        }
        tx.send(std::mem::take(&mut self.chunks))
            .map_err(|_| PublishError::Internal("the pack writer stopped".into()))
    }
}

/// A file's new chunks go to the pack writer in runs of about this many stored bytes
/// (memory: one run per worker and four in the channel, 8 MiB each: 544 MiB with 64
/// threads; runs of 4 MiB cut that in half, but a 12 MB file of the debs benchmark then
/// took 9 or 10 requests and 26.2 to 28.6 MB, against 9 and 26.2 MB every run).
const RUN_BYTES: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;

    #[test]
    fn a_chunk_two_files_share_is_stored_once_and_known_chunks_not_again() {
        let site = testkit::site();
        std::fs::write(site.src().join("copy.bin"), vec![7u8; 300_000]).expect("copy");
        let run = site.run(1);
        let walk = crate::walk::walk(site.src(), &site.opts.filter).expect("walked");
        let catalog = Catalog::load(&site.store, &site.opts.state_dir).expect("catalog");
        let chunker = Chunker::new(pulpdist_format::ChunkParams::DEFAULT).expect("chunker");
        let mut chunks: Vec<Option<FileChunks<'_>>> = vec![None, None, None];
        let mut report = PublishReport::default();
        let data =
            chunk_new(&run, &chunker, &walk, &catalog, &mut chunks, &mut report).expect("chunked");
        assert_eq!(report.files_read, 3);
        // 300,000 equal bytes cut into equal chunks: each distinct chunk stored once.
        let distinct: HashSet<ChunkId> = chunks
            .iter()
            .flat_map(|c| c.as_ref().expect("read").to_vec())
            .map(|(id, _)| id)
            .collect();
        assert_eq!(report.chunks_new as usize, distinct.len());
        assert_eq!(data.locs.len(), distinct.len());
        assert_eq!(data.packs.len(), 1);
        // With those chunks in the catalog, reading the files again stores nothing.
        let mut catalog = catalog;
        catalog.chunks.extend(data.locs);
        let mut again: Vec<Option<FileChunks<'_>>> = vec![None, None, None];
        let mut report = PublishReport::default();
        let data =
            chunk_new(&run, &chunker, &walk, &catalog, &mut again, &mut report).expect("chunked");
        assert_eq!((report.chunks_new, data.packs.len()), (0, 0));
    }
}
