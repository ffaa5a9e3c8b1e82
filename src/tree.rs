//! The in-memory file tree that every input format builds and the EROFS writer consumes; owns name/path validation and the documented size limits.
//!
//! Nodes live in one arena (`Tree::nodes`), addressed by `NodeId`; node 0 is the root.
//! Input parsers call [`Tree::insert`] / `Tree::insert_hardlink` with paths they have
//! stripped of format-specific decoration (a leading `/` or `./`, a trailing `/`); the
//! tree rejects every other irregular path. [`Tree::finalize`] checks whole-tree
//! invariants and sorts directories before the writer runs.

use thiserror::Error;

/// Longest file name (one path component), as the kernel allows.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target / path, as the kernel allows (PATH_MAX including the NUL).
pub const PATH_MAX: usize = 4096;
/// Longest xattr name (XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value (XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 65536;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// Is `mode`'s file type one of the seven the formats know?
pub(crate) fn valid_file_type(mode: u32) -> bool {
    matches!(mode & S_IFMT, S_IFREG | S_IFDIR | S_IFLNK | S_IFBLK | S_IFCHR | S_IFSOCK | S_IFIFO)
}

/// Limits on hostile input. Defaults are documented in the README.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most nodes (entries, including created parent directories and hard links).
    pub max_entries: usize,
    /// Deepest directory nesting (root is depth 0).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entries: 4_000_000, max_depth: 1024 }
    }
}

pub type NodeId = u32;
pub const ROOT: NodeId = 0;

/// stat-like metadata of one inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inode {
    /// Full st_mode: file type bits and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number as the kernel's `new_encode_dev` packs it (only for char/block).
    pub rdev: u32,
    /// Size in bytes (regular files; for symlinks the target length).
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl Inode {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.file_type() == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.file_type() == S_IFLNK
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What a parser hands to [`Tree::insert`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub inode: Inode,
    /// Symlink target, or for regular files the object path the overlay redirect names.
    pub payload: Option<Vec<u8>>,
    /// Inline content stored inside the image (small regular files).
    pub content: Option<Vec<u8>>,
    pub xattrs: Vec<Xattr>,
    /// fs-verity (SHA-256, 4 KiB) digest of the file's content, when known.
    pub fsverity_digest: Option<[u8; 32]>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: Vec<u8>,
    pub parent: NodeId,
    /// Child ids; sorted by name (bytewise) after [`Tree::finalize`].
    pub children: Vec<NodeId>,
    pub entry: Entry,
    /// For a hard link: the node whose inode this name shares (never itself a link).
    pub link_to: Option<NodeId>,
    /// True when the node was created only because a child named it as parent.
    pub implicit: bool,
    /// st_nlink given explicitly by the input (the dumpfile carries it); `None` means
    /// computed: directories 2 + subdirectories, others 1 + hard links naming them.
    /// Directories always get the computed value in an image.
    pub nlink: Option<u32>,
    /// Distance from the root (root = 0), kept so depth checks cost O(1).
    depth: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("{path}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path}: parent {parent} is not a directory")]
    ParentNotDir { path: String, parent: String },
    #[error("{path}: duplicate entry with different metadata")]
    Duplicate { path: String },
    #[error("{path}: hard link target {target}: {reason}")]
    BadHardlink { path: String, target: String, reason: &'static str },
    #[error("too many entries (limit {limit})")]
    TooManyEntries { limit: usize },
    #[error("{path}: directory nesting deeper than {limit}")]
    TooDeep { path: String, limit: usize },
    #[error("{path}: {field}: {reason}")]
    BadField { path: String, field: &'static str, reason: String },
}

/// Lossy, printable form of a byte path for error messages.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).escape_debug().to_string()
}

/// Why `path` is not a clean relative path, if it is not: empty, `.` or `..` components, a NUL
/// byte, names over [`MAX_NAME_LEN`], [`PATH_MAX`] bytes or more. The reasons come in that
/// order of precedence (length, NUL anywhere, then the first bad component).
pub(crate) fn path_problem(path: &[u8]) -> Option<&'static str> {
    scan_path(path, |_, _| {})
}

/// [`path_problem`], calling `each(start, end)` for every component's byte range of a clean path
/// (a path with a problem may have had some of its components reported before it was found).
///
/// One pass over the bytes, eight at a time, without allocation: every path of every input
/// goes through here (a regular file's payload twice), so it is on the hot path of a build.
fn scan_path(path: &[u8], mut each: impl FnMut(usize, usize)) -> Option<&'static str> {
    use crate::bytes::{eq_bytes, first_byte, has_below, splat, word, zero_bytes};
    if path.len() >= PATH_MAX {
        return Some("path longer than PATH_MAX");
    }
    let component = |c: &[u8]| match c {
        b"" => Some("empty path component"),
        b"." => Some("'.' path component"),
        b".." => Some("'..' path component"),
        c if c.len() > MAX_NAME_LEN => Some("name longer than 255 bytes"),
        _ => None,
    };
    // The first bad component is remembered and the scan goes on: a NUL anywhere wins.
    let mut first: Option<&'static str> = None;
    let mut start = 0;
    let mut slash_at = |i: usize, first: &mut Option<&'static str>| {
        if first.is_none() {
            *first = component(&path[start..i]);
            each(start, i);
        }
        start = i + 1;
    };
    // Whole words at 0, 8, 16, ...; then the last bytes as one word too: the path's last eight
    // bytes (those already scanned replaced by a byte the scan ignores), or a short path padded
    // with that byte. A padding byte is neither NUL nor '/', so it is never reported.
    const PAD: u8 = b'a';
    // One word whose first byte is at `base`: true if it holds a NUL; each '/' ends a component.
    let mut look = |w: u64, base: usize, first: &mut Option<&'static str>| {
        // Most words hold no byte below '0' (no NUL, no '/'): nothing in them to look at.
        if has_below(w, b'0') == 0 {
            return false;
        }
        if zero_bytes(w) != 0 {
            return true;
        }
        let mut slashes = eq_bytes(w, splat(b'/'));
        while slashes != 0 {
            slash_at(base + first_byte(slashes), first);
            slashes &= slashes - 1;
        }
        false
    };
    let n = path.len();
    // Two words at a time while there are: most pairs need one test.
    let mut pairs = path.chunks_exact(16);
    let mut base = 0;
    for p in &mut pairs {
        let (a, b) = (word(&p[..8]), word(&p[8..]));
        if has_below(a, b'0') | has_below(b, b'0') != 0 && (look(a, base, &mut first) || look(b, base + 8, &mut first))
        {
            return Some("NUL byte in path");
        }
        base += 16;
    }
    if let Some(w) = pairs.remainder().first_chunk::<8>() {
        if look(word(w), base, &mut first) {
            return Some("NUL byte in path");
        }
        base += 8;
    }
    let left = n - base;
    if left > 0 {
        let (w, base) = if n >= 8 {
            let seen = 8 - left; // 1..=7 bytes of the last word were in the previous one
            let mask = (1u64 << (8 * seen)) - 1;
            ((word(&path[n - 8..]) & !mask) | (splat(PAD) & mask), n - 8)
        } else {
            let mut buf = [PAD; 8];
            buf[..n].copy_from_slice(path);
            (word(&buf), 0)
        };
        if look(w, base, &mut first) {
            return Some("NUL byte in path");
        }
    }
    if first.is_none() {
        first = component(&path[start..]);
        each(start, path.len());
    }
    first
}

/// [`path_problem`] as a [`TreeError::BadPath`] naming the path.
pub(crate) fn check_path(path: &[u8]) -> Result<(), TreeError> {
    match path_problem(path) {
        None => Ok(()),
        Some(reason) => Err(TreeError::BadPath { path: show(path), reason }),
    }
}

/// Split a relative path into validated components. Rejects empty paths, empty, `.`
/// and `..` components, NUL bytes and names over [`MAX_NAME_LEN`] (see [`path_problem`]).
pub(crate) fn split_path(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let mut out = Vec::with_capacity(8);
    match scan_path(path, |a, b| out.push(&path[a..b])) {
        None => Ok(out),
        Some(reason) => Err(TreeError::BadPath { path: show(path), reason }),
    }
}

/// Checks a regular file's payload: the object it names below an object directory (`--basedir`,
/// `--objects`), which the image's overlay redirect (`/` + payload) points at.
///
/// The object layout is `xx/rest` (containers/storage, the reference's `--digest-store`,
/// composefs-rs). One leading `/` names the same object (the reference writes the redirect as
/// `/` + payload and reads one `/` back off, and overlayfs resolves an absolute redirect from
/// the top of the data layers). Anything that could name something else is refused: empty, `.`
/// or `..` components (so also `//x`, `x/` and `a//b`), NUL, names over 255 bytes, PATH_MAX or
/// more bytes. An empty payload names no object (no redirect is written). Returns the reason.
pub(crate) fn check_object_path(payload: &[u8]) -> Result<(), &'static str> {
    if payload.is_empty() {
        return Ok(());
    }
    let rel = payload.strip_prefix(b"/").unwrap_or(payload);
    if is_plain_object_path(rel) {
        return Ok(());
    }
    object_path_problem(rel)
}

/// The full scan of [`check_object_path`], for the paths its shortcut does not take: kept out
/// of line so that the shortcut's caller saves no registers for it.
#[cold]
#[inline(never)]
fn object_path_problem(rel: &[u8]) -> Result<(), &'static str> {
    match path_problem(rel) {
        None => Ok(()),
        Some(reason) => Err(reason),
    }
}

/// The common shape of an object path (`xx/` and a long name, as the writers make them, with
/// or without containers/storage's `.file` suffix), tested in one pass a word at a time: two
/// bytes above `'/'` (so neither NUL, `/` nor `.`), a `/`, then a name of 13 to 255 bytes
/// holding no NUL and no `/`. Both components are then non-empty and neither `.` nor `..`
/// (the name is too long for that), no name is over 255 bytes and the path is far below
/// PATH_MAX: [`path_problem`] finds nothing in it. `false` decides nothing (the full scan
/// does).
fn is_plain_object_path(p: &[u8]) -> bool {
    use crate::bytes::{has_below, splat, word};
    let n = p.len();
    if !(16..=3 + MAX_NAME_LEN).contains(&n) || p[0] <= b'/' || p[1] <= b'/' || p[2] != b'/' {
        return false;
    }
    // Non-zero exactly when the word holds a NUL or a '/' (a byte below 1, as is or xor '/').
    let nul_or_slash = |w: u64| has_below(w, 1) | has_below(w ^ splat(b'/'), 1);
    // The name's whole words, then its last eight bytes (some seen already: testing a byte
    // twice changes nothing; n >= 16, so they all lie in the name).
    let mut found = nul_or_slash(word(&p[n - 8..]));
    for w in p[3..].chunks_exact(8) {
        found |= nul_or_slash(word(w));
    }
    found == 0
}

/// The directories on the way to the last parent an input used, root first. Inputs list a
/// directory's entries together (tar order, composefs-dump's depth-first order), so the next
/// parent is almost always the same directory, a child of it or one of its ancestors: found
/// without walking from the root and hashing every component on the way.
pub(crate) struct DirCursor {
    /// Relative path of the deepest directory (no leading `/`; empty for the root).
    path: Vec<u8>,
    /// (node, length of `path` up to the end of its name); `dirs[0]` is the root.
    dirs: Vec<(NodeId, usize)>,
}

impl Default for DirCursor {
    fn default() -> Self {
        DirCursor { path: Vec::new(), dirs: vec![(ROOT, 0)] }
    }
}

impl DirCursor {
    /// The deepest directory of the cursor that is `parent_rel` (a clean relative path) or one of
    /// its ancestors, and the offset in `parent_rel` where the components below it start (at a
    /// `/`, or 0 for the root). Deeper directories are dropped from the cursor.
    pub(crate) fn seek(&mut self, parent_rel: &[u8]) -> (NodeId, usize) {
        if parent_rel == self.path.as_slice() {
            let &(id, end) = self.dirs.last().expect("the root is always there");
            return (id, end);
        }
        let common = self.path.iter().zip(parent_rel).take_while(|(a, b)| a == b).count();
        while self.dirs.len() > 1 {
            let end = self.dirs[self.dirs.len() - 1].1;
            if end <= common && (end == parent_rel.len() || parent_rel[end] == b'/') {
                break;
            }
            self.dirs.pop();
        }
        let &(id, end) = self.dirs.last().expect("the root is always there");
        self.path.truncate(end);
        (id, end)
    }

    /// The directory `id`, named `comp`, is the next component below the cursor's deepest.
    pub(crate) fn descend(&mut self, id: NodeId, comp: &[u8]) {
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(comp);
        self.dirs.push((id, self.path.len()));
    }
}

#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub limits: Limits,
    /// Inode used for parent directories that the input did not list.
    pub implicit_dir: Inode,
    /// Name index: every non-root node, found by (parent, name). Each slot holds the node and
    /// the 32-bit name hash ([`NameHash`]) it was filed under, so growing the table rehashes
    /// nothing.
    index: hashbrown::HashTable<(NodeId, u32)>,
    /// Keyed per tree (SipHash with random keys), so hostile names cannot force collisions.
    hasher: std::collections::hash_map::RandomState,
}

/// The keyed hash of (parent, name), kept in 32 bits: the index stores it next to the node, and
/// [`NameHash::spread`] makes the table's 64-bit hash from it (hashbrown takes its bucket from
/// the low bits and its tag from the top 7).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct NameHash(u32);

impl NameHash {
    fn spread(self) -> u64 {
        (self.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.0 as u64
    }
}

impl Tree {
    /// A tree with only a root directory. The root's metadata is replaced when the
    /// input lists the root itself (see [`Tree::set_root`]).
    pub fn new(limits: Limits) -> Tree {
        let implicit_dir = Inode { mode: S_IFDIR | 0o755, ..Inode::default() };
        let root = Node {
            name: Vec::new(),
            parent: ROOT,
            children: Vec::new(),
            entry: Entry { inode: implicit_dir, ..Entry::default() },
            link_to: None,
            implicit: true,
            nlink: None,
            depth: 0,
        };
        Tree { nodes: vec![root], limits, implicit_dir, index: hashbrown::HashTable::new(), hasher: Default::default() }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    /// The node a name resolves to after following a hard link.
    pub fn resolve(&self, id: NodeId) -> NodeId {
        self.node(id).link_to.unwrap_or(id)
    }

    /// Full path of a node, `/`-separated, without a leading slash ("" for the root).
    pub fn path_of(&self, mut id: NodeId) -> Vec<u8> {
        let mut parts = Vec::new();
        while id != ROOT {
            let n = self.node(id);
            parts.push(n.name.as_slice());
            id = n.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.child_hashed(self.name_hash(dir, name), dir, name)
    }

    /// [`Tree::child`] with the name's hash already computed (see [`Tree::name_hash`]).
    pub(crate) fn child_hashed(&self, h: NameHash, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let nodes = &self.nodes;
        self.index
            .find(h.spread(), |&(id, hh)| {
                let n = &nodes[id as usize];
                hh == h.0 && n.parent == dir && n.name == name
            })
            .map(|&(id, _)| id)
    }

    /// The keyed hash under which (dir, name) is filed in the name index: SipHash of the name
    /// (one `write`, the cheapest way through std's SipHasher), the directory mixed in after by an
    /// odd multiplier. Same name in two directories: different hashes (the multiplication is a
    /// bijection on 32 bits); different names: as unpredictable as SipHash with unknown keys.
    pub(crate) fn name_hash(&self, dir: NodeId, name: &[u8]) -> NameHash {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.hasher.build_hasher();
        h.write(name);
        NameHash(h.finish() as u32 ^ dir.wrapping_mul(0x9e37_79b9))
    }

    /// Room for `additional` more nodes (in the arena and the name index), for inputs that know
    /// their size: no regrowth (and no copy of the arena) while they are inserted.
    pub fn reserve(&mut self, additional: usize) {
        self.reserve_expecting(additional, additional);
    }

    /// Room for `likely` more nodes, of which at least `surely` will be inserted: the arena
    /// span of those is advised for huge pages (one page fault per 2 MiB instead of per 4 KiB;
    /// advising more than will be filled would leave part of a huge page resident for nothing).
    pub(crate) fn reserve_expecting(&mut self, likely: usize, surely: usize) {
        let room = self.limits.max_entries.saturating_sub(self.nodes.len());
        let (likely, surely) = (likely.min(room), surely.min(room));
        self.nodes.reserve(likely);
        crate::sys::mem::advise_huge_pages(&self.nodes, self.nodes.len() + surely);
        self.index.reserve(likely, |&(_, h)| NameHash(h).spread());
    }

    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        if path.is_empty() {
            return Some(ROOT);
        }
        let mut cur = ROOT;
        for comp in path.split(|&b| b == b'/') {
            cur = self.child(cur, comp)?;
        }
        Some(cur)
    }

    /// Replace the root directory's metadata (the input listed `/` or `./`).
    pub fn set_root(&mut self, entry: Entry) -> Result<(), TreeError> {
        if !entry.inode.is_dir() {
            return Err(TreeError::BadField {
                path: "/".into(),
                field: "mode",
                reason: "root must be a directory".into(),
            });
        }
        let root = &mut self.nodes[0];
        if !root.implicit && root.entry != entry {
            return Err(TreeError::Duplicate { path: "/".into() });
        }
        root.entry = entry;
        root.implicit = false;
        Ok(())
    }

    fn alloc(&mut self, parent: NodeId, name: &[u8], entry: Entry, implicit: bool) -> Result<NodeId, TreeError> {
        let h = self.name_hash(parent, name);
        self.alloc_hashed(h, parent, name, entry, implicit)
    }

    /// Add a node `name` under `parent` (filed under `h`, which must be its [`Tree::name_hash`]).
    fn alloc_hashed(
        &mut self,
        h: NameHash,
        parent: NodeId,
        name: &[u8],
        entry: Entry,
        implicit: bool,
    ) -> Result<NodeId, TreeError> {
        if self.nodes.len() >= self.limits.max_entries || self.nodes.len() >= NodeId::MAX as usize {
            return Err(TreeError::TooManyEntries { limit: self.limits.max_entries });
        }
        let id = self.nodes.len() as NodeId;
        let depth = self.nodes[parent as usize].depth.saturating_add(1);
        self.nodes.push(Node {
            name: name.to_vec(),
            parent,
            children: Vec::new(),
            entry,
            link_to: None,
            implicit,
            nlink: None,
            depth,
        });
        self.nodes[parent as usize].children.push(id);
        self.index.insert_unique(h.spread(), (id, h.0), |&(_, hh)| NameHash(hh).spread());
        Ok(id)
    }

    /// Walk to the parent directory of `comps`, creating missing directories.
    fn parent_for(&mut self, path: &[u8], comps: &[&[u8]]) -> Result<NodeId, TreeError> {
        if comps.len() > self.limits.max_depth {
            return Err(TreeError::TooDeep { path: show(path), limit: self.limits.max_depth });
        }
        let mut cur = ROOT;
        for (i, comp) in comps[..comps.len() - 1].iter().enumerate() {
            cur = self.dir_step(cur, comp, path, || show(&comps[..=i].join(&b'/')))?;
        }
        Ok(cur)
    }

    /// Add an entry at `path`. A directory that was created implicitly takes the
    /// entry's metadata (keeping its children); an identical duplicate is accepted;
    /// any other duplicate is an error.
    pub fn insert(&mut self, path: &[u8], entry: Entry) -> Result<NodeId, TreeError> {
        let comps = split_path(path)?;
        let parent = self.parent_for(path, &comps)?;
        let name = comps[comps.len() - 1];
        self.place(parent, name, path, entry)
    }

    /// [`Tree::insert`] for inputs that list entries directory by directory (tar order): the
    /// parent is found from `cursor` (the directories of the previous insertion) instead of
    /// walking from the root. Same checks, same errors, same result as [`Tree::insert`].
    pub(crate) fn insert_via(
        &mut self,
        cursor: &mut DirCursor,
        path: &[u8],
        entry: Entry,
    ) -> Result<NodeId, TreeError> {
        let mut n_comps = 0usize;
        if let Some(reason) = scan_path(path, |_, _| n_comps += 1) {
            return Err(TreeError::BadPath { path: show(path), reason });
        }
        if n_comps > self.limits.max_depth {
            return Err(TreeError::TooDeep { path: show(path), limit: self.limits.max_depth });
        }
        let (parent_rel, name) = match memchr::memrchr(b'/', path) {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let (mut dir, mut pos) = cursor.seek(parent_rel);
        while pos < parent_rel.len() {
            let from = if pos == 0 { 0 } else { pos + 1 };
            let to = memchr::memchr(b'/', &parent_rel[from..]).map_or(parent_rel.len(), |i| from + i);
            let comp = &parent_rel[from..to];
            dir = self.dir_step(dir, comp, path, || show(&parent_rel[..to]))?;
            cursor.descend(dir, comp);
            pos = to;
        }
        self.place(dir, name, path, entry)
    }

    /// The directory `comp` in `dir`, created implicitly (0755, 0:0) if missing. `parent` names
    /// it in the error when it exists and is not a directory (or is a hard link).
    fn dir_step(
        &mut self,
        dir: NodeId,
        comp: &[u8],
        path: &[u8],
        parent: impl FnOnce() -> String,
    ) -> Result<NodeId, TreeError> {
        let h = self.name_hash(dir, comp);
        match self.child_hashed(h, dir, comp) {
            Some(id) => {
                let n = self.node(id);
                if !n.entry.inode.is_dir() || n.link_to.is_some() {
                    return Err(TreeError::ParentNotDir { path: show(path), parent: parent() });
                }
                Ok(id)
            }
            None => {
                let e = Entry { inode: self.implicit_dir, ..Entry::default() };
                self.alloc_hashed(h, dir, comp, e, true)
            }
        }
    }

    /// Put `entry` as `name` in `parent`: a directory created implicitly takes the entry's
    /// metadata (keeping its children), an identical duplicate is accepted, any other duplicate
    /// is an error.
    fn place(&mut self, parent: NodeId, name: &[u8], path: &[u8], entry: Entry) -> Result<NodeId, TreeError> {
        let h = self.name_hash(parent, name);
        if let Some(id) = self.child_hashed(h, parent, name) {
            let n = self.node_mut(id);
            if n.implicit && n.entry.inode.is_dir() && entry.inode.is_dir() {
                n.entry = entry;
                n.implicit = false;
                return Ok(id);
            }
            if n.link_to.is_none() && n.entry == entry {
                return Ok(id);
            }
            return Err(TreeError::Duplicate { path: show(path) });
        }
        self.alloc_hashed(h, parent, name, entry, false)
    }

    /// Add a hard link at `path` to the existing non-directory entry at `target`.
    pub(crate) fn insert_hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<NodeId, TreeError> {
        let bad = |reason| TreeError::BadHardlink { path: show(path), target: show(target), reason };
        if path == target {
            return Err(bad("links to itself"));
        }
        let tcomps = split_path(target).map_err(|_| bad("invalid target path"))?;
        let _ = tcomps;
        let tid = self.lookup(target).ok_or_else(|| bad("target does not exist"))?;
        let tid = self.resolve(tid);
        if self.node(tid).entry.inode.is_dir() {
            return Err(bad("target is a directory"));
        }
        let comps = split_path(path)?;
        let parent = self.parent_for(path, &comps)?;
        let name = comps[comps.len() - 1];
        if let Some(id) = self.child(parent, name) {
            if self.node(id).link_to == Some(tid) {
                return Ok(id);
            }
            return Err(TreeError::Duplicate { path: show(path) });
        }
        let entry = self.node(tid).entry.clone();
        let id = self.alloc(parent, name, entry, false)?;
        self.node_mut(id).link_to = Some(tid);
        Ok(id)
    }

    /// Whole-tree checks and canonical ordering: children sorted bytewise by name.
    pub fn finalize(&mut self) -> Result<(), TreeError> {
        for i in 0..self.nodes.len() {
            let mut children = std::mem::take(&mut self.nodes[i].children);
            children.sort_unstable_by(|a, b| self.nodes[*a as usize].name.cmp(&self.nodes[*b as usize].name));
            self.nodes[i].children = children;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Depth of a node (root is 0).
    pub fn depth(&self, id: NodeId) -> usize {
        self.node(id).depth as usize
    }

    /// Add `name` directly under the existing directory `parent` (no implicit parents,
    /// no duplicate accepted). Used by inputs that list every directory themselves.
    pub fn insert_child(&mut self, parent: NodeId, name: &[u8], entry: Entry) -> Result<NodeId, TreeError> {
        let h = self.check_new_child(parent, name)?;
        self.alloc_hashed(h, parent, name, entry, false)
    }

    /// Add a hard link `name` under `parent` to the existing non-directory `target`.
    pub fn insert_hardlink_child(&mut self, parent: NodeId, name: &[u8], target: NodeId) -> Result<NodeId, TreeError> {
        let h = self.check_new_child(parent, name)?;
        let tid = self.resolve(target);
        if self.node(tid).entry.inode.is_dir() {
            return Err(TreeError::BadHardlink {
                path: show(&self.child_path(parent, name)),
                target: show(&self.path_of(tid)),
                reason: "target is a directory",
            });
        }
        let entry = self.node(tid).entry.clone();
        let id = self.alloc_hashed(h, parent, name, entry, false)?;
        self.node_mut(id).link_to = Some(tid);
        Ok(id)
    }

    fn child_path(&self, parent: NodeId, name: &[u8]) -> Vec<u8> {
        let mut p = self.path_of(parent);
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    /// Checks `name` as a new entry of `parent`; returns its name hash for the insertion.
    fn check_new_child(&self, parent: NodeId, name: &[u8]) -> Result<NameHash, TreeError> {
        let bad = |reason| TreeError::BadPath { path: show(&self.child_path(parent, name)), reason };
        match name {
            b"" => return Err(bad("empty name")),
            b"." | b".." => return Err(bad("'.' or '..' as name")),
            n if n.len() > MAX_NAME_LEN => return Err(bad("name longer than 255 bytes")),
            n if n.contains(&0) => return Err(bad("NUL byte in name")),
            n if n.contains(&b'/') => return Err(bad("'/' in name")),
            _ => {}
        }
        let p = self.nodes.get(parent as usize).ok_or_else(|| bad("no such parent"))?;
        if !p.entry.inode.is_dir() || p.link_to.is_some() {
            return Err(TreeError::ParentNotDir {
                path: show(&self.child_path(parent, name)),
                parent: show(&self.path_of(parent)),
            });
        }
        let h = self.name_hash(parent, name);
        if self.child_hashed(h, parent, name).is_some() {
            return Err(TreeError::Duplicate { path: show(&self.child_path(parent, name)) });
        }
        let depth = self.depth(parent) + 1;
        if depth > self.limits.max_depth {
            return Err(TreeError::TooDeep {
                path: show(&self.child_path(parent, name)),
                limit: self.limits.max_depth,
            });
        }
        Ok(h)
    }

    /// Set the explicit st_nlink of a node (see [`Node::nlink`]).
    pub fn set_nlink(&mut self, id: NodeId, nlink: u32) {
        self.node_mut(id).nlink = Some(nlink);
    }

    /// For every node, how many hard-link names point at it (index = NodeId).
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        for n in &self.nodes {
            if let Some(t) = n.link_to {
                if let Some(c) = counts.get_mut(t as usize) {
                    *c = c.saturating_add(1);
                }
            }
        }
        counts
    }

    /// The st_nlink a node has: explicit for non-directories when the input gave one,
    /// else computed. `link_counts` comes from [`Tree::link_counts`].
    pub fn nlink_with(&self, id: NodeId, link_counts: &[u32]) -> u32 {
        let id = self.resolve(id);
        let n = self.node(id);
        if n.entry.inode.is_dir() {
            if let Some(v) = n.nlink {
                return v;
            }
            let subdirs = n
                .children
                .iter()
                .filter(|&&c| self.node(c).link_to.is_none() && self.node(c).entry.inode.is_dir())
                .count();
            return u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
        }
        match n.nlink {
            Some(v) => v,
            None => link_counts.get(id as usize).copied().unwrap_or(0).saturating_add(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_stay_below_the_object_directory() {
        for ok in [&b""[..], b"ab/cdef", b"/ab/cdef", b"a5/5e63.file", b"object", b"a/b/c"] {
            assert_eq!(check_object_path(ok), Ok(()), "{}", show(ok));
        }
        for (bad, why) in [
            (&b"../../../etc/passwd"[..], "'..' path component"),
            (b"ab/../cd", "'..' path component"),
            (b"/..", "'..' path component"),
            (b"./ab", "'.' path component"),
            (b"/", "empty path component"),
            (b"//ab/cd", "empty path component"),
            (b"ab//cd", "empty path component"),
            (b"ab/cd/", "empty path component"),
            (b"ab/c\0d", "NUL byte in path"),
        ] {
            assert_eq!(check_object_path(bad), Err(why), "{}", show(bad));
        }
        assert_eq!(check_object_path(&[b'a'; 256]), Err("name longer than 255 bytes"));
    }

    /// The path rule written the plain way (what `scan_path` must agree with).
    fn naive_path_problem(path: &[u8]) -> Option<&'static str> {
        if path.len() >= PATH_MAX {
            return Some("path longer than PATH_MAX");
        }
        if path.contains(&0) {
            return Some("NUL byte in path");
        }
        path.split(|&b| b == b'/').find_map(|c| match c {
            b"" => Some("empty path component"),
            b"." => Some("'.' path component"),
            b".." => Some("'..' path component"),
            c if c.len() > MAX_NAME_LEN => Some("name longer than 255 bytes"),
            _ => None,
        })
    }

    #[test]
    fn path_scan_agrees_with_the_plain_rule() {
        // Every path of up to 10 bytes over an alphabet of the bytes that matter, at each of
        // the offsets a word boundary can fall on, plus long names and long paths.
        let alphabet = [b'a', b'/', b'.', 0u8];
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for len in 0..=10u32 {
            for mut n in 0..4usize.pow(len) {
                let mut p = Vec::new();
                for _ in 0..len {
                    p.push(alphabet[n % 4]);
                    n /= 4;
                }
                cases.push(p);
            }
        }
        for pre in 0..9 {
            for name_len in [254, 255, 256] {
                let mut p = vec![b'x'; pre];
                p.push(b'/');
                p.extend(std::iter::repeat_n(b'n', name_len));
                cases.push(p.clone());
                p.extend_from_slice(b"/../\0");
                cases.push(p);
            }
        }
        let long: Vec<u8> = b"abcdefg/".iter().copied().cycle().take(PATH_MAX + 8).collect();
        for len in [PATH_MAX - 2, PATH_MAX - 1, PATH_MAX, PATH_MAX + 1] {
            cases.push(long[..len].to_vec());
        }
        for p in &cases {
            assert_eq!(path_problem(p), naive_path_problem(p), "{}", show(p));
            match split_path(p) {
                Ok(comps) => assert_eq!(comps, p.split(|&b| b == b'/').collect::<Vec<_>>(), "{}", show(p)),
                Err(TreeError::BadPath { reason, .. }) => assert_eq!(Some(reason), naive_path_problem(p)),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn path_scan_agrees_with_the_plain_rule_over_every_kind_of_byte() {
        // Random paths over bytes on both sides of every threshold the scan tests (NUL, '.',
        // '/', '0', the high bit), at every word offset, as object paths too.
        let alphabet = [0u8, 1, b'.', b'/', b'0', b'a', 0x7f, 0x80, 0xaf, 0xff];
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for _ in 0..200_000 {
            let len = next(40) as usize;
            let rare = next(4) == 0;
            let p: Vec<u8> = (0..len)
                .map(|_| if rare || next(8) == 0 { alphabet[next(10) as usize] } else { b'a' + next(26) as u8 })
                .collect();
            assert_eq!(path_problem(&p), naive_path_problem(&p), "{}", show(&p));
            let rel = p.strip_prefix(b"/").unwrap_or(&p);
            let want = if p.is_empty() { Ok(()) } else { naive_path_problem(rel).map_or(Ok(()), Err) };
            assert_eq!(check_object_path(&p), want, "{}", show(&p));
        }
    }

    #[test]
    fn object_path_shortcut_agrees_with_the_plain_rule() {
        // The `xx/` + name shape the shortcut takes, at the lengths around each of its
        // bounds, with every byte value put at every position (and a second '/' or '.' at a
        // few): the shortcut only ever says yes where the plain rule finds nothing, and
        // `check_object_path` agrees with the plain rule (as a relative and an absolute path).
        // The rule of `check_object_path` the plain way: an empty payload names no object; one
        // leading '/' is dropped.
        let want = |p: &[u8]| {
            let rel = p.strip_prefix(b"/").unwrap_or(p);
            if p.is_empty() {
                Ok(())
            } else {
                naive_path_problem(rel).map_or(Ok(()), Err)
            }
        };
        let check = |p: &[u8]| {
            if is_plain_object_path(p) {
                assert_eq!(naive_path_problem(p), None, "{}", show(p));
            }
            assert_eq!(check_object_path(p), want(p), "{}", show(p));
            let abs = [b"/", p].concat();
            assert_eq!(check_object_path(&abs), want(&abs), "{}", show(&abs));
        };
        let mut taken = 0;
        let bases = [0, 1, 2, 3, 4, 8, 11, 15, 16, 17, 23, 24, 25, 64, 65, 66, 70, 257, 258, 259, 260].map(|len| {
            let mut p: Vec<u8> = (0..len).map(|i| if i == 2 { b'/' } else { b"0123456789abcdef"[i % 16] }).collect();
            // The containers/storage shape ("xx/" + 62 hex digits + ".file") for lengths of 70.
            if len == 70 {
                p[65..].copy_from_slice(b".file");
            }
            p
        });
        for base in bases {
            let len = base.len();
            check(&base);
            for pos in 0..len {
                for v in 0..=255u8 {
                    let mut p = base.clone();
                    p[pos] = v;
                    check(&p);
                    taken += usize::from(is_plain_object_path(&p));
                    for other in [b'/', b'.', 0] {
                        if pos + 5 < len && [0, b'.', b'/', b'0', b'a', 0x80].contains(&v) {
                            let mut q = p.clone();
                            q[pos + 5] = other;
                            check(&q);
                        }
                    }
                }
            }
        }
        assert!(taken > 100_000, "{taken}");
        assert!(is_plain_object_path(b"5e/0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"));
        assert!(is_plain_object_path(b"5e/0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab.file"));
        assert!(!is_plain_object_path(b"5e/0123456789abc/ef0123456789abcdef0123456789abcdef0123456789ab"));
        assert!(!is_plain_object_path(b"../0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"));
    }

    #[test]
    fn insert_via_a_cursor_is_insert() {
        // Random sequences over a small name space (files, directories, implicit parents,
        // duplicates, names sharing a prefix, bad paths, a tiny depth limit): the cursor gives
        // the same result (ids or errors) as the walk from the root, step by step.
        let comps: [&[u8]; 7] = [b"a", b"b", b"ab", b"c", b".", b"", b"a.b"];
        let mut seed = 11u32;
        let mut next = |n: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) % n
        };
        for _ in 0..300 {
            let limits = Limits { max_entries: 40, max_depth: 4 };
            let (mut t1, mut t2) = (Tree::new(limits), Tree::new(limits));
            let mut cursor = DirCursor::default();
            for _ in 0..30 {
                let depth = 1 + next(5);
                let mut p = Vec::new();
                for i in 0..depth {
                    if i > 0 {
                        p.push(b'/');
                    }
                    let k = if next(10) == 0 { next(7) } else { next(4) };
                    p.extend_from_slice(comps[k as usize]);
                }
                let e = if next(2) == 0 {
                    reg(0o644)
                } else {
                    Entry { inode: Inode { mode: S_IFDIR | 0o755, ..Inode::default() }, ..Entry::default() }
                };
                let r1 = t1.insert(&p, e.clone());
                let r2 = t2.insert_via(&mut cursor, &p, e);
                assert_eq!(r1, r2, "{}", show(&p));
            }
            assert_eq!(t1.len(), t2.len());
            for id in 0..t1.len() as NodeId {
                assert_eq!(t1.path_of(id), t2.path_of(id));
                assert_eq!(t1.node(id).implicit, t2.node(id).implicit);
            }
        }
    }

    fn reg(mode: u32) -> Entry {
        Entry { inode: Inode { mode: S_IFREG | mode, ..Inode::default() }, ..Entry::default() }
    }

    #[test]
    fn creates_parents_and_rejects_bad_names() {
        let mut t = Tree::new(Limits::default());
        let id = t.insert(b"a/b/c", reg(0o644)).unwrap();
        assert_eq!(t.path_of(id), b"a/b/c");
        assert!(t.node(t.lookup(b"a").unwrap()).implicit);
        for bad in [&b"a/../x"[..], b"./x", b"a//b", b"", b"x\0y"] {
            assert!(matches!(t.insert(bad, reg(0o644)), Err(TreeError::BadPath { .. })), "{bad:?}");
        }
        assert!(matches!(t.insert(b"a/b/c/d", reg(0o644)), Err(TreeError::ParentNotDir { .. })));
    }

    #[test]
    fn duplicates_and_hardlinks() {
        let mut t = Tree::new(Limits::default());
        t.insert(b"f", reg(0o644)).unwrap();
        t.insert(b"f", reg(0o644)).unwrap();
        assert_eq!(t.insert(b"f", reg(0o600)), Err(TreeError::Duplicate { path: "f".into() }));
        let l = t.insert_hardlink(b"g", b"f").unwrap();
        assert_eq!(t.node(l).link_to, t.lookup(b"f"));
        assert!(matches!(t.insert_hardlink(b"h", b"nope"), Err(TreeError::BadHardlink { .. })));
        assert!(matches!(t.insert_hardlink(b"h", b"h"), Err(TreeError::BadHardlink { .. })));
        t.insert(b"d/x", reg(0o644)).unwrap();
        assert!(matches!(t.insert_hardlink(b"h", b"d"), Err(TreeError::BadHardlink { .. })));
    }
}
