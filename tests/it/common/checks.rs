//! What tests assert of a server after a backup (no sessions or slots of
//! ours left, amcheck finds nothing) and of a copy (pg_verifybackup
//! accepts it).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::binaries::verifybackup_bin;
use super::cluster::Cluster;
use super::commands::{client_cmd, run_ok};

impl Cluster {
    /// None of our sessions and no replication slot are left on the server
    /// (sessions end asynchronously on the server, so allow it a moment).
    pub fn assert_no_leftovers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.psql(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_basebackup%') || ' ' || \
                        (SELECT count(*) FROM pg_replication_slots)",
            );
            if left == "0 0" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessions and slots left on the server: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// amcheck finds no corruption: `pg_amcheck --heapallindexed` (heap
    /// and btree checks) on 14+, whose verify_heapam older servers lack;
    /// there, bt_index_check of every btree index.
    pub fn assert_amcheck(&self) {
        if self.version >= 14 {
            run_ok(
                client_cmd("pg_amcheck")
                    .arg("-h")
                    .arg(&self.socket_dir)
                    .args(["-p", &self.port.to_string(), "-U", "postgres"])
                    .args(["--install-missing", "--heapallindexed", "postgres"]),
                &format!("pg_amcheck on PostgreSQL {}", self.version),
            );
        } else {
            self.psql(
                "CREATE EXTENSION IF NOT EXISTS amcheck; \
                 SELECT count(bt_index_check(c.oid)) FROM pg_index i \
                   JOIN pg_class c ON c.oid = i.indexrelid \
                   JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree'",
            );
        }
    }
}

/// `pg_verifybackup DIR` of a major version (see [`verifybackup_bin`]).
pub fn verifybackup(major: u32, dir: &Path) -> Output {
    Command::new(verifybackup_bin(major))
        .arg(dir)
        .output()
        .unwrap()
}

/// pg_verifybackup of `major` accepts the copy in `dir`.
pub fn assert_verifies(major: u32, dir: &Path) {
    let v = verifybackup(major, dir);
    assert!(
        v.status.success(),
        "pg_verifybackup {major}: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}
