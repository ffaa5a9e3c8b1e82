//! Early init: the first thing `main` runs. It decides the privilege mode once and returns it as
//! a value ([`Mode`]); in privileged mode (setuid-root or file capabilities) it hardens the
//! process before anything else happens.

use std::ffi::OsString;

use caps::{CapSet, Capability};
use rustix::io::Errno;

use super::caller::{restrict_caps, set_undumpable, Caller, KEPT_CAPS};
use super::policy::{Policy, PolicyError};

/// The privilege mode, decided once by [`early_init`] and passed explicitly from the CLI into
/// the engine (as an access policy, see `crate::mount::access`).
#[derive(Debug)]
pub(crate) enum Mode {
    /// Plain execution: root (administrators, `mount -t composefs`, boot) or a user acting for
    /// itself. Nothing is restricted beyond what the kernel does.
    Plain,
    /// Setuid-root or file capabilities, serving the unprivileged `caller` under `policy`.
    Helper(Box<HelperContext>),
}

/// What privileged mode knows after early init.
#[derive(Debug, Clone)]
pub(crate) struct HelperContext {
    pub(crate) caller: Caller,
    pub(crate) policy: Policy,
}

/// Environment variables that survive privileged execution (values are also checked).
const ENV_ALLOWLIST: &[&str] = &["TERM", "LANG", "LC_ALL", "LC_MESSAGES", "LC_CTYPE"];
/// The fixed PATH set in privileged mode (the caller's is never read).
const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Subcommands reachable through the privileged helper (besides --help/--version).
const PRIVILEGED_SUBCOMMANDS: &[&str] = &["mount", "umount", "help", "--help", "-h", "--version", "-V"];

/// Why privileged mode could not be set up; every variant ends the run (fail closed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    #[error("privileged mode: cannot open /dev/null for fds 0-2: {0}")]
    StdFds(Errno),
    #[error("privileged mode: PR_SET_DUMPABLE: {0}")]
    Dumpable(Errno),
    #[error("privileged mode: signal dispositions: {0}")]
    Signals(Errno),
    #[error("privileged mode: clearing interval timers (setitimer): {0}")]
    Timers(Errno),
    #[error("privileged mode: RLIMIT_NOFILE hard limit is too low ({0:?} < 64)")]
    NofileTooLow(Option<u64>),
    #[error("privileged mode: only `mount` and `umount` are available to unprivileged callers, besides `oci mount` (got {0:?}); run other subcommands from an unprivileged copy of cfsmount")]
    Subcommand(String),
    #[error("privileged mode: of `als`, only `view` and `view-rm` are available to unprivileged callers (got {0:?}); run other subcommands as root")]
    AlsSubcommand(String),
    #[error("privileged mode: getgroups: {0}")]
    Groups(Errno),
    #[error("privileged mode: setresgid(0) failed (install setuid-root, or with file capabilities including cap_setgid): {0}")]
    SetGid(Errno),
    #[error("privileged mode: setresuid(0) failed (install setuid-root, or with file capabilities including cap_setuid): {0}")]
    SetUid(Errno),
    #[error("privileged mode: could not become root (uids {0}/{1}/{2})")]
    NotRoot(u32, u32, u32),
    #[error("privileged mode: dropping capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("privileged mode: missing capability {0} (install setuid-root, or setcap cap_sys_admin,cap_setuid,cap_setgid=ep)")]
    MissingCap(Capability),
    #[error("privileged mode: no_new_privs: {0}")]
    NoNewPrivs(Errno),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("helper policy {source_name} does not allow user {} (uid {uid}) to use cfsmount", name.as_deref().unwrap_or("?"))]
    NotAllowed { source_name: String, name: Option<String>, uid: u32 },
}

/// Runs first in `main`: decides the mode; when executed setuid/with file capabilities,
/// sanitizes the process first. Unprivileged plain execution is left alone.
pub(crate) fn early_init(argv: &[OsString]) -> Result<Mode, InitError> {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let (ruid, euid, rgid, egid) = (getuid().as_raw(), geteuid().as_raw(), getgid().as_raw(), getegid().as_raw());
    let privileged = ruid != euid || rgid != egid || crate::sys::helper::at_secure();
    if !privileged {
        // An ignored SIGCHLD survives `execve` and breaks every `waitpid` (ECHILD): reset in
        // plain runs too (a root daemon that ignores it may run `mount.composefs`).
        // (`signal(SIGCHLD, SIG_DFL)` cannot fail.)
        let _ = crate::sys::helper::default_sigchld();
        return Ok(Mode::Plain);
    }
    harden(ruid, rgid, argv).map(|c| Mode::Helper(Box::new(c)))
}

/// Privileged mode, in this order (docs/helper.md, "Order of events").
fn harden(ruid: u32, rgid: u32, argv: &[OsString]) -> Result<HelperContext, InitError> {
    // 1. fds 0-2 open, before anything could open a file onto them.
    crate::sys::helper::ensure_std_fds().map_err(InitError::StdFds)?;
    // 2. Undumpable: no ptrace, no /proc/PID/mem, no core dumps by the caller.
    set_undumpable().map_err(InitError::Dumpable)?;
    // 3. Environment: nothing from the caller except a few validated locale variables.
    sanitize_env();
    // 4. umask, signals (the caller's terminal cannot interrupt or stop us), rlimits.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    crate::sys::helper::ignore_sigxfsz().map_err(InitError::Signals)?;
    crate::sys::helper::block_terminal_signals().map_err(InitError::Signals)?;
    crate::sys::helper::default_sigchld().map_err(InitError::Signals)?;
    crate::sys::helper::clear_interval_timers().map_err(InitError::Timers)?;
    fix_rlimits()?;
    // 5. Only mount/umount/oci mount are offered to unprivileged callers.
    check_subcommand(argv)?;
    // 6. Caller identity (before changing any id).
    let groups: Vec<u32> =
        rustix::process::getgroups().map_err(InitError::Groups)?.into_iter().map(|g| g.as_raw()).collect();
    let name = passwd_name(ruid);
    // 7. Root in all of real/effective/saved ids, so that the caller can neither signal nor
    //    ptrace us; needs CAP_SETUID/CAP_SETGID (present when setuid-root; required in file caps).
    become_root()?;
    // 8. Capabilities: keep only what mounting needs.
    let keep = kept_caps(argv);
    restrict_caps(&keep)?;
    for cap in &keep {
        if !caps::has_cap(None, CapSet::Effective, *cap).unwrap_or(false) {
            return Err(InitError::MissingCap(*cap));
        }
    }
    rustix::thread::set_no_new_privs(true).map_err(InitError::NoNewPrivs)?;
    // 9. Policy (fails closed) and access check.
    let policy = Policy::load()?;
    let gids: Vec<(u32, Option<String>)> =
        std::iter::once(rgid).chain(groups.iter().copied()).map(|g| (g, group_name(g))).collect();
    if !policy.allows(ruid, name.as_deref(), &gids) {
        return Err(InitError::NotAllowed { source_name: policy.source.clone(), name, uid: ruid });
    }
    Ok(HelperContext { caller: Caller { uid: ruid, gid: rgid, groups, name }, policy })
}

/// RLIMIT_CORE 0; RLIMIT_FSIZE, RLIMIT_CPU, RLIMIT_RTTIME, RLIMIT_AS and RLIMIT_DATA → infinity;
/// RLIMIT_STACK → 8 MiB, soft and hard (the kernel caps the soft one at that for a setuid exec,
/// and leaves a smaller one);
/// RLIMIT_NOFILE → 1024. Where the hard limit cannot be raised (no CAP_SYS_RESOURCE in the
/// owning user namespace) the soft limit goes up to the hard one. A finite RLIMIT_FSIZE then
/// makes writes fail with EFBIG (SIGXFSZ is ignored), reported. The others are the caller's ways
/// to end the helper at a moment of its choosing: SIGXCPU at the soft RLIMIT_CPU (or
/// RLIMIT_RTTIME, under a real-time policy the caller may set), SIGKILL at the hard one; a failed
/// allocation (address space, data) or stack growth aborts.
fn fix_rlimits() -> Result<(), InitError> {
    use rustix::process::{Resource, Rlimit};
    let _ = rustix::process::setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) });
    for (res, want) in [
        (Resource::Fsize, None),
        (Resource::Cpu, None),
        (Resource::Rttime, None),
        (Resource::As, None),
        (Resource::Data, None),
        (Resource::Stack, Some(8u64 << 20)),
        (Resource::Nofile, Some(1024u64)),
    ] {
        if rustix::process::setrlimit(res, Rlimit { current: want, maximum: want }).is_err() {
            let cur = rustix::process::getrlimit(res);
            let _ = rustix::process::setrlimit(res, Rlimit { current: cur.maximum, maximum: cur.maximum });
        }
    }
    let nofile = rustix::process::getrlimit(Resource::Nofile);
    if nofile.current.is_some_and(|c| c < 64) {
        return Err(InitError::NofileTooLow(nofile.current));
    }
    Ok(())
}

/// setresgid(0,0,0) + setresuid(0,0,0), verified (fsuid included), then undumpable again.
fn become_root() -> Result<(), InitError> {
    use rustix::process::{Gid, Uid};
    rustix::thread::set_thread_res_gid(Gid::ROOT, Gid::ROOT, Gid::ROOT).map_err(InitError::SetGid)?;
    rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).map_err(InitError::SetUid)?;
    let (r, e, s) = crate::sys::helper::getresuid();
    if (r, e, s) != (0, 0, 0) || crate::sys::helper::current_fsuid() != 0 {
        return Err(InitError::NotRoot(r, e, s));
    }
    set_undumpable().map_err(InitError::Dumpable)
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

fn check_subcommand(argv: &[OsString]) -> Result<(), InitError> {
    let argv0 = argv.first().map(std::path::Path::new).and_then(|p| p.file_name());
    if argv0.is_some_and(|n| n == "mount.composefs") {
        return Ok(());
    }
    match argv.get(1).and_then(|a| a.to_str()) {
        Some(s) if PRIVILEGED_SUBCOMMANDS.contains(&s) => Ok(()),
        Some("als") => check_als_subcommand(argv),
        Some("oci") if is_oci_mount(argv) => Ok(()),
        other => Err(InitError::Subcommand(other.unwrap_or("").to_string())),
    }
}

/// The capabilities this run keeps: [`KEPT_CAPS`]; for `als view` also CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH. A view's composefs overlays read the store's layer images and objects
/// with their creator's credentials, through EROFS mounts idmapped onto the caller's mapping:
/// a file of the image that is 0600 and owned by image root (mapped to the caller) is readable
/// to that creator only with CAP_DAC_OVERRIDE (found by the root-tier test: without it the
/// caller's container reads EACCES). Everything such an overlay reads lies in a store that only
/// root controls (the gate checks it before anything is opened), never in a file the caller
/// names, so the extra capabilities reach no data of the caller's choosing.
fn kept_caps(argv: &[OsString]) -> Vec<Capability> {
    let mut keep = KEPT_CAPS.to_vec();
    if argv.get(1).is_some_and(|a| a == "als") && argv.get(2).is_some_and(|a| a == "view") {
        keep.extend([Capability::CAP_DAC_OVERRIDE, Capability::CAP_DAC_READ_SEARCH]);
    }
    keep
}

/// Of `als`, only `view` and `view-rm` (the caller's own view, docs/als.md) reach the helper;
/// the policy flag `features.als_view` is checked by the gate.
fn check_als_subcommand(argv: &[OsString]) -> Result<(), InitError> {
    match argv.get(2).and_then(|a| a.to_str()) {
        Some("view" | "view-rm") => Ok(()),
        other => Err(InitError::AlsSubcommand(other.unwrap_or("").to_string())),
    }
}

/// `cfsmount oci mount ...`: the one `oci` subcommand the helper serves (privileged::oci; the
/// other `oci` and `store` subcommands run as the caller, cli::runs_as_caller).
fn is_oci_mount(argv: &[OsString]) -> bool {
    argv.get(1).is_some_and(|a| a == "oci") && argv.get(2).is_some_and(|a| a == "mount")
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
        let m = early_init(&["cfsmount".into(), "mkimage".into()]).unwrap();
        assert!(matches!(m, Mode::Plain));
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
        assert!(ok(&["cfsmount", "als", "view", "--root", "/r"]));
        assert!(ok(&["cfsmount", "als", "view-rm"]));
        assert!(!ok(&["cfsmount", "als", "add", "--root", "/r", "--ref", "x", "oci:/tmp/x"]));
        assert!(!ok(&["cfsmount", "als", "--store", "/x", "view"]));
        assert!(!ok(&["cfsmount", "als"]));
        let caps = |v: &[&str]| kept_caps(&v.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(caps(&["cfsmount", "mount", "a", "b"]), KEPT_CAPS);
        assert_eq!(caps(&["cfsmount", "als", "view-rm"]), KEPT_CAPS);
        assert!(caps(&["cfsmount", "als", "view", "--root", "/r"]).contains(&Capability::CAP_DAC_OVERRIDE));
        assert!(ok(&["cfsmount", "oci", "mount", "sha256:00", "/mnt"]));
        assert!(!ok(&["cfsmount", "oci", "import", "oci:/x"]));
        assert!(!ok(&["cfsmount", "oci", "--store", "/x", "mount"]));
        assert!(!ok(&["cfsmount", "oci"]));
        assert!(!ok(&["cfsmount", "store", "gc"]));
    }
}
