//! Root tier for the mount engine: real kernel mounts through `cfsmount mount` and util-linux
//! `mount -t composefs` (the binary linked as /sbin/mount.composefs): conformance images and a
//! TOC whose objects the test writes, file-backed and loop paths, idmap, layers, EBUSY races,
//! 200 mount/umount cycles, injected failures, --fd-out handover, the legacy overlay syntax.
//! Every check that mounts holds one lock (mounts run serially) and verifies that nothing (mount,
//! loop device, EROFS superblock) is left behind. Needs root: fails with the reason otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::MutexGuard;

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{parse, DumpOptions};
use cfsmount::tree::{Limits, NodeId, Tree, S_IFCHR, S_IFMT, S_IFREG};

#[path = "support/root.rs"]
mod root;
use root::Snapshot;

/// Serializes the mounting tests and checks root.
fn setup() -> MutexGuard<'static, ()> {
    root::require_root("root_mount (attaches loop devices and mounts EROFS/overlayfs)");
    root::serial()
}

/// `setup()`, a new scratch dir, and the snapshot of it that `assert_clean` compares with.
/// (Bind all three, in this order: the scratch dir is dropped while the lock is still held.)
fn setup_with_scratch() -> (MutexGuard<'static, ()>, Scratch, Snapshot) {
    let guard = setup();
    let s = Scratch::new();
    let before = snapshot(s.dir.path());
    (guard, s, before)
}

/// The cfsmount binary under test: `CFSMOUNT_TEST_BIN` (read by the tests only, e.g. to show
/// what an older build fails), or the one cargo built.
fn bin() -> PathBuf {
    std::env::var_os("CFSMOUNT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cfsmount")))
}

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{dump_dir as conformance_dir, forced_version, is_strict, read_input};
#[path = "support/image.rs"]
mod image;
use image::{sha256_hex, write_options};

/// A scratch area for one test ([`root::Scratch`]) with a private state dir `state/` that every
/// command of the test uses (`CFSMOUNT_STATE_DIR`).
struct Scratch(root::Scratch);

impl std::ops::Deref for Scratch {
    type Target = root::Scratch;
    fn deref(&self) -> &root::Scratch {
        &self.0
    }
}

impl Scratch {
    fn new() -> Scratch {
        let s = root::Scratch::new("cfsm-root-");
        let state = s.mkdir("state");
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Scratch(s)
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("CFSMOUNT_STATE_DIR", self.path("state"));
        c
    }
    fn records(&self) -> usize {
        std::fs::read_dir(self.path("state"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().as_bytes().ends_with(b".json"))
            .count()
    }
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().expect("spawning cfsmount");
    assert!(out.status.success(), "{:?} failed: {}", c, String::from_utf8_lossy(&out.stderr));
    out
}

fn run_fail(mut c: Command, expect: &str) -> String {
    let out = c.output().expect("spawning cfsmount");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{:?} unexpectedly succeeded", c);
    assert!(err.contains(expect), "{:?}: error {:?} does not mention {:?}", c, err, expect);
    err
}

/// What could leak under the scratch dir `prefix`: mounts, loop devices backed by our files,
/// EROFS superblocks (file-backed ones are only visible in /sys/fs/erofs).
fn snapshot(prefix: &Path) -> Snapshot {
    Snapshot::take(prefix, None)
}

/// Asserts that nothing is left compared with `before` ([`Snapshot::assert_nothing_left`]).
#[track_caller]
fn assert_clean(before: &Snapshot, ctx: &str) {
    before.assert_nothing_left(ctx);
}

fn is_whiteout(tree: &Tree, id: NodeId) -> bool {
    let i = &tree.node(id).entry.inode;
    i.mode & S_IFMT == S_IFCHR && i.rdev == 0
}

/// The first bytes of the object for `payload`, as this test writes it.
fn object_pattern(payload: &[u8], size: u64) -> Vec<u8> {
    (0..size.min(4096) as usize).map(|i| payload[i % payload.len()] ^ (i as u8)).collect()
}

/// Writes one object per payload the tree references: a sparse file of the right size whose
/// first 4 KiB are a pattern derived from the payload path.
fn write_objects(tree: &Tree, basedir: &Path) -> usize {
    let mut sizes: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for id in 0..tree.len() as NodeId {
        let e = &tree.node(id).entry;
        if e.inode.mode & S_IFMT == S_IFREG && e.content.is_none() {
            if let Some(p) = e.payload.as_ref().filter(|p| !p.is_empty()) {
                let s = sizes.entry(p.clone()).or_default();
                *s = (*s).max(e.inode.size);
            }
        }
    }
    for (p, size) in &sizes {
        let path = basedir.join(OsStr::from_bytes(p));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&object_pattern(p, *size)).unwrap();
        f.set_len(*size).unwrap();
    }
    sizes.len()
}

fn user_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap_or(0);
    let mut out = BTreeMap::new();
    for k in buf[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        if k.starts_with(b"trusted.overlay.")
            || k.starts_with(b"user.overlay.")
            || k.starts_with(b"security.")
            || k.starts_with(b"system.")
        {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let m = match rustix::fs::lgetxattr(p, OsStr::from_bytes(k), &mut v) {
            Ok(m) => m,
            // user.* xattrs of symlinks/devices are listed but not readable (xattr_permission)
            Err(rustix::io::Errno::NODATA) if k.starts_with(b"user.") => continue,
            Err(e) => panic!("{}: getxattr {}: {e}", p.display(), String::from_utf8_lossy(k)),
        };
        out.insert(k.to_vec(), v[..m].to_vec());
    }
    out
}

/// Compares the tree seen through a composefs mount with the input: types, modes, owners
/// (shifted by `id_shift`), mtimes, sizes, symlink targets, device numbers, directory entries,
/// non-overlay xattrs, inline content and the first bytes of every object-backed file.
fn check_tree(tree: &Tree, mnt: &Path, id_shift: u32, ctx: &str) -> usize {
    let mut checked = 0;
    for id in 0..tree.len() as NodeId {
        let target = tree.resolve(id);
        if is_whiteout(tree, target) {
            continue;
        }
        let rel = tree.path_of(id);
        let p = if rel.is_empty() { mnt.to_path_buf() } else { mnt.join(OsStr::from_bytes(&rel)) };
        let c = format!("{ctx}: /{}", String::from_utf8_lossy(&rel));
        let node = tree.node(target);
        let e = &node.entry;
        let ino = &e.inode;
        if ino.mode & S_IFMT == S_IFREG
            && ino.size > 0
            && e.content.is_none()
            && e.payload.as_ref().is_none_or(|p| p.is_empty())
        {
            // A metacopy file without a redirect has no data anywhere: overlay refuses it (EIO).
            let err = std::fs::symlink_metadata(&p).expect_err("file without object");
            assert_eq!(err.raw_os_error(), Some(libc::EIO), "{c}: file without object");
            continue;
        }
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{c}: lstat: {e}"));
        assert_eq!(md.mode(), ino.mode, "{c}: mode");
        assert_eq!(md.uid(), ino.uid + id_shift, "{c}: uid");
        assert_eq!(md.gid(), ino.gid + id_shift, "{c}: gid");
        assert_eq!((md.mtime(), md.mtime_nsec()), (ino.mtime, ino.mtime_nsec as i64), "{c}: mtime");
        let ft = md.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            assert_eq!(t.as_os_str().as_bytes(), e.payload.as_deref().unwrap(), "{c}: symlink target");
        } else if ft.is_file() {
            assert_eq!(md.len(), ino.size, "{c}: size");
            if let Some(content) = &e.content {
                assert!(std::fs::read(&p).unwrap() == *content, "{c}: inline content differs");
            } else if ino.size > 0 {
                let payload = e.payload.as_deref().expect("object-backed file has a payload");
                let want = object_pattern(payload, ino.size);
                let mut f = std::fs::File::open(&p).unwrap_or_else(|err| panic!("{c}: open: {err}"));
                let mut got = vec![0u8; want.len()];
                f.read_exact(&mut got).unwrap_or_else(|err| panic!("{c}: read: {err}"));
                assert!(got == want, "{c}: object content differs");
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            assert_eq!(md.rdev(), ino.rdev as u64, "{c}: rdev");
        } else if ft.is_dir() {
            let names: BTreeSet<Vec<u8>> =
                std::fs::read_dir(&p).unwrap().map(|d| d.unwrap().file_name().as_bytes().to_vec()).collect();
            let want: BTreeSet<Vec<u8>> = node
                .children
                .iter()
                .filter(|&&ch| !is_whiteout(tree, tree.resolve(ch)))
                .map(|&ch| tree.node(ch).name.clone())
                .collect();
            let got: BTreeSet<Vec<u8>> = names
                .into_iter()
                .filter(|n| {
                    // escaped whiteouts of the input may show as plain entries; they are not compared
                    tree.child(target, n).is_none_or(|ch| !is_whiteout(tree, tree.resolve(ch)))
                })
                .collect();
            assert_eq!(got, want, "{c}: directory entries");
        }
        let want_x: BTreeMap<Vec<u8>, Vec<u8>> = e
            .xattrs
            .iter()
            .filter(|x| !x.key.starts_with(b"user.") || ft.is_file() || ft.is_dir())
            .filter(|x| {
                !x.key.starts_with(b"trusted.overlay.")
                    && !x.key.starts_with(b"user.overlay.")
                    && !x.key.starts_with(b"security.")
                    && !x.key.starts_with(b"system.")
            })
            .map(|x| (x.key.clone(), x.value.clone()))
            .collect();
        assert_eq!(user_xattrs(&p), want_x, "{c}: xattrs");
        checked += 1;
    }
    checked
}

/// The tree of the conformance dumpfile case `name` and the writer options it asks for.
fn load_case(name: &str) -> (Tree, WriteOptions) {
    let dir = conformance_dir();
    let input = read_input(&dir, name);
    let tree = parse(&input, &DumpOptions { strict: is_strict(name), limits: Limits::default() })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (tree, write_options(forced_version(&dir, name)))
}

fn write_img(tree: &Tree, opts: &WriteOptions, path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    write_image(tree, opts, &mut f).unwrap();
}

fn dump_tree(text: &str) -> Tree {
    parse(text.as_bytes(), &DumpOptions { strict: true, limits: Limits::default() }).unwrap()
}

/// Waits for the loop device(s) of a mount to be gone after umount.
fn umount(s: &Scratch, mnt: &Path) {
    let mut c = s.cmd();
    c.arg("umount").arg(mnt);
    run_ok(c);
}

/// `umount` of `mnt`, then `assert_clean` against `before`.
fn umount_and_assert_clean(s: &Scratch, mnt: &Path, before: &Snapshot, ctx: &str) {
    umount(s, mnt);
    assert_clean(before, ctx);
}

/// The arguments `SOURCE MNT --basedir OBJS EXTRA...` of `cfsmount mount`.
fn mount_args(source: &Path, mnt: &Path, objs: &Path, extra: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![source.into(), mnt.into(), "--basedir".into(), objs.into()];
    v.extend(extra.iter().map(|a| a.as_ref().to_os_string()));
    v
}

/// `cfsmount mount SOURCE MNT --basedir OBJS` with the scratch state dir; callers add options.
fn mount_cmd(s: &Scratch, source: &Path, mnt: &Path, objs: &Path) -> Command {
    let mut c = s.cmd();
    c.arg("mount").args(mount_args(source, mnt, objs, &[]));
    c
}

/// `cfsmount mount IMG --basedir OBJS` without a target (for `--fd-out`); callers add options.
fn detached_mount_cmd(s: &Scratch, img: &Path, objs: &Path) -> Command {
    let mut c = s.cmd();
    c.arg("mount").arg(img).arg("--basedir").arg(objs);
    c
}

/// util-linux `mount -t composefs -o OPTS SOURCE MNT` with the scratch state dir, run to the end.
fn mount_t_composefs(s: &Scratch, opts: impl AsRef<OsStr>, source: &Path, mnt: &Path) -> Output {
    Command::new("mount")
        .env("CFSMOUNT_STATE_DIR", s.path("state"))
        .args(["-t", "composefs", "-o"])
        .arg(opts)
        .arg(source)
        .arg(mnt)
        .output()
        .unwrap()
}

/// Writes `tree` as the image `img_name` and its objects under the new directory `objs_name`.
fn write_img_and_objects(
    s: &Scratch,
    tree: &Tree,
    opts: &WriteOptions,
    img_name: &str,
    objs_name: &str,
) -> (PathBuf, PathBuf) {
    let img = s.path(img_name);
    write_img(tree, opts, &img);
    let objs = s.mkdir(objs_name);
    write_objects(tree, &objs);
    (img, objs)
}

/// Receives one message with room for one SCM_RIGHTS fd: (bytes received, fds received).
fn receive_fds(sock: impl AsFd) -> (usize, Vec<OwnedFd>) {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let r = recvmsg(sock, &mut [std::io::IoSliceMut::new(&mut byte)], &mut anc, RecvFlags::CMSG_CLOEXEC).unwrap();
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    (r.bytes, fds)
}

/// Attaches a detached mount (a received mount fd) at `mnt`.
fn attach_mount_fd(fd: &OwnedFd, mnt: &Path) {
    rustix::mount::move_mount(fd, "", rustix::fs::CWD, mnt, rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .unwrap();
}

/// Waits up to 2 s for process `pid` to be in a `kind` namespace (`user`, `mnt`) other than
/// ours; returns whether it is.
fn wait_for_other_namespace(pid: u32, kind: &str) -> bool {
    let own = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    for _ in 0..100 {
        if std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).is_ok_and(|l| l != own) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

// ---------------------------------------------------------------------------------------------

const CASES: &[&str] = &[
    "special.dump",
    "special_v1.dump",
    "config-with-hard-link.dump.gz",
    "longlink.dump",
    "bigfile-xattr.dump",
    "honggfuzz-bigfile-with-acl.dump",
    "cs9-x86_64-minimal.dump.gz",
];

#[test]
fn cfsmount_conformance_file_backed_and_loop() {
    let (_g, s, before) = setup_with_scratch();
    for name in CASES {
        let (tree, opts) = load_case(name);
        let (img, objs) = write_img_and_objects(&s, &tree, &opts, &format!("{name}.img"), &format!("objs-{name}"));
        let mnt = s.mkdir(&format!("mnt-{name}"));
        for force_loop in [false, true] {
            let mut c = s.cmd();
            c.args(["mount", "-v"]).args(mount_args(&img, &mnt, &objs, &[]));
            if force_loop {
                c.arg("--force-loop");
            }
            let out = run_ok(c);
            let err = String::from_utf8_lossy(&out.stderr);
            // The path taken is the one asked for (the kernel here has file-backed EROFS).
            assert_eq!(err.contains("file-backed"), !force_loop, "{name}: {err}");
            assert_eq!(err.contains("EROFS on /dev/loop"), force_loop, "{name}: {err}");
            let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            let line = mi.lines().find(|l| l.contains(&*mnt.to_string_lossy())).expect("mount visible");
            assert!(line.contains(" ro,nosuid,nodev"), "{name}: mount flags: {line}");
            let n = check_tree(&tree, &mnt, 0, &format!("{name} (force_loop={force_loop})"));
            assert!(n > 0);
            assert_eq!(s.records(), 1);
            umount(&s, &mnt);
            assert_eq!(s.records(), 0);
            assert_clean(&before, name);
        }
    }
}

/// Links the binary as /sbin/mount.composefs for the duration of a test; an existing helper
/// there is moved aside and put back afterwards.
struct HelperLink {
    path: PathBuf,
    saved: Option<PathBuf>,
}
impl HelperLink {
    fn new() -> HelperLink {
        let path = PathBuf::from("/sbin/mount.composefs");
        let mut saved = None;
        if std::fs::symlink_metadata(&path).is_ok() {
            let aside = PathBuf::from(format!("/sbin/.mount.composefs.root_mount-{}", std::process::id()));
            std::fs::rename(&path, &aside).unwrap();
            saved = Some(aside);
        }
        std::os::unix::fs::symlink(bin(), &path).unwrap();
        HelperLink { path, saved }
    }
}
impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(aside) = self.saved.take() {
            let _ = std::fs::rename(&aside, &self.path);
        }
    }
}

#[test]
fn util_linux_mount_t_composefs() {
    let (_g, s, before) = setup_with_scratch();
    let link = HelperLink::new();
    for name in ["special_v1.dump", "config-with-hard-link.dump.gz", "cs9-x86_64-minimal.dump.gz"] {
        let (tree, opts) = load_case(name);
        // A basedir whose name needs escaping in the option string.
        let (img, objs) = write_img_and_objects(&s, &tree, &opts, &format!("{name}.img"), &format!("objs,{name}"));
        let mnt = s.mkdir(&format!("mnt-{name}"));
        let opt = format!("basedir={},ro", objs.to_string_lossy().replace(',', "\\,"));
        let out = mount_t_composefs(&s, &opt, &img, &mnt);
        assert!(out.status.success(), "mount -t composefs {name}: {}", String::from_utf8_lossy(&out.stderr));
        check_tree(&tree, &mnt, 0, &format!("mount -t composefs {name}"));
        umount_and_assert_clean(&s, &mnt, &before, name);
    }
    // Unknown options are an error, through util-linux too, and nothing is mounted.
    let (tree, opts) = load_case("special.dump");
    let img = s.path("special.img");
    write_img(&tree, &opts, &img);
    let objs = s.mkdir("objs-special");
    let mnt = s.mkdir("mnt-special");
    let out = mount_t_composefs(&s, format!("basedir={},frobnicate", objs.display()), &img, &mnt);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unsupported option frobnicate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let had_helper = link.saved.is_some();
    drop(link);
    assert_eq!(
        std::fs::symlink_metadata("/sbin/mount.composefs").is_ok(),
        had_helper,
        "link removed, previous helper restored"
    );
    assert_clean(&before, "unknown option");
}

#[test]
fn helper_form_flags_and_fake() {
    let (_g, s, before) = setup_with_scratch();
    let (tree, opts) = load_case("special.dump");
    let img = s.path("img");
    write_img(&tree, &opts, &img);
    let objs = s.mkdir("objs");
    let mnt = s.mkdir("mnt");
    let link = s.path("mount.composefs");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    let helper = || {
        let mut c = Command::new(&link);
        c.env("CFSMOUNT_STATE_DIR", s.path("state"));
        c
    };
    // -f (fake): options are checked, nothing is mounted.
    let mut c = helper();
    c.arg(&img).arg(&mnt).args(["-f", "-n", "-o"]).arg(format!("basedir={}", objs.display()));
    run_ok(c);
    assert_clean(&before, "-f");
    // Option value missing, upperdir without workdir, bad digest: errors, nothing mounted.
    for (o, msg) in [
        ("basedir", "No value specified for basedir"),
        ("ro", "No object dirs"),
        ("basedir=/x,upperdir=/y", "Both workdir and upperdir"),
        ("basedir=/x,digest=zz", "digest"),
        ("basedir=/x,verity=1", "takes no value"),
    ] {
        let mut c = helper();
        c.arg(&img).arg(&mnt).arg("-o").arg(o);
        run_fail(c, msg);
    }
    // -s tolerates unknown options; -v reports; options may come before the operands.
    let mut c = helper();
    c.args(["-sv", "-o"]).arg(format!("basedir={},frob,ro", objs.display())).arg(&img).arg(&mnt);
    let out = run_ok(c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlay mount id"));
    check_tree(&tree, &mnt, 0, "helper -s");
    umount_and_assert_clean(&s, &mnt, &before, "helper form");
}

/// A TOC written by the test, with its objects: contents through the mount equal the objects.
#[test]
fn toc_with_objects() {
    let (_g, s, before) = setup_with_scratch();
    let objs = s.mkdir("objs");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("etc/hostname", b"composefs-test\n".to_vec()),
        ("usr/bin/tool", (0..200_000u32).map(|i| (i % 251) as u8).collect()),
        ("usr/share/doc/a, b:c.txt", b"odd name\n".to_vec()),
        ("empty", Vec::new()),
    ];
    let mut entries = vec![
        serde_json::json!({"type": "dir", "name": "usr/share/doc", "mode": 0o755, "uid": 0, "gid": 0, "modtime": "2024-01-02T03:04:05Z"}),
    ];
    for (name, data) in &files {
        let h = sha256_hex(data);
        if !data.is_empty() {
            let p = objs.join(&h[..2]).join(&h[2..]);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
        let mut e = serde_json::json!({"type": "reg", "name": name, "mode": 0o644, "uid": 1000, "gid": 1000,
            "size": data.len(), "modtime": "2024-01-02T03:04:05Z"});
        if !data.is_empty() {
            e["digest"] = serde_json::json!(format!("sha256:{h}"));
        }
        entries.push(e);
    }
    entries.push(serde_json::json!({"type": "symlink", "name": "usr/bin/alias", "linkName": "tool", "modtime": "2024-01-02T03:04:05Z"}));
    let toc = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
    let toc_path = s.path("layer.toc.json");
    std::fs::write(&toc_path, &toc).unwrap();
    let tree = cfsmount::input::toc::parse(&toc, &Default::default()).unwrap();
    let img = s.path("toc.img");
    write_img(&tree, &WriteOptions::default(), &img);
    let mnt = s.mkdir("mnt");
    // The image built here, and the TOC itself built on the fly by `mount --toc` (sandboxed).
    for (source, toc, force_loop) in
        [(&img, false, false), (&img, false, true), (&toc_path, true, false), (&toc_path, true, true)]
    {
        let mut c = mount_cmd(&s, source, &mnt, &objs);
        if toc {
            c.arg("--toc");
        }
        if force_loop {
            c.arg("--force-loop");
        }
        run_ok(c);
        for (name, data) in &files {
            let p = mnt.join(name);
            assert_eq!(&std::fs::read(&p).unwrap(), data, "{name}");
            let md = std::fs::symlink_metadata(&p).unwrap();
            assert_eq!((md.uid(), md.gid(), md.mode(), md.mtime()), (1000, 1000, 0o100644, 1704164645), "{name}");
        }
        assert_eq!(std::fs::read_link(mnt.join("usr/bin/alias")).unwrap(), Path::new("tool"));
        umount(&s, &mnt);
    }
    // The same image through util-linux `mount -t composefs` and the helper link.
    {
        let _link = HelperLink::new();
        let out = mount_t_composefs(&s, format!("basedir={},ro", objs.display()), &img, &mnt);
        assert!(out.status.success(), "mount -t composefs: {}", String::from_utf8_lossy(&out.stderr));
        for (name, data) in &files {
            assert_eq!(&std::fs::read(mnt.join(name)).unwrap(), data, "mount -t composefs: {name}");
        }
        umount(&s, &mnt);
    }
    // The temporary image of an on-the-fly build does not stay in the state directory.
    assert_eq!(std::fs::read_dir(s.path("state")).unwrap().count(), 0);
    // A dumpfile built on the fly.
    let dump = s.path("small.dump");
    std::fs::write(&dump, SMALL).unwrap();
    let dobjs = s.mkdir("dobjs");
    let tree = dump_tree(SMALL);
    write_objects(&tree, &dobjs);
    let mut c = mount_cmd(&s, &dump, &mnt, &dobjs);
    c.arg("--dump");
    run_ok(c);
    check_tree(&tree, &mnt, 0, "--dump");
    umount(&s, &mnt);
    // A hostile TOC is refused by the builder, and nothing is mounted or left.
    std::fs::write(&toc_path, br#"{"version":1,"entries":[{"type":"reg","name":"../../etc/passwd","size":1}]}"#)
        .unwrap();
    let mut c = mount_cmd(&s, &toc_path, &mnt, &objs);
    c.arg("--toc");
    run_fail(c, "building the image failed");
    assert_eq!(std::fs::read_dir(s.path("state")).unwrap().count(), 0);
    assert_clean(&before, "toc");
}

const SMALL: &str = "/ 4096 40755 3 0 0 0 1000.0 - - -\n\
/file 11 100644 1 5 7 0 1000.0 ab/cdef - -\n\
/inline 3 100640 1 0 0 0 1000.0 - abc -\n\
/sub 4096 40750 2 10 10 0 1000.0 - - -\n\
/sub/x 11 100600 1 0 0 0 1000.0 ab/cdef - -\n";

/// The SMALL tree, written as `small.img` with its objects in `objs`.
fn small_setup(s: &Scratch) -> (Tree, PathBuf, PathBuf) {
    let tree = dump_tree(SMALL);
    let (img, objs) = write_img_and_objects(s, &tree, &WriteOptions::default(), "small.img", "objs");
    (tree, img, objs)
}

/// `small_setup` plus an empty mount point `mnt`.
fn small_setup_with_mnt(s: &Scratch) -> (Tree, PathBuf, PathBuf, PathBuf) {
    let (tree, img, objs) = small_setup(s);
    (tree, img, objs, s.mkdir("mnt"))
}

#[test]
fn idmapped_mounts() {
    let (_g, s, before) = setup_with_scratch();
    let (tree, img, objs, mnt) = small_setup_with_mnt(&s);
    for force_loop in [false, true] {
        let mut c = mount_cmd(&s, &img, &mnt, &objs);
        c.args(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]);
        if force_loop {
            c.arg("--force-loop");
        }
        run_ok(c);
        check_tree(&tree, &mnt, 100000, "uidmap");
        let md = std::fs::metadata(mnt.join("file")).unwrap();
        assert_eq!((md.uid(), md.gid()), (100005, 100007));
        let err = std::fs::write(mnt.join("file"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "writing through the idmapped mount");
        assert_eq!(std::fs::create_dir(mnt.join("new")).unwrap_err().raw_os_error(), Some(libc::EROFS));
        umount(&s, &mnt);
    }
    // --idmap with an existing user namespace: util-linux unshare holds it, we (root) write its maps.
    let mut child = Command::new("unshare").args(["--user", "sleep", "60"]).spawn().unwrap();
    let ns = PathBuf::from(format!("/proc/{}/ns/user", child.id()));
    let ok = wait_for_other_namespace(child.id(), "user");
    assert!(ok, "unshare did not create a user namespace");
    std::fs::write(format!("/proc/{}/uid_map", child.id()), "0 200000 65536\n").unwrap();
    std::fs::write(format!("/proc/{}/gid_map", child.id()), "0 200000 65536\n").unwrap();
    let mut c = mount_cmd(&s, &img, &mnt, &objs);
    c.arg("--idmap").arg(&ns);
    run_ok(c);
    let _ = child.kill();
    let _ = child.wait();
    check_tree(&tree, &mnt, 200000, "--idmap");
    umount(&s, &mnt);
    // Not a user namespace: refused.
    let mut c = mount_cmd(&s, &img, &mnt, &objs);
    c.arg("--idmap").arg("/proc/self/ns/net");
    run_fail(c, "not a user namespace");
    assert_clean(&before, "idmap");
}

#[test]
fn layers_whiteouts_and_opaque_dirs() {
    let (_g, s, before) = setup_with_scratch();
    let lower = dump_tree(
        "/ 4096 40755 4 0 0 0 1000.0 - - -\n\
/a 3 100644 1 0 0 0 1000.0 - aaa -\n\
/b 3 100644 1 0 0 0 1000.0 - bbb -\n\
/d 4096 40755 2 0 0 0 1000.0 - - -\n\
/d/x 1 100644 1 0 0 0 1000.0 - x -\n\
/d/y 11 100644 1 0 0 0 1000.0 ab/cdef - -\n\
/e 4096 40755 2 0 0 0 1000.0 - - -\n\
/e/keep 1 100644 1 0 0 0 1000.0 - k -\n",
    );
    let upper = dump_tree(
        "/ 4096 40755 4 0 0 0 1000.0 - - -\n\
/a 0 20000 1 0 0 0 1000.0 - - -\n\
/c 3 100644 1 0 0 0 1000.0 - ccc -\n\
/d 4096 40755 2 0 0 0 1000.0 - - - trusted.overlay.opaque=y\n\
/d/z 1 100644 1 0 0 0 1000.0 - z -\n\
/e 4096 40755 2 0 0 0 1000.0 - - -\n\
/e/new 1 100644 1 0 0 0 1000.0 - n -\n",
    );
    let (l, u) = (s.path("lower.img"), s.path("upper.img"));
    write_img(&lower, &WriteOptions::default(), &l);
    write_img(&upper, &WriteOptions::default(), &u);
    let objs = s.mkdir("objs");
    write_objects(&lower, &objs);
    let mnt = s.mkdir("mnt");
    for force_loop in [false, true] {
        let mut c = mount_cmd(&s, &l, &mnt, &objs);
        c.arg("--layer").arg(&u);
        if force_loop {
            c.arg("--force-loop");
        }
        run_ok(c);
        let names = |p: &Path| -> BTreeSet<String> {
            std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
        };
        let root = names(&mnt);
        assert!(!root.contains("a"), "whiteout in the upper layer must hide /a: {root:?}");
        assert!(!mnt.join("a").exists());
        assert_eq!(std::fs::read(mnt.join("b")).unwrap(), b"bbb");
        assert_eq!(std::fs::read(mnt.join("c")).unwrap(), b"ccc");
        assert_eq!(names(&mnt.join("d")), BTreeSet::from(["z".to_string()]), "opaque /d hides the lower /d");
        assert_eq!(
            names(&mnt.join("e")),
            BTreeSet::from(["keep".to_string(), "new".to_string()]),
            "non-opaque /e merges"
        );
        umount_and_assert_clean(&s, &mnt, &before, "layers");
    }
    // A lower-layer object is read through the stack.
    let mut c = mount_cmd(&s, &u, &mnt, &objs);
    c.arg("--layer").arg(&l);
    run_ok(c);
    // now the old lower is on top: /a is back, /d is merged? no: /d of the top (lower.img) is not opaque
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"aaa");
    let y = std::fs::read(mnt.join("d/y")).unwrap();
    assert_eq!(y, object_pattern(b"ab/cdef", 11));
    umount_and_assert_clean(&s, &mnt, &before, "layers reversed");
}

/// LOOP_CTL_GET_FREE hands out the same device to racing processes; the loser must retry.
#[test]
fn loop_ebusy_race() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (_g, s, before) = setup_with_scratch();
    let (tree, img, objs, mnt) = small_setup_with_mnt(&s);
    let dummy = s.path("dummy");
    std::fs::write(&dummy, vec![0u8; 1 << 20]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let grabbed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let grabber = {
        let (stop, grabbed, dummy) = (stop.clone(), grabbed.clone(), dummy.clone());
        std::thread::spawn(move || {
            // Another "process": keeps grabbing free devices with losetup-like calls.
            while !stop.load(Ordering::Relaxed) {
                let mut held = Vec::new();
                for _ in 0..8 {
                    let out =
                        Command::new("losetup").args(["--find", "--show", "--read-only"]).arg(&dummy).output().unwrap();
                    if out.status.success() {
                        held.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
                        grabbed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                for d in held {
                    let _ = Command::new("losetup").arg("-d").arg(&d).status();
                }
            }
        })
    };
    for i in 0..30 {
        let mut c = mount_cmd(&s, &img, &mnt, &objs);
        c.arg("--force-loop");
        run_ok(c);
        if i % 10 == 0 {
            check_tree(&tree, &mnt, 0, "race");
        }
        umount(&s, &mnt);
    }
    stop.store(true, Ordering::Relaxed);
    grabber.join().unwrap();
    assert!(grabbed.load(Ordering::Relaxed) > 0, "the competing process never got a device");
    assert_clean(&before, "race");
}

/// An in-process race on the same free device number: two threads attach at once, many times.
#[test]
fn loop_attach_concurrent_threads() {
    let (_g, s, before) = setup_with_scratch();
    let (_, img, _) = small_setup(&s);
    // Rounds until the race was actually lost at least once (typically dozens of times per round).
    let mut total = 0;
    for _round in 0..10 {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let img = img.clone();
                std::thread::spawn(move || {
                    let mut retries = 0;
                    for _ in 0..25 {
                        let f = std::fs::File::open(&img).unwrap();
                        let lo = cfsmount::mount::loopdev::attach(f.as_fd(), &img).expect("attach under contention");
                        assert!(lo.path().to_string_lossy().starts_with("/dev/loop"));
                        retries += lo.retries();
                        drop(lo); // autoclear detaches
                    }
                    retries
                })
            })
            .collect();
        let retries: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        eprintln!("EBUSY retries over 100 concurrent attaches: {retries}");
        total += retries;
        if total > 0 {
            break;
        }
    }
    assert!(total > 0, "LOOP_CONFIGURE never returned EBUSY under contention: the retry path was not exercised");
    assert_clean(&before, "threads");
}

#[test]
fn cycles_200_leave_nothing() {
    let (_g, s, before) = setup_with_scratch();
    let losetup_before = String::from_utf8(Command::new("losetup").arg("-a").output().unwrap().stdout).unwrap();
    let (_, img, objs, mnt) = small_setup_with_mnt(&s);
    for i in 0..200 {
        let mut c = mount_cmd(&s, &img, &mnt, &objs);
        if i % 2 == 1 {
            c.arg("--force-loop");
        }
        run_ok(c);
        assert_eq!(std::fs::read(mnt.join("inline")).unwrap(), b"abc");
        umount(&s, &mnt);
    }
    assert_eq!(s.records(), 0);
    assert_clean(&before, "200 cycles");
    let losetup_after = String::from_utf8(Command::new("losetup").arg("-a").output().unwrap().stdout).unwrap();
    let p = s.dir.path().to_string_lossy().into_owned();
    assert!(!losetup_after.lines().any(|l| l.contains(&p)), "losetup -a still lists our image: {losetup_after}");
    let _ = losetup_before;
}

#[test]
fn injected_failures_leave_nothing() {
    let (_g, s, before) = setup_with_scratch();
    let (_, img, objs, mnt) = small_setup_with_mnt(&s);
    let garbage = s.path("garbage.img");
    std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
    // A composefs header and EROFS magic, but a corrupt superblock: fails in the kernel, after
    // the loop device was attached.
    let mut corrupt = std::fs::read(&img).unwrap();
    for b in &mut corrupt[1028..1100] {
        *b = 0xff;
    }
    let corrupt_p = s.path("corrupt.img");
    std::fs::write(&corrupt_p, &corrupt).unwrap();
    let upper = s.mkdir("upper");
    // workdir inside upperdir: refused by overlayfs at creation, after the EROFS mount exists.
    let nested_work = s.mkdir("upper/work");
    let nodir = s.path("nonexistent");
    let mut cases: Vec<(Vec<OsString>, &str)> = vec![
        (mount_args(&img, &mnt, &nodir, &[]), "basedir"),
        (mount_args(&nodir, &mnt, &objs, &[]), "nonexistent"),
        (mount_args(&garbage, &mnt, &objs, &[]), "not a composefs image"),
        (mount_args(&corrupt_p, &mnt, &objs, &[]), "EROFS mount failed"),
        (mount_args(&corrupt_p, &mnt, &objs, &[&"--force-loop"]), "EROFS mount failed"),
        (mount_args(&img, &nodir, &objs, &[]), "target"),
        (mount_args(&img, &mnt, &objs, &[&"--digest", &"00".repeat(32)]), "digest"),
        (mount_args(&img, &mnt, &objs, &[&"--digest", &"xyz"]), "digest"),
        (mount_args(&img, &mnt, &objs, &[&"--upperdir", &upper, &"--workdir", &nodir]), "workdir"),
        (mount_args(&img, &mnt, &objs, &[&"--idmap", &nodir]), "nonexistent"),
        (mount_args(&img, &mnt, &objs, &[&"--uidmap", &"0:4294967295:2", &"--gidmap", &"0:1:1"]), "bad id map"),
        (mount_args(&img, &mnt, &objs, &[&"--layer", &garbage, &"--force-loop"]), "not a composefs image"),
        (mount_args(&img, &mnt, &objs, &[&"--layer", &corrupt_p, &"--force-loop"]), "EROFS mount failed"),
        (
            vec![
                img.clone().into(),
                "--basedir".into(),
                objs.clone().into(),
                "--fd-out".into(),
                s.path("no-socket").into(),
            ],
            "connect",
        ),
    ];
    for force_loop in [false, true] {
        let mut v = mount_args(&img, &mnt, &objs, &[&"--upperdir", &upper, &"--workdir", &nested_work]);
        if force_loop {
            v.push("--force-loop".into());
        }
        cases.push((v, "overlay"));
    }
    for (args, msg) in cases {
        let mut c = s.cmd();
        c.arg("mount").args(&args);
        run_fail(c, msg);
        assert_eq!(s.records(), 0, "{args:?}: record left");
        assert_clean(&before, &format!("{args:?}"));
    }
    // A record whose mount was removed behind cfsmount's back (plain umount) is pruned by the
    // next mount.
    run_ok(mount_cmd(&s, &img, &mnt, &objs));
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert_eq!(s.records(), 1);
    let mnt2 = s.mkdir("mnt2");
    run_ok(mount_cmd(&s, &img, &mnt2, &objs));
    assert_eq!(s.records(), 1, "the stale record was pruned");
    umount(&s, &mnt2);
    assert_eq!(s.records(), 0);
    assert_clean(&before, "plain umount");
    // umount of something that is not ours / not mounted
    let mut c = s.cmd();
    c.arg("umount").arg(&mnt);
    run_fail(c, "not a mount made by cfsmount");
}

/// --fd-out: the detached overlay goes over a unix socket; the receiver attaches it.
#[test]
fn fd_out_handover() {
    let (_g, s, before) = setup_with_scratch();
    let (tree, img, objs) = small_setup(&s);
    let sock = s.path("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut c = detached_mount_cmd(&s, &img, &objs);
    c.arg("--fd-out").arg(&sock);
    let child = c.spawn().unwrap();
    let (conn, _) = listener.accept().unwrap();
    let (bytes, fds) = receive_fds(&conn);
    assert_eq!(bytes, 1);
    assert_eq!(fds.len(), 1, "one mount fd received");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing is attached yet.
    let mnt = s.mkdir("mnt");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&*mnt.to_string_lossy()));
    attach_mount_fd(&fds[0], &mnt);
    drop(fds);
    check_tree(&tree, &mnt, 0, "fd-out");
    // The record (made without a target) is found by mount id once attached.
    umount(&s, &mnt);
    assert_eq!(s.records(), 0);
    assert_clean(&before, "fd-out");
}

/// The legacy `lowerdir=A::B` syntax (used when lowerdir+ is refused), with a basedir whose
/// path needs every escape.
#[test]
fn legacy_overlay_syntax() {
    let (_g, s, before) = setup_with_scratch();
    let tree = dump_tree(SMALL);
    let (img, objs) = write_img_and_objects(&s, &tree, &WriteOptions::default(), "small.img", "ob,j\\ s=x");
    let mnt = s.mkdir("mnt");
    let mut c = s.cmd();
    c.env("CFSMOUNT_TEST_LEGACY_OVERLAY", "1").args(["mount", "-v"]).args(mount_args(&img, &mnt, &objs, &[]));
    let out = run_ok(c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("legacy lowerdir string"));
    check_tree(&tree, &mnt, 0, "legacy");
    // The layer was attached in the state dir only while the overlay was created.
    let state = s.path("state").to_string_lossy().into_owned();
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mi.lines().filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(&state))).collect();
    assert!(left.is_empty(), "temporary layer mount left: {left:?}");
    assert_eq!(std::fs::read_dir(s.path("state")).unwrap().count(), 1, "only the record in the state dir");
    umount_and_assert_clean(&s, &mnt, &before, "legacy");
    // Several layers, loop-backed, in the legacy syntax too.
    let upper = dump_tree("/ 4096 40755 2 0 0 0 1000.0 - - -\n/inline 0 20000 1 0 0 0 1000.0 - - -\n/new 2 100644 1 0 0 0 1000.0 - hi -\n");
    let uimg = s.path("upper.img");
    write_img(&upper, &WriteOptions::default(), &uimg);
    let mut c = mount_cmd(&s, &img, &mnt, &objs);
    c.env("CFSMOUNT_TEST_LEGACY_OVERLAY", "1");
    c.arg("--layer").arg(&uimg).arg("--force-loop");
    run_ok(c);
    assert!(!mnt.join("inline").exists(), "whited out by the upper layer");
    assert_eq!(std::fs::read(mnt.join("new")).unwrap(), b"hi");
    assert_eq!(std::fs::read(mnt.join("file")).unwrap(), object_pattern(b"ab/cdef", 11));
    umount_and_assert_clean(&s, &mnt, &before, "legacy layers");
}

#[test]
fn upperdir_makes_it_writable() {
    let (_g, s, before) = setup_with_scratch();
    let (_, img, objs) = small_setup(&s);
    let (up, work, mnt) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("mnt"));
    let mut c = mount_cmd(&s, &img, &mnt, &objs);
    c.arg("--upperdir").arg(&up).arg("--workdir").arg(&work);
    run_ok(c);
    std::fs::write(mnt.join("newfile"), b"hi").unwrap();
    assert_eq!(std::fs::read(up.join("newfile")).unwrap(), b"hi");
    assert_eq!(std::fs::read(mnt.join("file")).unwrap()[..], object_pattern(b"ab/cdef", 11)[..]);
    umount_and_assert_clean(&s, &mnt, &before, "upper");
}

/// --allow-suid/--allow-dev change the flags for root; without them the mount is nosuid,nodev.
#[test]
fn suid_dev_flags() {
    let _g = setup();
    let s = Scratch::new();
    let (_, img, objs, mnt) = small_setup_with_mnt(&s);
    let mut c = mount_cmd(&s, &img, &mnt, &objs);
    c.arg("--allow-suid").arg("--allow-dev");
    run_ok(c);
    let vfs = rustix::fs::statvfs(&mnt).unwrap();
    use rustix::fs::StatVfsMountFlags as F;
    assert!(!vfs.f_flag.contains(F::NOSUID) && !vfs.f_flag.contains(F::NODEV) && vfs.f_flag.contains(F::RDONLY));
    umount(&s, &mnt);
    run_ok(mount_cmd(&s, &img, &mnt, &objs));
    let vfs = rustix::fs::statvfs(&mnt).unwrap();
    assert!(vfs.f_flag.contains(F::NOSUID | F::NODEV | F::RDONLY));
    umount(&s, &mnt);
}

#[test]
fn statx_mount_ids_in_record() {
    let _g = setup();
    let s = Scratch::new();
    let (_, img, objs, mnt) = small_setup_with_mnt(&s);
    let mut c = mount_cmd(&s, &img, &mnt, &objs);
    c.arg("--force-loop");
    run_ok(c);
    let rec_path = std::fs::read_dir(s.path("state")).unwrap().next().unwrap().unwrap().path();
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    let fd = rustix::fs::open(&mnt, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    let st =
        rustix::fs::statx(&fd, "", rustix::fs::AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::from_bits_retain(0x4000))
            .unwrap();
    drop(fd);
    assert_eq!(rec["mount_id"].as_u64(), Some(st.stx_mnt_id));
    assert_eq!(rec["target"].as_str(), Some(&*mnt.to_string_lossy()));
    assert_eq!(rec["uid"].as_u64(), Some(0));
    let lo = rec["loop_devices"][0].as_str().unwrap().to_string();
    let dev = lo.trim_start_matches("/dev/");
    let backing = std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file")).unwrap();
    assert_eq!(backing.trim(), img.to_string_lossy());
    assert_eq!(std::fs::read_to_string(format!("/sys/block/{dev}/loop/autoclear")).unwrap().trim(), "1");
    assert_eq!(std::fs::read_to_string(format!("/sys/block/{dev}/ro")).unwrap().trim(), "1");
    assert_eq!(std::fs::read_to_string(format!("/sys/block/{dev}/queue/logical_block_size")).unwrap().trim(), "4096");
    umount(&s, &mnt);
    assert!(std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file")).is_err(), "{lo} freed after umount");
}

/// `--fd-out N`: an inherited, connected socket fd (here stdin) instead of a socket path.
#[test]
fn fd_out_inherited_fd() {
    let (_g, s, before) = setup_with_scratch();
    let (tree, img, objs) = small_setup(&s);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut c = detached_mount_cmd(&s, &img, &objs);
    c.args(["--fd-out", "0"]);
    c.stdin(std::process::Stdio::from(OwnedFd::from(theirs)));
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, fds) = receive_fds(&ours);
    assert_eq!(fds.len(), 1);
    let mnt = s.mkdir("mnt");
    attach_mount_fd(&fds[0], &mnt);
    drop(fds);
    check_tree(&tree, &mnt, 0, "fd-out 0");
    umount(&s, &mnt);
    // A received mount that is never attached disappears when its fd is closed.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut c = detached_mount_cmd(&s, &img, &objs);
    c.arg("--force-loop").args(["--fd-out", "0"]);
    c.stdin(std::process::Stdio::from(OwnedFd::from(theirs)));
    assert!(c.output().unwrap().status.success());
    drop(ours);
    let _ = std::fs::remove_dir_all(s.path("state"));
    std::fs::create_dir(s.path("state")).unwrap();
    assert_clean(&before, "fd-out dropped");
}

/// util-linux's `-N NS`: the helper mounts inside another mount namespace.
#[test]
fn helper_mounts_in_other_namespace() {
    let (_g, s, before) = setup_with_scratch();
    let (tree, img, objs, mnt) = small_setup_with_mnt(&s);
    let mut holder = Command::new("unshare").args(["-m", "--propagation", "private", "sleep", "60"]).spawn().unwrap();
    let pid = holder.id();
    wait_for_other_namespace(pid, "mnt");
    let link = s.path("mount.composefs");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    let mut c = Command::new(&link);
    c.env("CFSMOUNT_STATE_DIR", s.path("state"));
    c.arg(&img).arg(&mnt).args(["-N", &pid.to_string(), "-o"]).arg(format!("basedir={}", objs.display()));
    run_ok(c);
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(theirs.contains(&*mnt.to_string_lossy()), "mounted in the other namespace");
    assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&*mnt.to_string_lossy()), "not in ours");
    // Read it through that namespace's root.
    let there = PathBuf::from(format!("/proc/{pid}/root")).join(mnt.strip_prefix("/").unwrap());
    check_tree(&tree, &there, 0, "-N");
    // A mount in our namespace (which prunes stale records) leaves that record alone: its target
    // path belongs to the other namespace.
    let mnt2 = s.mkdir("mnt2");
    run_ok(mount_cmd(&s, &img, &mnt2, &objs));
    assert_eq!(s.records(), 2);
    umount(&s, &mnt2);
    assert_eq!(s.records(), 1, "the other namespace's record survives pruning");
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .arg(bin())
        .arg("umount")
        .arg(&mnt)
        .env("CFSMOUNT_STATE_DIR", s.path("state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap().contains(&*mnt.to_string_lossy()));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(s.records(), 0);
    assert_clean(&before, "-N");
}

/// The legacy overlay syntax (kernels before 6.15, forced here) needs the layers attached while
/// the overlay is created. Those temporary mounts live in a private mount namespace that dies
/// with the child that made them: they never appear in ours, even for a moment, and a kill -9
/// of cfsmount at any moment leaves no mount and no loop device behind.
#[test]
fn legacy_syntax_temporary_mounts_never_appear_here() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let (_g, s, before) = setup_with_scratch();
    let (_, img, objs, mnt) = small_setup_with_mnt(&s);
    let state = s.path("state").to_string_lossy().into_owned();
    let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::<String>::new())));
    let poller = {
        let (stop, seen, state) = (stop.clone(), seen.clone(), state.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                for l in mi.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&state))) {
                    seen.lock().unwrap().push(l.to_string());
                }
            }
        })
    };
    let legacy_mount = || {
        let mut c = mount_cmd(&s, &img, &mnt, &objs);
        c.env("CFSMOUNT_TEST_LEGACY_OVERLAY", "1").arg("--force-loop");
        c
    };
    for _ in 0..20 {
        run_ok(legacy_mount());
        umount(&s, &mnt);
    }
    for delay_ms in (0..40).step_by(2) {
        let mut child = legacy_mount().spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // A mount that completed before the kill is fine; it is unmounted here.
        if std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&*mnt.to_string_lossy()) {
            let _ = rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH);
        }
        let left: Vec<String> = s.mount_points().into_iter().filter(|m| m.starts_with(&state)).collect();
        assert!(left.is_empty(), "kill -9 after {delay_ms} ms left temporary mounts: {left:?}");
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.is_empty(),
        "temporary layer mounts appeared in this mount namespace: {:?}",
        &seen[..seen.len().min(3)]
    );
    assert_clean(&before, "legacy, killed");
}
