//! Landlock layer: every filesystem and network access right the kernel knows is handled and
//! none is granted, except read (and, for `write_dirs`, write) beneath the configured
//! directories; signals and abstract unix sockets are scoped.

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

/// The landlock ABI whose rights we request (best effort: the kernel's subset is applied).
const LANDLOCK_REQUEST_ABI: ABI = ABI::V10;

pub(super) fn apply(dirs: Vec<(PathFd, bool)>) -> Result<(), String> {
    build_landlock(dirs).map_err(|e| e.to_string()).and_then(|st| {
        if st == RulesetStatus::NotEnforced {
            Err("ruleset not enforced".to_string())
        } else {
            Ok(())
        }
    })
}

fn build_landlock(dirs: Vec<(PathFd, bool)>) -> Result<RulesetStatus, landlock::RulesetError> {
    let abi = LANDLOCK_REQUEST_ABI;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = read
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::RemoveFile
        | AccessFs::Refer
        | AccessFs::Truncate;
    let mut rs = landlock::Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    for (fd, w) in dirs {
        rs = rs.add_rule(PathBeneath::new(fd, if w { write } else { read }))?;
    }
    Ok(rs.restrict_self()?.ruleset)
}
