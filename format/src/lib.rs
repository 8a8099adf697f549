//! The PulpDist on-store format: identifiers, packs, index nodes and signed tree heads.
//!
//! Everything here is pure: plain functions over bytes and structs, no I/O, no runtime.
//! The normative description is `docs/FORMAT.md`; golden vectors in `tests/golden/` are
//! decoded by this crate's tests so the spec and the code cannot drift.
//!
//! * [`ChunkId`], [`NodeId`], [`PackId`]: distinct 256-bit identifiers that cannot be mixed.
//! * [`Node`]: one directory of the Merkle index, named by the BLAKE3 hash of its encoding.
//! * [`Head`] / [`SignedHead`]: the small signed object that names a tree's current root.
//! * [`pack`]: the container that holds chunks and nodes, with a self-describing trailer.
//! * [`delta`]: delta packs, each changed file compressed against its previous version.
//! * [`VerifiedChunk`]: the only way bytes from a store become content a mirror may write.
//!
//! ```
//! use pulpdist_format::{ChunkId, Codec, VerifiedChunk};
//! let data = b"hello mirror".to_vec();
//! let id = ChunkId::of(&data);
//! let chunk = VerifiedChunk::from_stored(id, Codec::Raw, &data, data.len() as u32).unwrap();
//! assert_eq!(chunk.data(), b"hello mirror");
//! ```

mod codec;
mod columns;
mod condemned;
pub mod delta;
mod error;
pub mod filter;
mod head;
mod id;
mod keys;
#[cfg(test)]
mod mutate;
mod name;
mod node;
mod node_list;
pub mod pack;
mod wire;

pub use codec::{Codec, VerifiedChunk, MAX_CHUNK_SIZE, MAX_NODE_SIZE};
pub use condemned::{Condemned, CONDEMNED_KEY, MAX_CONDEMNED_SIZE};
pub use error::FormatError;
pub use head::{
    history_key, history_version, ChunkParams, Head, PackInfo, PackKind, SignedHead, VersionPacks,
    EXT_FILTER, MAX_HEAD_SIZE,
};
pub use id::{ChunkId, NodeId, PackId};
pub use keys::{PublicKey, SecretKey, TrustedKeys};
pub use name::{validate_tree_name, Name};
pub use node::{
    chunk_list_hash, ChunkRef, Entry, EntryKind, Location, Mtime, Node, NodeRef, Part,
    ResolvedFiles, TreeFiles, MAX_PART_PATH, MAX_RESOLVED_CHUNKS, MAX_RESOLVE_READ,
    MAX_TREE_RESOLVED_CHUNKS,
};
