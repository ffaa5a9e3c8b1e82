//! Randomized round trips over generated trees (deterministic PRNG, seeded per case):
//! tree → dumpfile → tree is the identity, the printed dump is stable, the image of
//! the reparsed tree is byte-identical, every image passes `fsck.erofs`, the image
//! read back by the reader rebuilds the same bytes, and mutated dumpfiles never make
//! the parser or the writer panic.

use std::process::Command;

use cfsmount::erofs::writer::{write_image, WriteOptions};
use cfsmount::input::dump::{parse, write_dump, DumpOptions};
use cfsmount::tree::{
    Entry, Inode, Limits, NodeId, Tree, Xattr, ROOT, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK,
};

/// splitmix64: small, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn bytes(&mut self, len: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..len).map(|_| *self.pick(alphabet)).collect()
    }
}

const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABC0123456789._- =\\\n\t\r@\x01\x7f\x80\xc3\xa9\xff";

fn random_name(r: &mut Rng) -> Vec<u8> {
    loop {
        let len = if r.pct(3) { 200 + r.below(56) as usize } else { 1 + r.below(12) as usize };
        let n = r.bytes(len, NAME_CHARS);
        if n != b"." && n != b".." {
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
        (b"system.posix_acl_access", b"\x02\0\0\0\x01\0\x06\0\xff\xff\xff\xff\x04\0\x04\0\xff\xff\xff\xff\x20\0\x04\0\xff\xff\xff\xff"),
        (b"user.-", b"-"),
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

/// A random tree shaped like what the dump parser produces (normalised entries,
/// explicit nlink on every entry).
fn random_tree(seed: u64, n: usize) -> Tree {
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
        let name = random_name(&mut r);
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

fn assert_same_tree(a: &Tree, b: &Tree, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: node count");
    for id in 0..a.len() as NodeId {
        let path = a.path_of(id);
        let shown = String::from_utf8_lossy(&path).into_owned();
        let bid = b.lookup(&path).unwrap_or_else(|| panic!("{what}: /{shown} missing after round trip"));
        let (na, nb) = (a.node(id), b.node(bid));
        assert_eq!(na.entry, nb.entry, "{what}: /{shown} entry");
        assert_eq!(na.link_to.map(|t| a.path_of(t)), nb.link_to.map(|t| b.path_of(t)), "{what}: /{shown} link");
        if na.link_to.is_none() {
            assert_eq!(na.nlink, nb.nlink, "{what}: /{shown} nlink");
        }
        assert_eq!(na.children.len(), nb.children.len(), "{what}: /{shown} children");
    }
}

fn dump_of(t: &Tree) -> Vec<u8> {
    let mut v = Vec::new();
    write_dump(t, &mut v).unwrap();
    v
}

fn image_of(t: &Tree) -> Vec<u8> {
    let mut v = Vec::new();
    write_image(t, &WriteOptions::default(), &mut v).unwrap();
    v
}

fn fsck(image: &[u8], what: &str) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, image).unwrap();
    let out = Command::new("fsck.erofs").arg(f.path()).output().expect("fsck.erofs (erofs-utils) must be installed");
    assert!(
        out.status.success(),
        "{what}: fsck.erofs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strict() -> DumpOptions {
    DumpOptions { strict: true, limits: Limits::default() }
}

fn sizes() -> impl Iterator<Item = (u64, usize)> {
    (0..40u64).map(|s| (s, [1usize, 5, 30, 120, 400][s as usize % 5])).chain([(1000, 3000), (1001, 6000)])
}

#[test]
fn random_trees_dump_round_trip() {
    for (seed, n) in sizes() {
        let t = random_tree(seed, n);
        let d = dump_of(&t);
        let t2 = parse(&d, &strict()).unwrap_or_else(|e| panic!("seed {seed}: printed dump does not parse: {e}"));
        assert_same_tree(&t, &t2, &format!("seed {seed}"));
        assert!(dump_of(&t2) == d, "seed {seed}: printed dump is not stable");
    }
}

#[test]
fn random_trees_images_pass_fsck_and_survive_dump() {
    for (seed, n) in sizes() {
        let t = random_tree(seed, n);
        let img = image_of(&t);
        fsck(&img, &format!("seed {seed}"));
        let t2 = parse(&dump_of(&t), &strict()).unwrap();
        assert!(image_of(&t2) == img, "seed {seed}: image of the reparsed tree differs");
    }
}

/// image → reader → tree → image reproduces the bytes (the `inspect` path).
#[test]
fn random_trees_image_read_back_rebuilds_same_bytes() {
    for (seed, n) in sizes() {
        let t = random_tree(seed, n);
        let img = image_of(&t);
        let back = cfsmount::erofs::reader::read_image(&img).unwrap_or_else(|e| panic!("seed {seed}: reading image: {e}"));
        let img2 = image_of(&back);
        assert!(img2 == img, "seed {seed}: image -> read -> image differs");
        // And through the printed dump, as `cfsmount inspect | mkimage --from-dump` does.
        let t3 = parse(&dump_of(&back), &strict()).unwrap_or_else(|e| panic!("seed {seed}: inspect output: {e}"));
        assert!(image_of(&t3) == img, "seed {seed}: image -> inspect -> image differs");
    }
}

/// Mutated dumpfiles: errors are fine, panics are bugs.
#[test]
fn mutated_dumps_never_panic() {
    for seed in 0..60u64 {
        let t = random_tree(seed + 5000, 25);
        let base = dump_of(&t);
        let mut r = Rng(seed);
        for _ in 0..40 {
            let mut d = base.clone();
            for _ in 0..1 + r.below(4) {
                if d.is_empty() {
                    break;
                }
                let at = r.below(d.len() as u64) as usize;
                match r.below(5) {
                    0 => d[at] = r.below(256) as u8,
                    1 => d[at] = *r.pick(b" \n\\=@-/.0x"),
                    2 => {
                        d.remove(at);
                    }
                    3 => d.truncate(at),
                    _ => {
                        let k = 1 + r.below(8) as usize;
                        let ins = r.bytes(k, b" \n\\x=@-/.09af");
                        d.splice(at..at, ins);
                    }
                }
            }
            for strict_mode in [true, false] {
                if let Ok(tree) = parse(&d, &DumpOptions { strict: strict_mode, limits: Limits::default() }) {
                    let mut img = Vec::new();
                    let _ = write_image(&tree, &WriteOptions::default(), &mut img);
                }
            }
        }
    }
}
