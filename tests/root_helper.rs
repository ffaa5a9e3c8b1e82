//! Root tier: the privileged-helper mode (issue 6), driven as an unprivileged user.
//!
//! Each test installs the built binary setuid-root into a temporary directory on a filesystem
//! without `nosuid`, creates (or reuses) the unprivileged users `cfstest` and `cfstest2`, and runs
//! the helper as them with `setpriv --reuid --regid --init-groups`. Refusals are asserted by
//! exit status AND message AND by checking that nothing new is mounted.
//! Needs: root, util-linux (setpriv, prlimit, findmnt), passwd (useradd), python3, gcc.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "root_helper tests need root (they install a setuid-root binary and create test users)"
    );
}

#[derive(Clone, Debug)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e} (is it installed?)"))
}

fn ensure_user(name: &str, subid_start: u32) -> User {
    if !sh("id", &["-u", name]).status.success() {
        let o = sh("useradd", &["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]);
        assert!(o.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let id = |flag: &str| -> u32 {
        String::from_utf8_lossy(&sh("id", &[flag, name]).stdout).trim().parse().expect("numeric id")
    };
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{name}:"))) {
            let mut t = text.clone();
            if !t.is_empty() && !t.ends_with('\n') {
                t.push('\n');
            }
            t.push_str(&format!("{name}:{subid_start}:65536\n"));
            std::fs::write(f, t).unwrap();
        }
    }
    User { name: name.to_string(), uid: id("-u"), gid: id("-g") }
}

struct Env {
    /// 0755 directory holding the setuid copy (kept for the whole test run).
    root: PathBuf,
    bin: PathBuf,
    plain_bin: PathBuf,
    user: User,
    other: User,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        require_root();
        let root = PathBuf::from("/tmp/cfsmount-helper-test");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The helper only works from a filesystem without nosuid.
        let o = sh("findmnt", &["-n", "-o", "OPTIONS", "-T", root.to_str().unwrap()]);
        let opts = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            !opts.trim().split(',').any(|x| x == "nosuid"),
            "{} is on a nosuid filesystem ({opts}); cannot test a setuid helper there",
            root.display()
        );
        let bin = root.join("cfsmount");
        std::fs::copy(env!("CARGO_BIN_EXE_cfsmount"), &bin).unwrap();
        std::os::unix::fs::chown(&bin, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let plain_bin = root.join("cfsmount-plain");
        std::fs::copy(env!("CARGO_BIN_EXE_cfsmount"), &plain_bin).unwrap();
        std::fs::set_permissions(&plain_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Env { root, bin, plain_bin, user: ensure_user("cfstest", 400000), other: ensure_user("cfstest2", 500000) }
    })
}

/// The helper (or `exe`) run as `u` via setpriv; `tweak` may add env, rlimits, fd closing.
fn run_as_with(u: &User, exe: &Path, args: &[OsString], tweak: impl FnOnce(&mut Command)) -> Output {
    let mut c = Command::new("/usr/bin/setpriv");
    c.arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(exe)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null());
    tweak(&mut c);
    c.output().expect("setpriv")
}

fn run_as(u: &User, args: &[&str]) -> Output {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    run_as_with(u, &env().bin, &args, |_| {})
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a refusal: exit status 1 (not a signal, not success) and a message containing `needle`.
fn assert_refused(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean refusal (exit 1), got {:?}; stderr: {e}", o.status);
    assert!(e.contains(needle), "expected {needle:?} in the message, got: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one-line message expected, got: {e}");
}

/// Mount points currently listed in /proc/self/mountinfo.
fn mountpoints() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// A fresh directory owned by `u` (mode 0755) under the test root.
fn user_dir(u: &User, name: &str) -> PathBuf {
    let d = env().root.join(format!("{}-{name}", u.name));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(u.uid), Some(u.gid)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Restores /etc/cfsmount/helper.conf (and the directory) as they were when dropped.
struct PolicyGuard {
    had_dir: bool,
    old: Option<(Vec<u8>, u32, u32, u32)>,
}

const POLICY: &str = "/etc/cfsmount/helper.conf";

impl PolicyGuard {
    fn new() -> PolicyGuard {
        let had_dir = Path::new("/etc/cfsmount").exists();
        let old = std::fs::symlink_metadata(POLICY)
            .ok()
            .map(|m| (std::fs::read(POLICY).unwrap_or_default(), m.mode(), m.uid(), m.gid()));
        std::fs::create_dir_all("/etc/cfsmount").unwrap();
        std::fs::set_permissions("/etc/cfsmount", std::fs::Permissions::from_mode(0o755)).unwrap();
        PolicyGuard { had_dir, old }
    }
    fn write(&self, text: &str, mode: u32, uid: u32) {
        let _ = std::fs::remove_file(POLICY);
        std::fs::write(POLICY, text).unwrap();
        std::fs::set_permissions(POLICY, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(POLICY, Some(uid), Some(0)).unwrap();
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(POLICY);
        if let Some((data, mode, uid, gid)) = &self.old {
            std::fs::write(POLICY, data).unwrap();
            std::fs::set_permissions(POLICY, std::fs::Permissions::from_mode(*mode & 0o7777)).unwrap();
            std::os::unix::fs::chown(POLICY, Some(*uid), Some(*gid)).unwrap();
        }
        std::fs::set_permissions("/etc/cfsmount", std::fs::Permissions::from_mode(0o755)).ok();
        if !self.had_dir {
            let _ = std::fs::remove_dir("/etc/cfsmount");
        }
    }
}

fn default_policy() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/helper.conf")).unwrap())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests that need no image
// ---------------------------------------------------------------------------------------------

#[test]
fn installed_helper_is_setuid_root() {
    let _g = serial();
    let e = env();
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
    let _g = serial();
    let u = &env().user;
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

/// Case 8: LD_PRELOAD, RUST_LOG/RUST_BACKTRACE, PATH, TMPDIR, HOME and cfsmount's own override
/// variables from the caller have no effect.
#[test]
fn hostile_environment_is_ignored() {
    let _g = serial();
    let e = env();
    let u = &e.user;
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
    assert!(std::fs::read_dir(&marker_dir).unwrap().next().is_none(), "helper wrote into the caller's TMPDIR/HOME/state dir");
    assert_eq!(before, mountpoints());
}

/// Case 8: closed fds 0-2 and tiny RLIMIT_NOFILE/RLIMIT_FSIZE: still a clean, reported refusal.
#[test]
fn closed_std_fds_and_tiny_rlimits() {
    let _g = serial();
    let e = env();
    let u = &e.user;
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
    let _g = serial();
    let e = env();
    let u = &e.user;
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

/// Case 9: the caller's ptrace(PTRACE_ATTACH) and /proc/PID/mem never reach the helper while
/// it holds privileges (a python3 attacker running as the caller spins on the helper's pid).
#[test]
fn ptrace_and_proc_mem_never_reach_privileged_helper() {
    let _g = serial();
    let e = env();
    let u = &e.user;
    let dir = user_dir(u, "ptrace");
    let script = e.root.join("attack.py");
    std::fs::write(&script, ATTACKER).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut attempts = 0u64;
    let mut early = 0u64;
    for _ in 0..40 {
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
            .arg("umount")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::write(&pidfile.with_extension("tmp"), helper.id().to_string()).unwrap();
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
    }
    assert!(attempts > 40, "attacker made too few attempts ({attempts})");
    eprintln!("ptrace/mem attempts: {attempts}, attached before exec: {early}");
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
    let _g = serial();
    let e = env();
    let u = &e.user;
    let before = mountpoints();
    let dir = user_dir(u, "umount");
    assert_refused(&run_as(u, &["umount", dir.to_str().unwrap()]), "not a mount made by cfsmount");
    // A real mount that cfsmount did not make (a tmpfs owned by root, even one the user owns).
    let m = user_dir(u, "umount-tmpfs");
    assert!(sh("mount", &["-t", "tmpfs", "-o", &format!("uid={}", u.uid), "none", m.to_str().unwrap()]).status.success());
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
