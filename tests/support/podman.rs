//! Real container tools for the ALS tests (`tests/root_als.rs`): Debian's `docker-registry`
//! on 127.0.0.1 (private config and storage, stopped by pid), podman 4.3.1 with a private
//! storage.conf (graphroot/runroot inside the test's scratch directory, `runc`, cgroupfs, file
//! events), a multi-layer image built with umoci from tars GNU tar wrote, and a tree walker to
//! compare what podman shows with what the image holds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

#[track_caller]
pub fn ok(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// A `docker-registry serve` on 127.0.0.1, killed (by pid) when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let log = dir.join("registry.log");
        for _ in 0..20 {
            // A port the kernel says is free now (the tiny race with other programs is retried).
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = dir.join("config.yml");
            std::fs::write(
                &conf,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                     delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            let logf = std::fs::File::create(&log).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .spawn()
                .expect("docker-registry (Debian package docker-registry)");
            let mut r = Registry { child, port, log: log.clone() };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = r.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = r.child.kill();
            let _ = r.child.wait();
            std::mem::forget(r);
        }
        panic!("docker-registry did not start; log: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request lines (`GET /v2/...`) the registry logged so far.
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let i = l.find("\"GET ").or_else(|| l.find("\"HEAD ")).or_else(|| l.find("\"PUT "));
                let i = i.or_else(|| l.find("\"POST ")).or_else(|| l.find("\"PATCH "))?;
                let rest = &l[i + 1..];
                Some(rest[..rest.find('"')?].to_string())
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------

/// podman with its own storage: a storage.conf naming graphroot, runroot and the ALS root
/// (podman 4.3.1 ignores storage.conf's options when --root/--runroot are given on the command
/// line, so they are not).
pub struct Podman {
    pub conf: PathBuf,
    pub graphroot: PathBuf,
    pub runroot: PathBuf,
    /// For a rootless podman: (user, HOME, XDG_RUNTIME_DIR).
    pub user: Option<(u32, u32, PathBuf, PathBuf)>,
}

impl Podman {
    pub fn new(dir: &Path, als_root: &Path) -> Podman {
        std::fs::create_dir_all(dir).unwrap();
        let graphroot = dir.join("graph");
        let runroot = dir.join("run");
        let conf = dir.join("storage.conf");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options]\n\
                 additionallayerstores = [\"{}:ref\"]\n",
                graphroot.display(),
                runroot.display(),
                als_root.display()
            ),
        )
        .unwrap();
        Podman { conf, graphroot, runroot, user: None }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.user {
            None => Command::new("podman"),
            Some((uid, gid, _, _)) => {
                let mut c = Command::new("/usr/bin/setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg("podman");
                c
            }
        };
        c.env("CONTAINERS_STORAGE_CONF", &self.conf);
        if let Some((_, _, home, xdg)) = &self.user {
            c.env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", home)
                .env("XDG_RUNTIME_DIR", xdg)
                .env("CONTAINERS_STORAGE_CONF", &self.conf)
                .current_dir(home);
        }
        c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]).args(args);
        c.stdin(Stdio::null());
        c
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        ok(&mut self.cmd(args))
    }

    /// `podman run --rm` with the options this machine needs.
    pub fn run_args<'a>(image: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            image,
        ];
        v.extend_from_slice(cmd);
        v
    }

    /// Remove every image and container, unmount what podman left (its own bind mount of the
    /// graph root), and stop a rootless podman's pause process.
    pub fn reset(&self) {
        let _ = run(&mut self.cmd(&["rm", "-a", "-f"]));
        let _ = run(&mut self.cmd(&["rmi", "-a", "-f"]));
        if let Some((_, _, _, xdg)) = &self.user {
            if let Ok(pid) = std::fs::read_to_string(xdg.join("libpod/tmp/pause.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(pid).unwrap(),
                        rustix::process::Signal::KILL,
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test image
// ---------------------------------------------------------------------------------------------

/// Builds the test image into the OCI layout `dir` (tag `v1`) with umoci from tars that GNU tar
/// writes: layer 1 a busybox root with a hard link, a symlink, a setuid file, a user xattr, a
/// 0600 file and files to delete; layer 2 a whiteout, an opaque directory, files owned by
/// 1000:1000 and no `./` entry (implied root); layer 3 a file replaced by a directory.
/// Returns the layer tars in order.
pub fn build_image(work: &Path, dir: &Path) -> Vec<PathBuf> {
    let w = |p: &str| work.join(p);
    std::fs::create_dir_all(work).unwrap();
    ok(Command::new("umoci").args(["init", "--layout"]).arg(dir));
    ok(Command::new("umoci").args(["new", "--image"]).arg(format!("{}:v1", dir.display())));
    let r1 = w("r1");
    for d in ["bin", "etc", "data/sub", "opq/keep-dir", "swap"] {
        std::fs::create_dir_all(r1.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r1.join("bin/busybox")).expect("busybox-static");
    for t in ["sh", "cat", "ls", "id", "stat", "sleep"] {
        std::os::unix::fs::symlink("busybox", r1.join("bin").join(t)).unwrap();
    }
    let files: &[(&str, &str, u32)] = &[
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n", 0o644),
        ("data/one", "one\n", 0o600),
        ("data/doomed", "doomed\n", 0o644),
        ("data/sub/file", "sub\n", 0o640),
        ("data/suid", "not really a program\n", 0o4755),
        ("opq/hidden", "hidden\n", 0o644),
        ("opq/keep-dir/also-hidden", "x\n", 0o644),
        ("swap/thing", "a file in layer 1\n", 0o644),
    ];
    for (p, c, m) in files {
        std::fs::write(r1.join(p), c).unwrap();
        std::fs::set_permissions(r1.join(p), std::fs::Permissions::from_mode(*m)).unwrap();
    }
    std::fs::hard_link(r1.join("data/one"), r1.join("data/one-link")).unwrap();
    std::os::unix::fs::symlink("../data/one", r1.join("etc/one-symlink")).unwrap();
    ok(Command::new("setfattr").args(["-n", "user.test", "-v", "hello"]).arg(r1.join("data/sub/file")));
    let l1 = w("l1.tar");
    ok(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "--xattrs", "--xattrs-include=user.*", "-C"])
        .arg(&r1)
        .arg("-cf")
        .arg(&l1)
        .arg("."));

    let r2 = w("r2");
    for d in ["data", "opq", "home/u"] {
        std::fs::create_dir_all(r2.join(d)).unwrap();
    }
    std::fs::write(r2.join("data/.wh.doomed"), "").unwrap();
    std::fs::write(r2.join("opq/.wh..wh..opq"), "").unwrap();
    std::fs::write(r2.join("opq/new"), "new in layer 2\n").unwrap();
    std::fs::write(r2.join("home/u/file"), "owned by u\n").unwrap();
    let l2 = w("l2.tar");
    ok(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&r2)
        .arg("-cf")
        .arg(&l2)
        .args(["./data", "./opq"]));
    ok(Command::new("tar")
        .args(["--numeric-owner", "--owner=1000", "--group=1000", "-C"])
        .arg(&r2)
        .arg("-rf")
        .arg(&l2)
        .arg("./home"));

    let r3 = w("r3");
    std::fs::create_dir_all(r3.join("swap")).unwrap();
    std::fs::write(r3.join("swap/.wh.thing"), "").unwrap();
    std::fs::create_dir_all(r3.join("swap/thing")).unwrap();
    std::fs::write(r3.join("swap/thing/now-a-dir"), "layer 3\n").unwrap();
    let l3 = w("l3.tar");
    ok(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&r3)
        .arg("-cf")
        .arg(&l3)
        .arg("."));

    for l in [&l1, &l2, &l3] {
        ok(Command::new("umoci").args(["raw", "add-layer", "--image"]).arg(format!("{}:v1", dir.display())).arg(l));
    }
    ok(Command::new("umoci")
        .args(["config", "--image"])
        .arg(format!("{}:v1", dir.display()))
        .args(["--config.cmd", "/bin/sh"]));
    vec![l1, l2, l3]
}

/// The layers of `layout:tag`: (media type, digest, size, annotations) from its manifest, and
/// the config's diff_ids.
pub fn layout_layers(layout: &Path, tag: &str) -> (Vec<serde_json::Value>, Vec<String>) {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index.json");
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(m["digest"].as_str().unwrap())).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let diff_ids =
        config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    (manifest["layers"].as_array().unwrap().clone(), diff_ids)
}

// ---------------------------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------------------------

/// What is compared of one file: type+mode, owner, size and content digest (regular files),
/// symlink target, mtime (seconds), link count (non-directories) and the xattrs that are not
/// overlay bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub content: String,
    pub link: String,
    pub mtime: i64,
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry below `root` (relative paths, "" for the root itself), never following symlinks.
pub fn walk(root: &Path) -> BTreeMap<String, Meta> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let mut content = String::new();
        if ft.is_file() {
            let mut f = std::fs::File::open(&p).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            use sha2::Digest;
            content = format!("{:x}", sha2::Sha256::digest(&b));
        }
        let link = if ft.is_symlink() {
            std::fs::read_link(&p).unwrap().to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink() {
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::llistxattr(&p, &mut buf).unwrap_or(0);
            for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let k = String::from_utf8_lossy(name).into_owned();
                if k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.") || k.starts_with("security.") {
                    continue;
                }
                let mut v = vec![0u8; 65536];
                let vn = rustix::fs::lgetxattr(&p, name, &mut v).unwrap_or(0);
                v.truncate(vn);
                xattrs.insert(k, v);
            }
        }
        let meta = Meta {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: if ft.is_dir() { 0 } else { md.len() },
            content,
            link,
            mtime: md.mtime(),
            nlink: if ft.is_dir() { 0 } else { md.nlink() },
            xattrs,
        };
        out.insert(rel.to_string_lossy().into_owned(), meta);
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    out
}

/// The differences between two walked trees, one line each (empty: equal).
pub fn diff_trees(want: &BTreeMap<String, Meta>, got: &BTreeMap<String, Meta>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            None => d.push(format!("missing {k:?}")),
            Some(g) if g != w => d.push(format!("{k:?}: want {w:?}\n      got {g:?}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        d.push(format!("unexpected {k:?}"));
    }
    d
}
