//! `gen-tree DIR SEED SCALE`: writes a deterministic package-repository-like tree (the
//! same generator the tests use) for the benchmark scripts.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(seed), Some(scale)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: gen-tree DIR SEED SCALE");
        std::process::exit(2);
    };
    let (Ok(seed), Ok(scale)) = (seed.parse::<u64>(), scale.parse::<usize>()) else {
        eprintln!("gen-tree: SEED and SCALE are numbers");
        std::process::exit(2);
    };
    if let Err(e) = pulpdist_testdata::generate(std::path::Path::new(dir), seed, scale) {
        eprintln!("gen-tree: {dir}: {e}");
        std::process::exit(1);
    }
}
