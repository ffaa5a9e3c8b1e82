//! Directory on disk → tree, the way `mkcomposefs DIR` reads one, with optional copying of file
//! contents into a content store (`--digest-store`).
//!
//! - Nothing is followed: entries are examined with `lstat`, regular files opened `O_NOFOLLOW`,
//!   symlink targets read with `readlink`. Names, targets and xattrs go through the same
//!   validation as every other input ([`Tree::insert_child`], kernel limits).
//! - Metadata: mode, uid, gid, rdev (re-encoded as the kernel's `new_encode_dev`), size, mtime
//!   with nanoseconds, and every xattr `llistxattr` lists.
//! - Regular files: empty files carry nothing; files of at most `INLINE_MAX` bytes (the
//!   reference's `LCFS_RECOMMENDED_INLINE_CONTENT_MAX`) are stored inside the image; larger files
//!   get their fs-verity digest computed and become external objects named `xx/yyyy...` after it
//!   (the reference's `--digest-store` naming), with the digest recorded for the metacopy xattr.
//! - Hard links (same `st_dev`/`st_ino`, `st_nlink > 1`) become hard links in the tree (the
//!   reference would store separate inodes).
//! - Worker threads on all cores ([`crate::store::import`]) list the directories (the calls
//!   above) and read, hash and (with a digest store) store the external files, while this
//!   thread builds the tree in a fixed depth-first, name-sorted order; the store names objects by the
//!   digest of the bytes it wrote, enables fs-verity where the filesystem has it, reuses objects
//!   already present, and is made durable with one `syncfs` before the image is written
//!   ([`crate::store::objects`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::input::toc::encode_dev;
use crate::store::import::{self, FileJob, ImportError};
use crate::store::{Naming, ObjectStore, StoreError, StoreOptions};
use crate::tree::{
    Entry, Inode, Limits, NodeId, Tree, Xattr, ROOT, S_IFDIR, S_IFMT, S_IFREG, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};

/// Largest file stored inline in the image (the reference's recommended inline limit).
pub(crate) const INLINE_MAX: u64 = 64;

/// Settings for [`build_tree`]. The default reads everything and keeps hard links.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirOptions {
    /// Content store to copy external files into (`xx/yyyy...` by fs-verity digest).
    pub digest_store: Option<PathBuf>,
    pub limits: Limits,
    pub walk: WalkOptions,
}

/// What a directory walk takes from the filesystem (the reference `mkcomposefs`'s build flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WalkOptions {
    /// Store every hard-linked name as its own inode, as the reference `mkcomposefs` does.
    pub break_hardlinks: bool,
    /// Every mtime 0.0 (`mkcomposefs --use-epoch`).
    pub use_epoch: bool,
    /// Leave out character and block devices, overlay whiteouts (0/0) included
    /// (`mkcomposefs --skip-devices`).
    pub skip_devices: bool,
    /// Which xattrs are read.
    pub xattrs: XattrSelection,
    /// Threads that read, hash and store the files (`mkcomposefs --threads`; default:
    /// [`crate::store::import::default_threads`], two per CPU).
    pub threads: Option<usize>,
}

/// Which xattrs a directory walk reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum XattrSelection {
    /// Every xattr `llistxattr` lists.
    #[default]
    All,
    /// Only `user.*` (`mkcomposefs --user-xattrs`).
    User,
    /// None (`mkcomposefs --skip-xattrs`).
    None,
}

/// Object path of a digest: `xx/yyyy...` (lower-case hex).
pub fn object_path(d: &[u8; 32]) -> String {
    crate::store::object_name(d)
}

/// Read the directory `root` into a finalized tree.
pub(crate) fn build_tree(root: &Path, opts: &DirOptions) -> Result<Tree, DirError> {
    let io_err = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |e: io::Error| DirError::Io { path, op, source: e }
    };
    let md = fs::symlink_metadata(root).map_err(io_err(root, "lstat"))?;
    if !md.is_dir() {
        return Err(DirError::Entry { path: root.to_path_buf(), reason: "not a directory".into() });
    }
    let store = match &opts.digest_store {
        Some(p) => Some(ObjectStore::open(p, StoreOptions::new(Naming::FsVerity))?),
        None => None,
    };
    let mut b = Builder { tree: Tree::new(opts.limits), links: HashMap::new() };
    let (root_entry, _) = entry_for(root, &md, &opts.walk)?;
    b.tree.set_root(root_entry).map_err(|e| DirError::Entry { path: root.to_path_buf(), reason: e.to_string() })?;

    let threads = opts.walk.threads.unwrap_or_else(import::default_threads);
    let lister = |dir: &Path| list_dir(dir, &opts.walk);
    let ((), objects) =
        import::with_workers(store.as_ref(), threads, &lister, |sub| walk(&mut b, root, sub, &opts.walk))?;
    let mut tree = b.tree;
    for (id, obj) in objects {
        let e = &mut tree.node_mut(id).entry;
        e.payload = Some(object_path(&obj.digest).into_bytes());
        e.fsverity_digest = obj.verity;
    }
    if let Some(store) = &store {
        // Objects durable before the caller writes the image that names them.
        store.sync()?;
    }
    tree.finalize().map_err(|e| DirError::Entry { path: root.to_path_buf(), reason: e.to_string() })?;
    Ok(tree)
}

/// One entry of a directory as a worker read it.
struct Child {
    name: std::ffi::OsString,
    path: PathBuf,
    md: fs::Metadata,
    entry: Entry,
    /// Its content goes to the import workers.
    external: bool,
}

type Listing = Result<Vec<Child>, DirError>;

/// A directory's entries in name order, each with its metadata, xattrs, symlink target or inline
/// content (run by the import workers).
fn list_dir(dir: &Path, walk: &WalkOptions) -> Listing {
    let io_err = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |e: io::Error| DirError::Io { path, op, source: e }
    };
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir, "opendir"))?
        .map(|r| r.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir, "readdir"))?;
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let md = fs::symlink_metadata(&path).map_err(io_err(&path, "lstat"))?;
        use std::os::unix::fs::FileTypeExt;
        if walk.skip_devices && (md.file_type().is_char_device() || md.file_type().is_block_device()) {
            continue;
        }
        let (entry, external) = entry_for(&path, &md, walk)?;
        out.push(Child { name, path, md, entry, external });
    }
    Ok(out)
}

/// Depth-first walk with an explicit stack (no recursion on hostile depth). The tree is built
/// here, in a fixed order; the listings and the files' contents come from the import workers.
fn walk(
    b: &mut Builder,
    root: &Path,
    sub: &import::Submitter<'_, Listing>,
    opts: &WalkOptions,
) -> Result<(), DirError> {
    let mut stack = vec![(sub.list(root.to_path_buf()), ROOT)];
    while let Some((ticket, id)) = stack.pop() {
        let mut subdirs = Vec::new();
        for c in ticket.wait()?? {
            let (md, path) = (&c.md, &c.path);
            let bad = |e: crate::tree::TreeError| DirError::Entry { path: path.clone(), reason: e.to_string() };
            let linked = !md.is_dir() && md.nlink() > 1 && !opts.break_hardlinks;
            if linked {
                if let Some(&target) = b.links.get(&(md.dev(), md.ino())) {
                    b.tree.insert_hardlink_child(id, c.name.as_bytes(), target).map_err(bad)?;
                    continue;
                }
            }
            let child = b.tree.insert_child(id, c.name.as_bytes(), c.entry).map_err(bad)?;
            if md.is_dir() {
                subdirs.push((c.path, child));
                continue;
            }
            if linked {
                b.links.insert((md.dev(), md.ino()), child);
            }
            if c.external {
                sub.submit(FileJob { id: child, path: c.path, dev: md.dev(), ino: md.ino(), size: md.len() })?;
            }
        }
        // Asked for in walk order: the workers take the newest request first.
        for (path, child) in subdirs {
            stack.push((sub.list(path), child));
        }
    }
    Ok(())
}

struct Builder {
    tree: Tree,
    links: HashMap<(u64, u64), NodeId>,
}

/// The entry for `path`, and whether its content goes to the import workers.
fn entry_for(path: &Path, md: &fs::Metadata, walk: &WalkOptions) -> Result<(Entry, bool), DirError> {
    let io_err = |op: &'static str| move |e: io::Error| DirError::Io { path: path.to_path_buf(), op, source: e };
    let mode = md.mode();
    let ftype = mode & S_IFMT;
    let rdev = if md.file_type().is_char_device() || md.file_type().is_block_device() {
        let r = md.rdev();
        encode_dev(libc::major(r) as i64, libc::minor(r) as i64)
            .map_err(|reason| DirError::Entry { path: path.to_path_buf(), reason })?
    } else {
        0
    };
    let mut entry = Entry {
        inode: Inode {
            mode: mode & 0o177777,
            uid: md.uid(),
            gid: md.gid(),
            rdev,
            size: 0,
            mtime: if walk.use_epoch { 0 } else { md.mtime() },
            mtime_nsec: if walk.use_epoch { 0 } else { md.mtime_nsec().clamp(0, 999_999_999) as u32 },
        },
        ..Entry::default()
    };
    use std::os::unix::fs::FileTypeExt;
    let mut external = false;
    if md.file_type().is_symlink() {
        let t = fs::read_link(path).map_err(io_err("readlink"))?;
        let t = t.as_os_str().as_bytes().to_vec();
        if t.is_empty() || t.len() >= crate::tree::PATH_MAX {
            return Err(DirError::Entry {
                path: path.to_path_buf(),
                reason: "symlink target empty or too long".into(),
            });
        }
        entry.inode.size = t.len() as u64;
        entry.payload = Some(t);
    } else if ftype == S_IFREG {
        entry.inode.size = md.len();
        external = regular(path, md, &mut entry)?;
    } else if ftype == S_IFDIR {
        entry.inode.size = 0;
    }
    entry.xattrs = match walk.xattrs {
        XattrSelection::All => read_xattrs(path, false)?,
        XattrSelection::User => read_xattrs(path, true)?,
        XattrSelection::None => Vec::new(),
    };
    Ok((entry, external))
}

/// Small files are read inline; larger ones are left to the import workers (`true`).
fn regular(path: &Path, md: &fs::Metadata, entry: &mut Entry) -> Result<bool, DirError> {
    let io_err = |op: &'static str| move |e: io::Error| DirError::Io { path: path.to_path_buf(), op, source: e };
    let size = md.len();
    if size == 0 {
        return Ok(false);
    }
    if size > INLINE_MAX {
        return Ok(true);
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("open"))?;
    let mut buf = Vec::with_capacity(size as usize);
    (&f).take(size + 1).read_to_end(&mut buf).map_err(io_err("read"))?;
    if buf.len() as u64 != size {
        return Err(DirError::Entry { path: path.to_path_buf(), reason: "file changed size while being read".into() });
    }
    entry.content = Some(buf);
    Ok(false)
}

/// Create `dir/.tmpXXXXXXXX` exclusively (mode 0600 until finished).
pub(crate) fn create_temp(dir: &Path) -> io::Result<(File, PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!(".tmp{:x}{:x}{:x}", std::process::id(), n, t & 0xffff_ffff);
        let p = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "could not create a unique temporary file"))
}

/// Removes a temporary file unless forgotten.
pub(crate) struct UnlinkOnDrop(pub Option<PathBuf>);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// The xattrs of `path` itself (not followed), only `user.*` ones when `user_only`.
fn read_xattrs(path: &Path, user_only: bool) -> Result<Vec<Xattr>, DirError> {
    let err =
        |op: &'static str| move |e: rustix::io::Errno| DirError::Io { path: path.to_path_buf(), op, source: e.into() };
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need: usize = rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(err("llistxattr"))?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err("llistxattr")(e)),
        }
    };
    list.truncate(n);
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty() && (!user_only || n.starts_with(b"user."))) {
        if name.len() > XATTR_NAME_MAX {
            return Err(DirError::Entry { path: path.to_path_buf(), reason: "xattr name too long".into() });
        }
        let cname = std::ffi::CString::new(name)
            .map_err(|_| DirError::Entry { path: path.to_path_buf(), reason: "NUL in xattr name".into() })?;
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::lgetxattr(path, cname.as_c_str(), &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) if value.len() < XATTR_SIZE_MAX => value.resize(XATTR_SIZE_MAX, 0),
                Err(e) => return Err(err("lgetxattr")(e)),
            }
        };
        value.truncate(len);
        out.push(Xattr { key: name.to_vec(), value });
    }
    Ok(out)
}

#[derive(Debug, Error)]
pub enum DirError {
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Entry { path: PathBuf, reason: String },
    #[error(transparent)]
    Import(Box<ImportError>),
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl From<ImportError> for DirError {
    fn from(e: ImportError) -> Self {
        DirError::Import(Box::new(e))
    }
}

impl From<StoreError> for DirError {
    fn from(e: StoreError) -> Self {
        DirError::Store(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{S_IFLNK, S_IFREG};

    #[test]
    fn reads_a_directory_with_store() {
        let src = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir(s.join("d")).unwrap();
        fs::write(s.join("d/small"), b"hi\n").unwrap();
        let big: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
        fs::write(s.join("big"), &big).unwrap();
        fs::hard_link(s.join("big"), s.join("d/big-link")).unwrap();
        std::os::unix::fs::symlink("d/small", s.join("sl")).unwrap();
        fs::write(s.join("empty"), b"").unwrap();
        let _ = rustix::fs::lsetxattr(s.join("empty").as_path(), "user.k", b"v", rustix::fs::XattrFlags::empty());

        let opts = DirOptions { digest_store: Some(store.path().to_path_buf()), ..DirOptions::default() };
        let t = build_tree(s, &opts).unwrap();
        let small = t.node(t.lookup(b"d/small").unwrap());
        assert_eq!(small.entry.content.as_deref(), Some(&b"hi\n"[..]));
        let b = t.node(t.lookup(b"big").unwrap());
        let d = crate::fsverity::digest_bytes(&big);
        assert_eq!(b.entry.fsverity_digest, Some(d));
        assert_eq!(b.entry.payload.as_deref(), Some(object_path(&d).as_bytes()));
        assert_eq!(b.entry.inode.mode & S_IFMT, S_IFREG);
        assert_eq!(fs::read(store.path().join(object_path(&d))).unwrap(), big);
        let l = t.node(t.lookup(b"d/big-link").unwrap());
        assert_eq!(l.link_to, t.lookup(b"big"));
        let sl = t.node(t.lookup(b"sl").unwrap());
        assert_eq!(sl.entry.inode.mode & S_IFMT, S_IFLNK);
        assert_eq!(sl.entry.payload.as_deref(), Some(&b"d/small"[..]));
        // No temporary files left in the store; a second run finds the object present.
        let leftovers: Vec<_> = fs::read_dir(store.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.as_bytes().starts_with(b".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        build_tree(s, &opts).unwrap();
    }

    #[test]
    fn rejects_non_directory() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = build_tree(f.path(), &DirOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
