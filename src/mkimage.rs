//! `mkimage`: reads an input format, builds the tree, writes the EROFS image (through the sandbox).
//!
//! Split of work:
//! - [`build_from_reader`] is the pure, untrusted stage: bytes in (TOC, eStargz TOC, dumpfile),
//!   parse + validate + write the image out. It needs no privileges and no paths (except
//!   `--objects`, read through the landlock-granted directory). It is what runs in the sandbox.
//! - [`build_image_file`] is the parent side: opens the source and a temporary output file next
//!   to OUTPUT, runs the untrusted stage confined ([`crate::sandbox::run_confined`]), checks the
//!   composefs/EROFS header of what came back, and renames it into place. On any failure the
//!   temporary file is removed: nothing is ever left at OUTPUT.
//! - Directory input (`--from-dir`) is walked by the parent (with the caller's permissions, no
//!   symlinks followed, names validated as for every input), optionally copying contents into
//!   `--digest-store`; the image is then written from that tree in the sandbox.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::erofs::format::{ComposefsHeader, SuperBlock, COMPOSEFS_MAGIC, EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET};
use crate::erofs::writer::{effective_version, write_image, WriteOptions};
use crate::input::dir::{create_temp, DirOptions, UnlinkOnDrop};
use crate::input::dump::DumpOptions;
use crate::input::toc::{Flavor, TocOptions, MAX_INPUT_BYTES};
use crate::sandbox::SandboxConfig;
use crate::tree::{Limits, Tree};

/// Input format of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputFormat {
    /// zstd:chunked TOC JSON (containers/storage).
    Toc,
    /// eStargz `stargz.index.json`.
    Estargz,
    /// composefs dumpfile.
    Dump,
    /// A directory on disk (parent-side only; see [`build_image_file`]).
    Dir,
    /// A composefs image, read with the hostile-image reader and written again with its own
    /// format version (`composefs-dump`).
    Image,
}

/// Everything the untrusted stage needs to know (crosses into the sandboxed child).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub walk: crate::input::dir::WalkOptions,
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
            walk: Default::default(),
            max_input_bytes: if format == InputFormat::Image {
                crate::erofs::reader::MAX_IMAGE_BYTES
            } else {
                MAX_INPUT_BYTES as u64
            },
        }
    }

    fn toc_options(&self) -> TocOptions {
        TocOptions {
            limits: Limits::default(),
            keep_whiteouts: self.keep_whiteouts,
            max_input_bytes: usize::try_from(self.max_input_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Bytes of the image.
    pub image_size: u64,
    /// composefs format version written.
    pub version: u32,
    /// Tree nodes (known only where the tree was built in this process).
    pub entries: Option<usize>,
}

/// Parse `input` according to `req` into a finalized tree (no image written).
pub fn parse_input(req: &BuildRequest, input: &[u8]) -> Result<Tree, BuildError> {
    match req.format {
        InputFormat::Toc => Ok(crate::input::toc::parse_flavor(input, &req.toc_options(), Flavor::ZstdChunked)?),
        InputFormat::Estargz => Ok(crate::input::toc::parse_flavor(input, &req.toc_options(), Flavor::Estargz)?),
        InputFormat::Dump => {
            Ok(crate::input::dump::parse(input, &DumpOptions { strict: req.strict_dump, limits: Limits::default() })?)
        }
        InputFormat::Dir => Err(BuildError::Input("directory input cannot be read from a stream".into())),
        InputFormat::Image => Ok(crate::erofs::reader::read_image(input)?),
    }
}

/// The untrusted stage: read the whole input (bounded), parse, validate, optionally record the
/// objects' fs-verity digests, and write the image to `out`.
pub fn build_from_reader(
    req: &BuildRequest,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<BuildInfo, BuildError> {
    build_from_reader_sized(req, input, 0, out)
}

/// [`build_from_reader`] with the input's expected size (0 if unknown) to read it in one buffer.
pub fn build_from_reader_sized(
    req: &BuildRequest,
    input: &mut dyn Read,
    size_hint: u64,
    out: &mut dyn Write,
) -> Result<BuildInfo, BuildError> {
    let mut buf = Vec::with_capacity(size_hint.min(req.max_input_bytes).saturating_add(1) as usize);
    input.take(req.max_input_bytes.saturating_add(1)).read_to_end(&mut buf).map_err(BuildError::Read)?;
    if buf.len() as u64 > req.max_input_bytes {
        return Err(BuildError::Input(format!("input is larger than the limit of {} bytes", req.max_input_bytes)));
    }
    if req.format == InputFormat::Image {
        // Written again as it was: with the image's own format version.
        let (tree, info) = crate::erofs::reader::read_image_with(&buf, &Default::default())?;
        drop(buf);
        let v = info.composefs_version;
        return write_tree(&tree, &WriteOptions { min_version: v, max_version: v }, out);
    }
    let mut tree = parse_input(req, &buf)?;
    drop(buf);
    if let Some(dir) = &req.objects {
        record_object_digests(&mut tree, dir, 1)?;
    }
    write_tree(&tree, &req.write, out)
}

/// Write `tree` as an image to `out` (buffered), returning its size and version.
pub fn write_tree(tree: &Tree, opts: &WriteOptions, out: &mut dyn Write) -> Result<BuildInfo, BuildError> {
    let version = effective_version(tree, opts)?;
    let mut counter = Counter { inner: BufWriter::with_capacity(1 << 20, out), n: 0 };
    write_image(tree, opts, &mut counter)?;
    counter.inner.flush().map_err(BuildError::Write)?;
    Ok(BuildInfo { image_size: counter.n, version, entries: Some(tree.len()) })
}

struct Counter<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// For every external regular file, compute the fs-verity digest of its object under `dir`
/// (`dir/PAYLOAD`, opened without following symlinks) and record it. Objects shared by several
/// files are read once. `threads` is passed to the digest (1 inside the sandbox).
pub fn record_object_digests(tree: &mut Tree, dir: &Path, threads: usize) -> Result<(), BuildError> {
    let mut cache: std::collections::HashMap<Vec<u8>, [u8; 32]> = std::collections::HashMap::new();
    for i in 0..tree.nodes.len() {
        let e = &tree.nodes[i].entry;
        if !e.inode.is_reg() || e.inode.size == 0 || e.content.is_some() || e.fsverity_digest.is_some() {
            continue;
        }
        let Some(payload) = e.payload.clone() else { continue };
        let size = e.inode.size;
        let d = match cache.get(&payload) {
            Some(d) => *d,
            None => {
                use std::os::unix::ffi::OsStrExt;
                let path = dir.join(std::ffi::OsStr::from_bytes(&payload));
                let err = |reason: String| BuildError::Object { path: path.clone(), reason };
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| err(e.to_string()))?;
                let md = f.metadata().map_err(|e| err(e.to_string()))?;
                if !md.is_file() {
                    return Err(err("not a regular file".into()));
                }
                if md.len() != size {
                    return Err(err(format!("object is {} bytes but the entry says {size}", md.len())));
                }
                let d = crate::fsverity::digest_file_with(&f, size, threads).map_err(|e| err(e.to_string()))?;
                cache.insert(payload, d);
                d
            }
        };
        tree.nodes[i].entry.fsverity_digest = Some(d);
    }
    Ok(())
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
    Path(PathBuf),
    Stdout,
    /// An anonymous file (memfd), handed back to the caller.
    Anonymous,
    /// Where the reference `mkcomposefs` would write IMAGE, but only once the image is built
    /// and validated: a plain path (absent, or a regular file) is replaced atomically (temporary
    /// file in its directory, renamed); anything else (`/proc/self/fd/N`, `/dev/stdout`, a
    /// symlink, a FIFO, a device, or a regular file in a directory without room for a temporary
    /// file) is opened like `fopen(IMAGE, "w")` and written in place. The image is handed back.
    Reference(PathBuf),
}

/// Parent-side settings that are not part of the untrusted request.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub sandbox: SandboxConfig,
    /// Enable fs-verity on the written image (path output only) before it is renamed into
    /// place; failure (e.g. a filesystem without verity) fails the build and leaves nothing.
    pub enable_verity: bool,
}

/// Build `source` into the image file `output` (temporary file in the same directory, renamed
/// into place on success; removed on failure). The untrusted stage runs sandboxed.
pub fn build_image_file(req: &BuildRequest, source: Source, output: &Path) -> anyhow::Result<BuildInfo> {
    build_image(req, source, &Output::Path(output.to_path_buf()), &BuildOptions::default()).map(|(info, _)| info)
}

/// [`build_image_file`] with any [`Output`] and explicit parent-side options. Returns the build
/// info and, for a path output, the final file (open read-only, positioned at 0).
pub fn build_image(
    req: &BuildRequest,
    source: Source,
    output: &Output,
    bopts: &BuildOptions,
) -> anyhow::Result<(BuildInfo, Option<File>)> {
    // The image is first written to an unnamed-to-the-user temporary file.
    let (tmp, guard) = match output {
        Output::Path(p) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let (f, tp) =
                create_temp(&dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            (f, Some(UnlinkOnDrop(Some(tp))))
        }
        Output::Stdout | Output::Anonymous | Output::Reference(_) => {
            let fd =
                rustix::fs::memfd_create("cfsmount-image", rustix::fs::MemfdFlags::CLOEXEC).context("memfd_create")?;
            (File::from(fd), None)
        }
    };

    let mut cfg = bopts.sandbox.clone();
    let tree_from_dir = match req.format {
        InputFormat::Dir => {
            let Source::Path(src) = &source else {
                anyhow::bail!("--from-dir needs a directory path as SOURCE");
            };
            let dopts = DirOptions { digest_store: req.digest_store.clone(), walk: req.walk, ..DirOptions::default() };
            Some(crate::input::dir::build_tree(src, &dopts)?)
        }
        _ => None,
    };
    let input: OwnedFd = match source {
        Source::Path(p) if tree_from_dir.is_none() => {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&p)
                .with_context(|| format!("opening {}", p.display()))?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                anyhow::bail!("{}: is a directory (use --from-dir)", p.display());
            }
            f.into()
        }
        Source::Path(_) => File::open("/dev/null").context("opening /dev/null")?.into(),
        Source::Stdin => io::stdin().as_fd().try_clone_to_owned().context("duplicating stdin")?,
        Source::Fd(fd) => fd,
    };
    if let Some(objects) = &req.objects {
        cfg.read_dirs.push(objects.clone());
        if rustix::process::getuid().is_root() && cfg.run_as.is_none() {
            // The objects of a root-owned store are typically readable by root only: the child
            // keeps uid 0 (without any capability, under landlock limited to this directory).
            cfg.run_as = Some((0, 0));
        }
    }
    let out_fd: OwnedFd = tmp.as_fd().try_clone_to_owned().context("duplicating the output descriptor")?;
    let req2 = req.clone();
    run_untrusted(&cfg, input, out_fd, move |mut i: File, mut o: File| {
        let r = match &tree_from_dir {
            Some(t) => write_tree(t, &req2.write, &mut o),
            None => {
                let hint = i.metadata().ok().filter(|m| m.is_file()).map_or(0, |m| m.len());
                build_from_reader_sized(&req2, &mut i, hint, &mut o)
            }
        };
        r.map(|_| ()).map_err(|e| e.to_string())
    })?;

    let info = validate_image(&tmp).context("the sandboxed builder returned an invalid image")?;
    match output {
        Output::Path(p) => {
            tmp.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644)).context("fchmod")?;
            tmp.sync_all().context("fsync")?;
            let mut guard = guard.expect("path output has a temporary file");
            let tmp = if bopts.enable_verity {
                // fs-verity refuses files with writers: close ours, reopen read-only.
                let tp = guard.0.as_ref().expect("temporary path").clone();
                drop(tmp);
                let ro = File::open(&tp).with_context(|| format!("reopening {}", tp.display()))?;
                crate::fsverity::enable(ro.as_fd())
                    .map_err(|e| e.at(p))
                    .context("enabling fs-verity on the image (--enable-verity)")?;
                ro
            } else {
                tmp
            };
            let tp = guard.0.take().expect("temporary path");
            if let Err(e) = std::fs::rename(&tp, p) {
                let _ = std::fs::remove_file(&tp);
                return Err(e).with_context(|| format!("renaming the image to {}", p.display()));
            }
            let mut f = tmp;
            f.rewind()?;
            Ok((info, Some(f)))
        }
        Output::Anonymous => {
            let mut f = tmp;
            f.rewind()?;
            Ok((info, Some(f)))
        }
        Output::Reference(p) => {
            let mut f = tmp;
            f.rewind()?;
            place_like_fopen(&mut f, p)?;
            f.rewind()?;
            Ok((info, Some(f)))
        }
        Output::Stdout => {
            let mut f = tmp;
            f.rewind()?;
            let stdout = io::stdout();
            let mut lock = stdout.lock();
            io::copy(&mut f, &mut lock).context("writing the image to stdout")?;
            lock.flush().context("writing the image to stdout")?;
            Ok((info, None))
        }
    }
}

/// Put the finished image `img` where `fopen(path, "w")` would write it (see
/// [`Output::Reference`]): atomically for a plain path, in place otherwise.
fn place_like_fopen(img: &mut File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
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
                let guard = UnlinkOnDrop(Some(tp.clone()));
                io::copy(img, &mut tmp).with_context(|| format!("writing {}", tp.display()))?;
                // What fopen's 0666 would give under the usual umask; a replaced file is a new
                // inode (the reference truncates the old one in place).
                tmp.set_permissions(std::fs::Permissions::from_mode(0o644)).context("fchmod")?;
                tmp.sync_all().context("fsync")?;
                std::fs::rename(&tp, path).with_context(|| format!("renaming the image to {}", path.display()))?;
                std::mem::forget(guard);
                return Ok(());
            }
            // No room for a temporary file, but maybe the file itself is writable.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM | libc::EROFS)) && path.exists() => {}
            Err(e) => return Err(e).with_context(|| format!("creating a temporary file in {}", dir.display())),
        }
    }
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("failed to open output file {}", path.display()))?;
    io::copy(img, &mut out).with_context(|| format!("writing {}", path.display()))?;
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs the untrusted stage confined.
fn run_untrusted<F>(cfg: &SandboxConfig, input: OwnedFd, output: OwnedFd, job: F) -> anyhow::Result<()>
where
    F: FnOnce(File, File) -> Result<(), String>,
{
    crate::sandbox::run_confined(cfg, input, output, job).map_err(anyhow::Error::from)
}

/// Check what the child wrote: a composefs header, an EROFS superblock, a sane size.
fn validate_image(f: &File) -> anyhow::Result<BuildInfo> {
    use std::os::unix::fs::FileExt;
    let size = f.metadata()?.len();
    let mut hdr = [0u8; 1024 + 128];
    if size < hdr.len() as u64 {
        anyhow::bail!("image of {size} bytes is shorter than the composefs header and EROFS superblock");
    }
    f.read_exact_at(&mut hdr, 0)?;
    let h = ComposefsHeader::decode(&hdr).ok_or_else(|| anyhow::anyhow!("unreadable composefs header"))?;
    if h.magic != COMPOSEFS_MAGIC {
        anyhow::bail!("bad composefs magic {:#x}", h.magic);
    }
    let sb = SuperBlock::decode(&hdr[EROFS_SUPER_OFFSET as usize..])
        .ok_or_else(|| anyhow::anyhow!("unreadable EROFS superblock"))?;
    if sb.magic != EROFS_SUPER_MAGIC {
        anyhow::bail!("bad EROFS magic {:#x}", sb.magic);
    }
    if size % 4096 != 0 {
        anyhow::bail!("image size {size} is not a multiple of the block size");
    }
    Ok(BuildInfo { image_size: size, version: h.composefs_version, entries: None })
}

// ---------------------------------------------------------------------------------------------
// CLI

/// Input format flags: exactly one.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct FormatArgs {
    /// SOURCE is a zstd:chunked TOC JSON (containers/storage).
    #[arg(long)]
    pub from_toc: bool,
    /// SOURCE is an eStargz TOC (stargz.index.json).
    #[arg(long)]
    pub from_estargz: bool,
    /// SOURCE is a composefs dumpfile.
    #[arg(long)]
    pub from_dump: bool,
    /// SOURCE is a directory.
    #[arg(long)]
    pub from_dir: bool,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Input file (`-` for stdin; a directory for --from-dir).
    pub source: PathBuf,
    /// Output image (`-` for stdout).
    pub output: PathBuf,
    /// Lowest composefs format version to write.
    #[arg(long, default_value_t = 0)]
    pub min_version: u32,
    /// Highest composefs format version to write (raised to only when the tree needs it).
    #[arg(long, default_value_t = 1)]
    pub max_version: u32,
    /// Print the image's fs-verity digest (SHA-256, 4 KiB blocks) on stdout.
    #[arg(long)]
    pub print_digest: bool,
    /// (--from-dir) copy file contents into this content store, named by fs-verity digest.
    #[arg(long, value_name = "DIR")]
    pub digest_store: Option<PathBuf>,
    /// (TOC inputs) directory holding the content objects: record their fs-verity digests.
    #[arg(long, value_name = "DIR")]
    pub objects: Option<PathBuf>,
    /// (TOC inputs) keep OCI whiteout files (`.wh.*`) as they are instead of converting them.
    #[arg(long)]
    pub keep_whiteouts: bool,
    /// (--from-dump) parse leniently, as `mkcomposefs --from-file` does by default.
    #[arg(long)]
    pub lenient: bool,
    /// Root only: run with partial confinement where the kernel lacks landlock or seccomp.
    #[arg(long)]
    pub no_sandbox: bool,
    /// Enable fs-verity on OUTPUT (needs a filesystem with verity); on failure nothing is left.
    #[arg(long)]
    pub enable_verity: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let format = if a.format.from_toc {
        InputFormat::Toc
    } else if a.format.from_estargz {
        InputFormat::Estargz
    } else if a.format.from_dump {
        InputFormat::Dump
    } else {
        InputFormat::Dir
    };
    let is_dash = |p: &Path| p.as_os_str() == "-";
    if a.min_version > a.max_version {
        anyhow::bail!("mkimage: --min-version {} is above --max-version {}", a.min_version, a.max_version);
    }
    if format == InputFormat::Dir && is_dash(&a.source) {
        anyhow::bail!("mkimage: --from-dir needs a directory, not -");
    }
    if a.digest_store.is_some() && format != InputFormat::Dir {
        anyhow::bail!("mkimage: --digest-store applies to --from-dir only");
    }
    if a.objects.is_some() && !matches!(format, InputFormat::Toc | InputFormat::Estargz) {
        anyhow::bail!("mkimage: --objects applies to --from-toc and --from-estargz only");
    }
    if a.enable_verity && is_dash(&a.output) {
        anyhow::bail!("mkimage: --enable-verity needs an OUTPUT file, not -");
    }
    if a.print_digest && is_dash(&a.output) {
        anyhow::bail!("mkimage: --print-digest cannot share stdout with OUTPUT -");
    }
    let mut req = BuildRequest::new(format);
    req.write = WriteOptions { min_version: a.min_version, max_version: a.max_version };
    req.keep_whiteouts = a.keep_whiteouts;
    req.strict_dump = !a.lenient;
    req.objects = a.objects;
    req.digest_store = a.digest_store;
    let source = if is_dash(&a.source) { Source::Stdin } else { Source::Path(a.source.clone()) };
    let output = if is_dash(&a.output) { Output::Stdout } else { Output::Path(a.output.clone()) };
    let bopts = BuildOptions {
        sandbox: SandboxConfig { allow_unsandboxed: a.no_sandbox, ..SandboxConfig::default() },
        enable_verity: a.enable_verity,
    };
    let (_, file) =
        build_image(&req, source, &output, &bopts).with_context(|| format!("mkimage {}", a.source.display()))?;
    if a.print_digest {
        let f = file.expect("path output");
        let d = crate::fsverity::digest_file(&f).context("computing the image's fs-verity digest")?;
        println!("{}", crate::fsverity::to_hex(&d));
    }
    Ok(())
}

/// Why the untrusted stage failed (one line each; the input errors name entry and field).
#[derive(Debug, Error)]
pub enum BuildError {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_from_reader_toc_and_errors() {
        let json = br#"{"version":1,"entries":[{"type":"reg","name":"a","x-content":"aGk="}]}"#;
        let mut out = Vec::new();
        let info = build_from_reader(&BuildRequest::new(InputFormat::Toc), &mut &json[..], &mut out).unwrap();
        assert_eq!(info.image_size, out.len() as u64);
        assert_eq!(info.version, 0);
        let t = crate::erofs::reader::read_image(&out).unwrap();
        assert_eq!(t.node(t.lookup(b"a").unwrap()).entry.content.as_deref(), Some(&b"hi"[..]));

        let mut req = BuildRequest::new(InputFormat::Toc);
        req.max_input_bytes = 10;
        let e = build_from_reader(&req, &mut &json[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let e = build_from_reader(&BuildRequest::new(InputFormat::Dir), &mut &json[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn object_digests_are_recorded() {
        let objects = tempfile::tempdir().unwrap();
        let data = vec![7u8; 9000];
        std::fs::create_dir(objects.path().join("ab")).unwrap();
        std::fs::write(objects.path().join("ab/cdef"), &data).unwrap();
        let json = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":9000,"x-payload":"ab/cdef"},
                                               {"type":"reg","name":"b","size":9000,"x-payload":"ab/cdef"}]}"#;
        let mut req = BuildRequest::new(InputFormat::Toc);
        req.objects = Some(objects.path().to_path_buf());
        let mut out = Vec::new();
        build_from_reader(&req, &mut &json[..], &mut out).unwrap();
        let t = crate::erofs::reader::read_image(&out).unwrap();
        let d = crate::fsverity::digest_bytes(&data);
        assert_eq!(t.node(t.lookup(b"b").unwrap()).entry.fsverity_digest, Some(d));
        // A missing object or a size mismatch is an error naming the object.
        let bad = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":9001,"x-payload":"ab/cdef"}]}"#;
        let e = build_from_reader(&req, &mut &bad[..], &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("ab/cdef") && e.contains("9001"), "{e}");
    }
}
