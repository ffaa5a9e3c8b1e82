//! Benchmark of the sandbox overhead: fork + full confinement (fds, limits, caps, uid, landlock,
//! seccomp) + exit + the parent's wait, with an empty job. `cargo bench --bench sandbox [-- N]`.
//! Run as root to include the uid switch and capability dropping (the production path).
use std::fs::File;
use std::time::{Duration, Instant};

use cfsmount::sandbox::{run_confined, SandboxConfig};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
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
}
