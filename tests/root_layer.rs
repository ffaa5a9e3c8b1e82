//! Root tier: every blob of the real-layers data imported with `mkimage --from-layer`, mounted
//! with `cfsmount mount`, and listed with the data's own `list-tree.py`; the listing must equal
//! the expected listing that GNU tar (layer 1) and umoci (both layers, flattened) give:
//! content, type, mode, owner, link count, size, mtime, device numbers, symlink targets and
//! xattrs. Layer 2 is checked stacked on layer 1 (`--layer`), which applies its whiteouts.
//!
//! Where a writer changed the tree itself (README "their trees are what they are"), the expected
//! listing is changed the same way: the eStargz writers' TOCs give modification times rounded to
//! the nearest second, and ctr-remote's zstd:chunked layer keeps `/.no.prefetch.landmark` (mode
//! 0000, one byte), as `--from-toc` does. In the stacked mount the root directory comes from
//! layer 2, which has no root member: its metadata is the documented default (0755, 0:0, mtime 0),
//! so the `/` line is not compared there.
//! Needs root; mounts run serially and nothing may be left mounted.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

#[path = "support/layers.rs"]
mod layers;
use layers::*;

static LOCK: Mutex<()> = Mutex::new(());

const LANDMARK: &str = "/.no.prefetch.landmark\tf\t0000\t0\t0\t1\t1\t0.000000000\t-\t-\tdc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8\t-";

fn list(mnt: &Path) -> String {
    let o = Command::new("python3").arg(root().join("list-tree.py")).arg(mnt).output().unwrap();
    assert!(o.status.success(), "list-tree.py: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The expected listing, changed as the writer changed the tree.
fn expected(file: &str, writer: &str, skip_root: bool) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("expected").join(file)).unwrap();
    let estargz = writer.starts_with("ctr-remote") || writer.starts_with("estargz");
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            if !estargz {
                return l.to_string();
            }
            let mut f: Vec<String> = l.split('\t').map(str::to_string).collect();
            let (s, n) = f[7].split_once('.').unwrap();
            let (s, n): (i64, u64) = (s.parse().unwrap(), n.parse().unwrap());
            f[7] = format!("{}.000000000", if n >= 500_000_000 { s + 1 } else { s });
            f.join("\t")
        })
        .collect();
    if writer == "ctr-remote-0.12.0-zstdchunked" {
        // Sorted by raw path bytes, it comes right after `/`.
        assert!(lines[0].starts_with("/\t") && lines[1].as_str() > "/.n");
        lines.insert(1, LANDMARK.to_string());
    }
    if skip_root {
        lines.retain(|l| !l.starts_with("/\t"));
    }
    lines
}

/// The stacked mount shows the per-layer overlays' `user.overlay.*` whiteout markers on
/// directories that hold whiteouts (a property of `cfsmount mount --layer`, reported to its
/// owner); they are removed before comparing.
fn strip_overlay_xattrs(line: &str) -> String {
    let mut f: Vec<String> = line.split('\t').map(str::to_string).collect();
    if let Some(x) = f.get_mut(11) {
        let kept: Vec<&str> = x.split(';').filter(|kv| !kv.starts_with("user.overlay.")).collect();
        *x = if kept.is_empty() || kept == ["-"] { "-".into() } else { kept.join(";") };
    }
    f.join("\t")
}

fn compare(got: &str, want: &[String], stacked: bool, ctx: &str) {
    let got: Vec<String> = got
        .lines()
        .filter(|l| !(stacked && l.starts_with("/\t")))
        .map(|l| if stacked { strip_overlay_xattrs(l) } else { l.to_string() })
        .collect();
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{ctx}: first differing line");
    }
    assert_eq!(got.len(), want.len(), "{ctx}: number of entries");
}

fn mounts_under(p: &Path) -> usize {
    let p = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&p)).count()
}

fn cfsmount(state: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("CFSMOUNT_STATE_DIR", state);
    c
}

#[test]
fn real_layers_mount_as_listed() {
    assert!(rustix::process::geteuid().is_root(), "root_layer needs root (it mounts the images)");
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempfile::Builder::new().prefix("cfsm-layer-").tempdir_in("/var/tmp").unwrap();
    let state = d.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let objs = d.path().join("objects");
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let all = blobs();
    let writers: std::collections::BTreeSet<String> = all.iter().map(|b| b.writer.clone()).collect();
    for w in &writers {
        let img = |n: u32| d.path().join(format!("{w}.{n}.img"));
        for b in all.iter().filter(|b| &b.writer == w) {
            ok(&import(&b.path, &img(b.layer), &objs, &["--diff-id", &b.diff_id]), &b.name());
        }
        // Layer 1 alone.
        let o = cfsmount(&state).arg("mount").arg(img(1)).arg(&mnt).arg("--basedir").arg(&objs).output().unwrap();
        ok(&o, &format!("mount {w} layer 1"));
        let got = list(&mnt);
        let o = cfsmount(&state).arg("umount").arg(&mnt).output().unwrap();
        ok(&o, "umount");
        compare(&got, &expected("layer1.tree.txt", w, false), false, &format!("{w} layer 1"));
        // Both layers, layer 2 on top.
        let o = cfsmount(&state)
            .arg("mount")
            .arg(img(1))
            .arg(&mnt)
            .arg("--basedir")
            .arg(&objs)
            .arg("--layer")
            .arg(img(2))
            .output()
            .unwrap();
        ok(&o, &format!("mount {w} layers 1+2"));
        let got = list(&mnt);
        let o = cfsmount(&state).arg("umount").arg(&mnt).output().unwrap();
        ok(&o, "umount");
        compare(&got, &expected("image.tree.txt", w, true), true, &format!("{w} layers 1+2"));
        assert_eq!(mounts_under(d.path()), 0, "{w}: mounts left behind");
    }
    check_store(&objs);
}
