//! Many files at once (a directory walk): the walking thread hands every regular file it finds to
//! worker threads, one per core, that open, hash and (with a store) store it; the results come
//! back keyed by the walker's id. The walk itself stays on the calling thread, so it can keep
//! its tree single-threaded.
//!
//! Each file is opened without following symlinks or blocking (a FIFO swapped in is refused,
//! not waited on), and must still be the regular file the walker saw (same device, inode and
//! size); its bytes are read once, and the digest is of exactly the bytes read (and stored).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use thiserror::Error;

use super::hash::{Digest, VerityHasher};
use super::objects::{ObjectStore, StoreError, Stored, CHUNK};

/// One regular file to import, as the walker saw it.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// The walker's handle for the result (a tree node id).
    pub id: u32,
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
}

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{}: {op}: {source}", path.display())]
    Io { path: PathBuf, op: &'static str, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Changed { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Store { path: PathBuf, source: StoreError },
    /// The walker was told to stop because a worker failed (that error is the one returned).
    #[error("import stopped after an earlier error")]
    Cancelled,
}

/// The walker's side: [`Submitter::submit`] queues a file (blocking while the queue is full).
pub struct Submitter<'p> {
    tx: SyncSender<FileJob>,
    failed: &'p AtomicBool,
}

impl Submitter<'_> {
    /// Queues `job`; `Err(Cancelled)` once a worker has failed (the walk should stop).
    pub fn submit(&self, job: FileJob) -> Result<(), ImportError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(ImportError::Cancelled);
        }
        self.tx.send(job).map_err(|_| ImportError::Cancelled)
    }
}

/// Jobs waiting in the queue per worker (the walker blocks beyond that).
const QUEUE_PER_WORKER: usize = 256;

/// Runs `walk` on this thread while `threads` workers import what it submits into `store`
/// (or, without a store, only compute each file's fs-verity digest). Returns the walk's result
/// and, per submitted id, the object ([`Stored::verity`] is always known). The first error of a
/// worker wins over the walker's.
pub fn with_workers<R, E: From<ImportError>>(
    store: Option<&ObjectStore>,
    threads: usize,
    walk: impl FnOnce(&Submitter<'_>) -> Result<R, E>,
) -> Result<(R, Vec<(u32, Stored)>), E> {
    let threads = threads.max(1);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<ImportError>> = Mutex::new(None);
    let (tx, rx) = mpsc::sync_channel::<FileJob>(QUEUE_PER_WORKER * threads);
    let rx = Mutex::new(rx);
    let (walked, results) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads).map(|_| s.spawn(|| worker(store, &rx, &failed, &first_error))).collect();
        let sub = Submitter { tx, failed: &failed };
        let walked = walk(&sub);
        if walked.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        drop(sub); // closes the queue: workers finish what is queued and stop
        let mut results = Vec::new();
        for w in workers {
            match w.join() {
                Ok(r) => results.extend(r),
                Err(_) => {
                    let mut e = first_error.lock().unwrap_or_else(|e| e.into_inner());
                    e.get_or_insert(ImportError::Io {
                        path: PathBuf::new(),
                        op: "import worker",
                        source: io::Error::other("panicked"),
                    });
                }
            }
        }
        (walked, results)
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(E::from(e));
    }
    Ok((walked?, results))
}

fn worker(
    store: Option<&ObjectStore>,
    rx: &Mutex<Receiver<FileJob>>,
    failed: &AtomicBool,
    first_error: &Mutex<Option<ImportError>>,
) -> Vec<(u32, Stored)> {
    let mut out = Vec::new();
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return out };
        if failed.load(Ordering::Relaxed) {
            continue; // drain the queue so the walker never blocks on it
        }
        match import_one(store, &job) {
            Ok(s) => out.push((job.id, s)),
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
            }
        }
    }
}

/// Opens the file and checks it is still what the walker saw.
fn open_checked(job: &FileJob) -> Result<File, ImportError> {
    let io = |op| {
        let path = job.path.clone();
        move |source| ImportError::Io { path, op, source }
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&job.path)
        .map_err(io("open"))?;
    let md = f.metadata().map_err(io("fstat"))?;
    if !md.is_file() || md.dev() != job.dev || md.ino() != job.ino {
        return Err(ImportError::Changed { path: job.path.clone(), reason: "replaced while being read".into() });
    }
    if md.len() != job.size {
        return Err(ImportError::Changed {
            path: job.path.clone(),
            reason: format!("size changed from {} to {} bytes while being read", job.size, md.len()),
        });
    }
    Ok(f)
}

fn import_one(store: Option<&ObjectStore>, job: &FileJob) -> Result<Stored, ImportError> {
    let f = open_checked(job)?;
    match store {
        Some(s) => {
            s.import_file(&f, job.size, None).map_err(|e| ImportError::Store { path: job.path.clone(), source: e })
        }
        None => {
            let d =
                verity_digest(&f, job.size).map_err(|e| ImportError::Store { path: job.path.clone(), source: e })?;
            Ok(Stored { digest: d, verity: Some(d), size: job.size, new: false })
        }
    }
}

/// The fs-verity digest of exactly `size` bytes of `f` (longer or shorter is an error).
fn verity_digest(f: &File, size: u64) -> Result<Digest, StoreError> {
    use std::os::unix::fs::FileExt;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.resize(CHUNK, 0);
        let mut h = VerityHasher::new();
        let mut off = 0u64;
        loop {
            let n = match f.read_at(buf, off) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Read(e)),
            };
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
            if off > size {
                break;
            }
        }
        if off != size {
            return Err(StoreError::SourceChanged(format!("expected {size} bytes, read {off}")));
        }
        Ok(h.finish())
    })
}
