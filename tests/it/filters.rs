//! Publishing a filtered tree: rsync's --filter, --include and --exclude in command-line
//! order, recorded in the signed head; the mirror carries exactly the selected paths.

use crate::common;

use common::{snapshot, Site};

#[test]
fn publish_carries_what_the_rules_select_and_the_head_says_which() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 81, 2).expect("generate");
    std::fs::write(site.src().join("big.iso"), b"iso").expect("iso");
    std::fs::create_dir_all(site.src().join("tmp/cache")).expect("tmp");
    std::fs::write(site.src().join("tmp/cache/x"), b"x").expect("x");
    std::fs::write(site.src().join("tmp/keep.iso"), b"keep").expect("keep");
    let out = site.try_publish(
        &site.key(),
        &[
            "--include",
            "/tmp/",
            "--include",
            "/tmp/keep.iso",
            "--exclude",
            "/tmp/*",
            "--filter",
            "- *.iso",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = site.sync();
    let rules: Vec<String> = r["filter"]
        .as_array()
        .expect("filter in --json")
        .iter()
        .map(|v| v.as_str().expect("str").to_string())
        .collect();
    assert_eq!(rules, ["+ /tmp/", "+ /tmp/keep.iso", "- /tmp/*", "- *.iso"]);
    let got = snapshot(&site.mirror());
    let expect: Vec<_> = snapshot(&site.src())
        .into_keys()
        .filter(|p| {
            let p = p.to_string_lossy();
            p == "tmp/keep.iso" || (!p.ends_with(".iso") && !p.starts_with("tmp/"))
        })
        .collect();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), expect);
    assert!(got.contains_key(std::path::Path::new("tmp/keep.iso")));

    // A bad rule names itself.
    let out = site.try_publish(&site.key(), &["--filter", "P /secret"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'P /secret'"), "{err}");
}

#[test]
fn files_a_new_rule_leaves_out_are_deleted_downstream() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 82, 2).expect("generate");
    std::fs::write(site.src().join("big.iso"), b"iso").expect("iso");
    site.publish();
    site.sync();
    assert!(site.mirror().join("big.iso").exists());
    // The same source, now published without its ISO images: the mirror loses them too,
    // as rsync --delete-excluded would.
    let out = site.try_publish(&site.key(), &["--exclude", "*.iso"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = site.sync();
    assert!(!site.mirror().join("big.iso").exists(), "{r}");
    assert!(r["deleted"].as_u64().expect("deleted") >= 1, "{r}");
    let mut expect = snapshot(&site.src());
    expect.remove(std::path::Path::new("big.iso"));
    let got = snapshot(&site.mirror());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expect.keys().collect::<Vec<_>>()
    );
}
