//! Names: which name of each inode is its primary (the others become hard links), what the
//! whiteout markers say about ambiguous primaries, and the tree built from the walk.
//!
//! EROFS does not record which name of an inode is the "original". The writer places an inode
//! where its first non-link name sits in its breadth-first walk, so the primary is the name whose
//! walk position matches the inode's place in nid order; whiteout markers settle the cases where
//! two names fit.

use std::collections::HashMap;

use super::walk::Walk;
use super::{dir_path, entry_bytes, show_path, tree_err, DirRec, ReadError, Reader};
use crate::erofs::format::*;
use crate::tree::{Entry, NodeId, Tree, ROOT};

/// nid → (directory index in the walk, child index in that directory).
type Primaries = HashMap<u64, (usize, usize)>;

impl Reader<'_> {
    /// The name whose breadth-first position matches each inode's place in nid order.
    pub(super) fn primary_names(&self, walk: &Walk) -> Primaries {
        let (dirs, stubs) = (&walk.dirs, &walk.stubs);
        let order: Vec<u64> = self.inodes.nids_in_order();
        let mut primary: Primaries = HashMap::with_capacity(order.len());
        let mut next = order.iter().position(|&n| n == self.root_nid).map_or(order.len(), |p| p + 1);
        let mut stub_iter = stubs.iter().peekable();
        for (di, d) in dirs.iter().enumerate() {
            for (ci, (_, cnid)) in d.children.iter().enumerate() {
                // Whiteout stubs (only in the root) were left out of `children` but hold
                // their places in the walk: they are always where the walk puts them.
                while let Some(&&(before, snid)) = stub_iter.peek() {
                    if di != 0 || before > ci {
                        break;
                    }
                    if order.get(next) == Some(&snid) {
                        next += 1;
                    }
                    stub_iter.next();
                }
                if primary.contains_key(cnid) {
                    continue;
                }
                if order.get(next) == Some(cnid) {
                    primary.insert(*cnid, (di, ci));
                    next += 1;
                }
            }
            if di == 0 {
                for &(_, snid) in stub_iter.by_ref() {
                    if order.get(next) == Some(&snid) {
                        next += 1;
                    }
                }
            }
        }
        // Images not laid out by the composefs writer: first name in walk order.
        for (di, d) in dirs.iter().enumerate() {
            for (ci, (_, cnid)) in d.children.iter().enumerate() {
                primary.entry(*cnid).or_insert((di, ci));
            }
        }
        primary
    }

    /// The writer puts the whiteout markers on the directory holding a whiteout's primary name,
    /// so they tell where an ambiguous primary was; a directory holding one must carry them, and
    /// then they are removed (the tree does not show them).
    pub(super) fn settle_whiteouts(&mut self, dirs: &[DirRec], primary: &mut Primaries) -> Result<(), ReadError> {
        let v1 = self.version >= 1;
        let marked: Vec<bool> = dirs
            .iter()
            .map(|d| {
                self.inodes.get(&d.nid).and_then(|i| i.entry.as_ref()).is_some_and(|e| has_whiteout_markers(e, v1))
            })
            .collect();
        self.place_whiteouts(dirs, &marked, primary);
        let mut holds_whiteout = vec![false; dirs.len()];
        for (nid, &(di, _)) in primary.iter() {
            if self.inodes.get(nid).is_some_and(|i| i.user_whiteout) {
                if let Some(h) = holds_whiteout.get_mut(di) {
                    *h = true;
                }
            }
        }
        for (di, d) in dirs.iter().enumerate() {
            if !holds_whiteout[di] {
                continue;
            }
            if !marked[di] {
                return Err(ReadError::Dir {
                    nid: d.nid,
                    path: show_path(&dir_path(dirs, di)),
                    reason: "holds a whiteout but lacks the whiteout marker xattrs".into(),
                });
            }
            if let Some(e) = self.inodes.get_mut(&d.nid).and_then(|i| i.entry.as_mut()) {
                e.xattrs.retain(|x| {
                    let (k, v) = (x.key.as_slice(), x.value.as_slice());
                    let marker = ((k == OVL_WHITEOUTS || k == USER_OVL_WHITEOUTS) && v.is_empty())
                        || (v1 && (k == OVL_OPAQUE || k == USER_OVL_OPAQUE) && v == b"x");
                    !marker
                });
            }
        }
        Ok(())
    }

    /// A hard-linked whiteout whose primary name could sit at the end of one directory's
    /// part of the walk or at the start of a later one's gives the same layout either way;
    /// only the markers tell which. Move such primaries to the marked directory when the
    /// walk order allows it. (Work is capped; past the cap, the choice stays.)
    fn place_whiteouts(&self, dirs: &[DirRec], marked: &[bool], primary: &mut HashMap<u64, (usize, usize)>) {
        let mut wh = vec![0u32; dirs.len()];
        let mut prims = vec![0u32; dirs.len()];
        let mut cands: Vec<u64> = Vec::new();
        for (nid, &(di, _)) in primary.iter() {
            let Some(p) = prims.get_mut(di) else { continue };
            *p += 1;
            if let Some(ino) = self.inodes.get(nid).filter(|i| i.user_whiteout) {
                wh[di] += 1;
                if ino.names > 1 {
                    cands.push(*nid);
                }
            }
        }
        if cands.is_empty() {
            return;
        }
        cands.sort_unstable();
        let mut names: HashMap<u64, Vec<(usize, usize)>> = cands.iter().map(|&n| (n, Vec::new())).collect();
        let mut total = 0usize;
        for (di, d) in dirs.iter().enumerate() {
            total += d.children.len();
            for (ci, (_, cnid)) in d.children.iter().enumerate() {
                if let Some(v) = names.get_mut(cnid) {
                    v.push((di, ci));
                }
            }
        }
        let mut budget = total.saturating_mul(4).saturating_add(1024);
        for t in cands {
            let Some(&(di, ci)) = primary.get(&t) else {
                continue;
            };
            if marked[di] && wh[di] == 1 {
                continue;
            }
            let occ = names.get(&t).map(Vec::as_slice).unwrap_or(&[]);
            let later = |want_empty: bool| {
                occ.iter().copied().find(|&(ei, _)| ei > di && marked[ei] && (!want_empty || wh[ei] == 0))
            };
            let target = match later(true) {
                Some(x) => Some(x),
                None if !marked[di] => later(false),
                None => None,
            };
            let Some((ei, cj)) = target else { continue };
            // Valid only if the name is the last primary of its directory, every directory
            // walked in between has none, and the new name comes before any other primary
            // of the target directory: then the walk order is unchanged.
            let is_primary_at =
                |p: &HashMap<u64, (usize, usize)>, d: usize, k: usize, n: &u64| p.get(n) == Some(&(d, k));
            let mut ok = true;
            for (k, (_, n)) in dirs[di].children.iter().enumerate().skip(ci + 1) {
                budget = budget.saturating_sub(1);
                if is_primary_at(primary, di, k, n) {
                    ok = false;
                    break;
                }
            }
            if ok {
                for p in &prims[di + 1..ei] {
                    budget = budget.saturating_sub(1);
                    if *p != 0 {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                for (k, (_, n)) in dirs[ei].children.iter().enumerate().take(cj) {
                    budget = budget.saturating_sub(1);
                    if is_primary_at(primary, ei, k, n) {
                        ok = false;
                        break;
                    }
                }
            }
            if budget == 0 {
                return;
            }
            if ok {
                primary.insert(t, (ei, cj));
                prims[di] -= 1;
                prims[ei] += 1;
                wh[di] -= 1;
                wh[ei] += 1;
            }
        }
    }

    /// The tree: the root, then every primary name in walk order, then the hard links.
    pub(super) fn build_tree(&mut self, dirs: &[DirRec], primary: &Primaries) -> Result<Tree, ReadError> {
        let root_nid = self.root_nid;
        let mut t = Tree::new(self.limits.tree);
        let root_entry = self.inodes.get_mut(&root_nid).and_then(|i| i.entry.take()).unwrap_or_default();
        self.budget(entry_bytes(&root_entry))?;
        t.set_root(root_entry).map_err(|e| tree_err(root_nid, e))?;
        if let Some(r) = self.inodes.get(&root_nid) {
            t.set_nlink(ROOT, r.nlink);
        }
        let dir_index: HashMap<u64, usize> = dirs.iter().enumerate().map(|(i, d)| (d.nid, i)).collect();
        let mut tree_id: Vec<NodeId> = vec![ROOT; dirs.len()];
        // Primaries that other names link to: nid -> (tree node, bytes a copy costs).
        let mut linked: HashMap<u64, (NodeId, u64)> = HashMap::new();
        let mut links: Vec<(usize, usize)> = Vec::new();
        for (di, d) in dirs.iter().enumerate() {
            let parent = tree_id[di];
            for (ci, (name, cnid)) in d.children.iter().enumerate() {
                if primary.get(cnid) != Some(&(di, ci)) {
                    links.push((di, ci));
                    continue;
                }
                let Some(ino) = self.inodes.get_mut(cnid) else {
                    continue;
                };
                let (names, nlink, is_dir) = (ino.names, ino.nlink, ino.dir.is_some());
                let e = ino.entry.take().unwrap_or_default();
                let cost = entry_bytes(&e) + name.len() as u64;
                self.budget(cost)?;
                let id = t.insert_child(parent, name, e).map_err(|e| tree_err(*cnid, e))?;
                if is_dir {
                    if let Some(&i) = dir_index.get(cnid) {
                        tree_id[i] = id;
                    }
                }
                // As stored (the writer recomputes it for directories).
                t.set_nlink(id, nlink);
                if names > 1 {
                    linked.insert(*cnid, (id, cost));
                }
            }
        }
        for (di, ci) in links {
            let (Some(d), Some(&parent)) = (dirs.get(di), tree_id.get(di)) else {
                continue;
            };
            let Some((name, cnid)) = d.children.get(ci) else {
                continue;
            };
            let Some(&(target, cost)) = linked.get(cnid) else {
                continue;
            };
            self.budget(cost)?;
            t.insert_hardlink_child(parent, name, target).map_err(|e| tree_err(*cnid, e))?;
        }
        t.finalize().map_err(|e| tree_err(root_nid, e))?;
        Ok(t)
    }
}

/// Does a directory carry the markers the writer puts on a directory holding a whiteout?
fn has_whiteout_markers(e: &Entry, v1: bool) -> bool {
    let has = |k: &[u8], v: &[u8]| e.xattrs.iter().any(|x| x.key == k && x.value == v);
    has(OVL_WHITEOUTS, b"")
        && has(USER_OVL_WHITEOUTS, b"")
        && (!v1 || (has(OVL_OPAQUE, b"x") && has(USER_OVL_OPAQUE, b"x")))
}
