//! The WAL follower: copies the WAL a backup needs into DEST/pg_wal while
//! the data files are being copied, and the final sweep that makes sure
//! every segment through the backup's stop LSN is there.
//!
//! The original script re-fetched a whole segment whenever its ctime
//! changed. That reads each 16 MB segment dozens of times, and ctime has a
//! one-second resolution, so a write made in the same second as our read can
//! go unnoticed. Instead we ask the server how far WAL is flushed: bytes
//! below that position never change again, so each poll reads only the bytes
//! of each segment between what we already have and the flush position, and
//! segments beyond it (recycled files with old contents) are never read.
//! The directory listing still tells us which segments exist.
//!
//! WAL of every timeline from the start one on is copied, with the history
//! files: a standby that follows a promoted server switches timelines, and
//! the copy then needs each timeline's WAL up to where the next began (as
//! PostgreSQL's `-X fetch` copies it). The final sweep checks exactly that,
//! from the history of the timeline the backup ended on.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use log::{debug, info};
use postgres::types::PgLsn;

use crate::abort::Abort;
use crate::bail_with;
use crate::error::Exit;
use crate::output::dest::Dest;
use crate::pg::Lsn;
use crate::pg::timeline::{History, WalRange};
use crate::pg::wal_names::{is_history_file, parse_segment_name, segment_name};
use crate::plan;
use crate::progress::Progress;
use crate::session::reader::Reader;
use crate::session::retry::{Reconnect, replace_lost_session};
use crate::session::server::{self, ServerInfo};

/// Copies WAL from a start segment on into DEST/pg_wal.
pub struct WalFollower<'a> {
    reader: Reader,
    reconnect: Reconnect<'a>,
    info: ServerInfo,
    /// The timeline of the start position; WAL of older ones is not copied.
    timeline: u32,
    start_lsn: Lsn,
    start_segno: u64,
    chunk_size: u64,
    /// For each (timeline, segment) we hold: how many of its bytes are
    /// final in DEST.
    have: BTreeMap<(u32, u64), u64>,
    /// Set by the final sweep: WAL at or past the backup's stop LSN is not
    /// needed and never fetched.
    end: Option<Lsn>,
    /// History files copied, with their size.
    history: BTreeMap<String, u64>,
    /// The ancestry each copied history file records, by its timeline.
    histories: BTreeMap<u32, History>,
    /// Counts the WAL bytes read from the server (the summary's figure).
    progress: &'a Progress,
}

impl<'a> WalFollower<'a> {
    pub fn new(
        reader: Reader,
        reconnect: Reconnect<'a>,
        info: &ServerInfo,
        timeline: u32,
        start_lsn: Lsn,
        chunk_size: u64,
        progress: &'a Progress,
    ) -> Self {
        WalFollower {
            reader,
            reconnect,
            info: info.clone(),
            timeline,
            start_lsn,
            start_segno: start_lsn / info.wal_segment_size,
            chunk_size,
            have: BTreeMap::new(),
            end: None,
            history: BTreeMap::new(),
            histories: BTreeMap::new(),
            progress,
        }
    }

    /// The first segment this follower copies.
    pub fn start_segment(&self) -> String {
        segment_name(self.timeline, self.start_segno, self.info.wal_segment_size)
    }

    /// Copy what is new since the last poll: for every segment from the start
    /// on and at or below the flush position, the bytes not yet copied. A
    /// lost session is replaced; the next try starts where the last stopped.
    pub fn poll(&mut self, dest: &Dest, abort: &Abort) -> Result<Lsn> {
        let mut attempt = 0;
        loop {
            match self.poll_once(dest) {
                Ok(flush) => return Ok(flush),
                Err(e) => {
                    replace_lost_session(e, &mut self.reader, &mut attempt, self.reconnect, abort)?
                }
            }
        }
    }

    fn poll_once(&mut self, dest: &Dest) -> Result<Lsn> {
        let flush = server::wal_flush_lsn(self.reader.client(), &self.info)?;
        let upto = self.end.map_or(flush, |end| end.min(flush));
        let listing = server::list_directory(self.reader.client(), "pg_wal")?;
        let seg_size = self.info.wal_segment_size;
        for entry in listing.iter().filter(|e| !e.is_dir) {
            let Ok(path) = std::str::from_utf8(&entry.path) else {
                continue;
            };
            let name = path.trim_start_matches("pg_wal/");
            if is_history_file(name) {
                if self.history.get(name) != Some(&entry.size) {
                    self.fetch_history(dest, name, entry.size)?;
                }
                continue;
            }
            let Some((tli, segno)) = parse_segment_name(name, seg_size) else {
                continue;
            };
            if tli < self.timeline || segno < self.start_segno || segno * seg_size >= upto {
                continue;
            }
            let want = seg_size.min(upto - segno * seg_size);
            let have = self.have.get(&(tli, segno)).copied().unwrap_or(0);
            if want > have {
                self.fetch_segment(dest, tli, segno, have, want)?;
            }
        }
        Ok(flush)
    }

    /// Copy a history file whole and learn the ancestry it records.
    fn fetch_history(&mut self, dest: &Dest, name: &str, size: u64) -> Result<()> {
        self.fetch(dest, name, 0, size, Some(size))?;
        let src = format!("pg_wal/{name}");
        let text = std::fs::read(dest.path(&src))?;
        let timeline = u32::from_str_radix(&name[..8], 16)?;
        let history = History::parse(timeline, &String::from_utf8_lossy(&text))
            .map_err(|e| crate::error::Failure::new(Exit::Wal, format!("{e:#}")))?;
        self.histories.insert(timeline, history);
        self.history.insert(name.to_string(), size);
        Ok(())
    }

    fn fetch_segment(
        &mut self,
        dest: &Dest,
        tli: u32,
        segno: u64,
        from: u64,
        to: u64,
    ) -> Result<()> {
        let name = segment_name(tli, segno, self.info.wal_segment_size);
        debug!("WAL {name}: bytes {from}..{to}");
        if !self.have.contains_key(&(tli, segno)) {
            // Whole, never sparse: the copy must not run out of disk later.
            dest.allocate(&format!("pg_wal/{name}"), self.info.wal_segment_size)?;
        }
        let got = self.fetch(
            dest,
            &name,
            from,
            to - from,
            Some(self.info.wal_segment_size),
        )?;
        if got < to - from {
            bail_with!(
                Exit::Wal,
                "WAL segment {name} vanished or shrank on the server while it was copied"
            );
        }
        self.have.insert((tli, segno), to);
        Ok(())
    }

    /// Read `len` bytes at `offset` of pg_wal/`name` into DEST/pg_wal/`name`,
    /// which is made `file_len` long; returns the bytes read.
    fn fetch(
        &mut self,
        dest: &Dest,
        name: &str,
        offset: u64,
        len: u64,
        file_len: Option<u64>,
    ) -> Result<u64> {
        let src = format!("pg_wal/{name}");
        let mut open = None;
        let mut done = 0;
        while done < len {
            let n = self.chunk_size.min(len - done);
            let ranges: Vec<_> = plan::rows(offset + done, n)
                .map(|(o, l)| (src.as_str(), o, l))
                .collect();
            let mut got = vec![0; ranges.len()];
            self.reader.read(&ranges, |i, data| {
                if let Some(bytes) = data.filter(|b| !b.is_empty()) {
                    dest.write_at(&mut open, &src, ranges[i].1, bytes, file_len)?;
                    got[i] = bytes.len() as u64;
                }
                Ok(())
            })?;
            // What counts is the part read in full from the start: past a
            // short row the segment ended (it is renamed or recycled).
            let full = ranges
                .iter()
                .zip(&got)
                .take_while(|(r, g)| r.2 == **g)
                .count();
            let read: u64 = got.iter().take(full + 1).sum();
            done += read;
            self.progress.add_wal(read);
            if read < n {
                break;
            }
        }
        Ok(done)
    }

    /// Poll every `delay` until `abort` is set or `done` says stop.
    pub fn follow(
        &mut self,
        dest: &Dest,
        delay: Duration,
        abort: &Abort,
        done: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        let done = || done.load(std::sync::atomic::Ordering::SeqCst);
        while !done() && !abort.is_set() {
            self.poll(dest, abort)?;
            abort.sleep_unless(delay, done);
        }
        Ok(())
    }

    /// The ancestry of the timeline WAL position `end` is on: the newest
    /// timeline we hold a history of that descends from the start one and
    /// began before `end`.
    fn history_at(&self, end: Lsn) -> History {
        self.histories
            .values()
            .rev()
            .find(|h| h.descends_from(self.timeline) && h.begin() < end)
            .cloned()
            .unwrap_or_else(|| History::single(self.timeline))
    }

    /// The manifest's WAL ranges from the start to `end`, one per timeline.
    pub fn wal_ranges(&self, end: Lsn) -> Vec<WalRange> {
        self.history_at(end).ranges(self.start_lsn, end)
    }

    /// The final sweep: make sure every byte of WAL from the start up to
    /// `end_lsn` is in DEST, of each timeline up to where the next began
    /// (the rest of the last segment stays zero, as after a WAL switch). On
    /// a standby, waits until it has received WAL up to `end_lsn`.
    pub fn complete_through(
        &mut self,
        dest: &Dest,
        end_lsn: Lsn,
        delay: Duration,
        abort: &Abort,
    ) -> Result<()> {
        let seg_size = self.info.wal_segment_size;
        self.end = Some(end_lsn);
        loop {
            if self.poll(dest, abort)? >= end_lsn {
                break;
            }
            info!(
                "waiting for the server to flush WAL up to {}",
                PgLsn::from(end_lsn)
            );
            if abort.sleep(delay) {
                anyhow::bail!("interrupted while waiting for WAL");
            }
        }
        let ranges = self.wal_ranges(end_lsn);
        for range in &ranges {
            for segno in range.start_lsn / seg_size..=(range.end_lsn - 1) / seg_size {
                let want = seg_size.min(range.end_lsn - segno * seg_size);
                let have = self.have.get(&(range.timeline, segno)).copied();
                if have.unwrap_or(0) < want {
                    // poll() skipped it because it was not listed: it is gone.
                    bail_with!(
                        Exit::Wal,
                        "WAL segment {} was removed on the server before it could be copied; \
                         let the role create a replication slot (REPLICATION) or raise wal_keep_size",
                        segment_name(range.timeline, segno, seg_size)
                    );
                }
            }
        }
        let last = ranges.first().expect("a backup has a WAL range");
        info!(
            "WAL {} to {} copied{} ({} bytes read)",
            self.start_segment(),
            segment_name(last.timeline, (end_lsn - 1) / seg_size, seg_size),
            match ranges.len() {
                1 => String::new(),
                n => format!(", over {n} timelines"),
            },
            self.progress.wal_bytes()
        );
        Ok(())
    }

    /// How many segments this follower has copied (wholly or in part).
    pub fn segments_copied(&self) -> u64 {
        self.have.len() as u64
    }

    /// Segments held completely, newest last (for the WAL follower mode).
    pub fn complete_segments(&self) -> impl Iterator<Item = u64> + '_ {
        let size = self.info.wal_segment_size;
        self.have
            .iter()
            .filter(move |(_, have)| **have == size)
            .map(|((_, segno), _)| *segno)
    }
}
