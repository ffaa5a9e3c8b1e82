//! An inode's xattrs: the inline and shared entries as stored (with the name filter the kernel
//! consults), then what the writer added taken back out (redirect → payload, metacopy →
//! fs-verity digest, the root's opaque mark, escaped `trusted.overlay.overlay.*` names and
//! escaped whiteouts).

use super::Reader;
use crate::erofs::format::*;
use crate::tree::{self, Entry, Inode, Xattr};

/// Overlay xattrs the writer adds that were found on an inode.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct OverlayMarks {
    pub(super) metacopy: bool,
    pub(super) root_opaque: bool,
}

/// (full name, value) of an xattr as stored.
pub(super) type RawXattr = (Vec<u8>, Vec<u8>);

impl Reader<'_> {
    /// Raw (full name, value) pairs of an inode's inline and shared xattrs.
    pub(super) fn read_xattrs(&self, off: u64, size: u64) -> Result<Vec<RawXattr>, String> {
        let area = self.bytes(off, size).ok_or("xattrs beyond the end of the image")?;
        let (filter, shared) = decode_xattr_ibody_header(area).ok_or("xattr header beyond the end of the image")?;
        let shared = u64::from(shared);
        let mut pos = XATTR_IBODY_HEADER_SIZE as u64 + shared * 4;
        if pos > size {
            return Err(format!("{shared} shared xattrs do not fit in the xattr area"));
        }
        let mut out = Vec::new();
        while pos < size {
            let (key, value, len) =
                parse_xattr_entry(&area[pos as usize..]).map_err(|r| format!("inline xattr: {r}"))?;
            out.push((key, value));
            pos += len;
        }
        for i in 0..shared {
            // In bounds: the ids were found to fit in the area above.
            let id = decode_shared_xattr_id(area, i as usize).unwrap_or(0);
            let eoff = self.xattr_off + u64::from(id) * 4;
            let rest = usize::try_from(eoff).ok().and_then(|o| self.d.get(o..)).unwrap_or(&[]);
            let (key, value, _) = parse_xattr_entry(rest).map_err(|r| format!("shared xattr {id}: {r}"))?;
            out.push((key, value));
        }
        // With the name filter feature the kernel trusts the inode's filter: a set bit
        // means "no xattr with a name hashing here". One hiding a stored xattr would make
        // the kernel see fewer xattrs than this reader.
        if self.xattr_filter {
            for (key, _) in &out {
                let (index, suffix) = xattr_prefix_split(key);
                let bit = xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(u32::from(index))) % XATTR_FILTER_BITS;
                if filter & (1 << bit) != 0 {
                    return Err(format!("the xattr name filter hides {}", tree::show(key)));
                }
            }
        }
        Ok(out)
    }

    /// Interpret the overlay xattrs the writer generates and keep the user-visible ones.
    pub(super) fn apply_xattrs(
        &self,
        nid: u64,
        entry: &mut Entry,
        raw: Vec<RawXattr>,
        external: bool,
    ) -> Result<OverlayMarks, String> {
        let mut marks = OverlayMarks::default();
        for (key, value) in raw {
            let key = if key == OVL_REDIRECT {
                if !external {
                    return Err("overlay redirect xattr on a file that is not an external regular file".into());
                }
                // The writer writes "/" + payload; overlayfs would take anything else
                // relative to the file's directory.
                let Some(v) = value.strip_prefix(b"/") else {
                    return Err("overlay redirect is not an absolute path".into());
                };
                if v.is_empty() || v.contains(&0) {
                    return Err("empty or NUL-containing overlay redirect".into());
                }
                // Only an object below the data layers, as the writer's payloads name them.
                tree::check_object_path(v)
                    .map_err(|r| format!("overlay redirect {} is not an object path ({r})", tree::show(&value)))?;
                entry.payload = Some(v.to_vec());
                continue;
            } else if key == OVL_METACOPY {
                if !external {
                    return Err("overlay metacopy xattr on a file that is not an external regular file".into());
                }
                marks.metacopy = true;
                match value.len() {
                    0 => {}
                    METACOPY_DIGEST_SIZE if value[..4] == METACOPY_HEADER => {
                        let mut d = [0u8; 32];
                        d.copy_from_slice(&value[4..]);
                        entry.fsverity_digest = Some(d);
                    }
                    n => return Err(format!("malformed overlay metacopy xattr ({n} bytes)")),
                }
                continue;
            } else if let Some(rest) = key.strip_prefix(OVL_ESCAPED_PREFIX) {
                [OVL_PREFIX, rest].concat()
            } else if key.starts_with(OVL_PREFIX) {
                if nid == self.root_nid && key == OVL_OPAQUE && value == b"y" {
                    marks.root_opaque = true;
                    continue;
                }
                return Err(format!("unexpected overlay xattr {}", tree::show(&key)));
            } else {
                key
            };
            if entry.xattrs.iter().any(|x| x.key == key) {
                return Err(format!("duplicate xattr {}", tree::show(&key)));
            }
            entry.xattrs.push(Xattr { key, value });
        }
        entry.xattrs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(marks)
    }

    /// An escaped user whiteout (empty regular file with both whiteout markers) becomes a
    /// 0/0 character device again.
    pub(super) fn unescape_whiteout(&self, inode: &mut Inode, entry: &mut Entry) -> bool {
        let has = |k: &[u8]| entry.xattrs.iter().any(|x| x.key == k && x.value.is_empty());
        if !(inode.is_reg() && inode.size == 0 && has(OVL_WHITEOUT) && has(USER_OVL_WHITEOUT)) {
            return false;
        }
        entry.xattrs.retain(|x| x.key != OVL_WHITEOUT && x.key != USER_OVL_WHITEOUT);
        inode.mode = tree::S_IFCHR | (inode.mode & !tree::S_IFMT);
        inode.rdev = 0;
        true
    }
}

/// Decode one xattr entry at the start of `b`: (full name, value, entry size rounded to 4).
pub(super) fn parse_xattr_entry(b: &[u8]) -> Result<(Vec<u8>, Vec<u8>, u64), String> {
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
    let key = [*prefix, name].concat();
    if key.is_empty() {
        return Err("empty xattr name".into());
    }
    if key.len() > tree::XATTR_NAME_MAX {
        return Err(format!("xattr name longer than {} bytes", tree::XATTR_NAME_MAX));
    }
    if key.contains(&0) {
        return Err("NUL byte in xattr name".into());
    }
    // The kernel finds an xattr only under the index its name prefix maps to (and shows
    // none under index 0 or "lustre."), so any other encoding would make it see
    // something else than this reader; the writer never produces one.
    let (canonical, _) = xattr_prefix_split(&key);
    if canonical != index {
        return Err(format!("{} stored under name index {index}, not {canonical}", tree::show(&key)));
    }
    Ok((key, value.to_vec(), (end as u64).div_ceil(4) * 4))
}
