//! Sessions and servers that go away or never answer: a lost worker
//! session is retried, a lost control session or a restarted server ends
//! the backup at once, connect_timeout bounds a silent server, and ten
//! backups in a row under writes all restore.

use std::time::{Duration, Instant};

use crate::common::{Cluster, run, scratch_dir, tool};

use super::{
    failed_run, silent_server, start_slow_backup, wait_exit, wait_for_copying, wait_for_session,
};

#[test]
fn a_lost_worker_session_is_retried_and_the_backup_restores() {
    let (src, _scratch, dest, child) = start_slow_backup(&["-x"], "8M");
    let load = src.pgbench_load(2);
    let pid = wait_for_session(&src, "pg_basebackup worker", "%pg_read_binary_file%");
    assert_eq!(
        src.psql(&format!("SELECT pg_terminate_backend({pid})")),
        "t"
    );
    let out = child.wait_with_output().unwrap();
    load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("retrying on a new session"),
        "the lost request was retried: {stderr}"
    );
    src.assert_no_leftovers();
    Cluster::start_on_copy(&dest, 15).assert_pgbench_consistent();
}

#[test]
fn a_lost_control_session_aborts_cleanly() {
    let (src, _scratch, dest, child) = start_slow_backup(&["-x"], "8M");
    let control =
        src.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_basebackup'");
    src.psql(&format!("SELECT pg_terminate_backend({control})"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1,
        "one line"
    );
    assert!(!dest.exists(), "the partial copy is removed");
    src.assert_no_leftovers();
}

#[test]
fn connect_timeout_bounds_a_server_that_never_answers() {
    let (port, _holder) = silent_server();
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let d = dest.to_str().unwrap();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    // sslmode=prefer (the default) waits for the answer to SSLRequest,
    // sslmode=disable for the answer to the startup message.
    let cases = [
        (format!("{dsn} connect_timeout=2"), None),
        (
            format!("{dsn} sslmode=disable"),
            Some(("PGCONNECT_TIMEOUT", "2")),
        ),
        (format!("{dsn} sslmode=require connect_timeout=2"), None),
    ];
    for (dsn, env) in cases {
        let mut cmd = tool();
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        cmd.args([dsn.as_str(), d]);
        let started = Instant::now();
        let (code, stderr) = failed_run(cmd, &dest);
        let took = started.elapsed();
        assert_eq!(code, Some(3), "{dsn}: {stderr}");
        assert!(
            stderr.contains("timeout expired") && stderr.contains(&port.to_string()),
            "{dsn}: {stderr}"
        );
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(20),
            "{dsn}: gave up after {took:?}"
        );
    }
}

#[test]
fn soak_ten_backups_in_a_row_under_writes() {
    let src = Cluster::start(15);
    src.pgbench_init(1);
    let load = src.pgbench_load(2);
    let scratch = scratch_dir();
    for i in 0..10 {
        let dest = scratch.path().join(format!("copy{i}"));
        let jobs = ["1", "2", "4"][i % 3];
        let out = run(&[
            "-j",
            jobs,
            "-x",
            "-c",
            "fast",
            "-D",
            "0.5",
            &src.dsn(),
            dest.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "backup {i}");
        let copy = Cluster::start_on_copy(&dest, 15);
        copy.assert_pgbench_consistent();
        drop(copy);
        std::fs::remove_dir_all(&dest).unwrap();
    }
    load.stop();
    src.assert_no_leftovers();
}

#[test]
fn a_server_restart_mid_backup_fails_it_at_once() {
    let (src, _scratch, dest, child) = start_slow_backup(&["-x"], "5M");
    wait_for_copying(&dest);
    let restarted = Instant::now();
    let (code, stderr, _) = std::thread::scope(|s| {
        s.spawn(|| {
            src.stop_fast();
            src.restart();
        });
        wait_exit(child)
    });
    let took = restarted.elapsed();
    eprintln!("{stderr}");
    assert_eq!(code, Some(6), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pg_basebackup: error: the control session was lost")
            && last.contains("restarted"),
        "{stderr}"
    );
    assert!(!dest.exists(), "the partial copy is removed");
    src.assert_no_leftovers();
}
