//! Deterministic generators of trees and their next versions, for tests, the quick start
//! and benchmarks. The same seed always gives the same bytes, names, modes and mtimes.
//!
//! A tree looks like a small package repository: `pool/` with package-like binary files
//! (incompressible, some large), `dists/` with text metadata (Packages, Release,
//! InRelease), `docs/` with text, symlinks, an empty directory and tiny files.
//! [`evolve`] makes the next version: adds, deletes, edits (in place and by insertion),
//! renames, mode changes, symlink changes, new empty directories.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! pulpdist_testdata::generate(dir.path(), 7, 1).unwrap();
//! pulpdist_testdata::evolve(dir.path(), 7, 1).unwrap();
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub mod scenarios;

use filetime::FileTime;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fixed base time (2026-01-01) so mtimes are reproducible.
pub const BASE_TIME: i64 = 1_767_225_600;

fn rng(seed: u64, step: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(step))
}

fn binary(r: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    r.fill_bytes(&mut v);
    v
}

fn text(r: &mut ChaCha8Rng, lines: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "Package",
        "Version",
        "Depends",
        "libc6",
        "amd64",
        "Section",
        "utils",
        "Priority",
        "optional",
        "Size",
        "SHA256",
        "Description",
        "mirror",
        "tool",
    ];
    let mut out = String::new();
    for i in 0..lines {
        let n = r.gen_range(2..9);
        out.push_str(&format!("{}: ", WORDS[i % WORDS.len()]));
        for _ in 0..n {
            out.push_str(WORDS[r.gen_range(0..WORDS.len())]);
            out.push(' ');
        }
        out.push_str(&format!("{}\n", r.gen_range(0..100_000)));
    }
    out.into_bytes()
}

fn write(path: &Path, data: &[u8], mode: u32, mtime: i64) -> io::Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    filetime::set_file_mtime(path, FileTime::from_unix_time(mtime, 0))
}

/// `len` bytes that do not compress (xorshift from `seed`).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes version 1 of a tree into `root` (which should be empty). `scale` multiplies the
/// number of files (1: about 60 files, 3 MB).
pub fn generate(root: &Path, seed: u64, scale: usize) -> io::Result<()> {
    let mut r = rng(seed, 0);
    let t = BASE_TIME;
    for i in 0..(20 * scale) {
        let size = match i % 10 {
            0 => r.gen_range(300_000..900_000),
            1 => r.gen_range(0..3),
            _ => r.gen_range(1_000..60_000),
        };
        let dir = format!("pool/main/{}", (b'a' + (i % 6) as u8) as char);
        write(
            &root.join(format!("{dir}/pkg{i}_1.0_amd64.deb")),
            &binary(&mut r, size),
            0o644,
            t + i as i64,
        )?;
    }
    for comp in ["main", "contrib"] {
        write(
            &root.join(format!("dists/stable/{comp}/binary-amd64/Packages")),
            &text(&mut r, 400 * scale),
            0o644,
            t,
        )?;
    }
    write(
        &root.join("dists/stable/Release"),
        &text(&mut r, 30),
        0o644,
        t,
    )?;
    write(
        &root.join("dists/stable/InRelease"),
        &text(&mut r, 35),
        0o644,
        t,
    )?;
    for i in 0..(10 * scale) {
        let lines = r.gen_range(5..300);
        write(
            &root.join(format!("docs/section{}/page{i}.txt", i % 3)),
            &text(&mut r, lines),
            0o644,
            t - 1000,
        )?;
    }
    write(&root.join("docs/tiny"), b"x", 0o600, t)?;
    write(&root.join("docs/empty-file"), b"", 0o644, t)?;
    write(
        &root.join("tools/run.sh"),
        b"#!/bin/sh\necho mirror\n",
        0o755,
        t,
    )?;
    fs::create_dir_all(root.join("empty/nested"))?;
    std::os::unix::fs::symlink("stable", root.join("dists/current"))?;
    std::os::unix::fs::symlink("../dists/stable/Release", root.join("docs/release-link"))?;
    std::os::unix::fs::symlink("/nonexistent/absolute/target", root.join("docs/dangling"))?;
    Ok(())
}

fn files_under(root: &Path, sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(sub)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Turns version `step` of a tree into version `step + 1`.
pub fn evolve(root: &Path, seed: u64, step: u64) -> io::Result<()> {
    let mut r = rng(seed, step);
    let t = BASE_TIME + 86_400 * step as i64;
    let pool = files_under(root, "pool");
    // Upgrade a few packages: delete the old file, add a new one under a new name, half of
    // them sharing most of their bytes with the old one (a rename plus an edit).
    for (k, old) in pool
        .iter()
        .enumerate()
        .filter(|(k, _)| k % 7 == (step as usize) % 7)
    {
        let mut data = fs::read(old)?;
        fs::remove_file(old)?;
        if k % 2 == 0 && data.len() > 1000 {
            let at = r.gen_range(0..data.len());
            let ins = binary(&mut r, 500);
            data.splice(at..at, ins);
        } else {
            let n = data.len().max(10);
            data = binary(&mut r, n);
        }
        let name = old
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("pkg")
            .replace("_1.0", &format!("_1.{}", step + 1));
        let name = if name == old.file_name().and_then(|n| n.to_str()).unwrap_or("") {
            format!("v{step}-{name}")
        } else {
            name
        };
        write(&old.with_file_name(name), &data, 0o644, t)?;
    }
    // New packages, one large.
    write(
        &root.join(format!("pool/main/new/added{step}_1.0_amd64.deb")),
        &binary(&mut r, 40_000),
        0o644,
        t,
    )?;
    write(
        &root.join(format!("pool/contrib/big{step}.iso.part")),
        &binary(&mut r, 1_200_000),
        0o644,
        t,
    )?;
    // Metadata edited in place (lines inserted in the middle).
    for p in files_under(root, "dists") {
        let mut data = fs::read(&p)?;
        let at = data.len() / 2;
        let ins = text(&mut r, 3);
        data.splice(at..at, ins);
        write(&p, &data, 0o644, t)?;
    }
    // Docs: one edited, one deleted, one mode change, a new directory with a file.
    let docs = files_under(root, "docs/section0");
    if let Some(p) = docs.first() {
        let mut data = fs::read(p)?;
        data.extend_from_slice(b"appended line\n");
        write(p, &data, 0o644, t)?;
    }
    if let Some(p) = docs.get(1) {
        fs::remove_file(p)?;
    }
    if let Some(p) = docs.get(2) {
        fs::set_permissions(p, fs::Permissions::from_mode(0o640))?;
    }
    write(
        &root.join(format!("docs/new{step}/readme.txt")),
        &text(&mut r, 10),
        0o644,
        t,
    )?;
    fs::create_dir_all(root.join(format!("empty/added{step}")))?;
    // Symlink retargeted; a directory replaced by a file and back.
    let link = root.join("dists/current");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("stable-{step}"), &link)?;
    let flip = root.join("flip");
    if step % 2 == 1 {
        let _ = fs::remove_dir_all(&flip);
        write(&flip, b"now a file", 0o644, t)?;
    } else {
        let _ = fs::remove_file(&flip);
        write(&flip.join("inside"), b"now a dir", 0o644, t)?;
    }
    Ok(())
}
