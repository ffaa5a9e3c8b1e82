//! Remembered verdicts of the image vetting (`gate::check_image_content`): an image the helper
//! has parsed and accepted for a caller is not parsed again for that caller while its bytes are
//! the same. docs/helper.md ("Remembered verdicts") has the argument in full; in short:
//!
//! - the key is the SHA-256 of the bytes the kernel will mount: the sealed private copy
//!   (`F_SEAL_WRITE|F_SEAL_GROW|F_SEAL_SHRINK` checked on the fd itself), hashed by the helper
//!   after sealing, so nothing can change them between the hash, the verdict and the mount; an
//!   fd that is not sealed so (a freshly built image) never uses or makes a verdict;
//! - the key also holds the caller's uid: a verdict made for one user is never used for another
//!   (who could otherwise learn from the timing that someone mounted a given image);
//! - and [`VERSION`] of the checks: a helper that checks more never trusts an older verdict;
//! - only accepted images are remembered (a refusal is always recomputed), with the entry count
//!   the parse found, which is checked against the caller's limit on every use; the header and
//!   size checks run on every mount anyway;
//! - verdicts live in `<state dir>/verdicts`, a directory created 0700 by the helper (root) and
//!   refused unless owned by the helper's euid and not group/world-accessible; each verdict file
//!   is written under a private temporary name and renamed into place, and is read only if it
//!   is a small regular file of that owner whose exact content parses; anything else is a miss;
//! - bounded: at most [`PER_UID`] verdicts per user and [`TOTAL`] in all (oldest removed first);
//!   `/run` is a tmpfs, so a reboot (or a fresh machine) starts with none, and a missing
//!   directory just means every image is vetted in full.
//!
//! Every failure here is a miss (vet in full) or a verdict not written: never an error of the
//! mount and never an acceptance.

use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

/// Version of the checks a verdict vouches for: bump it whenever `check_image_content` (or the
/// hostile-input reader under it) refuses something it accepted before.
pub(crate) const VERSION: u32 = 1;
/// Most verdicts kept per user.
pub(crate) const PER_UID: usize = 64;
/// Most verdicts kept in all.
pub(crate) const TOTAL: usize = 1024;
/// Largest verdict file read.
const MAX_FILE: u64 = 128;
/// Bytes hashed per read.
const CHUNK: usize = 1 << 20;

/// What a verdict says about an accepted image (rechecked against the caller's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Size of the image in bytes.
    pub(crate) size: u64,
    /// Entries of the tree the reader built from it.
    pub(crate) entries: u64,
}

impl Verdict {
    fn encode(&self) -> String {
        format!("cfsmount verdict v{VERSION} accepted size={} entries={}\n", self.size, self.entries)
    }

    fn decode(text: &[u8]) -> Option<Verdict> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
        let rest = text.strip_prefix(&format!("cfsmount verdict v{VERSION} accepted "))?;
        let (size, entries) = rest.split_once(' ')?;
        let num = |s: &str, key: &str| s.strip_prefix(key)?.parse::<u64>().ok();
        let v = Verdict { size: num(size, "size=")?, entries: num(entries, "entries=")? };
        (v.encode() == format!("{text}\n")).then_some(v)
    }
}

/// The key of an image for one caller: its uid and the SHA-256 of the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    uid: u32,
    digest: [u8; 32],
    size: u64,
}

impl Key {
    /// `None` unless `fd` is sealed against writes, growth and shrinking (then its bytes can
    /// no longer change, and the key covers exactly what will be mounted).
    pub(crate) fn of(uid: u32, fd: BorrowedFd<'_>) -> Result<Option<Key>, Errno> {
        let need = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK;
        match rustix::fs::fcntl_get_seals(fd) {
            Ok(s) if s.contains(need) => {}
            Ok(_) | Err(Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e),
        }
        let size = rustix::fs::fstat(fd)?.st_size as u64;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < size {
            match rustix::io::pread(fd, &mut buf, off) {
                Ok(0) => return Err(Errno::IO), // sealed: cannot be shorter than fstat said
                Ok(n) => {
                    h.update(&buf[..n]);
                    off += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(Key { uid, digest: h.finalize().into(), size }))
    }

    fn file_name(&self) -> String {
        let hex: String = self.digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("v{VERSION}-{}-{hex}", self.uid)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

/// The verdict directory (`<state dir>/verdicts`).
pub(crate) struct Verdicts {
    dir: OwnedFd,
    owner: u32,
}

impl Verdicts {
    /// Opens (creating it 0700 if missing) `<state_dir>/verdicts`, owned by our euid and not
    /// accessible to group or others; `None` if that fails (no verdicts are used or kept).
    pub(crate) fn open(state_dir: &Path) -> Option<Verdicts> {
        let owner = rustix::process::geteuid().as_raw();
        let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let state = rustix::fs::open(state_dir, dflags, Mode::empty()).ok()?;
        let private = |fd: &OwnedFd| {
            rustix::fs::fstat(fd).ok().filter(|st| st.st_uid == owner && st.st_mode & 0o022 == 0).is_some()
        };
        if !private(&state) {
            return None;
        }
        match rustix::fs::mkdirat(&state, "verdicts", Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(_) => return None,
        }
        let dir = rustix::fs::openat(&state, "verdicts", dflags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&dir).ok()?;
        (st.st_uid == owner && st.st_mode & 0o077 == 0).then_some(Verdicts { dir, owner })
    }

    /// The verdict for `key`, if one was recorded and is still trustworthy.
    pub(crate) fn lookup(&self, key: &Key) -> Option<Verdict> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, key.file_name(), flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let regular = rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile;
        if !regular || st.st_uid != self.owner || st.st_mode & 0o077 != 0 || st.st_size as u64 > MAX_FILE {
            return None;
        }
        let mut text = Vec::new();
        std::fs::File::from(fd).take(MAX_FILE).read_to_end(&mut text).ok()?;
        Verdict::decode(&text).filter(|v| v.size == key.size)
    }

    /// Records that the image of `key` was accepted (best effort: a verdict that cannot be
    /// written is simply not remembered), then keeps the directory within its bounds.
    pub(crate) fn record(&self, key: &Key, verdict: Verdict) {
        let name = key.file_name();
        let tmp = format!(".tmp-{}-{name}", std::process::id());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(fd) = rustix::fs::openat(&self.dir, &tmp, flags, Mode::from_raw_mode(0o600)) else { return };
        let text = verdict.encode();
        let written = matches!(rustix::io::write(&fd, text.as_bytes()), Ok(n) if n == text.len());
        drop(fd);
        if !written || rustix::fs::renameat(&self.dir, &tmp, &self.dir, &name).is_err() {
            let _ = rustix::fs::unlinkat(&self.dir, &tmp, AtFlags::empty());
            return;
        }
        self.trim(key.uid);
    }

    /// Removes verdicts of other versions, leftover temporary files, and the oldest verdicts
    /// beyond [`PER_UID`] for `uid` and beyond [`TOTAL`] in all.
    fn trim(&self, uid: u32) {
        let Ok(fd) =
            rustix::fs::openat(&self.dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return;
        };
        let Ok(dir) = rustix::fs::Dir::new(fd) else { return };
        let current = format!("v{VERSION}-");
        let mine = format!("v{VERSION}-{uid}-");
        let mut all = Vec::new();
        for ent in dir.flatten() {
            let name = ent.file_name().to_bytes().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&self.dir, ent.file_name(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
            let age = (st.st_mtime, st.st_mtime_nsec);
            let stale_tmp = name.starts_with(b".tmp-") && age.0 < now_secs().saturating_sub(60);
            if !name.starts_with(current.as_bytes()) && (!name.starts_with(b".tmp-") || stale_tmp) {
                let _ = rustix::fs::unlinkat(&self.dir, ent.file_name(), AtFlags::empty());
                continue;
            }
            if name.starts_with(current.as_bytes()) {
                all.push((age, name.starts_with(mine.as_bytes()), ent.file_name().to_owned()));
            }
        }
        all.sort();
        let remove = |n: &std::ffi::CStr| {
            let _ = rustix::fs::unlinkat(&self.dir, n, AtFlags::empty());
        };
        let mut own = all.iter().filter(|e| e.1).count();
        let mut total = all.len();
        for (_, is_mine, name) in &all {
            if *is_mine && own > PER_UID {
                remove(name);
                own -= 1;
                total -= 1;
            } else if total > TOTAL {
                remove(name);
                total -= 1;
                own -= usize::from(*is_mine);
            }
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::path::PathBuf;

    fn dir_path(state_dir: &Path) -> PathBuf {
        state_dir.join("verdicts")
    }

    /// `printf 'image bytes' | sha256sum` (coreutils).
    const HELLO_SHA256: &str = "de7030234493a8bea844dbe1d8676e68a2c1a4b014c721f0425a22b6df66faec";

    fn sealed(bytes: &[u8]) -> OwnedFd {
        use rustix::fs::MemfdFlags;
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        assert_eq!(rustix::io::write(&fd, bytes).unwrap(), bytes.len());
        rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK).unwrap();
        fd
    }

    #[test]
    fn verdict_text_round_trips_and_nothing_else_parses() {
        let v = Verdict { size: 10, entries: 3 };
        assert_eq!(Verdict::decode(v.encode().as_bytes()), Some(v));
        for bad in [
            "",
            "cfsmount verdict v1 accepted size=10 entries=3",
            "cfsmount verdict v0 accepted size=10 entries=3\n",
            "cfsmount verdict v1 refused size=10 entries=3\n",
            "cfsmount verdict v1 accepted size=10 entries=+3\n",
            "cfsmount verdict v1 accepted size=10 entries=3 \n",
            "cfsmount verdict v1 accepted entries=3 size=10\n",
            "cfsmount verdict v1 accepted size=010 entries=3\n",
        ] {
            assert_eq!(Verdict::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn key_needs_seals_and_covers_uid_and_bytes() {
        let a = sealed(b"image bytes");
        let k = Key::of(1000, a.as_fd()).unwrap().unwrap();
        assert_eq!(k.size(), 11);
        let hex: String = k.digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, HELLO_SHA256);
        assert_ne!(Key::of(1001, a.as_fd()).unwrap().unwrap().file_name(), k.file_name());
        let b = sealed(b"image bytez");
        assert_ne!(Key::of(1000, b.as_fd()).unwrap().unwrap(), k);
        // Not sealed (or not sealable): no key.
        let unsealed = rustix::fs::memfd_create("u", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(Key::of(1000, unsealed.as_fd()).unwrap().is_none());
        let tmp = tempfile::tempfile().unwrap();
        assert!(Key::of(1000, tmp.as_fd()).unwrap().is_none());
    }

    #[test]
    fn recorded_verdicts_are_found_per_uid_and_bounded() {
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let v = Verdicts::open(state.path()).expect("verdict dir");
        let img = sealed(b"accepted image");
        let k = Key::of(1000, img.as_fd()).unwrap().unwrap();
        assert_eq!(v.lookup(&k), None);
        let verdict = Verdict { size: k.size(), entries: 7 };
        v.record(&k, verdict);
        assert_eq!(v.lookup(&k), Some(verdict));
        assert_eq!(v.lookup(&Key::of(1001, img.as_fd()).unwrap().unwrap()), None, "another user's verdict");
        // A tampered file (other content, or group-readable) is not trusted.
        let p = dir_path(state.path()).join(k.file_name());
        std::fs::write(&p, "cfsmount verdict v1 accepted size=14 entries=x\n").unwrap();
        assert_eq!(v.lookup(&k), None);
        v.record(&k, verdict);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        assert_eq!(v.lookup(&k), None);
        // Bounds: per uid, oldest first.
        for i in 0..(PER_UID + 5) {
            let f = sealed(format!("image {i}").as_bytes());
            v.record(&Key::of(1000, f.as_fd()).unwrap().unwrap(), verdict);
        }
        let n = std::fs::read_dir(dir_path(state.path())).unwrap().count();
        assert_eq!(n, PER_UID);
        // A directory others can read is not used.
        std::fs::set_permissions(dir_path(state.path()), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(Verdicts::open(state.path()).is_none());
    }
}
