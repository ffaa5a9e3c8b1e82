//! Streaming digests for the object store: SHA-256 of the content and the fs-verity digest
//! (SHA-256, 4 KiB blocks, no salt), both fed the bytes in the order they are written.
//!
//! [`crate::fsverity`] computes the fs-verity digest of a whole file or buffer (random access,
//! parallel over one large file). The store needs the same digest of bytes it sees once, as a
//! stream, so that what it hashes is exactly what it writes: [`VerityHasher`] keeps one
//! partial block per Merkle tree level (as the reference's `lcfs_fsverity_context` does).
//! Its result is checked against [`crate::fsverity::digest_bytes`] in the tests below.

use sha2::{Digest as _, Sha256};

/// fs-verity data and Merkle tree block size used by composefs.
const BLOCK_SIZE: usize = 4096;

/// A 32-byte digest (SHA-256 or fs-verity SHA-256).
pub type Digest = [u8; 32];

const HASH: usize = 32;
static ZERO: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

/// One Merkle tree level: the hashes of the block being filled, and whether a block of this
/// level was already emitted to the level above.
#[derive(Clone)]
struct Level {
    block: Box<[u8; BLOCK_SIZE]>,
    len: usize,
    emitted: bool,
}

impl Level {
    fn new() -> Self {
        Level { block: Box::new([0; BLOCK_SIZE]), len: 0, emitted: false }
    }
}

/// Incremental fs-verity digest (SHA-256, 4096-byte blocks, no salt).
#[derive(Clone)]
pub struct VerityHasher {
    data: Box<[u8; BLOCK_SIZE]>,
    data_len: usize,
    size: u64,
    levels: Vec<Level>,
}

impl Default for VerityHasher {
    fn default() -> Self {
        Self::new()
    }
}

fn hash_padded(block: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(block);
    h.update(&ZERO[block.len()..]);
    h.finalize().into()
}

impl VerityHasher {
    pub fn new() -> Self {
        VerityHasher { data: Box::new([0; BLOCK_SIZE]), data_len: 0, size: 0, levels: Vec::new() }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.data_len > 0 {
            let n = (BLOCK_SIZE - self.data_len).min(bytes.len());
            self.data[self.data_len..self.data_len + n].copy_from_slice(&bytes[..n]);
            self.data_len += n;
            bytes = &bytes[n..];
            if self.data_len < BLOCK_SIZE {
                return;
            }
            let h: Digest = Sha256::digest(&self.data[..]).into();
            self.data_len = 0;
            self.push(0, &h);
        }
        // Whole blocks straight from the caller's buffer; a partial tail waits for more.
        let mut blocks = bytes.chunks_exact(BLOCK_SIZE);
        for b in blocks.by_ref() {
            let h: Digest = Sha256::digest(b).into();
            self.push(0, &h);
        }
        let rest = blocks.remainder();
        self.data[..rest.len()].copy_from_slice(rest);
        self.data_len = rest.len();
    }

    fn push(&mut self, level: usize, h: &Digest) {
        if self.levels.len() == level {
            self.levels.push(Level::new());
        }
        let l = &mut self.levels[level];
        l.block[l.len..l.len + HASH].copy_from_slice(h);
        l.len += HASH;
        if l.len == BLOCK_SIZE {
            let up: Digest = Sha256::digest(&l.block[..]).into();
            l.len = 0;
            l.emitted = true;
            self.push(level + 1, &up);
        }
    }

    /// The fs-verity digest of everything fed (the SHA-256 of the `fsverity_descriptor`).
    pub fn finish(mut self) -> Digest {
        let root = self.root();
        let mut d = [0u8; 256];
        d[0] = 1; // version
        d[1] = 1; // FS_VERITY_HASH_ALG_SHA256
        d[2] = 12; // log2 of the block size
        d[8..16].copy_from_slice(&self.size.to_le_bytes());
        d[16..16 + HASH].copy_from_slice(&root);
        Sha256::digest(d).into()
    }

    fn root(&mut self) -> Digest {
        if self.size == 0 {
            return [0; HASH];
        }
        if self.data_len > 0 {
            let h = hash_padded(&self.data[..self.data_len]);
            self.data_len = 0;
            self.push(0, &h);
        }
        let mut level = 0;
        loop {
            let l = &mut self.levels[level];
            if !l.emitted && l.len == HASH {
                // A single hash that was never folded into a block: the root.
                let mut r = [0u8; HASH];
                r.copy_from_slice(&l.block[..HASH]);
                return r;
            }
            if l.len > 0 {
                let up = hash_padded(&l.block[..l.len]);
                l.len = 0;
                l.emitted = true;
                self.push(level + 1, &up);
            }
            level += 1;
        }
    }
}

/// What an object store computes over an object's bytes.
#[derive(Clone)]
pub(crate) struct Hashers {
    pub sha256: Option<Sha256>,
    pub verity: Option<VerityHasher>,
}

impl Hashers {
    pub fn new(sha256: bool, verity: bool) -> Self {
        Hashers { sha256: sha256.then(Sha256::new), verity: verity.then(VerityHasher::new) }
    }

    pub fn update(&mut self, b: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(b);
        }
        if let Some(h) = &mut self.verity {
            h.update(b);
        }
    }

    /// (SHA-256, fs-verity digest), each if asked for.
    pub fn finish(self) -> (Option<Digest>, Option<Digest>) {
        (self.sha256.map(|h| h.finalize().into()), self.verity.map(VerityHasher::finish))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsverity::digest_bytes;

    const ARITY: usize = BLOCK_SIZE / HASH;

    /// The store tests' generator, with the seed these tests always used.
    fn data(n: usize) -> Vec<u8> {
        crate::store::tests::data(n, 0x9e37_79b9)
    }

    /// Every size class of the Merkle tree (empty, one partial/full block, one/several first-level
    /// blocks, the exact boundaries and one past them, two levels), fed in one piece and in
    /// uneven pieces, gives the whole-buffer digest.
    #[test]
    fn streaming_equals_whole_buffer() {
        let g = BLOCK_SIZE * ARITY;
        let sizes = [
            0,
            1,
            100,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            2 * BLOCK_SIZE,
            g - 1,
            g,
            g + 1,
            3 * g + 5,
            g * ARITY,
            g * ARITY + 1,
        ];
        let big = data(g * ARITY + 1);
        for &n in &sizes {
            let want = digest_bytes(&big[..n]);
            let mut one = VerityHasher::new();
            one.update(&big[..n]);
            assert_eq!(one.finish(), want, "one piece, size {n}");
            let mut pieces = VerityHasher::new();
            let mut off = 0;
            let mut step = 1;
            while off < n {
                let e = (off + step).min(n);
                pieces.update(&big[off..e]);
                off = e;
                step = step * 3 % 10007 + 1;
            }
            assert_eq!(pieces.size(), n as u64);
            assert_eq!(pieces.finish(), want, "uneven pieces, size {n}");
        }
    }

    #[test]
    fn hashers_compute_what_was_asked() {
        let b = data(5000);
        let mut h = Hashers::new(true, true);
        h.update(&b[..10]);
        h.update(&b[10..]);
        let (s, v) = h.finish();
        assert_eq!(s, Some(Sha256::digest(&b).into()));
        assert_eq!(v, Some(digest_bytes(&b)));
        assert_eq!(Hashers::new(false, false).finish(), (None, None));
    }
}
