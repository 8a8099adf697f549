//! Which packs a tree reaches: the packs its head lists for recent versions, and every pack
//! holding a node or chunk of its current index. A client granted the tree may read exactly
//! these (a pack shared with another tree included). Computed by walking the index from
//! the head, once per version of the tree, and cached.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pulpdist_format::{EntryKind, Head, NodeId, NodeRef, PackId};

/// A tree's reachable packs, for one version of its head.
#[derive(Debug)]
struct Entry {
    head: Vec<u8>,
    packs: Arc<HashSet<PackId>>,
}

/// Reachable packs per tree, recomputed when a tree's head changes.
#[derive(Debug, Default)]
pub struct Reach {
    cache: Mutex<HashMap<String, Arc<Entry>>>,
}

impl Reach {
    /// The packs `tree` reaches in the store at `root`, or `None` if it has no readable head
    /// (or its index cannot be read: then nothing of it is served).
    ///
    /// With `trusted`, the head must carry a valid signature by one of those keys and name
    /// `tree`, or nothing of the tree is reachable: someone who can write the store cannot
    /// then widen what a site reads by planting a head.
    pub fn packs(
        &self,
        root: &Path,
        tree: &str,
        trusted: Option<&pulpdist_format::TrustedKeys>,
    ) -> Option<Arc<HashSet<PackId>>> {
        let head = super::files::read_head(root, &format!("heads/{tree}")).ok()?;
        if let Ok(c) = self.cache.lock() {
            if let Some(e) = c.get(tree) {
                if e.head == head {
                    return Some(e.packs.clone());
                }
            }
        }
        if let Some(keys) = trusted {
            match pulpdist_format::SignedHead::decode_and_verify(&head, keys) {
                Ok(h) if h.head().tree == tree => {}
                Ok(_) => {
                    eprintln!(
                        "pulpdist serve: heads/{tree} names another tree; nothing of it is served"
                    );
                    return None;
                }
                Err(e) => {
                    eprintln!("pulpdist serve: heads/{tree}: {e}; nothing of it is served");
                    return None;
                }
            }
        }
        let packs = match walk(root, &head) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("pulpdist serve: tree '{tree}': cannot walk its index: {e}");
                return None;
            }
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(
                tree.to_string(),
                Arc::new(Entry {
                    head,
                    packs: packs.clone(),
                }),
            );
        }
        Some(packs)
    }
}

fn walk(root: &Path, head_bytes: &[u8]) -> Result<HashSet<PackId>, String> {
    let (head, _, _) = Head::decode_unverified(head_bytes).map_err(|e| e.to_string())?;
    let mut packs: HashSet<PackId> = head
        .recent
        .iter()
        .flat_map(|v| v.packs.iter().map(|p| p.id))
        .collect();
    // Delta packs rebuild files of this tree only.
    packs.extend(head.deltas().unwrap_or_default().iter().map(|d| d.pack));
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut todo: Vec<NodeRef> = vec![head.root];
    let mut files: HashMap<PackId, File> = HashMap::new();
    while let Some(r) = todo.pop() {
        if !seen.insert(r.id) {
            continue;
        }
        packs.insert(r.loc.pack);
        let path: PathBuf = root.join(r.loc.pack.object_key());
        let f = match files.entry(r.loc.pack) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                super::files::open_regular(root, &r.loc.pack.object_key())
                    .map(|(f, _)| f)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
        };
        let range = r.loc.range();
        let mut stored = vec![0u8; (range.end - range.start) as usize];
        f.seek(SeekFrom::Start(range.start))
            .and_then(|_| f.read_exact(&mut stored))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let node = r
            .open(&stored)
            .map_err(|e| format!("node {} in {}: {e}", r.id, path.display()))?;
        for e in node.entries() {
            match &e.kind {
                EntryKind::Dir { node } => todo.push(*node),
                // A composite file's file parts are reached through those files.
                kind => packs.extend(kind.own_chunks().map(|c| c.loc.pack)),
            }
        }
    }
    Ok(packs)
}
