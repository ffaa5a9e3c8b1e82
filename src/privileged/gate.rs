//! Caller authorization for the privileged helper: every path the caller names is opened with the
//! caller's own credentials (effective uid/gid + its groups) and pinned by fd; option strings, target
//! directories, idmap user namespaces, per-user limits and unmount rights are checked here.
//!
//! In unprivileged mode (plain root or plain user) every function still pins by fd but skips the
//! policy checks that only make sense for a setuid helper.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags};

use super::{caller, caller_limits, policy, privileged, set_undumpable};
use crate::sys::helper as sys;

/// Longest path argument accepted in privileged mode.
pub const MAX_PATH_ARG: usize = 1024;
/// Longest `-o` option string accepted in privileged mode.
pub const MAX_OPTION_STRING: usize = 4096;
/// Default state directory (one JSON record per mount, written by the mount engine).
pub const STATE_DIR: &str = "/run/cfsmount";

/// Runs `f` as the caller: the effective uid/gid (and with them fsuid/fsgid) are switched to the
/// caller's real ids — the supplementary groups are still the caller's from exec time — while the
/// real and saved ids stay 0, then switched back. Inside `f` every permission check is the
/// caller's: file access (the kernel also clears the effective capabilities while euid is not 0),
/// ptrace-mode checks such as opening /proc/PID/ns/* (ownership of user namespaces counts as for
/// the caller itself). The caller still cannot signal or ptrace us (our real/saved ids are 0).
/// In unprivileged mode `f` simply runs.
pub fn as_caller<T>(f: impl FnOnce() -> T) -> Result<T, HelperError> {
    if !privileged() {
        return Ok(f());
    }
    let c = caller();
    let switched = sys::set_effective_ids(c.uid, c.gid).is_ok()
        && sys::getresuid() == (0, c.uid, 0)
        && sys::getresgid().1 == c.gid
        && sys::current_fsuid() == c.uid
        && sys::current_fsgid() == c.gid;
    let out = if switched { Some(f()) } else { None };
    let restored = sys::set_effective_ids(0, 0).is_ok();
    let back = restored && sys::getresuid() == (0, 0, 0) && sys::getresgid() == (0, 0, 0) && sys::current_fsuid() == 0;
    // Every credential change resets dumpability to fs.suid_dumpable.
    let dump = set_undumpable();
    if !back {
        // Cannot happen (real and saved ids are 0); if it does, stop rather than run on with odd ids.
        eprintln!("cfsmount: could not restore root ids after acting as the caller");
        std::process::exit(1);
    }
    dump.map_err(|e| HelperError::Credentials(e.to_string()))?;
    out.ok_or_else(|| HelperError::Credentials(format!("could not switch to uid/gid {}/{}", c.uid, c.gid)))
}

fn open_as_caller(what: &'static str, path: &Path, flags: OFlags) -> Result<OwnedFd, HelperError> {
    check_path_arg(what, path.as_os_str())?;
    as_caller(|| rustix::fs::open(path, flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty()))?
        .map_err(|e| HelperError::Open { what, path: path.to_path_buf(), errno: e })
}

/// Validates a path argument (source, basedir, target, upper/work, idmap path). In privileged
/// mode: non-empty, at most [`MAX_PATH_ARG`] bytes, no control characters, no leading `-`, and
/// none of `,` `:` `\` `=` (which would change meaning inside a mount option string).
pub fn check_path_arg(what: &'static str, p: &OsStr) -> Result<(), HelperError> {
    check_path_arg_as(what, p, privileged())
}

fn check_path_arg_as(what: &'static str, p: &OsStr, strict: bool) -> Result<(), HelperError> {
    let b = p.as_bytes();
    let bad = |reason: &str| HelperError::BadArgument {
        what,
        value: p.to_string_lossy().into_owned(),
        reason: reason.into(),
    };
    if b.is_empty() {
        return Err(bad("empty"));
    }
    if b.contains(&0) {
        return Err(bad("contains NUL"));
    }
    if !strict {
        return Ok(());
    }
    if b.len() > MAX_PATH_ARG {
        return Err(bad("too long"));
    }
    if b[0] == b'-' {
        return Err(bad("starts with '-'"));
    }
    if let Some(c) = b.iter().find(|c| c.is_ascii_control()) {
        return Err(bad(&format!("contains control character 0x{c:02x}")));
    }
    if let Some(c) = b.iter().find(|c| b",:\\=".contains(c)) {
        return Err(bad(&format!("contains '{}'", *c as char)));
    }
    Ok(())
}

/// Options a privileged caller may pass in a `mount.composefs -o` string.
const ALLOWED_OPTIONS: &[&str] = &[
    "basedir",
    "digest",
    "verity",
    "tryverity",
    "ro",
    "rw",
    "upperdir",
    "workdir",
    "idmap",
    "nosuid",
    "nodev",
    "noexec",
];

/// Validates a whole `-o` option string before it is split (privileged mode): length, no control
/// characters, no empty options, only known option names; `suid`, `dev`, `exec`-style
/// re-enabling and anything unknown are refused. Values are checked later as paths.
pub fn check_option_string(opts: &str) -> Result<(), HelperError> {
    check_option_string_as(opts, privileged())
}

fn check_option_string_as(opts: &str, strict: bool) -> Result<(), HelperError> {
    let bad = |reason: String| HelperError::BadOption { option: truncate(opts), reason };
    if opts.len() > MAX_OPTION_STRING {
        return Err(bad(format!("longer than {MAX_OPTION_STRING} bytes")));
    }
    if !strict {
        return Ok(());
    }
    if let Some(c) = opts.bytes().find(|c| c.is_ascii_control()) {
        return Err(bad(format!("contains control character 0x{c:02x}")));
    }
    for opt in split_options(opts) {
        let name = opt.split('=').next().unwrap_or("");
        if opt.is_empty() {
            return Err(bad("empty option (\",,\" or trailing comma)".into()));
        }
        if opt.starts_with('-') {
            return Err(bad(format!("option {opt:?} starts with '-'")));
        }
        if ["suid", "dev", "exec"].contains(&name) {
            return Err(bad(format!(
                "{name:?} is not allowed for unprivileged callers (mounts are always nosuid,nodev)"
            )));
        }
        if !ALLOWED_OPTIONS.contains(&name) {
            return Err(bad(format!("unknown option {name:?}")));
        }
    }
    Ok(())
}

/// Splits at unescaped commas (`\,` stays inside a value, as the reference helper does).
fn split_options(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().unwrap_or(&mut String::new()).push(n);
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(l) = out.last_mut() {
                    l.push(c)
                }
            }
        }
    }
    out
}

fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A source file (image, TOC or dumpfile) the caller may read, pinned.
#[derive(Debug)]
pub struct Source {
    /// In privileged mode: a sealed memfd holding a private copy (the caller cannot change it
    /// after validation); otherwise the opened file itself.
    pub fd: OwnedFd,
    pub size: u64,
}

/// Opens a source as the caller: must be a regular file, within the caller's `max_image_size`.
/// In privileged mode the content is copied into a sealed memfd (F_SEAL_WRITE|GROW|SHRINK|SEAL)
/// so that what is validated, measured and mounted can no longer be modified by the caller.
pub fn open_source(path: &Path) -> Result<Source, HelperError> {
    let fd = open_as_caller("source", path, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| HelperError::Open { what: "source", path: path.into(), errno: e })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(HelperError::Refused { what: "source", path: path.into(), reason: "not a regular file".into() });
    }
    let size = st.st_size as u64;
    if !privileged() {
        return Ok(Source { fd, size });
    }
    let max = caller_limits().map(|l| l.max_image_size).unwrap_or(0);
    if size > max {
        return Err(HelperError::Limit { what: "image size", value: size, limit: max });
    }
    let memfd = rustix::fs::memfd_create(
        "cfsmount-source",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .map_err(|e| HelperError::Io { what: "memfd_create", errno: e })?;
    let mut src = File::from(fd);
    let mut dst = File::from(memfd);
    let copied = std::io::copy(&mut (&mut src).take(max + 1), &mut dst).map_err(|e| HelperError::Io {
        what: "copying the source",
        errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    })?;
    if copied > max {
        return Err(HelperError::Limit { what: "image size", value: copied, limit: max });
    }
    let memfd = OwnedFd::from(dst);
    use rustix::fs::SealFlags;
    rustix::fs::fcntl_add_seals(&memfd, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)
        .map_err(|e| HelperError::Io { what: "sealing the source copy", errno: e })?;
    rustix::fs::seek(&memfd, rustix::fs::SeekFrom::Start(0)).map_err(|e| HelperError::Io { what: "seek", errno: e })?;
    Ok(Source { fd: memfd, size: copied })
}

/// Checks an image's expected fs-verity digest (`--digest`/`digest=`). In privileged mode the
/// image fd is the helper's sealed private copy (a memfd, which cannot carry fs-verity), so the
/// digest is computed in userspace over that copy — which can no longer change, so this proves
/// what gets mounted. Otherwise the kernel's measurement of the file is required.
pub fn check_source_digest(fd: BorrowedFd<'_>, want: &[u8; 32]) -> Result<(), HelperError> {
    if !privileged() {
        return crate::fsverity::check_digest(fd, want)
            .map_err(|e| HelperError::BadImage { reason: format!("digest check: {e}") });
    }
    let f = File::from(rustix::io::dup(fd).map_err(|e| HelperError::Io { what: "dup", errno: e })?);
    let got = crate::fsverity::digest_file(&f).map_err(|e| HelperError::Io {
        what: "fs-verity digest of the image copy",
        errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    })?;
    if &got != want {
        let hex = |d: &[u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        return Err(HelperError::BadImage {
            reason: format!("fs-verity digest {} does not match the expected {}", hex(&got), hex(want)),
        });
    }
    Ok(())
}

/// EROFS superblock facts checked before an image is mounted for an unprivileged caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    pub inodes: u64,
    pub block_size: u32,
}

/// Checks an image fd: an EROFS superblock with a sane block size and at most the caller's
/// `max_entries` inodes (the kernel parses the rest; images from unprivileged callers are also
/// copied into a sealed memfd by [`open_source`] so they cannot change afterwards).
pub fn check_image(fd: BorrowedFd<'_>) -> Result<ImageFacts, HelperError> {
    let mut sb = [0u8; 128];
    let n = rustix::io::pread(fd, &mut sb, 1024)
        .map_err(|e| HelperError::Io { what: "reading the image superblock", errno: e })?;
    let bad = |reason: &str| HelperError::BadImage { reason: reason.to_string() };
    if n < sb.len() {
        return Err(bad("shorter than an EROFS superblock"));
    }
    let magic = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
    if magic != 0xE0F5_E1E2 {
        return Err(bad("no EROFS superblock magic at offset 1024"));
    }
    let blkszbits = sb[12];
    if !(9..=16).contains(&blkszbits) {
        return Err(bad("unsupported block size"));
    }
    let mut ino = [0u8; 8];
    ino.copy_from_slice(&sb[16..24]);
    let inodes = u64::from_le_bytes(ino);
    if privileged() {
        let max = caller_limits().map(|l| l.max_entries).unwrap_or(0);
        if inodes > max {
            return Err(HelperError::Limit { what: "image entries", value: inodes, limit: max });
        }
    }
    if privileged() {
        check_image_content(fd, inodes)?;
    }
    Ok(ImageFacts { inodes, block_size: 1 << blkszbits })
}

/// Privileged mode: parses the whole image with the hostile-input reader (which refuses
/// unexpected `trusted.overlay.*` xattrs and malformed redirect/metacopy xattrs; escaped
/// `trusted.overlay.overlay.*` user xattrs come back unescaped, i.e. inert) and refuses
/// device nodes (other than 0/0 whiteouts) and redirect payloads with `.`/`..`/empty components.
fn check_image_content(fd: BorrowedFd<'_>, inodes: u64) -> Result<(), HelperError> {
    let limits = caller_limits().ok_or_else(|| HelperError::Policy("no policy loaded".into()))?;
    let size = rustix::fs::fstat(fd).map_err(|e| HelperError::Io { what: "fstat image", errno: e })?.st_size as u64;
    if size > limits.max_image_size {
        return Err(HelperError::Limit { what: "image size", value: size, limit: limits.max_image_size });
    }
    let src = Source { fd: rustix::io::dup(fd).map_err(|e| HelperError::Io { what: "dup", errno: e })?, size };
    let bytes = read_all(&src, limits.max_image_size)?;
    let mut rl = crate::erofs::reader::ReadLimits::default();
    rl.tree.max_entries =
        usize::try_from(limits.max_entries.min(inodes.saturating_mul(2) + 1024)).unwrap_or(usize::MAX);
    let (tree, _) = crate::erofs::reader::read_image_with(&bytes, &rl)
        .map_err(|e| HelperError::BadImage { reason: e.to_string() })?;
    if tree.len() as u64 > limits.max_entries {
        return Err(HelperError::Limit { what: "image entries", value: tree.len() as u64, limit: limits.max_entries });
    }
    for (i, node) in tree.nodes.iter().enumerate() {
        let ino = &node.entry.inode;
        let ft = ino.mode & 0o170000;
        let path = || crate::tree::show(&tree.path_of(i as crate::tree::NodeId));
        if (ft == 0o020000 && ino.rdev != 0) || ft == 0o060000 {
            return Err(HelperError::BadImage {
                reason: format!("{}: device node (not allowed for unprivileged callers)", path()),
            });
        }
        if ino.is_reg() {
            if let Some(p) = &node.entry.payload {
                let bad = p
                    .split(|c| *c == b'/')
                    .enumerate()
                    .any(|(k, c)| (c.is_empty() && k > 0) || c == b"." || c == b"..");
                if bad || p.is_empty() {
                    return Err(HelperError::BadImage {
                        reason: format!(
                            "{}: overlay redirect {:?} has empty, '.' or '..' components",
                            path(),
                            String::from_utf8_lossy(p)
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

fn fstat_as(what: &'static str, path: &Path, fd: BorrowedFd<'_>) -> Result<rustix::fs::Stat, HelperError> {
    rustix::fs::fstat(fd).map_err(|e| HelperError::Open { what, path: path.into(), errno: e })
}

/// Opens a basedir (object directory) as the caller: a directory the caller can read. In
/// privileged mode it must also be owned by the caller and fs.protected_hardlinks must be on, so
/// that overlay redirects inside the image can only ever reach files the caller put there.
pub fn open_basedir(path: &Path) -> Result<OwnedFd, HelperError> {
    let fd = open_as_caller("basedir", path, OFlags::RDONLY | OFlags::DIRECTORY)?;
    if privileged() {
        let st = fstat_as("basedir", path, fd.as_fd())?;
        let c = caller();
        if st.st_uid != c.uid {
            return Err(HelperError::Refused {
                what: "basedir",
                path: path.into(),
                reason: format!("owned by uid {}, not by the caller (uid {})", st.st_uid, c.uid),
            });
        }
        let ph = std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").unwrap_or_default();
        if ph.trim() != "1" {
            return Err(HelperError::Refused {
                what: "basedir",
                path: path.into(),
                reason: "fs.protected_hardlinks is not 1 (callers could hardlink foreign files into it)".into(),
            });
        }
    }
    Ok(fd)
}

/// Opens `--upperdir`/`--workdir` as the caller: directories owned by the caller, on the same
/// filesystem, allowed by the policy. Returns (upper, work).
pub fn open_upper(upper: &Path, work: &Path) -> Result<(OwnedFd, OwnedFd), HelperError> {
    if privileged() && !policy().is_some_and(|p| p.features.upperdir) {
        return Err(HelperError::Policy("writable overlays (--upperdir) are disabled".into()));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
    let u = open_as_caller("upperdir", upper, flags)?;
    let w = open_as_caller("workdir", work, flags)?;
    let su = fstat_as("upperdir", upper, u.as_fd())?;
    let sw = fstat_as("workdir", work, w.as_fd())?;
    if privileged() {
        let c = caller();
        for (what, p, st) in [("upperdir", upper, &su), ("workdir", work, &sw)] {
            if st.st_uid != c.uid {
                return Err(HelperError::Refused { what, path: p.into(), reason: "not owned by the caller".into() });
            }
        }
    }
    if su.st_dev != sw.st_dev {
        return Err(HelperError::Refused {
            what: "workdir",
            path: work.into(),
            reason: "not on the upperdir's filesystem".into(),
        });
    }
    Ok((u, w))
}

/// Opens the mount target as the caller with O_PATH|O_NOFOLLOW|O_DIRECTORY (a symlink in the
/// last component is refused, not followed) and checks, on that pinned inode:
/// owned by the caller, or writable by the caller and neither it nor its parent sticky;
/// on a filesystem type the policy allows (never procfs/sysfs/...).
/// The mount must then be attached with [`attach_at_target`] onto this very fd.
pub fn open_target(path: &Path) -> Result<OwnedFd, HelperError> {
    if privileged() && !policy().is_some_and(|p| p.features.attach_at_target) {
        return Err(HelperError::Policy("attaching at a target is disabled; use --fd-out".into()));
    }
    let fd = open_as_caller("target", path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY)?;
    if !privileged() {
        return Ok(fd);
    }
    let refuse = |reason: String| HelperError::Refused { what: "target", path: path.into(), reason };
    let c = caller();
    let st = fstat_as("target", path, fd.as_fd())?;
    let sticky = |m: u32| m & 0o1000 != 0;
    if st.st_uid != c.uid {
        let writable = as_caller(|| sys::may_write_fd(fd.as_fd()))?;
        if writable.is_err() {
            return Err(refuse(format!("owned by uid {} and not writable by the caller (uid {})", st.st_uid, c.uid)));
        }
        if sticky(st.st_mode) {
            return Err(refuse(format!("sticky directory owned by uid {}", st.st_uid)));
        }
        let parent = as_caller(|| {
            rustix::fs::openat(&fd, "..", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        })?
        .map_err(|e| HelperError::Open { what: "target parent", path: path.into(), errno: e })?;
        let ps = fstat_as("target parent", path, parent.as_fd())?;
        if sticky(ps.st_mode) {
            return Err(refuse(format!("owned by uid {} inside a sticky directory", st.st_uid)));
        }
    }
    let sfs =
        rustix::fs::fstatfs(&fd).map_err(|e| HelperError::Open { what: "target", path: path.into(), errno: e })?;
    let magic = sfs.f_type as u64 & 0xffff_ffff;
    let allowed = policy().and_then(|p| p.target_fs_name(magic)).is_some();
    if !allowed {
        return Err(refuse(format!("on a filesystem type (magic 0x{magic:x}) the helper policy does not allow")));
    }
    Ok(fd)
}

/// Forces `nosuid,nodev` (and `ro` unless `writable`) on a detached mount, for every caller
/// when privileged; a no-op otherwise.
pub fn enforce_mount_attrs(mnt: BorrowedFd<'_>, writable: bool) -> Result<(), HelperError> {
    if !privileged() {
        return Ok(());
    }
    use rustix::fs::StatVfsMountFlags as F;
    let ok = |vfs: &rustix::fs::StatVfs| {
        vfs.f_flag.contains(F::NOSUID | F::NODEV) && (writable || vfs.f_flag.contains(F::RDONLY))
    };
    let vfs = rustix::fs::fstatvfs(mnt).map_err(|e| HelperError::Io { what: "fstatvfs on the new mount", errno: e })?;
    if ok(&vfs) {
        // fsmount already set them (the usual case): no mount_setattr needed, which also keeps
        // kernels without mount_setattr (5.2-5.11) usable.
        return Ok(());
    }
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if !writable {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr_flags(mnt, set, 0)
        .map_err(|e| HelperError::Io { what: "mount_setattr(nosuid,nodev)", errno: e })?;
    let vfs = rustix::fs::fstatvfs(mnt).map_err(|e| HelperError::Io { what: "fstatvfs on the new mount", errno: e })?;
    if !ok(&vfs) {
        return Err(HelperError::Io {
            what: "verifying nosuid,nodev on the new mount",
            errno: rustix::io::Errno::PERM,
        });
    }
    Ok(())
}

/// Attaches the detached mount `mnt` onto the pinned target inode (move_mount with
/// MOVE_MOUNT_F_EMPTY_PATH|MOVE_MOUNT_T_EMPTY_PATH): no path is resolved again, so a target
/// renamed or swapped for a symlink after [`open_target`] cannot redirect the mount.
/// Enforces nosuid/nodev(/ro) first.
pub fn attach_at_target(mnt: BorrowedFd<'_>, target: BorrowedFd<'_>, writable: bool) -> Result<(), HelperError> {
    enforce_mount_attrs(mnt, writable)?;
    rustix::mount::move_mount(
        mnt,
        "",
        target,
        "",
        rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | rustix::mount::MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| HelperError::Io { what: "move_mount onto the target", errno: e })
}

/// One id-map extent: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdExtent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// Which map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

/// Parses a /proc/PID/{uid,gid}_map text.
pub fn parse_id_map(text: &[u8]) -> Result<Vec<IdExtent>, HelperError> {
    let text = std::str::from_utf8(text).map_err(|_| HelperError::Idmap("id map is not text".into()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<u32> = line
            .split_whitespace()
            .map(|x| x.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| HelperError::Idmap(format!("bad id map line {line:?}")))?;
        if f.len() != 3 {
            return Err(HelperError::Idmap(format!("bad id map line {line:?}")));
        }
        out.push(IdExtent { inside: f[0], outside: f[1], count: f[2] });
    }
    Ok(out)
}

/// Reads the caller's subordinate id ranges from /etc/subuid or /etc/subgid (entries by login
/// name or by numeric id). The file must be root-owned and not group/world-writable.
pub fn subid_ranges(kind: IdKind, uid: u32, name: Option<&str>) -> Result<Vec<(u64, u64)>, HelperError> {
    subid_ranges_from(
        Path::new(match kind {
            IdKind::Uid => "/etc/subuid",
            IdKind::Gid => "/etc/subgid",
        }),
        uid,
        name,
    )
}

fn subid_ranges_from(path: &Path, uid: u32, name: Option<&str>) -> Result<Vec<(u64, u64)>, HelperError> {
    use std::os::unix::fs::MetadataExt;
    let text = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HelperError::Idmap(format!("{}: {e}", path.display()))),
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 || !m.is_file() => {
            return Err(HelperError::Idmap(format!("{}: not a root-owned, non-writable regular file", path.display())))
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|e| HelperError::Idmap(format!("{}: {e}", path.display())))?,
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
pub fn check_id_map(kind: IdKind, map: &[IdExtent], own: u32, ranges: &[(u64, u64)]) -> Result<(), HelperError> {
    if map.is_empty() {
        return Err(HelperError::Idmap(format!("empty {kind:?} map")));
    }
    for e in map {
        let (o, n) = (e.outside as u64, e.count as u64);
        if n == 0 {
            return Err(HelperError::Idmap(format!("{kind:?} map extent with count 0")));
        }
        let own_ok = o == own as u64 && n == 1;
        let sub_ok = ranges.iter().any(|&(s, c)| o >= s && o + n <= s + c);
        if !own_ok && !sub_ok {
            return Err(HelperError::Idmap(format!(
                "{kind:?} map maps outside ids {o}..{} which are neither the caller's own id ({own}) nor in its /etc/sub{}id ranges",
                o + n - 1,
                if kind == IdKind::Uid { "u" } else { "g" }
            )));
        }
    }
    Ok(())
}

/// Checks `--uidmap/--gidmap` specs (for a user namespace cfsmount creates itself) against the
/// caller's own ids and subordinate ranges. No-op when unprivileged.
pub fn check_id_maps(uid_map: &[IdExtent], gid_map: &[IdExtent]) -> Result<(), HelperError> {
    if !privileged() {
        return Ok(());
    }
    if !policy().is_some_and(|p| p.features.idmap) {
        return Err(HelperError::Policy("idmapped mounts are disabled".into()));
    }
    let c = caller();
    check_id_map(IdKind::Uid, uid_map, c.uid, &subid_ranges(IdKind::Uid, c.uid, c.name.as_deref())?)?;
    check_id_map(IdKind::Gid, gid_map, c.gid, &subid_ranges(IdKind::Gid, c.uid, c.name.as_deref())?)?;
    Ok(())
}

/// Opens an `--idmap` user namespace (e.g. /proc/PID/ns/user) as the caller and checks: it is a
/// user namespace (NS_GET_NSTYPE), owned by the caller (NS_GET_OWNER_UID), not the initial/our
/// own namespace, a direct child of ours, and its uid/gid maps (read from inside the namespace
/// by a short-lived forked child) only use the caller's own ids or its subordinate ranges.
/// Returns the pinned namespace fd to pass to mount_setattr(MOUNT_ATTR_IDMAP).
pub fn open_userns(path: &Path) -> Result<OwnedFd, HelperError> {
    let fd = open_as_caller("idmap user namespace", path, OFlags::RDONLY)?;
    let idm = |r: String| HelperError::Idmap(format!("{}: {r}", path.display()));
    let ty = sys::ns_get_nstype(fd.as_fd()).map_err(|_| idm("not a namespace file".into()))?;
    if ty != libc::CLONE_NEWUSER {
        return Err(idm("not a user namespace".into()));
    }
    if !privileged() {
        return Ok(fd);
    }
    if !policy().is_some_and(|p| p.features.idmap) {
        return Err(HelperError::Policy("idmapped mounts are disabled".into()));
    }
    let c = caller();
    let ours = rustix::fs::open("/proc/self/ns/user", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| HelperError::Io { what: "opening /proc/self/ns/user", errno: e })?;
    let same = |a: BorrowedFd<'_>, b: BorrowedFd<'_>| -> Result<bool, HelperError> {
        let (x, y) = (fstat_as("ns", path, a)?, fstat_as("ns", path, b)?);
        Ok(x.st_dev == y.st_dev && x.st_ino == y.st_ino)
    };
    if same(fd.as_fd(), ours.as_fd())? {
        return Err(idm("is the initial user namespace".into()));
    }
    let owner = sys::ns_get_owner_uid(fd.as_fd()).map_err(|e| idm(format!("NS_GET_OWNER_UID: {e}")))?;
    if owner != c.uid {
        return Err(idm(format!("owned by uid {owner}, not by the caller (uid {})", c.uid)));
    }
    let parent = sys::ns_get_parent(fd.as_fd()).map_err(|e| idm(format!("NS_GET_PARENT: {e}")))?;
    if !same(parent.as_fd(), ours.as_fd())? {
        return Err(idm("nested user namespaces are not supported (its parent is not the initial namespace)".into()));
    }
    let (um, gm) = sys::read_userns_maps(fd.as_fd()).map_err(|e| idm(format!("reading its id maps: {e}")))?;
    let (um, gm) = (parse_id_map(&um)?, parse_id_map(&gm)?);
    check_id_map(IdKind::Uid, &um, c.uid, &subid_ranges(IdKind::Uid, c.uid, c.name.as_deref())?)
        .map_err(|e| idm(e.to_string()))?;
    check_id_map(IdKind::Gid, &gm, c.gid, &subid_ranges(IdKind::Gid, c.uid, c.name.as_deref())?)
        .map_err(|e| idm(e.to_string()))?;
    Ok(fd)
}

/// A mount record in the state directory (one JSON file per mount, root-owned): written by the
/// mount engine, read here for the per-user limits and umount authorization. Fields added over
/// time default when absent; the aliases read the first record format.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    /// statx mount id of the overlay (STATX_MNT_ID_UNIQUE when the kernel has it).
    #[serde(alias = "mnt_id")]
    pub mount_id: u64,
    /// Whether `mount_id` is the unique (never reused) id.
    #[serde(default)]
    pub mount_id_unique: bool,
    /// Where it was attached (None: handed out with --fd-out, or detached while still busy).
    #[serde(default)]
    pub target: Option<PathBuf>,
    /// Real uid of the caller.
    #[serde(alias = "caller_uid")]
    pub uid: u32,
    /// Loop devices used (empty for file-backed EROFS), one per layer that needed one.
    #[serde(default)]
    pub loop_devices: Vec<PathBuf>,
    /// Their disk sequence numbers (same order; empty on kernels without BLKGETDISKSEQ): how a
    /// record without a usable target is known to be live (see [`liveness`]).
    #[serde(default)]
    pub loop_diskseq: Vec<u64>,
    /// statx mount ids of the (detached) EROFS mounts, lowest layer first.
    #[serde(default)]
    pub erofs_mount_ids: Vec<u64>,
    /// The sources as given.
    #[serde(default)]
    pub sources: Vec<PathBuf>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
    /// Inode of the mount namespace the target was resolved in (`/proc/self/ns/mnt`).
    #[serde(default)]
    pub mnt_ns: Option<u64>,
}

/// Identity (nsfs inode) of our mount namespace.
pub fn own_mnt_ns() -> Option<u64> {
    rustix::fs::stat("/proc/self/ns/mnt").ok().map(|st| st.st_ino)
}

/// Whether a recorded mount still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    Dead,
    /// Cannot be told from here (a mount handed out without a loop device to watch).
    Unknown,
}

/// The liveness rule shared by the per-user limits and the pruning of stale records:
/// - attached at a target in OUR mount namespace: live while the target's mount id (statx, the
///   unique id where the kernel has it) is the recorded one;
/// - otherwise (`--fd-out`, or attached in another namespace): live while any of its loop
///   devices still carries the recorded disk sequence number — the EROFS superblock holds the
///   device, and AUTOCLEAR releases it when the last mount of that superblock is gone, wherever
///   the receiver attached it; a device configured again later has a new diskseq;
/// - no loop device to watch (file-backed EROFS, kernels before 5.15): unknown.
pub fn liveness(r: &MountRecord) -> Liveness {
    if let Some(t) = &r.target {
        if r.mnt_ns.is_some() && r.mnt_ns == own_mnt_ns() {
            let live = rustix::fs::open(t, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .ok()
                .and_then(|fd| sys::statx_mnt_id(fd.as_fd()).ok())
                .is_some_and(|(id, uniq)| id == r.mount_id && uniq == r.mount_id_unique);
            return if live { Liveness::Live } else { Liveness::Dead };
        }
    }
    if r.loop_devices.is_empty() || r.loop_diskseq.len() != r.loop_devices.len() {
        return Liveness::Unknown;
    }
    let any = r.loop_devices.iter().zip(&r.loop_diskseq).any(|(p, seq)| {
        crate::mount::loopdev::number_of(p).is_some_and(|n| crate::mount::loopdev::still_bound(n, *seq))
    });
    if any {
        Liveness::Live
    } else {
        Liveness::Dead
    }
}

/// Reads every record in `dir` that is a root-owned, non-writable regular JSON file. Records
/// that are foreign-owned or unparsable are ignored (never trusted).
pub fn read_records(dir: &Path) -> Vec<(PathBuf, MountRecord)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return out };
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 || !meta.is_dir() {
        return out;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for ent in rd.flatten() {
        let p = ent.path();
        if p.extension() != Some(OsStr::new("json")) {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.uid() != 0 || m.mode() & 0o022 != 0 || !m.is_file() || m.len() > 64 * 1024 {
            continue;
        }
        let Ok(text) = std::fs::read(&p) else { continue };
        if let Ok(r) = serde_json::from_slice::<MountRecord>(&text) {
            out.push((p, r));
        }
    }
    out
}

/// Whether a record counts against the limits: see [`liveness`]; unknown ones do not count.
fn record_live(r: &MountRecord) -> bool {
    liveness(r) == Liveness::Live
}

/// Checks the caller's per-user limits against the live records in the state directory before a
/// new mount (`needs_loop`: the new mount will hold a loop device). No-op when unprivileged.
pub fn check_mount_limits(state_dir: &Path, needs_loop: bool) -> Result<(), HelperError> {
    if !privileged() {
        return Ok(());
    }
    let c = caller();
    let limits = caller_limits().ok_or_else(|| HelperError::Policy("no policy loaded".into()))?;
    let mine: Vec<MountRecord> =
        read_records(state_dir).into_iter().map(|(_, r)| r).filter(|r| r.uid == c.uid && record_live(r)).collect();
    let mounts = mine.len() as u64;
    if mounts + 1 > limits.max_mounts as u64 {
        return Err(HelperError::Limit { what: "mounts", value: mounts + 1, limit: limits.max_mounts as u64 });
    }
    let loops = mine.iter().map(|r| r.loop_devices.len()).sum::<usize>() as u64;
    if needs_loop && loops + 1 > limits.max_loop_devices as u64 {
        return Err(HelperError::Limit {
            what: "loop devices",
            value: loops + 1,
            limit: limits.max_loop_devices as u64,
        });
    }
    Ok(())
}

/// Permission to unmount: the pinned root of the mount and the record that proves the caller
/// owns it.
#[derive(Debug)]
pub struct UmountGrant {
    /// O_PATH fd on the root of the mount to remove (use [`umount_pinned`]).
    pub target: OwnedFd,
    pub record_path: PathBuf,
    pub record: MountRecord,
}

/// Authorizes `cfsmount umount TARGET`: opens TARGET as the caller (O_PATH|O_NOFOLLOW), takes
/// the mount id of what is mounted there (statx), and finds the record with that mount id. In
/// privileged mode the record's uid must be the caller's. Matching is by mount id, never by
/// path or path prefix.
pub fn authorize_umount(state_dir: &Path, target: &Path) -> Result<UmountGrant, HelperError> {
    let fd = open_as_caller("umount target", target, OFlags::PATH | OFlags::NOFOLLOW)?;
    let (id, uniq) =
        sys::statx_mnt_id(fd.as_fd()).map_err(|e| HelperError::Io { what: "statx(STATX_MNT_ID)", errno: e })?;
    // STATX_ATTR_MOUNT_ROOT: only the root of the mount (not a directory inside it) names it.
    const STATX_ATTR_MOUNT_ROOT: u64 = 0x2000;
    let sx = rustix::fs::statx(&fd, "", rustix::fs::AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::BASIC_STATS)
        .map_err(|e| HelperError::Io { what: "statx", errno: e })?;
    let attrs = sx.stx_attributes.bits() & sx.stx_attributes_mask.bits();
    if sx.stx_attributes_mask.bits() & STATX_ATTR_MOUNT_ROOT != 0 && attrs & STATX_ATTR_MOUNT_ROOT == 0 {
        return Err(HelperError::Refused {
            what: "umount target",
            path: target.into(),
            reason: "not a mount made by cfsmount (not a mount point; a directory inside a mount does not name it)"
                .into(),
        });
    }
    let c = caller();
    let found = read_records(state_dir).into_iter().find(|(_, r)| r.mount_id == id && r.mount_id_unique == uniq);
    match found {
        Some((p, r)) if !privileged() || r.uid == c.uid => Ok(UmountGrant { target: fd, record_path: p, record: r }),
        Some((_, r)) => Err(HelperError::Refused {
            what: "umount target",
            path: target.into(),
            reason: format!("mounted by cfsmount for uid {}, not for the caller (uid {})", r.uid, c.uid),
        }),
        None => Err(HelperError::Refused {
            what: "umount target",
            path: target.into(),
            reason: "not a mount made by cfsmount (no record with its mount id)".into(),
        }),
    }
}

/// Unmounts exactly the pinned mount of a grant (umount2 on /proc/self/fd/N, MNT_DETACH): a
/// racing unmount or rename makes this fail (EINVAL), it can never hit another mount.
pub fn umount_pinned(grant: &UmountGrant) -> Result<(), HelperError> {
    sys::umount_pinned(grant.target.as_fd()).map_err(|e| HelperError::Io { what: "umount", errno: e })
}

/// `/proc/self/fd/N` for a pinned fd, for kernel interfaces that only take a path string
/// (e.g. legacy overlay `lowerdir=`): resolving it yields exactly the pinned inode.
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use rustix::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Reads at most `max` bytes from the start of a pinned source (e.g. a TOC) into memory.
pub fn read_all(src: &Source, max: u64) -> Result<Vec<u8>, HelperError> {
    let f = rustix::io::dup(&src.fd).map_err(|e| HelperError::Io { what: "dup", errno: e })?;
    let mut f = File::from(f);
    f.seek(SeekFrom::Start(0)).map_err(|e| HelperError::Io {
        what: "seek",
        errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    })?;
    let mut v = Vec::new();
    f.take(max + 1).read_to_end(&mut v).map_err(|e| HelperError::Io {
        what: "read",
        errno: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    })?;
    if v.len() as u64 > max {
        return Err(HelperError::Limit { what: "source size", value: v.len() as u64, limit: max });
    }
    Ok(v)
}

/// Why the helper refused. Messages name the path/option and the reason.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("{what} {path:?}: cannot open as the calling user: {errno}")]
    Open { what: &'static str, path: PathBuf, errno: rustix::io::Errno },
    #[error("{what} {path:?}: refused: {reason}")]
    Refused { what: &'static str, path: PathBuf, reason: String },
    #[error("{what} {value:?}: refused: {reason}")]
    BadArgument { what: &'static str, value: String, reason: String },
    #[error("mount options {option:?}: refused: {reason}")]
    BadOption { option: String, reason: String },
    #[error("image refused: {reason}")]
    BadImage { reason: String },
    #[error("idmap refused: {0}")]
    Idmap(String),
    #[error("per-user limit exceeded: {what} {value} > {limit} (helper policy)")]
    Limit { what: &'static str, value: u64, limit: u64 },
    #[error("helper policy: {0}")]
    Policy(String),
    #[error("privileged mode: {0}")]
    Credentials(String),
    #[error("{what}: {errno}")]
    Io { what: &'static str, errno: rustix::io::Errno },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_checks() {
        let m = |o, n| vec![IdExtent { inside: 0, outside: o, count: n }];
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
            vec![
                IdExtent { inside: 0, outside: 1000, count: 1 },
                IdExtent { inside: 1, outside: 100000, count: 65536 }
            ]
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

    #[test]
    fn strict_path_and_option_checks() {
        let ok = |p: &str| check_path_arg_as("t", OsStr::new(p), true).is_ok();
        assert!(ok("/home/u/mnt"));
        assert!(ok("relative/dir.d_1"));
        for bad in ["", "-o", "/a,b", "/a:b", "/a\\b", "/a=b", "/a\nb", "/a\tb", "/a\x7fb"] {
            assert!(!ok(bad), "accepted {bad:?}");
        }
        assert!(!ok(&"a".repeat(MAX_PATH_ARG + 1)));
        assert!(check_path_arg_as("t", OsStr::new("/a,b"), false).is_ok(), "lenient when not privileged");
        let opt = |o: &str| check_option_string_as(o, true);
        assert!(opt("basedir=/o,ro,verity,digest=ab,idmap=/proc/1/ns/user").is_ok());
        assert!(opt("basedir=/o,upperdir=/u,workdir=/w,rw,nosuid,nodev,noexec,tryverity").is_ok());
        for (o, why) in [
            ("basedir=/o,suid", "not allowed"),
            ("basedir=/o,dev", "not allowed"),
            ("exec", "not allowed"),
            ("basedir=/o,loop", "unknown option"),
            ("basedir=/o,,ro", "empty option"),
            ("basedir=/o,", "empty option"),
            ("-o", "starts with '-'"),
            ("basedir=/o\n,ro", "control character"),
        ] {
            let e = opt(o).expect_err(o).to_string();
            assert!(e.contains(why), "{o:?}: {e}");
        }
        assert!(opt(&format!("basedir=/{}", "a".repeat(MAX_OPTION_STRING))).is_err());
        assert!(check_option_string_as("whatever,suid", false).is_ok());
    }

    #[test]
    fn option_splitting() {
        assert_eq!(split_options("a,b\\,c,d"), vec!["a", "b,c", "d"]);
        assert_eq!(split_options(""), vec![""]);
    }
}
