//! The shared harness of the root tier (`tests/root_*.rs`): root check, one lock per test
//! binary, scratch directories that detach their mounts when dropped, leak checks (mounts, loop
//! devices, EROFS superblocks, files in a state directory), the unprivileged test users
//! `cfstest`/`cfstest2` with their `/etc/subuid` and `/etc/subgid` ranges, and running programs
//! as those users through `setpriv`.
//!
//! Use it with `#[path = "support/root.rs"] mod root;`. The root tier runs under the machine-wide
//! lock (`flock /tmp/cfsmount-root.lock cargo test --test root_... -- --test-threads=1`), so the
//! mount table and the loop devices only change because of the test that runs.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Fails the test with the reason unless it runs as root. `suite` says what the suite does that
/// needs root.
#[track_caller]
pub fn require_root(suite: &str) {
    assert!(rustix::process::geteuid().is_root(), "{suite}: needs root; run the root tier as root");
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time within a test binary (a failed test poisons nothing: the lock is taken
/// back). Every test that mounts, attaches or counts holds it.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `cmd args`, panicking with a hint when the program is missing.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e} (is it installed?)"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Mount table, loop devices, cleanup
// ---------------------------------------------------------------------------------------------

/// Mount points (fifth field of /proc/self/mountinfo), in mount order.
pub fn mountpoints() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// The mountinfo line whose mount point is `p` (the topmost one).
pub fn mount_line(p: &Path) -> Option<String> {
    let s = p.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(s))
        .map(str::to_string)
}

/// The mount options (sixth mountinfo field) of the topmost mount at `p`.
pub fn mount_options(p: &Path) -> Option<Vec<String>> {
    mount_line(p).map(|l| l.split(' ').nth(5).unwrap_or("").split(',').map(str::to_string).collect())
}

/// Loop devices that currently have a backing file, as `loopN: backing file`.
pub fn loop_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let b = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Some(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()))
        })
        .collect();
    v.sort();
    v
}

pub fn loop_devices_in_use() -> usize {
    loop_devices().len()
}

/// EROFS superblocks of the whole machine (file-backed ones show only in /sys/fs/erofs).
pub fn erofs_superblocks() -> BTreeSet<String> {
    std::fs::read_dir("/sys/fs/erofs")
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "features").collect()
        })
        .unwrap_or_default()
}

/// Names of the entries of a directory (empty when it does not exist), sorted, without
/// `verdicts` and `copies` (the setuid helper's remembered image verdicts and kept image copies
/// in its state directory, made by its first mount and meant to stay).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
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

/// Detaches (lazily) whatever is still mounted at or under `dir`, innermost first.
pub fn umount_all_under(dir: &Path) {
    let s = dir.to_str().unwrap();
    for _ in 0..8 {
        let mps: Vec<String> =
            mountpoints().into_iter().filter(|m| m == s || m.starts_with(&format!("{s}/"))).collect();
        if mps.is_empty() {
            return;
        }
        for m in mps.iter().rev() {
            let _ = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Waits up to `secs` seconds for `f` to hold; returns whether it did.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch directories and leak checks
// ---------------------------------------------------------------------------------------------

/// A private directory for one test under /var/tmp (a disk filesystem, so that file-backed
/// EROFS and direct-I/O loop devices behave as in production). Mounts left under it by a failed
/// test are detached when it is dropped.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").unwrap() }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn mkdir(&self, p: &str) -> PathBuf {
        let d = self.path(p);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
    /// Mount points under the scratch directory.
    pub fn mount_points(&self) -> Vec<String> {
        let p = self.dir.path().to_string_lossy().into_owned();
        mountpoints().into_iter().filter(|mp| mp.starts_with(&p)).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        umount_all_under(self.dir.path());
    }
}

/// What a test could leave behind: mounts whose mountinfo lines mention `prefix`, loop devices
/// backed by a file under `prefix` or by one of cfsmount's memory copies (`/memfd:cfsmount-*`
/// and `/run/cfsmount/copies/*`, the private image copies of the setuid helper), EROFS superblocks, and the entries of a state
/// directory (records, temporary images). `loops_in_use` (machine-wide) is informational.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Snapshot {
    pub prefix: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub mounts: Vec<String>,
    pub loops: Vec<String>,
    pub loops_in_use: usize,
    pub erofs: BTreeSet<String>,
    pub state_files: Vec<String>,
}

impl Snapshot {
    pub fn take(prefix: &Path, state_dir: Option<&Path>) -> Snapshot {
        let p = prefix.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&p))
            .map(str::to_string)
            .collect();
        let all = loop_devices();
        Snapshot {
            prefix: prefix.to_path_buf(),
            state_dir: state_dir.map(Path::to_path_buf),
            mounts,
            loops: all
                .iter()
                .filter(|l| l.contains(&p) || l.contains("/memfd:cfsmount") || l.contains("/run/cfsmount/copies/"))
                .cloned()
                .collect(),
            loops_in_use: all.len(),
            erofs: erofs_superblocks(),
            state_files: state_dir.map(dir_entries).unwrap_or_default(),
        }
    }

    fn again(&self) -> Snapshot {
        Snapshot::take(&self.prefix, self.state_dir.as_deref())
    }

    /// Asserts that nothing was left behind since this snapshot. Loop devices and EROFS
    /// superblocks go away asynchronously after a lazy unmount, and EROFS superblocks of other
    /// programs may come and go: a difference must persist for 3 s to count.
    #[track_caller]
    pub fn assert_nothing_left(&self, ctx: &str) {
        let ok = |now: &Snapshot| {
            now.mounts == self.mounts
                && now.loops == self.loops
                && now.erofs.is_subset(&self.erofs)
                && now.new_state_files(self).is_empty()
        };
        let mut now = self.again();
        for _ in 0..30 {
            if ok(&now) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            now = self.again();
        }
        assert_eq!(now.mounts, self.mounts, "{ctx}: mounts left behind");
        assert_eq!(now.loops, self.loops, "{ctx}: loop devices left behind");
        let extra: Vec<_> = now.erofs.difference(&self.erofs).collect();
        assert!(extra.is_empty(), "{ctx}: EROFS superblocks left behind: {extra:?}");
        let extra = now.new_state_files(self);
        assert!(extra.is_empty(), "{ctx}: records or temporary files left in the state directory: {extra:?}");
    }

    /// Entries of the state directory that `before` did not have. Entries may also have gone
    /// meanwhile: any mount prunes the records of mounts already gone, including those an
    /// earlier suite left (e.g. `--fd-out` mounts whose receiver dropped them).
    fn new_state_files(&self, before: &Snapshot) -> Vec<String> {
        self.state_files.iter().filter(|f| !before.state_files.contains(f)).cloned().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Unprivileged test users
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// First id of its 65536-id ranges in /etc/subuid and /etc/subgid.
    pub subid_start: u32,
}

/// Creates (once per run, or reuses) the system user `name` without a home directory and gives
/// it the subordinate id range `subid_start:65536` in /etc/subuid and /etc/subgid.
pub fn ensure_user(name: &str, subid_start: u32) -> TestUser {
    if !sh("id", &["-u", name]).status.success() {
        let o = sh("useradd", &["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]);
        assert!(o.status.success(), "useradd {name}: {}", stderr(&o));
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
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    TestUser { name: name.to_string(), uid: id("-u"), gid: id("-g"), subid_start }
}

/// The two unprivileged users of the root tier: `cfstest` (subids 400000+) and `cfstest2`
/// (subids 500000+).
pub fn test_users() -> &'static (TestUser, TestUser) {
    static USERS: OnceLock<(TestUser, TestUser)> = OnceLock::new();
    USERS.get_or_init(|| (ensure_user("cfstest", 400000), ensure_user("cfstest2", 500000)))
}

/// `setpriv --reuid --regid --init-groups -- exe args...` for `u`, with an empty environment
/// except a fixed PATH and stdin on /dev/null; `tweak` may change the command (env, fds, rlimits).
pub fn command_as(u: &TestUser, exe: &Path, args: &[OsString]) -> Command {
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
    c
}

/// Runs `exe args` as `u` to the end ([`command_as`]; `tweak` may adjust the command).
pub fn run_as(u: &TestUser, exe: &Path, args: &[OsString], tweak: impl FnOnce(&mut Command)) -> Output {
    let mut c = command_as(u, exe, args);
    tweak(&mut c);
    c.output().expect("setpriv")
}

/// A process started as a test user; killed and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
    /// Closes its stdin, waits for it and collects what it wrote.
    pub fn output(&mut self) -> Output {
        use std::io::Read;
        drop(self.0.stdin.take());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let Some(mut o) = self.0.stdout.take() {
            o.read_to_end(&mut stdout).unwrap();
        }
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_end(&mut stderr).unwrap();
        }
        let status = self.0.wait().unwrap();
        Output { status, stdout, stderr }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `exe args` as `u` (stdin, stdout, stderr piped) without waiting for it.
pub fn spawn_as(u: &TestUser, exe: &Path, args: &[OsString]) -> Proc {
    let mut c = command_as(u, exe, args);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Proc(c.spawn().expect("setpriv"))
}

/// Starts `argv` as `u` and waits until the process has exec'd the program named last in
/// `argv[..]` whose file name is `final_exe` (e.g. `unshare --user sleep 30` → `sleep`).
pub fn spawn_as_until_exec(u: &TestUser, argv: &[&str], final_exe: &str) -> Proc {
    let args: Vec<OsString> = argv[1..].iter().map(OsString::from).collect();
    let mut c = command_as(u, Path::new(argv[0]), &args);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let p = Proc(c.spawn().expect("setpriv"));
    eventually(2, || {
        std::fs::read_link(format!("/proc/{}/exe", p.id())).unwrap_or_default().file_name()
            == Some(std::ffi::OsStr::new(final_exe))
    });
    p
}

/// A directory owned by `u` (mode 0755) at `path`, emptied first (mounts under it detached).
pub fn fresh_dir_for(u: &TestUser, path: &Path) -> PathBuf {
    umount_all_under(path);
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}
