//! Before a verified root is mounted: every object the image names must be there, carry
//! fs-verity, and have the digest the image records for it.
//!
//! overlayfs `verity=require` checks the same thing, but only when a file is opened, so a
//! tampered `/usr/lib/...` would surface as EIO somewhere in the booted system. Checking up
//! front makes a tampered or missing object stop the boot in the initramfs, with nothing
//! mounted. It costs one `openat2` + `FS_IOC_MEASURE_VERITY` per distinct object (the kernel
//! reports the stored root hash; no file data is read).
//!
//! The image was checked against the kernel command line before it is parsed here, so its
//! bytes are the ones the command line pins; the reader still treats them as hostile.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;

use rustix::fs::{OFlags, ResolveFlags};

/// Largest image parsed for the check (the reader's own limit is larger; a root image with
/// millions of files is a few hundred MB).
const MAX_IMAGE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("reading the image: {0}")]
    Read(String),
    #[error("/{path}: the image names no fs-verity digest for its object (verity=require would refuse it)")]
    NoDigest { path: String },
    #[error("object {object} (for /{path}) is missing")]
    Missing { object: String, path: String },
    #[error("object {object} (for /{path}): {reason}")]
    Bad { object: String, path: String, reason: String },
}

/// What was checked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub files: usize,
    pub objects: usize,
}

/// Checks every external file of `image` against `objects` (a directory fd).
pub fn verify(image: &File, objects: BorrowedFd<'_>) -> Result<Checked, ObjectError> {
    let size = image.metadata().map_err(|e| ObjectError::Read(e.to_string()))?.len();
    if size > MAX_IMAGE {
        return Err(ObjectError::Read(format!("{size} bytes is more than the {MAX_IMAGE} checked")));
    }
    let mut bytes = vec![0u8; size as usize];
    image.read_exact_at(&mut bytes, 0).map_err(|e| ObjectError::Read(e.to_string()))?;
    let tree = crate::erofs::reader::read_image(&bytes).map_err(|e| ObjectError::Read(e.to_string()))?;
    drop(bytes);
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut done = Checked::default();
    for (id, node) in tree.nodes.iter().enumerate() {
        let e = &node.entry;
        if node.link_to.is_some() || !e.inode.is_reg() {
            continue;
        }
        let Some(payload) = e.payload.as_deref() else { continue };
        done.files += 1;
        let path = || String::from_utf8_lossy(&tree_path(&tree, id as u32)).into_owned();
        let Some(want) = e.fsverity_digest else {
            return Err(ObjectError::NoDigest { path: path() });
        };
        if !seen.insert(payload) {
            continue;
        }
        done.objects += 1;
        let name = String::from_utf8_lossy(payload).into_owned();
        check_one(objects, payload, &want).map_err(|r| match r {
            None => ObjectError::Missing { object: name.clone(), path: path() },
            Some(reason) => ObjectError::Bad { object: name.clone(), path: path(), reason },
        })?;
    }
    Ok(done)
}

/// Opens `payload` beneath `objects` (no symlinks, no escape) and compares its fs-verity digest.
/// `Err(None)`: missing.
fn check_one(objects: BorrowedFd<'_>, payload: &[u8], want: &[u8; 32]) -> Result<(), Option<String>> {
    use std::os::unix::ffi::OsStrExt;
    let rel = std::ffi::OsStr::from_bytes(payload);
    let fd = crate::below::open_below(
        objects,
        rel,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(|e| if e == rustix::io::Errno::NOENT { None } else { Some(format!("open: {e}")) })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| Some(format!("fstat: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Some("not a regular file".into()));
    }
    match crate::fsverity::check_digest(fd.as_fd(), want) {
        Ok(()) => Ok(()),
        Err(e) => Err(Some(e.to_string())),
    }
}

/// `a/b/c` of a node (no leading slash), for messages.
fn tree_path(tree: &crate::tree::Tree, mut id: u32) -> Vec<u8> {
    let mut parts = Vec::new();
    while id != crate::tree::ROOT {
        let n = &tree.nodes[id as usize];
        parts.push(n.name.as_slice());
        id = n.parent;
    }
    parts.reverse();
    parts.join(&b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erofs::writer::write_image;
    use crate::input::dump::{parse, DumpOptions};

    /// An image of `dump` (a composefs dumpfile) in a temporary file.
    fn image(dump: &str) -> File {
        let tree = parse(dump.as_bytes(), &DumpOptions::default()).unwrap();
        let mut bytes = Vec::new();
        write_image(&tree, &Default::default(), &mut bytes).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        f
    }

    const D: &str = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95";

    fn objects_dir() -> (tempfile::TempDir, File) {
        let d = tempfile::tempdir().unwrap();
        let f = File::open(d.path()).unwrap();
        (d, f)
    }

    #[test]
    fn names_the_file_of_a_missing_object() {
        let (_d, objs) = objects_dir();
        let img = image(&format!(
            "/ 0 40755 2 0 0 0 0.0 - - -\n/etc 0 40755 2 0 0 0 0.0 - - -\n/etc/f 100 100644 1 0 0 0 0.0 3d/{} - {D}\n",
            &D[2..]
        ));
        let e = verify(&img, objs.as_fd()).unwrap_err().to_string();
        assert_eq!(e, format!("object 3d/{} (for /etc/f) is missing", &D[2..]));
    }

    #[test]
    fn an_object_without_fs_verity_is_refused() {
        let (d, objs) = objects_dir();
        std::fs::create_dir(d.path().join("3d")).unwrap();
        std::fs::write(d.path().join("3d").join(&D[2..]), vec![0u8; 100]).unwrap();
        let img = image(&format!("/ 0 40755 2 0 0 0 0.0 - - -\n/f 100 100644 1 0 0 0 0.0 3d/{} - {D}\n", &D[2..]));
        let e = verify(&img, objs.as_fd()).unwrap_err().to_string();
        // tmpfs / a kernel without fs-verity, or a file without it: either way not accepted
        assert!(e.starts_with(&format!("object 3d/{} (for /f): fs-verity", &D[2..])), "{e}");
    }

    #[test]
    fn a_symlinked_object_is_not_followed() {
        let (d, objs) = objects_dir();
        std::fs::create_dir(d.path().join("3d")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("3d").join(&D[2..])).unwrap();
        let img = image(&format!("/ 0 40755 2 0 0 0 0.0 - - -\n/f 100 100644 1 0 0 0 0.0 3d/{} - {D}\n", &D[2..]));
        let e = verify(&img, objs.as_fd()).unwrap_err().to_string();
        assert!(e.contains("(for /f): open: "), "{e}");
    }

    #[test]
    fn an_external_file_without_a_digest_is_refused() {
        let (_d, objs) = objects_dir();
        let img = image("/ 0 40755 2 0 0 0 0.0 - - -\n/f 100 100644 1 0 0 0 0.0 ab/cdef - -\n");
        let e = verify(&img, objs.as_fd()).unwrap_err().to_string();
        assert!(e.starts_with("/f: the image names no fs-verity digest"), "{e}");
    }

    #[test]
    fn inline_and_empty_files_need_no_object() {
        let (_d, objs) = objects_dir();
        let img =
            image("/ 0 40755 2 0 0 0 0.0 - - -\n/a 3 100644 1 0 0 0 0.0 - abc -\n/e 0 100644 1 0 0 0 0.0 - - -\n");
        let c = verify(&img, objs.as_fd()).unwrap();
        assert_eq!((c.files, c.objects), (0, 0));
    }
}
