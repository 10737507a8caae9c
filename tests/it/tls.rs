//! TLS end to end, with the real binary against a real PostgreSQL 15 server
//! using certificates made here with the openssl command: libpq's sslmode
//! rules (disable, allow, prefer, require, verify-ca, verify-full), the root
//! certificate from sslrootcert, PGSSLROOTCERT or ~/.postgresql/root.crt,
//! client certificates, and the PGSSL* environment variables.
//!
//! Every server here refuses TCP sessions without TLS (`hostnossl ... reject`
//! ahead of initdb's trust lines), so a backup that succeeds proves that all
//! of the tool's sessions used TLS. The server certificate names only
//! "localhost" (DNS), never the address 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{
    self, Cluster, ClusterOptions, chown_postgres, client_cmd, scratch_dir, set_mode,
};

const VERSION: u32 = 15;

/// Run the openssl command in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a server certificate it signed for DNS name "localhost" only,
/// a client certificate for user "postgres", and an unrelated second CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki::with_server("/CN=localhost", "subjectAltName = DNS:localhost\n")
    }

    /// The server certificate with this subject and these extra extensions.
    fn with_server(subject: &str, extensions: &str) -> Pki {
        let dir = scratch_dir();
        let d = dir.path();
        write_openssl_configs(d, extensions);
        for (name, cnf) in [("ca", "ca.cnf"), ("other", "other.cnf")] {
            self_signed(d, name, cnf);
        }
        for (name, cn, serial) in [("server", subject, "2"), ("client", "/CN=postgres", "3")] {
            signed_by_ca(d, name, cn, serial);
        }
        // The server's key: owned by the server user, 0600 (PostgreSQL checks).
        chown_postgres(&d.join("server.key"));
        set_mode(&d.join("server.key"), 0o600);
        // The client's key: ours (root or not), 0600 (libpq checks).
        set_mode(&d.join("client.key"), 0o600);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

/// Every key here: elliptic curve P-256.
const EC_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// The openssl configurations in `d`: ca.cnf and other.cnf for the two CAs,
/// server.ext (with `extensions` added) and client.ext for the certificates
/// the first CA signs.
fn write_openssl_configs(d: &Path, extensions: &str) {
    for (cnf, cn) in [
        ("ca.cnf", "pg_basebackup test CA"),
        ("other.cnf", "some other CA"),
    ] {
        std::fs::write(
            d.join(cnf),
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3\n\
                 [dn]\nCN = {cn}\n\
                 [v3]\nbasicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        d.join("server.ext"),
        format!(
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n{extensions}"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("client.ext"),
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n",
    )
    .unwrap();
}

/// A self-signed CA in `d`: NAME.key and NAME.crt, from the configuration `cnf`.
fn self_signed(d: &Path, name: &str, cnf: &str) {
    let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
    let mut args = vec!["req", "-x509", "-config", cnf, "-nodes", "-days", "2"];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &crt]);
    openssl(d, &args);
}

/// NAME.key and NAME.crt in `d` for subject `cn`, signed by ca.crt with the
/// extensions of NAME.ext.
fn signed_by_ca(d: &Path, name: &str, cn: &str, serial: &str) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    let mut args = vec!["req", "-new", "-nodes", "-subj", cn];
    args.extend(EC_KEY);
    args.extend(["-keyout", &key, "-out", &csr]);
    openssl(d, &args);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
}

/// A server with TLS on (our certificate, our CA for client certificates)
/// that refuses TCP sessions without TLS; `first` hba lines go on top.
fn tls_cluster(pki: &Pki, first: &[&str]) -> Cluster {
    let c = ClusterOptions::new(VERSION)
        .conf("ssl = on")
        .conf(&format!("ssl_cert_file = '{}'", pki.file("server.crt")))
        .conf(&format!("ssl_key_file = '{}'", pki.file("server.key")))
        .conf(&format!("ssl_ca_file = '{}'", pki.file("ca.crt")))
        .start();
    let hba = c.data.join("pg_hba.conf");
    let mut lines: Vec<String> = first.iter().map(|l| l.to_string()).collect();
    lines.push("hostnossl all all 127.0.0.1/32 reject".into());
    lines.push(std::fs::read_to_string(&hba).unwrap());
    // Rewritten in place: the file stays the server user's.
    std::fs::write(&hba, lines.join("\n")).unwrap();
    c.psql("SELECT pg_reload_conf()");
    // The reload is asynchronous: wait until a plain TCP session is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = client_cmd("psql")
            .args(["-XAtc", "SELECT 1"])
            .arg(format!("{} sslmode=disable", c.tcp_dsn()))
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("no encryption"), "unexpected refusal: {err}");
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "pg_hba.conf never took effect:\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// "host=NAME port=N user=postgres dbname=postgres" plus `extra`.
fn dsn(c: &Cluster, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user=postgres dbname=postgres {extra}",
        c.port
    )
}

/// The tool with HOME set to `home` (a fresh empty directory unless the
/// test put a ~/.postgresql there), the given PG* variables, and the args.
fn run(home: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = common::tool();
    cmd.env("HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().expect("run pg_basebackup");
    eprintln!(
        "{env:?} pg_basebackup {args:?} -> {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A backup of `dsn` into `dest` (-c fast, plus `extra` flags) succeeds.
fn backup_ok(home: &Path, env: &[(&str, &str)], extra: &[&str], dsn: &str, dest: &Path) {
    let mut args = vec!["-c", "fast"];
    args.extend(extra);
    args.extend([dsn, dest.to_str().unwrap()]);
    let out = run(home, env, &args);
    assert!(
        out.status.success(),
        "backup with {dsn:?} {env:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dest.join("backup_label").is_file(), "no backup_label");
    assert!(dest.join("global/pg_control").is_file(), "no pg_control");
}

/// The connection is refused: exit code 3, one line on stderr holding every
/// one of `needles`, DEST not created. Returns the line.
fn refused(home: &Path, env: &[(&str, &str)], dsn: &str, dest: &Path, needles: &[&str]) -> String {
    let out = run(
        home,
        env,
        &["-x", "-c", "fast", dsn, dest.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(3), "{dsn:?} {env:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{dsn:?} {env:?}: not one line: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{dsn:?} {env:?}: no {n:?} in: {stderr}");
    }
    assert!(!dest.exists(), "{dsn:?} {env:?}: DEST created");
    stderr
}

/// A fresh empty directory to serve as HOME.
fn empty_home(scratch: &Path) -> PathBuf {
    let home = scratch.join("home");
    std::fs::create_dir(&home).unwrap();
    home
}

#[test]
fn verify_full_with_the_certified_host_name_backs_up_over_tls() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &[]);
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 5000) AS i");
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    let dest = scratch.path().join("copy");
    let ca = pki.file("ca.crt");
    // Two workers: every session of the tool goes through TLS (or is refused).
    backup_ok(
        &home,
        &[],
        &["-x", "-j", "2"],
        &dsn(
            &src,
            "localhost",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        &dest,
    );
    let copy = Cluster::start_on_copy(&dest, VERSION);
    assert_eq!(copy.psql("SELECT sum(i) FROM t"), "12502500");

    // hostaddr: the address connected to; the name checked is still host's.
    let dest2 = scratch.path().join("copy2");
    backup_ok(
        &home,
        &[],
        &[],
        &dsn(
            &src,
            "localhost",
            &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
        ),
        &dest2,
    );
}

#[test]
fn verify_full_refuses_a_host_name_the_certificate_does_not_name() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &[]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    let dest = scratch.path().join("copy");
    let ca = pki.file("ca.crt");
    // The right server, a trusted chain, but the certificate names only
    // localhost (psql: server certificate for "localhost" does not match
    // host name "127.0.0.1").
    let line = refused(
        &home,
        &[],
        &dsn(
            &src,
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        &dest,
        &["127.0.0.1", "certificate"],
    );
    assert!(
        line.contains("mismatch") || line.contains("does not match"),
        "says nothing about the name: {line}"
    );
    // With hostaddr, host is the name checked (and not looked up).
    let line = refused(
        &home,
        &[],
        &dsn(
            &src,
            "db.invalid",
            &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
        ),
        &dest,
        &["db.invalid", "certificate"],
    );
    assert!(
        line.contains("mismatch") || line.contains("does not match"),
        "says nothing about the name: {line}"
    );
    // verify-full without a host name at all (libpq refuses it before connecting).
    refused(
        &home,
        &[],
        &format!(
            "hostaddr=127.0.0.1 port={} user=postgres sslmode=verify-full sslrootcert={ca}",
            src.port
        ),
        &dest,
        &["host name must be specified"],
    );
}

#[test]
fn require_without_a_root_certificate_does_not_verify() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &[]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    // Neither the issuer (unknown) nor the name (127.0.0.1) is checked.
    backup_ok(
        &home,
        &[],
        &[],
        &dsn(&src, "127.0.0.1", "sslmode=require"),
        &scratch.path().join("copy"),
    );
    // libpq: with ~/.postgresql/root.crt present, require checks the chain
    // as verify-ca does — here against a CA that did not sign the server's.
    let home2 = scratch.path().join("home2");
    std::fs::create_dir_all(home2.join(".postgresql")).unwrap();
    std::fs::copy(pki.path("other.crt"), home2.join(".postgresql/root.crt")).unwrap();
    refused(
        &home2,
        &[],
        &dsn(&src, "127.0.0.1", "sslmode=require"),
        &scratch.path().join("copy2"),
        &["certificate verify failed"],
    );
    // verify-ca with no root certificate anywhere is refused before connecting.
    refused(
        &home,
        &[],
        &dsn(&src, "localhost", "sslmode=verify-ca"),
        &scratch.path().join("copy3"),
        &["root certificate file", "does not exist"],
    );
}

#[test]
fn verify_ca_checks_the_issuer_but_not_the_host_name() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &[]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    refused(
        &home,
        &[],
        &dsn(
            &src,
            "localhost",
            &format!("sslmode=verify-ca sslrootcert={}", pki.file("other.crt")),
        ),
        &scratch.path().join("copy"),
        &["certificate verify failed"],
    );
    // The right CA: the address 127.0.0.1, not in the certificate, is fine.
    backup_ok(
        &home,
        &[],
        &[],
        &dsn(
            &src,
            "127.0.0.1",
            &format!("sslmode=verify-ca sslrootcert={}", pki.file("ca.crt")),
        ),
        &scratch.path().join("copy2"),
    );
}

#[test]
fn pgssl_environment_variables_are_honoured() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &[]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    let ca = pki.file("ca.crt");
    let verify_full = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    // Only the environment asks for verification (HOME has no root.crt, so
    // this works only if PGSSLROOTCERT is read).
    let dest = scratch.path().join("copy");
    backup_ok(
        &home,
        &verify_full,
        &["-R"],
        &dsn(&src, "localhost", ""),
        &dest,
    );
    // -R: the standby connects as we did, with the settings from the environment.
    let auto = std::fs::read_to_string(dest.join("postgresql.auto.conf")).unwrap();
    let conninfo = auto
        .lines()
        .find(|l| l.starts_with("primary_conninfo"))
        .unwrap_or_else(|| panic!("no primary_conninfo in:\n{auto}"));
    assert!(
        conninfo.contains("verify-full") && conninfo.contains(&ca),
        "primary_conninfo lacks sslmode/sslrootcert: {conninfo}"
    );
    assert!(dest.join("standby.signal").is_file());

    // PGSSLMODE=verify-full is read: the default (prefer) would connect.
    refused(
        &home,
        &verify_full,
        &dsn(&src, "127.0.0.1", ""),
        &scratch.path().join("copy2"),
        &["certificate"],
    );
    // PGSSLROOTCERT is read: another CA fails verify-ca.
    refused(
        &home,
        &[
            ("PGSSLMODE", "verify-ca"),
            ("PGSSLROOTCERT", &pki.file("other.crt")),
        ],
        &dsn(&src, "localhost", ""),
        &scratch.path().join("copy3"),
        &["certificate verify failed"],
    );
    // The DSN beats the environment: sslmode=disable in the DSN is plain
    // TCP, which this server refuses.
    refused(
        &home,
        &verify_full,
        &dsn(&src, "localhost", "sslmode=disable"),
        &scratch.path().join("copy4"),
        &["no encryption"],
    );
}

#[test]
fn sslmode_disable_is_refused_by_a_hostssl_only_server() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &[]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    // psql: FATAL:  pg_hba.conf rejects connection for host "127.0.0.1",
    // user "postgres", database "postgres", no encryption
    refused(
        &home,
        &[],
        &dsn(&src, "127.0.0.1", "sslmode=disable"),
        &scratch.path().join("copy"),
        &["127.0.0.1", "pg_hba.conf", "no encryption"],
    );
    // prefer: TLS first; when that fails (an untrusted root certificate),
    // plain, which is refused too — both reasons, still on one line.
    refused(
        &home,
        &[],
        &dsn(
            &src,
            "127.0.0.1",
            &format!("sslmode=prefer sslrootcert={}", pki.file("other.crt")),
        ),
        &scratch.path().join("copy2"),
        &["certificate verify failed", "no encryption"],
    );
    // allow: plain first, refused by the server, then TLS, which works.
    backup_ok(
        &home,
        &[],
        &[],
        &dsn(&src, "127.0.0.1", "sslmode=allow"),
        &scratch.path().join("copy3"),
    );
}

#[test]
fn client_certificate_authentication() {
    let pki = Pki::new();
    let src = tls_cluster(&pki, &["hostssl all postgres 127.0.0.1/32 cert"]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    let ca = pki.file("ca.crt");
    let base = format!("sslmode=verify-full sslrootcert={ca}");
    refused(
        &home,
        &[],
        &dsn(&src, "localhost", &base),
        &scratch.path().join("copy"),
        &["requires a valid client certificate"],
    );
    // sslcert/sslkey in the DSN, for every worker.
    backup_ok(
        &home,
        &[],
        &["-j", "2"],
        &dsn(
            &src,
            "localhost",
            &format!(
                "{base} sslcert={} sslkey={}",
                pki.file("client.crt"),
                pki.file("client.key")
            ),
        ),
        &scratch.path().join("copy2"),
    );
    // A key others may read is refused, as libpq does.
    let loose = pki.path("loose.key");
    std::fs::copy(pki.path("client.key"), &loose).unwrap();
    set_mode(&loose, 0o644);
    refused(
        &home,
        &[],
        &dsn(
            &src,
            "localhost",
            &format!(
                "{base} sslcert={} sslkey={}",
                pki.file("client.crt"),
                loose.display()
            ),
        ),
        &scratch.path().join("copy3"),
        &["group or world access"],
    );
    // The default files: ~/.postgresql/postgresql.crt, .key and root.crt.
    let home2 = scratch.path().join("home2");
    let dot = home2.join(".postgresql");
    std::fs::create_dir_all(&dot).unwrap();
    for (from, to) in [
        ("client.crt", "postgresql.crt"),
        ("client.key", "postgresql.key"),
        ("ca.crt", "root.crt"),
    ] {
        std::fs::copy(pki.path(from), dot.join(to)).unwrap();
    }
    set_mode(&dot.join("postgresql.key"), 0o600);
    backup_ok(
        &home2,
        &[],
        &[],
        &dsn(&src, "localhost", "sslmode=verify-full"),
        &scratch.path().join("copy4"),
    );
}

#[test]
fn a_server_without_tls_is_refused_by_require_and_used_plain_by_prefer() {
    let src = Cluster::start(VERSION);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    // psql: server does not support SSL, but SSL was required
    refused(
        &home,
        &[],
        &dsn(&src, "127.0.0.1", "sslmode=require"),
        &scratch.path().join("copy"),
        &["does not support SSL"],
    );
    // prefer (the default) goes on without TLS.
    backup_ok(
        &home,
        &[],
        &[],
        &dsn(&src, "127.0.0.1", ""),
        &scratch.path().join("copy2"),
    );
}

/// libpq (checked with psql 15) accepts an IP address as host when the
/// certificate has no iPAddress subjectAltName and its CN is that address
/// (OpenSSL's own X509_check_ip never looks at the CN; src/conn/tls/host_name.rs has libpq's
/// rule, with unit tests for the other cases).
#[test]
fn verify_full_accepts_an_ip_address_in_the_common_name() {
    let pki = Pki::with_server("/CN=127.0.0.1", "");
    let src = tls_cluster(&pki, &[]);
    let scratch = scratch_dir();
    let home = empty_home(scratch.path());
    let conninfo = dsn(
        &src,
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={}", pki.file("ca.crt")),
    );
    // The reference: psql connects.
    let out = client_cmd("psql")
        .env("HOME", &home)
        .args([
            "-XAtc",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .arg(&conninfo)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    backup_ok(&home, &[], &[], &conninfo, &scratch.path().join("copy"));
}
