#!/usr/bin/env bash
# test/bench/capture.sh -- what does change capture cost the writing side?
#
# Measures the write throughput (pgbench TPS) of small single-row
# transactions, half INSERT and half UPDATE (test/bench/capture_workload.sql),
# on four identical tables of 10,000 rows that differ only in their AFTER ROW
# trigger:
#   none      bench_none     no trigger (the baseline)
#   es        bench_es       eventstream's C capture trigger, installed by
#                            approving a consumer's subscription
#   pgq       bench_pgq      pgq.logutriga('bench') (PgQ's C trigger)
#   plpgsql   bench_plpgsql  a PL/pgSQL trigger inserting to_jsonb(NEW), the
#                            operation and the table name into a log table
#
# Usage (as root, from anywhere):
#   bash test/bench/capture.sh [seconds_per_run] [rounds]     (default 15 3)
#
# It builds and installs eventstream (test/setup.sh), installs
# postgresql-15-pgq3 if missing, and runs a throwaway server: initdb into a
# private temporary directory, a free port found at start, listening on
# 127.0.0.1 and a Unix socket in that directory (pgbench uses the socket),
# fsync=off, synchronous_commit=off, shared_buffers=256MB,
# max_connections=20.  The server and the directory are removed on exit.
#
# Every run is pgbench -M prepared -c 4 -j 2 -T seconds_per_run.  The four
# configurations are interleaved round-robin for `rounds` rounds (the order
# rotates from round to round so no configuration always runs first), after
# one short warm-up run each.  Before every run the log tables are emptied,
# the table under test is vacuumed and analyzed, and a CHECKPOINT is taken;
# autovacuum is off and max_wal_size large so that neither starts in the
# middle of a run.  The summary gives the median TPS of each configuration
# and its ratio to the no-trigger median.  Each run also reports other_cpu%,
# the share of the machine's CPU used by anything but this benchmark's server
# and pgbench while it ran; the script warns when that exceeds 10%, since the
# figures then measure the other load too.
set -euo pipefail

usage() {
	echo "usage: bash test/bench/capture.sh [seconds_per_run] [rounds]" >&2
	exit 2
}
SECS=${1:-15}
ROUNDS=${2:-3}
[[ $SECS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ && $# -le 2 ]] || usage
COMMAND_LINE=$(printf '%q ' bash "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKLOAD=$BENCH_DIR/capture_workload.sql
CLIENTS=4
THREADS=2
ROWS=10000
WARMUP_SECS=$(( SECS < 3 ? SECS : 3 ))
CONFIGS=(none es pgq plpgsql)

# ---------------------------------------------------------------------------
# Build and install eventstream and PgQ
# ---------------------------------------------------------------------------

own_build=${ES_BUILD:-}
. "$BENCH_DIR/../setup.sh"		# sets ES_BUILD, PG_BIN, as_pg; checks root

es_install_packages postgresql-15-pgq3

# ---------------------------------------------------------------------------
# A throwaway server
# ---------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/eventstream-bench.XXXXXX)
BENCH_DATA_DIRS=$WORK/data
chmod 755 "$WORK"
chown postgres:postgres "$WORK"
cleanup() {
	if [ -f "$WORK/data/postmaster.pid" ]; then
		$as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	rm -rf "$WORK"
	# The build directory too, unless the caller supplied it.
	[ -n "$own_build" ] || rm -rf "$ES_BUILD"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"		# somewhere the postgres user may be

$as_pg "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF

# test/bench/capture.sh
shared_preload_libraries = 'eventstream'
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 20
shared_buffers = 256MB
fsync = off
synchronous_commit = off
autovacuum = off
max_wal_size = 8GB
checkpoint_timeout = 1h
CONF

# A TCP port nobody listens on: nothing answers a connection to it.  Another
# process may still take it before the server does, so starting is retried
# with a fresh port.
port_answers() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
free_port() {
	local p
	for _ in $(seq 100); do
		p=$(( 20000 + RANDOM % 40000 ))
		if ! port_answers "$p" && [ ! -e "$WORK/.s.PGSQL.$p" ]; then
			echo "$p"
			return 0
		fi
	done
	echo "capture.sh: found no free TCP port" >&2
	return 1
}
PORT=
for attempt in 1 2 3 4 5; do
	p=$(free_port)
	if $as_pg "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -o "-p $p" -w -t 60 start >/dev/null; then
		PORT=$p
		break
	fi
	echo "== server did not start on port $p (attempt $attempt)" >&2
	tail -n 5 "$WORK/server.log" >&2 || true
done
[ -n "$PORT" ] || { echo "capture.sh: could not start the server" >&2; exit 1; }

psql_bench() {
	$as_pg "$PG_BIN/psql" -h "$WORK" -p "$PORT" -X -q -At -v ON_ERROR_STOP=1 -d bench "$@"
}
$as_pg "$PG_BIN/createdb" -h "$WORK" -p "$PORT" bench

# ---------------------------------------------------------------------------
# Four identical tables, each with its own capture
# ---------------------------------------------------------------------------

psql_bench >/dev/null <<SQL
CREATE EXTENSION eventstream;
CREATE EXTENSION pgq;

CREATE TABLE bench_none    (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, val int, note text);
CREATE TABLE bench_es      (LIKE bench_none INCLUDING ALL);
CREATE TABLE bench_pgq     (LIKE bench_none INCLUDING ALL);
CREATE TABLE bench_plpgsql (LIKE bench_none INCLUDING ALL);
INSERT INTO bench_none    (val, note) SELECT g, 'benchmark row' FROM generate_series(1, $ROWS) g;
INSERT INTO bench_es      (val, note) SELECT g, 'benchmark row' FROM generate_series(1, $ROWS) g;
INSERT INTO bench_pgq     (val, note) SELECT g, 'benchmark row' FROM generate_series(1, $ROWS) g;
INSERT INTO bench_plpgsql (val, note) SELECT g, 'benchmark row' FROM generate_series(1, $ROWS) g;

-- eventstream: the capture trigger appears once a subscription is approved.
CREATE ROLE bench_sub;
GRANT SELECT ON public.bench_es TO bench_sub;
SELECT eventstream._register_consumer('http://bench-consumer', gen_random_uuid(), 'k', 'bench_sub', '["public.bench_es"]') IS NOT NULL;
SELECT eventstream.approve('http://bench-consumer', 'public.bench_es');

-- PgQ
SELECT pgq.create_queue('bench');
CREATE TRIGGER bench_pgq_capture AFTER INSERT OR UPDATE OR DELETE ON bench_pgq
	FOR EACH ROW EXECUTE FUNCTION pgq.logutriga('bench');

-- PL/pgSQL
CREATE TABLE bench_plpgsql_log (
	id		bigserial PRIMARY KEY,
	op		text NOT NULL,
	tbl		text NOT NULL,
	data	jsonb
);
CREATE FUNCTION bench_plpgsql_capture() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	IF TG_OP = 'DELETE' THEN
		INSERT INTO bench_plpgsql_log (op, tbl, data)
			VALUES (TG_OP, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, to_jsonb(OLD));
	ELSE
		INSERT INTO bench_plpgsql_log (op, tbl, data)
			VALUES (TG_OP, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, to_jsonb(NEW));
	END IF;
	RETURN NULL;
END
\$\$;
CREATE TRIGGER bench_plpgsql_capture AFTER INSERT OR UPDATE OR DELETE ON bench_plpgsql
	FOR EACH ROW EXECUTE FUNCTION bench_plpgsql_capture();
SQL

PGQ_TABLE=$(psql_bench -c "SELECT queue_data_pfx FROM pgq.queue WHERE queue_name = 'bench'")

table_of() { echo "bench_$1"; }
# The log a configuration writes to ('' for none); it includes inheritance
# children, so for PgQ it covers all the queue's rotating event tables.
log_of() {
	case $1 in
	none) echo "" ;;
	es) echo "eventstream.update_log" ;;
	pgq) echo "$PGQ_TABLE" ;;
	plpgsql) echo "bench_plpgsql_log" ;;
	esac
}

# Each table has exactly the row trigger it should (none has none);
# eventstream's statement-level TRUNCATE trigger does not fire here.
for c in "${CONFIGS[@]}"; do
	t=$(table_of "$c")
	trg=$(psql_bench -c "SELECT coalesce(string_agg(tgname, ',' ORDER BY tgname), '') FROM pg_trigger WHERE tgrelid = 'public.$t'::regclass AND NOT tgisinternal AND tgtype::int & 1 = 1")
	case $c in
	none) want="" ;;
	es) want="eventstream_capture" ;;
	pgq) want="bench_pgq_capture" ;;
	plpgsql) want="bench_plpgsql_capture" ;;
	esac
	if [ "$trg" != "$want" ]; then
		echo "capture.sh: table $t has triggers '$trg', expected '$want'" >&2
		exit 1
	fi
	sed "s/@TABLE@/$t/g" "$WORKLOAD" > "$WORK/$c.pgbench"
done
chown postgres:postgres "$WORK"/*.pgbench

# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------

# Same starting point for every run: empty logs, the table vacuumed, a fresh
# checkpoint (so full-page writes weigh the same on each run).
prepare_run() {
	psql_bench -c "TRUNCATE eventstream.update_log, $PGQ_TABLE, bench_plpgsql_log" \
		-c "VACUUM (ANALYZE) $(table_of "$1")" \
		-c "CHECKPOINT"
}

. "$BENCH_DIR/cpu.sh"		# machine_busy, other_begin / other_end, median

# run CONFIG SECONDS: prints "tps transactions logged_rows other_cpu_percent"
# where other_cpu_percent is the share of the machine's CPU that neither the
# server nor pgbench used while pgbench ran (other processes, the kernel).
run() {
	local c=$1 secs=$2 out tps xacts logged=- log other
	prepare_run "$c"
	other_begin
	TIMEFORMAT='%U %S'
	if ! { time $as_pg "$PG_BIN/pgbench" -h "$WORK" -p "$PORT" -n -M prepared \
		-c "$CLIENTS" -j "$THREADS" -T "$secs" -f "$WORK/$c.pgbench" bench \
		>"$WORK/pgbench.out" 2>&1; } 2>"$WORK/pgbench.time"; then
		cat "$WORK/pgbench.out" >&2
		echo "capture.sh: pgbench failed for $c" >&2
		exit 1
	fi
	other=$(other_end "$(awk '{ print $1 + $2 }' "$WORK/pgbench.time")")
	out=$(cat "$WORK/pgbench.out")
	tps=$(awk '/^tps = /{ print $3; exit }' <<<"$out")
	xacts=$(awk -F': ' '/^number of transactions actually processed/{ print $2; exit }' <<<"$out")
	if [ -z "$tps" ] || [ -z "$xacts" ]; then
		echo "$out" >&2
		echo "capture.sh: could not read pgbench's result for $c" >&2
		exit 1
	fi
	log=$(log_of "$c")
	[ -z "$log" ] || logged=$(psql_bench -c "SELECT count(*) FROM $log")
	if [ "$c" = es ] && ! [ "$logged" -gt 0 ]; then
		echo "capture.sh: FAILED: eventstream.update_log is empty after the eventstream run ($xacts transactions)" >&2
		exit 1
	fi
	echo "$tps $xacts $logged $other"
}

echo "== eventstream capture benchmark"
echo "command:    $COMMAND_LINE"
echo "nproc:      $(nproc)"
echo "postgres:   $(psql_bench -c 'SELECT version()')"
echo "pgbench:    $($as_pg "$PG_BIN/pgbench" --version)"
echo "workload:   -M prepared -c $CLIENTS -j $THREADS -T $SECS, 50% INSERT / 50% UPDATE, $ROWS rows per table"
echo "rounds:     $ROUNDS (configurations interleaved; warm-up ${WARMUP_SECS}s each first)"
echo "server:     port $PORT, fsync=off synchronous_commit=off shared_buffers=256MB autovacuum=off"
echo

for c in "${CONFIGS[@]}"; do
	run "$c" "$WARMUP_SECS" >/dev/null
done

RESULTS=$WORK/results
: > "$RESULTS"
printf '%-6s %-8s %12s %12s %12s %10s\n' round config tps xacts logged other_cpu%
n=${#CONFIGS[@]}
for (( r = 0; r < ROUNDS; r++ )); do
	for (( i = 0; i < n; i++ )); do
		c=${CONFIGS[(i + r) % n]}
		line=$(run "$c" "$SECS")
		read -r tps xacts logged other <<<"$line"
		printf '%-6s %-8s %12.1f %12s %12s %10s\n' $((r + 1)) "$c" "$tps" "$xacts" "$logged" "$other"
		echo "$c $tps $xacts $logged $other" >> "$RESULTS"
	done
done

# Every eventstream run was checked to log (run fails otherwise); show how
# completely: one log row per transaction is expected.
echo
awk '$1 == "es" { x += $3; l += $4; if (min == "" || $4 < min) min = $4 }
	END { printf "eventstream logged %d rows for %d transactions over its runs (fewest in a run: %d): OK\n", l, x, min }' "$RESULTS"

echo
echo "== summary (median of $ROUNDS runs of ${SECS}s each)"
base=$(awk '$1 == "none" { print $2 }' "$RESULTS" | median)
printf '%-8s %12s %14s\n' config median_tps ratio_vs_none
for c in "${CONFIGS[@]}"; do
	m=$(awk -v c="$c" '$1 == c { print $2 }' "$RESULTS" | median)
	printf '%-8s %12.1f %14.3f\n' "$c" "$m" "$(awk -v m="$m" -v b="$base" 'BEGIN { print m / b }')"
done

# A benchmark on a busy machine measures the other load as much as capture.
worst=$(awk '$5 > m { m = $5 } END { print m + 0 }' "$RESULTS")
if [ "$worst" -gt 10 ]; then
	echo
	echo "WARNING: up to $worst% of the machine's CPU went to other processes during a run"
	echo "         (column other_cpu%); the figures are disturbed, run again on a quiet machine."
fi
