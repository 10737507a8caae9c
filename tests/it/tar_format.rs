//! `-F t`: tar archives laid out as PostgreSQL's pg_basebackup writes them,
//! extracted with the system's tar (and gzip, zstd, lz4) as a DBA's restore
//! runbook would, then started and checked under pgbench's invariant.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    self, Cluster, assert_ok, assert_verifies, run, scratch_dir, send_signal, tool, verifybackup,
};

const VERSION: u32 = 15;

/// `tar -x` of `archive` into `into` (created), through the decompressor
/// its name calls for.
fn extract(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let name = archive.file_name().unwrap().to_str().unwrap();
    let script = if name.ends_with(".tar") {
        "tar -xf \"$0\" -C \"$1\""
    } else if name.ends_with(".tar.gz") {
        "tar -xzf \"$0\" -C \"$1\""
    } else if name.ends_with(".tar.zst") {
        "zstd -q -dc \"$0\" | tar -xf - -C \"$1\""
    } else if name.ends_with(".tar.lz4") {
        "lz4 -q -dc \"$0\" | tar -xf - -C \"$1\""
    } else {
        panic!("what is {name}?")
    };
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-ec", script])
        .arg(archive)
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn members(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .arg("-tf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A `-F t -x` backup with `-Z compress` of a cluster under pgbench writes:
/// exactly base, pg_wal and backup_manifest (13+) in DEST, restorable with tar.
fn tar_backup_restores(major: u32, compress: &str, ext: &str, wal_ext: &str) {
    let src = Cluster::start(major);
    src.pgbench_init(2);
    let scratch = scratch_dir();
    let dest = scratch.path().join("tars");
    let load = src.pgbench_load(4);
    let out = run(&[
        "-F",
        "t",
        "-Z",
        compress,
        "-x",
        "-j",
        "3",
        "--chunk-size",
        "256k",
        "-c",
        "fast",
        "-D",
        "0.2",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let base = format!("base{ext}");
    let wal = format!("pg_wal{wal_ext}");
    let mut want = vec![base.clone(), wal.clone()];
    if major >= 13 {
        want.push("backup_manifest".into());
    }
    want.sort();
    assert_eq!(listing(&dest), want, "what PostgreSQL writes, nothing else");

    let data = scratch.path().join("restored");
    extract(&dest.join(&base), &data);
    extract(&dest.join(&wal), &data.join("pg_wal"));
    assert!(data.join("backup_label").is_file());
    assert!(data.join("pg_wal/archive_status").is_dir());
    assert!(!data.join("postmaster.pid").exists());
    let copy = Cluster::start_on_copy(&data, major);
    copy.assert_pgbench_consistent();
    assert_eq!(copy.psql("SELECT count(*) FROM pgbench_accounts"), "200000");
}

#[test]
fn uncompressed_tar_restores_under_writes() {
    tar_backup_restores(VERSION, "none", ".tar", ".tar");
}

#[test]
fn gzip_tar_restores_under_writes() {
    tar_backup_restores(VERSION, "gzip", ".tar.gz", ".tar.gz");
}

#[test]
fn zstd_tar_restores_under_writes() {
    // As PostgreSQL's pg_basebackup: only gzip applies to pg_wal.tar.
    tar_backup_restores(VERSION, "zstd:3", ".tar.zst", ".tar");
}

#[test]
fn lz4_tar_restores_under_writes() {
    tar_backup_restores(VERSION, "lz4", ".tar.lz4", ".tar");
}

/// The oldest and newest majors at hand (10: no manifest; 17+: pg_wal/summaries).
#[test]
fn tar_restores_on_the_oldest_and_newest_majors() {
    let majors = common::available_majors();
    for major in [majors.first(), majors.last()].into_iter().flatten() {
        tar_backup_restores(*major, "gzip:1", ".tar.gz", ".tar.gz");
    }
}

/// The workers compress their own tasks; the pieces make one gzip file
/// that PostgreSQL 18's pg_verifybackup reads and checks as it is, without
/// extracting (it cannot parse WAL inside a tar: -n, as it says itself).
#[test]
fn pg_verifybackup_18_reads_the_gzip_tar_directly() {
    if !common::available_majors().contains(&18) {
        eprintln!("skipped: no PostgreSQL 18 here");
        return;
    }
    let src = Cluster::start(18);
    src.pgbench_init(1);
    let scratch = scratch_dir();
    let dest = scratch.path().join("tars");
    let load = src.pgbench_load(2);
    let out = run(&[
        "-F",
        "t",
        "-z",
        "-x",
        "-j",
        "3",
        "--chunk-size",
        "256k",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let verify = |dir: &Path| {
        Command::new(common::verifybackup_bin(18))
            .arg("-n")
            .arg(dir)
            .output()
            .unwrap()
    };
    let v = verify(&dest);
    assert!(
        v.status.success(),
        "pg_verifybackup -n {}: {}",
        dest.display(),
        String::from_utf8_lossy(&v.stderr)
    );
    // It really reads the archive: a manifest that wants other bytes fails.
    let manifest = dest.join("backup_manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let accounts = src.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    let line = text
        .lines()
        .find(|l| l.contains(&format!("\"Path\": \"{accounts}\"")))
        .expect("pgbench_accounts is in the manifest");
    let checksum = line.rsplit("\"Checksum\": \"").next().unwrap()[..8].to_string();
    let mut forged = text.replace(&checksum, "00000000");
    // Sign the forgery, so only the file's bytes can give it away.
    let body = forged.rfind("\"Manifest-Checksum\"").unwrap();
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        &forged[..body],
    ));
    forged.truncate(body);
    forged.push_str(&format!(
        "\"Manifest-Checksum\": \"{}\"}}\n",
        hex::encode(digest)
    ));
    std::fs::write(&manifest, &forged).unwrap();
    let v = verify(&dest);
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr).contains(&accounts),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
}

/// `pg_basebackup -F t -x DSN - | tar -x -C dir`: one stream, WAL under
/// pg_wal/ and backup_manifest inside, logging on stderr only.
#[test]
fn stdout_stream_restores_through_a_pipe() {
    let src = Cluster::start(VERSION);
    src.pgbench_init(1);
    let scratch = scratch_dir();
    let data = scratch.path().join("restored");
    std::fs::create_dir(&data).unwrap();
    let load = src.pgbench_load(2);
    let mut backup = tool()
        .args([
            "-F", "t", "-z", "-x", "-j", "2", "-v", "-c", "fast", "-D", "0.2",
        ])
        .arg(src.dsn())
        .arg("-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = backup.id();
    let untar = Command::new("tar")
        .args(["-xz", "-C"])
        .arg(&data)
        .stdin(backup.stdout.take().unwrap())
        .output()
        .unwrap();
    let out = backup.wait_with_output().unwrap();
    load.stop();
    assert_ok(&out);
    assert!(
        untar.status.success(),
        "tar -x: {}",
        String::from_utf8_lossy(&untar.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("backup complete"), "{stderr}");
    assert!(
        wal_scratch_of(pid).is_empty(),
        "the WAL scratch directory is gone"
    );
    assert!(data.join("backup_manifest").is_file());
    let wal = listing(&data.join("pg_wal"));
    assert!(wal.len() > 1, "the WAL is in the stream: {wal:?}");
    let copy = Cluster::start_on_copy(&data, VERSION);
    copy.assert_pgbench_consistent();
}

/// A user tablespace: standard output is refused before anything happens;
/// to DEST it becomes `<oid>.tar`, restorable by relocating it as a DBA
/// does (extract it, point the link and tablespace_map at it).
#[test]
fn tablespace_becomes_its_own_tar_and_refuses_stdout() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let location = scratch.path().join("ts");
    std::fs::create_dir(&location).unwrap();
    common::chown_postgres(&location);
    src.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        location.display()
    ));
    src.psql("CREATE TABLE t TABLESPACE ts AS SELECT generate_series(1, 20000) AS i");
    let oid = src.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");

    let out = run(&["-F", "t", "-x", "-c", "fast", &src.dsn(), "-"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing was written to stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tablespace") && stderr.trim().lines().count() == 1,
        "one clear line: {stderr}"
    );
    src.assert_no_leftovers();

    let dest = scratch.path().join("tars");
    assert_ok(&run(&[
        "-F",
        "t",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]));
    let ts_tar = format!("{oid}.tar");
    let mut want = vec![
        "backup_manifest".to_string(),
        "base.tar".into(),
        "pg_wal.tar".into(),
        ts_tar.clone(),
    ];
    want.sort();
    assert_eq!(listing(&dest), want);
    let base = members(&dest.join("base.tar"));
    assert_eq!(
        base.iter().rev().find(|m| !m.ends_with('/')).unwrap(),
        "global/pg_control",
        "pg_control is the last file of base.tar"
    );
    assert!(
        base.iter()
            .all(|m| !m.starts_with(&format!("pg_tblspc/{oid}/"))),
        "the tablespace's files are in its own tar"
    );
    let data = scratch.path().join("restored");
    extract(&dest.join("base.tar"), &data);
    extract(&dest.join("pg_wal.tar"), &data.join("pg_wal"));
    let link = data.join(format!("pg_tblspc/{oid}"));
    assert_eq!(std::fs::read_link(&link).unwrap(), location);
    assert_eq!(
        std::fs::read_to_string(data.join("tablespace_map")).unwrap(),
        format!("{oid} {}\n", location.display())
    );
    let relocated: PathBuf = scratch.path().join("ts-restored");
    extract(&dest.join(&ts_tar), &relocated);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&relocated, &link).unwrap();
    std::fs::write(
        data.join("tablespace_map"),
        format!("{oid} {}\n", relocated.display()),
    )
    .unwrap();
    common::chown_postgres(&relocated);
    let copy = Cluster::start_on_copy(&data, VERSION);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "20000");
    assert_eq!(
        copy.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        relocated.to_str().unwrap()
    );
}

/// pg_verifybackup 15 on an extracted -F t backup (SHA-256, so chunks are
/// checked in order), with -R: standby.signal and primary_conninfo are in
/// base.tar.
#[test]
fn pg_verifybackup_passes_on_an_extracted_tar() {
    let src = Cluster::start(VERSION);
    src.pgbench_init(1);
    let scratch = scratch_dir();
    let dest = scratch.path().join("tars");
    let load = src.pgbench_load(2);
    let out = run(&[
        "-F",
        "t",
        "-x",
        "-R",
        "-j",
        "3",
        "--chunk-size",
        "64k",
        "--manifest-checksums",
        "SHA256",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let data = scratch.path().join("restored");
    extract(&dest.join("base.tar"), &data);
    extract(&dest.join("pg_wal.tar"), &data.join("pg_wal"));
    std::fs::copy(dest.join("backup_manifest"), data.join("backup_manifest")).unwrap();
    assert!(data.join("standby.signal").is_file());
    let auto_conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto_conf.starts_with("# Do not edit this file manually!")
            && auto_conf.contains("primary_conninfo = '"),
        "{auto_conf}"
    );
    assert_verifies(VERSION, &data);
    // It really checks what the tar held.
    let accounts = src.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join(accounts))
        .unwrap();
    std::io::Write::write_all(&mut &f, b"x").unwrap();
    assert!(!verifybackup(VERSION, &data).status.success());
}

#[test]
fn nonsense_combinations_are_usage_errors() {
    let scratch = scratch_dir();
    let dest = scratch.path().join("d");
    let d = dest.to_str().unwrap();
    for args in [
        &["-Z", "gzip", "host=/nonexistent", d][..],
        &["-z", "host=/nonexistent", d],
        &["-F", "t", "-S", "-x", "host=/nonexistent", d],
        &["-F", "t", "-Z", "zstd:99", "host=/nonexistent", d],
        &["-F", "t", "-T", "/a=/b", "host=/nonexistent", d],
        &["host=/nonexistent", "-"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1,
            "{args:?}"
        );
        assert!(!dest.exists());
    }
}

/// Interrupted once the tar has data in it: nothing that looks complete is
/// left, DEST is removed (WAL scratch directory included), the server is clean.
#[test]
fn interrupted_tar_backup_leaves_nothing() {
    let src = Cluster::start(VERSION);
    src.pgbench_init(3);
    let scratch = scratch_dir();
    let dest = scratch.path().join("tars");
    let child = tool()
        .args(["-F", "t", "-z", "-x", "-j", "2", "-r", "4M", "-c", "fast"])
        .arg(src.dsn())
        .arg(&dest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = dest.join("base.tar.gz");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&base).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(Instant::now() < deadline, "base.tar.gz never grew");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dest.join(".pg_basebackup-wal/pg_wal").is_dir());
    send_signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(!dest.exists(), "the partial tars are removed");
    src.assert_no_leftovers();

    // To standard output the stream cannot be taken back: it has no
    // pg_control (written last), the tool says so, the scratch WAL is gone.
    let mut child = tool()
        .args(["-F", "t", "-x", "-j", "2", "-r", "4M", "-c", "fast"])
        .arg(src.dsn())
        .arg("-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stream = Vec::new();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while stream.len() < 1 << 20 {
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        stream.extend_from_slice(&buf[..n]);
    }
    send_signal(&child, "INT");
    std::io::Read::read_to_end(&mut stdout, &mut stream).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT restorable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cut = scratch.path().join("cut.tar");
    std::fs::write(&cut, &stream).unwrap();
    let listed = Command::new("tar").arg("-tf").arg(&cut).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("base/"), "{listed}");
    assert!(!listed.contains("global/pg_control"), "{listed}");
    let left = wal_scratch_of(pid);
    assert!(left.is_empty(), "{left:?}");
}

/// The WAL scratch directories the run `pid` left in the temporary
/// directory (`pg_basebackup-wal-<pid>-<random>`, made by tempfile).
fn wal_scratch_of(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("pg_basebackup-wal-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}
