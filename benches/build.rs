//! One in-process image build (no sandbox, no CLI), for profilers: `valgrind --tool=callgrind`
//! counts its instructions repeatably on a loaded machine, and `perf record` samples it.
//!
//!     cargo bench --no-run --bench build      # then run target/release/deps/build-HASH
//!     build-HASH (--toc|--dump|--estargz) INPUT [OUTPUT] [--phases]
//!
//! `--phases` prints the time of each phase (read, parse, write) on stderr; OUTPUT defaults to
//! /dev/null.
use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

use cfsmount::build::{BuildRequest, InputFormat};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let format = match args.first().map(String::as_str) {
        Some("--toc") => InputFormat::Toc,
        Some("--dump") => InputFormat::Dump,
        Some("--estargz") => InputFormat::Estargz,
        _ => {
            eprintln!("usage: build (--toc|--dump|--estargz) INPUT [OUTPUT] [--phases]");
            std::process::exit(2);
        }
    };
    let phases = args.iter().any(|a| a == "--phases");
    let paths: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    let input = paths.first().expect("INPUT");
    let output = paths.get(1).map_or("/dev/null", |s| s.as_str());
    let t0 = Instant::now();
    let mut bytes = Vec::new();
    File::open(input).expect("INPUT").read_to_end(&mut bytes).expect("reading INPUT");
    let t1 = Instant::now();
    let req = BuildRequest::new(format);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(output).expect("OUTPUT"));
    let info = cfsmount::build::build_from_reader(&req, &mut &bytes[..], &mut out).expect("build");
    out.flush().expect("writing OUTPUT");
    let t2 = Instant::now();
    if phases {
        eprintln!(
            "read {:.1} ms, parse+write {:.1} ms, image {} bytes",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            info.image_size
        );
    }
}
