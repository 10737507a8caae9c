//! Where a backup is written: a plain data directory ([`Dest`]) or tar
//! archives laid out as PostgreSQL's own `pg_basebackup -F t` writes them
//! ([`TarOutput`]). backup.rs picks one [`Output`] at the start and drives
//! both the same way, so the order of the steps (data, WAL, labels,
//! pg_control last) lives in one place.
//!
//! The tar layout, so existing restore runbooks work: `base.tar` holds the
//! data directory, with `pg_tblspc/<oid>` as symbolic links to the
//! tablespaces' original locations and the server's `tablespace_map`;
//! `<oid>.tar` holds each tablespace's directory contents; `pg_wal.tar`
//! (with -x) holds the WAL segments, to extract into `pg_wal` (compressed
//! only with gzip, as PostgreSQL does); `backup_manifest` lies beside them.
//! To standard output (DEST `-`) everything is one tar: the WAL under
//! `pg_wal/` and `backup_manifest` as its last member, as PostgreSQL injects
//! it there.
//!
//! Memory stays bounded while chunks arrive out of order: each archive is a
//! [`TarWriter`] with a reorder window of `2 x jobs` tasks (a worker does not
//! fetch a task until it is within the window of the first unwritten one),
//! so the tar output holds at most `2 x jobs x chunk size` bytes of data,
//! on top of the one or two requests each worker has in hand. No file is
//! ever held whole, except postgresql.auto.conf with -R (it gets the
//! standby settings appended; a configuration file of a few hundred bytes).
//! The WAL follower writes into a scratch directory (hidden in DEST, or a
//! private temporary directory for standard output) that is packed into the
//! output after the backup stops and then removed.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use log::{debug, info, warn};

use crate::abort::Abort;
use crate::backup::{shell_quote, unix_now};
use crate::bail_with;
use crate::cli::Settings;
use crate::copy::{Scratch, Sink};
use crate::dest::Dest;
use crate::error::{Exit, ExitContext};
use crate::plan::{self, FileEntry, Plan, Task};
use crate::session::server::{ServerInfo, Tablespace};
use crate::tar_out::{TarCompression, TarWriter};

/// The file -R appends the standby settings to (PostgreSQL 12+).
pub const AUTO_CONF: &str = "postgresql.auto.conf";

/// What backup.rs does with the copy, whatever its format.
pub trait Output {
    /// Where the workers write the files of the plan.
    fn sink(&self) -> &dyn Sink;
    /// Directories and tablespace links, before any file.
    fn layout(&mut self, plan: &Plan, info: &ServerInfo, targets: &[(u32, PathBuf)]) -> Result<()>;
    /// Where the WAL follower writes `pg_wal/<segment>` (None without -x).
    fn wal_dest(&self) -> Option<&Dest>;
    /// A file that vanished on the server while it was copied.
    fn drop_vanished(&self, rel: &str) -> Result<()>;
    /// Make the data written so far durable, before the labels.
    fn sync_data(&self) -> Result<()>;
    /// Move the WAL the follower fetched into the output.
    fn pack_wal(&mut self) -> Result<()>;
    /// A whole file we hold in memory (backup_label, pg_control, ...).
    fn put_file(&self, rel: &str, data: &[u8], mtime: i64) -> Result<()> {
        self.put_raw_file(rel.as_bytes(), data, mtime)
    }
    /// [`put_file`](Self::put_file) for a path that need not be valid UTF-8
    /// (a name the server listed as bytes, see [`plan::OddEntry`]).
    fn put_raw_file(&self, rel: &[u8], data: &[u8], mtime: i64) -> Result<()>;
    /// A directory whose path need not be valid UTF-8 (its parent exists).
    fn put_raw_dir(&self, rel: &[u8], mtime: i64) -> Result<()>;
    /// The copied contents of `rel` (empty when it was not copied); for a
    /// tar only the file held back for -R ([`AUTO_CONF`]).
    fn copied_file(&self, rel: &str) -> Vec<u8>;
    fn put_manifest(&mut self, manifest: Vec<u8>) -> Result<()>;
    /// After the last file: end the archives.
    fn finish(&mut self) -> Result<()>;
    /// The last words of a successful backup: how to use it.
    fn announce(&self, manifest_written: bool);
    /// After a failure: remove what was written, or keep it with -n.
    fn fail(self: Box<Self>, keep_partial: bool) -> Result<()>;
}

/// A plain copy: each piece straight to its place in DEST.
impl Sink for Dest {
    fn piece(
        &self,
        scratch: &mut Scratch,
        task: &Task,
        i: usize,
        file: &FileEntry,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let Some(bytes) = data else { return Ok(()) };
        let piece = task.pieces[i];
        let is_last = piece.offset + piece.len == file.size;
        self.write_at(
            &mut scratch.open,
            &file.path,
            piece.offset,
            bytes,
            is_last.then_some(file.size),
        )?;
        let short = piece.len - (bytes.len() as u64).min(piece.len);
        if short > 0 {
            // The file shrank: zeros in the rest of the range, as in a fresh
            // copy (where --delta would keep older bytes there).
            let zeros = vec![0; short as usize];
            let offset = piece.offset + piece.len - short;
            self.write_at(&mut scratch.open, &file.path, offset, &zeros, None)?;
        }
        Ok(())
    }
}

impl Output for Dest {
    fn sink(&self) -> &dyn Sink {
        self
    }

    fn layout(&mut self, plan: &Plan, info: &ServerInfo, targets: &[(u32, PathBuf)]) -> Result<()> {
        self.create_dirs(["global", "pg_tblspc"])?;
        for (oid, target) in targets {
            self.link_tablespace(*oid, target)?;
        }
        self.create_dirs(plan.dirs.iter().map(String::as_str))?;
        self.create_dirs(plan::required_empty_dirs(info.major()))
    }

    fn wal_dest(&self) -> Option<&Dest> {
        Some(self)
    }

    fn drop_vanished(&self, rel: &str) -> Result<()> {
        self.remove_file(rel)
    }

    fn sync_data(&self) -> Result<()> {
        self.sync()
    }

    fn pack_wal(&mut self) -> Result<()> {
        Ok(())
    }

    fn put_raw_file(&self, rel: &[u8], data: &[u8], _mtime: i64) -> Result<()> {
        self.write_file(OsStr::from_bytes(rel), data)
    }

    fn put_raw_dir(&self, rel: &[u8], _mtime: i64) -> Result<()> {
        self.create_dirs([OsStr::from_bytes(rel)])
    }

    fn copied_file(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_default()
    }

    fn put_manifest(&mut self, manifest: Vec<u8>) -> Result<()> {
        self.write_file("backup_manifest", &manifest)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    fn announce(&self, manifest_written: bool) {
        let root = shell_quote(self.root());
        if manifest_written {
            info!("backup_manifest written; check the copy with: pg_verifybackup {root}");
        }
        println!("pg_basebackup: backup complete; start the copy with: pg_ctl -D {root} start");
    }

    fn fail(self: Box<Self>, keep_partial: bool) -> Result<()> {
        if keep_partial {
            warn!(
                "the partial copy in {} was kept (-n); it is NOT restorable",
                self.root().display()
            );
            return Ok(());
        }
        self.discard()
    }
}

/// One archive: `base`, or a tablespace's `<oid>`.
struct Archive {
    /// The file name in DEST (`base.tar.gz`), or `-`.
    name: String,
    /// `pg_tblspc/<oid>/` and the server's own location, for a tablespace archive.
    prefix: Option<String>,
    location: Option<String>,
    /// Taken by `finish`.
    writer: Option<TarWriter>,
    /// The plan's file list with paths relative to this archive.
    files: Vec<FileEntry>,
}

/// A file held in memory instead of being streamed (postgresql.auto.conf
/// with -R), written at the end with additions.
struct HeldBack {
    path: &'static str,
    file: Option<usize>,
    bytes: Mutex<Vec<u8>>,
}

/// `-F t`: see the module comment.
pub struct TarOutput {
    /// DEST, or None for standard output.
    dir: Option<Dest>,
    compression: TarCompression,
    /// `base` first.
    archives: Vec<Archive>,
    /// For each file of the plan, its archive.
    archive_of: Vec<usize>,
    wal_scratch: Option<Dest>,
    held_back: Option<HeldBack>,
    manifest: Option<Vec<u8>>,
    dir_mode: u32,
    file_mode: u32,
    sync: bool,
}

/// Name of the WAL scratch directory inside DEST while the backup runs.
const WAL_SCRATCH: &str = ".pg_basebackup-wal";

impl TarOutput {
    /// The archives, created now (empty DEST, or standard output after
    /// checking that one tar can hold the backup).
    pub fn create(
        settings: &Settings,
        info: &ServerInfo,
        tablespaces: &[Tablespace],
    ) -> Result<TarOutput> {
        let format = settings.tar.context("not a tar backup")?;
        let linked: Vec<&Tablespace> = tablespaces
            .iter()
            .filter(|t| t.location.starts_with('/'))
            .collect();
        let dir_mode = info.data_directory_mode;
        let file_mode = if dir_mode == 0o750 { 0o640 } else { 0o600 };
        // Enough tasks in flight that no worker waits for another one's
        // slow request, few enough to bound memory (module comment).
        let window = 2 * settings.jobs;
        let file_writer = |file: File, compression| -> Result<TarWriter> {
            archive_file_writer(
                file,
                compression,
                window,
                settings.sync,
                dir_mode,
                file_mode,
            )
        };
        let mut archives = Vec::new();
        let (dir, wal_scratch) = if format.to_stdout {
            if !linked.is_empty() {
                let names: Vec<&str> = linked.iter().map(|t| t.name.as_str()).collect();
                bail_with!(
                    Exit::Server,
                    "cannot write the backup to standard output: the server has {} user tablespace(s) ({}), \
                     and one tar stream holds only the data directory; write the tar files to a directory instead",
                    linked.len(),
                    names.join(", ")
                );
            }
            // SAFETY: isatty only inspects a file descriptor.
            if unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1 {
                bail_with!(
                    Exit::Usage,
                    "refusing to write a tar archive to a terminal: redirect standard output"
                );
            }
            archives.push(Archive {
                name: "-".into(),
                prefix: None,
                location: None,
                writer: Some(
                    TarWriter::new(Box::new(std::io::stdout()), format.compression, window)?
                        .with_modes(dir_mode, file_mode),
                ),
                files: Vec::new(),
            });
            let scratch = match settings.fetch_wal {
                true => Some(private_wal_scratch()?),
                false => None,
            };
            (None, scratch)
        } else {
            let dest = Dest::prepare(&settings.dest, dir_mode)?;
            let mut fill = || -> Result<Option<Dest>> {
                let ext = format.compression.extension();
                let mut names = vec![(format!("base{ext}"), None)];
                for t in &linked {
                    names.push((format!("{}{ext}", t.oid), Some(*t)));
                }
                for (name, tablespace) in names {
                    let file = create_file(&dest.path(&name), file_mode)?;
                    archives.push(Archive {
                        writer: Some(file_writer(file, format.compression)?),
                        name,
                        prefix: tablespace.map(|t| format!("pg_tblspc/{}/", t.oid)),
                        location: tablespace.map(|t| t.location.clone()),
                        files: Vec::new(),
                    });
                }
                match settings.fetch_wal {
                    true => Ok(Some(wal_scratch_in(&dest.path(WAL_SCRATCH))?)),
                    false => Ok(None),
                }
            };
            match fill() {
                Ok(scratch) => (Some(dest), scratch),
                Err(e) => {
                    if let Err(cleanup) = dest.discard() {
                        warn!("{cleanup:#}");
                    }
                    return Err(e);
                }
            }
        };
        let names: Vec<&str> = archives.iter().map(|a| a.name.as_str()).collect();
        info!(
            "tar output: {} to {}",
            names.join(", "),
            dir.as_ref()
                .map_or("standard output".into(), |d| d.root().display().to_string())
        );
        let held_back = (settings.write_recovery_conf && info.major() >= 12).then(|| HeldBack {
            path: AUTO_CONF,
            file: None,
            bytes: Mutex::default(),
        });
        Ok(TarOutput {
            dir,
            compression: format.compression,
            archives,
            archive_of: Vec::new(),
            wal_scratch,
            held_back,
            manifest: None,
            dir_mode,
            file_mode,
            sync: settings.sync,
        })
    }

    /// The archive a path given as bytes belongs in (a tablespace's own,
    /// or base.tar), and the path within it.
    fn archive_of_raw<'p>(&self, rel: &'p [u8]) -> Result<(&TarWriter, &'p [u8])> {
        for archive in &self.archives[1..] {
            if let Some(rest) = archive
                .prefix
                .as_ref()
                .and_then(|p| rel.strip_prefix(p.as_bytes()))
            {
                return Ok((archive.writer.as_ref().context("no tar writer")?, rest));
            }
        }
        Ok((self.base()?, rel))
    }

    fn base(&self) -> Result<&TarWriter> {
        self.archives[0]
            .writer
            .as_ref()
            .context("the tar output is already finished")
    }

    /// Each archive's writer, in archive order.
    fn writers(&self) -> Result<impl Iterator<Item = &TarWriter>> {
        self.archives
            .iter()
            .map(|a| a.writer.as_ref())
            .collect::<Option<Vec<_>>>()
            .map(Vec::into_iter)
            .context("the tar output is already finished")
    }

    /// pg_wal.tar in DEST, compressed only with gzip as PostgreSQL's
    /// pg_basebackup does (its WAL streamer writes gzip or nothing).
    fn wal_archive(&self, dest: &Dest) -> Result<(String, TarWriter)> {
        let compression = match self.compression {
            TarCompression::Gzip(level) => TarCompression::Gzip(level),
            _ => TarCompression::None,
        };
        let name = format!("pg_wal{}", compression.extension());
        let file = create_file(&dest.path(&name), self.file_mode)?;
        let writer = archive_file_writer(
            file,
            compression,
            1,
            self.sync,
            self.dir_mode,
            self.file_mode,
        )?;
        Ok((name, writer))
    }
}

impl Sink for TarOutput {
    fn wait_turn(&self, index: usize, abort: &Abort) {
        for w in self.archives.iter().filter_map(|a| a.writer.as_ref()) {
            w.wait_turn(index, &|| abort.is_set());
        }
    }

    fn piece(
        &self,
        scratch: &mut Scratch,
        task: &Task,
        i: usize,
        _file: &FileEntry,
        data: Option<&[u8]>,
    ) -> Result<()> {
        let piece = task.pieces[i];
        if let Some(h) = self
            .held_back
            .as_ref()
            .filter(|h| h.file == Some(piece.file))
        {
            if let Some(data) = data {
                let mut bytes = h.bytes.lock().unwrap();
                let end = (piece.offset + piece.len) as usize;
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                let n = data.len().min(piece.len as usize);
                bytes[piece.offset as usize..piece.offset as usize + n].copy_from_slice(&data[..n]);
            }
            return Ok(());
        }
        if scratch.tar.is_empty() {
            scratch.tar = self.writers()?.map(TarWriter::task).collect();
        }
        let a = self.archive_of[piece.file];
        scratch.tar[a].add(piece, data, &self.archives[a].files)
    }

    /// Every archive sees every task, with only its own pieces (often
    /// none), so each one's reorder window moves with the plan.
    fn end_task(&self, index: usize, _task: &Task, scratch: &mut Scratch) -> Result<()> {
        let mut parts = std::mem::take(&mut scratch.tar).into_iter();
        for (archive, writer) in self.archives.iter().zip(self.writers()?) {
            let parts = parts.next().unwrap_or_else(|| writer.task());
            writer
                .complete(index, parts, &archive.files)
                .exit_with(Exit::Dest, || format!("cannot write {}", archive.name))?;
        }
        Ok(())
    }

    fn zero_fills_vanished_tail(&self) -> bool {
        true
    }
}

impl Output for TarOutput {
    fn sink(&self) -> &dyn Sink {
        self
    }

    /// Directory entries (parents first) and tablespace links go first,
    /// as tar extractors create missing parents with default modes.
    fn layout(
        &mut self,
        plan: &Plan,
        info: &ServerInfo,
        _targets: &[(u32, PathBuf)],
    ) -> Result<()> {
        let archive_for = |path: &str| -> (usize, String) {
            for (a, archive) in self.archives.iter().enumerate() {
                if let Some(rest) = archive.prefix.as_ref().and_then(|p| path.strip_prefix(p)) {
                    return (a, rest.to_string());
                }
            }
            (0, path.to_string())
        };
        let mut files: Vec<Vec<FileEntry>> = vec![Vec::new(); self.archives.len()];
        let mut archive_of = Vec::with_capacity(plan.files.len());
        for f in &plan.files {
            let (a, rel) = archive_for(&f.path);
            archive_of.push(a);
            for (b, list) in files.iter_mut().enumerate() {
                list.push(FileEntry {
                    path: if a == b { rel.clone() } else { f.path.clone() },
                    ..f.clone()
                });
            }
        }
        let mut dirs: Vec<Vec<String>> = vec![Vec::new(); self.archives.len()];
        let wanted = ["global", "pg_tblspc"]
            .into_iter()
            .chain(plan.dirs.iter().map(String::as_str))
            .chain(plan::required_empty_dirs(info.major()));
        for d in wanted {
            let (a, rel) = archive_for(&format!("{d}/"));
            if let Some(rel) = rel.strip_suffix('/').filter(|r| !r.is_empty()) {
                dirs[a].push(rel.to_string());
            }
        }
        let now = unix_now();
        for (a, mut list) in dirs.into_iter().enumerate() {
            list.sort_by_key(|d| (d.matches('/').count(), d.clone()));
            list.dedup();
            let writer = self.archives[a].writer.as_ref().context("no tar writer")?;
            for d in &list {
                writer.add_dir(d, now)?;
            }
        }
        for archive in &self.archives[1..] {
            if let (Some(prefix), Some(location)) = (&archive.prefix, &archive.location) {
                let link = prefix.trim_end_matches('/');
                self.base()?.add_symlink(link, location, now)?;
            }
        }
        for (archive, list) in self.archives.iter_mut().zip(files) {
            archive.files = list;
        }
        self.archive_of = archive_of;
        if let Some(h) = &mut self.held_back {
            h.file = plan.files.iter().position(|f| f.path == h.path);
        }
        Ok(())
    }

    fn wal_dest(&self) -> Option<&Dest> {
        self.wal_scratch.as_ref()
    }

    fn drop_vanished(&self, _rel: &str) -> Result<()> {
        Ok(()) // never written: the tar writer left it out
    }

    fn sync_data(&self) -> Result<()> {
        Ok(()) // the archives are synced when they are complete
    }

    fn pack_wal(&mut self) -> Result<()> {
        let Some(scratch) = &self.wal_scratch else {
            return Ok(());
        };
        let mut segments = Vec::new();
        for entry in fs::read_dir(scratch.path("pg_wal"))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() {
                let name = entry
                    .file_name()
                    .into_string()
                    .ok()
                    .context("WAL file name")?;
                segments.push((name, meta.len(), mtime_of(&meta)));
            }
        }
        segments.sort();
        let pack = |writer: &TarWriter, prefix: &str| -> Result<()> {
            for (name, size, mtime) in &segments {
                let mut src = File::open(scratch.path(&format!("pg_wal/{name}")))?;
                writer.add_file_from(format!("{prefix}{name}"), *size, *mtime, &mut src)?;
            }
            Ok(())
        };
        match &self.dir {
            None => pack(self.base()?, "pg_wal/")?,
            Some(dest) => {
                let (name, writer) = self.wal_archive(dest)?;
                pack(&writer, "")
                    .and_then(|()| writer.finish().map(drop))
                    .exit_with(Exit::Dest, || format!("cannot write {name}"))?;
                info!("{name}: {} WAL file(s)", segments.len());
            }
        }
        self.wal_scratch.take().map_or(Ok(()), remove_scratch)
    }

    fn put_raw_file(&self, rel: &[u8], data: &[u8], mtime: i64) -> Result<()> {
        let (writer, rel) = self.archive_of_raw(rel)?;
        writer.add_file(rel, data, mtime)
    }

    fn put_raw_dir(&self, rel: &[u8], mtime: i64) -> Result<()> {
        let (writer, rel) = self.archive_of_raw(rel)?;
        writer.add_dir(rel, mtime)
    }

    fn copied_file(&self, rel: &str) -> Vec<u8> {
        match &self.held_back {
            Some(h) if h.path == rel => h.bytes.lock().unwrap().clone(),
            _ => Vec::new(),
        }
    }

    fn put_manifest(&mut self, manifest: Vec<u8>) -> Result<()> {
        self.manifest = Some(manifest);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.dir.is_none() {
            if let Some(manifest) = self.manifest.take() {
                self.base()?
                    .add_file("backup_manifest", &manifest, unix_now())?;
            }
        }
        for archive in &mut self.archives {
            let writer = archive.writer.take().context("no tar writer")?;
            let zero_filled = writer.zero_filled_files().len();
            if zero_filled > 0 {
                info!(
                    "{}: {zero_filled} file(s) vanished while being copied and are zero-filled \
                     (WAL replay deals with them)",
                    archive.name
                );
            }
            debug!(
                "{}: {} file(s) vanished before being read, reorder buffer peak {} bytes",
                archive.name,
                writer.vanished_files().len(),
                writer.peak_buffered_bytes()
            );
            let bytes = writer
                .finish()
                .exit_with(Exit::Dest, || format!("cannot write {}", archive.name))?;
            info!("{}: {} MB of tar", archive.name, bytes >> 20);
        }
        if let Some(dest) = &self.dir {
            if let Some(manifest) = self.manifest.take() {
                dest.write_file("backup_manifest", &manifest)?;
            }
            if self.sync {
                dest.sync()?; // the directory entries
            }
        }
        Ok(())
    }

    fn announce(&self, manifest_written: bool) {
        match &self.dir {
            Some(dest) => {
                let root = shell_quote(dest.root());
                if manifest_written {
                    info!(
                        "backup_manifest written beside the archives; after extracting them, \
                         copy it into the data directory and run pg_verifybackup on it"
                    );
                }
                println!(
                    "pg_basebackup: backup complete in {root}; restore: extract base.tar into an empty \
                     data directory, pg_wal.tar (with -x) into its pg_wal, each <oid>.tar into its \
                     tablespace's directory"
                );
            }
            None => eprintln!("pg_basebackup: backup complete (tar written to standard output)"),
        }
    }

    fn fail(self: Box<Self>, keep_partial: bool) -> Result<()> {
        let TarOutput {
            dir,
            archives,
            wal_scratch,
            ..
        } = *self;
        drop(archives);
        match dir {
            None => {
                wal_scratch.map_or(Ok(()), remove_scratch)?;
                warn!(
                    "the tar stream written to standard output is incomplete: it is NOT restorable"
                );
                Ok(())
            }
            Some(dest) => Box::new(dest).fail(keep_partial),
        }
    }
}

/// An archive in a file, fsynced when it is finished unless -N.
fn archive_file_writer(
    file: File,
    compression: TarCompression,
    window: usize,
    sync: bool,
    dir_mode: u32,
    file_mode: u32,
) -> Result<TarWriter> {
    let writer = match sync {
        true => TarWriter::to_file(file, compression, window)?,
        false => TarWriter::new(Box::new(file), compression, window)?,
    };
    Ok(writer.with_modes(dir_mode, file_mode))
}

/// A new file for an archive: never through a planted link, never over an
/// existing file.
fn create_file(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .exit_with(Exit::Dest, || format!("cannot create {}", path.display()))
}

/// The WAL follower's directory at `root` (new, or just created by us): it
/// writes `pg_wal/<segment>` there.
fn wal_scratch_in(root: &Path) -> Result<Dest> {
    let scratch = Dest::prepare(root, 0o700)?;
    scratch.create_dirs(["pg_wal"])?;
    Ok(scratch)
}

fn remove_scratch(scratch: Dest) -> Result<()> {
    let root = scratch.root().to_path_buf();
    drop(scratch);
    fs::remove_dir_all(&root)
        .with_context(|| format!("cannot remove the WAL scratch directory {}", root.display()))
}

/// A new directory only this process can enter, in the system's temporary
/// directory, for the WAL of a backup written to standard output.
fn private_wal_scratch() -> Result<Dest> {
    let base = std::env::temp_dir();
    for n in 0..100 {
        let path = base.join(format!("pg_basebackup-wal-{}-{n}", std::process::id()));
        // Created here, not by Dest::prepare (which would empty an existing
        // one): it must be new, never something planted in a shared /tmp.
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return wal_scratch_in(&path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).exit_with(Exit::Dest, || {
                    format!("cannot create a directory in {}", base.display())
                });
            }
        }
    }
    bail_with!(
        Exit::Dest,
        "cannot create a private directory in {}",
        base.display()
    )
}

fn mtime_of(meta: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
}
