//! A DEST that fails: a write that cannot complete (a file size limit
//! standing for a full disk) and a DEST that cannot be created end the
//! backup with exit code 5, one line, and nothing left behind.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::common::{self, Cluster, scratch_dir, tool};

use super::{failed_run, loaded_cluster};

/// Run `cmd` with RLIMIT_FSIZE at `bytes`: a write past it fails with
/// EFBIG, as one fails with ENOSPC on a full disk.
fn limit_file_size(cmd: &mut Command, bytes: libc::rlim_t) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[test]
fn a_file_size_limit_is_a_clean_dest_error() {
    // The disk filling up, as the tool sees it: a write fails (EFBIG here,
    // ENOSPC on a full disk) in the middle of the copy. 20 MB lets the WAL
    // segments (16 MB) through and stops pgbench_accounts (about 40 MB).
    let src = loaded_cluster();
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let mut cmd = tool();
    cmd.args([
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    limit_file_size(&mut cmd, 20 << 20);
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains(dest.to_str().unwrap()) && stderr.contains("File too large"),
        "the file and the reason are named: {stderr}"
    );
    src.assert_no_leftovers();
    // The backup ended with its session (15 has no pg_is_in_backup()).
    let log = std::fs::read_to_string(src.log_path()).unwrap();
    assert!(
        log.contains("aborting backup due to backend exiting before pg_backup_stop was called"),
        "the server aborted the backup:\n{}",
        src.log_tail()
    );
}

#[test]
fn a_disk_that_cannot_hold_the_wal_segments_fails_with_exit_5() {
    // Each WAL segment of the copy is allocated in full (16 MB) when it is
    // created; a 12 MB file size limit stands for a disk without room for
    // one, while every data file of a fresh cluster fits.
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let mut cmd = tool();
    cmd.args(["-x", "-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    limit_file_size(&mut cmd, 12 << 20);
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("pg_wal/0000") && stderr.contains("File too large"),
        "the segment and the reason are named: {stderr}"
    );
    src.assert_no_leftovers();
}

#[test]
fn a_dest_that_cannot_be_created_is_refused() {
    let src = Cluster::start(15);
    let scratch = scratch_dir();
    // A read-only parent (for a user that is not root: root ignores modes).
    let read_only = scratch.path().join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o555)).unwrap();
    let dest = read_only.join("copy");
    let mut cmd = tool();
    if common::is_root() {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
    }
    cmd.args(["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains(dest.to_str().unwrap()) && stderr.contains("ermission denied"),
        "{stderr}"
    );
    // A parent that is a file.
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let dest = file.join("copy");
    let mut cmd = tool();
    cmd.args(["-c", "fast", &src.dsn(), dest.to_str().unwrap()]);
    let (code, stderr) = failed_run(cmd, &dest);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains(dest.to_str().unwrap()), "{stderr}");
    src.assert_no_leftovers();
}

/// The uid and gid of the OS user postgres.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}
