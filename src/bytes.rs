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
    let (pa, pb) = (splat(a), splat(b));
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = word(w);
        if eq_bytes(x, pa) | eq_bytes(x, pb) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&c| c == a || c == b)
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
}
