//! Shared by the fuzz targets (`mod common;` in each): the limits that keep one input cheap, and
//! the EROFS writer run on what a parser accepts.
#![allow(dead_code)]

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::toc::TocOptions;
use cfsmount::tree::{Limits, Tree};

/// Parser limits for fuzzing: at most 10,000 entries, 64 levels deep.
pub const LIMITS: Limits = Limits { max_entries: 10_000, max_depth: 64 };

/// The default TOC options with `LIMITS`.
pub fn toc_options() -> TocOptions {
    TocOptions { limits: LIMITS, ..TocOptions::default() }
}

/// Writes `tree` as an image into memory and drops it: errors are fine, panics are bugs.
pub fn write_image_to_memory(tree: &Tree) {
    let mut out = Vec::new();
    let _ = write_image(tree, &WriteOptions::default(), &mut out);
}
