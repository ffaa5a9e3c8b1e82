//! Benchmark of the sandbox overhead: fork + full confinement (fds, limits, caps, uid, landlock,
//! seccomp) + exit + the parent's wait, with an empty job. `cargo bench --bench sandbox [-- N]`.
//! Run as root to include the uid switch and capability dropping (the production path).
use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use cfsmount::sandbox::{run_confined, SandboxConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--cs9-one") {
        return cs9_one(args.get(i + 1).map(String::as_str) == Some("sandboxed"), &args[i + 2]);
    }
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(300);
    let cfg = SandboxConfig::default();
    let run = || {
        let input = File::open("/dev/null").expect("/dev/null");
        let output = File::options().write(true).open("/dev/null").expect("/dev/null");
        let t = Instant::now();
        run_confined(&cfg, input.into(), output.into(), |_, _| Ok(())).expect("empty job in the sandbox");
        t.elapsed()
    };
    // Baseline on the same machine: a bare fork + _exit + waitpid, no confinement.
    let bare = || {
        let t = Instant::now();
        // SAFETY (bench): the child calls only _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit in the child.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        // SAFETY: waits for our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        t.elapsed()
    };
    for _ in 0..10 {
        run(); // warm-up
        bare();
    }
    let mut base: Vec<Duration> = (0..n).map(|_| bare()).collect();
    base.sort();
    let mut times: Vec<Duration> = (0..n).map(|_| run()).collect();
    times.sort();
    println!(
        "bare fork+exit+wait baseline: median {:.3} ms, mean {:.3} ms",
        base[base.len() / 2].as_secs_f64() * 1e3,
        base.iter().sum::<Duration>().as_secs_f64() * 1e3 / n as f64
    );
    let total: Duration = times.iter().sum();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "sandbox overhead over {n} runs (euid {}): mean {:.3} ms, median {:.3} ms, p95 {:.3} ms, max {:.3} ms (target < 5 ms)",
        rustix::process::geteuid().as_raw(),
        ms(total / n as u32),
        ms(pct(0.5)),
        ms(pct(0.95)),
        ms(times[times.len() - 1]),
    );

    cs9_developer(&cfg);
}

fn cs9_json() -> Option<Vec<u8>> {
    let dir = std::env::var_os("CFS_CONFORMANCE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    let path = dir.join("composefs-json/cs9-x86_64-developer.json.gz");
    let gz = std::fs::read(&path).ok()?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut json).expect("gunzip");
    Some(json)
}

/// One build of the cs9-x86_64-developer TOC in this (fresh) process, in-process or sandboxed;
/// prints the milliseconds of the build alone (input already in a file, image written to a file).
fn cs9_one(sandboxed: bool, json_path: &str) {
    let input = File::open(json_path).expect("TOC file");
    let output = tempfile::tempfile().unwrap();
    let job = |mut i: File, o: File| -> Result<(), String> {
        let mut bytes = Vec::new();
        i.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let tree = cfsmount::input::toc::parse(&bytes, &Default::default()).map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(o);
        cfsmount::erofs::writer::write_image(&tree, &Default::default(), &mut w).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())
    };
    let t = Instant::now();
    if sandboxed {
        run_confined(&SandboxConfig::default(), input.into(), output.into(), job).expect("sandboxed build");
    } else {
        job(input, output).expect("in-process build");
    }
    println!("{}", t.elapsed().as_secs_f64() * 1e3);
}

/// Build time of the cs9-x86_64-developer TOC (64k entries) in-process and in the sandbox, each
/// in a fresh process as the CLI would run it, to put the overhead in proportion (target < 5 %).
/// Two views: the build as timed inside the process, and the whole process (spawn to exit, which
/// also charges the in-process variant with tearing down its memory, as a real CLI run would).
fn cs9_developer(_cfg: &SandboxConfig) {
    let Some(json) = cs9_json() else {
        println!("cs9-x86_64-developer: conformance data not found (set CFS_CONFORMANCE); skipped");
        return;
    };
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&json).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let one = |mode: &str| -> (f64, f64) {
        let t = Instant::now();
        let out = std::process::Command::new(&exe).args(["--cs9-one", mode, &path]).output().unwrap();
        let whole = t.elapsed().as_secs_f64() * 1e3;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).trim().parse().unwrap(), whole)
    };
    let rounds = 9;
    let (mut d_in, mut d_all, mut b_in, mut b_all) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (a, b) = one("direct");
        d_in.push(a);
        d_all.push(b);
        let (a, b) = one("sandboxed");
        b_in.push(a);
        b_all.push(b);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (di, da, bi, ba) = (med(&mut d_in), med(&mut d_all), med(&mut b_in), med(&mut b_all));
    println!(
        "cs9-x86_64-developer TOC, fresh process each ({rounds} rounds, medians): build {di:.1} ms in-process vs {bi:.1} ms sandboxed ({:+.1} %); whole process {da:.1} ms vs {ba:.1} ms ({:+.1} %)",
        (bi / di - 1.0) * 100.0,
        (ba / da - 1.0) * 100.0
    );
}
