//! The configuration files' grammar: tree definitions, and any TOML text read as settings
//! (with the hint for the old `key = value` format).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    store: Option<String>,
    #[serde(default)]
    trust: Vec<String>,
    connections: Option<usize>,
    #[serde(default)]
    multi_range: bool,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pulpdist_config::parse_trees(text);
        if let Ok(s) = pulpdist_config::parse::<Settings>(text) {
            let _ = pulpdist_config::overlay(&s, &s);
        }
    }
});
