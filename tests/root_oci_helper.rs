//! Root tier: `cfsmount oci` through the installed setuid helper, as the unprivileged test user
//! `cfstest`. The user imports an OCI layout made here with umoci (two layers, a whiteout, an
//! opaque directory) into their own store through the setuid binary (which runs the import as
//! the user: the store's files come out owned by the user), mounts it with `oci mount DIGEST`,
//! reads it (the listing equals `umoci unpack` of the same layout; the user reads a file),
//! mounts it by `oci:` reference (imported by a child that is the user) and by digest prefix,
//! mounts it idmapped (the image's root becomes the user) and sends it with `--fd-out` to a
//! receiver in the user's own namespaces; nothing is left behind. Then the refusals: another
//! user's store, a store whose objects/ or images/ are not the user's, a symlinked
//! images/<digest>, a digest not in the store, names that resolve to nothing, an import into
//! another user's store, `--upperdir`, a
//! target that is not the user's; each refused with one line and nothing mounted.
//! Needs root and the conformance data (list-tree.py). Run under /tmp/cfsmount-root.lock.
#[path = "support/conformance.rs"]
mod conformance;
#[path = "support/helper.rs"]
mod helper;
#[path = "support/root.rs"]
mod root;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use helper::{
    assert_refused_nothing_mounted, env, mountpoints, run_as, run_as_strs, run_as_with, spawn_receiver, user_dir,
};
use root::{mount_options, serial, sh, stderr, Snapshot, TestUser as User};

const FILE_F: &str = "read through the helper\n";

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    o
}

fn list_tree(dir: &Path) -> Vec<u8> {
    let tool = conformance::conformance_root().join("real-layers/list-tree.py");
    ok(sh("python3", &[tool.to_str().unwrap(), dir.to_str().unwrap()]), "list-tree.py").stdout
}

/// [`list_tree`] run as `u`: a helper mount reads its data with the caller's rights (the object
/// directory is an idmapped clone), so root reading the user's 0600 objects through it gets EACCES.
fn list_tree_as(u: &User, dir: &Path) -> Vec<u8> {
    let tool = conformance::conformance_root().join("real-layers/list-tree.py");
    let o = run_as_with(u, Path::new("/usr/bin/python3"), &[tool.into(), dir.into()], |_| {});
    ok(o, "list-tree.py as the user").stdout
}

/// The user's layout and store, the image digest and the `umoci unpack` listing.
struct Fixture {
    dir: PathBuf,
    store: PathBuf,
    digest: String,
    want: Vec<u8>,
}

/// A tree for a layer tar: (path, content or "DIR").
fn make_tree(root: &Path, entries: &[(&str, &str)]) {
    for (p, what) in entries {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if *what == "DIR" {
            std::fs::create_dir_all(&path).unwrap();
        } else {
            std::fs::write(&path, what).unwrap();
        }
    }
}

/// Two layers with umoci (root, in a scratch dir), then the layout goes to `dir` owned by the
/// user; `umoci unpack` of it is the expected listing.
fn make_layout(dir: &Path, u: &User) -> Vec<u8> {
    let scratch = tempfile::Builder::new().prefix("ocipriv-").tempdir_in("/var/tmp").unwrap();
    let s = scratch.path();
    let layout = s.join("layout");
    let img = format!("{}:v1", layout.display());
    ok(sh("umoci", &["init", "--layout", layout.to_str().unwrap()]), "umoci init");
    ok(sh("umoci", &["new", "--image", &img]), "umoci new");
    let layers: [&[(&str, &str)]; 2] = [
        &[("f", FILE_F), ("etc/motd", "hello\n"), ("data/a", "a1\n"), ("data/b", "b1\n"), ("bin/DIR", "DIR")],
        &[("etc/.wh.motd", ""), ("data/.wh..wh..opq", ""), ("data/c", "c2\n"), ("added", "layer 2\n")],
    ];
    for (i, entries) in layers.iter().enumerate() {
        let t = s.join(format!("t{i}"));
        std::fs::create_dir_all(&t).unwrap();
        make_tree(&t, entries);
        let tar = s.join(format!("l{i}.tar"));
        let args = ["--format=posix", "--numeric-owner", "--sort=name", "--mtime=@1714564800", "-C"];
        let o = Command::new("tar").args(args).arg(&t).arg("-cf").arg(&tar).arg(".").output().unwrap();
        ok(o, "tar");
        ok(sh("umoci", &["raw", "add-layer", "--image", &img, tar.to_str().unwrap()]), "umoci raw add-layer");
    }
    let bundle = s.join("bundle");
    ok(sh("umoci", &["unpack", "--image", &img, bundle.to_str().unwrap()]), "umoci unpack");
    let want = list_tree(&bundle.join("rootfs"));
    ok(sh("cp", &["-a", layout.to_str().unwrap(), dir.to_str().unwrap()]), "cp");
    ok(sh("chown", &["-R", &format!("{}:{}", u.uid, u.gid), dir.join("layout").to_str().unwrap()]), "chown");
    want
}

/// `cfsmount oci import` through the setuid binary, as `u`: prints the image digest first.
fn import_as(u: &User, layout: &Path, store: &Path) -> String {
    let r = format!("oci:{}:v1", layout.display());
    let o = ok(run_as(u, &["oci", "import", &r, "--store", store.to_str().unwrap()]), "oci import as the user");
    String::from_utf8_lossy(&o.stdout).split('\t').next().unwrap().to_string()
}

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let u = &env().user;
        let dir = user_dir(u, "oci");
        let want = make_layout(&dir, u);
        let store = dir.join("store");
        let digest = import_as(u, &dir.join("layout"), &store);
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "import printed {digest:?}");
        Fixture { dir, store, digest, want }
    })
}

fn oci_mount(u: &User, store: &Path, reference: &str, extra: &[&str]) -> Output {
    let mut args = vec!["oci".to_string(), "mount".into(), reference.into(), "--store".into()];
    args.push(store.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    run_as_strs(u, &args)
}

fn umount_as(u: &User, target: &Path) {
    ok(run_as(u, &["umount", target.to_str().unwrap()]), "umount as the user");
}

/// A fresh target directory owned by the user.
fn target(u: &User, name: &str) -> PathBuf {
    root::fresh_dir_for(u, &fixture().dir.join(name))
}

#[test]
fn user_imports_mounts_reads_and_unmounts_own_image() {
    let _g = serial();
    let e = env();
    let u = &e.user;
    let fx = fixture();
    let snap = Snapshot::take(&e.root, Some(Path::new("/run/cfsmount")));
    // The import ran as the user, not as root: everything it wrote is the user's.
    let hex = fx.digest.strip_prefix("sha256:").unwrap();
    for p in ["", "lock", "objects", "images", &format!("images/{hex}/image.cfs"), &format!("images/{hex}/image.json")]
    {
        let md = std::fs::symlink_metadata(fx.store.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (u.uid, u.gid), "store/{p} is not the user's");
    }

    // Plain mount: the listing equals `umoci unpack`; the user reads a file; nosuid,nodev,ro.
    let t = target(u, "mnt");
    ok(oci_mount(u, &fx.store, &fx.digest, &[t.to_str().unwrap()]), "oci mount as the user");
    let got = list_tree_as(u, &t);
    assert!(got == fx.want, "mounted image differs from umoci unpack:\n{}\n---\n{}", show(&fx.want), show(&got));
    let cat = run_as_with(u, Path::new("/bin/cat"), &[t.join("f").into()], |_| {});
    assert_eq!(String::from_utf8_lossy(&ok(cat, "cat as the user").stdout), FILE_F);
    let opts = mount_options(&t).expect("mounted");
    for o in ["ro", "nosuid", "nodev"] {
        assert!(opts.iter().any(|x| x == o), "{o} missing in {opts:?}");
    }
    umount_as(u, &t);
    snap.assert_nothing_left("oci mount + umount");

    // Bare hex digest, idmapped: the image's root (uid/gid 0) is the user's own uid/gid.
    let (um, gm) = (format!("0:{}:1", u.uid), format!("0:{}:1", u.gid));
    let extra = [t.to_str().unwrap(), "--uidmap", &um, "--gidmap", &gm];
    ok(oci_mount(u, &fx.store, hex, &extra), "oci mount --uidmap as the user");
    let md = std::fs::symlink_metadata(t.join("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (u.uid, u.gid), "image root not mapped onto the user");
    umount_as(u, &t);
    snap.assert_nothing_left("oci mount --uidmap + umount");

    // Names other than a digest are resolved (and `oci:` imported) by a child that is the user:
    // an `oci:` reference into a store that does not exist yet creates it, owned by the user.
    let layout_ref = format!("oci:{}:v1", fx.dir.join("layout").display());
    let fresh = fx.dir.join("store-fresh");
    ok(oci_mount(u, &fresh, &layout_ref, &[t.to_str().unwrap()]), "oci mount oci:LAYOUT as the user");
    assert!(list_tree_as(u, &t) == fx.want, "oci mount oci:LAYOUT differs from umoci unpack");
    umount_as(u, &t);
    for p in ["", "objects", &format!("images/{hex}/image.cfs")] {
        let md = std::fs::symlink_metadata(fresh.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (u.uid, u.gid), "store-fresh/{p} is not the user's");
    }
    for name in [&hex[..12], layout_ref.as_str()] {
        ok(oci_mount(u, &fx.store, name, &[t.to_str().unwrap()]), "oci mount by prefix / source");
        assert!(list_tree_as(u, &t) == fx.want, "oci mount {name} differs from umoci unpack");
        umount_as(u, &t);
    }
    snap.assert_nothing_left("oci mount by name");

    // --fd-out: the receiver attaches it in the user's own user+mount namespace and reads f.
    let sock = fx.dir.join("sock");
    let before = mountpoints();
    let mut recv = spawn_receiver(u, "read", &sock, &t);
    let o = oci_mount(u, &fx.store, &fx.digest, &["--fd-out", sock.to_str().unwrap()]);
    assert!(o.status.success(), "oci mount --fd-out: {}", stderr(&o));
    let r = recv.output();
    assert!(r.status.success(), "receiver: {}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(String::from_utf8_lossy(&r.stdout), FILE_F, "content read in the user's namespace");
    assert_eq!(before, mountpoints(), "--fd-out attached something in the initial namespace");
    // The helper's record of the fd-out mount goes at its next liveness check: a later mount.
    ok(oci_mount(u, &fx.store, &fx.digest, &[t.to_str().unwrap()]), "oci mount after --fd-out");
    umount_as(u, &t);
    snap.assert_nothing_left("oci mount --fd-out");
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `f` with `path` owned by `uid` (as root), then gives it back to the user.
fn owned_by<T>(path: &Path, uid: u32, u: &User, f: impl FnOnce() -> T) -> T {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
    let r = f();
    std::os::unix::fs::lchown(path, Some(u.uid), None).unwrap();
    r
}

#[test]
fn foreign_stores_and_bad_requests_are_refused() {
    let _g = serial();
    let e = env();
    let (u, other) = (&e.user, &e.other);
    let fx = fixture();
    let hex = fx.digest.strip_prefix("sha256:").unwrap().to_string();
    let t = target(u, "mnt-refused");
    let ts = t.to_str().unwrap();
    let snap = Snapshot::take(&e.root, Some(Path::new("/run/cfsmount")));
    let before = mountpoints();

    // Another user's store, even one the user may read.
    let odir = user_dir(other, "oci");
    ok(sh("cp", &["-a", fx.dir.join("layout").to_str().unwrap(), odir.to_str().unwrap()]), "cp");
    ok(sh("chown", &["-R", &other.name, odir.join("layout").to_str().unwrap()]), "chown");
    let ostore = odir.join("store");
    assert_eq!(import_as(other, &odir.join("layout"), &ostore), fx.digest);
    let foreign_store = format!("owned by uid {}, not by the caller (uid {})", other.uid, u.uid);
    assert_refused_nothing_mounted(&oci_mount(u, &ostore, &fx.digest, &[ts]), &foreign_store, &before);
    ok(sh("chmod", &["-R", "go+rX", ostore.to_str().unwrap()]), "chmod");
    assert_refused_nothing_mounted(&oci_mount(u, &ostore, &fx.digest, &[ts]), &foreign_store, &before);
    // objects/ that others cannot search (the helper's overlay reads with others' rights).
    let objects = fx.store.join("objects");
    ok(sh("chmod", &["0700", objects.to_str().unwrap()]), "chmod");
    let o = oci_mount(u, &fx.store, &fx.digest, &[ts]);
    ok(sh("chmod", &["0755", objects.to_str().unwrap()]), "chmod");
    assert_refused_nothing_mounted(&o, "mode 0700: the helper's overlay reads objects", &before);

    // The user's store with objects/, images/, images/<hex> or image.cfs not the user's.
    for p in ["objects".to_string(), "images".into(), format!("images/{hex}"), format!("images/{hex}/image.cfs")] {
        let o = owned_by(&fx.store.join(&p), other.uid, u, || oci_mount(u, &fx.store, &fx.digest, &[ts]));
        assert_refused_nothing_mounted(&o, &format!("owned by uid {}, not by the caller", other.uid), &before);
    }

    // A symlinked images/<hex> (to the user's own copy elsewhere), and a symlinked image.cfs.
    let img = fx.store.join("images").join(&hex);
    let moved = fx.dir.join("moved-image");
    std::fs::rename(&img, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &img).unwrap();
    std::os::unix::fs::lchown(&img, Some(u.uid), Some(u.gid)).unwrap();
    let o = oci_mount(u, &fx.store, &fx.digest, &[ts]);
    std::fs::remove_file(&img).unwrap();
    std::fs::rename(&moved, &img).unwrap();
    assert_refused_nothing_mounted(&o, "not a directory (a symlink?)", &before);
    let cfs = img.join("image.cfs");
    std::fs::rename(&cfs, fx.dir.join("moved.cfs")).unwrap();
    std::os::unix::fs::symlink(fx.dir.join("moved.cfs"), &cfs).unwrap();
    std::os::unix::fs::lchown(&cfs, Some(u.uid), Some(u.gid)).unwrap();
    let o = oci_mount(u, &fx.store, &fx.digest, &[ts]);
    std::fs::remove_file(&cfs).unwrap();
    std::fs::rename(fx.dir.join("moved.cfs"), &cfs).unwrap();
    assert_refused_nothing_mounted(&o, "not a regular file", &before);

    // A digest not in the store; names the store cannot resolve (the child that is the user
    // answers); importing into another user's store (the import runs as the user: EACCES).
    let absent = format!("sha256:{}", "0".repeat(64));
    assert_refused_nothing_mounted(&oci_mount(u, &fx.store, &absent, &[ts]), "no image sha256:0000", &before);
    for name in ["0000dead", "sha256:ABC", "oci:/nonexistent/layout:v1"] {
        assert_refused_nothing_mounted(
            &oci_mount(u, &fx.store, name, &[ts]),
            &format!("oci mount {name:?}: refused"),
            &before,
        );
    }
    ok(sh("chmod", &["-R", "go-rwx", ostore.to_str().unwrap()]), "chmod");
    let r = format!("oci:{}:v1", fx.dir.join("layout").display());
    assert_refused_nothing_mounted(&oci_mount(u, &ostore, &r, &[ts]), "Permission denied", &before);

    // A writable overlay; a target that is not the user's.
    let (up, wk) = (target(u, "upper"), target(u, "work"));
    let extra = [ts, "--upperdir", up.to_str().unwrap(), "--workdir", wk.to_str().unwrap()];
    assert_refused_nothing_mounted(&oci_mount(u, &fx.store, &fx.digest, &extra), "writable overlays", &before);
    let foreign = e.root.to_str().unwrap();
    assert_refused_nothing_mounted(
        &oci_mount(u, &fx.store, &fx.digest, &[foreign]),
        "not writable by the caller",
        &before,
    );

    // The store in use by `store gc` (exclusive lock): refused at once, not waited for.
    let lock = std::fs::File::open(fx.store.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let o = oci_mount(u, &fx.store, &fx.digest, &[ts]);
    drop(lock);
    assert_refused_nothing_mounted(&o, "held exclusively", &before);

    // After all that, the user's own mount still works, and nothing is left.
    ok(oci_mount(u, &fx.store, &fx.digest, &[ts]), "oci mount after the refusals");
    umount_as(u, &t);
    snap.assert_nothing_left("refusals");
}

/// The store is the user's to write: what it says grants nothing. A hostile image.cfs is vetted
/// like any image (a device node is refused); image.json may only add a check (a recorded
/// fs-verity digest that does not match the image refuses the mount) and must describe the
/// image it sits next to.
#[test]
fn store_contents_are_hostile_input() {
    let _g = serial();
    let e = env();
    let u = &e.user;
    let fx = fixture();
    let hex = fx.digest.strip_prefix("sha256:").unwrap();
    let t = target(u, "mnt-hostile");
    let ts = t.to_str().unwrap();
    let snap = Snapshot::take(&e.root, Some(Path::new("/run/cfsmount")));
    let before = mountpoints();
    let dir = fx.store.join("images").join(hex);
    let swap = |name: &str, bytes: &[u8], f: &dyn Fn() -> Output| {
        let p = dir.join(name);
        let old = std::fs::read(&p).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let o = f();
        std::fs::write(&p, old).unwrap();
        o
    };
    let mount = || oci_mount(u, &fx.store, &fx.digest, &[ts]);

    let dev = helper::build_image(&format!(
        "/ 4096 40755 2 {uid} {gid} 0 0.0 - - -\n/sda 0 60660 1 {uid} {gid} 2048 0.0 - - -\n",
        uid = u.uid,
        gid = u.gid
    ));
    assert_refused_nothing_mounted(&swap("image.cfs", &dev, &mount), "device node", &before);

    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("image.json")).unwrap()).unwrap();
    let mut sealed = info.clone();
    sealed["verity_enabled"] = true.into();
    sealed["fsverity"] = "ab".repeat(32).into();
    let o = swap("image.json", &serde_json::to_vec(&sealed).unwrap(), &mount);
    assert_refused_nothing_mounted(&o, "does not match the expected abab", &before);
    let mut other = info.clone();
    other["manifest"] = format!("sha256:{}", "1".repeat(64)).into();
    let o = swap("image.json", &serde_json::to_vec(&other).unwrap(), &mount);
    assert_refused_nothing_mounted(&o, "describes sha256:1111", &before);

    ok(mount(), "oci mount with the store restored");
    umount_as(u, &t);
    snap.assert_nothing_left("hostile store contents");
}
