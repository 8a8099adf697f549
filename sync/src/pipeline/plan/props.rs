//! Property tests of the planner: random old and new directories and random local states
//! (files as the new or the old version left them, foreign files, directories, symlinks,
//! special files), planned, then the plan carried out on a model of the directory. The
//! result must be exactly the new tree; every chunk taken from a local file must be in
//! that file at that offset before anything is replaced (or saved to staging first); every
//! fetched chunk must be inside a fetch of its pack; only names the new version lacks are
//! deleted; payload is written before metadata, and the top indexes last.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use pulpdist_format::{Codec, Entry, Location, Name};

use super::*;

const NAMES: [&str; 8] = ["a", "b", "c", "d", "Packages", "InRelease", "x", "y"];
const POOL: u8 = 16;

fn chunk(id: u8) -> ChunkRef {
    ChunkRef {
        id: ChunkId([id; 32]),
        loc: Location {
            pack: PackId([id % 2; 32]),
            offset: u64::from(id) * 100,
            stored_len: 100,
            raw_len: 100,
            codec: Codec::Raw,
        },
    }
}

/// What a name holds, in the index or on disk.
#[derive(Clone, Debug, PartialEq)]
enum Thing {
    File {
        chunks: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Symlink {
        target: Vec<u8>,
        mtime: i64,
    },
    Dir {
        mode: u32,
        mtime: i64,
    },
    Other,
}

fn thing() -> impl Strategy<Value = Thing> {
    let mode = prop_oneof![Just(0o644u32), Just(0o755), Just(0o4755)];
    prop_oneof![
        4 => (proptest::collection::vec(0..POOL, 0..4), mode.clone(), 0i64..3)
            .prop_map(|(chunks, mode, mtime)| Thing::File { chunks, mode, mtime }),
        1 => (prop_oneof![Just(b"t1".to_vec()), Just(b"t2".to_vec())], 0i64..2)
            .prop_map(|(target, mtime)| Thing::Symlink { target, mtime }),
        1 => (mode, 0i64..2).prop_map(|(mode, mtime)| Thing::Dir { mode, mtime }),
    ]
}

fn tree() -> impl Strategy<Value = HashMap<String, Thing>> {
    proptest::collection::hash_map(
        proptest::sample::select(&NAMES[..]).prop_map(str::to_string),
        thing(),
        0..7,
    )
}

/// An old tree (or none) and a new one made from it: each name kept, given other content
/// of the same size and mtime (what a local file's size and mtime cannot tell apart),
/// re-stamped, replaced by anything, or removed; plus names the old tree lacked.
fn versions() -> impl Strategy<Value = (Option<HashMap<String, Thing>>, HashMap<String, Thing>)> {
    (
        proptest::option::weighted(0.8, tree()),
        tree(),
        proptest::collection::vec((0u8..5, 0..POOL), NAMES.len()),
    )
        .prop_map(|(old, fresh, edits)| {
            let mut new = HashMap::new();
            for (name, (edit, salt)) in NAMES.iter().zip(edits) {
                let before = old.as_ref().and_then(|o| o.get(*name));
                let after = match (edit, before) {
                    (0, Some(t)) => Some(t.clone()),
                    (
                        1,
                        Some(Thing::File {
                            chunks,
                            mode,
                            mtime,
                        }),
                    ) => Some(Thing::File {
                        chunks: chunks.iter().map(|c| (c + salt) % POOL).collect(),
                        mode: *mode,
                        mtime: *mtime,
                    }),
                    (2, Some(Thing::File { chunks, mode, .. })) => Some(Thing::File {
                        chunks: chunks.clone(),
                        mode: *mode,
                        mtime: 7,
                    }),
                    (3, _) => None,
                    _ => fresh.get(*name).cloned(),
                };
                if let Some(t) = after {
                    new.insert(name.to_string(), t);
                }
            }
            (old, new)
        })
}

/// How each name is found on disk: 0 missing, 1 as the new version has it, 2 as the old
/// version has it, 3 a foreign file, 4 a directory, 5 a symlink, 6 a special file.
fn local_kinds() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec(
        (0u8..7, proptest::collection::vec(0..POOL, 0..4)),
        NAMES.len(),
    )
}

fn mtime(secs: i64) -> Mtime {
    Mtime { secs, nanos: 0 }
}

fn node(t: &HashMap<String, Thing>) -> Node {
    let entries = t
        .iter()
        .map(|(name, th)| {
            let (mode, mt, kind) = match th {
                Thing::File {
                    chunks,
                    mode,
                    mtime,
                } => (
                    *mode,
                    *mtime,
                    EntryKind::File {
                        size: 100 * chunks.len() as u64,
                        chunks: chunks.iter().map(|c| chunk(*c)).collect(),
                    },
                ),
                Thing::Symlink { target, mtime } => (
                    0o777,
                    *mtime,
                    EntryKind::Symlink {
                        target: target.clone(),
                    },
                ),
                Thing::Dir { mode, mtime } => (
                    *mode,
                    *mtime,
                    EntryKind::Dir {
                        node: NodeRef {
                            id: pulpdist_format::NodeId([9; 32]),
                            loc: chunk(0).loc,
                        },
                    },
                ),
                Thing::Other => unreachable!("the index holds no special files"),
            };
            Entry {
                name: Name::new(name.as_bytes().to_vec()).expect("a valid name"),
                mode,
                mtime: mtime(mt),
                kind,
            }
        })
        .collect();
    Node::new(entries).expect("a valid node")
}

fn observe(t: &Thing) -> Observed {
    match t {
        Thing::File {
            chunks,
            mode,
            mtime: m,
        } => Observed::File {
            size: 100 * chunks.len() as u64,
            mtime: mtime(*m),
            mode: *mode,
        },
        Thing::Symlink { target, mtime: m } => Observed::Symlink {
            target: target.clone(),
            mtime: mtime(*m),
        },
        Thing::Dir { mode, mtime: m } => Observed::Dir {
            mode: *mode,
            mtime: mtime(*m),
        },
        Thing::Other => Observed::Other,
    }
}

use pulpdist_format::NodeRef;

fn settings() -> PlanSettings {
    PlanSettings {
        metadata_patterns: vec!["Packages*".into(), "InRelease".into()],
        max_gap: 150,
        whole_ratio: 0.5,
        special_modes: false,
    }
}

/// The disk before the sync, from the generated kinds.
fn disk(
    new: &HashMap<String, Thing>,
    old: &Option<HashMap<String, Thing>>,
    kinds: &[(u8, Vec<u8>)],
) -> HashMap<String, Thing> {
    let mut disk = HashMap::new();
    for (name, (kind, foreign)) in NAMES.iter().zip(kinds) {
        let t = match kind {
            1 => new.get(*name).cloned(),
            2 => old.as_ref().and_then(|o| o.get(*name).cloned()),
            3 => Some(Thing::File {
                chunks: foreign.clone(),
                mode: 0o600,
                mtime: 9,
            }),
            4 => Some(Thing::Dir {
                mode: 0o700,
                mtime: 9,
            }),
            5 => Some(Thing::Symlink {
                target: b"elsewhere".to_vec(),
                mtime: 9,
            }),
            6 => Some(Thing::Other),
            _ => None,
        };
        if let Some(t) = t {
            disk.insert(name.to_string(), t);
        }
    }
    disk
}

/// Every chunk any local file holds, as the sync's local survey would offer it; some
/// chunks also in staging.
fn sources(disk: &HashMap<String, Thing>, staged: &[u8]) -> HashMap<ChunkId, Source> {
    let mut out = HashMap::new();
    let mut names: Vec<&String> = disk.keys().collect();
    names.sort();
    for name in names {
        if let Thing::File { chunks, .. } = &disk[name] {
            for (i, c) in chunks.iter().enumerate() {
                out.entry(ChunkId([*c; 32])).or_insert(Source::Local {
                    path: PathBuf::from(name),
                    offset: 100 * i as u64,
                });
            }
        }
    }
    for c in staged {
        out.insert(ChunkId([*c; 32]), Source::Staged);
    }
    out
}

/// Whether the file at `path` on `disk` holds chunk `id` at `offset`.
fn holds(disk: &HashMap<String, Thing>, path: &Path, offset: u64, id: ChunkId) -> bool {
    let name = path.to_string_lossy();
    matches!(disk.get(name.as_ref()), Some(Thing::File { chunks, .. })
        if offset.is_multiple_of(100)
            && chunks.get((offset / 100) as usize).is_some_and(|c| ChunkId([*c; 32]) == id))
}

/// Carries out the plan on the model and checks every property.
fn check(
    new: &HashMap<String, Thing>,
    disk: &HashMap<String, Thing>,
    staged: &[u8],
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let staged_ids: Vec<ChunkId> = staged.iter().map(|c| ChunkId([*c; 32])).collect();
    let replaced: Vec<&PathBuf> = plan
        .files
        .iter()
        .map(|f| &f.path)
        .chain(plan.symlinks.iter().map(|s| &s.0))
        .chain(plan.mkdirs.iter())
        .collect();
    for (id, _, path, offset) in &plan.stage_first {
        prop_assert!(
            holds(disk, path, *offset, *id),
            "stage_first {path:?}@{offset}"
        );
    }
    let mut after = disk.clone();
    for f in &plan.files {
        let mut content = Vec::new();
        for (id, len, src) in &f.chunks {
            prop_assert_eq!(*len, 100);
            match src {
                Source::Local { path, offset } => {
                    prop_assert!(
                        holds(disk, path, *offset, *id),
                        "{:?} reads {path:?}",
                        f.path
                    );
                    prop_assert!(
                        *path == f.path || !replaced.contains(&path),
                        "{:?} reads {path:?}, which the plan replaces first",
                        f.path
                    );
                }
                Source::Staged => prop_assert!(
                    staged_ids.contains(id) || plan.stage_first.iter().any(|s| s.0 == *id),
                    "{:?}: chunk staged by nobody",
                    f.path
                ),
                Source::Fetch(c) => {
                    prop_assert_eq!(c.id, *id);
                    prop_assert!(plan.fetches.iter().any(|op| op.pack == c.loc.pack
                        && op.chunks.contains(c)
                        && (op.whole
                            || op
                                .ranges
                                .iter()
                                .any(|r| r.start <= c.loc.offset && c.loc.range().end <= r.end))));
                }
            }
            content.push(id.0[0]);
        }
        let name = f.path.to_string_lossy().into_owned();
        let mtime = f.mtime.secs;
        after.insert(
            name,
            Thing::File {
                chunks: content,
                mode: f.mode,
                mtime,
            },
        );
    }
    for (path, target, m) in &plan.symlinks {
        let t = Thing::Symlink {
            target: target.clone(),
            mtime: m.secs,
        };
        after.insert(path.to_string_lossy().into_owned(), t);
    }
    for d in &plan.mkdirs {
        after.insert(
            d.to_string_lossy().into_owned(),
            Thing::Dir { mode: 0, mtime: 0 },
        );
    }
    for a in &plan.attrs {
        let target = after.get_mut(a.path.to_string_lossy().as_ref());
        let Some(Thing::File { mode, mtime, .. }) = target else {
            return Err(TestCaseError::fail(format!(
                "{:?}: attributes of no file",
                a.path
            )));
        };
        (*mode, *mtime) = (a.mode, a.mtime.secs);
    }
    for d in &plan.deletes {
        let name = d.to_string_lossy().into_owned();
        prop_assert!(
            !new.contains_key(&name),
            "deletes {name}, which the new version has"
        );
        after.remove(&name);
    }
    for a in &plan.dir_attrs {
        let t = Thing::Dir {
            mode: a.mode,
            mtime: a.mtime.secs,
        };
        after.insert(a.path.to_string_lossy().into_owned(), t);
    }
    // Exactly the new tree, modes masked as the settings say.
    let mut want = new.clone();
    // Without special modes: no setuid, setgid or sticky bit, no world-writable directory.
    for t in want.values_mut() {
        match t {
            Thing::File { mode, .. } => *mode &= 0o777,
            Thing::Dir { mode, .. } => *mode &= 0o775,
            _ => {}
        }
    }
    prop_assert_eq!(after, want);
    // Payload, then metadata, then the top indexes.
    let rank = |f: &FileOp| match f.path.to_string_lossy().as_ref() {
        "InRelease" => 2,
        _ if f.metadata => 1,
        _ => 0,
    };
    prop_assert!(plan.files.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn a_plan_carried_out_gives_exactly_the_new_tree(
        (old, new) in versions(),
        kinds in local_kinds(),
        staged in proptest::collection::vec(0..POOL, 0..3),
    ) {
        let disk = disk(&new, &old, &kinds);
        let local: HashMap<Vec<u8>, Observed> =
            disk.iter().map(|(n, t)| (n.as_bytes().to_vec(), observe(t))).collect();
        let (new_node, old_node) = (node(&new), old.as_ref().map(node));
        let settings = settings();
        let mut planner = Planner::new(settings.clone());
        planner.add_dir(&DirView {
            rel: PathBuf::new(),
            new: &new_node,
            old: old_node.as_ref(),
            local: &local,
        });
        let pack_sizes: HashMap<PackId, u64> =
            [(PackId([0; 32]), 1600), (PackId([1; 32]), 1600)].into();
        let (plan, wanted) = planner.finish(&sources(&disk, &staged), &pack_sizes);
        // Only chunks of files to write are wanted.
        for id in wanted.keys() {
            prop_assert!(plan.files.iter().any(|f| f.chunks.iter().any(|c| c.0 == *id)));
        }
        check(&new, &disk, &staged, &plan)?;
    }
}
