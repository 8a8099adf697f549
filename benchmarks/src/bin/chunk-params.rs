//! Measures chunk parameters on real data: for an old and a new version of a tree, how many
//! bytes of the new version are not in the old one (what a sync moves, before compression)
//! and how large the index's chunk lists are (53 bytes per chunk reference).
//! Usage: chunk-params OLD_DIR NEW_DIR

use std::collections::HashSet;
use std::path::Path;

use pulpdist_chunker::{ChunkId, ChunkParams, Chunker};

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => files(&p, out),
            Ok(m) if m.is_file() => out.push(p),
            _ => {}
        }
    }
}

fn chunks(dir: &Path, c: &Chunker) -> Vec<(ChunkId, usize)> {
    let mut list = Vec::new();
    files(dir, &mut list);
    let mut out = Vec::new();
    for f in list {
        let Ok(data) = std::fs::read(&f) else {
            continue;
        };
        out.extend(
            c.cuts(&data)
                .map(|r| (ChunkId::of(&data[r.clone()]), r.len())),
        );
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: chunk-params OLD_DIR NEW_DIR");
        std::process::exit(2);
    }
    println!("| min/avg/max (KiB) | new version bytes | bytes not in old | chunk refs | index bytes | moved + index |");
    println!("|---|---|---|---|---|---|");
    for (min, avg, max) in [
        (2, 8, 32),
        (4, 16, 64),
        (8, 32, 128),
        (16, 64, 256),
        (32, 128, 512),
    ] {
        let p = ChunkParams {
            min: min * 1024,
            avg: avg * 1024,
            max: max * 1024,
        };
        let c = Chunker::new(p).expect("params");
        let old: HashSet<ChunkId> = chunks(Path::new(&args[1]), &c)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let new = chunks(Path::new(&args[2]), &c);
        let total: usize = new.iter().map(|x| x.1).sum();
        let mut seen = HashSet::new();
        let moved: usize = new
            .iter()
            .filter(|(id, _)| !old.contains(id) && seen.insert(*id))
            .map(|x| x.1)
            .sum();
        let index = new.len() * 53;
        println!(
            "| {min}/{avg}/{max} | {total} | {moved} | {} | {index} | {} |",
            new.len(),
            moved + index
        );
    }
}
