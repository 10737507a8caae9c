//! Which workers read.
//!
//! A reading worker keeps two processes busy: itself (receive, checksum,
//! compress, write) and its backend (read, send). When the server runs on
//! this host (a unix socket or loopback), both share this host's CPUs, and
//! readers beyond the number of CPUs add only switching between them: on 2
//! cores, -j 4 took up to 15% longer than -j 2 (`bench/run --jobs 2,4`;
//! -F t -Z zstd 10% longer in an A/B), with more CPU for the same bytes.
//! So there only the first workers, as many as CPUs, read as long as reads
//! are quick; the others stand by. Tasks that take longer than a read from
//! memory could ([`SLOW_TASKS_TO_GROW`] in a row, each slower than a reader
//! at [`SLOW_READER_BYTES_PER_SEC`]) show that the readers wait on
//! something other than the CPUs (a cold cache on slow disks, a slow link):
//! then one more worker reads, up to -j, and the extra sessions bring the
//! concurrency they were asked for. (Under `--max-rate` the limit grows
//! too, which costs nothing: all sessions share one rate.) The same workers
//! go on reading rather than taking turns: their backends' memory stays
//! warm (handing turns round in order measured 4% slower).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use log::debug;

use crate::abort::Abort;

/// The pace under which a reader waits on disks or a link, not on the
/// CPUs: a warm cache serves one reader 300-700 MB/s here.
const SLOW_READER_BYTES_PER_SEC: u64 = 80 << 20;

/// Slow tasks in a row (of any workers) that let one more worker read: one
/// alone may be a hiccup (a checkpoint's writes, a reconnect).
const SLOW_TASKS_TO_GROW: u32 = 3;

/// How often a standing-by worker looks at the abort flag.
const ABORT_POLL: Duration = Duration::from_millis(100);

pub struct ActiveWorkers {
    state: Mutex<State>,
    changed: Condvar,
    /// A task longer than this lets one more worker read.
    slow: Duration,
    /// The number of workers: the limit never needs to grow past it.
    workers: usize,
}

struct State {
    /// Workers 0..limit read.
    limit: usize,
    /// Slow tasks since the last quick one or the last growth.
    slow_in_a_row: u32,
    /// Every task is taken: the standing-by workers may end.
    all_taken: bool,
}

impl ActiveWorkers {
    /// For `workers` workers, of which the first `limit` read while each
    /// task (of at most `task_bytes`) takes no longer than a slow reader
    /// would need.
    pub fn new(workers: usize, limit: usize, task_bytes: u64) -> ActiveWorkers {
        let secs = task_bytes as f64 / SLOW_READER_BYTES_PER_SEC as f64;
        ActiveWorkers::with_slow_task(workers, limit, Duration::from_secs_f64(secs.max(0.05)))
    }

    fn with_slow_task(workers: usize, limit: usize, slow: Duration) -> ActiveWorkers {
        ActiveWorkers {
            state: Mutex::new(State {
                limit: limit.clamp(1, workers.max(1)),
                slow_in_a_row: 0,
                all_taken: false,
            }),
            changed: Condvar::new(),
            slow,
            workers,
        }
    }

    /// Wait until `worker` may read; false when it never will (every task
    /// is taken, or the copy was told to stop).
    pub fn wait_until_active(&self, worker: usize, abort: &Abort) -> bool {
        let mut state = self.state.lock().unwrap();
        while worker >= state.limit {
            if state.all_taken || abort.is_set() {
                return false;
            }
            state = self.changed.wait_timeout(state, ABORT_POLL).unwrap().0;
        }
        true
    }

    /// A reading worker read a task in `took`: enough slow ones in a row
    /// let the next worker in.
    pub fn task_took(&self, took: Duration) {
        let mut state = self.state.lock().unwrap();
        if took <= self.slow {
            state.slow_in_a_row = 0;
            return;
        }
        state.slow_in_a_row += 1;
        if state.slow_in_a_row >= SLOW_TASKS_TO_GROW && state.limit < self.workers {
            state.slow_in_a_row = 0;
            state.limit += 1;
            debug!(
                "{SLOW_TASKS_TO_GROW} tasks in a row took over {} ms: {} sessions read now",
                self.slow.as_millis(),
                state.limit
            );
            self.changed.notify_all();
        }
    }

    /// Every task is taken: the standing-by workers end.
    pub fn all_taken(&self) {
        self.state.lock().unwrap().all_taken = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_past_the_limit_stands_by_until_the_tasks_are_taken() {
        let active = ActiveWorkers::with_slow_task(3, 2, Duration::from_secs(60));
        let abort = Abort::default();
        assert!(active.wait_until_active(0, &abort));
        assert!(active.wait_until_active(1, &abort));
        std::thread::scope(|s| {
            let third = s.spawn(|| active.wait_until_active(2, &abort));
            std::thread::sleep(Duration::from_millis(100));
            assert!(!third.is_finished());
            for _ in 0..10 {
                active.task_took(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(100));
            assert!(!third.is_finished(), "quick tasks let it in");
            active.all_taken();
            assert!(!third.join().unwrap());
        });
    }

    #[test]
    fn slow_tasks_in_a_row_let_the_next_worker_read() {
        let active = ActiveWorkers::with_slow_task(3, 1, Duration::from_millis(50));
        let abort = Abort::default();
        let slow = Duration::from_millis(51);
        std::thread::scope(|s| {
            let second = s.spawn(|| active.wait_until_active(1, &abort));
            // A quick task in between starts the count again.
            for took in [slow, slow, Duration::from_millis(10), slow, slow] {
                active.task_took(took);
            }
            std::thread::sleep(Duration::from_millis(100));
            assert!(!second.is_finished());
            active.task_took(slow);
            assert!(second.join().unwrap());
        });
        for _ in 0..10 {
            active.task_took(slow);
        }
        // Never past the number of workers.
        assert_eq!(active.state.lock().unwrap().limit, 3);
    }

    #[test]
    fn a_standing_by_worker_sees_the_abort() {
        let active = ActiveWorkers::with_slow_task(2, 1, Duration::from_secs(60));
        let abort = Abort::default();
        abort.fail();
        assert!(!active.wait_until_active(1, &abort));
    }

    #[test]
    fn the_size_of_a_task_sets_what_is_slow() {
        assert_eq!(
            ActiveWorkers::new(4, 2, 8 << 20).slow,
            Duration::from_millis(100)
        );
        assert_eq!(
            ActiveWorkers::new(4, 2, 8 << 10).slow,
            Duration::from_millis(50)
        );
    }
}
