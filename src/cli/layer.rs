//! Argument glue for `mkimage --from-layer` (the engine is [`crate::layer`]).
use std::path::PathBuf;

use anyhow::Context as _;

use crate::erofs::writer::WriteOptions;
use crate::sandbox::SandboxConfig;

/// Options that only `--from-layer` takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LayerArgs {
    /// (--from-layer) the blob's OCI descriptor JSON (mediaType, digest, size, annotations):
    /// the digest and size are checked, the annotations locate and authenticate the TOC.
    #[arg(long, value_name = "FILE")]
    pub descriptor: Option<PathBuf>,
    /// (--from-layer) sha256:HEX the uncompressed tar must hash to (the image config's diff_id).
    #[arg(long, value_name = "DIGEST")]
    pub diff_id: Option<String>,
    /// (--from-layer) also write the layer's tar-split here, for `cfsmount layer-tar`.
    #[arg(long, value_name = "FILE")]
    pub tar_split: Option<PathBuf>,
    /// (--from-layer) most bytes the decompressed stream may have
    /// (default: the larger of 1 GiB and 256 times the blob's size).
    #[arg(long, value_name = "BYTES")]
    pub max_uncompressed: Option<u64>,
}

/// Refuse `--from-layer` options given without `--from-layer`.
pub(crate) fn refuse_layer_options(l: &LayerArgs) -> anyhow::Result<()> {
    if l.descriptor.is_some() || l.diff_id.is_some() || l.tar_split.is_some() || l.max_uncompressed.is_some() {
        anyhow::bail!(
            "mkimage: --descriptor, --diff-id, --tar-split and --max-uncompressed apply to --from-layer only"
        );
    }
    Ok(())
}

/// `cfsmount mkimage --from-layer BLOB OUTPUT --objects DIR ...`
pub(crate) fn mkimage(a: crate::cli::mkimage::Args) -> anyhow::Result<()> {
    let dash = |p: &std::path::Path| p.as_os_str() == "-";
    if dash(&a.source) || dash(&a.output) {
        anyhow::bail!("mkimage --from-layer: BLOB and OUTPUT must be files, not -");
    }
    let objects = a.objects.clone().context("mkimage --from-layer needs --objects DIR (the content store to fill)")?;
    if a.digest_store.is_some() || a.lenient {
        anyhow::bail!("mkimage --from-layer: --digest-store and --lenient do not apply");
    }
    if a.min_version > a.max_version {
        anyhow::bail!("mkimage: --min-version {} is above --max-version {}", a.min_version, a.max_version);
    }
    let mut req = crate::layer::ImportRequest::new(&a.source, &a.output, &objects);
    req.descriptor = a.layer.descriptor.clone();
    req.diff_id = a.layer.diff_id.clone();
    req.tar_split = a.layer.tar_split.clone();
    req.max_uncompressed = a.layer.max_uncompressed;
    req.enable_verity = a.enable_verity;
    req.keep_whiteouts = a.keep_whiteouts;
    req.write = WriteOptions { min_version: a.min_version, max_version: a.max_version };
    req.sandbox = SandboxConfig { allow_unsandboxed: a.no_sandbox, ..SandboxConfig::default() };
    let r = crate::layer::import(&req).with_context(|| format!("mkimage --from-layer {}", a.source.display()))?;
    let s = &r.summary;
    let mut note = format!(
        "cfsmount: {}: {}, {} bytes uncompressed, {} objects ({} new, {} already stored); checked: {}",
        a.source.display(),
        s.format,
        s.stream_size,
        s.objects,
        r.stats.added,
        r.stats.reused,
        if s.checked.is_empty() { "content digests".to_string() } else { s.checked.join(", ") }
    );
    if s.restored_padding > 0 {
        note.push_str(&format!(
            "; the stream lacks the tar's trailing padding: the diff_id matched with {} zero bytes restored",
            s.restored_padding
        ));
    }
    eprintln!("{note}");
    if a.print_digest {
        let f = std::fs::File::open(&a.output).with_context(|| format!("opening {}", a.output.display()))?;
        let d = crate::fsverity::digest_file(&f).context("computing the image's fs-verity digest")?;
        println!("{}", crate::fsverity::to_hex(&d));
    }
    Ok(())
}
