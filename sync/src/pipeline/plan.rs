//! The sync plan: pure data computed from the changed index nodes, what the executor saw
//! on disk, and which chunks are available locally. It says what to fetch (grouped per pack,
//! whole or as coalesced ranges), which files to write in which order (payload before
//! repository metadata), and what to delete (last). `--dry-run` prints it.
//!
//! A file counts as current when its size and mtime match the new entry, unless the old
//! entry had the same size and mtime with other chunks (`stale`); one that matches the old
//! entry, whose chunks the new entry keeps (a release re-stamped it), gets the new mtime
//! and mode in place (`restamped`). A pack is fetched whole
//! when `whole_ratio` (0.5) of it is needed and it would take more than one range;
//! otherwise ranges closer than `max_gap` (64 KiB) are merged. Directories are made
//! parents first; deletions and directory attributes go deepest first; the top indexes
//! (`InRelease`, `Release`, `repomd.xml`) are written last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use pulpdist_format::{ChunkId, ChunkRef, EntryKind, Mtime, Node, PackId};

use crate::glob::glob_match;
use crate::ranges::coalesce;

/// What is at a path of the mirror before the sync (observed by the executor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Observed {
    /// Nothing.
    Missing,
    /// A regular file.
    File { size: u64, mtime: Mtime, mode: u32 },
    /// A directory.
    Dir { mode: u32, mtime: Mtime },
    /// A symbolic link.
    Symlink { target: Vec<u8>, mtime: Mtime },
    /// Anything else (fifo, socket, device).
    Other,
}

/// One changed directory as the planner sees it.
pub(crate) struct DirView<'a> {
    /// Path relative to the mirror root.
    pub rel: PathBuf,
    /// The new node.
    pub new: &'a Node,
    /// The node of the version applied, if known: a file that still matches its old entry
    /// (size and mtime) is rewritten when the new entry has other chunks, even if its size
    /// and mtime are the new entry's too.
    pub old: Option<&'a Node>,
    /// What is on disk for each name in the directory (new entries and local extras).
    pub local: &'a HashMap<Vec<u8>, Observed>,
}

/// Where a chunk of a file to write comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// A byte range of a file already in the mirror.
    Local {
        /// The path involved.
        path: PathBuf,
        /// The byte offset.
        offset: u64,
    },
    /// The staging area (fetched and verified earlier, perhaps by a killed sync).
    Staged,
    /// The store.
    Fetch(ChunkRef),
}

/// A file to (re)write.
#[derive(Clone, Debug)]
pub(crate) struct FileOp {
    /// Path relative to the mirror root.
    pub path: PathBuf,
    /// Size.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Repository metadata, written after all payload.
    pub metadata: bool,
    /// The chunks in order, with their length and source.
    pub chunks: Vec<(ChunkId, u32, Source)>,
}

/// Requests to one pack.
#[derive(Clone, Debug)]
pub(crate) struct FetchOp {
    /// The pack.
    pub pack: PackId,
    /// Fetch the whole pack (most of it is needed).
    pub whole: bool,
    /// The pack's size as the signed head gives it (0 if the head does not list the pack).
    pub size: u64,
    /// Otherwise, these coalesced ranges.
    pub ranges: Vec<Range<u64>>,
    /// The chunks these requests bring.
    pub chunks: Vec<ChunkRef>,
}

/// A change of mode or mtime only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AttrOp {
    /// Path relative to the root.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// For a file: the size and mtime the survey saw, which made its content trusted; the
    /// file must still have them when its attributes are set.
    pub seen: Option<(u64, Mtime)>,
}

/// Everything a sync will do, in order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Local chunks that must be copied to staging first, because the file holding them
    /// is replaced before another file reads them.
    pub stage_first: Vec<(ChunkId, u32, PathBuf, u64)>,
    /// Store requests.
    pub fetches: Vec<FetchOp>,
    /// Directories to create, parents first.
    pub mkdirs: Vec<PathBuf>,
    /// Files to write: payload first, then repository metadata.
    pub files: Vec<FileOp>,
    /// Symlinks to (re)create: (path, target, mtime).
    pub symlinks: Vec<(PathBuf, Vec<u8>, Mtime)>,
    /// Mode or mtime fixes of files whose content is current.
    pub attrs: Vec<AttrOp>,
    /// Paths to delete, last.
    pub deletes: Vec<PathBuf>,
    /// Directory modes and mtimes, deepest first, after everything else.
    pub dir_attrs: Vec<AttrOp>,
}

/// Planner settings.
#[derive(Clone, Debug)]
pub(crate) struct PlanSettings {
    /// File-name patterns of repository metadata.
    pub metadata_patterns: Vec<String>,
    /// Ranges closer than this are fetched as one.
    pub max_gap: u64,
    /// Fetch a whole pack when at least this fraction of it is needed.
    pub whole_ratio: f64,
    /// Apply setuid, setgid and sticky bits, and world-writable directories, as the index
    /// gives them. Off by default: a publisher (or whoever holds its key) cannot make a
    /// root sync plant setuid programs or directories anyone can write into.
    pub special_modes: bool,
}

impl PlanSettings {
    /// The mode a file gets: without `special_modes`, no setuid, setgid or sticky bit.
    pub(crate) fn file_mode(&self, mode: u32) -> u32 {
        if self.special_modes {
            mode
        } else {
            mode & 0o777
        }
    }

    /// The mode a directory gets: without `special_modes`, neither those bits nor o+w.
    pub(crate) fn dir_mode(&self, mode: u32) -> u32 {
        if self.special_modes {
            mode
        } else {
            mode & 0o775
        }
    }
}

fn is_metadata(settings: &PlanSettings, name: &[u8]) -> bool {
    settings
        .metadata_patterns
        .iter()
        .any(|p| glob_match(p.as_bytes(), name))
}

/// Computes the plan of `dirs` at once (the executor uses [`Planner`] directly). `sources`
/// says where chunks are available locally; `pack_sizes` holds the sizes of packs the head
/// lists (others are always fetched by ranges).
#[cfg(test)]
fn make_plan(
    dirs: &[DirView<'_>],
    sources: &HashMap<ChunkId, Source>,
    pack_sizes: &HashMap<PackId, u64>,
    settings: &PlanSettings,
) -> Plan {
    let mut planner = Planner::new(settings.clone());
    for d in dirs {
        planner.add_dir(d);
    }
    planner.finish(sources, pack_sizes).0
}

/// The plan built one directory at a time, so that a sync never holds more than one
/// directory's nodes and listing: what it keeps is proportional to what changes (the files
/// to write, the deletions), not to the size of the directories. Chunk sources are resolved
/// at the end, when [`Planner::wanted`] has said which chunks the files to write need.
#[derive(Debug)]
pub(crate) struct Planner {
    settings: PlanSettings,
    plan: Plan,
    payload: Vec<FileOp>,
    metadata: Vec<FileOp>,
    wanted: HashMap<ChunkId, ChunkRef>,
}

impl Planner {
    /// An empty plan.
    pub(crate) fn new(settings: PlanSettings) -> Self {
        Self {
            settings,
            plan: Plan::default(),
            payload: Vec::new(),
            metadata: Vec::new(),
            wanted: HashMap::new(),
        }
    }

    /// Plans one changed directory. Its files to write take every chunk from the store
    /// until [`Planner::finish`] is given local sources.
    pub(crate) fn add_dir(&mut self, d: &DirView<'_>) {
        let plan = &mut self.plan;
        let new_names: HashSet<&[u8]> = d.new.entries().iter().map(|e| e.name.as_bytes()).collect();
        for e in d.new.entries() {
            let path = d.rel.join(e.name.to_os_string());
            let seen = d.local.get(e.name.as_bytes()).unwrap_or(&Observed::Missing);
            match &e.kind {
                EntryKind::Dir { .. } => {
                    if !matches!(seen, Observed::Dir { .. }) {
                        plan.mkdirs.push(path.clone());
                    }
                    // Always: writing into a directory changes its mtime, so it is set
                    // again at the very end, whatever was observed before.
                    plan.dir_attrs.push(AttrOp {
                        path,
                        mode: self.settings.dir_mode(e.mode),
                        mtime: e.mtime,
                        seen: None,
                    });
                }
                EntryKind::File { size, chunks } => match seen {
                    Observed::File {
                        size: s,
                        mtime: m,
                        mode,
                    } if s == size && *m == e.mtime && !stale(d.old, e) => {
                        let want = self.settings.file_mode(e.mode);
                        if *mode != want {
                            plan.attrs.push(AttrOp {
                                path,
                                mode: want,
                                mtime: e.mtime,
                                seen: Some((*s, *m)),
                            });
                        }
                    }
                    Observed::File {
                        size: s, mtime: m, ..
                    } if restamped(d.old, e).is_some_and(|old| old == (*s, *m)) => {
                        // The old version's file, whose content the new version keeps
                        // (a release re-stamped it): its attributes change, not its bytes.
                        plan.attrs.push(AttrOp {
                            path,
                            mode: self.settings.file_mode(e.mode),
                            mtime: e.mtime,
                            seen: Some((*s, *m)),
                        });
                    }
                    _ => {
                        for c in chunks {
                            self.wanted.insert(c.id, *c);
                        }
                        let op = FileOp {
                            path,
                            size: *size,
                            mode: self.settings.file_mode(e.mode),
                            mtime: e.mtime,
                            metadata: is_metadata(&self.settings, e.name.as_bytes()),
                            chunks: chunks
                                .iter()
                                .map(|c| (c.id, c.loc.raw_len, Source::Fetch(*c)))
                                .collect(),
                        };
                        if op.metadata {
                            self.metadata.push(op);
                        } else {
                            self.payload.push(op);
                        }
                    }
                },
                // Resolved into a plain file before the plan (`walk::resolve_composites`).
                EntryKind::Composite { .. } => {}
                EntryKind::Symlink { target } => {
                    if !matches!(seen, Observed::Symlink { target: t, mtime } if t == target && *mtime == e.mtime)
                    {
                        plan.symlinks.push((path, target.clone(), e.mtime));
                    }
                }
            }
        }
        for (name, seen) in d.local.iter() {
            if !new_names.contains(name.as_slice()) && *seen != Observed::Missing {
                plan.deletes
                    .push(d.rel.join(std::ffi::OsStr::from_bytes_compat(name)));
            }
        }
    }

    /// The chunks of the files to write, by id.
    pub(crate) fn wanted(&self) -> &HashMap<ChunkId, ChunkRef> {
        &self.wanted
    }

    /// The files to write so far: payload, then repository metadata.
    pub(crate) fn files(&self) -> impl Iterator<Item = &FileOp> {
        self.payload.iter().chain(self.metadata.iter())
    }

    /// The plan, with each chunk taken from `sources` where it is available locally and
    /// the rest grouped into fetches per pack; and [`Planner::wanted`], given back rather
    /// than copied (an initial sync of a large tree wants every chunk).
    pub(crate) fn finish(
        self,
        sources: &HashMap<ChunkId, Source>,
        pack_sizes: &HashMap<PackId, u64>,
    ) -> (Plan, HashMap<ChunkId, ChunkRef>) {
        let Planner {
            settings,
            mut plan,
            mut payload,
            mut metadata,
            wanted,
        } = self;
        for f in payload.iter_mut().chain(metadata.iter_mut()) {
            for (id, _, src) in f.chunks.iter_mut() {
                if let Some(local) = sources.get(id) {
                    *src = local.clone();
                }
            }
        }
        sort_for_order(&mut plan, &mut metadata);
        stage_replaced(&mut plan, &mut payload, &mut metadata);
        plan.fetches = group_fetches(payload.iter().chain(metadata.iter()), &settings, pack_sizes);
        plan.files = payload;
        plan.files.extend(metadata);
        (plan, wanted)
    }
}

/// Parents before children for creation; deepest first for deletion and directory
/// attributes; metadata in the order that keeps every index true to what it names: the
/// indexes that list other indexes (Release, InRelease, repomd.xml) after the rest, and
/// each group deepest first (dists/x/main/binary-amd64/Packages before dists/x/InRelease).
fn sort_for_order(plan: &mut Plan, metadata: &mut [FileOp]) {
    let depth = |p: &PathBuf| p.components().count();
    plan.mkdirs.sort_by_key(depth);
    sort_deepest_first(plan);
    metadata.sort_by_cached_key(|f| metadata_order(&f.path));
}

/// Where a metadata file at `path` goes among the metadata renames: the top indexes last,
/// each group deepest first, then by path.
pub(crate) fn metadata_order(path: &Path) -> (bool, std::cmp::Reverse<usize>, PathBuf) {
    let name = path.file_name().map(|n| n.as_encoded_bytes().to_vec());
    let top = name.is_some_and(|n| {
        crate::glob::TOP_METADATA_PATTERNS
            .iter()
            .any(|p| glob_match(p.as_bytes(), &n))
    });
    (
        top,
        std::cmp::Reverse(path.components().count()),
        path.to_path_buf(),
    )
}

/// The plan's deletions and directory attributes sorted as [`Planner::finish`] sorts them
/// (deepest first): for lists gathered over several plans.
pub(crate) fn sort_deepest_first(plan: &mut Plan) {
    let depth = |p: &PathBuf| p.components().count();
    plan.deletes
        .sort_by(|a, b| depth(b).cmp(&depth(a)).then(a.cmp(b)));
    plan.dir_attrs.sort_by(|a, b| {
        depth(&b.path)
            .cmp(&depth(&a.path))
            .then(a.path.cmp(&b.path))
    });
}

/// Local sources inside files that get replaced must be saved before the replacement,
/// unless only the file itself reads them: listed in `stage_first`, read from staging.
fn stage_replaced(plan: &mut Plan, payload: &mut [FileOp], metadata: &mut [FileOp]) {
    let replaced: HashSet<PathBuf> = payload
        .iter()
        .chain(metadata.iter())
        .map(|f| &f.path)
        .chain(plan.symlinks.iter().map(|s| &s.0))
        .chain(plan.mkdirs.iter())
        .cloned()
        .collect();
    let mut staged_now: HashSet<ChunkId> = HashSet::new();
    for f in payload.iter_mut().chain(metadata.iter_mut()) {
        for (id, len, src) in f.chunks.iter_mut() {
            if let Source::Local { path, offset } = src {
                if replaced.contains(path) && *path != f.path {
                    if staged_now.insert(*id) {
                        plan.stage_first.push((*id, *len, path.clone(), *offset));
                    }
                    *src = Source::Staged;
                }
            }
        }
    }
}

/// The chunks still to fetch, one fetch per pack: ranges closer than `max_gap` merged,
/// the whole pack when at least `whole_ratio` of it is needed.
fn group_fetches<'a>(
    files: impl Iterator<Item = &'a FileOp>,
    settings: &PlanSettings,
    pack_sizes: &HashMap<PackId, u64>,
) -> Vec<FetchOp> {
    let mut need: BTreeMap<PackId, BTreeMap<ChunkId, ChunkRef>> = BTreeMap::new();
    for f in files {
        for (_, _, src) in &f.chunks {
            if let Source::Fetch(c) = src {
                need.entry(c.loc.pack).or_default().insert(c.id, *c);
            }
        }
    }
    let mut fetches = Vec::with_capacity(need.len());
    for (pack, chunks) in need {
        let chunks: Vec<ChunkRef> = chunks.into_values().collect();
        let needed: u64 = chunks.iter().map(|c| u64::from(c.loc.stored_len)).sum();
        let ranges = coalesce(
            chunks.iter().map(|c| c.loc.range()).collect(),
            settings.max_gap,
        );
        let size = pack_sizes.get(&pack).copied();
        let whole = size.is_some_and(|size| needed as f64 >= settings.whole_ratio * size as f64)
            && ranges.len() > 1;
        fetches.push(FetchOp {
            pack,
            whole,
            size: size.unwrap_or(0),
            ranges: if whole { Vec::new() } else { ranges },
            chunks,
        });
    }
    fetches
}

/// For a file entry `e` whose old entry of the same name has the same chunks (the content
/// did not change: only the mtime or mode did), the old entry's size and mtime. A local
/// file of that size and mtime counts as the old version's, as a file matching the new
/// entry counts as current.
fn restamped(old: Option<&Node>, e: &pulpdist_format::Entry) -> Option<(u64, Mtime)> {
    let oe = old?.get(e.name.as_bytes())?;
    let old_size = oe.kind.file_size()?;
    (old_size == e.kind.file_size()? && oe.kind.same_chunks(&e.kind)?)
        .then_some((old_size, oe.mtime))
}

/// Whether the old node has a file of the new entry `e`'s name, size and mtime but other
/// chunks: a local file with that size and mtime then holds the old content, not the new.
/// (An old composite file is compared by the hash of the chunks it resolved to.)
fn stale(old: Option<&Node>, e: &pulpdist_format::Entry) -> bool {
    let Some(oe) = old.and_then(|o| o.get(e.name.as_bytes())) else {
        return false;
    };
    oe.mtime == e.mtime
        && oe.kind.file_size().is_some()
        && oe.kind.file_size() == e.kind.file_size()
        && oe.kind.same_chunks(&e.kind) == Some(false)
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}
impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

impl Plan {
    /// Requests the fetches will make.
    pub(crate) fn request_count(&self) -> usize {
        self.fetches
            .iter()
            .map(|f| if f.whole { 1 } else { f.ranges.len() })
            .sum()
    }
    /// Chunks taken from local files or staging.
    pub(crate) fn reused(&self) -> (u64, u64) {
        self.reused_where(&mut HashSet::new(), |_, _| true)
    }

    /// Chunks taken from local files or staging for which `counts` holds, each counted
    /// once over every plan given the same `seen` (the waves of one sync).
    pub(crate) fn reused_where(
        &self,
        seen: &mut HashSet<ChunkId>,
        counts: impl Fn(&ChunkId, &Source) -> bool,
    ) -> (u64, u64) {
        let (mut n, mut b) = (0, 0);
        for f in &self.files {
            for (id, len, src) in &f.chunks {
                if !matches!(src, Source::Fetch(_)) && counts(id, src) && seen.insert(*id) {
                    n += 1;
                    b += u64::from(*len);
                }
            }
        }
        (n, b)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fetch_chunks: usize = self.fetches.iter().map(|x| x.chunks.len()).sum();
        let fetch_bytes: u64 = self
            .fetches
            .iter()
            .flat_map(|x| x.chunks.iter())
            .map(|c| u64::from(c.loc.stored_len))
            .sum();
        let (rn, rb) = self.reused();
        writeln!(f, "plan: {} files to write, {} symlinks, {} dirs to create, {} attribute fixes, {} deletions", self.files.len(), self.symlinks.len(), self.mkdirs.len(), self.attrs.len() + self.dir_attrs.len(), self.deletes.len())?;
        writeln!(f, "      fetch {fetch_chunks} chunks ({fetch_bytes} bytes stored) in {} requests; reuse {rn} local chunks ({rb} bytes)", self.request_count())?;
        for x in &self.fetches {
            if x.whole {
                writeln!(
                    f,
                    "fetch  {} whole ({} chunks)",
                    x.pack.object_key(),
                    x.chunks.len()
                )?;
            } else {
                for r in &x.ranges {
                    writeln!(
                        f,
                        "fetch  {} bytes {}-{}",
                        x.pack.object_key(),
                        r.start,
                        r.end - 1
                    )?;
                }
            }
        }
        for (id, _, path, off) in &self.stage_first {
            writeln!(
                f,
                "save   chunk {} from {} @{off}",
                &id.to_hex()[..16],
                path.display()
            )?;
        }
        for d in &self.mkdirs {
            writeln!(f, "mkdir  {}", d.display())?;
        }
        for op in &self.files {
            let local = op
                .chunks
                .iter()
                .filter(|c| !matches!(c.2, Source::Fetch(_)))
                .count();
            let tag = if op.metadata { "meta " } else { "write" };
            writeln!(
                f,
                "{tag}  {} ({} bytes, {} chunks, {local} local)",
                op.path.display(),
                op.size,
                op.chunks.len()
            )?;
        }
        for (p, t, _) in &self.symlinks {
            writeln!(
                f,
                "link   {} -> {}",
                p.display(),
                String::from_utf8_lossy(t)
            )?;
        }
        for a in &self.attrs {
            writeln!(f, "attr   {} mode {:o}", a.path.display(), a.mode)?;
        }
        for d in &self.deletes {
            writeln!(f, "delete {}", d.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use pulpdist_format::{Codec, Entry, Location, Name};

    fn chunk(id: u8, off: u64) -> ChunkRef {
        ChunkRef {
            id: ChunkId([id; 32]),
            loc: Location {
                pack: PackId([1; 32]),
                offset: off,
                stored_len: 100,
                raw_len: 100,
                codec: Codec::Raw,
            },
        }
    }
    fn file(name: &str, chunks: Vec<ChunkRef>) -> Entry {
        Entry {
            name: Name::new(name.as_bytes().to_vec()).expect("name"),
            mode: 0o644,
            mtime: Mtime { secs: 5, nanos: 0 },
            kind: EntryKind::File {
                size: 100 * chunks.len() as u64,
                chunks,
            },
        }
    }
    fn settings() -> PlanSettings {
        PlanSettings {
            metadata_patterns: vec!["Packages*".into(), "InRelease".into()],
            max_gap: 50,
            whole_ratio: 0.5,
            special_modes: false,
        }
    }

    #[test]
    fn metadata_after_payload_deletions_listed_and_ranges_coalesced() {
        let node = Node::new(vec![
            file("InRelease", vec![chunk(1, 40)]),
            file("Packages", vec![chunk(2, 140)]),
            file("a.deb", vec![chunk(3, 1000)]),
            file("b.deb", vec![chunk(4, 2000)]),
        ])
        .expect("node");
        let mut local = HashMap::new();
        local.insert(
            b"gone.deb".to_vec(),
            Observed::File {
                size: 1,
                mtime: Mtime::default(),
                mode: 0o644,
            },
        );
        local.insert(
            b"b.deb".to_vec(),
            Observed::File {
                size: 100,
                mtime: Mtime { secs: 5, nanos: 0 },
                mode: 0o600,
            },
        );
        let view = DirView {
            rel: PathBuf::from("dists"),
            new: &node,
            old: None,
            local: &local,
        };
        let plan = make_plan(&[view], &HashMap::new(), &HashMap::new(), &settings());
        let order: Vec<_> = plan
            .files
            .iter()
            .map(|f| f.path.file_name().map(|n| n.to_owned()))
            .collect();
        assert_eq!(order[0].as_deref(), Some(std::ffi::OsStr::new("a.deb")));
        assert!(plan.files[1].metadata && plan.files[2].metadata);
        assert_eq!(plan.deletes, vec![PathBuf::from("dists/gone.deb")]);
        assert_eq!(plan.attrs.len(), 1, "b.deb is current but its mode changed");
        // InRelease (40..140) and Packages (140..240) merge; a.deb stays apart.
        assert_eq!(plan.fetches[0].ranges, vec![40..240, 1000..1100]);
    }

    /// A release that re-stamped a file without changing it: the mirror's copy (the old
    /// entry's size and mtime) gets the new mtime, not a rewrite; a copy that is not the old
    /// entry's (another mtime), or a file whose chunks changed, is written.
    #[test]
    fn a_restamped_file_gets_its_new_mtime_not_a_rewrite() {
        let old = Node::new(vec![
            file("same.c", vec![chunk(1, 0)]),
            file("edited.c", vec![chunk(2, 100)]),
            file("local-edit.c", vec![chunk(3, 200)]),
        ])
        .expect("node");
        let later = Mtime { secs: 9, nanos: 0 };
        let restamp = |mut e: Entry| {
            e.mtime = later;
            e
        };
        let new = Node::new(vec![
            restamp(file("same.c", vec![chunk(1, 0)])),
            restamp(file("edited.c", vec![chunk(4, 300)])),
            restamp(file("local-edit.c", vec![chunk(3, 200)])),
        ])
        .expect("node");
        let seen = |secs| Observed::File {
            size: 100,
            mtime: Mtime { secs, nanos: 0 },
            mode: 0o644,
        };
        let mut local = HashMap::new();
        local.insert(b"same.c".to_vec(), seen(5));
        local.insert(b"edited.c".to_vec(), seen(5));
        local.insert(b"local-edit.c".to_vec(), seen(7));
        let view = DirView {
            rel: PathBuf::from("src"),
            new: &new,
            old: Some(&old),
            local: &local,
        };
        let plan = make_plan(&[view], &HashMap::new(), &HashMap::new(), &settings());
        let written: Vec<_> = plan.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            written,
            [
                PathBuf::from("src/edited.c"),
                PathBuf::from("src/local-edit.c")
            ]
        );
        assert_eq!(plan.attrs.len(), 1);
        assert_eq!(plan.attrs[0].path, PathBuf::from("src/same.c"));
        assert_eq!(plan.attrs[0].mtime, later);
    }

    /// Regression: metadata was renamed breadth first, so `dists/x/InRelease` and
    /// `Release` appeared before the `Packages` files they list, and `repomd.xml` could
    /// appear before the primary index it names.
    #[test]
    fn indexes_are_renamed_before_the_indexes_that_list_them() {
        let top = Node::new(vec![
            file("InRelease", vec![chunk(1, 0)]),
            file("Release", vec![chunk(2, 100)]),
        ])
        .expect("node");
        let deep = Node::new(vec![
            file("Packages", vec![chunk(3, 200)]),
            file("Packages.xz", vec![chunk(4, 300)]),
            file("Release", vec![chunk(5, 400)]),
        ])
        .expect("node");
        let repodata = Node::new(vec![
            file("repomd.xml", vec![chunk(6, 500)]),
            file("abc-primary.xml.gz", vec![chunk(7, 600)]),
            file("x.rpm", vec![chunk(8, 700)]),
        ])
        .expect("node");
        let local = HashMap::new();
        let view = |rel: &str, node| DirView {
            rel: PathBuf::from(rel),
            new: node,
            old: None,
            local: &local,
        };
        let settings = PlanSettings {
            metadata_patterns: crate::glob::DEFAULT_METADATA_PATTERNS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            ..settings()
        };
        // Breadth first, as the index walk hands them over.
        let plan = make_plan(
            &[
                view("dists/x", &top),
                view("repodata", &repodata),
                view("dists/x/main/binary-amd64", &deep),
            ],
            &HashMap::new(),
            &HashMap::new(),
            &settings,
        );
        let order: Vec<String> = plan
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "repodata/x.rpm",
                "dists/x/main/binary-amd64/Packages",
                "dists/x/main/binary-amd64/Packages.xz",
                "repodata/abc-primary.xml.gz",
                "dists/x/main/binary-amd64/Release",
                "dists/x/InRelease",
                "dists/x/Release",
                "repodata/repomd.xml",
            ]
        );
    }

    #[test]
    fn local_sources_in_replaced_files_are_saved_first() {
        // new a.deb reuses a chunk that lives in the old b.deb, and b.deb is rewritten too.
        let node = Node::new(vec![
            file("a.deb", vec![chunk(7, 0)]),
            file("b.deb", vec![chunk(8, 100)]),
        ])
        .expect("node");
        let local = HashMap::new();
        let mut sources = HashMap::new();
        sources.insert(
            ChunkId([7; 32]),
            Source::Local {
                path: PathBuf::from("b.deb"),
                offset: 0,
            },
        );
        let plan = make_plan(
            &[DirView {
                rel: PathBuf::new(),
                new: &node,
                old: None,
                local: &local,
            }],
            &sources,
            &HashMap::new(),
            &settings(),
        );
        assert_eq!(plan.stage_first.len(), 1);
        assert_eq!(plan.files[0].chunks[0].2, Source::Staged);
    }

    #[test]
    fn whole_pack_when_most_is_needed() {
        let node = Node::new(vec![
            file("a", vec![chunk(1, 40)]),
            file("b", vec![chunk(2, 400)]),
        ])
        .expect("node");
        let local = HashMap::new();
        let mut sizes = HashMap::new();
        sizes.insert(PackId([1; 32]), 300u64);
        let plan = make_plan(
            &[DirView {
                rel: PathBuf::new(),
                new: &node,
                old: None,
                local: &local,
            }],
            &HashMap::new(),
            &sizes,
            &settings(),
        );
        assert!(plan.fetches[0].whole);
        assert_eq!(plan.request_count(), 1);
    }
}
