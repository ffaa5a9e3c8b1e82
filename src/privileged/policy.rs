//! The helper policy file (/etc/cfsmount/helper.conf): who may use the privileged helper, with
//! which per-user limits, onto which target filesystem types. Strictly validated; fails closed.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the installed policy lives. Not overridable by the caller (no env, no flag).
pub const POLICY_PATH: &str = "/etc/cfsmount/helper.conf";
/// The compiled-in default, used only when POLICY_PATH (or its directory) does not exist.
pub const DEFAULT_POLICY: &str = include_str!("../../policy/helper.conf");
/// Policy files larger than this are refused.
const MAX_POLICY_SIZE: u64 = 64 * 1024;

/// Per-user resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Mounts the user may hold at once (recorded in the state directory).
    pub max_mounts: u32,
    /// Loop devices the user's mounts may hold at once.
    pub max_loop_devices: u32,
    /// Largest image (or TOC/dumpfile) the helper will accept, in bytes.
    pub max_image_size: u64,
    /// Largest number of inodes (entries) in an image.
    pub max_entries: u64,
}

/// Per-user override: any field left out keeps the default limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub max_mounts: Option<u32>,
    pub max_loop_devices: Option<u32>,
    pub max_image_size: Option<u64>,
    pub max_entries: Option<u64>,
}

/// Caps on all unprivileged callers together (live mounts the helper made for any user).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineLimits {
    pub max_mounts: u32,
    pub max_loop_devices: u32,
    /// Bytes of vetted image copies the helper keeps in `<state dir>/copies` (tmpfs) so that a
    /// repeated mount of the same image by the same caller is not copied again (privileged/
    /// kept.rs); 0 turns kept copies off. Optional (policy files written before it existed).
    #[serde(default = "default_kept_copy_bytes")]
    pub kept_copy_bytes: u64,
}

/// The default of `machine_limits.kept_copy_bytes`: 256 MiB.
pub const DEFAULT_KEPT_COPY_BYTES: u64 = 256 << 20;
/// Largest `kept_copy_bytes` accepted.
const KEPT_COPY_BYTES_CAP: u64 = 64 << 30;

fn default_kept_copy_bytes() -> u64 {
    DEFAULT_KEPT_COPY_BYTES
}

impl Default for MachineLimits {
    /// For policy files written before the machine-wide caps existed.
    fn default() -> MachineLimits {
        MachineLimits { max_mounts: 256, max_loop_devices: 16, kept_copy_bytes: DEFAULT_KEPT_COPY_BYTES }
    }
}

/// Which callers may use the helper.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// User names or numeric uids; `"*"` = every user.
    pub users: Vec<String>,
    /// Group names or numeric gids; a caller in any of them (primary or supplementary) is allowed.
    pub groups: Vec<String>,
    /// User names or uids always refused (checked first).
    #[serde(default)]
    pub deny_users: Vec<String>,
}

/// What an allowed caller may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// `--idmap`/`--uidmap`/`--gidmap` (validated against the caller's subordinate ids).
    pub idmap: bool,
    /// Accepted for policies written for earlier versions; has no effect: writable overlays
    /// (`--upperdir`) are never offered to unprivileged callers (docs/helper.md).
    pub upperdir: bool,
    /// `--toc`/`--dump` sources built on the fly in the sandbox.
    pub build_from_toc: bool,
    /// Attaching at a target path (false: only `--fd-out` is allowed).
    pub attach_at_target: bool,
    /// `als view` / `als view-rm` for the caller: its own view (idmapped onto its rootless
    /// podman mapping) of an ALS root that root serves from a root-owned store. Off when left
    /// out: it shows every user the images root serves (docs/als.md, "Views through the helper").
    #[serde(default)]
    pub als_view: bool,
}

/// The policy file as written on disk (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    access: Access,
    limits: Limits,
    #[serde(default)]
    user_limits: BTreeMap<String, LimitsOverride>,
    #[serde(default)]
    machine_limits: MachineLimits,
    allowed_target_fs: Vec<String>,
    features: Features,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub access: Access,
    pub limits: Limits,
    pub user_limits: BTreeMap<String, LimitsOverride>,
    pub machine_limits: MachineLimits,
    /// (name, statfs f_type magic) of the filesystems a mount target may live on.
    pub allowed_target_fs: Vec<(String, u64)>,
    pub features: Features,
    /// Where it came from (a path, or `<built-in default>`).
    pub source: String,
}

/// Filesystems a target may be on, by name → statfs magic. Anything not listed here (procfs,
/// sysfs, cgroupfs, devtmpfs, debugfs, securityfs, ...) can never be allowed.
pub const KNOWN_TARGET_FS: &[(&str, u64)] = &[
    ("ext4", 0xEF53), // also ext2/ext3
    ("xfs", 0x5846_5342),
    ("btrfs", 0x9123_683E),
    ("tmpfs", 0x0102_1994),
    ("overlay", 0x794C_7630),
    ("f2fs", 0xF2F5_2010),
    ("bcachefs", 0xCA45_1A4E),
    ("zfs", 0x2FC1_2FC1),
    ("nfs", 0x6969),
    ("fuse", 0x6573_5546),
    ("erofs", 0xE0F5_E1E2),
    ("squashfs", 0x7371_7368),
];

/// Largest sane limits (guards against typos that would disable a limit by accident).
const MAX_IMAGE_SIZE_CAP: u64 = 64 << 30;
const MAX_ENTRIES_CAP: u64 = 1 << 32;

impl Policy {
    /// Parses and validates policy text. `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
        let bad = |reason: String| PolicyError::Invalid { path: source.to_string(), reason };
        let raw: RawPolicy = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if raw.version != 1 {
            return Err(bad(format!("version {} is not supported (expected 1)", raw.version)));
        }
        check_limits(&raw.limits).map_err(|r| bad(format!("limits: {r}")))?;
        let m = &raw.machine_limits;
        if m.max_mounts > 65536 || m.max_loop_devices > 65536 {
            return Err(bad("machine_limits: max_mounts and max_loop_devices must be at most 65536".into()));
        }
        if m.kept_copy_bytes > KEPT_COPY_BYTES_CAP {
            return Err(bad(format!("machine_limits: kept_copy_bytes must be at most {KEPT_COPY_BYTES_CAP} (64 GiB)")));
        }
        for (user, o) in &raw.user_limits {
            check_name(user).map_err(|r| bad(format!("user_limits key {user:?}: {r}")))?;
            let merged = apply(&raw.limits, o);
            check_limits(&merged).map_err(|r| bad(format!("user_limits.{user}: {r}")))?;
        }
        for u in raw.access.users.iter().chain(&raw.access.deny_users) {
            if u != "*" {
                check_name(u).map_err(|r| bad(format!("access user {u:?}: {r}")))?;
            }
        }
        for g in &raw.access.groups {
            check_name(g).map_err(|r| bad(format!("access group {g:?}: {r}")))?;
        }
        if raw.access.deny_users.iter().any(|u| u == "*") {
            return Err(bad("deny_users may not contain \"*\" (remove the file's users instead)".into()));
        }
        let mut fs = Vec::new();
        for name in &raw.allowed_target_fs {
            let Some(&(n, magic)) = KNOWN_TARGET_FS.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = KNOWN_TARGET_FS.iter().map(|(n, _)| *n).collect();
                return Err(bad(format!(
                    "allowed_target_fs: unknown filesystem {name:?} (known: {})",
                    known.join(", ")
                )));
            };
            if !fs.iter().any(|(x, _)| x == n) {
                fs.push((n.to_string(), magic));
            }
        }
        Ok(Policy {
            access: raw.access,
            limits: raw.limits,
            user_limits: raw.user_limits,
            machine_limits: raw.machine_limits,
            allowed_target_fs: fs,
            features: raw.features,
            source: source.to_string(),
        })
    }

    /// The compiled-in default policy.
    pub fn builtin() -> Result<Policy, PolicyError> {
        Policy::parse(DEFAULT_POLICY, "<built-in default>")
    }

    /// Loads the installed policy from [`POLICY_PATH`], or the built-in default when it is absent.
    pub fn load() -> Result<Policy, PolicyError> {
        Policy::load_from(Path::new(POLICY_PATH))
    }

    /// Loads `path`: it (and its directory) must be root-owned and not group/world-writable, a
    /// regular file, not a symlink, and small. A missing file (or directory) selects the built-in
    /// default; every other problem is an error (fail closed).
    pub fn load_from(path: &Path) -> Result<Policy, PolicyError> {
        let p = path.to_path_buf();
        if let Some(dir) = path.parent() {
            match std::fs::symlink_metadata(dir) {
                Ok(m) => check_owner(&m, dir, true)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Policy::builtin(),
                Err(e) => return Err(PolicyError::Io { path: dir.to_path_buf(), source: e }),
            }
        }
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let mut f = match f {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Policy::builtin(),
            Err(e) => return Err(PolicyError::Io { path: p, source: e }),
        };
        let m = f.metadata().map_err(|e| PolicyError::Io { path: p.clone(), source: e })?;
        check_owner(&m, path, false)?;
        if m.len() > MAX_POLICY_SIZE {
            return Err(PolicyError::Unsafe { path: p, reason: format!("larger than {MAX_POLICY_SIZE} bytes") });
        }
        let mut text = String::new();
        f.by_ref()
            .take(MAX_POLICY_SIZE + 1)
            .read_to_string(&mut text)
            .map_err(|e| PolicyError::Io { path: p.clone(), source: e })?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// The limits that apply to `user` (name) / `uid`.
    pub fn limits_for(&self, user: Option<&str>, uid: u32) -> Limits {
        let key_uid = uid.to_string();
        let o = user.and_then(|u| self.user_limits.get(u)).or_else(|| self.user_limits.get(&key_uid));
        match o {
            Some(o) => apply(&self.limits, o),
            None => self.limits.clone(),
        }
    }

    /// Whether a caller (uid, optional name, all its gids with optional names) may use the helper.
    pub fn allows(&self, uid: u32, user: Option<&str>, groups: &[(u32, Option<String>)]) -> bool {
        let matches = |entry: &String, id: u32, name: Option<&str>| {
            entry.parse::<u32>().ok() == Some(id) || name.is_some_and(|n| n == entry)
        };
        if self.access.deny_users.iter().any(|e| matches(e, uid, user)) {
            return false;
        }
        if self.access.users.iter().any(|e| e == "*" || matches(e, uid, user)) {
            return true;
        }
        groups.iter().any(|(gid, name)| self.access.groups.iter().any(|e| matches(e, *gid, name.as_deref())))
    }

    /// The name of an allowed target filesystem magic, or None if it is not allowed.
    pub fn target_fs_name(&self, magic: u64) -> Option<&str> {
        self.allowed_target_fs.iter().find(|(_, m)| *m == magic).map(|(n, _)| n.as_str())
    }
}

fn apply(base: &Limits, o: &LimitsOverride) -> Limits {
    Limits {
        max_mounts: o.max_mounts.unwrap_or(base.max_mounts),
        max_loop_devices: o.max_loop_devices.unwrap_or(base.max_loop_devices),
        max_image_size: o.max_image_size.unwrap_or(base.max_image_size),
        max_entries: o.max_entries.unwrap_or(base.max_entries),
    }
}

fn check_limits(l: &Limits) -> Result<(), String> {
    if l.max_image_size == 0 || l.max_image_size > MAX_IMAGE_SIZE_CAP {
        return Err(format!("max_image_size must be 1..={MAX_IMAGE_SIZE_CAP}"));
    }
    if l.max_entries == 0 || l.max_entries > MAX_ENTRIES_CAP {
        return Err(format!("max_entries must be 1..={MAX_ENTRIES_CAP}"));
    }
    if l.max_mounts > 4096 || l.max_loop_devices > 4096 {
        return Err("max_mounts and max_loop_devices must be at most 4096".into());
    }
    Ok(())
}

/// User/group names: the portable POSIX set, or a decimal id.
fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("not a valid user/group name or id".into())
    }
}

fn check_owner(m: &std::fs::Metadata, path: &Path, dir: bool) -> Result<(), PolicyError> {
    let unsafe_ = |reason: &str| PolicyError::Unsafe { path: path.to_path_buf(), reason: reason.to_string() };
    if m.uid() != 0 {
        return Err(unsafe_("not owned by root"));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_("group- or world-writable"));
    }
    let ft = m.file_type();
    if dir && !ft.is_dir() {
        return Err(unsafe_("not a directory"));
    }
    if !dir && !ft.is_file() {
        return Err(unsafe_("not a regular file"));
    }
    Ok(())
}

/// Why a policy could not be used. Every variant means "refuse everything".
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("helper policy {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("helper policy {path}: refusing an unsafe policy file: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("helper policy {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_parses_and_allows_everyone() {
        let p = Policy::builtin().unwrap();
        assert!(p.allows(1000, Some("alice"), &[]));
        assert!(p.allows(65534, None, &[]));
        assert!(p.target_fs_name(0x0102_1994).is_some(), "tmpfs allowed by default");
        assert_eq!(p.target_fs_name(0x9fa0), None, "procfs never allowed");
        assert_eq!(p.target_fs_name(0x6265_6572), None, "sysfs never allowed");
    }

    fn with(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
        f(&mut v);
        v.to_string()
    }

    #[test]
    fn unknown_fields_and_bad_values_fail() {
        let cases = [
            with(|v| v["surprise"] = 1.into()),
            with(|v| v["limits"]["max_mountz"] = 1.into()),
            with(|v| v["version"] = 2.into()),
            with(|v| v["allowed_target_fs"] = serde_json::json!(["proc"])),
            with(|v| v["allowed_target_fs"] = serde_json::json!(["sysfs"])),
            with(|v| v["limits"]["max_image_size"] = 0.into()),
            with(|v| v["access"]["users"] = serde_json::json!(["bad,name"])),
            with(|v| v["access"]["deny_users"] = serde_json::json!(["*"])),
            with(|v| v["user_limits"] = serde_json::json!({"bob": {"max_entries": 0}})),
            with(|v| v["features"] = serde_json::json!({"idmap": true})),
            with(|v| v["machine_limits"]["kept_copy_bytes"] = ((64u64 << 30) + 1).into()),
            with(|v| v["machine_limits"]["kept_copy_bytes"] = (-1).into()),
            "".to_string(),
            "{".to_string(),
        ];
        for c in cases {
            assert!(Policy::parse(&c, "t").is_err(), "accepted: {c}");
        }
    }

    /// `machine_limits.kept_copy_bytes`: the built-in 256 MiB, the same when left out (policy
    /// files written before it), 0 (off) and the 64 GiB cap accepted.
    #[test]
    fn kept_copy_bytes_defaults_and_bounds() {
        assert_eq!(Policy::builtin().unwrap().machine_limits.kept_copy_bytes, 256 << 20);
        let old = with(|v| {
            v["machine_limits"] = serde_json::json!({"max_mounts": 256, "max_loop_devices": 16});
        });
        assert_eq!(Policy::parse(&old, "t").unwrap().machine_limits.kept_copy_bytes, DEFAULT_KEPT_COPY_BYTES);
        let none = with(|v| {
            v.as_object_mut().unwrap().remove("machine_limits");
        });
        assert_eq!(Policy::parse(&none, "t").unwrap().machine_limits.kept_copy_bytes, DEFAULT_KEPT_COPY_BYTES);
        for ok in [0u64, 64 << 30] {
            let t = with(|v| v["machine_limits"]["kept_copy_bytes"] = ok.into());
            assert_eq!(Policy::parse(&t, "t").unwrap().machine_limits.kept_copy_bytes, ok);
        }
    }

    #[test]
    fn access_and_limits() {
        let t = with(|v| {
            v["access"] = serde_json::json!({"users": ["alice", "1001"], "groups": ["cfs"], "deny_users": ["1002"]});
            v["user_limits"] = serde_json::json!({"alice": {"max_mounts": 2}});
        });
        let p = Policy::parse(&t, "t").unwrap();
        assert!(p.allows(5, Some("alice"), &[]));
        assert!(p.allows(1001, None, &[]));
        assert!(!p.allows(1003, Some("carol"), &[]));
        assert!(p.allows(1003, Some("carol"), &[(77, Some("cfs".into()))]));
        assert!(!p.allows(1002, Some("alice"), &[]), "deny wins");
        assert_eq!(p.limits_for(Some("alice"), 5).max_mounts, 2);
        assert_eq!(p.limits_for(Some("bob"), 6), p.limits);
    }

    #[test]
    fn unsafe_files_fail_closed_and_missing_means_default() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.path().join("helper.conf");
        // Missing file → built-in default.
        assert_eq!(Policy::load_from(&f).unwrap().limits, Policy::builtin().unwrap().limits);
        assert_eq!(Policy::load_from(&d.path().join("nodir/helper.conf")).unwrap().source, "<built-in default>");
        std::fs::write(&f, DEFAULT_POLICY).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let am_root = rustix::process::geteuid().is_root();
        if am_root {
            assert!(Policy::load_from(&f).is_ok());
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Policy::load_from(&f).unwrap_err().to_string();
        assert!(e.contains("writable") || e.contains("not owned by root"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&f, "{ not json").unwrap();
        assert!(Policy::load_from(&f).is_err());
        // A symlink in place of the file is refused, not followed.
        let g = d.path().join("real.conf");
        std::fs::write(&g, DEFAULT_POLICY).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&g, &f).unwrap();
        assert!(Policy::load_from(&f).is_err());
        // Writable directory → refused.
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, DEFAULT_POLICY).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Policy::load_from(&f).is_err());
        if am_root {
            // Owned by someone else → refused.
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&f, Some(1), None).unwrap();
            assert!(Policy::load_from(&f).unwrap_err().to_string().contains("not owned by root"));
        }
    }
}
