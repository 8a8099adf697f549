//! How an object is stored in a pack (raw or one zstd frame), and the only path from
//! stored bytes to verified content.

use crate::error::FormatError;
use crate::id::{ChunkId, NodeId};

/// Largest chunk the format allows (the FastCDC maximum of 16 MiB).
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest index node the format allows, uncompressed (a directory of ~1M entries).
pub const MAX_NODE_SIZE: u32 = 256 * 1024 * 1024;

/// The encoding of one stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Stored as is (compression did not pay).
    Raw,
    /// One complete zstd frame.
    Zstd,
}

impl Codec {
    /// The byte that stands for this codec in every encoding.
    pub fn to_byte(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        }
    }

    /// Parses the codec byte; unknown codecs are refused.
    pub fn from_byte(b: u8) -> Result<Self, FormatError> {
        match b {
            0 => Ok(Codec::Raw),
            1 => Ok(Codec::Zstd),
            other => Err(FormatError::invalid(
                "codec",
                format!("unknown codec {other}"),
            )),
        }
    }
}

/// Decodes stored bytes into exactly `raw_len` bytes, never allocating more than that.
pub(crate) fn decode_stored(
    what: &dyn std::fmt::Display,
    codec: Codec,
    stored: &[u8],
    raw_len: u32,
    limit: u32,
) -> Result<Vec<u8>, FormatError> {
    if raw_len > limit {
        return Err(FormatError::Decompress {
            id: what.to_string(),
            reason: format!("declared size {raw_len} exceeds the limit {limit}"),
        });
    }
    match codec {
        Codec::Raw => {
            if stored.len() != raw_len as usize {
                return Err(FormatError::Decompress {
                    id: what.to_string(),
                    reason: format!("raw object is {} bytes, expected {raw_len}", stored.len()),
                });
            }
            Ok(stored.to_vec())
        }
        Codec::Zstd => {
            let out = zstd::bulk::decompress(stored, raw_len as usize).map_err(|e| {
                FormatError::Decompress {
                    id: what.to_string(),
                    reason: e.to_string(),
                }
            })?;
            if out.len() != raw_len as usize {
                return Err(FormatError::Decompress {
                    id: what.to_string(),
                    reason: format!("decompressed to {} bytes, expected {raw_len}", out.len()),
                });
            }
            Ok(out)
        }
    }
}

/// Chunk bytes whose BLAKE3 hash has been checked against their id. Only a
/// `VerifiedChunk` can be written into a mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedChunk {
    id: ChunkId,
    data: Vec<u8>,
}

impl VerifiedChunk {
    /// Decodes stored bytes and checks that they hash to `id`.
    pub fn from_stored(
        id: ChunkId,
        codec: Codec,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<Self, FormatError> {
        let data = decode_stored(&id, codec, stored, raw_len, MAX_CHUNK_SIZE)?;
        Self::from_plain(id, data)
    }

    /// Checks that plain bytes (for example read from a local file) hash to `id`.
    pub fn from_plain(id: ChunkId, data: Vec<u8>) -> Result<Self, FormatError> {
        let actual = ChunkId::of(&data);
        if actual != id {
            return Err(FormatError::mismatch(&id, &actual));
        }
        Ok(VerifiedChunk { id, data })
    }

    /// The chunk's id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The verified bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Gives up the bytes.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// Decodes a stored index node and checks that it hashes to `id`; returns the plain encoding.
pub(crate) fn verified_node_bytes(
    id: &NodeId,
    codec: Codec,
    stored: &[u8],
    raw_len: u32,
) -> Result<Vec<u8>, FormatError> {
    let data = decode_stored(id, codec, stored, raw_len, MAX_NODE_SIZE)?;
    let actual = NodeId::of(&data);
    if &actual != id {
        return Err(FormatError::HashMismatch {
            expected: id.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_round_trip_and_tamper() {
        let data = vec![7u8; 10_000];
        let id = ChunkId::of(&data);
        let stored = zstd::bulk::compress(&data, 3).expect("compress");
        let c = VerifiedChunk::from_stored(id, Codec::Zstd, &stored, 10_000).expect("verify");
        assert_eq!(c.data(), &data[..]);
        // Wrong declared length, wrong id, garbage frame: all refused.
        assert!(VerifiedChunk::from_stored(id, Codec::Zstd, &stored, 9_999).is_err());
        assert!(
            VerifiedChunk::from_stored(ChunkId::of(b"x"), Codec::Zstd, &stored, 10_000).is_err()
        );
        assert!(VerifiedChunk::from_stored(id, Codec::Zstd, b"garbage", 10_000).is_err());
        assert!(VerifiedChunk::from_stored(id, Codec::Raw, &data, MAX_CHUNK_SIZE + 1).is_err());
    }
}
