//! One inode: its place (nid → offset), the on-disk inode ([`DiskInode`]), the type-specific
//! data (directory blocks and inline tail, inline file content, symlink target, device number,
//! an external file's chunk map), the claims on its slots and blocks, and its xattrs.

use std::sync::Arc;

use super::xattr::{has_whiteout_markers, is_raw_whiteout_marker, Applied, RawXattr};
use super::{ReadError, Reader};
use crate::erofs::format::*;
use crate::sys::tables::{Region, Slab};
use crate::tree::{self, Entry, Inode};

/// Where a directory's entries live: `full_blocks` whole-or-partial blocks at `blocks_off`
/// covering `blocks_len` bytes, then an optional inline tail.
#[derive(Debug, Clone, Copy)]
pub(super) struct DirData {
    pub(super) blocks_off: u64,
    pub(super) blocks_len: u64,
    pub(super) tail: Option<(u64, u64)>,
}

/// What is kept of a decoded inode: 28 bytes (the table holds one per inode of the image; its
/// tree entry, when there is one, is kept apart).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ino {
    /// Decoded bytes of the entry (xattrs, payload, inline content) as the tree holds it: the
    /// whiteout markers' share (`marker_bytes`) goes when they are removed. (At most about
    /// 17 MB: 64 KiB of inline xattr area, 255 shared xattrs of at most 64 KiB each, a
    /// payload and inline data of at most 5000 bytes.)
    pub(super) bytes: u32,
    pub(super) marker_bytes: u16,
    /// A directory's place in the table's directory data ([`NO_DIR`] for other inodes).
    dir: u32,
    /// Its tree entry's place in the table's entries ([`NO_DIR`] for none). When vetting (no
    /// tree), only the root's and the raw whiteouts' entries are kept (the stub checks compare
    /// them); the facts here stand for the others.
    entry: u32,
    /// Number of directory entries naming this inode.
    pub(super) names: u32,
    /// st_nlink as stored.
    pub(super) nlink: u32,
    /// EROFS dirent file type this inode must be listed with (its on-disk type).
    pub(super) ftype: u8,
    /// A character device 0/0 as stored: only legitimate as a root whiteout stub.
    pub(super) raw_whiteout: bool,
    /// An escaped user whiteout turned back into a 0/0 character device.
    pub(super) user_whiteout: bool,
    /// A block device, or a character device other than 0/0 (whiteouts), in the tree.
    pub(super) device: bool,
    /// A directory carrying the markers the writer puts on a directory holding a whiteout.
    pub(super) marked: bool,
    /// A place given by [`InodeTable::insert_pending`], not yet decoded: only `ftype` (the
    /// naming entry's) and `names` hold.
    pending: bool,
}

const NO_DIR: u32 = u32::MAX;

impl Ino {
    pub(super) fn is_dir(&self) -> bool {
        self.dir != NO_DIR
    }
}

/// Decoded inodes by nid: a dense index over the image's inode slots (nids of inodes that
/// exist are bounded by the image size) into a list, instead of hashing every lookup; the
/// directories' data and the tree entries apart (most inodes are not directories, and when
/// vetting almost none keeps its entry).
pub(super) struct InodeTable {
    index: Slab<u32>,
    list: Slab<Ino>,
    dirs: Vec<DirData>,
    /// `None` once moved into the tree.
    entries: Vec<Option<Box<Entry>>>,
    /// How much of `list`'s capacity was made present ([`LIST_POPULATE_STEP`] at a time).
    populated: usize,
}

/// The inode list's pages are made present this many records at a time (112 KiB) as it fills,
/// not all at once for the superblock's count: that count is not checked against the inodes
/// found, so a false one could otherwise make the reader hold memory the image never fills.
const LIST_POPULATE_STEP: usize = 4096;

impl InodeTable {
    /// For nids below `slots`; room for `expect` inodes (at most `slots`: the superblock's
    /// count is hostile). The index and the list are carved out of `tables` when it is given
    /// (huge pages: `crate::sys::tables`), else ordinary allocations.
    pub(super) fn new(slots: u64, expect: u64, tables: Option<&Arc<Region>>) -> InodeTable {
        let (slots, expect) = Self::sizes(slots, expect);
        let mut index = Slab::with_capacity_in(tables, slots);
        // The index is filled whole now: its pages are made present in one call, not faulted in
        // one by one (`Slab::populate`); the list's as it fills (`insert`).
        index.populate(0..slots);
        index.resize(slots, u32::MAX);
        let list = Slab::with_capacity_in(tables, expect);
        InodeTable { index, list, dirs: Vec::new(), entries: Vec::new(), populated: 0 }
    }

    /// (Index entries, list room) of a table for nids below `slots` and `expect` inodes.
    fn sizes(slots: u64, expect: u64) -> (usize, usize) {
        let slots = usize::try_from(slots).unwrap_or(0);
        (slots, usize::try_from(expect).unwrap_or(0).min(slots))
    }

    /// Bytes of memory the index and the list of [`InodeTable::new`]`(slots, expect)` take.
    pub(super) fn table_bytes(slots: u64, expect: u64) -> usize {
        let (slots, expect) = Self::sizes(slots, expect);
        slots
            .saturating_mul(std::mem::size_of::<u32>())
            .saturating_add(expect.saturating_mul(std::mem::size_of::<Ino>()))
    }

    /// The inode's place in the table (in decoding order).
    pub(super) fn pos(&self, nid: u64) -> Option<usize> {
        let i = *self.index.get(usize::try_from(nid).ok()?)?;
        (i != u32::MAX).then_some(i as usize)
    }

    pub(super) fn contains_key(&self, nid: &u64) -> bool {
        self.pos(*nid).is_some()
    }

    pub(super) fn get(&self, nid: &u64) -> Option<&Ino> {
        self.list.get(self.pos(*nid)?)
    }

    pub(super) fn get_mut(&mut self, nid: &u64) -> Option<&mut Ino> {
        let p = self.pos(*nid)?;
        self.list.get_mut(p)
    }

    /// Where the entries of directory `nid` are (`None` if it is not a decoded directory).
    pub(super) fn dir_data(&self, nid: &u64) -> Option<DirData> {
        self.dirs.get(self.get(nid)?.dir as usize).copied()
    }

    /// The tree entry of inode `nid`, if it was kept and is still there.
    pub(super) fn entry(&self, nid: &u64) -> Option<&Entry> {
        self.entries.get(self.get(nid)?.entry as usize)?.as_deref()
    }

    pub(super) fn entry_mut(&mut self, nid: &u64) -> Option<&mut Entry> {
        let i = self.get(nid)?.entry as usize;
        self.entries.get_mut(i)?.as_deref_mut()
    }

    /// Move the tree entry of inode `nid` out of the table.
    pub(super) fn take_entry(&mut self, nid: &u64) -> Option<Entry> {
        self.take_entry_at(self.pos(*nid)?)
    }

    /// Move the tree entry of the inode at place `pos` out of the table.
    pub(super) fn take_entry_at(&mut self, pos: usize) -> Option<Entry> {
        let i = self.list.get(pos)?.entry as usize;
        self.entries.get_mut(i)?.take().map(|b| *b)
    }

    /// The inode at place `pos` of the table.
    pub(super) fn at(&self, pos: usize) -> Option<&Ino> {
        self.list.get(pos)
    }

    pub(super) fn at_mut(&mut self, pos: usize) -> Option<&mut Ino> {
        self.list.get_mut(pos)
    }

    /// The nid of every inode, by place in the table.
    pub(super) fn nids_by_pos(&self) -> Vec<u64> {
        let mut v = vec![u64::MAX; self.list.len()];
        for (nid, &i) in self.index.iter().enumerate() {
            if let Some(n) = v.get_mut(i as usize) {
                *n = nid as u64;
            }
        }
        v
    }

    /// Only called for nids whose inode decoded, hence inside the slot range (and so fewer
    /// than 2^32 of them: the index holds u32 places).
    #[inline]
    pub(super) fn insert(&mut self, nid: u64, mut ino: Ino, dir: Option<DirData>, entry: Option<Box<Entry>>) {
        let Some(slot) = usize::try_from(nid).ok().and_then(|n| self.index.get_mut(n)) else {
            return;
        };
        *slot = self.list.len() as u32;
        if let Some(d) = dir {
            ino.dir = self.dirs.len() as u32;
            self.dirs.push(d);
        }
        if let Some(e) = entry {
            ino.entry = self.entries.len() as u32;
            self.entries.push(Some(e));
        }
        self.list.push(ino);
        if self.list.len() >= self.populated {
            // (`populated` stops at the capacity: when the list grows into a new allocation,
            // the next records' pages there are made present from its length on.)
            let (len, cap) = (self.list.len(), self.list.capacity());
            let to = len.saturating_add(LIST_POPULATE_STEP).min(cap);
            self.list.populate(len..to);
            self.populated = to;
        }
    }

    /// Give inode `nid`, not yet in the table, its place now and decode it later ([`Self::settle`]);
    /// `ftype` is the file type of the entry naming it. False (nothing done) if it is in the
    /// table already or its nid is out of range.
    pub(super) fn insert_pending(&mut self, nid: u64, ftype: u8) -> bool {
        if self.contains_key(&nid) || usize::try_from(nid).ok().is_none_or(|n| n >= self.index.len()) {
            return false;
        }
        let ino = Ino {
            bytes: 0,
            marker_bytes: 0,
            dir: NO_DIR,
            entry: NO_DIR,
            names: 0,
            nlink: 0,
            ftype,
            raw_whiteout: false,
            user_whiteout: false,
            device: false,
            marked: false,
            pending: true,
        };
        self.insert(nid, ino, None, None);
        true
    }

    /// Put the decoded inode `nid` in the place [`Self::insert_pending`] gave it, keeping the
    /// count of names the walk made. False if it is not what a pending place may hold: an
    /// inode of the file type the entries naming it said (the walk compared each with the
    /// first), neither a directory nor a raw whiteout, without a kept entry.
    pub(super) fn settle(&mut self, nid: u64, ino: Ino) -> bool {
        let Some(p) = self.get_mut(&nid) else {
            return false;
        };
        if !p.pending
            || ino.pending
            || ino.ftype != p.ftype
            || ino.raw_whiteout
            || ino.dir != NO_DIR
            || ino.entry != NO_DIR
        {
            return false;
        }
        *p = Ino { names: p.names, ..ino };
        true
    }

    /// The place of every inode in the table, in nid order.
    pub(super) fn places_in_nid_order(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.iter().copied().filter(|&i| i != u32::MAX)
    }

    /// Room the list was made with: the superblock's inode count, at most the slots (a
    /// hostile count makes room that is never made present: see `insert`).
    pub(super) fn room(&self) -> usize {
        self.list.capacity()
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }
}

/// What the type-specific part of an inode decoded to (borrowed from the image: the tree's
/// copies are made only when it is built).
#[derive(Default)]
struct Body<'a> {
    /// A small regular file's inline content: (the part in blocks, the inline tail).
    content: Option<(&'a [u8], &'a [u8])>,
    /// A symlink's target, likewise.
    target: Option<(&'a [u8], &'a [u8])>,
    dir: Option<DirData>,
    /// A character device 0/0 as stored: only legitimate as a root whiteout stub.
    raw_whiteout: bool,
    rdev: u32,
    /// Bytes stored inline right after the inode and its xattrs.
    inline_len: u64,
    /// Length of the inline content or symlink target.
    data_len: u64,
}

impl<'a> Reader<'a> {
    /// Decode the inode at `nid`. Errors carry no path yet (see [`super::with_path`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn decode(&mut self, nid: u64) -> Result<(Ino, Option<DirData>, Option<Box<Entry>>), ReadError> {
        let bad = |reason: String| ReadError::Inode { nid, path: String::new(), reason };
        let off = nid
            .checked_mul(SLOT_SIZE)
            .and_then(|o| o.checked_add(self.meta_off))
            .ok_or_else(|| bad("nid out of range".into()))?;
        let di = match self.disk_inode(off) {
            Ok(di) => di,
            Err(e) => return Err(bad(e)),
        };
        let inode = self.inode_of(&di).map_err(bad)?;
        let ftype = match dirent_file_type(inode.mode) {
            FT_UNKNOWN => return Err(bad(format!("invalid file type {:#o} in mode", inode.mode & tree::S_IFMT))),
            ft => ft,
        };
        let isize = di.disk_size() as u64;
        let xattr_size = xattr_ibody_size(di.xattr_icount) as u64;
        let xattr_off = off + isize; // off + isize was in bounds above
        let data_off = xattr_off.checked_add(xattr_size).ok_or_else(|| bad("xattrs out of range".into()))?;
        let body = self.decode_body(nid, &di, &inode, data_off)?;

        // The inode, its xattrs and its inline tail may not overlap any other inode.
        let span = isize + xattr_size + body.inline_len;
        if !self.slots.claim(nid, span.div_ceil(SLOT_SIZE)) {
            return Err(bad("inode overlaps another inode or runs past the end of the image".into()));
        }

        let external = inode.is_reg() && inode.size > 0 && di.datalayout() == LAYOUT_CHUNK_BASED;
        // The two xattr lists are reused from inode to inode (no allocation per inode).
        let mut x = Applied { xattrs: std::mem::take(&mut self.kept_xattrs), ..Applied::default() };
        x.xattrs.clear();
        if xattr_size > 0 {
            // At most 255 shared and 64 Ki inline entries of bounded size: the budget is
            // charged once they are decoded.
            let mut raw = std::mem::take(&mut self.raw_xattrs);
            self.read_xattrs(xattr_off, xattr_size, &mut raw).map_err(bad)?;
            self.budget(raw.iter().map(RawXattr::cost).sum())?;
            if let Err(e) = self.apply_xattrs(nid, &raw, external, &mut x) {
                return Err(bad(e));
            }
            self.raw_xattrs = raw;
        }
        // What the writer always adds must be there: otherwise the kernel (and overlayfs)
        // would see something else than the tree this reader returns.
        if external && !x.marks.metacopy {
            return Err(bad("external file without the overlay metacopy xattr".into()));
        }
        if nid == self.root_nid && !x.marks.root_opaque {
            return Err(bad("root directory without trusted.overlay.opaque=y".into()));
        }
        let mut inode = Inode { rdev: body.rdev, ..inode };
        let user_whiteout = self.unescape_whiteout(&mut inode, &mut x.xattrs);
        let kind = inode.mode & tree::S_IFMT;
        let device = (kind == tree::S_IFCHR && inode.rdev != 0) || kind == tree::S_IFBLK;
        let v1 = self.version >= 1;
        let marked = body.dir.is_some() && has_whiteout_markers(&x.xattrs, v1);
        let marker_bytes = if marked {
            x.xattrs.iter().filter(|m| is_raw_whiteout_marker(m, v1)).map(RawXattr::cost).sum()
        } else {
            0
        };
        let payload_len = x.payload.map_or(0, <[u8]>::len) as u64;
        let bytes = x.xattrs.iter().map(RawXattr::cost).sum::<u64>() + payload_len + body.data_len;
        // The tree's copy of the entry; when vetting, only the root's and the raw whiteouts'
        // (the stub checks compare them).
        let keep = self.keep || nid == self.root_nid || body.raw_whiteout;
        let entry = keep.then(|| {
            let payload = match (body.target, x.payload) {
                (Some((blocks, tail)), _) => Some([blocks, tail].concat()),
                (None, p) => p.map(<[u8]>::to_vec),
            };
            Box::new(Entry {
                inode,
                payload,
                content: body.content.map(|(blocks, tail)| [blocks, tail].concat()),
                xattrs: x.xattrs.iter().map(|r| r.to_xattr()).collect(),
                fsverity_digest: x.fsverity_digest,
            })
        });
        self.kept_xattrs = x.xattrs;
        let ino = Ino {
            // Bounded as said at `Ino::bytes`; saturated, it would still exceed any budget.
            bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
            // At most the four markers (duplicates are refused), short names, short values.
            marker_bytes: u16::try_from(marker_bytes).unwrap_or(u16::MAX),
            dir: NO_DIR,
            entry: NO_DIR,
            names: 0,
            nlink: di.nlink,
            ftype,
            raw_whiteout: body.raw_whiteout,
            user_whiteout,
            device,
            marked,
            pending: false,
        };
        Ok((ino, body.dir, entry))
    }

    /// The on-disk inode at byte offset `off`: known format bits, whole inside the image.
    /// (Always inlined, and its result taken with a `match`: through `?` and `ok_or_else` the
    /// decoded fields went into a `Result` in memory, byte by byte, and were read back with a
    /// wider load the store buffer cannot forward; that load then waited until the stores had
    /// left for the cache, and with them the inode's first bytes, often not yet in the cache:
    /// in `perf annotate`, 17 % of `decode`'s time on one thread and 40 % on a helper thread.)
    #[inline(always)]
    fn disk_inode(&self, off: u64) -> Result<DiskInode, String> {
        let beyond = || "inode beyond the end of the image".to_string();
        let Some(head) = self.bytes(off, INODE_COMPACT_SIZE as u64) else { return Err(beyond()) };
        let format = u16::from_le_bytes([head[0], head[1]]);
        if format & !I_FORMAT_ALL != 0 {
            return Err(format!("unknown inode format bits {format:#x}"));
        }
        let extended = format & (1 << I_VERSION_BIT) != 0;
        let isize = if extended { INODE_EXTENDED_SIZE } else { INODE_COMPACT_SIZE } as u64;
        match self.bytes(off, isize).and_then(DiskInode::decode) {
            Some(di) => Ok(di),
            None => Err(beyond()),
        }
    }

    /// The tree's view of the inode's metadata (`rdev` is filled in from the data part).
    fn inode_of(&self, di: &DiskInode) -> Result<Inode, String> {
        let (mtime, mtime_nsec) = if di.extended {
            (di.mtime as i64, di.mtime_nsec)
        } else {
            // Current kernels read a compact inode's mtime as the superblock's epoch plus
            // its 32-bit field (zero from the composefs writer).
            let mtime = self.build_time.checked_add(di.mtime as i64).ok_or("compact inode mtime out of range")?;
            (mtime, self.build_nsec)
        };
        if mtime_nsec >= 1_000_000_000 {
            return Err(format!("mtime nanoseconds {mtime_nsec} out of range"));
        }
        Ok(Inode { mode: u32::from(di.mode), uid: di.uid, gid: di.gid, rdev: 0, size: di.size, mtime, mtime_nsec })
    }

    /// The type-specific data of an inode whose xattrs end at `data_off`.
    fn decode_body(&mut self, nid: u64, di: &DiskInode, inode: &Inode, data_off: u64) -> Result<Body<'a>, ReadError> {
        let bad = |reason: String| ReadError::Inode { nid, path: String::new(), reason };
        let (layout, size, i_u) = (di.datalayout(), inode.size, di.i_u);
        let check_layout = |allowed: &[u16]| {
            if allowed.contains(&layout) {
                Ok(())
            } else {
                Err(bad(format!("data layout {layout} not valid for this file type")))
            }
        };
        let mut body = Body::default();
        match inode.mode & tree::S_IFMT {
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
                body.inline_len = tail;
                body.dir = Some(DirData { blocks_off, blocks_len, tail: (tail > 0).then_some((data_off, tail)) });
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
                if u64::from(format) != bits - u64::from(BLOCK_BITS) {
                    let want = bits - u64::from(BLOCK_BITS);
                    return Err(bad(format!("chunk format {format:#x} (the writer uses {want:#x})")));
                }
            }
            tree::S_IFREG if size > 0 => {
                check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?;
                if size > INLINE_CONTENT_MAX as u64 {
                    return Err(bad(format!("inline content of {size} bytes (limit {INLINE_CONTENT_MAX})")));
                }
                let (blocks, tail) = self.read_data(layout, size, i_u, data_off).map_err(bad)?;
                body.inline_len = if layout == LAYOUT_FLAT_INLINE { size % BLOCK_SIZE } else { 0 };
                self.budget(size)?;
                body.data_len = size;
                body.content = Some((blocks, tail));
            }
            tree::S_IFREG => check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?,
            tree::S_IFLNK => {
                check_layout(&[LAYOUT_FLAT_PLAIN, LAYOUT_FLAT_INLINE])?;
                if size == 0 || size >= tree::PATH_MAX as u64 {
                    return Err(bad(format!("symlink target length {size}")));
                }
                let (blocks, tail) = self.read_data(layout, size, i_u, data_off).map_err(bad)?;
                if blocks.contains(&0) || tail.contains(&0) {
                    return Err(bad("NUL byte in symlink target".into()));
                }
                body.inline_len = if layout == LAYOUT_FLAT_INLINE { size } else { 0 };
                self.budget(size)?;
                body.data_len = size;
                body.target = Some((blocks, tail));
            }
            tree::S_IFCHR | tree::S_IFBLK => {
                check_layout(&[LAYOUT_FLAT_PLAIN])?;
                if size != 0 {
                    return Err(bad(format!("device node of size {size}")));
                }
                body.rdev = i_u;
                body.raw_whiteout = inode.mode & tree::S_IFMT == tree::S_IFCHR && i_u == 0;
            }
            _ => {
                check_layout(&[LAYOUT_FLAT_PLAIN])?;
                if size != 0 {
                    return Err(bad(format!("fifo or socket of size {size}")));
                }
            }
        }
        Ok(body)
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

    /// Find `size` bytes (already bounded by the caller) of flat file data: (the part in
    /// blocks, the inline tail), both inside the image.
    fn read_data(
        &mut self,
        layout: u16,
        size: u64,
        blkaddr: u32,
        inline_off: u64,
    ) -> Result<(&'a [u8], &'a [u8]), String> {
        let (blocks_len, tail) = self.split_data(layout, size)?;
        let off = self.claim_blocks(blkaddr, blocks_len)?;
        let mut data: (&'a [u8], &'a [u8]) = (&[], &[]);
        if blocks_len > 0 {
            data.0 = self.bytes(off, blocks_len).ok_or("data beyond the image")?;
        }
        if tail > 0 {
            if inline_off / BLOCK_SIZE != (inline_off + tail - 1) / BLOCK_SIZE {
                return Err("inline data crosses a block boundary".into());
            }
            data.1 = self.bytes(inline_off, tail).ok_or("inline data beyond the image")?;
        }
        Ok(data)
    }
}

/// log2 of the chunk size the composefs writer picks for an external file of `size` bytes:
/// the smallest power of two holding the file, at least a block, at most 2^31 blocks.
pub(super) fn chunk_bits(size: u64) -> u64 {
    let bits = if size <= 1 { 0 } else { 64 - u64::from((size - 1).leading_zeros()) };
    bits.clamp(u64::from(BLOCK_BITS), u64::from(BLOCK_BITS) + 31)
}
