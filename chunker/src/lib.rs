//! Content-defined chunking (FastCDC 2020), chunk ids (BLAKE3) and per-chunk zstd frames.
//!
//! Pure and synchronous: no runtime, no file system beyond the `Read` it is given.
//!
//! The cut points of a byte sequence are the same whichever way it is read: as one slice
//! ([`Chunker::cuts`]), as a stream with reads of any size ([`Chunker::stream`]), or as a
//! segment of a larger file (a stream over `file.take(len)` after a seek), because a cut
//! is always decided on a window of `max` bytes or on everything that is left.
//!
//! ```
//! use pulpdist_chunker::{Chunker, ChunkParams};
//! let chunker = Chunker::new(ChunkParams::DEFAULT).unwrap();
//! let data = vec![42u8; 1 << 20];
//! let cuts: Vec<_> = chunker.cuts(&data).collect();
//! assert_eq!(cuts.iter().map(|r| r.len()).sum::<usize>(), data.len());
//! let mut stream = chunker.stream(&data[..]);
//! let mut n = 0;
//! while let Some(chunk) = stream.next_chunk().unwrap() { n += chunk.len(); }
//! assert_eq!(n, data.len());
//! ```

mod compress;
pub mod delta;
mod stream;

pub use compress::{Compressor, Stored, DEFAULT_ZSTD_LEVEL};
pub use pulpdist_format::{ChunkId, ChunkParams, Codec};
pub use stream::StreamChunks;

use std::ops::Range;

/// Why a chunker could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkerError {
    /// The parameters are outside what FastCDC and the format allow.
    #[error(transparent)]
    Params(#[from] pulpdist_format::FormatError),
    /// The zstd library refused to set up a context.
    #[error("zstd level {level}: {source}")]
    Zstd {
        /// The zstd level asked for.
        level: i32,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// FastCDC 2020 with normalisation level 1 and the standard gear table.
#[derive(Clone, Debug)]
pub struct Chunker {
    params: ChunkParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker for validated parameters.
    pub fn new(params: ChunkParams) -> Result<Self, ChunkerError> {
        params.validate()?;
        let bits = fastcdc::v2020::logarithm2(params.avg);
        let norm = fastcdc::v2020::Normalization::Level1.bits();
        Ok(Chunker {
            params,
            mask_s: fastcdc::v2020::MASKS[(bits + norm) as usize],
            mask_l: fastcdc::v2020::MASKS[(bits - norm) as usize],
        })
    }

    /// The parameters.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Length of the first chunk of `data`. `data` must hold at least `max` bytes or
    /// everything that is left of the input; then the answer is the same however the
    /// input is split into reads. Returns 0 only for empty input.
    pub fn next_cut(&self, data: &[u8]) -> usize {
        let (_, len) = fastcdc::v2020::cut(
            data,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }

    /// The chunks of a whole buffer, as ranges.
    pub fn cuts<'a>(&'a self, data: &'a [u8]) -> impl Iterator<Item = Range<usize>> + 'a {
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= data.len() {
                return None;
            }
            let len = self.next_cut(&data[pos..]);
            let r = pos..pos + len;
            pos += len;
            Some(r)
        })
    }

    /// The chunks of a stream.
    pub fn stream<R: std::io::Read>(&self, reader: R) -> StreamChunks<R> {
        StreamChunks::new(self.clone(), reader)
    }
}

/// The id of a chunk.
pub fn chunk_id(data: &[u8]) -> ChunkId {
    ChunkId::of(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn small() -> Chunker {
        Chunker::new(ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        })
        .expect("params")
    }

    /// Reads at most `step` bytes per call, to exercise every buffer boundary.
    struct Dribble<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl std::io::Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn stream_lens(c: &Chunker, r: impl std::io::Read) -> Vec<usize> {
        let mut s = c.stream(r);
        let mut out = vec![];
        while let Some(ch) = s.next_chunk().expect("read") {
            out.push(ch.len());
        }
        out
    }

    #[test]
    fn every_read_path_cuts_the_same() {
        let c = small();
        let data = random(300_000, 1);
        let slice: Vec<usize> = c.cuts(&data).map(|r| r.len()).collect();
        for step in [1, 7, 4095, 4096, 16384, 16385, 100_000, 1 << 20] {
            assert_eq!(
                stream_lens(&c, Dribble { data: &data, step }),
                slice,
                "read size {step}"
            );
        }
        // A segment of a larger file cuts like the same bytes on their own.
        let mut big = random(50_000, 2);
        big.extend_from_slice(&data);
        big.extend_from_slice(&random(70_000, 3));
        let mut f = std::io::Cursor::new(&big);
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(50_000)).expect("seek");
        assert_eq!(
            stream_lens(&c, std::io::Read::take(f, data.len() as u64)),
            slice
        );
    }

    #[test]
    fn insertion_moves_only_nearby_cuts() {
        let c = small();
        let data = random(400_000, 4);
        let mut edited = data.clone();
        edited.splice(200_000..200_000, random(100, 5));
        let ids = |d: &[u8]| -> Vec<ChunkId> { c.cuts(d).map(|r| chunk_id(&d[r])).collect() };
        let (a, b) = (ids(&data), ids(&edited));
        let shared = a.iter().filter(|id| b.contains(id)).count();
        // An edit in the middle may change the chunk it falls in and perhaps a neighbour.
        assert!(
            a.len() - shared <= 3,
            "{} of {} chunks changed",
            a.len() - shared,
            a.len()
        );
        // Cuts before the edit are untouched.
        let before: Vec<_> = c.cuts(&data).take_while(|r| r.end < 190_000).collect();
        let before_e: Vec<_> = c.cuts(&edited).take(before.len()).collect();
        assert_eq!(before, before_e);
    }

    #[test]
    fn chunk_sizes_within_bounds() {
        let c = small();
        let data = random(500_000, 6);
        let lens: Vec<usize> = c.cuts(&data).map(|r| r.len()).collect();
        for l in &lens[..lens.len() - 1] {
            assert!((1024..=16384).contains(l), "{l}");
        }
        assert_eq!(c.cuts(&[]).count(), 0);
        assert_eq!(
            c.cuts(&[1, 2, 3]).map(|r| r.len()).collect::<Vec<_>>(),
            vec![3]
        );
        // Zeros hit the maximum.
        assert!(c
            .cuts(&vec![0u8; 100_000])
            .all(|r| r.len() == 16384 || r.end == 100_000));
    }

    proptest::proptest! {
        #[test]
        fn stream_equals_slice(len in 0usize..120_000, seed in 0u64..1000, step in 1usize..40_000) {
            let c = small();
            let data = random(len, seed);
            let slice: Vec<usize> = c.cuts(&data).map(|r| r.len()).collect();
            proptest::prop_assert_eq!(stream_lens(&c, Dribble { data: &data, step }), slice);
        }
    }
}
