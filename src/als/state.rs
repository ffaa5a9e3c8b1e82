//! What the Additional Layer Store keeps in the store, `STORE/als-records/` (durable; the ALS roots
//! themselves are rebuilt from it, see [`super::root`]):
//!
//! ```text
//! STORE/als-records/
//!   lock                  flock: exclusive while anything here or in an ALS root changes
//!   layers/<blob hex>/    per layer blob served: `blob` (the compressed blob, digest checked
//!                         while copying) and `info` (the containers/storage Layer JSON)
//!   images/<hex>.cfs      the layers' trees in overlay form (composefs images), named by
//!                         their fs-verity digest; the same tree is the same file
//!   refs/<id>.json        one per (ALS root, image reference): which layers, keys, images
//!   views/<id>.json       one per rootless view of an ALS root (see super::view)
//!   tmp/                  staging; anything here is debris of a killed command
//! ```
//!
//! The objects the images name are the store's (`STORE/objects`), kept by `store gc` through
//! the store's own layer directories, which stay as long as a ref names their blob digest
//! ([`layers_in_use`] is gc's hook).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AlsError;
use crate::oci::Sha256;
use crate::store::repo::{dirs_and_lock, Repo, RepoError};
use crate::tree::Tree;

/// The directory in the store (not `als`: the natural place for an ALS root is
/// `/var/lib/cfsmount/als`, in the default store, and a root's tmpfs must never hide this).
pub const STATE_DIR: &str = "als-records";

/// Largest record read back.
const MAX_RECORD: u64 = 16 << 20;

/// One image reference served in one ALS root (`refs/<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefRecord {
    /// The ALS root (absolute, symlinks resolved), as storage.conf names it.
    pub root: PathBuf,
    /// The reference as containers/image passes it (normalized).
    pub reference: String,
    /// Where it was added from (`oci:DIR:TAG`).
    pub source: String,
    /// Manifest digest.
    pub manifest: String,
    /// Layers, lowest first.
    pub layers: Vec<LayerRef>,
    /// Seconds since the epoch.
    pub added: u64,
}

/// One layer of a [`RefRecord`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    /// Blob digest (`sha256:...`): the key for containers/storage ≤ 1.53, and `layers/<hex>`.
    pub blob: String,
    /// The checked TOC digest, when the layer has one: the key for containers/storage ≥ 1.54.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toc: Option<String>,
    /// fs-verity digest (hex) of its overlay-form image, `images/<hex>.cfs`.
    pub image: String,
    /// Whether that image has fs-verity enabled (then it is mounted with `verity=require` and
    /// the digest checked).
    #[serde(default)]
    pub image_verity: bool,
}

impl RefRecord {
    /// The record's file name: sha256 of root and reference.
    pub fn id(root: &Path, reference: &str) -> String {
        let mut b = root.as_os_str().as_encoded_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(reference.as_bytes());
        Sha256::of(&b).hex()
    }
}

/// The `STORE/als-records` directory, locked.
#[derive(Debug)]
pub struct AlsState {
    dir: PathBuf,
    _lock: File,
}

fn io_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> AlsError + 'a {
    move |source| AlsError::Io { path: path.to_path_buf(), step, source }
}

impl AlsState {
    /// Open (creating) `STORE/als-records` of `repo` and take its lock: exclusive to change anything
    /// (debris in tmp/ is removed then), shared to read.
    pub fn open(repo: &Repo, exclusive: bool) -> Result<AlsState, AlsError> {
        let dir = repo.root().join(STATE_DIR);
        let dirs = ["", "layers", "images", "refs", "views", "tmp"].map(|d| (d, 0o700));
        let (f, lp) = dirs_and_lock(&dir, &dirs).map_err(|(path, step, source)| AlsError::Io { path, step, source })?;
        use rustix::fs::{flock, FlockOperation as Op};
        let op = if exclusive { Op::LockExclusive } else { Op::LockShared };
        flock(&f, op).map_err(|e| io_err(&lp, "flock")(e.into()))?;
        let st = AlsState { dir, _lock: f };
        if exclusive {
            st.clean_tmp()?;
        }
        Ok(st)
    }

    fn clean_tmp(&self) -> Result<(), AlsError> {
        let t = self.dir.join("tmp");
        for e in fs::read_dir(&t).map_err(io_err(&t, "listing"))? {
            let p = e.map_err(io_err(&t, "listing"))?.path();
            remove_any(&p)?;
        }
        Ok(())
    }

    /// A fresh path in tmp/ (nothing created there yet).
    fn tmp_path(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.dir.join("tmp").join(format!("{what}-{}-{n}", std::process::id()))
    }

    pub fn layer_dir(&self, blob: &Sha256) -> PathBuf {
        self.dir.join("layers").join(blob.hex())
    }

    pub fn image_path(&self, hex: &str) -> PathBuf {
        self.dir.join("images").join(format!("{hex}.cfs"))
    }

    /// Whether `layers/<hex>/` is complete.
    pub fn has_layer(&self, blob: &Sha256) -> bool {
        let d = self.layer_dir(blob);
        d.join("blob").is_file() && d.join("info").is_file()
    }

    /// Store a layer's blob (copied from `src`, its sha256 and size checked while copying:
    /// the layout is not ours and may change under us) and its `info` bytes.
    pub fn add_layer(&self, blob: &Sha256, mut src: File, size: u64, info: &[u8]) -> Result<(), AlsError> {
        let st = self.tmp_path("layer");
        fs::DirBuilder::new().mode(0o755).create(&st).map_err(io_err(&st, "creating"))?;
        let r = (|| {
            let bp = st.join("blob");
            let mut out = create_file(&bp, 0o644)?;
            let mut h = HashingWriter { inner: &mut out, hasher: <sha2::Sha256 as sha2::Digest>::new(), n: 0 };
            io::copy(&mut (&mut src).take(size.saturating_add(1)), &mut h).map_err(io_err(&bp, "copying the blob"))?;
            let (n, digest) = (h.n, Sha256(sha2::Digest::finalize(h.hasher).into()));
            if n != size || digest != *blob {
                return Err(AlsError::Other(format!(
                    "layer blob {blob} changed while it was copied ({n} bytes, {digest}): refusing it"
                )));
            }
            out.sync_all().map_err(io_err(&bp, "fsync"))?;
            write_new(&st.join("info"), info)?;
            publish_dir(&st, &self.layer_dir(blob))
        })();
        if r.is_err() {
            let _ = fs::remove_dir_all(&st);
        }
        r
    }

    /// Write `tree` as an overlay-form image (sandboxed writer), named by its fs-verity digest;
    /// with `seal`, the objects and the image get fs-verity (see `Repo::seal_objects`).
    /// Returns (digest hex, sealed).
    pub fn add_image(&self, repo: &Repo, mut tree: Tree, seal: bool) -> Result<(String, bool), AlsError> {
        if seal {
            repo.seal_objects(&mut tree)?;
        }
        let tmp = self.tmp_path("image");
        let r = (|| {
            let f = crate::store::repo::write_image(&tree, &tmp)?;
            let d =
                crate::fsverity::to_hex(&crate::fsverity::digest_file(&f).map_err(io_err(&tmp, "fs-verity digest"))?);
            if seal {
                crate::fsverity::enable(f.as_fd())
                    .map_err(|e| AlsError::Other(format!("{}: enabling fs-verity: {e}", tmp.display())))?;
            }
            drop(f);
            let dest = self.image_path(&d);
            match rename_noreplace(&tmp, &dest) {
                Ok(()) => fsync_dir(dest.parent().expect("parent"))?,
                // The same tree was written before: same bytes, same name (sealed now if it
                // was written before the store's filesystem had fs-verity).
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    fs::remove_file(&tmp).map_err(io_err(&tmp, "removing"))?;
                    if seal {
                        crate::fsverity::enable_path(&dest)
                            .map_err(|e| AlsError::Other(format!("{}: enabling fs-verity: {e}", dest.display())))?;
                    }
                }
                Err(e) => return Err(AlsError::Io { path: dest, step: "renaming into place", source: e }),
            }
            Ok((d, seal))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Every ref record, in file-name order.
    pub fn refs(&self) -> Result<Vec<RefRecord>, AlsError> {
        read_refs(&self.dir).map_err(AlsError::from)
    }

    /// Write (or replace) a ref record atomically.
    pub fn put_ref(&self, r: &RefRecord) -> Result<(), AlsError> {
        let mut bytes = serde_json::to_vec_pretty(r).expect("record serializes");
        bytes.push(b'\n');
        let tmp = self.tmp_path("ref");
        write_new(&tmp, &bytes)?;
        let dest = self.dir.join("refs").join(format!("{}.json", RefRecord::id(&r.root, &r.reference)));
        fs::rename(&tmp, &dest).map_err(io_err(&dest, "renaming into place"))?;
        fsync_dir(&self.dir.join("refs"))
    }

    /// Remove the record of `reference` in `root`; false if there was none.
    pub fn remove_ref(&self, root: &Path, reference: &str) -> Result<bool, AlsError> {
        let p = self.dir.join("refs").join(format!("{}.json", RefRecord::id(root, reference)));
        match fs::remove_file(&p) {
            Ok(()) => {
                fsync_dir(&self.dir.join("refs"))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(AlsError::Io { path: p, step: "removing", source: e }),
        }
    }

    /// Every view record.
    pub fn views(&self) -> Result<Vec<super::view::ViewRecord>, AlsError> {
        let d = self.dir.join("views");
        let mut names = Vec::new();
        for e in fs::read_dir(&d).map_err(io_err(&d, "listing"))? {
            let p = e.map_err(io_err(&d, "listing"))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                names.push(p);
            }
        }
        names.sort();
        let mut out = Vec::new();
        for p in names {
            let bytes = crate::store::repo::read_capped(&p, MAX_RECORD)?;
            let v = serde_json::from_slice(&bytes)
                .map_err(|e| AlsError::Repo(RepoError::Corrupt { path: p.clone(), reason: e.to_string() }))?;
            out.push(v);
        }
        Ok(out)
    }

    /// Write (or replace) a view record.
    pub fn put_view(&self, v: &super::view::ViewRecord) -> Result<(), AlsError> {
        let mut bytes = serde_json::to_vec_pretty(v).expect("record serializes");
        bytes.push(b'\n');
        let tmp = self.tmp_path("view");
        write_new(&tmp, &bytes)?;
        let dest = self.dir.join("views").join(format!("{}.json", v.id()));
        fs::rename(&tmp, &dest).map_err(io_err(&dest, "renaming into place"))?;
        fsync_dir(&self.dir.join("views"))
    }

    /// Remove a view record; false if there was none.
    pub fn remove_view(&self, v: &super::view::ViewRecord) -> Result<bool, AlsError> {
        let p = self.dir.join("views").join(format!("{}.json", v.id()));
        match fs::remove_file(&p) {
            Ok(()) => fsync_dir(&self.dir.join("views")).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(AlsError::Io { path: p, step: "removing", source: e }),
        }
    }

    /// Remove the layer directories and images no ref names any more. Returns how many.
    pub fn prune(&self) -> Result<(usize, usize), AlsError> {
        let refs = self.refs()?;
        let blobs: HashSet<String> = refs
            .iter()
            .flat_map(|r| r.layers.iter().filter_map(|l| Sha256::parse(&l.blob).ok()).map(|d| d.hex()))
            .collect();
        let images: HashSet<String> =
            refs.iter().flat_map(|r| r.layers.iter().map(|l| format!("{}.cfs", l.image))).collect();
        let mut n = (0, 0);
        for (sub, keep, count) in [("layers", &blobs, &mut n.0), ("images", &images, &mut n.1)] {
            let d = self.dir.join(sub);
            for e in fs::read_dir(&d).map_err(io_err(&d, "listing"))? {
                let e = e.map_err(io_err(&d, "listing"))?;
                if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    remove_any(&e.path())?;
                    *count += 1;
                }
            }
        }
        Ok(n)
    }
}

/// The ref records under `als_dir` (no lock taken: the caller holds one).
fn read_refs(als_dir: &Path) -> Result<Vec<RefRecord>, RepoError> {
    let d = als_dir.join("refs");
    let mut names = Vec::new();
    match fs::read_dir(&d) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|source| RepoError::Io { path: d.clone(), step: "listing", source })?;
                let n = e.file_name();
                if n.to_string_lossy().ends_with(".json") {
                    names.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RepoError::Io { path: d, step: "listing", source }),
    }
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let bytes = crate::store::repo::read_capped(&p, MAX_RECORD)?;
        let r: RefRecord = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Corrupt { path: p.clone(), reason: e.to_string() })?;
        out.push(r);
    }
    Ok(out)
}

/// `store gc`'s hook: the blob digests of the layers some ALS ref serves (their store layers,
/// and so their objects, stay). Called with the store's exclusive lock held.
pub fn layers_in_use(store_root: &Path) -> Result<HashSet<String>, RepoError> {
    Ok(read_refs(&store_root.join(STATE_DIR))?.into_iter().flat_map(|r| r.layers.into_iter().map(|l| l.blob)).collect())
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: sha2::Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn create_file(p: &Path, mode: u32) -> Result<File, AlsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(io_err(p, "creating"))
}

/// A new file with `bytes`, synced.
pub(crate) fn write_new(p: &Path, bytes: &[u8]) -> Result<(), AlsError> {
    let mut f = create_file(p, 0o644)?;
    f.write_all(bytes).map_err(io_err(p, "writing"))?;
    f.sync_all().map_err(io_err(p, "fsync"))
}

fn fsync_dir(d: &Path) -> Result<(), AlsError> {
    File::open(d).and_then(|f| f.sync_all()).map_err(io_err(d, "fsync"))
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(io::Error::from)
}

/// Rename the staged directory `st` to `dest` unless something is there already (a racing
/// command published the same layer first: its copy is as good).
fn publish_dir(st: &Path, dest: &Path) -> Result<(), AlsError> {
    fsync_dir(st)?;
    match rename_noreplace(st, dest) {
        Ok(()) => fsync_dir(dest.parent().expect("parent")),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_dir_all(st).map_err(io_err(st, "removing"))?;
            Ok(())
        }
        Err(e) => Err(AlsError::Io { path: dest.into(), step: "renaming into place", source: e }),
    }
}

/// Remove a file, symlink or directory tree (never following a symlink).
fn remove_any(p: &Path) -> Result<(), AlsError> {
    let md = fs::symlink_metadata(p).map_err(io_err(p, "stat"))?;
    let r = if md.is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) };
    r.map_err(io_err(p, "removing"))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
