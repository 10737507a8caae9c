//! One flag that every thread checks between units of work: set by
//! SIGINT/SIGTERM (see `interrupt.rs`, which also unblocks threads that do
//! not look) or by the first thread that fails, so the others stop soon and
//! the backup can be ended cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

#[derive(Clone)]
#[cfg_attr(test, derive(Default))]
pub struct Abort {
    failed: Arc<AtomicBool>,
    /// `terminate` on the WAL follower's standard input.
    terminated: Arc<AtomicBool>,
}

impl Abort {
    /// A flag that SIGINT and SIGTERM set.
    pub fn with_signals() -> Result<Abort> {
        crate::interrupt::install()?;
        Ok(Abort {
            failed: Arc::default(),
            terminated: Arc::default(),
        })
    }

    /// Ask every thread to stop because something failed.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.failed.load(Ordering::SeqCst) || self.signalled()
    }

    /// Whether a normal stop was asked for: a signal, or `terminate`.
    pub fn signalled(&self) -> bool {
        crate::interrupt::signalled() || self.terminated.load(Ordering::SeqCst)
    }

    /// Sleep up to `d`, waking early when the flag is set. Returns whether it was.
    pub fn sleep(&self, d: std::time::Duration) -> bool {
        self.sleep_unless(d, || false)
    }

    /// Sleep up to `d`, waking early when the flag is set or `stop()` says
    /// so. Returns whether the flag was set.
    pub fn sleep_unless(&self, d: std::time::Duration, stop: impl Fn() -> bool) -> bool {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if self.is_set() {
                return true;
            }
            if stop() {
                return false;
            }
            std::thread::sleep(
                std::time::Duration::from_millis(50).min(end - std::time::Instant::now()),
            );
        }
        self.is_set()
    }
}

impl Abort {
    /// Ask for a normal stop, as a signal would (the WAL follower's
    /// `terminate` on standard input).
    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::SeqCst);
    }
}
