//! The shared test harness: real PostgreSQL servers started per test
//! (initdb + pg_ctl in a temporary directory, a free port, their own socket
//! directory), pgbench load, and starting a server on a copy.
//!
//! As root (CI), servers run as the `postgres` OS user via runuser, and the
//! directories they use are chowned to it. Each test binary uses a subset.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Server binaries of a major version: Debian's for 15, the fetched
/// embedded-postgres packages (scripts/fetch-postgres) for the others.
pub fn bin_dir(major: u32) -> PathBuf {
    if let Ok(dir) = std::env::var(format!("PG{major}_BINDIR")) {
        return PathBuf::from(dir);
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("initdb").exists() {
        return debian;
    }
    let cache = std::env::var("PG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".pg-cache"));
    let dir = cache.join(major.to_string()).join("bin");
    assert!(
        dir.join("initdb").exists(),
        "PostgreSQL {major} binaries missing: run scripts/fetch-postgres {major}"
    );
    dir
}

/// Client programs (psql, pgbench) come from Debian's PostgreSQL 15; they
/// talk to every server version.
pub fn client_bin(name: &str) -> PathBuf {
    bin_dir(15).join(name)
}

/// Majors whose binaries are here (PG_TEST_VERSIONS restricts the list).
pub fn available_majors() -> Vec<u32> {
    let wanted: Vec<u32> = std::env::var("PG_TEST_VERSIONS")
        .map(|v| v.split([' ', ',']).filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|_| (10..=18).collect());
    wanted
        .into_iter()
        .filter(|m| std::panic::catch_unwind(|| bin_dir(*m)).is_ok())
        .collect()
}

/// A command run as the server's OS user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Hand a path (recursively) to the server's OS user when we are root.
pub fn chown_postgres(path: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown {}", path.display());
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A temporary directory the server user can traverse (0755).
pub fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pgbb-test-")
        .tempdir()
        .unwrap();
    set_mode(dir.path(), 0o755);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct ClusterOptions {
    version: u32,
    data_checksums: bool,
    conf: Vec<String>,
}

impl ClusterOptions {
    pub fn new(version: u32) -> Self {
        ClusterOptions {
            version,
            data_checksums: false,
            conf: Vec::new(),
        }
    }
    pub fn data_checksums(mut self) -> Self {
        self.data_checksums = true;
        self
    }
    pub fn conf(mut self, setting: &str) -> Self {
        self.conf.push(setting.to_string());
        self
    }
    pub fn start(self) -> Cluster {
        Cluster::init(self)
    }
}

/// A running server in its own temporary directory; stopped and removed on drop.
pub struct Cluster {
    pub version: u32,
    pub port: u16,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    pub fn start(version: u32) -> Cluster {
        ClusterOptions::new(version).start()
    }

    fn init(opts: ClusterOptions) -> Cluster {
        let dir = scratch_dir();
        let bin = bin_dir(opts.version);
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        chown_postgres(dir.path());
        let mut initdb = as_postgres(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
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
        }
        run_ok(&mut initdb, "initdb");
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nwal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             shared_buffers = 32MB\nmax_connections = 60\nfsync = off\nfull_page_writes = on\nlogging_collector = off\n",
        );
        for c in &opts.conf {
            conf.push_str(c);
            conf.push('\n');
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(conf.as_bytes())
            })
            .unwrap();
        let log = dir.path().join("server.log");
        let mut cluster = Cluster {
            version: opts.version,
            port: 0,
            data,
            socket_dir,
            log,
            bin,
            _dir: Some(dir),
        };
        cluster.start_server();
        cluster
    }

    /// pg_ctl start on this cluster's port and socket directory.
    fn pg_ctl_start(&self) -> bool {
        let opts = format!("-p {} -k {}", self.port, self.socket_dir.display());
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// Start the server on a free port (retrying on a port race).
    fn start_server(&mut self) {
        for _ in 0..5 {
            self.port = free_port();
            if self.pg_ctl_start() {
                self.wait_ready();
                return;
            }
        }
        panic!("server did not start:\n{}", self.log_tail());
    }

    /// Until the server accepts writes (a copy finishes recovery first).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(out) = self.try_psql("SELECT pg_is_in_recovery()") {
                if out == "f" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server never became ready:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Start a server on a copy made by the tool (the copy is handed to the
    /// server user and set to 0700, as PostgreSQL demands).
    pub fn start_on_copy(dest: &Path, version: u32) -> Cluster {
        chown_postgres(dest);
        set_mode(dest, 0o700);
        // Socket and log beside the copy, in a directory the server user owns.
        let run_dir = dest.parent().unwrap().join(format!(
            "{}-run",
            dest.file_name().unwrap().to_string_lossy()
        ));
        let socket_dir = run_dir.join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        chown_postgres(&run_dir);
        let log = run_dir.join("server.log");
        let mut cluster = Cluster {
            version,
            port: 0,
            data: dest.to_path_buf(),
            socket_dir,
            log,
            bin: bin_dir(version),
            _dir: None,
        };
        cluster.start_server();
        cluster
    }

    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn tcp_dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(client_bin("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    fn pgbench(&self) -> Command {
        let mut c = Command::new(client_bin("pgbench"));
        c.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    pub fn pgbench_init(&self, scale: u32) {
        run_ok(
            self.pgbench()
                .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]),
            "pgbench -i",
        );
    }

    /// pgbench writing in the background until stopped (or dropped).
    pub fn pgbench_load(&self, clients: u32) -> PgbenchLoad {
        let child = self
            .pgbench()
            .args(["-n", "-c", &clients.to_string(), "-T", "600", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PgbenchLoad(Some(child))
    }

    /// pgbench's invariant: every balance change is in all four places.
    pub fn assert_pgbench_consistent(&self) {
        let sums = self.psql(
            "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ' ' || \
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) || ' ' || \
                    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || ' ' || \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        );
        let v: Vec<&str> = sums.split(' ').collect();
        assert!(
            v.iter().all(|x| *x == v[0]),
            "pgbench balances disagree (accounts tellers branches history): {sums}"
        );
        let scale: i64 = self
            .psql("SELECT count(*) FROM pgbench_branches")
            .parse()
            .unwrap();
        assert_eq!(
            self.psql("SELECT count(*) FROM pgbench_tellers"),
            (scale * 10).to_string()
        );
        assert_eq!(
            self.psql("SELECT count(*) FROM pgbench_accounts"),
            (scale * 100000).to_string()
        );
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Start a stopped server again (same port and directories).
    pub fn restart(&self) {
        assert!(self.pg_ctl_start(), "restart failed:\n{}", self.log_tail());
        self.wait_ready();
    }

    pub fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            if let Some(dir) = self._dir.take() {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}

pub struct PgbenchLoad(Option<Child>);

impl PgbenchLoad {
    pub fn stop(mut self) {
        self.kill();
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
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

/// Run the tool to completion, echoing its stderr for the test log.
pub fn run(args: &[&str]) -> std::process::Output {
    let out = tool().args(args).output().expect("run pg_basebackup");
    eprintln!(
        "pg_basebackup {args:?} -> {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The minimal grants for a backup by a role that is not a superuser, as
/// README gives them per version range.
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

/// The tool, with no PG* variables and an empty HOME, so nothing of the
/// machine's own setup (~/.pgpass, PGHOST) leaks into a test.
pub fn tool() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pg_basebackup"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
    let home = std::env::temp_dir().join("pgbb-empty-home");
    std::fs::create_dir_all(&home).unwrap();
    c.env("HOME", home);
    c
}
