//! Root tier: what the image reader accepts, the kernel sees the same way.
//!
//! The privileged helper vets images with `read_image` before the kernel mounts them, so
//! the reader must not accept an image that the kernel's EROFS driver shows differently.
//! Valid images are corrupted (deterministic PRNG); each corrupted image the reader
//! accepts is mounted by the kernel, and so is the image rewritten from the reader's tree
//! (`write_image(read_image(m))`, which holds exactly what the reader understood). Both
//! kernel views must agree: names, types, modes, owners, mtimes, sizes, nlink, device
//! numbers, symlink targets, xattrs (as the kernel lists and returns them), inline
//! contents and hard-link groups. A corrupted image the kernel refuses is fine.
//! Needs root (mount); fails, with the reason, when not root.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cfsmount::erofs::reader::{read_image_with, ReadLimits};
use cfsmount::input::dump::{parse, DumpOptions};
use cfsmount::tree::Limits;

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{is_strict, read_input};
#[path = "support/image.rs"]
mod image;
use image::build;
#[path = "support/random.rs"]
mod random;
use random::{corrupted, env_or, random_tree, Rng};

#[path = "support/root.rs"]
mod root;
use root::{require_root, serial, Scratch, Snapshot};

/// The image of the conformance dumpfile case `name`, at `version` when given.
fn dump_case(name: &str, version: Option<u32>) -> Vec<u8> {
    let raw = read_input(&conformance::dump_dir(), name);
    let tree = parse(&raw, &DumpOptions { strict: is_strict(name), limits: Limits::default() }).expect("parse");
    build(&tree, version)
}

/// Removes the image file and the mount point when dropped (after the unmount).
struct RemoveOnDrop(PathBuf, PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.1);
    }
}

/// Unmounts when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// What the kernel shows of an image, one line per path; Err if the kernel refuses it
/// (mount fails, or reading reports corruption: EIO / EUCLEAN). Other errors (say, an
/// ACL xattr that is not a valid ACL makes permission checks fail with EOPNOTSUPP) are
/// part of what the kernel shows.
fn kernel_view(img: &[u8], work: &Path) -> Result<BTreeMap<Vec<u8>, String>, String> {
    // A new file and mount point every time: no cache of an earlier image can be reused.
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = work.join(format!("image-{n}"));
    let mnt = work.join(format!("mnt-{n}"));
    let _cleanup = RemoveOnDrop(file.clone(), mnt.clone());
    std::fs::write(&file, img).map_err(|e| format!("writing image: {e}"))?;
    std::fs::create_dir_all(&mnt).map_err(|e| format!("mkdir: {e}"))?;
    let out = Command::new("mount")
        .args(["-t", "erofs", "-o", "ro,loop"])
        .arg(&file)
        .arg(&mnt)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if !out.status.success() {
        return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let _m = Mounted(mnt.clone());
    let mut view = BTreeMap::new();
    let mut ino_first: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() { mnt.clone() } else { mnt.join(std::ffi::OsStr::from_bytes(&rel)) };
        let md = std::fs::symlink_metadata(&p).map_err(|e| format!("lstat /{}: {e}", String::from_utf8_lossy(&rel)))?;
        let ft = md.file_type();
        let group = ino_first.entry(md.ino()).or_insert_with(|| rel.clone()).clone();
        let mut line = format!(
            "mode={:o} uid={} gid={} mtime={}.{} rdev={:x} link-group={:?}",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            md.rdev(),
            group
        );
        // Directory sizes depend on the layout; nlink of directories is checked too.
        if !ft.is_dir() {
            line += &format!(" size={}", md.size());
        }
        line += &format!(" nlink={}", md.nlink());
        let xattrs = xattrs(&p)?;
        if ft.is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| format!("readlink: {e}"))?;
            line += &format!(" target={:?}", t.as_os_str().as_bytes());
        }
        if ft.is_file() && !xattrs.contains_key(&b"trusted.overlay.metacopy"[..]) {
            match std::fs::read(&p) {
                Ok(c) => line += &format!(" content={:?}", c),
                Err(e) => line += &format!(" content-error={}", shown_error(e, &rel)?),
            }
        }
        for (k, v) in &xattrs {
            line += &format!(" {}={v}", String::from_utf8_lossy(k));
        }
        if ft.is_dir() {
            let rd = match std::fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) => {
                    line += &format!(" readdir-error={}", shown_error(e, &rel)?);
                    view.insert(rel, line);
                    continue;
                }
            };
            for ent in rd {
                let ent = ent.map_err(|e| format!("readdir /{}: {e}", String::from_utf8_lossy(&rel)))?;
                let name = ent.file_name();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                stack.push(child);
            }
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            line += " special";
        }
        view.insert(rel, line);
    }
    Ok(view)
}

/// An error the kernel reports for a path: corruption (EIO, EUCLEAN) means the kernel
/// refuses the image; anything else is shown.
fn shown_error(e: std::io::Error, rel: &[u8]) -> Result<String, String> {
    match e.raw_os_error() {
        Some(libc::EIO) | Some(libc::EUCLEAN) => Err(format!("/{}: {e}", String::from_utf8_lossy(rel))),
        _ => Ok(e.to_string()),
    }
}

/// Xattr names the kernel lists, each with its value or the error getxattr returns.
fn xattrs(p: &Path) -> Result<BTreeMap<Vec<u8>, String>, String> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut names).map_err(|e| format!("llistxattr: {e}"))?;
    let mut m = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
        let mut v = vec![0u8; 65536];
        let shown = match rustix::fs::lgetxattr(p, cname.as_c_str(), &mut v) {
            Ok(len) => format!("{:?}", &v[..len]),
            Err(e) => format!("<{e}>"),
        };
        m.insert(name.to_vec(), shown);
    }
    Ok(m)
}

#[test]
fn accepted_corruptions_look_the_same_to_the_kernel() {
    require_root("root_inspect_kernel (it mounts EROFS images)");
    let _serial = serial();
    let work = Scratch::new("cfs-inspect-kernel-");
    let before = Snapshot::take(work.root(), None);
    let mut bases: Vec<(String, Vec<u8>)> = vec![
        ("special.dump v1".into(), dump_case("special.dump", Some(1))),
        ("longlink.dump".into(), dump_case("longlink.dump", None)),
        ("honggfuzz-bigfile-with-acl.dump".into(), dump_case("honggfuzz-bigfile-with-acl.dump", None)),
    ];
    for seed in [11u64, 12, 13] {
        bases.push((format!("random tree {seed}"), build(&random_tree(seed, 120), None)));
    }
    let per_base: usize = env_or("CFS_KERNEL_DIFF_CASES", 12);
    let seed = env_or("CFS_KERNEL_DIFF_SEED", 0xdead_beef_1234_5677u64);
    let mut rng = Rng(seed);
    let (mut compared, mut refused) = (0usize, 0usize);
    for (name, img) in &bases {
        // The valid image itself: the kernel must show it as the rewritten one.
        let base_view =
            kernel_view(img, work.root()).unwrap_or_else(|e| panic!("{name}: kernel refuses the valid image: {e}"));
        assert!(!base_view.is_empty());
        let mut accepted = 0;
        for attempt in 0..4000 {
            if accepted == per_base {
                break;
            }
            let span = if attempt % 5 == 4 { img.len() } else { img.len().min(1 << 16) };
            let m = corrupted(&mut rng, img, span, 3, attempt % 2 == 0);
            if m == *img {
                continue;
            }
            let Ok((tree, info)) = read_image_with(&m, &ReadLimits::default()) else {
                continue;
            };
            accepted += 1;
            let rewritten = build(&tree, Some(info.composefs_version));
            let want = kernel_view(&rewritten, work.root()).unwrap_or_else(|e| {
                let keep = std::env::temp_dir().join(format!("root-inspect-rewritten-{attempt}.img"));
                let _ = std::fs::write(&keep, &rewritten);
                let _ = std::fs::write(keep.with_extension("orig.img"), &m);
                panic!("{name} attempt {attempt}: the kernel refuses the rewritten image ({}): {e}", keep.display())
            });
            let got = match kernel_view(&m, work.root()) {
                Ok(v) => v,
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            if got != want {
                let first = got
                    .iter()
                    .zip(want.iter())
                    .find(|(a, b)| a != b)
                    .map(|((pa, la), (pb, lb))| {
                        // Only the fields that differ.
                        let only = |x: &str, y: &str| {
                            x.split(' ').filter(|t| !y.split(' ').any(|u| u == *t)).collect::<Vec<_>>().join(" ")
                        };
                        format!(
                            "kernel: /{}: {}\nreader: /{}: {}",
                            String::from_utf8_lossy(pa),
                            only(la, lb),
                            String::from_utf8_lossy(pb),
                            only(lb, la)
                        )
                    })
                    .unwrap_or_else(|| format!("{} vs {} entries", got.len(), want.len()));
                let keep = std::env::temp_dir().join(format!("root-inspect-diff-{attempt}.img"));
                let _ = std::fs::write(&keep, &m);
                panic!("{name} attempt {attempt}: the kernel sees the image differently from the reader (image kept at {}):\n{first}", keep.display());
            }
            compared += 1;
        }
        assert!(accepted > 0, "{name}: no corruption was accepted by the reader");
    }
    eprintln!("{compared} accepted corruptions looked the same to the kernel, {refused} were refused by the kernel");
    assert!(compared >= 10, "too few comparisons ({compared})");
    before.assert_nothing_left("kernel views of corrupted images");
}
