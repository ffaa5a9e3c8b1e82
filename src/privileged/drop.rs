//! The drop-in personalities (`mkcomposefs`, `composefs-info`, `composefs-dump`; docs/dropin.md)
//! serve nobody but their caller: started from a setuid or file-capability install, they become
//! the caller for good before anything else happens, and run as a plain copy of the tool would.

use caps::CapSet;
use rustix::io::Errno;

/// Why the privileges could not be dropped; the run ends (fail closed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DropError {
    #[error("dropping privileges: setresgid: {0}")]
    SetGid(Errno),
    #[error("dropping privileges: setresuid: {0}")]
    SetUid(Errno),
    #[error("dropping privileges: clearing the {0:?} capabilities: {1}")]
    Caps(CapSet, caps::errors::CapsError),
    #[error("dropping privileges: still privileged after the drop (uids {0}/{1}/{2}, capabilities {3})")]
    Still(u32, u32, u32, String),
    #[error("dropping privileges: PR_SET_DUMPABLE: {0}")]
    Dumpable(Errno),
}

/// When this process was started setuid/setgid or with file capabilities: real, effective and
/// saved uid and gid become the real ids, every capability set is emptied (the kernel clears them
/// on the uid change of a setuid-root start; with file capabilities the uids do not change, so
/// they are cleared here), the result is checked, and the process is dumpable again like any
/// process of the caller. Unprivileged runs are left alone.
pub(crate) fn drop_for_good() -> Result<(), DropError> {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let (uid, gid) = (getuid(), getgid());
    if uid == geteuid() && gid == getegid() && !crate::sys::helper::at_secure() {
        return Ok(());
    }
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(DropError::SetGid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(DropError::SetUid)?;
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(|e| DropError::Caps(set, e))?;
    }
    let (r, e, s) = crate::sys::helper::getresuid();
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| DropError::Caps(CapSet::Permitted, e))?;
    if (r, e, s) != (uid.as_raw(), uid.as_raw(), uid.as_raw())
        || getgid() != gid
        || getegid() != gid
        || !permitted.is_empty()
    {
        return Err(DropError::Still(r, e, s, format!("{permitted:?}")));
    }
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable).map_err(DropError::Dumpable)
}
