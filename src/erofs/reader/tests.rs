//! Reader tests on hand-made images: a header, a superblock and a root directory as the writer
//! makes them, plus the inodes a test needs at chosen nids.

use super::claims::Claims;
use super::dir::parse_dirent_block;
use super::inode::chunk_bits;
use super::xattr::parse_xattr_entry;
use super::*;
use crate::erofs::format;
use crate::tree::{Xattr, ROOT};

/// A compact inode: (format, mode, nlink, size, i_u).
fn compact(format: u16, mode: u16, nlink: u16, size: u32, i_u: u32) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    b[0..2].copy_from_slice(&format.to_le_bytes());
    b[4..6].copy_from_slice(&mode.to_le_bytes());
    b[6..8].copy_from_slice(&nlink.to_le_bytes());
    b[8..12].copy_from_slice(&size.to_le_bytes());
    b[16..20].copy_from_slice(&i_u.to_le_bytes());
    b
}

fn dirents(ents: &[(&[u8], u64, u8)]) -> Vec<u8> {
    let mut names = Vec::new();
    let mut out = Vec::new();
    let base = ents.len() * 12;
    for (name, nid, ft) in ents {
        out.extend_from_slice(&nid.to_le_bytes());
        out.extend_from_slice(&((base + names.len()) as u16).to_le_bytes());
        out.extend_from_slice(&[*ft, 0]);
        names.extend_from_slice(name);
    }
    out.extend_from_slice(&names);
    out
}

const ROOT_NID: u64 = 36; // first slot after the superblock (meta block 0)
const STUB_NID: u64 = 64; // 256 stubs from here (offsets 2048..10240)
const ROOT_BLOCK: u32 = 4;

/// Header + superblock + a root directory as the writer makes it (opaque xattr,
/// whiteout stubs for the `00`..`ff` names not among `children`, entries in one data
/// block) + the given inodes at their nids. Children with file type 2 count as
/// subdirectories for the root's nlink.
fn image(children: &[(&[u8], u64, u8)], inodes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut img = vec![0u8; 5 * 4096];
    img[0..4].copy_from_slice(&COMPOSEFS_MAGIC.to_le_bytes());
    img[4..8].copy_from_slice(&1u32.to_le_bytes());
    let sb = 1024;
    img[sb..sb + 4].copy_from_slice(&EROFS_SUPER_MAGIC.to_le_bytes());
    img[sb + 12] = 12;
    img[sb + 14..sb + 16].copy_from_slice(&(ROOT_NID as u16).to_le_bytes());
    img[sb + 44..sb + 48].copy_from_slice(&3u32.to_le_bytes()); // shared xattrs: block 3 (none)
    let stub_names: Vec<Vec<u8>> = (0..256).map(|i| format!("{i:02x}").into_bytes()).collect();
    let mut ents: Vec<(&[u8], u64, u8)> = vec![(b".", ROOT_NID, 2), (b"..", ROOT_NID, 2)];
    ents.extend_from_slice(children);
    for (i, n) in stub_names.iter().enumerate() {
        if !children.iter().any(|c| c.0 == n.as_slice()) {
            ents.push((n.as_slice(), STUB_NID + i as u64, 3));
            let at = ((STUB_NID + i as u64) * 32) as usize;
            img[at..at + 32].copy_from_slice(&compact(0, 0o20644, 1, 0, 0));
        }
    }
    ents.sort_by(|a, b| a.0.cmp(b.0));
    let d = dirents(&ents);
    let subdirs = children.iter().filter(|c| c.2 == 2).count() as u16;
    let mut root = compact(LAYOUT_FLAT_PLAIN << 1, 0o40755, 2 + subdirs, d.len() as u32, ROOT_BLOCK);
    root[2..4].copy_from_slice(&6u16.to_le_bytes()); // xattrs: header + one 20-byte entry
    let bit = format::xxh32(b"overlay.opaque", format::XATTR_FILTER_SEED + 4) % 32;
    let mut x = (!(1u32 << bit)).to_le_bytes().to_vec();
    x.extend_from_slice(&[0; 8]);
    x.extend_from_slice(&[14, 4, 1, 0]);
    x.extend_from_slice(b"overlay.opaquey\0");
    root.extend_from_slice(&x);
    let at = (ROOT_NID * 32) as usize;
    img[at..at + root.len()].copy_from_slice(&root);
    let blk = ROOT_BLOCK as usize * 4096;
    img[blk..blk + d.len()].copy_from_slice(&d);
    for (nid, bytes) in inodes {
        let at = (*nid * 32) as usize;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }
    img
}

fn file() -> Vec<u8> {
    compact(0, 0o100644, 1, 0, 0)
}

/// Every read in these tests also vets the image: `vet_image` must accept exactly what the
/// reader accepts (with the same error), count the tree's entries and find its device nodes.
fn read_image(img: &[u8]) -> Result<Tree, ReadError> {
    let r = super::read_image(img);
    // The tables in ordinary allocations (as for images whose tables take less than 2 MiB
    // outside the tests) give the same tree or error as in the tables' region.
    // (The nodes: the tree's name index is hashed with a random seed.)
    let shown = |r: &Result<Tree, ReadError>| format!("{:?}", r.as_ref().map(|t| &t.nodes));
    assert_eq!(shown(&without_region(|| super::read_image(img))), shown(&r));
    vet_agrees(img, &ReadLimits::default(), r.as_ref());
    r
}

/// `f` with the readers made on this thread keeping their tables in ordinary allocations.
fn without_region<R>(f: impl FnOnce() -> R) -> R {
    /// Turns the region back on however `f` ends (a test that catches a panic goes on).
    struct On;
    impl Drop for On {
        fn drop(&mut self) {
            super::NO_TABLES_REGION.with(|c| c.set(false));
        }
    }
    super::NO_TABLES_REGION.with(|c| c.set(true));
    let _on = On;
    f()
}

fn vet_agrees(img: &[u8], limits: &ReadLimits, read: Result<&Tree, &ReadError>) {
    // Releasing the pages as it goes changes nothing but the hook's calls.
    let calls = std::sync::atomic::AtomicU64::new(0);
    let hook = || {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let released = vet_image_releasing(img, limits, Release { every: 64, hook: &hook });
    assert_eq!(format!("{released:?}"), format!("{:?}", vet_image(img, limits)));
    for threads in [1, 2] {
        let plain = without_region(|| vet_image_threads(img, limits, threads));
        assert_eq!(format!("{plain:?}"), format!("{released:?}"), "tables in ordinary allocations, {threads} threads");
    }
    if img.len() > 4096 && released.is_ok() {
        assert!(calls.into_inner() > 0, "the hook was never called for {} bytes", img.len());
    }
    // On any number of threads: the same result, the same error (in tests, batches of three
    // inodes, and even small images get threads).
    let one = format!("{:?}", vet_image_threads(img, limits, 1));
    for threads in [2, 3, 4] {
        assert_eq!(format!("{:?}", vet_image_threads(img, limits, threads)), one, "{threads} threads");
    }
    match (read, vet_image(img, limits)) {
        (Ok(t), Ok(v)) => {
            assert_eq!(v.entries, t.len() as u64);
            let device = |n: &crate::tree::Node| {
                let i = &n.entry.inode;
                (i.file_type() == tree::S_IFCHR && i.rdev != 0) || i.file_type() == tree::S_IFBLK
            };
            assert_eq!(v.first_device.is_some(), t.nodes.iter().any(device), "{:?}", v.first_device);
        }
        (Err(e), Err(v)) => assert_eq!(v.to_string(), e.to_string()),
        (r, v) => panic!("read_image {:?} but vet_image {:?}", r.map(|t| t.len()), v),
    }
}

#[test]
fn reads_a_minimal_image() {
    let img = image(&[(b"a", 40, 1)], &[(40, file())]);
    let (t, info) = read_image_with(&img, &ReadLimits::default()).unwrap();
    assert_eq!(info.composefs_version, 0);
    let a = t.lookup(b"a").unwrap();
    assert_eq!(t.node(a).entry.inode.mode, 0o100644);
    assert_eq!(t.node(a).nlink, Some(1));
    assert_eq!(t.node(ROOT).entry.inode.mode, 0o40755);
    assert_eq!(t.len(), 2);
}

#[test]
fn second_name_of_an_inode_is_a_hard_link() {
    let img = image(&[(b"a", 40, 1), (b"b", 40, 1)], &[(40, compact(0, 0o100644, 2, 0, 0))]);
    let t = read_image(&img).unwrap();
    let (a, b) = (t.lookup(b"a").unwrap(), t.lookup(b"b").unwrap());
    assert_eq!(t.node(a).link_to, None);
    assert_eq!(t.node(b).link_to, Some(a));
}

#[test]
fn cycles_and_bad_references_are_errors() {
    let err = |img: &[u8]| read_image(img).unwrap_err().to_string();
    // A child naming the root: the root directory reachable twice.
    assert!(err(&image(&[(b"loop", ROOT_NID, 2)], &[])).contains("reachable twice"));
    // A directory reachable under two names.
    let dir = |nid: u64| {
        let d = dirents(&[(b".", nid, 2), (b"..", ROOT_NID, 2)]);
        [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, 2, d.len() as u32, 0), d].concat()
    };
    assert!(err(&image(&[(b"x", 40, 2), (b"y", 40, 2)], &[(40, dir(40))])).contains("reachable twice"));
    // The dirent's file type disagrees with the inode.
    assert!(err(&image(&[(b"a", 40, 2)], &[(40, file())])).contains("file type"));
    // A nid whose offset overflows, and one beyond the image.
    assert!(err(&image(&[(b"a", u64::MAX, 1)], &[])).contains("nid"));
    assert!(err(&image(&[(b"a", 1 << 20, 1)], &[])).contains("beyond"));
    // An inode inside the root inode's inline directory data.
    assert!(err(&image(&[(b"a", ROOT_NID + 1, 1)], &[])).contains("inode"));
    // '..' of a subdirectory pointing at itself.
    let d = dirents(&[(b".", 40, 2), (b"..", 40, 2)]);
    let bad = [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, 2, d.len() as u32, 0), d].concat();
    assert!(err(&image(&[(b"x", 40, 2)], &[(40, bad)])).contains("'..'"));
}

#[test]
fn whiteouts_only_as_root_stubs() {
    let wh = compact(0, 0o20644, 1, 0, 0);
    // A stub named like the writer names them is not part of the tree.
    let t = read_image(&image(&[(b"0a", 40, 3)], &[(40, wh.clone())])).unwrap();
    assert_eq!(t.len(), 1);
    // Anywhere else (or another name) a raw 0/0 device is an error.
    assert!(read_image(&image(&[(b"wh", 40, 3)], &[(40, wh.clone())])).is_err());
    assert!(read_image(&image(&[(b"0A", 40, 3)], &[(40, wh)])).is_err());
    // A device with a real number is an ordinary node.
    let t = read_image(&image(&[(b"null", 40, 3)], &[(40, compact(0, 0o20666, 1, 0, 0x103))])).unwrap();
    assert_eq!(t.node(t.lookup(b"null").unwrap()).entry.inode.rdev, 0x103);
}

#[test]
fn header_and_superblock_checks() {
    let good = image(&[], &[]);
    assert!(read_image(&good).is_ok());
    assert!(matches!(read_image(&good[..1100]), Err(ReadError::TooSmall { .. })));
    for (at, what) in [(0usize, "composefs magic"), (1024, "EROFS magic"), (1024 + 12, "block size")] {
        let mut m = good.clone();
        m[at] ^= 0x55;
        let e = read_image(&m).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    let mut m = good.clone();
    m[12] = 2; // composefs format version 2
    assert!(read_image(&m).is_err());
}

#[test]
fn xattr_name_filter_must_not_hide_stored_xattrs() {
    let bit = format::xxh32(b"a", format::XATTR_FILTER_SEED + 1) % 32;
    let with_filter = |filter: u32| {
        let mut ino = compact(0, 0o100644, 1, 0, 0);
        ino[2..4].copy_from_slice(&3u16.to_le_bytes()); // 12-byte header + one 8-byte entry
        let mut x = filter.to_le_bytes().to_vec();
        x.extend_from_slice(&[0; 8]);
        x.extend_from_slice(&[1, 1, 1, 0, b'a', b'v', 0, 0]); // user.a = "v"
        ino.extend_from_slice(&x);
        let mut img = image(&[(b"f", 40, 1)], &[(40, ino)]);
        img[1024 + 8] = format::FEATURE_COMPAT_XATTR_FILTER as u8;
        img
    };
    let t = read_image(&with_filter(!(1 << bit))).unwrap();
    let f = &t.node(t.lookup(b"f").unwrap()).entry;
    assert_eq!(f.xattrs, vec![Xattr { key: b"user.a".to_vec(), value: b"v".to_vec() }]);
    let e = read_image(&with_filter(1 << bit)).unwrap_err().to_string();
    assert!(e.contains("filter hides user.a"), "{e}");
    // Without the feature the kernel ignores the filter, and so does the reader.
    let mut img = with_filter(1 << bit);
    img[1024 + 8] = 0;
    assert!(read_image(&img).is_ok());
}

#[test]
fn writer_invariants_are_required() {
    let err = |img: &[u8]| read_image(img).unwrap_err().to_string();
    // A stub that is not the writer's (other permissions).
    let mut img = image(&[], &[]);
    let at = (STUB_NID * 32 + 4) as usize;
    img[at..at + 2].copy_from_slice(&0o20600u16.to_le_bytes());
    assert!(err(&img).contains("whiteout stub 00 differs"));
    // A stub name that is missing: rename the entry "00" (a regular file) to "0!".
    let mut img = image(&[(b"00", 40, 1)], &[(40, file())]);
    let blk = ROOT_BLOCK as usize * 4096;
    let pos = blk + img[blk..].windows(4).position(|w| w == b"..00").unwrap() + 2;
    img[pos + 1] = b'!';
    assert!(err(&img).contains("whiteout stub 00 is missing"));
    // The root without its opaque xattr.
    let mut img = image(&[], &[]);
    let at = (ROOT_NID * 32 + 2) as usize;
    img[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
    assert!(err(&img).contains("opaque"));
    // A directory nlink that does not count its subdirectories.
    let d = dirents(&[(b".", 40, 2), (b"..", ROOT_NID, 2)]);
    let sub = |nlink: u16| [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, nlink, d.len() as u32, 0), d.clone()].concat();
    assert!(read_image(&image(&[(b"d", 40, 2)], &[(40, sub(2))])).is_ok());
    assert!(err(&image(&[(b"d", 40, 2)], &[(40, sub(3))])).contains("nlink 3"));
    // An external (chunk-based) file without the metacopy xattr, a device with a size.
    let ext = compact(LAYOUT_CHUNK_BASED << 1, 0o100644, 1, 10, 0);
    assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext)])).contains("metacopy"));
    let dev = compact(0, 0o20644, 1, 5, 0x101);
    assert!(err(&image(&[(b"c", 40, 3)], &[(40, dev)])).contains("size 5"));
    // An external file: metacopy + redirect; the redirect must be absolute.
    let ext = |redirect: &[u8; 3], format: u32| {
        let mut ino = compact(LAYOUT_CHUNK_BASED << 1, 0o100644, 1, 10, format);
        ino[2..4].copy_from_slice(&12u16.to_le_bytes()); // 12 + 20 + 24 bytes of xattrs
        ino.extend_from_slice(&[0; 12]);
        ino.extend_from_slice(&[16, 4, 0, 0]);
        ino.extend_from_slice(b"overlay.metacopy");
        ino.extend_from_slice(&[16, 4, 3, 0]);
        ino.extend_from_slice(b"overlay.redirect");
        ino.extend_from_slice(redirect);
        ino.push(0);
        ino
    };
    let t = read_image(&image(&[(b"f", 40, 1)], &[(40, ext(b"/ab", 0))])).unwrap();
    let f = &t.node(t.lookup(b"f").unwrap()).entry;
    assert_eq!((f.payload.as_deref(), f.fsverity_digest, f.content.as_ref()), (Some(&b"ab"[..]), None, None));
    assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext(b"xab", 0))])).contains("not an absolute path"));
    // Redirects name an object below the data layers: no '.', '..' or empty components.
    let e = err(&image(&[(b"f", 40, 1)], &[(40, ext(b"/..", 0))]));
    assert!(e.contains("overlay redirect /.. is not an object path ('..' path component)"), "{e}");
    assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext(b"/a/", 0))])).contains("empty path component"));
    // The payload `/a` (the same object as `a`) is written as `//a`.
    let t = read_image(&image(&[(b"f", 40, 1)], &[(40, ext(b"//a", 0))])).unwrap();
    assert_eq!(t.node(t.lookup(b"f").unwrap()).entry.payload.as_deref(), Some(&b"/a"[..]));
    assert!(err(&image(&[(b"f", 40, 1)], &[(40, ext(b"/ab", 0x20))])).contains("chunk format"));
}

#[test]
fn dirent_blocks() {
    let mut out = Vec::new();
    let b = dirents(&[(b".", 1, 2), (b"..", 1, 2), (b"name", 7, 1)]);
    assert_eq!(parse_dirent_block(&b, &mut out, 100).unwrap(), 3);
    assert_eq!(out[2], (&b"name"[..], 7, 1));
    // The last name ends at the first NUL or the end of the block.
    let mut padded = b.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    out.clear();
    parse_dirent_block(&padded, &mut out, 100).unwrap();
    assert_eq!(out[2].0, b"name");
    // Bad first offset, names that overlap the table, '/' in a name, the budget.
    let mut bad = b.clone();
    bad[8] = 13;
    assert!(parse_dirent_block(&bad, &mut out, 100).is_err());
    let mut bad = b.clone();
    bad[12 + 8] = 2; // second name offset inside the dirent table
    assert!(parse_dirent_block(&bad, &mut out, 100).is_err());
    let slash = dirents(&[(b".", 1, 2), (b"a/b", 1, 1)]);
    assert!(parse_dirent_block(&slash, &mut out, 100).is_err());
    assert!(parse_dirent_block(&b, &mut out, 2).is_err());
    assert!(parse_dirent_block(&b[..5], &mut out, 100).is_err());
}

#[test]
fn xattr_entries() {
    let entry = |index: u8, name: &[u8], value: &[u8]| {
        let mut e = vec![name.len() as u8, index];
        e.extend_from_slice(&(value.len() as u16).to_le_bytes());
        e.extend_from_slice(name);
        e.extend_from_slice(value);
        e
    };
    let selinux = entry(6, b"selinux", b"ctx");
    let (x, len) = parse_xattr_entry(&selinux).unwrap();
    assert_eq!((x.key().as_slice(), x.value, len), (&b"security.selinux"[..], &b"ctx"[..], 16));
    let acl = entry(2, b"", b"acl");
    let (x, _) = parse_xattr_entry(&acl).unwrap();
    assert_eq!(x.key(), b"system.posix_acl_access");
    assert!(parse_xattr_entry(&entry(0, b"", b"x")).is_err(), "empty name");
    assert!(parse_xattr_entry(&entry(0x80, b"x", b"")).is_err(), "long prefix");
    assert!(parse_xattr_entry(&entry(7, b"x", b"")).is_err(), "unknown index");
    assert!(parse_xattr_entry(&entry(1, b"a\0b", b"")).is_err(), "NUL in name");
    // Names under another index than their prefix maps to are invisible to the kernel.
    assert!(parse_xattr_entry(&entry(0, b"user.x", b"")).is_err(), "user. under index 0");
    assert!(parse_xattr_entry(&entry(5, b"x", b"")).is_err(), "lustre.");
    assert!(parse_xattr_entry(&entry(0, b"lustre.x", b"")).is_ok(), "unknown prefix under index 0");
    let e = entry(1, b"name", b"value");
    assert!(parse_xattr_entry(&e[..e.len() - 1]).is_err(), "value past the end");
}

#[test]
fn chunk_sizes_follow_the_writer() {
    for (size, bits) in
        [(1u64, 12u64), (4096, 12), (4097, 13), (1 << 30, 30), ((1 << 30) + 1, 31), (1 << 43, 43), (1 << 50, 43)]
    {
        assert_eq!(chunk_bits(size), bits, "size {size}");
    }
}

#[test]
fn claims_detect_overlap() {
    let mut c = Claims::new(100);
    assert!(c.claim(10, 5));
    assert!(!c.claim(14, 1));
    assert!(c.claim(15, 85));
    assert!(!c.claim(99, 2));
    assert!(!c.claim(u64::MAX, 2));
}

#[test]
fn claims_agree_with_one_bit_at_a_time() {
    // Ranges at every offset and length around word boundaries, against a plain bit list.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..2000 {
        let len = 1 + next(300);
        let (mut c, mut plain) = (Claims::new(len), vec![false; len as usize]);
        for _ in 0..20 {
            let start = next(len + 10);
            let count = if next(4) == 0 { next(200) } else { next(70) };
            let free = start + count <= len && (start..start + count).all(|i| !plain[i as usize]);
            assert_eq!(c.claim(start, count), free, "len {len} claim {start}+{count}");
            if free {
                (start..start + count).for_each(|i| plain[i as usize] = true);
            }
            // What is marked: a range of one bit is free exactly when the plain list says so.
            let probe = next(len);
            let mut copy = c.clone();
            assert_eq!(copy.claim(probe, 1), !plain[probe as usize], "len {len} probe {probe}");
        }
    }
}

#[test]
fn vetting_finds_devices_and_keeps_the_limits() {
    // A character device with a real number, under a second name too: refused by the helper.
    let dev = compact(0, 0o20666, 2, 0, 0x103);
    let img = image(&[(b"null", 40, 3), (b"zero", 40, 3)], &[(40, dev)]);
    let v = vet_image(&img, &ReadLimits::default()).unwrap();
    assert_eq!((v.entries, v.first_device.as_deref()), (3, Some("/null")));
    // A whiteout stub (0/0) is not a device; a block device is.
    assert_eq!(vet_image(&image(&[], &[]), &ReadLimits::default()).unwrap().first_device, None);
    let blk = image(&[(b"sda", 40, 4)], &[(40, compact(0, 0o60660, 1, 0, 0x800))]);
    assert_eq!(vet_image(&blk, &ReadLimits::default()).unwrap().first_device.as_deref(), Some("/sda"));
    // Inline content and xattrs count against the decoded-bytes budget as in the tree, and a
    // file below the deepest directory allowed is refused like the tree refuses it.
    let content = [compact(LAYOUT_FLAT_INLINE << 1, 0o100644, 1, 100, 0), vec![b'x'; 100]].concat();
    let img = image(&[(b"f", 40, 1)], &[(40, content)]);
    for max in [0, 50, 100, 150, 200, 201, 220, 1000] {
        let limits = ReadLimits { max_decoded_bytes: max, ..ReadLimits::default() };
        vet_agrees(&img, &limits, read_image_with(&img, &limits).as_ref().map(|(t, _)| t));
    }
    let d = dirents(&[(b".", 40, 2), (b"..", ROOT_NID, 2), (b"f", 48, 1)]);
    let sub = [compact(LAYOUT_FLAT_INLINE << 1, 0o40755, 2, d.len() as u32, 0), d].concat();
    let img = image(&[(b"d", 40, 2)], &[(40, sub), (48, file())]);
    for depth in [1, 2] {
        let limits = ReadLimits { tree: tree::Limits { max_depth: depth, ..Default::default() }, ..Default::default() };
        let read = read_image_with(&img, &limits);
        assert_eq!(read.is_ok(), depth == 2);
        vet_agrees(&img, &limits, read.as_ref().map(|(t, _)| t));
    }
}

#[test]
fn canonical_prefixes() {
    // parse_xattr_entry skips the split for these indexes: every name under them maps back.
    use super::xattr::CANONICAL_INDEXES;
    for index in CANONICAL_INDEXES {
        let prefix = format::XATTR_PREFIXES[usize::from(index)];
        for rest in [&b""[..], b"x", b"user.x", b"trusted.x", b"security.x", b"system.posix_acl_access", b"\xff"] {
            let key = [prefix, rest].concat();
            assert_eq!(format::xattr_prefix_split(&key).0, index, "{}", tree::show(&key));
        }
    }
    // The others are split: index 0 only for names without a known prefix, lustre. never.
    for (index, name, ok) in [(0u8, &b"x"[..], true), (0, b"user.x", false), (5, b"x", false)] {
        let mut e = vec![name.len() as u8, index, 0, 0];
        e.extend_from_slice(name);
        assert_eq!(parse_xattr_entry(&e).is_ok(), ok, "{index} {}", tree::show(name));
    }
}

#[test]
fn overlay_prefix_split() {
    // apply_xattrs looks at a name once: overlay_rest is the full name after
    // "trusted.overlay.", under every name index (also those whose prefix is longer).
    use super::xattr::RawXattr;
    for (index, prefix) in format::XATTR_PREFIXES.iter().enumerate() {
        for name in [
            &b""[..],
            b"x",
            b"overlay.",
            b"overlay.redirect",
            b"overlay.overlay.x",
            b"trusted.overlay.metacopy",
            b"trusted.overlay",
            b"posix_acl_access",
            b"\xff",
        ] {
            let x = RawXattr { prefix, index: index as u8, name, value: b"" };
            let full = [*prefix, name].concat();
            assert_eq!(x.overlay_rest(), full.strip_prefix(format::OVL_PREFIX), "{}", tree::show(&full));
        }
    }
}

#[test]
fn inode_records_stay_small() {
    // One per inode of the image, kept for the whole read: 28 bytes (the vetting's memory).
    assert!(std::mem::size_of::<super::inode::Ino>() <= 28);
}

#[test]
fn shared_xattrs_read_through_the_cache() {
    // Shared xattrs at block 3: id 0 user.a=v, id 2 user.b=w, id 16 user.c=x (id 16 takes id
    // 0's cache slot). Inodes list them in any order; each sees its own, whatever the cache held.
    let with_shared = |filter: u32, ids: &[u32]| {
        let mut ino = compact(0, 0o100644, 1, 0, 0);
        ino[2..4].copy_from_slice(&(1 + ids.len() as u16).to_le_bytes());
        ino.extend_from_slice(&filter.to_le_bytes());
        ino.extend_from_slice(&[ids.len() as u8, 0, 0, 0, 0, 0, 0, 0]);
        for id in ids {
            ino.extend_from_slice(&id.to_le_bytes());
        }
        ino
    };
    let files: [(&[u8], u64, &[u32]); 4] =
        [(b"f", 40, &[0, 2]), (b"g", 42, &[0]), (b"h", 44, &[16, 0]), (b"i", 46, &[2, 16])];
    let children: Vec<(&[u8], u64, u8)> = files.iter().map(|&(n, nid, _)| (n, nid, 1)).collect();
    let inodes: Vec<(u64, Vec<u8>)> = files.iter().map(|&(_, nid, ids)| (nid, with_shared(0, ids))).collect();
    let mut img = image(&children, &inodes);
    let shared = 3 * 4096;
    for (id, e) in [(0usize, b"a" as &[u8], b"v" as &[u8]), (2, b"b", b"w"), (16, b"c", b"x")].map(|(i, n, v)| {
        let mut e = vec![1, 1, 1, 0];
        e.extend_from_slice(n);
        e.extend_from_slice(v);
        (i, e)
    }) {
        img[shared + id * 4..shared + id * 4 + e.len()].copy_from_slice(&e);
    }
    let t = read_image(&img).unwrap();
    let x = |k: &[u8], v: &[u8]| Xattr { key: k.to_vec(), value: v.to_vec() };
    let xattrs = |n: &[u8]| t.node(t.lookup(n).unwrap()).entry.xattrs.clone();
    assert_eq!(xattrs(b"f"), vec![x(b"user.a", b"v"), x(b"user.b", b"w")]);
    assert_eq!(xattrs(b"g"), vec![x(b"user.a", b"v")]);
    assert_eq!(xattrs(b"h"), vec![x(b"user.a", b"v"), x(b"user.c", b"x")]);
    assert_eq!(xattrs(b"i"), vec![x(b"user.b", b"w"), x(b"user.c", b"x")]);
    // The name filter is checked for a shared xattr taken from the cache too: g's filter
    // hides user.a, which f's reading put in the cache.
    img[1024 + 8] = format::FEATURE_COMPAT_XATTR_FILTER as u8;
    assert!(read_image(&img).is_ok());
    let bit = format::xxh32(b"a", format::XATTR_FILTER_SEED + 1) % 32;
    let g = with_shared(1 << bit, &[0]);
    img[42 * 32..42 * 32 + g.len()].copy_from_slice(&g);
    let e = read_image(&img).unwrap_err().to_string();
    assert!(e.contains("inode 42") && e.contains("filter hides user.a"), "{e}");
    // A bad shared entry is an error for every inode naming it, cached or not.
    img[shared + 8 + 1] = 0x7f;
    let e = read_image(&img).unwrap_err().to_string();
    assert!(e.contains("inode 40") && e.contains("shared xattr 2: unknown name index"), "{e}");
}

#[test]
fn first_wrong_directory_nlink_in_walk_order() {
    // The walk counts subdirectories as it reads a directory; the first directory (in walk
    // order) whose nlink differs is refused, naming its count.
    let dir = |nlink: u16| {
        let d = dirents(&[(b".", 40, 2), (b"..", ROOT_NID, 2)]);
        let mut ino = compact(LAYOUT_FLAT_INLINE << 1, 0o40755, nlink, d.len() as u32, 0);
        ino.extend_from_slice(&d);
        ino
    };
    let dir2 = |nlink: u16| {
        let d = dirents(&[(b".", 44, 2), (b"..", ROOT_NID, 2)]);
        let mut ino = compact(LAYOUT_FLAT_INLINE << 1, 0o40755, nlink, d.len() as u32, 0);
        ino.extend_from_slice(&d);
        ino
    };
    let img = |a: u16, b: u16| image(&[(b"a", 40, 2), (b"b", 44, 2)], &[(40, dir(a)), (44, dir2(b))]);
    assert!(read_image(&img(2, 2)).is_ok());
    let e = read_image(&img(3, 5)).unwrap_err().to_string();
    assert!(e.contains("directory /a (nid 40): nlink 3, but it has 0 subdirectories"), "{e}");
    let e = read_image(&img(2, 5)).unwrap_err().to_string();
    assert!(e.contains("directory /b (nid 44): nlink 5, but it has 0 subdirectories"), "{e}");
    // The root's count too (its two subdirectories).
    let mut bad_root = img(2, 2);
    let at = (ROOT_NID * 32 + 6) as usize;
    bad_root[at..at + 2].copy_from_slice(&3u16.to_le_bytes());
    let e = read_image(&bad_root).unwrap_err().to_string();
    assert!(e.contains("directory / (nid 36): nlink 3, but it has 2 subdirectories"), "{e}");
}

/// A dumpfile of `dirs` directories of `files` entries each, of every kind, with hard links
/// between directories, shared and inline xattrs, user whiteouts and a device node.
fn varied_dump(dirs: usize, files: usize) -> String {
    let digest = |i: usize| format!("{:02x}/{:062x}", i % 256, i * 7919 + 1);
    let mut d = String::from("/ 4096 40755 2 0 0 0 0.0 - - - security.selinux=root_t\n");
    for di in 0..dirs {
        let top = format!("/d{di:03}");
        d += &format!("{top} 4096 40755 3 0 0 0 0.0 - - - user.dir={di}\n");
        d += &format!("{top}/sub 4096 40755 2 0 0 0 0.0 - - -\n");
        for fi in 0..files {
            let p = format!("{top}/f{fi:03}");
            let n = di * files + fi;
            d += &match fi % 9 {
                0 => format!("{p} 5 100644 1 0 0 0 0.0 - hello - user.a=1 security.selinux=file_t\n"),
                1 => format!("{p} 70000 100755 1 0 0 0 0.0 {}.file - -\n", digest(n)),
                2 => format!("{p} 7 120777 1 0 0 0 0.0 ../f{fi:03} - -\n"),
                3 => format!("{p} 0 20000 1 0 0 0 0.0 - - -\n"),
                4 if di > 0 => format!("{p} 0 @100644 1 0 0 0 0.0 /d{:03}/f{:03} - -\n", di - 1, fi - 4),
                5 => format!("{p} 0 10644 1 0 0 0 0.0 - - - trusted.overlay.x=y\n"),
                6 => format!("{p} 12 100600 1 1 1 0 0.0 {}.file - - user.big={}\n", digest(n), "v".repeat(40)),
                7 => format!("{p} 0 100644 1 0 0 0 1.5 - - - security.selinux=file_t\n"),
                _ => format!("{p} 3 100644 1 0 0 0 0.0 - abc - user.k{}=v\n", fi % 4),
            };
        }
        d += &format!("{top}/sub/x 1 100644 1 0 0 0 0.0 - x -\n");
    }
    d += "/dev 4096 40755 2 0 0 0 0.0 - - -\n/dev/sda 0 60660 1 0 6 2048 0.0 - - -\n";
    d
}

/// The image the writer makes of [`varied_dump`]`(dirs, files)`.
fn varied_image(dirs: usize, files: usize, opts: &crate::erofs::writer::WriteOptions) -> Vec<u8> {
    let tree = crate::input::dump::parse(varied_dump(dirs, files).as_bytes(), &Default::default()).unwrap();
    let mut img = Vec::new();
    crate::erofs::writer::write_image(&tree, opts, &mut img).unwrap();
    img
}

/// For sound images the vetting on threads takes its own path to the end (it does not give
/// up and leave the work to the one-thread vetting) and finds what it finds.
#[test]
fn vetting_on_threads_accepts_sound_images_itself() {
    for (dirs, files) in [(1, 1), (3, 10), (40, 30)] {
        for version in [0, 1] {
            let opts = crate::erofs::writer::WriteOptions { min_version: version, max_version: version };
            let img = varied_image(dirs, files, &opts);
            let t = read_image(&img).unwrap();
            let one = vet_image_threads(&img, &ReadLimits::default(), 1).unwrap();
            assert_eq!(one.entries, t.len() as u64);
            assert_eq!(one.first_device.as_deref(), Some("/dev/sda"));
            for threads in 1..=4 {
                let r = Reader::new(&img, &ReadLimits::default(), false).unwrap();
                let v = r.vet_on_threads(threads);
                assert_eq!(v.as_ref(), Some(&one), "{dirs}x{files}, version {version}, {threads} threads");
            }
        }
    }
}

/// What the walk defers and the helpers decode is checked when it comes back: an entry whose
/// file type is not its inode's makes the vetting on threads give up (the one-thread vetting
/// then reports it), whether the inode was decoded by a helper or by the walk.
#[test]
fn vetting_on_threads_gives_up_on_what_it_cannot_defer() {
    let img = varied_image(4, 12, &Default::default());
    let mut flipped = 0;
    // Every entry's file type byte in turn: a regular file's entry said to be a FIFO, ...
    let meta = {
        let h = crate::erofs::format::ImageHeader::decode(&img).unwrap();
        h.meta_offset() as usize
    };
    for at in (meta..img.len()).step_by(1) {
        if flipped >= 40 {
            break;
        }
        // A dirent record is 12 bytes: nid (8), nameoff (2), file type (1), reserved (1).
        // Change bytes that hold a valid regular-file type into a FIFO type and see what the
        // reader says; most such bytes are not file types (then the images still agree).
        if img[at] != crate::erofs::format::FT_REG_FILE || at < meta + 64 {
            continue;
        }
        let mut bad = img.clone();
        bad[at] = crate::erofs::format::FT_FIFO;
        let serial = vet_image_threads(&bad, &ReadLimits::default(), 1);
        if serial.is_ok() {
            continue;
        }
        flipped += 1;
        for threads in 2..=4 {
            let r = Reader::new(&bad, &ReadLimits::default(), false).unwrap();
            assert_eq!(r.vet_on_threads(threads), None, "byte {at}: {serial:?}");
            assert_eq!(
                format!("{:?}", vet_image_threads(&bad, &ReadLimits::default(), threads)),
                format!("{serial:?}")
            );
        }
    }
    assert!(flipped >= 10, "only {flipped} refused images");
}
/// `parse_dirent_block` written the plain way (entry by entry, byte by byte), what the word-wise
/// one must agree with: the same entries, count and error.
fn plain_parse_dirent_block<'b>(b: &'b [u8], out: &mut Vec<(&'b [u8], u64, u8)>, budget: u64) -> Result<u64, String> {
    let rd16 = |o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
    if b.len() < 12 {
        return Err("block shorter than one entry".into());
    }
    let first = rd16(8);
    if first < 12 || first % 12 != 0 || first > b.len() {
        return Err(format!("bad first name offset {first}"));
    }
    let n = first / 12;
    if n as u64 > budget {
        return Err("too many directory entries in the image".into());
    }
    for i in 0..n {
        let e = i * 12;
        let nid = u64::from_le_bytes(b[e..e + 8].try_into().unwrap());
        let nameoff = rd16(e + 8);
        let end = if i + 1 < n {
            rd16(e + 12 + 8)
        } else {
            let mut end = nameoff;
            while end < b.len() && b[end] != 0 {
                end += 1;
            }
            end
        };
        if nameoff < first || end <= nameoff || end > b.len() {
            return Err(format!("entry {i}: bad name offsets {nameoff}..{end}"));
        }
        let name = &b[nameoff..end];
        if name.len() > crate::tree::MAX_NAME_LEN {
            return Err(format!("entry {i}: name longer than {} bytes", crate::tree::MAX_NAME_LEN));
        }
        if name.iter().any(|&c| c == 0 || c == b'/') {
            return Err(format!("entry {i}: NUL or '/' in name {}", crate::tree::show(name)));
        }
        out.push((name, nid, b[e + 10]));
    }
    Ok(n as u64)
}

#[test]
fn dirent_blocks_agree_with_the_plain_parse() {
    // Blocks of 1 to 40 entries with names of 1 to 300 bytes (around every word length and the
    // 255-byte limit), then random byte changes: every byte value in the names (NUL, '/', the
    // high bit), the name offsets, the table's end; the last name NUL-padded or not, the
    // block cut anywhere. Same entries, count and error as the plain parse.
    let mut seed = 17u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let lens = [1usize, 2, 3, 7, 8, 9, 15, 16, 17, 30, 252, 253, 254, 255, 256, 300];
    let (mut oks, mut errs) = (0, 0);
    for round in 0..6_000 {
        let count = 1 + next(40) as usize;
        let names: Vec<Vec<u8>> = (0..count)
            .map(|k| {
                let len = if next(4) == 0 { lens[next(lens.len() as u64) as usize] } else { 1 + next(12) as usize };
                let mut name: Vec<u8> = (0..len).map(|_| b'a' + next(26) as u8).collect();
                // (Half of them with a 3-digit suffix: 255 and 256 bytes from 252 and 253.)
                if next(2) == 0 {
                    name.extend_from_slice(format!("{k:03}").as_bytes());
                }
                name
            })
            .collect();
        let ents: Vec<(&[u8], u64, u8)> = names.iter().map(|n| (n.as_slice(), next(1 << 40), next(8) as u8)).collect();
        let mut b = dirents(&ents);
        if next(2) == 0 {
            b.extend(std::iter::repeat_n(0u8, next(9) as usize));
        }
        let changes = if round % 3 == 0 { 0 } else { 1 + next(3) };
        for _ in 0..changes {
            let at = next(b.len() as u64) as usize;
            b[at] = match next(6) {
                0 => 0,
                1 => b'/',
                2 => [0x80, 0xff, 0x7f, 1, b'.'][next(5) as usize],
                _ => next(256) as u8,
            };
        }
        if next(8) == 0 {
            b.truncate(next(b.len() as u64 + 1) as usize);
        }
        let budget = if next(10) == 0 { next(40) } else { 1000 };
        let (mut fast, mut plain) = (Vec::new(), Vec::new());
        let got = parse_dirent_block(&b, &mut fast, budget);
        let want = plain_parse_dirent_block(&b, &mut plain, budget);
        assert_eq!(got, want, "round {round}");
        // (Entries before an error are appended too, by both.)
        assert_eq!(fast, plain, "round {round}");
        if got.is_ok() {
            oks += 1;
        } else {
            errs += 1;
        }
    }
    assert!(oks > 1_000 && errs > 1_000, "{oks} {errs}");
    // The length limit itself: 255 bytes pass, 256 do not.
    for (len, ok) in [(255, true), (256, false)] {
        let name = vec![b'n'; len];
        let b = dirents(&[(b".", 1, 2), (&name, 9, 1)]);
        let (mut fast, mut plain) = (Vec::new(), Vec::new());
        let got = parse_dirent_block(&b, &mut fast, 100);
        assert_eq!(got, plain_parse_dirent_block(&b, &mut plain, 100));
        assert_eq!(got.is_ok(), ok, "{got:?}");
    }
}

#[test]
fn filter_bits_as_the_kernel_computes_them() {
    use super::xattr::{filter_bit, RawXattr};
    // The bits known at build time and every other name: xxh32 of the rest of the name, seeded
    // with the filter's seed plus the name index, modulo 32 (what the kernel computes).
    let names: [&[u8]; 8] = [
        b"overlay.redirect",
        b"overlay.metacopy",
        b"selinux",
        b"overlay.redirecT",
        b"overlay.redirec",
        b"",
        b"a",
        b"overlay.opaque",
    ];
    for index in 0..=9u8 {
        for name in names {
            let x = RawXattr { prefix: b"", index, name, value: b"" };
            let want = format::xxh32(name, format::XATTR_FILTER_SEED.wrapping_add(u32::from(index))) % 32;
            assert_eq!(filter_bit(&x), want, "{index} {}", crate::tree::show(name));
        }
    }
}

/// On threads the release hook is called after every `every` bytes all threads read together,
/// as often as on one thread (give or take the bytes a thread has not yet added to the count),
/// not once per `every` bytes of each thread.
#[test]
fn on_threads_releases_count_the_bytes_of_all_threads() {
    let img = varied_image(40, 400, &Default::default());
    let calls = |threads: usize| {
        let n = std::sync::atomic::AtomicU64::new(0);
        let hook = || {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let mut reader = Reader::new(&img, &ReadLimits::default(), false).unwrap();
        reader.release = Some(Release { every: 4096, hook: &hook });
        let vetted = if threads == 1 { reader.vet().ok() } else { reader.vet_on_threads(threads) };
        assert!(vetted.is_some(), "{threads} threads");
        n.into_inner()
    };
    let one = calls(1);
    assert!(one >= 10, "{one} releases for {} bytes", img.len());
    for threads in [2, 3, 4] {
        let n = calls(threads);
        // Not once per `every` bytes of each thread (about `threads` times as many as on one
        // thread); about as many (a release drops the bytes read past `every`, and threads add
        // theirs in larger steps, so the counts differ a little).
        assert!(n <= one + threads as u64 && 2 * n >= one, "{n} releases on {threads} threads, {one} on one");
    }
}

/// A panic on the walk's thread (here from the release hook) reaches the caller: the helper
/// threads do not wait for batches forever (the scope joins them before the panic goes on).
#[test]
fn a_panic_on_the_walks_thread_does_not_hang_the_vetting() {
    let img = varied_image(6, 20, &Default::default());
    let (send, recv) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let walker = std::thread::current().id();
        let hook = move || {
            if std::thread::current().id() == walker {
                panic!("the release hook on the walk's thread");
            }
        };
        let r = std::panic::catch_unwind(|| {
            let mut reader = Reader::new(&img, &ReadLimits::default(), false).unwrap();
            // Every 16 bytes read: the walk's first read (the root inode), before any helper has
            // a batch, reaches the threads' shared count and releases, so the hook surely runs
            // on the walk's thread while the helper waits for work.
            reader.release = Some(Release { every: 16, hook: &hook });
            reader.vet_on_threads(2)
        });
        let _ = send.send(r.is_err());
    });
    let panicked = recv.recv_timeout(std::time::Duration::from_secs(60)).expect("the vetting hung");
    assert!(panicked);
}
