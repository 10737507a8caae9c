//! --incremental: backups in PostgreSQL 17/18's own incremental format, taken
//! under pgbench writes, chained (full, incremental, incremental; mixed with
//! PostgreSQL's own pg_basebackup), combined by PostgreSQL's pg_combinebackup
//! of the server's major, then started and checked (pgbench's invariant, the
//! tables created, dropped, truncated and vacuumed meanwhile, pg_amcheck,
//! pg_verifybackup); and the refusals (exit 4, nothing written to DEST).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{
    self, Cluster, ClusterOptions, assert_ok, assert_verifies, run_ok, scratch_dir, tools_cmd,
};

/// Tables the chain tests create before the full backup. `cold` is hardly
/// written afterwards (its file must be an INCREMENTAL. one), `dropme` is
/// dropped, `trunc_me` truncated, `vac_me` shortened by VACUUM later.
const SETUP: &str = "
CREATE TABLE cold AS SELECT i, repeat('c', 200) AS pad FROM generate_series(1, 40000) AS i;
CREATE INDEX cold_i ON cold (i);
CREATE TABLE dropme AS SELECT generate_series(1, 10000) AS i;
CREATE TABLE trunc_me AS SELECT i, repeat('t', 100) AS pad FROM generate_series(1, 20000) AS i;
CREATE TABLE vac_me AS SELECT i, repeat('v', 500) AS pad FROM generate_series(1, 20000) AS i;
CHECKPOINT;
";

/// Between the full backup and the first incremental.
const WRITES_1: &str = "
DROP TABLE dropme;
TRUNCATE trunc_me;
INSERT INTO trunc_me SELECT i, 'after truncate' FROM generate_series(1, 100) AS i;
CREATE TABLE created AS SELECT i, md5(i::text) AS h FROM generate_series(1, 30000) AS i;
CREATE INDEX created_h ON created (h);
UPDATE cold SET pad = repeat('C', 200) WHERE i % 1000 = 0;
";

/// Between the first incremental and the second.
const WRITES_2: &str = "
INSERT INTO created SELECT i, md5(i::text) FROM generate_series(30001, 40000) AS i;
DELETE FROM vac_me WHERE i > 15000;
VACUUM vac_me;
CREATE TABLE created_later AS SELECT generate_series(1, 1000) AS i;
UPDATE trunc_me SET pad = 'updated' WHERE i <= 10;
";

/// Row count and a hash of the contents of every table the chain tests
/// keep (pgbench's aside), in one line; an error when one is missing.
const FINGERPRINT: &str = "
SELECT concat_ws(' ',
  (SELECT count(*) || '/' || sum(hashtext(t::text)) FROM cold t),
  (SELECT count(*) || '/' || sum(hashtext(t::text)) FROM created t),
  (SELECT count(*) || '/' || sum(hashtext(t::text)) FROM created_later t),
  (SELECT count(*) || '/' || sum(hashtext(t::text)) FROM trunc_me t),
  (SELECT count(*) || '/' || sum(hashtext(t::text)) FROM vac_me t))
";

/// Whether this run covers `major` (17+: incremental backups exist).
fn covers(major: u32) -> bool {
    let yes = common::available_majors().contains(&major);
    if !yes {
        eprintln!("skipped: no PostgreSQL {major} in this run");
    }
    yes
}

/// A server of `major` that keeps WAL summaries, with data checksums.
fn summarizing(major: u32) -> Cluster {
    ClusterOptions::new(major)
        .data_checksums()
        .conf("summarize_wal = on")
        .start()
}

/// The source of a chain: a summarizing server of `major` with pgbench's
/// tables and [`SETUP`]'s, and the path of table `cold`; None when this run
/// has no `major`.
fn chain_source(major: u32) -> Option<(Cluster, String)> {
    if !covers(major) {
        return None;
    }
    let src = summarizing(major);
    src.pgbench_init(2);
    src.psql(SETUP);
    let cold = src.psql("SELECT pg_relation_filepath('cold')");
    Some((src, cold))
}

/// The tool: `-x -c fast [--incremental PRIOR] EXTRA... DSN DEST`.
fn our_backup(src: &Cluster, dest: &Path, prior: Option<&Path>, extra: &[&str]) -> Output {
    let mut cmd = common::tool();
    cmd.args(["-x", "-c", "fast"]);
    if let Some(prior) = prior {
        cmd.arg("--incremental").arg(prior);
    }
    cmd.args(extra).arg(src.dsn()).arg(dest);
    cmd.output().expect("run pg_basebackup")
}

/// PostgreSQL's own pg_basebackup of the server's major (replication
/// connection on the socket, `-X stream`), full or incremental.
fn their_backup(src: &Cluster, dest: &Path, prior: Option<&Path>) {
    let mut cmd = tools_cmd(src.version, "pg_basebackup");
    cmd.arg("-h")
        .arg(&src.socket_dir)
        .args(["-p", &src.port.to_string(), "-U", "postgres"])
        .args(["-c", "fast", "-X", "stream", "-D"])
        .arg(dest);
    if let Some(prior) = prior {
        cmd.arg("--incremental").arg(prior);
    }
    run_ok(&mut cmd, &format!("pg_basebackup {}", src.version));
}

/// Output format of a chain.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Plain,
    Tar,
}

/// One backup of a chain: DEST as the tool wrote it, and the directory
/// pg_combinebackup reads (DEST itself, or the tar extracted).
struct Taken {
    dest: PathBuf,
    dir: PathBuf,
}

impl Taken {
    /// The manifest to name as the next backup's prior.
    fn manifest(&self) -> PathBuf {
        self.dest.join("backup_manifest")
    }
}

/// `tar -xf` of `archive` into `into` (created).
fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into),
        &format!("tar -xf {}", archive.display()),
    );
}

/// The directory pg_combinebackup reads for a backup in `dest`: a tar
/// backup is extracted first (base.tar, pg_wal.tar into pg_wal, and the
/// manifest beside them), as a DBA must.
fn readable(dest: &Path, format: Format) -> PathBuf {
    if format == Format::Plain {
        return dest.to_path_buf();
    }
    let dir = dest.with_extension("extracted");
    untar(&dest.join("base.tar"), &dir);
    untar(&dest.join("pg_wal.tar"), &dir.join("pg_wal"));
    std::fs::copy(dest.join("backup_manifest"), dir.join("backup_manifest")).unwrap();
    dir
}

/// Our backup into `scratch/name` under pgbench writes; panics unless it
/// succeeded.
fn take(
    src: &Cluster,
    scratch: &Path,
    name: &str,
    prior: Option<&Taken>,
    format: Format,
    jobs: &str,
) -> Taken {
    let dest = scratch.join(name);
    let mut extra = vec!["-j", jobs];
    if format == Format::Tar {
        extra.extend(["-F", "t"]);
    }
    let load = src.pgbench_load(2);
    std::thread::sleep(Duration::from_millis(300));
    let prior_manifest = prior.map(Taken::manifest);
    let out = our_backup(src, &dest, prior_manifest.as_deref(), &extra);
    load.stop();
    assert_ok(&out);
    let dir = readable(&dest, format);
    Taken { dest, dir }
}

/// PostgreSQL's own backup into `scratch/name` under pgbench writes.
fn take_theirs(src: &Cluster, scratch: &Path, name: &str, prior: Option<&Taken>) -> Taken {
    let dest = scratch.join(name);
    let load = src.pgbench_load(2);
    std::thread::sleep(Duration::from_millis(300));
    their_backup(src, &dest, prior.map(Taken::manifest).as_deref());
    load.stop();
    Taken {
        dir: dest.clone(),
        dest,
    }
}

/// The incremental in `incr` holds `rel` (a path under the data
/// directory) as `INCREMENTAL.<name>`, smaller than the relation file in
/// `full`, and not as a whole file.
fn assert_incremental_file(incr: &Path, full: &Path, rel: &str) {
    let rel = Path::new(rel);
    let name = rel.file_name().unwrap().to_str().unwrap();
    let inc = incr.join(rel.with_file_name(format!("INCREMENTAL.{name}")));
    assert!(
        !incr.join(rel).exists(),
        "{} was sent whole, though hardly written since the prior backup",
        rel.display()
    );
    let inc_size = std::fs::metadata(&inc)
        .unwrap_or_else(|e| panic!("{}: {e}", inc.display()))
        .len();
    let full_size = std::fs::metadata(full.join(rel)).unwrap().len();
    assert!(
        inc_size < full_size / 2,
        "{}: {inc_size} bytes, the whole file {full_size}",
        inc.display()
    );
}

/// The incremental backup's label names the prior backup's start.
fn assert_label_chains(incr: &Path, prior: &Path) {
    let label = std::fs::read_to_string(incr.join("backup_label")).unwrap();
    let prior_label = std::fs::read_to_string(prior.join("backup_label")).unwrap();
    let field = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        field(&label, "INCREMENTAL FROM LSN: "),
        field(&prior_label, "START WAL LOCATION: "),
        "backup_label of {}",
        incr.display()
    );
    assert_eq!(
        field(&label, "INCREMENTAL FROM TLI: "),
        field(&prior_label, "START TIMELINE: ")
    );
}

/// `pg_combinebackup` of the server's major: the chain into `out`.
fn combine(major: u32, chain: &[&Taken], out: &Path) {
    let mut cmd = tools_cmd(major, "pg_combinebackup");
    cmd.args(chain.iter().map(|t| &t.dir)).arg("-o").arg(out);
    run_ok(&mut cmd, &format!("pg_combinebackup {major}"));
}

/// Counting rows through the heap and through an index-only scan agree:
/// a visibility-map bit left set for a page whose rows changed since the
/// full backup makes an index-only scan return dead rows (the heap and
/// pg_amcheck look fine). PostgreSQL's WAL summaries do not list visibility
/// map pages whose bits a heap change cleared (no block reference), so its
/// own incremental backups restore such stale bits (checked with 18.6).
fn assert_visibility_map_agrees(copy: &Cluster) {
    for (table, column) in [("pgbench_accounts", "aid"), ("created", "h")] {
        let heap = copy.psql(&format!(
            "SET enable_indexscan = off; SET enable_indexonlyscan = off; \
             SET enable_bitmapscan = off; SELECT count(*) FROM {table}"
        ));
        let index_only = copy.psql(&format!(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; \
             SELECT count(*) FROM {table} WHERE {column} IS NOT NULL"
        ));
        assert_eq!(
            index_only, heap,
            "{table}: an index-only scan counts other rows than the heap: \
             stale visibility map bits in the restored chain"
        );
    }
}

/// Combine the chain, check the result with pg_verifybackup of the major,
/// start it and compare it with the source: pgbench's invariant, the
/// tables' contents (dropped table absent), pg_amcheck.
fn assert_chain_restores(src: &Cluster, chain: &[&Taken], scratch: &Path) {
    let major = src.version;
    let expected = src.psql(FINGERPRINT);
    let restored = scratch.join("restored");
    combine(major, chain, &restored);
    assert_verifies(major, &restored);
    let copy = Cluster::start_on_copy(&restored, major);
    assert_visibility_map_agrees(&copy);
    copy.assert_pgbench_consistent();
    assert_eq!(
        copy.psql(FINGERPRINT),
        expected,
        "the restored chain holds what the source held when the last backup began"
    );
    let dropped = copy.try_psql("SELECT count(*) FROM dropme");
    assert!(dropped.is_err(), "the dropped table is back: {dropped:?}");
    copy.assert_amcheck();
}

/// Full, incremental, incremental, all with this tool, under writes.
fn chain_restores(major: u32, format: Format, jobs: &str) {
    let Some((src, cold)) = chain_source(major) else {
        return;
    };
    let scratch = scratch_dir();
    let s = scratch.path();

    let full = take(&src, s, "full", None, format, jobs);
    src.psql(WRITES_1);
    let incr1 = take(&src, s, "incr1", Some(&full), format, jobs);
    src.psql(WRITES_2);
    let incr2 = take(&src, s, "incr2", Some(&incr1), format, jobs);
    src.assert_no_leftovers();

    assert_incremental_file(&incr1.dir, &full.dir, &cold);
    assert_incremental_file(&incr2.dir, &full.dir, &cold);
    assert_label_chains(&incr1.dir, &full.dir);
    assert_label_chains(&incr2.dir, &incr1.dir);
    for t in [&full, &incr1, &incr2] {
        assert_verifies(major, &t.dir);
    }
    assert_chain_restores(&src, &[&full, &incr1, &incr2], s);
}

/// PostgreSQL's full backup as the prior of our incrementals; and
/// PostgreSQL's pg_basebackup --incremental takes our last one as its prior
/// (that fourth backup is combined and verified, not started: PostgreSQL's
/// own incrementals restore stale visibility-map bits, see
/// [`assert_visibility_map_agrees`]).
fn mixed_chain_restores(major: u32) {
    let Some((src, cold)) = chain_source(major) else {
        return;
    };
    let scratch = scratch_dir();
    let s = scratch.path();

    let full = take_theirs(&src, s, "full", None);
    src.psql(WRITES_1);
    let incr1 = take(&src, s, "incr1", Some(&full), Format::Plain, "3");
    src.psql(WRITES_2);
    let incr2 = take(&src, s, "incr2", Some(&incr1), Format::Plain, "2");
    src.assert_no_leftovers();

    assert_incremental_file(&incr1.dir, &full.dir, &cold);
    assert_label_chains(&incr1.dir, &full.dir);
    assert_label_chains(&incr2.dir, &incr1.dir);
    assert_verifies(major, &incr1.dir);
    assert_chain_restores(&src, &[&full, &incr1, &incr2], s);

    src.psql("INSERT INTO created_later SELECT generate_series(1001, 2000)");
    let theirs = take_theirs(&src, s, "incr3", Some(&incr2));
    assert_label_chains(&theirs.dir, &incr2.dir);
    let combined = s.join("combined-with-theirs");
    combine(major, &[&full, &incr1, &incr2, &theirs], &combined);
    assert_verifies(major, &combined);
}

macro_rules! chain_tests {
    ($($name:ident: $body:expr,)*) => {$(
        #[test]
        fn $name() {
            $body;
        }
    )*};
}

chain_tests! {
    plain_chain_with_four_jobs_restores_on_17: chain_restores(17, Format::Plain, "4"),
    plain_chain_with_four_jobs_restores_on_18: chain_restores(18, Format::Plain, "4"),
    tar_chain_restores_on_17: chain_restores(17, Format::Tar, "2"),
    tar_chain_restores_on_18: chain_restores(18, Format::Tar, "2"),
    chain_mixed_with_postgres_pg_basebackup_restores_on_17: mixed_chain_restores(17),
    chain_mixed_with_postgres_pg_basebackup_restores_on_18: mixed_chain_restores(18),
}

/// A refused incremental: exit 4, one line (hints aside) that contains
/// `names`, DEST not created, nothing of ours left on the server.
fn assert_refused(src: &Cluster, prior: &Path, dest: &Path, names: &str) {
    let out = our_backup(src, dest, Some(prior), &["-j", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "PostgreSQL {}: refused as a server that cannot be backed up so: {stderr}",
        src.version
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("pg_basebackup: hint:"))
        .collect();
    assert!(
        lines.len() == 1 && lines[0].to_lowercase().contains(names),
        "one line naming {names:?}: {stderr}"
    );
    assert!(
        !dest.exists(),
        "nothing written to DEST: {}",
        dest.display()
    );
    src.assert_no_leftovers();
}

/// A small cluster of `major` with a table, and a full backup of it by this
/// tool in `scratch/name`; returns the backup's manifest.
fn small_full_backup(src: &Cluster, scratch: &Path, name: &str) -> PathBuf {
    src.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    let dest = scratch.join(name);
    assert_ok(&our_backup(src, &dest, None, &[]));
    dest.join("backup_manifest")
}

/// summarize_wal off, and a prior backup of another cluster, are refused;
/// the same prior on its own cluster with summaries is not.
fn refusals(major: u32) {
    if !covers(major) {
        return;
    }
    let scratch = scratch_dir();
    let s = scratch.path();
    let unsummarized = Cluster::start(major);
    let prior = small_full_backup(&unsummarized, s, "full-off");
    assert_eq!(unsummarized.psql("SHOW summarize_wal"), "off");
    assert_refused(&unsummarized, &prior, &s.join("incr-off"), "summarize_wal");

    let other = summarizing(major);
    assert_refused(&other, &prior, &s.join("incr-other"), "system identifier");

    // The control: on its own cluster the summarizing server takes it.
    let own_prior = small_full_backup(&other, s, "full-own");
    other.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let dest = s.join("incr-own");
    assert_ok(&our_backup(&other, &dest, Some(&own_prior), &["-j", "2"]));
    let restored = s.join("restored");
    let full = Taken {
        dir: own_prior.parent().unwrap().to_path_buf(),
        dest: own_prior.parent().unwrap().to_path_buf(),
    };
    let incr = Taken {
        dir: dest.clone(),
        dest,
    };
    combine(major, &[&full, &incr], &restored);
    let copy = Cluster::start_on_copy(&restored, major);
    let count = "SELECT count(*), sum(i) FROM t";
    assert_eq!(copy.psql(count), other.psql(count));
}

#[test]
fn summarize_wal_off_and_another_cluster_are_refused_on_17() {
    refusals(17);
}

#[test]
fn summarize_wal_off_and_another_cluster_are_refused_on_18() {
    refusals(18);
}

/// A server older than 17 has no WAL summaries: refused, whatever the
/// prior (here a full backup of that server itself). The newest major below
/// 17 of this run, else Debian's 15 (always there, as for the areas that
/// test one fixed version).
#[test]
fn a_server_older_than_17_is_refused() {
    let major = common::available_majors()
        .into_iter()
        .filter(|m| (13..17).contains(m))
        .max()
        .unwrap_or(15);
    let scratch = scratch_dir();
    let src = Cluster::start(major);
    let prior = small_full_backup(&src, scratch.path(), "full");
    assert_refused(&src, &prior, &scratch.path().join("incr"), "postgresql 17");
}
