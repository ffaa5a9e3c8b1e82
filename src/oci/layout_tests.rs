//! Synthetic layouts: every refusal of the reader, platform choice, tags.
use super::*;
use serde_json::json;

/// A layout under construction in a temporary directory.
pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Fixture { dir }
    }
    pub fn blob(&self, bytes: &[u8]) -> (Sha256, u64) {
        let d = Sha256::of(bytes);
        std::fs::write(self.dir.path().join("blobs/sha256").join(d.hex()), bytes).unwrap();
        (d, bytes.len() as u64)
    }
    pub fn json_blob(&self, v: &serde_json::Value) -> serde_json::Value {
        let bytes = serde_json::to_vec(v).unwrap();
        let (d, n) = self.blob(&bytes);
        json!({"digest": d.to_string(), "size": n})
    }
    pub fn desc(&self, mt: &str, v: &serde_json::Value) -> serde_json::Value {
        let mut d = self.json_blob(v);
        d["mediaType"] = json!(mt);
        d
    }
    pub fn index(&self, manifests: Vec<serde_json::Value>) {
        let v = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.path().join("index.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    pub fn open(&self) -> Layout {
        Layout::open(self.dir.path()).unwrap()
    }
    /// A manifest (descriptor JSON) with the given layer blobs; diff_ids are the blobs' own
    /// sha256 unless given.
    pub fn image(&self, layers: &[&[u8]], arch: &str, diff_ids: Option<Vec<String>>) -> serde_json::Value {
        let ldescs: Vec<_> = layers
            .iter()
            .map(|l| {
                let (d, n) = self.blob(l);
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": n})
            })
            .collect();
        let diffs = diff_ids.unwrap_or_else(|| layers.iter().map(|l| Sha256::of(l).to_string()).collect());
        let config = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}});
        let m = json!({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                       "config": self.desc(MT_OCI_CONFIG, &config), "layers": ldescs});
        self.desc(MT_OCI_MANIFEST, &m)
    }
}

fn tagged(mut d: serde_json::Value, tag: &str) -> serde_json::Value {
    d["annotations"] = json!({REF_NAME: tag});
    d
}

fn host_arch() -> String {
    Platform::running().arch
}

#[test]
fn resolves_a_tagged_image() {
    let f = Fixture::new();
    let m = f.image(&[b"layer one", b"layer two"], &host_arch(), None);
    f.index(vec![tagged(m.clone(), "v1")]);
    let l = f.open();
    assert_eq!(l.tags().unwrap(), vec!["v1".to_string()]);
    let img = l.resolve(Some("v1"), None).unwrap();
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[1].diff_id, Sha256::of(b"layer two"));
    assert_eq!(img.manifest_digest.to_string(), m["digest"].as_str().unwrap());
    assert_eq!(img.layers[0].compression, Compression::None);
    // Without a tag: the only image.
    assert_eq!(l.resolve(None, None).unwrap().manifest_digest, img.manifest_digest);
    let e = l.resolve(Some("v2"), None).unwrap_err().to_string();
    assert!(e.contains("\"v2\"") && e.contains("v1"), "{e}");
}

#[test]
fn several_images_need_a_tag() {
    let f = Fixture::new();
    let a = f.image(&[b"a"], &host_arch(), None);
    let b = f.image(&[b"b"], &host_arch(), None);
    f.index(vec![tagged(a, "a"), tagged(b, "b")]);
    let e = f.open().resolve(None, None).unwrap_err().to_string();
    assert!(e.contains("2 images") && e.contains("a, b"), "{e}");
    assert_eq!(f.open().resolve(Some("b"), None).unwrap().layers[0].diff_id, Sha256::of(b"b"));
}

#[test]
fn platform_from_an_index() {
    let f = Fixture::new();
    let amd = f.image(&[b"amd"], "amd64", None);
    let arm = f.image(&[b"arm"], "arm64", None);
    let mut amd_e = amd.clone();
    amd_e["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut arm_e = arm.clone();
    arm_e["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let idx = json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [amd_e, arm_e]});
    f.index(vec![tagged(f.desc(MT_OCI_INDEX, &idx), "multi")]);
    let l = f.open();
    let pick = |p: &str| l.resolve(Some("multi"), Some(&Platform::parse(p).unwrap()));
    assert_eq!(pick("linux/arm64").unwrap().layers[0].diff_id, Sha256::of(b"arm"));
    assert_eq!(pick("linux/arm64/v8").unwrap().platform, "linux/arm64");
    assert_eq!(pick("linux/amd64").unwrap().layers[0].diff_id, Sha256::of(b"amd"));
    let e = pick("linux/s390x").unwrap_err().to_string();
    assert!(e.contains("linux/s390x") && e.contains("linux/amd64") && e.contains("linux/arm64/v8"), "{e}");
    // The default is the running platform.
    if ["amd64", "arm64"].contains(&host_arch().as_str()) {
        assert_eq!(
            l.resolve(Some("multi"), None).unwrap().layers[0].diff_id,
            Sha256::of(host_arch().as_bytes()[..3].as_ref())
        );
    }
    // An explicit platform must also match a plain manifest's config.
    let f2 = Fixture::new();
    f2.index(vec![tagged(f2.image(&[b"x"], "amd64", None), "t")]);
    let e = f2.open().resolve(Some("t"), Some(&Platform::parse("linux/arm64").unwrap())).unwrap_err().to_string();
    assert!(e.contains("linux/amd64") && e.contains("not linux/arm64"), "{e}");
    assert!(Platform::parse("linux").is_err() && Platform::parse("linux/amd64/v1/x").is_err());
}

#[test]
fn refuses_digest_size_and_missing_blobs() {
    let f = Fixture::new();
    let m = f.image(&[b"payload"], &host_arch(), None);
    f.index(vec![tagged(m.clone(), "v1")]);
    let mpath = f.dir.path().join("blobs/sha256").join(&m["digest"].as_str().unwrap()[7..]);
    let good = std::fs::read(&mpath).unwrap();
    // Same size, other content: digest mismatch, named.
    let mut bad = good.clone();
    let i = bad.iter().position(|&c| c == b'2').unwrap();
    bad[i] = b'3';
    std::fs::write(&mpath, &bad).unwrap();
    let e = f.open().resolve(Some("v1"), None).unwrap_err();
    assert!(matches!(e, LayoutError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().starts_with("manifest sha256:"), "{e}");
    // Longer: size mismatch.
    let mut longer = good.clone();
    longer.push(b' ');
    std::fs::write(&mpath, &longer).unwrap();
    assert!(matches!(f.open().resolve(Some("v1"), None).unwrap_err(), LayoutError::SizeMismatch { .. }));
    std::fs::write(&mpath, &good).unwrap();
    // A missing layer blob is found before anything is imported.
    std::fs::remove_file(f.dir.path().join("blobs/sha256").join(Sha256::of(b"payload").hex())).unwrap();
    let e = f.open().resolve(Some("v1"), None).unwrap_err();
    assert!(matches!(e, LayoutError::MissingBlob { .. }), "{e}");
    assert!(e.to_string().contains("layer 1"), "{e}");
}

#[test]
fn refuses_a_layer_listed_twice_and_unknown_media_types() {
    let f = Fixture::new();
    let (ld, ln) = f.blob(b"same");
    let layer = json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": ln});
    let config = json!({"architecture": host_arch(), "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": [ld.to_string(), ld.to_string()]}});
    let m = json!({"schemaVersion": 2, "config": f.desc(MT_OCI_CONFIG, &config), "layers": [layer, layer]});
    f.index(vec![tagged(f.desc(MT_OCI_MANIFEST, &m), "v1")]);
    let e = f.open().resolve(Some("v1"), None).unwrap_err();
    assert!(matches!(e, LayoutError::LayerTwice { .. }), "{e}");

    let mut odd = layer.clone();
    odd["mediaType"] = json!("application/vnd.example.layer.v1.squashfs");
    let config1 = json!({"architecture": host_arch(), "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [ld.to_string()]}});
    let m = json!({"schemaVersion": 2, "config": f.desc(MT_OCI_CONFIG, &config1), "layers": [odd]});
    f.index(vec![tagged(f.desc(MT_OCI_MANIFEST, &m), "v1")]);
    let e = f.open().resolve(Some("v1"), None).unwrap_err().to_string();
    assert!(e.contains("squashfs") && e.contains("layer 1"), "{e}");

    // An index entry of an unknown type, and a manifest whose mediaType contradicts it.
    let mut art = f.image(&[b"x"], &host_arch(), None);
    art["mediaType"] = json!("application/vnd.example.artifact");
    f.index(vec![tagged(art, "v1")]);
    assert!(matches!(f.open().resolve(Some("v1"), None).unwrap_err(), LayoutError::MediaType { .. }));
    let m = f.image(&[b"x"], &host_arch(), None);
    let mut wrong = m.clone();
    wrong["mediaType"] = json!(MT_DOCKER_MANIFEST);
    f.index(vec![tagged(wrong, "v1")]);
    let e = f.open().resolve(Some("v1"), None).unwrap_err().to_string();
    assert!(e.contains("differs from its descriptor"), "{e}");
}

#[test]
fn refuses_bad_diff_ids_and_configs() {
    let f = Fixture::new();
    let m = f.image(&[b"a", b"b"], &host_arch(), Some(vec![Sha256::of(b"a").to_string()]));
    f.index(vec![tagged(m, "v1")]);
    let e = f.open().resolve(Some("v1"), None).unwrap_err().to_string();
    assert!(e.contains("diff_ids has 1 entries for 2 layers"), "{e}");
    let m = f.image(&[b"a"], &host_arch(), Some(vec!["sha512:00".into()]));
    f.index(vec![tagged(m, "v1")]);
    let e = f.open().resolve(Some("v1"), None).unwrap_err().to_string();
    assert!(e.contains("diff_ids[0]") && e.contains("sha512"), "{e}");
}

#[test]
fn refuses_symlinks_out_of_the_layout() {
    let f = Fixture::new();
    let m = f.image(&[b"inside"], &host_arch(), None);
    f.index(vec![tagged(m, "v1")]);
    let outside = tempfile::tempdir().unwrap();
    let lhex = Sha256::of(b"inside").hex();
    std::fs::write(outside.path().join("blob"), b"inside").unwrap();
    let lpath = f.dir.path().join("blobs/sha256").join(&lhex);
    std::fs::remove_file(&lpath).unwrap();
    // Absolute, and relative with '..' leading out: both refused.
    std::os::unix::fs::symlink(outside.path().join("blob"), &lpath).unwrap();
    let e = f.open().resolve(Some("v1"), None).unwrap_err();
    assert!(matches!(e, LayoutError::Escapes { .. }), "{e}");
    std::fs::remove_file(&lpath).unwrap();
    let rel = PathBuf::from("../../..").join(outside.path().strip_prefix("/").unwrap()).join("blob");
    std::os::unix::fs::symlink(format!("../../{}", rel.display()), &lpath).unwrap();
    assert!(matches!(f.open().resolve(Some("v1"), None).unwrap_err(), LayoutError::Escapes { .. }));
    // A symlink that stays inside the layout is followed.
    std::fs::remove_file(&lpath).unwrap();
    std::fs::write(f.dir.path().join("elsewhere"), b"inside").unwrap();
    std::os::unix::fs::symlink("../../elsewhere", &lpath).unwrap();
    f.open().resolve(Some("v1"), None).unwrap();
    // A FIFO is not a blob (and does not block).
    std::fs::remove_file(&lpath).unwrap();
    rustix::fs::mknodat(rustix::fs::CWD, &lpath, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0).unwrap();
    let e = f.open().resolve(Some("v1"), None).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn refuses_index_loops_and_deep_nesting() {
    // With real digests a loop needs a sha256 cycle; the walk's own guard is tested with
    // digest checking off, on indexes that name each other.
    let f = Fixture::new();
    let hex_a = "a".repeat(64);
    let hex_b = "b".repeat(64);
    let entry = |hex: &str, size: usize| {
        json!({"mediaType": MT_OCI_INDEX, "digest": format!("sha256:{hex}"), "size": size,
               "platform": {"architecture": host_arch(), "os": "linux"}})
    };
    // Sizes must match the files; write each with the other's entry.
    let a = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry(&hex_b, 0)]})).unwrap();
    let b = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry(&hex_a, a.len())]})).unwrap();
    let a = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry(&hex_b, b.len())]})).unwrap();
    std::fs::write(f.dir.path().join("blobs/sha256").join(&hex_a), &a).unwrap();
    std::fs::write(f.dir.path().join("blobs/sha256").join(&hex_b), &b).unwrap();
    f.index(vec![tagged(entry(&hex_a, a.len()), "loop")]);
    let mut l = f.open();
    // With digests checked, the first index is already refused.
    assert!(matches!(l.resolve(Some("loop"), None).unwrap_err(), LayoutError::DigestMismatch { .. }));
    l.verify = false;
    let e = l.resolve(Some("loop"), None).unwrap_err();
    assert!(matches!(e, LayoutError::Loop { .. }), "{e}");
}

#[test]
fn layout_header_and_references() {
    let f = Fixture::new();
    std::fs::write(f.dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    assert!(Layout::open(f.dir.path()).unwrap_err().to_string().contains("2.0.0"));
    std::fs::remove_file(f.dir.path().join("oci-layout")).unwrap();
    assert!(Layout::open(f.dir.path()).unwrap_err().to_string().contains("no oci-layout"));
    assert_eq!(Reference::parse("oci:/a/b:v1").unwrap(), Reference { dir: "/a/b".into(), tag: Some("v1".into()) });
    assert_eq!(Reference::parse("oci:dir").unwrap(), Reference { dir: "dir".into(), tag: None });
    assert!(Reference::parse("docker://x").is_err());
    assert!(Reference::parse("oci::v1").is_err());
    assert!(Reference::parse("oci:d:").is_err());
}
