//! Archived heads, `pulpdist log` and `pulpdist diff`.

use crate::common;

use std::fs;

use common::{run, s, Site};

fn json(site: &Site, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let (store, trust) = (site.store(), site.trust());
    let mut a = vec![
        args[0],
        "--store",
        s(&store),
        "--tree",
        "tree",
        "--trust",
        &trust,
    ];
    a.extend(&args[1..]);
    a.push("--json");
    let out = run(&a);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn versions_are_archived_listed_and_compared() {
    let site = Site::new();
    let src = site.src();
    fs::write(src.join("a"), vec![1u8; 100]).expect("a");
    fs::write(src.join("b"), vec![2u8; 200]).expect("b");
    site.publish();
    fs::write(src.join("a"), vec![3u8; 150]).expect("a changed");
    fs::remove_file(src.join("b")).expect("b removed");
    fs::write(src.join("c"), vec![4u8; 50]).expect("c");
    fs::create_dir(src.join("d")).expect("d");
    fs::write(src.join("d/e"), vec![5u8; 70]).expect("d/e");
    site.publish();
    site.publish(); // unchanged: a version with the same root and no new packs
    let (code, log, err) = json(&site, &["log"]);
    assert_eq!(code, Some(0), "{err}");
    let col = |k: &str| -> Vec<u64> {
        let rows = log.as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|r| r[k].as_u64().unwrap_or(u64::MAX))
            .collect()
    };
    assert_eq!(col("version"), [1, 2, 3], "{log}");
    assert_eq!(col("files"), [2, 3, 3], "{log}");
    assert_eq!(col("bytes"), [300, 270, 270], "{log}");
    assert!(col("new_bytes")[0] > 0 && col("new_bytes")[2] == 0, "{log}");
    let (code, d, err) = json(&site, &["diff", "1", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let paths: Vec<(String, String)> = d["paths"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap_or("").into(),
                p["change"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let want = [
        ("a", "changed"),
        ("b", "removed"),
        ("c", "added"),
        ("d/e", "added"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(paths, want, "{d}");
    assert_eq!(d["stat"]["bytes_added"], 120, "{d}");
    let (_, stat, _) = json(&site, &["diff", "2", "3", "--stat"]);
    assert_eq!(
        (stat["added"].as_u64(), stat["changed"].as_u64()),
        (Some(0), Some(0)),
        "{stat}"
    );
    // A version never published: an error naming it (exit 1), not an empty diff.
    let (code, _, err) = json(&site, &["diff", "1", "9"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("00000000000000000009"), "{err}");
}

#[test]
fn an_archived_head_is_verified_and_a_missing_one_is_archived_again() {
    let site = Site::new();
    fs::write(site.src().join("a"), b"a").expect("a");
    site.publish();
    site.publish();
    let history = site.store().join("history/tree");
    // Killed between the head and its archived copy: the next publish archives it first.
    fs::remove_file(history.join("00000000000000000002")).expect("remove");
    site.publish();
    let mut names: Vec<String> = fs::read_dir(&history)
        .expect("history")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    // A damaged archived head is refused (exit 3), like any head.
    let one = history.join("00000000000000000001");
    let mut bytes = fs::read(&one).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&one, &bytes).expect("damage");
    let (code, log, err) = json(&site, &["log"]);
    assert_eq!(code, Some(3), "{err}");
    // The damaged version is named; the others are still listed.
    let rows = log.as_array().cloned().unwrap_or_default();
    let problems: Vec<bool> = rows.iter().map(|r| !r["problem"].is_null()).collect();
    assert_eq!(problems, [true, false, false], "{log}");
}
