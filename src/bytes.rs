//! Byte scanning a word (eight bytes) at a time, for the parsers' hot loops: which bytes of a
//! word equal a given byte, exactly, in safe code. (The `memchr` crate is faster on long
//! haystacks; on the short strings of a path or a dumpfile line its per-call setup dominates.)

/// `b` in every byte of a word.
pub(crate) const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// The word made of `w[0..8]`, `w[0]` lowest (so a set bit's `trailing_zeros() / 8` is the
/// index of its byte).
pub(crate) fn word(w: &[u8]) -> u64 {
    u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
}

/// The high bit of each byte of `x` that is zero, exactly: unlike the shorter
/// `(x - 0x01..) & !x & 0x80..`, no false positive above a zero byte.
pub(crate) fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !((x & LOW7).wrapping_add(LOW7) | x | LOW7)
}

/// The high bit of each byte of `x` that equals the byte splatted in `pattern`.
pub(crate) fn eq_bytes(x: u64, pattern: u64) -> u64 {
    zero_bytes(x ^ pattern)
}

/// Index of the byte of the lowest set bit of a mask made by [`zero_bytes`] or [`eq_bytes`].
pub(crate) fn first_byte(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

/// Non-zero exactly when some byte of `x` is below `n` (`n` at most 128). Cheaper than
/// [`zero_bytes`] (four operations), but only the lowest set bit is exact (a borrow may set the
/// bits of bytes above it): a filter for words that need no closer look.
pub(crate) const fn has_below(x: u64, n: u8) -> u64 {
    assert!(n <= 128);
    x.wrapping_sub(splat(n)) & !x & splat(0x80)
}

/// Does `s` hold a byte equal to `a` or to `b`? Eight bytes at a time: on the short names of an
/// image (the EROFS reader's dirent and xattr names), `memchr`'s setup per call costs more than the scan.
#[inline]
pub(crate) fn has_either(s: &[u8], a: u8, b: u8) -> bool {
    let (found, rest) = whole_words_have_either(s, splat(a), splat(b));
    found || rest.iter().any(|&c| c == a || c == b)
}

/// Does a whole eight-byte word of `s` hold a byte of `pa` or `pb` (splatted)? And the bytes
/// after the last whole word.
#[inline]
fn whole_words_have_either(s: &[u8], pa: u64, pb: u64) -> (bool, &[u8]) {
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = word(w);
        if eq_bytes(x, pa) | eq_bytes(x, pb) != 0 {
            return (true, &[]);
        }
    }
    (false, words.remainder())
}

/// [`has_either`] of `hay[start..end]`, for a short string inside a larger buffer (a name in a
/// directory block): when at least eight bytes end at `end`, the string's last partial word is
/// read as the word ending there, the bytes before that part masked out (exactly: the masks
/// of [`eq_bytes`] are exact for every byte), instead of byte by byte.
#[inline]
pub(crate) fn has_either_in(hay: &[u8], start: usize, end: usize, a: u8, b: u8) -> bool {
    let s = &hay[start..end];
    if end < 8 {
        return has_either(s, a, b);
    }
    let (pa, pb) = (splat(a), splat(b));
    let (found, rest) = whole_words_have_either(s, pa, pb);
    let left = rest.len();
    if found || left == 0 {
        return found;
    }
    // The word's last `left` bytes are the string's; the first 8 - left lie before them.
    let x = word(&hay[end - 8..end]);
    (eq_bytes(x, pa) | eq_bytes(x, pb)) >> (8 * (8 - left)) != 0
}

/// Does `s` hold a byte equal to `a`? (As [`has_either`].)
#[inline]
pub(crate) fn has_byte(s: &[u8], a: u8) -> bool {
    let pa = splat(a);
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        if eq_bytes(word(w), pa) != 0 {
            return true;
        }
    }
    words.remainder().contains(&a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_exact() {
        // Every byte value at every position, next to every other interesting value.
        for pos in 0..8 {
            for v in 0..=255u8 {
                for other in [0u8, 1, 0x2f, 0x7f, 0x80, 0xff, v] {
                    let mut b = [other; 8];
                    b[pos] = v;
                    let w = word(&b);
                    let mut expect_zero = 0u64;
                    let mut expect_slash = 0u64;
                    for (i, &x) in b.iter().enumerate() {
                        if x == 0 {
                            expect_zero |= 0x80 << (8 * i);
                        }
                        if x == b'/' {
                            expect_slash |= 0x80 << (8 * i);
                        }
                    }
                    assert_eq!(zero_bytes(w), expect_zero, "{b:?}");
                    assert_eq!(eq_bytes(w, splat(b'/')), expect_slash, "{b:?}");
                    if expect_zero != 0 {
                        assert_eq!(first_byte(zero_bytes(w)), b.iter().position(|&x| x == 0).unwrap());
                    }
                    for n in [1u8, b'/', b'0', 0x7f, 0x80] {
                        assert_eq!(has_below(w, n) != 0, b.iter().any(|&x| x < n), "{b:?} {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn has_byte_finds_every_position() {
        for len in 0..40 {
            for pos in 0..len {
                for (hit, a, b) in [(0u8, 0u8, b'/'), (b'/', 0, b'/'), (0, 0, 0), (0x80, 0x80, 0x80)] {
                    let mut s = vec![b'a'; len];
                    s[pos] = hit;
                    assert!(has_either(&s, a, b), "{len} {pos} {hit}");
                    assert_eq!(has_byte(&s, a), hit == a, "{len} {pos} {hit}");
                    s[pos] = 0x7f;
                    assert!(!has_either(&s, a, b), "{len} {pos}");
                    assert!(!has_byte(&s, a), "{len} {pos}");
                }
            }
        }
    }

    #[test]
    fn has_either_in_looks_at_its_range_only() {
        // Every range of a buffer of up to 40 bytes, with the byte sought at every position
        // inside it and just outside it (before, after), and every byte value inside it:
        // the same answer as the plain test of the range.
        let plain = |s: &[u8], a: u8, b: u8| s.iter().any(|&c| c == a || c == b);
        for len in 0..40 {
            for start in 0..=len {
                for end in start..=len {
                    for pos in 0..len {
                        for v in [0u8, b'/', b'.', 0x2e, 0x7f, 0x80, 0xaf, 0xff, b'a'] {
                            let mut hay = vec![b'x'; len];
                            hay[pos] = v;
                            assert_eq!(
                                has_either_in(&hay, start, end, 0, b'/'),
                                plain(&hay[start..end], 0, b'/'),
                                "{len} {start}..{end} {pos} {v}"
                            );
                        }
                    }
                }
            }
        }
        for v in 0..=255u8 {
            for a in [0u8, b'/', 0x80, 0xff] {
                let hay = [[b'x'; 8], [v; 8], [b'x'; 8]].concat();
                for (start, end) in [(8, 16), (9, 12), (3, 9), (15, 16), (16, 24), (0, 8), (7, 8)] {
                    assert_eq!(has_either_in(&hay, start, end, a, a), plain(&hay[start..end], a, a), "{v} {a}");
                }
            }
        }
    }
}
