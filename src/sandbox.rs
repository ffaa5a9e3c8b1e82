//! Sandbox for the untrusted-input stage: child process without privileges, filesystem or unlisted syscalls.
//!
//! [`run_confined`] forks; the child confines itself completely and only then runs the job on the
//! two file descriptors it was given; the parent waits (with a timeout) and turns every way the
//! child can end into a clear `Result`. The only things the parent takes from the child are the
//! bytes the job wrote to `output` (which the caller must treat as untrusted) and one small status
//! message. See docs/sandbox.md.
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

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use rustix::process::{Gid, Uid};

/// The landlock ABI whose rights we request (best effort: the kernel's subset is applied).
const LANDLOCK_REQUEST_ABI: ABI = ABI::V10;
/// Highest landlock ABI this build knows the access rights of.
const LANDLOCK_KNOWN_ABI: i32 = 10;

/// `nobody` / `nogroup` on Debian, Fedora, Arch, Alpine: the ids root-invoked children run as.
pub const NOBODY_UID: u32 = 65534;
pub const NOGROUP_GID: u32 = 65534;

/// Compiled seccomp programs (see build.rs, policy/seccomp.json).
static POLICY_PARSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-parse.bpf"));
static POLICY_FILES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-files.bpf"));

/// Largest status message the parent accepts from the child.
const MAX_STATUS: usize = 16 * 1024;
/// Longest job error message passed on (the rest is cut).
const MAX_MESSAGE: usize = 4096;
const STATUS_MAGIC: &[u8; 4] = b"CFSB";

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
    /// Root only: uid/gid for the child instead of nobody/nogroup (the setuid helper passes its
    /// caller's ids, so whatever the child reads is read with the caller's rights).
    pub run_as: Option<(u32, u32)>,
}

/// What this kernel offers the sandbox (cheap probes, no side effects).
#[derive(Debug, Clone)]
pub struct KernelSupport {
    /// Landlock ABI version, or why there is none.
    pub landlock_abi: Result<i32, String>,
    /// Seccomp filter mode with SECCOMP_RET_KILL_PROCESS, or why not.
    pub seccomp: Result<(), String>,
    /// Whether build.rs compiled the policy for this architecture.
    pub policy_compiled: bool,
}

impl KernelSupport {
    pub fn probe() -> Self {
        let landlock_abi = match crate::sys::sandbox::landlock_abi() {
            Ok(v) => Ok(v),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Err("landlock is built in but disabled (add landlock to the lsm= boot parameter)".into())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err("landlock is not built into this kernel".into()),
            Err(e) => Err(format!("landlock probe failed: {e}")),
        };
        let seccomp = match rustix::thread::secure_computing_mode() {
            Err(e) => Err(format!("seccomp is not available (PR_GET_SECCOMP: {e})")),
            Ok(_) => crate::sys::sandbox::seccomp_kill_process_available()
                .map_err(|e| format!("seccomp lacks SECCOMP_RET_KILL_PROCESS ({e})")),
        };
        KernelSupport { landlock_abi, seccomp, policy_compiled: !POLICY_PARSE.is_empty() }
    }

    /// Reasons the sandbox would be incomplete on this machine (empty: fully available).
    pub fn missing(&self) -> Vec<String> {
        let mut m = Vec::new();
        if let Err(e) = &self.landlock_abi {
            m.push(e.clone());
        }
        if let Err(e) = &self.seccomp {
            m.push(e.clone());
        }
        if !self.policy_compiled {
            m.push(format!(
                "no seccomp policy compiled for {} (seccompiler knows x86_64, aarch64, riscv64)",
                std::env::consts::ARCH
            ));
        }
        m
    }
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
        policy: if files_policy { POLICY_FILES } else { POLICY_PARSE },
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

    // The child's copy of `status_r` is closed by close_range (it is not in the keep list).
    let pid =
        crate::sys::sandbox::fork_child(move || child_main(&plan, dirs, input, output, status_w, proc_status, job))
            .map_err(|e| SandboxError::Parent { step: "fork", source: e })?;
    // `input`, `output`, `status_w` and the job were moved into the closure, which the parent
    // dropped on return: the parent holds no copy of the child's descriptors any more.
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or(SandboxError::Parent { step: "fork", source: io::Error::other("fork returned pid 0 in the parent") })?;
    wait_child(pid, status_r, cfg.limits.wall_timeout)
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

// ---------------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------------

const KIND_OK: u8 = 0;
const KIND_JOB: u8 = 1;
const KIND_SETUP: u8 = 2;
const KIND_PANIC: u8 = 3;

fn child_main<F>(
    plan: &Plan,
    dirs: Vec<(PathFd, bool)>,
    input: OwnedFd,
    output: OwnedFd,
    status: OwnedFd,
    proc_status: bool,
    job: F,
) -> i32
where
    F: FnOnce(File, File, Option<File>) -> Result<(), String>,
{
    let status_fd = status.as_raw_fd();
    let probe = if proc_status { File::open("/proc/self/status").ok() } else { None };
    match confine(plan, dirs, &input, &output, status_fd, probe.as_ref().map(|f| f.as_raw_fd())) {
        Ok(()) => {}
        Err(msg) => {
            send_status(&status, KIND_SETUP, msg.as_bytes());
            return 2;
        }
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        job(File::from(input), File::from(output), probe)
    }));
    match result {
        Ok(Ok(())) => {
            send_status(&status, KIND_OK, b"");
            0
        }
        Ok(Err(msg)) => {
            send_status(&status, KIND_JOB, msg.as_bytes());
            1
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            send_status(&status, KIND_PANIC, msg.as_bytes());
            3
        }
    }
}

fn send_status(status: &OwnedFd, kind: u8, msg: &[u8]) {
    let msg = &msg[..msg.len().min(MAX_MESSAGE)];
    let mut buf = Vec::with_capacity(9 + msg.len());
    buf.extend_from_slice(STATUS_MAGIC);
    buf.push(kind);
    buf.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    buf.extend_from_slice(msg);
    let mut rest = &buf[..];
    while !rest.is_empty() {
        match rustix::io::write(status, rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// Applies every layer in order; the error names the step that failed.
fn confine(
    plan: &Plan,
    dirs: Vec<(PathFd, bool)>,
    input: &OwnedFd,
    output: &OwnedFd,
    status: RawFd,
    probe: Option<RawFd>,
) -> Result<(), String> {
    use crate::sys::sandbox as sys;
    let step = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");

    // 1. File descriptors, environment, limits.
    let mut keep = vec![input.as_raw_fd(), output.as_raw_fd(), status];
    keep.extend(dirs.iter().map(|(d, _)| d.as_fd().as_raw_fd()));
    keep.extend(probe);
    sys::close_fds_except(&keep).map_err(|e| step("close_range", &e))?;
    sys::clear_environment().map_err(|e| step("clearenv", &e))?;
    sys::disable_heap_trim();
    set_limits(&plan.limits).map_err(|e| step("setrlimit", &e))?;

    // 2. Securebits and bounding set (need CAP_SETPCAP), ambient set.
    let have_setpcap = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false);
    if have_setpcap {
        use rustix::thread::CapabilitiesSecureBits as S;
        let bits = S::NO_ROOT
            | S::NO_ROOT_LOCKED
            | S::NO_SETUID_FIXUP
            | S::NO_SETUID_FIXUP_LOCKED
            | S::KEEP_CAPS_LOCKED
            | S::NO_CAP_AMBIENT_RAISE
            | S::NO_CAP_AMBIENT_RAISE_LOCKED;
        rustix::thread::set_capabilities_secure_bits(bits).map_err(|e| step("PR_SET_SECUREBITS", &e))?;
        // Every capability number the kernel knows, including ones newer than the caps crate.
        sys::drop_bounding_set_all().map_err(|e| step("PR_CAPBSET_DROP", &e))?;
        let left = caps::read(None, caps::CapSet::Bounding).map_err(|e| step("read bounding set", &e))?;
        if !left.is_empty() {
            return Err(format!("capabilities left in the bounding set: {left:?}"));
        }
    }
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| step("clear ambient set", &e))?;

    // 3. Unprivileged ids (raw per-thread syscalls; the child has one thread).
    if let Some((uid, gid)) = plan.ids {
        let have_setgid = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETGID).unwrap_or(false);
        if have_setgid {
            rustix::thread::set_thread_groups(&[]).map_err(|e| step("setgroups([])", &e))?;
        }
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| step("setresgid", &e))?;
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| step("setresuid", &e))?;
        if rustix::process::getuid() != uid || rustix::process::geteuid() != uid || rustix::process::getegid() != gid {
            return Err("uid/gid switch did not take effect".into());
        }
    }

    // 4. No capabilities left in any set.
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| step("clear capabilities", &e))?;
    }
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted, caps::CapSet::Inheritable, caps::CapSet::Ambient] {
        let left = caps::read(None, set).map_err(|e| step("read capabilities", &e))?;
        if !left.is_empty() {
            return Err(format!("capabilities left in {set:?} after dropping"));
        }
    }

    // 5. Die with the parent; never gain privileges through exec.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| step("PR_SET_PDEATHSIG", &e))?;
    if rustix::process::getppid() != Some(plan.parent_pid) {
        return Err("parent exited during sandbox setup".into());
    }
    rustix::thread::set_no_new_privs(true).map_err(|e| step("PR_SET_NO_NEW_PRIVS", &e))?;

    // 6. Landlock.
    if plan.landlock {
        apply_landlock(dirs).map_err(|e| step("landlock", &e))?;
    } else {
        drop(dirs);
    }

    // 7. Seccomp, last: after this only the policy's syscalls work.
    if plan.seccomp {
        let prog = decode_bpf(plan.policy).ok_or_else(|| "seccomp: malformed compiled policy".to_string())?;
        seccompiler::apply_filter(&prog).map_err(|e| step("seccomp", &e))?;
    }
    Ok(())
}

fn set_limits(l: &Limits) -> rustix::io::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let set = |r, soft: u64, hard: u64| setrlimit(r, Rlimit { current: Some(soft), maximum: Some(hard) });
    set(Resource::As, l.address_space, l.address_space)?;
    set(Resource::Cpu, l.cpu_seconds, l.cpu_seconds.saturating_add(1))?;
    set(Resource::Fsize, l.file_size, l.file_size)?;
    set(Resource::Core, 0, 0)?;
    set(Resource::Memlock, 0, 0)?;
    set(Resource::Nofile, 64, 64)?;
    Ok(())
}

fn apply_landlock(dirs: Vec<(PathFd, bool)>) -> Result<(), String> {
    build_landlock(dirs).map_err(|e| e.to_string()).and_then(|st| {
        if st == RulesetStatus::NotEnforced {
            Err("ruleset not enforced".to_string())
        } else {
            Ok(())
        }
    })
}

fn build_landlock(dirs: Vec<(PathFd, bool)>) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi = LANDLOCK_REQUEST_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = read
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::RemoveFile
        | AccessFs::Refer
        | AccessFs::Truncate;
    let mut rs = landlock::Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    for (fd, w) in dirs {
        rs = rs.add_rule(PathBeneath::new(fd, if w { write } else { read }))?;
    }
    Ok(rs.restrict_self()?.ruleset)
}

fn decode_bpf(blob: &[u8]) -> Option<Vec<seccompiler::sock_filter>> {
    if blob.is_empty() || blob.len() % 8 != 0 {
        return None;
    }
    Some(
        blob.chunks_exact(8)
            .map(|c| seccompiler::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------

fn wait_child(pid: rustix::process::Pid, status_r: OwnedFd, timeout: Duration) -> Result<(), SandboxError> {
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Cannot supervise it: kill and reap before reporting.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            return Err(SandboxError::Parent { step: "pidfd_open", source: e.into() });
        }
    };
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut eof = false;
    let mut timed_out = false;
    let mut oversized = false;
    let mut status_file = File::from(status_r);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // After end-of-file on the status pipe only the exit is left to wait for (a hung-up pipe
        // stays "ready" and would make poll spin).
        let first = if eof { pidfd.as_fd() } else { status_file.as_fd() };
        let ready = crate::sys::sandbox::poll_two(first, pidfd.as_fd(), ms.max(1))
            .map_err(|e| SandboxError::Parent { step: "poll", source: e })?;
        if ready.a && !eof {
            eof = drain(&mut status_file, &mut buf);
            if buf.len() > MAX_STATUS {
                oversized = true;
                break;
            }
        }
        if ready.b {
            break;
        }
    }
    if timed_out || oversized {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    }
    let ws = loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, ws))) => break ws,
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(SandboxError::Parent { step: "waitpid", source: e.into() }),
        }
    };
    if timed_out {
        return Err(SandboxError::Timeout { seconds: timeout.as_secs_f64() });
    }
    if oversized {
        return Err(SandboxError::MalformedStatus { reason: format!("status message over {MAX_STATUS} bytes") });
    }
    if !eof {
        drain(&mut status_file, &mut buf);
    }
    if let Some(sig) = ws.terminating_signal() {
        return Err(SandboxError::Killed { signal: sig, meaning: signal_meaning(sig) });
    }
    let code = ws.exit_status().unwrap_or(-1);
    let (kind, msg) = parse_status(&buf)?;
    match (kind, code) {
        (KIND_OK, 0) => Ok(()),
        (KIND_JOB, 1) => Err(SandboxError::Job(msg)),
        (KIND_SETUP, 2) => Err(SandboxError::Setup(msg)),
        (KIND_PANIC, 3) => Err(SandboxError::Panicked(msg)),
        (k, c) => Err(SandboxError::MalformedStatus { reason: format!("status kind {k} with exit code {c}") }),
    }
}

/// Reads what is available without blocking; returns true at end of file.
fn drain(f: &mut File, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_STATUS {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Validates the child's status message: magic, kind, length, and nothing after it.
fn parse_status(buf: &[u8]) -> Result<(u8, String), SandboxError> {
    let bad = |reason: &str| SandboxError::MalformedStatus { reason: reason.to_string() };
    if buf.is_empty() {
        return Err(bad("the child exited without a status message"));
    }
    if buf.len() < 9 || &buf[..4] != STATUS_MAGIC {
        return Err(bad("bad header"));
    }
    let kind = buf[4];
    if kind > KIND_PANIC {
        return Err(bad("unknown kind"));
    }
    let len = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    if len > MAX_MESSAGE || buf.len() != 9 + len {
        return Err(bad("length mismatch"));
    }
    Ok((kind, sanitize(&buf[9..])))
}

/// Printable one-line text from the child's (untrusted) message.
fn sanitize(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn signal_meaning(sig: i32) -> &'static str {
    match sig {
        libc::SIGSYS => {
            "a system call outside the seccomp policy (also how abort() ends after an allocation fails under the address-space limit)"
        }
        libc::SIGXCPU => "the CPU time limit",
        libc::SIGXFSZ => "the file size limit",
        libc::SIGKILL => "SIGKILL (CPU hard limit, out-of-memory killer or an administrator)",
        libc::SIGABRT => "abort (typically an allocation failing under the address-space limit)",
        libc::SIGSEGV | libc::SIGBUS => "a memory fault (stack overflow or a bug)",
        _ => "a signal",
    }
}

// ---------------------------------------------------------------------------------------------
// doctor
// ---------------------------------------------------------------------------------------------

/// `cfsmount doctor`: which kernel features this machine offers (cheap, side-effect-free probes).
pub fn doctor() -> anyhow::Result<()> {
    let mut out = String::new();
    for line in crate::sandbox::doctor_report() {
        out.push_str(&line);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// Lines of the doctor report (also usable by `--version` style output).
pub fn doctor_report() -> Vec<String> {
    let mut l = Vec::new();
    let uname = rustix::system::uname();
    l.push(format!("kernel: {} {}", uname.release().to_string_lossy(), uname.machine().to_string_lossy()));

    let s = KernelSupport::probe();
    match &s.landlock_abi {
        Ok(v) if *v > LANDLOCK_KNOWN_ABI => l.push(format!(
            "landlock: ABI {v} (this build handles rights up to ABI {LANDLOCK_KNOWN_ABI}; newer rights stay unhandled)"
        )),
        Ok(v) => l.push(format!("landlock: ABI {v}")),
        Err(e) => l.push(format!("landlock: no: {e}")),
    }
    match &s.seccomp {
        Ok(()) => l.push(format!(
            "seccomp: filter mode with KILL_PROCESS; policy compiled for {}: {}",
            std::env::consts::ARCH,
            if s.policy_compiled { "yes" } else { "no" }
        )),
        Err(e) => l.push(format!("seccomp: no: {e}")),
    }
    l.push(sandbox_line(&s));
    for (name, r) in probe_mount_features() {
        l.push(format!("{name}: {r}"));
    }
    l.push(format!("fs-verity: {}", verity_report()));
    l
}

/// One line on whether the parser sandbox is complete here (`doctor`, `--version`).
pub fn sandbox_line(s: &KernelSupport) -> String {
    let missing = s.missing();
    if missing.is_empty() {
        let abi = s.landlock_abi.as_ref().map_or(0, |v| *v);
        format!("sandbox: complete (landlock ABI {abi}, seccomp allowlist)")
    } else {
        format!(
            "sandbox: WARNING incomplete ({}); mkimage refuses to run unless root passes --no-sandbox",
            missing.join("; ")
        )
    }
}

/// Mount-related features. As root, fsopen/fsconfig probes that never create a mount; otherwise
/// what /proc and /dev show.
fn probe_mount_features() -> Vec<(&'static str, String)> {
    use rustix::mount::{fsconfig_create, fsconfig_set_string, fsopen, FsOpenFlags};
    let mut r = Vec::new();
    let root = rustix::process::geteuid().is_root();
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let listed = |fs: &str| filesystems.lines().any(|l| l.split_whitespace().last() == Some(fs));

    r.push((
        "loop-control",
        match rustix::fs::stat("/dev/loop-control") {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice => {
                "yes (/dev/loop-control)".to_string()
            }
            Ok(_) => "no (/dev/loop-control is not a character device)".to_string(),
            Err(e) => format!("no (/dev/loop-control: {e})"),
        },
    ));

    let erofs = if root { fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).ok() } else { None };
    r.push((
        "erofs",
        match (&erofs, listed("erofs")) {
            (Some(_), _) | (None, true) => "yes".to_string(),
            (None, false) if root => "no (fsopen(\"erofs\") failed)".to_string(),
            (None, false) => {
                "not listed in /proc/filesystems (module may load on demand; run as root to probe)".to_string()
            }
        },
    ));
    r.push((
        "erofs file-backed",
        match erofs {
            None => "unknown (needs root and EROFS)".to_string(),
            Some(fsfd) => {
                // A 4 KiB zero file is not an EROFS image: a kernel with file-backed mounts rejects
                // its superblock (EINVAL); one without insists on a block device (ENOTBLK).
                // Nothing is mounted either way. The file is an unnamed O_TMPFILE on a disk
                // filesystem (tmpfs/memfd pages cannot back EROFS), so nothing is left behind.
                let probe = || -> io::Result<io::Result<()>> {
                    let tmp = rustix::fs::open(
                        "/var/tmp",
                        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::from_raw_mode(0o600),
                    )?;
                    rustix::fs::ftruncate(&tmp, 4096)?;
                    fsconfig_set_string(&fsfd, "source", format!("/proc/self/fd/{}", tmp.as_raw_fd()))?;
                    Ok(fsconfig_create(&fsfd).map_err(io::Error::from))
                };
                match probe() {
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTBLK) => {
                        "no (needs a loop device; or /var/tmp is on a filesystem EROFS cannot read from)".to_string()
                    }
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => "yes".to_string(),
                    Ok(Err(e)) => format!("unknown ({e})"),
                    Ok(Ok(())) => "yes (unexpectedly accepted an empty file)".to_string(),
                    Err(e) => format!("unknown ({e})"),
                }
            }
        },
    ));

    let overlay = if root { fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).ok() } else { None };
    r.push((
        "overlay data-only lowers",
        match overlay {
            None if root => "no (fsopen(\"overlay\") failed)".to_string(),
            None => format!(
                "overlay {}; run as root to probe lowerdir+/datadir+",
                if listed("overlay") { "listed" } else { "not listed" }
            ),
            Some(fsfd) => {
                let lower = fsconfig_set_string(&fsfd, "lowerdir+", "/").is_ok();
                let data = fsconfig_set_string(&fsfd, "datadir+", "/").is_ok();
                match (lower, data) {
                    (true, true) => "yes (lowerdir+/datadir+)".to_string(),
                    (true, false) => {
                        "lowerdir+ only; data-only lowers via the \"::\" lowerdir syntax (Linux 6.5+)".to_string()
                    }
                    _ => "no lowerdir+/datadir+; try the \"::\" lowerdir syntax (Linux 6.5+)".to_string(),
                }
            }
        },
    ));

    r.push((
        "idmapped mounts",
        match crate::sys::sandbox::mount_setattr_available() {
            Ok(()) => "mount_setattr available (MOUNT_ATTR_IDMAP; the filesystem must support idmaps)".to_string(),
            Err(e) => format!("no (mount_setattr: {e})"),
        },
    ));
    r
}

fn verity_report() -> String {
    let mut built = Vec::new();
    for fs in ["ext4", "f2fs", "btrfs"] {
        if std::path::Path::new(&format!("/sys/fs/{fs}/features/verity")).exists() {
            built.push(fs);
        }
    }
    let exe = match File::open("/proc/self/exe") {
        Ok(f) => match crate::fsverity::measure(f.as_fd()) {
            Ok(_) | Err(crate::fsverity::VerityError::NotEnabled) => "supported on the filesystem of this binary",
            Err(crate::fsverity::VerityError::Unsupported) => "not supported on the filesystem of this binary",
            Err(_) => "unknown for the filesystem of this binary",
        },
        Err(_) => "unknown",
    };
    if built.is_empty() {
        format!("no filesystem advertises verity in /sys/fs/*/features; {exe}")
    } else {
        format!("advertised by {}; {exe}", built.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = STATUS_MAGIC.to_vec();
        v.push(kind);
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn status_well_formed() {
        assert_eq!(parse_status(&msg(KIND_OK, b"")).unwrap(), (KIND_OK, String::new()));
        assert_eq!(parse_status(&msg(KIND_JOB, b"bad entry")).unwrap(), (KIND_JOB, "bad entry".into()));
    }

    #[test]
    fn status_malformed_is_rejected() {
        let bad = |b: &[u8]| matches!(parse_status(b), Err(SandboxError::MalformedStatus { .. }));
        assert!(bad(b""), "empty");
        assert!(bad(b"CFSB\0\0\0"), "short header");
        assert!(bad(&msg(KIND_OK, b"")[1..]), "shifted");
        let mut m = msg(KIND_OK, b"");
        m[0] = b'X';
        assert!(bad(&m), "magic");
        assert!(bad(&msg(9, b"")), "unknown kind");
        let mut m = msg(KIND_JOB, b"abc");
        m.push(b'!');
        assert!(bad(&m), "trailing byte");
        let mut m = msg(KIND_JOB, b"abc");
        m.pop();
        assert!(bad(&m), "truncated body");
        assert!(bad(&msg(KIND_JOB, &vec![b'a'; MAX_MESSAGE + 1])), "oversized message");
    }

    #[test]
    fn status_text_is_sanitized() {
        let (_, m) = parse_status(&msg(KIND_JOB, b"line1\nline2\x1b[31m\xff")).unwrap();
        assert!(!m.chars().any(char::is_control), "{m:?}");
        assert!(m.starts_with("line1 line2"));
    }

    #[test]
    fn bpf_blobs_decode() {
        let p = decode_bpf(POLICY_PARSE).expect("parse policy compiled");
        let f = decode_bpf(POLICY_FILES).expect("files policy compiled");
        assert!(p.len() > 10 && f.len() > p.len());
        assert!(decode_bpf(&[0u8; 7]).is_none());
        assert!(decode_bpf(&[]).is_none());
    }
}
