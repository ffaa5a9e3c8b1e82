//! The hostile-image reader in-process (no CLI, no helper), for profilers: `valgrind
//! --tool=callgrind` counts its instructions repeatably on a loaded machine.
//!
//!     cargo bench --no-run --bench reader      # then run target/release/deps/reader-HASH
//!     reader-HASH IMAGE [--tree|--vet] [--runs N]
//!
//! `--tree` (default) reads the image into a tree as `cfsmount inspect` does; `--vet` runs the
//! checks only, as the setuid helper does before it mounts a caller's image. Prints the
//! fastest run's time and the entry count on stderr.
use std::time::{Duration, Instant};

use cfsmount::erofs::reader::{read_image_with, ReadLimits};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: reader IMAGE [--tree|--vet] [--runs N]");
        std::process::exit(2);
    };
    let vet = args.iter().any(|a| a == "--vet");
    let runs: usize = args.iter().position(|a| a == "--runs").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(1);
    let bytes = std::fs::read(path).expect("IMAGE");
    let limits = ReadLimits::default();
    let mut best = Duration::MAX;
    let mut entries = 0u64;
    for _ in 0..runs {
        let t0 = Instant::now();
        entries = if vet {
            cfsmount::erofs::reader::vet_image(&bytes, &limits).expect("vet").entries
        } else {
            read_image_with(&bytes, &limits).expect("read").0.len() as u64
        };
        best = best.min(t0.elapsed());
    }
    eprintln!(
        "{} {:.2} ms (best of {runs}), {entries} entries",
        if vet { "vet" } else { "tree" },
        best.as_secs_f64() * 1e3
    );
}
