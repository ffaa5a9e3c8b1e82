//! The repository on its own: layers and images in and out, races, rm, gc, staging cleanup.
use super::*;
use crate::tree::{Entry, Inode, Limits, S_IFREG};

/// Put `content` into the store's objects as `xx/rest` of its sha256; returns the payload.
fn object(repo: &Repo, content: &[u8]) -> Vec<u8> {
    let h = Sha256::of(content).hex();
    let d = repo.objects_dir().join(&h[..2]);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(&h[2..]), content).unwrap();
    format!("{}/{}", &h[..2], &h[2..]).into_bytes()
}

fn layer_with(repo: &Repo, files: &[(&str, &[u8])]) -> LayerTree {
    let mut t = Tree::new(Limits::default());
    for (p, c) in files {
        let e = Entry {
            inode: Inode { mode: S_IFREG | 0o644, size: c.len() as u64, ..Inode::default() },
            payload: Some(object(repo, c)),
            ..Entry::default()
        };
        t.insert(p.as_bytes(), e).unwrap();
    }
    t.finalize().unwrap();
    t.into()
}

fn info(d: &Sha256) -> LayerInfo {
    LayerInfo {
        digest: d.to_string(),
        size: 1,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        diff_id: d.to_string(),
        annotations: Default::default(),
        external_links: vec![],
        implicit_dirs: vec![],
        read: None,
    }
}

fn image_info(layers: &[Sha256], source: &str) -> ImageInfo {
    ImageInfo {
        manifest: String::new(),
        config: String::new(),
        layers: layers.iter().map(|l| l.to_string()).collect(),
        platform: "linux/amd64".into(),
        fsverity: String::new(),
        verity_enabled: false,
        image_size: 0,
        source: source.into(),
        imported: 0,
    }
}

fn object_count(repo: &Repo) -> usize {
    walk(&repo.objects_dir()).len()
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn layers_and_images_round_trip_and_gc_keeps_shared_objects() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path(), Lock::Shared).unwrap();
    let (k1, k2, k3) = (Sha256::of(b"l1"), Sha256::of(b"l2"), Sha256::of(b"l3"));
    let l1 = layer_with(&repo, &[("shared", b"base content"), ("only-a", b"a only")]);
    let mut l2 = layer_with(&repo, &[("top-a", b"top of a")]);
    l2.external_links.push((b"x\n".to_vec(), b"shared".to_vec()));
    let l3 = layer_with(&repo, &[("shared-again", b"base content"), ("only-b", b"b only")]);
    for (k, l) in [(&k1, &l1), (&k2, &l2), (&k3, &l3)] {
        repo.add_layer(k, l, info(k)).unwrap();
        assert!(repo.has_layer(k));
    }
    // A second add of the same layer (another import won the race) keeps the first.
    repo.add_layer(&k1, &l2, info(&k1)).unwrap();
    let back = repo.layer_tree(&k1).unwrap();
    assert!(back.tree.lookup(b"only-a").is_some() && back.tree.lookup(b"top-a").is_none());
    assert_eq!(repo.layer_tree(&k2).unwrap().external_links, l2.external_links);
    // Implied directories (here the root) stay implied through the image; listed ones do not.
    assert!(back.tree.node(crate::tree::ROOT).implicit);
    let mut t = Tree::new(Limits::default());
    let listed = Entry { inode: Inode { mode: crate::tree::S_IFDIR | 0o700, ..Inode::default() }, ..Entry::default() };
    t.set_root(listed.clone()).unwrap();
    t.insert(b"d", listed).unwrap();
    t.insert(b"implied/f", Entry { inode: Inode { mode: S_IFREG, ..Inode::default() }, ..Entry::default() }).unwrap();
    t.finalize().unwrap();
    let k4 = Sha256::of(b"l4");
    repo.add_layer(&k4, &t.into(), info(&k4)).unwrap();
    let back4 = repo.layer_tree(&k4).unwrap().tree;
    let implicit = |p: &[u8]| back4.node(back4.lookup(p).unwrap()).implicit;
    assert_eq!((implicit(b""), implicit(b"d"), implicit(b"implied")), (false, false, true));

    let flat_a = crate::oci::flatten::flatten(
        vec![repo.layer_tree(&k1).unwrap(), repo.layer_tree(&k2).unwrap()],
        Limits::default(),
    )
    .unwrap();
    let flat_b = crate::oci::flatten::flatten(vec![repo.layer_tree(&k3).unwrap()], Limits::default()).unwrap();
    let (ia, ib) = (Sha256::of(b"manifest a"), Sha256::of(b"manifest b"));
    let a = repo.add_image(&ia, flat_a, b"{}", b"{}", image_info(&[k1, k2], "oci:a:v1")).unwrap();
    repo.add_image(&ib, flat_b, b"{}", b"{}", image_info(&[k3], "oci:b:v1")).unwrap();
    assert_eq!(a.fsverity.len(), 64);
    let img = repo.image_path(&ia);
    let d = crate::fsverity::digest_file(&File::open(&img).unwrap()).unwrap();
    assert_eq!(crate::fsverity::to_hex(&d), a.fsverity);
    assert_eq!(a.image_size, fs::metadata(&img).unwrap().len());
    assert_eq!(repo.images().unwrap().len(), 2);
    assert_eq!(repo.find_image("oci:b:v1").unwrap(), ib);
    assert_eq!(repo.find_image(&ia.hex()[..12]).unwrap(), ia);
    assert!(matches!(repo.find_image("oci:c:v1"), Err(RepoError::NoImage(_))));
    assert_eq!(object_count(&repo), 4);
    drop(repo);

    // rm a, gc: a's layers and the objects only a used go; the shared object stays.
    let repo = Repo::open(dir.path(), Lock::Exclusive).unwrap();
    repo.remove_image(&ia).unwrap();
    let r = repo.gc().unwrap();
    assert_eq!((r.layers, r.objects), (3, 2));
    assert!(!repo.has_layer(&k1) && !repo.has_layer(&k2) && repo.has_layer(&k3));
    assert_eq!(object_count(&repo), 2);
    let left: Vec<_> = walk(&repo.objects_dir()).iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(left.contains(&b"base content".to_vec()) && left.contains(&b"b only".to_vec()));
    // Nothing else to collect; an unknown image is an error.
    assert_eq!(repo.gc().unwrap(), GcReport::default());
    assert!(matches!(repo.remove_image(&ia), Err(RepoError::NoImage(_))));
}

#[test]
fn staging_left_by_a_killed_import_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path(), Lock::Shared).unwrap();
    let st = repo.staging().unwrap();
    let p = st.path();
    fs::write(p.join("layer.cfs"), b"half").unwrap();
    std::mem::forget(st); // as if killed: nothing cleans up
                          // While someone holds the lock shared, a second shared opener leaves staging alone...
    let other = Repo::open(dir.path(), Lock::Shared).unwrap();
    assert!(p.exists());
    drop(other);
    drop(repo);
    // ...and the next opener that is alone removes it. (Alone: a child another test of this
    // process forks or clones holds a copy of the lock's fd until it execs or closes it, so
    // the opener may have to come again, up to 2 s.)
    for _ in 0..200 {
        let _repo = Repo::open(dir.path(), Lock::Shared).unwrap();
        if !p.exists() {
            break;
        }
        drop(_repo);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!p.exists());
}

#[test]
fn corrupt_records_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::open(dir.path(), Lock::Shared).unwrap();
    let k = Sha256::of(b"x");
    fs::create_dir_all(repo.image_dir(&k)).unwrap();
    fs::write(repo.image_dir(&k).join("image.json"), b"{not json").unwrap();
    let e = repo.images().unwrap_err().to_string();
    assert!(e.contains("image.json"), "{e}");
    fs::create_dir_all(repo.layer_dir(&k)).unwrap();
    fs::write(repo.layer_dir(&k).join("layer.json"), serde_json::to_vec(&info(&k)).unwrap()).unwrap();
    fs::write(repo.layer_dir(&k).join("layer.cfs"), b"not an image").unwrap();
    let e = repo.layer_tree(&k).unwrap_err().to_string();
    assert!(e.contains("layer.cfs"), "{e}");
}
