//! End-to-end backups of a real PostgreSQL 15 server taking writes: every
//! copy is started as a server and checked, never just inspected.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{self, Cluster, ClusterOptions, assert_ok, run, scratch_dir, tool};

const VERSION: u32 = 15;

/// Back up a cluster under pgbench writes with `-j jobs -x -v` and `extra`
/// flags; returns the tool's stderr once the copy has been checked.
fn backup_under_load(jobs: &str, extra: &[&str]) -> String {
    let src = Cluster::start(VERSION);
    src.pgbench_init(5);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let load = src.pgbench_load(4);
    std::thread::sleep(Duration::from_secs(1));
    let mut args = vec!["-j", jobs, "-x", "-c", "fast", "-v"];
    args.extend(extra);
    let dsn = src.dsn();
    args.extend([dsn.as_str(), dest.to_str().unwrap()]);
    let out = run(&args);
    load.stop();
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stderr
        .lines()
        .find(|l| l.contains(" files, ") && l.contains(" data, "))
        .unwrap_or_else(|| panic!("-v prints one summary line:\n{stderr}"));
    assert!(
        summary.contains(" WAL segment")
            && !summary.contains(" 0 WAL segments")
            && summary.contains("0 checksum failures, manifest written"),
        "{summary}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pg_ctl -D"),
        "the last line tells how to start the copy"
    );

    // What the server's own base backup leaves out is not in the copy.
    assert!(!dest.join("postmaster.pid").exists());
    assert!(!dest.join("postmaster.opts").exists());
    assert!(dest.join("backup_label").is_file());
    for empty in [
        "pg_replslot",
        "pg_stat_tmp",
        "pg_wal/archive_status",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_subtrans",
    ] {
        let d = dest.join(empty);
        assert!(d.is_dir(), "{empty} missing");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "{empty} is not empty"
        );
    }
    assert!(
        std::fs::read_dir(dest.join("pg_wal")).unwrap().count() > 1,
        "-x put WAL into pg_wal"
    );
    // Every session of the tool is closed, the temporary slot is gone.
    src.assert_no_leftovers();

    let copy = Cluster::start_on_copy(&dest, VERSION);
    copy.assert_pgbench_consistent();
    assert_eq!(copy.psql("SELECT count(*) FROM pgbench_accounts"), "500000");
    stderr
}

#[test]
fn backup_with_one_job_restores_under_writes() {
    let stderr = backup_under_load("1", &[]);
    assert!(!stderr.contains("progress:"), "no progress without -P");
}

#[test]
fn backup_with_four_jobs_restores_under_writes_and_shows_progress() {
    // stderr is a pipe here: -P prints plain lines, the last one at 100 %.
    let stderr = backup_under_load("4", &["-P"]);
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("pg_basebackup: progress: "))
        .unwrap_or_else(|| panic!("-P prints progress lines:\n{stderr}"));
    assert!(last.contains("(100%)") && last.contains("; WAL "), "{last}");
    // The server runs on this host: no more workers read than it has CPUs.
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        stderr.contains(&format!(
            "{cpus} of the 4 sessions read while reads are quick"
        )),
        cpus < 4,
        "{stderr}"
    );
}

#[test]
fn standing_by_workers_join_when_reads_are_slow() {
    // With the server on this host, only as many workers read as there are
    // CPUs (one here: the tool runs pinned to one); slow tasks (here: the
    // rate limit) let the others in, one by one.
    let src = Cluster::start(VERSION);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 200000) AS i");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let mut cmd = tool();
    cmd.args([
        "-r",
        "16M",
        "--chunk-size",
        "2M",
        "-j",
        "3",
        "-x",
        "-c",
        "fast",
        "-d",
    ])
    .args([src.dsn().as_str(), dest.to_str().unwrap()]);
    on_one_cpu(&mut cmd);
    let out = cmd.output().expect("run pg_basebackup");
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(1 CPU): 1 of the 3 sessions read while reads are quick"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ms: 2 sessions read now"),
        "slow tasks let one more worker read:\n{stderr}"
    );
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(copy.psql("SELECT sum(i) FROM t"), "20000100000");
}

/// Run `cmd` on one CPU, the first this process may use: the tool then sees
/// a one-CPU host on any machine.
fn on_one_cpu(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the calls only read and write the sets passed to them; the
    // closure runs between fork and exec and only makes one system call.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &allowed))
            .expect("a CPU this process may use");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, size, &one) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[test]
fn backup_without_wal_warns_and_needs_an_archive() {
    let src = Cluster::start(VERSION);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let out = run(&["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WAL archive"),
        "warns that WAL must come from an archive"
    );
    let wal: Vec<_> = std::fs::read_dir(dest.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(wal, ["archive_status"], "no WAL without -x");
    assert!(dest.join("backup_label").is_file() && dest.join("global/pg_control").is_file());

    // Given the WAL from the source (as an archive would), the copy starts.
    let archive = scratch.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    src.psql("SELECT pg_switch_wal()");
    for e in std::fs::read_dir(src.data.join("pg_wal")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), archive.join(e.file_name())).unwrap();
        }
    }
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(dest.join("postgresql.auto.conf"))
        .unwrap();
    writeln!(conf, "restore_command = 'cp {}/%f %p'", archive.display()).unwrap();
    std::fs::File::create(dest.join("recovery.signal")).unwrap();
    common::chown_postgres(&archive);
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "1000");
}

#[test]
fn existing_dest_is_refused_without_force() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("precious"), b"keep me").unwrap();

    let out = run(&["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "DEST not empty has its own exit code"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.lines().count() == 1,
        "one clear line: {stderr}"
    );
    assert_eq!(std::fs::read(dest.join("precious")).unwrap(), b"keep me");
    src.assert_no_leftovers();

    let out = run(&["-f", "-x", "-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    assert_ok(&out);
    assert!(!dest.join("precious").exists(), "-f replaced the contents");
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(copy.psql("SELECT 1"), "1");

    // A DEST that is a file is refused before anything else happens.
    let file = scratch.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&["-f", &src.dsn(), file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn failed_backup_leaves_nothing_behind() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    // A -T mapping for a tablespace that does not exist is refused before
    // the backup starts: no DEST, no session, no slot.
    let out = run(&[
        "-T",
        "/nowhere=/elsewhere",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!dest.exists());
    // A refused connection: its own exit code, one line, no DEST.
    let out = run(&[
        "host=127.0.0.1 port=1 user=postgres",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    assert!(!dest.exists());
    src.assert_no_leftovers();
}

#[test]
fn stdin_copies_exactly_the_listed_files() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let dest = scratch.path().join("part");
    let relfile = src.psql("CREATE TABLE s AS SELECT generate_series(1, 50000) i; CHECKPOINT; SELECT pg_relation_filepath('s')");
    let mut child = tool()
        .args([
            "-S",
            "--stdin",
            "-j",
            "2",
            &src.dsn(),
            dest.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    write!(child.stdin.take().unwrap(), "PG_VERSION\n{relfile}\n").unwrap();
    assert!(child.wait().unwrap().success());
    for rel in ["PG_VERSION", relfile.as_str()] {
        assert_eq!(
            std::fs::read(dest.join(rel)).unwrap(),
            std::fs::read(src.data.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
    let mut files = Vec::new();
    collect_files(&dest, &dest, &mut files);
    files.sort();
    let mut want = vec!["PG_VERSION".to_string(), relfile.clone()];
    want.sort();
    assert_eq!(files, want, "only the listed files are copied");

    // A path outside the data directory is refused.
    let mut child = tool()
        .args(["-S", "--stdin", &src.dsn(), dest.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "../../etc/passwd").unwrap();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(2));
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            collect_files(root, &e.path(), out);
        } else {
            out.push(
                e.path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

#[test]
fn wal_follower_copies_wal_until_terminate() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let dest = scratch.path().join("standby");
    let mut child = tool()
        .args([
            "-S",
            "-x",
            "-D",
            "0.2",
            "-v",
            &src.dsn(),
            dest.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Fill and switch a few segments; the follower must hold them, byte for byte.
    let mut switched = Vec::new();
    for _ in 0..3 {
        src.psql("CREATE TABLE IF NOT EXISTS w(x text); INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 2000)");
        switched.push(src.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        src.psql("SELECT pg_switch_wal()");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let wal = dest.join("pg_wal");
    let complete = |name: &str| {
        std::fs::read(wal.join(name)).ok() == std::fs::read(src.data.join("pg_wal").join(name)).ok()
    };
    while !switched.iter().all(|n| complete(n)) {
        assert!(
            Instant::now() < deadline,
            "the follower did not copy {switched:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    writeln!(stdin, "terminate").unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stops promptly on terminate"
    );
    src.assert_no_leftovers();
}

#[test]
fn wire_compression_with_plpython_restores_and_leaves_nothing_behind() {
    let src = Cluster::start(VERSION);
    src.pgbench_init(1);
    let scratch = scratch_dir();

    // Without the language, asking for zlib fails clearly, before DEST exists.
    let dest = scratch.path().join("refused");
    let out = run(&[
        "--wire-compression",
        "zlib",
        &src.tcp_dsn(),
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plpython3u"));
    assert!(!dest.exists());

    src.psql("CREATE EXTENSION plpython3u");
    let dest = scratch.path().join("copy");
    let load = src.pgbench_load(2);
    let out = run(&[
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        "-v",
        "--wire-compression",
        "zlib",
        &src.tcp_dsn(),
        dest.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wire compression: zlib"),
        "-v says which: {stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("crossed the wire"))
        .unwrap();
    let numbers: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert!(
        numbers[0] * 3 < numbers[1],
        "pgbench data compresses: {line}"
    );
    assert_eq!(
        src.psql("SELECT count(*) FROM pg_proc WHERE proname = 'pgbb_read_zlib'"),
        "0",
        "the function died with its session"
    );

    // auto does not compress over a unix socket (nothing to gain).
    let dest2 = scratch.path().join("auto");
    let out = run(&["-v", "-c", "fast", &src.dsn(), dest2.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wire compression: none"));

    let copy = Cluster::start_on_copy(&dest, VERSION);
    copy.assert_pgbench_consistent();
}

/// Poll `probe` every 100 ms until it returns true; panic with `what` after
/// `limit`.
fn wait_until(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !probe() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn write_recovery_conf_makes_a_streaming_standby() {
    let src = ClusterOptions::new(VERSION).password("Stby-pw").start();
    src.psql("CREATE TABLE t (i int); INSERT INTO t VALUES (1)");
    let scratch = scratch_dir();
    let dest = scratch.path().join("standby");
    // Over TCP, with the password in the DSN: the standby needs it too.
    let dsn = format!("{} password=Stby-pw", src.tcp_dsn());
    assert_ok(&run(&[
        "-R",
        "-x",
        "-c",
        "fast",
        &dsn,
        dest.to_str().unwrap(),
    ]));
    assert!(dest.join("standby.signal").is_file());
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
    let conninfo = auto
        .lines()
        .find(|l| l.starts_with("primary_conninfo = "))
        .unwrap_or_else(|| panic!("no primary_conninfo in:\n{auto}"));
    for part in ["Stby-pw", "host=127.0.0.1", &format!("port={}", src.port)] {
        assert!(conninfo.contains(part), "{part} in {conninfo}");
    }
    assert!(!conninfo.contains("dbname"), "{conninfo}");

    let standby = Cluster::start_standby_on_copy(&dest, VERSION);
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    wait_until(
        Duration::from_secs(60),
        "the source streams to the copy",
        || src.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1",
    );
    src.psql("INSERT INTO t VALUES (2)");
    wait_until(
        Duration::from_secs(60),
        "the new row reaches the copy",
        || standby.psql("SELECT count(*) FROM t") == "2",
    );
    drop(standby);

    // A password from PGPASSWORD is not written into the copy.
    let dest = scratch.path().join("no-password");
    let out = tool()
        .env("PGPASSWORD", "Stby-pw")
        .args(["-R", "-c", "fast", &src.tcp_dsn(), dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&out);
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo = "), "{auto}");
    assert!(!auto.contains("Stby-pw"), "{auto}");
}

#[test]
fn max_rate_paces_the_copy_and_it_restores() {
    const RATE: u64 = 2 << 20;
    const CHUNK: u64 = 1 << 20;
    let src = Cluster::start(VERSION);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS i");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let started = Instant::now();
    assert_ok(&run(&[
        "-r",
        "2M",
        "--chunk-size",
        "1M",
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]));
    let took = started.elapsed();
    // Every byte in the copy outside pg_wal was read from the server under
    // the limit, except what the tool writes itself. Each request reserves
    // its time before it is sent, so only the last one can beat the clock.
    let mut files = Vec::new();
    collect_files(&dest, &dest, &mut files);
    let read: u64 = files
        .iter()
        .filter(|f| !f.starts_with("pg_wal/"))
        .filter(|f| !["backup_label", "backup_manifest", "tablespace_map"].contains(&f.as_str()))
        .map(|f| std::fs::metadata(dest.join(f)).unwrap().len())
        .sum();
    assert!(read > 20 << 20, "a copy of about 20 MB, got {read} bytes");
    let least = Duration::from_secs_f64((read - CHUNK) as f64 / RATE as f64);
    eprintln!("-r 2M: {read} bytes outside pg_wal in {took:?} (at least {least:?})");
    assert!(
        took >= least,
        "{read} bytes at 2 MB/s took {took:?}, less than {least:?}"
    );
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(copy.psql("SELECT sum(i) FROM t"), "5000050000");
}

#[test]
fn clean_ends_a_left_over_exclusive_backup() {
    // 14: pg_start_backup with one argument starts an exclusive backup,
    // which outlives its session.
    let old = Cluster::start(14);
    old.psql("SELECT pg_start_backup('left over')");
    assert_eq!(old.psql("SELECT pg_is_in_backup()"), "t");
    let out = run(&["--clean", &old.dsn()]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped the exclusive backup"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(old.psql("SELECT pg_is_in_backup()"), "f");
    let out = run(&["--clean", &old.dsn()]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to clean"));
    old.assert_no_leftovers();

    // 15+ has no exclusive backups.
    let new = Cluster::start(VERSION);
    let out = run(&["--clean", &new.dsn()]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to clean"));
}

/// Every WAL segment in `pg_wal` is 16 MB with every block allocated (as
/// PostgreSQL zero-fills them), so the copy cannot run out of disk once it
/// runs; returns how many there are.
fn assert_segments_allocated(pg_wal: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut segments = 0;
    for entry in std::fs::read_dir(pg_wal).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.len() != 24 {
            continue;
        }
        let meta = entry.metadata().unwrap();
        assert_eq!(meta.len(), 16 << 20, "{name}");
        assert!(
            meta.blocks() * 512 >= meta.len(),
            "{name} has holes: {} of {} bytes allocated",
            meta.blocks() * 512,
            meta.len()
        );
        segments += 1;
    }
    segments
}

#[test]
fn every_wal_segment_of_a_copy_is_fully_allocated() {
    let src = Cluster::start(VERSION);
    src.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let scratch = scratch_dir();
    let dsn = src.dsn();

    let plain = scratch.path().join("plain");
    assert_ok(&run(&["-x", "-c", "fast", &dsn, plain.to_str().unwrap()]));
    assert!(assert_segments_allocated(&plain.join("pg_wal")) >= 1);

    let tar = scratch.path().join("tar");
    assert_ok(&run(&[
        "-x",
        "-c",
        "fast",
        "-F",
        "t",
        &dsn,
        tar.to_str().unwrap(),
    ]));
    let extracted = scratch.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(tar.join("pg_wal.tar"))
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(assert_segments_allocated(&extracted) >= 1);

    // The -S -x feed of a standby's pg_wal (standard input at its end: one
    // round, exit 0).
    let feed = scratch.path().join("feed");
    let out = tool()
        .args(["-S", "-x", &dsn, feed.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(assert_segments_allocated(&feed.join("pg_wal")) >= 1);
    Cluster::start_on_copy(&plain, VERSION);
}
