//! Tree definitions: a TOML file that names trees and says, in rsync's filter language,
//! what each carries. One file may define many trees.
//!
//! ```toml
//! [trees.debian]
//! source = "/srv/mirror/debian"             # or "rsync://host/module/path"
//! subtrees = ["dists/bookworm", "pool/main"] # only these (and their parents); all if absent
//! filter = ["- *.iso", "- /dists/*/main/debian-installer/"]
//! rsync-fallback = "rsync://mirror.example.org/debian"
//! ```
//!
//! The tree's filter is its `filter` rules in order, then, if `subtrees` is given, an
//! include of each subtree (with its parent directories) and a final `- *`.

use std::collections::BTreeMap;

use pulpdist_format::filter::{Action, Filter, Rule};

/// One tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeDef {
    /// Tree name.
    pub name: String,
    /// A local directory or an `rsync://` URL.
    pub source: String,
    /// The rules that select what the tree carries: its `filter` rules, then the rules
    /// `subtrees` stands for.
    pub filter: Filter,
    /// How many of `filter`'s rules are the file's own (the subtree rules follow them).
    pub own_rules: usize,
    /// Where a client fetches files the store cannot serve (`rsync://`).
    pub rsync_fallback: Option<String>,
}

/// A malformed tree definitions file.
#[derive(Debug, thiserror::Error)]
pub enum TreesError {
    /// Not TOML, or not the expected shape.
    #[error(transparent)]
    File(#[from] crate::ConfigError),
    /// A tree is defined wrongly.
    #[error("tree '{tree}': {reason}")]
    Tree {
        /// The tree.
        tree: String,
        /// Why it is refused.
        reason: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    trees: BTreeMap<String, Raw>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    source: String,
    #[serde(default)]
    subtrees: Option<Vec<String>>,
    #[serde(default)]
    filter: Vec<String>,
    #[serde(default)]
    rsync_fallback: Option<String>,
}

/// Parses a tree definitions file.
pub fn parse_trees(text: &str) -> Result<Vec<TreeDef>, TreesError> {
    let file: File = crate::parse(text)?;
    let mut out = Vec::new();
    for (name, raw) in file.trees {
        let err = |reason: String| TreesError::Tree {
            tree: crate::clean(&name),
            reason: crate::clean(&reason),
        };
        pulpdist_format::validate_tree_name(&name).map_err(|e| err(e.to_string()))?;
        if raw.source.is_empty() {
            return Err(err("source is empty".into()));
        }
        let mut filter = Filter::new();
        for r in &raw.filter {
            filter.push(Rule::parse(r).map_err(|e| err(e.to_string()))?);
        }
        let own_rules = filter.rules().len();
        if let Some(subtrees) = &raw.subtrees {
            if subtrees.is_empty() {
                return Err(err(
                    "subtrees is empty (leave it out to carry everything)".into()
                ));
            }
            let mut parents = std::collections::BTreeSet::new();
            for st in subtrees {
                let clean = st.trim_matches('/');
                if clean.is_empty()
                    || clean.split('/').any(|c| {
                        c.is_empty() || c == "." || c == ".." || c.contains(['*', '?', '['])
                    })
                {
                    return Err(err(format!(
                        "subtree '{st}' must be a plain relative path (no '..', no wildcards)"
                    )));
                }
                let comps: Vec<&str> = clean.split('/').collect();
                for i in 1..comps.len() {
                    let parent = format!("/{}/", comps[..i].join("/"));
                    if parents.insert(parent.clone()) {
                        filter.push(
                            Rule::new(Action::Include, &parent).map_err(|e| err(e.to_string()))?,
                        );
                    }
                }
                filter.push(
                    Rule::new(Action::Include, &format!("/{clean}/***"))
                        .map_err(|e| err(e.to_string()))?,
                );
            }
            filter.push(Rule::new(Action::Exclude, "*").map_err(|e| err(e.to_string()))?);
        }
        if let Some(f) = &raw.rsync_fallback {
            if !f.starts_with("rsync://") {
                return Err(err(format!("rsync-fallback '{f}' is not an rsync:// URL")));
            }
        }
        out.push(TreeDef {
            name,
            source: raw.source,
            filter,
            own_rules,
            rsync_fallback: raw.rsync_fallback,
        });
    }
    Ok(out)
}

impl TreeDef {
    /// The tree's filter with `extra` rules (from the command line) after its own rules and
    /// before the rules `subtrees` stands for (which end in `- *`).
    pub fn filter_with(&self, extra: &Filter) -> Filter {
        let mut f = Filter::new();
        let rules = self.filter.rules();
        for r in &rules[..self.own_rules] {
            f.push(r.clone());
        }
        for r in extra.rules() {
            f.push(r.clone());
        }
        for r in &rules[self.own_rules..] {
            f.push(r.clone());
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtrees_become_rules() {
        let t = parse_trees(
            "[trees.debian]\nsource = \"/srv/d\"\nsubtrees = [\"dists/bookworm\", \"pool/main\"]\n\
             filter = [\"- *.iso\"]\nrsync-fallback = \"rsync://m/debian\"\n\
             [trees.all]\nsource = \"rsync://h/m/p\"\n",
        )
        .expect("parses");
        assert_eq!(t.len(), 2);
        let d = t.iter().find(|t| t.name == "debian").expect("debian");
        assert_eq!(
            d.filter.to_string(),
            "- *.iso\n+ /dists/\n+ /dists/bookworm/***\n+ /pool/\n+ /pool/main/***\n- *\n"
        );
        assert!(d.filter.includes("pool/main/a/apt.deb", false));
        assert!(!d.filter.includes("pool/contrib", true));
        assert!(!d.filter.includes("README", false));
        assert!(!d.filter.includes("pool/main/x.iso", false));
        assert!(t.iter().any(|t| t.name == "all" && t.filter.is_empty()));
        // Command-line rules go before the subtree rules, so they still count.
        let extra = Filter::parse_lines("- *.dsc\n").expect("rule");
        let f = d.filter_with(&extra);
        assert_eq!(f.rules()[1].to_string(), "- *.dsc");
        assert!(!f.includes("pool/main/a/apt.dsc", false));
    }

    #[test]
    fn errors_name_the_tree_and_rule() {
        for (text, needle) in [
            (
                "[trees.a]\nsource = \"/x\"\nfilter = [\"P /secret\"]\n",
                "'P /secret'",
            ),
            (
                "[trees.a]\nsource = \"/x\"\nsubtrees = [\"../etc\"]\n",
                "../etc",
            ),
            ("[trees.a]\nsource = \"/x\"\nbogus = 1\n", "bogus"),
            ("[trees.\"../x\"]\nsource = \"/x\"\n", "tree name"),
            (
                "[trees.a]\nsource = \"/x\"\nrsync-fallback = \"http://x\"\n",
                "rsync://",
            ),
            ("[trees.a]\n", "source"),
        ] {
            let e = parse_trees(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
