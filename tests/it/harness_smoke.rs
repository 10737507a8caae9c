//! The test harness itself (tests/it/common), without the tool: servers of
//! every major start and answer, pgbench loads and stays consistent, a copy
//! of a data directory starts with start_on_copy, password and checksum
//! options do what they say.

use std::time::{Duration, Instant};

use crate::common::{self, Cluster, ClusterOptions, available_majors, scratch_dir, wanted_majors};

#[test]
fn v15_psql_client_and_pgbench() {
    let t = Instant::now();
    let c = Cluster::start(15);
    eprintln!("PostgreSQL 15 started in {:?}", t.elapsed());
    assert_eq!(c.psql("SELECT 1 + 1"), "2");
    assert!(c.psql("SHOW server_version_num").starts_with("15"));
    assert_eq!(c.psql("SHOW data_checksums"), "off");
    assert_eq!(c.psql("SHOW wal_level"), "replica");
    // Statements run one by one: CREATE DATABASE may follow another.
    assert_eq!(
        c.psql("CREATE TABLE t(i int); CREATE DATABASE \"other ü\"; SELECT datname FROM pg_database WHERE datname LIKE 'other%'"),
        "other ü"
    );
    let err = c
        .try_psql("SELECT 1; SELECT * FROM nope; SELECT 2")
        .unwrap_err();
    assert!(err.contains("relation \"nope\" does not exist"), "{err}");

    let mut client = c.client();
    let n: i64 = client
        .query_one("SELECT count(*) FROM pg_database", &[])
        .unwrap()
        .get(0);
    assert!(n >= 4);

    c.pgbench_init(1);
    c.assert_pgbench_consistent();
    let load = c.pgbench_load(2);
    std::thread::sleep(Duration::from_secs(2));
    load.stop();
    let history: i64 = c
        .psql("SELECT count(*) FROM pgbench_history")
        .parse()
        .unwrap();
    assert!(history > 0, "pgbench wrote nothing");
    c.assert_pgbench_consistent();
    eprintln!("pgbench: {history} transactions in about 2 s");
}

#[test]
fn every_other_major_starts() {
    let available = available_majors();
    for m in wanted_majors() {
        if m != 15 && !available.contains(&m) {
            eprintln!("note: PostgreSQL {m} not fetched, skipped (scripts/fetch-postgres {m})");
        }
    }
    let majors: Vec<u32> = available.into_iter().filter(|m| *m != 15).collect();
    // Two at a time: clusters of one process must not get in each other's way.
    for pair in majors.chunks(2) {
        std::thread::scope(|s| {
            for &m in pair {
                s.spawn(move || {
                    let t = Instant::now();
                    let c = Cluster::start(m);
                    eprintln!("PostgreSQL {m} started in {:?}", t.elapsed());
                    let num: u32 = c.psql("SHOW server_version_num").parse().unwrap();
                    assert_eq!(num / 10000, m);
                    // 18's initdb turns checksums on by default; the harness does not.
                    assert_eq!(c.psql("SHOW data_checksums"), "off");
                    assert_eq!(c.psql("SHOW wal_level"), "replica");
                    // Debian's pgbench 15 against this server.
                    c.pgbench_init(1);
                    c.pgbench_load(2).stop();
                    c.assert_pgbench_consistent();
                    let mut client = c.client();
                    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
                    assert_eq!(one, 1);
                });
            }
        });
    }
}

/// A data directory copied while its server was down after a crash (stop -m
/// immediate) starts on another port beside the original, which keeps
/// running on its own.
#[test]
fn start_on_copy_of_a_crashed_cluster() {
    let src = Cluster::start(15);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    src.stop();
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src.data)
        .arg(&dest)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    src.restart();
    let t = Instant::now();
    let copy = Cluster::start_on_copy(&dest, 15);
    eprintln!("copy started (crash recovery) in {:?}", t.elapsed());
    assert_ne!(copy.port, src.port);
    assert_ne!(copy.socket_dir, src.socket_dir);
    assert_eq!(copy.psql("SELECT sum(i) FROM t"), "500500");
    copy.psql("INSERT INTO t VALUES (1)");
    assert_eq!(src.psql("SELECT count(*) FROM t"), "1000");
    assert!(copy.log_tail().contains("database system is ready"));
}

#[test]
fn password_and_checksum_options() {
    let c = ClusterOptions::new(15)
        .data_checksums()
        .password("s3cr'et")
        .conf("work_mem = '7MB'")
        .start();
    assert_eq!(c.psql("SHOW data_checksums"), "on");
    assert_eq!(c.psql("SHOW work_mem"), "7MB");
    let err = postgres::Client::connect(&c.tcp_dsn(), postgres::NoTls)
        .err()
        .expect("TCP without a password must fail");
    assert!(format!("{err:?}").contains("password"), "{err:?}");
    let dsn = format!("{} password='s3cr\\'et'", c.tcp_dsn());
    let mut client = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// The binary the tests drive is there and runs; HOME is an empty directory.
#[test]
fn tool_runs() {
    let cmd = common::tool();
    assert!(cmd.get_envs().any(|(k, v)| k == "HOME" && v.is_some()));
    let out = common::run(&["--version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
