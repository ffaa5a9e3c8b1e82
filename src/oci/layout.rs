//! OCI image layout reader: `oci-layout`, `index.json`, image indexes (with platforms),
//! manifests, configs and layer descriptors, every one verified before it is believed.
//!
//! Rules (see docs/oci.md):
//! - Every file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` below the
//!   layout directory: a symlink (in `blobs/sha256/` or anywhere) that leaves the layout, an
//!   absolute symlink and `..` are refused (EXDEV); symlinks that stay inside are followed.
//!   Blobs must be regular files (opened `O_NONBLOCK`, so a FIFO cannot block us).
//! - JSON documents (index.json, indexes, manifests, configs) are read up to
//!   [`MAX_JSON_BYTES`] (containers/image's limit for manifests and configs), and a blob's
//!   bytes must have the size and the sha256 its descriptor gives BEFORE they are parsed.
//! - Only sha256 digests; media types are known or refused; a document's own `mediaType`, when
//!   present, must equal its descriptor's; a document that has both `manifests` and
//!   `layers`/`config` is refused (an index that is also a manifest).
//! - Nested indexes are followed up to [`MAX_INDEX_DEPTH`] with a visited set: a loop is
//!   refused by name. A manifest that lists one layer digest twice is refused. The config's
//!   `rootfs.type` must be `layers` and `rootfs.diff_ids` must have one sha256 per layer.
//! - Every layer blob must exist and have its descriptor's size before anything is imported;
//!   its sha256 and diff_id are checked by the layer reader while it reads it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use thiserror::Error;

use super::Sha256;

/// Largest JSON document read from a layout (index.json, index, manifest, config).
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// Deepest chain of image indexes followed from index.json.
pub const MAX_INDEX_DEPTH: usize = 8;
/// Most layers an image may have.
pub const MAX_LAYERS: usize = 1000;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// The annotation that names a tag in index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How a layer blob is compressed, from its media type (zstd:chunked and eStargz are told
/// apart from plain zstd/gzip by the layer reader, from annotations and footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type, or `None` for a media type cfsmount cannot read.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Compression::None
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        _ => return None,
    })
}

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("{}: {step}: {source}", path.display())]
    Io { path: PathBuf, step: &'static str, source: std::io::Error },
    #[error("{}: not an OCI image layout: {reason}", path.display())]
    NotLayout { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{what}: blob {digest} is missing from the layout")]
    MissingBlob { what: String, digest: Sha256 },
    #[error("{what}: {path}: leaves the layout directory (symlink or '..' pointing outside)")]
    Escapes { what: String, path: String },
    #[error("{what} {digest}: content has sha256 {actual}")]
    DigestMismatch { what: String, digest: Sha256, actual: Sha256 },
    #[error("{what} {digest}: blob is {actual} bytes but the descriptor says {expected}")]
    SizeMismatch { what: String, digest: Sha256, expected: u64, actual: u64 },
    #[error("{what}: media type {media_type:?} is not one cfsmount can read")]
    MediaType { what: String, media_type: String },
    #[error("index loop: {digest} is reached again through its own indexes")]
    Loop { digest: Sha256 },
    #[error("manifest {manifest}: layer {digest} is listed twice")]
    LayerTwice { manifest: Sha256, digest: Sha256 },
    #[error("no image tagged {tag:?} in the layout (tags: {available})")]
    NoSuchTag { tag: String, available: String },
    #[error("{0}")]
    Choose(String),
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> LayoutError {
    LayoutError::Invalid { what: what.into(), reason: reason.into() }
}

/// `oci:DIR[:TAG]`, as skopeo and containers/image spell it (the first `:` after `oci:`
/// separates DIR from TAG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, LayoutError> {
        let rest = s.strip_prefix("oci:").ok_or_else(|| invalid(s, "expected oci:DIR[:TAG]"))?;
        let (dir, tag) = match rest.split_once(':') {
            Some((d, t)) => (d, Some(t)),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(invalid(s, "empty layout directory"));
        }
        if let Some(t) = tag {
            // The OCI ref.name grammar, loosely: printable, no spaces or slashes at the ends.
            if t.is_empty() || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(s, "tag must be 1-256 printable ASCII characters"));
            }
        }
        Ok(Reference { dir: PathBuf::from(dir), tag: tag.map(str::to_owned) })
    }
}

/// A platform to choose from an image index (`os/arch[/variant]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in Go's names (linux/amd64, linux/arm64/v8...).
    pub fn running() -> Platform {
        let arch = Arch::default().to_string();
        let variant = match arch.as_str() {
            "arm64" => Some("v8".to_owned()),
            _ => None,
        };
        Platform { os: Os::default().to_string(), arch, variant }
    }

    pub fn parse(s: &str) -> Result<Platform, LayoutError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(invalid(format!("--platform {s}"), "expected OS/ARCH[/VARIANT], e.g. linux/amd64"));
        }
        Ok(Platform { os: parts[0].into(), arch: parts[1].into(), variant: parts.get(2).map(|v| (*v).to_owned()) })
    }

    /// Whether an index entry's (or config's) os/arch/variant is this platform. A variant is
    /// compared only when this platform names one (arm64's `v8` is also its default).
    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.arch != arch {
            return false;
        }
        match (&self.variant, variant) {
            (None, _) => true,
            (Some(w), Some(v)) => w == v,
            (Some(w), None) => self.arch == "arm64" && w == "v8",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One layer of a resolved image, as its manifest and config describe it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: Sha256,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    pub annotations: BTreeMap<String, String>,
    /// The config's `rootfs.diff_ids` entry for this layer.
    pub diff_id: Sha256,
}

/// An image picked from a layout, with its manifest and config verified and parsed.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest_digest: Sha256,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Sha256,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    /// `os/arch[/variant]` from the config.
    pub platform: String,
    /// Layers from the lowest (applied first) to the topmost.
    pub layers: Vec<Layer>,
}

/// An open OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    dir: OwnedFd,
    path: PathBuf,
    /// Digest checking; only the tests of the walk itself switch it off.
    verify: bool,
}

impl Layout {
    /// Open DIR and check its `oci-layout` file (`imageLayoutVersion` 1.x).
    pub fn open(path: &Path) -> Result<Layout, LayoutError> {
        use rustix::fs::{Mode, OFlags};
        let io = |step, source| LayoutError::Io { path: path.to_path_buf(), step, source };
        let dir = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io("opening the layout directory", e.into()))?;
        let l = Layout { dir, path: path.to_path_buf(), verify: true };
        let bytes = l.read_capped("oci-layout", "oci-layout", 4096).map_err(|e| match e {
            LayoutError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                LayoutError::NotLayout { path: path.to_path_buf(), reason: "no oci-layout file".into() }
            }
            e => e,
        })?;
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let h: Header = serde_json::from_slice(&bytes)
            .map_err(|e| LayoutError::NotLayout { path: path.to_path_buf(), reason: format!("oci-layout: {e}") })?;
        if h.version.split('.').next() != Some("1") {
            return Err(LayoutError::NotLayout {
                path: path.to_path_buf(),
                reason: format!("imageLayoutVersion {:?} is not 1.x", h.version),
            });
        }
        Ok(l)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open `rel` below the layout without ever leaving it.
    fn open_beneath(&self, what: &str, rel: &str) -> Result<File, LayoutError> {
        use rustix::fs::{OFlags, ResolveFlags};
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match crate::below::open_below(self.dir.as_fd(), rel, OFlags::RDONLY | OFlags::NONBLOCK, resolve) {
            Ok(fd) => Ok(File::from(fd)),
            Err(rustix::io::Errno::XDEV) => Err(LayoutError::Escapes { what: what.into(), path: rel.into() }),
            Err(e) => Err(LayoutError::Io { path: self.path.join(rel), step: "opening", source: e.into() }),
        }
    }

    fn read_capped(&self, what: &str, rel: &str, cap: u64) -> Result<Vec<u8>, LayoutError> {
        let f = self.open_beneath(what, rel)?;
        let io = |step, source| LayoutError::Io { path: self.path.join(rel), step, source };
        let md = f.metadata().map_err(|e| io("fstat", e))?;
        if !md.is_file() {
            return Err(invalid(format!("{what} ({rel})"), "not a regular file"));
        }
        let mut buf = Vec::with_capacity(md.len().min(cap) as usize);
        (&f).take(cap + 1).read_to_end(&mut buf).map_err(|e| io("reading", e))?;
        if buf.len() as u64 > cap {
            return Err(invalid(format!("{what} ({rel})"), format!("larger than the limit of {cap} bytes")));
        }
        Ok(buf)
    }

    /// Open the blob `digest` (a regular file below `blobs/sha256/`) and check its size.
    pub fn open_blob(&self, what: &str, digest: &Sha256, size: u64) -> Result<File, LayoutError> {
        let rel = format!("blobs/sha256/{}", digest.hex());
        let f = self.open_beneath(what, &rel).map_err(|e| match e {
            LayoutError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                LayoutError::MissingBlob { what: what.into(), digest: *digest }
            }
            e => e,
        })?;
        let md = f.metadata().map_err(|e| LayoutError::Io { path: self.path.join(&rel), step: "fstat", source: e })?;
        if !md.is_file() {
            return Err(invalid(format!("{what} {digest}"), "blob is not a regular file"));
        }
        if md.len() != size {
            return Err(LayoutError::SizeMismatch {
                what: what.into(),
                digest: *digest,
                expected: size,
                actual: md.len(),
            });
        }
        Ok(f)
    }

    /// Read a JSON blob whole, checking its size and sha256 against the descriptor.
    fn read_blob(&self, what: &str, digest: &Sha256, size: u64) -> Result<Vec<u8>, LayoutError> {
        if size > MAX_JSON_BYTES {
            return Err(invalid(
                format!("{what} {digest}"),
                format!("descriptor size {size} is over {MAX_JSON_BYTES}"),
            ));
        }
        let f = self.open_blob(what, digest, size)?;
        let mut buf = Vec::with_capacity(size as usize);
        (&f).take(size + 1).read_to_end(&mut buf).map_err(|e| LayoutError::Io {
            path: self.path.join(format!("blobs/sha256/{}", digest.hex())),
            step: "reading",
            source: e,
        })?;
        if buf.len() as u64 != size {
            return Err(LayoutError::SizeMismatch {
                what: what.into(),
                digest: *digest,
                expected: size,
                actual: buf.len() as u64,
            });
        }
        let actual = Sha256::of(&buf);
        if self.verify && actual != *digest {
            return Err(LayoutError::DigestMismatch { what: what.into(), digest: *digest, actual });
        }
        Ok(buf)
    }

    /// The tags (`org.opencontainers.image.ref.name`) that index.json lists.
    pub fn tags(&self) -> Result<Vec<String>, LayoutError> {
        let index = self.top_index()?;
        Ok(index.manifests().iter().filter_map(ref_name).collect())
    }

    fn top_index(&self) -> Result<ImageIndex, LayoutError> {
        let bytes = self.read_capped("index.json", "index.json", MAX_JSON_BYTES)?;
        let index: ImageIndex = parse_doc("index.json", &bytes, MT_OCI_INDEX, None)?;
        Ok(index)
    }

    /// Pick the image named by `tag` (or the only one), choosing `platform` (default: the
    /// running one) from image indexes; verify and parse manifest and config; check layers.
    pub fn resolve(&self, tag: Option<&str>, platform: Option<&Platform>) -> Result<Image, LayoutError> {
        let index = self.top_index()?;
        let entries: Vec<&Descriptor> = match tag {
            Some(t) => index.manifests().iter().filter(|d| ref_name(d).as_deref() == Some(t)).collect(),
            None => index.manifests().iter().collect(),
        };
        let tags = || {
            let v: Vec<String> = index.manifests().iter().filter_map(ref_name).collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        let top = match (entries.as_slice(), tag) {
            ([one], _) => *one,
            ([], Some(t)) => return Err(LayoutError::NoSuchTag { tag: t.into(), available: tags() }),
            ([], None) => return Err(invalid("index.json", "lists no image")),
            (_, Some(t)) => return Err(invalid("index.json", format!("tag {t:?} names more than one image"))),
            (_, None) => {
                return Err(LayoutError::Choose(format!(
                    "the layout holds {} images: name one with oci:DIR:TAG (tags: {})",
                    entries.len(),
                    tags()
                )))
            }
        };
        let wanted = platform.cloned().unwrap_or_else(Platform::running);
        let mut visited = HashSet::new();
        let (mdigest, mtype, mbytes, manifest) = self.descend(top, &wanted, 0, &mut visited)?;
        self.image_from_manifest(mdigest, mtype, mbytes, &manifest, platform)
    }

    /// Follow `desc` through image indexes down to a manifest.
    fn descend(
        &self,
        desc: &Descriptor,
        wanted: &Platform,
        depth: usize,
        visited: &mut HashSet<Sha256>,
    ) -> Result<(Sha256, String, Vec<u8>, ImageManifest), LayoutError> {
        let mt = desc.media_type().to_string();
        let digest = descriptor_digest("index entry", desc)?;
        if !visited.insert(digest) {
            return Err(LayoutError::Loop { digest });
        }
        if depth >= MAX_INDEX_DEPTH {
            return Err(invalid(
                format!("image index {digest}"),
                format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
            ));
        }
        match mt.as_str() {
            MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => {
                let bytes = self.read_blob("manifest", &digest, desc.size())?;
                let m: ImageManifest = parse_doc(&format!("manifest {digest}"), &bytes, &mt, Some(Kind::Manifest))?;
                Ok((digest, mt, bytes, m))
            }
            MT_OCI_INDEX | MT_DOCKER_LIST => {
                let bytes = self.read_blob("image index", &digest, desc.size())?;
                let idx: ImageIndex = parse_doc(&format!("image index {digest}"), &bytes, &mt, Some(Kind::Index))?;
                let next = pick_platform(&idx, wanted).map_err(|avail| {
                    LayoutError::Choose(format!(
                        "image index {digest} has no image for {wanted} (it has: {avail}); choose one with --platform"
                    ))
                })?;
                self.descend(next, wanted, depth + 1, visited)
            }
            _ => Err(LayoutError::MediaType { what: format!("index entry {digest}"), media_type: mt }),
        }
    }

    fn image_from_manifest(
        &self,
        manifest_digest: Sha256,
        manifest_media_type: String,
        manifest_bytes: Vec<u8>,
        m: &ImageManifest,
        platform: Option<&Platform>,
    ) -> Result<Image, LayoutError> {
        let what = format!("manifest {manifest_digest}");
        if m.schema_version() != 2 {
            return Err(invalid(&what, format!("schemaVersion {} is not 2", m.schema_version())));
        }
        let cdesc = m.config();
        let cmt = cdesc.media_type().to_string();
        if cmt != MT_OCI_CONFIG && cmt != MT_DOCKER_CONFIG {
            return Err(LayoutError::MediaType { what: format!("{what}: config"), media_type: cmt });
        }
        let config_digest = descriptor_digest(&format!("{what}: config"), cdesc)?;
        let config_bytes = self.read_blob("config", &config_digest, cdesc.size())?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(format!("config {config_digest}"), e.to_string()))?;
        let cwhat = format!("config {config_digest}");
        let (os, arch, variant) =
            (config.os().to_string(), config.architecture().to_string(), config.variant().as_deref());
        if let Some(p) = platform {
            if !p.matches(&os, &arch, variant) {
                return Err(LayoutError::Choose(format!("{cwhat}: the image is for {os}/{arch}, not {p}")));
            }
        }
        let platform_s = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        let rootfs = config.rootfs();
        if rootfs.typ() != "layers" {
            return Err(invalid(&cwhat, format!("rootfs.type {:?} is not \"layers\"", rootfs.typ())));
        }
        let descs = m.layers();
        if descs.len() > MAX_LAYERS {
            return Err(invalid(&what, format!("{} layers, more than the limit of {MAX_LAYERS}", descs.len())));
        }
        if rootfs.diff_ids().len() != descs.len() {
            return Err(invalid(
                &cwhat,
                format!("rootfs.diff_ids has {} entries for {} layers", rootfs.diff_ids().len(), descs.len()),
            ));
        }
        let mut seen = HashSet::new();
        let mut layers = Vec::with_capacity(descs.len());
        for (i, (d, diff)) in descs.iter().zip(rootfs.diff_ids()).enumerate() {
            let lwhat = format!("{what}: layer {}", i + 1);
            let digest = descriptor_digest(&lwhat, d)?;
            if !seen.insert(digest) {
                return Err(LayoutError::LayerTwice { manifest: manifest_digest, digest });
            }
            let media_type = d.media_type().to_string();
            let compression = layer_compression(&media_type)
                .ok_or_else(|| LayoutError::MediaType { what: lwhat.clone(), media_type: media_type.clone() })?;
            let diff_id = Sha256::parse(diff).map_err(|r| invalid(format!("{cwhat}: rootfs.diff_ids[{i}]"), r))?;
            // Present, a regular file and of the right size now, before anything is imported.
            self.open_blob(&lwhat, &digest, d.size())?;
            let annotations = d.annotations().clone().unwrap_or_default().into_iter().collect();
            layers.push(Layer { digest, size: d.size(), media_type, compression, annotations, diff_id });
        }
        Ok(Image {
            manifest_digest,
            manifest_media_type,
            manifest_bytes,
            config_digest,
            config_bytes,
            config,
            platform: platform_s,
            layers,
        })
    }
}

fn ref_name(d: &Descriptor) -> Option<String> {
    d.annotations().as_ref()?.get(REF_NAME).cloned()
}

fn descriptor_digest(what: &str, d: &Descriptor) -> Result<Sha256, LayoutError> {
    Sha256::parse(d.digest().as_ref()).map_err(|r| invalid(what, r))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

/// Parse a layout JSON document, checking that it is unambiguously the kind its descriptor
/// says (its own `mediaType`, if any, equal to `expected_mt`; no index/manifest hybrid).
fn parse_doc<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
    expected_mt: &str,
    kind: Option<Kind>,
) -> Result<T, LayoutError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let p: Probe = serde_json::from_slice(bytes).map_err(|e| invalid(what, e.to_string()))?;
    if let Some(mt) = &p.media_type {
        // index.json (no descriptor) may call itself an index; documents named by a
        // descriptor must agree with it.
        if mt != expected_mt {
            return Err(invalid(what, format!("mediaType {mt:?} differs from its descriptor's {expected_mt:?}")));
        }
    }
    let is_index = p.manifests.is_some();
    let is_manifest = p.layers.is_some() || p.config.is_some();
    match kind {
        _ if is_index && is_manifest => return Err(invalid(what, "has both manifests and layers/config")),
        Some(Kind::Manifest) if is_index => return Err(invalid(what, "is an image index, not a manifest")),
        Some(Kind::Index) if is_manifest => return Err(invalid(what, "is a manifest, not an image index")),
        None if is_manifest => return Err(invalid(what, "is a manifest, not an image index")),
        _ => {}
    }
    serde_json::from_slice(bytes).map_err(|e| invalid(what, e.to_string()))
}

/// The first entry of `idx` for `wanted` (indexes and manifests only), or the list of the
/// platforms it has.
fn pick_platform<'a>(idx: &'a ImageIndex, wanted: &Platform) -> Result<&'a Descriptor, String> {
    let mut avail = Vec::new();
    for d in idx.manifests() {
        let mt = d.media_type().to_string();
        if !matches!(mt.as_str(), MT_OCI_MANIFEST | MT_DOCKER_MANIFEST | MT_OCI_INDEX | MT_DOCKER_LIST) {
            continue;
        }
        let Some(p) = d.platform() else { continue };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        if wanted.matches(&os, &arch, p.variant().as_deref()) {
            return Ok(d);
        }
        avail.push(match p.variant() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
    }
    Err(if avail.is_empty() { "no platform entries".into() } else { avail.join(", ") })
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
