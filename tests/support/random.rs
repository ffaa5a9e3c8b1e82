//! Deterministic randomness for the tests (included with `#[path]`): the one RNG, the one
//! random-tree generator, random corruption of bytes, and the environment knobs that make the
//! randomized tests run longer or elsewhere.
#![allow(dead_code)]

use cfsmount::tree::{
    Entry, Inode, Limits, NodeId, Tree, Xattr, ROOT, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK,
};

/// splitmix64: small, deterministic, good enough for test data; any seed (0 included) works.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
    /// True with a probability of `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.index(v.len())]
    }
    /// `len` bytes drawn from `alphabet`.
    pub fn bytes(&mut self, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }
    /// `len` arbitrary bytes.
    pub fn fill(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The environment variable `key` parsed as a `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A copy of `img` with 1 to `max_edits` edits at random offsets below `span`: each a single
/// bit flip when `flip_bits`, else a random byte.
pub fn corrupted(rng: &mut Rng, img: &[u8], span: usize, max_edits: usize, flip_bits: bool) -> Vec<u8> {
    let mut m = img.to_vec();
    for _ in 0..1 + rng.index(max_edits) {
        let at = rng.index(span);
        if flip_bits {
            m[at] ^= 1 << rng.below(8);
        } else {
            m[at] = rng.next() as u8;
        }
    }
    m
}

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABC0123456789._- =\\\n\t\r@\x01\x7f\x80\xc3\xa9\xff";

fn random_name(r: &mut Rng, in_root: bool) -> Vec<u8> {
    loop {
        let n = match r.below(20) {
            // A name the root's whiteout stubs use (the writer then leaves that stub out).
            0 if in_root => format!("{:02x}", r.below(256)).into_bytes(),
            // Any bytes a name may hold.
            1 => (0..1 + r.below(12)).map(|_| 1 + r.below(255) as u8).filter(|&c| c != b'/').collect(),
            _ => {
                let len = if r.pct(3) { 200 + r.below(56) as usize } else { 1 + r.below(12) as usize };
                r.bytes(len, NAME_CHARS)
            }
        };
        if !n.is_empty() && n != b"." && n != b".." {
            return n;
        }
    }
}

fn random_xattrs(r: &mut Rng) -> Vec<Xattr> {
    let pool: &[(&[u8], &[u8])] = &[
        (b"security.selinux", b"system_u:object_r:usr_t:s0\0"),
        (b"security.selinux", b"system_u:object_r:bin_t:s0\0"),
        (b"security.selinux", b"unconfined_u:object_r:user_home_t:s0\0"),
        (b"user.foo", b"bar"),
        (b"user.k=ey", b"va=lue with space\n"),
        (b"trusted.overlay.opaque", b"y"),
        (b"trusted.overlay.redirect", b"/somewhere"),
        (b"trusted.other", b""),
        (
            b"system.posix_acl_access",
            b"\x02\0\0\0\x01\0\x06\0\xff\xff\xff\xff\x04\0\x04\0\xff\xff\xff\xff\x20\0\x04\0\xff\xff\xff\xff",
        ),
        (b"user.-", b"-"),
        (b"user.empty", b""),
        (b"trusted.md5", b"\x00\x01\x02=\xff"),
    ];
    let mut out: Vec<Xattr> = Vec::new();
    for _ in 0..r.below(5) {
        let (k, v) = if r.pct(70) {
            let (k, v) = *r.pick(pool);
            (k.to_vec(), v.to_vec())
        } else {
            let mut k = b"user.".to_vec();
            let klen = 1 + r.below(20) as usize;
            k.extend(r.bytes(klen, NAME_CHARS));
            let cap = if r.pct(5) { 3000 } else { 40 };
            let vlen = r.below(cap) as usize;
            let v = r.bytes(vlen, &(0u8..=255).collect::<Vec<_>>());
            (k, v)
        };
        if !out.iter().any(|x| x.key == k) {
            out.push(Xattr { key: k, value: v });
        }
    }
    out
}

fn random_inode(r: &mut Rng, ftype: u32) -> Inode {
    let perm = *r.pick(&[0o755, 0o644, 0o600, 0o4755, 0o1777, 0o000, 0o7777]) as u32;
    let big = |r: &mut Rng| if r.pct(10) { 65536 + r.below(1 << 31) as u32 } else { r.below(1001) as u32 };
    let mtime = match r.below(10) {
        0 => -(r.below(1 << 40) as i64),
        1 | 2 => r.below(1 << 33) as i64,
        _ => 1_700_000_000,
    };
    Inode {
        mode: ftype | perm,
        uid: big(r),
        gid: big(r),
        rdev: 0,
        size: 0,
        mtime,
        mtime_nsec: if r.pct(50) { 0 } else { r.below(1_000_000_000) as u32 },
    }
}

fn hex_path(r: &mut Rng) -> Vec<u8> {
    let d: Vec<u8> = (0..32).map(|_| r.below(256) as u8).collect();
    let h: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{}", &h[..2], &h[2..]).into_bytes()
}

/// A random tree shaped like what the dump parser produces (normalised entries, explicit nlink
/// on every entry): every file type, hard links, overlay whiteouts, inline and external
/// contents around the layout thresholds, shared and odd xattrs, extended inodes (large ids,
/// sizes and times), names the root's whiteout stubs use.
pub fn random_tree(seed: u64, n: usize) -> Tree {
    let mut r = Rng(seed);
    let mut t = Tree::new(Limits::default());
    let mut root = Entry { inode: random_inode(&mut r, S_IFDIR), xattrs: random_xattrs(&mut r), ..Entry::default() };
    root.inode.size = 4096;
    t.set_root(root).unwrap();
    t.set_nlink(ROOT, 2 + r.below(5) as u32);
    let mut dirs: Vec<NodeId> = vec![ROOT];
    let mut linkable: Vec<NodeId> = Vec::new();
    let mut made = 0;
    while made < n {
        let parent = *r.pick(&dirs);
        let name = random_name(&mut r, parent == ROOT);
        if t.child(parent, &name).is_some() || t.depth(parent) > 30 {
            continue;
        }
        let kind = r.below(100);
        if kind < 8 && !linkable.is_empty() {
            let target = *r.pick(&linkable);
            t.insert_hardlink_child(parent, &name, target).unwrap();
            made += 1;
            continue;
        }
        let mut e = Entry { xattrs: random_xattrs(&mut r), ..Entry::default() };
        let nlink;
        match kind {
            0..=19 => {
                e.inode = random_inode(&mut r, S_IFDIR);
                e.inode.size = r.below(10000);
                nlink = 2 + r.below(4) as u32;
            }
            20..=49 => {
                e.inode = random_inode(&mut r, S_IFREG);
                e.inode.size = match r.below(10) {
                    0 => 1 + r.below(1 << 50),
                    1 => 4096,
                    _ => 1 + r.below(100_000),
                };
                if r.pct(90) {
                    e.payload = Some(hex_path(&mut r));
                }
                if r.pct(50) {
                    e.fsverity_digest = Some(std::array::from_fn(|_| r.below(256) as u8));
                }
                nlink = 1 + r.below(3) as u32;
            }
            50..=64 => {
                e.inode = random_inode(&mut r, S_IFREG);
                let len = match r.below(10) {
                    0 => 1 + r.below(5000) as usize,
                    1 => 2040 + r.below(20) as usize,
                    _ => 1 + r.below(100) as usize,
                };
                let c = r.bytes(len, &(0u8..=255).collect::<Vec<_>>());
                e.inode.size = c.len() as u64;
                e.content = Some(c);
                nlink = 1;
            }
            65..=69 => {
                e.inode = random_inode(&mut r, S_IFREG);
                nlink = 1;
            }
            70..=82 => {
                e.inode = random_inode(&mut r, S_IFLNK);
                let len = if r.pct(5) { 4000 + r.below(95) as usize } else { 1 + r.below(60) as usize };
                let mut target = r.bytes(len, NAME_CHARS);
                if r.pct(5) {
                    target = b"-".to_vec();
                }
                e.inode.size = target.len() as u64;
                e.payload = Some(target);
                nlink = 1;
            }
            83..=91 => {
                let ft = if r.pct(50) { S_IFCHR } else { S_IFBLK };
                e.inode = random_inode(&mut r, ft);
                e.inode.rdev = if ft == S_IFCHR && r.pct(40) { 0 } else { 1 + r.below(1 << 20) as u32 };
                nlink = 1;
            }
            _ => {
                let ft = if r.pct(50) { S_IFIFO } else { S_IFSOCK };
                e.inode = random_inode(&mut r, ft);
                nlink = 1;
            }
        }
        let is_dir = e.inode.is_dir();
        let id = t.insert_child(parent, &name, e).unwrap();
        t.set_nlink(id, nlink);
        if is_dir {
            dirs.push(id);
        } else {
            linkable.push(id);
        }
        made += 1;
    }
    t.finalize().unwrap();
    t
}
