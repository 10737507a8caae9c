//! The worker pool: N sessions pull read requests from one queue and write
//! each range straight to its place in DEST.
//!
//! The queue is the plan's task list and an atomic cursor: no locks on the
//! hot path, and tasks are taken in plan order (biggest files first), so the
//! chunks of a file are handed out in file order. Each worker owns one
//! session with a prepared read statement and a writer thread; bytes go from
//! the protocol buffer to `pwrite` without another copy. Where they go is a
//! [`Sink`]: DEST itself, or the tar output (`output.rs`), which needs the
//! tasks in order and so gets to hold a fetch back until its turn.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use anyhow::Result;
use log::debug;

use crate::abort::Abort;
use crate::delta::Delta;
use crate::integrity::{Integrity, Suspect};
use crate::pagecheck::BLCKSZ;
use crate::plan::{FileEntry, Plan, Task};
use crate::progress::Progress;
use crate::reader::{Fetched, Reader};

/// What the copy did, for the summary and for the steps after it.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    pub bytes: u64,
    /// Files that vanished on the server while we copied them (dropped
    /// tables), except those the sink keeps zero-filled
    /// ([`Sink::zero_fills_vanished_tail`]): removed from DEST or left out
    /// of the tar; WAL replay agrees they are gone.
    pub vanished: BTreeSet<usize>,
}

/// The bytes of one task that a sink keeps until the task is complete,
/// one entry per piece (`None`: nothing kept, or the file was gone).
pub type TaskBuffers = Vec<Option<Vec<u8>>>;

/// Where the workers put what they read.
pub trait Sink: Sync {
    /// Called on the fetch thread before task `index` is read.
    fn wait_turn(&self, _index: usize, _abort: &Abort) {}

    /// Piece `i` of `task`: the bytes the server returned (fewer if the
    /// file shrank), `None` if the file was gone.
    fn piece(
        &self,
        held: &mut TaskBuffers,
        task: &Task,
        i: usize,
        file: &FileEntry,
        data: Option<&[u8]>,
    ) -> Result<()>;

    /// After every piece of task `index`.
    fn end_task(&self, _index: usize, _task: &Task, _held: TaskBuffers) -> Result<()> {
        Ok(())
    }

    /// Whether a file that vanishes after its first piece stays in the copy
    /// at its listed size with zeros for the missing bytes (a stream cannot
    /// take its start back); otherwise it is left out.
    fn zero_fills_vanished_tail(&self) -> bool {
        false
    }
}

/// What the worker threads share: the job and the queue's state.
struct Shared<'a> {
    job: &'a Job<'a>,
    next: AtomicUsize,
    bytes: AtomicU64,
    vanished: Mutex<BTreeSet<usize>>,
    first_error: Mutex<Option<anyhow::Error>>,
    abort: &'a Abort,
}

/// How often a request whose session was lost is retried on a fresh one.
const RETRIES: u32 = 3;

/// Opens a fresh reading session to replace one that was lost.
pub type Reconnect<'a> = &'a (dyn Fn() -> Result<Reader> + Sync);

/// What to copy, where to, and who watches the bytes go by.
pub struct Job<'a> {
    pub plan: &'a Plan,
    pub sink: &'a dyn Sink,
    /// Manifest checksums and page verification.
    pub integrity: &'a Integrity,
    pub progress: &'a Progress,
    /// --delta: chunks DEST already holds are not fetched.
    pub delta: Option<&'a Delta>,
}

/// Copy every task of the plan with one thread per reader; returns the
/// readers for reuse. On failure the first error is returned and the abort
/// flag is set so the other threads stop after their current request.
pub fn copy_files(
    readers: Vec<Reader>,
    job: &Job,
    reconnect: Reconnect,
    abort: &Abort,
) -> Result<(CopyOutcome, Vec<Reader>)> {
    let shared = Shared {
        job,
        next: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
        vanished: Mutex::default(),
        first_error: Mutex::default(),
        abort,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(readers.len())
        .thread_name(|i| format!("worker-{}", i + 1))
        .build()?;
    let returned = Mutex::new(Vec::new());
    pool.scope(|s| {
        for mut reader in readers {
            let (shared, returned) = (&shared, &returned);
            s.spawn(move |_| {
                if let Err(e) = worker(&mut reader, shared, reconnect) {
                    shared.abort.fail();
                    shared.first_error.lock().unwrap().get_or_insert(e);
                }
                returned.lock().unwrap().push(reader);
            });
        }
    });
    if let Some(e) = shared.first_error.into_inner().unwrap() {
        return Err(e);
    }
    if abort.is_set() {
        anyhow::bail!("copy interrupted");
    }
    let outcome = CopyOutcome {
        bytes: shared.bytes.into_inner(),
        vanished: shared.vanished.into_inner().unwrap(),
    };
    Ok((outcome, returned.into_inner().unwrap()))
}

/// One worker: this thread fetches, a second one writes, so the server
/// reads and sends the next request while the last one is being written
/// (which is what lets even -j 1 keep both sides busy). The rendezvous
/// channel bounds a worker to two requests in memory, each costing its size
/// once because the patched codec (vendor/README.md) sizes a row's buffer
/// exactly: peak RSS is about 2 x chunk size x jobs plus ~20 MB.
fn worker(reader: &mut Reader, shared: &Shared, reconnect: Reconnect) -> Result<()> {
    let suspects = std::thread::scope(|s| -> Result<Vec<Suspect>> {
        let (tx, rx) = mpsc::sync_channel::<(usize, Cow<Task>, Fetched)>(0);
        let writer = s.spawn(move || -> Result<Vec<Suspect>> {
            let mut inflated = Vec::new();
            let mut suspects = Vec::new();
            for (index, task, fetched) in rx {
                write_task(shared, index, &task, &fetched, &mut inflated, &mut suspects)?;
            }
            Ok(suspects)
        });
        let fetched = fetch_tasks(reader, shared, reconnect, &tx);
        drop(tx);
        let written = writer.join().expect("the writer thread panicked");
        // A failed write ends the fetching too: its error comes first.
        let suspects = written?;
        fetched?;
        Ok(suspects)
    })?;
    recheck(reader, shared, suspects)
}

fn fetch_tasks<'p>(
    reader: &mut Reader,
    shared: &Shared<'p>,
    reconnect: Reconnect,
    tx: &mpsc::SyncSender<(usize, Cow<'p, Task>, Fetched)>,
) -> Result<()> {
    let files = &shared.job.plan.files;
    loop {
        if shared.abort.is_set() {
            return Ok(());
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(task) = shared.job.plan.tasks.get(i) else {
            return Ok(());
        };
        shared.job.sink.wait_turn(i, shared.abort);
        if shared.abort.is_set() {
            return Ok(());
        }
        for p in &task.pieces {
            shared
                .job
                .integrity
                .wait_turn(p.file, p.offset, shared.abort);
        }
        let task = match shared.job.delta {
            Some(d) => d.to_fetch(
                reader,
                task,
                files,
                shared.job.integrity,
                reconnect,
                shared.abort,
            )?,
            None => Cow::Borrowed(task),
        };
        if task.pieces.is_empty() {
            continue;
        }
        let ranges: Vec<_> = task
            .pieces
            .iter()
            .map(|p| (files[p.file].path.as_str(), p.offset, p.len))
            .collect();
        // A request is idempotent, and nothing of a failed one was written.
        let mut attempt = 0;
        let fetched = loop {
            match reader.fetch(&ranges) {
                Ok(f) => break f,
                Err(e) => replace_lost_session(e, reader, &mut attempt, reconnect, shared.abort)?,
            }
        };
        if tx.send((i, task, fetched)).is_err() {
            return Ok(()); // the writer stopped; it reports why
        }
    }
}

/// Decide whether a failed request is retried: only when its session was
/// lost (the server terminated the backend, a network blip), at most
/// [`RETRIES`] times, with backoff. Then `reader` is a fresh session;
/// otherwise the error is returned.
pub fn replace_lost_session(
    error: anyhow::Error,
    reader: &mut Reader,
    attempt: &mut u32,
    reconnect: Reconnect,
    abort: &Abort,
) -> Result<()> {
    if !reader.client().is_closed() || *attempt == RETRIES || abort.is_set() {
        return Err(error);
    }
    *attempt += 1;
    let backoff = std::time::Duration::from_millis(500 << *attempt);
    log::warn!(
        "{error:#}; retrying on a new session in {:.1} s ({attempt}/{RETRIES})",
        backoff.as_secs_f64()
    );
    if abort.sleep(backoff) {
        return Err(error);
    }
    *reader = reconnect()?;
    Ok(())
}

/// Hand the rows of one request to the sink and account for them
/// (checksums, page verification); pages that fail verification are
/// collected for one re-read.
fn write_task(
    shared: &Shared,
    index: usize,
    task: &Task,
    fetched: &Fetched,
    inflated: &mut Vec<u8>,
    suspects: &mut Vec<Suspect>,
) -> Result<()> {
    let files = &shared.job.plan.files;
    let mut held = TaskBuffers::new();
    fetched.deliver(inflated, |i, data| {
        let piece = task.pieces[i];
        let file = &files[piece.file];
        shared.job.sink.piece(&mut held, task, i, file, data)?;
        match data {
            // The sink keeps the file at its size: the checksum covers the
            // zeros (unless the file is left out entirely anyway).
            None if piece.offset > 0 && shared.job.sink.zero_fills_vanished_tail() => {
                debug!(
                    "{} vanished during the backup; its tail is zeros",
                    file.path
                );
                if !shared.vanished.lock().unwrap().contains(&piece.file) {
                    shared
                        .job
                        .integrity
                        .observe(piece.file, file, piece.offset, piece.len, &[])?;
                }
            }
            None => {
                debug!("{} vanished during the backup", file.path);
                shared.vanished.lock().unwrap().insert(piece.file);
                shared.job.integrity.mark_vanished(piece.file);
            }
            Some(bytes) => {
                shared
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                shared.job.progress.add_data(bytes.len() as u64);
                suspects.extend(shared.job.integrity.observe(
                    piece.file,
                    file,
                    piece.offset,
                    piece.len,
                    bytes,
                )?);
            }
        }
        Ok(())
    })?;
    shared.job.sink.end_task(index, task, held)
}

/// A page may fail its checksum because a write tore it while we read it;
/// read each failing page once more before calling it corrupt.
fn recheck(reader: &mut Reader, shared: &Shared, suspects: Vec<Suspect>) -> Result<()> {
    for suspect in suspects {
        let file = &shared.job.plan.files[suspect.file];
        reader.read(
            &[(file.path.as_str(), suspect.offset, BLCKSZ as u64)],
            |_, page| {
                shared.job.integrity.recheck(file, &suspect, page);
                Ok(())
            },
        )?;
    }
    Ok(())
}
