//! The mount sequence, phase by phase: validate → open and check every input (pinned fds) →
//! EROFS mounts and overlays, detached → record → hand-over (attach at the target or send).
//!
//! Every resource is an RAII value (image fds, loop devices with AUTOCLEAR, detached mount fds,
//! the user namespace fd, temporary files), so an error at any step releases everything made so
//! far: a detached mount disappears when its last fd closes, a loop device detaches when its fd
//! closes and no superblock holds it. Nothing is attached anywhere until the hand-over.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::mount::MountAttrFlags;

use super::access::{Access, FdSink, Phase, Usage};
use super::erofs::{self, ErofsMount};
use super::error::MountError;
use super::handover;
use super::image::{self, Image};
use super::kernel::Kernel;
use super::overlay::{self, DataDir, Overlay, OverlayOptions, OverlaySpec};
use super::records::{liveness, own_mnt_ns, Liveness, MountRecord, RecordStore};
use super::request::{Dest, IdmapSpec, MountRequest, Settings, Verity};

/// Most layers one request may stack (overlayfs's own limit is 500 lower layers).
const MAX_LAYERS: usize = 500;
/// procfs `f_type`
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// What a successful mount produced.
#[derive(Debug)]
pub(crate) struct MountOutcome {
    pub(crate) record: MountRecord,
    pub(crate) legacy_overlay: bool,
    pub(crate) verity: bool,
    pub(crate) layers: Vec<LayerReport>,
}

/// How one image was mounted (for `-v`).
#[derive(Debug)]
pub(crate) struct LayerReport {
    pub(crate) label: PathBuf,
    pub(crate) erofs_mount_id: u64,
    /// (device, direct I/O kept, EBUSY retries) when on a loop device.
    pub(crate) loop_device: Option<(PathBuf, bool, u32)>,
}

/// The engine passes layers as `/proc/self/fd/N`: /proc must be procfs.
pub(crate) fn check_procfs() -> Result<(), MountError> {
    let st = rustix::fs::statfs("/proc/self/fd").map_err(|e| MountError::Proc { reason: e.to_string() })?;
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != PROC_SUPER_MAGIC {
        return Err(MountError::Proc { reason: "/proc is not procfs".into() });
    }
    Ok(())
}

/// Performs the whole mount. On error, everything made so far is released by drop.
pub(crate) fn mount(
    req: &MountRequest,
    access: &dyn Access,
    kernel: &dyn Kernel,
    settings: &Settings,
) -> Result<MountOutcome, MountError> {
    validate(req)?;
    access.check_request(req)?;
    check_procfs()?;
    access.enter_phase(Phase::Mount { setid: true })?;
    let store = RecordStore::open(&settings.state_dir, true)?
        .ok_or_else(|| MountError::StateDir { path: settings.state_dir.clone(), reason: "missing".into() })?;
    // Everything the request will hold, counted up front: one mount, and a loop device per image
    // wherever one is required.
    let force_loop = req.force_loop || access.requires_loop_devices();
    let usage = Usage { mounts: 1, loop_devices: if force_loop { req.sources.len() as u64 } else { 0 } };
    // Early (not binding): fail before opening and building anything.
    check_limits(access, &store, usage)?;
    let (inputs, dest) = open_inputs(req, access, kernel, &store)?;
    access.enter_phase(Phase::Mount { setid: false })?;
    // Binding: under the store's lock, the check, the mount and its record are one step for
    // every other request.
    let lock = store.lock()?;
    store.prune();
    check_limits(access, &store, usage)?;
    let stack = assemble(req, force_loop, &inputs, kernel, &store, settings)?;
    let record = new_record(req, access, kernel, &stack)?;
    // Record first (the id does not change when the mount is attached), then hand over. The
    // lock ends with the record: from here on the mount counts; the hand-over may wait on the
    // caller's socket, which must not hold up anyone else.
    store.write(&record)?;
    drop(lock);
    if let Err(e) = hand_over(req, dest, &stack.top, access, kernel) {
        store.remove(record.mount_id);
        return Err(e);
    }
    access.enter_phase(Phase::Done)?;
    // Dropping the detached EROFS fds and loop fds now is what we want: the overlay pins them.
    Ok(MountOutcome {
        layers: inputs
            .images
            .iter()
            .zip(&stack.erofs)
            .map(|(img, e)| LayerReport {
                label: img.label.clone(),
                erofs_mount_id: e.mount_id,
                loop_device: e.loopdev.as_ref().map(|l| (l.path().to_path_buf(), l.direct_io(), l.retries())),
            })
            .collect(),
        legacy_overlay: stack.top.legacy,
        verity: stack.top.verity,
        record,
    })
}

/// Validation that does not touch the system.
fn validate(req: &MountRequest) -> Result<(), MountError> {
    if req.sources.is_empty() {
        return Err(MountError::Usage("no source image".into()));
    }
    if req.basedirs.is_empty() {
        return Err(MountError::Usage("at least one basedir is needed".into()));
    }
    if req.digests.len() > req.sources.len() {
        return Err(MountError::Usage(format!("{} digests given for {} images", req.digests.len(), req.sources.len())));
    }
    if req.sources.len() > MAX_LAYERS {
        return Err(MountError::Usage("too many layers".into()));
    }
    Ok(())
}

/// The caller's live records against its limits, with `adding` on top.
fn check_limits(access: &dyn Access, store: &RecordStore, adding: Usage) -> Result<(), MountError> {
    let live: Vec<MountRecord> = store.list().into_iter().filter(|r| liveness(r) == Liveness::Live).collect();
    Ok(access.check_limits(&live, adding)?)
}

/// Where the finished overlay goes, pinned.
enum DestFd {
    Target { fd: OwnedFd, path: PathBuf },
    Socket(FdSink),
}

/// Every input of the request, opened once and pinned.
struct Inputs {
    basedirs: Vec<OwnedFd>,
    images: Vec<Image>,
    upper: Option<(OwnedFd, OwnedFd)>,
    userns: Option<OwnedFd>,
    /// The user namespace the object directories are idmapped with (privileged mode: only the
    /// caller's own ids are mapped, so data is read with the caller's rights).
    data_userns: Option<OwnedFd>,
}

fn open_inputs(
    req: &MountRequest,
    access: &dyn Access,
    kernel: &dyn Kernel,
    store: &RecordStore,
) -> Result<(Inputs, DestFd), MountError> {
    // Object directories first (before any build reads from them).
    let basedirs = req.basedirs.iter().map(|b| access.open_basedir(b)).collect::<Result<Vec<_>, _>>()?;
    // With verity requested, a TOC build records each object's fs-verity digest (the TOC only
    // has content sha256s), reading the objects from the first basedir with the builder's ids
    // (the caller's, in privileged mode; landlock limits it to that directory). A basedir
    // swapped in between only changes which of the caller's own files get digested; overlay
    // then checks the pinned one against those digests.
    let objects = (req.verity != Verity::Off).then(|| req.basedirs[0].as_path());
    let mut images = Vec::with_capacity(req.sources.len());
    for s in &req.sources {
        images.push(image::open(s, req.kind, access, store.path(), objects)?);
    }
    for img in &images {
        access.check_image(img.file.as_fd())?;
    }
    for (img, want) in images.iter().zip(&req.digests) {
        access
            .check_digest(img.file.as_fd(), want)
            .map_err(|e| MountError::Digest { path: img.label.clone(), cause: e })?;
    }
    let upper = match &req.upper {
        Some((u, w)) => Some(access.open_upper(u, w)?),
        None => None,
    };
    let dest = match &req.dest {
        Dest::Target(t) => DestFd::Target { fd: access.open_target(t)?, path: t.clone() },
        Dest::Socket(p) => DestFd::Socket(access.connect_socket(p)?),
        Dest::InheritedFd { n, fd } => DestFd::Socket(
            access.use_socket(fd.try_clone().map_err(|e| MountError::Usage(format!("--fd-out {n}: {e}")))?)?,
        ),
    };
    let userns = match &req.idmap {
        None => None,
        Some(IdmapSpec::Path(p)) => Some(access.open_userns(p)?),
        Some(IdmapSpec::Maps { uid, gid }) => {
            access.check_id_maps(uid, gid)?;
            Some(kernel.create_userns(uid, gid)?)
        }
    };
    let data_userns = match access.data_idmap() {
        Some((uid, gid)) => Some(kernel.create_userns(&uid, &gid)?),
        None => None,
    };
    Ok((Inputs { basedirs, images, upper, userns, data_userns }, dest))
}

/// The detached mounts: one EROFS mount per image, the overlay(s) on top.
struct Stack {
    erofs: Vec<ErofsMount>,
    /// Per-layer composefs overlays under a stacking overlay (several images only).
    _layers: Vec<Overlay>,
    top: Overlay,
}

/// `ro` plus `nosuid,nodev` unless root asked otherwise: the EROFS mounts' attributes.
fn erofs_attrs(req: &MountRequest) -> MountAttrFlags {
    let mut a = MountAttrFlags::MOUNT_ATTR_RDONLY;
    if !req.allow_suid {
        a |= MountAttrFlags::MOUNT_ATTR_NOSUID;
    }
    if !req.allow_dev {
        a |= MountAttrFlags::MOUNT_ATTR_NODEV;
    }
    a
}

fn assemble(
    req: &MountRequest,
    force_loop: bool,
    inputs: &Inputs,
    kernel: &dyn Kernel,
    store: &RecordStore,
    settings: &Settings,
) -> Result<Stack, MountError> {
    let attrs = erofs_attrs(req);
    let userns = inputs.userns.as_ref().map(|f| f.as_fd());
    let mut erofs = Vec::with_capacity(inputs.images.len());
    for img in &inputs.images {
        erofs.push(erofs::mount(kernel, img, force_loop, attrs, userns)?);
    }
    let mut top_attrs = attrs;
    if req.writable() {
        top_attrs -= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    if req.noexec {
        top_attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC;
    }
    let clones = idmapped_clones(inputs, kernel)?;
    let datadirs: Vec<DataDir<'_>> = match &clones {
        Some(c) => c.iter().map(|f| DataDir::Mount(f.as_fd())).collect(),
        None => inputs.basedirs.iter().map(|f| DataDir::Dir(f.as_fd())).collect(),
    };
    let upper = inputs.upper.as_ref().map(|(u, w)| (u.as_fd(), w.as_fd()));
    let upper_paths = req.upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path()));
    let spec = |lowers, datadirs, composefs, with_upper: bool, attrs| OverlaySpec {
        lowers,
        datadirs,
        upper_paths: if with_upper { upper_paths } else { None },
        options: OverlayOptions {
            composefs,
            verity: if composefs { req.verity } else { Verity::Off },
            upper: if with_upper { upper } else { None },
        },
        attrs,
        force_legacy: settings.force_legacy_overlay,
        scratch: store.path(),
    };
    // One image: the composefs overlay is the result. Several: each layer gets its own
    // composefs overlay (its escaped whiteouts/opaque xattrs become real for the overlay above),
    // and a stacking overlay merges them, uppermost first, with the upper dir if any.
    if let [only] = &erofs[..] {
        let top = overlay::assemble(kernel, &spec(vec![only.mnt.as_fd()], datadirs, true, true, top_attrs))?;
        return Ok(Stack { erofs, _layers: Vec::new(), top });
    }
    let mut layers = Vec::with_capacity(erofs.len());
    for e in &erofs {
        layers.push(overlay::assemble(kernel, &spec(vec![e.mnt.as_fd()], datadirs.clone(), true, false, attrs))?);
    }
    let lowers = layers.iter().rev().map(|o| o.mnt.as_fd()).collect();
    let mut top = overlay::assemble(kernel, &spec(lowers, Vec::new(), false, true, top_attrs))?;
    top.verity = layers.iter().all(|o| o.verity);
    top.legacy |= layers.iter().any(|o| o.legacy);
    Ok(Stack { erofs, _layers: layers, top })
}

/// Privileged mode: a detached clone of each object directory, idmapped with the data user
/// namespace, in which only the caller's own ids are mapped. Files of any other owner (root's
/// 0600 files renamed into the caller's directory, for instance) then have no mapping: no
/// capability of the overlay's mounter applies to them, only their "other" permission bits, so
/// overlay reads data with the caller's rights, for as long as the mount exists.
fn idmapped_clones(inputs: &Inputs, kernel: &dyn Kernel) -> Result<Option<Vec<OwnedFd>>, MountError> {
    let Some(ns) = &inputs.data_userns else { return Ok(None) };
    let mut out = Vec::with_capacity(inputs.basedirs.len());
    for b in &inputs.basedirs {
        let err = |step, errno| MountError::DataDir { step, errno };
        let clone = kernel.clone_tree(b.as_fd()).map_err(|e| err("open_tree(OPEN_TREE_CLONE)", e))?;
        kernel
            .mount_setattr(clone.as_fd(), MountAttrFlags::MOUNT_ATTR_IDMAP, MountAttrFlags::empty(), Some(ns.as_fd()))
            .map_err(|e| err("mount_setattr(MOUNT_ATTR_IDMAP)", e))?;
        out.push(clone);
    }
    Ok(Some(out))
}

fn new_record(
    req: &MountRequest,
    access: &dyn Access,
    kernel: &dyn Kernel,
    stack: &Stack,
) -> Result<MountRecord, MountError> {
    let id = kernel
        .mount_id(stack.top.mnt.as_fd())
        .map_err(|e| MountError::Record { reason: format!("statx of the overlay: {e}") })?;
    let loops: Vec<_> = stack.erofs.iter().filter_map(|e| e.loopdev.as_ref()).collect();
    Ok(MountRecord {
        mount_id: id.id,
        mount_id_unique: id.unique,
        target: match &req.dest {
            Dest::Target(t) => Some(std::path::absolute(t).unwrap_or_else(|_| t.clone())),
            _ => None,
        },
        uid: access.caller_uid(),
        loop_devices: loops.iter().map(|l| l.path().to_path_buf()).collect(),
        loop_diskseq: loops.iter().map(|l| l.diskseq()).collect::<Option<Vec<u64>>>().unwrap_or_default(),
        erofs_mount_ids: stack.erofs.iter().map(|e| e.mount_id).collect(),
        sources: req.sources.clone(),
        mnt_ns: own_mnt_ns(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    })
}

fn hand_over(
    req: &MountRequest,
    dest: DestFd,
    top: &Overlay,
    access: &dyn Access,
    kernel: &dyn Kernel,
) -> Result<(), MountError> {
    let want = access.required_attrs(req.writable());
    match dest {
        DestFd::Target { fd, path } => handover::attach_at_target(kernel, top.mnt.as_fd(), fd.as_fd(), &path, want),
        DestFd::Socket(sink) => handover::send(kernel, top.mnt.as_fd(), sink, want),
    }
}
