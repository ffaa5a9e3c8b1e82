//! Mounting: EROFS (file-backed or on a loop device) with the new mount API, idmapped mounts, the
//! overlay on top, mount records, `cfsmount umount`, and the `mount.composefs` helper form.
//!
//! Every resource is an RAII value (image fds, loop devices with AUTOCLEAR, detached mount fds,
//! the userns helper child, temporary files), so an error at any step releases everything made so
//! far: a detached mount disappears when its last fd closes, a loop device detaches when its fd
//! closes and no superblock holds it. Nothing is attached anywhere until the final `move_mount`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

pub mod loopdev;
pub mod overlay;

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags,
};

use self::loopdev::LoopDevice;
use self::overlay::{OverlaySpec, Verity};

/// composefs header magic at offset 0 of the image.
const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
/// EROFS superblock magic at offset 1024.
const EROFS_MAGIC: u32 = 0xe0f5_e1e2;
/// composefs header flag: the image carries POSIX ACLs.
const COMPOSEFS_FLAG_HAS_ACL: u32 = 1;
/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a mount id never reused during the boot.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
/// `STATX_ATTR_MOUNT_ROOT`
const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;
/// overlayfs `f_type`
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
/// procfs `f_type`
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
/// Default directory of mount records.
pub const DEFAULT_STATE_DIR: &str = "/run/cfsmount";

// ---------------------------------------------------------------------------------------------
// Request model (shared by the CLI and the mount.composefs form)
// ---------------------------------------------------------------------------------------------

/// How the image bytes are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Image,
    Toc,
    Estargz,
    Dump,
}

/// One id-map line: INSIDE OUTSIDE COUNT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

impl std::str::FromStr for IdMap {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        let bad = || MountError::BadIdMap(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let n = |p: &str| -> Result<u32, MountError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u32>().map_err(|_| bad())
        };
        let m = IdMap { inside: n(parts[0])?, outside: n(parts[1])?, count: n(parts[2])? };
        if m.count == 0 || m.inside.checked_add(m.count - 1).is_none() || m.outside.checked_add(m.count - 1).is_none() {
            return Err(bad());
        }
        Ok(m)
    }
}

/// Where the user namespace for an idmapped mount comes from.
#[derive(Debug, Clone)]
pub enum IdmapSpec {
    Path(PathBuf),
    Maps { uid: Vec<IdMap>, gid: Vec<IdMap> },
}

/// Where the finished overlay goes.
#[derive(Debug)]
pub enum Dest {
    Target(PathBuf),
    /// Socket path to connect to.
    Socket(PathBuf),
    /// Inherited, connected socket fd.
    SocketFd(OwnedFd),
}

#[derive(Debug)]
pub struct MountRequest {
    /// Images, lowest layer first.
    pub sources: Vec<PathBuf>,
    pub kind: SourceKind,
    /// Expected fs-verity digests, by position in `sources`.
    pub digests: Vec<[u8; 32]>,
    pub basedirs: Vec<PathBuf>,
    pub verity: Verity,
    pub idmap: Option<IdmapSpec>,
    pub upper: Option<(PathBuf, PathBuf)>,
    pub readonly: bool,
    pub force_loop: bool,
    pub allow_suid: bool,
    pub allow_dev: bool,
    /// MOUNT_ATTR_NOEXEC on the final mount.
    pub noexec: bool,
    pub dest: Dest,
    pub verbose: bool,
}

/// What a successful mount produced.
#[derive(Debug)]
pub struct MountOutcome {
    pub record: MountRecord,
    pub legacy_overlay: bool,
    pub verity: bool,
}

use crate::privileged::own_mnt_ns;
/// One JSON file per mount in the state dir (the format lives with the helper's checks).
pub use crate::privileged::MountRecord;

// ---------------------------------------------------------------------------------------------
// Privilege (privileged-helper mode is decided by crate::privileged)
// ---------------------------------------------------------------------------------------------

/// True when running setuid / with file capabilities for someone else.
fn privileged() -> bool {
    crate::privileged::privileged()
}

/// The real uid of whoever ran us (in privileged mode, the recorded caller).
fn caller_uid() -> u32 {
    crate::privileged::caller().uid
}

/// The state directory; `CFSMOUNT_STATE_DIR` is honoured only when not privileged.
pub fn state_dir() -> PathBuf {
    if !privileged() {
        if let Some(d) = std::env::var_os("CFSMOUNT_STATE_DIR") {
            if !d.is_empty() {
                return PathBuf::from(d);
            }
        }
    }
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// Opens (creating if needed) the state dir, and checks it is ours and private.
fn open_state_dir(create: bool) -> Result<(PathBuf, OwnedFd), MountError> {
    let dir = state_dir();
    let err = |errno: Errno| MountError::StateDir { path: dir.clone(), reason: errno.to_string() };
    if create {
        match rustix::fs::mkdir(&dir, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(err(e)),
        }
    }
    let fd =
        rustix::fs::open(&dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(err)?;
    let st = rustix::fs::fstat(&fd).map_err(err)?;
    let euid = rustix::process::geteuid().as_raw();
    if st.st_uid != euid || st.st_mode & 0o022 != 0 {
        return Err(MountError::StateDir {
            path: dir,
            reason: format!(
                "must be owned by uid {euid} and not group/world-writable (owner {}, mode {:o})",
                st.st_uid,
                st.st_mode & 0o7777
            ),
        });
    }
    Ok((dir, fd))
}

fn record_name(mount_id: u64) -> String {
    format!("{mount_id}.json")
}

fn write_record(dirfd: BorrowedFd<'_>, rec: &MountRecord) -> Result<(), MountError> {
    let name = record_name(rec.mount_id);
    let tmp = format!(".{}.tmp", name);
    let data = serde_json::to_vec_pretty(rec).map_err(|e| MountError::Record { reason: e.to_string() })?;
    let io = |e: Errno| MountError::Record { reason: format!("{name}: {e}") };
    let fd = rustix::fs::openat(
        dirfd,
        &tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io)?;
    let mut off = 0;
    while off < data.len() {
        match rustix::io::write(&fd, &data[off..]) {
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(e) => {
                let _ = rustix::fs::unlinkat(dirfd, &tmp, AtFlags::empty());
                return Err(io(e));
            }
        }
    }
    drop(fd);
    rustix::fs::renameat(dirfd, &tmp, dirfd, &name).map_err(|e| {
        let _ = rustix::fs::unlinkat(dirfd, &tmp, AtFlags::empty());
        io(e)
    })
}

fn read_record(dirfd: BorrowedFd<'_>, mount_id: u64) -> Result<Option<MountRecord>, MountError> {
    let name = record_name(mount_id);
    let fd = match rustix::fs::openat(dirfd, &name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
    {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(MountError::Record { reason: format!("{name}: {e}") }),
    };
    let mut s = Vec::new();
    File::from(fd)
        .take(1 << 20)
        .read_to_end(&mut s)
        .map_err(|e| MountError::Record { reason: format!("{name}: {e}") })?;
    let rec: MountRecord =
        serde_json::from_slice(&s).map_err(|e| MountError::Record { reason: format!("{name}: {e}") })?;
    if rec.mount_id != mount_id {
        return Err(MountError::Record { reason: format!("{name}: names mount {}", rec.mount_id) });
    }
    Ok(Some(rec))
}

/// Removes records of mounts that are gone (unmounted behind our back, e.g. with plain `umount`,
/// or an `--fd-out` mount whose receiver dropped it): those that
/// [`crate::privileged::liveness`] finds dead. Records it cannot judge are kept.
fn prune_stale_records(dirfd: BorrowedFd<'_>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/self/fd/{}", dirfd.as_raw_fd())) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")).and_then(|i| i.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(Some(rec)) = read_record(dirfd, id) else {
            continue;
        };
        if crate::privileged::liveness(&rec) == crate::privileged::Liveness::Dead {
            let _ = rustix::fs::unlinkat(dirfd, record_name(id), AtFlags::empty());
        }
    }
}

/// Reads all records (for listing and tests).
pub fn list_records() -> Result<Vec<MountRecord>, MountError> {
    let (_, dirfd) = match open_state_dir(false) {
        Ok(x) => x,
        Err(MountError::StateDir { reason, .. }) if reason == Errno::NOENT.to_string() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/self/fd/{}", dirfd.as_raw_fd()))
        .map_err(|e| MountError::Record { reason: e.to_string() })?;
    for e in dir.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if let Some(id) = n.strip_suffix(".json").and_then(|i| i.parse::<u64>().ok()) {
            if let Some(r) = read_record(dirfd.as_fd(), id)? {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// The mount id of `fd` (unique id when available).
pub fn mount_id(fd: BorrowedFd<'_>) -> Result<(u64, bool, u64), Errno> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE))?;
    if st.stx_mask & STATX_MNT_ID_UNIQUE != 0 {
        return Ok((st.stx_mnt_id, true, (st.stx_attributes & st.stx_attributes_mask).bits()));
    }
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(Errno::NOSYS);
    }
    Ok((st.stx_mnt_id, false, (st.stx_attributes & st.stx_attributes_mask).bits()))
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// An opened image: the one fd that is measured, attached and mounted.
struct Image {
    file: File,
    label: PathBuf,
    has_acl: bool,
}

fn open_image(path: &Path, kind: SourceKind, state_dir: &Path, objects: Option<&Path>) -> Result<Image, MountError> {
    let file = match kind {
        SourceKind::Image => open_source_file(path)?,
        _ => build_image(path, kind, state_dir, objects)?,
    };
    let st = rustix::fs::fstat(&file).map_err(|e| MountError::Source { path: path.into(), reason: e.to_string() })?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(MountError::Source { path: path.into(), reason: "not a regular file".into() });
    }
    let mut hdr = [0u8; 1028];
    let n = rustix::io::pread(&file, &mut hdr, 0)
        .map_err(|e| MountError::Source { path: path.into(), reason: e.to_string() })?;
    if n < hdr.len() {
        return Err(MountError::NotComposefs { path: path.into(), reason: "shorter than an EROFS superblock".into() });
    }
    let le = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    if le(0) != COMPOSEFS_MAGIC {
        return Err(MountError::NotComposefs {
            path: path.into(),
            reason: format!("composefs header magic {:#x}", le(0)),
        });
    }
    if le(1024) != EROFS_MAGIC {
        return Err(MountError::NotComposefs {
            path: path.into(),
            reason: format!("EROFS superblock magic {:#x}", le(1024)),
        });
    }
    let has_acl = le(8) & COMPOSEFS_FLAG_HAS_ACL != 0;
    Ok(Image { file, label: path.to_path_buf(), has_acl })
}

/// Builds an image from a TOC or dumpfile with the sandboxed builder (`crate::build`), into a
/// file in the private state directory that is unlinked as soon as it is open: the returned fd
/// is the only reference (and the one that gets mounted).
fn build_image(path: &Path, kind: SourceKind, state_dir: &Path, objects: Option<&Path>) -> Result<File, MountError> {
    use crate::build::{BuildOptions, BuildRequest, InputFormat, Output, Source};
    let format = match kind {
        SourceKind::Toc => InputFormat::Toc,
        SourceKind::Estargz => InputFormat::Estargz,
        SourceKind::Dump => InputFormat::Dump,
        SourceKind::Image => unreachable!("images are not built"),
    };
    let err = |reason: String| MountError::Build { path: path.into(), reason };
    // The input is opened as the caller (pinned) and handed to the builder as an fd.
    let src = authz(crate::privileged::open_source(path))?;
    let mut req = BuildRequest::new(format);
    req.objects = objects.map(Path::to_path_buf);
    let out = state_dir.join(format!(
        ".build-{}-{}.img",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    // Privileged mode: the sandboxed builder runs as the caller (it reads --objects with the caller's rights).
    let mut bopts = BuildOptions::default();
    bopts.sandbox.run_as =
        crate::privileged::privileged().then(|| (crate::privileged::caller().uid, crate::privileged::caller().gid));
    let res = crate::build::build_image(&req, Source::Fd(src.fd), &Output::Path(out.clone()), &bopts);
    let _ = std::fs::remove_file(&out);
    match res {
        Ok((_, Some(f))) => Ok(f),
        Ok((_, None)) => Err(err("the builder returned no image".into())),
        Err(e) => Err(err(format!("{e:#}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// EROFS
// ---------------------------------------------------------------------------------------------

/// A detached EROFS mount (and the loop device under it, if any).
pub struct ErofsMount {
    pub mnt: OwnedFd,
    pub loopdev: Option<LoopDevice>,
    pub mount_id: u64,
}

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

/// fsopen("erofs") + source + ro (+ noacl) + create + fsmount, detached.
fn erofs_fsmount(source: &str, has_acl: bool, attrs: MountAttrFlags) -> Result<OwnedFd, (Errno, String)> {
    let fs = fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
        let why = match e {
            Errno::NOSYS => " (this kernel lacks the new mount API: fsopen needs Linux 5.2+)",
            Errno::NODEV => " (this kernel has no EROFS: CONFIG_EROFS_FS / modprobe erofs)",
            _ => "",
        };
        (e, format!("fsopen(erofs){why}"))
    })?;
    let ctx = |what: &str, e: Errno| {
        let log = overlay::fs_log(fs.as_fd());
        (e, if log.is_empty() { what.to_string() } else { format!("{what} (kernel: {log})") })
    };
    fsconfig_set_string(fs.as_fd(), "source", source).map_err(|e| ctx("source", e))?;
    fsconfig_set_flag(fs.as_fd(), "ro").map_err(|e| ctx("ro", e))?;
    if !has_acl {
        // Optional: kernels built without EROFS ACL support do not know the option.
        let _ = fsconfig_set_flag(fs.as_fd(), "noacl");
    }
    fsconfig_create(fs.as_fd()).map_err(|e| ctx("create", e))?;
    fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| ctx("fsmount", e))
}

fn mount_erofs(
    img: &Image,
    req: &MountRequest,
    state_dir: &Path,
    userns: Option<BorrowedFd<'_>>,
) -> Result<ErofsMount, MountError> {
    let attrs = erofs_attrs(req);
    let mut loopdev = None;
    let mut mnt = None;
    if !req.force_loop {
        // File-backed EROFS (Linux 6.12+): the kernel opens our fd's file through the magic link.
        let src = format!("/proc/self/fd/{}", img.file.as_raw_fd());
        match erofs_fsmount(&src, img.has_acl, attrs) {
            Ok(m) => mnt = Some(m),
            // ENOTBLK: this kernel wants a block device.
            Err((Errno::NOTBLK, _)) => {}
            Err((e, what)) => return Err(MountError::Erofs { path: img.label.clone(), step: what, errno: e }),
        }
    }
    let mnt = match mnt {
        Some(m) => m,
        None => {
            authz(crate::privileged::check_mount_limits(state_dir, true))?;
            let lo = crate::mount::loopdev::attach(img.file.as_fd(), &img.label)
                .map_err(|e| MountError::Loop { path: img.label.clone(), cause: e })?;
            let src = lo.path().to_str().unwrap_or_default().to_string();
            let m = erofs_fsmount(&src, img.has_acl, attrs).map_err(|(e, what)| MountError::Erofs {
                path: img.label.clone(),
                step: what,
                errno: e,
            })?;
            loopdev = Some(lo);
            m
        }
    };
    if let Some(ns) = userns {
        crate::sys::mount::mount_setattr_idmap(mnt.as_fd(), ns).map_err(|e| MountError::Idmap {
            reason: format!(
                "mount_setattr(MOUNT_ATTR_IDMAP): {e}{}",
                match e {
                    Errno::NOSYS => " (this kernel lacks mount_setattr: idmapped mounts need Linux 5.12+)",
                    Errno::INVAL => " (this kernel cannot idmap EROFS mounts: Linux 5.19+)",
                    _ => "",
                }
            ),
        })?;
    }
    let (mount_id, _, _) = mount_id(mnt.as_fd()).map_err(|e| MountError::Erofs {
        path: img.label.clone(),
        step: "statx".into(),
        errno: e,
    })?;
    Ok(ErofsMount { mnt, loopdev, mount_id })
}

// ---------------------------------------------------------------------------------------------
// idmap
// ---------------------------------------------------------------------------------------------

fn map_text(maps: &[IdMap]) -> String {
    maps.iter().map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count)).collect()
}

/// A helper child unshares a user namespace; we write its maps, keep an fd to it, and reap it.
pub fn create_userns(uid: &[IdMap], gid: &[IdMap]) -> Result<OwnedFd, MountError> {
    if uid.is_empty() || gid.is_empty() {
        return Err(MountError::Idmap { reason: "both --uidmap and --gidmap are needed".into() });
    }
    let child = crate::sys::mount::UsernsChild::spawn()
        .map_err(|e| MountError::Idmap { reason: format!("creating a user namespace: {e}") })?;
    let pid = child.pid();
    let write = |name: &str, text: &str| -> Result<(), MountError> {
        std::fs::write(format!("/proc/{pid}/{name}"), text.as_bytes()).map_err(|e| MountError::Idmap {
            reason: format!("writing {name} ({}): {e}", text.trim().replace('\n', ", ")),
        })
    };
    write("uid_map", &map_text(uid))?;
    write("gid_map", &map_text(gid))?;
    let fd = rustix::fs::open(format!("/proc/{pid}/ns/user"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MountError::Idmap { reason: format!("opening the new user namespace: {e}") })?;
    drop(child); // lets it exit and reaps it; the namespace lives on through `fd`
    Ok(fd)
}

// ---------------------------------------------------------------------------------------------
// The mount pipeline
// ---------------------------------------------------------------------------------------------

fn check_procfs() -> Result<(), MountError> {
    let st = rustix::fs::statfs("/proc/self/fd").map_err(|e| MountError::Proc { reason: e.to_string() })?;
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != PROC_SUPER_MAGIC {
        return Err(MountError::Proc { reason: "/proc is not procfs".into() });
    }
    Ok(())
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
    if (req.allow_suid || req.allow_dev) && (privileged() || caller_uid() != 0) {
        return Err(MountError::Usage("suid/dev mounts may only be requested by root".into()));
    }
    if req.sources.len() > 1 && req.upper.is_none() && req.sources.len() > 500 {
        return Err(MountError::Usage("too many layers".into()));
    }
    Ok(())
}

fn authz<T>(r: Result<T, crate::privileged::HelperError>) -> Result<T, MountError> {
    r.map_err(|e| MountError::Refused(e.to_string()))
}

fn phase(p: crate::privileged::Phase) -> Result<(), MountError> {
    crate::privileged::enter_phase(p).map_err(|e| MountError::Refused(format!("{e:#}")))
}

/// Opens an image source: pinned, opened as the caller (in privileged mode a sealed private copy).
fn open_source_file(path: &Path) -> Result<File, MountError> {
    let src = authz(crate::privileged::open_source(path))?;
    Ok(File::from(src.fd))
}

/// Performs the whole mount. On error, everything made so far is released by drop.
pub fn mount(req: MountRequest) -> Result<MountOutcome, MountError> {
    use crate::privileged::{self as h, Phase};
    validate(&req)?;
    check_procfs()?;
    let creates_userns = matches!(req.idmap, Some(IdmapSpec::Maps { .. }));
    phase(Phase::Mount { setid: true })?;
    let (state_path, state_fd) = open_state_dir(true)?;
    prune_stale_records(state_fd.as_fd());
    authz(h::check_mount_limits(&state_path, req.force_loop))?;

    // 1. pinned object directories, opened as the caller (before any build reads from them)
    let basedirs = req.basedirs.iter().map(|b| authz(h::open_basedir(b))).collect::<Result<Vec<_>, _>>()?;
    // 2. images (opened once, as the caller; this fd is measured and mounted)
    let mut images = Vec::with_capacity(req.sources.len());
    for s in &req.sources {
        // With verity requested, a TOC build records each object's fs-verity digest (the TOC
        // only has content sha256s), reading the objects from the first basedir. The builder
        // is the sandboxed child: for a privileged caller it runs with the CALLER's uid/gid
        // (and landlock limits it to that directory), so it reads only what the caller could,
        // from a basedir that passed the caller checks above. A basedir swapped in between
        // only changes which of the caller's own files get digested; overlay then checks the
        // pinned one against those digests.
        let objects = (req.verity != Verity::Off).then(|| req.basedirs[0].as_path());
        images.push(open_image(s, req.kind, &state_path, objects)?);
    }
    for img in &images {
        if privileged() {
            authz(h::check_image(img.file.as_fd()))?;
        }
    }
    for (img, want) in images.iter().zip(&req.digests) {
        if privileged() {
            // The sealed private copy cannot carry fs-verity: digest it in userspace.
            authz(h::check_source_digest(img.file.as_fd(), want))
                .map_err(|e| MountError::Digest { path: img.label.clone(), reason: e.to_string() })?;
            continue;
        }
        crate::fsverity::check_digest(img.file.as_fd(), want)
            .map_err(|e| MountError::Digest { path: img.label.clone(), reason: e.to_string() })?;
    }
    // 3. upper/work dirs and target, pinned, opened as the caller
    let upper = match &req.upper {
        Some((u, w)) => Some(authz(h::open_upper(u, w))?),
        None => None,
    };
    let target_fd = match &req.dest {
        Dest::Target(t) => Some(authz(h::open_target(t))?),
        _ => None,
    };
    let sock = match &req.dest {
        // Connected as the caller: root must not reach sockets the caller cannot.
        Dest::Socket(p) => Some(authz(crate::privileged::as_caller(|| overlay::connect_socket(p)))??),
        Dest::SocketFd(fd) => {
            Some(rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| MountError::Usage(format!("--fd-out fd: {e}")))?)
        }
        Dest::Target(_) => None,
    };
    // 4. idmap user namespace
    let userns = match &req.idmap {
        None => None,
        Some(IdmapSpec::Path(p)) => Some(authz(h::open_userns(p))?),
        Some(IdmapSpec::Maps { uid, gid }) => {
            let ext = |m: &[IdMap]| {
                m.iter()
                    .map(|x| h::IdExtent { inside: x.inside, outside: x.outside, count: x.count })
                    .collect::<Vec<_>>()
            };
            authz(h::check_id_maps(&ext(uid), &ext(gid)))?;
            Some(create_userns(uid, gid)?)
        }
    };
    if creates_userns || privileged() {
        phase(Phase::Mount { setid: false })?;
    }
    // 5. EROFS mounts, detached
    let mut erofs = Vec::with_capacity(images.len());
    for img in &images {
        erofs.push(mount_erofs(img, &req, &state_path, userns.as_ref().map(|f| f.as_fd()))?);
    }
    // 6. overlay, detached; uppermost layer first
    let writable = req.upper.is_some() && !req.readonly;
    let mut attrs = erofs_attrs(&req);
    if writable {
        attrs -= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    if req.noexec {
        attrs |= MountAttrFlags::MOUNT_ATTR_NOEXEC;
    }
    let force_legacy = !privileged() && std::env::var_os("CFSMOUNT_TEST_LEGACY_OVERLAY").is_some();
    let datadirs: Vec<BorrowedFd<'_>> = basedirs.iter().map(|f| f.as_fd()).collect();
    let upper_fds = upper.as_ref().map(|(u, w)| (u.as_fd(), w.as_fd()));
    // One image: the composefs overlay is the result. Several: each layer gets its own
    // composefs overlay (its escaped whiteouts/opaque xattrs become real for the overlay above),
    // and a stacking overlay merges them, uppermost first, with the upper dir if any.
    let mut layer_ovls = Vec::new();
    let ovl = if erofs.len() == 1 {
        overlay::assemble(&OverlaySpec {
            lowers: vec![erofs[0].mnt.as_fd()],
            datadirs,
            verity: req.verity,
            upper: upper_fds,
            attrs,
            force_legacy,
            scratch: &state_path,
            composefs: true,
        })?
    } else {
        for e in &erofs {
            layer_ovls.push(overlay::assemble(&OverlaySpec {
                lowers: vec![e.mnt.as_fd()],
                datadirs: datadirs.clone(),
                verity: req.verity,
                upper: None,
                attrs: erofs_attrs(&req),
                force_legacy,
                scratch: &state_path,
                composefs: true,
            })?);
        }
        let mut top = overlay::assemble(&OverlaySpec {
            lowers: layer_ovls.iter().rev().map(|o| o.mnt.as_fd()).collect(),
            datadirs: Vec::new(),
            verity: Verity::Off,
            upper: upper_fds,
            attrs,
            force_legacy,
            scratch: &state_path,
            composefs: false,
        })?;
        top.verity = layer_ovls.iter().all(|o| o.verity);
        top
    };
    let (ovl_id, unique, _) =
        mount_id(ovl.mnt.as_fd()).map_err(|e| MountError::Record { reason: format!("statx of the overlay: {e}") })?;
    let record = MountRecord {
        mount_id: ovl_id,
        mount_id_unique: unique,
        target: match &req.dest {
            Dest::Target(t) => Some(std::path::absolute(t).unwrap_or_else(|_| t.clone())),
            _ => None,
        },
        uid: caller_uid(),
        loop_devices: erofs.iter().filter_map(|e| e.loopdev.as_ref().map(|l| l.path().to_path_buf())).collect(),
        loop_diskseq: erofs
            .iter()
            .filter_map(|e| e.loopdev.as_ref().map(|l| l.diskseq()))
            .collect::<Option<Vec<u64>>>()
            .unwrap_or_default(),
        erofs_mount_ids: erofs.iter().map(|e| e.mount_id).collect(),
        sources: req.sources.clone(),
        mnt_ns: own_mnt_ns(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    // 7. record first (the id does not change when the mount is attached), then hand over
    write_record(state_fd.as_fd(), &record)?;
    let handed = match (&target_fd, &sock) {
        (Some(t), _) => authz(h::attach_at_target(ovl.mnt.as_fd(), t.as_fd(), writable)).map_err(|e| {
            MountError::Attach { target: record.target.clone().unwrap_or_default(), reason: e.to_string() }
        }),
        (None, Some(s)) => authz(h::enforce_mount_attrs(ovl.mnt.as_fd(), writable))
            .and_then(|()| overlay::send_fd(s.as_fd(), ovl.mnt.as_fd()).map_err(MountError::from)),
        (None, None) => Err(MountError::Usage("no target".into())),
    };
    if let Err(e) = handed {
        let _ = rustix::fs::unlinkat(state_fd.as_fd(), record_name(record.mount_id), AtFlags::empty());
        return Err(e);
    }
    phase(Phase::Done)?;
    if req.verbose {
        for (img, e) in images.iter().zip(&erofs) {
            eprintln!(
                "cfsmount: {}: EROFS {} (mount id {})",
                img.label.display(),
                match &e.loopdev {
                    Some(l) => format!(
                        "on {}{}{}",
                        l.path().display(),
                        if l.direct_io() { " (direct I/O)" } else { "" },
                        if l.retries() > 0 { format!(" after {} EBUSY retries", l.retries()) } else { String::new() }
                    ),
                    None => "file-backed".to_string(),
                },
                e.mount_id
            );
        }
        eprintln!(
            "cfsmount: overlay mount id {} ({}{})",
            record.mount_id,
            if ovl.legacy { "legacy lowerdir string" } else { "lowerdir+/datadir+" },
            if ovl.verity { ", verity=require" } else { "" }
        );
    }
    // Dropping the detached EROFS fds and loop fds now is what we want: the overlay pins them.
    Ok(MountOutcome { record, legacy_overlay: ovl.legacy, verity: ovl.verity })
}

/// Unmounts a cfsmount mount at `target`: pinned by fd, matched by mount id against the record
/// (and, in privileged mode, the record's owner against the caller).
pub fn unmount(target: &Path) -> Result<MountRecord, MountError> {
    use crate::privileged as h;
    check_procfs()?;
    let (state_path, state_fd) = open_state_dir(false)?;
    let grant = authz(h::authorize_umount(&state_path, target))?;
    let not_ours = || MountError::NotOurs { target: target.into() };
    let (id, _, attrs) = mount_id(grant.target.as_fd()).map_err(|e| MountError::Dir {
        what: "target",
        path: target.into(),
        errno: e,
    })?;
    if attrs & STATX_ATTR_MOUNT_ROOT == 0 || id != grant.record.mount_id {
        return Err(not_ours());
    }
    let st = rustix::fs::fstatfs(&grant.target).map_err(|e| MountError::Dir {
        what: "target",
        path: target.into(),
        errno: e,
    })?;
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != OVERLAYFS_SUPER_MAGIC {
        return Err(not_ours());
    }
    let rec = read_record(state_fd.as_fd(), id)?.ok_or_else(not_ours)?;
    // Detach exactly the pinned mount (MNT_DETACH through /proc/self/fd/N; a plain umount2
    // would always see the mount busy, held by the very fd that pins it). The overlay, the EROFS
    // mount and the loop device under it go away as soon as the last file open in it is closed.
    authz(h::umount_pinned(&grant)).map_err(|e| MountError::Umount { target: target.into(), reason: e.to_string() })?;
    drop(grant);
    // Still held open by someone: the record stays, without its target, so the per-user limits
    // keep counting the mount and its loop devices until they are released (liveness by
    // diskseq); otherwise, or with nothing to watch, it is removed.
    let mut detached = rec.clone();
    detached.target = None;
    let held = crate::privileged::liveness(&detached) == crate::privileged::Liveness::Live;
    if !(held && write_record(state_fd.as_fd(), &detached).is_ok()) {
        let _ = rustix::fs::unlinkat(state_fd.as_fd(), record_name(id), AtFlags::empty());
    }
    Ok(rec)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Usage(String),
    #[error("bad id map {0:?}: expected INSIDE:OUTSIDE:COUNT with COUNT > 0 and no overflow")]
    BadIdMap(String),
    #[error("{}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("{}: not a composefs image ({reason})", path.display())]
    NotComposefs { path: PathBuf, reason: String },
    #[error("{}: building the image failed: {reason}", path.display())]
    Build { path: PathBuf, reason: String },
    #[error("{}: image digest check failed: {reason}", path.display())]
    Digest { path: PathBuf, reason: String },
    #[error("{what} {}: {errno}", path.display())]
    Dir { what: &'static str, path: PathBuf, errno: Errno },
    // The cause is part of the message (not an error `source`), so `{:#}` prints it once.
    #[error("{}: loop device: {cause}", path.display())]
    Loop { path: PathBuf, cause: crate::mount::loopdev::LoopError },
    #[error("{}: EROFS mount failed at {step}: {errno}", path.display())]
    Erofs { path: PathBuf, step: String, errno: Errno },
    #[error("idmap: {reason}")]
    Idmap { reason: String },
    #[error(transparent)]
    Overlay(#[from] crate::mount::overlay::OverlayError),
    #[error("attaching the mount at {}: {reason}", target.display())]
    Attach { target: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("state directory {}: {reason}", path.display())]
    StateDir { path: PathBuf, reason: String },
    #[error("mount record: {reason}")]
    Record { reason: String },
    #[error("{}: not a mount made by cfsmount (no record for the mount there)", target.display())]
    NotOurs { target: PathBuf },
    #[error("{}: mounted by uid {owner}, not by you", target.display())]
    OtherUser { target: PathBuf, owner: u32 },
    #[error("unmounting {}: {reason}", target.display())]
    Umount { target: PathBuf, reason: String },
    #[error("/proc: {reason}")]
    Proc { reason: String },
}
