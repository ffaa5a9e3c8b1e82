//! The object store: file contents as files `xx/rest-of-hex` under one directory, named by the
//! SHA-256 of the content (containers/storage, `--objects`) or by its fs-verity digest
//! (`mkcomposefs --digest-store`, composefs-rs repositories); the naming is a [`Naming`].
//!
//! Guarantees (docs/store.md):
//! - **Names match contents.** An object is hashed while it is written (the bytes hashed are the
//!   bytes written, never re-read from a source that could change), and appears under its
//!   final name only after its digest is known and, if the caller gave one, equal to the
//!   expected digest. A mismatch stores nothing.
//! - **Atomic.** Objects are written into an unnamed `O_TMPFILE` (or, where the filesystem has
//!   none, a private `.tmp-*` name) and linked in under the final name in one step
//!   (`linkat`/`renameat` that never replace). Readers never see a partial object.
//! - **Deduplicated.** An object already present (same name, regular file, same size) is
//!   reused; small contents are hashed in memory first, so an existing object costs no write.
//!   Two writers racing on one object both succeed and one copy remains.
//! - **Sealed where possible.** fs-verity is enabled on each new object before it gets its
//!   name (what the reference's `--digest-store` does), when the filesystem offers it
//!   ([`VerityMode`]); the kernel's digest is compared with the one computed while writing.
//! - **Batched durability.** No fsync per object: [`ObjectStore::sync`] issues one `syncfs`.
//!   Callers write what names the objects (an image) only after that.
//! - **Cheap.** The 256 fan-out directories are created on first use, once per store handle;
//!   `FICLONE` shares the extents of a source on the same filesystem (btrfs, XFS) instead of
//!   copying; every method takes `&self`, so one handle serves many threads.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;
use thiserror::Error;

use super::hash::{Digest, Hashers};
use super::writer::ObjectWriter;
use crate::fsverity::VerityError;

/// Contents up to this size are hashed in memory before anything is written (and never
/// written when the object exists); larger ones stream through buffers of this size.
pub(crate) const CHUNK: usize = 1 << 20;

/// Which digest names an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// SHA-256 of the content (containers/storage, TOC `digest`, `--objects`).
    Sha256,
    /// fs-verity digest, SHA-256 with 4 KiB blocks (`mkcomposefs --digest-store`).
    FsVerity,
}

/// Whether new objects get fs-verity enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerityMode {
    /// Never.
    Off,
    /// Where the filesystem offers it (the reference's behaviour); after the first
    /// "unsupported" answer the store stops asking.
    #[default]
    Try,
    /// Always; a filesystem without fs-verity is an error.
    Require,
}

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub naming: Naming,
    pub verity: VerityMode,
    /// Also compute the fs-verity digest of every object written (always done for
    /// [`Naming::FsVerity`]); see [`Stored::verity`].
    pub verity_digests: bool,
}

impl StoreOptions {
    pub fn new(naming: Naming) -> Self {
        StoreOptions { naming, verity: VerityMode::Try, verity_digests: false }
    }
}

/// An object in the store, as a write or lookup left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The digest that names it ([`Naming`]).
    pub digest: Digest,
    /// Its fs-verity digest when known: computed while writing ([`Naming::FsVerity`] or
    /// [`StoreOptions::verity_digests`]) or measured by the kernel after sealing it.
    pub verity: Option<Digest>,
    pub size: u64,
    /// False when the object was already there (or appeared meanwhile) and this copy was dropped.
    pub new: bool,
}

/// `xx/rest-of-hex` (lower-case) for a digest.
pub fn object_name(d: &Digest) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = Vec::with_capacity(65);
    for (i, b) in d.iter().enumerate() {
        s.push(HEX[usize::from(b >> 4)]);
        s.push(HEX[usize::from(b & 15)]);
        if i == 0 {
            s.push(b'/');
        }
    }
    String::from_utf8(s).expect("hex is ASCII")
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("object store {}: {step}: {source}", store.display())]
    Io { store: PathBuf, step: String, source: io::Error },
    #[error("object store {}: {name}: {reason}", store.display())]
    Corrupt { store: PathBuf, name: String, reason: String },
    #[error("object store {}: content has digest {actual}, expected {expected}; nothing stored", store.display())]
    Mismatch { store: PathBuf, expected: String, actual: String },
    #[error("object store {}: fs-verity on new object {name}: {source}", store.display())]
    Verity { store: PathBuf, name: String, source: VerityError },
    #[error("the source changed while being stored: {0}")]
    SourceChanged(String),
    #[error("reading the source: {0}")]
    Read(#[source] io::Error),
}

/// A file being filled before it gets its name: unnamed (`O_TMPFILE`) or named `.tmp-*` in the
/// store directory (removed on drop unless placed).
pub(crate) struct Tmp<'a> {
    pub file: File,
    name: Option<String>,
    dir: BorrowedFd<'a>,
}

impl Drop for Tmp<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            let _ = rustix::fs::unlinkat(self.dir, n.as_str(), AtFlags::empty());
        }
    }
}

/// Where a finished object goes: the store (`xx/rest`) or a staging directory (`hex`).
#[derive(Clone, Copy)]
pub(crate) enum Dest<'a> {
    Store,
    Stage(BorrowedFd<'a>),
}

/// A handle on one object directory; `Sync`, shared by reference between threads.
pub struct ObjectStore {
    path: PathBuf,
    dir: OwnedFd,
    dev: u64,
    opts: StoreOptions,
    fanout: [AtomicBool; 256],
    /// Fan-out directories this handle created: nothing was in them before this handle, so a
    /// new object there skips the lookup (a duplicate is caught by the link's EEXIST).
    fresh: [AtomicBool; 256],
    /// `O_TMPFILE` refused here once: use named temporary files.
    no_tmpfile: AtomicBool,
    /// `/proc/self/fd` is there (reopening an unnamed file read-only to seal it needs it).
    procfs: bool,
    /// [`VerityMode::Try`] and the filesystem said no.
    verity_off: AtomicBool,
    /// `FICLONE` failed once between this store and a source on its filesystem.
    reflink_off: AtomicBool,
    /// The umask leaves 0644 alone: new files need no `fchmod`.
    mode_exact: bool,
    tmp_counter: AtomicU64,
    /// Unnamed temporary files created ahead of need ([`ObjectStore::create_ahead`]).
    ahead: std::sync::OnceLock<Ahead>,
}

/// Threads that create unnamed temporary files (`O_TMPFILE`) ahead of need. Allocating an inode
/// is the costly step of a new object on some filesystems (ext4 without a journal skips every
/// recently freed inode one by one), and a single writer (a layer import's store side) would
/// otherwise wait for each in turn. An unused file vanishes when it is closed: stopping leaves
/// nothing behind.
struct Ahead {
    rx: std::sync::Mutex<std::sync::mpsc::Receiver<File>>,
    stop: std::sync::Arc<AtomicBool>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore").field("path", &self.path).field("opts", &self.opts).finish_non_exhaustive()
    }
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl ObjectStore {
    /// Opens the object directory `path`, creating it (and its parents, mode 0755) if missing.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let io = |step: &str, e: io::Error| StoreError::Io { store: path.to_path_buf(), step: step.into(), source: e };
        std::fs::DirBuilder::new().recursive(true).create(path).map_err(|e| io("mkdir", e))?;
        let dir = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io("open", e.into()))?;
        let st = rustix::fs::fstat(&dir).map_err(|e| io("fstat", e.into()))?;
        let procfs = rustix::fs::statat(CWD, "/proc/self/fd", AtFlags::empty()).is_ok();
        Ok(ObjectStore {
            path: path.to_path_buf(),
            dir,
            dev: st.st_dev,
            opts,
            fanout: std::array::from_fn(|_| AtomicBool::new(false)),
            fresh: std::array::from_fn(|_| AtomicBool::new(false)),
            no_tmpfile: AtomicBool::new(false),
            procfs,
            verity_off: AtomicBool::new(opts.verity == VerityMode::Off),
            reflink_off: AtomicBool::new(false),
            mode_exact: umask().is_some_and(|m| m & 0o644 == 0),
            tmp_counter: AtomicU64::new(0),
            ahead: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tests: behave as on a filesystem without `O_TMPFILE`.
    #[cfg(test)]
    pub(crate) fn force_named_tmp(&self) {
        self.no_tmpfile.store(true, Ordering::Relaxed);
    }

    pub fn options(&self) -> StoreOptions {
        self.opts
    }

    /// The open object directory (for `openat`-style readers).
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    pub(crate) fn io_err(&self, step: impl Into<String>, e: impl Into<io::Error>) -> StoreError {
        StoreError::Io { store: self.path.clone(), step: step.into(), source: e.into() }
    }

    /// The object `d` if present: `Some(size)`. Anything but a regular file there is an error.
    pub fn lookup(&self, d: &Digest) -> Result<Option<u64>, StoreError> {
        let name = object_name(d);
        match rustix::fs::statat(&self.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile => {
                Ok(Some(st.st_size as u64))
            }
            Ok(_) => Err(StoreError::Corrupt { store: self.path.clone(), name, reason: "not a regular file".into() }),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io_err(format!("stat {name}"), e)),
        }
    }

    /// Opens the object `d` read-only (never following a symlink; refusing anything but a
    /// regular file).
    pub fn open_object(&self, d: &Digest) -> Result<File, StoreError> {
        let name = object_name(d);
        let fd = rustix::fs::openat(
            &self.dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err(format!("open {name}"), e))?;
        let f = File::from(fd);
        let md = f.metadata().map_err(|e| self.io_err(format!("fstat {name}"), e))?;
        if !md.is_file() {
            return Err(StoreError::Corrupt { store: self.path.clone(), name, reason: "not a regular file".into() });
        }
        Ok(f)
    }

    /// Makes everything written so far durable: one `syncfs` of the store's filesystem.
    pub fn sync(&self) -> Result<(), StoreError> {
        rustix::fs::syncfs(&self.dir).map_err(|e| self.io_err("syncfs", e))
    }

    /// A streaming writer for one object; see [`ObjectWriter`].
    pub fn writer(&self, expected: Option<Digest>) -> ObjectWriter<'_> {
        ObjectWriter::new(self, None, expected)
    }

    /// Stores `data` (hashed first: nothing is written if the object exists).
    pub fn insert_bytes(&self, data: &[u8], expected: Option<&Digest>) -> Result<Stored, StoreError> {
        let mut h = self.hashers();
        h.update(data);
        self.put_bytes(data, h, expected, Dest::Store)
    }

    /// Stores the `size` bytes of the regular file `src` (read from offset 0; a file that is
    /// shorter or longer than `size` is an error). On the store's own filesystem the extents are
    /// shared (`FICLONE`) where it can; otherwise the bytes are read once, hashed and written.
    pub fn import_file(&self, src: &File, size: u64, expected: Option<&Digest>) -> Result<Stored, StoreError> {
        if !self.reflink_off.load(Ordering::Relaxed) {
            let st = rustix::fs::fstat(src).map_err(|e| StoreError::Read(e.into()))?;
            if st.st_dev == self.dev {
                let tmp = self.create_tmp()?;
                match rustix::fs::ioctl_ficlone(&tmp.file, src) {
                    Ok(()) => return self.finish_clone(tmp, size, expected),
                    Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {
                        self.reflink_off.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(self.io_err("FICLONE", e)),
                }
            }
        }
        if size <= CHUNK as u64 {
            BUF.with_borrow_mut(|buf| {
                buf.resize(size as usize + 1, 0);
                let n = read_full(src, buf, 0)?;
                if n as u64 != size {
                    return Err(changed(size, n as u64));
                }
                let data = &buf[..n];
                let mut h = self.hashers();
                h.update(data);
                self.put_bytes(data, h, expected, Dest::Store)
            })
        } else {
            let mut w = self.writer(expected.copied());
            BUF.with_borrow_mut(|buf| -> Result<(), StoreError> {
                buf.resize(CHUNK, 0);
                let mut off = 0u64;
                loop {
                    let n = read_full(src, buf, off)?;
                    if n == 0 {
                        break;
                    }
                    w.write_chunk(&buf[..n])?;
                    off += n as u64;
                    if off > size {
                        return Err(changed(size, off));
                    }
                }
                if off != size {
                    return Err(changed(size, off));
                }
                Ok(())
            })?;
            w.commit()
        }
    }

    /// A clone (shared extents) of the source: hash what the clone holds, then place it.
    fn finish_clone(&self, tmp: Tmp<'_>, size: u64, expected: Option<&Digest>) -> Result<Stored, StoreError> {
        let mut h = self.hashers();
        let got = BUF.with_borrow_mut(|buf| -> Result<u64, StoreError> {
            buf.resize(CHUNK, 0);
            let mut off = 0u64;
            loop {
                let n = read_full(&tmp.file, buf, off).map_err(|e| match e {
                    StoreError::Read(e) => self.io_err("reading the clone", e),
                    e => e,
                })?;
                if n == 0 {
                    return Ok(off);
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
        })?;
        if got != size {
            return Err(changed(size, got));
        }
        let (digest, verity) = self.digests(h, expected)?;
        let new = self.place(tmp, Dest::Store, &digest, size, verity)?;
        Ok(Stored { digest, verity: new.1.or(verity), size, new: new.0 })
    }

    pub(crate) fn hashers(&self) -> Hashers {
        Hashers::new(
            self.opts.naming == Naming::Sha256,
            self.opts.naming == Naming::FsVerity || self.opts.verity_digests,
        )
    }

    /// The naming digest (checked against `expected`) and the fs-verity digest if computed.
    pub(crate) fn digests(
        &self,
        h: Hashers,
        expected: Option<&Digest>,
    ) -> Result<(Digest, Option<Digest>), StoreError> {
        let (sha, verity) = h.finish();
        let digest = match self.opts.naming {
            Naming::Sha256 => sha.expect("sha256 hasher"),
            Naming::FsVerity => verity.expect("fs-verity hasher"),
        };
        if let Some(e) = expected {
            if e != &digest {
                return Err(StoreError::Mismatch {
                    store: self.path.clone(),
                    expected: crate::fsverity::to_hex(e),
                    actual: crate::fsverity::to_hex(&digest),
                });
            }
        }
        Ok((digest, verity))
    }

    /// In-memory content with its hashes: reuse an existing object, else write and place it.
    pub(crate) fn put_bytes(
        &self,
        data: &[u8],
        h: Hashers,
        expected: Option<&Digest>,
        dest: Dest<'_>,
    ) -> Result<Stored, StoreError> {
        let (digest, verity) = self.digests(h, expected)?;
        let size = data.len() as u64;
        let fresh = matches!(dest, Dest::Store) && self.fresh[digest[0] as usize].load(Ordering::Relaxed);
        if !fresh {
            if let Some(have) = self.lookup(&digest)? {
                return self.existing(digest, verity, have, size);
            }
        }
        let mut tmp = self.create_tmp()?;
        tmp.file.write_all(data).map_err(|e| self.io_err("writing a new object", e))?;
        let (new, measured) = self.place(tmp, dest, &digest, size, verity)?;
        Ok(Stored { digest, verity: verity.or(measured), size, new })
    }

    /// An object found in the store (`have` bytes) for content of `size` bytes: the sizes must
    /// agree. With [`VerityMode::Require`] the object must also carry fs-verity: it is measured,
    /// and sealed first if it is not (an object written by a tool or a run that did not seal it);
    /// the measured digest must equal `verity` when that was computed.
    pub(crate) fn existing(
        &self,
        digest: Digest,
        verity: Option<Digest>,
        have: u64,
        size: u64,
    ) -> Result<Stored, StoreError> {
        self.check_size(&digest, have, size)?;
        if self.opts.verity != VerityMode::Require {
            return Ok(Stored { digest, verity, size, new: false });
        }
        let name = object_name(&digest);
        let f = self.open_object(&digest)?;
        let m = match crate::fsverity::measure(f.as_fd()) {
            Ok(m) => m,
            // Not sealed yet (ENODATA), or no fs-verity here: enabling tells which.
            Err(_) => self
                .enable_verity(&f, &name, None)?
                .ok_or_else(|| self.io_err(format!("sealing {name}"), io::Error::other("fs-verity not available")))?,
        };
        if let Some(v) = verity {
            if v != m {
                return Err(StoreError::Verity {
                    store: self.path.clone(),
                    name,
                    source: VerityError::Mismatch {
                        expected: crate::fsverity::to_hex(&v),
                        actual: crate::fsverity::to_hex(&m),
                    },
                });
            }
        }
        Ok(Stored { digest, verity: Some(m), size, new: false })
    }

    pub(crate) fn check_size(&self, d: &Digest, have: u64, want: u64) -> Result<(), StoreError> {
        if have == want {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            store: self.path.clone(),
            name: object_name(d),
            reason: format!("exists with {have} bytes, but the content has {want}"),
        })
    }

    /// Starts `threads` threads that create the next unnamed temporary files ahead of need
    /// (for a single writer such as a layer import's store side; a directory import has its own
    /// workers). Only where unnamed files are used (`O_TMPFILE`); once per store handle.
    pub fn create_ahead(&self, threads: usize) -> Result<(), StoreError> {
        let unnamed_ok =
            !self.no_tmpfile.load(Ordering::Relaxed) && (self.procfs || self.verity_off.load(Ordering::Relaxed));
        if !unnamed_ok || threads == 0 || self.ahead.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<File>(16);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let dir = self.dir.try_clone().map_err(|e| self.io_err("dup of the store directory", e))?;
            let (tx, stop) = (tx.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name("cfsmount-create".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
                        let Ok(fd) = rustix::fs::openat(&dir, ".", flags, Mode::from_raw_mode(0o644)) else {
                            return; // the writer creates its own and reports the error
                        };
                        if tx.send(File::from(fd)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| self.io_err("starting a thread", e))?;
            handles.push(h);
        }
        let _ = self.ahead.set(Ahead { rx: std::sync::Mutex::new(rx), stop, threads: std::sync::Mutex::new(handles) });
        Ok(())
    }

    /// An empty file to fill, not visible under any object name.
    pub(crate) fn create_tmp(&self) -> Result<Tmp<'_>, StoreError> {
        let unnamed_ok =
            !self.no_tmpfile.load(Ordering::Relaxed) && (self.procfs || self.verity_off.load(Ordering::Relaxed));
        if let (true, Some(a)) = (unnamed_ok, self.ahead.get()) {
            // None once the threads stopped (a creation failed): then create one here, which
            // reports the error.
            if let Ok(file) = a.rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                return Ok(Tmp { file, name: None, dir: self.dir.as_fd() });
            }
        }
        if unnamed_ok {
            match rustix::fs::openat(
                &self.dir,
                ".",
                OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => return Ok(Tmp { file: File::from(fd), name: None, dir: self.dir.as_fd() }),
                // No O_TMPFILE here (EOPNOTSUPP; EISDIR/EINVAL from kernels or filesystems
                // that do not know the flag).
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => self.no_tmpfile.store(true, Ordering::Relaxed),
                Err(e) => return Err(self.io_err("creating a temporary file (O_TMPFILE)", e)),
            }
        }
        for _ in 0..100 {
            let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
            let name = format!(".tmp-{:x}-{n:x}", std::process::id());
            match rustix::fs::openat(
                &self.dir,
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => return Ok(Tmp { file: File::from(fd), name: Some(name), dir: self.dir.as_fd() }),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.io_err(format!("creating {name}"), e)),
            }
        }
        Err(self.io_err("creating a temporary file", io::Error::from(io::ErrorKind::AlreadyExists)))
    }

    /// The fan-out directory of `d` exists (created on first use, checked to be a directory).
    pub(crate) fn ensure_fanout(&self, d: &Digest) -> Result<(), StoreError> {
        let i = d[0] as usize;
        if self.fanout[i].load(Ordering::Relaxed) {
            return Ok(());
        }
        let name = format!("{:02x}", d[0]);
        match rustix::fs::mkdirat(&self.dir, name.as_str(), Mode::from_raw_mode(0o755)) {
            Ok(()) => self.fresh[i].store(true, Ordering::Relaxed),
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&self.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io_err(format!("stat {name}"), e))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
                    return Err(StoreError::Corrupt {
                        store: self.path.clone(),
                        name,
                        reason: "fan-out entry is not a directory".into(),
                    });
                }
            }
            Err(e) => return Err(self.io_err(format!("mkdir {name}"), e)),
        }
        self.fanout[i].store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Gives a filled temporary file its name at `dest`: mode 0644, fs-verity where asked for
    /// and offered (compared with `verity` when computed), then one link or rename that never
    /// replaces. Returns (new, kernel-measured fs-verity digest).
    pub(crate) fn place(
        &self,
        mut tmp: Tmp<'_>,
        dest: Dest<'_>,
        digest: &Digest,
        size: u64,
        verity: Option<Digest>,
    ) -> Result<(bool, Option<Digest>), StoreError> {
        let name = object_name(digest);
        if !self.mode_exact {
            rustix::fs::fchmod(&tmp.file, Mode::from_raw_mode(0o644)).map_err(|e| self.io_err("fchmod", e))?;
        }
        let mut measured = None;
        if !self.verity_off.load(Ordering::Relaxed) {
            tmp.file = self.reopen_ro(&tmp)?; // closes the writable descriptor
            measured = self.enable_verity(&tmp.file, &name, verity)?;
        }
        let (dir, target) = match dest {
            Dest::Store => {
                self.ensure_fanout(digest)?;
                (self.dir.as_fd(), name.clone())
            }
            Dest::Stage(fd) => (fd, crate::fsverity::to_hex(digest)),
        };
        let r = match tmp.name.take() {
            None => self.link_unnamed(&tmp.file, dir, &target),
            Some(tn) => {
                let r = rustix::fs::renameat_with(&self.dir, tn.as_str(), dir, target.as_str(), RenameFlags::NOREPLACE);
                if r.is_err() {
                    tmp.name = Some(tn); // removed on drop
                }
                r
            }
        };
        match r {
            Ok(()) => Ok((true, measured)),
            Err(Errno::EXIST) => {
                // Appeared meanwhile (another writer): keep it, drop ours.
                if let Dest::Store = dest {
                    let have = self.lookup(digest)?.unwrap_or(size);
                    self.check_size(digest, have, size)?;
                }
                Ok((false, measured))
            }
            Err(e) => Err(self.io_err(format!("linking {name} into place"), e)),
        }
    }

    fn link_unnamed(&self, f: &File, dir: BorrowedFd<'_>, target: &str) -> Result<(), Errno> {
        match rustix::fs::linkat(f, "", dir, target, AtFlags::EMPTY_PATH) {
            // Kernels before 6.10 allow AT_EMPTY_PATH only with CAP_DAC_READ_SEARCH (ENOENT).
            Err(Errno::NOENT) if self.procfs => {
                let p = format!("/proc/self/fd/{}", f.as_raw_fd());
                rustix::fs::linkat(CWD, p.as_str(), dir, target, AtFlags::SYMLINK_FOLLOW)
            }
            r => r,
        }
    }

    /// A read-only descriptor of the temporary file (fs-verity refuses while a writable one is
    /// open: the caller drops the writable one).
    fn reopen_ro(&self, tmp: &Tmp<'_>) -> Result<File, StoreError> {
        let fd = match &tmp.name {
            None => {
                let p = format!("/proc/self/fd/{}", tmp.file.as_raw_fd());
                rustix::fs::openat(CWD, p.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            }
            Some(n) => rustix::fs::openat(
                &self.dir,
                n.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ),
        }
        .map_err(|e| self.io_err("reopening a new object read-only", e))?;
        Ok(File::from(fd))
    }

    /// Enables fs-verity on `f` (read-only, no writer left) and measures it; the measured digest
    /// must equal `verity` when that was computed. `None` when the filesystem does not offer
    /// fs-verity and the mode is [`VerityMode::Try`] (the store then stops asking).
    fn enable_verity(&self, f: &File, name: &str, verity: Option<Digest>) -> Result<Option<Digest>, StoreError> {
        let verr = |source| StoreError::Verity { store: self.path.clone(), name: name.to_string(), source };
        match crate::fsverity::enable(f.as_fd()) {
            Ok(_) => {}
            Err(e)
                if self.opts.verity == VerityMode::Try
                    && (e.is_unsupported() || matches!(e.kind(), VerityError::BlockSize)) =>
            {
                self.verity_off.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(verr(e)),
        }
        let m = crate::fsverity::measure(f.as_fd()).map_err(verr)?;
        if let Some(v) = verity {
            if v != m {
                return Err(verr(VerityError::Mismatch {
                    expected: crate::fsverity::to_hex(&v),
                    actual: crate::fsverity::to_hex(&m),
                }));
            }
        }
        Ok(Some(m))
    }
}

/// The process umask, read without changing it (`Umask:` of /proc/self/status, Linux 4.7+).
fn umask() -> Option<u32> {
    let st = std::fs::read_to_string("/proc/self/status").ok()?;
    let v = st.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(v.trim(), 8).ok()
}

/// Reads from `f` at `off` until `buf` is full or end of file; returns the bytes read.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> Result<usize, StoreError> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::Read(e)),
        }
    }
    Ok(n)
}

fn changed(want: u64, got: u64) -> StoreError {
    StoreError::SourceChanged(format!("expected {want} bytes, read {got}"))
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let Some(a) = self.ahead.take() else { return };
        a.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver closes the unused files (they vanish) and makes a creator
        // blocked in `send` return; then wait for them.
        drop(a.rx);
        for h in a.threads.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let _ = h.join();
        }
    }
}
