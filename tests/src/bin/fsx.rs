//! fsx for long runs: `fsx <dir> [--other <dir>] [--seed N] [--ops N] [--max-mib N]` exercises
//! `<dir>/fsx-file` against a model (see `integration_tests::fsx`) and exits non-zero at the
//! first difference.

use std::path::PathBuf;

use integration_tests::fsx::{FsxOptions, fsx};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |n: &str| args.iter().position(|a| a == n).and_then(|i| args.get(i + 1).cloned());
    let Some(dir) = args.get(1).filter(|a| !a.starts_with("--")).map(PathBuf::from) else {
        eprintln!("usage: fsx <dir> [--other <dir>] [--seed N] [--ops N] [--max-mib N]");
        std::process::exit(2);
    };
    let other = flag("--other").map(PathBuf::from).unwrap_or_else(|| dir.clone());
    let num = |n: &str, d: u64| flag(n).map_or(d, |v| v.parse().unwrap_or_else(|_| panic!("{n}: a number")));
    let o = FsxOptions {
        seed: num("--seed", 1),
        ops: num("--ops", 10_000),
        max_len: num("--max-mib", 6) << 20,
        ..FsxOptions::default()
    };
    let t = std::time::Instant::now();
    match fsx(&dir, &other, "fsx-file", o) {
        Ok(model) => println!("fsx: {} operations, seed {}, final size {} bytes, in {:.1?}: no difference", o.ops, o.seed, model.len(), t.elapsed()),
        Err(e) => {
            eprintln!("fsx: seed {}: {e}", o.seed);
            std::process::exit(1);
        }
    }
}
