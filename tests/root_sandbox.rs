//! Root tier: the sandboxed child on the real kernel — a well-behaved job works, and every escape
//! attempt of a misbehaving job is blocked and reported by the parent as an error.
//!
//! Run as root: `cargo test --test root_sandbox` and, for the tests that use the test-only hooks
//! (skip one layer to show the others hold; hand the job /proc/self/status),
//! `cargo test --features misbehave --test root_sandbox`.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use cfsmount::sandbox::{run_confined, Limits, SandboxConfig, SandboxError};

// The shared conformance-data helpers (this file's own `mod conformance` holds its tests).
#[path = "support/conformance.rs"]
mod conformance_data;
#[path = "support/image.rs"]
mod image;

#[path = "support/root.rs"]
mod root;

/// The sandbox tests check uid switching, capability dropping and landlock as root.
fn require_root() {
    root::require_root("root_sandbox (uid switching, capability dropping and landlock as root)");
}

/// An input fd holding `data` and an output fd, plus a handle to read the output back.
fn io_pair(data: &[u8]) -> (OwnedFd, OwnedFd, File) {
    let mut input = tempfile::tempfile().unwrap();
    input.write_all(data).unwrap();
    input.seek(SeekFrom::Start(0)).unwrap();
    let output = tempfile::tempfile().unwrap();
    let reader = output.try_clone().unwrap();
    (input.into(), output.into(), reader)
}

fn read_back(mut f: File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

fn errno_of(e: &std::io::Error) -> String {
    format!("errno {}", e.raw_os_error().unwrap_or(0))
}

/// Runs `job` with the production config and returns the error, asserting there is one.
fn must_fail<F>(cfg: &SandboxConfig, job: F) -> SandboxError
where
    F: FnOnce(File, File) -> Result<(), String>,
{
    require_root();
    let (i, o, _r) = io_pair(b"x");
    match run_confined(cfg, i, o, job) {
        Ok(()) => panic!("the misbehaving job succeeded: the sandbox let it through"),
        Err(e) => e,
    }
}

fn assert_seccomp_kill(e: &SandboxError) {
    match e {
        SandboxError::Killed { signal, .. } if *signal == libc::SIGSYS => {}
        other => panic!("expected a kill by the seccomp filter (SIGSYS), got: {other}"),
    }
    // The message is what the CLI prints.
    assert!(e.to_string().contains("seccomp"), "{e}");
}

#[test]
fn well_behaved_copy_succeeds_and_bytes_arrive() {
    require_root();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (i, o, r) = io_pair(&data);
    run_confined(&SandboxConfig::default(), i, o, |mut input, mut output| {
        let mut buf = Vec::new();
        input.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
        output.write_all(&buf).map_err(|e| format!("write: {e}"))?;
        Ok(())
    })
    .expect("copy job in the sandbox");
    assert_eq!(read_back(r), data);
}

#[test]
fn job_error_comes_back_as_message() {
    let e = must_fail(&SandboxConfig::default(), |_, _| Err("entry /a/b: field mode: bad type bits".into()));
    match &e {
        SandboxError::Job(m) => assert_eq!(m, "entry /a/b: field mode: bad type bits"),
        other => panic!("expected the job's error, got {other}"),
    }
}

#[test]
fn job_panic_is_an_error() {
    let e = must_fail(&SandboxConfig::default(), |_, _| panic!("parser bug"));
    assert!(matches!(&e, SandboxError::Panicked(m) if m.contains("parser bug")), "{e}");
}

#[test]
fn open_by_path_is_killed_by_seccomp() {
    let e =
        must_fail(&SandboxConfig::default(), |_, _| File::open("/etc/hostname").map(|_| ()).map_err(|e| errno_of(&e)));
    assert_seccomp_kill(&e);
}

#[test]
fn open_outside_granted_dir_is_denied_by_landlock() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inside"), b"granted").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path().join("inside"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = SandboxConfig { read_dirs: vec![dir.path().to_path_buf()], ..Default::default() };

    // Control: the granted directory is readable, so the denial below is landlock's doing.
    let inside = dir.path().join("inside");
    let (i, o, r) = io_pair(b"");
    run_confined(&cfg, i, o, move |_, mut out| {
        let bytes = std::fs::read(&inside).map_err(|e| format!("read inside: {e}"))?;
        out.write_all(&bytes).map_err(|e| e.to_string())
    })
    .expect("reading beneath a granted directory");
    assert_eq!(read_back(r), b"granted");

    // /etc/hostname is world-readable: only landlock can refuse it.
    let e = must_fail(&cfg, |_, _| File::open("/etc/hostname").map(|_| ()).map_err(|e| errno_of(&e)));
    assert!(
        matches!(&e, SandboxError::Job(m) if m == &format!("errno {}", libc::EACCES)),
        "expected EACCES from landlock, got {e}"
    );
}

#[test]
fn socket_is_killed_by_seccomp() {
    let e = must_fail(&SandboxConfig::default(), |_, _| {
        std::net::TcpStream::connect(("127.0.0.1", 22)).map(|_| ()).map_err(|e| errno_of(&e))
    });
    assert_seccomp_kill(&e);
    let e = must_fail(&SandboxConfig::default(), |_, _| {
        std::os::unix::net::UnixStream::connect("/run/systemd/private").map(|_| ()).map_err(|e| errno_of(&e))
    });
    assert_seccomp_kill(&e);
}

#[test]
fn ptrace_is_killed_by_seccomp() {
    let parent = std::process::id() as libc::pid_t;
    let e = must_fail(&SandboxConfig::default(), move |_, _| {
        // SAFETY (test): ptrace with integer arguments.
        let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, parent, 0, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(errno_of(&std::io::Error::last_os_error()))
        }
    });
    assert_seccomp_kill(&e);
}

#[test]
fn mount_is_killed_by_seccomp() {
    let e = must_fail(&SandboxConfig::default(), |_, _| {
        rustix::mount::mount("none", "/mnt", "tmpfs", rustix::mount::MountFlags::empty(), None)
            .map_err(|e| format!("errno {}", e.raw_os_error()))
    });
    assert_seccomp_kill(&e);
}

#[test]
fn execve_is_killed_by_seccomp() {
    let e = must_fail(&SandboxConfig::default(), |_, _| {
        // `exec` only returns on failure.
        let err = std::os::unix::process::CommandExt::exec(&mut std::process::Command::new("/bin/true"));
        Err(errno_of(&err))
    });
    // Command::exec forks nothing; its first disallowed syscall kills the child.
    assert_seccomp_kill(&e);
}

#[test]
fn kill_other_process_is_killed_by_seccomp() {
    require_root();
    let mut victim = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let pid = victim.id() as libc::pid_t;
    let e = must_fail(&SandboxConfig::default(), move |_, _| {
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::TERM)
            .map_err(|e| format!("errno {}", e.raw_os_error()))
    });
    assert_seccomp_kill(&e);
    assert!(victim.try_wait().unwrap().is_none(), "the victim process was killed");
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn inherited_fd_not_granted_is_closed() {
    require_root();
    // Opened by the "parent" before the call and not handed to run_confined: without
    // close_range the child would inherit it (it is not close-on-exec relevant: no exec happens).
    let extra = tempfile::tempfile().unwrap();
    let reader = extra.try_clone().unwrap();
    let raw = extra.as_raw_fd();
    // The closure captures only the number: the File stays in the parent.
    let e = must_fail(&SandboxConfig::default(), move |_, _| {
        // SAFETY (test): write(2) on a raw fd number with a valid buffer.
        let n = unsafe { libc::write(raw, b"leak".as_ptr().cast(), 4) };
        if n == 4 {
            Ok(())
        } else {
            Err(errno_of(&std::io::Error::last_os_error()))
        }
    });
    assert!(matches!(&e, SandboxError::Job(m) if m == &format!("errno {}", libc::EBADF)), "expected EBADF, got {e}");
    assert!(read_back(reader).is_empty(), "bytes reached the inherited file");
    drop(extra);
}

#[test]
fn setuid_root_is_killed_by_seccomp() {
    let e = must_fail(&SandboxConfig::default(), |_, _| {
        rustix::thread::set_thread_res_uid(
            rustix::process::Uid::ROOT,
            rustix::process::Uid::ROOT,
            rustix::process::Uid::ROOT,
        )
        .map_err(|e| format!("errno {}", e.raw_os_error()))
    });
    assert_seccomp_kill(&e);
}

#[test]
fn allocation_past_memory_limit_kills_child() {
    let cfg = SandboxConfig { limits: Limits { address_space: 256 << 20, ..Limits::default() }, ..Default::default() };
    // Fallible allocation: the job sees the failure and reports it.
    let e = must_fail(&cfg, |_, _| {
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(512 << 20).map_err(|e| format!("alloc: {e}"))?;
        Ok(())
    });
    assert!(matches!(&e, SandboxError::Job(m) if m.starts_with("alloc")), "{e}");
    // Infallible allocation: the child dies (abort; its signalling syscalls are outside the policy).
    let e = must_fail(&cfg, |_, _| {
        // (black_box: otherwise an optimised build may leave the unused allocation out.)
        let v = std::hint::black_box(vec![1u8; 512 << 20]);
        Err(format!("allocated {} bytes past the limit", v.len()))
    });
    assert!(matches!(&e, SandboxError::Killed { .. }), "expected the child to be killed, got {e}");
}

#[test]
fn cpu_limit_kills_child() {
    let cfg = SandboxConfig { limits: Limits { cpu_seconds: 1, ..Limits::default() }, ..Default::default() };
    let start = std::time::Instant::now();
    let e = must_fail(&cfg, |_, _| {
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    });
    assert!(matches!(&e, SandboxError::Killed { signal, .. } if *signal == libc::SIGXCPU), "expected SIGXCPU, got {e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn wall_timeout_kills_child() {
    let cfg = SandboxConfig {
        limits: Limits { wall_timeout: Duration::from_millis(500), ..Limits::default() },
        ..Default::default()
    };
    // Blocks reading a pipe nobody writes to: no CPU used, only the wall clock runs.
    let (r, w) = rustix::pipe::pipe().unwrap();
    let out = tempfile::tempfile().unwrap();
    require_root();
    let start = std::time::Instant::now();
    let res = run_confined(&cfg, r, out.into(), |mut input, _| {
        let mut b = [0u8; 1];
        input.read(&mut b).map(|_| ()).map_err(|e| e.to_string())
    });
    drop(w);
    let e = res.expect_err("a child blocked forever must be killed");
    assert!(matches!(e, SandboxError::Timeout { .. }), "expected a timeout, got {e}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn exit_without_status_is_an_error() {
    let e = must_fail(&SandboxConfig::default(), |_, _| {
        // SAFETY (test): ends the child at once, skipping the status message.
        unsafe { libc::_exit(0) }
    });
    assert!(
        matches!(&e, SandboxError::MalformedStatus { reason } if reason.contains("without a status")),
        "expected a missing-status error, got {e}"
    );
}

#[test]
fn forged_status_bytes_are_an_error() {
    // A compromised job writes junk to every descriptor it did not get as input/output (the
    // status pipe is among them); the parent must not accept the resulting stream.
    let e = must_fail(&SandboxConfig::default(), |i, o| {
        for fd in 0..64 {
            if fd != i.as_raw_fd() && fd != o.as_raw_fd() {
                // SAFETY (test): write(2) on raw fd numbers with a valid buffer.
                unsafe { libc::write(fd, b"CFSB\x00\xff\xff\xff\xffjunk".as_ptr().cast(), 13) };
            }
        }
        Ok(())
    });
    assert!(matches!(&e, SandboxError::MalformedStatus { .. }), "expected a malformed-status error, got {e}");
}

/// Changing the limits or the ids of the child is root-only: run this test binary again as
/// `nobody` and let it try.
#[test]
fn limits_and_ids_need_root() {
    const AS_USER: &str = "CFS_SANDBOX_TEST_AS_USER";
    if std::env::var_os(AS_USER).is_some() {
        assert!(!rustix::process::getuid().is_root());
        let custom = SandboxConfig { limits: Limits { cpu_seconds: 600, ..Limits::default() }, ..Default::default() };
        let ids = SandboxConfig { run_as: Some((0, 0)), ..Default::default() };
        for cfg in [custom, ids] {
            let (i, o) = (File::open("/dev/null").unwrap(), File::options().write(true).open("/dev/null").unwrap());
            let e = run_confined(&cfg, i.into(), o.into(), |_, _| Ok(())).expect_err("must be refused");
            assert!(matches!(e, SandboxError::NeedsRoot { .. }), "{e}");
        }
        // The default configuration works for an ordinary user too (no id change, no caps).
        let (i, o) = (File::open("/dev/null").unwrap(), File::options().write(true).open("/dev/null").unwrap());
        run_confined(&SandboxConfig::default(), i.into(), o.into(), |_, _| Ok(())).expect("unprivileged sandbox");
        return;
    }
    require_root();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "limits_and_ids_need_root", "--test-threads=1", "--nocapture"])
        .env(AS_USER, "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as nobody: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[cfg(feature = "misbehave")]
mod hooks {
    //! Tests that need the test-only hooks: each layer holds on its own.
    use super::*;
    use cfsmount::sandbox::misbehave::{run_confined_with, MisbehaveHooks};

    fn must_fail_hooked<F>(cfg: &SandboxConfig, hooks: MisbehaveHooks, job: F) -> SandboxError
    where
        F: FnOnce(File, File, Option<File>) -> Result<(), String>,
    {
        require_root();
        let (i, o, _r) = io_pair(b"x");
        match run_confined_with(cfg, hooks, i, o, job) {
            Ok(()) => panic!("the misbehaving job succeeded: the sandbox let it through"),
            Err(e) => e,
        }
    }

    const NO_SECCOMP: MisbehaveHooks = MisbehaveHooks { skip_seccomp: true, ..NONE };
    const NO_LANDLOCK: MisbehaveHooks = MisbehaveHooks { skip_landlock: true, ..NONE };
    const NONE: MisbehaveHooks =
        MisbehaveHooks { skip_seccomp: false, skip_landlock: false, proc_status: false, pretend_no_landlock: false };

    fn expect_errno(e: &SandboxError, errno: i32) {
        assert!(
            matches!(e, SandboxError::Job(m) if m == &format!("errno {errno}")),
            "expected errno {errno} from the job, got {e}"
        );
    }

    fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("no {key} in /proc/self/status"))
    }

    #[test]
    fn credentials_inside_the_child() {
        require_root();
        let (i, o, r) = io_pair(b"");
        let hooks = MisbehaveHooks { proc_status: true, ..Default::default() };
        run_confined_with(&SandboxConfig::default(), hooks, i, o, |_, mut out, status| {
            // Read after every layer is in place (the fd was opened before landlock).
            let mut status = status.ok_or("no /proc/self/status fd")?;
            let mut text = String::new();
            status.read_to_string(&mut text).map_err(|e| e.to_string())?;
            out.write_all(text.as_bytes()).map_err(|e| e.to_string())
        })
        .expect("status job");
        let text = String::from_utf8(read_back(r)).unwrap();
        let uids: Vec<&str> = status_field(&text, "Uid:").split_whitespace().collect();
        let gids: Vec<&str> = status_field(&text, "Gid:").split_whitespace().collect();
        assert_eq!(uids, ["65534"; 4], "{text}");
        assert_eq!(gids, ["65534"; 4], "{text}");
        assert_eq!(status_field(&text, "Groups:"), "", "supplementary groups left: {text}");
        for k in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(status_field(&text, k), "0000000000000000", "{k} in {text}");
        }
        assert_eq!(status_field(&text, "NoNewPrivs:"), "1");
        assert_eq!(status_field(&text, "Seccomp:"), "2", "seccomp filter mode");
    }

    #[test]
    fn without_seccomp_landlock_denies_open() {
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, |_, _, _| {
            File::open("/etc/hostname").map(|_| ()).map_err(|e| errno_of(&e))
        });
        expect_errno(&e, libc::EACCES);
    }

    #[test]
    fn without_seccomp_landlock_denies_tcp_connect() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, move |_, _, _| {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| errno_of(&e))
        });
        expect_errno(&e, libc::EACCES);
    }

    #[test]
    fn without_seccomp_landlock_scopes_abstract_unix_sockets() {
        let name = format!("cfsmount-test-{}", std::process::id());
        let addr =
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(&name).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, move |_, _, _| {
            std::os::unix::net::UnixStream::connect_addr(&addr).map(|_| ()).map_err(|e| errno_of(&e))
        });
        expect_errno(&e, libc::EPERM);
    }

    #[test]
    fn without_seccomp_ptrace_is_denied() {
        let parent = std::process::id() as libc::pid_t;
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, move |_, _, _| {
            // SAFETY (test): ptrace with integer arguments.
            let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, parent, 0, 0) };
            if r == 0 {
                Ok(())
            } else {
                Err(errno_of(&std::io::Error::last_os_error()))
            }
        });
        expect_errno(&e, libc::EPERM);
    }

    #[test]
    fn without_seccomp_mount_is_denied() {
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, |_, _, _| {
            rustix::mount::mount("none", "/mnt", "tmpfs", rustix::mount::MountFlags::empty(), None)
                .map_err(|e| format!("errno {}", e.raw_os_error()))
        });
        expect_errno(&e, libc::EPERM);
    }

    #[test]
    fn without_seccomp_execve_is_denied_by_landlock() {
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, |_, _, _| {
            let err = std::os::unix::process::CommandExt::exec(&mut std::process::Command::new("/bin/true"));
            Err(errno_of(&err))
        });
        expect_errno(&e, libc::EACCES);
    }

    #[test]
    fn without_seccomp_kill_is_denied() {
        require_root();
        let mut victim = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = victim.id() as libc::pid_t;
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, move |_, _, _| {
            rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::TERM)
                .map_err(|e| format!("errno {}", e.raw_os_error()))
        });
        expect_errno(&e, libc::EPERM);
        assert!(victim.try_wait().unwrap().is_none(), "the victim process was killed");
        victim.kill().unwrap();
        victim.wait().unwrap();
    }

    #[test]
    fn without_seccomp_setuid_root_is_denied() {
        let e = must_fail_hooked(&SandboxConfig::default(), NO_SECCOMP, |_, _, _| {
            rustix::thread::set_thread_res_uid(
                rustix::process::Uid::ROOT,
                rustix::process::Uid::ROOT,
                rustix::process::Uid::ROOT,
            )
            .map_err(|e| format!("errno {}", e.raw_os_error()))
        });
        expect_errno(&e, libc::EPERM);
    }

    #[test]
    fn kernel_without_landlock_is_refused_unless_no_sandbox() {
        require_root();
        let hooks = MisbehaveHooks { pretend_no_landlock: true, ..NONE };
        let (i, o, _r) = io_pair(b"data");
        let e = run_confined_with(&SandboxConfig::default(), hooks, i, o, |_, _, _| Ok(()))
            .expect_err("an incomplete sandbox must be refused by default");
        assert!(matches!(&e, SandboxError::Unavailable { missing } if missing.contains("landlock")), "{e}");
        assert!(e.to_string().contains("--no-sandbox"), "{e}");

        // Root with --no-sandbox: runs, with every other layer still in place.
        let cfg = SandboxConfig { allow_unsandboxed: true, ..Default::default() };
        let (i, o, r) = io_pair(b"data");
        run_confined_with(&cfg, hooks, i, o, |mut i, mut o, _| {
            // (Not io::copy: between files it uses copy_file_range, outside the parse policy.)
            let mut buf = Vec::new();
            i.read_to_end(&mut buf).map_err(|e| e.to_string())?;
            o.write_all(&buf).map_err(|e| e.to_string())
        })
        .expect("partial sandbox with allow_unsandboxed");
        assert_eq!(read_back(r), b"data");
        let e =
            must_fail_hooked(&cfg, hooks, |_, _, _| File::open("/etc/hostname").map(|_| ()).map_err(|e| errno_of(&e)));
        assert_seccomp_kill(&e);
    }

    #[test]
    fn without_landlock_seccomp_still_kills_open() {
        let e = must_fail_hooked(&SandboxConfig::default(), NO_LANDLOCK, |_, _, _| {
            File::open("/etc/hostname").map(|_| ()).map_err(|e| errno_of(&e))
        });
        assert_seccomp_kill(&e);
    }
}

/// Sandboxed vs in-process builds of every conformance case (dumpfiles and TOC JSON): the same
/// bytes (also equal to the reference's sha256), the same error for every should-fail case. This
/// also runs the real parsers and writer under the seccomp filter: a syscall outside the policy
/// would kill the child and fail the case.
mod conformance {
    use super::*;
    use crate::conformance_data::{conformance_root, forced_version, is_strict, json_dir, read_input};
    use crate::image::{sha256_hex, write_options};
    use cfsmount::build::{build_from_reader, BuildRequest, InputFormat};
    use cfsmount::erofs::writer::WriteOptions;
    use std::path::{Path, PathBuf};

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Dump { strict: bool },
        Toc,
    }

    fn request(kind: Kind, opts: WriteOptions) -> BuildRequest {
        let mut req = BuildRequest::new(match kind {
            Kind::Dump { .. } => InputFormat::Dump,
            Kind::Toc => InputFormat::Toc,
        });
        if let Kind::Dump { strict } = kind {
            req.strict_dump = strict;
        }
        req.write = opts;
        req
    }

    /// The untrusted stage of `mkimage` (`build_from_reader`), in this process.
    fn build(kind: Kind, opts: WriteOptions, input: &[u8], out: &mut dyn Write) -> Result<(), String> {
        build_from_reader(&request(kind, opts), &mut &input[..], out).map(|_| ()).map_err(|e| e.to_string())
    }

    fn sandboxed(kind: Kind, opts: WriteOptions, input: &[u8]) -> Result<Vec<u8>, SandboxError> {
        let (i, o, r) = io_pair(input);
        run_confined(&SandboxConfig::default(), i, o, move |mut input, output| {
            let mut w = std::io::BufWriter::new(output);
            build_from_reader(&request(kind, opts), &mut input, &mut w).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| format!("write image: {e}"))
        })?;
        Ok(read_back(r))
    }

    fn expected_sha(path: &Path, suffix: &str) -> Option<String> {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
    }

    fn check(path: &Path, kind: Kind, opts: WriteOptions, sha_suffix: &str) -> Result<(), String> {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let input = read_input(path.parent().unwrap(), &name);
        let mut direct = Vec::new();
        let direct_res = build(kind, opts, &input, &mut direct);
        let sandbox_res = sandboxed(kind, opts, &input);
        match (direct_res, sandbox_res) {
            (Ok(()), Ok(img)) => {
                if img != direct {
                    return Err(format!("{name}: sandboxed image differs ({} vs {} bytes)", img.len(), direct.len()));
                }
                // Agreement with the reference is the conformance tests' job
                // (tests/conformance_*.rs); here it is only noted.
                if let Some(want) = expected_sha(path, sha_suffix) {
                    let got = sha256_hex(&img);
                    if got != want {
                        eprintln!("note: {name}: image sha256 {got} differs from the reference {want}");
                    }
                }
                Ok(())
            }
            (Err(d), Err(SandboxError::Job(s))) if d == s => {
                if name.starts_with("should-fail") {
                    Ok(())
                } else {
                    Err(format!("{name}: both paths failed: {d}"))
                }
            }
            (d, s) => Err(format!("{name}: in-process {:?}, sandboxed {:?}", d.map(|_| "ok"), s.map(|v| v.len()))),
        }
    }

    /// The files in `dir` named `*.EXT` or `*.EXT.gz`, sorted by path, each with its file name.
    fn inputs(dir: &Path, ext: &str) -> Vec<(PathBuf, String)> {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        entries
            .into_iter()
            .map(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                (p, n)
            })
            .filter(|(_, n)| n.ends_with(&format!(".{ext}")) || n.ends_with(&format!(".{ext}.gz")))
            .collect()
    }

    #[test]
    fn sandboxed_and_unsandboxed_builds_are_identical() {
        require_root();
        let dir = conformance_root();
        let mut failures = Vec::new();
        let mut cases = 0;
        let dump_dir = dir.join("composefs-dump");
        for (p, n) in inputs(&dump_dir, "dump") {
            let kind = Kind::Dump { strict: is_strict(&n) };
            let opts = write_options(forced_version(&dump_dir, &n));
            cases += 1;
            if let Err(e) = check(&p, kind, opts, ".sha256") {
                failures.push(e);
            }
        }
        for (p, _) in inputs(&dir.join("composefs-json"), "json") {
            cases += 1;
            if let Err(e) = check(&p, Kind::Toc, WriteOptions::default(), ".sha256_erofs") {
                failures.push(e);
            }
        }
        assert!(cases >= 30, "only {cases} conformance cases found in {}", dir.display());
        assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    }

    /// `mkimage`'s parent side really goes through the sandbox: the same bytes as the in-process
    /// build, and a sandbox limit set through its options (1 ms of wall clock) makes it fail.
    /// (RLIMIT_AS would not do here: a forked child may reuse heap the test process already has
    /// mapped; the limit only stops growth.)
    #[test]
    fn mkimage_builds_through_the_sandbox() {
        use cfsmount::build::{build_image, BuildOptions, Output, Source};
        require_root();
        let json = read_input(&json_dir(), "cs9-x86_64-minimal.json.gz");
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("toc.json");
        std::fs::write(&input, &json).unwrap();
        let req = request(Kind::Toc, WriteOptions::default());

        let out = tmp.path().join("image");
        build_image(&req, Source::Path(input.clone()), &Output::Path(out.clone()), &BuildOptions::default())
            .expect("mkimage build");
        let mut direct = Vec::new();
        build(Kind::Toc, WriteOptions::default(), &json, &mut direct).unwrap();
        assert!(std::fs::read(&out).unwrap() == direct, "mkimage's image differs from the in-process build");

        let starved = BuildOptions {
            sandbox: SandboxConfig {
                limits: Limits { wall_timeout: Duration::from_millis(1), ..Limits::default() },
                ..Default::default()
            },
            ..Default::default()
        };
        let out2 = tmp.path().join("image2");
        let err = build_image(&req, Source::Path(input), &Output::Path(out2.clone()), &starved)
            .expect_err("a 1 ms wall-clock limit must stop the sandboxed build");
        assert!(format!("{err:#}").contains("sandboxed child"), "{err:#}");
        assert!(!out2.exists(), "a failed build left an image behind");
    }
}
