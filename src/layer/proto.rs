//! The records the sandboxed reader sends to the store side over a socket pair, and the
//! digests that come back.
//!
//! Child → parent, each a tag byte then a little-endian length:
//! - `O` u64 N, then N bytes: the content of one object. The parent hashes it, stores it under
//!   its sha256 and answers with the 32-byte digest (in order, one per `O`).
//! - `T` u32 N, then N bytes: the next piece of the layer's tar-split (only when asked for).
//! - `I` u64 N, then N bytes: the image (last but for `D` and `E`).
//! - `D` u32 N, then N bytes: a summary (JSON, [`Summary`]) for the caller.
//! - `E`: the end. Anything after it, or a stream that ends without it, is an error.
//!
//! The parent trusts none of it: objects are named by the digest it computes itself, and the
//! image is checked against the objects before it is kept.

use serde::{Deserialize, Serialize};

pub(crate) const TAG_OBJECT: u8 = b'O';
pub(crate) const TAG_TARSPLIT: u8 = b'T';
pub(crate) const TAG_IMAGE: u8 = b'I';
pub(crate) const TAG_SUMMARY: u8 = b'D';
pub(crate) const TAG_END: u8 = b'E';

/// Largest `T` or `D` record.
pub(crate) const MAX_SMALL_RECORD: u32 = 16 << 20;
/// Largest image accepted from the child.
pub(crate) const MAX_IMAGE: u64 = 4 << 30;

/// What the reader found (printed by the CLI; informational).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Detected format, e.g. `zstd:chunked (64-byte footer)`.
    pub format: String,
    /// sha256 of the decompressed stream (`sha256:...`), when it was computed.
    pub stream_digest: Option<String>,
    /// Bytes of the decompressed stream.
    pub stream_size: u64,
    /// Zero bytes of tar padding the writer dropped and `--diff-id` matched with (0 if none).
    pub restored_padding: u64,
    /// The diff_id that was verified, if any.
    pub diff_id: Option<String>,
    /// Digests that were checked, by name (blob, TOC, tar-split, uncompressed-size...).
    pub checked: Vec<String>,
    /// Regular files with content, and objects sent.
    pub objects: u64,
}
