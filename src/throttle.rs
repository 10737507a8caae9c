//! `--max-rate`: one byte budget shared by every session of a run, so N
//! workers and the WAL thread together stay under the limit.
//!
//! Each request reserves its bytes on a shared timeline before it is sent:
//! at R bytes/s a request of n bytes occupies n/R seconds, starting when the
//! previous reservation ends (or now, if the link has been idle). The caller
//! sleeps until its slot begins. No background thread, one short lock per
//! request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Throttle {
    bytes_per_second: f64,
    next_free: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second: bytes_per_second as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// How long the caller must wait before sending `bytes`; reserves them.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let mut next = self.next_free.lock().unwrap();
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
        start - now
    }

    /// Block until `bytes` may be transferred within the rate, or a signal
    /// arrives (the request then fails on its own, see `interrupt.rs`).
    pub fn acquire(&self, bytes: u64) {
        let end = Instant::now() + self.reserve(bytes, Instant::now());
        while !crate::interrupt::signalled() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_queue_up_at_the_rate() {
        let t = Throttle::new(1000);
        let now = Instant::now();
        assert_eq!(t.reserve(500, now), Duration::ZERO);
        assert_eq!(t.reserve(500, now), Duration::from_millis(500));
        assert_eq!(t.reserve(1000, now), Duration::from_secs(1));
        // After an idle spell the budget does not accumulate beyond "now".
        let later = now + Duration::from_secs(10);
        assert_eq!(t.reserve(100, later), Duration::ZERO);
    }
}
