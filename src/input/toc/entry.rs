//! One TOC entry → the tree: the checks every entry gets whatever its type, chunk entries,
//! metadata (mode, ids, times, device numbers, size), OCI whiteout markers, hard links, and
//! the content of regular files (inline `x-content`, object `x-payload` or `digest`) and
//! symlinks, then insertion.

use std::borrow::Cow;

use super::json::Raw;
use super::{
    decode_base64, encode_dev, file_type_of, normalize, parse_digest, parse_time, tree_reason, trunc, whiteout, Flavor,
    PendingOpaque, PendingWhiteout, State, TocError,
};
use crate::erofs::format::{INLINE_CONTENT_MAX, XATTR_BUDGET};
use crate::tree::{
    self, check_path, Entry, Inode, TreeError, Xattr, PATH_MAX, S_IFBLK, S_IFCHR, S_IFLNK, S_IFMT, S_IFREG,
    XATTR_NAME_MAX, XATTR_SIZE_MAX,
};

/// An entry's error: the field and the reason (the caller adds the index and name).
type Err<'e> = &'e dyn Fn(&'static str, String) -> TocError;

/// The metadata every non-chunk entry carries, checked.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    rdev: u32,
    size: i64,
}

impl State {
    pub(super) fn entry(&mut self, raw: Raw<'_>) -> Result<(), TocError> {
        let index = self.index;
        // The printable name is only built for an error (it costs more than the parse).
        let shown =
            |raw_name: &Option<Cow<'_, str>>| raw_name.as_deref().map(|n| tree::show(n.as_bytes())).unwrap_or_default();
        let err =
            |field: &'static str, reason: String| TocError::Entry { index, name: shown(&raw.name), field, reason };
        if let Some((field, reason)) = &raw.bad {
            return Err(err(field, reason.clone()));
        }
        let typ = raw.typ.as_deref().ok_or_else(|| err("type", "missing".into()))?;
        check_common(&raw, &err)?;
        if typ == "chunk" {
            return self.chunk(&raw, &err);
        }
        self.last_reg = None;

        let name = raw.name.as_deref().ok_or_else(|| err("name", "missing".into()))?;
        if name.is_empty() {
            return Err(err("name", "empty name".into()));
        }
        // Validated by the tree on insertion (whiteout and hard link paths are checked below).
        let path = normalize(name);

        let is_hardlink = typ == "hardlink"
            || (typ == "reg"
                && raw.link_name.as_deref().is_some_and(|l| !l.is_empty())
                && raw.digest.as_deref().unwrap_or("").is_empty()
                && raw.x_payload.is_none()
                && raw.x_content.is_none());
        let ftype = if is_hardlink {
            S_IFREG
        } else {
            file_type_of(typ).ok_or_else(|| err("type", format!("unknown type {:?}", trunc(typ))))?
        };
        let meta = self.meta(&raw, typ, ftype, is_hardlink, &err)?;

        // eStargz bookkeeping entries are not part of the tree.
        if self.flavor == Flavor::Estargz
            && matches!(path, Some(b".prefetch.landmark" | b".no.prefetch.landmark" | b"stargz.index.json"))
        {
            return Ok(());
        }
        if let Some(p) = path.filter(|_| !self.keep_whiteouts) {
            if self.oci_whiteout(p, &meta, || shown(&raw.name), &err)? {
                return Ok(());
            }
        }
        if is_hardlink {
            return self.hardlink(path, &raw, &err);
        }

        let mut entry = Entry {
            inode: Inode {
                mode: ftype | (meta.mode & 0o7777),
                uid: meta.uid,
                gid: meta.gid,
                rdev: if ftype == S_IFCHR || ftype == S_IFBLK { meta.rdev } else { 0 },
                size: 0,
                mtime: meta.mtime,
                mtime_nsec: meta.mtime_nsec,
            },
            ..Entry::default()
        };
        match ftype {
            S_IFREG => regular_content(&raw, meta.size as u64, &mut entry, &err)?,
            S_IFLNK => symlink_target(&raw, &mut entry, &err)?,
            _ => {}
        }
        if let Some(xs) = &raw.xattrs {
            entry.xattrs = decode_xattrs(xs).map_err(|(f, r)| err(f, r))?;
        }
        match path {
            None => self.tree.set_root(entry).map_err(|e| {
                err(if matches!(e, TreeError::BadField { .. }) { "type" } else { "name" }, tree_reason(&e))
            })?,
            Some(p) => {
                self.insert(p, entry).map_err(|e| err("name", tree_reason(&e)))?;
            }
        }
        if ftype == S_IFREG {
            self.last_reg = path.map(|p| p.to_vec());
        }
        Ok(())
    }

    /// A `chunk` entry adds nothing to the tree; it must follow its regular file.
    fn chunk(&self, raw: &Raw<'_>, err: Err<'_>) -> Result<(), TocError> {
        let Some(last) = &self.last_reg else {
            return Err(err("type", "chunk entry does not follow a regular file entry".into()));
        };
        if let Some(n) = raw.name.as_deref() {
            // eStargz chunks may leave the name out; when given it must be the file's.
            if normalize(n) != Some(last.as_slice()) {
                return Err(err(
                    "name",
                    format!("chunk entry does not follow its file (previous file is {})", tree::show(last)),
                ));
            }
        }
        if let Some(t) = raw.chunk_type.as_deref() {
            if !t.is_empty() && t != "zeros" {
                return Err(err("chunkType", format!("unknown chunk type {:?}", trunc(t))));
            }
        }
        Ok(())
    }

    /// Values checked for every non-chunk entry (hard links included).
    fn meta(&self, raw: &Raw<'_>, typ: &str, ftype: u32, is_hardlink: bool, err: Err<'_>) -> Result<Meta, TocError> {
        let mode = raw.mode.unwrap_or(0);
        if !(0..=0o177777).contains(&mode) {
            return Err(err("mode", format!("{mode} is out of range")));
        }
        let mode = mode as u32;
        if !is_hardlink && mode & S_IFMT != 0 && mode & S_IFMT != ftype {
            return Err(err("mode", format!("file type bits of mode 0o{mode:o} contradict type {typ:?}")));
        }
        let id = |field: &'static str, v: Option<i64>| -> Result<u32, TocError> {
            let v = v.unwrap_or(0);
            u32::try_from(v).map_err(|_| err(field, format!("{v} is out of range")))
        };
        let uid = id("uid", raw.uid)?;
        let gid = id("gid", raw.gid)?;
        let (mtime, mtime_nsec) = match raw.modtime.as_deref() {
            None => (0, 0),
            Some("") if self.flavor == Flavor::Estargz => (0, 0),
            Some(t) => parse_time(t).map_err(|r| err("modtime", r))?,
        };
        for (field, t) in [("accesstime", &raw.atime), ("changetime", &raw.ctime)] {
            if let Some(t) = t {
                parse_time(t).map_err(|r| err(field, r))?;
            }
        }
        let rdev = encode_dev(raw.dev_major.unwrap_or(0), raw.dev_minor.unwrap_or(0))
            .map_err(|r| err("devMajor/devMinor", r))?;
        let size = raw.size.unwrap_or(0);
        if size < 0 {
            return Err(err("size", format!("negative size {size}")));
        }
        Ok(Meta { mode, uid, gid, mtime, mtime_nsec, rdev, size })
    }

    /// OCI whiteout markers (`.wh..wh..opq`, `.wh..wh.*`, `.wh.NAME`) are set aside until the
    /// whole layer is read; returns whether the entry was one.
    fn oci_whiteout(
        &mut self,
        p: &[u8],
        meta: &Meta,
        shown: impl Fn() -> String,
        err: Err<'_>,
    ) -> Result<bool, TocError> {
        let index = self.index;
        let hp = match whiteout::classify(p) {
            whiteout::Name::Plain => return Ok(false),
            whiteout::Name::Meta => return Ok(true),
            whiteout::Name::Opaque(dir) => {
                self.opaques.push(PendingOpaque { at: (index, shown()), dir: dir.to_vec() });
                return Ok(true);
            }
            whiteout::Name::Hides(hp) => hp,
        };
        check_path(&hp).map_err(|e| err("name", format!("whiteout names an invalid path: {}", tree_reason(&e))))?;
        if self.whiteouts.len() >= self.tree.limits.max_entries {
            return Err(err("name", format!("too many entries (limit {})", self.tree.limits.max_entries)));
        }
        let (uid, gid, mtime, mtime_nsec) = (meta.uid, meta.gid, meta.mtime, meta.mtime_nsec);
        self.whiteouts.push(PendingWhiteout {
            at: (index, shown()),
            path: hp,
            inode: Inode { mode: S_IFCHR, uid, gid, rdev: 0, size: 0, mtime, mtime_nsec },
        });
        Ok(true)
    }

    /// A hard link to `linkName`, which must already exist (and not be a directory).
    fn hardlink(&mut self, path: Option<&[u8]>, raw: &Raw<'_>, err: Err<'_>) -> Result<(), TocError> {
        let target = raw
            .link_name
            .as_deref()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| err("linkName", "hard link without a target".into()))?;
        let p = path.ok_or_else(|| err("name", "the root cannot be a hard link".into()))?;
        let t = normalize(target).ok_or_else(|| err("linkName", "hard link to the root directory".into()))?;
        check_path(t).map_err(|e| err("linkName", tree_reason(&e)))?;
        if t == p {
            return Err(err("linkName", "hard link to itself".into()));
        }
        self.tree.insert_hardlink(p, t).map_err(|e| {
            let field = if matches!(e, TreeError::BadHardlink { .. }) { "linkName" } else { "name" };
            err(field, tree_reason(&e))
        })?;
        Ok(())
    }

    /// [`crate::tree::Tree::insert`], the parent found from the previous insertion's directories
    /// (entries come directory by directory in tar order).
    fn insert(&mut self, p: &[u8], entry: Entry) -> Result<tree::NodeId, TreeError> {
        self.tree.insert_via(&mut self.cursor, p, entry)
    }
}

/// Fields every entry carries are checked whatever the type.
fn check_common(raw: &Raw<'_>, err: Err<'_>) -> Result<(), TocError> {
    for (field, d) in [("digest", &raw.digest), ("chunkDigest", &raw.chunk_digest)] {
        if let Some(d) = d {
            if !d.is_empty() {
                parse_digest(d).map_err(|r| err(field, r))?;
            }
        }
    }
    if let Some(s) = raw.chunk_size {
        if s < 0 {
            return Err(err("chunkSize", format!("negative size {s}")));
        }
    }
    Ok(())
}

/// A regular file's content: inline (`x-content`), an object path (`x-payload`, or `digest`
/// → `H[0:2]/H[2:]`), or nothing for an empty file.
fn regular_content(raw: &Raw<'_>, mut size: u64, entry: &mut Entry, err: Err<'_>) -> Result<(), TocError> {
    if let Some(c) = raw.x_content.as_deref() {
        let content = decode_base64(c).map_err(|r| err("x-content", r))?;
        if content.len() > INLINE_CONTENT_MAX {
            return Err(err(
                "x-content",
                format!("inline content of {} bytes (limit {INLINE_CONTENT_MAX})", content.len()),
            ));
        }
        if raw.size.is_some() && size != content.len() as u64 {
            return Err(err("size", format!("size {size} differs from the {} bytes of x-content", content.len())));
        }
        size = content.len() as u64;
        if !content.is_empty() {
            entry.content = Some(content);
        }
    }
    if let Some(p) = raw.x_payload.as_deref() {
        let pb = p.as_bytes();
        check_path(pb)
            .map_err(|e| err("x-payload", format!("not a clean relative object path: {}", tree_reason(&e))))?;
        entry.payload = Some(pb.to_vec());
    } else if let Some(d) = raw.digest.as_deref().filter(|d| !d.is_empty()) {
        let hex = parse_digest(d).map_err(|r| err("digest", r))?;
        let mut p = Vec::with_capacity(65);
        p.extend_from_slice(&hex.as_bytes()[..2]);
        p.push(b'/');
        p.extend_from_slice(&hex.as_bytes()[2..]);
        entry.payload = Some(p);
    }
    if size > 0 && entry.payload.is_none() && entry.content.is_none() {
        return Err(err("digest", format!("regular file of {size} bytes has no digest")));
    }
    entry.inode.size = size;
    Ok(())
}

/// A symlink's target (`linkName`): not empty, shorter than PATH_MAX, no NUL.
fn symlink_target(raw: &Raw<'_>, entry: &mut Entry, err: Err<'_>) -> Result<(), TocError> {
    let t = raw.link_name.as_deref().unwrap_or("");
    if t.is_empty() {
        return Err(err("linkName", "symlink without a target".into()));
    }
    if t.len() >= PATH_MAX {
        return Err(err("linkName", format!("symlink target of {} bytes (limit {})", t.len(), PATH_MAX - 1)));
    }
    if t.contains('\0') {
        return Err(err("linkName", "NUL byte in symlink target".into()));
    }
    entry.inode.size = t.len() as u64;
    entry.payload = Some(t.as_bytes().to_vec());
    Ok(())
}

/// Decode and validate an `xattrs` object (last duplicate wins, order of first appearance kept).
fn decode_xattrs(xs: &[(Cow<'_, str>, Cow<'_, str>)]) -> Result<Vec<Xattr>, (&'static str, String)> {
    let mut out: Vec<Xattr> = Vec::with_capacity(xs.len());
    for (k, v) in xs {
        let key = k.as_bytes();
        if key.is_empty() {
            return Err(("xattrs", "empty xattr name".into()));
        }
        if key.len() > XATTR_NAME_MAX {
            return Err(("xattrs", format!("xattr name longer than {XATTR_NAME_MAX} bytes")));
        }
        if key.contains(&0) {
            return Err(("xattrs", "NUL byte in xattr name".into()));
        }
        let value = decode_base64(v).map_err(|r| ("xattrs", format!("{}: {r}", tree::show(key))))?;
        if value.len() > XATTR_SIZE_MAX - 1 {
            return Err(("xattrs", format!("{}: value longer than {} bytes", tree::show(key), XATTR_SIZE_MAX - 1)));
        }
        match out.iter_mut().find(|x| x.key == key) {
            Some(x) => x.value = value,
            None => out.push(Xattr { key: key.to_vec(), value }),
        }
        if out.len() > XATTR_BUDGET {
            return Err(("xattrs", format!("xattrs exceed the per-file budget of {XATTR_BUDGET} bytes")));
        }
    }
    let used: usize =
        if out.is_empty() { 0 } else { 12 + out.iter().map(|x| 7 + x.key.len() + x.value.len()).sum::<usize>() };
    if used > XATTR_BUDGET {
        return Err(("xattrs", format!("xattrs exceed the per-file budget of {XATTR_BUDGET} bytes")));
    }
    Ok(out)
}
