//! Kernel-compatibility fallbacks, in one place, each taken only on the kernel condition that
//! needs it:
//!
//! - **overlay layers as detached mounts**: `lowerdir+`/`datadir+` exist since Linux 6.7, and
//!   only since 6.15 may a layer be a detached mount (before, `clone_private_mount` refuses a
//!   mount outside the caller's namespace: EINVAL at creation, logged only to dmesg as "failed
//!   to clone lowerpath"). The legacy `lowerdir=L1:L2::D1::D2` string, with the layers attached
//!   for the moment of creation, is used when the kernel refuses the `lowerdir+` key, or when a
//!   creation fails with EINVAL AND a probe shows that this kernel cannot create even a minimal
//!   overlay over detached mounts ([`detached_layers_work`]). Any other EINVAL is the request's
//!   own error and is reported.
//! - **file-backed EROFS** (6.12+): `ENOTBLK` asks for a block device: a loop device then.
//! - **kernels without `mount_setattr`** (5.2–5.11): attributes `fsmount` already set are not
//!   set again ([`attrs_missing`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use super::error::MountError;
use super::fs_context::{FsContext, FsError, FsStep};
use super::kernel::{fd_path, Kernel, LegacyOverlay};
use super::overlay::{set_options, set_upper, Overlay};

/// Whether a failed overlay step means "this kernel needs the legacy syntax" rather than "this
/// request is wrong". `probe` answers whether detached layers work on this kernel; it is only
/// asked for an EINVAL at creation.
pub(crate) fn needs_legacy_syntax(err: &FsError, probe: impl FnOnce() -> Probe) -> bool {
    match (&err.step, err.errno) {
        // Before 6.7 the keys do not exist ("Unknown parameter").
        (FsStep::Set(key), Errno::INVAL) => key == "lowerdir+" || key == "datadir+",
        (FsStep::Create, Errno::INVAL) => probe() == Probe::Refused,
        _ => false,
    }
}

/// What creating a minimal overlay over two detached tmpfs mounts gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The kernel accepts detached mounts as layers.
    Works,
    /// EINVAL at creation: the kernel cannot use detached mounts as layers (before 6.15).
    Refused,
    /// Something else failed: no conclusion (the original error is reported).
    Inconclusive,
}

/// Creates (and drops) an overlay whose two layers are fresh detached tmpfs mounts, to tell
/// whether this kernel can use detached mounts as layers. Nothing is attached anywhere.
pub(crate) fn detached_layers_work(kernel: &dyn Kernel) -> Probe {
    let tmpfs = || -> Result<OwnedFd, FsError> {
        let fs = FsContext::open(kernel, "tmpfs")?;
        fs.set("size", "4k")?;
        fs.create()?;
        fs.mount(MountAttrFlags::MOUNT_ATTR_RDONLY)
    };
    let (Ok(a), Ok(b)) = (tmpfs(), tmpfs()) else { return Probe::Inconclusive };
    let overlay = || -> Result<OwnedFd, FsError> {
        let fs = FsContext::open(kernel, "overlay")?;
        fs.set("lowerdir+", &fd_path(a.as_fd()))?;
        fs.set("lowerdir+", &fd_path(b.as_fd()))?;
        fs.create()?;
        fs.mount(MountAttrFlags::MOUNT_ATTR_RDONLY)
    };
    match overlay() {
        Ok(_) => Probe::Works,
        Err(FsError { step: FsStep::Create, errno: Errno::INVAL, .. }) => Probe::Refused,
        Err(_) => Probe::Inconclusive,
    }
}

/// Whether a failed EROFS step asks for a block device (no file-backed EROFS on this kernel).
pub(crate) fn wants_block_device(err: &FsError) -> bool {
    err.errno == Errno::NOTBLK
}

/// The attributes of `want` that the mount does not have yet (`have` from `fstatvfs`).
pub(crate) fn attrs_missing(have: StatVfsMountFlags, want: MountAttrFlags) -> MountAttrFlags {
    let pairs = [
        (MountAttrFlags::MOUNT_ATTR_RDONLY, StatVfsMountFlags::RDONLY),
        (MountAttrFlags::MOUNT_ATTR_NOSUID, StatVfsMountFlags::NOSUID),
        (MountAttrFlags::MOUNT_ATTR_NODEV, StatVfsMountFlags::NODEV),
        (MountAttrFlags::MOUNT_ATTR_NOEXEC, StatVfsMountFlags::NOEXEC),
    ];
    let mut missing = MountAttrFlags::empty();
    for (attr, flag) in pairs {
        if want.contains(attr) && !have.contains(flag) {
            missing |= attr;
        }
    }
    // Attributes without a statvfs flag cannot be verified: always set them.
    let known = pairs.iter().fold(MountAttrFlags::empty(), |a, (x, _)| a | *x);
    missing | (want - known)
}

/// Escapes a path for the legacy `lowerdir=` syntax: `\`, `:` and `,` get a backslash.
pub(crate) fn escape_legacy(s: &str) -> String {
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
pub(crate) fn legacy_lowerdir(lowers: &[String], datadirs: &[String]) -> String {
    let mut s = lowers.iter().map(|l| escape_legacy(l)).collect::<Vec<_>>().join(":");
    for d in datadirs {
        s.push_str("::");
        s.push_str(&escape_legacy(d));
    }
    s
}

/// The legacy overlay with each metadata layer attached at a fresh directory in the private
/// scratch directory for the moment the overlay is created (the overlay keeps private clones);
/// the guards detach and remove them on every path out.
pub(crate) fn legacy_overlay_with_temp_attach(
    kernel: &dyn Kernel,
    spec: &LegacyOverlay<'_>,
) -> Result<Overlay, MountError> {
    let mut attached = Vec::new();
    for f in &spec.lowers {
        attached.push(TempAttach::new(kernel, spec.scratch, *f)?);
    }
    let lowers: Vec<String> = attached.iter().map(|a| a.dir.to_string_lossy().into_owned()).collect();
    let datas: Vec<String> = spec.datadirs.iter().map(|f| fd_path(*f)).collect();
    let build = || -> Result<Overlay, FsError> {
        let fs = FsContext::open(kernel, "overlay")?;
        let verity = set_options(&fs, &spec.options)?;
        fs.set("lowerdir", &legacy_lowerdir(&lowers, &datas))?;
        set_upper(&fs, &spec.options)?;
        fs.create()?;
        Ok(Overlay { mnt: fs.mount(spec.attrs)?, legacy: true, verity })
    };
    build().map_err(MountError::Overlay)
}

/// A layer mount attached at a fresh directory in the scratch dir; dropping it detaches the
/// mount (MNT_DETACH: the overlay keeps its own private clone) and removes the directory.
struct TempAttach {
    dir: PathBuf,
    mounted: bool,
}

impl TempAttach {
    fn new(kernel: &dyn Kernel, scratch: &Path, mnt: BorrowedFd<'_>) -> Result<TempAttach, MountError> {
        let tmp_err = |errno: Errno| MountError::TempAttach { dir: scratch.to_path_buf(), errno };
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
        use rustix::fs::OFlags;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dfd = rustix::fs::open(&t.dir, flags, rustix::fs::Mode::empty()).map_err(tmp_err)?;
        // Onto the pinned directory (not a re-resolved path).
        kernel.move_mount(mnt, dfd.as_fd()).map_err(tmp_err)?;
        t.mounted = true;
        Ok(t)
    }
}

impl Drop for TempAttach {
    fn drop(&mut self) {
        if self.mounted {
            let flags = rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW;
            let _ = rustix::mount::unmount(&self.dir, flags);
        }
        let _ = rustix::fs::rmdir(&self.dir);
    }
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

    #[test]
    fn only_the_kernel_conditions_choose_the_legacy_syntax() {
        let err = |step: FsStep, errno| FsError { fstype: "overlay", step, errno, log: vec![] };
        let no_probe = || -> Probe { panic!("the probe is only for EINVAL at creation") };
        assert!(needs_legacy_syntax(&err(FsStep::Set("lowerdir+".into()), Errno::INVAL), no_probe));
        assert!(needs_legacy_syntax(&err(FsStep::Set("datadir+".into()), Errno::INVAL), no_probe));
        assert!(!needs_legacy_syntax(&err(FsStep::Set("upperdir".into()), Errno::INVAL), no_probe));
        assert!(!needs_legacy_syntax(&err(FsStep::Set("lowerdir+".into()), Errno::NOENT), no_probe));
        assert!(!needs_legacy_syntax(&err(FsStep::Create, Errno::PERM), no_probe));
        assert!(needs_legacy_syntax(&err(FsStep::Create, Errno::INVAL), || Probe::Refused));
        assert!(!needs_legacy_syntax(&err(FsStep::Create, Errno::INVAL), || Probe::Works));
        assert!(!needs_legacy_syntax(&err(FsStep::Create, Errno::INVAL), || Probe::Inconclusive));
    }

    #[test]
    fn attributes_already_set_are_not_set_again() {
        use MountAttrFlags as A;
        use StatVfsMountFlags as F;
        let want = A::MOUNT_ATTR_NOSUID | A::MOUNT_ATTR_NODEV | A::MOUNT_ATTR_RDONLY;
        assert!(attrs_missing(F::NOSUID | F::NODEV | F::RDONLY, want).is_empty());
        assert_eq!(attrs_missing(F::NODEV | F::RDONLY, want), A::MOUNT_ATTR_NOSUID);
        assert_eq!(attrs_missing(F::empty(), A::MOUNT_ATTR_NOEXEC), A::MOUNT_ATTR_NOEXEC);
    }
}
