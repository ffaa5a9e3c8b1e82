//! On-disk constants and structures of the composefs EROFS image (little endian): the single
//! source of every constant of the format, byte-exact encoders for the writer, bounds-checked
//! decoders for readers, and the header codec ([`ImageHeader`]) that every caller checking an
//! image's composefs header and EROFS superblock goes through (reader, build validation, mount).

use std::os::fd::BorrowedFd;

use thiserror::Error;

/// composefs header magic at offset 0.
pub const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
/// Version of the composefs header layout.
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
/// Header flag: some inode carries a POSIX ACL xattr.
pub const COMPOSEFS_FLAG_HAS_ACL: u32 = 1;
/// Highest composefs format version this implementation writes and reads.
pub const COMPOSEFS_VERSION_MAX: u32 = 1;
pub const COMPOSEFS_HEADER_SIZE: usize = 32;

pub const EROFS_SUPER_MAGIC: u32 = 0xe0f5_e1e2;
pub const EROFS_SUPER_OFFSET: u64 = 1024;
pub const EROFS_SUPER_SIZE: usize = 128;
/// Bytes at the start of an image that hold the composefs header and the EROFS superblock.
pub const HEADER_AREA_SIZE: usize = EROFS_SUPER_OFFSET as usize + EROFS_SUPER_SIZE;
/// composefs images always use 4 KiB blocks.
pub const BLOCK_BITS: u32 = 12;
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// Inode slots: nids count 32-byte slots from the start of the metadata area.
pub const SLOT_BITS: u32 = 5;
pub const SLOT_SIZE: u64 = 1 << SLOT_BITS;

pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x4;
/// The only incompatible feature a composefs image may carry (chunk-based inodes).
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;

pub const INODE_COMPACT_SIZE: usize = 32;
pub const INODE_EXTENDED_SIZE: usize = 64;
pub const XATTR_IBODY_HEADER_SIZE: usize = 12;
pub const XATTR_ENTRY_SIZE: usize = 4;
pub const DIRENT_SIZE: usize = 12;

/// Data layouts (i_format bits 1..3).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;
pub const I_VERSION_BIT: u16 = 0;
pub const I_DATALAYOUT_BIT: u16 = 1;
/// i_format bits the format defines (version bit + 3 data layout bits).
pub const I_FORMAT_ALL: u16 = 0xf;
/// Chunk format: low bits hold log2(chunk size / block size).
pub const CHUNK_FORMAT_BLKBITS_MASK: u32 = 0x1f;
/// A chunk pointer meaning "hole".
pub const NULL_ADDR: u32 = 0xffff_ffff;
/// Most chunk pointers of an external file (its chunk map must fit one block).
pub const MAX_CHUNKS: u64 = 1024;
/// Largest regular file stored inside the image (the reference's `LCFS_INLINE_CONTENT_MAX`).
pub const INLINE_CONTENT_MAX: usize = 5000;
/// Per-inode xattr budget, counted the way the reference counts it (12 + the sum of
/// 7 + name + value per xattr): half of what an EROFS inode can hold.
pub const XATTR_BUDGET: usize = u16::MAX as usize / 2;

/// xattr name prefix indexes.
pub const XATTR_INDEX_USER: u8 = 1;
pub const XATTR_INDEX_POSIX_ACL_ACCESS: u8 = 2;
pub const XATTR_INDEX_POSIX_ACL_DEFAULT: u8 = 3;
pub const XATTR_INDEX_TRUSTED: u8 = 4;
pub const XATTR_INDEX_SECURITY: u8 = 6;
/// Prefixes by index (index 0: the full name is stored).
pub const XATTR_PREFIXES: [&[u8]; 7] =
    [b"", b"user.", b"system.posix_acl_access", b"system.posix_acl_default", b"trusted.", b"lustre.", b"security."];
/// Most shared xattrs the writer references from one inode.
pub const MAX_SHARED_PER_INODE: usize = 0x80;
pub const XATTR_FILTER_BITS: u32 = 32;
pub const XATTR_FILTER_SEED: u32 = 0x25bb_e08f;

/// The overlayfs xattrs a composefs image carries (see docs/writer.md).
pub const OVL_PREFIX: &[u8] = b"trusted.overlay.";
/// User xattrs in the overlay namespace are stored escaped under this prefix.
pub const OVL_ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
pub const OVL_METACOPY: &[u8] = b"trusted.overlay.metacopy";
pub const OVL_REDIRECT: &[u8] = b"trusted.overlay.redirect";
pub const OVL_OPAQUE: &[u8] = b"trusted.overlay.opaque";
/// Whiteout markers, as the user sees them (before escaping / after unescaping).
pub const OVL_WHITEOUT: &[u8] = b"trusted.overlay.whiteout";
pub const OVL_WHITEOUTS: &[u8] = b"trusted.overlay.whiteouts";
pub const USER_OVL_WHITEOUT: &[u8] = b"user.overlay.whiteout";
pub const USER_OVL_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
pub const USER_OVL_OPAQUE: &[u8] = b"user.overlay.opaque";
/// Header of a metacopy xattr that carries a digest: version 0, length 36, flags 0,
/// hash algorithm SHA-256 (followed by the 32-byte fs-verity digest).
pub const METACOPY_HEADER: [u8; 4] = [0, 36, 0, 1];
pub const METACOPY_DIGEST_SIZE: usize = METACOPY_HEADER.len() + 32;
pub const SELINUX_XATTR: &[u8] = b"security.selinux";

/// Directory entry file types.
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// Names of the 256 whiteout stubs (`00`..`ff`) the writer adds to the root.
pub static STUB_NAMES: [[u8; 2]; 256] = hex_names();

const fn hex_names() -> [[u8; 2]; 256] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
}

/// Which prefix index the writer uses for a full xattr name, and the rest of the name.
/// The order of the checks matters ("system.posix_acl_access" before "trusted.", ...)
/// and matches the reference writer; "lustre." is never used for writing.
pub fn xattr_prefix_split(name: &[u8]) -> (u8, &[u8]) {
    const ORDER: [u8; 5] = [
        XATTR_INDEX_USER,
        XATTR_INDEX_POSIX_ACL_ACCESS,
        XATTR_INDEX_POSIX_ACL_DEFAULT,
        XATTR_INDEX_TRUSTED,
        XATTR_INDEX_SECURITY,
    ];
    for idx in ORDER {
        let p = XATTR_PREFIXES[idx as usize];
        if let Some(rest) = name.strip_prefix(p) {
            return (idx, rest);
        }
    }
    (0, name)
}

/// Size of one xattr entry (header + name suffix + value, 4-byte aligned).
pub fn xattr_entry_size(suffix_len: usize, value_len: usize) -> usize {
    (XATTR_ENTRY_SIZE + suffix_len + value_len + 3) & !3
}

/// xxHash32 as the kernel uses it for the xattr name filter. A `const fn` (so the bits of the
/// names every composefs image carries are computed at build time by this same code: see
/// `reader::xattr::filter_bit`), hence the index loops.
pub const fn xxh32(input: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    const fn rd(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }
    const fn round(acc: u32, lane: u32) -> u32 {
        acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(13).wrapping_mul(P1)
    }
    let n = input.len();
    let mut i = 0;
    let mut h: u32;
    if n >= 16 {
        let (mut v0, mut v1) = (seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2));
        let (mut v2, mut v3) = (seed, seed.wrapping_sub(P1));
        while n - i >= 16 {
            v0 = round(v0, rd(input, i));
            v1 = round(v1, rd(input, i + 4));
            v2 = round(v2, rd(input, i + 8));
            v3 = round(v3, rd(input, i + 12));
            i += 16;
        }
        h = v0
            .rotate_left(1)
            .wrapping_add(v1.rotate_left(7))
            .wrapping_add(v2.rotate_left(12))
            .wrapping_add(v3.rotate_left(18));
    } else {
        h = seed.wrapping_add(P5);
    }
    h = h.wrapping_add(n as u32);
    while n - i >= 4 {
        h = h.wrapping_add(rd(input, i).wrapping_mul(P3)).rotate_left(17).wrapping_mul(P4);
        i += 4;
    }
    while i < n {
        h = h.wrapping_add((input[i] as u32).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1);
        i += 1;
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^= h >> 16;
    h
}

/// Little-endian field writer over a fixed buffer.
struct Le<'a>(&'a mut [u8]);
impl Le<'_> {
    fn u8(&mut self, off: usize, v: u8) {
        self.0[off] = v;
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
}

fn rd16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn rd32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn rd64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The 32-byte composefs header at offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ComposefsHeader {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub composefs_version: u32,
}

impl ComposefsHeader {
    pub fn encode(&self) -> [u8; COMPOSEFS_HEADER_SIZE] {
        let mut b = [0u8; COMPOSEFS_HEADER_SIZE];
        let mut w = Le(&mut b);
        w.u32(0, self.magic);
        w.u32(4, self.version);
        w.u32(8, self.flags);
        w.u32(12, self.composefs_version);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self { magic: rd32(b, 0)?, version: rd32(b, 4)?, flags: rd32(b, 8)?, composefs_version: rd32(b, 12)? })
    }
}

/// The fields of the 128-byte EROFS superblock that composefs uses (others are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SuperBlock {
    pub magic: u32,
    pub checksum: u32,
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub feature_incompat: u32,
    pub extra_devices: u16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub packed_nid: u64,
}

impl SuperBlock {
    pub fn encode(&self) -> [u8; EROFS_SUPER_SIZE] {
        let mut b = [0u8; EROFS_SUPER_SIZE];
        let mut w = Le(&mut b);
        w.u32(0, self.magic);
        w.u32(4, self.checksum);
        w.u32(8, self.feature_compat);
        w.u8(12, self.blkszbits);
        w.u8(13, self.sb_extslots);
        w.u16(14, self.root_nid);
        w.u64(16, self.inos);
        w.u64(24, self.build_time);
        w.u32(32, self.build_time_nsec);
        w.u32(36, self.blocks);
        w.u32(40, self.meta_blkaddr);
        w.u32(44, self.xattr_blkaddr);
        // 48..64 uuid, 64..80 volume_name
        w.u32(80, self.feature_incompat);
        // 84..86 available_compr_algs
        w.u16(86, self.extra_devices);
        // 88..90 devt_slotoff
        w.u8(90, self.dirblkbits);
        w.u8(91, self.xattr_prefix_count);
        // 92..96 xattr_prefix_start
        w.u64(96, self.packed_nid);
        b
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            magic: rd32(b, 0)?,
            checksum: rd32(b, 4)?,
            feature_compat: rd32(b, 8)?,
            blkszbits: *b.get(12)?,
            sb_extslots: *b.get(13)?,
            root_nid: rd16(b, 14)?,
            inos: rd64(b, 16)?,
            build_time: rd64(b, 24)?,
            build_time_nsec: rd32(b, 32)?,
            blocks: rd32(b, 36)?,
            meta_blkaddr: rd32(b, 40)?,
            xattr_blkaddr: rd32(b, 44)?,
            feature_incompat: rd32(b, 80)?,
            extra_devices: rd16(b, 86)?,
            dirblkbits: *b.get(90)?,
            xattr_prefix_count: *b.get(91)?,
            packed_nid: rd64(b, 96)?,
        })
    }
}

/// An on-disk inode, compact (32 bytes) or extended (64 bytes). `i_u` is the raw
/// 4-byte union (block address, rdev, or chunk format). A compact inode stores no time of its
/// own but a 32-bit `i_mtime` at offset 12, which current kernels add to the superblock's build
/// time (nanoseconds: the build time's); for compact inodes `mtime` holds that field and
/// `mtime_nsec` is 0. The composefs writer always writes 0 there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskInode {
    pub extended: bool,
    pub format: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl DiskInode {
    /// Encode into `buf` (at least 64 bytes); returns the encoded length.
    /// Compact inodes keep only the low 16 bits of nlink/uid/gid and 32 of size.
    pub fn encode(&self, buf: &mut [u8; INODE_EXTENDED_SIZE]) -> usize {
        buf.fill(0);
        let mut w = Le(&mut buf[..]);
        w.u16(0, self.format);
        w.u16(2, self.xattr_icount);
        w.u16(4, self.mode);
        if self.extended {
            w.u64(8, self.size);
            w.u32(16, self.i_u);
            w.u32(20, self.ino);
            w.u32(24, self.uid);
            w.u32(28, self.gid);
            w.u64(32, self.mtime);
            w.u32(40, self.mtime_nsec);
            w.u32(44, self.nlink);
            INODE_EXTENDED_SIZE
        } else {
            w.u16(6, self.nlink as u16);
            w.u32(8, self.size as u32);
            w.u32(12, self.mtime as u32);
            w.u32(16, self.i_u);
            w.u32(20, self.ino);
            w.u16(24, self.uid as u16);
            w.u16(26, self.gid as u16);
            INODE_COMPACT_SIZE
        }
    }

    /// Decode the inode at the start of `b` (`None` if `b` is too short for its kind).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let format = rd16(b, 0)?;
        let extended = format & 1 == 1;
        if extended {
            Some(Self {
                extended,
                format,
                xattr_icount: rd16(b, 2)?,
                mode: rd16(b, 4)?,
                size: rd64(b, 8)?,
                i_u: rd32(b, 16)?,
                ino: rd32(b, 20)?,
                uid: rd32(b, 24)?,
                gid: rd32(b, 28)?,
                mtime: rd64(b, 32)?,
                mtime_nsec: rd32(b, 40)?,
                nlink: rd32(b, 44)?,
            })
        } else {
            Some(Self {
                extended,
                format,
                xattr_icount: rd16(b, 2)?,
                mode: rd16(b, 4)?,
                nlink: rd16(b, 6)? as u32,
                size: rd32(b, 8)? as u64,
                i_u: rd32(b, 16)?,
                ino: rd32(b, 20)?,
                uid: rd16(b, 24)? as u32,
                gid: rd16(b, 26)? as u32,
                mtime: u64::from(rd32(b, 12)?),
                mtime_nsec: 0,
            })
        }
    }

    pub fn datalayout(&self) -> u16 {
        (self.format >> I_DATALAYOUT_BIT) & 7
    }

    /// Bytes the inode itself takes (32 or 64).
    pub fn disk_size(&self) -> usize {
        if self.extended {
            INODE_EXTENDED_SIZE
        } else {
            INODE_COMPACT_SIZE
        }
    }
}

/// Bytes an inode's xattr area takes for a given `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + (icount as usize - 1) * 4
    }
}

/// Encode a 12-byte directory entry.
pub fn encode_dirent(nid: u64, nameoff: u16, file_type: u8) -> [u8; DIRENT_SIZE] {
    let mut b = [0u8; DIRENT_SIZE];
    let mut w = Le(&mut b);
    w.u64(0, nid);
    w.u16(8, nameoff);
    w.u8(10, file_type);
    b
}

/// Decode a directory entry: (nid, nameoff, file_type).
pub fn decode_dirent(b: &[u8]) -> Option<(u64, u16, u8)> {
    Some((rd64(b, 0)?, rd16(b, 8)?, *b.get(10)?))
}

/// The directory entry file type of an inode mode (`FT_UNKNOWN` for no valid file type).
pub fn dirent_file_type(mode: u32) -> u8 {
    use crate::tree::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};
    match mode & S_IFMT {
        S_IFREG => FT_REG_FILE,
        S_IFDIR => FT_DIR,
        S_IFCHR => FT_CHRDEV,
        S_IFBLK => FT_BLKDEV,
        S_IFIFO => FT_FIFO,
        S_IFSOCK => FT_SOCK,
        S_IFLNK => FT_SYMLINK,
        _ => FT_UNKNOWN,
    }
}

/// Encode the 12-byte inline xattr header.
pub fn encode_xattr_ibody_header(name_filter: u32, shared_count: u8) -> [u8; XATTR_IBODY_HEADER_SIZE] {
    let mut b = [0u8; XATTR_IBODY_HEADER_SIZE];
    let mut w = Le(&mut b);
    w.u32(0, name_filter);
    w.u8(4, shared_count);
    b
}

/// Encode a 4-byte xattr entry header.
pub fn encode_xattr_entry(name_len: u8, name_index: u8, value_size: u16) -> [u8; XATTR_ENTRY_SIZE] {
    let v = value_size.to_le_bytes();
    [name_len, name_index, v[0], v[1]]
}

/// Decode the inline xattr header at the start of an inode's xattr area: (name filter, number
/// of shared xattr ids that follow it).
pub fn decode_xattr_ibody_header(b: &[u8]) -> Option<(u32, u8)> {
    Some((rd32(b, 0)?, *b.get(4)?))
}

/// The `i`-th shared xattr id of an inode's xattr area (after the inline header).
pub fn decode_shared_xattr_id(area: &[u8], i: usize) -> Option<u32> {
    rd32(area, XATTR_IBODY_HEADER_SIZE.checked_add(i.checked_mul(4)?)?)
}

/// Decode a 4-byte xattr entry header: (name length, name index, value size).
pub fn decode_xattr_entry(b: &[u8]) -> Option<(u8, u8, u16)> {
    Some((*b.first()?, *b.get(1)?, rd16(b, 2)?))
}

// ---------------------------------------------------------------------------------------------
// Header codec: the composefs header and the EROFS superblock, decoded in one place.

/// Why an image's composefs header or EROFS superblock is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("{len} bytes, shorter than the composefs header and EROFS superblock ({HEADER_AREA_SIZE} bytes)")]
    Short { len: u64 },
    #[error("reading the composefs header and EROFS superblock: {0}")]
    Read(rustix::io::Errno),
    #[error("composefs header: bad composefs magic {0:#x}")]
    ComposefsMagic(u32),
    #[error("composefs header: unsupported composefs header version {0}")]
    HeaderVersion(u32),
    #[error("composefs header: unsupported composefs format version {0}")]
    FormatVersion(u32),
    #[error("EROFS superblock: bad EROFS magic {0:#x} at offset {EROFS_SUPER_OFFSET}")]
    ErofsMagic(u32),
    #[error("EROFS superblock: block size 2^{0} (only 4096 is supported)")]
    BlockSize(u8),
    #[error("EROFS superblock: unsupported incompatible features {0:#x}")]
    Incompat(u32),
    #[error("EROFS superblock: extra devices are not supported")]
    ExtraDevices,
    #[error("EROFS superblock: directory block bits {0} (must be 0)")]
    DirBlockBits(u8),
    #[error("EROFS superblock: build time nanoseconds {0} out of range")]
    BuildTimeNsec(u32),
    #[error("EROFS superblock: {what} block address {block} beyond the image")]
    Beyond { what: &'static str, block: u32 },
    #[error("EROFS superblock: {blocks} blocks of 4096 bytes, but the image has {len} bytes")]
    BlockCount { blocks: u32, len: u64 },
}

/// The composefs header and the EROFS superblock of an image, decoded.
///
/// [`ImageHeader::decode`] (or [`ImageHeader::read_from`] on a file) checks what every caller
/// needs before it looks further: the length and both magics. [`ImageHeader::check_composefs`]
/// adds what a composefs image as the writer makes it must be (versions, 4 KiB blocks, no
/// features beyond chunked files, metadata inside the image); the mount path leaves the rest of
/// a superblock to the kernel and asks only for the facts ([`ImageHeader::has_acl`],
/// [`ImageHeader::inodes`], [`ImageHeader::block_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub composefs: ComposefsHeader,
    pub sb: SuperBlock,
}

impl ImageHeader {
    /// Decode the first [`HEADER_AREA_SIZE`] bytes of `b` (an image or its beginning); checks
    /// the length and both magics.
    pub fn decode(b: &[u8]) -> Result<ImageHeader, HeaderError> {
        let short = || HeaderError::Short { len: b.len() as u64 };
        let area = b.get(..HEADER_AREA_SIZE).ok_or_else(short)?;
        let composefs = ComposefsHeader::decode(area).ok_or_else(short)?;
        let sb = SuperBlock::decode(&area[EROFS_SUPER_OFFSET as usize..]).ok_or_else(short)?;
        if composefs.magic != COMPOSEFS_MAGIC {
            return Err(HeaderError::ComposefsMagic(composefs.magic));
        }
        if sb.magic != EROFS_SUPER_MAGIC {
            return Err(HeaderError::ErofsMagic(sb.magic));
        }
        Ok(ImageHeader { composefs, sb })
    }

    /// [`ImageHeader::decode`] of the first bytes of an open image (`pread` at offset 0, so the
    /// file position is not moved).
    pub fn read_from(fd: BorrowedFd<'_>) -> Result<ImageHeader, HeaderError> {
        let mut buf = [0u8; HEADER_AREA_SIZE];
        let mut have = 0;
        while have < buf.len() {
            match rustix::io::pread(fd, &mut buf[have..], have as u64) {
                Ok(0) => break,
                Ok(n) => have += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(HeaderError::Read(e)),
            }
        }
        ImageHeader::decode(&buf[..have])
    }

    /// What an image of `image_len` bytes in the composefs layout must also satisfy: header
    /// version 1, a format version this code knows, 4 KiB blocks, no incompatible feature but
    /// chunked files, no extra devices, no directory block bits, a valid build time, and the
    /// metadata and shared xattr areas inside the image.
    pub fn check_composefs(&self, image_len: u64) -> Result<(), HeaderError> {
        let (h, sb) = (&self.composefs, &self.sb);
        if h.version != COMPOSEFS_HEADER_VERSION {
            return Err(HeaderError::HeaderVersion(h.version));
        }
        if h.composefs_version > COMPOSEFS_VERSION_MAX {
            return Err(HeaderError::FormatVersion(h.composefs_version));
        }
        if u32::from(sb.blkszbits) != BLOCK_BITS {
            return Err(HeaderError::BlockSize(sb.blkszbits));
        }
        if sb.feature_incompat & !FEATURE_INCOMPAT_CHUNKED_FILE != 0 {
            return Err(HeaderError::Incompat(sb.feature_incompat));
        }
        if sb.extra_devices != 0 {
            return Err(HeaderError::ExtraDevices);
        }
        if sb.dirblkbits != 0 {
            return Err(HeaderError::DirBlockBits(sb.dirblkbits));
        }
        if sb.build_time_nsec >= 1_000_000_000 {
            return Err(HeaderError::BuildTimeNsec(sb.build_time_nsec));
        }
        if self.meta_offset() > image_len {
            return Err(HeaderError::Beyond { what: "metadata", block: sb.meta_blkaddr });
        }
        if self.xattr_offset() > image_len {
            return Err(HeaderError::Beyond { what: "shared xattr", block: sb.xattr_blkaddr });
        }
        Ok(())
    }

    /// The superblock's block count covers exactly `image_len` bytes (what the writer makes).
    pub fn check_block_count(&self, image_len: u64) -> Result<(), HeaderError> {
        if u64::from(self.sb.blocks) * BLOCK_SIZE != image_len {
            return Err(HeaderError::BlockCount { blocks: self.sb.blocks, len: image_len });
        }
        Ok(())
    }

    /// The composefs format version (0 or 1 for images that passed [`Self::check_composefs`]).
    pub fn format_version(&self) -> u32 {
        self.composefs.composefs_version
    }

    /// Header flag: some inode carries a POSIX ACL (the mount then needs the `acl` option).
    pub fn has_acl(&self) -> bool {
        self.composefs.flags & COMPOSEFS_FLAG_HAS_ACL != 0
    }

    /// Inode count the superblock claims (hostile: a bound to compare, not an allocation size).
    pub fn inodes(&self) -> u64 {
        self.sb.inos
    }

    /// Block size in bytes, if the superblock's is one EROFS can have (512 bytes to 64 KiB).
    pub fn block_size(&self) -> Result<u32, HeaderError> {
        if (9..=16).contains(&self.sb.blkszbits) {
            Ok(1 << self.sb.blkszbits)
        } else {
            Err(HeaderError::BlockSize(self.sb.blkszbits))
        }
    }

    /// Whether inodes carry the xattr name filter the kernel consults.
    pub fn xattr_filter(&self) -> bool {
        self.sb.feature_compat & FEATURE_COMPAT_XATTR_FILTER != 0
    }

    /// Byte offset of the metadata area (inode slots count from here).
    pub fn meta_offset(&self) -> u64 {
        u64::from(self.sb.meta_blkaddr) * BLOCK_SIZE
    }

    /// Byte offset of the shared xattr table.
    pub fn xattr_offset(&self) -> u64 {
        u64::from(self.sb.xattr_blkaddr) * BLOCK_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh32_known_values() {
        // Reference values of xxHash32.
        assert_eq!(xxh32(b"", 0), 0x02cc_5d05);
        assert_eq!(xxh32(b"a", 0), 0x550d_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32d1_53ff);
        assert_eq!(xxh32(b"Nobody inspects the spammish repetition", 0), 0xe229_3b2f);
    }

    /// xxHash32 written the plain way (slices and closures, as the function was before it
    /// became a `const fn`).
    fn plain_xxh32(input: &[u8], seed: u32) -> u32 {
        const P1: u32 = 2_654_435_761;
        const P2: u32 = 2_246_822_519;
        const P3: u32 = 3_266_489_917;
        const P4: u32 = 668_265_263;
        const P5: u32 = 374_761_393;
        let rd = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let round = |acc: u32, lane: u32| acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(13).wrapping_mul(P1);
        let mut p = input;
        let mut h: u32;
        if p.len() >= 16 {
            let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
            while p.len() >= 16 {
                for (i, lane) in v.iter_mut().enumerate() {
                    *lane = round(*lane, rd(&p[i * 4..]));
                }
                p = &p[16..];
            }
            h = v[0]
                .rotate_left(1)
                .wrapping_add(v[1].rotate_left(7))
                .wrapping_add(v[2].rotate_left(12))
                .wrapping_add(v[3].rotate_left(18));
        } else {
            h = seed.wrapping_add(P5);
        }
        h = h.wrapping_add(input.len() as u32);
        while p.len() >= 4 {
            h = h.wrapping_add(rd(p).wrapping_mul(P3)).rotate_left(17).wrapping_mul(P4);
            p = &p[4..];
        }
        for &b in p {
            h = h.wrapping_add((b as u32).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 15;
        h = h.wrapping_mul(P2);
        h ^= h >> 13;
        h = h.wrapping_mul(P3);
        h ^= h >> 16;
        h
    }

    #[test]
    fn xxh32_agrees_with_the_plain_one() {
        // Every length up to 300 (every stripe count and tail), bytes of every value, the
        // filter's seeds and a few others.
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for seed in [0, 1, XATTR_FILTER_SEED, XATTR_FILTER_SEED + 4, XATTR_FILTER_SEED + 6, u32::MAX] {
            for len in 0..=data.len() {
                for start in [0, 1, 3] {
                    let s = &data[start.min(len)..len];
                    assert_eq!(xxh32(s, seed), plain_xxh32(s, seed), "{len} {start} {seed:#x}");
                }
            }
        }
        const AT_BUILD: u32 = xxh32(b"Nobody inspects the spammish repetition", 0);
        assert_eq!(AT_BUILD, 0xe229_3b2f);
    }

    #[test]
    fn prefix_split_order() {
        assert_eq!(xattr_prefix_split(b"user.foo"), (1, &b"foo"[..]));
        assert_eq!(xattr_prefix_split(b"system.posix_acl_access"), (2, &b""[..]));
        assert_eq!(xattr_prefix_split(b"trusted.overlay.x"), (4, &b"overlay.x"[..]));
        assert_eq!(xattr_prefix_split(b"security.selinux"), (6, &b"selinux"[..]));
        assert_eq!(xattr_prefix_split(b"lustre.x"), (0, &b"lustre.x"[..]));
    }

    fn header_bytes() -> Vec<u8> {
        let h = ComposefsHeader { magic: COMPOSEFS_MAGIC, version: 1, flags: 1, composefs_version: 1 };
        let sb = SuperBlock {
            magic: EROFS_SUPER_MAGIC,
            blkszbits: 12,
            inos: 300,
            blocks: 3,
            meta_blkaddr: 0,
            xattr_blkaddr: 2,
            ..SuperBlock::default()
        };
        let mut b = vec![0u8; 3 * 4096];
        b[..COMPOSEFS_HEADER_SIZE].copy_from_slice(&h.encode());
        b[EROFS_SUPER_OFFSET as usize..HEADER_AREA_SIZE].copy_from_slice(&sb.encode());
        b
    }

    #[test]
    fn header_decodes_and_checks() {
        let b = header_bytes();
        let h = ImageHeader::decode(&b).unwrap();
        assert!(h.has_acl());
        assert_eq!((h.inodes(), h.block_size(), h.format_version()), (300, Ok(4096), 1));
        assert_eq!(h.check_composefs(b.len() as u64), Ok(()));
        assert_eq!(h.check_block_count(b.len() as u64), Ok(()));
        assert_eq!(h.check_block_count(4096), Err(HeaderError::BlockCount { blocks: 3, len: 4096 }));
        // The shared xattr table at block 2 lies beyond an image of one block.
        assert!(matches!(h.check_composefs(4096), Err(HeaderError::Beyond { what: "shared xattr", .. })));
    }

    #[test]
    fn header_refusals_name_the_field() {
        let b = header_bytes();
        assert_eq!(ImageHeader::decode(&b[..1151]), Err(HeaderError::Short { len: 1151 }));
        let with = |at: usize, v: u8| {
            let mut m = b.clone();
            m[at] = v;
            m
        };
        assert_eq!(ImageHeader::decode(&with(0, 0)), Err(HeaderError::ComposefsMagic(0xd078_6200)));
        assert_eq!(ImageHeader::decode(&with(1024, 0)), Err(HeaderError::ErofsMagic(0xe0f5_e100)));
        let check = |m: Vec<u8>| ImageHeader::decode(&m).unwrap().check_composefs(m.len() as u64).unwrap_err();
        assert_eq!(check(with(4, 2)), HeaderError::HeaderVersion(2));
        assert_eq!(check(with(12, 2)), HeaderError::FormatVersion(2));
        assert_eq!(check(with(1024 + 12, 9)), HeaderError::BlockSize(9));
        assert_eq!(check(with(1024 + 80, 1)), HeaderError::Incompat(1));
        assert_eq!(check(with(1024 + 86, 1)), HeaderError::ExtraDevices);
        assert_eq!(check(with(1024 + 90, 1)), HeaderError::DirBlockBits(1));
        assert_eq!(check(with(1024 + 35, 0x40)), HeaderError::BuildTimeNsec(0x4000_0000));
        // EROFS allows 512-byte to 64 KiB blocks; a composefs image only 4 KiB ones.
        let odd = ImageHeader::decode(&with(1024 + 12, 17)).unwrap();
        assert_eq!(odd.block_size(), Err(HeaderError::BlockSize(17)));
        assert!(HeaderError::ErofsMagic(0).to_string().contains("EROFS magic"));
        assert!(HeaderError::ComposefsMagic(0).to_string().contains("composefs magic"));
    }

    #[test]
    fn header_reads_from_a_file_without_moving_its_offset() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::fd::AsFd;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&header_bytes()).unwrap();
        let h = ImageHeader::read_from(f.as_fd()).unwrap();
        assert_eq!(h.inodes(), 300);
        assert_eq!(f.stream_position().unwrap(), 3 * 4096);
        f.set_len(100).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(ImageHeader::read_from(f.as_fd()), Err(HeaderError::Short { len: 100 }));
    }

    #[test]
    fn inodes_encode_and_decode() {
        let mut buf = [0u8; INODE_EXTENDED_SIZE];
        for extended in [false, true] {
            let di = DiskInode {
                extended,
                format: LAYOUT_FLAT_INLINE << I_DATALAYOUT_BIT | u16::from(extended),
                xattr_icount: 3,
                mode: 0o100644,
                nlink: 2,
                size: 77,
                i_u: 9,
                ino: 5,
                uid: 1000,
                gid: 100,
                mtime: if extended { 1_700_000_000 } else { 0 },
                mtime_nsec: if extended { 5 } else { 0 },
            };
            let n = di.encode(&mut buf);
            assert_eq!(n, di.disk_size());
            assert_eq!(DiskInode::decode(&buf[..n]), Some(di));
            assert_eq!(di.datalayout(), LAYOUT_FLAT_INLINE);
        }
        assert_eq!(DiskInode::decode(&buf[..31]), None);
    }
}
