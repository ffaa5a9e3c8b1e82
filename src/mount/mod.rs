//! The mount engine: EROFS (file-backed or on a loop device) with the new mount API, idmapped
//! mounts, the overlay on top, mount records, and unmounting. The CLI builds a
//! `MountRequest` and chooses the access policy (`access`) and the kernel (`kernel`);
//! nothing here reads the environment or asks whether it runs privileged.
//!
//! - `request`: the request model (one IdMap type, verity, destination, `-o` options);
//! - `pipeline`: the mount sequence, phase by phase; `umount`: unmounting;
//! - `image`: opening or building images; `erofs`, `loopdev`: the EROFS layers;
//! - `fs_context`: the one fs-context type; `overlay`: the overlays; `compat`: the
//!   kernel-compatibility fallbacks; `userns`: user namespaces for idmaps;
//! - `handover`: attributes enforced, attach at the target or send the fd;
//! - `records`: the mount records and their liveness;
//! - `kernel`: the syscall seam; `error`: the errors.

pub(crate) mod access;
pub(crate) mod compat;
pub(crate) mod erofs;
pub(crate) mod error;
pub(crate) mod fs_context;
pub(crate) mod handover;
pub(crate) mod image;
pub(crate) mod kernel;
pub mod loopdev;
pub(crate) mod overlay;
pub(crate) mod pipeline;
pub(crate) mod records;
pub(crate) mod request;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
pub(crate) mod umount;
pub(crate) mod userns;

pub(crate) use error::MountError;
pub(crate) use pipeline::{mount, MountOutcome};
pub use request::IdMap;
pub(crate) use request::{Dest, IdmapSpec, MountOption, MountRequest, Settings, SourceKind, Verity};
pub(crate) use umount::unmount;
