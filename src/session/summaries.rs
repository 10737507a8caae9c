//! What an incremental backup asks the server: its summarizer settings, the
//! timeline history, the WAL summarizer's progress and the WAL summaries
//! (src/backend/backup/walsummaryfuncs.c), all over plain SQL.

use anyhow::Result;
use log::debug;
use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::PgLsn;
use postgres::types::ToSql;

use crate::incremental::summary::{SummaryFile, SummaryRow};
use crate::session::server::{failed, query_one};
use crate::session::sql;

/// The settings an incremental backup depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummarySettings {
    /// `summarize_wal`: "on" or "off".
    pub summarize_wal: String,
    pub block_size: u64,
    /// `segment_size` in blocks (RELSEG_SIZE).
    pub segment_blocks: u64,
}

pub fn settings(client: &mut Client) -> Result<SummarySettings> {
    let row = query_one(client, sql::INCREMENTAL_SETTINGS, &[])?;
    Ok(SummarySettings {
        summarize_wal: row.get(0),
        block_size: row.get::<_, i64>(1) as u64,
        segment_blocks: row.get::<_, i64>(2) as u64,
    })
}

/// The contents of `pg_wal/<TLI>.history`, None when there is none
/// (timeline 1).
pub fn timeline_history(client: &mut Client, timeline: u32) -> Result<Option<String>> {
    let path = format!("pg_wal/{timeline:08X}.history");
    let row = query_one(client, sql::READ_TIMELINE_HISTORY, &[&path])?;
    let bytes: Option<Vec<u8>> = row.get(0);
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Where the summarizer is (`pg_get_wal_summarizer_state()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummarizerState {
    pub summarized_tli: u32,
    pub summarized_lsn: u64,
    pub pending_lsn: u64,
    /// Whether a summarizer process runs.
    pub running: bool,
    /// `summarize_wal` now.
    pub enabled: bool,
}

pub fn summarizer_state(client: &mut Client) -> Result<SummarizerState> {
    let row = query_one(client, sql::SUMMARIZER_STATE, &[])?;
    let lsn = |i: usize| u64::from(row.get::<_, PgLsn>(i));
    Ok(SummarizerState {
        summarized_tli: row.get::<_, i64>(0) as u32,
        summarized_lsn: lsn(1),
        pending_lsn: lsn(2),
        running: row.get(3),
        enabled: row.get::<_, String>(4) == "on",
    })
}

/// The summaries that may overlap `[from, to)`.
pub fn available(client: &mut Client, from: u64, to: u64) -> Result<Vec<SummaryFile>> {
    let (from, to) = (PgLsn::from(from), PgLsn::from(to));
    debug!("SQL: {}", sql::AVAILABLE_SUMMARIES);
    let rows = client
        .query(sql::AVAILABLE_SUMMARIES, &[&from, &to])
        .map_err(|e| failed(e, sql::AVAILABLE_SUMMARIES))?;
    Ok(rows
        .iter()
        .map(|row| SummaryFile {
            tli: row.get::<_, i64>(0) as u32,
            start_lsn: row.get::<_, PgLsn>(1).into(),
            end_lsn: row.get::<_, PgLsn>(2).into(),
        })
        .collect())
}

/// Every row of one summary, streamed: a row of the result is bigger than
/// the 24 bytes kept of it, and a summary can list millions of blocks.
pub fn contents(client: &mut Client, summary: &SummaryFile) -> Result<Vec<SummaryRow>> {
    let tli = i64::from(summary.tli);
    let start = PgLsn::from(summary.start_lsn);
    let end = PgLsn::from(summary.end_lsn);
    debug!("SQL: {} ({tli}, {start}, {end})", sql::SUMMARY_CONTENTS);
    let params: [&(dyn ToSql + Sync); 3] = [&tli, &start, &end];
    let mut rows = client
        .query_raw(sql::SUMMARY_CONTENTS, params)
        .map_err(|e| failed(e, sql::SUMMARY_CONTENTS))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| failed(e, sql::SUMMARY_CONTENTS))? {
        let oid = |i: usize| row.get::<_, i64>(i) as u32;
        out.push(SummaryRow::from_sql(
            oid(0),
            oid(1),
            oid(2),
            row.get(3),
            row.get(4),
            row.get(5),
        )?);
    }
    Ok(out)
}
