//! Test support: damaged copies of valid encodings. Random bytes almost never get past a
//! decoder's magic number or first length; a valid encoding with a few bytes changed, cut
//! short or grown reaches every field's check.

use proptest::prelude::*;
use proptest::sample::Index;

/// Edits to apply to an encoding: bytes replaced, then a cut, then bytes appended.
#[derive(Clone, Debug)]
pub(crate) struct Mutation {
    edits: Vec<(Index, u8)>,
    cut: Option<Index>,
    tail: Vec<u8>,
}

impl Mutation {
    /// `bytes` with the edits applied.
    pub(crate) fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        if !out.is_empty() {
            for (at, b) in &self.edits {
                let i = at.index(out.len());
                out[i] = *b;
            }
            if let Some(c) = &self.cut {
                out.truncate(c.index(out.len()));
            }
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// One to eight changed bytes, sometimes a cut, sometimes a few bytes more.
pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    (
        proptest::collection::vec((any::<Index>(), any::<u8>()), 0..8),
        proptest::option::weighted(0.3, any::<Index>()),
        proptest::collection::vec(any::<u8>(), 0..3),
    )
        .prop_map(|(edits, cut, tail)| Mutation { edits, cut, tail })
}
