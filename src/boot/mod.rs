//! Boot: `cfsmount setup-root` mounts a verified composefs root from the initramfs, and
//! `cfsmount deploy-root` lays one out on a disk (see docs/boot.md).
//!
//! - `cmdline`: the `composefs=` / `composefs.digest=` kernel arguments (composefs-rs grammar);
//! - `config`: `/etc/cfsmount/setup-root.conf`;
//! - `objects`: every object of a verified image measured before mounting;
//! - `setup`: the mount sequence; its one call into the mount engine is `setup::mount_image`;
//! - `deploy`: `composefs/images` + `composefs/objects` from a directory.

pub mod cmdline;
pub mod config;
pub mod deploy;
mod objects;
pub mod setup;

pub use objects::Checked;
