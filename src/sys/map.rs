//! A read-only mapping of a sealed file (`mmap(2)`, `munmap(2)`; `memfd_create(2)` and
//! `fcntl(2)` F_GET_SEALS for the seals). rustix wraps the syscalls but, rightly, as `unsafe`:
//! a mapping may only be handed out as `&[u8]` while nobody can change or shrink the file under
//! it. This wrapper maps only files sealed against writes, growth and shrinking (the helper's
//! private memfd copies of images), so the bytes behind the slice can never change and the
//! mapping can never lose pages (no SIGBUS).

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

/// The whole of a sealed file, mapped read-only; unmapped on drop.
#[derive(Debug)]
pub(crate) struct SealedMap {
    ptr: *mut core::ffi::c_void,
    len: usize,
}

impl SealedMap {
    /// Maps `fd` (read-only, shared). `EPERM` unless `F_GET_SEALS` on this very fd includes
    /// `F_SEAL_WRITE`, `F_SEAL_GROW` and `F_SEAL_SHRINK`; `EFBIG` if it does not fit in memory.
    pub(crate) fn new(fd: BorrowedFd<'_>) -> Result<SealedMap, Errno> {
        if !sealed_against_change(fd)? {
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
            // SAFETY: `ptr`/`len` is this live mapping, MAP_SHARED of a file sealed against
            // writes, growth and shrinking: MADV_DONTNEED zaps the page-table entries only, the
            // pages stay in the file, and a later access faults the same bytes back in. No
            // memory that a borrow points at is freed or changed (unlike MADV_DONTNEED on
            // private or anonymous memory, which would zero it).
            let _ = unsafe { rustix::mm::madvise(self.ptr, self.len, rustix::mm::Advice::LinuxDontNeed) };
        }
    }

    /// The file's bytes. They cannot change while the map lives: the file is sealed against
    /// writes (no write(2), no writable mapping can exist), growth and shrinking, and seals
    /// cannot be removed.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes (unmapped only in drop, which
        // needs `&mut self`); the sealed file cannot be written or shrunk, so the memory stays
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
