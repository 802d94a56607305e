//! Benchmarks of the sampling processors (filled in below).
fn main() {}
