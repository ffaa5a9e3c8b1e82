//! Tier 1: every blob of the real-layers conformance data (real writers: skopeo 1.9.3 and
//! 1.22.2, containers/storage 1.48.1, umoci, ctr-remote, estargz) through
//! `cfsmount mkimage --from-layer`, with its descriptor and diff_id; the images compared across
//! encodings, with `--from-toc`/`--from-estargz` on the blob's TOC and with the image the
//! reference mkcomposefs built from containers/storage's dumpfile; the way back
//! (`cfsmount layer-tar`) compared with the diff_id.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

#[path = "support/layers.rs"]
mod layers;
use layers::*;

fn import_all(objs: &Path, out: &Path) -> BTreeMap<(String, u32), String> {
    let mut images = BTreeMap::new();
    for b in blobs() {
        let tag = format!("{}.{}", b.writer, b.layer);
        let img = out.join(format!("{tag}.img"));
        let desc = out.join(format!("{tag}.desc.json"));
        std::fs::write(&desc, serde_json::to_vec(&b.descriptor).unwrap()).unwrap();
        let ts = out.join(format!("{tag}.tar-split"));
        let o = import(
            &b.path,
            &img,
            objs,
            &["--descriptor", desc.to_str().unwrap(), "--diff-id", &b.diff_id, "--tar-split", ts.to_str().unwrap()],
        );
        let note = ok(&o, &b.name());
        for what in ["blob size", "blob digest", "diff_id"] {
            assert!(note.contains(what), "{}: {what} not checked: {note}", b.name());
        }
        if b.toc.is_some() {
            assert!(note.contains("TOC digest") && note.contains("TOC against the tar"), "{}: {note}", b.name());
        }
        if b.writer.starts_with("skopeo-1.9.3") || b.writer.starts_with("cstorage-1.48.1") {
            assert!(note.contains("zero bytes restored"), "{}: padding not restored: {note}", b.name());
        }
        // The way back: the tar from the tar-split and the objects hashes to the diff_id.
        let tar = out.join(format!("{tag}.tar"));
        let o = Command::new(bin())
            .args(["layer-tar", "--tar-split"])
            .arg(&ts)
            .arg("--image")
            .arg(&img)
            .arg("--objects")
            .arg(objs)
            .arg(&tar)
            .output()
            .unwrap();
        ok(&o, &format!("layer-tar {}", b.name()));
        assert_eq!(format!("sha256:{}", sha256_file(&tar)), b.diff_id, "{}: the way back", b.name());
        std::fs::remove_file(&tar).unwrap();
        images.insert((b.writer.clone(), b.layer), sha256_file(&img));
    }
    images
}

#[test]
fn real_layers_import_verified_and_images_do_not_depend_on_the_encoding() {
    let d = tempfile::tempdir().unwrap();
    let objs = d.path().join("objects");
    let images = import_all(&objs, d.path());
    assert_eq!(images.len(), 18);
    check_store(&objs);

    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("expected/composefs.json")).unwrap()).unwrap();
    for layer in [1u32, 2] {
        // One image per tree: every writer that keeps the tar gives the same bytes.
        let same: Vec<_> = [
            "skopeo-1.22.2-dir-uncompressed",
            "umoci-0.4.7-gzip",
            "skopeo-1.22.2-zstd",
            "skopeo-1.22.2-zstd-chunked",
            "skopeo-1.9.3-zstd-chunked",
            "cstorage-1.48.1-zstd-chunked",
        ]
        .iter()
        .map(|w| (w, &images[&(w.to_string(), layer)]))
        .collect();
        for (w, h) in &same {
            assert_eq!(*h, same[0].1, "layer {layer}: {w} differs from {}", same[0].0);
        }
        // The two eStargz writers rewrite the tar the same way: one image.
        assert_eq!(
            images[&("ctr-remote-0.12.0-estargz".into(), layer)],
            images[&("estargz-0.17.0-estargz".into(), layer)]
        );
        // Layer 1 has no whiteouts: the image is the one containers/storage's dumpfile and the
        // reference mkcomposefs give for the c/storage TOCs.
        if layer == 1 {
            for r in reference.as_array().unwrap() {
                if r["layer"] == 1 && r["writer"].as_str().unwrap().contains("zstd-chunked") {
                    assert_eq!(same[0].1, r["reference_image_sha256"].as_str().unwrap(), "{}", r["writer"]);
                }
            }
        }
    }

    // Every TOC-carrying blob gives the image `--from-toc`/`--from-estargz` gives for its TOC.
    for b in blobs().into_iter().filter(|b| b.toc.is_some()) {
        let toc = d.path().join("toc.json");
        std::fs::write(&toc, gunzip(&std::fs::read(b.toc.as_ref().unwrap()).unwrap())).unwrap();
        let img = d.path().join("from-toc.img");
        let flag = if b.format == "estargz" { "--from-estargz" } else { "--from-toc" };
        let o = Command::new(bin()).args(["mkimage", flag]).arg(&toc).arg(&img).output().unwrap();
        ok(&o, &b.name());
        assert_eq!(sha256_file(&img), images[&(b.writer.clone(), b.layer)], "{}: differs from {flag}", b.name());
    }
}

#[test]
fn reimport_reuses_objects_and_diff_id_mismatch_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let objs = d.path().join("objects");
    let b = blobs().into_iter().find(|b| b.writer == "skopeo-1.22.2-zstd" && b.layer == 1).unwrap();
    let img = d.path().join("a.img");
    ok(&import(&b.path, &img, &objs, &[]), "first import");
    let n = check_store(&objs);
    let note = ok(&import(&b.path, &img, &objs, &[]), "second import");
    assert!(note.contains("(0 new,"), "{note}");
    assert_eq!(check_store(&objs), n);

    // A wrong diff_id: refused, no image left, the store unchanged.
    let before = listing(d.path());
    let other = d.path().join("b.img");
    let wrong = "sha256:7ca8475e775051f5495c0d12a0eeb2767e0d6aac5a6e8850e8944966d2954e6d";
    let o = import(&b.path, &other, &objs, &["--diff-id", wrong]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not match the diff_id") && err.contains(wrong), "{err}");
    assert_eq!(listing(d.path()), before, "something was left behind");

    // skopeo 1.9.3 dropped the padding: without --diff-id its stream digest is what it is;
    // with the source's diff_id the padding is restored (documented in the README).
    let old = blobs().into_iter().find(|b| b.writer == "skopeo-1.9.3-zstd-chunked" && b.layer == 2).unwrap();
    let note = ok(&import(&old.path, &other, &objs, &["--diff-id", &old.diff_id]), "1.9.3");
    assert!(note.contains("3584 zero bytes restored"), "{note}");
}
