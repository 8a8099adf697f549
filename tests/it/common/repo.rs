//! A small but real-shaped package repository for the ordering and kill-point tests: a
//! Debian archive (pool, `Packages` with `Filename`/`Size`/`SHA256`, `by-hash` copies,
//! `Release` and `InRelease` listing the indexes) and an RPM repository (`repodata/` with a
//! hash-named primary index and `repomd.xml` naming it), plus the changes a real update
//! makes: upgraded packages (old files gone), a mode change, a file replaced by a directory
//! and a directory by a file, a re-pointed symlink.
//!
//! [`check`] parses every index on a mirror and says which entry names a file that is not
//! there with the hash it states: the rule a sync must keep at every instant.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;

const PACKAGES: u32 = 12;
const BASE: i64 = 1_767_225_600;

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    let mut out = vec![0u8; len];
    h.finalize_xof().fill(&mut out);
    out
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32, mtime: i64) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, data).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    filetime::set_file_mtime(&p, FileTime::from_unix_time(mtime, 0)).expect("mtime");
}

/// The version of package `i` in repository version `v` (every third is upgraded in v2).
fn pkg_version(i: u32, v: u32) -> u32 {
    if v >= 2 && i.is_multiple_of(3) {
        2
    } else {
        1
    }
}

/// Writes version `v` (1 or 2) of the repository into the empty directory `root`.
pub(crate) fn write(root: &Path, v: u32) {
    let mtime = BASE + i64::from(v) * 86_400;
    for comp in ["main", "contrib"] {
        let mut packages = String::new();
        for i in 0..PACKAGES {
            let pv = pkg_version(i, v);
            let rel = format!("pool/{comp}/p{i}/p{i}_{pv}_amd64.deb");
            let data = bytes(
                i * 100 + pv + u32::from(comp == "contrib") * 10_000,
                3_000 + (i as usize * 2_711) % 40_000,
            );
            put(root, &rel, &data, 0o644, BASE + i64::from(pv));
            packages.push_str(&format!(
                "Package: p{i}\nVersion: {pv}\nArchitecture: amd64\nFilename: {rel}\nSize: {}\nSHA256: {}\n\n",
                data.len(),
                sha256(&data)
            ));
        }
        let dir = format!("dists/stable/{comp}/binary-amd64");
        put(
            root,
            &format!("{dir}/Packages"),
            packages.as_bytes(),
            0o644,
            mtime,
        );
        put(
            root,
            &format!("{dir}/by-hash/SHA256/{}", sha256(packages.as_bytes())),
            packages.as_bytes(),
            0o644,
            mtime,
        );
        put(
            root,
            &format!("{dir}/Release"),
            format!("Component: {comp}\n").as_bytes(),
            0o644,
            BASE,
        );
    }
    let mut release = format!("Suite: stable\nDate: day {v}\nSHA256:\n");
    for comp in ["main", "contrib"] {
        let p = fs::read(root.join(format!("dists/stable/{comp}/binary-amd64/Packages")))
            .expect("Packages");
        release.push_str(&format!(
            " {} {} {comp}/binary-amd64/Packages\n",
            sha256(&p),
            p.len()
        ));
    }
    put(
        root,
        "dists/stable/Release",
        release.as_bytes(),
        0o644,
        mtime,
    );
    put(
        root,
        "dists/stable/InRelease",
        format!("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{release}-----BEGIN PGP SIGNATURE-----\nx\n-----END PGP SIGNATURE-----\n").as_bytes(),
        0o644,
        mtime,
    );
    std::os::unix::fs::symlink("stable", root.join("dists/bookworm")).expect("suite link");
    if v == 1 {
        // A suite dropped in version 2 with its packages: a whole directory of indexes,
        // and the pool directory they name, are deleted.
        let mut packages = String::new();
        for i in 0..3 {
            let rel = format!("pool/old/o{i}/o{i}_1_amd64.deb");
            let data = bytes(90_000 + i, 5_000);
            put(root, &rel, &data, 0o644, BASE);
            packages.push_str(&format!(
                "Package: o{i}\nFilename: {rel}\nSize: {}\nSHA256: {}\n\n",
                data.len(),
                sha256(&data)
            ));
        }
        let p = "dists/oldstable/main/binary-amd64/Packages";
        put(root, p, packages.as_bytes(), 0o644, BASE);
        let release = format!(
            "Suite: oldstable\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            sha256(packages.as_bytes()),
            packages.len()
        );
        put(
            root,
            "dists/oldstable/Release",
            release.as_bytes(),
            0o644,
            BASE,
        );
        put(
            root,
            "dists/oldstable/InRelease",
            release.as_bytes(),
            0o644,
            BASE,
        );
    }

    // RPM: packages, a hash-named primary index, repomd.xml naming it.
    let mut primary = String::from("<metadata>\n");
    for i in 0..PACKAGES / 2 {
        let pv = pkg_version(i, v);
        let rel = format!("Packages/q{i}-{pv}.rpm");
        let data = bytes(50_000 + i * 100 + pv, 2_000 + i as usize * 997);
        put(
            root,
            &format!("rpm/{rel}"),
            &data,
            0o644,
            BASE + i64::from(pv),
        );
        primary.push_str(&format!(
            "<package><checksum type=\"sha256\">{}</checksum><location href=\"{rel}\"/><size package=\"{}\"/></package>\n",
            sha256(&data),
            data.len()
        ));
    }
    primary.push_str("</metadata>\n");
    let ph = sha256(primary.as_bytes());
    put(
        root,
        &format!("rpm/repodata/{ph}-primary.xml"),
        primary.as_bytes(),
        0o644,
        mtime,
    );
    put(
        root,
        "rpm/repodata/repomd.xml",
        format!(
            "<repomd>\n<data type=\"primary\"><checksum type=\"sha256\">{ph}</checksum><location href=\"repodata/{ph}-primary.xml\"/><size>{}</size></data>\n</repomd>\n",
            primary.len()
        )
        .as_bytes(),
        0o644,
        mtime,
    );

    // What else an update does.
    put(
        root,
        "docs/README",
        b"read me\n",
        if v == 1 { 0o644 } else { 0o755 },
        BASE,
    );
    if v == 1 {
        put(root, "docs/becomes-dir", b"a file in v1\n", 0o644, BASE);
        put(
            root,
            "docs/becomes-file/inside",
            b"a directory in v1\n",
            0o644,
            BASE,
        );
    } else {
        put(
            root,
            "docs/becomes-dir/inside",
            b"a directory in v2\n",
            0o644,
            BASE,
        );
        put(root, "docs/becomes-file", b"a file in v2\n", 0o644, BASE);
    }
    std::os::unix::fs::symlink(
        format!("../pool/main/p0/p0_{}_amd64.deb", pkg_version(0, v)),
        root.join("docs/latest"),
    )
    .expect("link");
    for d in ["docs", "dists/stable", "rpm", "pool"] {
        filetime::set_file_mtime(root.join(d), FileTime::from_unix_time(mtime, 0))
            .expect("dir mtime");
    }
}

fn walk(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => walk(&p, out),
            Ok(md) if md.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// Whether `path` is a regular file (not through a symlink) of this size and hash.
fn holds(path: &Path, size: Option<u64>, hash: &str) -> bool {
    match fs::read(path) {
        Ok(data) => size.is_none_or(|s| s == data.len() as u64) && sha256(&data) == hash,
        Err(_) => false,
    }
}

/// Every index on the mirror `root`, parsed; each entry whose file is not present with the
/// stated hash is one line of the error. Release and InRelease entries are read as apt
/// with Acquire-By-Hash reads them: the file, or its copy under `by-hash/SHA256/`.
pub(crate) fn check(root: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    walk(root, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = f.parent().expect("parent");
        let text = fs::read_to_string(&f).unwrap_or_default();
        match name.as_str() {
            "Release" | "InRelease" => {
                let mut in_sha = false;
                for line in text.lines() {
                    if line.starts_with("SHA256:") {
                        in_sha = true;
                        continue;
                    }
                    if !line.starts_with(' ') {
                        in_sha = false;
                    }
                    if !in_sha {
                        continue;
                    }
                    let parts: Vec<&str> = line.split_whitespace().collect();
                    let [hash, size, rel] = parts[..] else {
                        bad.push(format!("{}: bad line {line:?}", f.display()));
                        continue;
                    };
                    let size = size.parse().ok();
                    let direct = dir.join(rel);
                    let by_hash = direct
                        .parent()
                        .expect("parent")
                        .join("by-hash/SHA256")
                        .join(hash);
                    if !holds(&direct, size, hash) && !holds(&by_hash, size, hash) {
                        bad.push(format!("{} names {rel} {hash}: not there", f.display()));
                    }
                }
            }
            "Packages" => {
                for stanza in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
                    let field = |k: &str| {
                        stanza
                            .lines()
                            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                    };
                    let (Some(file), Some(size), Some(hash)) =
                        (field("Filename:"), field("Size:"), field("SHA256:"))
                    else {
                        bad.push(format!(
                            "{}: stanza without Filename/Size/SHA256",
                            f.display()
                        ));
                        continue;
                    };
                    if !holds(&root.join(&file), size.parse().ok(), &hash) {
                        bad.push(format!("{} names {file} {hash}: not there", f.display()));
                    }
                }
            }
            n if n == "repomd.xml" || n.ends_with("-primary.xml") => {
                // Both live in repodata/ and name paths relative to the repository.
                let base = dir.parent().expect("rpm");
                let mut rest = text.as_str();
                while let Some(at) = rest.find("<checksum type=\"sha256\">") {
                    rest = &rest[at + 24..];
                    let hash = &rest[..rest.find('<').unwrap_or(0)];
                    let href = rest
                        .find("href=\"")
                        .map(|h| &rest[h + 6..])
                        .and_then(|r| r.find('"').map(|e| &r[..e]));
                    let (hash, Some(href)) = (hash, href) else {
                        bad.push(format!("{}: entry without location", f.display()));
                        break;
                    };
                    if !holds(&base.join(href), None, hash) {
                        bad.push(format!("{} names {href} {hash}: not there", f.display()));
                    }
                }
            }
            _ => {}
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("\n"))
    }
}
