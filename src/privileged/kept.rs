//! Kept copies of vetted images (issue 17): the helper's private copy of a caller's image,
//! once vetted and accepted, stays in `<state dir>/copies` so that the next mount of the same
//! bytes by the same caller mounts it again instead of copying the image once more. Copying
//! 10 MB into memory costs the kernel about 5 ms of page allocation and freeing (docs/helper.md
//! "The copy's floor"); reading and hashing the caller's file costs about a third of that.
//! docs/helper.md ("Kept copies") has the argument in full; in short:
//!
//! - only where an administrator mounted a tmpfs of its own on `<state dir>/copies` (the
//!   packaged unit `run-cfsmount-copies.mount`): the helper never creates that directory, and
//!   uses it only if it is the root of a tmpfs mount (a disk filesystem could sit on a block
//!   device a user owns; a directory inside `/run`'s tmpfs would share `/run`'s space with the
//!   rest of the system), owned by the helper's euid and not group/world-accessible. The
//!   tmpfs's `size=` bounds everything written there: a copy that does not fit is not kept;
//! - a copy is made unnamed (`O_TMPFILE`, mode 0400) there, of exactly the size the caller's
//!   file had (a file that grows meanwhile gets a sealed memory copy instead); the helper alone
//!   writes it, then holds it only through a read-only fd, so only root could change its bytes
//!   (`crate::sys::map::root_read_only_copy`, checked on the fd before its bytes are trusted);
//! - it gets a name only after the vetting accepted it (or the caller's verdict for its bytes
//!   stood in for the vetting); a copy that was not accepted, or a crash, leaves nothing;
//! - the name is made of keyed BLAKE3 hashes (a random key in `copies/.key`, root-only, made by
//!   the first helper that needs it) of the caller's uid, the size and the image's BLAKE3
//!   digest: the loop device's backing file (`/sys/block/loopN/loop/backing_file`, readable by
//!   everyone) shows the name, and must not tell anyone who mounted which image;
//! - a later mount hashes the caller's file as it reads it (no copy) and mounts the kept copy of
//!   the same uid, size and digest, if there is one; the caller's remembered verdict for that
//!   key must also stand (`super::verdicts`), else the kept copy is vetted in full. The bytes
//!   mounted are always the vetted bytes: what the caller's file held while it was hashed only
//!   chooses which of the caller's own accepted copies is mounted (finding one needs a file
//!   whose BLAKE3 hash is that copy's);
//! - per caller, like the verdicts: a copy made for one user is never mounted for another (who
//!   could otherwise learn from the timing that someone mounted a given image);
//! - bounded: at most [`PER_UID`] copies per user and the policy's
//!   `machine_limits.kept_copy_bytes` in all (least recently used first; 0 turns kept copies
//!   off and removes them), and the tmpfs's own size. A copy removed while mounted lives on
//!   until the umount.
//!
//! Every failure here is a copy not kept, or not found: never an error of the mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::verdicts::{private_subdir, Key};

/// Most copies kept per user.
pub(crate) const PER_UID: usize = 8;
/// The prefix of every kept copy's name (`k2-<uid tag>-<size tag>-<copy tag>`); bump it if
/// what a name promises changes.
const PREFIX: &str = "k2-";
/// The file holding the key of the names' keyed hashes (32 random bytes, root's, 0400).
const KEY_FILE: &str = ".key";

/// The kept copies directory (`<state dir>/copies`).
pub(crate) struct KeptCopies {
    dir: OwnedFd,
    /// `machine_limits.kept_copy_bytes`.
    limit: u64,
    /// The key of the names' keyed hashes.
    key: [u8; 32],
}

impl KeptCopies {
    /// Opens `<state_dir>/copies` if it is the root of a tmpfs mount owned by our euid and not
    /// accessible to group or others, with its name key (made if missing); `None` if `limit`
    /// is 0 (existing copies are then removed) or any of that fails: no copies are kept or used.
    pub(crate) fn open(state_dir: &Path, limit: u64) -> Option<KeptCopies> {
        let dir = private_subdir(state_dir, "copies", false)?;
        let mount_root = crate::mount::records::mount_id(dir.as_fd()).ok()?.is_mount_root;
        #[allow(clippy::unnecessary_cast)]
        let tmpfs = rustix::fs::fstatfs(&dir).ok()?.f_type as u64 & 0xffff_ffff == TMPFS_MAGIC;
        if !(mount_root && tmpfs) {
            return None;
        }
        KeptCopies::in_dir(dir, limit)
    }

    /// `dir` as the copies directory without the checks of `open` (tests: a directory on
    /// tmpfs that is not a mount of its own).
    #[cfg(test)]
    pub(crate) fn in_dir_for_tests(dir: &Path, limit: u64) -> Option<KeptCopies> {
        let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
        KeptCopies::in_dir(fd, limit)
    }

    /// [`KeptCopies::open`] past the checks of the directory itself.
    fn in_dir(dir: OwnedFd, limit: u64) -> Option<KeptCopies> {
        let key = name_key(&dir)?;
        let kept = KeptCopies { dir, limit, key };
        if limit == 0 {
            kept.trim(None);
            return None;
        }
        Some(kept)
    }

    /// Whether `uid` has a kept copy of `size` bytes (by name only): if not, the caller's file
    /// is not worth hashing before it is copied.
    pub(crate) fn has_size(&self, uid: u32, size: u64) -> bool {
        let want = format!("{PREFIX}{}-{}-", self.uid_tag(uid), self.size_tag(uid, size));
        self.names().iter().any(|n| n.to_bytes().starts_with(want.as_bytes()))
    }

    /// The kept copy of `key`, read-only, if there is one and it is still a copy only root can
    /// change, of the key's size; its use is recorded (mtime) for the eviction order.
    pub(crate) fn find(&self, key: &Key) -> Option<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, self.name(key), flags, Mode::empty()).ok()?;
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
        if st.st_nlink != 0 || st.st_size as u64 != key.size() || key.size() > self.limit {
            return;
        }
        let name = self.name(key);
        // The name is checked to be this very file afterwards (see `link_unnamed`).
        let link_it = || link_unnamed(copy, &self.dir, &name);
        let linked = match link_it() {
            Ok(()) => true,
            // The same bytes are kept already, unless what has the name is not a copy that
            // `find` would use (then it is replaced).
            Err(Errno::EXIST) if self.find(key).is_some() => false,
            Err(Errno::EXIST) => {
                let _ = rustix::fs::unlinkat(&self.dir, &name, AtFlags::empty());
                link_it().is_ok()
            }
            Err(_) => false,
        };
        if linked {
            let same = rustix::fs::statat(&self.dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|n| (n.st_dev, n.st_ino) == (st.st_dev, st.st_ino));
            if !same {
                let _ = rustix::fs::unlinkat(&self.dir, &name, AtFlags::empty());
                return;
            }
            self.trim(Some(key.uid()));
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
            .filter(|n| n.to_bytes() != b"." && n.to_bytes() != b".." && n.to_bytes() != KEY_FILE.as_bytes())
            .collect()
    }

    /// Removes anything that is not a kept copy, then the least recently used copies beyond
    /// [`PER_UID`] for `uid` and beyond the byte limit in all (`None`: all of them).
    fn trim(&self, uid: Option<u32>) {
        let mine = uid.map(|u| format!("{PREFIX}{}-", self.uid_tag(u)));
        let mut all = Vec::new();
        for n in self.names() {
            let Ok(st) = rustix::fs::statat(&self.dir, &n, AtFlags::SYMLINK_NOFOLLOW) else { continue };
            if !n.to_bytes().starts_with(PREFIX.as_bytes()) || uid.is_none() {
                let _ = rustix::fs::unlinkat(&self.dir, &n, AtFlags::empty());
                continue;
            }
            let is_mine = mine.as_ref().is_some_and(|m| n.to_bytes().starts_with(m.as_bytes()));
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

    /// A keyed hash of `parts` (each after a domain tag), as hex: 16 characters for the uid and
    /// size tags, all 64 for the copy's.
    fn tag(&self, domain: &str, parts: &[&[u8]], len: usize) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(domain.as_bytes());
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize().as_bytes().iter().take(len / 2).map(|b| format!("{b:02x}")).collect()
    }

    fn uid_tag(&self, uid: u32) -> String {
        self.tag("cfsmount kept copy uid", &[&uid.to_le_bytes()], 16)
    }

    fn size_tag(&self, uid: u32, size: u64) -> String {
        self.tag("cfsmount kept copy size", &[&uid.to_le_bytes(), &size.to_le_bytes()], 16)
    }

    /// `k2-<uid tag>-<size tag>-<copy tag>`: nothing in it tells anyone without the key whose
    /// copy it is or of which image, but the helper finds a uid's copies, and those of a size,
    /// by prefix.
    fn name(&self, key: &Key) -> String {
        let (uid, size) = (key.uid(), key.size());
        let copy = self.tag("cfsmount kept copy", &[&uid.to_le_bytes(), &size.to_le_bytes(), key.digest()], 64);
        format!("{PREFIX}{}-{}-{copy}", self.uid_tag(uid), self.size_tag(uid, size))
    }
}

/// `TMPFS_MAGIC` (statfs(2)).
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The names' key in `dir` (`.key`: a regular file of 32 bytes, root's, mode 0400, one name),
/// made from `getrandom(2)` if missing: written into an unnamed file and linked into place, so
/// two helpers that both make one agree on the first that got its name.
fn name_key(dir: &OwnedFd) -> Option<[u8; 32]> {
    let read = || -> Option<[u8; 32]> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, KEY_FILE, flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let regular = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
        if !regular || st.st_uid != 0 || st.st_mode & 0o7777 != 0o400 || st.st_nlink != 1 || st.st_size != 32 {
            return None;
        }
        let mut key = [0u8; 32];
        (rustix::io::pread(&fd, &mut key, 0).ok()? == 32).then_some(key)
    };
    if let Some(key) = read() {
        return Some(key);
    }
    let mut key = [0u8; 32];
    let mut got = 0;
    while got < key.len() {
        match rustix::rand::getrandom(&mut key[got..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    let file =
        rustix::fs::openat(dir, ".", OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC, Mode::from_raw_mode(0o400))
            .ok()?;
    if rustix::io::write(&file, &key).ok()? != key.len() {
        return None;
    }
    let link_it = || link_unnamed(file.as_fd(), dir, KEY_FILE);
    match link_it() {
        Ok(()) => read(),
        // Another helper's key, or a file at the name that is not a key: replaced (the copies
        // named with another key are then never found, and are trimmed as they age).
        Err(Errno::EXIST) => read().or_else(|| {
            let _ = rustix::fs::unlinkat(dir, KEY_FILE, AtFlags::empty());
            link_it().ok().and_then(|()| read())
        }),
        Err(_) => None,
    }
}

/// `/proc/self/fd/N` for `fd`: the magic link through which an unnamed (`O_TMPFILE`) file is
/// reopened or linked. The mount pipeline checked that `/proc` is procfs; callers check the
/// result is the very file all the same.
pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))
}

/// Gives the unnamed (`O_TMPFILE`) `file` the name `name` in `dir` (`linkat(2)` of its
/// `/proc/self/fd` link with `AT_SYMLINK_FOLLOW`, as open(2) shows: `AT_EMPTY_PATH` needs
/// `CAP_DAC_READ_SEARCH`, which the helper does not keep). `EEXIST` if the name is taken.
fn link_unnamed(file: BorrowedFd<'_>, dir: &OwnedFd, name: &str) -> Result<(), Errno> {
    rustix::fs::linkat(rustix::fs::CWD, proc_fd_path(file).as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
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
    use std::os::unix::fs::PermissionsExt;

    fn content(bytes: &[u8]) -> Content {
        let mut h = ContentHasher::new();
        h.update(bytes);
        h.finish()
    }

    /// A private directory on tmpfs (`/dev/shm`) standing in for the mounted `copies`
    /// (`KeptCopies::open` also wants it to be a mount's root: the root tier tests that);
    /// `None` where that cannot be had, or not as root.
    fn copies_dir() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
        let d = crate::sys::map::root_tmpfs_dir()?;
        let copies = d.path().join("copies");
        std::fs::create_dir(&copies).ok()?;
        std::fs::set_permissions(&copies, PermissionsExt::from_mode(0o700)).ok()?;
        Some((d, copies))
    }

    fn kept(copies: &Path, limit: u64) -> Option<KeptCopies> {
        KeptCopies::in_dir_for_tests(copies, limit)
    }

    fn write_copy(k: &KeptCopies, bytes: &[u8]) -> OwnedFd {
        let fd = k.new_copy(bytes.len() as u64).expect("a new copy");
        assert_eq!(rustix::io::write(&fd, bytes).unwrap(), bytes.len());
        fd
    }

    fn entries(copies: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(copies)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != KEY_FILE)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn kept_copies_are_named_by_keyed_hashes_found_and_bounded() {
        let Some((_d, copies)) = copies_dir() else { return };
        let k = kept(&copies, 1 << 20).expect("copies dir");
        let md = std::fs::symlink_metadata(copies.join(KEY_FILE)).expect("a name key");
        assert_eq!((md.len(), md.permissions().mode() & 0o7777), (32, 0o400));
        assert_eq!(kept(&copies, 1 << 20).unwrap().key, k.key, "the same key for the next helper");

        let bytes = b"an accepted image".to_vec();
        let key = Key::new(1000, content(&bytes));
        assert!(!k.has_size(1000, bytes.len() as u64));
        assert!(k.find(&key).is_none());
        // Unnamed until kept: nothing in the directory.
        let fd = write_copy(&k, &bytes);
        assert!(entries(&copies).is_empty(), "an unkept copy has no name");
        k.keep(fd.as_fd(), &key);
        let found = k.find(&key).expect("the kept copy");
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(found), &mut back).unwrap();
        assert_eq!(back, bytes);
        assert!(k.has_size(1000, bytes.len() as u64));
        assert!(!k.has_size(1000, bytes.len() as u64 + 1));
        assert!(!k.has_size(1001, bytes.len() as u64));
        assert!(k.find(&Key::new(1001, content(&bytes))).is_none(), "another user's copy");
        // The name tells nothing: no uid, size or digest in it.
        let name = k.name(&key);
        assert_eq!(entries(&copies), vec![name.clone()]);
        let hex: String = key.digest().iter().map(|b| format!("{b:02x}")).collect();
        for leak in ["-1000-".to_string(), format!("-{}-", bytes.len()), hex[..16].to_string()] {
            assert!(!name.contains(&leak), "{name} shows {leak}");
        }
        let p = copies.join(&name);
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o400);
        // Another key names the same copy otherwise.
        std::fs::remove_file(copies.join(KEY_FILE)).unwrap();
        let k2 = kept(&copies, 1 << 20).unwrap();
        assert_ne!(k2.name(&key), name);
        assert!(k2.find(&key).is_none());
        let k = kept(&copies, 1 << 20).unwrap();

        // A copy others could write, or with two names, is not used; keeping the same bytes
        // again replaces it.
        let name = k.name(&key);
        std::fs::remove_file(copies.join(k2.name(&key))).ok();
        k.keep(write_copy(&k, &bytes).as_fd(), &key);
        let p = copies.join(&name);
        std::fs::set_permissions(&p, PermissionsExt::from_mode(0o600)).unwrap();
        assert!(k.find(&key).is_none(), "mode 0600");
        k.keep(write_copy(&k, &bytes).as_fd(), &key);
        assert!(k.find(&key).is_some(), "the untrusted file was replaced");
        std::fs::hard_link(&p, copies.join("second")).unwrap();
        assert!(k.find(&key).is_none(), "two names");
        std::fs::remove_file(copies.join("second")).unwrap();

        // A copy longer than the limit is never named.
        let small = kept(&copies, 8).unwrap();
        let b = b"longer than eight".to_vec();
        let big = Key::new(1000, content(&b));
        let fd = k.new_copy(b.len() as u64).unwrap();
        assert_eq!(rustix::io::write(&fd, &b).unwrap(), b.len());
        small.keep(fd.as_fd(), &big);
        assert!(small.find(&big).is_none() && k.find(&big).is_none());

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
        let mine = format!("{PREFIX}{}-", k.uid_tag(1000));
        assert_eq!(entries(&copies).iter().filter(|n| n.starts_with(&mine)).count(), PER_UID, "per-user bound");
        assert!(!copies.join("junk").exists());
        assert!(copies.join(KEY_FILE).exists(), "the key stays");
        assert!(k.find(&keys[0]).is_none(), "the oldest went first");
        assert!(k.find(keys.last().unwrap()).is_some());
        // The byte limit: with 64 bytes allowed, one 40-byte copy of another user evicts the rest.
        let small = kept(&copies, 64).unwrap();
        let b = vec![7u8; 40];
        let key = Key::new(1001, content(&b));
        small.keep(write_copy(&small, &b).as_fd(), &key);
        assert_eq!(entries(&copies).len(), 2, "{:?}", entries(&copies));
        assert!(small.find(&key).is_some() && small.find(keys.last().unwrap()).is_some());
        assert!(small.new_copy(65).is_none(), "larger than the limit");
        // Limit 0: off, and every copy is removed (the key stays).
        assert!(kept(&copies, 0).is_none());
        assert!(entries(&copies).is_empty());
    }

    /// `open` wants the root of a tmpfs mount: a directory inside one is not, nor is one on
    /// a disk filesystem.
    #[test]
    fn copies_must_be_a_tmpfs_mount_of_their_own() {
        let Some((d, _copies)) = copies_dir() else { return };
        std::fs::set_permissions(d.path(), PermissionsExt::from_mode(0o755)).unwrap();
        assert!(KeptCopies::open(d.path(), 1 << 20).is_none(), "a directory inside /dev/shm");
        let disk = tempfile::tempdir().unwrap();
        std::fs::create_dir(disk.path().join("copies")).unwrap();
        std::fs::set_permissions(disk.path().join("copies"), PermissionsExt::from_mode(0o700)).unwrap();
        assert!(KeptCopies::open(disk.path(), 1 << 20).is_none(), "a directory on {}", disk.path().display());
        assert!(!disk.path().join("copies/.key").exists(), "nothing made there");
    }
}
