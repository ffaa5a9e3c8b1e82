//! The mount sequence driven through the recording fake kernel (`super::testkit`), without root:
//! real request files (an image made by the writer, directories, a socket) opened by the real
//! access policies, every kernel operation answered by the fake. The assertions are about the
//! engine's decisions: what it leaves behind when a step fails, when it takes the legacy overlay
//! syntax, what attributes the final mount has in helper mode, when it takes a loop device.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use super::access::{Access, AccessError, Direct, FdSink, Phase, Usage};
use super::records::MountRecord;
use super::request::{Dest, IdMap, IdmapSpec, MountOption, MountRequest, Settings, SourceKind, Verity};
use super::testkit::{Behaviour, Fake, Obj};
use super::{mount, MountError};
use crate::privileged::caller::Caller;
use crate::privileged::gate::Gate;
use crate::privileged::init::HelperContext;
use crate::privileged::policy::Policy;

/// Files of one test: two images, an object directory, a target, a state dir, a socket.
struct Files {
    dir: tempfile::TempDir,
    _listener: std::os::unix::net::UnixListener,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let tree = crate::input::dump::parse(
            b"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 3 100644 1 0 0 0 0.0 - abc -\n",
            &crate::input::dump::DumpOptions { strict: false, limits: Default::default() },
        )
        .unwrap();
        for name in ["a.img", "b.img"] {
            let mut f = std::fs::File::create(dir.path().join(name)).unwrap();
            crate::erofs::writer::write_image(&tree, &Default::default(), &mut f).unwrap();
        }
        for d in ["objects", "mnt", "state", "upper", "work"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        Files { dir, _listener: listener }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn request(&self) -> MountRequest {
        MountRequest {
            sources: vec![self.p("a.img")],
            kind: SourceKind::Image,
            digests: vec![],
            basedirs: vec![self.p("objects")],
            verity: Verity::Off,
            idmap: None,
            upper: None,
            readonly: false,
            force_loop: false,
            allow_suid: false,
            allow_dev: false,
            noexec: false,
            dest: Dest::Target(self.p("mnt")),
        }
    }
    fn settings(&self) -> Settings {
        Settings { state_dir: self.p("state"), force_legacy_overlay: false }
    }
    fn records(&self) -> Vec<String> {
        crate::mount::records::RecordStore::open(&self.p("state"), false)
            .unwrap()
            .map(|s| s.list().iter().map(|r| r.mount_id.to_string()).collect())
            .unwrap_or_default()
    }
    fn clear_records(&self) {
        for e in std::fs::read_dir(self.p("state")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
}

/// Helper mode as far as these tests need it without root: the real gate's decisions (request
/// checks, required attributes, limits), the plain opens of [`Direct`] (the gate would switch to
/// the caller's ids, which needs root).
struct HelperLike {
    direct: Direct,
    gate: Gate,
}

impl HelperLike {
    fn new(max_loop_devices: u32) -> HelperLike {
        let mut policy = Policy::builtin().unwrap();
        policy.limits.max_loop_devices = max_loop_devices;
        let uid = rustix::process::getuid().as_raw();
        let caller = Caller { uid, gid: rustix::process::getgid().as_raw(), groups: vec![], name: None };
        HelperLike { direct: Direct::new(), gate: Gate::new(HelperContext { caller, policy }) }
    }
}

impl Access for HelperLike {
    fn caller_uid(&self) -> u32 {
        self.gate.caller_uid()
    }
    fn check_request(&self, req: &MountRequest) -> Result<(), AccessError> {
        self.gate.check_request(req)
    }
    fn check_options(&self, raw: &str, parsed: &[MountOption]) -> Result<(), AccessError> {
        self.gate.check_options(raw, parsed)
    }
    fn check_namespace_switch(&self) -> Result<(), AccessError> {
        self.gate.check_namespace_switch()
    }
    fn open_source(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        self.direct.open_source(path)
    }
    fn check_image(&self, _image: std::os::fd::BorrowedFd<'_>) -> Result<(), AccessError> {
        Ok(())
    }
    fn check_digest(&self, image: std::os::fd::BorrowedFd<'_>, want: &[u8; 32]) -> Result<(), AccessError> {
        self.gate.check_digest(image, want)
    }
    fn open_basedir(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        self.direct.open_basedir(path)
    }
    fn open_upper(&self, upper: &Path, work: &Path) -> Result<(OwnedFd, OwnedFd), AccessError> {
        self.direct.open_upper(upper, work)
    }
    fn open_target(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        self.direct.open_target(path)
    }
    fn connect_socket(&self, path: &Path) -> Result<FdSink, AccessError> {
        self.direct.connect_socket(path)
    }
    fn use_socket(&self, sock: OwnedFd) -> Result<FdSink, AccessError> {
        self.direct.use_socket(sock)
    }
    fn open_userns(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        self.direct.open_userns(path)
    }
    fn check_id_maps(&self, _uid: &[IdMap], _gid: &[IdMap]) -> Result<(), AccessError> {
        Ok(())
    }
    fn check_limits(&self, live: &[MountRecord], adding: Usage) -> Result<(), AccessError> {
        self.gate.check_limits(live, adding)
    }
    fn required_attrs(&self, writable: bool) -> MountAttrFlags {
        self.gate.required_attrs(writable)
    }
    fn enter_phase(&self, _phase: Phase) -> Result<(), AccessError> {
        Ok(())
    }
    fn open_umount_target(&self, path: &Path) -> Result<OwnedFd, AccessError> {
        self.direct.open_umount_target(path)
    }
    fn check_unmount(&self, target: &Path, rec: &MountRecord) -> Result<(), AccessError> {
        self.gate.check_unmount(target, rec)
    }
    fn builder_ids(&self) -> Option<(u32, u32)> {
        None
    }
    fn data_idmap(&self) -> Option<(Vec<IdMap>, Vec<IdMap>)> {
        self.gate.data_idmap()
    }
    fn requires_loop_devices(&self) -> bool {
        self.gate.requires_loop_devices()
    }
}

fn has_call(fake: &Fake, prefix: &str) -> bool {
    fake.calls().iter().any(|c| c.starts_with(prefix))
}

/// The request variants the failure sweep runs: each adds kernel operations to the sequence.
fn variants(f: &Files) -> Vec<(&'static str, MountRequest, Behaviour, bool)> {
    let mut out = Vec::new();
    out.push(("one image, file-backed", f.request(), Behaviour::default(), false));
    let mut r = f.request();
    r.force_loop = true;
    out.push(("one image on a loop device", r, Behaviour::default(), false));
    let mut r = f.request();
    r.sources.push(f.p("b.img"));
    out.push(("two layers", r, Behaviour::default(), false));
    out.push(("legacy syntax (forced)", f.request(), Behaviour::default(), true));
    out.push((
        "kernel without lowerdir+",
        f.request(),
        Behaviour { lowerdir_plus: false, ..Default::default() },
        false,
    ));
    let mut r = f.request();
    r.dest = Dest::Socket(f.p("sock"));
    out.push(("--fd-out", r, Behaviour::default(), false));
    let mut r = f.request();
    let m = vec![IdMap { inside: 0, outside: 100000, count: 65536 }];
    r.idmap = Some(IdmapSpec::Maps { uid: m.clone(), gid: m });
    out.push(("idmap from maps", r, Behaviour::default(), false));
    let mut r = f.request();
    r.upper = Some((f.p("upper"), f.p("work")));
    out.push(("writable upper", r, Behaviour::default(), false));
    out
}

/// Make each kernel operation of a successful mount fail in turn: the mount fails (unless the
/// operation is one the engine treats as optional), nothing is left attached, no detached mount,
/// fs context or loop device outlives the attempt, and no record remains.
#[test]
fn a_failure_at_any_step_leaves_nothing_behind() {
    let f = Files::new();
    for (name, req, behaviour, legacy) in variants(&f) {
        let mut settings = f.settings();
        settings.force_legacy_overlay = legacy;
        let ok = Fake::new(behaviour.clone());
        mount(&req, &Direct::new(), &ok, &settings).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(f.records().len(), 1, "{name}: one record");
        f.clear_records();
        let calls = ok.calls();
        drop(ok);
        for (k, call) in calls.iter().enumerate() {
            let fake = Fake::new(Behaviour { fail_call: Some(k), ..behaviour.clone() });
            let r = mount(&req, &Direct::new(), &fake, &settings);
            if r.is_ok() {
                // Only an optional option may fail without failing the mount.
                assert_eq!(call, "fsconfig flag noacl", "{name}: call {k} ({call}) failed, yet the mount succeeded");
                f.clear_records();
                continue;
            }
            assert!(fake.attached().is_empty(), "{name}: call {k} ({call}) failed, yet something is attached");
            let left = fake.leftovers();
            assert!(left.is_empty(), "{name}: call {k} ({call}) failed and left {left:?}");
            assert!(f.records().is_empty(), "{name}: call {k} ({call}) failed and left a record");
        }
    }
}

#[test]
fn after_a_successful_mount_only_the_attached_overlay_and_what_it_holds_remain() {
    let f = Files::new();
    let mut req = f.request();
    req.sources.push(f.p("b.img"));
    req.force_loop = true;
    let fake = Fake::new(Behaviour::default());
    let out = mount(&req, &Direct::new(), &fake, &f.settings()).unwrap();
    let attached = fake.attached();
    assert_eq!(attached.len(), 1, "one mount attached: the top overlay");
    // The top overlay holds two per-layer overlays, each an EROFS mount on a loop device.
    let left = fake.leftovers();
    let count = |p: &dyn Fn(&Obj) -> bool| left.iter().filter(|o| p(o)).count();
    assert_eq!(count(&|o| matches!(o, Obj::Mount { fstype, .. } if fstype == "overlay")), 3, "{left:?}");
    assert_eq!(count(&|o| matches!(o, Obj::Mount { fstype, .. } if fstype == "erofs")), 2, "{left:?}");
    assert_eq!(count(&|o| matches!(o, Obj::Loop { .. })), 2, "{left:?}");
    assert_eq!(count(&|o| matches!(o, Obj::Context { .. })), 0, "fs contexts are closed: {left:?}");
    assert_eq!(out.record.loop_devices.len(), 2);
    let Obj::Mount { id, .. } = &attached[0] else { unreachable!() };
    assert_eq!(out.record.mount_id, *id, "the record names the attached overlay");
    // The record was written before the attach: it is the first write after the last statx.
    let calls = fake.calls();
    assert_eq!(calls.last().map(String::as_str), Some("move_mount"));
}

#[test]
fn the_legacy_syntax_is_used_only_on_the_kernel_conditions_that_need_it() {
    let f = Files::new();
    let run = |b: Behaviour, req: &MountRequest| {
        let fake = Fake::new(b);
        let r = mount(req, &Direct::new(), &fake, &f.settings()).map(|o| o.legacy_overlay);
        f.clear_records();
        (r, fake)
    };
    // A kernel without lowerdir+ (before 6.7): legacy, without probing.
    let (r, fake) = run(Behaviour { lowerdir_plus: false, ..Default::default() }, &f.request());
    assert!(r.unwrap());
    assert!(has_call(&fake, "legacy_overlay") && !has_call(&fake, "fsopen tmpfs"));
    // A kernel that refuses detached layers (before 6.15): EINVAL at creation, the probe
    // confirms it, legacy. The probe's mounts are gone afterwards.
    let (r, fake) = run(Behaviour { detached_layers: false, ..Default::default() }, &f.request());
    assert!(r.unwrap());
    assert!(has_call(&fake, "fsopen tmpfs") && has_call(&fake, "legacy_overlay"));
    assert!(fake.leftovers().iter().all(|o| !matches!(o, Obj::Mount { fstype, .. } if fstype == "tmpfs")));
    // A kernel that supports everything: an EINVAL at creation is the request's own error
    // (here: the upper dir), reported as such; the probe ran and said so.
    let mut req = f.request();
    req.upper = Some((f.p("upper"), f.p("work")));
    let (r, fake) = run(Behaviour { overlay_upper_einval: true, ..Default::default() }, &req);
    match r {
        Err(MountError::Overlay(e)) => assert_eq!(e.errno, Errno::INVAL),
        other => panic!("expected the overlay's EINVAL, got {other:?}"),
    }
    assert!(has_call(&fake, "fsopen tmpfs") && !has_call(&fake, "legacy_overlay"));
    assert!(fake.leftovers().is_empty() && f.records().is_empty());
    // Any other error never takes the legacy path.
    let create = Fake::new(Behaviour::default());
    mount(&f.request(), &Direct::new(), &create, &f.settings()).unwrap();
    f.clear_records();
    let k = create.calls().iter().position(|c| c == "create overlay").unwrap();
    let (r, fake) = run(Behaviour { fail_call: Some(k), ..Default::default() }, &f.request());
    assert!(r.is_err());
    assert!(!has_call(&fake, "fsopen tmpfs") && !has_call(&fake, "legacy_overlay"));
}

#[test]
fn helper_mode_always_ends_nosuid_nodev() {
    let f = Files::new();
    let ignoring = Behaviour {
        fsmount_ignores: MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
        ..Default::default()
    };
    // A kernel whose fsmount did not apply nosuid,nodev: the engine sets them before attaching.
    let fake = Fake::new(ignoring.clone());
    mount(&f.request(), &HelperLike::new(8), &fake, &f.settings()).unwrap();
    f.clear_records();
    let calls = fake.calls();
    let setattr = calls
        .iter()
        .position(|c| c.starts_with("mount_setattr set=MountAttrFlags(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)"));
    let attach = calls.iter().position(|c| c == "move_mount");
    assert!(setattr.is_some() && setattr < attach, "{calls:?}");
    let want = MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_RDONLY;
    match &fake.attached()[..] {
        [Obj::Mount { attrs, .. }] => assert!(attrs.contains(want), "{attrs:?}"),
        other => panic!("{other:?}"),
    }
    // The same over --fd-out: the mount is sent only with the attributes.
    let mut req = f.request();
    req.dest = Dest::Socket(f.p("sock"));
    let fake = Fake::new(ignoring.clone());
    mount(&req, &HelperLike::new(8), &fake, &f.settings()).unwrap();
    f.clear_records();
    let calls = fake.calls();
    let setattr = calls
        .iter()
        .position(|c| c.starts_with("mount_setattr set=MountAttrFlags(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)"));
    assert!(setattr.is_some() && setattr < calls.iter().position(|c| c == "send_fd"), "{calls:?}");
    // Root's own mounts are root's choice: nothing enforced.
    let fake = Fake::new(ignoring.clone());
    mount(&f.request(), &Direct::new(), &fake, &f.settings()).unwrap();
    f.clear_records();
    assert!(!has_call(&fake, "mount_setattr"));
    // If the attributes cannot be set, nothing is attached and no record is left.
    let fake = Fake::new(Behaviour { setattr_errno: Some(Errno::NOSYS), ..ignoring });
    let e = mount(&f.request(), &HelperLike::new(8), &fake, &f.settings()).unwrap_err();
    assert!(matches!(e, MountError::MountAttrs { .. }), "{e}");
    assert!(fake.attached().is_empty() && fake.leftovers().is_empty() && f.records().is_empty());
    // And a helper-mode request for suid/dev is refused before the kernel is asked anything.
    let mut req = f.request();
    req.allow_suid = true;
    let fake = Fake::new(Behaviour::default());
    assert!(mount(&req, &HelperLike::new(8), &fake, &f.settings()).is_err());
    assert!(fake.calls().is_empty());
}

#[test]
fn helper_mounts_hold_loop_devices_counted_up_front() {
    let f = Files::new();
    // Even where the kernel could mount the image file, a helper mount is on a loop device (the
    // device's disk sequence number is how the mount is known to be alive, wherever it goes).
    let fake = Fake::new(Behaviour::default());
    let out = mount(&f.request(), &HelperLike::new(8), &fake, &f.settings()).unwrap();
    f.clear_records();
    assert!(has_call(&fake, "attach_loop") && !has_call(&fake, "fsconfig erofs source=/proc/self/fd/"));
    assert_eq!(out.record.loop_devices.len(), 1);
    // Two images, one loop device allowed: refused before any device is attached.
    let mut req = f.request();
    req.sources.push(f.p("b.img"));
    let fake = Fake::new(Behaviour::default());
    let e = mount(&req, &HelperLike::new(1), &fake, &f.settings()).unwrap_err();
    assert!(e.to_string().contains("per-user limit exceeded: loop devices 2 > 1"), "{e}");
    assert!(fake.calls().is_empty(), "nothing asked of the kernel: {:?}", fake.calls());
    // Plain runs without file-backed EROFS fall back to a loop device.
    let fake = Fake::new(Behaviour { file_backed_erofs: false, ..Default::default() });
    let out = mount(&f.request(), &Direct::new(), &fake, &f.settings()).unwrap();
    f.clear_records();
    assert!(has_call(&fake, "attach_loop") && out.record.loop_devices.len() == 1);
}

#[test]
fn idmaps_apply_to_every_erofs_mount_before_the_overlay_is_made() {
    let f = Files::new();
    let mut req = f.request();
    req.sources.push(f.p("b.img"));
    let m = vec![IdMap { inside: 0, outside: 100000, count: 65536 }];
    req.idmap = Some(IdmapSpec::Maps { uid: m.clone(), gid: m });
    let fake = Fake::new(Behaviour::default());
    mount(&req, &Direct::new(), &fake, &f.settings()).unwrap();
    let calls = fake.calls();
    let idmaps: Vec<usize> =
        calls.iter().enumerate().filter(|(_, c)| c.ends_with("userns=true")).map(|(i, _)| i).collect();
    let first_overlay = calls.iter().position(|c| c == "fsopen overlay").unwrap();
    assert_eq!(idmaps.len(), 2, "{calls:?}");
    assert!(idmaps.iter().all(|i| *i < first_overlay), "{calls:?}");
    let erofs_idmapped = fake
        .leftovers()
        .iter()
        .filter(|o| matches!(o, Obj::Mount { fstype, idmapped: true, .. } if fstype == "erofs"))
        .count();
    assert_eq!(erofs_idmapped, 2);
}

#[test]
fn helper_mode_reads_data_through_idmapped_clones_of_the_object_directories() {
    let f = Files::new();
    let fake = Fake::new(Behaviour::default());
    mount(&f.request(), &HelperLike::new(8), &fake, &f.settings()).unwrap();
    f.clear_records();
    let calls = fake.calls();
    let pos = |p: &str| calls.iter().position(|c| c.starts_with(p));
    let (clone, idmap, datadir) = (
        pos("open_tree clone"),
        pos("mount_setattr set=MountAttrFlags(MOUNT_ATTR_IDMAP)"),
        pos("fsconfig overlay datadir+"),
    );
    assert!(clone.is_some() && clone < idmap && idmap < datadir, "{calls:?}");
    // The data layer the overlay holds is the idmapped clone, not the directory itself.
    let left = fake.leftovers();
    assert!(
        left.iter().any(|o| matches!(o, Obj::Mount { fstype, idmapped: true, .. } if fstype == "bind")),
        "{left:?}"
    );
    // Plain runs use the directory as it is.
    let fake = Fake::new(Behaviour::default());
    mount(&f.request(), &Direct::new(), &fake, &f.settings()).unwrap();
    f.clear_records();
    assert!(!has_call(&fake, "open_tree clone"));
    // The legacy syntax gets the clone too (attached, with the other layers, in its private
    // namespace).
    let fake = Fake::new(Behaviour { lowerdir_plus: false, ..Default::default() });
    mount(&f.request(), &HelperLike::new(8), &fake, &f.settings()).unwrap();
    f.clear_records();
    let left = fake.leftovers();
    assert!(
        left.iter().any(|o| matches!(o, Obj::Mount { fstype, idmapped: true, .. } if fstype == "bind")),
        "{left:?}"
    );
}
