//! Mounting: EROFS (file-backed or on a loop device) with the new mount API, idmapped mounts, umount.

#[derive(clap::Args, Debug)]
pub struct Args {}
#[derive(clap::Args, Debug)]
pub struct UmountArgs {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("mount: not implemented yet")
}
pub fn umount(_a: UmountArgs) -> anyhow::Result<()> {
    anyhow::bail!("umount: not implemented yet")
}
/// `mount.composefs SOURCE TARGET [-o OPTIONS]`, as util-linux calls helpers.
pub fn helper_main(_argv: &[std::ffi::OsString]) -> anyhow::Result<()> {
    anyhow::bail!("mount.composefs: not implemented yet")
}
