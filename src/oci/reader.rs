//! The one place where an import calls the layer reader of issue 12 ([`crate::layer`], owner:
//! layers): [`BlobReader`] adapts it to [`LayerReader`].
//!
//! - The blob is the file the layout reader opened below the layout (openat2 BENEATH); the layer
//!   reader is handed `/proc/self/fd/N` of it, which reopens that very file, never a path an
//!   attacker could swap.
//! - The descriptor (media type, digest, size, annotations) and the config's diff_id go with it:
//!   the reader checks the blob's digest and size, every digest the format carries, and the
//!   diff_id (with its rule for writers that dropped the tar's trailing padding: skopeo 1.9.3,
//!   containers/storage 1.48).
//! - Whiteouts are kept literal (flattening needs them so).
//! - Objects are committed to the store's objects. fs-verity is not asked of the reader: its
//!   `enable_verity` also seals the layer image, which fails with ETXTBSY while its writable
//!   handle is open (reported to `layers`), and layer images are never mounted; the repository
//!   seals the objects an image uses and records their digests when it writes the image.
//! - Directories the layer only implies: today's reader does not report them, so they are
//!   recognised in the written image by the metadata the tree gives implied directories
//!   (0755, owner 0:0, mtime 0, no xattrs). A directory a tar lists with exactly that metadata
//!   is taken as implied too, so it does not override a lower layer's metadata (the only
//!   difference it can make). Cross-layer hard links are refused by today's reader.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context as _;

use super::import::{LayerExtras, LayerReader};
use super::layout::Layer;
use crate::store::repo::ReadFacts;

/// Reads layer blobs with issue 12's sandboxed reader.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlobReader;

impl LayerReader for BlobReader {
    fn read_layer(&self, blob: File, layer: &Layer, objects: &Path, image_out: &Path) -> anyhow::Result<LayerExtras> {
        let dir = image_out.parent().context("image path has no directory")?;
        let desc = serde_json::json!({
            "mediaType": layer.media_type,
            "digest": layer.digest.to_string(),
            "size": layer.size,
            "annotations": layer.annotations,
        });
        let desc_path = dir.join("descriptor.json");
        std::fs::write(&desc_path, serde_json::to_vec(&desc)?).with_context(|| desc_path.display().to_string())?;
        let blob_path = std::path::PathBuf::from(format!("/proc/self/fd/{}", blob.as_raw_fd()));
        let mut req = crate::layer::ImportRequest::new(&blob_path, image_out, objects);
        req.descriptor = Some(desc_path.clone());
        req.diff_id = Some(layer.diff_id.to_string());
        req.keep_whiteouts = true;
        req.enable_verity = false;
        let r = crate::layer::import(&req);
        let _ = std::fs::remove_file(&desc_path);
        drop(blob);
        let sum = r?.summary;
        let tree = crate::store::repo::read_image(image_out)?;
        let read = ReadFacts {
            format: sum.format,
            diff_size: sum.stream_size.saturating_add(sum.restored_padding),
            checked: sum.checked,
        };
        Ok(LayerExtras { external_links: Vec::new(), implicit_dirs: implied_dirs_by_metadata(&tree), read: Some(read) })
    }
}

/// Directories with exactly the metadata [`crate::tree::Tree`] gives implied directories.
fn implied_dirs_by_metadata(tree: &crate::tree::Tree) -> Vec<Vec<u8>> {
    let implied = crate::tree::Tree::new(crate::tree::Limits::default()).implicit_dir;
    (0..tree.len() as crate::tree::NodeId)
        .filter(|&i| {
            let e = &tree.node(i).entry;
            let n = &e.inode;
            tree.node(i).link_to.is_none()
                && (n.mode, n.uid, n.gid, n.mtime, n.mtime_nsec)
                    == (implied.mode, implied.uid, implied.gid, implied.mtime, implied.mtime_nsec)
                && e.xattrs.is_empty()
        })
        .map(|i| tree.path_of(i))
        .collect()
}
