//! The sandboxed half of a layer import: reads the blob (hostile), checks every digest it
//! carries, streams each regular file's content to the store side, and writes the image.
//!
//! It runs in [`crate::sandbox`]'s confined child with two descriptors: the blob (read with
//! seek + read) and one end of a socket pair to the parent ([`crate::layer::proto`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::erofs::writer::WriteOptions;
use crate::input::toc::{Flavor, TocOptions};
use crate::layer::decode::{self, Decoded, Hashing, Region};
use crate::layer::format::{self, Descriptor, Layout, MAX_TOC_BYTES};
use crate::layer::proto::{self, Summary};
use crate::layer::tar::{TarEntry, TarReader};
use crate::layer::tarsplit;
use crate::layer::tartree::{Placed, TarTree};
use crate::layer::tocmap::{FileFacts, TocMap};
use crate::tree::{self, Limits, NodeId, Tree};

/// What the reader is asked to do (built by the parent, moved into the child).
#[derive(Debug, Clone)]
pub(crate) struct ChildRequest {
    pub descriptor: Option<Vec<u8>>,
    pub diff_id: Option<[u8; 32]>,
    pub keep_whiteouts: bool,
    pub write: WriteOptions,
    pub want_tarsplit: bool,
    /// The store side answers each object with its fs-verity digest too (objects sealed).
    pub verity: bool,
    /// Most bytes the decompressed stream may have.
    pub max_uncompressed: u64,
    pub limits: Limits,
}

/// Most unanswered objects before the reader waits for digests (the parent's answers then
/// never fill the socket).
const WINDOW: usize = 64;
/// Zero blocks tried after a stream that lacks its trailing padding (`--diff-id`).
pub(crate) const MAX_PADDING_BLOCKS: u64 = 128;

pub(crate) fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha(d: &[u8]) -> [u8; 32] {
    Sha256::digest(d).into()
}

/// Checks the TOC's bytes (the zstd frame of zstd:chunked, the JSON of eStargz: what each
/// format's annotation digests) against the annotated digest, when there is one.
fn check_toc_digest(toc: &[u8], annotated: Option<&[u8; 32]>, sum: &mut Summary) -> Result<(), String> {
    let Some(d) = annotated else { return Ok(()) };
    let got = sha(toc);
    if got != *d {
        return Err(format!("the TOC's digest sha256:{} does not match the annotation sha256:{}", hex(&got), hex(d)));
    }
    sum.checked.push("TOC digest".into());
    Ok(())
}

/// An object the store side answered: (node, normalised name, sha256, fs-verity digest).
type Answered = (NodeId, Vec<u8>, [u8; 32], [u8; 32]);

struct Link<'a> {
    out: BufWriter<&'a File>,
    sock: &'a File,
    waiting: VecDeque<(NodeId, Vec<u8>)>,
    answered: Vec<Answered>,
    tarsplit: Option<tarsplit::Writer>,
    /// Object path → fs-verity digest (when the store side seals objects).
    verity: std::collections::HashMap<Vec<u8>, [u8; 32]>,
}

/// Record the objects' fs-verity digests in the tree that is written.
fn set_verity(tree: &mut Tree, verity: &std::collections::HashMap<Vec<u8>, [u8; 32]>) {
    for n in &mut tree.nodes {
        if n.entry.inode.is_reg() {
            if let Some(v) = n.entry.payload.as_ref().and_then(|p| verity.get(p)) {
                n.entry.fsverity_digest = Some(*v);
            }
        }
    }
}

impl<'a> Link<'a> {
    fn new(sock: &'a File, want_tarsplit: bool) -> Self {
        Link {
            out: BufWriter::with_capacity(1 << 20, sock),
            sock,
            waiting: VecDeque::new(),
            answered: Vec::new(),
            tarsplit: want_tarsplit.then(tarsplit::Writer::new),
            verity: std::collections::HashMap::new(),
        }
    }
    fn put(&mut self, b: &[u8]) -> Result<(), String> {
        self.out.write_all(b).map_err(|e| format!("sending to the store side: {e}"))
    }
    fn record(&mut self, tag: u8, body: &[u8]) -> Result<(), String> {
        self.put(&[tag])?;
        self.put(&(body.len() as u32).to_le_bytes())?;
        self.put(body)
    }
    fn begin_object(&mut self, size: u64) -> Result<(), String> {
        self.put(&[proto::TAG_OBJECT])?;
        self.put(&size.to_le_bytes())
    }
    /// An object was sent: keep at most [`WINDOW`] unanswered.
    fn sent(&mut self, id: NodeId, name: Vec<u8>) -> Result<(), String> {
        self.waiting.push_back((id, name));
        if self.waiting.len() > WINDOW {
            self.answers(WINDOW / 2)?;
        }
        Ok(())
    }
    fn answers(&mut self, keep: usize) -> Result<(), String> {
        self.out.flush().map_err(|e| format!("sending to the store side: {e}"))?;
        while self.waiting.len() > keep {
            let mut d = [0u8; 64];
            (&*self.sock).read_exact(&mut d).map_err(|e| format!("reading a digest from the store side: {e}"))?;
            let (id, name) = self.waiting.pop_front().expect("waiting");
            let (sha, verity) = d.split_at(32);
            self.answered.push((id, name, sha.try_into().expect("32"), verity.try_into().expect("32")));
        }
        Ok(())
    }
    fn flush_tarsplit(&mut self, all: bool) -> Result<(), String> {
        let Some(w) = &mut self.tarsplit else { return Ok(()) };
        if w.out.len() < (1 << 20) && !all {
            return Ok(());
        }
        let out = std::mem::take(&mut w.out);
        for piece in out.chunks(proto::MAX_SMALL_RECORD as usize) {
            self.record(proto::TAG_TARSPLIT, piece)?;
        }
        Ok(())
    }
}

/// The TOC side of a TOC-carrying layer.
struct TocSide {
    tree: Tree,
    map: TocMap,
    /// Decompressed tar-split, when the blob has one.
    tarsplit: Option<Vec<u8>>,
    /// sha256 of the TOC JSON (eStargz: checked against the `stargz.index.json` member).
    json_digest: [u8; 32],
    estargz: bool,
}

/// Entry point in the sandbox.
pub(crate) fn run(req: &ChildRequest, mut blob: File, sock: File) -> Result<(), String> {
    let size = blob.metadata().map_err(|e| format!("blob: {e}"))?.len();
    let desc = match &req.descriptor {
        Some(d) => Descriptor::parse(d)?,
        None => Descriptor::default(),
    };
    let mut sum = Summary::default();
    let want_digest =
        desc.digest.as_deref().map(format::parse_sha256).transpose().map_err(|r| format!("descriptor digest: {r}"))?;
    if let Some(s) = desc.size {
        if s != size {
            return Err(format!("the blob is {size} bytes but the descriptor says {s}"));
        }
        sum.checked.push("blob size".into());
    }
    let layout = format::detect(&mut blob, size, &desc)?;
    sum.format = layout.name();
    let toc = read_toc(&mut blob, size, &layout, req, &mut sum)?;
    let data_end = match &layout {
        Layout::ZstdChunked { data_end, .. } => *data_end,
        _ => size,
    };
    blob.seek(SeekFrom::Start(0)).map_err(|e| format!("blob: {e}"))?;
    let region = Region::new(&mut blob, 0, data_end, want_digest.is_some());
    let limit = req.max_uncompressed;
    let decoded = match &layout {
        Layout::Tar => Decoded::Plain(region),
        Layout::Zstd | Layout::ZstdChunked { .. } => {
            Decoded::Zstd(decode::ZstdStream::new(region, limit).map_err(|e| e.to_string())?)
        }
        Layout::Gzip | Layout::Estargz { .. } => Decoded::Gzip(Box::new(decode::GzipStream::new(region, limit))),
    };
    let hash_stream = req.diff_id.is_some();
    let stream = Hashing { inner: decoded, hash: hash_stream.then(Sha256::new), count: 0 };
    let capture = req.want_tarsplit || toc.as_ref().is_some_and(|t| t.tarsplit.is_some());
    let mut tr = TarReader::new(stream, capture);
    let link = Link::new(&sock, req.want_tarsplit);
    let estargz = toc.as_ref().is_some_and(|t| t.estargz);
    let mut walk = Walk {
        link,
        tt: TarTree::new(req.limits, req.keep_whiteouts, estargz),
        cursor: toc.as_ref().and_then(|t| t.tarsplit.as_deref()).map(tarsplit::Cursor::new),
        toc: toc.as_ref(),
        seen: Vec::new(),
        toc_copy_ok: false,
    };
    let extra = match walk.entries(&mut tr).and_then(|()| walk.end(&mut tr)) {
        Ok(x) => x,
        Err(e) => {
            // A blob that is not the one the descriptor names is reported as that.
            if let Some(want) = want_digest {
                let (f, _) = tr.into_inner().inner.into_region().into_parts();
                check_whole_digest(f, want)?;
            }
            return Err(e);
        }
    };
    let Walk { mut link, tt, seen, toc_copy_ok, .. } = walk;
    link.answers(0)?;
    let stream = tr.into_inner();
    sum.stream_size = stream.count;
    let stream_hash = stream.hash;
    let frames = stream.inner.frames().to_vec();
    let mut region = stream.inner.into_region();
    if !region.at_end().map_err(|e| e.to_string())? {
        return Err(format!("data after the end of the compressed stream at offset {}", region.offset()));
    }
    let (_, blob_hash) = region.into_parts();
    finish_blob_digest(&mut blob, data_end, size, blob_hash, want_digest, &mut sum)?;
    let mut tree = assemble(tt, &mut link, toc.as_ref(), &seen, &frames, toc_copy_ok, &layout, &desc, &mut sum)?;
    if req.verity {
        set_verity(&mut tree, &link.verity);
    }
    check_diff_id(req, stream_hash, &extra, &mut link, &mut sum)?;
    link.flush_tarsplit(true)?;
    let mut img = Vec::new();
    crate::erofs::writer::write_image(&tree, &req.write, &mut img).map_err(|e| e.to_string())?;
    link.put(&[proto::TAG_IMAGE])?;
    link.put(&(img.len() as u64).to_le_bytes())?;
    link.put(&img)?;
    let js = serde_json::to_vec(&sum).map_err(|e| e.to_string())?;
    link.record(proto::TAG_SUMMARY, &js)?;
    link.put(&[proto::TAG_END])?;
    link.out.flush().map_err(|e| format!("sending to the store side: {e}"))?;
    Ok(())
}

fn read_exact_at(blob: &mut File, off: u64, len: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut v = vec![0u8; len as usize];
    blob.seek(SeekFrom::Start(off))
        .and_then(|_| blob.read_exact(&mut v))
        .map_err(|e| format!("reading the {what}: {e}"))?;
    Ok(v)
}

/// The skippable frames after a zstd:chunked blob's data: they must tile the rest of the blob
/// and hold the TOC and tar-split where the positions say.
fn check_trailer(blob: &mut File, layout: &Layout, size: u64) -> Result<(), String> {
    let Layout::ZstdChunked { toc, tarsplit, data_end, .. } = layout else { return Ok(()) };
    let mut at = *data_end;
    let mut found = Vec::new();
    while at < size {
        let h = read_exact_at(blob, at, 8.min(size - at), "trailing frames")?;
        if h.len() < 8 || h[0] & 0xf0 != 0x50 || h[1..4] != [0x2a, 0x4d, 0x18] {
            return Err(format!("zstd:chunked: offset {at} after the data is not a skippable frame"));
        }
        let len = u64::from(u32::from_le_bytes(h[4..8].try_into().expect("4")));
        found.push((at + 8, len));
        at = at + 8 + len;
    }
    if at != size {
        return Err(format!("zstd:chunked: the last skippable frame reaches past the blob's end ({at} > {size})"));
    }
    for (what, p) in [("TOC", Some(toc)), ("tar-split", tarsplit.as_ref())] {
        if let Some(p) = p {
            if !found.contains(&(p.offset, p.len)) {
                return Err(format!(
                    "zstd:chunked: no skippable frame holds the {what} at {}:{} (frames after the data: {found:?})",
                    p.offset, p.len
                ));
            }
        }
    }
    Ok(())
}

fn read_toc(
    blob: &mut File,
    size: u64,
    layout: &Layout,
    req: &ChildRequest,
    sum: &mut Summary,
) -> Result<Option<TocSide>, String> {
    let topts =
        TocOptions { limits: req.limits, keep_whiteouts: req.keep_whiteouts, max_input_bytes: MAX_TOC_BYTES as usize };
    match layout {
        Layout::ZstdChunked { toc, toc_digest, tarsplit, tarsplit_digest, stargz_toc_digest, .. } => {
            check_trailer(blob, layout, size)?;
            let z = read_exact_at(blob, toc.offset, toc.len, "TOC")?;
            check_toc_digest(&z, toc_digest.as_ref(), sum)?;
            let json = decode::zstd_all(&z, toc.ulen).map_err(|e| format!("TOC frame: {e}"))?;
            if json.len() as u64 != toc.ulen {
                return Err(format!("the TOC is {} bytes uncompressed, the position says {}", json.len(), toc.ulen));
            }
            if let Some(d) = stargz_toc_digest {
                if sha(&json) != *d {
                    return Err(format!(
                        "the uncompressed TOC's digest does not match the stargz annotation sha256:{}",
                        hex(d)
                    ));
                }
                sum.checked.push("stargz TOC digest".into());
            }
            let tree =
                crate::input::toc::parse_flavor(&json, &topts, Flavor::ZstdChunked).map_err(|e| e.to_string())?;
            let map = crate::layer::tocmap::read(&json)?;
            let split_digest = crate::layer::tocmap::tarsplit_digest(&json)?;
            let ts = match tarsplit {
                None if split_digest.is_some() => {
                    return Err("the TOC has a tarSplitDigest but no tar-split position is known".into())
                }
                None => None,
                Some(p) => {
                    let z = read_exact_at(blob, p.offset, p.len, "tar-split")?;
                    for (what, d) in
                        [("TOC's tarSplitDigest", split_digest), ("tarsplit-checksum annotation", *tarsplit_digest)]
                    {
                        if let Some(d) = d {
                            if sha(&z) != d {
                                return Err(format!(
                                    "the tar-split's digest does not match the {what} sha256:{}",
                                    hex(&d)
                                ));
                            }
                            sum.checked.push("tar-split digest".into());
                        }
                    }
                    let s = decode::zstd_all(&z, p.ulen).map_err(|e| format!("tar-split frame: {e}"))?;
                    if s.len() as u64 != p.ulen {
                        return Err(format!(
                            "the tar-split is {} bytes uncompressed, the position says {}",
                            s.len(),
                            p.ulen
                        ));
                    }
                    Some(s)
                }
            };
            Ok(Some(TocSide { tree, map, tarsplit: ts, json_digest: sha(&json), estargz: false }))
        }
        Layout::Estargz { toc_offset, toc_digest, footer_start, .. } => {
            let z = read_exact_at(blob, *toc_offset, footer_start - toc_offset, "eStargz TOC")?;
            let raw = decode::gzip_all(&z, MAX_TOC_BYTES + 4096).map_err(|e| format!("eStargz TOC: {e}"))?;
            let mut tr = TarReader::new(&raw[..], false);
            let e = tr.next_entry().map_err(|e| format!("eStargz TOC: {e}"))?.ok_or("eStargz TOC: no member")?;
            if e.name != b"stargz.index.json" {
                return Err(format!(
                    "eStargz TOC: the member at the TOC offset is {}, not stargz.index.json",
                    crate::tree::show(&e.name)
                ));
            }
            let mut json = Vec::new();
            while let Some(c) = tr.content_chunk().map_err(|e| format!("eStargz TOC: {e}"))? {
                json.extend_from_slice(c);
            }
            check_toc_digest(&json, toc_digest.as_ref(), sum)?;
            let tree = crate::input::toc::parse_flavor(&json, &topts, Flavor::Estargz).map_err(|e| e.to_string())?;
            let map = crate::layer::tocmap::read(&json)?;
            Ok(Some(TocSide { tree, map, tarsplit: None, json_digest: sha(&json), estargz: true }))
        }
        _ => Ok(None),
    }
}

struct Walk<'a, 't> {
    link: Link<'a>,
    tt: TarTree,
    cursor: Option<tarsplit::Cursor<'t>>,
    toc: Option<&'t TocSide>,
    /// (normalised name, content offset in the stream) of files with content.
    seen: Vec<(Vec<u8>, u64)>,
    toc_copy_ok: bool,
}

impl Walk<'_, '_> {
    fn entries<R: Read>(&mut self, tr: &mut TarReader<R>) -> Result<(), String> {
        while let Some(e) = tr.next_entry().map_err(|e| e.to_string())? {
            let seg = tr.take_segment();
            if let Some(c) = &mut self.cursor {
                c.raw(&seg, e.offset)?;
            }
            if let Some(w) = &mut self.link.tarsplit {
                w.segment(&seg);
            }
            let split_crc = match &mut self.cursor {
                Some(c) => c.file(&e.name, e.size, e.data_offset)?,
                None => None,
            };
            let err = |r: String| format!("tar member {} ({}): {r}", e.index, crate::tree::show(&e.name));
            let placed = self.tt.add(&e).map_err(err)?;
            let (crc, inline) = self.content(tr, &e, placed, split_crc.is_some())?;
            if let (Some(want), Some(got)) = (split_crc, crc) {
                if want != got.to_be_bytes() {
                    return Err(err("its content does not match the tar-split's CRC-64".into()));
                }
            }
            if let Some(w) = &mut self.link.tarsplit {
                match inline {
                    // Not in the tree (eStargz bookkeeping): its content is kept as raw bytes.
                    Some(bytes) => w.segment(&bytes),
                    None => w.file(&e.name, e.size, crc.filter(|_| e.size > 0)),
                }
            }
            self.link.flush_tarsplit(false)?;
        }
        Ok(())
    }

    /// Stream one member's content: to the store side (files of the tree), through the chunk
    /// checks of the TOC, and the CRC-64 for a tar-split.
    fn content<R: Read>(
        &mut self,
        tr: &mut TarReader<R>,
        e: &TarEntry,
        placed: Placed,
        need_crc: bool,
    ) -> Result<(Option<u64>, Option<Vec<u8>>), String> {
        let mut inline = (placed == Placed::Skipped && self.link.tarsplit.is_some()).then(Vec::new);
        if e.size == 0 {
            return Ok((None, inline));
        }
        let name = crate::layer::tartree::normalize(&e.name).ok().flatten().unwrap_or_default().to_vec();
        let facts = self.toc.and_then(|t| t.map.get(&name));
        if facts.is_some() {
            self.seen.push((name.clone(), e.data_offset));
        }
        let mut chunks = facts.map(|f| ChunkCheck::new(f, &e.name));
        let estargz_toc = self.toc.is_some_and(|t| t.estargz) && name == b"stargz.index.json";
        let mut toc_hash = estargz_toc.then(Sha256::new);
        let mut crc = (need_crc || self.link.tarsplit.is_some()).then(|| tarsplit::CRC64.digest());
        let send = matches!(placed, Placed::Content(_));
        if send {
            self.link.begin_object(e.size)?;
        }
        while let Some(b) = tr.content_chunk().map_err(|e| e.to_string())? {
            if send {
                self.link.put(b)?;
            }
            if let Some(c) = &mut chunks {
                c.update(b)?;
            }
            if let Some(h) = &mut toc_hash {
                h.update(b);
            }
            if let Some(c) = &mut crc {
                c.update(b);
            }
            if let Some(v) = &mut inline {
                v.extend_from_slice(b);
            }
        }
        if let Some(c) = chunks {
            c.finish()?;
        }
        if let (Some(h), Some(t)) = (toc_hash, self.toc) {
            if <[u8; 32]>::from(h.finalize()) == t.json_digest {
                self.toc_copy_ok = true;
            } else {
                return Err("the stargz.index.json member differs from the TOC the footer points at".into());
            }
        }
        if let Placed::Content(id) = placed {
            self.link.sent(id, name)?;
        }
        Ok((crc.map(|c| c.finalize()), inline))
    }

    /// The raw bytes after the last member; returns what the tar-split holds beyond the stream.
    fn end<R: Read>(&mut self, tr: &mut TarReader<R>) -> Result<Vec<u8>, String> {
        let seg = tr.take_segment();
        if let Some(w) = &mut self.link.tarsplit {
            w.segment(&seg);
        }
        match self.cursor.take() {
            Some(mut c) => {
                c.raw(&seg, tr.offset())?;
                c.rest()
            }
            None => Ok(Vec::new()),
        }
    }
}

/// Verifies a file's chunks against the TOC while its content streams by.
struct ChunkCheck<'f> {
    facts: &'f FileFacts,
    name: String,
    i: usize,
    at: u64,
    hash: Option<Sha256>,
    /// The whole file is one chunk whose digest is the file's: the store side's digest covers it.
    trivial: bool,
}

impl<'f> ChunkCheck<'f> {
    fn new(facts: &'f FileFacts, name: &[u8]) -> Self {
        let trivial = facts.chunks.len() == 1
            && facts.chunks[0].digest.is_none_or(|d| d == facts.digest)
            && !facts.chunks[0].zeros;
        ChunkCheck { facts, name: crate::tree::show(name), i: 0, at: 0, hash: None, trivial }
    }
    fn update(&mut self, mut b: &[u8]) -> Result<(), String> {
        if self.trivial {
            return Ok(());
        }
        while !b.is_empty() {
            let Some(c) = self.facts.chunks.get(self.i) else {
                return Err(format!("{}: content longer than the TOC's chunks", self.name));
            };
            let left = c.at + c.size - self.at;
            let n = (left.min(b.len() as u64)) as usize;
            let part = &b[..n];
            if c.zeros && part.iter().any(|&x| x != 0) {
                return Err(format!("{}: chunk {} at {} is of type zeros but holds data", self.name, self.i, c.at));
            }
            if c.digest.is_some() {
                self.hash.get_or_insert_with(Sha256::new).update(part);
            }
            self.at += n as u64;
            b = &b[n..];
            if self.at == c.at + c.size {
                if let Some(want) = c.digest {
                    let got: [u8; 32] = self.hash.take().unwrap_or_default().finalize().into();
                    if got != want {
                        return Err(format!(
                            "{}: chunk {} at {} ({} bytes) does not match its chunkDigest sha256:{}",
                            self.name,
                            self.i,
                            c.at,
                            c.size,
                            hex(&want)
                        ));
                    }
                }
                self.i += 1;
            }
        }
        Ok(())
    }
    fn finish(self) -> Result<(), String> {
        if !self.trivial && self.i != self.facts.chunks.len() {
            return Err(format!("{}: content shorter than the TOC's chunks", self.name));
        }
        Ok(())
    }
}

/// Hash the whole blob again (error path only).
fn check_whole_digest(f: &mut File, want: [u8; 32]) -> Result<(), String> {
    f.seek(SeekFrom::Start(0)).map_err(|e| format!("blob: {e}"))?;
    let mut h = Sha256::new();
    std::io::copy(f, &mut h).map_err(|e| format!("blob: {e}"))?;
    let got: [u8; 32] = h.finalize().into();
    if got != want {
        return Err(format!(
            "the blob's digest sha256:{} does not match the descriptor's sha256:{}",
            hex(&got),
            hex(&want)
        ));
    }
    Ok(())
}

fn finish_blob_digest(
    blob: &mut File,
    data_end: u64,
    size: u64,
    hash: Option<Sha256>,
    want: Option<[u8; 32]>,
    sum: &mut Summary,
) -> Result<(), String> {
    let (Some(mut h), Some(want)) = (hash, want) else { return Ok(()) };
    if data_end < size {
        h.update(read_exact_at(blob, data_end, size - data_end, "blob's trailing frames")?);
    }
    let got: [u8; 32] = h.finalize().into();
    if got != want {
        return Err(format!(
            "the blob's digest sha256:{} does not match the descriptor's sha256:{}",
            hex(&got),
            hex(&want)
        ));
    }
    sum.checked.push("blob digest".into());
    Ok(())
}

/// Fill in the objects' paths, check the TOC against the tar, and pick the tree to write.
#[allow(clippy::too_many_arguments)]
fn assemble(
    mut tt: TarTree,
    link: &mut Link<'_>,
    toc: Option<&TocSide>,
    seen: &[(Vec<u8>, u64)],
    frames: &[decode::FrameStart],
    toc_copy_ok: bool,
    layout: &Layout,
    desc: &Descriptor,
    sum: &mut Summary,
) -> Result<Tree, String> {
    sum.objects = link.answered.len() as u64;
    for (id, name, d, v) in std::mem::take(&mut link.answered) {
        link.verity.insert(crate::store::object_name(&d).into_bytes(), v);
        if let Some(f) = toc.and_then(|t| t.map.get(&name)) {
            if f.digest != d {
                return Err(format!(
                    "{}: content sha256:{} does not match the TOC's digest sha256:{}",
                    crate::tree::show(&name),
                    hex(&d),
                    hex(&f.digest)
                ));
            }
        }
        tt.set_object(id, &hex(&d));
    }
    let tar_tree = tt.finish()?;
    let Some(t) = toc else { return Ok(tar_tree) };
    if t.estargz && !toc_copy_ok {
        return Err("the eStargz stream has no stargz.index.json member".into());
    }
    crate::layer::compare::trees(&t.tree, &tar_tree)?;
    check_offsets(&t.map, seen, frames, layout)?;
    if let Some(v) = desc.annotations.get(format::ANN_STARGZ_USIZE) {
        if v.parse::<u64>().ok() != Some(sum.stream_size) {
            return Err(format!(
                "the stream is {} bytes but the annotation {} says {v}",
                sum.stream_size,
                format::ANN_STARGZ_USIZE
            ));
        }
        sum.checked.push("uncompressed size".into());
    }
    sum.checked.push("TOC against the tar".into());
    let tree = t.tree.clone();
    let empty = crate::layer::compare::EMPTY_OBJECT;
    if tree.nodes.iter().any(|n| n.entry.inode.is_reg() && n.entry.payload.as_deref() == Some(empty)) {
        // The image names the empty object: the store side must have it.
        link.begin_object(0)?;
        link.sent(tree::ROOT, Vec::new())?;
        link.answers(0)?;
        link.answered.clear();
    }
    Ok(tree)
}

/// Every chunk's `offset` must be where the frame/member holding its first byte starts, and a
/// zstd:chunked `endOffset` where the frame after the content starts.
fn check_offsets(
    map: &TocMap,
    seen: &[(Vec<u8>, u64)],
    frames: &[decode::FrameStart],
    layout: &Layout,
) -> Result<(), String> {
    let by_comp: std::collections::HashMap<u64, u64> = frames.iter().copied().collect();
    let mut count = 0usize;
    for (name, data) in seen {
        let Some(f) = map.get(name) else { continue };
        count += 1;
        let err = |m: String| format!("TOC entry {} ({}): {m}", f.index, crate::tree::show(name));
        for (i, c) in f.chunks.iter().enumerate() {
            let Some(off) = c.offset else { continue };
            let want = data + c.at - c.inner.min(data + c.at);
            match by_comp.get(&off) {
                Some(&s) if s == want => {}
                Some(&s) => {
                    return Err(err(format!(
                        "chunk {i}: offset {off} starts a frame at stream offset {s}, but the chunk's data is at {}",
                        data + c.at
                    )))
                }
                None => return Err(err(format!("chunk {i}: offset {off} is not where a compressed frame starts"))),
            }
        }
        if let (Some(end), Layout::ZstdChunked { .. }) = (f.end_offset, layout) {
            match by_comp.get(&end) {
                Some(&s) if s == data + f.size => {}
                _ => return Err(err(format!("endOffset {end} is not where the frame after the content starts"))),
            }
        }
    }
    if count != map.len() {
        let missing = map.keys().find(|k| !seen.iter().any(|(n, _)| n == *k)).cloned().unwrap_or_default();
        return Err(format!(
            "the TOC lists {} with content that the tar stream does not have",
            crate::tree::show(&missing)
        ));
    }
    Ok(())
}

/// The diff_id: the tar stream (plus what the tar-split holds beyond it) must hash to it; for a
/// stream that stops right after its end-of-archive blocks, zero blocks are tried after it.
fn check_diff_id(
    req: &ChildRequest,
    hash: Option<Sha256>,
    extra: &[u8],
    link: &mut Link<'_>,
    sum: &mut Summary,
) -> Result<(), String> {
    let Some(mut h) = hash else { return Ok(()) };
    let stream: [u8; 32] = h.clone().finalize().into();
    sum.stream_digest = Some(format!("sha256:{}", hex(&stream)));
    let Some(want) = req.diff_id else { return Ok(()) };
    h.update(extra);
    if <[u8; 32]>::from(h.clone().finalize()) == want {
        sum.diff_id = Some(format!("sha256:{}", hex(&want)));
        sum.checked.push("diff_id".into());
        return Ok(());
    }
    if extra.is_empty() && (sum.stream_size % 512) == 0 {
        let zeros = [0u8; 512];
        for k in 1..=MAX_PADDING_BLOCKS {
            h.update(zeros);
            if <[u8; 32]>::from(h.clone().finalize()) == want {
                sum.restored_padding = k * 512;
                sum.diff_id = Some(format!("sha256:{}", hex(&want)));
                sum.checked.push("diff_id (with restored padding)".into());
                if let Some(w) = &mut link.tarsplit {
                    w.segment(&vec![0u8; (k * 512) as usize]);
                }
                return Ok(());
            }
        }
    }
    Err(format!("the layer's tar stream sha256:{} does not match the diff_id sha256:{}", hex(&stream), hex(&want)))
}
