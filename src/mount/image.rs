//! Images to mount: opened once (through the access policy, as the caller in privileged mode)
//! or built on the fly from a TOC/dumpfile by the sandboxed builder; the composefs header and
//! EROFS superblock are checked with the one header codec (`crate::erofs::format`).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::erofs::format::{HeaderError, ImageHeader};

use super::access::Access;
use super::error::MountError;
use super::request::SourceKind;

/// An opened image: the one fd that is measured, attached and mounted.
pub(crate) struct Image {
    pub(crate) file: File,
    /// The path it came from (for messages).
    pub(crate) label: PathBuf,
    /// The composefs header says some inode carries a POSIX ACL.
    pub(crate) has_acl: bool,
}

/// Opens (or builds) the image `path`. `scratch`: a private directory for a built image;
/// `objects`: where a TOC build reads objects to record their fs-verity digests.
pub(crate) fn open(
    path: &Path,
    kind: SourceKind,
    access: &dyn Access,
    scratch: &Path,
    objects: Option<&Path>,
) -> Result<Image, MountError> {
    let file = match kind {
        SourceKind::Image => File::from(access.open_source(path)?),
        _ => build(path, kind, access, scratch, objects)?,
    };
    let h = match ImageHeader::read_from(file.as_fd()) {
        Ok(h) => h,
        Err(HeaderError::Read(errno)) => {
            return Err(MountError::Source { path: path.into(), what: "reading the header", errno })
        }
        Err(e) => return Err(MountError::NotComposefs { path: path.into(), cause: e }),
    };
    Ok(Image { file, label: path.to_path_buf(), has_acl: h.has_acl() })
}

/// Builds an image from a TOC or dumpfile with the sandboxed builder (`crate::build`), into a
/// file without a name in the private `scratch` directory (`O_TMPFILE`): the returned fd is the
/// only reference (and the one that gets mounted), so nothing is left behind whatever happens
/// to the process. The input is opened through the access policy (as the caller, pinned) and
/// handed to the builder as an fd; the builder runs as `access.builder_ids()`.
fn build(
    path: &Path,
    kind: SourceKind,
    access: &dyn Access,
    scratch: &Path,
    objects: Option<&Path>,
) -> Result<File, MountError> {
    use crate::build::{BuildOptions, BuildRequest, InputFormat, Output, Source};
    let format = match kind {
        SourceKind::Toc => InputFormat::Toc,
        SourceKind::Estargz => InputFormat::Estargz,
        SourceKind::Dump => InputFormat::Dump,
        SourceKind::Image => unreachable!("images are not built"),
    };
    let src: OwnedFd = access.open_source(path)?;
    let mut req = BuildRequest::new(format);
    req.objects = objects.map(Path::to_path_buf);
    let mut opts = BuildOptions::default();
    opts.sandbox.run_as = access.builder_ids();
    let out = Output::Anonymous { dir: Some(scratch.to_path_buf()) };
    match crate::build::build_image(&req, Source::Fd(src), &out, &opts) {
        Ok((_, Some(f))) => Ok(f),
        Ok((_, None)) => unreachable!("an anonymous output always hands the image back"),
        Err(e) => Err(MountError::Build { path: path.into(), cause: e }),
    }
}
