//! TOC parser tests: semantics, refusals (each naming its field), limits.

use super::*;
use crate::tree::{Inode, Xattr};
fn p(json: &str) -> Result<Tree, TocError> {
    parse(json.as_bytes(), &TocOptions::default())
}

fn toc(entries: &str) -> String {
    format!("{{\"version\":1,\"entries\":[{entries}]}}")
}

#[track_caller]
fn rejects(json: &str, field: &str) {
    match p(json) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => {
            let s = e.to_string();
            assert!(s.contains(field), "error {s:?} does not name {field:?} (input {json})");
            assert!(!s.contains('\n'), "multi-line error {s:?}");
        }
    }
}

const D: &str = "sha256:99fe908c699dc068438b23e28319cadff1f2153c3043bafb8e83a430bba0a2c6";

#[test]
fn basic_tree() {
    let t = p(&toc(&format!(
        r#"{{"type":"dir","name":"./","mode":493,"modtime":"2022-01-07T12:36:43.5+01:00"}},
           {{"type":"symlink","name":"bin","linkName":"usr/bin","mode":511}},
           {{"type":"reg","name":"usr/bin/foo","mode":493,"size":5,"digest":"{D}","uid":7,"gid":8,
             "xattrs":{{"user.a":"YmFy"}}}},
           {{"type":"chunk","name":"usr/bin/foo","chunkSize":3,"chunkOffset":2,"chunkDigest":"{D}"}},
           {{"type":"hardlink","name":"usr/bin/bar","linkName":"/usr/bin/foo"}},
           {{"type":"char","name":"dev/c","devMajor":42,"devMinor":300,"mode":8630}}"#
    )))
    .unwrap();
    let root = t.node(tree::ROOT);
    assert_eq!(root.entry.inode.mode, S_IFDIR | 0o755);
    assert_eq!(root.entry.inode.mtime, 1641555403);
    assert_eq!(root.entry.inode.mtime_nsec, 500_000_000);
    let f = t.node(t.lookup(b"usr/bin/foo").unwrap());
    assert_eq!(
        f.entry.inode,
        Inode { mode: S_IFREG | 0o755, uid: 7, gid: 8, rdev: 0, size: 5, mtime: 0, mtime_nsec: 0 }
    );
    assert_eq!(
        f.entry.payload.as_deref(),
        Some(&b"99/fe908c699dc068438b23e28319cadff1f2153c3043bafb8e83a430bba0a2c6"[..])
    );
    assert_eq!(f.entry.xattrs, vec![Xattr { key: b"user.a".to_vec(), value: b"bar".to_vec() }]);
    let usr = t.node(t.lookup(b"usr").unwrap());
    assert_eq!(usr.entry.inode, Inode { mode: S_IFDIR | 0o755, ..Inode::default() });
    let l = t.node(t.lookup(b"usr/bin/bar").unwrap());
    assert_eq!(l.link_to, t.lookup(b"usr/bin/foo"));
    let c = t.node(t.lookup(b"dev/c").unwrap());
    assert_eq!(c.entry.inode.rdev, (300 & 0xff) | (42 << 8) | ((300 & !0xff) << 12));
    assert_eq!(c.entry.inode.mode, S_IFCHR | 0o666);
    let s = t.node(t.lookup(b"bin").unwrap());
    assert_eq!(s.entry.payload.as_deref(), Some(&b"usr/bin"[..]));
    assert_eq!(s.entry.inode.size, 7);
}

#[test]
fn keys_case_insensitive_unknown_ignored_last_wins() {
    let t = p(r#"{"VERSION":1,"tarSplitDigest":"x","Entries":[
        {"TYPE":"reg","NAME":"a","MoDe":420,"mode":384,"ſize":0,"LINKNAME":"","whatever":{"deep":[1,2,{"x":null}]}},
        {"type":"dir","name":"d","\u212Aey":1}]}"#)
    .unwrap();
    let a = t.node(t.lookup(b"a").unwrap());
    assert_eq!(a.entry.inode.mode, S_IFREG | 0o600);
}

#[test]
fn extensions_x_payload_and_x_content() {
    let t = p(&toc(&format!(
        r#"{{"type":"reg","name":"p","size":9,"x-payload":"a5/5e63.file","digest":"{D}"}},
           {{"type":"reg","name":"c","x-content":"Rk9PQkFSCklOQUZJTEUK"}}"#
    )))
    .unwrap();
    assert_eq!(t.node(t.lookup(b"p").unwrap()).entry.payload.as_deref(), Some(&b"a5/5e63.file"[..]));
    let c = t.node(t.lookup(b"c").unwrap());
    assert_eq!(c.entry.content.as_deref(), Some(&b"FOOBAR\nINAFILE\n"[..]));
    assert_eq!(c.entry.inode.size, 15);
}

#[test]
fn whiteouts_convert_or_stay_literal() {
    let j = toc(r#"{"type":"dir","name":"d","mode":493},
           {"type":"reg","name":"d/.wh..wh..opq","mode":0},
           {"type":"reg","name":"d/.wh.gone","uid":3,"modtime":"1970-01-01T00:00:10Z"},
           {"type":"reg","name":".wh.x"},
           {"type":"reg","name":"x/.wh.y"},
           {"type":"reg","name":".wh.kept"},
           {"type":"reg","name":"kept"},
           {"type":"reg","name":".wh..wh.plnk"}"#);
    let t = p(&j).unwrap();
    let d = t.node(t.lookup(b"d").unwrap());
    assert_eq!(d.entry.xattrs, vec![Xattr { key: b"trusted.overlay.opaque".to_vec(), value: b"y".to_vec() }]);
    let g = t.node(t.lookup(b"d/gone").unwrap());
    assert_eq!(g.entry.inode, Inode { mode: S_IFCHR, uid: 3, mtime: 10, ..Inode::default() });
    assert!(t.node(t.lookup(b"x").unwrap()).entry.inode.file_type() == S_IFCHR);
    assert!(t.lookup(b"x/y").is_none());
    assert!(t.node(t.lookup(b"kept").unwrap()).entry.inode.is_reg());
    assert!(t.lookup(b".wh..wh.plnk").is_none());
    assert!(t.lookup(b"d/.wh.gone").is_none());

    let t = parse(j.as_bytes(), &TocOptions { keep_whiteouts: true, ..TocOptions::default() }).unwrap();
    assert!(t.lookup(b"d/.wh..wh..opq").is_some());
    assert!(t.lookup(b"d/.wh.gone").is_some());
    assert!(t.lookup(b"d/gone").is_none());
    assert!(t.node(t.lookup(b"d").unwrap()).entry.xattrs.is_empty());
}

#[test]
fn rejects_document_errors() {
    rejects("", "invalid JSON");
    rejects("[]", "invalid JSON");
    rejects(r#"{"version":1}"#, "entries");
    rejects(r#"{"entries":[]}"#, "version");
    rejects(r#"{"version":2,"entries":[]}"#, "version");
    rejects(r#"{"version":1.0,"entries":[]}"#, "version");
    rejects(r#"{"version":1,"entries":[],"entries":[]}"#, "entries");
    rejects(r#"{"version":1,"entries":{}}"#, "array");
    rejects(r#"{"version":1,"entries":[]} x"#, "after the document");
    rejects(r#"{"version":1,"entries":[]}{}"#, "after the document");
    rejects(r#"{"version":1,"entries":[{"type":"dir","name":"a"},]}"#, "entry 1");
    rejects(r#"{"version":1,"entries":[5]}"#, "entry 0");
    let deep = format!(
        r#"{{"version":1,"entries":[{{"type":"dir","name":"a","x":{}{}}}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    rejects(&deep, "recursion limit");
    let big = toc(r#"{"type":"dir","name":"a"}"#);
    let e = parse(big.as_bytes(), &TocOptions { max_input_bytes: 10, ..TocOptions::default() }).unwrap_err();
    assert!(matches!(e, TocError::TooLarge { .. }));
}

#[test]
fn rejects_bad_names() {
    rejects(&toc(r#"{"type":"reg","name":"a/../b"}"#), "name");
    rejects(&toc(r#"{"type":"reg","name":"../b"}"#), "'..'");
    rejects(&toc(r#"{"type":"reg","name":"a/./b"}"#), "'.'");
    rejects(&toc(r#"{"type":"reg","name":"a//b"}"#), "empty path component");
    rejects(&toc(r#"{"type":"reg","name":""}"#), "empty name");
    rejects(&toc(r#"{"type":"reg"}"#), "name: missing");
    rejects(&toc(r#"{"type":"reg","name":"a\u0000b"}"#), "NUL");
    rejects(&toc(&format!(r#"{{"type":"reg","name":"{}"}}"#, "x".repeat(256))), "255");
    rejects(&toc(&format!(r#"{{"type":"reg","name":"{}"}}"#, "x/".repeat(2100))), "PATH_MAX");
    rejects(&toc(r#"{"type":"reg","name":"/"}"#), "root must be a directory");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"reg","name":"f/g"}"#), "not a directory");
    rejects(&toc(r#"{"type":"reg","name":"f","mode":420},{"type":"reg","name":"f","mode":384}"#), "different metadata");
    // Identical duplicates are accepted.
    p(&toc(r#"{"type":"reg","name":"f","mode":420},{"type":"reg","name":"/f","mode":420}"#)).unwrap();
}

#[test]
fn rejects_bad_fields() {
    rejects(&toc(r#"{"name":"a"}"#), "type: missing");
    rejects(&toc(r#"{"type":"sock","name":"a"}"#), "unknown type");
    rejects(&toc(r#"{"type":"reg","name":"a","mode":"420"}"#), "mode");
    rejects(&toc(r#"{"type":"reg","name":"a","mode":420.5}"#), "mode");
    rejects(&toc(r#"{"type":"reg","name":"a","mode":-1}"#), "mode");
    rejects(&toc(r#"{"type":"reg","name":"a","mode":262144}"#), "mode");
    rejects(&toc(r#"{"type":"reg","name":"a","mode":16877}"#), "contradict");
    rejects(&toc(r#"{"type":"dir","name":"a","mode":41471}"#), "contradict");
    rejects(&toc(r#"{"type":"reg","name":"a","uid":4294967296}"#), "uid");
    rejects(&toc(r#"{"type":"reg","name":"a","gid":-1}"#), "gid");
    rejects(&toc(r#"{"type":"reg","name":"a","size":-1}"#), "size");
    rejects(&toc(r#"{"type":"reg","name":"a","size":18446744073709551615}"#), "size");
    rejects(&toc(r#"{"type":"reg","name":"a","modtime":"yesterday"}"#), "modtime");
    rejects(&toc(r#"{"type":"reg","name":"a","accesstime":"2020-13-01T00:00:00Z"}"#), "accesstime");
    rejects(&toc(r#"{"type":"char","name":"a","devMajor":4096}"#), "devMajor");
    rejects(&toc(r#"{"type":"char","name":"a","devMinor":1048576}"#), "devMinor");
    rejects(&toc(r#"{"type":"reg","name":"a","size":3,"digest":"sha256:abc"}"#), "digest");
    rejects(
        &toc(&format!(
            r#"{{"type":"reg","name":"a","size":3,"digest":"{}"}}"#,
            D.to_uppercase().replace("SHA256", "sha256")
        )),
        "digest",
    );
    rejects(
        &toc(&format!(r#"{{"type":"reg","name":"a","size":3,"digest":"{}"}}"#, D.replace("sha256", "sha512"))),
        "digest",
    );
    rejects(&toc(r#"{"type":"reg","name":"a","size":3}"#), "no digest");
    rejects(&toc(r#"{"type":"reg","name":"a","x-content":"!!"}"#), "x-content");
    rejects(&toc(r#"{"type":"reg","name":"a","size":2,"x-content":"YWJj"}"#), "size");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 5001]);
    rejects(&toc(&format!(r#"{{"type":"reg","name":"a","x-content":"{big}"}}"#)), "5000");
    rejects(&toc(r#"{"type":"reg","name":"a","size":1,"x-payload":"../etc/shadow"}"#), "x-payload");
    rejects(&toc(r#"{"type":"reg","name":"a","size":1,"x-payload":"/abs"}"#), "x-payload");
    rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"user.a":"not base64!"}}"#), "xattrs");
    rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"":"YQ=="}}"#), "empty xattr name");
    rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"user.\u0000":"YQ=="}}"#), "NUL");
    rejects(
        &toc(&format!(r#"{{"type":"reg","name":"a","xattrs":{{"user.{}":"YQ=="}}}}"#, "k".repeat(251))),
        "xattr name longer",
    );
    let v = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 65536]);
    rejects(&toc(&format!(r#"{{"type":"reg","name":"a","xattrs":{{"user.a":"{v}"}}}}"#)), "value longer");
    let v = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 20000]);
    rejects(&toc(&format!(r#"{{"type":"reg","name":"a","xattrs":{{"user.a":"{v}","user.b":"{v}"}}}}"#)), "budget");
    rejects(&toc(r#"{"type":"reg","name":"a","xattrs":["x"]}"#), "xattrs");
    rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"user.a":1}}"#), "xattrs");
    rejects(&toc(r#"{"type":"reg","name":"a","name":7}"#), "name");
}

#[test]
fn rejects_bad_links_and_chunks() {
    rejects(&toc(r#"{"type":"symlink","name":"s"}"#), "linkName");
    rejects(&toc(&format!(r#"{{"type":"symlink","name":"s","linkName":"{}"}}"#, "x".repeat(4096))), "linkName");
    rejects(&toc(r#"{"type":"symlink","name":"s","linkName":"a\u0000"}"#), "NUL");
    rejects(&toc(r#"{"type":"hardlink","name":"h","linkName":"missing"}"#), "does not exist");
    rejects(&toc(r#"{"type":"hardlink","name":"h","linkName":"h"}"#), "itself");
    rejects(&toc(r#"{"type":"hardlink","name":"h"}"#), "linkName");
    rejects(&toc(r#"{"type":"dir","name":"d"},{"type":"hardlink","name":"h","linkName":"d"}"#), "directory");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"hardlink","name":"h","linkName":"f/../f"}"#), "linkName");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"hardlink","name":"/","linkName":"f"}"#), "root");
    rejects(&toc(r#"{"type":"chunk","name":"f"}"#), "chunk");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"dir","name":"d"},{"type":"chunk","name":"f"}"#), "chunk");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"chunk","name":"g"}"#), "does not follow");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"chunk","name":"f","chunkType":"bogus"}"#), "chunkType");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"chunk","name":"f","chunkSize":-3}"#), "chunkSize");
    rejects(&toc(r#"{"type":"reg","name":"f","offset":-1}"#), "offset");
    rejects(&toc(r#"{"type":"reg","name":".wh."}"#), "whiteout");
    rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"reg","name":"f/.wh..wh..opq"}"#), "not a directory");
    // Several chunks in a row are fine; so is a reg with linkName acting as a hard link.
    p(&toc(r#"{"type":"reg","name":"f","size":1,"x-content":"YQ=="},{"type":"chunk","name":"f"},{"type":"chunk","name":"./f"},
              {"type":"reg","name":"g","linkName":"f"}"#))
    .unwrap();
}

#[test]
fn limits() {
    let opts = TocOptions { limits: Limits { max_entries: 3, max_depth: 2 }, ..TocOptions::default() };
    let e = parse(
        toc(r#"{"type":"dir","name":"a"},{"type":"dir","name":"b"},{"type":"dir","name":"c"}"#).as_bytes(),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("too many entries"), "{e}");
    let e = parse(toc(r#"{"type":"dir","name":"a/b/c"}"#).as_bytes(), &opts).unwrap_err();
    assert!(e.to_string().contains("deeper"), "{e}");
}

#[test]
fn dev_encoding_matches_kernel() {
    assert_eq!(encode_dev(42, 17).unwrap(), 10769);
    assert_eq!(encode_dev(420, 170).unwrap(), 107690);
    assert_eq!(encode_dev(0xfff, 0xfffff).unwrap(), 0xffff_ffff);
}

#[test]
fn utf8_checked_over_the_whole_document() {
    // Non-ASCII names pass through byte for byte, escaped or not.
    let t = p(&toc(r#"{"type":"reg","name":"dé/\u00e9\ud83d\ude00","size":0}"#)).unwrap();
    assert!(t.lookup("dé/é😀".as_bytes()).is_some());
    // Invalid UTF-8 is refused wherever it is: in a name (an encoded surrogate), in an ignored
    // key, in a string nested in an ignored value (a cut sequence), in a known key, and after
    // the document; the error names the byte.
    let good = toc(r#"{"type":"reg","name":"a","size":0,"x-other":["q"]}"#);
    let cases: [(&str, &[u8]); 4] = [("a", b"\xed\xa0\x80"), ("x-other", b"\xff"), ("q", b"\xc3"), ("size", b"\x80")];
    for (what, bad) in cases {
        let at = good.find(&format!("\"{what}\"")).unwrap() + 1;
        let doc = [&good.as_bytes()[..at], bad, &good.as_bytes()[at..]].concat();
        let e = match parse(&doc, &TocOptions::default()) {
            Ok(_) => panic!("accepted invalid UTF-8 in {what}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("invalid JSON") && e.contains(&format!("at byte {at}")), "{e}");
    }
    let doc = [good.as_bytes(), b"\xfe"].concat();
    assert!(parse(&doc, &TocOptions::default()).unwrap_err().to_string().contains("not UTF-8"));
}
