//! Fuzz target: composefs dumpfile parser (strict and lenient), printer and writer on what it accepts.
#![no_main]
use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{parse, write_dump, DumpOptions};
use cfsmount::tree::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_entries: 10_000, max_depth: 64 };
    for strict in [false, true] {
        if let Ok(tree) = parse(data, &DumpOptions { strict, limits }) {
            let mut text = Vec::new();
            let _ = write_dump(&tree, &mut text);
            let mut out = Vec::new();
            let _ = write_image(&tree, &WriteOptions::default(), &mut out);
        }
    }
});
