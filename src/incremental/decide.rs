//! Whole file or `INCREMENTAL.` file: `GetFileBackupMethod()` of
//! src/backend/backup/basebackup_incremental.c, rule for rule.
//!
//! Only relation files ([`super::relpath::classify`]) are ever asked; everything else is
//! always sent whole (`sendDir` calls `GetFileBackupMethod` only `if (ib != NULL &&
//! isRelationFile)`). For a relation segment of `size` bytes, in this order:
//! 1. `size` not a multiple of BLCKSZ, or more than RELSEG_SIZE blocks: whole.
//! 2. The free space map fork (not WAL-logged): whole.
//! 3. Neither the path nor its `INCREMENTAL.` path is in the prior manifest (created since,
//!    or after this backup's start): whole.
//! 4. The (tablespace, database) pair was created or dropped since (relfilenumber-0 entry):
//!    whole.
//! 5. No WAL-summary entry for the fork: incremental with no blocks and truncation length
//!    `size / BLCKSZ`, except a zero-length file, which is sent whole.
//! 6. Limit block at or before this segment's first block: whole.
//! 7. More than 90% of the segment's blocks modified (`nblocks * BLCKSZ > size * 0.9`):
//!    whole.
//! 8. Otherwise incremental: the modified blocks of this segment, relative to its start,
//!    ascending; truncation block length `size / BLCKSZ`, raised to the limit block
//!    (relative to the segment) if that is larger, and capped at RELSEG_SIZE (the cap came
//!    with a 2025 fix; `pg_combinebackup` refuses a larger value: "has truncation block
//!    length %u in excess of segment size %u").
//!
//! [`Rules::Safe`] adds one rule from a fix proposed on pgsql-hackers in 2026 ("Fix
//! incremental backup of relations truncated and regrown by bulk insert"): the segment that
//! holds the limit block is sent whole, because blocks at or past the limit that bulk
//! extension zero-filled without WAL would otherwise be taken from the prior backup, stale.
//! It also covers the stale visibility-map bug reported in 2026 ("Fix stale visibility maps
//! in incremental backups after heap truncation": without data checksums and
//! wal_log_hints the last remaining VM page is changed without WAL, yet the summary only
//! records the VM limit): a VM fork with a limit block is then always sent whole. The cost
//! is one segment per truncated fork.
//!
//! It also sends every visibility-map fork whole. A heap UPDATE or DELETE clears its page's
//! all-visible bit with no WAL record that names the map block, so the summaries can miss
//! the change and `pg_combinebackup` restores the prior backup's map page: a restored
//! cluster whose index-only scans return dead rows. Our tests saw it with PostgreSQL's own
//! incremental backups too, on 17.10 (every time) and on 18.4/18.6 under pgbench load
//! (`tests/it/incremental.rs` compares an index-only count with a heap count; see
//! `scripts/incremental-experiment/vm-stale.sh`). A map is 1/32672 of its heap's size, so
//! sending it whole costs next to nothing, and it is right for the reason a full backup is.

use super::Fork;
use super::Geometry;
use super::INVALID_BLOCK_NUMBER;
use super::prior::PriorManifest;
use super::relpath::RelFile;
use super::summary::BlockRefTable;

/// Which set of rules to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rules {
    /// Exactly `GetFileBackupMethod()` of PostgreSQL 18.
    #[cfg(test)]
    Postgres,
    /// PostgreSQL's rules plus: the segment holding the limit block is sent whole, and so
    /// is every visibility-map fork.
    #[default]
    Safe,
}

/// What to back up for one relation segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// The whole file, as in a full backup, under its own name.
    Whole,
    /// `INCREMENTAL.<name>`: these blocks (relative to the segment, ascending) and the
    /// truncation block length for the header.
    Incremental {
        blocks: Vec<u32>,
        truncation_block_length: u32,
    },
}

/// `GetFileBackupMethod()`. `path` is the file's path relative to the data directory (as in
/// a manifest: `pg_tblspc/<spcoid>/PG_.../<db>/<name>` for tablespaces) and
/// `incremental_path` the same with `INCREMENTAL.` before the name; `size` is the size the
/// file had when listed after the backup started.
#[allow(clippy::too_many_arguments)]
pub fn file_backup_method(
    table: &BlockRefTable,
    prior: &PriorManifest,
    rules: Rules,
    g: Geometry,
    file: &RelFile,
    path: &str,
    incremental_path: &str,
    size: u64,
) -> Method {
    let blcksz = u64::from(g.blcksz);
    let relseg = u64::from(g.relseg_size);

    // "If the file size is too large or not a multiple of BLCKSZ, then something weird is
    // happening, so give up and send the whole file."
    if size % blcksz != 0 || size / blcksz > relseg {
        return Method::Whole;
    }
    // "The free-space map fork is not properly WAL-logged".
    if file.fork == Fork::Fsm {
        return Method::Whole;
    }
    // Ours: the visibility map's cleared bits are not reliably summarized (module doc).
    if rules == Rules::Safe && file.fork == Fork::Vm {
        return Method::Whole;
    }
    // "If this file was not part of the prior backup, back it up fully."
    if !prior.contains(path.as_bytes()) && !prior.contains(incremental_path.as_bytes()) {
        return Method::Whole;
    }
    // The database (in this tablespace) was created or dropped since the prior backup.
    if table.database_recreated(file.spc, file.db) {
        return Method::Whole;
    }
    let Some(entry) = table.get(file.spc, file.db, file.rel, file.fork) else {
        // No WAL-logged change since the prior backup: an incremental file with no blocks,
        // unless the file is empty ("an incremental file is always more than zero length").
        if size == 0 {
            return Method::Whole;
        }
        return Method::Incremental {
            blocks: Vec::new(),
            truncation_block_length: (size / blcksz) as u32,
        };
    };
    let limit = u64::from(entry.limit_block());
    let seg_start = u64::from(file.segno) * relseg;
    // "If the limit_block is less than or equal to the point where this segment starts,
    // send the whole file."
    if limit <= seg_start {
        return Method::Whole;
    }
    if rules == Rules::Safe
        && entry.limit_block() != INVALID_BLOCK_NUMBER
        && limit < seg_start + relseg
    {
        return Method::Whole;
    }
    let stop = seg_start + size / blcksz;
    let (Ok(start32), Ok(stop32)) = (u32::try_from(seg_start), u32::try_from(stop)) else {
        // The server errors out here ("overflow computing block number bounds"); a whole
        // file is never wrong.
        return Method::Whole;
    };
    let absolute = entry.blocks_in(start32, stop32);
    // "if we'd need to send 90% of the blocks anyway, give up and send the whole file."
    if absolute.len() as f64 * f64::from(g.blcksz) > size as f64 * 0.9 {
        return Method::Whole;
    }
    Method::Incremental {
        blocks: absolute.iter().map(|b| b - start32).collect(),
        truncation_block_length: truncation_block_length(size, entry.limit_block(), seg_start, g),
    }
}

/// The truncation block length of the header: the file's length in blocks,
/// raised to the limit block (relative to the segment) if that is larger, and
/// capped at RELSEG_SIZE.
fn truncation_block_length(size: u64, limit_block: u32, seg_start: u64, g: Geometry) -> u32 {
    let mut length = (size / u64::from(g.blcksz)) as u32;
    if limit_block != INVALID_BLOCK_NUMBER {
        let relative_limit = (u64::from(limit_block) - seg_start) as u32;
        if length < relative_limit {
            length = relative_limit;
        }
        if length > g.relseg_size {
            length = g.relseg_size;
        }
    }
    length
}

#[cfg(test)]
mod tests {
    use super::super::prior::tests::manifest;
    use super::super::relpath::classify;
    use super::super::summary::SummaryRow;
    use super::*;

    const V: &str = "PG_18_202506291";
    const B: u64 = 8192;

    fn prior(files: &[(&str, u64)]) -> PriorManifest {
        PriorManifest::parse(&manifest(1, files, &[(1, "0/8000028", "0/8000158")])).unwrap()
    }

    fn rows(rel: u32, fork: Fork, limit: Option<u32>, blocks: &[u32]) -> Vec<SummaryRow> {
        let mut v = Vec::new();
        if let Some(l) = limit {
            v.push(SummaryRow {
                spc: 1663,
                db: 5,
                rel,
                fork,
                block: l,
                is_limit_block: true,
            });
        }
        for b in blocks {
            v.push(SummaryRow {
                spc: 1663,
                db: 5,
                rel,
                fork,
                block: *b,
                is_limit_block: false,
            });
        }
        v
    }

    fn decide(t: &BlockRefTable, p: &PriorManifest, rules: Rules, path: &str, size: u64) -> Method {
        let f = classify(path, V).unwrap();
        file_backup_method(
            t,
            p,
            rules,
            Geometry::default(),
            &f,
            &f.path(V),
            &f.incremental_path(V),
            size,
        )
    }

    #[test]
    fn untouched_file_is_an_empty_incremental() {
        let p = prior(&[("base/5/16437", 10 * B), ("base/5/16438", 0)]);
        let t = BlockRefTable::new();
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16437", 12 * B),
            Method::Incremental {
                blocks: vec![],
                truncation_block_length: 12
            }
        );
        // Zero length: whole.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16438", 0),
            Method::Whole
        );
    }

    #[test]
    fn always_whole_cases() {
        let p = prior(&[
            ("base/5/16437", 10 * B),
            ("base/5/16437_fsm", 3 * B),
            ("base/6/1259", B),
        ]);
        let mut t = BlockRefTable::new();
        t.absorb([SummaryRow {
            spc: 1663,
            db: 6,
            rel: 0,
            fork: Fork::Main,
            block: 0,
            is_limit_block: true,
        }]);
        // Not a multiple of BLCKSZ.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16437", 10 * B + 1),
            Method::Whole
        );
        // Larger than a segment.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16437", (131072 + 1) * B),
            Method::Whole
        );
        // FSM.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16437_fsm", 3 * B),
            Method::Whole
        );
        // Not in the prior manifest.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16999", 3 * B),
            Method::Whole
        );
        // Database created since.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/6/1259", B),
            Method::Whole
        );
    }

    #[test]
    fn listed_as_incremental_in_the_prior_counts_as_present() {
        let p = prior(&[("base/5/INCREMENTAL.16437", 12)]);
        let t = BlockRefTable::new();
        assert!(matches!(
            decide(&t, &p, Rules::Postgres, "base/5/16437", 4 * B),
            Method::Incremental { .. }
        ));
    }

    #[test]
    fn modified_blocks_relative_to_their_segment() {
        let p = prior(&[("base/5/16437.1", 100 * B)]);
        let mut t = BlockRefTable::new();
        let s1 = 131072;
        t.absorb(rows(
            16437,
            Fork::Main,
            None,
            &[5, s1 + 9, s1 + 2, s1 + 200],
        ));
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16437.1", 100 * B),
            // Block s1+200 is past this file's end: not included.
            Method::Incremental {
                blocks: vec![2, 9],
                truncation_block_length: 100
            }
        );
    }

    #[test]
    fn ninety_percent_threshold() {
        let p = prior(&[("base/5/16437", 10 * B)]);
        let mut t = BlockRefTable::new();
        t.absorb(rows(16437, Fork::Main, None, &[0, 1, 2, 3, 4, 5, 6, 7, 8]));
        // 9 of 10 blocks: 9*8192 > 0.9*81920 is false (equal): still incremental.
        assert!(matches!(
            decide(&t, &p, Rules::Postgres, "base/5/16437", 10 * B),
            Method::Incremental { .. }
        ));
        t.absorb(rows(16437, Fork::Main, None, &[9]));
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16437", 10 * B),
            Method::Whole
        );
    }

    #[test]
    fn limit_block_rules() {
        let p = prior(&[
            ("base/5/16455", 1250 * B),
            ("base/5/16456.1", B),
            ("base/5/16457.2", B),
        ]);
        let mut t = BlockRefTable::new();
        // What PostgreSQL 18 summarized in the experiment: vac_me truncated to 1000 blocks,
        // then block 0 updated.
        t.absorb(rows(16455, Fork::Main, Some(1000), &[0]));
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16455", 1000 * B),
            Method::Incremental {
                blocks: vec![0],
                truncation_block_length: 1000
            }
        );
        // Safe rules: the segment holding the limit block is sent whole.
        assert_eq!(
            decide(&t, &p, Rules::Safe, "base/5/16455", 1000 * B),
            Method::Whole
        );
        // File found shorter than the limit (truncated again after the start): the
        // truncation length is raised to the limit.
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16455", 900 * B),
            Method::Incremental {
                blocks: vec![0],
                truncation_block_length: 1000
            }
        );
        // Limit at or before the segment start: whole.
        t.absorb(rows(16456, Fork::Main, Some(131072), &[]));
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16456.1", B),
            Method::Whole
        );
        // A limit past this segment, capped at RELSEG_SIZE: limit 2.5 segments, segment 1
        // of 1 block -> 131072, not 196608.
        t.absorb(rows(16457, Fork::Main, Some(131072 * 2 + 65536), &[]));
        let p2 = prior(&[("base/5/16457.1", B)]);
        // Safe rules leave segments before the limit's segment incremental too.
        for rules in [Rules::Postgres, Rules::Safe] {
            assert_eq!(
                decide(&t, &p2, rules, "base/5/16457.1", B),
                Method::Incremental {
                    blocks: vec![],
                    truncation_block_length: 131072
                }
            );
        }
    }

    #[test]
    fn safe_rules_send_every_visibility_map_whole() {
        let p = prior(&[("base/5/16455_vm", 4 * B), ("base/5/16455", 4 * B)]);
        let t = BlockRefTable::new();
        assert_eq!(
            decide(&t, &p, Rules::Safe, "base/5/16455_vm", 4 * B),
            Method::Whole
        );
        assert!(matches!(
            decide(&t, &p, Rules::Postgres, "base/5/16455_vm", 4 * B),
            Method::Incremental { .. }
        ));
        assert!(matches!(
            decide(&t, &p, Rules::Safe, "base/5/16455", 4 * B),
            Method::Incremental { .. }
        ));
    }

    #[test]
    fn vm_with_limit_and_single_block_is_whole() {
        // The experiment's vac_me VM: limit 1, block 0 modified, file 1 block: 100% -> whole.
        let p = prior(&[("base/5/16455_vm", B)]);
        let mut t = BlockRefTable::new();
        t.absorb(rows(16455, Fork::Vm, Some(1), &[0]));
        assert_eq!(
            decide(&t, &p, Rules::Postgres, "base/5/16455_vm", B),
            Method::Whole
        );
    }
}
