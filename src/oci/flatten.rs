//! Flattening: the trees of an image's layers, applied in order, into the one tree of the
//! image, with OCI whiteout semantics (image-spec layer.md):
//!
//! - Each layer tree carries its whiteouts LITERALLY (`.wh.NAME`, `.wh..wh..opq`, as the
//!   layer readers give them with `keep_whiteouts`): a real character device 0/0 in a layer is
//!   a device, not a whiteout.
//! - A layer's whiteouts apply to the layers below it only: first every `DIR/.wh.NAME` removes
//!   `DIR/NAME` (and everything below it) from the image built so far and every
//!   `DIR/.wh..wh..opq` empties `DIR` there; then the layer's own entries are added, so a file
//!   of the same layer at a whited-out name stays. Other `.wh..wh.*` names (AUFS metadata) are
//!   ignored; a whiteout naming `.` or `..` is refused.
//! - A directory of the layer over a directory of the image takes the layer's metadata (mode,
//!   owner, mtime, xattrs: the most derived layer wins) and keeps its children; a directory the
//!   layer only implies (a parent it does not list) keeps the image's metadata. Anything else
//!   at a path replaces what was there, whatever the two types are (a file replaced by a
//!   directory and back, without whiteouts, as `tar -x` and umoci do).
//! - Hard links: a link within a layer shares its target's inode. A link whose target is not in
//!   its own layer (the layer reader hands those back in [`LayerTree::external_links`]) links
//!   to the file of that name in the image built so far, as extracting the layers in order
//!   into one directory does; a missing or directory target is refused. Replacing one name of
//!   a hard-linked group in a later layer replaces that name only.
//!
//! The result is an ordinary [`Tree`] (sorted, limits enforced by the tree), written as one
//! composefs image; it holds no whiteouts and no opaque markers.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::tree::{show, Entry, Limits, NodeId, Tree, TreeError, ROOT};

const WH_PREFIX: &[u8] = b".wh.";
const WH_META_PREFIX: &[u8] = b".wh..wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// One layer's tree, as the layer reader returns it for flattening.
#[derive(Debug, Clone)]
pub struct LayerTree {
    /// The layer's entries, whiteouts literal.
    pub tree: Tree,
    /// Hard links `(path, target)` whose target is not in this layer (see the module doc).
    pub external_links: Vec<(Vec<u8>, Vec<u8>)>,
}

impl From<Tree> for LayerTree {
    fn from(tree: Tree) -> Self {
        LayerTree { tree, external_links: Vec::new() }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FlattenError {
    #[error("layer {layer}: {path}: {reason}")]
    Layer { layer: usize, path: String, reason: String },
    #[error("flattened image: {0}")]
    Tree(#[from] TreeError),
}

enum Child {
    Dir(Box<Dir>),
    /// Index into [`Merged::inodes`]; several names may share one (hard links).
    Leaf(usize),
}

struct Dir {
    entry: Entry,
    /// Listed by no layer (created as a parent); keeps the implicit metadata.
    implicit: bool,
    children: BTreeMap<Vec<u8>, Child>,
}

impl Dir {
    fn new(entry: Entry, implicit: bool) -> Dir {
        Dir { entry, implicit, children: BTreeMap::new() }
    }
}

/// The image built so far.
struct Merged {
    root: Dir,
    inodes: Vec<Entry>,
    implicit_dir: Entry,
}

impl Merged {
    /// The directory at `comps`, if every component is a directory.
    fn dir_mut(&mut self, comps: &[&[u8]]) -> Option<&mut Dir> {
        let mut cur = &mut self.root;
        for c in comps {
            cur = match cur.children.get_mut(*c) {
                Some(Child::Dir(d)) => d,
                _ => return None,
            };
        }
        Some(cur)
    }

    fn lookup_leaf(&self, comps: &[&[u8]]) -> Option<&Child> {
        let (last, parents) = comps.split_last()?;
        let mut cur = &self.root;
        for c in parents {
            cur = match cur.children.get(*c) {
                Some(Child::Dir(d)) => d,
                _ => return None,
            };
        }
        cur.children.get(*last)
    }
}

/// Flatten `layers` (lowest first) into one tree. `limits` bound the result.
pub fn flatten(layers: Vec<LayerTree>, limits: Limits) -> Result<Tree, FlattenError> {
    let implicit_dir = Entry { inode: Tree::new(limits).implicit_dir, ..Entry::default() };
    let mut m =
        Merged { root: Dir::new(implicit_dir.clone(), true), inodes: Vec::new(), implicit_dir: implicit_dir.clone() };
    for (i, layer) in layers.into_iter().enumerate() {
        apply_layer(&mut m, layer, i + 1)?;
    }
    build_tree(m, limits)
}

fn apply_layer(m: &mut Merged, mut layer: LayerTree, n: usize) -> Result<(), FlattenError> {
    let err = |path: &[u8], reason: &str| FlattenError::Layer { layer: n, path: show(path), reason: reason.into() };
    // 1. Whiteouts and opaque markers act on the layers below.
    let mut deletes = Vec::new();
    let mut opaques = Vec::new();
    for (id, node) in layer.tree.nodes.iter().enumerate() {
        let name = node.name.as_slice();
        if id as NodeId == ROOT || !name.starts_with(WH_PREFIX) {
            continue;
        }
        let dir = layer.tree.path_of(node.parent);
        if name == WH_OPAQUE {
            opaques.push(dir);
        } else if !name.starts_with(WH_META_PREFIX) {
            let target = &name[WH_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(err(&layer.tree.path_of(id as NodeId), "whiteout names '.' or '..' or nothing"));
            }
            deletes.push((dir, target.to_vec()));
        }
    }
    for dir in &opaques {
        if let Some(d) = m.dir_mut(&components(dir)) {
            d.children.clear();
        }
    }
    for (dir, name) in &deletes {
        if let Some(d) = m.dir_mut(&components(dir)) {
            d.children.remove(name);
        }
    }
    // 2. The layer's own entries; hard links once their targets are in.
    let mut inode_of: HashMap<NodeId, usize> = HashMap::new();
    let mut links: Vec<(Vec<u8>, usize)> = Vec::new();
    let root_implicit = layer.tree.node(ROOT).implicit;
    if !root_implicit {
        m.root.entry = std::mem::take(&mut layer.tree.node_mut(ROOT).entry);
        m.root.implicit = false;
    }
    let implicit_entry = m.implicit_dir.clone();
    let mut stack: Vec<(NodeId, Vec<u8>)> = vec![(ROOT, Vec::new())];
    while let Some((lid, path)) = stack.pop() {
        let children = layer.tree.node(lid).children.clone();
        for c in children {
            let name = layer.tree.node(c).name.clone();
            if name.starts_with(WH_PREFIX) {
                continue;
            }
            let cpath = join(&path, &name);
            let node = layer.tree.node_mut(c);
            if let Some(t) = node.link_to {
                links.push((cpath, t as usize));
                continue;
            }
            let is_dir = node.entry.inode.is_dir();
            let implicit = node.implicit;
            let entry = std::mem::take(&mut node.entry);
            let (child, entry) = if is_dir {
                (None, entry)
            } else {
                m.inodes.push(entry);
                inode_of.insert(c, m.inodes.len() - 1);
                (Some(Child::Leaf(m.inodes.len() - 1)), Entry::default())
            };
            let mdir = m.dir_mut(&components(&path)).ok_or_else(|| err(&cpath, "parent vanished"))?;
            match child {
                Some(leaf) => {
                    mdir.children.insert(name, leaf);
                }
                None => {
                    match mdir.children.get_mut(&name) {
                        Some(Child::Dir(d)) => {
                            if !implicit {
                                d.entry = entry;
                                d.implicit = false;
                            }
                        }
                        _ => {
                            let e = if implicit { implicit_entry.clone() } else { entry };
                            mdir.children.insert(name, Child::Dir(Box::new(Dir::new(e, implicit))));
                        }
                    }
                    stack.push((c, cpath));
                }
            }
        }
    }
    for (path, target) in links {
        let idx = *inode_of.get(&(target as NodeId)).ok_or_else(|| err(&path, "hard link to a whiteout"))?;
        put_leaf(m, &path, idx).map_err(|r| err(&path, r))?;
    }
    // 3. Links to files of the layers below.
    for (path, target) in layer.external_links {
        let tcomps = crate::tree::split_path(&target).map_err(|e| err(&path, &e.to_string()))?;
        let idx = match m.lookup_leaf(&tcomps) {
            Some(Child::Leaf(i)) => *i,
            Some(Child::Dir(_)) => {
                return Err(err(&path, &format!("hard link target {} is a directory", show(&target))))
            }
            None => {
                return Err(err(&path, &format!("hard link target {} is in no layer below", show(&target))));
            }
        };
        crate::tree::split_path(&path).map_err(|e| err(&path, &e.to_string()))?;
        put_leaf(m, &path, idx).map_err(|r| err(&path, r))?;
    }
    Ok(())
}

/// Put the inode `idx` at `path` (whose parent the layer created or the image has).
fn put_leaf(m: &mut Merged, path: &[u8], idx: usize) -> Result<(), &'static str> {
    let comps = components(path);
    let (last, parents) = comps.split_last().ok_or("hard link at the root")?;
    let d = m.dir_mut(parents).ok_or("parent is not a directory")?;
    d.children.insert(last.to_vec(), Child::Leaf(idx));
    Ok(())
}

fn components(path: &[u8]) -> Vec<&[u8]> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split(|&b| b == b'/').collect()
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Write the merged image into a [`Tree`]: children in name order, the first name of an
/// inode (in that order) its primary, the others hard links to it.
fn build_tree(m: Merged, limits: Limits) -> Result<Tree, FlattenError> {
    let mut t = Tree::new(limits);
    if !m.root.implicit {
        t.set_root(m.root.entry.clone())?;
    }
    let mut first: Vec<Option<NodeId>> = vec![None; m.inodes.len()];
    let mut inodes: Vec<Option<Entry>> = m.inodes.into_iter().map(Some).collect();
    // Depth-first, children in name order (BTreeMap), explicit stack.
    let mut stack: Vec<(NodeId, std::collections::btree_map::IntoIter<Vec<u8>, Child>)> =
        vec![(ROOT, m.root.children.into_iter())];
    while let Some((dir_id, it)) = stack.last_mut() {
        let dir_id = *dir_id;
        let Some((name, child)) = it.next() else {
            stack.pop();
            continue;
        };
        match child {
            Child::Dir(d) => {
                let id = t.insert_child(dir_id, &name, d.entry)?;
                stack.push((id, d.children.into_iter()));
            }
            Child::Leaf(i) => match first[i] {
                Some(target) => {
                    t.insert_hardlink_child(dir_id, &name, target)?;
                }
                None => {
                    let entry = inodes[i].take().unwrap_or_default();
                    first[i] = Some(t.insert_child(dir_id, &name, entry)?);
                }
            },
        }
    }
    t.finalize()?;
    Ok(t)
}

#[cfg(test)]
#[path = "flatten_tests.rs"]
mod tests;
