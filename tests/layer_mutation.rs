//! Tier 1: mutated real layer blobs (flipped bytes, truncations, spliced ranges) through the
//! whole layer reader in process: every outcome is an `Err` or an image, never a panic or a
//! hang. (The cargo-fuzz target `layer` does the same, coverage-guided; see tests/fuzz-brief.sh.)

use cfsmount::layer::{read_in_process, InProcess};

#[path = "support/layers.rs"]
mod layers;
use layers::*;

/// xorshift64*: reproducible mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_blobs_never_panic() {
    let opts = InProcess { max_uncompressed: 64 << 20, tar_split: true, ..InProcess::default() };
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut accepted = 0;
    for b in blobs().into_iter().filter(|b| b.layer == 2) {
        let blob = std::fs::read(&b.path).unwrap();
        let (_, img) = read_in_process(&blob, &opts).unwrap_or_else(|e| panic!("{}: {e}", b.name()));
        assert!(!img.is_empty());
        for _ in 0..150 {
            let mut m = blob.clone();
            match rng.below(4) {
                0 => {
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                }
                1 => m.truncate(rng.below(m.len())),
                2 => {
                    let (a, c) = (rng.below(m.len()), rng.below(m.len()));
                    let n = rng.below(64).min(m.len() - a.max(c));
                    m.copy_within(a..a + n, c);
                }
                _ => {
                    let i = rng.below(m.len());
                    m[i] = [0, 0xff, 0x30, 0x37][rng.below(4)];
                }
            }
            if read_in_process(&m, &opts).is_ok() {
                accepted += 1;
            }
        }
    }
    // Most mutations hit a checked byte; some (padding, unused header bytes) are harmless.
    assert!(accepted < 9 * 150, "{accepted} mutated blobs accepted");
}
