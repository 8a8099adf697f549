//! Image templates, jigdo's idea with chunks: an image's chunk list, cut along its files'
//! extents, with the bytes of the chunks that are not file data (metadata, padding) inside
//! and, for file data, each file's region named once by the hash of its chunk list (a
//! region of one chunk: that chunk's id). Given directories that hold the files (or a store
//! whose tree holds them), the image is rebuilt byte for byte.
//!
//! Layout (all integers little-endian; see docs/FORMAT.md, "Image templates"):
//!
//! ```text
//! magic   8  "PDISOTP\x02" (version 1, "PDISOTP\x01", is read too: no kind 2)
//! size    u64   the image's length
//! hash    32    BLAKE3 of the whole image
//! params  3×u32 chunk min, avg, max
//! count   u32   entries
//! entry:  kind u8 (0: file data, by id; 1: literal; 2: file region)
//!         kind 0, 1: id 32, raw_len u32,
//!                    literal only: codec u8 (0 raw, 1 zstd), stored_len u32, stored bytes
//!         kind 2:    chunk_hash 32, nchunks u32, size u64
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use pulpdist_chunker::{Chunker, Compressor};
use pulpdist_format::{ChunkId, ChunkParams, Codec, VerifiedChunk};

/// The template magic and version written.
pub const MAGIC: &[u8; 8] = b"PDISOTP\x02";

/// Version 1's magic (every file chunk listed by id): read, no longer written.
pub const MAGIC_V1: &[u8; 8] = b"PDISOTP\x01";

/// One chunk of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// File data: found by id in local files or a store.
    File {
        /// Its id.
        id: ChunkId,
        /// Its length.
        len: u32,
    },
    /// Metadata or padding, carried in the template (verified on decode).
    Literal {
        /// The chunk, verified.
        chunk: VerifiedChunk,
    },
    /// A file's data region of several chunks, named by its chunk list: a file chunked
    /// alone to a list whose ids hash to `chunk_hash` (version 2).
    Region {
        /// [`pulpdist_format::chunk_list_hash`] of the region's chunk ids.
        chunk_hash: [u8; 32],
        /// How many chunks it has.
        chunks: u32,
        /// Its length.
        size: u64,
    },
}

impl Entry {
    /// Its length in the image.
    pub fn len(&self) -> u64 {
        match self {
            Entry::File { len, .. } => u64::from(*len),
            Entry::Literal { chunk } => chunk.data().len() as u64,
            Entry::Region { size, .. } => *size,
        }
    }
    /// Whether it is empty (never, for entries made here).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A decoded template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Image length.
    pub size: u64,
    /// BLAKE3 of the image.
    pub hash: [u8; 32],
    /// Chunk parameters the image was cut with.
    pub params: ChunkParams,
    /// The image's chunks in order.
    pub entries: Vec<Entry>,
}

/// A template that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Malformed bytes.
    #[error("image template: {0}")]
    Invalid(String),
    /// A literal chunk fails verification.
    #[error("image template: {0}")]
    Format(#[from] pulpdist_format::FormatError),
    /// Reading the image failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The image split into segments to chunk on their own: `(range, is file data)`.
pub fn segments(regions: &[Range<u64>], size: u64) -> Vec<(Range<u64>, bool)> {
    let mut out = Vec::with_capacity(regions.len() * 2 + 1);
    let mut pos = 0;
    for r in regions {
        if r.start > pos {
            out.push((pos..r.start, false));
        }
        out.push((r.clone(), true));
        pos = r.end;
    }
    if pos < size {
        out.push((pos..size, false));
    }
    out
}

impl Template {
    /// Cuts the image at `path` (whose file-data `regions` come from [`crate::layout`]) into
    /// a template, telling `progress` the bytes read.
    pub fn make(
        path: &Path,
        regions: &[Range<u64>],
        chunker: &Chunker,
        zstd_level: i32,
        progress: &pulpdist_progress::Reporter,
    ) -> Result<Template, TemplateError> {
        let p = path.display().to_string();
        let io = |source| TemplateError::Io {
            path: p.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut comp =
            Compressor::new(zstd_level).map_err(|e| TemplateError::Invalid(e.to_string()))?;
        let mut hasher = blake3::Hasher::new();
        let mut entries = Vec::new();
        progress.start("image", 0, size);
        for (range, is_file) in segments(regions, size) {
            file.seek(SeekFrom::Start(range.start)).map_err(io)?;
            let mut stream = chunker.stream((&file).take(range.end - range.start));
            let mut region: Vec<(ChunkId, u32)> = Vec::new();
            while let Some(data) = stream.next_chunk().map_err(io)? {
                progress.advance(0, data.len() as u64);
                hasher.update(data);
                let id = ChunkId::of(data);
                if is_file {
                    region.push((id, data.len() as u32));
                    continue;
                }
                let stored = comp.compress(data);
                entries.push(Entry::Literal {
                    chunk: VerifiedChunk::from_stored(
                        id,
                        stored.codec,
                        &stored.bytes,
                        data.len() as u32,
                    )?,
                });
            }
            entries.push(match region[..] {
                [] => continue,
                [(id, len)] => Entry::File { id, len },
                _ => Entry::Region {
                    chunk_hash: pulpdist_format::chunk_list_hash(region.iter().map(|(id, _)| id)),
                    chunks: region.len() as u32,
                    size: region.iter().map(|(_, n)| u64::from(*n)).sum(),
                },
            });
        }
        progress.finish();
        let total: u64 = entries.iter().map(Entry::len).sum();
        if total != size {
            return Err(TemplateError::Invalid(format!(
                "{p}: changed while it was read ({total} of {size} bytes)"
            )));
        }
        Ok(Template {
            size,
            hash: *hasher.finalize().as_bytes(),
            params: chunker.params(),
            entries,
        })
    }

    /// Encodes the template; literals are stored zstd-compressed when that pays.
    pub fn encode(&self, zstd_level: i32) -> Result<Vec<u8>, TemplateError> {
        let mut comp =
            Compressor::new(zstd_level).map_err(|e| TemplateError::Invalid(e.to_string()))?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.hash);
        for v in [self.params.min, self.params.avg, self.params.max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            match e {
                Entry::File { id, len } => {
                    out.push(0);
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(&len.to_le_bytes());
                }
                Entry::Literal { chunk } => {
                    let stored = comp.compress(chunk.data());
                    out.push(1);
                    out.extend_from_slice(&chunk.id().0);
                    out.extend_from_slice(&(chunk.data().len() as u32).to_le_bytes());
                    out.push(stored.codec.to_byte());
                    out.extend_from_slice(&(stored.bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(&stored.bytes);
                }
                Entry::Region {
                    chunk_hash,
                    chunks,
                    size,
                } => {
                    out.push(2);
                    out.extend_from_slice(chunk_hash);
                    out.extend_from_slice(&chunks.to_le_bytes());
                    out.extend_from_slice(&size.to_le_bytes());
                }
            }
        }
        Ok(out)
    }

    /// Decodes and checks a template: every literal verifies, lengths add up.
    pub fn decode(bytes: &[u8]) -> Result<Template, TemplateError> {
        let bad = |why: &str| TemplateError::Invalid(why.to_string());
        let mut r = Cursor { b: bytes, at: 0 };
        let v2 = match r.take(8)? {
            m if m == MAGIC => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(bad("not a PulpDist image template (bad magic or version)")),
        };
        let size = r.u64()?;
        let hash: [u8; 32] = r.take(32)?.try_into().map_err(|_| bad("short hash"))?;
        let params = ChunkParams {
            min: r.u32()?,
            avg: r.u32()?,
            max: r.u32()?,
        };
        params.validate().map_err(TemplateError::Format)?;
        let count = r.u32()? as usize;
        // Each entry takes at least 37 bytes: the count cannot promise more than is there.
        if count > (bytes.len() - r.at) / 37 {
            return Err(bad("entry count larger than the template"));
        }
        let mut entries = Vec::with_capacity(count);
        let mut total = 0u64;
        for _ in 0..count {
            let kind = r.take(1)?[0];
            if kind == 2 && v2 {
                let chunk_hash: [u8; 32] = r.take(32)?.try_into().map_err(|_| bad("short hash"))?;
                let chunks = r.u32()?;
                let size = r.u64()?;
                // At least two chunks (one is kind 0), each 1..=max bytes.
                if chunks < 2
                    || size < u64::from(chunks)
                    || size > u64::from(chunks) * u64::from(params.max)
                {
                    return Err(bad("file region's chunk count or size out of bounds"));
                }
                total = total
                    .checked_add(size)
                    .ok_or_else(|| bad("sizes overflow"))?;
                entries.push(Entry::Region {
                    chunk_hash,
                    chunks,
                    size,
                });
                continue;
            }
            let id = ChunkId(r.take(32)?.try_into().map_err(|_| bad("short id"))?);
            let len = r.u32()?;
            if len == 0 || len > params.max {
                return Err(bad("chunk length out of bounds"));
            }
            total = total
                .checked_add(u64::from(len))
                .ok_or_else(|| bad("sizes overflow"))?;
            entries.push(match kind {
                0 => Entry::File { id, len },
                1 => {
                    let codec = Codec::from_byte(r.take(1)?[0])?;
                    let stored_len = r.u32()? as usize;
                    let stored = r.take(stored_len)?;
                    Entry::Literal {
                        chunk: VerifiedChunk::from_stored(id, codec, stored, len)?,
                    }
                }
                k => return Err(TemplateError::Invalid(format!("unknown entry kind {k}"))),
            });
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        if total != size {
            return Err(TemplateError::Invalid(format!(
                "entries add up to {total} bytes, the image is {size}"
            )));
        }
        Ok(Template {
            size,
            hash,
            params,
            entries,
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TemplateError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                TemplateError::Invalid(format!("truncated at byte {} (needed {n} more)", self.at))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, TemplateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, TemplateError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = dir.path().join("img");
        let mut data = vec![0u8; 700_000];
        blake3::Hasher::new()
            .update(b"image")
            .finalize_xof()
            .fill(&mut data);
        std::fs::write(&img, &data).expect("write");
        let chunker = Chunker::new(ChunkParams::DEFAULT).expect("chunker");
        let t = Template::make(&img, &[10_000..600_000], &chunker, 3, &Default::default())
            .expect("make");
        assert_eq!(t.size, 700_000);
        assert_eq!(t.hash, *blake3::hash(&data).as_bytes());
        // The file's region, of several chunks, is one entry naming its chunk list.
        let regions: Vec<_> = t
            .entries
            .iter()
            .filter(|e| matches!(e, Entry::Region { .. }))
            .collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].len(), 590_000);
        assert!(t.entries.iter().any(|e| matches!(e, Entry::Literal { .. })));
        let bytes = t.encode(3).expect("encode");
        assert_eq!(Template::decode(&bytes).expect("decode"), t);
        for cut in [0, 7, 8, 60, bytes.len() - 1] {
            assert!(Template::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            Template::decode(&bad).is_err(),
            "a damaged literal is refused"
        );
        let mut bad = bytes.clone();
        bad[60..64].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Template::decode(&bad).is_err(), "a huge count is refused");

        // A region's fields are bounded, and version 1 has no regions.
        let at = region_at(&bytes);
        let n = u32::from_le_bytes(bytes[at + 33..at + 37].try_into().expect("4"));
        for (count, size) in [(1u32, 590_000u64), (n, 1), (n, u64::from(n) * 262_144 + 1)] {
            let mut bad = bytes.clone();
            bad[at + 33..at + 37].copy_from_slice(&count.to_le_bytes());
            bad[at + 37..at + 45].copy_from_slice(&size.to_le_bytes());
            let e = Template::decode(&bad).expect_err("refused").to_string();
            assert!(
                e.contains("out of bounds"),
                "{count} chunks, {size} bytes: {e}"
            );
        }
        let mut v1 = bytes;
        v1[..8].copy_from_slice(MAGIC_V1);
        assert!(
            Template::decode(&v1).is_err(),
            "a region in a version 1 template"
        );
    }

    /// Where the (first) region entry starts in an encoded template.
    fn region_at(bytes: &[u8]) -> usize {
        let mut at = 64;
        loop {
            match bytes[at] {
                2 => return at,
                1 => {
                    let stored = u32::from_le_bytes(bytes[at + 38..at + 42].try_into().expect("4"));
                    at += 42 + stored as usize;
                }
                _ => at += 37,
            }
        }
    }
}
