//! `zstd-levels FILE...`: PulpDist's chunk + hash + compress loop on each file (read whole)
//! at zstd levels 1, 2 and 3, one core, best of three rounds: throughput and stored bytes,
//! beside zstd alone on the same chunks. Real files are the point: a Debian `Packages`
//! file (`/var/lib/apt/lists/*Packages*`, decompressed), a tar of source trees.

use std::time::Instant;

use pulpdist_benchmarks::publish_inner_loop;
use pulpdist_chunker::{ChunkParams, Chunker, Compressor};

fn best_of_3(mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut out = 0;
    for _ in 0..3 {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: zstd-levels FILE...");
        std::process::exit(2);
    }
    let chunker = match Chunker::new(ChunkParams::DEFAULT) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zstd-levels: {e}");
            std::process::exit(1);
        }
    };
    println!("| file | level | zstd alone MB/s | PulpDist chunk+hash+compress MB/s | stored bytes | stored / level 3 |");
    println!("|---|---|---|---|---|---|");
    for f in &files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("zstd-levels: {f}: {e}");
                std::process::exit(1);
            }
        };
        let mb = data.len() as f64 / 1e6;
        let mut rows = Vec::new();
        for level in [1, 2, 3] {
            let (Ok(mut comp), Ok(mut z)) =
                (Compressor::new(level), zstd::bulk::Compressor::new(level))
            else {
                eprintln!("zstd-levels: no zstd level {level}");
                std::process::exit(1);
            };
            let (alone, _) = best_of_3(|| {
                chunker
                    .cuts(&data)
                    .map(|r| z.compress(&data[r]).map(|v| v.len()).unwrap_or(0))
                    .sum()
            });
            let (ours, stored) = best_of_3(|| publish_inner_loop(&chunker, &mut comp, &data));
            rows.push((level, mb / alone, mb / ours, stored));
        }
        let l3 = rows.iter().find(|r| r.0 == 3).map_or(1, |r| r.3.max(1));
        for (level, alone, ours, stored) in rows {
            println!(
                "| {f} ({mb:.1} MB) | {level} | {alone:.0} | {ours:.0} | {stored} | {:.3} |",
                stored as f64 / l3 as f64
            );
        }
    }
}
