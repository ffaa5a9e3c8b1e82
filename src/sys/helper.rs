//! Privileged-helper syscalls rustix does not wrap: AT_SECURE, fsuid/fsgid, namespace ioctls,
//! std fd repair, signal dispositions, and reading a user namespace's id maps.

use rustix::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::io;

fn last_errno() -> io::Errno {
    io::Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

/// `getauxval(AT_SECURE) != 0`: the kernel says this exec changed credentials (setuid, setgid,
/// file capabilities, or an LSM decision).
pub(crate) fn at_secure() -> bool {
    // SAFETY: getauxval only reads the process's auxiliary vector; AT_SECURE is a valid key.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// The current fsuid (setfsuid(-1) fails and reports the current value without changing it).
pub(crate) fn current_fsuid() -> u32 {
    // SAFETY: an invalid id (-1) is rejected by the kernel, which returns the current fsuid.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

/// The current fsgid.
pub(crate) fn current_fsgid() -> u32 {
    // SAFETY: as for current_fsuid.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

/// Makes sure fds 0, 1 and 2 are open: any closed one is pointed at /dev/null, so that files the
/// helper opens later can never land on a standard stream number.
pub(crate) fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) on an int is harmless; EBADF means the slot is free.
        let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if r >= 0 {
            continue;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EBADF) {
            return Err(last_errno());
        }
        let flags = if fd == 0 { libc::O_RDONLY } else { libc::O_WRONLY };
        // SAFETY: the path is a NUL-terminated literal; the returned fd is owned by the process
        // as a standard stream and deliberately never closed.
        let n = unsafe { libc::open(c"/dev/null".as_ptr(), flags | libc::O_NOFOLLOW) };
        if n < 0 {
            return Err(last_errno());
        }
        if n != fd {
            // The lowest free slot must be `fd` since all lower ones are open; anything else
            // means the process state is not what we think: fail closed.
            // SAFETY: `n` is the fd we just opened.
            unsafe { libc::close(n) };
            return Err(io::Errno::BADF);
        }
    }
    Ok(())
}

/// Ignores SIGXFSZ (a caller-set RLIMIT_FSIZE then gives EFBIG instead of killing the helper
/// halfway through writing state) and restores SIGPIPE's default-ignore set by the Rust runtime.
pub(crate) fn ignore_sigxfsz() -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler code runs.
    let r = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if r == libc::SIG_ERR {
        return Err(last_errno());
    }
    Ok(())
}

/// `signal(2)`: SIGCHLD back to its default disposition. An ignored SIGCHLD survives `execve`,
/// and with it the kernel reaps this process's children by itself: a `waitpid` then fails with
/// `ECHILD` and the child's pid is free for reuse while it is still named by number
/// (`/proc/PID/...`). Same wrapper as [`ignore_sigxfsz`].
pub(crate) fn default_sigchld() -> io::Result<()> {
    // SAFETY: SIG_DFL is a valid disposition for SIGCHLD; no handler code runs.
    let r = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    if r == libc::SIG_ERR {
        return Err(last_errno());
    }
    Ok(())
}

/// `setitimer(2)` (man 2 setitimer) of `ITIMER_REAL`, `ITIMER_VIRTUAL` and `ITIMER_PROF` to zero:
/// the caller's interval timers survive `execve`, and their signals (SIGALRM, SIGVTALRM,
/// SIGPROF) end a process by default; cleared, the caller cannot choose the moment the helper
/// dies (POSIX timers of `timer_create` do not survive `execve`). rustix does not wrap
/// `setitimer`.
pub(crate) fn clear_interval_timers() -> io::Result<()> {
    for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        let zero = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
            it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
        };
        // SAFETY: `zero` is a valid itimerval that setitimer only reads; the old value pointer
        // is null (not wanted).
        if unsafe { libc::setitimer(which, &zero, std::ptr::null_mut()) } != 0 {
            return Err(last_errno());
        }
    }
    Ok(())
}

const NSIO: libc::c_ulong = 0xb7;
const NS_GET_PARENT: libc::c_ulong = NSIO << 8 | 0x2; // _IO(0xb7, 0x2)
const NS_GET_NSTYPE: libc::c_ulong = NSIO << 8 | 0x3; // _IO(0xb7, 0x3)
                                                      // _IO(0xb7, 0x4) (it does write a uid_t through the argument, but is declared without a size).
const NS_GET_OWNER_UID: libc::c_ulong = NSIO << 8 | 0x4;

/// `ioctl(fd, NS_GET_NSTYPE)`: the CLONE_NEW* type of a namespace fd (ENOTTY if not a ns fd).
pub fn ns_get_nstype(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns an int; the fd is borrowed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(r)
}

/// `ioctl(fd, NS_GET_OWNER_UID)`: the uid (in our user namespace) that created a user namespace.
pub fn ns_get_owner_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which points to `uid`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_OWNER_UID as _, &mut uid as *mut libc::uid_t) };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(uid)
}

fn ns_ioctl_fd(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_PARENT takes no argument and returns a new fd or -1.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _) };
    if r < 0 {
        return Err(last_errno());
    }
    // SAFETY: `r` is a new fd (opened O_CLOEXEC by the kernel) that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// `ioctl(fd, NS_GET_PARENT)`: the parent namespace (EPERM when it is outside our scope, i.e.
/// `fd` is our own or the initial user namespace).
pub(crate) fn ns_get_parent(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    ns_ioctl_fd(fd, NS_GET_PARENT)
}

/// Reads `uid_map` and `gid_map` of the user namespace `userns`, as seen from its parent: a forked
/// child joins the namespace (setns) and reads its own /proc/self/{uid,gid}_map — a reader inside
/// the namespace sees the outside ids relative to the parent namespace. The child only uses raw,
/// async-signal-safe syscalls and a stack buffer, and sends both files back over a pipe.
pub fn read_userns_maps(userns: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (rr, rw, nsfd) = (r.as_raw_fd(), w.as_raw_fd(), userns.as_raw_fd());
    // SAFETY: the child calls only async-signal-safe functions (setns, open, read, write, close,
    // _exit) with stack buffers and literal paths, takes no locks, never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_errno());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(rr);
            if libc::setns(nsfd, libc::CLONE_NEWUSER) != 0 {
                libc::_exit(2);
            }
            for path in [c"/proc/self/uid_map", c"/proc/self/gid_map"] {
                let f = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if f < 0 {
                    libc::_exit(3);
                }
                let mut buf = [0u8; 4096];
                let mut len = 0usize;
                loop {
                    let n = libc::read(f, buf.as_mut_ptr().add(len).cast(), buf.len() - len);
                    if n <= 0 {
                        break;
                    }
                    len += n as usize;
                    if len == buf.len() {
                        libc::_exit(4);
                    }
                }
                libc::close(f);
                // Length-prefixed record: 2 bytes little endian, then the bytes.
                let hdr = [(len & 0xff) as u8, (len >> 8) as u8];
                if libc::write(rw, hdr.as_ptr().cast(), 2) != 2
                    || libc::write(rw, buf.as_ptr().cast(), len) != len as isize
                {
                    libc::_exit(5);
                }
            }
            libc::_exit(0);
        }
    }
    drop(w);
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::read(&r, &mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(io::Errno::INTR) => continue,
            Err(e) => {
                reap(pid);
                return Err(e);
            }
        }
        if data.len() > 16384 {
            break;
        }
    }
    let status = reap(pid);
    if status != Some(0) {
        return Err(io::Errno::PERM);
    }
    let mut parts = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 2 {
        let len = rest[0] as usize | (rest[1] as usize) << 8;
        if rest.len() < 2 + len {
            return Err(io::Errno::IO);
        }
        parts.push(rest[2..2 + len].to_vec());
        rest = &rest[2 + len..];
    }
    if parts.len() != 2 || !rest.is_empty() {
        return Err(io::Errno::IO);
    }
    let gid = parts.pop().unwrap_or_default();
    let uid = parts.pop().unwrap_or_default();
    Ok((uid, gid))
}

/// Waits for our child `pid`; its exit status, or None if it died by a signal.
fn reap(pid: i32) -> Option<i32> {
    super::wait_child(pid).ok()?.exit_status()
}

/// `umount2("/proc/self/fd/N", MNT_DETACH)` where N is an O_PATH fd opened on
/// the root of the mount to remove: the magic link resolves to exactly that pinned mount, so a
/// concurrent rename or a racing unmount can never redirect the call to another mount.
pub(crate) fn umount_pinned(fd: BorrowedFd<'_>) -> io::Result<()> {
    let path = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and lives across the call.
    let r = unsafe { libc::umount2(path.as_ptr().cast(), libc::MNT_DETACH) };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `getresuid()`: (real, effective, saved) uid of this thread.
pub(crate) fn getresuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out pointers to uid_t.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// `faccessat2(fd, "", W_OK, AT_EACCESS | AT_EMPTY_PATH)`: may the current fsuid/fsgid (and
/// groups) write to the inode behind `fd` (which may be an O_PATH fd)? Raw syscall, because
/// libc wrappers may refuse AT_EMPTY_PATH without asking the kernel.
pub(crate) fn may_write_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the path is an empty NUL-terminated literal; the fd is borrowed; plain ints otherwise.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::W_OK,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Sets this thread's effective uid and gid (real and saved stay as they are), with the raw
/// syscalls so that only the calling thread changes. `u32::MAX` = leave unchanged. The kernel also
/// moves fsuid/fsgid along and clears (uid 0 → other) or restores (other → 0) the effective
/// capability set.
pub(crate) fn set_effective_ids(uid: u32, gid: u32) -> io::Result<()> {
    let keep = u32::MAX as libc::c_long;
    if gid != u32::MAX {
        // SAFETY: plain integer arguments.
        if unsafe { libc::syscall(libc::SYS_setresgid, keep, gid as libc::c_long, keep) } < 0 {
            return Err(last_errno());
        }
    }
    if uid != u32::MAX {
        // SAFETY: plain integer arguments.
        if unsafe { libc::syscall(libc::SYS_setresuid, keep, uid as libc::c_long, keep) } < 0 {
            return Err(last_errno());
        }
    }
    Ok(())
}

/// `getresgid()`: (real, effective, saved) gid of this thread.
pub(crate) fn getresgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out pointers to gid_t.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// Blocks (`sigprocmask(2)`) the signals a caller can send through its own terminal without any
/// permission check: SIGINT (^C), SIGQUIT (^\), SIGTSTP (^Z), SIGTTIN, SIGTTOU (background
/// reads/writes) and SIGHUP (hang-up). They stay pending and die with the process, so the
/// privileged work can neither be interrupted halfway nor stopped while it holds resources.
/// Blocked counts as ignored for the terminal's job control (a background write is allowed).
/// The mask is inherited by every child (sandboxed builder, private-namespace child, courier).
/// rustix does not wrap sigprocmask for programs (only for its own runtime).
pub(crate) fn block_terminal_signals() -> io::Result<()> {
    // SAFETY: `set` is initialized by sigemptyset before use; sigprocmask reads it and writes
    // nothing (old set pointer null).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(last_errno());
        }
    }
    Ok(())
}
