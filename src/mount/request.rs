//! What the CLI asks the mount engine for: the request model shared by `cfsmount mount` and
//! `mount.composefs` (one IdMap type, the verity mode, the destination, the typed `-o` options).

use std::path::PathBuf;

/// How the image bytes are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceKind {
    Image,
    Toc,
    Estargz,
    Dump,
}

/// Whether overlay's fs-verity checking is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Verity {
    #[default]
    Off,
    /// `verity=require` if the kernel offers it, else silently off.
    Try,
    /// `verity=require`, failing when unsupported.
    Require,
}

/// One id-map extent: INSIDE OUTSIDE COUNT (a line of /proc/PID/uid_map, or `--uidmap I:O:N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// An `--uidmap`/`--gidmap` argument that is not `INSIDE:OUTSIDE:COUNT`.
#[derive(Debug, thiserror::Error)]
#[error("bad id map {0:?}: expected INSIDE:OUTSIDE:COUNT with COUNT > 0 and no overflow")]
pub struct BadIdMap(pub String);

impl std::str::FromStr for IdMap {
    type Err = BadIdMap;
    /// `INSIDE:OUTSIDE:COUNT`, decimal, COUNT > 0, no overflow of either range.
    fn from_str(s: &str) -> Result<Self, BadIdMap> {
        let bad = || BadIdMap(s.to_string());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let n = |p: &str| -> Result<u32, BadIdMap> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u32>().map_err(|_| bad())
        };
        let m = IdMap { inside: n(parts[0])?, outside: n(parts[1])?, count: n(parts[2])? };
        if m.count == 0 || m.inside.checked_add(m.count - 1).is_none() || m.outside.checked_add(m.count - 1).is_none() {
            return Err(bad());
        }
        Ok(m)
    }
}

/// The text of a uid_map/gid_map file for `maps`.
pub(crate) fn map_text(maps: &[IdMap]) -> String {
    maps.iter().map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count)).collect()
}

/// Where the user namespace for an idmapped mount comes from.
#[derive(Debug, Clone)]
pub(crate) enum IdmapSpec {
    /// An existing user namespace (e.g. /proc/PID/ns/user).
    Path(PathBuf),
    /// A user namespace cfsmount creates with these maps.
    Maps { uid: Vec<IdMap>, gid: Vec<IdMap> },
}

/// Where the finished overlay goes.
#[derive(Debug)]
pub(crate) enum Dest {
    /// Attached onto this directory.
    Target(PathBuf),
    /// Sent (SCM_RIGHTS) over a unix socket found at this path.
    Socket(PathBuf),
    /// Sent over an inherited, connected socket: the fd number `n` the caller named, and the
    /// duplicate of it taken when the command line was read (checked to be a socket then).
    InheritedFd { n: i32, fd: std::os::fd::OwnedFd },
}

/// One `mount.composefs -o` option, as the one `-o` parser (`crate::cli::mount_composefs`)
/// yields it. The privileged checks validate this very list, and the request is built from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountOption {
    Basedir(String),
    Digest(String),
    Idmap(String),
    Upperdir(String),
    Workdir(String),
    Verity,
    TryVerity,
    Ro,
    Rw,
    Nosuid,
    Nodev,
    Noexec,
    Suid,
    Dev,
    Exec,
    /// Anything else: an error, or (util-linux `-s`, unprivileged only) ignored with a warning.
    Unknown {
        key: String,
        value: Option<String>,
    },
}

impl MountOption {
    /// The option's name as written.
    pub(crate) fn key(&self) -> &str {
        match self {
            MountOption::Basedir(_) => "basedir",
            MountOption::Digest(_) => "digest",
            MountOption::Idmap(_) => "idmap",
            MountOption::Upperdir(_) => "upperdir",
            MountOption::Workdir(_) => "workdir",
            MountOption::Verity => "verity",
            MountOption::TryVerity => "tryverity",
            MountOption::Ro => "ro",
            MountOption::Rw => "rw",
            MountOption::Nosuid => "nosuid",
            MountOption::Nodev => "nodev",
            MountOption::Noexec => "noexec",
            MountOption::Suid => "suid",
            MountOption::Dev => "dev",
            MountOption::Exec => "exec",
            MountOption::Unknown { key, .. } => key,
        }
    }
}

/// One mount to make.
#[derive(Debug)]
pub(crate) struct MountRequest {
    /// Images (or TOCs/dumpfiles with `kind`), lowest layer first.
    pub(crate) sources: Vec<PathBuf>,
    pub(crate) kind: SourceKind,
    /// Expected fs-verity digests, by position in `sources`.
    pub(crate) digests: Vec<[u8; 32]>,
    /// Object directories (data-only lowers), in lookup order.
    pub(crate) basedirs: Vec<PathBuf>,
    pub(crate) verity: Verity,
    pub(crate) idmap: Option<IdmapSpec>,
    /// (upperdir, workdir)
    pub(crate) upper: Option<(PathBuf, PathBuf)>,
    /// Read-only even with an upper dir.
    pub(crate) readonly: bool,
    /// Always use a loop device, even where the kernel can mount the image file directly.
    pub(crate) force_loop: bool,
    /// Root only: keep setuid bits / device nodes effective.
    pub(crate) allow_suid: bool,
    pub(crate) allow_dev: bool,
    /// MOUNT_ATTR_NOEXEC on the final mount.
    pub(crate) noexec: bool,
    pub(crate) dest: Dest,
}

impl MountRequest {
    /// Whether the final mount is writable (an upper dir without `ro`).
    pub(crate) fn writable(&self) -> bool {
        self.upper.is_some() && !self.readonly
    }
}

/// What the engine's operator (the CLI) decided about the environment: the state directory and
/// the test hook that forces the legacy overlay syntax. In privileged mode both are fixed (the
/// caller's environment is never read).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) state_dir: PathBuf,
    pub(crate) force_legacy_overlay: bool,
}

/// Default directory of mount records.
pub(crate) const DEFAULT_STATE_DIR: &str = "/run/cfsmount";

impl Settings {
    /// The fixed settings (privileged mode, and the default otherwise).
    pub(crate) fn fixed() -> Settings {
        Settings { state_dir: PathBuf::from(DEFAULT_STATE_DIR), force_legacy_overlay: false }
    }

    /// Unprivileged runs: `CFSMOUNT_STATE_DIR` chooses the state directory and
    /// `CFSMOUNT_TEST_LEGACY_OVERLAY` forces the legacy overlay syntax (tests of the fallback).
    pub(crate) fn from_env() -> Settings {
        let mut s = Settings::fixed();
        if let Some(d) = std::env::var_os("CFSMOUNT_STATE_DIR").filter(|d| !d.is_empty()) {
            s.state_dir = PathBuf::from(d);
        }
        s.force_legacy_overlay = std::env::var_os("CFSMOUNT_TEST_LEGACY_OVERLAY").is_some();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idmap_specs() {
        assert_eq!("0:100000:65536".parse::<IdMap>().unwrap(), IdMap { inside: 0, outside: 100000, count: 65536 });
        for bad in ["0:1", "a:1:1", "0:0:0", "4294967295:0:2", "-1:0:1", "0:1:1:1", "+1:0:1"] {
            assert!(bad.parse::<IdMap>().is_err(), "{bad}");
        }
        assert_eq!(
            map_text(&[IdMap { inside: 0, outside: 1000, count: 1 }, IdMap { inside: 1, outside: 9, count: 2 }]),
            "0 1000 1\n1 9 2\n"
        );
    }
}
