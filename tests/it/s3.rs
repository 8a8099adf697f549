//! Publishing to a real S3-compatible server (s3s-fs): multipart uploads of large packs,
//! and the conditional head write that keeps two publishers from overwriting each other.

use crate::common;

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use pulpdist_format::SecretKey;
use pulpdist_publish::{publish, ObjectStoreTarget, PublishError, PublishOptions, Store};

use common::servers::{S3, S3_ACCESS_KEY, S3_SECRET_KEY};
use common::{assert_same_tree, s, Site};

fn bucket(s3: &S3, name: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(name)
            .with_endpoint(&s3.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET_KEY)
            .build()
            .expect("S3 client"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `pulpdist sync --json` of `site`'s tree from `store` on `s3`, with credentials and the
/// endpoint given as flags (the conformance suite uses the AWS_* variables); asserts success.
fn sync_from_s3(site: &Site, s3: &S3, store: &str, secret: &std::path::Path) -> serde_json::Value {
    let trust = format!("{}.pub", s(&site.key()));
    let mirror = site.mirror();
    let args = [
        "sync",
        "--store",
        store,
        "--tree",
        "tree",
        "--trust",
        &trust,
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-access-key-id",
        S3_ACCESS_KEY,
        "--s3-secret-key-file",
        s(secret),
        s(&mirror),
    ];
    common::run_json(&args)
}

#[test]
fn large_packs_go_up_in_parts_and_sync_back_identical() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 41, 8).expect("generate");
    let s3 = S3::start(&site.p("s3"), &["mirror"]);
    let rt = runtime();
    let target = ObjectStoreTarget::new(
        bucket(&s3, "mirror"),
        "pool",
        "s3://mirror/pool",
        rt.handle().clone(),
    )
    .with_part_size(5 << 20);
    let key = SecretKey::generate().expect("key");
    std::fs::write(site.key(), key.to_text()).expect("key file");
    std::fs::write(
        format!("{}.pub", s(&site.key())),
        key.public().to_text("test"),
    )
    .expect("pub file");
    let opts = PublishOptions::new("tree", site.src(), site.p("publish-state"));
    let report = publish(&target, &key, &opts).expect("publish to S3");
    let biggest = report.packs.iter().map(|p| p.size).max().expect("packs");
    assert!(
        biggest > 2 * (5 << 20),
        "want a pack of several parts, got {biggest}"
    );

    // Credentials and endpoint as flags this time (the conformance suite uses AWS_* variables).
    let secret = site.p("s3-secret");
    std::fs::write(&secret, format!("{S3_SECRET_KEY}\n")).expect("secret file");
    sync_from_s3(&site, &s3, "s3://mirror/pool", &secret);
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn the_head_is_replaced_only_if_unchanged() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 42, 1).expect("generate");
    let s3 = S3::start(&site.p("s3"), &["mirror"]);
    let rt = runtime();
    let target = ObjectStoreTarget::new(
        bucket(&s3, "mirror"),
        "",
        "s3://mirror",
        rt.handle().clone(),
    );
    let key = SecretKey::generate().expect("key");
    let a = PublishOptions::new("tree", site.src(), site.p("state-a"));
    publish(&target, &key, &a).expect("first publish");
    let seen = target.read_head("tree").expect("read").expect("a head");
    assert!(seen.etag.is_some(), "S3 gives the head an ETag");

    // Another publisher (its own state directory, so no shared local lock) moves on.
    let b = PublishOptions::new("tree", site.src(), site.p("state-b"));
    publish(&target, &key, &b).expect("second publisher");

    // Writing over what we read is refused: neither a first head nor a stale one.
    let err = target
        .put_head("tree", b"not a head", None, None)
        .expect_err("create over an existing head");
    assert!(matches!(err, PublishError::HeadChanged { .. }), "{err}");
    let err = target
        .put_head("tree", b"not a head", Some(&seen), Some(1))
        .expect_err("update from a stale head");
    assert!(matches!(err, PublishError::HeadChanged { .. }), "{err}");
    assert!(err.to_string().contains("changed during publish"), "{err}");

    // The store still holds the second publisher's version, intact.
    let now = target.read_head("tree").expect("read").expect("head");
    assert_ne!(now.bytes, b"not a head");
    assert_ne!(now.bytes, seen.bytes);
    // And the current one can be replaced by whoever read it.
    target
        .put_head("tree", &now.bytes, Some(&now), Some(2))
        .expect("conditional update from the current head");
}

/// Two real publishers race for one head on a real S3 server: one is held (a fail point)
/// after it read the head and before it writes its own; the other publishes meanwhile. The
/// held one's conditional PUT fails: exit 4, nothing published, and the store syncs to the
/// other's version.
#[test]
fn two_publishers_racing_on_s3_one_exits_4() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 43, 1).expect("generate");
    let s3 = S3::start(&site.p("s3"), &["race"]);
    let secret = site.p("s3-secret");
    std::fs::write(&secret, format!("{S3_SECRET_KEY}\n")).expect("secret file");
    let publish = |state: &str| {
        let mut a: Vec<String> = [
            "publish",
            "--store",
            "s3://race/p",
            "--tree",
            "tree",
            "--key",
            s(&site.key()),
            "--s3-endpoint",
            &s3.endpoint,
            "--s3-access-key-id",
            S3_ACCESS_KEY,
            "--s3-secret-key-file",
            s(&secret),
            "--state",
            s(&site.p(state)),
            "--json",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.push(s(&site.src()).to_string());
        a
    };
    let first = common::bin()
        .args(publish("state-a"))
        .output()
        .expect("publish");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    let release = site.p("release");
    let held = common::bin()
        .args(publish("state-a"))
        .env(
            "PULPDIST_FAILPOINT",
            format!("publish.head:1:wait:{}", s(&release)),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let reached = site.p("release.reached");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reached.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "publisher A never reached its head"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let other = common::bin()
        .args(publish("state-b"))
        .output()
        .expect("publish");
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let won: serde_json::Value = serde_json::from_slice(&other.stdout).expect("json");
    std::fs::write(&release, b"go").expect("release");
    let held = held.wait_with_output().expect("held");
    let err = String::from_utf8_lossy(&held.stderr);
    assert_eq!(held.status.code(), Some(4), "{err}");
    assert!(err.contains("changed during publish"), "{err}");

    let r = sync_from_s3(&site, &s3, "s3://race/p", &secret);
    assert_eq!(r["version"], won["version"], "{r}");
    assert_same_tree(&site.src(), &site.mirror());
}

/// Regression: the S3 reader read a head whole before checking the format's 1 MiB limit.
/// A 64 MiB object planted as a head is refused without being read, and the message says
/// why.
#[test]
fn an_oversized_head_on_s3_is_refused_unread() {
    let site = Site::new();
    let s3 = S3::start(&site.p("s3"), &["big"]);
    std::fs::create_dir_all(s3.root.join("big/heads")).expect("heads");
    let f = std::fs::File::create(s3.root.join("big/heads/tree")).expect("head file");
    f.set_len(64 << 20).expect("sparse 64 MiB");
    let out = common::bin_timed()
        .args([
            "sync",
            "--store",
            "s3://big",
            "--tree",
            "tree",
            "--trust",
            &site.trust(),
        ])
        .args([
            "--s3-endpoint",
            &s3.endpoint,
            "--s3-access-key-id",
            S3_ACCESS_KEY,
        ])
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        .arg(s(&site.mirror()))
        .output()
        .expect("/usr/bin/time (installed by ./scripts/test)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("head larger than"), "{err}");
    let kb = common::peak_rss_kb(&err);
    assert!(kb < 48 * 1024, "peak RSS {kb} kB: the head was read whole");
}
