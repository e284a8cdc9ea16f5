#!/usr/bin/env bash
# test/bench/http_serve.sh -- how fast does the HTTP endpoint serve a backlog?
#
# Writes a backlog of `rows` updates (default 1,000,000: one INSERT ...
# SELECT generate_series into table t (id int primary key, v text), one
# Create per row) for consumers that registered and were approved before it,
# then per round times:
#   http  draining one consumer's whole backlog over HTTP, GET
#         /api/eventstream/v1/updates?limit=1000 following the cursors until
#         more=false, on one keep-alive connection (test/bench/http_drain.pl,
#         HTTP::Tiny + JSON::XS, which decodes every page and checks that the
#         update ids rise and that the count is exactly `rows`);
#   copy  the ceiling: psql -c "COPY (SELECT id, update_type, ref_table,
#         docname, data, txid, origin, created_at FROM eventstream.update_log
#         ORDER BY id) TO STDOUT" > /dev/null over the Unix socket.
# Draining acknowledges what it pulled, so every round drains a consumer of
# its own (all registered before the backlog, so each sees all of it).  The
# order of the two alternates from round to round.  The summary gives the
# median updates/s of each and the ratio http/copy, plus the site worker's
# CPU seconds per drain and the client's, and warns when other processes
# took more than 10% of the machine's CPU during a run (column other%).
#
# Usage (as root, from anywhere):
#   bash test/bench/http_serve.sh [rounds] [rows]        (default 3 1000000)
#
# Server set-up, build and clean-up: test/bench/http_common.sh.
set -euo pipefail

usage() {
	echo "usage: bash test/bench/http_serve.sh [rounds] [rows]" >&2
	exit 2
}
ROUNDS=${1:-3}
ROWS=${2:-1000000}
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $ROWS =~ ^[1-9][0-9]*$ && $# -le 2 ]] || usage
COMMAND_LINE=$(printf '%q ' bash "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }
LIMIT=1000

BENCH_NAME=http_serve.sh
BENCH_PACKAGES="libjson-xs-perl"
. "$(dirname "${BASH_SOURCE[0]}")/http_common.sh"

setup_table_and_key
declare -a CURSORS
for (( r = 1; r <= ROUNDS; r++ )); do
	CURSORS[r]=$(register_consumer "http://serve-$r")
done

bench_header "HTTP serving benchmark"
echo "backlog:    $ROWS updates (Creates of table t), written after $ROUNDS consumers registered and were approved"
echo "http:       perl test/bench/http_drain.pl: GET updates?limit=$LIMIT following cursors until more=false, one keep-alive connection"
echo "copy:       psql -c \"COPY (SELECT id, update_type, ref_table, docname, data, txid, origin, created_at FROM eventstream.update_log ORDER BY id) TO STDOUT\" >/dev/null"
echo "rounds:     $ROUNDS (a fresh consumer per http drain; order alternates)"
echo

t0=$EPOCHREALTIME
psql_bench -c "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, $ROWS) g"
t1=$EPOCHREALTIME
logged=$(psql_bench -c "SELECT count(*) FROM eventstream.update_log")
[ "$logged" -eq "$ROWS" ] || bench_die "the backlog has $logged update logs, expected $ROWS"
psql_bench -c "VACUUM (ANALYZE) eventstream.update_log" -c "VACUUM (ANALYZE) t" -c "CHECKPOINT"
printf 'backlog written in %.1f s (%s update logs, %s of log table)\n\n' \
	"$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$logged" \
	"$(psql_bench -c "SELECT pg_size_pretty(pg_total_relation_size('eventstream.update_log'))")"

WPID=$(worker_pid)
RESULTS=$WORK/results
: > "$RESULTS"

# Each run prints its line and appends "what round updates seconds other%"
# to the results; other% is the share of the machine's CPU that neither the
# server nor the client used meanwhile.
TIMEFORMAT='%U %S'
run_http() {
	local r=$1 out updates pages secs conns ccpu first last w0 w1 other
	other_begin
	w0=$(proc_ticks "$WPID")
	{ time perl "$BENCH_DIR/http_drain.pl" "$BASE" "$KEY:$SECRET" "http://serve-$r" "${CURSORS[r]}" "$LIMIT" \
		> "$WORK/drain.out"; } 2> "$WORK/drain.time" || { cat "$WORK/drain.time" >&2; bench_die "round $r: the HTTP drain failed"; }
	w1=$(proc_ticks "$WPID")
	other=$(other_end "$(awk '{ print $1 + $2 }' "$WORK/drain.time")")
	read -r updates pages secs conns ccpu first last < "$WORK/drain.out"
	if [ "$updates" -ne "$ROWS" ]; then
		bench_die "FAILED: round $r drained $updates updates over HTTP ($pages pages, ids $first..$last), expected $ROWS"
	fi
	[ "$conns" -eq 1 ] || echo "WARNING: round $r used $conns connections (keep-alive expected one)" >&2
	printf '%-6s %-5s %10s %8.2f %12.0f %7s   %d pages, %d connection(s), worker cpu %.2f s, client cpu %.2f s\n' \
		"$r" http "$updates" "$secs" "$(awk -v n="$updates" -v s="$secs" 'BEGIN { print n / s }')" "$other" \
		"$pages" "$conns" "$(awk -v t="$((w1 - w0))" -v hz="$HZ" 'BEGIN { print t / hz }')" "$ccpu"
	echo "http $r $updates $secs $other" >> "$RESULTS"
}

run_copy() {
	local r=$1 t0 t1 secs other
	other_begin
	t0=$EPOCHREALTIME
	{ time psql_bench -c "COPY (SELECT id, update_type, ref_table, docname, data, txid, origin, created_at FROM eventstream.update_log ORDER BY id) TO STDOUT" \
		>/dev/null; } 2> "$WORK/copy.time"
	t1=$EPOCHREALTIME
	other=$(other_end "$(awk '{ print $1 + $2 }' "$WORK/copy.time")")
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
	printf '%-6s %-5s %10s %8.2f %12.0f %7s\n' "$r" copy "$ROWS" "$secs" \
		"$(awk -v n="$ROWS" -v s="$secs" 'BEGIN { print n / s }')" "$other"
	echo "copy $r $ROWS $secs $other" >> "$RESULTS"
}

printf '%-6s %-5s %10s %8s %12s %7s\n' round what updates seconds updates/s other%
for (( r = 1; r <= ROUNDS; r++ )); do
	if (( r % 2 )); then
		run_http "$r"; run_copy "$r"
	else
		run_copy "$r"; run_http "$r"
	fi
done

echo
echo "every http drain delivered exactly $ROWS updates in rising id order: OK"
echo
echo "== summary (median of $ROUNDS rounds, $ROWS updates each)"
http_med=$(awk '$1 == "http" { print $3 / $4 }' "$RESULTS" | median)
copy_med=$(awk '$1 == "copy" { print $3 / $4 }' "$RESULTS" | median)
printf '%-30s %12.0f updates/s\n' "http (limit=$LIMIT, keep-alive)" "$http_med"
printf '%-30s %12.0f updates/s\n' "copy (ceiling)" "$copy_med"
printf '%-30s %12.3f\n' "ratio http/copy" "$(awk -v h="$http_med" -v c="$copy_med" 'BEGIN { print h / c }')"

# A benchmark on a busy machine measures the other load as much as serving.
worst=$(awk '$5 > m { m = $5 } END { print m + 0 }' "$RESULTS")
if [ "$worst" -gt 10 ]; then
	echo
	echo "WARNING: up to $worst% of the machine's CPU went to other processes during a run"
	echo "         (column other%); the figures are disturbed, run again on a quiet machine."
fi
