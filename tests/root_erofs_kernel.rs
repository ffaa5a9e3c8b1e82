//! Root tier: images written for conformance cases are mounted read-only by the real
//! kernel EROFS driver, and the mounted tree is compared with the input tree: types,
//! modes, owners, mtimes, sizes, symlink targets, xattrs (as stored, i.e. with the
//! overlay namespace escaped and the overlay metadata the writer adds), inline
//! content, hard links (shared inode number, nlink) and the 256 root whiteout stubs.
//! Needs root (mount); fails, with the reason, when not root.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{parse, DumpOptions};
use cfsmount::tree::{Limits, NodeId, Tree, ROOT, S_IFCHR, S_IFDIR, S_IFMT, S_IFREG};

#[path = "support/random.rs"]
mod random;

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{dump_dir as conformance_dir, read_input};

#[path = "support/root.rs"]
mod root;
use root::{require_root, serial, Scratch, Snapshot};

const SUITE: &str = "root_erofs_kernel (it mounts EROFS images)";

/// Unmounts (and so frees the autoclear loop device) when dropped.
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(image: &Path, dir: &Path) -> Mounted {
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(image)
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(out.status.success(), "mount failed: {}", String::from_utf8_lossy(&out.stderr));
        Mounted { dir: dir.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.dir).status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn is_whiteout(tree: &Tree, id: NodeId) -> bool {
    let i = &tree.node(id).entry.inode;
    i.mode & S_IFMT == S_IFCHR && i.rdev == 0
}

/// The xattrs the image must show for a (non-link) node, derived from the input
/// tree by the composefs rules (independently of the writer's code).
fn expected_xattrs(tree: &Tree, id: NodeId, version: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let n = tree.node(id);
    let e = &n.entry;
    let mut m = BTreeMap::new();
    for x in &e.xattrs {
        let key = match x.key.strip_prefix(b"trusted.overlay.") {
            Some(rest) => [&b"trusted.overlay.overlay."[..], rest].concat(),
            None => x.key.clone(),
        };
        m.insert(key, x.value.clone());
    }
    let ino = &e.inode;
    if ino.mode & S_IFMT == S_IFREG && ino.size > 0 && e.content.is_none() {
        let v = match e.fsverity_digest {
            Some(d) => [&[0u8, 36, 0, 1][..], &d[..]].concat(),
            None => Vec::new(),
        };
        m.insert(b"trusted.overlay.metacopy".to_vec(), v);
        if let Some(p) = e.payload.as_ref().filter(|p| !p.is_empty()) {
            m.insert(b"trusted.overlay.redirect".to_vec(), [&b"/"[..], p].concat());
        }
    }
    if is_whiteout(tree, id) {
        m.insert(b"trusted.overlay.overlay.whiteout".to_vec(), Vec::new());
        m.insert(b"user.overlay.whiteout".to_vec(), Vec::new());
    }
    if ino.mode & S_IFMT == S_IFDIR
        && n.children.iter().any(|&c| tree.node(c).link_to.is_none() && is_whiteout(tree, c))
    {
        m.insert(b"trusted.overlay.overlay.whiteouts".to_vec(), Vec::new());
        m.insert(b"user.overlay.whiteouts".to_vec(), Vec::new());
        if version >= 1 {
            m.insert(b"trusted.overlay.overlay.opaque".to_vec(), b"x".to_vec());
            m.insert(b"user.overlay.opaque".to_vec(), b"x".to_vec());
        }
    }
    if id == ROOT {
        m.insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
    }
    m
}

/// Xattrs as the kernel shows them. Values the kernel refuses to return are `None`:
/// `user.*` on files other than regular files and directories (ENODATA by design)
/// and POSIX ACLs whose stored bytes are not a valid ACL (EINVAL) or that sit on a
/// symlink (EOPNOTSUPP).
fn read_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap_or_else(|e| panic!("llistxattr {}: {e}", p.display()));
    let mut m = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut v = vec![0u8; 65536];
        let cname = std::ffi::CString::new(name).unwrap();
        match rustix::fs::lgetxattr(p, cname.as_c_str(), &mut v) {
            Ok(len) => {
                v.truncate(len);
                m.insert(name.to_vec(), Some(v));
            }
            Err(e) if e == rustix::io::Errno::NODATA && name.starts_with(b"user.") => {
                m.insert(name.to_vec(), None);
            }
            Err(e)
                if (e == rustix::io::Errno::INVAL || e == rustix::io::Errno::OPNOTSUPP)
                    && name.starts_with(b"system.posix_acl_") =>
            {
                m.insert(name.to_vec(), None);
            }
            Err(e) => panic!("lgetxattr {} {}: {e}", p.display(), String::from_utf8_lossy(name)),
        }
    }
    m
}

fn compare_xattrs(got: &BTreeMap<Vec<u8>, Option<Vec<u8>>>, want: &BTreeMap<Vec<u8>, Vec<u8>>, ctx: &str) {
    let gk: Vec<_> = got.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    let wk: Vec<_> = want.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert_eq!(gk, wk, "{ctx}: xattr names");
    for (k, v) in got {
        if let Some(v) = v {
            assert!(want.get(k) == Some(v), "{ctx}: xattr {} value differs", String::from_utf8_lossy(k));
        }
    }
}

fn check_mounted(tree: &Tree, version: u32, mnt: &Path, what: &str) {
    let links = tree.link_counts();
    let mut ino_of: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut checked = 0usize;
    for id in 0..tree.len() as NodeId {
        let rel = tree.path_of(id);
        let p = if rel.is_empty() { mnt.to_path_buf() } else { mnt.join(std::ffi::OsStr::from_bytes(&rel)) };
        let ctx = format!("{what}: /{}", String::from_utf8_lossy(&rel));
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{ctx}: lstat: {e}"));
        let target = tree.resolve(id);
        let tn = tree.node(target);
        let e = &tn.entry;
        let ino = &e.inode;
        // Whiteouts are stored as escaped-whiteout regular files.
        let mut mode = ino.mode;
        if is_whiteout(tree, target) {
            mode = S_IFREG | (mode & !S_IFMT);
        }
        assert_eq!(md.mode(), mode, "{ctx}: mode");
        assert_eq!(md.uid(), ino.uid, "{ctx}: uid");
        assert_eq!(md.gid(), ino.gid, "{ctx}: gid");
        assert_eq!((md.mtime(), md.mtime_nsec()), (ino.mtime, ino.mtime_nsec as i64), "{ctx}: mtime");
        let expected_nlink = if ino.mode & S_IFMT == S_IFDIR {
            2 + tn
                .children
                .iter()
                .filter(|&&c| tree.node(c).link_to.is_none() && tree.node(c).entry.inode.is_dir())
                .count() as u64
        } else {
            tree.nlink_with(target, &links) as u64
        };
        assert_eq!(md.nlink(), expected_nlink, "{ctx}: nlink");
        let ft = md.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            assert_eq!(t.as_os_str().as_bytes(), e.payload.as_deref().unwrap(), "{ctx}: symlink target");
            assert_eq!(md.len(), e.payload.as_ref().unwrap().len() as u64, "{ctx}: symlink size");
        } else if ft.is_file() {
            let size = if is_whiteout(tree, target) { 0 } else { ino.size };
            assert_eq!(md.len(), size, "{ctx}: size");
            if let Some(c) = &e.content {
                let got = std::fs::read(&p).unwrap_or_else(|err| panic!("{ctx}: read: {err}"));
                assert!(got == *c, "{ctx}: inline content differs");
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            assert_eq!(md.rdev(), ino.rdev as u64, "{ctx}: rdev");
        } else if ft.is_dir() {
            let mut names: BTreeSet<Vec<u8>> =
                std::fs::read_dir(&p).unwrap().map(|d| d.unwrap().file_name().as_bytes().to_vec()).collect();
            if target == ROOT {
                for i in 0..256 {
                    let stub = format!("{i:02x}");
                    if tree.child(ROOT, stub.as_bytes()).is_none() {
                        assert!(names.remove(stub.as_bytes()), "{ctx}: whiteout stub {stub} missing");
                        let sm = std::fs::symlink_metadata(p.join(&stub)).unwrap();
                        assert!(
                            sm.file_type().is_char_device() && sm.rdev() == 0,
                            "{ctx}: stub {stub} is not a 0/0 chardev"
                        );
                        assert_eq!(sm.mode(), S_IFCHR | 0o644, "{ctx}: stub {stub} mode");
                    }
                }
            }
            let want: BTreeSet<Vec<u8>> = tn.children.iter().map(|&c| tree.node(c).name.clone()).collect();
            assert_eq!(names, want, "{ctx}: directory entries");
        }
        compare_xattrs(&read_xattrs(&p), &expected_xattrs(tree, target, version), &ctx);
        // Hard links share the inode.
        match ino_of.get(&target) {
            Some(&i) => assert_eq!(md.ino(), i, "{ctx}: hard link inode number"),
            None => {
                ino_of.insert(target, md.ino());
            }
        }
        checked += 1;
    }
    assert_eq!(checked, tree.len());
}

fn mount_and_compare(name: &str) {
    let dir = conformance_dir();
    let lenient = ["no-newline.dump", "longlink.dump", "honggfuzz-longlink-unterminated.dump"];
    let input = read_input(&dir, name);
    let tree = parse(&input, &DumpOptions { strict: !lenient.contains(&name), limits: Limits::default() }).unwrap();
    let opts = match std::fs::read_to_string(dir.join(format!("{name}.version"))) {
        Ok(v) => {
            let v = v.trim().parse().unwrap();
            WriteOptions { min_version: v, max_version: v }
        }
        Err(_) => WriteOptions::default(),
    };
    mount_tree_and_compare(&tree, opts, name);
}

fn mount_tree_and_compare(tree: &Tree, opts: WriteOptions, what: &str) {
    require_root(SUITE);
    let _serial = serial();
    let has_whiteout = (0..tree.len() as NodeId).any(|i| tree.node(i).link_to.is_none() && is_whiteout(tree, i));
    let version = if opts.min_version == 0 && opts.max_version >= 1 && has_whiteout { 1 } else { opts.min_version };
    let tmp = Scratch::new("cfs-erofs-kernel-");
    let before = Snapshot::take(tmp.root(), None);
    let img = tmp.path("image.erofs");
    let mut f = std::fs::File::create(&img).unwrap();
    write_image(tree, &opts, &mut f).unwrap();
    drop(f);
    let mnt = tmp.mkdir("mnt");
    let m = Mounted::new(&img, &mnt);
    check_mounted(tree, version, &m.dir, what);
    drop(m);
    before.assert_nothing_left(what);
}

#[test]
fn kernel_random_trees() {
    for seed in 0..12u64 {
        let tree = random::random_tree(seed * 7919 + 3, [10usize, 80, 400][seed as usize % 3]);
        mount_tree_and_compare(&tree, WriteOptions::default(), &format!("random tree seed {seed}"));
    }
    let tree = random::random_tree(424242, 2000);
    mount_tree_and_compare(&tree, WriteOptions { min_version: 0, max_version: 0 }, "random tree v0");
}

#[test]
fn kernel_special_v0() {
    mount_and_compare("special.dump");
}

#[test]
fn kernel_special_v1() {
    mount_and_compare("special_v1.dump");
}

#[test]
fn kernel_config_with_hard_link() {
    mount_and_compare("config-with-hard-link.dump.gz");
}

#[test]
fn kernel_long_symlinks() {
    mount_and_compare("longlink.dump");
    mount_and_compare("honggfuzz-long-symlink.dump");
}

#[test]
fn kernel_big_files_and_acl() {
    mount_and_compare("bigfile-xattr.dump");
    mount_and_compare("honggfuzz-bigfile-with-acl.dump");
}

#[test]
fn kernel_cs9_minimal() {
    mount_and_compare("cs9-x86_64-minimal.dump.gz");
}

/// Overlayfs on top of the mounted image (as composefs mounts it, here with an empty
/// second lower layer and no data layer): the 256 whiteout stubs are hidden, the
/// escaped `trusted.overlay.*` xattrs of the input come back under their own names,
/// whiteouts appear as overlay "xwhiteout" files and their directories carry the
/// matching markers (plus `opaque=x` from format version 1 on).
fn overlay_view(name: &str) {
    require_root(SUITE);
    let _serial = serial();
    let dir = conformance_dir();
    let tree = parse(&read_input(&dir, name), &DumpOptions { strict: true, limits: Limits::default() }).unwrap();
    let opts = match std::fs::read_to_string(dir.join(format!("{name}.version"))) {
        Ok(v) => {
            let v = v.trim().parse().unwrap();
            WriteOptions { min_version: v, max_version: v }
        }
        Err(_) => WriteOptions::default(),
    };
    let has_whiteout = (0..tree.len() as NodeId).any(|i| tree.node(i).link_to.is_none() && is_whiteout(&tree, i));
    let version = if opts.min_version == 0 && opts.max_version >= 1 && has_whiteout { 1 } else { opts.min_version };
    let tmp = Scratch::new("cfs-erofs-overlay-");
    let before = Snapshot::take(tmp.root(), None);
    let img = tmp.path("image.erofs");
    let mut f = std::fs::File::create(&img).unwrap();
    write_image(&tree, &opts, &mut f).unwrap();
    drop(f);
    let (lower, empty, ovl) = (tmp.mkdir("lower"), tmp.mkdir("empty"), tmp.mkdir("ovl"));
    let m = Mounted::new(&img, &lower);
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}:{}", lower.display(), empty.display()))
        .arg(&ovl)
        .output()
        .unwrap();
    assert!(out.status.success(), "overlay mount failed: {}", String::from_utf8_lossy(&out.stderr));
    let o = Mounted { dir: ovl.clone() };
    for id in 0..tree.len() as NodeId {
        let rel = tree.path_of(id);
        let p = if rel.is_empty() { ovl.clone() } else { ovl.join(std::ffi::OsStr::from_bytes(&rel)) };
        let ctx = format!("{name} (overlay): /{}", String::from_utf8_lossy(&rel));
        let t = tree.resolve(id);
        let n = tree.node(t);
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let mut want: BTreeMap<Vec<u8>, Vec<u8>> =
            n.entry.xattrs.iter().map(|x| (x.key.clone(), x.value.clone())).collect();
        if is_whiteout(&tree, t) {
            assert!(md.file_type().is_file() && md.len() == 0, "{ctx}: whiteout is not an empty regular file");
            want.insert(b"trusted.overlay.whiteout".to_vec(), Vec::new());
            want.insert(b"user.overlay.whiteout".to_vec(), Vec::new());
        }
        if n.entry.inode.is_dir() {
            if n.children.iter().any(|&c| tree.node(c).link_to.is_none() && is_whiteout(&tree, c)) {
                want.insert(b"trusted.overlay.whiteouts".to_vec(), Vec::new());
                want.insert(b"user.overlay.whiteouts".to_vec(), Vec::new());
                if version >= 1 {
                    want.insert(b"trusted.overlay.opaque".to_vec(), b"x".to_vec());
                    want.insert(b"user.overlay.opaque".to_vec(), b"x".to_vec());
                }
            }
            let names: BTreeSet<Vec<u8>> =
                std::fs::read_dir(&p).unwrap().map(|d| d.unwrap().file_name().as_bytes().to_vec()).collect();
            let expect: BTreeSet<Vec<u8>> = n.children.iter().map(|&c| tree.node(c).name.clone()).collect();
            assert_eq!(names, expect, "{ctx}: entries (whiteout stubs must be hidden)");
        }
        compare_xattrs(&read_xattrs(&p), &want, &ctx);
        if let Some(c) = &n.entry.content {
            assert!(std::fs::read(&p).unwrap() == *c, "{ctx}: content");
        }
    }
    drop(o);
    drop(m);
    before.assert_nothing_left(name);
}

#[test]
fn kernel_overlay_view_special_v0() {
    overlay_view("special.dump");
}

#[test]
fn kernel_overlay_view_special_v1() {
    overlay_view("special_v1.dump");
}
