//! Atomic output: the image is written to a file nobody else names (a temporary file in
//! OUTPUT's directory, an `O_TMPFILE`, or a memfd) and only a validated image is made visible
//! (fchmod 0644, fsync, optionally fs-verity, rename into place). On any failure the temporary
//! file is removed: nothing is ever left at OUTPUT.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

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
            Output::Stdout | Output::Anonymous { dir: None } | Output::Reference(_) => {
                TempImage { file: memfd()?, guard: None }
            }
            Output::Anonymous { dir: Some(dir) } => TempImage { file: unnamed_in(dir)?, guard: None },
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
            Output::Anonymous { .. } => {
                let mut f = file;
                f.rewind().map_err(BuildError::step("rewinding the image"))?;
                Ok(Some(f))
            }
            Output::Reference(p) => {
                let mut f = file;
                f.rewind().map_err(BuildError::step("rewinding the image"))?;
                place_like_fopen(&mut f, p)?;
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

/// Put the finished image `img` where `fopen(path, "w")` would write it ([`Output::Reference`]):
/// atomically for a plain path, in place otherwise.
fn place_like_fopen(img: &mut File, path: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let plain = match std::fs::symlink_metadata(path) {
        Ok(md) => md.file_type().is_file(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    };
    if plain {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match create_temp(&dir) {
            Ok((mut tmp, tp)) => {
                // Removes the temporary file on every error below.
                let mut guard = UnlinkOnDrop(Some(tp.clone()));
                io::copy(img, &mut tmp).map_err(BuildError::step(format!("writing {}", tp.display())))?;
                // What fopen's 0666 gives under the usual umask; a replaced file is a new inode
                // (the reference truncates the old one in place).
                tmp.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(BuildError::step("fchmod"))?;
                tmp.sync_all().map_err(BuildError::step("fsync"))?;
                std::fs::rename(&tp, path)
                    .map_err(BuildError::step(format!("renaming the image to {}", path.display())))?;
                guard.0 = None;
                return Ok(());
            }
            // No room for a temporary file, but the file itself may be writable.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)) && path.exists() => {}
            Err(e) => return Err(BuildError::step(format!("creating a temporary file in {}", dir.display()))(e)),
        }
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(BuildError::step(format!("failed to open output file {}", path.display())))?;
    io::copy(img, &mut out).map_err(BuildError::step(format!("writing {}", path.display())))?;
    out.flush().map_err(BuildError::step(format!("writing {}", path.display())))
}

fn memfd() -> Result<File, BuildError> {
    let fd = rustix::fs::memfd_create("cfsmount-image", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| BuildError::step("memfd_create")(e.into()))?;
    Ok(File::from(fd))
}

/// A file without a name in `dir`: `O_TMPFILE`, or where the filesystem lacks it, a temporary
/// file unlinked at once.
fn unnamed_in(dir: &Path) -> Result<File, BuildError> {
    use rustix::fs::{Mode, OFlags};
    let step = || format!("creating an unnamed file in {}", dir.display());
    match rustix::fs::open(dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(File::from(fd)),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => {
            let (file, tp) = create_temp(dir).map_err(BuildError::step(step()))?;
            std::fs::remove_file(&tp).map_err(BuildError::step(step()))?;
            Ok(file)
        }
        Err(e) => Err(BuildError::step(step())(e.into())),
    }
}
