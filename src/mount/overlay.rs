//! overlayfs assembly: EROFS metadata lower + data-only object lowers, attached or handed out as an fd.
//!
//! Built with the new mount API: `fsopen("overlay")`, `lowerdir+` for each (detached) EROFS mount,
//! `datadir+` for each object directory, `metacopy=on`, `redirect_dir=on`, optional
//! `verity=require`, optional upper/work dirs, then `fsmount` gives a detached mount. When the kernel
//! refuses `lowerdir+`/`datadir+` (before Linux 6.7) the legacy `lowerdir=L1:L2::D1::D2` string is
//! used instead, with `,` `:` `\` escaped. Layers are passed as `/proc/self/fd/N` of fds we hold, so
//! no path is resolved twice and no temporary mount is ever attached anywhere.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{fsconfig_create, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags};

/// Whether overlay's fs-verity checking is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verity {
    #[default]
    Off,
    /// `verity=require` if the kernel offers it, else silently off.
    Try,
    /// `verity=require`, failing when unsupported.
    Require,
}

/// Everything overlay needs; all paths are pinned as fds by the caller.
pub struct OverlaySpec<'a> {
    /// Metadata lowers, uppermost first (each a detached EROFS mount fd).
    pub lowers: Vec<BorrowedFd<'a>>,
    /// Data-only lowers (object directories), in lookup order.
    pub datadirs: Vec<BorrowedFd<'a>>,
    pub verity: Verity,
    /// (upperdir, workdir)
    pub upper: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
    /// Mount attributes for the final mount (RDONLY, NOSUID, NODEV...).
    pub attrs: MountAttrFlags,
    /// Use the legacy `lowerdir=` string even if `lowerdir+` works (tests of the fallback).
    pub force_legacy: bool,
    /// Private (root-only) directory where, for the legacy syntax, the detached lower mounts are
    /// attached for the moment the overlay is created (kernels without `lowerdir+` also refuse
    /// detached mounts as layers); they are detached again right after.
    pub scratch: &'a Path,
    /// A composefs layer (metacopy=on, redirect_dir=on, verity). When false, this is the
    /// stacking overlay over several composefs layers: it merges them (whiteouts, opaque
    /// directories) but never follows metacopy/redirect xattrs (metacopy=off, redirect_dir=nofollow).
    pub composefs: bool,
}

/// The assembled overlay: a detached mount, plus how it was built.
pub struct Overlay {
    pub mnt: OwnedFd,
    pub legacy: bool,
    pub verity: bool,
}

fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Escapes a path for the legacy `lowerdir=` syntax: `\`, `:` and `,` get a backslash.
pub fn escape_legacy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The legacy lowerdir value: metadata lowers joined by `:`, then each data dir after `::`.
pub fn legacy_lowerdir(lowers: &[String], datadirs: &[String]) -> String {
    let mut s = lowers.iter().map(|l| escape_legacy(l)).collect::<Vec<_>>().join(":");
    for d in datadirs {
        s.push_str("::");
        s.push_str(&escape_legacy(d));
    }
    s
}

/// Reads the messages the kernel attached to an fs context (`e overlay: ...` lines).
pub fn fs_log(fs: BorrowedFd<'_>) -> String {
    let mut msgs = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..32 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    msgs.join("; ")
}

/// Builds the overlay as a detached mount.
pub fn assemble(spec: &OverlaySpec<'_>) -> Result<Overlay, OverlayError> {
    if spec.lowers.is_empty() {
        return Err(OverlayError::NoLower);
    }
    if !spec.force_legacy {
        match build(spec, false) {
            Err(OverlayError::Config { key, errno: Errno::INVAL, .. }) if key == "lowerdir+" || key == "datadir+" => {}
            // Before Linux 6.15 overlay cannot clone a detached mount as a layer ("failed to
            // clone lowerpath", EINVAL at create): retry with the lowers attached. (Seen on 6.12.)
            Err(OverlayError::Create { errno: Errno::INVAL, .. }) => {}
            r => return r,
        }
    }
    build(spec, true)
}

fn build(spec: &OverlaySpec<'_>, legacy: bool) -> Result<Overlay, OverlayError> {
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| OverlayError::Open { errno: e })?;
    let cfg = |key: &'static str, val: &str| -> Result<(), OverlayError> {
        fsconfig_set_string(fs.as_fd(), key, val).map_err(|e| OverlayError::Config {
            key,
            errno: e,
            log: fs_log(fs.as_fd()),
        })
    };
    cfg("source", "composefs")?;
    if !spec.composefs {
        cfg("metacopy", "off")?;
        cfg("redirect_dir", "nofollow")?;
    } else {
        cfg("metacopy", "on")?;
        cfg("redirect_dir", "on")?;
    }
    let mut verity = false;
    match if spec.composefs { spec.verity } else { Verity::Off } {
        Verity::Off => {}
        Verity::Require => {
            cfg("verity", "require")?;
            verity = true;
        }
        Verity::Try => {
            verity = cfg("verity", "require").is_ok();
        }
    }
    let datas: Vec<String> = spec.datadirs.iter().map(|f| fd_path(*f)).collect();
    // Legacy kernels: attach each lower mount in the private scratch dir while the overlay is
    // built; the guards detach and remove them on every path out of this function.
    let mut attached = Vec::new();
    let lowers: Vec<String> = if legacy {
        for f in &spec.lowers {
            attached.push(TempAttach::new(spec.scratch, *f)?);
        }
        attached.iter().map(|a| a.dir.to_string_lossy().into_owned()).collect()
    } else {
        spec.lowers.iter().map(|f| fd_path(*f)).collect()
    };
    if legacy {
        cfg("lowerdir", &legacy_lowerdir(&lowers, &datas))?;
    } else {
        for l in &lowers {
            cfg("lowerdir+", l)?;
        }
        for d in &datas {
            cfg("datadir+", d)?;
        }
    }
    if let Some((up, work)) = spec.upper {
        cfg("upperdir", &fd_path(up))?;
        cfg("workdir", &fd_path(work))?;
    }
    fsconfig_create(fs.as_fd()).map_err(|e| OverlayError::Create { errno: e, log: fs_log(fs.as_fd()) })?;
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, spec.attrs)
        .map_err(|e| OverlayError::Fsmount { errno: e })?;
    Ok(Overlay { mnt, legacy, verity })
}

/// A lower mount attached at a fresh directory in the scratch dir; dropping it detaches the
/// mount (MNT_DETACH: the overlay keeps its own private clone) and removes the directory.
struct TempAttach {
    dir: PathBuf,
    mounted: bool,
}

impl TempAttach {
    fn new(scratch: &Path, mnt: BorrowedFd<'_>) -> Result<TempAttach, OverlayError> {
        use rustix::mount::{move_mount, MoveMountFlags};
        let tmp_err = |errno: Errno| OverlayError::TempAttach { dir: scratch.to_path_buf(), errno };
        let mut dir = None;
        for i in 0..100u32 {
            let d = scratch.join(format!(".layer-{}-{}-{i}", std::process::id(), mnt.as_raw_fd()));
            match rustix::fs::mkdir(&d, rustix::fs::Mode::from_raw_mode(0o700)) {
                Ok(()) => {
                    dir = Some(d);
                    break;
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(tmp_err(e)),
            }
        }
        let dir = dir.ok_or_else(|| tmp_err(Errno::EXIST))?;
        let mut t = TempAttach { dir, mounted: false };
        let dfd = rustix::fs::open(
            &t.dir,
            rustix::fs::OFlags::PATH
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(tmp_err)?;
        // Onto the pinned directory (not a re-resolved path).
        move_mount(
            mnt,
            "",
            dfd.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(tmp_err)?;
        t.mounted = true;
        Ok(t)
    }
}

impl Drop for TempAttach {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(
                &self.dir,
                rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
            );
        }
        let _ = rustix::fs::rmdir(&self.dir);
    }
}

/// Sends a detached mount fd over a connected unix socket (one byte of payload, SCM_RIGHTS).
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), OverlayError> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(OverlayError::Send { errno: Errno::NOMEM });
    }
    let payload = [std::io::IoSlice::new(b"M")];
    loop {
        match sendmsg(sock, &payload, &mut anc, SendFlags::NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(OverlayError::Send { errno: e }),
        }
    }
}

/// Connects to a unix socket path for `--fd-out` (stream, then seqpacket, then datagram).
pub fn connect_socket(path: &std::path::Path) -> Result<OwnedFd, OverlayError> {
    use rustix::net::{connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path).map_err(|e| OverlayError::Connect { path: path.into(), errno: e })?;
    let mut last = Errno::PROTOTYPE;
    for ty in [SocketType::STREAM, SocketType::SEQPACKET, SocketType::DGRAM] {
        let s = socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)
            .map_err(|e| OverlayError::Connect { path: path.into(), errno: e })?;
        match connect(&s, &addr) {
            Ok(()) => return Ok(s),
            Err(e @ Errno::PROTOTYPE) => last = e,
            Err(e) => return Err(OverlayError::Connect { path: path.into(), errno: e }),
        }
    }
    Err(OverlayError::Connect { path: path.into(), errno: last })
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay: no metadata layer given")]
    NoLower,
    #[error("overlay: fsopen failed: {errno}{}", match *errno {
        Errno::NOSYS => " (this kernel lacks the new mount API: fsopen needs Linux 5.2+)",
        Errno::NODEV => " (this kernel has no overlayfs: CONFIG_OVERLAY_FS / modprobe overlay)",
        _ => "",
    })]
    Open { errno: Errno },
    #[error("overlay: option {key} refused: {errno}{}", if log.is_empty() { String::new() } else { format!(" (kernel: {log})") })]
    Config { key: &'static str, errno: Errno, log: String },
    #[error("overlay: creating the filesystem failed: {errno}{}", if log.is_empty() { String::new() } else { format!(" (kernel: {log})") })]
    Create { errno: Errno, log: String },
    #[error("overlay (legacy syntax): attaching a layer temporarily under {}: {errno}", dir.display())]
    TempAttach { dir: PathBuf, errno: Errno },
    #[error("overlay: fsmount failed: {errno}")]
    Fsmount { errno: Errno },
    #[error("--fd-out: sending the mount fd failed: {errno}")]
    Send { errno: Errno },
    #[error("--fd-out: cannot connect to {}: {errno}", path.display())]
    Connect { path: PathBuf, errno: Errno },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_escaping() {
        assert_eq!(escape_legacy("/a,b:c\\d"), "/a\\,b\\:c\\\\d");
        let s = legacy_lowerdir(&["/l1".into(), "/l:2".into()], &["/d,1".into(), "/d2".into()]);
        assert_eq!(s, "/l1:/l\\:2::/d\\,1::/d2");
    }
}
