//! EROFS, per image: `fsopen("erofs")`, `source=/proc/self/fd/N` of the image fd (file-backed,
//! Linux 6.12+) or a loop device, `ro` (+ `noacl`), `fsmount`: a detached mount, optionally
//! idmapped.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::mount::MountAttrFlags;

use super::compat::wants_block_device;
use super::error::{IdmapError, MountError};
use super::fs_context::{FsContext, FsError};
use super::image::Image;
use super::kernel::Kernel;
use super::loopdev::LoopDevice;

/// A detached EROFS mount (and the loop device under it, if any).
pub(crate) struct ErofsMount {
    pub(crate) mnt: OwnedFd,
    pub(crate) loopdev: Option<LoopDevice>,
    pub(crate) mount_id: u64,
}

/// fsopen("erofs") + source + ro (+ noacl) + create + fsmount, detached.
fn fsmount(kernel: &dyn Kernel, source: &str, has_acl: bool, attrs: MountAttrFlags) -> Result<OwnedFd, FsError> {
    let fs = FsContext::open(kernel, "erofs")?;
    fs.set("source", source)?;
    fs.set_flag("ro")?;
    if !has_acl {
        // Optional: kernels built without EROFS ACL support do not know the option.
        let _ = fs.set_flag("noacl");
    }
    fs.create()?;
    fs.mount(attrs)
}

/// Mounts `img` detached: file-backed unless `force_loop` or the kernel wants a block device,
/// then on a loop device; idmapped with `userns` if given.
pub(crate) fn mount(
    kernel: &dyn Kernel,
    img: &Image,
    force_loop: bool,
    attrs: MountAttrFlags,
    userns: Option<BorrowedFd<'_>>,
) -> Result<ErofsMount, MountError> {
    let failed = |cause: FsError| MountError::Erofs { path: img.label.clone(), cause };
    let mut mnt = None;
    if !force_loop {
        // File-backed EROFS: the kernel opens our fd's file through the magic link.
        let src = format!("/proc/self/fd/{}", img.file.as_raw_fd());
        match fsmount(kernel, &src, img.has_acl, attrs) {
            Ok(m) => mnt = Some(m),
            Err(e) if wants_block_device(&e) => {}
            Err(e) => return Err(failed(e)),
        }
    }
    let (mnt, loopdev) = match mnt {
        Some(m) => (m, None),
        None => {
            let lo = kernel
                .attach_loop(img.file.as_fd(), &img.label)
                .map_err(|e| MountError::Loop { path: img.label.clone(), cause: e })?;
            let src = lo.path().to_str().unwrap_or_default().to_string();
            (fsmount(kernel, &src, img.has_acl, attrs).map_err(failed)?, Some(lo))
        }
    };
    if let Some(ns) = userns {
        kernel
            .mount_setattr(mnt.as_fd(), MountAttrFlags::MOUNT_ATTR_IDMAP, MountAttrFlags::empty(), Some(ns))
            .map_err(|errno| IdmapError::SetAttr { errno })?;
    }
    let id = kernel.mount_id(mnt.as_fd()).map_err(|errno| MountError::Source {
        path: img.label.clone(),
        what: "statx of the EROFS mount",
        errno,
    })?;
    Ok(ErofsMount { mnt, loopdev, mount_id: id.id })
}
