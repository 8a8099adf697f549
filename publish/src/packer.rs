//! Writes packs to files: a data pack rolls over at the target size; each finished pack is
//! synced and put into the store before the head can name it.
//!
//! A pack is named by its content (FORMAT.md 3): the BLAKE3 hash (keyed for the purpose)
//! of the pack as it would be written with an all-zero id. A data or delta pack is written
//! with zeros there and its name filled in at the end; its objects' locations name a
//! placeholder meanwhile, which [`Finished::renamed`] maps to the name. An index pack,
//! whose nodes name their own pack, is built twice: once [`Naming::Dry`] (nothing written,
//! the zero id in its own locations) for the name, then [`Naming::Fixed`] with it. A name
//! that a garbage collector condemned is not used again (its pack may be deleted at any
//! time): such a pack gets a random name.
//!
//! A pack is built in the store's `tmp/` (or the state's) as `<placeholder>.pack.part`; a
//! failed put or a dropped `Packer` removes it, and `remove_stale_parts` removes parts a
//! killed publish left that are older than a day.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use pulpdist_format::pack::{ObjectKind, PackBuilder};
use pulpdist_format::{Codec, Location, PackId, PackInfo, PackKind};

use crate::error::{IoContext, PublishError};
use crate::store::Store;

/// Where the pack id lies in a pack's header (after the magic).
const ID_OFFSET: u64 = 8;

/// How a [`Packer`] names its packs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Naming {
    /// By content (a data or delta pack, whose objects do not name their own pack).
    Content,
    /// This name (an index pack's second build, named by its first).
    Fixed(PackId),
    /// Nothing written: the one pack's name by content only, the zero id in its own
    /// objects' locations (an index pack's first build).
    Dry,
}

/// What a [`Packer`] wrote.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// The packs, closed and in the store (a dry packer's: named, not written).
    pub(crate) packs: Vec<PackInfo>,
    /// BLAKE3 of each pack's bytes as stored, in the order of `packs` (when asked for).
    pub(crate) hashes: Vec<[u8; 32]>,
    /// The bytes of the objects added.
    pub(crate) stored_bytes: u64,
    /// The placeholder each pack's locations named while it was open, and its name.
    pub(crate) renamed: HashMap<PackId, PackId>,
}

impl Finished {
    /// `loc` with its placeholder replaced by the pack's name.
    pub(crate) fn locate(&self, mut loc: Location) -> Location {
        if let Some(name) = self.renamed.get(&loc.pack) {
            loc.pack = *name;
        }
        loc
    }
}

/// The pack being written.
struct Open {
    builder: PackBuilder,
    /// The file and its path (none when dry).
    file: Option<(BufWriter<File>, PathBuf)>,
    /// Fed the pack as written with the zero id.
    name: blake3::Hasher,
}

pub(crate) struct Packer<'a> {
    store: &'a dyn Store,
    tmp_dir: PathBuf,
    kind: PackKind,
    target: u64,
    naming: Naming,
    /// Whether to hash each pack's stored bytes.
    hash_packs: bool,
    current: Option<Open>,
    done: Finished,
}

impl<'a> Packer<'a> {
    pub(crate) fn new(
        store: &'a dyn Store,
        tmp_dir: PathBuf,
        kind: PackKind,
        target: u64,
        naming: Naming,
    ) -> Self {
        Packer {
            store,
            tmp_dir,
            kind,
            target,
            naming,
            hash_packs: false,
            current: None,
            done: Finished::default(),
        }
    }

    /// Whether it writes nothing ([`Naming::Dry`]).
    pub(crate) fn is_dry(&self) -> bool {
        matches!(self.naming, Naming::Dry)
    }

    /// Also hashes each pack's bytes as stored ([`Finished::hashes`]).
    pub(crate) fn hashing(mut self) -> Self {
        self.hash_packs = true;
        self
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
            self.current = Some(self.open()?);
        }
        let Some(open) = self.current.as_mut() else {
            unreachable!("a pack was opened above")
        };
        let loc = open
            .builder
            .add(kind, id, codec, bytes.len() as u32, raw_len);
        if let Some((w, path)) = open.file.as_mut() {
            w.write_all(bytes).at(path.as_path())?;
        }
        open.name.update(bytes);
        pulpdist_failpoint::hit("publish.pack_add");
        self.done.stored_bytes += bytes.len() as u64;
        if open.builder.len() >= self.target {
            self.finish_current()?;
        }
        Ok(loc)
    }

    /// Starts a pack: its locations name a placeholder (random), the zero id (dry) or the
    /// fixed name; the header written holds zeros unless the name is fixed.
    fn open(&self) -> Result<Open, PublishError> {
        let zero = PackId([0; 32]);
        // The partial file's name: never the pack's (a retry after a crash, or another
        // publisher of the same content, would find it taken).
        let part = random_id()?;
        let (placeholder, written) = match self.naming {
            Naming::Content => (part, zero),
            Naming::Fixed(id) => (id, id),
            Naming::Dry => (zero, zero),
        };
        let (builder, _) = PackBuilder::new(placeholder);
        let (_, header) = PackBuilder::new(written);
        let (_, zero_header) = PackBuilder::new(zero);
        let mut name = PackId::content_hasher();
        name.update(&zero_header);
        let file = match self.naming {
            Naming::Dry => None,
            Naming::Content | Naming::Fixed(_) => {
                let path = self.tmp_dir.join(format!("{}.pack.part", part.to_hex()));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .at(&path)?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                w.write_all(&header).at(&path)?;
                Some((w, path))
            }
        };
        Ok(Open {
            builder,
            file,
            name,
        })
    }

    /// Finishes the open pack, if any: the next object opens a new one.
    pub(crate) fn roll(&mut self) -> Result<(), PublishError> {
        self.finish_current()
    }

    fn finish_current(&mut self) -> Result<(), PublishError> {
        let Some(mut open) = self.current.take() else {
            return Ok(());
        };
        let placeholder = open.builder.id();
        let (tail, size) = open.builder.finish();
        open.name.update(&tail);
        let by_content = PackId::from_content(&open.name);
        let Some((mut w, path)) = open.file else {
            // Dry: named, not written.
            self.done.packs.push(PackInfo {
                id: by_content,
                size,
                kind: self.kind,
            });
            return Ok(());
        };
        let put = (|| -> Result<(PackId, Option<[u8; 32]>), PublishError> {
            let mut id = match self.naming {
                Naming::Fixed(id) => id,
                _ => unless_condemned(self.store, by_content)?,
            };
            w.write_all(&tail).at(&path)?;
            let mut file = w.into_inner().map_err(|e| e.into_error()).at(&path)?;
            loop {
                if id != placeholder {
                    file.write_all_at(id.as_bytes(), ID_OFFSET).at(&path)?;
                }
                file.sync_all().at(&path)?;
                let hash = match self.hash_packs {
                    true => Some(hash_file(&mut file).at(&path)?),
                    false => None,
                };
                match self.store.put_pack(id, &path) {
                    // Other bytes under this content's name: a damaged pack (which the
                    // catalog could not read). It stays; this one is named at random. (An
                    // index pack's nodes name their pack: the index is built again.)
                    Err(PublishError::PackExists { pack })
                        if !matches!(self.naming, Naming::Fixed(_)) =>
                    {
                        tracing::warn!(%pack, "something else is stored under this pack's name (other bytes, a link, a file anyone may write): named at random");
                        id = random_id()?;
                    }
                    put => return put.map(|()| (id, hash)),
                }
            }
        })();
        if put.is_err() {
            // Nothing names a pack that was not put; its partial file is of no use.
            let _ = std::fs::remove_file(&path);
        }
        let (id, hash) = put?;
        pulpdist_failpoint::hit("publish.pack_put");
        self.done.hashes.extend(hash);
        if id != placeholder {
            self.done.renamed.insert(placeholder, id);
        }
        self.done.packs.push(PackInfo {
            id,
            size,
            kind: self.kind,
        });
        Ok(())
    }

    /// Finishes the open pack, if any; returns what was written.
    pub(crate) fn finish(mut self) -> Result<Finished, PublishError> {
        self.finish_current()?;
        Ok(std::mem::take(&mut self.done))
    }
}

/// `name`, unless a garbage collector condemned a pack of that name (which it may delete
/// at any time, and whose name a later publish of the same content would give again):
/// then a random one.
pub(crate) fn unless_condemned(store: &dyn Store, name: PackId) -> Result<PackId, PublishError> {
    if !store.read_condemned()?.packs.contains_key(&name) {
        return Ok(name);
    }
    tracing::info!(pack = %name, "a pack of this content was condemned: named at random");
    random_id()
}

pub(crate) fn random_id() -> Result<PackId, PublishError> {
    PackId::random().map_err(|source| PublishError::Format {
        object: "pack id".into(),
        source,
    })
}

/// BLAKE3 of a file's bytes, read from the start.
fn hash_file(file: &mut File) -> std::io::Result<[u8; 32]> {
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&*file)?;
    Ok(*hasher.finalize().as_bytes())
}

impl Drop for Packer<'_> {
    /// A publish that stops with an error leaves no partial pack behind.
    fn drop(&mut self) {
        if let Some(Open {
            file: Some((w, path)),
            ..
        }) = self.current.take()
        {
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
            Naming::Fixed(PackId([7; 32])),
        );
        p.add(ObjectKind::Chunk, [1; 32], Codec::Raw, 3, b"abc")
            .expect("add");
        // The partial file is not named after the pack (a retry would find it taken).
        let parts = || -> Vec<String> {
            std::fs::read_dir(&tmp)
                .expect("tmp")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".pack.part"))
                .collect()
        };
        let part = parts();
        assert_eq!(part.len(), 2, "{part:?}");
        assert!(!part.contains(&format!("{}.pack.part", PackId([7; 32]).to_hex())));
        drop(p);
        assert_eq!(parts(), ["bb.pack.part".to_string()]);
    }

    fn pack(
        store: &LocalStore,
        tmp: &std::path::Path,
        naming: Naming,
        objects: &[&[u8]],
    ) -> (Finished, Vec<Location>) {
        let p = Packer::new(store, tmp.to_path_buf(), PackKind::Data, 10, naming);
        let mut p = p.hashing();
        let locs = objects
            .iter()
            .map(|o| {
                let id = *blake3::hash(o).as_bytes();
                p.add(ObjectKind::Chunk, id, Codec::Raw, o.len() as u32, o)
                    .expect("add")
            })
            .collect();
        (p.finish().expect("finish"), locs)
    }

    /// A pack's name is the hash of its content with a zero id (what a dry packer gives),
    /// the same content gives the same pack (put again: kept), the locations handed out
    /// meanwhile map to the name, and a condemned name is not used again.
    #[test]
    fn packs_are_named_by_content_unless_condemned() {
        let dir = tempfile::tempdir().expect("tmp");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("mkdir");
        let store = LocalStore::open(dir.path().join("store")).expect("store");
        let objects: [&[u8]; 3] = [b"first chunk", b"second", b"third chunk"];
        let (dry, _) = pack(&store, &tmp, Naming::Dry, &objects);
        assert!(dry.renamed.is_empty());
        let (done, locs) = pack(&store, &tmp, Naming::Content, &objects);
        // Target 10 bytes: a pack for each object.
        assert_eq!(done.packs.len(), 3);
        assert_eq!(done.packs, dry.packs);
        for ((p, loc), object) in done.packs.iter().zip(&locs).zip(objects) {
            assert_eq!(done.locate(*loc).pack, p.id);
            let bytes =
                std::fs::read(dir.path().join("store").join(p.id.object_key())).expect("stored");
            assert_eq!(&bytes[8..40], p.id.as_bytes(), "the header names the pack");
            let mut zero = bytes.clone();
            zero[8..40].fill(0);
            let mut h = PackId::content_hasher();
            h.update(&zero);
            assert_eq!(PackId::from_content(&h), p.id);
            let loc = done.locate(*loc);
            let at = loc.offset as usize;
            assert_eq!(&bytes[at..at + object.len()], object);
        }
        let (again, _) = pack(&store, &tmp, Naming::Content, &objects);
        assert_eq!(again.packs, done.packs, "the same content: the same packs");
        let condemned = pulpdist_format::Condemned {
            packs: [(done.packs[1].id, 1_000)].into_iter().collect(),
        };
        let list = dir
            .path()
            .join("store")
            .join(pulpdist_format::CONDEMNED_KEY);
        std::fs::create_dir_all(list.parent().expect("gc/")).expect("mkdir");
        std::fs::write(list, condemned.encode()).expect("condemn");
        let (later, locs) = pack(&store, &tmp, Naming::Content, &objects);
        assert_eq!(later.packs[0], done.packs[0]);
        assert_ne!(
            later.packs[1].id, done.packs[1].id,
            "a condemned name is not reused"
        );
        assert_eq!(later.locate(locs[1]).pack, later.packs[1].id);
        assert_eq!(
            std::fs::read_dir(&tmp).expect("tmp").count(),
            0,
            "no part left"
        );

        // Other bytes under a content name (a damaged pack) stay as they are; the new pack
        // is named at random. The same bytes put again are kept, made young again.
        let path = |id: PackId| dir.path().join("store").join(id.object_key());
        std::fs::write(path(done.packs[2].id), b"damaged").expect("damage");
        let old = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(path(done.packs[0].id), old).expect("age");
        let (last, locs) = pack(&store, &tmp, Naming::Content, &objects);
        assert_eq!(last.packs[0], done.packs[0]);
        let mtime = std::fs::metadata(path(done.packs[0].id))
            .expect("stat")
            .modified();
        assert!(filetime::FileTime::from_system_time(mtime.expect("mtime")) > old);
        assert_ne!(last.packs[2].id, done.packs[2].id);
        assert_eq!(last.locate(locs[2]).pack, last.packs[2].id);
        assert_eq!(
            std::fs::read(path(done.packs[2].id)).expect("kept"),
            b"damaged"
        );
        let moved = std::fs::read(path(last.packs[2].id)).expect("stored");
        assert_eq!(&moved[8..40], last.packs[2].id.as_bytes());
        // Each pack's hash is of its bytes as stored, its name in the header.
        for (p, hash) in last.packs.iter().zip(&last.hashes) {
            let stored = std::fs::read(path(p.id)).expect("stored");
            assert_eq!(blake3::hash(&stored).as_bytes(), hash, "{}", p.id);
        }
    }
}
