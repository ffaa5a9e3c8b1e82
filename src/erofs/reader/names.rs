//! Names: which name of each inode is its primary (the others become hard links), what the
//! whiteout markers say about ambiguous primaries, and the tree built from the walk.
//!
//! EROFS does not record which name of an inode is the "original". The writer places an inode
//! where its first non-link name sits in its breadth-first walk, so the primary is the name whose
//! walk position matches the inode's place in nid order; whiteout markers settle the cases where
//! two names fit.

use std::collections::HashMap;
use std::sync::Arc;

use super::walk::Walk;
use super::xattr::is_whiteout_marker;
use super::{child_path, dir_path, entry_bytes, show_path, tree_err, ReadError, Reader};
use crate::sys::tables::{Region, Slab};
use crate::tree::{NodeId, Tree, ROOT};

/// Inode → (directory index in the walk, child index in that directory): a dense table by the
/// inode's place in the [`super::inode::InodeTable`] (the walk's children name their inodes by place).
pub(super) struct Primaries(Slab<(u32, u32)>);

/// No primary (yet). Places fit in u32: the walk refuses more than u32::MAX - 1 names.
const NO_PRIMARY: (u32, u32) = (u32::MAX, u32::MAX);

impl Primaries {
    fn new(inodes: usize, tables: Option<&Arc<Region>>) -> Primaries {
        // Filled whole now (one slot per decoded inode), in the tables' region if it has room
        // (crate::sys::tables): its pages made present in one call rather than faulted in one
        // by one.
        let mut v = Slab::with_capacity_in(tables, inodes);
        v.populate(0..inodes);
        v.resize(inodes, NO_PRIMARY);
        Primaries(v)
    }

    /// The primary of the inode at place `pos`.
    fn get(&self, pos: u32) -> Option<(usize, usize)> {
        let &(d, c) = self.0.get(pos as usize)?;
        ((d, c) != NO_PRIMARY).then_some((d as usize, c as usize))
    }

    fn set(&mut self, pos: u32, (d, c): (usize, usize)) {
        if let (Some(p), Ok(d), Ok(c)) = (self.0.get_mut(pos as usize), d.try_into(), c.try_into()) {
            *p = (d, c);
        }
    }

    /// (inode's place in the table, its primary), for every inode that has one.
    fn iter(&self) -> impl Iterator<Item = (usize, (usize, usize))> + '_ {
        self.0.iter().enumerate().filter(|(_, &p)| p != NO_PRIMARY).map(|(i, &(d, c))| (i, (d as usize, c as usize)))
    }
}

impl Reader<'_> {
    /// The name whose breadth-first position matches each inode's place in nid order.
    pub(super) fn primary_names(&self, walk: &Walk<'_>) -> Primaries {
        let stubs = &walk.stubs;
        // The inodes (their places in the table) in nid order, from the one after the root
        // (none left if the root is not among them).
        let mut order = self.inodes.places_in_nid_order().peekable();
        let mut primary = Primaries::new(self.inodes.len(), self.tables.as_ref());
        // (Every inode asked for here has a place, decoded or, on threads, still deferred: this
        // reads places only. u32::MAX, no place, is never found.)
        let place = |nid: u64| self.inodes.pos(nid).map_or(u32::MAX, |p| p as u32);
        let root = place(self.root_nid);
        order.by_ref().any(|p| p == root);
        let mut stub_iter = stubs.iter().map(|&(before, snid)| (before, place(snid))).peekable();
        // Primaries found in nid order (each inode's at most once).
        let mut found = 0usize;
        for di in 0..walk.dirs.len() {
            for (ci, cpos) in walk.children_of(di).iter().map(|c| c.pos()).enumerate() {
                // Whiteout stubs (only in the root) were left out of `children` but hold
                // their places in the walk: they are always where the walk puts them.
                while let Some(&(before, spos)) = stub_iter.peek() {
                    if di != 0 || before > ci {
                        break;
                    }
                    order.next_if_eq(&spos);
                    stub_iter.next();
                }
                if primary.get(cpos).is_some() {
                    continue;
                }
                if order.next_if_eq(&cpos).is_some() {
                    primary.set(cpos, (di, ci));
                    found += 1;
                }
            }
            if di == 0 {
                for (_, spos) in stub_iter.by_ref() {
                    order.next_if_eq(&spos);
                }
            }
        }
        // Images not laid out by the composefs writer: first name in walk order. (Nothing to do
        // when every inode but the root and the stubs, the inodes only those name, has one.)
        if found == self.inodes.len().saturating_sub(1 + stubs.len()) {
            return primary;
        }
        for di in 0..walk.dirs.len() {
            for (ci, cpos) in walk.children_of(di).iter().map(|c| c.pos()).enumerate() {
                if primary.get(cpos).is_none() {
                    primary.set(cpos, (di, ci));
                }
            }
        }
        primary
    }

    /// The writer puts the whiteout markers on the directory holding a whiteout's primary name,
    /// so they tell where an ambiguous primary was; a directory holding one must carry them, and
    /// then they are removed (the tree does not show them).
    pub(super) fn settle_whiteouts(&mut self, walk: &Walk<'_>, primary: &mut Primaries) -> Result<(), ReadError> {
        let v1 = self.version >= 1;
        let dirs = &walk.dirs;
        let marked: Vec<bool> = dirs.iter().map(|d| self.inodes.get(&d.nid).is_some_and(|i| i.marked)).collect();
        self.place_whiteouts(walk, &marked, primary);
        let mut holds_whiteout = vec![false; dirs.len()];
        for (pos, (di, _)) in primary.iter() {
            if self.inodes.at(pos).is_some_and(|i| i.user_whiteout) {
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
            if let Some(i) = self.inodes.get_mut(&d.nid) {
                i.bytes = i.bytes.saturating_sub(u32::from(i.marker_bytes));
                i.marker_bytes = 0;
            }
            if let Some(e) = self.inodes.entry_mut(&d.nid) {
                e.xattrs.retain(|x| !is_whiteout_marker(&x.key, &x.value, v1));
            }
        }
        Ok(())
    }

    /// A hard-linked whiteout whose primary name could sit at the end of one directory's
    /// part of the walk or at the start of a later one's gives the same layout either way;
    /// only the markers tell which. Move such primaries to the marked directory when the
    /// walk order allows it. (Work is capped; past the cap, the choice stays.)
    fn place_whiteouts(&self, walk: &Walk<'_>, marked: &[bool], primary: &mut Primaries) {
        let dirs = &walk.dirs;
        let mut wh = vec![0u32; dirs.len()];
        let mut prims = vec![0u32; dirs.len()];
        // (nid, place in the table) of each candidate.
        let mut cands: Vec<(u64, u32)> = Vec::new();
        for (pos, (di, _)) in primary.iter() {
            let Some(p) = prims.get_mut(di) else { continue };
            *p += 1;
            if let Some(ino) = self.inodes.at(pos).filter(|i| i.user_whiteout) {
                wh[di] += 1;
                if ino.names > 1 {
                    cands.push((u64::MAX, pos as u32));
                }
            }
        }
        if cands.is_empty() {
            return;
        }
        let nids = self.inodes.nids_by_pos();
        for c in &mut cands {
            c.0 = nids.get(c.1 as usize).copied().unwrap_or(u64::MAX);
        }
        // In nid order.
        cands.sort_unstable();
        let mut names: HashMap<u32, Vec<(usize, usize)>> = cands.iter().map(|&(_, p)| (p, Vec::new())).collect();
        let mut total = 0usize;
        for di in 0..dirs.len() {
            let children = walk.children_of(di);
            total += children.len();
            for (ci, c) in children.iter().enumerate() {
                if let Some(v) = names.get_mut(&c.pos()) {
                    v.push((di, ci));
                }
            }
        }
        let mut budget = total.saturating_mul(4).saturating_add(1024);
        for (_, t) in cands {
            let Some((di, ci)) = primary.get(t) else {
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
            let is_primary_at = |p: &Primaries, d: usize, k: usize, n: u32| p.get(n) == Some((d, k));
            let mut ok = true;
            for (k, n) in walk.children_of(di).iter().map(|c| c.pos()).enumerate().skip(ci + 1) {
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
                for (k, n) in walk.children_of(ei).iter().map(|c| c.pos()).enumerate().take(cj) {
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
                primary.set(t, (ei, cj));
                prims[di] -= 1;
                prims[ei] += 1;
                wh[di] -= 1;
                wh[ei] += 1;
            }
        }
    }

    /// The tree: the root, then every primary name in walk order, then the hard links.
    pub(super) fn build_tree(&mut self, walk: &Walk<'_>, primary: &Primaries) -> Result<Tree, ReadError> {
        let dirs = &walk.dirs;
        let root_nid = self.root_nid;
        let mut t = Tree::new(self.limits.tree);
        let root_entry = self.inodes.take_entry(&root_nid).unwrap_or_default();
        self.budget(entry_bytes(&root_entry))?;
        t.set_root(root_entry).map_err(|e| tree_err(root_nid, e))?;
        if let Some(r) = self.inodes.get(&root_nid) {
            t.set_nlink(ROOT, r.nlink);
        }
        // (The walk's children name their inodes by place in the table; errors name nids.)
        let nids = self.inodes.nids_by_pos();
        let nid_at = |pos: u32| nids.get(pos as usize).copied().unwrap_or(u64::MAX);
        let dir_index: HashMap<u64, usize> = dirs.iter().enumerate().map(|(i, d)| (d.nid, i)).collect();
        let mut tree_id: Vec<NodeId> = vec![ROOT; dirs.len()];
        // Primaries that other names link to: place -> (tree node, bytes a copy costs).
        let mut linked: HashMap<u32, (NodeId, u64)> = HashMap::new();
        let mut links: Vec<(usize, usize)> = Vec::new();
        for di in 0..dirs.len() {
            let parent = tree_id[di];
            for (ci, c) in walk.children_of(di).iter().enumerate() {
                let (name, cpos) = (walk.name(c), c.pos());
                if primary.get(cpos) != Some((di, ci)) {
                    links.push((di, ci));
                    continue;
                }
                let Some(ino) = self.inodes.at(cpos as usize) else {
                    continue;
                };
                let (names, nlink, is_dir) = (ino.names, ino.nlink, ino.is_dir());
                let e = self.inodes.take_entry_at(cpos as usize).unwrap_or_default();
                let cost = entry_bytes(&e) + name.len() as u64;
                self.budget(cost)?;
                let cnid = nid_at(cpos);
                let id = t.insert_child(parent, name, e).map_err(|e| tree_err(cnid, e))?;
                if is_dir {
                    if let Some(&i) = dir_index.get(&cnid) {
                        tree_id[i] = id;
                    }
                }
                // As stored (the writer recomputes it for directories).
                t.set_nlink(id, nlink);
                if names > 1 {
                    linked.insert(cpos, (id, cost));
                }
            }
        }
        for (di, ci) in links {
            let Some(&parent) = tree_id.get(di) else {
                continue;
            };
            let Some(c) = walk.children_of(di).get(ci) else {
                continue;
            };
            let (name, cpos) = (walk.name(c), c.pos());
            let Some(&(target, cost)) = linked.get(&cpos) else {
                continue;
            };
            self.budget(cost)?;
            t.insert_hardlink_child(parent, name, target).map_err(|e| tree_err(nid_at(cpos), e))?;
        }
        t.finalize().map_err(|e| tree_err(root_nid, e))?;
        Ok(t)
    }

    /// What [`Self::build_tree`] would build, without building it: its entry count, charged to
    /// the same decoded-bytes budget (a name's entry bytes plus its primary's name, once per
    /// name), and the first name of a device node. Every check the tree's insertions make
    /// (names, duplicates, depth, entry count, links to directories) was made by the walk.
    pub(super) fn count_tree(
        &mut self,
        walk: &Walk<'_>,
        primary: &Primaries,
    ) -> Result<(u64, Option<String>), ReadError> {
        let dirs = &walk.dirs;
        let root_bytes = self.inodes.get(&self.root_nid).map_or(0, |i| u64::from(i.bytes));
        // The budget is charged the sum once (it only grows, so it is exceeded at the end if it
        // is anywhere on the way).
        let mut bytes = root_bytes;
        let (mut entries, mut first_device) = (1u64, None);
        for di in 0..dirs.len() {
            for (ci, c) in walk.children_of(di).iter().enumerate() {
                let cpos = c.pos();
                let Some(ino) = self.inodes.at(cpos as usize) else {
                    continue;
                };
                let (ino_bytes, device) = (u64::from(ino.bytes), ino.device);
                let Some((pd, pc)) = primary.get(cpos) else {
                    continue;
                };
                // (Most names are their inode's primary.)
                let primary_len =
                    if (pd, pc) == (di, ci) { c.len() } else { walk.children_of(pd).get(pc).unwrap_or(c).len() };
                bytes = bytes.saturating_add(ino_bytes + primary_len as u64);
                entries += 1;
                if device && first_device.is_none() {
                    first_device = Some(show_path(&child_path(dirs, di, walk.name(c))));
                }
            }
        }
        self.budget(bytes)?;
        Ok((entries, first_device))
    }
}
