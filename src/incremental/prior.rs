//! The prior backup's `backup_manifest`, and what an incremental backup on top of it needs
//! from it.
//!
//! The server reads the uploaded manifest in `CreateIncrementalBackupInfo()` and its
//! callbacks (src/backend/backup/basebackup_incremental.c):
//! * `manifest_process_version`: version 1 is refused ("backup manifest version 1 does not
//!   support incremental backup"); PostgreSQL 13-16 write version 1.
//! * `manifest_process_system_identifier`: must equal the server's
//!   (`pg_control_system().system_identifier`).
//! * `manifest_process_file`: keeps path and size of every file (the checksums are not used).
//! * `manifest_process_wal_range`: keeps every WAL range (timeline, start LSN, end LSN).
//!
//! The JSON parser behind them (src/common/parse_manifest.c) also verifies
//! `Manifest-Checksum`: SHA-256 of every byte up to and including the second-to-last newline.
//!
//! [`plan_summaries`] then ports the checks of `PrepareForIncrementalBackup()`: each WAL
//! range's timeline must be in the server's history, the ranges must line up with the
//! timeline switches, the prior backup must not need WAL past this backup's start; it yields
//! `INCREMENTAL FROM LSN/TLI` and, per timeline, the LSN range the WAL summaries must cover.

use postgres::types::PgLsn;

use crate::pg::parse_lsn;
use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};

/// One entry of the manifest's `WAL-Ranges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    pub tli: u32,
    pub start_lsn: u64,
    pub end_lsn: u64,
}

/// What an incremental backup needs from the prior backup's manifest.
#[derive(Debug, Clone)]
pub struct PriorManifest {
    /// `PostgreSQL-Backup-Manifest-Version` (2 for PostgreSQL 17+).
    pub version: u32,
    /// `System-Identifier` (version 2 only).
    pub system_identifier: Option<u64>,
    /// Path (as raw bytes: `Encoded-Path` is hex of a name that is not UTF-8) -> size.
    pub files: HashMap<Vec<u8>, u64>,
    /// In manifest order: the newest timeline first (`AddWALInfoToBackupManifest` walks the
    /// history from the end timeline back to the start timeline).
    pub wal_ranges: Vec<WalRange>,
}

impl PriorManifest {
    /// Parses and checks a whole `backup_manifest`.
    pub fn parse(bytes: &[u8]) -> Result<PriorManifest> {
        verify_manifest_checksum(bytes)?;
        let v: serde_json::Value =
            serde_json::from_slice(bytes).context("backup manifest is not valid JSON")?;
        let obj = v
            .as_object()
            .context("backup manifest is not a JSON object")?;

        let version = obj
            .get("PostgreSQL-Backup-Manifest-Version")
            .and_then(|v| v.as_u64())
            .context("backup manifest has no PostgreSQL-Backup-Manifest-Version")?;
        ensure!(
            version == 1 || version == 2,
            "unexpected manifest version {version}"
        );
        let system_identifier = match obj.get("System-Identifier") {
            Some(v) => Some(v.as_u64().context("System-Identifier is not an integer")?),
            None => None,
        };
        ensure!(
            version == 1 || system_identifier.is_some(),
            "backup manifest version 2 has no System-Identifier"
        );

        let mut files = HashMap::new();
        for f in obj
            .get("Files")
            .and_then(|v| v.as_array())
            .context("backup manifest has no Files array")?
        {
            let path = match (f.get("Path"), f.get("Encoded-Path")) {
                (Some(p), None) => p
                    .as_str()
                    .context("Path is not a string")?
                    .as_bytes()
                    .to_vec(),
                (None, Some(p)) => hex::decode(p.as_str().context("Encoded-Path is not a string")?)
                    .context("Encoded-Path is not hex")?,
                _ => bail!("a file entry needs exactly one of Path and Encoded-Path"),
            };
            let size = f
                .get("Size")
                .and_then(|v| v.as_u64())
                .with_context(|| format!("no Size for {}", String::from_utf8_lossy(&path)))?;
            // The server keeps the first entry of a duplicated path (backup_file_insert).
            files.entry(path).or_insert(size);
        }

        let mut wal_ranges = Vec::new();
        if let Some(ranges) = obj.get("WAL-Ranges") {
            for r in ranges.as_array().context("WAL-Ranges is not an array")? {
                let tli = r
                    .get("Timeline")
                    .and_then(|v| v.as_u64())
                    .and_then(|v| u32::try_from(v).ok())
                    .context("WAL range without a valid Timeline")?;
                let lsn = |key: &str| -> Result<u64> {
                    r.get(key)
                        .and_then(|v| v.as_str())
                        .and_then(parse_lsn)
                        .with_context(|| format!("WAL range without a valid {key}"))
                };
                wal_ranges.push(WalRange {
                    tli,
                    start_lsn: lsn("Start-LSN")?,
                    end_lsn: lsn("End-LSN")?,
                });
            }
        }

        Ok(PriorManifest {
            version: version as u32,
            system_identifier,
            files,
            wal_ranges,
        })
    }

    /// The checks the server makes while reading the manifest, before anything else:
    /// version 2 and the same system identifier.
    pub fn check_server(&self, server_system_identifier: u64) -> Result<()> {
        ensure!(
            self.version != 1,
            "backup manifest version 1 does not support incremental backup"
        );
        let sysid = self.system_identifier.unwrap_or_default();
        ensure!(
            sysid == server_system_identifier,
            "system identifier in backup manifest is {sysid}, but database system identifier \
             is {server_system_identifier}"
        );
        Ok(())
    }

    /// Is this path (relative to the data directory, as in the manifest) listed?
    pub fn contains(&self, path: &[u8]) -> bool {
        self.files.contains_key(path)
    }
}

/// `verify_manifest_checksum()` of src/common/parse_manifest.c: the last byte must be a
/// newline, there must be at least two lines, and `Manifest-Checksum` is the SHA-256 of the
/// bytes up to and including the second-to-last newline.
pub fn verify_manifest_checksum(bytes: &[u8]) -> Result<()> {
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    ensure!(
        newlines.len() >= 2,
        "expected at least 2 lines in the backup manifest"
    );
    let last = newlines[newlines.len() - 1];
    ensure!(
        last == bytes.len() - 1,
        "last line of the backup manifest not newline-terminated"
    );
    let penultimate = newlines[newlines.len() - 2];
    let last_line = std::str::from_utf8(&bytes[penultimate + 1..])
        .context("last line of the backup manifest is not UTF-8")?;
    let want = last_line
        .split_once("\"Manifest-Checksum\"")
        .and_then(|(_, rest)| rest.split("\"").nth(1))
        .context("backup manifest has no Manifest-Checksum")?;
    let got = hex::encode(Sha256::digest(&bytes[..penultimate + 1]));
    ensure!(
        want.eq_ignore_ascii_case(&got),
        "manifest checksum mismatch: the backup manifest is damaged"
    );
    Ok(())
}

/// One entry of the server's timeline history (`TimeLineHistoryEntry`): WAL of timeline
/// `tli` runs from `begin` (0 for the first timeline) to `end` (None for the current one).
///
/// Over SQL: the current timeline is `pg_control_checkpoint().timeline_id` (or, on a
/// standby, the replay timeline), and its ancestors are in `pg_wal/<TLI>.history`
/// (`pg_read_binary_file`); the project's `timeline::History` parses that file already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub tli: u32,
    pub begin: u64,
    pub end: Option<u64>,
}

/// One timeline's stretch of WAL that WAL summaries must cover completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequiredRange {
    pub tli: u32,
    pub start_lsn: u64,
    pub end_lsn: u64,
}

/// What [`plan_summaries`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryPlan {
    /// `INCREMENTAL FROM LSN`: the start LSN of the prior backup's earliest WAL range
    /// (= the prior backup's `START WAL LOCATION`).
    pub from_lsn: u64,
    /// `INCREMENTAL FROM TLI`: that range's timeline (= the prior's `START TIMELINE`).
    pub from_tli: u32,
    /// Newest timeline first, as `PrepareForIncrementalBackup` walks them.
    pub required: Vec<RequiredRange>,
}

/// The sanity checks and the choice of WAL summaries of `PrepareForIncrementalBackup()`
/// (src/backend/backup/basebackup_incremental.c), for a backup that started at
/// `start_lsn` on timeline `start_tli`.
///
/// `history` is `readTimeLineHistory(start_tli)`: any order; it is sorted newest first here
/// as the server's list is. Errors carry the server's messages.
pub fn plan_summaries(
    prior: &PriorManifest,
    history: &[TimelineEntry],
    start_tli: u32,
    start_lsn: u64,
) -> Result<SummaryPlan> {
    // "A valid backup manifest must always contain at least one WAL range".
    ensure!(
        !prior.wal_ranges.is_empty(),
        "manifest contains no required WAL ranges"
    );
    // readTimeLineHistory() lists the newest timeline first.
    let mut tles: Vec<TimelineEntry> = history.to_vec();
    tles.sort_by(|a, b| b.begin.cmp(&a.begin).then(b.tli.cmp(&a.tli)));
    let located = locate_ranges(prior, &tles)?;
    check_ranges(prior, &located, start_lsn)?;
    let required = required_ranges(&tles, &located, start_tli, start_lsn);
    Ok(SummaryPlan {
        from_lsn: located.earliest_start,
        from_tli: located.earliest_tli,
        required,
    })
}

/// The history entry of each of the prior's WAL ranges, and which ranges are
/// the earliest and the latest (the first loop of `PrepareForIncrementalBackup`).
struct Located {
    tlep: Vec<TimelineEntry>,
    earliest_tli: u32,
    earliest_start: u64,
    latest_tli: u32,
}

fn locate_ranges(prior: &PriorManifest, tles: &[TimelineEntry]) -> Result<Located> {
    let mut tlep: Vec<TimelineEntry> = Vec::with_capacity(prior.wal_ranges.len());
    let mut earliest_tli = 0u32;
    let mut earliest_start = 0u64;
    let mut latest_tli = 0u32;
    for range in &prior.wal_ranges {
        let mut saw_earliest = false;
        let mut saw_latest = false;
        let mut found = None;
        for tle in tles {
            if tle.tli == range.tli {
                found = Some(*tle);
                break;
            }
            if tle.tli == earliest_tli {
                saw_earliest = true;
            }
            if tle.tli == latest_tli {
                saw_latest = true;
            }
        }
        let tle = found.ok_or_else(|| {
            anyhow!(
                "timeline {} found in manifest, but not in this server's history",
                range.tli
            )
        })?;
        tlep.push(tle);
        if !saw_latest {
            latest_tli = range.tli;
        }
        if earliest_tli == 0 || saw_earliest {
            earliest_tli = range.tli;
            earliest_start = range.start_lsn;
        }
    }

    Ok(Located {
        tlep,
        earliest_tli,
        earliest_start,
        latest_tli,
    })
}

/// Every range must line up with the server's timeline switches, and the
/// prior must not need WAL past this backup's start.
fn check_ranges(prior: &PriorManifest, located: &Located, start_lsn: u64) -> Result<()> {
    let Located {
        tlep,
        earliest_tli,
        latest_tli,
        ..
    } = located;
    let (earliest_tli, latest_tli) = (*earliest_tli, *latest_tli);
    for (range, tle) in prior.wal_ranges.iter().zip(tlep) {
        if range.tli == earliest_tli {
            ensure!(
                range.start_lsn >= tle.begin,
                "manifest requires WAL from initial timeline {} starting at {}, but that \
                 timeline begins at {}",
                range.tli,
                PgLsn::from(range.start_lsn),
                PgLsn::from(tle.begin)
            );
        } else {
            ensure!(
                range.start_lsn == tle.begin,
                "manifest requires WAL from continuation timeline {} starting at {}, but that \
                 timeline begins at {}",
                range.tli,
                PgLsn::from(range.start_lsn),
                PgLsn::from(tle.begin)
            );
        }
        if range.tli == latest_tli {
            ensure!(
                range.end_lsn <= start_lsn,
                "manifest requires WAL from final timeline {} ending at {}, but this backup \
                 starts at {} (this can happen for incremental backups on a standby if there \
                 was little activity since the previous backup)",
                range.tli,
                PgLsn::from(range.end_lsn),
                PgLsn::from(start_lsn)
            );
        } else {
            // The server compares with the history entry's end (InvalidXLogRecPtr, 0, for
            // the current timeline).
            ensure!(
                range.end_lsn == tle.end.unwrap_or(0),
                "manifest requires WAL from non-final timeline {} ending at {}, but this server \
                 switched timelines at {}",
                range.tli,
                PgLsn::from(range.end_lsn),
                PgLsn::from(tle.end.unwrap_or(0))
            );
        }
    }

    Ok(())
}

/// Per timeline, from this backup's start timeline back to the earliest
/// range's: the stretch of WAL the summaries must cover, newest first.
fn required_ranges(
    tles: &[TimelineEntry],
    located: &Located,
    start_tli: u32,
    start_lsn: u64,
) -> Vec<RequiredRange> {
    let (earliest_tli, earliest_start) = (located.earliest_tli, located.earliest_start);
    let mut required = Vec::new();
    let mut found_start_tli = false;
    for tle in tles {
        let mut tli_start = tle.begin;
        let mut tli_end = tle.end.unwrap_or(0);
        if tle.tli == start_tli {
            found_start_tli = true;
            tli_end = start_lsn;
        } else if !found_start_tli {
            continue;
        }
        if tle.tli == earliest_tli {
            tli_start = earliest_start;
        }
        required.push(RequiredRange {
            tli: tle.tli,
            start_lsn: tli_start,
            end_lsn: tli_end,
        });
        if tle.tli == earliest_tli {
            break;
        }
    }

    required
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a manifest with a correct Manifest-Checksum, laid out as the server does.
    pub(crate) fn manifest(
        sysid: u64,
        files: &[(&str, u64)],
        ranges: &[(u32, &str, &str)],
    ) -> Vec<u8> {
        let mut s = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {sysid},\n\"Files\": ["
        );
        for (i, (p, size)) in files.iter().enumerate() {
            s += if i == 0 { "\n" } else { ",\n" };
            s += &format!(
                "{{ \"Path\": \"{p}\", \"Size\": {size}, \"Last-Modified\": \"2026-12-02 12:47:37 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" }}"
            );
        }
        s += "\n],\n\"WAL-Ranges\": [\n";
        for (i, (tli, a, b)) in ranges.iter().enumerate() {
            if i > 0 {
                s += ",\n";
            }
            s +=
                &format!("{{ \"Timeline\": {tli}, \"Start-LSN\": \"{a}\", \"End-LSN\": \"{b}\" }}");
        }
        s += "\n],\n";
        let sum = hex::encode(Sha256::digest(s.as_bytes()));
        s += &format!("\"Manifest-Checksum\": \"{sum}\"}}\n");
        s.into_bytes()
    }

    #[test]
    fn parses_what_the_server_writes() {
        let m = manifest(
            7714687505405506356,
            &[
                ("backup_label", 281),
                ("base/5/16437", 26943488),
                ("global/INCREMENTAL.1261", 12),
            ],
            &[(1, "0/8000028", "0/8000158")],
        );
        let p = PriorManifest::parse(&m).unwrap();
        assert_eq!(p.version, 2);
        assert_eq!(p.system_identifier, Some(7714687505405506356));
        assert_eq!(p.files.get(b"base/5/16437".as_slice()), Some(&26943488));
        assert!(p.contains(b"global/INCREMENTAL.1261"));
        assert_eq!(
            p.wal_ranges,
            vec![WalRange {
                tli: 1,
                start_lsn: 0x8000028,
                end_lsn: 0x8000158
            }]
        );
        p.check_server(7714687505405506356).unwrap();
        let e = p.check_server(1).unwrap_err().to_string();
        assert!(
            e.contains("system identifier in backup manifest is 7714687505405506356"),
            "{e}"
        );
    }

    #[test]
    fn encoded_path_and_damage() {
        let mut m = manifest(1, &[("x", 1)], &[(1, "0/1", "0/2")]);
        // Swap in an Encoded-Path entry and recompute the checksum.
        let text = String::from_utf8(m.clone()).unwrap();
        let body = text.rsplit_once("\"Manifest-Checksum\"").unwrap().0;
        let body = body.replace("\"Path\": \"x\"", "\"Encoded-Path\": \"626164ff\"");
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        let fixed = format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n");
        let p = PriorManifest::parse(fixed.as_bytes()).unwrap();
        assert!(p.contains(b"bad\xff"));
        // One flipped byte in the body: refused.
        let i = m.iter().position(|b| *b == b'x').unwrap();
        m[i] = b'y';
        let e = PriorManifest::parse(&m).unwrap_err().to_string();
        assert!(e.contains("manifest checksum mismatch"), "{e}");
    }

    #[test]
    fn version_1_is_refused_for_incremental() {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n";
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        let m = format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n");
        let p = PriorManifest::parse(m.as_bytes()).unwrap();
        let e = p.check_server(0).unwrap_err().to_string();
        assert_eq!(
            e,
            "backup manifest version 1 does not support incremental backup"
        );
    }

    fn tl1() -> Vec<TimelineEntry> {
        vec![TimelineEntry {
            tli: 1,
            begin: 0,
            end: None,
        }]
    }

    #[test]
    fn single_timeline_plan() {
        let m = PriorManifest::parse(&manifest(1, &[], &[(1, "0/8000028", "0/8000158")])).unwrap();
        let plan = plan_summaries(&m, &tl1(), 1, 0xA000028).unwrap();
        assert_eq!(plan.from_lsn, 0x8000028);
        assert_eq!(plan.from_tli, 1);
        assert_eq!(
            plan.required,
            vec![RequiredRange {
                tli: 1,
                start_lsn: 0x8000028,
                end_lsn: 0xA000028
            }]
        );
        // The prior backup needs WAL past our start: refused.
        let e = plan_summaries(&m, &tl1(), 1, 0x8000100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manifest requires WAL from final timeline 1 ending at 0/8000158"),
            "{e}"
        );
    }

    #[test]
    fn prior_on_an_older_timeline_after_promotion() {
        // Server history: 1 [0, 0/5000000), 2 [0/5000000, 0/9000000), 3 [0/9000000, ...).
        let history = vec![
            TimelineEntry {
                tli: 1,
                begin: 0,
                end: Some(0x5000000),
            },
            TimelineEntry {
                tli: 2,
                begin: 0x5000000,
                end: Some(0x9000000),
            },
            TimelineEntry {
                tli: 3,
                begin: 0x9000000,
                end: None,
            },
        ];
        let m = PriorManifest::parse(&manifest(1, &[], &[(1, "0/3000028", "0/3000100")])).unwrap();
        let plan = plan_summaries(&m, &history, 3, 0xB000028).unwrap();
        assert_eq!((plan.from_lsn, plan.from_tli), (0x3000028, 1));
        assert_eq!(
            plan.required,
            vec![
                RequiredRange {
                    tli: 3,
                    start_lsn: 0x9000000,
                    end_lsn: 0xB000028
                },
                RequiredRange {
                    tli: 2,
                    start_lsn: 0x5000000,
                    end_lsn: 0x9000000
                },
                RequiredRange {
                    tli: 1,
                    start_lsn: 0x3000028,
                    end_lsn: 0x5000000
                },
            ]
        );
        // A prior backup of a timeline this server never had: refused.
        let other =
            PriorManifest::parse(&manifest(1, &[], &[(4, "0/3000028", "0/3000100")])).unwrap();
        let e = plan_summaries(&other, &history, 3, 0xB000028)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "timeline 4 found in manifest, but not in this server's history"
        );
        // A prior backup that spanned the 1 -> 2 switch at another LSN than ours: refused.
        let spanned = PriorManifest::parse(&manifest(
            1,
            &[],
            &[(2, "0/5000000", "0/5000200"), (1, "0/4000028", "0/4800000")],
        ))
        .unwrap();
        let e = plan_summaries(&spanned, &history, 3, 0xB000028)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("non-final timeline 1 ending at 0/4800000"),
            "{e}"
        );
        // The same backup with the right switch point is fine and starts at its TLI 1 start.
        let ok = PriorManifest::parse(&manifest(
            1,
            &[],
            &[(2, "0/5000000", "0/5000200"), (1, "0/4000028", "0/5000000")],
        ))
        .unwrap();
        let plan = plan_summaries(&ok, &history, 3, 0xB000028).unwrap();
        assert_eq!((plan.from_lsn, plan.from_tli), (0x4000028, 1));
    }
}
