//! Remembered verdicts of the image vetting (`gate::check_image_content`): an image the helper
//! has parsed and accepted for a caller is not parsed again for that caller while its bytes are
//! the same. docs/helper.md ("Remembered verdicts") has the argument in full; in short:
//!
//! - the key is the BLAKE3 hash of the bytes the kernel will mount: the helper's private copy,
//!   hashed ([`Content::copy_file`]) from the very buffers the helper writes into its own memfd, which
//!   no other process holds until it is sealed (`F_SEAL_WRITE|F_SEAL_GROW|F_SEAL_SHRINK`,
//!   checked on the fd itself before the key is used), its size checked equal to the bytes
//!   hashed; so nothing can change them between the hash, the verdict and the mount; an fd that
//!   is not such a copy (a freshly built image) never uses or makes a verdict;
//! - or, for a caller's image with fs-verity on a filesystem where the kernel enforces it (the
//!   gate mounts that file itself, without a copy), the kernel's fs-verity digest of the file
//!   ([`Hash::FsVerity`], a verdict file of its own name): the kernel refuses every write,
//!   truncation and disabling of verity on it, and checks every page it reads against that
//!   digest, so the bytes mounted are the bytes measured;
//! - the key also holds the caller's uid: a verdict made for one user is never used for another
//!   (who could otherwise learn from the timing that someone mounted a given image);
//! - and [`VERSION`] of the checks (and of the key's hash): a helper that checks more never
//!   trusts an older verdict;
//! - only accepted images are remembered (a refusal is always recomputed), with the entry count
//!   the parse found, which is checked against the caller's limit on every use; the header and
//!   size checks run on every mount anyway;
//! - a verdict may also hold the composefs (fs-verity) digest of the same bytes, which a
//!   `--digest` mount computed (`Gate::check_digest`, which only adds it to a verdict its own
//!   `check_image` just accepted or found): a fact of the bytes the key names, so a later
//!   `--digest` mount compares with it instead of computing it again;
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

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Version of the checks a verdict vouches for: bump it whenever `check_image_content` (or the
/// hostile-input reader under it) refuses something it accepted before, the key changes (v1:
/// SHA-256 of the sealed copy read back; v2: BLAKE3 of the copy as it was written), or the
/// digest a verdict may hold is computed differently (`crate::fsverity::digest_file`: a fixed
/// one then stands in for nothing a verdict of the old version says).
pub(crate) const VERSION: u32 = 2;
/// Most verdicts kept per user.
pub(crate) const PER_UID: usize = 64;
/// Most verdicts kept in all.
pub(crate) const TOTAL: usize = 1024;
/// Largest verdict file read.
const MAX_FILE: u64 = 256;

/// What a verdict says about an accepted image (rechecked against the caller's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Size of the image in bytes.
    pub(crate) size: u64,
    /// Entries of the tree the reader built from it.
    pub(crate) entries: u64,
    /// The composefs digest of the same bytes (fs-verity, SHA-256, 4 KiB blocks, no salt), once
    /// a `--digest` mount has computed it: a fact of the bytes the key names, so a later
    /// `--digest` mount of them compares with it instead of computing it again.
    pub(crate) fsverity: Option<[u8; 32]>,
}

impl Verdict {
    /// The verdict of an image just vetted: no digest computed yet.
    pub(crate) fn accepted(size: u64, entries: u64) -> Verdict {
        Verdict { size, entries, fsverity: None }
    }

    fn encode(&self) -> String {
        let mut text = format!("cfsmount verdict v{VERSION} accepted size={} entries={}", self.size, self.entries);
        if let Some(d) = &self.fsverity {
            text.push_str(" fsverity=");
            text.push_str(&crate::fsverity::to_hex(d));
        }
        text.push('\n');
        text
    }

    fn decode(text: &[u8]) -> Option<Verdict> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('\n')?;
        let rest = text.strip_prefix(&format!("cfsmount verdict v{VERSION} accepted "))?;
        let mut fields = rest.split(' ');
        let num = |s: Option<&str>, key: &str| s?.strip_prefix(key)?.parse::<u64>().ok();
        let (size, entries) = (num(fields.next(), "size=")?, num(fields.next(), "entries=")?);
        let fsverity = match fields.next() {
            None => None,
            // 64 lower-case hex digits (the same parse as an OCI digest's).
            Some(f) => Some(crate::oci::Sha256::from_hex(f.strip_prefix("fsverity=")?)?.0),
        };
        let v = Verdict { size, entries, fsverity };
        (fields.next().is_none() && v.encode() == format!("{text}\n")).then_some(v)
    }
}

/// Hashes bytes in one pass, in order: the [`Content`] that [`Content::copy_file`] gives for
/// the same bytes in pieces (tests compare the two).
#[cfg(test)]
pub(crate) struct ContentHasher {
    hasher: blake3::Hasher,
    size: u64,
}

#[cfg(test)]
impl ContentHasher {
    pub(crate) fn new() -> ContentHasher {
        ContentHasher { hasher: blake3::Hasher::new(), size: 0 }
    }

    /// The next bytes of the copy, in order.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    pub(crate) fn finish(self) -> Content {
        Content { hash: Hash::Blake3, digest: *self.hasher.finalize().as_bytes(), size: self.size }
    }
}

/// Largest piece of a file [`Content::of_file`] hashes (and [`Content::copy_file`] copies) in
/// one go (a BLAKE3 subtree). Threads take the pieces in file order, so the copy's end is
/// usually a piece or a few ahead of any write into it: a tmpfs mounted `huge=within_size`
/// then backs it with folios of a piece or two, not 2 MiB (which the vetting's mapping would
/// map whole: `crate::sys::map::SealedMap`).
const PIECE: u64 = READ_CHUNK as u64;
/// Bytes read per `pread` while hashing a file.
const READ_CHUNK: usize = 128 << 10;
/// Most threads [`Content::of_file`] hashes on.
const MAX_THREADS: usize = 4;

/// A piece of the BLAKE3 tree of a file: a subtree hashed whole (offset, length), or the parent
/// of two.
enum Subtree {
    Piece(u64, u64),
    Parent(Box<Subtree>, Box<Subtree>),
}

impl Subtree {
    /// The subtree of `len` bytes at `offset` (a subtree of BLAKE3's tree), split as BLAKE3
    /// splits it (`hazmat::left_subtree_len`) until its pieces are at most [`PIECE`] bytes.
    fn split(offset: u64, len: u64) -> Subtree {
        if len <= PIECE {
            return Subtree::Piece(offset, len);
        }
        let left = blake3::hazmat::left_subtree_len(len);
        Subtree::Parent(Box::new(Subtree::split(offset, left)), Box::new(Subtree::split(offset + left, len - left)))
    }

    fn pieces(&self, out: &mut Vec<(u64, u64)>) {
        match self {
            Subtree::Piece(o, l) => out.push((*o, *l)),
            Subtree::Parent(a, b) => {
                a.pieces(out);
                b.pieces(out);
            }
        }
    }

    /// The chaining value of this (non-root) subtree from its pieces' chaining values, in order.
    fn chaining_value(&self, cvs: &mut impl Iterator<Item = blake3::hazmat::ChainingValue>) -> Option<[u8; 32]> {
        match self {
            Subtree::Piece(..) => cvs.next(),
            Subtree::Parent(a, b) => {
                let (l, r) = (a.chaining_value(cvs)?, b.chaining_value(cvs)?);
                Some(blake3::hazmat::merge_subtrees_non_root(&l, &r, blake3::hazmat::Mode::Hash))
            }
        }
    }
}

/// A file of a known size cut into the pieces its BLAKE3 hash is made of, for hashing them apart
/// (on several threads, in any order): subtrees of BLAKE3's tree of at most [`PIECE`] bytes, in
/// file order. A file of at most PIECE bytes (an empty one too) is one piece, whose hash is the
/// file's.
struct Pieces {
    size: u64,
    tree: Subtree,
    list: Vec<(u64, u64)>,
}

impl Pieces {
    fn new(size: u64) -> Pieces {
        let tree = Subtree::split(0, size);
        let mut list = Vec::new();
        tree.pieces(&mut list);
        Pieces { size, tree, list }
    }

    fn count(&self) -> usize {
        self.list.len()
    }

    /// Reads piece `i` of `fd` (a file of `self.size` bytes) and hashes it; with `copy_to`,
    /// writes each byte hashed there at the offset it was read from. Its chaining value (the
    /// root hash if it is the only piece); `None` if `fd` ends before the piece does.
    fn hash(
        &self,
        i: usize,
        fd: BorrowedFd<'_>,
        buf: &mut [u8],
        copy_to: Option<BorrowedFd<'_>>,
    ) -> Result<Option<[u8; 32]>, Errno> {
        use blake3::hazmat::HasherExt;
        let Some(&(offset, len)) = self.list.get(i) else { return Ok(None) };
        let mut h = blake3::Hasher::new();
        h.set_input_offset(offset);
        let whole = pread_each(fd, offset, len, buf, |b, at| {
            h.update(b);
            copy_to.map_or(Ok(()), |dst| pwrite_all(dst, b, at))
        })?;
        if !whole {
            return Ok(None);
        }
        Ok(Some(if self.list.len() == 1 { *h.finalize().as_bytes() } else { h.finalize_non_root() }))
    }

    /// The file's [`Content`] from the hashes of all its pieces, in order.
    fn content(&self, hashes: &[[u8; 32]]) -> Option<Content> {
        if hashes.len() != self.list.len() {
            return None;
        }
        let digest = match &self.tree {
            Subtree::Piece(..) => hashes[0],
            Subtree::Parent(left, right) => {
                let mut it = hashes.iter().copied();
                let (l, r) = (left.chaining_value(&mut it)?, right.chaining_value(&mut it)?);
                *blake3::hazmat::merge_subtrees_root(&l, &r, blake3::hazmat::Mode::Hash).as_bytes()
            }
        };
        Some(Content { hash: Hash::Blake3, digest, size: self.size })
    }
}

/// Reads the `len` bytes of `fd` at `offset` with `pread` into `buf`, piece by piece, handing
/// each piece and its offset to `take` in order; `false` if the file ends before them.
fn pread_each(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    buf: &mut [u8],
    mut take: impl FnMut(&[u8], u64) -> Result<(), Errno>,
) -> Result<bool, Errno> {
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        match rustix::io::pread(fd, &mut buf[..want], offset + done) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                take(&buf[..n], offset + done)?;
                done += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes all of `bytes` into `dst` at `offset` (`pwrite`).
fn pwrite_all(dst: BorrowedFd<'_>, mut bytes: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::pwrite(dst, bytes, offset) {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The bytes an image has, named by one of two digests that commit to all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Content {
    hash: Hash,
    digest: [u8; 32],
    size: u64,
}

/// Which digest a [`Content`] holds: its verdict files have different names, so a digest of one
/// kind is never looked up as one of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    /// BLAKE3 of all the bytes, hashed as they were written into the helper's copy.
    Blake3,
    /// The kernel's fs-verity digest (SHA-256, `FS_IOC_MEASURE_VERITY`) of a file whose bytes
    /// the kernel keeps from changing (the caller's fs-verity image, mounted without a copy).
    FsVerity,
}

impl Content {
    /// The BLAKE3 hash of the first `size` bytes of `fd` (a caller's file, read with `pread`,
    /// never mapped), the BLAKE3 hash of its bytes; pieces of
    /// the BLAKE3 tree are hashed on up to [`MAX_THREADS`] threads (all joined before it
    /// returns). `None` if the file is not `size` bytes long after the hash (it changed while
    /// read): the caller copies it instead.
    pub(crate) fn of_file(fd: BorrowedFd<'_>, size: u64) -> Result<Option<Content>, Errno> {
        Content::of_file_copied(fd, size, None, None)
    }

    /// [`Content::of_file`], writing the bytes hashed into `copy_to` at the offsets they were
    /// read from as it goes (each piece by the thread that hashed it: the hash is of exactly
    /// the bytes written). `copy_to` must be a file no one else can write (the gate's new kept
    /// copy or memfd), and not open `O_APPEND` (`EINVAL`: `pwrite` would ignore the offsets):
    /// then its first `size` bytes are what the returned hash commits to. `None` as for
    /// `of_file` (the caller's file ended early or was longer): what was written is then not a
    /// copy of anything, and the caller throws it away.
    pub(crate) fn copy_file(fd: BorrowedFd<'_>, size: u64, copy_to: BorrowedFd<'_>) -> Result<Option<Content>, Errno> {
        if rustix::fs::fcntl_getfl(copy_to)?.contains(OFlags::APPEND) {
            return Err(Errno::INVAL);
        }
        Content::of_file_copied(fd, size, Some(copy_to), None)
    }

    /// The pieces of the first `size` bytes of `fd` hashed (and copied) on `threads` threads,
    /// by default as many as there are CPUs to run them, at most [`MAX_THREADS`]. A thread that
    /// cannot be started (the caller's `pids.max`; with file capabilities, a hard `RLIMIT_AS`) is
    /// done without: the threads that run take its pieces.
    fn of_file_copied(
        fd: BorrowedFd<'_>,
        size: u64,
        copy_to: Option<BorrowedFd<'_>>,
        threads: Option<usize>,
    ) -> Result<Option<Content>, Errno> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let pieces = Pieces::new(size);
        let next = AtomicUsize::new(0);
        // Set by the first thread that fails: the others stop taking pieces.
        let failed = AtomicBool::new(false);
        type Done = Vec<(usize, Option<[u8; 32]>)>;
        let work = || -> Result<Done, Errno> {
            let mut buf = vec![0u8; READ_CHUNK];
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pieces.count() || failed.load(Ordering::Relaxed) {
                    return Ok(out);
                }
                match pieces.hash(i, fd, &mut buf, copy_to) {
                    Ok(h) => out.push((i, h)),
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        };
        let results = if pieces.count() == 1 {
            vec![work()]
        } else {
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS))
                .clamp(1, pieces.count());
            std::thread::scope(|s| {
                let mut helpers = Vec::new();
                for _ in 1..threads {
                    match std::thread::Builder::new().spawn_scoped(s, work) {
                        Ok(h) => helpers.push(h),
                        Err(_) => break,
                    }
                }
                let mut all = vec![work()];
                all.extend(helpers.into_iter().map(|h| h.join().unwrap_or(Err(Errno::IO))));
                all
            })
        };
        let mut hashes = vec![None; pieces.count()];
        for r in results {
            for (i, h) in r? {
                hashes[i] = h;
            }
        }
        // A piece nobody took (after a failure) or that the file ended before: no hash.
        let Some(hashes) = hashes.into_iter().collect::<Option<Vec<_>>>() else { return Ok(None) };
        let content = pieces.content(&hashes);
        Ok(if same_size(fd, size)? { content } else { None })
    }

    /// The fs-verity digest `digest` of a file of `size` bytes, as the kernel measured it.
    pub(crate) fn fs_verity(digest: [u8; 32], size: u64) -> Content {
        Content { hash: Hash::FsVerity, digest, size }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn hash(&self) -> Hash {
        self.hash
    }

    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// The key of an image for one caller: its uid and the hash of the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    uid: u32,
    content: Content,
}

impl Key {
    /// The key of `content` for the caller `uid`. The caller of this function vouches that
    /// `content` describes exactly the bytes that will be mounted (the gate: its own copy,
    /// sealed, of that size; or the caller's fs-verity file it pinned, measured again).
    pub(crate) fn new(uid: u32, content: Content) -> Key {
        Key { uid, content }
    }

    pub(crate) fn file_name(&self) -> String {
        let hex: String = self.content.digest.iter().map(|b| format!("{b:02x}")).collect();
        match self.content.hash {
            Hash::Blake3 => format!("v{VERSION}-{}-{hex}", self.uid),
            Hash::FsVerity => format!("v{VERSION}-{}-fsverity-{hex}", self.uid),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.content.size
    }

    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.content.digest
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
        let dir = private_subdir(state_dir, "verdicts", true)?;
        Some(Verdicts { dir, owner: rustix::process::geteuid().as_raw() })
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
        // Room for the whole file and one more byte: one read, and one that sees its end.
        let mut text = Vec::with_capacity(MAX_FILE as usize + 1);
        std::fs::File::from(fd).take(MAX_FILE).read_to_end(&mut text).ok()?;
        Verdict::decode(&text).filter(|v| v.size == key.size())
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

/// `<state_dir>/NAME`, a directory of the helper's own (remembered verdicts, kept copies):
/// created 0700 if missing and `create`, opened without following symlinks, and only if the
/// state directory is owned by our euid and not group/world-writable and NAME is owned by our
/// euid and not accessible to group or others; `None` otherwise (the caller then neither uses
/// nor keeps anything there).
pub(crate) fn private_subdir(state_dir: &Path, name: &str, create: bool) -> Option<OwnedFd> {
    let owner = rustix::process::geteuid().as_raw();
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let state = rustix::fs::open(state_dir, dflags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&state).ok()?;
    if st.st_uid != owner || st.st_mode & 0o022 != 0 {
        return None;
    }
    if create {
        match rustix::fs::mkdirat(&state, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(_) => return None,
        }
    }
    let dir = rustix::fs::openat(&state, name, dflags, Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&dir).ok()?;
    (st.st_uid == owner && st.st_mode & 0o077 == 0).then_some(dir)
}

/// Whether `fd` is (still) `size` bytes long.
fn same_size(fd: BorrowedFd<'_>, size: u64) -> Result<bool, Errno> {
    Ok(rustix::fs::fstat(fd)?.st_size as u64 == size)
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
    use std::path::PathBuf;

    fn dir_path(state_dir: &Path) -> PathBuf {
        state_dir.join("verdicts")
    }

    /// The BLAKE3 team's test vectors (test_vectors/test_vectors.json of the BLAKE3 repository):
    /// input of `len` bytes `0, 1, ..., 250, 0, 1, ...`, first 32 bytes of the output.
    const VECTORS: [(usize, &str); 4] = [
        (0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        (1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"),
        (1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"),
        (4097, "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995"),
    ];

    fn content(bytes: &[u8]) -> Content {
        let mut h = ContentHasher::new();
        h.update(bytes);
        h.finish()
    }

    #[test]
    fn content_hash_is_blake3_of_all_pieces_in_order() {
        for (len, want) in VECTORS {
            let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // In uneven pieces, as the copy loop feeds it.
            let mut h = ContentHasher::new();
            for piece in input.chunks(1000) {
                h.update(piece);
            }
            let c = h.finish();
            let hex: String = c.digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "len {len}");
            assert_eq!(c.size(), len as u64);
        }
    }

    /// A file's hash, read in BLAKE3 subtrees on one thread or several (four, whatever the
    /// CPUs), is the BLAKE3 hash of its bytes (sizes around the piece size and the chunk size,
    /// and an odd one), and a copy made while hashing holds those bytes; a file shorter or
    /// longer than the size asked for has none.
    #[test]
    fn file_hash_in_pieces_is_blake3_of_the_bytes() {
        use std::io::Write;
        use std::os::fd::{AsFd, AsRawFd};
        let p = PIECE as usize;
        for len in [0, 1, 1024, 1025, p - 1, p, p + 1, 2 * p, 2 * p + 1025, 5 * p + 12_345, 10 * p + 7] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect();
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(&bytes).unwrap();
            let c = Content::of_file(f.as_fd(), len as u64).unwrap().expect("hashed");
            assert_eq!(c.digest(), blake3::hash(&bytes).as_bytes(), "len {len}");
            assert_eq!(c, content(&bytes), "len {len}: the same Content as the copy's hasher");
            assert_eq!(
                Content::copy_file(f.as_fd(), len as u64, tempfile::tempfile().unwrap().as_fd()).unwrap(),
                Some(c)
            );
            for threads in [1, 4] {
                let t = Some(threads);
                assert_eq!(Content::of_file_copied(f.as_fd(), len as u64, None, t).unwrap(), Some(c), "len {len}");
                // Copied as hashed: the copy holds the bytes at their offsets, and the same hash.
                let copy = tempfile::tempfile().unwrap();
                let got = Content::of_file_copied(f.as_fd(), len as u64, Some(copy.as_fd()), t).unwrap();
                assert_eq!(got, Some(c), "len {len}, {threads} threads");
                assert!(std::fs::read(format!("/proc/self/fd/{}", copy.as_raw_fd())).unwrap() == bytes, "len {len}");
                // Asked for more bytes than the file has, or fewer: no hash, copied or not.
                let other = tempfile::tempfile().unwrap();
                let longer = Content::of_file_copied(f.as_fd(), len as u64 + 1, Some(other.as_fd()), t).unwrap();
                assert_eq!(longer, None, "len {len} + 1");
                assert_eq!(Content::of_file_copied(f.as_fd(), len as u64 + 1, None, t).unwrap(), None, "len {len} + 1");
                if len > 0 {
                    let shorter = Content::of_file_copied(f.as_fd(), len as u64 - 1, None, t).unwrap();
                    assert_eq!(shorter, None, "len {len} - 1: size changed");
                    let other = tempfile::tempfile().unwrap();
                    let shorter = Content::of_file_copied(f.as_fd(), len as u64 - 1, Some(other.as_fd()), t).unwrap();
                    assert_eq!(shorter, None, "len {len} - 1");
                }
            }
        }
    }

    /// A copy that cannot be written is an error, never a hash: a read-only destination (every
    /// thread's first write fails), and one open for appending (refused before anything is
    /// read: `pwrite` there would ignore the offsets).
    #[test]
    fn a_copy_that_cannot_be_written_is_an_error() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let bytes = vec![5u8; 3 * PIECE as usize + 77];
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let read_only = std::fs::File::open(f.path()).unwrap();
        for threads in [1, 4] {
            let r = Content::of_file_copied(
                f.as_file().as_fd(),
                bytes.len() as u64,
                Some(read_only.as_fd()),
                Some(threads),
            );
            assert_eq!(r, Err(Errno::BADF), "{threads} threads");
        }
        let append = std::fs::OpenOptions::new().append(true).open(f.path()).unwrap();
        assert_eq!(Content::copy_file(f.as_file().as_fd(), bytes.len() as u64, append.as_fd()), Err(Errno::INVAL));
        assert!(std::fs::read(f.path()).unwrap() == bytes, "nothing was written");
    }

    #[test]
    fn verdict_text_round_trips_and_nothing_else_parses() {
        let v = Verdict::accepted(10, 3);
        assert_eq!(Verdict::decode(v.encode().as_bytes()), Some(v));
        let longest = Verdict { fsverity: Some([0xff; 32]), ..Verdict::accepted(u64::MAX, u64::MAX) };
        assert!(longest.encode().len() as u64 <= MAX_FILE, "{}", longest.encode().len());
        assert_eq!(Verdict::decode(longest.encode().as_bytes()), Some(longest));
        assert_eq!(Verdict::decode(b"cfsmount verdict v2 accepted size=10 entries=3\n"), Some(v));
        let mut d = [0u8; 32];
        d[0] = 0xab;
        d[31] = 0x09;
        let with = Verdict { fsverity: Some(d), ..v };
        let text = with.encode();
        assert_eq!(text, format!("cfsmount verdict v2 accepted size=10 entries=3 fsverity=ab{}09\n", "00".repeat(30)));
        assert!(text.len() as u64 <= MAX_FILE);
        assert_eq!(Verdict::decode(text.as_bytes()), Some(with));
        let hex = format!("ab{}09", "00".repeat(30));
        for bad in [
            format!("cfsmount verdict v2 accepted size=10 entries=3 fsverity={}\n", hex.to_uppercase()),
            format!("cfsmount verdict v2 accepted size=10 entries=3 fsverity={}\n", &hex[1..]),
            format!("cfsmount verdict v2 accepted size=10 entries=3 fsverity={hex}0\n"),
            format!("cfsmount verdict v2 accepted size=10 entries=3 fsverity={hex} \n"),
            format!("cfsmount verdict v2 accepted size=10 entries=3 fsverity={hex} fsverity={hex}\n"),
            format!("cfsmount verdict v2 accepted size=10 entries=3 sha256={hex}\n"),
            format!("cfsmount verdict v2 accepted size=10 fsverity={hex} entries=3\n"),
            "cfsmount verdict v2 accepted size=10 entries=3 fsverity=\n".to_string(),
        ] {
            assert_eq!(Verdict::decode(bad.as_bytes()), None, "{bad:?}");
        }
        for bad in [
            "",
            "cfsmount verdict v2 accepted size=10 entries=3",
            "cfsmount verdict v1 accepted size=10 entries=3\n",
            "cfsmount verdict v2 refused size=10 entries=3\n",
            "cfsmount verdict v2 accepted size=10 entries=+3\n",
            "cfsmount verdict v2 accepted size=10 entries=3 \n",
            "cfsmount verdict v2 accepted entries=3 size=10\n",
            "cfsmount verdict v2 accepted size=010 entries=3\n",
        ] {
            assert_eq!(Verdict::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn key_covers_uid_and_bytes() {
        let k = Key::new(1000, content(b"image bytes"));
        assert_eq!(k.size(), 11);
        assert!(k.file_name().starts_with("v2-1000-"), "{}", k.file_name());
        assert_ne!(Key::new(1001, content(b"image bytes")).file_name(), k.file_name());
        assert_ne!(Key::new(1000, content(b"image bytez")).file_name(), k.file_name());
        assert_ne!(Key::new(1000, content(b"image byte")).file_name(), k.file_name());
        // The same 32 bytes as an fs-verity digest name another verdict.
        let v = Key::new(1000, Content::fs_verity(*k.content.digest(), k.size()));
        assert_eq!(v.file_name(), format!("v2-1000-fsverity-{}", &k.file_name()["v2-1000-".len()..]));
        assert_ne!(Key::new(1001, Content::fs_verity(*k.content.digest(), k.size())).file_name(), v.file_name());
    }

    #[test]
    fn recorded_verdicts_are_found_per_uid_and_bounded() {
        let state = tempfile::tempdir().unwrap();
        std::fs::set_permissions(state.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let v = Verdicts::open(state.path()).expect("verdict dir");
        let img = content(b"accepted image");
        let k = Key::new(1000, img);
        assert_eq!(v.lookup(&k), None);
        let verdict = Verdict::accepted(k.size(), 7);
        v.record(&k, verdict);
        assert_eq!(v.lookup(&k), Some(verdict));
        assert_eq!(v.lookup(&Key::new(1001, img)), None, "another user's verdict");
        // A tampered file (other content, or group-readable) is not trusted.
        let p = dir_path(state.path()).join(k.file_name());
        std::fs::write(&p, "cfsmount verdict v2 accepted size=14 entries=x\n").unwrap();
        assert_eq!(v.lookup(&k), None);
        v.record(&k, verdict);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        assert_eq!(v.lookup(&k), None);
        // A verdict of the old key (v1, SHA-256) is removed, never read.
        let old = dir_path(state.path()).join("v1-1000-00");
        std::fs::write(&old, "cfsmount verdict v1 accepted size=14 entries=7\n").unwrap();
        // Bounds: per uid, oldest first.
        for i in 0..(PER_UID + 5) {
            v.record(&Key::new(1000, content(format!("image {i}").as_bytes())), verdict);
        }
        assert!(!old.exists(), "verdicts of another version are removed");
        let n = std::fs::read_dir(dir_path(state.path())).unwrap().count();
        assert_eq!(n, PER_UID);
        // A directory others can read is not used.
        std::fs::set_permissions(dir_path(state.path()), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(Verdicts::open(state.path()).is_none());
    }
}
