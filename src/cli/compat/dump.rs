//! `composefs-dump SRC DEST` (docs/dropin.md, "composefs-dump"): read an image and write it
//! again with its own format version. No option parsing, as in the reference. The image is read
//! and written in the sandbox; DEST is replaced only by a complete, validated image.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use super::{show, strerror, Fail};
use crate::build::{BuildOptions, BuildRequest, InputFormat, Output, Source};

pub(super) fn usage(argv0: &OsStr) -> String {
    format!("usage: {} SRC DEST\n", show(argv0))
}

pub(super) fn run(args: &[OsString]) -> Result<(), Fail> {
    let Some(src) = args.first() else {
        return Err(Fail::Usage(Some("No source path specified".into())));
    };
    let Some(dst) = args.get(1) else {
        return Err(Fail::Usage(Some("No destination path specified".into())));
    };
    let f = std::fs::File::open(src)
        .map_err(|e| Fail::Prefixed(format!("Failed to open '{}': {}", show(src), strerror(&e))))?;
    let req = BuildRequest::new(InputFormat::Image);
    crate::build::build_image(
        &req,
        Source::Fd(f.into()),
        &Output::Reference(PathBuf::from(dst)),
        &BuildOptions::default(),
    )
    .map_err(|e| Fail::Prefixed(format!("Failed to load '{}': {e:#}", show(src))))?;
    Ok(())
}
