//! `serve` over TLS with client certificates and per-tree authorization, made with
//! `pulpdist ca` (and with openssl): a site reads only what its trees reach.

use crate::common;

use std::fs;
use std::path::{Path, PathBuf};

use common::servers::Proc;
use common::{assert_same_tree, bin, run, s, snapshot};

/// Which publisher key `serve --trust` is given.
#[derive(Clone, Copy)]
enum Trust {
    None,
    Publisher,
    Other,
}

/// A store with two trees, `a` and `b`, where `b` shares files (and so packs) with `a`,
/// served over HTTPS with client certificates from `pulpdist ca`.
struct Tls {
    dir: tempfile::TempDir,
    url: String,
    server: Proc,
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "pulpdist {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Tls {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start(authz: &str, crl: bool) -> Tls {
        Tls::start_with(authz, crl, Trust::None)
    }

    fn start_with(authz: &str, crl: bool, trust: Trust) -> Tls {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |r: &str| dir.path().join(r);
        let ca = p("ca");
        ok(&["ca", "init", "--dir", s(&ca)]);
        ok(&[
            "ca",
            "issue",
            "--dir",
            s(&ca),
            "--site",
            "server",
            "--server",
            "--dns",
            "localhost",
        ]);
        for site in ["berlin", "tokyo", "nobody"] {
            ok(&["ca", "issue", "--dir", s(&ca), "--site", site]);
        }
        ok(&["keygen", s(&p("up.key"))]);
        // Tree a: a generated repository. Tree b: some of a's files plus its own.
        pulpdist_testdata::generate(&p("src/a"), 51, 3).expect("generate a");
        pulpdist_testdata::generate(&p("src/b"), 52, 1).expect("generate b");
        let shared = p("src/b/shared");
        fs::create_dir_all(&shared).expect("shared dir");
        for (i, (path, _)) in snapshot(&p("src/a"))
            .into_iter()
            .filter(|(_, d)| d.starts_with("file"))
            .take(5)
            .enumerate()
        {
            fs::copy(p("src/a").join(&path), shared.join(format!("f{i}"))).expect("copy");
        }
        // Tree c: one directory with one file of its own, so no node or chunk of it is shared.
        fs::create_dir_all(p("src/c")).expect("c");
        let unique: Vec<u8> = common::noise(300_000, 13);
        fs::write(p("src/c/secret.bin"), unique).expect("c file");
        for tree in ["a", "b", "c"] {
            ok(&[
                "publish",
                "--store",
                s(&p("store")),
                "--tree",
                tree,
                "--key",
                s(&p("up.key")),
                s(&p(&format!("src/{tree}"))),
            ]);
        }
        fs::write(p("authz"), authz).expect("authz");
        if crl {
            ok(&["ca", "revoke", "--dir", s(&ca), "--site", "nobody"]);
        }
        let mut args = vec![
            "serve".to_string(),
            "--store".into(),
            s(&p("store")).into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            s(&ca.join("server.pem")).into(),
            "--tls-key".into(),
            s(&ca.join("server.key")).into(),
            "--client-ca".into(),
            s(&ca.join("ca.pem")).into(),
            "--authz".into(),
            s(&p("authz")).into(),
        ];
        if crl {
            args.extend(["--crl".into(), s(&ca.join("crl.pem")).into()]);
        }
        match trust {
            Trust::None => {}
            Trust::Publisher => {
                args.extend(["--trust".into(), format!("{}.pub", s(&p("up.key")))]);
            }
            Trust::Other => {
                ok(&["keygen", s(&p("other.key"))]);
                args.extend(["--trust".into(), format!("{}.pub", s(&p("other.key")))]);
            }
        }
        let (server, port) = common::servers::spawn_serve(&args[1..]);
        Tls {
            url: format!("https://localhost:{port}"),
            server,
            dir,
        }
    }

    /// `pulpdist sync` of `tree` as `site` (None: no client certificate).
    fn sync(&self, site: Option<&str>, tree: &str, mirror: &Path) -> std::process::Output {
        let ca = self.p("ca");
        let mut a = vec![
            "sync".to_string(),
            "--store".into(),
            self.url.clone(),
            "--tree".into(),
            tree.into(),
            "--trust".into(),
            format!("{}.pub", s(&self.p("up.key"))),
            "--ca".into(),
            s(&ca.join("ca.pem")).into(),
            "--retries".into(),
            "0".into(),
            "--json".into(),
        ];
        if let Some(site) = site {
            a.extend(self.cert_args(site));
        }
        a.push(s(mirror).into());
        bin().args(&a).output().expect("sync")
    }

    /// `--cert` and `--key` of `site`'s client certificate.
    fn cert_args(&self, site: &str) -> [String; 4] {
        let ca = self.p("ca");
        [
            "--cert".into(),
            s(&ca.join(format!("{site}.pem"))).into(),
            "--key".into(),
            s(&ca.join(format!("{site}.key"))).into(),
        ]
    }

    /// A raw GET as `site`: status, body, and headers other than Date.
    fn get(&self, site: &str, path: &str) -> (u16, Vec<u8>, Vec<(String, String)>) {
        let agent = self.agent(site);
        let resp = agent
            .get(&format!("{}{path}", self.url))
            .call()
            .expect("GET");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp.into_body().read_to_vec().expect("body");
        (status, body, headers)
    }

    /// An HTTPS client with `site`'s certificate, which keeps its connections open.
    fn agent(&self, site: &str) -> ureq::Agent {
        let ca = self.p("ca");
        let pem = |f: &str| fs::read(ca.join(f)).expect("pem");
        let chain = ureq::tls::parse_pem(&pem(&format!("{site}.pem")))
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        let key = ureq::tls::PrivateKey::from_pem(&pem(&format!("{site}.key"))).expect("key");
        let roots = ureq::tls::parse_pem(&pem("ca.pem"))
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)))
            .build();
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .tls_config(tls)
            .build()
            .into()
    }

    fn packs_of(&self, tree: &str) -> Vec<String> {
        // The packs a tree's head lists (its own versions' packs).
        let bytes = fs::read(self.p("store/heads").join(tree)).expect("head");
        let (head, _, _) = pulpdist_format::Head::decode_unverified(&bytes).expect("head");
        head.recent
            .iter()
            .flat_map(|v| v.packs.iter().map(|p| p.id.to_hex()))
            .collect()
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn each_site_reads_only_what_its_trees_reach() {
    let t = Tls::start(
        "[read]\n\"cn:berlin\" = [\"a\", \"c\"]\n\"cn:tokyo\" = [\"b\"]\n",
        false,
    );
    let (ma, mb) = (t.p("berlin/a"), t.p("tokyo/b"));
    json(&t.sync(Some("berlin"), "a", &ma));
    assert_same_tree(&t.p("src/a"), &ma);
    // Tokyo's tree shares files with a: it reads a's data pack through b's index.
    let r = json(&t.sync(Some("tokyo"), "b", &mb));
    assert_same_tree(&t.p("src/b"), &mb);
    assert!(r["chunks_fetched"].as_u64().expect("n") > 0);

    // Another tree's head: refused exactly as a missing tree is; nothing written.
    let denied = t.p("tokyo/a");
    let out = t.sync(Some("tokyo"), "a", &denied);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no tree 'a'"), "{err}");
    assert!(!denied.exists());

    // Packs of c are not reachable from b: tokyo gets a 404 identical to the one for a pack
    // that does not exist, and no byte of them; berlin, granted c, gets them.
    let missing = format!("/packs/{}.pack", "ab".repeat(32));
    let (s404, body404, h404) = t.get("tokyo", &missing);
    assert_eq!(s404, 404);
    let c_packs = t.packs_of("c");
    assert!(!c_packs.is_empty());
    for p in &c_packs {
        let (st, body, h) = t.get("tokyo", &format!("/packs/{p}.pack"));
        assert_eq!(st, 404, "tokyo read c's pack {p}");
        assert!(
            body == body404 && h == h404,
            "the refusal differs from a missing pack"
        );
        let (st, body, _) = t.get("berlin", &format!("/packs/{p}.pack"));
        assert_eq!(st, 200);
        assert!(body == fs::read(t.p(&format!("store/packs/{p}.pack"))).expect("pack"));
    }
    let (st, _, _) = t.get("tokyo", "/heads/a");
    assert_eq!(st, 404);
    let (st, _, _) = t.get("tokyo", "/heads/b");
    assert_eq!(st, 200);
    // A data pack of a that b's shared files use: readable by both.
    let b_reaches_a = t
        .packs_of("a")
        .iter()
        .filter(|p| t.get("tokyo", &format!("/packs/{p}.pack")).0 == 200)
        .count();
    assert!(b_reaches_a > 0, "b shares a's packs");
    // Metrics are for operators: a certificate granted every tree.
    assert_eq!(t.get("berlin", "/metrics").0, 404);
}

#[test]
fn no_certificate_another_ca_or_no_grant_gets_nothing() {
    let t = Tls::start("[read]\n\"cn:berlin\" = [\"a\"]\n", false);
    // No client certificate: the handshake fails.
    let m = t.p("anon/a");
    let out = t.sync(None, "a", &m);
    assert_eq!(out.status.code(), Some(1));
    assert!(!m.exists());
    // A certificate from another CA (same site name).
    let other = t.p("other");
    ok(&["ca", "init", "--dir", s(&other)]);
    ok(&["ca", "issue", "--dir", s(&other), "--site", "berlin"]);
    for f in ["berlin.pem", "berlin.key"] {
        fs::copy(other.join(f), t.p("ca").join(format!("forged-{f}"))).expect("copy");
    }
    let out = t.sync(Some("forged-berlin"), "a", &m);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!m.exists(), "{err}");
    // A valid certificate with no grant.
    let out = t.sync(Some("tokyo"), "a", &m);
    assert_eq!(out.status.code(), Some(1));
    assert!(!m.exists());
}

#[test]
fn revocation_and_authorization_changes_apply_without_restart() {
    let mut t = Tls::start(
        "[read]\n\"cn:berlin\" = [\"a\"]\n\"cn:nobody\" = [\"a\"]\n",
        true,
    );
    // Revoked at start: refused.
    let m = t.p("nobody/a");
    assert_eq!(t.sync(Some("nobody"), "a", &m).status.code(), Some(1));
    assert!(!m.exists());
    // Berlin may read a, not b; grant b by rewriting the file: applied within a second.
    let mb = t.p("berlin/b");
    assert_eq!(t.sync(Some("berlin"), "b", &mb).status.code(), Some(1));
    let tmp = t.p("authz.new");
    fs::write(&tmp, "[read]\n\"cn:berlin\" = [\"a\", \"b\"]\n").expect("authz");
    fs::rename(&tmp, t.p("authz")).expect("replace authz");
    // Applied within about a second (the file is checked at most once a second): polled
    // with a deadline, not slept for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.sync(Some("berlin"), "b", &mb).status.code() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new grant never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_same_tree(&t.p("src/b"), &mb);

    // A broken authorization file is refused and the rules in force stay: berlin still
    // reads a and b.
    let hup = |t: &Tls| {
        std::process::Command::new("kill")
            .args(["-HUP", &t.server.child.id().to_string()])
            .status()
            .expect("kill -HUP")
    };
    fs::write(t.p("authz"), "this is not a rule\n").expect("authz");
    hup(&t);
    t.server.wait_log("keeping the previous rules", 1);
    t.server.wait_log("reloaded TLS certificates", 1);
    let mb2 = t.p("berlin/b2");
    json(&t.sync(Some("berlin"), "b", &mb2));
    assert_same_tree(&t.p("src/b"), &mb2);
    assert!(
        t.server.child.try_wait().expect("wait").is_none(),
        "serve died"
    );

    // Revoke berlin too, and SIGHUP: once reloaded, berlin's next connection is refused,
    // and so is the next request on a connection it opened before (regression: a revoked
    // certificate kept reading over a connection opened before the SIGHUP).
    let berlin = t.agent("berlin");
    let read = |a: &ureq::Agent| {
        // The body read to its end, so that the connection goes back to the pool.
        a.get(&format!("{}/heads/a", t.url)).call().ok().map(|r| {
            let status = r.status().as_u16();
            let _ = r.into_body().read_to_vec();
            status
        })
    };
    assert_eq!(read(&berlin), Some(200));
    ok(&["ca", "revoke", "--dir", s(&t.p("ca")), "--site", "berlin"]);
    hup(&t);
    t.server.wait_log("reloaded TLS certificates", 2);
    t.server.wait_log(
        "closed a connection whose client certificate is now revoked",
        1,
    );
    assert_eq!(read(&berlin), None, "a revoked site still reads");
    let ma = t.p("berlin/a");
    let out = t.sync(Some("berlin"), "a", &ma);
    assert_eq!(
        out.status.code(),
        Some(1),
        "revoked certificate still accepted"
    );
    assert!(!ma.exists());
    let _ = &mut t;
}

#[test]
fn a_config_file_carries_the_same_settings() {
    let t = Tls::start("[read]\n\"cn:berlin\" = [\"a\"]\n", false);
    let ca = t.p("ca");
    let conf = t.p("berlin.conf");
    fs::write(
        &conf,
        format!(
            "# site berlin\nstore = {:?}\ntree = \"a\"\ndest = {:?}\ntrust = [\"{}.pub\"]\n\
             cert = {:?}\nkey = {:?}\nca = {:?}\nretries = 0\n",
            t.url,
            s(&t.p("berlin/a")),
            s(&t.p("up.key")),
            s(&ca.join("berlin.pem")),
            s(&ca.join("berlin.key")),
            s(&ca.join("ca.pem")),
        ),
    )
    .expect("config");
    let out = run(&["sync", "--config", s(&conf), "--json"]);
    json(&out);
    assert_same_tree(&t.p("src/a"), &t.p("berlin/a"));
    // A flag wins over the file: another tree is refused for berlin.
    let out = run(&["sync", "--config", s(&conf), "--tree", "b"]);
    assert_eq!(out.status.code(), Some(1));
    // A malformed file names its line.
    fs::write(&conf, "store = \"x\"\nconnections = \"lots\"\n").expect("config");
    let out = run(&["sync", "--config", s(&conf)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains(s(&conf)), "{err}");
    // A file in the old `key = value` format is told what to write instead.
    fs::write(&conf, "store = x\ntrust = a.pub\n").expect("config");
    let out = run(&["sync", "--config", s(&conf)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in TOML it reads:\nstore = \"x\"\ntrust = [\"a.pub\"]"),
        "{err}"
    );
}

#[test]
fn certificates_made_with_openssl_work_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let script = r#"
set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=openssl site CA" -keyout ca.key -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in server berlin; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" \
    -keyout $who.key -out $who.csr 2>/dev/null
done
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=nobody/CN=berlin" \
  -keyout twocn.key -out twocn.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > berlin.ext
cp berlin.ext twocn.ext
for who in server berlin twocn; do
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile $who.ext -out $who.pem 2>/dev/null
done
"#;
    let st = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(d)
        .status()
        .expect("openssl (installed by ./scripts/test)");
    assert!(st.success(), "openssl failed");
    ok(&["keygen", s(&d.join("up.key"))]);
    pulpdist_testdata::generate(&d.join("src"), 53, 1).expect("generate");
    ok(&[
        "publish",
        "--store",
        s(&d.join("store")),
        "--tree",
        "t",
        "--key",
        s(&d.join("up.key")),
        s(&d.join("src")),
    ]);
    fs::write(d.join("authz"), "[read]\n\"cn:berlin\" = [\"t\"]\n").expect("authz");
    let (_server, port) = common::servers::spawn_serve(&[
        "--store",
        s(&d.join("store")),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        s(&d.join("server.pem")),
        "--tls-key",
        s(&d.join("server.key")),
        "--client-ca",
        s(&d.join("ca.pem")),
        "--authz",
        s(&d.join("authz")),
    ]);
    let url = format!("https://localhost:{port}");
    let sync_as = |who: &str, mirror: &str| {
        run(&[
            "sync",
            "--store",
            &url,
            "--tree",
            "t",
            "--trust",
            &format!("{}.pub", s(&d.join("up.key"))),
            "--ca",
            s(&d.join("ca.pem")),
            "--cert",
            s(&d.join(format!("{who}.pem"))),
            "--key",
            s(&d.join(format!("{who}.key"))),
            s(&d.join(mirror)),
        ])
    };
    let out = sync_as("berlin", "mirror");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&d.join("src"), &d.join("mirror"));
    // Regression: every subject CN counted, so `CN=nobody, CN=berlin` got berlin's grants.
    // A certificate with several CNs is granted nothing.
    let out = sync_as("twocn", "mirror2");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no tree 't'"), "{err}");
    assert!(!d.join("mirror2").exists());
}

#[test]
fn with_trust_only_signed_heads_open_a_trees_packs() {
    // The publisher's key: everything works as before.
    let t = Tls::start_with("[read]\n\"cn:berlin\" = [\"a\"]\n", false, Trust::Publisher);
    json(&t.sync(Some("berlin"), "a", &t.p("berlin/a")));
    assert_same_tree(&t.p("src/a"), &t.p("berlin/a"));
    // Another key (as if the head had been planted): the head is served (clients check it
    // themselves), but none of the tree's packs.
    let t = Tls::start_with("[read]\n\"cn:berlin\" = [\"a\"]\n", false, Trust::Other);
    assert_eq!(t.get("berlin", "/heads/a").0, 200);
    for p in t.packs_of("a") {
        assert_eq!(t.get("berlin", &format!("/packs/{p}.pack")).0, 404, "{p}");
    }
    let m = t.p("berlin/a");
    assert_eq!(t.sync(Some("berlin"), "a", &m).status.code(), Some(1));
    assert!(!m.join("dists").exists());
}

#[test]
fn iso_rebuild_fetches_over_tls_as_a_granted_site_only() {
    let t = Tls::start(
        "[read]\n\"cn:berlin\" = [\"c\"]\n\"cn:tokyo\" = [\"b\"]\n",
        false,
    );
    // An image of tree c's files; its template names their chunks, which only c's packs
    // hold.
    let image = t.p("c.iso");
    common::xorriso(&t.p("src/c"), &image, &[]);
    let template = t.p("c.template");
    ok(&["iso", "template", s(&image), "--out", s(&template)]);
    fs::create_dir_all(t.p("empty")).expect("empty");
    let rebuild = |site: &str, out: &Path| {
        bin()
            .args([
                "iso",
                "rebuild",
                s(&template),
                "--from",
                s(&t.p("empty")),
                "--store",
                &t.url,
                "--tree",
                "c",
                "--trust",
                &format!("{}.pub", s(&t.p("up.key"))),
                "--ca",
                s(&t.p("ca/ca.pem")),
                "--out",
                s(out),
                "--json",
            ])
            .args(t.cert_args(site))
            .output()
            .expect("rebuild")
    };
    // Berlin, granted c, fetches every file chunk and gets the image byte for byte.
    let rebuilt = t.p("berlin.iso");
    let r = json(&rebuild("berlin", &rebuilt));
    let n = |k: &str| r[k].as_u64().expect("count");
    assert_eq!(n("bytes_from_local"), 0, "{r}");
    assert_eq!(n("image_size") - n("bytes_from_template"), 300_000, "{r}");
    assert!(n("bytes_fetched") > 0, "{r}");
    assert!(fs::read(&rebuilt).expect("image") == fs::read(&image).expect("image"));
    // Tokyo, not granted c, sees no such tree and writes nothing.
    let denied = t.p("tokyo.iso");
    let out = rebuild("tokyo", &denied);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no tree 'c'"), "{err}");
    assert!(!denied.exists());
}
