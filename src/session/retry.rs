//! A lost reading session is replaced and its request asked again.
//!
//! Every read is idempotent, so when the server ends a backend (or the
//! network blips) the request can be repeated on a fresh session. Used by
//! the copy's workers, the --delta comparison and the WAL follower alike.

use anyhow::Result;

use crate::abort::Abort;
use crate::session::reader::Reader;

/// How often a request whose session was lost is retried on a fresh one.
const RETRIES: u32 = 3;

/// Opens a fresh reading session to replace one that was lost.
pub type Reconnect<'a> = &'a (dyn Fn() -> Result<Reader> + Sync);

/// Decide whether a failed request is retried: only when its session was
/// lost (the server terminated the backend, a network blip), at most
/// [`RETRIES`] times, with backoff. Then `reader` is a fresh session;
/// otherwise the error is returned.
pub fn replace_lost_session(
    error: anyhow::Error,
    reader: &mut Reader,
    attempt: &mut u32,
    reconnect: Reconnect,
    abort: &Abort,
) -> Result<()> {
    if !reader.client().is_closed() || *attempt == RETRIES || abort.is_set() {
        return Err(error);
    }
    *attempt += 1;
    let backoff = std::time::Duration::from_millis(500 << *attempt);
    log::warn!(
        "{error:#}; retrying on a new session in {:.1} s ({attempt}/{RETRIES})",
        backoff.as_secs_f64()
    );
    if abort.sleep(backoff) {
        return Err(error);
    }
    *reader = reconnect()?;
    Ok(())
}
