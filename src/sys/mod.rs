//! The only place with `unsafe` code: raw syscalls and ioctls that rustix does not wrap.
//!
//! Each submodule belongs to one stage; every `unsafe` block carries a `SAFETY:` comment.
pub mod helper;
pub(crate) mod loopctl;
pub(crate) mod map;
pub(crate) mod mem;
pub(crate) mod mount;
pub mod sandbox;
pub(crate) mod tables;
pub mod verity;
pub(crate) mod writeback;

/// Waits for our child `pid` to end: `waitpid(2)` (man 2 waitpid) through rustix, again after
/// `EINTR`. How it ended; `ECHILD` when it is not ours to wait for (or no longer: with SIGCHLD
/// ignored the kernel reaps an ended child by itself, and waitpid returns once it has ended);
/// `EINVAL` for a pid that names no single process (0 or negative: waitpid would wait for a
/// process group), so that no caller takes it for a child that is gone.
pub(crate) fn wait_child(pid: i32) -> rustix::io::Result<rustix::process::WaitStatus> {
    if pid <= 0 {
        return Err(rustix::io::Errno::INVAL);
    }
    let pid = rustix::process::Pid::from_raw(pid).ok_or(rustix::io::Errno::INVAL)?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(status),
            // (Only with WNOHANG, which is not asked for.)
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
