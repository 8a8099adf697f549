//! Shared inputs and the measured inner loops of the PulpDist benchmarks.

pub mod coord;

use pulpdist_chunker::{ChunkId, Chunker, Compressor, DEFAULT_ZSTD_LEVEL};
use rand::{Rng, RngCore, SeedableRng};
use rayon::prelude::*;

/// Random bytes (like .deb or .iso payload): does not compress.
pub fn incompressible(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand_chacha::ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut v);
    v
}

/// Text shaped like a Debian Packages file: compresses about 5-8x.
pub fn compressible(n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "Package:",
        "Version:",
        "Depends:",
        "libc6",
        "(>=",
        "2.36)",
        "amd64",
        "Section:",
        "utils",
        "Priority:",
        "optional",
        "Filename:",
        "pool/main/",
        "SHA256:",
        "Description:",
    ];
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut out = Vec::with_capacity(n + 100);
    while out.len() < n {
        for _ in 0..r.gen_range(3..10) {
            out.extend_from_slice(WORDS[r.gen_range(0..WORDS.len())].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(format!("{:x}\n", r.gen::<u64>()).as_bytes());
    }
    out.truncate(n);
    out
}

/// What publish does per byte of a new file: cut, hash, compress each chunk.
pub fn publish_inner_loop(chunker: &Chunker, comp: &mut Compressor, data: &[u8]) -> usize {
    let mut stored = 0;
    for r in chunker.cuts(data) {
        let chunk = &data[r];
        let _id = ChunkId::of(chunk);
        stored += comp.compress(chunk).bytes.len();
    }
    stored
}

/// The same over every core, the buffer split into `file_size` pieces as files would be.
pub fn publish_parallel(chunker: &Chunker, data: &[u8], file_size: usize) -> usize {
    data.par_chunks(file_size)
        .map_init(
            || Compressor::new(DEFAULT_ZSTD_LEVEL).ok(),
            |comp, piece| {
                comp.as_mut()
                    .map_or(0, |c| publish_inner_loop(chunker, c, piece))
            },
        )
        .sum()
}
