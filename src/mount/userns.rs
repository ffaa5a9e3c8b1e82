//! User namespaces for idmapped mounts made from `--uidmap`/`--gidmap`: a child is cloned into
//! a new user namespace and opens it (`sys::mount::UsernsChild`), we write its maps, keep the
//! fd to its namespace, and reap the child; the namespace lives on through the fd.

use std::os::fd::OwnedFd;

use super::error::IdmapError;
use super::kernel::write_maps;
use super::request::IdMap;
use crate::sys::mount::{SpawnError, UsernsChild};

/// A user namespace with `uid`/`gid` as its maps.
pub(crate) fn create(uid: &[IdMap], gid: &[IdMap]) -> Result<OwnedFd, IdmapError> {
    if uid.is_empty() || gid.is_empty() {
        return Err(IdmapError::MissingMap);
    }
    let (child, fd) = UsernsChild::spawn().map_err(|e| match e {
        SpawnError::Clone(e) => IdmapError::Create(e),
        SpawnError::Open(e) => IdmapError::Open(e),
    })?;
    write_maps(child.pid(), uid, gid)?;
    drop(child); // lets it exit and reaps it; the namespace lives on through `fd`
    Ok(fd)
}
