//! Checking a mirror (`pulpdist verify --mirror`): every path of the version its state
//! records as applied (the signed head, verified again, and its index from the node cache)
//! is on disk as the index says (kind, size, mtime, permission bits, symlink target), and
//! nothing else is; with `read_data`, every file's bytes match its chunks' ids. The walk
//! never follows a symlink the index does not name. [`invalidate`] marks files whose bytes
//! are wrong so that a full sync rewrites them (their size and mtime may be right).

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pulpdist_format::{ChunkId, EntryKind, Mtime, Node, SignedHead};

use crate::error::{IoContext, SyncError};
use crate::pipeline::SyncOptions;
use crate::state::{Access, State};
use crate::verify::Problem;

/// What a mirror check looked at and found.
#[derive(Clone, Debug, Default)]
pub struct MirrorReport {
    /// The version applied.
    pub version: u64,
    /// Files, directories and symlinks the index names.
    pub entries: u64,
    /// Bytes of files read (with `read_data`).
    pub bytes_read: u64,
    /// Everything found wrong: a path and what is wrong with it.
    pub problems: Vec<Problem>,
    /// Files whose bytes are wrong while size and mtime may be right, with the mtime the
    /// index gives them: a sync does not see them until [`invalidate`]d.
    pub damaged: Vec<(PathBuf, Mtime)>,
}

/// Checks `opts.dest` against the version of `opts.tree` its state records as applied,
/// verified with `opts.trusted`.
pub fn verify_mirror(opts: &SyncOptions, read_data: bool) -> Result<MirrorReport, SyncError> {
    let (dest, state_dir) = opts.dirs()?;
    let state = State::open(&state_dir, Access::ReadOnly { wait: opts.wait })?;
    let bytes = state
        .applied_bytes(&opts.tree)
        .map_err(|e| state.named(e))?
        .ok_or_else(|| SyncError::State {
            path: state_dir.clone(),
            detail: format!("no version of tree '{}' was synced here", opts.tree),
        })?;
    let signed = SignedHead::decode_and_verify(&bytes, &opts.trusted).map_err(|source| {
        SyncError::Format {
            object: format!("{}/applied-{}", state_dir.display(), opts.tree),
            source,
        }
    })?;
    let head = signed.head();
    let mut report = MirrorReport {
        version: head.version,
        ..Default::default()
    };
    let mut todo = vec![(PathBuf::new(), head.root.id)];
    // A composite file is checked as the plain file it resolves to in this tree.
    let mut files = pulpdist_format::TreeFiles::new(head.root, |r: &pulpdist_format::NodeRef| {
        state
            .stored_node(&r.id)
            .ok_or_else(|| state.lost_node(&r.id))
    });
    while let Some((rel, id)) = todo.pop() {
        let node = state.node(&id).ok_or_else(|| state.lost_node(&id))?;
        let node = match node.has_composites() {
            false => node,
            true => {
                node.resolve(|path| files.lookup(path))?
                    .map_err(|source| SyncError::Format {
                        object: format!("index node {id} of '{}'", rel.display()),
                        source,
                    })?
            }
        };
        let modes = crate::pipeline::plan::PlanSettings {
            metadata_patterns: Vec::new(),
            max_gap: 0,
            whole_ratio: 1.0,
            special_modes: opts.special_modes,
        };
        check_dir(
            &dest,
            &rel,
            &node,
            (read_data, &modes),
            &mut report,
            &mut todo,
        )?;
    }
    Ok(report)
}

/// Checks one directory of the mirror against its node; queues its subdirectories.
fn check_dir(
    dest: &Path,
    rel: &Path,
    node: &Node,
    how: (bool, &crate::pipeline::plan::PlanSettings),
    report: &mut MirrorReport,
    todo: &mut Vec<(PathBuf, pulpdist_format::NodeId)>,
) -> Result<(), SyncError> {
    for e in node.entries() {
        let path = rel.join(std::ffi::OsStr::from_bytes(e.name.as_bytes()));
        report.entries += 1;
        let md = match fs::symlink_metadata(dest.join(&path)) {
            Ok(md) => md,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                report.problem(&path, "missing".into());
                continue;
            }
            Err(err) => return Err(err).at(dest.join(&path)),
        };
        if let Some(sub) = check_entry(dest, &path, e, &md, how, report)? {
            todo.push((path, sub));
        }
    }
    // Names the index does not have.
    let dir = dest.join(rel);
    if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(&dir).at(&dir)? {
            let name = entry.at(&dir)?.file_name();
            if node.get(name.as_bytes()).is_none() {
                report.problem(&rel.join(&name), "not in the index".into());
            }
        }
    }
    Ok(())
}

/// Checks one entry found on disk (`md`, not followed); a directory's node to descend to.
fn check_entry(
    dest: &Path,
    path: &Path,
    e: &pulpdist_format::Entry,
    md: &fs::Metadata,
    (read_data, modes): (bool, &crate::pipeline::plan::PlanSettings),
    report: &mut MirrorReport,
) -> Result<Option<pulpdist_format::NodeId>, SyncError> {
    // The whole mode, setuid, setgid and sticky bits included, against what a sync with
    // these settings applies (so a bit planted by someone who can write the mirror shows).
    let mode = |want: u32, report: &mut MirrorReport| {
        if md.mode() & 0o7777 != want {
            let what = format!("mode {:o}, a sync gives it {want:o}", md.mode() & 0o7777);
            report.problem(path, what);
        }
    };
    match &e.kind {
        EntryKind::Dir { node } if md.is_dir() => {
            mode(modes.dir_mode(e.mode), report);
            return Ok(Some(node.id));
        }
        EntryKind::File { size, .. } if md.is_file() && md.len() != *size => {
            report.problem(path, format!("{} bytes, the index says {size}", md.len()));
        }
        EntryKind::File { chunks, .. } if md.is_file() => {
            let mtime = Mtime {
                secs: md.mtime(),
                nanos: md.mtime_nsec().clamp(0, 999_999_999) as u32,
            };
            if mtime != e.mtime {
                report.problem(path, "modification time differs from the index".into());
            }
            mode(modes.file_mode(e.mode), report);
            if read_data {
                let ids: Vec<(ChunkId, u32)> =
                    chunks.iter().map(|c| (c.id, c.loc.raw_len)).collect();
                let abs = dest.join(path);
                let (same, n) = content_matches(&abs, &ids).at(&abs)?;
                report.bytes_read += n;
                if !same {
                    report.problem(path, "content differs from the index".into());
                    report.damaged.push((path.to_path_buf(), e.mtime));
                }
            }
        }
        EntryKind::Symlink { target } if md.file_type().is_symlink() => {
            let got = fs::read_link(dest.join(path)).at(dest.join(path))?;
            if got.as_os_str().as_bytes() != target.as_slice() {
                report.problem(path, "symlink target differs from the index".into());
            }
        }
        _ => report.problem(path, "another kind of file than the index says".into()),
    }
    Ok(None)
}

impl MirrorReport {
    fn problem(&mut self, path: &Path, what: String) {
        self.problems.push(Problem {
            object: path.display().to_string(),
            what,
        });
    }
}

/// Whether the file's bytes, cut at the chunks' lengths, have the chunks' ids; and how many
/// bytes were read.
fn content_matches(path: &Path, chunks: &[(ChunkId, u32)]) -> std::io::Result<(bool, u64)> {
    let (mut f, _) = crate::fsutil::open_regular(path)?;
    let mut read = 0u64;
    let mut buf = Vec::new();
    for (id, len) in chunks {
        buf.clear();
        (&mut f).take(u64::from(*len)).read_to_end(&mut buf)?;
        read += buf.len() as u64;
        if buf.len() != *len as usize || ChunkId::of(&buf) != *id {
            return Ok((false, read));
        }
    }
    Ok((true, read))
}

/// Moves the modification time of each damaged file (below `dest`, never through a
/// symlink) a second past the one its index entry gives, so that a full sync sees it as
/// changed and rewrites it.
pub fn invalidate(dest: &Path, damaged: &[(PathBuf, Mtime)]) -> Result<(), SyncError> {
    for (p, mtime) in damaged {
        let abs = dest.join(p);
        if crate::pipeline::through_symlink(dest, p) {
            continue;
        }
        let other = std::time::Duration::new(mtime.secs.unsigned_abs().saturating_add(1), 0);
        let when = match mtime.secs >= 0 {
            true => std::time::UNIX_EPOCH + other,
            false => std::time::UNIX_EPOCH - std::time::Duration::from_secs(1),
        };
        let (f, _) = crate::fsutil::open_regular(&abs).at(&abs)?;
        f.set_modified(when).at(&abs)?;
    }
    Ok(())
}
