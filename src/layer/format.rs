//! Which kind of layer blob this is, from its bytes (and the descriptor's annotations):
//! plain tar, gzip, zstd, zstd:chunked (40-, 56- and 64-byte footers, or annotations), eStargz
//! (51-byte footer, legacy 47-byte footer). The footers are hand-parsed: they are a few fixed
//! fields that no crate reads.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Largest TOC or tar-split frame accepted, compressed or not (containers/storage's cap).
pub const MAX_TOC_BYTES: u64 = 150 << 20;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const CHUNKED_MAGIC_OLD: &[u8; 8] = b"GnUlInUx";
const CHUNKED_MAGIC: &[u8; 8] = b"GNUlInUx";

pub const ANN_TOC_DIGEST: &str = "io.github.containers.zstd-chunked.manifest-checksum";
pub const ANN_TOC_POS: &str = "io.github.containers.zstd-chunked.manifest-position";
pub const ANN_TARSPLIT_POS: &str = "io.github.containers.zstd-chunked.tarsplit-position";
pub const ANN_TARSPLIT_DIGEST: &str = "io.github.containers.zstd-chunked.tarsplit-checksum";
pub const ANN_OLD_TOC_DIGEST: &str = "io.containers.zstd-chunked.manifest-checksum";
pub const ANN_OLD_TOC_POS: &str = "io.containers.zstd-chunked.manifest-position";
pub const ANN_STARGZ_TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
pub const ANN_STARGZ_USIZE: &str = "io.containers.estargz.uncompressed-size";

/// An OCI descriptor (only what a layer import uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(json).map_err(|e| format!("descriptor: {e}"))
    }
    fn ann(&self, k: &str) -> Option<&str> {
        self.annotations.get(k).map(String::as_str)
    }
}

/// `sha256:` + 64 lowercase hex → the 32 bytes.
pub fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let hex = s.strip_prefix("sha256:").ok_or_else(|| format!("{:?} is not a sha256: digest", short(s)))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("{:?} is not sha256: followed by 64 lowercase hex digits", short(s)));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
    }
    Ok(out)
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A region of the blob holding a compressed frame payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub offset: u64,
    pub len: u64,
    pub ulen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footer {
    /// 40 bytes, `GnUlInUx` last (containers/storage ≤ 1.46, stargz-snapshotter).
    V40,
    /// 56 bytes, `GnUlInUx` at byte 32 then 16 zero bytes (containers/storage 1.47–1.49).
    V56,
    /// 64 bytes, `GNUlInUx` last, with the tar-split position (containers/storage ≥ 1.50).
    V64,
    /// No footer: positions from the annotations only.
    None,
}

#[derive(Debug, Clone)]
pub enum Layout {
    Tar,
    Gzip,
    Zstd,
    ZstdChunked {
        footer: Footer,
        toc: Pos,
        /// sha256 of the compressed TOC frame (annotation), when given.
        toc_digest: Option<[u8; 32]>,
        tarsplit: Option<Pos>,
        /// sha256 of the compressed tar-split (the 1.48/1.49 annotation), when given.
        tarsplit_digest: Option<[u8; 32]>,
        /// sha256 of the uncompressed TOC (stargz-snapshotter's annotation), when given.
        stargz_toc_digest: Option<[u8; 32]>,
        /// Where the layer data (the tar stream's frames) ends.
        data_end: u64,
    },
    Estargz {
        legacy_footer: bool,
        toc_offset: u64,
        toc_digest: Option<[u8; 32]>,
        /// Where the footer member starts.
        footer_start: u64,
    },
}

impl Layout {
    pub fn name(&self) -> String {
        match self {
            Layout::Tar => "tar".into(),
            Layout::Gzip => "tar+gzip".into(),
            Layout::Zstd => "tar+zstd".into(),
            Layout::ZstdChunked { footer, .. } => format!(
                "zstd:chunked ({})",
                match footer {
                    Footer::V40 => "40-byte footer",
                    Footer::V56 => "56-byte footer",
                    Footer::V64 => "64-byte footer",
                    Footer::None => "positions from annotations",
                }
            ),
            Layout::Estargz { legacy_footer: true, .. } => "eStargz (legacy 47-byte footer)".into(),
            Layout::Estargz { .. } => "eStargz".into(),
        }
    }
}

/// Random access to the blob for detection (seek + read; no pread in the sandbox's policy).
pub trait ReadAt {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        self.seek(SeekFrom::Start(off))?;
        self.read_exact(buf)
    }
}

impl ReadAt for &[u8] {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let s = usize::try_from(off).ok().filter(|s| s.saturating_add(buf.len()) <= self.len());
        let s = s.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "beyond the blob"))?;
        buf.copy_from_slice(&self[s..s + buf.len()]);
        Ok(())
    }
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn parse_pos(s: &str, with_type: bool, what: &str) -> Result<Pos, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let n = if with_type { 4 } else { 3 };
    let nums: Option<Vec<u64>> = parts.iter().map(|p| p.parse::<u64>().ok()).collect();
    match nums {
        Some(v) if v.len() == n => {
            if with_type && v[3] != 1 {
                return Err(format!("{what}: manifest type {} is not 1 (CRFS)", v[3]));
            }
            Ok(Pos { offset: v[0], len: v[1], ulen: v[2] })
        }
        _ => Err(format!("{what}: {:?} is not {} numbers separated by ':'", short(s), n)),
    }
}

fn opt_digest(d: &Descriptor, key: &str) -> Result<Option<[u8; 32]>, String> {
    d.ann(key).map(|v| parse_sha256(v).map_err(|r| format!("annotation {key}: {r}"))).transpose()
}

/// Detect the layout of a blob of `size` bytes.
pub fn detect(blob: &mut dyn ReadAt, size: u64, desc: &Descriptor) -> Result<Layout, String> {
    if size < 4 {
        return Err(format!("blob of {size} bytes is too short to be a layer"));
    }
    let mut head = [0u8; 4];
    blob.read_at(0, &mut head).map_err(|e| format!("reading the blob: {e}"))?;
    if head == ZSTD_MAGIC || head == SKIPPABLE_MAGIC {
        return detect_zstd(blob, size, desc);
    }
    if head[..2] == [0x1f, 0x8b] {
        return detect_gzip(blob, size, desc);
    }
    if size >= 512 && size % 512 == 0 {
        let mut h = [0u8; 512];
        blob.read_at(0, &mut h).map_err(|e| format!("reading the blob: {e}"))?;
        if &h[257..262] == b"ustar" || h.iter().all(|&b| b == 0) {
            return Ok(Layout::Tar);
        }
    }
    Err("unknown layer format: not zstd, gzip or a tar archive".into())
}

fn detect_zstd(blob: &mut dyn ReadAt, size: u64, desc: &Descriptor) -> Result<Layout, String> {
    let read_err = |e: std::io::Error| format!("reading the footer: {e}");
    // The footer, if any, is the payload of the last (skippable) frame.
    let mut tail = [0u8; 72];
    let tail_len = size.min(72) as usize;
    blob.read_at(size - tail_len as u64, &mut tail[72 - tail_len..]).map_err(read_err)?;
    let framed = |len: usize| -> bool {
        tail_len >= len + 8
            && tail[64 - len..68 - len] == SKIPPABLE_MAGIC
            && le64_32(&tail[68 - len..72 - len]) == len as u32
    };
    let (footer, fpos, fsplit) = if framed(64) && &tail[64..72] == CHUNKED_MAGIC {
        let f = &tail[8..72];
        let toc = Pos { offset: le64(&f[0..]), len: le64(&f[8..]), ulen: le64(&f[16..]) };
        if le64(&f[24..]) != 1 {
            return Err(format!("zstd:chunked footer: manifest type {} is not 1 (CRFS)", le64(&f[24..])));
        }
        let ts = Pos { offset: le64(&f[32..]), len: le64(&f[40..]), ulen: le64(&f[48..]) };
        (Footer::V64, Some(toc), (ts.offset != 0).then_some(ts))
    } else if framed(56) && &tail[48..56] == CHUNKED_MAGIC_OLD && tail[56..72].iter().all(|&b| b == 0) {
        let f = &tail[16..72];
        if le64(&f[24..]) != 1 {
            return Err(format!("zstd:chunked footer: manifest type {} is not 1 (CRFS)", le64(&f[24..])));
        }
        (Footer::V56, Some(Pos { offset: le64(&f[0..]), len: le64(&f[8..]), ulen: le64(&f[16..]) }), None)
    } else if framed(40) && &tail[64..72] == CHUNKED_MAGIC_OLD {
        let f = &tail[32..72];
        if le64(&f[24..]) != 1 {
            return Err(format!("zstd:chunked footer: manifest type {} is not 1 (CRFS)", le64(&f[24..])));
        }
        (Footer::V40, Some(Pos { offset: le64(&f[0..]), len: le64(&f[8..]), ulen: le64(&f[16..]) }), None)
    } else {
        (Footer::None, None, None)
    };
    // The descriptor's annotations win (as in containers/storage); a footer must agree with them.
    let ann_pos_key = if desc.ann(ANN_TOC_POS).is_some() { ANN_TOC_POS } else { ANN_OLD_TOC_POS };
    let ann_digest_key = if desc.ann(ANN_TOC_DIGEST).is_some() { ANN_TOC_DIGEST } else { ANN_OLD_TOC_DIGEST };
    let apos = desc.ann(ann_pos_key).map(|s| parse_pos(s, true, ann_pos_key)).transpose()?;
    let asplit = desc.ann(ANN_TARSPLIT_POS).map(|s| parse_pos(s, false, ANN_TARSPLIT_POS)).transpose()?;
    let toc = match (apos, fpos) {
        (Some(a), Some(f)) if a != f => {
            return Err(format!(
                "the annotation {ann_pos_key} ({}:{}:{}) and the blob's footer ({}:{}:{}) disagree on the TOC position",
                a.offset, a.len, a.ulen, f.offset, f.len, f.ulen
            ))
        }
        (Some(a), _) => a,
        (None, Some(f)) => f,
        (None, None) => return Ok(Layout::Zstd),
    };
    let tarsplit = match (asplit, fsplit) {
        (Some(a), Some(f)) if a != f => {
            return Err(format!(
                "the annotation {ANN_TARSPLIT_POS} and the blob's footer disagree on the tar-split position"
            ))
        }
        (a, f) => a.or(f),
    };
    for (what, p) in [("TOC", Some(toc)), ("tar-split", tarsplit)] {
        let Some(p) = p else { continue };
        if p.len > MAX_TOC_BYTES || p.ulen > MAX_TOC_BYTES {
            return Err(format!(
                "zstd:chunked {what} frame of {} bytes ({} uncompressed) is over the limit of {MAX_TOC_BYTES} bytes",
                p.len, p.ulen
            ));
        }
        if p.offset < 8 || p.offset.checked_add(p.len).is_none_or(|e| e > size) {
            return Err(format!(
                "zstd:chunked {what} position {}:{} lies outside the blob of {size} bytes",
                p.offset, p.len
            ));
        }
    }
    let data_end = tarsplit.map_or(toc.offset, |t| t.offset.min(toc.offset)) - 8;
    Ok(Layout::ZstdChunked {
        footer,
        toc,
        toc_digest: opt_digest(desc, ann_digest_key)?,
        tarsplit,
        tarsplit_digest: opt_digest(desc, ANN_TARSPLIT_DIGEST)?,
        stargz_toc_digest: opt_digest(desc, ANN_STARGZ_TOC_DIGEST)?,
        data_end,
    })
}

fn le64_32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn detect_gzip(blob: &mut dyn ReadAt, size: u64, desc: &Descriptor) -> Result<Layout, String> {
    for (len, legacy) in [(51u64, false), (47u64, true)] {
        if size < len {
            continue;
        }
        let mut f = vec![0u8; len as usize];
        blob.read_at(size - len, &mut f).map_err(|e| format!("reading the footer: {e}"))?;
        let Some(hex) = stargz_footer(&f, legacy) else { continue };
        let toc_offset = u64::from_str_radix(hex, 16).map_err(|_| format!("eStargz footer: bad TOC offset {hex:?}"))?;
        let footer_start = size - len;
        if toc_offset >= footer_start {
            return Err(format!(
                "eStargz footer: TOC offset {toc_offset} lies outside the blob's data ({footer_start} bytes)"
            ));
        }
        if footer_start - toc_offset > MAX_TOC_BYTES {
            return Err(format!(
                "eStargz TOC of {} bytes is over the limit of {MAX_TOC_BYTES} bytes",
                footer_start - toc_offset
            ));
        }
        return Ok(Layout::Estargz {
            legacy_footer: legacy,
            toc_offset,
            toc_digest: opt_digest(desc, ANN_STARGZ_TOC_DIGEST)?,
            footer_start,
        });
    }
    Ok(Layout::Gzip)
}

/// The 16 hex digits of an eStargz footer, if `f` is one.
fn stargz_footer(f: &[u8], legacy: bool) -> Option<&str> {
    if f[..4] != [0x1f, 0x8b, 8, 4] {
        return None;
    }
    let xlen = u16::from_le_bytes([f[10], f[11]]) as usize;
    let extra = if legacy {
        (xlen == 22).then(|| &f[12..34])?
    } else {
        if xlen != 26 || &f[12..14] != b"SG" || u16::from_le_bytes([f[14], f[15]]) != 22 {
            return None;
        }
        &f[16..38]
    };
    let rest = &f[12 + xlen..];
    if &extra[16..] != b"STARGZ" || rest[..5] != [1, 0, 0, 0xff, 0xff] || rest[5..13].iter().any(|&b| b != 0) {
        return None;
    }
    std::str::from_utf8(&extra[..16]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_footers() {
        let mut blob = vec![0x28, 0xb5, 0x2f, 0xfd];
        blob.resize(100, 0);
        let mut f = Vec::new();
        for v in [20u64, 30, 90, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(CHUNKED_MAGIC_OLD);
        let mut b40 = blob.clone();
        b40.extend_from_slice(&SKIPPABLE_MAGIC);
        b40.extend_from_slice(&40u32.to_le_bytes());
        b40.extend_from_slice(&f);
        let l = detect(&mut &b40[..], b40.len() as u64, &Descriptor::default()).unwrap();
        assert!(matches!(
            l,
            Layout::ZstdChunked { footer: Footer::V40, toc: Pos { offset: 20, len: 30, ulen: 90 }, .. }
        ));
        let mut d = Descriptor::default();
        d.annotations.insert(ANN_OLD_TOC_POS.into(), "21:30:90:1".into());
        let e = detect(&mut &b40[..], b40.len() as u64, &d).unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        d.annotations.insert(ANN_OLD_TOC_POS.into(), "20:300:90:1".into());
        d.annotations.insert(ANN_TOC_POS.into(), "20:300:90:1".into());
        let e = detect(&mut &blob[..], blob.len() as u64, &d).unwrap_err();
        assert!(e.contains("outside the blob"), "{e}");
        d.annotations.insert(ANN_TOC_POS.into(), format!("20:{}:90:1", MAX_TOC_BYTES + 1));
        let e = detect(&mut &blob[..], blob.len() as u64, &d).unwrap_err();
        assert!(e.contains("over the limit"), "{e}");
        assert!(matches!(detect(&mut &blob[..], 100, &Descriptor::default()).unwrap(), Layout::Zstd));
        // eStargz: the 51-byte footer and the legacy 47-byte one (gzip members with empty bodies).
        let gz_footer = |extra: &[u8]| {
            let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255];
            f.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            f.extend_from_slice(extra);
            f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
            f
        };
        let mut new_extra = b"SG".to_vec();
        new_extra.extend_from_slice(&22u16.to_le_bytes());
        new_extra.extend_from_slice(b"0000000000000010STARGZ");
        for (extra, legacy) in [(new_extra, false), (b"0000000000000010STARGZ".to_vec(), true)] {
            let mut b = vec![0x1f, 0x8b];
            b.resize(40, 0);
            let f = gz_footer(&extra);
            assert_eq!(f.len(), if legacy { 47 } else { 51 });
            b.extend_from_slice(&f);
            match detect(&mut &b[..], b.len() as u64, &Descriptor::default()).unwrap() {
                Layout::Estargz { legacy_footer, toc_offset: 16, footer_start, .. } => {
                    assert_eq!((legacy_footer, footer_start), (legacy, 40));
                }
                l => panic!("{l:?}"),
            }
        }
        assert!(detect(&mut &b"hello world"[..], 11, &Descriptor::default()).is_err());
    }
}
