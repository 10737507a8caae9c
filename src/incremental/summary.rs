//! WAL summaries over SQL, and the block reference table they are merged into.
//!
//! The server side (`PrepareForIncrementalBackup`, basebackup_incremental.c) does, with files:
//! 1. `WaitForWalSummarization(startpoint)` (src/backend/postmaster/walsummarizer.c): wait
//!    until the summarizer's `summarized_lsn` reaches the backup's start LSN; error out
//!    ("WAL summarization is not progressing") after 6 cycles of 10 s in which
//!    `pending_lsn` did not move; return at once if `summarize_wal` is turned off.
//! 2. `GetWalSummaries(0, earliest_start, startpoint)` then, per timeline,
//!    `FilterWalSummaries(list, tli, start, end)` and `WalSummariesAreComplete()`
//!    (src/backend/backup/walsummary.c).
//! 3. Reads every chosen summary into one `BlockRefTable`: per relation fork,
//!    `BlockRefTableSetLimitBlock` with the summary's limit block, then
//!    `BlockRefTableMarkBlockModified` for each block.
//!
//! Over SQL the same data comes from `pg_get_wal_summarizer_state()`,
//! `pg_available_wal_summaries()` and `pg_wal_summary_contents()` (walsummaryfuncs.c; EXECUTE
//! is granted to PUBLIC by default). `pg_wal_summary_contents` emits, per relation fork, one
//! row with `is_limit_block = true` when the limit block is valid, then one row per modified
//! block.

use postgres::types::PgLsn;
use std::collections::HashMap;

use anyhow::{Result, bail, ensure};

use super::prior::RequiredRange;
use super::{Fork, INVALID_BLOCK_NUMBER};

/// One WAL summary file: `pg_wal/summaries/TTTTTTTTSSSSSSSSSSSSSSSSEEEEEEEEEEEEEEEE.summary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SummaryFile {
    pub tli: u32,
    pub start_lsn: u64,
    pub end_lsn: u64,
}

/// `FilterWalSummaries(list, tli, start, end)`: same timeline, `end_lsn >= start` and
/// `start_lsn <= end` (note: inclusive, unlike `GetWalSummaries`).
pub fn filter_summaries(list: &[SummaryFile], tli: u32, start: u64, end: u64) -> Vec<SummaryFile> {
    list.iter()
        .filter(|ws| {
            (tli == 0 || ws.tli == tli)
                && !(start != 0 && start > ws.end_lsn)
                && !(end != 0 && end < ws.start_lsn)
        })
        .copied()
        .collect()
}

/// `WalSummariesAreComplete()`: do the summaries cover `[start, end)` without a gap? `Err`
/// carries the first LSN not covered (None when there is no summary at all).
pub fn summaries_complete(list: &[SummaryFile], start: u64, end: u64) -> Result<(), Option<u64>> {
    if list.is_empty() {
        return Err(None);
    }
    let mut sorted = list.to_vec();
    sorted.sort_by_key(|ws| ws.start_lsn);
    let mut current = start;
    for ws in &sorted {
        if ws.start_lsn > current {
            break;
        }
        if ws.end_lsn > current {
            current = ws.end_lsn;
            if current >= end {
                return Ok(());
            }
        }
    }
    Err(Some(current))
}

/// Picks the summaries to read for the required ranges (newest timeline first, as
/// [`super::prior::plan_summaries`] returns them), with the server's error messages when
/// one is missing. `available` is what `session::sql::AVAILABLE_SUMMARIES` returned for
/// `[from_lsn, start_lsn)`.
///
/// The result is in chronological order (oldest timeline first, then by start LSN), the
/// order in which [`BlockRefTable::absorb`] must merge them: the server merges in
/// `readdir()` order, which only matters when a relation was truncated in one summary and
/// re-extended in a later one, and then chronological order is the right one.
///
/// `from_lsn` and `start_lsn` are the plan's `INCREMENTAL FROM LSN` and this backup's start:
/// first the server's `GetWalSummaries(0, from_lsn, start_lsn)` filter (strict: a summary
/// ending exactly at `from_lsn` is left out), then per timeline `FilterWalSummaries`.
pub fn choose_summaries(
    available: &[SummaryFile],
    required: &[RequiredRange],
    from_lsn: u64,
    start_lsn: u64,
) -> Result<Vec<SummaryFile>> {
    let available: Vec<SummaryFile> = available
        .iter()
        .filter(|ws| from_lsn < ws.end_lsn && start_lsn > ws.start_lsn)
        .copied()
        .collect();
    let mut chosen = Vec::new();
    for r in required {
        let list = filter_summaries(&available, r.tli, r.start_lsn, r.end_lsn);
        match summaries_complete(&list, r.start_lsn, r.end_lsn) {
            Ok(()) => {}
            Err(None) => bail!(
                "WAL summaries are required on timeline {} from {} to {}, but no summaries for \
                 that timeline and LSN range exist",
                r.tli,
                PgLsn::from(r.start_lsn),
                PgLsn::from(r.end_lsn)
            ),
            Err(Some(missing)) => bail!(
                "WAL summaries are required on timeline {} from {} to {}, but the summaries for \
                 that timeline and LSN range are incomplete (the first unsummarized LSN in this \
                 range is {})",
                r.tli,
                PgLsn::from(r.start_lsn),
                PgLsn::from(r.end_lsn),
                PgLsn::from(missing)
            ),
        }
        let mut list = list;
        list.sort_by_key(|ws| ws.start_lsn);
        // `required` is newest timeline first: put older timelines in front.
        chosen.splice(0..0, list);
    }
    chosen.dedup();
    Ok(chosen)
}

/// Does this summary belong to a timeline the server switched away from, and reach that
/// switch point? (`required` as [`super::prior::plan_summaries`] returns it: newest timeline
/// first, and for every older timeline `end_lsn` is where the next one began.) A standby
/// summarizes WAL it received ahead of replay, so such a summary may hold changes the
/// promoted server never replayed; see [`BlockRefTable::absorb_truncations_as_zero`].
pub fn reaches_switch_point(ws: &SummaryFile, required: &[RequiredRange]) -> bool {
    required
        .iter()
        .skip(1)
        .any(|r| r.tli == ws.tli && ws.end_lsn >= r.end_lsn)
}

/// One row of `pg_wal_summary_contents()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub spc: u32,
    pub db: u32,
    /// 0 with `Fork::Main` and a limit block of 0: the whole (tablespace, database) pair
    /// was created or dropped (`SummarizeDbaseRecord`).
    pub rel: u32,
    pub fork: Fork,
    pub block: u32,
    pub is_limit_block: bool,
}

impl SummaryRow {
    /// From the SQL columns (oid, oid, oid, smallint, bigint, bool).
    pub fn from_sql(
        spc: u32,
        db: u32,
        rel: u32,
        fork: i16,
        block: i64,
        is_limit_block: bool,
    ) -> Result<SummaryRow> {
        let fork = match Fork::from_number(i64::from(fork)) {
            Some(f) => f,
            None => bail!("pg_wal_summary_contents returned fork number {fork}"),
        };
        ensure!(
            (0..i64::from(u32::MAX)).contains(&block),
            "pg_wal_summary_contents returned block number {block}"
        );
        Ok(SummaryRow {
            spc,
            db,
            rel,
            fork,
            block: block as u32,
            is_limit_block,
        })
    }
}

/// A relation fork: `RelFileLocator` + `ForkNumber`, the key of a block reference table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ForkKey {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: Fork,
}

/// What is known of one relation fork (`BlockRefTableEntry`).
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// The shortest length (in blocks) the fork had in the summarized WAL;
    /// `INVALID_BLOCK_NUMBER` if never truncated, created or dropped.
    limit_block: u32,
    /// Modified blocks (absolute block numbers). Sorted and unique after
    /// [`BlockRefTable::absorb`].
    blocks: Vec<u32>,
}

impl Entry {
    pub fn limit_block(&self) -> u32 {
        self.limit_block
    }

    /// `BlockRefTableEntryGetBlocks(entry, start, stop, ...)`: the modified blocks `b` with
    /// `start <= b < stop`, ascending.
    pub fn blocks_in(&self, start: u32, stop: u32) -> &[u32] {
        let lo = self.blocks.partition_point(|b| *b < start);
        let hi = self.blocks.partition_point(|b| *b < stop);
        &self.blocks[lo..hi.max(lo)]
    }

    /// `BlockRefTableEntrySetLimitBlock`: keep the smaller limit, forget blocks at or past it.
    fn set_limit_block(&mut self, limit: u32) {
        if self.limit_block <= limit {
            return;
        }
        self.limit_block = limit;
        self.blocks.retain(|b| *b < limit);
    }
}

/// The merged block reference table of every summary an incremental backup needs
/// (src/common/blkreftable.c semantics). Memory: 4 bytes per distinct modified block.
#[derive(Default, Debug)]
pub struct BlockRefTable {
    entries: HashMap<ForkKey, Entry>,
}

impl BlockRefTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges the rows of one summary, as the loop at the end of
    /// `PrepareForIncrementalBackup` does: limit blocks first, then modified blocks (within
    /// one summary file every limit row precedes the blocks of its fork, and the blocks
    /// listed are the ones that survived it, so the row order inside a summary does not
    /// matter). Call once per summary, in chronological order.
    pub fn absorb(&mut self, rows: impl IntoIterator<Item = SummaryRow>) {
        self.absorb_inner(rows, false)
    }

    /// [`absorb`](Self::absorb) for a summary that [`reaches_switch_point`]: every limit
    /// block is taken as 0, so each truncated fork is sent whole (after the proposed fix
    /// "Don't apply truncations from WAL summaries that reach a timeline switch",
    /// pgsql-hackers 2026: summary entries carry no LSN, so a truncation past the switch
    /// point, never replayed here, cannot be told from one before it).
    pub fn absorb_truncations_as_zero(&mut self, rows: impl IntoIterator<Item = SummaryRow>) {
        self.absorb_inner(rows, true)
    }

    fn absorb_inner(&mut self, rows: impl IntoIterator<Item = SummaryRow>, zero_limits: bool) {
        let mut blocks: Vec<(ForkKey, u32)> = Vec::new();
        for row in rows {
            let key = ForkKey {
                spc: row.spc,
                db: row.db,
                rel: row.rel,
                fork: row.fork,
            };
            if row.is_limit_block {
                self.entries
                    .entry(key)
                    .or_insert_with(|| Entry {
                        limit_block: INVALID_BLOCK_NUMBER,
                        blocks: Vec::new(),
                    })
                    .set_limit_block(if zero_limits { 0 } else { row.block });
            } else {
                blocks.push((key, row.block));
            }
        }
        let mut touched = Vec::new();
        for (key, block) in blocks {
            let e = self.entries.entry(key).or_insert_with(|| Entry {
                limit_block: INVALID_BLOCK_NUMBER,
                blocks: Vec::new(),
            });
            e.blocks.push(block);
            touched.push(key);
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let e = self.entries.get_mut(&key).expect("touched entry");
            e.blocks.sort_unstable();
            e.blocks.dedup();
        }
    }

    /// `BlockRefTableGetEntry`.
    pub fn get(&self, spc: u32, db: u32, rel: u32, fork: Fork) -> Option<&Entry> {
        self.entries.get(&ForkKey { spc, db, rel, fork })
    }

    /// Was this (tablespace, database) pair created or dropped since the prior backup
    /// (the special relfilenumber-0 entry)? Then every file in it is sent whole.
    pub fn database_recreated(&self, spc: u32, db: u32) -> bool {
        self.get(spc, db, 0, Fork::Main).is_some()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(tli: u32, a: u64, b: u64) -> SummaryFile {
        SummaryFile {
            tli,
            start_lsn: a,
            end_lsn: b,
        }
    }

    /// Timeline 2 from 0/5000000 to 0/6000000, after timeline 1 from
    /// 0/4000000: the ranges a backup across a switch at 0/5000000 needs.
    fn two_timelines() -> [RequiredRange; 2] {
        let range = |tli, start_lsn, end_lsn| RequiredRange {
            tli,
            start_lsn,
            end_lsn,
        };
        [
            range(2, 0x5000000, 0x6000000),
            range(1, 0x4000000, 0x5000000),
        ]
    }

    fn row(rel: u32, fork: Fork, block: u32, limit: bool) -> SummaryRow {
        SummaryRow {
            spc: 1663,
            db: 5,
            rel,
            fork,
            block,
            is_limit_block: limit,
        }
    }

    #[test]
    fn coverage_as_walsummaries_are_complete() {
        // What the PostgreSQL 18 test cluster listed (unsorted, as readdir gives them).
        let avail = [
            ws(1, 0x16EEE98, 0x16EF458),
            ws(1, 0x1000028, 0x10CAA50),
            ws(1, 0x7590330, 0x8000028),
            ws(1, 0x8000028, 0xA000028),
        ];
        let need = [RequiredRange {
            tli: 1,
            start_lsn: 0x8000028,
            end_lsn: 0xA000028,
        }];
        // The one ending exactly at the prior start would pass FilterWalSummaries
        // (end >= start) but not GetWalSummaries (end > start).
        assert_eq!(filter_summaries(&avail, 1, 0x8000028, 0xA000028).len(), 2);
        let chosen = choose_summaries(&avail, &need, 0x8000028, 0xA000028).unwrap();
        assert_eq!(chosen, vec![ws(1, 0x8000028, 0xA000028)]);

        // A gap: the server's message, with the first missing LSN.
        let gap = [ws(1, 0x8000028, 0x9000000), ws(1, 0x9000100, 0xA000028)];
        let e = choose_summaries(&gap, &need, 0x8000028, 0xA000028)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("incomplete") && e.contains("is 0/9000000"),
            "{e}"
        );
        let e = choose_summaries(&[], &need, 0x8000028, 0xA000028)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no summaries for that timeline"), "{e}");
        // Summarizer not there yet.
        let short = [ws(1, 0x8000028, 0x9000000)];
        assert_eq!(
            summaries_complete(&short, 0x8000028, 0xA000028),
            Err(Some(0x9000000))
        );
    }

    #[test]
    fn timelines_come_out_oldest_first() {
        let avail = [ws(2, 0x5000000, 0x6000000), ws(1, 0x4000000, 0x5000000)];
        let need = two_timelines();
        assert_eq!(
            choose_summaries(&avail, &need, 0x4000000, 0x6000000).unwrap(),
            vec![avail[1], avail[0]]
        );
    }

    #[test]
    fn limit_block_forgets_blocks_at_or_past_it() {
        let mut t = BlockRefTable::new();
        // Summary 1: blocks 3, 10, 12 modified.
        t.absorb([
            row(16455, Fork::Main, 12, false),
            row(16455, Fork::Main, 3, false),
            row(16455, Fork::Main, 10, false),
        ]);
        // Summary 2: truncated to 10 blocks, then block 11 written (re-extended).
        t.absorb([
            row(16455, Fork::Main, 10, true),
            row(16455, Fork::Main, 11, false),
        ]);
        let e = t.get(1663, 5, 16455, Fork::Main).unwrap();
        assert_eq!(e.limit_block(), 10);
        assert_eq!(e.blocks_in(0, u32::MAX), &[3, 11]);
        assert_eq!(e.blocks_in(4, 11), &[] as &[u32]);
        // A later, larger limit does not raise it.
        t.absorb([row(16455, Fork::Main, 20, true)]);
        assert_eq!(t.get(1663, 5, 16455, Fork::Main).unwrap().limit_block(), 10);
    }

    #[test]
    fn summaries_reaching_a_switch_point() {
        let need = two_timelines();
        assert!(reaches_switch_point(&ws(1, 0x4800000, 0x5000000), &need));
        assert!(!reaches_switch_point(&ws(1, 0x4000000, 0x4800000), &need));
        // The newest timeline has no switch point.
        assert!(!reaches_switch_point(&ws(2, 0x5000000, 0x6000000), &need));
        let mut t = BlockRefTable::new();
        t.absorb([row(9, Fork::Main, 3, false), row(9, Fork::Main, 40, false)]);
        t.absorb_truncations_as_zero([row(9, Fork::Main, 30, true)]);
        let e = t.get(1663, 5, 9, Fork::Main).unwrap();
        assert_eq!(e.limit_block(), 0);
        assert_eq!(e.blocks_in(0, 100), &[] as &[u32]);
    }

    #[test]
    fn duplicates_across_summaries_merge() {
        let mut t = BlockRefTable::new();
        t.absorb([row(1, Fork::Main, 5, false), row(1, Fork::Main, 7, false)]);
        t.absorb([row(1, Fork::Main, 5, false), row(1, Fork::Main, 2, false)]);
        let e = t.get(1663, 5, 1, Fork::Main).unwrap();
        assert_eq!(e.blocks_in(0, 100), &[2, 5, 7]);
        assert_eq!(e.limit_block(), INVALID_BLOCK_NUMBER);
        assert!(t.get(1663, 5, 1, Fork::Vm).is_none());
    }

    #[test]
    fn created_database_marker() {
        let mut t = BlockRefTable::new();
        t.absorb([SummaryRow {
            spc: 1663,
            db: 16500,
            rel: 0,
            fork: Fork::Main,
            block: 0,
            is_limit_block: true,
        }]);
        assert!(t.database_recreated(1663, 16500));
        assert!(!t.database_recreated(1663, 5));
    }

    #[test]
    fn rows_from_sql_types() {
        let r = SummaryRow::from_sql(1663, 5, 16437, 2, 131073, false).unwrap();
        assert_eq!((r.fork, r.block), (Fork::Vm, 131073));
        assert!(SummaryRow::from_sql(1663, 5, 1, 7, 0, false).is_err());
        assert!(SummaryRow::from_sql(1663, 5, 1, 0, -1, false).is_err());
    }
}
