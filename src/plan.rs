//! From the server's listing to the work: what is copied, what is created
//! empty, what is left out, and how files are cut into read requests.
//!
//! The exclusion rules follow the server's own base backup
//! (src/backend/backup/basebackup.c): a copy taken over SQL must look like
//! one taken over the replication protocol. Each rule is one table row with
//! the reason it exists.

use std::collections::{BTreeMap, HashSet};

use crate::incremental::file::Assembled;
use crate::paths::normalize_relative;
use crate::session::server::{ListedEntry, Tablespace};

/// Directories whose contents are skipped at any depth; the directory itself
/// is created empty because the server expects to find it.
pub const SKIP_CONTENTS_OF: &[(&str, &str)] = &[
    (
        "pg_stat_tmp",
        "statistics temp files, rewritten by the running server",
    ),
    (
        "pg_replslot",
        "replication slots are per server and must not be cloned",
    ),
    (
        "pg_dynshmem",
        "dynamic shared memory, valid only in the running server",
    ),
    ("pg_notify", "LISTEN/NOTIFY queue, cleared at startup"),
    (
        "pg_serial",
        "serializable transaction state, cleared at startup",
    ),
    (
        "pg_snapshots",
        "exported snapshots, meaningless after a restart",
    ),
    ("pg_subtrans", "subtransaction state, rebuilt at startup"),
];

/// Top-level directories whose contents are never listed: WAL is fetched
/// separately (by the WAL follower with -x) into an empty pg_wal.
pub const SKIP_CONTENTS_OF_TOP: &[(&str, &str)] =
    &[("pg_wal", "WAL is copied by the WAL follower, not as data")];

/// Files skipped by exact name at any depth.
pub const SKIP_FILES: &[(&str, &str)] = &[
    (
        "postmaster.pid",
        "would make the copy look like a running server",
    ),
    (
        "postmaster.opts",
        "describes the running server's command line",
    ),
    (
        "postgresql.auto.conf.tmp",
        "a half-written ALTER SYSTEM file",
    ),
    ("current_logfiles.tmp", "a half-written log-collector file"),
    (
        "backup_label",
        "written by us from the stop call; an old one would be wrong",
    ),
    ("tablespace_map", "written by us from the stop call"),
    (
        "backup_manifest",
        "written by us for this backup, never copied",
    ),
    (".DS_Store", "macOS Finder litter"),
];

/// Files skipped by name prefix at any depth.
pub const SKIP_PREFIXES: &[(&str, &str)] = &[
    (
        "pg_internal.init",
        "relation cache init files, rebuilt at startup",
    ),
    (
        "pgsql_tmp",
        "temporary files and directories of running queries",
    ),
];

/// The file copied last: without it the copy cannot start, so an
/// interrupted copy can never be mistaken for a complete one.
pub const PG_CONTROL: &str = "global/pg_control";

/// A regular file to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to DEST (which mirrors the data directory; tablespace files
    /// live under pg_tblspc/<oid>/, a link in DEST).
    pub path: String,
    /// Size at listing time: the copy has exactly this size.
    pub size: u64,
    pub mtime: i64,
}

/// A file or directory whose path is not valid UTF-8 (a name in Latin-1,
/// say). The server cannot be sent such a name, so these are read apart
/// from the tasks, by a slower request that names them server-side
/// (odd_names.rs); everything else keeps its `String` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OddEntry {
    /// Relative to DEST, as the server spelled it.
    pub path: Vec<u8>,
    pub is_dir: bool,
    /// Size at listing time, as for [`FileEntry`].
    pub size: u64,
    pub mtime: i64,
}

/// One byte range of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// One read request: a chunk of a big file, or several small files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pieces: Vec<Piece>,
}

impl Task {
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.len).sum()
    }

    /// The first piece of each file the task holds (a file's pieces in a
    /// task are consecutive).
    pub fn file_starts(&self) -> impl Iterator<Item = &Piece> {
        let pieces = &self.pieces;
        (0..pieces.len())
            .filter(move |&n| n == 0 || pieces[n - 1].file != pieces[n].file)
            .map(move |n| &pieces[n])
    }
}

/// Everything the copy needs, decided before the first byte is read.
#[derive(Debug, Default)]
pub struct Plan {
    /// Directories to create, parents first (pg_tblspc/<oid> excluded: those
    /// are tablespace links, made separately).
    pub dirs: Vec<String>,
    pub files: Vec<FileEntry>,
    /// Read requests, biggest files first.
    pub tasks: Vec<Task>,
    /// Index into `files` of global/pg_control, copied after everything else.
    pub pg_control: Option<usize>,
    /// Entries the listing had that we did not copy, for -d output.
    pub skipped: Vec<String>,
    /// Files and directories whose paths are not valid UTF-8, parents
    /// first; not in `files`, `dirs` or `tasks`.
    pub odd: Vec<OddEntry>,
    /// Files of `files` that are not copies of a listed file, by index.
    pub assembled: BTreeMap<usize, Assembled>,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Directory names whose contents the listing must not descend into.
pub fn listing_skip_names() -> Vec<&'static str> {
    SKIP_CONTENTS_OF.iter().map(|(n, _)| *n).collect()
}

pub fn listing_skip_paths() -> Vec<&'static str> {
    SKIP_CONTENTS_OF_TOP.iter().map(|(n, _)| *n).collect()
}

/// Directories the copy needs even though nothing in them is copied.
pub fn required_empty_dirs(major: u32) -> Vec<&'static str> {
    let mut dirs = vec!["pg_wal", "pg_wal/archive_status"];
    if major >= 17 {
        dirs.push("pg_wal/summaries");
    }
    dirs
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_skipped_file(name: &str) -> bool {
    SKIP_FILES.iter().any(|(n, _)| *n == name)
        || SKIP_PREFIXES.iter().any(|(p, _)| name.starts_with(p))
}

/// Whether a directory is one that holds relation files: base/<db>, or
/// pg_tblspc/<oid>/<PG_ver_cat>/<db>.
fn is_relation_dir(dir: &str) -> bool {
    let parts: Vec<&str> = dir.split('/').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["base", db] => numeric(db),
        ["pg_tblspc", oid, ver, db] => numeric(oid) && ver.starts_with("PG_") && numeric(db),
        _ => false,
    }
}

/// For a relation file name (`16384`, `16384.1`, `16384_fsm`, `16384_init`,
/// `t3_16384`), its relfilenode part and whether it is temporary.
fn relation_file_parts(name: &str) -> Option<(&str, bool)> {
    let (temp, rest) = match name.strip_prefix('t') {
        Some(rest) => match rest.split_once('_') {
            Some((backend, rest))
                if backend.bytes().all(|b| b.is_ascii_digit()) && !backend.is_empty() =>
            {
                (true, rest)
            }
            _ => return None,
        },
        None => (false, name),
    };
    let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let tail = &rest[digits..];
    let fork_ok = matches!(tail.split('.').next(), Some("" | "_fsm" | "_vm" | "_init"));
    let seg_ok = tail
        .split_once('.')
        .is_none_or(|(_, seg)| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()));
    (fork_ok && seg_ok).then_some((&rest[..digits], temp))
}

/// Why a file under a relation directory is left out, if it is: temporary
/// relations, and every fork but the init fork of an unlogged relation.
fn relation_file_skip(
    dir: &str,
    name: &str,
    init_forks: &HashSet<(String, String)>,
) -> Option<&'static str> {
    let (node, temp) = relation_file_parts(name)?;
    if temp {
        return Some("temporary relation");
    }
    let is_init = name.ends_with("_init") || name.contains("_init.");
    if !is_init && init_forks.contains(&(dir.to_string(), node.to_string())) {
        return Some("unlogged relation: only its init fork is copied");
    }
    None
}

/// Where a listed path belongs in the copy, or why it is left out.
enum Placement {
    Copy(String),
    Skip(String),
}

/// Map a listed path to its place: tablespace contents are kept only under
/// their `PG_<major>_<catversion>` directory, as the server's backup does.
fn place(path: &str, tablespace_dirs: &BTreeMap<String, String>) -> Placement {
    let mut parts = path.splitn(4, '/');
    if let (Some("pg_tblspc"), Some(oid)) = (parts.next(), parts.next()) {
        match (tablespace_dirs.get(oid), parts.next()) {
            (Some(_), None) => {
                return Placement::Skip(format!("{path}: tablespace link, created separately"));
            }
            (Some(version_dir), Some(sub)) if sub != version_dir => {
                return Placement::Skip(format!("{path}: belongs to another server version"));
            }
            _ => {}
        }
    }
    Placement::Copy(path.to_string())
}

/// One listed entry, its path checked: `path` is what the rules judge,
/// `odd` the raw bytes when they are not UTF-8 (then `path` has them
/// replaced, which the rules, matching ASCII names only, judge alike).
struct Checked<'l> {
    path: String,
    odd: Option<Vec<u8>>,
    entry: &'l ListedEntry,
}

/// Build the plan from one listing. Paths that are not safe relative paths
/// are an error: we will not guess where they go. Paths that are not valid
/// UTF-8 go to `odd`, after the same rules.
pub fn build(
    listing: &[ListedEntry],
    tablespaces: &[Tablespace],
    tablespace_version_dir: &str,
    only_paths: Option<&[Vec<u8>]>,
    chunk_size: u64,
) -> Result<Plan, String> {
    // Only linked tablespaces are special; in-place ones (a plain directory
    // in pg_tblspc) are copied like any other directory.
    let tablespace_dirs: BTreeMap<String, String> = tablespaces
        .iter()
        .filter(|t| t.location.starts_with('/'))
        .map(|t| (t.oid.to_string(), tablespace_version_dir.to_string()))
        .collect();
    let entries = listing.iter().map(check).collect::<Result<Vec<_>, _>>()?;
    let init_forks = init_forks(&entries);
    let wanted: Option<HashSet<&[u8]>> = only_paths.map(|p| p.iter().map(Vec::as_slice).collect());
    let mut plan = Plan::default();
    for e in &entries {
        plan.add(e, &tablespace_dirs, &init_forks, wanted.as_ref());
    }
    if let Some(w) = &wanted {
        plan.check_wanted(w)?;
    }
    plan.dirs
        .sort_by_key(|d| (d.matches('/').count(), d.clone()));
    plan.odd.sort_by_key(|o| {
        (
            o.path.iter().filter(|&&b| b == b'/').count(),
            o.path.clone(),
        )
    });
    // Biggest first, so the long reads start early and the tail is short.
    plan.files
        .sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    plan.pg_control = plan.files.iter().position(|f| f.path == PG_CONTROL);
    plan.tasks = chunk(&plan.files, plan.pg_control, chunk_size);
    Ok(plan)
}

/// A listed path in canonical form, or why it is refused.
fn check(entry: &ListedEntry) -> Result<Checked<'_>, String> {
    let raw = normalize_relative(&entry.path)
        .map_err(|err| format!("the server listed an unsafe path: {err}"))?;
    let (path, odd) = match String::from_utf8(raw) {
        Ok(path) => (path, None),
        Err(e) => (
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
            Some(e.into_bytes()),
        ),
    };
    Ok(Checked { path, odd, entry })
}

/// (relation directory, relfilenode) of every unlogged relation: those
/// that have an init fork.
fn init_forks(entries: &[Checked]) -> HashSet<(String, String)> {
    entries
        .iter()
        .filter(|c| !c.entry.is_dir && c.odd.is_none())
        .filter_map(|c| {
            let (dir, name) = c.path.rsplit_once('/')?;
            let node = name.strip_suffix("_init")?;
            (is_relation_dir(dir) && node.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (dir.to_string(), node.to_string()))
        })
        .collect()
}

impl Plan {
    /// Put one listed entry where the rules say: a directory, a file, an
    /// odd name, or the skipped list. With `wanted` (--stdin) only the
    /// files named there are copied.
    fn add(
        &mut self,
        checked: &Checked,
        tablespace_dirs: &BTreeMap<String, String>,
        init_forks: &HashSet<(String, String)>,
        wanted: Option<&HashSet<&[u8]>>,
    ) {
        let Checked { path, odd, entry } = checked;
        let name = file_name(path);
        let path = match place(path, tablespace_dirs) {
            Placement::Copy(p) => p,
            Placement::Skip(why) => {
                self.skipped.push(why);
                return;
            }
        };
        if !entry.is_dir && is_skipped_file(name) {
            self.skipped.push(format!("{path}: excluded by name"));
            return;
        }
        if let Some(raw) = odd {
            if wanted.is_none_or(|w| !entry.is_dir && w.contains(raw.as_slice())) {
                self.odd.push(OddEntry {
                    path: raw.clone(),
                    is_dir: entry.is_dir,
                    size: entry.size,
                    mtime: entry.mtime,
                });
            }
            return;
        }
        if entry.is_dir {
            self.dirs.push(path);
            return;
        }
        if let Some((dir, _)) = path.rsplit_once('/') {
            if is_relation_dir(dir) {
                if let Some(why) = relation_file_skip(dir, name, init_forks) {
                    self.skipped.push(format!("{path}: {why}"));
                    return;
                }
            }
        }
        if wanted.is_some_and(|w| !w.contains(path.as_bytes())) {
            return;
        }
        self.files.push(FileEntry {
            path,
            size: entry.size,
            mtime: entry.mtime,
        });
    }

    /// --stdin: every path named there must be a file the plan copies.
    fn check_wanted(&self, wanted: &HashSet<&[u8]>) -> Result<(), String> {
        let found: HashSet<&[u8]> = self
            .files
            .iter()
            .map(|f| f.path.as_bytes())
            .chain(
                self.odd
                    .iter()
                    .filter(|o| !o.is_dir)
                    .map(|o| o.path.as_slice()),
            )
            .collect();
        match wanted.iter().find(|p| !found.contains(*p)) {
            Some(missing) => Err(format!(
                "--stdin names {:?}, which is not a file the backup copies",
                String::from_utf8_lossy(missing)
            )),
            None => Ok(()),
        }
    }
}

/// The most bytes one row of a read request carries. The server builds each
/// row in freshly allocated buffers: rows of 8 MB cost it 294,000 page
/// faults and three times the CPU per 384 MB read, rows of 64 kB to 256 kB
/// none (bench/README.md, "rows of 256 kB"). On the client a row this
/// size stays in the CPU cache between the socket and the page cache.
pub const MAX_ROW: u64 = 256 << 10;

/// `[offset, offset + len)` as consecutive ranges of at most [`MAX_ROW`]
/// bytes (one empty range when `len` is 0).
pub fn rows(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let count = len.div_ceil(MAX_ROW).max(1);
    (0..count).map(move |n| {
        let start = n * MAX_ROW;
        (offset + start, MAX_ROW.min(len - start))
    })
}

/// Cut files into read requests of at most `chunk_size` bytes, each piece
/// at most [`MAX_ROW`] (one row). Big files are split so several workers
/// share them; small files are packed several to a request so a cluster of
/// tiny files does not cost a round trip each. Every file gets at least one
/// piece (an empty file a zero-length one), so every file is created.
/// `skip` (pg_control) gets no task.
pub fn chunk(files: &[FileEntry], skip: Option<usize>, chunk_size: u64) -> Vec<Task> {
    chunk_where(files, |i| Some(i) == skip, chunk_size)
}

/// Most rows in one request.
pub const MAX_PIECES: usize = 256;

/// [`chunk`] of the files for which `skip` is false.
pub fn chunk_where(
    files: &[FileEntry],
    skip: impl Fn(usize) -> bool,
    chunk_size: u64,
) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut batch = Task { pieces: Vec::new() };
    let piece = |file, (offset, len)| Piece { file, offset, len };
    for (i, f) in files.iter().enumerate() {
        if skip(i) {
            continue;
        }
        if f.size >= chunk_size {
            let mut offset = 0;
            while offset < f.size {
                let len = chunk_size.min(f.size - offset);
                tasks.push(Task {
                    pieces: rows(offset, len).map(|r| piece(i, r)).collect(),
                });
                offset += len;
            }
            continue;
        }
        let count = f.size.div_ceil(MAX_ROW).max(1) as usize;
        if batch.bytes() + f.size > chunk_size || batch.pieces.len() + count > MAX_PIECES {
            tasks.push(std::mem::replace(&mut batch, Task { pieces: Vec::new() }));
        }
        batch.pieces.extend(rows(0, f.size).map(|r| piece(i, r)));
    }
    if !batch.pieces.is_empty() {
        tasks.push(batch);
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> ListedEntry {
        ListedEntry {
            path: path.as_bytes().to_vec(),
            is_dir: false,
            size,
            mtime: 0,
        }
    }
    fn dir(path: &str) -> ListedEntry {
        ListedEntry {
            path: path.as_bytes().to_vec(),
            is_dir: true,
            size: 0,
            mtime: 0,
        }
    }
    fn copied(plan: &Plan) -> Vec<&str> {
        let mut v: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn excludes_what_the_server_excludes() {
        let listing = vec![
            file("PG_VERSION", 3),
            file("postmaster.pid", 80),
            file("postmaster.opts", 80),
            file("backup_label", 200),
            file("postgresql.auto.conf", 88),
            file("postgresql.auto.conf.tmp", 88),
            dir("global"),
            file("global/pg_control", 8192),
            file("global/pg_internal.init", 100),
            file("global/pg_internal.init.123", 100),
            dir("base"),
            dir("base/5"),
            file("base/5/1259", 8192),
            dir("base/pgsql_tmp"),
            file("base/5/pgsql_tmp123.0", 8192),
            dir("pg_replslot"),
            dir("pg_stat_tmp"),
        ];
        let plan = build(&listing, &[], "PG_15_1", None, 8 << 20).unwrap();
        assert_eq!(
            copied(&plan),
            [
                "PG_VERSION",
                "base/5/1259",
                "global/pg_control",
                "postgresql.auto.conf"
            ]
        );
        assert!(plan.dirs.contains(&"pg_replslot".to_string()));
        assert!(plan.dirs.contains(&"pg_stat_tmp".to_string()));
        assert_eq!(
            plan.dirs[0], "base",
            "parents come before children: {:?}",
            plan.dirs
        );
        assert_eq!(plan.files[plan.pg_control.unwrap()].path, PG_CONTROL);
        assert!(
            plan.tasks
                .iter()
                .flat_map(|t| &t.pieces)
                .all(|p| Some(p.file) != plan.pg_control)
        );
    }

    #[test]
    fn unlogged_relations_keep_only_their_init_fork() {
        let listing = vec![
            dir("base/5"),
            file("base/5/16384", 8192),
            file("base/5/16384.1", 8192),
            file("base/5/16384_fsm", 8192),
            file("base/5/16384_vm", 8192),
            file("base/5/16384_init", 0),
            file("base/5/16390", 8192),
            file("base/5/t3_16400", 8192),
            file("base/5/t3_16400_fsm", 8192),
        ];
        let plan = build(&listing, &[], "PG_15_1", None, 8 << 20).unwrap();
        assert_eq!(copied(&plan), ["base/5/16384_init", "base/5/16390"]);
    }

    #[test]
    fn tablespaces_keep_only_this_versions_directory() {
        let ts = Tablespace {
            oid: 16500,
            name: "t".into(),
            location: "/srv/ts".into(),
        };
        let listing = vec![
            dir("pg_tblspc"),
            dir("pg_tblspc/16500"),
            dir("pg_tblspc/16500/PG_15_1"),
            dir("pg_tblspc/16500/PG_15_1/5"),
            file("pg_tblspc/16500/PG_15_1/5/16501", 100),
            file("pg_tblspc/16500/PG_15_1/5/16502_init", 0),
            file("pg_tblspc/16500/PG_15_1/5/16502", 100),
            dir("pg_tblspc/16500/PG_14_9"),
            file("pg_tblspc/16500/PG_14_9/5/1", 100),
        ];
        let plan = build(&listing, &[ts], "PG_15_1", None, 8 << 20).unwrap();
        assert_eq!(
            copied(&plan),
            [
                "pg_tblspc/16500/PG_15_1/5/16501",
                "pg_tblspc/16500/PG_15_1/5/16502_init"
            ]
        );
        assert_eq!(
            plan.dirs,
            [
                "pg_tblspc",
                "pg_tblspc/16500/PG_15_1",
                "pg_tblspc/16500/PG_15_1/5"
            ]
        );
    }

    #[test]
    fn rejects_unsafe_server_paths() {
        for bad in ["../etc/passwd", "/etc/passwd", "base/../../x"] {
            let err = build(&[file(bad, 1)], &[], "PG_15_1", None, 8 << 20).unwrap_err();
            assert!(err.contains("unsafe path"), "{bad}: {err}");
        }
    }

    #[test]
    fn names_that_are_not_utf8_go_apart_after_the_same_rules() {
        let raw = |path: &[u8], is_dir| ListedEntry {
            path: path.to_vec(),
            is_dir,
            size: 3,
            mtime: 0,
        };
        let listing = vec![
            file("base/1/1259", 8192),
            raw(b"FOO\xe0\xe0\xe0BAR", false),
            raw(b"dir\xe9", true),
            raw(b"dir\xe9/./inner", false),
            raw(b"pgsql_tmp\xe9", false),
            raw(b"pg_tblspc/16400/PG_9_\xe9", true),
            raw(b"pg_tblspc/16400/PG_15_1/\xe9", false),
        ];
        let ts = Tablespace {
            oid: 16400,
            name: "ts".into(),
            location: "/srv/ts".into(),
        };
        let plan = build(&listing, &[ts], "PG_15_1", None, 8 << 20).unwrap();
        assert_eq!(
            copied(&plan),
            ["base/1/1259"],
            "the hot path keeps UTF-8 names"
        );
        let odd: Vec<(&[u8], bool)> = plan
            .odd
            .iter()
            .map(|o| (o.path.as_slice(), o.is_dir))
            .collect();
        assert_eq!(
            odd,
            [
                (&b"FOO\xe0\xe0\xe0BAR"[..], false),
                (b"dir\xe9", true),
                (b"dir\xe9/inner", false),
                (b"pg_tblspc/16400/PG_15_1/\xe9", false),
            ]
        );
        let err = build(&[raw(b"\xe9/../../x", false)], &[], "x", None, 100).unwrap_err();
        assert!(err.contains("unsafe path"), "{err}");
        let only = vec![b"base/1/1259".to_vec()];
        assert!(
            build(&listing, &[], "x", Some(&only), 100)
                .unwrap()
                .odd
                .is_empty()
        );
    }

    #[test]
    fn stdin_selects_files_and_refuses_unknown_ones() {
        let listing = vec![file("a", 1), file("b", 2), file("postmaster.pid", 3)];
        let only = vec![b"b".to_vec()];
        assert_eq!(
            copied(&build(&listing, &[], "x", Some(&only), 100).unwrap()),
            ["b"]
        );
        let only = vec![b"postmaster.pid".to_vec()];
        assert!(build(&listing, &[], "x", Some(&only), 100).is_err());
    }

    #[test]
    fn chunking_covers_every_byte_once_and_splits_big_files() {
        let files = vec![
            FileEntry {
                path: "big".into(),
                size: 25,
                mtime: 0,
            },
            FileEntry {
                path: "ten".into(),
                size: 10,
                mtime: 0,
            },
            FileEntry {
                path: "six".into(),
                size: 6,
                mtime: 0,
            },
            FileEntry {
                path: "three".into(),
                size: 3,
                mtime: 0,
            },
            FileEntry {
                path: "ctl".into(),
                size: 8,
                mtime: 0,
            },
            FileEntry {
                path: "empty".into(),
                size: 0,
                mtime: 0,
            },
        ];
        let tasks = chunk(&files, Some(4), 10);
        for t in &tasks {
            assert!(t.bytes() <= 10, "{t:?}");
        }
        for (i, f) in files.iter().enumerate() {
            let mut pieces: Vec<Piece> = tasks
                .iter()
                .flat_map(|t| t.pieces.clone())
                .filter(|p| p.file == i)
                .collect();
            pieces.sort_by_key(|p| p.offset);
            if i == 4 {
                assert!(pieces.is_empty(), "pg_control must not be a task");
                continue;
            }
            assert!(!pieces.is_empty(), "{} has no piece", f.path);
            let mut next = 0;
            for p in pieces {
                assert_eq!(p.offset, next);
                next += p.len;
            }
            assert_eq!(next, f.size);
        }
        // The 25-byte file is split in three; "six" and "three" share one request.
        assert_eq!(
            tasks
                .iter()
                .filter(|t| t.pieces.iter().any(|p| p.file == 0))
                .count(),
            3
        );
        assert!(tasks.iter().any(|t| t.pieces.len() >= 2));
    }

    #[test]
    fn requests_are_cut_into_rows_of_at_most_max_row() {
        assert_eq!(rows(5, 0).collect::<Vec<_>>(), vec![(5, 0)]);
        assert_eq!(
            rows(8192, 2 * MAX_ROW + 1).collect::<Vec<_>>(),
            vec![
                (8192, MAX_ROW),
                (8192 + MAX_ROW, MAX_ROW),
                (8192 + 2 * MAX_ROW, 1)
            ]
        );
        let file = |path: &str, size| FileEntry {
            path: path.into(),
            size,
            mtime: 0,
        };
        // One 8 MB request per task, as rows of MAX_ROW; a 1 MB file packed
        // with a small one still comes as rows.
        let chunk_size = 8 << 20;
        let files = vec![
            file("big", 20 << 20),
            file("medium", 1 << 20),
            file("small", 100),
        ];
        let tasks = chunk(&files, None, chunk_size);
        assert_eq!(tasks.len(), 4);
        for t in &tasks {
            assert!(t.bytes() <= chunk_size);
            assert!(t.pieces.iter().all(|p| p.len <= MAX_ROW), "{t:?}");
        }
        assert_eq!(tasks[0].pieces.len(), (chunk_size / MAX_ROW) as usize);
        let last = &tasks[3].pieces;
        assert_eq!(last.len(), 5);
        assert_eq!((last[4].file, last[4].len), (2, 100));
    }

    #[test]
    fn relation_file_names() {
        assert_eq!(relation_file_parts("16384"), Some(("16384", false)));
        assert_eq!(relation_file_parts("16384.12"), Some(("16384", false)));
        assert_eq!(relation_file_parts("16384_vm"), Some(("16384", false)));
        assert_eq!(relation_file_parts("t12_16384_fsm"), Some(("16384", true)));
        assert_eq!(relation_file_parts("PG_VERSION"), None);
        assert_eq!(relation_file_parts("pg_filenode.map"), None);
        assert_eq!(relation_file_parts("16384.x"), None);
    }
}
