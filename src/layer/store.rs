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
    prefetch: Option<Prefetch>,
    /// Staged objects: digest → temporary name in the staging directory.
    staged: HashMap<[u8; 32], String>,
}

/// Threads that create the next temporary files ahead of need, each in its own subdirectory
/// of the staging directory (creating a file is the costly step on some filesystems, and a
/// directory's creations are serialized by its lock).
struct Prefetch {
    rx: std::sync::mpsc::Receiver<Result<(File, String), String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    dirs: Vec<String>,
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
        remove_stale_staging(&store);
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
            prefetch: None,
            staged: HashMap::new(),
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

    /// Create temporary files ahead of need on `threads` threads.
    pub fn start_prefetch(&mut self, threads: usize) -> Result<(), StoreError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut p = Prefetch { rx, stop: stop.clone(), threads: Vec::new(), dirs: Vec::new() };
        for t in 0..threads {
            let sub = format!("p{t}");
            rustix::fs::mkdirat(self.stage(), sub.as_str(), Mode::from_raw_mode(0o700))
                .map_err(|e| self.io(format!("mkdir {sub}"), e))?;
            p.dirs.push(sub.clone());
            let dfd = rustix::fs::openat(
                self.stage(),
                sub.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|e| self.io(format!("open {sub}"), e))?;
            let (tx, stop) = (tx.clone(), stop.clone());
            let h = std::thread::Builder::new()
                .name("cfsmount-create".into())
                .spawn(move || {
                    for n in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let name = format!("tmp-{n}");
                        let r = rustix::fs::openat(
                            &dfd,
                            name.as_str(),
                            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                            Mode::from_raw_mode(0o644),
                        );
                        let item = r
                            .map(|fd| (File::from(fd), format!("{sub}/{name}")))
                            .map_err(|e| format!("creating {sub}/{name}: {e}"));
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            let _ = rustix::fs::unlinkat(&dfd, name.as_str(), AtFlags::empty());
                            return;
                        }
                    }
                })
                .map_err(|e| self.io("starting a thread".into(), e))?;
            p.threads.push(h);
        }
        self.prefetch = Some(p);
        Ok(())
    }

    /// Stop the creating threads and remove the files they made that were not used.
    fn stop_prefetch(&mut self) {
        let Some(p) = self.prefetch.take() else { return };
        p.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let stage = self.stage.as_ref().expect("staging directory");
        while let Ok(item) = p.rx.recv() {
            if let Ok((f, name)) = item {
                drop(f);
                let _ = rustix::fs::unlinkat(stage, name.as_str(), AtFlags::empty());
            }
        }
        for h in p.threads {
            let _ = h.join();
        }
        for d in p.dirs {
            let _ = rustix::fs::unlinkat(stage, d.as_str(), AtFlags::REMOVEDIR);
        }
    }

    pub fn begin(&mut self) -> Result<ObjectWriter, StoreError> {
        if let Some(p) = &self.prefetch {
            match p.rx.recv() {
                Ok(Ok((file, tmp))) => return Ok(ObjectWriter { file, tmp, hash: Sha256::new(), size: 0 }),
                Ok(Err(e)) => return Err(self.io(e, std::io::Error::other("prefetch"))),
                Err(_) => {}
            }
        }
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
        let verity = if self.verity { Some(self.seal(self.stage(), &tmp)?) } else { None };
        self.known.insert(d, Known { size, verity, new: true });
        self.staged.insert(d, tmp);
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
            let tmp = self.staged.remove(&d).expect("staged object");
            if !made[d[0] as usize] {
                match rustix::fs::mkdirat(&self.store, &hexname[..2], Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => made[d[0] as usize] = true,
                    Err(e) => return Err(self.io(format!("mkdir {}", &hexname[..2]), e)),
                }
            }
            let name = object_name(&d);
            match rustix::fs::renameat_with(
                self.stage(),
                tmp.as_str(),
                &self.store,
                name.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => stats.added += 1,
                Err(Errno::EXIST) => {
                    self.unlink_tmp(&tmp)?;
                    stats.reused += 1;
                }
                Err(e) => return Err(self.io(format!("moving {name} into place"), e)),
            }
            if let Some(k) = self.known.get_mut(&d) {
                k.new = false;
            }
        }
        self.stop_prefetch();
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
        if self.stage.is_none() {
            return;
        }
        for tmp in std::mem::take(&mut self.staged).into_values() {
            let _ = self.unlink_tmp(&tmp);
        }
        self.stop_prefetch();
        let Some(stage) = self.stage.take() else { return };
        // Remove what this import staged (an object cut off mid-way included); nothing of it
        // was moved into the store.
        clear_dir(&stage, 1);
        drop(stage);
        let _ = rustix::fs::unlinkat(&self.store, self.stage_name.as_str(), AtFlags::REMOVEDIR);
    }
}

/// Remove the staging directories of imports whose process is gone (killed mid-way): they
/// hold no object under a final name, only temporary files.
fn remove_stale_staging(store: &OwnedFd) {
    let Ok(d) = rustix::fs::Dir::read_from(store) else { return };
    let stale: Vec<String> = d
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let pid = n.strip_prefix(".cfsmount-import-").and_then(|r| r.split('-').next());
            pid.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
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

/// Remove the files in a directory, and in its subdirectories `depth` levels down.
fn clear_dir(dir: &OwnedFd, depth: u32) {
    let names: Vec<String> = match rustix::fs::Dir::read_from(dir) {
        Ok(d) => d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    for n in names.iter().filter(|n| *n != "." && *n != "..") {
        match rustix::fs::unlinkat(dir, n.as_str(), AtFlags::empty()) {
            Err(Errno::ISDIR) if depth > 0 => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
                if let Ok(sub) = rustix::fs::openat(dir, n.as_str(), flags, Mode::empty()) {
                    clear_dir(&sub, depth - 1);
                }
                let _ = rustix::fs::unlinkat(dir, n.as_str(), AtFlags::REMOVEDIR);
            }
            _ => {}
        }
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
        s.start_prefetch(2).unwrap();
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
        s.start_prefetch(2).unwrap();
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
        // The staging directory of a killed import is removed by the next one.
        let stale = store.join(".cfsmount-import-999999999-1");
        std::fs::create_dir_all(stale.join("p0")).unwrap();
        std::fs::write(stale.join("p0/tmp-1"), b"partial").unwrap();
        drop(Staging::new(&store, false).unwrap());
        assert!(!stale.exists());
    }
}
