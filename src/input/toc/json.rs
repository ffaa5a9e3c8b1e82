//! The JSON side of the TOC reader: a streaming serde visitor that reads the document's keys
//! the way Go's encoding/json matches them and hands each entry, as a [`Raw`] record with the
//! first type error noted, to [`State::entry`] without building an intermediate list. Every
//! value, ignored ones included, goes through `deserialize_any`, so serde_json's nesting limit
//! (128 levels) holds for the whole document.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Flavor, State, TocError};

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
    if key.is_ascii() {
        // Every key of a real TOC: byte by byte, without decoding characters.
        let out = buf.get_mut(..key.len())?;
        for (o, b) in out.iter_mut().zip(key.bytes()) {
            *o = b.to_ascii_lowercase();
        }
        return Some(out);
    }
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
pub(super) struct Raw<'de> {
    pub(super) typ: Option<Cow<'de, str>>,
    pub(super) name: Option<Cow<'de, str>>,
    pub(super) link_name: Option<Cow<'de, str>>,
    pub(super) mode: Option<i64>,
    pub(super) size: Option<i64>,
    pub(super) uid: Option<i64>,
    pub(super) gid: Option<i64>,
    pub(super) modtime: Option<Cow<'de, str>>,
    pub(super) atime: Option<Cow<'de, str>>,
    pub(super) ctime: Option<Cow<'de, str>>,
    pub(super) dev_major: Option<i64>,
    pub(super) dev_minor: Option<i64>,
    pub(super) xattrs: Option<Vec<(Cow<'de, str>, Cow<'de, str>)>>,
    pub(super) digest: Option<Cow<'de, str>>,
    pub(super) chunk_digest: Option<Cow<'de, str>>,
    pub(super) chunk_type: Option<Cow<'de, str>>,
    pub(super) chunk_size: Option<i64>,
    pub(super) x_payload: Option<Cow<'de, str>>,
    pub(super) x_content: Option<Cow<'de, str>>,
    /// First type error: (field, reason).
    pub(super) bad: Option<(&'static str, String)>,
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

/// One element of `entries`: read into a [`Raw`] and handed to [`State::entry`] right there
/// (the record is large: not moving it through serde's return values saves a copy per layer).
struct EntrySeed<'a> {
    st: &'a mut State,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    /// `false`: the entry is not an object (a type error reported by the caller). A rejected
    /// entry leaves its error in `State::error` and stops the parse.
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an entry object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let flavor = self.st.flavor;
        let mut r = Raw::default();
        let mut buf = [0u8; 24];
        while let Some(key) = map.next_key::<Key<'de>>()? {
            // Most keys are spelled exactly as the table has them (lowercase ASCII, which folds
            // to itself): looked up as they are; the others are folded first.
            let field = Field::lookup(key.0.as_bytes(), flavor)
                .or_else(|| fold_key(&key.0, &mut buf).and_then(|k| Field::lookup(k, flavor)));
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
        // The map is complete: its closing brace was read.
        if let Err(e) = self.st.entry(r) {
            self.st.error = Some(e);
            return Err(de::Error::custom("entry rejected"));
        }
        Ok(true)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(false)
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
        loop {
            match seq.next_element_seed(EntrySeed { st: &mut *self.st })? {
                None => return Ok(()),
                Some(true) => {}
                Some(false) => {
                    self.st.error = Some(TocError::Entry {
                        index: self.st.index,
                        name: String::new(),
                        field: "entry",
                        reason: "not a JSON object".into(),
                    });
                    return Err(de::Error::custom("entry rejected"));
                }
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

pub(super) struct TopVisitor<'a> {
    pub(super) st: &'a mut State,
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

#[cfg(test)]
mod tests {
    use super::{fold_key, Field, Flavor};

    #[test]
    fn lookup_table_is_lowercase_ascii() {
        // The exact-spelling fast path in `EntrySeed::visit_map` relies on every key the table
        // matches folding to itself.
        for flavor in [Flavor::ZstdChunked, Flavor::Estargz] {
            for f in ALL_FIELDS {
                let folded = f.json_name().to_ascii_lowercase();
                if let Some(hit) = Field::lookup(folded.as_bytes(), flavor) {
                    assert_eq!(hit, f);
                    let mut buf = [0u8; 24];
                    assert_eq!(fold_key(&folded, &mut buf), Some(folded.as_bytes()));
                }
                // A spelling the table does not hold as it is goes through the fold.
                if f.json_name() != folded {
                    assert_eq!(Field::lookup(f.json_name().as_bytes(), flavor), None);
                }
            }
        }
    }

    const ALL_FIELDS: [Field; 25] = [
        Field::Type,
        Field::Name,
        Field::LinkName,
        Field::Mode,
        Field::Size,
        Field::Uid,
        Field::Gid,
        Field::ModTime,
        Field::AccessTime,
        Field::ChangeTime,
        Field::DevMajor,
        Field::DevMinor,
        Field::Xattrs,
        Field::Digest,
        Field::Offset,
        Field::EndOffset,
        Field::ChunkSize,
        Field::ChunkOffset,
        Field::ChunkDigest,
        Field::ChunkType,
        Field::XPayload,
        Field::XContent,
        Field::UserName,
        Field::GroupName,
        Field::InnerOffset,
    ];

    #[test]
    fn fold_key_ascii_and_unicode_paths_agree() {
        let mut buf = [0u8; 24];
        assert_eq!(fold_key("LinkName", &mut buf), Some(&b"linkname"[..]));
        assert_eq!(fold_key("x-PAYLOAD", &mut buf), Some(&b"x-payload"[..]));
        assert_eq!(fold_key("", &mut buf), Some(&b""[..]));
        // Go's extra folds (long s, Kelvin sign) take the character path, to the same bytes.
        assert_eq!(fold_key("\u{17f}ize", &mut buf), Some(&b"size"[..]));
        assert_eq!(fold_key("\u{212a}EY", &mut buf), Some(&b"key"[..]));
        assert_eq!(fold_key("n\u{e4}me", &mut buf), None);
        // At most 24 folded bytes, whichever path.
        let a24 = "A".repeat(24);
        assert_eq!(fold_key(&a24, &mut buf), Some("a".repeat(24).as_bytes()));
        assert_eq!(fold_key(&"A".repeat(25), &mut buf), None);
        assert_eq!(
            fold_key(&format!("{}\u{17f}", "a".repeat(23)), &mut buf),
            Some(&[b"a".repeat(23), b"s".to_vec()].concat()[..])
        );
        assert_eq!(fold_key(&format!("{}\u{17f}", "a".repeat(24)), &mut buf), None);
    }
}
