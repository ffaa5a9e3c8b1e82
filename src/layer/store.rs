//! The store side's object writer for a layer import: objects named by the sha256 of their
//! content (`xx/rest-of-hex`), hashed while they are written, staged in a private directory
//! inside the store and moved under their final names only when the whole import has been
//! verified ([`Staging::commit`]). A failed or interrupted import removes its staging
//! directory: no object appears, and no partial object is ever visible under a final name.
//! Objects already in the store are reused (the new copy is dropped).
//!
//! Written against the object-store contract of PLAN.md (`src/store/objects.rs`, owner: store):
//! when that module lands, [`Staging`] is the one place to port.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("object store {}: {step}: {source}", dir.display())]
    Io { dir: PathBuf, step: String, source: std::io::Error },
    #[error("object store {}: object {name} exists with {have} bytes, but its content has {want}", dir.display())]
    SizeMismatch { dir: PathBuf, name: String, have: u64, want: u64 },
}

/// What the import knows of an object it verified or found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub size: u64,
    /// fs-verity digest, when sealing was asked for.
    pub verity: Option<[u8; 32]>,
    /// Staged by this import (not yet in the store).
    pub new: bool,
}

pub struct Staging {
    dir: PathBuf,
    store: OwnedFd,
    stage_name: String,
    stage: Option<OwnedFd>,
    known: HashMap<[u8; 32], Known>,
    tmp_counter: u64,
    verity: bool,
}

/// An object being written.
pub struct ObjectWriter {
    file: File,
    tmp: String,
    hash: Sha256,
    size: u64,
}

impl ObjectWriter {
    pub fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.size += b.len() as u64;
        self.file.write_all(b)
    }
}

fn hexs(d: &[u8]) -> String {
    crate::layer::child::hex(d)
}

pub(crate) fn object_name(d: &[u8; 32]) -> String {
    let h = hexs(d);
    format!("{}/{}", &h[..2], &h[2..])
}

impl Staging {
    /// Open (creating it if needed) the store `dir` and a private staging directory inside it.
    pub fn new(dir: &Path, verity: bool) -> Result<Self, StoreError> {
        let io = |step: &str, e: Errno| StoreError::Io { dir: dir.to_path_buf(), step: step.into(), source: e.into() };
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io("mkdir", e)),
        }
        let store = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io("open", e))?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let stage_name = format!(".cfsmount-import-{}-{nanos:x}", std::process::id());
        rustix::fs::mkdirat(&store, stage_name.as_str(), Mode::from_raw_mode(0o700))
            .map_err(|e| io("mkdir staging", e))?;
        let stage = rustix::fs::openat(
            &store,
            stage_name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| io("open staging", e))?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            store,
            stage_name,
            stage: Some(stage),
            known: HashMap::new(),
            tmp_counter: 0,
            verity,
        })
    }

    fn io(&self, step: String, e: impl Into<std::io::Error>) -> StoreError {
        StoreError::Io { dir: self.dir.clone(), step, source: e.into() }
    }

    fn stage(&self) -> &OwnedFd {
        self.stage.as_ref().expect("staging directory open until commit or drop")
    }

    pub fn known(&self) -> &HashMap<[u8; 32], Known> {
        &self.known
    }

    pub fn begin(&mut self) -> Result<ObjectWriter, StoreError> {
        self.tmp_counter += 1;
        let tmp = format!("tmp-{}", self.tmp_counter);
        let fd = rustix::fs::openat(
            self.stage(),
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| self.io(format!("creating {}/{tmp}", self.stage_name), e))?;
        Ok(ObjectWriter { file: File::from(fd), tmp, hash: Sha256::new(), size: 0 })
    }

    /// Close the object: returns its sha256. A copy of an object already known is dropped.
    pub fn finish(&mut self, w: ObjectWriter) -> Result<[u8; 32], StoreError> {
        let ObjectWriter { file, tmp, hash, size } = w;
        drop(file);
        let d: [u8; 32] = hash.finalize().into();
        if self.known.contains_key(&d) {
            self.unlink_tmp(&tmp)?;
            return Ok(d);
        }
        let name = object_name(&d);
        match rustix::fs::statat(&self.store, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                self.unlink_tmp(&tmp)?;
                if st.st_size as u64 != size {
                    return Err(StoreError::SizeMismatch {
                        dir: self.dir.clone(),
                        name,
                        have: st.st_size as u64,
                        want: size,
                    });
                }
                let verity = if self.verity { Some(self.seal_existing(&name)?) } else { None };
                self.known.insert(d, Known { size, verity, new: false });
                return Ok(d);
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.io(format!("stat {name}"), e)),
        }
        let hexname = hexs(&d);
        rustix::fs::renameat(self.stage(), tmp.as_str(), self.stage(), hexname.as_str())
            .map_err(|e| self.io(format!("renaming {tmp}"), e))?;
        let verity = if self.verity { Some(self.seal(self.stage(), &hexname)?) } else { None };
        self.known.insert(d, Known { size, verity, new: true });
        Ok(d)
    }

    fn unlink_tmp(&self, tmp: &str) -> Result<(), StoreError> {
        rustix::fs::unlinkat(self.stage(), tmp, AtFlags::empty()).map_err(|e| self.io(format!("removing {tmp}"), e))
    }

    /// Enable fs-verity on a file (read-only descriptor, no writer left) and measure it.
    fn seal(&self, dir: &OwnedFd, name: &str) -> Result<[u8; 32], StoreError> {
        let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| self.io(format!("opening {name}"), e))?;
        crate::fsverity::enable(fd.as_fd())
            .map_err(|e| self.io(format!("enabling fs-verity on {name}"), std::io::Error::other(e.to_string())))?;
        crate::fsverity::measure(fd.as_fd())
            .map_err(|e| self.io(format!("measuring {name}"), std::io::Error::other(e.to_string())))
    }

    /// An object already in the store: measure it, sealing it first if it is not sealed.
    fn seal_existing(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let fd =
            rustix::fs::openat(&self.store, name, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())
                .map_err(|e| self.io(format!("opening {name}"), e))?;
        if let Ok(d) = crate::fsverity::measure(fd.as_fd()) {
            return Ok(d);
        }
        drop(fd);
        self.seal(&self.store, name)
    }

    /// Move every staged object under its final name (an object that appeared meanwhile is kept
    /// and the staged copy dropped), make it durable (one syncfs), remove the staging directory.
    pub fn commit(mut self) -> Result<CommitStats, StoreError> {
        let mut stats = CommitStats::default();
        let mut made = [false; 256];
        stats.reused = self.known.values().filter(|k| !k.new).count() as u64;
        let new: Vec<[u8; 32]> = self.known.iter().filter(|(_, k)| k.new).map(|(d, _)| *d).collect();
        for d in new {
            let hexname = hexs(&d);
            if !made[d[0] as usize] {
                match rustix::fs::mkdirat(&self.store, &hexname[..2], Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => made[d[0] as usize] = true,
                    Err(e) => return Err(self.io(format!("mkdir {}", &hexname[..2]), e)),
                }
            }
            let name = object_name(&d);
            match rustix::fs::renameat_with(
                self.stage(),
                hexname.as_str(),
                &self.store,
                name.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => stats.added += 1,
                Err(Errno::EXIST) => {
                    self.unlink_tmp(&hexname)?;
                    stats.reused += 1;
                }
                Err(e) => return Err(self.io(format!("moving {name} into place"), e)),
            }
            if let Some(k) = self.known.get_mut(&d) {
                k.new = false;
            }
        }
        rustix::fs::syncfs(&self.store).map_err(|e| self.io("syncfs".into(), e))?;
        self.stage = None;
        rustix::fs::unlinkat(&self.store, self.stage_name.as_str(), AtFlags::REMOVEDIR)
            .map_err(|e| self.io(format!("removing {}", self.stage_name), e))?;
        Ok(stats)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub added: u64,
    pub reused: u64,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let Some(stage) = self.stage.take() else { return };
        // Remove what this import staged; nothing of it was moved into the store.
        let names: Vec<String> = match rustix::fs::Dir::read_from(&stage) {
            Ok(dir) => dir.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        for n in names {
            if n != "." && n != ".." {
                let _ = rustix::fs::unlinkat(&stage, n.as_str(), AtFlags::empty());
            }
        }
        drop(stage);
        let _ = rustix::fs::unlinkat(&self.store, self.stage_name.as_str(), AtFlags::REMOVEDIR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_commits_and_dedups() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("objects");
        let mut s = Staging::new(&store, false).unwrap();
        let mut w = s.begin().unwrap();
        w.write(b"hello").unwrap();
        let h = s.finish(w).unwrap();
        let mut w = s.begin().unwrap();
        w.write(b"hello").unwrap();
        assert_eq!(s.finish(w).unwrap(), h);
        let name = object_name(&h);
        assert!(!store.join(&name).exists(), "nothing visible before the commit");
        let st = s.commit().unwrap();
        assert_eq!(st.added, 1);
        assert_eq!(std::fs::read(store.join(&name)).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 1, "staging directory removed");
        // A dropped (failed) import leaves nothing; an existing object is reused.
        let mut s = Staging::new(&store, false).unwrap();
        let mut w = s.begin().unwrap();
        w.write(b"other").unwrap();
        let o = s.finish(w).unwrap();
        let mut w = s.begin().unwrap();
        w.write(b"hello").unwrap();
        s.finish(w).unwrap();
        assert!(!s.known()[&h].new);
        drop(s);
        assert!(!store.join(object_name(&o)).exists());
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), 1);
    }
}
