//! `als add`, `als rm`, `als ls`, `als mount-all`: the records in the store first, then each
//! affected ALS root made to match them ([`super::root::sync`]). Every command can be run
//! again after a crash and converges (the records are written atomically; a root is rebuilt
//! from them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::protocol::{self, LayerInfoJson};
use super::root::{self, Desired, Engine, LayerSpec, SyncMode, SyncReport, ViewOf};
use super::state::{AlsState, LayerRef, RefRecord, STATE_DIR};
use super::view::{self, ViewRecord};
use super::AlsError;
use crate::oci::flatten::{flatten, LayerTree};
use crate::oci::layout::{Image, Layer, Layout, Platform, Reference};
use crate::oci::reader::BlobReader;
use crate::oci::Sha256;
use crate::store::repo::{ReadFacts, Repo};
use crate::tree::{Limits, Tree};

/// What `als add` did.
#[derive(Debug, Clone)]
pub struct Added {
    /// The reference as podman will look it up.
    pub reference: String,
    pub manifest: Sha256,
    /// Blob digest, TOC digest (if served) per layer, lowest first.
    pub layers: Vec<(String, Option<String>)>,
    /// Layer blobs read by the layer reader (the others were in the store).
    pub layers_read: usize,
    pub sync: SyncReport,
}

/// The ALS root path as records name it: absolute, symlinks resolved; with `create`, created
/// (0700) when missing, so that storage.conf can name it before anything is added.
pub fn canonical_root(root: &Path, create: bool) -> Result<PathBuf, AlsError> {
    let abs =
        std::path::absolute(root).map_err(|e| AlsError::Io { path: root.into(), step: "absolute path", source: e })?;
    if create && !abs.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(&abs).map_err(|e| AlsError::Io {
            path: abs.clone(),
            step: "creating",
            source: e,
        })?;
    }
    abs.canonicalize().map_err(|e| AlsError::Io { path: abs, step: "resolving", source: e })
}

/// Add `source` (an OCI layout reference) to the ALS `root` under `reference`.
/// `repo` is held shared (objects and layers cannot be collected meanwhile), `als` exclusive.
pub fn add(
    repo: &Repo,
    als: &AlsState,
    root: &Path,
    reference: &str,
    source: &Reference,
    platform: Option<&Platform>,
    eng: &Engine<'_>,
) -> Result<Added, AlsError> {
    let reference = protocol::normalize_reference(reference)?;
    let layout = Layout::open(&source.dir).map_err(|e| AlsError::Other(format!("{e}")))?;
    let image = layout.resolve(source.tag.as_deref(), platform).map_err(|e| AlsError::Other(format!("{e}")))?;
    let layers_read = crate::oci::import::import_layers(repo, &layout, &image, &BlobReader)
        .map_err(|e| AlsError::Other(format!("importing the layers: {e:#}")))?;
    let seal = crate::store::repo::verity_supported(&repo.root().join(STATE_DIR).join("tmp"));
    let mut refs = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let what = format!("layer {} ({})", i + 1, layer.digest);
        let facts = read_facts(repo, &layout, layer, &what)?;
        let toc = protocol::toc_digest(&layer.annotations)
            .filter(|_| protocol::toc_verified(&layer.annotations, &facts.format, &facts.checked));
        if !als.has_layer(&layer.digest) {
            let info = info_json(layer, &facts, toc.as_deref());
            let blob =
                layout.open_blob(&what, &layer.digest, layer.size).map_err(|e| AlsError::Other(format!("{e}")))?;
            als.add_layer(&layer.digest, blob, layer.size, &info.to_bytes())?;
        }
        let lt = repo.layer_tree(&layer.digest)?;
        // Implied directories take their metadata from the layers below (flattened).
        let lower = if i > 0 && lt.tree.nodes.iter().any(|n| n.implicit) {
            Some(flatten_prefix(repo, &image, i)?)
        } else {
            None
        };
        let tree = super::convert::overlay_form(&lt.tree, &lt.external_links, lower.as_ref(), Limits::default())
            .map_err(|source| AlsError::Convert { layer: what.clone(), source })?;
        let (digest, sealed) = als.add_image(repo, tree, seal)?;
        refs.push(LayerRef { blob: layer.digest.to_string(), toc, image: digest, image_verity: sealed });
    }
    let dir = std::path::absolute(&source.dir).unwrap_or_else(|_| source.dir.clone());
    let src = match &source.tag {
        Some(t) => format!("oci:{}:{t}", dir.display()),
        None => format!("oci:{}", dir.display()),
    };
    let rec = RefRecord {
        root: root.to_path_buf(),
        reference: reference.clone(),
        source: src,
        manifest: image.manifest_digest.to_string(),
        layers: refs,
        added: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    // Replacing what REF served before (a new image under the same tag) must not pull a
    // layer from under a container: refused while one of the dropped layers is in use.
    let mut refs_after: Vec<RefRecord> =
        als.refs()?.into_iter().filter(|r| !(r.root == root && r.reference == reference)).collect();
    refs_after.push(rec.clone());
    if let Some((path, by)) = first_busy(als, root, &desired_from(als, &refs_after, root)?)? {
        return Err(AlsError::Busy { path, by });
    }
    als.put_ref(&rec)?;
    let sync = sync_root(repo, als, root, eng, false)?;
    Ok(Added {
        reference,
        manifest: image.manifest_digest,
        layers: rec.layers.iter().map(|l| (l.blob.clone(), l.toc.clone())).collect(),
        layers_read,
        sync,
    })
}

/// The flattened tree of the first `n` layers of `image` (for implied directories).
fn flatten_prefix(repo: &Repo, image: &Image, n: usize) -> Result<Tree, AlsError> {
    let mut trees: Vec<LayerTree> = Vec::with_capacity(n);
    for l in &image.layers[..n] {
        trees.push(repo.layer_tree(&l.digest)?);
    }
    flatten(trees, Limits::default()).map_err(|e| AlsError::Other(format!("flattening the layers below: {e}")))
}

/// What the layer reader recorded about a stored layer; for a layer stored before that was
/// recorded, the blob is read again (sandboxed, into a scratch image that is dropped).
fn read_facts(repo: &Repo, layout: &Layout, layer: &Layer, what: &str) -> Result<ReadFacts, AlsError> {
    if let Some(f) = repo.layer_info(&layer.digest)?.read {
        return Ok(f);
    }
    let blob = layout.open_blob(what, &layer.digest, layer.size).map_err(|e| AlsError::Other(format!("{e}")))?;
    // tmp/ of STORE/als belongs to the exclusive holder of its lock (the caller).
    let scratch = repo.root().join(STATE_DIR).join("tmp").join(format!("measure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch).map_err(|e| AlsError::Io { path: scratch.clone(), step: "creating", source: e })?;
    let out = scratch.join("layer.cfs");
    let r = crate::oci::import::LayerReader::read_layer(&BlobReader, blob, layer, &repo.objects_dir(), &out);
    let _ = std::fs::remove_dir_all(&scratch);
    let extras = r.map_err(|e| AlsError::Other(format!("{what}: reading the blob again for its size: {e:#}")))?;
    extras.read.ok_or_else(|| AlsError::Other(format!("{what}: the layer reader reported no size")))
}

/// The `info` of a layer (see [`LayerInfoJson`] for what each field is for).
fn info_json(layer: &Layer, facts: &ReadFacts, toc: Option<&str>) -> LayerInfoJson {
    let mut flags = std::collections::BTreeMap::new();
    if toc.is_some() {
        flags.insert(protocol::FLAG_EXPECTED_DIFFID.to_string(), layer.diff_id.to_string());
    }
    LayerInfoJson {
        compressed_digest: layer.digest.to_string(),
        compressed_size: i64::try_from(layer.size).unwrap_or(i64::MAX),
        diff_digest: layer.diff_id.to_string(),
        diff_size: i64::try_from(facts.diff_size).unwrap_or(i64::MAX),
        compression: protocol::compression_code(layer.compression),
        toc_digest: toc.map(str::to_owned),
        flags,
    }
}

/// What `root` should hold according to the records.
pub fn desired_for(als: &AlsState, root: &Path) -> Result<Desired, AlsError> {
    let refs = als.refs()?;
    desired_from(als, &refs, root)
}

fn desired_from(als: &AlsState, refs: &[RefRecord], root: &Path) -> Result<Desired, AlsError> {
    let spec = |l: &LayerRef| -> Result<LayerSpec, AlsError> {
        let blob = Sha256::parse(&l.blob).map_err(AlsError::Other)?;
        let dir = als.layer_dir(&blob);
        let info_path = dir.join("info");
        let info = crate::store::repo::read_capped(&info_path, 1 << 20)?;
        let verity_digest = if l.image_verity {
            Some(Sha256::from_hex(&l.image).ok_or_else(|| AlsError::Other(format!("bad image digest {}", l.image)))?.0)
        } else {
            None
        };
        Ok(LayerSpec { info, blob: dir.join("blob"), image: als.image_path(&l.image), verity_digest })
    };
    root::desired(refs, root, &spec)
}

/// Where `root`'s references are served: the root itself (root's podman) and each view of it.
fn targets(als: &AlsState, root: &Path) -> Result<Vec<(PathBuf, Option<ViewOf>)>, AlsError> {
    let mut v = vec![(root.to_path_buf(), None)];
    for view in als.views()?.into_iter().filter(|v| v.root == root) {
        v.push((view.target.clone(), Some(view.view_of())));
    }
    Ok(v)
}

/// Make `root` and its views hold `want`.
fn sync_targets(
    repo: &Repo,
    als: &AlsState,
    root: &Path,
    want: &Desired,
    eng: &Engine<'_>,
    force: bool,
) -> Result<SyncReport, AlsError> {
    let mut total = SyncReport::default();
    for (t, view) in targets(als, root)? {
        let mode = SyncMode { force, keep_mounted: view.is_some() };
        total.add(&root::sync(&t, want, eng, view.as_ref(), repo.root(), mode)?);
    }
    Ok(total)
}

/// The first `diff` mount of `root` or its views that is in use although `want` drops it.
fn first_busy(als: &AlsState, root: &Path, want: &Desired) -> Result<Option<(PathBuf, String)>, AlsError> {
    for (t, _) in targets(als, root)? {
        if let Some(b) = root::busy_layers(&t, want)?.into_iter().next() {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Make `root` (and its views) match the records.
pub fn sync_root(
    repo: &Repo,
    als: &AlsState,
    root: &Path,
    eng: &Engine<'_>,
    force: bool,
) -> Result<SyncReport, AlsError> {
    let want = desired_for(als, root)?;
    sync_targets(repo, als, root, &want, eng, force)
}

/// What `als rm` did.
#[derive(Debug, Clone, Default)]
pub struct Removed {
    pub sync: SyncReport,
    /// ALS layer directories and images no reference needs any more, removed from the store.
    pub pruned: (usize, usize),
}

/// Remove `reference` from `root`: refused (nothing changed) while a layer only it uses is
/// mounted by a container, unless `force`. `repo` must be held exclusively (the caller then
/// collects garbage).
pub fn rm(
    repo: &Repo,
    als: &AlsState,
    root: &Path,
    reference: &str,
    eng: &Engine<'_>,
    force: bool,
) -> Result<Removed, AlsError> {
    let reference = protocol::normalize_reference(reference)?;
    let refs = als.refs()?;
    if !refs.iter().any(|r| r.root == root && r.reference == reference) {
        return Err(AlsError::Other(format!("{reference} is not in the ALS root {}", root.display())));
    }
    let rest: Vec<RefRecord> = refs.into_iter().filter(|r| !(r.root == root && r.reference == reference)).collect();
    let want = desired_from(als, &rest, root)?;
    if !force {
        if let Some((path, by)) = first_busy(als, root, &want)? {
            return Err(AlsError::Busy { path, by });
        }
    }
    als.remove_ref(root, &reference)?;
    let sync = sync_targets(repo, als, root, &want, eng, force)?;
    // With --force a detached mount may still read its image and objects: keep them for gc.
    let pruned = if force { (0, 0) } else { als.prune()? };
    Ok(Removed { sync, pruned })
}

/// Every ALS root and view the records name, mounted and complete (after a reboot).
pub fn mount_all(repo: &Repo, als: &AlsState, eng: &Engine<'_>) -> Result<Vec<(PathBuf, SyncReport)>, AlsError> {
    let mut roots: BTreeSet<PathBuf> = als.refs()?.into_iter().map(|r| r.root).collect();
    roots.extend(als.views()?.into_iter().map(|v| v.root));
    let mut out = Vec::new();
    for r in roots {
        let rep = sync_root(repo, als, &r, eng, false)?;
        out.push((r, rep));
    }
    Ok(out)
}

/// Every ALS root and view the records name, unmounted (the tmpfs and mounts gone; the records
/// stay, `mount_all` brings them back). A layer in use is refused unless `force`.
pub fn umount_all(
    als: &AlsState,
    repo: &Repo,
    eng: &Engine<'_>,
    force: bool,
) -> Result<Vec<(PathBuf, SyncReport)>, AlsError> {
    let mut roots: BTreeSet<PathBuf> = als.refs()?.into_iter().map(|r| r.root).collect();
    roots.extend(als.views()?.into_iter().map(|v| v.root));
    let empty = Desired::default();
    if !force {
        for r in &roots {
            if let Some((path, by)) = first_busy(als, r, &empty)? {
                return Err(AlsError::Busy { path, by });
            }
        }
    }
    let mut out = Vec::new();
    for r in roots {
        let mut total = SyncReport::default();
        for (t, view) in targets(als, &r)? {
            let mode = SyncMode { force, keep_mounted: false };
            total.add(&root::sync(&t, &empty, eng, view.as_ref(), repo.root(), mode)?);
        }
        out.push((r, total));
    }
    Ok(out)
}

/// Create (or refresh) `user`'s view of `root` at `target` (default `/run/cfsmount-als/USER`):
/// the same references, `diff` mounts idmapped with the user's rootless podman mapping.
/// `approve` sees the view and its mount count (the tmpfs + one per layer) before anything is
/// created (the setuid helper's gate; root passes `|_, _| Ok(())`).
pub fn view(
    repo: &Repo,
    als: &AlsState,
    root: &Path,
    user: &str,
    target: Option<&Path>,
    eng: &Engine<'_>,
    approve: &dyn Fn(&ViewRecord, u64) -> Result<(), AlsError>,
) -> Result<(ViewRecord, SyncReport), AlsError> {
    let (name, uid, gid) = view::lookup_user(user)?;
    let target = match target {
        Some(t) => {
            std::path::absolute(t).map_err(|e| AlsError::Io { path: t.into(), step: "absolute path", source: e })?
        }
        None => Path::new(view::VIEWS_DIR).join(&name),
    };
    view::check_target_path(&target)?;
    if target == root || target.starts_with(root) || root.starts_with(&target) {
        return Err(AlsError::Other(format!("a view must not overlap its ALS root {}", root.display())));
    }
    let rec = ViewRecord {
        root: root.to_path_buf(),
        target: target.clone(),
        user: name.clone(),
        uid,
        gid,
        uid_map: view::podman_mapping(Path::new("/etc/subuid"), &name, uid, uid)?,
        gid_map: view::podman_mapping(Path::new("/etc/subgid"), &name, uid, gid)?,
    };
    if let Some(other) = als.views()?.into_iter().find(|v| v.target == target && v != &rec) {
        if other.uid != uid || other.root != rec.root {
            return Err(AlsError::Other(format!(
                "{} is already the view of {} for {}: remove that first",
                target.display(),
                other.root.display(),
                other.user
            )));
        }
    }
    let want = desired_for(als, root)?;
    approve(&rec, 1 + want.layers.len() as u64)?;
    if !target.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o755).recursive(true).create(&target).map_err(|e| AlsError::Io {
            path: target.clone(),
            step: "creating",
            source: e,
        })?;
    }
    als.put_view(&rec)?;
    let mode = SyncMode { force: false, keep_mounted: true };
    let rep = root::sync(&target, &want, eng, Some(&rec.view_of()), repo.root(), mode)?;
    Ok((rec, rep))
}

/// Remove the view at `target`: refused while one of its layers is in use unless `force`, or
/// when `approve` refuses the view (the setuid helper's gate: only the caller's own).
pub fn view_rm(
    repo: &Repo,
    als: &AlsState,
    target: &Path,
    eng: &Engine<'_>,
    force: bool,
    approve: &dyn Fn(&ViewRecord) -> Result<(), AlsError>,
) -> Result<SyncReport, AlsError> {
    let target = std::path::absolute(target).map_err(|e| AlsError::Io {
        path: target.into(),
        step: "absolute path",
        source: e,
    })?;
    let Some(rec) = als.views()?.into_iter().find(|v| v.target == target) else {
        return Err(AlsError::Other(format!("no view at {}", target.display())));
    };
    approve(&rec)?;
    let empty = Desired::default();
    if !force {
        if let Some((path, by)) = root::busy_layers(&target, &empty)?.into_iter().next() {
            return Err(AlsError::Busy { path, by });
        }
    }
    let rep =
        root::sync(&target, &empty, eng, Some(&rec.view_of()), repo.root(), SyncMode { force, keep_mounted: false })?;
    als.remove_view(&rec)?;
    // The default place is ours: its (now empty) directory goes too.
    if target.parent() == Some(Path::new(view::VIEWS_DIR)) {
        let _ = std::fs::remove_dir(&target);
    }
    Ok(rep)
}
