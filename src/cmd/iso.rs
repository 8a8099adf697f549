//! `pulpdist iso`: jigdo's workflow with chunks. `iso template IMAGE --out T` cuts an ISO
//! 9660 image along its files' extents and keeps only its metadata chunks (plus, for each
//! file's data, the hash of its chunk list); `iso rebuild T --from DIR... [--store S --tree
//! N --trust K] --out IMAGE` rebuilds it byte for byte from local files, fetching from a
//! store only what they lack, and checks the result against the BLAKE3 the template records.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pulpdist_chunker::Chunker;
use pulpdist_format::{ChunkId, VerifiedChunk};
use pulpdist_isos::template::{Entry, Template};
use pulpdist_sync::Run;
use serde_json::json;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the variants' size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
enum Command {
    /// Make a template of an ISO 9660 image (its metadata, and each file's data named by its chunks).
    Template {
        /// The image.
        image: PathBuf,
        /// The template file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        progress: super::progress::ProgressArgs,
        /// Chunk sizes MIN,AVG,MAX in bytes: those of the tree whose store `rebuild --store`
        /// will fetch from [default: PulpDist's default, 16384,65536,262144].
        #[arg(long, value_parser = super::publish::parse_params)]
        chunk_sizes: Option<pulpdist_format::ChunkParams>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild an image from a template and files in local directories (and a store).
    Rebuild {
        /// The template.
        template: PathBuf,
        /// Directories holding the image's files (searched recursively); may be repeated.
        #[arg(long = "from")]
        from: Vec<PathBuf>,
        /// A store to fetch what the directories lack (needs --tree and --trust).
        #[arg(long, requires_all = ["tree", "trust"])]
        store: Option<String>,
        /// The tree of --store that holds the files.
        #[arg(long)]
        tree: Option<String>,
        /// Trusted public key file(s) for --store.
        #[arg(long)]
        trust: Vec<PathBuf>,
        #[command(flatten)]
        tls: super::stores::TlsArgs,
        #[command(flatten)]
        s3: super::stores::S3Args,
        /// The image to write.
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        progress: super::progress::ProgressArgs,
    },
}

pub(crate) fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Template {
            image,
            out,
            progress,
            chunk_sizes,
            json,
        } => template(
            &image,
            &out,
            chunk_sizes.unwrap_or(pulpdist_format::ChunkParams::DEFAULT),
            json,
            &progress.reporter(),
        ),
        Command::Rebuild {
            template,
            from,
            store,
            tree,
            trust,
            tls,
            s3,
            out,
            json,
            progress,
        } => {
            let http = tls.http()?;
            let from_store = StoreArgs {
                store: store.as_deref(),
                tree: tree.as_deref(),
                trust: &trust,
                http,
                s3,
            };
            rebuild(
                &template,
                &from,
                from_store,
                &out,
                json,
                &progress.reporter(),
            )
        }
    }
}

fn template(
    image: &Path,
    out: &Path,
    params: pulpdist_format::ChunkParams,
    json: bool,
    progress: &pulpdist_progress::Reporter,
) -> Result<()> {
    if !pulpdist_isos::is_iso9660(image).with_context(|| format!("reading {}", image.display()))? {
        bail!("{}: not an ISO 9660 image", image.display());
    }
    let regions = pulpdist_isos::layout(image)?;
    let chunker = Chunker::new(params)?;
    let t = Template::make(image, &regions, &chunker, progress)?;
    let bytes = t.encode(19)?;
    let tmp = out.with_extension("part");
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let count = |f: fn(&Entry) -> bool| t.entries.iter().filter(|e| f(e)).count();
    let by_list = count(|e| matches!(e, Entry::Region { .. }));
    let by_id = count(|e| matches!(e, Entry::File { .. }));
    super::emit(
        json,
        json!({"image_size": t.size, "template_size": bytes.len(), "entries": t.entries.len(),
               "file_regions_by_list": by_list, "file_chunks_by_id": by_id,
               "files": regions.len()}),
        || {
            format!(
                "template {}: {} bytes for a {}-byte image ({} file regions: {by_list} named by their chunk list, {by_id} by their one chunk; {} entries)\n",
                out.display(),
                bytes.len(),
                t.size,
                regions.len(),
                t.entries.len()
            )
        },
    )
}

/// Runs of chunks (id, length), by the hash of their ids.
type Lists = HashMap<[u8; 32], Vec<(ChunkId, u32)>>;

/// What the `--from` directories hold: where the chunks looked for are, and the runs a
/// template names that their files hold.
#[derive(Default)]
struct Local {
    chunks: HashMap<ChunkId, (Arc<Path>, u64)>,
    runs: Lists,
}

/// Every file under `dirs`, chunked: where each chunk in `ids` is, and the runs in `runs`
/// that a file holds (with where their chunks are). Nothing else is kept, so memory follows
/// the image, not the directories.
fn index_dirs(
    dirs: &[PathBuf],
    chunker: &Chunker,
    ids: &HashSet<ChunkId>,
    runs: &HashMap<[u8; 32], Run>,
) -> Result<Local> {
    let mut by_first: HashMap<ChunkId, Vec<([u8; 32], usize)>> = HashMap::new();
    for (hash, run) in runs {
        by_first
            .entry(run.first)
            .or_default()
            .push((*hash, run.chunks as usize));
    }
    let mut found = Local::default();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let ft = e
                .file_type()
                .with_context(|| format!("{}", e.path().display()))?;
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let path: Arc<Path> = e.path().into();
            let f = File::open(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut stream = chunker.stream(f);
            let mut offset = 0u64;
            let mut list: Vec<(ChunkId, u32, u64)> = Vec::new();
            while let Some(c) = stream
                .next_chunk()
                .with_context(|| format!("reading {}", path.display()))?
            {
                let id = ChunkId::of(c);
                if ids.contains(&id) {
                    found
                        .chunks
                        .entry(id)
                        .or_insert_with(|| (path.clone(), offset));
                }
                list.push((id, c.len() as u32, offset));
                offset += c.len() as u64;
            }
            for (i, (id, _, _)) in list.iter().enumerate() {
                for (hash, n) in by_first.get(id).into_iter().flatten() {
                    let Some(run) = list.get(i..i + n) else {
                        continue;
                    };
                    if found.runs.contains_key(hash)
                        || pulpdist_format::chunk_list_hash(run.iter().map(|(id, _, _)| id))
                            != *hash
                    {
                        continue;
                    }
                    for (id, _, at) in run {
                        found
                            .chunks
                            .entry(*id)
                            .or_insert_with(|| (path.clone(), *at));
                    }
                    found
                        .runs
                        .insert(*hash, run.iter().map(|(id, n, _)| (*id, *n)).collect());
                }
            }
        }
    }
    Ok(found)
}

/// Where the chunks of `ids` are in the files under `dirs` (a second look, for the runs a
/// store resolved: a local file that differs from the image's still gives what it shares).
fn index_ids(
    dirs: &[PathBuf],
    chunker: &Chunker,
    ids: &HashSet<ChunkId>,
) -> Result<HashMap<ChunkId, (Arc<Path>, u64)>> {
    Ok(index_dirs(dirs, chunker, ids, &HashMap::new())?.chunks)
}

/// One piece of the image to write.
enum Piece<'a> {
    Literal(&'a VerifiedChunk),
    Chunk(ChunkId, u32),
}

/// The template's entries as chunks: each region replaced by the run that resolved it
/// (`lists`), which must have its count and size.
fn pieces<'a>(t: &'a Template, lists: &[&Lists]) -> Result<Vec<Piece<'a>>> {
    let mut out = Vec::with_capacity(t.entries.len());
    let mut at = 0u64;
    for e in &t.entries {
        match e {
            Entry::Literal { chunk } => out.push(Piece::Literal(chunk)),
            Entry::File { id, len } => out.push(Piece::Chunk(*id, *len)),
            Entry::Region {
                chunk_hash,
                chunks,
                size,
                ..
            } => {
                let Some(list) = lists.iter().find_map(|m| m.get(chunk_hash)) else {
                    bail!(
                        "the file data at byte {at} of the image ({size} bytes, chunk list {}) is unresolved",
                        hex::encode(chunk_hash)
                    );
                };
                let got: u64 = list.iter().map(|(_, n)| u64::from(*n)).sum();
                if list.len() != *chunks as usize || got != *size {
                    bail!(
                        "the file data at byte {at} of the image: the template says {chunks} chunks and {size} bytes, but the chunks it names ({}) are {} and {got} bytes: the template is damaged",
                        hex::encode(chunk_hash),
                        list.len()
                    );
                }
                out.extend(list.iter().map(|(id, n)| Piece::Chunk(*id, *n)));
            }
        }
        at += e.len();
    }
    Ok(out)
}

/// Where `rebuild` fetches what the local directories lack, and how.
struct StoreArgs<'a> {
    store: Option<&'a str>,
    tree: Option<&'a str>,
    trust: &'a [PathBuf],
    http: pulpdist_sync::HttpOptions,
    s3: super::stores::S3Args,
}

fn rebuild(
    template: &Path,
    from: &[PathBuf],
    from_store: StoreArgs<'_>,
    out: &Path,
    json: bool,
    progress: &pulpdist_progress::Reporter,
) -> Result<()> {
    let bytes = fs::read(template).with_context(|| format!("reading {}", template.display()))?;
    let t = Template::decode(&bytes).with_context(|| format!("in {}", template.display()))?;
    let chunker = Chunker::new(t.params)?;
    let mut ids = HashSet::new();
    let mut runs = HashMap::new();
    for e in &t.entries {
        match e {
            Entry::File { id, .. } => _ = ids.insert(*id),
            Entry::Region {
                chunk_hash,
                first,
                chunks,
                ..
            } => {
                runs.insert(
                    *chunk_hash,
                    Run {
                        first: *first,
                        chunks: *chunks,
                    },
                );
            }
            Entry::Literal { .. } => {}
        }
    }
    let mut local = index_dirs(from, &chunker, &ids, &runs)?;
    let missing = Missing {
        chunks: ids
            .iter()
            .filter(|id| !local.chunks.contains_key(id))
            .copied()
            .collect(),
        runs: runs
            .iter()
            .filter(|(h, _)| !local.runs.contains_key(*h))
            .map(|(h, r)| (*h, *r))
            .collect(),
    };
    let fetched = match missing.chunks.is_empty() && missing.runs.is_empty() {
        true => Fetched::default(),
        false => fetch_missing(
            &t, &missing, from, &chunker, &mut local, from_store, out, progress,
        )
        .with_context(|| format!("rebuilding from {}", template.display()))?,
    };
    let tmp = out.with_extension("part");
    // Everything is written beside the output first; on any failure the part is removed.
    let written = pieces(&t, &[&local.runs, &fetched.runs])
        .with_context(|| format!("in {}", template.display()))
        .and_then(|pieces| write_image(&t, &pieces, &local, &fetched, &tmp, progress));
    drop(fetched.file);
    if let Some(scratch) = &fetched.scratch {
        let _ = fs::remove_file(scratch);
    }
    let (from_local, from_template) = match written {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let (requests, bytes_fetched) = (fetched.requests, fetched.bytes);
    super::emit(
        json,
        json!({"image_size": t.size, "bytes_from_local": from_local, "bytes_from_template": from_template,
               "bytes_fetched": bytes_fetched, "requests": requests}),
        || {
            format!(
                "rebuilt {} ({} bytes): {} from local files, {} from the template, {} fetched in {} requests; BLAKE3 matches\n",
                out.display(), t.size, from_local, from_template, bytes_fetched, requests
            )
        },
    )
}

/// Chunks fetched from a store, waiting in a scratch file beside the output (not in
/// memory: an image can need gigabytes of them).
#[derive(Default)]
struct Fetched {
    scratch: Option<PathBuf>,
    file: Option<File>,
    /// Chunk id → (offset, length) in the scratch file.
    at: HashMap<ChunkId, (u64, u32)>,
    /// The runs the store's tree resolved.
    runs: Lists,
    requests: u64,
    bytes: u64,
}

/// What no `--from` directory holds: chunks named by id, and runs named by their hash.
struct Missing {
    chunks: HashSet<ChunkId>,
    runs: HashMap<[u8; 32], Run>,
}

/// Fetches what is `missing` from the store (verified), into a scratch file: the tree's
/// index is walked first, so that a run or chunk it lacks, or a run of another size than
/// the template says, fails before anything is fetched; then the chunks of the runs the
/// store resolved are looked for in the `--from` directories (added to `local`), and only
/// the rest is fetched.
#[allow(clippy::too_many_arguments)]
fn fetch_missing(
    t: &Template,
    missing: &Missing,
    from: &[PathBuf],
    chunker: &Chunker,
    local: &mut Local,
    from_store: StoreArgs<'_>,
    out: &Path,
    progress: &pulpdist_progress::Reporter,
) -> Result<Fetched> {
    let StoreArgs {
        store,
        tree,
        trust,
        http,
        s3,
    } = from_store;
    let is_missing = |e: &Entry| match e {
        Entry::File { id, .. } => missing.chunks.contains(id),
        Entry::Region { chunk_hash, .. } => missing.runs.contains_key(chunk_hash),
        Entry::Literal { .. } => false,
    };
    let Some(store) = store else {
        let (n, bytes) = t
            .entries
            .iter()
            .filter(|e| is_missing(e))
            .fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.len()));
        bail!(
            "{n} pieces of file data ({bytes} bytes) of the image are in none of the --from directories (chunked with the template's sizes {},{},{}); give more, or --store with --tree and --trust",
            t.params.min, t.params.avg, t.params.max
        );
    };
    let tree = tree.unwrap_or_default();
    let keys = super::sync::load_trust(trust)?;
    let reader = super::stores::reader(store, http, &s3)?;
    let counted = pulpdist_sync::CountingReader::new(&*reader);
    let wanted = pulpdist_sync::Wanted {
        chunks: &missing.chunks,
        runs: &missing.runs,
    };
    let located = pulpdist_sync::locate_chunks(&counted, tree, &keys, wanted)
        .with_context(|| format!("reading tree '{tree}' of {store}"))?;
    let mut fetched = Fetched {
        runs: located.runs().collect(),
        ..Fetched::default()
    };
    // What the tree lacks, named by where it is in the image, before anything is fetched.
    let mut at = 0u64;
    let mut lacking = Vec::new();
    for e in &t.entries {
        let absent = match e {
            Entry::File { id, .. } => missing.chunks.contains(id) && !located.has_chunk(id),
            Entry::Region { chunk_hash, .. } => {
                missing.runs.contains_key(chunk_hash) && !fetched.runs.contains_key(chunk_hash)
            }
            Entry::Literal { .. } => false,
        };
        if absent {
            lacking.push(format!("{} bytes at byte {at}", e.len()));
        }
        at += e.len();
    }
    if !lacking.is_empty() {
        let more = lacking.len().saturating_sub(3);
        lacking.truncate(3);
        bail!(
            "file data of the image is neither in the --from directories nor in tree '{tree}' of {store} (chunked with the template's sizes {},{},{}): {}{}",
            t.params.min,
            t.params.avg,
            t.params.max,
            lacking.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }
    // Runs of another size than the template says fail here, before the fetch.
    pieces(t, &[&local.runs, &fetched.runs])?;
    let mut need: HashSet<ChunkId> = missing.chunks.clone();
    need.extend(
        fetched
            .runs
            .values()
            .flatten()
            .map(|(id, _)| *id)
            .filter(|id| !local.chunks.contains_key(id)),
    );
    if !fetched.runs.is_empty() && !from.is_empty() {
        for (id, at) in index_ids(from, chunker, &need)? {
            need.remove(&id);
            local.chunks.entry(id).or_insert(at);
        }
    }
    if need.is_empty() {
        (fetched.requests, fetched.bytes) = counted.totals();
        return Ok(fetched);
    }
    let (scratch, f) = scratch_file(out)?;
    let mut end = 0u64;
    let mut w = std::io::BufWriter::new(&f);
    let io = |source| pulpdist_sync::SyncError::Io {
        path: scratch.clone(),
        source,
    };
    progress.start("fetch", need.len() as u64, 0);
    let got = pulpdist_sync::fetch_located(
        &counted,
        &located,
        &|id| need.contains(id),
        64 * 1024,
        &mut |c: VerifiedChunk| {
            w.write_all(c.data()).map_err(io)?;
            fetched.at.insert(c.id(), (end, c.data().len() as u32));
            end += c.data().len() as u64;
            progress.advance(1, c.data().len() as u64);
            Ok(())
        },
    )
    .and_then(|got| w.flush().map_err(io).map(|()| got));
    drop(w);
    progress.finish();
    let got = match got {
        Ok(g) => g,
        Err(e) => {
            let _ = fs::remove_file(&scratch);
            return Err(anyhow::Error::new(e).context(format!(
                "fetching missing chunks of tree '{tree}' from {store}"
            )));
        }
    };
    (fetched.requests, fetched.bytes) = counted.totals();
    if let Some(id) = need.iter().find(|id| !got.contains(id)) {
        let _ = fs::remove_file(&scratch);
        bail!("chunk {id} of the image is neither local nor in tree '{tree}' of {store}");
    }
    fetched.file = Some(f);
    fetched.scratch = Some(scratch);
    Ok(fetched)
}

/// A new scratch file beside `out`, under a random name.
fn scratch_file(out: &Path) -> Result<(PathBuf, File)> {
    let mut r = [0u8; 8];
    getrandom::getrandom(&mut r).context("random name for the scratch file")?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scratch = out.with_file_name(format!(".{name}.chunks-{}", hex::encode(r)));
    let f = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&scratch)
        .with_context(|| format!("writing {}", scratch.display()))?;
    Ok((scratch, f))
}

/// Writes the image to `tmp` from the template's literals, the local files and the
/// fetched chunks, every chunk verified on its way; checks the whole against the
/// template's BLAKE3. Bytes from local files and from the template.
fn write_image(
    t: &Template,
    pieces: &[Piece<'_>],
    local: &Local,
    fetched: &Fetched,
    tmp: &Path,
    progress: &pulpdist_progress::Reporter,
) -> Result<(u64, u64)> {
    let mut w = std::io::BufWriter::new(
        File::create(tmp).with_context(|| format!("writing {}", tmp.display()))?,
    );
    let mut hasher = blake3::Hasher::new();
    let (mut from_local, mut from_template) = (0u64, 0u64);
    let mut open: Option<(Arc<Path>, File)> = None;
    progress.start("image", pieces.len() as u64, t.size);
    for p in pieces {
        let data: Vec<u8> = match p {
            Piece::Literal(chunk) => {
                from_template += chunk.data().len() as u64;
                chunk.data().to_vec()
            }
            Piece::Chunk(id, len) => {
                if let Some((path, offset)) = local.chunks.get(id) {
                    from_local += u64::from(*len);
                    read_local(&mut open, path, *offset, *id, *len)?
                } else {
                    read_fetched(fetched, *id)?
                }
            }
        };
        hasher.update(&data);
        w.write_all(&data)
            .with_context(|| format!("writing {}", tmp.display()))?;
        progress.advance(1, data.len() as u64);
    }
    progress.finish();
    let f = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", tmp.display()))?;
    if hasher.finalize().as_bytes() != &t.hash {
        bail!("the rebuilt image does not match the template's BLAKE3; nothing written");
    }
    Ok((from_local, from_template))
}

/// A chunk of a local file (kept open while the next chunks come from it), verified.
fn read_local(
    open: &mut Option<(Arc<Path>, File)>,
    path: &Arc<Path>,
    offset: u64,
    id: ChunkId,
    len: u32,
) -> Result<Vec<u8>> {
    if open.as_ref().is_none_or(|(p, _)| p != path) {
        let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        *open = Some((path.clone(), f));
    }
    let Some((_, f)) = open.as_mut() else {
        unreachable!("opened above")
    };
    let mut buf = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf))
        .with_context(|| format!("reading {}", path.display()))?;
    let c = VerifiedChunk::from_plain(id, buf)
        .with_context(|| format!("{} changed while the image was rebuilt", path.display()))?;
    Ok(c.into_data())
}

/// A fetched chunk, verified again on its way out of the scratch file.
fn read_fetched(fetched: &Fetched, id: ChunkId) -> Result<Vec<u8>> {
    let (Some((at, n)), Some(f), Some(scratch)) =
        (fetched.at.get(&id), &fetched.file, &fetched.scratch)
    else {
        bail!("chunk {id} missing");
    };
    let mut buf = vec![0u8; *n as usize];
    f.read_exact_at(&mut buf, *at)
        .with_context(|| format!("reading {}", scratch.display()))?;
    Ok(VerifiedChunk::from_plain(id, buf)
        .with_context(|| format!("{} changed", scratch.display()))?
        .into_data())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulpdist_format::ChunkParams;

    /// A run that resolves a region must have the region's count and size: otherwise the
    /// template is damaged, and the rebuild stops before writing or fetching anything.
    #[test]
    fn a_region_resolved_to_a_run_of_another_size_is_refused() {
        let ids = [ChunkId::of(b"a"), ChunkId::of(b"b")];
        let hash = pulpdist_format::chunk_list_hash(ids.iter());
        let region = |size| Template {
            size,
            hash: [0; 32],
            params: ChunkParams::DEFAULT,
            entries: vec![Entry::Region {
                chunk_hash: hash,
                first: ids[0],
                chunks: 2,
                size,
            }],
        };
        let run: Lists = [(hash, vec![(ids[0], 1), (ids[1], 1)])].into();
        assert_eq!(pieces(&region(2), &[&run]).expect("resolves").len(), 2);
        let e = pieces(&region(3), &[&run])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("the template is damaged"), "{e}");
        let e = pieces(&region(2), &[&Lists::new()])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("at byte 0 of the image (2 bytes"), "{e}");
    }
}
