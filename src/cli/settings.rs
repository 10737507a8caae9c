//! [`Settings`], what the rest of the program reads, and the one place that
//! checks which flags go together ([`Args::into_settings`]): a mistake on
//! the command line is refused here, with exit code 2, before anything
//! connects or writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::Args;
use super::values::parse_mapping;
use crate::bail_with;
use crate::error::{Exit, Failure};
use crate::output::tar::TarFormat;
use crate::pg::BLCKSZ;

/// What the run does, picked from -S, --stdin, -x and --clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// A full backup (possibly restricted to --stdin paths).
    Backup,
    /// -S --stdin: copy the given paths, no backup start/stop.
    AuxiliaryCopy,
    /// -S -x: follow WAL into DEST/pg_wal until told to stop.
    WalFollower,
    /// --clean: end a left-over exclusive backup.
    Clean,
}

/// The checked command line. Settings only: what a run counts or shares
/// between its sessions (byte counters, the rate limiter's clock) belongs
/// to the run, which builds it from these.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: RunMode,
    pub dsn: String,
    pub dest: PathBuf,
    pub fetch_wal: bool,
    pub force: bool,
    pub jobs: usize,
    pub wal_poll: Duration,
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
    /// -r: most bytes per second over all reading sessions together.
    pub max_rate: Option<u64>,
    /// --wire-compression.
    pub wire_compression: crate::session::reader::WireCompression,
    /// (server path, copy path) pairs from -T.
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
    /// -F t: tar archives instead of a plain directory.
    pub tar: Option<TarFormat>,
    /// --delta: refresh the copy already in DEST.
    pub delta: Option<crate::delta::Options>,
    /// --incremental: an incremental backup on top of a prior one.
    pub incremental: Option<IncrementalSettings>,
}

/// --incremental and --incremental-wait.
#[derive(Debug, Clone)]
pub struct IncrementalSettings {
    /// The prior backup's backup_manifest.
    pub prior_manifest: PathBuf,
    /// Longest wait for the WAL summarizer to reach the backup's start.
    pub wait: Duration,
}

/// Most parallel sessions this tool opens (-j).
const MAX_JOBS: i64 = 512;

/// The largest --chunk-size: whole pages below pg_read_binary_file's limit
/// of 1 GB - 5 bytes per result.
const MAX_CHUNK: u64 = 1024 * 1024 * 1024 - BLCKSZ as u64;

/// Longest -l/--label, in bytes.
const MAX_LABEL: usize = 1024;

/// A command-line mistake: exit code 2.
fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(Failure::new(Exit::Usage, message))
}

impl Args {
    /// Check flag combinations and turn them into [`Settings`]. `stdin_lines`
    /// is called only with --stdin, so tests can feed it.
    pub fn into_settings(
        self,
        stdin_lines: impl FnOnce() -> std::io::Result<Vec<Vec<u8>>>,
    ) -> Result<Settings> {
        self.check_numbers()?;
        let mode = self.run_mode()?;
        let only_paths = if self.stdin {
            Some(stdin_paths(stdin_lines)?)
        } else {
            None
        };
        if self.label.len() > MAX_LABEL {
            bail_with!(Exit::Usage, "-l/--label is longer than 1024 bytes");
        }
        if self.delta && (self.auxiliary || self.stdin || self.clean || self.force) {
            bail_with!(
                Exit::Usage,
                "--delta refreshes a whole copy in place: it cannot be combined with -S, --stdin, --clean or -f"
            );
        }
        if self.incremental.is_some() && (self.delta || self.auxiliary || self.stdin || self.clean)
        {
            bail_with!(
                Exit::Usage,
                "--incremental takes a new backup: it cannot be combined with --delta, -S, --stdin or --clean"
            );
        }
        let tablespace_mapping = self
            .tablespace_mapping
            .iter()
            .map(|m| parse_mapping(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(usage)?;
        let tar = self.tar_format(mode)?;
        if self.delta && tar.is_some() {
            bail_with!(
                Exit::Usage,
                "--delta refreshes a plain copy in place: it cannot be combined with -F t"
            );
        }
        Ok(self.settings(mode, only_paths, tablespace_mapping, tar))
    }

    /// -j, -D and --chunk-size within their bounds.
    fn check_numbers(&self) -> Result<()> {
        if self.jobs < 1 {
            bail_with!(
                Exit::Usage,
                "-j/--jobs must be at least 1 (got {})",
                self.jobs
            );
        }
        if self.jobs > MAX_JOBS {
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
        // Whole pages per chunk, so each page can be checked as it arrives.
        let page = BLCKSZ as u64;
        if self.chunk_size < page || self.chunk_size > MAX_CHUNK || self.chunk_size % page != 0 {
            bail_with!(
                Exit::Usage,
                "--chunk-size must be a multiple of 8k between 8k and 1G (got {})",
                self.chunk_size
            );
        }
        Ok(())
    }

    /// What the run does, from --clean, -S, --stdin and -x.
    fn run_mode(&self) -> Result<RunMode> {
        Ok(match (self.clean, self.auxiliary, self.stdin, self.wal) {
            (true, false, false, false) => RunMode::Clean,
            (true, ..) => bail_with!(
                Exit::Usage,
                "--clean cannot be combined with -S, --stdin or -x"
            ),
            (false, true, true, false) => RunMode::AuxiliaryCopy,
            (false, true, false, true) => RunMode::WalFollower,
            (false, true, ..) => {
                bail_with!(
                    Exit::Usage,
                    "-S needs exactly one of --stdin (copy files) or -x (follow WAL)"
                )
            }
            (false, false, ..) => RunMode::Backup,
        })
    }

    /// -F, -z, -Z and DEST `-`, checked against the mode and the other flags.
    fn tar_format(&self, mode: RunMode) -> Result<Option<TarFormat>> {
        use crate::output::tar::compress::{GZIP_DEFAULT_LEVEL, TarCompression, parse_compression};
        let compression = match (&self.compress, self.gzip) {
            (Some(spec), _) => {
                parse_compression(spec).map_err(|e| usage(format!("-Z/--compress: {e:#}")))?
            }
            (None, true) => TarCompression::Gzip(GZIP_DEFAULT_LEVEL),
            (None, false) => TarCompression::None,
        };
        let to_stdout = self.dest.as_deref() == Some(Path::new("-"));
        if !matches!(self.format.as_str(), "t" | "tar") {
            if compression != TarCompression::None {
                bail_with!(
                    Exit::Usage,
                    "only tar output can be compressed: -z/-Z need -F t"
                );
            }
            if to_stdout && mode != RunMode::Clean {
                bail_with!(
                    Exit::Usage,
                    "DEST - (standard output) needs -F t; for a directory named -, write ./-"
                );
            }
            return Ok(None);
        }
        if mode != RunMode::Backup {
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

    /// The checked flags, as [`Settings`].
    fn settings(
        self,
        mode: RunMode,
        only_paths: Option<Vec<Vec<u8>>>,
        tablespace_mapping: Vec<(PathBuf, PathBuf)>,
        tar: Option<TarFormat>,
    ) -> Settings {
        Settings {
            mode,
            dsn: self.dsn,
            dest: self.dest.unwrap_or_default(),
            fetch_wal: self.wal,
            force: self.force,
            jobs: self.jobs as usize,
            wal_poll: Duration::from_secs_f64(self.delay),
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
            max_rate: self.max_rate,
            wire_compression: self.wire_compression,
            tar,
            delta: self.delta.then_some(crate::delta::Options {
                trust_mtime: self.trust_mtime,
            }),
            incremental: self.incremental.map(|prior_manifest| IncrementalSettings {
                prior_manifest,
                wait: Duration::from_secs(self.incremental_wait),
            }),
        }
    }
}

/// --stdin's paths, one per line (`\n` or `\r\n`; empty lines skipped),
/// each a safe relative path in canonical form.
fn stdin_paths(
    stdin_lines: impl FnOnce() -> std::io::Result<Vec<Vec<u8>>>,
) -> Result<Vec<Vec<u8>>> {
    let lines = stdin_lines()
        .map_err(|e| usage(format!("could not read paths from standard input: {e}")))?;
    let mut paths = Vec::new();
    for line in &lines {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let path =
            crate::paths::normalize_relative(line).map_err(|e| usage(format!("--stdin: {e}")))?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

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
        assert_eq!(s.wal_poll, Duration::from_secs(2));
        assert_eq!(s.chunk_size, 8 << 20);
        assert!(!s.fetch_wal && !s.fast_checkpoint && s.sync);
        assert_eq!(s.mode, RunMode::Backup);
        assert_eq!(s.max_rate, None);
    }

    #[test]
    fn flags_and_modes() {
        let s = settings(&["-j", "4", "-x", "-D", "0.5", "-c", "fast", "dsn", "d"]).unwrap();
        assert_eq!((s.jobs, s.fetch_wal, s.fast_checkpoint), (4, true, true));
        assert!(settings(&["--wal", "dsn", "d"]).unwrap().fetch_wal);
        assert!(settings(&["--pg_xlog", "dsn", "d"]).unwrap().fetch_wal);
        assert_eq!(
            settings(&["-S", "-x", "dsn", "d"]).unwrap().mode,
            RunMode::WalFollower
        );
        let s = settings(&["-S", "--stdin", "dsn", "d"]).unwrap();
        assert_eq!(s.mode, RunMode::AuxiliaryCopy);
        assert_eq!(
            s.only_paths.unwrap(),
            [
                &b"base/1/1259"[..],
                b"global/pg_control",
                b"FOO\xe0\xe0\xe0BAR"
            ]
        );
        assert_eq!(settings(&["--clean", "dsn"]).unwrap().mode, RunMode::Clean);
        let s = settings(&["--incremental", "m", "--incremental-wait", "5", "dsn", "d"]).unwrap();
        let inc = s.incremental.unwrap();
        assert_eq!(
            (inc.prior_manifest.to_str(), inc.wait),
            (Some("m"), Duration::from_secs(5))
        );
        assert_eq!(
            settings(&["-r", "512k", "dsn", "d"]).unwrap().max_rate,
            Some(512 << 10)
        );
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["-j", "0", "dsn", "d"][..],
            &["-j", "-3", "dsn", "d"],
            &["-j", "513", "dsn", "d"],
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
            &["--incremental", "m", "--delta", "dsn", "d"],
            &["--incremental", "m", "-S", "--stdin", "dsn", "d"],
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
}
