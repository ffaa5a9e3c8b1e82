//! Attaching an image as a block device: loop devices configured with one LOOP_CONFIGURE.
//!
//! `attach` asks `/dev/loop-control` for a free device, binds the already-open image fd to it with
//! read-only + direct-io + autoclear and 4 KiB blocks in a single `LOOP_CONFIGURE`, retries (bounded)
//! when another process grabbed the same device first (EBUSY), and then verifies what the kernel
//! reports (flags, backing dev/ino, block size). Why not the `loopdev-3` crate: see docs/loop.md.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys::loopctl::{self, LoopConfig, LO_FLAGS_AUTOCLEAR, LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Block size used for the loop device (the composefs EROFS block size).
pub(crate) const BLOCK_SIZE: u32 = 4096;
/// How many times a device handed out by LOOP_CTL_GET_FREE may be lost to a racing process.
pub(crate) const MAX_ATTEMPTS: u32 = 64;

/// A loop device we configured. It has AUTOCLEAR set: once this fd is closed and nothing (an EROFS
/// superblock) holds the device open, the kernel detaches it. Dropping the value closes the fd; if
/// nothing else was set up on top, the device is released at that moment.
#[derive(Debug)]
pub struct LoopDevice {
    fd: OwnedFd,
    path: PathBuf,
    direct_io: bool,
    retries: u32,
    diskseq: Option<u64>,
}

impl LoopDevice {
    /// A stand-in for the fake kernel of the unit tests (`fd` is the fake's handle).
    #[cfg(test)]
    pub(crate) fn fake(fd: OwnedFd, path: PathBuf) -> LoopDevice {
        LoopDevice { fd, path, direct_io: false, retries: 0, diskseq: None }
    }

    /// `/dev/loopN`
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Whether the kernel kept direct I/O on (it silently drops it when the backing filesystem
    /// cannot do O_DIRECT, e.g. tmpfs).
    pub(crate) fn direct_io(&self) -> bool {
        self.direct_io
    }
    /// The disk sequence number of this binding (None on kernels before 5.15). Together with the
    /// device number it names this configuration of the device uniquely: see [`still_bound`].
    pub(crate) fn diskseq(&self) -> Option<u64> {
        self.diskseq
    }
    /// How many devices were lost to racing processes (EBUSY) before this one was configured.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

/// Attaches `image` (an fd opened read-only) to a free loop device. `name` is only a label shown
/// by `losetup` (truncated to 63 bytes).
pub fn attach(image: BorrowedFd<'_>, name: &Path) -> Result<LoopDevice, LoopError> {
    let st = rustix::fs::fstat(image).map_err(|e| LoopError::Image { errno: e })?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(LoopError::NotRegular);
    }
    let raw_fd =
        u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&image)).map_err(|_| LoopError::Image { errno: Errno::BADF })?;

    let ctl = rustix::fs::open("/dev/loop-control", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| LoopError::Control { op: "open", errno: e })?;

    let mut cfg = LoopConfig { fd: raw_fd, block_size: BLOCK_SIZE, ..Default::default() };
    cfg.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR;
    let label = name.as_os_str().as_encoded_bytes();
    let n = label.len().min(loopctl::LO_NAME_SIZE - 1);
    cfg.info.lo_file_name[..n].copy_from_slice(&label[..n]);

    let mut last = Errno::BUSY;
    for attempt in 0..MAX_ATTEMPTS {
        let number =
            loopctl::ctl_get_free(ctl.as_fd()).map_err(|e| LoopError::Control { op: "LOOP_CTL_GET_FREE", errno: e })?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let dev = match rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty()) {
            Ok(fd) => fd,
            // The node may not exist yet (udev/devtmpfs lag) or the device was removed meanwhile.
            Err(e @ (Errno::NOENT | Errno::NXIO | Errno::BUSY)) => {
                last = e;
                std::thread::yield_now();
                continue;
            }
            Err(e) => return Err(LoopError::Device { path, op: "open", errno: e }),
        };
        match loopctl::configure(dev.as_fd(), &cfg) {
            Ok(()) => {}
            Err(Errno::BUSY) => {
                // Someone configured this device between GET_FREE and CONFIGURE: take another.
                last = Errno::BUSY;
                std::thread::yield_now();
                continue;
            }
            Err(e) => return Err(LoopError::Device { path, op: "LOOP_CONFIGURE", errno: e }),
        }
        // From here on, dropping `dev` (on any error) lets AUTOCLEAR detach the device.
        let lo = LoopDevice { fd: dev, path, direct_io: false, retries: attempt, diskseq: None };
        return verify(lo, &st);
    }
    Err(LoopError::Exhausted { attempts: MAX_ATTEMPTS, last })
}

/// Checks that the device is bound to our image with the flags and block size we asked for.
fn verify(mut lo: LoopDevice, image: &rustix::fs::Stat) -> Result<LoopDevice, LoopError> {
    let undo = |lo: &LoopDevice| {
        let _ = loopctl::clr_fd(lo.fd.as_fd());
    };
    let info = match loopctl::get_status64(lo.fd.as_fd()) {
        Ok(i) => i,
        Err(e) => {
            undo(&lo);
            return Err(LoopError::Device { path: lo.path.clone(), op: "LOOP_GET_STATUS64", errno: e });
        }
    };
    let want = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    let (maj, min) = decode_kernel_dev(info.lo_device);
    let same_file = maj == rustix::fs::major(image.st_dev)
        && min == rustix::fs::minor(image.st_dev)
        && info.lo_inode == image.st_ino;
    let reason = if info.lo_flags & want != want {
        Some(format!("flags {:#x} lack read-only/autoclear", info.lo_flags))
    } else if !same_file {
        Some(format!(
            "backing file is dev {maj}:{min} ino {} but the image is dev {}:{} ino {}",
            info.lo_inode,
            rustix::fs::major(image.st_dev),
            rustix::fs::minor(image.st_dev),
            image.st_ino
        ))
    } else if info.lo_offset != 0 || info.lo_sizelimit != 0 {
        Some("offset/sizelimit not zero".to_string())
    } else {
        match loopctl::logical_block_size(lo.fd.as_fd()) {
            Ok(BLOCK_SIZE) => None,
            Ok(b) => Some(format!("block size {b}, wanted {BLOCK_SIZE}")),
            Err(e) => Some(format!("BLKSSZGET failed: {e}")),
        }
    };
    if let Some(reason) = reason {
        undo(&lo);
        return Err(LoopError::Verify { path: lo.path.clone(), reason });
    }
    lo.direct_io = info.lo_flags & LO_FLAGS_DIRECT_IO != 0;
    lo.diskseq = loopctl::diskseq(lo.fd.as_fd()).ok();
    Ok(lo)
}

/// The kernel reports `lo_device` with `huge_encode_dev` (new_encode_dev); split it.
fn decode_kernel_dev(dev: u64) -> (u32, u32) {
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// Whether `/dev/loop{number}` is still bound with disk sequence number `diskseq`, i.e. the very
/// configuration we made is still in use (with AUTOCLEAR it ends when the last user, the EROFS
/// superblock, goes away; a later configuration of the same device gets a new diskseq). Read
/// from sysfs: no device is opened, so nothing about the device changes.
pub(crate) fn still_bound(number: u32, diskseq: u64) -> bool {
    let base = PathBuf::from(format!("/sys/block/loop{number}"));
    let seq = std::fs::read_to_string(base.join("diskseq")).ok().and_then(|s| s.trim().parse::<u64>().ok());
    seq == Some(diskseq) && base.join("loop/backing_file").exists()
}

/// The device number of a `/dev/loopN` path.
pub(crate) fn number_of(path: &Path) -> Option<u32> {
    path.file_name()?.to_str()?.strip_prefix("loop")?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("image: fstat failed: {errno}")]
    Image { errno: Errno },
    #[error("image is not a regular file; only regular files can back a loop device")]
    NotRegular,
    #[error("/dev/loop-control: {op} failed: {errno}{}", control_hint(op, *errno))]
    Control { op: &'static str, errno: Errno },
    #[error("{}: {op} failed: {errno}{}", path.display(), device_hint(op, *errno))]
    Device { path: PathBuf, op: &'static str, errno: Errno },
    #[error("no loop device could be configured after {attempts} attempts (last error: {last}); other processes keep taking the free devices")]
    Exhausted { attempts: u32, last: Errno },
    #[error("{}: configured device does not match the request: {reason}", path.display())]
    Verify { path: PathBuf, reason: String },
}

/// What a /dev/loop-control failure usually means, for the one-line message.
fn control_hint(op: &str, errno: Errno) -> &'static str {
    match (op, errno) {
        ("open", Errno::NOENT | Errno::NODEV | Errno::NXIO) => {
            " (this kernel has no loop driver: CONFIG_BLK_DEV_LOOP / modprobe loop)"
        }
        ("LOOP_CTL_GET_FREE", Errno::NOSPC | Errno::NOMEM | Errno::NODEV) => {
            " (no free loop device: every loop minor is in use or the max_loop limit is reached)"
        }
        _ => "",
    }
}

fn device_hint(op: &str, errno: Errno) -> &'static str {
    match (op, errno) {
        ("LOOP_CONFIGURE", Errno::NOTTY | Errno::INVAL) => {
            " (this kernel lacks LOOP_CONFIGURE, Linux 5.8+; cfsmount does not fall back to separate ioctls)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_decoding() {
        // new_encode_dev(MKDEV(259, 0x12345)) = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
        let (maj, min) = (259u64, 0x12345u64);
        let enc = (min & 0xff) | (maj << 8) | ((min & !0xff) << 12);
        assert_eq!(decode_kernel_dev(enc), (259, 0x12345));
        assert_eq!(decode_kernel_dev((8 << 8) | 1), (8, 1));
    }
}
