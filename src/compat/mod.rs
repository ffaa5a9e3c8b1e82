//! Engine side of the drop-in `composefs-info` personality (docs/dropin.md): each image is read
//! by the hostile-image reader inside the sandbox, which hands back only the text the reference
//! tool prints for it (or the list of its objects). The parent never parses image bytes.
//! (`mkcomposefs` and `composefs-dump` are image builds: see [`crate::build`].)

mod view;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};

use thiserror::Error;

use crate::erofs::reader::{read_image_with, ReadLimits, MAX_IMAGE_BYTES};
use crate::sandbox::{SandboxConfig, SandboxError};

/// What `composefs-info` prints for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoCommand {
    /// `ls`: one line per entry.
    Ls,
    /// `dump`: the dumpfile as the reference loader sees the image.
    Dump,
    /// `objects` / `missing-objects`: the regular files' payloads.
    Objects,
}

/// What the sandboxed reader returns for one image.
#[derive(Debug)]
pub enum InfoOutput {
    /// `ls` or `dump` text, to be printed as it is.
    Text(Vec<u8>),
    /// The distinct payloads, sorted bytewise.
    Objects(BTreeSet<Vec<u8>>),
}

#[derive(Debug, Error)]
pub enum InfoError {
    #[error("{step}: {source}")]
    Io { step: &'static str, source: std::io::Error },
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("malformed object list from the sandboxed reader")]
    Malformed,
}

/// Read the image in `image` inside the sandbox and produce what `composefs-info CMD` prints for
/// it, limited to the root entries named in `filter` (none: everything).
pub fn info_image(image: OwnedFd, cmd: InfoCommand, filter: &[Vec<u8>]) -> Result<InfoOutput, InfoError> {
    let io = |step| move |source| InfoError::Io { step, source };
    let out: OwnedFd = rustix::fs::memfd_create("cfsmount-info", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| io("memfd_create")(e.into()))?;
    let mut result = File::from(out.as_fd().try_clone_to_owned().map_err(io("dup"))?);
    let filter = filter.to_vec();
    crate::sandbox::run_confined(&SandboxConfig::default(), image, out, move |mut i, mut o| {
        let mut bytes = Vec::new();
        (&mut i).take(MAX_IMAGE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("reading the image: {e}"))?;
        if bytes.len() as u64 > MAX_IMAGE_BYTES {
            return Err(format!("image larger than {MAX_IMAGE_BYTES} bytes"));
        }
        let (tree, info) = read_image_with(&bytes, &ReadLimits::default()).map_err(|e| e.to_string())?;
        drop(bytes);
        let tree = view::reference_tree(tree, info.composefs_version, &filter)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut o);
        let r = match cmd {
            InfoCommand::Ls => view::write_ls(&tree, &mut w),
            InfoCommand::Dump => crate::input::dump::write_dump(&tree, &mut w),
            InfoCommand::Objects => {
                // Length-prefixed: payloads may hold any byte but NUL.
                let mut set = BTreeSet::new();
                view::objects(&tree, &mut set);
                set.iter().try_for_each(|p| {
                    w.write_all(&(p.len() as u32).to_le_bytes())?;
                    w.write_all(p)
                })
            }
        };
        r.and_then(|()| w.flush()).map_err(|e| format!("writing the result: {e}"))
    })?;
    result.rewind().map_err(io("rewinding the result"))?;
    let mut data = Vec::new();
    result.read_to_end(&mut data).map_err(io("reading the result"))?;
    if cmd != InfoCommand::Objects {
        return Ok(InfoOutput::Text(data));
    }
    let mut set = BTreeSet::new();
    let mut rest = data.as_slice();
    while !rest.is_empty() {
        let len = rest.get(..4).ok_or(InfoError::Malformed)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let p = rest.get(4..4 + len).ok_or(InfoError::Malformed)?;
        set.insert(p.to_vec());
        rest = &rest[4 + len..];
    }
    Ok(InfoOutput::Objects(set))
}

/// The payloads of `objects` for which nothing exists in `basedir` (a directory descriptor;
/// symlinks followed, as the reference's `fstatat(basedir, payload, AT_EMPTY_PATH)` does),
/// payloads taken relative to it. Without a descriptor every object is missing.
pub fn missing_objects(basedir: Option<std::os::fd::BorrowedFd<'_>>, objects: &BTreeSet<Vec<u8>>) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    objects
        .iter()
        .filter(|p| {
            let Some(dir) = basedir else { return true };
            let rel = p.iter().position(|&b| b != b'/').map_or(&p[p.len()..], |i| &p[i..]);
            rustix::fs::statat(dir, std::ffi::OsStr::from_bytes(rel), rustix::fs::AtFlags::EMPTY_PATH).is_err()
        })
        .cloned()
        .collect()
}

/// The object directory of `composefs-info --basedir` (`O_PATH|O_DIRECTORY`, as the reference
/// opens it: only looked up in, never read).
pub fn open_basedir(path: &std::ffi::OsStr) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECTORY | OFlags::PATH, Mode::empty())?)
}

/// Where a basedir lookup starts when `composefs-info missing-objects` has no `--basedir`: the
/// reference uses descriptor 0 then (an unset global), so this is a duplicate of standard input
/// (None when it is closed).
pub fn no_basedir() -> Option<OwnedFd> {
    std::io::stdin().as_fd().try_clone_to_owned().ok()
}
