//! `pulpdist verify --store`: intact (exit 0), damaged (exit 3, the object named), or not
//! checkable (exit 1); `--read-data-subset N/M` over M runs reads every pack once.

use crate::common;

use std::fs;
use std::path::PathBuf;

use common::{run, s, Site};

fn verify(site: &Site, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let store = site.store();
    let trust = site.trust();
    let mut a = vec!["verify", "--store", s(&store), "--trust", &trust, "--json"];
    a.extend(extra);
    let out = run(&a);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, err)
}

/// A published tree with several chunks; its data packs, largest first.
fn published() -> (Site, Vec<PathBuf>) {
    let site = Site::new();
    fs::create_dir_all(site.src().join("pool")).expect("pool");
    for i in 0..4u8 {
        let data: Vec<u8> = (0..300_000u32)
            .map(|j| (j.wrapping_mul(31) as u8) ^ i)
            .collect();
        fs::write(site.src().join(format!("pool/p{i}.deb")), data).expect("file");
    }
    fs::write(site.src().join("Release"), b"release\n").expect("Release");
    site.publish();
    let mut packs: Vec<PathBuf> = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .collect();
    packs.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).expect("stat").len()));
    (site, packs)
}

#[test]
fn an_intact_store_verifies_with_and_without_reading_data() {
    let (site, packs) = published();
    let (code, r, err) = verify(&site, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        (r["trees"].as_u64(), r["packs_read"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert!(
        r["nodes"].as_u64() >= Some(2) && r["chunks"].as_u64() >= Some(4),
        "{r}"
    );
    let (code, r, err) = verify(&site, &["--read-data"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(r["chunks_read"], r["chunks"], "{r}");
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r}");
    assert!(packs.len() >= 2, "a data pack and an index pack");
}

#[test]
fn a_flipped_byte_is_found_by_reading_data_and_by_exactly_one_subset() {
    let (site, packs) = published();
    let data = &packs[0];
    let mut bytes = fs::read(data).expect("pack");
    bytes[40 + 100] ^= 0x55;
    fs::write(data, &bytes).expect("damaged");
    let name = data
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    // The structure is intact: without reading data, nothing is found.
    assert_eq!(verify(&site, &[]).0, Some(0));
    let (code, r, err) = verify(&site, &["--read-data"]);
    assert_eq!(code, Some(3), "{err}");
    let problems = r["problems"].as_array().cloned().unwrap_or_default();
    assert_eq!(problems.len(), 1, "{r}");
    assert!(
        problems[0]["object"]
            .as_str()
            .is_some_and(|o| o.ends_with(&name)),
        "{r}"
    );
    assert!(err.contains("damaged"), "{err}");
    // Three runs of a third each: every referenced pack read once, the damage found once.
    let (mut read, mut found) = (0, 0);
    for n in 1..=3 {
        let subset = format!("{n}/3");
        let (code, r, err) = verify(&site, &["--read-data-subset", &subset]);
        assert!(code == Some(0) || code == Some(3), "{err}");
        read += r["packs_read"].as_u64().expect("packs_read");
        found += u64::from(code == Some(3));
        assert_eq!(r["packs"], verify(&site, &[]).1["packs"]);
    }
    assert_eq!(read, verify(&site, &[]).1["packs"].as_u64().expect("packs"));
    assert_eq!(found, 1);
}

#[test]
fn missing_packs_foreign_keys_and_unreadable_stores() {
    let (site, packs) = published();
    // Another key: the head does not verify (damaged, exit 3).
    let other = site.p("other.key");
    assert!(run(&["keygen", s(&other)]).status.success());
    let other_pub = format!("{}.pub", s(&other));
    let store = site.store();
    let out = run(&["verify", "--store", s(&store), "--trust", &other_pub]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A store that is not there could not be checked: exit 1, not 3.
    let none = site.p("no-store");
    let out = run(&["verify", "--store", s(&none), "--trust", &site.trust()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The data pack deleted by hand: found without reading data.
    fs::remove_file(&packs[0]).expect("delete");
    let (code, r, err) = verify(&site, &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        r["problems"][0]["what"]
            .as_str()
            .is_some_and(|w| w.contains("not found")),
        "{r}"
    );
}

/// `verify --mirror` finds a changed (same size and mtime), a truncated, a missing and an
/// extra file; `--repair` brings the mirror back to its version.
#[test]
fn a_damaged_mirror_is_found_and_repaired() {
    let (site, _) = published();
    let (store, mirror) = (site.store(), site.mirror());
    let sync = common::sync_cmd(s(&store), "tree", &site.trust(), &mirror, &[]);
    assert!(run(&common::strs(&sync)).status.success());
    let trust = site.trust();
    let check = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--mirror",
            s(&mirror),
            "--tree",
            "tree",
            "--trust",
            &trust,
        ];
        a.push("--json");
        a.extend(extra);
        let out = run(&a);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (
            out.status.code(),
            r,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, r, err) = check(&["--read-data"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(r["bytes_read"].as_u64() >= Some(1_200_000), "{r}");
    // Changed in place, its size and mtime kept: only reading the data finds it.
    let changed = mirror.join("pool/p0.deb");
    let when =
        filetime::FileTime::from_last_modification_time(&fs::metadata(&changed).expect("stat"));
    let mut bytes = fs::read(&changed).expect("read");
    bytes[1000] ^= 1;
    fs::write(&changed, &bytes).expect("write");
    filetime::set_file_mtime(&changed, when).expect("mtime");
    let truncated = fs::OpenOptions::new()
        .write(true)
        .open(mirror.join("pool/p1.deb"))
        .expect("open");
    truncated.set_len(10).expect("truncate");
    fs::remove_file(mirror.join("pool/p2.deb")).expect("remove");
    fs::write(mirror.join("pool/extra.deb"), b"x").expect("extra");
    // A setuid bit planted on a file the index has without one.
    use std::os::unix::fs::PermissionsExt;
    let rel = mirror.join("Release");
    fs::set_permissions(&rel, fs::Permissions::from_mode(0o4644)).expect("chmod");
    let objects = |r: &serde_json::Value| -> Vec<String> {
        let mut o: Vec<String> = r["problems"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["object"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        o.sort();
        o
    };
    let (code, r, _) = check(&[]);
    assert_eq!(code, Some(3));
    assert_eq!(
        objects(&r),
        ["Release", "pool/extra.deb", "pool/p1.deb", "pool/p2.deb"],
        "{r}"
    );
    let (code, r, _) = check(&["--read-data"]);
    assert_eq!(code, Some(3));
    assert_eq!(
        objects(&r),
        [
            "Release",
            "pool/extra.deb",
            "pool/p0.deb",
            "pool/p1.deb",
            "pool/p2.deb"
        ],
        "{r}"
    );
    let (code, r, err) = check(&["--read-data", "--repair", "--store", s(&store)]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        (r["found"].as_u64(), r["repaired"].as_bool()),
        (Some(5), Some(true)),
        "{r}"
    );
    common::assert_same_tree(&site.src(), &mirror);
    assert_eq!(
        fs::metadata(&rel).expect("stat").permissions().mode() & 0o7777,
        0o644
    );
    // --store beside --mirror without --repair: a usage error, not a silent skip.
    assert_eq!(check(&["--store", s(&store)]).0, Some(2));
    // Without a --tree, or with --repair but no store: a usage error.
    let out = run(&["verify", "--mirror", s(&mirror), "--trust", &trust]);
    assert_eq!(out.status.code(), Some(2));
    let (code, _, _) = check(&["--repair"]);
    assert_eq!(code, Some(2));
    let out = run(&[
        "verify",
        "--mirror",
        s(&mirror),
        "--tree",
        "a",
        "--tree",
        "b",
        "--trust",
        &trust,
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// One flipped byte in each of 20 packs: `--read-data` finds all 20, and four runs of
/// `--read-data-subset N/4` read every pack once and find all 20 between them.
#[test]
fn a_flipped_byte_in_each_of_twenty_packs_is_found() {
    let site = Site::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    // More files than packs needed: how chunks fill packs depends on the order the
    // chunking threads finish in, so the count of packs above 60 kB varies a little.
    for i in 0..32 {
        fs::write(site.src().join(format!("f{i}")), noise(70_000)).expect("file");
    }
    site.publish_with(&["--pack-size", "65536"]);
    let mut data: Vec<PathBuf> = fs::read_dir(site.store().join("packs"))
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .filter(|p| fs::metadata(p).is_ok_and(|m| m.len() > 60_000))
        .collect();
    data.sort();
    assert!(data.len() >= 20, "{} data packs", data.len());
    for p in &data[..20] {
        let mut bytes = fs::read(p).expect("pack");
        bytes[40 + 1000] ^= 0x80;
        fs::write(p, &bytes).expect("damaged");
    }
    let (code, r, err) = verify(&site, &["--read-data"]);
    assert_eq!(code, Some(3), "{err}");
    let objects = |r: &serde_json::Value| -> std::collections::BTreeSet<String> {
        let problems = r["problems"].as_array().cloned().unwrap_or_default();
        problems
            .iter()
            .filter_map(|p| p["object"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(objects(&r).len(), 20, "{r}");
    let mut found = std::collections::BTreeSet::new();
    let mut read = 0;
    for n in 1..=4 {
        let (_, r, _) = verify(&site, &["--read-data-subset", &format!("{n}/4")]);
        read += r["packs_read"].as_u64().expect("packs_read");
        found.extend(objects(&r));
    }
    assert_eq!(read, r["packs"].as_u64().expect("packs"));
    assert_eq!(found, objects(&r));
}

/// Archived heads are checked too: each must verify and name its tree and version.
#[test]
fn a_damaged_archived_head_is_found() {
    let (site, _) = published();
    site.publish();
    let (code, r, err) = verify(&site, &[]);
    assert_eq!((code, r["archived"].as_u64()), (Some(0), Some(2)), "{err}");
    let one = site.store().join("history/tree/00000000000000000001");
    let two = fs::read(site.store().join("history/tree/00000000000000000002")).expect("two");
    // Version 2's head under version 1's name: signed, but not what the name says.
    fs::write(&one, &two).expect("swap");
    let (code, r, err) = verify(&site, &[]);
    assert_eq!(code, Some(3), "{err}");
    let object = r["problems"][0]["object"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(object.ends_with("history/tree/00000000000000000001"), "{r}");
}
