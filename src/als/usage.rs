//! Who uses a served layer. podman stacks its own overlay on the `diff` mounts (containers,
//! `podman image mount`); overlayfs keeps private clones of its layers, so such a use holds no
//! reference to our mount itself (umount2's busy check does not see it) — but removing the
//! store's objects under it would break every file it has not opened yet. So the overlay
//! mounts of every mount namespace on the machine are read (`/proc/PID/mountinfo`, one process
//! per namespace), and each layer path (`lowerdir=`, `lowerdir+=`, `datadir+=`) is resolved:
//! a layer that resolves into one of our `diff` directories is in use.
//!
//! Limits: paths are resolved in cfsmount's own mount namespace (podman's paths into an ALS
//! root or view are the same there: the tmpfs propagates); a relative layer path (which
//! containers/storage uses when the absolute option string would exceed a page) cannot be
//! resolved and is reported as unknown use of the namespace, not as a use of a layer.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// One overlay mount that has a layer inside one of the `diff` directories asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// Our `diff` directory it uses.
    pub diff: PathBuf,
    /// Its mount point, as its namespace sees it.
    pub mountpoint: String,
    /// A process of that namespace, `None` for cfsmount's own namespace.
    pub pid: Option<u32>,
}

impl std::fmt::Display for Use {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            None => write!(f, "overlay at {}", self.mountpoint),
            Some(p) => {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                write!(f, "overlay at {} in the mount namespace of pid {p} ({})", self.mountpoint, comm.trim())
            }
        }
    }
}

/// Overlay mounts in any mount namespace using one of `diffs` (canonical paths) as a layer.
pub fn users_of(diffs: &[PathBuf]) -> Vec<Use> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut seen_ns = BTreeSet::new();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // Processes come and go: anything unreadable is skipped.
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else { continue };
        let ours = Some(&ns) == own.as_ref();
        if !seen_ns.insert(ns) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else { continue };
        for (mountpoint, layers) in overlay_layers(&info) {
            for l in layers {
                if !l.starts_with('/') || l.starts_with("/proc/") {
                    continue;
                }
                let Ok(c) = std::fs::canonicalize(&l) else { continue };
                if let Some(d) = diffs.iter().find(|d| c.starts_with(d)) {
                    out.push(Use { diff: d.clone(), mountpoint: mountpoint.clone(), pid: (!ours).then_some(pid) });
                }
            }
        }
    }
    out
}

/// The overlay mounts of a mountinfo text: (mount point, layer paths), unescaped.
pub fn overlay_layers(mountinfo: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut r = right.split(' ');
        if r.next() != Some("overlay") {
            continue;
        }
        let (Some(_source), Some(super_opts)) = (r.next(), r.next()) else { continue };
        let Some(mountpoint) = left.split(' ').nth(4) else { continue };
        let mut layers = Vec::new();
        for opt in split_unescaped(super_opts, ',') {
            let (k, v) = opt.split_once('=').unwrap_or((opt.as_str(), ""));
            match k {
                "lowerdir" => layers.extend(split_unescaped(v, ':').into_iter().filter(|p| !p.is_empty())),
                "lowerdir+" | "datadir+" => layers.push(v.to_string()),
                _ => {}
            }
        }
        out.push((unescape_octal(mountpoint), layers.iter().map(|l| unescape_octal(l)).collect()));
    }
    out
}

/// Split at `sep` unless a backslash escapes it (overlayfs escapes `,` `:` and `\` in the paths
/// it shows); the backslash escaping `sep` is dropped, other escapes are kept for the next
/// split and for [`unescape_octal`].
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' => match it.peek() {
                Some(&n) if n == sep => {
                    out.last_mut().expect("one").push(n);
                    it.next();
                }
                // Another escape: kept whole for a later split (or the octal unescaping).
                Some(&n) => {
                    out.last_mut().expect("one").push('\\');
                    out.last_mut().expect("one").push(n);
                    it.next();
                }
                None => out.last_mut().expect("one").push('\\'),
            },
            c if c == sep => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

/// mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_layers_are_read_from_mountinfo() {
        let info = "\
52 43 0:48 / /graph/overlay/cd71/merged ro,relatime - overlay overlay ro,lowerdir=/graph/overlay/cd71/diff:/graph/overlay/l/FMJD,redirect_dir=on
46 27 0:40 / /tmp/mnt ro,nosuid,nodev,relatime - overlay composefs ro,lowerdir+=/proc/self/fd/9,datadir+=/proc/self/fd/5,redirect_dir=on,metacopy=on
60 27 0:50 / /with\\040space rw - overlay overlay rw,lowerdir=/a\\:b:/c\\,d,upperdir=/u,workdir=/w
22 27 0:21 / /proc rw,relatime - proc proc rw
";
        let v = overlay_layers(info);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].0, "/graph/overlay/cd71/merged");
        assert_eq!(v[0].1, vec!["/graph/overlay/cd71/diff", "/graph/overlay/l/FMJD"]);
        assert_eq!(v[1].1, vec!["/proc/self/fd/9", "/proc/self/fd/5"]);
        assert_eq!(v[2].0, "/with space");
        assert_eq!(v[2].1, vec!["/a:b", "/c,d"]);
    }
}
