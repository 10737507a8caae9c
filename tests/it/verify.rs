//! Proving backups: pg_verifybackup accepts our backup_manifest, and data
//! page checksum failures are found, reported and signalled by exit code.

use std::os::unix::fs::FileExt;

use crate::common::{Cluster, ClusterOptions, assert_verifies, run, scratch_dir, verifybackup};

#[test]
fn pg_verifybackup_accepts_the_manifest_and_catches_a_changed_byte() {
    let src = Cluster::start(15);
    src.pgbench_init(2);
    let scratch = scratch_dir();
    for alg in ["CRC32C", "SHA256"] {
        let dest = scratch.path().join(format!("copy-{alg}"));
        let load = src.pgbench_load(2);
        // A small chunk size splits files across workers and out of order.
        let out = run(&[
            "-j",
            "3",
            "-x",
            "-c",
            "fast",
            "--chunk-size",
            "64k",
            "--manifest-checksums",
            alg,
            &src.dsn(),
            dest.to_str().unwrap(),
        ]);
        load.stop();
        assert!(out.status.success());
        let manifest = std::fs::read_to_string(dest.join("backup_manifest")).unwrap();
        assert!(manifest.contains(&format!("\"Checksum-Algorithm\": \"{alg}\"")));
        assert_verifies(15, &dest);

        let accounts = src.psql("SELECT pg_relation_filepath('pgbench_accounts')");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dest.join(&accounts))
            .unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, 100_000).unwrap();
        f.write_all_at(&[byte[0] ^ 0xff], 100_000).unwrap();
        let v = verifybackup(15, &dest);
        assert!(!v.status.success(), "a changed byte must fail verification");
        assert!(
            String::from_utf8_lossy(&v.stderr).contains("checksum mismatch"),
            "{}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let dest = scratch.path().join("no-manifest");
    assert!(
        run(&[
            "--no-manifest",
            "-c",
            "fast",
            &src.dsn(),
            dest.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert!(!dest.join("backup_manifest").exists());
}

#[test]
fn corrupt_data_page_is_reported_and_sets_the_exit_code() {
    let src = ClusterOptions::new(15).data_checksums().start();
    src.psql("CREATE TABLE t AS SELECT i, repeat('x', 100) AS pad FROM generate_series(1, 20000) i; CHECKPOINT");
    let rel = src.psql("SELECT pg_relation_filepath('t')");
    // Corrupt block 3 behind a stopped server, then start it again.
    src.stop();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(src.data.join(&rel))
        .unwrap();
    f.write_all_at(b"corruption!", 3 * 8192 + 4000).unwrap();
    drop(f);
    src.restart();

    let scratch = scratch_dir();
    let dest = scratch.path().join("copy");
    let out = run(&[
        "-j",
        "2",
        "-x",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(8),
        "checksum failures have their own exit code"
    );
    assert!(
        stderr.contains(&format!(
            "checksum verification failed in file \"{rel}\", block 3"
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("checksum verification failed").count(),
        1,
        "only the corrupt block: {stderr}"
    );
    assert!(
        dest.join("backup_label").is_file(),
        "the backup still completes"
    );

    let dest = scratch.path().join("unchecked");
    let out = run(&[
        "--no-verify-checksums",
        "-c",
        "fast",
        &src.dsn(),
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success());
}
