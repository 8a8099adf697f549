//! The network file: TOML, every unknown key refused, checked as a whole (every name an
//! assignment uses defined, every schedule and key readable) before a coordinator takes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{SiteAssignment, TreeAssignment};

/// Why a network file was refused: where, and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    /// It is not TOML, or has a key or value the format does not know.
    #[error("{0}")]
    Syntax(#[from] pulpdist_config::ConfigError),
    /// A setting that reads but does not hold together (an undefined name, a bad schedule).
    #[error("{}{key}: {reason}", .line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        /// The line of the file it is on (as near as the file says: the table's, for a
        /// key it lacks), where the error came from a file's text.
        line: Option<usize>,
        /// The key, as a path (`assignment[2].trees`, `sites.berlin.identity`).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        line: None,
        key: key.into(),
        reason: reason.into(),
    }
}

/// The line of `text` (from 1) where the key `path` (`assignment[2].trees`) is, or, for a
/// key the file lacks, the nearest table on its path that it has.
fn line_of(text: &str, path: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut at = None;
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, i)) => (n, Some(i.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        let Some((k, mut v)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        at = Some(k.span().start);
        if let Some(i) = index {
            let DeValue::Array(items) = v.get_ref() else {
                break;
            };
            let Some(item) = items.get(i.checked_sub(1)?) else {
                break;
            };
            at = Some(item.span().start);
            v = item;
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    at.map(|pos| text.get(..pos).map_or(0, |t| t.matches('\n').count()) + 1)
}

/// A mirror network's desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Certificate identities (`cn:NAME`, `dns:NAME`, `uri:URI`) that may read everything
    /// and change the network.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The trees, by name.
    #[serde(default)]
    pub trees: BTreeMap<String, TreeDef>,
    /// The sites, by name.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteDef>,
    /// When the coordinator raises an event, and where it sends it.
    #[serde(default)]
    pub alerts: Alerts,
    /// Which site carries which tree.
    #[serde(default, rename = "assignment", skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<Assignment>,
}

/// When the coordinator raises an event (each is stored, shown, counted in its metrics,
/// and sent to the webhook), and when it clears it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Alerts {
    /// A site this many versions behind the newest verified version.
    pub behind_versions: u64,
    /// A site behind for this many minutes (since the first newer version was seen).
    pub behind_minutes: u64,
    /// No report from a site for this many minutes (a silent agent).
    pub silent_minutes: u64,
    /// This many failed (or refused) runs in a row.
    pub failures: u64,
    /// A site's client certificate expires within this many days.
    pub certificate_days: u64,
    /// A site's clock is off by more than this many seconds (measured on each delivery
    /// of reports). Its runs are still placed right; its TLS and its heads' expiry checks
    /// may not be.
    pub clock_seconds: u64,
    /// Where each event is sent (a JSON POST, retried), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            behind_versions: 2,
            behind_minutes: 120,
            silent_minutes: 120,
            failures: 3,
            certificate_days: 14,
            clock_seconds: 300,
            webhook: None,
        }
    }
}

/// A tree: where it is published and who signs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeDef {
    /// Its stores, in order (`https://…`, `s3://…`).
    pub stores: Vec<String>,
    /// Its trusted public keys, each a line of a `.pub` file
    /// (`pulpdist-ed25519 <hex> [comment]`).
    pub trust: Vec<String>,
}

/// A site of the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteDef {
    /// The certificate identity it is known by (`cn:berlin`).
    pub identity: String,
    /// Labels assignments can select it by (`region = "eu"`, `tier = "relay"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Who runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// Where it serves its copy of the trees to others (its relay store's URL), if it does:
    /// sites whose assignment names it as upstream sync from it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serves: Option<String>,
}

/// Trees for the sites it selects: by name, or by every label given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// Sites by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Sites with all of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The trees.
    pub trees: Vec<String>,
    /// How often each site syncs them (`15m`, `1h`): the guarantee that holds when a push
    /// is lost.
    pub schedule: String,
    /// A site that serves these trees (it has `serves`): the selected sites sync from it
    /// first, then from each tree's own stores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// When the selected sites may fetch these trees, in UTC (`"22:00-06:00"`): a sync
    /// due outside it waits for it to open; one still running when it closes stops there
    /// (reported `partial`; what it fetched is kept for the next window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The most a sync of these trees fetches a second (`"20Mbit"`, `"2.5MB"`): bytes
    /// with `B`, `kB`, `MB`, `GB`; bits with `kbit`, `Mbit`, `Gbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<String>,
}

impl Assignment {
    fn selects(&self, name: &str, site: &SiteDef) -> bool {
        self.sites.iter().any(|s| s == name)
            || (!self.labels.is_empty()
                && self
                    .labels
                    .iter()
                    .all(|(k, v)| site.labels.get(k) == Some(v)))
    }
}

/// The shortest schedule accepted.
const MIN_SCHEDULE: u64 = 10;

/// A schedule in seconds.
fn schedule_secs(text: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("'{text}': {e}"))?;
    match d.as_secs() {
        s if s < MIN_SCHEDULE => Err(format!("'{text}' is shorter than {MIN_SCHEDULE} s")),
        s => Ok(s),
    }
}

/// A window `"HH:MM-HH:MM"` (UTC) as minutes of the day `[start, end)`; it may wrap past
/// midnight, and may not be empty.
pub(crate) fn parse_window(text: &str) -> Result<[u32; 2], String> {
    let minute = |hm: &str| -> Option<u32> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && hm.trim().len() == 5).then_some(h * 60 + m)
    };
    let bad = || format!("'{text}' is not a window like \"22:00-06:00\" (UTC)");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
    match a == b {
        true => Err(format!("'{text}' is an empty window")),
        false => Ok([a, b]),
    }
}

/// A bandwidth (`"20Mbit"`, `"2.5MB"`) in bytes a second; at least 1 kB/s.
pub(crate) fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let at = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(at);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("'{text}' is not a bandwidth like \"20Mbit\" or \"2.5MB\""))?;
    let per = match unit.trim().trim_end_matches("/s") {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        u => {
            return Err(format!(
                "'{text}': unknown unit '{u}' (B, kB, MB, GB, kbit, Mbit, Gbit)"
            ))
        }
    };
    let bytes = n * per;
    match (1000.0..1e15).contains(&bytes) {
        true => Ok(bytes as u64),
        false => Err(format!("'{text}' is below 1 kB/s or absurd")),
    }
}

/// Whether two identities are the same (DNS names compare without case).
fn same_identity(a: &str, b: &str) -> bool {
    match (a.strip_prefix("dns:"), b.strip_prefix("dns:")) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    }
}

fn check_identity(key: &str, id: &str) -> Result<(), NetworkError> {
    match id.split_once(':') {
        Some(("cn" | "dns" | "uri", v)) if !v.is_empty() => Ok(()),
        _ => Err(invalid(
            key,
            format!("'{id}' is not an identity (cn:NAME, dns:NAME or uri:URI)"),
        )),
    }
}

impl Network {
    /// Reads and checks a network file.
    pub fn parse(text: &str) -> Result<Network, NetworkError> {
        let net: Network = pulpdist_config::parse(text)?;
        net.check().map_err(|e| match e {
            NetworkError::Invalid { key, reason, .. } => NetworkError::Invalid {
                line: line_of(text, &key),
                key,
                reason,
            },
            e => e,
        })?;
        Ok(net)
    }

    /// The file as TOML (what `network export` prints): parses back to the same network.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that the parts hold together.
    pub fn check(&self) -> Result<(), NetworkError> {
        if let Some(w) = &self.alerts.webhook {
            if !(w.starts_with("https://") || w.starts_with("http://")) {
                return Err(invalid(
                    "alerts.webhook",
                    format!("'{w}' is not an http(s) URL"),
                ));
            }
        }
        if self.alerts.clock_seconds < 30 {
            return Err(invalid(
                "alerts.clock_seconds",
                "at least 30 (a clock is measured to a second or two)",
            ));
        }
        let a = &self.alerts;
        if [
            a.behind_versions,
            a.behind_minutes,
            a.silent_minutes,
            a.failures,
        ]
        .contains(&0)
        {
            return Err(invalid("alerts", "every threshold must be at least 1"));
        }
        for (i, a) in self.admins.iter().enumerate() {
            check_identity(&format!("admins[{i}]"), a)?;
        }
        for (name, t) in &self.trees {
            let key = format!("trees.{name}");
            pulpdist_format::validate_tree_name(name).map_err(|e| invalid(&key, e.to_string()))?;
            if t.stores.is_empty() {
                return Err(invalid(format!("{key}.stores"), "no store"));
            }
            let keys = t.trust.join("\n");
            match pulpdist_format::TrustedKeys::from_text(&keys) {
                Ok(k) if !k.keys().is_empty() => {}
                Ok(_) => return Err(invalid(format!("{key}.trust"), "no key")),
                Err(e) => return Err(invalid(format!("{key}.trust"), e.to_string())),
            }
        }
        let mut identities = BTreeMap::new();
        for (name, s) in &self.sites {
            pulpdist_format::validate_tree_name(name).map_err(|_| {
                invalid(
                    format!("sites.{name}"),
                    "a site name is 1-128 of A-Z a-z 0-9 . _ - (not starting with . or -)",
                )
            })?;
            let key = format!("sites.{name}.identity");
            check_identity(&key, &s.identity)?;
            if self.admins.iter().any(|a| same_identity(a, &s.identity)) {
                return Err(invalid(
                    key,
                    format!(
                        "'{}' is also an admin: a site's certificate must not be an admin's",
                        s.identity
                    ),
                ));
            }
            if let Some(other) = identities.insert(s.identity.clone(), name) {
                return Err(invalid(
                    key,
                    format!("'{}' is also site {other}'s identity", s.identity),
                ));
            }
        }
        for (i, a) in self.assignments.iter().enumerate() {
            let key = |k: &str| format!("assignment[{}].{k}", i + 1);
            if a.sites.is_empty() && a.labels.is_empty() {
                return Err(invalid(
                    key("sites"),
                    "selects no site: give sites or labels",
                ));
            }
            if let Some(s) = a.sites.iter().find(|s| !self.sites.contains_key(*s)) {
                return Err(invalid(key("sites"), format!("no site '{s}'")));
            }
            if let Some(t) = a.trees.iter().find(|t| !self.trees.contains_key(*t)) {
                return Err(invalid(key("trees"), format!("no tree '{t}'")));
            }
            schedule_secs(&a.schedule).map_err(|e| invalid(key("schedule"), e))?;
            if let Some(w) = &a.window {
                parse_window(w).map_err(|e| invalid(key("window"), e))?;
            }
            if let Some(b) = &a.bandwidth {
                parse_bandwidth(b).map_err(|e| invalid(key("bandwidth"), e))?;
            }
            if let Some(up) = &a.upstream {
                match self.sites.get(up) {
                    None => return Err(invalid(key("upstream"), format!("no site '{up}'"))),
                    Some(s) if s.serves.is_none() => {
                        return Err(invalid(
                            key("upstream"),
                            format!("site '{up}' serves nothing (give it `serves`)"),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// The site whose identity is one of `identities` (a client certificate's), if any.
    pub fn site_of<'a>(&'a self, identities: &[String]) -> Option<&'a str> {
        self.sites
            .iter()
            .find(|(_, s)| identities.iter().any(|i| same_identity(i, &s.identity)))
            .map(|(n, _)| n.as_str())
    }

    /// Whether one of `identities` is an admin's.
    pub fn is_admin(&self, identities: &[String]) -> bool {
        self.admins
            .iter()
            .any(|a| identities.iter().any(|i| same_identity(i, a)))
    }

    /// What `site` carries: each tree once (the first assignment that names it decides
    /// its schedule and upstream), with the upstream's store first.
    pub fn assignment_of(&self, site: &str, revision: u64) -> Option<SiteAssignment> {
        let def = self.sites.get(site)?;
        let mut trees: BTreeMap<String, TreeAssignment> = BTreeMap::new();
        for a in self.assignments.iter().filter(|a| a.selects(site, def)) {
            let secs = schedule_secs(&a.schedule).unwrap_or(3600);
            for t in &a.trees {
                let Some(tree) = self.trees.get(t) else {
                    continue;
                };
                let upstream = a.upstream.clone().filter(|up| up.as_str() != site);
                let serves = upstream
                    .as_ref()
                    .and_then(|up| self.sites.get(up))
                    .and_then(|s| s.serves.clone());
                let stores = serves.into_iter().chain(tree.stores.clone()).collect();
                trees.entry(t.clone()).or_insert(TreeAssignment {
                    tree: t.clone(),
                    stores,
                    trust: tree.trust.clone(),
                    schedule_secs: secs,
                    trigger: 0,
                    upstream,
                    window: a.window.as_deref().and_then(|w| parse_window(w).ok()),
                    bandwidth: a.bandwidth.as_deref().and_then(|b| parse_bandwidth(b).ok()),
                });
            }
        }
        Some(SiteAssignment {
            site: site.to_string(),
            boot: 0,
            revision,
            trees: trees.into_values().collect(),
        })
    }

    /// The sites that others sync `tree` from first (upstream in an assignment of it).
    pub fn relays_of_tree(&self, tree: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .assignments
            .iter()
            .filter(|a| a.trees.iter().any(|t| t == tree))
            .filter_map(|a| a.upstream.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The sites that carry `tree`.
    pub fn sites_of_tree(&self, tree: &str) -> Vec<String> {
        self.sites
            .iter()
            .filter(|(name, def)| {
                self.assignments
                    .iter()
                    .any(|a| a.trees.iter().any(|t| t == tree) && a.selects(name, def))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "pulpdist-ed25519 e19b8eb98aaf7fd83c550027737ae9528f6bba78c3865dec8e47b30e17af8ccd k";

    fn text(extra: &str) -> String {
        format!(
            "admins = [\"cn:ops\"]\n[trees.debian]\nstores = [\"https://origin/p\"]\ntrust = [\"{KEY}\"]\n\
             [sites.berlin]\nidentity = \"cn:berlin\"\nlabels = {{ region = \"eu\" }}\nserves = \"https://berlin/relay\"\n\
             [sites.paris]\nidentity = \"cn:paris\"\nlabels = {{ region = \"eu\" }}\n{extra}"
        )
    }

    #[test]
    fn a_network_round_trips_and_each_site_gets_its_own_assignment() {
        let t = text("[[assignment]]\nsites = [\"berlin\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\n\
                      [[assignment]]\nlabels = { region = \"eu\" }\ntrees = [\"debian\"]\nschedule = \"15m\"\nupstream = \"berlin\"\n");
        let net = Network::parse(&t).expect("parses");
        assert_eq!(Network::parse(&net.to_toml()).expect("round trip"), net);
        let b = net.assignment_of("berlin", 3).expect("berlin");
        assert_eq!(b.trees.len(), 1);
        assert_eq!(
            (b.trees[0].schedule_secs, b.trees[0].stores.len()),
            (3600, 1)
        );
        let p = net.assignment_of("paris", 3).expect("paris");
        assert_eq!(
            p.trees[0].stores,
            ["https://berlin/relay", "https://origin/p"]
        );
        assert_eq!(p.trees[0].schedule_secs, 900);
        assert_eq!(net.site_of(&["cn:paris".into()]), Some("paris"));
        assert!(net.is_admin(&["dns:x".into(), "cn:ops".into()]));
        assert!(!net.is_admin(&["cn:paris".into()]));
        assert_eq!(net.sites_of_tree("debian"), ["berlin", "paris"]);
    }

    #[test]
    fn errors_name_the_line_or_the_key() {
        let e = Network::parse(&text("[[assignment]]\ntrees = [\"debian\"]\nschedule = \"1h\"\ncolour = \"red\"\nsites = [\"paris\"]\n"))
            .expect_err("unknown key");
        assert!(
            matches!(&e, NetworkError::Syntax(c) if c.line == Some(15) && c.reason.contains("colour")),
            "{e}"
        );
        let bad = [
            ("sites = [\"rome\"]\ntrees = [\"debian\"]\nschedule = \"1h\"", "assignment[1].sites", "rome"),
            ("sites = [\"paris\"]\ntrees = [\"ubuntu\"]\nschedule = \"1h\"", "assignment[1].trees", "ubuntu"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"soon\"", "assignment[1].schedule", "soon"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1s\"", "assignment[1].schedule", "shorter"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nupstream = \"paris\"", "assignment[1].upstream", "serves nothing"),
            ("trees = [\"debian\"]\nschedule = \"1h\"", "assignment[1].sites", "selects no site"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nwindow = \"22-06\"", "assignment[1].window", "not a window"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nwindow = \"24:00-06:00\"", "assignment[1].window", "not a window"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nwindow = \"06:00-06:00\"", "assignment[1].window", "empty"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nbandwidth = \"fast\"", "assignment[1].bandwidth", "not a bandwidth"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nbandwidth = \"20Mbps\"", "assignment[1].bandwidth", "unknown unit"),
            ("sites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\nbandwidth = \"10B\"", "assignment[1].bandwidth", "below"),
        ];
        for (a, key, needle) in bad {
            let full = text(&format!("[[assignment]]\n{a}\n"));
            let e = Network::parse(&full).expect_err(a);
            let s = e.to_string();
            // The line of the key, or of its table where the key is missing.
            let lines: Vec<&str> = full.lines().collect();
            let header = lines
                .iter()
                .position(|l| *l == "[[assignment]]")
                .expect("header");
            let name = key.rsplit('.').next().unwrap_or(key);
            let line = lines[header..]
                .iter()
                .position(|l| l.starts_with(&format!("{name} =")))
                .map_or(header, |i| header + i)
                + 1;
            assert!(
                s.starts_with(&format!("line {line}: {key}: ")) && s.contains(needle),
                "{s}"
            );
        }
        let n = Network::parse(&text(
            "[[assignment]]\nsites = [\"paris\"]\ntrees = [\"debian\"]\nschedule = \"1h\"\n\
             window = \"22:30-06:00\"\nbandwidth = \"20Mbit\"\n",
        ))
        .expect("window and bandwidth");
        let t = &n.assignment_of("paris", 1).expect("paris").trees[0];
        assert_eq!(
            (t.window, t.bandwidth),
            (Some([22 * 60 + 30, 6 * 60]), Some(2_500_000))
        );
        assert_eq!(parse_bandwidth("2.5MB/s"), Ok(2_500_000));
        let e = Network::parse(&text("").replace("cn:paris", "cn:berlin")).expect_err("twice");
        assert!(e.to_string().contains("also site berlin"), "{e}");
        let e = Network::parse(&text("").replace(KEY, "pulpdist-ed25519 zz")).expect_err("key");
        assert!(e.to_string().contains("trees.debian.trust"), "{e}");
        assert!(
            matches!(e, NetworkError::Invalid { line: Some(_), .. }),
            "{e}"
        );
    }
}
