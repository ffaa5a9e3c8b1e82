//! Decompressing readers over a blob region that record where each zstd frame / gzip member
//! starts (compressed offset → stream offset), so that TOC offsets can be checked, and that
//! refuse to produce more than a set number of bytes (decompression bombs).

use std::io::{self, BufRead, Read};

use sha2::{Digest, Sha256};

/// (compressed offset in the blob, offset in the decompressed stream) of a frame/member start.
pub(crate) type FrameStart = (u64, u64);

/// Reads `[start, end)` of a file through a buffer, counting what it hands out.
pub(crate) struct Region<R: Read> {
    src: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Blob offset of `buf[pos]`.
    at: u64,
    end: u64,
    /// sha256 of every byte read from the source, when asked (the blob digest).
    hash: Option<Sha256>,
}

impl<R: Read> Region<R> {
    /// `src` must be positioned at `start`.
    pub(crate) fn new(src: R, start: u64, end: u64, hash: bool) -> Self {
        Region {
            src,
            buf: vec![0u8; 256 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            at: start,
            end,
            hash: hash.then(Sha256::new),
        }
    }
    pub(crate) fn offset(&self) -> u64 {
        self.at
    }
    pub(crate) fn at_end(&mut self) -> io::Result<bool> {
        Ok(self.fill_buf()?.is_empty())
    }
    pub(crate) fn into_parts(self) -> (R, Option<Sha256>) {
        (self.src, self.hash)
    }
}

impl<R: Read> BufRead for Region<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            let left = self.end - self.at;
            if left == 0 {
                return Ok(&[]);
            }
            let want = (self.buf.len() as u64).min(left) as usize;
            let n = loop {
                match self.src.read(&mut self.buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("blob ends at offset {}", self.at)));
            }
            if let Some(h) = &mut self.hash {
                h.update(&self.buf[..n]);
            }
            self.pos = 0;
            self.len = n;
        }
        Ok(&self.buf[self.pos..self.len])
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.at += n as u64;
    }
}

impl<R: Read> Read for Region<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let b = self.fill_buf()?;
        let n = b.len().min(out.len());
        out[..n].copy_from_slice(&b[..n]);
        self.consume(n);
        Ok(n)
    }
}

fn bomb(limit: u64) -> io::Error {
    io::Error::other(format!(
        "the decompressed stream exceeds {limit} bytes (decompression limit; see --max-uncompressed)"
    ))
}

/// A zstd stream (any number of frames, skippable frames skipped) over a [`Region`].
pub(crate) struct ZstdStream<R: Read> {
    src: Region<R>,
    dctx: zstd_safe::DCtx<'static>,
    out_total: u64,
    at_frame_start: bool,
    pub(crate) frames: Vec<FrameStart>,
    limit: u64,
}

impl<R: Read> ZstdStream<R> {
    pub(crate) fn new(src: Region<R>, limit: u64) -> io::Result<Self> {
        let mut dctx =
            zstd_safe::DCtx::try_create().ok_or_else(|| io::Error::other("zstd: cannot create a context"))?;
        // Frames needing a window above 128 MiB (zstd --long=28 and more) are refused.
        dctx.set_parameter(zstd_safe::DParameter::WindowLogMax(27)).map_err(zstd_err)?;
        Ok(ZstdStream { src, dctx, out_total: 0, at_frame_start: true, frames: Vec::new(), limit })
    }
    pub(crate) fn into_region(self) -> Region<R> {
        self.src
    }
}

fn zstd_err(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

impl<R: Read> Read for ZstdStream<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let offset = self.src.offset();
            let input = self.src.fill_buf()?;
            if input.is_empty() {
                if self.at_frame_start {
                    return Ok(0);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("zstd: truncated frame (the data ends at offset {offset})"),
                ));
            }
            if self.at_frame_start {
                self.frames.push((offset, self.out_total));
                self.at_frame_start = false;
            }
            let mut inb = zstd_safe::InBuffer::around(input);
            let mut outb = zstd_safe::OutBuffer::around(&mut *out);
            let hint = self.dctx.decompress_stream(&mut outb, &mut inb).map_err(zstd_err)?;
            let (used, produced) = (inb.pos(), outb.pos());
            self.src.consume(used);
            self.out_total += produced as u64;
            if self.out_total > self.limit {
                return Err(bomb(self.limit));
            }
            if hint == 0 {
                self.at_frame_start = true;
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

/// Concatenated gzip members over a [`Region`] (each member's start recorded).
pub(crate) struct GzipStream<R: Read> {
    member: Option<flate2::bufread::GzDecoder<Region<R>>>,
    idle: Option<Region<R>>,
    out_total: u64,
    pub(crate) frames: Vec<FrameStart>,
    limit: u64,
}

impl<R: Read> GzipStream<R> {
    pub(crate) fn new(src: Region<R>, limit: u64) -> Self {
        GzipStream { member: None, idle: Some(src), out_total: 0, frames: Vec::new(), limit }
    }
    pub(crate) fn into_region(self) -> Region<R> {
        match (self.member, self.idle) {
            (Some(m), _) => m.into_inner(),
            (None, Some(r)) => r,
            (None, None) => unreachable!("gzip stream without a source"),
        }
    }
}

impl<R: Read> Read for GzipStream<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.member.is_none() {
                let mut r = self.idle.take().expect("gzip source");
                if r.at_end()? {
                    self.idle = Some(r);
                    return Ok(0);
                }
                self.frames.push((r.offset(), self.out_total));
                self.member = Some(flate2::bufread::GzDecoder::new(r));
            }
            let m = self.member.as_mut().expect("member");
            let n = m.read(out).map_err(|e| io::Error::new(e.kind(), format!("gzip: {e}")))?;
            if n == 0 {
                let m = self.member.take().expect("member");
                self.idle = Some(m.into_inner());
                continue;
            }
            self.out_total += n as u64;
            if self.out_total > self.limit {
                return Err(bomb(self.limit));
            }
            return Ok(n);
        }
    }
}

/// A reader that hashes what passes through (the tar stream: the diff_id).
pub(crate) struct Hashing<R: Read> {
    pub(crate) inner: R,
    pub(crate) hash: Option<Sha256>,
    pub(crate) count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        if let Some(h) = &mut self.hash {
            h.update(&out[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// The tar stream of a layer, whatever its compression.
pub(crate) enum Decoded<R: Read> {
    Plain(Region<R>),
    Zstd(ZstdStream<R>),
    Gzip(Box<GzipStream<R>>),
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Plain(r) => r.read(out),
            Decoded::Zstd(z) => z.read(out),
            Decoded::Gzip(g) => g.read(out),
        }
    }
}

impl<R: Read> Decoded<R> {
    pub(crate) fn frames(&self) -> &[FrameStart] {
        match self {
            Decoded::Plain(_) => &[],
            Decoded::Zstd(z) => &z.frames,
            Decoded::Gzip(g) => &g.frames,
        }
    }
    pub(crate) fn into_region(self) -> Region<R> {
        match self {
            Decoded::Plain(r) => r,
            Decoded::Zstd(z) => z.into_region(),
            Decoded::Gzip(g) => (*g).into_region(),
        }
    }
}

/// Decompress a whole small buffer (TOC, tar-split), refusing more than `max` bytes out.
pub(crate) fn zstd_all(data: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let mut z = ZstdStream::new(Region::new(data, 0, data.len() as u64, false), max)?;
    let mut out = Vec::new();
    z.read_to_end(&mut out)?;
    Ok(out)
}

/// Decompress a gzip member sequence fully, refusing more than `max` bytes out.
pub(crate) fn gzip_all(data: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let mut g = GzipStream::new(Region::new(data, 0, data.len() as u64, false), max);
    let mut out = Vec::new();
    g.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_frames_are_recorded_and_bombs_refused() {
        let a = zstd::bulk::compress(b"hello ", 3).unwrap();
        let b = zstd::bulk::compress(b"world", 3).unwrap();
        let blob = [a.clone(), b].concat();
        let mut z = ZstdStream::new(Region::new(&blob[..], 0, blob.len() as u64, true), 1 << 20).unwrap();
        let mut out = Vec::new();
        z.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(z.frames, vec![(0, 0), (a.len() as u64, 6)]);
        let e = zstd_all(&zstd::bulk::compress(&vec![0u8; 10_000], 3).unwrap(), 9_999).unwrap_err();
        assert!(e.to_string().contains("exceeds 9999"), "{e}");
        let e = zstd_all(&a[..a.len() - 2], 100).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn gzip_members_are_recorded() {
        use std::io::Write;
        let gz = |d: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let a = gz(b"abc");
        let blob = [a.clone(), gz(b"def")].concat();
        let mut g = GzipStream::new(Region::new(&blob[..], 0, blob.len() as u64, false), 100);
        let mut out = Vec::new();
        g.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcdef");
        assert_eq!(g.frames, vec![(0, 0), (a.len() as u64, 3)]);
        assert!(gzip_all(&blob, 5).is_err());
    }
}
