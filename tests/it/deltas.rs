//! Delta packs (FORMAT.md 5.6) end to end, over the built-in HTTP server: on generated
//! updates of the shapes in DESIGN.md (a source release, a Packages file, a package pool)
//! a site one version behind meets the byte and request targets; a damaged reference, a
//! damaged or missing delta pack and a site further behind all still end byte-identical.

use crate::common;

use std::fs;

use common::servers::Builtin;
use common::*;
use pulpdist_testdata::scenarios::{self, Scenario};

/// Publishes version 1 of `sc`, syncs it over HTTP, publishes version 2 and returns the
/// publish and sync reports of version 2 (the mirror checked byte-identical).
fn one_version_behind(
    site: &Site,
    sc: Scenario,
    scale: f64,
    publish_extra: &[&str],
) -> (scenarios::Summary, serde_json::Value, serde_json::Value) {
    scenarios::write(&site.src(), sc, 1, scale).expect("v1");
    site.publish_with(publish_extra);
    let server = Builtin::start(&site.store());
    let sync = |site: &Site| {
        run_json(&strs(&sync_cmd(
            &server.url,
            "tree",
            &site.trust(),
            &site.mirror(),
            &[],
        )))
    };
    sync(site);
    assert_same_tree(&site.src(), &site.mirror());
    let sum = scenarios::write(&site.src(), sc, 2, scale).expect("v2");
    let p = site.publish_with(publish_extra);
    let s = sync(site);
    assert_eq!(s["version"], 2, "{s}");
    assert_same_tree(&site.src(), &site.mirror());
    (sum, p, s)
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn source_release_update_costs_a_delta_not_the_changed_files() {
    let site = Site::new();
    let (sum, p, s) = one_version_behind(&site, Scenario::Source, 0.05, &[]);
    assert!(sum.changed_files > 60, "{sum:?}");
    let d = &p["deltas"][0];
    assert_eq!(d["from_version"], 1);
    assert_eq!(n(d, "files"), sum.changed_files, "{p}");
    // DESIGN.md's target: 1.6 MB for 42.6 MB of changed files (3.75 %); rsync -z moves
    // 12.6 %. The sync is the head and the delta: two requests.
    let bytes = n(&s, "bytes_fetched");
    assert!(
        (bytes as f64) < 0.0375 * sum.changed_bytes as f64,
        "{bytes} bytes for {} changed: {s}",
        sum.changed_bytes
    );
    assert_eq!(n(&s, "requests"), 2, "{s}");
    assert_eq!(n(&s, "delta_files"), sum.changed_files, "{s}");
    assert_eq!(n(&s, "delta_failed"), 0, "{s}");
    assert_eq!(n(&s, "chunks_fetched"), 0, "{s}");
    assert!(n(&s, "delta_nodes") > 0, "{s}");
}

#[test]
fn without_deltas_the_same_update_fetches_chunks() {
    let site = Site::new();
    let (sum, p, s) = one_version_behind(&site, Scenario::Source, 0.02, &["--deltas", "0"]);
    assert_eq!(p["deltas"].as_array().map(Vec::len), Some(0), "{p}");
    assert_eq!(n(&s, "delta_bytes"), 0);
    assert!(n(&s, "chunks_fetched") > 0);
    // Whole changed chunks, compressed: far above the delta's few percent.
    assert!(
        n(&s, "bytes_fetched") as f64 > 0.15 * sum.changed_bytes as f64,
        "{s}"
    );
}

#[test]
fn packages_file_update_under_16_kb() {
    let site = Site::new();
    let (sum, _, s) = one_version_behind(&site, Scenario::Packages, 1.0, &[]);
    assert!((195_000..210_000).contains(&sum.bytes), "{sum:?}");
    // DESIGN.md: rsync -z 42 kB, zchunk 65 kB, zsync 183 kB; target 16 kB.
    assert!(n(&s, "bytes_fetched") <= 16_000, "{s}");
    assert!(n(&s, "requests") <= 3, "{s}");
    assert_eq!(n(&s, "delta_files"), 1, "{s}");
}

#[test]
fn package_pool_update_within_3_percent_of_the_new_files() {
    let site = Site::new();
    let (sum, _, s) = one_version_behind(&site, Scenario::Pool, 0.1, &[]);
    assert!(sum.changed_files >= 2, "{sum:?}");
    let bytes = n(&s, "bytes_fetched");
    assert!(
        bytes as f64 <= 1.03 * sum.changed_bytes as f64,
        "{bytes} for {} new bytes: {s}",
        sum.changed_bytes
    );
    assert!(n(&s, "requests") <= 16, "{s}");
    assert_eq!(n(&s, "delta_files"), sum.changed_files, "{s}");
}

#[test]
fn damaged_reference_or_delta_falls_back_to_chunks() {
    let site = Site::new();
    scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
    site.publish();
    site.sync();
    let sum = scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
    let p = site.publish();
    assert_eq!(n(&p["deltas"][0], "files"), sum.changed_files);

    // A reference file edited locally (same size, so it still looks like the old file):
    // its record rebuilds other bytes, which match no chunk, so its chunks are fetched.
    // An edited file (both copies exist, contents differ), single-chunk sized.
    let edited = walk_files(&site.src())
        .into_iter()
        .find(|rel| {
            let a = fs::read(site.src().join(rel)).expect("src");
            fs::read(site.mirror().join(rel)).is_ok_and(|b| a != b && b.len() < 60_000)
        })
        .expect("a changed file");
    let m = site.mirror().join(&edited);
    let mut bytes = fs::read(&m).expect("read");
    bytes.reverse();
    fs::write(&m, &bytes).expect("damage");
    let s = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    assert_eq!(n(&s, "delta_failed"), 1, "{s}");
    assert!(n(&s, "chunks_fetched") >= 1, "{s}");
    assert_eq!(n(&s, "delta_files"), sum.changed_files - 1, "{s}");
}

#[test]
fn tampered_truncated_or_missing_delta_pack_still_syncs() {
    for damage in ["flip", "truncate", "delete"] {
        let site = Site::new();
        scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
        site.publish();
        site.sync();
        scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
        let p = site.publish();
        assert_eq!(p["deltas"].as_array().map(Vec::len), Some(1), "{p}");
        // The delta pack is the one pack this publish wrote beside its index and data packs.
        let pack = newest_pack(&site.store());
        match damage {
            "flip" => {
                let mut b = fs::read(&pack).expect("pack");
                // Every 97th byte: records, trailer and footer alike.
                for i in (40..b.len()).step_by(97) {
                    b[i] ^= 0x20;
                }
                fs::write(&pack, b).expect("tamper");
            }
            "truncate" => {
                let b = fs::read(&pack).expect("pack");
                fs::write(&pack, &b[..b.len() / 2]).expect("truncate");
            }
            _ => fs::remove_file(&pack).expect("delete"),
        }
        let s = site.sync();
        assert_eq!(s["version"], 2, "{damage}: {s}");
        assert_same_tree(&site.src(), &site.mirror());
        assert!(n(&s, "chunks_fetched") > 0, "{damage}: {s}");
        // Refused as a whole (size or hash against the signed head), before any record.
        assert!(s["delta_error"].is_string(), "{damage}: {s}");
        assert_eq!(n(&s, "delta_files"), 0, "{damage}: {s}");
        // The damaged pack does not stop the next publish either.
        let f = site.src().join("Makefile");
        let mut b = fs::read(&f).expect("read");
        b.extend_from_slice(b"all: again\n");
        fs::write(&f, b).expect("write");
        let p = site.publish();
        assert_eq!(p["version"], 3, "{damage}: {p}");
        if damage == "truncate" {
            assert_eq!(
                p["unreadable_packs"].as_array().map(Vec::len),
                Some(1),
                "{p}"
            );
        }
        site.sync();
        assert_same_tree(&site.src(), &site.mirror());
    }
}

#[test]
fn a_refresh_publish_in_between_does_not_lose_the_delta() {
    // K = 1: version 2 changes nothing (a re-signed refresh), version 3 changes files. A
    // site still at version 1 holds version 2's tree, and the delta is matched by root.
    let site = Site::new();
    scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
    site.publish();
    site.sync();
    let p2 = site.publish();
    assert_eq!(p2["files_read"], 0);
    let sum = scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
    let p3 = site.publish();
    assert_eq!(p3["version"], 3);
    assert_eq!(n(&p3["deltas"][0], "from_version"), 2, "{p3}");
    let s = site.sync();
    assert_eq!(s["previous_version"], 1);
    assert_eq!(n(&s, "delta_files"), sum.changed_files, "{s}");
    assert_eq!(n(&s, "chunks_fetched"), 0, "{s}");
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn two_versions_behind_uses_the_delta_from_its_version() {
    let site = Site::new();
    scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
    site.publish_with(&["--deltas", "2"]);
    site.sync();
    scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
    site.publish_with(&["--deltas", "2"]);
    // Version 3: one more file edited, on top of version 2.
    let f = site.src().join("Makefile");
    let mut b = fs::read(&f).expect("read");
    b.extend_from_slice(b"all: again\n");
    fs::write(&f, b).expect("write");
    let p = site.publish_with(&["--deltas", "2"]);
    let froms: Vec<u64> = p["deltas"]
        .as_array()
        .expect("deltas")
        .iter()
        .map(|d| n(d, "from_version"))
        .collect();
    assert_eq!(froms, [2, 1], "{p}");
    let s = site.sync();
    assert_eq!(s["previous_version"], 1);
    assert_eq!(s["version"], 3);
    assert!(n(&s, "delta_bytes") > 0, "{s}");
    assert_eq!(n(&s, "chunks_fetched"), 0, "{s}");
    assert_same_tree(&site.src(), &site.mirror());
    // An unchanged publish writes no delta but its head keeps the previous ones.
    let before = listed_deltas(&site.store());
    let p = site.publish_with(&["--deltas", "2"]);
    assert_eq!(p["deltas"].as_array().map(Vec::len), Some(0), "{p}");
    assert_eq!(p["files_read"], 0);
    assert_eq!(listed_deltas(&site.store()), before);
    assert_eq!(before.len(), 2);
}

fn walk_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).expect("dir") {
            let e = e.expect("entry");
            let r = rel.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}

/// The delta packs the tree's head lists.
fn listed_deltas(store: &std::path::Path) -> Vec<pulpdist_format::delta::DeltaInfo> {
    let bytes = fs::read(store.join("heads/tree")).expect("head");
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("decode");
    head.deltas().expect("deltas")
}

/// The delta pack the tree's head lists.
fn newest_pack(store: &std::path::Path) -> std::path::PathBuf {
    let bytes = fs::read(store.join("heads/tree")).expect("head");
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("decode");
    let deltas = head.deltas().expect("deltas");
    store.join(deltas[0].pack.object_key())
}

#[test]
fn an_unreadable_old_version_leaves_the_delta_out_not_the_publish() {
    let site = Site::new();
    scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
    site.publish();
    site.sync();
    // Version 1's index pack damaged in the store (the site already holds those nodes).
    let bytes = fs::read(site.store().join("heads/tree")).expect("head");
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("decode");
    let index = head.recent[0]
        .packs
        .iter()
        .find(|p| p.kind == pulpdist_format::PackKind::Index)
        .expect("an index pack");
    let path = site.store().join(index.id.object_key());
    let mut b = fs::read(&path).expect("pack");
    for i in (60..b.len() - 2000).step_by(50) {
        b[i] ^= 0x11;
    }
    fs::write(&path, b).expect("damage");
    scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
    let p = site.publish();
    assert_eq!(p["version"], 2);
    let d = &p["deltas"][0];
    assert_eq!(d["size"], 0, "{p}");
    assert!(
        d["skipped"][0]
            .as_str()
            .is_some_and(|s| s.contains("no delta from version 1")),
        "{p}"
    );
    let s = site.sync();
    assert_eq!(n(&s, "delta_bytes"), 0, "{s}");
    assert_same_tree(&site.src(), &site.mirror());
}

/// Regression: a resumed sync downloaded the whole delta pack again even when a killed one
/// had fetched and verified it (150 MB again after a kill). The verified copy is kept in the
/// staging area until the version is applied.
#[test]
fn a_sync_killed_after_the_delta_arrived_does_not_fetch_it_again() {
    let site = Site::new();
    scenarios::write(&site.src(), Scenario::Source, 1, 0.02).expect("v1");
    site.publish();
    site.sync();
    scenarios::write(&site.src(), Scenario::Source, 2, 0.02).expect("v2");
    let p = site.publish();
    let delta_size = n(&p["deltas"][0], "size");
    let out = bin()
        .args(site.sync_args())
        .env("PULPDIST_FAILPOINT", "sync.delta:1")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("fail point"));
    let s = site.sync();
    assert_eq!(n(&s, "delta_bytes"), 0, "{s}");
    assert!(n(&s, "delta_files") > 0, "the kept delta was used: {s}");
    assert!(
        n(&s, "bytes_fetched") < delta_size,
        "{s}, delta {delta_size}"
    );
    assert_same_tree(&site.src(), &site.mirror());
}
