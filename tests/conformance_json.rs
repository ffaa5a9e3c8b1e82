//! Conformance: every TOC JSON case of the reference test data builds an image whose sha256
//! equals the reference's (`FILE.sha256_erofs`) and passes `fsck.erofs`; the tree parsed from
//! the JSON equals the tree parsed from the matching dumpfile (compared through the dumpfile
//! printer); the small zstd:chunked example TOC parses.

use std::path::{Path, PathBuf};

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{self, write_dump, DumpOptions};
use cfsmount::input::toc::{self, TocOptions};
use cfsmount::tree::{Limits, Tree};

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{forced_version, read_maybe_gz};
#[path = "support/image.rs"]
mod image;
use image::{fsck, sha256_hex, write_options};

/// The conformance root, asserted to hold `composefs-json/`.
fn conformance_dir() -> PathBuf {
    conformance::json_dir();
    conformance::conformance_root()
}

/// The dumpfile text of a tree, with what only a dumpfile carries (directory sizes, which the
/// writer recomputes, explicit link counts, empty files' object paths) normalised away.
fn dump_text(t: &Tree) -> Vec<u8> {
    let mut t = t.clone();
    for n in &mut t.nodes {
        if n.entry.inode.is_dir() {
            n.entry.inode.size = 0;
        }
        // An empty file's object path is not part of an image.
        if n.entry.inode.is_reg() && n.entry.inode.size == 0 {
            n.entry.payload = None;
        }
        n.nlink = None;
    }
    let mut v = Vec::new();
    write_dump(&t, &mut v).unwrap();
    v
}

/// The JSON cases: (json file name, case stem).
fn cases(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir.join("composefs-json"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".json.gz").or_else(|| name.strip_suffix(".json"))?.to_string();
            Some((name, stem))
        })
        .collect();
    v.sort();
    v
}

fn check_case(dir: &Path, name: &str, stem: &str) {
    let json_dir = dir.join("composefs-json");
    let input = read_maybe_gz(&json_dir.join(name));
    let tree = toc::parse(&input, &TocOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));

    // The matching dumpfile case decides the format version (special.dump.version) and gives a
    // second, independent description of the same tree.
    let dump_dir = dir.join("composefs-dump");
    let wopts = write_options(forced_version(&dump_dir, &format!("{stem}.dump")));
    let dump_path =
        [format!("{stem}.dump"), format!("{stem}.dump.gz")].into_iter().map(|n| dump_dir.join(n)).find(|p| p.is_file());
    if let Some(dp) = dump_path {
        let dtree = dump::parse(&read_maybe_gz(&dp), &DumpOptions { strict: true, limits: Limits::default() })
            .unwrap_or_else(|e| panic!("{}: {e}", dp.display()));
        let (a, b) = (dump_text(&tree), dump_text(&dtree));
        if a != b {
            let (la, lb): (Vec<_>, Vec<_>) = (a.split(|&c| c == b'\n').collect(), b.split(|&c| c == b'\n').collect());
            let i = la.iter().zip(&lb).position(|(x, y)| x != y).unwrap_or(la.len().min(lb.len()));
            panic!(
                "{name}: tree differs from {} at dump line {}:\n json: {}\n dump: {}",
                dp.display(),
                i + 1,
                String::from_utf8_lossy(la.get(i).unwrap_or(&&b""[..])),
                String::from_utf8_lossy(lb.get(i).unwrap_or(&&b""[..]))
            );
        }
    }

    let mut image = Vec::new();
    write_image(&tree, &wopts, &mut image).unwrap_or_else(|e| panic!("{name}: write_image: {e}"));
    let expected = std::fs::read_to_string(json_dir.join(format!("{name}.sha256_erofs"))).unwrap();
    assert_eq!(sha256_hex(&image), expected.trim(), "{name}: image sha256 differs from the reference");
    fsck(&image, name);
}

#[test]
fn every_json_case_matches_the_reference() {
    let dir = conformance_dir();
    let cases = cases(&dir);
    assert!(cases.len() >= 5, "expected the reference's JSON cases, found {cases:?}");
    for (name, stem) in &cases {
        check_case(&dir, name, stem);
    }
}

#[test]
fn zstd_chunked_example_parses() {
    let dir = conformance_dir();
    let input = std::fs::read(dir.join("zstd-chunked-example-toc.json")).unwrap();
    let t = toc::parse(&input, &TocOptions::default()).unwrap();
    let foo = t.node(t.lookup(b"usr/bin/foo").unwrap());
    assert_eq!(foo.entry.inode.size, 103867);
    assert_eq!(
        foo.entry.payload.as_deref(),
        Some(&b"99/fe908c699dc068438b23e28319cadff1f2153c3043bafb8e83a430bba0a2c6"[..])
    );
    // The `\x2d` in the name is literal text (systemd escaping), not a JSON escape.
    let slice = t.lookup(br"usr/lib/systemd/system/system-systemd\x2dcryptsetup.slice").unwrap();
    let link = t.lookup(br"usr/lib/systemd/system/system-systemd\x2dcryptsetup-hardlink.slice").unwrap();
    assert_eq!(t.node(link).link_to, Some(slice));
    assert_eq!(t.node(t.lookup(b"bin").unwrap()).entry.payload.as_deref(), Some(&b"usr/bin"[..]));
    let mut image = Vec::new();
    write_image(&t, &WriteOptions::default(), &mut image).unwrap();
    fsck(&image, "zstd-chunked-example-toc.json");
}

/// Hostile variations of a real case: each must fail with a one-line error naming the entry.
#[test]
fn hostile_edits_of_a_real_case_are_rejected() {
    let dir = conformance_dir();
    let input = String::from_utf8(read_maybe_gz(&dir.join("composefs-json/config.json.gz"))).unwrap();
    let edits: &[(&str, &str, &str)] = &[
        ("\"name\": \"etc/.pwd.lock\"", "\"name\": \"etc/../../.pwd.lock\"", "'..'"),
        ("\"name\": \"etc/.pwd.lock\"", "\"name\": \"etc//.pwd.lock\"", "empty path component"),
        ("\"mode\": 384,", "\"mode\": 16768,", "contradict"),
        ("\"version\": 1", "\"version\": 3", "version"),
        ("\"digest\": \"sha256:5590e94b", "\"digest\": \"sha256:XX90e94b", "digest"),
        ("\"user.foo1\": \"YmFyLTE=\"", "\"user.foo1\": \"YmFyLTE\"", "base64"),
        ("\"modtime\": \"2021-10-11T13:06:19+02:00\"", "\"modtime\": \"2021-10-11 13:06\"", "modtime"),
    ];
    for (from, to, needle) in edits {
        assert!(input.contains(from), "fixture lacks {from}");
        let bad = input.replacen(from, to, 1);
        let e = toc::parse(bad.as_bytes(), &TocOptions::default()).expect_err(to).to_string();
        assert!(e.contains(needle) && !e.contains('\n'), "edit {to:?}: error {e:?} lacks {needle:?}");
        if *needle != "version" {
            assert!(e.starts_with("TOC entry "), "edit {to:?}: error {e:?} does not name the entry");
        }
    }
    let trailing = format!("{input}\n{{}}");
    assert!(toc::parse(trailing.as_bytes(), &TocOptions::default()).is_err());
}
