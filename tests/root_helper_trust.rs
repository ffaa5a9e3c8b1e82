//! Root tier: the trust gaps a hostile review of the setuid helper found, each attacked as the
//! unprivileged users `cfstest`/`cfstest2`: writable overlays (copy-up as root), data reached
//! through redirects, temporary layer mounts of the legacy overlay syntax, the caller's terminal
//! signals, per-user and machine-wide limits (layers, renamed targets, parallel requests,
//! `--fd-out` builds), the `build_from_toc` switch, other users' records, the credentials an
//! `--fd-out` receiver sees, and a machine without `/run/cfsmount`.
//!
//! Every test also checks that nothing is left behind: mounts, loop devices, records, temporary
//! files. With `CFSMOUNT_TEST_BIN=/path/to/an/older/cfsmount` the same tests run against that
//! binary (installed setuid the same way), which shows what they catch.
//! Needs: root, util-linux (setpriv, unshare, mount), python3.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[path = "support/root.rs"]
mod root;
use root::{loop_devices, mount_line, sh, stderr, umount_all_under, Proc, TestUser as User};
#[path = "support/helper.rs"]
mod helper;
use helper::*;

/// Mounts, helper-held loop devices (memory copies) and the state directory's entries.
fn system_state() -> (Vec<String>, Vec<String>, Vec<String>) {
    let loops = loop_devices()
        .into_iter()
        .filter(|l| {
            l.contains("/memfd:cfsmount") || l.contains("/run/cfsmount/copies/") || l.contains("cfsmount-helper-test")
        })
        .collect();
    (mountpoints(), loops, state_files())
}

/// Whether the record file `name` in /run/cfsmount describes a mount that is gone: none of its
/// loop devices still carries the recorded disk sequence number. (Records of mounts that went
/// away by themselves, e.g. an `--fd-out` mount its receiver dropped, stay until the next mount
/// prunes them.)
fn record_is_dead(name: &str) -> bool {
    let Ok(text) = std::fs::read(Path::new("/run/cfsmount").join(name)) else { return true };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else { return false };
    let devs = v["loop_devices"].as_array().cloned().unwrap_or_default();
    let seqs = v["loop_diskseq"].as_array().cloned().unwrap_or_default();
    !devs.is_empty()
        && devs.iter().zip(&seqs).all(|(d, s)| {
            let n = d.as_str().unwrap_or("").trim_start_matches("/dev/");
            let seq = std::fs::read_to_string(format!("/sys/block/{n}/diskseq")).unwrap_or_default();
            let bound = Path::new(&format!("/sys/block/{n}/loop/backing_file")).exists();
            !(bound && s.as_u64().is_some_and(|s| seq.trim() == s.to_string().as_str()))
        })
}

/// Whether a mount namespace other than ours still holds a copy of a mount of this suite: a
/// process that unshared its mount namespace while a test mount was attached (e.g. `unshare`,
/// `mmdebstrap --mode=unshare` of another job on the machine) keeps that mount alive after our
/// umount detached it here. Its record then correctly stays, without a target, until the copy
/// is gone.
fn held_in_another_namespace() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        let ns = std::fs::read_link(p.path().join("ns/mnt")).ok();
        ns.is_some()
            && ns != ours
            && std::fs::read_to_string(p.path().join("mountinfo")).is_ok_and(|mi| {
                mi.lines().any(|l| l.contains(" /tmp/cfsmount-helper-test/") && l.contains(" - overlay composefs"))
            })
    })
}

/// Waits up to 3 s for nothing to be left compared with `before`: the same mounts and loop
/// devices, and in the state directory no new file except records of mounts already gone
/// (records of dead mounts may also have been pruned meanwhile) or held by another namespace.
#[track_caller]
fn assert_state_is(before: &(Vec<String>, Vec<String>, Vec<String>), ctx: &str) {
    let ok = || {
        let now = system_state();
        let new_records_ok = now
            .2
            .iter()
            .filter(|f| !before.2.contains(f))
            .all(|f| f.ends_with(".json") && (record_is_dead(f) || held_in_another_namespace()));
        now.0 == before.0 && (now.1 == before.1 || held_in_another_namespace()) && new_records_ok
    };
    assert!(root::eventually(3, ok), "{ctx}: left behind: {:?}, before: {before:?}", system_state());
}

fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// A target directory of `u` at `path` (empty).
fn target_dir(u: &User, path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).unwrap();
    path.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Writable overlays and data read through redirects
// ---------------------------------------------------------------------------------------------

/// An overlay's copy-up acts with its mounter's credentials. Made by the helper (root), a write
/// to a root-owned setuid file of the caller's image would copy it up into the caller's upper
/// directory still root-owned and setuid. So the helper refuses upper directories in both
/// command forms, and the pattern rootless runtimes use instead — their own overlay, in their
/// own user namespace, on top of the `--fd-out` mount — is writable (the superblock, not only
/// the mount flag) and turns the same attack into nothing: the copy-up cannot make a file owned
/// by root.
#[test]
fn writable_overlays_are_refused_and_the_runtime_pattern_is_safe() {
    let (_g, e, u) = start();
    let id_bin = std::fs::read("/usr/bin/id").unwrap();
    let mine = b"the caller's own file\n".as_slice();
    let body = format!(
        "{}/mine {} 100644 1 {} {} 0 0.0 {} - -\n",
        dump_line_external("suid-copy", "104777", 0, &id_bin),
        mine.len(),
        u.uid,
        u.gid,
        object_name(mine)
    );
    let fx = fixture(u, "rw", &body, &[&id_bin, mine]);
    let (up, work) = (fx.dir.join("up"), fx.dir.join("work"));
    for d in [&up, &work] {
        target_dir(u, d);
    }
    let before = system_state();
    let o =
        run_as_strs(u, &mount_args(&fx, &["--upperdir", up.to_str().unwrap(), "--workdir", work.to_str().unwrap()]));
    assert_refused(&o, "writable overlays (--upperdir/--workdir) are not offered");
    let link = e.root.join("mount.composefs");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&e.bin, &link).unwrap();
    let opts = format!("basedir={},upperdir={},workdir={}", fx.objects.display(), up.display(), work.display());
    let o =
        run_as_with(u, &link, &args(&[fx.image.to_str().unwrap(), fx.target.to_str().unwrap(), "-o", &opts]), |_| {});
    assert_refused(&o, "writable overlays (--upperdir/--workdir) are not offered");
    assert_state_is(&before, "refused writable overlays");
    // The runtime pattern: the receiver (the caller, in its own user+mount namespace) puts its
    // own writable overlay on the read-only mount.
    let sock = fx.dir.join("sock");
    let merged = target_dir(u, &fx.dir.join("merged"));
    let mut recv = spawn_receiver(
        u,
        &format!("overlay:{}:{}:{}", up.display(), work.display(), merged.display()),
        &sock,
        &fx.target,
    );
    let o = mount_fd_out(u, &fx, &sock);
    assert!(o.status.success(), "mount --fd-out: {}", stderr(&o));
    let r = recv.output();
    let (out, err) = (String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    assert!(r.status.success(), "receiver: {err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("receiver said: {out} {err}"));
    assert_eq!(v["super"], "rw", "the caller's own overlay is writable at the superblock: {v}");
    assert_eq!(v["write_new"], "ok", "{v}");
    assert_eq!(v["append_mine"], "ok", "{v}");
    let new = std::fs::metadata(up.join("new")).expect("the new file is in the upper dir");
    assert_eq!(new.uid(), u.uid, "written as the caller");
    // Nothing in the upper dir is owned by root or setuid-root, whatever the attack gave.
    for ent in walk(&up) {
        let m = std::fs::symlink_metadata(&ent).unwrap();
        assert!(m.uid() != 0 && !(m.mode() & 0o4000 != 0 && m.uid() == 0), "{} is root-owned ({v})", ent.display());
    }
    eprintln!("copy-up attack in the caller's own overlay: {}", v["attack"]);
    assert_state_is(&before, "runtime pattern");
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A root-owned 0600 file in the caller's object directory (left by sudo, or renamed in from a
/// writable directory) is not readable by the caller; through a redirect in the caller's image
/// it must not become readable either — not for the caller, not even for root reading through
/// the mount. The caller's own objects stay readable.
#[test]
fn data_is_read_with_the_callers_rights() {
    let (_g, _, u) = start();
    let mine = b"an object of the caller\n".as_slice();
    let secret = b"root's secret, not the caller's\n".as_slice();
    let body = format!(
        "{}{}",
        dump_line_external("mine", "100644", u.uid, mine),
        dump_line_external("secret", "100644", u.uid, secret)
    );
    let fx = fixture(u, "redirect", &body, &[mine, secret]);
    let obj = fx.objects.join(object_name(secret));
    std::os::unix::fs::chown(&obj, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o600)).unwrap();
    let direct = run_as_with(u, Path::new("/usr/bin/cat"), &[obj.clone().into()], |_| {});
    assert!(!direct.status.success(), "the caller cannot read the object directly");
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let cat = |p: &str| run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join(p).into()], |_| {});
    let (m, s) = (cat("mine"), cat("secret"));
    let as_root = std::fs::read(fx.target.join("secret"));
    let _ = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    umount_all_under(&fx.dir);
    assert_eq!(m.stdout, mine, "{}", stderr(&m));
    assert!(!s.status.success() && s.stdout.is_empty(), "the caller read root's file through the mount");
    assert!(
        as_root.is_err(),
        "root read the root-owned object through the caller's mount: data was not read with the caller's rights"
    );
}

// ---------------------------------------------------------------------------------------------
// Terminal signals
// ---------------------------------------------------------------------------------------------

/// Runs the helper as `u` on a pseudo-terminal that is its controlling terminal, waits until it
/// is privileged (all uids 0), sleeps `delay_ms`, types `ch` on the terminal (^C ^Z ^\), and
/// reports how the helper ended: `exit N`, `signal N`, or `stopped` (then it is continued and
/// waited for, so that it can clean up).
const PTY_DRIVER: &str = r#"
import os, pty, sys, time, json, signal
uid, gid, ch, delay = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]) / 1000
cmd = sys.argv[5:]
pid, fd = pty.fork()
if pid == 0:
    os.execv("/usr/bin/setpriv", ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--init-groups", "--"] + cmd)
def uids():
    try:
        for l in open("/proc/%d/status" % pid):
            if l.startswith("Uid:"):
                return l.split()[1:]
    except OSError:
        return None
# The child is root (the driver) until setpriv switches to the caller and execs the helper,
# which becomes root in every id (the privileged section) early in its run.
deadline = time.time() + 10
while time.time() < deadline and (uids() or [str(uid)])[0] != str(uid):
    time.sleep(0.0002)
while time.time() < deadline and uids() not in (None, ["0", "0", "0", "0"]):
    time.sleep(0.0002)
time.sleep(delay)
try:
    os.write(fd, {"C": b"\x03", "Z": b"\x1a", "Q": b"\x1c"}[ch])
except OSError:
    pass
out, status, stopped = b"", None, False
end = time.time() + 60
while status is None and time.time() < end:
    try:
        out += os.read(fd, 4096)
    except OSError:
        pass
    r, st = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
    if r == pid:
        if os.WIFSTOPPED(st):
            stopped = True
            time.sleep(0.5)
            os.kill(pid, signal.SIGCONT)
            continue
        status = "exit %d" % os.WEXITSTATUS(st) if os.WIFEXITED(st) else "signal %d" % os.WTERMSIG(st)
    time.sleep(0.001)
print(json.dumps({"status": status, "stopped": stopped, "output": out.decode(errors="replace")}))
"#;

/// ^C, ^Z and ^\ typed on the caller's terminal at different moments of privileged work (a TOC
/// built in the sandbox, and a large image checked in full): the helper is never interrupted
/// or stopped, and ends either mounted (with its record) or with nothing left behind.
#[test]
fn terminal_signals_cannot_interrupt_the_helper() {
    let (_g, e, u) = start();
    let driver = e.root.join("tty-driver.py");
    std::fs::write(&driver, PTY_DRIVER).unwrap();
    let fx = toc_fixture(u, "pty", 400);
    let mut runs = 0;
    for (what, extra) in [("toc", vec!["--toc"]), ("image", vec![])] {
        for ch in ["C", "Z", "Q"] {
            for delay in [0, 1, 3, 10, 30, 100] {
                let before = system_state();
                let mut a =
                    if what == "toc" { mount_args(&fx.toc_fx, &extra) } else { mount_args(&fx.image_fx, &extra) };
                if what == "toc" {
                    a[1] = fx.toc.display().to_string();
                }
                let mut cmd = vec![e.bin.display().to_string()];
                cmd.extend(a.iter().cloned());
                let o = Command::new("/usr/bin/python3")
                    .arg(&driver)
                    .args([u.uid.to_string(), u.gid.to_string(), ch.to_string(), delay.to_string()])
                    .args(&cmd)
                    .output()
                    .unwrap();
                let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                    .unwrap_or_else(|_| panic!("driver: {} {}", String::from_utf8_lossy(&o.stdout), stderr(&o)));
                let ctx = format!("{what}, ^{ch} after {delay} ms: {v}");
                assert_eq!(v["stopped"], false, "{ctx}: the helper was stopped by the caller's terminal");
                let status = v["status"].as_str().unwrap_or("none").to_string();
                assert!(status.starts_with("exit "), "{ctx}: the helper did not end normally");
                let target = if what == "toc" { &fx.toc_fx.target } else { &fx.image_fx.target };
                if status == "exit 0" {
                    assert!(mount_line(target).is_some(), "{ctx}: succeeded but nothing mounted");
                    let o = run_as(u, &["umount", target.to_str().unwrap()]);
                    assert!(o.status.success(), "{ctx}: umount: {}", stderr(&o));
                }
                assert_state_is(&before, &ctx);
                runs += 1;
            }
        }
    }
    assert_eq!(runs, 36);
}

/// What a caller can leave set across the setuid exec to end the helper at a moment of its
/// choosing, or to change how its children are reaped: an interval timer (SIGPROF after a few
/// milliseconds of CPU time: inside the vetting of the image, or the build from a TOC) and an
/// ignored SIGCHLD (the kernel then reaps the helper's children itself). Early init clears the
/// timers and restores SIGCHLD; the mounts then succeed as without them, and leave nothing
/// behind when unmounted.
#[test]
fn timers_and_an_ignored_sigchld_left_by_the_caller_are_reset() {
    use std::os::unix::process::CommandExt;
    let (_g, e, u) = start();
    let fx = toc_fixture(u, "timers", 400);
    // An image whose first mount takes well over the timer's 10 ms of CPU time (checked below),
    // and whose start (exec, early init) takes well under it. A first mount: its bytes are new
    // (a name of this run's), so no remembered verdict skips the vetting. (40,000 directories
    // took 17 ms of CPU in a fast spell once the vetting got cheaper: now 100,000, about 34 ms.)
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let body = dir_lines(std::iter::once(format!("n{nonce}")).chain((0..100_000).map(|i| format!("d{i}"))));
    let big = fixture(u, "timers-big", &body, &[]);
    // CPU time of the finished children of this process (the helper runs as one).
    let children_cpu = || {
        // SAFETY: rusage is plain integers; all zeroes is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage(2) writes one rusage into `ru`, a valid out pointer.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) }, 0);
        let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
        us(ru.ru_utime) + us(ru.ru_stime)
    };
    for (what, timer_us, ignore_sigchld) in
        [("image, SIGPROF timer", 10_000i64, false), ("toc, SIGCHLD ignored", 0, true)]
    {
        let before = system_state();
        let toc = what.starts_with("toc");
        let fxx = if toc { &fx.toc_fx } else { &big };
        let mut a = if toc { mount_args(fxx, &["--toc"]) } else { mount_args(fxx, &[]) };
        if toc {
            a[1] = fx.toc.display().to_string();
        }
        let cpu_before = children_cpu();
        let o = run_as_with(u, &e.bin, &args(&a_strs(&a)), move |c| {
            // SAFETY: between fork and exec this runs only setitimer(2) and signal(2), both
            // async-signal-safe, on stack values.
            unsafe {
                c.pre_exec(move || {
                    if timer_us > 0 {
                        let t = libc::itimerval {
                            it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
                            it_value: libc::timeval { tv_sec: 0, tv_usec: timer_us },
                        };
                        if libc::setitimer(libc::ITIMER_PROF, &t, std::ptr::null_mut()) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if ignore_sigchld && libc::signal(libc::SIGCHLD, libc::SIG_IGN) == libc::SIG_ERR {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        });
        let cpu_us = children_cpu() - cpu_before;
        // Unmounted before any assertion, so that a failed one leaves nothing mounted.
        let mounted = mount_line(&fxx.target).is_some();
        let um = mounted.then(|| run_as(u, &["umount", fxx.target.to_str().unwrap()]));
        assert!(o.status.success(), "{what}: {:?}: {}", o.status, stderr(&o));
        assert!(mounted, "{what}: succeeded but nothing mounted");
        assert!(um.as_ref().is_some_and(|o| o.status.success()), "{what}: umount: {:?}", um.as_ref().map(stderr));
        assert!(
            timer_us == 0 || cpu_us >= 2 * timer_us,
            "{what}: the helper took {cpu_us} µs of CPU: too little to test"
        );
        assert_state_is(&before, what);
    }
}

/// /proc mounted `hidepid=ptraceable` puts every `/proc/PID` behind a ptrace-mode check, which
/// the helper fails for its user namespace child (their shared memory is undumpable, and the
/// helper holds no `CAP_SYS_PTRACE`: `EPERM`); it writes the child's `uid_map` and `gid_map`
/// through a proc instance of its own instead (docs/helper.md, "User namespaces for id maps").
/// Run in a private mount namespace with a proc of its own mounted so; the mount made there
/// goes with it.
#[test]
fn a_proc_with_hidepid_still_serves_the_helpers_id_maps() {
    helper_mount_in_namespaces("hidepid", &["-m"], "mount -t proc -o hidepid=ptraceable proc /proc");
}

/// A /proc of another pid namespace names other processes by the helper's pid numbers: the
/// helper sees that its `self` link does not name its own pid and writes its user namespace
/// child's maps through a proc instance of its own (docs/helper.md, "User namespaces for id
/// maps"). Run in a new pid namespace (and a private mount namespace) that keeps the parent's
/// /proc; the mount made there goes with it.
#[test]
fn a_proc_of_another_pid_namespace_still_serves_the_helpers_id_maps() {
    // The check that the shell's /proc is not of its pid namespace: `$$` is 1 there.
    helper_mount_in_namespaces("otherpidns", &["-p", "-f", "-m"], "[ \"$(readlink /proc/self)\" != \"$$\" ]");
}

/// A helper mount by the test user, from a shell run by `unshare FLAGS --propagation private`
/// that first runs `prepare`: it must succeed, and nothing may be left once the namespaces are
/// gone (the mount made there goes with them). Every value goes to the shell as an argument,
/// none into the script's text.
fn helper_mount_in_namespaces(name: &str, flags: &[&str], prepare: &str) {
    let (_g, e, u) = start();
    let fx = fixture(u, name, "", &[b"one object\n".as_slice()]);
    let before = system_state();
    let script = format!(
        "{prepare} && \
        setpriv --reuid=\"$1\" --regid=\"$2\" --clear-groups -- \"$3\" mount \"$4\" \"$5\" --basedir \"$6\" && \
        mountpoint -q \"$5\""
    );
    let o = Command::new("unshare")
        .args(flags)
        .args(["--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(u.uid.to_string())
        .arg(u.gid.to_string())
        .arg(&e.bin)
        .arg(&fx.image)
        .arg(&fx.target)
        .arg(&fx.objects)
        .output()
        .unwrap();
    assert!(o.status.success(), "{name}: {:?}: {}", o.status, stderr(&o));
    assert_state_is(&before, name);
}

/// Dumpfile lines of empty directories of the caller under the root, one per name (for
/// [`fixture`], which fills in `{uid}` and `{gid}`).
fn dir_lines(names: impl Iterator<Item = String>) -> String {
    names.map(|n| format!("/{n} 4096 40755 2 {{uid}} {{gid}} 0 0.0 - - -\n")).collect()
}

struct TocFixture {
    toc: PathBuf,
    toc_fx: Fixture,
    image_fx: Fixture,
}

/// A TOC of `n` files with their objects, and a large image (a few thousand entries) of the
/// caller: work that takes the helper long enough to be interrupted in the middle.
fn toc_fixture(u: &User, name: &str, n: usize) -> TocFixture {
    let content = b"one object\n".as_slice();
    let hex: String = {
        use sha2::Digest;
        sha2::Sha256::digest(content).iter().map(|b| format!("{b:02x}")).collect()
    };
    let entries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({ "type": "reg", "name": format!("f{i}"), "mode": 420, "size": content.len(),
                "uid": u.uid, "gid": u.gid, "modtime": "2024-01-01T00:00:00Z", "digest": format!("sha256:{hex}") })
        })
        .collect();
    let toc_fx = fixture(u, &format!("{name}-toc"), "", &[content]);
    let toc = toc_fx.dir.join("layer.toc.json");
    std::fs::write(&toc, serde_json::json!({ "version": 1, "entries": entries }).to_string()).unwrap();
    std::os::unix::fs::chown(&toc, Some(u.uid), Some(u.gid)).unwrap();
    let image_fx = fixture(u, &format!("{name}-image"), &dir_lines((0..4000).map(|i| format!("d{i}"))), &[]);
    TocFixture { toc, toc_fx, image_fx }
}

/// The caller's process dies (kill -9) while the helper it started is working: the helper goes
/// on and ends either mounted with its record or with nothing left behind.
#[test]
fn kill_of_the_caller_leaves_a_consistent_state() {
    let (_g, e, u) = start();
    let fx = toc_fixture(u, "kill", 400);
    for delay in [1u64, 5, 20, 60] {
        let before = system_state();
        let mut a = mount_args(&fx.toc_fx, &["--toc"]);
        a[1] = fx.toc.display().to_string();
        // The caller is a shell that starts the helper in the background and waits for it.
        let pidfile = fx.toc_fx.dir.join("helper.pid");
        let _ = std::fs::remove_file(&pidfile);
        let script = format!("{} {} & echo $! > {}; wait", e.bin.display(), a.join(" "), pidfile.display());
        let mut caller = root::command_as(u, Path::new("/bin/sh"), &args(&["-c", &script]));
        let mut child = caller.spawn().unwrap();
        root::eventually(5, || std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n')));
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        // The orphaned helper goes on; wait for it to end.
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        assert!(root::eventually(30, || !Path::new(&format!("/proc/{pid}")).exists()), "the helper did not end");
        let ctx = format!("caller killed after {delay} ms");
        if mount_line(&fx.toc_fx.target).is_some() {
            let target = fx.toc_fx.target.display().to_string();
            let recorded = std::fs::read_dir("/run/cfsmount")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .any(|t| t.contains(&format!("\"target\": \"{target}\"")));
            assert!(recorded, "{ctx}: mounted without a record");
            let o = run_as(u, &["umount", fx.toc_fx.target.to_str().unwrap()]);
            assert!(o.status.success(), "{ctx}: {}", stderr(&o));
        }
        assert_state_is(&before, &ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// One request with N layers takes N loop devices: with `max_loop_devices: 2`, three layers are
/// refused before any device is attached.
#[test]
fn every_layer_counts_against_the_loop_limit() {
    let (_g, e, u) = start();
    umount_all_under(&e.root);
    let (guard, _) = user_limits_policy(u, serde_json::json!({ "max_loop_devices": 2 }));
    let a = b"layered".as_slice();
    let fx = one_file_fixture(u, "layers", "l", a);
    let before = system_state();
    let img = fx.image.to_str().unwrap().to_string();
    let o = run_as_strs(u, &mount_args(&fx, &["--layer", &img, "--layer", &img]));
    let mounted = mount_line(&fx.target).is_some();
    umount_all_under(&fx.dir);
    drop(guard);
    assert!(!mounted, "three layers mounted with a limit of two loop devices");
    assert_refused(&o, "per-user limit exceeded: loop devices 3 > 2");
    assert_state_is(&before, "refused layers");
}

/// Renaming the target's parent does not make a mount look gone: it still counts against the
/// caller's limit, its record survives other mounts (the caller's or another user's), and the
/// caller can unmount it at its new path.
#[test]
fn a_renamed_target_still_counts_and_can_be_unmounted() {
    let (_g, e, u) = start();
    let o2 = &e.other;
    umount_all_under(&e.root);
    let (guard, mut v) = user_limits_policy(u, serde_json::json!({ "max_mounts": 1 }));
    v["user_limits"][o2.name.clone()] = serde_json::json!({ "max_mounts": 1 });
    guard.write(&v.to_string(), 0o644, 0);
    let a = b"renamed".as_slice();
    let fx = one_file_fixture(u, "rename", "r", a);
    let parent = target_dir(u, &fx.dir.join("a"));
    let target = target_dir(u, &parent.join("mnt"));
    let mut margs = mount_args(&fx, &[]);
    margs[2] = target.display().to_string();
    let o = run_as_strs(u, &margs);
    assert!(o.status.success(), "{}", stderr(&o));
    let renamed = fx.dir.join("b");
    let o = run_as_with(u, Path::new("/bin/mv"), &[parent.clone().into(), renamed.clone().into()], |_| {});
    assert!(o.status.success(), "mv: {}", stderr(&o));
    // Another user's mount prunes records: ours must survive.
    let theirs = one_file_fixture(o2, "rename-other", "t", a);
    let o = run_as_strs(o2, &mount_args(&theirs, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = run_as(o2, &["umount", theirs.target.to_str().unwrap()]);
    // Ours still counts.
    let second = one_file_fixture(u, "rename-2", "s", a);
    let o = run_as_strs(u, &mount_args(&second, &[]));
    let second_mounted = mount_line(&second.target).is_some();
    // And can be unmounted where it is now.
    let new_target = renamed.join("mnt");
    let um = run_as(u, &["umount", new_target.to_str().unwrap()]);
    umount_all_under(&fx.dir);
    umount_all_under(&second.dir);
    umount_all_under(&theirs.dir);
    drop(guard);
    assert!(!second_mounted, "a second mount passed max_mounts 1: the renamed mount stopped counting");
    assert_refused(&o, "per-user limit exceeded: mounts");
    assert!(um.status.success(), "umount at the new path: {}", stderr(&um));
}

/// Simultaneous requests are counted one after the other: with `max_mounts: 1`, exactly one of
/// four parallel mounts succeeds, every time.
#[test]
fn parallel_mounts_respect_max_mounts() {
    let (_g, e, u) = start();
    umount_all_under(&e.root);
    let (guard, _) = user_limits_policy(u, serde_json::json!({ "max_mounts": 1 }));
    let a = b"parallel".as_slice();
    let fxs: Vec<Fixture> = (0..4).map(|i| one_file_fixture(u, &format!("par{i}"), "p", a)).collect();
    let before = system_state();
    for round in 0..5 {
        let children: Vec<Proc> = fxs.iter().map(|fx| spawn_helper(u, &mount_args(fx, &[]))).collect();
        let outs: Vec<Output> = children.into_iter().map(|mut c| c.output()).collect();
        let ok = outs.iter().filter(|o| o.status.success()).count();
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert!(stderr(o).contains("per-user limit exceeded: mounts"), "round {round}: {}", stderr(o));
        }
        for fx in &fxs {
            let _ = run_as(u, &["umount", fx.target.to_str().unwrap()]);
            umount_all_under(&fx.dir);
        }
        assert_eq!(ok, 1, "round {round}: {ok} of 4 parallel mounts succeeded with max_mounts 1");
        assert_state_is(&before, &format!("round {round}"));
    }
    drop(guard);
}

fn spawn_helper(u: &User, a: &[String]) -> Proc {
    let mut c = root::command_as(u, &env().bin, &a.iter().map(OsString::from).collect::<Vec<_>>());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    Proc(c.spawn().unwrap())
}

/// An `--fd-out` mount of an image built on the fly counts while the receiver holds it,
/// wherever the state directory lives.
#[test]
fn fd_out_builds_count_while_held() {
    let (_g, e, u) = start();
    umount_all_under(&e.root);
    let (guard, _) = user_limits_policy(u, serde_json::json!({ "max_mounts": 1 }));
    let fx = toc_fixture(u, "fdout-toc", 3);
    let sock = fx.toc_fx.dir.join("sock");
    let mut recv = spawn_receiver(u, "hold", &sock, &fx.toc_fx.target);
    let o = run_as(
        u,
        &[
            "mount",
            fx.toc.to_str().unwrap(),
            "--toc",
            "--basedir",
            fx.toc_fx.objects.to_str().unwrap(),
            "--fd-out",
            sock.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(recv.0.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "attached");
    let o = run_as_strs(u, &mount_args(&fx.image_fx, &[]));
    let mounted = mount_line(&fx.image_fx.target).is_some();
    let _ = recv.output();
    umount_all_under(&fx.image_fx.dir);
    drop(guard);
    assert!(!mounted, "a second mount passed max_mounts 1 while the --fd-out build was held");
    assert_refused(&o, "per-user limit exceeded: mounts");
}

/// A machine-wide cap in the policy counts every unprivileged caller's mounts together; the
/// default per-user loop limit stays below the loop devices of a small (`max_loop=8`) machine.
#[test]
fn machine_wide_limits() {
    let (_g, e, u) = start();
    let o2 = &e.other;
    umount_all_under(&e.root);
    let per_user = default_policy()["limits"]["max_loop_devices"].as_u64().unwrap();
    assert!(per_user < 8, "default per-user loop limit {per_user} is all of a max_loop=8 machine");
    let guard = PolicyGuard::new();
    let mut v = default_policy();
    v["machine_limits"] = serde_json::json!({ "max_mounts": 1, "max_loop_devices": 16 });
    guard.write(&v.to_string(), 0o644, 0);
    let a = b"machine".as_slice();
    let mine = one_file_fixture(u, "machine-1", "m", a);
    let theirs = one_file_fixture(o2, "machine-2", "m", a);
    let o = run_as_strs(u, &mount_args(&mine, &[]));
    let first = o.status.success();
    let o2out = run_as_strs(o2, &mount_args(&theirs, &[]));
    let second = mount_line(&theirs.target).is_some();
    let _ = run_as(u, &["umount", mine.target.to_str().unwrap()]);
    umount_all_under(&mine.dir);
    umount_all_under(&theirs.dir);
    drop(guard);
    assert!(first, "first mount: {}", stderr(&o));
    assert!(!second, "a second user's mount passed the machine-wide cap of 1");
    assert_refused(&o2out, "machine-wide limit exceeded: mounts");
}

// ---------------------------------------------------------------------------------------------
// Policy switch, --fd-out credentials, fresh machine
// ---------------------------------------------------------------------------------------------

/// `features.build_from_toc: false` refuses on-the-fly builds (and only them).
#[test]
fn build_from_toc_switch_is_enforced() {
    let (_g, _, u) = start();
    let guard = PolicyGuard::new();
    let mut v = default_policy();
    v["features"]["build_from_toc"] = false.into();
    guard.write(&v.to_string(), 0o644, 0);
    let fx = toc_fixture(u, "notoc", 3);
    let before = system_state();
    let mut a = mount_args(&fx.toc_fx, &["--toc"]);
    a[1] = fx.toc.display().to_string();
    let o = run_as_strs(u, &a);
    let mounted = mount_line(&fx.toc_fx.target).is_some();
    umount_all_under(&fx.toc_fx.dir);
    let plain = run_as_strs(u, &mount_args(&fx.image_fx, &[]));
    let _ = run_as(u, &["umount", fx.image_fx.target.to_str().unwrap()]);
    umount_all_under(&fx.image_fx.dir);
    drop(guard);
    assert!(!mounted, "--toc mounted with build_from_toc false");
    assert_refused(&o, "on-the-fly builds (--toc, --estargz, --dump) are disabled");
    assert!(plain.status.success(), "a prebuilt image still mounts: {}", stderr(&plain));
    assert_state_is(&before, "build_from_toc");
}

/// Receives the mount over a stream or a datagram socket and reports the sender's credentials
/// as the receiver sees them: `SO_PEERCRED` (stream) and `SCM_CREDENTIALS` (both).
const CRED_RECEIVER: &str = r#"
import os, socket, struct, sys, json, array
kind, path = sys.argv[1], sys.argv[2]
ty = socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_UNIX, ty)
if os.path.exists(path + ".tmp"):
    os.unlink(path + ".tmp")
s.bind(path + ".tmp")
s.settimeout(30)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
out = {}
if kind == "stream":
    s.listen(1)
# Ready (bound, listening, passing credentials) before the socket appears under its name.
os.rename(path + ".tmp", path)
if kind == "stream":
    c, _ = s.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    pid, uid, gid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    out["peercred"] = [uid, gid]
else:
    c = s
msg, anc, flags, addr = c.recvmsg(16, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4 * 4))
fds = array.array("i")
for level, typ, data in anc:
    if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
        pid, uid, gid = struct.unpack("3i", data[:12])
        out["scm_credentials"] = [uid, gid]
    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
        fds.frombytes(data[: len(data) - len(data) % 4])
out["fds"] = len(fds)
print(json.dumps(out))
"#;

/// The receiver of an `--fd-out` mount that asks who sent it (`SO_PEERCRED` on a stream,
/// `SCM_CREDENTIALS` on a stream or a datagram socket) sees the caller, not root.
#[test]
fn fd_out_receivers_see_the_callers_credentials() {
    let (_g, e, u) = start();
    let a = b"credentials".as_slice();
    let fx = one_file_fixture(u, "creds", "c", a);
    let script = e.root.join("creds.py");
    std::fs::write(&script, CRED_RECEIVER).unwrap();
    for kind in ["stream", "dgram"] {
        let sock = fx.dir.join(format!("sock-{kind}"));
        let _ = std::fs::remove_file(&sock);
        let mut recv = root::spawn_as(
            u,
            Path::new("/usr/bin/python3"),
            &args(&[script.to_str().unwrap(), kind, sock.to_str().unwrap()]),
        );
        root::eventually(3, || sock.exists());
        let o = mount_fd_out(u, &fx, &sock);
        let r = recv.output();
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        assert!(o.status.success(), "{kind}: mount --fd-out: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{kind}: {out} {}", stderr(&r)));
        assert_eq!(v["fds"], 1, "{kind}: {v}");
        let caller = serde_json::json!([u.uid, u.gid]);
        assert_eq!(v["scm_credentials"], caller, "{kind}: SCM_CREDENTIALS do not name the caller: {v}");
        if kind == "stream" {
            assert_eq!(v["peercred"], caller, "SO_PEERCRED does not name the caller: {v}");
        }
    }
}

/// On a machine where no mount was ever made (no /run/cfsmount yet), unmounting something
/// cfsmount did not mount is the usual refusal, not an error about the state directory.
#[test]
fn umount_on_a_fresh_machine_is_the_refusal() {
    let (_g, e, u) = start();
    umount_all_under(&e.root);
    let aside = PathBuf::from("/run/cfsmount.aside-for-test");
    let _ = std::fs::remove_dir_all(&aside);
    let had = Path::new("/run/cfsmount").exists();
    if had {
        std::fs::rename("/run/cfsmount", &aside).unwrap();
    }
    let dir = user_dir(u, "fresh");
    let m = target_dir(u, &dir.join("tmpfs"));
    assert!(sh("mount", &["-t", "tmpfs", "-o", &format!("uid={}", u.uid), "none", m.to_str().unwrap()])
        .status
        .success());
    let plain = run_as(u, &["umount", dir.to_str().unwrap()]);
    let foreign = run_as(u, &["umount", m.to_str().unwrap()]);
    let still = mount_line(&m).is_some();
    let _ = sh("umount", &[m.to_str().unwrap()]);
    let created = Path::new("/run/cfsmount").exists();
    if had {
        let _ = std::fs::remove_dir_all("/run/cfsmount");
        std::fs::rename(&aside, "/run/cfsmount").unwrap();
    }
    assert_refused(&plain, "not a mount made by cfsmount");
    assert_refused(&foreign, "not a mount made by cfsmount");
    assert!(still, "the foreign tmpfs was unmounted");
    assert!(!created, "umount created the state directory");
}

// ---------------------------------------------------------------------------------------------
// Remembered verdicts (issue 17): an accepted image is not parsed again for the same caller
// ---------------------------------------------------------------------------------------------

/// `/run/cfsmount/verdicts/v2-<uid>-<BLAKE3 of the image bytes>`, computed here from the file.
fn verdict_path(uid: u32, image: &[u8]) -> PathBuf {
    PathBuf::from(format!("/run/cfsmount/verdicts/v2-{uid}-{}", blake3::hash(image).to_hex()))
}

/// Where a helper of verdict version 1 kept its verdicts: SHA-256 of the sealed copy.
fn v1_verdict_path(uid: u32, image: &[u8]) -> PathBuf {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(image).iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from(format!("/run/cfsmount/verdicts/v1-{uid}-{hex}"))
}

fn mount_and_umount(u: &User, fx: &Fixture, ctx: &str) {
    let o = run_as_strs(u, &mount_args(fx, &[]));
    assert!(o.status.success(), "{ctx}: mount: {}", stderr(&o));
    let o = run_as(u, &["umount", fx.target.to_str().unwrap()]);
    assert!(o.status.success(), "{ctx}: umount: {}", stderr(&o));
}

/// The helper remembers that it accepted an image for a caller, keyed by the caller's uid and
/// the BLAKE3 hash of the image's bytes, in a root-only file; on the next mount of the same bytes by
/// the same caller that verdict stands in for the full parse. The verdict is really consulted
/// (one root rewrote to claim more entries than the limit makes the mount refused), its entry
/// count meets the caller's limit on every use, a file root did not write is ignored, another
/// user's verdict does not apply to the same bytes, changed bytes are vetted again (a redirect
/// patched to `..` is refused while the clean image's verdict exists, and so it is while a
/// verdict of the old version 1 claims the patched bytes), and a refused image leaves no
/// verdict and is refused again.
#[test]
fn remembered_verdicts_cover_the_bytes_and_the_caller() {
    let (_g, e, _) = start();
    let (u, other) = (&e.user, &e.other);
    let before = system_state();
    let fx = one_file_fixture(u, "verdict", "v", b"verdict");
    let img = std::fs::read(&fx.image).unwrap();
    let vp = verdict_path(u.uid, &img);
    let _ = std::fs::remove_file(&vp);

    mount_and_umount(u, &fx, "first mount");
    let text = std::fs::read_to_string(&vp).expect("the first mount records a verdict");
    assert!(text.starts_with(&format!("cfsmount verdict v2 accepted size={} entries=", img.len())), "{text}");
    let md = std::fs::metadata(&vp).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o077), (0, 0), "verdict file not root-only");
    mount_and_umount(u, &fx, "second mount (remembered verdict)");

    // Consulted, and its entry count meets the caller's limit again.
    let claim = format!("cfsmount verdict v2 accepted size={} entries=4000000000\n", img.len());
    std::fs::write(&vp, &claim).unwrap();
    let mps = mountpoints();
    let o = run_as_strs(u, &mount_args(&fx, &[]));
    assert_refused_nothing_mounted(&o, "image entries 4000000000", &mps);
    // Another user's verdict does not apply: the same bytes, mounted by `other`, are vetted for
    // it (and get its own verdict) while the one above would refuse them.
    let fx2 = fixture(other, "verdict-other", "", &[]);
    std::fs::write(&fx2.image, &img).unwrap();
    std::os::unix::fs::chown(&fx2.image, Some(other.uid), Some(other.gid)).unwrap();
    std::fs::create_dir_all(fx2.objects.join(object_name(b"verdict")).parent().unwrap()).unwrap();
    std::fs::write(fx2.objects.join(object_name(b"verdict")), b"verdict").unwrap();
    let _ = sh("chown", &["-R", &format!("{}:{}", other.uid, other.gid), fx2.dir.to_str().unwrap()]);
    mount_and_umount(other, &fx2, "the same bytes by another user");
    assert!(verdict_path(other.uid, &img).exists(), "the other user's mount was not vetted for it");
    // A verdict file root did not write is ignored (and replaced by a fresh one).
    std::os::unix::fs::chown(&vp, Some(u.uid), Some(u.gid)).unwrap();
    mount_and_umount(u, &fx, "verdict owned by the caller");
    let md = std::fs::metadata(&vp).unwrap();
    assert_eq!(md.uid(), 0, "the caller's file was not replaced");
    assert!(!std::fs::read_to_string(&vp).unwrap().contains("4000000000"));

    // Changed bytes: a clean image is accepted (verdict), then its redirect is patched in place
    // to `/../../etc/shadow` (same length): vetted again and refused.
    let (clean, hostile) = (&b"/ab/cdefghijklmno"[..], &b"/../../etc/shadow"[..]);
    let body = format!("/dotdot 6 100644 1 {{uid}} {{gid}} 0 0.0 {} - -\n", String::from_utf8_lossy(&clean[1..]));
    let fx3 = fixture(u, "verdict-patched", &body, &[]);
    let mut bytes = std::fs::read(&fx3.image).unwrap();
    mount_and_umount(u, &fx3, "the clean image");
    assert!(verdict_path(u.uid, &bytes).exists());
    let at = bytes.windows(clean.len()).position(|w| w == clean).expect("the redirect is in the image");
    bytes[at..at + hostile.len()].copy_from_slice(hostile);
    std::fs::write(&fx3.image, &bytes).unwrap();
    // An accepting verdict of the old key (version 1: SHA-256) for exactly these bytes is not
    // trusted, and is removed when the next verdict is written.
    let old = v1_verdict_path(u.uid, &bytes);
    std::fs::write(&old, format!("cfsmount verdict v1 accepted size={} entries=2\n", bytes.len())).unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for round in ["first", "second"] {
        let o = run_as_strs(u, &mount_args(&fx3, &[]));
        assert_refused_nothing_mounted(&o, "'..'", &mps);
        assert!(!verdict_path(u.uid, &bytes).exists(), "{round} refusal left a verdict");
    }
    std::fs::remove_file(&vp).unwrap();
    mount_and_umount(u, &fx, "a mount that writes a verdict");
    assert!(vp.exists());
    assert!(!old.exists(), "the version 1 verdict was not removed");
    // A refused image (device node) is refused again, with no verdict.
    let body = "/null 0 20666 1 {uid} {gid} 259 0.0 - - -\n";
    let fx4 = fixture(u, "verdict-dev", body, &[]);
    let dev = std::fs::read(&fx4.image).unwrap();
    for round in ["first", "second"] {
        let o = run_as_strs(u, &mount_args(&fx4, &[]));
        assert_refused_nothing_mounted(&o, "device node", &mps);
        assert!(!verdict_path(u.uid, &dev).exists(), "{round} refusal left a verdict");
    }
    assert_state_is(&before, "remembered verdicts");
}

/// `--digest` (issue 17): the fs-verity digest the helper computes of an accepted image's bytes
/// is kept in that image's verdict, so the next `--digest` mount of the same bytes compares with
/// it instead of computing it again. It is the digest of the bytes, whatever the caller claimed
/// (a wrong `--digest` is refused and still leaves the right one); it is really consulted (a
/// digest root wrote into the verdict decides, one way and the other); a mount without
/// `--digest` keeps it; and without the verdict it is computed again.
#[test]
fn a_computed_digest_is_remembered_with_the_verdict() {
    let (_g, e, _) = start();
    let u = &e.user;
    let before = system_state();
    let fx = one_file_fixture(u, "verdict-digest", "g", b"verdict digest");
    let img = std::fs::read(&fx.image).unwrap();
    let vp = verdict_path(u.uid, &img);
    let _ = std::fs::remove_file(&vp);
    let good = cfsmount::fsverity::to_hex(&cfsmount::fsverity::digest_bytes(&img));
    let bad = format!("{}{}", if good.starts_with('0') { "1" } else { "0" }, &good[1..]);
    let planted = "5a".repeat(32);
    let mps = mountpoints();
    // --digest implies verity=require for the objects. The test kernel's overlay takes that
    // option and checks objects when they are opened (none is here), so the mount succeeds; a
    // refusal after the digest check must name verity, and nothing else passes.
    let digest_passes = |digest: &str, ctx: &str| {
        let o = run_as_strs(u, &mount_args(&fx, &["--digest", digest]));
        if o.status.success() {
            umount_all_under(&fx.dir);
        } else {
            let err = stderr(&o);
            assert!(err.contains("verity") && !err.contains("does not match"), "{ctx}: {err}");
            assert_eq!(mps, mountpoints(), "{ctx}");
        }
    };
    let digest_refused = |digest: &str| {
        let o = run_as_strs(u, &mount_args(&fx, &["--digest", digest]));
        assert_refused_nothing_mounted(
            &o,
            &format!("fs-verity digest {good} does not match the expected {digest}"),
            &mps,
        );
    };
    let recorded = || {
        let text = std::fs::read_to_string(&vp).expect("a verdict");
        text.split_once(" fsverity=").map(|(_, d)| d.trim_end().to_string())
    };

    digest_refused(&bad);
    assert_eq!(recorded().as_deref(), Some(good.as_str()), "the bytes' digest is kept, not the claimed one");
    digest_passes(&good, "the right digest, remembered");
    assert_eq!(recorded().as_deref(), Some(good.as_str()));
    // Consulted: a digest root writes into the verdict decides.
    let text = std::fs::read_to_string(&vp).unwrap();
    std::fs::write(&vp, text.replace(&good, &planted)).unwrap();
    let o = run_as_strs(u, &mount_args(&fx, &["--digest", &good]));
    assert_refused_nothing_mounted(&o, &format!("fs-verity digest {planted} does not match the expected {good}"), &mps);
    digest_passes(&planted, "the digest the verdict holds");
    // A mount without --digest leaves the verdict as it is.
    mount_and_umount(u, &fx, "no --digest");
    assert_eq!(recorded().as_deref(), Some(planted.as_str()));
    // Without the verdict: vetted and measured again.
    std::fs::remove_file(&vp).unwrap();
    digest_passes(&good, "no verdict");
    assert_eq!(recorded().as_deref(), Some(good.as_str()));
    assert_state_is(&before, "remembered digests");
}

/// The kept copies (`/run/cfsmount/copies/k2-*`) that hold exactly `image`.
fn kept_copies_of(image: &[u8]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir("/run/cfsmount/copies").map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| {
        p.file_name().unwrap().to_string_lossy().starts_with("k2-") && std::fs::read(p).is_ok_and(|b| b == image)
    });
    v.sort();
    v
}

/// The backing files of the loop devices that are not in `before`.
fn new_backing_files(before: &[String]) -> Vec<String> {
    loop_devices()
        .into_iter()
        .filter(|l| !before.contains(l))
        .map(|l| l.split_once(": ").map(|(_, b)| b.to_string()).unwrap_or(l))
        .collect()
}

/// Kept copies (issue 17): the first mount of an image leaves the helper's vetted copy in
/// /run/cfsmount/copies, root-owned and read-only, under a name that shows neither the caller,
/// nor the size, nor the image's hash (the loop device's backing file is readable by
/// everyone); the next mount of the same bytes by the same caller is backed by that very file
/// (no new copy). Another user with the same bytes gets a copy of its own; changed bytes (same
/// size) get a new copy; a kept copy whose verdict is gone is vetted again before it is
/// mounted; a file at the name that others could write is not used, and is replaced; a TOC
/// mount keeps nothing (root_helper.rs); with `machine_limits.kept_copy_bytes` 0 nothing is
/// kept, the kept copies are removed, and the image goes through a sealed memory copy.
#[test]
fn kept_copies_are_mounted_again_for_the_same_bytes_and_caller() {
    let (_g, e, _) = start();
    let (u, other) = (&e.user, &e.other);
    let _tmpfs = CopiesOnTmpfs::ensure();
    let before = system_state();
    let fx = one_file_fixture(u, "kept", "k", b"kept copy");
    let img = std::fs::read(&fx.image).unwrap();
    let vp = verdict_path(u.uid, &img);
    for p in kept_copies_of(&img) {
        std::fs::remove_file(p).unwrap();
    }
    let _ = std::fs::remove_file(&vp);
    let read_back = |fx: &Fixture, want: &[u8], ctx: &str| {
        let c = run_as_with(u, Path::new("/usr/bin/cat"), &[fx.target.join("k").into()], |_| {});
        assert_eq!(c.stdout, want, "{ctx}: the file does not read back: {}", stderr(&c));
    };
    let mount_backed_by = |who: &User, fx: &Fixture, ctx: &str| -> Vec<String> {
        let loops = loop_devices();
        let o = run_as_strs(who, &mount_args(fx, &[]));
        assert!(o.status.success(), "{ctx}: mount: {}", stderr(&o));
        new_backing_files(&loops)
    };
    let umount = |who: &User, fx: &Fixture, ctx: &str| {
        let o = run_as(who, &["umount", fx.target.to_str().unwrap()]);
        assert!(o.status.success(), "{ctx}: umount: {}", stderr(&o));
    };

    // First mount: a new copy, vetted, then kept under its name.
    let backing = mount_backed_by(u, &fx, "first mount");
    assert!(
        backing.len() == 1 && backing[0].starts_with("/run/cfsmount/copies/"),
        "first mount not backed by a new kept copy: {backing:?}"
    );
    read_back(&fx, b"kept copy", "first mount");
    umount(u, &fx, "first mount");
    let kept = kept_copies_of(&img);
    assert_eq!(kept.len(), 1, "the first mount keeps one copy: {kept:?}");
    let kp = kept[0].clone();
    let md = std::fs::symlink_metadata(&kp).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777, md.nlink()), (0, 0o400, 1), "kept copy not root's and read-only");
    assert!(vp.exists(), "no verdict");
    let name = kp.file_name().unwrap().to_string_lossy().into_owned();
    let hex = blake3::hash(&img).to_hex();
    for leak in [format!("-{}-", u.uid), format!("-{}-", img.len()), hex[..16].to_string()] {
        assert!(!name.contains(&leak), "the kept copy's name {name} shows {leak}");
    }
    let mtime = md.modified().unwrap();

    // Repeated: backed by the kept copy itself.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let backing = mount_backed_by(u, &fx, "repeated mount");
    assert_eq!(backing, vec![kp.display().to_string()], "repeated mount not backed by the kept copy");
    read_back(&fx, b"kept copy", "repeated mount");
    umount(u, &fx, "repeated mount");
    assert!(std::fs::metadata(&kp).unwrap().modified().unwrap() > mtime, "its use was not recorded");

    // Another user, the same bytes: its own copy, never this one.
    let fx2 = fixture(other, "kept-other", "", &[]);
    std::fs::write(&fx2.image, &img).unwrap();
    std::fs::create_dir_all(fx2.objects.join(object_name(b"kept copy")).parent().unwrap()).unwrap();
    std::fs::write(fx2.objects.join(object_name(b"kept copy")), b"kept copy").unwrap();
    let _ = sh("chown", &["-R", &format!("{}:{}", other.uid, other.gid), fx2.dir.to_str().unwrap()]);
    let backing = mount_backed_by(other, &fx2, "the other user");
    assert!(!backing.contains(&kp.display().to_string()), "another user's kept copy was mounted: {backing:?}");
    umount(other, &fx2, "the other user");
    assert_eq!(kept_copies_of(&img).len(), 2, "the other user's copy was not kept");

    // Changed bytes of the same size: a new copy.
    let fx3 = one_file_fixture(u, "kept-changed", "k", b"kept cop!");
    let img3 = std::fs::read(&fx3.image).unwrap();
    assert_eq!(img3.len(), img.len());
    assert_ne!(img3, img);
    std::fs::copy(&fx3.image, &fx.image).unwrap();
    std::fs::create_dir_all(fx.objects.join(object_name(b"kept cop!")).parent().unwrap()).unwrap();
    std::fs::write(fx.objects.join(object_name(b"kept cop!")), b"kept cop!").unwrap();
    let _ = sh("chown", &["-R", &format!("{}:{}", u.uid, u.gid), fx.dir.to_str().unwrap()]);
    let backing = mount_backed_by(u, &fx, "changed bytes");
    assert!(!backing.contains(&kp.display().to_string()), "changed bytes mounted from the old copy");
    read_back(&fx, b"kept cop!", "changed bytes");
    umount(u, &fx, "changed bytes");
    assert_eq!(kept_copies_of(&img3).len(), 1, "the changed bytes' copy was not kept");
    std::fs::write(&fx.image, &img).unwrap();

    // A kept copy without its verdict: vetted again (a verdict is written again), then mounted.
    std::fs::remove_file(&vp).unwrap();
    assert_eq!(mount_backed_by(u, &fx, "no verdict"), vec![kp.display().to_string()]);
    umount(u, &fx, "no verdict");
    assert!(vp.exists(), "the kept copy was not vetted again");

    // A file at the name that others could write is not used, and is replaced.
    std::fs::set_permissions(&kp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let backing = mount_backed_by(u, &fx, "untrusted kept copy");
    assert!(!backing.contains(&kp.display().to_string()), "a kept copy others could write was mounted");
    umount(u, &fx, "untrusted kept copy");
    assert_eq!(std::fs::symlink_metadata(&kp).unwrap().mode() & 0o7777, 0o400, "not replaced");

    // Off in the policy: a sealed memory copy, nothing kept, and the kept copies removed.
    {
        let guard = PolicyGuard::new();
        let mut v = default_policy();
        v["machine_limits"] = serde_json::json!({ "max_mounts": 256, "max_loop_devices": 16, "kept_copy_bytes": 0 });
        guard.write(&v.to_string(), 0o644, 0);
        let fx4 = one_file_fixture(u, "kept-off", "k", b"not kept");
        let img4 = std::fs::read(&fx4.image).unwrap();
        let backing = mount_backed_by(u, &fx4, "kept copies off");
        assert!(backing.iter().all(|b| b.starts_with("/memfd:cfsmount-source")), "{backing:?}");
        umount(u, &fx4, "kept copies off");
        assert!(kept_copies_of(&img4).is_empty(), "kept with kept_copy_bytes 0");
        assert!(kept_copies_of(&img).is_empty(), "kept copies left with kept_copy_bytes 0");
        let backing = mount_backed_by(u, &fx, "kept copies off, repeated");
        assert!(backing.iter().all(|b| b.starts_with("/memfd:cfsmount-source")), "{backing:?}");
        umount(u, &fx, "kept copies off, repeated");
    }
    assert_state_is(&before, "kept copies");
}
