//! The garbage collector's condemned list (`gc/condemned`, FORMAT.md section 2 and 8.10):
//! the packs a `pulpdist gc` found unreachable, each with the time it found them so. A
//! publisher reuses nothing from a pack on the list, and refuses to name one in a head; a
//! later gc deletes a pack only when it has been on the list for the grace period and is
//! still unreachable.
//!
//! ```
//! use pulpdist_format::{Condemned, PackId};
//! let mut list = Condemned::default();
//! list.packs.insert(PackId([7; 32]), 1_700_000_000);
//! let text = list.encode();
//! assert_eq!(Condemned::decode(&text).unwrap(), list);
//! ```

use std::collections::BTreeMap;

use crate::error::FormatError;
use crate::id::PackId;

/// The object key of the condemned list.
pub const CONDEMNED_KEY: &str = "gc/condemned";

/// The first line of the list: its magic and format version.
const MAGIC_LINE: &str = "pulpdist-condemned 1";

/// The largest condemned list a reader accepts (about 180,000 packs).
pub const MAX_CONDEMNED_SIZE: usize = 16 << 20;

/// Packs condemned by a garbage collector, with the Unix time (seconds) each was condemned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condemned {
    /// Pack id → when it was condemned.
    pub packs: BTreeMap<PackId, i64>,
}

impl Condemned {
    /// The canonical text: the magic line, then one line `<pack id hex> <time>` per pack in
    /// pack id order, each line ending in `\n`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(24 + self.packs.len() * 80);
        out.push_str(MAGIC_LINE);
        out.push('\n');
        for (id, at) in &self.packs {
            out.push_str(&format!("{} {at}\n", id.to_hex()));
        }
        out.into_bytes()
    }

    /// Decodes a list; refuses an unknown magic, a malformed line, a pack listed twice and
    /// anything larger than [`MAX_CONDEMNED_SIZE`].
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let bad = |reason: String| FormatError::invalid("condemned list", reason);
        if bytes.len() > MAX_CONDEMNED_SIZE {
            return Err(bad(format!("larger than {MAX_CONDEMNED_SIZE} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("does not end with a newline".into()))?;
        let mut lines = body.split('\n');
        if lines.next() != Some(MAGIC_LINE) {
            return Err(bad(format!("does not start with '{MAGIC_LINE}'")));
        }
        let mut packs = BTreeMap::new();
        for (n, line) in lines.enumerate() {
            let lineno = n + 2;
            let (hex, at) = line
                .split_once(' ')
                .ok_or_else(|| bad(format!("line {lineno}: not '<pack id> <time>'")))?;
            let id: PackId = hex
                .parse()
                .map_err(|_| bad(format!("line {lineno}: '{hex}' is not a pack id")))?;
            let at: i64 = at
                .parse()
                .map_err(|_| bad(format!("line {lineno}: '{at}' is not a time")))?;
            if packs.insert(id, at).is_some() {
                return Err(bad(format!("line {lineno}: pack {hex} listed twice")));
            }
        }
        Ok(Condemned { packs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_malformed() {
        let mut c = Condemned::default();
        c.packs.insert(PackId([2; 32]), 5);
        c.packs.insert(PackId([1; 32]), -1);
        let text = c.encode();
        assert!(String::from_utf8_lossy(&text).starts_with("pulpdist-condemned 1\n0101"));
        assert_eq!(Condemned::decode(&text).expect("decodes"), c);
        assert_eq!(
            Condemned::decode(b"pulpdist-condemned 1\n").expect("empty"),
            Condemned::default()
        );
        let line = format!("{} 5\n", PackId([1; 32]).to_hex());
        for bad in [
            "".to_string(),
            "pulpdist-condemned 2\n".into(),
            "pulpdist-condemned 1".into(),
            format!("pulpdist-condemned 1\n{line}{line}"),
            "pulpdist-condemned 1\nxyz 5\n".into(),
            format!("pulpdist-condemned 1\n{}\n", PackId([1; 32]).to_hex()),
            format!("pulpdist-condemned 1\n{} soon\n", PackId([1; 32]).to_hex()),
        ] {
            assert!(Condemned::decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
