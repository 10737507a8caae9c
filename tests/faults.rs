//! Faults and bad input: lost sessions, signals, refused input, secrets.
//! After each, the server must have no session or slot of ours left.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, run, scratch_dir, send_signal, tool};
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after 60 s: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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

#[test]
fn a_file_size_limit_is_a_clean_dest_error() {
    // The disk filling up, as the tool sees it: a write fails (EFBIG here,
    // ENOSPC on a full disk) in the middle of the copy. 20 MB lets the WAL
    // segments (16 MB) through and stops pgbench_accounts (about 40 MB).
    let src = loaded_cluster();
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let mut cmd = tool();
    cmd.args([
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    const LIMIT: libc::rlim_t = 20 << 20;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains(dest.to_str().unwrap()) && stderr.contains("File too large"),
        "the file and the reason are named: {stderr}"
    );
    src.assert_no_leftovers();
    // The backup ended with its session (15 has no pg_is_in_backup()).
    let log = std::fs::read_to_string(src.log_path()).unwrap();
    assert!(
        log.contains("aborting backup due to backend exiting before pg_backup_stop was called"),
        "the server aborted the backup:\n{}",
        src.log_tail()
    );
}

#[test]
fn a_dest_that_cannot_be_created_is_refused() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    // A read-only parent (for a user that is not root: root ignores modes).
    let read_only = scratch.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let dest = read_only.join("copy");
    let mut cmd = tool();
    if common::is_root() {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
    }
    cmd.args(["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains(dest.to_str().unwrap()) && stderr.contains("ermission denied"),
        "{stderr}"
    );
    // A parent that is a file.
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let dest = file.join("copy");
    let mut cmd = tool();
    cmd.args(["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains(dest.to_str().unwrap()), "{stderr}");
    src.assert_no_leftovers();
}

/// The uid and gid of the OS user postgres.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
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
fn bad_input_gets_one_line_and_its_exit_code() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let d = dest.to_str().unwrap();
    let dsn = src.dsn();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let inside = src.data.join("base/copy");
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["host=/tmp port='unterminated".into(), d.into()],
            2,
            "malformed DSN",
        ),
        (vec!["bogus_key=1".into(), d.into()], 2, "unknown key"),
        (
            vec!["host=no-such-host.invalid user=postgres".into(), d.into()],
            3,
            "unknown host",
        ),
        (
            vec!["host=127.0.0.1 port=1 user=postgres".into(), d.into()],
            3,
            "refused connection",
        ),
        (
            vec![dsn.replace("dbname=postgres", "dbname=nosuchdb"), d.into()],
            3,
            "database does not exist",
        ),
        (
            vec!["-j".into(), "0".into(), dsn.clone(), d.into()],
            2,
            "-j 0",
        ),
        (
            vec!["-j".into(), "500".into(), dsn.clone(), d.into()],
            4,
            "-j beyond max_connections",
        ),
        (
            vec!["-D".into(), "0".into(), dsn.clone(), d.into()],
            2,
            "-D 0",
        ),
        (
            vec!["-D".into(), "-2".into(), dsn.clone(), d.into()],
            2,
            "-D negative",
        ),
        (
            vec![dsn.clone(), file.to_str().unwrap().into()],
            5,
            "DEST is a file",
        ),
        (
            vec![dsn.clone(), inside.to_str().unwrap().into()],
            5,
            "DEST inside the live data directory",
        ),
    ];
    for (args, code, what) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line, got {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(!dest.exists(), "{what}: DEST created");
    }
    let err = String::from_utf8_lossy(&run(&["-j", "500", &dsn, d]).stderr).into_owned();
    assert!(
        err.contains("max_connections = 60"),
        "the limit is named: {err}"
    );
    src.assert_no_leftovers();
}

#[test]
fn no_password_is_ever_printed() {
    let src = Cluster::start(15);
    src.psql("CREATE ROLE pwuser LOGIN SUPERUSER PASSWORD 'Sekr1t-pw'");
    // Password authentication for this role over TCP, ahead of initdb's trust lines.
    let hba = src.data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pwuser 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    src.psql("SELECT pg_reload_conf()");
    let scratch = scratch_dir();
    let tcp = format!("host=127.0.0.1 port={} dbname=postgres", src.port);
    let pgpass = scratch.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:*:pwuser:Sekr1t-pw\n", src.port),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let mut outputs = Vec::new();
    for (n, how) in ["dsn", "uri", "env", "pgpass", "wrong"].iter().enumerate() {
        let dest = scratch.path().join(format!("copy{n}"));
        let mut cmd = tool();
        let dsn = match *how {
            "dsn" => format!("{tcp} user=pwuser password=Sekr1t-pw"),
            "uri" => format!(
                "postgresql://pwuser:Sekr1t-pw@127.0.0.1:{}/postgres",
                src.port
            ),
            "env" => {
                cmd.env("PGPASSWORD", "Sekr1t-pw");
                format!("{tcp} user=pwuser")
            }
            "pgpass" => {
                cmd.env("PGPASSFILE", &pgpass);
                format!("{tcp} user=pwuser")
            }
            _ => format!("{tcp} user=pwuser password=Sekr1t-pw-wrong"),
        };
        let out = cmd
            .args([
                "-d",
                "-v",
                "-x",
                "-c",
                "fast",
                "-R",
                &dsn,
                dest.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        if *how == "wrong" {
            assert_eq!(out.status.code(), Some(3), "wrong password");
        } else {
            assert!(
                out.status.success(),
                "{how}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        outputs.push((how.to_string(), out));
        // -R may write the password into the copy only when the DSN held it.
        let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap_or_default();
        assert_eq!(
            auto.contains("Sekr1t-pw"),
            matches!(*how, "dsn" | "uri"),
            "{how}: primary_conninfo"
        );
    }
    for (how, out) in outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("SQL:") || how == "wrong",
            "-d shows SQL ({how})"
        );
        assert!(
            !text.contains("Sekr1t"),
            "{how}: the password appeared in the output:\n{text}"
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

/// Wait for the child to exit (killing it and failing after 60 s): its
/// exit code, its stderr, and how long it took.
fn wait_exit(mut child: Child) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 60 s after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status.code(), stderr, took)
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
        assert!(
            Command::new("kill")
                .args(["-0", &child.id().to_string()])
                .status()
                .unwrap()
                .success(),
            "{sslmode}: still waiting for the server"
        );
        send_signal(&child, "TERM");
        let (code, stderr, took) = wait_exit(child);
        assert_eq!(code, Some(130), "{sslmode}: {stderr}");
        assert!(took < Duration::from_secs(5), "{sslmode}: took {took:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{sslmode}: {stderr}");
        assert!(stderr.contains("interrupted"), "{sslmode}: {stderr}");
        assert!(!dest.exists(), "{sslmode}");
    }
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

#[test]
fn dest_in_the_wal_directory_or_a_tablespace_of_the_server_is_refused() {
    let scratch = scratch_dir();
    let wal = scratch.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    common::chown_postgres(&wal);
    let src = common::ClusterOptions::new(15)
        .initdb_arg(&format!("--waldir={}", wal.display()))
        .start();
    let ts = scratch.path().join("ts");
    std::fs::create_dir(&ts).unwrap();
    common::chown_postgres(&ts);
    src.psql(&format!("CREATE TABLESPACE ts LOCATION '{}'", ts.display()));
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let wal_before = listing(&wal);
    let dsn = src.dsn();
    let copy = scratch.path().join("copy");
    let mapping = format!("{}={}", ts.display(), wal.join("ts-copy").display());
    let cases: Vec<(Vec<String>, &Path, &str)> = vec![
        (
            vec![dsn.clone(), wal.join("copy").display().to_string()],
            &wal,
            "WAL directory",
        ),
        (
            vec!["-f".into(), dsn.clone(), wal.display().to_string()],
            &wal,
            "WAL directory",
        ),
        (
            vec![dsn.clone(), ts.join("copy").display().to_string()],
            &ts,
            "tablespace directory",
        ),
        (
            vec![
                "-T".into(),
                mapping,
                dsn.clone(),
                copy.display().to_string(),
            ],
            &wal,
            "WAL directory",
        ),
    ];
    for (args, inside, what) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(what) && stderr.contains(inside.to_str().unwrap()),
            "{args:?}: {stderr}"
        );
        assert!(!copy.exists() && !wal.join("copy").exists() && !ts.join("copy").exists());
    }
    assert_eq!(
        listing(&wal),
        wal_before,
        "the live WAL directory is untouched"
    );
    src.psql("SELECT 1");
    src.assert_no_leftovers();
}

/// A TCP server on 127.0.0.1 that answers whatever it is sent with an HTTP
/// error and closes, as a web server on the wrong port does.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            use std::io::Write;
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    port
}

#[test]
fn errors_are_one_line_and_a_server_hint_a_second() {
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let d = dest.to_str().unwrap();

    // A command-line mistake, as PostgreSQL's tools report one.
    let out = run(&["--frobnicate", "host=/tmp", d]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "pg_basebackup: error: unexpected argument '--frobnicate' found\n\
         pg_basebackup: hint: Try \"pg_basebackup --help\" for more information.\n"
    );
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "pg_basebackup: error: the following required arguments were not provided: <DSN> <DEST>\n"
        ) && stderr.lines().count() == 2,
        "{stderr}"
    );

    // Not a PostgreSQL server at all.
    let port = http_server();
    for sslmode in ["disable", "prefer"] {
        let out = run(&[
            &format!("host=127.0.0.1 port={port} user=postgres sslmode={sslmode}"),
            d,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("pg_basebackup: error: ")
                && stderr.contains("received an invalid response")
                && stderr.contains("is this a PostgreSQL server?"),
            "{stderr}"
        );
    }

    // The server's HINT goes on a line of its own.
    let src = common::ClusterOptions::new(15)
        .conf("wal_level = minimal")
        .conf("max_wal_senders = 0")
        .start();
    let out = run(&[&src.dsn(), d]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let n = lines.len();
    assert!(n >= 2, "{stderr}");
    assert!(
        lines[n - 2].starts_with("pg_basebackup: error: ")
            && lines[n - 2].contains("ERROR: WAL level not sufficient")
            && !lines[n - 2].contains("HINT")
            && !lines[n - 2].contains("db error"),
        "{stderr}"
    );
    assert!(
        lines[n - 1].starts_with("pg_basebackup: hint: ") && lines[n - 1].contains("wal_level"),
        "{stderr}"
    );
    assert!(!dest.exists());
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
fn a_disk_that_cannot_hold_the_wal_segments_fails_with_exit_5() {
    // Each WAL segment of the copy is allocated in full (16 MB) when it is
    // created; a 12 MB file size limit stands for a disk without room for
    // one, while every data file of a fresh cluster fits.
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let mut cmd = tool();
    cmd.args(["-x", "-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    const LIMIT: libc::rlim_t = 12 << 20;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("pg_wal/0000") && stderr.contains("File too large"),
        "the segment and the reason are named: {stderr}"
    );
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
        Command::new("kill")
            .args(["-0", &child.id().to_string()])
            .status()
            .unwrap()
            .success(),
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
