//! Shared parts of the root-tier suites that drive the setuid helper (`root_helper.rs`,
//! `root_helper_trust.rs`): the installed setuid copy, running it as the test users, refusal
//! assertions, policy files, image fixtures, the `--fd-out` receiver and seccomp fault
//! injection. Use together with `support/root.rs`:
//! `#[path = "support/root.rs"] mod root; #[path = "support/helper.rs"] mod helper;`.
//!
//! `CFSMOUNT_TEST_BIN` (read by the tests only, never by cfsmount) installs another cfsmount
//! binary as the helper, e.g. an older build, to show which tests it fails.
#![allow(dead_code)]

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::root::{self, sh, stderr, umount_all_under, Proc, TestUser as User};

/// The binary installed as the helper: `CFSMOUNT_TEST_BIN`, or the one cargo built.
pub fn helper_binary() -> PathBuf {
    std::env::var_os("CFSMOUNT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cfsmount")))
}

pub fn require_root() {
    root::require_root("root_helper (installs a setuid-root binary and creates test users)");
}

pub struct Env {
    /// 0755 directory holding the setuid copy (kept for the whole test run).
    pub root: PathBuf,
    pub bin: PathBuf,
    pub plain_bin: PathBuf,
    pub user: User,
    pub other: User,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        require_root();
        let root = PathBuf::from("/tmp/cfsmount-helper-test");
        umount_all_under(&root);
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
        std::fs::copy(helper_binary(), &bin).unwrap();
        std::os::unix::fs::chown(&bin, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let plain_bin = root.join("cfsmount-plain");
        std::fs::copy(helper_binary(), &plain_bin).unwrap();
        std::fs::set_permissions(&plain_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (user, other) = root::test_users().clone();
        Env { root, bin, plain_bin, user, other }
    })
}

/// Every test's start: the suite's serial lock (taken first; held while the guard lives), the
/// shared environment (made on first use) and its first test user.
pub fn start() -> (std::sync::MutexGuard<'static, ()>, &'static Env, &'static User) {
    let guard = root::serial();
    let e = env();
    (guard, e, &e.user)
}

/// `exe args` run as `u` ([`root::run_as`]); `tweak` may add env, rlimits, fd closing.
pub fn run_as_with(u: &User, exe: &Path, args: &[OsString], tweak: impl FnOnce(&mut Command)) -> Output {
    root::run_as(u, exe, args, tweak)
}

pub fn run_as(u: &User, args: &[&str]) -> Output {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    run_as_with(u, &env().bin, &args, |_| {})
}

/// Asserts a refusal: exit status 1 (not a signal, not success) and a message containing `needle`.
#[track_caller]
pub fn assert_refused(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean refusal (exit 1), got {:?}; stderr: {e}", o.status);
    assert!(e.contains(needle), "expected {needle:?} in the message, got: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one-line message expected, got: {e}");
}

/// [`assert_refused`], and the mount table is what it was (`before`, from [`mountpoints`]).
#[track_caller]
pub fn assert_refused_nothing_mounted(o: &Output, needle: &str, before: &[String]) {
    assert_refused(o, needle);
    assert_eq!(before, mountpoints(), "refused, yet the mount table changed");
}

/// Mount points currently listed in /proc/self/mountinfo, leaving out scratch mounts of other
/// root-tier suites (under /tmp and /var/tmp but not under this suite's test root).
pub fn mountpoints() -> Vec<String> {
    let ours = "/tmp/cfsmount-helper-test";
    root::mountpoints()
        .into_iter()
        .filter(|m| m.starts_with(ours) || !(m.starts_with("/tmp/") || m.starts_with("/var/tmp/")))
        .collect()
}

/// A fresh directory owned by `u` (mode 0755) under the test root.
pub fn user_dir(u: &User, name: &str) -> PathBuf {
    root::fresh_dir_for(u, &env().root.join(format!("{}-{name}", u.name)))
}

/// Restores /etc/cfsmount/helper.conf (and the directory) as they were when dropped.
pub struct PolicyGuard {
    pub had_dir: bool,
    pub old: Option<(Vec<u8>, u32, u32, u32)>,
}

pub const POLICY: &str = "/etc/cfsmount/helper.conf";

impl PolicyGuard {
    pub fn new() -> PolicyGuard {
        let had_dir = Path::new("/etc/cfsmount").exists();
        let old = std::fs::symlink_metadata(POLICY)
            .ok()
            .map(|m| (std::fs::read(POLICY).unwrap_or_default(), m.mode(), m.uid(), m.gid()));
        std::fs::create_dir_all("/etc/cfsmount").unwrap();
        std::fs::set_permissions("/etc/cfsmount", std::fs::Permissions::from_mode(0o755)).unwrap();
        PolicyGuard { had_dir, old }
    }
    pub fn write(&self, text: &str, mode: u32, uid: u32) {
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

/// Installs the default policy with `limits` as `u`'s user_limits; returns the guard (restores
/// the old policy on drop) and the policy written, for further changes.
pub fn user_limits_policy(u: &User, limits: serde_json::Value) -> (PolicyGuard, serde_json::Value) {
    let guard = PolicyGuard::new();
    let mut v = default_policy();
    v["user_limits"] = serde_json::json!({ u.name.clone(): limits });
    guard.write(&v.to_string(), 0o644, 0);
    (guard, v)
}

/// The shipped default policy, without the sections an older helper does not know
/// (`machine_limits`: its built-in defaults apply), so that the same tests can run against an
/// older binary (`CFSMOUNT_TEST_BIN`). Tests about those sections add them. The same for
/// `features.als_view` (default off).
pub fn default_policy() -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy/helper.conf")).unwrap(),
    )
    .unwrap();
    v.as_object_mut().unwrap().remove("machine_limits");
    v["features"].as_object_mut().unwrap().remove("als_view");
    v
}

/// A composefs image built with the library (dumpfile parser + EROFS writer).
pub fn build_image(dump: &str) -> Vec<u8> {
    let opts = cfsmount::input::dump::DumpOptions { strict: false, limits: Default::default() };
    let tree = cfsmount::input::dump::parse(dump.as_bytes(), &opts).expect("test dumpfile parses");
    let mut out = Vec::new();
    cfsmount::erofs::writer::write_image(&tree, &Default::default(), &mut out).expect("image writes");
    out
}

/// Object path (as in composefs: xx/rest of the sha256 hex) for some content.
pub fn object_name(content: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(content);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{}", &hex[..2], &hex[2..])
}

pub struct Fixture {
    pub dir: PathBuf,
    pub image: PathBuf,
    pub objects: PathBuf,
    pub target: PathBuf,
}

/// Files for `u`: `image.cfs` from `dump_body` (lines after the root line; `{uid}`/`{gid}`
/// are replaced), the objects in `objects/`, and an empty target `mnt/`; all owned by `u`.
pub fn fixture(u: &User, name: &str, dump_body: &str, objects: &[&[u8]]) -> Fixture {
    let dir = user_dir(u, name);
    let objdir = dir.join("objects");
    let target = dir.join("mnt");
    std::fs::create_dir_all(&objdir).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    for o in objects {
        let p = objdir.join(object_name(o));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, o).unwrap();
    }
    let dump = format!("/ 4096 40755 2 {uid} {gid} 0 0.0 - - -\n{dump_body}", uid = u.uid, gid = u.gid)
        .replace("{uid}", &u.uid.to_string())
        .replace("{gid}", &u.gid.to_string());
    let image = dir.join("image.cfs");
    std::fs::write(&image, build_image(&dump)).unwrap();
    let o = sh("chown", &["-R", &format!("{}:{}", u.uid, u.gid), dir.to_str().unwrap()]);
    assert!(o.status.success());
    Fixture { dir, image, objects: objdir, target }
}

/// A [`fixture`] whose image holds one regular file `file` (0644, owned by `u`) with `content`.
pub fn one_file_fixture(u: &User, name: &str, file: &str, content: &[u8]) -> Fixture {
    fixture(u, name, &dump_line_external(file, "100644", u.uid, content), &[content])
}

pub fn dump_line_external(path: &str, mode: &str, uid: u32, content: &[u8]) -> String {
    format!("/{path} {} {mode} 1 {uid} {uid} 0 0.0 {} - -\n", content.len(), object_name(content))
}

pub fn mount_args<'a>(fx: &'a Fixture, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec![
        "mount".to_string(),
        fx.image.display().to_string(),
        fx.target.display().to_string(),
        "--basedir".to_string(),
        fx.objects.display().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn run_as_strs(u: &User, args: &[String]) -> Output {
    run_as(u, &a_strs(args))
}

/// Mounts `fx` as `u`, retrying for up to a second while it is refused: the last reference to
/// an earlier mount (and so its loop device) may go a moment after its holder let go.
pub fn mount_within_a_second(u: &User, fx: &Fixture) -> Output {
    let mut o = run_as_strs(u, &mount_args(fx, &[]));
    for _ in 0..50 {
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        o = run_as_strs(u, &mount_args(fx, &[]));
    }
    o
}

/// Starts `argv` as `u` and returns once it has exec'd `sleep` (the last program of every
/// command line used here, e.g. `unshare --user sleep 30`).
pub fn spawn_as(u: &User, argv: &[&str]) -> Proc {
    root::spawn_as_until_exec(u, argv, "sleep")
}

/// A receiver for `--fd-out`, run as `u` in a new user+mount namespace of its own (the rootless
/// runtime's position): it listens on `sock`, attaches the received mount at `target` and then
/// acts per `mode` (see [`RECEIVER`]). Returns once the socket exists.
pub fn spawn_receiver(u: &User, mode: &str, sock: &Path, target: &Path) -> Proc {
    let script = env().root.join("recv.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let _ = std::fs::remove_file(sock);
    let child = Command::new("/usr/bin/setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .args(["--", "/usr/bin/unshare", "--user", "--map-root-user", "--mount", "/usr/bin/python3"])
        .arg(&script)
        .args([mode.as_ref(), sock.as_os_str(), target.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Proc(child)
}

/// Asks `u`'s helper to send the mount of `fx` to the receiver listening on `sock`.
pub fn mount_fd_out(u: &User, fx: &Fixture, sock: &Path) -> Output {
    run_as(
        u,
        &[
            "mount",
            fx.image.to_str().unwrap(),
            "--basedir",
            fx.objects.to_str().unwrap(),
            "--fd-out",
            sock.to_str().unwrap(),
        ],
    )
}

/// Modes: `read` prints the attached mount's file `f`; `clear` clears nosuid,nodev on it and
/// runs its setuid-root `suid-cat` on /etc/shadow, printing JSON; `hold` prints "attached" and
/// keeps the mount until stdin closes; `overlay:UPPER:WORK:MERGED` mounts the receiver's own
/// writable overlay (upper dir UPPER) on the received mount at MERGED, writes a new file, appends
/// to `mine` and tries to append to the setuid-root `suid-copy`, printing JSON.
pub const RECEIVER: &str = r#"
import ctypes, os, socket, sys, array, struct, json, subprocess
libc = ctypes.CDLL(None, use_errno=True)
mode, sock_path, target = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
# Bound and listening under a temporary name, then renamed: the socket appears ready.
if os.path.exists(sock_path + ".tmp"):
    os.unlink(sock_path + ".tmp")
s.bind(sock_path + ".tmp")
s.listen(1)
os.rename(sock_path + ".tmp", sock_path)
s.settimeout(30)
c, _ = s.accept()
fds = array.array('i')
msg, anc, flags, addr = c.recvmsg(16, socket.CMSG_LEN(4 * fds.itemsize))
for level, typ, data in anc:
    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
        fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
if not fds:
    sys.exit("no fd received")
# move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)
if libc.syscall(429, fds[0], b"", -100, target.encode(), 4) != 0:
    sys.exit("move_mount failed: errno %d" % ctypes.get_errno())
if mode == "read":
    sys.stdout.write(open(os.path.join(target, "f")).read())
elif mode == "clear":
    # mount_setattr(AT_FDCWD, target, 0, {attr_clr = NOSUID|NODEV}, 32)
    attr = struct.pack("QQQQ", 0, 0x2 | 0x4, 0, 0)
    r = libc.syscall(442, -100, target.encode(), 0, attr, 32)
    clear = "allowed" if r == 0 else "refused (errno %d)" % ctypes.get_errno()
    exe = os.path.join(target, "suid-cat")
    p = subprocess.run([exe, "/etc/shadow"], capture_output=True)
    print(json.dumps({"clear": clear, "cat_status": p.returncode, "cat_stderr": p.stderr.decode(errors="replace"),
                      "cat_mode_suid": bool(os.stat(exe).st_mode & 0o4000)}))
elif mode == "hold":
    print("attached", flush=True)
    sys.stdin.read()
elif mode.startswith("overlay:"):
    # The rootless runtime's own writable overlay on top of the received read-only mount.
    _, upper, work, merged = mode.split(":")
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "lowerdir=%s,upperdir=%s,workdir=%s,userxattr" % (target, upper, work), merged], check=True)
    def attempt(f):
        try:
            f()
            return "ok"
        except OSError as e:
            return "refused (errno %d)" % e.errno
    res = {}
    for line in open("/proc/self/mountinfo"):
        fields = line.split(" - ")
        if fields[0].split()[4] == merged:
            res["super"] = fields[1].split()[2].split(",")[0]
    res["write_new"] = attempt(lambda: open(os.path.join(merged, "new"), "w").write("hello"))
    res["append_mine"] = attempt(lambda: open(os.path.join(merged, "mine"), "a").write("more"))
    res["attack"] = attempt(lambda: open(os.path.join(merged, "suid-copy"), "a").write("x"))
    print(json.dumps(res))
"#;

/// The entries of /run/cfsmount (records and temporary files), without `verdicts` and
/// `copies`: the directories of remembered image verdicts and kept image copies, made by the
/// first helper mount and meant to stay.
pub fn state_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/cfsmount")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "verdicts" && n != "copies")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A syscall the kernel is made to fail for the helper: `errno` for every call of `nr` (or, with
/// `arg1`, only for calls whose second argument equals it, e.g. one ioctl request).
pub struct Fault {
    pub nr: i64,
    pub arg1: Option<u64>,
    pub errno: u32,
}

/// Runs the helper as `u` under a seccomp filter that injects `fault`. The filter is installed by
/// this (root) process between fork and exec, WITHOUT no_new_privs, so the setuid exec that
/// follows still takes effect: the helper runs privileged on a kernel that behaves as if it lacked
/// a feature or had run out of a resource.
pub fn run_as_faulty(u: &User, args: &[&str], fault: &Fault) -> Output {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    use std::os::unix::process::CommandExt;
    let rule = match fault.arg1 {
        Some(v) => {
            vec![SeccompRule::new(
                vec![SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v).unwrap()],
            )
            .unwrap()]
        }
        None => vec![],
    };
    let filter = SeccompFilter::new(
        [(fault.nr, rule)].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(fault.errno),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let prog: BpfProgram = filter.try_into().unwrap();
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    run_as_with(u, &env().bin, &args, move |c| {
        // SAFETY: only the seccomp(2) syscall runs between fork and exec; `prog` outlives it
        // (moved into the closure) and has the kernel's sock_filter layout.
        unsafe {
            c.pre_exec(move || {
                let fprog =
                    libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
                if libc::syscall(
                    libc::SYS_seccomp,
                    1, /* SECCOMP_SET_MODE_FILTER */
                    0,
                    &fprog as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

pub fn a_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Kept copies are used only where `/run/cfsmount/copies` is a tmpfs mount of its own (the
/// packaged `run-cfsmount-copies.mount`, or an administrator's). The test mounts one there for
/// its own time unless one is mounted already, and unmounts it when dropped.
pub struct CopiesOnTmpfs {
    mounted: bool,
    /// The directory did not exist before (removed again after the unmount).
    made_dir: bool,
}

impl CopiesOnTmpfs {
    pub fn ensure() -> CopiesOnTmpfs {
        let dir = std::path::Path::new("/run/cfsmount/copies");
        if sh("mountpoint", &["-q", "/run/cfsmount/copies"]).status.success() {
            return CopiesOnTmpfs { mounted: false, made_dir: false };
        }
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).unwrap();
        for d in ["/run/cfsmount", "/run/cfsmount/copies"] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
        // As the packaged unit mounts it; a kernel without transparent huge pages refuses
        // `huge=`, and then gets it without.
        let mount =
            |opts: &str| sh("mount", &["-t", "tmpfs", "-o", opts, "cfsmount-test-copies", "/run/cfsmount/copies"]);
        let mut o = mount("mode=0700,size=64m,huge=within_size");
        if !o.status.success() {
            o = mount("mode=0700,size=64m");
        }
        assert!(o.status.success(), "mounting a tmpfs on /run/cfsmount/copies: {}", stderr(&o));
        CopiesOnTmpfs { mounted: true, made_dir }
    }
}

impl Drop for CopiesOnTmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sh("umount", &["-l", "/run/cfsmount/copies"]);
            if self.made_dir {
                let _ = std::fs::remove_dir("/run/cfsmount/copies");
            }
        }
    }
}
