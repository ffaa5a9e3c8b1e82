//! `cfsmount oci import` on broken copies of a real layout (umoci's, from real-layers): each
//! is refused with a one-line message naming the blob or field, exit status 1, and the store
//! holds nothing afterwards (no image, no layer, no object, no staging).
#[path = "support/conformance.rs"]
mod conformance;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cfsmount");

/// A writable copy of umoci's two-layer layout.
fn copy_layout(dst: &Path) -> PathBuf {
    let src = conformance::conformance_root().join("real-layers/writers/umoci-0.4.7-gzip/oci");
    let out = dst.join("oci");
    let st = Command::new("cp").arg("-r").arg(&src).arg(&out).status().unwrap();
    assert!(st.success());
    Command::new("chmod").arg("-R").arg("u+w").arg(&out).status().unwrap();
    out
}

fn hex(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// Rewrite a JSON blob with `f`, store it under its new digest, and return (digest, size).
fn rewrite_blob(layout: &Path, digest: &str, f: impl FnOnce(&mut serde_json::Value)) -> (String, usize) {
    let p = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    f(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    let h = hex(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(&h), &bytes).unwrap();
    (format!("sha256:{h}"), bytes.len())
}

fn manifest_digest(layout: &Path) -> String {
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["digest"].as_str().unwrap().to_string()
}

/// Point index.json at a manifest rewritten by `f`.
fn rewrite_manifest(layout: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let (d, n) = rewrite_blob(layout, &manifest_digest(layout), f);
    let p = layout.join("index.json");
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    idx["manifests"][0]["digest"] = d.into();
    idx["manifests"][0]["size"] = n.into();
    std::fs::write(p, serde_json::to_vec(&idx).unwrap()).unwrap();
}

fn import(layout: &Path, store: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["oci", "import"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg("--store")
        .arg(store)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_store_empty(store: &Path) {
    for d in ["images", "layers", "objects", "tmp"] {
        let n = std::fs::read_dir(store.join(d)).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} is not empty", store.join(d).display());
    }
}

fn refused(case: &str, setup: impl FnOnce(&Path), want: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = copy_layout(tmp.path());
    setup(&layout);
    let store = tmp.path().join("store");
    let (ok, err) = import(&layout, &store);
    assert!(!ok, "{case}: import succeeded");
    assert_eq!(err.lines().count(), 1, "{case}: {err}");
    for w in want {
        assert!(err.contains(w), "{case}: {err:?} does not say {w:?}");
    }
    assert_store_empty(&store);
}

#[test]
fn bad_layouts_are_refused_and_nothing_is_imported() {
    refused(
        "manifest digest mismatch",
        |l| {
            let p = l.join("blobs/sha256").join(manifest_digest(l).trim_start_matches("sha256:"));
            let mut b = std::fs::read(&p).unwrap();
            let i = b.iter().position(|&c| c == b'5').unwrap();
            b[i] = b'6';
            std::fs::write(p, b).unwrap();
        },
        &["manifest sha256:", "content has sha256"],
    );
    refused(
        "missing layer blob",
        |l| {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(l.join("blobs/sha256").join(manifest_digest(l).trim_start_matches("sha256:"))).unwrap(),
            )
            .unwrap();
            let d = m["layers"][1]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
            std::fs::remove_file(l.join("blobs/sha256").join(d)).unwrap();
        },
        &["layer 2", "is missing from the layout"],
    );
    refused(
        "layer listed twice",
        |l| {
            rewrite_manifest(l, |m| {
                let first = m["layers"][0].clone();
                m["layers"][1] = first;
            })
        },
        &["is listed twice"],
    );
    refused(
        "unknown layer media type",
        |l| rewrite_manifest(l, |m| m["layers"][0]["mediaType"] = "application/vnd.example.squashfs".into()),
        &["layer 1", "application/vnd.example.squashfs", "not one cfsmount can read"],
    );
    refused(
        "diff_ids disagree in number",
        |l| {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(l.join("blobs/sha256").join(manifest_digest(l).trim_start_matches("sha256:"))).unwrap(),
            )
            .unwrap();
            let (cd, cn) = rewrite_blob(l, m["config"]["digest"].as_str().unwrap(), |c| {
                c["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
            });
            rewrite_manifest(l, |m| {
                m["config"]["digest"] = cd.into();
                m["config"]["size"] = cn.into();
            });
        },
        &["rootfs.diff_ids has 1 entries for 2 layers"],
    );
    refused(
        "symlink out of the layout",
        |l| {
            let d = manifest_digest(l);
            let p = l.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
            let outside = l.parent().unwrap().join("outside-manifest");
            std::fs::rename(&p, &outside).unwrap();
            std::os::unix::fs::symlink("../../../outside-manifest", &p).unwrap();
        },
        &["leaves the layout directory"],
    );
    refused(
        "unknown tag",
        |l| {
            let p = l.join("index.json");
            let s = std::fs::read_to_string(&p).unwrap().replace("\"v1\"", "\"v2\"");
            std::fs::write(p, s).unwrap();
        },
        &["no image tagged \"v1\"", "tags: v2"],
    );
}

#[test]
fn store_commands_on_an_empty_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--store").arg(&store).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = run(&["oci", "ls"]);
    assert!(ok && out.lines().count() == 1 && out.starts_with("IMAGE"), "{out}");
    let (ok, _, err) = run(&["oci", "rm", "abcd1234"]);
    assert!(!ok && err.contains("no image abcd1234 in the store"), "{err}");
    let (ok, out, _) = run(&["store", "gc"]);
    assert!(ok && out.contains("removed 0 layers and 0 objects"), "{out}");
    let (ok, _, err) = run(&["oci", "import", "docker://x"]);
    assert!(!ok && err.contains("expected oci:DIR[:TAG]"), "{err}");
}
