//! The syscall seam of the mount sequence: the engine asks a [`Kernel`] to open filesystem
//! contexts, mount, set mount attributes, attach loop devices, move and send mounts. [`Real`]
//! is the kernel (rustix and `crate::sys`); the unit tests drive the same sequence with a
//! recording fake (`super::testkit`) and no root, and check the engine's decisions.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

use super::error::{IdmapError, MountError};
use super::loopdev::{LoopDevice, LoopError};
use super::overlay::{DataDir, Overlay, OverlayOptions};
use super::records::MountId;
use super::request::{map_text, IdMap};

/// An overlay created with the legacy `lowerdir=L1:L2::D1::D2` string, whose metadata layers
/// (detached mounts) must be attached somewhere while it is created: kernels without
/// `lowerdir+` (before 6.7), or that cannot use a detached mount as a layer (before 6.15).
pub(crate) struct LegacyOverlay<'a> {
    /// Metadata layers, uppermost first: detached mounts.
    pub(crate) lowers: Vec<BorrowedFd<'a>>,
    /// Data-only layers.
    pub(crate) datadirs: Vec<DataDir<'a>>,
    /// The upper and work dirs as named (re-opened in the private namespace, checked).
    pub(crate) upper_paths: Option<(&'a Path, &'a Path)>,
    pub(crate) options: OverlayOptions<'a>,
    /// Attributes of the resulting detached mount.
    pub(crate) attrs: MountAttrFlags,
    /// An existing directory to mount the temporary tmpfs over (in the private namespace).
    pub(crate) scratch: &'a Path,
}

/// The kernel operations of the mount sequence (see the module documentation).
pub(crate) trait Kernel {
    /// `fsopen(fstype, FSOPEN_CLOEXEC)`.
    fn fsopen(&self, fstype: &str) -> Result<OwnedFd, Errno>;
    /// `fsconfig(FSCONFIG_SET_STRING)`.
    fn fsconfig_set_string(&self, fs: BorrowedFd<'_>, key: &str, value: &str) -> Result<(), Errno>;
    /// `fsconfig(FSCONFIG_SET_FLAG)`.
    fn fsconfig_set_flag(&self, fs: BorrowedFd<'_>, key: &str) -> Result<(), Errno>;
    /// `fsconfig(FSCONFIG_CMD_CREATE)`.
    fn fsconfig_create(&self, fs: BorrowedFd<'_>) -> Result<(), Errno>;
    /// `fsmount(fs, FSMOUNT_CLOEXEC, attrs)`: a detached mount.
    fn fsmount(&self, fs: BorrowedFd<'_>, attrs: MountAttrFlags) -> Result<OwnedFd, Errno>;
    /// Drains the messages the kernel queued on an fs context.
    fn fs_log(&self, fs: BorrowedFd<'_>) -> Vec<String>;
    /// `mount_setattr` on one mount: set and clear attributes, or idmap it with `userns`.
    fn mount_setattr(
        &self,
        mnt: BorrowedFd<'_>,
        set: MountAttrFlags,
        clear: MountAttrFlags,
        userns: Option<BorrowedFd<'_>>,
    ) -> Result<(), Errno>;
    /// The per-mount flags of the mount holding `fd` (`fstatvfs`).
    fn mount_flags(&self, fd: BorrowedFd<'_>) -> Result<StatVfsMountFlags, Errno>;
    /// The mount id of the mount holding `fd` (statx).
    fn mount_id(&self, fd: BorrowedFd<'_>) -> Result<MountId, Errno>;
    /// `move_mount` of the detached mount `mnt` onto the pinned directory `target`.
    fn move_mount(&self, mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno>;
    /// Binds `image` to a free loop device (read-only, direct I/O, autoclear).
    fn attach_loop(&self, image: BorrowedFd<'_>, label: &Path) -> Result<LoopDevice, LoopError>;
    /// `open_tree(dir, OPEN_TREE_CLONE)`: a detached bind mount of the directory `dir`.
    fn clone_tree(&self, dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno>;
    /// A new user namespace with these maps (for idmapped mounts).
    fn create_userns(&self, uid: &[IdMap], gid: &[IdMap]) -> Result<OwnedFd, IdmapError>;
    /// Creates an overlay with the legacy syntax (see [`LegacyOverlay`]); a detached mount.
    fn legacy_overlay(&self, spec: &LegacyOverlay<'_>) -> Result<Overlay, MountError>;
    /// Sends `fd` (SCM_RIGHTS, one byte of payload) over the connected socket `sock`.
    fn send_fd(&self, sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno>;
    /// `umount2("/proc/self/fd/N", MNT_DETACH)` of the mount pinned by the O_PATH fd `root`.
    fn umount_pinned(&self, root: BorrowedFd<'_>) -> Result<(), Errno>;
}

/// `/proc/self/fd/N` for a pinned fd, for kernel interfaces that only take a path string.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The running kernel.
pub(crate) struct Real;

impl Kernel for Real {
    fn fsopen(&self, fstype: &str) -> Result<OwnedFd, Errno> {
        rustix::mount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
    }

    fn fsconfig_set_string(&self, fs: BorrowedFd<'_>, key: &str, value: &str) -> Result<(), Errno> {
        rustix::mount::fsconfig_set_string(fs, key, value)
    }

    fn fsconfig_set_flag(&self, fs: BorrowedFd<'_>, key: &str) -> Result<(), Errno> {
        rustix::mount::fsconfig_set_flag(fs, key)
    }

    fn fsconfig_create(&self, fs: BorrowedFd<'_>) -> Result<(), Errno> {
        rustix::mount::fsconfig_create(fs)
    }

    fn fsmount(&self, fs: BorrowedFd<'_>, attrs: MountAttrFlags) -> Result<OwnedFd, Errno> {
        rustix::mount::fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
    }

    fn fs_log(&self, fs: BorrowedFd<'_>) -> Vec<String> {
        let mut msgs = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..32 {
            match rustix::io::read(fs, &mut buf) {
                Ok(n) if n > 0 => msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
                _ => break,
            }
        }
        msgs
    }

    fn mount_setattr(
        &self,
        mnt: BorrowedFd<'_>,
        set: MountAttrFlags,
        clear: MountAttrFlags,
        userns: Option<BorrowedFd<'_>>,
    ) -> Result<(), Errno> {
        match userns {
            Some(ns) => crate::sys::mount::mount_setattr_idmap(mnt, ns),
            None => crate::sys::mount::mount_setattr_flags(mnt, u64::from(set.bits()), u64::from(clear.bits())),
        }
    }

    fn mount_flags(&self, fd: BorrowedFd<'_>) -> Result<StatVfsMountFlags, Errno> {
        rustix::fs::fstatvfs(fd).map(|v| v.f_flag)
    }

    fn mount_id(&self, fd: BorrowedFd<'_>) -> Result<MountId, Errno> {
        super::records::mount_id(fd)
    }

    fn move_mount(&self, mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno> {
        let flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH;
        rustix::mount::move_mount(mnt, "", target, "", flags)
    }

    fn attach_loop(&self, image: BorrowedFd<'_>, label: &Path) -> Result<LoopDevice, LoopError> {
        super::loopdev::attach(image, label)
    }

    fn clone_tree(&self, dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
        use rustix::mount::OpenTreeFlags as F;
        rustix::mount::open_tree(dir, "", F::OPEN_TREE_CLONE | F::OPEN_TREE_CLOEXEC | F::AT_EMPTY_PATH)
    }

    fn create_userns(&self, uid: &[IdMap], gid: &[IdMap]) -> Result<OwnedFd, IdmapError> {
        super::userns::create(self, uid, gid)
    }

    fn legacy_overlay(&self, spec: &LegacyOverlay<'_>) -> Result<Overlay, MountError> {
        super::compat::legacy_overlay_in_private_ns(self, spec)
    }

    fn send_fd(&self, sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        use std::mem::MaybeUninit;
        let fds = [fd];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(Errno::NOMEM);
        }
        let payload = [std::io::IoSlice::new(b"M")];
        loop {
            match sendmsg(sock, &payload, &mut anc, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn umount_pinned(&self, root: BorrowedFd<'_>) -> Result<(), Errno> {
        crate::sys::helper::umount_pinned(root)
    }
}

/// The map files [`write_maps`] writes, in the order it writes them.
const MAP_FILES: [&str; 2] = ["uid_map", "gid_map"];

/// Writes `uid_map`/`gid_map` of our child `pid` (used while a user namespace is being made),
/// each in one `write`. The files are opened under `/proc/PID/`, once `/proc/PID/status` says
/// that process's parent is us (a /proc of another pid namespace names other processes by our
/// numbers: its `self` link does not name our pid, or `PID` is not our child there). Where it
/// is not, or where /proc does not show us the process (`hidepid=invisible|ptraceable` hides a
/// process whose memory is undumpable from anyone without `CAP_SYS_PTRACE`, which the setuid
/// helper does not hold: `ENOENT` for `ptraceable` and `invisible`, `EPERM` for `noaccess`,
/// `EACCES`), they are opened under a proc instance
/// of our own instead: `fsopen("proc")` with the defaults (every process of our pid namespace
/// shown), mounted detached (`nosuid,nodev,noexec`), never attached anywhere, and gone when this
/// returns.
pub(crate) fn write_maps(kernel: &dyn Kernel, pid: i32, uid: &[IdMap], gid: &[IdMap]) -> Result<(), IdmapError> {
    use rustix::fs::CWD;
    let me = rustix::process::getpid().as_raw_nonzero().to_string();
    let ours = rustix::fs::readlink("/proc/self", Vec::new()).is_ok_and(|l| l.to_bytes() == me.as_bytes());
    // Why the proc instance of our own: what hid the child (the file and errno), or `None` for a
    // /proc that is not of our pid namespace.
    let mut hidden = None;
    if ours {
        match open_child_maps(CWD, "/proc/", pid, &me) {
            Ok(Some(files)) => return write_map_files(files, uid, gid),
            // Not our child there: a /proc of another pid namespace after all.
            Ok(None) => {}
            Err((file, errno)) if matches!(errno, Errno::NOENT | Errno::PERM | Errno::ACCESS) => {
                hidden = Some((file, errno))
            }
            Err((file, errno)) => return Err(IdmapError::OpenHostMap { file, errno }),
        }
    }
    let proc = private_proc(kernel).map_err(|fs| match hidden {
        Some((file, errno)) => IdmapError::ProcHidden { file, errno, fs: Box::new(fs) },
        None => IdmapError::ProcNotOurs { fs: Box::new(fs) },
    })?;
    match open_child_maps(proc.as_fd(), "", pid, &me) {
        Ok(Some(files)) => write_map_files(files, uid, gid),
        Ok(None) => Err(IdmapError::NotOurChild),
        Err((file, errno)) => Err(match hidden {
            Some((_, h)) => IdmapError::OpenMap { file, hidden: h, errno },
            None => IdmapError::OpenOwnMap { file, errno },
        }),
    }
}

/// `{prefix}{pid}/uid_map` and `gid_map` under `dir`, opened for writing through one fd of the
/// process's directory, if its `status` names `me` as its parent (`PPid:`); `None` if not.
/// Errors name the file.
fn open_child_maps(
    dir: BorrowedFd<'_>,
    prefix: &str,
    pid: i32,
    me: &str,
) -> Result<Option<Vec<OwnedFd>>, (&'static str, Errno)> {
    use rustix::fs::{Mode, OFlags};
    let at = |d: BorrowedFd<'_>, path: &str, flags: OFlags, file: &'static str| {
        rustix::fs::openat(d, path, flags | OFlags::CLOEXEC, Mode::empty()).map_err(|errno| (file, errno))
    };
    let proc_dir = at(dir, &format!("{prefix}{pid}"), OFlags::RDONLY | OFlags::DIRECTORY, "(its directory)")?;
    let status = at(proc_dir.as_fd(), "status", OFlags::RDONLY, "status")?;
    let mut text = Vec::with_capacity(2048);
    std::io::Read::read_to_end(&mut std::fs::File::from(status), &mut text)
        .map_err(|e| ("status", Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    let parent =
        String::from_utf8_lossy(&text).lines().find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_string()));
    if parent.as_deref() != Some(me) {
        return Ok(None);
    }
    MAP_FILES.iter().map(|&file| at(proc_dir.as_fd(), file, OFlags::WRONLY, file)).collect::<Result<_, _>>().map(Some)
}

/// Writes `uid` into the first of `files`, `gid` into the second ([`write_maps`]).
fn write_map_files(files: Vec<OwnedFd>, uid: &[IdMap], gid: &[IdMap]) -> Result<(), IdmapError> {
    for ((file, maps), fd) in MAP_FILES.into_iter().zip([uid, gid]).zip(files) {
        let text = map_text(maps);
        let failed = |errno| IdmapError::WriteMap { file, text: text.trim().replace('\n', ", "), errno };
        let written = loop {
            match rustix::io::write(&fd, text.as_bytes()) {
                Err(Errno::INTR) => continue,
                r => break r,
            }
        };
        match written {
            Ok(n) if n == text.len() => {}
            // The kernel takes a map in one write or not at all.
            Ok(_) => return Err(failed(Errno::IO)),
            Err(errno) => return Err(failed(errno)),
        }
    }
    Ok(())
}

/// A proc instance of our own, mounted detached: see [`write_maps`].
fn private_proc(kernel: &dyn Kernel) -> Result<OwnedFd, super::fs_context::FsError> {
    let fs = super::fs_context::FsContext::open(kernel, "proc")?;
    fs.create()?;
    fs.mount(MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map files are opened only for a process whose parent we are: a child, not ourselves,
    /// not init, not a grandchild; a pid that is gone is an error naming the directory.
    #[test]
    fn map_files_open_only_for_our_child() {
        use rustix::fs::CWD;
        let me = rustix::process::getpid().as_raw_nonzero().to_string();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let ours = open_child_maps(CWD, "/proc/", child.id() as i32, &me);
        let self_ = open_child_maps(CWD, "/proc/", rustix::process::getpid().as_raw_nonzero().get(), &me);
        let init = open_child_maps(CWD, "/proc/", 1, &me);
        let grand = open_child_maps(CWD, "/proc/", grandchild, &me);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(grandchild).unwrap(),
            rustix::process::Signal::KILL,
        );
        child.wait().unwrap();
        let gone = open_child_maps(CWD, "/proc/", child.id() as i32, &me);
        assert_eq!(ours.map(|f| f.map(|v| v.len())), Ok(Some(2)));
        assert!(matches!(self_, Ok(None)), "{self_:?}");
        assert!(matches!(init, Ok(None)), "{init:?}");
        assert!(matches!(grand, Ok(None)), "{grand:?}");
        assert!(matches!(gone, Err(("(its directory)", Errno::NOENT))), "{gone:?}");
    }
}
