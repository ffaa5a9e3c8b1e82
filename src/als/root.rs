//! An ALS root: the directory storage.conf names, as podman sees it. Everything in it is
//! runtime state, rebuilt from the records in the store ([`super::state`]) by [`sync`]:
//!
//! ```text
//! ROOT/                      a tmpfs cfsmount mounts there (nosuid,nodev,noexec, shared)
//!   .cfsmount-als            marker: this tmpfs is an ALS root of cfsmount (JSON: root, store)
//!   .layers/<blob>-<image>/  one per served layer (shared by every reference that has it)
//!     diff/                  the composefs mount of the layer in overlay form (read-only)
//!     info                   containers/storage's Layer JSON
//!     blob                   the compressed blob: a symlink into the store (root), or a
//!                            read-only bind mount of it (views, which cannot read the store)
//!     use -> /proc/self/cfsmount-als-no-notification/use
//!   <base64(ref)>/sha256:<blob digest>  -> ROOT/.layers/<id>   (containers/storage ≤ 1.53)
//!   <base64(ref)>/sha256:<TOC digest>   -> ROOT/.layers/<id>   (≥ 1.54, layers with a TOC)
//! ```
//!
//! Why a tmpfs: a layer directory must never look complete while its `diff` is not mounted
//! (podman would take an empty directory as the layer). After a reboot the tmpfs is gone and
//! ROOT is an empty directory on disk, so podman pulls normally until `als mount-all` rebuilds
//! it; a key appears only after its layer directory is complete and mounted, and goes before
//! the layer is unmounted.
//!
//! `use`: containers/storage creates `<layer>/use` on every lookup and expects a
//! notification-aware store to answer ENOENT; on a plain directory the create succeeds, it
//! removes the file again and logs a warning each time. A dangling symlink whose target's
//! directory cannot exist (procfs has no such entry and cannot get one) makes that create fail
//! with ENOENT: podman writes nothing into the store and logs nothing. The release
//! notification (`rmdir` of the layer directory) cannot be answered that way: it gets ENOTDIR
//! (the key is a symlink) and podman logs one warning per layer and release. cfsmount counts no
//! references; a layer stays until `als rm` (which refuses while a mount is in use).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::mounts::{self, OVERLAYFS_MAGIC, TMPFS_MAGIC};
use super::AlsError;
use crate::mount::access::Access;
use crate::mount::kernel::Kernel;
use crate::mount::{Dest, IdMap, IdmapSpec, MountRequest, Settings, SourceKind, Verity};

/// Marker file in an ALS root's tmpfs.
pub const MARKER: &str = ".cfsmount-als";
/// Directory of the layer directories in an ALS root.
pub const LAYERS: &str = ".layers";
/// Where `use` points: a path whose directory procfs never has.
pub const USE_TARGET: &str = "/proc/self/cfsmount-als-no-notification/use";

/// One layer an ALS root serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// The `info` bytes.
    pub info: Vec<u8>,
    /// The blob in the store.
    pub blob: PathBuf,
    /// The overlay-form image in the store.
    pub image: PathBuf,
    /// Its fs-verity digest, when the image has fs-verity (then mounted with verity=require).
    pub verity_digest: Option<[u8; 32]>,
}

/// What an ALS root should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Layer directory name (`<blob hex>-<image hex>`) -> what it serves.
    pub layers: BTreeMap<String, LayerSpec>,
    /// Key path relative to the root (`<base64 components>/sha256:<hex>`) -> layer directory name.
    pub keys: BTreeMap<PathBuf, String>,
}

/// Whose view an ALS root is: the root's own (podman as root) or a user's (rootless podman),
/// whose `diff` mounts are idmapped with that user's podman mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewOf {
    pub uid: u32,
    pub gid: u32,
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
}

/// The mount engine as the caller chose it.
pub struct Engine<'a> {
    pub access: &'a dyn Access,
    pub kernel: &'a dyn Kernel,
    pub settings: &'a Settings,
    /// The store's objects directory (the images' data-only layer).
    pub objects: PathBuf,
}

/// What [`sync`] did (summed over the targets of a root by [`SyncReport::add`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub mounted: usize,
    pub unmounted: usize,
    pub keys_added: usize,
    pub keys_removed: usize,
    /// The tmpfs was mounted (true) or unmounted (false) by this sync.
    pub root_mounted: Option<bool>,
}

impl SyncReport {
    pub fn add(&mut self, o: &SyncReport) {
        self.mounted += o.mounted;
        self.unmounted += o.unmounted;
        self.keys_added += o.keys_added;
        self.keys_removed += o.keys_removed;
        self.root_mounted = self.root_mounted.or(o.root_mounted);
    }
}

/// Whether `root` holds cfsmount's ALS tmpfs now.
pub fn is_mounted(root: &Path) -> Result<bool, AlsError> {
    Ok(matches!(mounts::mount_state(root)?, Some((true, TMPFS_MAGIC))) && root.join(MARKER).is_file())
}

/// The `diff` mounts of `root` that `want` no longer has but something uses (what an `als rm`
/// would pull from under it): (diff, who). A use is an overlay anywhere on the machine with a
/// layer inside it (podman's containers and image mounts, see [`super::usage`]), or anything
/// that holds the mount itself (open files, working directories: umount2's busy check).
pub fn busy_layers(root: &Path, want: &Desired) -> Result<Vec<(PathBuf, String)>, AlsError> {
    let mut busy = Vec::new();
    if !is_mounted(root)? {
        return Ok(busy);
    }
    let mut dropped = Vec::new();
    for id in present_layers(root)?.into_iter().filter(|id| !want.layers.contains_key(id)) {
        let diff = root.join(LAYERS).join(&id).join("diff");
        if is_our_overlay(&diff)? {
            dropped.push(fs::canonicalize(&diff).map_err(io_err(&diff, "resolving"))?);
        }
    }
    if dropped.is_empty() {
        return Ok(busy);
    }
    for u in super::usage::users_of(&dropped) {
        busy.push((u.diff.clone(), u.to_string()));
    }
    for d in &dropped {
        if !busy.iter().any(|(b, _)| b == d) && mounts::in_use(d)? {
            busy.push((d.clone(), "open files or a working directory in it".into()));
        }
    }
    Ok(busy)
}

/// How [`sync`] treats what is in the way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncMode {
    /// Detach a `diff` mount still in use lazily instead of refusing.
    pub force: bool,
    /// Keep (or put) the tmpfs in place even with nothing to serve (a view: rootless podman
    /// must find the mount when it starts, to see what is added later).
    pub keep_mounted: bool,
}

/// Make `root` hold exactly `want` (see the module documentation).
pub fn sync(
    root: &Path,
    want: &Desired,
    eng: &Engine<'_>,
    view: Option<&ViewOf>,
    store: &Path,
    mode: SyncMode,
) -> Result<SyncReport, AlsError> {
    let mut rep = SyncReport::default();
    let force = mode.force;
    let mounted = is_mounted(root)?;
    if want.layers.is_empty() && !mounted && !mode.keep_mounted {
        return Ok(rep);
    }
    if !mounted {
        mount_root(root, view, store)?;
        rep.root_mounted = Some(true);
    }
    let layers = root.join(LAYERS);
    for (id, spec) in &want.layers {
        if ensure_layer(&layers.join(id), spec, eng, view)? {
            rep.mounted += 1;
        }
    }
    // Keys: first the wanted ones (each names a complete layer directory by now), then the
    // others go, then the layers nothing names any more.
    let present = present_keys(root)?;
    for (rel, id) in &want.keys {
        let target = layers.join(id);
        if present.get(rel) != Some(&target) {
            put_symlink(&root.join(rel), &target)?;
            rep.keys_added += 1;
        }
    }
    for rel in present.keys().filter(|k| !want.keys.contains_key(*k)) {
        let p = root.join(rel);
        fs::remove_file(&p).map_err(io_err(&p, "removing the key"))?;
        rep.keys_removed += 1;
    }
    remove_empty_dirs(root)?;
    for id in present_layers(root)?.into_iter().filter(|id| !want.layers.contains_key(id)) {
        remove_layer(&layers.join(&id), eng, force)?;
        rep.unmounted += 1;
    }
    if want.layers.is_empty() && !mode.keep_mounted {
        if force {
            mounts::detach(root)?;
        } else {
            mounts::unmount(root)?;
        }
        rep.root_mounted = Some(false);
    }
    Ok(rep)
}

fn io_err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> AlsError + 'a {
    move |source| AlsError::Io { path: path.to_path_buf(), step, source }
}

/// Attach the tmpfs at `root` (created if missing, mode 0700) and write the marker. A root
/// that is already some other mount point, or a non-empty directory (its content would be
/// hidden), is refused.
fn mount_root(root: &Path, view: Option<&ViewOf>, store: &Path) -> Result<(), AlsError> {
    match mounts::mount_state(root)? {
        None => fs::DirBuilder::new().mode(0o700).recursive(true).create(root).map_err(io_err(root, "creating"))?,
        Some((true, magic)) => {
            return Err(AlsError::NotOurs {
                path: root.into(),
                reason: format!("it is already a mount point (filesystem magic {magic:#x}), not cfsmount's ALS tmpfs"),
            })
        }
        Some((false, _)) => {}
    }
    if !fs::symlink_metadata(root).map_err(io_err(root, "stat"))?.is_dir() {
        return Err(AlsError::NotOurs { path: root.into(), reason: "not a directory".into() });
    }
    if fs::read_dir(root).map_err(io_err(root, "listing"))?.next().is_some() {
        return Err(AlsError::NotOurs {
            path: root.into(),
            reason: "the directory is not empty (the ALS tmpfs would hide its content)".into(),
        });
    }
    mounts::mount_tmpfs(root, 0o700, 0, 0)?;
    let uid = view.map_or(0, |v| v.uid);
    let marker = serde_json::json!({ "root": root, "store": store, "uid": uid });
    let r = (|| {
        if let Some(v) = view {
            open_to(root, v)?;
        }
        let p = root.join(MARKER);
        fs::write(&p, format!("{marker}\n")).map_err(io_err(&p, "writing"))?;
        let l = root.join(LAYERS);
        fs::DirBuilder::new().mode(0o755).create(&l).map_err(io_err(&l, "creating"))
    })();
    if r.is_err() {
        let _ = mounts::detach(root);
    }
    r
}

/// Let the view's user (and no one else) traverse and read the root-owned tmpfs: a POSIX ACL
/// entry; where the tmpfs has no ACLs, the user owns the top directory (mode 0500) instead.
fn open_to(root: &Path, v: &ViewOf) -> Result<(), AlsError> {
    let acl = super::view::acl_user_rx(v.uid);
    match rustix::fs::setxattr(root, "system.posix_acl_access", &acl, rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            std::os::unix::fs::chown(root, Some(v.uid), Some(v.gid)).map_err(io_err(root, "chown"))?;
            fs::set_permissions(root, fs::Permissions::from_mode(0o500)).map_err(io_err(root, "chmod"))
        }
        Err(e) => Err(AlsError::Io { path: root.into(), step: "setting the ACL", source: e.into() }),
    }
}

/// Make the layer directory `dir` complete (info, blob, use, diff mounted). Returns whether
/// it mounted `diff`.
fn ensure_layer(dir: &Path, spec: &LayerSpec, eng: &Engine<'_>, view: Option<&ViewOf>) -> Result<bool, AlsError> {
    let diff = dir.join("diff");
    match fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().mode(0o755).create(dir).map_err(io_err(dir, "creating"))?;
            fs::DirBuilder::new().mode(0o755).create(&diff).map_err(io_err(&diff, "creating"))?;
            std::os::unix::fs::symlink(USE_TARGET, dir.join("use")).map_err(io_err(dir, "creating use"))?;
        }
        Err(e) => return Err(AlsError::Io { path: dir.into(), step: "stat", source: e }),
    }
    let info = dir.join("info");
    if fs::read(&info).ok().as_deref() != Some(spec.info.as_slice()) {
        let tmp = dir.join(".info.tmp");
        fs::write(&tmp, &spec.info).map_err(io_err(&tmp, "writing"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(io_err(&tmp, "chmod"))?;
        fs::rename(&tmp, &info).map_err(io_err(&info, "renaming into place"))?;
    }
    ensure_blob(&dir.join("blob"), &spec.blob, view.is_some())?;
    if is_our_overlay(&diff)? {
        return Ok(false);
    }
    if let Some((true, magic)) = mounts::mount_state(&diff)? {
        return Err(AlsError::NotOurs { path: diff, reason: format!("a mount point of filesystem magic {magic:#x}") });
    }
    let req = MountRequest {
        sources: vec![spec.image.clone()],
        kind: SourceKind::Image,
        digests: spec.verity_digest.into_iter().collect(),
        basedirs: vec![eng.objects.clone()],
        verity: if spec.verity_digest.is_some() { Verity::Require } else { Verity::Off },
        idmap: view.map(|v| IdmapSpec::Maps { uid: v.uid_map.clone(), gid: v.gid_map.clone() }),
        upper: None,
        readonly: true,
        force_loop: false,
        // As podman's own layers: setuid bits work (root's podman), device nodes do not
        // (containers/storage mounts its layers nodev too). A view is nosuid,nodev.
        allow_suid: view.is_none(),
        allow_dev: false,
        noexec: false,
        dest: Dest::Target(diff.clone()),
    };
    crate::mount::mount(&req, eng.access, eng.kernel, eng.settings)
        .map_err(|e| AlsError::Mount { path: diff, reason: e.to_string() })?;
    Ok(true)
}

/// `blob`: a symlink to the store's copy for the root's own ALS; a read-only bind mount of it
/// for a view (a user cannot traverse the store).
fn ensure_blob(p: &Path, src: &Path, bind: bool) -> Result<(), AlsError> {
    if bind {
        match mounts::mount_state(p)? {
            Some((true, _)) => return Ok(()),
            Some((false, _)) => {}
            None => {
                fs::File::create(p).map_err(io_err(p, "creating"))?;
            }
        }
        return mounts::bind_file(src, p);
    }
    if fs::read_link(p).ok().as_deref() == Some(src) {
        return Ok(());
    }
    put_symlink(p, src)
}

/// A symlink at `p` to `target`, replacing what is there atomically (a temporary name, then
/// rename); parent directories are created (0755).
fn put_symlink(p: &Path, target: &Path) -> Result<(), AlsError> {
    let parent = p.parent().expect("key has a parent");
    fs::DirBuilder::new().mode(0o755).recursive(true).create(parent).map_err(io_err(parent, "creating"))?;
    let mut tmp_name = p.file_name().expect("name").to_os_string();
    tmp_name.push(".tmp");
    let tmp = parent.join(format!(".{}", tmp_name.to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp, "creating the symlink"))?;
    fs::rename(&tmp, p).map_err(io_err(p, "renaming into place"))
}

/// Whether `diff` is an overlay mounted there (by the engine: its record is checked when it
/// is unmounted).
fn is_our_overlay(diff: &Path) -> Result<bool, AlsError> {
    Ok(matches!(mounts::mount_state(diff)?, Some((true, OVERLAYFS_MAGIC))))
}

/// Unmount and remove one layer directory. A `diff` in use is refused unless `force`.
fn remove_layer(dir: &Path, eng: &Engine<'_>, force: bool) -> Result<(), AlsError> {
    let diff = dir.join("diff");
    if is_our_overlay(&diff)? {
        if !force {
            let canon = fs::canonicalize(&diff).map_err(io_err(&diff, "resolving"))?;
            if let Some(u) = super::usage::users_of(std::slice::from_ref(&canon)).into_iter().next() {
                return Err(AlsError::Busy { path: diff, by: u.to_string() });
            }
            if mounts::in_use(&diff)? {
                return Err(AlsError::Busy { path: diff, by: "open files or a working directory in it".into() });
            }
        }
        match crate::mount::unmount(&diff, eng.access, eng.kernel, eng.settings) {
            Ok(_) => {}
            // The mount engine's record is gone (its state directory was emptied, e.g. a
            // reboot with a persistent /run); the mount is still ours: an overlay on a layer
            // directory of our marked tmpfs.
            Err(crate::mount::MountError::NotOurs { .. }) if force => mounts::detach(&diff)?,
            Err(crate::mount::MountError::NotOurs { .. }) => mounts::unmount(&diff)?,
            Err(e) => return Err(AlsError::Mount { path: diff.clone(), reason: e.to_string() }),
        }
    }
    let blob = dir.join("blob");
    if let Some((true, _)) = mounts::mount_state(&blob)? {
        mounts::detach(&blob)?;
    }
    fs::remove_dir_all(dir).map_err(io_err(dir, "removing"))
}

/// Names of the layer directories in `root/.layers`.
fn present_layers(root: &Path) -> Result<Vec<String>, AlsError> {
    let d = root.join(LAYERS);
    let mut v = Vec::new();
    for e in fs::read_dir(&d).map_err(io_err(&d, "listing"))? {
        let e = e.map_err(io_err(&d, "listing"))?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// Every key symlink below `root` (outside `.layers`), relative path -> target.
fn present_keys(root: &Path) -> Result<BTreeMap<PathBuf, PathBuf>, AlsError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let d = root.join(&rel);
        for e in fs::read_dir(&d).map_err(io_err(&d, "listing"))? {
            let e = e.map_err(io_err(&d, "listing"))?;
            let name = e.file_name();
            if rel.as_os_str().is_empty() && (name == LAYERS || name == MARKER) {
                continue;
            }
            let r = rel.join(&name);
            // Base64 and digests never start with '.': a temporary symlink of an interrupted
            // [`put_symlink`].
            if name.as_encoded_bytes().first() == Some(&b'.') {
                let p = root.join(&r);
                fs::remove_file(&p).map_err(io_err(&p, "removing debris"))?;
                continue;
            }
            let ft = e.file_type().map_err(io_err(&d, "stat"))?;
            if ft.is_dir() {
                stack.push(r);
            } else if ft.is_symlink() {
                let p = root.join(&r);
                out.insert(r, fs::read_link(&p).map_err(io_err(&p, "readlink"))?);
            }
        }
    }
    Ok(out)
}

/// Remove the directories below `root` (outside `.layers`) that hold no key any more.
fn remove_empty_dirs(root: &Path) -> Result<(), AlsError> {
    fn walk(d: &Path, top: bool) -> Result<bool, AlsError> {
        let mut empty = true;
        for e in fs::read_dir(d).map_err(io_err(d, "listing"))? {
            let e = e.map_err(io_err(d, "listing"))?;
            let name = e.file_name();
            if top && (name == LAYERS || name == MARKER) {
                continue;
            }
            let p = e.path();
            if e.file_type().map_err(io_err(&p, "stat"))?.is_dir() && walk(&p, false)? {
                fs::remove_dir(&p).map_err(io_err(&p, "removing"))?;
            } else {
                empty = false;
            }
        }
        Ok(empty)
    }
    walk(root, true).map(|_| ())
}

/// The wanted layers and keys of `root` from the ref records (the layer directory of each
/// layer is named by its blob and image digests, so references that share a layer share it).
pub fn desired(
    refs: &[super::state::RefRecord],
    root: &Path,
    layer_spec: &dyn Fn(&super::state::LayerRef) -> Result<LayerSpec, AlsError>,
) -> Result<Desired, AlsError> {
    let mut want = Desired::default();
    let mut seen = BTreeSet::new();
    for r in refs.iter().filter(|r| r.root == root) {
        let base: PathBuf = super::protocol::ref_components(&r.reference).iter().collect();
        for l in &r.layers {
            let blob = crate::oci::Sha256::parse(&l.blob).map_err(AlsError::Other)?;
            let id = format!("{}-{}", blob.hex(), l.image);
            if seen.insert(id.clone()) {
                want.layers.insert(id.clone(), layer_spec(l)?);
            }
            want.keys.insert(base.join(&l.blob), id.clone());
            if let Some(t) = &l.toc {
                want.keys.insert(base.join(t), id.clone());
            }
        }
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::state::{LayerRef, RefRecord};

    #[test]
    fn desired_keys_and_shared_layer_directories() {
        let d = |s: &str| crate::oci::Sha256::of(s.as_bytes()).to_string();
        let img = |s: &str| crate::oci::Sha256::of(s.as_bytes()).hex();
        let lr = |b: &str, toc: Option<&str>, i: &str| LayerRef {
            blob: d(b),
            toc: toc.map(d),
            image: img(i),
            image_verity: false,
        };
        let r = |root: &str, reference: &str, layers: Vec<LayerRef>| RefRecord {
            root: PathBuf::from(root),
            reference: reference.into(),
            source: String::new(),
            manifest: String::new(),
            layers,
            added: 0,
        };
        let refs = vec![
            r("/als", "h/a:1", vec![lr("base", None, "base-img"), lr("top", Some("toc"), "top-img")]),
            r("/als", "h/a:2", vec![lr("base", None, "base-img")]),
            r("/other", "h/a:1", vec![lr("x", None, "x-img")]),
        ];
        let spec = |_: &LayerRef| {
            Ok(LayerSpec { info: vec![], blob: PathBuf::new(), image: PathBuf::new(), verity_digest: None })
        };
        let want = desired(&refs, Path::new("/als"), &spec).unwrap();
        assert_eq!(want.layers.len(), 2, "the base layer directory is shared by both references");
        let b64 = |s: &str| super::super::protocol::ref_components(s).join("/");
        let keys: Vec<String> = want.keys.keys().map(|k| k.to_string_lossy().into_owned()).collect();
        let mut expect = vec![
            format!("{}/{}", b64("h/a:1"), d("base")),
            format!("{}/{}", b64("h/a:1"), d("top")),
            format!("{}/{}", b64("h/a:1"), d("toc")),
            format!("{}/{}", b64("h/a:2"), d("base")),
        ];
        expect.sort();
        assert_eq!(keys, expect);
        let top = &want.keys[&PathBuf::from(format!("{}/{}", b64("h/a:1"), d("top")))];
        assert_eq!(
            top,
            &want.keys[&PathBuf::from(format!("{}/{}", b64("h/a:1"), d("toc")))],
            "both keys, one directory"
        );
        assert_eq!(*top, format!("{}-{}", &d("top")[7..], img("top-img")));
    }
}
