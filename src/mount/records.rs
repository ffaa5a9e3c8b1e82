//! Mount records: one JSON file per mount in the state directory (`/run/cfsmount`, root-owned
//! 0700), named by the overlay's mount id. This module is their one reader and writer: every
//! read checks the owner, the mode and the size in one place, and [`liveness`] is the one rule
//! that says whether a recorded mount still exists.

use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

use super::error::MountError;

/// Largest record file read (a record is a few hundred bytes).
const MAX_RECORD_SIZE: u64 = 64 * 1024;
/// `STATX_MNT_ID_UNIQUE` (Linux 6.8): a 64-bit mount id never reused while the system runs.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;
/// `STATX_ATTR_MOUNT_ROOT`: the file is the root of a mount.
const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;

/// A mount id as statx reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MountId {
    pub(crate) id: u64,
    /// `STATX_MNT_ID_UNIQUE` (never reused) rather than the classic, reusable `STATX_MNT_ID`.
    pub(crate) unique: bool,
    /// The file statx looked at is the root of its mount.
    pub(crate) is_mount_root: bool,
}

/// The mount id of the mount holding `fd` (statx with AT_EMPTY_PATH), preferring the unique id.
pub(crate) fn mount_id(fd: BorrowedFd<'_>) -> Result<MountId, Errno> {
    let root = |st: &rustix::fs::Statx| {
        st.stx_attributes_mask.bits() & STATX_ATTR_MOUNT_ROOT != 0
            && st.stx_attributes.bits() & STATX_ATTR_MOUNT_ROOT != 0
    };
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE))?;
    if st.stx_mask & STATX_MNT_ID_UNIQUE != 0 {
        return Ok(MountId { id: st.stx_mnt_id, unique: true, is_mount_root: root(&st) });
    }
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    if st.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return Err(Errno::NOSYS);
    }
    Ok(MountId { id: st.stx_mnt_id, unique: false, is_mount_root: root(&st) })
}

/// One mount made by cfsmount. Fields added over time default when absent; the aliases read
/// the first record format.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub(crate) struct MountRecord {
    /// statx mount id of the overlay (STATX_MNT_ID_UNIQUE when the kernel has it).
    #[serde(alias = "mnt_id")]
    pub(crate) mount_id: u64,
    /// Whether `mount_id` is the unique (never reused) id.
    #[serde(default)]
    pub(crate) mount_id_unique: bool,
    /// Where it was attached (None: handed out with --fd-out, or detached while still busy).
    #[serde(default)]
    pub(crate) target: Option<PathBuf>,
    /// Real uid of the caller.
    #[serde(alias = "caller_uid")]
    pub(crate) uid: u32,
    /// Loop devices used (empty for file-backed EROFS), one per layer that needed one.
    #[serde(default)]
    pub(crate) loop_devices: Vec<PathBuf>,
    /// Their disk sequence numbers (same order; empty on kernels without BLKGETDISKSEQ): how a
    /// record without a usable target is known to be live (see [`liveness`]).
    #[serde(default)]
    pub(crate) loop_diskseq: Vec<u64>,
    /// statx mount ids of the (detached) EROFS mounts, lowest layer first.
    #[serde(default)]
    pub(crate) erofs_mount_ids: Vec<u64>,
    /// The sources as given.
    #[serde(default)]
    pub(crate) sources: Vec<PathBuf>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub(crate) created: u64,
    /// Inode of the mount namespace the target was resolved in (`/proc/self/ns/mnt`).
    #[serde(default)]
    pub(crate) mnt_ns: Option<u64>,
}

impl MountRecord {
    fn file_name(mount_id: u64) -> String {
        format!("{mount_id}.json")
    }
}

/// Identity (nsfs inode) of our mount namespace.
pub(crate) fn own_mnt_ns() -> Option<u64> {
    rustix::fs::stat("/proc/self/ns/mnt").ok().map(|st| st.st_ino)
}

/// Whether a recorded mount still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Live,
    Dead,
    /// Cannot be told from here (a mount handed out without a loop device to watch).
    Unknown,
}

/// The liveness rule shared by the limits, the pruning of stale records and umount. It never
/// resolves a recorded path (a path the caller controls can be renamed away, or be slow):
/// - a mount on loop devices is live while any of them still carries the recorded disk sequence
///   number: the EROFS superblock holds the device, AUTOCLEAR releases it when the last mount of
///   that superblock is gone, wherever it was attached, and a device configured again has a new
///   diskseq (privileged mounts always use loop devices, so this decides all of them);
/// - a mount without one (file-backed EROFS, root's mounts) attached in our mount namespace is
///   live while `statmount` finds its unique mount id in the namespace (Linux 6.8+);
/// - anything else cannot be told from here: unknown.
pub(crate) fn liveness(r: &MountRecord) -> Liveness {
    if !r.loop_devices.is_empty() && r.loop_diskseq.len() == r.loop_devices.len() {
        let any = r
            .loop_devices
            .iter()
            .zip(&r.loop_diskseq)
            .any(|(p, seq)| super::loopdev::number_of(p).is_some_and(|n| super::loopdev::still_bound(n, *seq)));
        return if any { Liveness::Live } else { Liveness::Dead };
    }
    if r.mount_id_unique && r.target.is_some() && r.mnt_ns.is_some() && r.mnt_ns == own_mnt_ns() {
        return match crate::sys::mount::mount_in_our_namespace(r.mount_id) {
            Some(true) => Liveness::Live,
            Some(false) => Liveness::Dead,
            None => Liveness::Unknown,
        };
    }
    Liveness::Unknown
}

/// The state directory, opened and checked: owned by our effective uid, not group/world-writable.
pub(crate) struct RecordStore {
    path: PathBuf,
    dir: OwnedFd,
    owner: u32,
}

impl RecordStore {
    /// Opens the store at `path`, creating the directory (0700) when `create` is set. Without
    /// `create`, a missing directory is `None` (no mount was ever recorded there).
    pub(crate) fn open(path: &Path, create: bool) -> Result<Option<RecordStore>, MountError> {
        let err = |errno: Errno| MountError::StateDir { path: path.to_path_buf(), reason: errno.to_string() };
        if create {
            match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(err(e)),
            }
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let st = rustix::fs::fstat(&dir).map_err(err)?;
        let owner = rustix::process::geteuid().as_raw();
        if st.st_uid != owner || st.st_mode & 0o022 != 0 {
            return Err(MountError::StateDir {
                path: path.to_path_buf(),
                reason: format!(
                    "must be owned by uid {owner} and not group/world-writable (owner {}, mode {:o})",
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            });
        }
        Ok(Some(RecordStore { path: path.to_path_buf(), dir, owner }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or replaces) the record of `rec.mount_id` atomically (temporary file + rename).
    pub(crate) fn write(&self, rec: &MountRecord) -> Result<(), MountError> {
        let name = MountRecord::file_name(rec.mount_id);
        let tmp = format!(".{name}.tmp");
        let data = serde_json::to_vec_pretty(rec).map_err(|e| MountError::Record { reason: e.to_string() })?;
        let io = |e: Errno| MountError::Record { reason: format!("{name}: {e}") };
        let fd = rustix::fs::openat(
            &self.dir,
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
                    let _ = rustix::fs::unlinkat(&self.dir, &tmp, AtFlags::empty());
                    return Err(io(e));
                }
            }
        }
        drop(fd);
        rustix::fs::renameat(&self.dir, &tmp, &self.dir, &name).map_err(|e| {
            let _ = rustix::fs::unlinkat(&self.dir, &tmp, AtFlags::empty());
            io(e)
        })
    }

    /// The record of `mount_id`, if there is one. A record file that is not a regular file owned
    /// by the store's owner, not writable by others and at most 64 KiB is never trusted.
    pub(crate) fn read(&self, mount_id: u64) -> Result<Option<MountRecord>, MountError> {
        let name = MountRecord::file_name(mount_id);
        let bad = |reason: String| MountError::Record { reason: format!("{name}: {reason}") };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.dir, &name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| bad(e.to_string()))?;
        if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()
            || st.st_uid != self.owner
            || st.st_mode & 0o022 != 0
        {
            return Err(bad("not a regular file of the state directory's owner".into()));
        }
        if st.st_size as u64 > MAX_RECORD_SIZE {
            return Err(bad(format!("larger than {MAX_RECORD_SIZE} bytes")));
        }
        let mut text = Vec::new();
        std::fs::File::from(fd).take(MAX_RECORD_SIZE).read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
        let rec: MountRecord = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if rec.mount_id != mount_id {
            return Err(bad(format!("names mount {}", rec.mount_id)));
        }
        Ok(Some(rec))
    }

    /// Every record that [`RecordStore::read`] accepts (the others are skipped, never trusted).
    pub(crate) fn list(&self) -> Vec<MountRecord> {
        let Ok(fd) =
            rustix::fs::openat(&self.dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return Vec::new();
        };
        let Ok(dir) = rustix::fs::Dir::new(fd) else { return Vec::new() };
        let mut out = Vec::new();
        for ent in dir.flatten() {
            let name = ent.file_name().to_bytes();
            let id = std::str::from_utf8(name).ok().and_then(|n| n.strip_suffix(".json")).and_then(|i| i.parse().ok());
            if let Some(Ok(Some(rec))) = id.map(|id| self.read(id)) {
                out.push(rec);
            }
        }
        out
    }

    /// Takes the store's lock (an exclusive `flock` on the state directory itself, through a
    /// descriptor of its own; no file is created), held until the returned fd is dropped:
    /// checks against the records, the mount they allow and the record it adds happen under
    /// it, so that simultaneous requests are counted one after the other.
    pub(crate) fn lock(&self) -> Result<OwnedFd, MountError> {
        let err = |e: Errno| MountError::StateDir { path: self.path.clone(), reason: format!("locking: {e}") };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, ".", flags, Mode::empty()).map_err(err)?;
        loop {
            match rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(fd),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(err(e)),
            }
        }
    }

    /// Removes the record of `mount_id` (absent is fine).
    pub(crate) fn remove(&self, mount_id: u64) {
        let _ = rustix::fs::unlinkat(&self.dir, MountRecord::file_name(mount_id), AtFlags::empty());
    }

    /// Removes the records of mounts that are gone (unmounted behind our back, e.g. with plain
    /// `umount`, or an `--fd-out` mount whose receiver dropped it): those [`liveness`] finds
    /// dead. Records it cannot judge are kept.
    pub(crate) fn prune(&self) {
        for rec in self.list() {
            if liveness(&rec) == Liveness::Dead {
                self.remove(rec.mount_id);
            }
        }
    }
}
