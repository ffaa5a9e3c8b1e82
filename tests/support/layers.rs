//! Shared helpers for the layer-import tests: the real-layers conformance data
//! (`$CFS_CONFORMANCE/real-layers`, see its README) and running `cfsmount mkimage --from-layer`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

pub fn root() -> PathBuf {
    let dir = match std::env::var_os("CFS_CONFORMANCE") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"),
    };
    let d = dir.join("real-layers");
    assert!(d.is_dir(), "conformance data missing: {} (set CFS_CONFORMANCE)", d.display());
    d
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cfsmount")
}

/// One blob of layers.json.
#[derive(Debug, Clone)]
pub struct Blob {
    pub writer: String,
    pub layer: u32,
    pub path: PathBuf,
    pub format: String,
    /// The diff_id an image config gives this layer (the source tar's for writers that keep
    /// the tar, the writer's own stream digest for those that rewrite it).
    pub diff_id: String,
    /// The blob's OCI descriptor (from the writer's manifest or descriptors.json).
    pub descriptor: serde_json::Value,
    /// The TOC extracted from the blob (gzip), for TOC formats.
    pub toc: Option<PathBuf>,
}

impl Blob {
    pub fn name(&self) -> String {
        format!("{} layer {}", self.writer, self.layer)
    }
    pub fn is_estargz_writer(&self) -> bool {
        self.writer.starts_with("ctr-remote") || self.writer.starts_with("estargz")
    }
}

pub fn blobs() -> Vec<Blob> {
    let r = root();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("layers.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (w, v) in j["writers"].as_object().unwrap() {
        let manifest = r.join("writers").join(w).join("manifest.json");
        let descs: Vec<serde_json::Value> = if manifest.is_file() {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
            m["layers"].as_array().unwrap().clone()
        } else {
            let d = std::fs::read(r.join("writers").join(w).join("descriptors.json")).unwrap();
            serde_json::from_slice::<Vec<serde_json::Value>>(&d).unwrap()
        };
        for l in v["layers"].as_array().unwrap() {
            let n = l["layer"].as_u64().unwrap() as u32;
            let keeps_tar = l["diff_id_equals_source_tar"].as_bool() == Some(true)
                || l["uncompressed_is_prefix_of_source_tar"].as_bool() == Some(true);
            let diff_id = if keeps_tar {
                j["source_tars"][n.to_string()]["diff_id"].as_str().unwrap().to_string()
            } else {
                l["diff_id"].as_str().unwrap().to_string()
            };
            out.push(Blob {
                writer: w.clone(),
                layer: n,
                path: r.join(l["blob"].as_str().unwrap()),
                format: l["format"].as_str().unwrap().to_string(),
                diff_id,
                descriptor: descs[(n - 1) as usize].clone(),
                toc: l["toc"].as_str().map(|t| r.join(t)),
            });
        }
    }
    out
}

pub fn sha256_file(p: &Path) -> String {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    hex(&Sha256::digest(&b))
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

/// `cfsmount mkimage --from-layer BLOB OUT --objects OBJS` plus `extra`.
pub fn import(blob: &Path, out: &Path, objs: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .arg("mkimage")
        .arg("--from-layer")
        .arg(blob)
        .arg(out)
        .arg("--objects")
        .arg(objs)
        .args(extra)
        .output()
        .unwrap()
}

pub fn ok(o: &Output, ctx: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{ctx}: {err}");
    err
}

/// Every file under the store is named by the sha256 of its content (`xx/rest`), and nothing
/// else is there (no staging directory, no temporary file). Returns the number of objects.
pub fn check_store(objs: &Path) -> usize {
    let mut n = 0;
    for d in std::fs::read_dir(objs).unwrap() {
        let d = d.unwrap();
        let name = d.file_name().into_string().unwrap();
        assert!(name.len() == 2 && d.file_type().unwrap().is_dir(), "unexpected {name} in the store");
        for f in std::fs::read_dir(d.path()).unwrap() {
            let f = f.unwrap();
            let rest = f.file_name().into_string().unwrap();
            assert_eq!(format!("{name}{rest}"), sha256_file(&f.path()), "object {name}/{rest}");
            n += 1;
        }
    }
    n
}

/// Names of everything in a directory (to prove nothing was left behind).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    if dir.exists() {
        for e in walk(dir) {
            v.push(e.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    v.sort();
    v
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        }
        v.push(p);
    }
    v
}
