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
        reason: clean(e.message().trim_end()),
        hint: legacy_hint(text),
    })
}

/// `text` safe to print in a message: control characters and the invisible ones that
/// change how a line reads (zero-width, bidirectional overrides) escaped, so that a file
/// cannot forge terminal output or log lines through an error that quotes it.
pub fn clean(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    text.chars()
        .map(|c| match hidden(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// `flags` over `file`: every setting `flags` gives (a `None` or an empty list gives
/// nothing; a `Some(false)` is given) replaces the file's, table by table.
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

/// Where `offset` (a byte offset into `text`) is: its 1-based line.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        let empty = matches!(&v, toml::Value::Array(a) if a.is_empty());
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) if !empty => _ = into.insert(k, v),
            _ => {}
        }
    }
}

/// The keys of `pulpdist sync --config` files before they were TOML (PulpDist 0.1).
const OLD_SYNC_KEYS: &[&str] = &[
    "store",
    "tree",
    "dest",
    "state",
    "trust",
    "cert",
    "key",
    "ca",
    "connections",
    "retries",
    "timeout",
    "multi-range",
    "metadata",
    "s3-endpoint",
    "s3-region",
    "rsync-fallback",
    "trees",
];

/// For a sync configuration file in the old `key = value` format (bare values, repeated
/// keys; only that format's keys, so that another file given by mistake, an environment
/// file with secrets say, is not repeated back), the same settings in TOML.
fn legacy_hint(text: &str) -> Option<String> {
    if text.len() > 64 * 1024 {
        return None;
    }
    let mut keys: Vec<(&str, Vec<&str>)> = Vec::new();
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
        let k = *OLD_SYNC_KEYS.iter().find(|o| **o == k)?;
        match keys.iter_mut().find(|(key, _)| *key == k) {
            Some((_, vals)) => vals.push(v),
            None => keys.push((k, vec![v])),
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
    let value = |k: &str, v: &str| match (k, v) {
        ("multi-range", "yes" | "on" | "true") => "true".to_string(),
        ("multi-range", "no" | "off" | "false") => "false".to_string(),
        ("connections" | "retries" | "timeout", n) if n.parse::<u64>().is_ok() => n.to_string(),
        _ => toml::Value::String(v.to_string()).to_string(),
    };
    let mut top = String::new();
    let mut s3 = String::new();
    for (k, vals) in keys {
        let vals: Vec<String> = vals.iter().map(|v| value(k, v)).collect();
        let rhs = match (matches!(k, "trust" | "metadata"), vals.len()) {
            (false, 1) => vals[0].clone(),
            _ => format!("[{}]", vals.join(", ")),
        };
        match k.strip_prefix("s3-") {
            Some(sub) => s3.push_str(&format!("{sub} = {rhs}\n")),
            None => top.push_str(&format!("{k} = {rhs}\n")),
        }
    }
    if !s3.is_empty() {
        top.push_str(&format!("[s3]\n{s3}"));
    }
    // Keys are the old format's, values numbers, booleans or TOML strings (control
    // characters escaped): nothing here needs cleaning.
    Some(format!(
        "this looks like the old 'key = value' format; in TOML it reads:\n{}",
        top.trim_end()
    ))
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
        multi_range: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        connections: Option<u32>,
        #[serde(default)]
        s3: S3,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct S3 {
        endpoint: Option<String>,
        region: Option<String>,
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
        let old = "# a site\nstore = https://m.example.org/p#frag\ntrust = a.pub # first\ntrust = b.pub\nmulti-range = yes\nconnections = 4\ns3-region = eu-1\n";
        let e = parse::<Settings>(old).expect_err("old format");
        let hint = e.hint.clone().expect("a hint");
        let fixed = &hint[hint.find('\n').expect("lines") + 1..];
        let s: Settings = parse(fixed).expect("the hint is valid");
        assert_eq!(s.store.as_deref(), Some("https://m.example.org/p#frag"));
        assert_eq!(s.trust, ["a.pub", "b.pub"]);
        assert_eq!(s.multi_range, Some(true));
        assert_eq!(s.connections, Some(4));
        assert_eq!(s.s3.region.as_deref(), Some("eu-1"));
        // Not a sync configuration (an environment file given by mistake): nothing of it
        // is repeated back.
        let env = "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI\nstore = x\n";
        let e = parse::<Settings>(env).expect_err("not TOML");
        assert!(e.hint.is_none() && !e.to_string().contains("wJalr"), "{e}");
    }

    #[test]
    fn what_a_message_quotes_from_a_file_cannot_forge_output() {
        let e = parse::<Settings>("\"bo\\u001b[2Jgus\" = 1\n").expect_err("unknown key");
        assert!(!e.to_string().contains('\u{1b}'), "{e:?}");
        assert_eq!(clean("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
    }

    #[test]
    fn flags_win_key_by_key() {
        let file = Settings {
            store: Some("file".into()),
            trust: vec!["f.pub".into()],
            multi_range: Some(true),
            connections: Some(2),
            s3: S3 {
                endpoint: Some("http://file".into()),
                region: Some("file-1".into()),
            },
        };
        let flags = Settings {
            connections: Some(9),
            ..Settings::default()
        };
        let s = overlay(&file, &flags).expect("merged");
        assert_eq!(s.connections, Some(9));
        assert_eq!(s.store.as_deref(), Some("file"));
        assert_eq!((s.trust.len(), s.multi_range), (1, Some(true)));
        assert_eq!(s.s3, file.s3, "a table the flags leave alone is the file's");
        let flags = Settings {
            trust: vec!["g.pub".into()],
            ..Settings::default()
        };
        assert_eq!(overlay(&file, &flags).expect("merged").trust, ["g.pub"]);
        // A flag can turn a setting off, and one key of a table wins alone.
        let flags = Settings {
            multi_range: Some(false),
            s3: S3 {
                region: Some("flag-1".into()),
                ..S3::default()
            },
            ..Settings::default()
        };
        let s = overlay(&file, &flags).expect("merged");
        assert_eq!(s.multi_range, Some(false));
        assert_eq!(s.s3.endpoint.as_deref(), Some("http://file"));
        assert_eq!(s.s3.region.as_deref(), Some("flag-1"));
    }
}
