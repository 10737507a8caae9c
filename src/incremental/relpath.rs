//! Data-directory paths of relation files, both ways.
//!
//! * From a path to (tablespace, database, relfilenumber, fork, segment): what `sendDir()`
//!   (src/backend/backup/basebackup.c) does before calling `GetFileBackupMethod()`. Only
//!   files directly in `global/`, in `base/<digits>/` or in
//!   `pg_tblspc/<spcoid>/<TABLESPACE_VERSION_DIRECTORY>/<digits>/` are relation files, and
//!   only when `parse_filename_for_nontemp_relation()` (src/backend/storage/file/reinit.c,
//!   PostgreSQL 17+) accepts the name: a relfilenumber without leading zero, an optional
//!   `_fsm`/`_vm`/`_init`, an optional `.<segno>` without leading zero, nothing else.
//!   `global/` has database 0 and tablespace 1664, `base/` tablespace 1663.
//! * From a WAL-summary row to the file: `GetRelationPath()` (src/common/relpath.c) plus
//!   the segment suffix; block `b` is in segment `b / RELSEG_SIZE`.
//!
//! The manifest lists tablespace files as `pg_tblspc/<spcoid>/PG_<major>_<catversion>/...`
//! (`AddFileToBackupManifest` prefixes `pg_tblspc/<spcoid>/`), and that is also the path the
//! server looks up in the prior manifest (`lookup_path` in `sendDir`).

use super::{DEFAULTTABLESPACE_OID, Fork, GLOBALTABLESPACE_OID};
#[cfg(test)]
use super::{Geometry, INCREMENTAL_PREFIX};

/// One relation segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFile {
    pub spc: u32,
    /// 0 for `global/`.
    pub db: u32,
    pub rel: u32,
    pub fork: Fork,
    pub segno: u32,
}

/// `TABLESPACE_VERSION_DIRECTORY`: `PG_<major>_<catalog version>`, e.g. `PG_18_202506291`
/// (`pg_control_system().catalog_version_no`).
#[cfg(test)]
pub fn tablespace_version_dir(major: u32, catalog_version: u32) -> String {
    format!("PG_{major}_{catalog_version}")
}

/// `parse_filename_for_nontemp_relation()` of PostgreSQL 17+: (relfilenumber, fork, segno).
pub fn parse_relation_file_name(name: &str) -> Option<(u32, Fork, u32)> {
    fn number(s: &str) -> Option<(u32, &str)> {
        // A digit 1-9 first (no leading zeroes), then digits; strtoul range check.
        if !s.starts_with(|c: char| ('1'..='9').contains(&c)) {
            return None;
        }
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n: u64 = s[..end].parse().ok()?;
        let n = u32::try_from(n).ok()?;
        Some((n, &s[end..]))
    }
    let (rel, rest) = number(name)?;
    let (fork, rest) = if let Some(after) = rest.strip_prefix('_') {
        // forkname_chars(): "fsm", "vm", "init" (never "main").
        if let Some(r) = after.strip_prefix("fsm") {
            (Fork::Fsm, r)
        } else if let Some(r) = after.strip_prefix("vm") {
            (Fork::Vm, r)
        } else if let Some(r) = after.strip_prefix("init") {
            (Fork::Init, r)
        } else {
            return None;
        }
    } else {
        (Fork::Main, rest)
    };
    let (segno, rest) = match rest.strip_prefix('.') {
        Some(after) => number(after)?,
        None => (0, rest),
    };
    rest.is_empty().then_some((rel, fork, segno))
}

/// Classifies a path relative to the data directory (`base/5/16384.1`, `global/1262`,
/// `pg_tblspc/16400/PG_18_202506291/5/16401_vm`). `None`: not a relation file, so never
/// sent incrementally (pg_control, pg_filenode.map, PG_VERSION, temporary relations
/// `t3_16384`, anything outside those directories...).
pub fn classify(path: &str, version_dir: &str) -> Option<RelFile> {
    let parts: Vec<&str> = path.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (spc, db, name) = match parts.as_slice() {
        ["global", name] => (GLOBALTABLESPACE_OID, 0, *name),
        ["base", db, name] if digits(db) => (DEFAULTTABLESPACE_OID, db.parse().ok()?, *name),
        ["pg_tblspc", spc, v, db, name] if *v == version_dir && digits(db) => {
            (spc.parse().ok()?, db.parse().ok()?, *name)
        }
        _ => return None,
    };
    let (rel, fork, segno) = parse_relation_file_name(name)?;
    Some(RelFile {
        spc,
        db,
        rel,
        fork,
        segno,
    })
}

impl RelFile {
    /// The segment file that holds absolute block `block` of a fork.
    #[cfg(test)]
    pub fn of_block(spc: u32, db: u32, rel: u32, fork: Fork, block: u32, g: Geometry) -> RelFile {
        RelFile {
            spc,
            db,
            rel,
            fork,
            segno: g.locate(block).0,
        }
    }

    /// The directory, relative to the data directory (`GetRelationPath` without the name).
    #[cfg(test)]
    pub fn dir(&self, version_dir: &str) -> String {
        match self.spc {
            GLOBALTABLESPACE_OID => "global".to_string(),
            DEFAULTTABLESPACE_OID => format!("base/{}", self.db),
            spc => format!("pg_tblspc/{spc}/{version_dir}/{}", self.db),
        }
    }

    /// The file name: `16384`, `16384_vm`, `16384.2`, `16384_fsm.1`.
    #[cfg(test)]
    pub fn file_name(&self) -> String {
        if self.segno > 0 {
            format!("{}{}.{}", self.rel, self.fork.suffix(), self.segno)
        } else {
            format!("{}{}", self.rel, self.fork.suffix())
        }
    }

    /// The path relative to the data directory, as listed in a manifest.
    #[cfg(test)]
    pub fn path(&self, version_dir: &str) -> String {
        format!("{}/{}", self.dir(version_dir), self.file_name())
    }

    /// The path of the file sent incrementally (`GetIncrementalFilePath`):
    /// `base/5/INCREMENTAL.16384.2`.
    #[cfg(test)]
    pub fn incremental_path(&self, version_dir: &str) -> String {
        format!(
            "{}/{INCREMENTAL_PREFIX}{}",
            self.dir(version_dir),
            self.file_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "PG_18_202506291";

    #[test]
    fn names_as_parse_filename_for_nontemp_relation() {
        assert_eq!(
            parse_relation_file_name("16384"),
            Some((16384, Fork::Main, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_fsm"),
            Some((16384, Fork::Fsm, 0))
        );
        assert_eq!(
            parse_relation_file_name("16384_vm.3"),
            Some((16384, Fork::Vm, 3))
        );
        assert_eq!(
            parse_relation_file_name("16384_init"),
            Some((16384, Fork::Init, 0))
        );
        assert_eq!(
            parse_relation_file_name("4294967295.1"),
            Some((u32::MAX, Fork::Main, 1))
        );
        for bad in [
            "016384",
            "16384.0",
            "16384.01",
            "4294967296",
            "16384_main",
            "16384_vmx",
            "16384.",
            "t3_16384",
            "pg_internal.init",
            "PG_VERSION",
            "16384_",
            "",
            "16384 ",
        ] {
            assert_eq!(parse_relation_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn classify_paths_as_send_dir() {
        assert_eq!(
            classify("base/5/16437.2", V),
            Some(RelFile {
                spc: 1663,
                db: 5,
                rel: 16437,
                fork: Fork::Main,
                segno: 2
            })
        );
        assert_eq!(
            classify("global/1262", V),
            Some(RelFile {
                spc: 1664,
                db: 0,
                rel: 1262,
                fork: Fork::Main,
                segno: 0
            })
        );
        assert_eq!(
            classify("pg_tblspc/16400/PG_18_202506291/16401/16402_vm", V),
            Some(RelFile {
                spc: 16400,
                db: 16401,
                rel: 16402,
                fork: Fork::Vm,
                segno: 0
            })
        );
        for not in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/t3_16384",
            "base/pgsql_tmp/16384",
            "pg_tblspc/16400/PG_17_202406281/16401/16402",
            "pg_xact/0000",
            "16384",
            "base/5/sub/16384",
        ] {
            assert_eq!(classify(not, V), None, "{not}");
        }
    }

    #[test]
    fn paths_from_summary_rows() {
        let g = Geometry::default();
        let f = RelFile::of_block(1663, 5, 16437, Fork::Main, 131072 * 2 + 7, g);
        assert_eq!(f.segno, 2);
        assert_eq!(f.path(V), "base/5/16437.2");
        assert_eq!(f.incremental_path(V), "base/5/INCREMENTAL.16437.2");
        let f = RelFile::of_block(1664, 0, 1261, Fork::Main, 0, g);
        assert_eq!(f.incremental_path(V), "global/INCREMENTAL.1261");
        let f = RelFile::of_block(16400, 16401, 16402, Fork::Vm, 3, g);
        assert_eq!(f.path(V), "pg_tblspc/16400/PG_18_202506291/16401/16402_vm");
        assert_eq!(
            f.incremental_path(V),
            "pg_tblspc/16400/PG_18_202506291/16401/INCREMENTAL.16402_vm"
        );
        assert_eq!(tablespace_version_dir(17, 202406281), "PG_17_202406281");
        // Round trip.
        for p in [
            "base/5/16437.2",
            "global/1261",
            "pg_tblspc/16400/PG_18_202506291/16401/16402_fsm.1",
        ] {
            assert_eq!(classify(p, V).unwrap().path(V), p);
        }
    }
}
