//! A tar stream reader for hostile layer tars: ustar, GNU and PAX headers, block by block.
//!
//! Hand-written rather than the `tar` crate because a layer import needs what that crate does
//! not give: every byte that is not file content (headers, extension headers, padding, the
//! end-of-archive blocks and what follows) as raw bytes, in order, to check and to write a
//! tar-split; exact stream offsets of every member and of its content; PAX records parsed by
//! their length prefix (the crate splits them at newlines, which breaks values that contain
//! one); and strict numeric fields (base-256 overflow and negative values are errors, not
//! wrapped). Only header fields are decoded here; file contents are handed to the caller.
//!
//! Accepted: ustar, GNU and PAX (`x`) headers, GNU long names (`L`) and long link names (`K`),
//! regular files (`0`, NUL, `7`), hard links, symlinks, character and block devices,
//! directories and fifos. Refused with a message naming the member: PAX global headers (`g`),
//! sparse files (`S`, `GNU.sparse.*`), multi-volume and other GNU extensions, bad checksums,
//! header-only types with a non-zero size, oversized extension headers, and anything but zero
//! bytes after the end-of-archive marker. A stream that ends cleanly at a member boundary
//! without the end-of-archive blocks is accepted (as Go's archive/tar accepts it).

use std::io::{self, Read};

use thiserror::Error;

pub(crate) const BLOCK: usize = 512;
/// Largest PAX extended header accepted (as Go's archive/tar).
pub(crate) const MAX_PAX_BYTES: u64 = 1 << 20;
/// Largest GNU long name / long link name accepted (PATH_MAX).
pub(crate) const MAX_LONGNAME_BYTES: u64 = 4096;
/// Most extension headers (PAX, `L`, `K`) in front of one member.
const MAX_EXTENSION_HEADERS: usize = 8;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Reg,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Reg => "regular file",
            Kind::Hardlink => "hard link",
            Kind::Symlink => "symlink",
            Kind::Char => "character device",
            Kind::Block => "block device",
            Kind::Dir => "directory",
            Kind::Fifo => "fifo",
        }
    }
}

/// One member's metadata after its extension headers were applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct TarEntry {
    /// 0-based member index (extension headers are not members).
    pub index: usize,
    /// Name as stored (PAX `path` > GNU long name > ustar prefix + name), not normalised.
    pub name: Vec<u8>,
    pub kind: Option<Kind>,
    /// Link target (symlinks, hard links).
    pub link: Vec<u8>,
    /// The mode field as stored (may carry file type bits).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// Content bytes that follow the header.
    pub size: u64,
    /// `SCHILY.xattr.*` records, in header order (name without the prefix, raw value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Stream offset of the member's first header block (extension headers included).
    pub offset: u64,
    /// Stream offset of the content.
    pub data_offset: u64,
}

impl TarEntry {
    pub(crate) fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Reg)
    }
}

#[derive(Debug, Error)]
pub enum TarError {
    #[error("tar member {index} ({name}) at offset {offset}: {reason}")]
    Member { index: usize, name: String, offset: u64, reason: String },
    #[error("tar stream at offset {offset}: {reason}")]
    Stream { offset: u64, reason: String },
    #[error("reading the tar stream at offset {offset}: {source}")]
    Io { offset: u64, source: io::Error },
}

enum State {
    /// Between members: the next block is a header.
    Header,
    /// Inside a member's content: `remaining` content bytes, then `pad` padding bytes.
    Content { remaining: u64, pad: u64 },
    /// After the end-of-archive marker.
    End,
}

/// Reads members from a decompressed tar stream.
pub(crate) struct TarReader<R: Read> {
    src: R,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Stream offset of `buf[pos]`.
    offset: u64,
    state: State,
    index: usize,
    /// Collect every non-content byte into `segment` (for tar-split).
    capture: bool,
    segment: Vec<u8>,
    src_eof: bool,
}

const BUF_SIZE: usize = 256 * 1024;

impl<R: Read> TarReader<R> {
    pub(crate) fn new(src: R, capture: bool) -> Self {
        TarReader {
            src,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            len: 0,
            offset: 0,
            state: State::Header,
            index: 0,
            capture,
            segment: Vec::new(),
            src_eof: false,
        }
    }

    /// Stream offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Non-content bytes read since the last call (empty unless capturing).
    pub(crate) fn take_segment(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.segment)
    }

    pub(crate) fn into_inner(self) -> R {
        self.src
    }

    fn io(&self, e: io::Error) -> TarError {
        TarError::Io { offset: self.offset, source: e }
    }

    /// Make at least one byte available; false at the end of the source.
    fn fill(&mut self) -> Result<bool, TarError> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.src_eof {
            return Ok(false);
        }
        self.pos = 0;
        self.len = 0;
        loop {
            match self.src.read(&mut self.buf) {
                Ok(0) => {
                    self.src_eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.len = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Read exactly `out.len()` non-content bytes; Ok(false) if the stream ended before any byte.
    fn read_meta(&mut self, out: &mut [u8]) -> Result<bool, TarError> {
        let mut got = 0;
        while got < out.len() {
            if !self.fill()? {
                if got == 0 {
                    return Ok(false);
                }
                return Err(TarError::Stream {
                    offset: self.offset,
                    reason: format!("truncated: the stream ends inside a {}-byte block", out.len()),
                });
            }
            let n = (self.len - self.pos).min(out.len() - got);
            out[got..got + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            self.offset += n as u64;
            got += n;
        }
        if self.capture {
            self.segment.extend_from_slice(out);
        }
        Ok(true)
    }

    /// Skip `n` non-content bytes (padding), capturing them.
    fn skip_meta(&mut self, mut n: u64, what: &str) -> Result<(), TarError> {
        while n > 0 {
            if !self.fill()? {
                return Err(TarError::Stream { offset: self.offset, reason: format!("truncated inside {what}") });
            }
            let k = ((self.len - self.pos) as u64).min(n) as usize;
            if self.capture {
                self.segment.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            }
            self.pos += k;
            self.offset += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// Read a whole extension header's content (bounded), then its padding.
    fn read_ext(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let mut v = vec![0u8; size as usize];
        if size > 0 && !self.read_meta(&mut v)? {
            return Err(TarError::Stream {
                offset: self.offset,
                reason: "truncated inside an extension header".into(),
            });
        }
        self.skip_meta(pad_of(size), "extension header padding")?;
        Ok(v)
    }

    /// The next member's header, or None after the end-of-archive marker (the rest of the
    /// stream is then checked to be zeros). Any unread content of the previous member is skipped
    /// (as content: it is not captured).
    pub(crate) fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        loop {
            match self.state {
                State::End => return Ok(None),
                State::Content { remaining, pad } => {
                    if remaining > 0 {
                        while self.content_chunk()?.is_some() {}
                        continue;
                    }
                    self.skip_meta(pad, "content padding")?;
                    self.state = State::Header;
                }
                State::Header => break,
            }
        }
        let start = self.offset;
        let mut ext = Extensions::default();
        let mut n_ext = 0;
        loop {
            let mut hdr = [0u8; BLOCK];
            if !self.read_meta(&mut hdr)? {
                if n_ext > 0 {
                    return Err(TarError::Stream {
                        offset: self.offset,
                        reason: "truncated: the stream ends after an extension header".into(),
                    });
                }
                // Ends at a member boundary without the end-of-archive blocks: accepted, as Go's
                // archive/tar does (stargz-snapshotter's zstd:chunked streams end this way).
                self.state = State::End;
                return Ok(None);
            }
            if hdr.iter().all(|&b| b == 0) {
                if n_ext > 0 {
                    return Err(self.member_err(start, &ext.name_hint(), "extension header without a member".into()));
                }
                self.finish_after_zero_block()?;
                return Ok(None);
            }
            let h = Header(&hdr);
            let hint = if ext.path.is_some() || ext.long_name.is_some() { ext.name_hint() } else { h.name_bytes() };
            let index = self.index;
            let err =
                |reason: String| TarError::Member { index, name: crate::tree::show(&hint), offset: start, reason };
            h.check_sum().map_err(&err)?;
            let typ = hdr[156];
            match typ {
                b'x' | b'L' | b'K' => {
                    n_ext += 1;
                    if n_ext > MAX_EXTENSION_HEADERS {
                        return Err(err(format!("more than {MAX_EXTENSION_HEADERS} extension headers in a row")));
                    }
                    let size = h.num(124, 12, "size").map_err(&err)?;
                    let size = u64::try_from(size).map_err(|_| err("negative size".into()))?;
                    let limit = if typ == b'x' { MAX_PAX_BYTES } else { MAX_LONGNAME_BYTES };
                    if size > limit {
                        return Err(err(format!(
                            "{} of {size} bytes (limit {limit})",
                            if typ == b'x' { "PAX header" } else { "GNU long name" }
                        )));
                    }
                    let data = self.read_ext(size)?;
                    match typ {
                        b'x' => ext.apply_pax(&data).map_err(&err)?,
                        b'L' => ext.long_name = Some(cstr(&data).to_vec()),
                        _ => ext.long_link = Some(cstr(&data).to_vec()),
                    }
                    continue;
                }
                b'g' => return Err(err("PAX global headers are not supported".into())),
                _ => {}
            }
            let entry = self.member(&h, ext, start).map_err(&err)?;
            let pad = pad_of(entry.size);
            self.state = State::Content { remaining: entry.size, pad };
            self.index += 1;
            return Ok(Some(TarEntry { data_offset: self.offset, ..entry }));
        }
    }

    fn member_err(&self, offset: u64, name: &[u8], reason: String) -> TarError {
        TarError::Member { index: self.index, name: crate::tree::show(name), offset, reason }
    }

    fn member(&self, h: &Header<'_>, ext: Extensions, start: u64) -> Result<TarEntry, String> {
        let typ = h.0[156];
        let mut name = match (ext.path, ext.long_name) {
            (Some(p), _) => p,
            (None, Some(l)) => l,
            (None, None) => h.name_bytes(),
        };
        let kind = match typ {
            b'0' | b'7' => Kind::Reg,
            0 if name.ends_with(b"/") => Kind::Dir,
            0 => Kind::Reg,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'S' => return Err("sparse files are not supported".into()),
            t => return Err(format!("unsupported entry type {:?}", t as char)),
        };
        if ext.sparse {
            return Err("sparse files (GNU.sparse.* records) are not supported".into());
        }
        let size = match ext.size {
            Some(s) => s,
            None => u64::try_from(h.num(124, 12, "size")?).map_err(|_| "negative size".to_string())?,
        };
        if kind != Kind::Reg && size != 0 {
            return Err(format!("a {} with a size of {size} bytes (must be 0)", kind.name()));
        }
        let link = match ext.link_path.or(ext.long_link) {
            Some(l) => l,
            None => cstr(&h.0[157..257]).to_vec(),
        };
        let nonneg = |v: i64, f: &str| u64::try_from(v).map_err(|_| format!("{f}: negative value {v}"));
        let uid = match ext.uid {
            Some(v) => v,
            None => nonneg(h.num(108, 8, "uid")?, "uid")?,
        };
        let gid = match ext.gid {
            Some(v) => v,
            None => nonneg(h.num(116, 8, "gid")?, "gid")?,
        };
        let (mtime, mtime_nsec) = match ext.mtime {
            Some(t) => t,
            None => (h.num(136, 12, "mtime")?, 0),
        };
        let mode = h.num(100, 8, "mode")?;
        let mode = u32::try_from(mode).ok().filter(|m| *m <= 0o177777).ok_or(format!("mode {mode} out of range"))?;
        let (dev_major, dev_minor) = if h.is_ustar_or_gnu() && matches!(kind, Kind::Char | Kind::Block) {
            (nonneg(h.num(329, 8, "devmajor")?, "devmajor")?, nonneg(h.num(337, 8, "devminor")?, "devminor")?)
        } else {
            (0, 0)
        };
        if name.is_empty() {
            return Err("empty name".into());
        }
        if name.contains(&0) || link.contains(&0) {
            return Err("NUL byte in a name".into());
        }
        name.shrink_to_fit();
        Ok(TarEntry {
            index: self.index,
            name,
            kind: Some(kind),
            link,
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            dev_major,
            dev_minor,
            size,
            xattrs: ext.xattrs,
            offset: start,
            data_offset: 0,
        })
    }

    /// The next piece of the current member's content, or None when it is all read.
    pub(crate) fn content_chunk(&mut self) -> Result<Option<&[u8]>, TarError> {
        let State::Content { remaining, pad } = self.state else { return Ok(None) };
        if remaining == 0 {
            return Ok(None);
        }
        if !self.fill()? {
            return Err(TarError::Stream {
                offset: self.offset,
                reason: format!("truncated: {remaining} bytes of member {} content missing", self.index - 1),
            });
        }
        let k = ((self.len - self.pos) as u64).min(remaining) as usize;
        let start = self.pos;
        self.pos += k;
        self.offset += k as u64;
        self.state = State::Content { remaining: remaining - k as u64, pad };
        Ok(Some(&self.buf[start..start + k]))
    }

    /// After a zero block: the end-of-archive marker is two zero blocks (one followed by the end
    /// of the stream is accepted); whatever follows must be zeros.
    fn finish_after_zero_block(&mut self) -> Result<(), TarError> {
        self.state = State::End;
        loop {
            if !self.fill()? {
                return Ok(());
            }
            let chunk = &self.buf[self.pos..self.len];
            if let Some(i) = chunk.iter().position(|&b| b != 0) {
                return Err(TarError::Stream {
                    offset: self.offset + i as u64,
                    reason: "non-zero data after the end-of-archive marker".into(),
                });
            }
            let n = chunk.len();
            if self.capture {
                self.segment.extend_from_slice(chunk);
            }
            self.pos = self.len;
            self.offset += n as u64;
        }
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Bytes up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

struct Header<'a>(&'a [u8; BLOCK]);

impl Header<'_> {
    fn is_ustar(&self) -> bool {
        &self.0[257..263] == b"ustar\0"
    }
    fn is_ustar_or_gnu(&self) -> bool {
        &self.0[257..262] == b"ustar"
    }

    fn name_bytes(&self) -> Vec<u8> {
        let name = cstr(&self.0[0..100]);
        if self.is_ustar() {
            let prefix = cstr(&self.0[345..500]);
            if !prefix.is_empty() {
                let mut v = prefix.to_vec();
                v.push(b'/');
                v.extend_from_slice(name);
                return v;
            }
        }
        name.to_vec()
    }

    fn check_sum(&self) -> Result<(), String> {
        let stored = self.num(148, 8, "checksum")?;
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, &b) in self.0.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += i64::from(b);
            signed += i64::from(b as i8);
        }
        if stored != unsigned && stored != signed {
            return Err(format!("header checksum {stored} does not match the header (computed {unsigned})"));
        }
        Ok(())
    }

    /// A numeric field: octal text (spaces and NULs around it ignored; empty is 0) or GNU
    /// base-256 (first byte 0x80 positive, 0xff negative).
    fn num(&self, off: usize, len: usize, field: &str) -> Result<i64, String> {
        parse_numeric(&self.0[off..off + len]).map_err(|r| format!("{field} field: {r}"))
    }
}

pub(crate) fn parse_numeric(b: &[u8]) -> Result<i64, String> {
    if b[0] & 0x80 != 0 {
        let neg = b[0] == 0xff;
        if !neg && b[0] != 0x80 {
            return Err("unsupported base-256 lead byte".into());
        }
        let mut v: i128 = 0;
        for &c in &b[1..] {
            let c = if neg { !c } else { c };
            v = (v << 8) | i128::from(c);
            if v > i128::from(i64::MAX) {
                return Err("base-256 value out of range".into());
            }
        }
        let v = v as i64;
        return Ok(if neg { -v - 1 } else { v });
    }
    let t = trim(b);
    if t.is_empty() {
        return Ok(0);
    }
    let mut v: i64 = 0;
    for &c in t {
        if !(b'0'..=b'7').contains(&c) {
            return Err(format!("{:?} is not an octal number", String::from_utf8_lossy(t)));
        }
        v = v.checked_mul(8).and_then(|v| v.checked_add(i64::from(c - b'0'))).ok_or("octal value out of range")?;
    }
    Ok(v)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | 0, rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | 0] = b {
        b = rest;
    }
    b
}

/// Extension records gathered in front of one member.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link_path: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

impl Extensions {
    fn name_hint(&self) -> Vec<u8> {
        self.path.clone().or_else(|| self.long_name.clone()).unwrap_or_default()
    }

    /// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
    fn apply_pax(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let sp = data.iter().take(20).position(|&b| b == b' ').ok_or("PAX record without a length")?;
            let len: usize = std::str::from_utf8(&data[..sp])
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or("PAX record with a bad length")?;
            if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
                return Err("PAX record length does not match the record".into());
            }
            let rec = &data[sp + 1..len - 1];
            let eq = rec.iter().position(|&b| b == b'=').ok_or("PAX record without '='")?;
            let (key, value) = (&rec[..eq], &rec[eq + 1..]);
            if key.is_empty() {
                return Err("PAX record with an empty key".into());
            }
            self.record(key, value)?;
            data = &data[len..];
        }
        Ok(())
    }

    fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let text = |what: &str| -> Result<&str, String> {
            std::str::from_utf8(value).map_err(|_| format!("PAX {what} is not text"))
        };
        let dec = |what: &str| -> Result<u64, String> {
            let s = text(what)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("PAX {what} {s:?} is not a decimal number"));
            }
            s.parse().map_err(|_| format!("PAX {what} {s:?} out of range"))
        };
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"linkpath" => self.link_path = Some(value.to_vec()),
            b"size" => self.size = Some(dec("size")?),
            b"uid" => self.uid = Some(dec("uid")?),
            b"gid" => self.gid = Some(dec("gid")?),
            b"mtime" => self.mtime = Some(parse_pax_time(text("mtime")?)?),
            b"atime" | b"ctime" => {
                parse_pax_time(text(std::str::from_utf8(key).unwrap_or("time"))?)?;
            }
            k if k.starts_with(b"GNU.sparse.") => self.sparse = true,
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = &k[b"SCHILY.xattr.".len()..];
                if name.is_empty() {
                    return Err("PAX xattr record with an empty name".into());
                }
                match self.xattrs.iter_mut().find(|(n, _)| n == name) {
                    Some(x) => x.1 = value.to_vec(),
                    None => self.xattrs.push((name.to_vec(), value.to_vec())),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// PAX time `[-]SECONDS[.FRACTION]` → (seconds, nanoseconds), the fraction cut after 9 digits.
pub(crate) fn parse_pax_time(s: &str) -> Result<(i64, u32), String> {
    let bad = || format!("PAX time {:?} is not [-]SECONDS[.FRACTION]", s.chars().take(40).collect::<String>());
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = match body.split_once('.') {
        Some((a, b)) => (a, b),
        None => (body, ""),
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let mut nsec: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Ok((secs, nsec));
    }
    // -S.F = -(S+1) + (1 - 0.F)
    if nsec == 0 {
        Ok((-secs, 0))
    } else {
        Ok((-secs - 1, 1_000_000_000 - nsec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header block with a correct checksum.
    pub(crate) fn header(name: &[u8], typ: u8, size: u64, link: &[u8]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14751261355");
        h[156] = typ;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in records {
            let body_len = k.len() + val.len() + 3;
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            v.extend_from_slice(format!("{len} {k}=").as_bytes());
            v.extend_from_slice(val);
            v.push(b'\n');
        }
        v
    }

    fn padded(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(TarEntry, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(bytes, true);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            let mut c = Vec::new();
            while let Some(b) = r.content_chunk()? {
                c.extend_from_slice(b);
            }
            out.push((e, c));
        }
        Ok(out)
    }

    #[test]
    fn reads_ustar_pax_and_gnu_long_names() {
        let mut t = Vec::new();
        t.extend_from_slice(&header(b"./a", b'0', 3, b""));
        t.extend_from_slice(&padded(b"abc".to_vec()));
        let recs =
            pax(&[("path", b"x/new\nline"), ("mtime", b"1700039677.614202163"), ("SCHILY.xattr.user.k", b"v\n\0w")]);
        t.extend_from_slice(&header(b"PaxHeaders/x", b'x', recs.len() as u64, b""));
        t.extend_from_slice(&padded(recs));
        t.extend_from_slice(&header(b"short", b'5', 0, b""));
        let long = vec![b'n'; 300];
        t.extend_from_slice(&header(b"././@LongLink", b'L', long.len() as u64 + 1, b""));
        let mut ln = long.clone();
        ln.push(0);
        t.extend_from_slice(&padded(ln));
        t.extend_from_slice(&header(b"trunc", b'2', 0, b"target"));
        t.extend_from_slice(&[0u8; 1024 + 512]);
        let es = read_all(&t).unwrap();
        assert_eq!(es.len(), 3);
        assert_eq!(es[0].0.name, b"./a");
        assert_eq!(es[0].1, b"abc");
        assert_eq!(es[0].0.data_offset, 512);
        assert_eq!(es[1].0.name, b"x/new\nline");
        assert_eq!(es[1].0.kind(), Kind::Dir);
        assert_eq!((es[1].0.mtime, es[1].0.mtime_nsec), (1700039677, 614202163));
        assert_eq!(es[1].0.xattrs, vec![(b"user.k".to_vec(), b"v\n\0w".to_vec())]);
        assert_eq!(es[2].0.name, long);
        assert_eq!(es[2].0.link, b"target");
    }

    #[test]
    fn refuses_hostile_members() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut h = header(b"a", b'0', 0, b"");
                    h[0] = b'b';
                    h.to_vec()
                },
                "checksum",
            ),
            (header(b"a", b'g', 0, b"").to_vec(), "global"),
            (header(b"a", b'S', 0, b"").to_vec(), "sparse"),
            (header(b"a", b'5', 10, b"").to_vec(), "must be 0"),
            (header(b"a", b'x', MAX_PAX_BYTES + 1, b"").to_vec(), "limit"),
            (header(b"a", b'0', 100, b"").to_vec(), "truncated"),
            ([header(b"a", b'0', 600, b"").as_slice(), &[0u8; 512]].concat(), "truncated"),
            ([header(b"a", b'0', 0, b"").as_slice(), &[0u8; 1024], b"x"].concat(), "after the end"),
        ];
        for (bytes, needle) in cases {
            let e = read_all(&bytes).expect_err(needle).to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(parse_numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"  \0\0").unwrap(), 0);
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert_eq!(parse_numeric(&[0xff; 8]).unwrap(), -1);
        assert!(parse_numeric(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_numeric(b"12a4").is_err());
        assert_eq!(parse_pax_time("-1.25").unwrap(), (-2, 750_000_000));
        assert_eq!(parse_pax_time("5.1234567891").unwrap(), (5, 123_456_789));
        assert!(parse_pax_time("1e9").is_err());
    }
}
