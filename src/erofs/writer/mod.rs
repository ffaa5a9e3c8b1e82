//! composefs EROFS writer: [`Tree`] → image bytes, byte-identical to the reference
//! C `mkcomposefs` (libcomposefs) for format versions 0 and 1.
//!
//! Layout of an image:
//! 1. a 32-byte composefs header, zero padding up to 1024;
//! 2. the EROFS superblock (128 bytes) at 1024;
//! 3. inodes in breadth-first order (children in bytewise name order), each on a
//!    32-byte slot, followed by its xattrs and its inline tail (directory entries,
//!    symlink target, small file content or chunk pointers); an inode is moved to the
//!    next block when its tail would straddle a block boundary;
//! 4. the shared xattr table (xattrs used by more than one inode);
//! 5. block-aligned data blocks: directory blocks, and the content blocks of files
//!    and symlinks that do not fit inline.
//!
//! Before layout the tree is rewritten the way the reference does it: user-visible
//! `trusted.overlay.*` xattrs are escaped to `trusted.overlay.overlay.*`, external
//! regular files get `trusted.overlay.metacopy` (carrying the fs-verity digest when
//! known) and `trusted.overlay.redirect`, character devices 0/0 (overlay whiteouts)
//! become escaped whiteout files and mark their directory, the root becomes opaque,
//! and 256 whiteout character devices `00`..`ff` are added to the root (overlayfs
//! data-only lower layers need them), and every directory gets `.` and `..`.
//!
//! The phases, one file each: `inodes` turns the tree into inode records in breadth-first
//! order (validating each node, adding `.`/`..`, the stubs and the overlay xattrs); `layout`
//! decides the shared xattr table, directory nlinks and where every inode and data block goes;
//! `emit` writes the bytes. This file holds what they share: the records and the two-part
//! byte strings (`Cat`) that spare copies of renamed xattr names.

mod emit;
mod inodes;
mod layout;
mod xattrs;

#[cfg(test)]
mod tests;

use std::io::Write;

use thiserror::Error;

use self::xattrs::{KeyId, Keys, Pairs, X};
use super::format::*;
use crate::tree::{self, NodeId, Tree, S_IFCHR, S_IFMT};

/// Format version selection (the reference's `--min-version` / `--max-version`).
/// The version written is `min_version`, raised to 1 (if `max_version` allows) when
/// the tree holds an overlay whiteout (character device 0/0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    pub min_version: u32,
    pub max_version: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { min_version: 0, max_version: 1 }
    }
}

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("unsupported format versions: min {min}, max {max} (highest supported is {COMPOSEFS_VERSION_MAX})")]
    Version { min: u32, max: u32 },
    #[error("/{path}: {reason}")]
    Node { path: String, reason: String },
    #[error("image too large: {0}")]
    TooLarge(&'static str),
    #[error("writing image: {0}")]
    Io(#[from] std::io::Error),
}

/// The composefs format version that will be written for `tree`.
pub(crate) fn effective_version(tree: &Tree, opts: &WriteOptions) -> Result<u32, WriteError> {
    if opts.min_version > COMPOSEFS_VERSION_MAX || opts.max_version > COMPOSEFS_VERSION_MAX {
        return Err(WriteError::Version { min: opts.min_version, max: opts.max_version });
    }
    let max = opts.max_version.max(opts.min_version);
    let mut version = opts.min_version;
    if version < 1 && max >= 1 {
        let has_whiteout = tree
            .nodes
            .iter()
            .any(|n| n.link_to.is_none() && n.entry.inode.mode & S_IFMT == S_IFCHR && n.entry.inode.rdev == 0);
        if has_whiteout {
            version = 1;
        }
    }
    Ok(version)
}

/// Write the composefs EROFS image of `tree` to `out`.
pub fn write_image(tree: &Tree, opts: &WriteOptions, out: &mut dyn Write) -> Result<(), WriteError> {
    let version = effective_version(tree, opts)?;
    let mut b = Builder::new(tree, version);
    b.build()?;
    b.layout()?;
    b.emit(out)
}

/// One xattr as an inode of the image carries it (see [`disk_xattrs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskXattr {
    /// Full name as stored (`trusted.overlay.overlay.*` for escaped input xattrs).
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Stored in the shared xattr table (referenced from the inode) rather than inline.
    pub shared: bool,
}

/// The xattrs each inode of the image written for `tree` carries, as [`write_image`] lays them
/// out: for every tree node that is an inode (not hard-link names, not the generated root
/// whiteout stubs), its xattrs in the inode's order (names bytewise), the writer's overlay
/// xattrs included. The composefs-info personality shows them in the order the reference's
/// loader reads them: inline entries, then shared ones (`crate::compat`).
pub fn disk_xattrs(tree: &Tree, opts: &WriteOptions) -> Result<Vec<(NodeId, Vec<DiskXattr>)>, WriteError> {
    let version = effective_version(tree, opts)?;
    let mut b = Builder::new(tree, version);
    b.build()?;
    b.layout()?;
    let out = b
        .inos
        .iter()
        .filter(|ino| ino.node != STUB)
        .map(|ino| {
            let xs = b.xattrs[ino.xa()].iter().map(|x| DiskXattr {
                key: b.keys.get(x.key).name.bytes().collect(),
                value: b.pairs.list[x.pair as usize].value.bytes().collect(),
                shared: x.shared != INLINE,
            });
            (ino.node, xs.collect())
        })
        .collect();
    Ok(out)
}

/// The image being made: inode records in breadth-first order and what the phases decide.
struct Builder<'a> {
    tree: &'a Tree,
    version: u32,
    inos: Vec<Ino<'a>>,
    keys: Keys<'a>,
    /// Every distinct (name, value) pair, counted as the inodes' xattrs are made.
    pairs: Pairs<'a>,
    xattrs: Vec<X>,
    dirents: Vec<Dirent>,
    ino_of_tree: Vec<u32>,
    link_counts: Vec<u32>,
    /// The shared xattr table, in order: (name, value).
    shared: Vec<(KeyId, Cat<'a>)>,
    shared_size: u64,
    min_mtime: (i64, u32),
    has_acl: bool,
    inodes_end: u64,
    n_data_blocks: u64,
}

impl<'a> Builder<'a> {
    fn new(tree: &'a Tree, version: u32) -> Self {
        let b = Builder {
            tree,
            version,
            inos: Vec::with_capacity(tree.len() + 256),
            keys: Keys::new(),
            pairs: Pairs::with_capacity(tree.len() + 16),
            xattrs: Vec::with_capacity(tree.len() * 2),
            dirents: Vec::with_capacity(tree.len() * 2 + 512),
            ino_of_tree: vec![u32::MAX; tree.len()],
            link_counts: tree.link_counts(),
            shared: Vec::new(),
            shared_size: 0,
            min_mtime: (0, 0),
            has_acl: false,
            inodes_end: 0,
            n_data_blocks: 0,
        };
        // One inode record per node (hard links aside), filled front to back: huge pages spare
        // a page fault per 4 KiB of them (docs/writer.md, "Build speed").
        crate::sys::mem::advise_huge_pages(&b.inos, tree.len());
        b
    }

    fn node_err(&self, id: NodeId, reason: impl Into<String>) -> WriteError {
        WriteError::Node { path: tree::show(&self.tree.path_of(id)), reason: reason.into() }
    }

    /// The name a directory entry carries.
    fn dirent_name(&self, d: &Dirent) -> &'a [u8] {
        match d.name {
            NAME_DOT => b".",
            NAME_DOTDOT => b"..",
            n if n > NAME_DOTDOT - 257 => &STUB_NAMES[(u32::MAX - 2 - n) as usize],
            n => &self.tree.node(n).name,
        }
    }

    fn ino_err(&self, i: usize, reason: &str) -> WriteError {
        let n = self.inos[i].node;
        if n == STUB {
            WriteError::Node { path: "(whiteout stub)".into(), reason: reason.into() }
        } else {
            self.node_err(n, reason)
        }
    }
}

/// A byte string made of two parts (a static prefix and borrowed bytes), so renamed
/// xattr names and generated values need no allocation.
#[derive(Clone, Copy, Debug)]
struct Cat<'a> {
    a: &'a [u8],
    b: &'a [u8],
}

impl<'a> Cat<'a> {
    fn one(b: &'a [u8]) -> Self {
        Cat { a: &[], b }
    }
    fn two(a: &'a [u8], b: &'a [u8]) -> Self {
        Cat { a, b }
    }
    fn len(&self) -> usize {
        self.a.len() + self.b.len()
    }
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.a.iter().chain(self.b.iter()).copied()
    }
    fn eq_bytes(&self, s: &[u8]) -> bool {
        self.len() == s.len() && self.a == &s[..self.a.len()] && self.b == &s[self.a.len()..]
    }
    /// The bytes after the first `n`.
    fn skip(&self, n: usize) -> Self {
        if n <= self.a.len() {
            Cat { a: &self.a[n..], b: self.b }
        } else {
            Cat { a: &[], b: &self.b[n - self.a.len()..] }
        }
    }
    fn copy_to<'x>(&self, buf: &'x mut Vec<u8>) -> &'x [u8] {
        buf.clear();
        buf.extend_from_slice(self.a);
        buf.extend_from_slice(self.b);
        buf
    }
}

impl PartialEq for Cat<'_> {
    fn eq(&self, o: &Self) -> bool {
        if self.a.is_empty() && o.a.is_empty() {
            return self.b == o.b;
        }
        self.len() == o.len() && self.bytes().eq(o.bytes())
    }
}
impl Eq for Cat<'_> {}
impl Ord for Cat<'_> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        if self.a.is_empty() && o.a.is_empty() {
            return self.b.cmp(o.b);
        }
        self.bytes().cmp(o.bytes())
    }
}
impl PartialOrd for Cat<'_> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
/// An xattr stored inline in its inode rather than in the shared table.
const INLINE: u32 = u32::MAX;

/// A directory entry of the image: whose name it is and which inode it names (8 bytes: a
/// directory entry exists for every node, plus `.` and `..`).
#[derive(Clone, Copy)]
struct Dirent {
    /// A tree node (its name), or one of the generated names ([`NAME_DOT`], [`NAME_DOTDOT`],
    /// [`name_of_stub`]).
    name: u32,
    /// The inode's index; while the tree is walked, a hard link's target tree node with
    /// [`UNRESOLVED`] set.
    target: u32,
}

const NAME_DOT: u32 = u32::MAX;
const NAME_DOTDOT: u32 = u32::MAX - 1;
/// The name reference of whiteout stub `k` (`00`..`ff`).
fn name_of_stub(k: u32) -> u32 {
    u32::MAX - 2 - k
}
/// Marks a dirent target that is still a tree node (a hard link, resolved after the walk).
const UNRESOLVED: u32 = 1 << 31;

const STUB: u32 = u32::MAX;

/// One inode of the image, in breadth-first order. (`Default` only fills the layout fields,
/// which are computed later, and the empty xattr/dirent ranges.) Kept small: there is one per
/// node, and the whole array is touched by every phase.
#[derive(Default)]
struct Ino<'a> {
    /// Tree node, or `STUB` for a generated root whiteout.
    node: NodeId,
    parent_ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    nlink: u32,
    mtime_nsec: u32,
    size: u64,
    mtime: i64,
    payload: &'a [u8],
    content: Option<&'a [u8]>,
    /// This inode's xattrs: `Builder::xattrs[xa_start..][..xa_len]`; dirents likewise.
    xa_start: u32,
    xa_len: u32,
    dirent_start: u32,
    dirent_len: u32,
    // Layout (block counts fit 32 bits: the image is checked to stay within 2^32 blocks).
    chunk_bits: u8,
    compact: bool,
    n_shared: u8,
    chunk_count: u32,
    n_blocks: u32,
    tail: u32,
    ipad: u32,
    xattr_size: u32,
    isize: u32,
    nid: u64,
}

impl Ino<'_> {
    fn xa(&self) -> std::ops::Range<usize> {
        self.xa_start as usize..self.xa_start as usize + self.xa_len as usize
    }
    fn dirents(&self) -> std::ops::Range<usize> {
        self.dirent_start as usize..self.dirent_start as usize + self.dirent_len as usize
    }
}

impl Ino<'_> {
    fn ftype(&self) -> u32 {
        self.mode & S_IFMT
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// (chunk bits, chunk count) for an external file of `size` > 0 bytes.
fn chunking(size: u64) -> (u32, u64) {
    let mut bits = if size <= 1 { 1 } else { 64 - (size - 1).leading_zeros() };
    if bits < BLOCK_BITS {
        bits = BLOCK_BITS;
    }
    if bits - BLOCK_BITS > CHUNK_FORMAT_BLKBITS_MASK {
        bits = CHUNK_FORMAT_BLKBITS_MASK + BLOCK_BITS;
    }
    (bits, size.div_ceil(1u64 << bits))
}
