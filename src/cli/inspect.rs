//! `cfsmount inspect IMAGE`: read an image with the hostile-image reader and print it as a
//! composefs dumpfile.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context as _;

use crate::erofs::reader::{read_image, MAX_IMAGE_BYTES};
use crate::input::dump::write_dump;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The image file to read, or `-` for standard input.
    image: PathBuf,
}

/// `cfsmount inspect IMAGE`: print the image as a composefs dumpfile on stdout.
pub(crate) fn run(a: Args) -> anyhow::Result<()> {
    let name = a.image.display().to_string();
    let bytes = if a.image.as_os_str() == "-" {
        read_bounded(&mut std::io::stdin().lock()).context("reading the image from standard input")?
    } else {
        let f = std::fs::File::open(&a.image).with_context(|| format!("opening {name}"))?;
        let meta = f.metadata().with_context(|| format!("{name}: stat"))?;
        if !meta.is_file() {
            anyhow::bail!("{name}: not a regular file");
        }
        read_bounded(&mut &f).with_context(|| format!("reading {name}"))?
    };
    let tree = read_image(&bytes).with_context(|| format!("{name}: invalid composefs image"))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_dump(&tree, &mut out).context("writing the dumpfile")?;
    out.flush().context("writing the dumpfile")?;
    Ok(())
}

fn read_bounded(r: &mut dyn Read) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(MAX_IMAGE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_IMAGE_BYTES {
        anyhow::bail!("image larger than {MAX_IMAGE_BYTES} bytes");
    }
    Ok(buf)
}
