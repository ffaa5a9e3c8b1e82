//! Mount-stage syscalls rustix does not wrap: `mount_setattr(MOUNT_ATTR_IDMAP)` and the helper
//! process that holds a fresh user namespace while its id maps are written.

use rustix::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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
        // SAFETY: the child only calls async-signal-safe functions (unshare, prctl, write, read, _exit) on
        // raw fds it inherited, touches no locks or allocator state, and never returns.
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
                libc::close(rr);
                libc::close(lw);
                let status: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 { 1 } else { 0 };
                // Inherited non-dumpability (privileged helper) would make the parent's open of
                // /proc/PID/ns/user fail; our uids are the parent's, so only it can trace us.
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
