//! Root tier for OCI images: the store, flattening, the image writer and the mount together on
//! the real kernel. The two real layers' trees (from their zstd:chunked TOCs, whiteouts literal)
//! go into a store as layer images, with objects made from the source tars (extracted by GNU
//! tar: trusted test data); the flattened image is mounted with `cfsmount oci mount` and listed
//! with real-layers' own `list-tree.py`: it must equal umoci's listing (`image.tree.txt`).
//! Then `oci rm` is refused while mounted, and after umount, rm and gc leave no object.
//! Needs root: fails with the reason otherwise. Run it under /tmp/cfsmount-root.lock.
#[path = "support/conformance.rs"]
mod conformance;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cfsmount::input::toc::{parse, TocOptions};
use cfsmount::oci::flatten::{flatten, LayerTree};
use cfsmount::oci::Sha256;
use cfsmount::store::repo::{ImageInfo, LayerInfo, Lock, Repo};
use cfsmount::tree::Limits;

const BIN: &str = env!("CARGO_BIN_EXE_cfsmount");
const DIFF: [&str; 2] = [
    "a09e9eba2bfd08ddbbf9728a16aedeaf591dc955626a016a4efcf73271e8e69d",
    "7ca8475e775051f5495c0d12a0eeb2767e0d6aac5a6e8850e8944966d2954e6d",
];

fn real() -> PathBuf {
    conformance::conformance_root().join("real-layers")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn cfs(state: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("CFSMOUNT_STATE_DIR", state);
    c
}

/// Every regular file of the extracted source tars into `objects/xx/rest` of its sha256.
fn objects_from_tars(scratch: &Path, objects: &Path) {
    for (i, d) in DIFF.iter().enumerate() {
        let x = scratch.join(format!("x{i}"));
        std::fs::create_dir(&x).unwrap();
        let tar = real().join("writers/skopeo-1.22.2-dir-uncompressed").join(d);
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&tar)
            .arg("-C")
            .arg(&x));
        let out = run(Command::new("find").arg(&x).args(["-type", "f", "-size", "+0", "-print0"]));
        for p in out.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
            let p = Path::new(std::ffi::OsStr::from_bytes(p));
            let mut data = Vec::new();
            std::fs::File::open(p).unwrap().read_to_end(&mut data).unwrap();
            let h = Sha256::of(&data).hex();
            std::fs::create_dir_all(objects.join(&h[..2])).unwrap();
            let dst = objects.join(&h[..2]).join(&h[2..]);
            if !dst.exists() {
                std::fs::write(dst, &data).unwrap();
            }
        }
    }
}

use std::os::unix::ffi::OsStrExt;

fn layer_tree(n: u32) -> LayerTree {
    let p = real().join(format!("writers/skopeo-1.22.2-zstd-chunked/layer{n}.toc.json.gz"));
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap()).read_to_end(&mut json).unwrap();
    let opts = TocOptions { keep_whiteouts: true, ..TocOptions::default() };
    parse(&json, &opts).unwrap().into()
}

fn count_files(d: &Path) -> usize {
    let out = run(Command::new("find").arg(d).args(["-type", "f"]));
    out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count()
}

/// Every test's start: root is checked; a scratch directory under /var/tmp with its store, state
/// directory and mount point (the last two made).
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    assert!(rustix::process::geteuid().is_root(), "root_oci needs root (it mounts); run the root tier as root");
    let scratch = tempfile::Builder::new().prefix("oci-root-").tempdir_in("/var/tmp").unwrap();
    let s = scratch.path();
    let (store, state, mnt) = (s.join("store"), s.join("state"), s.join("mnt"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    (scratch, store, state, mnt)
}

#[test]
fn real_layers_image_mounts_as_umoci_unpacks_it() {
    let (scratch, store, state, mnt) = scratch();
    let s = scratch.path();

    let repo = Repo::open(&store, Lock::Shared).unwrap();
    objects_from_tars(s, &repo.objects_dir());
    let objects_before = count_files(&repo.objects_dir());
    let mut keys = Vec::new();
    for n in [1, 2] {
        let key = Sha256::of(format!("layer {n}").as_bytes());
        let info = LayerInfo {
            digest: key.to_string(),
            size: 0,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            diff_id: format!("sha256:{}", DIFF[n as usize - 1]),
            annotations: Default::default(),
            external_links: vec![],
            implicit_dirs: vec![],
            read: None,
        };
        repo.add_layer(&key, &layer_tree(n), info).unwrap();
        keys.push(key);
    }
    let trees = keys.iter().map(|k| repo.layer_tree(k).unwrap()).collect();
    let flat = flatten(trees, Limits::default()).unwrap();
    let manifest = Sha256::of(b"real-layers test image");
    let info = ImageInfo {
        manifest: manifest.to_string(),
        config: String::new(),
        layers: keys.iter().map(|k| k.to_string()).collect(),
        platform: "linux/amd64".into(),
        fsverity: String::new(),
        verity_enabled: false,
        image_size: 0,
        source: "real-layers".into(),
        imported: 0,
    };
    let stored = repo.add_image(&manifest, flat, b"{}", b"{}", info).unwrap();
    drop(repo);

    // `oci ls` shows it; mount it by name and list it with real-layers' script.
    let ls = run(cfs(&state).args(["oci", "ls", "--store"]).arg(&store));
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&stored.fsverity), "{ls:?}");
    run(cfs(&state).args(["oci", "mount", "real-layers"]).arg(&mnt).arg("--store").arg(&store));
    let listing = Command::new("python3").arg(real().join("list-tree.py")).arg(&mnt).output().unwrap();
    let rm_while_mounted = cfs(&state).args(["oci", "rm", "real-layers", "--store"]).arg(&store).output().unwrap();
    run(cfs(&state).arg("umount").arg(&mnt));
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let want = std::fs::read(real().join("expected/image.tree.txt")).unwrap();
    if listing.stdout != want {
        let got = s.join("got.txt");
        std::fs::write(&got, &listing.stdout).unwrap();
        let d = Command::new("diff").arg(real().join("expected/image.tree.txt")).arg(&got).output().unwrap();
        panic!("mounted image differs from image.tree.txt:\n{}", String::from_utf8_lossy(&d.stdout));
    }
    assert!(!rm_while_mounted.status.success());
    assert!(String::from_utf8_lossy(&rm_while_mounted.stderr).contains("is mounted at"), "{rm_while_mounted:?}");

    // rm + gc: the only image goes, so its layers and every object go.
    assert!(objects_before > 0);
    run(cfs(&state).args(["oci", "rm", "real-layers", "--store"]).arg(&store));
    let gc = run(cfs(&state).args(["store", "gc", "--store"]).arg(&store));
    let gc = String::from_utf8_lossy(&gc.stdout).to_string();
    assert!(gc.contains(&format!("removed 2 layers and {objects_before} objects")), "{gc}");
    assert_eq!(count_files(&store.join("objects")), 0);
    assert_eq!(count_files(&store.join("images")) + count_files(&store.join("layers")), 0);
}

fn list_tree(dir: &Path) -> Vec<u8> {
    run(Command::new("python3").arg(real().join("list-tree.py")).arg(dir)).stdout
}

/// `diff` of two listings for a failure message.
fn diff(a: &[u8], b: &[u8], scratch: &Path) -> String {
    std::fs::write(scratch.join("a.txt"), a).unwrap();
    std::fs::write(scratch.join("b.txt"), b).unwrap();
    let d = Command::new("diff").arg(scratch.join("a.txt")).arg(scratch.join("b.txt")).output().unwrap();
    String::from_utf8_lossy(&d.stdout).into_owned()
}

/// Import and mount `reference` with the CLI, list the mount, unmount.
fn mount_and_list(reference: &str, store: &Path, state: &Path, mnt: &Path) -> Vec<u8> {
    run(cfs(state).args(["oci", "mount", reference]).arg(mnt).arg("--store").arg(store));
    let l = Command::new("python3").arg(real().join("list-tree.py")).arg(mnt).output().unwrap();
    run(cfs(state).arg("umount").arg(mnt));
    assert!(l.status.success(), "{}", String::from_utf8_lossy(&l.stderr));
    l.stdout
}

#[test]
fn real_layouts_import_and_mount_as_umoci_unpacks_them() {
    let (scratch, store, state, mnt) = scratch();
    let s = scratch.path();
    let want = std::fs::read(real().join("expected/image.tree.txt")).unwrap();
    for w in ["umoci-0.4.7-gzip", "skopeo-1.9.3-zstd-chunked", "skopeo-1.22.2-zstd-chunked"] {
        let r = format!("oci:{}:v1", real().join("writers").join(w).join("oci").display());
        let got = mount_and_list(&r, &store, &state, &mnt);
        assert!(got == want, "{w}: mounted image differs from image.tree.txt:\n{}", diff(&want, &got, s));
    }
    // One image digest for all three (gzip and zstd:chunked of two generations).
    let ls = String::from_utf8(run(cfs(&state).args(["oci", "ls", "--store"]).arg(&store)).stdout).unwrap();
    let digests: std::collections::BTreeSet<&str> = ls.lines().skip(1).map(|l| l.split('\t').nth(4).unwrap()).collect();
    assert_eq!(digests.len(), 1, "{ls}");
}

/// A tree for a layer tar: (path, content or "DIR" or "->target" or "=link-to").
fn make_tree(root: &Path, entries: &[(&str, &str)]) {
    std::fs::create_dir_all(root).unwrap();
    for (p, what) in entries {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if *what == "DIR" {
            std::fs::create_dir_all(&path).unwrap();
        } else if let Some(t) = what.strip_prefix("->") {
            std::os::unix::fs::symlink(t, &path).unwrap();
        } else if let Some(t) = what.strip_prefix('=') {
            std::fs::hard_link(root.join(t), &path).unwrap();
        } else {
            std::fs::write(&path, what).unwrap();
        }
    }
}

/// Images made here with real tools (GNU tar layers, umoci), compared with `umoci unpack`.
#[test]
fn images_made_with_umoci_mount_as_umoci_unpacks_them() {
    let (scratch, store, state, mnt) = scratch();
    let s = scratch.path();
    let layers: [&[(&str, &str)]; 3] = [
        &[
            ("etc/motd", "hello\n"),
            ("etc/keep", "keep\n"),
            ("bin/tool", "#!/bin/sh\n"),
            ("bin/tool-link", "=bin/tool"),
            ("bin/sh", "->tool"),
            ("data/a", "a1\n"),
            ("data/b", "b1\n"),
            ("data/sub/c", "c1\n"),
            ("gone/deep/x", "x\n"),
            ("file-to-dir", "was a file\n"),
            ("dir-to-file/inside", "in a dir\n"),
        ],
        &[
            ("etc/.wh.motd", ""),
            (".wh.gone", ""),
            ("data/.wh..wh..opq", ""),
            ("data/a", "a2\n"),
            ("file-to-dir/now-inside", "now a dir\n"),
            ("dir-to-file", "now a file\n"),
            ("bin/added", "added in layer 2\n"),
        ],
        &[("file-to-dir", "a file again\n"), ("dir-to-file/back", "a dir again\n"), ("etc/motd", "motd is back\n")],
    ];
    let layout = s.join("layout");
    let img = format!("{}:v1", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    for (i, entries) in layers.iter().enumerate() {
        let t = s.join(format!("t{i}"));
        make_tree(&t, entries);
        let tar = s.join(format!("l{i}.tar"));
        run(Command::new("tar")
            .args(["--format=posix", "--numeric-owner", "--sort=name", "--mtime=@1714564800", "--xattrs"])
            .arg("-C")
            .arg(&t)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        run(Command::new("umoci").args(["raw", "add-layer", "--image", &img]).arg(&tar));
    }
    let bundle = s.join("bundle");
    run(Command::new("umoci").args(["unpack", "--image", &img]).arg(&bundle));
    let want = list_tree(&bundle.join("rootfs"));
    let got = mount_and_list(&format!("oci:{img}"), &store, &state, &mnt);
    assert!(got == want, "mounted image differs from umoci unpack:\n{}", diff(&want, &got, s));
    let text = String::from_utf8_lossy(&got).to_string();
    for p in ["/etc/motd\t", "/file-to-dir\tf", "/dir-to-file\td", "/dir-to-file/back\t", "/data/a\t"] {
        assert!(text.contains(p), "{p} missing:\n{text}");
    }
    for p in ["/gone", "/data/b\t", "/data/sub", "/.wh.", "/dir-to-file/inside"] {
        assert!(!text.contains(p), "{p} present:\n{text}");
    }

    // The bundled example, too.
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oci-hello/oci");
    let b2 = s.join("bundle2");
    run(Command::new("umoci").args(["unpack", "--image", &format!("{}:v1", ex.display())]).arg(&b2));
    let want = list_tree(&b2.join("rootfs"));
    let got = mount_and_list(&format!("oci:{}:v1", ex.display()), &store, &state, &mnt);
    assert!(got == want, "examples/oci-hello differs from umoci unpack:\n{}", diff(&want, &got, s));
}
