//! Running the pg_basebackup under test, cut off from the machine's own
//! setup (PG* variables, ~/.pgpass, ~/.postgresql), and signalling it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

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
