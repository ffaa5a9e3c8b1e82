//! The Additional Layer Store for podman (issue 14): containers/storage takes image layers
//! from a directory named in storage.conf instead of pulling and extracting them; cfsmount
//! serves each layer there as a read-only composefs mount (EROFS metadata + the store's
//! shared objects through overlayfs), so podman reads at kernel speed, files shared between
//! layers and images are stored once, and no daemon is in the data path.
//!
//! - [`protocol`]: what containers/storage reads (keys, paths, `info`), from its source.
//! - [`convert`]: a layer's tree in overlay form (whiteouts podman's overlay applies).
//! - [`state`]: the durable records in the store (`STORE/als-records/`).
//! - [`root`]: an ALS root as podman sees it, rebuilt from the records (a tmpfs of symlinks,
//!   info files and composefs mounts).
//! - [`view`]: per-user views for rootless podman (idmapped `diff` mounts).
//! - [`ops`]: `als add`, `rm`, `ls`, `mount-all`, `umount-all`, `view`.
//!
//! docs/als.md describes the protocol (containers/storage 1.43 and ≥ 1.54), the layout, the
//! storage.conf lines, and what works for rootless podman.

pub(crate) mod convert;
pub(crate) mod mounts;
pub(crate) mod ops;
pub mod protocol;
pub(crate) mod root;
pub(crate) mod state;
pub(crate) mod usage;
pub(crate) mod view;

use std::path::PathBuf;

use thiserror::Error;

/// Why an ALS command failed. Messages name the path, reference or layer, and the cause.
#[derive(Debug, Error)]
pub enum AlsError {
    #[error("{}: {step}: {source}", path.display())]
    Io { path: PathBuf, step: &'static str, source: std::io::Error },
    #[error(transparent)]
    Repo(#[from] crate::store::repo::RepoError),
    #[error(transparent)]
    Reference(#[from] protocol::BadReference),
    #[error("layer {layer}: {source}")]
    Convert { layer: String, source: convert::ConvertError },
    #[error("mounting or unmounting {}: {reason}", path.display())]
    Mount { path: PathBuf, reason: String },
    #[error("{} is in use ({by}): stop that (podman rm / podman image unmount), or --force to detach lazily", path.display())]
    Busy { path: PathBuf, by: String },
    #[error("{}: {reason}", path.display())]
    NotOurs { path: PathBuf, reason: String },
    /// The setuid helper's gate refused (an unprivileged caller's view).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}
