//! Build script: placeholder until the seccomp policy compiler lands.
fn main() {}
