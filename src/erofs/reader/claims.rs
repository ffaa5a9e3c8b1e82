//! A fixed-size bit set: every inode slot and data block may be claimed once, which finds
//! overlapping inodes and blocks used twice, and bounds the reader's work by the image size.

/// A fixed-size bit set used to detect overlapping inodes and doubly claimed blocks.
#[cfg_attr(test, derive(Clone))]
pub(super) struct Claims {
    bits: Vec<u64>,
    len: u64,
}

impl Claims {
    pub(super) fn new(len: u64) -> Claims {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        Claims { bits: vec![0; words], len }
    }

    /// Mark `[start, start + count)`; false if out of range or any bit was already set (then
    /// nothing is marked).
    #[inline]
    pub(super) fn claim(&mut self, start: u64, count: u64) -> bool {
        let Some(end) = start.checked_add(count) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        if count == 0 {
            return true;
        }
        // A word at a time (most claims lie in one): all free first, then all marked.
        let (first, last) = ((start / 64) as usize, ((end - 1) / 64) as usize);
        let mask = |w: usize| {
            let lo = if w == first { start % 64 } else { 0 };
            let hi = if w == last { (end - 1) % 64 } else { 63 };
            (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
        };
        let Some(words) = self.bits.get_mut(first..=last) else {
            return false;
        };
        if words.iter().enumerate().any(|(i, w)| w & mask(first + i) != 0) {
            return false;
        }
        for (i, w) in words.iter_mut().enumerate() {
            *w |= mask(first + i);
        }
        true
    }

    /// An empty set of the same size.
    pub(super) fn empty_like(&self) -> Claims {
        Claims::new(self.len)
    }

    /// Add `other`'s claims: false if one of them is also claimed here, or the sizes differ
    /// (then `self` is left partly merged: the caller gives up).
    pub(super) fn merge(&mut self, other: &Claims) -> bool {
        if self.len != other.len {
            return false;
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            if *a & *b != 0 {
                return false;
            }
            *a |= *b;
        }
        true
    }
}
