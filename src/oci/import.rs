//! `oci import`: an image of an OCI layout into the repository.
//!
//! 1. The layout reader picks and verifies manifest and config and checks that every layer
//!    blob is there with its size ([`super::layout`]): nothing is written before that.
//! 2. Each layer not yet in the store goes through the layer reader (issue 12, sandboxed): it
//!    verifies the blob digest and the diff_id, commits the file contents to the shared
//!    objects and writes the layer's tree, whiteouts literal, as a layer image; the repository
//!    reads that image back with the hostile-image reader and publishes the layer directory.
//! 3. The layer images are read back, flattened ([`super::flatten`]) and written as the
//!    image's composefs image (in the sandbox), recorded with its fs-verity digest.
//!
//! A layer already imported (by any image: layers are keyed by blob digest) is not read again;
//! an image already imported is not built again.

use std::fs::File;
use std::path::Path;

use anyhow::Context as _;

use super::flatten::flatten;
use super::layout::{Image, Layer, Layout, Platform, Reference};
use super::Sha256;
use crate::store::repo::{ImageInfo, LayerInfo, Repo, RepoError};
use crate::tree::Limits;

pub use crate::store::repo::LayerExtras;

/// The layer reader as an import uses it (implemented over issue 12's reader in
/// [`super::reader`]; tests may give their own).
pub trait LayerReader {
    /// Read `blob` (hostile; its descriptor and diff_id in `layer`), commit the contents of
    /// its regular files to `objects` (`xx/rest` of their sha256) and write its tree, OCI
    /// whiteouts kept literal, as a composefs image at `image_out` (a new file).
    fn read_layer(&self, blob: File, layer: &Layer, objects: &Path, image_out: &Path) -> anyhow::Result<LayerExtras>;
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    pub manifest: Sha256,
    pub info: ImageInfo,
    /// False when the image was already in the store.
    pub new: bool,
    /// Layers read from their blobs (the others were in the store already).
    pub layers_read: usize,
}

/// Resolve `reference` in its layout and import it (if it is not in the store yet).
pub fn import(
    repo: &Repo,
    reference: &Reference,
    platform: Option<&Platform>,
    reader: &dyn LayerReader,
) -> anyhow::Result<Imported> {
    let layout = Layout::open(&reference.dir)?;
    let image = layout.resolve(reference.tag.as_deref(), platform)?;
    // Recorded with the layout's absolute path, so that it names the image from anywhere.
    let dir = std::path::absolute(&reference.dir).unwrap_or_else(|_| reference.dir.clone());
    let source = match &reference.tag {
        Some(t) => format!("oci:{}:{t}", dir.display()),
        None => format!("oci:{}", dir.display()),
    };
    import_image(repo, &layout, &image, &source, reader)
}

/// Import the layers of an already resolved image of `layout` that the store does not have
/// yet (step 2 above; also what the Additional Layer Store needs). Returns how many were read.
pub fn import_layers(repo: &Repo, layout: &Layout, image: &Image, reader: &dyn LayerReader) -> anyhow::Result<usize> {
    let mut layers_read = 0;
    for (i, layer) in image.layers.iter().enumerate() {
        if repo.has_layer(&layer.digest) {
            continue;
        }
        let what = format!("layer {} ({})", i + 1, layer.digest);
        let blob = layout.open_blob(&what, &layer.digest, layer.size)?;
        let info = LayerInfo {
            digest: layer.digest.to_string(),
            size: layer.size,
            media_type: layer.media_type.clone(),
            diff_id: layer.diff_id.to_string(),
            annotations: layer.annotations.clone(),
            external_links: Vec::new(),
            implicit_dirs: Vec::new(),
            read: None,
        };
        let objects = repo.objects_dir();
        repo.add_layer_image(&layer.digest, info, |out| {
            reader.read_layer(blob, layer, &objects, out).map_err(|e| RepoError::Reader(format!("{e:#}")))
        })
        .with_context(|| what.clone())?;
        layers_read += 1;
    }
    Ok(layers_read)
}

/// Import an already resolved image of `layout`.
pub fn import_image(
    repo: &Repo,
    layout: &Layout,
    image: &Image,
    source: &str,
    reader: &dyn LayerReader,
) -> anyhow::Result<Imported> {
    let key = image.manifest_digest;
    if repo.has_image(&key) {
        return Ok(Imported { manifest: key, info: repo.image_info(&key)?, new: false, layers_read: 0 });
    }
    let layers_read = import_layers(repo, layout, image, reader)?;
    let mut trees = Vec::with_capacity(image.layers.len());
    for l in &image.layers {
        trees.push(repo.layer_tree(&l.digest)?);
    }
    let tree = flatten(trees, Limits::default()).context("flattening the layers")?;
    let info = ImageInfo {
        manifest: key.to_string(),
        config: image.config_digest.to_string(),
        layers: image.layers.iter().map(|l| l.digest.to_string()).collect(),
        platform: image.platform.clone(),
        fsverity: String::new(),
        verity_enabled: false,
        image_size: 0,
        source: source.to_string(),
        imported: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let info = repo.add_image(&key, tree, &image.manifest_bytes, &image.config_bytes, info)?;
    Ok(Imported { manifest: key, info, new: true, layers_read })
}
