//! Tree → inode records, in breadth-first order (children in bytewise name order): every node
//! validated, `.` and `..` and (in the root) the 256 whiteout stubs added, hard links resolved,
//! and each inode's final xattr list made (escaping, overlay metacopy/redirect, whiteout
//! markers, the root's opaque mark).

use std::collections::HashMap;

use super::{chunking, escaped, Builder, Cat, Dirent, Ino, Target, WriteError, XSet, STUB};
use crate::erofs::format::*;
use crate::tree::{self, NodeId, ROOT, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

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
                if payload.len() >= tree::PATH_MAX || payload.contains(&0) {
                    return Err(self.node_err(id, "invalid payload (object path)"));
                }
                // The payload becomes the overlay redirect: whatever built the tree, it must
                // name an object below the data layers (the input parsers refuse it first).
                if let Err(r) = tree::check_object_path(payload) {
                    let reason = format!("payload {} is not an object path ({r})", tree::show(payload));
                    return Err(self.node_err(id, reason));
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
            chunk_bits,
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
        let mut scratch: Vec<(Dirent<'a>, bool)> = Vec::new();
        let mut xs = XSet { v: Vec::new(), used: 0 };
        let mut key_index: HashMap<&'a [u8], usize> = HashMap::new();
        let mut i = 0usize;
        while i < self.inos.len() {
            let cur = i as u32;
            let node = self.inos[i].node;
            let mut whiteout_child = false;
            if self.inos[i].ftype() == S_IFDIR {
                // Collect `.`, `..`, the children and (root only) missing whiteout stubs.
                scratch.clear();
                let parent_ino = self.inos[i].parent_ino;
                scratch.push((Dirent { name: b".", target: Target::Ino(cur) }, false));
                scratch.push((Dirent { name: b"..", target: Target::Ino(parent_ino) }, false));
                let n = tree.node(node);
                for &c in &n.children {
                    let cn = tree.node(c);
                    scratch.push((Dirent { name: &cn.name, target: Target::Tree(c) }, cn.link_to.is_none()));
                    if cn.link_to.is_none() && cn.entry.inode.mode & S_IFMT == S_IFCHR && cn.entry.inode.rdev == 0 {
                        whiteout_child = true;
                    }
                }
                if node == ROOT {
                    // Stubs are marked with Ino(STUB - 1 - k) until they get an inode.
                    for (k, name) in STUB_NAMES.iter().enumerate() {
                        if tree.child(ROOT, name).is_none() {
                            scratch.push((Dirent { name, target: Target::Ino(STUB - 1 - k as u32) }, true));
                        }
                    }
                }
                scratch.sort_unstable_by(|x, y| x.0.name.cmp(y.0.name));
                if scratch.windows(2).any(|w| w[0].0.name == w[1].0.name) {
                    return Err(self.node_err(node, "duplicate names in directory"));
                }
                let start = self.dirents.len();
                for &(mut d, is_new_inode) in scratch.iter() {
                    if is_new_inode {
                        let idx = match d.target {
                            Target::Tree(c) => self.make_ino(c, cur)?,
                            Target::Ino(stub) => {
                                let which = STUB - 1 - stub;
                                self.make_stub(which, cur)?
                            }
                        };
                        d.target = Target::Ino(idx);
                    } else if let Target::Tree(c) = d.target {
                        let t = tree.resolve(c);
                        let tn = tree.nodes.get(t as usize);
                        if tn.is_none_or(|tn| tn.link_to.is_some() || tn.entry.inode.is_dir()) {
                            return Err(self.node_err(c, "hard link to a directory, to a link or to nothing"));
                        }
                        d.target = Target::Tree(t);
                    }
                    self.dirents.push(d);
                }
                self.inos[i].dirents = (start, self.dirents.len() - start);
            }
            self.build_xattrs(i, whiteout_child, &mut xs, &mut key_index)?;
            i += 1;
        }
        // Resolve hard-link dirents now that every inode has its index.
        for d in &mut self.dirents {
            if let Target::Tree(t) = d.target {
                let idx = self.ino_of_tree.get(t as usize).copied().unwrap_or(u32::MAX);
                if idx == u32::MAX {
                    return Err(WriteError::Node {
                        path: tree::show(&tree.path_of(t)),
                        reason: "hard link target is not part of the tree".into(),
                    });
                }
                d.target = Target::Ino(idx);
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
    fn build_xattrs(
        &mut self,
        i: usize,
        whiteout_child: bool,
        xs: &mut XSet<'a>,
        key_index: &mut HashMap<&'a [u8], usize>,
    ) -> Result<(), WriteError> {
        let tree = self.tree;
        xs.v.clear();
        xs.used = 0;
        let node = self.inos[i].node;
        let err = |reason: String| {
            let path = if node == STUB { Vec::new() } else { tree.path_of(node) };
            WriteError::Node { path: tree::show(&path), reason }
        };
        if node == STUB {
            // Whiteout stubs inherit the root's SELinux label.
            let root = &tree.node(ROOT).entry;
            if let Some(x) = root.xattrs.iter().rev().find(|x| x.key == SELINUX_XATTR) {
                xs.set_find(Cat::one(SELINUX_XATTR), Cat::one(&x.value)).map_err(err)?;
            }
        } else {
            let e = &tree.node(node).entry;
            // Input xattrs, later duplicates replacing earlier ones.
            let use_index = e.xattrs.len() > 16;
            key_index.clear();
            for x in &e.xattrs {
                if x.key.is_empty() || x.key.len() > tree::XATTR_NAME_MAX || x.key.contains(&0) {
                    return Err(err(format!("invalid xattr name {:?}", tree::show(&x.key))));
                }
                if x.value.len() > u16::MAX as usize {
                    return Err(err(format!("xattr {} value too large", tree::show(&x.key))));
                }
                let existing =
                    if use_index { key_index.get(x.key.as_slice()).copied() } else { xs.find(&Cat::one(&x.key)) };
                if use_index {
                    if let Some(j) = existing {
                        key_index.remove(x.key.as_slice());
                        if j + 1 < xs.v.len() {
                            let last_key = xs.v[xs.v.len() - 1].key.b;
                            key_index.insert(last_key, j);
                        }
                    }
                }
                xs.load(Cat::one(&x.key), Cat::one(&x.value), existing);
                if use_index {
                    key_index.insert(&x.key, xs.v.len() - 1);
                }
            }
            // Escape the overlay namespace so overlayfs shows these to users.
            for x in xs.v.iter_mut() {
                if let Some(rest) = x.key.b.strip_prefix(OVL_PREFIX) {
                    x.key = Cat::two(OVL_ESCAPED_PREFIX, rest);
                }
            }
            let orig = &e.inode;
            let ino = &self.inos[i];
            if orig.mode & S_IFMT == S_IFREG && ino.size > 0 && ino.content.is_none() {
                let value = match &e.fsverity_digest {
                    Some(d) => Cat::two(&METACOPY_HEADER, d),
                    None => Cat::one(&[]),
                };
                xs.set_find(Cat::one(OVL_METACOPY), value).map_err(err)?;
                if !ino.payload.is_empty() {
                    xs.set_find(Cat::one(OVL_REDIRECT), Cat::two(b"/", ino.payload)).map_err(err)?;
                }
            }
            if orig.mode & S_IFMT == S_IFCHR && orig.rdev == 0 {
                xs.set_find(escaped(OVL_WHITEOUT), Cat::one(&[])).map_err(err)?;
                xs.set_find(Cat::one(USER_OVL_WHITEOUT), Cat::one(&[])).map_err(err)?;
            }
            if whiteout_child {
                xs.set_find(escaped(OVL_WHITEOUTS), Cat::one(&[])).map_err(err)?;
                xs.set_find(Cat::one(USER_OVL_WHITEOUTS), Cat::one(&[])).map_err(err)?;
                if self.version >= 1 {
                    xs.set_find(escaped(OVL_OPAQUE), Cat::one(b"x")).map_err(err)?;
                    xs.set_find(Cat::one(USER_OVL_OPAQUE), Cat::one(b"x")).map_err(err)?;
                }
            }
            if node == ROOT {
                xs.set_find(Cat::one(OVL_OPAQUE), Cat::one(b"y")).map_err(err)?;
            }
        }
        xs.v.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        for x in &xs.v {
            if x.key.eq_bytes(b"system.posix_acl_access") || x.key.eq_bytes(b"system.posix_acl_default") {
                self.has_acl = true;
            }
        }
        let start = self.xattrs.len();
        self.xattrs.extend_from_slice(&xs.v);
        self.inos[i].xa = (start, xs.v.len());
        Ok(())
    }
}
