//! Kernel-compatibility fallbacks, in one place, each taken only on the kernel condition that
//! needs it:
//!
//! - **overlay layers as detached mounts**: `lowerdir+`/`datadir+` exist since Linux 6.7, and
//!   only since 6.15 may a layer be a detached mount (before, `clone_private_mount` refuses a
//!   mount outside the caller's namespace: EINVAL at creation, logged only to dmesg as "failed
//!   to clone lowerpath"). The legacy `lowerdir=L1:L2::D1::D2` string, with the layers attached
//!   for the moment of creation in a private mount namespace that dies with the child that made
//!   it, is used when the kernel refuses the `lowerdir+` key, or when a
//!   creation fails with EINVAL AND a probe shows that this kernel cannot create even a minimal
//!   overlay over detached mounts ([`detached_layers_work`]). Any other EINVAL is the request's
//!   own error and is reported.
//! - **file-backed EROFS** (6.12+): `ENOTBLK` asks for a block device: a loop device then.
//! - **kernels without `mount_setattr`** (5.2–5.11): attributes `fsmount` already set are not
//!   set again ([`attrs_missing`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use super::error::MountError;
use super::fs_context::{FsContext, FsError, FsStep};
use super::kernel::{fd_path, Kernel, LegacyOverlay};
use super::overlay::{set_options, set_upper, DataDir, Overlay, OverlayOptions};

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

/// The legacy overlay, built by a child in a private mount namespace that dies with it
/// (`crate::sys::mount::in_private_mount_ns`), so no temporary mount is ever visible in, or left
/// behind in, the caller's or anyone's namespace. Before 6.15 a layer must be a mount in the
/// creating process's namespace, so the child attaches every layer there for the moment of
/// creation: it mounts a tmpfs over `scratch` (inside its namespace), attaches the metadata
/// layers and the data directories (plain ones are cloned with `open_tree` first, still in the
/// original namespace) at fresh directories in it, re-opens the upper and work dirs by path in
/// its namespace (checked to be the pinned inodes), creates the overlay with the `lowerdir=`
/// string, and passes the detached overlay mount back. The overlay keeps private clones of its
/// layers; everything else vanishes with the child's namespace.
pub(crate) fn legacy_overlay_in_private_ns(
    kernel: &dyn Kernel,
    spec: &LegacyOverlay<'_>,
) -> Result<Overlay, MountError> {
    let prepare = || -> Result<Vec<OwnedFd>, String> {
        let plain = spec.datadirs.iter().filter_map(|d| match d {
            DataDir::Dir(fd) => Some(*fd),
            DataDir::Mount(_) => None,
        });
        plain.map(|fd| kernel.clone_tree(fd).map_err(|e| format!("cloning a data directory: {e}"))).collect()
    };
    let build = |clones: Vec<OwnedFd>| -> Result<(OwnedFd, u8), String> {
        let root = scratch_tmpfs(kernel, spec.scratch)?;
        let mut clones = clones.iter();
        let attach = |name: String, mnt: BorrowedFd<'_>| -> Result<String, String> {
            rustix::fs::mkdirat(&root, name.as_str(), Mode::from_raw_mode(0o700))
                .map_err(|e| format!("mkdir {name}: {e}"))?;
            let dir = rustix::fs::openat(
                &root,
                name.as_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("open {name}: {e}"))?;
            kernel.move_mount(mnt, dir.as_fd()).map_err(|e| format!("attaching a layer at {name}: {e}"))?;
            Ok(format!("{}/{name}", spec.scratch.display()))
        };
        let mut lowers = Vec::new();
        for (i, l) in spec.lowers.iter().enumerate() {
            lowers.push(attach(format!("l{i}"), *l)?);
        }
        let mut datas = Vec::new();
        for (i, d) in spec.datadirs.iter().enumerate() {
            let fd = match d {
                DataDir::Mount(fd) => *fd,
                DataDir::Dir(_) => clones.next().ok_or("a data directory clone is missing")?.as_fd(),
            };
            datas.push(attach(format!("d{i}"), fd)?);
        }
        let upper = match (spec.upper_paths, spec.options.upper) {
            (Some((u, w)), Some((uf, wf))) => Some((reopen_same(u, uf)?, reopen_same(w, wf)?)),
            (None, Some(_)) => return Err("the legacy syntax needs the upper and work directories by path".into()),
            (_, None) => None,
        };
        let options = OverlayOptions { upper: upper.as_ref().map(|(u, w)| (u.as_fd(), w.as_fd())), ..spec.options };
        let build = || -> Result<(OwnedFd, u8), FsError> {
            let fs = FsContext::open(kernel, "overlay")?;
            let verity = set_options(&fs, &options)?;
            fs.set("lowerdir", &legacy_lowerdir(&lowers, &datas))?;
            set_upper(&fs, &options)?;
            fs.create()?;
            Ok((fs.mount(spec.attrs)?, u8::from(verity)))
        };
        build().map_err(|e| format!("overlay: {e}"))
    };
    crate::sys::mount::in_private_mount_ns(prepare, build)
        .map(|(mnt, verity)| Overlay { mnt, legacy: true, verity: verity != 0 })
        .map_err(|reason| MountError::LegacyOverlay { reason })
}

/// Mounts a fresh tmpfs over `scratch` (in the private namespace: nobody else sees it) and
/// returns its root.
fn scratch_tmpfs(kernel: &dyn Kernel, scratch: &Path) -> Result<OwnedFd, String> {
    let tmp = (|| -> Result<OwnedFd, FsError> {
        let fs = FsContext::open(kernel, "tmpfs")?;
        fs.set("mode", "0700")?;
        fs.create()?;
        fs.mount(MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV)
    })()
    .map_err(|e| format!("tmpfs for the temporary layer mounts: {e}"))?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let at = rustix::fs::open(scratch, flags, Mode::empty()).map_err(|e| format!("{}: {e}", scratch.display()))?;
    kernel.move_mount(tmp.as_fd(), at.as_fd()).map_err(|e| format!("mounting the tmpfs: {e}"))?;
    rustix::fs::open(scratch, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("{}: {e}", scratch.display()))
}

/// Opens `path` (a directory) again, in this (private) mount namespace, and checks it is the
/// inode `pinned` was opened on.
fn reopen_same(path: &Path, pinned: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| format!("{}: {e}", path.display()))?;
    let (a, b) = (rustix::fs::fstat(&fd), rustix::fs::fstat(pinned));
    match (a, b) {
        (Ok(a), Ok(b)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino => Ok(fd),
        _ => Err(format!("{}: not the directory that was checked", path.display())),
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
