//! One in-process image build (no sandbox, no CLI), for profilers: `valgrind --tool=callgrind`
//! counts its instructions repeatably on a loaded machine, and `perf record` samples it.
//!
//!     cargo bench --no-run --bench build      # then run target/release/deps/build-HASH
//!     build-HASH (--toc|--dump|--estargz) INPUT [OUTPUT] [--phases]
//!
//! `--phases` prints the build's time on stderr; OUTPUT defaults to /dev/null.
use std::fs::File;
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
    // As the sandboxed child gets them: the input file (its size as the read hint), the output
    // file unbuffered; and as it ends: the tree left to the kernel at exit.
    let t0 = Instant::now();
    let mut file = File::open(input).expect("INPUT");
    let hint = file.metadata().expect("INPUT").len();
    let req = BuildRequest::new(format);
    let mut out = File::create(output).expect("OUTPUT");
    let info = cfsmount::build::build_stream(&req, &mut file, hint, &mut out, std::mem::forget).expect("build");
    if phases {
        eprintln!("build {:.1} ms, image {} bytes", t0.elapsed().as_secs_f64() * 1e3, info.image_size);
    }
}
