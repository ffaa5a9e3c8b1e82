//! OCI whiteouts, applied after the whole layer is read (as containers/storage does): an opaque
//! marker sets `trusted.overlay.opaque=y` on its directory; a `.wh.NAME` marker becomes an overlay
//! whiteout (character device 0/0) unless a file of the same layer has that name or something
//! that is not a directory lies on the way.
//!
//! The one implementation for every reader of OCI layers: the TOC reader (this module's parent)
//! and the tar reader ([`crate::layer`]), so that a layer's image does not depend on its encoding.
//! It lives here, not in [`crate::tree`], because whiteouts are an OCI layer notion the other
//! inputs (dumpfile, directory) never apply.

use crate::erofs::format::OVL_OPAQUE;
use crate::tree::{self, Entry, Inode, Tree, TreeError, Xattr};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

/// What a (normalised, non-root) layer path means to OCI whiteout handling.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Name<'a> {
    /// `DIR/.wh..wh..opq`: DIR (empty = the root) is opaque.
    Opaque(&'a [u8]),
    /// Another `.wh..wh.*` name: reserved, dropped.
    Meta,
    /// `DIR/.wh.NAME`: hides `DIR/NAME` (not yet validated).
    Hides(Vec<u8>),
    /// An ordinary entry.
    Plain,
}

/// Classify a layer path (relative, without leading `./` or trailing `/`).
pub(crate) fn classify(p: &[u8]) -> Name<'_> {
    let (dir, base) = match memchr::memrchr(b'/', p) {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&b""[..], p),
    };
    if base == WHITEOUT_OPAQUE {
        return Name::Opaque(dir);
    }
    if base.starts_with(WHITEOUT_META_PREFIX) {
        return Name::Meta;
    }
    let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) else {
        return Name::Plain;
    };
    let mut hp = dir.to_vec();
    if !hp.is_empty() {
        hp.push(b'/');
    }
    hp.extend_from_slice(hidden);
    Name::Hides(hp)
}

/// An opaque marker waiting for the end of the layer; `at` is what the caller names in errors.
pub(crate) struct Opaque<T> {
    pub at: T,
    /// Directory path (relative; empty = root).
    pub dir: Vec<u8>,
}

/// A whiteout marker waiting for the end of the layer; `at` is what the caller names in errors.
pub(crate) struct Whiteout<T> {
    pub at: T,
    /// Path of the hidden entry (relative, validated by the caller).
    pub path: Vec<u8>,
    /// The character device 0/0 to insert (owner and mtime of the marker).
    pub inode: Inode,
}

/// Why a marker could not be applied; the caller words the error for its input.
#[derive(Debug)]
pub(crate) enum Failed<T> {
    /// The opaque marker's directory could not be created.
    OpaqueInsert(T, TreeError),
    /// The opaque marker lies inside a path that is not a directory.
    OpaqueNotDir(T),
    /// The whiteout could not be inserted.
    Whiteout(T, TreeError),
}

/// Turn the collected OCI whiteout markers into overlay whiteouts and opaque directories.
pub(crate) fn apply<T>(tree: &mut Tree, opaques: Vec<Opaque<T>>, whiteouts: Vec<Whiteout<T>>) -> Result<(), Failed<T>> {
    for o in opaques {
        let id = match tree.lookup(&o.dir) {
            Some(id) => id,
            None => {
                let e = Entry { inode: tree.implicit_dir, ..Entry::default() };
                match tree.insert(&o.dir, e) {
                    Ok(id) => id,
                    Err(e) => return Err(Failed::OpaqueInsert(o.at, e)),
                }
            }
        };
        let n = tree.node_mut(id);
        if !n.entry.inode.is_dir() || n.link_to.is_some() {
            return Err(Failed::OpaqueNotDir(o.at));
        }
        match n.entry.xattrs.iter_mut().find(|x| x.key == OVL_OPAQUE) {
            Some(x) => x.value = b"y".to_vec(),
            None => n.entry.xattrs.push(Xattr { key: OVL_OPAQUE.to_vec(), value: b"y".to_vec() }),
        }
    }
    for w in whiteouts {
        if tree.lookup(&w.path).is_some() {
            // A file of this layer at the same name wins (OCI image spec).
            continue;
        }
        if blocked(tree, &w.path) {
            // Below something that is not a directory (e.g. an earlier whiteout): nothing to hide.
            continue;
        }
        let e = Entry { inode: w.inode, ..Entry::default() };
        if let Err(e) = tree.insert(&w.path, e) {
            return Err(Failed::Whiteout(w.at, e));
        }
    }
    Ok(())
}

/// Whether an existing parent of `path` is not a directory (or is a hard link).
fn blocked(tree: &Tree, path: &[u8]) -> bool {
    let mut cur = tree::ROOT;
    let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    for c in &comps[..comps.len() - 1] {
        match tree.child(cur, c) {
            Some(id) => {
                let n = tree.node(id);
                if !n.entry.inode.is_dir() || n.link_to.is_some() {
                    return true;
                }
                cur = id;
            }
            None => return false,
        }
    }
    false
}
