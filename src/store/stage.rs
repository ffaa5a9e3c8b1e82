//! [`Stage`]: objects of one import that appear in the store together, or not at all.
//!
//! A layer import verifies the whole blob (its digest, the diff_id) only at its end; until then
//! nothing of it may be visible. New objects of a stage are written, hashed and sealed exactly as
//! direct ones, but named `HEX` in a private directory `.cfsmount-import-*` of the store (mode 0700).
//! [`Stage::commit`] renames them to `xx/rest` (never replacing: an object that appeared
//! meanwhile is kept and the staged copy dropped), makes them durable with one `syncfs` and
//! removes the directory. Dropping the stage removes what it staged. A killed import leaves its
//! `.cfsmount-import-PID-*` directory, which is no object name: the next stage in the store removes it
//! when that process is gone, and `oci` gc removes it under its lock.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use super::hash::{Digest, Hashers};
use super::objects::{object_name, Dest, ObjectStore, StoreError, Stored, Tmp};
use super::writer::ObjectWriter;

/// Name prefix of stage directories (`.cfsmount-import-PID-NANOS`); `oci` gc removes the ones
/// it finds under its exclusive lock.
pub const STAGE_PREFIX: &str = ".cfsmount-import-";

/// What [`Stage::commit`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Objects this stage added to the store.
    pub added: u64,
    /// Objects the stage found in the store (or that appeared there before the commit).
    pub reused: u64,
}

/// A set of objects committed together; see the module documentation. `Sync`: several threads
/// may write into one stage.
pub struct Stage<'s> {
    store: &'s ObjectStore,
    name: String,
    dir: Option<OwnedFd>,
    objects: Mutex<HashMap<Digest, Stored>>,
}

impl std::fmt::Debug for Stage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("store", &self.store.path()).field("name", &self.name).finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// Starts a [`Stage`] in this store.
    pub fn stage(&self) -> Result<Stage<'_>, StoreError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        remove_stale_stages(self.dir_fd());
        let name = format!("{STAGE_PREFIX}{}-{nanos:x}", std::process::id());
        rustix::fs::mkdirat(self.dir_fd(), name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| self.io_err(format!("mkdir {name}"), e))?;
        let dir = rustix::fs::openat(
            self.dir_fd(),
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io_err(format!("open {name}"), e))?;
        Ok(Stage { store: self, name, dir: Some(dir), objects: Mutex::new(HashMap::new()) })
    }
}

impl<'s> Stage<'s> {
    fn dir(&self) -> &OwnedFd {
        self.dir.as_ref().expect("stage directory open until commit or drop")
    }

    fn known(&self, d: &Digest) -> Option<Stored> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).get(d).copied()
    }

    fn remember(&self, s: Stored) -> Stored {
        *self.objects.lock().unwrap_or_else(|e| e.into_inner()).entry(s.digest).or_insert(s)
    }

    /// A streaming writer whose object joins this stage.
    pub fn writer<'a>(&'a self, expected: Option<Digest>) -> ObjectWriter<'a>
    where
        's: 'a,
    {
        ObjectWriter::new(self.store, Some(self), expected)
    }

    /// Stages `data` (nothing is written if the store or the stage has it already).
    pub fn insert_bytes(&self, data: &[u8], expected: Option<&Digest>) -> Result<Stored, StoreError> {
        let mut h = self.store.hashers();
        h.update(data);
        self.put_bytes(data, h, expected)
    }

    /// Every object this stage wrote or found so far; `new` marks the ones it will add.
    pub fn objects(&self) -> HashMap<Digest, Stored> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn put_bytes(&self, data: &[u8], h: Hashers, expected: Option<&Digest>) -> Result<Stored, StoreError> {
        let (digest, verity) = self.store.digests(h, expected)?;
        if let Some(s) = self.known(&digest) {
            return Ok(s);
        }
        let size = data.len() as u64;
        if let Some(have) = self.store.lookup(&digest)? {
            return Ok(self.remember(self.store.existing(digest, verity, have, size)?));
        }
        let mut tmp = self.store.create_tmp()?;
        std::io::Write::write_all(&mut tmp.file, data).map_err(|e| self.store.io_err("writing a new object", e))?;
        self.put_file(tmp, digest, verity, size)
    }

    pub(crate) fn put_file(
        &self,
        tmp: Tmp<'_>,
        digest: Digest,
        verity: Option<Digest>,
        size: u64,
    ) -> Result<Stored, StoreError> {
        if let Some(s) = self.known(&digest) {
            return Ok(s);
        }
        if let Some(have) = self.store.lookup(&digest)? {
            return Ok(self.remember(self.store.existing(digest, verity, have, size)?));
        }
        let (_, measured) = self.store.place(tmp, Dest::Stage(self.dir().as_fd()), &digest, size, verity)?;
        // A copy another thread staged first (EEXIST in the stage) is the same object.
        Ok(self.remember(Stored { digest, verity: verity.or(measured), size, new: true }))
    }

    /// Moves every staged object under its name in the store, `syncfs`, removes the stage.
    pub fn commit(mut self) -> Result<StageStats, StoreError> {
        let mut stats = StageStats::default();
        let objects = std::mem::take(&mut *self.objects.lock().unwrap_or_else(|e| e.into_inner()));
        for s in objects.values() {
            if !s.new {
                stats.reused += 1;
                continue;
            }
            let hex = crate::fsverity::to_hex(&s.digest);
            let name = object_name(&s.digest);
            self.store.ensure_fanout(&s.digest)?;
            match rustix::fs::renameat_with(
                self.dir(),
                hex.as_str(),
                self.store.dir_fd(),
                name.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => stats.added += 1,
                Err(Errno::EXIST) => {
                    let have = self.store.lookup(&s.digest)?.unwrap_or(s.size);
                    self.store.check_size(&s.digest, have, s.size)?;
                    let _ = rustix::fs::unlinkat(self.dir(), hex.as_str(), AtFlags::empty());
                    stats.reused += 1;
                }
                Err(e) => return Err(self.store.io_err(format!("moving {name} into place"), e)),
            }
        }
        self.store.sync()?;
        self.dir = None;
        rustix::fs::unlinkat(self.store.dir_fd(), self.name.as_str(), AtFlags::REMOVEDIR)
            .map_err(|e| self.store.io_err(format!("removing {}", self.name), e))?;
        Ok(stats)
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        // Remove what this stage holds; nothing of it was moved into the store.
        clear_dir(&dir, 0);
        drop(dir);
        let _ = rustix::fs::unlinkat(self.store.dir_fd(), self.name.as_str(), AtFlags::REMOVEDIR);
    }
}

/// Removes the stage directories of imports whose process is gone (killed mid-way): they hold
/// no object under a final name, only staged copies. A process that is alive in another PID
/// namespace cannot be told from a dead one: if its stage is removed, its commit fails (the
/// rename finds nothing) and it stores nothing; no object is ever lost or half-visible.
fn remove_stale_stages(store: BorrowedFd<'_>) {
    let Ok(d) = rustix::fs::Dir::read_from(store) else { return };
    let stale: Vec<String> = d
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| {
            let pid = n.strip_prefix(STAGE_PREFIX).and_then(|r| r.split('-').next());
            pid.and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists())
        })
        .collect();
    for n in stale {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if let Ok(sub) = rustix::fs::openat(store, n.as_str(), flags, Mode::empty()) {
            clear_dir(&sub, 1);
        }
        let _ = rustix::fs::unlinkat(store, n.as_str(), AtFlags::REMOVEDIR);
    }
}

/// Removes the entries of a directory, and of its subdirectories `depth` levels down (the
/// stages of earlier versions held one level of subdirectories).
fn clear_dir(dir: &OwnedFd, depth: u32) {
    let names: Vec<Vec<u8>> = match rustix::fs::Dir::read_from(dir) {
        Ok(d) => d.filter_map(Result::ok).map(|e| e.file_name().to_bytes().to_vec()).collect(),
        Err(_) => Vec::new(),
    };
    for n in names.iter().filter(|n| n.as_slice() != b"." && n.as_slice() != b"..") {
        match rustix::fs::unlinkat(dir, n.as_slice(), AtFlags::empty()) {
            Err(Errno::ISDIR) if depth > 0 => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
                if let Ok(sub) = rustix::fs::openat(dir, n.as_slice(), flags, Mode::empty()) {
                    clear_dir(&sub, depth - 1);
                }
                let _ = rustix::fs::unlinkat(dir, n.as_slice(), AtFlags::REMOVEDIR);
            }
            _ => {}
        }
    }
}
