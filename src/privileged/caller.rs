//! The caller of the setuid helper and acting with its credentials: [`as_caller`] switches the
//! effective ids (and with them fsuid/fsgid and the effective capabilities) to the caller's for
//! one operation and back; capabilities only ever shrink ([`restrict_caps`]).

use caps::{CapSet, Capability};

use crate::mount::access::AccessError;
use crate::sys::helper as sys;

/// Who ran us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Real uid at exec time.
    pub(crate) uid: u32,
    /// Real gid at exec time.
    pub(crate) gid: u32,
    /// Supplementary groups at exec time (they stay in force for checks made as the caller).
    pub(crate) groups: Vec<u32>,
    /// Login name from /etc/passwd, if any.
    pub(crate) name: Option<String>,
}

/// Capabilities kept after early init: mounting and loop setup (CAP_SYS_ADMIN), switching the
/// effective ids to the caller and writing idmap maps (CAP_SETUID/CAP_SETGID). Everything else
/// is dropped from every set, bounding included.
pub(crate) const KEPT_CAPS: &[Capability] =
    &[Capability::CAP_SYS_ADMIN, Capability::CAP_SETUID, Capability::CAP_SETGID];

/// Runs `f` as the caller: the effective uid/gid (and with them fsuid/fsgid) are switched to the
/// caller's real ids — the supplementary groups are still the caller's from exec time — while the
/// real and saved ids stay 0, then switched back. Inside `f` every permission check is the
/// caller's: file access (the kernel also clears the effective capabilities while euid is not 0),
/// ptrace-mode checks such as opening /proc/PID/ns/* (ownership of user namespaces counts as for
/// the caller itself). The caller still cannot signal or ptrace us (our real/saved ids are 0).
pub(crate) fn as_caller<T>(c: &Caller, f: impl FnOnce() -> T) -> Result<T, AccessError> {
    let switched = sys::set_effective_ids(c.uid, c.gid).is_ok()
        && sys::getresuid() == (0, c.uid, 0)
        && sys::getresgid().1 == c.gid
        && sys::current_fsuid() == c.uid
        && sys::current_fsgid() == c.gid;
    let out = if switched { Some(f()) } else { None };
    let restored = sys::set_effective_ids(0, 0).is_ok();
    let back = restored && sys::getresuid() == (0, 0, 0) && sys::getresgid() == (0, 0, 0) && sys::current_fsuid() == 0;
    // Every credential change resets dumpability to fs.suid_dumpable.
    let dump = set_undumpable();
    if !back {
        // Cannot happen (real and saved ids are 0); if it does, stop rather than run on with odd ids.
        eprintln!("cfsmount: could not restore root ids after acting as the caller");
        std::process::exit(1);
    }
    dump.map_err(|e| AccessError::Credentials(format!("PR_SET_DUMPABLE: {e}")))?;
    out.ok_or_else(|| AccessError::Credentials(format!("could not switch to uid/gid {}/{}", c.uid, c.gid)))
}

/// PR_SET_DUMPABLE 0. Every credential change resets dumpability to fs.suid_dumpable, so this is
/// called again after each one.
pub(crate) fn set_undumpable() -> Result<(), rustix::io::Errno> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
}

/// Reduces permitted/effective/inheritable/bounding to `keep` and clears the ambient set.
/// Capabilities can only ever be dropped, so call it with shrinking sets, phase by phase.
pub(crate) fn restrict_caps(keep: &[Capability]) -> Result<(), caps::errors::CapsError> {
    let keep_set: caps::CapsHashSet = keep.iter().copied().collect();
    caps::clear(None, CapSet::Ambient).ok();
    caps::clear(None, CapSet::Inheritable)?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::all() {
            if !keep_set.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    let eff: caps::CapsHashSet = caps::read(None, CapSet::Permitted)?.intersection(&keep_set).copied().collect();
    caps::set(None, CapSet::Effective, &eff)?;
    caps::set(None, CapSet::Permitted, &eff)?;
    Ok(())
}
