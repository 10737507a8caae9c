//! What the tool asks of the server, statement by statement: what it is
//! (probe), whether the role may do what the run needs, the slot, the
//! backup's start and stop, WAL positions and directory listings. The SQL
//! texts are in [`sql`].

use anyhow::{Context, Result};
use log::debug;
use postgres::Client;
use postgres::types::{FromSql, PgLsn, Type};

use crate::bail_with;
use crate::error::{Exit, ExitContext, Failure};
use crate::pg::Lsn;
use crate::pg::version::{
    MINIMUM_SUPPORTED_VERSION, MINIMUM_VERSION_FOR_BACKUP_START,
    MINIMUM_VERSION_FOR_FILE_ACCESS_GRANTS,
};
use crate::session::sql;

/// Run and log one statement that returns nothing we need.
fn execute(client: &mut Client, sql: &str) -> Result<()> {
    debug!("SQL: {sql}");
    client.batch_execute(sql).map_err(|e| failed(e, sql))
}

pub(super) fn query_one(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<postgres::Row> {
    debug!("SQL: {sql}");
    client.query_one(sql, params).map_err(|e| failed(e, sql))
}

/// A statement that failed. A session lost on the way (its backend ended,
/// the server restarted, the network broke) fails the backup, exit code 6,
/// in whatever phase: it is not a bug of ours.
pub(super) fn failed(e: postgres::Error, sql: &str) -> anyhow::Error {
    let lost =
        e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let err = anyhow::Error::new(e).context(format!("query failed: {sql}"));
    if lost {
        err.context(Failure::new(Exit::Backup, "lost the session to the server"))
    } else {
        err
    }
}

/// What we learn about the server once, on the first connection.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150004.
    pub version_num: u32,
    pub in_recovery: bool,
    /// WAL segment size in bytes (16 MB unless initdb --wal-segsize).
    pub wal_segment_size: u64,
    /// `catalog_version_no`, which names tablespace subdirectories.
    pub catalog_version: u32,
    pub system_identifier: u64,
    /// 0700 or 0750 (group access), the mode the copy's directories get.
    pub data_directory_mode: u32,
    /// Whether the cluster has data page checksums.
    pub data_checksums: bool,
    /// Page size (BLCKSZ) and relation segment size in pages.
    pub block_size: u32,
    pub blocks_per_segment: u32,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }

    /// `PG_15_202209061`: the directory a tablespace holds for this version.
    pub fn tablespace_version_dir(&self) -> String {
        format!("PG_{}_{}", self.major(), self.catalog_version)
    }
}

/// Refuse a server older than [`MINIMUM_SUPPORTED_VERSION`], naming its
/// version as it was numbered then (`90624` is 9.6).
fn check_supported(version_num: u32) -> Result<()> {
    if version_num < MINIMUM_SUPPORTED_VERSION {
        bail_with!(
            Exit::Server,
            "server version {}.{} is not supported: this tool needs PostgreSQL 10 or newer",
            version_num / 10000,
            version_num / 100 % 100
        );
    }
    Ok(())
}

/// Learn the server's version and layout; refuse servers older than 10.
pub fn probe(client: &mut Client) -> Result<ServerInfo> {
    let version_num = query_one(client, sql::SERVER_VERSION_NUM, &[])?.get::<_, i32>(0) as u32;
    check_supported(version_num)?;
    let row = query_one(client, &sql::server_layout(version_num), &[])?;
    let mode_text: String = row.get(4);
    let data_directory_mode =
        u32::from_str_radix(mode_text.trim_start_matches('0'), 8).unwrap_or(0o700);
    Ok(ServerInfo {
        version_num,
        in_recovery: row.get(0),
        wal_segment_size: row.get::<_, i64>(1) as u64,
        catalog_version: row.get::<_, i64>(2) as u32,
        system_identifier: row
            .get::<_, String>(3)
            .parse()
            .context("invalid system identifier")?,
        data_directory_mode: if data_directory_mode == 0o750 {
            0o750
        } else {
            0o700
        },
        data_checksums: row.get::<_, i64>(5) > 0,
        block_size: row.get::<_, i64>(6) as u32,
        blocks_per_segment: row.get::<_, i64>(7) as u32,
    })
}

/// Turn off every timeout that could end a long, mostly idle session, and
/// JIT: the listing query's row estimate is huge, and compiling it costs
/// more than running it.
pub fn disable_timeouts(client: &mut Client) -> Result<()> {
    execute(client, sql::DISABLE_TIMEOUTS)
}

/// Whether the current role may create a temporary physical slot, and why
/// not. Asked before creating one, because an ERROR in the control session
/// is exactly what we must avoid.
pub fn slot_obstacle(client: &mut Client) -> Result<Option<String>> {
    let row = query_one(client, sql::SLOT_OBSTACLE, &[])?;
    let may: Option<bool> = row.get(0);
    let wal_level: String = row.get(1);
    let max_slots: i32 = row.get(2);
    let used: i32 = row.get(3);
    Ok(if may != Some(true) {
        Some("the role has neither REPLICATION nor SUPERUSER".into())
    } else if wal_level == "minimal" {
        Some("wal_level is minimal".into())
    } else if used >= max_slots {
        Some(format!(
            "all {max_slots} replication slots are in use (max_replication_slots)"
        ))
    } else {
        None
    })
}

/// Create a temporary slot that keeps WAL from the last redo point on. It
/// lives as long as the session that created it.
pub fn create_temporary_slot(client: &mut Client, name: &str) -> Result<()> {
    query_one(client, sql::CREATE_TEMPORARY_SLOT, &[&name])?;
    Ok(())
}

/// Move a slot forward so the server may recycle WAL we already have (11+).
pub fn advance_slot(client: &mut Client, name: &str, lsn: Lsn) -> Result<()> {
    query_one(client, sql::ADVANCE_SLOT, &[&name, &PgLsn::from(lsn)])?;
    Ok(())
}

/// The backend PID of a session, used to name its slot.
pub fn backend_pid(client: &mut Client) -> Result<i32> {
    Ok(query_one(client, sql::BACKEND_PID, &[])?.get(0))
}

/// Start a non-exclusive backup in this session; returns the start LSN.
pub fn start_backup(
    client: &mut Client,
    info: &ServerInfo,
    label: &str,
    fast: bool,
) -> Result<Lsn> {
    let lsn: PgLsn = query_one(
        client,
        sql::start_backup(info.version_num),
        &[&label, &fast],
    )
    .exit_with(Exit::Backup, || "could not start the backup".into())?
    .get(0);
    Ok(lsn.into())
}

/// What the server hands back when a backup ends.
#[derive(Debug, Clone)]
pub struct BackupStop {
    pub lsn: Lsn,
    /// Contents of backup_label, byte for byte.
    pub label_file: String,
    /// Contents of tablespace_map (empty when there are no tablespaces).
    pub tablespace_map: String,
}

/// Stop the backup started in this session; with `wait_for_archive` the
/// server returns only once the WAL the copy needs is archived.
pub fn stop_backup(
    client: &mut Client,
    info: &ServerInfo,
    wait_for_archive: bool,
) -> Result<BackupStop> {
    let row = query_one(
        client,
        sql::stop_backup(info.version_num),
        &[&wait_for_archive],
    )
    .exit_with(Exit::Backup, || "could not stop the backup".into())?;
    Ok(BackupStop {
        lsn: row.get::<_, PgLsn>(0).into(),
        label_file: row.get(1),
        tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
    })
}

/// `--clean`: end an exclusive backup left by an earlier tool (10-14 only;
/// non-exclusive backups end with their session and 15+ has no other kind).
/// Returns whether there was one.
pub fn stop_leftover_exclusive_backup(client: &mut Client, info: &ServerInfo) -> Result<bool> {
    if info.version_num >= MINIMUM_VERSION_FOR_BACKUP_START {
        return Ok(false);
    }
    let in_backup: bool = query_one(client, sql::IS_IN_BACKUP, &[])?.get(0);
    if in_backup {
        query_one(client, sql::STOP_EXCLUSIVE_BACKUP, &[]).exit_with(Exit::Server, || {
            "could not stop the left-over exclusive backup".into()
        })?;
    }
    Ok(in_backup)
}

/// The server's archive_mode: off, on or always.
pub fn archive_mode(client: &mut Client) -> Result<String> {
    Ok(query_one(client, sql::ARCHIVE_MODE, &[])?.get(0))
}

/// Whether the server is a standby (still in recovery).
pub fn in_recovery(client: &mut Client) -> Result<bool> {
    Ok(query_one(client, sql::IN_RECOVERY, &[])?.get(0))
}

/// The timeline the server writes WAL on now (on a standby: replays).
pub fn current_timeline(client: &mut Client) -> Result<u32> {
    Ok(query_one(client, sql::CURRENT_TIMELINE, &[])?.get::<_, i64>(0) as u32)
}

/// The REDO location of the latest checkpoint: where a WAL follower that has
/// nothing yet must start.
pub fn last_redo_lsn(client: &mut Client) -> Result<Lsn> {
    Ok(query_one(client, sql::LAST_REDO_LSN, &[])?
        .get::<_, PgLsn>(0)
        .into())
}

/// How far WAL is safely on the server's disk: bytes before this position
/// never change again, so they can be copied once.
pub fn wal_flush_lsn(client: &mut Client, info: &ServerInfo) -> Result<Lsn> {
    let lsn: Option<PgLsn> = query_one(client, sql::wal_flush_lsn(info.in_recovery), &[])?.get(0);
    Ok(lsn.context("the server reports no WAL position")?.into())
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct ListedEntry {
    /// Path relative to the data directory, as the server spelled it.
    pub path: Vec<u8>,
    pub is_dir: bool,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// A text column taken as raw bytes: file names need not be valid UTF-8.
struct RawText(Vec<u8>);

impl<'a> FromSql<'a> for RawText {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawText(raw.to_vec()))
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TEXT | Type::VARCHAR | Type::NAME)
    }
}

fn listed_entry(row: &postgres::Row) -> ListedEntry {
    ListedEntry {
        path: row.get::<_, RawText>(0).0,
        is_dir: row.get(1),
        size: row.get::<_, i64>(2) as u64,
        mtime: row.get(3),
    }
}

/// List the data directory recursively in one statement. Directories named
/// in `skip_names` (at any depth) and `skip_paths` (exact relative paths) are
/// listed but not entered. Entries that vanish during the walk are left out.
pub fn list_data_directory(
    client: &mut Client,
    skip_names: &[&str],
    skip_paths: &[&str],
) -> Result<Vec<ListedEntry>> {
    let sql = sql::LIST_DATA_DIRECTORY;
    debug!("SQL: {sql}");
    let rows = client
        .query(sql, &[&skip_names, &skip_paths])
        .exit_with(Exit::Backup, || "could not list the data directory".into())?;
    Ok(rows.iter().map(listed_entry).collect())
}

/// List one directory (not recursive), e.g. pg_wal.
pub fn list_directory(client: &mut Client, dir: &str) -> Result<Vec<ListedEntry>> {
    let sql = sql::LIST_DIRECTORY;
    debug!("SQL: {sql} [{dir}]");
    let rows = client
        .query(sql, &[&dir])
        .with_context(|| format!("could not list {dir}"))?;
    Ok(rows.iter().map(listed_entry).collect())
}

/// Read `len` bytes at `offset` of a file whose path need not be valid
/// UTF-8, or None when it is gone ([`sql::READ_BY_RAW_PATH`]).
pub fn read_by_raw_path(
    client: &mut Client,
    path: &[u8],
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>> {
    let sql = sql::READ_BY_RAW_PATH;
    let components: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    debug!(
        "SQL: {sql} [{:?} @{offset}+{len}]",
        String::from_utf8_lossy(path)
    );
    let rows = client
        .query(sql, &[&components, &(offset as i64), &(len as i64)])
        .with_context(|| format!("could not read {:?}", String::from_utf8_lossy(path)))?;
    Ok(rows.first().and_then(|r| r.get::<_, Option<Vec<u8>>>(0)))
}

/// A user tablespace: `pg_tblspc/<oid>` and where it lives on the server.
#[derive(Debug, Clone)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    /// Absolute path of the link target; empty or relative for in-place ones.
    pub location: String,
}

pub fn tablespaces(client: &mut Client) -> Result<Vec<Tablespace>> {
    let sql = sql::TABLESPACES;
    let rows = {
        debug!("SQL: {sql}");
        client
            .query(sql, &[])
            .context("could not list tablespaces")?
    };
    Ok(rows
        .iter()
        .map(|r| Tablespace {
            oid: r.get::<_, i64>(0) as u32,
            name: r.get(1),
            location: r.get(2),
        })
        .collect())
}

/// The functions a backup calls that a non-superuser needs EXECUTE on.
fn required_functions(info: &ServerInfo, with_backup: bool) -> Vec<&'static str> {
    let mut functions = sql::FILE_ACCESS_FUNCTIONS.to_vec();
    if with_backup {
        functions.extend(sql::backup_functions(info.version_num));
    }
    functions
}

/// Find every privilege the current role lacks for this run, before
/// anything is done on the server; the error names the GRANTs that fix it.
pub fn check_privileges(client: &mut Client, info: &ServerInfo, with_backup: bool) -> Result<()> {
    let row = query_one(client, sql::CURRENT_ROLE, &[])?;
    let (role, superuser): (String, bool) = (row.get(0), row.get(1));
    if superuser {
        return Ok(());
    }
    if info.version_num < MINIMUM_VERSION_FOR_FILE_ACCESS_GRANTS {
        bail_with!(
            Exit::Server,
            "role \"{role}\" is not a superuser: PostgreSQL 10 lets only superusers call pg_ls_dir, \
             pg_stat_file and pg_read_binary_file (grants do not help); connect as a superuser"
        );
    }
    let functions = required_functions(info, with_backup);
    let sql = sql::MISSING_FUNCTION_PRIVILEGES;
    debug!("SQL: {sql}");
    let missing: Vec<String> = client
        .query(sql, &[&functions])
        .context("could not check privileges")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !missing.is_empty() {
        let quoted = quote_ident(&role);
        let grants: Vec<String> = missing
            .iter()
            .map(|f| format!("GRANT EXECUTE ON FUNCTION {f} TO {quoted};"))
            .collect();
        bail_with!(
            Exit::Server,
            "role \"{role}\" lacks privileges for a backup; as a superuser run: {}",
            grants.join(" ")
        );
    }
    Ok(())
}

/// Quote an identifier as PostgreSQL's quote_ident does.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_lowercase() || b == b'_' || (i > 0 && b.is_ascii_digit()));
    if plain && !name.is_empty() {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Refuse a run that needs more sessions than the server will give us,
/// before opening them: a half-opened pool would fail mid-start.
pub fn check_free_connections(client: &mut Client, needed: u32) -> Result<()> {
    let row = query_one(client, sql::FREE_CONNECTIONS, &[])?;
    let (max, reserved, used, superuser, role_limit, role_used): (i32, i32, i32, bool, i32, i32) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    let free = if superuser {
        max - used
    } else {
        max - reserved - used
    };
    if (free as i64) < needed as i64 {
        bail_with!(
            Exit::Server,
            "this run needs {needed} more connections but the server has {} free (max_connections = {max}, \
             {used} in use{}); lower -j",
            free.max(0),
            if superuser {
                String::new()
            } else {
                format!(", {reserved} reserved for superusers")
            }
        );
    }
    if role_limit >= 0 && ((role_limit - role_used) as i64) < needed as i64 {
        bail_with!(
            Exit::Server,
            "this run needs {needed} more connections but the role may open only {} more (CONNECTION LIMIT {role_limit}); lower -j",
            (role_limit - role_used).max(0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No 9.x server binaries exist here, so the refusal is tested on the
    /// decision alone.
    #[test]
    fn servers_older_than_10_are_refused() {
        for (num, shown) in [(90624, "9.6"), (90500, "9.5"), (80423, "8.4")] {
            let err = check_supported(num).unwrap_err();
            assert_eq!(crate::error::exit_of(&err), Exit::Server, "{num}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("server version {shown} is not supported"))
                    && msg.contains("PostgreSQL 10 or newer"),
                "{num}: {msg}"
            );
        }
        for num in [100000, 100023, 140011, 150020, 180004] {
            assert!(check_supported(num).is_ok(), "{num}");
        }
    }

    #[test]
    fn identifiers_are_quoted_like_the_server() {
        assert_eq!(quote_ident("backup_role"), "backup_role");
        assert_eq!(quote_ident("Backup"), "\"Backup\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("1x"), "\"1x\"");
    }
}
