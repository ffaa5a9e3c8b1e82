//! A tree rendered in the format of `real-layers/list-tree.py` (see its docstring), so that a
//! tree cfsmount built can be compared with the expected listings without mounting it.
#![allow(dead_code)]

use cfsmount::tree::{NodeId, Tree, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};
use sha2::Digest;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// list-tree.py's escaping of path bytes, symlink targets and xattr names.
pub fn esc(b: &[u8], extra: &[u8]) -> String {
    let mut out = String::new();
    for &c in b {
        if c == b'\\' {
            out.push_str("\\\\");
        } else if (0x20..=0x7e).contains(&c) && !extra.contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("\\x{c:02x}"));
        }
    }
    out
}

/// sha256 of a regular file's content: inline content, else the payload when it is a
/// sha256-named object path (`xx/rest`), else the empty file's.
fn content_sha(e: &cfsmount::tree::Entry) -> String {
    if let Some(c) = &e.content {
        return format!("{:x}", sha2::Sha256::digest(c));
    }
    match &e.payload {
        Some(p) => String::from_utf8_lossy(p).replace('/', ""),
        None => EMPTY_SHA256.to_string(),
    }
}

/// One line per node, sorted by path bytes, as list-tree.py prints a mounted tree.
pub fn listing(t: &Tree) -> Vec<String> {
    let counts = t.link_counts();
    let mut lines: Vec<(Vec<u8>, String)> = (0..t.len() as NodeId)
        .map(|id| {
            let path = if id == 0 { b"/".to_vec() } else { [b"/".as_slice(), &t.path_of(id)].concat() };
            let e = &t.node(t.resolve(id)).entry;
            let i = &e.inode;
            let kind = match i.mode & S_IFMT {
                S_IFDIR => "d",
                S_IFREG => "f",
                S_IFLNK => "l",
                S_IFCHR => "c",
                S_IFBLK => "b",
                S_IFIFO => "p",
                S_IFSOCK => "s",
                _ => "?",
            };
            let nlink = if kind == "d" { "-".to_string() } else { t.nlink_with(id, &counts).to_string() };
            let (mut size, mut target, mut sha, mut rdev) =
                ("-".to_string(), "-".to_string(), "-".to_string(), "-".to_string());
            match kind {
                "f" => {
                    size = i.size.to_string();
                    sha = content_sha(e);
                }
                "l" => {
                    let tb = e.payload.clone().unwrap_or_default();
                    size = tb.len().to_string();
                    target = esc(&tb, b"");
                }
                "c" | "b" => {
                    let d = i.rdev;
                    rdev = format!("{}:{}", (d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00));
                }
                _ => {}
            }
            let mut xs: Vec<(Vec<u8>, Vec<u8>)> = e.xattrs.iter().map(|x| (x.key.clone(), x.value.clone())).collect();
            xs.sort();
            let xattrs = if xs.is_empty() {
                "-".to_string()
            } else {
                xs.iter()
                    .map(|(k, v)| {
                        format!("{}={}", esc(k, b";="), v.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    })
                    .collect::<Vec<_>>()
                    .join(";")
            };
            let shown = if id == 0 { "/".to_string() } else { esc(&path, b"") };
            let fields = [
                shown,
                kind.into(),
                format!("{:04o}", i.mode & 0o7777),
                i.uid.to_string(),
                i.gid.to_string(),
                nlink,
                size,
                format!("{}.{:09}", i.mtime, i.mtime_nsec),
                rdev,
                target,
                sha,
                xattrs,
            ];
            (path, fields.join("\t"))
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, l)| l).collect()
}
