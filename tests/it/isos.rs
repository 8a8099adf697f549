//! ISO 9660 images built by real xorriso from the tree's own files: published along their
//! files' extents, so a site that has the files fetches little more than the image's
//! metadata, and rebuilds it byte-identical. (./scripts/test installs xorriso.)

use crate::common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{assert_same_tree, s, xorriso, Site};

fn publish_json(site: &Site) -> serde_json::Value {
    site.publish()
}

#[test]
fn an_image_of_the_trees_own_files_costs_only_its_metadata() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 101, 6).expect("generate");
    site.publish();
    site.sync();

    // Version 2 adds an image of the tree's package pool, with a boot image and a hard link.
    let scratch = site.p("scratch");
    fs::create_dir_all(scratch.join("boot")).expect("boot dir");
    fs::write(scratch.join("boot/boot.img"), vec![0xB0u8; 8192]).expect("boot image");
    let image = site.src().join("cdimage/pool.iso");
    fs::create_dir_all(image.parent().expect("parent")).expect("cdimage");
    let pool_copy = scratch.join("pool");
    assert!(Command::new("cp")
        .args(["-a", s(&site.src().join("pool")), s(&pool_copy)])
        .status()
        .expect("cp")
        .success());
    let some_deb = common::snapshot(&pool_copy)
        .into_iter()
        .find(|(p, d)| d.starts_with("file") && p.to_string_lossy().ends_with(".deb"))
        .map(|(p, _)| p)
        .expect("a .deb");
    fs::hard_link(pool_copy.join(&some_deb), scratch.join("linked.deb")).expect("hard link");
    xorriso(
        &scratch,
        &image,
        &[
            "--",
            "-boot_image",
            "any",
            "bin_path=/boot/boot.img",
            "-boot_image",
            "any",
            "emul_type=no_emulation",
        ],
    );
    let image_size = fs::metadata(&image).expect("image").len();
    let p = publish_json(&site);
    assert_eq!(p["isos"], 1, "{p}");
    // Published again unchanged, from the tree's summary: the same root, its composite
    // entry included; and a publish with no state at all gives that root too.
    let again = site.publish();
    assert_eq!(
        (&again["unchanged"], &again["root"]),
        (&true.into(), &p["root"])
    );
    let no_state = site.p("no-state");
    let scratch_publish = site.publish_with(&["--state", s(&no_state)]);
    assert_eq!(scratch_publish["unchanged"], false, "{scratch_publish}");
    assert_eq!(scratch_publish["root"], p["root"]);
    // The image's entry names the loose files it holds instead of repeating their chunks
    // (a composite file, FORMAT.md 5.2): one file part per package of the pool (of at
    // least 1 KiB: a smaller one costs about as much as a chunk).
    let (parts, own, resolved) = image_entry(&site, "cdimage", b"pool.iso");
    let debs = common::snapshot(&pool_copy)
        .keys()
        .filter(|p| p.to_string_lossy().ends_with(".deb"))
        .filter(|p| fs::metadata(pool_copy.join(p)).expect("stat").len() >= 1024)
        .count();
    assert!(parts >= debs, "{parts} file parts for {debs} packages");
    assert!(
        own * 2 < resolved,
        "the node lists {own} of the image's {resolved} chunks itself"
    );
    let r = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    let fetched = r["bytes_fetched"].as_u64().expect("bytes");
    let bound = 64 * 1024 + image_size / 1000;
    assert!(
        fetched <= bound,
        "fetched {fetched} bytes for a {image_size}-byte image of files the site has (bound {bound}): {r}"
    );
    assert!(
        r["bytes_reused"].as_u64().expect("reused") > image_size / 2,
        "{r}"
    );
    // The image's own chunks (its metadata, the boot image) came in the delta, compressed
    // together (an own-chunk batch, FORMAT.md 5.6 kind 5): the head and the delta, and no
    // range request for them.
    assert_eq!(
        (&r["requests"], &r["delta_failed"]),
        (&2.into(), &0.into()),
        "{r}"
    );
    assert!(r["delta_files"].as_u64() >= Some(1), "{r}");

    // Version 3: packages change and the image is rebuilt; still only the new bytes move.
    pulpdist_testdata::evolve(&site.src(), 101, 1).expect("evolve");
    fs::remove_dir_all(&pool_copy).expect("rm");
    assert!(Command::new("cp")
        .args(["-a", s(&site.src().join("pool")), s(&pool_copy)])
        .status()
        .expect("cp")
        .success());
    fs::remove_file(&image).expect("rm image");
    xorriso(&scratch, &image, &[]);
    let p = publish_json(&site);
    assert_eq!(p["isos"], 1, "{p}");
    let r = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    // The rebuilt image's own chunks against the old image's, read from the mirror's old
    // image where they lie in it.
    assert_eq!(
        (&r["requests"], &r["delta_failed"]),
        (&2.into(), &0.into()),
        "{r}"
    );
    // A site that starts from nothing resolves the image against the tree it fetches.
    let fresh = site.p("fresh");
    let args = common::sync_cmd(s(&site.store()), "tree", &site.trust(), &fresh, &[]);
    common::run_json(&common::strs(&args));
    assert_same_tree(&site.src(), &fresh);
    let new_bytes = p["bytes_stored"].as_u64().expect("stored");
    assert!(
        r["bytes_fetched"].as_u64().expect("bytes") <= new_bytes + new_bytes / 20 + 64 * 1024,
        "{r} for {new_bytes} new bytes"
    );
}

/// The node `r` names, read from the site's store and verified.
fn node_in_store(
    site: &Site,
    r: &pulpdist_format::NodeRef,
) -> Result<pulpdist_format::Node, pulpdist_format::FormatError> {
    let pack = fs::read(site.store().join(r.loc.pack.object_key())).expect("pack");
    let range = r.loc.range();
    r.open(&pack[range.start as usize..range.end as usize])
}

/// The current version's root, and the entry `name` of directory `dir` (below the root).
fn entry_in_store(
    site: &Site,
    dir: &str,
    name: &[u8],
) -> (pulpdist_format::NodeRef, pulpdist_format::Node) {
    let head = fs::read(site.store().join("heads/tree")).expect("head");
    let (head, _, _) = pulpdist_format::Head::decode_unverified(&head).expect("head");
    let root = node_in_store(site, &head.root).expect("root");
    let Some(pulpdist_format::EntryKind::Dir { node }) = root.get(dir.as_bytes()).map(|e| &e.kind)
    else {
        panic!("no {dir}/");
    };
    let node = node_in_store(site, node).expect("node");
    assert!(node.get(name).is_some(), "no {dir}/{name:?}");
    (head.root, node)
}

/// The file parts, the chunks it lists itself and the chunks it resolves to of the entry
/// `name` in directory `dir` (below the root) of the store's current version, a composite
/// file.
fn image_entry(site: &Site, dir: &str, name: &[u8]) -> (usize, usize, usize) {
    let (root, node) = entry_in_store(site, dir, name);
    let kind = &node.get(name).expect("entry").kind;
    let pulpdist_format::EntryKind::Composite { parts, .. } = kind else {
        panic!("not a composite file: {kind:?}");
    };
    let files = parts
        .iter()
        .filter(|p| matches!(p, pulpdist_format::Part::File { .. }))
        .count();
    let own = kind.own_chunks().count();
    let mut tree = pulpdist_format::TreeFiles::new(root, |r: &pulpdist_format::NodeRef| {
        node_in_store(site, r)
    });
    let resolved = node
        .resolve(|p| tree.lookup(p))
        .expect("lookup")
        .expect("resolves");
    let resolved = match &resolved.get(name).expect("entry").kind {
        pulpdist_format::EntryKind::File { chunks, .. } => chunks.len(),
        other => panic!("{other:?}"),
    };
    (files, own, resolved)
}

/// A file of 4 GiB or more is stored in several extents. xorriso 1.5.4 splits a file only
/// there: `-file_size_limit` refuses a larger file instead of splitting it. So the file here
/// is sparse (random bytes at its start, across the end of its first extent and at its end)
/// and the image is written sparse too: the test costs disk only where the sync writes.
#[test]
fn a_file_in_several_extents_is_one_region() {
    let site = Site::new();
    let dir = site.src().join("big");
    fs::create_dir_all(&dir).expect("dir");
    let huge = dir.join("huge.bin");
    // Not a multiple of the block size, so the last extent ends inside a block.
    let size: u64 = (4 << 30) + 300_001;
    let f = fs::File::create(&huge).expect("create");
    f.set_len(size).expect("set_len");
    let first_extent_end: u64 = (4 << 30) - 2048;
    for (i, at) in [0, first_extent_end - 150_000, size - 100_000]
        .into_iter()
        .enumerate()
    {
        let len = if i == 2 { 100_000 } else { 300_000 };
        let bytes: Vec<u8> = (0..len as u32)
            .map(|j| (j.wrapping_add(i as u32 * 77).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        f.write_all_at(&bytes, at).expect("write");
    }
    drop(f);
    fs::write(dir.join("small.txt"), b"beside the big one\n").expect("small");
    site.publish();
    site.sync();

    // Version 2 adds an image of big/, written sparse.
    let image = site.src().join("cd/big.iso");
    fs::create_dir_all(image.parent().expect("parent")).expect("cd");
    let script = format!(
        "set -o pipefail; xorriso -abort_on FAILURE -outdev stdio:/dev/fd/1 -rockridge on \
         -joliet on -map '{}' / -commit 2>/dev/null | cp --sparse=always /dev/stdin '{}'",
        s(&dir),
        s(&image)
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sections = Command::new("xorriso")
        .arg("-indev")
        .arg(&image)
        .args(["-find", "/huge.bin", "-exec", "report_sections", "--"])
        .output()
        .expect("xorriso");
    let report = String::from_utf8_lossy(&sections.stdout);
    let extents = pulpdist_isos::parse_report_sections(&report).expect("report");
    assert!(extents.len() >= 2, "not split into extents: {report}");
    // The layout gives one region of exactly the file's bytes, its extents merged.
    let regions = pulpdist_isos::layout(&image).expect("layout");
    let first = extents.iter().map(|e| e.offset).min().expect("offset");
    assert!(
        regions.contains(&(first..first + size)),
        "{regions:?} lacks {first}..+{size}"
    );

    let p = publish_json(&site);
    assert_eq!(p["isos"], 1, "{p}");
    let stored = p["bytes_stored"].as_u64().expect("stored");
    assert!(
        stored <= 64 * 1024,
        "the image's file is cut as the file was, across its extents: {stored} new bytes stored: {p}"
    );
    let r = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    let fetched = r["bytes_fetched"].as_u64().expect("bytes");
    assert!(fetched <= 64 * 1024, "fetched {fetched} bytes: {r}");
    // The mirror keeps the zeros as holes, as the source does: 8 GiB of files, a few MiB of
    // disk (a CI run once ran out of disk writing them out).
    for f in ["big/huge.bin", "cd/big.iso"] {
        let md = fs::metadata(site.mirror().join(f)).expect("stat");
        assert!(md.len() > 4 << 30, "{f}: {} bytes", md.len());
        assert!(md.blocks() * 512 <= 64 << 20, "{f}: {} blocks", md.blocks());
    }
}

#[test]
fn zisofs_files_and_damaged_images() {
    let site = Site::new();
    let d = site.src().join("data");
    fs::create_dir_all(&d).expect("dir");
    let text: Vec<u8> = (0..400_000u32)
        .map(|i| b"mirror text "[i as usize % 12])
        .collect();
    fs::write(d.join("text.txt"), &text).expect("text");
    let noise: Vec<u8> = common::noise(300_000, 9);
    fs::write(d.join("noise.bin"), &noise).expect("noise");
    fs::write(site.p("boot.bin"), &noise).expect("boot image");
    let image = site.src().join("z.iso");
    // Also a boot image hidden from the directories: only El Torito says where it is.
    xorriso(
        &d,
        &image,
        &[
            "-set_filter_r",
            "--zisofs",
            "/text.txt",
            "--",
            "-map",
            s(&site.p("boot.bin")),
            "/boot.bin",
            "-boot_image",
            "any",
            "bin_path=/boot.bin",
            "-boot_image",
            "any",
            "emul_type=no_emulation",
            "-hide",
            "on",
            "/boot.bin",
            "--",
        ],
    );
    let regions = pulpdist_isos::layout(&image).expect("layout");
    let bytes = fs::read(&image).expect("image");
    let boot_len = (noise.len() as u64).div_ceil(2048) * 2048;
    let starts_with_noise = |r: &std::ops::Range<u64>| {
        bytes.get(r.start as usize..r.start as usize + noise.len()) == Some(&noise[..])
    };
    assert_eq!(
        regions
            .iter()
            .filter(|r| starts_with_noise(r) && r.end - r.start == boot_len)
            .count(),
        1,
        "the hidden boot image is a region of its blocks: {regions:?}"
    );
    assert!(
        regions
            .iter()
            .any(|r| starts_with_noise(r) && r.end - r.start == noise.len() as u64),
        "noise.bin is a region of its bytes: {regions:?}"
    );
    // The zisofs file is a region of its compressed bytes, not of whole blocks.
    assert!(
        regions
            .iter()
            .any(|r| (r.end - r.start) % 2048 != 0 && r.end - r.start < 100_000),
        "the zisofs file's region: {regions:?}"
    );
    // A damaged image: the ISO 9660 signature, but the rest of its volume descriptor zeroed.
    let mut broken = fs::read(&image).expect("image");
    broken[32774..34816].fill(0);
    fs::write(site.src().join("broken.iso"), &broken).expect("broken");
    let p = publish_json(&site);
    assert_eq!(p["isos"], 1, "{p}");
    let plain = p["isos_plain"].as_array().expect("isos_plain");
    assert_eq!(plain.len(), 1, "{p}");
    assert!(
        plain[0].as_str().expect("str").contains("broken.iso"),
        "{p}"
    );
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn without_xorriso_an_image_is_published_as_plain_chunks() {
    let site = Site::new();
    let d = site.p("files");
    fs::create_dir_all(&d).expect("dir");
    fs::write(d.join("a.bin"), vec![7u8; 200_000]).expect("file");
    xorriso(&d, &site.src().join("a.iso"), &[]);
    let out = common::bin()
        .env("PATH", "/nonexistent")
        .args([
            "publish",
            "--store",
            s(&site.store()),
            "--tree",
            "tree",
            "--key",
            s(&site.key()),
            "--json",
            s(&site.src()),
        ])
        .output()
        .expect("publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["isos"], 0);
    assert!(
        p["isos_plain"][0]
            .as_str()
            .expect("reason")
            .contains("xorriso"),
        "{p}"
    );
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}

#[test]
fn template_and_rebuild_like_jigdo() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 102, 4).expect("generate");
    site.publish();
    let image = site.p("image.iso");
    xorriso(&site.src().join("pool"), &image, &[]);
    let image_bytes = fs::read(&image).expect("image");
    let tpl = site.p("image.tpl");
    let out = common::run_json(&["iso", "template", s(&image), "--out", s(&tpl)]);
    let tsize = out["template_size"].as_u64().expect("size");
    assert!(
        tsize < 64 * 1024 + image_bytes.len() as u64 / 1000,
        "template of {tsize} bytes for a {}-byte image",
        image_bytes.len()
    );

    // From the loose files alone: nothing fetched, byte-identical.
    let rebuilt = site.p("rebuilt.iso");
    let out = common::run(&[
        "iso",
        "rebuild",
        s(&tpl),
        "--from",
        s(&site.src()),
        "--out",
        s(&rebuilt),
        "--json",
        "--progress=json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["bytes_fetched"], 0, "{r}");
    // Progress on request: the image written, all of it.
    let end = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "end" && v["phase"] == "image")
        .expect("an end of the image phase");
    assert_eq!(end["bytes_done"], image_bytes.len() as u64, "{end}");
    assert!(
        fs::read(&rebuilt).expect("rebuilt") == image_bytes,
        "not byte-identical"
    );

    // Files missing locally: refused without a store, fetched from one with it.
    let partial = site.p("partial");
    assert!(Command::new("cp")
        .args(["-a", s(&site.src()), s(&partial)])
        .status()
        .expect("cp")
        .success());
    let gone = common::snapshot(&partial.join("pool"))
        .into_iter()
        .find(|(p, d)| d.starts_with("file") && p.to_string_lossy().ends_with(".deb"))
        .map(|(p, _)| partial.join("pool").join(p))
        .expect("a .deb");
    fs::remove_file(&gone).expect("rm");
    let again = site.p("again.iso");
    let out = common::run(&[
        "iso",
        "rebuild",
        s(&tpl),
        "--from",
        s(&partial),
        "--out",
        s(&again),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
    assert!(!again.exists());
    let r = rebuild_from_store(&site, &tpl, &partial, &again);
    assert!(r["bytes_fetched"].as_u64().expect("n") > 0, "{r}");
    assert!(
        fs::read(&again).expect("again") == image_bytes,
        "not byte-identical"
    );

    // A damaged template is refused.
    let mut t = fs::read(&tpl).expect("tpl");
    let n = t.len();
    t[n - 1] ^= 0x40;
    fs::write(&tpl, t).expect("write");
    let out = common::run(&[
        "iso",
        "rebuild",
        s(&tpl),
        "--from",
        s(&site.src()),
        "--out",
        s(&again),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// `iso rebuild TPL --from FROM --store` (the site's store and tree) `--out OUT`; its report.
fn rebuild_from_store(
    site: &Site,
    tpl: &std::path::Path,
    from: &std::path::Path,
    out: &std::path::Path,
) -> serde_json::Value {
    let key = format!("{}.pub", s(&site.key()));
    common::run_json(&[
        "iso",
        "rebuild",
        s(tpl),
        "--from",
        s(from),
        "--store",
        s(&site.store()),
        "--tree",
        "tree",
        "--trust",
        &key,
        "--out",
        s(out),
    ])
}

/// Template version 2: a file of several chunks is named once, by its chunk list, not by
/// 37 bytes per chunk. A local copy that differs from the image's file (an edit in the
/// middle) does not resolve it; the store's tree does, and then the copy still gives every
/// chunk it shares, so only the changed chunks are fetched. Without a store the rebuild
/// is refused, naming what is missing.
#[test]
fn a_template_names_each_file_once_and_a_changed_copy_still_gives_what_it_shares() {
    let site = Site::new();
    let pool = site.src().join("pool");
    fs::create_dir_all(&pool).expect("pool");
    let mut big = vec![0u8; 3 << 20];
    blake3::Hasher::new()
        .update(b"a package")
        .finalize_xof()
        .fill(&mut big);
    fs::write(pool.join("big.deb"), &big).expect("big");
    fs::write(pool.join("small.txt"), b"a small file").expect("small");
    site.publish();
    let image = site.p("image.iso");
    xorriso(&pool, &image, &[]);
    let image_bytes = fs::read(&image).expect("image");
    let tpl = site.p("image.tpl");
    let t = common::run_json(&["iso", "template", s(&image), "--out", s(&tpl)]);
    assert_eq!(t["file_regions_by_list"], 1, "{t}");
    assert_eq!(t["file_chunks_by_id"], 1, "{t}");
    assert_eq!(&fs::read(&tpl).expect("tpl")[..8], b"PDISOTP\x02");

    // The copy: the package edited in the middle.
    let copy = site.p("copy");
    fs::create_dir_all(&copy).expect("copy");
    big[3 << 19] ^= 0xff;
    fs::write(copy.join("big.deb"), &big).expect("edited");
    fs::write(copy.join("small.txt"), b"a small file").expect("small");
    let out_img = site.p("rebuilt.iso");
    let out = common::run(&[
        "iso",
        "rebuild",
        s(&tpl),
        "--from",
        s(&copy),
        "--out",
        s(&out_img),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("1 pieces of file data (3145728 bytes)") && err.contains("--store"),
        "{err}"
    );
    assert!(!out_img.exists());
    let r = rebuild_from_store(&site, &tpl, &copy, &out_img);
    assert!(fs::read(&out_img).expect("rebuilt") == image_bytes);
    let fetched = r["bytes_fetched"].as_u64().expect("n");
    // The chunk the edit fell in (at most 256 KiB; the next one may shift too), and the
    // index nodes read to resolve the file.
    assert!(fetched > 0 && fetched < 2 * 262_144 + 65_536, "{r}");
    assert!(r["bytes_from_local"].as_u64().expect("n") > 2 << 20, "{r}");
}

/// A store whose tree holds the image itself, not the loose files (a separate image tree):
/// each file's data is a run of the image's own chunks, found by its first chunk and the
/// hash of the run, as a version 1 template found each chunk by id.
#[test]
fn an_image_is_rebuilt_from_a_store_that_holds_only_the_image() {
    let site = Site::new();
    let pool = site.p("pool");
    pulpdist_testdata::generate(&pool, 7, 3).expect("generate");
    let image = site.src().join("image.iso");
    xorriso(&pool, &image, &[]);
    site.publish();
    let tpl = site.p("image.tpl");
    let t = common::run_json(&["iso", "template", s(&image), "--out", s(&tpl)]);
    assert!(t["file_regions_by_list"].as_u64().expect("n") > 0, "{t}");
    let empty = site.p("nothing-local");
    fs::create_dir_all(&empty).expect("empty");
    let out_img = site.p("rebuilt.iso");
    let r = rebuild_from_store(&site, &tpl, &empty, &out_img);
    assert!(r["bytes_fetched"].as_u64().expect("n") > 0, "{r}");
    assert!(fs::read(&out_img).expect("rebuilt") == fs::read(&image).expect("image"));
}

/// Regression: `iso rebuild` held every chunk it fetched in memory (an image's worth). They
/// now wait in a scratch file beside the output: rebuilding a 96 MB image of files no
/// `--from` directory has, all fetched from the store, stays far below the image's size.
#[test]
fn a_rebuild_that_fetches_everything_does_not_hold_it_in_memory() {
    let site = Site::new();
    for i in 0..24u32 {
        // Random bytes: nothing repeats, nothing compresses.
        let mut blob = vec![0u8; 4 << 20];
        let mut h = blake3::Hasher::new();
        h.update(&i.to_le_bytes());
        h.finalize_xof().fill(&mut blob);
        fs::write(site.src().join(format!("blob{i}.bin")), blob).expect("blob");
    }
    // Small packs, so that no one range fetched is a large part of the image.
    site.publish_with(&["--pack-size", "8388608"]);
    let image = site.p("image.iso");
    xorriso(&site.src(), &image, &[]);
    let tpl = site.p("image.tpl");
    common::run_json(&["iso", "template", s(&image), "--out", s(&tpl)]);
    let empty = site.p("nothing-local");
    fs::create_dir_all(&empty).expect("empty");
    let out_img = site.p("rebuilt.iso");
    let key = format!("{}.pub", s(&site.key()));
    let out = common::bin_timed()
        .args([
            "iso",
            "rebuild",
            s(&tpl),
            "--from",
            s(&empty),
            "--store",
            s(&site.store()),
        ])
        .args(["--tree", "tree", "--trust", &key, "--out", s(&out_img)])
        .output()
        .expect("rebuild");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(fs::read(&out_img).expect("rebuilt") == fs::read(&image).expect("image"));
    let kb = common::peak_rss_kb(&err);
    assert!(
        kb < 64 * 1024,
        "peak RSS {kb} kB for a 96 MB image fetched whole"
    );
    // No scratch file is left beside the output.
    let left: Vec<_> = fs::read_dir(site.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".chunks-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The composite image through a site's whole life: the image published before the files
/// it holds (named once they come), a named file changed while the image is not (its
/// directory is built again, so the image's entry never names other bytes), the image
/// rebuilt with the same size and mtime but other bytes (the site rewrites it), then gc
/// compacting the store (the image's own chunks move) and verify: every step leaves the
/// mirror equal to the source, and a site starting from nothing gets the same.
#[test]
fn a_composite_image_stays_true_through_updates_gc_and_verify() {
    let site = Site::new();
    pulpdist_testdata::generate(&site.src(), 7, 4).expect("generate");
    let scratch = site.p("scratch");
    let pool = site.src().join("pool");
    let image = site.src().join("cdimage/pool.iso");
    fs::create_dir_all(image.parent().expect("parent")).expect("cdimage");
    let make_image = |volid: &str| {
        let _ = fs::remove_dir_all(&scratch);
        assert!(Command::new("cp")
            .args(["-a", s(&pool), s(&scratch)])
            .status()
            .expect("cp")
            .success());
        let _ = fs::remove_file(&image);
        xorriso(&scratch, &image, &["-volid", volid]);
        let t = filetime::FileTime::from_unix_time(1_767_225_600, 0);
        filetime::set_file_mtime(&image, t).expect("mtime");
    };
    // Version 1: the image alone (its pool moved aside): nothing to name.
    make_image("FIRST");
    let aside = site.p("pool-aside");
    fs::rename(&pool, &aside).expect("aside");
    site.publish();
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    // Version 2: the pool comes; the image, unchanged, now names its files.
    fs::rename(&aside, &pool).expect("back");
    site.publish();
    let (parts, _, _) = image_entry(&site, "cdimage", b"pool.iso");
    assert!(parts > 0, "the unchanged image names no file");
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    // Version 3: a named package changes; the image does not.
    let deb = common::snapshot(&pool)
        .into_iter()
        .filter(|(p, d)| d.starts_with("file") && p.to_string_lossy().ends_with(".deb"))
        .map(|(p, _)| pool.join(p))
        .max_by_key(|p| fs::metadata(p).expect("stat").len())
        .expect("a .deb");
    let mut bytes = fs::read(&deb).expect("deb");
    bytes[100] ^= 0xFF;
    fs::write(&deb, &bytes).expect("changed deb");
    site.publish();
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    // Version 4: the image rebuilt from the changed pool with the same size and mtime.
    let before = fs::metadata(&image).expect("image").len();
    make_image("SECOND");
    assert_eq!(fs::metadata(&image).expect("image").len(), before);
    site.publish();
    let r = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    assert_eq!(r["files"], 1, "only the image is rewritten: {r}");
    // Version 5: rebuilt again, with another mtime. The old image on disk is known by its
    // old (composite) entry: not read whole to find what it holds.
    make_image("THIRD");
    let t = filetime::FileTime::from_unix_time(1_767_312_000, 0);
    filetime::set_file_mtime(&image, t).expect("mtime");
    site.publish();
    let r = site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    assert_eq!(r["files_rehashed"], 0, "{r}");

    // gc: keep the last version, rewrite every pack the older ones left partly unused (the
    // image's own chunks move, and so do the files it names).
    let st = site.store();
    let key = site.key();
    let policy = ["--keep-last", "1", "--grace", "0s"];
    let repack = [&policy[..], &["--max-unused", "0", "--key", s(&key)]].concat();
    let first = common::gc(s(&st), &repack);
    let moved = first["repacked"]["sparse"].as_array().map_or(0, Vec::len);
    assert!(moved > 0, "nothing compacted: {first}");
    common::gc(s(&st), &policy);
    common::verify_clean(&site);
    // The mirror follows (its nodes' locations all changed), and so does a new site.
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
    let fresh = site.p("fresh");
    let args = common::sync_cmd(s(&st), "tree", &site.trust(), &fresh, &[]);
    common::run_json(&common::strs(&args));
    assert_same_tree(&site.src(), &fresh);
    let m = common::run_json(&[
        "verify",
        "--mirror",
        s(&fresh),
        "--tree",
        "tree",
        "--trust",
        &site.trust(),
        "--read-data",
    ]);
    assert_eq!(m["problems"].as_array().map(Vec::len), Some(0), "{m}");

    // `--composites false`: the image is plain again, and a site follows.
    let out = site.try_publish(&site.key(), &["--composites", "false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, node) = entry_in_store(&site, "cdimage", b"pool.iso");
    let kind = &node.get(b"pool.iso").expect("image").kind;
    assert!(
        matches!(kind, pulpdist_format::EntryKind::File { .. }),
        "{kind:?}"
    );
    site.sync();
    assert_same_tree(&site.src(), &site.mirror());
}
