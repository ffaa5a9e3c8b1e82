//! The repository: images and layer images keyed by digest, over one object directory that
//! they all share. Layout (docs/store.md):
//!
//! ```text
//! STORE/
//!   lock                      flock: shared while importing, exclusive for rm and gc
//!   objects/xx/<62 hex>       file contents, named by sha256 (the object store's naming)
//!   layers/<blob hex>/        one per layer blob (keyed by the blob digest the manifest names)
//!     layer.cfs               composefs image of the layer's tree, OCI whiteouts literal
//!     layer.json              descriptor, diff_id, hard links to lower layers
//!   images/<manifest hex>/    one per image (keyed by manifest digest)
//!     image.cfs               the flattened composefs image
//!     manifest.json, config.json   the verified bytes from the layout
//!     image.json              layers, platform, fs-verity digest of image.cfs, source
//!   tmp/                      staging: every directory above is built here, made durable,
//!                             then renamed into place (RENAME_NOREPLACE) in one step
//! ```
//!
//! Crash safety: a layer or image directory appears whole or not at all; objects are synced
//! (syncfs) before the first directory that names them is renamed in. What a killed import
//! leaves is staging (removed by the next exclusive lock holder) and unreferenced objects
//! (removed by gc). Two imports at once hold the lock shared: objects appear atomically and are
//! deduplicated by the object writer; if both publish the same layer or image, the second
//! rename fails with EEXIST and the first one's directory is used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::oci::flatten::LayerTree;
use crate::oci::Sha256;
use crate::tree::Tree;

/// Name prefix of the object store's per-import staging directories in objects/ (see
/// [`crate::store::Stage`]): what a killed layer import leaves there.
const OBJECT_STAGING_PREFIX: &[u8] = crate::store::STAGE_PREFIX.as_bytes();
/// Largest layer.json / image.json read back (they are ours, but the store may be a user's).
const MAX_RECORD_BYTES: u64 = 16 << 20;
/// Largest layer or image read back into memory for flattening or gc.
const MAX_IMAGE_BYTES: u64 = 4 << 30;

#[derive(Debug, Error)]
pub enum RepoError {
    #[error("{}: {step}: {source}", path.display())]
    Io { path: PathBuf, step: &'static str, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("writing the image: {0}")]
    Build(String),
    #[error("no image {0} in the store")]
    NoImage(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    Reader(String),
}

/// Creates each directory `root/NAME` of `dirs` with its mode (one that exists is kept as it is)
/// and opens the lock file `root/lock` (created 0600, never through a symlink), for the
/// repository and for the records kept beside it (`als-records/`). The error names the path
/// and the step.
pub(crate) fn dirs_and_lock(
    root: &Path,
    dirs: &[(&str, u32)],
) -> Result<(File, PathBuf), (PathBuf, &'static str, io::Error)> {
    for &(d, mode) in dirs {
        let p = root.join(d);
        match fs::DirBuilder::new().mode(mode).create(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err((p, "creating", e)),
        }
    }
    let lp = root.join("lock");
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lp)
    {
        Ok(f) => Ok((f, lp)),
        Err(e) => Err((lp, "opening the lock", e)),
    }
}

fn io_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> RepoError + 'a {
    move |source| RepoError::Io { path: path.to_path_buf(), step, source }
}

/// What the store keeps about a layer (layers/<hex>/layer.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerInfo {
    /// Blob digest (`sha256:...`), the key.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// The config's diff_id for this layer.
    pub diff_id: String,
    /// Layer annotations as the manifest gave them (TOC digests for issue 14's lookups).
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Hard links `(path, target)` to files of lower layers, paths base64 (bytes, not UTF-8).
    #[serde(default)]
    pub external_links: Vec<(String, String)>,
    /// Directories the layer does not list but implies (parents of its entries; "" is the
    /// root), base64: an image cannot tell them from listed ones, and flattening must not let
    /// them override the metadata of the layers below.
    #[serde(default)]
    pub implicit_dirs: Vec<String>,
    /// What the layer reader measured and verified while it read the blob (absent in layers
    /// stored before it was recorded): the Additional Layer Store (issue 14) serves the
    /// uncompressed size and only TOC digests the reader checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadFacts>,
}

/// Facts the layer reader established about a blob (see [`LayerInfo::read`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadFacts {
    /// Detected format, e.g. `gzip`, `zstd:chunked (64-byte footer)`.
    pub format: String,
    /// Bytes of the uncompressed tar whose sha256 is the diff_id (with the trailing padding
    /// the reader restored, if any).
    pub diff_size: u64,
    /// The digests the reader checked, by name (`blob digest`, `TOC digest`, `diff_id`...).
    pub checked: Vec<String>,
}

/// What a layer reader returns besides the layer image (see [`Repo::add_layer_image`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerExtras {
    /// Hard links `(path, target)` whose target is in a lower layer.
    pub external_links: Vec<(Vec<u8>, Vec<u8>)>,
    /// Paths of the directories the layer only implies ("" for the root).
    pub implicit_dirs: Vec<Vec<u8>>,
    /// What the reader measured and checked (stored as [`LayerInfo::read`]).
    pub read: Option<ReadFacts>,
}

impl LayerExtras {
    /// The implied directories of `tree` (nodes created as parents, the root included).
    pub fn implicit_dirs_of(tree: &Tree) -> Vec<Vec<u8>> {
        (0..tree.len() as crate::tree::NodeId)
            .filter(|&i| {
                let n = tree.node(i);
                n.implicit && n.entry.inode.is_dir() && n.link_to.is_none()
            })
            .map(|i| tree.path_of(i))
            .collect()
    }
}

/// What the store keeps about an image (images/<hex>/image.json).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// Manifest digest (`sha256:...`), the key.
    pub manifest: String,
    pub config: String,
    /// Layer blob digests, lowest first.
    pub layers: Vec<String>,
    pub platform: String,
    /// fs-verity digest (hex) of image.cfs.
    pub fsverity: String,
    /// Whether fs-verity is enabled on image.cfs (then mounts check the digest).
    pub verity_enabled: bool,
    /// Size of image.cfs.
    pub image_size: u64,
    /// The reference it was first imported from (e.g. `oci:/srv/layout:v1`).
    pub source: String,
    /// Seconds since the epoch at import.
    pub imported: u64,
}

/// An open repository holding its lock.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    _lock: File,
    exclusive: bool,
}

/// How a command holds the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Imports, mounts, listing: many at once.
    Shared,
    /// rm and gc: alone.
    Exclusive,
}

impl Repo {
    /// `/var/lib/cfsmount` for root; `$XDG_DATA_HOME/cfsmount` or `~/.local/share/cfsmount`
    /// for anyone else.
    pub fn default_root() -> Result<PathBuf, String> {
        if rustix::process::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/cfsmount"));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| Path::new(x).is_absolute()) {
            return Ok(PathBuf::from(x).join("cfsmount"));
        }
        match std::env::var_os("HOME").filter(|h| Path::new(h).is_absolute()) {
            Some(h) => Ok(PathBuf::from(h).join(".local/share/cfsmount")),
            None => Err("no --store given and neither XDG_DATA_HOME nor HOME is an absolute path".into()),
        }
    }

    /// Open (creating if needed) the repository at `root` and take its lock. The holder of an
    /// exclusive lock first removes what killed imports left in `tmp/`; a shared holder does
    /// so too when no one else holds the lock at that moment.
    pub fn open(root: &Path, lock: Lock) -> Result<Repo, RepoError> {
        // objects/ is 0755 inside the 0700 store (others cannot reach it through the store):
        // a helper mount's overlay reads objects with "other" rights (docs/helper.md, "Data read
        // through the mount"), so it must be able to search the directory it is given.
        let dirs = [("", 0o700), ("objects", 0o755), ("layers", 0o700), ("images", 0o700), ("tmp", 0o700)];
        let (f, lp) =
            dirs_and_lock(root, &dirs).map_err(|(path, step, source)| RepoError::Io { path, step, source })?;
        use rustix::fs::{flock, FlockOperation as Op};
        let exclusive = match lock {
            Lock::Exclusive => {
                flock(&f, Op::LockExclusive).map_err(|e| io_err(&lp, "flock")(e.into()))?;
                true
            }
            Lock::Shared => match flock(&f, Op::NonBlockingLockExclusive) {
                Ok(()) => true,
                Err(_) => {
                    flock(&f, Op::LockShared).map_err(|e| io_err(&lp, "flock")(e.into()))?;
                    false
                }
            },
        };
        let mut repo = Repo { root: root.to_path_buf(), _lock: f, exclusive };
        if exclusive {
            repo.clean_tmp()?;
            if lock == Lock::Shared {
                flock(&repo._lock, Op::LockShared).map_err(|e| io_err(&lp, "flock")(e.into()))?;
                repo.exclusive = false;
            }
        }
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    fn layer_dir(&self, d: &Sha256) -> PathBuf {
        self.root.join("layers").join(d.hex())
    }

    fn image_dir(&self, d: &Sha256) -> PathBuf {
        self.root.join("images").join(d.hex())
    }

    fn clean_tmp(&self) -> Result<(), RepoError> {
        let t = self.root.join("tmp");
        for e in fs::read_dir(&t).map_err(io_err(&t, "listing"))? {
            let e = e.map_err(io_err(&t, "listing"))?;
            let p = e.path();
            // Never follows a symlink: a link is removed, not what it points to.
            let is_dir = e.file_type().map_err(io_err(&p, "stat"))?.is_dir();
            let r = if is_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(io_err(&p, "removing staging"))?;
        }
        Ok(())
    }

    /// A fresh staging directory under tmp/.
    fn staging(&self) -> Result<Staging, RepoError> {
        let t = self.root.join("tmp");
        for _ in 0..100 {
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let p = t.join(format!("{}-{n}-{:x}", std::process::id(), ns & 0xffff_ffff_ffff));
            match fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(Staging(Some(p))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RepoError::Io { path: p, step: "creating staging", source: e }),
            }
        }
        Err(RepoError::Io { path: t, step: "creating staging", source: io::ErrorKind::AlreadyExists.into() })
    }

    /// Make what was written durable, then move the staging directory to `dest` unless
    /// something is already there (another import won the race: its copy is used).
    fn publish(&self, mut st: Staging, dest: &Path) -> Result<(), RepoError> {
        let src = st.0.take().expect("staging path");
        let dirf = File::open(&self.root).map_err(io_err(&self.root, "opening"))?;
        // One syncfs covers the objects of this import and the staged files.
        rustix::fs::syncfs(&dirf).map_err(|e| io_err(&self.root, "syncfs")(e.into()))?;
        let parent = dest.parent().expect("dest has a parent");
        let r =
            rustix::fs::renameat_with(rustix::fs::CWD, &src, rustix::fs::CWD, dest, rustix::fs::RenameFlags::NOREPLACE);
        match r {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                let _ = fs::remove_dir_all(&src);
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&src);
                return Err(io_err(dest, "renaming into place")(e.into()));
            }
        }
        File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent, "fsync"))?;
        Ok(())
    }

    pub fn has_layer(&self, d: &Sha256) -> bool {
        self.layer_dir(d).join("layer.json").is_file()
    }

    pub fn has_image(&self, d: &Sha256) -> bool {
        self.image_dir(d).join("image.json").is_file()
    }

    /// Store a layer's tree (literal whiteouts) as its layer image, with `info`.
    pub fn add_layer(&self, key: &Sha256, layer: &LayerTree, info: LayerInfo) -> Result<(), RepoError> {
        self.add_layer_image(key, info, |out| {
            write_image(&layer.tree, out)?;
            Ok(LayerExtras {
                external_links: layer.external_links.clone(),
                implicit_dirs: LayerExtras::implicit_dirs_of(&layer.tree),
                read: None,
            })
        })
    }

    /// Store a layer whose image `write` writes at the path it is given (in staging): the
    /// layer reader's output. The image is read back with the hostile-image reader before the
    /// layer directory is published; what `write` returns besides goes to layer.json.
    pub fn add_layer_image<F>(&self, key: &Sha256, mut info: LayerInfo, write: F) -> Result<(), RepoError>
    where
        F: FnOnce(&Path) -> Result<LayerExtras, RepoError>,
    {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let st = self.staging()?;
        let dir = st.path();
        let img = dir.join("layer.cfs");
        let extras = write(&img)?;
        read_image(&img)?;
        info.external_links = extras.external_links.iter().map(|(p, t)| (b64(p), b64(t))).collect();
        info.implicit_dirs = extras.implicit_dirs.iter().map(|p| b64(p)).collect();
        info.read = extras.read;
        write_json(&dir.join("layer.json"), &info)?;
        self.publish(st, &self.layer_dir(key))
    }

    pub fn layer_info(&self, key: &Sha256) -> Result<LayerInfo, RepoError> {
        read_json(&self.layer_dir(key).join("layer.json"))
    }

    /// Read a stored layer back as a tree for flattening.
    pub fn layer_tree(&self, key: &Sha256) -> Result<LayerTree, RepoError> {
        use base64::Engine as _;
        let info = self.layer_info(key)?;
        let p = self.layer_dir(key).join("layer.cfs");
        let mut tree = read_image(&p)?;
        let dec = |s: &str| {
            base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| RepoError::Corrupt {
                path: self.layer_dir(key).join("layer.json"),
                reason: format!("external_links: {e}"),
            })
        };
        let mut external_links = Vec::new();
        for (a, b) in &info.external_links {
            external_links.push((dec(a)?, dec(b)?));
        }
        // Everything in an image is listed (the reader leaves the root marked as created,
        // as Tree::new made it); then the recorded implied directories are marked again.
        tree.node_mut(crate::tree::ROOT).implicit = false;
        for d in &info.implicit_dirs {
            let path = dec(d)?;
            // Only directories count; a stale entry names nothing and is ignored.
            if let Some(id) = tree.lookup(&path).filter(|&id| tree.node(id).entry.inode.is_dir()) {
                tree.node_mut(id).implicit = true;
            }
        }
        Ok(LayerTree { tree, external_links })
    }

    /// Store an image: its flattened tree as image.cfs, the layout's manifest and config
    /// bytes, and `info` (its `fsverity`, `verity_enabled` and `image_size` are filled in
    /// here). Where the store's filesystem has fs-verity, the image records every object's
    /// fs-verity digest and gets fs-verity itself, so that mounts can check both. Returns the
    /// stored info (another import's, if it published the same image first).
    pub fn add_image(
        &self,
        key: &Sha256,
        mut tree: Tree,
        manifest: &[u8],
        config: &[u8],
        mut info: ImageInfo,
    ) -> Result<ImageInfo, RepoError> {
        let st = self.staging()?;
        let dir = st.path();
        let verity = verity_supported(&dir);
        if verity {
            self.seal_objects(&mut tree)?;
        }
        let img = dir.join("image.cfs");
        let f = write_image(&tree, &img)?;
        drop(tree);
        info.image_size = f.metadata().map_err(io_err(&img, "fstat"))?.len();
        let d = crate::fsverity::digest_file(&f).map_err(io_err(&img, "fs-verity digest"))?;
        info.fsverity = crate::fsverity::to_hex(&d);
        info.verity_enabled = false;
        if verity {
            crate::fsverity::enable(f.as_fd()).map_err(|e| RepoError::Build(format!("{}: {e}", img.display())))?;
            info.verity_enabled = true;
        }
        drop(f);
        write_file(&dir.join("manifest.json"), manifest)?;
        write_file(&dir.join("config.json"), config)?;
        write_json(&dir.join("image.json"), &info)?;
        self.publish(st, &self.image_dir(key))?;
        self.image_info(key)
    }

    /// Enable fs-verity on every object `tree` names (already sealed ones are fine) and record
    /// the kernel's digest of each in the tree, so that the image carries it.
    pub(crate) fn seal_objects(&self, tree: &mut Tree) -> Result<(), RepoError> {
        let od = self.objects_dir();
        let mut done: std::collections::HashMap<Vec<u8>, [u8; 32]> = std::collections::HashMap::new();
        for n in tree.nodes.iter_mut() {
            let e = &mut n.entry;
            let Some(p) = e.payload.clone().filter(|_| e.inode.is_reg() && e.content.is_none()) else { continue };
            if let Some(d) = done.get(&p) {
                e.fsverity_digest = Some(*d);
                continue;
            }
            let path = od.join(std::ffi::OsStr::from_bytes(&p));
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .map_err(io_err(&path, "opening the object"))?;
            let verr = |e: crate::fsverity::VerityError| RepoError::Build(format!("{}: {e}", path.display()));
            crate::fsverity::enable(f.as_fd()).map_err(verr)?;
            let d = crate::fsverity::measure(f.as_fd()).map_err(verr)?;
            e.fsverity_digest = Some(d);
            done.insert(p, d);
        }
        Ok(())
    }

    pub fn image_info(&self, key: &Sha256) -> Result<ImageInfo, RepoError> {
        read_json(&self.image_dir(key).join("image.json"))
    }

    pub fn image_path(&self, key: &Sha256) -> PathBuf {
        self.image_dir(key).join("image.cfs")
    }

    /// Every stored image, by manifest digest order.
    pub fn images(&self) -> Result<Vec<(Sha256, ImageInfo)>, RepoError> {
        let mut out = Vec::new();
        for key in list_keys(&self.root.join("images"))? {
            if self.has_image(&key) {
                out.push((key, self.image_info(&key)?));
            }
        }
        Ok(out)
    }

    /// Find one image by full digest, a unique hex prefix (at least 4 digits), or source.
    pub fn find_image(&self, name: &str) -> Result<Sha256, RepoError> {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let all = self.images()?;
        let hits: Vec<Sha256> = if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            all.iter().filter(|(k, _)| k.hex().starts_with(&hex.to_ascii_lowercase())).map(|(k, _)| *k).collect()
        } else {
            all.iter().filter(|(_, i)| i.source == name).map(|(k, _)| *k).collect()
        };
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(RepoError::NoImage(name.into())),
            _ => Err(RepoError::Ambiguous(format!("{name} names {} images: give more of the digest", hits.len()))),
        }
    }

    /// Remove an image (its layers and objects stay until gc). Needs the exclusive lock.
    pub fn remove_image(&self, key: &Sha256) -> Result<(), RepoError> {
        assert!(self.exclusive, "remove_image needs the exclusive lock");
        let d = self.image_dir(key);
        if !d.exists() {
            return Err(RepoError::NoImage(key.to_string()));
        }
        self.discard(&d)
    }

    /// Move a directory to staging (one atomic step), then delete it.
    fn discard(&self, d: &Path) -> Result<(), RepoError> {
        let st = self.staging()?;
        let to = st.path().join("old");
        fs::rename(d, &to).map_err(io_err(d, "moving to staging"))?;
        let parent = d.parent().expect("parent");
        File::open(parent).and_then(|f| f.sync_all()).map_err(io_err(parent, "fsync"))?;
        drop(st);
        Ok(())
    }

    /// Remove every layer no image uses and every object no remaining layer names.
    /// Needs the exclusive lock.
    pub fn gc(&self) -> Result<GcReport, RepoError> {
        assert!(self.exclusive, "gc needs the exclusive lock");
        let mut report = GcReport::default();
        let mut used_layers = std::collections::HashSet::new();
        for (_, info) in self.images()? {
            for l in info.layers {
                used_layers.insert(l);
            }
        }
        // The Additional Layer Store's references are roots too (issue 14).
        used_layers.extend(crate::als::state::layers_in_use(&self.root)?);
        let mut used_objects = std::collections::HashSet::new();
        for key in list_keys(&self.root.join("layers"))? {
            let dir = self.layer_dir(&key);
            if !used_layers.contains(&key.to_string()) {
                self.discard(&dir)?;
                report.layers += 1;
                continue;
            }
            let tree = read_image(&dir.join("layer.cfs"))?;
            for n in &tree.nodes {
                if let (true, Some(p)) = (n.entry.inode.is_reg(), &n.entry.payload) {
                    used_objects.insert(p.clone());
                }
            }
        }
        let od = self.objects_dir();
        for fan in fs::read_dir(&od).map_err(io_err(&od, "listing"))? {
            let fan = fan.map_err(io_err(&od, "listing"))?;
            let name = fan.file_name();
            let fp = fan.path();
            if !fan.file_type().map_err(io_err(&fp, "stat"))?.is_dir() {
                continue;
            }
            // Staging of a layer import that was killed (no import runs: the lock is ours).
            if name.as_encoded_bytes().starts_with(OBJECT_STAGING_PREFIX) {
                fs::remove_dir_all(&fp).map_err(io_err(&fp, "removing staging"))?;
                report.staging += 1;
                continue;
            }
            let fan_ok = name.len() == 2 && name.as_encoded_bytes().iter().all(|b| b.is_ascii_hexdigit());
            if !fan_ok {
                continue;
            }
            for obj in fs::read_dir(&fp).map_err(io_err(&fp, "listing"))? {
                let obj = obj.map_err(io_err(&fp, "listing"))?;
                let mut rel = name.as_encoded_bytes().to_vec();
                rel.push(b'/');
                rel.extend_from_slice(obj.file_name().as_encoded_bytes());
                if !used_objects.contains(&rel) {
                    let op = obj.path();
                    report.bytes += obj.metadata().map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&op).map_err(io_err(&op, "removing"))?;
                    report.objects += 1;
                }
            }
        }
        Ok(report)
    }
}

/// What gc removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub layers: usize,
    pub objects: usize,
    pub bytes: u64,
    /// Staging directories of killed layer imports removed from objects/.
    pub staging: usize,
}

/// Whether files in `dir` can get fs-verity (a probe file, removed again).
pub(crate) fn verity_supported(dir: &Path) -> bool {
    let p = dir.join("verity-probe");
    let ok = fs::write(&p, b"probe").is_ok()
        && File::open(&p).map(|f| crate::fsverity::enable(f.as_fd()).is_ok()).unwrap_or(false);
    let _ = fs::remove_file(&p);
    ok
}

/// A staging directory, removed on drop unless published.
struct Staging(Option<PathBuf>);

impl Staging {
    fn path(&self) -> PathBuf {
        self.0.clone().expect("staging path")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// Keys (digest-named subdirectories) of `dir`; other names are ignored.
fn list_keys(dir: &Path) -> Result<Vec<Sha256>, RepoError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir, "listing"))? {
        let e = e.map_err(io_err(dir, "listing"))?;
        if let Some(k) = e.file_name().to_str().and_then(Sha256::from_hex) {
            v.push(k);
        }
    }
    v.sort();
    Ok(v)
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o644).open(p).map_err(io_err(p, "creating"))?;
    f.write_all(bytes).map_err(io_err(p, "writing"))?;
    f.sync_all().map_err(io_err(p, "fsync"))
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<(), RepoError> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("records serialize");
    bytes.push(b'\n');
    write_file(p, &bytes)
}

pub(crate) fn read_capped(p: &Path, cap: u64) -> Result<Vec<u8>, RepoError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(io_err(p, "opening"))?;
    let md = f.metadata().map_err(io_err(p, "fstat"))?;
    if !md.is_file() || md.len() > cap {
        return Err(RepoError::Corrupt { path: p.into(), reason: "not a regular file of a sane size".into() });
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    (&f).take(cap).read_to_end(&mut buf).map_err(io_err(p, "reading"))?;
    Ok(buf)
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, RepoError> {
    let bytes = read_capped(p, MAX_RECORD_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt { path: p.into(), reason: e.to_string() })
}

/// Read a stored image back into a tree with the hostile-image reader (a user's store is
/// that user's to tamper with).
pub fn read_image(p: &Path) -> Result<Tree, RepoError> {
    let bytes = read_capped(p, MAX_IMAGE_BYTES)?;
    crate::erofs::reader::read_image(&bytes).map_err(|e| RepoError::Corrupt { path: p.into(), reason: e.to_string() })
}

/// Write `tree` as a composefs image at `p` (a new file), the writer running in the sandbox;
/// the header is checked and the file synced. Returns the file, open read-only.
pub(crate) fn write_image(tree: &Tree, p: &Path) -> Result<File, RepoError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p)
        .map_err(io_err(p, "creating"))?;
    let out: OwnedFd = f.as_fd().try_clone_to_owned().map_err(io_err(p, "dup"))?;
    let null: OwnedFd = File::open("/dev/null").map_err(io_err(Path::new("/dev/null"), "opening"))?.into();
    let opts = crate::erofs::writer::WriteOptions::default();
    crate::sandbox::run_confined(&crate::sandbox::SandboxConfig::default(), null, out, move |_, mut o| {
        crate::build::write_tree(tree, &opts, &mut o).map(|_| ()).map_err(|e| e.to_string())
    })
    .map_err(|e| RepoError::Build(e.to_string()))?;
    crate::build::validate_image(&f).map_err(|e| RepoError::Build(format!("{}: {e}", p.display())))?;
    f.sync_all().map_err(io_err(p, "fsync"))?;
    drop(f);
    File::open(p).map_err(io_err(p, "reopening"))
}

#[cfg(test)]
#[path = "repo_tests.rs"]
mod tests;
