//! Rotating the signing key without a flag day: sites trust the old and the new key for a
//! while (one trust file may hold several), the publisher moves to the new key naming the old
//! one with --previous-key, then sites drop the old key; a head signed with a dropped key is
//! refused.

use crate::common;

use std::fs;

use common::{assert_same_tree, run, run_json, s, strs, sync_cmd, Site};

fn sync(site: &Site, trust: &str, mirror: &str) -> std::process::Output {
    let store = site.store();
    run(&strs(&sync_cmd(
        s(&store),
        "tree",
        trust,
        &site.p(mirror),
        &["--json"],
    )))
}

#[test]
fn key_rotation_without_a_flag_day() {
    let site = Site::new();
    let (old, new) = (site.p("old.key"), site.p("new.key"));
    for k in [&old, &new] {
        assert!(run(&["keygen", s(k)]).status.success());
    }
    let (old_pub, new_pub) = (format!("{}.pub", s(&old)), format!("{}.pub", s(&new)));
    // Step 1: sites trust both keys (one file with two keys).
    let both = site.p("both.pub");
    fs::write(
        &both,
        format!(
            "{}{}",
            fs::read_to_string(&old_pub).expect("old"),
            fs::read_to_string(&new_pub).expect("new")
        ),
    )
    .expect("trust file");
    pulpdist_testdata::generate(&site.src(), 71, 1).expect("generate");
    assert!(site.try_publish(&old, &[]).status.success());
    for (trust, mirror) in [(s(&both), "both"), (old_pub.as_str(), "old-only")] {
        let out = sync(&site, trust, mirror);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = sync(&site, &new_pub, "new-only");
    assert_eq!(
        out.status.code(),
        Some(3),
        "version 1 is signed by the old key"
    );

    // Step 2: the publisher moves to the new key. Without naming the old one it refuses.
    pulpdist_testdata::evolve(&site.src(), 71, 1).expect("evolve");
    let head_before = fs::read(site.store().join("heads/tree")).expect("head");
    let out = site.try_publish(&new, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--previous-key"));
    assert_eq!(
        head_before,
        fs::read(site.store().join("heads/tree")).expect("head")
    );
    let out = site.try_publish(&new, &["--previous-key", &old_pub]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Sites trusting both follow; a site left on the old key alone refuses and keeps v1.
    let r = run_json(&strs(&sync_cmd(
        s(&site.store()),
        "tree",
        s(&both),
        &site.p("both"),
        &[],
    )));
    assert_eq!(r["version"], 2);
    assert_same_tree(&site.src(), &site.p("both"));
    let out = sync(&site, &old_pub, "old-only");
    assert_eq!(out.status.code(), Some(3));
    assert!(sync(&site, &new_pub, "new-only").status.success());

    // Step 3: sites drop the old key. Someone still holding it signs a "newer" version:
    // refused by every site that dropped it.
    let forged = site.p("forged-store");
    assert!(std::process::Command::new("cp")
        .args(["-a", s(&site.store()), s(&forged)])
        .status()
        .expect("cp")
        .success());
    fs::write(site.src().join("backdoor"), b"x").expect("write");
    let out = run(&[
        "publish",
        "--store",
        s(&forged),
        "--tree",
        "tree",
        "--key",
        s(&old),
        "--previous-key",
        &new_pub,
        "--state",
        s(&site.p("forger-state")),
        s(&site.src()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&strs(&sync_cmd(
        s(&forged),
        "tree",
        &new_pub,
        &site.p("new-only"),
        &[],
    )));
    assert_eq!(
        out.status.code(),
        Some(3),
        "a head signed by a dropped key was accepted"
    );
    assert!(!site.p("new-only/backdoor").exists());
}
