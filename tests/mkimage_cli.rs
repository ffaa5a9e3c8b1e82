//! `cfsmount mkimage` driven as a program: every input format, `-` for stdin/stdout,
//! `--print-digest`, `--objects`, `--digest-store`, and hostile input (non-zero exit, one-line
//! message naming the field, nothing left at OUTPUT or next to it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cfsmount");

#[path = "support/conformance.rs"]
mod conformance;

/// The conformance root, asserted to hold `composefs-json/`.
fn conformance_dir() -> PathBuf {
    conformance::json_dir();
    conformance::conformance_root()
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn mkimage(args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(BIN);
    c.arg("mkimage").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().expect("running cfsmount");
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    child.wait_with_output().unwrap()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[track_caller]
fn ok(o: &Output) {
    assert!(o.status.success(), "mkimage failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn fsck(path: &Path) {
    let out = Command::new("fsck.erofs").arg(path).output().expect("running fsck.erofs (install erofs-utils)");
    assert!(out.status.success(), "fsck.erofs {}: {}", path.display(), String::from_utf8_lossy(&out.stdout));
}

/// Entries of `dir` other than `keep` (temporary files must not survive).
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn toc_file_to_image_matches_reference() {
    let c = conformance_dir();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("config.json");
    std::fs::write(&src, conformance::read_maybe_gz(&c.join("composefs-json/config.json.gz"))).unwrap();
    let out = tmp.path().join("config.img");
    let o = mkimage(&[os("--from-toc"), src.as_os_str(), out.as_os_str(), os("--print-digest")], None);
    ok(&o);
    let img = std::fs::read(&out).unwrap();
    let want = std::fs::read_to_string(c.join("composefs-json/config.json.gz.sha256_erofs")).unwrap();
    assert_eq!(hex(&Sha256::digest(&img)), want.trim());
    fsck(&out);
    // --print-digest prints what the fsverity tool computes.
    let fv = Command::new("fsverity").arg("digest").arg(&out).output().expect("running fsverity (install fsverity)");
    let fv = String::from_utf8(fv.stdout).unwrap();
    let printed = String::from_utf8(o.stdout).unwrap();
    assert_eq!(printed.trim().len(), 64, "{printed:?}");
    assert!(fv.starts_with(&format!("sha256:{} ", printed.trim())), "fsverity: {fv:?}, printed {printed:?}");
    assert_eq!(others(tmp.path(), &["config.json", "config.img"]), Vec::<String>::new());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn stdin_to_stdout() {
    let c = conformance_dir();
    let input = conformance::read_maybe_gz(&c.join("composefs-json/config-with-hard-link.json.gz"));
    let o = mkimage(&[os("--from-toc"), os("-"), os("-")], Some(&input));
    ok(&o);
    let want = std::fs::read_to_string(c.join("composefs-json/config-with-hard-link.json.gz.sha256_erofs")).unwrap();
    assert_eq!(hex(&Sha256::digest(&o.stdout)), want.trim());
}

#[test]
fn dumpfile_with_versions() {
    let c = conformance_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("special.img");
    let src = c.join("composefs-dump/special.dump");
    let o = mkimage(
        &[
            os("--from-dump"),
            src.as_os_str(),
            out.as_os_str(),
            os("--min-version"),
            os("0"),
            os("--max-version"),
            os("0"),
        ],
        None,
    );
    ok(&o);
    let want = std::fs::read_to_string(c.join("composefs-dump/special.dump.sha256")).unwrap();
    assert_eq!(hex(&Sha256::digest(std::fs::read(&out).unwrap())), want.trim());
    // The same dump read from stdin into a file.
    let out2 = tmp.path().join("special2.img");
    let o = mkimage(
        &[os("--from-dump"), os("-"), out2.as_os_str(), os("--max-version"), os("0")],
        Some(&std::fs::read(&src).unwrap()),
    );
    ok(&o);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    // Lenient parsing accepts the reference's no-newline case, strict rejects it.
    let nn = c.join("composefs-dump/no-newline.dump");
    let out3 = tmp.path().join("nn.img");
    let o = mkimage(&[os("--from-dump"), nn.as_os_str(), out3.as_os_str()], None);
    assert!(!o.status.success());
    assert!(!out3.exists());
    let o = mkimage(&[os("--from-dump"), os("--lenient"), nn.as_os_str(), out3.as_os_str()], None);
    ok(&o);
}

#[test]
fn estargz_toc_to_image() {
    let tmp = tempfile::tempdir().unwrap();
    let d = "sha256:2ce0d0f8eb2aa93d13007097763e4459c814c8d0e859e5a57465af924169b544";
    let toc = format!(
        r#"{{"version":1,"entries":[
          {{"name":"etc/","type":"dir","mode":493,"modtime":"2023-01-02T03:04:05Z","userName":"root"}},
          {{"name":"etc/f","type":"reg","size":10,"mode":420,"uid":5,"digest":"{d}","chunkSize":0,"innerOffset":0}},
          {{"name":".no.prefetch.landmark","type":"reg","size":1,"digest":"{d}"}}]}}"#
    );
    let src = tmp.path().join("stargz.index.json");
    std::fs::write(&src, toc).unwrap();
    let out = tmp.path().join("e.img");
    ok(&mkimage(&[os("--from-estargz"), src.as_os_str(), out.as_os_str()], None));
    fsck(&out);
    let t = cfsmount::erofs::reader::read_image(&std::fs::read(&out).unwrap()).unwrap();
    let f = t.node(t.lookup(b"etc/f").unwrap());
    assert_eq!((f.entry.inode.uid, f.entry.inode.size), (5, 10));
    assert_eq!(
        f.entry.payload.as_deref(),
        Some(&b"2c/e0d0f8eb2aa93d13007097763e4459c814c8d0e859e5a57465af924169b544"[..])
    );
    assert!(t.lookup(b".no.prefetch.landmark").is_none());
}

#[test]
fn directory_with_digest_store() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let store = tmp.path().join("store");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big = vec![42u8; 100_000];
    std::fs::write(src.join("sub/big"), &big).unwrap();
    std::fs::write(src.join("small"), b"tiny").unwrap();
    std::fs::hard_link(src.join("sub/big"), src.join("big2")).unwrap();
    std::os::unix::fs::symlink("sub/big", src.join("link")).unwrap();
    let out = tmp.path().join("dir.img");
    ok(&mkimage(&[os("--from-dir"), src.as_os_str(), out.as_os_str(), os("--digest-store"), store.as_os_str()], None));
    fsck(&out);
    let t = cfsmount::erofs::reader::read_image(&std::fs::read(&out).unwrap()).unwrap();
    let d = cfsmount::fsverity::digest_bytes(&big);
    let b = t.node(t.lookup(b"sub/big").unwrap());
    assert_eq!(b.entry.fsverity_digest, Some(d));
    let obj = cfsmount::input::dir::object_path(&d);
    assert_eq!(b.entry.payload.as_deref(), Some(obj.as_bytes()));
    assert_eq!(std::fs::read(store.join(&obj)).unwrap(), big);
    assert_eq!(t.node(t.lookup(b"small").unwrap()).entry.content.as_deref(), Some(&b"tiny"[..]));
    let b2 = t.lookup(b"big2").unwrap();
    assert_eq!(t.resolve(b2), t.resolve(t.lookup(b"sub/big").unwrap()), "hard link not preserved");
    assert_eq!(t.node(t.lookup(b"link").unwrap()).entry.payload.as_deref(), Some(&b"sub/big"[..]));
    // `-` is not a directory.
    let o = mkimage(&[os("--from-dir"), os("-"), out.as_os_str()], None);
    assert!(!o.status.success());
}

#[test]
fn toc_with_objects_records_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let objects = tmp.path().join("objects");
    let data = b"object contents, more than sixty-four bytes so that nothing is ever inlined here".repeat(3);
    let h = hex(&Sha256::digest(&data));
    std::fs::create_dir_all(objects.join(&h[..2])).unwrap();
    std::fs::write(objects.join(&h[..2]).join(&h[2..]), &data).unwrap();
    let toc = format!(
        r#"{{"version":1,"entries":[{{"type":"reg","name":"f","size":{},"digest":"sha256:{h}"}}]}}"#,
        data.len()
    );
    let src = tmp.path().join("toc.json");
    std::fs::write(&src, toc).unwrap();
    let out = tmp.path().join("o.img");
    ok(&mkimage(&[os("--from-toc"), src.as_os_str(), out.as_os_str(), os("--objects"), objects.as_os_str()], None));
    let t = cfsmount::erofs::reader::read_image(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(t.node(t.lookup(b"f").unwrap()).entry.fsverity_digest, Some(cfsmount::fsverity::digest_bytes(&data)));
    // A missing object fails the build and leaves nothing behind.
    std::fs::remove_file(objects.join(&h[..2]).join(&h[2..])).unwrap();
    let out2 = tmp.path().join("o2.img");
    let o = mkimage(&[os("--from-toc"), src.as_os_str(), out2.as_os_str(), os("--objects"), objects.as_os_str()], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&h[2..]), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out2.exists());
}

#[test]
fn hostile_input_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.img");
    let cases: &[(&str, &str, &str)] = &[
        ("--from-toc", r#"{"version":1,"entries":[{"type":"reg","name":"a/../../etc/passwd"}]}"#, "name"),
        ("--from-toc", r#"{"version":1,"entries":[{"type":"reg","name":"a","mode":16877}]}"#, "mode"),
        (
            "--from-toc",
            r#"{"version":1,"entries":[{"type":"reg","name":"a","size":4,"digest":"sha256:zz"}]}"#,
            "digest",
        ),
        ("--from-toc", r#"{"version":1,"entries":[{"type":"reg","name":"a","xattrs":{"user.x":"%%%"}}]}"#, "xattrs"),
        ("--from-toc", r#"{"version":1,"entries":[{"type":"hardlink","name":"a","linkName":"nowhere"}]}"#, "linkName"),
        ("--from-toc", r#"{"version":1,"entries":[]} trailing"#, "invalid JSON"),
        ("--from-toc", r#"{"version":2,"entries":[]}"#, "version"),
        ("--from-estargz", r#"{"version":1,"entries":[{"type":"chunk"}]}"#, "type"),
        (
            "--from-dump",
            "/ 0 40755 1 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0.0 - - - \n/.. 0 40755 1 0 0 0 0.0 - - -\n",
            "PATH",
        ),
        // A regular file's payload is its overlay redirect: it must name an object below the
        // object directory, whatever the input format (see redirect_payloads_are_refused).
        ("--from-dump", "/ 0 40755 1 0 0 0 0.0 - - -\n/x 9 100644 1 0 0 0 0.0 ../../../etc/passwd - -\n", "PAYLOAD"),
        (
            "--from-toc",
            r#"{"version":1,"entries":[{"type":"reg","name":"x","size":9,"x-payload":"../etc/passwd"}]}"#,
            "x-payload",
        ),
    ];
    for (flag, input, field) in cases {
        let src = tmp.path().join("input");
        std::fs::write(&src, input).unwrap();
        let o = mkimage(&[os(flag), src.as_os_str(), out.as_os_str()], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flag} {input}: accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{flag} {input}: not one line: {err:?}");
        assert!(err.contains(field), "{flag} {input}: {err:?} does not name {field}");
        assert!(!out.exists(), "{flag} {input}: output left behind");
        assert_eq!(others(tmp.path(), &["input"]), Vec::<String>::new(), "{flag} {input}: temporary files left");
        // Through stdin as well.
        let o = mkimage(&[os(flag), os("-"), out.as_os_str()], Some(input.as_bytes()));
        assert!(!o.status.success() && !out.exists());
    }
    // An existing output is left untouched by a failed build.
    std::fs::write(&out, b"precious").unwrap();
    let src = tmp.path().join("input");
    std::fs::write(&src, "{").unwrap();
    let o = mkimage(&[os("--from-toc"), src.as_os_str(), out.as_os_str()], None);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    // Usage errors.
    let o = mkimage(&[os("--from-toc"), os("--from-dump"), src.as_os_str(), out.as_os_str()], None);
    assert!(!o.status.success());
    let o = mkimage(&[src.as_os_str(), out.as_os_str()], None);
    assert!(!o.status.success());
    let o = mkimage(&[os("--from-toc"), tmp.path().join("missing").as_os_str(), out.as_os_str()], None);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("missing"));
    let o = mkimage(&[os("--from-toc"), src.as_os_str(), tmp.path().join("no/such/dir/x.img").as_os_str()], None);
    assert!(!o.status.success());
}

/// Redirect payloads that would leave the object directory are refused when the input is
/// parsed, before any image exists: the error names the line (dumpfile) or the entry (TOC), in
/// strict and lenient mode, and nothing is left at OUTPUT. The object layout's forms
/// (`xx/rest`, and `/xx/rest` for the dumpfile) are accepted and become the redirect `/` +
/// payload.
#[test]
fn redirect_payloads_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.img");
    let src = tmp.path().join("input");
    let dump = |payload: &str| {
        format!("/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n/d/f 9 100644 1 0 0 0 0.0 {payload} - -\n")
    };
    for payload in
        ["../../../etc/passwd", "ab/../../x", "..", "./ab/cd", "//etc/passwd", "ab//cd", "ab/cd/", "/", "/.."]
    {
        for lenient in [false, true] {
            std::fs::write(&src, dump(payload)).unwrap();
            let mut args = vec![os("--from-dump"), src.as_os_str(), out.as_os_str()];
            if lenient {
                args.insert(0, os("--lenient"));
            }
            let o = mkimage(&args, None);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{payload} (lenient {lenient}): accepted");
            assert_eq!(err.trim_end().lines().count(), 1, "{payload}: not one line: {err:?}");
            assert!(err.contains("dumpfile line 3: /d/f: PAYLOAD:"), "{payload}: {err:?} does not name line and field");
            assert!(err.contains("is not an object path"), "{payload}: {err:?}");
            assert!(!out.exists(), "{payload}: output left behind");
            assert_eq!(others(tmp.path(), &["input"]), Vec::<String>::new(), "{payload}: temporary files left");
        }
    }
    for payload in ["../x", "/ab/cd", "ab/./cd"] {
        let toc =
            format!(r#"{{"version":1,"entries":[{{"type":"reg","name":"f","size":9,"x-payload":"{payload}"}}]}}"#);
        std::fs::write(&src, toc).unwrap();
        let o = mkimage(&[os("--from-toc"), src.as_os_str(), out.as_os_str()], None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "x-payload {payload}: accepted");
        assert!(err.contains("TOC entry 0 (\"f\"): x-payload:"), "{payload}: {err:?} does not name entry and field");
        assert!(!out.exists());
    }
    // The object layout: `xx/rest`, and in a dumpfile also `/xx/rest` (the same object).
    for (payload, redirect) in [("ab/cdef", &b"/ab/cdef"[..]), ("/ab/cdef", b"//ab/cdef")] {
        std::fs::write(&src, dump(payload)).unwrap();
        let o = mkimage(&[os("--from-dump"), src.as_os_str(), out.as_os_str()], None);
        assert!(o.status.success(), "{payload}: {}", String::from_utf8_lossy(&o.stderr));
        let img = std::fs::read(&out).unwrap();
        assert!(img.windows(redirect.len() + 1).any(|w| w[1..] == *redirect && w[0] != b'/'), "{payload}: redirect");
        let t = cfsmount::erofs::reader::read_image(&img).unwrap();
        assert_eq!(t.node(t.lookup(b"d/f").unwrap()).entry.payload.as_deref(), Some(payload.as_bytes()));
        std::fs::remove_file(&out).unwrap();
    }
}

/// examples/hello: every object is named by the sha256 of its bytes, the image builds, passes
/// fsck.erofs and holds what toc.json describes (symlink, hard link, xattr, ownership).
#[test]
fn bundled_example() {
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    let objects = ex.join("objects");
    let mut n = 0;
    for d in std::fs::read_dir(&objects).unwrap() {
        let d = d.unwrap();
        for f in std::fs::read_dir(d.path()).unwrap() {
            let f = f.unwrap();
            let name = format!("{}{}", d.file_name().to_string_lossy(), f.file_name().to_string_lossy());
            assert_eq!(hex(&Sha256::digest(std::fs::read(f.path()).unwrap())), name, "{}", f.path().display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected the example's objects");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hello.img");
    ok(&mkimage(&[os("--from-toc"), ex.join("toc.json").as_os_str(), out.as_os_str()], None));
    fsck(&out);
    let t = cfsmount::erofs::reader::read_image(&std::fs::read(&out).unwrap()).unwrap();
    let hello = t.lookup(b"hello.txt").unwrap();
    let again = t.lookup(b"share/doc/hello/hello-again.txt").unwrap();
    assert_eq!(t.resolve(again), t.resolve(hello));
    let h = t.node(t.resolve(hello));
    assert!(h.entry.xattrs.iter().any(|x| x.key == b"user.greeting" && x.value == b"hi there"));
    let payload = String::from_utf8(h.entry.payload.clone().unwrap()).unwrap();
    assert!(objects.join(&payload).is_file(), "redirect target {payload} missing from objects/");
    assert_eq!(t.node(t.lookup(b"latest").unwrap()).entry.payload.as_deref(), Some(&b"hello.txt"[..]));
    assert_eq!(t.node(t.lookup(b"empty").unwrap()).entry.inode.uid, 1000);
}

/// `--version` names the version and whether the parser sandbox is complete on this kernel;
/// `-V` stays the short form.
#[test]
fn version_reports_the_sandbox_state() {
    let o = Command::new(BIN).arg("--version").output().unwrap();
    ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first().copied(), Some(concat!("cfsmount ", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(
        lines.get(1).is_some_and(
            |l| l.starts_with("sandbox: complete (landlock ABI ") || l.starts_with("sandbox: WARNING incomplete")
        ),
        "{text}"
    );
    let short = Command::new(BIN).arg("-V").output().unwrap();
    ok(&short);
    assert_eq!(String::from_utf8(short.stdout).unwrap().trim_end(), concat!("cfsmount ", env!("CARGO_PKG_VERSION")));
}
