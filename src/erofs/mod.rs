//! composefs EROFS image format: on-disk structures, the writer (tree → image) and the hostile-image reader.

#[derive(clap::Args, Debug)]
pub struct InspectArgs {}

pub fn inspect(_a: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("inspect: not implemented yet")
}
