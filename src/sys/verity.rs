//! fs-verity ioctls (linux/fsverity.h): FS_IOC_ENABLE_VERITY and FS_IOC_MEASURE_VERITY.
//!
//! Thin, typed wrappers; policy (retries, error meaning) lives in `crate::fsverity`.

use rustix::fd::BorrowedFd;
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

/// `FS_VERITY_HASH_ALG_SHA256`.
pub const HASH_ALG_SHA256: u32 = 1;

/// `struct fsverity_enable_arg` (128 bytes).
#[repr(C)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// The fixed header of `struct fsverity_digest`; the digest bytes follow it.
#[repr(C)]
struct DigestHeader {
    digest_algorithm: u16,
    digest_size: u16,
}

/// Header plus room for the largest digest the kernel can return (SHA-512).
#[repr(C)]
struct DigestBuf {
    hdr: DigestHeader,
    digest: [u8; MAX_DIGEST],
}

const MAX_DIGEST: usize = 64;

const FS_IOC_ENABLE_VERITY: Opcode = opcode::write::<EnableArg>(b'f', 133);
// The kernel's opcode encodes the size of the header only (the digest is a flexible array).
const FS_IOC_MEASURE_VERITY: Opcode = opcode::read_write::<DigestHeader>(b'f', 134);

// Cross-checks against the values in <linux/fsverity.h> as compiled by C.
const _: () = assert!(std::mem::size_of::<EnableArg>() == 128);
const _: () = assert!(std::mem::size_of::<DigestHeader>() == 4);
const _: () = assert!(FS_IOC_ENABLE_VERITY as u64 == 0x4080_6685);
const _: () = assert!(FS_IOC_MEASURE_VERITY as u64 == 0xc004_6686);

/// Enables fs-verity on `fd` with SHA-256, the given Merkle block size, no salt and no signature.
///
/// The kernel requires `fd` to be open read-only with no writers to the file anywhere.
pub fn enable_sha256(fd: BorrowedFd<'_>, block_size: u32) -> rustix::io::Result<()> {
    let arg = EnableArg {
        version: 1,
        hash_algorithm: HASH_ALG_SHA256,
        block_size,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: FS_IOC_ENABLE_VERITY is an _IOW ioctl whose argument is a pointer to
    // `struct fsverity_enable_arg`; `EnableArg` has exactly that #[repr(C)] layout (size checked
    // above). The kernel only reads it; salt_ptr/sig_ptr are 0 with sizes 0, so it dereferences
    // no other user memory. `Setter` keeps `arg` alive for the duration of the call.
    unsafe { ioctl(fd, Setter::<FS_IOC_ENABLE_VERITY, EnableArg>::new(arg)) }
}

/// Reads the file's fs-verity digest: returns (hash algorithm number, digest bytes).
pub fn measure(fd: BorrowedFd<'_>) -> rustix::io::Result<(u16, Vec<u8>)> {
    let mut buf = DigestBuf {
        hdr: DigestHeader { digest_algorithm: 0, digest_size: MAX_DIGEST as u16 },
        digest: [0; MAX_DIGEST],
    };
    // SAFETY: FS_IOC_MEASURE_VERITY takes a pointer to `struct fsverity_digest`: the kernel reads
    // digest_size (the capacity of the trailing array), fails with EOVERFLOW if the digest does
    // not fit, else writes the header and at most digest_size bytes after it. `DigestBuf` is a
    // #[repr(C)] header immediately followed by MAX_DIGEST bytes, and digest_size says MAX_DIGEST,
    // so every write lands inside `buf`, which is exclusively borrowed for the call.
    unsafe { ioctl(fd, Updater::<FS_IOC_MEASURE_VERITY, DigestBuf>::new(&mut buf))? };
    let len = usize::from(buf.hdr.digest_size).min(MAX_DIGEST);
    Ok((buf.hdr.digest_algorithm, buf.digest[..len].to_vec()))
}
