//! Benchmarks of hot paths (placeholder until they are written).

fn main() {}
