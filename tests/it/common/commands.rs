//! How the harness runs PostgreSQL's programs: server programs as the OS
//! user postgres when we are root (PostgreSQL refuses root), every one
//! without the machine's PG* variables, and checked for success.

use std::path::Path;
use std::process::Command;

use super::binaries::{client_bin, tools_bin};

/// Whether this process runs as root (then servers run as user postgres).
pub fn is_root() -> bool {
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() == 0 }
}

/// A server-side command, run as user postgres when we are root, with no PG*
/// variables of ours and a working directory the server user can enter.
pub(super) fn server_cmd(program: &Path) -> Command {
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
pub fn client_cmd(name: &str) -> Command {
    let mut c = Command::new(client_bin(name));
    clean_env(&mut c);
    c.env("PGCLIENTENCODING", "UTF8");
    c
}

/// A program of PostgreSQL 17's or 18's client tools ([`tools_bin`]), with
/// a clean environment, run as the invoking user.
pub fn tools_cmd(major: u32, name: &str) -> Command {
    let mut c = Command::new(tools_bin(major, name));
    clean_env(&mut c);
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

/// Run a command to completion; panic with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
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
