//! --incremental: the checks before the backup starts, the WAL summaries
//! after it started, and the plan turned into PostgreSQL's incremental
//! format, as the server's src/backend/backup/basebackup_incremental.c does
//! (`CreateIncrementalBackupInfo`, `PrepareForIncrementalBackup`,
//! `GetFileBackupMethod`); INCREMENTAL-DESIGN.md has the facts.

use postgres::types::PgLsn;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use log::info;
use postgres::Client;

use crate::abort::Abort;
use crate::bail_with;
use crate::cli::IncrementalSettings;
use crate::error::{Exit, Failure};
use crate::incremental::decide::{Method, Rules, file_backup_method};
use crate::incremental::file::{Assembled, Header};
use crate::incremental::prior::{PriorManifest, SummaryPlan, TimelineEntry, plan_summaries};
use crate::incremental::relpath::classify;
use crate::incremental::summary::{BlockRefTable, choose_summaries, reaches_switch_point};
use crate::incremental::{Geometry, INCREMENTAL_PREFIX};
use crate::pg::timeline::History;
use crate::pg::version::MINIMUM_VERSION_FOR_INCREMENTAL;
use crate::pg::{BLCKSZ, Lsn};
use crate::plan::{self, FileEntry, MAX_PIECES, Piece, Plan, Task};
use crate::session::server::ServerInfo;
use crate::session::summaries;

/// The prior backup, as far as this backup needs it.
pub struct Prior {
    manifest: PriorManifest,
    geometry: Geometry,
    wait: Duration,
}

/// What the backup label needs: `INCREMENTAL FROM LSN` and `... TLI`.
#[derive(Debug, Clone, Copy)]
pub struct From {
    pub lsn: Lsn,
    pub tli: u32,
}

/// The prior backup's manifest, read and parsed before anything else: a
/// file that cannot be read or is no manifest is a usage error.
pub fn read_prior(settings: &IncrementalSettings) -> Result<PriorManifest> {
    let path = &settings.prior_manifest;
    let bytes = std::fs::read(path).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("--incremental: could not read {}: {e}", path.display()),
        )
    })?;
    PriorManifest::parse(&bytes).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!(
                "--incremental: {} is not a usable backup manifest: {e:#}",
                path.display()
            ),
        )
        .into()
    })
}

/// Before the backup starts: whether the server can take an incremental
/// backup on top of `manifest` (version, summarize_wal, block and segment
/// size, system identifier, timeline history); exit code 4 if not.
pub fn check_server(
    manifest: PriorManifest,
    settings: &IncrementalSettings,
    client: &mut Client,
    info: &ServerInfo,
) -> Result<Prior> {
    let refuse = |what: String| Failure::new(Exit::Server, format!("--incremental: {what}"));
    if info.version_num < MINIMUM_VERSION_FOR_INCREMENTAL {
        bail_with!(
            Exit::Server,
            "--incremental: the server is PostgreSQL {}, incremental backups need PostgreSQL 17 or later",
            info.major()
        );
    }
    let s = summaries::settings(client)?;
    if s.summarize_wal != "on" {
        bail_with!(
            Exit::Server,
            "--incremental: the server has summarize_wal = {}, incremental backups need summarize_wal = on",
            s.summarize_wal
        );
    }
    let geometry = Geometry::default();
    if s.block_size != BLCKSZ as u64 || s.segment_blocks != u64::from(geometry.relseg_size) {
        bail_with!(
            Exit::Server,
            "--incremental: the server has block_size = {} and segment_size = {} blocks, \
             pg_combinebackup is built for {} and {}",
            s.block_size,
            s.segment_blocks,
            BLCKSZ,
            geometry.relseg_size
        );
    }
    manifest
        .check_server(info.system_identifier)
        .map_err(|e| refuse(format!("{e:#}")))?;
    // The checks of the timeline history that need no start LSN, now: the
    // end of the prior's WAL is checked again against the real start.
    let timeline = crate::session::server::current_timeline(client)?;
    let history = history(client, timeline)?;
    plan_summaries(&manifest, &history, timeline, u64::MAX)
        .map_err(|e| refuse(format!("{e:#}")))?;
    Ok(Prior {
        manifest,
        geometry,
        wait: settings.wait,
    })
}

/// `readTimeLineHistory(timeline)` over SQL.
fn history(client: &mut Client, timeline: u32) -> Result<Vec<TimelineEntry>> {
    let history = match summaries::timeline_history(client, timeline)? {
        Some(text) => History::parse(timeline, &text)?,
        None => History::single(timeline),
    };
    Ok(history
        .entries()
        .map(|(tli, begin, end)| TimelineEntry { tli, begin, end })
        .collect())
}

/// After the backup started at `start_lsn` on `timeline`: the WAL
/// summaries from the prior backup's start to this one's, merged, and the
/// plan made incremental with them.
pub fn apply(
    prior: &Prior,
    client: &mut Client,
    info: &ServerInfo,
    (timeline, start_lsn): (u32, Lsn),
    plan: &mut Plan,
    chunk_size: u64,
    abort: &Abort,
) -> Result<From> {
    let history = history(client, timeline)?;
    let summary_plan = plan_summaries(&prior.manifest, &history, timeline, start_lsn)
        .map_err(|e| Failure::new(Exit::Server, format!("--incremental: {e:#}")))?;
    wait_for_summarizer(client, start_lsn, prior.wait, abort)?;
    let table = read_summaries(client, &summary_plan, start_lsn)?;
    make_incremental(
        plan,
        prior,
        &table,
        &info.tablespace_version_dir(),
        chunk_size,
    )?;
    Ok(From {
        lsn: summary_plan.from_lsn,
        tli: summary_plan.from_tli,
    })
}

/// `WaitForWalSummarization(start_lsn)` (walsummarizer.c): poll until the
/// summarizer has summarized the WAL up to the backup's start; fail after
/// `wait`, when the summarizer made no progress for a minute (the server's
/// "WAL summarization is not progressing"), or when summarize_wal went off.
fn wait_for_summarizer(
    client: &mut Client,
    start_lsn: Lsn,
    wait: Duration,
    abort: &Abort,
) -> Result<()> {
    let began = Instant::now();
    let (mut pause, mut pending, mut moved) = (Duration::from_millis(20), 0, Instant::now());
    loop {
        let state = summaries::summarizer_state(client)?;
        if state.summarized_lsn >= start_lsn {
            info!(
                "WAL summarized through {} in {:.1} s",
                PgLsn::from(state.summarized_lsn),
                began.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if !state.enabled {
            bail_with!(
                Exit::Server,
                "--incremental: summarize_wal was turned off on the server, incremental backups need summarize_wal = on"
            );
        }
        if state.pending_lsn != pending {
            (pending, moved) = (state.pending_lsn, Instant::now());
        }
        let stalled = moved.elapsed() > Duration::from_secs(60);
        if began.elapsed() >= wait || stalled {
            bail_with!(
                Exit::Server,
                "--incremental: the WAL summarizer has summarized the WAL up to {} but this backup starts at {}; \
                 gave up after {} s ({}; --incremental-wait)",
                PgLsn::from(state.summarized_lsn),
                PgLsn::from(start_lsn),
                began.elapsed().as_secs(),
                if stalled {
                    "WAL summarization is not progressing"
                } else {
                    "still waiting"
                }
            );
        }
        if abort.is_set() {
            anyhow::bail!("interrupted while waiting for the WAL summarizer");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Every summary the backup needs, checked for coverage and merged in
/// chronological order (the end of `PrepareForIncrementalBackup`).
fn read_summaries(
    client: &mut Client,
    plan: &SummaryPlan,
    start_lsn: Lsn,
) -> Result<BlockRefTable> {
    let available = summaries::available(client, plan.from_lsn, start_lsn)?;
    let chosen = choose_summaries(&available, &plan.required, plan.from_lsn, start_lsn)
        .map_err(|e| Failure::new(Exit::Server, format!("--incremental: {e:#}")))?;
    let mut table = BlockRefTable::new();
    for summary in &chosen {
        let rows = summaries::contents(client, summary)?;
        log::debug!(
            "WAL summary {}..{} on timeline {}: {} rows",
            PgLsn::from(summary.start_lsn),
            PgLsn::from(summary.end_lsn),
            summary.tli,
            rows.len()
        );
        if reaches_switch_point(summary, &plan.required) {
            table.absorb_truncations_as_zero(rows);
        } else {
            table.absorb(rows);
        }
    }
    Ok(table)
}

/// `GetFileBackupMethod` for every relation file of the plan (with the
/// listing's sizes, taken after the backup start, as `sendDir` does): those
/// sent incrementally become `INCREMENTAL.<name>`, with new tasks.
fn make_incremental(
    plan: &mut Plan,
    prior: &Prior,
    table: &BlockRefTable,
    version_dir: &str,
    chunk_size: u64,
) -> Result<()> {
    let g = prior.geometry;
    let mut files: Vec<(FileEntry, Option<Assembled>)> = Vec::with_capacity(plan.files.len());
    for f in std::mem::take(&mut plan.files) {
        let Some((rel, (dir, name))) = classify(&f.path, version_dir).zip(f.path.rsplit_once('/'))
        else {
            files.push((f, None));
            continue;
        };
        let path = format!("{dir}/{INCREMENTAL_PREFIX}{name}");
        let method = file_backup_method(
            table,
            &prior.manifest,
            Rules::Safe,
            g,
            &rel,
            &f.path,
            &path,
            f.size,
        );
        match method {
            Method::Whole => files.push((f, None)),
            Method::Incremental {
                blocks,
                truncation_block_length,
            } => {
                let header = Header::new(truncation_block_length, blocks, g)?;
                let assembled = Assembled::new(f.path, f.size, &header, g);
                let entry = FileEntry {
                    path,
                    size: assembled.size(),
                    mtime: f.mtime,
                };
                files.push((entry, Some(assembled)));
            }
        }
    }
    // Biggest first, as plan::build orders them.
    files.sort_by(|a, b| {
        b.0.size
            .cmp(&a.0.size)
            .then_with(|| a.0.path.cmp(&b.0.path))
    });
    plan.assembled = BTreeMap::new();
    for (i, (f, a)) in files.into_iter().enumerate() {
        plan.files.push(f);
        if let Some(a) = a {
            plan.assembled.insert(i, a);
        }
    }
    plan.pg_control = plan.files.iter().position(|f| f.path == plan::PG_CONTROL);
    let (skip, assembled) = (plan.pg_control, &plan.assembled);
    plan.tasks = plan::chunk_where(
        &plan.files,
        |i| Some(i) == skip || assembled.contains_key(&i),
        chunk_size,
    );
    plan.tasks.extend(assembled_tasks(assembled, chunk_size));
    let full = full_bytes(plan);
    info!(
        "incremental: {} of {} files as INCREMENTAL. files, {} MB to fetch of {} MB",
        plan.assembled.len(),
        plan.files.len(),
        fetch_bytes(plan) >> 20,
        full >> 20
    );
    Ok(())
}

/// What an incremental copy stands for: an `INCREMENTAL.` file counts with
/// the size of its relation file.
pub fn full_bytes(plan: &Plan) -> u64 {
    let of = |(i, f): (usize, &FileEntry)| plan.assembled.get(&i).map_or(f.size, |a| a.source_size);
    plan.files.iter().enumerate().map(of).sum()
}

/// What the copy reads from the server (not the headers of the
/// `INCREMENTAL.` files, which it writes itself).
fn fetch_bytes(plan: &Plan) -> u64 {
    let headers: u64 = plan.assembled.values().map(|a| a.header.len() as u64).sum();
    plan.total_bytes() - headers
}

/// The read requests of the `INCREMENTAL.` files: each file's header (not
/// read), then its extents in rows, small files packed several to a task
/// as plan::chunk does, a file's pieces always in order.
fn assembled_tasks(assembled: &BTreeMap<usize, Assembled>, chunk_size: u64) -> Vec<Task> {
    let mut tasks = Vec::new();
    let mut batch = Task { pieces: Vec::new() };
    for (&file, a) in assembled {
        let mut pieces = vec![Piece {
            file,
            offset: 0,
            len: a.header.len() as u64,
        }];
        for &(offset, _, len) in &a.extents {
            pieces.extend(plan::rows(offset, len).map(|(offset, len)| Piece { file, offset, len }));
        }
        let bytes: u64 = pieces.iter().map(|p| p.len).sum();
        let full =
            batch.bytes() + bytes > chunk_size || batch.pieces.len() + pieces.len() > MAX_PIECES;
        if full && !batch.pieces.is_empty() {
            tasks.push(std::mem::replace(&mut batch, Task { pieces: Vec::new() }));
        }
        for p in pieces {
            if batch.bytes() + p.len > chunk_size.max(p.len) || batch.pieces.len() >= MAX_PIECES {
                tasks.push(std::mem::replace(&mut batch, Task { pieces: Vec::new() }));
            }
            batch.pieces.push(p);
        }
    }
    if !batch.pieces.is_empty() {
        tasks.push(batch);
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_keep_each_file_in_order_and_within_bounds() {
        let g = Geometry::default();
        let mut assembled = BTreeMap::new();
        let header = Header::new(200, (0..100).map(|b| b * 2).collect(), g).unwrap();
        assembled.insert(3, Assembled::new("base/5/1".into(), 200 * 8192, &header, g));
        let header = Header::new(10, vec![], g).unwrap();
        assembled.insert(5, Assembled::new("base/5/2".into(), 10 * 8192, &header, g));
        let tasks = assembled_tasks(&assembled, 64 * 8192);
        let pieces: Vec<Piece> = tasks.iter().flat_map(|t| t.pieces.clone()).collect();
        for file in [3, 5] {
            let mine: Vec<&Piece> = pieces.iter().filter(|p| p.file == file).collect();
            let mut at = 0;
            for p in &mine {
                assert_eq!(p.offset, at);
                at += p.len;
            }
            assert_eq!(at, assembled[&file].size());
        }
        assert!(tasks.iter().all(|t| t.bytes() <= 64 * 8192));
        assert_eq!(assembled[&3].source_offset(8192), Some(0));
        assert_eq!(assembled[&3].source_offset(2 * 8192), Some(2 * 8192));
        assert_eq!(assembled[&3].source_offset(100), None);
    }
}
