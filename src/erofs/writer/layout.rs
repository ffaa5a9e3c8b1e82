//! Layout: where everything goes. Compact inodes take the minimum mtime (the superblock's build
//! time); xattrs used by more than one inode go to the shared table; directories count their
//! subdirectories in nlink; each inode gets its slot-aligned position, moved to the next block
//! when its inline tail would straddle a block boundary (or its tail goes to a data block).

use super::{round_up, Builder, WriteError, INLINE, NAME_DOT, NAME_DOTDOT};
use crate::erofs::format::*;
use crate::tree::{S_IFDIR, S_IFLNK, S_IFREG};

/// Where one inode goes, and in what form.
struct Placement {
    /// Offset of the inode (slot-aligned, after `ipad` bytes of padding).
    pos: u64,
    ipad: u64,
    compact: bool,
    xattr_size: u64,
    /// Data blocks and inline tail bytes (a tail that does not fit became a block).
    n_blocks: u64,
    tail: u64,
    /// Inode + xattrs + inline tail.
    isize: u64,
}

impl<'a> Builder<'a> {
    pub(super) fn layout(&mut self) -> Result<(), WriteError> {
        // Compact inodes take the superblock's build time: the minimum.
        self.min_mtime = self.inos.iter().map(|i| (i.mtime, i.mtime_nsec)).min().unwrap_or((0, 0));
        self.share_xattrs()?;
        self.dir_nlinks();
        self.place_inodes()
    }

    /// Shared xattrs: every (name, value) used by more than one inode, in the canonical table
    /// order (name descending, then longer value first, then value descending); each inode
    /// references at most [`MAX_SHARED_PER_INODE`] of them.
    fn share_xattrs(&mut self) -> Result<(), WriteError> {
        // Every xattr was counted into `pairs` as its inode's set was made.
        let pairs = &mut self.pairs;
        let keys = &self.keys;
        let mut shared: Vec<u32> = (0..pairs.list.len() as u32).filter(|&p| pairs.list[p as usize].count > 1).collect();
        shared.sort_unstable_by(|&x, &y| {
            let (x, y) = (&pairs.list[x as usize], &pairs.list[y as usize]);
            keys.get(y.key)
                .name
                .cmp(&keys.get(x.key).name)
                .then_with(|| y.value.len().cmp(&x.value.len()))
                .then_with(|| y.value.cmp(&x.value))
        });
        let mut off = 0u64;
        for &p in &shared {
            let pair = &mut pairs.list[p as usize];
            pair.offset = u32::try_from(off).map_err(|_| WriteError::TooLarge("shared xattr table"))?;
            off += xattr_entry_size(keys.get(pair.key).suffix.len(), pair.value.len()) as u64;
        }
        self.shared_size = off;
        self.shared = shared.iter().map(|&p| (pairs.list[p as usize].key, pairs.list[p as usize].value)).collect();
        for ino in &mut self.inos {
            let mut n_shared = 0;
            for x in &mut self.xattrs[ino.xa()] {
                let cand = pairs.list[x.pair as usize].offset;
                x.shared = INLINE;
                if n_shared < MAX_SHARED_PER_INODE && cand != INLINE {
                    x.shared = cand;
                    n_shared += 1;
                }
            }
            ino.n_shared = n_shared as u8;
        }
        Ok(())
    }

    /// Directory nlink: 2 + subdirectories.
    fn dir_nlinks(&mut self) {
        for i in 0..self.inos.len() {
            if self.inos[i].ftype() == S_IFDIR {
                let mut subdirs = 0u32;
                for d in &self.dirents[self.inos[i].dirents()] {
                    if d.name == NAME_DOT || d.name == NAME_DOTDOT {
                        continue;
                    }
                    // Hard links never name directories, so a directory target is a child.
                    if self.inos[d.target as usize].ftype() == S_IFDIR {
                        subdirs = subdirs.saturating_add(1);
                    }
                }
                self.inos[i].nlink = subdirs.saturating_add(2);
            }
        }
    }

    /// Inode placement, in breadth-first order from the first slot after the superblock.
    fn place_inodes(&mut self) -> Result<(), WriteError> {
        let mut pos = EROFS_SUPER_OFFSET + EROFS_SUPER_SIZE as u64;
        let meta_start = pos / BLOCK_SIZE * BLOCK_SIZE;
        for i in 0..self.inos.len() {
            let p = self.place_inode(i, pos)?;
            self.n_data_blocks = self.n_data_blocks.checked_add(p.n_blocks).ok_or(WriteError::TooLarge("blocks"))?;
            let ino = &mut self.inos[i];
            let narrow = |v: u64| u32::try_from(v).map_err(|_| WriteError::TooLarge("inode layout"));
            ino.n_blocks = narrow(p.n_blocks)?;
            ino.tail = narrow(p.tail)?;
            ino.compact = p.compact;
            ino.ipad = narrow(p.ipad)?;
            ino.xattr_size = narrow(p.xattr_size)?;
            ino.isize = narrow(p.isize)?;
            ino.nid = (p.pos - meta_start) / SLOT_SIZE;
            pos = p.pos + p.isize;
        }
        self.inodes_end = round_up(pos, SLOT_SIZE);
        if self.inos[0].nid >= u16::MAX as u64 {
            return Err(WriteError::TooLarge("root inode position"));
        }
        let data_start = round_up(self.inodes_end + self.shared_size, BLOCK_SIZE);
        if data_start / BLOCK_SIZE + self.n_data_blocks > u32::MAX as u64 {
            return Err(WriteError::TooLarge("more than 2^32 blocks"));
        }
        Ok(())
    }

    /// Inode `i`, placed at the first slot from `start`: its form, its xattr area, and where
    /// its tail goes.
    fn place_inode(&self, i: usize, start: u64) -> Result<Placement, WriteError> {
        let (n_blocks, tail) = self.data_size(i);
        let ino = &self.inos[i];
        let dir_size = n_blocks * BLOCK_SIZE + tail;
        let size_for_compact = if ino.ftype() == S_IFDIR { dir_size } else { ino.size };
        let compact = (ino.mtime, ino.mtime_nsec) == self.min_mtime
            && ino.nlink <= u16::MAX as u32
            && ino.uid <= u16::MAX as u32
            && ino.gid <= u16::MAX as u32
            && size_for_compact <= u32::MAX as u64;
        let inode_size = if compact { INODE_COMPACT_SIZE } else { INODE_EXTENDED_SIZE } as u64;
        let mut unshared = 0u64;
        for x in &self.xattrs[ino.xa()] {
            if x.shared == INLINE {
                let value = &self.pairs.list[x.pair as usize].value;
                unshared += xattr_entry_size(self.keys.get(x.key).suffix.len(), value.len()) as u64;
            }
        }
        let xattr_size = if ino.n_shared == 0 && unshared == 0 {
            0
        } else {
            round_up(XATTR_IBODY_HEADER_SIZE as u64 + ino.n_shared as u64 * 4 + unshared, 4)
        };
        if xattr_size > 0 && (xattr_size - XATTR_IBODY_HEADER_SIZE as u64) / 4 + 1 > u16::MAX as u64 {
            return Err(self.ino_err(i, "xattrs too large for one inode"));
        }
        let pos = round_up(start, SLOT_SIZE);
        let (mut n_blocks, mut tail) = (n_blocks, tail);
        let extra = if ino.ftype() == S_IFLNK {
            let total = inode_size + xattr_size + tail;
            if total / BLOCK_SIZE > 0 {
                n_blocks += 1;
                tail = 0;
            }
            if pos / BLOCK_SIZE != (pos + total - 1) / BLOCK_SIZE {
                round_up(pos, BLOCK_SIZE) - pos
            } else {
                0
            }
        } else {
            let non_tail = inode_size + xattr_size;
            let remainder = BLOCK_SIZE - (pos + non_tail) % BLOCK_SIZE;
            if remainder < tail {
                let extra_pad = round_up(remainder, SLOT_SIZE);
                let remainder2 = BLOCK_SIZE - (pos + non_tail + extra_pad) % BLOCK_SIZE;
                if tail <= remainder2 {
                    extra_pad
                } else {
                    n_blocks += 1;
                    tail = 0;
                    round_up(pos, BLOCK_SIZE) - pos
                }
            } else {
                0
            }
        };
        Ok(Placement {
            pos: pos + extra,
            ipad: pos - start + extra,
            compact,
            xattr_size,
            n_blocks,
            tail,
            isize: inode_size + xattr_size + tail,
        })
    }

    /// (full blocks, inline tail bytes) before tail placement.
    fn data_size(&self, i: usize) -> (u64, u64) {
        let ino = &self.inos[i];
        match ino.ftype() {
            S_IFDIR => {
                let mut blocks = 0u64;
                let mut bsize = 0u64;
                for d in &self.dirents[ino.dirents()] {
                    let len = (DIRENT_SIZE + self.dirent_name(d).len()) as u64;
                    if bsize + len > BLOCK_SIZE {
                        blocks += 1;
                        bsize = 0;
                    }
                    bsize += len;
                }
                if bsize > BLOCK_SIZE / 2 {
                    blocks += 1;
                    bsize = 0;
                }
                (blocks, bsize)
            }
            S_IFLNK => (0, ino.payload.len() as u64),
            S_IFREG if ino.size > 0 => match ino.content {
                Some(_) => {
                    let (mut b, mut t) = (ino.size / BLOCK_SIZE, ino.size % BLOCK_SIZE);
                    if t > BLOCK_SIZE / 2 {
                        b += 1;
                        t = 0;
                    }
                    (b, t)
                }
                None => (0, ino.chunk_count as u64 * 4),
            },
            _ => (0, 0),
        }
    }
}
