//! Root tier: the Additional Layer Store with the real podman 4.3.1 (Debian bookworm), a real
//! registry (Debian's docker-registry on 127.0.0.1) and an image made by real tools (GNU tar,
//! umoci, skopeo). Run under the machine-wide lock:
//! `flock /tmp/cfsmount-root.lock cargo test --test root_als -- --test-threads=1`.
//!
//! - `podman_takes_every_layer_from_the_store`: `als add`, then `podman pull` skips every layer
//!   blob (its debug log) and the registry serves no layer blob (its log); `podman run` reads
//!   the files through the composefs mounts; `podman image mount` shows exactly the tree
//!   `umoci unpack` makes of the image; `podman push` to another registry works from `blob`
//!   (the pushed layers decompress to the config's diff_ids); a layer in use refuses `als rm`;
//!   after `podman rmi` and `als rm` nothing is left (mounts, loop devices, records, objects).
//! - `mount_all_brings_a_root_back`: `als umount-all` (what a reboot does) leaves an empty
//!   directory podman ignores; `als mount-all` serves the same layers again.
//! - `toc_keys_follow_the_containers_storage_1_54_rules`: the real-layers images with TOCs
//!   (zstd:chunked by skopeo 1.22.2, eStargz and zstd:chunked by ctr-remote; conformance data):
//!   every layer is served under its blob digest and its TOC digest, checked against the
//!   lookup containers/storage ≥ 1.54 makes (restated from its source); skopeo 1.9.3's layers
//!   get no TOC key (GetTOCDigest ignores their annotation); podman 4.3.1 pulls the
//!   zstd:chunked image by blob digest and `podman image mount` equals umoci's listing.
//! - `rootless_podman_uses_an_idmapped_view`: see docs/als.md "Rootless podman".
//! - `a_user_makes_its_view_through_the_setuid_helper`: the test user cfstest runs the installed
//!   setuid helper: `als view` is refused while the policy's `features.als_view` is off, and
//!   for anything but the caller's own view from a root-owned store; then it makes its view,
//!   its rootless podman pulls and runs through it, another user can neither read nor remove
//!   it, `als view-rm` by the user leaves nothing mounted.

#[path = "support/conformance.rs"]
mod conformance;
#[path = "support/helper.rs"]
mod helper;
#[path = "support/podman.rs"]
mod podman;
#[path = "support/root.rs"]
mod root;

use std::path::{Path, PathBuf};
use std::process::Command;

use podman::{ok, run, text, Podman, Registry};

const BIN: &str = env!("CARGO_BIN_EXE_cfsmount");

/// The test image, built in the test's scratch directory (removed with it).
struct Fixture {
    layout: PathBuf,
}

fn fixture(s: &root::Scratch) -> Fixture {
    let layout = s.path("layout");
    podman::build_image(&s.path("image-work"), &layout);
    Fixture { layout }
}

fn cfsmount(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    c
}

fn push(src: &Path, reg: &Registry, name: &str) -> String {
    let dest = format!("{}/{name}", reg.host());
    ok(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{dest}")));
    dest
}

/// One test's world: scratch dir, store, ALS root, registry, podman; cleaned up on drop.
struct World {
    s: root::Scratch,
    store: PathBuf,
    als: PathBuf,
    reg: Registry,
    podman: Podman,
    state: PathBuf,
}

impl World {
    fn new(prefix: &str) -> World {
        let s = root::Scratch::new(prefix);
        let store = s.path("store");
        let als = s.mkdir("als");
        let reg = Registry::start(&s.path("registry"));
        let podman = Podman::new(&s.path("podman"), &als);
        World { store, als, reg, podman, state: PathBuf::from("/run/cfsmount"), s }
    }

    fn als(&self, args: &[&str]) -> Command {
        let mut c = cfsmount(&["als"]);
        c.args(args).arg("--store").arg(&self.store);
        c
    }

    fn add(&self, reference: &str, source: &Path) -> String {
        let o = ok(self
            .als(&["add", "--root", self.als.to_str().unwrap(), "--ref", reference])
            .arg(format!("oci:{}:v1", source.display())));
        text(&o.stdout)
    }

    fn objects(&self) -> usize {
        count_files(&self.store.join("objects"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.podman.reset();
        root::umount_all_under(&self.podman.graphroot);
        let _ = run(&mut self.als(&["umount-all", "--force"]));
    }
}

fn count_files(d: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// The layer blob digests of the image, from the layout.
fn blob_digests(layout: &Path) -> Vec<String> {
    podman::layout_layers(layout, "v1").0.iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

#[test]
fn podman_takes_every_layer_from_the_store() {
    root::require_root("root_als");
    let _g = root::serial();
    let w = World::new("cfsmount-als-pull-");
    let f = fixture(&w.s);
    let before = root::Snapshot::take(w.s.root(), Some(&w.state));
    let image = push(&f.layout, &w.reg, "als/img:v1");
    let out = w.add(&image, &f.layout);
    assert!(out.starts_with(&format!("{image}\t")), "{out}");
    let blobs = blob_digests(&f.layout);
    assert_eq!(blobs.len(), 3);

    // Pull: every layer taken from the store, no layer blob downloaded.
    let mark = w.reg.requests().len();
    let o = w.podman.ok(&["--log-level=debug", "pull", "--tls-verify=false", &image]);
    let log = text(&o.stderr);
    for b in &blobs {
        assert!(log.contains(&format!("Skipping blob {b} (already present)")), "podman did not skip {b}:\n{log}");
    }
    assert!(!log.contains("during use"), "the use notification must get ENOENT (no warning):\n{log}");
    let reqs = w.reg.requests()[mark..].to_vec();
    for b in &blobs {
        assert!(!reqs.iter().any(|r| r.contains(b.as_str())), "layer blob {b} was downloaded: {reqs:?}");
    }
    assert!(reqs.iter().any(|r| r.contains("/manifests/v1")), "{reqs:?}");

    // podman's layers are the store's mounts.
    let o = w.podman.ok(&Podman::run_args(&image, &["sh", "-c", "cat /data/one /opq/new /home/u/file /swap/thing/now-a-dir; id -u; stat -c '%u:%g %a' /home/u/file /data/suid; ls /opq; test ! -e /data/doomed && echo gone"]));
    assert_eq!(
        text(&o.stdout),
        "one\nnew in layer 2\nowned by u\nlayer 3\n0\n1000:1000 644\n0:0 4755\nnew\ngone\n",
        "{}",
        text(&o.stderr)
    );

    // `podman image mount` shows exactly what umoci unpacks.
    let bundle = w.s.path("bundle");
    ok(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:v1", f.layout.display())).arg(&bundle));
    let want = podman::walk(&bundle.join("rootfs"));
    let mp = text(&w.podman.ok(&["image", "mount", &image]).stdout).trim().to_string();
    let got = podman::walk(Path::new(&mp));
    let diffs = podman::diff_trees(&want, &got);
    assert!(diffs.is_empty(), "podman image mount differs from umoci unpack:\n{}", diffs.join("\n"));

    // A layer in use (the image mount, a running container) cannot be removed.
    let rm = || run(&mut w.als(&["rm", "--root", w.als.to_str().unwrap(), "--ref", &image]));
    let o = rm();
    assert!(
        !o.status.success() && text(&o.stderr).contains(&format!("in use (overlay at {mp}")),
        "{}",
        text(&o.stderr)
    );
    w.podman.ok(&["image", "unmount", &image]);
    let mut args = Podman::run_args(&image, &["sleep", "600"]);
    args.insert(1, "-d");
    let ctr = text(&w.podman.ok(&args).stdout).trim().to_string();
    let o = rm();
    assert!(!o.status.success() && text(&o.stderr).contains("in use (overlay at "), "{}", text(&o.stderr));
    w.podman.ok(&["rm", "-f", "-t", "0", &ctr]);

    // Push to another registry: the layers come from `blob`.
    let reg2 = Registry::start(&w.s.path("registry2"));
    let dest = format!("{}/copy/img:v2", reg2.host());
    w.podman.ok(&["push", "--tls-verify=false", &image, &dest]);
    let uploads = reg2.requests().iter().filter(|r| r.starts_with("PUT ") && r.contains("/blobs/uploads/")).count();
    assert!(uploads >= 4, "3 layers and the config uploaded: {:?}", reg2.requests());
    let pulled = w.s.path("pushed");
    ok(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .arg(format!("oci:{}:v1", pulled.display())));
    check_diff_ids(&pulled);

    // Release: podman forgets the image; als rm unmounts; gc leaves no object.
    w.podman.ok(&["rmi", &image]);
    assert!(w.objects() > 0);
    let o = ok(&mut w.als(&["rm", "--root", w.als.to_str().unwrap(), "--ref", &image]));
    assert!(text(&o.stdout).contains("3 layers unmounted"), "{}", text(&o.stdout));
    assert_eq!(w.objects(), 0, "objects no image needs are gone");
    for d in ["layers", "images", "refs", "views", "tmp"] {
        assert_eq!(count_files(&w.store.join("als-records").join(d)), 0, "no ALS {d} left");
    }
    assert_eq!(count_files(&w.store.join("layers")), 0);
    assert!(root::dir_entries(&w.als).is_empty(), "the ALS root is an empty directory again");
    w.podman.reset();
    root::umount_all_under(&w.podman.graphroot);
    before.assert_nothing_left("after podman rmi and als rm");
}

/// Every layer of the OCI layout `dir` decompresses to its config diff_id.
fn check_diff_ids(dir: &Path) {
    let (layers, diff_ids) = podman::layout_layers(dir, "v1");
    assert_eq!(layers.len(), diff_ids.len());
    for (l, want) in layers.iter().zip(&diff_ids) {
        let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = std::fs::read(dir.join("blobs/sha256").join(d)).unwrap();
        let mut tar = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
        use sha2::Digest;
        assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(&tar)), *want, "pushed layer {d}");
    }
}

#[test]
fn mount_all_brings_a_root_back() {
    root::require_root("root_als");
    let _g = root::serial();
    let w = World::new("cfsmount-als-reboot-");
    let f = fixture(&w.s);
    let image = push(&f.layout, &w.reg, "als/img:v1");
    w.add(&image, &f.layout);
    w.podman.ok(&["pull", "--tls-verify=false", &image]);
    let cat = Podman::run_args(&image, &["cat", "/data/one"]);
    assert_eq!(text(&w.podman.ok(&cat).stdout), "one\n");

    // What a reboot does to the runtime state: the tmpfs and the mounts are gone.
    ok(&mut w.als(&["umount-all"]));
    assert!(root::dir_entries(&w.als).is_empty());
    assert!(!root::mountpoints().iter().any(|m| m.starts_with(w.als.to_str().unwrap())));
    let o = run(&mut w.podman.cmd(&cat));
    assert!(!o.status.success(), "a container cannot start without its layers: {}", text(&o.stdout));
    let o = ok(&mut w.als(&["ls"]));
    assert!(text(&o.stdout).contains(&format!("{}\tno\t{image}", w.als.display())), "{}", text(&o.stdout));

    ok(&mut w.als(&["mount-all"]));
    assert_eq!(text(&w.podman.ok(&cat).stdout), "one\n");
    let o = ok(&mut w.als(&["ls", "--root", w.als.to_str().unwrap()]));
    assert!(text(&o.stdout).contains(&format!("{}\tyes\t{image}", w.als.display())), "{}", text(&o.stdout));
    // mount-all again changes nothing.
    let o = ok(&mut w.als(&["mount-all"]));
    assert!(text(&o.stdout).contains("0 layers mounted, 0 keys added"), "{}", text(&o.stdout));

    // Serving another image under the same reference would drop layers a running container
    // stacks on: refused, nothing changed; once the container is gone it goes through.
    let mut args = Podman::run_args(&image, &["sleep", "600"]);
    args.insert(1, "-d");
    let ctr = text(&w.podman.ok(&args).stdout).trim().to_string();
    let other = format!("oci:{}:v1", real().join("writers/umoci-0.4.7-gzip/oci").display());
    let replace = || run(w.als(&["add", "--root", w.als.to_str().unwrap(), "--ref", &image]).arg(&other));
    let o = replace();
    assert!(!o.status.success() && text(&o.stderr).contains("in use (overlay at "), "{}", text(&o.stderr));
    assert_eq!(text(&w.podman.ok(&["exec", &ctr, "cat", "/data/one"]).stdout), "one\n");
    w.podman.ok(&["rm", "-f", "-t", "0", &ctr]);
    w.podman.ok(&["rmi", &image]);
    let o = replace();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = ok(&mut w.als(&["ls"]));
    assert_eq!(text(&o.stdout).lines().filter(|l| l.contains(&image)).count(), 1, "{}", text(&o.stdout));
}

/// The real-layers writers (conformance data) whose layers have a TOC digest, with the tag of
/// their layout: zstd:chunked with the current annotation (skopeo 1.22.2), eStargz
/// (ctr-remote), and zstd:chunked carrying the eStargz annotation and only the pre-1.0
/// zstd:chunked key (ctr-remote's zstdchunked).
const TOC_WRITERS: [(&str, &str); 3] = [
    ("skopeo-1.22.2-zstd-chunked", "v1"),
    ("ctr-remote-0.12.0-estargz", "estargz"),
    ("ctr-remote-0.12.0-zstdchunked", "zstdchunked"),
];

fn real() -> PathBuf {
    conformance::conformance_root().join("real-layers")
}

#[test]
fn toc_keys_follow_the_containers_storage_1_54_rules() {
    root::require_root("root_als");
    let _g = root::serial();
    let w = World::new("cfsmount-als-toc-");
    for (writer, tag) in TOC_WRITERS {
        let layout = real().join("writers").join(writer).join("oci");
        let reference = format!("{}/real/{writer}:{tag}", w.reg.host());
        let o = ok(w
            .als(&["add", "--root", w.als.to_str().unwrap(), "--ref", &reference])
            .arg(format!("oci:{}:{tag}", layout.display())));
        let out = text(&o.stdout);
        let (layers, diff_ids) = podman::layout_layers(&layout, tag);
        for (l, diff_id) in layers.iter().zip(&diff_ids) {
            let blob = l["digest"].as_str().unwrap();
            let ann = &l["annotations"];
            // toc.GetTOCDigest: the eStargz key, else the current zstd:chunked key.
            let toc = ann["containerd.io/snapshot/stargz/toc.digest"]
                .as_str()
                .or(ann["io.github.containers.zstd-chunked.manifest-checksum"].as_str())
                .unwrap_or_else(|| panic!("{writer}: a TOC digest annotation"));
            assert!(out.contains(&format!("{blob}\ttoc {toc}")), "{writer}: {out}");
            check_lookup_1_54(&w.als, &reference, toc, l, diff_id, &layout);
            // ≤ 1.53 finds the same directory by the blob digest.
            let by_blob = std::fs::canonicalize(cs_layer_path(&w.als, &reference, blob)).unwrap();
            assert_eq!(by_blob, std::fs::canonicalize(cs_layer_path(&w.als, &reference, toc)).unwrap());
        }
    }
    // skopeo 1.9.3 writes only the pre-1.0 key, which GetTOCDigest ignores: no TOC key
    // (podman >= 5.1 does not look such layers up in any store).
    let layout = real().join("writers/skopeo-1.9.3-zstd-chunked/oci");
    let reference = format!("{}/real/skopeo-1.9.3:v1", w.reg.host());
    let o = ok(w
        .als(&["add", "--root", w.als.to_str().unwrap(), "--ref", &reference])
        .arg(format!("oci:{}:v1", layout.display())));
    assert!(!text(&o.stdout).contains("toc "), "{}", text(&o.stdout));
    for l in podman::layout_layers(&layout, "v1").0 {
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(cs_layer_path(&w.als, &reference, l["digest"].as_str().unwrap()).join("info")).unwrap(),
        )
        .unwrap();
        assert!(info.get("toc-digest").is_none() && info.get("flags").is_none(), "{info}");
    }

    // podman 4.3.1 (containers/storage 1.43) takes the zstd:chunked image by blob digest, and
    // `podman image mount` lists as umoci unpacked the image (real-layers' expected listing).
    let (writer, tag) = TOC_WRITERS[0];
    let image = format!("{}/real/{writer}:{tag}", w.reg.host());
    ok(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", real().join("writers").join(writer).join("oci").display()))
        .arg(format!("docker://{image}")));
    let mark = w.reg.requests().len();
    let o = w.podman.ok(&["--log-level=debug", "pull", "--tls-verify=false", &image]);
    let (layers, _) = podman::layout_layers(&real().join("writers").join(writer).join("oci"), tag);
    for l in &layers {
        let b = l["digest"].as_str().unwrap();
        assert!(text(&o.stderr).contains(&format!("Skipping blob {b} (already present)")), "{}", text(&o.stderr));
        assert!(!w.reg.requests()[mark..].iter().any(|r| r.contains(b)), "layer blob {b} downloaded");
    }
    let mp = text(&w.podman.ok(&["image", "mount", &image]).stdout).trim().to_string();
    let listing = ok(Command::new("python3").arg(real().join("list-tree.py")).arg(&mp)).stdout;
    w.podman.ok(&["image", "unmount", &image]);
    // The composefs writer marks directories holding whiteouts with `user.overlay.*` xattrs
    // for rootless (userxattr) overlays, and opaque directories carry `user.overlay.opaque=y`;
    // root's overlay ignores and shows them. They are taken out of the listing, and must be on
    // exactly the directories layer 2 deletes from or makes opaque.
    let (listing, marked) = strip_user_overlay_xattrs(&listing);
    assert_eq!(
        marked,
        ["/etc", "/opt/edge", "/opt/edge/opaque-dir", "/usr/share/doc"],
        "user.overlay.* xattrs elsewhere"
    );
    let want = std::fs::read(real().join("expected/image.tree.txt")).unwrap();
    if listing != want {
        let got = w.s.path("got.txt");
        std::fs::write(&got, &listing).unwrap();
        let d = Command::new("diff").arg(real().join("expected/image.tree.txt")).arg(&got).output().unwrap();
        panic!("podman image mount differs from image.tree.txt:\n{}", text(&d.stdout));
    }
}

/// list-tree.py's listing without `user.overlay.*` xattrs (last column, `;`-separated, `-` when
/// none), and the paths that had some.
fn strip_user_overlay_xattrs(listing: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut out = String::new();
    let mut marked = Vec::new();
    for line in text(listing).lines() {
        let mut cols: Vec<&str> = line.split('\t').collect();
        let last = cols.pop().unwrap_or("-");
        let kept: Vec<&str> = last.split(';').filter(|x| !x.starts_with("user.overlay.")).collect();
        if kept.len() != last.split(';').count() {
            marked.push(cols[0].to_string());
        }
        let kept = if kept.is_empty() { "-".to_string() } else { kept.join(";") };
        cols.push(&kept);
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    (out.into_bytes(), marked)
}

/// `getAdditionalLayerPath`: `path.Join(store, base64.StdEncoding(ref), digest)`.
fn cs_layer_path(store: &Path, reference: &str, digest: &str) -> PathBuf {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(reference);
    let mut p = store.to_path_buf();
    for c in b.split('/').filter(|c| !c.is_empty()) {
        p.push(c);
    }
    p.join(digest)
}

/// What containers/storage ≥ 1.54 does with a TOC digest (drivers/overlay/overlay.go
/// `getAdditionalLayerPath` + `validateOneAdditionalLayerPath`, store.go
/// `LookupAdditionalLayer`, containers/image storage_dest.go `tryReusingBlobAsPending`,
/// storage_src.go), restated: the three files exist (following symlinks); `info` decodes as a
/// Layer whose `toc-digest` equals the key (else the pull fails); `compressed-size` is what it
/// reports as the blob size; `use` created as os.Create does fails with ENOENT (a notification-
/// aware store); `blob` is the compressed blob; `diff` is the layer's tree.
fn check_lookup_1_54(als: &Path, reference: &str, toc: &str, l: &serde_json::Value, diff_id: &str, layout: &Path) {
    let dir = cs_layer_path(als, reference, toc);
    for f in ["diff", "info", "blob"] {
        assert!(rustix::fs::access(dir.join(f), rustix::fs::Access::EXISTS).is_ok(), "{}/{f} missing", dir.display());
    }
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("info")).unwrap()).unwrap();
    assert_eq!(info["toc-digest"], toc, "TOCDigest must equal the lookup key");
    assert_eq!(info["compressed-diff-digest"], l["digest"]);
    assert_eq!(info["compressed-size"], l["size"]);
    assert_eq!(info["diff-digest"], diff_id);
    assert_eq!(info["flags"]["expected-layer-diffid"], diff_id);
    let zstd = l["mediaType"].as_str().unwrap().ends_with("+zstd");
    assert_eq!(info["compression"], if zstd { 4 } else { 2 }, "archive.Zstd / archive.Gzip");
    let blob = std::fs::read(dir.join("blob")).unwrap();
    let want =
        std::fs::read(layout.join("blobs/sha256").join(l["digest"].as_str().unwrap().trim_start_matches("sha256:")))
            .unwrap();
    assert!(blob == want, "blob is the compressed layer");
    // diff-size: the uncompressed stream (with the tar padding skopeo 1.9.3 leaves out) that
    // hashes to the diff_id.
    let mut tar = Vec::new();
    if zstd {
        tar = zstd::stream::decode_all(&blob[..]).unwrap();
    } else {
        use std::io::Read;
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
    }
    let size = info["diff-size"].as_u64().unwrap();
    assert!(size >= tar.len() as u64 && size - (tar.len() as u64) < 10240, "diff-size {size} vs stream {}", tar.len());
    tar.resize(size as usize, 0);
    use sha2::Digest;
    assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(&tar)), diff_id);
    // The use notification: os.Create(<dir>/use) must fail with ENOENT.
    let e = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("use"))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "use: {e}");
    // The release notification (rmdir) is answered ENOTDIR: podman logs a warning.
    let e = rustix::fs::rmdir(&dir).unwrap_err();
    assert_eq!(e, rustix::io::Errno::NOTDIR);
    assert!(std::fs::read_dir(dir.join("diff")).unwrap().count() > 0, "diff is the layer's tree");
}

#[test]
fn rootless_podman_uses_an_idmapped_view() {
    root::require_root("root_als");
    let _g = root::serial();
    let mut w = World::new("cfsmount-als-rootless-");
    let f = fixture(&w.s);
    let user = root::ensure_user("cfsals", 600000);
    // The user's podman lives in the scratch directory: make it reachable.
    std::fs::set_permissions(w.s.root(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = root::fresh_dir_for(&user, &w.s.path("home"));
    let xdg = root::fresh_dir_for(&user, &w.s.path("xdg"));
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let view = PathBuf::from(format!("/run/cfsmount-als/{}", user.name));
    let image = push(&f.layout, &w.reg, "als/img:v1");
    w.add(&image, &f.layout);
    let o = ok(&mut w.als(&["view", "--root", w.als.to_str().unwrap(), "--user", &user.name]));
    assert!(text(&o.stdout).starts_with(&format!("{}\t{}", view.display(), user.name)), "{}", text(&o.stdout));
    let want_map = format!("uid map 0:{}:1,1:600000:65536\tgid map 0:{}:1,1:600000:65536", user.uid, user.gid);
    assert!(text(&o.stdout).contains(&want_map), "{}", text(&o.stdout));

    // The view as the host sees it: image root is the user, image uid 1000 the 1000th subuid;
    // only the user (ACL) and root can enter it.
    let layer_dirs: Vec<PathBuf> =
        std::fs::read_dir(view.join(".layers")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(layer_dirs.len(), 3);
    let md = |p: &Path| std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(p).unwrap());
    let l2 = layer_dirs.iter().find(|d| d.join("diff/home/u/file").exists()).expect("layer 2");
    assert_eq!(md(&l2.join("diff/home/u/file")), 600000 + 999);
    assert_eq!(md(&l2.join("diff/opq/new")), user.uid);
    let other = &root::test_users().0;
    let o = root::run_as(other, Path::new("/bin/ls"), &[view.clone().into()], |_| {});
    assert!(!o.status.success(), "another user must not read the view");

    rootless_podman_through(&mut w, user.uid, user.gid, &home, &xdg, &view, &image, &f.layout);

    // Cleanup: podman forgets the image, the view goes, then the reference.
    w.podman.reset();
    root::umount_all_under(&w.podman.graphroot);
    ok(&mut w.als(&["view-rm", "--target", view.to_str().unwrap()]));
    assert!(!view.exists(), "view-rm removes the view's directory under /run/cfsmount-als");
    let _ = std::fs::remove_dir("/run/cfsmount-als");
    ok(&mut w.als(&["rm", "--root", w.als.to_str().unwrap(), "--ref", &image]));
    assert_eq!(w.objects(), 0);
}

/// The user's rootless podman, its own storage (in the scratch directory), `view` as its ALS:
/// `podman pull` skips every layer blob (none downloaded), `podman run` sees image root as root,
/// image uid 1000 as 1000, copies up, applies the whiteouts.
#[allow(clippy::too_many_arguments)]
fn rootless_podman_through(
    w: &mut World,
    uid: u32,
    gid: u32,
    home: &Path,
    xdg: &Path,
    view: &Path,
    image: &str,
    layout: &Path,
) {
    w.podman = Podman::new(&w.s.path("podman-user"), view);
    w.podman.graphroot = home.join("graph");
    w.podman.runroot = xdg.join("run");
    std::fs::write(
        &w.podman.conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\nadditionallayerstores = [\"{}:ref\"]\n",
            w.podman.graphroot.display(),
            w.podman.runroot.display(),
            view.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(w.s.path("podman-user"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    w.podman.user = Some((uid, gid, home.to_path_buf(), xdg.to_path_buf()));
    let mark = w.reg.requests().len();
    let o = w.podman.ok(&["--log-level=debug", "pull", "--tls-verify=false", image]);
    let log = text(&o.stderr);
    for b in blob_digests(layout) {
        assert!(
            log.contains(&format!("Skipping blob {b} (already present)")),
            "rootless podman did not skip {b}:\n{log}"
        );
        assert!(!w.reg.requests()[mark..].iter().any(|r| r.contains(b.as_str())), "layer blob {b} downloaded");
    }
    assert!(!log.contains("during use"), "{log}");
    let script = "id -u; stat -c '%n %u:%g %a' /data/one /data/suid /home/u/file /opq/new /swap/thing/now-a-dir; \
                  cat /data/one; echo changed > /data/one && cat /data/one; ls /opq; test ! -e /data/doomed && echo gone";
    let o = w.podman.ok(&Podman::run_args(image, &["sh", "-c", script]));
    assert_eq!(
        text(&o.stdout),
        "0\n/data/one 0:0 600\n/data/suid 0:0 4755\n/home/u/file 1000:1000 644\n/opq/new 0:0 644\n\
         /swap/thing/now-a-dir 0:0 644\none\nchanged\nnew\ngone\n",
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_user_makes_its_view_through_the_setuid_helper() {
    root::require_root("root_als");
    let _g = root::serial();
    let env = helper::env();
    let (user, other) = (&env.user, &env.other);
    let mut w = World::new("cfsmount-als-helper-");
    let f = fixture(&w.s);
    std::fs::set_permissions(w.s.root(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let image = push(&f.layout, &w.reg, "als/img:v1");
    w.add(&image, &f.layout);
    let view = PathBuf::from(format!("/run/cfsmount-als/{}", user.name));
    let (store, als) = (w.store.to_str().unwrap().to_string(), w.als.to_str().unwrap().to_string());
    let before = helper::mountpoints();
    let guard = helper::PolicyGuard::new();
    let mut policy = helper::default_policy();
    guard.write(&policy.to_string(), 0o644, 0);

    // The shipped policy leaves ALS views off.
    let o = helper::run_as(user, &["als", "view", "--root", &als, "--store", &store]);
    helper::assert_refused_nothing_mounted(&o, "ALS views (features.als_view) are disabled", &before);
    policy["features"]["als_view"] = true.into();
    guard.write(&policy.to_string(), 0o644, 0);

    // Of `als`, only view and view-rm; only the caller's own view, at its fixed place, from a
    // store only root controls, of a root that store serves.
    let o = helper::run_as(user, &["als", "add", "--root", &als, "--ref", "x/y:z", "--store", &store, "oci:/tmp/x"]);
    helper::assert_refused(&o, "of `als`, only `view` and `view-rm` are available");
    let o = helper::run_as(user, &["als", "view", "--root", &als, "--store", &store, "--user", &other.name]);
    helper::assert_refused_nothing_mounted(&o, "--user: unprivileged callers get their own view only", &before);
    let elsewhere = format!("/run/cfsmount-als/{}", other.name);
    let o = helper::run_as(user, &["als", "view", "--root", &als, "--store", &store, "--target", &elsewhere]);
    helper::assert_refused_nothing_mounted(
        &o,
        &format!("an unprivileged caller's view is at {}", view.display()),
        &before,
    );
    let mine = helper::user_dir(user, "store");
    let o = helper::run_as(user, &["als", "view", "--root", &als, "--store", mine.to_str().unwrap()]);
    helper::assert_refused_nothing_mounted(&o, "not an ALS store root alone controls", &before);
    // Nor any other root-owned directory (nothing is created there).
    let o = helper::run_as(user, &["als", "view", "--root", &als, "--store", "/etc"]);
    helper::assert_refused_nothing_mounted(&o, "not an ALS store root alone controls", &before);
    assert!(!Path::new("/etc/objects").exists() && !Path::new("/etc/als-records").exists());
    let o = helper::run_as(user, &["als", "view", "--root", "/usr", "--store", &store]);
    helper::assert_refused_nothing_mounted(&o, "/usr: not an ALS root the store", &before);

    // The view: the layers idmapped onto the user's podman mapping (image root = the user,
    // image uid 1000 = its 1000th subordinate id).
    let o = ok(&mut helper_cmd(user, &["als", "view", "--root", &als, "--store", &store]));
    let out = text(&o.stdout);
    assert!(out.starts_with(&format!("{}\t{}", view.display(), user.name)), "{out}");
    let s = user.subid_start;
    assert!(
        out.contains(&format!("uid map 0:{}:1,1:{s}:65536\tgid map 0:{}:1,1:{s}:65536", user.uid, user.gid)),
        "{out}"
    );
    let layer_dirs: Vec<PathBuf> =
        std::fs::read_dir(view.join(".layers")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(layer_dirs.len(), 3);
    let uid_of = |p: &Path| std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(p).unwrap());
    let l2 = layer_dirs.iter().find(|d| d.join("diff/home/u/file").exists()).expect("layer 2");
    assert_eq!(uid_of(&l2.join("diff/home/u/file")), s + 999);
    assert_eq!(uid_of(&l2.join("diff/opq/new")), user.uid);
    let opts = root::mount_options(&l2.join("diff")).unwrap_or_default();
    assert!(opts.iter().any(|o| o == "nosuid") && opts.iter().any(|o| o == "nodev"), "a view's layers: {opts:?}");

    // Another user can neither read nor remove it.
    let o = root::run_as(other, Path::new("/bin/ls"), &[view.clone().into()], |_| {});
    assert!(!o.status.success(), "another user must not read the view");
    let o = helper::run_as(other, &["als", "view-rm", "--store", &store, "--target", view.to_str().unwrap()]);
    helper::assert_refused(&o, &format!("an unprivileged caller's view is at /run/cfsmount-als/{}", other.name));
    let o = helper::run_as(other, &["als", "view-rm", "--store", &store]);
    helper::assert_refused(&o, &format!("no view at /run/cfsmount-als/{}", other.name));

    let home = root::fresh_dir_for(user, &w.s.path("home"));
    let xdg = root::fresh_dir_for(user, &w.s.path("xdg"));
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    rootless_podman_through(&mut w, user.uid, user.gid, &home, &xdg, &view, &image, &f.layout);

    // The user removes its view (once its podman is done with the image); nothing is left.
    w.podman.reset();
    root::umount_all_under(&w.podman.graphroot);
    ok(&mut helper_cmd(user, &["als", "view-rm", "--store", &store]));
    assert!(!view.exists(), "view-rm removes the view's directory");
    let _ = std::fs::remove_dir("/run/cfsmount-als");
    assert_eq!(before, helper::mountpoints(), "the view's mounts are gone");
    drop(guard);
    ok(&mut w.als(&["rm", "--root", &als, "--ref", &image]));
    assert_eq!(w.objects(), 0);
}

/// The installed setuid helper run as `u` (for [`ok`], which shows stderr on failure).
fn helper_cmd(u: &root::TestUser, args: &[&str]) -> Command {
    let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    root::command_as(u, &helper::env().bin, &args)
}
