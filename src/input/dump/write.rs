//! The dumpfile printer: depth-first, children in bytewise name order, every byte that is not
//! graphic escaped; what it prints parses back to the same tree.

use std::io::Write;

use crate::tree::{NodeId, Tree, ROOT};

#[derive(Clone, Copy)]
pub(super) enum Esc {
    /// Paths and payloads: escape non-graphic bytes (space included).
    Standard,
    /// Optional fields: like Standard, and a lone `-` is escaped.
    LoneDash,
    /// Xattr names and values: like Standard, and `=` is escaped.
    Equal,
}

pub(super) fn escape_into(out: &mut Vec<u8>, s: &[u8], mode: Esc) {
    if matches!(mode, Esc::LoneDash) && s == b"-" {
        out.extend_from_slice(b"\\x2d");
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if matches!(mode, Esc::Equal) => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(c),
            _ => out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
    }
}

fn push_num(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{v}");
}

/// Print `tree` as a dumpfile: depth-first, children in bytewise name order, the root
/// first as `/`. Hard links print their target's metadata with `@` before the mode and
/// the target's absolute path as payload. The output parses back to the same tree.
pub fn write_dump(tree: &Tree, out: &mut dyn Write) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
    let links = tree.link_counts();
    let mut line = Vec::with_capacity(512);
    let mut path = Vec::with_capacity(256);
    let mut sorted_scratch: Vec<Vec<NodeId>> = Vec::new();
    // Stack of (directory, its sorted children, next index, path length before the name).
    struct Frame {
        kids: Vec<NodeId>,
        next: usize,
        path_len: usize,
    }
    print_node(tree, ROOT, b"/", &links, &mut line);
    w.write_all(&line)?;
    let mut stack = vec![Frame { kids: sorted_children(tree, ROOT, &mut sorted_scratch), next: 0, path_len: 0 }];
    while let Some(top) = stack.last_mut() {
        let Some(&child) = top.kids.get(top.next) else {
            let f = stack.pop();
            if let Some(f) = f {
                sorted_scratch.push(f.kids);
            }
            if let Some(parent) = stack.last() {
                path.truncate(parent.path_len);
            }
            continue;
        };
        top.next += 1;
        let base = top.path_len;
        path.truncate(base);
        path.push(b'/');
        path.extend_from_slice(&tree.node(child).name);
        print_node(tree, child, &path, &links, &mut line);
        w.write_all(&line)?;
        let n = tree.node(child);
        if n.link_to.is_none() && n.entry.inode.is_dir() && !n.children.is_empty() {
            let kids = sorted_children(tree, child, &mut sorted_scratch);
            stack.push(Frame { kids, next: 0, path_len: path.len() });
        }
    }
    w.flush()
}

fn sorted_children(tree: &Tree, id: NodeId, scratch: &mut Vec<Vec<NodeId>>) -> Vec<NodeId> {
    let mut v = scratch.pop().unwrap_or_default();
    v.clear();
    v.extend_from_slice(&tree.node(id).children);
    let name = |c: &NodeId| tree.node(*c).name.as_slice();
    if !v.windows(2).all(|w| name(&w[0]) < name(&w[1])) {
        v.sort_unstable_by(|a, b| name(a).cmp(name(b)));
    }
    v
}

fn print_node(tree: &Tree, id: NodeId, path: &[u8], links: &[u32], out: &mut Vec<u8>) {
    out.clear();
    let node = tree.node(id);
    let (target, link_path) = match node.link_to {
        Some(t) => (t, Some(tree.path_of(t))),
        None => (id, None),
    };
    let e = &tree.node(target).entry;
    let ino = &e.inode;
    escape_into(out, path, Esc::Standard);
    out.push(b' ');
    push_num(out, ino.size);
    out.push(b' ');
    if link_path.is_some() {
        out.push(b'@');
    }
    let _ = write!(out, "{:o}", ino.mode);
    out.push(b' ');
    push_num(out, tree.nlink_with(target, links));
    out.push(b' ');
    push_num(out, ino.uid);
    out.push(b' ');
    push_num(out, ino.gid);
    out.push(b' ');
    push_num(out, ino.rdev);
    out.push(b' ');
    let _ = write!(out, "{}.{}", ino.mtime, ino.mtime_nsec);
    out.push(b' ');
    match (&link_path, &e.payload) {
        (Some(lp), _) => {
            let mut abs = Vec::with_capacity(lp.len() + 1);
            abs.push(b'/');
            abs.extend_from_slice(lp);
            escape_into(out, &abs, Esc::LoneDash);
        }
        (None, Some(p)) => escape_into(out, p, Esc::LoneDash),
        (None, None) => out.push(b'-'),
    }
    out.push(b' ');
    match &e.content {
        Some(c) if !c.is_empty() => escape_into(out, c, Esc::LoneDash),
        _ => out.push(b'-'),
    }
    out.push(b' ');
    match &e.fsverity_digest {
        Some(d) => {
            for b in d {
                let _ = write!(out, "{b:02x}");
            }
        }
        None => out.push(b'-'),
    }
    for x in &e.xattrs {
        out.push(b' ');
        escape_into(out, &x.key, Esc::Equal);
        out.push(b'=');
        escape_into(out, &x.value, Esc::Equal);
    }
    out.push(b'\n');
}
