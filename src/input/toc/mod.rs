//! zstd:chunked TOC JSON (as containers/storage writes it) → tree; also the shared engine behind
//! the eStargz reader ([`crate::input::estargz`]), which differs only in a few fields.
//!
//! The document is `{"version":1,"entries":[...],...}`. Entries are streamed straight from the
//! JSON into the [`Tree`] (no intermediate list), so memory stays close to the size of the tree.
//!
//! # Semantics (containers/storage and the reference JSON reader, checked against the conformance data)
//! - Keys match case-insensitively the way Go's `encoding/json` matches them (ASCII case, plus
//!   `ſ` = `s` and the Kelvin sign = `k`); unknown keys are ignored; for a repeated key the last one
//!   wins, except a repeated `entries`, which is an error. `version` must be 1.
//! - Integer fields must be JSON integers (no fraction or exponent), as Go's int decoding demands;
//!   `null` means "absent". A value of the wrong JSON type is an error.
//! - `name`: one leading `/` or `./` and one trailing `/` are decoration and are removed; `/`, `./`
//!   and `.` name the root, which must be a directory. Every other irregular path (empty, `.` or
//!   `..` components, NUL, names over 255 bytes, longer than PATH_MAX) is rejected.
//! - `type`: reg, dir, symlink, hardlink, char, block, fifo, chunk. `chunk` entries must directly
//!   follow their `reg` entry (or another chunk of it) and add nothing to the tree.
//! - `mode` may carry the file type bits (they must then agree with `type`) or only permission bits.
//! - Regular files name their content by `digest` (`sha256:` + 64 lowercase hex) → object path
//!   `H[0:2]/H[2:]`; the reference's extension `x-payload` (a clean relative object path) wins over
//!   it, and `x-content` (base64) is content stored inside the image (at most 5000 bytes). A
//!   non-empty regular file with none of these is rejected. A `reg` entry with a `linkName` and
//!   no content is a hard link (as some writers emit them).
//! - `hardlink` entries link to `linkName` (normalised like `name`), which must already exist and
//!   must not be a directory; their own metadata is ignored.
//! - `modtime` is RFC 3339 (nanoseconds kept); `accesstime`/`changetime` must parse but are unused.
//! - `devMajor`/`devMinor` (major < 4096, minor < 2^20) become `rdev` as the kernel's
//!   `new_encode_dev` packs it, for char/block devices only.
//! - `xattrs`: name → base64 of the raw value; names 1..=255 bytes without NUL, values under
//!   64 KiB, and per inode the budget of `crate::erofs::format::XATTR_BUDGET`.
//! - Missing parent directories are created 0755, root-owned, mtime 0.
//! - OCI whiteouts (unless [`TocOptions::keep_whiteouts`]): `DIR/.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on DIR; other `.wh..wh.*` names (AUFS metadata) are dropped;
//!   `DIR/.wh.NAME` becomes an overlay whiteout (character device 0/0, permissions 0, the entry's
//!   uid/gid/mtime) at DIR/NAME. As in containers/storage, a whiteout is applied after the whole
//!   layer: a file of the same layer at that name wins, and a whiteout below a path that is not a
//!   directory is dropped.
//!
//! # Limits (documented defaults; see [`TocOptions`])
//! Input size `MAX_INPUT_BYTES`; JSON nesting at most 128 levels (serde_json's limit); tree
//! limits from [`crate::tree::Limits`].
//!
//! The parts: `json` (the streaming visitor), `entry` (one entry → the tree), `whiteout`
//! (OCI whiteouts, applied at the end).

mod entry;
mod json;
pub(crate) mod whiteout;

#[cfg(test)]
mod tests;

use base64::Engine as _;
use serde::de::Deserializer;
use thiserror::Error;

use crate::tree::{self, Limits, Tree, TreeError, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};

/// Largest TOC document accepted by default (bytes).
pub(crate) const MAX_INPUT_BYTES: usize = 1 << 30;

/// Bytes per entry for sizing the tree up front (cs9-developer: 188 compact, 302 indented), and
/// an upper bound of real documents (indented, every field: the tree surely gets this many).
const BYTES_PER_ENTRY_LIKELY: usize = 180;
const BYTES_PER_ENTRY_MOST: usize = 400;

/// Parser settings.
#[derive(Debug, Clone, Copy)]
pub struct TocOptions {
    pub limits: Limits,
    /// Keep OCI whiteout files (`.wh.*`) as ordinary entries instead of converting them.
    pub keep_whiteouts: bool,
    /// Largest input accepted, in bytes.
    pub max_input_bytes: usize,
}

impl Default for TocOptions {
    fn default() -> Self {
        TocOptions { limits: Limits::default(), keep_whiteouts: false, max_input_bytes: MAX_INPUT_BYTES }
    }
}

/// Which TOC dialect a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// zstd:chunked (containers/storage), with the reference's `x-payload`/`x-content`.
    ZstdChunked,
    /// eStargz `stargz.index.json` (containerd/stargz-snapshotter).
    Estargz,
}

/// Parse a zstd:chunked TOC into a finalized tree.
pub fn parse(json: &[u8], opts: &TocOptions) -> Result<Tree, TocError> {
    parse_flavor(json, opts, Flavor::ZstdChunked)
}

/// Parse a TOC of the given dialect into a finalized tree.
pub(crate) fn parse_flavor(json: &[u8], opts: &TocOptions, flavor: Flavor) -> Result<Tree, TocError> {
    if json.len() > opts.max_input_bytes {
        return Err(TocError::TooLarge { size: json.len(), limit: opts.max_input_bytes });
    }
    let mut st = State {
        flavor,
        keep_whiteouts: opts.keep_whiteouts,
        tree: Tree::new(opts.limits),
        index: 0,
        last_reg: None,
        whiteouts: Vec::new(),
        opaques: Vec::new(),
        error: None,
        version: None,
        entries_seen: false,
        cursor: tree::DirCursor::default(),
    };
    // Size the tree once for the entries the document can plausibly hold (real TOCs take
    // 190-400 bytes per entry; a compact one with fewer fields grows the arena once more).
    // Only what is filled is touched, so a high guess costs address space, not memory.
    st.tree.reserve_expecting(json.len() / BYTES_PER_ENTRY_LIKELY, json.len() / BYTES_PER_ENTRY_MOST);
    // The whole document checked as UTF-8 once, word at a time: serde_json then reads it as a
    // `str` and skips the check it would otherwise run on every string (6 % of a cs9 build).
    // The same documents are refused (JSON outside strings is ASCII, and serde_json checks
    // every string, ignored ones included); only the message differs.
    let text = std::str::from_utf8(json)
        .map_err(|e| TocError::Json { at: format!(" at byte {}", e.valid_up_to()), reason: "not UTF-8".into() })?;
    let mut de = serde_json::Deserializer::from_str(text);
    let res = (&mut de).deserialize_any(json::TopVisitor { st: &mut st });
    if let Some(e) = st.error.take() {
        return Err(e);
    }
    match res {
        Ok(()) => {}
        Err(e) => {
            return Err(TocError::Json {
                at: if st.entries_seen { format!(" in entry {}", st.index) } else { String::new() },
                reason: e.to_string(),
            })
        }
    }
    de.end().map_err(|e| TocError::Json { at: " after the document".into(), reason: e.to_string() })?;
    if !st.entries_seen {
        return Err(TocError::Toc { field: "entries", reason: "missing".into() });
    }
    match st.version {
        Some(1) => {}
        Some(v) => {
            return Err(TocError::Toc { field: "version", reason: format!("unsupported version {v} (must be 1)") })
        }
        None => return Err(TocError::Toc { field: "version", reason: "missing (must be 1)".into() }),
    }
    let (opaques, whiteouts) = (std::mem::take(&mut st.opaques), std::mem::take(&mut st.whiteouts));
    whiteout::apply(&mut st.tree, opaques, whiteouts).map_err(|f| {
        let ((index, name), reason) = match f {
            whiteout::Failed::OpaqueInsert(at, e) => (at, format!("opaque marker: {}", tree_reason(&e))),
            whiteout::Failed::OpaqueNotDir(at) => (at, "opaque marker inside a path that is not a directory".into()),
            whiteout::Failed::Whiteout(at, e) => (at, format!("whiteout: {}", tree_reason(&e))),
        };
        TocError::Entry { index, name, field: "name", reason }
    })?;
    let mut tree = st.tree;
    tree.finalize().map_err(|e| TocError::Toc { field: "tree", reason: e.to_string() })?;
    Ok(tree)
}

/// An OCI whiteout (`.wh.NAME`) waiting for the end of the layer: (entry index, name).
type PendingWhiteout = whiteout::Whiteout<(usize, String)>;

/// An opaque marker (`.wh..wh..opq`) waiting for the end of the layer: (entry index, name).
type PendingOpaque = whiteout::Opaque<(usize, String)>;

/// The parser's state while entries stream in.
struct State {
    flavor: Flavor,
    keep_whiteouts: bool,
    tree: Tree,
    /// Index of the entry being read (0-based position in `entries`).
    index: usize,
    /// Normalised path of the last `reg` entry, while `chunk` entries may follow it.
    last_reg: Option<Vec<u8>>,
    whiteouts: Vec<PendingWhiteout>,
    opaques: Vec<PendingOpaque>,
    error: Option<TocError>,
    version: Option<i128>,
    entries_seen: bool,
    /// The directories of the previous insertion.
    cursor: tree::DirCursor,
}

/// Strip a leading `/` or `./` and a trailing `/`; `None` means the root.
fn normalize(name: &str) -> Option<&[u8]> {
    let mut p = name.as_bytes();
    if let Some(r) = p.strip_prefix(b"./") {
        p = r;
    } else if let Some(r) = p.strip_prefix(b"/") {
        p = r;
    }
    if let Some(r) = p.strip_suffix(b"/") {
        p = r;
    }
    if p.is_empty() || p == b"." {
        None
    } else {
        Some(p)
    }
}

/// Reason text of a tree error without the path (the caller names the entry).
fn tree_reason(e: &TreeError) -> String {
    match e {
        TreeError::BadPath { reason, .. } => (*reason).to_string(),
        TreeError::ParentNotDir { parent, .. } => format!("parent {parent} is not a directory"),
        TreeError::Duplicate { .. } => "listed twice with different metadata".into(),
        TreeError::BadHardlink { target, reason, .. } => format!("hard link target {target}: {reason}"),
        TreeError::TooManyEntries { limit } => format!("too many entries (limit {limit})"),
        TreeError::TooDeep { limit, .. } => format!("directory nesting deeper than {limit}"),
        TreeError::BadField { field, reason, .. } => format!("{field}: {reason}"),
    }
}

fn file_type_of(typ: &str) -> Option<u32> {
    Some(match typ {
        "reg" => S_IFREG,
        "dir" => S_IFDIR,
        "symlink" => S_IFLNK,
        "char" => S_IFCHR,
        "block" => S_IFBLK,
        "fifo" => S_IFIFO,
        _ => return None,
    })
}

/// Parse `sha256:<64 lowercase hex>`; returns the hex part.
fn parse_digest(d: &str) -> Result<&str, String> {
    let hex = d.strip_prefix("sha256:").ok_or_else(|| format!("{:?} is not a sha256: digest", trunc(d)))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("{:?} is not sha256: followed by 64 lowercase hex digits", trunc(d)));
    }
    Ok(hex)
}

fn trunc(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Base64 as Go's `StdEncoding` reads it: standard alphabet, canonical padding, CR/LF ignored,
/// non-zero trailing bits tolerated.
pub(crate) fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let r = if s.bytes().any(|b| b == b'\r' || b == b'\n') {
        let cleaned: Vec<u8> = s.bytes().filter(|&b| b != b'\r' && b != b'\n').collect();
        ENGINE.decode(cleaned)
    } else {
        ENGINE.decode(s)
    };
    r.map_err(|e| format!("invalid base64: {e}"))
}

/// RFC 3339 → (seconds, nanoseconds) since the epoch.
pub(crate) fn parse_time(s: &str) -> Result<(i64, u32), String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{:?} is not an RFC 3339 time: {e}", trunc(s)))?;
    Ok((t.unix_timestamp(), t.nanosecond()))
}

/// The kernel's `new_encode_dev` for a major/minor pair in its range.
pub(crate) fn encode_dev(major: i64, minor: i64) -> Result<u32, String> {
    if !(0..=0xfff).contains(&major) {
        return Err(format!("device major {major} out of range (0..=4095)"));
    }
    if !(0..=0xfffff).contains(&minor) {
        return Err(format!("device minor {minor} out of range (0..=1048575)"));
    }
    let (ma, mi) = (major as u32, minor as u32);
    Ok((mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12))
}

/// Why a TOC was rejected. Entry errors name the 0-based index in `entries`, the entry's
/// `name` as given, and the offending field.
#[derive(Debug, Error)]
pub enum TocError {
    #[error("TOC entry {index} ({name:?}): {field}: {reason}")]
    Entry { index: usize, name: String, field: &'static str, reason: String },
    #[error("TOC: {field}: {reason}")]
    Toc { field: &'static str, reason: String },
    #[error("TOC: invalid JSON{at}: {reason}")]
    Json { at: String, reason: String },
    #[error("TOC: input of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}
