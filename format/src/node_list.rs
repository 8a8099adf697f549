//! The list of a node batch in columns (FORMAT.md 5.6, kind 4): which directory each node
//! is, said in the fewest bytes the receiver can resolve.
//!
//! A kind-2 list spells every path and gives two sizes per item: 46 kB of a 432 kB delta
//! for the 5,096 directories of a kernel source release. Here an item is mostly "the
//! k-th subdirectory of the old directory of an earlier item", which the receiver looks up
//! in its own copy of the old tree; a new directory is named; the sizes come from walking
//! the columns (the nodes) and from the old nodes themselves (the references).

use crate::delta::{join_path, take_path, MAX_BATCH, MAX_BATCH_ITEMS, MAX_BATCH_NAMES};
use crate::error::FormatError;
use crate::name::Name;
use crate::wire::{Reader, Writer};

const WHAT: &str = "node batch list";

/// The longest path an item may resolve to, as a kind-2 list could spell it.
const MAX_ITEM_PATH: usize = u16::MAX as usize;

/// Where an item of a [`NodeList`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePath {
    /// The whole path (empty: the root). Form `0`.
    Full(Vec<Name>),
    /// A subdirectory of the old directory of the item `back` places earlier in the
    /// list, which has a reference: of its subdirectory entries (in name order), the one
    /// `skip` entries after the last one an earlier form-1 item of the same parent named
    /// (or `skip` entries from the first). Form `1`. Skips, not indices: when every
    /// subdirectory changed, every skip is 0.
    OldSubdir {
        /// How many items earlier the parent is (at least 1).
        back: u32,
        /// How many of the parent's old subdirectories to pass over.
        skip: u32,
    },
    /// A subdirectory, by name, of the item `back` places earlier. Form `2`.
    Named {
        /// How many items earlier the parent is (at least 1).
        back: u32,
        /// The subdirectory's name.
        name: Name,
    },
}

/// One directory of a [`NodeList`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeItem {
    /// Which directory.
    pub path: NodePath,
    /// Whether the old directory at the same path is its reference (`false`: none).
    pub reference: bool,
}

/// The list of a node batch in columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeList {
    /// The nodes' sizes added up: what the batch's frame decodes to (at most
    /// [`MAX_BATCH`]).
    pub nodes_size: u32,
    /// The directories, in the order of the nodes in the frame.
    pub items: Vec<NodeItem>,
}

/// The fewest bytes a list item takes (form 0 with an empty path, and its reference flag):
/// a batch whose list cannot hold its count is refused before the list is decoded.
pub const MIN_NODE_ITEM: u64 = 4;

impl NodeList {
    /// The list's bytes: `nodes_size` (u32), then per item its form (u8) and what the form
    /// takes (form 0: u16 length and the path; 1: `back` and `skip`, u32 each; 2: `back`
    /// (u32), u16 length and the name), then the reference flag (u8).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.nodes_size);
        for it in &self.items {
            match &it.path {
                NodePath::Full(path) => {
                    let p = join_path(path);
                    w.u8(0);
                    w.u16(p.len() as u16);
                    w.bytes(&p);
                }
                NodePath::OldSubdir { back, skip } => {
                    w.u8(1);
                    w.u32(*back);
                    w.u32(*skip);
                }
                NodePath::Named { back, name } => {
                    w.u8(2);
                    w.u32(*back);
                    w.u16(name.as_bytes().len() as u16);
                    w.bytes(name.as_bytes());
                }
            }
            w.u8(u8::from(it.reference));
        }
        w.buf
    }

    /// Decodes a list of exactly `count` items. Names are checked; where the items are is
    /// checked by [`NodeList::paths`].
    pub fn decode(bytes: &[u8], count: u32) -> Result<NodeList, FormatError> {
        let mut r = Reader::new(bytes, WHAT);
        let nodes_size = r.u32()?;
        if count == 0 || count > MAX_BATCH_ITEMS || u64::from(nodes_size) > MAX_BATCH {
            return Err(FormatError::invalid(
                WHAT,
                "no items, too many, or its nodes too large",
            ));
        }
        let mut items = Vec::new();
        let mut names = 0usize;
        for _ in 0..count {
            let path = match r.u8()? {
                0 => NodePath::Full(take_path(&mut r, &mut names, WHAT)?),
                1 => NodePath::OldSubdir {
                    back: r.u32()?,
                    skip: r.u32()?,
                },
                2 => {
                    let back = r.u32()?;
                    let len = r.u16()? as usize;
                    NodePath::Named {
                        back,
                        name: Name::new(r.take(len)?.to_vec())?,
                    }
                }
                f => return Err(FormatError::invalid(WHAT, format!("path form {f}"))),
            };
            let reference = match r.u8()? {
                0 => false,
                1 => true,
                f => return Err(FormatError::invalid(WHAT, format!("reference flag {f}"))),
            };
            items.push(NodeItem { path, reference });
        }
        r.finish()?;
        Ok(NodeList { nodes_size, items })
    }

    /// Each item's path, in list order. `old_subdir(path, index)` is the name of the
    /// `index`-th subdirectory entry (from 0) of the old directory at `path` (`None`: no
    /// such entry). Refuses a parent that is not an earlier item, a form-1 item whose
    /// parent has no reference, a skip past the old directory's subdirectories, a path
    /// longer than 65,535 bytes, a path named twice, more than [`MAX_BATCH_NAMES`] path
    /// components in all, and paths whose lengths add up to more than `limit` bytes: a list
    /// of a few bytes per item names paths of up to 65,535 bytes each, so a reader charges
    /// what they add up to (returned with them) as it charges the list's own bytes.
    pub fn paths(
        &self,
        limit: u64,
        mut old_subdir: impl FnMut(&[Name], u32) -> Option<Name>,
    ) -> Result<(Vec<Vec<Name>>, u64), FormatError> {
        let mut out: Vec<Vec<Name>> = Vec::with_capacity(self.items.len());
        let mut lens: Vec<usize> = Vec::with_capacity(self.items.len());
        let mut seen = std::collections::HashSet::new();
        let (mut names, mut total) = (0usize, 0u64);
        // Per parent item: the old subdirectory its last form-1 child named.
        let mut last: std::collections::HashMap<usize, u32> = std::collections::HashMap::new();
        for (i, it) in self.items.iter().enumerate() {
            let parent = |back: u32| {
                let j = i
                    .checked_sub(back as usize)
                    .filter(|_| back >= 1)
                    .ok_or_else(|| FormatError::invalid(WHAT, "a parent that is not earlier"))?;
                Ok::<usize, FormatError>(j)
            };
            let (path, len) = match &it.path {
                NodePath::Full(p) => (p.clone(), join_path(p).len()),
                NodePath::OldSubdir { back, skip } => {
                    let j = parent(*back)?;
                    if !self.items[j].reference {
                        return Err(FormatError::invalid(
                            WHAT,
                            "an old subdirectory of a directory without a reference",
                        ));
                    }
                    let index = last
                        .get(&j)
                        .map_or(Some(*skip), |l| l.checked_add(1)?.checked_add(*skip))
                        .ok_or_else(|| FormatError::invalid(WHAT, "a skip past the end"))?;
                    last.insert(j, index);
                    let name = old_subdir(&out[j], index).ok_or_else(|| {
                        FormatError::invalid(WHAT, "an old subdirectory that is not there")
                    })?;
                    child(&out[j], lens[j], name)
                }
                NodePath::Named { back, name } => {
                    let j = parent(*back)?;
                    child(&out[j], lens[j], name.clone())
                }
            };
            names += path.len();
            total += len as u64;
            if names > MAX_BATCH_NAMES || len > MAX_ITEM_PATH || total > limit {
                return Err(FormatError::invalid(
                    WHAT,
                    "too many path components or path bytes, or a path too long",
                ));
            }
            if !seen.insert(join_path(&path)) {
                return Err(FormatError::invalid(WHAT, "a path named twice"));
            }
            out.push(path);
            lens.push(len);
        }
        Ok((out, total))
    }
}

/// `parent`/`name`, and its joined length (`parent_len`: the parent's).
fn child(parent: &[Name], parent_len: usize, name: Name) -> (Vec<Name>, usize) {
    let len = match parent.is_empty() {
        true => name.as_bytes().len(),
        false => parent_len + 1 + name.as_bytes().len(),
    };
    let mut p = Vec::with_capacity(parent.len() + 1);
    p.extend_from_slice(parent);
    p.push(name);
    (p, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s.as_bytes().to_vec()).expect("name")
    }

    fn list() -> NodeList {
        NodeList {
            nodes_size: 100,
            items: vec![
                NodeItem {
                    path: NodePath::Full(vec![]),
                    reference: true,
                },
                NodeItem {
                    path: NodePath::OldSubdir { back: 1, skip: 1 },
                    reference: true,
                },
                NodeItem {
                    path: NodePath::Named {
                        back: 1,
                        name: name("new"),
                    },
                    reference: false,
                },
                NodeItem {
                    path: NodePath::Full(vec![name("x"), name("y")]),
                    reference: true,
                },
            ],
        }
    }

    /// The old tree: the root's subdirectories are `a` and `b`.
    fn old(path: &[Name], index: u32) -> Option<Name> {
        match (path.is_empty(), index) {
            (true, 0) => Some(name("a")),
            (true, 1) => Some(name("b")),
            _ => None,
        }
    }

    #[test]
    fn a_list_resolves_against_the_old_tree() {
        let l = list();
        let decoded = NodeList::decode(&l.encode(), 4).expect("decode");
        assert_eq!(decoded, l);
        let paths: Vec<Vec<u8>> = decoded
            .paths(u64::MAX, old)
            .expect("paths")
            .0
            .iter()
            .map(|p| join_path(p))
            .collect();
        assert_eq!(paths, [&b""[..], b"b", b"b/new", b"x/y"]);
    }

    #[test]
    fn skips_count_from_the_last_old_subdirectory_named_under_the_same_parent() {
        let mut l = list();
        // a (skip 0), then b (skip 0 after a); the named item's parent is b.
        l.items[1].path = NodePath::OldSubdir { back: 1, skip: 0 };
        l.items.insert(
            2,
            NodeItem {
                path: NodePath::OldSubdir { back: 2, skip: 0 },
                reference: true,
            },
        );
        let paths: Vec<Vec<u8>> = l
            .paths(u64::MAX, old)
            .expect("paths")
            .0
            .iter()
            .map(|p| join_path(p))
            .collect();
        assert_eq!(paths, [&b""[..], b"a", b"b", b"b/new", b"x/y"]);
    }

    #[test]
    fn parents_and_old_subdirectories_that_are_not_there_are_refused() {
        let refused = |f: fn(&mut NodeList)| {
            let mut l = list();
            f(&mut l);
            l.paths(u64::MAX, old).is_err()
        };
        assert!(!refused(|_| {}));
        let old_subdir = |i: usize, back: u32, skip: u32| {
            let mut l = list();
            l.items[i].path = NodePath::OldSubdir { back, skip };
            l.paths(u64::MAX, old).is_err()
        };
        // No parent earlier, or itself.
        assert!(old_subdir(1, 2, 0) && old_subdir(1, 0, 0));
        // A skip past the old root's subdirectories, at once or after b.
        assert!(old_subdir(1, 1, 2) && old_subdir(2, 2, 0) && old_subdir(2, 2, u32::MAX));
        // An old subdirectory of a directory without a reference.
        assert!(refused(|l| l.items[0].reference = false));
        assert!(old_subdir(3, 1, 0));
        // A path past 65,535 bytes, made of long names one below the other.
        let mut deep = NodeList {
            nodes_size: 0,
            items: vec![NodeItem {
                path: NodePath::Full(vec![]),
                reference: false,
            }],
        };
        for _ in 0..300 {
            deep.items.push(NodeItem {
                path: NodePath::Named {
                    back: 1,
                    name: name(&"n".repeat(255)),
                },
                reference: false,
            });
        }
        assert!(deep.paths(u64::MAX, old).is_err());
        // The same path twice; paths longer in all than the limit.
        assert!(refused(
            |l| l.items[3].path = NodePath::Full(vec![name("b")])
        ));
        let (_, total) = list().paths(u64::MAX, old).expect("paths");
        assert_eq!(total, 1 + 5 + 3);
        assert!(list().paths(total, old).is_ok() && list().paths(total - 1, old).is_err());
    }

    #[test]
    fn a_list_that_does_not_decode_to_its_count_is_refused() {
        let bytes = list().encode();
        assert!(NodeList::decode(&bytes, 3).is_err());
        assert!(NodeList::decode(&bytes, 5).is_err());
        assert!(NodeList::decode(&bytes, 0).is_err());
        assert!(NodeList::decode(&bytes[..bytes.len() - 1], 4).is_err());
        let mut flag = bytes.clone();
        let last = flag.len() - 1;
        flag[last] = 2;
        assert!(NodeList::decode(&flag, 4).is_err());
        let mut form = bytes;
        form[4] = 3;
        assert!(NodeList::decode(&form, 4).is_err());
        let mut big = list();
        big.nodes_size = u32::MAX;
        assert!(NodeList::decode(&big.encode(), 4).is_err());
    }
}
