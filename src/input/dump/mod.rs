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

use crate::tree::{self, Limits, NodeId, Tree, ROOT};

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
