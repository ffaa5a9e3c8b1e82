//! Sandbox for the untrusted-input stage: child process without privileges, filesystem or unlisted syscalls.
//!
//! [`run_confined`] forks; the child confines itself completely and only then runs the job on the
//! two file descriptors it was given; the parent waits (with a timeout) and turns every way the
//! child can end into a clear `Result`. The only things the parent takes from the child are the
//! bytes the job wrote to `output` (which the caller must treat as untrusted) and one small status
//! message. See docs/sandbox.md.
//!
//! The parts: `child` (the order of confinement), `landlock` and `seccomp` (the two policy
//! layers), `status` (the one message from child to parent), `parent` (supervision: timeout,
//! exit, signal) and `support` (what this kernel offers the sandbox).
//!
//! # Order of confinement in the child
//! 1. close every fd except input, output, status (and the landlock directory fds), clear the
//!    environment, set resource limits;
//! 2. with CAP_SETPCAP: lock securebits (NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, NO_CAP_AMBIENT_RAISE,
//!    all locked) and empty the bounding set; always clear the ambient set;
//! 3. when root (or setuid): setgroups([]), setresgid, setresuid to an unprivileged id;
//! 4. clear effective/permitted/inheritable capabilities and verify they are empty;
//! 5. parent-death signal, no_new_privs;
//! 6. landlock: every access right the kernel knows is handled, none granted (except
//!    `read_dirs`/`write_dirs`), signals and abstract unix sockets scoped;
//! 7. seccomp filter from policy/seccomp.json (compiled by build.rs), default action KILL_PROCESS.
//!
//! # Threads and fork
//! The child is created with a plain `fork` (not a re-exec) because the job is an arbitrary
//! closure over the parent's data (the build request), which cannot cross an `exec`. The CLI calls
//! `run_confined` while single-threaded (the fs-verity digest threads are scoped and joined before
//! the build). If another thread exists at fork time, it does not exist in the child; the child
//! only uses raw syscalls and glibc malloc (which glibc makes fork-safe) before confinement, so the
//! worst case is a hang on a lock held by a vanished thread, which the wall-clock timeout turns into
//! an error. Confinement cannot be skipped that way.
#[cfg(all(feature = "misbehave", not(debug_assertions)))]
compile_error!("the `misbehave` feature is test-only and must not be used in a release build");

mod child;
mod landlock;
mod parent;
mod seccomp;
mod status;
mod support;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use ::landlock::PathFd;
use rustix::process::{Gid, Uid};

pub(crate) use support::{sandbox_line, KernelSupport, LANDLOCK_KNOWN_ABI};

/// `nobody` / `nogroup` on Debian, Fedora, Arch, Alpine: the ids root-invoked children run as.
pub(crate) const NOBODY_UID: u32 = 65534;
pub(crate) const NOGROUP_GID: u32 = 65534;

/// Resource limits of the child. Only root may change them from the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS in bytes (virtual address space; the allocator fails beyond it).
    pub address_space: u64,
    /// RLIMIT_CPU in seconds (SIGXCPU at the limit, SIGKILL one second later).
    pub cpu_seconds: u64,
    /// RLIMIT_FSIZE in bytes (largest file offset the child may write: the image size).
    pub file_size: u64,
    /// Wall-clock time after which the parent kills the child.
    pub wall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { address_space: 4 << 30, cpu_seconds: 60, file_size: 4 << 30, wall_timeout: Duration::from_secs(120) }
    }
}

/// How the sandboxed child is set up. `SandboxConfig::default()` is the production setting.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Directories the child may read beneath (landlock ReadFile|ReadDir), e.g. `--from-dir`.
    pub read_dirs: Vec<PathBuf>,
    /// Directories the child may create/write files beneath, e.g. `--digest-store`, `--objects`.
    pub write_dirs: Vec<PathBuf>,
    /// Root only (`--no-sandbox`): run even when the kernel lacks landlock or seccomp, with
    /// whatever confinement it does offer, after a warning on stderr.
    pub allow_unsandboxed: bool,
    /// Resource limits; changing them from [`Limits::default`] needs a real uid of 0.
    pub limits: Limits,
    /// Root only: uid/gid for the child instead of nobody/nogroup (or the setuid caller's ids).
    /// The privileged helper passes its caller's ids here, so that whatever the child reads
    /// (e.g. `--objects` for verity digests) is read with the caller's rights.
    pub run_as: Option<(u32, u32)>,
    /// The output is a file the caller will fsync once the job is done: while the child runs,
    /// the parent starts the writeback of what it has written so far every 2 ms
    /// (`sync_file_range`), so that the disk writes overlap the rest of the job and the final
    /// fsync waits for less. Changes nothing the child can do.
    pub writeback_output: bool,
}

/// Runs `job(input, output)` in a confined child process and reports how it ended.
///
/// The job's `Err(String)` comes back as [`SandboxError::Job`]. The bytes the job wrote to
/// `output` are the only other result; callers must validate them as untrusted (the image header
/// and size, then the mount stage treats the image as hostile EROFS). `output` should be a regular
/// file or memfd (a pipe must be drained by someone else, or the child blocks until the timeout).
pub fn run_confined<F>(cfg: &SandboxConfig, input: OwnedFd, output: OwnedFd, job: F) -> Result<(), SandboxError>
where
    F: FnOnce(File, File) -> Result<(), String>,
{
    run_with_hooks(cfg, &Hooks::default(), input, output, move |i, o, _probe| job(i, o))
}

/// Test-only hooks (feature `misbehave`, refused in release builds by build.rs and a
/// `compile_error!`): they let tests weaken single layers to show the others still hold, and hand
/// the job a pre-landlock fd of /proc/self/status to inspect its own credentials.
#[derive(Debug, Clone, Copy, Default)]
struct Hooks {
    #[cfg(feature = "misbehave")]
    skip_seccomp: bool,
    #[cfg(feature = "misbehave")]
    skip_landlock: bool,
    #[cfg(feature = "misbehave")]
    proc_status: bool,
    #[cfg(feature = "misbehave")]
    pretend_no_landlock: bool,
}

#[cfg(feature = "misbehave")]
pub mod misbehave {
    //! Test-only entry points (feature `misbehave`; never in a release build).
    use super::*;

    /// Which layers to leave out and what to hand the job.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct MisbehaveHooks {
        /// Do not install the seccomp filter (shows landlock/capabilities/uid still hold).
        pub skip_seccomp: bool,
        /// Do not apply landlock (shows seccomp still holds).
        pub skip_landlock: bool,
        /// Open /proc/self/status before landlock and pass it as the job's third argument.
        pub proc_status: bool,
        /// Act as if the kernel had no landlock (tests the refusal and `--no-sandbox`).
        pub pretend_no_landlock: bool,
    }

    /// [`run_confined`] with hooks; the job also gets the /proc/self/status fd if asked for.
    pub fn run_confined_with<F>(
        cfg: &SandboxConfig,
        hooks: MisbehaveHooks,
        input: OwnedFd,
        output: OwnedFd,
        job: F,
    ) -> Result<(), SandboxError>
    where
        F: FnOnce(File, File, Option<File>) -> Result<(), String>,
    {
        let h = Hooks {
            skip_seccomp: hooks.skip_seccomp,
            skip_landlock: hooks.skip_landlock,
            proc_status: hooks.proc_status,
            pretend_no_landlock: hooks.pretend_no_landlock,
        };
        run_with_hooks(cfg, &h, input, output, job)
    }
}

/// One accessor per hook: the flag with the `misbehave` feature, a constant `false` without it.
macro_rules! hook_accessors {
    ($($name:ident),*) => {
        impl Hooks {
            $(
                fn $name(&self) -> bool {
                    #[cfg(feature = "misbehave")]
                    return self.$name;
                    #[cfg(not(feature = "misbehave"))]
                    false
                }
            )*
        }
    };
}
hook_accessors!(skip_seccomp, skip_landlock, pretend_no_landlock, proc_status);

/// Decided by the parent before forking.
struct Plan {
    landlock: bool,
    seccomp: bool,
    /// Filter to install (parse-only or parse+files).
    policy: &'static [u8],
    /// Ids to switch to (None: keep the current ones).
    ids: Option<(Uid, Gid)>,
    limits: Limits,
    parent_pid: rustix::process::Pid,
}

fn run_with_hooks<F>(
    cfg: &SandboxConfig,
    hooks: &Hooks,
    input: OwnedFd,
    output: OwnedFd,
    job: F,
) -> Result<(), SandboxError>
where
    F: FnOnce(File, File, Option<File>) -> Result<(), String>,
{
    let real_root = rustix::process::getuid().is_root();
    if !real_root {
        if cfg.limits != Limits::default() {
            return Err(SandboxError::NeedsRoot { what: "changing the sandbox resource limits" });
        }
        if cfg.run_as.is_some() {
            return Err(SandboxError::NeedsRoot { what: "choosing the sandbox uid/gid" });
        }
    }

    let mut support = KernelSupport::probe();
    if hooks.pretend_no_landlock() {
        support.landlock_abi = Err("landlock is not built into this kernel (pretended by a test hook)".into());
    }
    let missing = support.missing();
    if !missing.is_empty() {
        if !cfg.allow_unsandboxed {
            return Err(SandboxError::Unavailable { missing: missing.join("; ") });
        }
        if !real_root {
            return Err(SandboxError::NeedsRoot { what: "running without the full sandbox (--no-sandbox)" });
        }
        eprintln!(
            "cfsmount: warning: running the parser with a partial sandbox (--no-sandbox): {}",
            missing.join("; ")
        );
    }

    let files_policy = !cfg.read_dirs.is_empty() || !cfg.write_dirs.is_empty();
    let plan = Plan {
        landlock: support.landlock_abi.is_ok() && !hooks.skip_landlock(),
        seccomp: support.seccomp.is_ok() && support.policy_compiled && !hooks.skip_seccomp(),
        policy: if files_policy { seccomp::POLICY_FILES } else { seccomp::POLICY_PARSE },
        ids: target_ids(cfg),
        limits: cfg.limits,
        parent_pid: rustix::process::getpid(),
    };

    // Directories for landlock rules are opened (O_PATH) by the parent so that errors name the path.
    let mut dirs = Vec::new();
    for (p, write) in cfg.read_dirs.iter().map(|p| (p, false)).chain(cfg.write_dirs.iter().map(|p| (p, true))) {
        let fd = PathFd::new(p).map_err(|e| SandboxError::Dir { path: p.clone(), reason: e.to_string() })?;
        dirs.push((fd, write));
    }

    let (status_r, status_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
            .map_err(|e| SandboxError::Parent { step: "pipe", source: e.into() })?;
    // The child's end must block (a full pipe is waited on, not an error).
    rustix::fs::fcntl_setfl(&status_w, rustix::fs::OFlags::empty())
        .map_err(|e| SandboxError::Parent { step: "fcntl(status pipe)", source: e.into() })?;
    let proc_status = hooks.proc_status();

    // The parent's own descriptor of the output, for the writeback only (see `writeback_output`).
    let writeback = if cfg.writeback_output {
        Some(output.try_clone().map_err(|e| SandboxError::Parent { step: "dup(output)", source: e })?)
    } else {
        None
    };

    // The child's copy of `status_r` is closed by close_range (it is not in the keep list).
    let pid = crate::sys::sandbox::fork_child(move || {
        child::child_main(&plan, dirs, input, output, status_w, proc_status, job)
    })
    .map_err(|e| SandboxError::Parent { step: "fork", source: e })?;
    // `input`, `output`, `status_w` and the job were moved into the closure, which the parent
    // dropped on return: the parent holds no copy of the child's descriptors any more.
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or(SandboxError::Parent { step: "fork", source: io::Error::other("fork returned pid 0 in the parent") })?;
    parent::wait_child(pid, status_r, cfg.limits.wall_timeout, writeback.as_ref().map(|f| f.as_fd()))
}

/// The uid/gid the child switches to, or None to keep the current ones.
fn target_ids(cfg: &SandboxConfig) -> Option<(Uid, Gid)> {
    if let Some((u, g)) = cfg.run_as {
        return Some((Uid::from_raw(u), Gid::from_raw(g)));
    }
    let (ruid, euid) = (rustix::process::getuid(), rustix::process::geteuid());
    let (rgid, egid) = (rustix::process::getgid(), rustix::process::getegid());
    if euid.is_root() && ruid.is_root() {
        Some((Uid::from_raw(NOBODY_UID), Gid::from_raw(NOGROUP_GID)))
    } else if ruid != euid || rgid != egid {
        // setuid/setgid: become the caller entirely.
        Some((ruid, rgid))
    } else {
        None
    }
}

/// Errors of the sandbox. Messages name the step, signal or limit involved.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "sandbox unavailable on this kernel: {missing} (root may pass --no-sandbox to run with partial confinement)"
    )]
    Unavailable { missing: String },
    #[error("{what} requires root")]
    NeedsRoot { what: &'static str },
    #[error("sandbox directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("sandbox parent: {step}: {source}")]
    Parent { step: &'static str, source: io::Error },
    #[error("sandboxed child could not confine itself: {0}")]
    Setup(String),
    #[error("{0}")]
    Job(String),
    #[error("sandboxed child panicked: {0}")]
    Panicked(String),
    #[error("sandboxed child killed by signal {signal}: {meaning}")]
    Killed { signal: i32, meaning: &'static str },
    #[error("sandboxed child did not finish within {seconds} s and was killed")]
    Timeout { seconds: f64 },
    #[error("sandboxed child sent a malformed status: {reason}")]
    MalformedStatus { reason: String },
}
