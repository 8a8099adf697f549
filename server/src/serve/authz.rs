//! The authorization file of `serve`: which certificate identities may read which trees.
//! Pure: parsing and lookup only.
//!
//! ```text
//! # <identity> <tree> [<tree> ...]
//! cn:site-berlin                 debian ubuntu
//! dns:mirror.example.org         fedora
//! uri:spiffe://pulpdist/tokyo    *
//! any                            public
//! ```
//!
//! An identity is the subject common name (`cn:`), a DNS name (`dns:`) or URI (`uri:`) from
//! the certificate's subject alternative names, or `any` (every certificate the client CA
//! verified). A tree is a tree name or `*` (every tree). Rules add up: a certificate may
//! read the union of the trees of every rule naming one of its identities.

use std::collections::BTreeSet;

/// The largest authorization file accepted.
pub const MAX_AUTHZ_SIZE: usize = 1 << 20;

/// One identity a certificate carries (or a rule names).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// Subject common name.
    Cn(String),
    /// DNS subject alternative name.
    Dns(String),
    /// URI subject alternative name.
    Uri(String),
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Cn(v) => write!(f, "cn:{v}"),
            Identity::Dns(v) => write!(f, "dns:{v}"),
            Identity::Uri(v) => write!(f, "uri:{v}"),
        }
    }
}

/// Trees a client may read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Every tree.
    pub all: bool,
    /// These trees.
    pub trees: BTreeSet<String>,
}

impl Grant {
    /// Whether `tree` is granted.
    pub fn allows(&self, tree: &str) -> bool {
        self.all || self.trees.contains(tree)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    Any,
    Is(Identity),
}

/// A parsed authorization file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authz {
    rules: Vec<(Who, Grant)>,
}

/// A malformed authorization file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct AuthzError {
    /// 1-based line number (0: the whole file).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl Authz {
    /// Parses the text of an authorization file.
    pub fn parse(text: &str) -> Result<Authz, AuthzError> {
        if text.len() > MAX_AUTHZ_SIZE {
            return Err(AuthzError {
                line: 0,
                reason: format!("larger than {MAX_AUTHZ_SIZE} bytes"),
            });
        }
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| AuthzError { line, reason };
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let who = match words.next() {
                Some("any") => Who::Any,
                Some(w) => {
                    let (kind, value) = w.split_once(':').ok_or_else(|| {
                        err(format!("identity '{w}' is not cn:, dns:, uri: or any"))
                    })?;
                    if value.is_empty() || value.chars().any(|c| c.is_control()) {
                        return Err(err(format!("identity '{w}' has no usable value")));
                    }
                    Who::Is(match kind {
                        "cn" => Identity::Cn(value.to_string()),
                        "dns" => Identity::Dns(value.to_ascii_lowercase()),
                        "uri" => Identity::Uri(value.to_string()),
                        _ => {
                            return Err(err(format!(
                                "identity '{w}' is not cn:, dns:, uri: or any"
                            )))
                        }
                    })
                }
                None => continue,
            };
            let mut grant = Grant::default();
            for t in words {
                if t == "*" {
                    grant.all = true;
                } else {
                    pulpdist_format::validate_tree_name(t)
                        .map_err(|e| err(format!("tree '{t}': {e}")))?;
                    grant.trees.insert(t.to_string());
                }
            }
            if !grant.all && grant.trees.is_empty() {
                return Err(err("a rule names no tree".into()));
            }
            rules.push((who, grant));
        }
        Ok(Authz { rules })
    }

    /// The trees a verified certificate with these identities may read.
    pub fn grant(&self, ids: &[Identity]) -> Grant {
        let mut g = Grant::default();
        for (who, grant) in &self.rules {
            let applies = match who {
                Who::Any => true,
                Who::Is(Identity::Dns(d)) => ids
                    .iter()
                    .any(|i| matches!(i, Identity::Dns(x) if x.eq_ignore_ascii_case(d))),
                Who::Is(id) => ids.contains(id),
            };
            if applies {
                g.all |= grant.all;
                g.trees.extend(grant.trees.iter().cloned());
            }
        }
        g
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (nobody may read anything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_add_up() {
        let a = Authz::parse(
            "# sites\ncn:berlin debian ubuntu\ndns:Mirror.Example.org fedora # comment\n\
             uri:spiffe://p/tokyo *\nany public\n",
        )
        .expect("parses");
        assert_eq!(a.len(), 4);
        let g = a.grant(&[Identity::Cn("berlin".into())]);
        assert!(g.allows("debian") && g.allows("ubuntu") && g.allows("public"));
        assert!(!g.allows("fedora"));
        let g = a.grant(&[
            Identity::Cn("x".into()),
            Identity::Dns("mirror.example.ORG".into()),
        ]);
        assert!(g.allows("fedora") && !g.allows("debian"));
        assert!(a
            .grant(&[Identity::Uri("spiffe://p/tokyo".into())])
            .allows("anything"));
        // A CN is not a DNS name.
        assert!(!a.grant(&[Identity::Dns("berlin".into())]).allows("debian"));
        assert!(Authz::parse("").expect("empty").grant(&[]).trees.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("cn:a debian\nbogus debian\n", 2),
            ("ip:1.2.3.4 debian", 1),
            ("cn: debian", 1),
            ("cn:a", 1),
            ("\n\ncn:a ../etc", 3),
            ("cn:a .hidden", 1),
        ] {
            let e = Authz::parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
        }
    }
}
