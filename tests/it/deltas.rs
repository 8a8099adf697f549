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
    let sync = |site: &Site| sync_over(&server, site);
    sync(site);
    assert_same_tree(&site.src(), &site.mirror());
    let sum = scenarios::write(&site.src(), sc, 2, scale).expect("v2");
    let p = site.publish_with(publish_extra);
    let s = sync(site);
    assert_eq!(s["version"], 2, "{s}");
    assert_same_tree(&site.src(), &site.mirror());
    (sum, p, s)
}

/// `pulpdist sync --json` of the site's mirror from `server`.
fn sync_over(server: &Builtin, site: &Site) -> serde_json::Value {
    run_json(&strs(&sync_cmd(
        &server.url,
        "tree",
        &site.trust(),
        &site.mirror(),
        &[],
    )))
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
    // A third of the unchanged files re-stamped, as real release tarballs do: each
    // directory holding one has a new node. With a zstd frame per node record this update
    // cost 5.7 % of the changed bytes; nodes batched in one frame, 1.8 %; small files
    // batched too, 1.24 %.
    assert!(sum.touched_files > 500, "{sum:?}");
    let bytes = n(&s, "bytes_fetched");
    assert!(
        (bytes as f64) < 0.015 * sum.changed_bytes as f64,
        "{bytes} bytes for {} changed: {s}",
        sum.changed_bytes
    );
    assert_eq!(n(&s, "requests"), 2, "{s}");
    // Files only re-stamped get their new mtime, not a rewrite (before: every one was
    // rewritten from its local chunks).
    assert_eq!(n(&s, "files"), sum.changed_files, "{s}");
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

/// A delta larger than a pack may be is written as several packs (`--delta-pack-size`
/// here 1 MiB, 256 MiB by default): the site fetches each in one request while the chunks
/// it still lacks come to more bytes (the last pack of new `.deb`s may cost no less than
/// their chunks, which then come in one range), so the request count is at most the head
/// and the packs, however the update is spread over the data packs.
#[test]
fn a_large_delta_is_several_packs_each_one_request() {
    let site = Site::new();
    let part = 1u64 << 20;
    let (sum, p, s) = one_version_behind(
        &site,
        Scenario::Pool,
        0.3,
        &["--delta-pack-size", &part.to_string()],
    );
    let d = &p["deltas"][0];
    let packs = n(d, "packs");
    assert!(packs >= 4, "{p}");
    assert!(n(d, "size") > part, "{p}");
    assert_eq!(n(d, "files"), sum.changed_files, "{p}");
    // The head lists each pack, from the same tree, none larger than asked.
    let head = fs::read(site.store().join("heads/tree")).expect("head");
    let head = pulpdist_format::SignedHead::decode_and_verify(
        &head,
        &pulpdist_format::TrustedKeys::from_text(&fs::read_to_string(site.trust()).expect("trust"))
            .expect("keys"),
    )
    .expect("head verifies");
    let parts = head.head().deltas().expect("deltas");
    assert_eq!(parts.len() as u64, packs);
    assert!(parts.iter().all(|d| d.size <= part && d.from_version == 1));
    assert!(n(&s, "requests") <= 1 + packs, "{s}");
    // All packs but perhaps the last.
    let last = parts.last().map_or(0, |d| d.size);
    assert!(n(&s, "delta_bytes") >= n(d, "size") - last, "{s}");
    let bytes = n(&s, "bytes_fetched");
    assert!(
        bytes as f64 <= 1.03 * sum.changed_bytes as f64,
        "{bytes} for {} new bytes: {s}",
        sum.changed_bytes
    );
}

/// A chunking worker sends a file's new chunks to the pack writer together (in runs of a
/// few MiB), so they lie together whatever order the workers finished in: a site that
/// lacks one of two files changed together fetches it in a range per run (before: the two
/// files' chunks alternated in one pack, and a run took from 26 to 50 requests for one
/// file of real `.deb` data).
#[test]
fn a_files_new_chunks_are_fetched_in_one_range() {
    let site = Site::new();
    let files = ["a.bin", "b.bin"];
    for (i, f) in files.iter().enumerate() {
        fs::write(site.src().join(f), random_bytes(3 << 20, i as u64)).expect("v1");
    }
    site.publish_with(&["--deltas", "0"]);
    let server = Builtin::start(&site.store());
    let sync = || sync_over(&server, &site);
    sync();
    let new: Vec<Vec<u8>> = (0..2).map(|i| random_bytes(3 << 20, 10 + i)).collect();
    for (f, data) in files.iter().zip(&new) {
        fs::write(site.src().join(f), data).expect("v2");
    }
    let p = site.publish_with(&["--deltas", "0"]);
    assert!(n(&p, "chunks_new") >= 40, "{p}");
    // The site has b.bin's new content already (copied by hand): only a.bin's chunks
    // are fetched.
    fs::write(site.mirror().join("b.bin"), &new[1]).expect("b");
    let s = sync();
    assert_same_tree(&site.src(), &site.mirror());
    let half = n(&p, "chunks_new") / 2;
    assert!(n(&s, "chunks_fetched") >= half - 2, "{s}");
    // The head, the index pack's nodes, and a.bin's chunks in one run.
    assert!(n(&s, "requests") <= 3, "{s}");
}

#[test]
fn damaged_reference_or_delta_falls_back_to_chunks() {
    for damage in ["reversed", "gone"] {
        let site = Site::new();
        scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
        site.publish();
        site.sync();
        let sum = scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
        let p = site.publish();
        assert_eq!(n(&p["deltas"][0], "files"), sum.changed_files);

        // The old copy of an edited file (single-chunk sized), as the file batch's prefix
        // holds it, edited locally (same size, so it still looks like the old file) or
        // removed: in the prefix other bytes or zeros take its place, so what it rebuilds
        // (and what other files drew from it) matches no chunk, and those chunks are
        // fetched. The rest of its batch still comes from the delta.
        let edited = walk_files(&site.src())
            .into_iter()
            .find(|rel| {
                let a = fs::read(site.src().join(rel)).expect("src");
                fs::read(site.mirror().join(rel)).is_ok_and(|b| a != b && b.len() < 60_000)
            })
            .expect("a changed file");
        let m = site.mirror().join(&edited);
        if damage == "reversed" {
            let mut bytes = fs::read(&m).expect("read");
            bytes.reverse();
            fs::write(&m, &bytes).expect("damage");
        } else {
            fs::remove_file(&m).expect("remove");
        }
        let s = site.sync();
        assert_same_tree(&site.src(), &site.mirror());
        let failed = n(&s, "delta_failed");
        assert!((1..=3).contains(&failed), "{damage}: {s}");
        assert!(n(&s, "chunks_fetched") >= 1, "{damage}: {s}");
        assert_eq!(
            n(&s, "delta_files"),
            sum.changed_files - failed,
            "{damage}: {s}"
        );
    }
}

#[test]
fn a_node_batch_whose_reference_left_the_cache_costs_the_nodes_not_the_sync() {
    let site = Site::new();
    scenarios::write(&site.src(), Scenario::Source, 1, 0.01).expect("v1");
    let p1 = site.publish();
    site.sync();
    scenarios::write(&site.src(), Scenario::Source, 2, 0.01).expect("v2");
    let p = site.publish();
    assert!(n(&p["deltas"][0], "nodes") > 10, "{p}");
    // The old directory nodes gone from the site's node cache, all but the root: the
    // batch's prefix cannot be built, so its nodes are fetched; the files still come from
    // the delta.
    let nodes = site.p("downstream/.tree.pulpdist/nodes");
    let root = p1["root"].as_str().expect("root").to_string();
    let mut removed = 0;
    for f in walk_files(&nodes) {
        if !f.ends_with(&root) {
            fs::remove_file(nodes.join(&f)).expect("remove");
            removed += 1;
        }
    }
    assert!(removed > 10);
    let s = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    assert_eq!(n(&s, "delta_nodes"), 0, "{s}");
    assert!(n(&s, "delta_files") > 0, "{s}");
    assert_eq!(n(&s, "chunks_fetched"), 0, "{s}");
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

/// A delta of several packs (FORMAT.md 5.6): the first comes with the walk; a further one
/// only while what the mirror still lacks outweighs it, and none after one that saved less
/// than half its size; a damaged one costs only its own files; a sync killed between packs
/// keeps those it fetched.
#[test]
fn the_further_packs_of_a_delta_are_fetched_only_while_they_pay() {
    const PART: &str = "1048576";
    // Five new files of 700 kB that do not compress (one a pack) and a small one.
    let big: Vec<String> = (0..5).map(|i| format!("f{i}.bin")).collect();
    let content = |f: &str| match f.strip_prefix('f') {
        Some(i) => random_bytes(700_000, i.as_bytes()[0].into()),
        None => random_bytes(50_000, 99),
    };
    let mut all = big.clone();
    all.push("z-small.bin".into());
    for case in ["skip", "stop", "damaged", "first gone", "killed"] {
        let site = Site::new();
        fs::write(site.src().join("keep.txt"), b"one").expect("v1");
        site.publish_with(&["--delta-pack-size", PART]);
        let server = Builtin::start(&site.store());
        sync_over(&server, &site);
        for f in &all {
            fs::write(site.src().join(f), content(f)).expect("v2");
        }
        let p = site.publish_with(&["--delta-pack-size", PART]);
        // The small file and f0 in the first pack, then one file a pack.
        let parts = listed_deltas(&site.store());
        assert_eq!(parts.len(), 5, "{p}");
        let size = |r: std::ops::Range<usize>| parts[r].iter().map(|d| d.size).sum::<u64>();
        let total = size(0..parts.len());
        // What the mirror already holds of version 2 (copied by hand), per case.
        let held: Vec<&String> = match case {
            // Lacks f4 (700 kB): no further pack outweighs it.
            "skip" => all.iter().filter(|f| *f != "f4.bin").collect(),
            // Lacks f3 and f4: the second pack (f1) is fetched, saves nothing, and is the
            // last.
            "stop" => all
                .iter()
                .filter(|f| !f.starts_with("f3") && !f.starts_with("f4"))
                .collect(),
            _ => Vec::new(),
        };
        for f in held {
            fs::write(site.mirror().join(f), content(f)).expect("by hand");
        }
        let damaged = site.store().join(parts[2].pack.object_key());
        if case == "damaged" {
            let mut b = fs::read(&damaged).expect("pack");
            for i in (40..b.len()).step_by(997) {
                b[i] ^= 0x20;
            }
            fs::write(&damaged, b).expect("damage");
        }
        if case == "first gone" {
            fs::remove_file(site.store().join(parts[0].pack.object_key())).expect("rm");
        }
        if case == "killed" {
            let out = bin()
                .args(strs(&sync_cmd(
                    &server.url,
                    "tree",
                    &site.trust(),
                    &site.mirror(),
                    &[],
                )))
                .env("PULPDIST_FAILPOINT", "sync.delta_part:1")
                .output()
                .expect("run");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("fail point"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = sync_over(&server, &site);
        assert_eq!(s["version"], 2, "{case}: {s}");
        assert_same_tree(&site.src(), &site.mirror());
        let expected = match case {
            "skip" => size(0..1),
            "stop" => size(0..2),
            "damaged" => total - parts[2].size,
            // Without the first (and its nodes, fetched one by one), the rest still pay.
            "first gone" => total - parts[0].size,
            // The first two packs were kept in the staging area by the killed run (and
            // their files staged); the last, f4 alone, costs no less than its chunks.
            _ => size(2..4),
        };
        assert_eq!(n(&s, "delta_bytes"), expected, "{case}: {s}\n{p}");
        // What came as chunks: f4 alone (skip, killed), f3 and f4 (stop); the head and the
        // index node besides.
        let chunk_bytes = n(&s, "bytes_fetched") - n(&s, "delta_bytes");
        let most = match case {
            "skip" | "killed" => 760_000,
            "stop" => 1_460_000,
            _ => u64::MAX,
        };
        assert!(
            chunk_bytes <= most,
            "{case}: {chunk_bytes} bytes as chunks: {s}"
        );
        match case {
            "damaged" | "first gone" => {
                assert!(s["delta_error"].is_string(), "{s}");
                assert!(n(&s, "chunks_fetched") > 0, "{s}");
            }
            _ => assert!(n(&s, "chunks_fetched") > 0, "{case}: {s}"),
        }
    }
}

/// Text that compresses like source code but is unique: `n` lines of words from a seed.
fn text(seed: u64, n: usize) -> String {
    const WORDS: &[&str] = &[
        "fn", "let", "match", "return", "self", "impl", "struct", "use", "pub", "mut", "if",
        "else", "for", "while", "loop", "break", "Some", "None", "Ok", "Err",
    ];
    let mut x = seed;
    let mut out = String::new();
    for line in 0..n {
        for _ in 0..8 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.push_str(WORDS[(x >> 59) as usize % WORDS.len()]);
            out.push(' ');
        }
        out.push_str(&format!("{line} {}\n", x >> 40));
    }
    out
}

#[test]
fn a_delta_is_used_when_the_store_already_held_the_versions_chunks_for_another_tree() {
    // Version 2 is published first as another tree of the same store: when the tree gets
    // version 2, its packs hold one index node (the chunks are stored already), so its
    // delta looks no smaller than them. What the site lacks decides: the changed chunks.
    let site = Site::new();
    let write = |dir: &std::path::Path, edited: bool| {
        fs::create_dir_all(dir.join("src")).expect("dir");
        for f in 0..4u64 {
            let mut t = text(f, 20_000);
            if edited {
                // About 10 kB of new lines in the middle.
                let mid = t[..t.len() / 2].rfind('\n').map_or(0, |i| i + 1);
                t.insert_str(mid, &text(100 + f, 150));
            }
            fs::write(dir.join(format!("src/file{f}.rs")), t).expect("write");
        }
    };
    write(&site.src(), false);
    site.publish();
    let server = Builtin::start(&site.store());
    let sync = || sync_over(&server, &site);
    sync();
    let other = site.p("other");
    write(&other, true);
    let out = run(&[
        "publish",
        "--store",
        s(&site.store()),
        "--tree",
        "other",
        "--key",
        s(&site.key()),
        s(&other),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write(&site.src(), true);
    let p = site.publish();
    assert_eq!(p["deltas"][0]["files"], 4, "{p}");
    let s = sync();
    assert_eq!(s["version"], 2, "{s}");
    assert_same_tree(&site.src(), &site.mirror());
    // The plan lacked the edited chunks, more than the delta: it fetched the delta.
    assert_eq!(s["delta_by_plan"], true, "{s}");
    assert_eq!(n(&s, "delta_files"), 4, "{s}");
    assert_eq!(n(&s, "chunks_fetched"), 0, "{s}");
    let delta = n(&p["deltas"][0], "size");
    assert!(n(&s, "bytes_fetched") < delta + 16_384, "{s}");
}
