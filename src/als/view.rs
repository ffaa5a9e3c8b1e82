//! Rootless podman: a per-user view of an ALS root. Rootless podman runs in a user namespace
//! where the user's own uid is root and its `/etc/subuid` range follows (`0 UID 1`,
//! `1 SUBUID COUNT`, ...); layer files owned by real root would show up as `nobody` there and
//! copy-up would fail. A view serves the same references as its ALS root, from its own tmpfs,
//! with every `diff` mount idmapped with exactly that mapping (image uid 0 -> the user, image
//! uid N -> the N-th subordinate id), so files owned by root in the image are root inside the
//! user's containers.
//!
//! The view's tmpfs is owned by root, mode 0700, with a POSIX ACL entry that lets the user
//! (and no one else) traverse and read it: nothing in it is the user's to change, and other
//! users cannot read the blobs (bind-mounted from the store, which only root can traverse).
//!
//! A view is created by root (`als view --user NAME`) at a path whose every ancestor is owned
//! by root and writable by no one else (default `/run/cfsmount-als/NAME`), so that no user can
//! redirect where the tmpfs goes. Creating views through the setuid helper under its policy
//! waits for the helper work of issue 11 (docs/als.md).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::root::ViewOf;
use super::AlsError;
use crate::mount::IdMap;

/// Default parent of views.
pub const VIEWS_DIR: &str = "/run/cfsmount-als";

/// One view (`als-records/views/<uid>-<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewRecord {
    /// The ALS root whose references it serves.
    pub root: PathBuf,
    /// Where the view is mounted (storage.conf of the user names it).
    pub target: PathBuf,
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub uid_map: Vec<(u32, u32, u32)>,
    pub gid_map: Vec<(u32, u32, u32)>,
}

impl ViewRecord {
    pub fn view_of(&self) -> ViewOf {
        let m = |v: &[(u32, u32, u32)]| {
            v.iter().map(|&(inside, outside, count)| IdMap { inside, outside, count }).collect()
        };
        ViewOf { uid: self.uid, gid: self.gid, uid_map: m(&self.uid_map), gid_map: m(&self.gid_map) }
    }

    /// File name of the record.
    pub fn id(&self) -> String {
        crate::oci::Sha256::of(self.target.as_os_str().as_encoded_bytes()).hex()
    }
}

/// The user `name` (or a numeric uid) from /etc/passwd: (name, uid, gid).
pub fn lookup_user(name: &str) -> Result<(String, u32, u32), AlsError> {
    let text = read_root_file(Path::new("/etc/passwd"))?;
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        if f[0] == name || f[2] == name {
            let n =
                |s: &str| s.parse::<u32>().map_err(|_| AlsError::Other(format!("/etc/passwd: bad id in {:?}", f[0])));
            return Ok((f[0].to_string(), n(f[2])?, n(f[3])?));
        }
    }
    Err(AlsError::Other(format!("no user {name:?} in /etc/passwd")))
}

/// podman's rootless mapping for the user: its own id as 0, then its subordinate ranges from
/// `file` (/etc/subuid or /etc/subgid, entries by name or uid) in file order.
pub fn podman_mapping(file: &Path, name: &str, uid: u32, own: u32) -> Result<Vec<(u32, u32, u32)>, AlsError> {
    let text = read_root_file(file)?;
    let mut maps = vec![(0, own, 1)];
    let mut next: u32 = 1;
    for l in text.lines() {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 || !(f[0] == name || f[0] == uid.to_string()) {
            continue;
        }
        let (Ok(start), Ok(count)) = (f[1].parse::<u32>(), f[2].parse::<u32>()) else {
            return Err(AlsError::Other(format!("{}: bad line {l:?}", file.display())));
        };
        if count == 0 || start.checked_add(count - 1).is_none() {
            return Err(AlsError::Other(format!("{}: bad range in {l:?}", file.display())));
        }
        let Some(end) = next.checked_add(count) else { break };
        maps.push((next, start, count));
        next = end;
        if maps.len() == 340 {
            break; // the kernel's limit of extents per map
        }
    }
    if maps.len() == 1 {
        return Err(AlsError::Other(format!(
            "{name} has no range in {} (rootless podman needs one): add e.g. `{name}:100000:65536`",
            file.display()
        )));
    }
    Ok(maps)
}

/// A root-owned file not writable by others, read whole (small).
fn read_root_file(p: &Path) -> Result<String, AlsError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).map_err(|e| AlsError::Io { path: p.into(), step: "stat", source: e })?;
    if !md.is_file() || md.uid() != 0 || md.mode() & 0o022 != 0 || md.len() > (16 << 20) {
        return Err(AlsError::Other(format!("{}: not a root-owned regular file writable only by root", p.display())));
    }
    std::fs::read_to_string(p).map_err(|e| AlsError::Io { path: p.into(), step: "reading", source: e })
}

/// Refuse a view target whose existing ancestors are not all root-owned directories that only
/// root can write (a user could otherwise redirect where root mounts), or a symlink anywhere.
pub fn check_target_path(target: &Path) -> Result<(), AlsError> {
    use std::os::unix::fs::MetadataExt;
    if !target.is_absolute() {
        return Err(AlsError::Other(format!("view target {} must be an absolute path", target.display())));
    }
    let mut p = PathBuf::from("/");
    for c in target.components().skip(1) {
        let std::path::Component::Normal(c) = c else {
            return Err(AlsError::Other(format!("view target {}: '.' or '..' in the path", target.display())));
        };
        let parent = p.clone();
        p.push(c);
        let md = std::fs::symlink_metadata(&parent).map_err(|e| AlsError::Io {
            path: parent.clone(),
            step: "stat",
            source: e,
        })?;
        if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
            return Err(AlsError::NotOurs {
                path: parent,
                reason: "a view's ancestors must be root-owned directories only root can write".into(),
            });
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(AlsError::NotOurs { path: p, reason: "a symlink in a view's path".into() })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AlsError::Io { path: p, step: "stat", source: e }),
        }
    }
    Ok(())
}

/// Refuse a path that root does not alone control (the store an unprivileged caller's view is
/// made from): every component from `/` on, the path itself included, exists, is a directory
/// and no symlink, is owned by root and writable by no one else, except that an ancestor may be
/// sticky (/tmp, /var/tmp: others cannot rename or remove root's entries in it).
pub fn check_root_owned_path(p: &Path) -> Result<(), AlsError> {
    use std::os::unix::fs::MetadataExt;
    if !p.is_absolute() {
        return Err(AlsError::Other(format!("{} must be an absolute path", p.display())));
    }
    let comps: Vec<_> = p.components().skip(1).collect();
    let mut cur = PathBuf::from("/");
    for i in 0..=comps.len() {
        if i > 0 {
            let std::path::Component::Normal(c) = comps[i - 1] else {
                return Err(AlsError::Other(format!("{}: '.' or '..' in the path", p.display())));
            };
            cur.push(c);
        }
        let md =
            std::fs::symlink_metadata(&cur).map_err(|e| AlsError::Io { path: cur.clone(), step: "stat", source: e })?;
        let last = i == comps.len();
        let sticky = md.mode() & 0o1000 != 0;
        let reason = if md.file_type().is_symlink() {
            "a symlink"
        } else if !md.is_dir() {
            "not a directory"
        } else if md.uid() != 0 {
            "not owned by root"
        } else if md.mode() & 0o022 != 0 && (last || !sticky) {
            "writable by others than root"
        } else {
            continue;
        };
        return Err(AlsError::NotOurs { path: cur, reason: format!("{reason} (the store must be root's alone)") });
    }
    Ok(())
}

/// The `system.posix_acl_access` value granting `uid` r-x on a directory whose owner is root
/// with rwx, and nothing to the group and others (`user::rwx,user:UID:r-x,group::---,
/// mask::r-x,other::---`; entries sorted by tag as the kernel requires).
pub fn acl_user_rx(uid: u32) -> Vec<u8> {
    const VERSION: u32 = 2;
    const UNDEFINED: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 7, UNDEFINED), // ACL_USER_OBJ
        (0x02, 5, uid),       // ACL_USER
        (0x04, 0, UNDEFINED), // ACL_GROUP_OBJ
        (0x10, 5, UNDEFINED), // ACL_MASK
        (0x20, 0, UNDEFINED), // ACL_OTHER
    ];
    let mut v = VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_layout_is_the_kernels() {
        let a = acl_user_rx(1000);
        assert_eq!(a.len(), 4 + 5 * 8);
        assert_eq!(&a[..4], &2u32.to_le_bytes());
        assert_eq!(&a[12..14], &2u16.to_le_bytes());
        assert_eq!(&a[16..20], &1000u32.to_le_bytes());
    }

    #[test]
    fn root_owned_paths() {
        assert!(check_root_owned_path(Path::new("/usr/lib")).is_ok());
        // Sticky ancestors are fine; a sticky, world-writable path itself is not.
        assert!(check_root_owned_path(Path::new("/tmp")).is_err());
        assert!(check_root_owned_path(Path::new("usr/lib")).is_err());
        assert!(check_root_owned_path(Path::new("/usr/../tmp")).is_err());
        assert!(check_root_owned_path(Path::new("/nonexistent-cfsmount-x")).is_err());
    }

    #[test]
    fn relative_or_dotted_targets_are_refused() {
        assert!(check_target_path(Path::new("run/x")).is_err());
        assert!(check_target_path(Path::new("/run/../tmp/x")).is_err());
        // /tmp is sticky and world-writable: a user could have put something there.
        assert!(check_target_path(Path::new("/tmp/cfsmount-als-view-test/x")).is_err());
    }
}
