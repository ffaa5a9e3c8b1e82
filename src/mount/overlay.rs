//! overlayfs assembly: EROFS metadata lowers + data-only object lowers, as a detached mount.
//!
//! `fsopen("overlay")`, `lowerdir+` for each (detached) EROFS mount, `datadir+` for each object
//! directory, `metacopy=on`, `redirect_dir=on`, optional `verity=require`, optional upper/work
//! dirs, then `fsmount`. Layers are passed as `/proc/self/fd/N` of fds we hold, so no path is
//! resolved twice. Kernels that need the legacy `lowerdir=` string get it (see `super::compat`).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::mount::MountAttrFlags;

use super::compat::{detached_layers_work, needs_legacy_syntax};
use super::error::MountError;
use super::fs_context::{FsContext, FsError};
use super::kernel::{fd_path, Kernel, LegacyOverlay};
use super::request::Verity;

/// The options of an overlay besides its layers.
#[derive(Clone, Copy)]
pub(crate) struct OverlayOptions<'a> {
    /// A composefs layer (metacopy=on, redirect_dir=on, verity). When false, this is the
    /// stacking overlay over several composefs layers: it merges them (whiteouts, opaque
    /// directories) but never follows metacopy/redirect xattrs (metacopy=off, redirect_dir=nofollow).
    pub(crate) composefs: bool,
    pub(crate) verity: Verity,
    /// (upperdir, workdir)
    pub(crate) upper: Option<(BorrowedFd<'a>, BorrowedFd<'a>)>,
}

/// A data-only layer: an object directory as opened, or a detached mount of it (a clone, e.g.
/// idmapped so that data is read with the caller's rights).
#[derive(Clone, Copy)]
pub(crate) enum DataDir<'a> {
    Dir(BorrowedFd<'a>),
    Mount(BorrowedFd<'a>),
}

impl<'a> DataDir<'a> {
    pub(crate) fn fd(&self) -> BorrowedFd<'a> {
        match self {
            DataDir::Dir(f) | DataDir::Mount(f) => *f,
        }
    }
}

/// Everything an overlay needs; all paths are pinned as fds.
pub(crate) struct OverlaySpec<'a> {
    /// Metadata lowers, uppermost first (each a detached mount fd).
    pub(crate) lowers: Vec<BorrowedFd<'a>>,
    /// Data-only lowers (object directories), in lookup order.
    pub(crate) datadirs: Vec<DataDir<'a>>,
    /// The upper and work dirs as the request named them (the legacy path re-opens them in its
    /// private mount namespace and checks they are the pinned ones).
    pub(crate) upper_paths: Option<(&'a Path, &'a Path)>,
    pub(crate) options: OverlayOptions<'a>,
    /// Mount attributes of the detached mount (RDONLY, NOSUID, NODEV...).
    pub(crate) attrs: MountAttrFlags,
    /// Use the legacy `lowerdir=` string even if `lowerdir+` works (tests of the fallback).
    pub(crate) force_legacy: bool,
    /// A directory that exists; the legacy path mounts its temporary tmpfs over it, inside its
    /// private mount namespace.
    pub(crate) scratch: &'a Path,
}

/// The assembled overlay: a detached mount, plus how it was built.
pub(crate) struct Overlay {
    pub(crate) mnt: OwnedFd,
    pub(crate) legacy: bool,
    pub(crate) verity: bool,
}

/// Sets the options other than the layers, in the order the kernel documents them; returns
/// whether `verity=require` is on (with [`Verity::Try`], only if the kernel accepted it).
pub(crate) fn set_options(fs: &FsContext<'_>, o: &OverlayOptions<'_>) -> Result<bool, FsError> {
    fs.set("source", "composefs")?;
    if o.composefs {
        fs.set("metacopy", "on")?;
        fs.set("redirect_dir", "on")?;
    } else {
        fs.set("metacopy", "off")?;
        fs.set("redirect_dir", "nofollow")?;
    }
    let verity = match if o.composefs { o.verity } else { Verity::Off } {
        Verity::Off => false,
        Verity::Require => {
            fs.set("verity", "require")?;
            true
        }
        Verity::Try => fs.set("verity", "require").is_ok(),
    };
    Ok(verity)
}

/// Sets upperdir/workdir, if any (after the layers).
pub(crate) fn set_upper(fs: &FsContext<'_>, o: &OverlayOptions<'_>) -> Result<(), FsError> {
    if let Some((up, work)) = o.upper {
        fs.set("upperdir", &fd_path(up))?;
        fs.set("workdir", &fd_path(work))?;
    }
    Ok(())
}

/// Builds the overlay as a detached mount, falling back to the legacy syntax only on the kernel
/// conditions of `super::compat`.
pub(crate) fn assemble(kernel: &dyn Kernel, spec: &OverlaySpec<'_>) -> Result<Overlay, MountError> {
    if spec.lowers.is_empty() {
        return Err(MountError::Usage("overlay: no metadata layer given".into()));
    }
    if !spec.force_legacy {
        match build(kernel, spec) {
            Ok(o) => return Ok(o),
            Err(e) if needs_legacy_syntax(&e, || detached_layers_work(kernel)) => {}
            Err(e) => return Err(MountError::Overlay(e)),
        }
    }
    kernel.legacy_overlay(&LegacyOverlay {
        lowers: spec.lowers.clone(),
        datadirs: spec.datadirs.clone(),
        upper_paths: spec.upper_paths,
        options: spec.options,
        attrs: spec.attrs,
        scratch: spec.scratch,
    })
}

fn build(kernel: &dyn Kernel, spec: &OverlaySpec<'_>) -> Result<Overlay, FsError> {
    let fs = FsContext::open(kernel, "overlay")?;
    let verity = set_options(&fs, &spec.options)?;
    for l in &spec.lowers {
        fs.set("lowerdir+", &fd_path(*l))?;
    }
    for d in &spec.datadirs {
        fs.set("datadir+", &fd_path(d.fd()))?;
    }
    set_upper(&fs, &spec.options)?;
    fs.create()?;
    Ok(Overlay { mnt: fs.mount(spec.attrs)?, legacy: false, verity })
}
