//! Faults and bad input: lost sessions, signals, a DEST that fails,
//! refused input, secrets. After each, the server must have no session or
//! slot of ours left. This file holds what the areas share: a slow backup
//! to interrupt, and waiting for a session or for the tool to exit.

mod dest;
mod input;
mod sessions;
mod signals;

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Cluster, scratch_dir, tool};
use tempfile::TempDir;

fn spawn(args: &[&str]) -> Child {
    tool()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A cluster with enough data that a rate-limited backup takes a while.
fn loaded_cluster() -> Cluster {
    let c = Cluster::start(15);
    c.pgbench_init(3);
    c
}

/// The pid of one of our sessions whose last query matches `query_like`.
fn wait_for_session(c: &Cluster, application_name: &str, query_like: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pid = c.psql(&format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}' \
              AND query LIKE '{query_like}' LIMIT 1"
        ));
        if !pid.is_empty() {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no active {application_name} session appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A loaded cluster and a backup of it into `<scratch>/copy` with `-j 2 -c
/// fast -r RATE` plus `extra_args`, returned once a worker is reading a file.
fn start_slow_backup(extra_args: &[&str], rate: &str) -> (Cluster, TempDir, PathBuf, Child) {
    let src = loaded_cluster();
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let dsn = src.dsn();
    let mut args = extra_args.to_vec();
    args.extend([
        "-j",
        "2",
        "-c",
        "fast",
        "-r",
        rate,
        &dsn,
        dest.to_str().unwrap(),
    ]);
    let child = spawn(&args);
    wait_for_session(&src, "pg_basebackup worker", "%pg_read_binary_file%");
    (src, scratch, dest, child)
}

/// Wait for `child` to exit, looking every `poll`; after 60 s kill it and
/// fail with `still_running`.
fn wait_a_minute(child: &mut Child, poll: Duration, still_running: &str) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{still_running}");
        }
        std::thread::sleep(poll);
    }
}

/// Run the tool, which is expected to fail within a minute (it is killed
/// and the test fails otherwise): its exit code and its stderr, which must
/// be one line; DEST must not be left behind.
fn failed_run(mut cmd: Command, dest: &Path) -> (Option<i32>, String) {
    let mut stderr_file = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(stderr_file.try_clone().unwrap())
        .spawn()
        .unwrap();
    let still_running = format!("still running after 60 s: {cmd:?}");
    let status = wait_a_minute(&mut child, Duration::from_millis(50), &still_running);
    let mut stderr = String::new();
    stderr_file.seek(SeekFrom::Start(0)).unwrap();
    stderr_file.read_to_string(&mut stderr).unwrap();
    let stderr = stderr.trim().to_string();
    eprintln!("{:?}: {stderr}", status.code());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dest.exists(), "DEST is removed: {stderr}");
    (status.code(), stderr)
}

/// A TCP server on 127.0.0.1 that accepts connections and never says a word.
fn silent_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        // Hold every accepted socket open, silent, until the test ends.
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    (port, holder)
}

/// Wait for the child to exit (killing it and failing after 60 s): its
/// exit code, its stderr, and how long it took.
fn wait_exit(mut child: Child) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let status = wait_a_minute(
        &mut child,
        Duration::from_millis(20),
        "still running 60 s after the signal",
    );
    let took = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status.code(), stderr, took)
}

/// Return once the workers copy into DEST (laid out once the backup has
/// started and the plan is made).
fn wait_for_copying(dest: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dest.join("base").exists() {
        assert!(Instant::now() < deadline, "the copy did not begin");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
}
