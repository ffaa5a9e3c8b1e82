//! Atomic output: the image is written to a file nobody else names (a temporary file in
//! OUTPUT's directory, or a memfd for stdout) and only a validated image is made visible
//! (fchmod 0644, fsync, optionally fs-verity, rename into place). On any failure the temporary
//! file is removed: nothing is ever left at OUTPUT.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::{BuildError, Output};
use crate::input::dir::{create_temp, UnlinkOnDrop};

/// The image while it is being written and checked.
pub(super) struct TempImage {
    file: File,
    /// Removes the temporary file unless it was renamed into place (path output only).
    guard: Option<UnlinkOnDrop>,
}

impl TempImage {
    pub(super) fn new(output: &Output) -> Result<TempImage, BuildError> {
        Ok(match output {
            Output::Path(p) => {
                let dir = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let (file, tp) = create_temp(&dir)
                    .map_err(BuildError::step(format!("creating a temporary file in {}", dir.display())))?;
                TempImage { file, guard: Some(UnlinkOnDrop(Some(tp))) }
            }
            Output::Stdout => {
                let fd = rustix::fs::memfd_create("cfsmount-image", rustix::fs::MemfdFlags::CLOEXEC)
                    .map_err(|e| BuildError::step("memfd_create")(e.into()))?;
                TempImage { file: File::from(fd), guard: None }
            }
        })
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Make the (validated) image visible at `output`. A path output returns the final file,
    /// open read-only and positioned at 0; stdout gets a copy.
    pub(super) fn commit(self, output: &Output, enable_verity: bool) -> Result<Option<File>, BuildError> {
        let TempImage { file, guard } = self;
        match output {
            Output::Path(p) => {
                // `guard` removes the temporary file on every error below.
                let mut guard = guard.expect("path output has a temporary file");
                let tp = guard.0.clone().expect("temporary path");
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                    .map_err(BuildError::step("fchmod"))?;
                file.sync_all().map_err(BuildError::step("fsync"))?;
                let file = if enable_verity {
                    // fs-verity refuses files with writers: close ours, reopen read-only.
                    drop(file);
                    let ro = File::open(&tp).map_err(BuildError::step(format!("reopening {}", tp.display())))?;
                    crate::fsverity::enable(ro.as_fd()).map_err(|e| BuildError::Verity(e.at(p)))?;
                    ro
                } else {
                    file
                };
                std::fs::rename(&tp, p).map_err(BuildError::step(format!("renaming the image to {}", p.display())))?;
                guard.0 = None;
                let mut f = file;
                f.rewind().map_err(BuildError::step("rewinding the image"))?;
                Ok(Some(f))
            }
            Output::Stdout => {
                let mut f = file;
                f.rewind().map_err(BuildError::step("rewinding the image"))?;
                let stdout = io::stdout();
                let mut lock = stdout.lock();
                io::copy(&mut f, &mut lock).map_err(BuildError::step("writing the image to stdout"))?;
                lock.flush().map_err(BuildError::step("writing the image to stdout"))?;
                Ok(None)
            }
        }
    }
}
