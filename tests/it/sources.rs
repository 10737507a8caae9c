//! Where a backup is taken from and what the server does meanwhile: a
//! pg_control that does not read back consistently, a hot standby as the
//! source (promoted or switching timelines mid-backup), and a server that
//! archives WAL when the copy holds none.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{self, Cluster, ClusterOptions, assert_ok, run, scratch_dir, tool};

/// The tool in the background with -v; its stderr lines arrive on the
/// returned channel as they are written.
fn spawn_verbose(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = tool()
        .arg("-v")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until one contains `what`; all of them, that one last.
fn wait_for_line(rx: &mpsc::Receiver<String>, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(what);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {what:?}; so far:\n{}", seen.join("\n")),
        }
    }
}

/// The exit code of the tool and every stderr line it wrote after `seen`.
fn finish(mut child: Child, rx: mpsc::Receiver<String>, mut seen: Vec<String>) -> (i32, String) {
    let status = child.wait().unwrap();
    seen.extend(rx.iter());
    (status.code().unwrap_or(-1), seen.join("\n"))
}

/// Overwrite `len` bytes of a file in place at `offset`, as the server
/// rewrites pg_control.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_pg_control_that_never_reads_consistently_fails_the_backup() {
    let src = Cluster::start(15);
    src.pgbench_init(3);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let dsn = src.dsn();
    let (child, rx) = spawn_verbose(&[
        "-j",
        "2",
        "-c",
        "fast",
        "-r",
        "8M",
        &dsn,
        dest.to_str().unwrap(),
    ]);
    // After the listing nothing asks the server about pg_control any more
    // (its pg_control_*() functions check the CRC too, and would fail):
    // from then on only our read of the file sees it.
    let seen = wait_for_line(&rx, "read requests");
    let control = src.data.join("global/pg_control");
    let original = std::fs::read(&control).unwrap();
    // The checkpoint location (offset 16), changed without a new CRC: what
    // a read that overlaps a rewrite looks like.
    overwrite(&control, 16, &[0xAB; 8]);
    let (code, stderr) = finish(child, rx, seen);
    overwrite(&control, 0, &original);
    assert_eq!(code, 6, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].contains("global/pg_control was read 5 times and never consistently")
            && errors[0].contains("CRC"),
        "{stderr}"
    );
    assert!(!dest.exists(), "the partial copy is removed");
    src.assert_no_leftovers();
}

/// A streaming standby of `upstream` in `<scratch>/<name>`, made by the
/// tool itself (-R -x), once `upstream` streams to it.
fn standby_of(upstream: &Cluster, scratch: &Path, name: &str) -> Cluster {
    standby_with(upstream, scratch, name, &[])
}

/// [`standby_of`] with extra postgresql.conf lines for the standby.
fn standby_with(upstream: &Cluster, scratch: &Path, name: &str, conf: &[&str]) -> Cluster {
    let dir = scratch.join(name);
    assert_ok(&run(&[
        "-R",
        "-x",
        "-c",
        "fast",
        &upstream.dsn(),
        dir.to_str().unwrap(),
    ]));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("postgresql.conf"))
        .unwrap();
    for line in conf {
        writeln!(file, "{line}").unwrap();
    }
    let standby = Cluster::start_standby_on_copy(&dir, upstream.version);
    let deadline = Instant::now() + Duration::from_secs(120);
    while upstream.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "0"
    {
        assert!(
            Instant::now() < deadline,
            "no standby streams from PostgreSQL {}",
            upstream.version
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    standby
}

/// Start a copy of a standby as a server of its own: without the standby
/// configuration it came with, it recovers from its own pg_wal alone.
fn start_detached_copy(dest: &Path, version: u32) -> Cluster {
    for f in ["standby.signal", "recovery.conf"] {
        let _ = std::fs::remove_file(dest.join(f));
    }
    Cluster::start_on_copy(dest, version)
}

/// The oldest and newest majors, and 15 (the client tools' own).
fn standby_majors() -> Vec<u32> {
    let all = common::available_majors();
    let mut chosen: Vec<u32> = [all.first(), all.last()]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    if all.contains(&15) {
        chosen.push(15);
    }
    chosen.sort();
    chosen.dedup();
    chosen
}

fn a_standby_backs_up_under_writes(version: u32) {
    let scratch = scratch_dir();
    let primary = Cluster::start(version);
    primary.pgbench_init(2);
    let standby = standby_of(&primary, scratch.path(), "standby");
    let load = primary.pgbench_load(2);
    let dest = scratch.path().join("copy");
    let out = run(&[
        "-v",
        "-j",
        "4",
        "-x",
        "-c",
        "fast",
        &standby.dsn(),
        dest.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the source is a standby"), "{stderr}");
    assert!(
        stderr.contains("(the standby's minimum recovery point)"),
        "{stderr}"
    );
    let label = std::fs::read_to_string(dest.join("backup_label")).unwrap();
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    standby.assert_no_leftovers();
    if [15, 18].contains(&version) {
        common::assert_verifies(version, &dest);
    }
    let copy = start_detached_copy(&dest, version);
    copy.assert_pgbench_consistent();
    copy.assert_amcheck();
}

#[test]
fn a_standby_backs_up_under_writes_on_oldest_newest_and_15() {
    for version in standby_majors() {
        a_standby_backs_up_under_writes(version);
    }
}

#[test]
fn a_standby_promoted_during_the_backup_fails_it_within_seconds() {
    let scratch = scratch_dir();
    let primary = Cluster::start(15);
    primary.pgbench_init(3);
    let standby = standby_of(&primary, scratch.path(), "standby");
    let dest = scratch.path().join("copy");
    let dsn = standby.dsn();
    let (child, rx) = spawn_verbose(&[
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        "-r",
        "4M",
        // Small requests: the rate limit's wait for one is short.
        "--chunk-size",
        "1M",
        &dsn,
        dest.to_str().unwrap(),
    ]);
    let seen = wait_for_line(&rx, "read requests");
    // pg_promote() returns once the standby is out of recovery.
    standby.psql("SELECT pg_promote()");
    let promoted = Instant::now();
    let (code, stderr) = finish(child, rx, seen);
    let took = promoted.elapsed();
    assert_eq!(code, 6, "{stderr}");
    // Polled every second; the rest is the workers' current requests and
    // the cleanup, on a loaded machine.
    assert!(took < Duration::from_secs(10), "noticed after {took:?}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    // Our watch's words, not the stop call's ("... during online backup").
    assert!(
        errors[0].contains("the standby was promoted during the backup, so the copy"),
        "{stderr}"
    );
    assert!(!dest.exists(), "the partial copy is removed");
    standby.assert_no_leftovers();
}

/// primary -> upstream -> standby, PostgreSQL 15, pgbench data.
fn cascade(scratch: &Path) -> (Cluster, Cluster, Cluster) {
    let primary = Cluster::start(15);
    primary.pgbench_init(3);
    let upstream = standby_of(&primary, scratch, "upstream");
    let standby = standby_of(&upstream, scratch, "standby");
    (primary, upstream, standby)
}

/// Promote `upstream` (its standby follows it onto timeline 2), write on
/// it, and wait until `standby` has replayed that; returns the writes.
fn switch_timeline(upstream: &Cluster, standby: &Cluster) -> common::PgbenchLoad {
    upstream.psql("SELECT pg_promote()");
    let load = upstream.pgbench_load(2);
    upstream.psql("CREATE TABLE after_switch AS SELECT 1 AS i; CHECKPOINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.try_psql("SELECT count(*) FROM after_switch") != Ok("1".into()) {
        assert!(Instant::now() < deadline, "the standby did not follow");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A restartpoint on the new timeline moves the standby's minimum
    // recovery point, where a backup of it stops, past the switch.
    standby.psql("CHECKPOINT");
    load
}

/// The WAL files in a copy's pg_wal.
fn wal_files(dest: &Path) -> Vec<String> {
    std::fs::read_dir(dest.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_standby_that_switched_timelines_before_the_backup_is_copied() {
    let scratch = scratch_dir();
    let (primary, upstream, standby) = cascade(scratch.path());
    drop(primary);
    let load = switch_timeline(&upstream, &standby);
    let dest = scratch.path().join("copy");
    let out = run(&[
        "-j",
        "4",
        "-x",
        "-c",
        "fast",
        &standby.dsn(),
        dest.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let wal = wal_files(&dest);
    assert!(wal.contains(&"00000002.history".to_string()), "{wal:?}");
    common::assert_verifies(15, &dest);
    standby.assert_no_leftovers();
    let copy = start_detached_copy(&dest, 15);
    assert_eq!(copy.psql("SELECT count(*) FROM after_switch"), "1");
    copy.assert_pgbench_consistent();
}

#[test]
fn a_timeline_switch_during_a_standby_backup_is_in_the_copy() {
    // The upstream is promoted mid-backup and the standby we copy follows
    // it onto timeline 2.
    let scratch = scratch_dir();
    let (primary, upstream, standby) = cascade(scratch.path());
    let dest = scratch.path().join("copy");
    let dsn = standby.dsn();
    let (mut child, rx) = spawn_verbose(&[
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        "-r",
        "3M",
        "--chunk-size",
        "1M",
        &dsn,
        dest.to_str().unwrap(),
    ]);
    let seen = wait_for_line(&rx, "read requests");
    drop(primary);
    let load = switch_timeline(&upstream, &standby);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup ended before the switch; slow it down"
    );
    let (code, stderr) = finish(child, rx, seen);
    load.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("over 2 timelines"), "{stderr}");
    let wal = wal_files(&dest);
    assert!(wal.contains(&"00000002.history".to_string()), "{wal:?}");
    for tli in ["00000001", "00000002"] {
        assert!(
            wal.iter().any(|w| w.len() == 24 && w.starts_with(tli)),
            "{wal:?}"
        );
    }
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    assert!(
        manifest.contains("\"Timeline\": 1") && manifest.contains("\"Timeline\": 2"),
        "{manifest}"
    );
    common::assert_verifies(15, &dest);
    standby.assert_no_leftovers();
    let copy = start_detached_copy(&dest, 15);
    assert_eq!(copy.psql("SELECT count(*) FROM after_switch"), "1");
    copy.assert_pgbench_consistent();
    copy.assert_amcheck();
}

/// The last WAL segment a copy needs: the one (16 MB, timeline 1) that
/// holds the byte before the stop point, its manifest's End-LSN.
fn last_needed_segment(dest: &Path) -> String {
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    let lsn = manifest
        .split("\"End-LSN\": \"")
        .nth(1)
        .and_then(|s| s.split("\"").next())
        .unwrap_or_else(|| panic!("no End-LSN in {manifest}"));
    let lsn: u64 = lsn.parse::<postgres::types::PgLsn>().unwrap().into();
    let segno = (lsn - 1) / (16 << 20);
    format!("00000001{:08X}{:08X}", segno / 256, segno % 256)
}

#[test]
fn without_wal_the_backup_waits_for_the_archive() {
    let scratch = scratch_dir();
    let archive = scratch.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    common::chown_postgres(&archive);
    // An archiver slow enough that a backup which does not wait for it
    // ends before the last segment is archived.
    let src = ClusterOptions::new(15)
        .conf("archive_mode = on")
        .conf(&format!(
            "archive_command = 'sleep 3; cp %p {}/%f'",
            archive.display()
        ))
        .start();
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    let dest = scratch.path().join("copy");
    let out = run(&["-v", "-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    assert_ok(&out);
    let last = last_needed_segment(&dest);
    assert!(
        archive.join(&last).is_file(),
        "{last} is archived when the tool exits"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the backup stop waits until the server has archived it")
            && stderr.contains(&format!("through segment {last}")),
        "{stderr}"
    );

    // The copy starts from the archive alone.
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(dest.join("postgresql.auto.conf"))
        .unwrap();
    writeln!(conf, "restore_command = 'cp {}/%f %p'", archive.display()).unwrap();
    std::fs::File::create(dest.join("recovery.signal")).unwrap();
    drop(src);
    let copy = Cluster::start_on_copy(&dest, 15);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "1000");
}

#[test]
fn without_wal_a_standby_that_archives_always_is_waited_for() {
    let scratch = scratch_dir();
    let archive = scratch.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    common::chown_postgres(&archive);
    let primary = Cluster::start(15);
    let command = format!(
        "archive_command = 'sleep 1; cp %p {}/%f'",
        archive.display()
    );
    let standby = standby_with(
        &primary,
        scratch.path(),
        "standby",
        &["archive_mode = always", &command],
    );
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    let dest = scratch.path().join("copy");
    let dsn = standby.dsn();
    let (mut child, rx) = spawn_verbose(&["-c", "fast", &dsn, dest.to_str().unwrap()]);
    let seen = wait_for_line(&rx, "waiting for the server to archive");
    // The standby archives the segment only once the primary completes it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the backup stop never returned");
        primary.psql("INSERT INTO t VALUES (0); SELECT pg_switch_wal()");
        std::thread::sleep(Duration::from_secs(1));
    }
    let (code, stderr) = finish(child, rx, seen);
    assert_eq!(code, 0, "{stderr}");
    let last = last_needed_segment(&dest);
    assert!(archive.join(&last).is_file(), "{last} is archived");
    assert!(
        stderr.contains(&format!("through segment {last}")),
        "{stderr}"
    );
    standby.assert_no_leftovers();
}

#[test]
fn without_wal_and_without_archiving_the_backup_warns() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let out = run(&["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warn:")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("archive_mode is off") && warnings[0].contains("-x"),
        "{stderr}"
    );
}
