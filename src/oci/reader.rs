//! The one place where an import calls the layer reader of issue 12 (`src/layer/`, owner:
//! layers): [`BlobReader`] adapts it to [`LayerReader`].
//!
//! Until that reader is merged, this build cannot read layer blobs and says so: every other
//! part of `oci import` (layout, store, flattening, image) is in place.

use std::fs::File;
use std::path::Path;

use super::import::{LayerExtras, LayerReader};
use super::layout::Layer;

/// Reads layer blobs with issue 12's sandboxed reader.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlobReader;

impl LayerReader for BlobReader {
    fn read_layer(
        &self,
        _blob: File,
        layer: &Layer,
        _objects: &Path,
        _image_out: &Path,
    ) -> anyhow::Result<LayerExtras> {
        anyhow::bail!("{}: this build has no layer-blob reader yet (issue 12)", layer.media_type)
    }
}
