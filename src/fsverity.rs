//! fs-verity: userspace digest (parallel leaf hashing), enable and measure on files.

#[derive(clap::Subcommand, Debug)]
pub enum Command {}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {}
}
