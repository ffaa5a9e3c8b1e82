//! Fuzz target: a layer blob (tar, gzip, zstd, zstd:chunked, eStargz) through the whole reader
//! — detection, footers, TOC, tar-split, tar stream, tree, chunk and digest checks — in
//! process, objects hashed and dropped. Errors are fine, panics and hangs are bugs.
#![no_main]
use cfsmount::layer::{read_in_process, InProcess};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let o = InProcess { max_uncompressed: 16 << 20, limits: common::LIMITS, tar_split: true, ..InProcess::default() };
    let _ = read_in_process(data, &o);
});
