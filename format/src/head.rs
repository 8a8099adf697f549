//! The signed tree head: the one mutable object of a store (`heads/<tree>`).

use crate::error::FormatError;
use crate::id::PackId;
use crate::keys::{PublicKey, SecretKey, TrustedKeys};
use crate::name::validate_tree_name;
use crate::node::NodeRef;
use crate::wire::{Reader, Writer};

/// Magic and format version of an encoded head.
pub(crate) const HEAD_MAGIC: &[u8; 8] = b"PDHEAD\x00\x01";
/// Largest head accepted by a reader.
pub const MAX_HEAD_SIZE: usize = 1024 * 1024;

/// The object key of the archived head of `tree`'s `version` (section 2 of FORMAT.md):
/// `history/<tree>/<version, 20 decimal digits>`, so that a listing sorts by version. The
/// content is the head exactly as it was signed; it is written once and never replaced.
pub fn history_key(tree: &str, version: u64) -> String {
    format!("history/{tree}/{version:020}")
}

/// The version an archived head's key names, if `name` (the last component) is one.
pub fn history_version(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}
/// Checks a head's lifetime: it cannot expire before it is created (FORMAT.md 5.5). How
/// long it may live is the publisher's policy (`publish --expires-days`, 1 to 366).
fn check_lifetime(created: i64, expires: i64) -> Result<(), FormatError> {
    if expires >= created {
        return Ok(());
    }
    Err(FormatError::invalid(
        "tree head",
        format!("expires at {expires}, before it was created at {created}"),
    ))
}

/// Extension tags with this bit set must be understood by a reader, or it refuses the head.
pub(crate) const EXT_CRITICAL: u16 = 0x8000;

/// FastCDC parameters of a tree (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkParams {
    /// Minimum chunk size.
    pub min: u32,
    /// Average (target) chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
}

impl ChunkParams {
    /// The defaults, chosen by measurement (benchmarks/README.md, "Chunk size").
    pub const DEFAULT: ChunkParams = ChunkParams {
        min: 16 * 1024,
        avg: 64 * 1024,
        max: 256 * 1024,
    };

    /// Checks the parameters against what FastCDC and the format allow.
    pub fn validate(&self) -> Result<(), FormatError> {
        let ok = self.min >= 64
            && self.min <= 1 << 20
            && self.avg.is_power_of_two()
            && self.avg >= 256
            && self.avg <= 4 << 20
            && self.max >= 1024
            && self.max <= crate::codec::MAX_CHUNK_SIZE
            && self.min <= self.avg
            && self.avg <= self.max;
        if ok {
            Ok(())
        } else {
            Err(FormatError::invalid(
                "chunk parameters",
                format!(
                    "min {} avg {} max {}: need 64 <= min <= avg <= max, avg a power of two in 256..=4 MiB, 1 KiB <= max <= 16 MiB",
                    self.min, self.avg, self.max
                ),
            ))
        }
    }
}

/// What a pack holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackKind {
    /// File chunks.
    Data,
    /// Index nodes.
    Index,
}

/// A pack written by some version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// Its name.
    pub id: PackId,
    /// Its size in bytes (the whole object, trailer included).
    pub size: u64,
    /// Chunks or index nodes.
    pub kind: PackKind,
}

/// The packs one recent version added to the store: its delta from the version before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionPacks {
    /// The version that wrote them.
    pub version: u64,
    /// The packs, index packs first.
    pub packs: Vec<PackInfo>,
}

/// The content of a tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Tree name, equal to the object key `heads/<tree>`.
    pub tree: String,
    /// Version, strictly increasing per tree.
    pub version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// Expiry time; a client refuses the head after it.
    pub expires: i64,
    /// The root index node.
    pub root: NodeRef,
    /// Chunking parameters of the tree.
    pub params: ChunkParams,
    /// Packs added by recent versions, newest first (the current version included).
    pub recent: Vec<VersionPacks>,
    /// Extensions: (tag, value). Unknown non-critical tags are kept and ignored.
    pub extensions: Vec<(u16, Vec<u8>)>,
}

/// A head whose signature has been checked against a trusted key.
#[derive(Clone, Debug)]
pub struct SignedHead {
    head: Head,
    key: PublicKey,
    bytes: Vec<u8>,
}

impl SignedHead {
    /// The verified content.
    pub fn head(&self) -> &Head {
        &self.head
    }
    /// The key that signed it.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
    /// The exact bytes, as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes a head, checks that its key is trusted and its signature valid.
    pub fn decode_and_verify(bytes: &[u8], trusted: &TrustedKeys) -> Result<Self, FormatError> {
        let (head, key, signed_len) = Head::decode_unverified(bytes)?;
        if !trusted.contains(&key) {
            return Err(FormatError::UntrustedKey {
                tree: head.tree,
                key: key.to_string(),
            });
        }
        let sig: [u8; 64] = bytes[signed_len..]
            .try_into()
            .map_err(|_| FormatError::invalid("tree head", "signature is not 64 bytes"))?;
        if !key.verify(&bytes[..signed_len], &sig) {
            return Err(FormatError::BadSignature {
                tree: head.tree,
                version: head.version,
            });
        }
        Ok(SignedHead {
            head,
            key,
            bytes: bytes.to_vec(),
        })
    }
}

fn kind_byte(k: PackKind) -> u8 {
    match k {
        PackKind::Data => 0,
        PackKind::Index => 1,
    }
}

/// Head extension: the rsync filter rules the publisher applied (UTF-8, one rule per line,
/// as `+ PATTERN` / `- PATTERN`). Not critical: a reader that ignores it reads the tree.
pub const EXT_FILTER: u16 = 0x0001;

impl Head {
    /// The filter recorded in the head, if any (see [`EXT_FILTER`]).
    pub fn filter(&self) -> Result<Option<crate::filter::Filter>, FormatError> {
        let Some((_, v)) = self.extensions.iter().find(|(t, _)| *t == EXT_FILTER) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(v)
            .map_err(|_| FormatError::invalid("head filter extension", "not UTF-8"))?;
        crate::filter::Filter::parse_lines(text)
            .map(Some)
            .map_err(|e| FormatError::invalid("head filter extension", e.to_string()))
    }

    /// The delta packs the head lists (see [`crate::delta::EXT_DELTAS`]); none without
    /// the extension.
    pub fn deltas(&self) -> Result<Vec<crate::delta::DeltaInfo>, FormatError> {
        match self
            .extensions
            .iter()
            .find(|(t, _)| *t == crate::delta::EXT_DELTAS)
        {
            Some((_, v)) => crate::delta::decode_deltas(v),
            None => Ok(Vec::new()),
        }
    }

    fn encode_body(&self, key: &PublicKey) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(HEAD_MAGIC);
        w.u16(self.tree.len() as u16);
        w.bytes(self.tree.as_bytes());
        w.u64(self.version);
        w.i64(self.created);
        w.i64(self.expires);
        crate::delta::write_node_ref(&mut w, &self.root);
        w.u32(self.params.min);
        w.u32(self.params.avg);
        w.u32(self.params.max);
        w.u32(self.recent.len() as u32);
        for v in &self.recent {
            w.u64(v.version);
            w.u32(v.packs.len() as u32);
            for p in &v.packs {
                w.bytes(p.id.as_bytes());
                w.u64(p.size);
                w.u8(kind_byte(p.kind));
            }
        }
        w.u32(self.extensions.len() as u32);
        for (tag, value) in &self.extensions {
            w.u16(*tag);
            w.u32(value.len() as u32);
            w.bytes(value);
        }
        w.bytes(key.as_bytes());
        w.buf
    }

    /// Encodes and signs the head; the result is what `heads/<tree>` holds.
    pub fn sign(&self, key: &SecretKey) -> Result<Vec<u8>, FormatError> {
        validate_tree_name(&self.tree)?;
        check_lifetime(self.created, self.expires)?;
        self.params.validate()?;
        let mut bytes = self.encode_body(&key.public());
        let sig = key.sign(&bytes);
        bytes.extend_from_slice(&sig);
        if bytes.len() > MAX_HEAD_SIZE {
            return Err(FormatError::invalid(
                "tree head",
                format!("{} bytes exceeds the limit", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    /// Decodes a head without checking the signature. Returns the head, the signing key
    /// and the length of the signed part. Only [`SignedHead::decode_and_verify`] should
    /// be used on bytes from a store.
    pub fn decode_unverified(bytes: &[u8]) -> Result<(Head, PublicKey, usize), FormatError> {
        if bytes.len() > MAX_HEAD_SIZE {
            return Err(FormatError::invalid(
                "tree head",
                format!("{} bytes exceeds the limit", bytes.len()),
            ));
        }
        let mut r = Reader::new(bytes, "tree head");
        r.expect_magic(HEAD_MAGIC)?;
        let tlen = r.u16()? as usize;
        let tree = String::from_utf8(r.take(tlen)?.to_vec())
            .map_err(|_| FormatError::invalid("tree head", "tree name is not UTF-8"))?;
        validate_tree_name(&tree)?;
        let version = r.u64()?;
        let created = r.i64()?;
        let expires = r.i64()?;
        check_lifetime(created, expires)?;
        let root = crate::delta::read_node_ref(&mut r, "tree head")?;
        let params = ChunkParams {
            min: r.u32()?,
            avg: r.u32()?,
            max: r.u32()?,
        };
        params.validate()?;
        let nversions = r.count(12)?;
        let mut recent = Vec::with_capacity(nversions);
        for _ in 0..nversions {
            let version = r.u64()?;
            let npacks = r.count(41)?;
            let mut packs = Vec::with_capacity(npacks);
            for _ in 0..npacks {
                let id = PackId(r.array()?);
                let size = r.u64()?;
                let kind = match r.u8()? {
                    0 => PackKind::Data,
                    1 => PackKind::Index,
                    k => {
                        return Err(FormatError::invalid(
                            "tree head",
                            format!("unknown pack kind {k}"),
                        ))
                    }
                };
                packs.push(PackInfo { id, size, kind });
            }
            recent.push(VersionPacks { version, packs });
        }
        // Recent versions: newest first, strictly descending, starting at this version.
        let descending = recent.windows(2).all(|w| w[0].version > w[1].version);
        if !descending || recent.first().is_some_and(|v| v.version != version) {
            return Err(FormatError::invalid(
                "tree head",
                "recent versions must start at the head's version and descend",
            ));
        }
        let next = r.count(6)?;
        let mut extensions = Vec::with_capacity(next);
        for _ in 0..next {
            let tag = r.u16()?;
            let len = r.u32()? as usize;
            let value = r.take(len)?.to_vec();
            if tag & EXT_CRITICAL != 0 {
                return Err(FormatError::invalid(
                    "tree head",
                    format!("unknown critical extension {tag:#06x}"),
                ));
            }
            extensions.push((tag, value));
        }
        let key = PublicKey::from_bytes(&r.array()?)?;
        let signed_len = r.pos();
        r.take(64)?;
        r.finish()?;
        Ok((
            Head {
                tree,
                version,
                created,
                expires,
                root,
                params,
                recent,
                extensions,
            },
            key,
            signed_len,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::id::NodeId;
    use crate::node::Location;
    use proptest::prelude::*;

    fn sample(version: u64) -> Head {
        let loc = Location {
            pack: PackId([1; 32]),
            offset: 8,
            stored_len: 100,
            raw_len: 200,
            codec: Codec::Zstd,
        };
        Head {
            tree: "debian".into(),
            version,
            created: 1_700_000_000,
            expires: 1_700_604_800,
            root: NodeRef {
                id: NodeId([2; 32]),
                loc,
            },
            params: ChunkParams::DEFAULT,
            recent: vec![VersionPacks {
                version,
                packs: vec![PackInfo {
                    id: PackId([1; 32]),
                    size: 4096,
                    kind: PackKind::Index,
                }],
            }],
            extensions: vec![(7, b"x".to_vec())],
        }
    }

    #[test]
    fn sign_verify_and_refuse() {
        let key = SecretKey::from_seed([9; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let trusted = TrustedKeys::new(vec![key.public()]);
        let bytes = sample(3).sign(&key).expect("sign");
        let h = SignedHead::decode_and_verify(&bytes, &trusted).expect("verify");
        assert_eq!(h.head(), &sample(3));
        // Foreign key.
        let foreign = sample(3).sign(&other).expect("sign");
        assert!(matches!(
            SignedHead::decode_and_verify(&foreign, &trusted),
            Err(FormatError::UntrustedKey { .. })
        ));
        // Any flipped bit before the signature breaks it.
        for i in [10, 30, 60, bytes.len() - 70] {
            let mut t = bytes.clone();
            t[i] ^= 1;
            assert!(
                SignedHead::decode_and_verify(&t, &trusted).is_err(),
                "bit at {i}"
            );
        }
        // Truncation.
        assert!(SignedHead::decode_and_verify(&bytes[..bytes.len() - 1], &trusted).is_err());
    }

    /// Regression: a head that expired before it was created was accepted (FORMAT.md 5.5).
    #[test]
    fn a_head_cannot_expire_before_it_is_created() {
        let key = SecretKey::from_seed([9; 32]);
        let trusted = TrustedKeys::new(vec![key.public()]);
        for (created, expires, ok) in [
            (100, 100, true),
            (100, i64::MAX, true),
            (100, 99, false),
            (i64::MAX, i64::MIN, false),
        ] {
            let mut h = sample(1);
            h.created = created;
            h.expires = expires;
            assert_eq!(h.sign(&key).is_ok(), ok, "{created}..{expires}");
            // A hostile publisher's encoder: the body as written, signed anyway.
            let mut bytes = h.encode_body(&key.public());
            let sig = key.sign(&bytes);
            bytes.extend_from_slice(&sig);
            assert_eq!(SignedHead::decode_and_verify(&bytes, &trusted).is_ok(), ok);
        }
    }

    #[test]
    fn unknown_critical_extension_refused() {
        let key = SecretKey::from_seed([9; 32]);
        let mut h = sample(1);
        h.extensions = vec![(EXT_CRITICAL | 1, vec![])];
        let bytes = h.sign(&key).expect("sign");
        assert!(
            SignedHead::decode_and_verify(&bytes, &TrustedKeys::new(vec![key.public()])).is_err()
        );
    }

    proptest! {
        #[test]
        fn head_round_trip(version in any::<u64>(), created in any::<i64>(), ext in proptest::collection::vec((0u16..0x8000, proptest::collection::vec(any::<u8>(), 0..20)), 0..3)) {
            let key = SecretKey::from_seed([5; 32]);
            let mut h = sample(version);
            h.created = created;
            h.expires = created.saturating_add(86_400);
            h.extensions = ext;
            let bytes = h.sign(&key).expect("sign");
            let v = SignedHead::decode_and_verify(&bytes, &TrustedKeys::new(vec![key.public()])).expect("verify");
            prop_assert_eq!(v.head(), &h);
        }

        #[test]
        fn head_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Head::decode_unverified(&bytes);
        }

        /// A damaged signed head never verifies unless the damage changed nothing, and
        /// never panics the decoder.
        #[test]
        fn damaged_head_never_verifies(version in any::<u64>(), m in crate::mutate::mutation()) {
            let key = SecretKey::from_seed([5; 32]);
            let good = sample(version).sign(&key).expect("sign");
            let bad = m.apply(&good);
            let _ = Head::decode_unverified(&bad);
            let verified = SignedHead::decode_and_verify(&bad, &TrustedKeys::new(vec![key.public()]));
            prop_assert!(verified.is_err() || bad == good);
        }
    }
}
