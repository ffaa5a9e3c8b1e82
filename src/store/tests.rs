//! Unit tests of the object store on the real filesystem of the test machine (temporary
//! directories; whatever it offers of O_TMPFILE, reflink and fs-verity).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};

use super::import::{with_workers, FileJob, ImportError};
use super::*;
use crate::fsverity::digest_bytes;

/// Deterministic test bytes (xorshift32); also used by `hash`'s tests.
pub(super) fn data(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> Digest {
    Sha256::digest(b).into()
}

/// Every path under `dir` (relative), files and directories.
fn listing(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Nothing but fan-out directories and objects: no temporary or staging leftovers.
fn assert_clean(dir: &Path) {
    for p in listing(dir) {
        let ok = match p.split_once('/') {
            None => p.len() == 2,
            Some((a, b)) => a.len() == 2 && b.len() == 62 && !b.contains('/'),
        };
        assert!(ok, "unexpected entry {p} in the store");
    }
}

#[test]
fn sha256_objects_dedup_and_mismatch() {
    let t = tempfile::tempdir().unwrap();
    let s = ObjectStore::open(&t.path().join("objs"), StoreOptions::new(Naming::Sha256)).unwrap();
    let a = data(10_000, 1);
    let st = s.insert_bytes(&a, None).unwrap();
    assert_eq!(st.digest, sha(&a));
    assert!(st.new);
    let path = t.path().join("objs").join(object_name(&st.digest));
    assert_eq!(fs::read(&path).unwrap(), a);
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o644);
    assert_eq!(s.lookup(&st.digest).unwrap(), Some(a.len() as u64));
    // Again: reused, not rewritten.
    let again = s.insert_bytes(&a, Some(&sha(&a))).unwrap();
    assert!(!again.new);
    // A wrong expected digest stores nothing and names both digests.
    let b = data(5000, 2);
    let e = s.insert_bytes(&b, Some(&sha(&a))).unwrap_err().to_string();
    assert!(e.contains(&crate::fsverity::to_hex(&sha(&b))) && e.contains("expected"), "{e}");
    assert_eq!(s.lookup(&sha(&b)).unwrap(), None);
    // The same through a streaming writer, small and large (several 1 MiB buffers).
    for n in [0usize, 100, 3 * (1 << 20) + 17] {
        let c = data(n, 3 + n as u32);
        let mut w = s.writer(Some(sha(&c)));
        for piece in c.chunks(70_000) {
            w.write_all(piece).unwrap();
        }
        let st = w.commit().unwrap();
        assert_eq!((st.digest, st.size, st.new), (sha(&c), n as u64, true));
        assert_eq!(fs::read(t.path().join("objs").join(object_name(&st.digest))).unwrap(), c);
    }
    let mut w = s.writer(Some(sha(&a)));
    w.write_all(&data(3 << 20, 9)).unwrap();
    assert!(matches!(w.commit(), Err(StoreError::Mismatch { .. })));
    s.sync().unwrap();
    assert_clean(&t.path().join("objs"));
}

#[test]
fn verity_naming_and_import_file() {
    let t = tempfile::tempdir().unwrap();
    let mut o = StoreOptions::new(Naming::FsVerity);
    o.verity_digests = true;
    let s = ObjectStore::open(&t.path().join("objs"), o).unwrap();
    for n in [65usize, 4096, 1 << 20, (1 << 20) + 1, 5 << 20] {
        let c = data(n, n as u32);
        let src = t.path().join(format!("src{n}"));
        fs::write(&src, &c).unwrap();
        let st = s.import_file(&fs::File::open(&src).unwrap(), n as u64, None).unwrap();
        assert_eq!(st.digest, digest_bytes(&c), "size {n}");
        assert_eq!(st.verity, Some(st.digest));
        assert_eq!(fs::read(t.path().join("objs").join(object_name(&st.digest))).unwrap(), c);
        // A file that is not the announced size is refused and nothing is stored.
        let e = s.import_file(&fs::File::open(&src).unwrap(), n as u64 - 1, None).unwrap_err();
        assert!(matches!(e, StoreError::SourceChanged(_)), "{e}");
        let e = s.import_file(&fs::File::open(&src).unwrap(), n as u64 + 1, None).unwrap_err();
        assert!(matches!(e, StoreError::SourceChanged(_)), "{e}");
    }
    assert_eq!(listing(&t.path().join("objs")).iter().filter(|p| p.contains('/')).count(), 5);
    assert_clean(&t.path().join("objs"));
}

#[test]
fn corrupt_store_entries_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("objs");
    let s = ObjectStore::open(&dir, StoreOptions::new(Naming::Sha256)).unwrap();
    // An object of the wrong size under the name of new content.
    let a = data(3000, 5);
    let name = object_name(&sha(&a));
    fs::create_dir(dir.join(&name[..2])).unwrap();
    fs::write(dir.join(&name), b"short").unwrap();
    let e = s.insert_bytes(&a, None).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("5 bytes"), "{e}");
    // A fan-out entry that is a symlink is never written through.
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let b = (0..).map(|i| data(2000, 100 + i)).find(|b| sha(b)[0] != sha(&a)[0]).unwrap();
    let fan = format!("{:02x}", sha(&b)[0]);
    std::os::unix::fs::symlink(&outside, dir.join(&fan)).unwrap();
    let e = s.insert_bytes(&b, None).unwrap_err().to_string();
    assert!(e.contains(&fan) && e.contains("not a directory"), "{e}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn named_temporary_files_when_there_is_no_o_tmpfile() {
    let t = tempfile::tempdir().unwrap();
    let s = ObjectStore::open(&t.path().join("objs"), StoreOptions::new(Naming::Sha256)).unwrap();
    s.force_named_tmp();
    let a = data(200_000, 7);
    let st = s.insert_bytes(&a, None).unwrap();
    assert_eq!(fs::read(t.path().join("objs").join(object_name(&st.digest))).unwrap(), a);
    let mut w = s.writer(None);
    w.write_all(&data(2 << 20, 8)).unwrap();
    w.commit().unwrap();
    // A failed write removes its temporary file.
    let mut w = s.writer(Some([0; 32]));
    w.write_all(&data(2 << 20, 9)).unwrap();
    w.commit().unwrap_err();
    assert_clean(&t.path().join("objs"));
}

/// Require: a filesystem without fs-verity refuses and nothing is stored; one with it gets a
/// sealed object whose kernel digest is the computed one.
#[test]
fn verity_required() {
    let t = tempfile::tempdir().unwrap();
    let mut o = StoreOptions::new(Naming::FsVerity);
    o.verity = VerityMode::Require;
    let s = ObjectStore::open(&t.path().join("objs"), o).unwrap();
    let a = data(50_000, 11);
    match s.insert_bytes(&a, None) {
        Ok(st) => {
            let f = s.open_object(&st.digest).unwrap();
            use std::os::fd::AsFd;
            assert_eq!(crate::fsverity::measure(f.as_fd()).unwrap(), digest_bytes(&a));
        }
        Err(StoreError::Verity { source, .. }) => {
            assert!(source.is_unsupported() || matches!(source, crate::fsverity::VerityError::BlockSize), "{source}");
            assert_eq!(s.lookup(&digest_bytes(&a)).unwrap(), None);
        }
        Err(e) => panic!("{e}"),
    }
    assert_clean(&t.path().join("objs"));
}

#[test]
fn stage_commits_together_or_not_at_all() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("objs");
    let s = ObjectStore::open(&dir, StoreOptions::new(Naming::Sha256)).unwrap();
    let old = data(1000, 20);
    s.insert_bytes(&old, None).unwrap();
    let (a, b) = (data(3000, 21), data(3 << 20, 22));
    {
        let st = s.stage().unwrap();
        st.insert_bytes(&a, None).unwrap();
        assert!(!st.insert_bytes(&old, None).unwrap().new, "an object already stored is reused");
        drop(st); // a failed import
    }
    assert_eq!(s.lookup(&sha(&a)).unwrap(), None);
    assert_clean(&dir);
    let st = s.stage().unwrap();
    st.insert_bytes(&a, None).unwrap();
    st.insert_bytes(&a, None).unwrap();
    let mut w = st.writer(Some(sha(&b)));
    w.write_all(&b).unwrap();
    assert!(w.commit().unwrap().new);
    assert_eq!(s.lookup(&sha(&a)).unwrap(), None, "nothing visible before the commit");
    assert_eq!(st.objects().len(), 2);
    // One of them appears meanwhile (another import): kept, the staged copy dropped.
    s.insert_bytes(&a, None).unwrap();
    let stats = st.commit().unwrap();
    assert_eq!((stats.added, stats.reused), (1, 1));
    assert_eq!(fs::read(dir.join(object_name(&sha(&b)))).unwrap(), b);
    assert_clean(&dir);
}

#[test]
fn stages_of_killed_imports_are_removed_by_the_next_stage() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("objs");
    let s = ObjectStore::open(&dir, StoreOptions::new(Naming::Sha256)).unwrap();
    // A dead process's stage (this layout and the older one with per-thread subdirectories),
    // and one of a live process (this one) that must stay.
    let dead = dir.join(format!("{STAGE_PREFIX}999999999-1"));
    fs::create_dir_all(dead.join("p0")).unwrap();
    fs::write(dead.join("p0/tmp-1"), b"partial").unwrap();
    fs::write(dead.join("ab12"), b"staged").unwrap();
    let live = dir.join(format!("{STAGE_PREFIX}{}-1", std::process::id()));
    fs::create_dir(&live).unwrap();
    let st = s.stage().unwrap();
    assert!(!dead.exists(), "the dead import's stage is removed");
    assert!(live.exists(), "a live process's stage is left alone");
    st.insert_bytes(&data(100, 30), None).unwrap();
    st.commit().unwrap();
    fs::remove_dir(&live).unwrap();
    assert_clean(&dir);
}

#[test]
fn files_created_ahead_serve_a_single_writer_and_vanish_unused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("objs");
    let s = ObjectStore::open(&dir, StoreOptions::new(Naming::Sha256)).unwrap();
    s.create_ahead(2).unwrap();
    s.create_ahead(2).unwrap(); // once per handle: a second call changes nothing
    let contents: Vec<Vec<u8>> = (0..50).map(|i| data(100 + i * 4099, 40 + i as u32)).collect();
    let st = s.stage().unwrap();
    for c in &contents {
        let mut w = st.writer(Some(sha(c)));
        w.write_all(c).unwrap();
        assert!(w.commit().unwrap().new);
    }
    assert_eq!(st.commit().unwrap().added, 50);
    drop(s); // stops the creators; their unused files had no name
    for c in &contents {
        assert_eq!(fs::read(dir.join(object_name(&sha(c)))).unwrap(), *c);
    }
    assert_clean(&dir);
}

#[test]
fn concurrent_writers_of_the_same_objects() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("objs");
    let s = ObjectStore::open(&dir, StoreOptions::new(Naming::Sha256)).unwrap();
    let contents: Vec<Vec<u8>> = (0..64).map(|i| data(500 + i * 997, i as u32)).collect();
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for c in &contents {
                    assert_eq!(s.insert_bytes(c, None).unwrap().digest, sha(c));
                }
            });
        }
    });
    for c in &contents {
        assert_eq!(fs::read(dir.join(object_name(&sha(c)))).unwrap(), *c);
    }
    assert_eq!(listing(&dir).iter().filter(|p| p.contains('/')).count(), 64);
    assert_clean(&dir);
}

#[test]
fn workers_report_the_first_failure() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("f");
    fs::write(&src, data(100_000, 1)).unwrap();
    let md = fs::metadata(&src).unwrap();
    use std::os::unix::fs::MetadataExt;
    let job = |id, ino| FileJob { id, path: src.clone(), dev: md.dev(), ino, size: md.len() };
    // Without a store: digests only.
    let no_lists = |_: &Path| ();
    let (n, res) = with_workers::<(), _, ImportError>(None, 2, &no_lists, |sub| {
        sub.submit(job(7, md.ino()))?;
        Ok(1)
    })
    .unwrap();
    assert_eq!((n, res.len(), res[0].0), (1, 1, 7));
    assert_eq!(res[0].1.verity, Some(digest_bytes(&fs::read(&src).unwrap())));
    // A file that is no longer the one the walker saw fails the import with its path, and the
    // walker is told to stop.
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let e = with_workers::<(), (), ImportError>(None, 2, &no_lists, |sub| {
        sub.submit(job(1, md.ino() + 1))?;
        for i in 0..100_000 {
            if let Err(e) = sub.submit(job(i, md.ino())) {
                stopped.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(&e, ImportError::Changed { path, .. } if path == &src), "{e}");
    assert!(stopped.load(Ordering::Relaxed), "the walker was not stopped");
}

#[test]
fn object_names() {
    let mut d = [0u8; 32];
    d[0] = 0xab;
    d[31] = 0x0f;
    let n = object_name(&d);
    assert_eq!(n, format!("ab/{}0f", "00".repeat(30)));
    assert_eq!(n.replace('/', ""), crate::fsverity::to_hex(&d));
}

/// Objects are 0644 whatever the umask (the store then fchmods each new object).
#[test]
fn object_mode_ignores_umask() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("objs");
    // Process-wide for a moment; restored right after (other tests only create 0700 tempdirs).
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let r = std::panic::catch_unwind(|| {
        let s = ObjectStore::open(&dir, StoreOptions::new(Naming::Sha256)).unwrap();
        let st = s.insert_bytes(&data(1000, 3), None).unwrap();
        fs::metadata(dir.join(object_name(&st.digest))).unwrap().permissions().mode() & 0o7777
    });
    rustix::process::umask(old);
    assert_eq!(r.unwrap(), 0o644);
}
