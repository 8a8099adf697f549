//! Image templates, jigdo's idea with chunks: an image's chunk list, cut along its files'
//! extents, with the bytes of the chunks that are not file data (metadata, padding) inside
//! and, for file data, each region of several chunks named once by its first chunk's id
//! and the hash of its chunk list (a region of one chunk: that chunk's id). Given
//! directories that hold the files (or a store whose tree holds their chunks), the image is
//! rebuilt byte for byte.
//!
//! Layout (all integers little-endian; see docs/FORMAT.md, "Image templates"):
//!
//! ```text
//! magic   8  "PDISOTP\x02" (version 1, "PDISOTP\x01", is read too)
//! size    u64   the image's length
//! hash    32    BLAKE3 of the whole image
//! params  3×u32 chunk min, avg, max
//! count   u32   entries
//! one zstd frame holding the entries, each: kind u8, then
//!   0 file chunk:  id 32, raw_len u32
//!   1 literal:     raw_len u32, the raw bytes
//!   2 file region: chunk_hash 32, first id 32, nchunks u32, size u64
//! ```

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use pulpdist_chunker::Chunker;
use pulpdist_format::{ChunkId, ChunkParams, Codec, VerifiedChunk};

/// The template magic and version written.
pub const MAGIC: &[u8; 8] = b"PDISOTP\x02";

/// Version 1's magic (every file chunk listed by id, each literal a frame of its own):
/// read, no longer written.
pub const MAGIC_V1: &[u8; 8] = b"PDISOTP\x01";

/// The most literal bytes a template may carry (they are held in memory to rebuild).
pub const MAX_LITERAL_BYTES: u64 = 1 << 30;

/// One chunk of the image, or a run of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// File data of one chunk: found by id in local files or a store.
    File {
        /// Its id.
        id: ChunkId,
        /// Its length.
        len: u32,
    },
    /// Metadata or padding, carried in the template.
    Literal {
        /// The chunk.
        chunk: VerifiedChunk,
    },
    /// A file-data region of several chunks (version 2): a run of chunks, starting with
    /// `first`, whose ids hash to `chunk_hash` (as a local file or any run of a store's
    /// tree holds them).
    Region {
        /// [`pulpdist_format::chunk_list_hash`] of the region's chunk ids.
        chunk_hash: [u8; 32],
        /// Its first chunk's id.
        first: ChunkId,
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
        progress: &pulpdist_progress::Reporter,
    ) -> Result<Template, TemplateError> {
        let p = path.display().to_string();
        let io = |source| TemplateError::Io {
            path: p.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
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
                entries.push(Entry::Literal {
                    chunk: VerifiedChunk::from_plain(id, data.to_vec())?,
                });
            }
            entries.push(match region[..] {
                [] => continue,
                [(id, len)] => Entry::File { id, len },
                [(first, _), ..] => Entry::Region {
                    chunk_hash: pulpdist_format::chunk_list_hash(region.iter().map(|(id, _)| id)),
                    first,
                    chunks: u32::try_from(region.len()).map_err(|_| {
                        TemplateError::Invalid(format!("{p}: a region of more than 2^32 chunks"))
                    })?,
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

    /// Encodes the template (version 2): the header, then the entries in one zstd frame
    /// at `zstd_level`.
    pub fn encode(&self, zstd_level: i32) -> Result<Vec<u8>, TemplateError> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.hash);
        for v in [self.params.min, self.params.avg, self.params.max] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut body = Vec::new();
        for e in &self.entries {
            match e {
                Entry::File { id, len } => {
                    body.push(0);
                    body.extend_from_slice(&id.0);
                    body.extend_from_slice(&len.to_le_bytes());
                }
                Entry::Literal { chunk } => {
                    body.push(1);
                    body.extend_from_slice(&(chunk.data().len() as u32).to_le_bytes());
                    body.extend_from_slice(chunk.data());
                }
                Entry::Region {
                    chunk_hash,
                    first,
                    chunks,
                    size,
                } => {
                    body.push(2);
                    body.extend_from_slice(chunk_hash);
                    body.extend_from_slice(&first.0);
                    body.extend_from_slice(&chunks.to_le_bytes());
                    body.extend_from_slice(&size.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&frame(&body, zstd_level)?);
        Ok(out)
    }

    /// Decodes and checks a template (version 2 or 1): bounds, lengths adding up, version
    /// 1's literals verified by their ids. A version-2 literal has no id: the image's
    /// BLAKE3 covers it.
    pub fn decode(bytes: &[u8]) -> Result<Template, TemplateError> {
        let bad = |why: &str| TemplateError::Invalid(why.to_string());
        let mut head = Cursor { b: bytes, at: 0 };
        let v2 = match head.take(8)? {
            m if m == MAGIC => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(bad("not a PulpDist image template (bad magic or version)")),
        };
        let size = head.u64()?;
        let hash: [u8; 32] = head.take(32)?.try_into().map_err(|_| bad("short hash"))?;
        let params = ChunkParams {
            min: head.u32()?,
            avg: head.u32()?,
            max: head.u32()?,
        };
        params.validate().map_err(TemplateError::Format)?;
        let count = head.u32()? as usize;
        let rest = &bytes[head.at..];
        let entries = match v2 {
            true => decode_v2(rest, count, &params)?,
            false => decode_v1(rest, count, &params)?,
        };
        let mut total = 0u64;
        for e in &entries {
            total = total
                .checked_add(e.len())
                .ok_or_else(|| bad("sizes overflow"))?;
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

/// One zstd frame of `body`, with its checksum (a damaged frame fails to decode, not only
/// the rebuilt image's hash).
fn frame(body: &[u8], level: i32) -> Result<Vec<u8>, TemplateError> {
    let err = |e: std::io::Error| TemplateError::Invalid(format!("compressing the entries: {e}"));
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).map_err(err)?;
    z.include_checksum(true).map_err(err)?;
    z.set_pledged_src_size(Some(body.len() as u64))
        .map_err(err)?;
    std::io::Write::write_all(&mut z, body).map_err(err)?;
    z.finish().map_err(err)
}

/// Version 2's entries: one zstd frame, read as a stream (never more than `count`
/// entries, [`MAX_LITERAL_BYTES`] of literals, and nothing after the frame).
fn decode_v2(
    frame: &[u8],
    count: usize,
    params: &ChunkParams,
) -> Result<Vec<Entry>, TemplateError> {
    let bad = |why: String| TemplateError::Invalid(why);
    let mut z = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| bad(format!("entries: {e}")))?
        .single_frame();
    let mut read = |n: usize| -> Result<Vec<u8>, TemplateError> {
        let mut b = vec![0u8; n];
        z.read_exact(&mut b)
            .map_err(|e| bad(format!("entries: {e} (truncated or damaged)")))?;
        Ok(b)
    };
    let u32_of = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    let mut literal_bytes = 0u64;
    for i in 0..count {
        let kind = read(1)?[0];
        let entry = match kind {
            0 => {
                let b = read(36)?;
                let len = u32_of(&b[32..]);
                if len == 0 || len > params.max {
                    return Err(bad(format!("entry {i}: chunk length {len} out of bounds")));
                }
                let id = ChunkId(b[..32].try_into().map_err(|_| bad("short id".into()))?);
                Entry::File { id, len }
            }
            1 => {
                let len = u32_of(&read(4)?);
                literal_bytes += u64::from(len);
                if len == 0 || len > params.max || literal_bytes > MAX_LITERAL_BYTES {
                    return Err(bad(format!(
                        "entry {i}: literal of {len} bytes out of bounds ({literal_bytes} in all)"
                    )));
                }
                let data = read(len as usize)?;
                Entry::Literal {
                    chunk: VerifiedChunk::from_plain(ChunkId::of(&data), data)?,
                }
            }
            2 => {
                let b = read(76)?;
                let chunks = u32_of(&b[64..68]);
                let mut s8 = [0u8; 8];
                s8.copy_from_slice(&b[68..76]);
                let region = u64::from_le_bytes(s8);
                // At least two chunks (one is kind 0), each 1..=max bytes.
                if chunks < 2
                    || region < u64::from(chunks)
                    || region > u64::from(chunks) * u64::from(params.max)
                {
                    return Err(bad(format!(
                        "entry {i}: file region of {chunks} chunks and {region} bytes out of bounds"
                    )));
                }
                Entry::Region {
                    chunk_hash: b[..32].try_into().map_err(|_| bad("short hash".into()))?,
                    first: ChunkId(b[32..64].try_into().map_err(|_| bad("short id".into()))?),
                    chunks,
                    size: region,
                }
            }
            k => return Err(bad(format!("entry {i}: unknown entry kind {k}"))),
        };
        entries.push(entry);
    }
    let mut extra = [0u8; 1];
    let trailing = z
        .read(&mut extra)
        .map_err(|e| bad(format!("entries: {e}")))?;
    let after = z.finish();
    if trailing != 0 || !after.is_empty() {
        return Err(bad("trailing bytes".into()));
    }
    Ok(entries)
}

/// Version 1's entries: `kind u8, id 32, raw_len u32`; a literal adds `codec u8,
/// stored_len u32` and the stored bytes (a frame of its own), verified by its id.
fn decode_v1(rest: &[u8], count: usize, params: &ChunkParams) -> Result<Vec<Entry>, TemplateError> {
    let bad = |why: &str| TemplateError::Invalid(why.to_string());
    let mut r = Cursor { b: rest, at: 0 };
    // Each entry takes at least 37 bytes: the count cannot promise more than is there.
    if count > rest.len() / 37 {
        return Err(bad("entry count larger than the template"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.take(1)?[0];
        if kind > 1 {
            return Err(TemplateError::Invalid(format!("unknown entry kind {kind}")));
        }
        let id = ChunkId(r.take(32)?.try_into().map_err(|_| bad("short id"))?);
        let len = r.u32()?;
        if len == 0 || len > params.max {
            return Err(bad("chunk length out of bounds"));
        }
        entries.push(match kind {
            0 => Entry::File { id, len },
            _ => {
                let codec = Codec::from_byte(r.take(1)?[0])?;
                let stored_len = r.u32()? as usize;
                let stored = r.take(stored_len)?;
                Entry::Literal {
                    chunk: VerifiedChunk::from_stored(id, codec, stored, len)?,
                }
            }
        });
    }
    if r.at != rest.len() {
        return Err(bad("trailing bytes"));
    }
    Ok(entries)
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
        let t =
            Template::make(&img, &[10_000..600_000], &chunker, &Default::default()).expect("make");
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
        for cut in [0, 7, 8, 60, 64, 70, bytes.len() - 1] {
            assert!(Template::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        assert!(
            Template::decode(&bad).is_err(),
            "a damaged frame is refused"
        );
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(Template::decode(&bad).is_err(), "a byte after the frame");
        let mut bad = bytes.clone();
        bad[60..64].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Template::decode(&bad).is_err(), "a huge count is refused");

        // A region's fields are bounded.
        let region = |chunks: u32, size: u64| {
            let mut body = vec![2u8];
            body.extend_from_slice(&[7; 64]);
            body.extend_from_slice(&chunks.to_le_bytes());
            body.extend_from_slice(&size.to_le_bytes());
            let mut out = bytes[..64].to_vec();
            out[60..64].copy_from_slice(&1u32.to_le_bytes());
            out[8..16].copy_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&frame(&body, 3).expect("frame"));
            out
        };
        assert!(Template::decode(&region(3, 590_000)).is_ok());
        for (count, size) in [(1u32, 590_000u64), (3, 2), (3, 3 * 262_144 + 1)] {
            let e = Template::decode(&region(count, size))
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains("out of bounds"),
                "{count} chunks, {size} bytes: {e}"
            );
        }
        // Version 1 has no regions.
        let mut v1 = region(3, 590_000)[..64].to_vec();
        v1[..8].copy_from_slice(MAGIC_V1);
        v1.push(2);
        v1.extend_from_slice(&[7; 76]);
        let e = Template::decode(&v1).expect_err("refused").to_string();
        assert!(e.contains("unknown entry kind 2"), "{e}");
    }
}
