//! Conformance: every composefs dumpfile case of the reference test suite builds an
//! image whose sha256 equals the reference's, passes `fsck.erofs`, and survives the
//! dump printer round trip; every `should-fail-*` case is rejected with a clear error.

use std::path::{Path, PathBuf};

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{parse, write_dump, DumpOptions};
use cfsmount::tree::Limits;

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{forced_version, is_strict, read_input};
#[path = "support/image.rs"]
mod image;
use image::{fsck, sha256_hex, write_options};

fn conformance_dir() -> PathBuf {
    conformance::dump_dir()
}

/// The parser and writer options of the case `name` in `dir`.
fn options_for(dir: &Path, name: &str) -> (DumpOptions, WriteOptions) {
    let dopts = DumpOptions { strict: is_strict(name), limits: Limits::default() };
    (dopts, write_options(forced_version(dir, name)))
}

fn check_case(name: &str) {
    let dir = conformance_dir();
    let expected =
        std::fs::read_to_string(dir.join(format!("{name}.sha256"))).unwrap_or_else(|e| panic!("{name}.sha256: {e}"));
    let expected = expected.split_whitespace().next().unwrap_or("").to_string();
    let input = read_input(&dir, name);
    let (dopts, wopts) = options_for(&dir, name);
    let tree = parse(&input, &dopts).unwrap_or_else(|e| panic!("{name}: parse failed: {e}"));
    let mut image = Vec::new();
    write_image(&tree, &wopts, &mut image).unwrap_or_else(|e| panic!("{name}: write failed: {e}"));
    let got = sha256_hex(&image);
    if got != expected {
        let keep = std::env::temp_dir().join(format!("cfs-conformance-{name}.img"));
        let _ = std::fs::write(&keep, &image);
        panic!("{name}: image sha256 {got}, expected {expected} (image kept at {})", keep.display());
    }
    fsck(&image, name);
    // The printer's output must describe the same tree: it builds the same image.
    let mut dump = Vec::new();
    write_dump(&tree, &mut dump).unwrap();
    let tree2 = parse(&dump, &DumpOptions { strict: true, limits: Limits::default() })
        .unwrap_or_else(|e| panic!("{name}: reparsing printed dump: {e}"));
    let mut image2 = Vec::new();
    write_image(&tree2, &wopts, &mut image2).unwrap();
    assert!(image == image2, "{name}: dump -> parse -> image differs from the original image");
}

fn check_fails(name: &str) {
    let dir = conformance_dir();
    let input = read_input(&dir, name);
    let dopts = DumpOptions { strict: true, limits: Limits::default() };
    let msg = match parse(&input, &dopts) {
        Err(e) => e.to_string(),
        Ok(tree) => {
            let mut image = Vec::new();
            match write_image(&tree, &WriteOptions::default(), &mut image) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{name}: expected failure, but an image of {} bytes was written", image.len()),
            }
        }
    };
    // The error names where the problem is: a dumpfile line or a path.
    assert!(msg.contains("line ") || msg.contains('/'), "{name}: error lacks location: {msg}");
    eprintln!("{name}: rejected: {msg}");
}

macro_rules! cases {
    ($($fn:ident => $file:literal),* $(,)?) => {
        $( #[test] fn $fn() { check_case($file) } )*
        const CASES: &[&str] = &[$($file),*];
    };
}
macro_rules! failing {
    ($($fn:ident => $file:literal),* $(,)?) => {
        $( #[test] fn $fn() { check_fails($file) } )*
        const FAILING: &[&str] = &[$($file),*];
    };
}

cases! {
    case_bigfile_xattr => "bigfile-xattr.dump",
    case_bigfile => "bigfile.dump",
    case_config_with_hard_link => "config-with-hard-link.dump.gz",
    case_config => "config.dump.gz",
    case_cs9_x86_64_developer => "cs9-x86_64-developer.dump.gz",
    case_cs9_x86_64_minimal => "cs9-x86_64-minimal.dump.gz",
    case_honggfuzz_bigfile_with_acl => "honggfuzz-bigfile-with-acl.dump",
    case_honggfuzz_chardev_nonzero_size => "honggfuzz-chardev-nonzero-size.dump",
    case_honggfuzz_long_symlink => "honggfuzz-long-symlink.dump",
    case_honggfuzz_longlink_unterminated => "honggfuzz-longlink-unterminated.dump",
    case_longlink => "longlink.dump",
    case_no_newline => "no-newline.dump",
    case_special => "special.dump",
    case_special_v1 => "special_v1.dump",
}

failing! {
    fail_big_inline => "should-fail-big-inline.dump",
    fail_dir_hardlink => "should-fail-dir-hardlink.dump",
    fail_dot_name => "should-fail-dot-name.dump",
    fail_dotdot_name => "should-fail-dotdot-name.dump",
    fail_empty_link_name => "should-fail-empty-link-name.dump",
    fail_empty_name => "should-fail-empty-name.dump",
    fail_empty_xattr_key => "should-fail-empty-xattr-key.dump",
    fail_honggfuzz_long_xattr => "should-fail-honggfuzz-long-xattr.dump",
    fail_long_link => "should-fail-long-link.dump",
    fail_long_xattr_key => "should-fail-long-xattr-key.dump",
    fail_long_xattr_value => "should-fail-long-xattr-value.dump",
    fail_no_ftype => "should-fail-no-ftype.dump",
    fail_self_hardlink => "should-fail-self-hardlink.dump",
    fail_too_big => "should-fail-too-big.dump",
}

/// Every input in the conformance directory is covered by one of the checks above;
/// `.sha256` files without an input are the documented leftovers.
#[test]
fn every_case_is_covered() {
    let dir = conformance_dir();
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".sha256") {
            let input = name.trim_end_matches(".sha256");
            if !dir.join(input).exists() {
                continue; // reference leftovers without input
            }
            assert!(CASES.contains(&input), "{input} has an expected hash but no check");
        } else if name.ends_with(".version") {
            continue;
        } else if name.starts_with("should-fail-") {
            assert!(FAILING.contains(&name.as_str()), "{name} is not checked");
            seen += 1;
        } else {
            assert!(CASES.contains(&name.as_str()), "{name} is not checked");
            seen += 1;
        }
    }
    assert_eq!(seen, CASES.len() + FAILING.len());
}
