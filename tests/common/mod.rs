//! The shared test harness: real PostgreSQL servers, never a mock.
//!
//! Every [`Cluster`] is its own initdb in its own temporary directory
//! (`data/`, `sock/` for the unix socket, `server.log`), listening on
//! 127.0.0.1 at a port nobody else in this process holds; it is stopped
//! (`-m immediate`) and removed on drop. Tests run in parallel threads, so
//! nothing here is shared between clusters.
//!
//! Binaries: Debian's PostgreSQL 15 (`/usr/lib/postgresql/15/bin`, or
//! `PG15_BINDIR`), the other majors from `scripts/fetch-postgres`
//! (`${PG_CACHE:-.pg-cache}/<major>/bin`, or `PG<major>_BINDIR`). The client
//! programs (psql, pgbench, pg_verifybackup, ...) are always Debian's 15
//! ([`client_bin`]); they talk to every server from 10 to 18.
//!
//! As root (CI), initdb, pg_ctl and the servers run as the OS user `postgres`
//! through `runuser`, and the directories they write are chowned to it.
//!
//! Environment: `PG_TEST_VERSIONS="10 13 18"` restricts [`available_majors`];
//! `KEEP_TEST_DIRS=1` keeps every cluster and scratch directory (printed).
//!
//! Settings chosen for speed, and why they are harmless here: `fsync = off`
//! (a server that stops, even with `-m immediate`, loses nothing as long as
//! the machine stays up; no test checks durability across an OS crash, and
//! the tool's own fsync of a copy does not depend on the server's setting),
//! `shared_buffers = 32MB`, `initdb --no-sync`. `max_connections = 60` is
//! relied upon by a test (the tool's error names the limit).
//!
//! Each test binary uses a subset of this module, hence `dead_code` allowed.
#![allow(dead_code)]

use std::io::{Read, Seek, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to start (a copy replays WAL first).
const START_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- binaries

/// Whether this process runs as root (then servers run as user postgres).
pub fn is_root() -> bool {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// The directory fetched majors live in: `$PG_CACHE` or `<repo>/.pg-cache`.
pub fn pg_cache() -> PathBuf {
    std::env::var_os("PG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".pg-cache"))
}

/// Server binaries (initdb, pg_ctl, postgres) of a major version, if present:
/// `PG<major>_BINDIR` when set; else Debian's for 15 and the fetched package
/// for the others.
pub fn try_bin_dir(major: u32) -> Option<PathBuf> {
    let dir = match std::env::var_os(format!("PG{major}_BINDIR")) {
        Some(dir) => PathBuf::from(dir),
        None if major == 15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
        None => pg_cache().join(major.to_string()).join("bin"),
    };
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

/// [`try_bin_dir`], panicking with what to do when the binaries are missing.
pub fn bin_dir(major: u32) -> PathBuf {
    try_bin_dir(major).unwrap_or_else(|| {
        if major == 15 {
            panic!(
                "PostgreSQL 15 binaries missing: apt-get install postgresql-15 (or set PG15_BINDIR)"
            )
        }
        panic!(
            "PostgreSQL {major} binaries missing in {}: run scripts/fetch-postgres {major}",
            pg_cache().display()
        )
    })
}

/// A client program (psql, pgbench, pg_verifybackup, pg_waldump, ...):
/// Debian's PostgreSQL 15, or `PG_CLIENT_BINDIR`.
pub fn client_bin(name: &str) -> PathBuf {
    std::env::var_os("PG_CLIENT_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
        .join(name)
}

/// The majors the tests cover, 10 to 18, or those `PG_TEST_VERSIONS` names.
pub fn wanted_majors() -> Vec<u32> {
    match std::env::var("PG_TEST_VERSIONS") {
        Ok(v) if !v.trim().is_empty() => v
            .split([' ', ','])
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|_| panic!("PG_TEST_VERSIONS: {x:?} is not a major version"))
            })
            .collect(),
        _ => (10..=18).collect(),
    }
}

/// The [`wanted_majors`] whose server binaries are present.
pub fn available_majors() -> Vec<u32> {
    wanted_majors()
        .into_iter()
        .filter(|m| try_bin_dir(*m).is_some())
        .collect()
}

// ------------------------------------------------------------- small tools

/// A server-side command, run as user postgres when we are root, with no PG*
/// variables of ours and a working directory the server user can enter.
fn server_cmd(program: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    clean_env(&mut c);
    c.current_dir("/");
    c
}

/// A client program of [`client_bin`], with a clean environment.
fn client_cmd(name: &str) -> Command {
    let mut c = Command::new(client_bin(name));
    clean_env(&mut c);
    c.env("PGCLIENTENCODING", "UTF8");
    c
}

/// No PG* variable of the machine (PGHOST, PGPASSWORD, PGSSLMODE, ...), no
/// RUST_LOG, and C messages.
fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("PG") || k == "RUST_LOG" || k.starts_with("LC_") || k == "LANGUAGE" {
            c.env_remove(&*k);
        }
    }
    c.env("LC_ALL", "C");
}

/// Hand a path (recursively, not following symlinks) to the server's OS
/// user when we are root; nothing otherwise.
pub fn chown_postgres(path: &Path) {
    if is_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chown -R postgres {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn keep_dirs() -> bool {
    std::env::var_os("KEEP_TEST_DIRS").is_some()
}

/// A temporary directory (mode 0755) the server user can traverse: put DEST
/// directories in it; a DEST inside it works with [`Cluster::start_on_copy`].
/// Removed on drop, unless `KEEP_TEST_DIRS` is set.
pub fn scratch_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix("pgbb-test-")
        .tempdir()
        .unwrap();
    set_mode(dir.path(), 0o755);
    if keep_dirs() {
        dir.disable_cleanup(true);
        eprintln!("KEEP_TEST_DIRS: keeping {}", dir.path().display());
    }
    dir
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

/// Run a command to completion; panic with its output unless it succeeds.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------- clusters

/// How to make a [`Cluster`]: `ClusterOptions::new(15).data_checksums()
/// .conf("archive_mode = on").start()`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    version: u32,
    data_checksums: bool,
    conf: Vec<String>,
    initdb_args: Vec<String>,
    hba: Vec<String>,
    password: Option<String>,
}

impl ClusterOptions {
    pub fn new(version: u32) -> Self {
        ClusterOptions {
            version,
            data_checksums: false,
            conf: Vec::new(),
            initdb_args: Vec::new(),
            hba: Vec::new(),
            password: None,
        }
    }

    /// initdb --data-checksums. Without it checksums are off on every
    /// version, 18 included (whose initdb turns them on by default).
    pub fn data_checksums(mut self) -> Self {
        self.data_checksums = true;
        self
    }

    /// A postgresql.conf line, appended after the harness's own settings
    /// (so it wins), e.g. `"archive_mode = on"`.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// An extra initdb argument, e.g. `"--wal-segsize=1"` or `"-g"`.
    pub fn initdb_arg(mut self, arg: &str) -> Self {
        self.initdb_args.push(arg.to_string());
        self
    }

    /// A pg_hba.conf line placed above the harness's own lines (first match
    /// wins), e.g. `"hostnossl all all 127.0.0.1/32 reject"`.
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_string());
        self
    }

    /// Give role postgres this password and require it (scram-sha-256) on
    /// TCP; the unix socket stays trust, so [`Cluster::psql`] needs none.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    pub fn start(self) -> Cluster {
        Cluster::init(self)
    }
}

/// What a started server is waited for as.
#[derive(Clone, Copy)]
enum Role {
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
    /// Role postgres's password on TCP, when [`ClusterOptions::password`].
    pub password: Option<String>,
    log: PathBuf,
    bin: PathBuf,
    /// Holds data (except for a copy), sock and server.log.
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// initdb and start a server of this major with the default options.
    pub fn start(version: u32) -> Cluster {
        ClusterOptions::new(version).start()
    }

    fn init(opts: ClusterOptions) -> Cluster {
        let bin = bin_dir(opts.version);
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgbb-pg{}-", opts.version))
            .tempdir()
            .unwrap();
        set_mode(dir.path(), 0o755);
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&data).unwrap();
        set_mode(&data, 0o700);
        std::fs::create_dir(&socket_dir).unwrap();
        chown_postgres(dir.path());

        let mut initdb = server_cmd(&bin.join("initdb"));
        initdb.arg("-D").arg(&data);
        initdb.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        if opts.data_checksums {
            initdb.arg("--data-checksums");
        } else if opts.version >= 18 {
            initdb.arg("--no-data-checksums");
        }
        initdb.args(&opts.initdb_args);
        run_ok(
            &mut initdb,
            &format!("initdb (PostgreSQL {})", opts.version),
        );

        let mut conf = String::from(
            "\n# tests/common/mod.rs\n\
             listen_addresses = '127.0.0.1'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             max_connections = 60\n\
             shared_buffers = 32MB\n\
             fsync = off\n\
             full_page_writes = on\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%a '\n",
        );
        if opts.password.is_some() {
            conf.push_str("password_encryption = 'scram-sha-256'\n");
        }
        for line in &opts.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);

        let tcp = if opts.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let mut hba = String::from("# tests/common/mod.rs\n");
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(&format!(
            "local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 {tcp}\n\
             host replication all 127.0.0.1/32 {tcp}\n"
        ));
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();

        let mut cluster = Cluster {
            version: opts.version,
            port: 0,
            log: dir.path().join("server.log"),
            data,
            socket_dir,
            password: opts.password.clone(),
            bin,
            dir: Some(dir),
        };
        cluster.start_new_port(Role::Primary);
        if let Some(pw) = &opts.password {
            cluster.psql(&format!(
                "ALTER ROLE postgres PASSWORD '{}'",
                pw.replace('\'', "''")
            ));
        }
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
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgbb-copy-pg{version}-"))
            .tempdir()
            .unwrap();
        set_mode(dir.path(), 0o755);
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        chown_postgres(dir.path());
        let mut cluster = Cluster {
            version,
            port: 0,
            data: dest,
            socket_dir,
            password: None,
            log: dir.path().join("server.log"),
            bin: bin_dir(version),
            dir: Some(dir),
        };
        cluster.start_new_port(role);
        cluster
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
    /// the password (see [`Cluster::password`]).
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
    /// None of our sessions and no replication slot are left on the server
    /// (sessions end asynchronously on the server, so allow it a moment).
    pub fn assert_no_leftovers(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.psql(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_basebackup%') || ' ' || \
                        (SELECT count(*) FROM pg_replication_slots)",
            );
            if left == "0 0" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sessions and slots left on the server: {left}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql on PostgreSQL {} failed: {sql}\n{e}", self.version))
    }

    /// A Rust client session as postgres on the unix socket (NoTls).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.dsn()))
    }

    fn pgbench(&self) -> Command {
        let mut c = client_cmd("pgbench");
        c.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    /// `pgbench -i -s SCALE`: 100000 × SCALE accounts (about 15 MB each).
    pub fn pgbench_init(&self, scale: u32) {
        run_ok(
            self.pgbench()
                .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]),
            "pgbench -i",
        );
    }

    /// `pgbench -n -c CLIENTS -T 600` in the background, returned once its
    /// first transactions have committed (so a test that follows really runs
    /// under writes). Stop it with [`PgbenchLoad::stop`]; dropping kills it.
    pub fn pgbench_load(&self, clients: u32) -> PgbenchLoad {
        let count = "SELECT count(*) FROM pgbench_history";
        let before: u64 = self.psql(count).parse().unwrap();
        let stderr = tempfile::tempfile().unwrap();
        let child = self
            .pgbench()
            .args(["-n", "-c", &clients.to_string(), "-T", "600", "postgres"])
            .stdout(Stdio::null())
            .stderr(stderr.try_clone().unwrap())
            .spawn()
            .unwrap();
        let mut load = PgbenchLoad {
            child: Some(child),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            load.check_running();
            if self.psql(count).parse::<u64>().unwrap() > before {
                return load;
            }
            assert!(
                Instant::now() < deadline,
                "pgbench committed nothing in 30 s:\n{}",
                load.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// pgbench's invariant, which holds after any crash or restore: every
    /// balance change is in all four places (sum of account, teller and
    /// branch balances and of history deltas are equal), and the tables have
    /// the rows `-s SCALE` made (SCALE branches, 10 × SCALE tellers, 100000 ×
    /// SCALE accounts).
    pub fn assert_pgbench_consistent(&self) {
        let row = self.psql(
            "SELECT (SELECT count(*) FROM pgbench_branches), \
                    (SELECT count(*) FROM pgbench_tellers), \
                    (SELECT count(*) FROM pgbench_accounts), \
                    (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), \
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), \
                    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        );
        let v: Vec<i64> = row.split('|').map(|x| x.parse().unwrap()).collect();
        let (branches, tellers, accounts) = (v[0], v[1], v[2]);
        assert!(branches > 0, "no pgbench branches: {row}");
        assert_eq!(
            (tellers, accounts),
            (10 * branches, 100_000 * branches),
            "pgbench row counts (branches|tellers|accounts|...): {row}"
        );
        assert!(
            v[3] == v[4] && v[4] == v[5] && v[5] == v[6],
            "pgbench balances disagree (accounts|tellers|branches|history sums): {}",
            v[3..]
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("|")
        );
    }

    /// amcheck finds no corruption: `pg_amcheck --heapallindexed` (heap
    /// and btree checks) on 14+, whose verify_heapam older servers lack;
    /// there, bt_index_check of every btree index.
    pub fn assert_amcheck(&self) {
        if self.version >= 14 {
            run_ok(
                client_cmd("pg_amcheck")
                    .arg("-h")
                    .arg(&self.socket_dir)
                    .args(["-p", &self.port.to_string(), "-U", "postgres"])
                    .args(["--install-missing", "--heapallindexed", "postgres"]),
                &format!("pg_amcheck on PostgreSQL {}", self.version),
            );
        } else {
            self.psql(
                "CREATE EXTENSION IF NOT EXISTS amcheck; \
                 SELECT count(bt_index_check(c.oid)) FROM pg_index i \
                   JOIN pg_class c ON c.oid = i.indexrelid \
                   JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree'",
            );
        }
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

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------ pgbench

/// pgbench running in the background; see [`Cluster::pgbench_load`].
pub struct PgbenchLoad {
    child: Option<Child>,
    stderr: std::fs::File,
}

impl PgbenchLoad {
    /// Stop pgbench (SIGKILL: an open transaction is rolled back by the
    /// server, so pgbench's invariant holds). Panics if pgbench had already
    /// failed on its own, e.g. because its clients aborted: the test did not
    /// run under the load it meant to. Drop the load instead to ignore that.
    pub fn stop(mut self) {
        self.check_running();
        self.kill();
    }

    fn check_running(&mut self) {
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "pgbench failed ({status}):\n{}",
                self.stderr_text()
            );
        }
    }

    fn stderr_text(&mut self) -> String {
        let mut text = String::new();
        let _ = self.stderr.seek(std::io::SeekFrom::Start(0));
        let _ = self.stderr.read_to_string(&mut text);
        tail(&text, 20)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PgbenchLoad {
    fn drop(&mut self) {
        self.kill();
    }
}

// --------------------------------------------------------------------- tool

/// The tool under test, with none of the machine's PG* variables or
/// RUST_LOG, and HOME an empty directory, so nothing of the machine's own
/// setup (~/.pgpass, ~/.postgresql, PGHOST) leaks into a test.
pub fn tool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_basebackup"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("PG") || k == "RUST_LOG" {
            c.env_remove(&*k);
        }
    }
    c.env("HOME", empty_home());
    c
}

/// `tool().args(args).output()`: exit status, stdout and stderr.
pub fn run(args: &[&str]) -> Output {
    tool().args(args).output().expect("run pg_basebackup")
}

/// Panic with the tool's stderr unless it succeeded.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// pg_verifybackup of a major version: Debian's 15, or 18's client tools
/// that scripts/fetch-postgres brings (the npm server packages lack them).
pub fn verifybackup_bin(major: u32) -> PathBuf {
    match major {
        15 => client_bin("pg_verifybackup"),
        18 => pg_cache().join("tools18/bin/pg_verifybackup"),
        _ => panic!("no pg_verifybackup {major} on this machine (only 15 and 18)"),
    }
}

/// `pg_verifybackup DIR` of a major version (see [`verifybackup_bin`]).
pub fn verifybackup(major: u32, dir: &Path) -> Output {
    Command::new(verifybackup_bin(major))
        .arg(dir)
        .output()
        .unwrap()
}

/// pg_verifybackup of `major` accepts the copy in `dir`.
pub fn assert_verifies(major: u32, dir: &Path) {
    let v = verifybackup(major, dir);
    assert!(
        v.status.success(),
        "pg_verifybackup {major}: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// The minimal grants for a backup role (README, "A role that is not a superuser").
pub fn grant_backup_privileges(cluster: &Cluster, role: &str) {
    let backup_functions = if cluster.version >= 15 {
        ["pg_backup_start(text, boolean)", "pg_backup_stop(boolean)"]
    } else {
        [
            "pg_start_backup(text, boolean, boolean)",
            "pg_stop_backup(boolean, boolean)",
        ]
    };
    let file_functions = [
        "pg_ls_dir(text, boolean, boolean)",
        "pg_stat_file(text, boolean)",
        "pg_read_binary_file(text, bigint, bigint, boolean)",
    ];
    for f in backup_functions.iter().chain(&file_functions) {
        cluster.psql(&format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {role}"
        ));
    }
}

/// An empty directory under cargo's target/tmp, checked to stay empty.
fn empty_home() -> PathBuf {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries.is_empty(),
        "{} should stay empty (it is HOME for the tool), but holds {entries:?}",
        home.display()
    );
    home
}

/// `kill -s SIGNAL` the child.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal}");
}
