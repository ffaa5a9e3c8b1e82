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
//! - With a digest store: each external file is copied to a temporary file in the store, its
//!   digest re-computed from the copy (a file that changed meanwhile is an error), made
//!   world-readable, fs-verity enabled where the filesystem supports it, and renamed into place.
//!   Objects already present are left alone.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::input::toc::encode_dev;
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
    /// Threads for the fs-verity digest of one large file (default: all CPUs).
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
    let h = crate::fsverity::to_hex(d);
    format!("{}/{}", &h[..2], &h[2..])
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
    if let Some(store) = &opts.digest_store {
        fs::create_dir_all(store).map_err(io_err(store, "mkdir"))?;
    }
    let mut b = Builder { opts, tree: Tree::new(opts.limits), links: HashMap::new() };
    let root_entry = b.entry_for(root, &md)?;
    b.tree.set_root(root_entry).map_err(|e| DirError::Entry { path: root.to_path_buf(), reason: e.to_string() })?;

    // Depth-first walk with an explicit stack (no recursion on hostile depth).
    let mut stack: Vec<(PathBuf, NodeId)> = vec![(root.to_path_buf(), ROOT)];
    while let Some((dir, id)) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(&dir, "opendir"))?
            .map(|r| r.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&dir, "readdir"))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let md = fs::symlink_metadata(&path).map_err(io_err(&path, "lstat"))?;
            let bad = |e: crate::tree::TreeError| DirError::Entry { path: path.clone(), reason: e.to_string() };
            use std::os::unix::fs::FileTypeExt;
            if opts.walk.skip_devices && (md.file_type().is_char_device() || md.file_type().is_block_device()) {
                continue;
            }
            let linked = !md.is_dir() && md.nlink() > 1 && !opts.walk.break_hardlinks;
            if linked {
                if let Some(&target) = b.links.get(&(md.dev(), md.ino())) {
                    b.tree.insert_hardlink_child(id, name.as_bytes(), target).map_err(bad)?;
                    continue;
                }
            }
            let entry = b.entry_for(&path, &md)?;
            let child = b.tree.insert_child(id, name.as_bytes(), entry).map_err(bad)?;
            if md.is_dir() {
                stack.push((path, child));
            } else if linked {
                b.links.insert((md.dev(), md.ino()), child);
            }
        }
    }
    let mut tree = b.tree;
    tree.finalize().map_err(|e| DirError::Entry { path: root.to_path_buf(), reason: e.to_string() })?;
    Ok(tree)
}

struct Builder<'a> {
    opts: &'a DirOptions,
    tree: Tree,
    links: HashMap<(u64, u64), NodeId>,
}

impl Builder<'_> {
    fn entry_for(&mut self, path: &Path, md: &fs::Metadata) -> Result<Entry, DirError> {
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
                mtime: if self.opts.walk.use_epoch { 0 } else { md.mtime() },
                mtime_nsec: if self.opts.walk.use_epoch { 0 } else { md.mtime_nsec().clamp(0, 999_999_999) as u32 },
            },
            ..Entry::default()
        };
        use std::os::unix::fs::FileTypeExt;
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
            self.regular(path, md, &mut entry)?;
        } else if ftype == S_IFDIR {
            entry.inode.size = 0;
        }
        entry.xattrs = match self.opts.walk.xattrs {
            XattrSelection::All => read_xattrs(path, false)?,
            XattrSelection::User => read_xattrs(path, true)?,
            XattrSelection::None => Vec::new(),
        };
        Ok(entry)
    }

    fn regular(&mut self, path: &Path, md: &fs::Metadata, entry: &mut Entry) -> Result<(), DirError> {
        let io_err = |op: &'static str| move |e: io::Error| DirError::Io { path: path.to_path_buf(), op, source: e };
        let size = md.len();
        if size == 0 {
            return Ok(());
        }
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path)
            .map_err(io_err("open"))?;
        if size <= INLINE_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            (&f).take(size + 1).read_to_end(&mut buf).map_err(io_err("read"))?;
            if buf.len() as u64 != size {
                return Err(DirError::Entry {
                    path: path.to_path_buf(),
                    reason: "file changed size while being read".into(),
                });
            }
            entry.content = Some(buf);
            return Ok(());
        }
        let digest = match self.opts.walk.threads {
            Some(n) => crate::fsverity::digest_file_with(&f, size, n.max(1)),
            None => crate::fsverity::digest_file(&f),
        }
        .map_err(io_err("read"))?;
        let obj = object_path(&digest);
        if let Some(store) = &self.opts.digest_store {
            copy_into_store(&f, path, store, &obj, &digest)?;
        }
        entry.payload = Some(obj.into_bytes());
        entry.fsverity_digest = Some(digest);
        Ok(())
    }
}

/// Copy `src` into `store/obj` (temp file + rename) unless it is already there.
fn copy_into_store(src: &File, src_path: &Path, store: &Path, obj: &str, digest: &[u8; 32]) -> Result<(), DirError> {
    let dest = store.join(obj);
    if fs::symlink_metadata(&dest).is_ok() {
        return Ok(());
    }
    let io_err = |p: &Path, op: &'static str| {
        let p = p.to_path_buf();
        move |e: io::Error| DirError::Io { path: p, op, source: e }
    };
    let sub = store.join(&obj[..2]);
    match fs::create_dir(&sub) {
        Ok(()) => {
            let _ = fs::set_permissions(&sub, fs::Permissions::from_mode(0o755));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&sub, "mkdir")(e)),
    }
    let (mut tmp, tmp_path) = create_temp(store).map_err(io_err(store, "create temporary file"))?;
    let guard = UnlinkOnDrop(Some(tmp_path.clone()));
    let mut reader = src;
    let mut r = reader.by_ref();
    io::copy(&mut r, &mut tmp).map_err(io_err(src_path, "copy"))?;
    tmp.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp_path, "fchmod"))?;
    tmp.sync_all().map_err(io_err(&tmp_path, "fsync"))?;
    drop(tmp);
    let ro = File::open(&tmp_path).map_err(io_err(&tmp_path, "open"))?;
    let copied = crate::fsverity::digest_file(&ro).map_err(io_err(&tmp_path, "read"))?;
    if &copied != digest {
        return Err(DirError::Entry {
            path: src_path.to_path_buf(),
            reason: "file changed while being copied into the store".into(),
        });
    }
    use std::os::fd::AsFd;
    match crate::fsverity::enable(ro.as_fd()) {
        Ok(_) => {}
        Err(e) if e.is_unsupported() => {}
        Err(e) => return Err(DirError::Verity { path: tmp_path.clone(), reason: e.to_string() }),
    }
    drop(ro);
    fs::rename(&tmp_path, &dest).map_err(io_err(&dest, "rename"))?;
    std::mem::forget(guard);
    Ok(())
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
    #[error("{}: enabling fs-verity: {reason}", path.display())]
    Verity { path: PathBuf, reason: String },
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
