//! pgbench on a cluster: its tables (`-i`), a write load in the background,
//! and its invariant, which every copy must keep.

use std::io::{Read, Seek};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::commands::{client_cmd, run_ok};
use super::files::tail;

impl Cluster {
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
}

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
