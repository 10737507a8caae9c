//! A running PostgreSQL server: started on a port of its own (also on a
//! copy the tool wrote), addressed by DSN, queried with psql, stopped,
//! restarted, and removed on drop.

use std::io::{Read, Seek, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::binaries::{bin_dir, client_bin};
use super::commands::{chown_postgres, client_cmd, server_cmd};
use super::files::{keep_dirs, set_mode, tail};

/// How long a server may take to start (a copy replays WAL first).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What a started server is waited for as.
#[derive(Clone, Copy)]
pub(super) enum Role {
    /// Out of recovery, accepting writes.
    Primary,
    /// A standby accepting read-only connections.
    Standby,
}

/// A running server; stopped (`-m immediate`) and its directory removed on
/// drop.
pub struct Cluster {
    pub version: u32,
    pub port: u16,
    /// The data directory (for [`Cluster::start_on_copy`], the copy itself).
    pub data: PathBuf,
    /// The unix socket directory: the `host` of [`Cluster::dsn`].
    pub socket_dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    /// Holds data (except for a copy), sock and server.log.
    dir: Option<tempfile::TempDir>,
}

/// A temporary directory (0755) for a server's files, with an empty `sock/`
/// for its unix socket; hand it to the server user once it is filled.
pub(super) fn server_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    std::fs::create_dir(dir.path().join("sock")).unwrap();
    dir
}

impl Cluster {
    /// Start the server of `data` with its socket and log in `dir` (see
    /// [`server_dir`]), on a fresh port; returns once it is ready as `role`.
    pub(super) fn launch(
        dir: tempfile::TempDir,
        data: PathBuf,
        version: u32,
        role: Role,
    ) -> Cluster {
        let mut cluster = Cluster {
            version,
            port: 0,
            data,
            socket_dir: dir.path().join("sock"),
            log: dir.path().join("server.log"),
            bin: bin_dir(version),
            dir: Some(dir),
        };
        cluster.start_new_port(role);
        cluster
    }

    /// Start a server on a data directory the tool wrote (DEST): hands it to
    /// the server user (chown -R, also of the tablespace directories its
    /// pg_tblspc links point to) and sets it to 0700 as PostgreSQL demands,
    /// then starts it on a fresh port with its socket and log in a temporary
    /// directory of its own (passed as server options: the copy's
    /// configuration files are not edited). Returns once recovery is over and
    /// the server accepts writes; panics with the server log otherwise.
    pub fn start_on_copy(dest: &Path, version: u32) -> Cluster {
        Cluster::start_copy(dest, version, Role::Primary)
    }

    /// [`Cluster::start_on_copy`] for a copy made with `-R`: returns once the
    /// standby accepts (read-only) connections, still in recovery.
    pub fn start_standby_on_copy(dest: &Path, version: u32) -> Cluster {
        Cluster::start_copy(dest, version, Role::Standby)
    }

    fn start_copy(dest: &Path, version: u32, role: Role) -> Cluster {
        assert!(dest.is_dir(), "no copy at {}", dest.display());
        let dest = std::fs::canonicalize(dest).unwrap();
        chown_postgres(&dest);
        if let Ok(links) = std::fs::read_dir(dest.join("pg_tblspc")) {
            for link in links.flatten() {
                if link.file_type().is_ok_and(|t| t.is_symlink()) {
                    if let Ok(target) = std::fs::canonicalize(link.path()) {
                        chown_postgres(&target);
                    }
                }
            }
        }
        set_mode(&dest, 0o700);
        let dir = server_dir(&format!("pgbb-copy-pg{version}-"));
        chown_postgres(dir.path());
        Cluster::launch(dir, dest, version, role)
    }

    /// Start on a fresh port, retrying while the port was taken meanwhile.
    fn start_new_port(&mut self, role: Role) {
        for _ in 0..10 {
            self.port = free_port();
            match self.pg_ctl_start() {
                Ok(()) => {
                    self.wait_ready(role);
                    return;
                }
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!(
                    "PostgreSQL {} did not start on {}:\n{log}",
                    self.version,
                    self.data.display()
                ),
            }
        }
        panic!(
            "no free port for PostgreSQL {}:\n{}",
            self.version,
            self.log_tail()
        );
    }

    /// pg_ctl start -w on self.port; Err(what pg_ctl and the log said).
    fn pg_ctl_start(&self) -> Result<(), String> {
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        // pg_ctl hands -o to a shell: quote the path.
        let opts = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1",
            self.port,
            self.socket_dir.display()
        );
        let out = server_cmd(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args([
                "-w",
                "-t",
                &START_TIMEOUT.as_secs().to_string(),
                "-o",
                &opts,
                "start",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            return Ok(());
        }
        let mut log = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.seek(std::io::SeekFrom::Start(log_start));
            let _ = f.read_to_string(&mut log);
        }
        Err(format!(
            "{}{}--- server log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&log, 40)
        ))
    }

    /// Until the server accepts writes (a copy finishes recovery first), or
    /// for a standby, until it accepts connections.
    fn wait_ready(&self, role: Role) {
        let deadline = Instant::now() + START_TIMEOUT;
        let in_recovery = match role {
            Role::Primary => "f",
            Role::Standby => "t",
        };
        loop {
            match self.try_psql("SELECT pg_is_in_recovery()") {
                Ok(out) if out == in_recovery => return,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                r => panic!(
                    "PostgreSQL {} did not become ready (pg_is_in_recovery() gave {r:?}, waiting for {in_recovery}):\n{}",
                    self.version,
                    self.log_tail()
                ),
            }
        }
    }

    /// `host=<socket dir> port=<port> user=postgres dbname=postgres`
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// `host=127.0.0.1 port=<port> user=postgres dbname=postgres`, without
    /// the password (see [`super::ClusterOptions::password`]).
    pub fn tcp_dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Run SQL with psql (`-XAtq -v ON_ERROR_STOP=1`, as postgres on the
    /// socket) and return its trimmed output, or its stderr on failure. The
    /// SQL goes in on standard input, so each statement runs on its own
    /// (`CREATE DATABASE`, `VACUUM`, `CREATE TABLESPACE` can be mixed with
    /// others) and psql's meta-commands work.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut child = client_cmd("psql")
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", client_bin("psql").display()));
        let mut stdin = child.stdin.take().unwrap();
        let sql = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(sql.as_bytes());
            let _ = stdin.write_all(b"\n");
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`Cluster::try_psql`], panicking with psql's stderr on error.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql on PostgreSQL {} failed: {sql}\n{e}", self.version))
    }

    /// A Rust client session as postgres on the unix socket (NoTls).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.dsn()))
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last 40 lines of the server log.
    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 40)
    }

    /// Stop the server (`pg_ctl stop -m immediate`: a crash, as far as
    /// PostgreSQL can tell). Quiet if it is not running.
    pub fn stop(&self) {
        let _ = server_cmd(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Stop the server as `pg_ctl restart -m fast` does before it starts
    /// it again: sessions get a FATAL, a shutdown checkpoint.
    pub fn stop_fast(&self) {
        let out = server_cmd(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop -m fast: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start a stopped server again, on the same port and socket; returns
    /// once it accepts writes.
    pub fn restart(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("PostgreSQL {} did not restart:\n{e}", self.version);
        }
        self.wait_ready(Role::Primary);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if keep_dirs() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "KEEP_TEST_DIRS: keeping PostgreSQL {} data {}, socket and log in {}",
                    self.version,
                    self.data.display(),
                    dir.keep().display()
                );
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that no other cluster of this process was given
/// and that nothing listens on now. Ports come from 15000-31999, below
/// Linux's ephemeral range (32768+), so outgoing connections never hold one;
/// another process taking it before the server binds is handled by a retry.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 15000;
    const SPAN: u32 = 17000;
    let base = std::process::id().wrapping_mul(2654435761) % SPAN;
    loop {
        let port = (LOW + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
