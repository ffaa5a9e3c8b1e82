//! Privileged-helper mode: environment hygiene, caller authorization and the mount policy file.

/// Runs first in `main`: when executed setuid/with file capabilities, sanitizes the process.
pub fn early_init() -> anyhow::Result<()> {
    Ok(())
}
