//! The command line, in two layers as ripgrep does: [`Args`] is what clap
//! parses, [`Settings`] is what the rest of the program uses. Only
//! [`Args::into_settings`] looks at raw flags, so every rule about which
//! flags go together lives here and nowhere else.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

use crate::bail_with;
use crate::error::Exit;

/// The command line, or, on a mistake in it, PostgreSQL's two lines and
/// exit code 2:
///
/// ```text
/// pg_basebackup: error: unexpected argument '--frobnicate' found
/// pg_basebackup: hint: Try "pg_basebackup --help" for more information.
/// ```
pub fn parse() -> Args {
    Args::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            e.exit(); // --help, --version: on standard output, exit 0
        }
        // clap's first paragraph, without its "error: " and its line breaks
        // (the missing arguments come one per line).
        let text = e.render().to_string();
        let first: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        let message = first.join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        eprintln!("pg_basebackup: error: {message}");
        eprintln!("pg_basebackup: hint: Try \"pg_basebackup --help\" for more information.");
        std::process::exit(Exit::Usage.code())
    })
}

/// Take a physical base backup of a running PostgreSQL server over ordinary
/// SQL connections, in parallel.
#[derive(Parser, Debug)]
#[command(
    name = "pg_basebackup",
    version,
    about,
    after_help = "DSN is a libpq connection string (\"host=db1 user=postgres\") or URI \
                  (postgresql://user@db1/postgres); PG* environment variables and ~/.pgpass \
                  apply as in libpq.\n\nExample: pg_basebackup -j 4 -x \"host=db1 user=postgres\" /srv/pg/copy"
)]
pub struct Args {
    /// Connection string or URI of the server to back up.
    #[arg(value_name = "DSN")]
    pub dsn: String,

    /// Directory to write the copy to; must not exist or be empty (see -f).
    /// Not needed with --clean.
    #[arg(value_name = "DEST", required_unless_present = "clean")]
    pub dest: Option<PathBuf>,

    /// Fetch the WAL written during the backup, so the copy starts on its own.
    #[arg(short = 'x', long = "pg_xlog", visible_alias = "wal")]
    pub wal: bool,

    /// Report progress and each step (log level info).
    #[arg(short, long)]
    pub verbose: bool,

    /// Debug output, including every SQL statement (passwords redacted).
    #[arg(short, long)]
    pub debug: bool,

    /// Show progress: a live bar on a terminal, else a plain line every 10 s.
    #[arg(short = 'P', long)]
    pub progress: bool,

    /// Remove DEST first if it exists and is not empty.
    #[arg(short, long)]
    pub force: bool,

    /// Number of parallel worker connections.
    #[arg(
        short,
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub jobs: i64,

    /// Seconds between two polls of the WAL directory (with -x).
    #[arg(
        short = 'D',
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        allow_negative_numbers = true
    )]
    pub delay: f64,

    /// Auxiliary mode: do not start or stop a backup on the server (use with
    /// --stdin to copy files, or with -x to follow WAL until stdin says
    /// "terminate" or SIGINT/SIGTERM arrives).
    #[arg(short = 'S', long = "slave")]
    pub auxiliary: bool,

    /// Copy only the data-directory relative paths read from standard input,
    /// one per line.
    #[arg(long)]
    pub stdin: bool,

    /// End a backup that an earlier run left in progress (exclusive backups,
    /// servers 10 to 14), then exit.
    #[arg(long)]
    pub clean: bool,

    /// Size of one read request, in bytes (k and M suffixes allowed); 8 MB
    /// as in the original script.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    pub chunk_size: u64,

    /// Keep a partial DEST when the backup fails (for inspection).
    #[arg(short = 'n', long = "no-clean")]
    pub no_clean: bool,

    /// Do not fsync the copy at the end (faster, not crash-safe).
    #[arg(short = 'N', long = "no-sync")]
    pub no_sync: bool,

    /// Checkpoint mode at backup start: spread (gentle on the server) or
    /// fast (start copying at once).
    #[arg(short = 'c', long, value_name = "fast|spread", default_value = "spread", value_parser = ["fast", "spread"])]
    pub checkpoint: String,

    /// Backup label, written into backup_label.
    #[arg(
        short = 'l',
        long,
        value_name = "LABEL",
        default_value = "pg_basebackup base backup"
    )]
    pub label: String,

    /// Most bytes per second to transfer, over all sessions together
    /// (kB/s, or with a k or M suffix: 512k, 20M).
    #[arg(short = 'r', long, value_name = "RATE", value_parser = crate::throttle::parse_rate)]
    pub max_rate: Option<u64>,

    /// Compress data on the server before it crosses the wire (zlib through
    /// a session-temporary PL/Python function): auto, zlib or none.
    #[arg(long, value_name = "MODE", value_enum, default_value = "auto")]
    pub wire_compression: crate::reader::WireCompression,

    /// Checksum algorithm for the files listed in backup_manifest
    /// (NONE, CRC32C, SHA224, SHA256, SHA384, SHA512).
    #[arg(long, value_name = "ALGORITHM", default_value = "CRC32C")]
    pub manifest_checksums: crate::integrity::checksum::ChecksumAlgorithm,

    /// Do not write backup_manifest.
    #[arg(long)]
    pub no_manifest: bool,

    /// Do not verify data page checksums while copying.
    #[arg(long = "no-verify-checksums")]
    pub no_verify_checksums: bool,

    /// Make the copy a streaming standby of the server: standby.signal and
    /// primary_conninfo (recovery.conf before PostgreSQL 12).
    #[arg(short = 'R', long)]
    pub write_recovery_conf: bool,

    /// Write the tablespace in OLDDIR to NEWDIR instead (both absolute).
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    pub tablespace_mapping: Vec<String>,

    /// Output format: p (plain data directory, default) or t (tar archives
    /// base.tar, pg_wal.tar and <oid>.tar per tablespace; DEST - writes one
    /// tar to standard output).
    #[arg(short = 'F', long, value_name = "p|t", default_value = "p", value_parser = ["p", "plain", "t", "tar"])]
    pub format: String,

    /// Compress the tar output with gzip (the same as -Z gzip).
    #[arg(short = 'z', long, conflicts_with = "compress")]
    pub gzip: bool,

    /// Compress the tar output: gzip[:LEVEL], lz4, zstd[:LEVEL] or none, or
    /// a gzip level 0-9 (as PostgreSQL's pg_basebackup).
    #[arg(short = 'Z', long, value_name = "METHOD[:LEVEL]")]
    pub compress: Option<String>,

    /// Refresh (or resume) an earlier copy of the same cluster in DEST:
    /// fetch only the chunks whose hash on the server differs from DEST's.
    #[arg(long)]
    pub delta: bool,

    /// With --delta: do not even hash files whose size and mtime match the
    /// earlier copy's manifest and that are older than its start (faster,
    /// trusts the server's mtimes).
    #[arg(long, requires = "delta")]
    pub trust_mtime: bool,
}

/// What the program does, once the flags have been checked.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A full backup (possibly restricted to --stdin paths).
    Backup,
    /// -S --stdin: copy the given paths, no backup start/stop.
    AuxiliaryCopy,
    /// -S -x: follow WAL into DEST/pg_wal until told to stop.
    WalFollower,
    /// --clean: end a left-over exclusive backup.
    Clean,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub dsn: String,
    pub dest: PathBuf,
    pub fetch_wal: bool,
    pub force: bool,
    pub jobs: usize,
    pub wal_poll: std::time::Duration,
    /// Paths read from stdin (with --stdin), validated as relative; bytes,
    /// as file names need not be valid UTF-8.
    pub only_paths: Option<Vec<Vec<u8>>>,
    pub chunk_size: u64,
    pub keep_partial: bool,
    pub sync: bool,
    pub fast_checkpoint: bool,
    pub label: String,
    /// None with --no-manifest.
    pub manifest: Option<crate::integrity::checksum::ChecksumAlgorithm>,
    pub verify_page_checksums: bool,
    pub write_recovery_conf: bool,
    /// -P: how progress is shown.
    pub progress: crate::progress::ProgressStyle,
    /// Rate limit, compression and counters shared by every reading session.
    pub read_options: std::sync::Arc<crate::reader::ReadOptions>,
    /// (server path, copy path) pairs from -T.
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
    /// -F t: tar archives instead of a plain directory.
    pub tar: Option<TarFormat>,
    /// --delta: refresh the copy already in DEST.
    pub delta: Option<crate::delta::Options>,
}

/// `-F t` and its compression; DEST `-` means standard output.
#[derive(Debug, Clone, Copy)]
pub struct TarFormat {
    pub compression: crate::output::tar::compress::TarCompression,
    pub to_stdout: bool,
}

/// Parse `OLDDIR=NEWDIR` as pg_basebackup does: `\=` is a literal `=`.
fn parse_mapping(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let mut old = String::new();
    let mut new = None::<String>;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' if chars.peek() == Some(&'=') => chars.next().unwrap_or('='),
            '=' if new.is_none() => {
                new = Some(String::new());
                continue;
            }
            '=' => {
                return Err(format!(
                    "invalid tablespace mapping \"{s}\": multiple \"=\" signs"
                ));
            }
            c => c,
        };
        new.as_mut().unwrap_or(&mut old).push(c);
    }
    let new =
        new.ok_or_else(|| format!("invalid tablespace mapping \"{s}\": use OLDDIR=NEWDIR"))?;
    if !old.starts_with('/') || !new.starts_with('/') {
        return Err(format!(
            "invalid tablespace mapping \"{s}\": both directories must be absolute paths"
        ));
    }
    Ok((
        PathBuf::from(old.trim_end_matches('/')),
        PathBuf::from(new.trim_end_matches('/')),
    ))
}

/// Parse a size such as `8388608`, `512k` or `8M` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1024),
        Some((i, 'm' | 'M')) => (&s[..i], 1024 * 1024),
        Some((i, 'g' | 'G')) => (&s[..i], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid size \"{s}\": use a number with an optional k, M or G suffix")
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

impl Args {
    /// Check flag combinations and turn them into [`Settings`]. `stdin_lines`
    /// is called only with --stdin, so tests can feed it.
    pub fn into_settings(
        self,
        stdin_lines: impl FnOnce() -> std::io::Result<Vec<Vec<u8>>>,
    ) -> Result<Settings> {
        if self.jobs < 1 {
            bail_with!(
                Exit::Usage,
                "-j/--jobs must be at least 1 (got {})",
                self.jobs
            );
        }
        if self.jobs > 512 {
            bail_with!(
                Exit::Usage,
                "-j/--jobs {} is more than the 512 connections this tool will open",
                self.jobs
            );
        }
        if !(self.delay.is_finite() && self.delay > 0.0) {
            bail_with!(
                Exit::Usage,
                "-D/--delay must be a positive number of seconds (got {})",
                self.delay
            );
        }
        const MAX_CHUNK: u64 = 1024 * 1024 * 1024 - 8192; // pg_read_binary_file's limit is 1G-5
        // Whole pages per chunk, so each page can be checked as it arrives.
        if self.chunk_size < 8192 || self.chunk_size > MAX_CHUNK || self.chunk_size % 8192 != 0 {
            bail_with!(
                Exit::Usage,
                "--chunk-size must be a multiple of 8k between 8k and 1G (got {})",
                self.chunk_size
            );
        }
        let mode = match (self.clean, self.auxiliary, self.stdin, self.wal) {
            (true, false, false, false) => Mode::Clean,
            (true, ..) => bail_with!(
                Exit::Usage,
                "--clean cannot be combined with -S, --stdin or -x"
            ),
            (false, true, true, false) => Mode::AuxiliaryCopy,
            (false, true, false, true) => Mode::WalFollower,
            (false, true, ..) => {
                bail_with!(
                    Exit::Usage,
                    "-S needs exactly one of --stdin (copy files) or -x (follow WAL)"
                )
            }
            (false, false, ..) => Mode::Backup,
        };
        let only_paths = if self.stdin {
            let lines = stdin_lines().map_err(|e| {
                anyhow::Error::new(crate::error::Failure::new(
                    Exit::Usage,
                    format!("could not read paths from standard input: {e}"),
                ))
            })?;
            let mut paths = Vec::new();
            for line in &lines {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() {
                    continue;
                }
                let path = crate::paths::normalize_relative(line).map_err(|e| {
                    anyhow::Error::new(crate::error::Failure::new(
                        Exit::Usage,
                        format!("--stdin: {e}"),
                    ))
                })?;
                paths.push(path);
            }
            Some(paths)
        } else {
            None
        };
        if self.label.len() > 1024 {
            bail_with!(Exit::Usage, "-l/--label is longer than 1024 bytes");
        }
        if self.delta && (self.auxiliary || self.stdin || self.clean || self.force) {
            bail_with!(
                Exit::Usage,
                "--delta refreshes a whole copy in place: it cannot be combined with -S, --stdin, --clean or -f"
            );
        }
        let tablespace_mapping = self
            .tablespace_mapping
            .iter()
            .map(|m| parse_mapping(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::Error::new(crate::error::Failure::new(Exit::Usage, e)))?;
        let tar = self.tar_format(&mode)?;
        if self.delta && tar.is_some() {
            bail_with!(
                Exit::Usage,
                "--delta refreshes a plain copy in place: it cannot be combined with -F t"
            );
        }
        Ok(Settings {
            mode,
            dsn: self.dsn,
            dest: self.dest.unwrap_or_default(),
            fetch_wal: self.wal,
            force: self.force,
            jobs: self.jobs as usize,
            wal_poll: std::time::Duration::from_secs_f64(self.delay),
            only_paths,
            chunk_size: self.chunk_size,
            keep_partial: self.no_clean,
            sync: !self.no_sync,
            fast_checkpoint: self.checkpoint == "fast",
            label: self.label,
            tablespace_mapping,
            manifest: (!self.no_manifest).then_some(self.manifest_checksums),
            verify_page_checksums: !self.no_verify_checksums,
            write_recovery_conf: self.write_recovery_conf,
            progress: if self.progress {
                crate::progress::ProgressStyle::Auto
            } else {
                crate::progress::ProgressStyle::Off
            },
            tar,
            delta: self.delta.then_some(crate::delta::Options {
                trust_mtime: self.trust_mtime,
            }),
            read_options: crate::reader::ReadOptions::new(
                self.max_rate.map(crate::throttle::Throttle::new),
                self.wire_compression,
            ),
        })
    }

    /// -F, -z, -Z and DEST `-`, checked against the mode and the other flags.
    fn tar_format(&self, mode: &Mode) -> Result<Option<TarFormat>> {
        use crate::output::tar::compress::{GZIP_DEFAULT_LEVEL, TarCompression, parse_compression};
        let compression = match (&self.compress, self.gzip) {
            (Some(spec), _) => parse_compression(spec).map_err(|e| {
                anyhow::Error::new(crate::error::Failure::new(
                    Exit::Usage,
                    format!("-Z/--compress: {e:#}"),
                ))
            })?,
            (None, true) => TarCompression::Gzip(GZIP_DEFAULT_LEVEL),
            (None, false) => TarCompression::None,
        };
        let to_stdout = self.dest.as_deref() == Some(std::path::Path::new("-"));
        if !matches!(self.format.as_str(), "t" | "tar") {
            if compression != TarCompression::None {
                bail_with!(
                    Exit::Usage,
                    "only tar output can be compressed: -z/-Z need -F t"
                );
            }
            if to_stdout && !matches!(mode, Mode::Clean) {
                bail_with!(
                    Exit::Usage,
                    "DEST - (standard output) needs -F t; for a directory named -, write ./-"
                );
            }
            return Ok(None);
        }
        if !matches!(mode, Mode::Backup) {
            bail_with!(
                Exit::Usage,
                "-F t applies to a backup only, not to -S or --clean (they work on a plain directory)"
            );
        }
        if !self.tablespace_mapping.is_empty() {
            bail_with!(
                Exit::Usage,
                "-T is only supported with -F p: a tar backup keeps the tablespace links to their \
                 original locations (relocate them when extracting)"
            );
        }
        Ok(Some(TarFormat {
            compression,
            to_stdout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings> {
        let mut argv = vec!["pg_basebackup"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)?.into_settings(|| {
            Ok(vec![
                b"base/1/1259".to_vec(),
                b"\r".to_vec(),
                b"./global/pg_control\n".to_vec(),
                b"FOO\xe0\xe0\xe0BAR\r\n".to_vec(),
            ])
        })
    }

    #[test]
    fn defaults_match_the_original_script() {
        let s = settings(&["host=x", "/tmp/d"]).unwrap();
        assert_eq!(s.jobs, 1);
        assert_eq!(s.wal_poll, std::time::Duration::from_secs(2));
        assert_eq!(s.chunk_size, 8 << 20);
        assert!(!s.fetch_wal && !s.fast_checkpoint && s.sync);
        assert!(matches!(s.mode, Mode::Backup));
    }

    #[test]
    fn flags_and_modes() {
        let s = settings(&["-j", "4", "-x", "-D", "0.5", "-c", "fast", "dsn", "d"]).unwrap();
        assert_eq!((s.jobs, s.fetch_wal, s.fast_checkpoint), (4, true, true));
        assert!(settings(&["--wal", "dsn", "d"]).unwrap().fetch_wal);
        assert!(settings(&["--pg_xlog", "dsn", "d"]).unwrap().fetch_wal);
        assert!(matches!(
            settings(&["-S", "-x", "dsn", "d"]).unwrap().mode,
            Mode::WalFollower
        ));
        let s = settings(&["-S", "--stdin", "dsn", "d"]).unwrap();
        assert!(matches!(s.mode, Mode::AuxiliaryCopy));
        assert_eq!(
            s.only_paths.unwrap(),
            [
                &b"base/1/1259"[..],
                b"global/pg_control",
                b"FOO\xe0\xe0\xe0BAR"
            ]
        );
        assert!(matches!(
            settings(&["--clean", "dsn"]).unwrap().mode,
            Mode::Clean
        ));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["-j", "0", "dsn", "d"][..],
            &["-j", "-3", "dsn", "d"],
            &["-D", "0", "dsn", "d"],
            &["-D", "-1", "dsn", "d"],
            &["-S", "dsn", "d"],
            &["--clean", "-x", "dsn"],
            &["--chunk-size", "10", "dsn", "d"],
            &["-T", "relative=/x", "dsn", "d"],
            &["-z", "dsn", "d"],
            &["-Z", "zstd", "dsn", "d"],
            &["-F", "t", "-Z", "brotli", "dsn", "d"],
            &["-F", "t", "-Z", "gzip:10", "dsn", "d"],
            &["-F", "t", "-S", "-x", "dsn", "d"],
            &["-F", "t", "-T", "/a=/b", "dsn", "d"],
            &["dsn", "-"],
            &["--delta", "-f", "dsn", "d"],
            &["--delta", "-S", "--stdin", "dsn", "d"],
            &["--delta", "-F", "t", "dsn", "d"],
        ] {
            let err = settings(args).unwrap_err();
            assert_eq!(crate::error::exit_of(&err), Exit::Usage, "{args:?}: {err}");
        }
        assert!(
            settings(&["dsn"]).is_err(),
            "DEST is required without --clean"
        );
    }

    #[test]
    fn tar_format_and_compression() {
        use crate::output::tar::compress::TarCompression;
        assert!(settings(&["dsn", "d"]).unwrap().tar.is_none());
        let t = settings(&["-F", "t", "dsn", "d"]).unwrap().tar.unwrap();
        assert_eq!(t.compression, TarCompression::None);
        assert!(!t.to_stdout);
        let t = settings(&["-F", "tar", "-z", "-R", "dsn", "-"])
            .unwrap()
            .tar
            .unwrap();
        assert_eq!(t.compression, TarCompression::Gzip(6));
        assert!(t.to_stdout);
        for (spec, want) in [
            ("lz4", TarCompression::Lz4),
            ("zstd:5", TarCompression::Zstd(5)),
            ("9", TarCompression::Gzip(9)),
            ("0", TarCompression::None),
        ] {
            let t = settings(&["-F", "t", "-Z", spec, "dsn", "d"]).unwrap().tar;
            assert_eq!(t.unwrap().compression, want, "{spec}");
        }
        assert!(
            settings(&["-Z", "none", "dsn", "d"]).unwrap().tar.is_none(),
            "-Z none is no compression, which plain output is"
        );
        assert!(settings(&["-F", "t", "-z", "-Z", "lz4", "dsn", "d"]).is_err());
    }

    #[test]
    fn sizes_and_mappings() {
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("8192").unwrap(), 8192);
        assert!(parse_size("8X").is_err());
        assert_eq!(
            parse_mapping("/a/b=/c/").unwrap(),
            (PathBuf::from("/a/b"), PathBuf::from("/c"))
        );
        assert_eq!(
            parse_mapping("/a\\=b=/c").unwrap(),
            (PathBuf::from("/a=b"), PathBuf::from("/c"))
        );
        assert!(parse_mapping("/a=/b=/c").is_err());
        assert!(parse_mapping("/a").is_err());
    }
}
