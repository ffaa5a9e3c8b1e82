//! Emit: the bytes, in image order. The composefs header and the superblock; the inodes, each
//! with its xattrs (inline header with the name filter, shared ids, inline entries) and its
//! inline tail (directory entries, symlink target, file content or an external file's null
//! chunk map); the shared xattr table; the data blocks.

use std::io::Write;

use super::xattrs::{KeyInfo, X};
use super::{round_up, Builder, Cat, Dirent, Ino, WriteError, INLINE, UNRESOLVED};
use crate::erofs::format::*;
use crate::tree::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG};

impl<'a> Builder<'a> {
    pub(super) fn emit(&self, out: &mut dyn Write) -> Result<(), WriteError> {
        let mut o = Out { w: std::io::BufWriter::with_capacity(1 << 17, out), pos: 0 };
        let data_start = round_up(self.inodes_end + self.shared_size, BLOCK_SIZE);
        self.emit_header(&mut o, data_start)?;
        let mut current_end = data_start;
        let mut ibuf = [0u8; INODE_EXTENDED_SIZE];
        for (i, ino) in self.inos.iter().enumerate() {
            self.emit_inode(&mut o, i, ino, &mut current_end, &mut ibuf)?;
        }
        o.align(SLOT_SIZE)?;
        debug_assert_eq!(o.pos, self.inodes_end);
        for &(k, v) in &self.shared {
            o.xattr(self.keys.get(k), v)?;
        }
        o.align(BLOCK_SIZE)?;
        debug_assert_eq!(o.pos, data_start);
        self.emit_data(&mut o)?;
        debug_assert_eq!(o.pos, data_start + self.n_data_blocks * BLOCK_SIZE);
        o.w.flush()?;
        Ok(())
    }

    /// The composefs header, padding, and the EROFS superblock (data blocks start at `data_start`).
    fn emit_header(&self, o: &mut Out<'_>, data_start: u64) -> Result<(), WriteError> {
        let header = ComposefsHeader {
            magic: COMPOSEFS_MAGIC,
            version: COMPOSEFS_HEADER_VERSION,
            flags: if self.has_acl { COMPOSEFS_FLAG_HAS_ACL } else { 0 },
            composefs_version: self.version,
        };
        o.put(&header.encode())?;
        o.pad(EROFS_SUPER_OFFSET - COMPOSEFS_HEADER_SIZE as u64)?;
        let sb = SuperBlock {
            magic: EROFS_SUPER_MAGIC,
            feature_compat: FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER,
            blkszbits: BLOCK_BITS as u8,
            root_nid: self.inos[0].nid as u16,
            inos: self.inos.len() as u64,
            build_time: self.min_mtime.0 as u64,
            build_time_nsec: self.min_mtime.1,
            blocks: (data_start / BLOCK_SIZE + self.n_data_blocks) as u32,
            meta_blkaddr: ((EROFS_SUPER_OFFSET + EROFS_SUPER_SIZE as u64) / BLOCK_SIZE) as u32,
            xattr_blkaddr: (self.inodes_end / BLOCK_SIZE) as u32,
            ..SuperBlock::default()
        };
        o.put(&sb.encode())?;

        Ok(())
    }

    /// Inode `i` with its xattrs and inline tail; its data blocks are numbered from
    /// `current_end` on.
    fn emit_inode(
        &self,
        o: &mut Out<'_>,
        i: usize,
        ino: &Ino<'a>,
        current_end: &mut u64,
        ibuf: &mut [u8; INODE_EXTENDED_SIZE],
    ) -> Result<(), WriteError> {
        o.pad(ino.ipad as u64)?;
        debug_assert_eq!(o.pos % SLOT_SIZE, 0);
        let ftype = ino.ftype();
        let (n_blocks, tail) = (ino.n_blocks as u64, ino.tail as u64);
        let xattr_icount =
            if ino.xattr_size == 0 { 0 } else { ((ino.xattr_size as usize - XATTR_IBODY_HEADER_SIZE) / 4 + 1) as u16 };
        let mut layout = if tail > 0 { LAYOUT_FLAT_INLINE } else { LAYOUT_FLAT_PLAIN };
        let mut chunk_format: Option<u16> = None;
        let size = match ftype {
            S_IFDIR => n_blocks * BLOCK_SIZE + tail,
            S_IFREG => {
                if ino.size > 0 && ino.content.is_none() {
                    layout = LAYOUT_CHUNK_BASED;
                    chunk_format = Some((ino.chunk_bits as u32 - BLOCK_BITS) as u16);
                }
                ino.size
            }
            S_IFLNK => {
                if n_blocks == 0 {
                    tail
                } else {
                    ino.size
                }
            }
            _ => 0,
        };
        let mut i_u = 0u32;
        match ftype {
            S_IFCHR | S_IFBLK => i_u = ino.rdev,
            S_IFDIR | S_IFREG | S_IFLNK => {
                if n_blocks > 0 {
                    i_u = (*current_end / BLOCK_SIZE) as u32;
                    *current_end += BLOCK_SIZE * n_blocks;
                }
                if let Some(cf) = chunk_format {
                    i_u = (i_u & 0xffff_0000) | cf as u32;
                }
            }
            _ => {}
        }
        let format = layout << I_DATALAYOUT_BIT | (!ino.compact as u16) << I_VERSION_BIT;
        let di = DiskInode {
            extended: !ino.compact,
            format,
            xattr_icount,
            mode: ino.mode as u16,
            nlink: ino.nlink,
            size,
            i_u,
            ino: i as u32,
            uid: ino.uid,
            gid: ino.gid,
            // A compact inode's time is the superblock's build time (its own field is 0).
            mtime: if ino.compact { 0 } else { ino.mtime as u64 },
            mtime_nsec: if ino.compact { 0 } else { ino.mtime_nsec },
        };
        let n = di.encode(ibuf);
        o.put(&ibuf[..n])?;

        if ino.xattr_size > 0 {
            let xs: &[X] = &self.xattrs[ino.xa()];
            let filter = xs.iter().fold(0u32, |f, x| f | self.keys.get(x.key).filter_bit);
            o.put(&encode_xattr_ibody_header(!filter, ino.n_shared))?;
            for x in xs.iter().filter(|x| x.shared != INLINE) {
                let id = (self.inodes_end % BLOCK_SIZE + x.shared as u64) / 4;
                o.put(&(id as u32).to_le_bytes())?;
            }
            for x in xs.iter().filter(|x| x.shared == INLINE) {
                o.xattr(self.keys.get(x.key), self.pairs.list[x.pair as usize].value)?;
            }
        }

        match ftype {
            S_IFDIR => {
                self.write_dirents(o, ino, false)?;
            }
            S_IFLNK if n_blocks == 0 => o.put(ino.payload)?,
            S_IFREG if tail > 0 => match ino.content {
                Some(c) => o.put(&c[c.len() - tail as usize..])?,
                None => {
                    for _ in 0..ino.chunk_count {
                        o.put(&NULL_ADDR.to_le_bytes())?;
                    }
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// The data blocks: directory blocks, external files' chunk maps that did not fit inline,
    /// and the content of files and symlinks too large to be inline.
    fn emit_data(&self, o: &mut Out<'_>) -> Result<(), WriteError> {
        for ino in &self.inos {
            match ino.ftype() {
                S_IFDIR => self.write_dirents(o, ino, true)?,
                S_IFREG if ino.n_blocks > 0 => match ino.content {
                    None => {
                        let ff = [0xffu8; 256];
                        for _ in 0..BLOCK_SIZE / 256 {
                            o.put(&ff)?;
                        }
                    }
                    Some(c) => {
                        o.put(&c[..c.len().min(BLOCK_SIZE as usize)])?;
                        o.align(BLOCK_SIZE)?;
                    }
                },
                S_IFLNK if ino.n_blocks > 0 => {
                    o.put(&ino.payload[..ino.payload.len().min(BLOCK_SIZE as usize)])?;
                    o.align(BLOCK_SIZE)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Write a directory's entries: the full blocks (`blocks`) or the inline tail.
    fn write_dirents(&self, o: &mut Out<'_>, ino: &Ino<'a>, blocks: bool) -> Result<(), WriteError> {
        let ds = &self.dirents[ino.dirents()];
        let mut bsize = 0u64;
        let mut written = 0u64;
        let mut first = 0usize;
        for (i, d) in ds.iter().enumerate() {
            let len = (DIRENT_SIZE + self.dirent_name(d).len()) as u64;
            if bsize + len > BLOCK_SIZE {
                if blocks {
                    self.dirent_chunk(o, &ds[first..i], true)?;
                }
                written += 1;
                bsize = 0;
                first = i;
            }
            bsize += len;
        }
        if written < ino.n_blocks as u64 {
            if blocks {
                self.dirent_chunk(o, &ds[first..], true)?;
            }
            bsize = 0;
            first = ds.len();
        }
        if !blocks && bsize > 0 {
            self.dirent_chunk(o, &ds[first..], false)?;
        }
        Ok(())
    }

    fn dirent_chunk(&self, o: &mut Out<'_>, ds: &[Dirent], full_block: bool) -> Result<(), WriteError> {
        let mut nameoff = (ds.len() * DIRENT_SIZE) as u64;
        for d in ds {
            if d.target & UNRESOLVED != 0 {
                return Err(WriteError::TooLarge("unresolved directory entry"));
            }
            let t = &self.inos[d.target as usize];
            o.put(&encode_dirent(t.nid, nameoff as u16, dirent_file_type(t.mode)))?;
            nameoff += self.dirent_name(d).len() as u64;
        }
        for d in ds {
            o.put(self.dirent_name(d))?;
        }
        if full_block {
            o.align(BLOCK_SIZE)?;
        }
        Ok(())
    }
}

/// The output with its position (for alignment and the layout's debug checks).
struct Out<'w> {
    w: std::io::BufWriter<&'w mut dyn Write>,
    pos: u64,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.pos += b.len() as u64;
        self.w.write_all(b)
    }
    fn pad(&mut self, mut n: u64) -> std::io::Result<()> {
        const Z: [u8; 512] = [0; 512];
        while n > 0 {
            let k = n.min(Z.len() as u64);
            self.put(&Z[..k as usize])?;
            n -= k;
        }
        Ok(())
    }
    fn align(&mut self, to: u64) -> std::io::Result<()> {
        let end = round_up(self.pos, to);
        self.pad(end - self.pos)
    }
    /// One xattr entry: header, name suffix, value, padding to 4 bytes.
    fn xattr(&mut self, key: &KeyInfo<'_>, value: Cat<'_>) -> std::io::Result<()> {
        self.put(&encode_xattr_entry(key.suffix.len() as u8, key.index, value.len() as u16))?;
        self.put(key.suffix.a)?;
        self.put(key.suffix.b)?;
        self.put(value.a)?;
        self.put(value.b)?;
        self.align(4)
    }
}
