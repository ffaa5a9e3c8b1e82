//! Privileged mode: cfsmount installed setuid-root or with file capabilities, serving
//! unprivileged callers (rootless container runtimes). Nothing here runs otherwise.
//!
//! - `init`, early init, the first thing `main` runs: decides the mode once and, when
//!   privileged, repairs fds 0-2, wipes the environment, fixes umask/rlimits, makes the process
//!   undumpable, becomes uid/gid 0 in all ids (the caller can no longer signal or ptrace it),
//!   trims capabilities, loads the policy (failing closed) and refuses every subcommand except
//!   `mount`/`umount` (and `oci mount`);
//! - `caller`, the caller's credentials and acting with them;
//! - `gate`, THE gate, the closed list of extra checks privileged mode makes (the mount engine's
//!   access policy in this mode);
//! - `idmap`, which id maps a caller may use;
//! - `oci`, `oci mount`: an image of the caller's own store, opened and checked as the caller,
//!   becomes an ordinary helper mount request;
//! - `policy`, the policy file `/etc/cfsmount/helper.conf`;
//! - `verdicts`, remembered verdicts of the image vetting (per caller, keyed by the BLAKE3 hash
//!   of the bytes mounted, or an fs-verity file's digest);
//! - `kept`, kept copies of vetted images (per caller, by the same key), mounted again instead
//!   of copying the image again;
//! - `drop`, for the drop-in personalities: become the caller for good instead.

pub(crate) mod caller;
pub(crate) mod drop;
pub(crate) mod gate;
pub mod idmap;
pub(crate) mod init;
pub(crate) mod kept;
pub(crate) mod oci;
pub mod policy;
pub(crate) mod verdicts;

pub(crate) use init::{early_init, Mode};
