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

#[test]
fn fields_split_as_the_plain_rule() {
    // Lines with 0..14 fields of varied lengths, so the spaces fall at every word offset.
    let mut seed = 7u32;
    let mut next = || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        seed >> 16
    };
    for _ in 0..3000 {
        let n = (next() % 15) as usize;
        let mut line = Vec::new();
        for i in 0..n {
            if i > 0 {
                line.push(b' ');
            }
            for _ in 0..next() % 12 {
                line.push(match next() % 9 {
                    0 => b'\\',
                    1 => b' ',
                    _ => b'a',
                });
            }
        }
        let (fields, rest, escapes) = super::split_fields(&line);
        // The plain rule: 11 times "up to the next space", the rest is the xattr section.
        let mut expect: [&[u8]; 11] = [&[]; 11];
        let mut r = &line[..];
        for f in expect.iter_mut() {
            match r.iter().position(|&b| b == b' ') {
                Some(i) => {
                    *f = &r[..i];
                    r = &r[i + 1..];
                }
                None => {
                    *f = r;
                    r = &r[r.len()..];
                }
            }
        }
        assert_eq!(fields, expect, "{}", tree::show(&line));
        assert_eq!(rest, r, "{}", tree::show(&line));
        // The escape flag may only be false when no field holds a backslash.
        if expect.iter().any(|f| f.contains(&b'\\')) {
            assert!(escapes, "{}", tree::show(&line));
        }
    }
}

#[test]
fn parents_found_in_any_order() {
    // Jumps up and down, siblings sharing a name prefix, a return to an old directory.
    let input = b"/ 0 40755 2 0 0 0 0.0 - - -\n\
/a 0 40755 2 0 0 0 0.0 - - -\n\
/a/b 0 40755 2 0 0 0 0.0 - - -\n\
/a/bc 0 40755 2 0 0 0 0.0 - - -\n\
/a/b/x 0 100644 1 0 0 0 0.0 - - -\n\
/a/bc/y 0 100644 1 0 0 0 0.0 - - -\n\
/a/b/d 0 40755 2 0 0 0 0.0 - - -\n\
/a/b/d/z 0 100644 1 0 0 0 0.0 - - -\n\
/top 0 100644 1 0 0 0 0.0 - - -\n\
/a/b/d/w 0 100644 1 0 0 0 0.0 - - -\n\
/a/bc/v 0 100644 1 0 0 0 0.0 - - -\n\
/a/b/u 0 100644 1 0 0 0 0.0 - - -\n";
    let t = parse(input, &strict()).unwrap();
    for p in ["a/b/x", "a/bc/y", "a/b/d/z", "top", "a/b/d/w", "a/bc/v", "a/b/u"] {
        let id = t.lookup(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!(t.path_of(id), p.as_bytes());
    }
    assert_eq!(t.node(t.lookup(b"a/bc").unwrap()).children.len(), 2);
    assert_eq!(t.node(t.lookup(b"a/b").unwrap()).children.len(), 3);

    let head = "/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n/f 0 100644 1 0 0 0 0.0 - - -\n\
/a/l 0 @100644 1 0 0 0 0.0 /f - -\n";
    for (line, reason) in [
        ("/a/b/x", "parent directory /a/b is missing"),
        ("/ab/x", "parent directory /ab is missing"),
        ("/f/x", "parent /f is not a directory"),
        ("/f/y/x", "parent directory /f/y is missing"),
        ("/a/l/x", "parent /a/l is a hard link, not a directory"),
    ] {
        let input = format!("{head}{line} 0 100644 1 0 0 0 0.0 - - -\n");
        let e = parse(input.as_bytes(), &strict()).unwrap_err().to_string();
        assert!(e.contains(reason) && e.contains("line 5"), "{line}: {e}");
    }
}
