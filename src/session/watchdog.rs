//! The control session is watched while the copy runs.
//!
//! The backup lives in the control session: when the session is lost (the
//! server restarted, or someone ended the backend), the server has ended the
//! backup and dropped the slot, and nothing copied since can be made
//! consistent. Left alone, the idle session would tell only at the stop
//! call, after all the copying (and the workers would have reconnected and
//! gone on). So a thread sends it an empty query every [`EVERY`]: the answer
//! is immediate, and an empty query cannot raise an ERROR, which would
//! silently drop the temporary slot (why the control session runs only
//! statements that cannot fail).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use anyhow::Result;
use postgres::Client;

use crate::abort::Abort;
use crate::error::{Exit, Failure};
use crate::session::sql;

/// How often the control session is asked whether it is still there.
const EVERY: Duration = Duration::from_millis(500);

/// The watching thread, running in the copy's thread scope.
pub struct Watch<'scope> {
    done: Arc<AtomicBool>,
    thread: ScopedJoinHandle<'scope, Option<String>>,
}

/// Watch `control` until [`Watch::verdict`]. If the session is lost
/// meanwhile, every thread is told to stop.
pub fn watch<'scope, 'env>(
    s: &'scope Scope<'scope, 'env>,
    control: &'env mut Client,
    abort: &'env Abort,
) -> Watch<'scope> {
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let thread = std::thread::Builder::new()
        .name("watch control".into())
        .spawn_scoped(s, move || {
            let stop = || stop.load(Ordering::SeqCst);
            while !abort.sleep_unless(EVERY, stop) && !stop() {
                if let Err(e) = control.simple_query(sql::PING) {
                    abort.fail();
                    return Some(reason(&e));
                }
            }
            None
        })
        .expect("spawn the control session watch");
    Watch { done, thread }
}

impl Watch<'_> {
    /// The copy's `result`, unless the control session was lost: then that
    /// loss (exit code 6), whatever the copy returned.
    pub fn verdict<T>(self, result: Result<T>) -> Result<T> {
        self.done.store(true, Ordering::SeqCst);
        let lost = self
            .thread
            .join()
            .expect("the control session watch panicked");
        let Some(why) = lost else {
            return result;
        };
        if let Err(e) = &result {
            log::debug!("the copy stopped with: {e:#}");
        }
        Err(Failure::new(
            Exit::Backup,
            format!(
                "the control session was lost ({why}): the server restarted or ended it, \
                 which ended the backup"
            ),
        )
        .into())
    }
}

/// The server's words if it said any (a FATAL on shutdown), else the
/// client's (connection closed).
fn reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}
