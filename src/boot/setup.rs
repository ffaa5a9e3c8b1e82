//! `setup-root`: from the kernel command line to a composefs root mounted at `/sysroot`.
//!
//! Order (each step only after the previous one succeeded; see docs/boot.md):
//! 1. the composefs arguments (none: nothing to do);
//! 2. `/sysroot` must be a mount (the physical root); `composefs/` is resolved inside it;
//! 3. the first argument whose `composefs/images/HEX` exists is the image; its fs-verity digest
//!    (kernel measurement; with `?` and no fs-verity, a userspace digest) must equal HEX;
//! 4. verified boots: every object the image names is measured (`objects.rs`);
//! 5. state directories are created, the physical root is cloned (detached);
//! 6. the mount engine mounts the image at `/sysroot`, on top of the physical root, with
//!    `verity=require` (unless `?`), without nosuid/nodev;
//! 7. the physical root clone goes to `/sysroot/sysroot` when the image has that directory,
//!    then `/etc` and `/var` as configured.
//!
//! Nothing is attached at `/sysroot` before step 6; a failure after it detaches the new root
//! (pinned by fd and matched by mount id), which leaves `/sysroot` as it was.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

use super::cmdline::{self, Algorithm, RootArg};
use super::config::{Config, DirMode};
use super::objects::{self, Checked};
use crate::below::open_below;
use crate::mount::kernel::Real;
use crate::mount::records::mount_id;
use crate::mount::{Settings, Verity};

/// What `setup-root` is asked to do.
#[derive(Debug)]
pub struct SetupRequest {
    pub sysroot: PathBuf,
    pub cmdline: String,
    pub config: Config,
}

/// What it did.
#[derive(Debug)]
pub enum Outcome {
    /// No `composefs=` / `composefs.digest=` argument: not a composefs boot.
    NotComposefs,
    Mounted(Box<Mounted>),
}

#[derive(Debug)]
pub struct Mounted {
    pub hex: String,
    /// overlay `verity=require` (false only with `?`).
    pub verity: bool,
    /// The image itself carries fs-verity (else its digest was computed in userspace).
    pub image_has_verity: bool,
    pub objects: Option<Checked>,
    /// The physical root was attached at `/sysroot/sysroot`.
    pub physical_root_kept: bool,
    /// Arguments whose image did not exist, in order.
    pub skipped: Vec<String>,
    pub config: Config,
    /// What the mount engine reported (layers, legacy overlay syntax).
    pub(crate) engine: crate::mount::MountOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("{}: {reason}", path.display())]
    Sysroot { path: PathBuf, reason: String },
    #[error("no composefs image found: tried {}", tried.join(", "))]
    NoImage { tried: Vec<String> },
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Objects { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    // The cause is part of the message (not an error `source`), so `{:#}` prints it once.
    #[error("mounting {}: {cause}", image.display())]
    Mount { image: PathBuf, cause: Box<crate::mount::MountError> },
    #[error("{what}: {reason} (the new root was detached again; /sysroot is as it was)")]
    Assemble { what: String, reason: String },
}

fn sys_err(path: &Path, reason: impl std::fmt::Display) -> SetupError {
    SetupError::Sysroot { path: path.to_path_buf(), reason: reason.to_string() }
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY
}

/// Resolution inside the physical root: symlinks are followed, absolute ones from the physical
/// root (not from the initramfs), magic links never.
fn in_root() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The image chosen from the command line, opened, its digest checked.
struct Chosen {
    arg: RootArg,
    file: File,
    path: PathBuf,
    has_verity: bool,
    skipped: Vec<String>,
}

fn choose_image(repo: BorrowedFd<'_>, repo_path: &Path, args: &[RootArg]) -> Result<Chosen, SetupError> {
    let mut skipped = Vec::new();
    for arg in args {
        let rel = format!("images/{}", arg.hex);
        let path = repo_path.join(&rel);
        // Symlinks may point elsewhere inside the repository (composefs-rs links images/HEX to
        // ../objects/XX/...), never out of it.
        let fd = match open_below(
            repo,
            &rel,
            OFlags::RDONLY | OFlags::NONBLOCK,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                skipped.push(arg.word.clone());
                continue;
            }
            Err(e) => return Err(SetupError::Image { path, reason: format!("open: {e}") }),
        };
        if arg.algorithm != Algorithm::Sha256 {
            return Err(SetupError::Image {
                path,
                reason: format!(
                    "{} fs-verity digests are not supported (cfsmount checks SHA-256)",
                    arg.algorithm.name()
                ),
            });
        }
        let file = File::from(fd);
        let st =
            rustix::fs::fstat(&file).map_err(|e| SetupError::Image { path: path.clone(), reason: e.to_string() })?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(SetupError::Image { path, reason: "not a regular file".into() });
        }
        let has_verity =
            check_image_digest(&file, arg).map_err(|reason| SetupError::Image { path: path.clone(), reason })?;
        return Ok(Chosen { arg: arg.clone(), file, path, has_verity, skipped });
    }
    Err(SetupError::NoImage {
        tried: skipped.iter().map(|w| format!("{}/images/{}", repo_path.display(), hex_of(w))).collect(),
    })
}

fn hex_of(word: &str) -> &str {
    word.rsplit([':', '=', '?']).next().unwrap_or(word)
}

/// The kernel's fs-verity measurement must equal the argument's digest. Without fs-verity on
/// the image: refused, unless `?`, where the digest is computed in userspace instead (the image
/// is still the one the command line names; only the objects go unchecked).
fn check_image_digest(file: &File, arg: &RootArg) -> Result<bool, String> {
    use crate::fsverity::{self, VerityError};
    let want = fsverity::parse_hex(&arg.hex).map_err(|e| e.to_string())?;
    match fsverity::measure(file.as_fd()) {
        Ok(d) if d == want => Ok(true),
        Ok(d) => Err(format!(
            "fs-verity digest {} is not the {} the kernel command line names",
            fsverity::to_hex(&d),
            arg.hex
        )),
        Err(e @ (VerityError::NotEnabled | VerityError::Unsupported)) => {
            if !arg.insecure {
                return Err(format!("{e}; a verified boot needs it (composefs=?{} boots without fs-verity)", arg.hex));
            }
            let d = fsverity::digest_file(file).map_err(|e| format!("computing its digest: {e}"))?;
            if d != want {
                return Err(format!(
                    "digest {} is not the {} the kernel command line names",
                    fsverity::to_hex(&d),
                    arg.hex
                ));
            }
            Ok(false)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `mkdir -p` of `rel` inside the physical root (each component resolved in it), then opens it.
fn ensure_dir(root: BorrowedFd<'_>, rel: &str, mode: u32) -> Result<OwnedFd, Errno> {
    let mut prefix = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        let parent = if prefix.is_empty() {
            rustix::io::fcntl_dupfd_cloexec(root, 3)?
        } else {
            open_below(root, &prefix, dir_flags(), in_root())?
        };
        match rustix::fs::mkdirat(&parent, comp, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
    }
    open_below(root, &prefix, dir_flags(), in_root())
}

/// The deployment's state directories on the physical root, opened (created when missing).
struct State {
    etc: Option<(OwnedFd, OwnedFd)>,
    var: Option<OwnedFd>,
}

fn prepare_state(sysroot: BorrowedFd<'_>, sysroot_path: &Path, hex: &str, cfg: &Config) -> Result<State, SetupError> {
    let base = format!("state/deploy/{hex}");
    let open = |rel: String, mode: u32| {
        ensure_dir(sysroot, &rel, mode).map_err(|e| SetupError::State {
            path: sysroot_path.join(&rel),
            reason: match e {
                Errno::ROFS => format!(
                    "{e} (the physical root is mounted read-only: add rw to the kernel command line, \
                     or set etc/var to transient or ro in the setup-root config)"
                ),
                e => e.to_string(),
            },
        })
    };
    let etc = match cfg.etc {
        DirMode::Overlay => Some((open(format!("{base}/etc/upper"), 0o755)?, open(format!("{base}/etc/work"), 0o700)?)),
        _ => None,
    };
    let var = match cfg.var {
        DirMode::Bind => Some(open(format!("{base}/var"), 0o755)?),
        _ => None,
    };
    Ok(State { etc, var })
}

/// A tmpfs attached for a moment in a private scratch directory (kernels before 6.15 cannot use
/// a detached mount as an overlay layer); `upper` and `work` are opened in it. Dropping it
/// detaches it again: an overlay built on it keeps its own private clone.
struct Transient {
    upper: OwnedFd,
    work: OwnedFd,
    /// Where it is attached (a root-only scratch directory): the engine takes upper/work as
    /// paths, and opens them with O_NOFOLLOW (so not as /proc/self/fd/N).
    attached: TempDir,
}

/// A scratch directory, with a mount on it once `mounted`; dropping it detaches and removes it.
struct TempDir {
    dir: PathBuf,
    mounted: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.dir, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        }
        let _ = rustix::fs::rmdir(&self.dir);
    }
}

impl Transient {
    fn new(scratch: &Path, tag: &str) -> Result<Transient, String> {
        use rustix::mount::{fsconfig_create, fsconfig_set_string, fsmount, fsopen, FsMountFlags, FsOpenFlags};
        let e = |what: &'static str| move |err: Errno| format!("tmpfs for {tag}: {what}: {err}");
        let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(e("fsopen"))?;
        fsconfig_set_string(fs.as_fd(), "source", "cfsmount-transient").map_err(e("source"))?;
        fsconfig_set_string(fs.as_fd(), "mode", "0755").map_err(e("mode"))?;
        fsconfig_create(fs.as_fd()).map_err(e("create"))?;
        let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, rustix::mount::MountAttrFlags::empty())
            .map_err(e("fsmount"))?;
        match rustix::fs::mkdir(scratch, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(err) => return Err(format!("scratch directory {}: {err}", scratch.display())),
        }
        let dir = scratch.join(format!(".boot-{}-{tag}", std::process::id()));
        rustix::fs::mkdir(&dir, Mode::from_raw_mode(0o700)).map_err(|err| format!("{}: {err}", dir.display()))?;
        let mut guard = TempDir { dir, mounted: false };
        let d = rustix::fs::open(&guard.dir, dir_flags() | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|err| format!("{}: {err}", guard.dir.display()))?;
        attach(mnt.as_fd(), d.as_fd())
            .map_err(|err| format!("attaching the tmpfs at {}: {err}", guard.dir.display()))?;
        guard.mounted = true;
        // `mnt` now names the root of the attached tmpfs: what is opened through it is in a
        // mount of this namespace, as overlay wants before 6.15.
        let root = mnt;
        for (name, mode) in [("upper", 0o755), ("work", 0o700)] {
            rustix::fs::mkdirat(&root, name, Mode::from_raw_mode(mode))
                .map_err(|err| format!("tmpfs {name}: {err}"))?;
        }
        let upper =
            open_below(root.as_fd(), "upper", dir_flags(), ResolveFlags::BENEATH).map_err(|err| format!("{err}"))?;
        let work =
            open_below(root.as_fd(), "work", dir_flags(), ResolveFlags::BENEATH).map_err(|err| format!("{err}"))?;
        Ok(Transient { upper, work, attached: guard })
    }
}

/// The new root attached at `/sysroot`, pinned; dropped while armed, it is detached (with
/// everything mounted inside it).
struct NewRoot {
    fd: OwnedFd,
    armed: bool,
}

impl Drop for NewRoot {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::mount::unmount(fd_path(self.fd.as_fd()), UnmountFlags::DETACH);
        }
    }
}

/// Attaches the detached mount `mnt` on the directory `target` (an fd in the new root).
fn attach(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::mount::move_mount(
        mnt,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
}

/// Performs `setup-root`.
pub fn setup_root(req: &SetupRequest) -> Result<Outcome, SetupError> {
    let args = cmdline::parse(&req.cmdline)?;
    if args.is_empty() {
        return Ok(Outcome::NotComposefs);
    }
    let sp = &req.sysroot;
    let sysroot = rustix::fs::open(sp, dir_flags() | OFlags::CLOEXEC, Mode::empty()).map_err(|e| sys_err(sp, e))?;
    let id = mount_id(sysroot.as_fd()).map_err(|e| sys_err(sp, format!("statx: {e}")))?;
    if !id.is_mount_root {
        return Err(sys_err(sp, "nothing is mounted here (the physical root must be mounted first)"));
    }
    let repo_path = sp.join("composefs");
    let repo = open_below(sysroot.as_fd(), "composefs", dir_flags(), in_root())
        .map_err(|e| sys_err(&repo_path, format!("no composefs repository: {e}")))?;
    let chosen = choose_image(repo.as_fd(), &repo_path, &args)?;
    let objects_path = repo_path.join("objects");
    let objects = open_below(
        repo.as_fd(),
        "objects",
        OFlags::RDONLY | OFlags::DIRECTORY,
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| SetupError::Objects { path: objects_path.clone(), reason: e.to_string() })?;
    let verity = !chosen.arg.insecure;
    let checked = if verity && req.config.verify_objects {
        Some(
            objects::verify(&chosen.file, objects.as_fd())
                .map_err(|e| SetupError::Objects { path: objects_path.clone(), reason: e.to_string() })?,
        )
    } else {
        None
    };
    let state = prepare_state(sysroot.as_fd(), sp, &chosen.arg.hex, &req.config)?;
    // The physical root, cloned before anything covers it.
    let physical = rustix::mount::open_tree(
        sysroot.as_fd(),
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| sys_err(sp, format!("cloning the physical root (open_tree): {e}")))?;
    // The engine's settings: its state directory is also the scratch directory for temporary
    // attaches (root-owned, 0700). setup-root runs as plain root only (privileged mode refuses it).
    let settings = Settings::from_env();
    let scratch = settings.state_dir.clone();
    let root_tmp = if req.config.transient_root {
        Some(
            Transient::new(&scratch, "root")
                .map_err(|reason| SetupError::Assemble { what: "transient root".into(), reason })?,
        )
    } else {
        None
    };
    let mounted = mount_image(req, &settings, &chosen, objects.as_fd(), verity, root_tmp.as_ref())?;
    drop(root_tmp);
    // Pin what is now at /sysroot and make sure it is the mount just made.
    let fd = rustix::fs::open(sp, dir_flags() | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| sys_err(sp, format!("the new root is mounted but cannot be opened again to finish: {e}")))?;
    let mut root = NewRoot { fd, armed: true };
    match mount_id(root.fd.as_fd()) {
        Ok(id) if id.id == mounted.record.mount_id => {}
        _ => {
            root.armed = false;
            return Err(sys_err(sp, "the mount at /sysroot is not the one just made (left alone)"));
        }
    }
    let physical_root_kept = assemble(&root, physical, &state, &req.config, &scratch)?;
    root.armed = false;
    Ok(Outcome::Mounted(Box::new(Mounted {
        hex: chosen.arg.hex.clone(),
        verity,
        image_has_verity: chosen.has_verity,
        objects: checked,
        physical_root_kept,
        skipped: chosen.skipped,
        config: req.config,
        engine: mounted,
    })))
}

/// The one call into the mount engine: the image at `/sysroot`, as root filesystem.
fn mount_image(
    req: &SetupRequest,
    settings: &Settings,
    chosen: &Chosen,
    objects: BorrowedFd<'_>,
    verity: bool,
    upper: Option<&Transient>,
) -> Result<crate::mount::MountOutcome, SetupError> {
    use crate::mount::{Dest, MountRequest, SourceKind};
    let digest = crate::fsverity::parse_hex(&chosen.arg.hex).expect("validated hex");
    let r = MountRequest {
        // The fds checked above, by their /proc/self/fd names: the engine opens the same files.
        sources: vec![fd_path(chosen.file.as_fd())],
        kind: SourceKind::Image,
        digests: if chosen.has_verity { vec![digest] } else { Vec::new() },
        basedirs: vec![fd_path(objects)],
        verity: if verity { Verity::Require } else { Verity::Off },
        idmap: None,
        upper: upper.map(|t| (t.attached.dir.join("upper"), t.attached.dir.join("work"))),
        readonly: false,
        force_loop: false,
        // The root filesystem: setuid binaries and device nodes work.
        allow_suid: true,
        allow_dev: true,
        noexec: false,
        dest: Dest::Target(req.sysroot.clone()),
    };
    let access = crate::mount::access::Direct::new();
    crate::mount::mount(&r, &access, &Real, settings)
        .map_err(|cause| SetupError::Mount { image: chosen.path.clone(), cause: Box::new(cause) })
}

/// Mounts inside the new root: the physical root at `sysroot/` (if the image has it), `/etc`,
/// `/var`. Returns whether the physical root was attached.
fn assemble(
    root: &NewRoot,
    physical: OwnedFd,
    state: &State,
    cfg: &Config,
    scratch: &Path,
) -> Result<bool, SetupError> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |reason: String| SetupError::Assemble { what: what.clone(), reason }
    };
    let nr = root.fd.as_fd();
    let kept = match open_below(
        nr,
        "sysroot",
        dir_flags() | OFlags::NOFOLLOW,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(d) => {
            attach(physical.as_fd(), d.as_fd())
                .map_err(|e| fail("/sysroot/sysroot")(format!("attaching the physical root: {e}")))?;
            true
        }
        Err(Errno::NOENT) => false,
        Err(e) => return Err(fail("/sysroot/sysroot")(e.to_string())),
    };
    for (name, mode) in [("etc", cfg.etc), ("var", cfg.var)] {
        let what = format!("/{name}");
        let target = match open_below(
            nr,
            name,
            dir_flags() | OFlags::NOFOLLOW,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(d) => d,
            Err(Errno::NOENT) if mode == DirMode::ReadOnly => continue,
            Err(e) => return Err(fail(&what)(format!("the image's /{name}: {e}"))),
        };
        let mnt = match mode {
            DirMode::ReadOnly => continue,
            DirMode::Bind => {
                let src = state.var.as_ref().expect("state prepared for bind");
                rustix::mount::open_tree(
                    src.as_fd(),
                    "",
                    OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
                )
                .map_err(|e| fail(&what)(format!("bind of the state directory (open_tree): {e}")))?
            }
            DirMode::Overlay => {
                let (u, w) = state.etc.as_ref().expect("state prepared for overlay");
                dir_overlay(target.as_fd(), u.as_fd(), w.as_fd(), scratch).map_err(fail(&what))?
            }
            DirMode::Transient => {
                let t = Transient::new(scratch, name).map_err(fail(&what))?;
                dir_overlay(target.as_fd(), t.upper.as_fd(), t.work.as_fd(), scratch).map_err(fail(&what))?
            }
        };
        attach(mnt.as_fd(), target.as_fd()).map_err(|e| fail(&what)(format!("move_mount: {e}")))?;
    }
    Ok(kept)
}

/// A writable overlay of `lower` (a directory of the new root) with the given upper/work dirs,
/// detached.
fn dir_overlay(
    lower: BorrowedFd<'_>,
    upper: BorrowedFd<'_>,
    work: BorrowedFd<'_>,
    scratch: &Path,
) -> Result<OwnedFd, String> {
    use crate::mount::overlay::{assemble, OverlayOptions, OverlaySpec};
    let o = assemble(
        &Real,
        &OverlaySpec {
            lowers: vec![lower],
            datadirs: Vec::new(),
            upper_paths: None,
            options: OverlayOptions { composefs: false, verity: Verity::Off, upper: Some((upper, work)) },
            attrs: rustix::mount::MountAttrFlags::empty(),
            force_legacy: false,
            scratch,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(o.mnt)
}
