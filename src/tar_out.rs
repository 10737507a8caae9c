//! Tar output (`-F t`): the copy as `base.tar`, `pg_wal.tar` and one
//! `<oid>.tar` per tablespace, optionally compressed, or one tar on standard
//! output, laid out like PostgreSQL's own pg_basebackup writes them.
//!
//! The workers fetch chunks out of order from several threads, but a tar
//! stream needs each file's bytes contiguously and in order. Because the
//! plan fixes every file's size before the first byte is read, a file's tar
//! header can be written before its data is complete, and the archive can be
//! streamed in *task order*: [`TarWriter::complete_task`] parks a finished
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
//!
//! Entries are GNU tar headers (what GNU tar, bsdtar, PostgreSQL's
//! pg_basebackup readers and the `tar` crate all read): paths or link
//! targets longer than 100 bytes get a `././@LongLink` entry first. Files
//! are mode 0600, directories 0700 (see [`TarWriter::with_modes`]), owned by
//! uid/gid 0 with user and group name `postgres`, as PostgreSQL's
//! pg_basebackup names them: GNU tar run as root maps files to the local
//! `postgres` user.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use log::debug;
use tar::{EntryType, Header};

#[cfg(test)]
use crate::plan::Task;
use crate::plan::{FileEntry, Piece};
use crate::tar_compress::{self, Assembler, Segment, SegmentWriter};

const BLOCK: u64 = 512;
/// Longest name or link target a tar header holds without a GNU long entry.
const NAME_LEN: usize = 100;
static ZEROS: [u8; 65536] = [0; 65536];

/// Compression of tar output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarCompression {
    None,
    /// gzip at this level (1..=9).
    Gzip(u32),
    /// The lz4 frame format, as the `lz4` command reads and writes it.
    Lz4,
    /// zstd at this level.
    Zstd(i32),
}

/// gzip's own default, what `-z` and `-Z gzip` mean.
pub const GZIP_DEFAULT_LEVEL: u32 = 6;

/// Parse a `-Z` value as PostgreSQL's pg_basebackup does: `none`, `gzip`,
/// `lz4`, `zstd`, each optionally with `:LEVEL` or `:level=LEVEL`, and an
/// optional `client-` prefix; a bare integer is a gzip level (`0`: none).
/// `server-` compression does not exist for a copy taken over SQL, and
/// neither do zstd's `workers` and `long` options here.
pub fn parse_compression(s: &str) -> Result<TarCompression> {
    let s = s.trim();
    if s.starts_with("server-") {
        bail!(
            "server-side compression ({s}) is not possible for a backup taken over SQL; use client-side compression"
        );
    }
    let s = s.strip_prefix("client-").unwrap_or(s);
    if let Ok(level) = s.parse::<i64>() {
        return match level {
            0 => Ok(TarCompression::None),
            1..=9 => Ok(TarCompression::Gzip(level as u32)),
            _ => bail!(
                "compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at {GZIP_DEFAULT_LEVEL})"
            ),
        };
    }
    let (algorithm, detail) = match s.split_once(':') {
        Some((a, d)) => (a, Some(d)),
        None => (s, None),
    };
    let level = match detail {
        None => None,
        Some(d) => Some(parse_level(algorithm, d)?),
    };
    let out_of_range = |min: i64, max: i64, default: i64| {
        anyhow::anyhow!(
            "compression algorithm \"{algorithm}\" expects a compression level between {min} and {max} (default at {default})"
        )
    };
    match algorithm {
        "none" => match level {
            None => Ok(TarCompression::None),
            Some(_) => bail!("compression algorithm \"none\" does not accept a compression level"),
        },
        "gzip" => match level {
            None => Ok(TarCompression::Gzip(GZIP_DEFAULT_LEVEL)),
            Some(l @ 1..=9) => Ok(TarCompression::Gzip(l as u32)),
            Some(_) => Err(out_of_range(1, 9, GZIP_DEFAULT_LEVEL as i64)),
        },
        "lz4" => match level {
            None | Some(0) => Ok(TarCompression::Lz4),
            Some(1..=12) => {
                log::warn!("lz4 compression uses its one fast level; the level is ignored");
                Ok(TarCompression::Lz4)
            }
            Some(_) => Err(out_of_range(1, 12, 0)),
        },
        "zstd" => {
            let range = zstd::compression_level_range();
            let default = zstd::DEFAULT_COMPRESSION_LEVEL;
            match level {
                None => Ok(TarCompression::Zstd(default)),
                Some(l) => match i32::try_from(l).ok().filter(|l| range.contains(l)) {
                    Some(l) => Ok(TarCompression::Zstd(l)),
                    None => Err(out_of_range(
                        *range.start() as i64,
                        *range.end() as i64,
                        default as i64,
                    )),
                },
            }
        }
        other => {
            bail!("unrecognized compression algorithm: \"{other}\" (use none, gzip, lz4 or zstd)")
        }
    }
}

/// The level in a compression detail: `5` or `level=5`.
fn parse_level(algorithm: &str, detail: &str) -> Result<i64> {
    let value = match detail.split_once('=') {
        None => detail,
        Some(("level", v)) => v,
        Some((key, _)) => bail!(
            "compression option \"{key}\" is not supported for \"{algorithm}\" (only a level is)"
        ),
    };
    value.trim().parse::<i64>().map_err(|_| {
        anyhow::anyhow!(
            "invalid compression specification for \"{algorithm}\": \"{detail}\" is not a level"
        )
    })
}

impl TarCompression {
    /// The file name ending of an archive: `.tar`, `.tar.gz`, `.tar.lz4`, `.tar.zst`.
    pub fn extension(&self) -> &'static str {
        match self {
            TarCompression::None => ".tar",
            TarCompression::Gzip(_) => ".tar.gz",
            TarCompression::Lz4 => ".tar.lz4",
            TarCompression::Zstd(_) => ".tar.zst",
        }
    }
}

/// Where the archive goes: a file is fsynced by `finish`.
enum Out {
    File(File),
    Stream(Box<dyn Write + Send>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Stream(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Out::File(f) => f.write_all(buf),
            Out::Stream(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
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
        let segment = tar_compress::compress(self.compression, |w| f(w))?;
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

fn write_tar(w: &mut dyn Write, buf: &[u8]) -> Result<()> {
    w.write_all(buf).context("cannot write the tar output")
}

fn zeros(w: &mut dyn Write, mut n: u64) -> Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        write_tar(w, &ZEROS[..k as usize])?;
        n -= k;
    }
    Ok(())
}

/// Pad an entry of `size` bytes to the next 512-byte block.
fn pad(w: &mut dyn Write, size: u64) -> Result<()> {
    zeros(w, (BLOCK - size % BLOCK) % BLOCK)
}

/// A GNU long-name ('L') or long-link ('K') entry carrying `value`.
fn long_entry(w: &mut dyn Write, kind: u8, value: &[u8]) -> Result<()> {
    let mut h = Header::new_gnu();
    let name = b"././@LongLink";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(value.len() as u64 + 1);
    h.set_entry_type(EntryType::new(kind));
    h.set_cksum();
    write_tar(w, h.as_bytes())?;
    write_tar(w, value)?;
    write_tar(w, &[0])?;
    pad(w, value.len() as u64 + 1)
}

/// The header block(s) of one entry; `path` is already checked.
fn header(
    w: &mut dyn Write,
    path: &[u8],
    kind: EntryType,
    size: u64,
    mode: u32,
    mtime: i64,
    link: Option<&str>,
) -> Result<()> {
    let mut h = Header::new_gnu();
    let name = path;
    if name.len() > NAME_LEN {
        long_entry(w, b'L', name)?;
    }
    let n = name.len().min(NAME_LEN);
    h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
    if let Some(target) = link {
        let target = target.as_bytes();
        if target.len() > NAME_LEN {
            long_entry(w, b'K', target)?;
        }
        let n = target.len().min(NAME_LEN);
        h.as_old_mut().linkname[..n].copy_from_slice(&target[..n]);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("postgres")?;
    h.set_groupname("postgres")?;
    h.set_mtime(mtime.max(0) as u64);
    h.set_cksum();
    write_tar(w, h.as_bytes())
}

/// The tar bytes of one piece of a task: its file's header before the
/// file's first piece, its bytes (cut, or padded with zeros, to the piece's
/// length; zeros for a piece of a file gone after its start), the padding
/// after the file's last piece. A file whose first piece found it gone is
/// left out, with its later pieces (`omitted`, per task). A piece that
/// continues a file started in an earlier task is written as it is:
/// whether that file was left out is for the caller to know (see
/// [`continued_pieces`]).
fn write_piece(
    w: &mut dyn Write,
    piece: &Piece,
    data: Option<&[u8]>,
    file: &FileEntry,
    file_mode: u32,
    omitted: &mut BTreeSet<usize>,
) -> Result<()> {
    if omitted.contains(&piece.file) {
        return Ok(());
    }
    if piece.offset == 0 {
        if data.is_none() {
            omitted.insert(piece.file);
            return Ok(());
        }
        header(
            w,
            file.path.as_bytes(),
            EntryType::Regular,
            file.size,
            file_mode,
            file.mtime,
            None,
        )?;
    }
    let n = data.map_or(0, |d| d.len().min(piece.len as usize));
    if let Some(d) = data {
        write_tar(w, &d[..n])?;
    }
    zeros(w, piece.len - n as u64)?;
    if piece.offset + piece.len == file.size {
        pad(w, file.size)?;
    }
    Ok(())
}

/// How many of a task's first pieces continue a file whose start is in an
/// earlier task (the pieces of one file follow each other in task order).
fn continued_pieces(pieces: &[Piece]) -> usize {
    match pieces.first() {
        Some(first) if first.offset > 0 => {
            pieces.iter().take_while(|p| p.file == first.file).count()
        }
        _ => 0,
    }
}

/// One task's share of an archive, gathered piece by piece, in task order,
/// by the worker that fetches the task ([`TarWriter::task`]), then handed
/// in with [`TarWriter::complete`]. For a compressed archive each piece is
/// compressed as it arrives, so the worker holds compressed bytes only and
/// the workers compress in parallel.
pub struct TaskParts {
    pieces: Vec<Piece>,
    /// Per piece: whether the server returned it (false: the file was gone).
    present: Vec<bool>,
    file_mode: u32,
    body: PartsBody,
}

enum PartsBody {
    Raw(Vec<Option<Vec<u8>>>),
    Compressed {
        compression: TarCompression,
        /// The segment being written (boxed: a compressor's state is large).
        current: Option<Box<SegmentWriter>>,
        /// Finished: the pieces that continue a file started earlier.
        continued: Option<Segment>,
        /// Files of this task found gone at their first piece.
        omitted: BTreeSet<usize>,
    },
}

impl TaskParts {
    /// Add the next piece of the task; `files` as for
    /// [`complete`](TarWriter::complete).
    pub fn add(&mut self, piece: Piece, data: Option<&[u8]>, files: &[FileEntry]) -> Result<()> {
        let file = files
            .get(piece.file)
            .with_context(|| format!("a task names file #{}, not in the plan", piece.file))?;
        match &mut self.body {
            PartsBody::Raw(held) => held.push(data.map(<[u8]>::to_vec)),
            PartsBody::Compressed {
                compression,
                current,
                continued,
                omitted,
            } => {
                // The first piece that is not part of a leading run
                // continuing an earlier task's file starts a new segment.
                if continued_pieces(&self.pieces) == self.pieces.len()
                    && !self.pieces.is_empty()
                    && self.pieces[0].file != piece.file
                {
                    *continued = current.take().map(|w| w.finish()).transpose()?;
                }
                let w = match current {
                    Some(w) => w,
                    None => current.insert(Box::new(SegmentWriter::new(*compression)?)),
                };
                write_piece(w.as_mut(), &piece, data, file, self.file_mode, omitted)?;
            }
        }
        self.pieces.push(piece);
        self.present.push(data.is_some());
        Ok(())
    }

    /// The task, ready to queue, and the bytes it holds.
    fn finish(self) -> Result<Done> {
        let (body, bytes) = match self.body {
            PartsBody::Raw(held) => {
                let bytes = held.iter().flatten().map(|d| d.len() as u64).sum();
                (Body::Raw(held), bytes)
            }
            PartsBody::Compressed {
                current, continued, ..
            } => {
                let last = current.map(|w| w.finish()).transpose()?;
                // Without a finished leading run, the last segment is that
                // run when the whole task continues an earlier file.
                let (continued, rest) = match continued {
                    None if continued_pieces(&self.pieces) == self.pieces.len() => (last, None),
                    continued => (continued, last),
                };
                let bytes = [&continued, &rest]
                    .into_iter()
                    .flatten()
                    .map(|s| s.bytes.len() as u64)
                    .sum();
                (Body::Compressed { continued, rest }, bytes)
            }
        };
        Ok(Done {
            pieces: self.pieces,
            present: self.present,
            body,
            bytes,
        })
    }
}

/// A completed task waiting for its turn.
struct Done {
    pieces: Vec<Piece>,
    present: Vec<bool>,
    body: Body,
    /// Bytes held in memory for it.
    bytes: u64,
}

enum Body {
    /// Uncompressed output: the pieces' bytes, written when it is the
    /// task's turn.
    Raw(Vec<Option<Vec<u8>>>),
    /// The pieces that continue a file started earlier ([`continued_pieces`];
    /// dropped if that file was left out) and the rest, each a segment.
    Compressed {
        continued: Option<Segment>,
        rest: Option<Segment>,
    },
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
        Self::with_out(Out::File(file), compression, window)
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
        let body = match self.compression {
            TarCompression::None => PartsBody::Raw(Vec::new()),
            compression => PartsBody::Compressed {
                compression,
                current: None,
                continued: None,
                omitted: BTreeSet::new(),
            },
        };
        TaskParts {
            pieces: Vec::new(),
            present: Vec::new(),
            file_mode: self.file_mode,
            body,
        }
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
            let file = &files[piece.file];
            if e.omitted.contains(&piece.file) {
                continued_omitted |= n < split;
                continue;
            }
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
                        continue;
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
        e.run(|w| zeros(w, 2 * BLOCK))?;
        debug!(
            "tar output: {} bytes, reorder buffer peak {} bytes",
            e.written, st.peak_buffered
        );
        let written = e.written;
        e.assembler.finish(&mut e.out)?;
        match e.out.into_inner().map_err(|e| e.into_error())? {
            Out::File(f) => f.sync_all().context("cannot fsync the tar file")?,
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

/// A path as an archive member: relative, no `..`, no empty part; without
/// a trailing slash.
fn checked_path(path: &[u8]) -> Result<&[u8]> {
    let p = path.strip_suffix(b"/").unwrap_or(path);
    ensure!(
        !p.is_empty()
            && !p.starts_with(b"/")
            && !p.contains(&0)
            && p.split(|&b| b == b'/').all(|c| !c.is_empty() && c != b".."),
        "unsafe path for the tar output: {:?}",
        String::from_utf8_lossy(path)
    );
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan;
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    /// A `Write` the test can read back after the writer is gone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Shared {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    const CHUNK: u64 = 1000;
    const LONG: &str = "base/16384/a_deliberately_long_file_name_that_passes_the_hundred_byte_limit_of_one_tar_header_16385_fsm";
    const LINK_TARGET: &str = "/srv/postgres/tablespaces/a/very/long/location/that/is/definitely/longer/than/one/hundred/bytes/in/total";

    /// Deterministic pseudo-random numbers (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, (self.next() % (i as u64 + 1)) as usize);
            }
        }
    }

    fn content(i: usize, size: u64) -> Vec<u8> {
        (0..size)
            .map(|b| (b as usize * 31 + i * 7 + b as usize / 251) as u8)
            .collect()
    }

    struct Fixture {
        files: Vec<FileEntry>,
        tasks: Vec<Task>,
        contents: Vec<Vec<u8>>,
        skip: usize,
    }

    fn fixture() -> Fixture {
        let sized = [
            ("base/5/16384", 3500),
            ("base/5/16390", 1000),
            (LONG, 1234),
            ("base/5/PG_VERSION", 3),
            ("base/5/16400_vm", 700),
            ("global/1262", 512),
            ("postgresql.auto.conf", 88),
            ("base/5/16402", 0),
            ("global/pg_control", 8),
        ];
        let mut files: Vec<FileEntry> = sized
            .iter()
            .map(|(p, s)| FileEntry {
                path: p.to_string(),
                size: *s,
                mtime: 1_700_000_000,
            })
            .collect();
        files.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
        let skip = files
            .iter()
            .position(|f| f.path == plan::PG_CONTROL)
            .unwrap();
        let tasks = plan::chunk(&files, Some(skip), CHUNK);
        let contents = files
            .iter()
            .enumerate()
            .map(|(i, f)| content(i, f.size))
            .collect();
        Fixture {
            files,
            tasks,
            contents,
            skip,
        }
    }

    /// What the server would return for a piece; `tweak` may change it.
    type Tweak = dyn Fn(&FileEntry, &Piece, Vec<u8>) -> Option<Vec<u8>> + Sync;

    fn piece_data(fx: &Fixture, p: &Piece, tweak: &Tweak) -> Option<Vec<u8>> {
        let bytes = fx.contents[p.file][p.offset as usize..(p.offset + p.len) as usize].to_vec();
        tweak(&fx.files[p.file], p, bytes)
    }

    fn unchanged(_: &FileEntry, _: &Piece, b: Vec<u8>) -> Option<Vec<u8>> {
        Some(b)
    }

    fn preamble(w: &TarWriter) {
        for d in ["base", "base/5", "global", "pg_tblspc", "pg_wal"] {
            w.add_dir(d, 1_700_000_000).unwrap();
        }
        w.add_symlink("pg_tblspc/16500", LINK_TARGET, 1_700_000_000)
            .unwrap();
    }

    fn epilogue(w: &TarWriter, fx: &Fixture) {
        w.add_file("backup_label", b"START WAL LOCATION: 0/2000028\n", 1)
            .unwrap();
        let ctl = &fx.files[fx.skip];
        w.add_file(&ctl.path, &fx.contents[fx.skip], ctl.mtime)
            .unwrap();
    }

    /// Copy with `threads` workers that take tasks in order and finish
    /// them after random delays; returns the writer's peak and the bytes.
    fn threaded(
        fx: &Fixture,
        out: Box<dyn Write + Send>,
        compression: TarCompression,
        window: usize,
        threads: usize,
        tweak: &Tweak,
    ) -> (u64, u64, Vec<usize>, Vec<usize>) {
        let w = TarWriter::new(out, compression, window).unwrap();
        preamble(&w);
        let cursor = AtomicUsize::new(0);
        let max_ahead = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (w, cursor, max_ahead) = (&w, &cursor, &max_ahead);
                s.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                    loop {
                        let i = cursor.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = fx.tasks.get(i) else { return };
                        w.wait_turn(i, &|| false);
                        let head = w.lock().head;
                        max_ahead.fetch_max(i - head, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(rng.next() % 3000));
                        let data = task
                            .pieces
                            .iter()
                            .map(|p| piece_data(fx, p, tweak))
                            .collect();
                        w.complete_task(i, task, &fx.files, data).unwrap();
                    }
                });
            }
        });
        assert!(max_ahead.into_inner() < window);
        epilogue(&w, fx);
        let peak = w.peak_buffered_bytes();
        let (vanished, zero_filled) = (w.vanished_files(), w.zero_filled_files());
        let written = w.finish().unwrap();
        (peak, written, vanished, zero_filled)
    }

    /// The same, on one thread, completing tasks in a random permutation.
    fn shuffled(fx: &Fixture, seed: u64, tweak: &Tweak) -> Vec<u8> {
        let out = Shared::default();
        let w = TarWriter::new(Box::new(out.clone()), TarCompression::None, usize::MAX).unwrap();
        preamble(&w);
        let mut order: Vec<usize> = (0..fx.tasks.len()).collect();
        Rng(seed).shuffle(&mut order);
        for i in order {
            let task = &fx.tasks[i];
            let data = task
                .pieces
                .iter()
                .map(|p| piece_data(fx, p, tweak))
                .collect();
            w.complete_task(i, task, &fx.files, data).unwrap();
        }
        epilogue(&w, fx);
        let n = w.finish().unwrap();
        let bytes = out.bytes();
        assert_eq!(n, bytes.len() as u64);
        bytes
    }

    #[derive(Debug, PartialEq)]
    struct Member {
        kind: EntryType,
        mode: u32,
        mtime: u64,
        data: Vec<u8>,
        link: Option<String>,
    }

    fn read_tar(bytes: &[u8]) -> Vec<(String, Member)> {
        let mut archive = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            // Directories are named with a trailing slash, as tar does.
            assert_eq!(path.ends_with('/'), entry.header().entry_type().is_dir());
            let path = path.trim_end_matches('/').to_string();
            let h = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(data.len() as u64, h.size().unwrap(), "{path}");
            out.push((
                path,
                Member {
                    kind: h.entry_type(),
                    mode: h.mode().unwrap(),
                    mtime: h.mtime().unwrap(),
                    data,
                    link: entry
                        .link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                },
            ));
        }
        out
    }

    /// Check the archive holds exactly the expected entries: the preamble,
    /// the plan's files in task order with `expected(i)` contents (None:
    /// left out), then backup_label and pg_control.
    fn check_tar(bytes: &[u8], fx: &Fixture, expected: &dyn Fn(usize) -> Option<Vec<u8>>) {
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
        let members = read_tar(bytes);
        let names: Vec<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
        let mut want = vec!["base", "base/5", "global", "pg_tblspc", "pg_wal"];
        want.push("pg_tblspc/16500");
        let mut seen = BTreeSet::new();
        for p in fx.tasks.iter().flat_map(|t| &t.pieces) {
            if seen.insert(p.file) && expected(p.file).is_some() {
                want.push(fx.files[p.file].path.as_str());
            }
        }
        want.extend(["backup_label", plan::PG_CONTROL]);
        assert_eq!(names, want);
        let by_name: HashMap<&str, &Member> =
            members.iter().map(|(p, m)| (p.as_str(), m)).collect();
        for d in ["base", "pg_wal"] {
            assert_eq!(by_name[d].kind, EntryType::Directory);
            assert_eq!(by_name[d].mode, 0o700);
        }
        let link = by_name["pg_tblspc/16500"];
        assert_eq!(link.kind, EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some(LINK_TARGET));
        for (i, f) in fx.files.iter().enumerate() {
            if i == fx.skip {
                assert_eq!(by_name[f.path.as_str()].data, fx.contents[i]);
                continue;
            }
            let Some(want) = expected(i) else {
                assert!(!by_name.contains_key(f.path.as_str()), "{}", f.path);
                continue;
            };
            let m = by_name[f.path.as_str()];
            assert_eq!(m.kind, EntryType::Regular, "{}", f.path);
            assert_eq!(m.mode, 0o600, "{}", f.path);
            assert_eq!(m.mtime, f.mtime as u64, "{}", f.path);
            assert_eq!(m.data.len() as u64, f.size, "{}", f.path);
            assert!(m.data == want, "{}: wrong contents", f.path);
        }
    }

    #[test]
    fn fixture_has_what_the_tests_need() {
        let fx = fixture();
        let pieces_of = |path: &str| {
            let i = fx.files.iter().position(|f| f.path == path).unwrap();
            fx.tasks
                .iter()
                .filter(|t| t.pieces.iter().any(|p| p.file == i))
                .count()
        };
        assert_eq!(
            pieces_of("base/5/16384"),
            4,
            "a big file split across tasks"
        );
        assert!(
            fx.tasks.iter().any(|t| t.pieces.len() >= 3),
            "small files packed"
        );
        assert!(fx.files.iter().any(|f| f.size == 0), "an empty file");
        assert!(LONG.len() > 100 && LINK_TARGET.len() > 100);
    }

    #[test]
    fn any_completion_order_gives_the_same_archive() {
        let fx = fixture();
        let first = shuffled(&fx, 1, &unchanged);
        check_tar(&first, &fx, &|i| Some(fx.contents[i].clone()));
        for seed in 2..20 {
            assert!(shuffled(&fx, seed, &unchanged) == first, "seed {seed}");
        }
    }

    #[test]
    fn threads_out_of_order_within_the_window() {
        let fx = fixture();
        let reference = shuffled(&fx, 7, &unchanged);
        for (window, threads) in [(1, 3), (2, 4), (3, 4), (8, 6)] {
            let out = Shared::default();
            let (peak, written, vanished, zero_filled) = threaded(
                &fx,
                Box::new(out.clone()),
                TarCompression::None,
                window,
                threads,
                &unchanged,
            );
            let bytes = out.bytes();
            assert_eq!(written, bytes.len() as u64);
            assert!(bytes == reference, "window {window}, {threads} threads");
            assert!(
                peak <= window as u64 * CHUNK,
                "window {window}: {peak} bytes buffered"
            );
            assert!(vanished.is_empty() && zero_filled.is_empty());
        }
    }

    #[test]
    fn shrunk_pieces_are_zero_padded_and_grown_ones_cut() {
        let fx = fixture();
        // base/5/16384 shrank to 1500 bytes: its 2nd task comes back with
        // 500 bytes, the later ones empty. PG_VERSION grew.
        let tweak = |f: &FileEntry, p: &Piece, mut b: Vec<u8>| {
            if f.path == "base/5/16384" {
                b.truncate(1500u64.saturating_sub(p.offset) as usize);
            }
            if f.path == "base/5/PG_VERSION" {
                b.extend_from_slice(b"extra");
            }
            Some(b)
        };
        let bytes = shuffled(&fx, 3, &tweak);
        check_tar(&bytes, &fx, &|i| {
            let mut c = fx.contents[i].clone();
            if fx.files[i].path == "base/5/16384" {
                c[1500..].fill(0);
            }
            Some(c)
        });
    }

    #[test]
    fn vanished_files_are_left_out_or_zero_filled() {
        let fx = fixture();
        let idx = |path: &str| fx.files.iter().position(|f| f.path == path).unwrap();
        // 16390 (one task) and the long-named file (two tasks, the second
        // of which finds it again) are gone at their first piece: left out.
        // 16384 vanishes after its first task: kept, zeros from 1000 on.
        // The empty file vanished too.
        let tweak = |f: &FileEntry, p: &Piece, b: Vec<u8>| match f.path.as_str() {
            "base/5/16390" | "base/5/16402" => None,
            LONG if p.offset == 0 => None,
            "base/5/16384" if p.offset >= 1000 => None,
            _ => Some(b),
        };
        let bytes = shuffled(&fx, 5, &tweak);
        let gone = [idx("base/5/16390"), idx(LONG), idx("base/5/16402")];
        check_tar(&bytes, &fx, &|i| {
            let mut c = fx.contents[i].clone();
            if gone.contains(&i) {
                return None;
            }
            if i == idx("base/5/16384") {
                c[1000..].fill(0);
            }
            Some(c)
        });
        let out = Shared::default();
        let (_, _, vanished, zero_filled) = threaded(
            &fx,
            Box::new(out.clone()),
            TarCompression::None,
            3,
            4,
            &tweak,
        );
        let mut gone = gone.to_vec();
        gone.sort_unstable();
        assert_eq!(vanished, gone);
        assert_eq!(zero_filled, [idx("base/5/16384")]);
        assert!(out.bytes() == bytes);
    }

    #[test]
    fn compressed_outputs_decompress_to_the_same_tar() {
        let fx = fixture();
        let plain = shuffled(&fx, 11, &unchanged);
        for compression in [
            TarCompression::Gzip(GZIP_DEFAULT_LEVEL),
            TarCompression::Gzip(1),
            TarCompression::Lz4,
            TarCompression::Zstd(3),
            TarCompression::Zstd(-5),
        ] {
            let out = Shared::default();
            threaded(&fx, Box::new(out.clone()), compression, 4, 4, &unchanged);
            let packed = out.bytes();
            let mut unpacked = Vec::new();
            match compression {
                TarCompression::Gzip(_) => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut unpacked)
                        .unwrap();
                }
                TarCompression::Lz4 => unpacked = tar_compress::lz4_decode_all(&packed),
                TarCompression::Zstd(_) => unpacked = zstd::decode_all(&packed[..]).unwrap(),
                TarCompression::None => unreachable!(),
            }
            assert!(unpacked == plain, "{compression:?}");
            assert!(packed.len() < plain.len(), "{compression:?}");
        }
    }

    /// Extract with the system tools, as a user would.
    #[test]
    fn system_tar_extracts_the_archives() {
        if which("tar").is_none() {
            eprintln!("note: no tar command; system extraction not tested");
            return;
        }
        let fx = fixture();
        let tmp = tempfile::tempdir().unwrap();
        for (compression, tool) in [
            (TarCompression::None, None),
            (TarCompression::Gzip(6), Some("gzip")),
            (TarCompression::Lz4, Some("lz4")),
            (TarCompression::Zstd(3), Some("zstd")),
        ] {
            if let Some(tool) = tool.filter(|t| which(t).is_none()) {
                eprintln!("note: no {tool} command; {compression:?} extraction not tested");
                continue;
            }
            let archive = tmp.path().join(format!("base{}", compression.extension()));
            let file = File::create(&archive).unwrap();
            let w = TarWriter::to_file(file, compression, 4).unwrap();
            preamble(&w);
            let mut wal = &b"WAL!"[..];
            w.add_file_from("pg_wal/000000010000000000000002", 4, 1, &mut wal)
                .unwrap();
            for (i, task) in fx.tasks.iter().enumerate().rev() {
                let data = task
                    .pieces
                    .iter()
                    .map(|p| piece_data(&fx, p, &unchanged))
                    .collect();
                w.complete_task(i, task, &fx.files, data).unwrap();
            }
            epilogue(&w, &fx);
            w.finish().unwrap();
            let into = tmp.path().join(format!("x{}", compression.extension()));
            std::fs::create_dir(&into).unwrap();
            let script = match tool {
                None => "tar -xf \"$0\" -C \"$1\"",
                Some("gzip") => "tar -xzf \"$0\" -C \"$1\"",
                Some(t) => &format!("{t} -dc \"$0\" | tar -xf - -C \"$1\""),
            };
            let status = std::process::Command::new("sh")
                .args(["-ec", script])
                .arg(&archive)
                .arg(&into)
                .status()
                .unwrap();
            assert!(status.success(), "{compression:?}: {script}");
            check_tree(&into, &fx);
            if compression == TarCompression::None {
                let listing = std::process::Command::new("tar")
                    .arg("-tvf")
                    .arg(&archive)
                    .output()
                    .unwrap();
                let listing: Vec<String> = String::from_utf8(listing.stdout)
                    .unwrap()
                    .lines()
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                let listing = listing.join("\n");
                assert!(
                    listing.contains("-rw------- postgres/postgres 3500 "),
                    "{listing}"
                );
                assert!(listing.contains(LONG), "{listing}");
                assert!(
                    listing.contains(&format!("pg_tblspc/16500 -> {LINK_TARGET}")),
                    "{listing}"
                );
            }
            assert_eq!(
                std::fs::read(into.join("pg_wal/000000010000000000000002")).unwrap(),
                b"WAL!"
            );
        }
    }

    fn check_tree(root: &Path, fx: &Fixture) {
        use std::os::unix::fs::PermissionsExt;
        for (i, f) in fx.files.iter().enumerate() {
            let p = root.join(&f.path);
            assert_eq!(std::fs::read(&p).unwrap(), fx.contents[i], "{}", f.path);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.path);
        }
        assert_eq!(
            std::fs::read_link(root.join("pg_tblspc/16500")).unwrap(),
            Path::new(LINK_TARGET)
        );
        assert_eq!(
            std::fs::read(root.join("backup_label")).unwrap(),
            b"START WAL LOCATION: 0/2000028\n"
        );
        let mode = std::fs::metadata(root.join("base/5"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    fn which(tool: &str) -> Option<std::path::PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
    }

    #[test]
    fn misuse_and_gaps_are_errors() {
        let fx = fixture();
        let data = |i: usize| -> Vec<Option<Vec<u8>>> {
            fx.tasks[i]
                .pieces
                .iter()
                .map(|p| piece_data(&fx, p, &unchanged))
                .collect()
        };
        // A task that never arrives: finish says which.
        let w = TarWriter::new(Box::new(io::sink()), TarCompression::None, 100).unwrap();
        w.complete_task(1, &fx.tasks[1], &fx.files, data(1))
            .unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("task 0 never reached"), "{err}");

        // Twice the same task; a whole file added inside a streamed one.
        let w = TarWriter::new(Box::new(io::sink()), TarCompression::None, 100).unwrap();
        w.complete_task(0, &fx.tasks[0], &fx.files, data(0))
            .unwrap();
        assert!(
            w.complete_task(0, &fx.tasks[0], &fx.files, data(0))
                .is_err()
        );
        let err = w.add_file("backup_label", b"x", 0).unwrap_err().to_string();
        assert!(err.contains("half written"), "{err}");
        assert!(w.add_dir("../etc", 0).is_err());
        assert!(w.add_dir("/etc", 0).is_err());
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("short of its listed size"), "{err}");

        // A plan whose pieces of one file are not consecutive.
        let w = TarWriter::new(Box::new(io::sink()), TarCompression::None, 100).unwrap();
        w.complete_task(0, &fx.tasks[0], &fx.files, data(0))
            .unwrap();
        let err = w
            .complete_task(1, &fx.tasks[4], &fx.files, data(4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must follow each other"), "{err}");
        assert!(
            w.complete_task(2, &fx.tasks[2], &fx.files, data(2))
                .is_err()
        );
        assert!(w.finish().is_err());
    }

    /// A write error breaks the archive: later calls fail, waiters return.
    #[test]
    fn write_errors_stop_everyone() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let fx = fixture();
        let data = |i: usize| -> Vec<Option<Vec<u8>>> {
            fx.tasks[i]
                .pieces
                .iter()
                .map(|p| piece_data(&fx, p, &unchanged))
                .collect()
        };
        let w = TarWriter::new(Box::new(Full), TarCompression::None, 1).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| w.wait_turn(5, &|| false));
            // 8 MB: more than the output buffer holds, so the write happens now.
            let big = vec![FileEntry {
                path: "big".into(),
                size: 8 << 20,
                mtime: 0,
            }];
            let task = Task {
                pieces: vec![Piece {
                    file: 0,
                    offset: 0,
                    len: 8 << 20,
                }],
            };
            let err = w
                .complete_task(0, &task, &big, vec![Some(vec![1; 8 << 20])])
                .unwrap_err();
            assert!(format!("{err:#}").contains("disk full"), "{err:#}");
            waiter.join().unwrap();
        });
        let err = w
            .complete_task(1, &fx.tasks[1], &fx.files, data(1))
            .unwrap_err();
        assert!(err.to_string().contains("failed earlier"), "{err}");
        assert!(w.add_file("x", b"", 0).is_err());
        assert!(w.finish().is_err());
    }

    /// Several archives (base.tar and <oid>.tar) from one plan: every
    /// writer sees every task index, with only its own pieces (often none),
    /// and a file list whose paths are relative to its archive.
    #[test]
    fn one_writer_per_archive_from_one_plan() {
        let fx = fixture();
        let in_ts = |f: &FileEntry| f.path.starts_with("base/5/");
        let ts_files: Vec<FileEntry> = fx
            .files
            .iter()
            .map(|f| FileEntry {
                path: f.path.strip_prefix("base/5/").unwrap_or(&f.path).into(),
                ..f.clone()
            })
            .collect();
        let (base_out, ts_out) = (Shared::default(), Shared::default());
        let base = TarWriter::new(Box::new(base_out.clone()), TarCompression::None, 2).unwrap();
        let ts = TarWriter::new(Box::new(ts_out.clone()), TarCompression::Lz4, 2).unwrap();
        let cursor = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    loop {
                        let i = cursor.fetch_add(1, Ordering::Relaxed);
                        let Some(task) = fx.tasks.get(i) else { return };
                        base.wait_turn(i, &|| false);
                        ts.wait_turn(i, &|| false);
                        let mut parts = [
                            (Task { pieces: vec![] }, vec![]),
                            (Task { pieces: vec![] }, vec![]),
                        ];
                        for p in &task.pieces {
                            let part = &mut parts[usize::from(in_ts(&fx.files[p.file]))];
                            part.0.pieces.push(*p);
                            part.1.push(piece_data(&fx, p, &unchanged));
                        }
                        let [(bt, bd), (tt, td)] = parts;
                        base.complete_task(i, &bt, &fx.files, bd).unwrap();
                        ts.complete_task(i, &tt, &ts_files, td).unwrap();
                    }
                });
            }
        });
        base.finish().unwrap();
        ts.finish().unwrap();
        let unpacked = tar_compress::lz4_decode_all(&ts_out.bytes());
        for (bytes, mine) in [(base_out.bytes(), false), (unpacked, true)] {
            let names = if mine { &ts_files } else { &fx.files };
            let want: BTreeSet<&str> = (0..fx.files.len())
                .filter(|&i| i != fx.skip && in_ts(&fx.files[i]) == mine)
                .map(|i| names[i].path.as_str())
                .collect();
            let members = read_tar(&bytes);
            let got: BTreeSet<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
            assert_eq!(got, want);
            for (path, m) in &members {
                let i = names.iter().position(|f| f.path == *path).unwrap();
                assert!(m.data == fx.contents[i], "{path}");
            }
        }
    }

    #[test]
    fn writer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TarWriter>();
    }

    #[test]
    fn parses_compression_like_pg_basebackup() {
        use TarCompression::*;
        let ok = |s: &str| parse_compression(s).unwrap();
        assert_eq!(ok("gzip"), Gzip(6));
        assert_eq!(ok("gzip:5"), Gzip(5));
        assert_eq!(ok("gzip:level=9"), Gzip(9));
        assert_eq!(ok("client-gzip:1"), Gzip(1));
        assert_eq!(ok("5"), Gzip(5));
        assert_eq!(ok("0"), None);
        assert_eq!(ok("none"), None);
        assert_eq!(ok("lz4"), Lz4);
        assert_eq!(ok("lz4:0"), Lz4);
        assert_eq!(ok("zstd"), Zstd(3));
        assert_eq!(ok("zstd:19"), Zstd(19));
        assert_eq!(ok("zstd:-3"), Zstd(-3));
        for bad in [
            "gzip:0",
            "gzip:10",
            "10",
            "none:1",
            "lz4:13",
            "zstd:99",
            "zstd:workers=4",
            "zstd:x",
            "brotli",
            "server-gzip",
            "",
        ] {
            assert!(parse_compression(bad).is_err(), "{bad}");
        }
        assert_eq!(ok("gzip").extension(), ".tar.gz");
        assert_eq!(None.extension(), ".tar");
        assert_eq!(Lz4.extension(), ".tar.lz4");
        assert_eq!(Zstd(1).extension(), ".tar.zst");
    }
}
