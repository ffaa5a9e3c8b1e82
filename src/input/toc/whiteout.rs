//! OCI whiteouts, applied after the whole layer is read (as containers/storage does): an opaque
//! marker sets `trusted.overlay.opaque=y` on its directory; a `.wh.NAME` marker becomes an overlay
//! whiteout (character device 0/0) unless a file of the same layer has that name or something
//! that is not a directory lies on the way.

use super::{tree_reason, State, TocError};
use crate::erofs::format::OVL_OPAQUE;
use crate::tree::{self, Entry, Xattr};

impl State {
    /// Turn the collected OCI whiteout markers into overlay whiteouts and opaque directories.
    pub(super) fn apply_whiteouts(&mut self) -> Result<(), TocError> {
        for o in std::mem::take(&mut self.opaques) {
            let err = |reason: String| TocError::Entry { index: o.index, name: o.name.clone(), field: "name", reason };
            let id = match self.tree.lookup(&o.dir) {
                Some(id) => id,
                None => {
                    let e = Entry { inode: self.tree.implicit_dir, ..Entry::default() };
                    self.tree.insert(&o.dir, e).map_err(|e| err(format!("opaque marker: {}", tree_reason(&e))))?
                }
            };
            let n = self.tree.node_mut(id);
            if !n.entry.inode.is_dir() || n.link_to.is_some() {
                return Err(err("opaque marker inside a path that is not a directory".into()));
            }
            match n.entry.xattrs.iter_mut().find(|x| x.key == OVL_OPAQUE) {
                Some(x) => x.value = b"y".to_vec(),
                None => n.entry.xattrs.push(Xattr { key: OVL_OPAQUE.to_vec(), value: b"y".to_vec() }),
            }
        }
        for w in std::mem::take(&mut self.whiteouts) {
            if self.tree.lookup(&w.path).is_some() {
                // A file of this layer at the same name wins (OCI image spec).
                continue;
            }
            // Below something that is not a directory (e.g. an earlier whiteout): nothing to hide.
            let mut cur = tree::ROOT;
            let comps: Vec<&[u8]> = w.path.split(|&b| b == b'/').collect();
            let mut blocked = false;
            for c in &comps[..comps.len() - 1] {
                match self.tree.child(cur, c) {
                    Some(id) => {
                        let n = self.tree.node(id);
                        if !n.entry.inode.is_dir() || n.link_to.is_some() {
                            blocked = true;
                            break;
                        }
                        cur = id;
                    }
                    None => break,
                }
            }
            if blocked {
                continue;
            }
            let e = Entry { inode: w.inode, ..Entry::default() };
            self.tree.insert(&w.path, e).map_err(|e| TocError::Entry {
                index: w.index,
                name: w.name.clone(),
                field: "name",
                reason: format!("whiteout: {}", tree_reason(&e)),
            })?;
        }
        Ok(())
    }
}
