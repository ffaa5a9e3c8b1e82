//! Tar members → [`Tree`], with the semantics `--from-toc` gives the TOC containers/storage
//! writes for the same tar (so that a layer's image does not depend on its encoding).
//!
//! - Names: one leading `./` and one trailing `/` are removed; `.` and `./` name the root. An
//!   absolute name (`/x`), `..` or `.` components, empty components and NUL are refused.
//! - Every path may appear once: a second member for the same path is refused (also an
//!   identical one), except a directory listed after a child made it exist implicitly.
//! - Hard links name an earlier member (normalised like names) that is not a directory.
//! - Regular files with content are named by the sha256 of their content (object path
//!   `xx/rest`), filled in by the caller once the store side has hashed them; empty files
//!   have no object.
//! - Missing parents, and the root when the tar has no `./` member, are directories 0755,
//!   owner 0:0, mtime 0 (as containers/storage and the TOC reader make them).
//! - OCI whiteouts become overlay whiteouts and opaque directories exactly as in
//!   [`crate::input::toc`] (unless whiteouts are kept).
//! - In eStargz mode, the bookkeeping members `.prefetch.landmark`, `.no.prefetch.landmark` and
//!   `stargz.index.json` at the root are not part of the tree.

use crate::erofs::format::XATTR_BUDGET as EXTERNAL_XATTR_BUDGET;
use crate::input::toc::whiteout::{self, Name};
use crate::layer::tar::{Kind, TarEntry};
use crate::tree::{
    self, split_path, Entry, Inode, Limits, NodeId, Tree, TreeError, Xattr, PATH_MAX, S_IFBLK, S_IFCHR, S_IFDIR,
    S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};

/// What became of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// A regular file with content at this node: its object path is to be set.
    Content(NodeId),
    /// Part of the tree, nothing to fill in (or a whiteout/opaque marker, applied at the end).
    Done,
    /// Not part of the tree (eStargz bookkeeping): its content is not needed.
    Skipped,
}

/// Whom a whiteout marker's error names: (member index, member name).
type At = (usize, Vec<u8>);

pub(crate) struct TarTree {
    pub tree: Tree,
    keep_whiteouts: bool,
    estargz: bool,
    whiteouts: Vec<whiteout::Whiteout<At>>,
    opaques: Vec<whiteout::Opaque<At>>,
    root_seen: bool,
}

fn reason(e: &TreeError) -> String {
    match e {
        TreeError::BadPath { reason, .. } => (*reason).to_string(),
        TreeError::ParentNotDir { parent, .. } => format!("parent {parent} is not a directory"),
        TreeError::Duplicate { .. } => "a second member for the same path".into(),
        TreeError::BadHardlink { target, reason, .. } => format!("hard link target {target}: {reason}"),
        TreeError::TooManyEntries { limit } => format!("too many entries (limit {limit})"),
        TreeError::TooDeep { limit, .. } => format!("directory nesting deeper than {limit}"),
        TreeError::BadField { field, reason, .. } => format!("{field}: {reason}"),
    }
}

/// Strip one leading `./` and one trailing `/`; None is the root. Absolute names are refused.
pub(crate) fn normalize(name: &[u8]) -> Result<Option<&[u8]>, String> {
    if name.starts_with(b"/") {
        return Err("absolute path".into());
    }
    let mut p = name.strip_prefix(b"./").unwrap_or(name);
    if let Some(r) = p.strip_suffix(b"/") {
        p = r;
    }
    if p.is_empty() || p == b"." {
        return Ok(None);
    }
    split_path(p).map_err(|e| reason(&e))?;
    Ok(Some(p))
}

impl TarTree {
    pub(crate) fn new(limits: Limits, keep_whiteouts: bool, estargz: bool) -> Self {
        TarTree {
            tree: Tree::new(limits),
            keep_whiteouts,
            estargz,
            whiteouts: Vec::new(),
            opaques: Vec::new(),
            root_seen: false,
        }
    }

    /// Add one member; the error text names the field (the caller names the member).
    pub(crate) fn add(&mut self, e: &TarEntry) -> Result<Placed, String> {
        let path = normalize(&e.name)?;
        let kind = e.kind();
        let ftype = match kind {
            Kind::Reg | Kind::Hardlink => S_IFREG,
            Kind::Dir => S_IFDIR,
            Kind::Symlink => S_IFLNK,
            Kind::Char => S_IFCHR,
            Kind::Block => S_IFBLK,
            Kind::Fifo => S_IFIFO,
        };
        if kind != Kind::Hardlink && e.mode & S_IFMT != 0 && e.mode & S_IFMT != ftype {
            return Err(format!("file type bits of mode 0o{:o} contradict the {}", e.mode, kind.name()));
        }
        let uid = u32::try_from(e.uid).map_err(|_| format!("uid {} out of range", e.uid))?;
        let gid = u32::try_from(e.gid).map_err(|_| format!("gid {} out of range", e.gid))?;
        let rdev = if matches!(kind, Kind::Char | Kind::Block) {
            let (ma, mi) = (i64::try_from(e.dev_major).unwrap_or(-1), i64::try_from(e.dev_minor).unwrap_or(-1));
            crate::input::toc::encode_dev(ma, mi)?
        } else {
            0
        };
        if self.estargz && matches!(path, Some(b".prefetch.landmark" | b".no.prefetch.landmark" | b"stargz.index.json"))
        {
            return Ok(Placed::Skipped);
        }
        let inode = Inode {
            mode: ftype | (e.mode & 0o7777),
            uid,
            gid,
            rdev,
            size: 0,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
        };

        if !self.keep_whiteouts {
            if let Some(p) = path {
                match whiteout::classify(p) {
                    Name::Plain => {}
                    Name::Meta => return Ok(Placed::Done),
                    Name::Opaque(dir) => {
                        self.opaques.push(whiteout::Opaque { at: (e.index, e.name.clone()), dir: dir.to_vec() });
                        return Ok(Placed::Done);
                    }
                    Name::Hides(hp) => {
                        split_path(&hp).map_err(|e| format!("whiteout names an invalid path: {}", reason(&e)))?;
                        if self.whiteouts.len() >= self.tree.limits.max_entries {
                            return Err(format!("too many entries (limit {})", self.tree.limits.max_entries));
                        }
                        let (mtime, mtime_nsec) = (e.mtime, e.mtime_nsec);
                        let inode = Inode { mode: S_IFCHR, uid, gid, rdev: 0, size: 0, mtime, mtime_nsec };
                        self.whiteouts.push(whiteout::Whiteout { at: (e.index, e.name.clone()), path: hp, inode });
                        return Ok(Placed::Done);
                    }
                }
            }
        }

        if kind == Kind::Hardlink {
            let p = path.ok_or("the root cannot be a hard link")?;
            let t = normalize(&e.link).map_err(|r| format!("hard link target: {r}"))?;
            let t = t.ok_or("hard link to the root directory")?;
            if t == p {
                return Err("hard link to itself".into());
            }
            self.check_new(p)?;
            self.tree.insert_hardlink(p, t).map_err(|e| reason(&e))?;
            return Ok(Placed::Done);
        }

        let mut entry = Entry { inode, ..Entry::default() };
        match kind {
            Kind::Reg => entry.inode.size = e.size,
            Kind::Symlink => {
                if e.link.is_empty() {
                    return Err("symlink without a target".into());
                }
                if e.link.len() >= PATH_MAX {
                    return Err(format!("symlink target of {} bytes (limit {})", e.link.len(), PATH_MAX - 1));
                }
                entry.inode.size = e.link.len() as u64;
                entry.payload = Some(e.link.clone());
            }
            _ => {}
        }
        entry.xattrs = xattrs(&e.xattrs)?;
        let id = match path {
            None => {
                if self.root_seen {
                    return Err("a second member for the root directory".into());
                }
                self.root_seen = true;
                self.tree.set_root(entry).map_err(|e| reason(&e))?;
                tree::ROOT
            }
            Some(p) => {
                self.check_new(p)?;
                self.tree.insert(p, entry).map_err(|e| reason(&e))?
            }
        };
        Ok(if kind == Kind::Reg && e.size > 0 { Placed::Content(id) } else { Placed::Done })
    }

    /// Refuse a second member for a path (an implicitly created directory may be listed).
    fn check_new(&self, p: &[u8]) -> Result<(), String> {
        if let Some(id) = self.tree.lookup(p) {
            if !self.tree.node(id).implicit {
                return Err("a second member for the same path".into());
            }
        }
        Ok(())
    }

    /// Set a file's object path (and the copies its hard links hold).
    pub(crate) fn set_object(&mut self, id: NodeId, hex: &str) {
        let mut p = Vec::with_capacity(65);
        p.extend_from_slice(&hex.as_bytes()[..2]);
        p.push(b'/');
        p.extend_from_slice(&hex.as_bytes()[2..]);
        self.tree.node_mut(id).entry.payload = Some(p);
    }

    /// Apply whiteouts, refresh hard-link copies and sort: the tree is ready to write.
    pub(crate) fn finish(mut self) -> Result<Tree, String> {
        let (opaques, whiteouts) = (std::mem::take(&mut self.opaques), std::mem::take(&mut self.whiteouts));
        whiteout::apply(&mut self.tree, opaques, whiteouts).map_err(|f| {
            let ((index, name), what, r) = match f {
                whiteout::Failed::OpaqueInsert(at, e) => (at, "opaque marker", reason(&e)),
                whiteout::Failed::OpaqueNotDir(at) => {
                    (at, "opaque marker", "inside a path that is not a directory".to_string())
                }
                whiteout::Failed::Whiteout(at, e) => (at, "whiteout", reason(&e)),
            };
            format!("member {index} ({}): {what}: {r}", tree::show(&name))
        })?;
        for i in 0..self.tree.nodes.len() {
            if let Some(t) = self.tree.nodes[i].link_to {
                self.tree.nodes[i].entry = self.tree.nodes[t as usize].entry.clone();
            }
        }
        self.tree.finalize().map_err(|e| reason(&e))?;
        Ok(self.tree)
    }
}

/// PAX xattrs → tree xattrs, with the limits the TOC reader applies.
fn xattrs(xs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Xattr>, String> {
    let mut out: Vec<Xattr> = Vec::with_capacity(xs.len());
    for (k, v) in xs {
        if k.len() > XATTR_NAME_MAX {
            return Err(format!("xattr name longer than {XATTR_NAME_MAX} bytes"));
        }
        if k.contains(&0) {
            return Err("NUL byte in an xattr name".into());
        }
        if v.len() > XATTR_SIZE_MAX - 1 {
            return Err(format!("xattr {}: value longer than {} bytes", tree::show(k), XATTR_SIZE_MAX - 1));
        }
        out.push(Xattr { key: k.clone(), value: v.clone() });
    }
    let used: usize =
        if out.is_empty() { 0 } else { 12 + out.iter().map(|x| 7 + x.key.len() + x.value.len()).sum::<usize>() };
    if used > EXTERNAL_XATTR_BUDGET {
        return Err(format!("xattrs exceed the per-file budget of {EXTERNAL_XATTR_BUDGET} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(name: &str, kind: Kind, size: u64) -> TarEntry {
        TarEntry { name: name.as_bytes().to_vec(), kind: Some(kind), mode: 0o644, size, ..TarEntry::default() }
    }

    #[test]
    fn builds_tree_with_whiteouts_and_links() {
        let mut t = TarTree::new(Limits::default(), false, false);
        assert_eq!(t.add(&ent("./", Kind::Dir, 0)).unwrap(), Placed::Done);
        let Placed::Content(id) = t.add(&ent("./a/f", Kind::Reg, 3)).unwrap() else { panic!() };
        let mut l = ent("./a/g", Kind::Hardlink, 0);
        l.link = b"./a/f".to_vec();
        t.add(&l).unwrap();
        t.add(&ent("./a", Kind::Dir, 0)).unwrap();
        t.add(&ent("b/.wh..wh..opq", Kind::Reg, 0)).unwrap();
        t.add(&ent("b/.wh.gone", Kind::Reg, 0)).unwrap();
        t.set_object(id, "ab0123456789012345678901234567890123456789012345678901234567890a");
        let tree = t.finish().unwrap();
        let g = tree.node(tree.lookup(b"a/g").unwrap());
        assert_eq!(g.entry.payload.as_deref().map(|p| &p[..3]), Some(&b"ab/"[..]));
        let b = tree.node(tree.lookup(b"b").unwrap());
        assert_eq!(b.entry.xattrs[0].key, crate::erofs::format::OVL_OPAQUE);
        assert_eq!(tree.node(tree.lookup(b"b/gone").unwrap()).entry.inode.mode, S_IFCHR);
    }

    #[test]
    fn refuses_hostile_names_and_links() {
        let cases: Vec<(Vec<TarEntry>, &str)> = vec![
            (vec![ent("../x", Kind::Reg, 0)], "'..'"),
            (vec![ent("/abs", Kind::Reg, 0)], "absolute"),
            (vec![ent("a", Kind::Reg, 0), ent("a", Kind::Reg, 0)], "second member"),
            (
                vec![{
                    let mut l = ent("a", Kind::Hardlink, 0);
                    l.link = b"later".to_vec();
                    l
                }],
                "does not exist",
            ),
            (vec![ent("d/.wh...", Kind::Reg, 0)], "whiteout names an invalid path"),
            (vec![ent("./", Kind::Dir, 0), ent(".", Kind::Dir, 0)], "root"),
        ];
        for (es, needle) in cases {
            let mut t = TarTree::new(Limits::default(), false, false);
            let mut err = None;
            for e in &es {
                if let Err(r) = t.add(e) {
                    err = Some(r);
                    break;
                }
            }
            let r = err.unwrap_or_else(|| t.finish().err().unwrap_or_default());
            assert!(r.contains(needle), "{needle}: {r}");
        }
    }
}
