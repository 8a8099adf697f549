//! Chunk + hash + compress throughput beside BLAKE3 alone and zstd alone, on the same
//! buffers: incompressible (random) and compressible (repository-metadata-like text).
//! Results are read as ratios (benchmarks/README.md); the machine is shared and noisy.

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use pulpdist_benchmarks::{compressible, incompressible, publish_inner_loop};
use pulpdist_chunker::{ChunkParams, Chunker, Compressor, DEFAULT_ZSTD_LEVEL};

fn bench(c: &mut Criterion) {
    let size = 32 << 20;
    let chunker = Chunker::new(ChunkParams::DEFAULT).expect("params");
    for (kind, data) in [
        ("incompressible", incompressible(size)),
        ("compressible", compressible(size)),
    ] {
        let mut g = c.benchmark_group(kind);
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(10);
        g.measurement_time(std::time::Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("fastcdc", "cut"), |b| {
            b.iter(|| chunker.cuts(&data).count())
        });
        g.bench_function(BenchmarkId::new("blake3", "alone"), |b| {
            b.iter(|| blake3::hash(&data))
        });
        g.bench_function(BenchmarkId::new("zstd", "alone"), |b| {
            let mut z = zstd::bulk::Compressor::new(DEFAULT_ZSTD_LEVEL).expect("zstd");
            b.iter(|| {
                chunker
                    .cuts(&data)
                    .map(|r| z.compress(&data[r]).map(|v| v.len()).unwrap_or(0))
                    .sum::<usize>()
            })
        });
        g.bench_function(BenchmarkId::new("pulpdist", "chunk+hash+compress"), |b| {
            let mut comp = Compressor::new(DEFAULT_ZSTD_LEVEL).expect("zstd");
            b.iter(|| publish_inner_loop(&chunker, &mut comp, &data))
        });
        g.bench_function(
            BenchmarkId::new("pulpdist", "chunk+hash+compress, all cores"),
            |b| b.iter(|| pulpdist_benchmarks::publish_parallel(&chunker, &data, 4 << 20)),
        );
        g.finish();
    }
}

// The macro defines an undocumented `benches` function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
