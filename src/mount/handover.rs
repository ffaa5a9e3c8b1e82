//! Handing the finished mount over: attributes enforced (verified with `fstatvfs`, set with
//! `mount_setattr` only where missing), then attached onto the pinned target directory
//! (`move_mount` with empty paths: nothing is resolved again) or sent over a unix socket.

use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use std::os::fd::AsFd;

use super::access::FdSink;
use super::compat::attrs_missing;
use super::error::MountError;
use super::kernel::Kernel;

/// Makes sure the detached mount `mnt` has every attribute of `want`: those `fsmount` already
/// set are verified, missing ones are set with `mount_setattr` and verified again.
pub(crate) fn enforce_attrs(kernel: &dyn Kernel, mnt: BorrowedFd<'_>, want: MountAttrFlags) -> Result<(), MountError> {
    if want.is_empty() {
        return Ok(());
    }
    let flags = |step| kernel.mount_flags(mnt).map_err(|errno| MountError::MountAttrs { step, errno });
    let missing = attrs_missing(flags("fstatvfs on the new mount")?, want);
    if missing.is_empty() {
        return Ok(());
    }
    kernel
        .mount_setattr(mnt, missing, MountAttrFlags::empty(), None)
        .map_err(|errno| MountError::MountAttrs { step: "mount_setattr", errno })?;
    if !attrs_missing(flags("fstatvfs on the new mount")?, want).is_empty() {
        return Err(MountError::MountAttrs { step: "verifying the attributes of the new mount", errno: Errno::PERM });
    }
    Ok(())
}

/// Attaches `mnt` onto the pinned `target` (opened by the access policy), after enforcing `want`.
pub(crate) fn attach_at_target(
    kernel: &dyn Kernel,
    mnt: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    target_path: &Path,
    want: MountAttrFlags,
) -> Result<(), MountError> {
    enforce_attrs(kernel, mnt, want)?;
    kernel.move_mount(mnt, target).map_err(|errno| MountError::Attach {
        target: target_path.to_path_buf(),
        step: "move_mount onto the target",
        errno,
    })
}

/// Sends `mnt` (`--fd-out`), after enforcing `want`: over the connected socket, or through the
/// courier that is the caller.
pub(crate) fn send(
    kernel: &dyn Kernel,
    mnt: BorrowedFd<'_>,
    sink: FdSink,
    want: MountAttrFlags,
) -> Result<(), MountError> {
    enforce_attrs(kernel, mnt, want)?;
    match sink {
        FdSink::Socket(sock) => kernel.send_fd(sock.as_fd(), mnt).map_err(|errno| MountError::Send { errno }),
        FdSink::Courier(c) => c.send(mnt).map_err(|reason| MountError::Courier { reason }),
    }
}

/// `mount.composefs -N NS`: a PID or the path of a mount namespace to mount in (`setns`).
pub(crate) fn enter_mount_namespace(ns: &str) -> Result<(), MountError> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsFd;
    let path = if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) {
        format!("/proc/{ns}/ns/mnt")
    } else {
        ns.to_string()
    };
    let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MountError::Usage(format!("-N {ns}: {e}")))?;
    rustix::thread::move_into_link_name_space(fd.as_fd(), Some(rustix::thread::LinkNameSpaceType::Mount))
        .map_err(|e| MountError::Usage(format!("-N {ns}: setns: {e}")))
}
