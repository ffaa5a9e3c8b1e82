//! Fuzz target: composefs dumpfile parser (strict and lenient), printer and writer on what it accepts.
#![no_main]
use cfsmount::input::dump::{parse, write_dump, DumpOptions};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    for strict in [false, true] {
        if let Ok(tree) = parse(data, &DumpOptions { strict, limits: common::LIMITS }) {
            let mut text = Vec::new();
            let _ = write_dump(&tree, &mut text);
            common::write_image_to_memory(&tree);
        }
    }
});
