//! The shared test harness: real PostgreSQL servers, never a mock.
//!
//! Every [`Cluster`] is its own initdb in its own temporary directory
//! (`data/`, `sock/` for the unix socket, `server.log`), listening on
//! 127.0.0.1 at a port nobody else in this process holds; it is stopped
//! (`-m immediate`) and removed on drop. Tests run in parallel threads of
//! one process, so nothing here is shared between clusters.
//!
//! Binaries: Debian's PostgreSQL 15 (`/usr/lib/postgresql/15/bin`, or
//! `PG15_BINDIR`), the other majors from `scripts/fetch-postgres`
//! (`${PG_CACHE:-.pg-cache}/<major>/bin`, or `PG<major>_BINDIR`). The client
//! programs (psql, pgbench, pg_verifybackup, ...) are Debian's 15
//! ([`client_bin`]); they talk to every server from 10 to 18. PostgreSQL
//! 17's and 18's own client tools (pg_combinebackup, pg_verifybackup 17/18,
//! their pg_basebackup) come from PyPI wheels ([`tools_cmd`]).
//!
//! As root (CI), initdb, pg_ctl and the servers run as the OS user `postgres`
//! through `runuser`, and the directories they write are chowned to it.
//!
//! Environment: `PG_TEST_VERSIONS="10 13 18"` restricts [`available_majors`];
//! `KEEP_TEST_DIRS=1` keeps every cluster and scratch directory (printed).
//!
//! Where things are: [`binaries`] finds the PostgreSQL programs,
//! [`commands`] runs them (as the server's user, with a clean environment),
//! [`files`] makes directories the server user can reach, [`initdb`] makes a
//! new cluster, [`cluster`] starts, stops, addresses and queries one,
//! [`pgbench`] loads it, [`checks`] holds what tests assert of a server or
//! a copy, and [`tool`] runs the pg_basebackup under test.

mod binaries;
mod checks;
mod cluster;
mod commands;
mod files;
mod initdb;
mod pgbench;
mod tool;

pub use binaries::{available_majors, try_bin_dir, verifybackup_bin, wanted_majors};
pub use checks::{assert_verifies, verifybackup};
pub use cluster::Cluster;
pub use commands::{chown_postgres, client_cmd, is_root, run_ok, tools_cmd};
pub use files::{scratch_dir, set_mode};
pub use initdb::{ClusterOptions, grant_backup_privileges};
pub use pgbench::PgbenchLoad;
pub use tool::{assert_ok, run, send_signal, tool};
