//! Tier 1 tests for the userspace fs-verity digest (against `fsverity digest` from fsverity-utils),
//! the `cfsmount verity` CLI output format, and enable/measure on a kernel without fs-verity.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use cfsmount::fsverity::{self, Enabled, VerityError};

#[path = "support/random.rs"]
mod random;

/// Deterministic content, different for every size.
fn content(size: usize) -> Vec<u8> {
    random::Rng((size as u64).wrapping_mul(0x0123_4567_89ab_cdef)).fill(size)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fsverity-digest-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a scratch directory")
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut f = File::create(&p).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    p
}

/// Runs `fsverity digest FILE` and returns its whole stdout line; fails if the tool is missing.
fn reference_line(path: &Path) -> String {
    let out = match Command::new("fsverity").arg("digest").arg(path).output() {
        Ok(o) => o,
        Err(e) => panic!("the `fsverity` tool (Debian package fsverity) is needed as the reference for this test: {e}"),
    };
    assert!(
        out.status.success(),
        "fsverity digest {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn reference_hex(path: &Path) -> String {
    let line = reference_line(path);
    let hex = line
        .strip_prefix("sha256:")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected fsverity output {line:?}"));
    assert_eq!(hex.len(), 64, "unexpected fsverity output {line:?}");
    hex.to_string()
}

/// Every implementation path must give the reference digest for a file of `size` bytes.
fn check_size(dir: &Path, size: usize) {
    let data = content(size);
    let path = write_file(dir, &format!("f{size}"), &data);
    let want = reference_hex(&path);

    let f = File::open(&path).unwrap();
    let got_file = fsverity::to_hex(&fsverity::digest_file(&f).unwrap());
    assert_eq!(got_file, want, "digest_file, size {size}");
    let got_bytes = fsverity::to_hex(&fsverity::digest_bytes(&data));
    assert_eq!(got_bytes, want, "digest_bytes, size {size}");
    let thread_counts: &[usize] = if size > (8 << 20) { &[1, 3] } else { &[1, 2, 3, 8] };
    for &threads in thread_counts {
        let d = fsverity::digest_file_with(&f, size as u64, threads).unwrap();
        assert_eq!(fsverity::to_hex(&d), want, "digest_file_with {threads} threads, size {size}");
    }
    assert_eq!(fsverity::to_hex(&fsverity::digest_path(&path).unwrap()), want, "digest_path, size {size}");
}

#[test]
fn digest_matches_fsverity_small_sizes() {
    let dir = scratch();
    // 64 KiB is the pread size of digest_file.
    for size in [0, 1, 4095, 4096, 4097, 8192, 12289, 65535, 65536, 65537] {
        check_size(dir.path(), size);
    }
}

/// Sizes around the first-level tree block (128 data blocks = 512 KiB), the parallel work unit
/// (2 MiB) and the 1 MiB+1 of the issue.
#[test]
fn digest_matches_fsverity_tree_boundaries() {
    let dir = scratch();
    for size in [(512 << 10) - 1, 512 << 10, (512 << 10) + 1, (1 << 20) + 1, (2 << 20) + 4096 * 3 + 5, (4 << 20) + 1] {
        check_size(dir.path(), size);
    }
}

/// 64 MiB is exactly 128 first-level hashes (one block); 64 MiB + 1 and 65 MiB + 123 need a
/// third tree level.
#[test]
fn digest_matches_fsverity_three_levels() {
    let dir = scratch();
    for size in [64 << 20, (64 << 20) + 1, (65 << 20) + 123] {
        check_size(dir.path(), size);
    }
}

/// `cfsmount verity digest` prints exactly what `fsverity digest` prints, for several files.
#[test]
fn cli_digest_output_matches_fsverity() {
    let dir = scratch();
    let files: Vec<PathBuf> =
        [0usize, 5000, (1 << 20) + 1].iter().map(|&s| write_file(dir.path(), &format!("c{s}"), &content(s))).collect();
    let want: String = files.iter().map(|p| reference_line(p)).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cfsmount")).args(["verity", "digest"]).args(&files).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);

    let out = Command::new(env!("CARGO_BIN_EXE_cfsmount"))
        .args(["verity", "digest", "--compact"])
        .arg(&files[1])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{}\n", reference_hex(&files[1])));
}

/// A missing file among several: non-zero exit, the file is named, the good file still printed.
#[test]
fn cli_digest_failure_names_file() {
    let dir = scratch();
    let good = write_file(dir.path(), "good", b"x");
    let missing = dir.path().join("does-not-exist");
    let out = Command::new(env!("CARGO_BIN_EXE_cfsmount"))
        .args(["verity", "digest"])
        .arg(&good)
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&*missing.to_string_lossy()), "stderr does not name the file: {err}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), reference_line(&good));
}

#[test]
fn digest_rejects_non_regular_files() {
    let dir = scratch();
    let d = File::open(dir.path()).unwrap();
    assert!(fsverity::digest_file(&d).is_err());
    let e = fsverity::digest_path(&dir.path().join("nope")).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

/// True if this kernel's ext4 was built with fs-verity.
fn kernel_ext4_has_verity() -> bool {
    Path::new("/sys/fs/ext4/features/verity").exists()
}

/// On the test machines fs-verity is compiled out (see docs/kernel-test-tiers): enabling and
/// measuring must give the Unsupported error, naming the file. (Where the kernel has verity,
/// the filesystem may still lack the feature; if enable succeeds, measure must equal the
/// userspace digest.)
#[test]
fn enable_and_measure_without_kernel_verity() {
    let dir = scratch();
    let path = write_file(dir.path(), "plain", &content(10000));
    let name = path.display().to_string();
    let verity_kernel = kernel_ext4_has_verity();

    match fsverity::enable_path(&path) {
        Err(e) => {
            assert!(e.is_unsupported(), "expected Unsupported, got: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&name), "error does not name the file: {msg}");
            assert!(msg.contains("not supported"), "{msg}");
        }
        Ok(r) => {
            assert!(verity_kernel, "enable succeeded although ext4 has no verity feature: {r:?}");
            assert_eq!(r, Enabled::Now);
            assert_eq!(fsverity::enable_path(&path).unwrap(), Enabled::AlreadyEnabled);
            let m = fsverity::measure_path(&path).unwrap();
            assert_eq!(m, fsverity::digest_path(&path).unwrap());
            return;
        }
    }
    let e = fsverity::measure_path(&path).unwrap_err();
    assert!(e.is_unsupported() || (verity_kernel && matches!(e.kind(), VerityError::NotEnabled)), "measure: {e}");
    assert!(e.to_string().contains(&name), "{e}");

    // The CLI exits non-zero and names the file.
    for verb in ["enable", "measure"] {
        let out = Command::new(env!("CARGO_BIN_EXE_cfsmount")).args(["verity", verb]).arg(&path).output().unwrap();
        assert!(!out.status.success(), "verity {verb} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&name), "verity {verb} stderr does not name the file: {err}");
        assert!(out.stdout.is_empty());
    }
}

/// The kernel needs a read-only fd; a writable one is refused before the ioctl with a clear error.
#[test]
fn enable_refuses_writable_fd() {
    let dir = scratch();
    let path = write_file(dir.path(), "w", b"data");
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let e = fsverity::enable(f.as_fd()).unwrap_err();
    assert!(matches!(e, VerityError::WritableFd), "{e}");
}

/// Directories and devices are refused before the ioctl, naming the file.
#[test]
fn enable_refuses_non_regular_files() {
    let dir = scratch();
    for p in [dir.path(), Path::new("/dev/null")] {
        let e = fsverity::enable_path(p).unwrap_err();
        assert!(matches!(e.kind(), VerityError::NotRegular), "{}: {e}", p.display());
        assert!(e.to_string().contains(&*p.to_string_lossy()), "{e}");
    }
}
