//! `--delta`: refresh an earlier copy of the same cluster in DEST, fetching
//! only the chunks that changed.
//!
//! The run is an ordinary backup (new start, listing, WAL, label, manifest,
//! pg_control last); what changes is that, before a chunk is fetched, the
//! server hashes it (`sha256(pg_read_binary_file(...))`, read after backup
//! start like any fetched chunk) and we hash the same range of the file in
//! DEST. Equal hashes mean DEST already holds what a fetch would write, so
//! the chunk is kept; WAL replay from the new start repairs whatever changed
//! after the comparison, exactly as it repairs a chunk fetched early.
//!
//! An interrupted refresh must never look complete and must be resumable:
//! before anything else is written we leave a marker with the cluster's
//! system identifier, then remove backup_label, tablespace_map,
//! backup_manifest and global/pg_control; the marker goes once pg_control
//! (written last) is back. A failed run keeps DEST as it is.
//!
//! earlier.rs reads what DEST holds before the run; sql.rs holds the
//! statements; this file compares and prunes.

mod earlier;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use log::{debug, info, warn};
use postgres::Client;
use sha2::{Digest, Sha256};

pub use earlier::{Earlier, check_server, inspect, tablespace_links};

use crate::abort::Abort;
use crate::error::{Exit, ExitContext};
use crate::fsx::{open_no_follow, sync_dir};
use crate::fsx::{remove_contents, remove_entry};
use crate::integrity::Integrity;
use crate::manifest::format_gmt;
use crate::output::dest::Dest;
use crate::pg::BLCKSZ;
use crate::plan::{self, FileEntry, Piece, Plan, Task};
use crate::session::reader::Reader;
use crate::session::retry::{Reconnect, replace_lost_session};
use crate::session::server::ServerInfo;
use crate::session::sql;
use earlier::{EarlierManifest, MARKER, marker_text};

/// Files of the earlier copy that would let it start, or claim it complete.
const REMOVED_FIRST: &[&str] = &[
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    plan::PG_CONTROL,
];

/// `--delta` and its companion flag.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `--trust-mtime`: skip hashing files whose size and mtime match the
    /// earlier manifest and that are older than the earlier backup's start.
    pub trust_mtime: bool,
}

/// A refresh in progress: which files DEST already holds, and counters.
pub struct Delta {
    started: Instant,
    mtimes: Option<EarlierManifest>,
    /// Earlier backup start, seconds since the epoch (--trust-mtime).
    earlier_start: Option<i64>,
    root: PathBuf,
    /// Per plan file: DEST holds it (a regular file, now of the listed size).
    present: Vec<bool>,
    /// Per plan file: --trust-mtime lets it be kept without hashing.
    trusted: Vec<bool>,
    compared_bytes: AtomicU64,
    trusted_bytes: AtomicU64,
    fetched_ranges: AtomicU64,
}

impl Delta {
    /// Mark DEST as a copy in progress: the marker first, then the files
    /// that would let the earlier copy start or pass for complete.
    pub fn begin(
        earlier: Earlier,
        dest: &Dest,
        info: &ServerInfo,
        aux: &mut Client,
    ) -> Result<Delta> {
        dest.write_file(MARKER, marker_text(info.system_identifier).as_bytes())?;
        for f in REMOVED_FIRST {
            dest.remove_file(f)?;
        }
        // The server refuses to start on a directory others may read.
        fs::set_permissions(
            dest.root(),
            fs::Permissions::from_mode(info.data_directory_mode),
        )
        .exit_with(Exit::Dest, || {
            format!("cannot set permissions of {}", dest.root().display())
        })?;
        sync_root(dest.root())?;
        let earlier_start = match &earlier.mtimes {
            Some(m) => match server_epoch(aux, &m.start_time) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(
                        "--trust-mtime: every file is compared, the earlier START TIME is unreadable: {e:#}"
                    );
                    None
                }
            },
            None => None,
        };
        Ok(Delta {
            started: Instant::now(),
            mtimes: earlier.mtimes,
            earlier_start,
            root: dest.root().to_path_buf(),
            present: Vec::new(),
            trusted: Vec::new(),
            compared_bytes: AtomicU64::new(0),
            trusted_bytes: AtomicU64::new(0),
            fetched_ranges: AtomicU64::new(0),
        })
    }

    /// Remove from DEST (and the tablespace targets it links to) whatever
    /// the plan does not have; give every file DEST keeps the listed size.
    /// `links` are the tablespace links this run keeps: (oid, target).
    pub fn prune(&mut self, plan: &Plan, links: &[(u32, PathBuf)], major: u32) -> Result<()> {
        let files: HashMap<&str, usize> = plan
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_str(), i))
            .collect();
        let mut dirs: HashSet<&str> = plan.dirs.iter().map(String::as_str).collect();
        dirs.extend(["global", "pg_tblspc"]);
        dirs.extend(plan::required_empty_dirs(major));
        let walk = Walk {
            root: &self.root,
            files: &files,
            dirs: &dirs,
            links,
        };
        let mut present = vec![false; plan.files.len()];
        walk.dir("", &mut present).exit_with(Exit::Dest, || {
            format!("cannot clean {}", self.root.display())
        })?;
        for (i, f) in plan.files.iter().enumerate() {
            if present[i] {
                set_size(&self.root.join(&f.path), f.size)?;
            }
        }
        self.trusted = plan.files.iter().map(|f| self.is_trusted(f)).collect();
        self.present = present;
        Ok(())
    }

    fn is_trusted(&self, f: &FileEntry) -> bool {
        let (Some(m), Some(start)) = (&self.mtimes, self.earlier_start) else {
            return false;
        };
        // Whole seconds on both sides: a file touched in the second the
        // earlier backup started is not older than it.
        m.files.get(&f.path) == Some(&(f.size, format_gmt(f.mtime))) && f.mtime < start
    }

    /// Of `task`'s pieces, the byte ranges still to fetch: new files, and
    /// the blocks of each chunk whose hash on the server differs from the
    /// same block in DEST. Kept bytes are fed to the manifest checksums here
    /// (page checksums are not verified on them: they were not read from
    /// the server this time).
    pub fn to_fetch<'t>(
        &self,
        reader: &mut Reader,
        task: &'t Task,
        files: &[FileEntry],
        integrity: &Integrity,
        reconnect: Reconnect,
        abort: &Abort,
    ) -> Result<Cow<'t, Task>> {
        let mut fetch = Vec::new();
        let mut compare = Vec::new();
        for p in &task.pieces {
            if !self.present[p.file] || p.len == 0 {
                fetch.push(*p);
            } else if self.trusted[p.file] {
                match self.local(&files[p.file].path, p.offset, p.len) {
                    Some(bytes) => {
                        integrity.account_kept(p.file, p.offset, &bytes)?;
                        self.trusted_bytes.fetch_add(p.len, Ordering::Relaxed);
                    }
                    None => fetch.push(*p),
                }
            } else {
                compare.push(*p);
            }
        }
        if !compare.is_empty() {
            let server = HashSession {
                reader,
                reconnect,
                abort,
            };
            fetch.extend(self.compare(server, &compare, files, integrity)?);
        }
        self.fetched_ranges
            .fetch_add(fetch.len() as u64, Ordering::Relaxed);
        Ok(if fetch == task.pieces {
            Cow::Borrowed(task)
        } else {
            Cow::Owned(Task { pieces: fetch })
        })
    }

    /// Hash `pieces` block by block on the server and in DEST; keep the
    /// blocks that match (fed to the manifest checksums) and return the
    /// ranges that differ, or whose file is gone on either side.
    fn compare(
        &self,
        server: HashSession,
        pieces: &[Piece],
        files: &[FileEntry],
        integrity: &Integrity,
    ) -> Result<Vec<Piece>> {
        let ranges: Vec<_> = pieces
            .iter()
            .map(|p| (files[p.file].path.as_str(), p.offset as i64, p.len as i64))
            .collect();
        // The server hashes while we read and hash our side.
        let (theirs, ours) = std::thread::scope(|s| {
            let ours = s.spawn(|| {
                pieces
                    .iter()
                    .map(|p| self.local_blocks(&files[p.file].path, p))
                    .collect::<Vec<_>>()
            });
            let theirs = server.hashes(&ranges);
            (
                theirs,
                ours.join().expect("the local hashing thread panicked"),
            )
        });
        let mut fetch = Vec::new();
        for ((p, theirs), ours) in pieces.iter().zip(theirs?).zip(ours) {
            self.compared_bytes.fetch_add(p.len, Ordering::Relaxed);
            let (Some(theirs), Some((ours, bytes))) = (theirs, ours) else {
                fetch.push(*p);
                continue;
            };
            let same: Vec<bool> = (0..ours.len())
                .map(|b| {
                    theirs
                        .get(b)
                        .is_some_and(|t| t.as_slice() == ours[b].as_slice())
                })
                .collect();
            for (first, end, kept) in runs(&same) {
                let at = (first * BLCKSZ) as u64;
                let len = ((end * BLCKSZ) as u64).min(p.len) - at;
                if kept {
                    let bytes = &bytes[at as usize..(at + len) as usize];
                    integrity.account_kept(p.file, p.offset + at, bytes)?;
                } else {
                    fetch.push(Piece {
                        file: p.file,
                        offset: p.offset + at,
                        len,
                    });
                }
            }
        }
        Ok(fetch)
    }

    /// The sha256 of each block of `piece` in DEST, and its bytes (kept
    /// blocks are fed to the manifest checksums); `None` if unreadable.
    /// The grain is a data page: per-block hashes cost the server little
    /// more than one hash per chunk and, when updates are spread thin, cut
    /// what is fetched to the pages that changed (bench/README.md).
    fn local_blocks(
        &self,
        rel: &str,
        piece: &Piece,
    ) -> Option<(Vec<sha2::digest::Output<Sha256>>, Vec<u8>)> {
        let bytes = self.local(rel, piece.offset, piece.len)?;
        let hashes = bytes.chunks(BLCKSZ).map(Sha256::digest).collect();
        Some((hashes, bytes))
    }

    /// `len` bytes at `offset` of a file in DEST (sized to the listing by
    /// [`prune`](Self::prune)); `None` if they cannot be read, and then the
    /// chunk is simply fetched.
    fn local(&self, rel: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        let f = open_no_follow(OpenOptions::new().read(true), &self.root.join(rel)).ok()?;
        let mut buf = vec![0; len as usize];
        f.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }

    /// The copy is complete (pg_control is back): drop the marker and say
    /// what the refresh saved.
    pub fn finish(self, fetched_bytes: u64) -> Result<()> {
        let marker = self.root.join(MARKER);
        fs::remove_file(&marker)
            .exit_with(Exit::Dest, || format!("cannot remove {}", marker.display()))?;
        sync_root(&self.root)?;
        let summary = format!(
            "delta: {} bytes compared, {} bytes kept unhashed (--trust-mtime), {} bytes fetched in {} ranges, {:.1} s",
            self.compared_bytes.load(Ordering::Relaxed),
            self.trusted_bytes.load(Ordering::Relaxed),
            fetched_bytes,
            self.fetched_ranges.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64()
        );
        info!("{summary}");
        if !log::log_enabled!(log::Level::Info) {
            println!("pg_basebackup: {summary}");
        }
        Ok(())
    }
}

/// The session that hashes on the server, and how to replace it when it
/// is lost.
struct HashSession<'a> {
    reader: &'a mut Reader,
    reconnect: Reconnect<'a>,
    abort: &'a Abort,
}

impl HashSession<'_> {
    /// The server's block hashes of each range (`None`: the file is gone),
    /// retrying on a fresh session when this one is lost, as fetches do.
    fn hashes(self, ranges: &[(&str, i64, i64)]) -> Result<Vec<Option<Vec<Vec<u8>>>>> {
        let HashSession {
            reader,
            reconnect,
            abort,
        } = self;
        let paths: Vec<&str> = ranges.iter().map(|r| r.0).collect();
        let offsets: Vec<i64> = ranges.iter().map(|r| r.1).collect();
        let lens: Vec<i64> = ranges.iter().map(|r| r.2).collect();
        let mut attempt = 0;
        let rows = loop {
            debug!(
                "hash {} range(s), first {}@{}",
                ranges.len(),
                paths[0],
                offsets[0]
            );
            match reader
                .client()
                .query(sql::HASH_BLOCKS, &[&paths, &offsets, &lens])
                .with_context(|| format!("could not hash {} on the server", paths[0]))
            {
                Ok(rows) => break rows,
                Err(e) => replace_lost_session(e, reader, &mut attempt, reconnect, abort)?,
            }
        };
        let mut hashes = vec![None; ranges.len()];
        for row in rows {
            let n: i64 = row.get(0);
            let slot = usize::try_from(n - 1)
                .ok()
                .and_then(|i| hashes.get_mut(i))
                .context("bad range number")?;
            *slot = row.get::<_, Option<Vec<Vec<u8>>>>(1);
        }
        Ok(hashes)
    }
}

/// Make DEST's own entries (the marker, removed files) durable.
fn sync_root(root: &Path) -> Result<()> {
    sync_dir(root).exit_with(Exit::Dest, || format!("cannot fsync {}", root.display()))
}

/// Maximal runs of equal values: (first, end, value), `end` exclusive.
fn runs(flags: &[bool]) -> Vec<(usize, usize, bool)> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    for (i, &f) in flags.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.2 == f => last.1 = i + 1,
            _ => out.push((i, i + 1, f)),
        }
    }
    out
}

/// The server's reading of a timestamp it wrote (backup_label's START TIME
/// carries its log_timezone abbreviation, which only it knows for sure).
fn server_epoch(client: &mut Client, time: &str) -> Result<i64> {
    let sql = sql::EPOCH_OF_TIMESTAMP;
    debug!("SQL: {sql}");
    Ok(client.query_one(sql, &[&time])?.get(0))
}

/// Set a kept file to its listed size (cut, or zero-extended: the chunks
/// past its old end then differ and are fetched).
fn set_size(path: &Path, size: u64) -> Result<()> {
    let f = open_no_follow(OpenOptions::new().write(true), path)
        .exit_with(Exit::Dest, || format!("cannot open {}", path.display()))?;
    if f.metadata()?.len() != size {
        f.set_len(size)
            .exit_with(Exit::Dest, || format!("cannot resize {}", path.display()))?;
    }
    Ok(())
}

/// The walk that removes what the server no longer has. Links are never
/// followed, except the tablespace links this run keeps.
struct Walk<'a> {
    root: &'a Path,
    files: &'a HashMap<&'a str, usize>,
    dirs: &'a HashSet<&'a str>,
    links: &'a [(u32, PathBuf)],
}

impl Walk<'_> {
    fn dir(&self, rel: &str, present: &mut [bool]) -> std::io::Result<()> {
        for entry in fs::read_dir(self.root.join(rel))? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                remove_entry(&entry.path())?;
                continue;
            };
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_symlink() && rel == "pg_tblspc" {
                let target = fs::read_link(entry.path())?;
                let kept = name
                    .parse::<u32>()
                    .is_ok_and(|oid| self.links.contains(&(oid, target.clone())));
                if kept {
                    self.dir(&path, present)?;
                } else {
                    // A tablespace the server dropped, or one now mapped
                    // elsewhere: its earlier target was part of this copy.
                    info!("removing {path} and the contents of {}", target.display());
                    fs::remove_file(entry.path())?;
                    if target.is_dir() {
                        remove_contents(&target)?;
                    }
                }
            } else if kind.is_dir() && self.dirs.contains(path.as_str()) {
                self.dir(&path, present)?;
            } else if kind.is_file() && self.files.contains_key(path.as_str()) {
                present[self.files[path.as_str()]] = true;
            } else if path != MARKER {
                debug!("removing {path}: the server does not have it");
                remove_entry(&entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_changed_blocks() {
        assert_eq!(
            runs(&[true, true, false, true, false, false]),
            [(0, 2, true), (2, 3, false), (3, 4, true), (4, 6, false)]
        );
        assert!(runs(&[]).is_empty());
    }
}
