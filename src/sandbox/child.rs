//! The child side: confine completely, in a fixed order, and only then run the job.
//!
//! Order (each step names itself in the error the parent reports):
//! 1. close every fd except input, output, status (and the landlock directory fds), clear the
//!    environment, set resource limits;
//! 2. with CAP_SETPCAP: lock securebits and empty the bounding set; always clear the ambient set;
//! 3. when root (or setuid): setgroups([]), setresgid, setresuid to an unprivileged id;
//! 4. clear effective/permitted/inheritable capabilities and verify they are empty;
//! 5. parent-death signal, no_new_privs;
//! 6. landlock ([`super::landlock`]);
//! 7. seccomp, last ([`super::seccomp`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use landlock::PathFd;

use super::status::{send_status, KIND_JOB, KIND_OK, KIND_PANIC, KIND_SETUP};
use super::{Limits, Plan};

pub(super) fn child_main<F>(
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
    // A panic of the job reaches the parent as its message (below); the default hook would also
    // print it, and capture a backtrace where the parent's std already read RUST_BACKTRACE=1
    // (it caches the setting, and the child inherits the cache): that opens and maps files, which
    // the seccomp policy kills as it should, and a panic then read as a policy violation.
    std::panic::set_hook(Box::new(|_| {}));
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
        super::landlock::apply(dirs).map_err(|e| step("landlock", &e))?;
    } else {
        drop(dirs);
    }

    // 7. Seccomp, last: after this only the policy's syscalls work.
    if plan.seccomp {
        let prog =
            super::seccomp::decode_bpf(plan.policy).ok_or_else(|| "seccomp: malformed compiled policy".to_string())?;
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
