//! Mount-stage syscalls rustix does not wrap: `mount_setattr(MOUNT_ATTR_IDMAP)`, the helper
//! process that holds a fresh user namespace while its id maps are written, and the child that
//! builds a legacy overlay in a private mount namespace.

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
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

/// A child process born in a new user namespace, holding it while its parent writes the maps.
/// It opens its own `/proc/self/ns/user` and sends that fd to the parent over a socket pair
/// (`SCM_RIGHTS`): [`UsernsChild::namespace`] receives it. Dropping the `UsernsChild` lets the child
/// exit and reaps it; the namespace lives on through the fd.
///
/// The child is made by `clone(2)` with `CLONE_VM | CLONE_NEWUSER`: it shares this process's
/// memory, so no page table is copied for it (a `fork(2)` copies those of every page the
/// process has touched, write-protects them, and the parent then takes a fault on each page it
/// writes again: 0.5-0.85 ms of a helper mount). Not its fd table: the child has its own copy.
/// It closes its copy of the release pipe's write end by name first, then every fd but the two
/// it uses (`close_range`, where the kernel has it), and waits for end of file on the release
/// pipe's read end, which comes when the parent closes its own end, on purpose or by dying: no
/// child can outlive its parent. (A process another thread forks meanwhile holds a copy of that
/// write end until it execs or exits: the helper has one thread when it makes its children.)
///
/// Nothing here makes any memory dumpable, and the memory is undumpable while the child lives:
/// [`UsernsChild::spawn`] makes it so if it was not (a plain run by root), for good (restoring
/// it would need every child of the process gone, and a plain run loses nothing but core dumps
/// by staying so). Undumpable memory keeps a ptrace-mode check of the child
/// asking for `CAP_SYS_PTRACE` in the namespace the memory was made in (the initial one). That
/// matters because the child's namespace is owned by uid 0, so any uid-0 process holds every
/// capability in it: were the memory dumpable, such a process without a single capability of
/// its own could write this process's memory, and open its fds, through `/proc/CHILD`. The
/// child opens its own namespace (`/proc/self`: no ptrace-mode check), and the parent writes
/// the maps through `/proc/CHILD/uid_map`, which belongs to root when the memory is undumpable
/// (`mount::kernel::write_maps`; where /proc hides the child, through a proc instance of its
/// own).
///
/// rustix has no `clone` (a child that shares the caller's memory may run only code written for
/// that): the child runs [`userns_child`] on a stack of its own, mapped with a guard page below
/// it, and nothing else.
pub(crate) struct UsernsChild {
    pid: i32,
    /// Write end of the "you may exit" pipe; closing it releases the child.
    release: Option<OwnedFd>,
    /// The child's stack mapping (guard page included); unmapped only once the child is reaped.
    stack: Option<ChildStack>,
    /// Our end of the socket pair the child sends its namespace's fd over.
    sock: OwnedFd,
}

/// What [`UsernsChild`] could not do: the step, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildError {
    pub(crate) step: &'static str,
    pub(crate) errno: io::Errno,
}

impl ChildError {
    fn at(step: &'static str) -> impl FnOnce(io::Errno) -> ChildError {
        move |errno| ChildError { step, errno }
    }
}

/// Bytes of [`UsernsChild`]'s stack: [`userns_child`] has a frame of a few hundred bytes (the
/// control message's buffer) and makes about ten syscalls; the guard page below it is extra.
const CHILD_STACK: usize = 64 * 1024;
const GUARD: usize = 4096;

/// The child's arguments, at the top of its stack mapping: fd numbers in its copy of the fd table.
#[derive(Clone, Copy)]
#[repr(C)]
struct ChildArgs {
    /// The child's end of the socket pair: the namespace fd (or an errno) goes out over it.
    sock: i32,
    /// The release pipe's read end: end of file there lets the child exit.
    release_r: i32,
    /// The release pipe's write end: the child closes its copy by name, first.
    release_w: i32,
}
const _: () = assert!(std::mem::size_of::<ChildArgs>() <= 16);

/// An anonymous mapping: a `PROT_NONE` guard page, then the stack, whose top 16 bytes hold the
/// child's [`ChildArgs`] and whose usable end below them is 16-byte aligned.
struct ChildStack {
    base: *mut libc::c_void,
}

impl ChildStack {
    /// Syscalls: mmap(2), mprotect(2).
    fn map() -> io::Result<ChildStack> {
        use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks: no existing
        // memory is affected.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                GUARD + CHILD_STACK,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )?
        };
        let stack = ChildStack { base };
        // SAFETY: the first page of the mapping just made, which nothing references.
        unsafe { rustix::mm::mprotect(base, GUARD, MprotectFlags::empty())? };
        Ok(stack)
    }

    /// The arguments' place (16 bytes at the top) and the stack's top (just below it).
    fn args_and_top(&self) -> (*mut ChildArgs, *mut libc::c_void) {
        // The mapping is page-aligned and GUARD + CHILD_STACK is a multiple of 16, so the top
        // minus 16 is 16-byte aligned.
        let args = self.base.wrapping_byte_add(GUARD + CHILD_STACK - 16);
        (args.cast(), args)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, which no child uses any more (a `ChildStack` is
        // dropped only after its child was reaped, else forgotten).
        unsafe {
            let _ = rustix::mm::munmap(self.base, GUARD + CHILD_STACK);
        }
    }
}

/// `close_range(first, last, 0)` (close_range(2), Linux 5.9) as a raw `syscall` instruction:
/// for [`userns_child`], which must not write `errno` (its thread pointer is the parent's
/// thread's). rustix has no `close_range`, and glibc's `syscall()` writes `errno` when the
/// call fails (ENOSYS before 5.9, or a seccomp filter's answer). The result is ignored: where
/// the call fails, the fds stay open in the child until it exits (the child closes its copy of
/// the release pipe's write end by name before, so that it still sees end of file).
///
/// # Safety
/// Closes the descriptors in `first..=last` of the calling process's fd table: no object that
/// owns one of them may be used or dropped by this process afterwards.
#[inline(always)]
unsafe fn close_range_raw(first: u32, last: u32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the Linux x86_64 syscall convention: number in rax, arguments in rdi, rsi, rdx;
    // the kernel clobbers rcx and r11 and returns in rax; no memory is read or written.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") libc::SYS_close_range => _,
            in("rdi") first as usize,
            in("rsi") last as usize,
            in("rdx") 0usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack, preserves_flags),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: the Linux aarch64 syscall convention: number in x8, arguments in x0-x2, result in
    // x0; no memory is read or written.
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") libc::SYS_close_range,
            inlateout("x0") first as usize => _,
            in("x1") last as usize,
            in("x2") 0usize,
            options(nostack, preserves_flags),
        );
    }
    // Elsewhere the child is not written: rustix's raw-syscall backend, which the child's other
    // calls rely on (no `errno`), is its default only on some architectures, and this asm is
    // written for two.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    compile_error!("the user namespace child (userns_child) is written for x86_64 and aarch64 only");
}

/// The first byte of the child's message: the namespace fd is attached.
const SENT_NAMESPACE: u8 = b'U';
/// The first byte of the child's message: it could not open its namespace; the errno follows
/// (4 bytes, native order).
const SENT_ERRNO: u8 = b'E';

/// Runs in the child of [`UsernsChild::spawn`], in its new user namespace, on its own stack,
/// sharing the parent's memory but with its own copy of the fd table. It closes its copy of the
/// release pipe's write end, then every other fd of that copy but its end of the socket pair
/// and the release pipe's read end, opens `/proc/self/ns/user` and sends it over its end of the
/// socket pair (or the errno of the open), closes both, then reads the release pipe until end
/// of file and exits. `arg` points to its [`ChildArgs`] at the top of the stack mapping.
///
/// Written for x86_64 and aarch64 (elsewhere the build stops: `close_range_raw`), with rustix on
/// its raw-syscall backend (its default there; neither its `use-libc` feature nor
/// `--cfg rustix_use_libc` is set in this build).
///
/// Written for a child that shares the parent's memory and runs at the same time: it touches
/// only its own stack and the arguments; it allocates nothing, takes no lock and has no
/// reachable panic (no indexing, no unwrap, no formatting: keep it so, a panic would allocate
/// and touch the parent's thread-local state). Its syscalls are rustix's and
/// [`close_range_raw`]'s (raw `syscall` instructions: no `errno`, no thread-local state of the
/// parent's thread, whose thread pointer the child runs with; no std `OwnedFd` is dropped here,
/// whose drop is glibc's `close`), and `_exit`, glibc's `exit_group`, which ends this child only
/// (it is not in the parent's thread group). glibc's `clone` wrapper leaves the parent's thread
/// descriptor alone since glibc 2.25 (it wrote a cached pid into it before, BZ #19957); Debian
/// 12 has 2.36. The binary is linked with `BIND_NOW` (Rust's default full RELRO), so no lazy
/// symbol resolution runs in the child. The compiled code keeps panic paths (fds of -1,
/// slice bounds; in debug builds overflow checks), none reachable with the arguments `spawn`
/// writes.
extern "C" fn userns_child(arg: *mut libc::c_void) -> libc::c_int {
    use rustix::fs::{Mode, OFlags};
    // SAFETY: `arg` points to the `ChildArgs` written before `clone` at the top of this child's
    // stack mapping, which stays mapped until this child is reaped; the fd numbers are open in
    // this child's copy of the fd table (made by `clone`), which it alone uses, and each is
    // closed once, here.
    unsafe {
        let args = *(arg as *const ChildArgs);
        // Its copy of the release pipe's write end by name first: end of file there needs every
        // copy closed, and `close_range` may be missing (before 5.9) or refused (seccomp).
        rustix::io::close(args.release_w);
        // Then every fd but the two it uses: none of the parent's is held while the child lives
        // or exits (a kernel without the fix for CVE-2026-46333 skipped the dumpability check
        // of an exiting task, whose fds `pidfd_getfd` could then take). A SIGKILL already
        // pending when the child first runs ends it before this, holding them all: only a
        // process that may signal the helper itself can send that.
        let (lo, hi) =
            if args.sock < args.release_r { (args.sock, args.release_r) } else { (args.release_r, args.sock) };
        let (lo, hi) = (lo as u32, hi as u32);
        if lo > 0 {
            close_range_raw(0, lo - 1);
        }
        if hi > lo + 1 {
            close_range_raw(lo + 1, hi - 1);
        }
        close_range_raw(hi + 1, u32::MAX);
        let sock = BorrowedFd::borrow_raw(args.sock);
        match rustix::fs::open(c"/proc/self/ns/user", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(ns) => {
                let _ = send_with_fd(sock, &[SENT_NAMESPACE], Some(ns.as_fd()));
                // rustix's close, not the `OwnedFd`'s drop (glibc's `close`, which may write
                // `errno` and the thread's cancellation state: the parent's).
                rustix::io::close(ns.into_raw_fd());
            }
            Err(e) => {
                let n = e.raw_os_error().to_ne_bytes();
                let _ = send_with_fd(sock, &[SENT_ERRNO, n[0], n[1], n[2], n[3]], None);
            }
        }
        rustix::io::close(args.sock);
        let release = BorrowedFd::borrow_raw(args.release_r);
        let mut b = [0u8; 1];
        // Until end of file (or an error other than an interruption: nothing else can come).
        while matches!(rustix::io::read(release, &mut b), Ok(1..) | Err(io::Errno::INTR)) {}
        libc::_exit(0)
    }
}

impl UsernsChild {
    /// `clone(CLONE_VM | CLONE_NEWUSER | SIGCHLD)` of a child that sits in its new user
    /// namespace until released (see [`UsernsChild`]); the memory is undumpable from here on.
    /// Fails naming the step: the socket pair, the pipe, the stack's mapping, the dumpability, or
    /// `clone` (EPERM, EINVAL, ENOSPC, EAGAIN...: no user namespace or no process for us). The
    /// child opens its namespace meanwhile: [`UsernsChild::namespace`].
    ///
    /// Syscalls: socketpair(2), pipe2(2), mmap(2), prctl(2) (`PR_GET/SET_DUMPABLE`), clone(2).
    pub(crate) fn spawn() -> Result<UsernsChild, ChildError> {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        use rustix::process::{dumpable_behavior, set_dumpable_behavior, DumpableBehavior};
        let (ours, theirs) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(ChildError::at("socketpair"))?;
        let (release_r, release_w) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(ChildError::at("pipe2"))?;
        let stack = ChildStack::map().map_err(ChildError::at("mapping the child's stack"))?;
        let (args, top) = stack.args_and_top();
        let child_args =
            ChildArgs { sock: theirs.as_raw_fd(), release_r: release_r.as_raw_fd(), release_w: release_w.as_raw_fd() };
        // SAFETY: `args` is inside the writable part of the mapping just made, aligned for it.
        unsafe { args.write(child_args) };
        // Undumpable before the child exists, for good (see `UsernsChild`). Only "dumpable" (1)
        // lets a ptrace-mode check pass on ids alone; 0 and 2 (`suid_dumpable=2` after a setuid
        // exec) both ask for the capability.
        if dumpable_behavior().map_err(ChildError::at("PR_GET_DUMPABLE"))? == DumpableBehavior::Dumpable {
            set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(ChildError::at("PR_SET_DUMPABLE 0"))?;
        }
        let flags = libc::CLONE_VM | libc::CLONE_NEWUSER | libc::SIGCHLD;
        // SAFETY: `top` is the 16-byte aligned top of a stack of CHILD_STACK - 16 bytes with a
        // guard page below, mapped until the child is reaped (the drop); the child runs
        // `userns_child`, which is written for a child sharing this memory (its comment). glibc's
        // `clone` is a thin wrapper: in the child it only calls `userns_child` and `exit`.
        let pid = unsafe { libc::clone(userns_child, top, flags, args.cast()) };
        if pid < 0 {
            let errno =
                io::Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EPERM));
            return Err(ChildError { step: "clone(CLONE_VM|CLONE_NEWUSER)", errno });
        }
        // The child has its own copies; ours of its socket end goes, so that its exit is end of
        // file here.
        drop(theirs);
        drop(release_r);
        Ok(UsernsChild { pid, release: Some(release_w), stack: Some(stack), sock: ours })
    }

    /// The fd of the child's user namespace, as the child sent it, checked to be a user
    /// namespace (`NS_GET_NSTYPE`). Fails naming the step: the child's open of its namespace
    /// (with the child's errno), receiving it, the child ending without an answer or sending
    /// something else (`EPROTO`), or the check.
    ///
    /// Syscalls: recvmsg(2), ioctl_ns(2).
    pub(crate) fn namespace(&self) -> Result<OwnedFd, ChildError> {
        let (msg, fd) = recv_with_fd(self.sock.as_fd()).map_err(ChildError::at("receiving the child's namespace"))?;
        let ns = match (msg.first(), fd) {
            (Some(&SENT_NAMESPACE), Some(fd)) if msg.len() == 1 => fd,
            (Some(&SENT_ERRNO), None) if msg.len() == 5 => {
                let errno = io::Errno::from_raw_os_error(i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]));
                return Err(ChildError { step: "the child's open of /proc/self/ns/user", errno });
            }
            (None, None) => {
                return Err(ChildError {
                    step: "the child ended without sending its namespace",
                    errno: io::Errno::PROTO,
                })
            }
            _ => return Err(ChildError { step: "the child's answer", errno: io::Errno::PROTO }),
        };
        let kind = super::helper::ns_get_nstype(ns.as_fd())
            .map_err(ChildError::at("NS_GET_NSTYPE of the child's namespace"))?;
        if kind != libc::CLONE_NEWUSER {
            return Err(ChildError { step: "the child's namespace is not a user namespace", errno: io::Errno::PROTO });
        }
        Ok(ns)
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        self.release.take();
        // ECHILD: SIGCHLD ignored (early init resets an inherited one, in plain runs too; a
        // caller of the library may still ignore it): the kernel reaped the child, and waitpid
        // returned only once it had exited.
        let reaped = matches!(super::wait_child(self.pid), Ok(_) | Err(io::Errno::CHILD));
        if !reaped {
            // The child may still run on its stack: never unmap it.
            std::mem::forget(self.stack.take());
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
    match super::wait_child(pid) {
        Ok(status) => match (status.terminating_signal(), status.exit_status()) {
            (Some(sig), _) => format!("killed by signal {sig}"),
            (None, Some(code)) => format!("exit status {code}"),
            (None, None) => format!("wait status {:#x}", status.as_raw()),
        },
        Err(e) => format!("not reaped: {e}"),
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
