//! `s3-bench`: placeholder, filled in by the benchmark work.
fn main() {}
