//! Update scenarios of the shapes operators mirror, for the delta tests and the comparison
//! harness (`benchmarks/compare`). Each scenario has a version 1 and a version 2; [`write`]
//! brings a directory to either, rewriting only the files that differ (so a publisher's
//! file cache sees an in-place update) and removing files the version lacks.
//!
//! At `scale` 1.0 the shapes follow the real updates in ../shared/DESIGN.md:
//! - [`Scenario::Source`]: a source release, 44,000 text files; version 2 edits a few hunks
//!   in 1,300 of them (about 42 MB of changed files), adds 100 and deletes 50.
//! - [`Scenario::Packages`]: one Debian `Packages` file of about 199 kB; version 2 upgrades
//!   31 packages (new version, size and hashes) and adds 5 (about 203 kB).
//! - [`Scenario::Pool`]: a package pool of already-compressed `.deb`-like files (about
//!   400 MB); version 2 replaces 5 % of the packages by a new version under a new name.
//! - [`Scenario::Large`]: 1,000,000 small files in 1,000 directories; version 2 edits 1,000.
//!
//! Smaller `scale`s keep the proportions (at least one file of each kind).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

use crate::{rng, BASE_TIME};

/// One of the update scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A source tree release update.
    Source,
    /// A Debian Packages file update.
    Packages,
    /// A pool of compressed packages, some upgraded.
    Pool,
    /// A million small files, a thousand changed.
    Large,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 4] = [
        Scenario::Source,
        Scenario::Packages,
        Scenario::Pool,
        Scenario::Large,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Source => "source",
            Scenario::Packages => "packages",
            Scenario::Pool => "pool",
            Scenario::Large => "large",
        }
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a version of a scenario holds, and how it differs from version 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files in this version.
    pub files: u64,
    /// Bytes in this version.
    pub bytes: u64,
    /// Files that differ from version 1 (changed or new; 0 for version 1).
    pub changed_files: u64,
    /// Bytes of those files.
    pub changed_bytes: u64,
    /// Files of version 1 that this version lacks.
    pub deleted_files: u64,
    /// Files whose content did not change but whose mtime did, as a real release tarball
    /// re-stamps them (source: every third file of version 2).
    pub touched_files: u64,
}

/// A file of a version: its path, content seed and how it was made.
struct Spec {
    rel: String,
    kind: Kind,
    /// Differs from version 1.
    changed: bool,
}

enum Kind {
    /// Source text: base seed, size, and the edit seed (if edited).
    Source {
        seed: u64,
        size: usize,
        edit: Option<u64>,
    },
    /// Incompressible bytes.
    Binary { seed: u64, size: usize },
    /// Small text.
    Small {
        seed: u64,
        size: usize,
        edit: Option<u64>,
    },
    /// The Packages file of a version.
    Packages { version: u32, scale: f64 },
}

fn count(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

fn specs(s: Scenario, version: u32, scale: f64) -> Vec<Spec> {
    let v2 = version >= 2;
    let mut out = Vec::new();
    match s {
        Scenario::Source => {
            let n = count(44_000.0, scale);
            let changed = count(1_300.0, scale);
            let deleted = count(50.0, scale);
            let mut r = rng(11, 0);
            // Sizes: 70 % small (1-8 kB), 30 % larger (16-48 kB). Edits go to larger files.
            let sizes: Vec<usize> = (0..n)
                .map(|_| {
                    if r.gen_bool(0.3) {
                        r.gen_range(16_000..48_000)
                    } else {
                        r.gen_range(1_000..8_000)
                    }
                })
                .collect();
            let large: Vec<usize> = (0..n).filter(|&i| sizes[i] >= 16_000).collect();
            let step = (large.len() / changed).max(1);
            let edited: HashSet<usize> =
                large.iter().step_by(step).take(changed).copied().collect();
            let gone: HashSet<usize> = (0..n)
                .filter(|i| sizes[*i] < 16_000)
                .step_by(97)
                .take(deleted)
                .collect();
            for (i, &size) in sizes.iter().enumerate() {
                if v2 && gone.contains(&i) {
                    continue;
                }
                let edit = (v2 && edited.contains(&i)).then_some(i as u64);
                out.push(Spec {
                    rel: format!(
                        "src/{}/{}/file{i}.c",
                        SUBSYSTEMS[i % SUBSYSTEMS.len()],
                        i % 97
                    ),
                    kind: Kind::Source {
                        seed: i as u64,
                        size,
                        edit,
                    },
                    changed: edit.is_some(),
                });
            }
            if v2 {
                for j in 0..count(100.0, scale) {
                    out.push(Spec {
                        rel: format!("src/new/{}/added{j}.c", j % 7),
                        kind: Kind::Source {
                            seed: 1_000_000 + j as u64,
                            size: 5_000,
                            edit: None,
                        },
                        changed: true,
                    });
                }
            }
            out.push(Spec {
                rel: "Makefile".into(),
                kind: Kind::Small {
                    seed: 1,
                    size: 2_000,
                    edit: v2.then_some(1),
                },
                changed: v2,
            });
        }
        Scenario::Packages => {
            out.push(Spec {
                rel: "dists/stable/main/binary-amd64/Packages".into(),
                kind: Kind::Packages { version, scale },
                changed: v2,
            });
        }
        Scenario::Pool => {
            let n = count(400.0, scale);
            let mut r = rng(13, 0);
            for i in 0..n {
                let size = if r.gen_bool(0.1) {
                    r.gen_range(2_000_000..6_000_000)
                } else {
                    r.gen_range(20_000..1_000_000)
                };
                let upgraded = v2 && i % 20 == 7;
                let rev = if upgraded { 2 } else { 1 };
                let name = package_name(i as u64);
                out.push(Spec {
                    rel: format!(
                        "pool/main/{}/{name}/{name}_1.{}-{rev}_amd64.deb",
                        &name[..1],
                        i % 10
                    ),
                    kind: Kind::Binary {
                        seed: (i as u64) << 8 | rev,
                        size: if upgraded { size + size / 50 } else { size },
                    },
                    changed: upgraded,
                });
            }
        }
        Scenario::Large => {
            let n = count(1_000_000.0, scale);
            let per_dir = 1_000.min(n);
            let changed_every = (n / count(1_000.0, scale)).max(1);
            let mut r = rng(17, 0);
            for i in 0..n {
                let size = r.gen_range(64..512);
                let edit = (v2 && i % changed_every == 3 % changed_every).then_some(i as u64);
                out.push(Spec {
                    rel: format!("d{:04}/f{:06}.txt", i / per_dir, i),
                    kind: Kind::Small {
                        seed: i as u64,
                        size,
                        edit,
                    },
                    changed: edit.is_some(),
                });
            }
        }
    }
    out
}

const SUBSYSTEMS: &[&str] = &[
    "kernel", "net", "fs", "drivers", "lib", "mm", "crypto", "tools",
];

const SYLLABLES: &[&str] = &[
    "lib", "py", "gtk", "x", "net", "core", "ssl", "perl", "node", "font", "data", "utils", "dev",
    "doc", "mesa", "qt", "ruby", "go", "zlib", "curl",
];

fn package_name(i: u64) -> String {
    let mut r = rng(19, i);
    let mut s = String::new();
    for _ in 0..r.gen_range(2..4) {
        s.push_str(SYLLABLES[r.gen_range(0..SYLLABLES.len())]);
    }
    format!("{s}{i}")
}

const IDENTS: &[&str] = &[
    "int",
    "return",
    "struct",
    "static",
    "const",
    "unsigned",
    "if",
    "else",
    "for",
    "while",
    "size_t",
    "buf",
    "len",
    "err",
    "ctx",
    "node",
    "list",
    "lock",
    "page",
    "dev",
    "skb",
    "inode",
    "flags",
    "count",
    "offset",
    "mutex_lock",
    "spin_unlock",
    "kfree",
    "kmalloc",
    "GFP_KERNEL",
    "NULL",
    "EINVAL",
    "goto",
    "out",
    "void",
    "u32",
    "u64",
    "bool",
    "true",
    "false",
];

fn source_line(r: &mut ChaCha8Rng, out: &mut Vec<u8>) {
    let indent = r.gen_range(0..4);
    for _ in 0..indent {
        out.push(b'\t');
    }
    let words = r.gen_range(1..9);
    for w in 0..words {
        if w > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(IDENTS[r.gen_range(0..IDENTS.len())].as_bytes());
        if r.gen_bool(0.15) {
            out.extend_from_slice(format!("_{}", r.gen_range(0..1000)).as_bytes());
        }
    }
    out.extend_from_slice(if r.gen_bool(0.6) { b";\n" } else { b"\n" });
}

fn source_text(seed: u64, size: usize) -> Vec<u8> {
    let mut r = rng(23, seed);
    let mut out = Vec::with_capacity(size + 100);
    while out.len() < size {
        source_line(&mut r, &mut out);
    }
    out
}

/// A few hunks replaced or inserted, as a release's patch would.
fn edit_text(mut data: Vec<u8>, seed: u64) -> Vec<u8> {
    let mut r = rng(29, seed);
    let hunks = r.gen_range(1..5);
    for _ in 0..hunks {
        // Line boundaries: find the start of a random line.
        let at = r.gen_range(0..data.len().max(1));
        let start = data[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let removed_lines = r.gen_range(0..6);
        let mut end = start;
        for _ in 0..removed_lines {
            match data[end..].iter().position(|&b| b == b'\n') {
                Some(p) => end += p + 1,
                None => break,
            }
        }
        let mut ins = Vec::new();
        for _ in 0..r.gen_range(1..8) {
            source_line(&mut r, &mut ins);
        }
        data.splice(start..end, ins);
    }
    data
}

fn binary_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut r = rng(31, seed);
    let mut v = vec![0u8; size];
    r.fill_bytes(&mut v);
    v
}

fn hex(r: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[r.gen_range(0..16)]))
        .collect()
}

fn words(r: &mut ChaCha8Rng, n: usize) -> String {
    const W: &[&str] = &[
        "the",
        "library",
        "tool",
        "for",
        "and",
        "data",
        "files",
        "support",
        "package",
        "contains",
        "this",
        "development",
        "headers",
        "of",
        "runtime",
        "a",
        "with",
        "network",
        "documentation",
        "command-line",
        "utilities",
        "Python",
        "module",
        "shared",
    ];
    (0..n)
        .map(|_| W[r.gen_range(0..W.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One stanza of a Packages file: package `i` at upgrade level `rev`.
fn stanza(i: u64, rev: u64) -> String {
    let name = package_name(i);
    let mut r = rng(37, i);
    let size = r.gen_range(10_000..3_000_000);
    let deps = (0..r.gen_range(1..6))
        .map(|k| format!("{} (>= 1.{k})", package_name(r.gen_range(0..5000))))
        .collect::<Vec<_>>()
        .join(", ");
    let desc = words(&mut r, 8);
    let long: Vec<String> = (0..r.gen_range(2..6))
        .map(|_| format!(" {}", words(&mut r, 12)))
        .collect();
    let maint = words(&mut r, 2);
    // What changes with an upgrade: version, file name, sizes, hashes.
    let mut u = rng(41, i * 16 + rev);
    let version = format!("1.{}.{}-{rev}", i % 10, u.gen_range(0..20));
    let size = size + u.gen_range(0..5_000);
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: {maint} <pkg{i}@example.org>\nInstalled-Size: {}\nDepends: {deps}\nSection: utils\nPriority: optional\nFilename: pool/main/{}/{name}/{name}_{version}_amd64.deb\nSize: {size}\nMD5sum: {}\nSHA256: {}\nDescription: {desc}\n{}\n\n",
        size / 1024 * 3,
        &name[..1],
        hex(&mut u, 32),
        hex(&mut u, 64),
        long.join("\n"),
    )
}

fn packages_file(version: u32, scale: f64) -> Vec<u8> {
    let n = count(245.0, scale) as u64;
    let added = if version >= 2 {
        count(5.0, scale) as u64
    } else {
        0
    };
    let mut out = String::new();
    for i in 0..n + added {
        let upgraded = version >= 2 && i % 8 == 3;
        out.push_str(&stanza(i, if upgraded { 2 } else { 1 }));
    }
    out.into_bytes()
}

fn content(kind: &Kind) -> Vec<u8> {
    match *kind {
        Kind::Source { seed, size, edit } => {
            let base = source_text(seed, size);
            match edit {
                Some(e) => edit_text(base, e),
                None => base,
            }
        }
        Kind::Binary { seed, size } => binary_bytes(seed, size),
        Kind::Small { seed, size, edit } => {
            let mut base = source_text(seed, size);
            base.truncate(size);
            match edit {
                Some(e) => edit_text(base, e),
                None => base,
            }
        }
        Kind::Packages { version, scale } => packages_file(version, scale),
    }
}

/// Brings `root` to `version` (1 or 2) of scenario `s` at `scale`: writes the files whose
/// content differs from what is there, removes files the version lacks. Unchanged files
/// keep a fixed mtime; changed ones get the version's, and so does a third of the
/// unchanged source files of version 2 (re-stamped, as real release tarballs are).
pub fn write(root: &Path, s: Scenario, version: u32, scale: f64) -> io::Result<Summary> {
    let specs = specs(s, version, scale);
    let v1: HashSet<String> = if version >= 2 {
        specs_names(s, scale)
    } else {
        HashSet::new()
    };
    let mut sum = Summary::default();
    let mut keep: HashSet<PathBuf> = HashSet::new();
    for spec in &specs {
        let data = content(&spec.kind);
        let path = root.join(&spec.rel);
        // Real releases re-stamp files whose content did not change (the tarball is
        // rebuilt): a third of the source tree, spread over its directories.
        let touched = s == Scenario::Source
            && version >= 2
            && !spec.changed
            && fnv(&spec.rel).is_multiple_of(3);
        let mtime = if spec.changed || touched {
            BASE_TIME + 86_400 * i64::from(version)
        } else {
            BASE_TIME
        };
        let same = fs::metadata(&path).is_ok_and(|m| {
            m.len() == data.len() as u64
                && filetime::FileTime::from_last_modification_time(&m).unix_seconds() == mtime
        }) && fs::read(&path).is_ok_and(|d| d == data);
        if !same {
            crate::write(&path, &data, 0o644, mtime)?;
        }
        sum.files += 1;
        sum.bytes += data.len() as u64;
        if version >= 2 && (spec.changed || !v1.contains(&spec.rel)) {
            sum.changed_files += 1;
            sum.changed_bytes += data.len() as u64;
        } else if touched {
            sum.touched_files += 1;
        }
        keep.insert(path);
    }
    if version >= 2 {
        let now: HashSet<&str> = specs.iter().map(|s| s.rel.as_str()).collect();
        sum.deleted_files = v1.iter().filter(|r| !now.contains(r.as_str())).count() as u64;
    }
    remove_others(root, &keep)?;
    Ok(sum)
}

/// FNV-1a of a path: a choice of files that does not depend on the platform's hasher.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn specs_names(s: Scenario, scale: f64) -> HashSet<String> {
    specs(s, 1, scale).into_iter().map(|s| s.rel).collect()
}

/// Removes regular files under `root` not in `keep`, then directories left empty.
fn remove_others(root: &Path, keep: &HashSet<PathBuf>) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    let mut dirs = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e?.path();
            let md = fs::symlink_metadata(&p)?;
            if md.is_dir() {
                stack.push(p.clone());
                dirs.push(p);
            } else if !keep.contains(&p) {
                fs::remove_file(&p)?;
            }
        }
    }
    for d in dirs.iter().rev() {
        if fs::read_dir(d)?.next().is_none() {
            fs::remove_dir(d)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_in_place_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s1 = write(dir.path(), Scenario::Source, 1, 0.02).expect("v1");
        assert_eq!(s1.files, 881);
        let s2 = write(dir.path(), Scenario::Source, 2, 0.02).expect("v2");
        assert_eq!(s2.changed_files, 26 + 2 + 1);
        assert_eq!(s2.deleted_files, 1);
        assert!(s2.changed_bytes > 26 * 16_000, "{s2:?}");
        // Again: nothing to write, same summary.
        assert_eq!(
            write(dir.path(), Scenario::Source, 2, 0.02).expect("v2 again"),
            s2
        );
        let p = write(dir.path(), Scenario::Packages, 1, 1.0).expect("packages");
        assert!((180_000..220_000).contains(&p.bytes), "{p:?}");
        let p2 = write(dir.path(), Scenario::Packages, 2, 1.0).expect("packages 2");
        assert!(
            p2.bytes > p.bytes && p2.bytes - p.bytes < 12_000,
            "{p:?} {p2:?}"
        );
        assert_eq!(p2.files, 1);
    }
}
