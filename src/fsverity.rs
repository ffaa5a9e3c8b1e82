//! fs-verity: userspace digest (parallel leaf hashing), enable and measure on files (the
//! `cfsmount verity` subcommands are in [`crate::cli`]).
//!
//! The digest is the kernel's (Documentation/filesystems/fsverity.rst): SHA-256, 4096-byte
//! Merkle tree blocks, no salt. Each data block (the last one zero-padded) is hashed; the
//! hashes are packed 128 to a block (the last block of a level zero-padded) and hashed again,
//! level by level, until one block remains; the hash of that block is the root hash. A file of
//! one block has the hash of that block as root hash, an empty file an all-zero root hash. The
//! file digest is the SHA-256 of the 256-byte `fsverity_descriptor` holding the root hash.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Merkle tree block size (and data block size) used everywhere in composefs.
const BLOCK_SIZE: usize = 4096;
const LOG_BLOCK_SIZE: u8 = 12;
const HASH_SIZE: usize = 32;
/// Hashes per Merkle tree block.
const ARITY: usize = BLOCK_SIZE / HASH_SIZE;
/// Bytes of data covered by one first-level tree block (128 data blocks = 512 KiB).
const GROUP_BYTES: usize = ARITY * BLOCK_SIZE;
/// Bytes per pread.
const READ_BYTES: usize = 64 << 10;
/// Unit of work handed to a thread: 4 groups = 2 MiB of file data.
const UNIT_GROUPS: usize = 4;
/// Below this many bytes digest_file does not start threads.
const PARALLEL_MIN: u64 = 4 << 20;
static ZERO_BLOCK: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// A SHA-256 fs-verity digest.
pub type Sha256Digest = [u8; HASH_SIZE];

/// Result of [`enable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enabled {
    /// Verity was enabled by this call.
    Now,
    /// The file already had verity (EEXIST): also success.
    AlreadyEnabled,
}

// ---------------------------------------------------------------------------------------------
// Userspace digest
// ---------------------------------------------------------------------------------------------

/// SHA-256 of `data` zero-padded to one block (`data.len() <= BLOCK_SIZE`).
fn hash_block(data: &[u8]) -> Sha256Digest {
    debug_assert!(data.len() <= BLOCK_SIZE);
    let mut h = Sha256::new();
    h.update(data);
    h.update(&ZERO_BLOCK[data.len()..]);
    h.finalize().into()
}

/// Hash of the first-level tree block covering `data` (at most 128 data blocks; only the last
/// block may be partial).
fn hash_group(data: &[u8]) -> Sha256Digest {
    debug_assert!(data.len() <= GROUP_BYTES);
    let mut level = [0u8; BLOCK_SIZE];
    for (slot, block) in level.chunks_exact_mut(HASH_SIZE).zip(data.chunks(BLOCK_SIZE)) {
        slot.copy_from_slice(&hash_block(block));
    }
    Sha256::digest(level).into()
}

/// [`hash_group`] of the `len` bytes at `off` in `f`, read in `buf`-sized pieces (small enough
/// to stay in the CPU cache between the copy and the hashing).
fn hash_group_at(f: &File, off: u64, len: usize, buf: &mut [u8]) -> io::Result<Sha256Digest> {
    debug_assert!(len <= GROUP_BYTES && buf.len() % BLOCK_SIZE == 0);
    let mut level = [0u8; BLOCK_SIZE];
    let mut slots = level.chunks_exact_mut(HASH_SIZE);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        f.read_exact_at(&mut buf[..n], off + done as u64)?;
        // Blocks first: zip must not pull a slot it will not fill.
        for (block, slot) in buf[..n].chunks(BLOCK_SIZE).zip(slots.by_ref()) {
            slot.copy_from_slice(&hash_block(block));
        }
        done += n;
    }
    Ok(Sha256::digest(level).into())
}

/// Reduces the first-level hashes (one per 128 data blocks, at least one) to the root hash.
fn reduce(mut level: Vec<Sha256Digest>) -> Sha256Digest {
    while level.len() > 1 {
        level = level
            .chunks(ARITY)
            .map(|hashes| {
                let mut h = Sha256::new();
                for x in hashes {
                    h.update(x);
                }
                h.update(&ZERO_BLOCK[hashes.len() * HASH_SIZE..]);
                h.finalize().into()
            })
            .collect();
    }
    level[0]
}

/// SHA-256 of the `struct fsverity_descriptor` for this root hash and size.
fn descriptor_digest(root: &Sha256Digest, size: u64) -> Sha256Digest {
    let mut d = [0u8; 256];
    d[0] = 1; // version
    d[1] = 1; // hash_algorithm: SHA-256
    d[2] = LOG_BLOCK_SIZE;
    d[3] = 0; // salt_size
              // d[4..8]: sig_size / reserved, zero
    d[8..16].copy_from_slice(&size.to_le_bytes());
    d[16..16 + HASH_SIZE].copy_from_slice(root); // root_hash[64]
                                                 // salt[32] and reserved[144]: zero
    Sha256::digest(d).into()
}

/// The fs-verity digest (SHA-256, 4 KiB blocks, no salt) of `data`.
pub fn digest_bytes(data: &[u8]) -> Sha256Digest {
    let root = match data.len() {
        0 => [0; HASH_SIZE],
        n if n <= BLOCK_SIZE => hash_block(data),
        _ => reduce(data.chunks(GROUP_BYTES).map(hash_group).collect()),
    };
    descriptor_digest(&root, data.len() as u64)
}

/// The fs-verity digest of a regular file's contents, read with `pread` from offset 0 up to
/// its size at the time of the call; leaf blocks are hashed on all available cores.
///
/// Fails if the file is not regular or shrinks while being read.
pub fn digest_file(f: &File) -> io::Result<Sha256Digest> {
    let md = f.metadata()?;
    if !md.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let size = md.len();
    let threads = if size < PARALLEL_MIN { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    digest_file_with(f, size, threads)
}

/// [`digest_file`] with an explicit size and thread count (tests use it to compare
/// the single-threaded and parallel paths).
pub fn digest_file_with(f: &File, size: u64, threads: usize) -> io::Result<Sha256Digest> {
    if size == 0 {
        return Ok(descriptor_digest(&[0; HASH_SIZE], 0));
    }
    if size <= BLOCK_SIZE as u64 {
        let mut buf = vec![0u8; size as usize];
        f.read_exact_at(&mut buf, 0)?;
        return Ok(descriptor_digest(&hash_block(&buf), size));
    }
    let groups = usize::try_from(size.div_ceil(GROUP_BYTES as u64))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    let mut level1 = vec![[0u8; HASH_SIZE]; groups];
    // Units of work: disjoint runs of first-level hashes, handed out in file order to whichever
    // thread asks next, so a thread slowed down by other load simply takes fewer units.
    let units = Mutex::new(level1.chunks_mut(UNIT_GROUPS).enumerate());
    let failed = AtomicBool::new(false);
    let worker = || -> io::Result<()> {
        let mut buf = vec![0u8; READ_BYTES];
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let next = units.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((unit, out)) = next else { return Ok(()) };
            let first_group = unit * UNIT_GROUPS;
            for (i, slot) in out.iter_mut().enumerate() {
                let off = ((first_group + i) * GROUP_BYTES) as u64;
                let len = (size - off).min(GROUP_BYTES as u64) as usize;
                match hash_group_at(f, off, len, &mut buf) {
                    Ok(h) => *slot = h,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }
    };
    let threads = threads.clamp(1, groups.div_ceil(UNIT_GROUPS));
    if threads == 1 {
        worker()?;
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
            let mut result = Ok(());
            for h in handles {
                let r = h.join().unwrap_or_else(|_| Err(io::Error::other("digest worker panicked")));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })?;
    }
    Ok(descriptor_digest(&reduce(level1), size))
}

/// Opens `path` read-only and returns its fs-verity digest computed in userspace.
pub fn digest_path(path: &Path) -> Result<Sha256Digest, VerityError> {
    let f = open_ro(path)?;
    digest_file(&f).map_err(|e| VerityError::Io { op: "read", source: e }.at(path))
}

/// Lower-case hex of a digest.
pub fn to_hex(d: &[u8]) -> String {
    use std::fmt::Write;
    d.iter().fold(String::with_capacity(d.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses a 64-character hex SHA-256 digest (either case).
pub(crate) fn parse_hex(s: &str) -> Result<Sha256Digest, VerityError> {
    let bad = || VerityError::BadHex(s.chars().take(80).collect());
    let b = s.as_bytes();
    if b.len() != 2 * HASH_SIZE {
        return Err(bad());
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    let mut out = [0u8; HASH_SIZE];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = (nib(pair[0]).ok_or_else(bad)? << 4) | nib(pair[1]).ok_or_else(bad)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Kernel: enable / measure
// ---------------------------------------------------------------------------------------------

/// How long to keep retrying FS_IOC_ENABLE_VERITY while the file still has writers (ETXTBSY).
const BUSY_RETRIES: u32 = 8;

/// Enables fs-verity (SHA-256, 4 KiB blocks, no salt) on `fd`, which must be open read-only.
///
/// EEXIST (already enabled) is success. ETXTBSY (some writer still has the file open) is
/// retried briefly with backoff. ENOTTY/EOPNOTSUPP (kernel or filesystem without fs-verity)
/// give [`VerityError::Unsupported`].
pub fn enable(fd: BorrowedFd<'_>) -> Result<Enabled, VerityError> {
    let fl = rustix::fs::fcntl_getfl(fd).map_err(|e| VerityError::Io { op: "fcntl(F_GETFL)", source: e.into() })?;
    if fl & rustix::fs::OFlags::RWMODE != rustix::fs::OFlags::RDONLY {
        return Err(VerityError::WritableFd);
    }
    let st = rustix::fs::fstat(fd).map_err(|e| VerityError::Io { op: "fstat", source: e.into() })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(VerityError::NotRegular);
    }
    let mut delay = Duration::from_millis(5);
    let mut attempt = 0;
    loop {
        match crate::sys::verity::enable_sha256(fd, BLOCK_SIZE as u32) {
            Ok(()) => return Ok(Enabled::Now),
            Err(rustix::io::Errno::EXIST) => return Ok(Enabled::AlreadyEnabled),
            Err(rustix::io::Errno::TXTBSY) if attempt < BUSY_RETRIES => {
                attempt += 1;
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            Err(rustix::io::Errno::TXTBSY) => return Err(VerityError::Busy),
            // ext4/f2fs refuse Merkle blocks larger than the filesystem block (EINVAL), e.g.
            // ext4 made with 1 KiB blocks, which mke2fs picks for small filesystems.
            Err(rustix::io::Errno::INVAL) => return Err(VerityError::BlockSize),
            Err(e) => return Err(map_errno("FS_IOC_ENABLE_VERITY", e)),
        }
    }
}

/// Reads the kernel's fs-verity digest of `fd` (FS_IOC_MEASURE_VERITY).
///
/// ENODATA gives [`VerityError::NotEnabled`]; ENOTTY/EOPNOTSUPP [`VerityError::Unsupported`];
/// a digest other than SHA-256 [`VerityError::WrongAlgorithm`].
pub(crate) fn measure(fd: BorrowedFd<'_>) -> Result<Sha256Digest, VerityError> {
    let (alg, digest) = crate::sys::verity::measure(fd).map_err(|e| map_errno("FS_IOC_MEASURE_VERITY", e))?;
    if u32::from(alg) != crate::sys::verity::HASH_ALG_SHA256 || digest.len() != HASH_SIZE {
        return Err(VerityError::WrongAlgorithm { alg, size: digest.len() });
    }
    let mut out = [0u8; HASH_SIZE];
    out.copy_from_slice(&digest);
    Ok(out)
}

/// Measures `fd` and compares with `expected`: a file without verity, or with another digest,
/// is an error ([`VerityError::NotEnabled`] / [`VerityError::Mismatch`]).
pub(crate) fn check_digest(fd: BorrowedFd<'_>, expected: &Sha256Digest) -> Result<(), VerityError> {
    let actual = measure(fd)?;
    if &actual != expected {
        return Err(VerityError::Mismatch { expected: to_hex(expected), actual: to_hex(&actual) });
    }
    Ok(())
}

fn map_errno(op: &'static str, e: rustix::io::Errno) -> VerityError {
    match e {
        rustix::io::Errno::NOTTY | rustix::io::Errno::OPNOTSUPP => VerityError::Unsupported,
        rustix::io::Errno::NODATA => VerityError::NotEnabled,
        e => VerityError::Io { op, source: e.into() },
    }
}

fn open_ro(path: &Path) -> Result<File, VerityError> {
    File::open(path).map_err(|e| VerityError::Io { op: "open", source: e }.at(path))
}

/// Opens `path` read-only and enables fs-verity on it; errors name the file.
pub fn enable_path(path: &Path) -> Result<Enabled, VerityError> {
    let f = open_ro(path)?;
    enable(f.as_fd()).map_err(|e| e.at(path))
}

/// Opens `path` read-only and returns the kernel's fs-verity digest; errors name the file.
pub fn measure_path(path: &Path) -> Result<Sha256Digest, VerityError> {
    let f = open_ro(path)?;
    measure(f.as_fd()).map_err(|e| e.at(path))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// ENOTTY / EOPNOTSUPP from the kernel.
    #[error("fs-verity is not supported here (kernel built without CONFIG_FS_VERITY, or a filesystem without the verity feature)")]
    Unsupported,
    /// ENODATA from FS_IOC_MEASURE_VERITY.
    #[error("fs-verity is not enabled on this file")]
    NotEnabled,
    /// ETXTBSY persisted through the retries.
    #[error("cannot enable fs-verity: the file is still open for writing (ETXTBSY)")]
    Busy,
    #[error("cannot enable fs-verity through a writable file descriptor; open the file read-only")]
    WritableFd,
    #[error("fs-verity needs a regular file")]
    NotRegular,
    /// EINVAL from FS_IOC_ENABLE_VERITY on a regular file.
    #[error("cannot enable fs-verity with 4096-byte Merkle tree blocks here (EINVAL: is the filesystem block size smaller than 4096, e.g. ext4 made with -b 1024?)")]
    BlockSize,
    #[error("kernel reports fs-verity hash algorithm {alg} with a {size}-byte digest; only SHA-256 is supported")]
    WrongAlgorithm { alg: u16, size: usize },
    #[error("fs-verity digest mismatch: expected {expected}, file has {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("not a SHA-256 hex digest (64 hex characters): {0:?}")]
    BadHex(String),
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },
    /// Any of the above, for a named file.
    #[error("{}: {inner}", path.display())]
    File { path: PathBuf, inner: Box<VerityError> },
}

impl VerityError {
    /// Attaches the file name (once).
    pub(crate) fn at(self, path: &Path) -> Self {
        match self {
            e @ VerityError::File { .. } => e,
            e => VerityError::File { path: path.to_path_buf(), inner: Box::new(e) },
        }
    }

    /// The error without its file name.
    pub fn kind(&self) -> &VerityError {
        match self {
            VerityError::File { inner, .. } => inner.kind(),
            e => e,
        }
    }

    /// True if the kernel or filesystem lacks fs-verity (callers doing best effort may warn).
    pub fn is_unsupported(&self) -> bool {
        matches!(self.kind(), VerityError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        let d = digest_bytes(b"hello");
        assert_eq!(parse_hex(&to_hex(&d)).unwrap(), d);
        assert_eq!(parse_hex(&to_hex(&d).to_uppercase()).unwrap(), d);
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex(&"g".repeat(64)).is_err());
    }

    /// Known answers from `fsverity digest` (fsverity-utils 1.5) for "" and "hello".
    #[test]
    fn known_answers() {
        assert_eq!(to_hex(&digest_bytes(b"")), "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95");
        assert_eq!(to_hex(&digest_bytes(b"hello")), "555b589c26ee43b7a2510e6c67ced9fb3190b6da6e9e683984551f5d77a763de");
    }
}
