//! Where a backup is taken from and what the server does meanwhile: a
//! pg_control that does not read back consistently, a hot standby as the
//! source (promoted or switching timelines mid-backup), and a server that
//! archives WAL when the copy holds none.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Cluster, scratch_dir, tool};

/// The tool in the background with -v; its stderr lines arrive on the
/// returned channel as they are written.
fn spawn_verbose(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = tool()
        .arg("-v")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Lines from `rx` until one contains `what`; all of them, that one last.
fn wait_for_line(rx: &mpsc::Receiver<String>, what: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(what);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {what:?}; so far:\n{}", seen.join("\n")),
        }
    }
}

/// The exit code of the tool and every stderr line it wrote after `seen`.
fn finish(mut child: Child, rx: mpsc::Receiver<String>, mut seen: Vec<String>) -> (i32, String) {
    let status = child.wait().unwrap();
    seen.extend(rx.iter());
    (status.code().unwrap_or(-1), seen.join("\n"))
}

/// Overwrite `len` bytes of a file in place at `offset`, as the server
/// rewrites pg_control.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn a_pg_control_that_never_reads_consistently_fails_the_backup() {
    let src = Cluster::start(15);
    src.pgbench_init(3);
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let dsn = src.dsn();
    let (child, rx) = spawn_verbose(&[
        "-j",
        "2",
        "-c",
        "fast",
        "-r",
        "8M",
        &dsn,
        dest.to_str().unwrap(),
    ]);
    // After the listing nothing asks the server about pg_control any more
    // (its pg_control_*() functions check the CRC too, and would fail):
    // from then on only our read of the file sees it.
    let seen = wait_for_line(&rx, "read requests");
    let control = src.data.join("global/pg_control");
    let original = std::fs::read(&control).unwrap();
    // The checkpoint location (offset 16), changed without a new CRC: what
    // a read that overlaps a rewrite looks like.
    overwrite(&control, 16, &[0xAB; 8]);
    let (code, stderr) = finish(child, rx, seen);
    overwrite(&control, 0, &original);
    assert_eq!(code, 6, "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].contains("global/pg_control was read 5 times and never consistently")
            && errors[0].contains("CRC"),
        "{stderr}"
    );
    assert!(!dest.exists(), "the partial copy is removed");
    src.assert_no_leftovers();
}
