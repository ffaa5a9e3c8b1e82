//! Layout: where everything goes. Compact inodes take the minimum mtime (the superblock's build
//! time); xattrs used by more than one inode go to the shared table; directories count their
//! subdirectories in nlink; each inode gets its slot-aligned position, moved to the next block
//! when its inline tail would straddle a block boundary (or its tail goes to a data block).

use std::collections::HashMap;

use super::{round_up, Builder, Cat, Target, WriteError, INLINE};
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
        self.share_xattrs();
        self.dir_nlinks();
        self.place_inodes()
    }

    /// Shared xattrs: every (name, value) used by more than one inode, in the canonical table
    /// order (name descending, then longer value first, then value descending); each inode
    /// references at most [`MAX_SHARED_PER_INODE`] of them.
    fn share_xattrs(&mut self) {
        let mut pair_id: HashMap<(Cat<'a>, Cat<'a>), u32> = HashMap::with_capacity(self.xattrs.len() / 2 + 16);
        let mut pairs: Vec<(u32, u64)> = Vec::new(); // (use count, shared offset)
        let mut id_of: Vec<u32> = Vec::with_capacity(self.xattrs.len());
        for x in &self.xattrs {
            let next = pairs.len() as u32;
            let id = *pair_id.entry((x.key, x.value)).or_insert(next);
            if id == next {
                pairs.push((0, INLINE));
            }
            pairs[id as usize].0 += 1;
            id_of.push(id);
        }
        let mut shared: Vec<((Cat<'a>, Cat<'a>), u32)> =
            pair_id.into_iter().filter(|(_, id)| pairs[*id as usize].0 > 1).collect();
        shared.sort_unstable_by(|(x, _), (y, _)| {
            y.0.cmp(&x.0).then_with(|| y.1.len().cmp(&x.1.len())).then_with(|| y.1.cmp(&x.1))
        });
        let mut off = 0u64;
        let mut kbuf = Vec::new();
        for (pair, id) in &shared {
            pairs[*id as usize].1 = off;
            let (_, suffix) = xattr_prefix_split(pair.0.copy_to(&mut kbuf));
            off += xattr_entry_size(suffix.len(), pair.1.len()) as u64;
        }
        self.shared_size = off;
        self.shared = shared.into_iter().map(|(p, _)| p).collect();
        for ino in &mut self.inos {
            let mut n_shared = 0;
            let range = ino.xa.0..ino.xa.0 + ino.xa.1;
            for (x, &id) in self.xattrs[range.clone()].iter_mut().zip(&id_of[range]) {
                x.shared = INLINE;
                let cand = pairs[id as usize].1;
                if n_shared < MAX_SHARED_PER_INODE && cand != INLINE {
                    x.shared = cand;
                    n_shared += 1;
                }
            }
            ino.n_shared = n_shared;
        }
        drop(id_of);
        drop(pairs);
    }

    /// Directory nlink: 2 + subdirectories.
    fn dir_nlinks(&mut self) {
        for i in 0..self.inos.len() {
            if self.inos[i].ftype() == S_IFDIR {
                let (s, n) = self.inos[i].dirents;
                let mut subdirs = 0u32;
                for d in &self.dirents[s..s + n] {
                    if d.name == b"." || d.name == b".." {
                        continue;
                    }
                    if let Target::Ino(t) = d.target {
                        let t = &self.inos[t as usize];
                        // Hard links never name directories, so a directory target is a child.
                        if t.ftype() == S_IFDIR {
                            subdirs = subdirs.saturating_add(1);
                        }
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
        let mut kbuf = Vec::new();
        for i in 0..self.inos.len() {
            let p = self.place_inode(i, pos, &mut kbuf)?;
            self.n_data_blocks = self.n_data_blocks.checked_add(p.n_blocks).ok_or(WriteError::TooLarge("blocks"))?;
            let ino = &mut self.inos[i];
            ino.n_blocks = p.n_blocks;
            ino.tail = p.tail;
            ino.compact = p.compact;
            ino.ipad = p.ipad;
            ino.xattr_size = p.xattr_size;
            ino.isize = p.isize;
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
    fn place_inode(&self, i: usize, start: u64, kbuf: &mut Vec<u8>) -> Result<Placement, WriteError> {
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
        for x in &self.xattrs[ino.xa.0..ino.xa.0 + ino.xa.1] {
            if x.shared == INLINE {
                let (_, suffix) = xattr_prefix_split(x.key.copy_to(kbuf));
                unshared += xattr_entry_size(suffix.len(), x.value.len()) as u64;
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
                let (s, n) = ino.dirents;
                let mut blocks = 0u64;
                let mut bsize = 0u64;
                for d in &self.dirents[s..s + n] {
                    let len = (DIRENT_SIZE + d.name.len()) as u64;
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
