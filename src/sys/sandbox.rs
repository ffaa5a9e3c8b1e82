//! Raw pieces of the sandbox that rustix/caps/landlock/seccompiler do not wrap: fork into a child
//! that never returns, close_range, clearenv, _exit, poll, and cheap kernel-feature probes.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// Forks. In the parent returns the child's pid. In the child runs `child` and terminates with
/// `_exit(code)`: the child never returns into the caller's stack and never runs atexit handlers,
/// destructors of the parent's objects or stdio flushes.
///
/// Contract for callers (see src/sandbox.rs "Threads and fork"): the child may only use
/// facilities that stay usable after `fork` in a process that had other threads — raw syscalls,
/// glibc malloc (glibc re-initialises its arena locks in the child), and code that takes no lock
/// another thread could have held at the moment of the fork. A lock held by a vanished thread
/// makes the child hang, which the parent's timeout turns into an error; it cannot weaken the
/// confinement.
pub fn fork_child<F: FnOnce() -> i32>(child: F) -> io::Result<libc::pid_t> {
    // SAFETY: fork has no memory-safety preconditions of its own. The hazards of forking a
    // (possibly) multi-threaded process are confined to the child, which runs only `child` (under
    // the contract above) and then `_exit`s without unwinding into the caller's frames, so no
    // Rust object of the parent is used twice or dropped twice.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // A panic must not unwind out of the child into the parent's frames.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
            exit_now(code)
        }
        pid => Ok(pid),
    }
}

/// `_exit(2)`: ends the process at once (exit_group), without atexit handlers or stdio flushes.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Closes every file descriptor except those in `keep` (close_range over the gaps).
///
/// Only for a freshly forked child (the sandbox child): objects that own the closed descriptors are never used or dropped
/// afterwards because the child ends with `_exit`. Allocates nothing (the gaps are found by
/// scanning `keep`, a handful of fds, for the next kept one), so a child forked from a process
/// that has run threads may call it.
pub fn close_fds_except(keep: &[RawFd]) -> io::Result<()> {
    let mut first: u32 = 0;
    loop {
        let next = keep.iter().filter_map(|&fd| u32::try_from(fd).ok()).filter(|&fd| fd >= first).min();
        let last = match next {
            Some(k) => k.checked_sub(1),
            None => Some(u32::MAX),
        };
        if let Some(last) = last.filter(|&last| last >= first) {
            // SAFETY: close_range only closes descriptors; the I/O-safety consequences are covered
            // by the contract above (the child never uses the objects owning them again).
            let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        match next {
            // A kept fd is an i32, so `k + 1` does not overflow.
            Some(k) => first = k + 1,
            None => return Ok(()),
        }
    }
}

/// Empties the process environment (`clearenv(3)`).
///
/// Only for the single-threaded sandbox child (nothing else reads the environment concurrently).
pub fn clear_environment() -> io::Result<()> {
    // SAFETY: the child is single-threaded, so no other thread reads or writes `environ` while it
    // is cleared; no pointer into the old environment is kept by our code.
    let r = unsafe { libc::clearenv() };
    if r != 0 {
        return Err(io::Error::other("clearenv failed"));
    }
    Ok(())
}

/// Drops every bounding-set capability number 0..=63 (PR_CAPBSET_DROP), including numbers newer
/// than the caps crate knows. Numbers the kernel does not know (EINVAL) are skipped.
pub fn drop_bounding_set_all() -> io::Result<()> {
    for cap in 0..64u64 {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Readiness reported by [`poll_two`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub a: bool,
    pub b: bool,
}

/// poll(2) on two descriptors for readability (POLLIN, or hang-up/error), `timeout_ms` < 0 means
/// no timeout. EINTR is reported as "nothing ready".
pub fn poll_two(a: BorrowedFd<'_>, b: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd { fd: a.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: `fds` is a valid array of 2 pollfd for the duration of the call; both descriptors
    // are borrowed and stay open.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(Ready::default());
        }
        return Err(e);
    }
    let hit = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    Ok(Ready { a: hit(&fds[0]), b: hit(&fds[1]) })
}

/// Landlock ABI version of the running kernel (`landlock_create_ruleset(NULL, 0, VERSION)`):
/// Ok(n >= 1), or Err(ENOSYS: not built in / EOPNOTSUPP: disabled at boot).
pub fn landlock_abi() -> io::Result<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: a NULL attribute pointer with size 0 and the VERSION flag is the documented query.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// Whether the kernel offers seccomp filters with the KILL_PROCESS action
/// (`seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &SECCOMP_RET_KILL_PROCESS)`, Linux 4.14+).
pub fn seccomp_kill_process_available() -> io::Result<()> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    let action: u32 = SECCOMP_RET_KILL_PROCESS;
    // SAFETY: the kernel reads one u32 from a pointer to a live local.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0u32, &action as *const u32) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether mount_setattr(2) (idmapped mounts, Linux 5.12+) exists: called with an invalid fd and
/// a NULL attribute, it fails with EBADF/EINVAL/EFAULT when implemented, ENOSYS when not.
pub fn mount_setattr_available() -> io::Result<()> {
    // SAFETY: invalid dirfd, NULL path and NULL attr with size 0: the kernel validates and fails
    // before touching memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1i32,
            std::ptr::null::<libc::c_char>(),
            0u32,
            std::ptr::null::<libc::c_void>(),
            0usize,
        )
    };
    let e = io::Error::last_os_error();
    if r == 0 || e.raw_os_error() != Some(libc::ENOSYS) {
        return Ok(());
    }
    Err(e)
}

/// Stops glibc malloc from ever trimming its heaps in this process.
///
/// Trimming a non-main arena's heap makes glibc open `/proc/sys/vm/overcommit_memory` once
/// (check_may_shrink_heap), which the sandbox's seccomp policy (no `openat`) answers by killing
/// the child. That happens when run_confined is called from a thread other than the main one.
/// The child is short-lived, so keeping freed memory mapped costs nothing. No-op on other libcs.
///
/// (Raising M_MMAP_THRESHOLD so freed input memory is reused by the writer was measured:
/// 4,000 fewer page faults on cs9-developer, no clear wall-time gain on this VM, +7 MB peak RSS.
/// It is not done.)
pub fn disable_heap_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt with an integer parameter; the child is single-threaded at this point.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
