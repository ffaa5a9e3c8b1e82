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
//!
//! The parts: `fields` (field syntax), [`line`] (one line → the tree), `xattr` (the budget),
//! [`write`] (the printer).

mod fields;
mod line;
mod write;
mod xattr;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use thiserror::Error;

use crate::tree::{self, DirCursor, Limits, NodeId, Tree, ROOT};

pub use write::write_dump;

/// Longest xattr section of one line (the reference's cap against quadratic work).
const MAX_XATTR_SECTION: usize = u16::MAX as usize;

/// Parser settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Strict mode (the reference's `CFS_PARSE_STRICT`): a trailing newline is required,
    /// RDEV must be 0 on non-devices, a symlink's SIZE must equal its target length and
    /// symlinks carry no CONTENT. Lenient mode (the reference's default) ignores these.
    pub strict: bool,
    pub limits: Limits,
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

/// The parser's state while lines are read.
struct Parser {
    tree: Tree,
    strict: bool,
    root_seen: bool,
    links: Vec<PendingLink>,
    link_index: HashMap<Vec<u8>, usize>,
    /// The directories of the last parent looked up.
    dirs: DirCursor,
    /// Offset of the input's first NUL byte: the line holding it is refused.
    first_nul: Option<usize>,
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
        dirs: DirCursor::default(),
        first_nul: memchr::memchr(0, input),
        path_buf: Vec::new(),
    };
    // One node per line (hard links included): the arena and the name index are sized once.
    p.tree.reserve(memchr::memchr_iter(b'\n', input).count() + 1);
    let mut pos = 0;
    let mut lineno = 0usize;
    while pos < input.len() {
        lineno += 1;
        let rest = &input[pos..];
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], pos + i + 1),
            None => {
                if opts.strict {
                    return Err(DumpError::File { reason: format!("line {lineno}: missing trailing newline") });
                }
                (rest, input.len())
            }
        };
        p.line(lineno, line, pos)?;
        pos = next;
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
    /// Line `lineno`, which starts at offset `start` of the input.
    fn line(&mut self, lineno: usize, line: &[u8], start: usize) -> Result<(), DumpError> {
        let err = |path: &[u8], field: &'static str, reason: String| DumpError::Line {
            line: lineno,
            path: tree::show(path),
            field,
            reason,
        };
        if let Some(nul) = self.first_nul.filter(|&n| n >= start && n < start + line.len()) {
            return Err(err(b"?", "LINE", format!("NUL byte at position {}", nul - start)));
        }
        let (fields, xattr_section, escapes) = split_fields(line);
        let mut path = std::mem::take(&mut self.path_buf);
        let r = self.line_inner(lineno, &fields, escapes, xattr_section, &mut path, &err);
        self.path_buf = path;
        r
    }

    /// Find the directory node at `parent_rel` (relative, validated), which must exist.
    fn find_parent(&mut self, parent_rel: &[u8]) -> Result<NodeId, String> {
        let (mut cur, mut pos) = self.dirs.seek(parent_rel);
        // Down from there, one component at a time; only directories go on the cursor.
        let mut cur_is_dir = true;
        while pos < parent_rel.len() {
            let from = if pos == 0 { 0 } else { pos + 1 };
            let to = memchr::memchr(b'/', &parent_rel[from..]).map_or(parent_rel.len(), |i| from + i);
            let comp = &parent_rel[from..to];
            let found = if cur_is_dir { self.tree.child(cur, comp) } else { None };
            let Some(id) = found else {
                let so_far = &parent_rel[..to];
                if self.link_index.contains_key(so_far) {
                    return Err(format!("parent /{} is a hard link, not a directory", tree::show(so_far)));
                }
                return Err(format!("parent directory /{} is missing", tree::show(so_far)));
            };
            let n = self.tree.node(id);
            cur = id;
            cur_is_dir = n.entry.inode.is_dir() && n.link_to.is_none();
            if cur_is_dir {
                self.dirs.descend(id, comp);
            }
            pos = to;
        }
        if !cur_is_dir {
            return Err(format!("parent /{} is not a directory", tree::show(parent_rel)));
        }
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

/// Splits a line at its first 11 spaces: the 11 fields (missing ones empty) and the xattr
/// section after them; also says whether the fields hold a backslash (an escape to decode).
/// Eight bytes at a time, as [`crate::bytes`] does it.
fn split_fields(line: &[u8]) -> ([&[u8]; 11], &[u8], bool) {
    use crate::bytes::{eq_bytes, first_byte, splat, word};
    let mut cuts = [0usize; 11];
    let mut n = 0;
    let mut escapes = false;
    let mut words = line.chunks_exact(8);
    let mut base = 0;
    'words: for w in &mut words {
        let w = word(w);
        escapes |= eq_bytes(w, splat(b'\\')) != 0;
        let mut spaces = eq_bytes(w, splat(b' '));
        while spaces != 0 {
            cuts[n] = base + first_byte(spaces);
            n += 1;
            if n == cuts.len() {
                break 'words;
            }
            spaces &= spaces - 1;
        }
        base += 8;
    }
    if n < cuts.len() {
        for (k, &b) in words.remainder().iter().enumerate() {
            escapes |= b == b'\\';
            if b == b' ' {
                cuts[n] = base + k;
                n += 1;
                if n == cuts.len() {
                    break;
                }
            }
        }
    }
    let mut fields: [&[u8]; 11] = [&[]; 11];
    let mut from = 0;
    for (f, &cut) in fields.iter_mut().zip(&cuts[..n]) {
        *f = &line[from..cut];
        from = cut + 1;
    }
    if n < cuts.len() {
        fields[n] = &line[from..];
        (fields, &[], escapes)
    } else {
        (fields, &line[from..], escapes)
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
