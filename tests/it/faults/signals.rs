//! SIGINT and SIGTERM: a backup stops within seconds and removes its
//! partial copy (unless -n), also while a worker's backend hangs or the
//! server never answers; a second signal exits at once; the WAL follower
//! takes a signal as a requested stop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Cluster, scratch_dir, send_signal, tool};

use super::{
    silent_server, spawn, start_slow_backup, wait_exit, wait_for_copying, wait_for_session,
};

fn interrupt_with(signal: &str) {
    let (src, _scratch, dest, child) = start_slow_backup(&["-x"], "4M");
    let sent = Instant::now();
    send_signal(&child, signal);
    let out = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "stopped within 2 s, took {:?}",
        sent.elapsed()
    );
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    assert!(!dest.exists(), "the partial copy is removed");
    src.assert_no_leftovers();
}

#[test]
fn sigint_stops_cleanly() {
    interrupt_with("INT");
}

#[test]
fn sigterm_stops_cleanly() {
    interrupt_with("TERM");
}

#[test]
fn keep_partial_copy_with_no_clean() {
    let (_src, _scratch, dest, child) = start_slow_backup(&["-n"], "4M");
    send_signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(dest.exists(), "-n keeps the partial copy");
    assert!(
        !dest.join("backup_label").exists() && !dest.join("global/pg_control").exists(),
        "and it cannot start"
    );
}

#[test]
fn the_wal_follower_stops_on_sigterm() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let dest = scratch.path().join("feed");
    let mut child = tool()
        .args(["-S", "-x", "-D", "0.2", &src.dsn(), dest.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_session(&src, "pg_basebackup wal", "%");
    let _keep_stdin_open = child.stdin.take().unwrap();
    send_signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "a requested stop is a success: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    src.assert_no_leftovers();
}

#[test]
fn sigterm_ends_a_connection_to_a_silent_server_without_connect_timeout() {
    let (port, _holder) = silent_server();
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    for sslmode in ["disable", "prefer"] {
        let dsn = format!("host=127.0.0.1 port={port} user=postgres sslmode={sslmode}");
        let child = spawn(&[&dsn, dest.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(alive(&child), "{sslmode}: still waiting for the server");
        send_signal(&child, "TERM");
        let (code, stderr, took) = wait_exit(child);
        assert_eq!(code, Some(130), "{sslmode}: {stderr}");
        assert!(took < Duration::from_secs(5), "{sslmode}: took {took:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{sslmode}: {stderr}");
        assert!(stderr.contains("interrupted"), "{sslmode}: {stderr}");
        assert!(!dest.exists(), "{sslmode}");
    }
}

/// The child process still exists (`kill -0`; it is not reaped here).
fn alive(child: &Child) -> bool {
    Command::new("kill")
        .args(["-0", &child.id().to_string()])
        .status()
        .unwrap()
        .success()
}

/// Resumes a stopped backend however the test ends.
struct Stopped(String);

impl Stopped {
    fn new(pid: String) -> Stopped {
        assert!(
            Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .unwrap()
                .success()
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[test]
fn sigint_ends_a_backup_whose_worker_backend_hangs() {
    let (src, _scratch, dest, child) = start_slow_backup(&["-x"], "4M");
    wait_for_copying(&dest);
    let pid = wait_for_session(&src, "pg_basebackup worker", "%pg_read_binary_file%");
    let stopped = Stopped::new(pid);
    // Let the worker block on the stopped backend.
    std::thread::sleep(Duration::from_secs(2));
    send_signal(&child, "INT");
    let (code, stderr, took) = wait_exit(child);
    eprintln!("took {took:?}: {stderr}");
    assert_eq!(code, Some(130), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!dest.exists(), "the partial copy is removed");
    drop(stopped);
    src.assert_no_leftovers();
}

#[test]
fn the_wal_follower_under_cron_copies_once_and_sigint_stops_it_with_0() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let dest = scratch.path().join("feed");
    let segment = src.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    // Cron: standard input at its end. One round of copying, exit 0.
    let out = tool()
        .args(["-S", "-x", &src.dsn(), dest.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.join("pg_wal").join(&segment).is_file());
    src.assert_no_leftovers();

    // Standard input open: it runs until told; SIGINT is a requested stop.
    let mut child = tool()
        .args(["-S", "-x", "-D", "0.2", &src.dsn(), dest.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _keep_stdin_open = child.stdin.take().unwrap();
    wait_for_session(&src, "pg_basebackup wal", "%");
    std::thread::sleep(Duration::from_secs(1));
    assert!(child.try_wait().unwrap().is_none(), "it keeps following");
    send_signal(&child, "INT");
    let (code, stderr, took) = wait_exit(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    src.assert_no_leftovers();
}

#[test]
fn a_second_signal_exits_at_once() {
    let (src, _scratch, dest, child) = start_slow_backup(&["-x"], "4M");
    wait_for_copying(&dest);
    let pid = wait_for_session(&src, "pg_basebackup worker", "%pg_read_binary_file%");
    let stopped = Stopped::new(pid);
    std::thread::sleep(Duration::from_secs(2));
    send_signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(&child),
        "the first signal waits for the blocked worker a moment"
    );
    send_signal(&child, "TERM");
    let (code, stderr, took) = wait_exit(child);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(took < Duration::from_secs(1), "took {took:?}: {stderr}");
    assert!(stderr.contains("interrupted again"), "{stderr}");
    drop(stopped);
    // The process is gone, and its sessions with it.
    src.assert_no_leftovers();
}
