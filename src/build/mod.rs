//! Image building engine: `cfsmount mkimage`, and the mount path's builds of a TOC or dumpfile.
//!
//! One build, in the order [`build_image`] runs it:
//! - `request`: what is asked ([`BuildRequest`], the only thing that crosses into the sandboxed
//!   child), where the input comes from ([`Source`]) and the image goes ([`Output`]);
//! - `output`: a temporary file next to OUTPUT (or a memfd for stdout) receives the image;
//! - `run`: the parent opens the input (or walks a `--from-dir` directory itself) and runs the
//!   untrusted stage (`untrusted`: parse, validate, write) confined by [`crate::sandbox`];
//! - `validate`: what the child wrote is checked as untrusted bytes;
//! - `output` again: only a validated image is renamed into place (atomic output; on any
//!   failure the temporary file is removed and nothing is left at OUTPUT).

mod output;
mod request;
mod run;
mod untrusted;
mod validate;

use std::fs::File;

pub use request::{BuildError, BuildInfo, BuildOptions, BuildRequest, InputFormat, Output, Source};
/// For callers that build a tree themselves (layer reader, OCI store) and write it confined.
pub(crate) use untrusted::write_tree;
pub use untrusted::{build_from_reader, build_from_reader_sized, build_stream};
pub(crate) use validate::validate_image;

/// Build `source` into `output` with the untrusted stage sandboxed. Returns the build info and,
/// for a path or anonymous output, the final file (positioned at 0).
pub fn build_image(
    req: &BuildRequest,
    source: Source,
    output: &Output,
    bopts: &BuildOptions,
) -> Result<(BuildInfo, Option<File>), BuildError> {
    let tmp = output::TempImage::new(output)?;
    let tree_from_dir = run::walk_dir_input(req, &source)?;
    let input = run::open_input(source, tree_from_dir.is_some())?;
    let cfg = run::sandbox_config(req, &bopts.sandbox, output);
    run::run_untrusted(&cfg, req, tree_from_dir, input, tmp.file())?;
    let info = validate::validate_image(tmp.file())?;
    let file = tmp.commit(output, bopts.enable_verity)?;
    Ok((info, file))
}
