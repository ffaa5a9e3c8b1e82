//! `mkimage --enable-verity` on a filesystem without fs-verity (the test machines' kernel has it
//! compiled out): a clear error naming the output, non-zero exit, and nothing left behind.
//! The success path is tested in the VM tier (tests/vm/inside.sh, t_mkimage_enable_verity).
use std::process::Command;

#[test]
fn enable_verity_unsupported_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hello.img");
    let toc = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello/toc.json");
    let r = Command::new(env!("CARGO_BIN_EXE_cfsmount"))
        .args(["mkimage", "--from-toc", "--enable-verity", toc])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "expected failure, stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error expected: {err}");
    assert!(err.contains("fs-verity") && err.contains("hello.img"), "error should name verity and the output: {err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn enable_verity_refuses_stdout() {
    let toc = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello/toc.json");
    let r = Command::new(env!("CARGO_BIN_EXE_cfsmount"))
        .args(["mkimage", "--from-toc", "--enable-verity", toc, "-"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("--enable-verity needs an OUTPUT file"));
    assert!(r.stdout.is_empty(), "no image bytes may reach stdout");
}
