//! The records in the store on their own (no mounts): blobs checked while copied, refs in and
//! out, pruning, and gc's hook.
use super::*;
use crate::store::repo::Lock;

fn repo() -> (tempfile::TempDir, Repo) {
    let d = tempfile::tempdir().unwrap();
    let r = Repo::open(&d.path().join("store"), Lock::Shared).unwrap();
    (d, r)
}

fn blob_file(d: &Path, bytes: &[u8]) -> File {
    let p = d.join(format!("blob-{}", bytes.len()));
    fs::write(&p, bytes).unwrap();
    File::open(p).unwrap()
}

fn rec(root: &str, reference: &str, blobs: &[&Sha256]) -> RefRecord {
    RefRecord {
        root: PathBuf::from(root),
        reference: reference.into(),
        source: "oci:/x:v1".into(),
        manifest: Sha256::of(b"m").to_string(),
        layers: blobs
            .iter()
            .map(|b| LayerRef {
                blob: b.to_string(),
                toc: None,
                image: format!("{:0>64}", b.hex()),
                image_verity: false,
            })
            .collect(),
        added: 1,
    }
}

#[test]
fn a_blob_is_stored_only_with_its_digest_and_size() {
    let (d, r) = repo();
    let st = AlsState::open(&r, true).unwrap();
    let good = b"layer bytes".to_vec();
    let digest = Sha256::of(&good);
    let e = st.add_layer(&digest, blob_file(d.path(), b"other bytes"), good.len() as u64, b"{}").unwrap_err();
    assert!(e.to_string().contains("changed while it was copied"), "{e}");
    let e = st.add_layer(&digest, blob_file(d.path(), b"layer bytes and more"), good.len() as u64, b"{}").unwrap_err();
    assert!(e.to_string().contains("changed while it was copied"), "{e}");
    assert!(!st.has_layer(&digest));
    assert_eq!(fs::read_dir(r.root().join(STATE_DIR).join("tmp")).unwrap().count(), 0, "nothing staged is left");
    st.add_layer(&digest, blob_file(d.path(), &good), good.len() as u64, b"{\"x\":1}\n").unwrap();
    assert!(st.has_layer(&digest));
    assert_eq!(fs::read(st.layer_dir(&digest).join("blob")).unwrap(), good);
    assert_eq!(fs::read(st.layer_dir(&digest).join("info")).unwrap(), b"{\"x\":1}\n");
    // A second add of the same layer (a racing command) keeps the first copy.
    st.add_layer(&digest, blob_file(d.path(), &good), good.len() as u64, b"{}").unwrap();
    assert_eq!(fs::read(st.layer_dir(&digest).join("info")).unwrap(), b"{\"x\":1}\n");
}

#[test]
fn refs_prune_and_gc_roots() {
    let (d, r) = repo();
    let st = AlsState::open(&r, true).unwrap();
    let (a, b) = (Sha256::of(b"a"), Sha256::of(b"b"));
    for x in [&a, &b] {
        st.add_layer(x, blob_file(d.path(), x.hex().as_bytes()), 64, b"{}").unwrap_err();
    }
    for (x, bytes) in [(&a, b"a".as_slice()), (&b, b"b".as_slice())] {
        st.add_layer(x, blob_file(d.path(), bytes), 1, b"{}").unwrap();
        fs::write(st.image_path(&format!("{:0>64}", x.hex())), b"image").unwrap();
    }
    st.put_ref(&rec("/als", "h/x:1", &[&a, &b])).unwrap();
    st.put_ref(&rec("/als", "h/y:1", &[&a])).unwrap();
    // Replacing a record (same root and reference) keeps one file.
    st.put_ref(&rec("/als", "h/y:1", &[&a])).unwrap();
    assert_eq!(st.refs().unwrap().len(), 2);
    assert_eq!(layers_in_use(r.root()).unwrap(), [a.to_string(), b.to_string()].into_iter().collect());
    assert_eq!(st.prune().unwrap(), (0, 0));
    assert!(st.remove_ref(Path::new("/als"), "h/x:1").unwrap());
    assert!(!st.remove_ref(Path::new("/als"), "h/x:1").unwrap());
    assert_eq!(layers_in_use(r.root()).unwrap(), [a.to_string()].into_iter().collect());
    assert_eq!(st.prune().unwrap(), (1, 1), "b's layer directory and image go");
    assert!(st.has_layer(&a) && !st.has_layer(&b));
    // A record that is not JSON is an error naming it, never skipped silently.
    fs::write(r.root().join(STATE_DIR).join("refs").join("bad.json"), b"{").unwrap();
    let e = st.refs().unwrap_err();
    assert!(e.to_string().contains("bad.json"), "{e}");
}

#[test]
fn debris_in_tmp_goes_with_the_next_exclusive_open() {
    let (_d, r) = repo();
    let st = AlsState::open(&r, true).unwrap();
    let t = r.root().join(STATE_DIR).join("tmp");
    fs::create_dir(t.join("layer-1-0")).unwrap();
    fs::write(t.join("image-1-1"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc", t.join("ref-1-2")).unwrap();
    drop(st);
    let _st = AlsState::open(&r, true).unwrap();
    assert_eq!(fs::read_dir(&t).unwrap().count(), 0);
    assert!(Path::new("/etc/passwd").exists(), "a symlink is removed, not followed");
}
