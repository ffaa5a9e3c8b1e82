//! The overlay-form conversion on hand-made layer trees (the root tier stacks real mounts).
use super::*;
use crate::tree::{S_IFDIR, S_IFREG};

fn reg(mode: u32, uid: u32, payload: &str) -> Entry {
    Entry {
        inode: Inode { mode: S_IFREG | mode, uid, size: 5, mtime: 100, ..Inode::default() },
        payload: Some(payload.as_bytes().to_vec()),
        ..Entry::default()
    }
}

fn dir(mode: u32, uid: u32, mtime: i64) -> Entry {
    Entry { inode: Inode { mode: S_IFDIR | mode, uid, mtime, ..Inode::default() }, ..Entry::default() }
}

fn x(k: &str, v: &str) -> Xattr {
    Xattr { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }
}

fn keys(t: &Tree, p: &str) -> Vec<(String, String)> {
    let id = t.lookup(p.as_bytes()).unwrap_or_else(|| panic!("{p} missing"));
    t.node(id)
        .entry
        .xattrs
        .iter()
        .map(|x| (String::from_utf8_lossy(&x.key).into_owned(), String::from_utf8_lossy(&x.value).into_owned()))
        .collect()
}

fn layer(entries: &[(&str, Entry)]) -> Tree {
    let mut t = Tree::new(Limits::default());
    for (p, e) in entries {
        if p.is_empty() {
            t.set_root(e.clone()).unwrap();
        } else {
            t.insert(p.as_bytes(), e.clone()).unwrap();
        }
    }
    t.finalize().unwrap();
    t
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_opaque_marks() {
    let mut d = dir(0o750, 7, 5);
    d.xattrs = vec![x("user.foo", "bar"), x("trusted.overlay.redirect", "/etc"), x("user.overlay.opaque", "y")];
    let l = layer(&[
        ("", dir(0o755, 0, 1)),
        ("a", d),
        ("a/.wh.gone", reg(0o644, 3, "00/x")),
        ("a/.wh.kept", reg(0o644, 0, "00/x")),
        ("a/kept", reg(0o600, 0, "ab/cd")),
        ("a/.wh..wh.plnk.123", reg(0o644, 0, "00/x")),
        ("o", dir(0o755, 0, 9)),
        ("o/.wh..wh..opq", reg(0o644, 0, "00/x")),
        ("o/.wh.inside", reg(0o644, 0, "00/x")),
        ("o/new", reg(0o644, 0, "ef/01")),
    ]);
    let t = overlay_form(&l, &[], None, Limits::default()).unwrap();
    let gone = t.node(t.lookup(b"a/gone").unwrap());
    assert_eq!(gone.entry.inode.mode, S_IFCHR);
    assert_eq!(gone.entry.inode.rdev, 0);
    assert_eq!(gone.entry.inode.uid, 3, "the whiteout keeps the owner of its .wh. file");
    assert_eq!(t.node(t.lookup(b"a/kept").unwrap()).entry.inode.mode, S_IFREG | 0o600, "an entry beats its whiteout");
    for p in ["a/.wh.gone", "a/.wh.kept", "a/.wh..wh.plnk.123", "o/.wh..wh..opq", "o/.wh.inside", "o/inside"] {
        assert!(t.lookup(p.as_bytes()).is_none(), "{p} must not be in the result");
    }
    assert_eq!(keys(&t, "a"), vec![("user.foo".into(), "bar".into())], "overlay xattrs of the tar are dropped");
    assert_eq!(
        keys(&t, "o"),
        vec![("trusted.overlay.opaque".into(), "y".into()), ("user.overlay.opaque".into(), "y".into())]
    );
    assert!(t.lookup(b"o/new").is_some());
}

#[test]
fn implied_directories_take_the_metadata_below() {
    let below = layer(&[("", dir(0o700, 5, 42)), ("usr", dir(0o751, 1, 43)), ("usr/bin", dir(0o711, 2, 44))]);
    // Layer 2 lists neither the root nor usr nor usr/bin: all implied.
    let l = layer(&[("usr/bin/tool", reg(0o755, 0, "12/34")), ("new/dir/f", reg(0o644, 0, "56/78"))]);
    let t = overlay_form(&l, &[], Some(&below), Limits::default()).unwrap();
    let ino = |p: &str| t.node(t.lookup(p.as_bytes()).unwrap()).entry.inode;
    assert_eq!((ino("").mode, ino("").uid, ino("").mtime), (S_IFDIR | 0o700, 5, 42));
    assert_eq!((ino("usr").mode, ino("usr").uid, ino("usr").mtime), (S_IFDIR | 0o751, 1, 43));
    assert_eq!((ino("usr/bin").mode, ino("usr/bin").mtime), (S_IFDIR | 0o711, 44));
    // Nothing below: the implied defaults.
    assert_eq!((ino("new").mode, ino("new").uid, ino("new").mtime), (S_IFDIR | 0o755, 0, 0));
    // Without a lower tree the implied root keeps the defaults too.
    let t = overlay_form(&l, &[], None, Limits::default()).unwrap();
    assert_eq!(t.node(ROOT).entry.inode.mode, S_IFDIR | 0o755);
    // A listed directory keeps its own metadata whatever is below.
    let l = layer(&[("usr", dir(0o700, 9, 1))]);
    let t = overlay_form(&l, &[], Some(&below), Limits::default()).unwrap();
    assert_eq!(t.node(t.lookup(b"usr").unwrap()).entry.inode.uid, 9);
}

#[test]
fn hard_links_stay_links_and_bad_links_are_refused() {
    let mut l = layer(&[("d", dir(0o755, 0, 1)), ("d/f", reg(0o644, 0, "aa/bb"))]);
    l.insert_hardlink(b"d/g", b"d/f").unwrap();
    l.insert_hardlink(b"top", b"d/f").unwrap();
    l.finalize().unwrap();
    let t = overlay_form(&l, &[], None, Limits::default()).unwrap();
    let f = t.lookup(b"d/f").unwrap();
    assert_eq!(t.node(t.lookup(b"d/g").unwrap()).link_to, Some(f));
    assert_eq!(t.node(t.lookup(b"top").unwrap()).link_to, Some(f));

    let mut l = layer(&[("d/.wh.x", reg(0o644, 0, "aa/bb"))]);
    l.insert_hardlink(b"d/y", b"d/.wh.x").unwrap();
    let e = overlay_form(&l, &[], None, Limits::default()).unwrap_err();
    assert!(e.to_string().contains("hard link to a whiteout"), "{e}");

    let e = overlay_form(&layer(&[]), &[(b"a".to_vec(), b"b".to_vec())], None, Limits::default()).unwrap_err();
    assert!(e.to_string().contains("lower layer"), "{e}");
}

#[test]
fn whiteouts_of_dot_names_are_refused() {
    for bad in [".wh.", ".wh..", ".wh..."] {
        let l = layer(&[(&format!("d/{bad}"), reg(0o644, 0, "aa/bb"))]);
        let e = overlay_form(&l, &[], None, Limits::default()).unwrap_err();
        assert!(e.to_string().contains("whiteout names"), "{e}");
    }
}

#[test]
fn a_real_device_0_0_stays_what_podman_makes_of_it() {
    // A character device 0/0 in a tar is a whiteout for overlayfs either way (podman's own
    // extraction makes the same node); it passes through unchanged.
    let dev = Entry { inode: Inode { mode: S_IFCHR | 0o600, ..Inode::default() }, ..Entry::default() };
    let t = overlay_form(&layer(&[("dev0", dev.clone())]), &[], None, Limits::default()).unwrap();
    assert_eq!(t.node(t.lookup(b"dev0").unwrap()).entry, dev);
}
