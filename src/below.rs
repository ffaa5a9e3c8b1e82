//! Opening a path below a directory fd without ever leaving it: the one `openat2` call site of
//! the crate (boot's setup-root, the boot object check, the OCI layout reader).
//!
//! `openat2(2)` with `RESOLVE_BENEATH` (or `RESOLVE_IN_ROOT`) makes the kernel, not a userspace
//! walk, refuse every `..`, absolute symlink or mount crossing that would leave the directory,
//! race-free. rustix wraps the syscall safely (`rustix::fs::openat2`), so this is a plain safe
//! helper and not a `src/sys/` wrapper: it only fixes the flags every caller wants.

use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Opens `rel` below `dir` with `openat2(2)`; `resolve` says how the walk is confined and how
/// symlinks may be followed (it must contain `BENEATH` or `IN_ROOT`). `O_CLOEXEC` is always
/// added, `O_NOCTTY` too unless `flags` has `O_PATH` (openat2 refuses, with EINVAL, flags that
/// O_PATH would ignore). Never creates: no mode is passed. An escape attempt is `EXDEV`.
pub(crate) fn open_below<P: rustix::path::Arg>(
    dir: BorrowedFd<'_>,
    rel: P,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    debug_assert!(resolve.intersects(ResolveFlags::BENEATH | ResolveFlags::IN_ROOT));
    let extra = if flags.contains(OFlags::PATH) { OFlags::CLOEXEC } else { OFlags::CLOEXEC | OFlags::NOCTTY };
    rustix::fs::openat2(dir, rel, flags | extra, Mode::empty(), resolve)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn stays_below_and_sets_cloexec() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("sub/abs")).unwrap();
        std::os::unix::fs::symlink("../../", d.path().join("sub/up")).unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        let fd = open_below(root.as_fd(), "sub/f", OFlags::RDONLY, ResolveFlags::BENEATH).unwrap();
        assert!(rustix::io::fcntl_getfd(&fd).unwrap().contains(rustix::io::FdFlags::CLOEXEC));
        let opath = OFlags::PATH | OFlags::DIRECTORY;
        assert!(open_below(root.as_fd(), "sub", opath, ResolveFlags::BENEATH).is_ok());
        for rel in ["../x", "/etc/passwd", "sub/abs/passwd", "sub/up/x"] {
            let r = open_below(root.as_fd(), rel, OFlags::RDONLY, ResolveFlags::BENEATH);
            assert_eq!(r.err(), Some(Errno::XDEV), "{rel}");
        }
        let r = open_below(root.as_fd(), "sub/abs", OFlags::RDONLY, ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS);
        assert_eq!(r.err(), Some(Errno::LOOP));
    }
}
