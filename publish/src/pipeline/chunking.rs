//! Phase 3, the chunking pipeline: the files the cache could not vouch for are read and
//! cut on every core (an ISO 9660 image along its files' extents, so that each file inside
//! cuts as it would alone); a chunk the store lacks is compressed on the worker, and a
//! file's new chunks are sent to this thread together (in pieces of at most
//! [`RUN_BYTES`]), which appends them to the data packs in the order of the files
//! ([`InOrder`]), whatever the workers did at the same time. So a file's new chunks lie
//! together, and a site that lacks that file fetches it in a range per run (when they
//! alternated chunk by chunk, one file of 81 chunks took from 26 to 50 requests by thread
//! timing); and the same files give the same packs on any number of threads, byte for
//! byte. A chunk two files share is stored once, with the first of them.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, PoisonError};

use pulpdist_chunker::{Chunker, Compressor};
use pulpdist_format::pack::ObjectKind;
use pulpdist_format::{ChunkId, Codec, Location, PackInfo, PackKind};

use super::{PublishReport, Run};
use crate::cache::CachedChunks;
use crate::catalog::Catalog;
use crate::error::{IoContext, PublishError};
use crate::packer::{Naming, Packer};
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
    /// The files read that were cut as ISO images along their files' extents.
    pub(super) images: HashSet<usize>,
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
    let mut packer = Packer::new(
        run.store,
        run.tmp_dir.clone(),
        PackKind::Data,
        run.opts.pack_target,
        Naming::Content,
    );
    let claimed = Mutex::new(HashMap::new());
    let isos = Mutex::new(IsoNotes::default());
    // Each piece up to RUN_BYTES: at most a few in flight.
    let (tx, rx) = mpsc::sync_channel::<Piece>(4);
    let mut order = InOrder::new(&mut packer, run.tmp_dir.clone());
    let gate = Gate::default();
    let readers = Readers {
        run,
        chunker,
        walk,
        catalog,
        claimed: &claimed,
        isos: &isos,
        gate: &gate,
    };
    let read = std::thread::scope(|s| -> Result<Vec<(usize, ChunkList, bool)>, PublishError> {
        let (to_read, readers) = (&to_read, &readers);
        let worker = s.spawn(move || {
            // The pool is installed here, on the thread that runs the parallel loop.
            let r = run.workers.run(|| readers.read_all(to_read, &tx));
            drop(tx);
            r
        });
        // A panic here stops the workers, and drops the channel's end (they stop sending).
        let _stop = StopOnPanic(&gate);
        let mut write_err = None;
        for piece in rx {
            if write_err.is_none() {
                write_err = order.take(piece).err();
                match write_err {
                    // The workers read no further file: the publish fails anyway.
                    Some(_) => gate.stop(),
                    None => gate.held(order.held_bytes),
                }
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
    let placed = order.finish(to_read.len())?;
    report.chunks_new += placed.len() as u64;
    report.bytes_new += placed.values().map(|l| u64::from(l.raw_len)).sum::<u64>();
    let mut images = HashSet::new();
    for (i, chunks, image) in read {
        if image {
            images.insert(i);
        }
        report.files_read += 1;
        report.bytes_read += chunks.iter().map(|(_, l)| u64::from(*l)).sum::<u64>();
        file_chunks[i] = Some(FileChunks::Read(chunks));
    }
    let done = packer.finish()?;
    // The packs' names are known now: every location named a placeholder.
    let locs = placed
        .into_iter()
        .map(|(id, loc)| (id, done.locate(loc)))
        .collect::<HashMap<_, _>>();
    let (packs, bytes) = (done.packs, done.stored_bytes);
    pulpdist_failpoint::hit("publish.data_packs");
    let mut isos = isos.into_inner().unwrap_or_default();
    isos.plain.sort();
    Ok(DataPacks {
        packs,
        bytes,
        locs,
        isos,
        images,
    })
}

/// A piece of one file's new chunks; `file` is the file's place in the order of reading.
struct Piece {
    file: usize,
    chunks: Vec<NewChunk>,
    /// The file's last piece (possibly empty: every file read sends one).
    last: bool,
}

/// The pack writer's side of the chunking: appends the files' new chunks to the packs in
/// the order of the files, whatever order their pieces arrive in. A piece that arrives
/// before its turn is held: in memory up to [`HOLD_BYTES`], then in an unnamed temporary
/// file beside the packs, which is gone when the publish ends, however it ends, and whose
/// blocks are freed as its chunks are written. While one worker reads a large file, the
/// others read on and their files are held, until [`HELD_MAX`] is held: then they start no
/// further file (so at most that, plus the rest of the files being read then, is held).
struct InOrder<'p, 'a> {
    packer: &'p mut Packer<'a>,
    tmp_dir: PathBuf,
    /// The file whose pieces are written as they come.
    next: usize,
    /// Pieces of later files, and whether each file's last piece is among them.
    held: BTreeMap<usize, (Vec<Held>, bool)>,
    in_memory: usize,
    /// At most this many held bytes in memory ([`HOLD_BYTES`]).
    hold_limit: usize,
    /// The temporary file and its end (emptied whenever nothing is held).
    spill: Option<(File, u64)>,
    /// Bytes held, in memory and in the file.
    held_bytes: u64,
    /// Where each chunk written is; a chunk is written once, with its first file.
    locs: HashMap<ChunkId, Location>,
}

/// A chunk held until its file's turn.
struct Held {
    id: ChunkId,
    raw_len: u32,
    codec: Codec,
    bytes: HeldBytes,
}

enum HeldBytes {
    Memory(Vec<u8>),
    Spilled { at: u64, len: usize },
}

/// Held pieces kept in memory, at most; the rest go to a temporary file.
const HOLD_BYTES: usize = 64 << 20;

/// Once this many bytes are held, no worker starts another file until the writer has
/// caught up below it (the files being read still finish).
const HELD_MAX: u64 = 1 << 30;

impl<'p, 'a> InOrder<'p, 'a> {
    fn new(packer: &'p mut Packer<'a>, tmp_dir: PathBuf) -> Self {
        InOrder {
            packer,
            tmp_dir,
            next: 0,
            held: BTreeMap::new(),
            in_memory: 0,
            hold_limit: HOLD_BYTES,
            spill: None,
            held_bytes: 0,
            locs: HashMap::new(),
        }
    }

    fn take(&mut self, piece: Piece) -> Result<(), PublishError> {
        if piece.file == self.next {
            for c in piece.chunks {
                self.write(c.id, c.raw_len, c.codec, &c.bytes)?;
            }
            if piece.last {
                self.next += 1;
                self.drain()?;
            }
            return Ok(());
        }
        let mut held = Vec::with_capacity(piece.chunks.len());
        for c in piece.chunks {
            held.push(self.hold(c)?);
        }
        let entry = self.held.entry(piece.file).or_default();
        entry.0.extend(held);
        entry.1 |= piece.last;
        Ok(())
    }

    /// Writes the held pieces whose turn has come.
    fn drain(&mut self) -> Result<(), PublishError> {
        while let Some((chunks, last)) = self.held.remove(&self.next) {
            for h in chunks {
                let bytes = match h.bytes {
                    HeldBytes::Memory(b) => {
                        self.in_memory -= b.len();
                        b
                    }
                    HeldBytes::Spilled { at, len } => self.unspill(at, len)?,
                };
                self.held_bytes -= bytes.len() as u64;
                self.write(h.id, h.raw_len, h.codec, &bytes)?;
            }
            if !last {
                // The rest of this file is still on its way; it is written as it comes.
                break;
            }
            self.next += 1;
        }
        // Nothing spilled is held any more: the file starts again from empty.
        if self.held_bytes == self.in_memory as u64 {
            if let Some((file, end)) = &mut self.spill {
                file.set_len(0).at(&self.tmp_dir)?;
                *end = 0;
            }
        }
        Ok(())
    }

    fn write(
        &mut self,
        id: ChunkId,
        raw_len: u32,
        codec: Codec,
        bytes: &[u8],
    ) -> Result<(), PublishError> {
        if let Entry::Vacant(v) = self.locs.entry(id) {
            v.insert(
                self.packer
                    .add(ObjectKind::Chunk, id.0, codec, raw_len, bytes)?,
            );
        }
        Ok(())
    }

    fn hold(&mut self, c: NewChunk) -> Result<Held, PublishError> {
        self.held_bytes += c.bytes.len() as u64;
        let bytes = if self.in_memory + c.bytes.len() <= self.hold_limit {
            self.in_memory += c.bytes.len();
            HeldBytes::Memory(c.bytes)
        } else {
            let (file, end) = match &mut self.spill {
                Some(s) => s,
                None => {
                    let f = tempfile::tempfile_in(&self.tmp_dir).at(&self.tmp_dir)?;
                    self.spill.insert((f, 0))
                }
            };
            file.write_all_at(&c.bytes, *end).at(&self.tmp_dir)?;
            let at = *end;
            *end += c.bytes.len() as u64;
            HeldBytes::Spilled {
                at,
                len: c.bytes.len(),
            }
        };
        Ok(Held {
            id: c.id,
            raw_len: c.raw_len,
            codec: c.codec,
            bytes,
        })
    }

    fn unspill(&self, at: u64, len: usize) -> Result<Vec<u8>, PublishError> {
        let Some((file, _)) = &self.spill else {
            return Err(PublishError::Internal(
                "a held chunk without its file".into(),
            ));
        };
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, at).at(&self.tmp_dir)?;
        // Its blocks go back to the file system at once (where it can punch holes): the
        // file takes the disk of what is held, not of everything that passed through it.
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        let _ = rustix::fs::fallocate(file, flags, at, len as u64);
        Ok(bytes)
    }

    /// The chunks written, once every one of `files` files has sent its last piece.
    fn finish(self, files: usize) -> Result<HashMap<ChunkId, Location>, PublishError> {
        if self.next != files || !self.held.is_empty() {
            return Err(PublishError::Internal(format!(
                "the pack writer stopped at file {} of {files}",
                self.next
            )));
        }
        Ok(self.locs)
    }
}

/// What the chunking workers share.
struct Readers<'a> {
    run: &'a Run<'a>,
    chunker: &'a Chunker,
    walk: &'a Walk,
    catalog: &'a Catalog,
    claimed: &'a Claims,
    isos: &'a Mutex<IsoNotes>,
    gate: &'a Gate,
}

/// Stops the workers if the thread that holds it panics.
struct StopOnPanic<'g>(&'g Gate);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop();
        }
    }
}

/// Between the pack writer and the workers: how much the writer holds, and whether the
/// workers are to stop. A worker waits before it starts another file while more than
/// [`HELD_MAX`] is held; the worker on the file the writer waits for never waits there
/// (it is within that file), so the writer always catches up.
#[derive(Default)]
struct Gate {
    held: Mutex<u64>,
    caught_up: Condvar,
    stop: AtomicBool,
    /// Times a worker began to wait.
    waits: AtomicUsize,
}

impl Gate {
    fn held(&self, bytes: u64) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let less = bytes < *held;
        *held = bytes;
        if less {
            self.caught_up.notify_all();
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        self.caught_up.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits while too much is held; whether to go on (not stopped).
    fn may_start_a_file(&self) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if *held > HELD_MAX && !self.stopped() {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        while *held > HELD_MAX && !self.stopped() {
            held = self
                .caught_up
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        !self.stopped()
    }
}

/// Each new chunk, and the first file (in the order of reading) that sent it: a later file
/// does not send it again, an earlier one does.
type Claims = Mutex<HashMap<ChunkId, usize>>;

impl Readers<'_> {
    /// Reads the files `to_read` (indexes into the walk's files) in parallel: each worker
    /// takes the next file in that order.
    fn read_all(
        &self,
        to_read: &[usize],
        tx: &mpsc::SyncSender<Piece>,
    ) -> Result<Vec<(usize, ChunkList, bool)>, PublishError> {
        let level = self.run.opts.zstd_level;
        let progress = &self.run.opts.progress;
        let bytes = to_read.iter().map(|&i| self.walk.files[i].stat.size).sum();
        progress.start("read", to_read.len() as u64, bytes);
        let next = AtomicUsize::new(0);
        let per_worker = rayon::broadcast(|_| {
            // A worker that panics never sends its file's last piece: the others must not
            // wait for the writer, which waits for that file.
            let _stop = StopOnPanic(self.gate);
            let mut comp = Compressor::new(level).map_err(|e| PublishError::Compressor {
                what: "chunks",
                detail: e.to_string(),
            })?;
            let mut done = Vec::new();
            while self.gate.may_start_a_file() {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = to_read.get(k) else {
                    break;
                };
                let path = self.walk.path(&self.run.opts.source, &self.walk.files[i]);
                let run = (tx, Pending::new(k));
                match chunk_file(self, &mut comp, &path, run) {
                    Ok((chunks, image)) => done.push((i, chunks, image)),
                    Err(e) => {
                        self.gate.stop();
                        return Err(e);
                    }
                }
                progress.advance(1, self.walk.files[i].stat.size);
            }
            Ok(done)
        });
        progress.finish();
        let mut read = Vec::with_capacity(to_read.len());
        for r in per_worker {
            read.extend(r?);
        }
        Ok(read)
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
pub(super) const ISO_MIN: u64 = 64 * 1024;

/// Reads one file, chunks and hashes it, and sends chunks the store lacks (compressed) to
/// the pack writer. Returns the file's chunk list, and whether it was cut as an image.
fn chunk_file(
    readers: &Readers<'_>,
    comp: &mut Compressor,
    path: &Path,
    (tx, mut run): (&mpsc::SyncSender<Piece>, Pending),
) -> Result<(ChunkList, bool), PublishError> {
    let (chunker, isos) = (readers.chunker, readers.isos);
    let (catalog, claimed) = (readers.catalog, readers.claimed);
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
    // An image in segments: each file's data region cut exactly as the file alone would
    // be, and each gap between them (metadata, padding) cut on its own. Any other file in
    // one piece, to its end.
    let segments: Vec<Option<std::ops::Range<u64>>> = match &regions {
        Some(r) => pulpdist_isos::template::segments(r, size)
            .into_iter()
            .map(|(range, _)| Some(range))
            .collect(),
        None => vec![None],
    };
    let mut out = Vec::new();
    for segment in segments {
        let mut f = &file;
        let reader: Box<dyn Read + '_> = match segment {
            Some(range) => {
                f.seek(std::io::SeekFrom::Start(range.start)).at(path)?;
                Box::new(f.take(range.end - range.start))
            }
            None => Box::new(f),
        };
        let stream = chunker.stream(reader);
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
    run.send(tx, true)?;
    if regions.is_none() {
        return Ok((out, false));
    }
    let total: u64 = out.iter().map(|(_, l)| u64::from(*l)).sum();
    if total != size {
        return Err(PublishError::Source {
            path: path.to_path_buf(),
            reason: format!("changed while it was read ({total} of {size} bytes)"),
        });
    }
    Ok((out, true))
}

#[allow(clippy::too_many_arguments)]
fn chunk_stream<R: std::io::Read>(
    mut stream: pulpdist_chunker::StreamChunks<R>,
    path: &Path,
    comp: &mut Compressor,
    catalog: &Catalog,
    claimed: &Claims,
    (tx, run): (&mpsc::SyncSender<Piece>, &mut Pending),
    out: &mut Vec<(ChunkId, u32)>,
) -> Result<(), PublishError> {
    while let Some(data) = stream.next_chunk().at(path)? {
        let id = ChunkId::of(data);
        let raw_len = data.len() as u32;
        out.push((id, raw_len));
        if catalog.chunks.contains_key(&id) {
            continue;
        }
        // Sent unless an earlier file (or this one) did: the writer keeps the first.
        let first = claimed
            .lock()
            .map(|mut c| match c.entry(id) {
                Entry::Vacant(v) => {
                    v.insert(run.file);
                    true
                }
                Entry::Occupied(mut o) if *o.get() > run.file => {
                    o.insert(run.file);
                    true
                }
                Entry::Occupied(_) => false,
            })
            .unwrap_or(true);
        if first {
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
struct Pending {
    /// The file's place in the order of reading.
    file: usize,
    chunks: Vec<NewChunk>,
    bytes: usize,
}

impl Pending {
    fn new(file: usize) -> Self {
        Pending {
            file,
            chunks: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, c: NewChunk, tx: &mpsc::SyncSender<Piece>) -> Result<(), PublishError> {
        self.bytes += c.bytes.len();
        self.chunks.push(c);
        if self.bytes >= RUN_BYTES {
            self.send(tx, false)?;
        }
        Ok(())
    }

    /// Sends what is pending; `last`: the file is read (sent even when empty).
    fn send(&mut self, tx: &mpsc::SyncSender<Piece>, last: bool) -> Result<(), PublishError> {
        self.bytes = 0;
        if self.chunks.is_empty() && !last {
            return Ok(());
        }
        let piece = Piece {
            file: self.file,
            chunks: std::mem::take(&mut self.chunks),
            last,
        };
        tx.send(piece)
            .map_err(|_| PublishError::Internal("the pack writer stopped".into()))
    }
}

/// A file's new chunks go to the pack writer in runs of about this many stored bytes
/// (memory: one run per worker and four in the channel, 8 MiB each, and [`HOLD_BYTES`]
/// held: 608 MiB with 64 threads; runs of 4 MiB cut that in half, but a 12 MB file of the debs benchmark then
/// took 9 or 10 requests and 26.2 to 28.6 MB, against 9 and 26.2 MB every run).
const RUN_BYTES: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::testkit;
    use super::*;
    use crate::store::Store;
    use pulpdist_format::PackId;

    /// A worker waits before another file while too much is held, until the writer has
    /// caught up or the publish stops.
    #[test]
    fn workers_wait_while_too_much_is_held() {
        for end in ["caught up", "stopped"] {
            let gate = Gate::default();
            gate.held(HELD_MAX + 1);
            let went_on = std::thread::scope(|s| {
                let waiting = s.spawn(|| gate.may_start_a_file());
                // It waits (a deadline, not a sleep: the wait is what is tested).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while gate.waits.load(Ordering::Relaxed) == 0 {
                    assert!(std::time::Instant::now() < deadline, "{end}: never waited");
                    std::thread::yield_now();
                }
                assert!(!waiting.is_finished(), "{end}");
                match end {
                    "caught up" => gate.held(HELD_MAX),
                    _ => gate.stop(),
                }
                waiting.join().expect("worker")
            });
            assert_eq!(went_on, end == "caught up", "{end}");
        }
        let gate = Gate::default();
        gate.held(HELD_MAX);
        assert!(gate.may_start_a_file(), "at the limit, not over it");
    }

    /// A worker that panics (and so never sends its file's last piece) stops the others,
    /// even those waiting for the writer: the publish fails instead of hanging.
    #[test]
    fn a_panicking_worker_stops_the_others() {
        let gate = Gate::default();
        gate.held(HELD_MAX + 1);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| gate.may_start_a_file());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while gate.waits.load(Ordering::Relaxed) == 0 {
                assert!(std::time::Instant::now() < deadline, "never waited");
                std::thread::yield_now();
            }
            let panicking = s.spawn(|| {
                let _stop = StopOnPanic(&gate);
                panic!("a bug in a chunking worker");
            });
            assert!(panicking.join().is_err());
            assert!(!waiting.join().expect("worker"), "it went on");
        });
        // A guard dropped without a panic stops nothing.
        let gate = Gate::default();
        drop(StopOnPanic(&gate));
        assert!(gate.may_start_a_file());
    }

    /// Pieces arriving in any order (each file's own in order), held in memory or in the
    /// temporary file, give the pack the order of the files gives; a chunk two files
    /// share is written once, with the first.
    #[test]
    fn pieces_out_of_order_are_written_in_the_order_of_the_files() {
        let chunk = |i: u8| NewChunk {
            id: ChunkId([i; 32]),
            raw_len: 1000 + u32::from(i),
            codec: Codec::Raw,
            bytes: vec![i; 100 + usize::from(i)],
        };
        let pieces = || {
            [
                (0, vec![chunk(1)], false),
                (0, vec![chunk(2)], true),
                (1, vec![], true),
                (2, vec![chunk(3), chunk(1)], true),
                (3, vec![chunk(4)], false),
                (3, vec![chunk(5), chunk(3)], true),
            ]
            .map(|(file, chunks, last)| Some(Piece { file, chunks, last }))
        };
        let site = testkit::site();
        let tmp = site.store.tmp_dir().expect("tmp");
        let new_packer = |name: &'static [u8]| {
            let naming = Naming::Fixed(PackId::derived(name));
            Packer::new(&site.store, tmp.clone(), PackKind::Data, u64::MAX, naming)
        };
        let written = |order: &[usize], hold: usize| -> (Vec<u8>, bool) {
            let mut packer = new_packer(b"in order");
            let mut w = InOrder::new(&mut packer, tmp.clone());
            w.hold_limit = hold;
            let mut all = pieces();
            for &k in order {
                w.take(all[k].take().expect("each piece once"))
                    .expect("taken");
            }
            let spilled = w.spill.is_some();
            // Nothing held once every file is written, and the file emptied.
            assert_eq!((w.held_bytes, w.in_memory), (0, 0));
            let len = w
                .spill
                .as_ref()
                .map(|(f, _)| f.metadata().expect("stat").len());
            assert!(matches!(len, None | Some(0)), "{len:?}");
            let locs = w.finish(4).expect("every file");
            assert_eq!(locs.len(), 5);
            let packs = packer.finish().expect("finished").packs;
            let path = site.store.root().join(packs[0].id.object_key());
            let bytes = std::fs::read(&path).expect("pack");
            std::fs::remove_file(&path).expect("rm");
            (bytes, spilled)
        };
        let (in_order, _) = written(&[0, 1, 2, 3, 4, 5], HOLD_BYTES);
        // The last: a file's first piece held, its last written as it comes.
        let orders = [
            [3, 2, 4, 5, 0, 1],
            [4, 5, 3, 2, 0, 1],
            [2, 4, 0, 3, 5, 1],
            [4, 2, 3, 0, 1, 5],
        ];
        for order in orders {
            for hold in [HOLD_BYTES, 250, 0] {
                let (bytes, spilled) = written(&order, hold);
                assert!(bytes == in_order, "{order:?}, holding {hold} bytes");
                // Every order here holds something, never 64 MiB.
                if hold == 0 {
                    assert!(spilled, "{order:?}");
                } else if hold == HOLD_BYTES {
                    assert!(!spilled, "{order:?}");
                }
            }
        }
        // A file whose last piece never came is an error, not a short pack.
        let mut packer = new_packer(b"short");
        let mut w = InOrder::new(&mut packer, tmp.clone());
        let [_, _, _, Some(p), ..] = pieces() else {
            unreachable!("four pieces or more")
        };
        w.take(p).expect("held");
        assert!(w.finish(4).is_err());
    }

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
