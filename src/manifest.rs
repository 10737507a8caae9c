//! `backup_manifest` that PostgreSQL's `pg_verifybackup` accepts: [`ManifestWriter`]
//! collects one entry per file (from any thread) and renders the manifest exactly as the
//! server's `backup_manifest.c` does: same line breaks, spacing, `escape_json` escaping,
//! `Encoded-Path` for names that are not UTF-8, `Last-Modified` in GMT, and the closing
//! `Manifest-Checksum` (SHA-256 of every byte before its line). The per-file checksums it
//! writes are computed as the bytes arrive, by `integrity::checksum`.
//!
//! Layout written by the server (PostgreSQL 13-16 write version 1 and no System-Identifier):
//!
//! ```text
//! { "PostgreSQL-Backup-Manifest-Version": 2,
//! "System-Identifier": 7300000000000000000,
//! "Files": [
//! { "Path": "backup_label", "Size": 225, "Last-Modified": "2024-01-02 03:04:05 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722" },
//! { "Encoded-Path": "626164ff", "Size": 5, "Last-Modified": "2024-01-02 03:04:05 GMT" }
//! ],
//! "WAL-Ranges": [
//! { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }
//! ],
//! "Manifest-Checksum": "<64 hex digits>"}
//! ```

use std::sync::Mutex;

use anyhow::{Result, bail, ensure};
use postgres::types::PgLsn;
use sha2::{Digest, Sha256};

use crate::integrity::checksum::ChecksumAlgorithm;
use crate::pg::timeline::WalRange;
use crate::pg::version::MINIMUM_VERSION_FOR_MANIFEST_SYSTEM_IDENTIFIER;

/// One file of the manifest.
struct ManifestEntry {
    path: Vec<u8>,
    size: u64,
    mtime: i64,
    checksum: Option<String>,
}

/// Accumulates manifest entries and renders `backup_manifest`.
///
/// # Thread safety
/// `Send + Sync` with a `Mutex` inside: [`add_file`](Self::add_file) takes `&self`, so
/// workers can add entries through a shared reference or an `Arc`. `finish` consumes the
/// writer (use `Arc::into_inner` once the workers are done).
pub struct ManifestWriter {
    version: u32,
    system_identifier: u64,
    alg: ChecksumAlgorithm,
    files: Mutex<Vec<ManifestEntry>>,
}

impl ManifestWriter {
    /// `server_major` is the major version (15, 17, ...); a `server_version_num` such as
    /// 170002 is understood too. 17 and later get manifest version 2 with the
    /// `System-Identifier` line (pg_verifybackup 17+ checks it against the backup's
    /// pg_control); 13 to 16 get version 1, the only one their pg_verifybackup accepts.
    /// Servers before 13 have no manifests; version 1 is written for them as well.
    pub fn new(server_major: u32, system_identifier: u64, alg: ChecksumAlgorithm) -> Self {
        let version_num = if server_major >= 1000 {
            server_major
        } else {
            server_major * 10000
        };
        ManifestWriter {
            version: if version_num >= MINIMUM_VERSION_FOR_MANIFEST_SYSTEM_IDENTIFIER {
                2
            } else {
                1
            },
            system_identifier,
            alg,
            files: Mutex::new(Vec::new()),
        }
    }

    /// Add one file. `path` is the raw name relative to DEST, `/`-separated (tablespace
    /// files as `pg_tblspc/<oid>/PG_.../...`, like the server); `size` is the number of bytes
    /// written; `mtime_unix` the server's modification time in seconds since 1970;
    /// `checksum` the result of [`FileChecksum::finish`] (`None` exactly when the algorithm is
    /// NONE). Mistakes (duplicate path, checksum that does not fit the algorithm) are
    /// reported by [`finish`](Self::finish).
    ///
    /// [`FileChecksum::finish`]: crate::integrity::checksum::FileChecksum::finish
    pub fn add_file(&self, path: &[u8], size: u64, mtime_unix: i64, checksum: Option<String>) {
        let entry = ManifestEntry {
            path: path.to_vec(),
            size,
            mtime: mtime_unix,
            checksum,
        };
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(entry);
    }

    /// The complete manifest, entries sorted by path, ending with the `Manifest-Checksum`
    /// line and a newline. `wal_ranges` are written in the given order; the server lists the
    /// backup's end timeline first and walks back to the start timeline, each range ending
    /// where the next newer timeline began.
    pub fn finish(self, wal_ranges: &[WalRange]) -> Result<Vec<u8>> {
        let mut files = self
            .files
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));

        for pair in files.windows(2) {
            ensure!(
                pair[0].path != pair[1].path,
                "file \"{}\" added to the backup manifest twice",
                String::from_utf8_lossy(&pair[0].path)
            );
        }
        for f in &files {
            let shown = String::from_utf8_lossy(&f.path);
            ensure!(
                !f.path.is_empty() && !f.path.contains(&0) && f.path[0] != b'/',
                "invalid path \"{shown}\" in backup manifest"
            );
            match (&f.checksum, self.alg) {
                (None, ChecksumAlgorithm::None) => {}
                (Some(c), alg) if alg != ChecksumAlgorithm::None => ensure!(
                    c.len() == 2 * alg.digest_len()
                        && c.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "checksum \"{c}\" of file \"{shown}\" is not a {} checksum in lowercase hex",
                    alg.name()
                ),
                (c, alg) => bail!(
                    "file \"{shown}\": checksum {c:?} does not match algorithm {}",
                    alg.name()
                ),
            }
        }

        let mut out = Vec::with_capacity(200 * files.len() + 512);
        // InitializeBackupManifest()
        if self.version >= 2 {
            out.extend_from_slice(
                format!(
                    "{{ \"PostgreSQL-Backup-Manifest-Version\": {},\n\
                     \"System-Identifier\": {},\n\
                     \"Files\": [",
                    self.version, self.system_identifier
                )
                .as_bytes(),
            );
        } else {
            out.extend_from_slice(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
        }
        // AddFileToBackupManifest(): each entry terminates the previous line.
        for (i, f) in files.iter().enumerate() {
            out.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            write_file_entry(&mut out, f, self.alg);
        }
        // AddWALInfoToBackupManifest()
        out.extend_from_slice(b"\n],\n\"WAL-Ranges\": [\n");
        for (i, r) in wal_ranges.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",\n");
            }
            out.extend_from_slice(
                format!(
                    "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
                    r.timeline,
                    PgLsn::from(r.start_lsn),
                    PgLsn::from(r.end_lsn)
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"\n],\n");
        // SendBackupManifest(): SHA-256 of everything so far, whatever the file algorithm.
        let digest = hex::encode(Sha256::digest(&out));
        out.extend_from_slice(b"\"Manifest-Checksum\": \"");
        out.extend_from_slice(digest.as_bytes());
        out.extend_from_slice(b"\"}\n");
        Ok(out)
    }
}

fn write_file_entry(out: &mut Vec<u8>, f: &ManifestEntry, alg: ChecksumAlgorithm) {
    // The server uses Path when pg_verify_mbstr(PG_UTF8) accepts the name; its rules
    // (no overlong forms, no surrogates, nothing past U+10FFFF) are Rust's.
    match std::str::from_utf8(&f.path) {
        Ok(path) => {
            out.extend_from_slice(b"{ \"Path\": ");
            escape_json(out, path);
            out.extend_from_slice(b", ");
        }
        Err(_) => {
            out.extend_from_slice(b"{ \"Encoded-Path\": \"");
            out.extend_from_slice(hex::encode(&f.path).as_bytes());
            out.extend_from_slice(b"\", ");
        }
    }
    out.extend_from_slice(
        format!(
            "\"Size\": {}, \"Last-Modified\": \"{}\"",
            f.size,
            format_gmt(f.mtime)
        )
        .as_bytes(),
    );
    if let Some(c) = &f.checksum {
        out.extend_from_slice(
            format!(
                ", \"Checksum-Algorithm\": \"{}\", \"Checksum\": \"{c}\"",
                alg.name()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b" }");
}

/// A JSON string literal exactly as the server's `escape_json()` (utils/adt/json.c) writes
/// it: `\b \f \n \r \t \" \\` by name, other bytes below 0x20 as `\u00XX` (lowercase hex),
/// everything else (including DEL and non-ASCII UTF-8) as is.
pub fn escape_json(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < b' ' => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// `Last-Modified` as the server writes it: `pg_strftime("%Y-%m-%d %H:%M:%S %Z",
/// pg_gmtime(&mtime))`, e.g. `2024-02-29 13:05:09 GMT`.
pub fn format_gmt(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`). Not a date crate: the server writes any `time_t` (a file can
/// carry an mtime in the year 10000), where jiff stops before 9999-12-31 and `time`
/// needs an extra feature past 9999; the test checks this against jiff where jiff goes.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::checksum::checksum_of;

    /// `%X/%X` as the server prints an LSN: upper-case hex, no padding.
    #[test]
    fn wal_ranges_print_lsns_as_the_server() {
        let w = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        let ranges = [WalRange {
            timeline: 3,
            start_lsn: 0x1_0000_00A0,
            end_lsn: u64::MAX,
        }];
        let m = String::from_utf8(w.finish(&ranges).unwrap()).unwrap();
        assert!(
            m.contains(
                "{ \"Timeline\": 3, \"Start-LSN\": \"1/A0\", \"End-LSN\": \"FFFFFFFF/FFFFFFFF\" }"
            ),
            "{m}"
        );
    }

    #[test]
    fn gmt_dates() {
        assert_eq!(format_gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(-1), "1969-12-31 23:59:59 GMT");
        assert_eq!(format_gmt(951_782_400), "2000-02-29 00:00:00 GMT");
        assert_eq!(format_gmt(951_955_199), "2000-03-01 23:59:59 GMT");
        assert_eq!(format_gmt(1_700_000_000), "2023-11-14 22:13:20 GMT");
        assert_eq!(format_gmt(4_107_542_400), "2100-03-01 00:00:00 GMT");
        assert_eq!(format_gmt(-2_208_988_800), "1900-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(253_402_300_799), "9999-12-31 23:59:59 GMT");
        // Each day of 1970-2100 maps to a valid, strictly increasing date.
        let mut prev = String::new();
        for day in 0..(131 * 366) {
            let s = format_gmt(day * 86_400);
            assert!(s > prev, "{s} after {prev}");
            prev = s;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The same text as a date crate, over the years it covers (0001 to 9999).
        #[test]
        fn gmt_dates_agree_with_jiff(unix in -62_135_596_800i64..253_402_200_000) {
            let jiff = jiff::Timestamp::from_second(unix).unwrap();
            proptest::prop_assert_eq!(
                format_gmt(unix),
                jiff.strftime("%Y-%m-%d %H:%M:%S GMT").to_string()
            );
        }
    }

    #[test]
    fn json_escaping_matches_escape_json() {
        let mut out = Vec::new();
        escape_json(
            &mut out,
            "a\"b\\c\td\ne\rf\u{8}g\u{c}h\u{1}i\u{1f}j\u{7f}k é/ü",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\td\\ne\\rf\\bg\\fh\\u0001i\\u001fj\u{7f}k é/ü\""
        );
    }

    fn manifest_for(version_major: u32, alg: ChecksumAlgorithm) -> Vec<u8> {
        let w = ManifestWriter::new(version_major, 7_301_234_567_890_123_456, alg);
        let ck = |d: &[u8]| checksum_of(alg, d).unwrap();
        w.add_file(b"global/pg_control", 5, 1_700_000_000, ck(b"hello"));
        w.add_file(b"backup_label", 2, 0, ck(b"x\n"));
        w.add_file(b"bad\xff\xfename", 0, -1, ck(b""));
        w.finish(&[
            WalRange {
                timeline: 2,
                start_lsn: 0x5000000,
                end_lsn: 0x5000100,
            },
            WalRange {
                timeline: 1,
                start_lsn: 0x4000028,
                end_lsn: 0x5000000,
            },
        ])
        .unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn version_1_layout_byte_for_byte() {
        let m = manifest_for(15, ChecksumAlgorithm::Crc32c);
        let text = String::from_utf8(m.clone()).unwrap();
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\
\"Files\": [\n\
{ \"Path\": \"backup_label\", \"Size\": 2, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"d548ceb8\" },\n\
{ \"Encoded-Path\": \"626164fffe6e616d65\", \"Size\": 0, \"Last-Modified\": \"1969-12-31 23:59:59 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"00000000\" },\n\
{ \"Path\": \"global/pg_control\", \"Size\": 5, \"Last-Modified\": \"2023-11-14 22:13:20 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"4cbb719a\" }\n\
],\n\
\"WAL-Ranges\": [\n\
{ \"Timeline\": 2, \"Start-LSN\": \"0/5000000\", \"End-LSN\": \"0/5000100\" },\n\
{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/5000000\" }\n\
],\n";
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        assert_eq!(
            text,
            format!("{body}\"Manifest-Checksum\": \"{digest}\"}}\n")
        );
    }

    #[test]
    fn version_2_header_has_system_identifier() {
        for major in [17, 18, 170_002] {
            let m = manifest_for(major, ChecksumAlgorithm::Sha256);
            assert!(m.starts_with(
                b"{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\
                  \"System-Identifier\": 7301234567890123456,\n\
                  \"Files\": [\n{ \"Path\": \"backup_label\""
            ));
        }
        for major in [13, 16, 160_004] {
            let m = manifest_for(major, ChecksumAlgorithm::Sha256);
            assert!(m.starts_with(
                b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{ \"Path\""
            ));
        }
    }

    #[test]
    fn no_checksum_fields_for_none() {
        let m = String::from_utf8(manifest_for(15, ChecksumAlgorithm::None)).unwrap();
        assert!(m.contains(
            "{ \"Path\": \"backup_label\", \"Size\": 2, \"Last-Modified\": \"1970-01-01 00:00:00 GMT\" },\n"
        ));
        assert!(!m.contains("Checksum-Algorithm"));
    }

    /// What pg_verifybackup's verify_manifest_checksum() does: SHA-256 over everything up to
    /// and including the penultimate newline, compared with the last line's value.
    #[test]
    fn manifest_checksum_covers_exactly_the_bytes_before_its_line() {
        for alg in ChecksumAlgorithm::ALL {
            let m = manifest_for(15, alg);
            assert_eq!(m.last(), Some(&b'\n'));
            let penultimate = m[..m.len() - 1].iter().rposition(|&b| b == b'\n').unwrap();
            let (covered, last_line) = m.split_at(penultimate + 1);
            let last_line = std::str::from_utf8(last_line).unwrap();
            let expect = hex::encode(Sha256::digest(covered));
            assert_eq!(
                last_line,
                format!("\"Manifest-Checksum\": \"{expect}\"}}\n")
            );
        }
    }

    #[test]
    fn encoded_path_only_for_invalid_utf8() {
        let w = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        w.add_file("caf\u{e9}/\u{1F600}".as_bytes(), 0, 0, None);
        w.add_file(b"surrogate\xed\xa0\x80", 0, 0, None); // CESU surrogate: not UTF-8
        w.add_file(b"overlong\xc0\xaf", 0, 0, None);
        w.add_file(b"\xf4\x90\x80\x80", 0, 0, None); // above U+10FFFF
        let m = String::from_utf8(w.finish(&[]).unwrap()).unwrap();
        assert!(m.contains("{ \"Path\": \"caf\u{e9}/\u{1F600}\", "));
        assert!(m.contains("{ \"Encoded-Path\": \"737572726f67617465eda080\", "));
        assert!(m.contains("{ \"Encoded-Path\": \"6f7665726c6f6e67c0af\", "));
        assert!(m.contains("{ \"Encoded-Path\": \"f4908080\", "));
    }

    #[test]
    fn entries_are_sorted_and_checked() {
        let w = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        for p in ["b", "a/b", "a", "B"] {
            w.add_file(p.as_bytes(), 0, 0, None);
        }
        let m = String::from_utf8(w.finish(&[]).unwrap()).unwrap();
        let paths: Vec<&str> = m
            .lines()
            .filter_map(|l| l.strip_prefix("{ \"Path\": \""))
            .map(|l| &l[..l.find("\"").unwrap()])
            .collect();
        assert_eq!(paths, ["B", "a", "a/b", "b"]);

        let dup = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        dup.add_file(b"x", 0, 0, None);
        dup.add_file(b"x", 0, 0, None);
        assert!(dup.finish(&[]).is_err());

        let missing = ManifestWriter::new(15, 1, ChecksumAlgorithm::Crc32c);
        missing.add_file(b"x", 0, 0, None);
        assert!(missing.finish(&[]).is_err());

        let wrong_len = ManifestWriter::new(15, 1, ChecksumAlgorithm::Sha256);
        wrong_len.add_file(b"x", 0, 0, Some("00000000".into()));
        assert!(wrong_len.finish(&[]).is_err());

        let absolute = ManifestWriter::new(15, 1, ChecksumAlgorithm::None);
        absolute.add_file(b"/etc/passwd", 0, 0, None);
        assert!(absolute.finish(&[]).is_err());
    }

    #[test]
    fn empty_manifest_is_well_formed() {
        let m = ManifestWriter::new(15, 1, ChecksumAlgorithm::Crc32c)
            .finish(&[])
            .unwrap();
        let text = String::from_utf8(m).unwrap();
        assert!(text.starts_with(
            "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n],\n\"WAL-Ranges\": [\n\n],\n\"Manifest-Checksum\": \""
        ));
    }

    /// Rebuild the manifest of a backup taken by the real pg_basebackup with this writer and
    /// let the real pg_verifybackup judge it. Needs:
    ///   PGBB_IT_BACKUP=<plain backup dir with its server-written backup_manifest>
    ///   PGBB_IT_DATADIR=<the source data directory, for mtimes> (optional)
    ///   PGBB_IT_BINDIR=<dir with pg_verifybackup> (default /usr/lib/postgresql/15/bin)
    /// Run: cargo test manifest::tests::real_pg_verifybackup -- --ignored --nocapture
    #[test]
    #[ignore]
    fn real_pg_verifybackup() {
        let Ok(backup) = std::env::var("PGBB_IT_BACKUP") else {
            eprintln!("PGBB_IT_BACKUP not set; skipping");
            return;
        };
        let datadir = std::env::var("PGBB_IT_DATADIR").ok();
        let bindir = std::env::var("PGBB_IT_BINDIR")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string());
        integration::run(
            std::path::Path::new(&backup),
            datadir.as_deref().map(std::path::Path::new),
            std::path::Path::new(&bindir),
        );
    }

    mod integration {
        use super::super::*;
        use crate::integrity::checksum::FileChecksum;
        use std::collections::BTreeMap;
        use std::os::unix::ffi::OsStrExt;
        use std::path::{Path, PathBuf};
        use std::process::Command;
        use std::sync::Arc;

        /// Server-written manifest: file lines keyed by their path field, and WAL ranges.
        struct Original {
            alg: ChecksumAlgorithm,
            lines: BTreeMap<String, String>,
            wal: Vec<WalRange>,
        }

        fn parse_lsn(s: &str) -> u64 {
            s.parse::<PgLsn>().unwrap().into()
        }

        fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
            let start = line.find(&format!("\"{name}\": "))? + name.len() + 4;
            let rest = &line[start..];
            Some(match rest.strip_prefix("\"") {
                Some(r) => &r[..r.find("\"")?],
                None => &rest[..rest.find([',', ' '])?],
            })
        }

        fn parse_original(path: &Path) -> Original {
            let text = std::fs::read_to_string(path).unwrap();
            let mut lines = BTreeMap::new();
            let mut wal = Vec::new();
            let mut alg = ChecksumAlgorithm::None;
            for line in text.lines() {
                let line = line.trim_end_matches(',');
                if line.starts_with("{ \"Path\"") || line.starts_with("{ \"Encoded-Path\"") {
                    // Key: everything up to ", \"Size\"" identifies the file.
                    let key = line[..line.find(", \"Size\"").unwrap()].to_string();
                    if let Some(a) = field(line, "Checksum-Algorithm") {
                        alg = a.parse().unwrap();
                    }
                    lines.insert(key, line.to_string());
                } else if line.starts_with("{ \"Timeline\"") {
                    wal.push(WalRange {
                        timeline: field(line, "Timeline").unwrap().parse().unwrap(),
                        start_lsn: parse_lsn(field(line, "Start-LSN").unwrap()),
                        end_lsn: parse_lsn(field(line, "End-LSN").unwrap()),
                    });
                }
            }
            Original { alg, lines, wal }
        }

        fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(root.join(rel)).unwrap() {
                let e = e.unwrap();
                let r = rel.join(e.file_name());
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    walk(root, &r, out);
                } else if ft.is_file() {
                    out.push(r);
                }
            }
        }

        /// Feed a file's bytes in small chunks, in a scrambled order, from 4 threads.
        fn scrambled_checksum(
            alg: ChecksumAlgorithm,
            data: Arc<Vec<u8>>,
            seed: u64,
        ) -> Option<String> {
            let chunk = 8192 + 77;
            let fc = Arc::new(FileChecksum::new(alg, data.len() as u64));
            let mut order: Vec<usize> = (0..data.len().div_ceil(chunk)).collect();
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let order = Arc::new(order);
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let (fc, data, order) = (fc.clone(), data.clone(), order.clone());
                    std::thread::spawn(move || {
                        for &k in order.iter().skip(t).step_by(4) {
                            let a = k * chunk;
                            let b = (a + chunk).min(data.len());
                            if k % 2 == 0 {
                                fc.update(a as u64, data[a..b].to_vec()).unwrap();
                            } else {
                                fc.update(a as u64, &data[a..b]).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            fc.finish().unwrap()
        }

        fn verify(bindir: &Path, dir: &Path) -> (bool, String) {
            let out = Command::new(bindir.join("pg_verifybackup"))
                .arg(dir)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }

        pub(super) fn run(backup: &Path, datadir: Option<&Path>, bindir: &Path) {
            let original = parse_original(&backup.join("backup_manifest"));
            let work = tempfile::tempdir().unwrap();
            let copy = work.path().join("bk");
            let st = Command::new("cp")
                .arg("-a")
                .arg(backup)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(st.success());

            let mut files = Vec::new();
            walk(&copy, Path::new(""), &mut files);
            let (writer, ours) = rebuild(&copy, datadir, &files, original.alg);
            compare_lines(&ours, &original);

            let manifest = writer.finish(&original.wal).unwrap();
            std::fs::write(copy.join("backup_manifest"), &manifest).unwrap();
            let (ok, text) = verify(bindir, &copy);
            eprintln!("pg_verifybackup on our manifest: {text}");
            assert!(ok, "{text}");

            damage_a_file(bindir, &copy, &files, original.alg);
            damage_the_manifest(bindir, &copy, manifest);
        }

        /// Our manifest of the files of `copy`, and each entry rendered alone, keyed like
        /// [`Original::lines`].
        fn rebuild(
            copy: &Path,
            datadir: Option<&Path>,
            files: &[PathBuf],
            alg: ChecksumAlgorithm,
        ) -> (ManifestWriter, BTreeMap<String, String>) {
            use std::os::unix::fs::MetadataExt;

            let writer = ManifestWriter::new(15, 0, alg);
            let mut ours = BTreeMap::new();
            for (i, rel) in files.iter().enumerate() {
                let raw = rel.as_os_str().as_bytes();
                if raw == b"backup_manifest" || raw.starts_with(b"pg_wal/") {
                    continue;
                }
                let data = Arc::new(std::fs::read(copy.join(rel)).unwrap());
                let mtime = datadir
                    .and_then(|d| std::fs::metadata(d.join(rel)).ok())
                    .unwrap_or_else(|| std::fs::metadata(copy.join(rel)).unwrap())
                    .mtime();
                let ck = scrambled_checksum(alg, data.clone(), i as u64);
                writer.add_file(raw, data.len() as u64, mtime, ck.clone());
                // Render this one entry alone to compare with the server's line.
                let one = ManifestWriter::new(15, 0, alg);
                one.add_file(raw, data.len() as u64, mtime, ck);
                let m = String::from_utf8(one.finish(&[]).unwrap()).unwrap();
                let line = m.lines().nth(2).unwrap().to_string();
                let key = line[..line.find(", \"Size\"").unwrap()].to_string();
                ours.insert(key, line);
            }
            (writer, ours)
        }

        /// Same files, and every line equal to the server's except possibly for
        /// Last-Modified (the data directory may have changed since the backup).
        fn compare_lines(ours: &BTreeMap<String, String>, original: &Original) {
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                original.lines.keys().collect::<Vec<_>>()
            );
            let strip = |l: &str| {
                let a = l.find("\"Last-Modified\": \"").unwrap();
                let b = a + 18 + l[a + 18..].find("\"").unwrap();
                format!("{}{}", &l[..a], &l[b + 1..])
            };
            let mut exact = 0;
            for (k, line) in ours {
                let theirs = &original.lines[k];
                if line == theirs {
                    exact += 1;
                } else {
                    assert_eq!(strip(line), strip(theirs));
                }
            }
            eprintln!(
                "{} entries ({}), {exact} byte-identical to the server's lines",
                ours.len(),
                original.alg
            );
        }

        /// Damage one relation file: a flipped byte (caught by any checksum), then a
        /// size change (caught even without checksums).
        fn damage_a_file(bindir: &Path, copy: &Path, files: &[PathBuf], alg: ChecksumAlgorithm) {
            let victim = files
                .iter()
                .filter(|p| p.starts_with("base"))
                .max_by_key(|p| std::fs::metadata(copy.join(p)).unwrap().len())
                .unwrap();
            let vpath = copy.join(victim);
            let mut bytes = std::fs::read(&vpath).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x20;
            std::fs::write(&vpath, &bytes).unwrap();
            let (ok, text) = verify(bindir, copy);
            eprintln!("after flipping a byte of {}: {text}", victim.display());
            if alg == ChecksumAlgorithm::None {
                assert!(ok, "{text}");
            } else {
                assert!(!ok && text.contains("checksum mismatch"), "{text}");
            }
            bytes.push(0);
            std::fs::write(&vpath, &bytes).unwrap();
            let (ok, text) = verify(bindir, copy);
            eprintln!("after growing {}: {text}", victim.display());
            assert!(!ok && text.contains("size"), "{text}");
        }

        /// A manifest with one byte changed fails its own checksum.
        fn damage_the_manifest(bindir: &Path, copy: &Path, mut bad: Vec<u8>) {
            let needle = b"\"Last-Modified\": \"";
            let pos = bad.windows(needle.len()).position(|w| w == needle).unwrap();
            bad[pos + needle.len()] = if bad[pos + needle.len()] == b'1' {
                b'2'
            } else {
                b'1'
            };
            std::fs::write(copy.join("backup_manifest"), &bad).unwrap();
            let (ok, text) = verify(bindir, copy);
            eprintln!("after editing a Last-Modified in the manifest: {text}");
            assert!(!ok && text.contains("manifest checksum mismatch"), "{text}");
        }
    }
}
