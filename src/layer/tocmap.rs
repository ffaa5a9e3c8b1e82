//! What a TOC says about where each regular file's content lies and what it hashes to: the
//! per-file digest, the chunks (`chunkOffset`/`chunkSize`/`chunkDigest`/`chunkType`) and their
//! compressed offsets. The tree itself comes from [`crate::input::toc`], which has already
//! validated the document when this runs; this reader only gathers the content facts and checks
//! that the chunks of every file tile it exactly (no overlap, no gap).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Offset of the chunk in the file.
    pub at: u64,
    pub size: u64,
    /// Compressed offset of the frame/member holding its first byte (`offset`).
    pub offset: Option<u64>,
    /// Offset of the chunk inside that frame's output (eStargz `innerOffset`).
    pub inner: u64,
    pub digest: Option<[u8; 32]>,
    pub zeros: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileFacts {
    pub index: usize,
    pub size: u64,
    pub digest: [u8; 32],
    pub chunks: Vec<Chunk>,
    /// Compressed offset of the frame that follows the content (zstd:chunked `endOffset`).
    pub end_offset: Option<u64>,
}

/// Regular files with content, by normalised name.
pub(crate) type TocMap = HashMap<Vec<u8>, FileFacts>;

#[derive(Default)]
struct RawEntry<'a> {
    typ: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    size: Option<u64>,
    digest: Option<Cow<'a, str>>,
    offset: Option<u64>,
    end_offset: Option<u64>,
    chunk_offset: Option<u64>,
    chunk_size: Option<u64>,
    chunk_digest: Option<Cow<'a, str>>,
    chunk_type: Option<Cow<'a, str>>,
    inner_offset: Option<u64>,
}

struct EntryV;

impl<'de> Visitor<'de> for EntryV {
    type Value = RawEntry<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOC entry")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawEntry<'de>, A::Error> {
        let mut r = RawEntry::default();
        while let Some(k) = m.next_key::<Cow<'de, str>>()? {
            // Keys match ASCII-case-insensitively, as Go's encoding/json reads them.
            match k.to_ascii_lowercase().as_str() {
                "type" => r.typ = m.next_value()?,
                "name" => r.name = m.next_value()?,
                "size" => r.size = m.next_value::<Option<i64>>()?.map(|v| v.max(0) as u64),
                "digest" => r.digest = m.next_value()?,
                "offset" => r.offset = m.next_value::<Option<i64>>()?.map(|v| v.max(0) as u64),
                "endoffset" => r.end_offset = m.next_value::<Option<i64>>()?.map(|v| v.max(0) as u64),
                "chunkoffset" => r.chunk_offset = m.next_value::<Option<i64>>()?.map(|v| v.max(0) as u64),
                "chunksize" => r.chunk_size = m.next_value::<Option<i64>>()?.map(|v| v.max(0) as u64),
                "chunkdigest" => r.chunk_digest = m.next_value()?,
                "chunktype" => r.chunk_type = m.next_value()?,
                "inneroffset" => r.inner_offset = m.next_value::<Option<i64>>()?.map(|v| v.max(0) as u64),
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(r)
    }
}

impl<'de> de::Deserialize<'de> for RawEntry<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntryV)
    }
}

struct Builder {
    map: TocMap,
    /// The file whose chunk entries may follow: (name, facts, declared chunk sizes).
    open: Option<(Vec<u8>, FileFacts, Vec<Option<u64>>)>,
    error: Option<String>,
}

fn norm(name: &str) -> Vec<u8> {
    let mut p = name.as_bytes();
    if let Some(r) = p.strip_prefix(b"./") {
        p = r;
    } else if let Some(r) = p.strip_prefix(b"/") {
        p = r;
    }
    p.strip_suffix(b"/").unwrap_or(p).to_vec()
}

fn digest(d: &Option<Cow<'_, str>>) -> Result<Option<[u8; 32]>, String> {
    match d.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => crate::layer::format::parse_sha256(s).map(Some),
    }
}

impl Builder {
    fn entry(&mut self, index: usize, r: RawEntry<'_>) -> Result<(), String> {
        let typ = r.typ.as_deref().unwrap_or("");
        let err = |m: String| format!("TOC entry {index} ({}): {m}", r.name.as_deref().unwrap_or(""));
        if typ == "chunk" {
            let Some((_, facts, sizes)) = &mut self.open else {
                return Err(err("chunk entry without a preceding regular file".into()));
            };
            facts.chunks.push(Chunk {
                at: r.chunk_offset.unwrap_or(0),
                size: 0,
                offset: r.offset,
                inner: r.inner_offset.unwrap_or(0),
                digest: digest(&r.chunk_digest).map_err(|m| err(format!("chunkDigest: {m}")))?,
                zeros: r.chunk_type.as_deref() == Some("zeros"),
            });
            sizes.push(r.chunk_size.filter(|&s| s > 0));
            return Ok(());
        }
        self.close()?;
        let size = r.size.unwrap_or(0);
        if typ != "reg" || size == 0 {
            return Ok(());
        }
        let Some(d) = digest(&r.digest).map_err(|m| err(format!("digest: {m}")))? else {
            // A hard link written as `reg` with a linkName, or inline content: no object.
            return Ok(());
        };
        let name = norm(r.name.as_deref().unwrap_or(""));
        let first = Chunk {
            at: 0,
            size: 0,
            offset: r.offset,
            inner: r.inner_offset.unwrap_or(0),
            digest: digest(&r.chunk_digest).map_err(|m| err(format!("chunkDigest: {m}")))?,
            zeros: r.chunk_type.as_deref() == Some("zeros"),
        };
        if r.chunk_offset.is_some_and(|o| o != 0) {
            return Err(err(format!("the first chunk starts at {} (must be 0)", r.chunk_offset.unwrap_or(0))));
        }
        let facts = FileFacts { index, size, digest: d, chunks: vec![first], end_offset: r.end_offset };
        self.open = Some((name, facts, vec![r.chunk_size.filter(|&s| s > 0)]));
        Ok(())
    }

    /// Resolve the open file's chunk sizes and check that they tile the file.
    fn close(&mut self) -> Result<(), String> {
        let Some((name, mut facts, sizes)) = self.open.take() else { return Ok(()) };
        let err = |m: String| format!("TOC entry {} ({}): {m}", facts.index, crate::tree::show(&name));
        let n = facts.chunks.len();
        let mut expect = 0u64;
        #[allow(clippy::needless_range_loop)]
        for i in 0..n {
            let at = facts.chunks[i].at;
            if at != expect {
                return Err(err(if at < expect {
                    format!("chunk {i} at offset {at} overlaps the previous chunk, which ends at {expect}")
                } else {
                    format!("chunk {i} at offset {at} leaves a gap after the previous chunk, which ends at {expect}")
                }));
            }
            let end = match (sizes[i], facts.chunks.get(i + 1)) {
                (Some(s), _) => at.checked_add(s).ok_or_else(|| err(format!("chunk {i} size overflows")))?,
                (None, Some(next)) => next.at,
                (None, None) => facts.size,
            };
            if end <= at || end > facts.size {
                return Err(err(format!(
                    "chunk {i} ({at}..{end}) is empty or reaches past the file's {} bytes",
                    facts.size
                )));
            }
            facts.chunks[i].size = end - at;
            expect = end;
        }
        if expect != facts.size {
            return Err(err(format!("the chunks cover {expect} of the file's {} bytes", facts.size)));
        }
        if self.map.insert(name.clone(), facts).is_some() {
            return Err(format!("TOC: two regular file entries for {}", crate::tree::show(&name)));
        }
        Ok(())
    }
}

struct EntriesV<'b>(&'b mut Builder);

impl<'de> Visitor<'de> for EntriesV<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("TOC entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(r) = s.next_element::<RawEntry<'de>>()? {
            if let Err(e) = self.0.entry(i, r) {
                self.0.error = Some(e);
                return Err(de::Error::custom("rejected"));
            }
            i += 1;
        }
        Ok(())
    }
}

struct TopV<'b>(&'b mut Builder);

impl<'de> Visitor<'de> for TopV<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOC")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(k) = m.next_key::<Cow<'de, str>>()? {
            if k.eq_ignore_ascii_case("entries") {
                m.next_value_seed(SeedEntries(&mut *self.0))?;
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct SeedEntries<'b>(&'b mut Builder);

impl<'de> de::DeserializeSeed<'de> for SeedEntries<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(EntriesV(self.0))
    }
}

/// Gather the content facts of a TOC (already validated by the tree reader).
pub(crate) fn read(json: &[u8]) -> Result<TocMap, String> {
    let mut b = Builder { map: HashMap::new(), open: None, error: None };
    let mut de = serde_json::Deserializer::from_slice(json);
    let r = de.deserialize_map(TopV(&mut b));
    if let Some(e) = b.error.take() {
        return Err(e);
    }
    r.map_err(|e| format!("TOC: {e}"))?;
    b.close()?;
    Ok(b.map)
}

/// The `tarSplitDigest` of a zstd:chunked TOC, if any.
pub(crate) fn tarsplit_digest(json: &[u8]) -> Result<Option<[u8; 32]>, String> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a TOC")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Option<String>, A::Error> {
            let mut out = None;
            while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                if k.eq_ignore_ascii_case("tarsplitdigest") {
                    out = m.next_value::<Option<String>>()?;
                } else {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = de.deserialize_map(V).map_err(|e| format!("TOC: {e}"))?;
    v.filter(|s| !s.is_empty())
        .map(|s| crate::layer::format::parse_sha256(&s).map_err(|r| format!("TOC tarSplitDigest: {r}")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    const D: &str = "sha256:99fe908c699dc068438b23e28319cadff1f2153c3043bafb8e83a430bba0a2c6";

    fn toc(entries: &str) -> String {
        format!("{{\"version\":1,\"entries\":[{entries}]}}")
    }

    #[test]
    fn chunks_tile_files() {
        let j = toc(&format!(
            r#"{{"type":"reg","name":"./f","size":10,"digest":"{D}","offset":5,"endOffset":50,"chunkSize":4,"chunkDigest":"{D}"}},
               {{"type":"chunk","name":"./f","offset":20,"chunkOffset":4,"chunkSize":6,"chunkType":"zeros","chunkDigest":"{D}"}},
               {{"type":"reg","name":"g","size":3,"digest":"{D}"}},
               {{"type":"reg","name":"e"}}"#
        ));
        let m = read(j.as_bytes()).unwrap();
        let f = &m[&b"f"[..]];
        assert_eq!(f.chunks.len(), 2);
        assert_eq!((f.chunks[1].at, f.chunks[1].size, f.chunks[1].zeros), (4, 6, true));
        assert_eq!(m[&b"g"[..]].chunks[0].size, 3);
        assert!(!m.contains_key(&b"e"[..]));
        let overlap = toc(&format!(
            r#"{{"type":"reg","name":"f","size":10,"digest":"{D}","chunkSize":4}},{{"type":"chunk","name":"f","chunkOffset":3}}"#
        ));
        assert!(read(overlap.as_bytes()).unwrap_err().contains("overlaps"));
        let gap = toc(&format!(
            r#"{{"type":"reg","name":"f","size":10,"digest":"{D}","chunkSize":4}},{{"type":"chunk","name":"f","chunkOffset":5}}"#
        ));
        assert!(read(gap.as_bytes()).unwrap_err().contains("gap"));
        let short = toc(&format!(
            r#"{{"type":"reg","name":"f","size":10,"digest":"{D}","chunkSize":4}},{{"type":"chunk","name":"f","chunkOffset":4,"chunkSize":5}}"#
        ));
        assert!(read(short.as_bytes()).unwrap_err().contains("cover 9"));
    }
}
