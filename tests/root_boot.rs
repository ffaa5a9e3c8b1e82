//! Root tier for `cfsmount setup-root` / `deploy-root` on the host kernel (no fs-verity here, so
//! the verified path is covered by the VM tier, tests/vm/boot/): a tmpfs stands in for the
//! physical root, `deploy-root --no-verity` lays a small tree out on it, and `setup-root` mounts
//! it with `composefs=?HEX` the way an initramfs would. Checks the mounts it makes (root overlay
//! without nosuid/nodev, /etc overlay into the state directory, /var bind, physical root at
//! sysroot/, transient modes), and that every failure exits 1 with one line and leaves the
//! mounts under the sysroot exactly as they were. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

static LOCK: Mutex<()> = Mutex::new(());
const BIN: &str = env!("CARGO_BIN_EXE_cfsmount");

/// A scratch dir with a tmpfs "physical root" at `sysroot/`, a deployed tree, a private state dir.
struct Env {
    dir: tempfile::TempDir,
    hex: String,
    _guard: MutexGuard<'static, ()>,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// (mount id, mount point, fs type, super options + mount options) of mounts at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<(String, String, String, String)> {
    let d = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let mp = f[4];
            (mp == d || mp.starts_with(&format!("{d}/")))
                .then(|| (f[0].into(), mp.into(), f[sep + 1].into(), format!("{},{}", f[5], f[sep + 3])))
        })
        .collect()
}

impl Env {
    fn new(image_has_sysroot_dir: bool) -> Env {
        assert!(rustix::process::geteuid().is_root(), "root_boot needs root (it mounts); run the root tier as root");
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new().prefix("cfsm-boot-").tempdir_in("/var/tmp").unwrap();
        let p = dir.path();
        let src = p.join("src");
        for d in ["etc", "var/lib/app", "usr/bin", "state"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        if image_has_sysroot_dir {
            std::fs::create_dir(src.join("sysroot")).unwrap();
        }
        std::fs::write(src.join("etc/hostname"), "cfsboot\n").unwrap();
        std::fs::write(src.join("usr/bin/big"), vec![b'x'; 100_000]).unwrap();
        std::fs::write(src.join("var/lib/app/data"), "from the image\n").unwrap();
        std::fs::create_dir_all(p.join("sysroot")).unwrap();
        std::fs::create_dir_all(p.join("state")).unwrap();
        ok(Command::new("mount").args(["-t", "tmpfs", "cfsm-boot-test"]).arg(p.join("sysroot")));
        let mut env = Env { dir, hex: String::new(), _guard: guard };
        let arg =
            ok(Command::new(BIN).arg("deploy-root").arg("--from-dir").arg(&src).arg(env.sysroot()).arg("--no-verity"));
        let hex = arg.trim().strip_prefix("composefs=?").unwrap_or_else(|| panic!("deploy-root printed {arg:?}"));
        assert_eq!(hex.len(), 64);
        env.hex = hex.to_string();
        env
    }
    fn sysroot(&self) -> PathBuf {
        self.dir.path().join("sysroot")
    }
    fn state(&self) -> PathBuf {
        self.sysroot().join("state/deploy").join(&self.hex)
    }
    /// Runs setup-root with this command line and config text.
    fn setup_root(&self, cmdline: &str, config: &str) -> Output {
        let p = self.dir.path();
        std::fs::write(p.join("cmdline"), cmdline).unwrap();
        std::fs::write(p.join("config"), config).unwrap();
        run(Command::new(BIN)
            .arg("setup-root")
            .arg("--sysroot")
            .arg(self.sysroot())
            .arg("--cmdline")
            .arg(p.join("cmdline"))
            .arg("--config")
            .arg(p.join("config"))
            .env("CFSMOUNT_STATE_DIR", p.join("state")))
    }
    /// setup-root must fail with one line containing `msg` and change no mount.
    fn refused(&self, cmdline: &str, config: &str, msg: &str) {
        let before = mounts_under(&self.sysroot());
        let o = self.setup_root(cmdline, config);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmdline}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmdline}: one line expected: {err}");
        assert!(err.contains(msg), "{cmdline}: {err:?} lacks {msg:?}");
        assert_eq!(mounts_under(&self.sysroot()), before, "{cmdline}: mounts changed");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // the new root stacked on the tmpfs, then the tmpfs
        for _ in 0..4 {
            if mounts_under(&self.sysroot()).is_empty() {
                break;
            }
            let _ = Command::new("umount").arg("-R").arg("-l").arg(self.sysroot()).status();
        }
        let left = mounts_under(self.dir.path());
        if !std::thread::panicking() {
            assert!(left.is_empty(), "left mounted: {left:?}");
        }
    }
}

#[test]
fn unverified_root_with_default_config() {
    let env = Env::new(true);
    let sr = env.sysroot();
    let o = env.setup_root(&format!("ro quiet composefs=?{} rw", env.hex), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("composefs image {} mounted", env.hex)), "{err}");
    let m = mounts_under(&sr);
    let root = m.iter().rfind(|x| x.1 == sr.to_str().unwrap()).unwrap();
    assert_eq!(root.2, "overlay", "{m:?}");
    let opts = format!(",{},", root.3);
    assert!(opts.contains(",ro,") && !opts.contains(",nosuid,") && !opts.contains(",nodev,"), "{opts}");
    assert!(!opts.contains("verity=require"), "{opts}");
    // contents through the overlay, objects from the digest store
    assert_eq!(std::fs::read_to_string(sr.join("etc/hostname")).unwrap(), "cfsboot\n");
    assert_eq!(std::fs::read(sr.join("usr/bin/big")).unwrap(), vec![b'x'; 100_000]);
    // physical root at sysroot/, /etc writable into the state dir, /var bound from it
    assert!(sr.join("sysroot/composefs/images").join(&env.hex).is_file());
    let state = sr.join("sysroot/state/deploy").join(&env.hex);
    std::fs::write(sr.join("etc/written"), "x").unwrap();
    assert!(state.join("etc/upper/written").is_file());
    std::fs::write(sr.join("var/written"), "y").unwrap();
    assert!(state.join("var/written").is_file());
    assert!(std::fs::write(sr.join("usr/written"), "z").is_err(), "/usr must be read-only");
    let kinds: Vec<(String, String)> = m.iter().map(|x| (x.1.clone(), x.2.clone())).collect();
    for sub in ["sysroot", "etc", "var"] {
        assert!(kinds.iter().any(|k| k.0 == sr.join(sub).to_str().unwrap()), "no mount at {sub}: {kinds:?}");
    }
    // no EROFS or temporary mount left visible anywhere
    let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!all.contains(".boot-") && !all.contains("/.layer-"), "temporary mount visible");
}

#[test]
fn transient_modes_and_no_sysroot_dir() {
    let env = Env::new(false);
    let sr = env.sysroot();
    // the physical root, pinned before it is covered
    let phys = std::fs::File::open(&sr).unwrap();
    let phys_path =
        |rel: &str| PathBuf::from(format!("/proc/self/fd/{}/{rel}", std::os::fd::AsRawFd::as_raw_fd(&phys)));
    let config = "root = transient\netc = transient\nvar = \"transient\"  # tmpfs\n";
    let o = env.setup_root(&format!("composefs.digest=?v1-sha256-12:{}", env.hex), config);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("physical root at"), "the image has no sysroot/: {err}");
    let m = mounts_under(&sr);
    let root = m.iter().rfind(|x| x.1 == sr.to_str().unwrap()).unwrap();
    assert!(format!(",{},", root.3).contains(",rw,"), "transient root is writable: {m:?}");
    std::fs::write(sr.join("new-in-root"), "r").unwrap();
    std::fs::write(sr.join("etc/new-in-etc"), "e").unwrap();
    std::fs::write(sr.join("var/lib/app/data"), "changed").unwrap();
    assert_eq!(std::fs::read_to_string(sr.join("var/lib/app/data")).unwrap(), "changed");
    assert!(!sr.join("sysroot").exists());
    // nothing written reached the physical root
    assert!(!phys_path("new-in-root").exists());
    assert!(!phys_path(&format!("state/deploy/{}/etc/upper/new-in-etc", env.hex)).exists());
    assert!(!phys_path(&format!("state/deploy/{}/var/lib", env.hex)).exists());
    let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!all.contains(".boot-"), "the transient tmpfs stayed attached in the scratch dir");
}

#[test]
fn first_existing_image_wins() {
    let env = Env::new(true);
    let absent = "0".repeat(64);
    let o = env.setup_root(&format!("composefs=?{absent} composefs=?{}", env.hex), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("composefs=?{absent}: image not present")), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn nothing_to_do_without_the_argument() {
    let env = Env::new(true);
    let before = mounts_under(&env.sysroot());
    let o = env.setup_root("root=/dev/vda ro quiet composefs -- composefs=?0", "");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to do"));
    assert_eq!(mounts_under(&env.sysroot()), before);
}

#[test]
fn failures_leave_sysroot_as_it_was() {
    let env = Env::new(true);
    let h = env.hex.clone();
    // without `?` an image must carry fs-verity (this kernel has none)
    env.refused(&format!("composefs={h}"), "", "a verified boot needs it (composefs=?");
    env.refused(&format!("composefs=?{}", "1".repeat(64)), "", "no composefs image found: tried");
    env.refused("composefs=?abc", "", "kernel command line: composefs=?abc: a digest has 64");
    env.refused(&format!("composefs.digest=?v1-sha512-12:{}", "a".repeat(128)), "", "no composefs image found");
    env.refused(&format!("composefs=?{h}"), "etc = bind\n", "config:1: etc = \"bind\"");
    // an image without /etc cannot get an /etc overlay: the new root is detached again
    let src = env.dir.path().join("src-noetc");
    std::fs::create_dir_all(src.join("usr")).unwrap();
    let arg =
        ok(Command::new(BIN).arg("deploy-root").arg("--from-dir").arg(&src).arg(env.sysroot()).arg("--no-verity"));
    env.refused(arg.trim(), "", "/etc: the image's /etc: No such file or directory");
    // one byte of the image changed: the userspace digest no longer matches its name
    let img = env.sysroot().join("composefs/images").join(&h);
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&img, &bytes).unwrap();
    env.refused(&format!("composefs=?{h}"), "", &format!("is not the {h} the kernel command line names"));
}

#[test]
fn read_only_physical_root_needs_rw_for_the_state() {
    let env = Env::new(true);
    std::fs::remove_dir_all(env.state()).unwrap();
    ok(Command::new("mount").arg("-o").arg("remount,ro").arg(env.sysroot()));
    env.refused(&format!("composefs=?{}", env.hex), "", "add rw to the kernel command line");
    // with nothing to write it boots
    let o = env.setup_root(&format!("composefs=?{}", env.hex), "etc = ro\nvar = ro\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The documented OCI recipe (docs/boot.md): an OCI image made and unpacked by umoci, then
/// deploy-root on the unpacked tree; setup-root mounts it with the image's files.
#[test]
fn oci_image_through_umoci_unpack() {
    let env = Env::new(true);
    let p = env.dir.path();
    let layout = p.join("oci");
    let ins = p.join("ins");
    std::fs::create_dir_all(ins.join("etc")).unwrap();
    std::fs::create_dir_all(ins.join("usr/bin")).unwrap();
    std::fs::write(ins.join("etc/os-release"), "ID=oci-test\n").unwrap();
    std::fs::write(ins.join("usr/bin/tool"), vec![7u8; 5000]).unwrap();
    let image = format!("{}:v1", layout.display());
    ok(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    ok(Command::new("umoci").args(["new", "--image", &image]));
    for (src, dst) in [("etc", "/etc"), ("usr", "/usr")] {
        ok(Command::new("umoci").args(["insert", "--image", &image]).arg(ins.join(src)).arg(dst));
    }
    let rootfs = p.join("rootfs");
    ok(Command::new("umoci").args(["raw", "unpack", "--image", &image]).arg(&rootfs));
    std::fs::create_dir_all(rootfs.join("sysroot")).unwrap();
    let arg =
        ok(Command::new(BIN).arg("deploy-root").arg("--from-dir").arg(&rootfs).arg(env.sysroot()).arg("--no-verity"));
    let o = env.setup_root(arg.trim(), "var = ro\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sr = env.sysroot();
    assert_eq!(std::fs::read_to_string(sr.join("etc/os-release")).unwrap(), "ID=oci-test\n");
    assert_eq!(std::fs::read(sr.join("usr/bin/tool")).unwrap(), vec![7u8; 5000]);
}

/// Installed setuid-root, cfsmount offers only mount/umount to other users: setup-root and
/// deploy-root are refused before they read anything.
#[test]
fn refused_in_privileged_helper_mode() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new(true);
    let dir = env.dir.path().join("suid");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("cfsmount");
    std::fs::copy(BIN, &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let before = mounts_under(&env.sysroot());
    for args in [
        vec!["setup-root".to_string(), "--sysroot".into(), env.sysroot().display().to_string()],
        vec!["deploy-root".into(), "--from-dir".into(), "/etc".into(), env.dir.path().join("x").display().to_string()],
    ] {
        let o = run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(&args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("only `mount` and `umount` are available to unprivileged callers"), "{err}");
    }
    assert_eq!(mounts_under(&env.sysroot()), before);
    assert!(!env.dir.path().join("x").exists());
}

/// bootc keeps one /var for all deployments (state/os/default/var) and links each deployment's
/// var to it; the link is followed inside the physical root, an absolute one included.
#[test]
fn shared_var_through_a_symlink() {
    let env = Env::new(true);
    let shared = env.sysroot().join("state/os/default/var");
    std::fs::create_dir_all(shared.join("lib")).unwrap();
    std::fs::write(shared.join("lib/shared-marker"), "shared").unwrap();
    std::fs::remove_dir(env.state().join("var")).unwrap();
    std::os::unix::fs::symlink("/state/os/default/var", env.state().join("var")).unwrap();
    let o = env.setup_root(&format!("composefs=?{}", env.hex), "");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(env.sysroot().join("var/lib/shared-marker")).unwrap(), "shared");
}
