//! The composefs arguments of the kernel command line, in the grammar of composefs-rs's
//! `composefs-boot` / `composefs-setup-root` and bootc's initramfs (see docs/boot.md):
//!
//! - `composefs=[?]HEX`: 64 hex digits (SHA-256) or 128 (SHA-512) fs-verity digest;
//! - `composefs.digest=[?]vN-ALG-12:HEX` with N 1 or 2, ALG `sha256` or `sha512`, 4 KiB
//!   (2^12) fs-verity blocks;
//! - a `?` right after `=` makes fs-verity optional (the "insecure" marker);
//! - every occurrence counts, in command-line order: the first whose image exists is booted.
//!
//! Words are split as the kernel splits them (`lib/cmdline.c: next_arg`): at white space outside
//! double quotes, with the quotes around a word or a value removed; `--` ends the kernel's
//! arguments (what follows is for init). Other `composefs…` words (`composefs` alone,
//! `composefs.foo=`) are not ours and are ignored; a malformed value of one of the two keys
//! is an error, never a silent fall-through to an unverified boot.

/// fs-verity hash of a root image named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    /// Parsed (bootc writes it) but not mountable by cfsmount, which checks SHA-256 only.
    Sha512,
}

impl Algorithm {
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

/// One `composefs=` / `composefs.digest=` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootArg {
    /// The digest in lower-case hex (the image's name under `composefs/images/`).
    pub hex: String,
    pub algorithm: Algorithm,
    /// `?` given: fs-verity is optional.
    pub insecure: bool,
    /// The word as written (for messages).
    pub word: String,
}

/// A composefs argument that cannot be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kernel command line: {word}: {reason}")]
pub struct CmdlineError {
    pub word: String,
    pub reason: String,
}

/// Splits a command line into (key, value) pairs as the kernel's `next_arg` does: white space
/// separates words except inside double quotes; a word's surrounding quotes and a value's
/// surrounding quotes are dropped. Stops at a bare `--`.
pub fn split(cmdline: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let mut rest = cmdline.trim_start_matches(|c: char| c.is_ascii_whitespace());
    while !rest.is_empty() {
        let b = rest.as_bytes();
        let mut i = 0;
        let mut in_quote = false;
        let mut quoted = false;
        if b[0] == b'"' {
            i = 1;
            in_quote = true;
            quoted = true;
        }
        let start = i;
        let mut equals = None;
        while i < b.len() {
            if b[i].is_ascii_whitespace() && !in_quote {
                break;
            }
            if equals.is_none() && b[i] == b'=' {
                equals = Some(i);
            }
            if b[i] == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        // The word is rest[start..i]; a closing quote of a quoted word is dropped.
        let mut end = i;
        if quoted && end > start && b[end - 1] == b'"' {
            end -= 1;
        }
        let (key, val) = match equals {
            Some(e) if e < end => {
                let mut v = &rest[e + 1..end];
                if let Some(s) = v.strip_prefix('"') {
                    v = s.strip_suffix('"').unwrap_or(s);
                }
                (&rest[start..e], Some(v))
            }
            _ => (&rest[start..end.max(start)], None),
        };
        if key == "--" && val.is_none() {
            break;
        }
        out.push((key, val));
        rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_whitespace());
    }
    out
}

/// The composefs arguments of `cmdline`, in order. Empty: none given (boot is not ours).
pub fn parse(cmdline: &str) -> Result<Vec<RootArg>, CmdlineError> {
    let mut out = Vec::new();
    for (key, val) in split(cmdline) {
        let Some(val) = val else { continue };
        let word = format!("{key}={val}");
        let err = |reason: String| CmdlineError { word: word.clone(), reason };
        let (val, insecure) = match val.strip_prefix('?') {
            Some(v) => (v, true),
            None => (val, false),
        };
        let (algorithm, hex) = match key {
            "composefs" => {
                let algorithm = match val.len() {
                    64 => Algorithm::Sha256,
                    128 => Algorithm::Sha512,
                    n => return Err(err(format!("a digest has 64 (SHA-256) or 128 (SHA-512) hex digits, not {n}"))),
                };
                (algorithm, val)
            }
            "composefs.digest" => parse_descriptor(val).map_err(err)?,
            _ => continue,
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err(format!(
                "not a {} digest ({} hex digits expected)",
                algorithm.name(),
                algorithm.hex_len()
            )));
        }
        out.push(RootArg { hex: hex.to_ascii_lowercase(), algorithm, insecure, word });
    }
    Ok(out)
}

/// `vN-ALG-LG:HEX` → (algorithm, HEX).
fn parse_descriptor(val: &str) -> Result<(Algorithm, &str), String> {
    let (desc, hex) = val.split_once(':').ok_or("expected VERSION-HASH-BLOCKBITS:HEX, e.g. v1-sha256-12:…")?;
    let mut parts = desc.splitn(3, '-');
    let (v, alg, lg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if v != "v1" && v != "v2" {
        return Err(format!("unsupported format version {v:?} (v1 or v2)"));
    }
    let algorithm = match alg {
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        _ => return Err(format!("unsupported hash {alg:?} (sha256 or sha512)")),
    };
    if lg != "12" {
        return Err(format!("unsupported fs-verity block size 2^{lg:?} (only 12: 4096 bytes)"));
    }
    Ok((algorithm, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52";
    const H512: &str = "6f06b5e82420abec546d6e6d3ddd612c50cfa9b707c129345b7ec16f456b92fe\
                        35df68999b042e1a6a70dfe75f2fed8cf9f67afd0bf08d2374678d75e2f65a02";

    fn hexes(c: &str) -> Vec<(String, bool)> {
        parse(c).unwrap().into_iter().map(|a| (a.hex, a.insecure)).collect()
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(split("  a b=c  "), vec![("a", None), ("b", Some("c"))]);
        assert_eq!(split("x=\"a b\" y"), vec![("x", Some("a b")), ("y", None)]);
        assert_eq!(split("\"x=a b\" y"), vec![("x", Some("a b")), ("y", None)]);
        assert_eq!(split("a=b=c"), vec![("a", Some("b=c"))]);
        assert_eq!(split("a -- composefs=x"), vec![("a", None)]);
        assert_eq!(split("\t\n"), vec![]);
        assert_eq!(split("\""), vec![("", None)]);
    }

    #[test]
    fn forms_of_composefs_rs() {
        assert!(hexes("").is_empty());
        assert!(hexes("root=UUID=abc quiet composefs composefs.foo=1 rw").is_empty());
        assert_eq!(hexes(&format!("composefs={H}")), vec![(H.into(), false)]);
        assert_eq!(hexes(&format!("composefs=?{H}")), vec![(H.into(), true)]);
        assert_eq!(hexes(&format!("composefs.digest=v1-sha256-12:{H}")), vec![(H.into(), false)]);
        assert_eq!(hexes(&format!("composefs.digest=?v2-sha256-12:{H}")), vec![(H.into(), true)]);
        let a = parse(&format!("composefs.digest=v1-sha512-12:{H512}")).unwrap();
        assert_eq!(a[0].algorithm, Algorithm::Sha512);
        assert_eq!(parse(&format!("composefs={H512}")).unwrap()[0].algorithm, Algorithm::Sha512);
        // upper case accepted, looked up in lower case; quotes dropped as the kernel does
        assert_eq!(hexes(&format!("composefs=\"{}\"", H.to_uppercase())), vec![(H.into(), false)]);
    }

    #[test]
    fn several_in_command_line_order() {
        let other = "a".repeat(64);
        let c = format!("composefs=?{other} ro composefs.digest=v1-sha256-12:{H} composefs={H}");
        assert_eq!(hexes(&c), vec![(other, true), (H.into(), false), (H.into(), false)]);
        // after `--` the words belong to init
        assert_eq!(hexes(&format!("composefs={H} -- composefs=?{}", "b".repeat(64))), vec![(H.into(), false)]);
    }

    #[test]
    fn malformed_values_are_errors() {
        for bad in [
            "composefs=".to_string(),
            "composefs=?".to_string(),
            "composefs=notahex".to_string(),
            format!("composefs={}", &H[..63]),
            format!("composefs={}g", &H[..63]),
            format!("composefs=??{H}"),
            format!("composefs.digest={H}"),
            format!("composefs.digest=v3-sha256-12:{H}"),
            format!("composefs.digest=v1-sha256-8:{H}"),
            format!("composefs.digest=v1-md5-12:{H}"),
            format!("composefs.digest=v1-sha256-12:{H512}"),
            format!("composefs.digest=v1-sha512-12:{H}"),
            "composefs.digest=v1-sha256-12:".to_string(),
        ] {
            let e = parse(&format!("quiet {bad} rw")).unwrap_err();
            assert_eq!(e.word, bad, "{bad}");
        }
    }
}
