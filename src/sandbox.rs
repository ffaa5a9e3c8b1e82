//! Sandbox for the untrusted-input stage: child process without privileges, filesystem or unlisted syscalls.

pub fn doctor() -> anyhow::Result<()> {
    anyhow::bail!("doctor: not implemented yet")
}
