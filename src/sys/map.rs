//! A read-only mapping of a file whose bytes can no longer change (`mmap(2)`, `munmap(2)`;
//! `memfd_create(2)` and `fcntl(2)` F_GET_SEALS for the seals, `fstat(2)`/`fstatfs(2)` for a
//! kept copy). rustix wraps the syscalls but, rightly, as `unsafe`: a mapping may only be handed
//! out as `&[u8]` while nobody can change or shrink the file under it. This wrapper maps only
//! files that no unprivileged process can change ([`unchangeable`]: the helper's private memfd
//! copies of images, sealed against writes, growth and shrinking; or its kept copies, read-only
//! root-owned files on tmpfs), so the bytes behind the slice cannot change and the mapping
//! cannot lose pages (no SIGBUS) unless root itself writes or truncates the file.

use std::os::fd::BorrowedFd;

use rustix::fs::SealFlags;
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

/// Whether `fd` is sealed against writes, growth and shrinking (`F_GET_SEALS` on this very fd):
/// then the file's bytes can no longer change. A file that cannot carry seals (`EINVAL`) is not.
/// The one definition of "sealed" for the helper's image copies (the mapping below, and the
/// gate's verdict keys).
pub(crate) fn sealed_against_change(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    let need = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK;
    match rustix::fs::fcntl_get_seals(fd) {
        Ok(s) => Ok(s.contains(need)),
        Err(Errno::INVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `TMPFS_MAGIC` (statfs(2)).
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Whether `fd` is one of the setuid helper's kept copies of an image (privileged/kept.rs): a
/// regular file on tmpfs (no block device under it that someone else could own and write),
/// owned by root, mode exactly 0400, at most one name, while this process runs as root
/// (`fstat(2)`, `fstatfs(2)`, `geteuid(2)`). No unprivileged process can open such a file for
/// writing, truncate it, change its mode or, on tmpfs, reach its pages any other way; only a
/// process running as root could, and the helper trusts root as it trusts its own code. (The
/// helper makes these files unnamed (`O_TMPFILE`) and names them only inside its root-only
/// state directory; an fd of one is never passed to anyone but the kernel's loop driver.)
pub(crate) fn root_read_only_copy(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    if !rustix::process::geteuid().is_root() {
        return Ok(false);
    }
    let st = rustix::fs::fstat(fd)?;
    let regular = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
    if !regular || st.st_uid != 0 || st.st_mode & 0o7777 != 0o400 || st.st_nlink > 1 {
        return Ok(false);
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = rustix::fs::fstatfs(fd)?.f_type as u64 & 0xffff_ffff;
    Ok(magic == TMPFS_MAGIC)
}

/// Whether the bytes of `fd` can no longer change for anyone but root: sealed
/// ([`sealed_against_change`]) or a kept copy ([`root_read_only_copy`]). The one definition the
/// mapping below and the gate's verdict keys share.
pub(crate) fn unchangeable(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    Ok(sealed_against_change(fd)? || root_read_only_copy(fd)?)
}

/// The whole of an unchangeable file ([`unchangeable`]), mapped read-only; unmapped on drop.
#[derive(Debug)]
pub(crate) struct SealedMap {
    ptr: *mut core::ffi::c_void,
    len: usize,
}

// SAFETY: shared between threads (the vetting of a large image reads it, and releases its
// pages, from up to four: `erofs::reader::vet_image_releasing`), `SealedMap` offers only
// `bytes`, a shared borrow of memory that does not change while the map lives (see there), and
// `release`, an madvise(MADV_DONTNEED) of the shared file mapping, which any thread may make
// while others read: it zaps page-table entries only, and a read on another thread faults the
// same bytes back in. Unmapping needs `&mut self` (drop), so no thread can unmap it under
// another's borrow.
unsafe impl Sync for SealedMap {}

impl SealedMap {
    /// Maps `fd` (read-only, shared). `EPERM` unless [`unchangeable`] (sealed against writes,
    /// growth and shrinking, or a kept copy); `EFBIG` if it does not fit in memory.
    pub(crate) fn new(fd: BorrowedFd<'_>) -> Result<SealedMap, Errno> {
        if !unchangeable(fd)? {
            return Err(Errno::PERM);
        }
        let len = usize::try_from(rustix::fs::fstat(fd)?.st_size).map_err(|_| Errno::FBIG)?;
        if len == 0 {
            return Ok(SealedMap { ptr: core::ptr::null_mut(), len: 0 });
        }
        // SAFETY: a new mapping chosen by the kernel (null hint, no MAP_FIXED), so no existing
        // memory is replaced; read-only; the fd is valid for the call (borrowed).
        let ptr = unsafe { rustix::mm::mmap(core::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED, fd, 0)? };
        Ok(SealedMap { ptr, len })
    }

    /// Drops the mapping's pages from this process's resident memory (`madvise(2)`,
    /// `MADV_DONTNEED`; rustix has it, as `unsafe`). For a shared mapping of a file that only
    /// unmaps the pages: the file keeps them, and the next read maps them again, with the
    /// same bytes (the file is sealed). Slices from [`SealedMap::bytes`] stay valid and
    /// unchanged; only the process's resident set shrinks. Best effort.
    pub(crate) fn release(&self) {
        if self.len != 0 {
            // SAFETY: `ptr`/`len` is this live mapping, MAP_SHARED of an unchangeable file (sealed
            // against writes, growth and shrinking, or a kept copy only root could write): MADV_DONTNEED zaps the page-table entries only, the
            // pages stay in the file, and a later access faults the same bytes back in. No
            // memory that a borrow points at is freed or changed (unlike MADV_DONTNEED on
            // private or anonymous memory, which would zero it).
            let _ = unsafe { rustix::mm::madvise(self.ptr, self.len, rustix::mm::Advice::LinuxDontNeed) };
        }
    }

    /// The file's bytes. They cannot change while the map lives: the file is sealed against
    /// writes (no write(2), no writable mapping can exist), growth and shrinking, and seals
    /// cannot be removed; or it is a kept copy that only root could open for writing.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes (unmapped only in drop, which
        // needs `&mut self`); the file cannot be written or shrunk (sealed, or by no one but
        // root: see `root_read_only_copy`), so the memory stays
        // valid and unchanged for the lifetime of the borrow.
        unsafe { core::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: the mapping made in `new`, unmapped once; no borrow of it outlives `self`.
            let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
        }
    }
}

/// A private directory on tmpfs (`/dev/shm`) for the tests of kept copies, which are root's:
/// `None` (and a line saying why the test is skipped) when not root or where there is none.
#[cfg(test)]
pub(crate) fn root_tmpfs_dir() -> Option<tempfile::TempDir> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: kept copies are root's (run as root)");
        return None;
    }
    let d = tempfile::tempdir_in("/dev/shm");
    if d.is_err() {
        eprintln!("skipped: no tmpfs at /dev/shm");
    }
    d.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::MemfdFlags;
    use std::os::fd::AsFd;

    fn memfd(bytes: &[u8], seals: SealFlags) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        assert_eq!(rustix::io::write(&fd, bytes).unwrap(), bytes.len());
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        fd
    }

    /// This process's resident shared memory (`RssShmem` of /proc/self/status), in KiB.
    fn rss_shmem_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("RssShmem:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn release_drops_the_pages_and_the_bytes_read_back_the_same() {
        let all = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK;
        let bytes: Vec<u8> = (0..(16usize << 20)).map(|i| (i % 251) as u8).collect();
        let m = SealedMap::new(memfd(&bytes, all).as_fd()).unwrap();
        let before = rss_shmem_kib();
        assert!(m.bytes() == &bytes[..]);
        let touched = rss_shmem_kib();
        m.release();
        let released = rss_shmem_kib();
        // Other tests may map shared memory at the same time: compare with margins.
        assert!(touched >= before + 12 * 1024, "reading 16 MiB mapped it: {before} -> {touched} KiB");
        assert!(released + 12 * 1024 <= touched, "release unmapped it: {touched} -> {released} KiB");
        assert!(m.bytes() == &bytes[..], "the same bytes after release");
    }

    /// A kept copy (root's, 0400, on tmpfs, at most one name) is unchangeable and maps; with
    /// any write bit, two names, or on a filesystem other than tmpfs it is not.
    #[test]
    fn root_read_only_copies_on_tmpfs_map_and_nothing_else_does() {
        let Some(shm) = root_tmpfs_dir() else { return };
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
        let p = shm.path().join("copy");
        std::fs::write(&p, &bytes).unwrap();
        let set = |mode: u32| std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        set(0o400);
        let f = std::fs::File::open(&p).unwrap();
        assert!(root_read_only_copy(f.as_fd()).unwrap());
        assert!(unchangeable(f.as_fd()).unwrap());
        assert!(SealedMap::new(f.as_fd()).unwrap().bytes() == &bytes[..]);
        for mode in [0o600, 0o440, 0o404, 0o4400, 0o500] {
            set(mode);
            assert!(!root_read_only_copy(f.as_fd()).unwrap(), "mode {mode:o}");
            assert_eq!(SealedMap::new(f.as_fd()).unwrap_err(), Errno::PERM, "mode {mode:o}");
        }
        set(0o400);
        std::fs::hard_link(&p, shm.path().join("second")).unwrap();
        assert!(!root_read_only_copy(f.as_fd()).unwrap(), "two names");
        std::fs::remove_file(shm.path().join("second")).unwrap();
        assert!(root_read_only_copy(f.as_fd()).unwrap());
        // The same on a disk filesystem (where /tmp is not tmpfs).
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("copy");
        std::fs::write(&q, &bytes).unwrap();
        std::fs::set_permissions(&q, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        let g = std::fs::File::open(&q).unwrap();
        #[allow(clippy::unnecessary_cast)]
        let on_tmpfs = rustix::fs::fstatfs(&g).unwrap().f_type as u64 & 0xffff_ffff == TMPFS_MAGIC;
        assert_eq!(root_read_only_copy(g.as_fd()).unwrap(), on_tmpfs);
    }

    #[test]
    fn maps_only_sealed_files_and_shows_their_bytes() {
        let all = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK;
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let fd = memfd(&bytes, all);
        let m = SealedMap::new(fd.as_fd()).unwrap();
        assert!(m.bytes() == &bytes[..]);
        assert!(SealedMap::new(memfd(b"", all).as_fd()).unwrap().bytes().is_empty());
        for partial in [
            SealFlags::WRITE | SealFlags::GROW,
            SealFlags::WRITE | SealFlags::SHRINK,
            SealFlags::GROW | SealFlags::SHRINK,
        ] {
            assert_eq!(SealedMap::new(memfd(b"x", partial).as_fd()).unwrap_err(), Errno::PERM, "{partial:?}");
        }
        // A file that cannot carry seals.
        let f = tempfile::tempfile().unwrap();
        assert!(SealedMap::new(f.as_fd()).is_err());
        assert!(!sealed_against_change(f.as_fd()).unwrap());
        assert!(sealed_against_change(fd.as_fd()).unwrap());
    }
}
