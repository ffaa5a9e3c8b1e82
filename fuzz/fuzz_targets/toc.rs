//! Fuzz target: zstd:chunked TOC parser, and the EROFS writer on every tree it accepts.
#![no_main]
use cfsmount::input::toc::{parse, TocOptions};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let opts = common::toc_options();
    if let Ok(tree) = parse(data, &opts) {
        common::write_image_to_memory(&tree);
    }
    let _ = parse(data, &TocOptions { keep_whiteouts: true, ..opts });
});
