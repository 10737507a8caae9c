//! --delta: refreshing and resuming a copy fetches only what changed, and
//! the result restores like a fresh backup (started and checked, and
//! accepted by pg_verifybackup).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    self, Cluster, assert_ok, assert_verifies, run, scratch_dir, send_signal, tool,
};

const VERSION: u32 = 15;
const MARKER: &str = "pg_basebackup_delta.in_progress";

/// The numbers of the summary line a --delta run always prints.
#[derive(Debug)]
struct Summary {
    compared: u64,
    trusted: u64,
    fetched: u64,
}

fn summary(out: &Output) -> Summary {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pg_basebackup: delta: "))
        .unwrap_or_else(|| panic!("no delta summary in: {stdout}"));
    let number_before = |what: &str| -> u64 {
        let head = &line[..line.find(what).unwrap_or_else(|| panic!("{what}: {line}"))];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    Summary {
        compared: number_before(" bytes compared"),
        trusted: number_before(" bytes kept unhashed"),
        fetched: number_before(" bytes fetched"),
    }
}

/// Bytes of regular files under `dir` (not following links).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            total += tree_bytes(&e.path());
        } else if t.is_file() {
            total += e.metadata().unwrap().len();
        }
    }
    total
}

/// Every path under `dir` with its size and mtime, to show nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.path().symlink_metadata().unwrap();
        out.push((
            e.path().display().to_string(),
            m.len(),
            m.modified().unwrap(),
        ));
        if m.is_dir() {
            out.extend(snapshot(&e.path()));
        }
    }
    out.sort();
    out
}

fn full_backup(src: &Cluster, dest: &Path) {
    assert_ok(&run(&[
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]));
}

fn delta(src: &Cluster, dest: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--delta", "-j", "2", "-x", "-c", "fast"];
    args.extend_from_slice(extra);
    let dsn = src.dsn();
    args.extend([dsn.as_str(), dest.to_str().unwrap()]);
    run(&args)
}

/// Mostly cold data, as in most clusters: pgbench's random updates touch
/// every chunk of its tables, a table loaded once (about 100 MB) is never
/// written again.
fn mostly_cold_cluster(pgbench_scale: u32) -> Cluster {
    let src = Cluster::start(VERSION);
    src.pgbench_init(pgbench_scale);
    src.psql(
        "CREATE TABLE cold AS SELECT i, repeat('x', 200) AS pad FROM generate_series(1, 400000) AS i",
    );
    src
}

#[test]
fn refresh_after_pgbench_writes_fetches_little_and_restores() {
    let src = mostly_cold_cluster(2);
    src.psql("CREATE TABLE dropped AS SELECT generate_series(1, 100000) AS i");
    let dropped = src.psql("SELECT pg_relation_filepath('dropped')");
    let cold = src.psql("SELECT pg_relation_filepath('cold')");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    full_backup(&src, &dest);
    let full_bytes = tree_bytes(&dest);

    // The source moves on; DEST gains a stray file and a damaged chunk in a
    // table nobody writes to (only the comparison can notice it).
    let load = src.pgbench_load(2);
    std::thread::sleep(Duration::from_secs(3));
    src.psql("DROP TABLE dropped");
    std::fs::write(dest.join("base/stray"), b"not from the server").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dest.join(&cold))
        .unwrap();
    f.write_all_at(b"garbage!", 40 << 20).unwrap();
    drop(f);

    let out = delta(&src, &dest, &[]);
    load.stop();
    assert_ok(&out);
    let s = summary(&out);
    assert!(s.compared > full_bytes / 2, "{s:?}, full copy {full_bytes}");
    assert!(
        s.fetched < full_bytes / 4,
        "a refresh fetches far less than a full copy: {s:?}, full copy {full_bytes}"
    );
    assert!(
        s.fetched > 0,
        "the damaged chunk and pgbench's writes are fetched"
    );
    assert!(!dest.join(MARKER).exists());
    assert!(!dest.join("base/stray").exists(), "stray file removed");
    assert!(
        !dest.join(&dropped).exists(),
        "dropped table's file removed"
    );
    assert_verifies(15, &dest);

    // Again, trusting mtimes: files untouched since the last start are not hashed.
    let out = delta(&src, &dest, &["--trust-mtime"]);
    assert_ok(&out);
    let s = summary(&out);
    assert!(s.trusted > 0, "{s:?}");
    assert_verifies(15, &dest);

    let copy = Cluster::start_on_copy(&dest, VERSION);
    copy.assert_pgbench_consistent();
    assert_eq!(copy.psql("SELECT count(*) FROM pgbench_accounts"), "200000");
    assert_eq!(
        copy.psql("SELECT count(*), sum(i), bool_and(pad = repeat('x', 200)) FROM cold"),
        "400000|80000200000|t",
        "the damaged chunk was repaired"
    );
    assert!(copy.try_psql("SELECT 1 FROM dropped").is_err());
}

#[test]
fn interrupted_refresh_resumes_and_restores() {
    let src = mostly_cold_cluster(1);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let db_bytes: u64 = src
        .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")
        .parse()
        .unwrap();
    // Into an empty DEST, slowly, cut at about half way.
    let mut child = tool()
        .args(["--delta", "-j", "2", "-x", "-c", "fast", "-r", "8M"])
        .args([&src.dsn(), dest.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tree_bytes(&dest.join("base")) < db_bytes / 2 {
        assert!(Instant::now() < deadline, "the copy never got half way");
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(100));
    }
    send_signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.join(MARKER).is_file(), "the marker names the cluster");
    for f in ["backup_label", "backup_manifest", "global/pg_control"] {
        assert!(!dest.join(f).exists(), "{f}: the partial copy cannot start");
    }
    let kept = tree_bytes(&dest.join("base"));

    let load = src.pgbench_load(2);
    let out = delta(&src, &dest, &["--manifest-checksums", "SHA256"]);
    load.stop();
    assert_ok(&out);
    let s = summary(&out);
    assert!(s.compared > 0, "{s:?}");
    assert!(
        s.fetched < db_bytes * 4 / 5,
        "what the first run copied is not fetched again: {s:?}, kept {kept}, database {db_bytes}"
    );
    assert!(!dest.join(MARKER).exists());
    assert_verifies(15, &dest);
    let copy = Cluster::start_on_copy(&dest, VERSION);
    copy.assert_pgbench_consistent();
    assert_eq!(copy.psql("SELECT count(*) FROM pgbench_accounts"), "100000");
    assert_eq!(
        copy.psql("SELECT count(*), sum(i) FROM cold"),
        "400000|80000200000"
    );
}

#[test]
fn a_copy_of_another_cluster_is_refused_and_untouched() {
    let a = Cluster::start(VERSION);
    let b = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    full_backup(&a, &dest);
    let before = snapshot(&dest);
    let out = delta(&b, &dest, &[]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another cluster") && stderr.trim().lines().count() == 1,
        "one clear line: {stderr}"
    );
    assert_eq!(snapshot(&dest), before, "DEST untouched");

    // Neither is a directory that holds no copy at all.
    let stranger = scratch.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    std::fs::write(stranger.join("precious"), b"keep me").unwrap();
    let out = delta(&a, &stranger, &[]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        std::fs::read(stranger.join("precious")).unwrap(),
        b"keep me"
    );

    // The copy itself still refreshes from its own cluster.
    let out = delta(&a, &dest, &[]);
    assert_ok(&out);
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(copy.psql("SELECT 1"), "1");
}

#[test]
fn postgresql_10_is_refused_clearly() {
    let Some(_) = common::try_bin_dir(10) else {
        eprintln!("PostgreSQL 10 is not available: skipped");
        return;
    };
    let src = Cluster::start(10);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let out = delta(&src, &dest, &[]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PostgreSQL 11"));
    assert!(!dest.exists(), "nothing written");
}

#[test]
fn tablespaces_of_the_earlier_copy_are_refreshed_and_dropped_ones_emptied() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let (live1, live2) = (scratch.path().join("ts1"), scratch.path().join("ts2"));
    let (copy1, copy2) = (
        scratch.path().join("ts1-copy"),
        scratch.path().join("ts2-copy"),
    );
    for (name, dir) in [("ts1", &live1), ("ts2", &live2)] {
        std::fs::create_dir(dir).unwrap();
        common::chown_postgres(dir);
        src.psql(&format!(
            "CREATE TABLESPACE {name} LOCATION '{}'",
            dir.display()
        ));
    }
    src.psql("CREATE TABLE kept TABLESPACE ts1 AS SELECT generate_series(1, 1000) AS i");
    src.psql("CREATE TABLE gone TABLESPACE ts2 AS SELECT generate_series(1, 1000) AS i");
    let oid2 = src.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts2'");
    let map1 = format!("-T{}={}", live1.display(), copy1.display());
    let map2 = format!("-T{}={}", live2.display(), copy2.display());
    let dest = scratch.path().join("copy");
    assert_ok(&run(&[
        "-x",
        "-c",
        "fast",
        &map1,
        &map2,
        &src.dsn(),
        dest.to_str().unwrap(),
    ]));
    assert!(std::fs::read_dir(&copy2).unwrap().count() > 0);
    let neighbour = scratch.path().join("neighbour");
    std::fs::write(&neighbour, b"not part of the copy").unwrap();
    let version_dir = std::fs::read_dir(&copy1)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(version_dir.join("stray"), b"x").unwrap();

    src.psql("DROP TABLE gone");
    src.psql("DROP TABLESPACE ts2");
    src.psql("INSERT INTO kept SELECT generate_series(1001, 2000)");
    let out = delta(&src, &dest, &[&map1]);
    assert_ok(&out);
    assert!(
        !dest.join("pg_tblspc").join(&oid2).exists(),
        "link of the dropped tablespace removed"
    );
    assert_eq!(
        std::fs::read_dir(&copy2).unwrap().count(),
        0,
        "its copy emptied"
    );
    assert!(
        !version_dir.join("stray").exists(),
        "stray file in a kept tablespace removed"
    );
    assert_eq!(std::fs::read(&neighbour).unwrap(), b"not part of the copy");
    assert_verifies(15, &dest);
    common::chown_postgres(&copy1);
    drop(src);
    std::fs::remove_dir_all(&live1).unwrap();
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(
        copy.psql("SELECT count(*), sum(i) FROM kept"),
        "2000|2001000"
    );
}
