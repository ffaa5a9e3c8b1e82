//! A fixed-size bit set: every inode slot and data block may be claimed once, which finds
//! overlapping inodes and blocks used twice, and bounds the reader's work by the image size.

/// A fixed-size bit set used to detect overlapping inodes and doubly claimed blocks.
pub(super) struct Claims {
    bits: Vec<u64>,
    len: u64,
}

impl Claims {
    pub(super) fn new(len: u64) -> Claims {
        let words = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        Claims { bits: vec![0; words], len }
    }

    /// Mark `[start, start + count)`; false if out of range or any bit was already set.
    pub(super) fn claim(&mut self, start: u64, count: u64) -> bool {
        let Some(end) = start.checked_add(count) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        for i in start..end {
            let (w, b) = ((i / 64) as usize, i % 64);
            let Some(word) = self.bits.get_mut(w) else {
                return false;
            };
            if *word & (1 << b) != 0 {
                return false;
            }
            *word |= 1 << b;
        }
        true
    }
}
