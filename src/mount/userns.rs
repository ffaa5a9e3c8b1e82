//! User namespaces for idmapped mounts made from `--uidmap`/`--gidmap`: a helper child
//! unshares a user namespace, we write its maps, keep an fd to `/proc/CHILD/ns/user`, and reap
//! the child; the namespace lives on through the fd.

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

use super::error::IdmapError;
use super::kernel::write_maps;
use super::request::IdMap;

/// A user namespace with `uid`/`gid` as its maps.
pub(crate) fn create(uid: &[IdMap], gid: &[IdMap]) -> Result<OwnedFd, IdmapError> {
    if uid.is_empty() || gid.is_empty() {
        return Err(IdmapError::MissingMap);
    }
    let child = crate::sys::mount::UsernsChild::spawn().map_err(IdmapError::Create)?;
    let pid = child.pid();
    write_maps(pid, uid, gid)?;
    let fd = rustix::fs::open(format!("/proc/{pid}/ns/user"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(IdmapError::Open)?;
    drop(child); // lets it exit and reaps it; the namespace lives on through `fd`
    Ok(fd)
}
