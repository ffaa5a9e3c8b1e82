//! `cfsmount mkimage`: command-line arguments → a [`BuildRequest`], the build ([`crate::build`]),
//! and the `--print-digest` output.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::build::{build_image, BuildOptions, BuildRequest, InputFormat, Output, Source};
use crate::erofs::writer::WriteOptions;
use crate::sandbox::SandboxConfig;

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
    /// SOURCE is a layer blob (tar, gzip, zstd, zstd:chunked, eStargz): verified, its files
    /// stored in --objects (src/layer/, see cli/layer.rs).
    #[arg(long)]
    pub from_layer: bool,
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
    /// Options of --from-layer (descriptor, diff_id, tar-split, decompression limit).
    #[command(flatten)]
    pub layer: crate::cli::layer::LayerArgs,
}

pub(crate) fn run(a: Args) -> anyhow::Result<()> {
    if a.format.from_layer {
        return crate::cli::layer::mkimage(a);
    }
    crate::cli::layer::refuse_layer_options(&a.layer)?;
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
