//! Round trips through the image reader (`cfsmount inspect`): every buildable conformance
//! dumpfile → image → read_image → image must give identical bytes, the dump that inspect
//! prints must parse back to an equal tree and rebuild the same image, and corrupted images
//! must be rejected (or read) without a panic and in bounded time.

use std::time::{Duration, Instant};

use cfsmount::erofs::reader::{
    read_image, read_image_with, vet_image, vet_image_releasing, vet_image_threads, ReadError, ReadLimits, Release,
};
use cfsmount::erofs::writer::write_image;
use cfsmount::input::dump::{parse, write_dump, DumpOptions};
use cfsmount::tree::{Limits, NodeId, Tree, ROOT};

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{forced_version, is_strict, read_input};
#[path = "support/image.rs"]
mod image;
use image::{build, write_options};
#[path = "support/random.rs"]
mod random;
use random::{corrupted, env_or, random_tree, Rng};

/// One buildable dumpfile case: name, input bytes, forced version, strict parsing.
struct Case {
    name: String,
    input: Vec<u8>,
    version: Option<u32>,
    strict: bool,
}

impl Case {
    /// The case's input parsed (strictly unless it is a lenient case).
    fn tree(&self) -> Tree {
        let opts = DumpOptions { strict: self.strict, limits: Limits::default() };
        parse(&self.input, &opts).unwrap_or_else(|e| panic!("{}: parse: {e}", self.name))
    }
}

/// The cases the conformance README says build: an input with a `.sha256` next to it,
/// not `should-fail-*`. (Some inputs are stored as a one-line file naming a sibling.)
fn cases() -> Vec<Case> {
    let dir = conformance::dump_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("reading the conformance directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| (n.ends_with(".dump") || n.ends_with(".dump.gz")) && !n.starts_with("should-fail-"))
        .filter(|n| dir.join(format!("{n}.sha256")).exists())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let input = read_input(&dir, &name);
        let version = forced_version(&dir, &name);
        let strict = is_strict(&name);
        out.push(Case { name, input, version, strict });
    }
    assert!(out.len() >= 10, "expected the conformance dumpfiles, found {}", out.len());
    out
}

/// The one case named `name`.
fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} case"))
}

/// Canonical listing of a tree: per path (sorted walk), the entry, the hard link target
/// and the explicit nlink.
fn listing(t: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<NodeId> = vec![ROOT];
    while let Some(id) = stack.pop() {
        let n = t.node(id);
        let link = n.link_to.map(|l| t.path_of(l));
        let entry = &t.node(t.resolve(id)).entry;
        out.push(format!("{:?} link={:?} nlink={:?} {:?}", t.path_of(id), link, t.node(t.resolve(id)).nlink, entry));
        let mut kids = n.children.clone();
        kids.sort_by(|a, b| t.node(*b).name.cmp(&t.node(*a).name));
        stack.extend(kids);
    }
    out
}

fn dump_of(t: &Tree) -> Vec<u8> {
    let mut d = Vec::new();
    write_dump(t, &mut d).expect("write_dump");
    d
}

/// Prints `tree` as `inspect` does and parses that back strictly, asserting an equal tree;
/// returns the printed dump and the reparsed tree. `what` names the tree in failures.
fn print_and_reparse(tree: &Tree, what: &str) -> (Vec<u8>, Tree) {
    let dump = dump_of(tree);
    let again = parse(&dump, &DumpOptions { strict: true, limits: Limits::default() })
        .unwrap_or_else(|e| panic!("{what}: the printed dump does not parse: {e}"));
    assert_eq!(listing(tree), listing(&again), "{what}: dump → parse changed the tree");
    (dump, again)
}

#[test]
fn conformance_images_round_trip_through_the_reader() {
    for case in cases() {
        let tree0 = case.tree();
        let img1 = build(&tree0, case.version);

        let (tree1, info) =
            read_image_with(&img1, &ReadLimits::default()).unwrap_or_else(|e| panic!("{}: read_image: {e}", case.name));
        if let Some(v) = case.version {
            assert_eq!(info.composefs_version, v, "{}: version in header", case.name);
        }
        // The header version is all that is needed besides the tree to rebuild the image.
        let img2 = build(&tree1, Some(info.composefs_version));
        assert!(
            img1 == img2,
            "{}: write_image(read_image(img)) differs from img ({} vs {} bytes)",
            case.name,
            img1.len(),
            img2.len()
        );

        // What `inspect` prints parses back to an equal tree, which rebuilds the same image.
        let (dump1, tree2) = print_and_reparse(&tree1, &case.name);
        assert!(dump_of(&tree2) == dump1, "{}: printing the reparsed tree differs", case.name);
        let img3 = build(&tree2, Some(info.composefs_version));
        assert!(img1 == img3, "{}: mkimage of the inspected dump differs from the image", case.name);

        // And without forcing the version, the writer picks the same one again.
        if case.version.is_none() {
            assert!(build(&tree1, None) == img1, "{}: default versions pick another version", case.name);
        }
    }
}

#[test]
fn the_reader_drops_what_the_writer_adds() {
    // special.dump at version 1: user whiteout, escaped overlay xattrs, inline files.
    let tree0 = case("special_v1.dump").tree();
    let img = build(&tree0, Some(1));
    let t = read_image(&img).expect("read_image");
    // No whiteout stubs: the root holds exactly the names the dump listed.
    let names = |t: &Tree| {
        let mut v: Vec<Vec<u8>> = t.node(ROOT).children.iter().map(|&c| t.node(c).name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&t), names(&tree0));
    let root = &t.node(ROOT).entry;
    let keys: Vec<&[u8]> = root.xattrs.iter().map(|x| x.key.as_slice()).collect();
    assert_eq!(keys, [&b"trusted.foo1"[..], b"user.foo2"], "root xattrs: v1 whiteout markers and opaque must be gone");
    // The whiteout is a 0/0 character device again, without its escape xattrs.
    let w = &t.node(t.lookup(b"whiteout").expect("whiteout")).entry;
    assert_eq!(w.inode.mode, 0o20777);
    assert_eq!(w.inode.rdev, 0);
    assert_eq!(w.xattrs.iter().map(|x| x.key.as_slice()).collect::<Vec<_>>(), [&b"trusted.foo"[..]]);
    // trusted.overlay.* given by the user is unescaped again.
    let e = &t.node(t.lookup(b"escaped-xattr").expect("escaped-xattr")).entry;
    assert!(e.xattrs.iter().any(|x| x.key == b"trusted.overlay.redirect" && x.value == b"/foo\n"));
}

// ---------------------------------------------------------------------------------------
// Hostile images

/// Valid images to corrupt: conformance cases plus random trees (hard links, whiteouts,
/// shared xattrs, block-stored symlinks and contents, extended inodes).
fn hostile_inputs() -> Vec<(String, Vec<u8>)> {
    let wanted =
        ["special_v1.dump", "longlink.dump", "honggfuzz-bigfile-with-acl.dump", "config-with-hard-link.dump.gz"];
    let mut out: Vec<(String, Vec<u8>)> = cases()
        .into_iter()
        .filter(|c| wanted.contains(&c.name.as_str()))
        .map(|c| (c.name.clone(), build(&c.tree(), c.version)))
        .collect();
    for (i, n) in [40, 150, 400].into_iter().enumerate() {
        let t = random_tree(0x5851_f42d_4c95_7f2d + i as u64, n);
        out.push((format!("random tree {i}"), build(&t, None)));
    }
    out
}

/// Calls of the release hook in [`read_timed`]'s vetting with releases.
static RELEASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Each read of a (corrupted) image must return in bounded time; a panic fails the test.
fn read_timed(img: &[u8], what: &str, worst: &mut Duration) -> Result<(), ReadError> {
    let t0 = Instant::now();
    let r = read_image(img);
    let el = t0.elapsed();
    assert!(el < Duration::from_secs(5), "{what}: read_image took {el:?}");
    *worst = (*worst).max(el);
    // The helper's vetting accepts exactly what the reader accepts (with the same error), and
    // counts the same entries.
    let vetted = vet_image(img, &ReadLimits::default());
    // Releasing the image's pages as it goes (the helper's mapped copy) changes nothing else.
    let calls = std::sync::atomic::AtomicU64::new(0);
    let hook = || {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let released = vet_image_releasing(img, &ReadLimits::default(), Release { every: 4096, hook: &hook });
    assert_eq!(format!("{released:?}"), format!("{vetted:?}"), "{what}: vetting with releases");
    RELEASES.fetch_add(calls.into_inner(), std::sync::atomic::Ordering::Relaxed);
    // On one thread or several (the large images get several by themselves), the same.
    for threads in [1, 2, 4] {
        let v = vet_image_threads(img, &ReadLimits::default(), threads);
        assert_eq!(format!("{v:?}"), format!("{vetted:?}"), "{what}: vetting on {threads} threads");
    }
    match (&r, vetted) {
        (Ok(t), Ok(v)) => assert_eq!(v.entries, t.len() as u64, "{what}: entries"),
        (Err(e), Err(v)) => assert_eq!(v.to_string(), e.to_string(), "{what}"),
        (r, v) => panic!("{what}: read_image {:?} but vet_image {v:?}", r.as_ref().map(|t| t.len())),
    }
    r.map(|_| ())
}

#[test]
fn corrupted_images_never_panic() {
    let inputs = hostile_inputs();
    assert_eq!(inputs.len(), 7);
    // CFS_FUZZ_SCALE multiplies the number of corruptions (default 1: a brief run).
    let scale: usize = env_or("CFS_FUZZ_SCALE", 1);
    let mut rng = Rng(env_or("CFS_FUZZ_SEED", 0x9e37_79b9_7f4a_7c15u64));
    let (mut ok, mut err, mut worst) = (0u32, 0u32, Duration::ZERO);
    for (name, img) in &inputs {
        assert!(read_image(img).is_ok(), "{name}: the uncorrupted image must read");
        let big = img.len() > 1 << 20;
        // Truncations: every 61st length over the metadata, then random ones.
        let step = if big { 4093 } else { 61 };
        for cut in (0..img.len().min(1 << 16)).step_by(step).chain((0..64).map(|_| rng.index(img.len()))) {
            match read_timed(&img[..cut], &format!("{name} truncated at {cut}"), &mut worst) {
                Ok(()) => ok += 1,
                Err(_) => err += 1,
            }
        }
        // Byte corruption: single bit flips anywhere, and bursts of random bytes in the metadata.
        let rounds = scale * if big { 100 } else { 800 };
        for round in 0..rounds {
            let span = if round % 2 == 0 { img.len() } else { img.len().min(1 << 16) };
            let m = corrupted(&mut rng, img, span, 6, round % 2 == 0);
            match read_timed(&m, &format!("{name} corruption round {round}"), &mut worst) {
                Ok(()) => ok += 1,
                Err(_) => err += 1,
            }
        }
    }
    eprintln!("corrupted images: {ok} read, {err} rejected, slowest read {worst:?}");
    assert!(err > 0 && ok > 0, "the corruptions exercise both outcomes ({ok} ok, {err} errors)");
    assert!(RELEASES.load(std::sync::atomic::Ordering::Relaxed) > 0, "the release hook was exercised");
}

/// Minimal EROFS facts of an image, found the way any reader would, to aim corruptions.
struct Layout {
    meta: usize,
    root_nid: u64,
}

fn layout(img: &[u8]) -> Layout {
    let le32 = |o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap());
    let root_nid = u64::from(u16::from_le_bytes(img[1024 + 14..1024 + 16].try_into().unwrap()));
    Layout { meta: le32(1024 + 40) as usize * 4096, root_nid }
}

/// (offset of the dirent, nid, name) for every entry of the root directory's first block.
fn root_dirents(img: &[u8]) -> Vec<(usize, u64, Vec<u8>)> {
    let l = layout(img);
    let ino = l.meta + l.root_nid as usize * 32;
    let format = u16::from_le_bytes(img[ino..ino + 2].try_into().unwrap());
    let compact = format & 1 == 0;
    let isize = if compact { 32 } else { 64 };
    let icount = u16::from_le_bytes(img[ino + 2..ino + 4].try_into().unwrap()) as usize;
    let xsize = if icount == 0 { 0 } else { 12 + (icount - 1) * 4 };
    let size = if compact {
        u32::from_le_bytes(img[ino + 8..ino + 12].try_into().unwrap()) as usize
    } else {
        u64::from_le_bytes(img[ino + 8..ino + 16].try_into().unwrap()) as usize
    };
    let blk = u32::from_le_bytes(img[ino + 16..ino + 20].try_into().unwrap()) as usize;
    let (start, len) =
        if (format >> 1) & 7 == 2 && size < 4096 { (ino + isize + xsize, size) } else { (blk * 4096, size.min(4096)) };
    let b = &img[start..start + len];
    let n = u16::from_le_bytes(b[8..10].try_into().unwrap()) as usize / 12;
    (0..n)
        .map(|i| {
            let nid = u64::from_le_bytes(b[i * 12..i * 12 + 8].try_into().unwrap());
            let off = u16::from_le_bytes(b[i * 12 + 8..i * 12 + 10].try_into().unwrap()) as usize;
            let end = if i + 1 < n {
                u16::from_le_bytes(b[i * 12 + 20..i * 12 + 22].try_into().unwrap()) as usize
            } else {
                off + b[off..].iter().position(|&c| c == 0).unwrap_or(b.len() - off)
            };
            (start + i * 12, nid, b[off..end].to_vec())
        })
        .collect()
}

fn config_image() -> Vec<u8> {
    build(&case("config-with-hard-link.dump.gz").tree(), None)
}

/// The entry of `ents` (from `root_dirents`) named `name`; `what` is the panic message if none.
fn find_dirent(ents: &[(usize, u64, Vec<u8>)], name: &[u8], what: &str) -> (usize, u64, Vec<u8>) {
    ents.iter().find(|(_, _, n)| n == name).expect(what).clone()
}

/// A copy of `img` whose dirent at offset `at` points to inode `nid`.
fn with_dirent_nid(img: &[u8], at: usize, nid: u64) -> Vec<u8> {
    let mut m = img.to_vec();
    m[at..at + 8].copy_from_slice(&nid.to_le_bytes());
    m
}

fn expect_err(img: &[u8], needle: &str) {
    match read_image(img) {
        Ok(_) => panic!("corrupted image was accepted (expected an error about {needle:?})"),
        Err(e) => assert!(e.to_string().contains(needle), "error {e:?} does not mention {needle:?}"),
    }
}

#[test]
fn directory_cycles_and_aliases_are_rejected() {
    let img = config_image();
    let ents = root_dirents(&img);
    let root = layout(&img).root_nid;
    let (at, _, _) = find_dirent(&ents, b"etc", "/etc in the root");
    let (_, usr_nid, _) = find_dirent(&ents, b"usr", "/usr in the root");

    // /etc → the root itself: a cycle.
    expect_err(&with_dirent_nid(&img, at, root), "reachable twice");
    // /etc → /usr: the same directory under two names.
    expect_err(&with_dirent_nid(&img, at, usr_nid), "reachable twice");
    // '.' of the root pointing elsewhere.
    let (dot, _, _) = find_dirent(&ents, b".", "'.'");
    expect_err(&with_dirent_nid(&img, dot, usr_nid), "'.' entry");
}

#[test]
fn out_of_range_references_are_rejected() {
    let img = config_image();
    let ents = root_dirents(&img);
    let (at, nid, _) = find_dirent(&ents, b"etc", "/etc");
    // A nid far beyond the image, and one at the very top of the range (overflow).
    for bad in [u64::from(u32::MAX), u64::MAX, u64::MAX / 32] {
        let m = with_dirent_nid(&img, at, bad);
        assert!(read_image(&m).is_err(), "nid {bad:#x} accepted");
    }
    // A nid one slot into another inode: overlapping inodes.
    let m = with_dirent_nid(&img, at, nid + 1);
    assert!(read_image(&m).is_err(), "an inode overlapping /etc accepted");
    // Shared xattr block address and metadata block address past the end.
    for field in [1024 + 40, 1024 + 44] {
        let mut m = img.clone();
        m[field..field + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_image(&m).is_err(), "superblock field at {field} accepted");
    }
    // Every size is too small to hold the header and superblock, or a truncated image.
    for cut in [0, 1, 31, 1024, 1151] {
        assert!(read_image(&img[..cut]).is_err());
    }
}

#[test]
fn decoded_size_limit_bounds_memory() {
    // Hard links and shared xattrs multiply what a small image decodes to; the budget stops it.
    let img = config_image();
    let tiny = ReadLimits { max_decoded_bytes: 10_000, ..ReadLimits::default() };
    match read_image_with(&img, &tiny) {
        Err(ReadError::Limit(msg)) => assert!(msg.contains("bytes"), "{msg}"),
        other => panic!("expected a limit error, got {:?}", other.map(|(_, i)| i)),
    }
    let few = ReadLimits { max_dirents: 100, ..ReadLimits::default() };
    assert!(matches!(read_image_with(&img, &few), Err(ReadError::Dir { .. } | ReadError::Limit(_))));
}

// ---------------------------------------------------------------------------------------
// Random trees

#[test]
fn random_trees_round_trip_through_the_reader() {
    // CFS_RANDOM_ROUNDS / CFS_RANDOM_SEED run it longer or elsewhere; the default is brief.
    let rounds = env_or("CFS_RANDOM_ROUNDS", 60u64) as usize;
    let mut rng = Rng(env_or("CFS_RANDOM_SEED", 0x2545_f491_4f6c_dd1du64));
    let (mut done, mut refused) = (0, 0);
    for round in 0..rounds {
        let n = [5, 20, 60, 200, 600][round % 5];
        let tree = random_tree(rng.next(), n);
        let version = if rng.below(2) == 0 { None } else { Some(rng.below(2) as u32) };
        let opts = write_options(version);
        let mut img = Vec::new();
        if let Err(e) = write_image(&tree, &opts, &mut img) {
            // The writer may refuse a random tree (e.g. too many xattrs for one inode).
            eprintln!("round {round}: writer refused the tree: {e}");
            refused += 1;
            continue;
        }
        let (t1, info) =
            read_image_with(&img, &ReadLimits::default()).unwrap_or_else(|e| panic!("round {round}: read_image: {e}"));
        let again = build(&t1, Some(info.composefs_version));
        if again != img {
            // Keep both images for a look with `cfsmount inspect` / dump.erofs.
            let dir = std::env::temp_dir();
            let _ = std::fs::write(dir.join(format!("inspect-rt-{round}.orig.img")), &img);
            let _ = std::fs::write(dir.join(format!("inspect-rt-{round}.again.img")), &again);
            let first = img.iter().zip(&again).position(|(a, b)| a != b);
            panic!(
                "round {round}: write_image(read_image(img)) differs ({} vs {} bytes, first difference at {first:?}; images in {})",
                img.len(),
                again.len(),
                dir.display()
            );
        }
        let (_, t2) = print_and_reparse(&t1, &format!("round {round}"));
        assert!(
            build(&t2, Some(info.composefs_version)) == img,
            "round {round}: the inspected dump rebuilds another image"
        );
        // Every name of the input is in the image tree (stubs excluded, none added).
        assert_eq!(t1.len(), tree.len(), "round {round}: node count");
        done += 1;
    }
    eprintln!("{done} random trees round-tripped, {refused} refused by the writer");
    assert!(done * 6 >= rounds * 5, "only {done} of {rounds} random trees were written ({refused} refused)");
}

// ---------------------------------------------------------------------------------------
// The command line

#[test]
fn inspect_command_prints_the_dump() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let tree = case("special_v1.dump").tree();
    let img = build(&tree, Some(1));
    let want = dump_of(&read_image(&img).expect("read_image"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("special_v1.img");
    std::fs::write(&path, &img).expect("write image");
    let exe = env!("CARGO_BIN_EXE_cfsmount");

    let out = Command::new(exe).arg("inspect").arg(&path).output().expect("run cfsmount inspect");
    assert!(out.status.success(), "inspect FILE failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == want, "inspect FILE printed another dump");

    // IMAGE `-` reads standard input.
    let mut child = Command::new(exe)
        .args(["inspect", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cfsmount inspect -");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = {
        let img = img.clone();
        std::thread::spawn(move || stdin.write_all(&img))
    };
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("stdin thread").expect("writing stdin");
    assert!(out.status.success(), "inspect - failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == want, "inspect - printed another dump");

    // A corrupted image: non-zero exit, one line naming the problem, nothing on stdout.
    let mut bad = img.clone();
    bad[1024] ^= 0xff; // EROFS magic
    let bad_path = dir.path().join("bad.img");
    std::fs::write(&bad_path, &bad).expect("write bad image");
    let out = Command::new(exe).arg("inspect").arg(&bad_path).output().expect("run cfsmount inspect");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "partial output on failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("EROFS magic") && err.contains("bad.img"), "{err}");
}
