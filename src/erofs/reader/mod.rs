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
//!
//! The phases, one file each: `inode` decodes one inode (bounds, layout, inline data, claims
//! on slots and blocks) with its xattrs (`xattr`); `dir` reads a directory's entries;
//! `walk` walks the directories breadth-first and checks the writer's invariants (stubs,
//! nlinks); `names` picks each inode's primary name, settles whiteout markers and builds the
//! tree. Offsets and on-disk layouts come from `crate::erofs::format`.

mod claims;
mod dir;
mod inode;
mod names;
mod pipe;
mod walk;
mod xattr;

#[cfg(test)]
mod tests;

use thiserror::Error;

use self::claims::Claims;
use self::inode::InodeTable;
use self::names::Primaries;
use self::walk::Walk;
use crate::erofs::format::*;
use crate::tree::{self, Entry, Limits, Tree, TreeError};

/// Largest image the readers of whole images (`inspect`, composefs-dump, composefs-info) take in.
pub const MAX_IMAGE_BYTES: u64 = 4 << 30;

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
    Reader::new(bytes, limits, true)?.run()
}

/// What vetting an image found (see [`vet_image`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vetted {
    pub info: ImageInfo,
    /// Entries of the tree [`read_image_with`] would return (the root and every name).
    pub entries: u64,
    /// Path of the first name, in walk order, of a block device or a character device other
    /// than 0/0 (a whiteout), if the tree holds one.
    pub first_device: Option<String>,
}

/// Every check [`read_image_with`] makes, with the same limits, without building the tree:
/// `vet_image` accepts exactly the images `read_image_with` accepts. For the setuid helper,
/// which only needs to know that an image is sound before it mounts it: it neither copies
/// names, contents and symlink targets out of the image nor keeps the entries once their
/// facts are known.
///
/// A large image is vetted on as many threads as there are CPUs (at most four; see
/// `pipe.rs`): same result, same error.
pub fn vet_image(bytes: &[u8], limits: &ReadLimits) -> Result<Vetted, ReadError> {
    vet(bytes, limits, None, pipe::threads_for(bytes.len()))
}

/// [`vet_image`] on `threads` threads (1: on the calling thread alone), for tests and
/// benchmarks. Same result, same error, whatever `threads`.
pub fn vet_image_threads(bytes: &[u8], limits: &ReadLimits, threads: usize) -> Result<Vetted, ReadError> {
    vet(bytes, limits, None, threads)
}

/// A hook [`vet_image_releasing`] calls after every `every` bytes it has read from the image
/// (on threads: bytes all threads read, counted together; the hook is called from any of them).
#[derive(Clone, Copy)]
pub struct Release<'a> {
    pub every: u64,
    /// May drop the image's pages from memory: every later read of `bytes` must still see the
    /// same bytes (for example `madvise(MADV_DONTNEED)` on a shared mapping of a sealed file).
    pub hook: &'a (dyn Fn() + Sync),
}

/// [`vet_image`], calling `release.hook` after every `release.every` bytes read, so that a
/// mapped image need not stay resident as a whole while it is vetted (the setuid helper's
/// peak memory). Same result as [`vet_image`].
pub fn vet_image_releasing(bytes: &[u8], limits: &ReadLimits, release: Release<'_>) -> Result<Vetted, ReadError> {
    vet(bytes, limits, Some(release), pipe::threads_for(bytes.len()))
}

fn vet<'a>(
    bytes: &'a [u8],
    limits: &ReadLimits,
    release: Option<Release<'a>>,
    threads: usize,
) -> Result<Vetted, ReadError> {
    let reader = || -> Result<Reader<'a>, ReadError> {
        let mut r = Reader::new(bytes, limits, false)?;
        r.release = release;
        Ok(r)
    };
    if threads > 1 {
        if let Some(v) = reader()?.vet_on_threads(threads) {
            return Ok(v);
        }
        // What the threads read since their last release is released before the one-thread
        // vetting counts from zero again (else up to twice `every` of the image could be
        // resident during the rerun).
        if let Some(r) = &release {
            (r.hook)();
        }
    }
    reader()?.vet()
}

/// A directory met in the walk (names are borrowed from the image).
/// (Indexes are u32: the walk refuses u32::MAX names, so it holds fewer directories and
/// children.)
struct DirRec<'a> {
    nid: u64,
    name: &'a [u8],
    /// Index of the parent directory's record (0, the root, for the root itself).
    parent: u32,
    /// Its nesting depth (the root's is 0).
    depth: u32,
    /// Its children's places in the walk's one child list ([`walk::Walk::children`]): in
    /// on-disk order, without `.`/`..` and without whiteout stubs.
    children: std::ops::Range<u32>,
}

struct Reader<'a> {
    d: &'a [u8],
    limits: ReadLimits,
    /// Build the tree (else only vet: see [`vet_image`]).
    keep: bool,
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
    /// Memory for the largest tables (the inode table's index and list, the walk's child list,
    /// the primary names): one mapping, in huge pages (`crate::sys::tables`); `None` for a
    /// small image, and in the helper threads of the vetting (which keep no such tables).
    tables: Option<std::sync::Arc<crate::sys::tables::Region>>,
    inodes: InodeTable,
    dirents: u64,
    decoded: u64,
    /// An inode's xattrs as stored and as kept, reused from inode to inode.
    raw_xattrs: Vec<xattr::RawXattr<'a>>,
    kept_xattrs: Vec<xattr::RawXattr<'a>>,
    /// A directory's entries, reused from directory to directory by the walk.
    dirent_buf: Vec<dir::Dirent<'a>>,
    /// Shared xattrs parsed lately (see `read_xattrs`).
    shared_cache: [xattr::SharedSlot<'a>; xattr::SHARED_CACHE],
    /// [`vet_image_releasing`]'s hook, and the bytes read since it was last called.
    release: Option<Release<'a>>,
    read_since_release: std::cell::Cell<u64>,
    /// On threads: the bytes all threads read since the last release (`pipe.rs`), to which
    /// this thread adds its own now and then ([`publish_every`]).
    shared_reads: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

#[cfg(test)]
thread_local! {
    /// Readers made on this thread keep their tables in ordinary allocations (the tests compare
    /// both ways: `tests::without_region`).
    static NO_TABLES_REGION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tables smaller than this stay in ordinary allocations: the region pays off only with a whole
/// 2 MiB page in it. (Any size in the unit tests, so that they cover the region.)
const MIN_TABLES_REGION: usize = if cfg!(test) { 1 } else { 2 << 20 };

/// The region for the largest tables of an image with `slots` inode slots whose superblock
/// counts `expect` inodes (hostile, so at most `slots` count; `InodeTable::new`): the inode
/// table's index and list, and room for as many children in the walk and primary names. All of
/// it is advised huge pages: for a sound image every part is written (a false count leaves the
/// last one or two touched huge pages of each growing table partly unwritten, and resident: the
/// steps made present ahead can reach into the next one).
fn tables_region(slots: u64, expect: u64) -> Option<std::sync::Arc<crate::sys::tables::Region>> {
    #[cfg(test)]
    if NO_TABLES_REGION.with(std::cell::Cell::get) {
        return None;
    }
    let per_inode = std::mem::size_of::<walk::Child>() + std::mem::size_of::<(u32, u32)>();
    let expect_clamped = usize::try_from(expect.min(slots)).ok()?;
    let bytes = InodeTable::table_bytes(slots, expect)
        .checked_add(expect_clamped.checked_mul(per_inode)?)?
        .checked_add(4 * 64)?; // each table starts on a cache line
    (bytes >= MIN_TABLES_REGION).then(|| crate::sys::tables::Region::new(bytes, bytes)).flatten()
}

/// How many bytes a thread reads before it adds them to the threads' shared count: one counter
/// written on every read would move between the cores on every read. Small against `every`,
/// so that the count stays close (all threads together read at most `every` plus a
/// `publish_every` each between two releases).
fn publish_every(every: u64) -> u64 {
    (every / 16).clamp(1, 64 << 10)
}

impl<'a> Reader<'a> {
    fn new(d: &'a [u8], limits: &ReadLimits, keep: bool) -> Result<Reader<'a>, ReadError> {
        let len = d.len() as u64;
        let header = match ImageHeader::decode(d) {
            Err(HeaderError::Short { len }) => return Err(ReadError::TooSmall { len }),
            h => h?,
        };
        header.check_composefs(len)?;
        let meta_off = header.meta_offset();
        let slots = (len - meta_off) / SLOT_SIZE + 1;
        let tables = tables_region(slots, header.inodes());
        Ok(Reader {
            d,
            limits: *limits,
            keep,
            meta_off,
            xattr_off: header.xattr_offset(),
            build_time: header.sb.build_time as i64,
            build_nsec: header.sb.build_time_nsec,
            version: header.format_version(),
            flags: header.composefs.flags,
            root_nid: u64::from(header.sb.root_nid),
            xattr_filter: header.xattr_filter(),
            slots: Claims::new(slots),
            blocks: Claims::new(len.div_ceil(BLOCK_SIZE)),
            inodes: InodeTable::new(slots, header.inodes(), tables.as_ref()),
            tables,
            dirents: 0,
            decoded: 0,
            raw_xattrs: Vec::new(),
            kept_xattrs: Vec::new(),
            dirent_buf: Vec::new(),
            shared_cache: [None; xattr::SHARED_CACHE],
            release: None,
            read_since_release: std::cell::Cell::new(0),
            shared_reads: None,
        })
    }

    fn bytes(&self, off: u64, len: u64) -> Option<&'a [u8]> {
        if let Some(r) = &self.release {
            let n = self.read_since_release.get().saturating_add(len);
            match &self.shared_reads {
                None if n >= r.every => {
                    (r.hook)();
                    self.read_since_release.set(0);
                }
                Some(total) if n >= publish_every(r.every) => {
                    use std::sync::atomic::Ordering::Relaxed;
                    self.read_since_release.set(0);
                    // The thread whose bytes bring the count to `every` releases and takes the
                    // count back to zero, in one step (two, an addition and then a reset, could
                    // lose another thread's bytes added in between, and with them a release).
                    let add = |c: u64| {
                        let s = c.saturating_add(n);
                        Some(if s >= r.every { 0 } else { s })
                    };
                    let before = total.fetch_update(Relaxed, Relaxed, add).unwrap_or(0);
                    if before.saturating_add(n) >= r.every {
                        (r.hook)();
                    }
                }
                _ => self.read_since_release.set(n),
            }
        }
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
        let (ino, dir, entry) = self.decode(nid)?;
        self.inodes.insert(nid, ino, dir, entry);
        Ok(())
    }

    /// Every check, in phases 1-3; then either the tree (phase 4) or its count.
    fn check(&mut self) -> Result<(Walk<'a>, Primaries), ReadError> {
        let walk = self.walk_from_root(None)?;
        self.check_walk(walk)
    }

    /// Phase 1's walk from the root (with `pipe`, some inodes are decoded on other threads:
    /// see `pipe.rs`).
    fn walk_from_root(&mut self, pipe: Option<&mut pipe::Pipe<'_>>) -> Result<Walk<'a>, ReadError> {
        let root_nid = self.root_nid;
        self.load(root_nid).map_err(|e| with_path(e, Vec::new))?;
        if self.inodes.get(&root_nid).is_none_or(|r| !r.is_dir()) {
            return Err(ReadError::Inode { nid: root_nid, path: "/".into(), reason: "root is not a directory".into() });
        }
        if let Some(r) = self.inodes.get_mut(&root_nid) {
            r.names = 1;
        }
        // 1. Breadth-first walk over the directories, in the writer's order, and the
        //    invariants it shows (the root's whiteout stubs, directory nlinks).
        self.walk(pipe)
    }

    /// The rest of phase 1 (the invariants the walk shows), and phases 2-3.
    fn check_walk(&mut self, walk: Walk<'a>) -> Result<(Walk<'a>, Primaries), ReadError> {
        // 2. The primary name of each inode (the others are hard links). It refuses nothing,
        //    so it may come before the checks of phase 1 that follow.
        let primary = self.primary_names(&walk);
        self.check_walk_with(walk, primary)
    }

    /// [`Self::check_walk`] with the primary names found already (the vetting on threads finds
    /// them before its last inodes are decoded: they need only the walk and the places).
    fn check_walk_with(&mut self, walk: Walk<'a>, mut primary: Primaries) -> Result<(Walk<'a>, Primaries), ReadError> {
        self.check_stubs(&walk)?;
        self.check_dir_nlinks(&walk)?;
        // 3. Whiteout markers settle ambiguous primaries; then they go.
        self.settle_whiteouts(&walk, &mut primary)?;
        Ok((walk, primary))
    }

    fn info(&self) -> ImageInfo {
        ImageInfo { composefs_version: self.version, flags: self.flags, inodes: self.inodes.len() as u64 }
    }

    fn run(mut self) -> Result<(Tree, ImageInfo), ReadError> {
        let (walk, primary) = self.check()?;
        // 4. The tree: root, then primaries in walk order, then hard links.
        let t = self.build_tree(&walk, &primary)?;
        Ok((t, self.info()))
    }

    fn vet(mut self) -> Result<Vetted, ReadError> {
        let (walk, primary) = self.check()?;
        // 4. What the tree would hold, charged to the same budget.
        let (entries, first_device) = self.count_tree(&walk, &primary)?;
        Ok(Vetted { info: self.info(), entries, first_device })
    }
}

fn show_path(p: &[u8]) -> String {
    format!("/{}", tree::show(p))
}

/// Path of directory `idx` (built only for error messages: directory records link to
/// their parent instead of holding full paths, which a deep hostile tree would multiply).
fn dir_path(dirs: &[DirRec<'_>], mut idx: usize) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    while idx != 0 {
        let Some(d) = dirs.get(idx) else { break };
        parts.push(d.name);
        idx = d.parent as usize;
    }
    parts.reverse();
    parts.join(&b'/')
}

fn child_path(dirs: &[DirRec<'_>], idx: usize, name: &[u8]) -> Vec<u8> {
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

fn tree_err(nid: u64, e: TreeError) -> ReadError {
    match e {
        TreeError::TooManyEntries { limit } => ReadError::Limit(format!("more than {limit} entries")),
        TreeError::TooDeep { path, limit } => ReadError::Limit(format!("{path}: nested deeper than {limit}")),
        e => ReadError::Tree { nid, source: e },
    }
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
