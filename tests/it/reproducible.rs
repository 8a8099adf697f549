//! Reproducible publishing: packs are named by their content (FORMAT.md 3) and filled in
//! file order, so two publishers of the same source, with the same key and creation time
//! (`--created`), write the same store byte for byte whatever
//! their thread counts, and a site syncs from either in the same requests whatever its
//! number of connections.

use std::fs;
use std::path::Path;

use crate::common::{self, assert_same_tree, run, run_json, s, strs, sync_cmd, Site};

/// Every object of a directory store (packs, heads, archived heads) with its bytes.
fn objects(store: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo: Vec<_> = ["packs", "heads", "history"]
        .iter()
        .map(|d| store.join(d))
        .collect();
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(store).expect("under the store");
                out.push((
                    rel.to_string_lossy().into_owned(),
                    fs::read(&p).expect("read"),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Version `v` of a small repository: a large file edited in its middle, packages of which
/// every fifth changes, and a release file.
fn write_version(src: &Path, v: u8) {
    let main = src.join("pool/main");
    fs::create_dir_all(&main).expect("pool");
    let mut big = common::random_bytes(3 << 20, 1);
    big[1 << 20..(1 << 20) + 5_000].fill(v);
    fs::write(main.join("big.bin"), big).expect("big");
    for i in 0..40u8 {
        let version = if i % 5 == 0 { v } else { 1 };
        let body = format!("package {i} version {version}\n").repeat(200);
        fs::write(main.join(format!("p{i}.txt")), body).expect("package");
    }
    fs::write(src.join("Release"), format!("release {v}\n")).expect("release");
}

/// Seconds since the epoch.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `publish` of `site`'s source into `store`, created at `created`, with `extra` options.
fn publish_args(site: &Site, store: &Path, created: &str, extra: &[&str]) -> Vec<String> {
    let (key, src) = (site.key(), site.src());
    let mut a = vec!["publish", "--store", s(store), "--tree", "tree"];
    a.extend(["--key", s(&key), "--created", created]);
    a.extend(extra);
    a.push(s(&src));
    a.into_iter().map(str::to_string).collect()
}

#[test]
fn two_publishers_of_the_same_input_write_the_same_store() {
    let site = Site::new();
    let other = site.p("other-store");
    let now = now();
    let created = (now - 3_600).to_string();
    for v in [1, 2] {
        write_version(&site.src(), v);
        let mine = site.publish_with(&["--created", &created, "--threads", "1"]);
        // The other publisher: another store and state, two threads.
        let theirs = run_json(&strs(&publish_args(
            &site,
            &other,
            &created,
            &["--threads", "2"],
        )));
        assert_eq!(mine["packs"], theirs["packs"], "version {v}");
        if v == 2 {
            let deltas = mine["deltas"].as_array().expect("deltas");
            assert_eq!(deltas.len(), 1, "{mine}");
        }
        // A site of each, one request at a time and eight: the same requests and bytes.
        let synced: Vec<_> = [(site.store(), "1", "a"), (other.clone(), "8", "b")]
            .into_iter()
            .map(|(store, connections, name)| {
                let mirror = site.p(&format!("mirror-{name}"));
                let extra = ["--connections", connections];
                let r = run_json(&strs(&sync_cmd(
                    s(&store),
                    "tree",
                    &site.trust(),
                    &mirror,
                    &extra,
                )));
                assert_same_tree(&site.src(), &mirror);
                r
            })
            .collect();
        for key in ["requests", "bytes_fetched", "delta_bytes", "chunks_fetched"] {
            assert_eq!(synced[0][key], synced[1][key], "version {v}: {key}");
        }
        if v == 2 {
            assert_eq!(
                synced[0]["requests"], 2,
                "the head and the delta: {}",
                synced[0]
            );
        }
    }
    let (mine, theirs) = (objects(&site.store()), objects(&other));
    let names = |o: &[(String, Vec<u8>)]| o.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&mine), names(&theirs));
    // Two versions' data and index packs, and version 2's delta.
    let packs = mine.iter().filter(|(n, _)| n.starts_with("packs/")).count();
    assert!(packs >= 5, "{:?}", names(&mine));
    for ((name, a), (_, b)) in mine.iter().zip(&theirs) {
        assert!(a == b, "{name} differs");
    }
    // A time whose head would be expired already is refused, and one before the previous
    // head's.
    let refused = |created: &str| {
        let out = run(&strs(&publish_args(&site, &other, created, &[])));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("1000");
    assert!(err.contains("less than half"), "{err}");
    // A head that would live less than half its seven days.
    let err = refused(&(now - 4 * 86_400).to_string());
    assert!(err.contains("less than half"), "{err}");
    let err = refused(&(now - 7_200).to_string());
    assert!(err.contains("never goes back"), "{err}");
    let err = refused(&(now + 3_600).to_string());
    assert!(err.contains("later than now"), "{err}");
}

/// A name the publisher's content gives that a damaged pack holds, or that the gc
/// condemned, is not used: the damaged pack is left as it is, and the new data pack is
/// named at random; a site syncs. (The index pack then names that data pack, so its own
/// content name differs too: the index's own fallback is reached by the next test.)
#[test]
fn a_content_name_held_by_a_damaged_pack_or_condemned_is_not_used() {
    for condemn in [false, true] {
        let site = Site::new();
        write_version(&site.src(), 1);
        let theirs = site.p("other-store");
        let created = (now() - 60).to_string();
        let publish = |store: &Path| run_json(&strs(&publish_args(&site, store, &created, &[])));
        publish(&theirs);
        let names: Vec<(String, Vec<u8>)> = objects(&theirs)
            .into_iter()
            .filter(|(n, _)| n.starts_with("packs/"))
            .collect();
        assert_eq!(names.len(), 2, "a data pack and an index pack");
        // The same names in the site's store: damaged packs, or on the condemned list.
        for d in ["packs", "gc"] {
            fs::create_dir_all(site.store().join(d)).expect("mkdir");
        }
        let mut list = pulpdist_format::Condemned::default();
        for (name, bytes) in &names {
            match condemn {
                false => {
                    fs::write(site.store().join(name), &bytes[..bytes.len() / 2]).expect("plant")
                }
                true => {
                    let hex = &name["packs/".len()..name.len() - ".pack".len()];
                    list.packs.insert(hex.parse().expect("pack id"), 1_000);
                }
            }
        }
        let list_path = site.store().join(pulpdist_format::CONDEMNED_KEY);
        fs::write(list_path, list.encode()).expect("condemned list");
        let p = publish(&site.store());
        assert_eq!(p["packs"], 2, "{p}");
        let mine = objects(&site.store());
        let packs: Vec<_> = mine
            .iter()
            .filter(|(n, _)| n.starts_with("packs/"))
            .collect();
        assert_eq!(
            packs.len(),
            if condemn { 2 } else { 4 },
            "condemned: {condemn}"
        );
        for (name, bytes) in &names {
            left_alone_then_synced(&site, name, &bytes[..bytes.len() / 2], condemn);
        }
    }
}

/// A pack `name` planted with `planted` bytes was left as it was (a condemned one never
/// written), and a site syncs the tree.
fn left_alone_then_synced(site: &Site, name: &str, planted: &[u8], condemn: bool) {
    match condemn {
        false => {
            let kept = fs::read(site.store().join(name)).expect("still there");
            assert_eq!(kept, planted, "{name} left as it was");
        }
        true => assert!(!site.store().join(name).exists(), "{name}"),
    }
    synced(site);
}

/// The packs of a directory store, by name.
fn pack_names(store: &Path) -> std::collections::BTreeSet<String> {
    objects(store)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("packs/"))
        .collect()
}

/// The index pack's own fallback: a version whose data is all in the store already (only
/// a file's mtime changed) writes one pack, the index; when a damaged pack holds the name
/// its content gives, or the gc condemned that name, the index is built again under a
/// random name, the damaged pack is left as it is, and a site syncs the version.
#[test]
fn an_index_whose_content_name_is_taken_or_condemned_is_named_at_random() {
    for condemn in [false, true] {
        let site = Site::new();
        write_version(&site.src(), 1);
        let reference = site.p("reference-store");
        let created = (now() - 60).to_string();
        let publish = |store: &Path| {
            run_json(&strs(&publish_args(
                &site,
                store,
                &created,
                &["--deltas", "0"],
            )))
        };
        publish(&reference);
        publish(&site.store());
        assert_eq!(pack_names(&reference), pack_names(&site.store()));
        // Version 2: one file's mtime, nothing else; its index pack's content name, from
        // the reference store.
        let touched = fs::File::options()
            .write(true)
            .open(site.src().join("pool/main/p3.txt"))
            .expect("open");
        let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
        touched.set_modified(mtime).expect("mtime");
        drop(touched);
        let before = pack_names(&reference);
        let p = publish(&reference);
        assert_eq!(p["packs"], 1, "only the index: {p}");
        assert_eq!(p["chunks_new"], 0, "{p}");
        let new: Vec<String> = pack_names(&reference)
            .difference(&before)
            .cloned()
            .collect();
        let [index] = new.as_slice() else {
            panic!("one new pack: {new:?}")
        };
        let planted = fs::read(reference.join(index)).expect("index pack");
        let planted = &planted[..planted.len() / 2];
        let mut list = pulpdist_format::Condemned::default();
        match condemn {
            false => fs::write(site.store().join(index), planted).expect("plant"),
            true => {
                let hex = &index["packs/".len()..index.len() - ".pack".len()];
                list.packs.insert(hex.parse().expect("pack id"), 1_000);
                fs::create_dir_all(site.store().join("gc")).expect("mkdir");
                let list_path = site.store().join(pulpdist_format::CONDEMNED_KEY);
                fs::write(list_path, list.encode()).expect("condemned list");
            }
        }
        let before = pack_names(&site.store());
        let mut args = publish_args(&site, &site.store(), &created, &["--deltas", "0"]);
        args.push("--json".into());
        let out = run(&strs(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(p["packs"], 1, "{p}");
        // The fallback gave the name: the damaged pack was found under the one the content
        // gives (a condemned name is not put at all).
        let warned = stderr.contains("the index named at random");
        assert_eq!(warned, !condemn, "{stderr}");
        let new: Vec<String> = pack_names(&site.store())
            .difference(&before)
            .cloned()
            .collect();
        assert_eq!(new.len(), 1, "one index pack under another name: {new:?}");
        assert_ne!(&new[0], index, "condemned: {condemn}");
        left_alone_then_synced(&site, index, planted, condemn);
        let synced = fs::metadata(site.mirror().join("pool/main/p3.txt")).expect("synced");
        assert_eq!(
            synced.modified().expect("mtime"),
            mtime,
            "condemned: {condemn}"
        );
    }
}

/// The largest pack of a directory store (its data pack, beside a small index), by name.
fn largest_pack(store: &Path) -> String {
    let packs = objects(store)
        .into_iter()
        .filter(|(n, _)| n.starts_with("packs/"));
    packs.max_by_key(|(_, b)| b.len()).expect("a pack").0
}

/// The publisher's cached trailers are the packs' as the store lists them now: a name that
/// held another pack (planted, or damaged and removed) and then holds the pack its content
/// gives is read again, not taken from the cache. Before, a publish took the old trailer,
/// found its chunks "stored" in the new pack, and published a version no site could sync.
#[test]
fn a_pack_name_that_changed_bytes_is_read_again_not_taken_from_the_cache() {
    let site = Site::new();
    let created = (now() - 60).to_string();
    let publish = |store: &Path| run_json(&strs(&publish_args(&site, store, &created, &[])));
    let source = |other: bool| {
        let _ = fs::remove_dir_all(site.src());
        fs::create_dir_all(site.src()).expect("source");
        match other {
            true => fs::write(
                site.src().join("other.bin"),
                common::random_bytes(1 << 20, 9),
            )
            .expect("other"),
            false => write_version(&site.src(), 1),
        }
    };
    // Another valid pack, and the name version 1's data pack will have.
    source(true);
    let elsewhere = site.p("elsewhere");
    publish(&elsewhere);
    let planted = fs::read(elsewhere.join(largest_pack(&elsewhere))).expect("pack");
    source(false);
    let reference = site.p("reference-store");
    publish(&reference);
    let name = largest_pack(&reference);
    let genuine = fs::read(reference.join(&name)).expect("pack");
    assert_ne!(planted.len(), genuine.len());
    fs::create_dir_all(site.store().join("packs")).expect("packs");
    fs::write(site.store().join(&name), &planted).expect("plant");
    // Version 1 under another name; then the planted pack is replaced by the genuine one.
    publish(&site.store());
    fs::write(site.store().join(&name), &genuine).expect("genuine");
    // Version 2 holds what the planted pack held: its chunks are stored now, not taken
    // as being in the genuine pack.
    source(true);
    let p = publish(&site.store());
    assert!(p["chunks_new"].as_u64().expect("chunks") > 0, "{p}");
    synced(&site);
}

/// Syncs the site's mirror from its store; the mirror is the source.
fn synced(site: &Site) {
    run_json(&strs(&sync_cmd(
        s(&site.store()),
        "tree",
        &site.trust(),
        &site.mirror(),
        &[],
    )));
    assert_same_tree(&site.src(), &site.mirror());
}
