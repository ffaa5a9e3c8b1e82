//! The untrusted stage: bytes in (TOC, eStargz TOC, dumpfile), parse + validate + write the
//! image out. It needs no privileges and no paths (except `--objects`, read through the
//! landlock-granted directory): it is what runs in the sandbox. The parent hands it either the
//! input stream or, for `--from-dir`, the tree it walked itself.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{BuildError, BuildInfo, BuildRequest, InputFormat};
use crate::erofs::writer::{effective_version, write_image, WriteOptions};
use crate::input::dump::DumpOptions;
use crate::input::toc::Flavor;
use crate::tree::{Limits, Tree};

/// Parse `input` according to `req` into a finalized tree (no image written).
fn parse_input(req: &BuildRequest, input: &[u8]) -> Result<Tree, BuildError> {
    match req.format {
        InputFormat::Toc => Ok(crate::input::toc::parse_flavor(input, &req.toc_options(), Flavor::ZstdChunked)?),
        InputFormat::Estargz => Ok(crate::input::toc::parse_flavor(input, &req.toc_options(), Flavor::Estargz)?),
        InputFormat::Dump => {
            Ok(crate::input::dump::parse(input, &DumpOptions { strict: req.strict_dump, limits: Limits::default() })?)
        }
        InputFormat::Dir => Err(BuildError::Input("directory input cannot be read from a stream".into())),
        InputFormat::Image => Ok(crate::erofs::reader::read_image(input)?),
    }
}

/// The untrusted stage: read the whole input (bounded), parse, validate, optionally record the
/// objects' fs-verity digests, and write the image to `out`.
pub fn build_from_reader(
    req: &BuildRequest,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<BuildInfo, BuildError> {
    build_from_reader_sized(req, input, 0, out)
}

/// [`build_from_reader`] with the input's expected size (0 if unknown) to read it in one buffer.
pub fn build_from_reader_sized(
    req: &BuildRequest,
    input: &mut dyn Read,
    size_hint: u64,
    out: &mut dyn Write,
) -> Result<BuildInfo, BuildError> {
    build_stream(req, input, size_hint, out, drop)
}

/// How much of the input buffer is advised for transparent huge pages. Beyond this the advice
/// measured no faster (a 158 MB TOC: 1.09 s against 1.01 s without it), so larger inputs take
/// their remaining pages 4 KiB at a time (docs/writer.md, "Build speed").
const INPUT_HUGE_PAGES: usize = 32 << 20;

/// [`build_from_reader_sized`], handing the tree to `dispose` once the image is written. The
/// sandboxed child, which exits right after, passes `std::mem::forget`: freeing the tree's
/// hundred thousand small allocations one by one is work for nothing in a process about to end
/// (15M instructions, 3 % of a cs9 dumpfile build); the kernel takes the pages back at exit.
pub fn build_stream(
    req: &BuildRequest,
    input: &mut dyn Read,
    size_hint: u64,
    out: &mut dyn Write,
    dispose: fn(Tree),
) -> Result<BuildInfo, BuildError> {
    let mut buf = Vec::with_capacity(size_hint.min(req.max_input_bytes).saturating_add(1) as usize);
    // Its first INPUT_HUGE_PAGES bytes are filled 2 MiB at a time (src/sys/mem.rs): a cs9 TOC
    // took 4,700 page faults to read, a tenth of its build time.
    crate::sys::mem::advise_huge_pages(&buf, buf.capacity().min(INPUT_HUGE_PAGES));
    input.take(req.max_input_bytes.saturating_add(1)).read_to_end(&mut buf).map_err(BuildError::Read)?;
    if buf.len() as u64 > req.max_input_bytes {
        return Err(BuildError::Input(format!("input is larger than the limit of {} bytes", req.max_input_bytes)));
    }
    if req.format == InputFormat::Image {
        // Written again as it was: with the image's own format version (composefs-dump).
        let (tree, info) = crate::erofs::reader::read_image_with(&buf, &Default::default())?;
        drop(buf);
        let v = info.composefs_version;
        let r = write_tree(&tree, &WriteOptions { min_version: v, max_version: v }, out);
        dispose(tree);
        return r;
    }
    let mut tree = parse_input(req, &buf)?;
    drop(buf);
    if let Some(dir) = &req.objects {
        record_object_digests(&mut tree, dir, 1)?;
    }
    let r = write_tree(&tree, &req.write, out);
    dispose(tree);
    r
}

/// Write `tree` as an image to `out`, returning its size and version. (The writer buffers its
/// output itself: `out` receives large writes.)
pub(crate) fn write_tree(tree: &Tree, opts: &WriteOptions, out: &mut dyn Write) -> Result<BuildInfo, BuildError> {
    let version = effective_version(tree, opts)?;
    let mut counter = Counter { inner: out, n: 0 };
    write_image(tree, opts, &mut counter)?;
    counter.inner.flush().map_err(BuildError::Write)?;
    Ok(BuildInfo { image_size: counter.n, version })
}

struct Counter<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// For every external regular file, compute the fs-verity digest of its object under `dir`
/// (`dir/PAYLOAD`, opened without following symlinks) and record it. Objects shared by several
/// files are read once. `threads` is passed to the digest (1 inside the sandbox).
fn record_object_digests(tree: &mut Tree, dir: &Path, threads: usize) -> Result<(), BuildError> {
    let mut cache: std::collections::HashMap<Vec<u8>, [u8; 32]> = std::collections::HashMap::new();
    for i in 0..tree.nodes.len() {
        let e = &tree.nodes[i].entry;
        if !e.inode.is_reg() || e.inode.size == 0 || e.content.is_some() || e.fsverity_digest.is_some() {
            continue;
        }
        let Some(payload) = e.payload.clone() else { continue };
        let size = e.inode.size;
        let d = match cache.get(&payload) {
            Some(d) => *d,
            None => {
                use std::os::unix::ffi::OsStrExt;
                let path = dir.join(std::ffi::OsStr::from_bytes(&payload));
                let err = |reason: String| BuildError::Object { path: path.clone(), reason };
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| err(e.to_string()))?;
                let md = f.metadata().map_err(|e| err(e.to_string()))?;
                if !md.is_file() {
                    return Err(err("not a regular file".into()));
                }
                if md.len() != size {
                    return Err(err(format!("object is {} bytes but the entry says {size}", md.len())));
                }
                let d = crate::fsverity::digest_file_with(&f, size, threads).map_err(|e| err(e.to_string()))?;
                cache.insert(payload, d);
                d
            }
        };
        tree.nodes[i].entry.fsverity_digest = Some(d);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_from_reader_toc_and_errors() {
        let json = br#"{"version":1,"entries":[{"type":"reg","name":"a","x-content":"aGk="}]}"#;
        let mut out = Vec::new();
        let info = build_from_reader(&BuildRequest::new(InputFormat::Toc), &mut &json[..], &mut out).unwrap();
        assert_eq!(info.image_size, out.len() as u64);
        assert_eq!(info.version, 0);
        let t = crate::erofs::reader::read_image(&out).unwrap();
        assert_eq!(t.node(t.lookup(b"a").unwrap()).entry.content.as_deref(), Some(&b"hi"[..]));

        let mut req = BuildRequest::new(InputFormat::Toc);
        req.max_input_bytes = 10;
        let e = build_from_reader(&req, &mut &json[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let e = build_from_reader(&BuildRequest::new(InputFormat::Dir), &mut &json[..], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn object_digests_are_recorded() {
        let objects = tempfile::tempdir().unwrap();
        let data = vec![7u8; 9000];
        std::fs::create_dir(objects.path().join("ab")).unwrap();
        std::fs::write(objects.path().join("ab/cdef"), &data).unwrap();
        let json = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":9000,"x-payload":"ab/cdef"},
                                               {"type":"reg","name":"b","size":9000,"x-payload":"ab/cdef"}]}"#;
        let mut req = BuildRequest::new(InputFormat::Toc);
        req.objects = Some(objects.path().to_path_buf());
        let mut out = Vec::new();
        build_from_reader(&req, &mut &json[..], &mut out).unwrap();
        let t = crate::erofs::reader::read_image(&out).unwrap();
        let d = crate::fsverity::digest_bytes(&data);
        assert_eq!(t.node(t.lookup(b"b").unwrap()).entry.fsverity_digest, Some(d));
        // A missing object or a size mismatch is an error naming the object.
        let bad = br#"{"version":1,"entries":[{"type":"reg","name":"a","size":9001,"x-payload":"ab/cdef"}]}"#;
        let e = build_from_reader(&req, &mut &bad[..], &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("ab/cdef") && e.contains("9001"), "{e}");
    }
}
