//! The command line, in two layers as ripgrep does: [`Args`] is what clap
//! parses (here), [`Settings`] is what the rest of the program uses
//! (settings.rs). Only [`Args::into_settings`] looks at raw flags, so every
//! rule about which flags go together lives in this folder and nowhere else;
//! values.rs reads the values of single flags.

mod settings;
mod values;

use std::path::PathBuf;

use clap::Parser;

pub use settings::{IncrementalSettings, RunMode, Settings};
use values::{parse_rate, parse_size};

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
    #[arg(short = 'r', long, value_name = "RATE", value_parser = parse_rate)]
    pub max_rate: Option<u64>,

    /// Compress data on the server before it crosses the wire (zlib through
    /// a session-temporary PL/Python function): auto, zlib or none.
    #[arg(long, value_name = "MODE", value_enum, default_value = "auto")]
    pub wire_compression: crate::session::reader::WireCompression,

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

    /// Take an incremental backup in PostgreSQL's own format on top of the
    /// backup whose backup_manifest this is (PostgreSQL 17+, summarize_wal =
    /// on); pg_combinebackup restores the chain.
    #[arg(long, value_name = "PRIOR_MANIFEST")]
    pub incremental: Option<PathBuf>,

    /// With --incremental: how long to wait, in seconds, for the server's
    /// WAL summarizer to reach the backup's start.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 120,
        requires = "incremental"
    )]
    pub incremental_wait: u64,
}
