//! Every supported major version, 10 to 18: a -j 4 -x backup taken under
//! pgbench writes restores with pgbench's invariant, and where a manifest is
//! written (13+) PostgreSQL's pg_verifybackup checks it as far as the one on
//! this machine can. Binaries: Debian's 15, the rest from
//! scripts/fetch-postgres (scripts/test runs it).

use std::process::Command;

use crate::common::{self, Cluster, scratch_dir, tool, verifybackup_bin};

/// pg_verifybackup here is Debian's 15 (manifest version 1) and 17's and
/// 18's client tools (version 2, from scripts/fetch-postgres); each parses
/// the WAL of its own major only, so 13, 14 and 16 are checked without WAL
/// parsing.
fn verify_manifest(major: u32, dest: &std::path::Path) {
    if major < 13 {
        assert!(
            !dest.join("backup_manifest").exists(),
            "no manifest before 13"
        );
        return;
    }
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    let expected_version = if major >= 17 { 2 } else { 1 };
    assert!(manifest.starts_with(&format!(
        "{{ \"PostgreSQL-Backup-Manifest-Version\": {expected_version},"
    )));
    let verifier = match major {
        13..=16 => 15,
        _ => major,
    };
    let mut cmd = Command::new(verifybackup_bin(verifier));
    if major != verifier {
        eprintln!(
            "note: pg_verifybackup {verifier} cannot parse PostgreSQL {major} WAL: checking files only (--no-parse-wal)"
        );
        cmd.arg("--no-parse-wal");
    }
    let out = cmd.arg(dest).output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup {verifier}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn backup_restores_under_writes(major: u32) {
    let src = Cluster::start(major);
    src.pgbench_init(2);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let load = src.pgbench_load(3);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = tool()
        .args([
            "-j",
            "4",
            "-x",
            "-c",
            "fast",
            &src.dsn(),
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    load.stop();
    assert!(
        out.status.success(),
        "PostgreSQL {major}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_manifest(major, &dest);
    let copy = Cluster::start_on_copy(&dest, major);
    copy.assert_pgbench_consistent();
}

macro_rules! version_tests {
    ($($name:ident: $major:expr,)*) => {$(
        #[test]
        fn $name() {
            backup_restores_under_writes($major);
        }
    )*};
}

version_tests! {
    postgres_10: 10,
    postgres_11: 11,
    postgres_12: 12,
    postgres_13: 13,
    postgres_14: 14,
    postgres_15: 15,
    postgres_16: 16,
    postgres_17: 17,
    postgres_18: 18,
}

/// The grants README gives for 11-14 (the pg_start_backup API) are enough.
#[test]
fn least_privilege_role_on_14() {
    let src = Cluster::start(14);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 10) AS i; CREATE ROLE backup_role LOGIN REPLICATION");
    common::grant_backup_privileges(&src, "backup_role");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let dsn = src.dsn().replace("user=postgres", "user=backup_role");
    let out = tool()
        .args(["-j", "2", "-x", "-c", "fast", &dsn, dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = Cluster::start_on_copy(&dest, 14);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "10");
}
