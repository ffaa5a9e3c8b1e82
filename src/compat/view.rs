//! What the reference `composefs-info` prints for an image (docs/dropin.md, "composefs-info"):
//! the tree as the reference's image loader sees it, and its `ls`, `dump` and `objects` forms.
//!
//! cfsmount's reader hands back the tree the user described (the writer's overlay xattrs
//! removed, xattrs sorted, hard links rooted at the name where the writer placed the inode).
//! The reference loader shows slightly more and orders differently; [`reference_tree`] turns
//! the first into the second:
//! - xattrs in on-disk order: the inline entries, then the shared ones, each in the inode's
//!   (bytewise) order; which are which is what the writer lays out for this tree
//!   ([`crate::erofs::writer::disk_xattrs`]), so for images written by a composefs writer the
//!   order is the image's;
//! - the loader's xattr rules: `trusted.overlay.overlay.*` unescaped, the writer's
//!   `trusted.overlay.*` hidden, `trusted.overlay.overlay.whiteout(s)` and
//!   `user.overlay.whiteout(s)` hidden, the version-1 `opaque=x` markers shown;
//! - `--filter`: only the root entries named;
//! - hard links: the first name in depth-first order holds the inode, the others link to it.
//!
//! Everything here runs inside the sandbox, on a tree the hostile-image reader produced.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};

use crate::erofs::writer::{disk_xattrs, WriteOptions};
use crate::tree::{NodeId, Tree, Xattr, ROOT, S_IFCHR, S_IFMT};

const OVL_PREFIX: &[u8] = b"trusted.overlay.";
const OVL_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
/// On-disk names the reference loader never shows (besides the writer's `trusted.overlay.*`).
const HIDDEN: &[&[u8]] = &[b"trusted.overlay.overlay.whiteouts", b"user.overlay.whiteout", b"user.overlay.whiteouts"];
/// The escaped whiteout marker: the reference loader turns ANY regular file carrying it into a
/// whiteout; shown here on what is not a whiteout (docs/dropin.md, difference 6).
const ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";

/// The tree as the reference loader builds it from the image `tree` was read from (format
/// `version`), limited to the root entries in `filter` when it is not empty.
pub(crate) fn reference_tree(mut tree: Tree, version: u32, filter: &[Vec<u8>]) -> Result<Tree, String> {
    let opts = WriteOptions { min_version: version, max_version: version };
    let layout = disk_xattrs(&tree, &opts).map_err(|e| e.to_string())?;
    for (id, xs) in layout {
        let ino = &tree.node(id).entry.inode;
        let whiteout = ino.mode & S_IFMT == S_IFCHR && ino.rdev == 0;
        let shown = xs.iter().filter(|x| !x.shared).chain(xs.iter().filter(|x| x.shared)).filter_map(|x| {
            if HIDDEN.contains(&x.key.as_slice()) || (whiteout && x.key == ESCAPED_WHITEOUT) {
                None
            } else if let Some(rest) = x.key.strip_prefix(OVL_ESCAPED_PREFIX) {
                Some(Xattr { key: [OVL_PREFIX, rest].concat(), value: x.value.clone() })
            } else if x.key.starts_with(OVL_PREFIX) {
                None
            } else {
                Some(Xattr { key: x.key.clone(), value: x.value.clone() })
            }
        });
        tree.node_mut(id).entry.xattrs = shown.collect();
    }
    if !filter.is_empty() {
        // The image's link count of the root stays what it was.
        let links = tree.link_counts();
        let n = tree.nlink_with(ROOT, &links);
        tree.set_nlink(ROOT, n);
        let keep: Vec<NodeId> = tree
            .node(ROOT)
            .children
            .iter()
            .copied()
            .filter(|&c| filter.iter().any(|f| *f == tree.node(c).name))
            .collect();
        tree.node_mut(ROOT).children = keep;
    }
    reroot_hard_links(&mut tree);
    Ok(tree)
}

/// Visit every node reachable from the root, depth-first, children in bytewise name order, with
/// its path (without the leading `/`; empty for the root).
fn walk(tree: &Tree, mut visit: impl FnMut(NodeId, &[u8])) {
    let mut stack: Vec<(NodeId, usize)> = vec![(ROOT, 0)];
    let mut path: Vec<u8> = Vec::with_capacity(256);
    // ends[d]: length of `path` for the node at depth d on the current branch.
    let mut ends: Vec<usize> = Vec::new();
    while let Some((id, depth)) = stack.pop() {
        let n = tree.node(id);
        if depth > 0 {
            path.truncate(ends[depth - 1]);
            if depth > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(&n.name);
        }
        ends.truncate(depth);
        ends.push(path.len());
        visit(id, &path);
        if n.link_to.is_none() && n.entry.inode.is_dir() {
            let mut kids = n.children.clone();
            kids.sort_unstable_by(|a, b| tree.node(*b).name.cmp(&tree.node(*a).name));
            stack.extend(kids.into_iter().map(|c| (c, depth + 1)));
        }
    }
}

/// Make the first name of each hard-linked inode in depth-first order the one that holds it.
fn reroot_hard_links(tree: &mut Tree) {
    let mut members: HashMap<NodeId, Vec<NodeId>> = HashMap::new(); // holder -> link names
    for (i, n) in tree.nodes.iter().enumerate() {
        if let Some(h) = n.link_to {
            members.entry(h).or_default().push(i as NodeId);
        }
    }
    if members.is_empty() {
        return;
    }
    let mut first: HashMap<NodeId, NodeId> = HashMap::new(); // holder -> first name
    walk(tree, |id, _| {
        let holder = tree.resolve(id);
        if members.contains_key(&holder) {
            first.entry(holder).or_insert(id);
        }
    });
    for (holder, f) in first {
        if holder == f {
            continue;
        }
        let entry = std::mem::take(&mut tree.node_mut(holder).entry);
        let nlink = tree.node(holder).nlink;
        let n = tree.node_mut(f);
        n.entry = entry;
        n.nlink = nlink;
        n.link_to = None;
        tree.node_mut(holder).link_to = Some(f);
        for &m in members.get(&holder).into_iter().flatten() {
            if m != f {
                tree.node_mut(m).link_to = Some(f);
            }
        }
    }
}

/// `composefs-info ls`: one line per entry below the root, depth-first.
pub(crate) fn write_ls(tree: &Tree, out: &mut dyn Write) -> io::Result<()> {
    let mut w = io::BufWriter::new(out);
    let mut line = Vec::new();
    let mut result = Ok(());
    walk(tree, |id, path| {
        if id == ROOT || result.is_err() {
            return;
        }
        line.clear();
        line.push(b'/');
        escape(&mut line, path, true);
        let n = tree.node(id);
        // A name that links to an inode held elsewhere is an empty node to the reference.
        if n.link_to.is_none() {
            let e = &n.entry;
            if e.inode.is_dir() {
                line.extend_from_slice(b"/\t");
            } else if e.inode.is_symlink() {
                line.extend_from_slice(b"\t-> ");
                escape(&mut line, e.payload.as_deref().unwrap_or_default(), false);
            } else if let (true, Some(p)) = (e.inode.is_reg(), &e.payload) {
                line.extend_from_slice(b"\t@ ");
                escape(&mut line, p, false);
            }
        }
        line.push(b'\n');
        result = w.write_all(&line);
    });
    result?;
    w.flush()
}

/// `composefs-info objects`: the payloads of the regular files (raw bytes, sorted, distinct).
pub(crate) fn objects(tree: &Tree, into: &mut BTreeSet<Vec<u8>>) {
    walk(tree, |id, _| {
        let n = tree.node(id);
        if n.link_to.is_none() && n.entry.inode.is_reg() {
            if let Some(p) = &n.entry.payload {
                into.insert(p.clone());
            }
        }
    });
}

/// The reference's `print_escaped`: `\\ \n \r \t`, other bytes outside the printable ASCII
/// range (space printable only when `space`) as `\xHH`.
fn escape(out: &mut Vec<u8>, s: &[u8], space: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b' ' if space => out.push(c),
            0x21..=0x7e => out.push(c),
            _ => out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dump: &str) -> Tree {
        let opts = crate::input::dump::DumpOptions { strict: true, limits: crate::tree::Limits::default() };
        crate::input::dump::parse(dump.as_bytes(), &opts).unwrap()
    }

    fn image_tree(dump: &str) -> (Tree, u32) {
        let t = tree(dump);
        let mut img = Vec::new();
        let opts = WriteOptions { min_version: 0, max_version: 1 };
        crate::erofs::writer::write_image(&t, &opts, &mut img).unwrap();
        let (t, info) =
            crate::erofs::reader::read_image_with(&img, &crate::erofs::reader::ReadLimits::default()).unwrap();
        (t, info.composefs_version)
    }

    fn dump_of(t: &Tree) -> String {
        let mut out = Vec::new();
        crate::input::dump::write_dump(t, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    const LINKED: &str = "/ 0 40755 2 0 0 0 0.0 - - -\n\
                          /a 0 40755 2 0 0 0 0.0 - - -\n\
                          /a/b 0 40755 2 0 0 0 0.0 - - -\n\
                          /a/b/x 5000 @100644 2 0 0 0 0.0 /c - -\n\
                          /c 5000 100644 2 0 0 0 0.0 ab/cdefgh - - user.k=v\n";

    #[test]
    fn hard_links_are_held_by_the_first_depth_first_name() {
        let (t, v) = image_tree(LINKED);
        let r = reference_tree(t, v, &[]).unwrap();
        let d = dump_of(&r);
        assert!(d.contains("/a/b/x 5000 100644 2 0 0 0 0.0 ab/cdefgh - - user.k=v\n"), "{d}");
        assert!(d.contains("/c 5000 @100644 2 0 0 0 0.0 /a/b/x - - user.k=v\n"), "{d}");
        let mut ls = Vec::new();
        write_ls(&r, &mut ls).unwrap();
        assert_eq!(String::from_utf8(ls).unwrap(), "/a/\t\n/a/b/\t\n/a/b/x\t@ ab/cdefgh\n/c\n");
        // Filtered to /c, the only name left holds the inode.
        let (t, v) = image_tree(LINKED);
        let r = reference_tree(t, v, &[b"c".to_vec()]).unwrap();
        assert_eq!(dump_of(&r), "/ 4096 40755 3 0 0 0 0.0 - - -\n/c 5000 100644 2 0 0 0 0.0 ab/cdefgh - - user.k=v\n");
    }

    #[test]
    fn version_1_markers_and_escaped_xattrs_show_as_the_reference_shows_them() {
        let (t, v) = image_tree(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /d 0 40755 2 0 0 0 0.0 - - - user.overlay.whiteouts= trusted.overlay.redirect=/x\n\
             /d/wh 0 20644 1 0 0 0 0.0 - - -\n",
        );
        assert_eq!(v, 1);
        let r = reference_tree(t, v, &[]).unwrap();
        let d = dump_of(&r);
        assert!(d.contains("/d 41 40755 2 0 0 0 0.0 - - - trusted.overlay.opaque=x trusted.overlay.redirect=/x user.overlay.opaque=x\n"), "{d}");
        assert!(d.contains("/d/wh 0 20644 1 0 0 0 0.0 - - -\n"), "{d}");
    }

    #[test]
    fn shared_xattrs_come_after_the_inline_ones() {
        let (t, v) = image_tree(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /a 0 100644 1 0 0 0 0.0 - - - user.a=1 user.z=shared\n\
             /b 0 100644 1 0 0 0 0.0 - - - user.z=shared\n",
        );
        let d = dump_of(&reference_tree(t, v, &[]).unwrap());
        assert!(d.contains("/a 0 100644 1 0 0 0 0.0 - - - user.a=1 user.z=shared\n"), "{d}");
        let (t, v) = image_tree(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /a 0 100644 1 0 0 0 0.0 - - - user.a=shared user.z=1\n\
             /b 0 100644 1 0 0 0 0.0 - - - user.a=shared\n",
        );
        let d = dump_of(&reference_tree(t, v, &[]).unwrap());
        assert!(d.contains("/a 0 100644 1 0 0 0 0.0 - - - user.z=1 user.a=shared\n"), "{d}");
    }

    #[test]
    fn ls_escapes_like_the_reference() {
        let mut v = Vec::new();
        escape(&mut v, b"a b\t=\x01", true);
        assert_eq!(v, b"a b\\t=\\x01");
        v.clear();
        escape(&mut v, b"a b", false);
        assert_eq!(v, b"a\\x20b");
    }
}
