//! Loop device ioctls (LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LOOP_GET_STATUS64, BLKSSZGET) over rustix.
//!
//! Only the raw ioctl calls live here; policy (retries, verification) is in `crate::mount::loopdev`.
//! Struct layouts follow `<linux/loop.h>` (UAPI, stable since Linux 5.8 for `loop_config`).

use rustix::fd::BorrowedFd;
use rustix::io;
use rustix::ioctl::{ioctl, Getter, Ioctl, IoctlOutput, NoArg, Opcode, Setter};

/// `LO_FLAGS_READ_ONLY`
pub(crate) const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`
pub(crate) const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`
pub(crate) const LO_FLAGS_DIRECT_IO: u32 = 16;
/// `LO_NAME_SIZE`
pub(crate) const LO_NAME_SIZE: usize = 64;

const LOOP_CLR_FD: Opcode = 0x4C01;
const LOOP_GET_STATUS64: Opcode = 0x4C05;
const LOOP_CONFIGURE: Opcode = 0x4C0A;
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
/// `BLKSSZGET` = `_IO(0x12, 104)`: logical block size of a block device.
const BLKSSZGET: Opcode = 0x1268;
/// `_IOR(0x12, 128, __u64)`: the block device's disk sequence number (Linux 5.15+).
const BLKGETDISKSEQ: Opcode = 0x8008_1280;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct LoopInfo64 {
    pub(crate) lo_device: u64,
    pub(crate) lo_inode: u64,
    pub(crate) lo_rdevice: u64,
    pub(crate) lo_offset: u64,
    pub(crate) lo_sizelimit: u64,
    pub(crate) lo_number: u32,
    pub(crate) lo_encrypt_type: u32,
    pub(crate) lo_encrypt_key_size: u32,
    pub(crate) lo_flags: u32,
    pub(crate) lo_file_name: [u8; LO_NAME_SIZE],
    pub(crate) lo_crypt_name: [u8; LO_NAME_SIZE],
    pub(crate) lo_encrypt_key: [u8; 32],
    pub(crate) lo_init: [u64; 2],
}

impl Default for LoopInfo64 {
    fn default() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` from `<linux/loop.h>` (the LOOP_CONFIGURE argument).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct LoopConfig {
    pub(crate) fd: u32,
    pub(crate) block_size: u32,
    pub(crate) info: LoopInfo64,
    pub(crate) reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// `LOOP_CTL_GET_FREE`: the ioctl's return value is the device number.
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument (the pointer is ignored by the kernel) and reports
// its result only through the return value, which `output_from_ptr` converts.
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::null_mut()
    }
    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut std::ffi::c_void) -> io::Result<u32> {
        u32::try_from(out).map_err(|_| io::Errno::RANGE)
    }
}

/// `ioctl(loop_control, LOOP_CTL_GET_FREE)`: finds (or creates) a free loop device number.
pub(crate) fn ctl_get_free(loop_control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: `GetFree` describes LOOP_CTL_GET_FREE exactly (no argument, int result); the caller
    // passes /dev/loop-control (any other fd rejects the opcode with an error, no memory is touched).
    unsafe { ioctl(loop_control, GetFree) }
}

/// `ioctl(loop_dev, LOOP_CONFIGURE, &config)`: binds the backing fd and sets flags, block size and
/// name in one atomic step (Linux 5.8+).
pub(crate) fn configure(loop_dev: BorrowedFd<'_>, config: &LoopConfig) -> io::Result<()> {
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, whose layout `LoopConfig` reproduces
    // (size checked at compile time); the kernel only reads from the pointer.
    unsafe { ioctl(loop_dev, Setter::<LOOP_CONFIGURE, LoopConfig>::new(*config)) }
}

/// `ioctl(loop_dev, LOOP_GET_STATUS64, &info)`.
pub(crate) fn get_status64(loop_dev: BorrowedFd<'_>) -> io::Result<LoopInfo64> {
    // SAFETY: LOOP_GET_STATUS64 writes exactly one `struct loop_info64`, reproduced by `LoopInfo64`.
    unsafe { ioctl(loop_dev, Getter::<LOOP_GET_STATUS64, LoopInfo64>::new()) }
}

/// `ioctl(loop_dev, LOOP_CLR_FD)`: detaches the backing file (used only to undo our own attach).
pub(crate) fn clr_fd(loop_dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { ioctl(loop_dev, NoArg::<LOOP_CLR_FD>::new()) }
}

/// `ioctl(blockdev, BLKGETDISKSEQ, &u64)`: a number the kernel never hands out twice per boot; a
/// loop device gets a new one each time it is configured.
pub(crate) fn diskseq(dev: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: BLKGETDISKSEQ writes one `__u64`.
    unsafe { ioctl(dev, Getter::<BLKGETDISKSEQ, u64>::new()) }
}

/// `ioctl(blockdev, BLKSSZGET, &int)`: logical sector size.
pub(crate) fn logical_block_size(dev: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: BLKSSZGET writes one C `int`.
    let v = unsafe { ioctl(dev, Getter::<BLKSSZGET, std::ffi::c_int>::new())? };
    u32::try_from(v).map_err(|_| io::Errno::RANGE)
}
