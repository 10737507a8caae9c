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

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use log::{debug, info, warn};
use postgres::Client;
use sha2::{Digest, Sha256};

use crate::abort::Abort;
use crate::bail_with;
use crate::copy::{Reconnect, replace_lost_session};
use crate::error::{Exit, ExitContext};
use crate::fsx::{remove_contents, remove_entry};
use crate::integrity::Integrity;
use crate::manifest::format_gmt;
use crate::output::dest::{self, Dest};
use crate::plan::{self, FileEntry, Piece, Plan, Task};
use crate::reader::Reader;
use crate::server::ServerInfo;

/// Written first by a --delta run, removed once the copy is complete: it
/// names the cluster while global/pg_control is missing.
pub const MARKER: &str = "pg_basebackup_delta.in_progress";

/// Files of the earlier copy that would let it start, or claim it complete.
const REMOVED_FIRST: &[&str] = &[
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    plan::PG_CONTROL,
];

/// `sha256` on the server needs PostgreSQL 11.
const MIN_SERVER_VERSION: u32 = 110000;

/// The grain of the comparison: a data page. Per-block hashes cost the
/// server little more than one hash per chunk and, when updates are spread
/// thin, cut what is fetched to the pages that changed (bench/README.md).
const BLOCK: usize = 8192;

/// sha256 of each 8 kB block of each range, in one array per range; NULL
/// when the file is gone. The range is read once, then sliced.
const HASH_READ: &str = "SELECT t.n, CASE WHEN r.d IS NOT NULL THEN ARRAY( \
        SELECT sha256(substring(r.d FROM b * 8192 + 1 FOR 8192)) \
        FROM generate_series(0, (length(r.d) - 1) / 8192) AS b ORDER BY b) END \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n), \
    LATERAL (SELECT pg_read_binary_file(t.p, t.o, t.l, true) AS d) AS r";

/// `--delta` and its companion flag.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `--trust-mtime`: skip hashing files whose size and mtime match the
    /// earlier manifest and that are older than the earlier backup's start.
    pub trust_mtime: bool,
}

/// What DEST holds before the run, read without writing anything.
pub struct Earlier {
    root: PathBuf,
    /// None when DEST is missing or empty: then every file is new.
    system_identifier: Option<u64>,
    /// From a complete earlier copy, with --trust-mtime.
    mtimes: Option<EarlierManifest>,
}

struct EarlierManifest {
    /// Path -> (size, Last-Modified as written).
    files: HashMap<String, (u64, String)>,
    /// backup_label's START TIME, as the server wrote it.
    start_time: String,
}

/// Look at DEST: a missing or empty directory, or an earlier copy named by
/// the marker of an interrupted refresh or by its global/pg_control.
pub fn inspect(root: &Path, options: Options) -> Result<Earlier> {
    // Refuses a running server's data directory and anything inside one.
    dest::check(root, true)?;
    let mut earlier = Earlier {
        root: root.to_path_buf(),
        system_identifier: None,
        mtimes: None,
    };
    let empty = match fs::read_dir(root) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true, // missing: check() made sure its parent exists
    };
    if empty {
        return Ok(earlier);
    }
    let marker = root.join(MARKER);
    let control = root.join(plan::PG_CONTROL);
    if marker.exists() {
        let text = fs::read_to_string(&marker)
            .exit_with(Exit::Dest, || format!("cannot read {}", marker.display()))?;
        earlier.system_identifier = Some(parse_marker(&text).with_context(|| {
            crate::error::Failure::new(Exit::Dest, format!("{} is damaged", marker.display()))
        })?);
    } else if let Ok(bytes) = fs::read(&control) {
        let Some(id) = bytes.get(..8) else {
            bail_with!(Exit::Dest, "{} is too short", control.display());
        };
        earlier.system_identifier = Some(u64::from_ne_bytes(id.try_into().expect("8 bytes")));
        if options.trust_mtime {
            earlier.mtimes = read_earlier_manifest(root);
        }
    } else {
        bail_with!(
            Exit::Dest,
            "--delta: {} is not empty and holds no copy of a cluster (no global/pg_control, no {MARKER})",
            root.display()
        );
    }
    Ok(earlier)
}

fn parse_marker(text: &str) -> Result<u64> {
    text.trim()
        .strip_prefix("system identifier ")
        .context("no system identifier")?
        .parse()
        .context("bad system identifier")
}

/// The sizes and mtimes an earlier complete copy recorded, and its start
/// time; `None` (with a warning) when they cannot be read.
fn read_earlier_manifest(root: &Path) -> Option<EarlierManifest> {
    let read = || -> Result<EarlierManifest> {
        let label = fs::read_to_string(root.join("backup_label"))?;
        let start_time = label
            .lines()
            .find_map(|l| l.strip_prefix("START TIME: "))
            .context("backup_label has no START TIME")?
            .to_string();
        let manifest = fs::read_to_string(root.join("backup_manifest"))?;
        let files = manifest.lines().filter_map(manifest_line).collect();
        Ok(EarlierManifest { files, start_time })
    };
    match read() {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(
                "--trust-mtime: every file is compared, the earlier copy's manifest and label are unusable: {e:#}"
            );
            None
        }
    }
}

/// `(path, (size, last-modified))` of one file line of a manifest (one
/// file per line, as both PostgreSQL and this tool write it). Encoded-Path
/// lines are skipped: such files are simply compared.
fn manifest_line(line: &str) -> Option<(String, (u64, String))> {
    let path = json_string(line.split_once("\"Path\": \"")?.1)?;
    let size = line.split_once("\"Size\": ")?.1;
    let size = size[..size.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()?;
    let modified = line.split_once("\"Last-Modified\": \"")?.1;
    let modified = modified[..modified.find('"')?].to_string();
    Some((path, (size, modified)))
}

/// The JSON string starting at `s` (just past its opening quote).
fn json_string(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
}

/// Refuse a server whose DEST holds another cluster, or one without sha256.
/// Runs before anything is written.
pub fn check_server(earlier: &Earlier, info: &ServerInfo) -> Result<()> {
    if info.version_num < MIN_SERVER_VERSION {
        bail_with!(
            Exit::Server,
            "--delta needs PostgreSQL 11 or newer (the server hashes chunks with sha256); this is {}",
            info.major()
        );
    }
    if let Some(id) = earlier.system_identifier {
        if id != info.system_identifier {
            bail_with!(
                Exit::Dest,
                "--delta: {} holds a copy of another cluster (system identifier {id}, the server's is {}); \
                 nothing was changed",
                earlier.root.display(),
                info.system_identifier
            );
        }
    }
    Ok(())
}

/// Tablespace links of the earlier copy: (oid, target). A target listed
/// here is part of the copy and may be refreshed though it is not empty.
pub fn tablespace_links(root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(root.join("pg_tblspc")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let oid = e.file_name().to_str()?.parse().ok()?;
            Some((oid, fs::read_link(e.path()).ok()?))
        })
        .collect()
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
        dest.write_file(
            MARKER,
            format!("system identifier {}\n", info.system_identifier).as_bytes(),
        )?;
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
            let ranges: Vec<_> = compare
                .iter()
                .map(|p| (files[p.file].path.as_str(), p.offset as i64, p.len as i64))
                .collect();
            // The server hashes while we read and hash our side.
            let (server, local) = std::thread::scope(|s| {
                let local = s.spawn(|| {
                    compare
                        .iter()
                        .map(|p| {
                            let bytes = self.local(&files[p.file].path, p.offset, p.len)?;
                            let hashes =
                                bytes.chunks(BLOCK).map(Sha256::digest).collect::<Vec<_>>();
                            Some((hashes, bytes))
                        })
                        .collect::<Vec<_>>()
                });
                let server = server_hashes(reader, &ranges, reconnect, abort);
                (
                    server,
                    local.join().expect("the local hashing thread panicked"),
                )
            });
            for ((p, theirs), ours) in compare.iter().zip(server?).zip(local) {
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
                    let (at, len) = (
                        first * BLOCK,
                        ((end * BLOCK) as u64).min(p.len) - (first * BLOCK) as u64,
                    );
                    if kept {
                        integrity.account_kept(
                            p.file,
                            p.offset + at as u64,
                            &bytes[at..at + len as usize],
                        )?;
                    } else {
                        fetch.push(Piece {
                            file: p.file,
                            offset: p.offset + at as u64,
                            len,
                        });
                    }
                }
            }
        }
        self.fetched_ranges
            .fetch_add(fetch.len() as u64, Ordering::Relaxed);
        Ok(if fetch == task.pieces {
            Cow::Borrowed(task)
        } else {
            Cow::Owned(Task { pieces: fetch })
        })
    }

    /// `len` bytes at `offset` of a file in DEST (sized to the listing by
    /// [`prune`](Self::prune)); `None` if they cannot be read, and then the
    /// chunk is simply fetched.
    fn local(&self, rel: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(rel))
            .ok()?;
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

/// The server's block hashes of each range (`None`: the file is gone), retrying
/// on a fresh session when this one is lost, as fetches do.
fn server_hashes(
    reader: &mut Reader,
    ranges: &[(&str, i64, i64)],
    reconnect: Reconnect,
    abort: &Abort,
) -> Result<Vec<Option<Vec<Vec<u8>>>>> {
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
            .query(HASH_READ, &[&paths, &offsets, &lens])
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

/// Make DEST's own entries (the marker, removed files) durable.
fn sync_root(root: &Path) -> Result<()> {
    File::open(root)
        .and_then(|d| d.sync_all())
        .exit_with(Exit::Dest, || format!("cannot fsync {}", root.display()))
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
    let sql = "SELECT extract(epoch FROM $1::text::timestamptz)::int8";
    debug!("SQL: {sql}");
    Ok(client.query_one(sql, &[&time])?.get(0))
}

/// Set a kept file to its listed size (cut, or zero-extended: the chunks
/// past its old end then differ and are fetched).
fn set_size(path: &Path, size: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
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
    fn manifest_lines_give_path_size_and_mtime() {
        let line = r#"{ "Path": "base/1/a\"b\u00e9", "Size": 8192, "Last-Modified": "2024-02-29 13:05:09 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722" },"#;
        assert_eq!(
            manifest_line(line),
            Some((
                "base/1/a\"b\u{e9}".to_string(),
                (8192, "2024-02-29 13:05:09 GMT".to_string())
            ))
        );
        assert_eq!(manifest_line(r#""WAL-Ranges": ["#), None);
        assert_eq!(
            manifest_line(r#"{ "Encoded-Path": "ff", "Size": 1, "Last-Modified": "x" }"#),
            None
        );
    }

    #[test]
    fn runs_of_changed_blocks() {
        assert_eq!(
            runs(&[true, true, false, true, false, false]),
            [(0, 2, true), (2, 3, false), (3, 4, true), (4, 6, false)]
        );
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn marker_round_trip() {
        assert_eq!(parse_marker("system identifier 7312\n").unwrap(), 7312);
        assert!(parse_marker("garbage").is_err());
    }

    #[test]
    fn inspect_tells_empty_copies_and_strangers_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options { trust_mtime: false };
        let root = tmp.path().join("copy");
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, None);
        fs::create_dir(&root).unwrap();
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, None);
        fs::write(root.join("stray"), b"x").unwrap();
        let err = inspect(&root, opts).err().unwrap();
        assert_eq!(crate::error::exit_of(&err), Exit::Dest);
        fs::create_dir(root.join("global")).unwrap();
        fs::write(root.join(plan::PG_CONTROL), 42u64.to_ne_bytes()).unwrap();
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, Some(42));
        fs::write(root.join(MARKER), b"system identifier 43\n").unwrap();
        assert_eq!(inspect(&root, opts).unwrap().system_identifier, Some(43));
    }
}
