//! Shared conformance-data helpers: locating the reference data and reading case inputs.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

const MISSING: &str = "(set CFS_CONFORMANCE to the conformance directory)";

fn require_dir(dir: PathBuf) -> PathBuf {
    assert!(dir.is_dir(), "conformance data missing: {} does not exist {MISSING}", dir.display());
    dir
}

/// The conformance root: `$CFS_CONFORMANCE`, else `$CARGO_MANIFEST_DIR/../shared/conformance`.
pub fn conformance_root() -> PathBuf {
    let dir = match std::env::var_os("CFS_CONFORMANCE") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    require_dir(dir)
}

/// `<root>/composefs-dump`.
pub fn dump_dir() -> PathBuf {
    require_dir(conformance_root().join("composefs-dump"))
}

/// `<root>/composefs-json`.
pub fn json_dir() -> PathBuf {
    require_dir(conformance_root().join("composefs-json"))
}

/// Read a case input; `.gz` is decompressed. A git symlink checked out as a text
/// file (special_v1.dump holds just "special.dump") is followed.
pub fn read_input(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let mut raw = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if raw.len() < 256 && !raw.contains(&b'\n') && !raw.contains(&b' ') {
        let target = dir.join(String::from_utf8_lossy(&raw).trim());
        if target.is_file() {
            raw = std::fs::read(&target).unwrap();
        }
    }
    if name.ends_with(".gz") {
        gunzip(&raw)
    } else {
        raw
    }
}

/// Read a file, decompressed when its name ends in `.gz` (no text-file symlinks followed).
pub fn read_maybe_gz(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        gunzip(&raw)
    } else {
        raw
    }
}

/// The gzip-decompressed `raw`.
pub fn gunzip(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw).read_to_end(&mut out).expect("gunzip");
    out
}

/// The dumpfile cases the reference parses leniently (not in strict mode).
pub const LENIENT_DUMPS: &[&str] = &["no-newline.dump", "longlink.dump", "honggfuzz-longlink-unterminated.dump"];

/// Whether the dumpfile case `name` is parsed in strict mode (all but `LENIENT_DUMPS`).
pub fn is_strict(name: &str) -> bool {
    !LENIENT_DUMPS.contains(&name)
}

/// The format version the case `name` in `dir` forces (`<name>.version`), if any.
pub fn forced_version(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.version")))
        .ok()
        .map(|v| v.trim().parse().expect("version file holds a number"))
}
