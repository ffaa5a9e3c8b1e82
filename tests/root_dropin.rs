//! Root tier: a setuid-root (or file-capability) cfsmount invoked as `mkcomposefs`,
//! `composefs-info` or `composefs-dump` runs as its caller, like a plain copy of the reference
//! tool: what it creates belongs to the caller, and it can read and write only what the caller
//! can (docs/dropin.md, difference 10).
//!
//! Run as root: `flock /tmp/cfsmount-root.lock cargo test --test root_dropin`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(rustix::process::geteuid().is_root(), "this root-tier test needs root (setuid install, other users)");
}

/// A scratch directory on a filesystem that honours setuid bits, readable by everyone.
fn scratch() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("cfsmount-root-dropin.").tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let opts = Command::new("findmnt").args(["-n", "-o", "OPTIONS", "-T"]).arg(d.path()).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&opts.stdout).split(',').any(|o| o.trim() == "nosuid"),
        "/var/tmp is mounted nosuid: a setuid install cannot be tested here"
    );
    d
}

/// A copy of the binary under test, installed as the packages do (owner root) with `mode`
/// or file capabilities, and the three personality links beside it.
fn install(dir: &Path, caps: bool) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let exe = bin.join("cfsmount");
    fs::copy(env!("CARGO_BIN_EXE_cfsmount"), &exe).unwrap();
    if caps {
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let out = Command::new("setcap").arg("cap_sys_admin,cap_setuid,cap_setgid=ep").arg(&exe).output().unwrap();
        assert!(out.status.success(), "setcap: {}", String::from_utf8_lossy(&out.stderr));
    } else {
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o4755)).unwrap();
    }
    for t in ["mkcomposefs", "composefs-info", "composefs-dump"] {
        std::os::unix::fs::symlink("cfsmount", bin.join(t)).unwrap();
    }
    bin
}

/// Run `tool` of `bin` as nobody (real and effective ids 65534, no groups).
fn as_nobody(bin: &Path, tool: &str, args: &[&Path], cwd: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin.join(tool))
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap()
}

fn check_runs_as_the_caller(caps: bool) {
    require_root();
    let d = scratch();
    let bin = install(d.path(), caps);
    // A directory nobody may write, and one it may not.
    let mine = d.path().join("mine");
    fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    let roots = d.path().join("roots");
    fs::create_dir(&roots).unwrap();
    fs::set_permissions(&roots, fs::Permissions::from_mode(0o755)).unwrap();
    let dump = d.path().join("in.dump");
    fs::write(&dump, "/ 0 40755 2 0 0 0 0.0 - - -\n/f 3 100644 1 0 0 0 0.0 - abc -\n").unwrap();
    fs::set_permissions(&dump, fs::Permissions::from_mode(0o644)).unwrap();

    // While it waits for its input, the process has the caller's ids and no capability left.
    let fifo = d.path().join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, fifo.as_path(), rustix::fs::FileType::Fifo, 0o666.into(), 0).unwrap();
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o666)).unwrap();
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin.join("mkcomposefs"))
        .arg("--from-file")
        .arg(&fifo)
        .arg(mine.join("fifo.img"))
        .env_clear()
        .spawn()
        .unwrap();
    // Killed if an assertion below fails (it would wait for its FIFO forever).
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    let pid = child.0.id();
    let proc_file = |f: &str| fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while proc_file("wchan") != "wait_for_partner" {
        assert!(std::time::Instant::now() < deadline, "mkcomposefs never blocked opening its FIFO input");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = proc_file("status");
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_string();
    assert_eq!(field("Uid:"), "Uid:\t65534\t65534\t65534\t65534", "{status}");
    assert_eq!(field("Gid:"), "Gid:\t65534\t65534\t65534\t65534", "{status}");
    for k in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(k), format!("{k}\t0000000000000000"), "{status}");
    }
    fs::write(&fifo, fs::read(&dump).unwrap()).unwrap();
    assert!(child.0.wait().unwrap().success());

    // The image it makes belongs to the caller.
    let img = mine.join("out.img");
    let out = as_nobody(&bin, "mkcomposefs", &[Path::new("--from-file"), &dump, &img], &mine);
    assert!(out.status.success(), "mkcomposefs as nobody: {}", String::from_utf8_lossy(&out.stderr));
    let md = fs::metadata(&img).unwrap();
    assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "the image must belong to the caller, not to root");

    // It cannot write where the caller cannot ...
    let out = as_nobody(&bin, "mkcomposefs", &[Path::new("--from-file"), &dump, &roots.join("x.img")], &mine);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read_dir(&roots).unwrap().next().is_none(), "something was created in a root-only directory");
    let out = as_nobody(&bin, "composefs-dump", &[&img, &roots.join("y.img")], &mine);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fs::read_dir(&roots).unwrap().next().is_none());

    // ... nor read what it cannot.
    let secret = roots.join("secret.img");
    fs::copy(&img, &secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_nobody(&bin, "composefs-info", &[Path::new("ls"), &secret], &mine);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Failed to open"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_nobody(&bin, "composefs-info", &[Path::new("ls"), &img], &mine);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/f\n");
    let out =
        as_nobody(&bin, "mkcomposefs", &[Path::new("--from-file"), &roots.join("secret.img"), &mine.join("z")], &mine);
    assert_eq!(out.status.code(), Some(1));

    // The helper subcommands of the same binary keep their privileged mode: the personalities
    // changed nothing there (an unknown subcommand is still refused as before).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin.join("cfsmount"))
        .arg("mkimage")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("privileged mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn setuid_install_runs_the_personalities_as_the_caller() {
    check_runs_as_the_caller(false);
}

#[test]
fn file_capability_install_runs_the_personalities_as_the_caller() {
    check_runs_as_the_caller(true);
}
