//! Tree → inode records, in breadth-first order (children in bytewise name order): every node
//! validated, `.` and `..` and (in the root) the 256 whiteout stubs added, hard links resolved,
//! and each inode's final xattr list made (escaping, overlay metacopy/redirect, whiteout
//! markers, the root's opaque mark).

use super::xattrs::{
    XSet, K_ESC_OPAQUE, K_ESC_WHITEOUT, K_ESC_WHITEOUTS, K_METACOPY, K_OPAQUE, K_REDIRECT, K_SELINUX, K_USER_OPAQUE,
    K_USER_WHITEOUT, K_USER_WHITEOUTS, X,
};
use super::{
    chunking, name_of_stub, Builder, Cat, Dirent, Ino, WriteError, INLINE, NAME_DOT, NAME_DOTDOT, STUB, UNRESOLVED,
};
use crate::erofs::format::*;
use crate::tree::{self, NodeId, ROOT, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

/// What a directory entry names while its directory is read.
#[derive(Clone, Copy)]
enum Target {
    /// An inode already made (`.` and `..`).
    Ino(u32),
    /// A tree node: a new inode, or the target of a hard link.
    Tree(NodeId),
    /// Whiteout stub `k` of the root (`00`..`ff`).
    Stub(u32),
}

impl<'a> Builder<'a> {
    /// Make the inode record of a (non-link) tree node; validates it.
    fn make_ino(&mut self, id: NodeId, parent_ino: u32) -> Result<u32, WriteError> {
        let tree = self.tree;
        let n = tree.node(id);
        let e = &n.entry;
        let ino = &e.inode;
        let mut mode = ino.mode;
        if !tree::valid_file_type(mode) {
            return Err(self.node_err(id, format!("invalid file type in mode {mode:o}")));
        }
        let mut size = ino.size;
        let mut content = e.content.as_deref().filter(|c| !c.is_empty());
        let mut payload: &[u8] = e.payload.as_deref().unwrap_or(&[]);
        let (mut chunk_bits, mut chunk_count) = (0, 0);
        match mode & S_IFMT {
            S_IFREG => {
                if let Some(c) = content {
                    if c.len() as u64 != size {
                        return Err(
                            self.node_err(id, format!("inline content is {} bytes but size is {size}", c.len()))
                        );
                    }
                    if c.len() > INLINE_CONTENT_MAX {
                        return Err(self.node_err(
                            id,
                            format!("inline content of {} bytes (limit {INLINE_CONTENT_MAX})", c.len()),
                        ));
                    }
                } else if size > 0 {
                    let (bits, count) = chunking(size);
                    if count > MAX_CHUNKS {
                        return Err(self.node_err(id, format!("file size {size} too large")));
                    }
                    chunk_bits = bits;
                    chunk_count = count as u32;
                }
                if payload.len() >= tree::PATH_MAX {
                    return Err(self.node_err(id, "invalid payload (object path)"));
                }
                // The payload becomes the overlay redirect: whatever built the tree, it must
                // name an object below the data layers (the input parsers refuse it first).
                // (One scan: it finds a NUL too.)
                match tree::check_object_path(payload) {
                    Ok(()) => {}
                    Err("NUL byte in path") => return Err(self.node_err(id, "invalid payload (object path)")),
                    Err(r) => {
                        let reason = format!("payload {} is not an object path ({r})", tree::show(payload));
                        return Err(self.node_err(id, reason));
                    }
                }
            }
            S_IFLNK => {
                if payload.is_empty() || payload.len() >= tree::PATH_MAX || payload.contains(&0) {
                    return Err(self.node_err(id, "symlink target empty, too long or containing NUL"));
                }
                size = payload.len() as u64;
                content = None;
            }
            S_IFCHR if ino.rdev == 0 => {
                // Overlay whiteout: stored as an escaped whiteout regular file.
                mode = S_IFREG | (mode & !S_IFMT);
                size = 0;
                content = None;
                payload = &[];
            }
            S_IFDIR => {
                content = None;
                size = 0;
            }
            _ => {
                content = None;
                size = 0;
            }
        }
        let nlink = if ino.is_dir() { 0 } else { tree.nlink_with(id, &self.link_counts) };
        let idx = u32::try_from(self.inos.len()).map_err(|_| WriteError::TooLarge("too many inodes"))?;
        self.ino_of_tree[id as usize] = idx;
        self.inos.push(Ino {
            node: id,
            parent_ino,
            mode,
            uid: ino.uid,
            gid: ino.gid,
            rdev: if matches!(ino.mode & S_IFMT, S_IFCHR | S_IFBLK) { ino.rdev } else { 0 },
            nlink,
            size,
            mtime: ino.mtime,
            mtime_nsec: ino.mtime_nsec,
            payload,
            content,
            chunk_bits: chunk_bits as u8,
            chunk_count,
            ..Ino::default()
        });
        Ok(idx)
    }

    pub(super) fn build(&mut self) -> Result<(), WriteError> {
        let tree = self.tree;
        if !tree.node(ROOT).entry.inode.is_dir() {
            return Err(self.node_err(ROOT, "root is not a directory"));
        }
        self.make_ino(ROOT, 0)?;
        // A directory's entries while they are sorted: (name, name reference, target, is a new
        // inode). Targets: a tree node, a stub number, or an inode index (`.`, `..`).
        let mut scratch: Vec<(&'a [u8], u32, Target, bool)> = Vec::new();
        let mut xs = XSet::new();
        let mut i = 0usize;
        while i < self.inos.len() {
            let cur = i as u32;
            let node = self.inos[i].node;
            let mut whiteout_child = false;
            if self.inos[i].ftype() == S_IFDIR {
                // Collect `.`, `..`, the children and (root only) missing whiteout stubs.
                scratch.clear();
                let parent_ino = self.inos[i].parent_ino;
                scratch.push((b".", NAME_DOT, Target::Ino(cur), false));
                scratch.push((b"..", NAME_DOTDOT, Target::Ino(parent_ino), false));
                let n = tree.node(node);
                for &c in &n.children {
                    let cn = tree.node(c);
                    scratch.push((&cn.name, c, Target::Tree(c), cn.link_to.is_none()));
                    if cn.link_to.is_none() && cn.entry.inode.mode & S_IFMT == S_IFCHR && cn.entry.inode.rdev == 0 {
                        whiteout_child = true;
                    }
                }
                if node == ROOT {
                    for (k, name) in STUB_NAMES.iter().enumerate() {
                        if tree.child(ROOT, name).is_none() {
                            scratch.push((name, name_of_stub(k as u32), Target::Stub(k as u32), true));
                        }
                    }
                }
                scratch.sort_unstable_by(|x, y| x.0.cmp(y.0));
                if scratch.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(self.node_err(node, "duplicate names in directory"));
                }
                let start = u32::try_from(self.dirents.len()).map_err(|_| WriteError::TooLarge("too many entries"))?;
                for &(_, name, target, is_new_inode) in scratch.iter() {
                    let target = match target {
                        Target::Ino(idx) => idx,
                        Target::Stub(which) => self.make_stub(which, cur)?,
                        Target::Tree(c) if is_new_inode => self.make_ino(c, cur)?,
                        Target::Tree(c) => {
                            let t = tree.resolve(c);
                            if t & UNRESOLVED != 0 {
                                return Err(WriteError::TooLarge("too many entries"));
                            }
                            let tn = tree.nodes.get(t as usize);
                            if tn.is_none_or(|tn| tn.link_to.is_some() || tn.entry.inode.is_dir()) {
                                return Err(self.node_err(c, "hard link to a directory, to a link or to nothing"));
                            }
                            t | UNRESOLVED
                        }
                    };
                    self.dirents.push(Dirent { name, target });
                }
                self.inos[i].dirent_start = start;
                self.inos[i].dirent_len = self.dirents.len() as u32 - start;
            }
            self.build_xattrs(i, whiteout_child, &mut xs)?;
            i += 1;
        }
        // Resolve hard-link dirents now that every inode has its index.
        for d in &mut self.dirents {
            if d.target & UNRESOLVED != 0 {
                let t = d.target & !UNRESOLVED;
                let idx = self.ino_of_tree.get(t as usize).copied().unwrap_or(u32::MAX);
                if idx == u32::MAX {
                    return Err(WriteError::Node {
                        path: tree::show(&tree.path_of(t)),
                        reason: "hard link target is not part of the tree".into(),
                    });
                }
                d.target = idx;
            }
        }
        Ok(())
    }

    fn make_stub(&mut self, which: u32, root_ino: u32) -> Result<u32, WriteError> {
        let root = &self.inos[root_ino as usize];
        let idx = u32::try_from(self.inos.len()).map_err(|_| WriteError::TooLarge("too many inodes"))?;
        let stub = Ino {
            node: STUB,
            parent_ino: which, // reused: which stub name
            mode: S_IFCHR | 0o644,
            uid: root.uid,
            gid: root.gid,
            rdev: 0,
            nlink: 1,
            size: 0,
            mtime: root.mtime,
            mtime_nsec: root.mtime_nsec,
            payload: &[],
            content: None,
            ..Ino::default()
        };
        self.inos.push(stub);
        Ok(idx)
    }

    /// Compute the final xattr list of inode `i` (escaping and overlay additions).
    fn build_xattrs(&mut self, i: usize, whiteout_child: bool, xs: &mut XSet<'a>) -> Result<(), WriteError> {
        let tree = self.tree;
        xs.clear();
        let node = self.inos[i].node;
        let err = |reason: String| {
            let path = if node == STUB { Vec::new() } else { tree.path_of(node) };
            WriteError::Node { path: tree::show(&path), reason }
        };
        if node == STUB {
            // Whiteout stubs inherit the root's SELinux label.
            let root = &tree.node(ROOT).entry;
            if let Some(x) = root.xattrs.iter().rev().find(|x| x.key == SELINUX_XATTR) {
                xs.set(K_SELINUX, SELINUX_XATTR.len(), Cat::one(&x.value)).map_err(err)?;
            }
        } else {
            let e = &tree.node(node).entry;
            // Input xattrs, later duplicates replacing earlier ones; the overlay namespace is
            // escaped so that overlayfs shows these to users.
            for x in &e.xattrs {
                if x.key.is_empty() || x.key.len() > tree::XATTR_NAME_MAX || x.key.contains(&0) {
                    return Err(err(format!("invalid xattr name {:?}", tree::show(&x.key))));
                }
                if x.value.len() > u16::MAX as usize {
                    return Err(err(format!("xattr {} value too large", tree::show(&x.key))));
                }
                let name = match x.key.strip_prefix(OVL_PREFIX) {
                    Some(rest) => Cat::two(OVL_ESCAPED_PREFIX, rest),
                    None => Cat::one(&x.key),
                };
                xs.load(self.keys.intern(name), Cat::one(&x.value));
            }
            // The budget counts the full name's length.
            let keys = &self.keys;
            let set = |xs: &mut XSet<'a>, key, value| xs.set(key, keys.get(key).name.len(), value);
            let orig = &e.inode;
            let ino = &self.inos[i];
            if orig.mode & S_IFMT == S_IFREG && ino.size > 0 && ino.content.is_none() {
                let value = match &e.fsverity_digest {
                    Some(d) => Cat::two(&METACOPY_HEADER, d),
                    None => Cat::one(&[]),
                };
                set(xs, K_METACOPY, value).map_err(err)?;
                if !ino.payload.is_empty() {
                    set(xs, K_REDIRECT, Cat::two(b"/", ino.payload)).map_err(err)?;
                }
            }
            if orig.mode & S_IFMT == S_IFCHR && orig.rdev == 0 {
                set(xs, K_ESC_WHITEOUT, Cat::one(&[])).map_err(err)?;
                set(xs, K_USER_WHITEOUT, Cat::one(&[])).map_err(err)?;
            }
            if whiteout_child {
                set(xs, K_ESC_WHITEOUTS, Cat::one(&[])).map_err(err)?;
                set(xs, K_USER_WHITEOUTS, Cat::one(&[])).map_err(err)?;
                if self.version >= 1 {
                    set(xs, K_ESC_OPAQUE, Cat::one(b"x")).map_err(err)?;
                    set(xs, K_USER_OPAQUE, Cat::one(b"x")).map_err(err)?;
                }
            }
            if node == ROOT {
                set(xs, K_OPAQUE, Cat::one(b"y")).map_err(err)?;
            }
        }
        let keys = &self.keys;
        if xs.v.len() > 1 {
            xs.v.sort_unstable_by(|a, b| keys.get(a.key).name.cmp(&keys.get(b.key).name));
        }
        self.has_acl |= xs.v.iter().any(|x| keys.get(x.key).acl);
        let start = u32::try_from(self.xattrs.len()).map_err(|_| WriteError::TooLarge("too many xattrs"))?;
        for x in &xs.v {
            let pair = self.pairs.add(x.key, x.value);
            self.xattrs.push(X { key: x.key, pair, shared: INLINE });
        }
        self.inos[i].xa_start = start;
        self.inos[i].xa_len = xs.v.len() as u32;
        Ok(())
    }
}
