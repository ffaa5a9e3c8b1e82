//! One layer's tree, as the store keeps it (OCI whiteouts literal), turned into the tree of the
//! layer's `diff` for podman's overlay: whiteouts in overlay form, so that podman's own
//! overlay (trusted.* for root, `userxattr` for rootless podman) applies them.
//!
//! - `DIR/.wh.NAME` becomes a character device 0/0 `DIR/NAME` (the composefs writer stores it
//!   as an escaped whiteout file with both `trusted.overlay.whiteout` and
//!   `user.overlay.whiteout`, and marks DIR; overlayfs 6.7+ honours those "xwhiteouts"), unless
//!   the layer itself has an entry NAME there (then the entry wins, as when flattening).
//! - `DIR/.wh..wh..opq` makes DIR opaque: `trusted.overlay.opaque=y` and
//!   `user.overlay.opaque=y`. Whiteouts inside an opaque directory are dropped (the directory
//!   already hides everything below it; the writer's xwhiteout marking would otherwise replace
//!   the opaque mark). Other `.wh..wh.*` names (AUFS metadata) are dropped.
//! - Every `trusted.overlay.*` and `user.overlay.*` xattr the layer's tar carried is removed:
//!   OCI layers express deletions only by whiteout files, and such xattrs would otherwise act
//!   on podman's overlay (redirects, metacopy, opacity) as the image author chose.
//! - A directory the layer only implies (a parent it does not list, the root included) takes
//!   the metadata the directory has in the layers below (`lower`, their flattened tree), so
//!   that podman's overlay, where the uppermost layer's directory metadata wins, shows what
//!   flattening the image shows; with nothing below, the implied defaults (0755, 0:0, mtime 0).
//! - Hard links within the layer stay hard links; a link to a file of a lower layer cannot be
//!   expressed in a separate layer and is refused (today's layer reader refuses those anyway).

use std::collections::{HashMap, HashSet};

use crate::erofs::format::{OVL_OPAQUE, OVL_PREFIX, USER_OVL_OPAQUE};
use crate::tree::{show, Entry, Inode, Limits, NodeId, Tree, TreeError, Xattr, ROOT, S_IFCHR};

const WH_PREFIX: &[u8] = b".wh.";
const WH_META_PREFIX: &[u8] = b".wh..wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
const USER_OVL_PREFIX: &[u8] = b"user.overlay.";

/// Why a layer cannot be served as a separate layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("{path}: {reason}")]
    Entry { path: String, reason: String },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The layer's tree in overlay form (see the module documentation). `layer` marks its implied
/// directories `implicit` (as [`crate::store::repo::Repo::layer_tree`] returns it);
/// `external_links` are its hard links to lower layers (refused when there are any).
pub fn overlay_form(
    layer: &Tree,
    external_links: &[(Vec<u8>, Vec<u8>)],
    lower: Option<&Tree>,
    limits: Limits,
) -> Result<Tree, ConvertError> {
    if let Some((p, t)) = external_links.first() {
        return Err(ConvertError::Entry {
            path: show(p),
            reason: format!(
                "hard link to {} of a lower layer: a layer served on its own cannot link across layers",
                show(t)
            ),
        });
    }
    let mut out = Tree::new(limits);
    out.set_root(dir_entry(layer, ROOT, &[], lower, &out.implicit_dir))?;
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut links: Vec<(NodeId, Vec<u8>, NodeId)> = Vec::new();
    let mut whiteouts: Vec<(NodeId, Vec<u8>, Inode)> = Vec::new();
    let mut opaque: HashSet<NodeId> = HashSet::new();
    // Depth-first with an explicit stack: (node in `layer`, its copy in `out`, its path).
    let mut stack: Vec<(NodeId, NodeId, Vec<u8>)> = vec![(ROOT, ROOT, Vec::new())];
    while let Some((lid, oid, path)) = stack.pop() {
        for &c in &layer.node(lid).children {
            let n = layer.node(c);
            let cpath = join(&path, &n.name);
            if let Some(rest) = n.name.strip_prefix(WH_PREFIX) {
                if n.name == WH_OPAQUE {
                    opaque.insert(oid);
                } else if !n.name.starts_with(WH_META_PREFIX) {
                    if rest.is_empty() || rest == b"." || rest == b".." {
                        return Err(ConvertError::Entry {
                            path: show(&cpath),
                            reason: "whiteout names '.', '..' or nothing".into(),
                        });
                    }
                    let i = &n.entry.inode;
                    let dev = Inode { mode: S_IFCHR, uid: i.uid, gid: i.gid, mtime: i.mtime, ..Inode::default() };
                    whiteouts.push((oid, rest.to_vec(), dev));
                }
                continue;
            }
            if let Some(t) = n.link_to {
                links.push((oid, n.name.clone(), t));
                continue;
            }
            if n.entry.inode.is_dir() {
                let e = dir_entry(layer, c, &cpath, lower, &out.implicit_dir);
                let id = out.insert_child(oid, &n.name, e)?;
                stack.push((c, id, cpath));
            } else {
                let id = out.insert_child(oid, &n.name, clean(&n.entry))?;
                map.insert(c, id);
            }
        }
    }
    for (dir, name, target) in links {
        let Some(&t) = map.get(&target) else {
            let path = join(&out.path_of(dir), &name);
            return Err(ConvertError::Entry { path: show(&path), reason: "hard link to a whiteout".into() });
        };
        out.insert_hardlink_child(dir, &name, t)?;
    }
    for (dir, name, inode) in whiteouts {
        if opaque.contains(&dir) || out.child(dir, &name).is_some() {
            continue;
        }
        out.insert_child(dir, &name, Entry { inode, ..Entry::default() })?;
    }
    for dir in opaque {
        let xs = &mut out.node_mut(dir).entry.xattrs;
        xs.push(Xattr { key: OVL_OPAQUE.to_vec(), value: b"y".to_vec() });
        xs.push(Xattr { key: USER_OVL_OPAQUE.to_vec(), value: b"y".to_vec() });
    }
    out.finalize()?;
    Ok(out)
}

/// The entry of directory `id` of `layer`: its own, or for an implied one the lower layers'.
fn dir_entry(layer: &Tree, id: NodeId, path: &[u8], lower: Option<&Tree>, implied: &Inode) -> Entry {
    let n = layer.node(id);
    if !n.implicit {
        return clean(&n.entry);
    }
    let below = lower
        .and_then(|t| t.lookup(path))
        .map(|l| lower.expect("lower").node(l))
        .filter(|l| l.link_to.is_none() && l.entry.inode.is_dir());
    match below {
        Some(l) => clean(&l.entry),
        None => Entry { inode: *implied, ..Entry::default() },
    }
}

/// `e` without the overlay xattrs a tar may carry.
fn clean(e: &Entry) -> Entry {
    let mut e = e.clone();
    e.xattrs.retain(|x| !x.key.starts_with(OVL_PREFIX) && !x.key.starts_with(USER_OVL_PREFIX));
    e
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
