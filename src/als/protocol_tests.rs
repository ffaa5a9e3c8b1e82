//! The protocol details against what containers/storage and containers/image do (their
//! behaviour restated from their source, cited in docs/als.md).
use super::*;

const D: &str = "sha256:a09e9eba2bfd08ddbbf9728a16aedeaf591dc955626a016a4efcf73271e8e69d";
const E: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn references_normalize_as_containers_image_does() {
    let ok = |s: &str| normalize_reference(s).unwrap();
    assert_eq!(ok("alpine"), "docker.io/library/alpine:latest");
    assert_eq!(ok("docker.io/alpine:3.19"), "docker.io/library/alpine:3.19");
    assert_eq!(ok("index.docker.io/library/alpine"), "docker.io/library/alpine:latest");
    assert_eq!(ok("user/app"), "docker.io/user/app:latest");
    assert_eq!(ok("127.0.0.1:5111/test/img:v1"), "127.0.0.1:5111/test/img:v1");
    assert_eq!(ok("docker://127.0.0.1:5111/test/img"), "127.0.0.1:5111/test/img:latest");
    assert_eq!(ok("localhost/x"), "localhost/x:latest");
    assert_eq!(ok("quay.io/a/b-c__d.e"), "quay.io/a/b-c__d.e:latest");
    assert_eq!(ok(&format!("quay.io/a/b@{D}")), format!("quay.io/a/b@{D}"));
    for bad in [
        "",
        "a b",
        "Foo/Bar",
        "quay.io/a/B",
        "quay.io/a/b:",
        "quay.io/a/b:-x",
        "quay.io/a//b",
        "quay.io/a/b_",
        "quay.io:x/a",
        &format!("quay.io/a/b:t@{D}"),
        "quay.io/a/b@sha256:1234",
    ] {
        assert!(normalize_reference(bad).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn ref_directories_are_what_path_join_makes_of_base64() {
    // base64.StdEncoding("127.0.0.1:5111/test/img:v1"), as podman 4.3.1 looked it up (seen in
    // its debug log with this very reference).
    assert_eq!(ref_components("127.0.0.1:5111/test/img:v1"), vec!["MTI3LjAuMC4xOjUxMTEvdGVzdC9pbWc6djE="]);
    // '/' in the encoding ("??>" encodes to "Pz8+", "a??" to "YT8/") splits into directories;
    // path.Join drops the empty component a trailing '/' would leave.
    assert_eq!(ref_components("a??"), vec!["YT8"]);
    assert_eq!(ref_components("a??a??"), vec!["YT8", "YT8"]);
}

#[test]
fn toc_digest_is_derived_as_get_toc_digest_does() {
    assert_eq!(toc_digest(&ann(&[(ANN_ZSTD_CHUNKED_TOC, D)])), Some(D.to_string()));
    assert_eq!(toc_digest(&ann(&[(ANN_ESTARGZ_TOC, E)])), Some(E.to_string()));
    // Both: GetTOCDigest fails ("both zstd:chunked and eStargz TOC found"): no TOC key.
    assert_eq!(toc_digest(&ann(&[(ANN_ESTARGZ_TOC, E), (ANN_ZSTD_CHUNKED_TOC, D)])), None);
    // The pre-1.0 zstd:chunked key is not looked at by GetTOCDigest.
    assert_eq!(toc_digest(&ann(&[("io.containers.zstd-chunked.manifest-checksum", D)])), None);
    assert_eq!(toc_digest(&ann(&[(ANN_ZSTD_CHUNKED_TOC, "sha256:zz")])), None);
    assert_eq!(toc_digest(&ann(&[])), None);
}

#[test]
fn only_checked_toc_digests_count() {
    let z = ann(&[(ANN_ZSTD_CHUNKED_TOC, D)]);
    let s = ann(&[(ANN_ESTARGZ_TOC, E)]);
    let c = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(toc_verified(&z, "zstd:chunked (64-byte footer)", &c(&["blob digest", "TOC digest"])));
    assert!(!toc_verified(&z, "zstd:chunked (64-byte footer)", &c(&["blob digest"])));
    // A gzip blob with a zstd:chunked annotation: the reader never looked at a TOC.
    assert!(!toc_verified(&z, "tar+gzip", &c(&["blob digest", "TOC digest"])));
    assert!(toc_verified(&s, "eStargz", &c(&["TOC digest"])));
    assert!(toc_verified(&s, "zstd:chunked (64-byte footer)", &c(&["stargz TOC digest"])));
    assert!(!toc_verified(&s, "tar+gzip", &c(&["diff_id"])));
    assert!(!toc_verified(&ann(&[]), "eStargz", &c(&["TOC digest"])));
}

#[test]
fn info_json_has_containers_storage_field_names() {
    let mut flags = BTreeMap::new();
    flags.insert(FLAG_EXPECTED_DIFFID.to_string(), E.to_string());
    let i = LayerInfoJson {
        compressed_digest: D.into(),
        compressed_size: 280,
        diff_digest: E.into(),
        diff_size: 10240,
        compression: compression_code(Compression::Zstd),
        toc_digest: Some(D.into()),
        flags,
    };
    let v: serde_json::Value = serde_json::from_slice(&i.to_bytes()).unwrap();
    assert_eq!(v["compressed-diff-digest"], D);
    assert_eq!(v["compressed-size"], 280);
    assert_eq!(v["diff-digest"], E);
    assert_eq!(v["diff-size"], 10240);
    assert_eq!(v["compression"], 4);
    assert_eq!(v["toc-digest"], D);
    assert_eq!(v["flags"]["expected-layer-diffid"], E);
    assert_eq!(v.as_object().unwrap().len(), 7);
    let plain = LayerInfoJson { toc_digest: None, flags: BTreeMap::new(), ..i };
    let v: serde_json::Value = serde_json::from_slice(&plain.to_bytes()).unwrap();
    assert!(v.get("toc-digest").is_none() && v.get("flags").is_none());
    assert_eq!(compression_code(Compression::None), 0);
    assert_eq!(compression_code(Compression::Gzip), 2);
}
