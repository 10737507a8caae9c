//! A hot standby as the source: a promotion during the backup ends it.
//!
//! A standby backs up with the same non-exclusive calls as a primary, but
//! if it is promoted meanwhile the copy is not consistent, and the server
//! says so only at the stop call, which may come hours later. So a session
//! of its own asks `pg_is_in_recovery()` every second while the files are
//! copied. It is not the control session (an ERROR there would drop the
//! slot) nor the WAL follower (which runs only with -x).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use log::warn;
use postgres::Client;

use crate::abort::Abort;
use crate::bail_with;
use crate::error::Exit;
use crate::session::server;

/// How often the standby is asked whether it is still one.
const POLL: Duration = Duration::from_secs(1);

/// Until `done` or `abort`, ask the standby every second whether it is
/// still in recovery; on a promotion, stop the backup (abort) and fail.
/// A lost session only ends the watch: the stop call still notices.
pub fn watch_for_promotion(mut client: Client, abort: &Abort, done: &AtomicBool) -> Result<()> {
    let done = || done.load(Ordering::SeqCst);
    while !done() && !abort.is_set() {
        match server::in_recovery(&mut client) {
            Ok(true) => {}
            Ok(false) => {
                abort.fail();
                bail_with!(
                    Exit::Backup,
                    "the standby was promoted during the backup, so the copy would not be \
                     consistent: take the backup again"
                );
            }
            Err(e) => {
                warn!(
                    "stopped watching the standby for a promotion ({e:#}); the backup stop \
                     will still notice one"
                );
                return Ok(());
            }
        }
        abort.sleep_unless(POLL, done);
    }
    Ok(())
}
