//! Where a backup is written: a plain data directory ([`plain`], on a
//! [`Dest`]) or tar archives laid out as PostgreSQL's own `pg_basebackup
//! -F t` writes them ([`tar`]). The backup picks one [`Output`] at the
//! start and drives both the same way, so the order of the steps (data,
//! WAL, labels, pg_control last) lives in one place.

pub mod dest;
pub mod plain;
pub mod tar;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::abort::Abort;
use crate::plan::{FileEntry, Plan, Task};
use crate::session::server::ServerInfo;
use dest::Dest;
use tar::task::TaskParts;

/// The file -R appends the standby settings to (PostgreSQL 12+).
pub const AUTO_CONF: &str = "postgresql.auto.conf";

/// What a worker keeps for its sink from one piece to the next.
#[derive(Default)]
pub struct Scratch {
    /// Tar output: the current task's share of each archive.
    pub tar: Vec<TaskParts>,
    /// The file the last piece went to, kept open for the next piece of it
    /// (plain output), and closed when the worker ends.
    pub open: Option<dest::OpenFile>,
}

/// Where the workers put what they read.
pub trait Sink: Sync {
    /// Called on the fetch thread before task `index` is read.
    fn wait_turn(&self, _index: usize, _abort: &Abort) {}

    /// Piece `i` of `task`: the bytes the server returned (fewer if the
    /// file shrank), `None` if the file was gone. The pieces of a task come
    /// in order, on the worker that fetched it.
    fn piece(
        &self,
        scratch: &mut Scratch,
        task: &Task,
        i: usize,
        file: &FileEntry,
        data: Option<&[u8]>,
    ) -> Result<()>;

    /// After every piece of task `index`.
    fn end_task(&self, _index: usize, _task: &Task, _scratch: &mut Scratch) -> Result<()> {
        Ok(())
    }

    /// Whether a file that vanishes after its first piece stays in the copy
    /// at its listed size with zeros for the missing bytes (a stream cannot
    /// take its start back); otherwise it is left out.
    fn zero_fills_vanished_tail(&self) -> bool {
        false
    }

    /// Whether tasks may be read out of plan order (a stream must be
    /// written in order, and [`Sink::wait_turn`] holds a task back only
    /// a bounded number of tasks ahead).
    fn takes_tasks_in_any_order(&self) -> bool {
        false
    }
}

/// What the backup does with the copy, whatever its format.
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
    /// (a name the server listed as bytes, see [`crate::plan::OddEntry`]).
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

/// The modification time of the files the backup makes itself (labels,
/// the manifest, directory entries of a tar), in seconds since 1970.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A path as the user can paste it into a shell, in the closing message.
pub fn shell_quote(p: &Path) -> String {
    let s = p.to_string_lossy();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote(Path::new("/srv/pg/copy")), "/srv/pg/copy");
        assert_eq!(shell_quote(Path::new("/srv/my copy")), "'/srv/my copy'");
    }
}
