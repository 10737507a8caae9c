//! Which workers read.
//!
//! A reading worker keeps two processes busy: itself (receive, checksum,
//! compress, write) and its backend (read, send). When the server runs on
//! this host (a unix socket or loopback), both share this host's CPUs, and
//! readers beyond the number of CPUs add only switching between them: on 2
//! cores, -j 4 took up to 15% longer than -j 2 (`bench/run --jobs 2,4`;
//! -F t -Z zstd 10% longer in an A/B), with more CPU for the same bytes.
//! So there only the first workers, as many as CPUs, read as long as reads
//! are quick; the others stand by. A task that takes longer than a read
//! from memory could (`slow`) shows that the readers wait
//! on something other than the CPUs (a cold cache on slow disks, a slow
//! link, a rate limit): then one more worker reads, up to -j, and the
//! extra sessions bring the concurrency they were asked for. The same
//! workers go on reading rather than taking turns: their backends' memory
//! stays warm (handing turns round in order measured 4% slower).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use log::debug;

use crate::abort::Abort;

/// The pace under which a reader waits on disks, a link or a rate limit, not
/// on the CPUs: a warm cache serves one reader 300-700 MB/s here.
const SLOW_READER_BYTES_PER_SEC: u64 = 80 << 20;

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
    /// No task is left to take: the standing-by workers may end.
    drained: bool,
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
                drained: false,
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
            if state.drained || abort.is_set() {
                return false;
            }
            state = self.changed.wait_timeout(state, ABORT_POLL).unwrap().0;
        }
        true
    }

    /// A reading worker read a task in `took`: a slow one lets the next
    /// worker in.
    pub fn task_took(&self, took: Duration) {
        if took <= self.slow {
            return;
        }
        let mut state = self.state.lock().unwrap();
        if state.limit < self.workers {
            state.limit += 1;
            debug!(
                "a task took {} ms: {} sessions read now",
                took.as_millis(),
                state.limit
            );
            self.changed.notify_all();
        }
    }

    /// Every task is taken: the standing-by workers end.
    pub fn drained(&self) {
        self.state.lock().unwrap().drained = true;
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
            active.task_took(Duration::from_millis(10));
            std::thread::sleep(Duration::from_millis(100));
            assert!(!third.is_finished(), "a quick task let it in");
            active.drained();
            assert!(!third.join().unwrap());
        });
    }

    #[test]
    fn a_slow_task_lets_the_next_worker_read() {
        let active = ActiveWorkers::with_slow_task(3, 1, Duration::from_millis(50));
        let abort = Abort::default();
        std::thread::scope(|s| {
            let second = s.spawn(|| active.wait_until_active(1, &abort));
            std::thread::sleep(Duration::from_millis(100));
            assert!(!second.is_finished());
            active.task_took(Duration::from_millis(51));
            assert!(second.join().unwrap());
        });
        active.task_took(Duration::from_secs(1));
        active.task_took(Duration::from_secs(1));
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
