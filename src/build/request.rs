//! What a build is asked to do ([`BuildRequest`], crossing into the sandboxed child), where its
//! input comes from and its image goes ([`Source`], [`Output`]), the parent-side settings
//! ([`BuildOptions`]), what it produced ([`BuildInfo`]) and why it failed ([`BuildError`]).

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use thiserror::Error;

use crate::erofs::format::HeaderError;
use crate::erofs::writer::WriteOptions;
use crate::input::dir::WalkOptions;
use crate::input::toc::{TocOptions, MAX_INPUT_BYTES};
use crate::sandbox::{SandboxConfig, SandboxError};
use crate::tree::Limits;

/// Input format of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// zstd:chunked TOC JSON (containers/storage).
    Toc,
    /// eStargz `stargz.index.json`.
    Estargz,
    /// composefs dumpfile.
    Dump,
    /// A directory on disk (walked by the parent; see [`super::build_image`]).
    Dir,
    /// A composefs image, read with the hostile-image reader and written again with its own
    /// format version (`composefs-dump`).
    Image,
}

/// Everything the untrusted stage needs to know (moved into the sandboxed child).
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub format: InputFormat,
    pub write: WriteOptions,
    /// Keep OCI whiteout files (`.wh.*`) literal instead of converting them (TOC inputs).
    pub keep_whiteouts: bool,
    /// Parse dumpfiles strictly (the reference's `CFS_PARSE_STRICT`); default true.
    pub strict_dump: bool,
    /// Directory of content objects (`xx/yyyy...`): compute and record each referenced
    /// object's fs-verity digest (TOC inputs; the objects must exist).
    pub objects: Option<PathBuf>,
    /// Content store for directory input.
    pub digest_store: Option<PathBuf>,
    /// What a directory walk takes from the filesystem (directory input).
    pub walk: WalkOptions,
    /// Largest input accepted, in bytes.
    pub max_input_bytes: u64,
}

impl BuildRequest {
    pub fn new(format: InputFormat) -> Self {
        BuildRequest {
            format,
            write: WriteOptions::default(),
            keep_whiteouts: false,
            strict_dump: true,
            objects: None,
            digest_store: None,
            walk: WalkOptions::default(),
            max_input_bytes: match format {
                InputFormat::Image => crate::erofs::reader::MAX_IMAGE_BYTES,
                _ => MAX_INPUT_BYTES as u64,
            },
        }
    }

    pub(crate) fn toc_options(&self) -> TocOptions {
        TocOptions {
            limits: Limits::default(),
            keep_whiteouts: self.keep_whiteouts,
            max_input_bytes: usize::try_from(self.max_input_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// Bytes of the image.
    pub image_size: u64,
    /// composefs format version written.
    pub version: u32,
}

/// Where the input comes from (parent side).
#[derive(Debug)]
pub enum Source {
    Path(PathBuf),
    Stdin,
    /// An already open descriptor (e.g. opened by the privileged helper as the caller).
    Fd(OwnedFd),
}

/// Where the image goes (parent side).
#[derive(Debug, Clone)]
pub enum Output {
    /// A file, replaced atomically (a temporary file in its directory is renamed into place).
    Path(PathBuf),
    Stdout,
    /// A file without a name, handed back by [`super::build_image`]: an `O_TMPFILE` in `dir`
    /// (for an image that will be mounted: EROFS needs a disk filesystem's page cache, not
    /// tmpfs/memfd pages), or a memfd without `dir`. Nothing is left behind whatever happens
    /// to the process.
    Anonymous {
        dir: Option<PathBuf>,
    },
    /// Where the reference `mkcomposefs` would write IMAGE, but only once the image is built and
    /// validated: a plain path (absent, or a regular file) is replaced atomically (temporary file
    /// in its directory, renamed); anything else (`/proc/self/fd/N`, `/dev/stdout`, a symlink, a
    /// FIFO, a device, or a regular file in a directory without room for a temporary file) is
    /// opened like `fopen(IMAGE, "w")` and written in place. The image is handed back (a memfd,
    /// positioned at 0). Used by the drop-in personalities (docs/dropin.md).
    Reference(PathBuf),
}

/// Parent-side settings that are not part of the untrusted request.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub sandbox: SandboxConfig,
    /// Enable fs-verity on the written image ([`Output::Path`] only) before it is renamed into
    /// place; failure (e.g. a filesystem without verity) fails the build and leaves nothing.
    pub enable_verity: bool,
}

/// Why a build failed (one line each; input errors name the entry, line and field, parent-side
/// errors the step and path).
#[derive(Debug, Error)]
pub enum BuildError {
    // The untrusted stage.
    #[error("{0}")]
    Toc(#[from] crate::input::toc::TocError),
    #[error("{0}")]
    Dump(#[from] crate::input::dump::DumpError),
    #[error("{0}")]
    Write(#[source] io::Error),
    #[error("{0}")]
    Image(#[from] crate::erofs::writer::WriteError),
    #[error("reading input: {0}")]
    Read(#[source] io::Error),
    #[error("{0}")]
    Input(String),
    #[error("object {}: {reason}", path.display())]
    Object { path: PathBuf, reason: String },
    #[error("invalid composefs image: {0}")]
    ImageRead(#[from] crate::erofs::reader::ReadError),
    // The parent side.
    #[error("--from-dir needs a directory path as SOURCE")]
    DirNeedsPath,
    #[error("{}: is a directory (use --from-dir)", path.display())]
    IsDirectory { path: PathBuf },
    #[error("{0}")]
    Dir(#[from] crate::input::dir::DirError),
    #[error("{step}: {source}")]
    Step { step: String, source: io::Error },
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("the sandboxed builder returned an invalid image: {0}")]
    Invalid(#[from] HeaderError),
    #[error("enabling fs-verity on the image (--enable-verity): {0}")]
    Verity(#[source] crate::fsverity::VerityError),
}

impl BuildError {
    /// A parent-side I/O step that failed (`step` names it, with the path where there is one).
    pub(crate) fn step(step: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
        let step = step.into();
        move |source| BuildError::Step { step, source }
    }
}
