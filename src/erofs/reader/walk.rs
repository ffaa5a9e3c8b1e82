//! The breadth-first walk over the directories, in the writer's order, and the invariants the
//! walk shows: every directory has `.` and `..` pointing where they must, is reachable once, and
//! is not nested too deep; raw 0/0 character devices appear only as the root's whiteout stubs,
//! which are exactly the writer's; directory nlinks count the subdirectories.

use super::pipe::Pipe;
use super::{child_path, dir_path, show_path, with_path, DirRec, ReadError, Reader};
use crate::erofs::format::*;
use crate::sys::tables::Slab;
use crate::tree::{self, Xattr};

/// What the walk found.
pub(super) struct Walk<'a> {
    /// Directories in walk order (the root first).
    pub(super) dirs: Vec<DirRec<'a>>,
    /// The image the names are in.
    d: &'a [u8],
    /// Every directory's children, one directory after the other in walk order (their names
    /// and the child inodes' places in the [`super::inode::InodeTable`], so that no later phase
    /// looks a nid up again); a directory's are `children[dir.children]`
    /// ([`Walk::children_of`]). One list for all directories rather than one allocation each.
    pub(super) children: Slab<Child>,
    /// Root whiteout stubs: (index of the root child they precede, nid).
    pub(super) stubs: Vec<(usize, u64)>,
    pub(super) stub_names: Vec<&'a [u8]>,
    /// The first directory, in walk order, whose stored nlink is not 2 + its subdirectories:
    /// (its index, the nlink, the subdirectories), refused by `check_dir_nlinks`.
    pub(super) bad_nlink: Option<(usize, u32, usize)>,
}

/// A name in the walk's child list: where it is in the image, its length, and its inode's place
/// in the table. 12 bytes, where a (name slice, place) pair takes 24: the list holds a record per
/// name of the image. (Offsets of 48 bits hold any slice's: user address spaces are smaller;
/// names are at most 255 bytes, longer ones are refused in `dir.rs`.)
///
/// Two words rather than four fields: a record is made in registers and written with two
/// stores, and copied with two loads of the same sizes (four narrow stores read back as wider
/// loads cannot be forwarded from the store buffer, and each such load waits for the stores to
/// reach the cache: in `perf annotate` of the walk, a fifth of its time). `packed(4)` keeps it
/// at 12 bytes; its fields are only ever read by value.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct Child {
    /// The name's offset in the image, low 32 bits; the inode's place above.
    low_pos: u64,
    /// The name's offset, bits 32 to 47; its length above.
    high_len: u32,
}

impl Child {
    /// Its name's length.
    pub(super) fn len(&self) -> usize {
        (self.high_len >> 16) as usize
    }

    /// The inode's place in the table.
    pub(super) fn pos(&self) -> u32 {
        (self.low_pos >> 32) as u32
    }

    /// Its name's offset in the image.
    fn at(&self) -> usize {
        ((self.high_len as usize & 0xffff) << 32) | (self.low_pos as u32) as usize
    }
}

impl<'a> Walk<'a> {
    /// The children of directory `di` (none for a directory not in the walk).
    pub(super) fn children_of(&self, di: usize) -> &[Child] {
        let Some(d) = self.dirs.get(di) else { return &[] };
        self.children.get(d.children.start as usize..d.children.end as usize).unwrap_or(&[])
    }

    /// A child's name.
    pub(super) fn name(&self, c: &Child) -> &'a [u8] {
        let at = c.at();
        self.d.get(at..at + c.len()).unwrap_or(&[])
    }

    /// The record of `name`, a name read from the image (a part of `d`, at most 255 bytes:
    /// [`Walk::name`] gives it back), naming the inode at place `pos`.
    fn child(&self, name: &'a [u8], pos: u32) -> Child {
        let at = (name.as_ptr() as usize).wrapping_sub(self.d.as_ptr() as usize);
        debug_assert!(at <= self.d.len() && name.len() <= usize::from(u8::MAX) && at >> 48 == 0);
        Child {
            low_pos: (at as u32) as u64 | (u64::from(pos) << 32),
            high_len: ((at >> 32) as u32 & 0xffff) | ((name.len() as u32 & 0xff) << 16),
        }
    }
}

/// The walk in progress: [`Walk`] plus the names seen.
struct State<'a> {
    walk: Walk<'a>,
    names_total: usize,
    /// The child list's capacity when its pages were last made present, and up to where.
    children_cap: usize,
    children_populated: usize,
}

/// The child list's pages are made present this many entries (96 KiB) at a time as it fills,
/// as the inode list's are (see `InodeTable::insert`): never beyond its capacity, which the
/// directories read so far asked for.
const CHILDREN_POPULATE_STEP: usize = 4096;

impl<'a> Reader<'a> {
    pub(super) fn walk(&mut self, mut pipe: Option<&mut Pipe<'_>>) -> Result<Walk<'a>, ReadError> {
        let root = DirRec { nid: self.root_nid, name: &[], parent: 0, depth: 0, children: 0..0 };
        let mut st = State {
            walk: Walk {
                d: self.d,
                dirs: vec![root],
                // Room for a name per inode the superblock counts (most images have about as
                // many names as inodes), made present only as it fills (`walk_dir`): growing the
                // list would move it, with the other threads of the vetting held up meanwhile.
                // In the tables' region when there is one (`crate::sys::tables`).
                children: Slab::with_capacity_in(self.tables.as_ref(), self.inodes.room()),
                stubs: Vec::new(),
                stub_names: Vec::new(),
                bad_nlink: None,
            },
            names_total: 0,
            children_cap: 0,
            children_populated: 0,
        };
        let mut at = 0;
        while at < st.walk.dirs.len() {
            self.walk_dir(at, &mut st, pipe.as_deref_mut())?;
            if let Some(p) = pipe.as_deref_mut() {
                if !p.collect(&mut self.inodes) {
                    return Err(super::pipe::gave_up());
                }
            }
            at += 1;
        }
        Ok(st.walk)
    }

    /// Read directory `at` of the walk: check `.` and `..`, load every child, queue the
    /// subdirectories, set the stubs aside.
    /// With `pipe`, an inode that is neither a directory (by its entry's type) nor in the root
    /// is given its place now and decoded later, on another thread (`pipe.rs`).
    fn walk_dir(&mut self, at: usize, st: &mut State<'a>, mut pipe: Option<&mut Pipe<'_>>) -> Result<(), ReadError> {
        let dirs = &st.walk.dirs;
        let nid = dirs[at].nid;
        // The root's parent is itself (record 0).
        let parent_nid = dirs[dirs[at].parent as usize].nid;
        let dir_err =
            |dirs: &[DirRec], reason: String| ReadError::Dir { nid, path: show_path(&dir_path(dirs, at)), reason };
        let Some(dd) = self.inodes.dir_data(&nid) else {
            return Err(dir_err(dirs, "not a directory".into()));
        };
        let mut ents = std::mem::take(&mut self.dirent_buf);
        self.read_dir(nid, dd, &mut ents).map_err(|e| with_path(e, || dir_path(dirs, at)))?;
        // This directory's children go at the end of the one list (room for them made now).
        let first = st.walk.children.len();
        let need = ents.len().saturating_sub(2);
        st.walk.children.reserve(need);
        let (len, cap) = (st.walk.children.len(), st.walk.children.capacity());
        if cap != st.children_cap {
            // A new allocation: what was there is in place; the rest is fresh.
            (st.children_cap, st.children_populated) = (cap, len);
        }
        if len + need > st.children_populated {
            let to = (len + need).max(st.children_populated.saturating_add(CHILDREN_POPULATE_STEP)).min(cap);
            st.walk.children.populate(st.children_populated..to);
            st.children_populated = to;
        }
        let (mut dot, mut dotdot) = (false, false);
        let mut subdirs = 0usize;
        for &(name, cnid, ftype) in &ents {
            let dirs = &st.walk.dirs;
            if name == b"." || name == b".." {
                let want = if name == b"." { nid } else { parent_nid };
                if cnid != want || ftype != FT_DIR {
                    return Err(dir_err(dirs, format!("'{}' entry points to nid {cnid}", tree::show(name))));
                }
                if name == b"." {
                    dot = true
                } else {
                    dotdot = true
                }
                continue;
            }
            let deferred = match pipe.as_deref_mut() {
                Some(p) if at != 0 && ftype != FT_DIR && self.inodes.insert_pending(cnid, ftype) => {
                    if p.defer(cnid) && !(p.collect(&mut self.inodes) && p.relieve(self)) {
                        return Err(super::pipe::gave_up());
                    }
                    true
                }
                _ => false,
            };
            if !deferred {
                self.load(cnid).map_err(|e| with_path(e, || child_path(dirs, at, name)))?;
            }
            // (Decoded, or deferred with its place given: either way it has a place, below
            // u32::MAX: the table's index holds u32 places.)
            let Some(cpos) = self.inodes.pos(cnid) else {
                continue;
            };
            let Some(child) = self.inodes.at_mut(cpos) else {
                continue;
            };
            if child.ftype != ftype {
                let reason = format!(
                    "entry {} has file type {ftype} but its inode is of type {}",
                    tree::show(name),
                    child.ftype
                );
                return Err(dir_err(dirs, reason));
            }
            child.names = child.names.saturating_add(1);
            if child.raw_whiteout {
                let stub = nid == self.root_nid
                    && name.len() == 2
                    && name.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
                if !stub || child.names > 1 {
                    let reason = format!("unescaped whiteout {} outside the root whiteout stubs", tree::show(name));
                    return Err(dir_err(dirs, reason));
                }
                // Not part of the tree, but it holds a place in the writer's walk.
                st.walk.stubs.push((st.walk.children.len() - first, cnid));
                st.walk.stub_names.push(name);
                continue;
            }
            // The tree's depth limit, for every name (a file below the deepest directory too).
            let d = dirs[at].depth as usize + 1;
            if d > self.limits.tree.max_depth {
                return Err(ReadError::Limit(format!(
                    "{}: nested deeper than {}",
                    show_path(&child_path(dirs, at, name)),
                    self.limits.tree.max_depth
                )));
            }
            if child.is_dir() {
                if child.names > 1 {
                    let reason = format!(
                        "directory {} (nid {cnid}) is reachable twice (cycle or aliased directory)",
                        tree::show(name)
                    );
                    return Err(dir_err(dirs, reason));
                }
                // (`at` and `d` are below the directory count: they fit, see `DirRec`.)
                st.walk.dirs.push(DirRec { nid: cnid, name, parent: at as u32, depth: d as u32, children: 0..0 });
                subdirs += 1;
            }
            st.names_total += 1;
            // (The tree's node ids and the primary-name table hold u32 places.)
            if st.names_total >= self.limits.tree.max_entries.min(u32::MAX as usize) {
                return Err(ReadError::Limit(format!("more than {} entries", self.limits.tree.max_entries)));
            }
            let c = st.walk.child(name, cpos as u32);
            st.walk.children.push(c);
        }
        if !dot || !dotdot {
            return Err(dir_err(&st.walk.dirs, "missing '.' or '..' entry".into()));
        }
        self.dirent_buf = ents;
        // (Fewer than u32::MAX children: the count of names was checked at each.)
        st.walk.dirs[at].children = first as u32..st.walk.children.len() as u32;
        // A directory's stored nlink is 2 + its subdirectories (the kernel shows it); the first
        // one that differs is refused after the walk and the stub checks.
        let want = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
        let have = self.inodes.get(&nid).map_or(want, |i| i.nlink);
        if have != want && st.walk.bad_nlink.is_none() {
            st.walk.bad_nlink = Some((at, have, subdirs));
        }
        Ok(())
    }
    /// The root whiteout stubs are exactly the writer's: every name `00`..`ff` is in the
    /// root (as a stub or a real entry), and each stub is a 0644 0/0 character device
    /// with the root's owner, mtime and SELinux label, and nothing else.
    pub(super) fn check_stubs(&self, walk: &Walk<'_>) -> Result<(), ReadError> {
        let (stubs, stub_names) = (&walk.stubs, &walk.stub_names);
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
        for n in walk.children_of(0).iter().map(|c| walk.name(c)).chain(stub_names.iter().copied()) {
            if let Some(i) = hex(n) {
                seen[i] = true;
            }
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(bad(format!("whiteout stub {missing:02x} is missing")));
        }
        let Some(root) = self.inodes.entry(&root_nid) else {
            return Ok(());
        };
        let label: Vec<&Xattr> = root.xattrs.iter().filter(|x| x.key == SELINUX_XATTR).collect();
        for (&(_, snid), name) in stubs.iter().zip(stub_names) {
            let Some(ino) = self.inodes.get(&snid) else {
                continue;
            };
            let Some(e) = self.inodes.entry(&snid) else {
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

    /// A directory's stored nlink is 2 + its subdirectories (the kernel shows it): the first
    /// directory in walk order where it is not, as the walk counted them.
    pub(super) fn check_dir_nlinks(&self, walk: &Walk<'_>) -> Result<(), ReadError> {
        let Some((di, have, subdirs)) = walk.bad_nlink else {
            return Ok(());
        };
        Err(ReadError::Dir {
            nid: walk.dirs.get(di).map_or(0, |d| d.nid),
            path: show_path(&dir_path(&walk.dirs, di)),
            reason: format!("nlink {have}, but it has {subdirs} subdirectories"),
        })
    }
}
