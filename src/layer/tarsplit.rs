//! tar-split (github.com/vbatts/tar-split, `tar/storage`): the bytes of a tar that are not file
//! content, so that the tar can be rebuilt byte for byte from them and the files' contents.
//! One JSON object per line: `{"type":2,"payload":BASE64,"position":N}` for raw bytes (headers,
//! padding, the end-of-archive blocks), `{"type":1,"name":NAME,"size":N,"payload":CRC64,
//! "position":N}` for a member's content (`name_raw` holds a name that is not UTF-8; the
//! payload is the big-endian CRC-64/ISO of the content, null for empty members).
//!
//! Hand-written (a line format of two record kinds; no maintained Rust crate reads it).

use base64::Engine as _;
use serde::Deserialize;

pub(crate) const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Segment(Vec<u8>),
    File { name: Vec<u8>, size: u64, crc: Option<[u8; 8]> },
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    typ: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
}

/// Iterates the items of a tar-split document held in memory.
pub(crate) struct Items<'a> {
    rest: &'a [u8],
    line: usize,
}

impl<'a> Items<'a> {
    pub(crate) fn new(doc: &'a [u8]) -> Self {
        Items { rest: doc, line: 0 }
    }
}

impl Iterator for Items<'_> {
    type Item = Result<Item, String>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (l, rest) = match self.rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &b""[..]),
            };
            self.rest = rest;
            self.line += 1;
            if l.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(parse_line(l).map_err(|e| format!("tar-split line {}: {e}", self.line)));
        }
    }
}

fn parse_line(l: &[u8]) -> Result<Item, String> {
    let v: Line = serde_json::from_slice(l).map_err(|e| e.to_string())?;
    let payload = v.payload.as_deref().map(|p| B64.decode(p).map_err(|e| format!("payload: {e}"))).transpose()?;
    match v.typ {
        2 => Ok(Item::Segment(payload.unwrap_or_default())),
        1 => {
            let name = match (v.name_raw, v.name) {
                (Some(r), _) if !r.is_empty() => B64.decode(r).map_err(|e| format!("name_raw: {e}"))?,
                (_, Some(n)) => n.into_bytes(),
                _ => return Err("file entry without a name".into()),
            };
            let size = v.size.unwrap_or(0);
            let size = u64::try_from(size).map_err(|_| format!("negative size {size}"))?;
            let crc = match payload {
                None => None,
                Some(p) if p.is_empty() => None,
                Some(p) => Some(<[u8; 8]>::try_from(p.as_slice()).map_err(|_| "CRC payload is not 8 bytes")?),
            };
            Ok(Item::File { name, size, crc })
        }
        t => Err(format!("unknown entry type {t}")),
    }
}

/// Writes tar-split lines.
pub(crate) struct Writer {
    pos: u64,
    pub(crate) out: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { pos: 0, out: Vec::new() }
    }
    pub(crate) fn segment(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.out.extend_from_slice(b"{\"type\":2,\"payload\":\"");
        self.out.extend_from_slice(B64.encode(bytes).as_bytes());
        self.out.extend_from_slice(format!("\",\"position\":{}}}\n", self.pos).as_bytes());
        self.pos += 1;
    }
    pub(crate) fn file(&mut self, name: &[u8], size: u64, crc: Option<u64>) {
        self.out.extend_from_slice(b"{\"type\":1,");
        match std::str::from_utf8(name) {
            Ok(s) => {
                self.out.extend_from_slice(b"\"name\":");
                self.out.extend_from_slice(serde_json::to_string(s).expect("string").as_bytes());
            }
            Err(_) => {
                self.out.extend_from_slice(b"\"name_raw\":\"");
                self.out.extend_from_slice(B64.encode(name).as_bytes());
                self.out.push(b'"');
            }
        }
        if size > 0 {
            self.out.extend_from_slice(format!(",\"size\":{size}").as_bytes());
        }
        match crc {
            Some(c) => {
                self.out.extend_from_slice(b",\"payload\":\"");
                self.out.extend_from_slice(B64.encode(c.to_be_bytes()).as_bytes());
                self.out.push(b'"');
            }
            None => self.out.extend_from_slice(b",\"payload\":null"),
        }
        self.out.extend_from_slice(format!(",\"position\":{}}}\n", self.pos).as_bytes());
        self.pos += 1;
    }
}

/// Checks a tar stream against a tar-split, byte for byte: raw bytes must equal the segments,
/// each member's content must sit where a file entry of that name and size says.
pub(crate) struct Cursor<'a> {
    items: Items<'a>,
    /// The unconsumed rest of the current segment.
    seg: Vec<u8>,
    seg_pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(doc: &'a [u8]) -> Self {
        Cursor { items: Items::new(doc), seg: Vec::new(), seg_pos: 0 }
    }

    /// The stream's next raw (non-content) bytes.
    pub(crate) fn raw(&mut self, mut bytes: &[u8], at: u64) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.seg_pos == self.seg.len() {
                match self.items.next() {
                    None => return Err(format!("the tar-split ends before the stream's raw bytes at offset {at}")),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(Item::Segment(s))) => {
                        self.seg = s;
                        self.seg_pos = 0;
                        continue;
                    }
                    Some(Ok(Item::File { name, .. })) => {
                        return Err(format!(
                            "the tar-split has the content of {} where the stream has header bytes (offset {at})",
                            crate::tree::show(&name)
                        ))
                    }
                }
            }
            let n = (self.seg.len() - self.seg_pos).min(bytes.len());
            if self.seg[self.seg_pos..self.seg_pos + n] != bytes[..n] {
                return Err(format!("the tar-split's raw bytes differ from the stream's near offset {at}"));
            }
            self.seg_pos += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// The stream's next member `name` with `size` content bytes; returns the entry's CRC.
    pub(crate) fn file(&mut self, name: &[u8], size: u64, at: u64) -> Result<Option<[u8; 8]>, String> {
        if self.seg_pos != self.seg.len() {
            return Err(format!("the tar-split has more raw bytes than the stream before offset {at}"));
        }
        loop {
            match self.items.next() {
                None => return Err(format!("the tar-split ends before member {}", crate::tree::show(name))),
                Some(Err(e)) => return Err(e),
                Some(Ok(Item::Segment(s))) if s.is_empty() => {}
                Some(Ok(Item::Segment(_))) => {
                    return Err(format!(
                        "the tar-split has raw bytes where the stream has member {} (offset {at})",
                        crate::tree::show(name)
                    ))
                }
                Some(Ok(Item::File { name: n, size: s, crc })) => {
                    if n != name || s != size {
                        return Err(format!(
                            "the tar-split names {} ({s} bytes) where the stream has {} ({size} bytes)",
                            crate::tree::show(&n),
                            crate::tree::show(name)
                        ));
                    }
                    return Ok(crc);
                }
            }
        }
    }

    /// After the stream's end: the raw bytes the tar-split still holds (bytes of the tar the
    /// decompressed stream lacks, such as trailing padding). Anything else is an error.
    pub(crate) fn rest(mut self) -> Result<Vec<u8>, String> {
        let mut out = self.seg.split_off(self.seg_pos);
        for it in self.items {
            match it? {
                Item::Segment(s) => out.extend_from_slice(&s),
                Item::File { name, .. } => {
                    return Err(format!("the tar-split lists {} after the stream's end", crate::tree::show(&name)))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let mut w = Writer::new();
        w.segment(b"HDR");
        w.file(b"./a", 3, Some(CRC64.checksum(b"abc")));
        w.file(b"\xff", 0, None);
        w.segment(b"PAD");
        let items: Vec<Item> = Items::new(&w.out).collect::<Result<_, _>>().unwrap();
        assert_eq!(items[0], Item::Segment(b"HDR".to_vec()));
        assert_eq!(
            items[1],
            Item::File { name: b"./a".to_vec(), size: 3, crc: Some(CRC64.checksum(b"abc").to_be_bytes()) }
        );
        assert_eq!(items[2], Item::File { name: vec![0xff], size: 0, crc: None });
        let mut c = Cursor::new(&w.out);
        c.raw(b"HD", 0).unwrap();
        c.raw(b"R", 2).unwrap();
        c.file(b"./a", 3, 3).unwrap();
        c.file(b"\xff", 0, 6).unwrap();
        c.raw(b"P", 6).unwrap();
        assert_eq!(c.rest().unwrap(), b"AD");
        let mut c = Cursor::new(&w.out);
        assert!(c.raw(b"HDX", 0).unwrap_err().contains("differ"));
    }

    #[test]
    fn go_crc64_iso() {
        // Go's hash/crc64 with the ISO table, written out bit by bit (reflected polynomial
        // 0xD800000000000000, initial value and final xor all ones).
        let mut crc: u64 = !0;
        for &b in b"hello" {
            crc ^= u64::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xD800000000000000 } else { crc >> 1 };
            }
        }
        assert_eq!(CRC64.checksum(b"hello"), !crc);
    }
}
