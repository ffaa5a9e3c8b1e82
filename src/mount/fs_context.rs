//! ONE filesystem-context type for the new mount API: `fsopen` + `fsconfig` (strings, flags,
//! create) + `fsmount`, used for EROFS and overlay alike. Every failure drains the messages the
//! kernel queued on the context (`e overlay: ...`) into the error, so a refused option or a
//! failed creation says what the kernel said.

use std::os::fd::{AsFd, OwnedFd};

use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use super::kernel::Kernel;

/// The step of the fs-context sequence that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FsStep {
    Open,
    Set(String),
    Create,
    Mount,
}

/// A failed step, with the errno and the kernel's log of the context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}", self.step_text(), self.hint(), self.log_text())]
pub(crate) struct FsError {
    pub(crate) fstype: &'static str,
    pub(crate) step: FsStep,
    pub(crate) errno: Errno,
    /// Messages the kernel queued on the context, oldest first.
    pub(crate) log: Vec<String>,
}

impl FsError {
    fn step_text(&self) -> String {
        match &self.step {
            FsStep::Open => format!("fsopen({}) failed: {}", self.fstype, self.errno),
            FsStep::Set(key) => format!("option {key} refused: {}", self.errno),
            FsStep::Create => format!("creating the filesystem failed: {}", self.errno),
            FsStep::Mount => format!("fsmount failed: {}", self.errno),
        }
    }

    fn hint(&self) -> &'static str {
        match (&self.step, self.errno, self.fstype) {
            (FsStep::Open, Errno::NOSYS, _) => " (this kernel lacks the new mount API: fsopen needs Linux 5.2+)",
            (FsStep::Open, Errno::NODEV, "erofs") => " (this kernel has no EROFS: CONFIG_EROFS_FS / modprobe erofs)",
            (FsStep::Open, Errno::NODEV, "overlay") => {
                " (this kernel has no overlayfs: CONFIG_OVERLAY_FS / modprobe overlay)"
            }
            _ => "",
        }
    }

    fn log_text(&self) -> String {
        if self.log.is_empty() {
            String::new()
        } else {
            format!(" (kernel: {})", self.log.join("; "))
        }
    }
}

/// An open filesystem context (`fsopen`), configured step by step and mounted detached.
pub(crate) struct FsContext<'k> {
    kernel: &'k dyn Kernel,
    fd: OwnedFd,
    fstype: &'static str,
}

impl<'k> FsContext<'k> {
    pub(crate) fn open(kernel: &'k dyn Kernel, fstype: &'static str) -> Result<FsContext<'k>, FsError> {
        let fd = kernel.fsopen(fstype).map_err(|errno| FsError { fstype, step: FsStep::Open, errno, log: vec![] })?;
        Ok(FsContext { kernel, fd, fstype })
    }

    fn fail(&self, step: FsStep, errno: Errno) -> FsError {
        FsError { fstype: self.fstype, step, errno, log: self.kernel.fs_log(self.fd.as_fd()) }
    }

    /// `FSCONFIG_SET_STRING key=value`.
    pub(crate) fn set(&self, key: &str, value: &str) -> Result<(), FsError> {
        self.kernel.fsconfig_set_string(self.fd.as_fd(), key, value).map_err(|e| self.fail(FsStep::Set(key.into()), e))
    }

    /// `FSCONFIG_SET_FLAG key`.
    pub(crate) fn set_flag(&self, key: &str) -> Result<(), FsError> {
        self.kernel.fsconfig_set_flag(self.fd.as_fd(), key).map_err(|e| self.fail(FsStep::Set(key.into()), e))
    }

    /// `FSCONFIG_CMD_CREATE`: the superblock is made here (and the layers are looked up).
    pub(crate) fn create(&self) -> Result<(), FsError> {
        self.kernel.fsconfig_create(self.fd.as_fd()).map_err(|e| self.fail(FsStep::Create, e))
    }

    /// `fsmount`: a detached mount with `attrs`, alive as long as the returned fd (or whatever
    /// it is attached to or stacked under).
    pub(crate) fn mount(&self, attrs: MountAttrFlags) -> Result<OwnedFd, FsError> {
        self.kernel.fsmount(self.fd.as_fd(), attrs).map_err(|e| self.fail(FsStep::Mount, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_step_the_errno_and_the_kernel_log() {
        let e = FsError { fstype: "erofs", step: FsStep::Open, errno: Errno::NODEV, log: vec![] };
        assert!(e.to_string().contains("this kernel has no EROFS"), "{e}");
        let e = FsError { fstype: "overlay", step: FsStep::Open, errno: Errno::NOSYS, log: vec![] };
        assert!(e.to_string().contains("lacks the new mount API"), "{e}");
        let e = FsError {
            fstype: "overlay",
            step: FsStep::Set("lowerdir+".into()),
            errno: Errno::INVAL,
            log: vec!["e overlay: Unknown parameter 'lowerdir+'".into()],
        };
        assert_eq!(
            e.to_string(),
            "option lowerdir+ refused: Invalid argument (os error 22) (kernel: e overlay: Unknown parameter 'lowerdir+')"
        );
    }
}
