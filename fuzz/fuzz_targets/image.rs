//! Fuzz target: the hostile-image EROFS reader, and the dumpfile printer on what it accepts.
#![no_main]
use cfsmount::erofs::reader::read_image;
use cfsmount::input::dump::write_dump;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = read_image(data) {
        let mut text = Vec::new();
        let _ = write_dump(&tree, &mut text);
    }
});
