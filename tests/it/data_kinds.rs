//! What a cluster can hold: tablespaces, unlogged tables, relations bigger
//! than a chunk, tables dropped mid-backup, awkward names, and a backup
//! taken by a role that is not a superuser.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{
    self, Cluster, ClusterOptions, PgbenchLoad, assert_ok, chown_postgres, run, scratch_dir, tool,
};

#[test]
fn tablespace_is_copied_to_its_mapped_directory() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let live_ts = scratch.path().join("ts");
    std::fs::create_dir(&live_ts).unwrap();
    chown_postgres(&live_ts);
    src.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        live_ts.display()
    ));
    src.psql("CREATE TABLE in_ts TABLESPACE ts AS SELECT generate_series(1, 12345) AS i");
    let dest = scratch.path().join("copy");

    // Unmapped, the copy would go into the live tablespace: refused first.
    let out = run(&["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-T"),
        "the error says how to relocate it"
    );
    assert!(
        !dest.exists(),
        "nothing is created when the backup is refused"
    );

    let copy_ts = scratch.path().join("ts-copy");
    let mapping = format!("{}={}", live_ts.display(), copy_ts.display());
    let out = run(&[
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        "-T",
        &mapping,
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let oid = src.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");
    assert_eq!(
        std::fs::read_link(dest.join("pg_tblspc").join(&oid)).unwrap(),
        copy_ts
    );
    assert!(
        std::fs::read_to_string(dest.join("tablespace_map"))
            .unwrap()
            .contains(&copy_ts.display().to_string())
    );
    chown_postgres(&copy_ts);
    drop(src); // the copy must not lean on the live tablespace
    std::fs::remove_dir_all(&live_ts).unwrap();
    let copy = Cluster::start_on_copy(&dest, 15);
    assert_eq!(copy.psql("SELECT count(*) FROM in_ts"), "12345");
    assert_eq!(
        copy.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        copy_ts.display().to_string()
    );
}

#[test]
fn unlogged_tables_come_back_empty_and_big_files_are_reassembled() {
    let src = Cluster::start(15);
    src.psql("CREATE UNLOGGED TABLE scratchpad AS SELECT generate_series(1, 50000) AS i");
    src.psql("CREATE TABLE big AS SELECT i, md5(i::text) AS h FROM generate_series(1, 100000) i; CHECKPOINT");
    let big = src.psql("SELECT pg_relation_filepath('big')");
    let unlogged = src.psql("SELECT pg_relation_filepath('scratchpad')");
    let source_bytes = std::fs::read(src.data.join(&big)).unwrap();
    assert!(
        source_bytes.len() > 6 * 65536,
        "the table spans many chunks"
    );

    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let out = run(&[
        "-j",
        "4",
        "-x",
        "-c",
        "fast",
        "--chunk-size",
        "64k",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(dest.join(&big)).unwrap(),
        source_bytes,
        "chunks reassembled exactly"
    );
    assert!(
        !dest.join(&unlogged).exists(),
        "an unlogged table's main fork is not copied"
    );
    assert!(
        dest.join(format!("{unlogged}_init")).exists(),
        "its init fork is"
    );

    let copy = Cluster::start_on_copy(&dest, 15);
    assert_eq!(copy.psql("SELECT count(*) FROM scratchpad"), "0");
    assert_eq!(
        copy.psql("SELECT count(*), sum(i) FROM big"),
        "100000|5000050000"
    );
}

#[test]
fn tables_dropped_during_the_backup_do_not_fail_it() {
    let src = Cluster::start(15);
    src.psql("DO $$ BEGIN FOR n IN 1..40 LOOP EXECUTE format('CREATE TABLE drop_me_%s AS SELECT generate_series(1, 20000) AS i', n); END LOOP; END $$");
    src.psql("CREATE TABLE keep AS SELECT generate_series(1, 777) AS i; CHECKPOINT");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    // A slow transfer (-r) keeps the copy running while the tables go.
    let child = tool()
        .args([
            "-j",
            "2",
            "-x",
            "-c",
            "fast",
            "-r",
            "2M",
            &src.dsn(),
            dest.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    src.psql("DO $$ BEGIN FOR n IN 1..40 LOOP EXECUTE format('DROP TABLE drop_me_%s', n); END LOOP; END $$; CHECKPOINT");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = Cluster::start_on_copy(&dest, 15);
    assert_eq!(
        copy.psql("SELECT count(*) FROM pg_class WHERE relname LIKE 'drop_me_%'"),
        "0"
    );
    assert_eq!(copy.psql("SELECT count(*) FROM keep"), "777");
}

#[test]
fn awkward_database_and_relation_names_survive() {
    let src = Cluster::start(15);
    src.psql("CREATE DATABASE \"my db ü\"");
    let dsn = format!(
        "{} dbname='my db ü'",
        src.dsn().replace(" dbname=postgres", "")
    );
    let out = common::client_cmd("psql")
        .args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            &dsn,
            "-c",
            "CREATE TABLE \"tä ble\" AS SELECT generate_series(1, 42) AS \"c o l\"",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    // Connect to the awkwardly named database itself.
    assert!(
        run(&["-x", "-c", "fast", &dsn, dest.to_str().unwrap()])
            .status
            .success()
    );
    let copy = Cluster::start_on_copy(&dest, 15);
    let out = common::client_cmd("psql")
        .args([
            "-XAtq",
            &format!(
                "{} dbname='my db ü'",
                copy.dsn().replace(" dbname=postgres", "")
            ),
            "-c",
            "SELECT sum(\"c o l\") FROM \"tä ble\"",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "903");
}

#[test]
fn a_role_with_minimal_grants_backs_up_and_one_without_is_told_what_to_grant() {
    let src = Cluster::start(15);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 100) AS i");
    src.psql("CREATE ROLE backup_role LOGIN REPLICATION; CREATE ROLE nobody LOGIN");
    common::grant_backup_privileges(&src, "backup_role");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let dsn = |role: &str| src.dsn().replace("user=postgres", &format!("user={role}"));

    let out = run(&["-x", "-c", "fast", &dsn("nobody"), dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO nobody;"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pg_catalog.pg_backup_start(text, boolean)"),
        "{stderr}"
    );
    assert!(!dest.exists(), "DEST untouched when the preflight fails");

    let out = run(&[
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        &dsn("backup_role"),
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no replication slot"),
        "REPLICATION allows the slot"
    );
    let copy = Cluster::start_on_copy(&dest, 15);
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "100");
}

#[test]
fn in_place_tablespaces_are_copied_as_directories() {
    // allow_in_place_tablespaces exists from 15 on, and recovery refuses a
    // directory in pg_tblspc without it (so the source has it in its
    // configuration, which the copy inherits). pg_tablespace_location gives
    // the relative pg_tblspc/<oid> for them (16+, and recent 15 releases).
    let majors: Vec<u32> = common::available_majors()
        .into_iter()
        .filter(|m| *m >= 15)
        .collect();
    assert!(majors.contains(&15), "PostgreSQL 15 is always tested");
    for major in majors {
        let src = ClusterOptions::new(major)
            .conf("allow_in_place_tablespaces = on")
            .start();
        src.psql("CREATE TABLESPACE in_place LOCATION ''");
        src.psql("CREATE TABLE t TABLESPACE in_place AS SELECT generate_series(1, 23456) AS i");
        let oid = src.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'in_place'");
        let location = src.psql(&format!("SELECT pg_tablespace_location({oid})"));
        eprintln!("PostgreSQL {major}: in-place tablespace location {location:?}");
        let scratch = scratch_dir();
        let dest = scratch.path().join("copy");
        let out = run(&[
            "-j",
            "2",
            "-x",
            "-c",
            "fast",
            &src.dsn(),
            dest.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{major}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let in_copy = dest.join("pg_tblspc").join(&oid);
        let kind = std::fs::symlink_metadata(&in_copy).unwrap().file_type();
        assert!(
            kind.is_dir(),
            "{major}: {} is a directory",
            in_copy.display()
        );
        src.psql("INSERT INTO t VALUES (0)");
        drop(src);
        let copy = Cluster::start_on_copy(&dest, major);
        assert_eq!(copy.psql("SELECT count(*) FROM t"), "23456", "{major}");
        assert_eq!(
            copy.psql(&format!("SELECT pg_tablespace_location({oid})")),
            location,
            "{major}"
        );
    }
}

/// A file and a directory whose names are not valid UTF-8 (Latin-1), as
/// PostgreSQL's own pg_basebackup tests put them into a data directory.
fn plant_latin1_names(data: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let file = data.join(OsStr::from_bytes(b"FOO\xe0\xe0\xe0BAR"));
    let dir = data.join(OsStr::from_bytes(b"dir\xe9"));
    std::fs::create_dir(&dir).unwrap();
    let inner = dir.join(OsStr::from_bytes(b"inner\xff"));
    // Bigger than one --chunk-size 8k request: read in several.
    let contents = (0..20000u32)
        .flat_map(|i| i.to_le_bytes())
        .collect::<Vec<u8>>();
    std::fs::write(&file, b"latin-1 named\n").unwrap();
    std::fs::write(&inner, &contents).unwrap();
    chown_postgres(&file);
    chown_postgres(&dir);
    vec![
        (
            PathBuf::from(OsStr::from_bytes(b"FOO\xe0\xe0\xe0BAR")),
            b"latin-1 named\n".to_vec(),
        ),
        (
            PathBuf::from(OsStr::from_bytes(b"dir\xe9/inner\xff")),
            contents,
        ),
    ]
}

/// Every planted name is in `dir` with its contents, byte for byte.
fn assert_planted(dir: &Path, planted: &[(PathBuf, Vec<u8>)]) {
    for (rel, contents) in planted {
        assert_eq!(&std::fs::read(dir.join(rel)).unwrap(), contents, "{rel:?}");
    }
}

/// A plain -j 4 copy in small chunks holds the names, its manifest
/// hex-encodes them, and pg_verifybackup accepts it.
fn latin1_plain_copy(src: &Cluster, dest: &Path, planted: &[(PathBuf, Vec<u8>)]) {
    let out = run(&[
        "-j",
        "4",
        "-x",
        "-c",
        "fast",
        "--chunk-size",
        "8k",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert_planted(dest, planted);
    let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
    assert!(
        manifest.contains("\"Encoded-Path\": \"464f4fe0e0e0424152\""),
        "{manifest}"
    );
    common::assert_verifies(15, dest);
}

/// --delta refreshes that copy: its pruning keeps none of the old bytes
/// of these names, and they are written anew.
fn latin1_delta_refresh(src: &Cluster, dest: &Path, planted: &[(PathBuf, Vec<u8>)]) {
    std::fs::write(dest.join(&planted[0].0), b"stale").unwrap();
    let out = run(&[
        "--delta",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert_ok(&out);
    assert_planted(dest, planted);
    common::assert_verifies(15, dest);
}

/// The same as tar archives (the last backup under `load`, which it
/// stops): the names are in the headers as bytes. Returns the data
/// directory extracted from them.
fn latin1_tars(
    src: &Cluster,
    scratch: &Path,
    planted: &[(PathBuf, Vec<u8>)],
    load: PgbenchLoad,
) -> PathBuf {
    let tars = scratch.join("tars");
    let out = run(&[
        "-F",
        "t",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        tars.to_str().unwrap(),
    ]);
    load.stop();
    assert_ok(&out);
    let restored = scratch.join("restored");
    std::fs::create_dir(&restored).unwrap();
    for (archive, into) in [
        ("base.tar", restored.clone()),
        ("pg_wal.tar", restored.join("pg_wal")),
    ] {
        let status = Command::new("tar")
            .arg("-xf")
            .arg(tars.join(archive))
            .arg("-C")
            .arg(&into)
            .status()
            .unwrap();
        assert!(status.success(), "tar -xf {archive}");
    }
    assert_planted(&restored, planted);
    std::fs::copy(
        tars.join("backup_manifest"),
        restored.join("backup_manifest"),
    )
    .unwrap();
    common::assert_verifies(15, &restored);
    restored
}

/// -S --stdin names them as bytes.
fn latin1_stdin(src: &Cluster, scratch: &Path, planted: &[(PathBuf, Vec<u8>)]) {
    let some = scratch.join("some");
    let mut child = tool()
        .args(["-S", "--stdin", &src.dsn(), some.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut names = Vec::new();
    for (rel, _) in planted {
        names.extend_from_slice(rel.as_os_str().as_bytes());
        names.push(b'\n');
    }
    child.stdin.take().unwrap().write_all(&names).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    assert_planted(&some, planted);
}

#[test]
fn names_that_are_not_utf8_are_copied_byte_for_byte() {
    let src = Cluster::start(15);
    src.pgbench_init(1);
    let planted = plant_latin1_names(&src.data);
    let load = src.pgbench_load(2);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    latin1_plain_copy(&src, &dest, &planted);
    latin1_delta_refresh(&src, &dest, &planted);
    let restored = latin1_tars(&src, scratch.path(), &planted, load);
    latin1_stdin(&src, scratch.path(), &planted);

    drop(src);
    let copy = Cluster::start_on_copy(&dest, 15);
    copy.assert_pgbench_consistent();
    drop(copy);
    let copy = Cluster::start_on_copy(&restored, 15);
    copy.assert_pgbench_consistent();
}
