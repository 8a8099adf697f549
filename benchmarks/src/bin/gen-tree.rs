//! `gen-tree DIR SEED SCALE`: writes a deterministic package-repository-like tree (the
//! same generator the tests use) for the benchmark scripts.
//!
//! `gen-tree scenario NAME VERSION DIR [SCALE]`: brings DIR to version 1 or 2 of an update
//! scenario (source, packages, pool, large; see `pulpdist_testdata::scenarios`) and prints
//! one JSON line: files, bytes, changed_files, changed_bytes, deleted_files.
//!
//! `gen-tree small DIR FILES DIRS VERSION`: FILES files of 200 B to 3 kB spread over DIRS
//! directories (issue 20's many-small-files case); version 2 rewrites one file per
//! directory.

use std::path::Path;
use std::process::exit;

use pulpdist_testdata::scenarios::{self, Scenario};

fn usage() -> ! {
    eprintln!("usage: gen-tree DIR SEED SCALE\n       gen-tree scenario NAME VERSION DIR [SCALE]\n       gen-tree small DIR FILES DIRS VERSION");
    exit(2);
}

/// `small DIR FILES DIRS VERSION` (see the module's text).
fn small(args: &[String]) -> std::io::Result<()> {
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let (Some(dir), Some(files), Some(dirs), Some(version)) = (args.get(2), num(3), num(4), num(5))
    else {
        usage()
    };
    let root = Path::new(dir);
    let per = files.div_ceil(dirs.max(1));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for d in 0..dirs {
        let sub = root.join(format!("d{d:04}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..per.min(files.saturating_sub(d * per)) {
            let len = 200 + (next() % 2800) as usize;
            let changed = version > 1 && f == 0;
            if version > 1 && !changed {
                continue;
            }
            let mut body = Vec::with_capacity(len);
            while body.len() < len {
                body.extend_from_slice(format!("{:x} ", next() ^ u64::from(changed)).as_bytes());
            }
            body.truncate(len);
            std::fs::write(sub.join(format!("f{f:05}")), body)?;
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("small") {
        if let Err(e) = small(&args) {
            eprintln!("gen-tree: {e}");
            exit(1);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("scenario") {
        let (Some(name), Some(version), Some(dir)) = (args.get(2), args.get(3), args.get(4)) else {
            usage()
        };
        let Some(s) = Scenario::from_name(name) else {
            eprintln!("gen-tree: unknown scenario {name} (source, packages, pool, large)");
            exit(2);
        };
        let (Ok(version), Ok(scale)) = (
            version.parse::<u32>(),
            args.get(5).map_or(Ok(1.0), |s| s.parse::<f64>()),
        ) else {
            usage()
        };
        match scenarios::write(Path::new(dir), s, version, scale) {
            Ok(sum) => println!(
                "{{\"files\":{},\"bytes\":{},\"changed_files\":{},\"changed_bytes\":{},\"deleted_files\":{}}}",
                sum.files, sum.bytes, sum.changed_files, sum.changed_bytes, sum.deleted_files
            ),
            Err(e) => {
                eprintln!("gen-tree: {dir}: {e}");
                exit(1);
            }
        }
        return;
    }
    let (Some(dir), Some(seed), Some(scale)) = (args.get(1), args.get(2), args.get(3)) else {
        usage()
    };
    let (Ok(seed), Ok(scale)) = (seed.parse::<u64>(), scale.parse::<usize>()) else {
        eprintln!("gen-tree: SEED and SCALE are numbers");
        exit(2);
    };
    if let Err(e) = pulpdist_testdata::generate(Path::new(dir), seed, scale) {
        eprintln!("gen-tree: {dir}: {e}");
        exit(1);
    }
}
