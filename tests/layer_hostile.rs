//! Tier 1: hostile layer blobs. Each one is refused with a message that names what is wrong,
//! and leaves nothing behind: no image, no object, no staging directory.
//! The blobs are built here (a small tar writer and a zstd:chunked writer that follows
//! containers/storage's layout: one frame per file's content, the TOC and the footer in
//! skippable frames) or cut from the real-layers conformance blobs.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

#[path = "support/layers.rs"]
mod layers;
use layers::*;

/// A tar member for the builder.
struct M {
    name: &'static str,
    typ: u8,
    data: Vec<u8>,
    link: &'static str,
    mode: u32,
}

fn reg(name: &'static str, data: &[u8]) -> M {
    M { name, typ: b'0', data: data.to_vec(), link: "", mode: 0o644 }
}
fn dir(name: &'static str) -> M {
    M { name, typ: b'5', data: Vec::new(), link: "", mode: 0o755 }
}
fn hardlink(name: &'static str, to: &'static str) -> M {
    M { name, typ: b'1', data: Vec::new(), link: to, mode: 0o644 }
}

fn header(m: &M) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..m.name.len()].copy_from_slice(m.name.as_bytes());
    h[100..107].copy_from_slice(format!("{:07o}", m.mode).as_bytes());
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", m.data.len()).as_bytes());
    h[136..147].copy_from_slice(b"14751261355");
    h[156] = m.typ;
    h[157..157 + m.link.len()].copy_from_slice(m.link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

fn tar(members: &[M]) -> Vec<u8> {
    let mut v = Vec::new();
    for m in members {
        v.extend_from_slice(&header(m));
        v.extend_from_slice(&m.data);
        pad(&mut v);
    }
    v.extend_from_slice(&[0u8; 1024]);
    v
}

fn hexd(d: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(d)))
}

fn skippable(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A zstd:chunked blob of `members` (64-byte footer, no tar-split). `edit` may change each
/// TOC entry (JSON) before the TOC is written. Returns (blob, TOC digest annotation).
fn chunked(members: &[M], edit: &dyn Fn(&str, &mut serde_json::Value)) -> (Vec<u8>, String) {
    let mut out = Vec::new();
    let mut entries = Vec::new();
    let mut pending = Vec::new();
    for m in members {
        pending.extend_from_slice(&header(m));
        let mut e = serde_json::json!({
            "type": match m.typ { b'5' => "dir", b'1' => "hardlink", _ => "reg" },
            "name": m.name, "mode": m.mode, "modtime": "2025-02-07T01:33:33Z",
        });
        if m.typ == b'1' {
            e["linkName"] = m.link.into();
        }
        if !m.data.is_empty() {
            out.extend_from_slice(&zstd::bulk::compress(&pending, 3).unwrap());
            pending.clear();
            let start = out.len();
            out.extend_from_slice(&zstd::bulk::compress(&m.data, 3).unwrap());
            e["size"] = m.data.len().into();
            e["digest"] = hexd(&m.data).into();
            e["offset"] = start.into();
            e["endOffset"] = out.len().into();
            pending.resize(m.data.len().div_ceil(512) * 512 - m.data.len(), 0);
        }
        edit(m.name, &mut e);
        entries.push(e);
    }
    pending.extend_from_slice(&[0u8; 1024]);
    out.extend_from_slice(&zstd::bulk::compress(&pending, 3).unwrap());
    let toc = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
    let z = zstd::bulk::compress(&toc, 3).unwrap();
    let toc_off = out.len() + 8;
    skippable(&mut out, &z);
    let mut f = Vec::new();
    for v in [toc_off as u64, z.len() as u64, toc.len() as u64, 1, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(b"GNUlInUx");
    skippable(&mut out, &f);
    (out, hexd(&z))
}

fn no_edit(_: &str, _: &mut serde_json::Value) {}

/// Import `blob`; it must fail naming `needle`, and leave `d` as it was.
#[track_caller]
fn refused(d: &Path, blob: &[u8], extra: &[&str], needle: &str) {
    let objs = d.join("objects");
    std::fs::create_dir_all(&objs).unwrap();
    let b = d.join("blob");
    std::fs::write(&b, blob).unwrap();
    let before = listing(d);
    let o = import(&b, &d.join("out.img"), &objs, extra);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted (wanted a refusal naming {needle:?}): {err}");
    assert!(err.contains(needle), "refusal does not name {needle:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert_eq!(listing(d), before, "{needle}: something was left behind");
}

#[test]
fn hostile_tars_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let cases: Vec<(Vec<M>, &str)> = vec![
        (vec![reg("../x", b"a")], "'..' path component"),
        (vec![reg("/abs", b"a")], "absolute path"),
        (vec![hardlink("a", "b"), reg("b", b"x")], "hard link target b: target does not exist"),
        (vec![hardlink("a", "missing")], "target does not exist"),
        (vec![reg("a", b"1"), reg("a", b"1")], "a second member for the same path"),
        (vec![dir("d"), reg("d/.wh...", b"")], "whiteout names an invalid path"),
        (vec![dir("d"), hardlink("e", "d")], "target is a directory"),
    ];
    for (members, needle) in cases {
        refused(d, &tar(&members), &[], needle);
        // The same tar compressed: the same refusal.
        refused(d, &zstd::bulk::compress(&tar(&members), 3).unwrap(), &[], needle);
    }
    // A corrupt header checksum, a truncated member.
    let mut t = tar(&[reg("a", b"hello")]);
    t[0] = b'b';
    refused(d, &t, &[], "header checksum");
    let t = tar(&[reg("a", &[7u8; 3000])]);
    refused(d, &zstd::bulk::compress(&t[..1536], 3).unwrap(), &[], "truncated");
}

#[test]
fn hostile_chunked_blobs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let files = || vec![dir("etc"), reg("etc/a", b"hello world"), reg("etc/b", &[1u8; 5000])];
    // Sanity: the builder's blob is accepted, with its TOC digest.
    let (good, digest) = chunked(&files(), &no_edit);
    std::fs::create_dir_all(d.join("ok")).unwrap();
    std::fs::write(d.join("ok/blob"), &good).unwrap();
    let desc = d.join("ok/desc.json");
    let ann = serde_json::json!({"annotations": {"io.github.containers.zstd-chunked.manifest-checksum": digest}});
    std::fs::write(&desc, ann.to_string()).unwrap();
    let note = ok(
        &import(
            &d.join("ok/blob"),
            &d.join("ok/out.img"),
            &d.join("ok/objs"),
            &["--descriptor", desc.to_str().unwrap()],
        ),
        "well-formed blob",
    );
    assert!(note.contains("TOC digest"), "{note}");
    std::fs::remove_dir_all(d.join("ok")).unwrap();

    let set = |k: &'static str, v: serde_json::Value| {
        move |n: &str, e: &mut serde_json::Value| {
            if n == "etc/b" {
                e[k] = v.clone();
            }
        }
    };
    // Content that does not match its digest.
    let (b, _) = chunked(&files(), &set("digest", hexd(b"other").into()));
    refused(d, &b, &[], "does not match the TOC's digest");
    // Metadata that disagrees with the tar.
    let (b, _) = chunked(&files(), &set("mode", 0o4755.into()));
    refused(d, &b, &[], "the TOC and the tar stream disagree about /etc/b: the mode");
    // An offset that is not where the content's frame starts.
    let (b, _) = chunked(&files(), &set("offset", 3.into()));
    refused(d, &b, &[], "is not where a compressed frame starts");
    // Chunks that overlap or leave gaps, a chunk digest that does not match.
    let chunks = |digest: String| {
        move |n: &str, e: &mut serde_json::Value| {
            if n == "etc/b" {
                e["chunkSize"] = 5000.into();
                e["chunkDigest"] = digest.clone().into();
            }
        }
    };
    for (at, needle) in [(1500u64, "overlaps the previous chunk"), (2500, "leaves a gap")] {
        let (b, _) = chunked_with_chunk(&files(), at);
        refused(d, &b, &[], needle);
    }
    let (b, _) = chunked(&files(), &chunks(hexd(b"not it")));
    refused(d, &b, &[], "does not match its chunkDigest");
    // A TOC digest that does not match the annotation.
    std::fs::write(d.join("desc.json"), ann.to_string()).unwrap();
    let (b, _) = chunked(&files(), &set("uid", 7.into()));
    refused(d, &b, &["--descriptor", d.join("desc.json").to_str().unwrap()], "does not match the annotation");
    std::fs::remove_file(d.join("desc.json")).unwrap();
}

/// A blob whose `etc/b` (5000 bytes) claims a first chunk of 2000 bytes and a second chunk at `at`.
fn chunked_with_chunk(members: &[M], at: u64) -> (Vec<u8>, String) {
    let (blob, _) = chunked(members, &|n: &str, e: &mut serde_json::Value| {
        if n == "etc/b" {
            e["chunkSize"] = 2000.into();
        }
    });
    // Rewrite the TOC frame: insert the chunk entry right after etc/b's entry.
    let f = &blob[blob.len() - 64..];
    let off = u64::from_le_bytes(f[0..8].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(f[8..16].try_into().unwrap()) as usize;
    let toc: serde_json::Value =
        serde_json::from_slice(&zstd::bulk::decompress(&blob[off..off + len], 1 << 20).unwrap()).unwrap();
    let mut entries = Vec::new();
    for e in toc["entries"].as_array().unwrap() {
        entries.push(e.clone());
        if e["name"] == "etc/b" {
            entries
                .push(serde_json::json!({"type": "chunk", "name": "etc/b", "chunkOffset": at, "offset": e["offset"]}));
        }
    }
    let toc = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
    let z = zstd::bulk::compress(&toc, 3).unwrap();
    let mut out = blob[..off - 8].to_vec();
    skippable(&mut out, &z);
    let mut footer = Vec::new();
    for v in [off as u64, z.len() as u64, toc.len() as u64, 1, 0, 0, 0] {
        footer.extend_from_slice(&v.to_le_bytes());
    }
    footer.extend_from_slice(b"GNUlInUx");
    skippable(&mut out, &footer);
    (out, hexd(&z))
}

#[test]
fn hostile_real_blobs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    let b = blobs().into_iter().find(|b| b.writer == "skopeo-1.22.2-zstd-chunked" && b.layer == 1).unwrap();
    let blob = std::fs::read(&b.path).unwrap();
    let n = blob.len();
    // Truncated: the footer is gone, the zstd stream ends inside a frame.
    refused(d, &blob[..n / 2], &[], "truncated");
    // With its descriptor, any change of size or content is caught first.
    std::fs::write(d.join("desc.json"), b.descriptor.to_string()).unwrap();
    let desc = d.join("desc.json");
    let desc = desc.to_str().unwrap();
    refused(d, &blob[..n - 1], &["--descriptor", desc], "bytes but the descriptor says");
    let mut flipped = blob.clone();
    flipped[n / 3] ^= 0x40;
    refused(d, &flipped, &["--descriptor", desc], "does not match the descriptor's sha256");
    std::fs::remove_file(d.join("desc.json")).unwrap();
    // The footer points outside the blob; the TOC frame is over the 150 MiB cap.
    let footer_at = n - 64;
    let mut outside = blob.clone();
    outside[footer_at..footer_at + 8].copy_from_slice(&(n as u64 + 100).to_le_bytes());
    refused(d, &outside, &[], "lies outside the blob");
    let mut big = blob.clone();
    big[footer_at + 8..footer_at + 16].copy_from_slice(&(151u64 << 20).to_le_bytes());
    refused(d, &big, &[], "over the limit of 157286400 bytes");
    // Flipped content inside a file's frame: the frame no longer decodes, or the digest fails.
    let mut bad = blob.clone();
    bad[400_000] ^= 0x01;
    std::fs::write(d.join("blob"), &bad).unwrap();
    let o = import(&d.join("blob"), &d.join("out.img"), &d.join("objects"), &[]);
    assert!(!o.status.success(), "a flipped byte was accepted");
    std::fs::remove_file(d.join("blob")).unwrap();
}

#[test]
fn decompression_bombs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    // 64 MiB of zeros in one member compress to a few KiB.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    let size = 64u64 << 20;
    let mut h = header(&reg("zeros", b""));
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    enc.write_all(&h).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&zeros).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    let blob = enc.finish().unwrap();
    assert!(blob.len() < 100_000);
    refused(d, &blob, &["--max-uncompressed", "16777216"], "exceeds 16777216 bytes");
    // gzip too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&h).unwrap();
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    let blob = gz.finish().unwrap();
    refused(d, &blob, &["--max-uncompressed", "16777216"], "exceeds 16777216 bytes");
}
