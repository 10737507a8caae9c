//! The worker pool: N sessions pull read requests from one queue and write
//! each range straight to its place in DEST.
//!
//! The queue ([`queue`]) hands out the plan's tasks in plan order (biggest
//! files first), so the chunks of a file go out in file order, except that
//! where DEST is written directly a worker passes over a file another worker
//! is writing. Each worker is one thread
//! with one session and its prepared read statement; bytes go from the
//! protocol buffer to `pwrite` without another copy. Where they go is a
//! [`Sink`]: DEST itself, or the tar output, which needs the tasks in order
//! and so gets to hold a fetch back until its turn. When the server runs on
//! this host, workers beyond its CPUs stand by while reads are quick
//! ([`active`]).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use log::{debug, info};

use crate::abort::Abort;
use crate::delta::Delta;
use crate::integrity::{Integrity, Suspect};
use crate::output::{Scratch, Sink};
use crate::pg::BLCKSZ;
use crate::plan::{Piece, Plan, Task};
use crate::progress::Progress;
use crate::session::reader::Reader;
use crate::session::retry::{Reconnect, replace_lost_session};

mod active;
mod queue;

use active::ActiveWorkers;
use queue::Queue;

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

/// What the worker threads share: the job and the queue's state.
struct Shared<'a> {
    job: &'a Job<'a>,
    queue: Queue<'a>,
    active: ActiveWorkers,
    bytes: AtomicU64,
    vanished: Mutex<BTreeSet<usize>>,
    first_error: Mutex<Option<anyhow::Error>>,
    abort: &'a Abort,
}

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
        queue: Queue::new(
            &job.plan.tasks,
            job.plan.files.len(),
            job.sink.takes_tasks_in_any_order(),
        ),
        active: active_workers(&readers, job.plan),
        bytes: AtomicU64::new(0),
        vanished: Mutex::default(),
        first_error: Mutex::default(),
        abort,
    };
    let returned = std::thread::scope(|s| -> Result<Vec<Reader>> {
        let mut threads = Vec::with_capacity(readers.len());
        for (i, mut reader) in readers.into_iter().enumerate() {
            let shared = &shared;
            let thread = std::thread::Builder::new()
                .name(format!("worker-{}", i + 1))
                .spawn_scoped(s, move || {
                    let _panic_stops_all = AbortOnPanic(shared.abort);
                    if let Err(e) = worker(i, &mut reader, shared, reconnect) {
                        shared.abort.fail();
                        shared.first_error.lock().unwrap().get_or_insert(e);
                    }
                    reader
                });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    // The workers already started stop after their request.
                    shared.abort.fail();
                    return Err(e.into());
                }
            }
        }
        Ok(threads
            .into_iter()
            .map(|t| t.join().expect("a copy worker panicked"))
            .collect())
    })?;
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
    Ok((outcome, returned))
}

/// Sets the abort flag when its worker panics: the other workers then stop
/// instead of waiting for tasks that will never be done.
struct AbortOnPanic<'a>(&'a Abort);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail();
        }
    }
}

/// Which workers read: all of them, unless the server shares this host's
/// CPUs (see [`active`]).
fn active_workers(readers: &[Reader], plan: &Plan) -> ActiveWorkers {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let local = !readers.is_empty() && readers.iter().all(Reader::shares_host);
    let limit = if local { cpus } else { readers.len() };
    if limit < readers.len() {
        info!(
            "the server runs on this host ({cpus} CPU{}): {limit} of the {} sessions read \
             while reads are quick, more if they wait on disks",
            if cpus == 1 { "" } else { "s" },
            readers.len()
        );
    }
    let biggest_task = plan.tasks.iter().map(Task::bytes).max().unwrap_or(0);
    ActiveWorkers::new(readers.len(), limit, biggest_task)
}

/// One worker: take tasks from the queue until it is empty, read each and
/// hand its rows to the sink as they arrive. The server keeps sending while
/// a row is written (the socket buffers what we have not read yet), so one
/// thread keeps both sides busy, and a worker holds one row, not a task.
fn worker(index: usize, reader: &mut Reader, shared: &Shared, reconnect: Reconnect) -> Result<()> {
    let files = &shared.job.plan.files;
    let mut suspects = Vec::new();
    let mut scratch = Scratch::default();
    loop {
        if shared.abort.is_set() {
            break;
        }
        if !shared.active.wait_until_active(index, shared.abort) {
            break;
        }
        let Some(i) = shared.queue.take() else {
            shared.active.all_taken();
            break;
        };
        let task = &shared.job.plan.tasks[i];
        shared.job.sink.wait_turn(i, shared.abort);
        if shared.abort.is_set() {
            break;
        }
        // A file's first piece in the task decides whether its checksum
        // window has room.
        for p in task.file_starts() {
            shared
                .job
                .integrity
                .wait_turn(p.file, p.offset, shared.abort);
        }
        // How long the reading takes, not the waits for the turns above.
        let started = Instant::now();
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
        if !task.pieces.is_empty() {
            copy_task(
                reader,
                shared,
                reconnect,
                i,
                &task,
                &mut scratch,
                &mut suspects,
            )?;
        }
        shared.queue.done(i);
        shared.active.task_took(started.elapsed());
    }
    recheck(reader, shared, suspects)
}

/// Read one task and hand each piece to the sink as it arrives. A request
/// is idempotent: when its session is lost, the pieces not yet handed over
/// are asked for again on a new session.
fn copy_task(
    reader: &mut Reader,
    shared: &Shared,
    reconnect: Reconnect,
    index: usize,
    task: &Task,
    scratch: &mut Scratch,
    suspects: &mut Vec<Suspect>,
) -> Result<()> {
    let plan = shared.job.plan;
    let mut pending: Vec<usize> = (0..task.pieces.len()).collect();
    let mut attempt = 0;
    while !pending.is_empty() {
        // The header of an INCREMENTAL. file is written, not read.
        while let Some(header) = pending
            .first()
            .and_then(|&i| made_here(plan, task.pieces[i]))
        {
            write_piece(shared, scratch, task, pending[0], Some(header), suspects)?;
            pending.remove(0);
        }
        let ranges: Vec<_> = pending
            .iter()
            .map_while(|&i| {
                let p = task.pieces[i];
                match plan.assembled.get(&p.file) {
                    None => Some((plan.files[p.file].path.as_str(), p.offset, p.len)),
                    Some(a) => a
                        .source_offset(p.offset)
                        .map(|at| (a.source.as_str(), at, p.len)),
                }
            })
            .collect();
        if ranges.is_empty() {
            anyhow::ensure!(pending.is_empty(), "a piece of the plan has no source");
            break;
        }
        // Rows come in request order (WITH ORDINALITY over the arrays), so
        // what was handed over when a session is lost is a prefix.
        let mut done = 0;
        let read = reader.read(&ranges, |r, data| {
            anyhow::ensure!(
                r == done,
                "the server returned row {r} where {done} was due"
            );
            write_piece(shared, scratch, task, pending[r], data, suspects)?;
            done += 1;
            Ok(())
        });
        pending.drain(..done);
        if let Err(e) = read {
            replace_lost_session(e, reader, &mut attempt, reconnect, shared.abort)?;
        }
    }
    shared.job.sink.end_task(index, task, scratch)
}

/// The bytes of a piece that is written as it is, not read: the header of
/// an `INCREMENTAL.` file.
fn made_here(plan: &Plan, piece: Piece) -> Option<&[u8]> {
    let a = plan.assembled.get(&piece.file)?;
    let (start, end) = (piece.offset as usize, (piece.offset + piece.len) as usize);
    a.header
        .get(start..end)
        .filter(|_| a.source_offset(piece.offset).is_none())
}

/// Hand piece `i` of `task` to the sink and account for it (checksums,
/// page verification); pages that fail verification are collected for one
/// re-read.
fn write_piece(
    shared: &Shared,
    scratch: &mut Scratch,
    task: &Task,
    i: usize,
    data: Option<&[u8]>,
    suspects: &mut Vec<Suspect>,
) -> Result<()> {
    let piece = task.pieces[i];
    let file = &shared.job.plan.files[piece.file];
    shared.job.sink.piece(scratch, task, i, file, data)?;
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
            if made_here(shared.job.plan, piece).is_none() {
                shared
                    .bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            shared.job.progress.add_data(bytes.len() as u64);
            // The blocks of an INCREMENTAL. file are checked as blocks of
            // their relation file; its header is no page.
            let source = match shared.job.plan.assembled.get(&piece.file) {
                None => Some((file.path.as_str(), piece.offset)),
                Some(a) => a
                    .source_offset(piece.offset)
                    .map(|at| (a.source.as_str(), at)),
            };
            suspects.extend(shared.job.integrity.observe_from(
                piece.file,
                piece.offset,
                piece.len,
                bytes,
                source.unwrap_or(("", 0)),
            )?);
        }
    }
    Ok(())
}

/// A page may fail its checksum because a write tore it while we read it;
/// read each failing page once more before calling it corrupt.
fn recheck(reader: &mut Reader, shared: &Shared, suspects: Vec<Suspect>) -> Result<()> {
    for suspect in suspects {
        let plan = shared.job.plan;
        let path = match plan.assembled.get(&suspect.file) {
            Some(a) => a.source.as_str(),
            None => plan.files[suspect.file].path.as_str(),
        };
        reader.read(&[(path, suspect.offset, BLCKSZ as u64)], |_, page| {
            shared.job.integrity.recheck(path, &suspect, page);
            Ok(())
        })?;
    }
    Ok(())
}
