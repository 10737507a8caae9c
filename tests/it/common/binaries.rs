//! Where the PostgreSQL programs are: each major's server binaries (Debian's
//! 15, the others fetched by scripts/fetch-postgres), the client programs,
//! pg_verifybackup, and which majors a run covers.

use std::path::{Path, PathBuf};

/// The directory fetched majors live in: `$PG_CACHE` or `<repo>/.pg-cache`.
fn pg_cache() -> PathBuf {
    std::env::var_os("PG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".pg-cache"))
}

/// Server binaries (initdb, pg_ctl, postgres) of a major version, if present:
/// `PG<major>_BINDIR` when set; else Debian's for 15 and the fetched package
/// for the others.
pub fn try_bin_dir(major: u32) -> Option<PathBuf> {
    let dir = match std::env::var_os(format!("PG{major}_BINDIR")) {
        Some(dir) => PathBuf::from(dir),
        None if major == 15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
        None => pg_cache().join(major.to_string()).join("bin"),
    };
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

/// [`try_bin_dir`], panicking with what to do when the binaries are missing.
pub(super) fn bin_dir(major: u32) -> PathBuf {
    try_bin_dir(major).unwrap_or_else(|| {
        if major == 15 {
            panic!(
                "PostgreSQL 15 binaries missing: apt-get install postgresql-15 (or set PG15_BINDIR)"
            )
        }
        panic!(
            "PostgreSQL {major} binaries missing in {}: run scripts/fetch-postgres {major}",
            pg_cache().display()
        )
    })
}

/// A client program (psql, pgbench, pg_verifybackup, pg_waldump, ...):
/// Debian's PostgreSQL 15, or `PG_CLIENT_BINDIR`.
pub fn client_bin(name: &str) -> PathBuf {
    std::env::var_os("PG_CLIENT_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
        .join(name)
}

/// pg_verifybackup of a major version: Debian's 15, or 17's and 18's client
/// tools that scripts/fetch-postgres brings (the npm server packages lack them).
pub fn verifybackup_bin(major: u32) -> PathBuf {
    match major {
        15 => client_bin("pg_verifybackup"),
        17 | 18 => tools_bin(major, "pg_verifybackup"),
        _ => panic!("no pg_verifybackup {major} on this machine (only 15, 17 and 18)"),
    }
}

/// A client program of PostgreSQL 17's or 18's client tools, which
/// scripts/fetch-postgres brings from PyPI wheels into `tools<major>`
/// (pg_combinebackup, pg_verifybackup, pg_amcheck, pg_basebackup, ...):
/// pg_combinebackup reads only backups of its own major.
pub fn tools_bin(major: u32, name: &str) -> PathBuf {
    assert!(
        matches!(major, 17 | 18),
        "client tools of PostgreSQL 17 and 18 only, not {major}"
    );
    let bin = pg_cache().join(format!("tools{major}/bin")).join(name);
    assert!(
        bin.is_file(),
        "{} missing: run scripts/fetch-postgres",
        bin.display()
    );
    bin
}

/// The majors the tests cover, 10 to 18, or those `PG_TEST_VERSIONS` names.
pub fn wanted_majors() -> Vec<u32> {
    match std::env::var("PG_TEST_VERSIONS") {
        Ok(v) if !v.trim().is_empty() => v
            .split([' ', ','])
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|_| panic!("PG_TEST_VERSIONS: {x:?} is not a major version"))
            })
            .collect(),
        _ => (10..=18).collect(),
    }
}

/// The [`wanted_majors`] whose server binaries are present.
pub fn available_majors() -> Vec<u32> {
    wanted_majors()
        .into_iter()
        .filter(|m| try_bin_dir(*m).is_some())
        .collect()
}
