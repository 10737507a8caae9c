//! Incremental backups in PostgreSQL's own on-disk format (PostgreSQL 17+), taken over a
//! plain SQL login, so that PostgreSQL's `pg_combinebackup` restores them and
//! `pg_verifybackup` checks them. Design, facts and citations: `INCREMENTAL-DESIGN.md`.
//!
//! Everything here is pure (no database access), so that each rule can be unit-tested
//! against what the server's C code does:
//!
//! * [`prior`]: the prior backup's `backup_manifest` (system identifier, WAL ranges, file
//!   list with sizes) and the sanity checks of `PrepareForIncrementalBackup`
//!   (src/backend/backup/basebackup_incremental.c) that decide which WAL summaries are
//!   needed and what goes into `INCREMENTAL FROM LSN/TLI`.
//! * [`summary`]: the SQL that reads WAL summaries, the coverage check
//!   (`WalSummariesAreComplete`, src/backend/backup/walsummary.c) and the in-memory block
//!   reference table that the rows of `pg_wal_summary_contents()` are merged into
//!   (src/common/blkreftable.c semantics: a limit block forgets the blocks at or past it).
//! * [`relpath`]: data-directory paths <-> (tablespace, database, relfilenumber, fork,
//!   segment) as `sendDir()` (src/backend/backup/basebackup.c) and
//!   `parse_filename_for_nontemp_relation()` (src/backend/storage/file/reinit.c) do.
//! * [`decide`]: whole file or `INCREMENTAL.` file, exactly as `GetFileBackupMethod()`.
//! * [`file`]: the bytes of an `INCREMENTAL.` file, exactly as `sendFile()` writes them and
//!   `make_incremental_rfile()` (src/bin/pg_combinebackup/reconstruct.c) reads them.
//! * [`label`]: the two `backup_label` lines (`build_backup_content()`,
//!   src/backend/access/transam/xlogbackup.c) and what `pg_combinebackup` checks in them
//!   (src/bin/pg_combinebackup/backup_label.c, pg_combinebackup.c).

pub mod decide;
pub mod file;
pub mod label;
pub mod prior;
pub mod relpath;
pub mod summary;

/// `INCREMENTAL_MAGIC` (src/include/backup/basebackup_incremental.h): the first four bytes
/// of every `INCREMENTAL.` file, in the server's byte order (little-endian on every
/// platform this tool runs on).
pub const INCREMENTAL_MAGIC: u32 = 0xd3ae_1f0d;

/// Prefix of the file name an incrementally sent relation segment gets in the backup.
pub const INCREMENTAL_PREFIX: &str = "INCREMENTAL.";

/// `GLOBALTABLESPACE_OID` (pg_tablespace.dat): the tablespace of `global/`.
pub const GLOBALTABLESPACE_OID: u32 = 1664;
/// `DEFAULTTABLESPACE_OID`: the tablespace of `base/`.
pub const DEFAULTTABLESPACE_OID: u32 = 1663;

/// `InvalidBlockNumber`: a limit block of this value means "no limit" (never truncated).
pub const INVALID_BLOCK_NUMBER: u32 = u32::MAX;

/// Block size and segment size of the server, which `pg_combinebackup` must have been built
/// with too (it uses the compile-time `BLCKSZ` and `RELSEG_SIZE`). Read them from the server
/// (`current_setting('block_size')`, `current_setting('segment_size')`, the latter in
/// blocks) instead of assuming the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// `BLCKSZ`, bytes per block.
    pub blcksz: u32,
    /// `RELSEG_SIZE`, blocks per segment file.
    pub relseg_size: u32,
}

impl Default for Geometry {
    /// PostgreSQL's defaults: 8 kB blocks, 1 GB segments (131072 blocks).
    fn default() -> Self {
        Geometry {
            blcksz: 8192,
            relseg_size: 131072,
        }
    }
}

impl Geometry {
    /// Bytes in one full segment file.
    #[cfg(test)]
    pub fn segment_bytes(&self) -> u64 {
        u64::from(self.blcksz) * u64::from(self.relseg_size)
    }

    /// Segment number and block number within that segment of absolute block `block`:
    /// block b lives in segment `b / RELSEG_SIZE` at relative block `b % RELSEG_SIZE`.
    #[cfg(test)]
    pub fn locate(&self, block: u32) -> (u32, u32) {
        (block / self.relseg_size, block % self.relseg_size)
    }
}

/// Relation fork numbers (`ForkNumber`, src/include/common/relpath.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fork {
    Main = 0,
    Fsm = 1,
    Vm = 2,
    Init = 3,
}

impl Fork {
    /// From `relforknumber` of `pg_wal_summary_contents()`.
    pub fn from_number(n: i64) -> Option<Fork> {
        match n {
            0 => Some(Fork::Main),
            1 => Some(Fork::Fsm),
            2 => Some(Fork::Vm),
            3 => Some(Fork::Init),
            _ => None,
        }
    }

    /// The file-name suffix (`forkNames[]`, src/common/relpath.c): `""`, `"_fsm"`, `"_vm"`,
    /// `"_init"`.
    #[cfg(test)]
    pub fn suffix(self) -> &'static str {
        match self {
            Fork::Main => "",
            Fork::Fsm => "_fsm",
            Fork::Vm => "_vm",
            Fork::Init => "_init",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_to_segment() {
        let g = Geometry::default();
        assert_eq!(g.locate(0), (0, 0));
        assert_eq!(g.locate(131071), (0, 131071));
        assert_eq!(g.locate(131072), (1, 0));
        assert_eq!(g.locate(3 * 131072 + 5), (3, 5));
        assert_eq!(g.segment_bytes(), 1 << 30);
    }
}

#[cfg(test)]
mod experiment;
