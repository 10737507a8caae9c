//! The plain format (`-F p`): the copy is a data directory, each piece
//! written straight to its place in DEST ([`Dest`]). `dest` is the
//! directory itself (checks, writes, removal), which --delta uses too; this
//! file makes it an [`Output`] and the workers' [`Sink`].

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Result;
use log::{info, warn};

use super::dest::Dest;
use super::{Output, shell_quote};
use crate::output::{Scratch, Sink};
use crate::plan::{self, FileEntry, Plan, Task};
use crate::session::server::ServerInfo;

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

    fn takes_tasks_in_any_order(&self) -> bool {
        true
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
