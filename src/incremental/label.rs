//! `backup_label` of an incremental backup.
//!
//! The server writes two more lines right after `START TIMELINE:` when the backup is
//! incremental (`build_backup_content()`, src/backend/access/transam/xlogbackup.c, 17+):
//!
//! ```text
//! INCREMENTAL FROM LSN: 0/8000028
//! INCREMENTAL FROM TLI: 1
//! ```
//!
//! Over SQL, `pg_backup_stop()` returns the label without them (the backup state of a SQL
//! backup has no `istartpoint`), so the tool adds them ([`add_incremental_lines`]).
//!
//! `pg_combinebackup` (src/bin/pg_combinebackup/backup_label.c, `parse_backup_label`; and
//! `check_backup_label_files` in pg_combinebackup.c) reads `START WAL LOCATION`,
//! `START TIMELINE` and both `INCREMENTAL FROM` lines (either both or neither), and requires
//! along the chain: the first backup full, every later one incremental, and each one's
//! `INCREMENTAL FROM LSN/TLI` equal to the previous backup's `START WAL LOCATION` /
//! `START TIMELINE`. [`check_chain`] makes the same checks.

use anyhow::{Context, Result, bail, ensure};
use postgres::types::PgLsn;

use crate::pg::parse_lsn;

/// Inserts the two lines after the `START TIMELINE:` line (where the server puts them), or at
/// the end if there is none. A label that has them already is returned unchanged if they
/// agree and refused otherwise.
pub fn add_incremental_lines(label: &str, from_lsn: u64, from_tli: u32) -> Result<String> {
    let lines = format!(
        "INCREMENTAL FROM LSN: {}\nINCREMENTAL FROM TLI: {from_tli}\n",
        PgLsn::from(from_lsn)
    );
    let parsed = parse(label)?;
    if let Some(existing) = parsed.incremental_from {
        ensure!(
            existing == (from_lsn, from_tli),
            "backup_label already names another prior backup"
        );
        return Ok(label.to_string());
    }
    let mut out = String::with_capacity(label.len() + lines.len());
    let mut inserted = false;
    for line in label.split_inclusive('\n') {
        out.push_str(line);
        if !inserted && line.starts_with("START TIMELINE: ") {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&lines);
            inserted = true;
        }
    }
    if !inserted {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&lines);
    }
    Ok(out)
}

/// What `parse_backup_label()` extracts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub start_lsn: u64,
    pub start_tli: u32,
    /// (`INCREMENTAL FROM LSN`, `INCREMENTAL FROM TLI`).
    pub incremental_from: Option<(u64, u32)>,
}

/// `parse_backup_label()`: the LSN of `START WAL LOCATION` must be followed by a space, the
/// other values by the end of the line; TLIs must not be 0.
pub fn parse(label: &str) -> Result<Label> {
    let mut start_lsn = None;
    let mut start_tli = None;
    let mut from_lsn = None;
    let mut from_tli = None;
    for line in label.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            let (lsn, after) = rest
                .split_once(' ')
                .context("backup_label: improper terminator for START WAL LOCATION")?;
            start_lsn =
                Some(parse_lsn(lsn).context("backup_label: could not parse START WAL LOCATION")?);
            let _ = after;
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            start_tli = Some(tli(rest).context("backup_label: could not parse START TIMELINE")?);
        } else if let Some(rest) = line.strip_prefix("INCREMENTAL FROM LSN: ") {
            let v = rest
                .strip_suffix('\n')
                .context("backup_label: improper terminator for INCREMENTAL FROM LSN")?;
            from_lsn =
                Some(parse_lsn(v).context("backup_label: could not parse INCREMENTAL FROM LSN")?);
        } else if let Some(rest) = line.strip_prefix("INCREMENTAL FROM TLI: ") {
            from_tli =
                Some(tli(rest).context("backup_label: could not parse INCREMENTAL FROM TLI")?);
        }
    }
    let start_lsn = start_lsn.context("backup_label: could not find START WAL LOCATION")?;
    let start_tli = start_tli.context("backup_label: could not find START TIMELINE")?;
    let incremental_from = match (from_lsn, from_tli) {
        (Some(l), Some(t)) => Some((l, t)),
        (None, None) => None,
        (Some(_), None) => {
            bail!("backup_label: INCREMENTAL FROM LSN requires INCREMENTAL FROM TLI")
        }
        (None, Some(_)) => {
            bail!("backup_label: INCREMENTAL FROM TLI requires INCREMENTAL FROM LSN")
        }
    };
    Ok(Label {
        start_lsn,
        start_tli,
        incremental_from,
    })
}

/// `parse_tli()`: an unsigned number followed by a newline, not 0.
fn tli(rest: &str) -> Option<u32> {
    let v = rest.strip_suffix('\n')?;
    let n: u32 = v.parse().ok()?;
    (n != 0).then_some(n)
}

/// `check_backup_label_files()`: labels oldest first (full backup first).
#[cfg(test)]
pub fn check_chain(labels: &[Label]) -> Result<()> {
    for (i, l) in labels.iter().enumerate() {
        if i == 0 {
            ensure!(
                l.incremental_from.is_none(),
                "backup 1 is an incremental backup, but the first backup should be a full backup"
            );
            continue;
        }
        let (from_lsn, from_tli) = l.incremental_from.with_context(|| {
            format!(
                "backup {} is a full backup, but only the first backup should be a full backup",
                i + 1
            )
        })?;
        let prev = &labels[i - 1];
        ensure!(
            prev.start_tli == from_tli,
            "backup {} starts on timeline {}, but expected {from_tli}",
            i,
            prev.start_tli
        );
        ensure!(
            prev.start_lsn == from_lsn,
            "backup {} starts at LSN {}, but expected {}",
            i,
            PgLsn::from(prev.start_lsn),
            PgLsn::from(from_lsn)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels PostgreSQL 18.6 wrote in the experiment (INCREMENTAL-DESIGN.md).
    const FULL: &str = "START WAL LOCATION: 0/8000028 (file 000000010000000000000008)\n\
CHECKPOINT LOCATION: 0/8000080\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2026-12-02 12:47:53 UTC\n\
LABEL: pg_basebackup base backup\n\
START TIMELINE: 1\n";
    const INCR_NO_LINES: &str = "START WAL LOCATION: 0/A000028 (file 00000001000000000000000A)\n\
CHECKPOINT LOCATION: 0/A000080\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2026-12-02 12:47:56 UTC\n\
LABEL: pg_basebackup base backup\n\
START TIMELINE: 1\n";
    const INCR: &str = "START WAL LOCATION: 0/A000028 (file 00000001000000000000000A)\n\
CHECKPOINT LOCATION: 0/A000080\n\
BACKUP METHOD: streamed\n\
BACKUP FROM: primary\n\
START TIME: 2026-12-02 12:47:56 UTC\n\
LABEL: pg_basebackup base backup\n\
START TIMELINE: 1\n\
INCREMENTAL FROM LSN: 0/8000028\n\
INCREMENTAL FROM TLI: 1\n";

    #[test]
    fn lines_go_where_the_server_puts_them() {
        assert_eq!(
            add_incremental_lines(INCR_NO_LINES, 0x8000028, 1).unwrap(),
            INCR
        );
        assert_eq!(INCR.len(), 281); // the size in PostgreSQL's manifest
        // Idempotent; a different prior is refused.
        assert_eq!(add_incremental_lines(INCR, 0x8000028, 1).unwrap(), INCR);
        assert!(add_incremental_lines(INCR, 0x8000029, 1).is_err());
        // A label with something after START TIMELINE keeps it after our lines.
        let odd = format!("{INCR_NO_LINES}EXTRA: x\n");
        let got = add_incremental_lines(&odd, 0x8000028, 1).unwrap();
        assert!(
            got.ends_with("INCREMENTAL FROM TLI: 1\nEXTRA: x\n"),
            "{got}"
        );
    }

    #[test]
    fn parse_and_chain() {
        let full = parse(FULL).unwrap();
        let incr = parse(INCR).unwrap();
        assert_eq!(
            full,
            Label {
                start_lsn: 0x8000028,
                start_tli: 1,
                incremental_from: None
            }
        );
        assert_eq!(incr.incremental_from, Some((0x8000028, 1)));
        check_chain(&[full, incr]).unwrap();
        assert!(check_chain(&[incr]).is_err());
        assert!(check_chain(&[full, full]).is_err());
        let wrong = Label {
            incremental_from: Some((0x8000000, 1)),
            ..incr
        };
        assert!(
            check_chain(&[full, wrong])
                .unwrap_err()
                .to_string()
                .contains("starts at LSN")
        );
        // Half of the pair: refused as pg_combinebackup does.
        let half = INCR.replace("INCREMENTAL FROM TLI: 1\n", "");
        assert!(parse(&half).is_err());
        assert!(parse(&INCR.replace("START TIMELINE: 1", "START TIMELINE: 0")).is_err());
    }
}
