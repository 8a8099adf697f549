//! PulpDist's configuration files, in one grammar: TOML read through serde with unknown
//! keys refused, so that a new setting is one field of a struct. Used for `sync --config`,
//! tree definitions (`--trees`, [`trees`]) and `serve`'s authorization file.
//!
//! [`parse`] reads any such file into its settings struct; an error names the line and
//! the key, and a file in the `key = value` format of PulpDist 0.1 gets the TOML to write
//! instead. [`overlay`] lets command-line flags win over a file's settings: both are the
//! same struct, merged key by key.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod trees;

pub use trees::{parse_trees, TreeDef, TreesError};

/// The largest configuration file accepted.
pub const MAX_CONFIG_SIZE: usize = 1 << 20;

/// A configuration file that could not be read as its settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}{reason}{}", line.map(|l| format!("line {l}: ")).unwrap_or_default(), hint.as_deref().map(|h| format!("\n{h}")).unwrap_or_default())]
pub struct ConfigError {
    /// 1-based line of the error, when it is at one.
    pub line: Option<usize>,
    /// What is wrong (for an unknown or wrongly typed key, the key).
    pub reason: String,
    /// What to write instead, for a file in an older format.
    pub hint: Option<String>,
}

/// Reads `text` as the settings `T`: TOML, unknown keys refused.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    if text.len() > MAX_CONFIG_SIZE {
        return Err(ConfigError {
            line: None,
            reason: format!("larger than {MAX_CONFIG_SIZE} bytes"),
            hint: None,
        });
    }
    toml::from_str(text).map_err(|e| ConfigError {
        line: e.span().map(|s| line_of(text, s.start)),
        reason: e.message().trim_end().to_string(),
        hint: legacy_hint(text),
    })
}

/// `flags` over `file`: every setting `flags` gives (a `None`, an empty list and a `false`
/// give nothing) replaces the file's, table by table.
pub fn overlay<T: Serialize + DeserializeOwned>(file: &T, flags: &T) -> Result<T, ConfigError> {
    let table = |v: &T| {
        toml::Table::try_from(v).map_err(|e| ConfigError {
            line: None,
            reason: format!("settings do not serialize: {e}"),
            hint: None,
        })
    };
    let mut merged = table(file)?;
    merge(&mut merged, table(flags)?);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError {
            line: None,
            reason: e.message().to_string(),
            hint: None,
        })
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        let empty = match &v {
            toml::Value::Boolean(b) => !b,
            toml::Value::Array(a) => a.is_empty(),
            _ => false,
        };
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) if !empty => _ = into.insert(k, v),
            _ => {}
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// For a file in the old `key = value` format (bare values, repeated keys), the same
/// settings in TOML.
fn legacy_hint(text: &str) -> Option<String> {
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for raw in text.lines() {
        let content = match raw.find(" #").or(raw.find("\t#")) {
            Some(p) => &raw[..p],
            None => raw,
        };
        let content = content.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let (k, v) = content.split_once('=')?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some((_, vals)) => vals.push(v.to_string()),
            None => keys.push((k.to_string(), vec![v.to_string()])),
        }
    }
    // Only a file that is not TOML as it stands: some value is bare or a key repeats.
    let bare = |v: &str| toml::from_str::<toml::Table>(&format!("x = {v}")).is_err();
    if !keys
        .iter()
        .any(|(_, v)| v.len() > 1 || v.iter().any(|s| bare(s)))
    {
        return None;
    }
    let value = |v: &str| match bare(v) {
        true => toml::Value::String(v.to_string()).to_string(),
        false => v.to_string(),
    };
    let mut out = String::from("this looks like the old 'key = value' format; in TOML it reads:\n");
    for (k, vals) in keys {
        let list = ["trust", "metadata", "filter"].contains(&k.as_str());
        let vals: Vec<String> = vals.iter().map(|v| value(v)).collect();
        let rhs = match (list, vals.len()) {
            (false, 1) => vals[0].clone(),
            _ => format!("[{}]", vals.join(", ")),
        };
        out.push_str(&format!("{k} = {rhs}\n"));
    }
    Some(out.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Settings {
        #[serde(skip_serializing_if = "Option::is_none")]
        store: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        trust: Vec<String>,
        #[serde(default)]
        multi_range: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        connections: Option<u32>,
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = parse::<Settings>("store = \"x\"\n\nbogus = 1\n").expect_err("unknown key");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.hint.is_none());
        let e = parse::<Settings>("connections = \"many\"\n").expect_err("a string");
        assert_eq!(e.line, Some(1), "{e}");
        let too_big = "#".repeat(MAX_CONFIG_SIZE + 1);
        assert!(parse::<Settings>(&too_big).is_err());
    }

    #[test]
    fn the_old_format_gets_the_toml_to_write_instead() {
        let old = "# a site\nstore = https://m.example.org/p#frag\ntrust = a.pub # first\ntrust = b.pub\nmulti-range = true\nconnections = 4\n";
        let e = parse::<Settings>(old).expect_err("old format");
        let hint = e.hint.clone().expect("a hint");
        let fixed = &hint[hint.find('\n').expect("lines") + 1..];
        let s: Settings = parse(fixed).expect("the hint is valid");
        assert_eq!(s.store.as_deref(), Some("https://m.example.org/p#frag"));
        assert_eq!(s.trust, ["a.pub", "b.pub"]);
        assert!(s.multi_range);
        assert_eq!(s.connections, Some(4));
    }

    #[test]
    fn flags_win_key_by_key() {
        let file = Settings {
            store: Some("file".into()),
            trust: vec!["f.pub".into()],
            multi_range: true,
            connections: Some(2),
        };
        let flags = Settings {
            connections: Some(9),
            ..Settings::default()
        };
        let s = overlay(&file, &flags).expect("merged");
        assert_eq!(s.connections, Some(9));
        assert_eq!(
            (s.store.as_deref(), s.trust.len(), s.multi_range),
            (Some("file"), 1, true)
        );
        let flags = Settings {
            trust: vec!["g.pub".into()],
            ..Settings::default()
        };
        assert_eq!(overlay(&file, &flags).expect("merged").trust, ["g.pub"]);
    }
}
