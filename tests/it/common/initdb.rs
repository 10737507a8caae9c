//! Making a new cluster: initdb, the harness's postgresql.conf and
//! pg_hba.conf lines, a password for role postgres, and the grants a backup
//! role needs.
//!
//! Settings chosen for speed, and why they are harmless here: `fsync = off`
//! (a server that stops, even with `-m immediate`, loses nothing as long as
//! the machine stays up; no test checks durability across an OS crash, and
//! the tool's own fsync of a copy does not depend on the server's setting),
//! `shared_buffers = 32MB`, `initdb --no-sync`. `max_connections = 60` is
//! relied upon by a test (the tool's error names the limit).

use std::path::Path;

use super::binaries::bin_dir;
use super::cluster::{Cluster, Role, server_dir};
use super::commands::{chown_postgres, run_ok, server_cmd};
use super::files::{append, set_mode};

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

    /// Give role postgres this password and require it (scram-sha-256) on
    /// TCP; the unix socket stays trust, so [`Cluster::psql`] needs none.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// initdb, configure and start the cluster; returns once it accepts
    /// writes (with the password set, when one was asked for).
    pub fn start(self) -> Cluster {
        let bin = bin_dir(self.version);
        let dir = server_dir(&format!("pgbb-pg{}-", self.version));
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        set_mode(&data, 0o700);
        chown_postgres(dir.path());

        self.initdb(&bin, &data);
        self.write_conf(&data);
        self.write_hba(&data);
        let cluster = Cluster::launch(dir, data, self.version, Role::Primary);
        if let Some(pw) = &self.password {
            cluster.psql(&format!(
                "ALTER ROLE postgres PASSWORD '{}'",
                pw.replace('\'', "''")
            ));
        }
        cluster
    }

    /// initdb of `data` as the server user: trust, UTF8, C locale, no sync,
    /// data checksums only when asked for.
    fn initdb(&self, bin: &Path, data: &Path) {
        let mut initdb = server_cmd(&bin.join("initdb"));
        initdb.arg("-D").arg(data);
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
        if self.data_checksums {
            initdb.arg("--data-checksums");
        } else if self.version >= 18 {
            initdb.arg("--no-data-checksums");
        }
        initdb.args(&self.initdb_args);
        run_ok(
            &mut initdb,
            &format!("initdb (PostgreSQL {})", self.version),
        );
    }

    /// The harness's settings, then the test's own lines, at the end of
    /// postgresql.conf.
    fn write_conf(&self, data: &Path) {
        let mut conf = String::from(
            "\n# tests/it/common/initdb.rs\n\
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
        if self.password.is_some() {
            conf.push_str("password_encryption = 'scram-sha-256'\n");
        }
        for line in &self.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
    }

    /// pg_hba.conf: the test's lines first (first match wins), then trust on
    /// the socket and trust or scram-sha-256 (with a password) on TCP.
    fn write_hba(&self, data: &Path) {
        let tcp = if self.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let mut hba = String::from("# tests/it/common/initdb.rs\n");
        for line in &self.hba {
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
    }
}

impl Cluster {
    /// initdb and start a server of this major with the default options.
    pub fn start(version: u32) -> Cluster {
        ClusterOptions::new(version).start()
    }
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
