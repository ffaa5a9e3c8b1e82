//! Root tier: the object store on a filesystem with reflinks (XFS on a loop device). With the
//! source directory on the store's filesystem, `mkimage --from-dir --digest-store` shares the
//! source files' extents with the objects (FICLONE) instead of copying them; the objects still
//! hold the source's bytes under their fs-verity digests, identical contents are stored once, and
//! the image equals the one built without a store.
//! Needs root (mkfs.xfs from xfsprogs, a loop mount); run under `flock /tmp/cfsmount-root.lock`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/root.rs"]
mod root;

/// A fresh XFS (reflink on) mounted in a scratch directory; unmounted (and its autoclear loop
/// device freed) on drop.
struct Xfs {
    mnt: PathBuf,
    _scratch: root::Scratch,
}

impl Xfs {
    fn new(scratch: root::Scratch) -> Xfs {
        let img = scratch.path("xfs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(512 << 20).unwrap();
        drop(f);
        let out =
            Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&img).output().expect("mkfs.xfs (xfsprogs)");
        assert!(out.status.success(), "mkfs.xfs: {}", String::from_utf8_lossy(&out.stderr));
        let mnt = scratch.mkdir("mnt");
        let out = Command::new("mount").args(["-t", "xfs", "-o", "loop"]).arg(&img).arg(&mnt).output().unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Xfs { mnt, _scratch: scratch }
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cfsmount(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cfsmount")).args(args).output().unwrap();
    assert!(out.status.success(), "cfsmount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// FIEMAP says every extent of `f` is shared (filefrag -v prints the flag per extent).
fn all_extents_shared(f: &Path) -> bool {
    let out = Command::new("filefrag").arg("-v").arg(f).output().expect("filefrag (e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout);
    let extents: Vec<&str> =
        text.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
    !extents.is_empty() && extents.iter().all(|l| l.contains("shared"))
}

#[test]
fn objects_share_the_sources_extents_on_xfs() {
    root::require_root("root_store");
    let _serial = root::serial();
    let scratch = root::Scratch::new("cfsmount-root-store.");
    let before = root::Snapshot::take(scratch.root(), None);
    let x = Xfs::new(scratch);
    test_on(&x);
    let prefix = x.mnt.parent().unwrap().to_path_buf();
    drop(x);
    assert!(!prefix.exists(), "scratch directory left behind");
    before.assert_nothing_left("root_store");
}

fn test_on(x: &Xfs) {
    let src = x.mnt.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big = random(8 << 20, 1);
    let mid = random(200_000, 2);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("mid"), &mid).unwrap();
    std::fs::write(src.join("sub/mid-again"), &mid).unwrap();
    std::fs::write(src.join("small"), b"inline").unwrap();
    assert!(Command::new("sync").status().unwrap().success());
    let store = x.mnt.join("store");
    let (img, plain) = (x.mnt.join("with-store.img"), x.mnt.join("plain.img"));
    cfsmount(&[
        "mkimage".as_ref(),
        "--from-dir".as_ref(),
        src.as_os_str(),
        img.as_os_str(),
        "--digest-store".as_ref(),
        store.as_os_str(),
    ]);
    let mut objects = 0;
    for (name, data) in [("big", &big), ("mid", &mid)] {
        let d = cfsmount::fsverity::digest_bytes(data);
        let obj = store.join(cfsmount::store::object_name(&d));
        assert_eq!(&std::fs::read(&obj).unwrap(), data, "{name}: object content");
        assert!(all_extents_shared(&obj), "{name}: object does not share its extents (FICLONE not used)");
        assert!(all_extents_shared(&src.join(name)), "{name}: source extents not shared");
        objects += 1;
    }
    let stored: usize =
        std::fs::read_dir(&store).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum();
    assert_eq!(stored, objects, "identical contents are stored once, small files not at all");
    cfsmount(&["mkimage".as_ref(), "--from-dir".as_ref(), src.as_os_str(), plain.as_os_str()]);
    assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&plain).unwrap(), "image depends on the store");
}
