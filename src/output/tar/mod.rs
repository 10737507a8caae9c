//! The tar format (`-F t`): the copy as archives laid out as PostgreSQL's
//! own `pg_basebackup -F t` writes them, so existing restore runbooks work.
//!
//! `base.tar` holds the data directory, with `pg_tblspc/<oid>` as symbolic
//! links to the tablespaces' original locations and the server's
//! `tablespace_map`; `<oid>.tar` holds each tablespace's directory
//! contents; `pg_wal.tar` (with -x) holds the WAL segments, to extract into
//! `pg_wal` (compressed only with gzip, as PostgreSQL does);
//! `backup_manifest` lies beside them. To standard output (DEST `-`)
//! everything is one tar: the WAL under `pg_wal/` and `backup_manifest` as
//! its last member, as PostgreSQL injects it there.
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
//!
//! The parts: [`writer`] (the reorder window), [`task`] (a task's share of
//! an archive, on its worker), [`entries`] (tar headers), [`compress`]
//! (-Z and the compressing encoders).

pub mod compress;
mod entries;
pub mod task;
pub mod writer;

use std::fs::{self, File, OpenOptions};
use std::io::IsTerminal;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use log::{debug, info, warn};

use super::dest::Dest;
use super::{AUTO_CONF, Output, shell_quote, unix_now};
use crate::abort::Abort;
use crate::bail_with;
use crate::error::{Exit, ExitContext};
use crate::fsx;
use crate::output::{Scratch, Sink};
use crate::pg::version::MINIMUM_VERSION_FOR_RECOVERY_GUC;
use crate::plan::{self, FileEntry, Plan, Task};
use crate::session::server::{ServerInfo, Tablespace};
use compress::TarCompression;
use writer::TarWriter;

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
    style: ArchiveStyle,
    /// `base` first.
    archives: Vec<Archive>,
    /// For each file of the plan, its archive.
    archive_of: Vec<usize>,
    wal_scratch: Option<Dest>,
    held_back: Option<HeldBack>,
    manifest: Option<Vec<u8>>,
}

/// Name of the WAL scratch directory inside DEST while the backup runs.
const WAL_SCRATCH: &str = ".pg_basebackup-wal";

/// How every archive of one backup is written.
#[derive(Clone, Copy)]
struct ArchiveStyle {
    compression: TarCompression,
    /// Tasks in flight or waiting from the first unwritten one on.
    window: usize,
    /// fsync an archive file when it is complete (not with -N).
    sync: bool,
    dir_mode: u32,
    file_mode: u32,
}

impl ArchiveStyle {
    /// A new file `name` in `dest` for an archive, and its writer; the file
    /// is fsynced when it is finished unless -N.
    fn create_in(&self, dest: &Dest, name: &str) -> Result<TarWriter> {
        let file = create_file(&dest.path(name), self.file_mode)?;
        let writer = match self.sync {
            true => TarWriter::to_file(file, self.compression, self.window)?,
            false => TarWriter::new(Box::new(file), self.compression, self.window)?,
        };
        Ok(writer.with_modes(self.dir_mode, self.file_mode))
    }
}

/// `-F t` and its compression; DEST `-` means standard output.
#[derive(Debug, Clone, Copy)]
pub struct TarFormat {
    pub compression: TarCompression,
    pub to_stdout: bool,
}

/// What the command line asks of a tar output.
pub struct TarOptions<'a> {
    pub format: TarFormat,
    /// The directory of the archives (unless they go to standard output).
    pub dest: &'a Path,
    /// Workers (-j): the reorder window is twice that.
    pub jobs: usize,
    /// Whether the archives are synced at the end (not --no-sync).
    pub sync: bool,
    /// -x: a pg_wal archive (or the WAL in the one archive) is written.
    pub fetch_wal: bool,
    /// -R: the standby settings are appended to postgresql.auto.conf.
    pub write_recovery_conf: bool,
}

impl TarOutput {
    /// The archives, created now (empty DEST, or standard output after
    /// checking that one tar can hold the backup).
    pub fn create(
        options: &TarOptions,
        info: &ServerInfo,
        tablespaces: &[Tablespace],
    ) -> Result<TarOutput> {
        let format = options.format;
        let linked: Vec<&Tablespace> = tablespaces
            .iter()
            .filter(|t| t.location.starts_with('/'))
            .collect();
        let dir_mode = info.data_directory_mode;
        let style = ArchiveStyle {
            compression: format.compression,
            // Enough tasks in flight that no worker waits for another one's
            // slow request, few enough to bound memory (module comment).
            window: 2 * options.jobs,
            sync: options.sync,
            dir_mode,
            file_mode: fsx::file_mode_for(dir_mode),
        };
        let (dir, archives, wal_scratch) = if format.to_stdout {
            let (archive, scratch) = stdout_archive(&style, &linked, options.fetch_wal)?;
            (None, vec![archive], scratch)
        } else {
            let dest = Dest::prepare(options.dest, dir_mode)?;
            match dir_archives(&dest, &style, &linked, options.fetch_wal) {
                Ok((archives, scratch)) => (Some(dest), archives, scratch),
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
        let held_back = (options.write_recovery_conf
            && info.version_num >= MINIMUM_VERSION_FOR_RECOVERY_GUC)
            .then(|| HeldBack {
                path: AUTO_CONF,
                file: None,
                bytes: Mutex::default(),
            });
        Ok(TarOutput {
            dir,
            style,
            archives,
            archive_of: Vec::new(),
            wal_scratch,
            held_back,
            manifest: None,
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
        let style = ArchiveStyle {
            compression: match self.style.compression {
                TarCompression::Gzip(level) => TarCompression::Gzip(level),
                _ => TarCompression::None,
            },
            window: 1,
            ..self.style
        };
        let name = format!("pg_wal{}", style.compression.extension());
        let writer = style.create_in(dest, &name)?;
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
            if self.style.sync {
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

/// The one archive of a backup to standard output, and the private
/// directory the WAL follower writes into (with -x).
fn stdout_archive(
    style: &ArchiveStyle,
    linked: &[&Tablespace],
    fetch_wal: bool,
) -> Result<(Archive, Option<Dest>)> {
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
    if std::io::stdout().is_terminal() {
        bail_with!(
            Exit::Usage,
            "refusing to write a tar archive to a terminal: redirect standard output"
        );
    }
    let archive = Archive {
        name: "-".into(),
        prefix: None,
        location: None,
        writer: Some(
            TarWriter::new(Box::new(std::io::stdout()), style.compression, style.window)?
                .with_modes(style.dir_mode, style.file_mode),
        ),
        files: Vec::new(),
    };
    let scratch = match fetch_wal {
        true => Some(private_wal_scratch()?),
        false => None,
    };
    Ok((archive, scratch))
}

/// The archives in DEST (`base` and one per tablespace), and the WAL
/// follower's scratch directory in it (with -x).
fn dir_archives(
    dest: &Dest,
    style: &ArchiveStyle,
    linked: &[&Tablespace],
    fetch_wal: bool,
) -> Result<(Vec<Archive>, Option<Dest>)> {
    let ext = style.compression.extension();
    let mut names = vec![(format!("base{ext}"), None)];
    for t in linked {
        names.push((format!("{}{ext}", t.oid), Some(*t)));
    }
    let mut archives = Vec::new();
    for (name, tablespace) in names {
        archives.push(Archive {
            writer: Some(style.create_in(dest, &name)?),
            name,
            prefix: tablespace.map(|t| format!("pg_tblspc/{}/", t.oid)),
            location: tablespace.map(|t| t.location.clone()),
            files: Vec::new(),
        });
    }
    let scratch = match fetch_wal {
        true => Some(wal_scratch_in(&dest.path(WAL_SCRATCH))?),
        false => None,
    };
    Ok((archives, scratch))
}

/// A new file for an archive: never through a planted link, never over an
/// existing file.
fn create_file(path: &Path, mode: u32) -> Result<File> {
    fsx::open_no_follow(
        OpenOptions::new().write(true).create_new(true).mode(mode),
        path,
    )
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
/// directory, for the WAL of a backup written to standard output. Created
/// here, not by Dest::prepare (which would empty an existing one): it must
/// be new, never something planted in a shared /tmp.
fn private_wal_scratch() -> Result<Dest> {
    let base = std::env::temp_dir();
    let path = tempfile::Builder::new()
        .prefix(&format!("pg_basebackup-wal-{}-", std::process::id()))
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .exit_with(Exit::Dest, || {
            format!("cannot create a directory in {}", base.display())
        })?
        .keep();
    wal_scratch_in(&path)
}

fn mtime_of(meta: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
}
