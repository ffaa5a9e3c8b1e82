//! One dumpfile line → the tree: the path and where it goes, hard links (resolved at the end),
//! the numeric fields, the payload and content by file type, the xattrs, then insertion.

use super::fields::{parse_digest, parse_mtime, parse_uint, unescape, unescape_into, unescape_optional};
use super::xattr::{set_xattr, XattrBudget};
use super::{normalize_target, tree_reason, DumpError, Parser, PendingLink, MAX_XATTR_SECTION};
use crate::erofs::format::INLINE_CONTENT_MAX;
use crate::tree::{
    self, check_object_path, check_path, valid_file_type, Entry, Inode, NodeId, PATH_MAX, ROOT, S_IFBLK, S_IFCHR,
    S_IFDIR, S_IFLNK, S_IFMT,
};

/// A line's error: (path as unescaped, field, reason); the caller adds the line number.
pub(super) type Err<'e> = &'e dyn Fn(&[u8], &'static str, String) -> DumpError;

/// Where a line's entry goes: its parent node, its name, its path relative to the root.
#[derive(Clone, Copy)]
struct Place<'p> {
    parent: NodeId,
    name: &'p [u8],
    rel: &'p [u8],
}

impl Parser {
    pub(super) fn line_inner(
        &mut self,
        lineno: usize,
        fields: &[&[u8]; 11],
        escapes: bool,
        xattr_section: &[u8],
        path: &mut Vec<u8>,
        err: Err<'_>,
    ) -> Result<(), DumpError> {
        unescape_into(fields[0], path, escapes).map_err(|r| err(fields[0], "PATH", r))?;
        let path: &[u8] = path;
        if path.is_empty() {
            return Err(err(b"", "PATH", "empty path".into()));
        }
        if path.contains(&0) {
            return Err(err(path, "PATH", "NUL byte in path".into()));
        }
        let (is_link, mode_field) = match fields[2].strip_prefix(b"@") {
            Some(m) => (true, m),
            None => (false, fields[2]),
        };
        let mode = parse_uint(mode_field, 8, u32::MAX as u64).map_err(|r| err(path, "MODE", r))? as u32 & 0o177777;
        if !valid_file_type(mode) {
            return Err(err(path, "MODE", format!("invalid file type in mode {mode:o}")));
        }
        let is_root = path == b"/";
        if is_root {
            if self.root_seen {
                return Err(err(path, "PATH", "root directory listed twice".into()));
            }
            if mode & S_IFMT != S_IFDIR {
                return Err(err(path, "MODE", "root must be a directory".into()));
            }
        } else if !self.root_seen {
            return Err(err(path, "PATH", "the root directory \"/\" must be the first entry".into()));
        }
        if is_link && mode & S_IFMT == S_IFDIR {
            return Err(err(path, "MODE", "directories cannot be hard links".into()));
        }
        let place = if is_root { Place { parent: ROOT, name: b"", rel: b"" } } else { self.locate(path, err)? };
        if is_link {
            return self.hard_link(lineno, fields[8], path, &place, err);
        }

        let (mut entry, nlink) = self.entry_of(path, mode, fields, escapes, err)?;
        parse_xattrs(xattr_section, &mut entry, path, err)?;
        let id = if is_root {
            self.tree.set_root(entry).map_err(|e| err(path, "PATH", tree_reason(&e)))?;
            self.root_seen = true;
            ROOT
        } else {
            self.tree.insert_child(place.parent, place.name, entry).map_err(|e| err(path, "PATH", tree_reason(&e)))?
        };
        self.tree.set_nlink(id, nlink);
        Ok(())
    }

    /// Where a non-root `path` goes; the parent must exist.
    fn locate<'p>(&mut self, path: &'p [u8], err: Err<'_>) -> Result<Place<'p>, DumpError> {
        let rel = path.strip_prefix(b"/").ok_or_else(|| err(path, "PATH", "path must start with '/'".into()))?;
        check_path(rel).map_err(|e| err(path, "PATH", tree_reason(&e)))?;
        let (parent_rel, name) = match memchr::memrchr(b'/', rel) {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let parent = self.find_parent(parent_rel).map_err(|r| err(path, "PATH", r))?;
        // (insert_child rejects names already in the tree.)
        if self.link_index.contains_key(rel) {
            return Err(err(path, "PATH", "path listed twice".into()));
        }
        Ok(Place { parent, name, rel })
    }

    /// A hard link line: only its PAYLOAD (the target path) counts; resolved at the end.
    fn hard_link(
        &mut self,
        lineno: usize,
        payload: &[u8],
        path: &[u8],
        place: &Place<'_>,
        err: Err<'_>,
    ) -> Result<(), DumpError> {
        let Place { parent, name, rel } = *place;
        let target = unescape_optional(payload, true).map_err(|r| err(path, "PAYLOAD", r))?;
        let target = target.ok_or_else(|| err(path, "PAYLOAD", "hard link without a target path".into()))?;
        if target.contains(&0) {
            return Err(err(path, "PAYLOAD", "NUL byte in hard link target".into()));
        }
        let target = normalize_target(&target);
        if target == rel {
            return Err(err(path, "PAYLOAD", "hard link to itself".into()));
        }
        if self.tree.len() + self.links.len() >= self.tree.limits.max_entries {
            return Err(err(path, "PATH", format!("too many entries (limit {})", self.tree.limits.max_entries)));
        }
        self.link_index.insert(rel.to_vec(), self.links.len());
        self.links.push(PendingLink { line: lineno, path: rel.to_vec(), parent, name: name.to_vec(), target });
        Ok(())
    }

    /// The entry of a line that is not a hard link (without xattrs), and its NLINK.
    fn entry_of(
        &self,
        path: &[u8],
        mode: u32,
        f: &[&[u8]; 11],
        escapes: bool,
        err: Err<'_>,
    ) -> Result<(Entry, u32), DumpError> {
        let size = parse_uint(f[1], 10, u64::MAX).map_err(|r| err(path, "SIZE", r))?;
        let nlink = parse_uint(f[3], 10, u32::MAX as u64).map_err(|r| err(path, "NLINK", r))? as u32;
        let uid = parse_uint(f[4], 10, u32::MAX as u64).map_err(|r| err(path, "UID", r))? as u32;
        let gid = parse_uint(f[5], 10, u32::MAX as u64).map_err(|r| err(path, "GID", r))? as u32;
        let rdev = parse_uint(f[6], 10, u32::MAX as u64).map_err(|r| err(path, "RDEV", r))? as u32;
        let (mtime, mtime_nsec) = parse_mtime(f[7]).map_err(|r| err(path, "MTIME", r))?;
        let payload = unescape_optional(f[8], escapes).map_err(|r| err(path, "PAYLOAD", r))?;
        let content = unescape_optional(f[9], escapes).map_err(|r| err(path, "CONTENT", r))?;
        if let Some(c) = &content {
            if c.len() as u64 != size {
                return Err(err(path, "CONTENT", format!("content is {} bytes but SIZE is {size}", c.len())));
            }
        }
        // An empty DIGEST field (a line cut short) means no digest.
        let digest = match unescape_optional(f[10], escapes).map_err(|r| err(path, "DIGEST", r))? {
            Some(d) if !d.is_empty() => Some(parse_digest(&d).map_err(|r| err(path, "DIGEST", r))?),
            _ => None,
        };
        let ftype = mode & S_IFMT;
        let rdev = if ftype == S_IFCHR || ftype == S_IFBLK {
            rdev
        } else if self.strict && rdev != 0 {
            return Err(err(path, "RDEV", "non-zero device number on a non-device".into()));
        } else {
            0
        };
        let mut entry = Entry {
            inode: Inode { mode, uid, gid, rdev, size, mtime, mtime_nsec },
            payload: None,
            content: None,
            xattrs: Vec::new(),
            fsverity_digest: digest,
        };
        if ftype == S_IFLNK {
            self.symlink(&mut entry, payload, content, path, err)?;
        } else {
            file_payload(&mut entry, payload, content, path, err)?;
        }
        Ok((entry, nlink))
    }

    /// A symlink's target is its PAYLOAD; strict mode wants SIZE = its length and no CONTENT.
    fn symlink(
        &self,
        entry: &mut Entry,
        payload: Option<Vec<u8>>,
        content: Option<Vec<u8>>,
        path: &[u8],
        err: Err<'_>,
    ) -> Result<(), DumpError> {
        let target = match payload {
            Some(t) if !t.is_empty() => t,
            _ => return Err(err(path, "PAYLOAD", "symlink without a target".into())),
        };
        if target.len() >= PATH_MAX {
            return Err(err(
                path,
                "PAYLOAD",
                format!("symlink target of {} bytes (limit {})", target.len(), PATH_MAX - 1),
            ));
        }
        if target.contains(&0) {
            return Err(err(path, "PAYLOAD", "NUL byte in symlink target".into()));
        }
        if self.strict {
            let size = entry.inode.size;
            if size != target.len() as u64 {
                return Err(err(
                    path,
                    "SIZE",
                    format!("symlink SIZE {size} differs from target length {}", target.len()),
                ));
            }
            if content.as_ref().is_some_and(|c| !c.is_empty()) {
                return Err(err(path, "CONTENT", "symlinks cannot have content".into()));
            }
        }
        entry.inode.size = target.len() as u64;
        entry.payload = Some(target);
        Ok(())
    }
}

/// PAYLOAD (a regular file's object path) and CONTENT (inline data) of anything but a symlink.
fn file_payload(
    entry: &mut Entry,
    payload: Option<Vec<u8>>,
    content: Option<Vec<u8>>,
    path: &[u8],
    err: Err<'_>,
) -> Result<(), DumpError> {
    if let Some(p) = &payload {
        if p.len() >= PATH_MAX {
            return Err(err(path, "PAYLOAD", format!("payload of {} bytes (limit {})", p.len(), PATH_MAX - 1)));
        }
        if p.contains(&0) {
            return Err(err(path, "PAYLOAD", "NUL byte in payload".into()));
        }
        // A regular file's payload becomes its overlay redirect: it must name an object.
        if entry.inode.is_reg() {
            check_object_path(p)
                .map_err(|r| err(path, "PAYLOAD", format!("{} is not an object path ({r})", tree::show(p))))?;
        }
    }
    entry.payload = payload;
    if let Some(c) = content {
        if c.len() > INLINE_CONTENT_MAX {
            return Err(err(
                path,
                "CONTENT",
                format!("inline content of {} bytes (limit {INLINE_CONTENT_MAX})", c.len()),
            ));
        }
        if !c.is_empty() {
            entry.content = Some(c);
        }
    }
    Ok(())
}

/// The `KEY=VALUE` items after the 11 fields, with the reference's budget.
fn parse_xattrs(section: &[u8], entry: &mut Entry, path: &[u8], err: Err<'_>) -> Result<(), DumpError> {
    if section.len() > MAX_XATTR_SECTION {
        return Err(err(path, "XATTRS", format!("xattr section longer than {MAX_XATTR_SECTION} bytes")));
    }
    let mut budget = XattrBudget::default();
    let mut index = None;
    let mut rest = section;
    while !rest.is_empty() {
        let (item, next) = match rest.iter().position(|&b| b == b' ') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let eq = item.iter().position(|&b| b == b'=').ok_or_else(|| err(path, "XATTRS", "xattr without '='".into()))?;
        let key = unescape(&item[..eq]).map_err(|r| err(path, "XATTRS", r))?;
        let value = unescape(&item[eq + 1..]).map_err(|r| err(path, "XATTRS", r))?;
        set_xattr(&mut entry.xattrs, &mut index, &mut budget, key, value).map_err(|r| err(path, "XATTRS", r))?;
    }
    Ok(())
}
