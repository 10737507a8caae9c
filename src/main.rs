//! pg_basebackup: a physical base backup of a running PostgreSQL server over
//! ordinary SQL connections, in parallel. See README.md.

mod abort;

mod cli;
mod conn;
mod copy;
mod delta;
mod error;
mod fsx;
mod incremental;
mod integrity;
mod interrupt;
mod manifest;
mod odd_names;
mod output;
mod paths;
mod pg;
mod plan;
mod progress;
mod run;
mod session;
mod throttle;
mod wal;

use std::io::{BufRead, Write};

fn main() {
    keep_chunk_buffers();
    // A file-size limit (ulimit -f) must be an error we can clean up after,
    // not SIGXFSZ killing the process with a half-written copy.
    // SAFETY: ignoring a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let args = cli::parse();
    init_logging(args.verbose, args.debug);
    let result = args
        .into_settings(|| std::io::stdin().lock().split(b'\n').collect())
        .and_then(|settings| run::run(&settings, &abort::Abort::with_signals()?));
    if let Err(err) = result {
        // Whatever failed after a signal failed because of it.
        let err = if interrupt::signalled() && error::exit_of(&err) != error::Exit::Interrupted {
            err.context(error::Failure::new(
                error::Exit::Interrupted,
                "interrupted by a signal",
            ))
        } else {
            err
        };
        let (line, hint) = error::report(&err);
        log::error!("{line}");
        if let Some(hint) = hint {
            eprintln!("pg_basebackup: hint: {hint}");
        }
        std::process::exit(error::exit_of(&err).code());
    }
}

/// Each 8 MB result arrives in a fresh buffer of its size. By default glibc
/// serves such sizes with mmap and returns them with munmap, so every chunk
/// pays for faulting in and zeroing 2048 new pages. Keeping them on the heap
/// (and not trimming it) reuses the same memory chunk after chunk.
fn keep_chunk_buffers() {
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Warnings always; -v adds info, -d adds debug (our SQL included).
fn init_logging(verbose: bool, debug: bool) {
    let ours = match (debug, verbose) {
        (true, _) => log::LevelFilter::Debug,
        (false, true) => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    let logger = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("pg_basebackup", ours)
        .format(|buf, record| {
            writeln!(
                buf,
                "pg_basebackup: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .build();
    // Log lines go above the -P bar instead of tearing it.
    log::set_max_level(logger.filter());
    log::set_boxed_logger(Box::new(progress::SuspendingLogger::new(logger)))
        .expect("the logger is installed once");
}
