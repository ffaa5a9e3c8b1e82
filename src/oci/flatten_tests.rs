//! Flattening rules on small layer trees built by hand.
use super::*;
use crate::tree::{Inode, Xattr, S_IFCHR, S_IFDIR, S_IFREG};

fn reg(mtime: i64, payload: &str) -> Entry {
    Entry {
        inode: Inode { mode: S_IFREG | 0o644, size: 5, mtime, ..Inode::default() },
        payload: Some(payload.as_bytes().to_vec()),
        ..Entry::default()
    }
}

fn dir(mode: u32, mtime: i64) -> Entry {
    Entry { inode: Inode { mode: S_IFDIR | mode, mtime, ..Inode::default() }, ..Entry::default() }
}

fn marker() -> Entry {
    Entry { inode: Inode { mode: S_IFREG, ..Inode::default() }, ..Entry::default() }
}

fn layer(entries: &[(&str, Entry)], links: &[(&str, &str)]) -> Tree {
    let mut t = Tree::new(Limits::default());
    for (p, e) in entries {
        if p.is_empty() {
            t.set_root(e.clone()).unwrap();
        } else {
            t.insert(p.as_bytes(), e.clone()).unwrap();
        }
    }
    for (p, target) in links {
        t.insert_hardlink(p.as_bytes(), target.as_bytes()).unwrap();
    }
    t.finalize().unwrap();
    t
}

/// `path kind payload-or-mode` lines of a tree, sorted.
fn listing(t: &Tree) -> Vec<String> {
    let mut v: Vec<String> = (1..t.len() as NodeId)
        .map(|id| {
            let n = t.node(t.resolve(id));
            let e = &n.entry;
            let what = if e.inode.is_dir() {
                format!("d{:o}@{}", e.inode.mode & 0o7777, e.inode.mtime)
            } else {
                format!("f:{}", String::from_utf8_lossy(e.payload.as_deref().unwrap_or(b"-")))
            };
            format!("{} {}", String::from_utf8_lossy(&t.path_of(id)), what)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn whiteouts_opaque_and_replacement() {
    let l1 = layer(
        &[
            ("", dir(0o755, 1)),
            ("etc", dir(0o755, 1)),
            ("etc/motd", reg(1, "motd1")),
            ("etc/keep", reg(1, "keep1")),
            ("gone", dir(0o755, 1)),
            ("gone/deep/file", reg(1, "deep")),
            ("opq", dir(0o755, 1)),
            ("opq/a", reg(1, "a1")),
            ("opq/b", reg(1, "b1")),
            ("file-to-dir", reg(1, "ftd")),
            ("dir-to-file", dir(0o700, 1)),
            ("dir-to-file/x", reg(1, "x")),
            ("readded", reg(1, "old")),
        ],
        &[],
    );
    let l2 = layer(
        &[
            ("etc/.wh.motd", marker()),
            (".wh.gone", marker()),
            ("opq/.wh..wh..opq", marker()),
            ("opq/a", reg(2, "a2")),
            ("file-to-dir/inside", reg(2, "inside")),
            ("dir-to-file", reg(2, "dtf")),
            (".wh.readded", marker()),
            ("readded", reg(2, "new")),
            (".wh..wh.plnk", marker()),
        ],
        &[],
    );
    let t = flatten(vec![l1.into(), l2.into()], Limits::default()).unwrap();
    assert_eq!(
        listing(&t),
        [
            "dir-to-file f:dtf",
            "etc d755@1",
            "etc/keep f:keep1",
            "file-to-dir d755@0",
            "file-to-dir/inside f:inside",
            "opq d755@1",
            "opq/a f:a2",
            "readded f:new",
        ]
    );
    // The implied `etc` of layer 2 kept layer 1's metadata; the root is layer 1's.
    assert!(!t.node(ROOT).implicit);
    // ...and back: a directory over the file again, then a file over the directory.
    let l3 = layer(&[("dir-to-file", dir(0o750, 3)), ("file-to-dir", reg(3, "again"))], &[]);
    let l4 = layer(&[("dir-to-file/y", reg(4, "y"))], &[]);
    let t = flatten(
        vec![layer(&[("dir-to-file", reg(1, "f")), ("file-to-dir/z", reg(1, "z"))], &[]).into(), l3.into(), l4.into()],
        Limits::default(),
    )
    .unwrap();
    assert_eq!(listing(&t), ["dir-to-file d750@3", "dir-to-file/y f:y", "file-to-dir f:again"]);
}

#[test]
fn most_derived_directory_metadata_wins() {
    let mut xd = dir(0o700, 5);
    xd.xattrs.push(Xattr { key: b"user.x".to_vec(), value: b"2".to_vec() });
    let l1 = layer(&[("d", dir(0o755, 1)), ("d/a", reg(1, "a"))], &[]);
    let l2 = layer(&[("d", xd.clone()), ("d/b", reg(2, "b"))], &[]);
    let t = flatten(vec![l1.into(), l2.into()], Limits::default()).unwrap();
    assert_eq!(listing(&t), ["d d700@5", "d/a f:a", "d/b f:b"]);
    assert_eq!(t.node(t.lookup(b"d").unwrap()).entry.xattrs, xd.xattrs);
}

#[test]
fn hard_links_within_and_across_layers() {
    let l1 = layer(&[("a", reg(1, "A")), ("x", reg(1, "X"))], &[("b", "a")]);
    let mut l2: LayerTree = layer(&[("c", reg(2, "C"))], &[("d", "c")]).into();
    l2.external_links.push((b"e".to_vec(), b"a".to_vec()));
    // Layer 3 replaces one name of the group: the others keep the old inode.
    let l3 = layer(&[("b", reg(3, "B3"))], &[]);
    let t = flatten(vec![l1.into(), l2, l3.into()], Limits::default()).unwrap();
    assert_eq!(listing(&t), ["a f:A", "b f:B3", "c f:C", "d f:C", "e f:A", "x f:X"]);
    let counts = t.link_counts();
    let nlink = |p: &[u8]| t.nlink_with(t.lookup(p).unwrap(), &counts);
    assert_eq!((nlink(b"a"), nlink(b"e"), nlink(b"b"), nlink(b"c")), (2, 2, 1, 2));
    assert_eq!(t.resolve(t.lookup(b"e").unwrap()), t.lookup(b"a").unwrap());

    // A link to something no layer below has, or to a directory, is refused by name.
    let mut bad: LayerTree = layer(&[("f", reg(2, "F"))], &[]).into();
    bad.external_links.push((b"l".to_vec(), b"nope".to_vec()));
    let e = flatten(vec![layer(&[("d/x", reg(1, "x"))], &[]).into(), bad.clone()], Limits::default()).unwrap_err();
    assert_eq!(e.to_string(), "layer 2: l: hard link target nope is in no layer below");
    bad.external_links[0].1 = b"d".to_vec();
    let e = flatten(vec![layer(&[("d/x", reg(1, "x"))], &[]).into(), bad], Limits::default()).unwrap_err();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn hostile_whiteouts_and_real_devices() {
    let l2 = layer(&[("d/.wh...", marker())], &[]);
    let e = flatten(vec![layer(&[("d/x", reg(1, "x"))], &[]).into(), l2.into()], Limits::default()).unwrap_err();
    assert!(e.to_string().contains("'..'"), "{e}");
    // A character device 0/0 in a layer is a device, not a whiteout: it stays, and hides nothing.
    let dev = Entry { inode: Inode { mode: S_IFCHR | 0o600, ..Inode::default() }, ..Entry::default() };
    let l1 = layer(&[("d/x", reg(1, "x"))], &[]);
    let l2 = layer(&[("d/y", dev)], &[]);
    let t = flatten(vec![l1.into(), l2.into()], Limits::default()).unwrap();
    assert!(t.lookup(b"d/x").is_some());
    assert_eq!(t.node(t.lookup(b"d/y").unwrap()).entry.inode.mode, S_IFCHR | 0o600);
    // The entry limit holds for the flattened tree too.
    let l1 = layer(&[("a", reg(1, "a")), ("b", reg(1, "b"))], &[]);
    let l2 = layer(&[("c", reg(1, "c"))], &[]);
    let e = flatten(vec![l1.into(), l2.into()], Limits { max_entries: 3, max_depth: 10 }).unwrap_err();
    assert!(e.to_string().contains("too many entries"), "{e}");
}

#[test]
fn paths_never_resolve_through_symlinks() {
    let link = Entry {
        inode: Inode { mode: crate::tree::S_IFLNK | 0o777, size: 7, ..Inode::default() },
        payload: Some(b"usr/lib".to_vec()),
        ..Entry::default()
    };
    let l1 = layer(&[("lib", link), ("usr/lib/keep", reg(1, "keep"))], &[]);
    // A whiteout below the symlink removes nothing; an entry below it replaces the symlink
    // with a directory (overlayfs' view), and usr/lib is left alone.
    let l2 = layer(&[("lib/.wh.keep", marker())], &[]);
    let l3 = layer(&[("lib/x", reg(3, "x"))], &[]);
    let t = flatten(vec![l1.into(), l2.into(), l3.into()], Limits::default()).unwrap();
    assert_eq!(listing(&t), ["lib d755@0", "lib/x f:x", "usr d755@0", "usr/lib d755@0", "usr/lib/keep f:keep"]);
}
