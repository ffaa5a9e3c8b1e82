//! The command-line grammar of glibc's `getopt_long`, which the reference composefs tools use:
//! the drop-in personalities must accept exactly what they accept, in the same order.
//!
//! - Options and operands may be mixed (GNU permutation) unless `POSIXLY_CORRECT` is set, in
//!   which case the first operand ends option parsing; `--` always ends it.
//! - `--name` matches exactly, or as an unambiguous prefix of one long option (`--from` for
//!   `--from-file`); a prefix of several is ambiguous.
//! - A required value comes after `=` or as the next argument (whatever it looks like); a flag
//!   given a value (`--flag=x`) is an error.
//! - `-abc` is a cluster of short options (the tools have no short option with a value).
//! - A lone `-` is an operand.
//!
//! The result is the sequence of options and errors in command-line order (each tool acts on
//! them in that order, so the first problem wins as it does in the reference) and the operands.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// A long option: its name without `--`, whether it takes a value, and the caller's id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LongOpt<T: Copy> {
    pub name: &'static str,
    pub value: bool,
    pub id: T,
}

/// One element of the option sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item<T> {
    /// A recognized option, with its value when it takes one.
    Opt(T, Option<OsString>),
    /// A short option the tool lists but gives no meaning (the reference's `-C`, `-R`).
    Short(char),
    /// What getopt reports as `?` or `:`.
    Err(GetoptError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GetoptError {
    /// `--name` matches no long option (as written, without `--`).
    Unrecognized(String),
    /// `--name` is a prefix of several long options.
    Ambiguous(String),
    /// A long option that needs a value got none (the full option name).
    MissingValue(&'static str),
    /// A flag was given `=value` (the full option name).
    UnexpectedValue(&'static str),
    /// `-c` is not a short option of the tool.
    InvalidShort(char),
}

/// Parsed command line: options and errors in order, then the operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed<T> {
    pub items: Vec<Item<T>>,
    pub operands: Vec<OsString>,
}

/// Parse `args` (without argv\[0\]) the way `getopt_long` does with the given long options and
/// short option letters (`shorts`, none taking a value).
pub(crate) fn parse<T: Copy>(
    args: &[OsString],
    longs: &[LongOpt<T>],
    shorts: &[char],
    posixly_correct: bool,
) -> Parsed<T> {
    let mut items = Vec::new();
    let mut operands = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        if arg == b"--" {
            operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = arg.strip_prefix(b"--") {
            let (name, inline) = match body.iter().position(|&b| b == b'=') {
                Some(p) => (&body[..p], Some(OsStr::from_bytes(&body[p + 1..]).to_os_string())),
                None => (body, None),
            };
            let opt = match lookup(longs, name) {
                Ok(o) => o,
                Err(e) => {
                    items.push(Item::Err(e));
                    continue;
                }
            };
            let item = match (opt.value, inline) {
                (false, None) => Item::Opt(opt.id, None),
                (false, Some(_)) => Item::Err(GetoptError::UnexpectedValue(opt.name)),
                (true, Some(v)) => Item::Opt(opt.id, Some(v)),
                (true, None) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        Item::Opt(opt.id, Some(v.clone()))
                    }
                    None => Item::Err(GetoptError::MissingValue(opt.name)),
                },
            };
            items.push(item);
            continue;
        }
        if arg.len() > 1 && arg[0] == b'-' {
            // A cluster of short options; multi-byte characters are reported by their first byte,
            // as getopt (which works on bytes) does.
            for &c in &arg[1..] {
                let c = char::from(c);
                items.push(if shorts.contains(&c) { Item::Short(c) } else { Item::Err(GetoptError::InvalidShort(c)) });
            }
            continue;
        }
        operands.push(args[i - 1].clone());
        if posixly_correct {
            operands.extend(args[i..].iter().cloned());
            break;
        }
    }
    Parsed { items, operands }
}

fn lookup<T: Copy>(longs: &[LongOpt<T>], name: &[u8]) -> Result<LongOpt<T>, GetoptError> {
    if let Some(o) = longs.iter().find(|o| o.name.as_bytes() == name) {
        return Ok(*o);
    }
    let shown = || String::from_utf8_lossy(name).into_owned();
    let mut hits = longs.iter().filter(|o| !name.is_empty() && o.name.as_bytes().starts_with(name));
    match (hits.next(), hits.next()) {
        (Some(o), None) => Ok(*o),
        (Some(_), Some(_)) => Err(GetoptError::Ambiguous(shown())),
        (None, _) => Err(GetoptError::Unrecognized(shown())),
    }
}

/// `strtol(s, &end, 10)` with the tools' check `*s == 0 || *end != 0`: leading white space and a
/// sign are accepted, the rest must be digits; out-of-range values saturate (the tools do not
/// look at `errno`). `None` when the tool would print "Invalid ...".
pub(crate) fn strtol(s: &OsStr) -> Option<i64> {
    let b = s.as_bytes();
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)).unwrap_or(b.len());
    let mut rest = &b[start..];
    let neg = match rest.first() {
        Some(b'-') => {
            rest = &rest[1..];
            true
        }
        Some(b'+') => {
            rest = &rest[1..];
            false
        }
        _ => false,
    };
    if b.is_empty() || rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in rest {
        let d = i64::from(d - b'0');
        v = if neg { v.saturating_mul(10).saturating_sub(d) } else { v.saturating_mul(10).saturating_add(d) };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum O {
        FromFile,
        PrintDigest,
        PrintDigestOnly,
        Threads,
        UseEpoch,
        UserXattrs,
    }
    const LONGS: &[LongOpt<O>] = &[
        LongOpt { name: "from-file", value: false, id: O::FromFile },
        LongOpt { name: "print-digest", value: false, id: O::PrintDigest },
        LongOpt { name: "print-digest-only", value: false, id: O::PrintDigestOnly },
        LongOpt { name: "threads", value: true, id: O::Threads },
        LongOpt { name: "use-epoch", value: false, id: O::UseEpoch },
        LongOpt { name: "user-xattrs", value: false, id: O::UserXattrs },
    ];

    fn p(args: &[&str], posix: bool) -> Parsed<O> {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&v, LONGS, &['C', 'R'], posix)
    }
    fn ops(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn permutation_and_posixly_correct() {
        let r = p(&["src", "img", "--from-file"], false);
        assert_eq!(r.items, vec![Item::Opt(O::FromFile, None)]);
        assert_eq!(r.operands, ops(&["src", "img"]));
        let r = p(&["src", "img", "--from-file"], true);
        assert!(r.items.is_empty());
        assert_eq!(r.operands, ops(&["src", "img", "--from-file"]));
        let r = p(&["--", "--from-file", "-", "x"], false);
        assert!(r.items.is_empty());
        assert_eq!(r.operands, ops(&["--from-file", "-", "x"]));
    }

    #[test]
    fn abbreviations_exact_match_and_ambiguity() {
        assert_eq!(p(&["--from"], false).items, vec![Item::Opt(O::FromFile, None)]);
        assert_eq!(p(&["--print-digest"], false).items, vec![Item::Opt(O::PrintDigest, None)]);
        assert_eq!(p(&["--print-digest-o"], false).items, vec![Item::Opt(O::PrintDigestOnly, None)]);
        assert_eq!(p(&["--print"], false).items, vec![Item::Err(GetoptError::Ambiguous("print".into()))]);
        assert_eq!(p(&["--use"], false).items, vec![Item::Err(GetoptError::Ambiguous("use".into()))]);
        assert_eq!(p(&["--use-"], false).items, vec![Item::Opt(O::UseEpoch, None)]);
        assert_eq!(p(&["--bogus"], false).items, vec![Item::Err(GetoptError::Unrecognized("bogus".into()))]);
    }

    #[test]
    fn values() {
        assert_eq!(p(&["--threads=3"], false).items, vec![Item::Opt(O::Threads, Some("3".into()))]);
        let r = p(&["--threads", "--from-file", "x"], false);
        assert_eq!(r.items, vec![Item::Opt(O::Threads, Some("--from-file".into()))]);
        assert_eq!(r.operands, ops(&["x"]));
        assert_eq!(p(&["a", "--threads"], false).items, vec![Item::Err(GetoptError::MissingValue("threads"))]);
        assert_eq!(p(&["--from-file=x"], false).items, vec![Item::Err(GetoptError::UnexpectedValue("from-file"))]);
        assert_eq!(p(&["--threads="], false).items, vec![Item::Opt(O::Threads, Some("".into()))]);
    }

    #[test]
    fn shorts_and_lone_dash() {
        let r = p(&["-C", "-xR", "-"], false);
        assert_eq!(r.items, vec![Item::Short('C'), Item::Err(GetoptError::InvalidShort('x')), Item::Short('R')]);
        assert_eq!(r.operands, ops(&["-"]));
    }

    #[test]
    fn strtol_like_the_tools() {
        let s = |x: &str| strtol(OsStr::new(x));
        assert_eq!(s("12"), Some(12));
        assert_eq!(s(" 1"), Some(1));
        assert_eq!(s("+3"), Some(3));
        assert_eq!(s("-1"), Some(-1));
        assert_eq!(s(""), None);
        assert_eq!(s(" "), None);
        assert_eq!(s("1 "), None);
        assert_eq!(s("x"), None);
        assert_eq!(s("0x10"), None);
        assert_eq!(s("99999999999999999999999"), Some(i64::MAX));
        assert_eq!(s("-99999999999999999999999"), Some(i64::MIN));
    }
}
