//! Fuzz target: eStargz TOC parser, and the EROFS writer on every tree it accepts.
#![no_main]
use cfsmount::input::estargz::parse;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = parse(data, &common::toc_options()) {
        common::write_image_to_memory(&tree);
    }
});
