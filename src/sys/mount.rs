//! Mount-stage syscalls rustix does not wrap: `mount_setattr(MOUNT_ATTR_IDMAP)`, the helper
//! process that holds a fresh user namespace while its id maps are written, and the child that
//! builds a legacy overlay in a private mount namespace.

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::io;

/// `MOUNT_ATTR_IDMAP` from `<linux/mount.h>`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// `AT_EMPTY_PATH`
const AT_EMPTY_PATH: u32 = 0x1000;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0 = 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const _: () = assert!(std::mem::size_of::<MountAttr>() == 32);

/// `mount_setattr(mnt, "", AT_EMPTY_PATH, {attr_set, attr_clr, 0, userns_fd})` on one mount
/// (detached or attached), not recursive.
fn mount_setattr(mnt: BorrowedFd<'_>, attr_set: u64, attr_clr: u64, userns: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let userns_fd = match userns {
        Some(fd) => u64::try_from(fd.as_raw_fd()).map_err(|_| io::Errno::BADF)?,
        None => 0,
    };
    let attr = MountAttr { attr_set, attr_clr, propagation: 0, userns_fd };
    // SAFETY: mount_setattr(2) reads `usize` bytes from `attr`, which points to a live, correctly
    // laid out `struct mount_attr`; the path is a NUL-terminated empty string and the fds are
    // borrowed for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

/// Turns the (detached, not yet attached anywhere) mount `mnt` into an idmapped mount using
/// `userns`'s maps (`MOUNT_ATTR_IDMAP`).
pub(crate) fn mount_setattr_idmap(mnt: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    mount_setattr(mnt, MOUNT_ATTR_IDMAP, 0, Some(userns))
}

/// Sets and clears `MOUNT_ATTR_*` flags (e.g. nosuid, nodev, rdonly) on one mount.
pub(crate) fn mount_setattr_flags(mnt: BorrowedFd<'_>, attr_set: u64, attr_clr: u64) -> io::Result<()> {
    mount_setattr(mnt, attr_set, attr_clr, None)
}

/// A child process sitting in a new user namespace, waiting for its parent to write its maps and
/// take a reference to `/proc/PID/ns/user`. Dropping it lets the child exit and reaps it.
pub(crate) struct UsernsChild {
    pid: i32,
    /// Write end of the "you may exit" pipe; closing it releases the child.
    release: Option<OwnedFd>,
}

impl UsernsChild {
    /// Forks a child that calls `unshare(CLONE_NEWUSER)` and then blocks until released.
    pub(crate) fn spawn() -> io::Result<UsernsChild> {
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (release_r, release_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (rr, rw, lr, lw) = (ready_r.as_raw_fd(), ready_w.as_raw_fd(), release_r.as_raw_fd(), release_w.as_raw_fd());
        // SAFETY: the child only calls async-signal-safe functions (close_range, unshare, prctl,
        // write, read, _exit) on raw fds it inherited, touches no locks or allocator state, and
        // never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO),
            ));
        }
        if pid == 0 {
            // Child.
            // SAFETY: see above; all buffers are on this stack frame.
            unsafe {
                // Every fd but stdio and its two pipe ends goes first (`close_range(2)`, Linux
                // 5.9; where it is missing the fds stay, as before): it is about to become
                // dumpable, and a process of uid 0 may then read through its fds (it owns every
                // capability in the new namespace), so it keeps none of the helper's. Closing
                // the release pipe's write end is what lets it see end of file when the parent
                // releases it or dies.
                let _ = super::sandbox::close_fds_except(&[0, 1, 2, rw, lr]);
                libc::close(rr);
                libc::close(lw);
                let status: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 { 1 } else { 0 };
                // Inherited non-dumpability (privileged helper) would make the parent's open of
                // /proc/PID/ns/user fail. Our ids are the parent's (all 0 in the helper), so the
                // caller cannot trace us; a process of uid 0 can (it owns every capability in
                // our namespace), and finds only this process's own copy of the memory.
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                libc::write(rw, (&status as *const u8).cast(), 1);
                libc::close(rw);
                let mut b = 0u8;
                while libc::read(lr, (&mut b as *mut u8).cast(), 1) > 0 {}
                libc::_exit(0);
            }
        }
        drop(ready_w);
        drop(release_r);
        let child = UsernsChild { pid, release: Some(release_w) };
        let mut buf = [0u8; 1];
        let n = loop {
            match rustix::io::read(&ready_r, &mut buf) {
                Err(io::Errno::INTR) => continue,
                r => break r?,
            }
        };
        if n != 1 || buf[0] != 1 {
            // The child could not unshare (or died): user namespaces unavailable.
            return Err(io::Errno::PERM);
        }
        Ok(child)
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        self.release.take();
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
}

/// Duplicates an inherited raw fd number (e.g. `--fd-out 3`); EBADF if it is not open.
pub(crate) fn dup_inherited_fd(raw: i32) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Errno::BADF);
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an arbitrary int is harmless: it fails with EBADF when the
    // number is not an open fd, and otherwise returns a new fd that we exclusively own.
    let r = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 3) };
    if r < 0 {
        return Err(io::Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EBADF),
        ));
    }
    // SAFETY: `r` is a fresh fd returned by fcntl, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A duplicate of the raw fd number `raw` if it is open and a socket (`getsockopt(2)` `SO_TYPE`
/// on the duplicate: `ENOTSOCK` for anything else, an `O_PATH` fd included, without touching a
/// file), `None` if it is open and not a socket: what `--fd-out N` must name. Asked when the
/// command line is read, before this process has opened a socket of its own, so that a socket
/// at N is the caller's (a number the caller left closed may later be one of this process's own
/// fds); the duplicate is what the mount is later sent over, so N is not looked up again.
/// `EBADF`: N is not open.
pub(crate) fn inherited_socket(raw: i32) -> io::Result<Option<OwnedFd>> {
    let fd = dup_inherited_fd(raw)?;
    match rustix::net::sockopt::socket_type(&fd) {
        Ok(_) => Ok(Some(fd)),
        Err(io::Errno::NOTSOCK) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The number of threads of this process (`Threads:` of /proc/self/status).
fn thread_count() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok())
}

/// Whether this process has one thread. A thread joined a moment ago (the gate's hashing
/// threads) has run its last instruction when `pthread_join` returns, but the kernel counts it
/// until it has released the task: up to 100 ms is allowed for that, then it is a real thread.
fn single_threaded() -> bool {
    for _ in 0..200 {
        if thread_count() == Some(1) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    false
}

/// Where [`fork_with_socket`] returned.
enum Forked {
    /// In the parent: the child's pid and our end of the socket pair.
    Parent { pid: libc::pid_t, sock: OwnedFd },
    /// In the child: its end of the socket pair and the parent's pid. The child must end with
    /// `libc::_exit` (never return to the caller's caller, never run the parent's destructors).
    Child { sock: OwnedFd, parent: rustix::process::Pid },
}

/// `socketpair(2)` (SEQPACKET, close-on-exec), then `fork(2)` of this single-threaded process
/// (checked; `what` names the child in the refusal); each side keeps its own end of the pair.
/// rustix has no fork (a forked child of a multi-threaded process may run only
/// async-signal-safe code); it is sound here because the process has one thread, so the child
/// is a complete copy that may run ordinary Rust code.
fn fork_with_socket(what: &str) -> Result<Forked, String> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    if !single_threaded() {
        return Err(format!("cannot fork {what} while other threads run"));
    }
    let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| format!("socketpair: {e}"))?;
    let parent = rustix::process::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child is a complete copy
    // that may run ordinary Rust code; every caller ends the child with `_exit` (see `Forked`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(ours);
        return Ok(Forked::Child { sock: theirs, parent });
    }
    drop(theirs);
    Ok(Forked::Parent { pid, sock: ours })
}

/// Runs `prepare`, then `unshare(CLONE_NEWNS)` (`unshare(2)`), then makes every mount of the new
/// namespace private (`mount(2)` with MS_REC|MS_PRIVATE on `/`, so nothing made there
/// propagates back), then `build`, in a forked child (`fork(2)`); the fd `build` returns is
/// passed back over a socket pair (SCM_RIGHTS) with one byte of flags, and the child exits. The
/// namespace has no other member, so it and every mount made in it vanish with the child,
/// whatever happens to it or to us (the child also gets SIGKILL when we die,
/// `PR_SET_PDEATHSIG`). Errors come back as text. rustix has no fork, and its unshare is unsafe
/// (CLONE_FILES/CLONE_FS interplay with other threads); both are sound here because the
/// process must be single-threaded (checked), which also lets the child run ordinary code.
pub(crate) fn in_private_mount_ns<T>(
    prepare: impl FnOnce() -> Result<T, String>,
    build: impl FnOnce(T) -> Result<(OwnedFd, u8), String>,
) -> Result<(OwnedFd, u8), String> {
    let (pid, ours) = match fork_with_socket("the private-namespace child")? {
        Forked::Parent { pid, sock } => (pid, sock),
        Forked::Child { sock: theirs, parent } => {
            let run = || -> Result<(OwnedFd, u8), String> {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                    .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
                if rustix::process::getppid() != Some(parent) {
                    return Err("the parent is gone".into());
                }
                let prepared = prepare()?;
                // SAFETY: CLONE_NEWNS only; this process has one thread.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
                    .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
                let private = rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE;
                rustix::mount::mount_change("/", private).map_err(|e| format!("making the namespace private: {e}"))?;
                build(prepared)
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
                .unwrap_or_else(|_| Err("the private-namespace child panicked".into()));
            let _ = match result {
                Ok((fd, flags)) => send_with_fd(theirs.as_fd(), &[b'F', flags], Some(fd.as_fd())),
                Err(text) => send_with_fd(theirs.as_fd(), &[b"E".as_slice(), text.as_bytes()].concat(), None),
            };
            // SAFETY: ends the child without running the parent's destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
    };
    let got = recv_with_fd(ours.as_fd());
    let status = reap_child(pid);
    match got {
        Ok((msg, Some(fd))) if msg.first() == Some(&b'F') => Ok((fd, msg.get(1).copied().unwrap_or(0))),
        Ok((msg, _)) if msg.first() == Some(&b'E') => Err(String::from_utf8_lossy(&msg[1..]).into_owned()),
        Ok(_) | Err(_) => Err(format!("the private-namespace child ended without an answer ({status})")),
    }
}

fn send_with_fd(sock: BorrowedFd<'_>, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        anc.push(SendAncillaryMessage::ScmRights(&fds));
    }
    sendmsg(sock, &[std::io::IoSlice::new(msg)], &mut anc, SendFlags::NOSIGNAL).map(|_| ())
}

fn recv_with_fd(sock: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match recvmsg(sock, &mut [std::io::IoSliceMut::new(&mut buf)], &mut anc, RecvFlags::CMSG_CLOEXEC) {
            Err(io::Errno::INTR) => continue,
            r => break r?.bytes,
        }
    };
    buf.truncate(n);
    let mut fd = None;
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(mut it) = m {
            fd = fd.or_else(|| it.next());
        }
    }
    Ok((buf, fd))
}

/// Waits for our child `pid`; describes how it ended.
fn reap_child(pid: i32) -> String {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return "not reaped".into();
        }
    }
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

/// `statmount(2)` (Linux 6.8+), generic syscall number (the same on x86_64, aarch64, riscv64).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
const SYS_STATMOUNT: libc::c_long = 457;

/// `struct mnt_id_req` (MNT_ID_REQ_SIZE_VER0 = 24 bytes): size, spare, mnt_id, param.
#[repr(C)]
struct MntIdReq {
    size: u32,
    spare: u32,
    mnt_id: u64,
    param: u64,
}
const _: () = assert!(std::mem::size_of::<MntIdReq>() == 24);

/// Whether the mount with the unique id `mnt_id` is a mount of our mount namespace:
/// `statmount(&{mnt_id, STATMOUNT_SB_BASIC}, buf, len, 0)` succeeds for those and fails with
/// ENOENT for any other (unmounted, detached, or in another namespace). `None` when the kernel
/// has no statmount (before 6.8). rustix does not wrap statmount.
pub(crate) fn mount_in_our_namespace(mnt_id: u64) -> Option<bool> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))]
    {
        const STATMOUNT_SB_BASIC: u64 = 0x1;
        let req = MntIdReq { size: 24, spare: 0, mnt_id, param: STATMOUNT_SB_BASIC };
        // struct statmount with the basic fields fits in 512 bytes; u64 alignment.
        let mut buf = [0u64; 64];
        // SAFETY: `req` is a live, correctly laid out `struct mnt_id_req`; `buf` is a writable
        // buffer of the size passed; the kernel writes at most that many bytes.
        let r = unsafe {
            libc::syscall(
                SYS_STATMOUNT,
                &req as *const MntIdReq,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
                0 as libc::c_uint,
            )
        };
        if r == 0 {
            return Some(true);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT) => Some(false),
            _ => None,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
    {
        let _ = mnt_id;
        None
    }
}

/// How long the courier waits for the caller's socket to take the mount.
const COURIER_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long we wait for an answer of the courier (longer than its own send timeout).
const COURIER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Where a [`Courier`] delivers: a unix socket path it connects to, or an already connected
/// socket (an inherited fd).
pub(crate) enum CourierTarget<'a> {
    Path(&'a std::path::Path),
    Socket(BorrowedFd<'a>),
}

/// A child process that IS the caller (real, effective and saved uid and gid; no capabilities;
/// the caller's supplementary groups) and hands the finished mount over to the caller's socket:
/// it connects (so `SO_PEERCRED` names the caller) and sends (so `SCM_CREDENTIALS` name the
/// caller too; the kernel fills them from the sender's real ids). It holds nothing but the
/// socket and its control channel to us: every other fd is closed first. The caller may signal
/// or trace it; that only affects the caller's own hand-over.
pub(crate) struct Courier {
    pid: i32,
    ctl: Option<OwnedFd>,
}

impl Courier {
    /// Forks the courier (`fork(2)`, then `close_range(2)`, `setresgid(2)`, `setresuid(2)`,
    /// `connect(2)` as the caller); returns once it is connected. Needs CAP_SETUID/CAP_SETGID and
    /// a single-threaded process (checked).
    pub(crate) fn spawn(uid: u32, gid: u32, target: CourierTarget<'_>) -> Result<Courier, String> {
        let (pid, ours) = match fork_with_socket("the --fd-out courier")? {
            Forked::Parent { pid, sock } => (pid, sock),
            Forked::Child { sock: theirs, parent } => {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    courier_main(theirs.as_fd(), parent, uid, gid, target)
                }));
                if let Ok(Err(text)) = r {
                    let _ = send_with_fd(theirs.as_fd(), &[b"E".as_slice(), text.as_bytes()].concat(), None);
                }
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(0) }
            }
        };
        // The courier is the caller's process from early on: never wait on it without bound.
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(COURIER_ANSWER_TIMEOUT),
        )
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
        let c = Courier { pid, ctl: Some(ours) };
        match recv_with_fd(c.ctl_fd()) {
            Ok((m, _)) if m == b"C" => Ok(c),
            Ok((m, _)) if m.first() == Some(&b'E') => Err(String::from_utf8_lossy(&m[1..]).into_owned()),
            _ => Err("the --fd-out courier ended without an answer".into()),
        }
    }

    fn ctl_fd(&self) -> BorrowedFd<'_> {
        self.ctl.as_ref().expect("control socket").as_fd()
    }

    /// Passes `fd` to the courier, which sends it (one byte of payload, SCM_RIGHTS) to the
    /// caller's socket as the caller; waits for its answer and reaps it.
    pub(crate) fn send(self, fd: BorrowedFd<'_>) -> Result<(), String> {
        send_with_fd(self.ctl_fd(), b"F", Some(fd)).map_err(|e| format!("passing the mount to the courier: {e}"))?;
        match recv_with_fd(self.ctl_fd()) {
            Ok((m, _)) if m == b"S" => Ok(()),
            Ok((m, _)) if m.first() == Some(&b'E') => Err(String::from_utf8_lossy(&m[1..]).into_owned()),
            _ => Err("the --fd-out courier ended without an answer".into()),
        }
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        // Closing the control socket tells a waiting courier to give up; the courier is the
        // caller's process (it may have been stopped or traced by the caller): kill it so that
        // reaping cannot wait on it.
        drop(self.ctl.take());
        // SAFETY: signals our own child, which we have not reaped yet (its pid is still ours).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = reap_child(self.pid);
    }
}

/// The courier's life: become the caller, connect, report, receive the mount, send it, report.
fn courier_main(
    ctl: BorrowedFd<'_>,
    parent: rustix::process::Pid,
    uid: u32,
    gid: u32,
    target: CourierTarget<'_>,
) -> Result<(), String> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    if rustix::process::getppid() != Some(parent) {
        return Err("the parent is gone".into());
    }
    // Keep only the control socket (as fd 3) and the caller's socket (as fd 4); close the rest.
    let high_ctl = rustix::io::fcntl_dupfd_cloexec(ctl, 100).map_err(|e| format!("dup: {e}"))?;
    let high_sock = match &target {
        CourierTarget::Socket(s) => Some(rustix::io::fcntl_dupfd_cloexec(*s, 100).map_err(|e| format!("dup: {e}"))?),
        CourierTarget::Path(_) => None,
    };
    // SAFETY: dup2 onto 3 and 4 replaces whatever was there (we close everything else anyway);
    // the results are owned by the values made from them; close_range only closes descriptors.
    let (keep_ctl, keep_sock) = unsafe {
        if libc::dup2(high_ctl.as_raw_fd(), 3) != 3 {
            return Err("dup2".into());
        }
        let sock = match &high_sock {
            Some(h) if libc::dup2(h.as_raw_fd(), 4) == 4 => Some(OwnedFd::from_raw_fd(4)),
            Some(_) => return Err("dup2".into()),
            None => None,
        };
        let first_closed = if sock.is_some() { 5 } else { 4 };
        libc::close_range(first_closed, libc::c_uint::MAX, 0);
        (OwnedFd::from_raw_fd(3), sock)
    };
    std::mem::forget(high_ctl); // closed by close_range above
    std::mem::forget(high_sock);
    // From here on, failures are reported on the kept control socket.
    let ctl = keep_ctl.as_fd();
    let r = courier_deliver(ctl, uid, gid, &target, keep_sock);
    if let Err(text) = &r {
        let _ = send_with_fd(ctl, &[b"E".as_slice(), text.as_bytes()].concat(), None);
    }
    Ok(())
}

/// Becomes the caller, connects (or takes the inherited socket), reports, receives the mount,
/// sends it, reports.
fn courier_deliver(
    ctl: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    target: &CourierTarget<'_>,
    inherited: Option<OwnedFd>,
) -> Result<(), String> {
    // Become the caller in every id; the kernel clears every capability.
    let (g, u) = (rustix::process::Gid::from_raw(gid), rustix::process::Uid::from_raw(uid));
    rustix::thread::set_thread_res_gid(g, g, g).map_err(|e| format!("setresgid: {e}"))?;
    rustix::thread::set_thread_res_uid(u, u, u).map_err(|e| format!("setresuid: {e}"))?;
    let sock = match (target, inherited) {
        (CourierTarget::Path(p), _) => connect_as_self(p)?,
        (CourierTarget::Socket(_), Some(s)) => s,
        (CourierTarget::Socket(_), None) => return Err("the inherited socket was not kept".into()),
    };
    // A receiver that never reads must not keep the courier (and the helper waiting for it)
    // forever.
    rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Send, Some(COURIER_SEND_TIMEOUT))
        .map_err(|e| format!("SO_SNDTIMEO: {e}"))?;
    send_with_fd(ctl, b"C", None).map_err(|e| format!("reporting: {e}"))?;
    let (msg, fd) = recv_with_fd(ctl).map_err(|e| format!("receiving the mount: {e}"))?;
    let Some(fd) = fd.filter(|_| msg == b"F") else {
        return Ok(()); // the helper gave up: nothing to send
    };
    let sent = loop {
        match send_with_fd(sock.as_fd(), b"M", Some(fd.as_fd())) {
            Err(io::Errno::INTR) => continue,
            r => break r,
        }
    };
    match sent {
        Ok(()) => send_with_fd(ctl, b"S", None).map_err(|e| format!("reporting: {e}")),
        Err(e) => Err(format!("sending the mount fd: {e}")),
    }
}

/// Connects to a unix socket path (stream, then seqpacket, then datagram) as this process.
fn connect_as_self(path: &std::path::Path) -> Result<OwnedFd, String> {
    use rustix::net::{connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path).map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let mut last = io::Errno::PROTOTYPE;
    for ty in [SocketType::STREAM, SocketType::SEQPACKET, SocketType::DGRAM] {
        let s = socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)
            .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
        match connect(&s, &addr) {
            Ok(()) => return Ok(s),
            Err(e @ io::Errno::PROTOTYPE) => last = e,
            Err(e) => return Err(format!("cannot connect to {}: {e}", path.display())),
        }
    }
    Err(format!("cannot connect to {}: {last}", path.display()))
}
