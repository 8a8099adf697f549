//! Writes packs to files: a data pack rolls over at the target size; each finished pack is
//! synced and put into the store before the head can name it.

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
        self.stored_bytes += bytes.len() as u64;
        if builder.len() >= self.target {
            self.finish_current()?;
        }
        Ok(loc)
    }

    fn finish_current(&mut self) -> Result<(), PublishError> {
        let Some((builder, mut w, path, mut hasher)) = self.current.take() else {
            return Ok(());
        };
        let id = builder.id();
        let (tail, size) = builder.finish();
        w.write_all(&tail).at(&path)?;
        hasher.update(&tail);
        let file = w.into_inner().map_err(|e| e.into_error()).at(&path)?;
        file.sync_all().at(&path)?;
        self.store.put_pack(id, &path)?;
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
        Ok((self.finished, self.hashes, self.stored_bytes))
    }
}
