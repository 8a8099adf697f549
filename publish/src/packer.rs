//! Writes packs to files: a data pack rolls over at the target size; each finished pack is
//! synced and put into the store before the head can name it.
//!
//! A pack is built in the store's `tmp/` (or the state's) as `<id>.pack.part`; a failed put
//! or a dropped `Packer` removes it, and `remove_stale_parts` removes parts a killed
//! publish left that are older than a day.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use pulpdist_format::pack::{ObjectKind, PackBuilder};
use pulpdist_format::{Codec, Location, PackId, PackInfo, PackKind};

use crate::error::{IoContext, PublishError};
use crate::store::Store;

/// Finished packs, their BLAKE3 hashes (same order) and the bytes stored.
pub(crate) type Finished = (Vec<PackInfo>, Vec<[u8; 32]>, u64);

/// Makes the names of new packs (random in production, derived from a seed in tests).
pub(crate) type PackNamer = Box<dyn FnMut() -> Result<PackId, PublishError> + Send>;

pub(crate) struct Packer<'a> {
    store: &'a dyn Store,
    tmp_dir: PathBuf,
    kind: PackKind,
    target: u64,
    namer: PackNamer,
    current: Option<(PackBuilder, BufWriter<File>, PathBuf, blake3::Hasher)>,
    pub(crate) finished: Vec<PackInfo>,
    /// BLAKE3 of each finished pack's bytes, in the order of `finished`.
    pub(crate) hashes: Vec<[u8; 32]>,
    pub(crate) stored_bytes: u64,
}

impl<'a> Packer<'a> {
    pub(crate) fn new(
        store: &'a dyn Store,
        tmp_dir: PathBuf,
        kind: PackKind,
        target: u64,
        namer: PackNamer,
    ) -> Self {
        Packer {
            store,
            tmp_dir,
            kind,
            target,
            namer,
            current: None,
            finished: Vec::new(),
            hashes: Vec::new(),
            stored_bytes: 0,
        }
    }

    pub(crate) fn add(
        &mut self,
        kind: ObjectKind,
        id: [u8; 32],
        codec: Codec,
        raw_len: u32,
        bytes: &[u8],
    ) -> Result<Location, PublishError> {
        if self.current.is_none() {
            let id = (self.namer)()?;
            let (builder, header) = PackBuilder::new(id);
            let path = self.tmp_dir.join(format!("{}.pack.part", id.to_hex()));
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).at(&path)?);
            w.write_all(&header).at(&path)?;
            let mut hasher = blake3::Hasher::new();
            hasher.update(&header);
            self.current = Some((builder, w, path, hasher));
        }
        let Some((builder, w, path, hasher)) = self.current.as_mut() else {
            unreachable!("a pack was opened above")
        };
        let loc = builder.add(kind, id, codec, bytes.len() as u32, raw_len);
        w.write_all(bytes).at(path.as_path())?;
        hasher.update(bytes);
        pulpdist_failpoint::hit("publish.pack_add");
        self.stored_bytes += bytes.len() as u64;
        if builder.len() >= self.target {
            self.finish_current()?;
        }
        Ok(loc)
    }

    /// Finishes the open pack, if any: the next object opens a new one.
    pub(crate) fn roll(&mut self) -> Result<(), PublishError> {
        self.finish_current()
    }

    fn finish_current(&mut self) -> Result<(), PublishError> {
        let Some((builder, mut w, path, mut hasher)) = self.current.take() else {
            return Ok(());
        };
        let id = builder.id();
        let (tail, size) = builder.finish();
        let put = (|| {
            w.write_all(&tail).at(&path)?;
            hasher.update(&tail);
            let file = w.into_inner().map_err(|e| e.into_error()).at(&path)?;
            file.sync_all().at(&path)?;
            self.store.put_pack(id, &path)
        })();
        if put.is_err() {
            // Nothing names a pack that was not put; its partial file is of no use.
            let _ = std::fs::remove_file(&path);
        }
        put?;
        pulpdist_failpoint::hit("publish.pack_put");
        self.hashes.push(*hasher.finalize().as_bytes());
        self.finished.push(PackInfo {
            id,
            size,
            kind: self.kind,
        });
        Ok(())
    }

    /// Finishes the open pack, if any; returns the packs written.
    pub(crate) fn finish(self) -> Result<(Vec<PackInfo>, u64), PublishError> {
        let (packs, _, bytes) = self.finish_hashed()?;
        Ok((packs, bytes))
    }

    /// Like [`Packer::finish`], with the BLAKE3 hash of each pack.
    pub(crate) fn finish_hashed(mut self) -> Result<Finished, PublishError> {
        self.finish_current()?;
        Ok((
            std::mem::take(&mut self.finished),
            std::mem::take(&mut self.hashes),
            self.stored_bytes,
        ))
    }
}

impl Drop for Packer<'_> {
    /// A publish that stops with an error leaves no partial pack behind.
    fn drop(&mut self) {
        if let Some((_, w, path, _)) = self.current.take() {
            // Not flushed: the file goes.
            let (file, _) = w.into_parts();
            drop(file);
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Partial packs older than this are left by a publish that was killed: removed by the
/// next publish. A live publish appends to its partial pack, so its mtime stays recent.
pub(crate) const STALE_PART_SECS: u64 = 24 * 3600;

/// Removes `*.pack.part` files in `tmp_dir` not modified for [`STALE_PART_SECS`]; returns
/// how many. Errors (a file gone meanwhile) are ignored: this is housekeeping.
pub(crate) fn remove_stale_parts(tmp_dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(tmp_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let stale = e.file_name().to_string_lossy().ends_with(".pack.part")
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > STALE_PART_SECS);
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[test]
    fn stale_parts_go_fresh_ones_stay_and_a_dropped_packer_cleans_up() {
        let dir = tempfile::tempdir().expect("tmp");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("mkdir");
        let old = tmp.join("aa.pack.part");
        let fresh = tmp.join("bb.pack.part");
        let other = tmp.join("head-x.1");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, b"x").expect("write");
        }
        let two_days_ago = filetime::FileTime::from_unix_time(
            filetime::FileTime::now().unix_seconds() - 2 * 24 * 3600,
            0,
        );
        filetime::set_file_mtime(&old, two_days_ago).expect("mtime");
        filetime::set_file_mtime(&other, two_days_ago).expect("mtime");
        assert_eq!(remove_stale_parts(&tmp), 1);
        assert!(!old.exists() && fresh.exists() && other.exists());

        let store = LocalStore::open(dir.path().join("store")).expect("store");
        let mut p = Packer::new(
            &store,
            tmp.clone(),
            PackKind::Data,
            u64::MAX,
            Box::new(|| Ok(PackId([7; 32]))),
        );
        p.add(ObjectKind::Chunk, [1; 32], Codec::Raw, 3, b"abc")
            .expect("add");
        let part = tmp.join(format!("{}.pack.part", PackId([7; 32]).to_hex()));
        assert!(part.exists());
        drop(p);
        assert!(!part.exists());
    }
}
