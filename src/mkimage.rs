//! `mkimage`: reads an input format, builds the tree, writes the EROFS image (through the sandbox).

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("mkimage: not implemented yet")
}
