//! The way back: the layer's original uncompressed tar, byte for byte, from its tar-split and
//! the objects (`cfsmount layer-tar`). The file contents are found through the layer's image:
//! each tar-split member with content is looked up by path in the image, whose entry names the
//! object (`xx/rest`); the object's size, and the tar-split's CRC-64 where it has one, must
//! match. The sha256 of the result is the layer's diff_id.
//!
//! Reading the tar-split and the image is hostile-input work: it runs in the sandbox, with
//! read access (landlock) to the objects directory and the image's directory only.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::layer::tarsplit::{Item, Items, CRC64};
use crate::sandbox::SandboxConfig;

/// Largest tar-split document read.
pub const MAX_TARSPLIT_BYTES: u64 = 1 << 30;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The layer's tar-split (JSON lines, as `mkimage --from-layer --tar-split` writes it; gzip accepted).
    #[arg(long, value_name = "FILE")]
    pub tar_split: PathBuf,
    /// The layer's image (names each file's object).
    #[arg(long, value_name = "IMAGE")]
    pub image: PathBuf,
    /// The content store holding the objects.
    #[arg(long, value_name = "DIR")]
    pub objects: PathBuf,
    /// Where to write the tar (`-` for stdout).
    pub output: PathBuf,
    /// Print the tar's sha256 (its diff_id) on stderr.
    #[arg(long)]
    pub print_diff_id: bool,
}

fn abs(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))
}

/// `cfsmount layer-tar`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let image = abs(&a.image)?;
    let objects = abs(&a.objects)?;
    let input: OwnedFd = File::open(&a.tar_split).with_context(|| format!("opening {}", a.tar_split.display()))?.into();
    let to_stdout = a.output.as_os_str() == "-";
    let (tmp, guard) = if to_stdout {
        let fd = rustix::fs::memfd_create("cfsmount-tar", rustix::fs::MemfdFlags::CLOEXEC).context("memfd_create")?;
        (File::from(fd), None)
    } else {
        let dir = match a.output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (f, p) = crate::input::dir::create_temp(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        (f, Some(crate::input::dir::UnlinkOnDrop(Some(p))))
    };
    let mut cfg = SandboxConfig::default();
    cfg.read_dirs.push(objects.clone());
    cfg.read_dirs.push(image.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/")));
    if rustix::process::getuid().is_root() {
        // A root-owned store is typically readable by root only; the child keeps uid 0 without
        // any capability, under landlock limited to these two directories. Tars over 4 GiB.
        cfg.run_as = Some((0, 0));
        cfg.limits.file_size = u64::MAX >> 1;
    }
    let out: OwnedFd = tmp.as_fd().try_clone_to_owned().context("dup")?;
    crate::sandbox::run_confined(&cfg, input, out, move |i, o| rebuild(i, &image, &objects, o))
        .with_context(|| format!("layer-tar {}", a.tar_split.display()))?;
    let mut tmp = tmp;
    if a.print_diff_id {
        use std::io::Seek;
        tmp.rewind()?;
        let mut h = sha2::Sha256::default();
        io::copy(&mut tmp, &mut h)?;
        eprintln!("sha256:{}", crate::layer::child::hex(&sha2::Digest::finalize(h)));
    }
    match guard {
        None => {
            use std::io::Seek;
            tmp.rewind()?;
            let stdout = io::stdout();
            let mut lock = stdout.lock();
            io::copy(&mut tmp, &mut lock).context("writing the tar to stdout")?;
            lock.flush()?;
        }
        Some(mut g) => {
            tmp.sync_all().context("fsync")?;
            let tp = g.0.take().expect("temporary path");
            std::fs::rename(&tp, &a.output).with_context(|| format!("renaming to {}", a.output.display()))?;
        }
    }
    Ok(())
}

/// In the sandbox: write the tar described by the tar-split read from `input` to `out`.
pub(crate) fn rebuild(input: File, image: &Path, objects: &Path, out: File) -> Result<(), String> {
    let mut raw = Vec::new();
    input.take(MAX_TARSPLIT_BYTES + 1).read_to_end(&mut raw).map_err(|e| format!("reading the tar-split: {e}"))?;
    let doc = if raw.starts_with(&[0x1f, 0x8b]) {
        crate::layer::decode::gzip_all(&raw, MAX_TARSPLIT_BYTES).map_err(|e| format!("tar-split: {e}"))?
    } else {
        raw
    };
    if doc.len() as u64 > MAX_TARSPLIT_BYTES {
        return Err(format!("tar-split larger than {MAX_TARSPLIT_BYTES} bytes"));
    }
    let img = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let tree = crate::erofs::reader::read_image(&img).map_err(|e| format!("{}: {e}", image.display()))?;
    drop(img);
    let mut w = io::BufWriter::with_capacity(1 << 20, out);
    let mut buf = vec![0u8; 1 << 20];
    for it in Items::new(&doc) {
        match it? {
            Item::Segment(s) => w.write_all(&s).map_err(|e| format!("writing the tar: {e}"))?,
            Item::File { size: 0, .. } => {}
            Item::File { name, size, crc } => {
                let shown = crate::tree::show(&name);
                let norm = crate::layer::tartree::normalize(&name).map_err(|r| format!("{shown}: {r}"))?;
                let id = norm.and_then(|p| tree.lookup(p)).ok_or_else(|| format!("{shown}: not in the image"))?;
                let node = tree.node(tree.resolve(id));
                let payload = node.entry.payload.as_deref().filter(|_| node.entry.inode.is_reg());
                let payload = payload.ok_or_else(|| format!("{shown}: the image names no object for it"))?;
                let path = objects.join(std::ffi::OsStr::from_bytes(payload));
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| format!("{shown}: object {}: {e}", path.display()))?;
                let mut left = size;
                let mut digest = CRC64.digest();
                while left > 0 {
                    let n = f
                        .read(&mut buf[..(left.min(1 << 20)) as usize])
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if n == 0 {
                        return Err(format!("{shown}: object {} is shorter than {size} bytes", path.display()));
                    }
                    digest.update(&buf[..n]);
                    w.write_all(&buf[..n]).map_err(|e| format!("writing the tar: {e}"))?;
                    left -= n as u64;
                }
                if f.read(&mut buf[..1]).map_err(|e| format!("{}: {e}", path.display()))? != 0 {
                    return Err(format!("{shown}: object {} is longer than {size} bytes", path.display()));
                }
                if let Some(c) = crc {
                    if c != digest.finalize().to_be_bytes() {
                        return Err(format!(
                            "{shown}: object {} does not match the tar-split's CRC-64",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    w.flush().map_err(|e| format!("writing the tar: {e}"))
}

use std::os::unix::fs::OpenOptionsExt;
