//! Distinct 256-bit identifiers for chunks, index nodes and packs.
//!
//! Chunk and node ids are BLAKE3 hashes of the (uncompressed) object; a pack id is the
//! name the publisher gave the pack: by its content, or at random (FORMAT.md 3, "Why packs
//! are named by their content"). Readers never recompute it.

use std::fmt;
use std::str::FromStr;

use crate::error::FormatError;

macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lower-case hexadecimal, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(&self.0[..8]))
            }
        }

        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|e| {
                    FormatError::invalid(
                        stringify!($name),
                        format!("'{s}' is not 64 hex digits: {e}"),
                    )
                })?;
                Ok($name(out))
            }
        }
    };
}

id_type!(ChunkId, "BLAKE3 hash of a chunk's uncompressed bytes.");
id_type!(
    NodeId,
    "BLAKE3 hash of an index node's uncompressed encoding."
);
id_type!(
    PackId,
    "Unique name of a pack object, `packs/<hex>.pack` in the store."
);

/// The key under which a pack's content gives its name (FORMAT.md 3).
const PACK_NAME_CONTEXT: &str = "pulpdist 2026 pack name";

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl NodeId {
    /// The id of an encoded node.
    pub fn of(encoded: &[u8]) -> Self {
        NodeId(*blake3::hash(encoded).as_bytes())
    }
}

impl PackId {
    /// A fresh random pack name from the operating system's generator.
    pub fn random() -> Result<Self, FormatError> {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b)
            .map_err(|e| FormatError::invalid("PackId", format!("no randomness: {e}")))?;
        Ok(PackId(b))
    }

    /// A reproducible pack name derived from a seed (tests).
    pub fn derived(seed: &[u8]) -> Self {
        PackId(blake3::derive_key("pulpdist 2026 pack id", seed))
    }

    /// The hasher that names a pack by its content (FORMAT.md 3): fed every byte of the
    /// pack as it would be written if its id were all zeros (the header's id field, and in
    /// an index pack the locations of its own nodes); [`PackId::from_content`] of it is
    /// the name.
    pub fn content_hasher() -> blake3::Hasher {
        blake3::Hasher::new_derive_key(PACK_NAME_CONTEXT)
    }

    /// The name given by a [`PackId::content_hasher`] fed a whole pack.
    pub fn from_content(hasher: &blake3::Hasher) -> Self {
        PackId(*hasher.finalize().as_bytes())
    }

    /// The object key of this pack inside a store.
    pub fn object_key(&self) -> String {
        format!("packs/{}.pack", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"abc");
        let back: ChunkId = id.to_string().parse().expect("parse");
        assert_eq!(id, back);
        assert!("zz".parse::<ChunkId>().is_err());
    }
}
