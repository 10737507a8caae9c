//! Progress reporting for a backup run, and the one-line end-of-run summary.
//!
//! A base backup moves gigabytes through several worker sessions and a WAL
//! stream at once, for minutes or hours; without feedback an operator cannot
//! tell a slow run from a stuck one. This module owns the shared byte
//! counters and renders them: a live indicatif bar when stderr is a terminal,
//! plain lines on stderr otherwise (every 10 s and once at 100 %, for log
//! files and CI), nothing with [`ProgressStyle::Off`].
//!
//! The hot path ([`Progress::add_data`], [`Progress::add_wal`]) is one relaxed
//! atomic add: no lock, no clock read, no drawing. One reporter thread per
//! [`Progress`] samples the counters (every 100 ms for the bar, every 250 ms
//! in plain mode) and stops on [`Progress::finish`] or drop.
//!
//! Sizes use PostgreSQL's 1024-based units, spelled kB, MB and GB.
//!
//! # Keeping log lines readable under the live bar
//!
//! Log lines written by other threads while the bar is drawn would be torn
//! by its redraws. While a bar is live it is registered process-wide, and
//! [`suspend_active`] runs a closure with the bar erased and redraws it
//! afterwards (with no live bar, in plain mode, or with `Off`, it just runs
//! the closure). `init_logging` in main.rs installs the logger wrapped in
//! [`SuspendingLogger`], which does that for every log line.
//!
//! Other direct writes to stderr while a [`Progress`] is alive should go
//! through [`suspend_active`]. Never log from
//! inside a suspend closure: the bar's lock is held there, so it would
//! deadlock.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle as BarStyle};

const KB: u64 = 1024;
const MB: u64 = 1024 * KB;
const GB: u64 = 1024 * MB;

/// Plain mode: a line at most this often (plus one when 100 % is reached).
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);
/// Plain mode: how often the reporter looks at the counters.
const PLAIN_POLL: Duration = Duration::from_millis(250);
/// Bar mode: how often the reporter pushes the counters into the bar.
const BAR_POLL: Duration = Duration::from_millis(100);

const BAR_TEMPLATE: &str = "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
     ({percent}%), {binary_bytes_per_sec}, ETA {eta}  {msg}";

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Nothing is shown; the counters still count.
    Off,
    /// A live bar when stderr is a terminal, else plain periodic lines.
    Auto,
}

/// What a [`Progress`] actually draws: what [`ProgressStyle::Auto`] turned
/// into once it is known whether stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendering {
    Off,
    Plain,
    Bar,
    /// A bar drawing nowhere (tests).
    #[cfg(test)]
    HiddenBar,
}

/// State shared with the reporter thread.
struct Shared {
    data: AtomicU64,
    wal: AtomicU64,
    total: AtomicU64,
    start: Instant,
    bar: Option<ProgressBar>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    /// Sleep up to `timeout` or until stopped; true once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let stop = lock(&self.stop);
        let (stop, _) = self
            .wake
            .wait_timeout_while(stop, timeout, |stopped| !*stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *stop
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.data.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.wal.load(Ordering::Relaxed),
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Progress of one run: data and WAL byte counters shared by all threads,
/// rendered by a reporter thread. `Send + Sync`; share it by reference or
/// `Arc`.
pub struct Progress {
    shared: Arc<Shared>,
    reporter: Mutex<Option<JoinHandle<()>>>,
    finished: AtomicBool,
    /// Our entry in the process-wide live-bar slot, if we have a bar.
    registration: Option<u64>,
}

impl Progress {
    /// Start reporting. `total_bytes` is the expected data size, 0 if not
    /// known.
    pub fn new(style: ProgressStyle, total_bytes: u64) -> Progress {
        let rendering = match style {
            ProgressStyle::Off => Rendering::Off,
            ProgressStyle::Auto if std::io::stderr().is_terminal() => Rendering::Bar,
            ProgressStyle::Auto => Rendering::Plain,
        };
        Progress::with_rendering(rendering, total_bytes)
    }

    fn with_rendering(rendering: Rendering, total: u64) -> Progress {
        let bar = match rendering {
            Rendering::Bar => Some(new_bar(ProgressDrawTarget::stderr(), total)),
            #[cfg(test)]
            Rendering::HiddenBar => Some(new_bar(ProgressDrawTarget::hidden(), total)),
            Rendering::Off | Rendering::Plain => None,
        };
        let registration = bar.as_ref().map(register);
        let shared = Arc::new(Shared {
            data: AtomicU64::new(0),
            wal: AtomicU64::new(0),
            total: AtomicU64::new(total),
            start: Instant::now(),
            bar,
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let reporter = match rendering {
            Rendering::Off => None,
            Rendering::Plain => spawn_reporter(&shared, plain_reporter),
            Rendering::Bar => spawn_reporter(&shared, bar_reporter),
            #[cfg(test)]
            Rendering::HiddenBar => spawn_reporter(&shared, bar_reporter),
        };
        Progress {
            shared,
            reporter: Mutex::new(reporter),
            finished: AtomicBool::new(false),
            registration,
        }
    }

    /// Count relation data copied (any thread; one atomic add).
    pub fn add_data(&self, bytes: u64) {
        self.shared.data.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Count WAL received (any thread; one atomic add).
    pub fn add_wal(&self, bytes: u64) {
        self.shared.wal.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Stop reporting: clear the bar, stop the reporter thread (which prints
    /// a last line in plain mode unless the 100 % line was printed already).
    /// Idempotent; also called on drop. The counters stay readable.
    pub fn finish(&self) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        let reporter = lock(&self.reporter).take();
        if let Some(reporter) = reporter {
            let _ = reporter.join();
        }
        if let Some(id) = self.registration {
            unregister(id);
        }
        if let Some(bar) = &self.shared.bar {
            bar.finish_and_clear();
        }
    }

    pub fn data_bytes(&self) -> u64 {
        self.shared.data.load(Ordering::Relaxed)
    }

    pub fn wal_bytes(&self) -> u64 {
        self.shared.wal.load(Ordering::Relaxed)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("data", &self.data_bytes())
            .field("wal", &self.wal_bytes())
            .field("total", &self.shared.total.load(Ordering::Relaxed))
            .field("bar", &self.shared.bar.is_some())
            .finish()
    }
}

fn new_bar(target: ProgressDrawTarget, total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target((total > 0).then_some(total), target);
    let style = BarStyle::with_template(BAR_TEMPLATE)
        .unwrap_or_else(|_| BarStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Without a reporter thread (the spawn failed) progress is simply not shown.
fn spawn_reporter(shared: &Arc<Shared>, body: fn(&Shared)) -> Option<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || body(&shared))
        .ok()
}

fn bar_reporter(shared: &Shared) {
    let Some(bar) = &shared.bar else { return };
    let mut shown_wal = 0;
    loop {
        let stopped = shared.wait(BAR_POLL);
        let (done, _, wal) = shared.counts();
        bar.set_position(done);
        if wal != shown_wal {
            shown_wal = wal;
            bar.set_message(format!("WAL {}", format_size(wal)));
        }
        bar.tick();
        if stopped {
            return;
        }
    }
}

fn plain_reporter(shared: &Shared) {
    let mut last_line = Instant::now();
    let mut printed_full = false;
    loop {
        let stopped = shared.wait(PLAIN_POLL);
        let (done, total, wal) = shared.counts();
        let full = total > 0 && done >= total;
        let active = total > 0 || done > 0 || wal > 0;
        let due = !stopped && active && last_line.elapsed() >= PLAIN_INTERVAL;
        // The last line tells where the run ended, even short of 100 %
        // (files that shrank or vanished).
        let last = stopped && active && !printed_full;
        if (full && !printed_full) || due || last {
            eprintln!("{}", plain_line(done, total, wal, shared.start.elapsed()));
            last_line = Instant::now();
            printed_full |= full;
        }
        if stopped {
            return;
        }
    }
}

/// The live bar, if any, for [`suspend_active`]: (registration id, bar).
static ACTIVE_BAR: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);
static NEXT_REGISTRATION: AtomicU64 = AtomicU64::new(1);

fn register(bar: &ProgressBar) -> u64 {
    let id = NEXT_REGISTRATION.fetch_add(1, Ordering::Relaxed);
    *lock(&ACTIVE_BAR) = Some((id, bar.clone()));
    id
}

fn unregister(id: u64) {
    let mut active = lock(&ACTIVE_BAR);
    if active.as_ref().is_some_and(|(current, _)| *current == id) {
        *active = None;
    }
}

/// Run `f` with the live progress bar (if any) erased, then redraw it.
/// For code that cannot reach the [`Progress`], such as the logger.
pub fn suspend_active<R>(f: impl FnOnce() -> R) -> R {
    let bar = lock(&ACTIVE_BAR).as_ref().map(|(_, bar)| bar.clone());
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// A `log::Log` that writes each record through [`suspend_active`], so log
/// lines appear above the live bar instead of inside it.
pub struct SuspendingLogger<L> {
    inner: L,
}

impl<L: log::Log> SuspendingLogger<L> {
    pub fn new(inner: L) -> SuspendingLogger<L> {
        SuspendingLogger { inner }
    }
}

impl<L: log::Log> log::Log for SuspendingLogger<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.inner.enabled(record.metadata()) {
            suspend_active(|| self.inner.log(record));
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The one summary printed at the end of a run (with -v or when anything
/// was found).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub files: u64,
    pub data_bytes: u64,
    pub wal_segments: u64,
    pub wal_bytes: u64,
    pub seconds: f64,
    pub checksum_failures: u64,
    pub manifest_written: bool,
    /// An incremental backup: the size of the files it stands for, of
    /// which `data_bytes` were fetched.
    pub full_bytes: Option<u64>,
}

/// One line, e.g. "12 files, 1590 MB data, 3 WAL segments (48 MB), 4.2 s,
/// 390 MB/s, 0 checksum failures, manifest written". The rate counts data
/// and WAL bytes.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, {} data, {} {}",
            self.files,
            plural(self.files, "file", "files"),
            format_size(self.data_bytes),
            self.wal_segments,
            plural(self.wal_segments, "WAL segment", "WAL segments"),
        )?;
        if self.wal_bytes > 0 {
            write!(f, " ({})", format_size(self.wal_bytes))?;
        }
        if let Some(full) = self.full_bytes {
            write!(
                f,
                ", incremental: {} fetched of {} ({:.1}%)",
                format_size(self.data_bytes),
                format_size(full),
                self.data_bytes as f64 * 100.0 / full.max(1) as f64
            )?;
        }
        write!(f, ", {:.1} s", self.seconds)?;
        if self.seconds > 0.0 {
            let bytes = self.data_bytes.saturating_add(self.wal_bytes);
            write!(f, ", {}", format_rate(bytes as f64 / self.seconds))?;
        }
        write!(
            f,
            ", {} {}, {}",
            self.checksum_failures,
            plural(
                self.checksum_failures,
                "checksum failure",
                "checksum failures"
            ),
            if self.manifest_written {
                "manifest written"
            } else {
                "no manifest"
            }
        )
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// A unit for sizes: kB below 1 MB, whole MB below 10 GB, then GB with one
/// decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Kilo,
    Mega,
    Giga,
}

impl Unit {
    fn for_bytes(bytes: u64) -> Unit {
        if bytes >= 10 * GB {
            Unit::Giga
        } else if bytes >= MB {
            Unit::Mega
        } else {
            Unit::Kilo
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Kilo => "kB",
            Unit::Mega => "MB",
            Unit::Giga => "GB",
        }
    }

    /// `bytes` as a number of this unit (kB rounded up, so a non-zero size
    /// never shows as 0; MB rounded; GB with one decimal).
    fn number(self, bytes: u64) -> String {
        match self {
            Unit::Kilo => bytes.div_ceil(KB).to_string(),
            Unit::Mega => (bytes.saturating_add(MB / 2) / MB).to_string(),
            Unit::Giga => format!("{:.1}", bytes as f64 / GB as f64),
        }
    }
}

fn format_size(bytes: u64) -> String {
    let unit = Unit::for_bytes(bytes);
    format!("{} {}", unit.number(bytes), unit.name())
}

fn format_rate(bytes_per_second: f64) -> String {
    format!("{}/s", format_size(bytes_per_second.round() as u64))
}

/// "3 s", "10 min 44 s", "3 h 5 min".
fn format_eta(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

/// One plain-mode line, e.g.
/// "pg_basebackup: progress: 1024/1590 MB (64%), 212 MB/s, ETA 3 s; WAL 48 MB".
/// The rate is data bytes over the time since start; the ETA is "?" while
/// the total or the rate is unknown. The WAL part appears once WAL arrived.
fn plain_line(done: u64, total: u64, wal: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    let rate = if seconds > 0.0 {
        done as f64 / seconds
    } else {
        0.0
    };
    let mut line = String::from("pg_basebackup: progress: ");
    if total > 0 {
        let unit = Unit::for_bytes(total.max(done));
        let percent = (u128::from(done) * 100 / u128::from(total)).min(100);
        let _ = write!(
            line,
            "{}/{} {} ({percent}%)",
            unit.number(done),
            unit.number(total),
            unit.name()
        );
    } else {
        let _ = write!(line, "{}/? (?%)", format_size(done));
    }
    let eta = if total == 0 || rate <= 0.0 {
        "?".to_string()
    } else if done >= total {
        format_eta(0)
    } else {
        format_eta(((total - done) as f64 / rate).ceil() as u64)
    };
    let _ = write!(line, ", {}, ETA {eta}", format_rate(rate));
    if wal > 0 {
        let _ = write!(line, "; WAL {}", format_size(wal));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Progress>();
        assert_send_sync::<SuspendingLogger<NoLogger>>();
    }

    struct NoLogger;

    impl log::Log for NoLogger {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            false
        }
        fn log(&self, _: &log::Record<'_>) {}
        fn flush(&self) {}
    }

    #[test]
    fn concurrent_adds_sum() {
        for rendering in [Rendering::Off, Rendering::Plain, Rendering::HiddenBar] {
            let progress = Progress::with_rendering(rendering, 0);
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        for _ in 0..1000 {
                            progress.add_data(8 * MB);
                            progress.add_wal(3);
                        }
                    });
                }
            });
            assert_eq!(progress.data_bytes(), 8 * 1000 * 8 * MB, "{rendering:?}");
            assert_eq!(progress.wal_bytes(), 8 * 1000 * 3, "{rendering:?}");
            progress.finish();
        }
    }

    #[test]
    fn finish_is_idempotent() {
        for rendering in [Rendering::Off, Rendering::Plain, Rendering::HiddenBar] {
            let progress = Progress::with_rendering(rendering, 100);
            progress.add_data(100);
            progress.finish();
            progress.finish();
            // Still usable after finish, and drop finishes once more.
            progress.add_data(1);
            assert_eq!(progress.data_bytes(), 101, "{rendering:?}");
            assert!(progress.reporter.lock().unwrap().is_none(), "{rendering:?}");
            drop(progress);
        }
        assert_eq!(suspend_active(|| 9), 9);
    }

    #[test]
    fn finished_bar_leaves_the_live_slot() {
        let progress = Progress::with_rendering(Rendering::HiddenBar, 0);
        let id = progress.registration.unwrap();
        progress.finish();
        assert!(
            lock(&ACTIVE_BAR)
                .as_ref()
                .is_none_or(|(current, _)| *current != id)
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(format_size(0), "0 kB");
        assert_eq!(format_size(1), "1 kB");
        assert_eq!(format_size(1024), "1 kB");
        assert_eq!(format_size(1025), "2 kB");
        assert_eq!(format_size(MB - 1), "1024 kB");
        assert_eq!(format_size(MB), "1 MB");
        assert_eq!(format_size(1590 * MB), "1590 MB");
        assert_eq!(format_size(10 * GB - 1), "10240 MB");
        assert_eq!(format_size(10 * GB), "10.0 GB");
        assert_eq!(format_size(12 * GB + 300 * MB), "12.3 GB");
        assert_eq!(format_rate(212.0 * MB as f64), "212 MB/s");
    }

    #[test]
    fn etas() {
        assert_eq!(format_eta(0), "0 s");
        assert_eq!(format_eta(59), "59 s");
        assert_eq!(format_eta(60), "1 min 0 s");
        assert_eq!(format_eta(644), "10 min 44 s");
        assert_eq!(format_eta(3 * 3600 + 5 * 60 + 7), "3 h 5 min");
    }

    #[test]
    fn summary_line() {
        let summary = Summary {
            files: 12,
            data_bytes: 1590 * MB,
            wal_segments: 3,
            wal_bytes: 48 * MB,
            seconds: 4.2,
            checksum_failures: 0,
            manifest_written: true,
            full_bytes: None,
        };
        assert_eq!(
            summary.to_string(),
            "12 files, 1590 MB data, 3 WAL segments (48 MB), 4.2 s, 390 MB/s, \
             0 checksum failures, manifest written"
        );

        let summary = Summary {
            files: 1,
            data_bytes: 500,
            wal_segments: 1,
            wal_bytes: 16 * MB,
            seconds: 0.0,
            checksum_failures: 1,
            manifest_written: false,
            full_bytes: None,
        };
        assert_eq!(
            summary.to_string(),
            "1 file, 1 kB data, 1 WAL segment (16 MB), 0.0 s, 1 checksum failure, no manifest"
        );

        let summary = Summary {
            files: 2,
            data_bytes: 12 * GB + 300 * MB,
            seconds: 10.0,
            manifest_written: true,
            ..Summary::default()
        };
        assert_eq!(
            summary.to_string(),
            "2 files, 12.3 GB data, 0 WAL segments, 10.0 s, 1259 MB/s, \
             0 checksum failures, manifest written"
        );

        let summary = Summary {
            files: 2,
            data_bytes: 30 * MB,
            full_bytes: Some(1200 * MB),
            ..Summary::default()
        };
        assert_eq!(
            summary.to_string(),
            "2 files, 30 MB data, 0 WAL segments, incremental: 30 MB fetched of 1200 MB (2.5%), \
             0.0 s, 0 checksum failures, no manifest"
        );

        assert_eq!(
            Summary::default().to_string(),
            "0 files, 0 kB data, 0 WAL segments, 0.0 s, 0 checksum failures, no manifest"
        );
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            plain_line(
                1024 * MB,
                1590 * MB,
                48 * MB,
                Duration::from_secs_f64(1024.0 / 212.0)
            ),
            "pg_basebackup: progress: 1024/1590 MB (64%), 212 MB/s, ETA 3 s; WAL 48 MB"
        );
        // Nothing known yet.
        assert_eq!(
            plain_line(0, 0, 0, Duration::ZERO),
            "pg_basebackup: progress: 0 kB/? (?%), 0 kB/s, ETA ?"
        );
        // Data but no total yet.
        assert_eq!(
            plain_line(5 * MB, 0, 0, Duration::from_secs(1)),
            "pg_basebackup: progress: 5 MB/? (?%), 5 MB/s, ETA ?"
        );
        // Files grew during the copy: capped at 100 %, nothing left.
        assert_eq!(
            plain_line(1600 * MB, 1590 * MB, 0, Duration::from_secs(10)),
            "pg_basebackup: progress: 1600/1590 MB (100%), 160 MB/s, ETA 0 s"
        );
        // Large totals in GB; a long ETA.
        assert_eq!(
            plain_line(GB, 100 * GB, 0, Duration::from_secs_f64(6.5)),
            "pg_basebackup: progress: 1.0/100.0 GB (1%), 158 MB/s, ETA 10 min 44 s"
        );
        // Total known, nothing copied yet: the rate is unknown.
        assert_eq!(
            plain_line(0, 2 * MB, 0, Duration::from_secs(1)),
            "pg_basebackup: progress: 0/2 MB (0%), 0 kB/s, ETA ?"
        );
    }
}
