//! composefs dumpfile text format (what `mkcomposefs --from-file` reads): parser
//! (strict and lenient, hostile input) into a [`Tree`], and the printer [`write_dump`].
//!
//! One entry per line, fields separated by single spaces:
//! `PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [KEY=VALUE]...`.
//! Bytes are escaped as `\\`, `\n`, `\r`, `\t` or `\xHH`; optional fields hold `-`
//! (a literal `-` is written `\x2d`). A MODE starting with `@` marks a hard link whose
//! PAYLOAD names the target; every other field of such a line is ignored.
//!
//! Semantics follow the reference parser (mkcomposefs), but this parser is stricter
//! where the reference silently misreads hostile input: NUL bytes inside paths,
//! payloads and xattr names, malformed digests, out-of-range numbers and
//! nanoseconds >= 10^9 are errors. Mode bits above 0o177777 are dropped, as the
//! reference's image (16-bit i_mode) drops them.

use std::collections::HashMap;
use std::io::Write;

use thiserror::Error;

use crate::tree::{
    self, split_path, Entry, Inode, Limits, NodeId, Tree, Xattr, PATH_MAX, ROOT, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO,
    S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};

/// Largest inline content a dumpfile may carry (the reference's LCFS_INLINE_CONTENT_MAX).
pub const INLINE_CONTENT_MAX: usize = 5000;
/// Per-inode budget for xattrs from external input, counted the way the reference
/// counts it (12 + sum of 7 + name + value per xattr); half of what EROFS can hold.
pub const EXTERNAL_XATTR_BUDGET: usize = u16::MAX as usize / 2;
/// Longest xattr section of one line (the reference's cap against quadratic work).
pub const MAX_XATTR_SECTION: usize = u16::MAX as usize;

/// Parser settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Strict mode (the reference's `CFS_PARSE_STRICT`): a trailing newline is required,
    /// RDEV must be 0 on non-devices, a symlink's SIZE must equal its target length and
    /// symlinks carry no CONTENT. Lenient mode (the reference's default) ignores these.
    pub strict: bool,
    pub limits: Limits,
}

/// Is `mode`'s file type one of the seven the format knows?
pub fn valid_file_type(mode: u32) -> bool {
    matches!(mode & S_IFMT, S_IFREG | S_IFDIR | S_IFLNK | S_IFBLK | S_IFCHR | S_IFSOCK | S_IFIFO)
}

/// Decode one escaped field into `out` (cleared first).
fn unescape_into(s: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    if !s.contains(&b'\\') {
        out.extend_from_slice(s);
        return Ok(());
    }
    out.reserve(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else {
            return Err("'\\' at end of field".into());
        };
        i += 1;
        match e {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let (Some(h), Some(l)) = (s.get(i).and_then(|&b| hexval(b)), s.get(i + 1).and_then(|&b| hexval(b)))
                else {
                    return Err("'\\x' not followed by two hex digits".into());
                };
                i += 2;
                out.push(h << 4 | l);
            }
            other => return Err(format!("unsupported escape '\\{}'", (other as char).escape_default())),
        }
    }
    Ok(())
}

fn unescape(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    unescape_into(s, &mut v)?;
    Ok(v)
}

fn unescape_optional(s: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if s == b"-" {
        Ok(None)
    } else {
        unescape(s).map(Some)
    }
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_uint(s: &[u8], radix: u32, max: u64) -> Result<u64, String> {
    if s.is_empty() {
        return Err("missing number".into());
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = (b as char).to_digit(radix).ok_or_else(|| format!("invalid number {:?}", tree::show(s)))?;
        v = v
            .checked_mul(radix as u64)
            .and_then(|v| v.checked_add(d as u64))
            .ok_or_else(|| format!("number {} out of range", tree::show(s)))?;
    }
    if v > max {
        return Err(format!("number {} out of range (max {max})", tree::show(s)));
    }
    Ok(v)
}

fn parse_mtime(s: &[u8]) -> Result<(i64, u32), String> {
    let dot = s.iter().position(|&b| b == b'.').ok_or("expected SECONDS.NANOSECONDS")?;
    let (sec, nsec) = (&s[..dot], &s[dot + 1..]);
    let sec = match sec.strip_prefix(b"-") {
        Some(abs) => {
            let v = parse_uint(abs, 10, i64::MAX as u64 + 1)?;
            0i64.checked_sub_unsigned(v).ok_or("seconds out of range")?
        }
        None => parse_uint(sec, 10, i64::MAX as u64)? as i64,
    };
    let nsec = parse_uint(nsec, 10, 999_999_999)? as u32;
    Ok((sec, nsec))
}

fn parse_digest(s: &[u8]) -> Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!("digest must be 64 hex digits, got {} characters", s.len()));
    }
    let mut d = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        match (hexval(pair[0]), hexval(pair[1])) {
            (Some(h), Some(l)) => d[i] = h << 4 | l,
            _ => return Err("digest is not hexadecimal".into()),
        }
    }
    Ok(d)
}

/// Reference-compatible accounting of one inode's xattrs (replace on duplicate name,
/// budget checked after every set).
#[derive(Default)]
pub(crate) struct XattrBudget {
    pub used: usize,
}

impl XattrBudget {
    /// Cost of adding an xattr named `name` with `vlen` value bytes when `n_before`
    /// xattrs are present.
    pub(crate) fn entry_cost(n_before: usize, name_len: usize, vlen: usize) -> usize {
        let c = 7 + name_len + vlen;
        if n_before == 0 {
            c + 12
        } else {
            c
        }
    }

    /// Remove the contribution of an existing entry (`n_after` xattrs remain).
    pub(crate) fn remove(&mut self, n_after: usize, name_len: usize, vlen: usize) {
        if n_after == 0 {
            self.used = 0;
        } else {
            self.used = self.used.saturating_sub(7 + name_len + vlen);
        }
    }
}

/// Set (or replace) an xattr with the reference's budget check.
fn set_xattr(
    xattrs: &mut Vec<Xattr>,
    index: &mut Option<HashMap<Vec<u8>, usize>>,
    budget: &mut XattrBudget,
    key: Vec<u8>,
    value: Vec<u8>,
) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty xattr name".into());
    }
    if key.len() > XATTR_NAME_MAX {
        return Err(format!("xattr name longer than {XATTR_NAME_MAX} bytes"));
    }
    if key.contains(&0) {
        return Err("NUL byte in xattr name".into());
    }
    if value.len() > XATTR_SIZE_MAX - 1 {
        return Err(format!("xattr {} value longer than {} bytes", tree::show(&key), XATTR_SIZE_MAX - 1));
    }
    // Linear search for few xattrs, a map once a line holds many (hostile input).
    if index.is_none() && xattrs.len() >= 16 {
        *index = Some(xattrs.iter().enumerate().map(|(i, x)| (x.key.clone(), i)).collect());
    }
    let existing = match index {
        Some(m) => m.get(&key).copied(),
        None => xattrs.iter().position(|x| x.key == key),
    };
    if let Some(i) = existing {
        let old = xattrs.swap_remove(i);
        budget.remove(xattrs.len(), key.len(), old.value.len());
        if let Some(m) = index {
            m.remove(&key);
            if let Some(moved) = xattrs.get(i) {
                m.insert(moved.key.clone(), i);
            }
        }
    }
    let cost = XattrBudget::entry_cost(xattrs.len(), key.len(), value.len());
    if budget.used + cost > EXTERNAL_XATTR_BUDGET {
        return Err(format!("xattrs exceed the per-file budget of {EXTERNAL_XATTR_BUDGET} bytes"));
    }
    budget.used += cost;
    if let Some(m) = index {
        m.insert(key.clone(), xattrs.len());
    }
    xattrs.push(Xattr { key, value });
    Ok(())
}

/// A hard link waiting for the whole file to be read (targets may come later).
struct PendingLink {
    line: usize,
    /// Path relative to the root (no leading `/`).
    path: Vec<u8>,
    parent: NodeId,
    name: Vec<u8>,
    /// Normalised target path (no leading `/`).
    target: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum DumpError {
    #[error("dumpfile line {line}: {path}: {field}: {reason}")]
    Line { line: usize, path: String, field: &'static str, reason: String },
    #[error("dumpfile: {reason}")]
    File { reason: String },
}

struct Parser {
    tree: Tree,
    strict: bool,
    root_seen: bool,
    links: Vec<PendingLink>,
    link_index: HashMap<Vec<u8>, usize>,
    /// Last parent directory looked up: (relative path, node).
    cached_parent: (Vec<u8>, NodeId),
    path_buf: Vec<u8>,
}

/// Parse a dumpfile into a finalized tree.
pub fn parse(input: &[u8], opts: &DumpOptions) -> Result<Tree, DumpError> {
    let mut p = Parser {
        tree: Tree::new(opts.limits),
        strict: opts.strict,
        root_seen: false,
        links: Vec::new(),
        link_index: HashMap::new(),
        cached_parent: (Vec::new(), ROOT),
        path_buf: Vec::new(),
    };
    let mut rest = input;
    let mut lineno = 0usize;
    while !rest.is_empty() {
        lineno += 1;
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => {
                if opts.strict {
                    return Err(DumpError::File { reason: format!("line {lineno}: missing trailing newline") });
                }
                (rest, &rest[rest.len()..])
            }
        };
        rest = next;
        p.line(lineno, line)?;
    }
    if !p.root_seen {
        return Err(DumpError::File { reason: "no entries (the root directory \"/\" is missing)".into() });
    }
    p.resolve_links()?;
    let mut tree = p.tree;
    tree.finalize().map_err(|e| DumpError::File { reason: e.to_string() })?;
    Ok(tree)
}

impl Parser {
    fn line(&mut self, lineno: usize, line: &[u8]) -> Result<(), DumpError> {
        let err = |path: &[u8], field: &'static str, reason: String| DumpError::Line {
            line: lineno,
            path: tree::show(path),
            field,
            reason,
        };
        if let Some(off) = line.iter().position(|&b| b == 0) {
            return Err(err(b"?", "LINE", format!("NUL byte at position {off}")));
        }
        let mut fields: [&[u8]; 11] = [&[]; 11];
        let mut rest = line;
        for f in fields.iter_mut() {
            match rest.iter().position(|&b| b == b' ') {
                Some(i) => {
                    *f = &rest[..i];
                    rest = &rest[i + 1..];
                }
                None => {
                    *f = rest;
                    rest = &rest[rest.len()..];
                }
            }
        }
        let xattr_section = rest;

        let mut path = std::mem::take(&mut self.path_buf);
        let r = self.line_inner(lineno, &fields, xattr_section, &mut path, &err);
        self.path_buf = path;
        r
    }

    fn line_inner(
        &mut self,
        lineno: usize,
        fields: &[&[u8]; 11],
        xattr_section: &[u8],
        path: &mut Vec<u8>,
        err: &dyn Fn(&[u8], &'static str, String) -> DumpError,
    ) -> Result<(), DumpError> {
        unescape_into(fields[0], path).map_err(|r| err(fields[0], "PATH", r))?;
        let path: &[u8] = path;
        if path.is_empty() {
            return Err(err(b"", "PATH", "empty path".into()));
        }
        if path.contains(&0) {
            return Err(err(path, "PATH", "NUL byte in path".into()));
        }
        let f = |i: usize| fields[i];
        let (is_link, mode_field) = match f(2).strip_prefix(b"@") {
            Some(m) => (true, m),
            None => (false, f(2)),
        };
        let mode = parse_uint(mode_field, 8, u32::MAX as u64).map_err(|r| err(path, "MODE", r))? as u32 & 0o177777;
        if !valid_file_type(mode) {
            return Err(err(path, "MODE", format!("invalid file type in mode {mode:o}")));
        }
        let is_root = path == b"/";
        if is_root {
            if self.root_seen {
                return Err(err(path, "PATH", "root directory listed twice".into()));
            }
            if mode & S_IFMT != S_IFDIR {
                return Err(err(path, "MODE", "root must be a directory".into()));
            }
        } else if !self.root_seen {
            return Err(err(path, "PATH", "the root directory \"/\" must be the first entry".into()));
        }
        if is_link && mode & S_IFMT == S_IFDIR {
            return Err(err(path, "MODE", "directories cannot be hard links".into()));
        }

        // Locate parent and name for non-root entries.
        let (parent, name, rel): (NodeId, &[u8], &[u8]) = if is_root {
            (ROOT, b"", b"")
        } else {
            let rel = path.strip_prefix(b"/").ok_or_else(|| err(path, "PATH", "path must start with '/'".into()))?;
            let comps = split_path(rel).map_err(|e| err(path, "PATH", tree_reason(&e)))?;
            let name = *comps.last().ok_or_else(|| err(path, "PATH", "empty path".into()))?;
            let parent_rel = &rel[..rel.len() - name.len()];
            let parent_rel = parent_rel.strip_suffix(b"/").unwrap_or(parent_rel);
            let parent = self.find_parent(parent_rel, &comps[..comps.len() - 1]).map_err(|r| err(path, "PATH", r))?;
            // (insert_child rejects names already in the tree.)
            if self.link_index.contains_key(rel) {
                return Err(err(path, "PATH", "path listed twice".into()));
            }
            (parent, name, rel)
        };

        if is_link {
            let target = unescape_optional(f(8)).map_err(|r| err(path, "PAYLOAD", r))?;
            let target = target.ok_or_else(|| err(path, "PAYLOAD", "hard link without a target path".into()))?;
            if target.contains(&0) {
                return Err(err(path, "PAYLOAD", "NUL byte in hard link target".into()));
            }
            let target = normalize_target(&target);
            if target == rel {
                return Err(err(path, "PAYLOAD", "hard link to itself".into()));
            }
            if self.tree.len() + self.links.len() >= self.tree.limits.max_entries {
                return Err(err(path, "PATH", format!("too many entries (limit {})", self.tree.limits.max_entries)));
            }
            self.link_index.insert(rel.to_vec(), self.links.len());
            self.links.push(PendingLink { line: lineno, path: rel.to_vec(), parent, name: name.to_vec(), target });
            return Ok(());
        }

        let size = parse_uint(f(1), 10, u64::MAX).map_err(|r| err(path, "SIZE", r))?;
        let nlink = parse_uint(f(3), 10, u32::MAX as u64).map_err(|r| err(path, "NLINK", r))? as u32;
        let uid = parse_uint(f(4), 10, u32::MAX as u64).map_err(|r| err(path, "UID", r))? as u32;
        let gid = parse_uint(f(5), 10, u32::MAX as u64).map_err(|r| err(path, "GID", r))? as u32;
        let rdev = parse_uint(f(6), 10, u32::MAX as u64).map_err(|r| err(path, "RDEV", r))? as u32;
        let (mtime, mtime_nsec) = parse_mtime(f(7)).map_err(|r| err(path, "MTIME", r))?;
        let payload = unescape_optional(f(8)).map_err(|r| err(path, "PAYLOAD", r))?;
        let content = unescape_optional(f(9)).map_err(|r| err(path, "CONTENT", r))?;
        if let Some(c) = &content {
            if c.len() as u64 != size {
                return Err(err(path, "CONTENT", format!("content is {} bytes but SIZE is {size}", c.len())));
            }
        }
        // An empty DIGEST field (a line cut short) means no digest.
        let digest = match unescape_optional(f(10)).map_err(|r| err(path, "DIGEST", r))? {
            Some(d) if !d.is_empty() => Some(parse_digest(&d).map_err(|r| err(path, "DIGEST", r))?),
            _ => None,
        };
        let ftype = mode & S_IFMT;
        let rdev = if ftype == S_IFCHR || ftype == S_IFBLK {
            rdev
        } else if self.strict && rdev != 0 {
            return Err(err(path, "RDEV", "non-zero device number on a non-device".into()));
        } else {
            0
        };
        let mut entry = Entry {
            inode: Inode { mode, uid, gid, rdev, size, mtime, mtime_nsec },
            payload: None,
            content: None,
            xattrs: Vec::new(),
            fsverity_digest: digest,
        };
        if ftype == S_IFLNK {
            let target = match payload {
                Some(t) if !t.is_empty() => t,
                _ => return Err(err(path, "PAYLOAD", "symlink without a target".into())),
            };
            if target.len() >= PATH_MAX {
                return Err(err(
                    path,
                    "PAYLOAD",
                    format!("symlink target of {} bytes (limit {})", target.len(), PATH_MAX - 1),
                ));
            }
            if target.contains(&0) {
                return Err(err(path, "PAYLOAD", "NUL byte in symlink target".into()));
            }
            if self.strict {
                if size != target.len() as u64 {
                    return Err(err(
                        path,
                        "SIZE",
                        format!("symlink SIZE {size} differs from target length {}", target.len()),
                    ));
                }
                if content.as_ref().is_some_and(|c| !c.is_empty()) {
                    return Err(err(path, "CONTENT", "symlinks cannot have content".into()));
                }
            }
            entry.inode.size = target.len() as u64;
            entry.payload = Some(target);
        } else {
            if let Some(p) = &payload {
                if p.len() >= PATH_MAX {
                    return Err(err(path, "PAYLOAD", format!("payload of {} bytes (limit {})", p.len(), PATH_MAX - 1)));
                }
                if p.contains(&0) {
                    return Err(err(path, "PAYLOAD", "NUL byte in payload".into()));
                }
            }
            entry.payload = payload;
            if let Some(c) = content {
                if c.len() > INLINE_CONTENT_MAX {
                    return Err(err(
                        path,
                        "CONTENT",
                        format!("inline content of {} bytes (limit {INLINE_CONTENT_MAX})", c.len()),
                    ));
                }
                if !c.is_empty() {
                    entry.content = Some(c);
                }
            }
        }

        if xattr_section.len() > MAX_XATTR_SECTION {
            return Err(err(path, "XATTRS", format!("xattr section longer than {MAX_XATTR_SECTION} bytes")));
        }
        let mut budget = XattrBudget::default();
        let mut index = None;
        let mut rest = xattr_section;
        while !rest.is_empty() {
            let (item, next) = match rest.iter().position(|&b| b == b' ') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            let eq =
                item.iter().position(|&b| b == b'=').ok_or_else(|| err(path, "XATTRS", "xattr without '='".into()))?;
            let key = unescape(&item[..eq]).map_err(|r| err(path, "XATTRS", r))?;
            let value = unescape(&item[eq + 1..]).map_err(|r| err(path, "XATTRS", r))?;
            set_xattr(&mut entry.xattrs, &mut index, &mut budget, key, value).map_err(|r| err(path, "XATTRS", r))?;
        }

        let id = if is_root {
            self.tree.set_root(entry).map_err(|e| err(path, "PATH", tree_reason(&e)))?;
            self.root_seen = true;
            ROOT
        } else {
            self.tree.insert_child(parent, name, entry).map_err(|e| err(path, "PATH", tree_reason(&e)))?
        };
        self.tree.set_nlink(id, nlink);
        Ok(())
    }

    /// Find the directory node at `parent_rel` (components `comps`), which must exist.
    fn find_parent(&mut self, parent_rel: &[u8], comps: &[&[u8]]) -> Result<NodeId, String> {
        if parent_rel == self.cached_parent.0.as_slice() {
            return Ok(self.cached_parent.1);
        }
        let mut cur = ROOT;
        for (i, c) in comps.iter().enumerate() {
            cur = match self.tree.child(cur, c) {
                Some(id) => id,
                None => {
                    let so_far = comps[..=i].join(&b'/');
                    if self.link_index.contains_key(&so_far) {
                        return Err(format!("parent /{} is a hard link, not a directory", tree::show(&so_far)));
                    }
                    return Err(format!("parent directory /{} is missing", tree::show(&so_far)));
                }
            };
        }
        let n = self.tree.node(cur);
        if !n.entry.inode.is_dir() || n.link_to.is_some() {
            return Err(format!("parent /{} is not a directory", tree::show(parent_rel)));
        }
        self.cached_parent.0.clear();
        self.cached_parent.0.extend_from_slice(parent_rel);
        self.cached_parent.1 = cur;
        Ok(cur)
    }

    fn resolve_links(&mut self) -> Result<(), DumpError> {
        let links = std::mem::take(&mut self.links);
        for l in &links {
            let err = |reason: String| DumpError::Line {
                line: l.line,
                path: format!("/{}", tree::show(&l.path)),
                field: "PAYLOAD",
                reason,
            };
            // Follow chains of hard links to hard links, refusing cycles.
            let mut target: &[u8] = &l.target;
            let mut hops = 0usize;
            while let Some(&j) = self.link_index.get(target) {
                hops += 1;
                if hops > links.len() {
                    return Err(err("hard link cycle".into()));
                }
                target = &links[j].target;
                if target == l.path.as_slice() {
                    return Err(err("hard link cycle".into()));
                }
            }
            let tid = lookup_components(&self.tree, target)
                .ok_or_else(|| err(format!("hard link target /{} does not exist", tree::show(target))))?;
            if self.tree.node(tid).entry.inode.is_dir() {
                return Err(err(format!("hard link target /{} is a directory", tree::show(target))));
            }
            self.tree.insert_hardlink_child(l.parent, &l.name, tid).map_err(|e| err(tree_reason(&e)))?;
        }
        Ok(())
    }
}

/// Strip leading slashes and collapse empty components, as the reference's lookup does.
fn normalize_target(t: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len());
    for c in t.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

fn lookup_components(tree: &Tree, rel: &[u8]) -> Option<NodeId> {
    if rel.is_empty() {
        return Some(ROOT);
    }
    let mut cur = ROOT;
    for c in rel.split(|&b| b == b'/') {
        cur = tree.child(cur, c)?;
    }
    Some(cur)
}

fn tree_reason(e: &tree::TreeError) -> String {
    e.to_string()
}

// ---------------------------------------------------------------------------------
// Printer

#[derive(Clone, Copy)]
enum Esc {
    /// Paths and payloads: escape non-graphic bytes (space included).
    Standard,
    /// Optional fields: like Standard, and a lone `-` is escaped.
    LoneDash,
    /// Xattr names and values: like Standard, and `=` is escaped.
    Equal,
}

fn escape_into(out: &mut Vec<u8>, s: &[u8], mode: Esc) {
    if matches!(mode, Esc::LoneDash) && s == b"-" {
        out.extend_from_slice(b"\\x2d");
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if matches!(mode, Esc::Equal) => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(c),
            _ => out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
    }
}

fn push_num(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{v}");
}

/// Print `tree` as a dumpfile: depth-first, children in bytewise name order, the root
/// first as `/`. Hard links print their target's metadata with `@` before the mode and
/// the target's absolute path as payload. The output parses back to the same tree.
pub fn write_dump(tree: &Tree, out: &mut dyn Write) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
    let links = tree.link_counts();
    let mut line = Vec::with_capacity(512);
    let mut path = Vec::with_capacity(256);
    let mut sorted_scratch: Vec<Vec<NodeId>> = Vec::new();
    // Stack of (directory, its sorted children, next index, path length before the name).
    struct Frame {
        kids: Vec<NodeId>,
        next: usize,
        path_len: usize,
    }
    print_node(tree, ROOT, b"/", &links, &mut line);
    w.write_all(&line)?;
    let mut stack = vec![Frame { kids: sorted_children(tree, ROOT, &mut sorted_scratch), next: 0, path_len: 0 }];
    while let Some(top) = stack.last_mut() {
        let Some(&child) = top.kids.get(top.next) else {
            let f = stack.pop();
            if let Some(f) = f {
                sorted_scratch.push(f.kids);
            }
            if let Some(parent) = stack.last() {
                path.truncate(parent.path_len);
            }
            continue;
        };
        top.next += 1;
        let base = top.path_len;
        path.truncate(base);
        path.push(b'/');
        path.extend_from_slice(&tree.node(child).name);
        print_node(tree, child, &path, &links, &mut line);
        w.write_all(&line)?;
        let n = tree.node(child);
        if n.link_to.is_none() && n.entry.inode.is_dir() && !n.children.is_empty() {
            let kids = sorted_children(tree, child, &mut sorted_scratch);
            stack.push(Frame { kids, next: 0, path_len: path.len() });
        }
    }
    w.flush()
}

fn sorted_children(tree: &Tree, id: NodeId, scratch: &mut Vec<Vec<NodeId>>) -> Vec<NodeId> {
    let mut v = scratch.pop().unwrap_or_default();
    v.clear();
    v.extend_from_slice(&tree.node(id).children);
    let name = |c: &NodeId| tree.node(*c).name.as_slice();
    if !v.windows(2).all(|w| name(&w[0]) < name(&w[1])) {
        v.sort_unstable_by(|a, b| name(a).cmp(name(b)));
    }
    v
}

fn print_node(tree: &Tree, id: NodeId, path: &[u8], links: &[u32], out: &mut Vec<u8>) {
    out.clear();
    let node = tree.node(id);
    let (target, link_path) = match node.link_to {
        Some(t) => (t, Some(tree.path_of(t))),
        None => (id, None),
    };
    let e = &tree.node(target).entry;
    let ino = &e.inode;
    escape_into(out, path, Esc::Standard);
    out.push(b' ');
    push_num(out, ino.size);
    out.push(b' ');
    if link_path.is_some() {
        out.push(b'@');
    }
    let _ = write!(out, "{:o}", ino.mode);
    out.push(b' ');
    push_num(out, tree.nlink_with(target, links));
    out.push(b' ');
    push_num(out, ino.uid);
    out.push(b' ');
    push_num(out, ino.gid);
    out.push(b' ');
    push_num(out, ino.rdev);
    out.push(b' ');
    let _ = write!(out, "{}.{}", ino.mtime, ino.mtime_nsec);
    out.push(b' ');
    match (&link_path, &e.payload) {
        (Some(lp), _) => {
            let mut abs = Vec::with_capacity(lp.len() + 1);
            abs.push(b'/');
            abs.extend_from_slice(lp);
            escape_into(out, &abs, Esc::LoneDash);
        }
        (None, Some(p)) => escape_into(out, p, Esc::LoneDash),
        (None, None) => out.push(b'-'),
    }
    out.push(b' ');
    match &e.content {
        Some(c) if !c.is_empty() => escape_into(out, c, Esc::LoneDash),
        _ => out.push(b'-'),
    }
    out.push(b' ');
    match &e.fsverity_digest {
        Some(d) => {
            for b in d {
                let _ = write!(out, "{b:02x}");
            }
        }
        None => out.push(b'-'),
    }
    for x in &e.xattrs {
        out.push(b' ');
        escape_into(out, &x.key, Esc::Equal);
        out.push(b'=');
        escape_into(out, &x.value, Esc::Equal);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> DumpOptions {
        DumpOptions { strict: true, limits: Limits::default() }
    }

    #[test]
    fn escapes_round_trip() {
        let raw: Vec<u8> = (0u8..=255).collect();
        let mut e = Vec::new();
        escape_into(&mut e, &raw, Esc::Equal);
        assert!(!e.contains(&b' ') && !e.contains(&b'=') && !e.contains(&b'\n'));
        assert_eq!(unescape(&e).unwrap(), raw);
        assert!(unescape(b"\\q").is_err());
        assert!(unescape(b"\\x4").is_err());
        assert!(unescape(b"a\\").is_err());
    }

    #[test]
    fn parses_and_prints_example() {
        let input = b"/ 4096 40755 4 1000 1000 0 1695372970.944925700 - - - security.selinux=unconfined_u:object_r:unlabeled_t:s0\\x00\n\
/a\\x20dir 27 40755 2 1000 1000 0 1694598852.869646118 - - -\n\
/a-dir 45 40755 2 1000 1000 0 1674041780.601887980 - - -\n\
/a-dir/a-file 259 100644 2 1000 1000 0 1695368732.385062094 35/d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408 - 35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408\n\
/a-hardlink 259 @100644 1 1000 1000 0 1695368732.385062094 /a-dir/a-file - 35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408\n\
/inline.txt 10 100644 1 1000 1000 0 1697019909.446146440 - some-text\\n -\n";
        let t = parse(input, &strict()).unwrap();
        let f = t.lookup(b"a-dir/a-file").unwrap();
        assert_eq!(t.node(f).nlink, Some(2));
        let h = t.lookup(b"a-hardlink").unwrap();
        assert_eq!(t.node(h).link_to, Some(f));
        let i = t.lookup(b"inline.txt").unwrap();
        assert_eq!(t.node(i).entry.content.as_deref(), Some(&b"some-text\n"[..]));
        let mut out = Vec::new();
        write_dump(&t, &mut out).unwrap();
        let t2 = parse(&out, &strict()).unwrap();
        let mut out2 = Vec::new();
        write_dump(&t2, &mut out2).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&out2));
        assert!(out.starts_with(b"/ 4096 40755 4 1000 1000 0 1695372970.944925700 - - - security.selinux=unconfined_u:object_r:unlabeled_t:s0\\x00\n"));
    }

    #[test]
    fn rejects_bad_lines_with_context() {
        let cases: &[(&[u8], &str)] = &[
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 0 1 0 0 0 0.0 - - -\n", "MODE"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0 - - -\n", "MTIME"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 3 100644 1 0 0 0 0.0 - ab -\n", "CONTENT"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0.0 - - zz\n", "DIGEST"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 0 0.0 - - - novalue\n", "XATTRS"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/a/x 0 100644 1 0 0 0 0.0 - - -\n", "PATH"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 @100644 1 0 0 0 0.0 /nope - -\n", "PAYLOAD"),
            (b"/ 0 40755 2 0 0 0 0.0 - - -\n/x 0 100644 1 0 0 5 0.0 - - -\n", "RDEV"),
        ];
        for (input, field) in cases {
            let e = parse(input, &strict()).unwrap_err();
            match &e {
                DumpError::Line { line, field: f, .. } => {
                    assert_eq!(*line, 2, "{e}");
                    assert_eq!(f, field, "{e}");
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert!(parse(b"/ 0 40755 2 0 0 0 0.0 - - -", &strict()).is_err());
        assert!(parse(b"/ 0 40755 2 0 0 0 0.0 - - -", &DumpOptions::default()).is_ok());
    }

    #[test]
    fn enforces_limits_and_hardlink_rules() {
        let few = DumpOptions { strict: true, limits: Limits { max_entries: 3, max_depth: 2 } };
        let many = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n/b 0 100644 1 0 0 0 0.0 - - -\n/c 0 100644 1 0 0 0 0.0 - - -\n";
        assert!(parse(many, &few).unwrap_err().to_string().contains("too many entries"));
        let deep = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 40755 2 0 0 0 0.0 - - -\n/a/b 0 40755 2 0 0 0 0.0 - - -\n/a/b/c 0 100644 1 0 0 0 0.0 - - -\n";
        assert!(parse(deep, &DumpOptions { strict: true, limits: Limits { max_entries: 100, max_depth: 2 } }).is_err());
        // Forward reference and a chain of links resolve to the file.
        let chain = b"/ 0 40755 2 0 0 0 0.0 - - -\n/l1 0 @100644 1 0 0 0 0.0 /l2 - -\n/l2 0 @100644 1 0 0 0 0.0 /f - -\n/f 3 100644 3 0 0 0 0.0 - abc -\n";
        let t = parse(chain, &strict()).unwrap();
        let f = t.lookup(b"f").unwrap();
        assert_eq!(t.node(t.lookup(b"l1").unwrap()).link_to, Some(f));
        assert_eq!(t.node(f).nlink, Some(3));
        // Cycles, links to directories and duplicate names are rejected.
        let cycle = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n";
        assert!(parse(cycle, &strict()).unwrap_err().to_string().contains("cycle"));
        let to_dir = b"/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n/l 0 @100644 1 0 0 0 0.0 /d - -\n";
        assert!(parse(to_dir, &strict()).unwrap_err().to_string().contains("directory"));
        let dup = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n";
        assert!(parse(dup, &strict()).is_err());
        // Duplicate xattr names: the last value wins, as in the reference.
        let x = b"/ 0 40755 2 0 0 0 0.0 - - - user.a=1 user.b=2 user.a=3\n";
        let t = parse(x, &strict()).unwrap();
        let xs = &t.node(ROOT).entry.xattrs;
        assert_eq!(xs.len(), 2);
        assert!(xs.iter().any(|x| x.key == b"user.a" && x.value == b"3"));
    }
}
