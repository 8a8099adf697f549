//! Ed25519 signing keys and the trusted-key files that pin them.
//!
//! Text formats, one key per line, so operators can read, diff and concatenate them:
//! `pulpdist-ed25519-secret <64 hex>` and `pulpdist-ed25519 <64 hex> [comment]`.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::FormatError;

const SECRET_TAG: &str = "pulpdist-ed25519-secret";
const PUBLIC_TAG: &str = "pulpdist-ed25519";

/// A signing key (Ed25519 seed).
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's generator.
    pub fn generate() -> Result<Self, FormatError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| FormatError::Key(format!("no randomness: {e}")))?;
        Ok(Self::from_seed(seed))
    }
    /// A key from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }
    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
    /// Signs a message.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
    /// The key file text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {}\n", hex::encode(self.0.to_bytes()))
    }
    /// Parses a key file.
    pub fn from_text(text: &str) -> Result<Self, FormatError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        let Some(rest) = line.and_then(|l| l.strip_prefix(SECRET_TAG)) else {
            return Err(FormatError::Key(format!(
                "not a secret key file (expected a line '{SECRET_TAG} <hex>')"
            )));
        };
        let mut seed = [0u8; 32];
        hex::decode_to_slice(rest.trim(), &mut seed)
            .map_err(|e| FormatError::Key(format!("secret key is not 64 hex digits: {e}")))?;
        Ok(Self::from_seed(seed))
    }
}

/// A verification key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From its 32 bytes; invalid curve points are refused.
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, FormatError> {
        VerifyingKey::from_bytes(b)
            .map(PublicKey)
            .map_err(|e| FormatError::Key(format!("invalid public key {}: {e}", hex::encode(b))))
    }
    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
    /// Strict Ed25519 verification (no malleable signatures, no weak keys).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(msg, &sig).is_ok()
    }
    /// The public key file line.
    pub fn to_text(&self, comment: &str) -> String {
        format!("{PUBLIC_TAG} {} {comment}\n", hex::encode(self.as_bytes()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.as_bytes()[..8]))
    }
}

/// The keys a client accepts heads from (several, so a key can be rotated without a flag day).
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// From a list of keys.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        TrustedKeys(keys)
    }
    /// Parses a trust file: one `pulpdist-ed25519 <hex> [comment]` per line; `#` comments.
    pub fn from_text(text: &str) -> Result<Self, FormatError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            if parts.next() != Some(PUBLIC_TAG) {
                return Err(FormatError::Key(format!(
                    "line {}: expected '{PUBLIC_TAG} <hex> [comment]'",
                    n + 1
                )));
            }
            let mut b = [0u8; 32];
            hex::decode_to_slice(parts.next().unwrap_or(""), &mut b).map_err(|e| {
                FormatError::Key(format!(
                    "line {}: public key is not 64 hex digits: {e}",
                    n + 1
                ))
            })?;
            keys.push(PublicKey::from_bytes(&b)?);
        }
        if keys.is_empty() {
            return Err(FormatError::Key("no public keys found".into()));
        }
        Ok(TrustedKeys(keys))
    }
    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }
    /// The keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let k = SecretKey::from_seed([3; 32]);
        let back = SecretKey::from_text(&k.to_text()).expect("secret");
        assert_eq!(back.public(), k.public());
        let t = TrustedKeys::from_text(&format!("# pinned\n{}", k.public().to_text("upstream")))
            .expect("trust");
        assert!(t.contains(&k.public()));
        assert!(TrustedKeys::from_text("garbage").is_err());
        assert!(SecretKey::from_text(&k.public().to_text("x")).is_err());
    }
}
