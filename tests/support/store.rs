//! What a repository (`cfsmount oci import --store`) holds, checked from the outside: shared by
//! the oci_import and oci_store suites.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cfsmount::oci::Sha256;

/// Every file below `d` (recursively); none when `d` does not exist.
pub fn files_under(d: &Path) -> BTreeSet<PathBuf> {
    let mut v = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                v.extend(files_under(&p));
            } else {
                v.insert(p);
            }
        }
    }
    v
}

/// The objects the store's images (`kind` "images", file image.cfs) or layer images ("layers",
/// layer.cfs) name, each checked to exist and to hold bytes with that sha256. A missing `kind`
/// directory fails the test unless `may_be_missing` (a store killed before it was made).
pub fn used_objects(store: &Path, kind: &str, may_be_missing: bool) -> BTreeSet<PathBuf> {
    let file = if kind == "images" { "image.cfs" } else { "layer.cfs" };
    let mut used = BTreeSet::new();
    let dirs = match std::fs::read_dir(store.join(kind)) {
        Ok(dirs) => dirs,
        Err(_) if may_be_missing => return used,
        Err(e) => panic!("{}: {e}", store.join(kind).display()),
    };
    for d in dirs {
        let t = cfsmount::store::repo::read_image(&d.unwrap().path().join(file)).unwrap();
        for n in &t.nodes {
            if let (true, Some(p)) = (n.entry.inode.is_reg(), &n.entry.payload) {
                let rel = String::from_utf8(p.clone()).unwrap();
                let obj = store.join("objects").join(&rel);
                let data = std::fs::read(&obj).unwrap_or_else(|e| panic!("{}: {e}", obj.display()));
                assert_eq!(Sha256::of(&data).hex(), rel.replace('/', ""), "{}", obj.display());
                used.insert(obj);
            }
        }
    }
    used
}
