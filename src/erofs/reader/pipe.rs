//! The vetting on more than one thread ([`super::vet_image`] of a large image, for the setuid
//! helper's first mount of an image).
//!
//! The walk stays on the calling thread, as in the one-thread vetting, and decodes what it
//! needs in order to go on: the directories (it reads their entries next) and the root's
//! entries (the whiteout stubs are told apart by their decoded inode). Every other inode it
//! meets gets its place in the inode table at once, as it would there, but is decoded later:
//! its nid goes into a batch, and helper threads decode the batches while the walk goes on. When
//! the walk ends, the calling thread decodes the batches no helper took. Each decoded inode is
//! then put in its place, after checking that it is what the entries naming it said (their file
//! type; and neither a directory nor a raw whiteout, which the walk would have had to handle).
//!
//! Each helper decodes with its own claims on inode slots and data blocks, and its own share of
//! the decoded-bytes budget; once all are done, the claims of all threads must be disjoint and
//! the budget's total within the limit. After that the same later phases run on the same table
//! as in the one-thread vetting (stubs, nlinks, primary names, whiteouts, the count).
//!
//! Whether an image passes does not depend on the order of the checks: a claim overlaps another
//! one in any order or in none; the budget's total is the same sum. So this accepts exactly the
//! images the one-thread vetting accepts, with the same [`Vetted`]. It reports no error itself:
//! on any failure (a check, a helper that gave up or could not start) the one-thread vetting
//! runs from the start and reports the error it finds first, in walk order, so errors do not
//! depend on how the threads went. (A refused image costs up to two vettings.)

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::inode::{Ino, InodeTable};
use super::{ReadError, Reader, Vetted};

/// Inodes per batch.
const BATCH: usize = if cfg!(test) { 3 } else { 512 };

/// Most threads the vetting runs on (the calling one included).
const MAX_THREADS: usize = 4;

/// Images smaller than this are vetted on one thread (starting a helper costs more than it
/// would save; cs9-developer, 64,502 inodes, is 10 MB).
pub(super) const MIN_BYTES: usize = if cfg!(test) { 1 } else { 1 << 20 };

/// How many threads to vet an image of `len` bytes on: as many as CPUs, at most
/// [`MAX_THREADS`]; one for a small image.
pub(super) fn threads_for(len: usize) -> usize {
    if len < MIN_BYTES {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

/// The batches not yet taken, shared by the walk and the helpers.
struct Queue {
    batches: VecDeque<Vec<u64>>,
    /// No more batches will come (the walk ended, or the vetting gave up).
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    more: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // (A helper that panicked holding the lock leaves it poisoned: the queue is still
        // whole, and the vetting gives up when that helper's batch never comes back.)
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch; waits while there is none yet. `None` once closed and empty, or once
    /// the vetting gave up (`close(true)`).
    fn next(&self) -> Option<Vec<u64>> {
        let mut q = self.lock();
        loop {
            if let Some(b) = q.batches.pop_front() {
                return Some(b);
            }
            if q.closed {
                return None;
            }
            q = self.more.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Hand `batch` out; returns how many batches wait then.
    fn push(&self, batch: Vec<u64>) -> usize {
        let mut q = self.lock();
        q.batches.push_back(batch);
        let waiting = q.batches.len();
        drop(q);
        self.more.notify_one();
        waiting
    }

    /// The oldest waiting batch, if more than `most` wait (no waiting).
    fn take_if_over(&self, most: usize) -> Option<Vec<u64>> {
        let mut q = self.lock();
        if q.batches.len() > most {
            q.batches.pop_front()
        } else {
            None
        }
    }

    /// No more batches; with `drop_rest`, the ones not taken are dropped too (giving up: a
    /// helper that fails, the walk's thread when it is done, or unwinding, see [`CloseOnDrop`]).
    fn close(&self, drop_rest: bool) {
        let mut q = self.lock();
        q.closed = true;
        if drop_rest {
            q.batches.clear();
        }
        drop(q);
        self.more.notify_all();
    }
}

/// Closes the queue, dropping what waits, when the walk's thread leaves the scope in any way
/// (also by a panic: the helpers must not wait for batches then, or the scope, which joins
/// them before the panic goes on, would never end).
struct CloseOnDrop<'s>(&'s Shared);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close(true);
    }
}

/// A batch a helper decoded (its nids and their records, in the same order), or `None`: the
/// helper gave up on it (an inode failed to decode, or is not what the walk may defer).
type Done = Option<(Vec<u64>, Vec<Ino>)>;

/// The walk's side: where it defers inodes, and where the decoded ones come back.
pub(super) struct Pipe<'s> {
    shared: &'s Shared,
    filling: Vec<u64>,
    done: Receiver<Done>,
    /// Batches handed out and not yet put in place.
    out: usize,
    /// Inodes deferred, and put in place: equal at the end, or the vetting gives up (no
    /// pending place may reach the later phases).
    deferred: usize,
    settled: usize,
    /// Most batches that may wait for a helper before the walk decodes the oldest itself.
    most_waiting: usize,
}

impl Pipe<'_> {
    /// Inode `nid`, which has its pending place in the table, is to be decoded later.
    /// True when that filled a batch, handed out now: the walk then collects what came back
    /// ([`Pipe::collect`]), so that no more than a batch or two of decoded inodes wait at once
    /// while it reads a large directory.
    pub(super) fn defer(&mut self, nid: u64) -> bool {
        self.filling.push(nid);
        self.deferred += 1;
        if self.filling.len() < BATCH {
            return false;
        }
        let b = std::mem::replace(&mut self.filling, Vec::with_capacity(BATCH));
        self.shared.push(b);
        self.out += 1;
        true
    }

    /// When the helpers fall far behind (more than 16 batches per thread wait), the walk decodes
    /// the oldest batch itself: the queue stays bounded, and an inode that fails is met at most
    /// that many batches after the one-thread vetting would meet it. (Not fewer: what waits when
    /// the walk ends is decoded while the walk's thread finds the primary names.) False: give up.
    pub(super) fn relieve(&mut self, r: &mut Reader<'_>) -> bool {
        let Some(batch) = self.shared.take_if_over(self.most_waiting) else {
            return true;
        };
        let inos = decode_batch(r, &batch);
        self.settle(inos.map(|i| (batch, i)), &mut r.inodes)
    }

    /// Put the batches the helpers have decoded so far in place. False: give up.
    pub(super) fn collect(&mut self, inodes: &mut InodeTable) -> bool {
        while let Ok(done) = self.done.try_recv() {
            if !self.settle(done, inodes) {
                return false;
            }
        }
        true
    }

    fn settle(&mut self, done: Done, inodes: &mut InodeTable) -> bool {
        let Some((nids, inos)) = done else {
            return false;
        };
        self.out = self.out.saturating_sub(1);
        self.settled += nids.len();
        nids.len() == inos.len() && nids.into_iter().zip(inos).all(|(nid, ino)| inodes.settle(nid, ino))
    }

    /// After the walk: decode the batches no helper took, and wait for the others. False: give
    /// up.
    fn finish(&mut self, r: &mut Reader<'_>) -> bool {
        if !self.filling.is_empty() {
            self.shared.push(std::mem::take(&mut self.filling));
            self.out += 1;
        }
        self.shared.close(false);
        while let Some(batch) = self.shared.next() {
            // (A helper that failed meanwhile is seen before more work is done.)
            if !self.collect(&mut r.inodes) {
                return false;
            }
            let inos = decode_batch(r, &batch);
            if !self.settle(inos.map(|i| (batch, i)), &mut r.inodes) {
                return false;
            }
        }
        while self.out > 0 {
            // (Err: every helper is gone, one of them without sending its batch back.)
            let Ok(done) = self.done.recv() else {
                return false;
            };
            if !self.settle(done, &mut r.inodes) {
                return false;
            }
        }
        self.settled == self.deferred
    }
}

/// Decode the inodes of a batch: `None` if one fails, or is a directory or keeps an entry
/// (a root whiteout stub's), which only the walk may decode.
fn decode_batch(r: &mut Reader<'_>, batch: &[u64]) -> Option<Vec<Ino>> {
    let mut inos = Vec::with_capacity(batch.len());
    for &nid in batch {
        match r.decode(nid) {
            Ok((ino, None, None)) => inos.push(ino),
            _ => return None,
        }
    }
    Some(inos)
}

/// A helper thread: decodes batches until there are no more, or until one fails.
fn helper<'a>(mut r: Reader<'a>, shared: &Shared, done: Sender<Done>) -> Reader<'a> {
    while let Some(batch) = shared.next() {
        match decode_batch(&mut r, &batch) {
            Some(inos) => {
                if done.send(Some((batch, inos))).is_err() {
                    break;
                }
            }
            None => {
                // The others stop at their next batch; the walk sees `None`.
                shared.close(true);
                let _ = done.send(None);
                break;
            }
        }
    }
    r
}

impl<'a> Reader<'a> {
    /// A reader for a helper thread: the same image and limits, its own claims, budget and
    /// buffers (merged with the walk's in [`Reader::vet_on_threads`]).
    fn for_helper(&self) -> Reader<'a> {
        Reader {
            d: self.d,
            limits: self.limits,
            keep: false,
            meta_off: self.meta_off,
            xattr_off: self.xattr_off,
            build_time: self.build_time,
            build_nsec: self.build_nsec,
            version: self.version,
            flags: self.flags,
            root_nid: self.root_nid,
            xattr_filter: self.xattr_filter,
            slots: self.slots.empty_like(),
            blocks: self.blocks.empty_like(),
            tables: None,
            inodes: InodeTable::new(0, 0, None),
            dirents: 0,
            decoded: 0,
            raw_xattrs: Vec::new(),
            kept_xattrs: Vec::new(),
            dirent_buf: Vec::new(),
            shared_cache: [None; super::xattr::SHARED_CACHE],
            release: self.release,
            read_since_release: std::cell::Cell::new(0),
            shared_reads: self.shared_reads.clone(),
        }
    }

    /// The vetting on `threads` threads (this one and `threads - 1` helpers; fewer if they
    /// cannot be started). `None`: the image failed a check, or the threads gave up; the
    /// caller then runs the one-thread vetting (see the module's text).
    pub(super) fn vet_on_threads(mut self, threads: usize) -> Option<Vetted> {
        debug_assert!(!self.keep);
        // The image's pages are released after every `every` bytes all threads read (counted
        // together: `Reader::bytes`), so that no more of the image is resident at once than on
        // one thread, and no more often: each release unmaps the pages of every thread.
        let threads = threads.clamp(1, MAX_THREADS);
        if self.release.is_some() {
            self.shared_reads = Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)));
        }
        let shared =
            Shared { queue: Mutex::new(Queue { batches: VecDeque::new(), closed: false }), more: Condvar::new() };
        let (send, done) = mpsc::channel();
        let helpers: Vec<Reader<'a>> = (1..threads).map(|_| self.for_helper()).collect();
        let (walk, primary) = std::thread::scope(|s| {
            let mut started = Vec::new();
            for h in helpers {
                let (shared, send) = (&shared, send.clone());
                match std::thread::Builder::new().spawn_scoped(s, move || helper(h, shared, send)) {
                    Ok(t) => started.push(t),
                    Err(_) => break,
                }
            }
            drop(send);
            let close = CloseOnDrop(&shared);
            let mut pipe = Pipe {
                shared: &shared,
                filling: Vec::with_capacity(BATCH),
                done,
                out: 0,
                deferred: 0,
                settled: 0,
                most_waiting: 16 * threads,
            };
            // The primary names need the walk and the places only, not the deferred inodes:
            // found while the helpers decode the last batches.
            let walked = self.walk_from_root(Some(&mut pipe)).ok().map(|w| {
                let primary = self.primary_names(&w);
                (w, primary)
            });
            let walked = walked.filter(|_| pipe.finish(&mut self));
            drop(close);
            let mut all = true;
            for t in started {
                match t.join() {
                    Ok(h) => all &= self.merge(&h),
                    Err(_) => all = false,
                }
            }
            walked.filter(|_| all)
        })?;
        let (walk, primary) = self.check_walk_with(walk, primary).ok()?;
        let (entries, first_device) = self.count_tree(&walk, &primary).ok()?;
        Some(Vetted { info: self.info(), entries, first_device })
    }

    /// Take a helper's claims and budget: false if a claim is also this reader's, or the
    /// budget's total is over the limit.
    fn merge(&mut self, h: &Reader<'_>) -> bool {
        self.slots.merge(&h.slots) && self.blocks.merge(&h.blocks) && self.budget(h.decoded).is_ok()
    }
}

/// The walk gave up because the vetting on threads did (see [`Pipe::collect`]): the one-thread
/// vetting then runs and finds the error. Never reported.
pub(super) fn gave_up() -> ReadError {
    ReadError::Limit("the vetting on threads gave up".into())
}
