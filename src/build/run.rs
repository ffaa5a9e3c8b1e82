//! The sandboxed run: the parent opens what the build reads (the input file, or for `--from-dir`
//! the directory it walks itself), decides the child's confinement, and runs the untrusted stage
//! ([`super::untrusted`]) in the sandbox on two descriptors.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::untrusted::{build_stream, write_tree};
use super::{BuildError, BuildRequest, InputFormat, Output, Source};
use crate::input::dir::DirOptions;
use crate::sandbox::SandboxConfig;
use crate::tree::{Limits, Tree};

/// `--from-dir`: the parent walks the directory (with the caller's permissions, no symlinks
/// followed, names validated as for every input), copying contents into `--digest-store`; the
/// image is then written from that tree in the sandbox. `None` for the stream formats.
pub(super) fn walk_dir_input(req: &BuildRequest, source: &Source) -> Result<Option<Tree>, BuildError> {
    if req.format != InputFormat::Dir {
        return Ok(None);
    }
    let Source::Path(src) = source else {
        return Err(BuildError::DirNeedsPath);
    };
    let dopts = DirOptions { digest_store: req.digest_store.clone(), limits: Limits::default(), walk: req.walk };
    Ok(Some(crate::input::dir::build_tree(src, &dopts)?))
}

/// The descriptor the child reads its input from (`/dev/null` when the parent walked a directory).
pub(super) fn open_input(source: Source, from_dir: bool) -> Result<OwnedFd, BuildError> {
    Ok(match source {
        Source::Path(p) if !from_dir => {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOCTTY)
                .open(&p)
                .map_err(BuildError::step(format!("opening {}", p.display())))?;
            if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
                return Err(BuildError::IsDirectory { path: p });
            }
            f.into()
        }
        Source::Path(_) => File::open("/dev/null").map_err(BuildError::step("opening /dev/null"))?.into(),
        Source::Stdin => io::stdin().as_fd().try_clone_to_owned().map_err(BuildError::step("duplicating stdin"))?,
        Source::Fd(fd) => fd,
    })
}

/// The child's confinement: the caller's settings, plus read access to `--objects`.
pub(super) fn sandbox_config(req: &BuildRequest, base: &SandboxConfig, output: &Output) -> SandboxConfig {
    let mut cfg = base.clone();
    // A path output is fsynced before it is renamed into place: its writeback starts while the
    // child still writes (docs/writer.md, "Build speed").
    cfg.writeback_output = matches!(output, Output::Path(_));
    if let Some(objects) = &req.objects {
        cfg.read_dirs.push(objects.clone());
        if rustix::process::getuid().is_root() && cfg.run_as.is_none() {
            // The objects of a root-owned store are typically readable by root only: the child
            // keeps uid 0 (without any capability, under landlock limited to this directory).
            cfg.run_as = Some((0, 0));
        }
    }
    cfg
}

/// Runs the untrusted stage confined: it writes the image to `out` (which the caller then
/// validates as untrusted bytes).
pub(super) fn run_untrusted(
    cfg: &SandboxConfig,
    req: &BuildRequest,
    tree_from_dir: Option<Tree>,
    input: OwnedFd,
    out: &File,
) -> Result<(), BuildError> {
    let out_fd: OwnedFd =
        out.as_fd().try_clone_to_owned().map_err(BuildError::step("duplicating the output descriptor"))?;
    let req = req.clone();
    // The child exits as soon as the job returns: its trees are left to the kernel (forgotten,
    // not freed one allocation at a time; see `build_stream`).
    crate::sandbox::run_confined(cfg, input, out_fd, move |mut i: File, mut o: File| {
        let r = match tree_from_dir {
            Some(t) => {
                let r = write_tree(&t, &req.write, &mut o);
                std::mem::forget(t);
                r
            }
            None => {
                let hint = i.metadata().ok().filter(|m| m.is_file()).map_or(0, |m| m.len());
                build_stream(&req, &mut i, hint, &mut o, std::mem::forget)
            }
        };
        r.map(|_| ()).map_err(|e| e.to_string())
    })?;
    Ok(())
}
