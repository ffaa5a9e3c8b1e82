//! Shared image helpers (included with `#[path]`): writing a tree at a pinned format version,
//! checking an image with `fsck.erofs`, and the sha256 of an image in hex.
#![allow(dead_code)]

use std::process::Command;

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::tree::Tree;
use sha2::{Digest, Sha256};

/// Writer options pinned to `version` (min = max), or the defaults when there is none.
pub fn write_options(version: Option<u32>) -> WriteOptions {
    match version {
        Some(v) => WriteOptions { min_version: v, max_version: v },
        None => WriteOptions::default(),
    }
}

/// The image of `tree`, at `version` when given (see `write_options`).
pub fn build(tree: &Tree, version: Option<u32>) -> Vec<u8> {
    let mut img = Vec::new();
    write_image(tree, &write_options(version), &mut img).expect("write_image");
    img
}

/// Asserts that `fsck.erofs` accepts `image`; `what` names it in the failure.
pub fn fsck(image: &[u8], what: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, image).unwrap();
    let out = Command::new("fsck.erofs")
        .arg(f.path())
        .output()
        .unwrap_or_else(|e| panic!("running fsck.erofs (install erofs-utils): {e}"));
    assert!(
        out.status.success(),
        "{what}: fsck.erofs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sha256 of `data`, in lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}
