//! The `beacon` binary.
fn main() {}
