//! Dumpfile parser and printer tests.

use super::fields::unescape;
use super::write::{escape_into, Esc};
use super::*;
fn strict() -> DumpOptions {
    DumpOptions { strict: true, limits: Limits::default() }
}

#[test]
fn escapes_round_trip() {
    let raw: Vec<u8> = (0u8..=255).collect();
    let mut e = Vec::new();
    escape_into(&mut e, &raw, Esc::Equal);
    assert!(!e.contains(&b' ') && !e.contains(&b'=') && !e.contains(&b'\n'));
    assert_eq!(unescape(&e).unwrap(), raw);
    assert!(unescape(b"\\q").is_err());
    assert!(unescape(b"\\x4").is_err());
    assert!(unescape(b"a\\").is_err());
}

#[test]
fn parses_and_prints_example() {
    let input = b"/ 4096 40755 4 1000 1000 0 1695372970.944925700 - - - security.selinux=unconfined_u:object_r:unlabeled_t:s0\\x00\n\
/a\\x20dir 27 40755 2 1000 1000 0 1694598852.869646118 - - -\n\
/a-dir 45 40755 2 1000 1000 0 1674041780.601887980 - - -\n\
/a-dir/a-file 259 100644 2 1000 1000 0 1695368732.385062094 35/d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408 - 35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408\n\
/a-hardlink 259 @100644 1 1000 1000 0 1695368732.385062094 /a-dir/a-file - 35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408\n\
/inline.txt 10 100644 1 1000 1000 0 1697019909.446146440 - some-text\\n -\n";
    let t = parse(input, &strict()).unwrap();
    let f = t.lookup(b"a-dir/a-file").unwrap();
    assert_eq!(t.node(f).nlink, Some(2));
    let h = t.lookup(b"a-hardlink").unwrap();
    assert_eq!(t.node(h).link_to, Some(f));
    let i = t.lookup(b"inline.txt").unwrap();
    assert_eq!(t.node(i).entry.content.as_deref(), Some(&b"some-text\n"[..]));
    let mut out = Vec::new();
    write_dump(&t, &mut out).unwrap();
    let t2 = parse(&out, &strict()).unwrap();
    let mut out2 = Vec::new();
    write_dump(&t2, &mut out2).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&out2));
    assert!(out.starts_with(b"/ 4096 40755 4 1000 1000 0 1695372970.944925700 - - - security.selinux=unconfined_u:object_r:unlabeled_t:s0\\x00\n"));
}

#[test]
fn rejects_bad_lines_with_context() {
    let cases: &[(&[u8], &str)] = &[
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 0 1 0 0 0 0.0 - - -\n", "MODE"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0 - - -\n", "MTIME"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 3 100644 1 0 0 0 0.0 - ab -\n", "CONTENT"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0.0 - - zz\n", "DIGEST"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0.0 - - - novalue\n", "XATTRS"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/a/x 0 100644 1 0 0 0 0.0 - - -\n", "PATH"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 @100644 1 0 0 0 0.0 /nope - -\n", "PAYLOAD"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 5 0.0 - - -\n", "RDEV"),
        (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 4 100644 1 0 0 0 0.0 ../x - -\n", "PAYLOAD"),
    ];
    for (input, field) in cases {
        let e = parse(input, &strict()).unwrap_err();
        match &e {
            DumpError::Line { line, field: f, .. } => {
                assert_eq!(*line, 2, "{e}");
                assert_eq!(f, field, "{e}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(parse(b"/ 0 40755 2 0 0 0 0.0 - - -", &strict()).is_err());
    assert!(parse(b"/ 0 40755 2 0 0 0 0.0 - - -", &DumpOptions::default()).is_ok());
}

#[test]
fn enforces_limits_and_hardlink_rules() {
    let few = DumpOptions { strict: true, limits: Limits { max_entries: 3, max_depth: 2 } };
    let many = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n/b 0 100644 1 0 0 0 0.0 - - -\n/c 0 100644 1 0 0 0 0.0 - - -\n";
    assert!(parse(many, &few).unwrap_err().to_string().contains("too many entries"));
    let deep = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n/a/b 0 40755 2 0 0 0 0.0 - - -\n/a/b/c 0 100644 1 0 0 0 0.0 - - -\n";
    assert!(parse(deep, &DumpOptions { strict: true, limits: Limits { max_entries: 100, max_depth: 2 } }).is_err());
    // Forward reference and a chain of links resolve to the file.
    let chain = b"/ 0 40755 2 0 0 0 0.0 - - -\n/l1 0 @100644 1 0 0 0 0.0 /l2 - -\n/l2 0 @100644 1 0 0 0 0.0 /f - -\n/f 3 100644 3 0 0 0 0.0 - abc -\n";
    let t = parse(chain, &strict()).unwrap();
    let f = t.lookup(b"f").unwrap();
    assert_eq!(t.node(t.lookup(b"l1").unwrap()).link_to, Some(f));
    assert_eq!(t.node(f).nlink, Some(3));
    // Cycles, links to directories and duplicate names are rejected.
    let cycle = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n";
    assert!(parse(cycle, &strict()).unwrap_err().to_string().contains("cycle"));
    let to_dir = b"/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n/l 0 @100644 1 0 0 0 0.0 /d - -\n";
    assert!(parse(to_dir, &strict()).unwrap_err().to_string().contains("directory"));
    let dup = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n";
    assert!(parse(dup, &strict()).is_err());
    // Duplicate xattr names: the last value wins, as in the reference.
    let x = b"/ 0 40755 2 0 0 0 0.0 - - - user.a=1 user.b=2 user.a=3\n";
    let t = parse(x, &strict()).unwrap();
    let xs = &t.node(ROOT).entry.xattrs;
    assert_eq!(xs.len(), 2);
    assert!(xs.iter().any(|x| x.key == b"user.a" && x.value == b"3"));
}

#[test]
fn regular_file_payloads_must_name_an_object() {
    let line =
        |mode: &str, payload: &str| format!("/ 0 40755 2 0 0 0 0.0 - - -\n/x 4 {mode} 1 0 0 0 0.0 {payload} - -\n");
    for opts in [strict(), DumpOptions::default()] {
        let e = parse(line("100644", "../../../etc/passwd").as_bytes(), &opts).unwrap_err().to_string();
        assert_eq!(e, "dumpfile line 2: /x: PAYLOAD: ../../../etc/passwd is not an object path ('..' path component)");
        for bad in ["ab//cd", "//ab", "ab/.", "/"] {
            assert!(parse(line("100644", bad).as_bytes(), &opts).is_err(), "{bad} accepted");
        }
        for good in ["ab/cdef", "/ab/cdef", "object"] {
            let t = parse(line("100644", good).as_bytes(), &opts).unwrap();
            assert_eq!(t.node(t.lookup(b"x").unwrap()).entry.payload.as_deref(), Some(good.as_bytes()));
        }
    }
    // Only a regular file's payload becomes a redirect; other types' PAYLOAD is not an object
    // path (a directory's is ignored by the writer, as by the reference).
    let t = parse(line("40755", "../elsewhere").replace("/x 4", "/x 0").as_bytes(), &DumpOptions::default()).unwrap();
    assert!(t.lookup(b"x").is_some());
}
