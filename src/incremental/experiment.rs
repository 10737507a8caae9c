//! The manual experiment of INCREMENTAL-DESIGN.md as a test: given a PostgreSQL data
//! directory, its own full and incremental backups (`pg_basebackup --incremental`) and a dump
//! of its WAL summaries, decide every relation file with this module and compare with what
//! the server wrote, byte for byte. Needs the files, so it is ignored by default:
//!
//! ```text
//! INCX=/tmp/incx cargo test --release --bin pg_basebackup incremental::experiment -- --ignored --nocapture
//! ```
//!
//! Layout under `$INCX` (`$INCX_VER`, default 18, picks the version): `pg18/` (the data directory, quiet since the incremental backup),
//! `full18/`, `incr18/` (+ `incr18_ts1/` for tablespace 16409 when there is one) and
//! `rows18.csv` (`tli,start,end,spc,db,rel,fork,block,is_limit` of every summary).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::decide::{Method, Rules, file_backup_method};
use super::file::{Header, assemble};
use super::label;
use super::prior::{PriorManifest, TimelineEntry, plan_summaries};
use super::relpath::{RelFile, classify};
use super::summary::{BlockRefTable, SummaryFile, SummaryRow, choose_summaries};
use super::{Fork, Geometry, parse_lsn};

fn walk(root: &Path, rel: &str, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let md = fs::metadata(e.path()).unwrap();
        if md.is_dir() {
            walk(root, &path, out);
        } else {
            out.push((path, md.len()));
        }
    }
}

#[test]
#[ignore = "needs a PostgreSQL data directory and its own backups, see the module doc"]
fn decisions_and_bytes_match_postgresql() {
    let Ok(dir) = std::env::var("INCX") else {
        panic!("set INCX to the experiment directory");
    };
    let dir = PathBuf::from(dir);
    let v = std::env::var("INCX_VER").unwrap_or_else(|_| "18".to_string());
    let g = Geometry::default();
    let data = dir.join(format!("pg{v}"));
    let incr = dir.join(format!("incr{v}"));
    let version_dir = fs::read_dir(data.join("pg_tblspc"))
        .unwrap()
        .flatten()
        .find_map(|e| {
            fs::read_dir(e.path()).ok()?.flatten().find_map(|v| {
                let n = v.file_name().to_string_lossy().into_owned();
                n.starts_with("PG_").then_some(n)
            })
        })
        .unwrap_or_else(|| format!("PG_{v}_0"));

    // The prior manifest and the plan.
    let prior =
        PriorManifest::parse(&fs::read(dir.join(format!("full{v}/backup_manifest"))).unwrap())
            .unwrap();
    let incr_label_text = fs::read_to_string(incr.join("backup_label")).unwrap();
    let incr_label = label::parse(&incr_label_text).unwrap();
    let history = [TimelineEntry {
        tli: 1,
        begin: 0,
        end: None,
    }];
    let plan =
        plan_summaries(&prior, &history, incr_label.start_tli, incr_label.start_lsn).unwrap();
    assert_eq!(
        incr_label.incremental_from,
        Some((plan.from_lsn, plan.from_tli))
    );
    // The label we would write from what pg_backup_stop() returns.
    let without: String = incr_label_text
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("INCREMENTAL FROM"))
        .collect();
    assert_eq!(
        label::add_incremental_lines(&without, plan.from_lsn, plan.from_tli).unwrap(),
        incr_label_text
    );

    // Summaries.
    let csv = fs::read_to_string(dir.join(format!("rows{v}.csv"))).unwrap();
    let mut rows: Vec<(SummaryFile, SummaryRow)> = Vec::new();
    for line in csv.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let ws = SummaryFile {
            tli: f[0].parse().unwrap(),
            start_lsn: parse_lsn(f[1]).unwrap(),
            end_lsn: parse_lsn(f[2]).unwrap(),
        };
        let row = SummaryRow::from_sql(
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            f[5].parse().unwrap(),
            f[6].parse().unwrap(),
            f[7].parse().unwrap(),
            f[8] == "t",
        )
        .unwrap();
        rows.push((ws, row));
    }
    let available: Vec<SummaryFile> = rows
        .iter()
        .map(|r| r.0)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let chosen = choose_summaries(
        &available,
        &plan.required,
        plan.from_lsn,
        incr_label.start_lsn,
    )
    .unwrap();
    let mut table = BlockRefTable::new();
    for ws in &chosen {
        table.absorb(rows.iter().filter(|r| r.0 == *ws).map(|r| r.1));
    }
    println!(
        "summaries chosen: {chosen:?}; forks in table: {}",
        table.len()
    );

    // The backup's manifest entries, path -> (size, checksum).
    let incr_manifest = fs::read_to_string(incr.join("backup_manifest")).unwrap();
    let entry = |path: &str| -> Option<(u64, String)> {
        let needle = format!("{{ \"Path\": \"{path}\", \"Size\": ");
        let line = incr_manifest.lines().find(|l| l.starts_with(&needle))?;
        let size = line[needle.len()..].split(',').next()?.parse().ok()?;
        let ck = line
            .split("\"Checksum\": \"")
            .nth(1)?
            .split('"')
            .next()?
            .to_string();
        Some((size, ck))
    };

    let mut files = Vec::new();
    walk(&data, "", &mut files);
    let (mut n_inc, mut n_whole, mut identical, mut header_only) = (0, 0, 0, 0);
    let mut mismatches = Vec::new();
    for (path, size) in &files {
        let Some(rf) = classify(path, &version_dir) else {
            continue;
        };
        // Where the backup keeps this file: tablespaces are in their own directory.
        let backup_dir = |p: &str| -> PathBuf {
            match p.strip_prefix(&format!("pg_tblspc/{}/", rf.spc)) {
                Some(rest) if rf.spc != 1663 && rf.spc != 1664 => {
                    dir.join(format!("incr{v}_ts1")).join(rest)
                }
                _ => incr.join(p),
            }
        };
        let mpath = rf.path(&version_dir);
        let ipath = rf.incremental_path(&version_dir);
        let method = file_backup_method(
            &table,
            &prior,
            Rules::Postgres,
            g,
            &rf,
            &mpath,
            &ipath,
            *size,
        );
        let pg_inc = backup_dir(&ipath);
        let pg_whole = backup_dir(&mpath);
        match method {
            Method::Whole => {
                n_whole += 1;
                if !pg_whole.exists() || pg_inc.exists() {
                    mismatches.push(format!("{mpath}: we send it whole, PostgreSQL did not"));
                }
            }
            Method::Incremental {
                blocks,
                truncation_block_length,
            } => {
                n_inc += 1;
                let Ok(theirs) = fs::read(&pg_inc) else {
                    mismatches.push(format!(
                        "{mpath}: we send it incrementally, PostgreSQL whole"
                    ));
                    continue;
                };
                let h = Header::new(truncation_block_length, blocks, g).unwrap();
                let live = fs::read(data.join(path)).unwrap();
                let ours = assemble(&h, g, |i| {
                    let off = h.blocks[i] as usize * g.blcksz as usize;
                    live.get(off..off + g.blcksz as usize)
                });
                let hs = h.encode(g).len();
                if theirs.len() != ours.len() || theirs[..hs] != ours[..hs] {
                    mismatches.push(format!(
                        "{mpath}: header differs: ours {:?} theirs {:?}",
                        h,
                        Header::decode(&theirs, g).ok()
                    ));
                    continue;
                }
                if theirs == ours {
                    identical += 1;
                } else {
                    header_only += 1;
                    println!("{mpath}: same header, block contents changed since the backup");
                }
                // The manifest entry we would write: size and CRC-32C of our bytes.
                let (msize, mck) = entry(&ipath).expect("PostgreSQL's manifest lists it");
                assert_eq!(msize, ours.len() as u64, "{ipath}");
                if theirs == ours {
                    assert_eq!(
                        mck,
                        hex::encode(crc32c::crc32c(&ours).to_le_bytes()),
                        "{ipath}"
                    );
                }
            }
        }
        let _ = (Fork::Main, RelFile::of_block);
    }
    println!(
        "relation files: {} incremental ({identical} byte-identical, {header_only} same header only), {} whole",
        n_inc, n_whole
    );
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}
