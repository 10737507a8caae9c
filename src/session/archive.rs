//! Without -x the copy holds no WAL: it must come from the server's
//! archive. PostgreSQL's pg_basebackup then lets the backup stop wait until
//! the server has archived the last segment the copy needs, so a restore
//! from the archive never lacks it; so do we, where the server archives.

use log::{info, warn};

/// Whether the backup stop must wait for the archiver: only without -x (with
/// it we copy the WAL ourselves), and only where this server archives the
/// WAL the copy needs: a primary with archive_mode on, a standby only with
/// `always` (the server's own rule).
pub fn stop_waits(fetch_wal: bool, archive_mode: &str, in_recovery: bool) -> bool {
    !fetch_wal
        && match archive_mode {
            "always" => true,
            "on" => !in_recovery,
            _ => false,
        }
}

/// Say, before the backup starts, that the stop will wait for the archive.
pub fn announce(fetch_wal: bool, archive_mode: &str, in_recovery: bool) {
    if stop_waits(fetch_wal, archive_mode, in_recovery) {
        info!(
            "without -x the copy's WAL comes from the server's archive (archive_mode = \
             {archive_mode}): the backup stop waits until the server has archived it"
        );
    }
}

/// After a backup without -x: where the WAL the copy needs must come from.
pub fn warn_no_wal(fetch_wal: bool, archive_mode: &str, in_recovery: bool) {
    if fetch_wal {
        return;
    }
    let source = if stop_waits(fetch_wal, archive_mode, in_recovery) {
        "the server's WAL archive (it holds it all now)".to_string()
    } else if archive_mode == "off" {
        "a WAL archive, and archive_mode is off: only another WAL source (pg_receivewal, ...) \
         can have it; else take the backup with -x"
            .to_string()
    } else {
        format!(
            "the primary's WAL archive (this standby does not archive with archive_mode = \
             {archive_mode}, and the backup did not wait for it); else take the backup with -x"
        )
    };
    warn!(
        "the copy holds no WAL (-x not given): starting it needs a restore_command that \
         fetches the WAL written during the backup from {source}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_waits_only_where_the_server_archives() {
        assert!(stop_waits(false, "on", false));
        assert!(stop_waits(false, "always", false));
        assert!(stop_waits(false, "always", true));
        assert!(
            !stop_waits(false, "on", true),
            "a standby archives only with always"
        );
        assert!(!stop_waits(false, "off", false));
        assert!(!stop_waits(true, "on", false), "-x copies the WAL itself");
    }
}
