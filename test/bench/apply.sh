#!/usr/bin/env bash
# test/bench/apply.sh -- eventstream's consumer side against PostgreSQL's own
# logical replication, side by side in one run, on the same machine, with
# the same workloads and the same table t (id int primary key, v text, n int).
#
# Four private temporary clusters with identical settings (below): an
# eventstream producer site and consumer site, a native publisher and
# subscriber.  Every measurement gets a fresh pair of databases (created
# just before it, dropped right after; nothing carries over: no update log,
# sync log, slot or bloat from an earlier run), and the two systems never
# run at the same time; which one goes first alternates from round to round.
#   eventstream: both databases are sites (eventstream.http_port, CREATE
#     EXTENSION); the producer's table is readable by role branch, whose API
#     key the consumer uses; the consumer applies as role applier (not a
#     superuser); add_producer(..., initial_sync => false), then approve.
#     The consumer's site worker pulls and applies by itself.
#   native: CREATE PUBLICATION pub FOR TABLE t; CREATE SUBSCRIPTION ...
#     CONNECTION 'host=127.0.0.1 port=<publisher>' (TCP loopback, like
#     eventstream's HTTP) WITH (copy_data = false) -- defaults otherwise
#     (streaming = off, binary = false, synchronous_commit = off); it applies
#     as its owner, the superuser postgres.
# Both pairs are ready (eventstream: producer_status 'streaming' with t
# Approved; native: apply worker running, walsender 'streaming') before a
# measurement starts.
#
# (a) apply throughput, `rounds` rounds of three workloads:
#     bulk   one transaction: INSERT ... SELECT generate_series, `rows` rows
#     small  `rows`/100 transactions of 100 inserted rows (a DO loop with COMMIT)
#     mixed  `rows`/200 transactions, each inserting 100 new rows and
#            updating 50 and deleting 20 of the rows the previous one
#            inserted (rows/2 inserts, ~rows/4 updates, ~rows/10 deletes)
#     Timed from the start of the workload on the producer (t0) and from its
#     last commit (t1) until the consumer has the last transaction (t2,
#     polled every 5 ms: the row with the highest id exists; both systems
#     apply whole transactions in commit order).  Then the whole table must
#     be equal on both sides (count, sum(n), md5 of every row in id order),
#     and on eventstream the consumer's sync_log must hold one Synced row
#     per update the producer logged.  Rates:
#       e2e    changes / (t2 - t0): the stream from the first write to the
#              last apply, capture and serving included; the headline for
#              the multi-transaction workloads
#       apply  changes / (t2 - t1): from the commit; the headline for bulk,
#              whose changes can only travel after its commit (native too:
#              streaming = off)
# (b) end-to-end latency: a writer commits single-row inserts at `rate`/s
#     for `latency_s` seconds on a fixed schedule while an observer polls
#     max(id) on the consumer about every ms (apply_drive.pl latency);
#     latency = first seen - INSERT sent (autocommit: the producer's insert,
#     capture and commit are part of it; monotonic clock, one process tree),
#     the first second left out as warm-up: p50 / p90 / p99 / max.
# (c) catch-up: `backlog_rows` rows exist on both sides (loaded before
#     subscribing), the consumer's cluster is stopped, `backlog` updates
#     (n = n + 1, transactions of 1000 rows, backlog/backlog_rows passes
#     over the table) are committed on the producer, then the consumer's
#     cluster is started and timed (from pg_ctl start) until the backlog's
#     first transaction is visible (first_s: is it applied progressively?)
#     and until its last one is (total_s); meanwhile /proc/<pid>/status of the consumer's
#     applying process (eventstream worker / logical replication worker)
#     and the producer's serving process (eventstream worker / walsender)
#     is sampled every 50 ms: peak VmHWM (the kernel's high-water mark of
#     resident memory, shared buffers it touched included) and peak RssAnon
#     (private memory, sampled).
#
# Per run the CPU seconds of the producer's and the consumer's cluster are
# shown, and other% warns when something else on the machine competed.
#
# Usage (as root, from anywhere):
#   bash test/bench/apply.sh [quick|full] [name=value ...]
#     full  (default) rounds=3 rows=200000 rate=100 latency_s=20
#           backlog=1000000 backlog_rows=100000
#     quick rounds=1 rows=20000 rate=100 latency_s=5
#           backlog=100000 backlog_rows=10000
#   and in both deadline=600 (seconds a consumer may take to get a
#   workload of (a) or (b)) and catchup_deadline=1800 (for (c)).
#   name=value overrides one of them, e.g. rounds=5 or rows=50000;
#   parts=abc chooses the parts to run (default abc).
#   ES_BENCH_CONF='name = value; ...' adds settings to all four clusters.
# On a 2-core VM: about 1 minute in quick mode; 5 to 10 minutes in full
# mode (most of it eventstream's catch-up), the build included.
# Exit status 0 when every run converged and every table matched; 1 with
# the failing step, the consumer's status and the servers' last log lines
# otherwise.
set -Eeuo pipefail

BENCH_NAME=apply.sh
trap 'echo "$BENCH_NAME: failed at ${BASH_SOURCE[0]##*/} line $LINENO: $BASH_COMMAND" >&2' ERR
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
COMMAND_LINE=$(printf '%q ' bash "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }

usage() {
	echo "usage: bash test/bench/apply.sh [quick|full] [rounds=N] [rows=N] [rate=N] [latency_s=N] [backlog=N] [backlog_rows=N] [deadline=S] [catchup_deadline=S] [parts=abc]" >&2
	exit 2
}
bench_die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

MODE=full
if [ $# -gt 0 ] && [[ $1 == quick || $1 == full ]]; then
	MODE=$1
	shift
fi
if [ "$MODE" = quick ]; then
	rounds=1 rows=20000 rate=100 latency_s=5 backlog=100000 backlog_rows=10000
else
	rounds=3 rows=200000 rate=100 latency_s=20 backlog=1000000 backlog_rows=100000
fi
deadline=600
catchup_deadline=1800
parts=abc
for arg in "$@"; do
	case $arg in
	rounds=* | rows=* | rate=* | latency_s=* | backlog=* | backlog_rows=* | deadline=* | catchup_deadline=*)
		[[ ${arg#*=} =~ ^[1-9][0-9]*$ ]] || usage
		declare "$arg" ;;
	parts=*)
		[[ ${arg#*=} =~ ^[abc]+$ ]] || usage
		parts=${arg#*=} ;;
	*) usage ;;
	esac
done
(( rows % 200 == 0 )) || bench_die "rows must be a multiple of 200 (transactions of 100; mixed inserts rows/2)"
(( backlog_rows % 1000 == 0 && backlog % backlog_rows == 0 )) ||
	bench_die "backlog_rows must be a multiple of 1000 and backlog a multiple of backlog_rows"
(( latency_s >= 2 )) || bench_die "latency_s must be at least 2 (the first second is warm-up)"

# ---------------------------------------------------------------------------
# Packages, build, install
# ---------------------------------------------------------------------------

# What is built: the commit, and whether src/ or the Makefile had changes on top
# (the tree is copied right after this).
ES_REV=$(cd "$BENCH_DIR/../.." && git rev-parse --short HEAD 2>/dev/null || echo '?')
if [ -n "$(cd "$BENCH_DIR/../.." && git status --porcelain -- src Makefile 2>/dev/null)" ]; then
	ES_REV+=" + uncommitted changes in src/ or Makefile"
fi
BENCH_T0=$SECONDS
own_build=${ES_BUILD:-}
. "$BENCH_DIR/../setup.sh"		# sets ES_BUILD, PG_BIN, as_pg; checks root

es_install_packages procps libdbi-perl libdbd-pg-perl

# ---------------------------------------------------------------------------
# Four throwaway clusters
# ---------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/eventstream-apply.XXXXXX)
chmod 755 "$WORK"
chown postgres:postgres "$WORK"
CLUSTERS="esp esc np ns"		# eventstream producer/consumer, native publisher/subscriber
BENCH_DATA_DIRS=$(for c in $CLUSTERS; do printf '%s ' "$WORK/$c"; done)
declare -A PORT CLUSTER_NAME
CLUSTER_NAME=([esp]="eventstream producer" [esc]="eventstream consumer" [np]="native publisher" [ns]="native subscriber")
BENCH_PIDS=()
bench_cleanup() {
	local c pid
	for pid in "${BENCH_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for c in $CLUSTERS; do
		if [ -f "$WORK/$c/postmaster.pid" ]; then
			$as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -m immediate -w stop >/dev/null 2>&1 || true
		fi
	done
	rm -rf "$WORK"
	[ -n "$own_build" ] || rm -rf "$ES_BUILD"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"		# somewhere the postgres user may be

CONF="shared_preload_libraries = 'eventstream'
eventstream.prune_interval = 0
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 50
shared_buffers = 256MB
fsync = off
synchronous_commit = on
max_wal_size = 8GB
checkpoint_timeout = 1h
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_logical_replication_workers = 4
max_worker_processes = 16
log_min_messages = warning"
if [ -n "${ES_BENCH_CONF:-}" ]; then
	CONF+=$'\n'"${ES_BENCH_CONF//;/$'\n'}"
fi

# A TCP port nobody listens on and that no cluster or site here has taken,
# below the kernel's range of ephemeral ports when there is room (so that
# no client connection takes it between the check and the bind).  Another
# process may still take it first: starting a cluster, or a site's HTTP
# server, is retried with another port then.
USED_PORTS=" "
read -r EPH_LO _ < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LO=32768
if [ "${EPH_LO:-0}" -gt 12000 ]; then
	PORT_LO=10000 PORT_SPAN=$(( EPH_LO - 10000 ))
else
	PORT_LO=20000 PORT_SPAN=40000
fi
port_answers() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
free_port() {
	local p
	for _ in $(seq 100); do
		p=$(( PORT_LO + (RANDOM * 32768 + RANDOM) % PORT_SPAN ))
		if [[ $USED_PORTS != *" $p "* ]] && ! port_answers "$p" && [ ! -e "$WORK/.s.PGSQL.$p" ]; then
			echo "$p"
			return 0
		fi
	done
	echo "$BENCH_NAME: found no free TCP port" >&2
	return 1
}

start_cluster() {
	local c=$1 p attempt
	if [ -n "${PORT[$c]:-}" ]; then
		$as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -l "$WORK/$c.log" -o "-p ${PORT[$c]}" -w -t 60 start >/dev/null ||
			bench_die "the ${CLUSTER_NAME[$c]} cluster did not start again on port ${PORT[$c]}"
		return
	fi
	for attempt in 1 2 3 4 5; do
		p=$(free_port)
		if $as_pg "$PG_BIN/pg_ctl" -D "$WORK/$c" -l "$WORK/$c.log" -o "-p $p" -w -t 60 start >/dev/null; then
			PORT[$c]=$p
			USED_PORTS+="$p "
			return
		fi
		echo "== ${CLUSTER_NAME[$c]}: the server did not start on port $p (attempt $attempt)" >&2
		tail -n 5 "$WORK/$c.log" >&2 || true
	done
	bench_die "could not start the ${CLUSTER_NAME[$c]} cluster"
}
stop_cluster() {
	$as_pg "$PG_BIN/pg_ctl" -D "$WORK/$1" -m fast -w -t 120 stop >/dev/null
}

# psql_on CLUSTER DB [psql args]: unaligned, tuples only, stop on error.
psql_on() {
	local c=$1 db=$2
	shift 2
	$as_pg "$PG_BIN/psql" -h "$WORK" -p "${PORT[$c]}" -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"
}

# wait_for CLUSTER DB SQL EXPECTED SECONDS WHAT: poll until SQL returns EXPECTED.
wait_for() {
	local c=$1 db=$2 sql=$3 expected=$4 secs=$5 what=$6 last=""
	local deadline_t=$(( SECONDS + secs ))
	while [ "$SECONDS" -lt "$deadline_t" ]; do
		last=$(psql_on "$c" "$db" -c "$sql" 2>&1 || true)
		[ "$last" = "$expected" ] && return 0
		sleep 0.05
	done
	echo "$BENCH_NAME: FAILED: $what: waited $secs s on the ${CLUSTER_NAME[$c]} ($db) for" >&2
	echo "  $sql" >&2
	echo "to return '$expected'; last: '$last'" >&2
	diagnose "$db"
	exit 1
}

for c in $CLUSTERS; do
	$as_pg "$PG_BIN/initdb" -D "$WORK/$c" -A trust -U postgres --no-sync >/dev/null
	printf '\n# test/bench/%s\n%s\n' "$BENCH_NAME" "$CONF" >> "$WORK/$c/postgresql.conf"
	start_cluster "$c"
done
psql_on esp postgres -c "CREATE ROLE branch"
psql_on esc postgres -c "CREATE ROLE applier"

# ---------------------------------------------------------------------------
# Pairs of databases
# ---------------------------------------------------------------------------

TABLE_DDL="CREATE TABLE t (id int PRIMARY KEY, v text, n int NOT NULL DEFAULT 0)"
VERIFY_SQL="SELECT count(*) || ' ' || coalesce(sum(n), 0) || ' ' || coalesce(md5(string_agg(id || ':' || coalesce(v, '') || ':' || n, ',' ORDER BY id)), '-') FROM t"

# Where each pair's producer and consumer are (host:port:db for apply_drive.pl).
pair_clusters() {
	case $1 in
	es) PROD_C=esp CONS_C=esc ;;
	native) PROD_C=np CONS_C=ns ;;
	esac
}

# es_sites DB PRELOAD: database DB on both eventstream clusters, each a site
# with an HTTP port of its own, table t (and PRELOAD rows); false when a
# site does not answer health within 20 s (its port was taken, say):
# ES_SITES_OK=0 then (it returns 0 either way, so that errexit still
# applies to what it runs).
declare -A HTTP_PORT
es_sites() {
	local db=$1 preload=$2 c hp
	local load="INSERT INTO t (id, v, n) SELECT g, md5(g::text), 0 FROM generate_series(1, $preload) g"
	ES_SITES_OK=0
	for c in esp esc; do
		hp=$(free_port)
		USED_PORTS+="$hp "
		HTTP_PORT[$c]=$hp
		psql_on "$c" postgres -c "CREATE DATABASE $db"
		psql_on "$c" postgres -c "ALTER DATABASE $db SET eventstream.http_port = $hp"
		psql_on "$c" "$db" -c "CREATE EXTENSION eventstream"
		psql_on "$c" "$db" -c "$TABLE_DDL"
		[ "$preload" -eq 0 ] || psql_on "$c" "$db" -c "$load" -c "VACUUM ANALYZE t"
	done
	for c in esp esc; do
		local health="" deadline_t=$(( SECONDS + 20 ))
		while [ "$SECONDS" -lt "$deadline_t" ]; do
			health=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${HTTP_PORT[$c]}/api/eventstream/v1/health" || true)
			[ "$health" = 200 ] && break
			sleep 0.05
		done
		if [ "$health" != 200 ]; then
			echo "== the ${CLUSTER_NAME[$c]} site $db did not answer health on port ${HTTP_PORT[$c]} within 20 s (last '$health')" >&2
			return 0
		fi
	done
	ES_SITES_OK=1
}

# new_pair SYSTEM DB [PRELOAD]: a fresh producer and consumer database DB,
# table t on both (PRELOAD rows 1..PRELOAD on both, loaded before
# subscribing), subscribed, approved and ready.
new_pair() {
	local sys=$1 db=$2 preload=${3:-0} c hp key pair
	pair_clusters "$sys"
	local load="INSERT INTO t (id, v, n) SELECT g, md5(g::text), 0 FROM generate_series(1, $preload) g"
	if [ "$sys" = es ]; then
		local attempt
		for attempt in 1 2 3; do
			es_sites "$db" "$preload"
			[ "$ES_SITES_OK" = 0 ] || break
			echo "== eventstream pair $db: a site did not answer health (attempt $attempt), again with other ports" >&2
			psql_on esc postgres -c "DROP DATABASE $db WITH (FORCE)"
			psql_on esp postgres -c "DROP DATABASE $db WITH (FORCE)"
			[ "$attempt" -lt 3 ] || { diagnose "$db"; bench_die "FAILED: eventstream pair $db: the sites did not answer health in 3 attempts"; }
		done
		psql_on esp "$db" -c "GRANT SELECT ON t TO branch"
		pair=$(psql_on esp "$db" -c "SELECT api_key || ':' || api_secret FROM eventstream.create_api_key('branch')")
		psql_on esc "$db" -c "GRANT SELECT, INSERT, UPDATE, DELETE ON t TO applier"
		psql_on esc "$db" -c "SELECT eventstream.add_producer(producer_url => 'http://127.0.0.1:${HTTP_PORT[esp]}', api_key => '${pair%%:*}', api_secret => '${pair#*:}', subscriber => 'applier', tables => ARRAY['t'], initial_sync => false)" >/dev/null
		psql_on esp "$db" -c "SELECT eventstream.approve(consumer_url, 'public.t') FROM eventstream.consumer" >/dev/null
		wait_for esc "$db" "SELECT state || ' ' || tables_approved || ' ' || tables_pending FROM eventstream.producer_status" \
			"streaming 1 0" 60 "eventstream pair $db: the consumer streaming with t Approved"
	else
		for c in np ns; do
			psql_on "$c" postgres -c "CREATE DATABASE $db"
			psql_on "$c" "$db" -c "$TABLE_DDL"
			[ "$preload" -eq 0 ] || psql_on "$c" "$db" -c "$load" -c "VACUUM ANALYZE t"
		done
		psql_on np "$db" -c "CREATE PUBLICATION pub FOR TABLE t"
		psql_on ns "$db" -c "SET client_min_messages = warning" \
			-c "CREATE SUBSCRIPTION sub_$db CONNECTION 'host=127.0.0.1 port=${PORT[np]} dbname=$db user=postgres' PUBLICATION pub WITH (copy_data = false)"
		wait_for ns "$db" "SELECT count(*) FROM pg_stat_subscription WHERE subname = 'sub_$db' AND pid IS NOT NULL" 1 60 \
			"native pair $db: the apply worker running"
		wait_for np "$db" "SELECT state FROM pg_stat_replication WHERE application_name = 'sub_$db'" streaming 60 \
			"native pair $db: the walsender streaming"
	fi
	PROD_SPEC="$WORK:${PORT[$PROD_C]}:$db"
	CONS_SPEC="$WORK:${PORT[$CONS_C]}:$db"
}

drop_pair() {
	local sys=$1 db=$2
	pair_clusters "$sys"
	[ "$sys" = native ] && psql_on ns "$db" -c "SET client_min_messages = warning" -c "DROP SUBSCRIPTION sub_$db"
	psql_on "$CONS_C" postgres -c "DROP DATABASE $db WITH (FORCE)"
	psql_on "$PROD_C" postgres -c "DROP DATABASE $db WITH (FORCE)"
}

# What the consumer side says about itself, and the end of the server logs.
diagnose() {
	local db=$1 c
	{
		echo "---- diagnostics for $db"
		if psql_on esc "$db" -c "SELECT 1" >/dev/null 2>&1; then
			echo "eventstream consumer producer_status:"
			psql_on esc "$db" -c "SELECT state, updates_received_not_applied, last_error, synced_count, failed_now FROM eventstream.producer_status" 2>&1 || true
			echo "eventstream consumer sync_log by status:"
			psql_on esc "$db" -c "SELECT status, count(*) FROM eventstream.sync_log GROUP BY 1" 2>&1 || true
			echo "eventstream consumer's table:"
			psql_on esc "$db" -c "SELECT count(*), max(id) FROM t" 2>&1 || true
		fi
		if psql_on esp "$db" -c "SELECT 1" >/dev/null 2>&1; then
			echo "eventstream producer update_log count / consumer_status:"
			psql_on esp "$db" -c "SELECT count(*) FROM eventstream.update_log" 2>&1 || true
			psql_on esp "$db" -c "SELECT * FROM eventstream.consumer_status" 2>&1 || true
		fi
		if psql_on ns "$db" -c "SELECT 1" >/dev/null 2>&1; then
			echo "native pg_stat_subscription:"
			psql_on ns "$db" -c "SELECT * FROM pg_stat_subscription" 2>&1 || true
			psql_on ns "$db" -c "SELECT count(*), max(id) FROM t" 2>&1 || true
		fi
		if psql_on np "$db" -c "SELECT 1" >/dev/null 2>&1; then
			echo "native pg_stat_replication / slots:"
			psql_on np "$db" -c "SELECT application_name, state, sent_lsn, replay_lsn FROM pg_stat_replication" 2>&1 || true
			psql_on np "$db" -c "SELECT slot_name, active, restart_lsn, confirmed_flush_lsn FROM pg_replication_slots" 2>&1 || true
		fi
		for c in $CLUSTERS; do
			echo "---- last lines of the ${CLUSTER_NAME[$c]}'s log ($c.log)"
			tail -n 15 "$WORK/$c.log" 2>/dev/null || true
		done
	} >&2
}

# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------

. "$BENCH_DIR/cpu.sh"		# machine_busy, other_begin / other_end, median
# kv NAME: the value of NAME=... in the line on standard input.
kv() {
	tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print substr($0, length(k) + 2); found = 1 } END { if (!found) print "nan" }'
}

# drive WHAT DB SYSTEM MODE ARGS...: run apply_drive.pl, timed; on failure
# print what failed and the diagnostics, and stop.  Sets DRIVE_OUT (its line)
# and DRIVE_CPU (its CPU seconds).
TIMEFORMAT='%U %S'
drive() {
	local what=$1 db=$2 sys=$3 rc=0
	shift 3
	pair_clusters "$sys"
	{ time APPLY_PROD_DATA="$WORK/$PROD_C" APPLY_CONS_DATA="$WORK/$CONS_C" \
		perl "$BENCH_DIR/apply_drive.pl" "$@" > "$WORK/drive.out" 2> "$WORK/drive.err"; } 2> "$WORK/drive.time" || rc=$?
	if [ "$rc" -ne 0 ]; then
		echo "$BENCH_NAME: FAILED: $what (apply_drive.pl $1, exit $rc):" >&2
		cat "$WORK/drive.err" >&2
		diagnose "$db"
		exit 1
	fi
	DRIVE_OUT=$(cat "$WORK/drive.out")
	DRIVE_CPU=$(awk '{ print $1 + $2 }' "$WORK/drive.time")
}

# The eventstream consumer must have one Synced sync_log row per update the
# producer logged (each update_log_id once), none Failed, and no last_error.
# Rows it fetched as dependencies (sync_log rows without update_log_id) are
# counted in ES_DEPS.
es_check_logs() {
	local db=$1 what=$2 logged synced distinct failed deps err
	logged=$(psql_on esp "$db" -c "SELECT count(*) FROM eventstream.update_log")
	read -r synced distinct failed deps < <(psql_on esc "$db" -F ' ' -c "SELECT count(*) FILTER (WHERE status = 'Synced' AND update_log_id IS NOT NULL), count(DISTINCT update_log_id), count(*) FILTER (WHERE status <> 'Synced'), count(*) FILTER (WHERE update_log_id IS NULL) FROM eventstream.sync_log")
	err=$(psql_on esc "$db" -c "SELECT coalesce(last_error, '') FROM eventstream.producer")
	if [ "$synced" != "$logged" ] || [ "$distinct" != "$logged" ] || [ "$failed" != 0 ]; then
		diagnose "$db"
		bench_die "FAILED: $what: the producer logged $logged updates; the consumer's sync_log has $synced Synced of them ($distinct distinct update_log_ids), $failed not Synced"
	fi
	[ -z "$err" ] || echo "WARNING: $what: producer_status.last_error is set after the run: $err" >&2
	ES_LOGGED=$logged
	ES_DEPS=$deps
}

# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------

small_txns=$(( rows / 100 ))
mixed_txns=$(( rows / 200 ))
mixed_ins=$(( rows / 2 ))
mixed_upd=$(( 50 * (mixed_txns - 1) ))
mixed_del=$(( 20 * (mixed_txns - 1) ))
passes=$(( backlog / backlog_rows ))

echo "== eventstream apply benchmark: eventstream vs native logical replication"
echo "command:    ${ES_BENCH_CONF:+ES_BENCH_CONF=$(printf '%q' "$ES_BENCH_CONF") }$COMMAND_LINE"
echo "mode:       $MODE: rounds=$rounds rows=$rows rate=$rate latency_s=$latency_s backlog=$backlog backlog_rows=$backlog_rows deadline=$deadline catchup_deadline=$catchup_deadline parts=$parts"
echo "machine:    $(nproc) CPUs, $(awk '/^MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo) RAM, $(uname -r)"
echo "postgres:   $(psql_on esp postgres -c 'SELECT version()')"
echo "eventstream: $ES_REV (built from the working tree at the start)"
echo "clusters:   eventstream producer :${PORT[esp]}, consumer :${PORT[esc]}; native publisher :${PORT[np]}, subscriber :${PORT[ns]}"
echo "settings (all four clusters):"
sed 's/^/    /' <<<"$CONF"
echo "    (jit = $(psql_on esp postgres -c 'SHOW jit'); synchronous_commit = on with fsync = off: no disk"
echo "     flushes, and the walsender need not wait for the WAL writer to send a commit)"
echo "pairs:      a fresh pair of databases per run, dropped after it; the two systems never run at once"
echo "table:      $TABLE_DDL"
echo

# ---------------------------------------------------------------------------
# (a) throughput
# ---------------------------------------------------------------------------

RESULTS=$WORK/results
: > "$RESULTS"

workload_sql() {
	case $1 in
	bulk)
		echo "INSERT INTO t (id, v, n) SELECT g, md5(g::text), 0 FROM generate_series(1, $rows) g" ;;
	small)
		echo "DO \$\$ BEGIN FOR i IN 0 .. $(( small_txns - 1 )) LOOP
			INSERT INTO t (id, v, n) SELECT g, md5(g::text), 0 FROM generate_series(i * 100 + 1, i * 100 + 100) g;
			COMMIT;
		END LOOP; END \$\$" ;;
	mixed)
		echo "DO \$\$ BEGIN FOR i IN 1 .. $mixed_txns LOOP
			INSERT INTO t (id, v, n) SELECT g, md5(g::text), 0 FROM generate_series((i - 1) * 100 + 1, i * 100) g;
			IF i > 1 THEN
				UPDATE t SET v = md5(v), n = n + 1 WHERE id BETWEEN (i - 2) * 100 + 1 AND (i - 1) * 100 AND id % 2 = 0;
				DELETE FROM t WHERE id BETWEEN (i - 2) * 100 + 1 AND (i - 1) * 100 AND id % 5 = 1;
			END IF;
			COMMIT;
		END LOOP; END \$\$" ;;
	esac
}
workload_changes() {
	case $1 in
	bulk | small) echo "$rows" ;;
	mixed) echo $(( mixed_ins + mixed_upd + mixed_del )) ;;
	esac
}
workload_last_id() {
	case $1 in
	bulk | small) echo "$rows" ;;
	mixed) echo "$mixed_ins" ;;
	esac
}

RUN_SEQ=0
run_throughput() {
	local sys=$1 w=$2 r=$3 db changes produce lag total pcpu ccpu other e2e apply extra=""
	RUN_SEQ=$(( RUN_SEQ + 1 ))
	db="${sys}_${w}_r${r}_$RUN_SEQ"
	new_pair "$sys" "$db"
	changes=$(workload_changes "$w")
	other_begin
	drive "(a) $w workload, round $r, $sys" "$db" "$sys" throughput "$PROD_SPEC" "$CONS_SPEC" "$deadline" \
		"$(workload_sql "$w")" "SELECT EXISTS (SELECT 1 FROM t WHERE id = $(workload_last_id "$w"))" "$VERIFY_SQL"
	other=$(other_end "$DRIVE_CPU")
	if [ "$sys" = es ]; then
		es_check_logs "$db" "(a) $w workload, round $r, eventstream"
		[ "$ES_LOGGED" = "$changes" ] || extra+=" the producer logged $ES_LOGGED updates for $changes changes;"
		[ "$ES_DEPS" = 0 ] || extra+=" $ES_DEPS rows fetched as dependencies;"
	fi
	drop_pair "$sys" "$db"
	produce=$(kv produce_s <<<"$DRIVE_OUT"); lag=$(kv lag_s <<<"$DRIVE_OUT"); total=$(kv total_s <<<"$DRIVE_OUT")
	pcpu=$(kv prod_cpu_s <<<"$DRIVE_OUT"); ccpu=$(kv cons_cpu_s <<<"$DRIVE_OUT")
	e2e=$(awk -v n="$changes" -v s="$total" 'BEGIN { printf "%.0f", n / s }')
	apply=$(awk -v n="$changes" -v s="$lag" 'BEGIN { printf "%.0f", n / s }')
	printf '%-5s %-6s %-6s %8s %9.2f %9.3f %9.2f %10s %10s %8.2f %8.2f %6s%s\n' \
		"$r" "$w" "$sys" "$changes" "$produce" "$lag" "$total" "$e2e" "$apply" "$pcpu" "$ccpu" "$other" "$extra"
	echo "$w $sys $r $changes $produce $lag $total $e2e $apply $pcpu $ccpu $other" >> "$RESULTS"
}

WORKLOADS="bulk small mixed"
if [[ $parts == *a* ]]; then
	echo "== (a) apply throughput: $rounds round(s); per round and workload both systems, the first one alternating"
	echo "bulk:  1 transaction, INSERT ... SELECT generate_series(1, $rows): $rows inserts"
	echo "small: $small_txns transactions x 100 inserts (DO loop with COMMIT): $rows inserts"
	echo "mixed: $mixed_txns transactions (DO loop with COMMIT), each 100 inserts + 50 updates (v = md5(v), n = n + 1)"
	echo "       + 20 deletes of the previous transaction's rows: $mixed_ins inserts, $mixed_upd updates, $mixed_del deletes"
	echo "columns: produce_s = workload on the producer, start to last commit; lag_s = last commit until the"
	echo "  consumer has it; total_s = start until the consumer has it; e2e/s = changes/total_s; apply/s ="
	echo "  changes/lag_s; prod/cons cpu = CPU seconds of the producer's/consumer's whole cluster meanwhile"
	echo
	printf '%-5s %-6s %-6s %8s %9s %9s %9s %10s %10s %8s %8s %6s\n' \
		round workld system changes produce_s lag_s total_s e2e/s apply/s prod_cpu cons_cpu other%
	for (( r = 1; r <= rounds; r++ )); do
		for w in $WORKLOADS; do
			if (( r % 2 )); then
				run_throughput es "$w" "$r"; run_throughput native "$w" "$r"
			else
				run_throughput native "$w" "$r"; run_throughput es "$w" "$r"
			fi
		done
	done
	echo
fi

# ---------------------------------------------------------------------------
# (b) latency
# ---------------------------------------------------------------------------

LAT=$WORK/latency
: > "$LAT"
run_latency() {
	local sys=$1 db
	RUN_SEQ=$(( RUN_SEQ + 1 ))
	db="${sys}_lat_$RUN_SEQ"
	new_pair "$sys" "$db"
	other_begin
	drive "(b) latency, $sys" "$db" "$sys" latency "$PROD_SPEC" "$CONS_SPEC" "$deadline" "$rate" "$latency_s" 1 "$VERIFY_SQL"
	other=$(other_end "$DRIVE_CPU")
	ES_DEPS=0
	[ "$sys" = es ] && es_check_logs "$db" "(b) latency, eventstream"
	drop_pair "$sys" "$db"
	printf '%-7s %7s %7s %7s %8s %8s %8s %8s %8s %9s %9s %6s\n' "$sys" \
		"$(kv measured <<<"$DRIVE_OUT")" "$(kv rate <<<"$DRIVE_OUT")" "$(kv behind <<<"$DRIVE_OUT")" \
		"$(kv min_ms <<<"$DRIVE_OUT")" "$(kv p50_ms <<<"$DRIVE_OUT")" "$(kv p90_ms <<<"$DRIVE_OUT")" \
		"$(kv p99_ms <<<"$DRIVE_OUT")" "$(kv max_ms <<<"$DRIVE_OUT")" \
		"$(kv prod_cpu_pct <<<"$DRIVE_OUT")" "$(kv cons_cpu_pct <<<"$DRIVE_OUT")" "$other"
	[ "$ES_DEPS" = 0 ] || echo "        ($ES_DEPS rows fetched as dependencies)"
	echo "$sys $DRIVE_OUT other=$other" >> "$LAT"
}
if [[ $parts == *b* ]]; then
	echo "== (b) end-to-end latency: single-row insert transactions at $rate/s for $latency_s s (the first second is"
	echo "   warm-up), consumer polled for max(id) about every ms; latency = first seen - INSERT sent"
	echo "   prod/cons cpu% = the producer's/consumer's whole cluster, % of one CPU (the observer's polls included)"
	echo
	printf '%-7s %7s %7s %7s %8s %8s %8s %8s %8s %9s %9s %6s\n' system rows rate/s late min_ms p50_ms p90_ms p99_ms max_ms prod_cpu% cons_cpu% other%
	run_latency es
	run_latency native
	echo
fi

# ---------------------------------------------------------------------------
# (c) catch-up
# ---------------------------------------------------------------------------

CATCH=$WORK/catchup
: > "$CATCH"
backlog_sql="DO \$\$ BEGIN FOR p IN 1 .. $passes LOOP FOR b IN 0 .. $(( backlog_rows / 1000 - 1 )) LOOP
	UPDATE t SET n = n + 1 WHERE id BETWEEN b * 1000 + 1 AND b * 1000 + 1000;
	COMMIT;
END LOOP; END LOOP; END \$\$"

run_catchup() {
	local sys=$1 db t0 t1 gen size cons_pid_sql prod_pid_sql
	RUN_SEQ=$(( RUN_SEQ + 1 ))
	db="${sys}_catchup_$RUN_SEQ"
	new_pair "$sys" "$db" "$backlog_rows"
	stop_cluster "$CONS_C"
	t0=$EPOCHREALTIME
	psql_on "$PROD_C" "$db" -c "$backlog_sql"
	t1=$EPOCHREALTIME
	gen=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	if [ "$sys" = es ]; then
		size=$(psql_on esp "$db" -c "SELECT count(*) || ' update logs, ' || pg_size_pretty(pg_total_relation_size('eventstream.update_log')) FROM eventstream.update_log")
		cons_pid_sql="SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = current_database()"
		prod_pid_sql=$cons_pid_sql
	else
		size=$(psql_on np "$db" -c "SELECT 'slot holds ' || pg_size_pretty(pg_current_wal_lsn() - restart_lsn) || ' of WAL' FROM pg_replication_slots WHERE slot_name = 'sub_$db'")
		cons_pid_sql="SELECT pid FROM pg_stat_activity WHERE backend_type = 'logical replication worker' AND datname = current_database()"
		prod_pid_sql="SELECT pid FROM pg_stat_replication WHERE application_name = 'sub_$db'"
	fi
	other_begin
	drive "(c) catch-up, $sys" "$db" "$sys" catchup "$PROD_SPEC" "$CONS_SPEC" "$catchup_deadline" \
		"SELECT n > 0 FROM t WHERE id = 1" "SELECT n = $passes FROM t WHERE id = $backlog_rows" "$VERIFY_SQL" "$cons_pid_sql" "$prod_pid_sql" \
		-- $as_pg "$PG_BIN/pg_ctl" -D "$WORK/$CONS_C" -l "$WORK/$CONS_C.log" -o "-p ${PORT[$CONS_C]}" -w -t 60 start
	other=$(other_end "$DRIVE_CPU")
	ES_DEPS=0
	[ "$sys" = es ] && es_check_logs "$db" "(c) catch-up, eventstream"
	drop_pair "$sys" "$db"
	local total rate_c
	total=$(kv total_s <<<"$DRIVE_OUT")
	rate_c=$(awk -v n="$backlog" -v s="$total" 'BEGIN { printf "%.0f", n / s }')
	printf '%-7s %8s %9s %9s %9s %9s %10s %9s %9s %9s %9s %9s %9s %6s\n' "$sys" "$gen" \
		"$(kv start_s <<<"$DRIVE_OUT")" "$(kv worker_s <<<"$DRIVE_OUT")" "$(kv first_s <<<"$DRIVE_OUT")" "$total" "$rate_c" \
		"$(kv cons_hwm_mb <<<"$DRIVE_OUT")" "$(kv cons_anon_mb <<<"$DRIVE_OUT")" \
		"$(kv prod_hwm_mb <<<"$DRIVE_OUT")" "$(kv prod_anon_mb <<<"$DRIVE_OUT")" \
		"$(kv prod_cpu_s <<<"$DRIVE_OUT")" "$(kv cons_cpu_s <<<"$DRIVE_OUT")" "$other"
	echo "         backlog: $size; applying processes seen: $(kv cons_pids <<<"$DRIVE_OUT"), serving: $(kv prod_pids <<<"$DRIVE_OUT")$([ "$ES_DEPS" = 0 ] || echo "; $ES_DEPS rows fetched as dependencies")"
	echo "$sys gen_s=$gen $DRIVE_OUT rate=$rate_c other=$other" >> "$CATCH"
}
if [[ $parts == *c* ]]; then
	echo "== (c) catch-up: $backlog_rows rows on both sides; consumer's cluster stopped; $backlog updates (n = n + 1) in"
	echo "   $(( backlog / 1000 )) transactions of 1000 rows committed on the producer; consumer's cluster started"
	echo "columns: gen_s = producing the backlog; from the start of the consumer's cluster: start_s = pg_ctl start"
	echo "  returned; worker_s = applying process first seen; first_s = the backlog's first transaction visible;"
	echo "  total_s = caught up; cons = applying process (eventstream worker / logical replication"
	echo "  worker), prod = serving process (eventstream worker / walsender): peak VmHWM and sampled peak RssAnon,"
	echo "  MB; cpu = CPU seconds of the whole cluster until caught up"
	echo
	printf '%-7s %8s %9s %9s %9s %9s %10s %9s %9s %9s %9s %9s %9s %6s\n' system gen_s start_s worker_s first_s total_s updates/s \
		cons_hwm cons_anon prod_hwm prod_anon prod_cpu cons_cpu other%
	run_catchup es
	run_catchup native
	echo
fi

# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

echo "== summary"
if [[ $parts == *a* ]]; then
	echo "(a) throughput, medians of $rounds round(s)"
	printf '%-6s %-28s %12s %12s %10s\n' workld "" eventstream native es/native
	# summary_row WORKLOAD LABEL COLUMN FORMAT FIRST_COLUMN: medians of a column of the results
	summary_row() {
		local es_v na_v
		es_v=$(awk -v w="$1" -v c="$3" '$1 == w && $2 == "es" { print $c }' "$RESULTS" | median)
		na_v=$(awk -v w="$1" -v c="$3" '$1 == w && $2 == "native" { print $c }' "$RESULTS" | median)
		printf "%-6s %-28s %12$4 %12$4 %10.3f\n" "$5" "$2" "$es_v" "$na_v" "$(awk -v a="$es_v" -v b="$na_v" 'BEGIN { print (b > 0 ? a / b : 0) }')"
	}
	for w in $WORKLOADS; do
		if [ "$w" = bulk ]; then
			summary_row "$w" "changes/s from commit *" 9 .0f "$w"
			summary_row "$w" "changes/s from start" 8 .0f ""
		else
			summary_row "$w" "changes/s from start *" 8 .0f "$w"
		fi
		summary_row "$w" "s producing (capture incl.)" 5 .2f ""
		summary_row "$w" "s lag after last commit" 6 .3f ""
	done
	echo "  * headline (higher is better): bulk from its commit (nothing can travel before it), the streams"
	echo "    of transactions from their start (the consumer applies while the producer writes)"
	es_cpu=$(awk '$2 == "es" { p += $10; c += $11 } END { printf "%.1f / %.1f", p, c }' "$RESULTS")
	na_cpu=$(awk '$2 == "native" { p += $10; c += $11 } END { printf "%.1f / %.1f", p, c }' "$RESULTS")
	echo "  CPU seconds over all (a) runs, producer / consumer cluster: eventstream $es_cpu, native $na_cpu"
fi
if [[ $parts == *b* ]]; then
	echo "(b) latency at $rate commits/s, ms:"
	for sys in es native; do
		line=$(awk -v s="$sys" '$1 == s' "$LAT")
		printf '  %-12s p50 %7s   p99 %7s   max %7s   (rate %s/s; CPU %% of one core: producer cluster %s, consumer cluster %s)\n' \
			"$([ $sys = es ] && echo eventstream || echo native)" "$(kv p50_ms <<<"$line")" "$(kv p99_ms <<<"$line")" \
			"$(kv max_ms <<<"$line")" "$(kv rate <<<"$line")" "$(kv prod_cpu_pct <<<"$line")" "$(kv cons_cpu_pct <<<"$line")"
	done
fi
if [[ $parts == *c* ]]; then
	echo "(c) catch-up of $backlog updates:"
	for sys in es native; do
		line=$(awk -v s="$sys" '$1 == s' "$CATCH")
		printf '  %-12s %8s s (%s updates/s; first transaction visible after %s s), applying process peak VmHWM %s MB / RssAnon %s MB; serving process %s / %s MB\n' \
			"$([ $sys = es ] && echo eventstream || echo native)" "$(kv total_s <<<"$line")" "$(kv rate <<<"$line")" "$(kv first_s <<<"$line")" \
			"$(kv cons_hwm_mb <<<"$line")" "$(kv cons_anon_mb <<<"$line")" "$(kv prod_hwm_mb <<<"$line")" "$(kv prod_anon_mb <<<"$line")"
	done
	es_t=$(awk '$1 == "es"' "$CATCH" | kv total_s); na_t=$(awk '$1 == "native"' "$CATCH" | kv total_s)
	printf '  ratio of times eventstream/native: %.2f\n' "$(awk -v a="$es_t" -v b="$na_t" 'BEGIN { print a / b }')"
fi

# What the servers logged at WARNING or worse (log_min_messages = warning).
echo
echo "== server logs: lines at WARNING or worse"
for c in $CLUSTERS; do
	n=$(grep -cE '(WARNING|ERROR|FATAL|PANIC):' "$WORK/$c.log" || true)
	echo "${CLUSTER_NAME[$c]}: $n"
	if [ "$n" -gt 0 ]; then
		grep -E '(WARNING|ERROR|FATAL|PANIC):' "$WORK/$c.log" | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //; s/[0-9]+/N/g' |
			sort | uniq -c | sort -rn | head -n 10 | sed 's/^/    /'
	fi
done

echo
echo "elapsed: $(( (SECONDS - BENCH_T0) / 60 )) min $(( (SECONDS - BENCH_T0) % 60 )) s (build included)"

worst=$(awk '{ print $12 }' "$RESULTS"; awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^other=/) print substr($i, 7) }' "$LAT" "$CATCH") || true
worst=$(awk '$1 > m { m = $1 } END { print m + 0 }' <<<"$worst")
if [ "$worst" -gt 10 ]; then
	echo
	echo "WARNING: up to $worst% of the machine's CPU went to other processes during a run"
	echo "         (column other%); the figures are disturbed, run again on a quiet machine."
fi
