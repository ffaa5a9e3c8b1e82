//! How the engine reaches what the request names, and what it must check on the way.
//!
//! The mount engine never asks whether it runs privileged: the CLI chooses an [`Access`] once,
//! from the result of early init, and passes it in. [`Direct`] acts with this process's own
//! credentials (plain root, or a user acting for itself); `crate::privileged::gate::Gate` is the
//! setuid helper's: every path is opened as the caller, and every extra check privileged mode
//! makes is one of its methods (the closed list, in one file).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use super::records::MountRecord;
use super::request::{IdMap, MountOption, MountRequest};

/// Phases of a mount, each needing less than the one before (the gate drops capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Opening and checking; `setid` keeps what switching ids and writing id maps need.
    Mount { setid: bool },
    /// The mount is attached or handed out: nothing privileged is left to do.
    Done,
}

/// What a new mount adds to its owner's usage (checked against the helper's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Usage {
    pub(crate) mounts: u64,
    pub(crate) loop_devices: u64,
}

/// The engine's view of the privilege mode. See the module documentation.
pub(crate) trait Access {
    /// The uid that owns the mounts made (recorded) and that `umount` is checked against.
    fn caller_uid(&self) -> u32;
    /// Checks on the request as a whole, before anything is opened.
    fn check_request(&self, req: &MountRequest) -> Result<(), AccessError>;
    /// Checks a `mount.composefs -o` string and the options parsed from it.
    fn check_options(&self, raw: &str, parsed: &[MountOption]) -> Result<(), AccessError>;
    /// May the mount be made in another mount namespace (`mount.composefs -N`)?
    fn check_namespace_switch(&self) -> Result<(), AccessError>;
    /// Opens an image, TOC or dumpfile, pinned (the gate returns a sealed private copy).
    fn open_source(&self, path: &Path) -> Result<OwnedFd, AccessError>;
    /// Checks an opened image before it is measured or mounted.
    fn check_image(&self, image: BorrowedFd<'_>) -> Result<(), AccessError>;
    /// Verifies the expected fs-verity digest of an opened image.
    fn check_digest(&self, image: BorrowedFd<'_>, want: &[u8; 32]) -> Result<(), AccessError>;
    /// Opens an object directory (data-only lower).
    fn open_basedir(&self, path: &Path) -> Result<OwnedFd, AccessError>;
    /// Opens the upper and work directories.
    fn open_upper(&self, upper: &Path, work: &Path) -> Result<(OwnedFd, OwnedFd), AccessError>;
    /// Opens the mount target (O_PATH, never following a final symlink).
    fn open_target(&self, path: &Path) -> Result<OwnedFd, AccessError>;
    /// Connects to the `--fd-out` socket at `path`.
    fn connect_socket(&self, path: &Path) -> Result<FdSink, AccessError>;
    /// Uses an inherited, connected `--fd-out` socket.
    fn use_socket(&self, sock: OwnedFd) -> Result<FdSink, AccessError>;
    /// Opens and checks an `--idmap` user namespace.
    fn open_userns(&self, path: &Path) -> Result<OwnedFd, AccessError>;
    /// Checks `--uidmap`/`--gidmap` maps for a user namespace cfsmount creates.
    fn check_id_maps(&self, uid: &[IdMap], gid: &[IdMap]) -> Result<(), AccessError>;
    /// Checks the caller's live mounts plus `adding` against its limits.
    fn check_limits(&self, live: &[MountRecord], adding: Usage) -> Result<(), AccessError>;
    /// Mount attributes the final mount must end with, whatever the request says (`writable`:
    /// the caller's own upper dir without `ro`).
    fn required_attrs(&self, writable: bool) -> MountAttrFlags;
    /// Enters a phase (the gate drops what the phase does not need).
    fn enter_phase(&self, phase: Phase) -> Result<(), AccessError>;
    /// Opens the target of `umount` (O_PATH, never following a final symlink).
    fn open_umount_target(&self, path: &Path) -> Result<OwnedFd, AccessError>;
    /// May the mount of record `rec` at `target` be unmounted?
    fn check_unmount(&self, target: &Path, rec: &MountRecord) -> Result<(), AccessError>;
    /// The ids the sandboxed image builder runs as (None: the sandbox's own choice).
    fn builder_ids(&self) -> Option<(u32, u32)>;
    /// Maps (uid, gid) of a user namespace to idmap the object directories with (None: use them
    /// as they are).
    fn data_idmap(&self) -> Option<(Vec<IdMap>, Vec<IdMap>)>;
    /// Every image on a loop device (so that every mount is counted and watched by the loop
    /// devices it holds), instead of file-backed EROFS where the kernel can.
    fn requires_loop_devices(&self) -> bool;
}

/// Where an `--fd-out` mount goes: a connected socket we send it over ourselves, or a courier
/// process that is the caller and sends it with the caller's credentials (privileged mode).
pub(crate) enum FdSink {
    Socket(OwnedFd),
    Courier(crate::sys::mount::Courier),
}

/// Acting with this process's own credentials: plain root (administrators, `mount -t composefs`,
/// boot), or a user for itself (whatever the kernel allows it).
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    uid: u32,
}

impl Direct {
    pub(crate) fn new() -> Direct {
        Direct { uid: rustix::process::getuid().as_raw() }
    }
}

/// `open(path, flags | O_CLOEXEC | O_NOCTTY)` with this process's credentials.
pub(crate) fn open_here(what: &'static str, path: &Path, flags: OFlags) -> Result<OwnedFd, AccessError> {
    rustix::fs::open(path, flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty()).map_err(|errno| AccessError::Open {
        what,
        path: path.to_path_buf(),
        errno,
        as_caller: false,
    })
}

/// Opens the upper and work directories with `open` and checks they share a filesystem.
pub(crate) fn open_upper_with(
    upper: &Path,
    work: &Path,
    open: impl Fn(&'static str, &Path) -> Result<OwnedFd, AccessError>,
) -> Result<(OwnedFd, OwnedFd, rustix::fs::Stat, rustix::fs::Stat), AccessError> {
    let u = open("upperdir", upper)?;
    let w = open("workdir", work)?;
    let stat = |what, p: &Path, fd: &OwnedFd| {
        rustix::fs::fstat(fd).map_err(|errno| AccessError::Open { what, path: p.into(), errno, as_caller: false })
    };
    let (su, sw) = (stat("upperdir", upper, &u)?, stat("workdir", work, &w)?);
    if su.st_dev != sw.st_dev {
        return Err(AccessError::Refused {
            what: "workdir",
            path: work.into(),
            reason: "not on the upperdir's filesystem".into(),
        });
    }
    Ok((u, w, su, sw))
}

/// Connects a unix socket for `--fd-out` (stream, then seqpacket, then datagram).
pub(crate) fn connect_unix(path: &Path) -> Result<OwnedFd, AccessError> {
    use rustix::net::{connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let err = |errno| AccessError::Connect { path: path.into(), errno };
    let addr = SocketAddrUnix::new(path).map_err(err)?;
    let mut last = Errno::PROTOTYPE;
    for ty in [SocketType::STREAM, SocketType::SEQPACKET, SocketType::DGRAM] {
        let s = socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None).map_err(err)?;
        match connect(&s, &addr) {
            Ok(()) => return Ok(s),
            Err(e @ Errno::PROTOTYPE) => last = e,
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(last))
}

impl Access for Direct {
    fn caller_uid(&self) -> u32 {
        self.uid
    }

    fn check_request(&self, req: &MountRequest) -> Result<(), AccessError> {
        if (req.allow_suid || req.allow_dev) && self.uid != 0 {
            return Err(AccessError::NotPermitted("suid/dev mounts may only be requested by root"));
        }
        Ok(())
    }

    fn check_options(&self, _raw: &str, _parsed: &[MountOption]) -> Result<(), AccessError> {
        Ok(())
    }

    fn check_namespace_switch(&self) -> Result<(), AccessError> {
        Ok(())
    }

    fn open_source(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        let fd = open_here("source", path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let st = rustix::fs::fstat(&fd).map_err(|errno| AccessError::Open {
            what: "source",
            path: path.into(),
            errno,
            as_caller: false,
        })?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(AccessError::Refused {
                what: "source",
                path: path.into(),
                reason: "not a regular file".into(),
            });
        }
        Ok(fd)
    }

    fn check_image(&self, _image: BorrowedFd<'_>) -> Result<(), AccessError> {
        Ok(())
    }

    fn check_digest(&self, image: BorrowedFd<'_>, want: &[u8; 32]) -> Result<(), AccessError> {
        crate::fsverity::check_digest(image, want).map_err(AccessError::Verity)
    }

    fn open_basedir(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        open_here("basedir", path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    fn open_upper(&self, upper: &Path, work: &Path) -> Result<(OwnedFd, OwnedFd), AccessError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        let (u, w, _, _) = open_upper_with(upper, work, |what, p| open_here(what, p, flags))?;
        Ok((u, w))
    }

    fn open_target(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        open_here("target", path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY)
    }

    fn connect_socket(&self, path: &Path) -> Result<FdSink, AccessError> {
        connect_unix(path).map(FdSink::Socket)
    }

    fn use_socket(&self, sock: OwnedFd) -> Result<FdSink, AccessError> {
        Ok(FdSink::Socket(sock))
    }

    fn open_userns(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        let fd = open_here("idmap user namespace", path, OFlags::RDONLY)?;
        check_is_userns(path, fd.as_fd())?;
        Ok(fd)
    }

    fn check_id_maps(&self, _uid: &[IdMap], _gid: &[IdMap]) -> Result<(), AccessError> {
        Ok(())
    }

    fn check_limits(&self, _live: &[MountRecord], _adding: Usage) -> Result<(), AccessError> {
        Ok(())
    }

    fn required_attrs(&self, _writable: bool) -> MountAttrFlags {
        MountAttrFlags::empty()
    }

    fn enter_phase(&self, _phase: Phase) -> Result<(), AccessError> {
        Ok(())
    }

    fn open_umount_target(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        open_here("umount target", path, OFlags::PATH | OFlags::NOFOLLOW)
    }

    fn check_unmount(&self, _target: &Path, _rec: &MountRecord) -> Result<(), AccessError> {
        Ok(())
    }

    fn builder_ids(&self) -> Option<(u32, u32)> {
        None
    }

    fn data_idmap(&self) -> Option<(Vec<IdMap>, Vec<IdMap>)> {
        None
    }

    fn requires_loop_devices(&self) -> bool {
        false
    }
}

/// `NS_GET_NSTYPE` must say CLONE_NEWUSER.
pub(crate) fn check_is_userns(path: &Path, fd: BorrowedFd<'_>) -> Result<(), AccessError> {
    let idm = |r: &str| AccessError::Idmap(format!("{}: {r}", path.display()));
    let ty = crate::sys::helper::ns_get_nstype(fd).map_err(|_| idm("not a namespace file"))?;
    if ty != libc::CLONE_NEWUSER {
        return Err(idm("not a user namespace"));
    }
    Ok(())
}

/// Why an input was refused or could not be opened. Messages name the path or option and the
/// reason (and the errno).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("{what} {path:?}: cannot open{}: {errno}", if *as_caller { " as the calling user" } else { "" })]
    Open { what: &'static str, path: PathBuf, errno: Errno, as_caller: bool },
    #[error("{what} {path:?}: refused: {reason}")]
    Refused { what: &'static str, path: PathBuf, reason: String },
    #[error("{what} {value:?}: refused: {reason}")]
    BadArgument { what: &'static str, value: String, reason: String },
    #[error("mount options {option:?}: refused: {reason}")]
    BadOption { option: String, reason: String },
    #[error("image refused: {reason}")]
    BadImage { reason: String },
    #[error("image refused: {0}")]
    Header(crate::erofs::format::HeaderError),
    #[error(transparent)]
    Verity(crate::fsverity::VerityError),
    #[error("idmap refused: {0}")]
    Idmap(String),
    #[error("per-user limit exceeded: {what} {value} > {limit} (helper policy)")]
    Limit { what: &'static str, value: u64, limit: u64 },
    #[error("machine-wide limit exceeded: {what} of all unprivileged users {value} > {limit} (helper policy)")]
    MachineLimit { what: &'static str, value: u64, limit: u64 },
    #[error("helper policy: {0}")]
    Policy(String),
    #[error("{0}")]
    NotPermitted(&'static str),
    #[error("privileged mode: {0}")]
    Credentials(String),
    #[error("--fd-out: cannot connect to {}: {errno}", path.display())]
    Connect { path: PathBuf, errno: Errno },
    #[error("--fd-out: {0}")]
    Courier(String),
    #[error("{what}: {errno}")]
    Io { what: &'static str, errno: Errno },
}
