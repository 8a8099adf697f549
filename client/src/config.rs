//! The sync configuration file (`pulpdist sync --config FILE`): the same settings as the
//! flags, one `key = value` per line, `#` comments. Flags given on the command line win.
//! Pure: parsing only.
//!
//! ```text
//! store = https://mirror.example.org/pulpdist
//! tree = debian
//! dest = /srv/mirror/debian
//! trust = /etc/pulpdist/upstream.key.pub
//! trust = /etc/pulpdist/upstream-next.key.pub   # several: key rotation
//! cert = /etc/pulpdist/site.pem
//! key = /etc/pulpdist/site.key
//! ca = /etc/pulpdist/ca.pem
//! connections = 8
//! rsync-fallback = rsync://mirror.example.org/debian
//! ```

use std::path::PathBuf;

/// The largest configuration file accepted.
pub const MAX_CONFIG_SIZE: usize = 64 * 1024;

/// Settings read from a configuration file; `None` or empty where the file is silent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncConfig {
    /// `store`: a directory or URL.
    pub store: Option<String>,
    /// `tree`.
    pub tree: Option<String>,
    /// `dest`: the mirror directory.
    pub dest: Option<PathBuf>,
    /// `state`: the client state directory.
    pub state: Option<PathBuf>,
    /// `trust` (repeatable): trusted public key files.
    pub trust: Vec<PathBuf>,
    /// `cert`: client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `key`: its private key (PEM).
    pub key: Option<PathBuf>,
    /// `ca`: CA certificates (PEM) for https.
    pub ca: Option<PathBuf>,
    /// `connections`.
    pub connections: Option<usize>,
    /// `retries`.
    pub retries: Option<u32>,
    /// `timeout` in seconds.
    pub timeout: Option<u64>,
    /// `multi-range`: true or false.
    pub multi_range: Option<bool>,
    /// `metadata` (repeatable): more repository metadata patterns.
    pub metadata: Vec<String>,
    /// `s3-endpoint`.
    pub s3_endpoint: Option<String>,
    /// `s3-region`.
    pub s3_region: Option<String>,
    /// `rsync-fallback`: an rsync:// URL of the same tree.
    pub rsync_fallback: Option<String>,
    /// `trees`: a tree definitions file.
    pub trees: Option<PathBuf>,
}

/// A malformed configuration file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ConfigError {
    /// 1-based line number (0: the whole file).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl SyncConfig {
    /// Parses the text of a configuration file.
    pub fn parse(text: &str) -> Result<SyncConfig, ConfigError> {
        if text.len() > MAX_CONFIG_SIZE {
            return Err(ConfigError {
                line: 0,
                reason: format!("larger than {MAX_CONFIG_SIZE} bytes"),
            });
        }
        let mut c = SyncConfig::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |reason: String| ConfigError { line, reason };
            // A '#' starts a comment only at the start or after whitespace (URLs keep theirs).
            let content = match raw.find(" #").or(raw.find("\t#")) {
                Some(p) => &raw[..p],
                None => raw,
            };
            let content = content.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (k, v) = content
                .split_once('=')
                .ok_or_else(|| err(format!("'{content}' is not 'key = value'")))?;
            let (k, v) = (k.trim(), v.trim());
            if v.is_empty() {
                return Err(err(format!("'{k}' has no value")));
            }
            if v.chars().any(char::is_control) {
                return Err(err(format!("'{k}' has a control character")));
            }
            let once = |slot: bool| {
                if slot {
                    Err(err(format!("'{k}' is given twice")))
                } else {
                    Ok(())
                }
            };
            let num = |what: &str| {
                v.parse::<u64>()
                    .map_err(|_| err(format!("'{k}' must be a {what}, not '{v}'")))
            };
            match k {
                "store" => {
                    once(c.store.is_some())?;
                    c.store = Some(v.into());
                }
                "tree" => {
                    once(c.tree.is_some())?;
                    pulpdist_format::validate_tree_name(v)
                        .map_err(|e| err(format!("tree: {e}")))?;
                    c.tree = Some(v.into());
                }
                "dest" => {
                    once(c.dest.is_some())?;
                    c.dest = Some(v.into());
                }
                "state" => {
                    once(c.state.is_some())?;
                    c.state = Some(v.into());
                }
                "trust" => c.trust.push(v.into()),
                "cert" => {
                    once(c.cert.is_some())?;
                    c.cert = Some(v.into());
                }
                "key" => {
                    once(c.key.is_some())?;
                    c.key = Some(v.into());
                }
                "ca" => {
                    once(c.ca.is_some())?;
                    c.ca = Some(v.into());
                }
                "connections" => {
                    once(c.connections.is_some())?;
                    let n = num("number from 1 to 256")?;
                    if !(1..=256).contains(&n) {
                        return Err(err(format!("'connections' must be 1 to 256, not {n}")));
                    }
                    c.connections = Some(n as usize);
                }
                "retries" => {
                    once(c.retries.is_some())?;
                    let n = num("number from 0 to 100")?;
                    if n > 100 {
                        return Err(err(format!("'retries' must be 0 to 100, not {n}")));
                    }
                    c.retries = Some(n as u32);
                }
                "timeout" => {
                    once(c.timeout.is_some())?;
                    let n = num("number of seconds")?;
                    if !(1..=86_400).contains(&n) {
                        return Err(err(format!("'timeout' must be 1 to 86400 s, not {n}")));
                    }
                    c.timeout = Some(n);
                }
                "multi-range" => {
                    once(c.multi_range.is_some())?;
                    c.multi_range = Some(match v {
                        "true" | "yes" | "on" => true,
                        "false" | "no" | "off" => false,
                        _ => {
                            return Err(err(format!(
                                "'multi-range' must be true or false, not '{v}'"
                            )))
                        }
                    });
                }
                "metadata" => c.metadata.push(v.into()),
                "s3-endpoint" => {
                    once(c.s3_endpoint.is_some())?;
                    c.s3_endpoint = Some(v.into());
                }
                "rsync-fallback" => {
                    once(c.rsync_fallback.is_some())?;
                    if !v.starts_with("rsync://") {
                        return Err(err(format!(
                            "'rsync-fallback' must be an rsync:// URL, not '{v}'"
                        )));
                    }
                    c.rsync_fallback = Some(v.into());
                }
                "trees" => {
                    once(c.trees.is_some())?;
                    c.trees = Some(v.into());
                }
                "s3-region" => {
                    once(c.s3_region.is_some())?;
                    c.s3_region = Some(v.into());
                }
                _ => return Err(err(format!("unknown setting '{k}'"))),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_comments() {
        let c = SyncConfig::parse(
            "# a site\nstore = https://m.example.org/p#frag\ntree = debian\n\
             dest = /srv/d # the mirror\ntrust = a.pub\ntrust = b.pub\nconnections = 4\n\
             multi-range = yes\nmetadata = *.xml\n",
        )
        .expect("parses");
        assert_eq!(c.store.as_deref(), Some("https://m.example.org/p#frag"));
        assert_eq!(c.dest, Some(PathBuf::from("/srv/d")));
        assert_eq!(c.trust.len(), 2);
        assert_eq!(c.connections, Some(4));
        assert_eq!(c.multi_range, Some(true));
        assert_eq!(SyncConfig::parse("").expect("empty"), SyncConfig::default());
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("tree = a\ntree = b\n", 2),
            ("bogus = 1", 1),
            ("store", 1),
            ("store =", 1),
            ("\nconnections = 0", 2),
            ("connections = many", 1),
            ("tree = ../x", 1),
            ("multi-range = maybe", 1),
            ("timeout = 0", 1),
            ("rsync-fallback = http://x", 1),
        ] {
            let e = SyncConfig::parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
        }
    }
}
