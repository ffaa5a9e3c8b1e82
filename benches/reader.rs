//! The hostile-image reader in-process (no CLI, no helper), for profilers: `valgrind
//! --tool=callgrind` counts its instructions repeatably on a loaded machine.
//!
//!     cargo bench --no-run --bench reader      # then run target/release/deps/reader-HASH
//!     reader-HASH IMAGE [--tree|--vet] [--threads N] [--runs N]
//!
//! `--tree` (default) reads the image into a tree as `cfsmount inspect` does; `--vet` runs the
//! checks only, as the setuid helper does before it mounts a caller's image, on as many
//! threads as it picks for the image, or on `--threads N`. Prints the fastest run's time and
//! the entry count on stderr.
use std::time::{Duration, Instant};

use cfsmount::erofs::reader::{read_image_with, vet_image, vet_image_threads, ReadLimits};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: reader IMAGE [--tree|--vet] [--threads N] [--runs N]");
        std::process::exit(2);
    };
    let vet = args.iter().any(|a| a == "--vet");
    let num = |flag: &str| -> Option<usize> {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)?.parse().ok())
    };
    let runs = num("--runs").unwrap_or(1);
    let threads = num("--threads");
    let bytes = std::fs::read(path).expect("IMAGE");
    let limits = ReadLimits::default();
    let mut best = Duration::MAX;
    let mut entries = 0u64;
    for _ in 0..runs {
        let t0 = Instant::now();
        entries = if vet {
            match threads {
                Some(n) => vet_image_threads(&bytes, &limits, n),
                None => vet_image(&bytes, &limits),
            }
            .expect("vet")
            .entries
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
