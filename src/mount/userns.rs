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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The child's pid, printed by [`a_dead_parent_leaves_no_child`]'s own process run again.
    const DIE_AFTER_SPAWN: &str = "CFSMOUNT_TEST_USERNS_DIE_AFTER_SPAWN";

    fn ids(text: &[u8]) -> Vec<Vec<u32>> {
        String::from_utf8_lossy(text)
            .lines()
            .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
            .collect()
    }

    /// A namespace with the maps asked for, owned by its creator.
    #[test]
    fn the_namespace_has_the_maps() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: writing a uid_map of other ids needs root");
            return;
        }
        let map = [IdMap { inside: 0, outside: 100_000, count: 65_536 }];
        let fd = create(&map, &map).unwrap();
        assert_eq!(crate::sys::helper::ns_get_nstype(fd.as_fd()).unwrap(), libc::CLONE_NEWUSER);
        assert_eq!(crate::sys::helper::ns_get_owner_uid(fd.as_fd()).unwrap(), 0);
        let (u, g) = crate::sys::helper::read_userns_maps(fd.as_fd()).unwrap();
        assert_eq!(ids(&u), vec![vec![0, 100_000, 65_536]]);
        assert_eq!(ids(&g), vec![vec![0, 100_000, 65_536]]);
    }

    /// A parent that dies while its child holds the namespace (it never releases it) takes the
    /// child with it: the child reads end of file on the release pipe once the parent's end is
    /// closed by its exit (the child closed its own copy first).
    #[test]
    fn a_dead_parent_leaves_no_child() {
        if std::env::var_os(DIE_AFTER_SPAWN).is_some() {
            let child = crate::sys::mount::UsernsChild::spawn().unwrap();
            println!("\nuserns-child-pid={}", child.pid());
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            std::process::exit(0); // no destructor runs: the child is never released
        }
        // Its output goes to a file, not a pipe: a child left alive would hold a pipe open.
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "mount::userns::tests::a_dead_parent_leaves_no_child", "--nocapture", "--test-threads=1"])
            .env(DIE_AFTER_SPAWN, "1")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let errs = std::fs::read_to_string(&err).unwrap();
        let pid: u32 = match text.lines().find_map(|l| l.strip_prefix("userns-child-pid=")) {
            Some(p) => p.trim().parse().unwrap(),
            None => {
                // No user namespace for this (unprivileged) user here: nothing to test.
                assert!(!rustix::process::geteuid().is_root(), "{text}{errs}");
                eprintln!("skipped: no user namespace: {errs}");
                return;
            }
        };
        // Gone, or a zombie waiting for whoever inherited it: not alive.
        let state = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        };
        let t0 = std::time::Instant::now();
        while state().is_some_and(|s| s != "Z" && s != "X") {
            if t0.elapsed() > std::time::Duration::from_secs(5) {
                // Not left behind blocked forever: killed, then the failure.
                let s = state();
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                panic!("child {pid} outlived its parent: {s:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
