//! User namespaces for idmapped mounts (the helper's data idmap, and `--uidmap`/`--gidmap`): a
//! child born in a new user namespace sends us its fd, we write its maps and reap the child; the
//! namespace lives on through the fd (`crate::sys::mount::UsernsChild`).

use std::os::fd::OwnedFd;

use super::error::IdmapError;
use super::kernel::{write_maps, Kernel};
use super::request::IdMap;

/// A user namespace with `uid`/`gid` as its maps.
pub(crate) fn create(kernel: &dyn Kernel, uid: &[IdMap], gid: &[IdMap]) -> Result<OwnedFd, IdmapError> {
    if uid.is_empty() || gid.is_empty() {
        return Err(IdmapError::MissingMap);
    }
    let failed = |e: crate::sys::mount::ChildError| IdmapError::Create { step: e.step, errno: e.errno };
    let child = crate::sys::mount::UsernsChild::spawn().map_err(failed)?;
    let ns = child.namespace().map_err(failed)?;
    write_maps(kernel, child.pid(), uid, gid)?;
    drop(child); // lets it exit and reaps it; the namespace lives on through `ns`
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The child's pid, printed by [`a_dead_parent_leaves_no_child`]'s own process run again.
    const DIE_AFTER_SPAWN: &str = "CFSMOUNT_TEST_USERNS_DIE_AFTER_SPAWN";
    /// Makes [`a_refused_close_range_does_not_hang_the_child`]'s own process, run again, refuse
    /// `close_range` and make a namespace.
    const NO_CLOSE_RANGE: &str = "CFSMOUNT_TEST_USERNS_NO_CLOSE_RANGE";
    /// Makes [`the_childs_memory_is_out_of_reach_without_cap_sys_ptrace`]'s own process, run
    /// again, hold a child until its stdin ends.
    const HOLD_CHILD: &str = "CFSMOUNT_TEST_USERNS_HOLD_CHILD";

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
        let fd = create(&crate::mount::kernel::Real, &map, &map).unwrap();
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

    /// The child shares its parent's memory, and that memory is out of reach of a process of
    /// uid 0 without `CAP_SYS_PTRACE` through the child as through the parent, although such a
    /// process holds every capability in the child's namespace (it is owned by uid 0):
    /// `/proc/CHILD/mem`, `/proc/CHILD/ns/user` and the child's fds (`/proc/CHILD/fd/N`) do not
    /// open for it, while they do for root with its capabilities (so the check is not vacuous);
    /// and the child holds only the release pipe's read end, no copy of the parent's fds. Both for a parent whose memory is undumpable (the setuid
    /// helper) and for one whose memory is dumpable (a plain run by root: `spawn` makes it
    /// undumpable, for good).
    #[test]
    fn the_childs_memory_is_out_of_reach_without_cap_sys_ptrace() {
        use rustix::process::{dumpable_behavior, set_dumpable_behavior, DumpableBehavior};
        if let Some(mode) = std::env::var_os(HOLD_CHILD) {
            let undumpable = mode == "undumpable";
            set_dumpable_behavior(if undumpable { DumpableBehavior::NotDumpable } else { DumpableBehavior::Dumpable })
                .unwrap();
            // An fd the child gets a copy of.
            let null = std::fs::File::open("/dev/null").unwrap();
            let child = crate::sys::mount::UsernsChild::spawn().unwrap();
            let _ns = child.namespace().unwrap();
            use std::os::fd::AsRawFd;
            println!("\nuserns-child-pid={} fd={}", child.pid(), null.as_raw_fd());
            use std::io::{Read, Write};
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            drop(child);
            // Undumpable for good, whatever it was before.
            assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
            std::process::exit(0);
        }
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root (a process of uid 0 without capabilities)");
            return;
        }
        for mode in ["undumpable", "dumpable"] {
            check_out_of_reach(mode);
        }
    }

    fn check_out_of_reach(mode: &str) {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut holder = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "mount::userns::tests::the_childs_memory_is_out_of_reach_without_cap_sys_ptrace"])
            .args(["--nocapture", "--test-threads=1"])
            .env(HOLD_CHILD, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(holder.stdout.take().unwrap()).lines();
        let (pid, fd): (u32, u32) = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| {
                let (p, f) = l.strip_prefix("userns-child-pid=")?.split_once(" fd=")?;
                Some((p.parse().unwrap(), f.trim().parse().unwrap()))
            })
            .expect("the holder printed its child's pid");
        // `sh` opens the file on fd 3 (`exec 3<`) and says so: nothing is read from it.
        let opens = |path: &str, drop_caps: bool| -> bool {
            let mut c = Command::new("setpriv");
            if drop_caps {
                c.args(["--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all"]);
            }
            let o = c.args(["--", "sh", "-c", "exec 3<\"$1\" && echo opened", "sh", path]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).contains("opened")
        };
        // Once it has sent its namespace, the child holds one fd, the release pipe's read end,
        // and no copy of the parent's (`fd`): waited for (it closes its socket end after the
        // send the holder saw), for at most 5 s.
        let fds = || -> Vec<u32> {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
                .collect()
        };
        let t0 = std::time::Instant::now();
        let mut held = fds();
        while held.len() > 1 && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
            held = fds();
        }
        let paths = [format!("/proc/{pid}/mem"), format!("/proc/{pid}/ns/user"), format!("/proc/{pid}/fd/{}", held[0])];
        let results: Vec<(String, bool, bool)> = paths
            .into_iter()
            .map(|p| {
                let (without, with) = (opens(&p, true), opens(&p, false));
                (p, without, with)
            })
            .collect();
        drop(holder.stdin.take()); // releases the holder, which drops its child
        assert!(holder.wait().unwrap().success(), "{mode}: the holder failed");
        assert_eq!(held.len(), 1, "{mode}: the child holds {held:?}");
        assert!(!held.contains(&fd), "{mode}: the child holds a copy of the parent's fd {fd}");
        for (path, without_caps, with_caps) in results {
            assert!(!without_caps, "{mode}: {path} opened for uid 0 without capabilities");
            assert!(with_caps, "{mode}: {path} did not open for root with its capabilities: the check proves nothing");
        }
    }

    /// With `close_range` refused (a seccomp filter answering `ENOSYS`, as a kernel before 5.9
    /// does, or a container runtime's filter), the child still sees end of file on the release
    /// pipe and exits: `create` returns, with the maps written (it waited forever when the
    /// child left its copy of the pipe's write end to `close_range`).
    #[test]
    fn a_refused_close_range_does_not_hang_the_child() {
        if std::env::var_os(NO_CLOSE_RANGE).is_some() {
            let filter = seccompiler::SeccompFilter::new(
                [(libc::SYS_close_range, vec![])].into_iter().collect(),
                seccompiler::SeccompAction::Allow,
                seccompiler::SeccompAction::Errno(libc::ENOSYS as u32),
                std::env::consts::ARCH.try_into().unwrap(),
            )
            .unwrap();
            let prog: seccompiler::BpfProgram = filter.try_into().unwrap();
            seccompiler::apply_filter(&prog).unwrap();
            let map = [IdMap { inside: 0, outside: 100_000, count: 65_536 }];
            let fd = create(&crate::mount::kernel::Real, &map, &map).unwrap();
            let (u, _) = crate::sys::helper::read_userns_maps(fd.as_fd()).unwrap();
            assert_eq!(ids(&u), vec![vec![0, 100_000, 65_536]]);
            println!("\ncreated");
            std::process::exit(0);
        }
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: writing a uid_map of other ids needs root");
            return;
        }
        use std::os::unix::process::CommandExt;
        let mut run = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "mount::userns::tests::a_refused_close_range_does_not_hang_the_child"])
            .args(["--nocapture", "--test-threads=1"])
            .env(NO_CLOSE_RANGE, "1")
            .stdout(std::process::Stdio::piped())
            // A group of its own: a hung child of it is killed along with it.
            .process_group(0)
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let status = loop {
            if let Some(status) = run.try_wait().unwrap() {
                break status;
            }
            if t0.elapsed() > std::time::Duration::from_secs(20) {
                let group = rustix::process::Pid::from_raw(run.id() as i32).unwrap();
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                let _ = run.wait();
                panic!("create() hung with close_range refused");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let mut out = String::new();
        use std::io::Read;
        run.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(status.success() && out.contains("created"), "{status:?}: {out}");
    }
}
