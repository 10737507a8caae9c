//! Every SQL text the tool sends, chosen by server version where it differs.
//!
//! The backup API was renamed in PostgreSQL 15 (`pg_start_backup` became
//! `pg_backup_start`, exclusive mode went away); everything else we use has
//! been stable since 10. With all the texts here, a new server version is a
//! change to this file (and to `pg::version`). Statements are logged at
//! debug level (`-d`); none of them carries a password.

#[cfg(doc)]
use crate::pg::version::MINIMUM_VERSION_FOR_SHA256;
use crate::pg::version::{MINIMUM_VERSION_FOR_BACKUP_START, MINIMUM_VERSION_FOR_GROUP_ACCESS};

// What the server is.

pub const SERVER_VERSION_NUM: &str = "SELECT current_setting('server_version_num')::int4";

/// The server's layout: recovery, WAL segment size, catalog version, system
/// identifier, data directory mode, page checksums, block size, relation
/// segment size.
pub fn server_layout(version_num: u32) -> String {
    // data_directory_mode appeared in 11; 10 always uses 0700.
    let mode = if version_num >= MINIMUM_VERSION_FOR_GROUP_ACCESS {
        "current_setting('data_directory_mode')"
    } else {
        "'0700'"
    };
    format!(
        "SELECT pg_is_in_recovery(), i.bytes_per_wal_segment::int8, s.catalog_version_no::int8, \
                s.system_identifier::text, {mode}, i.data_page_checksum_version::int8, \
                i.database_block_size::int8, i.blocks_per_segment::int8 \
           FROM pg_control_init() i, pg_control_system() s"
    )
}

/// Every timeout that could end a long, mostly idle session, and JIT. Only
/// the names this server has (`idle_session_timeout` is 14+): SET of an
/// unknown name is an ERROR.
pub const DISABLE_TIMEOUTS: &str = "SELECT set_config(name, '0', false) FROM pg_settings \
          WHERE name IN ('statement_timeout', 'lock_timeout', \
                         'idle_in_transaction_session_timeout', 'idle_session_timeout', 'jit')";

pub const ARCHIVE_MODE: &str = "SELECT current_setting('archive_mode')";

pub const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()";

pub const CURRENT_TIMELINE: &str = "SELECT timeline_id::int8 FROM pg_control_checkpoint()";

pub const LAST_REDO_LSN: &str = "SELECT redo_lsn FROM pg_control_checkpoint()";

/// How far WAL is safely on disk: on a standby, what it received or
/// replayed, whichever is further.
pub fn wal_flush_lsn(in_recovery: bool) -> &'static str {
    if in_recovery {
        "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
    } else {
        "SELECT pg_current_wal_flush_lsn()"
    }
}

/// An empty query: answered at once and cannot raise an ERROR (the control
/// session's keep-alive).
pub const PING: &str = "";

// The role and what it may do.

/// May the role create a slot, the wal_level, the slots allowed and used.
pub const SLOT_OBSTACLE: &str = "SELECT (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user), \
                      current_setting('wal_level'), \
                      current_setting('max_replication_slots')::int4, \
                      (SELECT count(*) FROM pg_replication_slots)::int4";

pub const CURRENT_ROLE: &str =
    "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user";

/// Of the functions in `$1`, those the role may not execute.
pub const MISSING_FUNCTION_PRIVILEGES: &str =
    "SELECT f FROM unnest($1::text[]) AS f WHERE NOT has_function_privilege(f, 'EXECUTE')";

/// The functions every copy calls, with the exact signatures GRANT wants
/// (grants are per overload).
pub const FILE_ACCESS_FUNCTIONS: [&str; 3] = [
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// The functions that start and stop a backup, as [`FILE_ACCESS_FUNCTIONS`].
pub fn backup_functions(version_num: u32) -> [&'static str; 2] {
    if version_num >= MINIMUM_VERSION_FOR_BACKUP_START {
        [
            "pg_catalog.pg_backup_start(text, boolean)",
            "pg_catalog.pg_backup_stop(boolean)",
        ]
    } else {
        [
            "pg_catalog.pg_start_backup(text, boolean, boolean)",
            "pg_catalog.pg_stop_backup(boolean, boolean)",
        ]
    }
}

/// Connections: allowed, reserved for superusers, in use; whether the role
/// is a superuser, its connection limit and its connections in use.
pub const FREE_CONNECTIONS: &str = "SELECT current_setting('max_connections')::int4, \
                      current_setting('superuser_reserved_connections')::int4, \
                      (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int4, \
                      (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                      (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user), \
                      (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user)::int4";

// Slots and the backup.

pub const BACKEND_PID: &str = "SELECT pg_backend_pid()";

/// A temporary slot that keeps WAL from the last redo point on.
pub const CREATE_TEMPORARY_SLOT: &str =
    "SELECT 1 FROM pg_create_physical_replication_slot($1, true, true)";

pub const ADVANCE_SLOT: &str = "SELECT 1 FROM pg_replication_slot_advance($1, $2)";

/// Start a non-exclusive backup: label, fast checkpoint; returns its LSN.
pub fn start_backup(version_num: u32) -> &'static str {
    if version_num >= MINIMUM_VERSION_FOR_BACKUP_START {
        "SELECT pg_backup_start($1, $2)"
    } else {
        "SELECT pg_start_backup($1, $2, false)"
    }
}

/// Stop the session's backup: wait for the archive; returns the stop LSN,
/// backup_label and tablespace_map.
pub fn stop_backup(version_num: u32) -> &'static str {
    if version_num >= MINIMUM_VERSION_FOR_BACKUP_START {
        "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop($1)"
    } else {
        "SELECT lsn, labelfile, spcmapfile FROM pg_stop_backup(false, $1)"
    }
}

/// Before 15: whether an exclusive backup is in progress, and stopping it.
pub const IS_IN_BACKUP: &str = "SELECT pg_is_in_backup()";
pub const STOP_EXCLUSIVE_BACKUP: &str = "SELECT pg_stop_backup()::text";

// Listing.

/// The data directory, recursively, in one statement: directories named in
/// `$1` (at any depth) and `$2` (exact relative paths) are listed but not
/// entered; entries that vanish during the walk are left out.
pub const LIST_DATA_DIRECTORY: &str = "WITH RECURSIVE tree(path, name, isdir, size, mtime) AS ( \
                 SELECT e.name, e.name, s.isdir, s.size, s.modification \
                   FROM pg_ls_dir('.', true, false) AS e(name), pg_stat_file(e.name, true) AS s \
               UNION ALL \
                 SELECT t.path || '/' || e.name, e.name, s.isdir, s.size, s.modification \
                   FROM tree t, pg_ls_dir(t.path, true, false) AS e(name), \
                        pg_stat_file(t.path || '/' || e.name, true) AS s \
                  WHERE t.isdir AND NOT t.name = ANY($1) AND NOT t.path = ANY($2) \
               ) \
               SELECT path, isdir, size, extract(epoch FROM mtime)::int8 \
                 FROM tree WHERE isdir IS NOT NULL";

/// One directory `$1`, not recursive.
pub const LIST_DIRECTORY: &str = "SELECT $1 || '/' || e.name, s.isdir, s.size, extract(epoch FROM s.modification)::int8 \
                 FROM pg_ls_dir($1, true, false) AS e(name), pg_stat_file($1 || '/' || e.name, true) AS s \
                WHERE s.isdir IS NOT NULL";

pub const TABLESPACES: &str = "SELECT oid::int8, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
                WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid";

// Reading files.

/// Ranges `$1` (paths), `$2` (offsets), `$3` (lengths), one row each, in
/// request order with its number; NULL for a file that is gone.
pub const PLAIN_READ: &str = "SELECT t.n, pg_read_binary_file(t.p, t.o, t.l, true) \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n)";

/// [`PLAIN_READ`], each range compressed on the server by
/// [`CREATE_ZLIB_FUNCTION`].
pub const COMPRESSED_READ: &str = "SELECT t.n, pg_temp.pgbb_read_zlib(t.p, t.o, t.l) \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n)";

/// Reads a range and deflates it on the server; NULL when the file is gone,
/// as pg_read_binary_file(..., missing_ok => true). Relative paths resolve
/// in the data directory, the backend's working directory. In `pg_temp`, so
/// nothing outlives the session.
pub const CREATE_ZLIB_FUNCTION: &str =
    "CREATE FUNCTION pg_temp.pgbb_read_zlib(p text, o bigint, l bigint) \
    RETURNS bytea LANGUAGE plpython3u AS $fn$
import zlib
try:
    f = open(p, 'rb')
except FileNotFoundError:
    return None
with f:
    f.seek(o)
    return zlib.compress(f.read(l), 1)
$fn$";

/// Whether the role is a superuser, and whether the database has
/// plpython3u: what [`CREATE_ZLIB_FUNCTION`] needs.
pub const ZLIB_OBSTACLE: &str = "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                      EXISTS (SELECT 1 FROM pg_language WHERE lanname = 'plpython3u')";

/// Whether the session comes over a unix socket or loopback.
pub const IS_LOCAL_LINK: &str =
    "SELECT coalesce(host(inet_client_addr()) IN ('127.0.0.1', '::1'), true)";

/// A file `len` bytes at `offset` whose path need not be valid UTF-8. Such
/// a path cannot be sent: the server validates every text it is sent, but
/// not the names pg_ls_dir returns, so each component (`$1`, as bytes) is
/// found server-side among those of its directory by its bytes (`textsend`).
pub const READ_BY_RAW_PATH: &str = "WITH RECURSIVE name(part) AS (SELECT $1::bytea[]), \
               walk(depth, path) AS ( \
                 SELECT 1, f FROM name, pg_ls_dir('.', true, false) AS f \
                  WHERE textsend(f) = part[1] \
               UNION ALL \
                 SELECT w.depth + 1, w.path || '/' || f \
                   FROM name, walk w, pg_ls_dir(w.path, true, false) AS f \
                  WHERE w.depth < cardinality(part) AND textsend(f) = part[w.depth + 1] \
               ) \
               SELECT pg_read_binary_file(path, $2::int8, $3::int8, true) FROM name, walk \
                WHERE depth = cardinality(part)";

// What connecting checks itself: libpq's target_session_attrs (src/conn).

/// "on" when the session is read-only.
pub const SHOW_TRANSACTION_READ_ONLY: &str = "SHOW transaction_read_only";

/// "t" when the server is a standby (in recovery).
pub const IS_IN_RECOVERY: &str = "SELECT pg_catalog.pg_is_in_recovery()";

// --delta (src/delta).

/// sha256 of each 8 kB block of each range, in one array per range; NULL
/// when the file is gone. The range is read once, then sliced. `sha256`
/// needs PostgreSQL 11 ([`MINIMUM_VERSION_FOR_SHA256`]).
pub const HASH_BLOCKS: &str = "SELECT t.n, CASE WHEN r.d IS NOT NULL THEN ARRAY( \
        SELECT sha256(substring(r.d FROM b * 8192 + 1 FOR 8192)) \
        FROM generate_series(0, (length(r.d) - 1) / 8192) AS b ORDER BY b) END \
    FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS t(p, o, l, n), \
    LATERAL (SELECT pg_read_binary_file(t.p, t.o, t.l, true) AS d) AS r";

/// Seconds since the epoch of a timestamp the server wrote, read by the
/// server (backup_label's START TIME carries its log_timezone abbreviation,
/// which only it knows for sure).
pub const EPOCH_OF_TIMESTAMP: &str = "SELECT extract(epoch FROM $1::text::timestamptz)::int8";

// Incremental backups (PostgreSQL 17+). The summary functions are
// src/backend/backup/walsummaryfuncs.c; EXECUTE on them is PUBLIC's.

/// What an incremental backup needs the server to be set to: the WAL
/// summarizer on, and the block and segment sizes pg_combinebackup is built
/// with (`segment_size` in blocks, as PostgreSQL reports it).
pub const INCREMENTAL_SETTINGS: &str = "SELECT current_setting('summarize_wal'), \
     current_setting('block_size')::int8, \
     (SELECT setting::int8 FROM pg_settings WHERE name = 'segment_size')";

/// A timeline's history file, `pg_wal/<TLI>.history` (NULL when missing).
pub const READ_TIMELINE_HISTORY: &str = "SELECT pg_read_binary_file($1, true)";

/// Where the WAL summarizer is (`pg_get_wal_summarizer_state()`): polled
/// until `summarized_lsn` reaches the backup's start, as
/// `WaitForWalSummarization()` (walsummarizer.c) does on the server.
pub const SUMMARIZER_STATE: &str = "SELECT summarized_tli::int8, summarized_lsn, \
     pending_lsn, summarizer_pid IS NOT NULL, current_setting('summarize_wal') \
     FROM pg_get_wal_summarizer_state()";

/// Summaries that may overlap `[$1, $2)` (the server's
/// `GetWalSummaries(0, start, end)` filter, walsummary.c).
pub const AVAILABLE_SUMMARIES: &str = "SELECT tli::int8, start_lsn, end_lsn \
     FROM pg_available_wal_summaries() \
     WHERE end_lsn > $1 AND start_lsn < $2";

/// The contents of one summary: `$1` tli, `$2` start, `$3` end.
pub const SUMMARY_CONTENTS: &str = "SELECT reltablespace::int8, reldatabase::int8, \
     relfilenode::int8, relforknumber::int2, relblocknumber::int8, is_limit_block \
     FROM pg_wal_summary_contents($1::int8, $2, $3)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_api_follows_the_version() {
        assert!(start_backup(150000).contains("pg_backup_start"));
        assert!(start_backup(140011).contains("pg_start_backup"));
        assert!(stop_backup(180004).contains("pg_backup_stop"));
        assert!(stop_backup(100000).contains("pg_stop_backup(false"));
        assert_eq!(
            backup_functions(150000)[0],
            "pg_catalog.pg_backup_start(text, boolean)"
        );
        assert!(server_layout(100023).contains("'0700'"));
        assert!(server_layout(110000).contains("data_directory_mode"));
    }

    #[test]
    fn delta_hashes_blocks_of_the_page_size() {
        let block = format!("FOR {}", crate::pg::BLCKSZ);
        assert!(HASH_BLOCKS.contains(&block));
    }
}
