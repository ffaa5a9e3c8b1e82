//! Id maps a caller may use in privileged mode: every extent must map the caller's own id
//! (count 1) or lie within one of its `/etc/subuid` / `/etc/subgid` ranges. Applies to
//! `--uidmap/--gidmap` specs and to the maps of an `--idmap` user namespace, which must be the
//! caller's own and a direct child of the initial namespace.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::caller::Caller;
use crate::mount::access::AccessError;
use crate::mount::IdMap;
use crate::sys::helper as sys;

/// Which map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    Uid,
    Gid,
}

/// Parses a /proc/PID/{uid,gid}_map text.
pub fn parse_id_map(text: &[u8]) -> Result<Vec<IdMap>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "id map is not text".to_string())?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad id map line {line:?}"))?;
        if f.len() != 3 {
            return Err(format!("bad id map line {line:?}"));
        }
        out.push(IdMap { inside: f[0], outside: f[1], count: f[2] });
    }
    Ok(out)
}

/// Reads the caller's subordinate id ranges from /etc/subuid or /etc/subgid (entries by login
/// name or by numeric id). The file must be root-owned and not group/world-writable.
pub(crate) fn subid_ranges(kind: IdKind, c: &Caller) -> Result<Vec<(u64, u64)>, AccessError> {
    let path = Path::new(match kind {
        IdKind::Uid => "/etc/subuid",
        IdKind::Gid => "/etc/subgid",
    });
    subid_ranges_from(path, c.uid, c.name.as_deref())
}

fn subid_ranges_from(path: &Path, uid: u32, name: Option<&str>) -> Result<Vec<(u64, u64)>, AccessError> {
    use std::os::unix::fs::MetadataExt;
    let err = |r: String| AccessError::Idmap(format!("{}: {r}", path.display()));
    let text = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e.to_string())),
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 || !m.is_file() => {
            return Err(err("not a root-owned, non-writable regular file".into()))
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?,
    };
    let uid_s = uid.to_string();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() != 3 || !(f[0] == uid_s || Some(f[0]) == name) {
            continue;
        }
        if let (Ok(start), Ok(count)) = (f[1].parse::<u64>(), f[2].parse::<u64>()) {
            if count > 0 && start + count <= 1 << 32 {
                out.push((start, count));
            }
        }
    }
    Ok(out)
}

/// Checks that every extent of a map only maps the caller's own id (`own`, count 1) or ids
/// inside one of its subordinate ranges.
pub(crate) fn check_id_map(kind: IdKind, map: &[IdMap], own: u32, ranges: &[(u64, u64)]) -> Result<(), AccessError> {
    if map.is_empty() {
        return Err(AccessError::Idmap(format!("empty {kind:?} map")));
    }
    for e in map {
        let (o, n) = (e.outside as u64, e.count as u64);
        if n == 0 {
            return Err(AccessError::Idmap(format!("{kind:?} map extent with count 0")));
        }
        let own_ok = o == own as u64 && n == 1;
        let sub_ok = ranges.iter().any(|&(s, c)| o >= s && o + n <= s + c);
        if !own_ok && !sub_ok {
            return Err(AccessError::Idmap(format!(
                "{kind:?} map maps outside ids {o}..{} which are neither the caller's own id ({own}) nor in its /etc/sub{}id ranges",
                o + n - 1,
                if kind == IdKind::Uid { "u" } else { "g" }
            )));
        }
    }
    Ok(())
}

/// Both maps of a user namespace the caller wants to use or have created.
pub(crate) fn check_maps(c: &Caller, uid: &[IdMap], gid: &[IdMap]) -> Result<(), AccessError> {
    check_id_map(IdKind::Uid, uid, c.uid, &subid_ranges(IdKind::Uid, c)?)?;
    check_id_map(IdKind::Gid, gid, c.gid, &subid_ranges(IdKind::Gid, c)?)
}

/// Checks an `--idmap` user namespace already opened as the caller: not the helper's (initial)
/// namespace, owned by the caller (NS_GET_OWNER_UID), a direct child of the initial namespace,
/// and its uid/gid maps (read from inside the namespace by a short-lived forked child) only
/// use the caller's own ids or its subordinate ranges.
pub(crate) fn check_userns(c: &Caller, path: &Path, fd: BorrowedFd<'_>) -> Result<(), AccessError> {
    let idm = |r: String| AccessError::Idmap(format!("{}: {r}", path.display()));
    let ours = rustix::fs::open("/proc/self/ns/user", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| AccessError::Io { what: "opening /proc/self/ns/user", errno: e })?;
    let same = |a: BorrowedFd<'_>, b: BorrowedFd<'_>| -> Result<bool, AccessError> {
        let st = |f| rustix::fs::fstat(f).map_err(|e| AccessError::Io { what: "fstat of a namespace", errno: e });
        let (x, y) = (st(a)?, st(b)?);
        Ok(x.st_dev == y.st_dev && x.st_ino == y.st_ino)
    };
    if same(fd, ours.as_fd())? {
        return Err(idm("is the initial user namespace".into()));
    }
    let owner = sys::ns_get_owner_uid(fd).map_err(|e| idm(format!("NS_GET_OWNER_UID: {e}")))?;
    if owner != c.uid {
        return Err(idm(format!("owned by uid {owner}, not by the caller (uid {})", c.uid)));
    }
    let parent = sys::ns_get_parent(fd).map_err(|e| idm(format!("NS_GET_PARENT: {e}")))?;
    if !same(parent.as_fd(), ours.as_fd())? {
        return Err(idm("nested user namespaces are not supported (its parent is not the initial namespace)".into()));
    }
    let (um, gm) = sys::read_userns_maps(fd).map_err(|e| idm(format!("reading its id maps: {e}")))?;
    let um = parse_id_map(&um).map_err(idm)?;
    let gm = parse_id_map(&gm).map_err(idm)?;
    check_maps(c, &um, &gm).map_err(|e| idm(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_checks() {
        let m = |o, n| vec![IdMap { inside: 0, outside: o, count: n }];
        let ranges = [(100000u64, 65536u64)];
        assert!(check_id_map(IdKind::Uid, &m(1000, 1), 1000, &ranges).is_ok());
        assert!(check_id_map(IdKind::Uid, &m(100000, 65536), 1000, &ranges).is_ok());
        assert!(check_id_map(IdKind::Uid, &m(0, 1), 1000, &ranges).is_err(), "root");
        assert!(check_id_map(IdKind::Uid, &m(1000, 2), 1000, &ranges).is_err(), "own id + neighbour");
        assert!(check_id_map(IdKind::Uid, &m(100000, 65537), 1000, &ranges).is_err(), "past the range");
        assert!(check_id_map(IdKind::Uid, &m(99999, 2), 1000, &ranges).is_err(), "before the range");
        assert!(check_id_map(IdKind::Uid, &[], 1000, &ranges).is_err());
        assert_eq!(
            parse_id_map(b"         0       1000          1\n         1     100000      65536\n").unwrap(),
            vec![IdMap { inside: 0, outside: 1000, count: 1 }, IdMap { inside: 1, outside: 100000, count: 65536 }]
        );
        assert!(parse_id_map(b"0 1\n").is_err());
    }

    #[test]
    fn subid_file_parsing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("subuid");
        std::fs::write(&p, "alice:100000:65536\n1001:200000:10\nbob:300000:5\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        if rustix::process::geteuid().is_root() {
            assert_eq!(subid_ranges_from(&p, 1000, Some("alice")).unwrap(), vec![(100000, 65536)]);
            assert_eq!(subid_ranges_from(&p, 1001, None).unwrap(), vec![(200000, 10)]);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
            assert!(subid_ranges_from(&p, 1000, Some("alice")).is_err());
        }
        assert!(subid_ranges_from(&d.path().join("missing"), 1, None).unwrap().is_empty());
    }
}
