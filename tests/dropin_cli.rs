//! The drop-in personalities (`mkcomposefs`, `composefs-info`, `composefs-dump`; docs/dropin.md)
//! driven end to end through links to the cfsmount binary, the way containers/storage, the
//! reference's own test scripts and users call the reference tools.
//!
//! Expected results come from the reference, never from cfsmount: the conformance sha256s, the
//! real-layer images of `expected/composefs.json`, and `tests/data/dropin/reference-outputs.tsv`
//! (what the reference composefs-info prints; made by `tests/dropin/reference-outputs.sh` with a
//! reference build). Where cfsmount deliberately differs (docs/dropin.md, "Differences"), the
//! expectation is written out by hand and the test says why.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{forced_version, is_strict, read_input, read_maybe_gz};
#[path = "support/image.rs"]
mod image;
use image::{fsck, sha256_hex};

/// A private directory with `mkcomposefs`, `composefs-info`, `composefs-dump` linking to the
/// cfsmount binary under test.
fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dropin-bin");
        fs::create_dir_all(&d).unwrap();
        for t in ["mkcomposefs", "composefs-info", "composefs-dump"] {
            let _ = fs::remove_file(d.join(t));
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cfsmount"), d.join(t)).unwrap();
        }
        d
    })
}

fn tool(name: &str) -> Command {
    let mut c = Command::new(tools().join(name));
    c.env_remove("CFS_PARSE_STRICT").env_remove("POSIXLY_CORRECT").stdin(Stdio::null());
    c
}

/// Run `cmd`, feeding `input` on stdin through a pipe (from a thread: the tool may write while
/// it reads), capturing stdout and stderr.
fn run_with(mut cmd: Command, input: Option<Vec<u8>>) -> Output {
    cmd.stdout(Stdio::piped());
    run_keeping_stdout(cmd, input)
}

/// [`run_with`] for a command whose stdout was set by the caller.
fn run_keeping_stdout(mut cmd: Command, input: Option<Vec<u8>>) -> Output {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let writer = input.map(|data| {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("wait");
    if let Some(w) = writer {
        w.join().unwrap();
    }
    out
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("cfsmount-dropin-{prefix}.")).tempdir_in("/var/tmp").unwrap()
}

/// The conformance dumpfile cases with an expected image (should-fail cases and sha256 files
/// without an input left out).
fn conformance_cases() -> Vec<String> {
    let dir = conformance::dump_dir();
    let mut v: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".dump") || n.ends_with(".dump.gz")) && !n.starts_with("should-fail"))
        .filter(|n| dir.join(format!("{n}.sha256")).is_file())
        .collect();
    v.sort();
    assert!(v.len() >= 13, "too few conformance cases: {v:?}");
    v
}

fn expected_sha(name: &str) -> String {
    let s = fs::read_to_string(conformance::dump_dir().join(format!("{name}.sha256"))).unwrap();
    s.split_whitespace().next().unwrap().to_string()
}

/// `--min-version=V --max-version=V` for a case with a `.version` file.
fn version_args(name: &str) -> Vec<String> {
    match forced_version(&conformance::dump_dir(), name) {
        Some(v) => vec![format!("--min-version={v}"), format!("--max-version={v}")],
        None => Vec::new(),
    }
}

/// `mkcomposefs` as the reference test suite runs it for `name`: strict unless the case is one
/// the reference parses leniently.
fn mk(name: &str) -> Command {
    let mut c = tool("mkcomposefs");
    if is_strict(name) {
        c.env("CFS_PARSE_STRICT", "1");
    }
    c.args(version_args(name));
    c
}

/// A new output file, created the way containers/storage creates composefs.blob.
fn exclusive(path: &Path) -> File {
    OpenOptions::new().write(true).create_new(true).mode(0o644).open(path).unwrap()
}

#[test]
fn every_conformance_case_through_stdin_stdout_a_file_and_proc_self_fd_3() {
    let dir = conformance::dump_dir();
    let work = scratch("conformance");
    for name in conformance_cases() {
        let want = expected_sha(&name);
        let input = read_input(&dir, &name);
        let in_path = work.path().join("input.dump");
        fs::write(&in_path, &input).unwrap();

        // 1. `--from-file - -`: containers/storage >= 1.56 (stdout is its O_EXCL blob file).
        let blob = work.path().join(format!("{name}.stdout.img"));
        let mut c = mk(&name);
        c.args(["--from-file", "-", "-"]).stdin(File::open(&in_path).unwrap()).stdout(exclusive(&blob));
        let out = c.output().unwrap();
        ok(&out, &format!("{name}: --from-file - -"));
        let img = fs::read(&blob).unwrap();
        assert_eq!(sha256_hex(&img), want, "{name}: image written to stdout");
        fsck(&img, &name);

        // 2. A file path, over an existing file.
        let file = work.path().join(format!("{name}.file.img"));
        fs::write(&file, b"old content").unwrap();
        let mut c = mk(&name);
        c.arg("--from-file").arg(&in_path).arg(&file);
        ok(&c.output().unwrap(), &format!("{name}: file output"));
        assert_eq!(sha256_hex(&fs::read(&file).unwrap()), want, "{name}: image written to a file");

        // 3. `--from-file - /proc/self/fd/3`: containers/storage 1.50 - 1.55 (fd 3 is the blob).
        let fd3 = work.path().join(format!("{name}.fd3.img"));
        let mut c = Command::new("sh");
        c.arg("-c").arg(r#"exec 3>"$1" && shift && exec "$@""#).arg("sh").arg(&fd3);
        c.arg(tools().join("mkcomposefs")).args(version_args(&name)).args(["--from-file", "-", "/proc/self/fd/3"]);
        if is_strict(&name) {
            c.env("CFS_PARSE_STRICT", "1");
        }
        c.stdin(File::open(&in_path).unwrap());
        ok(&c.output().unwrap(), &format!("{name}: /proc/self/fd/3"));
        assert_eq!(sha256_hex(&fs::read(&fd3).unwrap()), want, "{name}: image written to /proc/self/fd/3");

        // composefs-dump reproduces the image byte for byte ...
        let again = work.path().join(format!("{name}.dumped.img"));
        let out = tool("composefs-dump").arg(&file).arg(&again).output().unwrap();
        ok(&out, &format!("{name}: composefs-dump"));
        assert_eq!(sha256_hex(&fs::read(&again).unwrap()), want, "{name}: composefs-dump");

        // ... and so does composefs-info dump | mkcomposefs --from-file -.
        let out = tool("composefs-info").arg("dump").arg(&file).output().unwrap();
        ok(&out, &format!("{name}: composefs-info dump"));
        let back = work.path().join(format!("{name}.info.img"));
        let mut c = tool("mkcomposefs");
        c.args(version_args(&name)).args(["--from-file", "-"]).arg(&back);
        ok(&run_with(c, Some(out.stdout)), &format!("{name}: composefs-info dump | mkcomposefs"));
        assert_eq!(sha256_hex(&fs::read(&back).unwrap()), want, "{name}: composefs-info dump | mkcomposefs");
        for p in [&blob, &file, &fd3, &again, &back] {
            fs::remove_file(p).unwrap();
        }
    }
}

#[test]
fn should_fail_cases_fail_with_status_1_and_leave_the_output_alone() {
    let dir = conformance::dump_dir();
    let work = scratch("should-fail");
    let mut n = 0;
    for e in fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !name.starts_with("should-fail-") {
            continue;
        }
        n += 1;
        for strict in [false, true] {
            let out_path = work.path().join("out.cfs");
            fs::write(&out_path, b"precious").unwrap();
            let mut c = tool("mkcomposefs");
            if strict {
                c.env("CFS_PARSE_STRICT", "");
            }
            let out = c.arg("--from-file").arg(dir.join(&name)).arg(&out_path).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{name} (strict {strict}) must fail with 1: {}", stderr(&out));
            assert!(stderr(&out).starts_with("mkcomposefs: "), "{name}: {}", stderr(&out));
            assert_eq!(fs::read(&out_path).unwrap(), b"precious", "{name}: the output was touched");
        }
    }
    assert!(n >= 14, "only {n} should-fail cases");
    // No temporary file left behind in the output's directory.
    let left: Vec<_> = fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("out.cfs")]);
}

#[test]
fn containers_storage_dumpfiles_of_real_layers_give_the_reference_images() {
    let root = conformance::conformance_root().join("real-layers");
    let text = fs::read_to_string(root.join("expected/composefs.json")).unwrap();
    let work = scratch("real-layers");
    let mut n = 0;
    // A small reader for the flat records of composefs.json (no JSON crate needed here).
    for rec in text.split('{').skip(1) {
        let field = |k: &str| {
            let at = rec.find(&format!("\"{k}\""))?;
            let rest = &rec[at + k.len() + 2..];
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            Some(rest[start..end].to_string())
        };
        let Some(dump) = field("cstorage_dump") else { continue };
        let sha = field("reference_image_sha256").unwrap();
        let verity = field("reference_image_fsverity").unwrap();
        let input = read_maybe_gz(&root.join(&dump));
        // These dumpfiles need the lenient default (symlinks with SIZE 0): no CFS_PARSE_STRICT.
        let blob = work.path().join(format!("blob{n}"));
        let mut c = tool("mkcomposefs");
        c.args(["--from-file", "-", "-"]).stdout(exclusive(&blob));
        let out = run_keeping_stdout(c, Some(input.clone()));
        ok(&out, &dump);
        assert_eq!(sha256_hex(&fs::read(&blob).unwrap()), sha, "{dump}: --from-file - -");
        // The older call, with --print-digest: the digest is the reference's.
        let img = work.path().join(format!("img{n}"));
        let mut c = tool("mkcomposefs");
        c.args(["--print-digest", "--from-file", "-"]).arg(&img);
        let out = run_with(c, Some(input.clone()));
        ok(&out, &dump);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{verity}\n"), "{dump}: --print-digest");
        assert_eq!(sha256_hex(&fs::read(&img).unwrap()), sha, "{dump}: file output");
        // Strict parsing refuses those with symlinks (layer 1: SIZE 0 symlinks), as the reference
        // does ("Invalid symlink size 7, must match size 0"); layer 2 has none.
        let mut c = tool("mkcomposefs");
        let strict_img = work.path().join(format!("strict{n}"));
        c.env("CFS_PARSE_STRICT", "1").args(["--from-file", "-"]).arg(&strict_img);
        let out = run_with(c, Some(input));
        if dump.contains(".layer1.") {
            assert_eq!(out.status.code(), Some(1), "{dump}: strict parse must fail");
            assert!(stderr(&out).contains("symlink"), "{dump}: {}", stderr(&out));
            assert!(!strict_img.exists());
        } else {
            ok(&out, &format!("{dump}: strict"));
            assert_eq!(sha256_hex(&fs::read(&strict_img).unwrap()), sha, "{dump}: strict");
        }
        n += 1;
    }
    assert!(n >= 9, "only {n} containers/storage dumpfiles");
}

/// One row of tests/data/dropin/reference-outputs.tsv.
struct Row {
    case: String,
    args: Vec<String>,
    status: i32,
    sha: String,
}

fn reference_rows() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dropin/reference-outputs.tsv");
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "bad row {l:?}");
            Row {
                case: f[0].into(),
                args: f[1].split(';').map(String::from).collect(),
                status: f[2].parse().unwrap(),
                sha: f[3].into(),
            }
        })
        .collect()
}

/// The input of a case: a conformance dumpfile or one of tests/data/dropin.
fn case_input(case: &str) -> (Vec<u8>, Vec<String>) {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dropin").join(case);
    if local.is_file() {
        (fs::read(local).unwrap(), Vec::new())
    } else {
        (read_input(&conformance::dump_dir(), case), version_args(case))
    }
}

#[test]
fn composefs_info_prints_what_the_reference_prints() {
    let work = scratch("info");
    let base = work.path().join("base");
    fs::create_dir_all(base.join("ab")).unwrap();
    fs::create_dir_all(base.join("cd")).unwrap();
    fs::write(base.join("ab/present01"), b"").unwrap();
    fs::write(base.join("cd/present2"), b"").unwrap();
    let img = work.path().join("img");
    let mut current = String::new();
    let mut failures = Vec::new();
    let rows = reference_rows();
    assert!(rows.len() > 100, "reference-outputs.tsv has only {} rows", rows.len());
    for row in rows {
        if row.case != current {
            let (input, vargs) = case_input(&row.case);
            let mut c = tool("mkcomposefs");
            c.args(&vargs).args(["--from-file", "-"]).arg(&img);
            ok(&run_with(c, Some(input)), &row.case);
            current = row.case.clone();
        }
        if row.args == ["=image"] {
            if sha256_hex(&fs::read(&img).unwrap()) != row.sha {
                failures.push(format!("{}: image differs from the reference's", row.case));
            }
            continue;
        }
        let args: Vec<String> = row
            .args
            .iter()
            .map(|a| a.replace("IMAGE", img.to_str().unwrap()).replace("BASEDIR", base.to_str().unwrap()))
            .collect();
        let out = tool("composefs-info").args(&args).output().unwrap();
        if out.status.code() != Some(row.status) || sha256_hex(&out.stdout) != row.sha {
            failures.push(format!(
                "{} composefs-info {:?}: status {:?} (want {}), output:\n{}{}",
                row.case,
                row.args,
                out.status.code(),
                row.status,
                String::from_utf8_lossy(&out.stdout).chars().take(3000).collect::<String>(),
                stderr(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{} differences:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn composefs_info_filters_like_the_reference_test_script() {
    // tests/test-dump-filtered.sh of the reference, as assertions.
    let work = scratch("filter");
    let img = work.path().join("out.cfs");
    let special = conformance::dump_dir().join("special.dump");
    let input = read_input(&conformance::dump_dir(), "special.dump");
    let mut c = tool("mkcomposefs");
    c.args(["--from-file", "-"]).arg(&img);
    ok(&run_with(c, Some(input)), "special.dump");
    let out = tool("composefs-info")
        .args(["--filter=chardev", "--filter=inline", "--filter=whiteout", "dump"])
        .arg(&img)
        .output()
        .unwrap();
    ok(&out, "filtered dump");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("/ 4096 40555") && lines[0].contains("trusted.foo1"), "{text}");
    assert!(lines[1].starts_with("/chardev 0 20777"), "{text}");
    assert!(lines[2].starts_with("/inline 15 100777") && lines[2].contains("FOOBAR"), "{text}");
    assert!(lines[3].starts_with("/whiteout 0 20777"), "{text}");
    drop(special);
    // A name with a '/' is refused.
    let out = tool("composefs-info").args(["--filter=a/b", "dump"]).arg(&img).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Filter must be a single name: a/b"), "{}", stderr(&out));
}

#[test]
fn composefs_info_prints_the_payload_where_the_reference_reads_past_it() {
    // The reference loader reads one byte past each trusted.overlay.redirect value and prints
    // up to two bytes of what follows (here the chunk index, 0xff) after 11-byte payloads
    // (docs/dropin.md, difference 5). cfsmount prints the payload.
    let work = scratch("redirect");
    let img = work.path().join("img");
    let dump = "/ 0 40755 2 0 0 0 0.0 - - -\n/a 10000 100644 1 0 0 0 0.0 ab/present1 - -\n";
    let mut c = tool("mkcomposefs");
    c.args(["--from-file", "-"]).arg(&img);
    ok(&run_with(c, Some(dump.as_bytes().to_vec())), "dump");
    let out = tool("composefs-info").arg("dump").arg(&img).output().unwrap();
    ok(&out, "composefs-info dump");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/ 4096 40755 2 0 0 0 0.0 - - -\n/a 10000 100644 1 0 0 0 0.0 ab/present1 - -\n"
    );
    let out = tool("composefs-info").arg("objects").arg(&img).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ab/present1\n");
}

#[test]
fn composefs_info_shows_a_file_with_the_escaped_whiteout_xattr_as_it_is() {
    // A regular file whose own xattrs include trusted.overlay.whiteout: the reference loader
    // turns it into a whiteout (`/f 0 20644 ...`, the xattr gone) and its dump then rebuilds a
    // different image; cfsmount shows the file as written (docs/dropin.md, difference 6), so the
    // dump rebuilds the same image.
    let work = scratch("escaped-whiteout");
    let img = work.path().join("img");
    let dump = "/ 0 40755 2 0 0 0 0.0 - - -\n/f 0 100644 1 0 0 0 0.0 - - - trusted.overlay.whiteout= user.k=v\n";
    let mut c = tool("mkcomposefs");
    c.args(["--from-file", "-"]).arg(&img);
    ok(&run_with(c, Some(dump.as_bytes().to_vec())), "dump");
    let out = tool("composefs-info").arg("dump").arg(&img).output().unwrap();
    ok(&out, "composefs-info dump");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/ 4096 40755 2 0 0 0 0.0 - - -\n".to_string() + &dump[28..]);
    let again = work.path().join("again");
    let mut c = tool("mkcomposefs");
    c.args(["--from-file", "-"]).arg(&again);
    ok(&run_with(c, Some(out.stdout)), "rebuild");
    assert!(fs::read(&img).unwrap() == fs::read(&again).unwrap());
}

#[test]
fn composefs_info_measure_file_and_errors() {
    // The known answers of the reference's tests/test-units.sh.
    let work = scratch("measure");
    let (a, b) = (work.path().join("test.txt"), work.path().join("test2.txt"));
    fs::write(&a, "hello world\n").unwrap();
    fs::write(&b, "foo bar baz\n").unwrap();
    let out = tool("composefs-info").arg("measure-file").arg(&a).arg(&b).output().unwrap();
    ok(&out, "measure-file");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92\n\
         91e7d88cb7bc9cf6d8db3b0ecf89af4abf204bef5b3ade5113d5b62ef374e70b\n"
    );
    let run = |args: &[&OsStr]| tool("composefs-info").args(args).output().unwrap();
    let missing = work.path().join("missing");
    for (args, msg) in [
        (vec![OsStr::new("measure-file")], "No files specified"),
        (vec![OsStr::new("measure-file"), missing.as_os_str()], "composefs-info: Failed to open '"),
        (vec![], "No command specified"),
        (vec![OsStr::new("dump")], "No image path specified"),
        (vec![OsStr::new("frob"), a.as_os_str()], "composefs-info: Unknown command 'frob'"),
        (vec![OsStr::new("--bogus"), OsStr::new("ls"), a.as_os_str()], "unrecognized option '--bogus'"),
        (vec![OsStr::new("ls"), a.as_os_str()], "composefs-info: Failed to load '"),
        (
            vec![OsStr::new("--basedir"), missing.as_os_str(), OsStr::new("objects"), a.as_os_str()],
            "Can't open basedir",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(msg), "{args:?}: want {msg:?} in {}", stderr(&out));
        // (The reference also prints "Def" on stdout for an unknown option: difference 8.)
        assert!(out.stdout.is_empty(), "{args:?}: stdout {:?}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn mkcomposefs_command_line_errors_exit_1_with_the_reference_messages() {
    let work = scratch("cmdline");
    let src = work.path().join("in.dump");
    fs::write(&src, "/ 0 40755 2 0 0 0 0.0 - - -\n").unwrap();
    let img = work.path().join("o.img");
    let s = src.to_str().unwrap();
    let i = img.to_str().unwrap();
    for (args, msg) in [
        (vec![], "No source path specified\nUsage: mkcomposefs [OPTIONS] SOURCE IMAGE\n"),
        (vec!["--from-file", s], "No destination path specified\nUsage: mkcomposefs"),
        (vec!["--from-file", s, i, "x"], "Too many arguments\nUsage:"),
        (vec!["", i], "mkcomposefs: Empty source path specified\n"),
        (
            vec!["--print-digest-only", "--from-file", s, i],
            "Cannot specify destination path with --print-digest-only\n",
        ),
        (vec!["--bogus", s, i], "Usage: mkcomposefs [OPTIONS] SOURCE IMAGE\n"),
        (vec!["--threads=0", s, i], "Invalid threads count 0\n"),
        (vec!["--min-version=x", s, i], "Invalid min version x\n"),
        (vec!["--from-file", s, i, "--threads"], "option needs a value\n"),
        (vec!["--max-version=2", "--from-file", s, i], "mkcomposefs: cannot write file: Invalid argument\n"),
        (vec!["--help"], "Usage: mkcomposefs"),
    ] {
        let out = tool("mkcomposefs").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with(msg), "{args:?}: want {msg:?}, got {}", stderr(&out));
        assert!(out.stdout.is_empty());
        assert!(!img.exists(), "{args:?} wrote an image");
    }
    // Options after the operands, abbreviations, and `--` as the reference (getopt_long) takes them.
    ok(&tool("mkcomposefs").args([s, i, "--from"]).output().unwrap(), "permuted, abbreviated");
    assert!(img.exists());
    let out = tool("mkcomposefs").env("POSIXLY_CORRECT", "1").args([s, i, "--from-file"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "POSIXLY_CORRECT stops at the first operand");
    // The mistyped call that makes the reference truncate IMAGE: SOURCE is "--from-file".
    let before = fs::read(&img).unwrap();
    let out = tool("mkcomposefs").args(["--", "--from-file", s, i]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = tool("mkcomposefs").args(["--", "--from-file", i]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(fs::read(&img).unwrap(), before, "a failed run must leave IMAGE as it was");
}

#[test]
fn mkcomposefs_stdout_refuses_a_terminal_and_print_digest_follows_the_image() {
    let work = scratch("stdout");
    let src = work.path().join("in.dump");
    fs::write(&src, "/ 0 40755 2 0 0 0 0.0 - - -\n/f 3 100644 1 0 0 0 0.0 - abc -\n").unwrap();
    // `script` gives the command a terminal as stdout.
    let cmd = format!("{} --from-file {} -", tools().join("mkcomposefs").display(), src.display());
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mkcomposefs: stdout is a tty.  Refusing to use it"));
    // --print-digest with IMAGE `-`: the digest line follows the image on stdout, as in the
    // reference (printf after fwrite to the same stream).
    let out = tool("mkcomposefs").args(["--print-digest", "--from-file"]).arg(&src).arg("-").output().unwrap();
    ok(&out, "--print-digest to stdout");
    let only = tool("mkcomposefs").args(["--print-digest-only", "--from-file"]).arg(&src).output().unwrap();
    ok(&only, "--print-digest-only");
    let digest = String::from_utf8(only.stdout).unwrap();
    assert_eq!(digest.len(), 65);
    let (img, tail) = out.stdout.split_at(out.stdout.len() - 65);
    assert_eq!(String::from_utf8_lossy(tail), digest);
    assert_eq!(img.len() % 4096, 0);
    // The image itself is the one a file output gets.
    let file = work.path().join("img");
    ok(&tool("mkcomposefs").arg("--from-file").arg(&src).arg(&file).output().unwrap(), "file output");
    assert!(fs::read(&file).unwrap() == img);
}

// ---------------------------------------------------------------------------------------------
// Directory sources

/// A small tree with everything the directory walk distinguishes; returns false when the
/// caller is not root (devices, ownership).
fn make_tree(root: &Path) -> bool {
    use std::os::unix::fs::symlink;
    let am_root = rustix::process::geteuid().is_root();
    fs::create_dir_all(root.join("d/sub")).unwrap();
    fs::write(root.join("small"), b"hello\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("exact64"), [7u8; 64]).unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(root.join("big"), &big).unwrap();
    fs::write(root.join("d/other"), [1u8; 65]).unwrap();
    fs::hard_link(root.join("big"), root.join("d/big-link")).unwrap();
    fs::hard_link(root.join("small"), root.join("d/sub/small-link")).unwrap();
    fs::hard_link(root.join("empty"), root.join("empty-link")).unwrap();
    symlink("../small", root.join("d/sl")).unwrap();
    rustix::fs::lsetxattr(root.join("small").as_path(), "user.a", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::lsetxattr(root.join("d").as_path(), "user.dir", b"x", rustix::fs::XattrFlags::empty()).unwrap();
    if am_root {
        rustix::fs::lsetxattr(root.join("big").as_path(), "trusted.t", b"y", rustix::fs::XattrFlags::empty()).unwrap();
        let dev = |p: &str, kind: rustix::fs::FileType, maj, min| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(p).as_path(),
                kind,
                0o644.into(),
                rustix::fs::makedev(maj, min),
            )
            .unwrap();
        };
        dev("null", rustix::fs::FileType::CharacterDevice, 1, 3);
        dev("whiteout", rustix::fs::FileType::CharacterDevice, 0, 0);
        dev("d/blk", rustix::fs::FileType::BlockDevice, 8, 1);
    }
    rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo").as_path(), rustix::fs::FileType::Fifo, 0o600.into(), 0)
        .unwrap();
    // Fixed modes, owners and times (directories last: adding entries changes their mtime).
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            all.push(e.path());
        }
    }
    all.sort_by(|a, b| b.components().count().cmp(&a.components().count()).then(a.cmp(b)));
    all.push(root.to_path_buf());
    for (i, p) in all.iter().enumerate() {
        let md = fs::symlink_metadata(p).unwrap();
        if am_root {
            rustix::fs::chownat(
                rustix::fs::CWD,
                p.as_path(),
                Some(rustix::process::Uid::ROOT),
                Some(rustix::process::Gid::ROOT),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
        if !md.file_type().is_symlink() {
            let mode = if md.is_dir() { 0o755 } else { 0o644 };
            fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        }
        let t = rustix::fs::Timespec { tv_sec: 1_700_000_000 + (i as i64 % 7) * 1000, tv_nsec: 123_456_789 };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p.as_path(),
            &rustix::fs::Timestamps { last_access: t, last_modification: t },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
    am_root
}

/// What the reference mkcomposefs 1.0.8 (ec2573a) built from the tree of [`make_tree`], made as
/// root on ext4 (`cargo test --test dropin_cli -- --ignored reference_tree_for_manual_runs` with
/// `CFS_DROPIN_TREE=/var/tmp/t`, then `mkcomposefs [FLAGS] /var/tmp/t/root out.img`).
const REFERENCE_DIR_IMAGES: &[(&str, &str)] = &[
    ("", "b6e5f98827b643b274e6f5f5c0aade7140102f4ad3722546bf693b7bb29a03de"),
    ("--use-epoch", "7600dc6cc8caf85072b9290a4e69b05fde884e22556360c6fd618e054714e2b5"),
    ("--skip-devices", "85755b6c9506da912f325bf19ad3fcf7841ff8b87daf3b28a7c8b97f3c7ade8b"),
    ("--skip-xattrs", "827589d7fcff8afab594e2463eecd57f66ae015e9fdab1da6078cf2ac3263a26"),
    ("--user-xattrs", "b280ec421f2a3eef09429ede33360cb067d28541fcf09e807ad729cedeb9c5a5"),
];
/// `find objects -type f -printf '%P %s\n' | sort` after `mkcomposefs --digest-store=objects`.
const REFERENCE_DIR_OBJECTS: &str = "31/526e3f2a3eed99c59356cd1d163d349948f8a86ab99fd8b704455f14777dec 65\n\
                                     f3/4d334907d684aaf647c2b474a0dfcc26f3cd93557cb88c71c95da21739529e 100000\n";

#[test]
#[ignore = "helper for recording REFERENCE_DIR_*: builds the tree at $CFS_DROPIN_TREE/root"]
fn reference_tree_for_manual_runs() {
    let at = PathBuf::from(std::env::var_os("CFS_DROPIN_TREE").expect("set CFS_DROPIN_TREE"));
    assert!(make_tree(&at.join("root")), "run as root");
}

fn dump_of(img: &Path) -> String {
    let out = tool("composefs-info").arg("dump").arg(img).output().unwrap();
    ok(&out, "composefs-info dump");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn directory_source_gives_the_reference_image_and_objects() {
    let work = scratch("dir");
    let src = work.path().join("root");
    let am_root = make_tree(&src);
    for (flags, want) in REFERENCE_DIR_IMAGES {
        let img = work.path().join("img");
        let out = tool("mkcomposefs").args(flags.split_whitespace()).arg(&src).arg(&img).output().unwrap();
        ok(&out, flags);
        let got = sha256_hex(&fs::read(&img).unwrap());
        if am_root {
            assert_eq!(&got, want, "mkcomposefs {flags}: image differs from the reference's:\n{}", dump_of(&img));
        } else {
            eprintln!("not root: the tree has other owners and no devices; comparison with the reference skipped");
        }
        fs::remove_file(&img).unwrap();
    }
    // Hard links: separate inodes (link count 1, no `@` lines), one object for both names.
    let img = work.path().join("img");
    let store = work.path().join("objects");
    let out =
        tool("mkcomposefs").arg(format!("--digest-store={}", store.display())).arg(&src).arg(&img).output().unwrap();
    ok(&out, "--digest-store");
    let dump = dump_of(&img);
    assert!(!dump.contains(" @"), "{dump}");
    assert!(dump.contains("\n/d/big-link 100000 100644 1 0 0 0 ") || !am_root, "{dump}");
    if am_root {
        assert_eq!(
            sha256_hex(&fs::read(&img).unwrap()),
            REFERENCE_DIR_IMAGES[0].1,
            "the store does not change the image"
        );
    }
    let mut objects: Vec<String> = Vec::new();
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o755);
                stack.push(e.path());
                continue;
            }
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o644);
            let rel = e.path().strip_prefix(&store).unwrap().to_string_lossy().into_owned();
            // Named by its fs-verity digest, computed here by fsverity-utils.
            let fv = Command::new("fsverity").args(["digest", "--compact"]).arg(e.path()).output().unwrap();
            ok(&fv, "fsverity digest");
            let hex = String::from_utf8(fv.stdout).unwrap().trim().trim_start_matches("sha256:").to_string();
            assert_eq!(rel.replace('/', ""), hex, "object {rel}");
            objects.push(format!("{rel} {}", md.len()));
        }
    }
    objects.sort();
    assert_eq!(objects.join("\n") + "\n", REFERENCE_DIR_OBJECTS, "objects in the store");
    // A second run finds the objects present and leaves no temporary file.
    ok(
        &tool("mkcomposefs").arg(format!("--digest-store={}", store.display())).arg(&src).arg(&img).output().unwrap(),
        "again",
    );
    assert!(fs::read_dir(&store).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));

    // --hardlinks keeps them, as `cfsmount mkimage --from-dir` does.
    let linked = work.path().join("linked");
    ok(&tool("mkcomposefs").arg("--hardlinks").arg(&src).arg(&linked).output().unwrap(), "--hardlinks");
    let dump = dump_of(&linked);
    assert!(dump.contains("\n/d/big-link 100000 @100644 2 "), "{dump}");
    let mkimage = work.path().join("mkimage");
    let out = Command::new(env!("CARGO_BIN_EXE_cfsmount"))
        .args(["mkimage", "--from-dir"])
        .arg(&src)
        .arg(&mkimage)
        .output()
        .unwrap();
    ok(&out, "cfsmount mkimage --from-dir");
    assert!(fs::read(&linked).unwrap() == fs::read(&mkimage).unwrap(), "--hardlinks differs from mkimage --from-dir");
}

#[test]
fn directory_flags_do_what_the_reference_does() {
    let work = scratch("dirflags");
    let src = work.path().join("root");
    let am_root = make_tree(&src);
    let build = |flags: &[&str]| {
        let img = work.path().join(format!("img{}", flags.join("")));
        ok(&tool("mkcomposefs").args(flags).arg(&src).arg(&img).output().unwrap(), &flags.join(" "));
        dump_of(&img)
    };
    let epoch = build(&["--use-epoch"]);
    assert!(epoch.lines().all(|l| l.split(' ').nth(7) == Some("0.0")), "{epoch}");
    let plain = build(&[]);
    assert!(plain.lines().all(|l| l.split(' ').nth(7) != Some("0.0")), "{plain}");
    let nodev = build(&["--skip-devices"]);
    assert!(!nodev.contains("/null ") && !nodev.contains("/whiteout ") && !nodev.contains("/d/blk "), "{nodev}");
    assert!(nodev.contains("\n/fifo "), "{nodev}");
    if am_root {
        assert!(plain.contains("\n/null 0 20644 ") && plain.contains("\n/whiteout 0 20644 "), "{plain}");
        // A whiteout raises the format to version 1 (its directory shows the opaque markers).
        assert!(
            plain.starts_with("/ 4096 40755 ") && plain.lines().next().unwrap().contains("trusted.overlay.opaque=x")
        );
        assert!(!nodev.lines().next().unwrap().contains("opaque"), "{nodev}");
    }
    let noxattr = build(&["--skip-xattrs"]);
    assert!(!noxattr.contains("user.a=1") && !noxattr.contains("user.dir=x"), "{noxattr}");
    let user = build(&["--user-xattrs"]);
    assert!(user.contains("user.a=1") && user.contains("user.dir=x") && !user.contains("trusted.t"), "{user}");
    if am_root {
        assert!(plain.contains("trusted.t=y"), "{plain}");
    }
    let out = tool("mkcomposefs")
        .args(["--skip-xattrs", "--user-xattrs"])
        .arg(&src)
        .arg(work.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Invalid argument"), "{}", stderr(&out));
    // The flags do nothing to a dumpfile (as in the reference).
    let dump = work.path().join("in.dump");
    fs::write(&dump, plain.as_bytes()).unwrap();
    let a = work.path().join("a.img");
    let b = work.path().join("b.img");
    ok(&tool("mkcomposefs").args(["--from-file"]).arg(&dump).arg(&a).output().unwrap(), "a");
    ok(
        &tool("mkcomposefs")
            .args(["--use-epoch", "--skip-devices", "--skip-xattrs", "--from-file"])
            .arg(&dump)
            .arg(&b)
            .output()
            .unwrap(),
        "b",
    );
    assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap());
    // A non-directory SOURCE fails and writes nothing.
    let out = tool("mkcomposefs").arg(src.join("small")).arg(work.path().join("nd.img")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!work.path().join("nd.img").exists());
}
