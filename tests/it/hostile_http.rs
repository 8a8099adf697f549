//! A store that lies over HTTP (corrupt bytes, truncated bodies, a wrong Content-Length,
//! endless data, no answer) and a disk that fills up: each sync ends with a clear error, the
//! mirror keeps its previous version, and a later honest sync completes.

use crate::common;

use common::evil::{Evil, Lie};
use common::servers::Builtin;
use common::{assert_same_tree, run, run_json, s, snapshot, tmpfs, Site};

/// A site at version 1 (synced over HTTP) with version 2 published but not synced.
fn one_behind(
    seed: u64,
) -> (
    Site,
    Builtin,
    std::collections::BTreeMap<std::path::PathBuf, String>,
) {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), seed, 3).expect("generate");
    site.publish();
    let server = Builtin::start(&site.store());
    sync_via(&site, &server.url, &[]);
    let v1 = snapshot(&site.mirror());
    pulpdist_testdata::evolve(&site.src(), seed, 1).expect("evolve");
    site.publish();
    (site, server, v1)
}

fn sync_via(site: &Site, url: &str, extra: &[&str]) -> serde_json::Value {
    let key = format!("{}.pub", s(&site.key()));
    let mirror = site.mirror();
    let mut a = vec!["sync", "--store", url, "--tree", "tree", "--trust", &key];
    a.extend_from_slice(extra);
    a.push(s(&mirror));
    run_json(&a)
}

fn try_sync(site: &Site, url: &str, extra: &[&str]) -> std::process::Output {
    let key = format!("{}.pub", s(&site.key()));
    let mirror = site.mirror();
    let mut a = vec!["sync", "--store", url, "--tree", "tree", "--trust", &key];
    if !extra.contains(&"--retries") {
        a.extend(["--retries", "1"]);
    }
    a.extend_from_slice(extra);
    a.push(s(&mirror));
    run(&a)
}

/// The lie ends in `code` with `needle` in the message; nothing changed; honesty completes.
fn refused(lie: Lie, code: i32, needle: &str, extra: &[&str]) {
    let (site, server, v1) = one_behind(61);
    let evil = Evil::start(&site.store(), lie);
    let out = try_sync(&site, &evil.url, extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{lie:?}: {err}");
    assert!(
        err.contains(needle) && err.contains(&evil.url),
        "{lie:?}: the message should name the URL and say '{needle}': {err}"
    );
    common::assert_same_snapshot(
        &v1,
        &snapshot(&site.mirror()),
        &format!("{lie:?} changed the mirror"),
    );
    let r = sync_via(&site, &server.url, &[]);
    assert_eq!(r["previous_version"], 1, "{lie:?}: {r}");
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn corrupted_pack_bytes() {
    refused(Lie::CorruptPacks, 3, "hash", &[]);
}

#[test]
fn truncated_bodies() {
    refused(Lie::TruncatePacks, 1, "reading the body", &[]);
}

#[test]
fn wrong_content_length() {
    // The body ends before the bytes its Content-Length promised.
    refused(
        Lie::LongContentLength,
        1,
        "reading the body: Peer disconnected",
        &[],
    );
}

#[test]
fn endless_data() {
    // The head is read up to its size limit and refused; no more is read.
    refused(Lie::Endless, 3, "head", &[]);
}

/// Regression: an origin that answers a range request with the whole object (and more)
/// made the reader buffer up to 16 GiB per connection. It now reads no more than the pack's
/// signed size: the first sync (its index nodes come by ranges) fails cleanly, with a peak
/// memory far below the 512 MiB sent.
#[test]
fn a_range_answered_with_a_huge_body_is_not_buffered() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 62, 1).expect("generate");
    site.publish();
    let evil = Evil::start(&site.store(), Lie::HugeForRange);
    let key = format!("{}.pub", s(&site.key()));
    let out = common::bin_timed()
        .args([
            "sync", "--store", &evil.url, "--tree", "tree", "--trust", &key,
        ])
        .args(["--retries", "0", s(&site.mirror())])
        .output()
        .expect("/usr/bin/time (installed by ./scripts/test)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&evil.url) && err.contains("more than"),
        "{err}"
    );
    let kb = common::peak_rss_kb(&err);
    assert!(kb < 200 * 1024, "peak RSS {kb} kB: the junk was buffered");
    assert!(!site.mirror().exists(), "a failed first sync left a mirror");
}

#[test]
fn no_answer_times_out() {
    refused(
        Lie::Slow(30),
        1,
        "timeout",
        &["--timeout", "1", "--retries", "0"],
    );
}

#[test]
fn a_full_disk_fails_cleanly_and_the_mirror_keeps_its_version() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 62, 3).expect("generate");
    site.publish();
    let disk = site.p("downstream");
    let _mount = tmpfs(&disk, 24);
    // Version 1 fits (mirror and client state both live on the small disk).
    site.sync();
    let v1 = snapshot(&site.mirror());
    // Version 2 adds more than is left.
    let big: Vec<u8> = common::noise(20_000_000, 11);
    std::fs::write(site.src().join("pool/huge.iso"), big).expect("big file");
    site.publish();
    let out = site.try_sync(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    common::assert_same_snapshot(
        &v1,
        &snapshot(&site.mirror()),
        "a full disk changed the mirror",
    );
    // Room again: the next sync completes.
    let st = std::process::Command::new("mount")
        .args(["-o", "remount,size=96m", s(&disk)])
        .status()
        .expect("remount");
    assert!(st.success());
    let r = site.sync();
    assert_eq!(r["previous_version"], 1, "{r}");
    assert_same_tree(&site.src(), &site.mirror());
}
