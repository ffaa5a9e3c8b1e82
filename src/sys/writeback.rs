//! Starting the writeback of a file's dirty pages early: `sync_file_range(2)`, which rustix does
//! not wrap.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Starts the writeback of every dirty page of `fd` that is not already being written
/// (`SYNC_FILE_RANGE_WRITE` over the whole file) and returns without waiting for it. This is no
/// durability promise (that is the caller's later fsync); it only lets the disk work while the
/// file is still being written.
///
/// Syscall: sync_file_range(2) (man 2 sync_file_range), offset 0, nbytes 0 (to the end).
pub(crate) fn start_writeback(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor borrowed (open) for the duration of the call; no
    // memory is passed.
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn starts_on_files_and_refuses_pipes() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 100_000]).unwrap();
        start_writeback(f.as_fd()).unwrap();
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(start_writeback(r.as_fd()).unwrap_err().raw_os_error(), Some(libc::ESPIPE));
    }
}
