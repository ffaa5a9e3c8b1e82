//! Kept copies of vetted images (issue 17): the helper's private copy of a caller's image,
//! once vetted and accepted, stays in `<state dir>/copies` so that the next mount of the same
//! bytes by the same caller mounts it again instead of copying the image once more. Copying
//! 10 MB into memory costs the kernel about 5 ms of page allocation and freeing (docs/helper.md
//! "The copy's floor"); reading and hashing the caller's file costs about a third of that.
//! docs/helper.md ("Kept copies") has the argument in full; in short:
//!
//! - a copy is made unnamed (`O_TMPFILE`, mode 0400) in a directory created 0700 by the helper
//!   (root), refused unless owned by the helper's euid, not group/world-accessible and on tmpfs
//!   (no block device under it that another user could own and write); the helper alone writes
//!   it, then holds it only through a read-only fd, so only root could change its bytes
//!   (`crate::sys::map::root_read_only_copy`, checked on the fd before its bytes are trusted);
//! - it gets a name only after the vetting accepted it (or the caller's verdict for its bytes
//!   stood in for the vetting): `k1-<uid>-<size>-<BLAKE3 hex>`, the verdict key's uid and
//!   digest; a copy that was not accepted, or a crash, leaves nothing behind;
//! - a later mount hashes the caller's file as it reads it (no copy) and mounts the kept copy of
//!   the same uid, size and digest, if there is one; the caller's remembered verdict for that
//!   key must also stand (`super::verdicts`), else the kept copy is vetted in full. The bytes
//!   mounted are always the vetted bytes: what the caller's file held while it was hashed only
//!   chooses which of the caller's own accepted copies is mounted (finding one needs a file
//!   whose BLAKE3 hash is that copy's);
//! - per caller, like the verdicts: a copy made for one user is never mounted for another (who
//!   could otherwise learn from the timing that someone mounted a given image);
//! - bounded: at most [`PER_UID`] copies per user and the policy's
//!   `machine_limits.kept_copy_bytes` in all (oldest use first; 0 turns kept copies off), and a
//!   copy is kept only if it needs at most a quarter of the filesystem's free space. `/run` is a
//!   tmpfs: a reboot starts with none. A copy removed while mounted lives on until the umount.
//!
//! Every failure here is a copy not kept, or not found: never an error of the mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::verdicts::{private_subdir, Key};

/// Most copies kept per user.
pub(crate) const PER_UID: usize = 8;
/// The prefix of every kept copy's name (`k1-<uid>-<size>-<hex>`); bump it if what a name
/// promises changes.
const PREFIX: &str = "k1-";

/// The kept copies directory (`<state dir>/copies`).
pub(crate) struct KeptCopies {
    dir: OwnedFd,
    /// `machine_limits.kept_copy_bytes`.
    limit: u64,
}

impl KeptCopies {
    /// Opens (creating it 0700 if missing) `<state_dir>/copies`, owned by our euid, not
    /// accessible to group or others, on tmpfs; `None` if `limit` is 0 or any of that fails (no
    /// copies are kept or used).
    pub(crate) fn open(state_dir: &Path, limit: u64) -> Option<KeptCopies> {
        if limit == 0 {
            return None;
        }
        let dir = private_subdir(state_dir, "copies")?;
        #[allow(clippy::unnecessary_cast)]
        let tmpfs = rustix::fs::fstatfs(&dir).ok()?.f_type as u64 & 0xffff_ffff == TMPFS_MAGIC;
        tmpfs.then_some(KeptCopies { dir, limit })
    }

    /// Whether `uid` has a kept copy of `size` bytes (by name only): if not, the caller's file
    /// is not worth hashing before it is copied.
    pub(crate) fn has_size(&self, uid: u32, size: u64) -> bool {
        let want = format!("{PREFIX}{uid}-{size}-");
        self.names().iter().any(|n| n.to_bytes().starts_with(want.as_bytes()))
    }

    /// The kept copy of `key`, read-only, if there is one and it is still a copy only root can
    /// change, of the key's size; its use is recorded (mtime) for the eviction order.
    pub(crate) fn find(&self, key: &Key) -> Option<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, name(key), flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if st.st_size as u64 != key.size() || !crate::sys::map::root_read_only_copy(fd.as_fd()).ok()? {
            return None;
        }
        touch(&fd);
        Some(fd)
    }

    /// A new unnamed file (mode 0400, open for writing) for a copy of `size` bytes, if one of
    /// that size may be kept: within the limit, and at most a quarter of the free space.
    pub(crate) fn new_copy(&self, size: u64) -> Option<OwnedFd> {
        if size > self.limit {
            return None;
        }
        let vfs = rustix::fs::fstatvfs(&self.dir).ok()?;
        if size > vfs.f_bavail.saturating_mul(vfs.f_frsize) / 4 {
            return None;
        }
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        rustix::fs::openat(&self.dir, ".", flags, Mode::from_raw_mode(0o400)).ok()
    }

    /// Names `copy` (a file from [`KeptCopies::new_copy`], written and vetted) as the kept copy
    /// of `key`, then keeps the directory within its bounds. Best effort: an existing copy of
    /// the same key (the same bytes) stays; any failure leaves the copy unnamed.
    pub(crate) fn keep(&self, copy: BorrowedFd<'_>, key: &Key) {
        let Ok(st) = rustix::fs::fstat(copy) else { return };
        if st.st_nlink != 0 || st.st_size as u64 != key.size() {
            return;
        }
        // linkat(2) of an O_TMPFILE file: through its /proc/self/fd link with
        // AT_SYMLINK_FOLLOW (as open(2) shows), since AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH,
        // which the helper does not keep. The pipeline checked that /proc is procfs.
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&copy));
        let link_it =
            || rustix::fs::linkat(rustix::fs::CWD, link.as_str(), &self.dir, name(key), AtFlags::SYMLINK_FOLLOW);
        match link_it() {
            Ok(()) => self.trim(key.uid()),
            // The same bytes are kept already, unless what has the name is not a copy that
            // `find` would use (then it is replaced).
            Err(Errno::EXIST) if self.find(key).is_some() => {}
            Err(Errno::EXIST) => {
                let _ = rustix::fs::unlinkat(&self.dir, name(key), AtFlags::empty());
                if link_it().is_ok() {
                    self.trim(key.uid());
                }
            }
            Err(_) => {}
        }
    }

    fn names(&self) -> Vec<std::ffi::CString> {
        let Ok(fd) =
            rustix::fs::openat(&self.dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return Vec::new();
        };
        let Ok(dir) = rustix::fs::Dir::new(fd) else { return Vec::new() };
        dir.flatten()
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.to_bytes() != b"." && n.to_bytes() != b"..")
            .collect()
    }

    /// Removes anything that is not a kept copy, then the least recently used copies beyond
    /// [`PER_UID`] for `uid` and beyond the byte limit in all.
    fn trim(&self, uid: u32) {
        let mine = format!("{PREFIX}{uid}-");
        let mut all = Vec::new();
        for n in self.names() {
            let Ok(st) = rustix::fs::statat(&self.dir, &n, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if !n.to_bytes().starts_with(PREFIX.as_bytes()) {
                let _ = rustix::fs::unlinkat(&self.dir, &n, AtFlags::empty());
                continue;
            }
            let is_mine = n.to_bytes().starts_with(mine.as_bytes());
            all.push(((st.st_mtime, st.st_mtime_nsec), is_mine, st.st_size as u64, n));
        }
        all.sort();
        let mut own = all.iter().filter(|e| e.1).count();
        let mut bytes: u64 = all.iter().map(|e| e.2).sum();
        for (_, is_mine, size, n) in &all {
            if (*is_mine && own > PER_UID) || bytes > self.limit {
                let _ = rustix::fs::unlinkat(&self.dir, n, AtFlags::empty());
                own -= usize::from(*is_mine);
                bytes -= size;
            }
        }
    }
}

/// `TMPFS_MAGIC` (statfs(2)).
const TMPFS_MAGIC: u64 = 0x0102_1994;

fn name(key: &Key) -> String {
    let hex: String = key.digest().iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{}-{}-{hex}", key.uid(), key.size())
}

/// Sets the copy's mtime to now (`futimens(2)`): the eviction order is by last use.
fn touch(fd: &OwnedFd) {
    use rustix::fs::{Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
    let ts = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: 0, tv_nsec: UTIME_NOW },
    };
    let _ = rustix::fs::futimens(fd, &ts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privileged::verdicts::{Content, ContentHasher};

    fn content(bytes: &[u8]) -> Content {
        let mut h = ContentHasher::new();
        h.update(bytes);
        h.finish()
    }

    /// A state directory on tmpfs (`/dev/shm`), private; `None` where that cannot be had (the
    /// tests below then have nothing to run on).
    fn state() -> Option<tempfile::TempDir> {
        let d = tempfile::tempdir_in("/dev/shm").ok()?;
        std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).ok()?;
        Some(d)
    }

    fn write_copy(k: &KeptCopies, bytes: &[u8]) -> OwnedFd {
        let fd = k.new_copy(bytes.len() as u64).expect("a new copy");
        assert_eq!(rustix::io::write(&fd, bytes).unwrap(), bytes.len());
        fd
    }

    #[test]
    fn kept_copies_are_named_by_uid_size_and_digest_found_and_bounded() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: kept copies are root's (run as root)");
            return;
        }
        let Some(s) = state() else {
            eprintln!("skipped: no tmpfs at /dev/shm");
            return;
        };
        assert!(KeptCopies::open(s.path(), 0).is_none(), "limit 0: off");
        let k = KeptCopies::open(s.path(), 1 << 20).expect("copies dir");
        let copies = s.path().join("copies");
        let md = std::fs::metadata(&copies).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o700);

        let bytes = b"an accepted image".to_vec();
        let key = Key::new(1000, content(&bytes));
        assert!(!k.has_size(1000, bytes.len() as u64));
        assert!(k.find(&key).is_none());
        // Unnamed until kept: nothing in the directory.
        let fd = write_copy(&k, &bytes);
        assert_eq!(std::fs::read_dir(&copies).unwrap().count(), 0, "an unkept copy has no name");
        k.keep(fd.as_fd(), &key);
        let found = k.find(&key).expect("the kept copy");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(found), &mut back).unwrap();
        assert_eq!(back, bytes);
        assert!(k.has_size(1000, bytes.len() as u64));
        assert!(!k.has_size(1000, bytes.len() as u64 + 1));
        assert!(!k.has_size(1001, bytes.len() as u64));
        assert!(k.find(&Key::new(1001, content(&bytes))).is_none(), "another user's copy");
        let p = copies.join(name(&key));
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777, 0o400);

        // A copy of the wrong size under the name, or one others could write, is not used.
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(k.find(&key).is_none(), "mode 0600");
        // Keeping the same bytes again replaces it.
        k.keep(write_copy(&k, &bytes).as_fd(), &key);
        assert!(k.find(&key).is_some(), "the untrusted file was replaced");
        let wrong = Key::new(1000, content(b"an accepted imagE"));
        std::fs::hard_link(&p, copies.join(name(&wrong))).unwrap();
        assert!(k.find(&wrong).is_none(), "two names");
        std::fs::remove_file(copies.join(name(&wrong))).unwrap();

        // Bounds: PER_UID copies per user, least recently used first; foreign names removed.
        std::fs::write(copies.join("junk"), b"x").unwrap();
        let mut keys = Vec::new();
        for i in 0..(PER_UID + 3) {
            let b = format!("image number {i}").into_bytes();
            let key = Key::new(1000, content(&b));
            k.keep(write_copy(&k, &b).as_fd(), &key);
            keys.push(key);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let n = std::fs::read_dir(&copies).unwrap().count();
        assert_eq!(n, PER_UID, "per-user bound");
        assert!(!copies.join("junk").exists());
        assert!(k.find(&keys[0]).is_none(), "the oldest went first");
        assert!(k.find(keys.last().unwrap()).is_some());
        // The byte limit: with 64 bytes allowed, one 40-byte copy of another user evicts the rest.
        let small = KeptCopies::open(s.path(), 64).unwrap();
        let b = vec![7u8; 40];
        let key = Key::new(1001, content(&b));
        small.keep(write_copy(&small, &b).as_fd(), &key);
        let left: Vec<_> = std::fs::read_dir(&copies).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(small.new_copy(65).is_none(), "larger than the limit");
        // A directory others can read is not used.
        std::fs::set_permissions(&copies, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(KeptCopies::open(s.path(), 1 << 20).is_none());
    }

    #[test]
    fn copies_are_kept_on_tmpfs_only() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: kept copies are root's (run as root)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let magic = rustix::fs::statfs(d.path()).unwrap().f_type as u64 & 0xffff_ffff;
        assert_eq!(KeptCopies::open(d.path(), 1 << 20).is_some(), magic == TMPFS_MAGIC);
    }
}
