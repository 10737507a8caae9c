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
use super::{Fork, Geometry};
use crate::pg::parse_lsn;

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

/// What the experiment directory holds for one version.
struct Setup {
    dir: PathBuf,
    v: String,
    g: Geometry,
    data: PathBuf,
    incr: PathBuf,
    version_dir: String,
    prior: PriorManifest,
    start_lsn: u64,
    from_lsn: u64,
    required: Vec<super::prior::RequiredRange>,
}

/// The prior manifest, the incremental backup's label and the plan of summaries.
fn setup() -> Setup {
    let Ok(dir) = std::env::var("INCX") else {
        panic!("set INCX to the experiment directory");
    };
    let dir = PathBuf::from(dir);
    let v = std::env::var("INCX_VER").unwrap_or_else(|_| "18".to_string());
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
    Setup {
        g: Geometry::default(),
        data,
        incr,
        version_dir,
        prior,
        start_lsn: incr_label.start_lsn,
        from_lsn: plan.from_lsn,
        required: plan.required,
        dir,
        v,
    }
}

/// The summaries of `rows<v>.csv`, chosen and merged as the backup would.
fn table(s: &Setup) -> BlockRefTable {
    let csv = fs::read_to_string(s.dir.join(format!("rows{}.csv", s.v))).unwrap();
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
    let chosen = choose_summaries(&available, &s.required, s.from_lsn, s.start_lsn).unwrap();
    let mut table = BlockRefTable::new();
    for ws in &chosen {
        table.absorb(rows.iter().filter(|r| r.0 == *ws).map(|r| r.1));
    }
    println!(
        "summaries chosen: {chosen:?}; forks in table: {}",
        table.len()
    );
    table
}

/// The backup's manifest entry of `path`: (size, checksum).
fn manifest_entry(manifest: &str, path: &str) -> Option<(u64, String)> {
    let needle = format!("{{ \"Path\": \"{path}\", \"Size\": ");
    let line = manifest.lines().find(|l| l.starts_with(&needle))?;
    let size = line[needle.len()..].split(',').next()?.parse().ok()?;
    let ck = line
        .split("\"Checksum\": \"")
        .nth(1)?
        .split("\"")
        .next()?
        .to_string();
    Some((size, ck))
}

/// Tallies of the comparison.
#[derive(Default)]
struct Tally {
    incremental: usize,
    whole: usize,
    identical: usize,
    header_only: usize,
    mismatches: Vec<String>,
}

#[test]
#[ignore = "needs a PostgreSQL data directory and its own backups, see the module doc"]
fn decisions_and_bytes_match_postgresql() {
    let s = setup();
    let table = table(&s);
    let manifest = fs::read_to_string(s.incr.join("backup_manifest")).unwrap();
    let mut files = Vec::new();
    walk(&s.data, "", &mut files);
    let mut t = Tally::default();
    for (path, size) in &files {
        if let Some(rf) = classify(path, &s.version_dir) {
            compare(&s, &table, &manifest, &rf, path, *size, &mut t);
        }
    }
    println!(
        "relation files: {} incremental ({} byte-identical, {} same header only), {} whole",
        t.incremental, t.identical, t.header_only, t.whole
    );
    assert!(t.mismatches.is_empty(), "{:#?}", t.mismatches);
}

/// One relation file: our decision and bytes against the server's.
fn compare(
    s: &Setup,
    table: &BlockRefTable,
    manifest: &str,
    rf: &RelFile,
    path: &str,
    size: u64,
    t: &mut Tally,
) {
    let g = s.g;
    // Where the backup keeps this file: tablespaces are in their own directory.
    let backup_dir = |p: &str| -> PathBuf {
        match p.strip_prefix(&format!("pg_tblspc/{}/", rf.spc)) {
            Some(rest) if rf.spc != 1663 && rf.spc != 1664 => {
                s.dir.join(format!("incr{}_ts1", s.v)).join(rest)
            }
            _ => s.incr.join(p),
        }
    };
    let mpath = rf.path(&s.version_dir);
    let ipath = rf.incremental_path(&s.version_dir);
    let method = file_backup_method(
        table,
        &s.prior,
        Rules::Postgres,
        g,
        rf,
        &mpath,
        &ipath,
        size,
    );
    let (pg_inc, pg_whole) = (backup_dir(&ipath), backup_dir(&mpath));
    let Method::Incremental {
        blocks,
        truncation_block_length,
    } = method
    else {
        t.whole += 1;
        if !pg_whole.exists() || pg_inc.exists() {
            t.mismatches
                .push(format!("{mpath}: we send it whole, PostgreSQL did not"));
        }
        return;
    };
    t.incremental += 1;
    let Ok(theirs) = fs::read(&pg_inc) else {
        t.mismatches.push(format!(
            "{mpath}: we send it incrementally, PostgreSQL whole"
        ));
        return;
    };
    let h = Header::new(truncation_block_length, blocks, g).unwrap();
    let live = fs::read(s.data.join(path)).unwrap();
    let ours = assemble(&h, g, |i| {
        let off = h.blocks[i] as usize * g.blcksz as usize;
        live.get(off..off + g.blcksz as usize)
    });
    let hs = h.encode(g).len();
    if theirs.len() != ours.len() || theirs[..hs] != ours[..hs] {
        let decoded = Header::decode(&theirs, g).ok();
        t.mismatches.push(format!(
            "{mpath}: header differs: ours {h:?} theirs {decoded:?}"
        ));
        return;
    }
    if theirs == ours {
        t.identical += 1;
    } else {
        t.header_only += 1;
        println!("{mpath}: same header, block contents changed since the backup");
    }
    check_manifest_entry(manifest, &ipath, &ours, theirs == ours);
}

/// The manifest entry we would write: size and CRC-32C of our bytes.
fn check_manifest_entry(manifest: &str, ipath: &str, ours: &[u8], identical: bool) {
    let (msize, mck) = manifest_entry(manifest, ipath).expect("PostgreSQL's manifest lists it");
    assert_eq!(msize, ours.len() as u64, "{ipath}");
    if identical {
        assert_eq!(
            mck,
            hex::encode(crc32c::crc32c(ours).to_le_bytes()),
            "{ipath}"
        );
    }
    let _ = (Fork::Main, RelFile::of_block);
}
