//! The client's own state, beside (never inside) the mirror: the head last applied,
//! the index nodes of that version, and the staging area of verified chunks that lets a
//! killed sync resume without fetching them again.
//!
//! Layout of the state directory: `lock` (holds the running sync's pid; a dry run takes it
//! shared, creates nothing and keeps fetched nodes in memory), `applied-<tree>` (the head
//! last applied), `etag-<tree>` (the store's tag for it and which store gave it),
//! `applying-<tree>` (a sync is between versions: the next checks every directory),
//! `nodes/` (the node cache, each node verified again when read), `nodes-live`,
//! `staging/` (segment files of verified chunks) and `fallback/` (files from rsync).
//! `set_applied` removes the old tag first and writes the new one last, so a tag on disk
//! always belongs to the head on disk; the recorded version only rises. `prune_nodes`
//! runs once the cache holds more than twice the last live count plus 16.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use pulpdist_format::{ChunkId, EntryKind, Head, Node, NodeId, ResolvedFiles, VerifiedChunk};

use crate::error::{IoContext, SyncError};
use crate::fsutil::{sync_dir, write_atomic};
use crate::staging::Staging;

/// Cached nodes beyond twice the live ones before a prune walks the applied trees.
pub(crate) const PRUNE_SLACK: usize = 16;

/// How a sync opens the state directory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access {
    /// A sync that changes the mirror: the state directory is created if needed and locked
    /// exclusively (`lock`, holding the pid) for the whole sync; another sync is
    /// [`SyncError::Busy`] unless the lock frees within `wait`.
    Write { wait: Duration },
    /// A dry run: nothing is created or written anywhere; nodes fetched stay in memory. An
    /// existing state is locked shared, so a dry run never reads a sync's state mid-change.
    ReadOnly { wait: Duration },
}

pub(crate) struct State {
    /// Where every file of the state is reached: the opened directory's handle under
    /// `/proc` ([`open_state_dir`]), so that renaming the state directory's path while a
    /// sync runs (a local user who can write its parent, planting a symlink in its place)
    /// changes nothing about where the sync writes; `shown` where `/proc` does not show it.
    dir: PathBuf,
    /// The state directory as the operator named it, for messages.
    shown: PathBuf,
    /// The opened directory `dir` names.
    _handle: Option<File>,
    staging: Staging,
    read_only: bool,
    /// Nodes fetched by a dry run (never written to disk).
    mem_nodes: Mutex<HashMap<NodeId, Vec<u8>>>,
    /// What the composite files of nodes of the tree being synced resolve to (FORMAT.md
    /// 5.2): [`State::node`] gives those nodes with them as plain files.
    resolved: Mutex<HashMap<NodeId, std::sync::Arc<ResolvedFiles>>>,
    /// The lock, held until the state is dropped (or the process dies).
    _lock: Option<File>,
}

impl State {
    pub(crate) fn open(dir: &Path, access: Access) -> Result<Self, SyncError> {
        let (read_only, wait) = match access {
            Access::Write { wait } => (false, wait),
            Access::ReadOnly { wait } => (true, wait),
        };
        state_dir_private(dir)?;
        if !read_only {
            fs::create_dir_all(dir).at(dir)?;
        }
        let handle = open_state_dir(dir)?;
        let via = match &handle {
            Some((h, id)) => via_proc(h, *id).unwrap_or_else(|| {
                tracing::warn!(state = %dir.display(), "/proc does not show this process's descriptors: the state directory is reached by its path, so whoever can rename it while a sync runs can redirect the state's writes");
                dir.to_path_buf()
            }),
            None => dir.to_path_buf(),
        };
        let lock_path = dir.join("lock");
        let lock_via = via.join("lock");
        // Never through a symlink, never waiting on a FIFO.
        let no_follow = (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32;
        let lock = if read_only {
            let opened = OpenOptions::new()
                .read(true)
                .custom_flags(no_follow)
                .open(&lock_via);
            match opened {
                Ok(f) => Some(take_lock(f, &lock_path, dir, wait, true)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).at(lock_path),
            }
        } else {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .custom_flags(no_follow)
                .open(&lock_via)
                .at(&lock_path)?;
            let mut f = take_lock(f, &lock_path, dir, wait, false)?;
            f.set_len(0).at(&lock_path)?;
            let _ = writeln!(f, "pid {}", std::process::id());
            for sub in ["nodes", "staging"] {
                fs::create_dir_all(via.join(sub)).at(dir.join(sub))?;
            }
            Some(f)
        };
        Ok(State {
            staging: Staging::new(via.join("staging")),
            dir: via,
            shown: dir.to_path_buf(),
            _handle: handle.map(|(h, _)| h),
            read_only,
            mem_nodes: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// The state directory, for reaching files in it (a handle's path under `/proc`: see
    /// [`State::named`] for messages).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `e` with the state's paths as the operator named them (not as reached, through the
    /// handle under `/proc`).
    pub(crate) fn named(&self, e: SyncError) -> SyncError {
        let name = |p: PathBuf| match p.strip_prefix(&self.dir) {
            Ok(rest) if self.dir != self.shown => self.shown.join(rest),
            _ => p,
        };
        match e {
            SyncError::Io { path, source } => SyncError::Io {
                path: name(path),
                source,
            },
            SyncError::Unsafe { path, reason } => SyncError::Unsafe {
                path: name(path),
                reason,
            },
            SyncError::State { path, detail } => SyncError::State {
                path: name(path),
                detail,
            },
            SyncError::Format { object, source } => SyncError::Format {
                object: self.named_text(object),
                source,
            },
            SyncError::Http {
                url,
                status,
                detail,
                temporary,
            } => SyncError::Http {
                url,
                status,
                detail: self.named_text(detail),
                temporary,
            },
            other => other,
        }
    }

    /// `text` with the state's paths as named: each `/proc/<pid>/fd/<n>` of the state
    /// followed by `/` or ending the text (not a longer descriptor number).
    fn named_text(&self, text: String) -> String {
        let (Some(via), Some(shown)) = (self.dir.to_str(), self.shown.to_str()) else {
            return text;
        };
        if via == shown || !text.contains(via) {
            return text;
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(via) {
            let after = &rest[at + via.len()..];
            out.push_str(&rest[..at]);
            match after.is_empty() || after.starts_with('/') {
                true => out.push_str(shown),
                false => out.push_str(via),
            }
            rest = after;
        }
        out.push_str(rest);
        out
    }

    fn applied_path(&self, tree: &str) -> PathBuf {
        self.dir.join(format!("applied-{tree}"))
    }

    /// The head last applied (our own record, written after a complete sync).
    pub(crate) fn applied(&self, tree: &str) -> Result<Option<Head>, SyncError> {
        let p = self.applied_path(tree);
        match fs::read(&p) {
            Ok(b) => {
                let (h, _, _) = Head::decode_unverified(&b).map_err(|source| SyncError::State {
                    path: p.clone(),
                    detail: source.to_string(),
                })?;
                Ok(Some(h))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(p),
        }
    }

    /// The bytes of the head last applied.
    pub(crate) fn applied_bytes(&self, tree: &str) -> Result<Option<Vec<u8>>, SyncError> {
        let p = self.applied_path(tree);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(p),
        }
    }

    fn applying_path(&self, tree: &str) -> PathBuf {
        self.dir.join(format!("applying-{tree}"))
    }

    /// Whether a sync of `tree` began renaming files into place and did not finish.
    pub(crate) fn applying(&self, tree: &str) -> bool {
        self.applying_path(tree).exists()
    }

    /// Marks the start of the rename phase of `version`.
    pub(crate) fn set_applying(&self, tree: &str, version: u64) -> Result<(), SyncError> {
        let text = format!("renaming files into place\nversion {version}\n");
        write_atomic(&self.applying_path(tree), text.as_bytes())?;
        sync_dir(&self.dir)
    }

    /// The version an interrupted sync was renaming into place, if the mark names one:
    /// parts of the mirror may hold it, so no older version may be applied over them.
    pub(crate) fn applying_version(&self, tree: &str) -> Option<u64> {
        let text = fs::read_to_string(self.applying_path(tree)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("version "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Clears the mark once the version is recorded.
    pub(crate) fn clear_applying(&self, tree: &str) -> Result<(), SyncError> {
        let p = self.applying_path(tree);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(p),
        }
    }

    fn etag_path(&self, tree: &str) -> PathBuf {
        self.dir.join(format!("etag-{tree}"))
    }

    /// The entity tag `store` gave the head last applied, if it gave one (a tag from
    /// another store means nothing here).
    pub(crate) fn etag(&self, tree: &str, store: &str) -> Option<String> {
        let text = fs::read_to_string(self.etag_path(tree)).ok()?;
        let (from, tag) = text.split_once('\n')?;
        (from == store && !tag.is_empty()).then(|| tag.to_string())
    }

    /// Records `head_bytes` as applied. The old tag goes first and the new one last, so a
    /// tag on disk always belongs to the head on disk (or to none: then it is unconditional).
    pub(crate) fn set_applied(
        &self,
        tree: &str,
        head_bytes: &[u8],
        etag: Option<&str>,
        store: &str,
    ) -> Result<(), SyncError> {
        // The recorded version only ever rises (the lock keeps other syncs out; this keeps
        // out anything else that wrote the state meanwhile).
        let (new, _, _) =
            Head::decode_unverified(head_bytes).map_err(|source| SyncError::Format {
                object: "head to record".into(),
                source,
            })?;
        if let Some(old) = self.applied(tree)? {
            if old.version > new.version {
                return Err(SyncError::Rollback {
                    tree: tree.into(),
                    offered: new.version,
                    applied: old.version,
                });
            }
        }
        let tag = self.etag_path(tree);
        match fs::remove_file(&tag) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(tag),
        }
        write_atomic(&self.applied_path(tree), head_bytes)?;
        if let Some(t) = etag {
            write_atomic(&tag, format!("{store}\n{t}").as_bytes())?;
        }
        // The record survives a power cut only once its directory entry does.
        sync_dir(&self.dir)
    }

    /// Where node `id` is cached.
    pub(crate) fn node_path(&self, id: &NodeId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join("nodes").join(&hex[..2]).join(&hex)
    }

    /// A node from the local node store (verified again: the state is not trusted blindly),
    /// with its composite files resolved if [`State::set_resolved`] was given it.
    pub(crate) fn node(&self, id: &NodeId) -> Option<Node> {
        let files = self
            .resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        let node = self.stored_node(id)?;
        Some(match files {
            Some(files) => node.with_files(&files),
            None => node,
        })
    }

    /// What the composite files of node `id` resolve to in the tree being synced.
    pub(crate) fn set_resolved(&self, id: NodeId, files: ResolvedFiles) {
        // The first resolution stays: the new tree's come first, and an old node of the
        // same id resolves to the same chunks (its `chunk_hash`), at older locations.
        let mut m = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        m.entry(id).or_insert_with(|| std::sync::Arc::new(files));
    }

    /// A node as stored (its composite files not resolved), verified.
    pub(crate) fn stored_node(&self, id: &NodeId) -> Option<Node> {
        Node::decode(&self.node_bytes(id)?).ok()
    }

    /// The error for a node the sync fetched or checked but can no longer read back (a
    /// cached node deleted or damaged behind the sync's back).
    pub(crate) fn lost_node(&self, id: &NodeId) -> SyncError {
        self.named(SyncError::State {
            path: self.node_path(id),
            detail: format!("index node {id} vanished from the node cache during the sync"),
        })
    }

    /// A node's encoding from the local node store, verified.
    pub(crate) fn node_bytes(&self, id: &NodeId) -> Option<Vec<u8>> {
        let in_memory = self.mem_nodes.lock().ok().and_then(|m| m.get(id).cloned());
        let bytes = match in_memory {
            Some(b) => b,
            None => fs::read(self.node_path(id)).ok()?,
        };
        (NodeId::of(&bytes) == *id).then_some(bytes)
    }

    pub(crate) fn has_node(&self, id: &NodeId) -> bool {
        self.mem_nodes.lock().is_ok_and(|m| m.contains_key(id)) || self.node_path(id).exists()
    }

    pub(crate) fn put_node(&self, id: &NodeId, plain: &[u8]) -> Result<(), SyncError> {
        if self.read_only {
            if let Ok(mut m) = self.mem_nodes.lock() {
                m.insert(*id, plain.to_vec());
            }
            return Ok(());
        }
        let p = self.node_path(id);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        write_atomic(&p, plain)
    }

    /// Caches many nodes with one flush: each written under a temporary name, then the
    /// state's filesystem flushed once (`syncfs`), then each renamed into place. A power
    /// cut leaves a node whole or absent, never a torn file under its id.
    pub(crate) fn put_nodes(&self, nodes: &[(NodeId, Vec<u8>)]) -> Result<(), SyncError> {
        if self.read_only {
            for (id, plain) in nodes {
                self.put_node(id, plain)?;
            }
            return Ok(());
        }
        let mut pending = Vec::with_capacity(nodes.len());
        let written = self.write_nodes(nodes, &mut pending);
        if written.is_err() {
            // Nothing of a failed batch stays behind under a temporary name.
            for (tmp, _) in &pending {
                let _ = fs::remove_file(tmp);
            }
        }
        written
    }

    /// [`Self::put_nodes`]'s work: each temporary file is in `pending` (with its node's
    /// path) from before it is written until it is renamed.
    fn write_nodes(
        &self,
        nodes: &[(NodeId, Vec<u8>)],
        pending: &mut Vec<(PathBuf, PathBuf)>,
    ) -> Result<(), SyncError> {
        for (id, plain) in nodes {
            let p = self.node_path(id);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).at(parent)?;
            }
            let tmp = crate::fsutil::temp_beside(&p);
            pending.push((tmp.clone(), p));
            fs::write(&tmp, plain).at(&tmp)?;
        }
        let dir = fs::File::open(&self.dir).at(&self.dir)?;
        rustix::fs::syncfs(&dir)
            .map_err(std::io::Error::from)
            .at(&self.dir)?;
        while let Some((tmp, p)) = pending.last() {
            fs::rename(tmp, p).at(p)?;
            pending.pop();
        }
        Ok(())
    }

    /// The cached node files, by id. Temporary files a killed sync left among them (the
    /// caller holds the state's lock: no other sync is writing) are removed on the way.
    fn cached_nodes(&self) -> Result<Vec<(NodeId, PathBuf)>, SyncError> {
        let nodes = self.dir.join("nodes");
        let mut out = Vec::new();
        for shard in fs::read_dir(&nodes).at(&nodes)? {
            let shard = shard.at(&nodes)?.path();
            if !shard.is_dir() {
                continue;
            }
            for f in fs::read_dir(&shard).at(&shard)? {
                let path = f.at(&shard)?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Ok(id) = name.parse::<NodeId>() {
                    out.push((id, path));
                } else if name.starts_with('.') && name.contains(".pulpdist-") {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the cached nodes that no applied tree reaches, and returns how many. Without
    /// this the cache keeps every version's changed directories for ever. The walk reads
    /// every node of the applied trees, so it runs only once the cache has grown to twice
    /// the live nodes the last prune counted (plus [`PRUNE_SLACK`]): its cost is spread
    /// over the versions that grew the cache, not paid by every sync. A node of an applied
    /// tree that is not cached hides its subtree: those nodes are fetched again if a later
    /// sync needs them.
    pub(crate) fn prune_nodes(&self) -> Result<u64, SyncError> {
        let cached = self.cached_nodes()?;
        let live_file = self.dir.join("nodes-live");
        let last_live: usize = fs::read_to_string(&live_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if cached.len() <= 2 * last_live + PRUNE_SLACK {
            return Ok(0);
        }
        let mut todo = Vec::new();
        for e in fs::read_dir(&self.dir).at(&self.dir)? {
            let name = e.at(&self.dir)?.file_name();
            if let Some(tree) = name.to_str().and_then(|n| n.strip_prefix("applied-")) {
                if let Some(h) = self.applied(tree)? {
                    todo.push(h.root.id);
                }
            }
        }
        let mut live = HashSet::new();
        while let Some(id) = todo.pop() {
            if !live.insert(id) {
                continue;
            }
            if let Some(node) = self.node(&id) {
                for e in node.entries() {
                    if let EntryKind::Dir { node } = &e.kind {
                        todo.push(node.id);
                    }
                }
            }
        }
        let mut removed = 0;
        for (id, path) in cached {
            if !live.contains(&id) {
                fs::remove_file(&path).at(&path)?;
                removed += 1;
            }
        }
        write_atomic(&live_file, live.len().to_string().as_bytes())?;
        Ok(removed)
    }

    pub(crate) fn stage(&self, chunk: &VerifiedChunk) -> Result<(), SyncError> {
        self.staging.put(chunk)
    }

    pub(crate) fn staged(&self) -> Result<Vec<ChunkId>, SyncError> {
        self.staging.ids()
    }

    /// Makes room in the staging index for `n` chunks in all.
    pub(crate) fn reserve_staged(&self, n: usize) -> Result<(), SyncError> {
        self.staging.reserve(n)
    }

    /// Those of `ids` that are staged.
    pub(crate) fn staged_of<'a>(
        &self,
        ids: impl Iterator<Item = &'a ChunkId>,
    ) -> Result<Vec<ChunkId>, SyncError> {
        self.staging.which(ids)
    }

    /// A staged chunk, verified again on the way out.
    pub(crate) fn read_staged(&self, id: &ChunkId) -> Result<VerifiedChunk, SyncError> {
        self.staging.get(id)
    }

    pub(crate) fn clear_staging(&self) -> Result<(), SyncError> {
        self.staging.clear()
    }
}

/// Locks `file` (exclusive, or shared for a dry run), waiting up to `wait` for another
/// sync to let go; then [`SyncError::Busy`] naming `what` and, if the file holds one, the
/// holder's pid.
fn take_lock(
    mut file: File,
    path: &Path,
    what: &Path,
    wait: Duration,
    shared: bool,
) -> Result<File, SyncError> {
    // A wait too long to represent is no deadline at all.
    let deadline = Instant::now().checked_add(wait);
    let mut announced = false;
    loop {
        let r = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match r {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock)
                if deadline.is_none_or(|d| Instant::now() < d) && !wait.is_zero() =>
            {
                if !announced {
                    pulpdist_failpoint::hit("sync.waiting");
                    announced = true;
                }
                let left = deadline.map_or(Duration::from_millis(50), |d| {
                    d.saturating_duration_since(Instant::now())
                });
                std::thread::sleep(Duration::from_millis(50).min(left));
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&mut file).take(64).read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(SyncError::Busy {
                    state: what.to_path_buf(),
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" ({holder})")
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(path),
        }
    }
}

/// Locks the mirror directory itself for a sync (exclusive; shared for a dry run), so that
/// two syncs of one mirror never run at once even when they keep their state in different
/// places (one with `--state`, one without; one naming the mirror through a symlink) or
/// keep none (an `rsync://` origin). A writer creates the directory; a dry run of a mirror
/// that does not exist yet locks nothing. Held until the returned file is dropped.
pub(crate) fn lock_mirror(
    dest: &Path,
    dry_run: bool,
    wait: Duration,
) -> Result<Option<Mirror>, SyncError> {
    if !dry_run {
        fs::create_dir_all(dest).at(dest)?;
    }
    // A directory, never waited on: a FIFO raced into its place fails the open.
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(dest);
    let file = match opened {
        Ok(f) => take_lock(f, dest, dest, wait, dry_run)?,
        Err(e) if dry_run && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(dest),
    };
    let st = rustix::fs::fstat(&file)
        .map_err(std::io::Error::from)
        .at(dest)?;
    let id = (st.st_dev, st.st_ino);
    // What the path is now, without following it: the opened directory itself, or a
    // symlink this user or root owns that names it. Compared with the handle, not with a
    // second lookup, so swapping the path between a symlink and a directory while these
    // calls run cannot make an open through another user's link pass.
    let named = match symlink_owned_here(dest, "mirror")? {
        Some(_) => rustix::fs::stat(dest).map(|st| (st.st_dev, st.st_ino)).ok(),
        None => lstat_id(dest),
    };
    let mirror = Mirror {
        path: dest.to_path_buf(),
        file,
        id,
    };
    if named != Some(id) {
        return Err(mirror.replaced());
    }
    Ok(Some(mirror))
}

/// `path` without trailing `/` or `.` components, so that a symlink is looked at, not
/// through (`mirror/` names what the link `mirror` points to).
fn plain(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The (device, inode) of `path` itself, not following a symlink.
fn lstat_id(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::lstat(plain(path)).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Whether `uid` may own what a sync trusts: this user, or root.
fn trusted(uid: u32) -> bool {
    uid == rustix::process::geteuid().as_raw() || uid == 0
}

/// Refuses a path (the mirror, `what`, or the state directory) that is a symlink owned by
/// another user than this one or root: the operator may name a directory through a
/// symlink of their own, but one another user planted (where they can write its parent,
/// between syncs or as one fails) would point a root sync's writes and deletions anywhere,
/// as the kernel's `protected_symlinks` refuses to follow such a link in a shared
/// directory. Nothing there yet is fine. `Some(owner)` if it is a symlink.
fn symlink_owned_here(path: &Path, what: &str) -> Result<Option<u32>, SyncError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(plain(path)) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    if !meta.file_type().is_symlink() {
        return Ok(None);
    }
    if meta.nlink() > 1 {
        // A hard link to someone's symlink (where `protected_hardlinks` is off) keeps its
        // owner: the owner says nothing about who put it here.
        return Err(SyncError::Unsafe {
            path: path.to_path_buf(),
            reason: format!(
                "the {what} is named through a symlink with {} hard links: another user may have linked it here; name the directory itself",
                meta.nlink()
            ),
        });
    }
    if trusted(meta.uid()) {
        return Ok(Some(meta.uid()));
    }
    Err(SyncError::Unsafe {
        path: path.to_path_buf(),
        reason: format!(
            "the {what} is named through a symlink owned by uid {}, not by this user (uid {}) or root: whoever owns it can point it anywhere; name the directory itself, or make the link yours (chown -h)",
            meta.uid(),
            rustix::process::geteuid().as_raw()
        ),
    })
}

/// Refuses a state directory another user owns or may write: everything in it is written
/// and read by path (the lock, nodes, staging, the applied versions), so whoever can plant
/// a symlink there could point a root sync's writes anywhere.
fn state_dir_private(dir: &Path) -> Result<(), SyncError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    symlink_owned_here(dir, "state directory")?;
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    private(dir, meta.uid(), meta.permissions().mode())
}

/// Refuses a state directory of owner `uid` and `mode` unless it is this user's or root's
/// and writable by no one else.
fn private(dir: &Path, uid: u32, mode: u32) -> Result<(), SyncError> {
    if trusted(uid) && mode & 0o022 == 0 {
        return Ok(());
    }
    Err(SyncError::Unsafe {
        path: dir.to_path_buf(),
        reason: format!(
            "the state directory is owned by uid {uid} (mode {:o}): it must be this user's or root's and writable by no one else, since another user could plant symlinks in it",
            mode & 0o7777
        ),
    })
}

/// A file's (device, inode).
type FileId = (u64, u64);

/// The state directory, opened (a dry run's that does not exist yet: `None`) and checked on
/// the handle: this user's or root's, writable by no one else, and what the path names
/// (through a symlink the operator owns) right after the open. With its (device, inode).
fn open_state_dir(dir: &Path) -> Result<Option<(File, FileId)>, SyncError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(dir);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(dir),
    };
    let meta = file.metadata().at(dir)?;
    private(dir, meta.uid(), meta.permissions().mode())?;
    let id = (meta.dev(), meta.ino());
    let named = match symlink_owned_here(dir, "state directory")? {
        Some(_) => rustix::fs::stat(dir).map(|st| (st.st_dev, st.st_ino)).ok(),
        None => lstat_id(dir),
    };
    if named != Some(id) {
        return Err(SyncError::Unsafe {
            path: dir.to_path_buf(),
            reason: "the state directory was replaced while the sync opened it".into(),
        });
    }
    Ok(Some((file, id)))
}

/// A path that names the open directory `file` (whose id is `id`) whatever later happens
/// to the path it was opened by: its handle in this process's `/proc` entry (with the pid,
/// so that a program the sync runs, such as rsync, reaches it too); `None` where `/proc`
/// does not show it.
fn via_proc(file: &File, id: FileId) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let via = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        file.as_raw_fd()
    ));
    let st = rustix::fs::stat(&via).ok()?;
    ((st.st_dev, st.st_ino) == id).then_some(via)
}

/// The mirror directory as a sync locked it: the handle every write goes through (never
/// the path again), and which directory it is. A local user who can write the mirror's
/// parent can rename the mirror away and put a symlink (to anywhere) in its place while a
/// sync runs; writes still land in the locked directory, and [`Mirror::check`] notices
/// that the path now names another, so the sync stops before it writes, renames or records
/// anything that was planned from what the path showed.
pub(crate) struct Mirror {
    path: PathBuf,
    file: File,
    id: (u64, u64),
}

impl Mirror {
    /// An error unless the mirror's path still names the locked directory (following a
    /// symlink the operator named it through).
    pub(crate) fn check(&self) -> Result<(), SyncError> {
        let now = rustix::fs::stat(&self.path).map(|st| (st.st_dev, st.st_ino));
        if now.is_ok_and(|id| id == self.id) {
            return Ok(());
        }
        Err(self.replaced())
    }

    fn replaced(&self) -> SyncError {
        SyncError::Unsafe {
            path: self.path.clone(),
            reason: "the mirror directory was replaced while the sync ran (the path no longer names the directory this sync locked); nothing is recorded, and a sync that finds the mirror where it belongs puts it right".into(),
        }
    }

    /// A path that names the locked directory whatever happens to the mirror's path: its
    /// handle in this process's `/proc` entry, for another program (rsync) to write into;
    /// the mirror's path where `/proc` does not show it.
    pub(crate) fn handle_path(&self) -> PathBuf {
        via_proc(&self.file, self.id).unwrap_or_else(|| self.path.clone())
    }

    /// The locked directory, for writing: checked first, then a handle of its own to the
    /// same open directory (the lock stays held while either is open).
    pub(crate) fn tree(&self) -> Result<crate::tree::Tree, SyncError> {
        self.check()?;
        let fd = self.file.try_clone().at(&self.path)?;
        Ok(crate::tree::Tree::at(&self.path, fd.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulpdist_format::{Entry, Name};

    /// `mirror/` and `mirror/.` name what the link `mirror` points to; the owner check
    /// looks at the link itself either way (an rsync-style path skipped it).
    #[test]
    fn another_users_symlink_is_refused_however_the_path_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("real");
        let link = dir.path().join("mirror");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        let mine = rustix::process::geteuid().as_raw();
        assert_eq!(symlink_owned_here(&link, "mirror").ok(), Some(Some(mine)));
        // The tests run as root (as CI does): the link is given away.
        std::os::unix::fs::lchown(&link, Some(65534), None).expect("chown -h (as root)");
        for written in ["mirror", "mirror/", "mirror/.", "mirror//./"] {
            let p = PathBuf::from(format!("{}/{written}", dir.path().display()));
            assert!(symlink_owned_here(&p, "mirror").is_err(), "{written}");
            assert!(lock_mirror(&p, false, Duration::ZERO).is_err(), "{written}");
        }
        assert_eq!(plain(Path::new("a/b/./")), PathBuf::from("a/b"));
    }

    /// The state is reached through its handle; messages name it as given, and a longer
    /// descriptor number is not taken for it.
    #[test]
    fn the_state_is_reached_through_its_handle_and_named_as_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let named = dir.path().join("state");
        let state = open_for_writing(&named);
        let via = state.dir().display().to_string();
        assert!(via.starts_with("/proc/"), "{via}");
        assert_eq!(
            state.named_text(format!("{via}/nodes/x: gone; {via}7/y")),
            format!("{}/nodes/x: gone; {via}7/y", named.display())
        );
        let e = state.named(SyncError::Io {
            path: state.dir().join("applied-t"),
            source: std::io::Error::other("x"),
        });
        assert_eq!(e.to_string(), format!("{}/applied-t: x", named.display()));
    }

    /// A hard link to a symlink keeps the symlink's owner, so a link of root's that another
    /// user linked into the mirror's parent would pass for the operator's: refused.
    #[test]
    fn a_hard_linked_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::create_dir(&real).expect("real");
        let link = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        let mirror = dir.path().join("mirror");
        fs::hard_link(&link, &mirror).expect("a hard link to the symlink itself");
        assert!(fs::symlink_metadata(&mirror)
            .expect("lstat")
            .file_type()
            .is_symlink());
        let e = lock_mirror(&mirror, false, Duration::ZERO)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("2 hard links"), "{e}");
        assert!(State::open(
            &mirror,
            Access::Write {
                wait: Duration::ZERO
            }
        )
        .is_err());
        fs::remove_file(&link).expect("one link left");
        assert!(lock_mirror(&mirror, false, Duration::ZERO).is_ok());
    }

    fn open_for_writing(dir: &Path) -> State {
        State::open(
            dir,
            Access::Write {
                wait: Duration::ZERO,
            },
        )
        .expect("state")
    }

    /// Puts `n` distinct nodes no tree reaches into the cache.
    fn dead(state: &State, n: u8, tag: u8) -> Vec<NodeId> {
        (0..n)
            .map(|i| {
                let node = Node::new(vec![Entry {
                    name: Name::new(vec![b'a' + tag, b'a' + i % 26, b'0' + i / 26]).expect("name"),
                    mode: 0o644,
                    mtime: Default::default(),
                    kind: EntryKind::Symlink {
                        target: b"x".to_vec(),
                    },
                }])
                .expect("node");
                let bytes = node.encode();
                let id = NodeId::of(&bytes);
                state.put_node(&id, &bytes).expect("put");
                id
            })
            .collect()
    }

    fn head_bytes(version: u64, key: &pulpdist_format::SecretKey) -> Vec<u8> {
        let root = pulpdist_format::NodeRef {
            id: NodeId([version as u8; 32]),
            loc: pulpdist_format::Location {
                pack: pulpdist_format::PackId([1; 32]),
                offset: 0,
                stored_len: 1,
                raw_len: 1,
                codec: pulpdist_format::Codec::Raw,
            },
        };
        Head {
            tree: "t".into(),
            version,
            created: 1,
            expires: 2,
            root,
            params: pulpdist_format::ChunkParams::DEFAULT,
            recent: Vec::new(),
            extensions: Vec::new(),
        }
        .sign(key)
        .expect("sign")
    }

    /// The recorded version never goes down, whoever else wrote the state meanwhile.
    #[test]
    fn the_recorded_version_only_rises() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_for_writing(dir.path());
        let key = pulpdist_format::SecretKey::generate().expect("key");
        state
            .set_applied("t", &head_bytes(5, &key), None, "s")
            .expect("v5");
        let err = state
            .set_applied("t", &head_bytes(4, &key), None, "s")
            .expect_err("v4 after v5");
        assert!(
            matches!(err, SyncError::Rollback { applied: 5, .. }),
            "{err}"
        );
        assert_eq!(
            state.applied("t").expect("read").map(|h| h.version),
            Some(5)
        );
        state
            .set_applied("t", &head_bytes(6, &key), None, "s")
            .expect("v6");
    }

    /// A second writer, or a dry run while a writer holds the state, is refused at once.
    #[test]
    fn the_state_is_locked_for_the_whole_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = Access::Write {
            wait: Duration::ZERO,
        };
        let first = State::open(dir.path(), write).expect("first");
        let err = State::open(dir.path(), write).err().expect("second writer");
        assert!(matches!(err, SyncError::Busy { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let err = State::open(
            dir.path(),
            Access::ReadOnly {
                wait: Duration::ZERO,
            },
        )
        .err()
        .expect("dry run");
        assert!(matches!(err, SyncError::Busy { .. }), "{err}");
        drop(first);
        State::open(dir.path(), write).expect("free again");
    }

    #[test]
    fn unreachable_nodes_are_pruned_once_the_cache_has_grown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_for_writing(dir.path());
        // No tree applied, nothing live: 40 > 2 × 0 + 16, so all go.
        let first = dead(&state, 40, 1);
        assert_eq!(state.prune_nodes().expect("prune"), 40);
        assert!(first.iter().all(|id| !state.has_node(id)));
        // Within the slack nothing is walked or deleted.
        let second = dead(&state, PRUNE_SLACK as u8, 2);
        assert_eq!(state.prune_nodes().expect("prune"), 0);
        assert!(second.iter().all(|id| state.has_node(id)));
        // Past it, everything unreachable goes.
        dead(&state, 1, 3);
        assert_eq!(state.prune_nodes().expect("prune"), PRUNE_SLACK as u64 + 1);
    }

    /// The files of a batch of nodes that failed are removed, and those a killed sync
    /// left are removed by the next prune; cached nodes stay.
    #[test]
    fn temporary_node_files_do_not_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_for_writing(dir.path());
        let kept = dead(&state, 1, 1)[0];
        let temps = || -> Vec<PathBuf> {
            let nodes = dir.path().join("nodes");
            let shards = fs::read_dir(&nodes)
                .expect("nodes")
                .map(|e| e.expect("e").path());
            let files = shards.flat_map(|d| fs::read_dir(d).expect("shard"));
            let names = files.map(|e| e.expect("entry").path());
            names
                .filter(|p| p.to_string_lossy().contains(".pulpdist-"))
                .collect()
        };
        // A batch whose second node cannot be renamed into place (a directory with a
        // file in it is there).
        let bytes = |b: &[u8]| (NodeId::of(b), b.to_vec());
        let batch = [bytes(b"first"), bytes(b"second")];
        let blocked = state.node_path(&batch[1].0);
        fs::create_dir_all(blocked.join("x")).expect("blocked");
        assert!(state.put_nodes(&batch).is_err());
        assert!(temps().is_empty(), "{:?}", temps());
        // A killed sync's file.
        let left = kept_temp(&state, &kept);
        let names = |p: &[PathBuf]| -> Vec<_> {
            p.iter()
                .map(|p| p.file_name().map(ToOwned::to_owned))
                .collect()
        };
        assert_eq!(names(&temps()), names(&[left]));
        state.prune_nodes().expect("prune");
        assert!(temps().is_empty() && state.has_node(&kept));
    }

    /// A temporary file beside node `id`'s, as a sync killed while writing it leaves.
    fn kept_temp(state: &State, id: &NodeId) -> PathBuf {
        let tmp = crate::fsutil::temp_beside(&state.node_path(id));
        fs::write(&tmp, b"half a node").expect("temp");
        tmp
    }
}
