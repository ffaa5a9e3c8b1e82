//! `cfsmount oci mount` in privileged mode: the translation of "image DIGEST of the caller's
//! store" into an ordinary helper mount request (`images/<hex>/image.cfs` over `objects/`), and
//! the resolution of any other name in a child that is the caller ([`resolve_as_caller`]).
//!
//! Nothing here grants anything: every file is opened with the caller's credentials and checked
//! on the opened inode, and the request then goes through the same gate as `cfsmount mount`
//! (image copied into a sealed memfd and vetted as hostile, object directory owned by the caller
//! and idmapped, target ownership, limits). The store's records (image.json) are the caller's
//! to write: the recorded fs-verity digest can only add a check, never remove one. What these
//! checks add over `mount images/<hex>/image.cfs --basedir objects` is that the named store is
//! the caller's (a store another user lets the caller read is refused, rather than mounted as
//! the caller's), and that the digest names an image the store holds (docs/oci.md).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use super::caller::{as_caller, Caller};
use super::gate::check_path_arg;
use crate::mount::access::AccessError;
use crate::oci::Sha256;
use crate::store::repo::ImageInfo;

/// Largest image.json read by the helper (the store writes a few hundred bytes).
const MAX_IMAGE_JSON: u64 = 64 << 10;

/// An image of the caller's store, checked as the caller, ready to become a mount request.
#[derive(Debug)]
pub(crate) struct StoreImage {
    /// `STORE/images/<hex>/image.cfs`.
    pub(crate) image: PathBuf,
    /// `STORE/objects`.
    pub(crate) objects: PathBuf,
    /// fs-verity digest the store recorded for an image sealed with fs-verity (an extra check).
    pub(crate) digest: Option<[u8; 32]>,
    /// The store's lock, held shared while mounting: `store gc` (exclusive) cannot remove
    /// objects of an image while the helper mounts it.
    _lock: OwnedFd,
}

/// The caller's default store: `~/.local/share/cfsmount` under the home directory that
/// /etc/passwd gives for the caller's uid (the environment is the caller's, so `HOME` and
/// `XDG_DATA_HOME` are not read in privileged mode).
pub(crate) fn default_store(caller: &Caller) -> Result<PathBuf, AccessError> {
    let text = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| AccessError::Io { what: "reading /etc/passwd", errno: io_errno(&e) })?;
    let home = text
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[2].parse::<u32>().ok() == Some(caller.uid))
        .map(|f| PathBuf::from(f[5]))
        .filter(|h| h.is_absolute());
    match home {
        Some(h) => Ok(h.join(".local/share/cfsmount")),
        None => Err(AccessError::BadArgument {
            what: "store",
            value: String::new(),
            reason: format!("no --store given and /etc/passwd has no absolute home directory for uid {}", caller.uid),
        }),
    }
}

/// Opens image `digest` of the store at `store` (absolute) as the caller and checks, each on
/// the opened inode: the store root, `images/`, `images/<hex>/` (not a symlink), `image.cfs`
/// (a regular file, not a symlink), `objects/` (searchable by others) and `lock` are all owned
/// by the caller; the lock is taken shared (refused at once while `oci rm`/`store gc` hold it exclusively).
pub(crate) fn open_store_image(caller: &Caller, store: &Path, digest: &Sha256) -> Result<StoreImage, AccessError> {
    check_path_arg("store", store.as_os_str())?;
    let hex = digest.hex();
    let dir = OFlags::PATH | OFlags::DIRECTORY;
    let root = open_owned(caller, None, store, dir, store)?;
    let images = open_owned(caller, Some(root.as_fd()), Path::new("images"), dir | OFlags::NOFOLLOW, store)?;
    let image_dir = store.join("images").join(&hex);
    let imgdir = match open_owned(caller, Some(images.as_fd()), Path::new(&hex), dir | OFlags::NOFOLLOW, &image_dir) {
        Err(AccessError::Open { errno: rustix::io::Errno::NOENT, .. }) => {
            return Err(AccessError::Refused {
                what: "store",
                path: store.into(),
                reason: format!("no image {digest} in the store (import it with `cfsmount oci import`)"),
            })
        }
        Err(AccessError::Open { errno: rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR, .. }) => {
            return Err(refused(&image_dir, "not a directory (a symlink?)".into()))
        }
        other => other?,
    };
    let image = image_dir.join("image.cfs");
    let cfs =
        open_owned(caller, Some(imgdir.as_fd()), Path::new("image.cfs"), OFlags::PATH | OFlags::NOFOLLOW, &image)?;
    if file_type(&cfs, &image)? != FileType::RegularFile {
        return Err(refused(&image, "not a regular file".into()));
    }
    let objects = store.join("objects");
    let objfd = open_owned(caller, Some(root.as_fd()), Path::new("objects"), dir | OFlags::NOFOLLOW, &objects)?;
    // The overlay reads objects with "other" rights (the object directory is idmapped onto the
    // caller's ids only and the mounter keeps no DAC capability): say so instead of EACCES later.
    let st = rustix::fs::fstat(&objfd).map_err(|errno| open_err(&objects, errno))?;
    if st.st_mode & 0o001 == 0 {
        return Err(refused(
            &objects,
            format!(
                "mode {:04o}: the helper's overlay reads objects with others' rights (chmod 0755)",
                st.st_mode & 0o7777
            ),
        ));
    }
    let lock_path = store.join("lock");
    let lock =
        open_owned(caller, Some(root.as_fd()), Path::new("lock"), OFlags::RDONLY | OFlags::NOFOLLOW, &lock_path)?;
    if file_type(&lock, &lock_path)? != FileType::RegularFile {
        return Err(refused(&lock_path, "not a regular file".into()));
    }
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockShared).map_err(|errno| {
        if errno == rustix::io::Errno::WOULDBLOCK {
            refused(&lock_path, "held exclusively (`oci rm` or `store gc` running); try again".into())
        } else {
            AccessError::Io { what: "flock of the store lock", errno }
        }
    })?;
    let digest = recorded_digest(caller, imgdir.as_fd(), &image_dir, digest)?;
    Ok(StoreImage { image, objects, digest, _lock: lock })
}

/// The fs-verity digest recorded in `image.json` when the store sealed the image with
/// fs-verity: the caller's record, so it may only add a check (the mount then requires the
/// image's digest to be this one, and every object to carry fs-verity). The record must name
/// the image it describes.
fn recorded_digest(
    caller: &Caller,
    imgdir: BorrowedFd<'_>,
    image_dir: &Path,
    digest: &Sha256,
) -> Result<Option<[u8; 32]>, AccessError> {
    use std::io::Read;
    let path = image_dir.join("image.json");
    let fd = open_owned(caller, Some(imgdir), Path::new("image.json"), OFlags::RDONLY | OFlags::NOFOLLOW, &path)?;
    let st = rustix::fs::fstat(&fd).map_err(|errno| open_err(&path, errno))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size as u64 > MAX_IMAGE_JSON {
        return Err(refused(&path, format!("not a regular file of at most {MAX_IMAGE_JSON} bytes")));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_IMAGE_JSON)
        .read_to_end(&mut bytes)
        .map_err(|e| AccessError::Io { what: "reading image.json", errno: io_errno(&e) })?;
    let info: ImageInfo = serde_json::from_slice(&bytes).map_err(|e| refused(&path, e.to_string()))?;
    if info.manifest != digest.to_string() {
        return Err(refused(&path, format!("describes {}, not {digest}", info.manifest)));
    }
    if !info.verity_enabled {
        return Ok(None);
    }
    match Sha256::from_hex(&info.fsverity) {
        Some(d) => Ok(Some(d.0)),
        None => Err(refused(&path, "fsverity is not 64 lower-case hex digits".into())),
    }
}

/// `openat(dirfd or cwd, name, flags)` as the caller, then: owned by the caller.
fn open_owned(
    caller: &Caller,
    dirfd: Option<BorrowedFd<'_>>,
    name: &Path,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, AccessError> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let fd = as_caller(caller, || match dirfd {
        Some(d) => rustix::fs::openat(d, name, flags, Mode::empty()),
        None => rustix::fs::open(name, flags, Mode::empty()),
    })?
    .map_err(|errno| open_err(shown, errno))?;
    let st = rustix::fs::fstat(&fd).map_err(|errno| open_err(shown, errno))?;
    if st.st_uid != caller.uid {
        return Err(refused(shown, format!("owned by uid {}, not by the caller (uid {})", st.st_uid, caller.uid)));
    }
    Ok(fd)
}

fn file_type(fd: &OwnedFd, shown: &Path) -> Result<FileType, AccessError> {
    let st = rustix::fs::fstat(fd).map_err(|errno| open_err(shown, errno))?;
    Ok(FileType::from_raw_mode(st.st_mode))
}

fn open_err(path: &Path, errno: rustix::io::Errno) -> AccessError {
    AccessError::Open { what: "store", path: path.into(), errno, as_caller: true }
}

fn refused(path: &Path, reason: String) -> AccessError {
    AccessError::Refused { what: "store", path: path.into(), reason }
}

/// Longest answer of the resolving child (a digest, or its one-line error).
const MAX_ANSWER: usize = 4096;

/// Resolves a name (`oci:DIR[:TAG]`, imported first if needed; a digest prefix; a source) in a
/// forked child that is the caller for good before it opens anything: supplementary groups,
/// real/effective/saved gid and uid become the caller's (the kernel then clears every
/// capability; `no_new_privs` is already set), verified, then `resolve` runs there — reading the
/// layout, the sandboxed layer reader and writing the store are the caller's own work, exactly
/// as `oci import` from an unprivileged copy. The child answers over a pipe with the digest or
/// a one-line error (at most [`MAX_ANSWER`] bytes); the parent only parses a digest out of it,
/// which [`open_store_image`] then checks like any digest the caller names. The child is the
/// caller's to signal (the terminal signals stay blocked, as in the helper); the helper holds no
/// lock, loop device or mount while it waits. Called before the helper starts any thread.
pub(crate) fn resolve_as_caller(
    caller: &Caller,
    name: &str,
    resolve: impl FnOnce() -> Result<Sha256, String>,
) -> Result<Sha256, AccessError> {
    use std::io::{Read, Write};
    let io = |what, errno| AccessError::Io { what, errno };
    let refuse = |reason| AccessError::BadArgument { what: "oci mount", value: name.to_string(), reason };
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| io("pipe", e))?;
    let pid = crate::sys::sandbox::fork_child(|| {
        let answer = match become_caller(caller) {
            Ok(()) => match resolve() {
                Ok(d) => format!("O{d}"),
                Err(e) => format!("E{e}"),
            },
            Err(e) => format!("E{e}"),
        };
        let mut out = std::fs::File::from(match rustix::io::dup(&w) {
            Ok(fd) => fd,
            Err(_) => return 1,
        });
        let bytes = answer.as_bytes();
        i32::from(out.write_all(&bytes[..bytes.len().min(MAX_ANSWER)]).is_err())
    })
    .map_err(|e| io("fork", io_errno(&e)))?;
    drop(w);
    let mut answer = Vec::new();
    let read = std::fs::File::from(r).take(MAX_ANSWER as u64).read_to_end(&mut answer);
    let status = crate::sys::wait_child(pid).map_err(|e| io("waitpid", e))?;
    read.map_err(|e| io("reading the resolving child's answer", io_errno(&e)))?;
    let text: String = String::from_utf8_lossy(&answer).chars().filter(|c| !c.is_control()).collect();
    let exited_ok = status.exit_status() == Some(0);
    match (text.split_at_checked(1), exited_ok) {
        (Some(("O", d)), true) => Sha256::parse(d).map_err(|e| refuse(format!("the resolving child answered: {e}"))),
        (Some(("E", e)), _) => Err(refuse(e.to_string())),
        _ => Err(refuse(format!("the child resolving it as the caller ended without an answer ({status:?})"))),
    }
}

/// Supplementary groups, then gid, then uid: the caller's, in every id; checked.
fn become_caller(c: &Caller) -> Result<(), String> {
    use rustix::process::{Gid, Uid};
    let groups: Vec<Gid> = c.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    rustix::thread::set_thread_groups(&groups).map_err(|e| format!("becoming the caller: setgroups: {e}"))?;
    let (uid, gid) = (Uid::from_raw(c.uid), Gid::from_raw(c.gid));
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| format!("becoming the caller: setresgid: {e}"))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| format!("becoming the caller: setresuid: {e}"))?;
    let permitted = caps::read(None, caps::CapSet::Permitted).map_err(|e| format!("becoming the caller: {e}"))?;
    let ids = (crate::sys::helper::getresuid(), crate::sys::helper::getresgid());
    if ids != ((c.uid, c.uid, c.uid), (c.gid, c.gid, c.gid)) || !permitted.is_empty() {
        return Err(format!("becoming the caller: still ids {ids:?}, capabilities {permitted:?}"));
    }
    Ok(())
}

fn io_errno(e: &std::io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(e).unwrap_or(rustix::io::Errno::IO)
}
