//! nginx as a CDN edge (deploy/nginx/pulpdist-cdn.conf) in front of `pulpdist serve`:
//! the second downstream site is served from the edge's cache, as nginx's own log shows.

use crate::common;

use common::servers::{Builtin, Nginx};
use common::{assert_same_tree, run_json, strs, sync_cmd, Site};

fn sync_via(site: &Site, url: &str, mirror: &std::path::Path) -> serde_json::Value {
    run_json(&strs(&sync_cmd(url, "tree", &site.trust(), mirror, &[])))
}

/// The pack requests in log lines, with their cache status.
fn pack_lines(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains("/packs/")).collect()
}

#[test]
fn second_site_reads_packs_from_the_edge_cache() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 21, 4).expect("generate");
    site.publish();
    let origin = Builtin::start(&site.store());
    let edge = Nginx::start(&site.p("nginx"), &format!("127.0.0.1:{}", origin.port));

    let (a, b) = (site.p("site-a/tree"), site.p("site-b/tree"));
    let first = sync_via(&site, &edge.url, &a);
    assert_same_tree(&site.src(), &a);
    let before_b = edge.log_lines().len();
    let second = sync_via(&site, &edge.url, &b);
    assert_same_tree(&site.src(), &b);
    assert_eq!(first["requests"], second["requests"], "{first} {second}");

    let lines = edge.log_lines();
    let a_packs = pack_lines(&lines[..before_b]);
    let b_packs = pack_lines(&lines[before_b..]);
    assert!(!a_packs.is_empty(), "no pack requests logged: {lines:#?}");
    assert!(
        a_packs.iter().any(|l| l.contains("cache=MISS")),
        "site A came first, the edge must have fetched from the origin: {a_packs:#?}"
    );
    assert_eq!(b_packs.len(), a_packs.len(), "{lines:#?}");
    assert!(
        b_packs.iter().all(|l| l.contains("cache=HIT")),
        "site B's pack reads should all be cache hits: {b_packs:#?}"
    );

    // The origin served each pack byte once, whatever the number of sites.
    let host = origin.url.trim_start_matches("http://");
    let m = common::http::Conn::open(host).send("GET", "/metrics", &[]);
    let metrics = String::from_utf8_lossy(&m.body).into_owned();
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pulpdist_http_response_body_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("bytes metric");
    let fetched = second["bytes_fetched"].as_u64().expect("bytes");
    assert!(
        sent < fetched * 2,
        "origin sent {sent} bytes for two sites of {fetched} bytes each"
    );
}
