//! Hostile-image reader: parses a composefs EROFS image back into the shared [`Tree`] (what
//! `cfsmount inspect` prints, and what the helper vets before it mounts a caller's image).
//!
//! The image is untrusted. Every offset, count and size read from it is bounds-checked with
//! checked arithmetic before use; nothing is allocated from an unchecked on-disk count. The
//! directory walk is an iterative breadth-first search with a depth limit; a directory that
//! is reachable twice (a cycle or an aliased directory) is an error, as are overlapping inodes
//! and data blocks claimed by two inodes, which bounds the work to the size of the image.
//!
//! What the composefs writer adds to an image is removed again so that the tree is the one
//! the user described: the 256 whiteout stubs in the root, the root's `trusted.overlay.opaque`,
//! the `trusted.overlay.metacopy` / `trusted.overlay.redirect` xattrs (turned back into the
//! fs-verity digest and the payload), escaped `trusted.overlay.overlay.*` xattrs (unescaped),
//! and escaped user whiteouts with their directory markers (turned back into 0/0 character
//! devices). For images this project writes, `write_image(read_image(img)) == img`.
//!
//! What the writer always adds is also required (stubs as it writes them, the root's opaque
//! xattr, metacopy on external files, directory nlink, whiteout markers, ...), and xattrs the
//! kernel would not find are refused, so that the kernel shows nothing the tree does not
//! (`tests/root_inspect_kernel.rs` checks this against the real kernel; see docs/reader.md).
//!
//! Hard links: EROFS does not record which name of an inode is the "original". The writer
//! places an inode where its first non-link name sits in its breadth-first walk, so the
//! reader picks as primary the name whose walk position matches the inode's nid order
//! (whiteout markers settle the cases where two names fit).

use std::collections::HashMap;

use thiserror::Error;

use crate::erofs::format::{self, *};
use crate::tree::{self, Entry, Inode, Limits, NodeId, Tree, TreeError, Xattr, ROOT};

/// Limits on what a hostile image may make the reader do.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Entry count and nesting depth of the resulting tree.
    pub tree: Limits,
    /// Most directory entries read in total (including `.` and `..`).
    pub max_dirents: u64,
    /// Most bytes of names, xattrs, payloads and inline content the tree may hold in total
    /// (shared xattrs and hard links are counted once per name that carries them).
    pub max_decoded_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        let tree = Limits::default();
        ReadLimits { tree, max_dirents: (tree.max_entries as u64).saturating_mul(3), max_decoded_bytes: 1 << 30 }
    }
}

/// Facts about the image itself (not part of the tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// composefs format version from the header (0 or 1); write with min = max = this
    /// version to reproduce the image.
    pub composefs_version: u32,
    /// composefs header flags (bit 0: the tree holds POSIX ACLs).
    pub flags: u32,
    /// Number of distinct inodes in the image, including the root whiteout stubs.
    pub inodes: u64,
}

/// Parse a composefs EROFS image into a tree, with the default [`ReadLimits`].
pub fn read_image(bytes: &[u8]) -> Result<Tree, ReadError> {
    read_image_with(bytes, &ReadLimits::default()).map(|(t, _)| t)
}

/// Parse a composefs EROFS image into a tree and report the image's header facts.
pub fn read_image_with(bytes: &[u8], limits: &ReadLimits) -> Result<(Tree, ImageInfo), ReadError> {
    Reader::new(bytes, limits)?.run()
}

// ---------------------------------------------------------------------------------------
// Little-endian field access on checked slices.

fn le16(b: &[u8], off: usize) -> u16 {
    // Callers pass slices whose length they checked; a short slice yields 0 rather than a panic.
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn le64(b: &[u8], off: usize) -> u64 {
    match b.get(off..off + 8) {
        Some(s) => u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        None => 0,
    }
}

/// A fixed-size bit set used to detect overlapping inodes and doubly claimed blocks.
struct Claims {
    bits: Vec<u64>,
    len: u64,
}

impl Claims {
    fn new(len: u64) -> Claims {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        Claims { bits: vec![0; words], len }
    }

    /// Mark `[start, start + count)`; false if out of range or any bit was already set.
    fn claim(&mut self, start: u64, count: u64) -> bool {
        let Some(end) = start.checked_add(count) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        for i in start..end {
            let (w, b) = ((i / 64) as usize, i % 64);
            let Some(word) = self.bits.get_mut(w) else {
                return false;
            };
            if *word & (1 << b) != 0 {
                return false;
            }
            *word |= 1 << b;
        }
        true
    }
}

fn show_path(p: &[u8]) -> String {
    format!("/{}", tree::show(p))
}

/// Path of directory `idx` (built only for error messages: directory records link to
/// their parent instead of holding full paths, which a deep hostile tree would multiply).
fn dir_path(dirs: &[DirRec], mut idx: usize) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    while idx != 0 {
        let Some(d) = dirs.get(idx) else { break };
        parts.push(&d.name);
        idx = d.parent;
    }
    parts.reverse();
    parts.join(&b'/')
}

fn child_path(dirs: &[DirRec], idx: usize, name: &[u8]) -> Vec<u8> {
    let mut p = dir_path(dirs, idx);
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Fill in the path of an inode/directory error raised where only the nid was known.
fn with_path(e: ReadError, path: impl FnOnce() -> Vec<u8>) -> ReadError {
    match e {
        ReadError::Inode { nid, reason, .. } => ReadError::Inode { nid, path: show_path(&path()), reason },
        ReadError::Dir { nid, reason, .. } => ReadError::Dir { nid, path: show_path(&path()), reason },
        e => e,
    }
}

fn entry_bytes(e: &Entry) -> u64 {
    let x: usize = e.xattrs.iter().map(|x| x.key.len() + x.value.len()).sum();
    (x + e.payload.as_ref().map_or(0, Vec::len) + e.content.as_ref().map_or(0, Vec::len)) as u64
}

// ---------------------------------------------------------------------------------------
// Decoding

/// Overlay xattrs the writer adds that were found on an inode.
#[derive(Debug, Default, Clone, Copy)]
struct OverlayMarks {
    metacopy: bool,
    root_opaque: bool,
}

/// (full name, value) of an xattr as stored.
type RawXattr = (Vec<u8>, Vec<u8>);

/// Where a directory's entries live: `full_blocks` whole-or-partial blocks at `blocks_off`
/// covering `blocks_len` bytes, then an optional inline tail.
#[derive(Debug, Clone, Copy)]
struct DirData {
    blocks_off: u64,
    blocks_len: u64,
    tail: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Ino {
    /// `None` once moved into the tree.
    entry: Option<Entry>,
    /// EROFS dirent file type this inode must be listed with (its on-disk type).
    ftype: u8,
    dir: Option<DirData>,
    /// A character device 0/0 as stored: only legitimate as a root whiteout stub.
    raw_whiteout: bool,
    /// An escaped user whiteout turned back into a 0/0 character device.
    user_whiteout: bool,
    /// Number of directory entries naming this inode.
    names: u32,
    /// st_nlink as stored.
    nlink: u32,
}

/// Decoded inodes by nid: a dense index over the image's inode slots (nids of inodes that
/// exist are bounded by the image size) into a list, instead of hashing every lookup.
struct InodeTable {
    index: Vec<u32>,
    list: Vec<Ino>,
}

impl InodeTable {
    fn new(slots: u64) -> InodeTable {
        InodeTable { index: vec![u32::MAX; usize::try_from(slots).unwrap_or(0)], list: Vec::new() }
    }

    fn pos(&self, nid: &u64) -> Option<usize> {
        let i = *self.index.get(usize::try_from(*nid).ok()?)?;
        (i != u32::MAX).then_some(i as usize)
    }

    fn contains_key(&self, nid: &u64) -> bool {
        self.pos(nid).is_some()
    }

    fn get(&self, nid: &u64) -> Option<&Ino> {
        self.list.get(self.pos(nid)?)
    }

    fn get_mut(&mut self, nid: &u64) -> Option<&mut Ino> {
        let p = self.pos(nid)?;
        self.list.get_mut(p)
    }

    /// Only called for nids whose inode decoded, hence inside the slot range.
    fn insert(&mut self, nid: u64, ino: Ino) {
        let Some(slot) = usize::try_from(nid).ok().and_then(|n| self.index.get_mut(n)) else {
            return;
        };
        *slot = self.list.len() as u32;
        self.list.push(ino);
    }

    fn nids_in_order(&self) -> Vec<u64> {
        let mut v = Vec::with_capacity(self.list.len());
        for (nid, &i) in self.index.iter().enumerate() {
            if i != u32::MAX {
                v.push(nid as u64);
            }
        }
        v
    }

    fn len(&self) -> usize {
        self.list.len()
    }
}

struct DirRec {
    nid: u64,
    /// Index of the parent directory's record (0, the root, for the root itself).
    parent: usize,
    name: Vec<u8>,
    /// (name, child nid) in on-disk order, without `.`/`..` and without whiteout stubs.
    children: Vec<(Vec<u8>, u64)>,
}

struct Reader<'a> {
    d: &'a [u8],
    limits: ReadLimits,
    meta_off: u64,
    xattr_off: u64,
    build_time: i64,
    build_nsec: u32,
    version: u32,
    flags: u32,
    root_nid: u64,
    /// The superblock enables the xattr name filter (the kernel then consults it).
    xattr_filter: bool,
    slots: Claims,
    blocks: Claims,
    inodes: InodeTable,
    dirents: u64,
    decoded: u64,
}

impl<'a> Reader<'a> {
    fn new(d: &'a [u8], limits: &ReadLimits) -> Result<Reader<'a>, ReadError> {
        let len = d.len() as u64;
        let header = match ImageHeader::decode(d) {
            Err(HeaderError::Short { len }) => return Err(ReadError::TooSmall { len }),
            h => h?,
        };
        header.check_composefs(len)?;
        let meta_off = header.meta_offset();
        Ok(Reader {
            d,
            limits: *limits,
            meta_off,
            xattr_off: header.xattr_offset(),
            build_time: header.sb.build_time as i64,
            build_nsec: header.sb.build_time_nsec,
            version: header.format_version(),
            flags: header.composefs.flags,
            root_nid: u64::from(header.sb.root_nid),
            xattr_filter: header.xattr_filter(),
            slots: Claims::new((len - meta_off) / SLOT_SIZE + 1),
            blocks: Claims::new(len.div_ceil(BLOCK_SIZE)),
            inodes: InodeTable::new((len - meta_off) / SLOT_SIZE + 1),
            dirents: 0,
            decoded: 0,
        })
    }

    fn bytes(&self, off: u64, len: u64) -> Option<&'a [u8]> {
        let end = off.checked_add(len)?;
        self.d.get(usize::try_from(off).ok()?..usize::try_from(end).ok()?)
    }

    fn budget(&mut self, n: u64) -> Result<(), ReadError> {
        self.decoded = self.decoded.saturating_add(n);
        if self.decoded > self.limits.max_decoded_bytes {
            return Err(ReadError::Limit(format!(
                "more than {} bytes of names, xattrs and contents",
                self.limits.max_decoded_bytes
            )));
        }
        Ok(())
    }

    /// Decode the inode at `nid` (once). Errors carry no path yet (see [`with_path`]).
    fn load(&mut self, nid: u64) -> Result<(), ReadError> {
        if self.inodes.contains_key(&nid) {
            return Ok(());
        }
        let ino = self.decode(nid)?;
        self.inodes.insert(nid, ino);
        Ok(())
    }

    fn decode(&mut self, nid: u64) -> Result<Ino, ReadError> {
        let bad = |reason: String| ReadError::Inode { nid, path: String::new(), reason };
        let off = nid
            .checked_mul(SLOT_SIZE)
            .and_then(|o| o.checked_add(self.meta_off))
            .ok_or_else(|| bad("nid out of range".into()))?;
        let head = self
            .bytes(off, INODE_COMPACT_SIZE as u64)
            .ok_or_else(|| bad("inode beyond the end of the image".into()))?;
        let format = le16(head, 0);
        if format & !I_FORMAT_ALL != 0 {
            return Err(bad(format!("unknown inode format bits {format:#x}")));
        }
        let compact = format & 1 == 0;
        let layout = (format >> 1) & 7;
        let isize = if compact { INODE_COMPACT_SIZE } else { INODE_EXTENDED_SIZE } as u64;
        let raw = self.bytes(off, isize).ok_or_else(|| bad("inode beyond the end of the image".into()))?;
        let icount = le16(raw, 2);
        let mode = u32::from(le16(raw, 4));
        let i_u = le32(raw, 16);
        let (size, uid, gid, mtime, mtime_nsec, nlink) = if compact {
            // Current kernels read a compact inode's mtime as the superblock's epoch plus
            // the 32-bit field at offset 12 (zero from the composefs writer).
            let mtime = self
                .build_time
                .checked_add(i64::from(le32(raw, 12)))
                .ok_or_else(|| bad("compact inode mtime out of range".into()))?;
            (
                u64::from(le32(raw, 8)),
                u32::from(le16(raw, 24)),
                u32::from(le16(raw, 26)),
                mtime,
                self.build_nsec,
                u32::from(le16(raw, 6)),
            )
        } else {
            (le64(raw, 8), le32(raw, 24), le32(raw, 28), le64(raw, 32) as i64, le32(raw, 40), le32(raw, 44))
        };
        if mtime_nsec >= 1_000_000_000 {
            return Err(bad(format!("mtime nanoseconds {mtime_nsec} out of range")));
        }
        let ftype = match mode & tree::S_IFMT {
            tree::S_IFREG => 1,
            tree::S_IFDIR => 2,
            tree::S_IFCHR => 3,
            tree::S_IFBLK => 4,
            tree::S_IFIFO => 5,
            tree::S_IFSOCK => 6,
            tree::S_IFLNK => 7,
            t => return Err(bad(format!("invalid file type {:#o} in mode", t))),
        };
        let xattr_size = xattr_ibody_size(icount) as u64;
        let xattr_off = off + isize; // off + isize was in bounds above
        let data_off = xattr_off.checked_add(xattr_size).ok_or_else(|| bad("xattrs out of range".into()))?;

        let mut inode = Inode { mode, uid, gid, rdev: 0, size, mtime, mtime_nsec };
        let mut entry = Entry::default();
        let mut dir = None;
        let mut raw_whiteout = false;
        // Bytes stored inline right after the inode and its xattrs.
        let mut inline_len = 0u64;

        let check_layout = |allowed: &[u16]| {
            if allowed.contains(&layout) {
                Ok(())
            } else {
                Err(bad(format!("data layout {layout} not valid for this file type")))
            }
        };
        match mode & tree::S_IFMT {
            tree::S_IFDIR => {
                check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?;
                if size == 0 {
                    return Err(bad("directory of size 0 (no '.' and '..')".into()));
                }
                let (blocks_len, tail) = self.split_data(layout, size).map_err(bad)?;
                if tail > 0 && data_off / BLOCK_SIZE != (data_off + tail - 1) / BLOCK_SIZE {
                    return Err(bad("inline directory data crosses a block boundary".into()));
                }
                let blocks_off = self.claim_blocks(i_u, blocks_len).map_err(bad)?;
                inline_len = tail;
                dir = Some(DirData { blocks_off, blocks_len, tail: (tail > 0).then_some((data_off, tail)) });
            }
            tree::S_IFREG if size > 0 && layout == LAYOUT_CHUNK_BASED => {
                // Content lives outside the image (named by the redirect xattr). The chunk
                // map holds only null addresses; nothing in it is needed, but its format
                // must be the writer's (one chunk size per file size, at most 1024 chunks).
                let bits = chunk_bits(size);
                if size.div_ceil(1 << bits) > MAX_CHUNKS {
                    return Err(bad(format!("external file of {size} bytes needs more than {MAX_CHUNKS} chunks")));
                }
                let format = i_u & 0xffff;
                if u64::from(format) != bits - BLOCK_BITS as u64 {
                    return Err(bad(format!(
                        "chunk format {format:#x} (the writer uses {:#x})",
                        bits - BLOCK_BITS as u64
                    )));
                }
            }
            tree::S_IFREG if size > 0 => {
                check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?;
                if size > INLINE_CONTENT_MAX as u64 {
                    return Err(bad(format!("inline content of {size} bytes (limit {INLINE_CONTENT_MAX})")));
                }
                let data = self.read_data(layout, size, i_u, data_off).map_err(bad)?;
                inline_len = if layout == LAYOUT_FLAT_INLINE { size % BLOCK_SIZE } else { 0 };
                self.budget(size)?;
                entry.content = Some(data);
            }
            tree::S_IFREG => check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?,
            tree::S_IFLNK => {
                check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?;
                if size == 0 || size >= tree::PATH_MAX as u64 {
                    return Err(bad(format!("symlink target length {size}")));
                }
                let data = self.read_data(layout, size, i_u, data_off).map_err(bad)?;
                if data.contains(&0) {
                    return Err(bad("NUL byte in symlink target".into()));
                }
                inline_len = if layout == LAYOUT_FLAT_INLINE { size } else { 0 };
                self.budget(size)?;
                entry.payload = Some(data);
            }
            tree::S_IFCHR | tree::S_IFBLK => {
                check_layout(&[LAYOUT_FLAT_PLAIN])?;
                if size != 0 {
                    return Err(bad(format!("device node of size {size}")));
                }
                inode.rdev = i_u;
                raw_whiteout = mode & tree::S_IFMT == tree::S_IFCHR && i_u == 0;
            }
            _ => {
                check_layout(&[LAYOUT_FLAT_PLAIN])?;
                if size != 0 {
                    return Err(bad(format!("fifo or socket of size {size}")));
                }
            }
        }

        // The inode, its xattrs and its inline tail may not overlap any other inode.
        let span = isize + xattr_size + inline_len;
        if !self.slots.claim(nid, span.div_ceil(SLOT_SIZE)) {
            return Err(bad("inode overlaps another inode or runs past the end of the image".into()));
        }

        let external = inode.is_reg() && size > 0 && layout == LAYOUT_CHUNK_BASED;
        let mut marks = OverlayMarks::default();
        if xattr_size > 0 {
            // At most 255 shared and 64 Ki inline entries of bounded size: the budget is
            // charged once they are decoded.
            let raw_xattrs = self.read_xattrs(xattr_off, xattr_size).map_err(bad)?;
            self.budget(raw_xattrs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())?;
            marks = self.apply_xattrs(nid, &mut entry, raw_xattrs, external).map_err(bad)?;
        }
        // What the writer always adds must be there: otherwise the kernel (and overlayfs)
        // would see something else than the tree this reader returns.
        if external && !marks.metacopy {
            return Err(bad("external file without the overlay metacopy xattr".into()));
        }
        if nid == self.root_nid && !marks.root_opaque {
            return Err(bad("root directory without trusted.overlay.opaque=y".into()));
        }
        let user_whiteout = self.unescape_whiteout(&mut inode, &mut entry);
        entry.inode = inode;
        Ok(Ino { entry: Some(entry), ftype, dir, raw_whiteout, user_whiteout, names: 0, nlink })
    }

    /// For flat layouts: (bytes in blocks, bytes inline) of `size` bytes of data.
    fn split_data(&self, layout: u16, size: u64) -> Result<(u64, u64), String> {
        if layout == LAYOUT_FLAT_INLINE {
            let tail = size % BLOCK_SIZE;
            if tail == 0 {
                return Err("inline layout without an inline tail".into());
            }
            Ok((size - tail, tail))
        } else {
            Ok((size, 0))
        }
    }

    /// Claim the blocks holding `len` bytes starting at block `blkaddr`; returns their offset.
    fn claim_blocks(&mut self, blkaddr: u32, len: u64) -> Result<u64, String> {
        let off = u64::from(blkaddr) * BLOCK_SIZE;
        if len == 0 {
            return Ok(off);
        }
        if self.bytes(off, len).is_none() {
            return Err(format!("data blocks at block {blkaddr} run past the end of the image"));
        }
        if !self.blocks.claim(u64::from(blkaddr), len.div_ceil(BLOCK_SIZE)) {
            return Err(format!("data blocks at block {blkaddr} are used by another inode"));
        }
        Ok(off)
    }

    /// Read `size` bytes (already bounded by the caller) of flat file data.
    fn read_data(&mut self, layout: u16, size: u64, blkaddr: u32, inline_off: u64) -> Result<Vec<u8>, String> {
        let (blocks_len, tail) = self.split_data(layout, size)?;
        let off = self.claim_blocks(blkaddr, blocks_len)?;
        let mut data = Vec::with_capacity(size as usize);
        if blocks_len > 0 {
            data.extend_from_slice(self.bytes(off, blocks_len).ok_or("data beyond the image")?);
        }
        if tail > 0 {
            if inline_off / BLOCK_SIZE != (inline_off + tail - 1) / BLOCK_SIZE {
                return Err("inline data crosses a block boundary".into());
            }
            data.extend_from_slice(self.bytes(inline_off, tail).ok_or("inline data beyond the image")?);
        }
        Ok(data)
    }

    /// Raw (full name, value) pairs of an inode's inline and shared xattrs.
    fn read_xattrs(&self, off: u64, size: u64) -> Result<Vec<RawXattr>, String> {
        let area = self.bytes(off, size).ok_or("xattrs beyond the end of the image")?;
        let shared = u64::from(area[4]);
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
            let id = le32(area, XATTR_IBODY_HEADER_SIZE + i as usize * 4);
            let eoff = self.xattr_off + u64::from(id) * 4;
            let rest = usize::try_from(eoff).ok().and_then(|o| self.d.get(o..)).unwrap_or(&[]);
            let (key, value, _) = parse_xattr_entry(rest).map_err(|r| format!("shared xattr {id}: {r}"))?;
            out.push((key, value));
        }
        // With the name filter feature the kernel trusts the inode's filter: a set bit
        // means "no xattr with a name hashing here". One hiding a stored xattr would make
        // the kernel see fewer xattrs than this reader.
        if self.xattr_filter {
            let filter = le32(area, 0);
            for (key, _) in &out {
                let (index, suffix) = format::xattr_prefix_split(key);
                let bit = format::xxh32(suffix, format::XATTR_FILTER_SEED.wrapping_add(u32::from(index))) % 32;
                if filter & (1 << bit) != 0 {
                    return Err(format!("the xattr name filter hides {}", tree::show(key)));
                }
            }
        }
        Ok(out)
    }

    /// Interpret the overlay xattrs the writer generates and keep the user-visible ones.
    fn apply_xattrs(
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
    fn unescape_whiteout(&self, inode: &mut Inode, entry: &mut Entry) -> bool {
        let has = |k: &[u8]| entry.xattrs.iter().any(|x| x.key == k && x.value.is_empty());
        if !(inode.is_reg() && inode.size == 0 && has(OVL_WHITEOUT) && has(USER_OVL_WHITEOUT)) {
            return false;
        }
        entry.xattrs.retain(|x| x.key != OVL_WHITEOUT && x.key != USER_OVL_WHITEOUT);
        inode.mode = tree::S_IFCHR | (inode.mode & !tree::S_IFMT);
        inode.rdev = 0;
        true
    }

    /// Read the entries of directory `nid`, in on-disk order. Errors carry no path yet.
    fn read_dir(&mut self, nid: u64, dd: DirData) -> Result<Vec<(Vec<u8>, u64, u8)>, ReadError> {
        let bad = |reason: String| ReadError::Dir { nid, path: String::new(), reason };
        let mut out: Vec<(Vec<u8>, u64, u8)> = Vec::new();
        let mut pieces = Vec::new();
        let mut done = 0u64;
        while done < dd.blocks_len {
            let n = (dd.blocks_len - done).min(BLOCK_SIZE);
            pieces.push((dd.blocks_off + done, n));
            done += n;
        }
        if let Some(t) = dd.tail {
            pieces.push(t);
        }
        for (off, len) in pieces {
            let block = self.bytes(off, len).ok_or_else(|| bad("directory data beyond the image".into()))?;
            let n = parse_dirent_block(block, &mut out, self.limits.max_dirents.saturating_sub(self.dirents))
                .map_err(|r| bad(format!("block at offset {off}: {r}")))?;
            self.dirents += n;
        }
        for w in out.windows(2) {
            if w[0].0 >= w[1].0 {
                return Err(bad(format!("entries not in sorted order at {}", tree::show(&w[1].0))));
            }
        }
        Ok(out)
    }

    fn run(mut self) -> Result<(Tree, ImageInfo), ReadError> {
        let root_nid = self.root_nid;
        self.load(root_nid).map_err(|e| with_path(e, Vec::new))?;
        if self.inodes.get(&root_nid).is_none_or(|r| r.dir.is_none()) {
            return Err(ReadError::Inode { nid: root_nid, path: "/".into(), reason: "root is not a directory".into() });
        }
        if let Some(r) = self.inodes.get_mut(&root_nid) {
            r.names = 1;
        }

        // 1. Breadth-first walk over the directories, in the writer's order.
        let mut dirs: Vec<DirRec> = vec![DirRec { nid: root_nid, parent: 0, name: Vec::new(), children: Vec::new() }];
        let mut depth: Vec<usize> = vec![0];
        let mut parent_nid: Vec<u64> = vec![root_nid];
        let mut at = 0;
        let mut names_total = 0usize;
        // Root whiteout stubs: (index of the root child they precede, nid).
        let mut stubs: Vec<(usize, u64)> = Vec::new();
        let mut stub_names: Vec<Vec<u8>> = Vec::new();
        while at < dirs.len() {
            let nid = dirs[at].nid;
            let dir_err =
                |dirs: &[DirRec], reason: String| ReadError::Dir { nid, path: show_path(&dir_path(dirs, at)), reason };
            let Some(dd) = self.inodes.get(&nid).and_then(|i| i.dir) else {
                return Err(dir_err(&dirs, "not a directory".into()));
            };
            let ents = self.read_dir(nid, dd).map_err(|e| with_path(e, || dir_path(&dirs, at)))?;
            let mut children = Vec::new();
            let (mut dot, mut dotdot) = (false, false);
            for (name, cnid, ftype) in ents {
                if name == b"." || name == b".." {
                    let want = if name == b"." { nid } else { parent_nid[at] };
                    if cnid != want || ftype != 2 {
                        return Err(dir_err(&dirs, format!("'{}' entry points to nid {cnid}", tree::show(&name))));
                    }
                    if name == b"." {
                        dot = true
                    } else {
                        dotdot = true
                    }
                    continue;
                }
                self.load(cnid).map_err(|e| with_path(e, || child_path(&dirs, at, &name)))?;
                let Some(child) = self.inodes.get_mut(&cnid) else {
                    continue;
                };
                if child.ftype != ftype {
                    let reason = format!(
                        "entry {} has file type {ftype} but its inode is of type {}",
                        tree::show(&name),
                        child.ftype
                    );
                    return Err(dir_err(&dirs, reason));
                }
                child.names = child.names.saturating_add(1);
                if child.raw_whiteout {
                    let stub = nid == root_nid
                        && name.len() == 2
                        && name.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
                    if !stub || child.names > 1 {
                        let reason =
                            format!("unescaped whiteout {} outside the root whiteout stubs", tree::show(&name));
                        return Err(dir_err(&dirs, reason));
                    }
                    // Not part of the tree, but it holds a place in the writer's walk.
                    stubs.push((children.len(), cnid));
                    stub_names.push(name);
                    continue;
                }
                if child.dir.is_some() {
                    if child.names > 1 {
                        let reason = format!(
                            "directory {} (nid {cnid}) is reachable twice (cycle or aliased directory)",
                            tree::show(&name)
                        );
                        return Err(dir_err(&dirs, reason));
                    }
                    let d = depth[at] + 1;
                    if d > self.limits.tree.max_depth {
                        return Err(ReadError::Limit(format!(
                            "{}: nested deeper than {}",
                            show_path(&child_path(&dirs, at, &name)),
                            self.limits.tree.max_depth
                        )));
                    }
                    dirs.push(DirRec { nid: cnid, parent: at, name: name.clone(), children: Vec::new() });
                    depth.push(d);
                    parent_nid.push(nid);
                }
                names_total += 1;
                if names_total >= self.limits.tree.max_entries {
                    return Err(ReadError::Limit(format!("more than {} entries", self.limits.tree.max_entries)));
                }
                children.push((name, cnid));
            }
            if !dot || !dotdot {
                return Err(dir_err(&dirs, "missing '.' or '..' entry".into()));
            }
            dirs[at].children = children;
            at += 1;
        }
        drop(depth);
        drop(parent_nid);
        self.check_stubs(&dirs, &stubs, &stub_names)?;
        self.check_dir_nlinks(&dirs)?;

        // 2. Pick the primary name of each inode: the name whose breadth-first position
        //    matches the inode's place in nid order (see the module docs).
        let order: Vec<u64> = self.inodes.nids_in_order();
        let mut primary: HashMap<u64, (usize, usize)> = HashMap::with_capacity(order.len()); // nid -> (dir, child)
        let mut next = order.iter().position(|&n| n == root_nid).map_or(order.len(), |p| p + 1);
        let mut stub_iter = stubs.iter().peekable();
        for (di, d) in dirs.iter().enumerate() {
            for (ci, (_, cnid)) in d.children.iter().enumerate() {
                // Whiteout stubs (only in the root) were left out of `children` but hold
                // their places in the walk: they are always where the walk puts them.
                while let Some(&&(before, snid)) = stub_iter.peek() {
                    if di != 0 || before > ci {
                        break;
                    }
                    if order.get(next) == Some(&snid) {
                        next += 1;
                    }
                    stub_iter.next();
                }
                if primary.contains_key(cnid) {
                    continue;
                }
                if order.get(next) == Some(cnid) {
                    primary.insert(*cnid, (di, ci));
                    next += 1;
                }
            }
            if di == 0 {
                for &(_, snid) in stub_iter.by_ref() {
                    if order.get(next) == Some(&snid) {
                        next += 1;
                    }
                }
            }
        }
        // Images not laid out by the composefs writer: first name in walk order.
        for (di, d) in dirs.iter().enumerate() {
            for (ci, (_, cnid)) in d.children.iter().enumerate() {
                primary.entry(*cnid).or_insert((di, ci));
            }
        }

        // 3. Whiteout markers: the writer puts them on the directory holding a whiteout's
        //    primary name, so they tell where an ambiguous primary was; then they go.
        let v1 = self.version >= 1;
        let marked: Vec<bool> = dirs
            .iter()
            .map(|d| {
                self.inodes.get(&d.nid).and_then(|i| i.entry.as_ref()).is_some_and(|e| has_whiteout_markers(e, v1))
            })
            .collect();
        self.place_whiteouts(&dirs, &marked, &mut primary);
        let mut holds_whiteout = vec![false; dirs.len()];
        for (nid, &(di, _)) in &primary {
            if self.inodes.get(nid).is_some_and(|i| i.user_whiteout) {
                if let Some(h) = holds_whiteout.get_mut(di) {
                    *h = true;
                }
            }
        }
        for (di, d) in dirs.iter().enumerate() {
            if !holds_whiteout[di] {
                continue;
            }
            if !marked[di] {
                return Err(ReadError::Dir {
                    nid: d.nid,
                    path: show_path(&dir_path(&dirs, di)),
                    reason: "holds a whiteout but lacks the whiteout marker xattrs".into(),
                });
            }
            if let Some(e) = self.inodes.get_mut(&d.nid).and_then(|i| i.entry.as_mut()) {
                e.xattrs.retain(|x| {
                    let (k, v) = (x.key.as_slice(), x.value.as_slice());
                    let marker = ((k == OVL_WHITEOUTS || k == USER_OVL_WHITEOUTS) && v.is_empty())
                        || (v1 && (k == OVL_OPAQUE || k == USER_OVL_OPAQUE) && v == b"x");
                    !marker
                });
            }
        }

        // 4. Build the tree: root, then primaries in walk order, then hard links.
        let mut t = Tree::new(self.limits.tree);
        let root_entry = self.inodes.get_mut(&root_nid).and_then(|i| i.entry.take()).unwrap_or_default();
        self.budget(entry_bytes(&root_entry))?;
        t.set_root(root_entry).map_err(|e| tree_err(root_nid, e))?;
        if let Some(r) = self.inodes.get(&root_nid) {
            t.set_nlink(ROOT, r.nlink);
        }
        let dir_index: HashMap<u64, usize> = dirs.iter().enumerate().map(|(i, d)| (d.nid, i)).collect();
        let mut tree_id: Vec<NodeId> = vec![ROOT; dirs.len()];
        // Primaries that other names link to: nid -> (tree node, bytes a copy costs).
        let mut linked: HashMap<u64, (NodeId, u64)> = HashMap::new();
        let mut links: Vec<(usize, usize)> = Vec::new();
        for (di, d) in dirs.iter().enumerate() {
            let parent = tree_id[di];
            for (ci, (name, cnid)) in d.children.iter().enumerate() {
                if primary.get(cnid) != Some(&(di, ci)) {
                    links.push((di, ci));
                    continue;
                }
                let Some(ino) = self.inodes.get_mut(cnid) else {
                    continue;
                };
                let (names, nlink, is_dir) = (ino.names, ino.nlink, ino.dir.is_some());
                let e = ino.entry.take().unwrap_or_default();
                let cost = entry_bytes(&e) + name.len() as u64;
                self.budget(cost)?;
                let id = t.insert_child(parent, name, e).map_err(|e| tree_err(*cnid, e))?;
                if is_dir {
                    if let Some(&i) = dir_index.get(cnid) {
                        tree_id[i] = id;
                    }
                }
                // As stored (the writer recomputes it for directories).
                t.set_nlink(id, nlink);
                if names > 1 {
                    linked.insert(*cnid, (id, cost));
                }
            }
        }
        for (di, ci) in links {
            let (Some(d), Some(&parent)) = (dirs.get(di), tree_id.get(di)) else {
                continue;
            };
            let Some((name, cnid)) = d.children.get(ci) else {
                continue;
            };
            let Some(&(target, cost)) = linked.get(cnid) else {
                continue;
            };
            self.budget(cost)?;
            t.insert_hardlink_child(parent, name, target).map_err(|e| tree_err(*cnid, e))?;
        }
        t.finalize().map_err(|e| tree_err(root_nid, e))?;
        let info = ImageInfo { composefs_version: self.version, flags: self.flags, inodes: self.inodes.len() as u64 };
        Ok((t, info))
    }
}

/// Does a directory carry the markers the writer puts on a directory holding a whiteout?
fn has_whiteout_markers(e: &Entry, v1: bool) -> bool {
    let has = |k: &[u8], v: &[u8]| e.xattrs.iter().any(|x| x.key == k && x.value == v);
    has(OVL_WHITEOUTS, b"")
        && has(USER_OVL_WHITEOUTS, b"")
        && (!v1 || (has(OVL_OPAQUE, b"x") && has(USER_OVL_OPAQUE, b"x")))
}

impl Reader<'_> {
    /// A hard-linked whiteout whose primary name could sit at the end of one directory's
    /// part of the walk or at the start of a later one's gives the same layout either way;
    /// only the markers tell which. Move such primaries to the marked directory when the
    /// walk order allows it. (Work is capped; past the cap, the choice stays.)
    fn place_whiteouts(&self, dirs: &[DirRec], marked: &[bool], primary: &mut HashMap<u64, (usize, usize)>) {
        let mut wh = vec![0u32; dirs.len()];
        let mut prims = vec![0u32; dirs.len()];
        let mut cands: Vec<u64> = Vec::new();
        for (nid, &(di, _)) in primary.iter() {
            let Some(p) = prims.get_mut(di) else { continue };
            *p += 1;
            if let Some(ino) = self.inodes.get(nid).filter(|i| i.user_whiteout) {
                wh[di] += 1;
                if ino.names > 1 {
                    cands.push(*nid);
                }
            }
        }
        if cands.is_empty() {
            return;
        }
        cands.sort_unstable();
        let mut names: HashMap<u64, Vec<(usize, usize)>> = cands.iter().map(|&n| (n, Vec::new())).collect();
        let mut total = 0usize;
        for (di, d) in dirs.iter().enumerate() {
            total += d.children.len();
            for (ci, (_, cnid)) in d.children.iter().enumerate() {
                if let Some(v) = names.get_mut(cnid) {
                    v.push((di, ci));
                }
            }
        }
        let mut budget = total.saturating_mul(4).saturating_add(1024);
        for t in cands {
            let Some(&(di, ci)) = primary.get(&t) else {
                continue;
            };
            if marked[di] && wh[di] == 1 {
                continue;
            }
            let occ = names.get(&t).map(Vec::as_slice).unwrap_or(&[]);
            let later = |want_empty: bool| {
                occ.iter().copied().find(|&(ei, _)| ei > di && marked[ei] && (!want_empty || wh[ei] == 0))
            };
            let target = match later(true) {
                Some(x) => Some(x),
                None if !marked[di] => later(false),
                None => None,
            };
            let Some((ei, cj)) = target else { continue };
            // Valid only if the name is the last primary of its directory, every directory
            // walked in between has none, and the new name comes before any other primary
            // of the target directory: then the walk order is unchanged.
            let is_primary_at =
                |p: &HashMap<u64, (usize, usize)>, d: usize, k: usize, n: &u64| p.get(n) == Some(&(d, k));
            let mut ok = true;
            for (k, (_, n)) in dirs[di].children.iter().enumerate().skip(ci + 1) {
                budget = budget.saturating_sub(1);
                if is_primary_at(primary, di, k, n) {
                    ok = false;
                    break;
                }
            }
            if ok {
                for p in &prims[di + 1..ei] {
                    budget = budget.saturating_sub(1);
                    if *p != 0 {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                for (k, (_, n)) in dirs[ei].children.iter().enumerate().take(cj) {
                    budget = budget.saturating_sub(1);
                    if is_primary_at(primary, ei, k, n) {
                        ok = false;
                        break;
                    }
                }
            }
            if budget == 0 {
                return;
            }
            if ok {
                primary.insert(t, (ei, cj));
                prims[di] -= 1;
                prims[ei] += 1;
                wh[di] -= 1;
                wh[ei] += 1;
            }
        }
    }

    /// The root whiteout stubs are exactly the writer's: every name `00`..`ff` is in the
    /// root (as a stub or a real entry), and each stub is a 0644 0/0 character device
    /// with the root's owner, mtime and SELinux label, and nothing else.
    fn check_stubs(&self, dirs: &[DirRec], stubs: &[(usize, u64)], stub_names: &[Vec<u8>]) -> Result<(), ReadError> {
        let root_nid = self.root_nid;
        let bad = |reason: String| ReadError::Dir { nid: root_nid, path: "/".into(), reason };
        let hex = |n: &[u8]| -> Option<usize> {
            let d = |c: u8| match c {
                b'0'..=b'9' => Some(usize::from(c - b'0')),
                b'a'..=b'f' => Some(usize::from(c - b'a' + 10)),
                _ => None,
            };
            match n {
                [a, b] => Some(d(*a)? * 16 + d(*b)?),
                _ => None,
            }
        };
        let mut seen = [false; 256];
        for n in dirs.first().map(|d| d.children.iter().map(|(n, _)| n)).into_iter().flatten().chain(stub_names) {
            if let Some(i) = hex(n) {
                seen[i] = true;
            }
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(bad(format!("whiteout stub {missing:02x} is missing")));
        }
        let Some(root) = self.inodes.get(&root_nid).and_then(|i| i.entry.as_ref()) else {
            return Ok(());
        };
        let label: Vec<&Xattr> = root.xattrs.iter().filter(|x| x.key == SELINUX_XATTR).collect();
        for (&(_, snid), name) in stubs.iter().zip(stub_names) {
            let Some(ino) = self.inodes.get(&snid) else {
                continue;
            };
            let Some(e) = ino.entry.as_ref() else {
                continue;
            };
            let (i, r) = (&e.inode, &root.inode);
            let same = i.mode == tree::S_IFCHR | 0o644
                && (i.uid, i.gid, i.mtime, i.mtime_nsec) == (r.uid, r.gid, r.mtime, r.mtime_nsec)
                && ino.nlink == 1
                && e.xattrs.iter().collect::<Vec<_>>() == label;
            if !same {
                return Err(bad(format!("whiteout stub {} differs from what the writer makes", tree::show(name))));
            }
        }
        Ok(())
    }

    /// A directory's stored nlink is 2 + its subdirectories (the kernel shows it).
    fn check_dir_nlinks(&self, dirs: &[DirRec]) -> Result<(), ReadError> {
        for (di, d) in dirs.iter().enumerate() {
            let subdirs =
                d.children.iter().filter(|(_, c)| self.inodes.get(c).is_some_and(|i| i.dir.is_some())).count();
            let want = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
            let have = self.inodes.get(&d.nid).map_or(want, |i| i.nlink);
            if have != want {
                return Err(ReadError::Dir {
                    nid: d.nid,
                    path: show_path(&dir_path(dirs, di)),
                    reason: format!("nlink {have}, but it has {subdirs} subdirectories"),
                });
            }
        }
        Ok(())
    }
}

/// log2 of the chunk size the composefs writer picks for an external file of `size` bytes:
/// the smallest power of two holding the file, at least a block, at most 2^31 blocks.
fn chunk_bits(size: u64) -> u64 {
    let bits = if size <= 1 { 0 } else { 64 - u64::from((size - 1).leading_zeros()) };
    bits.clamp(u64::from(BLOCK_BITS), u64::from(BLOCK_BITS) + 31)
}

fn tree_err(nid: u64, e: TreeError) -> ReadError {
    match e {
        TreeError::TooManyEntries { limit } => ReadError::Limit(format!("more than {limit} entries")),
        TreeError::TooDeep { path, limit } => ReadError::Limit(format!("{path}: nested deeper than {limit}")),
        e => ReadError::Tree { nid, source: e },
    }
}

/// Decode one xattr entry at the start of `b`: (full name, value, entry size rounded to 4).
fn parse_xattr_entry(b: &[u8]) -> Result<(Vec<u8>, Vec<u8>, u64), String> {
    if b.len() < XATTR_ENTRY_SIZE {
        return Err("entry header beyond the end".into());
    }
    let name_len = usize::from(b[0]);
    let index = b[1];
    let value_len = usize::from(le16(b, 2));
    let end = XATTR_ENTRY_SIZE + name_len + value_len;
    if end > b.len() {
        return Err("entry runs past the end".into());
    }
    let name = &b[4..4 + name_len];
    let value = &b[4 + name_len..end];
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
    let (canonical, _) = format::xattr_prefix_split(&key);
    if canonical != index {
        return Err(format!("{} stored under name index {index}, not {canonical}", tree::show(&key)));
    }
    Ok((key, value.to_vec(), (end as u64).div_ceil(4) * 4))
}

/// Parse one directory block, appending (name, nid, file type); returns the entry count.
fn parse_dirent_block(b: &[u8], out: &mut Vec<(Vec<u8>, u64, u8)>, budget: u64) -> Result<u64, String> {
    if b.len() < DIRENT_SIZE {
        return Err("block shorter than one entry".into());
    }
    let first = usize::from(le16(b, 8));
    if first < DIRENT_SIZE || first % DIRENT_SIZE != 0 || first > b.len() {
        return Err(format!("bad first name offset {first}"));
    }
    let n = first / DIRENT_SIZE;
    if n as u64 > budget {
        return Err("too many directory entries in the image".into());
    }
    for i in 0..n {
        let at = i * DIRENT_SIZE;
        let nid = le64(b, at);
        let nameoff = usize::from(le16(b, at + 8));
        let ftype = b.get(at + 10).copied().unwrap_or(0);
        let end = if i + 1 < n {
            usize::from(le16(b, at + DIRENT_SIZE + 8))
        } else {
            let rest = b.get(nameoff..).unwrap_or(&[]);
            nameoff + rest.iter().position(|&c| c == 0).unwrap_or(rest.len())
        };
        if nameoff < first || end <= nameoff || end > b.len() {
            return Err(format!("entry {i}: bad name offsets {nameoff}..{end}"));
        }
        let name = &b[nameoff..end];
        if name.len() > tree::MAX_NAME_LEN {
            return Err(format!("entry {i}: name longer than {} bytes", tree::MAX_NAME_LEN));
        }
        if name.contains(&0) || name.contains(&b'/') {
            return Err(format!("entry {i}: NUL or '/' in name {}", tree::show(name)));
        }
        out.push((name.to_vec(), nid, ftype));
    }
    Ok(n as u64)
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("image too small ({len} bytes) to hold a composefs header and EROFS superblock")]
    TooSmall { len: u64 },
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("inode {nid} ({path}): {reason}")]
    Inode { nid: u64, path: String, reason: String },
    #[error("directory {path} (nid {nid}): {reason}")]
    Dir { nid: u64, path: String, reason: String },
    #[error("inode {nid}: {source}")]
    Tree { nid: u64, source: TreeError },
    #[error("limit exceeded: {0}")]
    Limit(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact inode: (format, mode, nlink, size, i_u).
    fn compact(format: u16, mode: u16, nlink: u16, size: u32, i_u: u32) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[0..2].copy_from_slice(&format.to_le_bytes());
        b[4..6].copy_from_slice(&mode.to_le_bytes());
        b[6..8].copy_from_slice(&nlink.to_le_bytes());
        b[8..12].copy_from_slice(&size.to_le_bytes());
        b[16..20].copy_from_slice(&i_u.to_le_bytes());
        b
    }

    fn dirents(ents: &[(&[u8], u64, u8)]) -> Vec<u8> {
        let mut names = Vec::new();
        let mut out = Vec::new();
        let base = ents.len() * 12;
        for (name, nid, ft) in ents {
            out.extend_from_slice(&nid.to_le_bytes());
            out.extend_from_slice(&((base + names.len()) as u16).to_le_bytes());
            out.extend_from_slice(&[*ft, 0]);
            names.extend_from_slice(name);
        }
        out.extend_from_slice(&names);
        out
    }

    const ROOT_NID: u64 = 36; // first slot after the superblock (meta block 0)
    const STUB_NID: u64 = 64; // 256 stubs from here (offsets 2048..10240)
    const ROOT_BLOCK: u32 = 4;

    /// Header + superblock + a root directory as the writer makes it (opaque xattr,
    /// whiteout stubs for the `00`..`ff` names not among `children`, entries in one data
    /// block) + the given inodes at their nids. Children with file type 2 count as
    /// subdirectories for the root's nlink.
    fn image(children: &[(&[u8], u64, u8)], inodes: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 4096];
        img[0..4].copy_from_slice(&COMPOSEFS_MAGIC.to_le_bytes());
        img[4..8].copy_from_slice(&1u32.to_le_bytes());
        let sb = 1024;
        img[sb..sb + 4].copy_from_slice(&EROFS_SUPER_MAGIC.to_le_bytes());
        img[sb + 12] = 12;
        img[sb + 14..sb + 16].copy_from_slice(&(ROOT_NID as u16).to_le_bytes());
        img[sb + 44..sb + 48].copy_from_slice(&3u32.to_le_bytes()); // shared xattrs: block 3 (none)
        let stub_names: Vec<Vec<u8>> = (0..256).map(|i| format!("{i:02x}").into_bytes()).collect();
        let mut ents: Vec<(&[u8], u64, u8)> = vec![(b".", ROOT_NID, 2), (b"..", ROOT_NID, 2)];
        ents.extend_from_slice(children);
        for (i, n) in stub_names.iter().enumerate() {
            if !children.iter().any(|c| c.0 == n.as_slice()) {
                ents.push((n.as_slice(), STUB_NID + i as u64, 3));
                let at = ((STUB_NID + i as u64) * 32) as usize;
                img[at..at + 32].copy_from_slice(&compact(0, 0o20644, 1, 0, 0));
            }
        }
        ents.sort_by(|a, b| a.0.cmp(b.0));
        let d = dirents(&ents);
        let subdirs = children.iter().filter(|c| c.2 == 2).count() as u16;
        let mut root = compact(LAYOUT_FLAT_PLAIN << 1, 0o40755, 2 + subdirs, d.len() as u32, ROOT_BLOCK);
        root[2..4].copy_from_slice(&6u16.to_le_bytes()); // xattrs: header + one 20-byte entry
        let bit = format::xxh32(b"overlay.opaque", format::XATTR_FILTER_SEED + 4) % 32;
        let mut x = (!(1u32 << bit)).to_le_bytes().to_vec();
        x.extend_from_slice(&[0; 8]);
        x.extend_from_slice(&[14, 4, 1, 0]);
        x.extend_from_slice(b"overlay.opaquey\0");
        root.extend_from_slice(&x);
        let at = (ROOT_NID * 32) as usize;
        img[at..at + root.len()].copy_from_slice(&root);
        let blk = ROOT_BLOCK as usize * 4096;
        img[blk..blk + d.len()].copy_from_slice(&d);
        for (nid, bytes) in inodes {
            let at = (*nid * 32) as usize;
            img[at..at + bytes.len()].copy_from_slice(bytes);
        }
        img
    }

    fn file() -> Vec<u8> {
        compact(0, 0o100644, 1, 0, 0)
    }

    #[test]
    fn reads_a_minimal_image() {
        let img = image(&[(b"a", 40, 1)], &[(40, file())]);
        let (t, info) = read_image_with(&img, &ReadLimits::default()).unwrap();
        assert_eq!(info.composefs_version, 0);
        let a = t.lookup(b"a").unwrap();
        assert_eq!(t.node(a).entry.inode.mode, 0o100644);
        assert_eq!(t.node(a).nlink, Some(1));
        assert_eq!(t.node(ROOT).entry.inode.mode, 0o40755);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn second_name_of_an_inode_is_a_hard_link() {
        let img = image(&[(b"a", 40, 1), (b"b", 40, 1)], &[(40, compact(0, 0o100644, 2, 0, 0))]);
        let t = read_image(&img).unwrap();
        let (a, b) = (t.lookup(b"a").unwrap(), t.lookup(b"b").unwrap());
        assert_eq!(t.node(a).link_to, None);
        assert_eq!(t.node(b).link_to, Some(a));
    }

    #[test]
    fn cycles_and_bad_references_are_errors() {
        let err = |img: &[u8]| read_image(img).unwrap_err().to_string();
        // A child naming the root: the root directory reachable twice.
        assert!(err(&image(&[(b"loop", ROOT_NID, 2)], &[])).contains("reachable twice"));
        // A directory reachable under two names.
        let dir = |nid: u64| {
            let d = dirents(&[(b".", nid, 2), (b"..", ROOT_NID, 2)]);
            [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, 2, d.len() as u32, 0), d].concat()
        };
        assert!(err(&image(&[(b"x", 40, 2), (b"y", 40, 2)], &[(40, dir(40))])).contains("reachable twice"));
        // The dirent's file type disagrees with the inode.
        assert!(err(&image(&[(b"a", 40, 2)], &[(40, file())])).contains("file type"));
        // A nid whose offset overflows, and one beyond the image.
        assert!(err(&image(&[(b"a", u64::MAX, 1)], &[])).contains("nid"));
        assert!(err(&image(&[(b"a", 1 << 20, 1)], &[])).contains("beyond"));
        // An inode inside the root inode's inline directory data.
        assert!(err(&image(&[(b"a", ROOT_NID + 1, 1)], &[])).contains("inode"));
        // '..' of a subdirectory pointing at itself.
        let d = dirents(&[(b".", 40, 2), (b"..", 40, 2)]);
        let bad = [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, 2, d.len() as u32, 0), d].concat();
        assert!(err(&image(&[(b"x", 40, 2)], &[(40, bad)])).contains("'..'"));
    }

    #[test]
    fn whiteouts_only_as_root_stubs() {
        let wh = compact(0, 0o20644, 1, 0, 0);
        // A stub named like the writer names them is not part of the tree.
        let t = read_image(&image(&[(b"0a", 40, 3)], &[(40, wh.clone())])).unwrap();
        assert_eq!(t.len(), 1);
        // Anywhere else (or another name) a raw 0/0 device is an error.
        assert!(read_image(&image(&[(b"wh", 40, 3)], &[(40, wh.clone())])).is_err());
        assert!(read_image(&image(&[(b"0A", 40, 3)], &[(40, wh)])).is_err());
        // A device with a real number is an ordinary node.
        let t = read_image(&image(&[(b"null", 40, 3)], &[(40, compact(0, 0o20666, 1, 0, 0x103))])).unwrap();
        assert_eq!(t.node(t.lookup(b"null").unwrap()).entry.inode.rdev, 0x103);
    }

    #[test]
    fn header_and_superblock_checks() {
        let good = image(&[], &[]);
        assert!(read_image(&good).is_ok());
        assert!(matches!(read_image(&good[..1100]), Err(ReadError::TooSmall { .. })));
        for (at, what) in [(0usize, "composefs magic"), (1024, "EROFS magic"), (1024 + 12, "block size")] {
            let mut m = good.clone();
            m[at] ^= 0x55;
            let e = read_image(&m).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut m = good.clone();
        m[12] = 2; // composefs format version 2
        assert!(read_image(&m).is_err());
    }

    #[test]
    fn xattr_name_filter_must_not_hide_stored_xattrs() {
        let bit = format::xxh32(b"a", format::XATTR_FILTER_SEED + 1) % 32;
        let with_filter = |filter: u32| {
            let mut ino = compact(0, 0o100644, 1, 0, 0);
            ino[2..4].copy_from_slice(&3u16.to_le_bytes()); // 12-byte header + one 8-byte entry
            let mut x = filter.to_le_bytes().to_vec();
            x.extend_from_slice(&[0; 8]);
            x.extend_from_slice(&[1, 1, 1, 0, b'a', b'v', 0, 0]); // user.a = "v"
            ino.extend_from_slice(&x);
            let mut img = image(&[(b"f", 40, 1)], &[(40, ino)]);
            img[1024 + 8] = format::FEATURE_COMPAT_XATTR_FILTER as u8;
            img
        };
        let t = read_image(&with_filter(!(1 << bit))).unwrap();
        let f = &t.node(t.lookup(b"f").unwrap()).entry;
        assert_eq!(f.xattrs, vec![Xattr { key: b"user.a".to_vec(), value: b"v".to_vec() }]);
        let e = read_image(&with_filter(1 << bit)).unwrap_err().to_string();
        assert!(e.contains("filter hides user.a"), "{e}");
        // Without the feature the kernel ignores the filter, and so does the reader.
        let mut img = with_filter(1 << bit);
        img[1024 + 8] = 0;
        assert!(read_image(&img).is_ok());
    }

    #[test]
    fn writer_invariants_are_required() {
        let err = |img: &[u8]| read_image(img).unwrap_err().to_string();
        // A stub that is not the writer's (other permissions).
        let mut img = image(&[], &[]);
        let at = (STUB_NID * 32 + 4) as usize;
        img[at..at + 2].copy_from_slice(&0o20600u16.to_le_bytes());
        assert!(err(&img).contains("whiteout stub 00 differs"));
        // A stub name that is missing: rename the entry "00" (a regular file) to "0!".
        let mut img = image(&[(b"00", 40, 1)], &[(40, file())]);
        let blk = ROOT_BLOCK as usize * 4096;
        let pos = blk + img[blk..].windows(4).position(|w| w == b"..00").unwrap() + 2;
        img[pos + 1] = b'!';
        assert!(err(&img).contains("whiteout stub 00 is missing"));
        // The root without its opaque xattr.
        let mut img = image(&[], &[]);
        let at = (ROOT_NID * 32 + 2) as usize;
        img[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
        assert!(err(&img).contains("opaque"));
        // A directory nlink that does not count its subdirectories.
        let d = dirents(&[(b".", 40, 2), (b"..", ROOT_NID, 2)]);
        let sub =
            |nlink: u16| [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, nlink, d.len() as u32, 0), d.clone()].concat();
        assert!(read_image(&image(&[(b"d", 40, 2)], &[(40, sub(2))])).is_ok());
        assert!(err(&image(&[(b"d", 40, 2)], &[(40, sub(3))])).contains("nlink 3"));
        // An external (chunk-based) file without the metacopy xattr, a device with a size.
        let ext = compact(LAYOUT_CHUNK_BASED << 1, 0o100644, 1, 10, 0);
        assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext)])).contains("metacopy"));
        let dev = compact(0, 0o20644, 1, 5, 0x101);
        assert!(err(&image(&[(b"c", 40, 3)], &[(40, dev)])).contains("size 5"));
        // An external file: metacopy + redirect; the redirect must be absolute.
        let ext = |redirect: &[u8; 3], format: u32| {
            let mut ino = compact(LAYOUT_CHUNK_BASED << 1, 0o100644, 1, 10, format);
            ino[2..4].copy_from_slice(&12u16.to_le_bytes()); // 12 + 20 + 24 bytes of xattrs
            ino.extend_from_slice(&[0; 12]);
            ino.extend_from_slice(&[16, 4, 0, 0]);
            ino.extend_from_slice(b"overlay.metacopy");
            ino.extend_from_slice(&[16, 4, 3, 0]);
            ino.extend_from_slice(b"overlay.redirect");
            ino.extend_from_slice(redirect);
            ino.push(0);
            ino
        };
        let t = read_image(&image(&[(b"f", 40, 1)], &[(40, ext(b"/ab", 0))])).unwrap();
        let f = &t.node(t.lookup(b"f").unwrap()).entry;
        assert_eq!((f.payload.as_deref(), f.fsverity_digest, f.content.as_ref()), (Some(&b"ab"[..]), None, None));
        assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext(b"xab", 0))])).contains("not an absolute path"));
        assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext(b"/ab", 0x20))])).contains("chunk format"));
    }

    #[test]
    fn dirent_blocks() {
        let mut out = Vec::new();
        let b = dirents(&[(b".", 1, 2), (b"..", 1, 2), (b"name", 7, 1)]);
        assert_eq!(parse_dirent_block(&b, &mut out, 100).unwrap(), 3);
        assert_eq!(out[2], (b"name".to_vec(), 7, 1));
        // The last name ends at the first NUL or the end of the block.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        out.clear();
        parse_dirent_block(&padded, &mut out, 100).unwrap();
        assert_eq!(out[2].0, b"name");
        // Bad first offset, names that overlap the table, '/' in a name, the budget.
        let mut bad = b.clone();
        bad[8] = 13;
        assert!(parse_dirent_block(&bad, &mut out, 100).is_err());
        let mut bad = b.clone();
        bad[12 + 8] = 2; // second name offset inside the dirent table
        assert!(parse_dirent_block(&bad, &mut out, 100).is_err());
        let slash = dirents(&[(b".", 1, 2), (b"a/b", 1, 1)]);
        assert!(parse_dirent_block(&slash, &mut out, 100).is_err());
        assert!(parse_dirent_block(&b, &mut out, 2).is_err());
        assert!(parse_dirent_block(&b[..5], &mut out, 100).is_err());
    }

    #[test]
    fn xattr_entries() {
        let entry = |index: u8, name: &[u8], value: &[u8]| {
            let mut e = vec![name.len() as u8, index];
            e.extend_from_slice(&(value.len() as u16).to_le_bytes());
            e.extend_from_slice(name);
            e.extend_from_slice(value);
            e
        };
        let (k, v, len) = parse_xattr_entry(&entry(6, b"selinux", b"ctx")).unwrap();
        assert_eq!((k.as_slice(), v.as_slice(), len), (&b"security.selinux"[..], &b"ctx"[..], 16));
        let (k, _, _) = parse_xattr_entry(&entry(2, b"", b"acl")).unwrap();
        assert_eq!(k, b"system.posix_acl_access");
        assert!(parse_xattr_entry(&entry(0, b"", b"x")).is_err(), "empty name");
        assert!(parse_xattr_entry(&entry(0x80, b"x", b"")).is_err(), "long prefix");
        assert!(parse_xattr_entry(&entry(7, b"x", b"")).is_err(), "unknown index");
        assert!(parse_xattr_entry(&entry(1, b"a\0b", b"")).is_err(), "NUL in name");
        // Names under another index than their prefix maps to are invisible to the kernel.
        assert!(parse_xattr_entry(&entry(0, b"user.x", b"")).is_err(), "user. under index 0");
        assert!(parse_xattr_entry(&entry(5, b"x", b"")).is_err(), "lustre.");
        assert!(parse_xattr_entry(&entry(0, b"lustre.x", b"")).is_ok(), "unknown prefix under index 0");
        let e = entry(1, b"name", b"value");
        assert!(parse_xattr_entry(&e[..e.len() - 1]).is_err(), "value past the end");
    }

    #[test]
    fn chunk_sizes_follow_the_writer() {
        for (size, bits) in
            [(1u64, 12u64), (4096, 12), (4097, 13), (1 << 30, 30), ((1 << 30) + 1, 31), (1 << 43, 43), (1 << 50, 43)]
        {
            assert_eq!(chunk_bits(size), bits, "size {size}");
        }
    }

    #[test]
    fn claims_detect_overlap() {
        let mut c = Claims::new(100);
        assert!(c.claim(10, 5));
        assert!(!c.claim(14, 1));
        assert!(c.claim(15, 85));
        assert!(!c.claim(99, 2));
        assert!(!c.claim(u64::MAX, 2));
    }
}
