//! The memory bound: a worker holds at most two chunks, each costing its
//! size once (vendor/README.md), so peak RSS stays within 24 MB plus
//! 2.5 x chunk size x jobs. Large chunks make the difference plain: with
//! 32 MB chunks at -j 1 this copy peaks at about 50 MB, and did at 89 MB
//! when the connection buffer grew by doubling, so the test holds it to
//! 24 MB + 1.5 chunks, which the old way fails.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use crate::common::{Cluster, scratch_dir, tool};

/// Run the tool to its end; its exit status and peak RSS in kB (wait4).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
fn run_measured(args: &[&str]) -> (ExitStatus, i64, String) {
    let child = tool()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pg_basebackup");
    let pid = child.id() as libc::pid_t;
    // Read stderr on the side so a chatty child cannot block on a full pipe.
    let mut stderr = child.stderr.expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    (
        ExitStatus::from_raw(status),
        usage.ru_maxrss,
        reader.join().unwrap(),
    )
}

#[test]
fn peak_rss_stays_within_one_and_a_half_chunks_at_one_job() {
    let src = Cluster::start(15);
    // About 100 MB of relation data: a few full 32 MB chunks.
    src.pgbench_init(7);
    src.psql("CHECKPOINT");
    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let (status, maxrss_kb, stderr) = run_measured(&[
        "-j",
        "1",
        "-x",
        "-c",
        "fast",
        "--chunk-size",
        "32M",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert!(status.success(), "pg_basebackup failed: {stderr}");
    let bound_kb = (24 + 32 + 32 / 2) * 1024;
    eprintln!("peak RSS at -j 1, 32 MB chunks: {maxrss_kb} kB (bound {bound_kb} kB)");
    assert!(
        maxrss_kb <= bound_kb,
        "peak RSS {maxrss_kb} kB exceeds {bound_kb} kB"
    );
    src.stop();
    let copy = Cluster::start_on_copy(&dest, 15);
    assert_eq!(
        copy.psql("SELECT count(*) FROM pgbench_accounts").trim(),
        "700000"
    );
}
