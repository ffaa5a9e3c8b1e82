//! A recording fake of the [`Kernel`] seam, for unit tests of the mount sequence without root.
//!
//! Every object the fake hands out (fs context, mount, loop device, user namespace) is one end of
//! a unix socket pair whose other end the fake keeps, so the fake sees when the engine closes
//! it (POLLHUP). A mount exists while its fd is open, while it is attached or sent, or while a
//! live overlay uses it as a layer; a loop device while its fd is open or a live mount sits on
//! it — the kernel's rules for detached mounts and AUTOCLEAR loop devices. [`Fake::leftovers`]
//! lists what still exists, which after a failed mount must be nothing.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use rustix::fs::StatVfsMountFlags;
use rustix::io::Errno;
use rustix::mount::MountAttrFlags;

use super::error::{IdmapError, MountError};
use super::fs_context::FsError;
use super::kernel::{Kernel, LegacyOverlay};
use super::loopdev::{LoopDevice, LoopError};
use super::overlay::Overlay;
use super::records::MountId;
use super::request::IdMap;

/// One object the fake handed out.
#[derive(Debug, Clone)]
pub(crate) enum Obj {
    Context {
        fstype: String,
        config: Vec<(String, String)>,
        created: bool,
    },
    Mount {
        fstype: String,
        attrs: MountAttrFlags,
        id: u64,
        idmapped: bool,
        /// Objects this mount keeps alive (its layers, its loop device).
        holds: Vec<u64>,
        attached: bool,
        sent: bool,
    },
    Loop {
        path: PathBuf,
    },
    Userns,
}

struct Entry {
    obj: Obj,
    /// Our end of the pair; the engine holds the other one.
    ours: UnixStream,
    /// Socket inode of the engine's end (how an fd the engine passes back is recognized).
    theirs_ino: u64,
}

/// How the fake kernel behaves (what it supports) and which call fails.
#[derive(Clone, Debug)]
pub(crate) struct Behaviour {
    /// File-backed EROFS (Linux 6.12+); without it, `source=/proc/self/fd/N` fails ENOTBLK.
    pub(crate) file_backed_erofs: bool,
    /// `lowerdir+`/`datadir+` (6.7+); without them, EINVAL "Unknown parameter".
    pub(crate) lowerdir_plus: bool,
    /// Detached mounts as overlay layers (6.15+); without, EINVAL at create.
    pub(crate) detached_layers: bool,
    /// Attributes `fsmount` silently does not apply (to test that the engine verifies).
    pub(crate) fsmount_ignores: MountAttrFlags,
    /// The n-th call (counting every call of the seam from 0) fails with EIO.
    pub(crate) fail_call: Option<usize>,
    /// Overlay creation fails with EINVAL when an upper dir is given (a request error).
    pub(crate) overlay_upper_einval: bool,
    /// `mount_setattr` of attributes (not of an idmap) fails with this errno.
    pub(crate) setattr_errno: Option<Errno>,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            file_backed_erofs: true,
            lowerdir_plus: true,
            detached_layers: true,
            fsmount_ignores: MountAttrFlags::empty(),
            fail_call: None,
            overlay_upper_einval: false,
            setattr_errno: None,
        }
    }
}

/// The fake kernel.
pub(crate) struct Fake {
    pub(crate) behaviour: Behaviour,
    objects: RefCell<BTreeMap<u64, Entry>>,
    next: RefCell<u64>,
    calls: RefCell<Vec<String>>,
}

fn ino_of(fd: BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(fd).map(|s| s.st_ino).unwrap_or(u64::MAX)
}

impl Fake {
    pub(crate) fn new(behaviour: Behaviour) -> Fake {
        Fake { behaviour, objects: RefCell::new(BTreeMap::new()), next: RefCell::new(1), calls: RefCell::new(vec![]) }
    }

    /// Every call made so far, in order (`op args`).
    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Records a call; fails it if it is the one to fail.
    fn call(&self, what: String) -> Result<(), Errno> {
        let mut calls = self.calls.borrow_mut();
        let n = calls.len();
        calls.push(what);
        if self.behaviour.fail_call == Some(n) {
            return Err(Errno::IO);
        }
        Ok(())
    }

    fn new_obj(&self, obj: Obj) -> (u64, OwnedFd) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let theirs: OwnedFd = theirs.into();
        let key = {
            let mut n = self.next.borrow_mut();
            *n += 1;
            *n
        };
        let theirs_ino = ino_of(theirs.as_fd());
        self.objects.borrow_mut().insert(key, Entry { obj, ours, theirs_ino });
        (key, theirs)
    }

    /// The object behind an fd the engine passes in.
    fn key_of(&self, fd: BorrowedFd<'_>) -> Option<u64> {
        let ino = ino_of(fd);
        self.objects.borrow().iter().find(|(_, e)| e.theirs_ino == ino).map(|(k, _)| *k)
    }

    /// The object behind a `/proc/self/fd/N` string (stat follows the magic link to the socket).
    fn key_of_path(&self, path: &str) -> Option<u64> {
        let ino = rustix::fs::stat(path).ok()?.st_ino;
        self.objects.borrow().iter().find(|(_, e)| e.theirs_ino == ino).map(|(k, _)| *k)
    }

    fn with<R>(&self, key: u64, f: impl FnOnce(&mut Obj) -> R) -> R {
        f(&mut self.objects.borrow_mut().get_mut(&key).expect("object").obj)
    }

    /// Whether the engine still holds the fd of object `key`.
    fn fd_open(&self, key: u64) -> bool {
        let objs = self.objects.borrow();
        let e = &objs[&key];
        // Nothing is ever written: a non-blocking peek sees EOF exactly when the peer is closed.
        let peek =
            rustix::net::recv(&e.ours, &mut [0u8; 1], rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT);
        !matches!(peek, Ok((0, _)))
    }

    /// Objects that still exist (see the module documentation), with what they are.
    ///
    /// Another test of the same process that forks or clones (a `Command`, a user namespace
    /// child) gives its child a copy of every fd, the engine's ends of these pairs included,
    /// until the child closes them or execs: an fd the engine closed can look open for that
    /// moment, longer where the child waits for a CPU. So what is live is the intersection of
    /// 50 samples 2 ms apart (the first empty one ends it early): what the engine holds is in
    /// every sample, a child's passing copy is not.
    pub(crate) fn leftovers(&self) -> Vec<Obj> {
        let mut common = self.live_keys();
        for _ in 0..50 {
            if common.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            let next = self.live_keys();
            common.retain(|k| next.contains(k));
        }
        common.iter().map(|k| self.objects.borrow()[k].obj.clone()).collect()
    }

    /// One sample of the keys of the objects that still exist.
    fn live_keys(&self) -> Vec<u64> {
        let keys: Vec<u64> = self.objects.borrow().keys().copied().collect();
        let mut live: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| {
                self.fd_open(*k)
                    || matches!(
                        self.objects.borrow()[k].obj,
                        Obj::Mount { attached: true, .. } | Obj::Mount { sent: true, .. }
                    )
            })
            .collect();
        // Whatever a live mount holds is live too.
        let mut i = 0;
        while i < live.len() {
            if let Obj::Mount { holds, .. } = &self.objects.borrow()[&live[i]].obj {
                for h in holds {
                    if !live.contains(h) {
                        live.push(*h);
                    }
                }
            }
            i += 1;
        }
        live.sort();
        live
    }

    /// The mounts that were attached at a target.
    pub(crate) fn attached(&self) -> Vec<Obj> {
        self.objects
            .borrow()
            .values()
            .map(|e| e.obj.clone())
            .filter(|o| matches!(o, Obj::Mount { attached: true, .. }))
            .collect()
    }
}

impl Kernel for Fake {
    fn fsopen(&self, fstype: &str) -> Result<OwnedFd, Errno> {
        self.call(format!("fsopen {fstype}"))?;
        Ok(self.new_obj(Obj::Context { fstype: fstype.into(), config: vec![], created: false }).1)
    }

    fn fsconfig_set_string(&self, fs: BorrowedFd<'_>, key: &str, value: &str) -> Result<(), Errno> {
        let k = self.key_of(fs).expect("fs context");
        let fstype = self.with(k, |o| match o {
            Obj::Context { fstype, .. } => fstype.clone(),
            _ => panic!("not a context"),
        });
        self.call(format!("fsconfig {fstype} {key}={value}"))?;
        if fstype == "overlay" && (key == "lowerdir+" || key == "datadir+") && !self.behaviour.lowerdir_plus {
            return Err(Errno::INVAL);
        }
        if fstype == "erofs"
            && key == "source"
            && value.starts_with("/proc/self/fd/")
            && !self.behaviour.file_backed_erofs
        {
            return Err(Errno::NOTBLK);
        }
        self.with(k, |o| {
            if let Obj::Context { config, .. } = o {
                config.push((key.into(), value.into()));
            }
        });
        Ok(())
    }

    fn fsconfig_set_flag(&self, fs: BorrowedFd<'_>, key: &str) -> Result<(), Errno> {
        let k = self.key_of(fs).expect("fs context");
        self.call(format!("fsconfig flag {key}"))?;
        self.with(k, |o| {
            if let Obj::Context { config, .. } = o {
                config.push((key.into(), String::new()));
            }
        });
        Ok(())
    }

    fn fsconfig_create(&self, fs: BorrowedFd<'_>) -> Result<(), Errno> {
        let k = self.key_of(fs).expect("fs context");
        let (fstype, config) = self.with(k, |o| match o {
            Obj::Context { fstype, config, .. } => (fstype.clone(), config.clone()),
            _ => panic!("not a context"),
        });
        self.call(format!("create {fstype}"))?;
        if fstype == "overlay" {
            if self.behaviour.overlay_upper_einval && config.iter().any(|(k, _)| k == "upperdir") {
                return Err(Errno::INVAL);
            }
            let detached_layer = config.iter().filter(|(k, _)| k == "lowerdir+" || k == "datadir+").any(|(_, v)| {
                self.key_of_path(v).is_some_and(|l| self.with(l, |o| matches!(o, Obj::Mount { attached: false, .. })))
            });
            if detached_layer && !self.behaviour.detached_layers {
                return Err(Errno::INVAL);
            }
        }
        self.with(k, |o| {
            if let Obj::Context { created, .. } = o {
                *created = true;
            }
        });
        Ok(())
    }

    fn fsmount(&self, fs: BorrowedFd<'_>, attrs: MountAttrFlags) -> Result<OwnedFd, Errno> {
        let k = self.key_of(fs).expect("fs context");
        let (fstype, config, created) = self.with(k, |o| match o {
            Obj::Context { fstype, config, created } => (fstype.clone(), config.clone(), *created),
            _ => panic!("not a context"),
        });
        self.call(format!("fsmount {fstype} {attrs:?}"))?;
        assert!(created, "fsmount before create");
        let mut holds = Vec::new();
        for (key, value) in &config {
            if matches!(key.as_str(), "lowerdir+" | "datadir+" | "source") {
                if let Some(l) = self.key_of_path(value) {
                    holds.push(l);
                }
                if let Some(l) = self
                    .objects
                    .borrow()
                    .iter()
                    .find(|(_, e)| matches!(&e.obj, Obj::Loop { path } if path.as_os_str() == value.as_str()))
                    .map(|(k, _)| *k)
                {
                    holds.push(l);
                }
            }
        }
        let id = 1000 + *self.next.borrow();
        let attrs = attrs - self.behaviour.fsmount_ignores;
        let obj = Obj::Mount { fstype, attrs, id, idmapped: false, holds, attached: false, sent: false };
        Ok(self.new_obj(obj).1)
    }

    fn fs_log(&self, _fs: BorrowedFd<'_>) -> Vec<String> {
        vec![]
    }

    fn mount_setattr(
        &self,
        mnt: BorrowedFd<'_>,
        set: MountAttrFlags,
        clear: MountAttrFlags,
        userns: Option<BorrowedFd<'_>>,
    ) -> Result<(), Errno> {
        let k = self.key_of(mnt).expect("mount");
        self.call(format!("mount_setattr set={set:?} clear={clear:?} userns={}", userns.is_some()))?;
        if let Some(e) = self.behaviour.setattr_errno.filter(|_| !set.contains(MountAttrFlags::MOUNT_ATTR_IDMAP)) {
            return Err(e);
        }
        self.with(k, |o| {
            if let Obj::Mount { attrs, idmapped, .. } = o {
                if set.contains(MountAttrFlags::MOUNT_ATTR_IDMAP) {
                    *idmapped = true;
                }
                *attrs = (*attrs | set) - clear - MountAttrFlags::MOUNT_ATTR_IDMAP;
            }
        });
        Ok(())
    }

    fn mount_flags(&self, fd: BorrowedFd<'_>) -> Result<StatVfsMountFlags, Errno> {
        let k = self.key_of(fd).expect("mount");
        self.call("fstatvfs".into())?;
        let attrs = self.with(k, |o| match o {
            Obj::Mount { attrs, .. } => *attrs,
            _ => panic!("not a mount"),
        });
        let mut f = StatVfsMountFlags::empty();
        for (a, s) in [
            (MountAttrFlags::MOUNT_ATTR_RDONLY, StatVfsMountFlags::RDONLY),
            (MountAttrFlags::MOUNT_ATTR_NOSUID, StatVfsMountFlags::NOSUID),
            (MountAttrFlags::MOUNT_ATTR_NODEV, StatVfsMountFlags::NODEV),
            (MountAttrFlags::MOUNT_ATTR_NOEXEC, StatVfsMountFlags::NOEXEC),
        ] {
            if attrs.contains(a) {
                f |= s;
            }
        }
        Ok(f)
    }

    fn mount_id(&self, fd: BorrowedFd<'_>) -> Result<MountId, Errno> {
        let k = self.key_of(fd).expect("mount");
        self.call("statx".into())?;
        let id = self.with(k, |o| match o {
            Obj::Mount { id, .. } => *id,
            _ => panic!("not a mount"),
        });
        Ok(MountId { id, unique: true, is_mount_root: true })
    }

    fn move_mount(&self, mnt: BorrowedFd<'_>, _target: BorrowedFd<'_>) -> Result<(), Errno> {
        let k = self.key_of(mnt).expect("mount");
        self.call("move_mount".into())?;
        self.with(k, |o| {
            if let Obj::Mount { attached, .. } = o {
                *attached = true;
            }
        });
        Ok(())
    }

    fn attach_loop(&self, image: BorrowedFd<'_>, label: &Path) -> Result<LoopDevice, LoopError> {
        self.call(format!("attach_loop {}", label.display())).map_err(|e| LoopError::Device {
            path: "/dev/loop-fake".into(),
            op: "LOOP_CONFIGURE",
            errno: e,
        })?;
        let n = *self.next.borrow();
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let _ = image.as_raw_fd();
        let (_, fd) = self.new_obj(Obj::Loop { path: path.clone() });
        Ok(LoopDevice::fake(fd, path))
    }

    fn clone_tree(&self, _dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
        self.call("open_tree clone".into())?;
        let id = 1000 + *self.next.borrow();
        let obj = Obj::Mount {
            fstype: "bind".into(),
            attrs: MountAttrFlags::empty(),
            id,
            idmapped: false,
            holds: vec![],
            attached: false,
            sent: false,
        };
        Ok(self.new_obj(obj).1)
    }

    fn create_userns(&self, _uid: &[IdMap], _gid: &[IdMap]) -> Result<OwnedFd, IdmapError> {
        self.call("create_userns".into()).map_err(|errno| IdmapError::Create { step: "clone", errno })?;
        Ok(self.new_obj(Obj::Userns).1)
    }

    fn legacy_overlay(&self, spec: &LegacyOverlay<'_>) -> Result<Overlay, MountError> {
        self.call("legacy_overlay".into()).map_err(|e| {
            MountError::Overlay(FsError {
                fstype: "overlay",
                step: super::fs_context::FsStep::Create,
                errno: e,
                log: vec![],
            })
        })?;
        let layers = spec.lowers.iter().copied().chain(spec.datadirs.iter().map(|d| d.fd()));
        let holds = layers.filter_map(|l| self.key_of(l)).collect();
        let id = 1000 + *self.next.borrow();
        let obj = Obj::Mount {
            fstype: "overlay".into(),
            attrs: spec.attrs - self.behaviour.fsmount_ignores,
            id,
            idmapped: false,
            holds,
            attached: false,
            sent: false,
        };
        Ok(Overlay { mnt: self.new_obj(obj).1, legacy: true, verity: false })
    }

    fn send_fd(&self, _sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        let k = self.key_of(fd).expect("mount");
        self.call("send_fd".into())?;
        self.with(k, |o| {
            if let Obj::Mount { sent, .. } = o {
                *sent = true;
            }
        });
        Ok(())
    }

    fn umount_pinned(&self, _root: BorrowedFd<'_>) -> Result<(), Errno> {
        self.call("umount".into())
    }
}
