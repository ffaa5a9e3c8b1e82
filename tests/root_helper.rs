//! Root tier: the privileged-helper mode (cfsmount installed setuid-root or with file
//! capabilities), driven as the unprivileged users `cfstest` and `cfstest2`.
//!
//! Each test installs the built binary setuid-root into a directory on a filesystem without
//! `nosuid` and runs it as those users with `setpriv --reuid --regid --init-groups` (the harness
//! in `support/root.rs` creates them and their subordinate id ranges). Refusals are asserted by
//! exit status AND message AND by checking that nothing new is mounted.
//! Needs: root, util-linux (setpriv, prlimit, findmnt, unshare), passwd (useradd), python3, gcc.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "support/root.rs"]
mod root;
use root::{loop_devices_in_use, mount_line, sh, stderr, umount_all_under};
#[path = "support/helper.rs"]
mod helper;
use helper::*;

// ---------------------------------------------------------------------------------------------
// Tests that need no image
// ---------------------------------------------------------------------------------------------

#[test]
fn installed_helper_is_setuid_root() {
    let (_g, e, _) = start();
    let m = std::fs::metadata(&e.bin).unwrap();
    assert_eq!(m.uid(), 0);
    assert_eq!(m.mode() & 0o7777, 0o4755);
    // Unprivileged plain execution behaves normally (no helper restrictions).
    let o = run_as_with(&e.user, &e.plain_bin, &["mkimage".into(), "--help".into()], |_| {});
    assert!(o.status.success(), "plain copy: {}", stderr(&o));
}

/// Only `mount` and `umount` are reachable through the setuid binary.
#[test]
fn other_subcommands_are_refused_when_privileged() {
    let (_g, _, u) = start();
    for args in [
        &["mkimage", "--help"][..],
        &["verity", "enable", "/etc/shadow"],
        &["inspect", "/etc/shadow"],
        &["doctor"],
        &[],
    ] {
        let o = run_as(u, args);
        assert_refused(&o, "only `mount` and `umount` are available to unprivileged callers");
    }
    // --help / --version still work.
    assert!(run_as(u, &["--version"]).status.success());
}

/// The caller controls the environment: LD_PRELOAD, RUST_LOG/RUST_BACKTRACE, PATH, TMPDIR, HOME
/// and cfsmount's own override variables from the caller have no effect on the setuid helper.
#[test]
fn hostile_environment_is_ignored() {
    let (_g, e, u) = start();
    let dir = user_dir(u, "env");
    let marker_dir = user_dir(u, "env-marker");
    let marker = marker_dir.join("preload-ran");
    let src = e.root.join("preload.c");
    let so = e.root.join("preload.so");
    std::fs::write(
        &src,
        format!(
            "#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void f(void) {{ int fd = open(\"{}\", O_CREAT|O_WRONLY, 0644); if (fd >= 0) close(fd); }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let o = sh("gcc", &["-shared", "-fPIC", "-o", so.to_str().unwrap(), src.to_str().unwrap()]);
    assert!(o.status.success(), "gcc: {}", stderr(&o));
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The hostile variables are set by env(1) right before the exec of the helper, so that
    // setpriv (root at that point) never sees them.
    let hostile_run = |exe: &Path, args: &[&str]| {
        let mut c = Command::new("/usr/bin/setpriv");
        c.arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg("/usr/bin/env")
            .arg(format!("LD_PRELOAD={}", so.display()))
            .arg(format!("LD_LIBRARY_PATH={}", marker_dir.display()))
            .arg("RUST_LOG=trace")
            .arg("RUST_BACKTRACE=full")
            .arg("RUST_MIN_STACK=1")
            .arg("PATH=/nonexistent")
            .arg(format!("TMPDIR={}", marker_dir.display()))
            .arg(format!("HOME={}", marker_dir.display()))
            .arg(format!("CFSMOUNT_STATE_DIR={}", marker_dir.display()))
            .arg(format!("CFS_CONFORMANCE={}", marker_dir.display()))
            .arg(exe)
            .args(args)
            .env_clear()
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    // Control: the preload library works on a non-setuid copy.
    let o = hostile_run(&e.plain_bin, &["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(marker.exists(), "control: LD_PRELOAD library did not run on the plain binary");
    std::fs::remove_file(&marker).unwrap();
    // The setuid helper: the library never runs, no backtrace, the usual refusal.
    let before = mountpoints();
    let o = hostile_run(&e.bin, &["umount", dir.to_str().unwrap()]);
    assert_refused(&o, "not a mount made by cfsmount");
    assert!(!marker.exists(), "LD_PRELOAD library ran inside the setuid helper");
    assert!(!stderr(&o).contains("backtrace"), "{}", stderr(&o));
    assert!(
        std::fs::read_dir(&marker_dir).unwrap().next().is_none(),
        "helper wrote into the caller's TMPDIR/HOME/state dir"
    );
    assert_eq!(before, mountpoints());
}

/// The caller controls inherited fds and rlimits: closed fds 0-2 and tiny RLIMIT_NOFILE/RLIMIT_FSIZE
/// still give a clean, reported refusal.
#[test]
fn closed_std_fds_and_tiny_rlimits() {
    let (_g, e, u) = start();
    let dir = user_dir(u, "fds");
    // stdin and stdout closed, stderr kept: the message still arrives on stderr (nothing the
    // helper opened landed on fd 2).
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "exec setpriv --reuid={} --regid={} --init-groups -- {} umount {} <&- >&-",
            u.uid,
            u.gid,
            e.bin.display(),
            dir.display()
        ))
        .stdin(Stdio::null());
    let o = c.output().unwrap();
    assert_refused(&o, "not a mount made by cfsmount");
    // All three closed: exits 1 (a refusal), not a crash by signal.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "setpriv --reuid={} --regid={} --init-groups -- {} umount {} <&- >&- 2>&-; echo $?",
            u.uid,
            u.gid,
            e.bin.display(),
            dir.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    // Tiny limits. A soft RLIMIT_NOFILE below the hard limit is raised; a hard limit the helper
    // cannot lift fails closed with a clear message; RLIMIT_FSIZE 0 never kills it (SIGXFSZ).
    let limited = |nofile: &str, fsize: &str| {
        Command::new("prlimit")
            .arg(format!("--nofile={nofile}"))
            .arg(format!("--fsize={fsize}"))
            .args(["--core=0:0", "--", "/usr/bin/setpriv"])
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(&e.bin)
            .arg("umount")
            .arg(&dir)
            .output()
            .unwrap()
    };
    assert_refused(&limited("6:64", "0:0"), "not a mount made by cfsmount");
    let o = limited("6:6", "0:0");
    let raised = stderr(&o).contains("not a mount made by cfsmount");
    if !raised {
        assert_refused(&o, "RLIMIT_NOFILE hard limit is too low");
    }
}

/// Policy file: a bad, foreign-owned or writable policy fails closed; deny lists work.
#[test]
fn policy_fails_closed() {
    let (_g, e, u) = start();
    let dir = user_dir(u, "policy");
    let guard = PolicyGuard::new();
    let good = default_policy().to_string();
    let cases: Vec<(String, u32, u32, &str)> = vec![
        (good.clone(), 0o666, 0, "group- or world-writable"),
        (good.clone(), 0o620, 0, "group- or world-writable"),
        (good.clone(), 0o644, u.uid, "not owned by root"),
        ("{ \"version\": 1".to_string(), 0o644, 0, "helper policy /etc/cfsmount/helper.conf"),
        (
            {
                let mut v = default_policy();
                v["limits"]["max_mountz"] = 3.into();
                v.to_string()
            },
            0o644,
            0,
            "unknown field",
        ),
        (
            {
                let mut v = default_policy();
                v["allowed_target_fs"] = serde_json::json!(["proc"]);
                v.to_string()
            },
            0o644,
            0,
            "unknown filesystem",
        ),
        (
            {
                let mut v = default_policy();
                v["access"]["deny_users"] = serde_json::json!([u.name]);
                v.to_string()
            },
            0o644,
            0,
            "does not allow user cfstest",
        ),
        (
            {
                let mut v = default_policy();
                v["access"]["users"] = serde_json::json!([e.other.name]);
                v.to_string()
            },
            0o644,
            0,
            "does not allow user cfstest",
        ),
    ];
    for (text, mode, uid, needle) in cases {
        guard.write(&text, mode, uid);
        let o = run_as(u, &["umount", dir.to_str().unwrap()]);
        assert_refused(&o, needle);
    }
    // A symlink instead of the file is refused, not followed.
    let real = e.root.join("policy-real.conf");
    std::fs::write(&real, &good).unwrap();
    let _ = std::fs::remove_file(POLICY);
    std::os::unix::fs::symlink(&real, POLICY).unwrap();
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "helper policy");
    // Writable directory → refused.
    guard.write(&good, 0o644, 0);
    std::fs::set_permissions("/etc/cfsmount", std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "group- or world-writable");
    std::fs::set_permissions("/etc/cfsmount", std::fs::Permissions::from_mode(0o755)).unwrap();
    // Group access: allowed through a group the user is in.
    let mut v = default_policy();
    v["access"]["users"] = serde_json::json!([]);
    v["access"]["groups"] = serde_json::json!([u.gid.to_string()]);
    guard.write(&v.to_string(), 0o644, 0);
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "not a mount made by cfsmount");
    assert_refused(&run_as(&e.other, &["umount", dir.to_str().unwrap()]), "does not allow user cfstest2");
    // A valid policy passes through to the normal checks; so does a missing one (default).
    guard.write(&good, 0o644, 0);
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "not a mount made by cfsmount");
    drop(guard);
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "not a mount made by cfsmount");
}

/// The caller's own processes: its ptrace(PTRACE_ATTACH) and /proc/PID/mem never reach the helper while
/// it holds privileges (a python3 attacker running as the caller spins on the helper's pid).
#[test]
fn ptrace_and_proc_mem_never_reach_privileged_helper() {
    let (_g, e, u) = start();
    // The helper alternates between mounting (all phases: open as caller, copy, loop device,
    // EROFS, overlay, attach, record) and unmounting.
    let a = b"ptrace target".as_slice();
    let fx = one_file_fixture(u, "ptrace", "p", a);
    let script = e.root.join("attack.py");
    std::fs::write(&script, ATTACKER).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut attempts = 0u64;
    let mut early = 0u64;
    let mut mounted = 0;
    for i in 0..40 {
        let helper_args: Vec<String> =
            if i % 2 == 0 { mount_args(&fx, &[]) } else { vec!["umount".into(), fx.target.display().to_string()] };
        // The helper is started stopped-free; the attacker starts first and waits for the pid.
        let pidfile = user_dir(u, "ptrace-pid").join("pid");
        let attacker = Command::new("/usr/bin/setpriv")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg("/usr/bin/python3")
            .arg(&script)
            .arg(&pidfile)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        // Wait until the attacker is ready.
        let ready = PathBuf::from(format!("{}.ready", pidfile.display()));
        for _ in 0..500 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut helper = Command::new("/usr/bin/setpriv")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(&e.bin)
            .args(&helper_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::write(pidfile.with_extension("tmp"), helper.id().to_string()).unwrap();
        std::fs::rename(pidfile.with_extension("tmp"), &pidfile).unwrap();
        let st = helper.wait().unwrap();
        let out = attacker.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        for line in report.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first().copied() {
                Some("attempts") => attempts += f[1].parse::<u64>().unwrap(),
                // Attached/opened while the pid still ran as the caller (before the setuid exec):
                // the kernel then ignores the setuid bit, so this is not privileged access.
                Some("caller-owned") => early += 1,
                Some("PRIVILEGED") => panic!("attacker reached the privileged helper: {line}"),
                _ => {}
            }
        }
        assert!(st.code().is_some(), "helper died by a signal: {st:?}");
        if i % 2 == 0 && st.success() {
            mounted += 1;
        }
    }
    umount_all_under(&fx.dir);
    assert!(mounted > 10, "too few mounts succeeded under attack ({mounted}/20)");
    assert!(attempts > 40, "attacker made too few attempts ({attempts})");
    eprintln!("ptrace/mem attempts: {attempts}, attached before exec: {early}, mounts: {mounted}/20");
}

const ATTACKER: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
pidfile = sys.argv[1]
open(pidfile + '.ready', 'w').close()
while not os.path.exists(pidfile):
    time.sleep(0.0005)
pid = int(open(pidfile).read())
def uids():
    try:
        for l in open('/proc/%d/status' % pid):
            if l.startswith('Uid:'):
                return [int(x) for x in l.split()[1:]]
    except OSError:
        return None
attempts = 0
deadline = time.time() + 20
while time.time() < deadline and os.path.exists('/proc/%d' % pid):
    attempts += 1
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        os.waitpid(pid, 0x40000000)  # __WALL
        u = uids()
        print(('PRIVILEGED ptrace %s' if u and 0 in u else 'caller-owned ptrace %s') % u, flush=True)
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    try:
        fd = os.open('/proc/%d/mem' % pid, os.O_RDONLY)
        u = uids()
        print(('PRIVILEGED mem %s' if u and 0 in u else 'caller-owned mem %s') % u, flush=True)
        os.close(fd)
    except OSError:
        pass
    try:
        open('/proc/%d/environ' % pid).read()
        u = uids()
        if u and 0 in u:
            print('PRIVILEGED environ %s' % u, flush=True)
    except OSError:
        pass
print('attempts %d' % attempts, flush=True)
"#;

/// Unmounting: only cfsmount's own records for the caller; nothing else.
#[test]
fn umount_of_foreign_or_unrecorded_mounts_is_refused() {
    let (_g, _, u) = start();
    let before = mountpoints();
    let dir = user_dir(u, "umount");
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "not a mount made by cfsmount");
    // A real mount that cfsmount did not make (a tmpfs owned by root, even one the user owns).
    let m = user_dir(u, "umount-tmpfs");
    assert!(sh("mount", &["-t", "tmpfs", "-o", &format!("uid={}", u.uid), "none", m.to_str().unwrap()])
        .status
        .success());
    let o = run_as(u, &["umount", m.to_str().unwrap()]);
    let still = mountpoints().iter().any(|p| p == m.to_str().unwrap());
    let _ = sh("umount", &[m.to_str().unwrap()]);
    assert_refused(&o, "not a mount made by cfsmount");
    assert!(still, "the foreign tmpfs was unmounted");
    for p in ["/", "/proc", "/sys", "/dev"] {
        let o = run_as(u, &["umount", p]);
        assert_eq!(o.status.code(), Some(1), "umount {p}: {}", stderr(&o));
    }
    assert_eq!(before, mountpoints());
}

// ---------------------------------------------------------------------------------------------
// Tests that mount (they need the mount engine and the image writer)
// ---------------------------------------------------------------------------------------------

/// Positive path: the caller mounts its own image in its own directory, reads the files, sees
/// ro,nosuid,nodev, and unmounts; nothing (mount, loop device, record) is left behind.
#[test]
fn positive_path_mount_read_umount() {
    let (_g, _, u) = start();
    let hello = b"hello from an object file\n".as_slice();
    let body = format!(
        "{}/inline.txt 7 100644 1 {{uid}} {{gid}} 0 0.0 - inline! -\n",
        dump_line_external("hello.txt", "100644", u.uid, hello)
    );
    let fx = fixture(u, "pos", &body, &[hello]);
    let before = mountpoints();
    let loops = loop_devices_in_use();
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert!(o.status.success(), "mount as {}: {}", u.name, stderr(&o));
    let line = mount_line(&fx.target).expect("target is mounted");
    let opts = line.split(' ').nth(5).unwrap().to_string();
    for want in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|x| x == want), "mount options {opts} lack {want}");
    }
    let cat = |p: &str| run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join(p).into()], |_| {});
    let c = cat("hello.txt");
    assert!(c.status.success(), "{}", stderr(&c));
    assert_eq!(c.stdout, hello);
    assert_eq!(cat("inline.txt").stdout, b"inline!");
    let recs: Vec<String> = std::fs::read_dir("/run/cfsmount")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains(&fx.target.display().to_string()))
        .collect();
    assert_eq!(recs.len(), 1, "one record for the mount");
    assert!(recs[0].contains(&format!("\"uid\": {}", u.uid)), "record names the caller: {}", recs[0]);
    let o = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    assert!(o.status.success(), "umount: {}", stderr(&o));
    assert!(mount_line(&fx.target).is_none(), "still mounted after umount");
    assert_eq!(before, mountpoints());
    // Loop devices are released asynchronously after the lazy unmount.
    for _ in 0..100 {
        if loop_devices_in_use() <= loops {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(loop_devices_in_use() <= loops, "loop device leaked");
    umount_all_under(&fx.dir);
}

/// Setuid and device access through a mount: a setuid-root binary in the image does not gain
/// privileges (nosuid); an image with
/// a device node is refused outright.
#[test]
fn setuid_files_gain_nothing_and_device_nodes_are_refused() {
    let (_g, _, u) = start();
    let id_bin = std::fs::read("/usr/bin/id").unwrap();
    let body = dump_line_external("suid-id", "104755", 0, &id_bin);
    let fx = fixture(u, "suid", &body, &[&id_bin]);
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert!(o.status.success(), "mount: {}", stderr(&o));
    let exe = fx.target.join("suid-id");
    let st = std::fs::metadata(&exe).unwrap();
    assert_eq!(st.mode() & 0o4000, 0o4000, "the image does carry a setuid-root file");
    assert_eq!(st.uid(), 0);
    let r = run_as_with(u, &exe, &["-u".into()], |_| {});
    umount_all_under(&fx.dir);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        u.uid.to_string(),
        "setuid bit took effect through the mount"
    );

    let body = "/sda 0 60660 1 {uid} {gid} 2048 0.0 - - -\n/null 0 20666 1 {uid} {gid} 259 0.0 - - -\n";
    let fx = fixture(u, "dev", body, &[]);
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert_refused_nothing_mounted(&o, "device node", &before);
}

/// Targets the caller may not mount on: foreign, inside a sticky directory, a symlink, procfs,
/// sysfs, system directories.
#[test]
fn foreign_sticky_special_and_symlink_targets_are_refused() {
    let (_g, e, u) = start();
    let hello = b"x".as_slice();
    let fx = one_file_fixture(u, "tgt", "x", hello);
    let before = mountpoints();
    let with_target = |t: &Path| {
        let mut a = mount_args(&fx, &[]);
        a[2] = t.display().to_string();
        run_as_strs(u, &a)
    };
    // Owned by another user (0755).
    let foreign = user_dir(&e.other, "tgt-foreign");
    assert_refused(&with_target(&foreign), "not writable by the caller");
    // Owned by another user but world-writable, inside a sticky directory.
    let sticky = e.root.join("sticky");
    let _ = std::fs::remove_dir_all(&sticky);
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let inner = sticky.join("other");
    std::fs::create_dir(&inner).unwrap();
    std::os::unix::fs::chown(&inner, Some(e.other.uid), Some(e.other.gid)).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&with_target(&inner), "inside a sticky directory");
    // A symlink to the caller's own directory is refused, not followed.
    let link = fx.dir.join("link");
    std::os::unix::fs::symlink(&fx.target, &link).unwrap();
    assert_refused(&with_target(&link), "cannot open as the calling user");
    // procfs: a directory the caller owns there (its own process's fdinfo).
    let mut sleeper = Command::new("/usr/bin/setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .args(["--", "/usr/bin/sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let procdir = PathBuf::from(format!("/proc/{}/fdinfo", sleeper.id()));
    let o = with_target(&procdir);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_refused(&o, "filesystem type");
    // sysfs / root-owned system directories.
    assert_refused(&with_target(Path::new("/sys/kernel")), "target");
    assert_refused(&with_target(Path::new("/etc")), "target");
    assert_eq!(before, mountpoints());
}

/// Option and path injection in both command forms (`mount.composefs -o` and `cfsmount mount`).
#[test]
fn option_and_path_injection_is_refused() {
    let (_g, e, u) = start();
    let hello = b"y".as_slice();
    let fx = one_file_fixture(u, "opt", "y", hello);
    let helper = e.root.join("mount.composefs");
    let _ = std::fs::remove_file(&helper);
    std::os::unix::fs::symlink(&e.bin, &helper).unwrap();
    let before = mountpoints();
    let img = fx.image.to_str().unwrap();
    let tgt = fx.target.to_str().unwrap();
    let obj = fx.objects.to_str().unwrap();
    let long = "a".repeat(5000);
    let cases: Vec<(String, &str)> = vec![
        (format!("basedir={obj},suid"), "\"suid\" is not allowed"),
        (format!("basedir={obj},dev"), "\"dev\" is not allowed"),
        (format!("basedir={obj},exec"), "\"exec\" is not allowed"),
        (format!("basedir={obj},foo=bar"), "unknown option \"foo\""),
        (format!("basedir={obj},,ro"), "empty option"),
        (format!("basedir={obj},-ro"), "starts with '-'"),
        (format!("basedir={obj}\\,upperdir=/etc"), "contains ','"),
        (format!("basedir={obj},x-{long}"), "longer than 4096"),
        (format!("basedir={obj}\n,ro"), "control character"),
        (format!("basedir={obj},upperdir=/tmp/a,b"), "unknown option \"b\""),
    ];
    for (opts, needle) in cases {
        let o = run_as_with(u, &helper, &[img.into(), tgt.into(), "-o".into(), opts.clone().into()], |_| {});
        assert_refused(&o, needle);
    }
    // CLI form: paths with separators or a leading '-'.
    let odd = fx.dir.join("a,b");
    std::fs::create_dir_all(&odd).unwrap();
    std::os::unix::fs::chown(&odd, Some(u.uid), Some(u.gid)).unwrap();
    let o = run_as(u, &["mount", img, odd.to_str().unwrap(), "--basedir", obj]);
    assert_refused(&o, "contains ','");
    let colon = fx.dir.join("a:b");
    std::fs::create_dir_all(&colon).unwrap();
    std::os::unix::fs::chown(&colon, Some(u.uid), Some(u.gid)).unwrap();
    let o = run_as(u, &["mount", img, colon.to_str().unwrap(), "--basedir", obj]);
    assert_refused(&o, "contains ':'");
    let o = run_as(u, &["mount", img, tgt, "--basedir", &format!("{obj}/../objects\\x")]);
    assert_refused(&o, "contains '\\'");
    let o = run_as(u, &["mount", "--basedir", obj, "--", "-image", tgt]);
    assert_refused(&o, "starts with '-'");
    let o = run_as(u, &["mount", img, tgt, "--basedir", obj, "--allow-suid"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("root"), "{}", stderr(&o));
    assert_eq!(before, mountpoints());
}

/// Sources the caller cannot read are refused; an image changed after validation cannot change
/// what is mounted (the helper mounts its own sealed copy).
#[test]
fn unreadable_and_modified_images() {
    let (_g, e, u) = start();
    let a = b"original content\n".as_slice();
    let fx = one_file_fixture(u, "img7", "f", a);
    let before = mountpoints();
    // Root-only image.
    let secret = e.root.join("root-only.cfs");
    std::fs::copy(&fx.image, &secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut args = mount_args(&fx, &[]);
    args[1] = secret.display().to_string();
    assert_refused(&run_as_strs(u, &args), "cannot open as the calling user");
    // Object directory owned by someone else.
    let foreign_objs = user_dir(&e.other, "objs");
    let mut args = mount_args(&fx, &[]);
    args[4] = foreign_objs.display().to_string();
    assert_refused(&run_as_strs(u, &args), "not by the caller");
    // Not an image.
    let mut args = mount_args(&fx, &[]);
    args[1] = "/etc/passwd".into();
    assert_eq!(run_as_strs(u, &args).status.code(), Some(1));
    assert_eq!(before, mountpoints());
    // Modified after the mount: what is mounted stays the validated copy.
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let other = b"evil replaced content\n".as_slice();
    let evil = one_file_fixture(u, "img7-evil", "f", other);
    std::fs::write(&fx.image, std::fs::read(&evil.image).unwrap()).unwrap();
    let c = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("f").into()], |_| {});
    umount_all_under(&fx.dir);
    assert_eq!(c.stdout, a, "mounted content changed with the caller's file");
}

/// Someone else's mount cannot be unmounted; two racing unmounts of one's own mount
/// unmount it exactly once and nothing else.
#[test]
fn umount_other_users_mount_and_racing_unmounts() {
    let (_g, e, u) = start();
    let o2 = &e.other;
    let a = b"theirs".as_slice();
    let theirs = one_file_fixture(o2, "um-theirs", "t", a);
    let o = run_as_strs(o2, &mount_args(&theirs, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let r = run_as(u, &["umount", theirs.target.to_str().unwrap()]);
    // A directory inside the mount does not name it.
    let o = run_as(o2, &["umount", theirs.target.join(".").join("t").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let still = mount_line(&theirs.target).is_some();
    assert!(still, "another user's mount was removed");
    assert_refused(&r, "not for the caller");
    let ok = run_as(o2, &["umount", theirs.target.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // Racing unmounts.
    let mine = one_file_fixture(u, "um-mine", "t", a);
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&mine, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let t = mine.target.to_str().unwrap().to_string();
    let spawn = || {
        Command::new("/usr/bin/setpriv")
            .arg(format!("--reuid={}", u.uid))
            .arg(format!("--regid={}", u.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(&e.bin)
            .args(["umount", &t])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn(), spawn());
    let (r1, r2) = (c1.wait_with_output().unwrap(), c2.wait_with_output().unwrap());
    let oks = [&r1, &r2].iter().filter(|r| r.status.success()).count();
    assert!(oks >= 1, "neither unmount succeeded: {} / {}", stderr(&r1), stderr(&r2));
    for r in [&r1, &r2] {
        assert!(r.status.code().is_some(), "killed by a signal");
    }
    assert!(mount_line(&mine.target).is_none());
    assert_eq!(before, mountpoints(), "racing unmounts removed something else");
    umount_all_under(&mine.dir);
    umount_all_under(&theirs.dir);
}

/// Per-user mount limit and loop-device limit from the policy.
#[test]
fn per_user_limits() {
    let (_g, e, u) = start();
    // Mounts left behind by earlier failed tests would count against the limit.
    umount_all_under(&e.root);
    let (guard, mut v) = user_limits_policy(u, serde_json::json!({ "max_mounts": 2 }));
    let a = b"lim".as_slice();
    let fxs: Vec<Fixture> = (0..3).map(|i| one_file_fixture(u, &format!("lim{i}"), "l", a)).collect();
    for fx in &fxs[..2] {
        let o = run_as_strs(u, &mount_args(fx, &[]));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&fxs[2], &[]));
    assert_refused_nothing_mounted(&o, "per-user limit exceeded: mounts", &before);
    // Another user is not affected by cfstest's limit.
    let b = one_file_fixture(&e.other, "lim-other", "l", a);
    let o = run_as_strs(&e.other, &mount_args(&b, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    umount_all_under(&b.dir);
    // Loop devices: none allowed.
    for fx in &fxs[..2] {
        let _ = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    }
    v["user_limits"] = serde_json::json!({ u.name.clone(): { "max_loop_devices": 0 } });
    guard.write(&v.to_string(), 0o644, 0);
    let o = run_as_strs(u, &mount_args(&fxs[2], &["--force-loop"]));
    assert_refused(&o, "per-user limit exceeded: loop devices");
    for fx in &fxs {
        umount_all_under(&fx.dir);
    }
    drop(guard);
}

/// idmap user namespaces: the initial one, a non-userns, another user's, one mapping
/// ids outside the caller's subordinate ranges; --uidmap specs likewise. The caller's own
/// namespace and its subuid range work.
#[test]
fn idmap_namespaces_are_checked() {
    let (_g, e, u) = start();
    let a = b"idm".as_slice();
    let fx = fixture(u, "idmap", &dump_line_external("f", "100644", 0, a), &[a]);
    let before = mountpoints();
    let with_idmap = |p: &str| run_as_strs(u, &mount_args(&fx, &["--idmap", p]));
    // Its own process in the initial namespace.
    let plain = spawn_as(u, &["/usr/bin/sleep", "30"]);
    assert_refused(&with_idmap(&format!("/proc/{}/ns/user", plain.id())), "is the initial user namespace");
    assert_refused(&with_idmap(&format!("/proc/{}/ns/mnt", plain.id())), "not a user namespace");
    assert_refused(&with_idmap("/etc/passwd"), "not a namespace file");
    // Another user's namespace: not even openable by the caller ...
    let theirs = spawn_as(&e.other, &["/usr/bin/unshare", "--user", "--map-root-user", "/usr/bin/sleep", "30"]);
    let theirs_ns = format!("/proc/{}/ns/user", theirs.id());
    assert_refused(&with_idmap(&theirs_ns), "cannot open as the calling user");
    // ... and when root hands it out through a readable bind mount, the owner check refuses it.
    let nsfile = e.root.join("theirs-ns");
    std::fs::write(&nsfile, b"").unwrap();
    std::fs::set_permissions(&nsfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(sh("mount", &["--bind", &theirs_ns, nsfile.to_str().unwrap()]).status.success());
    let o = with_idmap(nsfile.to_str().unwrap());
    let _ = sh("umount", &[nsfile.to_str().unwrap()]);
    assert_refused(&o, &format!("owned by uid {}", e.other.uid));
    // The caller's own namespace, but root wrote a map giving it uid 0 of the host.
    let own = spawn_as(u, &["/usr/bin/unshare", "--user", "/usr/bin/sleep", "30"]);
    let pid = own.id();
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 1\n").unwrap();
    std::fs::write(format!("/proc/{pid}/setgroups"), "deny").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {} 1\n", u.gid)).unwrap();
    assert_refused(&with_idmap(&format!("/proc/{pid}/ns/user")), "neither the caller's own id");
    // Specs.
    let o = run_as_strs(u, &mount_args(&fx, &["--uidmap", "0:0:1", "--gidmap", &format!("0:{}:1", u.gid)]));
    assert_refused(&o, "neither the caller's own id");
    let o = run_as_strs(u, &mount_args(&fx, &["--uidmap", "0:400000:65537", "--gidmap", "0:400000:65536"]));
    assert_refused_nothing_mounted(&o, "neither the caller's own id", &before);
    // Allowed: the caller's own root-mapped namespace, and its subuid range.
    let mine = spawn_as(u, &["/usr/bin/unshare", "--user", "--map-root-user", "/usr/bin/sleep", "30"]);
    let o = with_idmap(&format!("/proc/{}/ns/user", mine.id()));
    assert!(o.status.success(), "own userns: {}", stderr(&o));
    let st = std::fs::metadata(fx.target.join("f")).unwrap();
    assert_eq!(st.uid(), u.uid, "on-disk uid 0 shows as the caller through its own map");
    assert!(run_as(u, &["umount", fx.target.to_str().unwrap()]).status.success());
    let o = run_as_strs(u, &mount_args(&fx, &["--uidmap", "0:400000:65536", "--gidmap", "0:400000:65536"]));
    assert!(o.status.success(), "subuid map: {}", stderr(&o));
    assert_eq!(std::fs::metadata(fx.target.join("f")).unwrap().uid(), 400000);
    assert!(run_as(u, &["umount", fx.target.to_str().unwrap()]).status.success());
    umount_all_under(&fx.dir);
}

/// Overlay xattrs smuggled in a TOC/dumpfile are escaped by the image writer and stay
/// inert: a `trusted.overlay.redirect` aiming at /etc/shadow does not redirect anything; an image
/// whose payload contains `..` is refused.
#[test]
fn overlay_xattrs_in_input_are_inert() {
    let (_g, _, u) = start();
    let a = b"innocent object\n".as_slice();
    // Inline file with hostile xattrs (dumpfile escapes: \x2f is '/').
    let body = format!(
        "{}/inl 6 100644 1 {{uid}} {{gid}} 0 0.0 - inline - trusted.overlay.redirect=/etc/shadow trusted.overlay.metacopy= user.overlay.redirect=/etc/shadow\n",
        dump_line_external("ext", "100644", u.uid, a)
    );
    let fx = fixture(u, "xattr", &body, &[a]);
    let img = std::fs::read(&fx.image).unwrap();
    // The writer escaped them: the raw image holds the escaped name for the hostile xattr.
    assert!(find(&img, b"overlay.overlay.redirect") || find(&img, b"overlay.redirect"), "xattr present");
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let c = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("inl").into()], |_| {});
    let ext = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("ext").into()], |_| {});
    // As root, the smuggled xattr is visible as plain data (i.e. it was not consumed by overlayfs).
    let g = Command::new("/usr/bin/python3")
        .args(["-c", "import os, sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], 'trusted.overlay.redirect'))"])
        .arg(fx.target.join("inl"))
        .output()
        .unwrap();
    umount_all_under(&fx.dir);
    assert_eq!(c.stdout, b"inline", "hostile redirect changed the file's content");
    assert_eq!(ext.stdout, a);
    assert_eq!(
        String::from_utf8_lossy(&g.stdout),
        "/etc/shadow",
        "escaped xattr should read back verbatim: {}",
        stderr(&g)
    );
    // A payload with '..' components. The parsers and the writer refuse one (issue 11.9), but a
    // caller can write any bytes: the image is written with a clean payload of the same length
    // and its redirect is then patched to `/../../etc/shadow` (the xattr name filter hashes
    // names, not values, so nothing else changes).
    let (clean, hostile) = (&b"/ab/cdefghijklmno"[..], &b"/../../etc/shadow"[..]);
    let body = format!("/dotdot {} 100644 1 0 0 0 0.0 {} - -\n", a.len(), String::from_utf8_lossy(&clean[1..]));
    let dump = format!("/ 4096 40755 2 0 0 0 0.0 - - -\n{body}");
    let opts = cfsmount::input::dump::DumpOptions { strict: false, limits: Default::default() };
    let tree = cfsmount::input::dump::parse(dump.as_bytes(), &opts).expect("the clean dumpfile parses");
    let mut out = Vec::new();
    cfsmount::erofs::writer::write_image(&tree, &Default::default(), &mut out).expect("the clean image writes");
    let at = out.windows(clean.len()).position(|w| w == clean).expect("the redirect is in the image");
    out[at..at + hostile.len()].copy_from_slice(hostile);
    let fx2 = fixture(u, "dotdot", "", &[]);
    std::fs::write(&fx2.image, &out).unwrap();
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&fx2, &[]));
    assert_refused_nothing_mounted(&o, "'..'", &before);
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The target is swapped (renameat2 RENAME_EXCHANGE loop between the caller's directory
/// and a symlink to a root-owned directory) while mounts run: the mount lands on the pinned,
/// caller-owned directory or is refused, never on the symlink's target.
#[test]
fn target_swap_race_never_mounts_elsewhere() {
    let (_g, e, u) = start();
    let a = b"race".as_slice();
    let fx = one_file_fixture(u, "race", "r", a);
    let victim = e.root.join("victim");
    let _ = std::fs::remove_dir_all(&victim);
    std::fs::create_dir(&victim).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = fx.dir.join("swap");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let _ = sh("chown", &["-h", &format!("{}:{}", u.uid, u.gid), link.to_str().unwrap()]);
    let script = e.root.join("swap.py");
    std::fs::write(
        &script,
        "import ctypes, os, sys, time\nlibc = ctypes.CDLL(None, use_errno=True)\nd = sys.argv[1]\nend = time.time() + float(sys.argv[2])\nn = 0\nwhile time.time() < end:\n    libc.renameat2(-100, (d + '/mnt').encode(), -100, (d + '/swap').encode(), 2)\n    n += 1\nprint(n)\n",
    )
    .unwrap();
    let swapper = Command::new("/usr/bin/setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .arg("--")
        .arg("/usr/bin/python3")
        .arg(&script)
        .arg(&fx.dir)
        .arg("6")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut mounted, mut refused) = (0, 0);
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(5) {
        let o = run_as_strs(u, &mount_args(&fx, &[]));
        assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "crash: {:?} {}", o.status, stderr(&o));
        if o.status.success() {
            mounted += 1;
        } else {
            refused += 1;
        }
        assert!(mount_line(&victim).is_none(), "the root-owned victim directory got mounted on");
        umount_all_under(&fx.dir);
    }
    let out = swapper.wait_with_output().unwrap();
    let swaps: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert!(mount_line(&victim).is_none());
    eprintln!("swap race: {swaps} exchanges, {mounted} mounts on the pinned dir, {refused} refused");
    assert!(swaps > 1000, "the swapper did not run");
    assert!(refused > 0, "no attempt ever saw the symlink (race not exercised)");
    umount_all_under(&fx.dir);
}

/// Rootless-runtime flow: the caller, inside its own user+mount namespace, receives the
/// detached mount fd over a unix socket (--fd-out) and attaches it there.
#[test]
fn fd_out_into_callers_own_namespaces() {
    let (_g, _, u) = start();
    let a = b"via a detached mount fd\n".as_slice();
    let fx = one_file_fixture(u, "fdout", "f", a);
    let sock = fx.dir.join("sock");
    let before = mountpoints();
    let mut recv = spawn_receiver(u, "read", &sock, &fx.target);
    let o = mount_fd_out(u, &fx, &sock);
    // (on a failed assertion the receiver is killed when `recv` drops)
    assert!(o.status.success(), "mount --fd-out: {}", stderr(&o));
    let r = recv.output();
    assert!(r.status.success(), "receiver: {}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, a, "content read in the caller's namespace");
    // Nothing appeared in the initial mount namespace.
    assert_eq!(before, mountpoints());
}

/// What `--fd-out` cannot promise: a caller that attaches the mount in a mount namespace it owns
/// may clear nosuid/nodev with mount_setattr (the kernel locks those flags only when a namespace
/// is copied, not for a mount fd handed over). This shows why that gains nothing: the image's
/// setuid-root file runs without root, because root is not mapped in the caller's user namespace;
/// and device nodes, which would be usable, are refused in every image the helper mounts.
#[test]
fn fd_out_flags_cleared_by_the_caller_gain_nothing() {
    let (_g, _, u) = start();
    let cat = std::fs::read("/usr/bin/cat").unwrap();
    let fx = fixture(u, "fdout-clear", &dump_line_external("suid-cat", "104755", 0, &cat), &[&cat]);
    let sock = fx.dir.join("sock");
    let mut recv = spawn_receiver(u, "clear", &sock, &fx.target);
    let o = mount_fd_out(u, &fx, &sock);
    assert!(o.status.success(), "mount --fd-out: {}", stderr(&o));
    let r = recv.output();
    let (out, err) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    assert!(r.status.success(), "receiver: {err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("receiver said: {out} {err}"));
    // The setuid-root cat ran but could not read /etc/shadow (root-only), whatever the flags were.
    assert_ne!(v["cat_status"], 0, "setuid-root file gained root through a flag-cleared fd-out mount: {v}");
    assert!(v["cat_stderr"].as_str().unwrap().contains("/etc/shadow: Permission denied"), "{v}");
    assert!(v["cat_mode_suid"].as_bool().unwrap(), "the file in the image is setuid: {v}");
    // Record what this kernel did with the attempt to clear the flags (informational, both are safe).
    eprintln!("clearing nosuid,nodev on the received mount: {}", v["clear"]);
}

/// Closed fds and rlimits during a real mount: fds 0/1 closed and RLIMIT_FSIZE 0 — the mount works (fds repaired,
/// limit lifted) or is refused cleanly, with no half-written record and nothing mounted.
#[test]
fn mount_with_closed_fds_and_zero_fsize() {
    let (_g, e, u) = start();
    let a = b"fds".as_slice();
    let fx = one_file_fixture(u, "fdsmount", "f", a);
    let args = mount_args(&fx, &[]);
    let cmd = format!(
        "exec /usr/bin/setpriv --reuid={} --regid={} --init-groups -- {} {} <&- >&-",
        u.uid,
        u.gid,
        e.bin.display(),
        args.join(" ")
    );
    let o = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    assert!(o.status.success(), "mount with fds 0/1 closed: {}", stderr(&o));
    let c = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("f").into()], |_| {});
    assert_eq!(c.stdout, a);
    assert!(run_as(u, &["umount", fx.target.to_str().unwrap()]).status.success());
    let before = mountpoints();
    let records = state_files();
    let o = Command::new("prlimit")
        .args(["--fsize=0:0", "--", "/usr/bin/setpriv"])
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(&e.bin)
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.code().is_some(), "killed by a signal (SIGXFSZ?): {:?}", o.status);
    if o.status.success() {
        assert!(mount_line(&fx.target).is_some());
        assert!(run_as(u, &["umount", fx.target.to_str().unwrap()]).status.success());
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_eq!(before, mountpoints(), "refused but something was mounted");
    }
    assert_eq!(records, state_files(), "records or temp files left behind");
    umount_all_under(&fx.dir);
}

/// Policy feature switches fail closed: idmap, on-the-fly builds, attaching at a path.
#[test]
fn policy_feature_switches() {
    let (_g, _, u) = start();
    let a = b"feat".as_slice();
    let fx = one_file_fixture(u, "feat", "f", a);
    let guard = PolicyGuard::new();
    let before = mountpoints();
    let mut v = default_policy();
    v["features"]["idmap"] = false.into();
    v["features"]["attach_at_target"] = false.into();
    guard.write(&v.to_string(), 0o644, 0);
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert_refused(&o, "attaching at a target is disabled");
    v["features"]["attach_at_target"] = true.into();
    guard.write(&v.to_string(), 0o644, 0);
    let o = run_as_strs(
        u,
        &mount_args(&fx, &["--uidmap", &format!("0:{}:1", u.uid), "--gidmap", &format!("0:{}:1", u.gid)]),
    );
    assert_refused(&o, "idmapped mounts are disabled");
    // Only listed target filesystems: tmpfs removed from the list, target on a tmpfs.
    v = default_policy();
    v["allowed_target_fs"] = serde_json::json!(["ext4"]);
    guard.write(&v.to_string(), 0o644, 0);
    let t = fx.dir.join("tmpfs-target");
    std::fs::create_dir_all(&t).unwrap();
    assert!(sh("mount", &["-t", "tmpfs", "-o", &format!("uid={},mode=0755", u.uid), "none", t.to_str().unwrap()])
        .status
        .success());
    let mut args = mount_args(&fx, &[]);
    args[2] = t.display().to_string();
    let o = run_as_strs(u, &args);
    let _ = sh("umount", &[t.to_str().unwrap()]);
    assert_refused(&o, "filesystem type");
    drop(guard);
    assert_eq!(before, mountpoints());
}

/// The file-capabilities install (`setcap cap_sys_admin,cap_setuid,cap_setgid=ep`, no setuid
/// bit) is enough for the whole flow, and is restricted the same way.
#[test]
fn file_capabilities_install() {
    let (_g, e, u) = start();
    let bin = e.root.join("cfsmount-caps");
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(env!("CARGO_BIN_EXE_cfsmount"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = sh("setcap", &["cap_sys_admin,cap_setuid,cap_setgid=ep", bin.to_str().unwrap()]);
    assert!(o.status.success(), "setcap: {}", stderr(&o));
    let a = b"caps".as_slice();
    let fx = one_file_fixture(u, "caps", "c", a);
    let args: Vec<OsString> = mount_args(&fx, &[]).into_iter().map(OsString::from).collect();
    let o = run_as_with(u, &bin, &args, |_| {});
    assert!(o.status.success(), "mount with file caps: {}", stderr(&o));
    let c = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("c").into()], |_| {});
    assert_eq!(c.stdout, a);
    let line = mount_line(&fx.target).unwrap();
    assert!(line.split(' ').nth(5).unwrap().contains("nosuid"));
    let o = run_as_with(u, &bin, &["umount".into(), fx.target.clone().into()], |_| {});
    assert!(o.status.success(), "umount with file caps: {}", stderr(&o));
    let mut bad = args.clone();
    bad[2] = "/etc".into();
    let before = mountpoints();
    assert_refused(&run_as_with(u, &bin, &bad, |_| {}), "not writable by the caller");
    assert_refused(&run_as_with(u, &bin, &["mkimage".into(), "--help".into()], |_| {}), "only `mount` and `umount`");
    assert_eq!(before, mountpoints());
    // Without cap_setuid the helper cannot become root and refuses to run at all.
    let o = sh("setcap", &["cap_sys_admin=ep", bin.to_str().unwrap()]);
    assert!(o.status.success());
    assert_refused(&run_as_with(u, &bin, &args, |_| {}), "cap_set");
    assert_eq!(before, mountpoints());
    umount_all_under(&fx.dir);
}

/// The id maps of a user namespace are read through its fd (forked child joins it and reads
/// /proc/self/{uid,gid}_map), as seen from the initial namespace.
#[test]
fn userns_maps_are_read_through_the_fd() {
    let (_g, _, u) = start();
    let p = spawn_as(u, &["/usr/bin/unshare", "--user", "/usr/bin/sleep", "30"]);
    let pid = p.id();
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 400000 1000\n1000 999999 1\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {} 1\n", u.gid)).unwrap();
    let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    use std::os::fd::AsFd;
    let (um, gm) = cfsmount::sys::helper::read_userns_maps(f.as_fd()).unwrap();
    let um = cfsmount::privileged::idmap::parse_id_map(&um).unwrap();
    let gm = cfsmount::privileged::idmap::parse_id_map(&gm).unwrap();
    use cfsmount::mount::IdMap as X;
    assert_eq!(um, vec![X { inside: 0, outside: 400000, count: 1000 }, X { inside: 1000, outside: 999999, count: 1 }]);
    assert_eq!(gm, vec![X { inside: 0, outside: u.gid, count: 1 }]);
    assert_eq!(cfsmount::sys::helper::ns_get_owner_uid(f.as_fd()).unwrap(), u.uid);
    assert_eq!(cfsmount::sys::helper::ns_get_nstype(f.as_fd()).unwrap(), libc::CLONE_NEWUSER);
    // Not a namespace at all.
    let etc = std::fs::File::open("/etc/passwd").unwrap();
    assert!(cfsmount::sys::helper::ns_get_nstype(etc.as_fd()).is_err());
}

/// Smuggled overlay xattrs through the helper's own sandboxed builder: a caller's TOC whose entries carry
/// `trusted.overlay.redirect`/`metacopy` and `user.overlay.redirect` xattrs. The image the helper
/// builds escapes them: the file still shows its own object's content, and the smuggled xattr is
/// plain data (root reads it back verbatim).
#[test]
fn toc_overlay_xattrs_are_escaped_by_the_helper_build() {
    use base64::Engine;
    let (_g, _, u) = start();
    let a = b"content of the real object\n".as_slice();
    let fx = fixture(u, "toc", "", &[a]);
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let hex: String = {
        use sha2::Digest;
        sha2::Sha256::digest(a).iter().map(|b| format!("{b:02x}")).collect()
    };
    let toc = serde_json::json!({
        "version": 1,
        "entries": [
            { "type": "reg", "name": "f", "mode": 420, "size": a.len(), "uid": u.uid, "gid": u.gid,
              "modtime": "2024-01-01T00:00:00Z", "digest": format!("sha256:{hex}"),
              "xattrs": {
                  "trusted.overlay.redirect": b64(b"/etc/shadow"),
                  "trusted.overlay.metacopy": b64(b""),
                  "user.overlay.redirect": b64(b"/etc/shadow"),
                  "trusted.overlay.opaque": b64(b"y")
              } }
        ]
    });
    let tocf = fx.dir.join("layer.toc.json");
    std::fs::write(&tocf, toc.to_string()).unwrap();
    std::os::unix::fs::chown(&tocf, Some(u.uid), Some(u.gid)).unwrap();
    let mut args = mount_args(&fx, &["--toc"]);
    args[1] = tocf.display().to_string();
    let _tmpfs = CopiesOnTmpfs::ensure();
    let kept = || {
        std::fs::read_dir("/run/cfsmount/copies")
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("k2-")).count())
            .unwrap_or(0)
    };
    let kept_before = kept();
    let o = run_as_strs(u, &args);
    assert!(o.status.success(), "mount --toc as the caller: {}", stderr(&o));
    // The helper's copy of the TOC is never kept (only vetted images are).
    assert!(kept() <= kept_before, "a TOC mount left a kept copy");
    let c = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("f").into()], |_| {});
    let x = |name: &str| {
        Command::new("/usr/bin/python3")
            .args(["-c", "import os, sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2]))"])
            .arg(fx.target.join("f"))
            .arg(name)
            .output()
            .unwrap()
    };
    let (redirect, user_redirect) = (x("trusted.overlay.redirect"), x("user.overlay.redirect"));
    umount_all_under(&fx.dir);
    assert_eq!(c.stdout, a, "the smuggled redirect changed what the file shows");
    assert_eq!(redirect.stdout, b"/etc/shadow", "escaped xattr not visible verbatim: {}", stderr(&redirect));
    assert_eq!(user_redirect.stdout, b"/etc/shadow");
    // A TOC the caller cannot read is refused.
    std::fs::set_permissions(&tocf, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&tocf, Some(0), Some(0)).unwrap();
    assert_refused(&run_as_strs(u, &args), "cannot open as the calling user");
}

/// `--digest` through the helper: checked on the private copy that gets mounted.
#[test]
fn digest_is_checked_on_the_private_copy() {
    let (_g, _, u) = start();
    let a = b"digest me".as_slice();
    let fx = one_file_fixture(u, "digest", "d", a);
    let good: String = cfsmount::fsverity::digest_bytes(&std::fs::read(&fx.image).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let bad = format!("{}{}", if good.starts_with('0') { "1" } else { "0" }, &good[1..]);
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&fx, &["--digest", &bad]));
    assert_refused_nothing_mounted(&o, "does not match", &before);
    let o = run_as_strs(u, &mount_args(&fx, &["--digest", &good]));
    // --digest implies verity=require for the objects; without fs-verity on the objects (this
    // kernel/filesystem) the overlay refuses — either way the image digest check itself passed.
    if o.status.success() {
        umount_all_under(&fx.dir);
    } else {
        assert!(!stderr(&o).contains("does not match"), "{}", stderr(&o));
        assert_eq!(before, mountpoints());
    }
}

/// packaging/Makefile: a staged install (DESTDIR) in setuid mode lays out the binary 4755 root,
/// the mount.composefs link, the man page and the default policy; the staged helper works.
#[test]
fn packaging_makefile_install() {
    let (_g, e, _) = start();
    let stage = e.root.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::set_permissions(&stage, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-f", "packaging/Makefile", "install", "MODE=setuid"])
        .arg(format!("DESTDIR={}", stage.display()))
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_cfsmount")))
        .arg("PREFIX=/usr")
        .output()
        .expect("make");
    assert!(o.status.success(), "make install: {}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    let bin = stage.join("usr/bin/cfsmount");
    let m = std::fs::metadata(&bin).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o4755));
    assert_eq!(std::fs::read_link(stage.join("sbin/mount.composefs")).unwrap(), Path::new("/usr/bin/cfsmount"));
    assert!(stage.join("usr/share/man/man8/cfsmount.8").exists());
    let pol = stage.join("etc/cfsmount/helper.conf");
    let pm = std::fs::metadata(&pol).unwrap();
    assert_eq!((pm.uid(), pm.mode() & 0o777), (0, 0o644));
    assert!(cfsmount::privileged::policy::Policy::load_from(&pol).is_ok(), "installed policy loads");
    // The staged binary works as a helper for the test user.
    let o = run_as_with(&e.user, &bin, &["mkimage".into()], |_| {});
    assert_refused(&o, "only `mount` and `umount`");
    // Unknown mode is refused.
    let o = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-f", "packaging/Makefile", "install", "MODE=bogus"])
        .arg(format!("DESTDIR={}", stage.display()))
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_cfsmount")))
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// An idmap user namespace nested inside another (its parent is not the initial namespace) is
/// refused: the helper can only interpret maps relative to the initial namespace (fails closed).
#[test]
fn nested_idmap_namespace_is_refused() {
    let (_g, _, u) = start();
    let a = b"nest".as_slice();
    let fx = one_file_fixture(u, "nested", "n", a);
    let p = spawn_as(
        u,
        &[
            "/usr/bin/unshare",
            "--user",
            "--map-root-user",
            "/usr/bin/unshare",
            "--user",
            "--map-root-user",
            "/usr/bin/sleep",
            "30",
        ],
    );
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&fx, &["--idmap", &format!("/proc/{}/ns/user", p.id())]));
    assert_refused_nothing_mounted(&o, "nested user namespaces are not supported", &before);
}

/// No free loop device, and kernels lacking a feature. Each is simulated by
/// making the relevant syscall fail as that kernel would; the helper must refuse with a message
/// that names what is missing, mount nothing, hold no loop device and leave no record.
#[test]
fn exhaustion_and_missing_kernel_features_fail_closed() {
    let (_g, _, u) = start();
    let a = b"fault injection\n".as_slice();
    let fx = one_file_fixture(u, "faults", "f", a);
    let uidmap = format!("0:{}:1", u.uid);
    let gidmap = format!("0:{}:1", u.gid);
    const LOOP_CTL_GET_FREE: u64 = 0x4C82;
    const LOOP_CONFIGURE: u64 = 0x4C0A;
    let cases: Vec<(&str, Vec<&str>, Fault, &str)> = vec![
        (
            "no free loop device",
            vec!["--force-loop"],
            Fault { nr: libc::SYS_ioctl, arg1: Some(LOOP_CTL_GET_FREE), errno: libc::ENOSPC as u32 },
            "no free loop device",
        ),
        (
            "every free loop device taken by someone else",
            vec!["--force-loop"],
            Fault { nr: libc::SYS_ioctl, arg1: Some(LOOP_CONFIGURE), errno: libc::EBUSY as u32 },
            "no loop device could be configured after 64 attempts",
        ),
        (
            "kernel without LOOP_CONFIGURE",
            vec!["--force-loop"],
            Fault { nr: libc::SYS_ioctl, arg1: Some(LOOP_CONFIGURE), errno: libc::ENOTTY as u32 },
            "lacks LOOP_CONFIGURE",
        ),
        (
            "kernel without EROFS",
            vec![],
            Fault { nr: libc::SYS_fsopen, arg1: None, errno: libc::ENODEV as u32 },
            "this kernel has no EROFS",
        ),
        (
            "kernel without the new mount API",
            vec![],
            Fault { nr: libc::SYS_fsopen, arg1: None, errno: libc::ENOSYS as u32 },
            "lacks the new mount API",
        ),
        (
            "kernel that cannot idmap EROFS",
            vec!["--uidmap", &uidmap, "--gidmap", &gidmap],
            Fault { nr: libc::SYS_mount_setattr, arg1: None, errno: libc::EINVAL as u32 },
            "cannot idmap EROFS mounts",
        ),
        (
            "kernel without move_mount",
            vec![],
            Fault { nr: libc::SYS_move_mount, arg1: None, errno: libc::ENOSYS as u32 },
            "move_mount onto the target",
        ),
    ];
    for (what, extra, fault, needle) in &cases {
        let before = (mountpoints(), loop_devices_in_use(), state_files());
        let args = mount_args(&fx, extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_as_faulty(u, &a, fault);
        let after = (mountpoints(), loop_devices_in_use(), state_files());
        umount_all_under(&fx.dir);
        assert_eq!(o.status.code(), Some(1), "{what}: expected a refusal, got {:?}: {}", o.status, stderr(&o));
        assert!(stderr(&o).contains(needle), "{what}: expected {needle:?} in: {}", stderr(&o));
        assert_eq!((&before.0, before.1), (&after.0, after.1), "{what}: a mount or loop device was left behind");
        // (the helper may prune stale records of earlier tests, but must not add one)
        let new: Vec<_> = after.2.iter().filter(|f| !before.2.contains(f)).collect();
        assert!(new.is_empty(), "{what}: records left behind: {new:?}");
    }
    // A kernel without mount_setattr (5.2-5.11) cannot idmap the object directories, which the
    // helper needs to read data with the caller's rights: it refuses, naming what is missing.
    let before = (mountpoints(), loop_devices_in_use(), state_files());
    let o = run_as_faulty(
        u,
        &a_strs(&mount_args(&fx, &[])),
        &Fault { nr: libc::SYS_mount_setattr, arg1: None, errno: libc::ENOSYS as u32 },
    );
    umount_all_under(&fx.dir);
    assert_refused(&o, "lacks mount_setattr");
    assert_eq!((before.0, before.1), (mountpoints(), loop_devices_in_use()), "left behind without mount_setattr");
}

/// `--fd-out` mounts count against `max_mounts` for as long as the receiver keeps them (the
/// helper watches the loop device each one holds, by its disk sequence number), and stop
/// counting, with their record pruned, once the receiver drops them.
#[test]
fn fd_out_mounts_count_against_limits_until_dropped() {
    let (_g, e, u) = start();
    umount_all_under(&e.root);
    let (guard, _) = user_limits_policy(u, serde_json::json!({ "max_mounts": 1 }));
    let a = b"held by a receiver\n".as_slice();
    let fx = one_file_fixture(u, "fdout-limit", "f", a);
    let sock = fx.dir.join("sock");
    let mut recv = spawn_receiver(u, "hold", &sock, &fx.target);
    let records_before = state_files();
    let o = mount_fd_out(u, &fx, &sock);
    assert!(o.status.success(), "mount --fd-out: {}", stderr(&o));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(recv.0.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "attached", "receiver did not attach the mount");
    let fd_out_record: Vec<String> = state_files().into_iter().filter(|f| !records_before.contains(f)).collect();
    assert_eq!(fd_out_record.len(), 1, "one record for the --fd-out mount");
    // While the receiver holds it, the fd-out mount is the caller's one allowed mount.
    let before = mountpoints();
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert_refused_nothing_mounted(&o, "per-user limit exceeded: mounts", &before);
    assert!(state_files().contains(&fd_out_record[0]), "the live fd-out record was kept");
    // The receiver exits: its namespace and the mount go away, and with them the loop device.
    let r = recv.output();
    assert!(r.status.success(), "receiver: {}", String::from_utf8_lossy(&r.stderr));
    let o = mount_within_a_second(u, &fx);
    let gone = !state_files().contains(&fd_out_record[0]);
    let content = std::fs::read(fx.target.join("f"));
    let _ = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    umount_all_under(&fx.dir);
    drop(guard);
    assert!(o.status.success(), "mount after the receiver dropped its fd-out mount: {}", stderr(&o));
    assert_eq!(content.unwrap(), a);
    assert!(gone, "the dead fd-out record {} was not pruned", fd_out_record[0]);
}

/// umount detaches lazily (the fd that pins the mount would make a plain umount see it busy):
/// a mount still held open after `cfsmount umount` keeps its loop device, so it keeps counting
/// against the caller's limits until the last file in it is closed; then its record is pruned.
#[test]
fn unmounted_but_busy_mounts_count_until_released() {
    let (_g, e, u) = start();
    umount_all_under(&e.root);
    let (guard, _) = user_limits_policy(u, serde_json::json!({ "max_loop_devices": 1 }));
    let a = b"kept open across umount\n".as_slice();
    let fx = one_file_fixture(u, "busy", "f", a);
    let records_before = state_files();
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let held = std::fs::File::open(fx.target.join("f")).unwrap();
    let o = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    assert!(o.status.success(), "umount of a busy mount: {}", stderr(&o));
    assert!(mount_line(&fx.target).is_none(), "still attached at the target after umount");
    let kept: Vec<String> = state_files().into_iter().filter(|f| !records_before.contains(f)).collect();
    assert_eq!(kept.len(), 1, "the busy mount's record is kept (without its target)");
    // The detached mount still holds its loop device: no second one for this caller.
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert_refused(&o, "per-user limit exceeded: loop devices");
    assert_eq!(std::fs::read(fx.target.join("f")).ok(), None, "the refused mount left something at the target");
    drop(held);
    let o = mount_within_a_second(u, &fx);
    let pruned = !state_files().contains(&kept[0]);
    let _ = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    umount_all_under(&fx.dir);
    drop(guard);
    assert!(o.status.success(), "mount once the old one was released: {}", stderr(&o));
    assert!(pruned, "the released mount's record {} was not pruned", kept[0]);
}
