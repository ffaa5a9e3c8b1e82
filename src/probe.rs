//! What this machine offers cfsmount: the cheap, side-effect-free probes behind `cfsmount doctor`
//! (kernel, sandbox layers, loop, EROFS, overlay data-only lowers, idmapped mounts, fs-verity).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use crate::sandbox::{sandbox_line, KernelSupport, LANDLOCK_KNOWN_ABI};

/// Lines of the `cfsmount doctor` report.
pub(crate) fn report() -> Vec<String> {
    let mut l = Vec::new();
    let uname = rustix::system::uname();
    l.push(format!("kernel: {} {}", uname.release().to_string_lossy(), uname.machine().to_string_lossy()));

    let s = KernelSupport::probe();
    match &s.landlock_abi {
        Ok(v) if *v > LANDLOCK_KNOWN_ABI => l.push(format!(
            "landlock: ABI {v} (this build handles rights up to ABI {LANDLOCK_KNOWN_ABI}; newer rights stay unhandled)"
        )),
        Ok(v) => l.push(format!("landlock: ABI {v}")),
        Err(e) => l.push(format!("landlock: no: {e}")),
    }
    match &s.seccomp {
        Ok(()) => l.push(format!(
            "seccomp: filter mode with KILL_PROCESS; policy compiled for {}: {}",
            std::env::consts::ARCH,
            if s.policy_compiled { "yes" } else { "no" }
        )),
        Err(e) => l.push(format!("seccomp: no: {e}")),
    }
    l.push(sandbox_line(&s));
    for (name, r) in probe_mount_features() {
        l.push(format!("{name}: {r}"));
    }
    l.push(format!("fs-verity: {}", verity_report()));
    l
}

/// Mount-related features. As root, fsopen/fsconfig probes that never create a mount; otherwise
/// what /proc and /dev show.
fn probe_mount_features() -> Vec<(&'static str, String)> {
    use rustix::mount::{fsconfig_create, fsconfig_set_string, fsopen, FsOpenFlags};
    let mut r = Vec::new();
    let root = rustix::process::geteuid().is_root();
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let listed = |fs: &str| filesystems.lines().any(|l| l.split_whitespace().last() == Some(fs));

    r.push((
        "loop-control",
        match rustix::fs::stat("/dev/loop-control") {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice => {
                "yes (/dev/loop-control)".to_string()
            }
            Ok(_) => "no (/dev/loop-control is not a character device)".to_string(),
            Err(e) => format!("no (/dev/loop-control: {e})"),
        },
    ));

    let erofs = if root { fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC).ok() } else { None };
    r.push((
        "erofs",
        match (&erofs, listed("erofs")) {
            (Some(_), _) | (None, true) => "yes".to_string(),
            (None, false) if root => "no (fsopen(\"erofs\") failed)".to_string(),
            (None, false) => {
                "not listed in /proc/filesystems (module may load on demand; run as root to probe)".to_string()
            }
        },
    ));
    r.push((
        "erofs file-backed",
        match erofs {
            None => "unknown (needs root and EROFS)".to_string(),
            Some(fsfd) => {
                // A 4 KiB zero file is not an EROFS image: a kernel with file-backed mounts rejects
                // its superblock (EINVAL); one without insists on a block device (ENOTBLK).
                // Nothing is mounted either way. The file is an unnamed O_TMPFILE on a disk
                // filesystem (tmpfs/memfd pages cannot back EROFS), so nothing is left behind.
                let probe = || -> io::Result<io::Result<()>> {
                    let tmp = rustix::fs::open(
                        "/var/tmp",
                        rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::from_raw_mode(0o600),
                    )?;
                    rustix::fs::ftruncate(&tmp, 4096)?;
                    fsconfig_set_string(&fsfd, "source", format!("/proc/self/fd/{}", tmp.as_raw_fd()))?;
                    Ok(fsconfig_create(&fsfd).map_err(io::Error::from))
                };
                match probe() {
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTBLK) => {
                        "no (needs a loop device; or /var/tmp is on a filesystem EROFS cannot read from)".to_string()
                    }
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => "yes".to_string(),
                    Ok(Err(e)) => format!("unknown ({e})"),
                    Ok(Ok(())) => "yes (unexpectedly accepted an empty file)".to_string(),
                    Err(e) => format!("unknown ({e})"),
                }
            }
        },
    ));

    let overlay = if root { fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).ok() } else { None };
    r.push((
        "overlay data-only lowers",
        match overlay {
            None if root => "no (fsopen(\"overlay\") failed)".to_string(),
            None => format!(
                "overlay {}; run as root to probe lowerdir+/datadir+",
                if listed("overlay") { "listed" } else { "not listed" }
            ),
            Some(fsfd) => {
                let lower = fsconfig_set_string(&fsfd, "lowerdir+", "/").is_ok();
                let data = fsconfig_set_string(&fsfd, "datadir+", "/").is_ok();
                match (lower, data) {
                    (true, true) => "yes (lowerdir+/datadir+)".to_string(),
                    (true, false) => {
                        "lowerdir+ only; data-only lowers via the \"::\" lowerdir syntax (Linux 6.5+)".to_string()
                    }
                    _ => "no lowerdir+/datadir+; try the \"::\" lowerdir syntax (Linux 6.5+)".to_string(),
                }
            }
        },
    ));

    r.push((
        "idmapped mounts",
        match crate::sys::sandbox::mount_setattr_available() {
            Ok(()) => "mount_setattr available (MOUNT_ATTR_IDMAP; the filesystem must support idmaps)".to_string(),
            Err(e) => format!("no (mount_setattr: {e})"),
        },
    ));
    r
}

fn verity_report() -> String {
    let mut built = Vec::new();
    for fs in ["ext4", "f2fs", "btrfs"] {
        if std::path::Path::new(&format!("/sys/fs/{fs}/features/verity")).exists() {
            built.push(fs);
        }
    }
    let exe = match File::open("/proc/self/exe") {
        Ok(f) => match crate::fsverity::measure(f.as_fd()) {
            Ok(_) | Err(crate::fsverity::VerityError::NotEnabled) => "supported on the filesystem of this binary",
            Err(crate::fsverity::VerityError::Unsupported) => "not supported on the filesystem of this binary",
            Err(_) => "unknown for the filesystem of this binary",
        },
        Err(_) => "unknown",
    };
    if built.is_empty() {
        format!("no filesystem advertises verity in /sys/fs/*/features; {exe}")
    } else {
        format!("advertised by {}; {exe}", built.join(", "))
    }
}
