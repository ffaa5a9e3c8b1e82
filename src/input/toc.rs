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
//!   64 KiB, and per inode the budget of [`crate::input::dump::EXTERNAL_XATTR_BUDGET`].
//! - Missing parent directories are created 0755, root-owned, mtime 0.
//! - OCI whiteouts (unless [`TocOptions::keep_whiteouts`]): `DIR/.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on DIR; other `.wh..wh.*` names (AUFS metadata) are dropped;
//!   `DIR/.wh.NAME` becomes an overlay whiteout (character device 0/0, permissions 0, the entry's
//!   uid/gid/mtime) at DIR/NAME. As in containers/storage, a whiteout is applied after the whole
//!   layer: a file of the same layer at that name wins, and a whiteout below a path that is not a
//!   directory is dropped.
//!
//! # Limits (documented defaults; see [`TocOptions`])
//! Input size [`MAX_INPUT_BYTES`]; JSON nesting at most 128 levels (serde_json's limit); tree
//! limits from [`crate::tree::Limits`].

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use thiserror::Error;

use crate::input::dump::{EXTERNAL_XATTR_BUDGET, INLINE_CONTENT_MAX};
use crate::tree::{
    self, split_path, Entry, Inode, Limits, Tree, TreeError, Xattr, PATH_MAX, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO,
    S_IFLNK, S_IFMT, S_IFREG, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};

/// Largest TOC document accepted by default (bytes).
pub const MAX_INPUT_BYTES: usize = 1 << 30;
/// Deepest JSON nesting accepted (serde_json's fixed recursion limit).
pub const MAX_JSON_NESTING: usize = 128;
/// xattr that marks an overlay opaque directory.
pub const OVERLAY_OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Flavor {
    /// zstd:chunked (containers/storage), with the reference's `x-payload`/`x-content`.
    ZstdChunked,
    /// eStargz `stargz.index.json` (containerd/stargz-snapshotter).
    Estargz,
}

/// Parse a zstd:chunked TOC into a finalized tree.
pub fn parse(json: &[u8], opts: &TocOptions) -> Result<Tree, TocError> {
    parse_flavor(json, opts, Flavor::ZstdChunked)
}

/// Guess the dialect of a TOC from keys and names only one of them uses (cheap byte scan).
/// Defaults to zstd:chunked.
pub fn detect(json: &[u8]) -> Flavor {
    let has = |needle: &[u8]| json.windows(needle.len()).any(|w| w == needle);
    let estargz = [&b"\"innerOffset\""[..], b"\"userName\"", b"\"groupName\"", b".prefetch.landmark\""];
    let zstd = [&b"\"endOffset\""[..], b"\"tarSplitDigest\"", b"\"accesstime\"", b"\"x-payload\""];
    if zstd.iter().any(|n| has(n)) {
        Flavor::ZstdChunked
    } else if estargz.iter().any(|n| has(n)) {
        Flavor::Estargz
    } else {
        Flavor::ZstdChunked
    }
}

/// Parse a TOC of the given dialect into a finalized tree.
pub fn parse_flavor(json: &[u8], opts: &TocOptions, flavor: Flavor) -> Result<Tree, TocError> {
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
        parent_cache: None,
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    let res = (&mut de).deserialize_any(TopVisitor { st: &mut st });
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
    st.apply_whiteouts()?;
    let mut tree = st.tree;
    tree.finalize().map_err(|e| TocError::Toc { field: "tree", reason: e.to_string() })?;
    Ok(tree)
}

// ---------------------------------------------------------------------------------------------
// JSON values

/// A JSON value as far as the entry reader needs it; arrays and objects are skipped.
enum Val<'de> {
    Null,
    Bool,
    U(u64),
    I(i64),
    F,
    Str(Cow<'de, str>),
    Arr,
    Obj,
}

impl Val<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool => "a boolean",
            Val::U(_) | Val::I(_) => "an integer",
            Val::F => "a non-integer number",
            Val::Str(_) => "a string",
            Val::Arr => "an array",
            Val::Obj => "an object",
        }
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::I(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::U(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Val<'de>, E> {
        Ok(Val::F)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Val::Arr)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Val::Obj)
    }
}

impl<'de> de::Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

/// Any JSON value, skipped. Unlike serde's `IgnoredAny` (which serde_json skips without a depth
/// check) nested values go through `deserialize_any`, so the 128-level nesting limit holds for
/// every part of the document, ignored keys included.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(ValVisitor)? {
            Val::Str(s) => Ok(Key(s)),
            _ => Err(de::Error::custom("object key is not a string")),
        }
    }
}

/// The `xattrs` member: an object of name → value, or anything else (a type error).
enum XattrsVal<'de> {
    Null,
    Map(Vec<(Cow<'de, str>, Val<'de>)>),
    Other(&'static str),
}

impl<'de> de::Deserialize<'de> for XattrsVal<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = XattrsVal<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<XattrsVal<'de>, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    let val = map.next_value::<Val<'de>>()?;
                    v.push((k.0, val));
                }
                Ok(XattrsVal::Map(v))
            }
            fn visit_unit<E>(self) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Null)
            }
            fn visit_none<E>(self) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<XattrsVal<'de>, E> {
                Ok(XattrsVal::Other("a string"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<XattrsVal<'de>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(XattrsVal::Other("an array"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Fold a key the way Go's encoding/json compares field names (ASCII case-insensitive, plus
/// U+017F LATIN SMALL LETTER LONG S = `s` and U+212A KELVIN SIGN = `k`) into `buf`.
fn fold_key<'b>(key: &str, buf: &'b mut [u8; 24]) -> Option<&'b [u8]> {
    let mut n = 0;
    for c in key.chars() {
        let b = match c {
            'ſ' => b's',
            '\u{212A}' => b'k',
            c if c.is_ascii() => (c as u8).to_ascii_lowercase(),
            _ => return None,
        };
        *buf.get_mut(n)? = b;
        n += 1;
    }
    Some(&buf[..n])
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Type,
    Name,
    LinkName,
    Mode,
    Size,
    Uid,
    Gid,
    ModTime,
    AccessTime,
    ChangeTime,
    DevMajor,
    DevMinor,
    Xattrs,
    Digest,
    Offset,
    EndOffset,
    ChunkSize,
    ChunkOffset,
    ChunkDigest,
    ChunkType,
    XPayload,
    XContent,
    UserName,
    GroupName,
    InnerOffset,
}

impl Field {
    fn json_name(self) -> &'static str {
        match self {
            Field::Type => "type",
            Field::Name => "name",
            Field::LinkName => "linkName",
            Field::Mode => "mode",
            Field::Size => "size",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::ModTime => "modtime",
            Field::AccessTime => "accesstime",
            Field::ChangeTime => "changetime",
            Field::DevMajor => "devMajor",
            Field::DevMinor => "devMinor",
            Field::Xattrs => "xattrs",
            Field::Digest => "digest",
            Field::Offset => "offset",
            Field::EndOffset => "endOffset",
            Field::ChunkSize => "chunkSize",
            Field::ChunkOffset => "chunkOffset",
            Field::ChunkDigest => "chunkDigest",
            Field::ChunkType => "chunkType",
            Field::XPayload => "x-payload",
            Field::XContent => "x-content",
            Field::UserName => "userName",
            Field::GroupName => "groupName",
            Field::InnerOffset => "innerOffset",
        }
    }

    /// The field a (folded) key names in this dialect, if any.
    fn lookup(folded: &[u8], flavor: Flavor) -> Option<Field> {
        let common = match folded {
            b"type" => Some(Field::Type),
            b"name" => Some(Field::Name),
            b"linkname" => Some(Field::LinkName),
            b"mode" => Some(Field::Mode),
            b"size" => Some(Field::Size),
            b"uid" => Some(Field::Uid),
            b"gid" => Some(Field::Gid),
            b"modtime" => Some(Field::ModTime),
            b"devmajor" => Some(Field::DevMajor),
            b"devminor" => Some(Field::DevMinor),
            b"xattrs" => Some(Field::Xattrs),
            b"digest" => Some(Field::Digest),
            b"offset" => Some(Field::Offset),
            b"chunksize" => Some(Field::ChunkSize),
            b"chunkoffset" => Some(Field::ChunkOffset),
            b"chunkdigest" => Some(Field::ChunkDigest),
            _ => None,
        };
        if common.is_some() {
            return common;
        }
        match flavor {
            Flavor::ZstdChunked => match folded {
                b"accesstime" => Some(Field::AccessTime),
                b"changetime" => Some(Field::ChangeTime),
                b"endoffset" => Some(Field::EndOffset),
                b"chunktype" => Some(Field::ChunkType),
                b"x-payload" => Some(Field::XPayload),
                b"x-content" => Some(Field::XContent),
                _ => None,
            },
            Flavor::Estargz => match folded {
                b"username" => Some(Field::UserName),
                b"groupname" => Some(Field::GroupName),
                b"inneroffset" => Some(Field::InnerOffset),
                _ => None,
            },
        }
    }
}

/// One entry as read from JSON, before any semantic check.
#[derive(Default)]
struct Raw<'de> {
    typ: Option<Cow<'de, str>>,
    name: Option<Cow<'de, str>>,
    link_name: Option<Cow<'de, str>>,
    mode: Option<i64>,
    size: Option<i64>,
    uid: Option<i64>,
    gid: Option<i64>,
    modtime: Option<Cow<'de, str>>,
    atime: Option<Cow<'de, str>>,
    ctime: Option<Cow<'de, str>>,
    dev_major: Option<i64>,
    dev_minor: Option<i64>,
    xattrs: Option<Vec<(Cow<'de, str>, Cow<'de, str>)>>,
    digest: Option<Cow<'de, str>>,
    chunk_digest: Option<Cow<'de, str>>,
    chunk_type: Option<Cow<'de, str>>,
    chunk_size: Option<i64>,
    x_payload: Option<Cow<'de, str>>,
    x_content: Option<Cow<'de, str>>,
    /// First type error: (field, reason).
    bad: Option<(&'static str, String)>,
}

impl<'de> Raw<'de> {
    fn bad(&mut self, f: Field, reason: String) {
        if self.bad.is_none() {
            self.bad = Some((f.json_name(), reason));
        }
    }

    fn int(&mut self, f: Field, v: Val<'de>) -> Option<i64> {
        match v {
            Val::Null => None,
            Val::I(i) => Some(i),
            Val::U(u) => match i64::try_from(u) {
                Ok(i) => Some(i),
                Err(_) => {
                    self.bad(f, format!("{u} is out of range"));
                    None
                }
            },
            other => {
                self.bad(f, format!("expected an integer, got {}", other.kind()));
                None
            }
        }
    }

    fn string(&mut self, f: Field, v: Val<'de>) -> Option<Cow<'de, str>> {
        match v {
            Val::Null => None,
            Val::Str(s) => Some(s),
            other => {
                self.bad(f, format!("expected a string, got {}", other.kind()));
                None
            }
        }
    }
}

struct EntrySeed {
    flavor: Flavor,
}

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = Option<Raw<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    /// `None`: the entry is not an object (a type error reported by the caller).
    type Value = Option<Raw<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an entry object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut r = Raw::default();
        let mut buf = [0u8; 24];
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let field = fold_key(&key.0, &mut buf).and_then(|k| Field::lookup(k, self.flavor));
            let Some(field) = field else {
                map.next_value::<Skip>()?;
                continue;
            };
            if field == Field::Xattrs {
                match map.next_value::<XattrsVal<'de>>()? {
                    XattrsVal::Null => r.xattrs = None,
                    XattrsVal::Other(k) => r.bad(field, format!("expected an object, got {k}")),
                    XattrsVal::Map(m) => {
                        let mut out = Vec::with_capacity(m.len());
                        for (k, v) in m {
                            match v {
                                Val::Str(s) => out.push((k, s)),
                                Val::Null => out.push((k, Cow::Borrowed(""))),
                                other => r.bad(
                                    field,
                                    format!("value of {k:?} must be a base64 string, got {}", other.kind()),
                                ),
                            }
                        }
                        r.xattrs = Some(out);
                    }
                }
                continue;
            }
            let v = map.next_value::<Val<'de>>()?;
            match field {
                Field::Type => r.typ = r.string(field, v),
                Field::Name => r.name = r.string(field, v),
                Field::LinkName => r.link_name = r.string(field, v),
                Field::Mode => r.mode = r.int(field, v),
                Field::Size => r.size = r.int(field, v),
                Field::Uid => r.uid = r.int(field, v),
                Field::Gid => r.gid = r.int(field, v),
                Field::ModTime => r.modtime = r.string(field, v),
                Field::AccessTime => r.atime = r.string(field, v),
                Field::ChangeTime => r.ctime = r.string(field, v),
                Field::DevMajor => r.dev_major = r.int(field, v),
                Field::DevMinor => r.dev_minor = r.int(field, v),
                Field::Digest => r.digest = r.string(field, v),
                Field::ChunkDigest => r.chunk_digest = r.string(field, v),
                Field::ChunkType => r.chunk_type = r.string(field, v),
                Field::ChunkSize => r.chunk_size = r.int(field, v),
                Field::XPayload => r.x_payload = r.string(field, v),
                Field::XContent => r.x_content = r.string(field, v),
                Field::UserName | Field::GroupName => {
                    let _ = r.string(field, v);
                }
                Field::Offset | Field::EndOffset | Field::ChunkOffset | Field::InnerOffset => {
                    if let Some(i) = r.int(field, v) {
                        if i < 0 {
                            r.bad(field, format!("negative offset {i}"));
                        }
                    }
                }
                // Handled above.
                Field::Xattrs => {}
            }
        }
        Ok(Some(r))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(None)
    }
}

struct EntriesSeed<'a> {
    st: &'a mut State,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let flavor = self.st.flavor;
        loop {
            let raw = match seq.next_element_seed(EntrySeed { flavor })? {
                None => return Ok(()),
                Some(r) => r,
            };
            let r = match raw {
                Some(raw) => self.st.entry(raw),
                None => Err(TocError::Entry {
                    index: self.st.index,
                    name: String::new(),
                    field: "entry",
                    reason: "not a JSON object".into(),
                }),
            };
            if let Err(e) = r {
                self.st.error = Some(e);
                return Err(de::Error::custom("entry rejected"));
            }
            self.st.index += 1;
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom("\"entries\" must be an array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(de::Error::custom("\"entries\" must be an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(de::Error::custom("\"entries\" must be an array"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(de::Error::custom("\"entries\" must be an array"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(de::Error::custom("\"entries\" must be an array"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(de::Error::custom("\"entries\" must be an array"))
    }
}

struct TopVisitor<'a> {
    st: &'a mut State,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOC object {\"version\":1,\"entries\":[...]}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut buf = [0u8; 24];
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match fold_key(&key.0, &mut buf) {
                Some(b"version") => {
                    self.st.version = match map.next_value::<Val<'de>>()? {
                        Val::Null => None,
                        Val::U(u) => Some(u as i128),
                        Val::I(i) => Some(i as i128),
                        other => {
                            self.st.error = Some(TocError::Toc {
                                field: "version",
                                reason: format!("expected an integer, got {}", other.kind()),
                            });
                            return Err(de::Error::custom("bad version"));
                        }
                    }
                }
                Some(b"entries") => {
                    if self.st.entries_seen {
                        self.st.error =
                            Some(TocError::Toc { field: "entries", reason: "listed more than once".into() });
                        return Err(de::Error::custom("duplicate entries"));
                    }
                    self.st.entries_seen = true;
                    map.next_value_seed(EntriesSeed { st: &mut *self.st })?;
                }
                _ => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Semantics

struct PendingWhiteout {
    index: usize,
    name: String,
    /// Path of the hidden entry (relative, validated).
    path: Vec<u8>,
    inode: Inode,
}

struct PendingOpaque {
    index: usize,
    name: String,
    /// Directory path (relative; empty = root).
    dir: Vec<u8>,
}

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
    /// Directory of the previous insertion: (relative path, node).
    parent_cache: Option<(Vec<u8>, tree::NodeId)>,
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
pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
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
pub fn parse_time(s: &str) -> Result<(i64, u32), String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{:?} is not an RFC 3339 time: {e}", trunc(s)))?;
    Ok((t.unix_timestamp(), t.nanosecond()))
}

/// The kernel's `new_encode_dev` for a major/minor pair in its range.
pub fn encode_dev(major: i64, minor: i64) -> Result<u32, String> {
    if !(0..=0xfff).contains(&major) {
        return Err(format!("device major {major} out of range (0..=4095)"));
    }
    if !(0..=0xfffff).contains(&minor) {
        return Err(format!("device minor {minor} out of range (0..=1048575)"));
    }
    let (ma, mi) = (major as u32, minor as u32);
    Ok((mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12))
}

impl State {
    fn entry(&mut self, raw: Raw<'_>) -> Result<(), TocError> {
        let index = self.index;
        // The printable name is only built for an error (it costs more than the parse).
        let shown =
            |raw_name: &Option<Cow<'_, str>>| raw_name.as_deref().map(|n| tree::show(n.as_bytes())).unwrap_or_default();
        let err =
            |field: &'static str, reason: String| TocError::Entry { index, name: shown(&raw.name), field, reason };
        if let Some((field, reason)) = &raw.bad {
            return Err(err(field, reason.clone()));
        }
        let typ = raw.typ.as_deref().ok_or_else(|| err("type", "missing".into()))?;

        // Fields every entry carries are checked whatever the type.
        for (field, d) in [("digest", &raw.digest), ("chunkDigest", &raw.chunk_digest)] {
            if let Some(d) = d {
                if !d.is_empty() {
                    parse_digest(d).map_err(|r| err(field, r))?;
                }
            }
        }
        if let Some(s) = raw.chunk_size {
            if s < 0 {
                return Err(err("chunkSize", format!("negative size {s}")));
            }
        }

        if typ == "chunk" {
            let Some(last) = &self.last_reg else {
                return Err(err("type", "chunk entry does not follow a regular file entry".into()));
            };
            if let Some(n) = raw.name.as_deref() {
                // eStargz chunks may leave the name out; when given it must be the file's.
                if normalize(n) != Some(last.as_slice()) {
                    return Err(err(
                        "name",
                        format!("chunk entry does not follow its file (previous file is {})", tree::show(last)),
                    ));
                }
            }
            if let Some(t) = raw.chunk_type.as_deref() {
                if !t.is_empty() && t != "zeros" {
                    return Err(err("chunkType", format!("unknown chunk type {:?}", trunc(t))));
                }
            }
            return Ok(());
        }
        self.last_reg = None;

        let name = raw.name.as_deref().ok_or_else(|| err("name", "missing".into()))?;
        if name.is_empty() {
            return Err(err("name", "empty name".into()));
        }
        // Validated by the tree on insertion (whiteout and hard link paths are checked below).
        let path = normalize(name);

        let is_hardlink = typ == "hardlink"
            || (typ == "reg"
                && raw.link_name.as_deref().is_some_and(|l| !l.is_empty())
                && raw.digest.as_deref().unwrap_or("").is_empty()
                && raw.x_payload.is_none()
                && raw.x_content.is_none());
        let ftype = if is_hardlink {
            S_IFREG
        } else {
            file_type_of(typ).ok_or_else(|| err("type", format!("unknown type {:?}", trunc(typ))))?
        };

        // Values checked for every non-chunk entry (hard links included).
        let mode = raw.mode.unwrap_or(0);
        if !(0..=0o177777).contains(&mode) {
            return Err(err("mode", format!("{mode} is out of range")));
        }
        let mode = mode as u32;
        if !is_hardlink && mode & S_IFMT != 0 && mode & S_IFMT != ftype {
            return Err(err("mode", format!("file type bits of mode 0o{mode:o} contradict type {typ:?}")));
        }
        let id = |field: &'static str, v: Option<i64>| -> Result<u32, TocError> {
            let v = v.unwrap_or(0);
            u32::try_from(v).map_err(|_| err(field, format!("{v} is out of range")))
        };
        let uid = id("uid", raw.uid)?;
        let gid = id("gid", raw.gid)?;
        let (mtime, mtime_nsec) = match raw.modtime.as_deref() {
            None => (0, 0),
            Some("") if self.flavor == Flavor::Estargz => (0, 0),
            Some(t) => parse_time(t).map_err(|r| err("modtime", r))?,
        };
        for (field, t) in [("accesstime", &raw.atime), ("changetime", &raw.ctime)] {
            if let Some(t) = t {
                parse_time(t).map_err(|r| err(field, r))?;
            }
        }
        let rdev = encode_dev(raw.dev_major.unwrap_or(0), raw.dev_minor.unwrap_or(0))
            .map_err(|r| err("devMajor/devMinor", r))?;
        let size = raw.size.unwrap_or(0);
        if size < 0 {
            return Err(err("size", format!("negative size {size}")));
        }

        // eStargz bookkeeping entries are not part of the tree.
        if self.flavor == Flavor::Estargz
            && matches!(path, Some(b".prefetch.landmark" | b".no.prefetch.landmark" | b"stargz.index.json"))
        {
            return Ok(());
        }

        // OCI whiteouts.
        if !self.keep_whiteouts {
            if let Some(p) = path {
                let (dir, base) = match p.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (&b""[..], p),
                };
                if base == WHITEOUT_OPAQUE {
                    self.opaques.push(PendingOpaque { index, name: shown(&raw.name), dir: dir.to_vec() });
                    return Ok(());
                }
                if base.starts_with(WHITEOUT_META_PREFIX) {
                    return Ok(());
                }
                if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                    let mut hp = dir.to_vec();
                    if !hp.is_empty() {
                        hp.push(b'/');
                    }
                    hp.extend_from_slice(hidden);
                    split_path(&hp)
                        .map_err(|e| err("name", format!("whiteout names an invalid path: {}", tree_reason(&e))))?;
                    if self.whiteouts.len() >= self.tree.limits.max_entries {
                        return Err(err("name", format!("too many entries (limit {})", self.tree.limits.max_entries)));
                    }
                    self.whiteouts.push(PendingWhiteout {
                        index,
                        name: shown(&raw.name),
                        path: hp,
                        inode: Inode { mode: S_IFCHR, uid, gid, rdev: 0, size: 0, mtime, mtime_nsec },
                    });
                    return Ok(());
                }
            }
        }

        if is_hardlink {
            let target = raw
                .link_name
                .as_deref()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| err("linkName", "hard link without a target".into()))?;
            let p = path.ok_or_else(|| err("name", "the root cannot be a hard link".into()))?;
            let t = normalize(target).ok_or_else(|| err("linkName", "hard link to the root directory".into()))?;
            split_path(t).map_err(|e| err("linkName", tree_reason(&e)))?;
            if t == p {
                return Err(err("linkName", "hard link to itself".into()));
            }
            self.tree.insert_hardlink(p, t).map_err(|e| {
                let field = if matches!(e, TreeError::BadHardlink { .. }) { "linkName" } else { "name" };
                err(field, tree_reason(&e))
            })?;
            return Ok(());
        }

        let mut entry = Entry {
            inode: Inode {
                mode: ftype | (mode & 0o7777),
                uid,
                gid,
                rdev: if ftype == S_IFCHR || ftype == S_IFBLK { rdev } else { 0 },
                size: 0,
                mtime,
                mtime_nsec,
            },
            ..Entry::default()
        };

        match ftype {
            S_IFREG => {
                let mut size = size as u64;
                if let Some(c) = raw.x_content.as_deref() {
                    let content = decode_base64(c).map_err(|r| err("x-content", r))?;
                    if content.len() > INLINE_CONTENT_MAX {
                        return Err(err(
                            "x-content",
                            format!("inline content of {} bytes (limit {INLINE_CONTENT_MAX})", content.len()),
                        ));
                    }
                    if raw.size.is_some() && size != content.len() as u64 {
                        return Err(err(
                            "size",
                            format!("size {size} differs from the {} bytes of x-content", content.len()),
                        ));
                    }
                    size = content.len() as u64;
                    if !content.is_empty() {
                        entry.content = Some(content);
                    }
                }
                if let Some(p) = raw.x_payload.as_deref() {
                    let pb = p.as_bytes();
                    split_path(pb).map_err(|e| {
                        err("x-payload", format!("not a clean relative object path: {}", tree_reason(&e)))
                    })?;
                    entry.payload = Some(pb.to_vec());
                } else if let Some(d) = raw.digest.as_deref().filter(|d| !d.is_empty()) {
                    let hex = parse_digest(d).map_err(|r| err("digest", r))?;
                    let mut p = Vec::with_capacity(65);
                    p.extend_from_slice(&hex.as_bytes()[..2]);
                    p.push(b'/');
                    p.extend_from_slice(&hex.as_bytes()[2..]);
                    entry.payload = Some(p);
                }
                if size > 0 && entry.payload.is_none() && entry.content.is_none() {
                    return Err(err("digest", format!("regular file of {size} bytes has no digest")));
                }
                entry.inode.size = size;
            }
            S_IFLNK => {
                let t = raw.link_name.as_deref().unwrap_or("");
                if t.is_empty() {
                    return Err(err("linkName", "symlink without a target".into()));
                }
                if t.len() >= PATH_MAX {
                    return Err(err(
                        "linkName",
                        format!("symlink target of {} bytes (limit {})", t.len(), PATH_MAX - 1),
                    ));
                }
                if t.contains('\0') {
                    return Err(err("linkName", "NUL byte in symlink target".into()));
                }
                entry.inode.size = t.len() as u64;
                entry.payload = Some(t.as_bytes().to_vec());
            }
            _ => {}
        }

        if let Some(xs) = &raw.xattrs {
            entry.xattrs = decode_xattrs(xs).map_err(|(f, r)| err(f, r))?;
        }

        match path {
            None => self.tree.set_root(entry).map_err(|e| {
                err(if matches!(e, TreeError::BadField { .. }) { "type" } else { "name" }, tree_reason(&e))
            })?,
            Some(p) => {
                self.insert(p, entry).map_err(|e| err("name", tree_reason(&e)))?;
            }
        }
        if ftype == S_IFREG {
            self.last_reg = path.map(|p| p.to_vec());
        }
        Ok(())
    }

    /// [`Tree::insert`], skipping the walk from the root when the entry lives in the same
    /// directory as the previous one (the common case in tar order).
    fn insert(&mut self, p: &[u8], entry: Entry) -> Result<tree::NodeId, TreeError> {
        let (dir, name) = match p.iter().rposition(|&b| b == b'/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (&b""[..], p),
        };
        if let Some((cdir, cid)) = &self.parent_cache {
            // The cached directory's path was validated when it was cached; the name is checked
            // by insert_child, the whole length here.
            if cdir.as_slice() == dir && p.len() < PATH_MAX && self.tree.child(*cid, name).is_none() {
                return self.tree.insert_child(*cid, name, entry);
            }
        }
        let id = self.tree.insert(p, entry)?;
        self.parent_cache = Some((dir.to_vec(), self.tree.node(id).parent));
        Ok(id)
    }

    /// Turn the collected OCI whiteout markers into overlay whiteouts and opaque directories.
    fn apply_whiteouts(&mut self) -> Result<(), TocError> {
        for o in std::mem::take(&mut self.opaques) {
            let err = |reason: String| TocError::Entry { index: o.index, name: o.name.clone(), field: "name", reason };
            let id = match self.tree.lookup(&o.dir) {
                Some(id) => id,
                None => {
                    let e = Entry { inode: self.tree.implicit_dir, ..Entry::default() };
                    self.tree.insert(&o.dir, e).map_err(|e| err(format!("opaque marker: {}", tree_reason(&e))))?
                }
            };
            let n = self.tree.node_mut(id);
            if !n.entry.inode.is_dir() || n.link_to.is_some() {
                return Err(err("opaque marker inside a path that is not a directory".into()));
            }
            match n.entry.xattrs.iter_mut().find(|x| x.key == OVERLAY_OPAQUE_XATTR) {
                Some(x) => x.value = b"y".to_vec(),
                None => n.entry.xattrs.push(Xattr { key: OVERLAY_OPAQUE_XATTR.to_vec(), value: b"y".to_vec() }),
            }
        }
        for w in std::mem::take(&mut self.whiteouts) {
            if self.tree.lookup(&w.path).is_some() {
                // A file of this layer at the same name wins (OCI image spec).
                continue;
            }
            // Below something that is not a directory (e.g. an earlier whiteout): nothing to hide.
            let mut cur = tree::ROOT;
            let comps: Vec<&[u8]> = w.path.split(|&b| b == b'/').collect();
            let mut blocked = false;
            for c in &comps[..comps.len() - 1] {
                match self.tree.child(cur, c) {
                    Some(id) => {
                        let n = self.tree.node(id);
                        if !n.entry.inode.is_dir() || n.link_to.is_some() {
                            blocked = true;
                            break;
                        }
                        cur = id;
                    }
                    None => break,
                }
            }
            if blocked {
                continue;
            }
            let e = Entry { inode: w.inode, ..Entry::default() };
            self.tree.insert(&w.path, e).map_err(|e| TocError::Entry {
                index: w.index,
                name: w.name.clone(),
                field: "name",
                reason: format!("whiteout: {}", tree_reason(&e)),
            })?;
        }
        Ok(())
    }
}

/// Decode and validate an `xattrs` object (last duplicate wins, order of first appearance kept).
fn decode_xattrs(xs: &[(Cow<'_, str>, Cow<'_, str>)]) -> Result<Vec<Xattr>, (&'static str, String)> {
    let mut out: Vec<Xattr> = Vec::with_capacity(xs.len());
    for (k, v) in xs {
        let key = k.as_bytes();
        if key.is_empty() {
            return Err(("xattrs", "empty xattr name".into()));
        }
        if key.len() > XATTR_NAME_MAX {
            return Err(("xattrs", format!("xattr name longer than {XATTR_NAME_MAX} bytes")));
        }
        if key.contains(&0) {
            return Err(("xattrs", "NUL byte in xattr name".into()));
        }
        let value = decode_base64(v).map_err(|r| ("xattrs", format!("{}: {r}", tree::show(key))))?;
        if value.len() > XATTR_SIZE_MAX - 1 {
            return Err(("xattrs", format!("{}: value longer than {} bytes", tree::show(key), XATTR_SIZE_MAX - 1)));
        }
        match out.iter_mut().find(|x| x.key == key) {
            Some(x) => x.value = value,
            None => out.push(Xattr { key: key.to_vec(), value }),
        }
        if out.len() > EXTERNAL_XATTR_BUDGET {
            return Err(("xattrs", format!("xattrs exceed the per-file budget of {EXTERNAL_XATTR_BUDGET} bytes")));
        }
    }
    let used: usize =
        if out.is_empty() { 0 } else { 12 + out.iter().map(|x| 7 + x.key.len() + x.value.len()).sum::<usize>() };
    if used > EXTERNAL_XATTR_BUDGET {
        return Err(("xattrs", format!("xattrs exceed the per-file budget of {EXTERNAL_XATTR_BUDGET} bytes")));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Result<Tree, TocError> {
        parse(json.as_bytes(), &TocOptions::default())
    }

    fn toc(entries: &str) -> String {
        format!("{{\"version\":1,\"entries\":[{entries}]}}")
    }

    #[track_caller]
    fn rejects(json: &str, field: &str) {
        match p(json) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains(field), "error {s:?} does not name {field:?} (input {json})");
                assert!(!s.contains('\n'), "multi-line error {s:?}");
            }
        }
    }

    const D: &str = "sha256:99fe908c699dc068438b23e28319cadff1f2153c3043bafb8e83a430bba0a2c6";

    #[test]
    fn basic_tree() {
        let t = p(&toc(&format!(
            r#"{{"type":"dir","name":"./","mode":493,"modtime":"2022-01-07T12:36:43.5+01:00"}},
               {{"type":"symlink","name":"bin","linkName":"usr/bin","mode":511}},
               {{"type":"reg","name":"usr/bin/foo","mode":493,"size":5,"digest":"{D}","uid":7,"gid":8,
                 "xattrs":{{"user.a":"YmFy"}}}},
               {{"type":"chunk","name":"usr/bin/foo","chunkSize":3,"chunkOffset":2,"chunkDigest":"{D}"}},
               {{"type":"hardlink","name":"usr/bin/bar","linkName":"/usr/bin/foo"}},
               {{"type":"char","name":"dev/c","devMajor":42,"devMinor":300,"mode":8630}}"#
        )))
        .unwrap();
        let root = t.node(tree::ROOT);
        assert_eq!(root.entry.inode.mode, S_IFDIR | 0o755);
        assert_eq!(root.entry.inode.mtime, 1641555403);
        assert_eq!(root.entry.inode.mtime_nsec, 500_000_000);
        let f = t.node(t.lookup(b"usr/bin/foo").unwrap());
        assert_eq!(
            f.entry.inode,
            Inode { mode: S_IFREG | 0o755, uid: 7, gid: 8, rdev: 0, size: 5, mtime: 0, mtime_nsec: 0 }
        );
        assert_eq!(
            f.entry.payload.as_deref(),
            Some(&b"99/fe908c699dc068438b23e28319cadff1f2153c3043bafb8e83a430bba0a2c6"[..])
        );
        assert_eq!(f.entry.xattrs, vec![Xattr { key: b"user.a".to_vec(), value: b"bar".to_vec() }]);
        let usr = t.node(t.lookup(b"usr").unwrap());
        assert_eq!(usr.entry.inode, Inode { mode: S_IFDIR | 0o755, ..Inode::default() });
        let l = t.node(t.lookup(b"usr/bin/bar").unwrap());
        assert_eq!(l.link_to, t.lookup(b"usr/bin/foo"));
        let c = t.node(t.lookup(b"dev/c").unwrap());
        assert_eq!(c.entry.inode.rdev, (300 & 0xff) | (42 << 8) | ((300 & !0xff) << 12));
        assert_eq!(c.entry.inode.mode, S_IFCHR | 0o666);
        let s = t.node(t.lookup(b"bin").unwrap());
        assert_eq!(s.entry.payload.as_deref(), Some(&b"usr/bin"[..]));
        assert_eq!(s.entry.inode.size, 7);
    }

    #[test]
    fn keys_case_insensitive_unknown_ignored_last_wins() {
        let t = p(r#"{"VERSION":1,"tarSplitDigest":"x","Entries":[
            {"TYPE":"reg","NAME":"a","MoDe":420,"mode":384,"ſize":0,"LINKNAME":"","whatever":{"deep":[1,2,{"x":null}]}},
            {"type":"dir","name":"d","\u212Aey":1}]}"#)
        .unwrap();
        let a = t.node(t.lookup(b"a").unwrap());
        assert_eq!(a.entry.inode.mode, S_IFREG | 0o600);
    }

    #[test]
    fn extensions_x_payload_and_x_content() {
        let t = p(&toc(&format!(
            r#"{{"type":"reg","name":"p","size":9,"x-payload":"a5/5e63.file","digest":"{D}"}},
               {{"type":"reg","name":"c","x-content":"Rk9PQkFSCklOQUZJTEUK"}}"#
        )))
        .unwrap();
        assert_eq!(t.node(t.lookup(b"p").unwrap()).entry.payload.as_deref(), Some(&b"a5/5e63.file"[..]));
        let c = t.node(t.lookup(b"c").unwrap());
        assert_eq!(c.entry.content.as_deref(), Some(&b"FOOBAR\nINAFILE\n"[..]));
        assert_eq!(c.entry.inode.size, 15);
    }

    #[test]
    fn whiteouts_convert_or_stay_literal() {
        let j = toc(r#"{"type":"dir","name":"d","mode":493},
               {"type":"reg","name":"d/.wh..wh..opq","mode":0},
               {"type":"reg","name":"d/.wh.gone","uid":3,"modtime":"1970-01-01T00:00:10Z"},
               {"type":"reg","name":".wh.x"},
               {"type":"reg","name":"x/.wh.y"},
               {"type":"reg","name":".wh.kept"},
               {"type":"reg","name":"kept"},
               {"type":"reg","name":".wh..wh.plnk"}"#);
        let t = p(&j).unwrap();
        let d = t.node(t.lookup(b"d").unwrap());
        assert_eq!(d.entry.xattrs, vec![Xattr { key: b"trusted.overlay.opaque".to_vec(), value: b"y".to_vec() }]);
        let g = t.node(t.lookup(b"d/gone").unwrap());
        assert_eq!(g.entry.inode, Inode { mode: S_IFCHR, uid: 3, mtime: 10, ..Inode::default() });
        assert!(t.node(t.lookup(b"x").unwrap()).entry.inode.file_type() == S_IFCHR);
        assert!(t.lookup(b"x/y").is_none());
        assert!(t.node(t.lookup(b"kept").unwrap()).entry.inode.is_reg());
        assert!(t.lookup(b".wh..wh.plnk").is_none());
        assert!(t.lookup(b"d/.wh.gone").is_none());

        let t = parse(j.as_bytes(), &TocOptions { keep_whiteouts: true, ..TocOptions::default() }).unwrap();
        assert!(t.lookup(b"d/.wh..wh..opq").is_some());
        assert!(t.lookup(b"d/.wh.gone").is_some());
        assert!(t.lookup(b"d/gone").is_none());
        assert!(t.node(t.lookup(b"d").unwrap()).entry.xattrs.is_empty());
    }

    #[test]
    fn rejects_document_errors() {
        rejects("", "invalid JSON");
        rejects("[]", "invalid JSON");
        rejects(r#"{"version":1}"#, "entries");
        rejects(r#"{"entries":[]}"#, "version");
        rejects(r#"{"version":2,"entries":[]}"#, "version");
        rejects(r#"{"version":1.0,"entries":[]}"#, "version");
        rejects(r#"{"version":1,"entries":[],"entries":[]}"#, "entries");
        rejects(r#"{"version":1,"entries":{}}"#, "array");
        rejects(r#"{"version":1,"entries":[]} x"#, "after the document");
        rejects(r#"{"version":1,"entries":[]}{}"#, "after the document");
        rejects(r#"{"version":1,"entries":[{"type":"dir","name":"a"},]}"#, "entry 1");
        rejects(r#"{"version":1,"entries":[5]}"#, "entry 0");
        let deep = format!(
            r#"{{"version":1,"entries":[{{"type":"dir","name":"a","x":{}{}}}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        rejects(&deep, "recursion limit");
        let big = toc(r#"{"type":"dir","name":"a"}"#);
        let e = parse(big.as_bytes(), &TocOptions { max_input_bytes: 10, ..TocOptions::default() }).unwrap_err();
        assert!(matches!(e, TocError::TooLarge { .. }));
    }

    #[test]
    fn rejects_bad_names() {
        rejects(&toc(r#"{"type":"reg","name":"a/../b"}"#), "name");
        rejects(&toc(r#"{"type":"reg","name":"../b"}"#), "'..'");
        rejects(&toc(r#"{"type":"reg","name":"a/./b"}"#), "'.'");
        rejects(&toc(r#"{"type":"reg","name":"a//b"}"#), "empty path component");
        rejects(&toc(r#"{"type":"reg","name":""}"#), "empty name");
        rejects(&toc(r#"{"type":"reg"}"#), "name: missing");
        rejects(&toc(r#"{"type":"reg","name":"a\u0000b"}"#), "NUL");
        rejects(&toc(&format!(r#"{{"type":"reg","name":"{}"}}"#, "x".repeat(256))), "255");
        rejects(&toc(&format!(r#"{{"type":"reg","name":"{}"}}"#, "x/".repeat(2100))), "PATH_MAX");
        rejects(&toc(r#"{"type":"reg","name":"/"}"#), "root must be a directory");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"reg","name":"f/g"}"#), "not a directory");
        rejects(
            &toc(r#"{"type":"reg","name":"f","mode":420},{"type":"reg","name":"f","mode":384}"#),
            "different metadata",
        );
        // Identical duplicates are accepted.
        p(&toc(r#"{"type":"reg","name":"f","mode":420},{"type":"reg","name":"/f","mode":420}"#)).unwrap();
    }

    #[test]
    fn rejects_bad_fields() {
        rejects(&toc(r#"{"name":"a"}"#), "type: missing");
        rejects(&toc(r#"{"type":"sock","name":"a"}"#), "unknown type");
        rejects(&toc(r#"{"type":"reg","name":"a","mode":"420"}"#), "mode");
        rejects(&toc(r#"{"type":"reg","name":"a","mode":420.5}"#), "mode");
        rejects(&toc(r#"{"type":"reg","name":"a","mode":-1}"#), "mode");
        rejects(&toc(r#"{"type":"reg","name":"a","mode":262144}"#), "mode");
        rejects(&toc(r#"{"type":"reg","name":"a","mode":16877}"#), "contradict");
        rejects(&toc(r#"{"type":"dir","name":"a","mode":41471}"#), "contradict");
        rejects(&toc(r#"{"type":"reg","name":"a","uid":4294967296}"#), "uid");
        rejects(&toc(r#"{"type":"reg","name":"a","gid":-1}"#), "gid");
        rejects(&toc(r#"{"type":"reg","name":"a","size":-1}"#), "size");
        rejects(&toc(r#"{"type":"reg","name":"a","size":18446744073709551615}"#), "size");
        rejects(&toc(r#"{"type":"reg","name":"a","modtime":"yesterday"}"#), "modtime");
        rejects(&toc(r#"{"type":"reg","name":"a","accesstime":"2020-13-01T00:00:00Z"}"#), "accesstime");
        rejects(&toc(r#"{"type":"char","name":"a","devMajor":4096}"#), "devMajor");
        rejects(&toc(r#"{"type":"char","name":"a","devMinor":1048576}"#), "devMinor");
        rejects(&toc(r#"{"type":"reg","name":"a","size":3,"digest":"sha256:abc"}"#), "digest");
        rejects(
            &toc(&format!(
                r#"{{"type":"reg","name":"a","size":3,"digest":"{}"}}"#,
                D.to_uppercase().replace("SHA256", "sha256")
            )),
            "digest",
        );
        rejects(
            &toc(&format!(r#"{{"type":"reg","name":"a","size":3,"digest":"{}"}}"#, D.replace("sha256", "sha512"))),
            "digest",
        );
        rejects(&toc(r#"{"type":"reg","name":"a","size":3}"#), "no digest");
        rejects(&toc(r#"{"type":"reg","name":"a","x-content":"!!"}"#), "x-content");
        rejects(&toc(r#"{"type":"reg","name":"a","size":2,"x-content":"YWJj"}"#), "size");
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 5001]);
        rejects(&toc(&format!(r#"{{"type":"reg","name":"a","x-content":"{big}"}}"#)), "5000");
        rejects(&toc(r#"{"type":"reg","name":"a","size":1,"x-payload":"../etc/shadow"}"#), "x-payload");
        rejects(&toc(r#"{"type":"reg","name":"a","size":1,"x-payload":"/abs"}"#), "x-payload");
        rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"user.a":"not base64!"}}"#), "xattrs");
        rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"":"YQ=="}}"#), "empty xattr name");
        rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"user.\u0000":"YQ=="}}"#), "NUL");
        rejects(
            &toc(&format!(r#"{{"type":"reg","name":"a","xattrs":{{"user.{}":"YQ=="}}}}"#, "k".repeat(251))),
            "xattr name longer",
        );
        let v = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 65536]);
        rejects(&toc(&format!(r#"{{"type":"reg","name":"a","xattrs":{{"user.a":"{v}"}}}}"#)), "value longer");
        let v = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 20000]);
        rejects(&toc(&format!(r#"{{"type":"reg","name":"a","xattrs":{{"user.a":"{v}","user.b":"{v}"}}}}"#)), "budget");
        rejects(&toc(r#"{"type":"reg","name":"a","xattrs":["x"]}"#), "xattrs");
        rejects(&toc(r#"{"type":"reg","name":"a","xattrs":{"user.a":1}}"#), "xattrs");
        rejects(&toc(r#"{"type":"reg","name":"a","name":7}"#), "name");
    }

    #[test]
    fn rejects_bad_links_and_chunks() {
        rejects(&toc(r#"{"type":"symlink","name":"s"}"#), "linkName");
        rejects(&toc(&format!(r#"{{"type":"symlink","name":"s","linkName":"{}"}}"#, "x".repeat(4096))), "linkName");
        rejects(&toc(r#"{"type":"symlink","name":"s","linkName":"a\u0000"}"#), "NUL");
        rejects(&toc(r#"{"type":"hardlink","name":"h","linkName":"missing"}"#), "does not exist");
        rejects(&toc(r#"{"type":"hardlink","name":"h","linkName":"h"}"#), "itself");
        rejects(&toc(r#"{"type":"hardlink","name":"h"}"#), "linkName");
        rejects(&toc(r#"{"type":"dir","name":"d"},{"type":"hardlink","name":"h","linkName":"d"}"#), "directory");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"hardlink","name":"h","linkName":"f/../f"}"#), "linkName");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"hardlink","name":"/","linkName":"f"}"#), "root");
        rejects(&toc(r#"{"type":"chunk","name":"f"}"#), "chunk");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"dir","name":"d"},{"type":"chunk","name":"f"}"#), "chunk");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"chunk","name":"g"}"#), "does not follow");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"chunk","name":"f","chunkType":"bogus"}"#), "chunkType");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"chunk","name":"f","chunkSize":-3}"#), "chunkSize");
        rejects(&toc(r#"{"type":"reg","name":"f","offset":-1}"#), "offset");
        rejects(&toc(r#"{"type":"reg","name":".wh."}"#), "whiteout");
        rejects(&toc(r#"{"type":"reg","name":"f"},{"type":"reg","name":"f/.wh..wh..opq"}"#), "not a directory");
        // Several chunks in a row are fine; so is a reg with linkName acting as a hard link.
        p(&toc(r#"{"type":"reg","name":"f","size":1,"x-content":"YQ=="},{"type":"chunk","name":"f"},{"type":"chunk","name":"./f"},
                  {"type":"reg","name":"g","linkName":"f"}"#))
        .unwrap();
    }

    #[test]
    fn limits() {
        let opts = TocOptions { limits: Limits { max_entries: 3, max_depth: 2 }, ..TocOptions::default() };
        let e = parse(
            toc(r#"{"type":"dir","name":"a"},{"type":"dir","name":"b"},{"type":"dir","name":"c"}"#).as_bytes(),
            &opts,
        )
        .unwrap_err();
        assert!(e.to_string().contains("too many entries"), "{e}");
        let e = parse(toc(r#"{"type":"dir","name":"a/b/c"}"#).as_bytes(), &opts).unwrap_err();
        assert!(e.to_string().contains("deeper"), "{e}");
    }

    #[test]
    fn detects_flavor() {
        assert_eq!(
            detect(br#"{"version":1,"entries":[{"name":".prefetch.landmark","innerOffset":0}]}"#),
            Flavor::Estargz
        );
        assert_eq!(detect(br#"{"version":1,"entries":[{"name":"a","endOffset":3}]}"#), Flavor::ZstdChunked);
    }

    #[test]
    fn dev_encoding_matches_kernel() {
        assert_eq!(encode_dev(42, 17).unwrap(), 10769);
        assert_eq!(encode_dev(420, 170).unwrap(), 107690);
        assert_eq!(encode_dev(0xfff, 0xfffff).unwrap(), 0xffff_ffff);
    }
}
