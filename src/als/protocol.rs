//! What containers/storage reads from an Additional Layer Store, as its source says (checked
//! against containers/storage 1.43 = Debian bookworm's podman 4.3.1, and 1.54+ with the
//! containers/image that calls it; docs/als.md has the references):
//!
//! - the layer directory `<store>/<base64(ref)>/<digest>` (`getAdditionalLayerPath`:
//!   `path.Join(store, base64.StdEncoding(ref), digest.String())`, so a `/` inside the base64
//!   text makes nested directories and `path.Join` drops empty components);
//! - the keys: the compressed blob digest (≤ 1.53), and the TOC digest (≥ 1.54, only for
//!   layers that have one, as `pkg/chunked/toc.GetTOCDigest` derives it from the annotations);
//! - `info`: the JSON of c/storage's `Layer` ([`LayerInfoJson`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::oci::layout::Compression;

/// zstd:chunked TOC digest annotation (`minimal.ManifestChecksumKey`).
pub const ANN_ZSTD_CHUNKED_TOC: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// eStargz TOC digest annotation (`estargz.TOCJSONDigestAnnotation`).
pub const ANN_ESTARGZ_TOC: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The `Layer.Flags` key c/image (≥ 5.31) reads back as the layer's expected diff_id when a
/// layer is identified by its TOC (`expectedLayerDiffIDFlag`).
pub const FLAG_EXPECTED_DIFFID: &str = "expected-layer-diffid";

/// containers/storage's `Layer` as `info` carries it. Field names and types are c/storage's
/// JSON tags (layers.go); the fields c/storage overwrites (`id`, `parent`, `created`) and the
/// ones that do not apply are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfoJson {
    /// `CompressedDigest`: the blob digest. Indexes the layer by compressed digest.
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_digest: String,
    /// `CompressedSize`: c/image (4.3.1's 5.23 and newer) returns it as the reused blob's size.
    #[serde(rename = "compressed-size")]
    pub compressed_size: i64,
    /// `UncompressedDigest` (the diff_id): 5.23 computes layer and image IDs from it; newer
    /// c/image reports it as the layer digest on push.
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    /// `UncompressedSize`: a negative or missing size makes `podman images`/`image inspect`
    /// of 4.3.1 fail ("size for layer ... is unknown").
    #[serde(rename = "diff-size")]
    pub diff_size: i64,
    /// `CompressionType` (`archive.Compression`: 0 none, 1 bzip2, 2 gzip, 3 xz, 4 zstd): on
    /// push, `blob` is decompressed when this differs from what the caller asked for.
    pub compression: u8,
    /// `TOCDigest` (≥ 1.54): must equal the key the layer was looked up by.
    #[serde(rename = "toc-digest", default, skip_serializing_if = "Option::is_none")]
    pub toc_digest: Option<String>,
    /// `Flags`: `expected-layer-diffid` for layers with a TOC digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, String>,
}

/// `archive.Compression` of a layer media type's compression.
pub fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Gzip => 2,
        Compression::Zstd => 4,
    }
}

impl LayerInfoJson {
    /// The bytes of `info` (compact JSON and a newline; c/storage decodes it with
    /// `json.NewDecoder`, which ignores what follows the first value).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("info serializes");
        v.push(b'\n');
        v
    }
}

/// The TOC digest containers/storage ≥ 1.54 looks a layer up by, from its annotations, the way
/// `toc.GetTOCDigest` derives it: the eStargz annotation or the zstd:chunked one; both at once
/// is an error there (the pull fails), so no TOC key is served then; an unparsable value
/// likewise. `None`: the layer has no TOC key.
pub fn toc_digest(annotations: &BTreeMap<String, String>) -> Option<String> {
    let a = annotations.get(ANN_ESTARGZ_TOC);
    let b = annotations.get(ANN_ZSTD_CHUNKED_TOC);
    let d = match (a, b) {
        (Some(_), Some(_)) | (None, None) => return None,
        (Some(d), None) | (None, Some(d)) => d,
    };
    crate::oci::Sha256::parse(d).ok().map(|d| d.to_string())
}

/// Whether the layer reader authenticated the TOC digest that [`toc_digest`] derives: it checked
/// the annotation against the TOC in the blob (its `checked` list names the check). A TOC digest
/// nobody checked is never served: c/image ≥ 5.31 identifies layers by it.
pub fn toc_verified(annotations: &BTreeMap<String, String>, format: &str, checked: &[String]) -> bool {
    let has = |c: &str| checked.iter().any(|x| x == c);
    if annotations.contains_key(ANN_ESTARGZ_TOC) {
        // An eStargz blob checks it as its TOC digest; a zstd:chunked blob carrying the
        // eStargz annotation checks it against its uncompressed TOC.
        (format.starts_with("eStargz") && has("TOC digest")) || has("stargz TOC digest")
    } else if annotations.contains_key(ANN_ZSTD_CHUNKED_TOC) {
        format.starts_with("zstd:chunked") && has("TOC digest")
    } else {
        false
    }
}

/// The path components of `base64(ref)` below the store, as Go's `path.Join` leaves them:
/// the standard alphabet with padding, split at the `/` it may contain, empty components
/// dropped (the alphabet has no `.`, so no component is `.` or `..`).
pub fn ref_components(reference: &str) -> Vec<String> {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(reference.as_bytes());
    b.split('/').filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

/// Why a reference is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("image reference {reference:?}: {reason}")]
pub struct BadReference {
    pub reference: String,
    pub reason: String,
}

/// `reference` normalized as containers/image passes it to the store (`reference.Named.String()`
/// of the docker reference after `ParseNormalizedNamed` and `TagNameOnly`): a missing domain is
/// `docker.io`, a single-component name on docker.io gets `library/`, a missing tag is
/// `latest` (unless a digest is given). Both a tag and a digest are refused (c/image refuses
/// such docker references).
pub fn normalize_reference(reference: &str) -> Result<String, BadReference> {
    let bad = |reason: &str| BadReference { reference: reference.into(), reason: reason.into() };
    let s = reference.strip_prefix("docker://").unwrap_or(reference);
    if s.is_empty() || s.len() > 1024 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be 1-1024 printable ASCII characters"));
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => {
            let d = crate::oci::Sha256::parse(d).map_err(|e| bad(&format!("digest: {e}")))?;
            (n, Some(d.to_string()))
        }
        None => (s, None),
    };
    // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(bad("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
    }
    if tag.is_some() && digest.is_some() {
        return Err(bad("both a tag and a digest (containers/image refuses such references)"));
    }
    let (domain, path) = match name.split_once('/') {
        Some((d, rest))
            if d.contains('.') || d.contains(':') || d == "localhost" || d.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (d.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" { "docker.io".to_string() } else { domain };
    check_domain(&domain).map_err(|r| bad(&r))?;
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
    for c in path.split('/') {
        if !path_component_ok(c) {
            return Err(bad(&format!(
                "path component {c:?} must be lower-case [a-z0-9] separated by '.', '_', '__' or '-'"
            )));
        }
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), None) => out = format!("{out}:{t}"),
        (None, Some(d)) => out = format!("{out}@{d}"),
        _ => out.push_str(":latest"),
    }
    Ok(out)
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("port {p:?} is not a number"));
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(format!("domain {host:?} is not a host name or IPv4 address"));
    }
    Ok(())
}

/// distribution/reference's path component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or a run of '-', followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).is_some_and(|&x| alnum(x)) {
            return false;
        }
    }
    true
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
