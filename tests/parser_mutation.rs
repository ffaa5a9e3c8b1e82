//! Bounded in-tree mutation testing (runs in every `cargo test`, unlike the cargo-fuzz targets
//! in fuzz/): thousands of mutated conformance inputs go through every parser (TOC, eStargz,
//! dumpfile strict/lenient, image reader) and, when accepted, through the writer and printer.
//! Errors are fine; a panic fails the test and prints the seed and iteration to reproduce.
//! `CFS_MUTATION_ITERS` changes the iteration count per parser (default 3000).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use cfsmount::erofs::reader::{read_image, vet_image, vet_image_threads, ReadLimits};
use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{self, write_dump, DumpOptions};
use cfsmount::input::estargz;
use cfsmount::input::toc::{self, TocOptions};
use cfsmount::tree::{Limits, Tree};

#[path = "support/conformance.rs"]
mod conformance;
#[path = "support/random.rs"]
mod random;
use random::Rng;

/// The conformance root, asserted to hold `composefs-json/`.
fn conformance_dir() -> PathBuf {
    conformance::json_dir();
    conformance::conformance_root()
}

fn iters() -> usize {
    std::env::var("CFS_MUTATION_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

/// Tokens that tend to hit edge cases of the formats.
const TOKENS: &[&str] = &[
    "\"..\"",
    "\"/\"",
    "\".\"",
    "\"\"",
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775807",
    "1e309",
    "1.5",
    "null",
    "true",
    "[]",
    "{}",
    "\"\\u0000\"",
    "\"sha256:\"",
    "\"hardlink\"",
    "\"chunk\"",
    "\"symlink\"",
    "\".wh..wh..opq\"",
    "\".wh.x\"",
    "\"a/../b\"",
    "\"YQ==\"",
    "\"%%%\"",
    "4095",
    "1048576",
    "262143",
    " ",
    "\n",
    "\\",
    "@",
    "-",
    "/",
    "\\x00",
    "=",
    "trusted.overlay.",
    "user.overlay.whiteout",
    "40755",
    "20000",
    "120777",
    "100644",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.index(4) {
        let len = v.len();
        match rng.index(7) {
            0 if len > 0 => {
                let i = rng.index(len);
                v[i] ^= 1 << rng.index(8);
            }
            1 if len > 0 => {
                let i = rng.index(len);
                v[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let a = rng.index(len);
                let b = (a + 1 + rng.index(64)).min(len);
                v.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.index(len);
                let b = (a + 1 + rng.index(256)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.index(len);
                v.splice(at..at, chunk);
            }
            4 => {
                let t = TOKENS[rng.index(TOKENS.len())].as_bytes();
                let at = rng.index(len + 1);
                // Replace a short run (often a value) by the token.
                let end = (at + rng.index(12)).min(len);
                v.splice(at..end, t.iter().copied());
            }
            5 if len > 0 => {
                v.truncate(rng.index(len));
            }
            _ => {
                let at = rng.index(len + 1);
                let n = rng.index(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
        }
    }
    v
}

fn limits() -> Limits {
    Limits { max_entries: 20_000, max_depth: 64 }
}

fn exercise_tree(t: &Tree) {
    let mut text = Vec::new();
    let _ = write_dump(t, &mut text);
    let mut img = Vec::new();
    let _ = write_image(t, &WriteOptions::default(), &mut img);
}

fn run(name: &str, seeds: &[Vec<u8>], seed: u64, f: &dyn Fn(&[u8])) {
    let mut rng = Rng(seed);
    let n = iters();
    for i in 0..n {
        let base = &seeds[i % seeds.len()];
        let input = mutate(&mut rng, base);
        if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
            let path = std::env::temp_dir().join(format!("cfsmount-mutation-{name}-{i}"));
            let _ = std::fs::write(&path, &input);
            panic!("{name}: panic on mutation {i} (seed {seed:#x}); input saved to {}", path.display());
        }
    }
}

/// The first `n` entries of a JSON case, re-closed as a valid TOC (keeps inputs small).
fn head_entries(json: &[u8], n: usize) -> Vec<u8> {
    let s = String::from_utf8_lossy(json);
    let mut out = String::new();
    let mut count = 0;
    for part in s.split("\n    },\n") {
        out.push_str(part);
        count += 1;
        if count >= n {
            break;
        }
        out.push_str("\n    },\n");
    }
    out.push_str("\n    }\n  ]\n}\n");
    out.into_bytes()
}

fn json_seeds() -> Vec<Vec<u8>> {
    let c = conformance_dir();
    let mut seeds = vec![
        conformance::read_maybe_gz(&c.join("composefs-json/special.json")),
        conformance::read_maybe_gz(&c.join("zstd-chunked-example-toc.json")),
    ];
    let cfg = conformance::read_maybe_gz(&c.join("composefs-json/config-with-hard-link.json.gz"));
    let small = head_entries(&cfg, 40);
    assert!(toc::parse(&small, &TocOptions::default()).is_ok(), "seed construction failed");
    seeds.push(small);
    seeds.push(conformance::read_maybe_gz(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/toc.json")));
    seeds
}

#[test]
fn toc_parser_survives_mutations() {
    let seeds = json_seeds();
    run("toc", &seeds, 0x5eed_0001, &|d| {
        let opts = TocOptions { limits: limits(), ..TocOptions::default() };
        if let Ok(t) = toc::parse(d, &opts) {
            exercise_tree(&t);
        }
        let _ = toc::parse(d, &TocOptions { keep_whiteouts: true, ..opts });
    });
}

#[test]
fn estargz_parser_survives_mutations() {
    let seeds = json_seeds();
    run("estargz", &seeds, 0x5eed_0002, &|d| {
        if let Ok(t) = estargz::parse(d, &TocOptions { limits: limits(), ..TocOptions::default() }) {
            exercise_tree(&t);
        }
    });
}

#[test]
fn dump_parser_survives_mutations() {
    let c = conformance_dir().join("composefs-dump");
    let mut seeds = Vec::new();
    for e in std::fs::read_dir(&c).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let small = std::fs::metadata(&p).unwrap().len() < 64 * 1024;
        if (name.ends_with(".dump")) && small {
            seeds.push(conformance::read_maybe_gz(&p));
        }
    }
    assert!(seeds.len() >= 10, "expected the small dumpfile cases");
    run("dump", &seeds, 0x5eed_0003, &|d| {
        for strict in [false, true] {
            if let Ok(t) = dump::parse(d, &DumpOptions { strict, limits: limits() }) {
                exercise_tree(&t);
            }
        }
    });
}

#[test]
fn image_reader_survives_mutations() {
    let mut seeds = Vec::new();
    for json in json_seeds() {
        let t = toc::parse(&json, &TocOptions::default()).unwrap();
        let mut img = Vec::new();
        write_image(&t, &WriteOptions::default(), &mut img).unwrap();
        seeds.push(img);
    }
    run("image", &seeds, 0x5eed_0004, &|d| {
        let vetted = vet_image(d, &ReadLimits::default());
        // On several threads (in batches of 512 inodes, so these small images are decoded on
        // the calling thread after the walk): the same.
        let threads = vet_image_threads(d, &ReadLimits::default(), 2);
        assert_eq!(format!("{threads:?}"), format!("{vetted:?}"));
        match read_image(d) {
            Ok(t) => {
                // The helper's vetting accepts what the reader accepts and counts the same.
                assert_eq!(vetted.map(|v| v.entries).ok(), Some(t.len() as u64));
                let mut text = Vec::new();
                let _ = write_dump(&t, &mut text);
            }
            Err(e) => assert_eq!(vetted.map_err(|v| v.to_string()).err(), Some(e.to_string())),
        }
    });
}
