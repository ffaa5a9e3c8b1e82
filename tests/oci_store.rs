//! The store under concurrency and crashes, with real images: umoci's real-layers image (tag
//! v1) and, in the same layout, v2 = v1 plus a third layer made here by GNU tar and added by
//! umoci (a new file, a whiteout of a layer-2 file, a file turned back into a directory).
//! Parallel imports of the two overlapping images; kill -9 at many moments of an import, then
//! imports that succeed and a store whose every object is verified; rm + gc leave exactly the
//! objects the remaining image's layers use.
#[path = "support/conformance.rs"]
mod conformance;
#[path = "support/store.rs"]
mod repo;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cfsmount::oci::Sha256;

const BIN: &str = env!("CARGO_BIN_EXE_cfsmount");

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The umoci layout of real-layers with a second tag v2 that has a third layer.
fn two_images(dir: &Path) -> PathBuf {
    let src = conformance::conformance_root().join("real-layers/writers/umoci-0.4.7-gzip/oci");
    let l = dir.join("layout");
    sh(Command::new("cp").arg("-r").arg(&src).arg(&l));
    sh(Command::new("chmod").arg("-R").arg("u+w").arg(&l));
    let t = dir.join("t3");
    std::fs::create_dir_all(t.join("opt/edge/dir-to-file")).unwrap();
    std::fs::write(t.join("opt/edge/layer3-only.txt"), b"only layer 3 has this content\n").unwrap();
    std::fs::write(t.join("opt/edge/.wh.new-in-layer-2.txt"), b"").unwrap();
    std::fs::write(t.join("opt/edge/dir-to-file/inside-again"), b"a directory once more\n").unwrap();
    let tar = dir.join("layer3.tar");
    sh(Command::new("tar")
        .args(["--format=posix", "--numeric-owner", "--owner=0", "--group=0", "--mtime=@1714564800", "--sort=name"])
        .arg("-C")
        .arg(&t)
        .arg("-cf")
        .arg(&tar)
        .arg("opt"));
    let img = |tag: &str| format!("{}:{tag}", l.display());
    sh(Command::new("umoci").args(["tag", "--image", &img("v1"), "v2"]));
    sh(Command::new("umoci").args(["raw", "add-layer", "--image", &img("v2")]).arg(&tar));
    l
}

fn import_cmd(layout: &Path, tag: &str, store: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["oci", "import"]).arg(format!("oci:{}:{tag}", layout.display())).arg("--store").arg(store);
    c
}

fn count(d: &Path) -> usize {
    std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn parallel_imports_of_overlapping_images() {
    let tmp = tempfile::tempdir().unwrap();
    let l = two_images(tmp.path());
    let store = tmp.path().join("store");
    let kids: Vec<_> = ["v1", "v2", "v1", "v2", "v2", "v1"]
        .iter()
        .map(|t| import_cmd(&l, t, &store).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let mut digests = BTreeSet::new();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let s = String::from_utf8(out.stdout).unwrap();
        digests.insert(s.split('\t').take(2).collect::<Vec<_>>().join(" "));
    }
    // Two images (each reported with one digest by every importer), three layers, no staging.
    assert_eq!(digests.len(), 2, "{digests:?}");
    assert_eq!((count(&store.join("images")), count(&store.join("layers"))), (2, 3));
    assert_eq!(count(&store.join("tmp")), 0);
    let by_layers = repo::used_objects(&store, "layers", true);
    assert!(repo::used_objects(&store, "images", true).is_subset(&by_layers));
    assert_eq!(repo::files_under(&store.join("objects")), by_layers);
}

#[test]
fn kill_9_during_imports_then_import_again_then_rm_and_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let l = two_images(tmp.path());
    let store = tmp.path().join("store");
    // Kill imports of v2 at many moments, into one store, and once with v1 done before.
    for (i, ms) in [5u64, 30, 80, 150, 250, 400, 600, 900, 1300].iter().enumerate() {
        if i == 4 {
            sh(&mut import_cmd(&l, "v1", &store));
        }
        let mut k = import_cmd(&l, "v2", &store).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(*ms));
        let _ = k.kill(); // SIGKILL
        let _ = k.wait();
        // Whatever is published is whole: every image and layer reads back, every object it
        // names is there with its content.
        repo::used_objects(&store, "layers", true);
        repo::used_objects(&store, "images", true);
    }
    sh(&mut import_cmd(&l, "v1", &store));
    sh(&mut import_cmd(&l, "v2", &store));
    assert_eq!((count(&store.join("images")), count(&store.join("layers"))), (2, 3));
    let ls = Command::new(BIN).args(["oci", "ls", "--store"]).arg(&store).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 3);

    // gc keeps what the two images use, removes what the killed imports left (their staging
    // in tmp/ and the object store's staging directories in objects/).
    sh(Command::new(BIN).args(["store", "gc", "--store"]).arg(&store));
    assert_eq!(count(&store.join("tmp")), 0);
    let hidden = std::fs::read_dir(store.join("objects"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
    assert_eq!(repo::files_under(&store.join("objects")), repo::used_objects(&store, "layers", true));

    // rm v2 + gc: its third layer and the objects only it used go; v1's stay, exactly.
    let v2_only = tmp.path().join("t3/opt/edge/layer3-only.txt");
    let h = Sha256::of(&std::fs::read(v2_only).unwrap()).hex();
    let obj = store.join("objects").join(&h[..2]).join(&h[2..]);
    assert!(obj.exists());
    let rm = Command::new(BIN)
        .args(["oci", "rm"])
        .arg(format!("oci:{}:v2", l.display()))
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    let gc = Command::new(BIN).args(["store", "gc", "--store"]).arg(&store).output().unwrap();
    let gc = String::from_utf8_lossy(&gc.stdout).to_string();
    assert!(gc.starts_with("removed 1 layers and "), "{gc}");
    assert!(!obj.exists());
    assert_eq!((count(&store.join("images")), count(&store.join("layers"))), (1, 2));
    assert_eq!(repo::files_under(&store.join("objects")), repo::used_objects(&store, "layers", true));
}
