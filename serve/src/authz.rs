//! The authorization file of `serve`: which certificate identities may read which trees.
//! Pure: parsing and lookup only.
//!
//! ```toml
//! # <identity> = [<tree>, ...]
//! [read]
//! "cn:site-berlin" = ["debian", "ubuntu"]
//! "dns:mirror.example.org" = ["fedora"]
//! "uri:spiffe://pulpdist/tokyo" = ["*"]
//! any = ["public"]
//! ```
//!
//! An identity is the subject common name (`cn:`), a DNS name (`dns:`) or URI (`uri:`) from
//! the certificate's subject alternative names, or `any` (every certificate the client CA
//! verified). A tree is a tree name or `*` (every tree). Rules add up: a certificate may
//! read the union of the trees of every rule naming one of its identities.

use std::collections::BTreeSet;

/// The largest authorization file accepted.
pub(crate) const MAX_AUTHZ_SIZE: usize = pulpdist_config::MAX_CONFIG_SIZE;

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

/// A malformed authorization file: the line and key, and for a file in the old format
/// the TOML to write instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(transparent)]
pub struct AuthzError(pub pulpdist_config::ConfigError);

/// The file's shape: `[read]`, each identity with the trees it may read.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    read: std::collections::BTreeMap<toml::Spanned<String>, Vec<String>>,
}

impl Authz {
    /// Parses the text of an authorization file.
    pub fn parse(text: &str) -> Result<Authz, AuthzError> {
        let file: File = pulpdist_config::parse(text).map_err(|mut e| {
            e.hint = e.hint.or_else(|| legacy_hint(text));
            AuthzError(e)
        })?;
        let mut rules = Vec::new();
        let mut read: Vec<_> = file.read.into_iter().collect();
        // Checked in the file's order, so that the first error reported is the first there.
        read.sort_by_key(|(who, _)| who.span().start);
        for (who, trees) in read {
            let line = Some(pulpdist_config::line_of(text, who.span().start));
            let who = who.into_inner();
            let err = |reason: String| {
                AuthzError(pulpdist_config::ConfigError {
                    line,
                    reason: pulpdist_config::clean(&format!("[read] '{who}': {reason}")),
                    hint: None,
                })
            };
            let who = match who.as_str() {
                "any" => Who::Any,
                w => Who::Is(identity(w).map_err(err)?),
            };
            let mut grant = Grant::default();
            for t in trees {
                if t == "*" {
                    grant.all = true;
                } else {
                    pulpdist_format::validate_tree_name(&t)
                        .map_err(|e| err(format!("tree '{t}': {e}")))?;
                    grant.trees.insert(t);
                }
            }
            if !grant.all && grant.trees.is_empty() {
                return Err(err("names no tree".into()));
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

/// An identity a rule names: `cn:`, `dns:` (compared without case) or `uri:`.
fn identity(w: &str) -> Result<Identity, String> {
    let bad = || format!("identity '{w}' is not cn:, dns:, uri: or any");
    let (kind, value) = w.split_once(':').ok_or_else(bad)?;
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        return Err(format!("identity '{w}' has no usable value"));
    }
    match kind {
        "cn" => Ok(Identity::Cn(value.to_string())),
        "dns" => Ok(Identity::Dns(value.to_ascii_lowercase())),
        "uri" => Ok(Identity::Uri(value.to_string())),
        _ => Err(bad()),
    }
}

/// For a file in the old format (`<identity> <tree> [<tree> ...]` per line), the same
/// rules in TOML.
fn legacy_hint(text: &str) -> Option<String> {
    if text.len() > 64 * 1024 {
        return None;
    }
    // One key per identity (a TOML table has no duplicates), in the file's order.
    let mut rules: Vec<(&str, Vec<&str>)> = Vec::new();
    for raw in text.lines() {
        let content = raw.split('#').next().unwrap_or("").trim();
        let mut words = content.split_whitespace();
        let Some(who) = words.next() else { continue };
        let trees: Vec<&str> = words.collect();
        if trees.is_empty() || content.contains('=') {
            return None;
        }
        match rules.iter_mut().find(|(w, _)| *w == who) {
            Some((_, t)) => t.extend(trees),
            None => rules.push((who, trees)),
        }
    }
    if rules.is_empty() {
        return None;
    }
    let quote = |v: &str| toml::Value::String(v.to_string()).to_string();
    let mut out = String::from(
        "this looks like the old '<identity> <tree>...' format; in TOML it reads:\n[read]\n",
    );
    for (who, trees) in rules {
        let trees: Vec<String> = trees.iter().map(|t| quote(t)).collect();
        out.push_str(&format!("{} = [{}]\n", quote(who), trees.join(", ")));
    }
    Some(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_add_up() {
        let a = Authz::parse(
            "# sites\n[read]\n\"cn:berlin\" = [\"debian\", \"ubuntu\"]\n\
             \"dns:Mirror.Example.org\" = [\"fedora\"] # comment\n\
             \"uri:spiffe://p/tokyo\" = [\"*\"]\nany = [\"public\"]\n",
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
            ("[read]\n\"cn:a\" = [\"debian\"]\nbogus = [\"debian\"]\n", 3),
            ("[read]\n\"ip:1.2.3.4\" = [\"debian\"]", 2),
            ("[read]\n\"cn:\" = [\"debian\"]", 2),
            ("[read]\n\"cn:a\" = []", 2),
            ("[read]\n\n\"cn:a\" = [\"../etc\"]", 3),
            ("[read]\n\"cn:a\" = [\".hidden\"]", 2),
            ("[grants]\n", 1),
            // Not the line of a key it starts: cn:ab is fine, cn:a is not.
            ("[read]\n\"cn:ab\" = [\"debian\"]\n\"cn:a\" = [\"../x\"]", 3),
            // The first error in the file, not in sorted order.
            ("[read]\n\"uri:x\" = [\"../a\"]\nany = [\"../b\"]", 2),
        ] {
            let e = Authz::parse(text).expect_err(text);
            assert_eq!(e.0.line, Some(line), "{text}: {e}");
        }
    }

    #[test]
    fn an_error_quoting_the_file_cannot_forge_output() {
        let e = Authz::parse("[read]\n\"ip:\\u001b[2J\\nforged\" = [\"a\"]\n").expect_err("bad");
        let text = e.to_string();
        assert!(!text.contains('\u{1b}') && !text.contains('\n'), "{text:?}");
    }

    #[test]
    fn the_old_format_gets_the_toml_to_write_instead() {
        let old = "# sites\ncn:berlin debian ubuntu\nany public # all\ncn:berlin fedora\n";
        let e = Authz::parse(old).expect_err("old format");
        let hint = e.0.hint.clone().expect("a hint");
        let fixed = &hint[hint.find('\n').expect("lines") + 1..];
        let a = Authz::parse(fixed).expect("the hint is valid");
        assert_eq!(a.len(), 2);
        let berlin = a.grant(&[Identity::Cn("berlin".into())]);
        assert!(berlin.allows("ubuntu") && berlin.allows("fedora"));
    }
}
