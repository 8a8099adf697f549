//! Applying a plan to the mirror (steps 3 to 10 of a sync): directories made, every new
//! file written beside its target and flushed, then renamed into place in the order that
//! keeps every repository index true to what it names (payload, payload symlinks and
//! modes, metadata with the top indexes last, deletions with old indexes first), and every
//! changed directory flushed before the caller records the version. A failure before the
//! first rename leaves the mirror as it was; one after leaves each file whole and the
//! `applying-<tree>` mark, so the next sync checks every directory. Every write goes
//! through [`Tree`]: directory handles opened without following symlinks.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pulpdist_format::{ChunkId, ChunkRef, Mtime};

use super::changes::symlink_on_the_way;
use super::plan::{Plan, Source};
use super::stage::{fetch_loose, read_local};
use super::survey::Planned;
use super::SyncOptions;
use crate::error::{IoContext, SyncError};
use crate::fsutil::sync_dir;
use crate::glob::glob_match;
use crate::state::{Mirror, State};
use crate::store::StoreReader;
use crate::tree::Tree;

/// Applies `plan` (its chunks staged or local) to the mirror; returns the chunks fetched
/// while writing (local copies that changed since they were planned). `first_sync`: no
/// version is applied yet.
pub(super) fn apply(
    store: &dyn StoreReader,
    state: &State,
    (opts, mirror): (&SyncOptions, &Mirror),
    planned: &Planned,
    (first_sync, version): (bool, u64),
) -> Result<u64, SyncError> {
    let plan = &planned.plan;
    let mut a = Applier::begin((opts, mirror), (first_sync, version))?;
    let mut prepared = Prepared::default();
    // One flush per file for a small plan; for a large one, one for all (below).
    let together = plan.files.len() > FLUSH_EACH_UP_TO;
    if let Err(e) = a.write(store, state, planned, together, &mut prepared) {
        a.undo(state, &prepared);
        return Err(e);
    }
    a.finish(state, plan, prepared, together, (first_sync, version))
}

/// The parent of a path below the mirror (`""` for the root's entries).
fn parent_of(p: &Path) -> PathBuf {
    p.parent().unwrap_or(Path::new("")).to_path_buf()
}

/// When a file goes, among deletions of a directory's contents: 0 a top index (Release,
/// repomd.xml), 1 other metadata, 2 the rest.
fn rank_of(name: &std::ffi::OsStr, patterns: &[String]) -> u8 {
    let pats: Vec<&str> = patterns.iter().map(String::as_str).collect();
    if crate::tree::named(name, crate::glob::TOP_METADATA_PATTERNS) {
        0
    } else if crate::tree::named(name, &pats) {
        1
    } else {
        2
    }
}

/// What the writing has left so far (over every wave of a large first sync): new
/// directories, what was moved aside for them, each written temporary file with its target
/// and whether it is metadata, the chunks fetched late, and the mtimes of the directories
/// written into (put back if the sync fails before its first rename).
#[derive(Default)]
pub(super) struct Prepared {
    created: Vec<PathBuf>,
    aside: Vec<(PathBuf, PathBuf)>,
    ready: ReadyList,
    late: u64,
    dir_mtimes: HashMap<PathBuf, Mtime>,
}

impl Prepared {
    /// Room for `files` written files, made at once.
    pub(super) fn with_room(files: usize) -> Self {
        let mut p = Prepared::default();
        p.ready.reserve(files);
        p
    }
}

/// A file written beside its target: the target, the random part of its temporary name,
/// and whether it is metadata.
struct Ready {
    target: PathBuf,
    tag: [u8; 6],
    metadata: bool,
}

impl Ready {
    fn tmp(&self) -> PathBuf {
        crate::tree::temp_named(&self.target, &self.tag)
    }
}

/// Every file written beside its target, kept in a few flat buffers rather than as a
/// path each: a first sync keeps one per file for the whole sync, and small allocations
/// that live that long, made between a wave's short-lived ones, keep the allocator from
/// giving the waves' memory back.
#[derive(Default)]
struct ReadyList {
    /// The targets' bytes, one after the other; `ends[i]` is where target `i` ends.
    paths: Vec<u8>,
    ends: Vec<usize>,
    tags: Vec<[u8; 6]>,
    metadata: Vec<bool>,
}

impl ReadyList {
    fn reserve(&mut self, files: usize) {
        self.paths.reserve(files.saturating_mul(32));
        self.ends.reserve(files);
        self.tags.reserve(files);
        self.metadata.reserve(files);
    }

    fn push(&mut self, target: &Path, tag: [u8; 6], metadata: bool) {
        self.paths.extend_from_slice(target.as_os_str().as_bytes());
        self.ends.push(self.paths.len());
        self.tags.push(tag);
        self.metadata.push(metadata);
    }

    fn iter(&self) -> impl Iterator<Item = Ready> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .zip(self.tags.iter().zip(&self.metadata))
            .map(|((start, &end), (tag, &metadata))| Ready {
                target: PathBuf::from(std::ffi::OsStr::from_bytes(&self.paths[start..end])),
                tag: *tag,
                metadata,
            })
    }
}

/// The mirror being changed, and what the change has touched so far.
pub(super) struct Applier<'a> {
    tree: Tree,
    /// The locked mirror `tree` writes into, checked before each step that writes.
    mirror: &'a Mirror,
    opts: &'a SyncOptions,
    /// The version a first sync marks as being applied when it writes its first file.
    mark: Option<u64>,
    /// This sync set the mark (there was none): a failure it fully undoes clears it, so
    /// that the next sync does not take the directory for one it was filling.
    marked_here: bool,
    /// Directories whose entries change, flushed before the version is recorded.
    touched: BTreeSet<PathBuf>,
    /// Targets that are directories now: replacing one removes what is under it, so it
    /// waits for the deletions.
    deferred: Vec<(PathBuf, PathBuf)>,
}

impl<'a> Applier<'a> {
    /// Opens the mirror for writing. A first sync marks that it began writing (when it
    /// writes, in [`Applier::write`]), so that if it is interrupted the next one finishes
    /// it (instead of refusing a directory that is no longer empty).
    pub(super) fn begin(
        (opts, mirror): (&'a SyncOptions, &'a Mirror),
        (first_sync, version): (bool, u64),
    ) -> Result<Self, SyncError> {
        // Every write from here on is relative to directory handles opened without
        // following symlinks (`tree.rs`), resolved again for each operation: a directory
        // swapped for a symlink while the sync runs cannot send a write, a mode change or a
        // deletion outside the mirror. Only the directories the plan makes are made; a
        // symlink or a missing directory anywhere else fails the sync, and the next one
        // checks every directory. The root is the directory the sync locked, not its path
        // looked up again.
        Ok(Applier {
            tree: mirror.tree()?,
            mirror,
            opts,
            mark: first_sync.then_some(version),
            marked_here: false,
            touched: BTreeSet::new(),
            deferred: Vec::new(),
        })
    }

    /// Steps 3 and 4a for `planned` (the whole plan, or one wave of a large first sync):
    /// directories, parents first, then every new file written beside its target, flushed
    /// unless `together` (the caller then flushes them all at once in
    /// [`Applier::finish`]). If anything fails (a full disk, a chunk that no longer
    /// verifies, a directory swapped for a symlink), the caller undoes everything
    /// `prepared` holds ([`Applier::undo`]): the mirror is as it was.
    pub(super) fn write(
        &mut self,
        store: &dyn StoreReader,
        state: &State,
        planned: &Planned,
        together: bool,
        prepared: &mut Prepared,
    ) -> Result<(), SyncError> {
        // Planned from what the mirror's path showed: still the locked directory?
        self.mirror.check()?;
        if let Some(version) = self.mark.take() {
            self.marked_here = !state.applying(&self.opts.tree);
            state.set_applying(&self.opts.tree, version)?;
        }
        // Directory handles are looked up again: one moved away since the last wave is not
        // written through.
        self.tree.refresh();
        let Planned {
            plan,
            refs: all_refs,
        } = planned;
        let (tree, opts) = (&mut self.tree, self.opts);
        let dest = &opts.dest;
        let Prepared {
            created,
            aside,
            ready,
            late,
            dir_mtimes,
        } = prepared;
        let mut remember_mtime = |tree: &mut Tree, rel: PathBuf| -> Result<(), SyncError> {
            if let std::collections::hash_map::Entry::Vacant(v) = dir_mtimes.entry(rel) {
                let fd = tree.dir(v.key())?;
                let m = crate::tree::mtime_of(&fd).at(tree.abs(v.key()))?;
                v.insert(m);
            }
            Ok(())
        };
        // A file or symlink where a directory goes is moved aside (renamed, not deleted):
        // a failure puts it back, and it is deleted with the other deletions.
        for d in &plan.mkdirs {
            remember_mtime(tree, parent_of(d))?;
            match tree.kind(d)? {
                Some(rustix::fs::FileType::Directory) => {}
                Some(_) => {
                    let tmp = crate::tree::temp_beside(d);
                    tree.rename(d, &tmp)?;
                    aside.push((d.clone(), tmp));
                    tree.mkdir(d)?;
                    created.push(d.clone());
                }
                None => {
                    tree.mkdir(d)?;
                    created.push(d.clone());
                }
            }
            pulpdist_failpoint::hit("sync.mkdir");
        }
        // 4a. Every new file is written beside its target first, and made durable before
        // any is renamed: one by one (fsync) for a small plan, all at once (one syncfs
        // after the last) for a large one, where a flush per file would cost more than the
        // writing (a first sync of many small files).
        let progress = &opts.progress;
        let total = plan.files.iter().map(|f| f.size).sum();
        progress.start("write", plan.files.len() as u64, total);
        ready.reserve(plan.files.len());
        for op in &plan.files {
            let tag = crate::tree::temp_tag();
            let tmp = crate::tree::temp_named(&op.path, &tag);
            remember_mtime(tree, parent_of(&op.path))?;
            let file = tree.create_new(&tmp)?;
            ready.push(&op.path, tag, op.metadata);
            let abs = tree.abs(&tmp);
            *late += write_file(
                dest,
                state,
                file,
                &abs,
                op,
                all_refs,
                (store, opts.max_gap),
                !together,
            )?;
            pulpdist_failpoint::hit("sync.write");
            progress.advance(1, op.size);
        }
        progress.finish();
        Ok(())
    }

    /// Undoes what `prepared` holds: the temporary files and new directories removed,
    /// what was moved aside put back, directory mtimes restored; and the mark, if this
    /// sync set it.
    pub(super) fn undo(&mut self, state: &State, prepared: &Prepared) {
        self.undo_writes(prepared);
        if self.marked_here {
            let _ = state.clear_applying(&self.opts.tree);
        }
    }

    fn undo_writes(&mut self, prepared: &Prepared) {
        let tree = &mut self.tree;
        for r in prepared.ready.iter() {
            let _ = tree.remove_file(&r.tmp());
        }
        for d in prepared.created.iter().rev() {
            let _ = tree.remove_dir(d);
        }
        for (target, tmp) in &prepared.aside {
            let _ = tree.rename(tmp, target);
        }
        for (rel, mtime) in &prepared.dir_mtimes {
            if let Ok(fd) = tree.dir(rel) {
                let _ = crate::tree::set_mtime(&fd, *mtime);
            }
        }
    }

    /// Steps 4b to 10, once every file is written: flushed all at once (`together`), the
    /// mirror marked as between versions, then renames, deletions and directory
    /// attributes in order, and every changed directory flushed. `plan` gives the
    /// symlinks, attribute fixes, deletions and directory attributes. The chunks fetched
    /// late.
    pub(super) fn finish(
        mut self,
        state: &State,
        plan: &Plan,
        prepared: Prepared,
        together: bool,
        (first_sync, version): (bool, u64),
    ) -> Result<u64, SyncError> {
        // 4b. From here until the version is recorded the mirror is between versions: say
        // so, durably (after the flush, before the first rename).
        let ready = match together {
            true => self.tree.sync_filesystem(),
            false => Ok(()),
        };
        let ready = ready.and_then(|()| self.mirror.check());
        if let Err(e) = ready.and_then(|()| state.set_applying(&self.opts.tree, version)) {
            self.undo(state, &prepared);
            return Err(e);
        }
        pulpdist_failpoint::hit("sync.applying");
        self.touched
            .extend(prepared.created.iter().map(|d| parent_of(d)));
        self.rename_in_order(plan, &prepared.ready)?;
        self.delete_in_order(plan, &prepared.aside)?;
        self.settle(plan, first_sync)?;
        Ok(prepared.late)
    }

    /// Renames `tmp` over `target`, or defers it when a directory is there.
    fn put(&mut self, tmp: PathBuf, target: PathBuf) -> Result<(), SyncError> {
        self.touched.insert(parent_of(&target));
        if self.tree.is_dir(&target) {
            self.deferred.push((tmp, target));
            return Ok(());
        }
        self.tree.rename(&tmp, &target)
    }

    /// Steps 4b to 7: each file appears by rename, complete, in an order that keeps every
    /// repository index on the mirror true to what it names: payload files, then payload
    /// symlinks and mode changes, then repository metadata (the plan orders it: indexes
    /// before the files that list them, deepest first).
    fn rename_in_order(&mut self, plan: &Plan, ready: &ReadyList) -> Result<(), SyncError> {
        let patterns = &self.opts.metadata_patterns;
        let is_meta = |p: &Path| rank_of(p.file_name().unwrap_or_default(), patterns) < 2;
        let mut meta_ready = Vec::new();
        for r in ready.iter() {
            if r.metadata {
                meta_ready.push(r);
                continue;
            }
            pulpdist_failpoint::hit_at("sync.rename", &self.tree.abs(&r.target));
            self.put(r.tmp(), r.target)?;
        }
        // In the plan's order already, unless gathered over several waves.
        meta_ready.sort_by_cached_key(|r| super::plan::metadata_order(&r.target));
        // 5. Symlinks, also by rename (those named as metadata with the metadata).
        let (meta_links, payload_links): (Vec<_>, Vec<_>) =
            plan.symlinks.iter().partition(|(path, _, _)| is_meta(path));
        for (path, link_target, mtime) in payload_links {
            let tmp = crate::tree::temp_beside(path);
            self.tree.symlink(&tmp, link_target, *mtime)?;
            pulpdist_failpoint::hit_at("sync.symlink", &self.tree.abs(path));
            self.put(tmp, path.clone())?;
        }
        // 6. Attribute fixes of current files (a mode or an mtime: no index names them),
        // flushed before the version is recorded: each, or for many (a release that
        // re-stamped its files) all at once.
        let flush_each = plan.attrs.len() <= FLUSH_EACH_UP_TO;
        for a in &plan.attrs {
            if let Some(shared) = self
                .tree
                .set_file_attrs(&a.path, a.mode, a.mtime, a.seen, flush_each)?
            {
                // Other hard links share this file (a mirror deduplicated by links, or a link
                // planted from elsewhere): a copy with the new attributes takes its name, and
                // the shared inode is left alone.
                let tmp = crate::tree::temp_beside(&a.path);
                // Copied from the handle the size and mtime were checked on.
                let copy = self.tree.copy_file(shared, &tmp)?;
                let fd: std::os::fd::OwnedFd = copy.into();
                crate::tree::set_fd_attrs(&fd, a.mode, a.mtime, true).at(self.tree.abs(&tmp))?;
                self.tree.rename(&tmp, &a.path)?;
            }
            self.touched.insert(parent_of(&a.path));
            pulpdist_failpoint::hit("sync.attr");
        }
        if !flush_each {
            self.tree.sync_filesystem()?;
        }
        // 7. Repository metadata, in the plan's order.
        for r in meta_ready {
            pulpdist_failpoint::hit_at("sync.rename_metadata", &self.tree.abs(&r.target));
            self.put(r.tmp(), r.target)?;
        }
        for (path, link_target, mtime) in meta_links {
            let tmp = crate::tree::temp_beside(path);
            self.tree.symlink(&tmp, link_target, *mtime)?;
            pulpdist_failpoint::hit_at("sync.symlink_metadata", &self.tree.abs(path));
            self.put(tmp, path.clone())?;
        }
        Ok(())
    }

    /// Step 8: deletions, last, deepest first; the old indexes before the files they name
    /// (top indexes, then the other metadata and directories holding some, then the rest);
    /// then what was moved aside; then the directories replaced by a file or link.
    fn delete_in_order(
        &mut self,
        plan: &Plan,
        aside: &[(PathBuf, PathBuf)],
    ) -> Result<(), SyncError> {
        let (dest, patterns) = (&self.opts.dest, &self.opts.metadata_patterns);
        let rank = |name: &std::ffi::OsStr| rank_of(name, patterns);
        let deleted_file = |p: &Path| pulpdist_failpoint::hit_at("sync.delete_file", p);
        let mut deletes: Vec<(u8, &PathBuf)> = plan
            .deletes
            .iter()
            .map(|d| (deletion_rank(dest, d, patterns), d))
            .collect();
        deletes.sort_by_key(|(rank, _)| *rank);
        for (_, d) in deletes {
            pulpdist_failpoint::hit_at("sync.delete", &self.tree.abs(d));
            self.tree.remove_ranked(d, &rank, &deleted_file)?;
            self.touched.insert(parent_of(d));
        }
        for (_, tmp) in aside {
            pulpdist_failpoint::hit_at("sync.delete", &self.tree.abs(tmp));
            self.tree.remove_ranked(tmp, &rank, &deleted_file)?;
            self.touched.insert(parent_of(tmp));
        }
        for (tmp, target) in std::mem::take(&mut self.deferred) {
            pulpdist_failpoint::hit_at("sync.replace_dir", &self.tree.abs(&target));
            self.tree.remove_ranked(&target, &rank, &deleted_file)?;
            self.tree.rename(&tmp, &target)?;
        }
        Ok(())
    }

    /// Steps 9 and 10: directory modes and mtimes, now that their contents are final; then
    /// every directory whose entries changed flushed before the version is recorded (after
    /// a power cut, a recorded version never has renames that were lost), walked again from
    /// the root: a directory swapped for a symlink during the sync (its writes went to the
    /// directory that was moved away) fails here, before the version is recorded, and the
    /// next sync checks every directory.
    fn settle(&mut self, plan: &Plan, first_sync: bool) -> Result<(), SyncError> {
        let dest = &self.opts.dest;
        for a in &plan.dir_attrs {
            let fd = self.tree.dir(&a.path)?;
            // Flushed below with every touched directory.
            crate::tree::set_fd_attrs(&fd, a.mode, a.mtime, false).at(self.tree.abs(&a.path))?;
            self.touched.insert(a.path.clone());
            pulpdist_failpoint::hit("sync.dir_attr");
        }
        if first_sync {
            // A first sync made the mirror directory itself: its entry in its parent, too.
            if let Some(parent) = dest.parent() {
                sync_dir(parent)?;
            }
            self.touched.insert(PathBuf::new());
        }
        self.tree.refresh();
        // Each directory flushed, or for many (a release re-stamps thousands) the
        // filesystem once; every one is opened again either way.
        let flush_each = self.touched.len() <= FLUSH_EACH_UP_TO;
        for rel in &self.touched {
            let fd = self.tree.dir(rel)?;
            if flush_each {
                crate::tree::sync(&fd).at(self.tree.abs(rel))?;
            }
        }
        if !flush_each {
            self.tree.sync_filesystem()?;
        }
        pulpdist_failpoint::hit("sync.synced");
        Ok(())
    }
}
/// When to delete `path` among the deletions: 0 a top index (Release, repomd.xml), 1 other
/// metadata or a directory holding some, 2 the rest. An index is deleted before what it
/// names, so no index on the mirror ever names a file already gone.
fn deletion_rank(dest: &Path, rel: &Path, patterns: &[String]) -> u8 {
    let named = |p: &Path, pats: &[&str]| {
        let name = p.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        pats.iter().any(|pat| glob_match(pat.as_bytes(), name))
    };
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    if named(rel, crate::glob::TOP_METADATA_PATTERNS) {
        return 0;
    }
    if named(rel, &patterns) {
        return 1;
    }
    // A directory is looked into (never through a symlink, at most 100,000 entries: past
    // that it is taken to hold metadata) for metadata.
    if symlink_on_the_way(dest, rel.parent().unwrap_or(Path::new(""))) {
        return 2;
    }
    let mut todo = vec![dest.join(rel)];
    let mut seen = 0usize;
    while let Some(p) = todo.pop() {
        seen += 1;
        if seen > 100_000 {
            return 1;
        }
        if named(&p, &patterns) {
            return 1;
        }
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            if let Ok(rd) = fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    2
}

/// Plans of at most this many files (attribute fixes, directories, a delta's nodes) flush
/// each as it is written; larger ones flush the filesystem once after the last.
pub(super) const FLUSH_EACH_UP_TO: usize = 64;

/// Writes one file's content into `file` (the new temporary file `tmp`), sets its mode
/// and mtime, and (with `flush`) flushes it.
#[allow(clippy::too_many_arguments)]
fn write_file(
    dest: &Path,
    state: &State,
    file: File,
    tmp: &Path,
    op: &super::plan::FileOp,
    refs: &HashMap<ChunkId, ChunkRef>,
    (store, max_gap): (&dyn StoreReader, u64),
    flush: bool,
) -> Result<u64, SyncError> {
    let mut late = 0;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, file);
    // Bytes skipped over (left a hole) since the last write.
    let mut hole = 0u64;
    let mut end = 0u64;
    for (id, len, src) in &op.chunks {
        let chunk = match src {
            Source::Local { path, offset } => match read_local(dest, path, *offset, *len, *id) {
                Ok(c) => c,
                Err(_) => {
                    // The local copy changed since it was observed: fetch this chunk instead.
                    let r = refs.get(id).copied().into_iter().collect::<Vec<_>>();
                    late += fetch_loose(store, state, &r, max_gap)?;
                    state.read_staged(id)?
                }
            },
            Source::Staged | Source::Fetch(_) => state.read_staged(id)?,
        };
        end += chunk.data().len() as u64;
        if is_zeros(chunk.data()) {
            hole += chunk.data().len() as u64;
            continue;
        }
        if hole > 0 {
            seek_over(&mut f, hole).at(tmp)?;
            hole = 0;
        }
        f.write_all(chunk.data()).at(tmp)?;
    }
    let file = f.into_inner().map_err(|e| e.into_error()).at(tmp)?;
    if hole > 0 {
        // A file that ends in zeros: its length is set, its last blocks stay a hole.
        file.set_len(end).at(tmp)?;
    }
    file.set_permissions(fs::Permissions::from_mode(op.mode))
        .at(tmp)?;
    // The mtime before the flush (on the open file, not by path), so that it is on disk
    // with the bytes.
    crate::tree::set_file_mtime(&file, op.mtime).at(tmp)?;
    if flush {
        file.sync_all().at(tmp)?;
    }
    Ok(late)
}

/// A chunk of only zeros, at least a filesystem block long, is not written: the new file
/// is empty to begin with, so skipping it leaves a hole that reads as the same zeros and
/// takes no disk (as `rsync --sparse`, `cp --sparse=auto`). A 4 GiB image of a mostly
/// empty disk costs the mirror only its written blocks.
fn is_zeros(data: &[u8]) -> bool {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    data.len() >= BLOCK && data.chunks(BLOCK).all(|b| b == &ZEROS[..b.len()])
}

/// Moves the writer `n` bytes on from its end, past bytes it never writes.
fn seek_over(f: &mut std::io::BufWriter<File>, n: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let n = i64::try_from(n).map_err(|_| std::io::Error::other("hole too large"))?;
    f.seek(SeekFrom::Current(n)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, MemStore};
    use super::*;
    use pulpdist_format::VerifiedChunk;
    use std::os::unix::fs::MetadataExt;

    /// Applies `planned` as version 2 over version 1, the mirror locked as a sync locks it.
    fn apply_v2(opts: &SyncOptions, state: &State, planned: &Planned) -> Result<u64, SyncError> {
        let mirror = testkit::mirror(opts);
        apply(
            &MemStore::default(),
            state,
            (opts, &mirror),
            planned,
            (false, 2),
        )
    }

    #[test]
    fn a_planned_file_is_written_whole_with_its_attributes_and_extras_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let m = &opts.dest;
        fs::create_dir_all(m.join("sub")).expect("mirror");
        fs::write(m.join("old"), b"gone").expect("old");
        fs::write(m.join("sub/f"), b"previous").expect("previous");
        let chunk = VerifiedChunk::from_plain(ChunkId::of(b"new"), b"new".to_vec()).expect("chunk");
        state.stage(&chunk).expect("staged");
        let plan = Plan {
            files: vec![super::super::plan::FileOp {
                path: "sub/f".into(),
                size: 3,
                mode: 0o640,
                mtime: testkit::mtime(100),
                metadata: false,
                chunks: vec![(chunk.id(), 3, Source::Staged)],
            }],
            deletes: vec!["old".into()],
            ..Plan::default()
        };
        let planned = Planned {
            plan,
            refs: HashMap::new(),
        };
        apply_v2(&opts, &state, &planned).expect("applied");
        assert_eq!(fs::read(m.join("sub/f")).expect("read"), b"new");
        let md = fs::metadata(m.join("sub/f")).expect("stat");
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o640, 100));
        assert!(!m.join("old").exists());
        // Nothing but the new file is left beside it (no temporary file).
        assert_eq!(fs::read_dir(m.join("sub")).expect("list").count(), 1);
    }

    #[test]
    fn runs_of_zeros_are_left_as_holes_and_read_back_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let m = &opts.dest;
        fs::create_dir_all(m).expect("mirror");
        let zeros = vec![0u8; 1 << 20];
        let text = b"between the holes".to_vec();
        let mut chunks = Vec::new();
        for data in [&zeros, &text] {
            let c = VerifiedChunk::from_plain(ChunkId::of(data), data.clone()).expect("chunk");
            state.stage(&c).expect("staged");
            chunks.push((c.id(), data.len() as u32, Source::Staged));
        }
        // Zeros first, between and last: 4 MiB of zeros, 34 bytes of text.
        let order = [0, 0, 1, 0, 1, 0];
        let want: Vec<u8> = order
            .iter()
            .flat_map(|&i| if i == 0 { zeros.clone() } else { text.clone() })
            .collect();
        let plan = Plan {
            files: vec![super::super::plan::FileOp {
                path: "disk.img".into(),
                size: want.len() as u64,
                mode: 0o644,
                mtime: testkit::mtime(100),
                metadata: false,
                chunks: order.iter().map(|&i| chunks[i].clone()).collect(),
            }],
            ..Plan::default()
        };
        let planned = Planned {
            plan,
            refs: HashMap::new(),
        };
        apply_v2(&opts, &state, &planned).expect("applied");
        let got = fs::read(m.join("disk.img")).expect("read");
        assert!(
            got == want,
            "{} bytes read, {} meant",
            got.len(),
            want.len()
        );
        let md = fs::metadata(m.join("disk.img")).expect("stat");
        assert_eq!(md.len(), want.len() as u64);
        // Two blocks of text; a filesystem without holes would hold all 4 MiB.
        assert!(md.blocks() * 512 <= 256 << 10, "{} blocks", md.blocks());
    }

    #[test]
    fn indexes_are_deleted_before_what_they_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path();
        fs::create_dir_all(m.join("dists/x/main")).expect("dists");
        fs::write(m.join("dists/x/main/Packages.gz"), b"p").expect("Packages");
        fs::create_dir_all(m.join("pool")).expect("pool");
        let pats: Vec<String> = crate::DEFAULT_METADATA_PATTERNS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rank = |p: &str| deletion_rank(m, Path::new(p), &pats);
        assert_eq!(rank("dists/x/InRelease"), 0);
        assert_eq!(rank("dists/x/main/Packages.gz"), 1);
        assert_eq!(rank("dists"), 1, "a directory holding an index");
        assert_eq!(rank("pool/a.deb"), 2);
        assert_eq!(rank("pool"), 2);
    }

    #[test]
    fn a_failure_before_the_first_rename_leaves_the_mirror_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (opts, state) = (testkit::options(dir.path()), testkit::state(dir.path()));
        let m = &opts.dest;
        fs::create_dir_all(m).expect("mirror");
        fs::write(m.join("a"), b"old a").expect("a");
        fs::write(m.join("gone"), b"stays").expect("gone");
        let staged =
            VerifiedChunk::from_plain(ChunkId::of(b"new a"), b"new a".to_vec()).expect("chunk");
        state.stage(&staged).expect("staged");
        let file = |path: &str, id: ChunkId| super::super::plan::FileOp {
            path: path.into(),
            size: 5,
            mode: 0o644,
            mtime: testkit::mtime(100),
            metadata: false,
            chunks: vec![(id, 5, Source::Staged)],
        };
        // The second file's chunk is in no staging area: writing it fails.
        let plan = Plan {
            mkdirs: vec!["newdir".into()],
            files: vec![
                file("a", staged.id()),
                file("newdir/b", ChunkId::of(b"lost")),
            ],
            deletes: vec!["gone".into()],
            ..Plan::default()
        };
        let planned = Planned {
            plan,
            refs: HashMap::new(),
        };
        let before = std::collections::BTreeSet::from(["a".to_string(), "gone".to_string()]);
        apply_v2(&opts, &state, &planned).expect_err("fails");
        let names: std::collections::BTreeSet<String> = fs::read_dir(m)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names, before,
            "no temporary file, no new directory, nothing deleted"
        );
        assert_eq!(fs::read(m.join("a")).expect("a"), b"old a");
        assert!(
            !state.applying("t"),
            "nothing was renamed: the mirror is not between versions"
        );
    }
}
