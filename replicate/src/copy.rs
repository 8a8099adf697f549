//! Phase 3, the packs copied: each pack the target lacks fetched whole from the source,
//! checked (its header names it; every chunk and node its trailer lists, and every chunk
//! of the version in it, hashes to its id; a delta pack has the size and hash the signed
//! head lists), written to a local file and flushed, then put into the target. Data packs
//! first, then index packs, then delta packs: nothing of it is reachable until phase 4
//! writes the head.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use pulpdist_format::pack::{decode_footer, decode_header, decode_trailer, ObjectKind};
use pulpdist_format::pack::{FOOTER_LEN, HEADER_LEN};
use pulpdist_format::{ChunkId, ChunkRef, FormatError, NodeId, NodeRef, PackId, VerifiedChunk};
use pulpdist_publish::Store;
use pulpdist_sync::{first_ok, StoreReader, SyncError};

use crate::walk::Needs;
use crate::{ReplicateError, ReplicateOptions};

/// What phase 3 copied.
#[derive(Debug, Default)]
pub(crate) struct Copied {
    pub(crate) packs: u64,
    pub(crate) bytes: u64,
    pub(crate) objects: u64,
}

/// The largest pack taken on the source's word for its size (one the signed head does not
/// list): a publisher closes a data pack at its target size (64 MiB by default) plus one
/// object, a delta pack is at most 256 MiB.
const MAX_UNSIGNED_PACK: u64 = 1 << 30;

/// A whole pack from the first store of `source` that serves it whole and checked
/// ([`check_pack`]: every object in it, and each chunk of `reached`): `size` bytes if the
/// signed head gives its size, else the size the store claims. Returns its bytes and the
/// objects checked.
pub(crate) fn fetch_checked(
    source: &dyn StoreReader,
    pack: PackId,
    size: Option<u64>,
    reached: &[ChunkRef],
) -> Result<(Vec<u8>, u64), SyncError> {
    first_ok(source, |s| {
        let object = || format!("{}/{}", s.describe(), pack.object_key());
        let size = match size {
            Some(n) => n,
            None => match s.pack_size(&pack)? {
                n if n > MAX_UNSIGNED_PACK => {
                    return Err(SyncError::Mismatch {
                        object: object(),
                        detail: format!(
                            "claims {n} bytes, more than the {MAX_UNSIGNED_PACK} a pack the head does not list may have"
                        ),
                    })
                }
                n => n,
            },
        };
        let bytes = s.get_pack(&pack, size)?;
        let objects = check_pack(pack, &bytes, reached).map_err(|source| SyncError::Format {
            object: object(),
            source,
        })?;
        Ok((bytes, objects))
    })
}

/// Checks every chunk and node the pack's trailer lists against its id, then every chunk
/// of `reached` the trailer did not list at that place. Returns the objects checked.
pub(crate) fn check_pack(
    id: PackId,
    bytes: &[u8],
    reached: &[ChunkRef],
) -> Result<u64, FormatError> {
    let size = bytes.len() as u64;
    if size < HEADER_LEN + FOOTER_LEN || decode_header(&bytes[..HEADER_LEN as usize])? != id {
        return Err(crate::invalid("pack", "its header does not name it"));
    }
    let trailer = decode_footer(&bytes[(size - FOOTER_LEN) as usize..], size)?;
    let entries = decode_trailer(
        id,
        &bytes[trailer.start as usize..trailer.end as usize],
        trailer.start,
    )?;
    let slice = |loc: &pulpdist_format::Location| {
        let r = loc.range();
        bytes.get(r.start as usize..r.end as usize).ok_or_else(|| {
            crate::invalid(
                "pack",
                format!("an object at {}..{} is past its end", r.start, r.end),
            )
        })
    };
    let mut checked = HashSet::new();
    for e in &entries {
        match e.kind {
            ObjectKind::Chunk => {
                VerifiedChunk::from_stored(
                    ChunkId(e.id),
                    e.loc.codec,
                    slice(&e.loc)?,
                    e.loc.raw_len,
                )?;
            }
            ObjectKind::Node => {
                NodeRef {
                    id: NodeId(e.id),
                    loc: e.loc,
                }
                .open(slice(&e.loc)?)?;
            }
            ObjectKind::Delta => continue,
        }
        checked.insert((e.id, e.loc));
    }
    let mut n = checked.len() as u64;
    for c in reached {
        if !checked.contains(&(c.id.0, c.loc)) {
            VerifiedChunk::from_stored(c.id, c.loc.codec, slice(&c.loc)?, c.loc.raw_len)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Copies every pack of `needs` into `target`.
pub(crate) fn copy(
    source: &dyn StoreReader,
    target: &dyn Store,
    needs: &Needs,
    opts: &ReplicateOptions,
) -> Result<Copied, ReplicateError> {
    let dir = match target.tmp_dir() {
        Some(d) => d,
        None => opts.work_dir.join("tmp"),
    };
    std::fs::create_dir_all(&dir).map_err(|source| ReplicateError::Io {
        path: dir.clone(),
        source,
    })?;
    let progress = &opts.progress;
    let count = needs.data.len() + needs.index.len() + needs.deltas.len();
    progress.start("copy", count as u64, 0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.connections.clamp(1, 64))
        .thread_name(|i| format!("pulpdist-replicate-{i}"))
        .build()
        .map_err(|e| SyncError::Threads(e.to_string()))?;
    // 1. Data packs, fetched a few at a time; those the head gives no size for (sized by
    // the source's word, so up to MAX_UNSIGNED_PACK in memory) one at a time.
    let data: Vec<(&PackId, &Vec<ChunkRef>)> = needs.data.iter().collect();
    let one = |(pack, chunks): &(&PackId, &Vec<ChunkRef>)| {
        let size = needs.signed_sizes.get(*pack).copied();
        let (bytes, objects) = fetch_checked(source, **pack, size, chunks)?;
        put(target, &dir, **pack, &bytes)?;
        progress.advance(1, bytes.len() as u64);
        pulpdist_failpoint::hit("replicate.pack");
        Ok((bytes.len() as u64, objects))
    };
    let (signed, unsigned): (Vec<_>, Vec<_>) = data
        .into_iter()
        .partition(|(p, _)| needs.signed_sizes.contains_key(*p));
    let mut results: Vec<Result<(u64, u64), ReplicateError>> =
        pool.install(|| signed.par_iter().map(one).collect());
    results.extend(unsigned.iter().map(one));
    let mut out = Copied::default();
    for r in results {
        let (bytes, objects) = r?;
        out.packs += 1;
        out.bytes += bytes;
        out.objects += objects;
    }
    // 2. Index packs, fetched whole and checked by the walk.
    for (pack, (bytes, objects)) in &needs.index {
        out.objects += objects;
        put(target, &dir, *pack, bytes)?;
        out.packs += 1;
        out.bytes += bytes.len() as u64;
        progress.advance(1, bytes.len() as u64);
        pulpdist_failpoint::hit("replicate.index");
    }
    // 3. Delta packs, each checked against the size and hash the signed head lists.
    for d in &needs.deltas {
        let bytes = first_ok(source, |s| {
            let bytes = s.get_pack(&d.pack, d.size)?;
            d.verify(&bytes).map_err(|source| SyncError::Format {
                object: format!("{}/{} (delta)", s.describe(), d.pack.object_key()),
                source,
            })?;
            Ok(bytes)
        })?;
        put(target, &dir, d.pack, &bytes)?;
        out.packs += 1;
        out.bytes += bytes.len() as u64;
        progress.advance(1, bytes.len() as u64);
        pulpdist_failpoint::hit("replicate.delta");
    }
    progress.finish();
    Ok(out)
}

/// Writes a checked pack to a file in `dir`, flushes it and puts it into the target (which
/// removes the file). A file left by a failure is removed.
fn put(target: &dyn Store, dir: &Path, pack: PackId, bytes: &[u8]) -> Result<(), ReplicateError> {
    pulpdist_failpoint::hit("replicate.fetched");
    // A name of this process's own (a publisher's clean-up of `tmp/` removes a day-old
    // `.pack.part`), made anew: never written through a symlink or FIFO someone put there.
    let path: PathBuf = dir.join(format!(
        "{}.{}.pack.part",
        pack.to_hex(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let written = pulpdist_publish::create_new(&path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&path);
        return Err(ReplicateError::Io { path, source });
    }
    let put = target.put_pack(pack, &path);
    if put.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    match put {
        Err(pulpdist_publish::PublishError::PackExists { .. }) => {
            return Err(ReplicateError::Unusable {
                store: target.describe(),
                pack: pack.object_key(),
            })
        }
        r => r?,
    }
    // In a directory store the file was linked into place by name: what is there now must
    // be what was checked (nobody swapped the file between the check and the link).
    if target.tmp_dir().is_some() {
        let got = target.read_pack_range(pack, 0..bytes.len() as u64)?;
        if blake3::hash(&got) != blake3::hash(bytes) {
            return Err(ReplicateError::Unusable {
                store: target.describe(),
                pack: pack.object_key(),
            });
        }
    }
    Ok(())
}
