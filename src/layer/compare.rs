//! A TOC's tree against the tree of the tar stream it indexes: they must be the same tree, with
//! one tolerance — a TOC modification time in whole seconds may be the tar's rounded to a
//! whole second (the eStargz writers round TOC times). Everything else (names, types, modes,
//! owners, sizes, link targets, devices, xattrs, hard links, whiteouts, and each file's content
//! digest) must be equal: a layer whose index and content disagree is refused, so that no
//! reader sees a different tree from the same layer.

use crate::tree::{self, Entry, NodeId, Tree};

/// Object path of the empty content (sha256 of nothing).
pub(crate) const EMPTY_OBJECT: &[u8] = b"e3/b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn differ(path: &[u8], what: &str, toc: String, tar: String) -> String {
    format!(
        "the TOC and the tar stream disagree about /{}: {what} is {toc} in the TOC but {tar} in the tar",
        tree::show(path)
    )
}

fn mtime_ok(toc: &Entry, tar: &Entry) -> bool {
    let (a, b) = (&toc.inode, &tar.inode);
    if (a.mtime, a.mtime_nsec) == (b.mtime, b.mtime_nsec) {
        return true;
    }
    // TOC in whole seconds, within a second of the tar's time.
    a.mtime_nsec == 0 && (a.mtime == b.mtime || (a.mtime == b.mtime + 1 && b.mtime_nsec > 0))
}

fn entries(path: &[u8], a: &Entry, b: &Entry) -> Result<(), String> {
    let (x, y) = (&a.inode, &b.inode);
    let o = |v: u32| format!("0o{v:o}");
    if x.mode != y.mode {
        return Err(differ(path, "the mode", o(x.mode), o(y.mode)));
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        return Err(differ(path, "the owner", format!("{}:{}", x.uid, x.gid), format!("{}:{}", y.uid, y.gid)));
    }
    if x.size != y.size {
        return Err(differ(path, "the size", x.size.to_string(), y.size.to_string()));
    }
    if x.rdev != y.rdev {
        return Err(differ(path, "the device number", x.rdev.to_string(), y.rdev.to_string()));
    }
    if !mtime_ok(a, b) {
        let t = |e: &Entry| format!("{}.{:09}", e.inode.mtime, e.inode.mtime_nsec);
        return Err(differ(path, "the modification time", t(a), t(b)));
    }
    // eStargz TOCs give empty files the digest of the empty string (`--from-estargz` keeps it).
    let empty_object = x.is_reg() && x.size == 0 && b.payload.is_none() && a.payload.as_deref() == Some(EMPTY_OBJECT);
    if a.payload != b.payload && !empty_object {
        let show = |p: &Option<Vec<u8>>| p.as_deref().map(tree::show).unwrap_or_else(|| "none".into());
        let what = if x.is_symlink() { "the symlink target" } else { "the content (object)" };
        return Err(differ(path, what, show(&a.payload), show(&b.payload)));
    }
    let mut xa: Vec<_> = a.xattrs.iter().map(|x| (&x.key, &x.value)).collect();
    let mut xb: Vec<_> = b.xattrs.iter().map(|x| (&x.key, &x.value)).collect();
    xa.sort();
    xb.sort();
    if xa != xb {
        let names = |v: &[(&Vec<u8>, &Vec<u8>)]| v.iter().map(|(k, _)| tree::show(k)).collect::<Vec<_>>().join(",");
        return Err(differ(path, "the xattrs", format!("[{}]", names(&xa)), format!("[{}]", names(&xb))));
    }
    Ok(())
}

/// Both trees finalized (children sorted by name).
pub(crate) fn trees(toc: &Tree, tar: &Tree) -> Result<(), String> {
    let mut stack: Vec<(NodeId, NodeId)> = vec![(tree::ROOT, tree::ROOT)];
    while let Some((a, b)) = stack.pop() {
        let (na, nb) = (toc.node(a), tar.node(b));
        let path = toc.path_of(a);
        entries(&path, &na.entry, &nb.entry)?;
        match (na.link_to, nb.link_to) {
            (None, None) => {}
            (Some(x), Some(y)) if toc.path_of(x) == tar.path_of(y) => {}
            (x, y) => {
                let show = |t: &Tree, l: Option<NodeId>| {
                    l.map(|l| format!("a hard link to /{}", tree::show(&t.path_of(l))))
                        .unwrap_or_else(|| "not a hard link".into())
                };
                return Err(differ(&path, "the link", show(toc, x), show(tar, y)));
            }
        }
        let mut ia = na.children.iter().peekable();
        let mut ib = nb.children.iter().peekable();
        loop {
            match (ia.peek(), ib.peek()) {
                (None, None) => break,
                (Some(&&ca), Some(&&cb)) if toc.node(ca).name == tar.node(cb).name => {
                    stack.push((ca, cb));
                    ia.next();
                    ib.next();
                }
                (Some(&&ca), cb) if cb.is_none_or(|&&cb| toc.node(ca).name < tar.node(cb).name) => {
                    return Err(format!(
                        "the TOC lists /{} but the tar stream does not have it",
                        tree::show(&toc.path_of(ca))
                    ));
                }
                (_, Some(&&cb)) => {
                    return Err(format!(
                        "the tar stream has /{} but the TOC does not list it",
                        tree::show(&tar.path_of(cb))
                    ));
                }
                (Some(_), None) => unreachable!("handled above"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Inode, Limits, S_IFREG};

    fn tree_with(mtime: i64, nsec: u32, mode: u32) -> Tree {
        let mut t = Tree::new(Limits::default());
        let inode = Inode { mode: S_IFREG | mode, mtime, mtime_nsec: nsec, ..Inode::default() };
        t.insert(b"a", Entry { inode, ..Entry::default() }).unwrap();
        t.finalize().unwrap();
        t
    }

    #[test]
    fn whole_second_toc_times_may_round() {
        let tar = tree_with(100, 600_000_000, 0o644);
        assert!(trees(&tree_with(100, 600_000_000, 0o644), &tar).is_ok());
        assert!(trees(&tree_with(101, 0, 0o644), &tar).is_ok());
        assert!(trees(&tree_with(100, 0, 0o644), &tar).is_ok());
        let e = trees(&tree_with(102, 0, 0o644), &tar).unwrap_err();
        assert!(e.contains("/a: the modification time"), "{e}");
        let e = trees(&tree_with(100, 600_000_000, 0o4755), &tar).unwrap_err();
        assert!(e.contains("the mode is 0o104755 in the TOC but 0o100644"), "{e}");
        let mut extra = tree_with(100, 600_000_000, 0o644);
        extra.insert(b"b", Entry { inode: Inode { mode: S_IFREG, ..Inode::default() }, ..Entry::default() }).unwrap();
        extra.finalize().unwrap();
        assert!(trees(&extra, &tar).unwrap_err().contains("the TOC lists /b"));
        assert!(trees(&tar, &extra).unwrap_err().contains("the tar stream has /b"));
    }
}
