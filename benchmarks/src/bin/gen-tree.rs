//! `gen-tree DIR SEED SCALE`: writes a deterministic package-repository-like tree (the
//! same generator the tests use) for the benchmark scripts.
//!
//! `gen-tree scenario NAME VERSION DIR [SCALE]`: brings DIR to version 1 or 2 of an update
//! scenario (source, packages, pool, large; see `pulpdist_testdata::scenarios`) and prints
//! one JSON line: files, bytes, changed_files, changed_bytes, deleted_files.

use std::path::Path;
use std::process::exit;

use pulpdist_testdata::scenarios::{self, Scenario};

fn usage() -> ! {
    eprintln!("usage: gen-tree DIR SEED SCALE\n       gen-tree scenario NAME VERSION DIR [SCALE]");
    exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
