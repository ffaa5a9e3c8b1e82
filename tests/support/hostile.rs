//! Shared by the hostile-image tests (included with `#[path]`): a deterministic PRNG, random
//! corruption of an image, and numeric knobs read from the environment.
#![allow(dead_code)]

/// xorshift64: small and deterministic; the seed must not be 0.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A copy of `img` with 1 to `max_edits` edits at random offsets below `span`: each a single
/// bit flip when `flip_bits`, else a random byte.
pub fn corrupted(rng: &mut XorShift, img: &[u8], span: usize, max_edits: usize, flip_bits: bool) -> Vec<u8> {
    let mut m = img.to_vec();
    for _ in 0..1 + rng.below(max_edits) {
        let at = rng.below(span);
        if flip_bits {
            m[at] ^= 1 << rng.below(8);
        } else {
            m[at] = rng.next() as u8;
        }
    }
    m
}

/// The environment variable `key` parsed as a `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
