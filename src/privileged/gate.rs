//! THE gate of privileged mode: the closed list of extra checks the setuid helper makes, each a
//! method of [`Gate`] (the mount engine's [`Access`] in privileged mode). Every path the caller
//! names is opened with the caller's own credentials and pinned by fd; option strings, images,
//! targets, idmap user namespaces, limits and unmount rights are checked here and nowhere else.
//! docs/helper.md walks through the list in the order a mount meets it.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::MountAttrFlags;

use super::caller::{as_caller, restrict_caps, set_undumpable, Caller, KEPT_CAPS};
use super::idmap;
use super::init::HelperContext;
use super::kept::KeptCopies;
use super::policy::{Limits, Policy};
use super::verdicts::{Content, Hash, Key, Verdict, Verdicts};
use crate::mount::access::{check_is_userns, Access, AccessError, FdSink, Phase, Usage};
use crate::mount::records::MountRecord;
use crate::mount::{IdMap, MountOption, MountRequest, SourceKind};
use crate::sys::helper as sys;
use crate::sys::mount::{Courier, CourierTarget};

/// Longest path argument accepted.
pub(crate) const MAX_PATH_ARG: usize = 1024;
/// Longest `-o` option string accepted.
pub(crate) const MAX_OPTION_STRING: usize = 4096;

/// The setuid helper's access policy: the caller, the policy in force and the caller's limits.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    caller: Caller,
    policy: Policy,
    limits: Limits,
    /// The state directory, whose `verdicts` subdirectory remembers accepted images
    /// (`super::verdicts`); `None`: every image is vetted in full.
    state_dir: Option<PathBuf>,
    /// The images `open_source` handed out whose bytes can no longer change: its sealed and kept
    /// copies (with verdicts on), each with the hash of its bytes, and the caller's
    /// fs-verity files, each with its fs-verity digest; `check_image` and `check_digest` find
    /// an image's entry by its inode.
    pinned: RefCell<Vec<PinnedSource>>,
    /// The images `check_image` accepted with a verdict key, and their verdicts (remembered or
    /// just made): `check_digest` takes a remembered fs-verity digest from here and records one
    /// it computed into that verdict, never into a verdict of an image not accepted.
    accepted: RefCell<Vec<(Key, Verdict)>>,
}

/// An image that can no longer change and the digest of its bytes. Device and inode number
/// together name one file in the system (POSIX `st_dev`/`st_ino`); the gate keeps an fd of the
/// file, so it stays alive and its number cannot pass to another file: finding an fd's (dev,
/// ino) here identifies the very file.
#[derive(Debug, Clone)]
struct PinnedSource {
    _pin: std::sync::Arc<OwnedFd>,
    dev: u64,
    ino: u64,
    content: Content,
}

/// Filesystems on which the kernel itself enforces fs-verity (ext4, f2fs, btrfs: no write,
/// truncation or disabling of verity once enabled, every page read checked against the
/// measured digest), by their names in the policy's filesystem table. Any other filesystem
/// that answers `FS_IOC_MEASURE_VERITY` is not believed: FUSE forwards the verity ioctls to
/// its server, which could answer anything.
const VERITY_FS: [&str; 3] = ["ext4", "f2fs", "btrfs"];

impl Gate {
    pub(crate) fn new(ctx: HelperContext) -> Gate {
        let limits = ctx.policy.limits_for(ctx.caller.name.as_deref(), ctx.caller.uid);
        Gate {
            caller: ctx.caller,
            policy: ctx.policy,
            limits,
            state_dir: None,
            pinned: RefCell::default(),
            accepted: RefCell::default(),
        }
    }

    /// Remembers verdicts on vetted images in `<state_dir>/verdicts` (see `super::verdicts`).
    pub(crate) fn with_verdicts(mut self, state_dir: &Path) -> Gate {
        self.state_dir = Some(state_dir.to_path_buf());
        self
    }

    /// Opens `path` as the caller (after [`check_path_arg`]).
    fn open_as_caller(&self, what: &'static str, path: &Path, flags: OFlags) -> Result<OwnedFd, AccessError> {
        check_path_arg(what, path.as_os_str())?;
        as_caller(&self.caller, || rustix::fs::open(path, flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty()))?
            .map_err(|errno| AccessError::Open { what, path: path.to_path_buf(), errno, as_caller: true })
    }

    /// Keeps `image` (a sealed copy just made by `sealed_copy`, a kept copy, or the caller's
    /// fs-verity file) pinned with the digest of its bytes.
    fn pin(&self, image: &OwnedFd, content: Content) -> Result<(), AccessError> {
        let st = rustix::fs::fstat(image).map_err(|e| AccessError::Io { what: "fstat of the source", errno: e })?;
        let pin = rustix::io::dup(image).map_err(|e| AccessError::Io { what: "dup", errno: e })?;
        let pin = std::sync::Arc::new(pin);
        self.pinned.borrow_mut().push(PinnedSource { _pin: pin, dev: st.st_dev, ino: st.st_ino, content });
        Ok(())
    }

    /// What `image`'s bytes are, if they can no longer change: `None` unless it is one of the
    /// images `open_source` pinned (same device and inode) and of the size pinned, and still
    /// as pinned: a copy still sealed against writes, growth and shrinking (`F_GET_SEALS` on
    /// this very fd) or still a kept copy only root can change
    /// (`crate::sys::map::unchangeable`), a verity file still measured with the same digest.
    fn pinned_content(&self, image: BorrowedFd<'_>) -> Result<Option<Content>, rustix::io::Errno> {
        let st = rustix::fs::fstat(image)?;
        let pinned = self.pinned.borrow();
        let Some(p) = pinned.iter().find(|p| p.dev == st.st_dev && p.ino == st.st_ino) else { return Ok(None) };
        if p.content.size() != st.st_size as u64 {
            return Ok(None);
        }
        let unchanged = match p.content.hash() {
            Hash::Blake3 => crate::sys::map::unchangeable(image)?,
            Hash::FsVerity => self.verity_digest(image).as_ref() == Some(p.content.digest()),
        };
        Ok(unchanged.then_some(p.content))
    }

    /// The verdict key of `image` ([`Gate::pinned_content`] for this caller).
    fn key_of(&self, image: BorrowedFd<'_>) -> Result<Option<Key>, rustix::io::Errno> {
        Ok(self.pinned_content(image)?.map(|c| Key::new(self.caller.uid, c)))
    }

    /// The fs-verity digest of `fd` if the kernel enforces fs-verity on it: a file on one of
    /// [`VERITY_FS`] that the policy also allows for targets and object directories (the same
    /// filesystem types, and for the same reason: the kernel reads it while the helper holds
    /// the state lock), with verity enabled (SHA-256). `None` otherwise, and on any error: the
    /// image is then copied as any other.
    fn verity_digest(&self, fd: BorrowedFd<'_>) -> Option<[u8; 32]> {
        let (_, name) = self.policy_fs(fd).ok()?;
        if !VERITY_FS.contains(&name?) {
            return None;
        }
        crate::fsverity::measure(fd).ok()
    }

    /// The filesystem `fd` is on (`fstatfs` magic) and its name in the policy's
    /// `allowed_target_fs` (`None`: the policy does not allow it).
    fn policy_fs(&self, fd: BorrowedFd<'_>) -> Result<(u64, Option<&str>), rustix::io::Errno> {
        let magic = rustix::fs::fstatfs(fd)?.f_type as u64 & 0xffff_ffff;
        Ok((magic, self.policy.target_fs_name(magic)))
    }

    fn feature(&self, on: bool, what: &str) -> Result<(), AccessError> {
        if on {
            Ok(())
        } else {
            Err(AccessError::Policy(format!("{what} are disabled")))
        }
    }

    fn owned_by_caller(&self, what: &'static str, path: &Path, fd: BorrowedFd<'_>) -> Result<(), AccessError> {
        let st = fstat(what, path, fd)?;
        if st.st_uid != self.caller.uid {
            return Err(AccessError::Refused {
                what,
                path: path.into(),
                reason: format!("owned by uid {}, not by the caller (uid {})", st.st_uid, self.caller.uid),
            });
        }
        Ok(())
    }
}

fn fstat(what: &'static str, path: &Path, fd: BorrowedFd<'_>) -> Result<rustix::fs::Stat, AccessError> {
    rustix::fs::fstat(fd).map_err(|errno| AccessError::Open { what, path: path.into(), errno, as_caller: true })
}

impl Access for Gate {
    fn caller_uid(&self) -> u32 {
        self.caller.uid
    }

    /// Refused before anything is opened: suid/dev mounts; writable overlays (an overlay's
    /// copy-up acts with its mounter's credentials, root's, on the caller's upper directory: a
    /// root-owned setuid file of the image would be copied up root-owned and setuid, see
    /// docs/helper.md); on-the-fly builds when the policy disables them.
    fn check_request(&self, req: &MountRequest) -> Result<(), AccessError> {
        if req.allow_suid || req.allow_dev {
            return Err(AccessError::NotPermitted("suid/dev mounts may only be requested by root"));
        }
        if req.upper.is_some() {
            return Err(AccessError::NotPermitted(
                "writable overlays (--upperdir/--workdir) are not offered to unprivileged callers; mount read-only \
                 (or with --fd-out) and put your own overlay on top in your own user namespace (see cfsmount(8))",
            ));
        }
        if req.kind != SourceKind::Image && !self.policy.features.build_from_toc {
            return Err(AccessError::Policy("on-the-fly builds (--toc, --estargz, --dump) are disabled".into()));
        }
        Ok(())
    }

    fn check_options(&self, raw: &str, parsed: &[MountOption]) -> Result<(), AccessError> {
        check_option_string(raw, parsed)
    }

    fn check_namespace_switch(&self) -> Result<(), AccessError> {
        Err(AccessError::NotPermitted("-N is not available to unprivileged callers"))
    }

    /// As the caller, `O_RDONLY|O_NONBLOCK|O_NOCTTY`: a regular file within `max_image_size`.
    /// What is validated, measured and mounted must be bytes the caller can no longer modify:
    /// a file with fs-verity on a filesystem where the kernel enforces it
    /// ([`Gate::verity_digest`]) is used itself, pinned with its fs-verity digest (the key of
    /// `check_image`'s verdict). Any other is, with verdicts on, the caller's kept copy of the
    /// same bytes (the file hashed as read: `super::kept`) or else copied, hashed as written
    /// (the key then), into a new unnamed kept copy when one may be kept, or into a memfd
    /// sealed against writes, growth and shrinking.
    fn open_source(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        let fd = self.open_as_caller("source", path, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let st = fstat("source", path, fd.as_fd())?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(AccessError::Refused {
                what: "source",
                path: path.into(),
                reason: "not a regular file".into(),
            });
        }
        let max = self.limits.max_image_size;
        if st.st_size as u64 > max {
            return Err(AccessError::Limit { what: "image size", value: st.st_size as u64, limit: max });
        }
        if let Some(digest) = self.verity_digest(fd.as_fd()) {
            self.pin(&fd, Content::fs_verity(digest, st.st_size as u64))?;
            return Ok(fd);
        }
        // A refusal of the copy (the file changed size meanwhile) names the caller's path.
        let named = |e: AccessError| match e {
            AccessError::BadImage { reason } => AccessError::Refused { what: "source", path: path.into(), reason },
            e => e,
        };
        let Some(state_dir) = &self.state_dir else {
            return Ok(sealed_copy(fd.as_fd(), max, false).map_err(named)?.0);
        };
        if let Some(kept) = KeptCopies::open(state_dir, self.policy.machine_limits.kept_copy_bytes) {
            let size = st.st_size as u64;
            if kept.has_size(self.caller.uid, size) {
                let content = Content::of_file(fd.as_fd(), size)
                    .map_err(|errno| AccessError::Io { what: "reading the source", errno })?;
                if let Some(content) = content {
                    if let Some(copy) = kept.find(&Key::new(self.caller.uid, content)) {
                        self.pin(&copy, content)?;
                        return Ok(copy);
                    }
                }
            }
            if let Some(file) = kept.new_copy(size) {
                if let Some((copy, content)) = kept_copy(fd.as_fd(), file, size) {
                    self.pin(&copy, content)?;
                    return Ok(copy);
                }
            }
        }
        let (copy, content) = sealed_copy(fd.as_fd(), max, true).map_err(named)?;
        if let Some(content) = content {
            self.pin(&copy, content)?;
        }
        Ok(copy)
    }

    /// The EROFS superblock (block size, inode count within `max_entries`), then the whole image
    /// through the hostile-input reader, refusing device nodes and unsafe redirects: unless this
    /// caller's remembered verdict says that these very bytes (an image `open_source` pinned:
    /// its sealed copy, by the BLAKE3 hash of what was written into it, or the caller's
    /// fs-verity file, by its fs-verity digest) were accepted before by these checks; its entry
    /// count then meets the caller's limit again (`super::verdicts`, docs/helper.md
    /// "Remembered verdicts").
    fn check_image(&self, image: BorrowedFd<'_>) -> Result<(), AccessError> {
        let h = crate::erofs::format::ImageHeader::read_from(image).map_err(AccessError::Header)?;
        h.block_size().map_err(AccessError::Header)?;
        let max = self.limits.max_entries;
        if h.inodes() > max {
            return Err(AccessError::Limit { what: "image entries", value: h.inodes(), limit: max });
        }
        let Some(state_dir) = &self.state_dir else {
            return check_image_content(image, h.inodes(), &self.limits, false).map(|_| ());
        };
        let verdicts = Verdicts::open(state_dir);
        let key = match verdicts {
            Some(_) => {
                self.key_of(image).map_err(|errno| AccessError::Io { what: "seals and size of the image", errno })?
            }
            None => None,
        };
        let remembered = match (&key, &verdicts) {
            (Some(key), Some(verdicts)) => verdicts.lookup(key),
            _ => None,
        };
        let verdict = if let Some(v) = remembered {
            within_limits(v, &self.limits)?;
            Some(v)
        } else {
            // A kept copy (not sealed) is mapped only when the gate itself pinned it: a key.
            let entries = check_image_content(image, h.inodes(), &self.limits, key.is_some())?;
            key.as_ref().map(|key| {
                let v = Verdict::accepted(key.size(), entries);
                if let Some(verdicts) = &verdicts {
                    verdicts.record(key, v);
                }
                v
            })
        };
        if let (Some(key), Some(v)) = (&key, verdict) {
            self.accepted.borrow_mut().push((key.clone(), v));
        }
        // Accepted: a new copy that may be kept gets its name now (super::kept).
        if let Some(key) = &key {
            let unnamed = rustix::fs::fstat(image).is_ok_and(|st| st.st_nlink == 0);
            if unnamed && crate::sys::map::root_read_only_copy(image).unwrap_or(false) {
                if let Some(kept) = KeptCopies::open(state_dir, self.policy.machine_limits.kept_copy_bytes) {
                    kept.keep(image, key);
                }
            }
        }
        Ok(())
    }

    /// The image is the caller's fs-verity file that `open_source` pinned (the kernel's digest
    /// is compared: constant time) or the sealed private copy (a memfd cannot carry fs-verity:
    /// the digest is computed in userspace); neither can change any more, so this proves what
    /// is mounted. A verity file measured with other parameters (block size, salt) than the
    /// composefs digest's gets its digest computed too. A computed digest is kept in the
    /// verdict `check_image` accepted these bytes with (this caller's, found by the key
    /// `pinned_content` confirms again here), and taken from there by a later mount of them:
    /// the verdict's key commits to every byte, so the digest it holds is theirs.
    fn check_digest(&self, image: BorrowedFd<'_>, want: &[u8; 32]) -> Result<(), AccessError> {
        let pinned =
            self.pinned_content(image).map_err(|errno| AccessError::Io { what: "fstat of the image", errno })?;
        if pinned.is_some_and(|c| c.hash() == Hash::FsVerity && c.digest() == want) {
            return Ok(());
        }
        // The verdict `check_image` accepted these very bytes with (found by their key, which
        // `pinned_content` has just confirmed still holds) may already carry their digest.
        let accepted = pinned
            .map(|c| Key::new(self.caller.uid, c))
            .and_then(|key| self.accepted.borrow().iter().find(|(k, _)| *k == key).cloned());
        let got = match accepted {
            Some((_, Verdict { fsverity: Some(d), .. })) => d,
            _ => {
                let f = File::from(rustix::io::dup(image).map_err(|e| AccessError::Io { what: "dup", errno: e })?);
                let got = crate::fsverity::digest_file(&f).map_err(|e| AccessError::Io {
                    what: "fs-verity digest of the image copy",
                    errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
                })?;
                if let Some((key, v)) = accepted {
                    let v = Verdict { fsverity: Some(got), ..v };
                    if let Some(verdicts) = self.state_dir.as_deref().and_then(Verdicts::open) {
                        verdicts.record(&key, v);
                    }
                    // The same image named twice in this mount (two layers) is not measured again.
                    for entry in self.accepted.borrow_mut().iter_mut().filter(|(k, _)| *k == key) {
                        entry.1 = v;
                    }
                }
                got
            }
        };
        if &got != want {
            let hex = crate::fsverity::to_hex;
            return Err(AccessError::BadImage {
                reason: format!("fs-verity digest {} does not match the expected {}", hex(&got), hex(want)),
            });
        }
        Ok(())
    }

    /// A directory the caller can read, owned by the caller, on a filesystem type the policy
    /// allows, with fs.protected_hardlinks on: an overlay redirect in the caller's image can then
    /// only reach files inside the caller's own directory.
    fn open_basedir(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        let fd = self.open_as_caller("basedir", path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        self.owned_by_caller("basedir", path, fd.as_fd())?;
        // The overlay looks the directory up while the helper holds the state lock: a
        // filesystem the caller runs (FUSE) could stall it there for everyone. Only the
        // filesystem types the policy allows for targets (disk filesystems by default).
        let (magic, allowed) = self.policy_fs(fd.as_fd()).map_err(|errno| AccessError::Open {
            what: "basedir",
            path: path.into(),
            errno,
            as_caller: true,
        })?;
        if allowed.is_none() {
            return Err(AccessError::Refused {
                what: "basedir",
                path: path.into(),
                reason: format!("on a filesystem type (magic 0x{magic:x}) the helper policy does not allow"),
            });
        }
        let ph = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").unwrap_or_default();
        if ph.trim() != "1" {
            return Err(AccessError::Refused {
                what: "basedir",
                path: path.into(),
                reason: "fs.protected_hardlinks is not 1 (callers could hardlink foreign files into it)".into(),
            });
        }
        Ok(fd)
    }

    /// Never reached: [`Gate::check_request`] refuses upper dirs.
    fn open_upper(&self, _upper: &Path, _work: &Path) -> Result<(OwnedFd, OwnedFd), AccessError> {
        Err(AccessError::NotPermitted("writable overlays are not offered to unprivileged callers"))
    }

    /// `O_PATH|O_NOFOLLOW|O_DIRECTORY` as the caller, then on that pinned inode: owned by the
    /// caller, or writable by the caller while neither it nor its parent is sticky; on a
    /// filesystem type the policy allows (never procfs/sysfs/...).
    fn open_target(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        if !self.policy.features.attach_at_target {
            return Err(AccessError::Policy("attaching at a target is disabled; use --fd-out".into()));
        }
        let fd = self.open_as_caller("target", path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY)?;
        let refuse = |reason: String| AccessError::Refused { what: "target", path: path.into(), reason };
        let st = fstat("target", path, fd.as_fd())?;
        let sticky = |m: u32| m & 0o1000 != 0;
        if st.st_uid != self.caller.uid {
            if as_caller(&self.caller, || sys::may_write_fd(fd.as_fd()))?.is_err() {
                return Err(refuse(format!(
                    "owned by uid {} and not writable by the caller (uid {})",
                    st.st_uid, self.caller.uid
                )));
            }
            if sticky(st.st_mode) {
                return Err(refuse(format!("sticky directory owned by uid {}", st.st_uid)));
            }
            let parent = as_caller(&self.caller, || {
                rustix::fs::openat(&fd, "..", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            })?
            .map_err(|errno| AccessError::Open {
                what: "target parent",
                path: path.into(),
                errno,
                as_caller: true,
            })?;
            if sticky(fstat("target parent", path, parent.as_fd())?.st_mode) {
                return Err(refuse(format!("owned by uid {} inside a sticky directory", st.st_uid)));
            }
        }
        let (magic, allowed) = self.policy_fs(fd.as_fd()).map_err(|errno| AccessError::Open {
            what: "target",
            path: path.into(),
            errno,
            as_caller: true,
        })?;
        if allowed.is_none() {
            return Err(refuse(format!("on a filesystem type (magic 0x{magic:x}) the helper policy does not allow")));
        }
        Ok(fd)
    }

    /// A courier that is the caller (every id, no capabilities) connects: root must not reach
    /// sockets the caller cannot, and the receiver's `SO_PEERCRED` names the caller.
    fn connect_socket(&self, path: &Path) -> Result<FdSink, AccessError> {
        check_path_arg("--fd-out socket", path.as_os_str())?;
        Courier::spawn(self.caller.uid, self.caller.gid, CourierTarget::Path(path))
            .map(FdSink::Courier)
            .map_err(AccessError::Courier)
    }

    /// The courier takes the inherited socket and sends from it as the caller
    /// (`SCM_CREDENTIALS` name the caller).
    fn use_socket(&self, sock: OwnedFd) -> Result<FdSink, AccessError> {
        Courier::spawn(self.caller.uid, self.caller.gid, CourierTarget::Socket(sock.as_fd()))
            .map(FdSink::Courier)
            .map_err(AccessError::Courier)
    }

    fn open_userns(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        let fd = self.open_as_caller("idmap user namespace", path, OFlags::RDONLY)?;
        check_is_userns(path, fd.as_fd())?;
        self.feature(self.policy.features.idmap, "idmapped mounts")?;
        idmap::check_userns(&self.caller, path, fd.as_fd())?;
        Ok(fd)
    }

    fn check_id_maps(&self, uid: &[IdMap], gid: &[IdMap]) -> Result<(), AccessError> {
        self.feature(self.policy.features.idmap, "idmapped mounts")?;
        idmap::check_maps(&self.caller, uid, gid)
    }

    /// The caller's live records plus `adding` against its `max_mounts` and `max_loop_devices`,
    /// and the live records of all unprivileged callers (uid not 0) plus `adding` against the
    /// machine-wide caps.
    fn check_limits(&self, live: &[MountRecord], adding: Usage) -> Result<(), AccessError> {
        let helper: Vec<&MountRecord> = live.iter().filter(|r| r.uid != 0).collect();
        let count = |rs: &[&MountRecord]| {
            let loops = rs.iter().map(|r| r.loop_devices.len() as u64).sum::<u64>();
            (rs.len() as u64 + adding.mounts, loops + adding.loop_devices)
        };
        let mine: Vec<&MountRecord> = helper.iter().copied().filter(|r| r.uid == self.caller.uid).collect();
        let (mounts, loops) = count(&mine);
        let (l, m) = (&self.limits, &self.policy.machine_limits);
        if adding.mounts > 0 && mounts > u64::from(l.max_mounts) {
            return Err(AccessError::Limit { what: "mounts", value: mounts, limit: l.max_mounts.into() });
        }
        if adding.loop_devices > 0 && loops > u64::from(l.max_loop_devices) {
            return Err(AccessError::Limit { what: "loop devices", value: loops, limit: l.max_loop_devices.into() });
        }
        let (mounts, loops) = count(&helper);
        if adding.mounts > 0 && mounts > u64::from(m.max_mounts) {
            return Err(AccessError::MachineLimit { what: "mounts", value: mounts, limit: m.max_mounts.into() });
        }
        if adding.loop_devices > 0 && loops > u64::from(m.max_loop_devices) {
            let limit = m.max_loop_devices.into();
            return Err(AccessError::MachineLimit { what: "loop devices", value: loops, limit });
        }
        Ok(())
    }

    fn required_attrs(&self, writable: bool) -> MountAttrFlags {
        let ro = if writable { MountAttrFlags::empty() } else { MountAttrFlags::MOUNT_ATTR_RDONLY };
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | ro
    }

    /// After the last as-the-caller step and the idmap only CAP_SYS_ADMIN stays; after the
    /// hand-over, nothing.
    fn enter_phase(&self, phase: Phase) -> Result<(), AccessError> {
        let keep: &[caps::Capability] = match phase {
            Phase::Mount { setid: true } => KEPT_CAPS,
            Phase::Mount { setid: false } => &[caps::Capability::CAP_SYS_ADMIN],
            Phase::Done => &[],
        };
        restrict_caps(keep).map_err(|e| AccessError::Credentials(format!("dropping capabilities: {e}")))?;
        set_undumpable().map_err(|e| AccessError::Credentials(format!("PR_SET_DUMPABLE: {e}")))
    }

    fn open_umount_target(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        self.open_as_caller("umount target", path, OFlags::PATH | OFlags::NOFOLLOW)
    }

    fn check_unmount(&self, target: &Path, rec: &MountRecord) -> Result<(), AccessError> {
        if rec.uid != self.caller.uid {
            return Err(AccessError::Refused {
                what: "umount target",
                path: target.into(),
                reason: format!(
                    "mounted by cfsmount for uid {}, not for the caller (uid {})",
                    rec.uid, self.caller.uid
                ),
            });
        }
        Ok(())
    }

    /// The sandboxed builder runs as the caller, so whatever it reads (objects for `--verity`
    /// digests) is read with the caller's rights.
    fn builder_ids(&self) -> Option<(u32, u32)> {
        Some((self.caller.uid, self.caller.gid))
    }

    /// Privileged mounts always hold loop devices: the image is a sealed memory copy (which
    /// file-backed EROFS cannot use anyway), and the loop devices' disk sequence numbers are how
    /// a mount is known to be alive wherever it went (`--fd-out` included).
    fn requires_loop_devices(&self) -> bool {
        true
    }

    /// The object directories are idmapped with the identity on the caller's own uid/gid and
    /// its subordinate ranges, and nothing else: files of other owners are then unmapped, and
    /// overlay (whose mounter is root) reads them only as their "other" permission bits allow.
    fn data_idmap(&self) -> Option<(Vec<IdMap>, Vec<IdMap>)> {
        let identity = |own: u32, kind| {
            let mut maps = vec![IdMap { inside: own, outside: own, count: 1 }];
            let ranges = idmap::subid_ranges(kind, &self.caller).unwrap_or_default();
            for (start, count) in ranges.into_iter().take(32) {
                let (Ok(start), Ok(count)) = (u32::try_from(start), u32::try_from(count)) else { continue };
                let end = u64::from(start) + u64::from(count);
                let overlaps = maps.iter().any(|m| {
                    u64::from(m.outside) < end && u64::from(start) < u64::from(m.outside) + u64::from(m.count)
                });
                if !overlaps {
                    maps.push(IdMap { inside: start, outside: start, count });
                }
            }
            maps
        };
        Some((identity(self.caller.uid, idmap::IdKind::Uid), identity(self.caller.gid, idmap::IdKind::Gid)))
    }
}

/// A path argument (source, basedir, target, upper/work, idmap path): non-empty, at most
/// [`MAX_PATH_ARG`] bytes, no control characters, no leading `-`, and none of `,` `:` `\` `=`
/// (which would change meaning inside a mount option string, e.g. the legacy `lowerdir=`).
pub(crate) fn check_path_arg(what: &'static str, p: &OsStr) -> Result<(), AccessError> {
    let b = p.as_bytes();
    let bad = |reason: &str| AccessError::BadArgument {
        what,
        value: p.to_string_lossy().into_owned(),
        reason: reason.into(),
    };
    if b.is_empty() {
        return Err(bad("empty"));
    }
    if b.contains(&0) {
        return Err(bad("contains NUL"));
    }
    if b.len() > MAX_PATH_ARG {
        return Err(bad("too long"));
    }
    if b[0] == b'-' {
        return Err(bad("starts with '-'"));
    }
    if let Some(c) = b.iter().find(|c| c.is_ascii_control()) {
        return Err(bad(&format!("contains control character 0x{c:02x}")));
    }
    if let Some(c) = b.iter().find(|c| b",:\\=".contains(c)) {
        return Err(bad(&format!("contains '{}'", *c as char)));
    }
    Ok(())
}

/// A `mount.composefs -o` string and the options the one `-o` parser made of it: at most
/// [`MAX_OPTION_STRING`] bytes, no control characters; of the options, `suid`, `dev`, `exec`
/// (re-enabling what every helper mount lacks) and anything unknown are refused. Values are
/// checked later, as paths, when they are opened.
pub(crate) fn check_option_string(raw: &str, parsed: &[MountOption]) -> Result<(), AccessError> {
    let bad = |reason: String| AccessError::BadOption { option: truncate(raw), reason };
    if raw.len() > MAX_OPTION_STRING {
        return Err(bad(format!("longer than {MAX_OPTION_STRING} bytes")));
    }
    if let Some(c) = raw.bytes().find(|c| c.is_ascii_control()) {
        return Err(bad(format!("contains control character 0x{c:02x}")));
    }
    for o in parsed {
        match o {
            MountOption::Unknown { key, .. } if key.starts_with('-') => {
                return Err(bad(format!("option {key:?} starts with '-'")))
            }
            MountOption::Unknown { key, .. } => return Err(bad(format!("unknown option {key:?}"))),
            MountOption::Suid | MountOption::Dev | MountOption::Exec => {
                return Err(bad(format!(
                    "{:?} is not allowed for unprivileged callers (mounts are always nosuid,nodev)",
                    o.key()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Copies the caller's regular file `fd` (`max` bytes at most: the image size limit) into a new
/// memfd and seals it (F_SEAL_WRITE, GROW, SHRINK, SEAL); positioned at 0. With `hash`, also
/// the hash of exactly the bytes written (`Content::copy_file`: the memfd is this process's
/// alone until it is sealed, so nothing else can write into it, and its size after sealing is
/// checked equal to what was hashed); without, the kernel copies it ([`copy_plain`]). A file
/// that changes size while it is copied is refused.
fn sealed_copy(fd: BorrowedFd<'_>, max: u64, hash: bool) -> Result<(OwnedFd, Option<Content>), AccessError> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let err = |what, errno| AccessError::Io { what, errno };
    let changed = || AccessError::BadImage { reason: "the source changed size while it was copied".into() };
    let size = rustix::fs::fstat(fd).map_err(|e| err("fstat of the source", e))?.st_size as u64;
    if size > max {
        return Err(AccessError::Limit { what: "image size", value: size, limit: max });
    }
    let memfd = rustix::fs::memfd_create("cfsmount-source", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| err("memfd_create", e))?;
    let content = if hash {
        let c = Content::copy_file(fd, size, memfd.as_fd()).map_err(|e| err("copying the source", e))?;
        Some(c.ok_or_else(changed)?)
    } else if copy_plain(fd, size, memfd.as_fd()).map_err(|e| err("copying the source", e))? {
        None
    } else {
        return Err(changed());
    };
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)
        .map_err(|e| err("sealing the source copy", e))?;
    let sealed = rustix::fs::fstat(&memfd).map_err(|e| err("fstat of the source copy", e))?.st_size as u64;
    if sealed != size {
        return Err(err("copying the source", rustix::io::Errno::IO));
    }
    rustix::fs::seek(&memfd, rustix::fs::SeekFrom::Start(0)).map_err(|e| err("seek", e))?;
    Ok((memfd, content))
}

/// Copies the first `size` bytes of `fd` to `to` (a new memfd, at its file position: its start)
/// in the kernel, with `sendfile(2)` (no buffer of this process's, nothing hashed; a page of an
/// fs-verity file that fails verification is an `EIO` error). `false` if `fd` ends before
/// `size` bytes or is no longer `size` bytes long afterwards (it changed while copied).
fn copy_plain(fd: BorrowedFd<'_>, size: u64, to: BorrowedFd<'_>) -> Result<bool, rustix::io::Errno> {
    let mut offset = 0u64;
    while offset < size {
        // At most 1 GiB a call (sendfile copies up to 2 GiB - 4 KiB in one).
        let want = usize::try_from((size - offset).min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::sendfile(to, fd, Some(&mut offset), want) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rustix::fs::fstat(fd)?.st_size as u64 == size)
}

/// Copies `fd` into `file`, a new unnamed kept copy (`KeptCopies::new_copy` for `size` bytes:
/// mode 0400, open for writing, this process's alone), hashed as written
/// (`Content::copy_file`); then reopens it read-only and closes the writable fd, so that no fd
/// that can write it is left. Exactly `size` bytes, the size the copy was allowed for: `None` if
/// the file is longer or shorter by then, or the copy cannot be written or reopened (the caller
/// then makes a sealed copy instead, which applies the image size limit).
fn kept_copy(fd: BorrowedFd<'_>, file: OwnedFd, size: u64) -> Option<(OwnedFd, Content)> {
    let content = Content::copy_file(fd, size, file.as_fd()).ok()??;
    // Reopened through its /proc/self/fd link (a magic link: followed, so no O_NOFOLLOW),
    // checked to be the same file.
    let link = super::kept::proc_fd_path(file.as_fd());
    let copy = rustix::fs::open(link.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let (a, b) = (rustix::fs::fstat(&file).ok()?, rustix::fs::fstat(&copy).ok()?);
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
        return None;
    }
    drop(file);
    let private = crate::sys::map::root_read_only_copy(copy.as_fd()).unwrap_or(false);
    (private && b.st_size as u64 == content.size()).then_some((copy, content))
}

/// Bytes the vetting reads from a mapped image between two releases of its pages: bounds how
/// much of the image is resident in the helper at once (docs/helper.md "Cost"; on threads, the
/// bytes all threads read: "First mounts: fewer releases of the mapped copy").
const VET_RELEASE_EVERY: u64 = 1 << 20;

/// A remembered verdict against the caller's limits of now.
fn within_limits(v: Verdict, limits: &Limits) -> Result<(), AccessError> {
    if v.size > limits.max_image_size {
        return Err(AccessError::Limit { what: "image size", value: v.size, limit: limits.max_image_size });
    }
    if v.entries > limits.max_entries {
        return Err(AccessError::Limit { what: "image entries", value: v.entries, limit: limits.max_entries });
    }
    Ok(())
}

/// Vets the whole image with the hostile-input reader (`erofs::reader::vet_image`: every check
/// of the reader, which among others refuses unexpected `trusted.overlay.*` xattrs, malformed
/// metacopy xattrs and redirects that are not `/` + an object path — no empty, `.` or `..`
/// component; escaped `trusted.overlay.overlay.*` user xattrs come back unescaped, i.e. inert),
/// without building the tree, and refuses device nodes (other than 0/0 whiteouts).
/// Returns the number of entries of the tree the reader would build.
fn check_image_content(fd: BorrowedFd<'_>, inodes: u64, limits: &Limits, pinned: bool) -> Result<u64, AccessError> {
    let io = |what, errno| AccessError::Io { what, errno };
    let size = rustix::fs::fstat(fd).map_err(|e| io("fstat image", e))?.st_size as u64;
    if size > limits.max_image_size {
        return Err(AccessError::Limit { what: "image size", value: size, limit: limits.max_image_size });
    }
    // Every image is vetted through a read-only mapping of bytes that cannot change under it:
    // the helper's sealed copy of a caller's image (its seals), or a kept copy the gate pinned
    // (`pinned`: only root could change it). Any other image (the caller's fs-verity file, one
    // the helper built from a TOC or dumpfile) is first copied into a memfd sealed the same
    // way (`sealed_copy`, in the kernel): a page of a verity file that fails verification is
    // then an EIO error of the copy, not a SIGBUS in a mapping. The copy holds the whole image
    // (shmem, charged to the caller's memory cgroup) until the vetting ends, as an image read
    // into memory did; but the vetting releases the copy's mapping as it goes, so the helper's
    // resident set holds little of it at a time (docs/helper.md "fs-verity first mounts: vetted
    // through a sealed copy").
    let sealed = crate::sys::map::sealed_against_change(fd).map_err(|e| io("seals of the image", e))?;
    // (Not sealed: mapped as it is only if it is a kept copy the gate pinned.)
    let mappable = sealed
        || (pinned && crate::sys::map::root_read_only_copy(fd).map_err(|e| io("owner and mode of the image", e))?);
    let copy = if mappable { None } else { Some(sealed_copy(fd, limits.max_image_size, false)?.0) };
    let map = crate::sys::map::SealedMap::new(copy.as_ref().map_or(fd, |c| c.as_fd()))
        .map_err(|e| io("mapping the image", e))?;
    let bytes = map.bytes();
    if bytes.len() as u64 > limits.max_image_size {
        return Err(AccessError::Limit { what: "image size", value: bytes.len() as u64, limit: limits.max_image_size });
    }
    let mut rl = crate::erofs::reader::ReadLimits::default();
    rl.tree.max_entries =
        usize::try_from(limits.max_entries.min(inodes.saturating_mul(2) + 1024)).unwrap_or(usize::MAX);
    // The mapping is released every VET_RELEASE_EVERY bytes read (its pages leave the helper's
    // resident memory; reads map them again from the unchangeable file).
    let release = || map.release();
    let release = crate::erofs::reader::Release { every: VET_RELEASE_EVERY, hook: &release };
    let vetted = crate::erofs::reader::vet_image_releasing(bytes, &rl, release)
        .map_err(|e| AccessError::BadImage { reason: e.to_string() })?;
    if vetted.entries > limits.max_entries {
        return Err(AccessError::Limit { what: "image entries", value: vetted.entries, limit: limits.max_entries });
    }
    if let Some(path) = vetted.first_device {
        return Err(AccessError::BadImage {
            reason: format!("{path}: device node (not allowed for unprivileged callers)"),
        });
    }
    Ok(vetted.entries)
}

/// What an unprivileged caller names in `als view` / `als view-rm` (issue 14, docs/als.md
/// "Views through the helper"). Everything else a view is made of (the ALS root's layers, their
/// images and objects, the id maps) root reads from root-owned files only.
pub(crate) struct AlsViewAsk<'a> {
    /// `--user`: absent, or the caller itself.
    pub(crate) user: Option<&'a str>,
    /// `--target`: absent, or the fixed place of the caller's view.
    pub(crate) target: Option<&'a Path>,
    /// The store holding the ALS records (default /var/lib/cfsmount).
    pub(crate) store: &'a Path,
}

/// The ALS views' checks (their own functions; the rest of the gate serves `mount`/`umount`).
impl Gate {
    /// `als view` / `als view-rm` as the caller: the policy enables ALS views; the view is the
    /// caller's own (a caller with a login name), at `views_dir/NAME`; the store is a directory
    /// only root controls (every component root-owned, no symlink, writable by no one else
    /// unless sticky), so that its records, layer images and objects are root's. Returns the
    /// caller's name and the view's place.
    pub(crate) fn check_als_view(
        &self,
        ask: &AlsViewAsk<'_>,
        views_dir: &Path,
    ) -> Result<(String, PathBuf), AccessError> {
        self.feature(self.policy.features.als_view, "ALS views (features.als_view)")?;
        let Some(name) = self.caller.name.clone() else {
            return Err(AccessError::NotPermitted(
                "an ALS view is named after the caller's login name: none in /etc/passwd",
            ));
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(AccessError::NotPermitted("the caller's login name cannot name a view directory"));
        }
        if ask.user.is_some_and(|u| u != name && u != self.caller.uid.to_string()) {
            return Err(AccessError::NotPermitted("--user: unprivileged callers get their own view only"));
        }
        let place = views_dir.join(&name);
        if let Some(t) = ask.target {
            check_path_arg("view", t.as_os_str())?;
            if t != place {
                return Err(AccessError::Refused {
                    what: "view",
                    path: t.into(),
                    reason: format!("an unprivileged caller's view is at {}", place.display()),
                });
            }
        }
        check_path_arg("store", ask.store.as_os_str())?;
        // An existing ALS store (its records directory too) that only root controls; nothing is
        // created in it before this passed. One reason for every failure, so that the answer
        // tells the caller nothing about paths it cannot see.
        let records = ask.store.join(crate::als::state::STATE_DIR);
        let view = crate::als::view::check_root_owned_path;
        if ask.store.as_os_str().is_empty() || view(ask.store).and_then(|()| view(&records)).is_err() {
            return Err(AccessError::Refused {
                what: "store",
                path: ask.store.into(),
                reason: "not an ALS store root alone controls (every component a root-owned directory only root \
                         can write, holding als-records/)"
                    .into(),
            });
        }
        Ok((name, place))
    }

    /// The view about to be made: its id maps are the caller's own id and subordinate ranges
    /// only, and its mounts (the tmpfs and one per layer) stay within the caller's `max_mounts`.
    pub(crate) fn check_als_view_mounts(&self, uid: &[IdMap], gid: &[IdMap], mounts: u64) -> Result<(), AccessError> {
        idmap::check_maps(&self.caller, uid, gid)?;
        if mounts > u64::from(self.limits.max_mounts) {
            return Err(AccessError::Limit { what: "mounts", value: mounts, limit: self.limits.max_mounts.into() });
        }
        Ok(())
    }

    /// `view-rm`: only the caller's own view (the view record's uid).
    pub(crate) fn check_als_view_owner(&self, target: &Path, uid: u32) -> Result<(), AccessError> {
        if uid != self.caller.uid {
            return Err(AccessError::Refused {
                what: "view",
                path: target.into(),
                reason: format!("the view of uid {uid}, not the caller's (uid {})", self.caller.uid),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileged::verdicts::ContentHasher;

    #[test]
    fn strict_path_checks() {
        let ok = |p: &str| check_path_arg("t", OsStr::new(p)).is_ok();
        assert!(ok("/home/u/mnt"));
        assert!(ok("relative/dir.d_1"));
        for bad in ["", "-o", "/a,b", "/a:b", "/a\\b", "/a=b", "/a\nb", "/a\tb", "/a\x7fb"] {
            assert!(!ok(bad), "accepted {bad:?}");
        }
        assert!(!ok(&"a".repeat(MAX_PATH_ARG + 1)));
    }

    #[test]
    fn option_checks_on_the_parsed_list() {
        use MountOption as O;
        let good = [O::Basedir("/o".into()), O::Ro, O::Verity, O::Digest("ab".into()), O::Idmap("/p".into())];
        assert!(check_option_string("basedir=/o,ro,verity,digest=ab,idmap=/p", &good).is_ok());
        let u = |k: &str| O::Unknown { key: k.into(), value: None };
        for (list, why) in [
            (vec![O::Suid], "not allowed"),
            (vec![O::Dev], "not allowed"),
            (vec![O::Exec], "not allowed"),
            (vec![u("loop")], "unknown option"),
            (vec![u("-ro")], "starts with '-'"),
        ] {
            let e = check_option_string("x", &list).expect_err(why).to_string();
            assert!(e.contains(why), "{list:?}: {e}");
        }
        let e = check_option_string("basedir=/o\n", &[O::Basedir("/o\n".into())]).unwrap_err().to_string();
        assert!(e.contains("control character"), "{e}");
        let long = format!("basedir=/{}", "a".repeat(MAX_OPTION_STRING));
        assert!(check_option_string(&long, &[]).unwrap_err().to_string().contains("longer than"));
    }

    /// A kept copy (super::kept) is written, hashed as written, left with only a read-only fd,
    /// and keyed by the gate that pinned it like a sealed copy.
    #[test]
    fn a_kept_copy_is_read_only_hashed_as_written_and_keyed() {
        use std::io::{Read, Write};
        let Some(state) = crate::sys::map::root_tmpfs_dir() else { return };
        std::fs::set_permissions(state.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let bytes: Vec<u8> = (0..(2 * (1 << 20) + 17)).map(|i| (i % 253) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        let kept = KeptCopies::in_dir_for_tests(state.path(), 1 << 30).unwrap();
        let file = kept.new_copy(bytes.len() as u64).unwrap();
        let (copy, content) = kept_copy(f.as_fd(), file, bytes.len() as u64).expect("copied");
        assert_eq!(content, Content::of_file(f.as_fd(), bytes.len() as u64).unwrap().unwrap());
        let fl = rustix::fs::fcntl_getfl(&copy).unwrap();
        assert_eq!(fl & OFlags::ACCMODE, OFlags::RDONLY, "only a read-only fd is left");
        assert!(rustix::io::write(&copy, b"x").is_err());
        let mut back = Vec::new();
        File::from(rustix::io::dup(&copy).unwrap()).read_to_end(&mut back).unwrap();
        assert!(back == bytes);
        assert!(crate::sys::map::unchangeable(copy.as_fd()).unwrap());
        // A file longer than the copy was allowed for (it grew): no kept copy.
        let n = bytes.len() as u64;
        assert!(kept_copy(f.as_fd(), kept.new_copy(n - 1).unwrap(), n - 1).is_none());
        // One shorter than the copy was allowed for (it shrank): no kept copy either.
        assert!(kept_copy(f.as_fd(), kept.new_copy(n + 1).unwrap(), n + 1).is_none());
        let caller = Caller { uid: 1000, gid: 1000, groups: vec![], name: None };
        let g = Gate::new(HelperContext { caller, policy: Policy::builtin().unwrap() });
        g.pin(&copy, content).unwrap();
        assert_eq!(g.key_of(copy.as_fd()).unwrap(), Some(Key::new(1000, content)));
        // Made writable for others (by root): no longer trusted.
        rustix::fs::fchmod(&copy, Mode::from_raw_mode(0o644)).unwrap();
        assert_eq!(g.key_of(copy.as_fd()).unwrap(), None);
    }

    #[test]
    fn the_copy_is_sealed_hashed_as_written_and_keyed_only_by_the_gate_that_made_it() {
        use rustix::fs::{MemfdFlags, SealFlags};
        use std::io::{Read, Seek, Write};
        // Many pieces of the copy (128 KiB each), not a multiple of one.
        let bytes: Vec<u8> = (0..(3 * (1 << 20) + 4097)).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        let reopen = |f: &mut File| {
            f.rewind().unwrap();
            OwnedFd::from(f.try_clone().unwrap())
        };
        let (copy, content) = sealed_copy(reopen(&mut f).as_fd(), bytes.len() as u64, true).unwrap();
        let content = content.expect("hashed");
        let mut want = ContentHasher::new();
        want.update(&bytes);
        assert_eq!(content, want.finish());
        let seals = rustix::fs::fcntl_get_seals(&copy).unwrap();
        assert!(seals.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL));
        let mut back = Vec::new();
        File::from(rustix::io::dup(&copy).unwrap()).read_to_end(&mut back).unwrap();
        assert!(back == bytes, "the copy holds the source's bytes");
        // Over the size limit: refused.
        let e = sealed_copy(reopen(&mut f).as_fd(), bytes.len() as u64 - 1, true).unwrap_err().to_string();
        assert!(e.contains("image size"), "{e}");
        // Without a hash the kernel copies it (sendfile): the same bytes, sealed, at offset 0.
        let (plain, none) = sealed_copy(reopen(&mut f).as_fd(), bytes.len() as u64, false).unwrap();
        assert!(none.is_none());
        assert!(crate::sys::map::sealed_against_change(plain.as_fd()).unwrap());
        let mut back = Vec::new();
        File::from(rustix::io::dup(&plain).unwrap()).read_to_end(&mut back).unwrap();
        assert!(back == bytes, "the plain copy holds the source's bytes");
        // A source that ends before the size it had (or is longer by the end of the copy) is
        // not a copy of anything.
        let short = rustix::fs::memfd_create("s", MemfdFlags::CLOEXEC).unwrap();
        File::from(rustix::io::dup(&short).unwrap()).write_all(&bytes[..1000]).unwrap();
        let to = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        assert!(!copy_plain(short.as_fd(), 1001, to.as_fd()).unwrap(), "ended early");
        let to = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        assert!(!copy_plain(short.as_fd(), 999, to.as_fd()).unwrap(), "longer than its size");
        let to = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC).unwrap();
        assert!(copy_plain(short.as_fd(), 1000, to.as_fd()).unwrap());

        let caller = Caller { uid: 1000, gid: 1000, groups: vec![], name: None };
        let g = Gate::new(HelperContext { caller, policy: Policy::builtin().unwrap() });
        assert_eq!(g.key_of(copy.as_fd()).unwrap(), None, "not remembered yet");
        g.pin(&copy, content).unwrap();
        let key = Key::new(1000, content);
        assert_eq!(g.key_of(copy.as_fd()).unwrap(), Some(key.clone()));
        let dup = rustix::io::dup(&copy).unwrap();
        assert_eq!(g.key_of(dup.as_fd()).unwrap(), Some(key), "another fd of the same copy");
        // The same bytes in a sealed memfd the gate did not make: no key (vetted in full).
        let other = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        File::from(rustix::io::dup(&other).unwrap()).write_all(&bytes).unwrap();
        rustix::fs::fcntl_add_seals(&other, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK).unwrap();
        assert_eq!(g.key_of(other.as_fd()).unwrap(), None);
        // Not sealed, or not sealable: no key.
        let unsealed = rustix::fs::memfd_create("u", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        assert_eq!(g.key_of(unsealed.as_fd()).unwrap(), None);
        assert_eq!(g.key_of(f.as_fd()).unwrap(), None);
    }

    /// The EROFS image of a dumpfile.
    fn image_of(dump: &[u8]) -> Vec<u8> {
        let tree = crate::input::dump::parse(dump, &Default::default()).unwrap();
        let mut img = Vec::new();
        crate::erofs::writer::write_image(&tree, &Default::default(), &mut img).unwrap();
        img
    }

    /// An image the gate cannot map (not sealed; a pinned file that is not a kept copy, as the
    /// caller's fs-verity file is) is vetted through a sealed copy: accepted or refused on its
    /// bytes as a sealed image is, and the file itself is neither changed nor mapped.
    #[test]
    fn an_image_that_cannot_be_mapped_is_vetted_through_a_sealed_copy() {
        use std::io::{Read, Write};
        let limits = Limits { max_mounts: 1, max_loop_devices: 1, max_image_size: 1 << 20, max_entries: 100 };
        let file_of = |img: &[u8]| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(img).unwrap();
            f
        };
        let good = image_of(b"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 5 100644 1 0 0 0 0.0 ab/cdef - -\n");
        let f = file_of(&good);
        assert!(!crate::sys::map::unchangeable(f.as_fd()).unwrap(), "a plain file: not mappable");
        for pinned in [false, true] {
            assert_eq!(check_image_content(f.as_fd(), 2, &limits, pinned).unwrap(), 2, "pinned {pinned}");
        }
        let mut back = Vec::new();
        File::from(rustix::io::dup(&f).unwrap()).read_to_end(&mut back).unwrap();
        assert!(back.is_empty(), "read with positioned reads only: the file's offset is still at its end");
        // A device node: refused through the copy as through a sealed image.
        let dev = image_of(b"/ 4096 40755 2 0 0 0 0.0 - - -\n/d 0 20644 1 0 0 259 0.0 - - -\n");
        let e = check_image_content(file_of(&dev).as_fd(), 2, &limits, true).unwrap_err().to_string();
        assert!(e.contains("device node"), "{e}");
        // Over the size limit: refused before anything is copied.
        let small = Limits { max_image_size: good.len() as u64 - 1, ..limits.clone() };
        let e = check_image_content(f.as_fd(), 2, &small, false).unwrap_err().to_string();
        assert!(e.contains("image size"), "{e}");
    }

    /// `--digest` on an accepted copy: the digest computed once is kept in that copy's verdict,
    /// and a later gate (the next mount of the same bytes) compares with it instead of computing
    /// it again; a copy not accepted gets no verdict from a digest check.
    #[test]
    fn an_accepted_copys_digest_is_remembered_in_its_verdict() {
        use std::io::Write;
        let img = image_of(b"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 5 100644 1 0 0 0 0.0 ab/cdef - -\n");
        let good = crate::fsverity::digest_bytes(&img);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&img).unwrap();
        let state = tempfile::tempdir().unwrap();
        let caller = Caller { uid: 1000, gid: 1000, groups: vec![], name: None };
        let gate = || Gate::new(HelperContext { caller: caller.clone(), policy: Policy::builtin().unwrap() });
        let copy_of = |g: &Gate| {
            let (copy, content) = sealed_copy(f.as_fd(), img.len() as u64, true).unwrap();
            g.pin(&copy, content.unwrap()).unwrap();
            copy
        };
        let verdict_file = |g: &Gate, copy: &OwnedFd| {
            let key = g.key_of(copy.as_fd()).unwrap().unwrap();
            state.path().join("verdicts").join(key.file_name())
        };
        // Not accepted (no check_image): the digest is computed and checked, nothing recorded.
        let g = gate().with_verdicts(state.path());
        let copy = copy_of(&g);
        g.check_digest(copy.as_fd(), &good).unwrap();
        assert!(!verdict_file(&g, &copy).exists());
        // Accepted, then checked: the verdict carries the digest.
        g.check_image(copy.as_fd()).unwrap();
        let path = verdict_file(&g, &copy);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("fsverity="), "{text}");
        let e = g.check_digest(copy.as_fd(), &[7; 32]).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // The digest of the bytes is kept, whatever the caller claimed.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(&format!(" fsverity={}\n", crate::fsverity::to_hex(&good))), "{text}");
        std::fs::remove_file(&path).unwrap();
        // Taken from the gate's own entry now (the same image twice in one mount): the file
        // is not written again.
        g.check_digest(copy.as_fd(), &good).unwrap();
        assert!(!path.exists());
        // The next mount (a new gate) vets again, and its digest check records again.
        let g = gate().with_verdicts(state.path());
        let copy = copy_of(&g);
        g.check_image(copy.as_fd()).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("fsverity="));
        g.check_digest(copy.as_fd(), &good).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(&format!(" fsverity={}\n", crate::fsverity::to_hex(&good))), "{text}");
        // The next mount's gate takes the digest from the verdict: shown by a verdict whose
        // recorded digest is another one (only the helper's own file could say so).
        let other = [0x5a; 32];
        std::fs::write(&path, text.replace(&crate::fsverity::to_hex(&good), &crate::fsverity::to_hex(&other))).unwrap();
        let g = gate().with_verdicts(state.path());
        let copy = copy_of(&g);
        g.check_image(copy.as_fd()).unwrap();
        g.check_digest(copy.as_fd(), &other).unwrap();
        let e = g.check_digest(copy.as_fd(), &good).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // A refused image (a device node) gets no verdict from a digest check either.
        let devimg = image_of(b"/ 4096 40755 2 0 0 0 0.0 - - -\n/null 0 20666 1 0 0 259 0.0 - - -\n");
        let mut df = tempfile::tempfile().unwrap();
        df.write_all(&devimg).unwrap();
        let g = gate().with_verdicts(state.path());
        let (copy, content) = sealed_copy(df.as_fd(), devimg.len() as u64, true).unwrap();
        g.pin(&copy, content.unwrap()).unwrap();
        let e = g.check_image(copy.as_fd()).unwrap_err().to_string();
        assert!(e.contains("device node"), "{e}");
        g.check_digest(copy.as_fd(), &crate::fsverity::digest_bytes(&devimg)).unwrap();
        assert!(!verdict_file(&g, &copy).exists(), "a refused image got a verdict");
        // Without verdicts: nothing is written, and the digest computed once answers this mount's
        // later check (a wrong one is still refused).
        let g = gate();
        let copy = copy_of(&g);
        g.check_image(copy.as_fd()).unwrap();
        g.check_digest(copy.as_fd(), &good).unwrap();
        assert!(g.check_digest(copy.as_fd(), &other).is_err());
    }

    #[test]
    fn only_a_file_the_kernel_still_measures_has_a_verity_key() {
        use std::io::Write;
        // The file a test writes lives on tmpfs or a filesystem without fs-verity here: it has no
        // verity digest, so it is copied, and a pin claiming one is not believed (the gate
        // measures again before it uses a key or skips a digest computation).
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"image bytes").unwrap();
        let caller = Caller { uid: 1000, gid: 1000, groups: vec![], name: None };
        let g = Gate::new(HelperContext { caller, policy: Policy::builtin().unwrap() });
        assert_eq!(g.verity_digest(f.as_fd()), None);
        let fd = OwnedFd::from(f.try_clone().unwrap());
        let claimed = Content::fs_verity([7; 32], 11);
        g.pin(&fd, claimed).unwrap();
        assert_eq!(g.pinned_content(f.as_fd()).unwrap(), None);
        assert_eq!(g.key_of(f.as_fd()).unwrap(), None);
        let e = g.check_digest(f.as_fd(), &[7; 32]).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn limits_count_the_callers_live_mounts_and_what_is_added() {
        let mut policy = Policy::builtin().unwrap();
        policy.limits.max_mounts = 2;
        policy.limits.max_loop_devices = 3;
        let caller = Caller { uid: 1000, gid: 1000, groups: vec![], name: None };
        let g = Gate::new(HelperContext { caller, policy });
        let rec = |uid, loops: usize| MountRecord {
            mount_id: 1,
            mount_id_unique: true,
            target: None,
            uid,
            loop_devices: vec!["/dev/loop0".into(); loops],
            loop_diskseq: vec![],
            erofs_mount_ids: vec![],
            sources: vec![],
            created: 0,
            mnt_ns: None,
        };
        let one = Usage { mounts: 1, loop_devices: 1 };
        assert!(g.check_limits(&[rec(1000, 1)], one).is_ok());
        assert!(g.check_limits(&[rec(1000, 1), rec(1000, 1)], one).is_err(), "third mount");
        assert!(g.check_limits(&[rec(1000, 1), rec(2000, 5), rec(2000, 5)], one).is_ok(), "others do not count");
        let e = g.check_limits(&[rec(1000, 1)], Usage { mounts: 1, loop_devices: 3 }).unwrap_err().to_string();
        assert!(e.contains("loop devices 4 > 3"), "{e}");
        // Machine-wide: every unprivileged caller's mounts together; root's own do not count.
        let mut policy = Policy::builtin().unwrap();
        policy.machine_limits.max_mounts = 2;
        let caller = Caller { uid: 1000, gid: 1000, groups: vec![], name: None };
        let g = Gate::new(HelperContext { caller, policy });
        assert!(g.check_limits(&[rec(2000, 1), rec(0, 1), rec(0, 1)], one).is_ok());
        let e = g.check_limits(&[rec(2000, 1), rec(3000, 1)], one).unwrap_err().to_string();
        assert!(e.contains("machine-wide limit exceeded: mounts of all unprivileged users 3 > 2"), "{e}");
    }
}
