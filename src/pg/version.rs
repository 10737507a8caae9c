//! The server versions at which something the tool relies on appeared or
//! changed, as `server_version_num` counts them (150004 is 15.4), named the
//! way PostgreSQL's own client tools name theirs (pg_basebackup.c,
//! streamutil.c, recovery_gen.h), so a version test reads as its reason.

/// The oldest server this tool supports: the first whose non-exclusive
/// backups can be stopped without waiting for the archiver
/// (`pg_stop_backup(false, wait_for_archive)`) and that has temporary slots.
pub const MINIMUM_SUPPORTED_VERSION: u32 = 100000;

/// `data_directory_mode` (group access to the data directory) exists.
pub const MINIMUM_VERSION_FOR_GROUP_ACCESS: u32 = 110000;

/// pg_ls_dir, pg_stat_file and pg_read_binary_file may be GRANTed to a
/// role that is not a superuser (before, only a superuser may call them).
pub const MINIMUM_VERSION_FOR_FILE_ACCESS_GRANTS: u32 = 110000;

/// `sha256()` exists: --delta compares blocks by their hashes.
pub const MINIMUM_VERSION_FOR_SHA256: u32 = 110000;

/// `pg_replication_slot_advance()` exists.
pub const MINIMUM_VERSION_FOR_SLOT_ADVANCE: u32 = 110000;

/// Recovery settings are ordinary settings (postgresql.auto.conf plus
/// standby.signal) instead of recovery.conf.
pub const MINIMUM_VERSION_FOR_RECOVERY_GUC: u32 = 120000;

/// The server writes backup manifests.
pub const MINIMUM_VERSION_FOR_MANIFESTS: u32 = 130000;

/// tablespace_map escapes a backslash in a path (a newline is escaped by
/// every version).
pub const MINIMUM_VERSION_FOR_TABLESPACE_MAP_BACKSLASH: u32 = 140000;

/// Manifests are version 2, with the `System-Identifier` line that
/// pg_verifybackup 17+ checks against the backup's pg_control (13 to 16
/// accept only version 1).
pub const MINIMUM_VERSION_FOR_MANIFEST_SYSTEM_IDENTIFIER: u32 = 170000;

/// The backup functions are `pg_backup_start` and `pg_backup_stop`, and
/// exclusive backups are gone.
pub const MINIMUM_VERSION_FOR_BACKUP_START: u32 = 150000;

/// Incremental backups: WAL summaries (`summarize_wal`,
/// `pg_wal_summary_contents()`), `INCREMENTAL.` files and pg_combinebackup.
pub const MINIMUM_VERSION_FOR_INCREMENTAL: u32 = 170000;
