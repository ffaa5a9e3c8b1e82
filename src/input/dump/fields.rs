//! Field syntax: escapes (`\\`, `\n`, `\r`, `\t`, `\xHH`), optional fields (`-`), numbers
//! in a given radix with a maximum, `SECONDS.NANOSECONDS` times, hex digests.

use crate::tree;

/// Decode one escaped field into `out` (cleared first). `escapes`: whether the field may hold a
/// backslash at all (false when the caller already knows it does not).
pub(super) fn unescape_into(s: &[u8], out: &mut Vec<u8>, escapes: bool) -> Result<(), String> {
    out.clear();
    if !escapes || !s.contains(&b'\\') {
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

pub(super) fn unescape(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    unescape_into(s, &mut v, true)?;
    Ok(v)
}

/// An optional field: `-` is absent. `escapes` as for [`unescape_into`].
pub(super) fn unescape_optional(s: &[u8], escapes: bool) -> Result<Option<Vec<u8>>, String> {
    if s == b"-" {
        Ok(None)
    } else if !escapes {
        Ok(Some(s.to_vec()))
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

pub(super) fn parse_uint(s: &[u8], radix: u32, max: u64) -> Result<u64, String> {
    // Fast path: at most 19 digits below the radix cannot overflow a u64 (radix <= 10).
    if radix <= 10 && !s.is_empty() && s.len() <= 19 {
        let mut v: u64 = 0;
        let mut ok = true;
        for &b in s {
            let d = b.wrapping_sub(b'0') as u32;
            ok &= d < radix;
            v = v.wrapping_mul(radix as u64).wrapping_add(d as u64);
        }
        if ok && v <= max {
            return Ok(v);
        }
    }
    parse_uint_slow(s, radix, max)
}

/// [`parse_uint`] digit by digit, with the error of the first problem.
fn parse_uint_slow(s: &[u8], radix: u32, max: u64) -> Result<u64, String> {
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

pub(super) fn parse_mtime(s: &[u8]) -> Result<(i64, u32), String> {
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

pub(super) fn parse_digest(s: &[u8]) -> Result<[u8; 32], String> {
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
