//! A directory's entries: its data blocks and inline tail, each a table of 12-byte entries
//! followed by the names, in sorted order.

use super::inode::DirData;
use super::{ReadError, Reader};
use crate::bytes::has_either_in;
use crate::erofs::format::*;
use crate::tree;

/// A directory entry: (name borrowed from the image, nid, file type).
pub(super) type Dirent<'a> = (&'a [u8], u64, u8);

impl<'a> Reader<'a> {
    /// Read the entries of directory `nid` into `out` (emptied first: the walk reuses one list
    /// for every directory), in on-disk order (names borrowed from the image). Errors carry no
    /// path yet.
    pub(super) fn read_dir(&mut self, nid: u64, dd: DirData, out: &mut Vec<Dirent<'a>>) -> Result<(), ReadError> {
        let bad = |reason: String| ReadError::Dir { nid, path: String::new(), reason };
        // Every entry takes at least 13 bytes (its 12-byte record and a name): room for the
        // most this directory's data can hold (inside the image: claimed above) and the
        // directory-entry budget still allows.
        let data_len = dd.blocks_len.saturating_add(dd.tail.map_or(0, |t| t.1));
        let budget = self.limits.max_dirents.saturating_sub(self.dirents);
        let most = usize::try_from((data_len / (DIRENT_SIZE as u64 + 1)).min(budget)).unwrap_or(0);
        out.clear();
        out.reserve(most);
        // The blocks, each whole or the last one partial, then the inline tail.
        let blocks = (0..dd.blocks_len.div_ceil(BLOCK_SIZE)).map(|i| {
            let done = i * BLOCK_SIZE;
            (dd.blocks_off + done, (dd.blocks_len - done).min(BLOCK_SIZE))
        });
        for (off, len) in blocks.chain(dd.tail) {
            let block = self.bytes(off, len).ok_or_else(|| bad("directory data beyond the image".into()))?;
            let n = parse_dirent_block(block, out, self.limits.max_dirents.saturating_sub(self.dirents))
                .map_err(|r| bad(format!("block at offset {off}: {r}")))?;
            self.dirents += n;
        }
        for w in out.windows(2) {
            if w[0].0 >= w[1].0 {
                return Err(bad(format!("entries not in sorted order at {}", tree::show(w[1].0))));
            }
        }
        Ok(())
    }
}

/// Parse one directory block, appending (name, nid, file type); returns the entry count.
pub(super) fn parse_dirent_block<'b>(b: &'b [u8], out: &mut Vec<Dirent<'b>>, budget: u64) -> Result<u64, String> {
    let first = match decode_dirent(b) {
        Some((_, first, _)) if b.len() >= DIRENT_SIZE => usize::from(first),
        _ => return Err("block shorter than one entry".into()),
    };
    if first < DIRENT_SIZE || first % DIRENT_SIZE != 0 || first > b.len() {
        return Err(format!("bad first name offset {first}"));
    }
    let n = first / DIRENT_SIZE;
    if n as u64 > budget {
        return Err("too many directory entries in the image".into());
    }
    // The entry table (n entries) lies within `first` <= b.len() bytes; each entry is decoded
    // once (its name ends where the next entry's begins; the last one's at a NUL or the end).
    let table = &b[..first];
    let name_off = |e: &[u8]| usize::from(u16::from_le_bytes([e[8], e[9]]));
    for (i, e) in table.chunks_exact(DIRENT_SIZE).enumerate() {
        let nid = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        let (nameoff, ftype) = (name_off(e), e[10]);
        let end = match table.get((i + 1) * DIRENT_SIZE..) {
            Some(next) if !next.is_empty() => name_off(next),
            _ => {
                let rest = b.get(nameoff..).unwrap_or(&[]);
                nameoff + rest.iter().position(|&c| c == 0).unwrap_or(rest.len())
            }
        };
        // Every check at once; which one failed is told apart out of line.
        if nameoff < first
            || end <= nameoff
            || end > b.len()
            || end - nameoff > tree::MAX_NAME_LEN
            || has_either_in(b, nameoff, end, 0, b'/')
        {
            return Err(entry_error(b, first, i, nameoff, end));
        }
        out.push((&b[nameoff..end], nid, ftype));
    }
    Ok(n as u64)
}

/// Why entry `i` of a directory block (its name at `nameoff..end`) was refused: the checks of
/// [`parse_dirent_block`] again, in its order, each with its message. (Out of line: only an
/// image being refused gets here.)
#[cold]
#[inline(never)]
fn entry_error(b: &[u8], first: usize, i: usize, nameoff: usize, end: usize) -> String {
    if nameoff < first || end <= nameoff || end > b.len() {
        return format!("entry {i}: bad name offsets {nameoff}..{end}");
    }
    if end - nameoff > tree::MAX_NAME_LEN {
        return format!("entry {i}: name longer than {} bytes", tree::MAX_NAME_LEN);
    }
    format!("entry {i}: NUL or '/' in name {}", tree::show(&b[nameoff..end]))
}
