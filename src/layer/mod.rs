//! Layer blobs in: a layer blob (plain tar, gzip, zstd, zstd:chunked of every footer
//! generation, eStargz) becomes verified objects in a content store and a composefs image;
//! and the way back, the original tar from its tar-split and the objects ([`export`]).
//!
//! Two processes (docs/layers.md):
//! - the **reader** ([`child`], in [`crate::sandbox`]): decompresses and parses the hostile
//!   blob, checks every digest it carries (blob, TOC, tar-split, chunks, diff_id), builds the
//!   tree and writes the image; it sends each file's content over a socket pair;
//! - the **store side** (this module, in the calling process): hashes every object it
//!   receives, stages it under that digest ([`crate::store::Stage`]) and answers with the digest; it
//!   then checks that every object the image names is one it hashed (or one already in the
//!   store), with the right size, and only then moves the objects into place, syncs, and
//!   renames the image into place. On any failure nothing is left: no image, no object.

pub(crate) mod child;
pub(crate) mod compare;
pub(crate) mod decode;
pub mod export;
pub mod format;
pub(crate) mod proto;
pub(crate) mod tar;
pub(crate) mod tarsplit;
pub(crate) mod tartree;
pub(crate) mod tocmap;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::erofs::writer::WriteOptions;
use crate::input::dir::{create_temp, UnlinkOnDrop};
use crate::sandbox::SandboxConfig;
use crate::store::{Naming, ObjectStore, Stage, StageStats, StoreOptions, VerityMode};
use crate::tree::Limits;

pub use proto::Summary;

/// Largest descriptor file read.
const MAX_DESCRIPTOR: u64 = 1 << 20;
/// Default floor of the decompression limit.
pub const DEFAULT_MAX_UNCOMPRESSED_FLOOR: u64 = 1 << 30;
/// Default decompression limit as a multiple of the blob size (above the floor).
pub const DEFAULT_MAX_RATIO: u64 = 256;

/// A layer import (`cfsmount mkimage --from-layer`).
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub blob: PathBuf,
    pub output: PathBuf,
    pub objects: PathBuf,
    pub descriptor: Option<PathBuf>,
    /// `sha256:...` of the uncompressed tar (the image config's diff_id).
    pub diff_id: Option<String>,
    /// Write the layer's tar-split here (for the way back).
    pub tar_split: Option<PathBuf>,
    /// Seal the objects and the image with fs-verity (and record the objects' digests).
    pub enable_verity: bool,
    pub keep_whiteouts: bool,
    pub write: WriteOptions,
    /// Most bytes the decompressed stream may have (default: max(1 GiB, 256 × blob size)).
    pub max_uncompressed: Option<u64>,
    pub sandbox: SandboxConfig,
}

impl ImportRequest {
    pub fn new(blob: &Path, output: &Path, objects: &Path) -> Self {
        ImportRequest {
            blob: blob.into(),
            output: output.into(),
            objects: objects.into(),
            descriptor: None,
            diff_id: None,
            tar_split: None,
            enable_verity: false,
            keep_whiteouts: false,
            write: WriteOptions::default(),
            max_uncompressed: None,
            sandbox: SandboxConfig::default(),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportResult {
    pub summary: Summary,
    pub stats: StageStats,
    pub image_size: u64,
}

fn open_ro(p: &Path) -> anyhow::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))?;
    if !f.metadata().with_context(|| format!("{}", p.display()))?.is_file() {
        anyhow::bail!("{}: not a regular file", p.display());
    }
    Ok(f)
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What the store side collected from the reader.
struct Drained {
    summary: Summary,
    image_size: u64,
}

/// Import a layer blob: objects into `objects`, the image at `output` (see the module docs).
pub fn import(req: &ImportRequest) -> anyhow::Result<ImportResult> {
    let blob = open_ro(&req.blob)?;
    let blob_size = blob.metadata()?.len();
    let descriptor = match &req.descriptor {
        Some(p) => {
            let mut v = Vec::new();
            open_ro(p)?
                .take(MAX_DESCRIPTOR + 1)
                .read_to_end(&mut v)
                .with_context(|| format!("reading {}", p.display()))?;
            if v.len() as u64 > MAX_DESCRIPTOR {
                anyhow::bail!("{}: descriptor larger than {MAX_DESCRIPTOR} bytes", p.display());
            }
            Some(v)
        }
        None => None,
    };
    let diff_id =
        req.diff_id.as_deref().map(format::parse_sha256).transpose().map_err(|r| anyhow::anyhow!("--diff-id: {r}"))?;
    let creq = child::ChildRequest {
        descriptor,
        diff_id,
        keep_whiteouts: req.keep_whiteouts,
        write: req.write,
        want_tarsplit: req.tar_split.is_some(),
        verity: req.enable_verity,
        max_uncompressed: req
            .max_uncompressed
            .unwrap_or_else(|| DEFAULT_MAX_UNCOMPRESSED_FLOOR.max(blob_size.saturating_mul(DEFAULT_MAX_RATIO))),
        limits: Limits::default(),
    };

    // Objects named by sha256; with --enable-verity each is sealed (new ones before they are
    // moved, existing ones measured and sealed if they are not) and its fs-verity digest known.
    let mut sopts = StoreOptions::new(Naming::Sha256);
    sopts.verity = if req.enable_verity { VerityMode::Require } else { VerityMode::Off };
    sopts.verity_digests = req.enable_verity;
    let store = ObjectStore::open(&req.objects, sopts)?;
    // One store thread writes every object: two threads allocate the inodes ahead of it.
    store.create_ahead(2)?;
    let staging = store.stage()?;
    let out_dir = parent_dir(&req.output);
    let (img, img_path) =
        create_temp(&out_dir).with_context(|| format!("creating a temporary file in {}", out_dir.display()))?;
    let mut img_guard = UnlinkOnDrop(Some(img_path));
    let mut ts_guard = UnlinkOnDrop(None);
    let ts_file = match &req.tar_split {
        Some(p) => {
            let d = parent_dir(p);
            let (f, tp) = create_temp(&d).with_context(|| format!("creating a temporary file in {}", d.display()))?;
            ts_guard.0 = Some(tp);
            Some(f)
        }
        None => None,
    };

    let (ours, theirs) = UnixStream::pair().context("socketpair")?;
    let img_w = img.try_clone().context("dup")?;
    let ts_w = ts_file.as_ref().map(File::try_clone).transpose().context("dup")?;
    let cfg = sandbox_config(&req.sandbox, blob_size.saturating_mul(8).min(creq.max_uncompressed));
    let (confined, drained) = std::thread::scope(|s| -> anyhow::Result<_> {
        let drain = std::thread::Builder::new()
            .name("cfsmount-store".into())
            .spawn_scoped(s, || drain(ours, &staging, img_w, ts_w))
            .context("starting the store thread")?;
        let confined = crate::sandbox::run_confined(&cfg, OwnedFd::from(blob), OwnedFd::from(theirs), move |b, s| {
            child::run(&creq, b, s)
        });
        let drained = drain.join().map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
        Ok((confined, drained))
    })?;
    confined.with_context(|| format!("layer {}", req.blob.display()))?;
    let drained = drained.with_context(|| format!("layer {}: store side", req.blob.display()))?;

    validate(&img, &staging, req.enable_verity).context("the sandboxed reader returned an invalid image")?;
    let stats = staging.commit()?;
    finish_file(img, &mut img_guard, &req.output, req.enable_verity)?;
    if let (Some(f), Some(p)) = (ts_file, &req.tar_split) {
        finish_file(f, &mut ts_guard, p, false)?;
    }
    Ok(ImportResult { summary: drained.summary, stats, image_size: drained.image_size })
}

/// The reader's time limits grow with the layer (root only: the sandbox refuses other limits
/// to other callers): one CPU second and two wall seconds more per 50 MB of expected stream
/// (8 times the blob, at most the decompression limit).
fn sandbox_config(base: &SandboxConfig, max_stream: u64) -> SandboxConfig {
    let mut cfg = base.clone();
    if rustix::process::getuid().is_root() && cfg.limits == crate::sandbox::Limits::default() {
        let extra = max_stream / 50_000_000;
        cfg.limits.cpu_seconds = cfg.limits.cpu_seconds.saturating_add(extra);
        cfg.limits.wall_timeout += std::time::Duration::from_secs(extra.saturating_mul(2));
    }
    cfg
}

fn finish_file(f: File, guard: &mut UnlinkOnDrop, dest: &Path, verity: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644)).context("fchmod")?;
    f.sync_all().context("fsync")?;
    // fs-verity refuses a file that is open for writing: this was the last writer.
    drop(f);
    let tp = guard.0.clone().expect("temporary path");
    if verity {
        let ro = File::open(&tp).with_context(|| format!("reopening {}", tp.display()))?;
        crate::fsverity::enable(std::os::fd::AsFd::as_fd(&ro))
            .map_err(|e| e.at(dest))
            .context("enabling fs-verity on the image (--enable-verity)")?;
    }
    std::fs::rename(&tp, dest).with_context(|| format!("renaming the result to {}", dest.display()))?;
    guard.0 = None;
    Ok(())
}

/// The store side: read records, hash and stage objects, answer digests, collect the rest.
fn drain(sock: UnixStream, staging: &Stage<'_>, mut img: File, mut ts: Option<File>) -> anyhow::Result<Drained> {
    let mut r = BufReader::with_capacity(1 << 20, &sock);
    let mut summary = None;
    let mut image_size = None;
    let mut tag = [0u8; 1];
    loop {
        if r.read(&mut tag).context("reading from the reader")? == 0 {
            anyhow::bail!("the reader stopped before the end of its output");
        }
        match tag[0] {
            proto::TAG_OBJECT => {
                let size = read_u64(&mut r)?;
                let mut w = staging.writer(None);
                copy_n(&mut r, size, |b| w.write_chunk(b).map_err(std::io::Error::other))?;
                let obj = w.commit()?;
                let mut answer = [0u8; 64];
                answer[..32].copy_from_slice(&obj.digest);
                if let Some(v) = obj.verity {
                    answer[32..].copy_from_slice(&v);
                }
                (&sock).write_all(&answer).context("answering the reader")?;
            }
            proto::TAG_TARSPLIT => {
                let b = read_small(&mut r)?;
                ts.as_mut()
                    .context("unexpected tar-split from the reader")?
                    .write_all(&b)
                    .context("writing the tar-split")?;
            }
            proto::TAG_IMAGE => {
                if image_size.is_some() {
                    anyhow::bail!("the reader sent two images");
                }
                let size = read_u64(&mut r)?;
                if size > proto::MAX_IMAGE {
                    anyhow::bail!("image of {size} bytes over the limit of {} bytes", proto::MAX_IMAGE);
                }
                copy_n(&mut r, size, |b| img.write_all(b))?;
                image_size = Some(size);
            }
            proto::TAG_SUMMARY => {
                let b = read_small(&mut r)?;
                summary = Some(serde_json::from_slice(&b).context("the reader's summary")?);
            }
            proto::TAG_END => {
                if r.read(&mut tag).context("reading from the reader")? != 0 {
                    anyhow::bail!("the reader sent data after its end record");
                }
                break;
            }
            t => anyhow::bail!("unknown record {t:#x} from the reader"),
        }
    }
    let image_size = image_size.context("the reader sent no image")?;
    Ok(Drained { summary: summary.context("the reader sent no summary")?, image_size })
}

fn read_u64(r: &mut impl Read) -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).context("reading from the reader")?;
    Ok(u64::from_le_bytes(b))
}

fn read_small(r: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).context("reading from the reader")?;
    let n = u32::from_le_bytes(b);
    if n > proto::MAX_SMALL_RECORD {
        anyhow::bail!("record of {n} bytes over the limit");
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v).context("reading from the reader")?;
    Ok(v)
}

fn copy_n(r: &mut impl BufRead, mut n: u64, mut f: impl FnMut(&[u8]) -> std::io::Result<()>) -> anyhow::Result<()> {
    while n > 0 {
        let b = r.fill_buf().context("reading from the reader")?;
        if b.is_empty() {
            anyhow::bail!("the reader stopped in the middle of a record");
        }
        let k = (b.len() as u64).min(n) as usize;
        f(&b[..k]).context("writing")?;
        r.consume(k);
        n -= k as u64;
    }
    Ok(())
}

/// Every object the image names must be one this import hashed or found, with its size (and
/// fs-verity digest when sealing).
fn validate(img: &File, staging: &Stage<'_>, verity: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let size = img.metadata()?.len();
    if size > proto::MAX_IMAGE {
        anyhow::bail!("image of {size} bytes");
    }
    let mut bytes = vec![0u8; size as usize];
    img.read_exact_at(&mut bytes, 0).context("reading the image back")?;
    let tree = crate::erofs::reader::read_image(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let known = staging.objects();
    for n in &tree.nodes {
        let e = &n.entry;
        if !e.inode.is_reg() {
            continue;
        }
        let Some(p) = e.payload.as_deref() else { continue };
        let d = object_digest(p).with_context(|| format!("object path {}", crate::tree::show(p)))?;
        let k = known.get(&d).with_context(|| {
            format!("the image names object {} that this import did not verify", crate::tree::show(p))
        })?;
        if k.size != e.inode.size {
            anyhow::bail!("object {}: {} bytes, the image says {}", crate::tree::show(p), k.size, e.inode.size);
        }
        if verity && e.fsverity_digest != k.verity {
            anyhow::bail!("object {}: the image's fs-verity digest is not the object's", crate::tree::show(p));
        }
    }
    Ok(())
}

/// `xx/` + 62 lowercase hex → the digest.
fn object_digest(p: &[u8]) -> anyhow::Result<[u8; 32]> {
    let s = std::str::from_utf8(p).ok().filter(|s| s.len() == 65 && s.as_bytes()[2] == b'/');
    let s = s.context("not of the form xx/<62 hex digits>")?;
    format::parse_sha256(&format!("sha256:{}{}", &s[..2], &s[3..])).map_err(|r| anyhow::anyhow!(r))
}

/// Options of [`read_in_process`].
#[derive(Debug, Clone, Default)]
pub struct InProcess {
    pub descriptor: Option<Vec<u8>>,
    pub diff_id: Option<[u8; 32]>,
    pub tar_split: bool,
    pub max_uncompressed: u64,
    pub limits: Limits,
}

/// The reader without the sandbox and without a store (for fuzzing and tests): the blob's
/// bytes go through the same checks; the objects are hashed and dropped. Returns the summary
/// and the image bytes.
pub fn read_in_process(blob: &[u8], o: &InProcess) -> Result<(Summary, Vec<u8>), String> {
    let fd = rustix::fs::memfd_create("cfsmount-blob", rustix::fs::MemfdFlags::CLOEXEC).map_err(|e| e.to_string())?;
    let mut f = File::from(fd);
    f.write_all(blob).map_err(|e| e.to_string())?;
    std::io::Seek::rewind(&mut f).map_err(|e| e.to_string())?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let store = std::thread::spawn(move || -> Result<(Summary, Vec<u8>), String> {
        let mut r = BufReader::new(&ours);
        let (mut summary, mut image) = (None, Vec::new());
        let mut tag = [0u8; 1];
        while r.read(&mut tag).map_err(|e| e.to_string())? == 1 {
            match tag[0] {
                proto::TAG_OBJECT => {
                    let n = read_u64(&mut r).map_err(|e| e.to_string())?;
                    let mut h = <sha2::Sha256 as sha2::Digest>::new();
                    copy_n(&mut r, n, |b| {
                        sha2::Digest::update(&mut h, b);
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                    let mut answer = [0u8; 64];
                    answer[..32].copy_from_slice(&sha2::Digest::finalize(h));
                    (&ours).write_all(&answer).map_err(|e| e.to_string())?;
                }
                proto::TAG_TARSPLIT => drop(read_small(&mut r).map_err(|e| e.to_string())?),
                proto::TAG_IMAGE => {
                    let n = read_u64(&mut r).map_err(|e| e.to_string())?;
                    copy_n(&mut r, n, |b| {
                        image.extend_from_slice(b);
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                }
                proto::TAG_SUMMARY => {
                    let b = read_small(&mut r).map_err(|e| e.to_string())?;
                    summary = Some(serde_json::from_slice(&b).map_err(|e| e.to_string())?);
                }
                _ => break,
            }
        }
        Ok((summary.ok_or("no summary")?, image))
    });
    let req = child::ChildRequest {
        descriptor: o.descriptor.clone(),
        diff_id: o.diff_id,
        keep_whiteouts: false,
        write: WriteOptions::default(),
        want_tarsplit: o.tar_split,
        verity: false,
        max_uncompressed: o.max_uncompressed,
        limits: o.limits,
    };
    let sock = File::from(OwnedFd::from(theirs));
    let r = child::run(&req, f, sock);
    let stored = store.join().map_err(|_| "store thread panicked".to_string())?;
    r?;
    stored
}
