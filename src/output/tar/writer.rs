//! A tar archive written from many threads in task order ([`TarWriter`]),
//! through a reorder window that bounds the memory it holds.
//!
//! The workers fetch chunks out of order from several threads, but a tar
//! stream needs each file's bytes contiguously and in order. Because the
//! plan fixes every file's size before the first byte is read, a file's tar
//! header can be written before its data is complete, and the archive can be
//! streamed in *task order*: [`TarWriter::complete`] parks a finished
//! task in a reorder buffer until every task before it has been written, and
//! whichever worker completes the task that unblocks the head writes it (and
//! every buffered task that follows) - no extra thread. The state lock is
//! never held while bytes are written or compressed, so the other workers
//! keep handing in tasks and fetching new ones meanwhile.
//!
//! Memory stays bounded because a worker calls [`TarWriter::wait_turn`]
//! before it reads task `i`: it waits until `i < head + window`, where
//! `head` is the first task not yet written. The data held by the writer is
//! therefore only ever that of tasks `head..head + window`, at most
//! `window x chunk size` bytes. The price of the reorder buffer is one copy:
//! the copy hands over each piece as an owned `Vec<u8>` (a `to_vec()` of the
//! protocol bytes) because the reader reuses its buffers.
//!
//! Requirements on the plan (true of `plan::chunk`): the pieces of one file
//! follow each other in task order with nothing else in between, in offset
//! order, starting at offset 0, and add up to the file's listed size.
//!
//! Files that shrink, grow or vanish while they are copied:
//! - a piece that comes back short (the file shrank) is padded with zeros,
//!   one that comes back long (it grew) is cut: the entry always has the
//!   size its header announced, the size listed at the start;
//! - a file whose *first* piece (offset 0) comes back `None` (it was gone
//!   when we first read it) is left out of the archive entirely, even if a
//!   later piece finds a file of that name again: no header, no bytes. These
//!   files are listed by [`TarWriter::vanished_files`]; leave them out of
//!   the manifest;
//! - a file that vanishes after its first piece was written (a later piece
//!   is `None`) cannot be taken back: its header is out, so the rest of its
//!   declared size is zeros. It stays in the archive (and must stay in the
//!   manifest, with the checksum of its bytes as written: data, then zeros)
//!   and is listed by [`TarWriter::zero_filled_files`]. WAL replay deals
//!   with it exactly as with a file that shrank.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use log::debug;
use tar::EntryType;

use super::compress::{self, Assembler, Segment, TarCompression};
use super::entries::{checked_path, end_of_archive, header, pad, write_piece, write_tar};
use super::task::{Body, Done, TaskParts, continued_pieces};
use crate::fsx;
#[cfg(test)]
use crate::plan::Task;
use crate::plan::{FileEntry, Piece};

/// Where the archive goes: a file is fsynced by `finish`, and what is
/// written to it goes on to the disk as it is written ([`fsx::Unflushed`]).
enum Out {
    File(File, fsx::Unflushed),
    Stream(Box<dyn Write + Send>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(f, unflushed) => {
                let n = f.write(buf)?;
                unflushed.appended(f, n as u64)?;
                Ok(n)
            }
            Out::Stream(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::File(f, _) => f.flush(),
            Out::Stream(w) => w.flush(),
        }
    }
}

/// Small writes (headers, padding) are collected; data goes straight through.
const OUT_BUFFER: usize = 256 << 10;

/// A file whose header is written and whose data is not complete yet.
struct OpenFile {
    file: usize,
    /// Offset in the file of the next byte the archive expects.
    next: u64,
}

/// Everything that writes: owned by one thread at a time.
struct Emitter {
    out: BufWriter<Out>,
    compression: TarCompression,
    /// Puts compressed segments together (unused without compression).
    assembler: Assembler,
    /// Bytes of tar stream written (before compression).
    written: u64,
    open: Option<OpenFile>,
    /// Files left out because their first piece found them gone.
    omitted: BTreeSet<usize>,
}

impl Emitter {
    /// Write the tar bytes that `f` writes: straight through when the
    /// archive is not compressed, else as one compressed segment.
    fn run(&mut self, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        if self.compression == TarCompression::None {
            let mut w = Counting {
                inner: &mut self.out,
                count: 0,
            };
            let result = f(&mut w);
            self.written += w.count;
            return result;
        }
        let segment = compress::compress(self.compression, |w| f(w))?;
        self.put(&segment)
    }

    /// A segment compressed elsewhere (by a worker).
    fn put(&mut self, segment: &Segment) -> Result<()> {
        self.assembler.put(&mut self.out, segment)?;
        self.written += segment.raw_len;
        Ok(())
    }
}

/// Counts what goes through.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct State {
    /// The first task not written yet.
    head: usize,
    /// Completed tasks after `head`, and `head` itself until it is taken.
    pending: BTreeMap<usize, Done>,
    /// `None` while a thread is writing.
    emitter: Option<Emitter>,
    /// The first error that broke the archive: every later call fails.
    failed: Option<String>,
    /// Data bytes of tasks handed in and not yet written.
    buffered: u64,
    peak_buffered: u64,
}

#[derive(Default)]
struct Outcome {
    vanished: Vec<usize>,
    zero_filled: BTreeSet<usize>,
}

/// A tar archive being written from many threads. See the module comment.
pub struct TarWriter {
    state: Mutex<State>,
    compression: TarCompression,
    dir_mode: u32,
    file_mode: u32,
    /// Signalled whenever `head` moves or the emitter is put back.
    turn: Condvar,
    window: usize,
    outcome: Mutex<Outcome>,
    /// Set when a thread panicked while writing (the emitter is lost).
    broken: AtomicBool,
}

/// How often waiters look at the abort flag.
const POLL: Duration = Duration::from_millis(20);

impl TarWriter {
    /// An archive written to `out` (standard output, or any stream; use
    /// [`TarWriter::to_file`] for a file, which `finish` fsyncs), compressed
    /// as asked. `window`: how many tasks may be in flight or waiting from
    /// the first unwritten one on (at least 1); memory held is at most
    /// `window x chunk size`.
    pub fn new(
        out: Box<dyn Write + Send>,
        compression: TarCompression,
        window: usize,
    ) -> Result<TarWriter> {
        Self::with_out(Out::Stream(out), compression, window)
    }

    /// An archive written to a file, fsynced by `finish`.
    pub fn to_file(file: File, compression: TarCompression, window: usize) -> Result<TarWriter> {
        Self::with_out(
            Out::File(file, fsx::Unflushed::default()),
            compression,
            window,
        )
    }

    fn with_out(out: Out, compression: TarCompression, window: usize) -> Result<TarWriter> {
        let emitter = Emitter {
            out: BufWriter::with_capacity(OUT_BUFFER, out),
            compression,
            assembler: Assembler::new(compression),
            written: 0,
            open: None,
            omitted: BTreeSet::new(),
        };
        Ok(TarWriter {
            state: Mutex::new(State {
                head: 0,
                pending: BTreeMap::new(),
                emitter: Some(emitter),
                failed: None,
                buffered: 0,
                peak_buffered: 0,
            }),
            compression,
            dir_mode: 0o700,
            file_mode: 0o600,
            turn: Condvar::new(),
            window: window.max(1),
            outcome: Mutex::default(),
            broken: AtomicBool::new(false),
        })
    }

    /// Modes recorded for directories and files (0700/0600 unless the
    /// cluster allows group access: 0750/0640).
    pub fn with_modes(self, dir_mode: u32, file_mode: u32) -> TarWriter {
        TarWriter {
            dir_mode,
            file_mode,
            ..self
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, st: &State) -> Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            bail!("the tar output is incomplete: a thread panicked while writing it");
        }
        if let Some(why) = &st.failed {
            bail!("the tar output failed earlier: {why}");
        }
        Ok(())
    }

    /// Run `f` with the emitter, once no task is being written. Entries
    /// added this way must not land inside a file being streamed.
    fn with_emitter<T>(&self, what: &str, f: impl FnOnce(&mut Emitter) -> Result<T>) -> Result<T> {
        let mut st = self.lock();
        loop {
            self.check(&st)?;
            if st.emitter.is_some() {
                break;
            }
            st = self
                .turn
                .wait_timeout(st, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let emitter = st.emitter.as_mut().expect("checked above");
        if let Some(open) = &emitter.open {
            bail!(
                "cannot add {what} to the tar output while file #{} is half written",
                open.file
            );
        }
        let result = f(emitter);
        if let Err(e) = &result {
            st.failed = Some(format!("{e:#}"));
            self.turn.notify_all();
        }
        result
    }

    /// A directory entry (tar header only); write directories before the
    /// files in them, as tar extractors create missing parents with default
    /// modes. Its path need not be valid UTF-8 (a name the server listed
    /// as bytes).
    pub fn add_dir(&self, path: impl AsRef<[u8]>, mtime: i64) -> Result<()> {
        let path = [checked_path(path.as_ref())?, b"/"].concat();
        self.with_emitter(&String::from_utf8_lossy(&path), |e| {
            e.run(|w| {
                header(
                    w,
                    &path,
                    EntryType::Directory,
                    0,
                    self.dir_mode,
                    mtime,
                    None,
                )
            })
        })
    }

    /// A symbolic link (a tablespace link `pg_tblspc/<oid>`).
    pub fn add_symlink(&self, path: &str, target: &str, mtime: i64) -> Result<()> {
        let path = checked_path(path.as_bytes())?;
        ensure!(
            !target.is_empty() && !target.contains('\0'),
            "bad symbolic link target {target:?} for {}",
            String::from_utf8_lossy(path)
        );
        self.with_emitter(&String::from_utf8_lossy(path), |e| {
            e.run(|w| header(w, path, EntryType::Symlink, 0, 0o777, mtime, Some(target)))
        })
    }

    /// A whole file held in memory (backup_label, tablespace_map,
    /// backup_manifest, pg_control, a file whose name is not UTF-8), written
    /// at once.
    pub fn add_file(&self, path: impl AsRef<[u8]>, data: &[u8], mtime: i64) -> Result<()> {
        self.add_file_from(path, data.len() as u64, mtime, &mut &*data)
    }

    /// A whole file of `size` bytes read from `src` (a WAL segment in a
    /// temporary directory), streamed without holding it in memory. A
    /// source shorter than `size` is an error: the header is already out.
    pub fn add_file_from(
        &self,
        path: impl AsRef<[u8]>,
        size: u64,
        mtime: i64,
        src: &mut dyn Read,
    ) -> Result<()> {
        let path = checked_path(path.as_ref())?;
        let shown = String::from_utf8_lossy(path);
        self.with_emitter(&shown, |e| {
            e.run(|w| {
                header(
                    w,
                    path,
                    EntryType::Regular,
                    size,
                    self.file_mode,
                    mtime,
                    None,
                )?;
                let mut buf = vec![0u8; (1 << 20).min(size.max(1) as usize)];
                let mut left = size;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = src
                        .read(&mut buf[..want])
                        .with_context(|| format!("cannot read {shown} for the tar output"))?;
                    ensure!(
                        n > 0,
                        "{shown} ended after {} of its {size} bytes",
                        size - left
                    );
                    write_tar(w, &buf[..n])?;
                    left -= n as u64;
                }
                pad(w, size)
            })
        })
    }

    /// Block until task `index` may be started without exceeding the
    /// window (`index < head + window`), or return early when `abort()`
    /// says so or the archive has failed (the next call reports it). Call
    /// it before reading the task: that is what bounds memory. Deadlock
    /// free as long as tasks are started in index order (the head task
    /// never waits).
    pub fn wait_turn(&self, index: usize, abort: &dyn Fn() -> bool) {
        let mut st = self.lock();
        while index >= st.head.saturating_add(self.window)
            && st.failed.is_none()
            && !self.broken.load(Ordering::SeqCst)
            && !abort()
        {
            st = self
                .turn
                .wait_timeout(st, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// An empty share of a task for this archive, to fill on the worker.
    pub fn task(&self) -> TaskParts {
        TaskParts::new(self.compression, self.file_mode)
    }

    /// Task `index` of the plan, with the bytes of its pieces, in piece
    /// order (`None`: the file was gone): [`task`](Self::task) and
    /// [`complete`](Self::complete) in one call.
    #[cfg(test)]
    pub fn complete_task(
        &self,
        index: usize,
        task: &Task,
        files: &[FileEntry],
        data: Vec<Option<Vec<u8>>>,
    ) -> Result<()> {
        ensure!(
            data.len() == task.pieces.len(),
            "task {index} has {} pieces but {} results",
            task.pieces.len(),
            data.len()
        );
        let mut parts = self.task();
        for (piece, data) in task.pieces.iter().zip(&data) {
            parts.add(*piece, data.as_deref(), files)?;
        }
        self.complete(index, parts, files)
    }

    /// Hand in task `index` of the plan. Any thread, any order; the task is
    /// written when every task before it has been, by this thread if it is
    /// the one that unblocks the head. `files` is the plan's file list, the
    /// same in every call. An error means the archive is broken: every later
    /// call fails too.
    pub fn complete(&self, index: usize, parts: TaskParts, files: &[FileEntry]) -> Result<()> {
        let done = parts
            .finish()
            .inspect_err(|e| self.fail(format!("{e:#}")))?;
        let bytes = done.bytes;
        let mut st = self.lock();
        self.check(&st)?;
        ensure!(
            index >= st.head && !st.pending.contains_key(&index),
            "task {index} was handed to the tar output twice"
        );
        if index == st.head && st.emitter.is_none() {
            bail!("task {index} was handed to the tar output twice");
        }
        st.pending.insert(index, done);
        st.buffered += bytes;
        st.peak_buffered = st.peak_buffered.max(st.buffered);
        if index != st.head {
            return Ok(());
        }
        // This thread unblocks the head: it writes until the next gap.
        let mut emitter = st.emitter.take().expect("checked above");
        let guard = PanicGuard(self);
        let result = loop {
            let head = st.head;
            let Some(done) = st.pending.remove(&head) else {
                break Ok(());
            };
            drop(st);
            let written = self.emit_task(&mut emitter, head, &done, files);
            let freed = done.bytes;
            drop(done);
            st = self.lock();
            st.buffered -= freed;
            if let Err(e) = written {
                st.failed = Some(format!("{e:#}"));
                st.pending.clear();
                st.buffered = 0;
                break Err(e);
            }
            st.head += 1;
            self.turn.notify_all();
        };
        st.emitter = Some(emitter);
        std::mem::forget(guard);
        self.turn.notify_all();
        result
    }

    /// Mark the archive broken: every waiter and later call sees it.
    fn fail(&self, why: String) {
        let mut st = self.lock();
        st.failed.get_or_insert(why);
        self.turn.notify_all();
    }

    /// Write task `index`, whose turn it is: check that its pieces continue
    /// the archive where it stands, note the files found gone, and write
    /// its bytes.
    fn emit_task(
        &self,
        e: &mut Emitter,
        index: usize,
        done: &Done,
        files: &[FileEntry],
    ) -> Result<()> {
        let split = continued_pieces(&done.pieces);
        let mut continued_omitted = false;
        for (n, (piece, &present)) in done.pieces.iter().zip(&done.present).enumerate() {
            if e.omitted.contains(&piece.file) {
                continued_omitted |= n < split;
                continue;
            }
            self.advance(e, index, piece, present, files)?;
        }
        // A file left out stays out: skip the pieces that continue it.
        let first = if continued_omitted { split } else { 0 };
        match &done.body {
            Body::Raw(data) => e.run(|w| {
                let mut omitted = BTreeSet::new();
                for (piece, data) in done.pieces.iter().zip(data).skip(first) {
                    let file = &files[piece.file];
                    write_piece(
                        w,
                        piece,
                        data.as_deref(),
                        file,
                        self.file_mode,
                        &mut omitted,
                    )?;
                }
                Ok(())
            }),
            Body::Compressed { continued, rest } => {
                let continued = continued.as_ref().filter(|_| !continued_omitted);
                for segment in [continued, rest.as_ref()].into_iter().flatten() {
                    e.put(segment)?;
                }
                Ok(())
            }
        }
    }

    /// Move the archive past `piece` of task `index`, whose file is not
    /// left out: check that the piece continues the archive where it
    /// stands, and note its file when it was found gone.
    fn advance(
        &self,
        e: &mut Emitter,
        index: usize,
        piece: &Piece,
        present: bool,
        files: &[FileEntry],
    ) -> Result<()> {
        let file = &files[piece.file];
        let next = match &e.open {
            Some(open) if open.file == piece.file => open.next,
            Some(open) => bail!(
                "{} is incomplete in the tar output ({} of {} bytes) when task {index} starts {}: \
                 a file's pieces must follow each other in task order",
                files[open.file].path,
                open.next,
                files[open.file].size,
                file.path
            ),
            None => {
                ensure!(
                    piece.offset == 0,
                    "task {index} continues {} at offset {} but its start was not written: \
                     a file's pieces must follow each other in task order",
                    file.path,
                    piece.offset
                );
                if !present {
                    debug!(
                        "{} vanished before any of it was read: left out of the tar",
                        file.path
                    );
                    e.omitted.insert(piece.file);
                    self.outcome_lock().vanished.push(piece.file);
                    return Ok(());
                }
                0
            }
        };
        ensure!(
            piece.offset == next && piece.offset + piece.len <= file.size,
            "task {index} has {}+{} of {} ({} bytes) where the tar output is at offset {next}",
            piece.offset,
            piece.len,
            file.path,
            file.size
        );
        if !present {
            debug!(
                "{} vanished after its start was written: bytes {}..{} are zeros in the tar",
                file.path,
                piece.offset,
                piece.offset + piece.len
            );
            self.outcome_lock().zero_filled.insert(piece.file);
        }
        let next = next + piece.len;
        e.open = (next < file.size).then_some(OpenFile {
            file: piece.file,
            next,
        });
        Ok(())
    }

    fn outcome_lock(&self) -> MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files left out of the archive entirely because they were gone when
    /// their first piece was read: leave them out of the manifest too.
    pub fn vanished_files(&self) -> Vec<usize> {
        let mut v = self.outcome_lock().vanished.clone();
        v.sort_unstable();
        v
    }

    /// Files that vanished after their first piece was written: in the
    /// archive at their listed size, zeros where the data was missing.
    pub fn zero_filled_files(&self) -> Vec<usize> {
        self.outcome_lock().zero_filled.iter().copied().collect()
    }

    /// Most data bytes the reorder buffer held at once.
    pub fn peak_buffered_bytes(&self) -> u64 {
        self.lock().peak_buffered
    }

    /// After every task: the end-of-archive marker (two zero blocks), the
    /// end of the compressed stream, flush, and fsync when the output is a
    /// file. Returns the size of the tar stream (before compression). An
    /// error when a task was never handed in or a file is incomplete.
    pub fn finish(self) -> Result<u64> {
        let st = self
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if self.broken.load(Ordering::SeqCst) {
            bail!("the tar output is incomplete: a thread panicked while writing it");
        }
        if let Some(why) = st.failed {
            bail!("the tar output failed earlier: {why}");
        }
        if let Some(waiting) = st.pending.keys().next() {
            bail!(
                "task {} never reached the tar output ({} later task(s) from {waiting} on are waiting for it)",
                st.head,
                st.pending.len()
            );
        }
        let mut e = st.emitter.context("the tar output was lost")?;
        if let Some(open) = &e.open {
            bail!(
                "file #{} ends after {} bytes in the tar output, short of its listed size",
                open.file,
                open.next
            );
        }
        e.run(end_of_archive)?;
        debug!(
            "tar output: {} bytes, reorder buffer peak {} bytes",
            e.written, st.peak_buffered
        );
        let written = e.written;
        e.assembler.finish(&mut e.out)?;
        match e.out.into_inner().map_err(|e| e.into_error())? {
            Out::File(f, _) => f.sync_all().context("cannot fsync the tar file")?,
            Out::Stream(mut w) => w.flush()?,
        }
        Ok(written)
    }
}

/// Marks the archive broken if the writing thread unwinds, so no other
/// thread waits for a head that will never move. Never locks: the state
/// lock may be held by the panicking thread.
struct PanicGuard<'a>(&'a TarWriter);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        self.0.broken.store(true, Ordering::SeqCst);
        self.0.turn.notify_all();
    }
}

#[cfg(test)]
mod tests;
