//! Fuzz target: eStargz TOC parser, and the EROFS writer on every tree it accepts.
#![no_main]
use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::estargz::parse;
use cfsmount::input::toc::TocOptions;
use cfsmount::tree::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = TocOptions { limits: Limits { max_entries: 10_000, max_depth: 64 }, ..TocOptions::default() };
    if let Ok(tree) = parse(data, &opts) {
        let mut out = Vec::new();
        let _ = write_image(&tree, &WriteOptions::default(), &mut out);
    }
});
