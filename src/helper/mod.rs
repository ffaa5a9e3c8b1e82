//! Privileged-helper mode: environment hygiene, caller authorization and the mount policy file.
//!
//! When cfsmount runs setuid-root or with file capabilities, [`early_init`] (first thing in
//! `main`) detects it, records the caller's real ids, repairs fds 0-2, wipes the environment,
//! fixes umask/rlimits, makes the process undumpable, becomes fully uid/gid 0 (so the caller can
//! no longer signal or ptrace it), trims capabilities to what mounting needs, loads the policy
//! (failing closed) and refuses every subcommand except `mount`/`umount`.
//! The mount path then calls the [`authz`] functions, which act with the CALLER's credentials.

pub mod authz;
pub mod policy;

use std::ffi::OsString;
use std::sync::OnceLock;

use caps::{CapSet, Capability};

pub use authz::*;
pub use policy::{Limits, Policy, PolicyError};

/// Who ran us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real uid at exec time.
    pub uid: u32,
    /// Real gid at exec time.
    pub gid: u32,
    /// Supplementary groups at exec time (they stay in force for checks made as the caller).
    pub groups: Vec<u32>,
    /// Login name from /etc/passwd, if any.
    pub name: Option<String>,
}

struct State {
    privileged: bool,
    caller: Caller,
    policy: Option<Policy>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Environment variables that survive privileged execution (values are also checked).
const ENV_ALLOWLIST: &[&str] = &["TERM", "LANG", "LC_ALL", "LC_MESSAGES", "LC_CTYPE"];
/// The fixed PATH set in privileged mode (the caller's is never read).
const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Capabilities kept after early_init in privileged mode: mounting and loop setup
/// (CAP_SYS_ADMIN), switching the effective ids to the caller and writing idmap maps
/// (CAP_SETUID/CAP_SETGID). Everything else is dropped from every set, bounding included.
pub const KEPT_CAPS: &[Capability] = &[Capability::CAP_SYS_ADMIN, Capability::CAP_SETUID, Capability::CAP_SETGID];

/// Subcommands reachable through the privileged helper (besides --help/--version).
const PRIVILEGED_SUBCOMMANDS: &[&str] = &["mount", "umount", "help", "--help", "-h", "--version", "-V"];

/// Runs first in `main`: when executed setuid/with file capabilities, sanitizes the process.
/// Unprivileged plain execution is left alone (only the caller's ids are recorded).
pub fn early_init() -> anyhow::Result<()> {
    early_init_with(std::env::args_os().collect())
}

fn early_init_with(argv: Vec<OsString>) -> anyhow::Result<()> {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let (ruid, euid, rgid, egid) = (getuid().as_raw(), geteuid().as_raw(), getgid().as_raw(), getegid().as_raw());
    let privileged = ruid != euid || rgid != egid || crate::sys::helper::at_secure();
    if !privileged {
        if STATE.get().is_none() {
            let groups = rustix::process::getgroups().unwrap_or_default().into_iter().map(|g| g.as_raw()).collect();
            let _ = STATE.set(State {
                privileged: false,
                caller: Caller { uid: ruid, gid: rgid, groups, name: None },
                policy: None,
            });
        }
        return Ok(());
    }
    let r = harden(ruid, rgid, &argv);
    if r.is_err() {
        // Never continue half-hardened: make sure no later code can think it is unprivileged.
        let _ = STATE.set(State {
            privileged: true,
            caller: Caller { uid: ruid, gid: rgid, groups: Vec::new(), name: None },
            policy: None,
        });
    }
    r
}

fn harden(ruid: u32, rgid: u32, argv: &[OsString]) -> anyhow::Result<()> {
    use anyhow::Context;
    use rustix::process::{Resource, Rlimit};
    // 1. fds 0-2 open, before anything could open a file onto them.
    crate::sys::helper::ensure_std_fds().context("privileged mode: cannot open /dev/null for fds 0-2")?;
    // 2. Undumpable: no ptrace, no /proc/PID/mem, no core dumps by the caller.
    set_undumpable()?;
    // 3. Environment: nothing from the caller except a few validated locale variables.
    sanitize_env();
    // 4. umask, signals, rlimits.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    crate::sys::helper::ignore_sigxfsz().context("privileged mode: SIGXFSZ")?;
    let _ = rustix::process::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) });
    // RLIMIT_FSIZE → infinity, RLIMIT_NOFILE → 1024; where the hard limit cannot be raised
    // (no CAP_SYS_RESOURCE in the owning user namespace) the soft limit goes up to the hard one.
    // A finite RLIMIT_FSIZE then makes writes fail with EFBIG (SIGXFSZ is ignored), reported.
    for (res, want) in [(Resource::Fsize, None), (Resource::Nofile, Some(1024u64))] {
        if rustix::process::setrlimit(res, Rlimit { current: want, maximum: want }).is_err() {
            let cur = rustix::process::getrlimit(res);
            let _ = rustix::process::setrlimit(res, Rlimit { current: cur.maximum, maximum: cur.maximum });
        }
    }
    let nofile = rustix::process::getrlimit(Resource::Nofile);
    if nofile.current.is_some_and(|c| c < 64) {
        anyhow::bail!("privileged mode: RLIMIT_NOFILE hard limit is too low ({:?} < 64)", nofile.current);
    }
    // 5. Only mount/umount are offered to unprivileged callers.
    check_subcommand(argv)?;
    // 6. Caller identity (before changing any id).
    let groups: Vec<u32> =
        rustix::process::getgroups().context("privileged mode: getgroups")?.into_iter().map(|g| g.as_raw()).collect();
    let name = passwd_name(ruid);
    // 7. Become root in all of real/effective/saved ids, so that the caller can neither signal nor
    //    ptrace us; needs CAP_SETUID/CAP_SETGID (present when setuid-root; required in file caps).
    rustix::thread::set_thread_res_gid(
        rustix::process::Gid::ROOT,
        rustix::process::Gid::ROOT,
        rustix::process::Gid::ROOT,
    )
    .context(
        "privileged mode: setresgid(0) failed (install setuid-root, or with file capabilities including cap_setgid)",
    )?;
    rustix::thread::set_thread_res_uid(
        rustix::process::Uid::ROOT,
        rustix::process::Uid::ROOT,
        rustix::process::Uid::ROOT,
    )
    .context(
        "privileged mode: setresuid(0) failed (install setuid-root, or with file capabilities including cap_setuid)",
    )?;
    let (r, e, s) = crate::sys::helper::getresuid();
    if (r, e, s) != (0, 0, 0) || crate::sys::helper::current_fsuid() != 0 {
        anyhow::bail!("privileged mode: could not become root (uids {r}/{e}/{s})");
    }
    set_undumpable()?;
    // 8. Capabilities: keep only what mounting needs.
    restrict_caps(KEPT_CAPS).context("privileged mode: dropping capabilities")?;
    for cap in KEPT_CAPS {
        if !caps::has_cap(None, CapSet::Effective, *cap).unwrap_or(false) {
            anyhow::bail!("privileged mode: missing capability {cap} (install setuid-root, or setcap cap_sys_admin,cap_setuid,cap_setgid=ep)");
        }
    }
    rustix::thread::set_no_new_privs(true).context("privileged mode: no_new_privs")?;
    // 9. Policy (fails closed) and access check.
    let policy = Policy::load()?;
    let gids: Vec<(u32, Option<String>)> =
        std::iter::once(rgid).chain(groups.iter().copied()).map(|g| (g, group_name(g))).collect();
    if !policy.allows(ruid, name.as_deref(), &gids) {
        anyhow::bail!(
            "helper policy {} does not allow user {} (uid {ruid}) to use cfsmount",
            policy.source,
            name.as_deref().unwrap_or("?")
        );
    }
    STATE
        .set(State { privileged: true, caller: Caller { uid: ruid, gid: rgid, groups, name }, policy: Some(policy) })
        .map_err(|_| anyhow::anyhow!("privileged mode: early_init ran twice"))?;
    Ok(())
}

/// For the drop-in personalities (`mkcomposefs`, `composefs-info`, `composefs-dump`): when this
/// process was started setuid/setgid or with file capabilities, become the caller for good
/// before anything else runs — real, effective and saved uid and gid set to the real ids,
/// every capability set emptied (the kernel clears them on the uid change of a setuid-root
/// start; with file capabilities the uids do not change, so they are cleared here), the process
/// dumpable again like any process of the caller — and check the result. Unprivileged runs
/// are left alone. The process is then in the state a plain copy of the tool would be in.
pub fn drop_privileges_for_good() -> anyhow::Result<()> {
    use anyhow::Context;
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let (uid, gid) = (getuid(), getgid());
    let setid = uid != geteuid() || gid != getegid();
    if !setid && !crate::sys::helper::at_secure() {
        return Ok(());
    }
    rustix::thread::set_thread_res_gid(gid, gid, gid).context("dropping privileges: setresgid")?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).context("dropping privileges: setresuid")?;
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).with_context(|| format!("dropping privileges: clearing the {set:?} capabilities"))?;
    }
    let (r, e, s) = crate::sys::helper::getresuid();
    let permitted = caps::read(None, CapSet::Permitted).context("dropping privileges: reading capabilities")?;
    if (r, e, s) != (uid.as_raw(), uid.as_raw(), uid.as_raw())
        || getgid() != gid
        || getegid() != gid
        || !permitted.is_empty()
    {
        anyhow::bail!("dropping privileges: still privileged after the drop (uids {r}/{e}/{s})");
    }
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable)
        .context("dropping privileges: PR_SET_DUMPABLE")?;
    Ok(())
}

/// Whether this process runs as a privileged helper for an unprivileged caller.
/// Fails safe: if early_init never ran, the process is treated as privileged when its ids or
/// AT_SECURE say so.
pub fn privileged() -> bool {
    match STATE.get() {
        Some(s) => s.privileged,
        None => {
            use rustix::process::{getegid, geteuid, getgid, getuid};
            getuid() != geteuid() || getgid() != getegid() || crate::sys::helper::at_secure()
        }
    }
}

/// The caller's credentials (in unprivileged mode: our own).
pub fn caller() -> Caller {
    match STATE.get() {
        Some(s) => s.caller.clone(),
        None => {
            let groups = rustix::process::getgroups().unwrap_or_default().into_iter().map(|g| g.as_raw()).collect();
            Caller {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
                groups,
                name: None,
            }
        }
    }
}

/// The policy in force (privileged mode only; None when unprivileged or before early_init).
pub fn policy() -> Option<&'static Policy> {
    STATE.get().and_then(|s| s.policy.as_ref())
}

/// The caller's limits under the policy (privileged mode only).
pub fn caller_limits() -> Option<Limits> {
    let s = STATE.get()?;
    let p = s.policy.as_ref()?;
    Some(p.limits_for(s.caller.name.as_deref(), s.caller.uid))
}

/// PR_SET_DUMPABLE 0. Every credential change resets dumpability to fs.suid_dumpable, so this is
/// called again after each one.
pub fn set_undumpable() -> anyhow::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| anyhow::anyhow!("privileged mode: PR_SET_DUMPABLE: {e}"))
}

/// Reduces permitted/effective/inheritable/bounding to `keep` and clears the ambient set.
/// Capabilities can only ever be dropped, so call it with shrinking sets, phase by phase.
pub fn restrict_caps(keep: &[Capability]) -> Result<(), caps::errors::CapsError> {
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

/// Phases of a privileged run, each with fewer capabilities than the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Mounting after authorization; `setid` keeps CAP_SETUID/CAP_SETGID (needed to write
    /// `--uidmap` maps and to keep acting as the caller).
    Mount { setid: bool },
    /// The mount is attached or handed out: no capabilities at all (state records are written
    /// as uid 0 into a root-owned directory, which needs none).
    Done,
}

/// Drops the capabilities the next phase does not need. No-op when unprivileged.
pub fn enter_phase(phase: Phase) -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let keep: &[Capability] = match phase {
        Phase::Mount { setid: true } => KEPT_CAPS,
        Phase::Mount { setid: false } => &[Capability::CAP_SYS_ADMIN],
        Phase::Done => &[],
    };
    restrict_caps(keep).map_err(|e| anyhow::anyhow!("privileged mode: dropping capabilities: {e}"))?;
    set_undumpable()
}

fn sanitize_env() {
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    for (k, v) in vars {
        let keep = k.to_str().is_some_and(|k| ENV_ALLOWLIST.contains(&k))
            && v.len() <= 64
            && v.to_str().is_some_and(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)));
        if !keep {
            std::env::remove_var(&k);
        }
    }
    std::env::set_var("PATH", SAFE_PATH);
}

fn check_subcommand(argv: &[OsString]) -> anyhow::Result<()> {
    let argv0 = argv.first().map(std::path::Path::new).and_then(|p| p.file_name());
    if argv0.is_some_and(|n| n == "mount.composefs") {
        return Ok(());
    }
    match argv.get(1).and_then(|a| a.to_str()) {
        Some(s) if PRIVILEGED_SUBCOMMANDS.contains(&s) => Ok(()),
        other => anyhow::bail!(
            "privileged mode: only `mount` and `umount` are available to unprivileged callers (got {:?}); run other subcommands from an unprivileged copy of cfsmount",
            other.unwrap_or("")
        ),
    }
}

/// Looks `id` up in a colon-separated database (/etc/passwd, /etc/group); field 0 is the name,
/// field 2 the id.
fn db_name(path: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2].parse::<u32>().ok() == Some(id))
        .map(|f| f[0].to_string())
}

fn passwd_name(uid: u32) -> Option<String> {
    db_name("/etc/passwd", uid)
}

fn group_name(gid: u32) -> Option<String> {
    db_name("/etc/group", gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_run_is_plain() {
        early_init_with(vec!["cfsmount".into(), "mkimage".into()]).unwrap();
        assert!(!privileged());
        assert_eq!(caller().uid, rustix::process::getuid().as_raw());
        assert!(policy().is_none());
    }

    #[test]
    fn subcommand_filter() {
        let ok = |v: &[&str]| check_subcommand(&v.iter().map(OsString::from).collect::<Vec<_>>()).is_ok();
        assert!(ok(&["cfsmount", "mount", "a", "b"]));
        assert!(ok(&["cfsmount", "umount", "b"]));
        assert!(ok(&["/usr/sbin/mount.composefs", "img", "/mnt"]));
        assert!(ok(&["cfsmount", "--help"]));
        assert!(!ok(&["cfsmount", "mkimage", "x", "/etc/shadow"]));
        assert!(!ok(&["cfsmount", "verity", "enable"]));
        assert!(!ok(&["cfsmount"]));
    }
}
