//! The OCI layout reader on the real layouts of `real-layers/` (written by umoci, skopeo 1.9.3
//! and 1.22.2, ctr-remote): every one resolves to two layers with the source tars' diff_ids.
#[path = "support/conformance.rs"]
mod conformance;

use cfsmount::oci::layout::{Compression, Layout};
use cfsmount::oci::Sha256;

const DIFF1: &str = "sha256:a09e9eba2bfd08ddbbf9728a16aedeaf591dc955626a016a4efcf73271e8e69d";
const DIFF2: &str = "sha256:7ca8475e775051f5495c0d12a0eeb2767e0d6aac5a6e8850e8944966d2954e6d";

#[test]
fn real_layouts_resolve() {
    let root = conformance::conformance_root().join("real-layers/writers");
    let cases = [
        ("umoci-0.4.7-gzip", "v1", Compression::Gzip),
        ("skopeo-1.22.2-zstd", "v1", Compression::Zstd),
        ("skopeo-1.22.2-zstd-chunked", "v1", Compression::Zstd),
        ("skopeo-1.9.3-zstd-chunked", "v1", Compression::Zstd),
        ("ctr-remote-0.12.0-estargz", "estargz", Compression::Gzip),
        ("ctr-remote-0.12.0-zstdchunked", "zstdchunked", Compression::Zstd),
    ];
    for (writer, tag, comp) in cases {
        let layout = Layout::open(&root.join(writer).join("oci")).unwrap_or_else(|e| panic!("{writer}: {e}"));
        assert_eq!(layout.tags().unwrap(), vec![tag.to_string()], "{writer}");
        let img = layout.resolve(Some(tag), None).unwrap_or_else(|e| panic!("{writer}: {e}"));
        assert_eq!(img.layers.len(), 2, "{writer}");
        assert!(img.layers.iter().all(|l| l.compression == comp), "{writer}");
        // The config's diff_ids are the source tars' for umoci and skopeo; ctr-remote rewrote
        // the tars (landmark files) and wrote its own.
        let diffs: Vec<String> = img.layers.iter().map(|l| l.diff_id.to_string()).collect();
        if !writer.starts_with("ctr-remote") {
            assert_eq!(diffs, [DIFF1, DIFF2], "{writer}");
        }
        // Without a tag, the only image; the manifest bytes hash to the manifest digest.
        let again = layout.resolve(None, None).unwrap();
        assert_eq!(again.manifest_digest, img.manifest_digest);
        assert_eq!(Sha256::of(&img.manifest_bytes), img.manifest_digest);
        assert_eq!(Sha256::of(&img.config_bytes), img.config_digest);
        assert_eq!(img.platform, "linux/amd64", "{writer}");
        // Every layer blob opens with its size.
        for l in &img.layers {
            layout.open_blob("layer", &l.digest, l.size).unwrap();
        }
    }
}

/// The example shipped for the README's main job: umoci's two gzip layers, tag v1.
#[test]
fn example_layout_resolves() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oci-hello/oci");
    let img = Layout::open(&dir).unwrap().resolve(Some("v1"), None).unwrap();
    assert_eq!(img.layers.len(), 2);
    assert!(img.layers.iter().all(|l| l.compression == Compression::Gzip));
    assert_eq!(img.platform, "linux/amd64");
}
