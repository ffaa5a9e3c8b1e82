//! An inode's xattrs: the inline and shared entries as stored (with the name filter the kernel
//! consults), then what the writer added taken back out (redirect → payload, metacopy →
//! fs-verity digest, the root's opaque mark, escaped `trusted.overlay.overlay.*` names and
//! escaped whiteouts).
//!
//! Names and values stay borrowed from the image ([`RawXattr`]) until the tree needs its own
//! copies, so that vetting an image allocates nothing per xattr.

use std::cmp::Ordering;

use super::Reader;
use crate::bytes::has_byte;
use crate::erofs::format::*;
use crate::tree::{self, Inode, Xattr};

/// Overlay xattrs the writer adds that were found on an inode.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct OverlayMarks {
    pub(super) metacopy: bool,
    pub(super) root_opaque: bool,
}

/// An xattr as stored, borrowed from the image: its full name is `prefix` + `name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawXattr<'a> {
    /// The name index's prefix (`XATTR_PREFIXES[index]`).
    pub(super) prefix: &'static [u8],
    pub(super) index: u8,
    pub(super) name: &'a [u8],
    pub(super) value: &'a [u8],
}

impl<'a> RawXattr<'a> {
    fn key_len(&self) -> usize {
        self.prefix.len() + self.name.len()
    }

    /// Does the full name start with `p`?
    fn starts_with(&self, p: &[u8]) -> bool {
        match p.split_at_checked(self.prefix.len()) {
            Some((head, rest)) => head == self.prefix && self.name.starts_with(rest),
            None => self.prefix.starts_with(p),
        }
    }

    /// Is the full name `full`?
    pub(super) fn is(&self, full: &[u8]) -> bool {
        full.len() == self.key_len() && self.starts_with(full)
    }

    /// (Out of line: only the user-visible xattrs are compared, and inlined into
    /// `apply_xattrs` it costs the overlay xattrs' path registers.)
    #[inline(never)]
    fn key_cmp(&self, o: &RawXattr<'_>) -> Ordering {
        if self.prefix == o.prefix {
            return self.name.cmp(o.name);
        }
        self.prefix.iter().chain(self.name).cmp(o.prefix.iter().chain(o.name))
    }

    /// The rest of the full name after `trusted.overlay.`, if it starts so. (No name index's
    /// prefix is longer than `trusted.overlay.` and starts with it: `overlay_prefix_split`
    /// tests it, so a longer prefix is never in the overlay namespace.)
    pub(super) fn overlay_rest(&self) -> Option<&'a [u8]> {
        if self.index == XATTR_INDEX_TRUSTED {
            // The prefix is "trusted." (the index names it): eight bytes compared as a word.
            let (head, rest) = self.name.split_first_chunk::<8>()?;
            return (head == b"overlay.").then_some(rest);
        }
        let (head, rest) = OVL_PREFIX.split_at_checked(self.prefix.len())?;
        if head != self.prefix {
            return None;
        }
        self.name.strip_prefix(rest)
    }

    pub(super) fn key(&self) -> Vec<u8> {
        [self.prefix, self.name].concat()
    }

    /// Decoded bytes it costs in the tree (name and value).
    pub(super) fn cost(&self) -> u64 {
        (self.key_len() + self.value.len()) as u64
    }

    pub(super) fn to_xattr(self) -> Xattr {
        Xattr { key: self.key(), value: self.value.to_vec() }
    }
}

/// What an inode's xattrs say once the writer's additions are taken out.
#[derive(Debug, Default)]
pub(super) struct Applied<'a> {
    pub(super) marks: OverlayMarks,
    /// The user-visible xattrs (unescaped), sorted by name.
    pub(super) xattrs: Vec<RawXattr<'a>>,
    /// The redirect's object path (the payload of an external file).
    pub(super) payload: Option<&'a [u8]>,
    pub(super) fsverity_digest: Option<[u8; 32]>,
}

impl<'a> Reader<'a> {
    /// The inline and shared xattrs of an inode, as stored, into `out` (emptied first: the
    /// caller reuses one list for every inode).
    pub(super) fn read_xattrs(&mut self, off: u64, size: u64, out: &mut Vec<RawXattr<'a>>) -> Result<(), String> {
        out.clear();
        let area = self.bytes(off, size).ok_or("xattrs beyond the end of the image")?;
        let (filter, shared) = decode_xattr_ibody_header(area).ok_or("xattr header beyond the end of the image")?;
        let shared = u64::from(shared);
        let mut pos = XATTR_IBODY_HEADER_SIZE as u64 + shared * 4;
        if pos > size {
            return Err(format!("{shared} shared xattrs do not fit in the xattr area"));
        }
        // Room for the shared ones and a few inline ones (both bounded: 255 ids, the area's size).
        out.reserve(shared as usize + 4);
        // With the name filter feature the kernel trusts the inode's filter: a set bit
        // means "no xattr with a name hashing here". One hiding a stored xattr would make
        // the kernel see fewer xattrs than this reader. (`index` is the name's canonical
        // index and `name` the rest: `parse_xattr_entry` made sure.) The first one hiding is
        // noted as the xattrs are read and refused once all of them parsed.
        let filter = if self.xattr_filter { filter } else { 0 };
        let mut hidden: Option<RawXattr<'a>> = None;
        let mut note = |x: RawXattr<'a>, bit: u32| {
            if filter & (1 << bit) != 0 && hidden.is_none() {
                hidden = Some(x);
            }
        };
        while pos < size {
            let (x, len) = parse_xattr_entry(&area[pos as usize..]).map_err(|r| format!("inline xattr: {r}"))?;
            if filter != 0 {
                note(x, filter_bit(&x));
            }
            out.push(x);
            pos += len;
        }
        for i in 0..shared {
            // In bounds: the ids were found to fit in the area above.
            let id = decode_shared_xattr_id(area, i as usize).unwrap_or(0);
            // Many inodes share a few xattrs: each is parsed (and hashed) once while it stays
            // in its cache slot (the image does not change while it is read).
            let slot = &mut self.shared_cache[id as usize % SHARED_CACHE];
            let (x, bit) = match *slot {
                Some((cid, x, bit)) if cid == id => (x, bit),
                _ => {
                    let eoff = self.xattr_off + u64::from(id) * 4;
                    let rest = usize::try_from(eoff).ok().and_then(|o| self.d.get(o..)).unwrap_or(&[]);
                    let (x, _) = parse_xattr_entry(rest).map_err(|r| format!("shared xattr {id}: {r}"))?;
                    let bit = filter_bit(&x);
                    *slot = Some((id, x, bit));
                    (x, bit)
                }
            };
            if filter != 0 {
                note(x, bit);
            }
            out.push(x);
        }
        if let Some(x) = hidden {
            return Err(format!("the xattr name filter hides {}", tree::show(&x.key())));
        }
        Ok(())
    }

    /// Interpret the overlay xattrs the writer generates into `out` (reset first; its list is
    /// reused from inode to inode), keeping the user-visible xattrs there. (Filled in place
    /// rather than returned: a returned `Applied` is stored field by field and read back with
    /// wider loads, which the store buffer cannot forward.)
    pub(super) fn apply_xattrs(
        &self,
        nid: u64,
        raw: &[RawXattr<'a>],
        external: bool,
        out: &mut Applied<'a>,
    ) -> Result<(), String> {
        out.xattrs.clear();
        out.marks = OverlayMarks::default();
        out.payload = None;
        out.fsverity_digest = None;
        for x in raw {
            // One look at the name: is it in the overlay namespace, and what follows there.
            let x = match x.overlay_rest() {
                None => *x,
                Some(b"redirect") => {
                    if !external {
                        return Err("overlay redirect xattr on a file that is not an external regular file".into());
                    }
                    // The writer writes "/" + payload; overlayfs would take anything else
                    // relative to the file's directory.
                    let Some(v) = x.value.strip_prefix(b"/") else {
                        return Err("overlay redirect is not an absolute path".into());
                    };
                    if v.is_empty() {
                        return Err("empty overlay redirect".into());
                    }
                    // Only an object below the data layers, as the writer's payloads name them
                    // (this refuses a NUL byte too).
                    tree::check_object_path(v)
                        .map_err(|r| format!("overlay redirect {} is not an object path ({r})", tree::show(x.value)))?;
                    out.payload = Some(v);
                    continue;
                }
                Some(b"metacopy") => {
                    if !external {
                        return Err("overlay metacopy xattr on a file that is not an external regular file".into());
                    }
                    out.marks.metacopy = true;
                    match x.value.len() {
                        0 => {}
                        METACOPY_DIGEST_SIZE if x.value[..4] == METACOPY_HEADER => {
                            let mut d = [0u8; 32];
                            d.copy_from_slice(&x.value[4..]);
                            out.fsverity_digest = Some(d);
                        }
                        n => return Err(format!("malformed overlay metacopy xattr ({n} bytes)")),
                    }
                    continue;
                }
                Some(rest) if rest.starts_with(b"overlay.") => {
                    // trusted.overlay.overlay.NAME → trusted.overlay.NAME: the same prefix (the
                    // name index of "trusted."), the name without one "overlay.".
                    let cut = OVL_ESCAPED_PREFIX.len() - OVL_PREFIX.len();
                    match x.name.get(cut..) {
                        Some(name) if x.prefix.len() + cut <= OVL_PREFIX.len() => RawXattr { name, ..*x },
                        _ => return Err(format!("unexpected overlay xattr {}", tree::show(&x.key()))),
                    }
                }
                Some(rest) => {
                    if nid == self.root_nid && rest == b"opaque" && x.value == b"y" {
                        out.marks.root_opaque = true;
                        continue;
                    }
                    return Err(format!("unexpected overlay xattr {}", tree::show(&x.key())));
                }
            };
            if out.xattrs.iter().any(|y| y.key_len() == x.key_len() && y.key_cmp(&x).is_eq()) {
                return Err(format!("duplicate xattr {}", tree::show(&x.key())));
            }
            out.xattrs.push(x);
        }
        out.xattrs.sort_by(|a, b| a.key_cmp(b));
        Ok(())
    }

    /// An escaped user whiteout (empty regular file with both whiteout markers) becomes a
    /// 0/0 character device again.
    pub(super) fn unescape_whiteout(&self, inode: &mut Inode, xattrs: &mut Vec<RawXattr<'_>>) -> bool {
        let has = |k: &[u8]| xattrs.iter().any(|x| x.is(k) && x.value.is_empty());
        if !(inode.is_reg() && inode.size == 0 && has(OVL_WHITEOUT) && has(USER_OVL_WHITEOUT)) {
            return false;
        }
        xattrs.retain(|x| !x.is(OVL_WHITEOUT) && !x.is(USER_OVL_WHITEOUT));
        inode.mode = tree::S_IFCHR | (inode.mode & !tree::S_IFMT);
        inode.rdev = 0;
        true
    }
}

/// Slots of the reader's cache of parsed shared xattrs (direct-mapped by id).
pub(super) const SHARED_CACHE: usize = 16;

/// A parsed shared xattr in the cache: (id, xattr, its bit in the name filter).
pub(super) type SharedSlot<'a> = Option<(u32, RawXattr<'a>, u32)>;

/// The bit of an xattr's name in an inode's name filter, as the kernel computes it: `index`
/// the name index, `name` the rest of the name.
const fn name_filter_bit(index: u8, name: &[u8]) -> u32 {
    xxh32(name, XATTR_FILTER_SEED.wrapping_add(index as u32)) % XATTR_FILTER_BITS
}

/// The names most inodes of a composefs image carry inline, with their filter bits computed
/// at build time (by the same function).
const KNOWN_FILTER_BITS: [(u8, &[u8], u32); 3] = {
    const fn known(index: u8, name: &'static [u8]) -> (u8, &'static [u8], u32) {
        (index, name, name_filter_bit(index, name))
    }
    [
        known(XATTR_INDEX_TRUSTED, b"overlay.redirect"),
        known(XATTR_INDEX_TRUSTED, b"overlay.metacopy"),
        known(XATTR_INDEX_SECURITY, b"selinux"),
    ]
};

/// The bit of an xattr's name in an inode's name filter, as the kernel computes it (for the
/// names in [`KNOWN_FILTER_BITS`], computed at build time).
pub(super) fn filter_bit(x: &RawXattr<'_>) -> u32 {
    for (index, name, bit) in KNOWN_FILTER_BITS {
        if x.index == index && x.name == name {
            return bit;
        }
    }
    name_filter_bit(x.index, x.name)
}

/// One of the markers the writer puts on a directory holding a whiteout (the tree does not
/// show them): the two `whiteouts` xattrs, empty, and in format 1 the two `opaque=x`.
pub(super) fn is_whiteout_marker(k: &[u8], v: &[u8], v1: bool) -> bool {
    ((k == OVL_WHITEOUTS || k == USER_OVL_WHITEOUTS) && v.is_empty())
        || (v1 && (k == OVL_OPAQUE || k == USER_OVL_OPAQUE) && v == b"x")
}

/// [`is_whiteout_marker`] of a borrowed xattr.
pub(super) fn is_raw_whiteout_marker(x: &RawXattr<'_>, v1: bool) -> bool {
    ((x.is(OVL_WHITEOUTS) || x.is(USER_OVL_WHITEOUTS)) && x.value.is_empty())
        || (v1 && (x.is(OVL_OPAQUE) || x.is(USER_OVL_OPAQUE)) && x.value == b"x")
}

/// Does a directory carry the markers the writer puts on a directory holding a whiteout?
pub(super) fn has_whiteout_markers(xattrs: &[RawXattr<'_>], v1: bool) -> bool {
    let has = |k: &[u8], v: &[u8]| xattrs.iter().any(|x| x.is(k) && x.value == v);
    has(OVL_WHITEOUTS, b"")
        && has(USER_OVL_WHITEOUTS, b"")
        && (!v1 || (has(OVL_OPAQUE, b"x") && has(USER_OVL_OPAQUE, b"x")))
}

/// The name indexes whose prefix `xattr_prefix_split` maps back to them whatever follows.
pub(super) const CANONICAL_INDEXES: [u8; 5] = [
    XATTR_INDEX_USER,
    XATTR_INDEX_POSIX_ACL_ACCESS,
    XATTR_INDEX_POSIX_ACL_DEFAULT,
    XATTR_INDEX_TRUSTED,
    XATTR_INDEX_SECURITY,
];

/// Decode one xattr entry at the start of `b`: the xattr and the entry's size rounded to 4.
#[inline(always)]
pub(super) fn parse_xattr_entry(b: &[u8]) -> Result<(RawXattr<'_>, u64), String> {
    let (name_len, index, value_len) = decode_xattr_entry(b).ok_or("entry header beyond the end")?;
    let (name_len, value_len) = (usize::from(name_len), usize::from(value_len));
    let end = XATTR_ENTRY_SIZE + name_len + value_len;
    if end > b.len() {
        return Err("entry runs past the end".into());
    }
    let name = &b[XATTR_ENTRY_SIZE..XATTR_ENTRY_SIZE + name_len];
    let value = &b[XATTR_ENTRY_SIZE + name_len..end];
    let prefix = XATTR_PREFIXES
        .get(usize::from(index))
        .ok_or_else(|| format!("unknown name index {index:#x} (long prefixes are not used by composefs)"))?;
    let key_len = prefix.len() + name.len();
    if key_len == 0 {
        return Err("empty xattr name".into());
    }
    if key_len > tree::XATTR_NAME_MAX {
        return Err(format!("xattr name longer than {} bytes", tree::XATTR_NAME_MAX));
    }
    if has_byte(name, 0) {
        return Err("NUL byte in xattr name".into());
    }
    // The kernel finds an xattr only under the index its name prefix maps to (and shows
    // none under index 0 or "lustre."), so any other encoding would make it see
    // something else than this reader; the writer never produces one. A name stored under
    // the index of user., the ACLs, trusted. or security. maps back to that index whatever
    // follows the prefix (no such prefix starts with another: `canonical_prefixes` tests it);
    // for index 0 and lustre. the full name is put together on the stack (at most
    // XATTR_NAME_MAX bytes) and split as the writer splits names.
    if !CANONICAL_INDEXES.contains(&index) {
        check_noncanonical(prefix, name, index)?;
    }
    Ok((RawXattr { prefix, index, name, value }, (end as u64).div_ceil(4) * 4))
}

/// A name stored under index 0 or `lustre.` must split back to that index (see
/// [`parse_xattr_entry`]; out of line: the writer never uses these indexes).
#[cold]
#[inline(never)]
fn check_noncanonical(prefix: &[u8], name: &[u8], index: u8) -> Result<(), String> {
    let key_len = prefix.len() + name.len();
    let mut buf = [0u8; tree::XATTR_NAME_MAX];
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..key_len].copy_from_slice(name);
    let key = &buf[..key_len];
    let (canonical, _) = xattr_prefix_split(key);
    if canonical != index {
        return Err(format!("{} stored under name index {index}, not {canonical}", tree::show(key)));
    }
    Ok(())
}
