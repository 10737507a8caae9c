//! Bad input and secrets: every refusal is one line (plus the server's
//! hint) with its own exit code, a DEST inside the server's own
//! directories is refused, and no password is ever printed.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use crate::common::{self, Cluster, run, scratch_dir, tool};

/// Input the tool must refuse: its arguments (DSN `dsn`, DEST `dest`, and
/// `file`, a regular file, and `inside`, a path in the live data
/// directory), the exit code, and what the case is.
fn bad_inputs(
    dsn: &str,
    dest: &str,
    file: &Path,
    inside: &Path,
) -> Vec<(Vec<String>, i32, &'static str)> {
    vec![
        (
            vec!["host=/tmp port='unterminated".into(), dest.into()],
            2,
            "malformed DSN",
        ),
        (vec!["bogus_key=1".into(), dest.into()], 2, "unknown key"),
        (
            vec![
                "host=no-such-host.invalid user=postgres".into(),
                dest.into(),
            ],
            3,
            "unknown host",
        ),
        (
            vec!["host=127.0.0.1 port=1 user=postgres".into(), dest.into()],
            3,
            "refused connection",
        ),
        (
            vec![
                dsn.replace("dbname=postgres", "dbname=nosuchdb"),
                dest.into(),
            ],
            3,
            "database does not exist",
        ),
        (
            vec!["-j".into(), "0".into(), dsn.into(), dest.into()],
            2,
            "-j 0",
        ),
        (
            vec!["-j".into(), "500".into(), dsn.into(), dest.into()],
            4,
            "-j beyond max_connections",
        ),
        (
            vec!["-D".into(), "0".into(), dsn.into(), dest.into()],
            2,
            "-D 0",
        ),
        (
            vec!["-D".into(), "-2".into(), dsn.into(), dest.into()],
            2,
            "-D negative",
        ),
        (
            vec![dsn.into(), file.to_str().unwrap().into()],
            5,
            "DEST is a file",
        ),
        (
            vec![dsn.into(), inside.to_str().unwrap().into()],
            5,
            "DEST inside the live data directory",
        ),
    ]
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
    for (args, code, what) in bad_inputs(&dsn, d, &file, &inside) {
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
            // Linger as a web server does: closing with the client's bytes
            // unread would send a reset, which can reach the client before
            // the answer ("Connection reset by peer" instead of the answer).
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    port
}

/// A server with role pwuser (password Sekr1t-pw), which must give its
/// password on TCP.
fn cluster_with_password_role() -> Cluster {
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
    src
}

/// A `-d -v -x -R` backup of `src` into `dest` as pwuser, the password
/// given `how`: in the DSN (`dsn`), in a URI (`uri`), in PGPASSWORD
/// (`env`), in the password file `pgpass` (`pgpass`), or a wrong one
/// (`wrong`).
fn backup_as_pwuser(src: &Cluster, how: &str, pgpass: &Path, dest: &Path) -> Output {
    let tcp = format!("host=127.0.0.1 port={} dbname=postgres", src.port);
    let mut cmd = tool();
    let dsn = match how {
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
            cmd.env("PGPASSFILE", pgpass);
            format!("{tcp} user=pwuser")
        }
        _ => format!("{tcp} user=pwuser password=Sekr1t-pw-wrong"),
    };
    cmd.args([
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
    .unwrap()
}

#[test]
fn no_password_is_ever_printed() {
    let src = cluster_with_password_role();
    let scratch = scratch_dir();
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
        let out = backup_as_pwuser(&src, how, &pgpass, &dest);
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
