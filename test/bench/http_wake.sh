#!/usr/bin/env bash
# test/bench/http_wake.sh -- how soon after a commit does a long-poll answer?
#
# One consumer, up to date, holds a long-poll (GET /api/eventstream/v1/updates
# ?...&limit=1000&wait=30) on the current cursor; once that pull has been
# made and parked, a writer runs BEGIN; INSERT INTO t one row; COMMIT.  The
# latency is the time from just before the client sends COMMIT to the moment
# the long-poll's reply has been received in full (CLOCK_MONOTONIC in both
# processes); it therefore includes the COMMIT round trip itself, which is
# reported separately, as is the time from COMMIT returning to the reply.
# Every reply must carry exactly the inserted row.  `commits` measured
# iterations (default 1000) after 20 uncounted warm-up ones; the summary
# gives p50, p90, p99 and max in milliseconds, and warns when other
# processes took more than 10% of the machine's CPU meanwhile.  The driver is
# test/bench/http_wake.pl (Perl: HTTP::Tiny keep-alive in a child process,
# DBD::Pg over the Unix socket in the parent).
#
# Usage (as root, from anywhere):
#   bash test/bench/http_wake.sh [commits]              (default 1000)
#
# Server set-up, build and clean-up: test/bench/http_common.sh.
set -euo pipefail

usage() {
	echo "usage: bash test/bench/http_wake.sh [commits]" >&2
	exit 2
}
COUNT=${1:-1000}
[[ $COUNT =~ ^[1-9][0-9]*$ && $# -le 1 ]] || usage
COMMAND_LINE=$(printf '%q ' bash "$0" "$@")
COMMAND_LINE=${COMMAND_LINE% }
WARMUP=20

BENCH_NAME=http_wake.sh
BENCH_PACKAGES="libjson-xs-perl libdbd-pg-perl"
. "$(dirname "${BASH_SOURCE[0]}")/http_common.sh"

setup_table_and_key
CURSOR=$(register_consumer "http://wake-1")

bench_header "long-poll wake latency benchmark"
echo "client:     perl test/bench/http_wake.pl: long-poll GET updates?limit=1000&wait=30 (HTTP::Tiny keep-alive) in one process,"
echo "            BEGIN; INSERT INTO t (one row); COMMIT (DBD::Pg, Unix socket) in another once the poll is parked"
echo "latency:    from just before COMMIT is sent to the long-poll's reply received in full (includes the COMMIT)"
echo "iterations: $COUNT measured, after $WARMUP warm-up"
echo

WPID=$(worker_pid)
TIMEFORMAT='%U %S'
other_begin
w0=$(proc_ticks "$WPID")
t0=$EPOCHREALTIME
{ time perl "$BENCH_DIR/http_wake.pl" "$BASE" "$KEY:$SECRET" "http://wake-1" "$CURSOR" "$WORK" "$PORT" "$COUNT" "$WARMUP" \
	> "$WORK/wake.out"; } 2> "$WORK/wake.time" || { cat "$WORK/wake.time" >&2; bench_die "the wake benchmark failed"; }
t1=$EPOCHREALTIME
w1=$(proc_ticks "$WPID")
other=$(other_end "$(awk '{ print $1 + $2 }' "$WORK/wake.time")")
n=$(wc -l < "$WORK/wake.out")
[ "$n" -eq "$COUNT" ] || bench_die "expected $COUNT measurements, got $n"
rows=$(psql_bench -c "SELECT count(*) FROM t")
[ "$rows" -eq $(( COUNT + WARMUP )) ] || bench_die "table t has $rows rows, expected $(( COUNT + WARMUP ))"
printf '%d commits in %.1f s, each answered with exactly its row: OK (site worker cpu %.2f s; other processes %s%% of the machine)\n' \
	"$(( COUNT + WARMUP ))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
	"$(awk -v t="$((w1 - w0))" -v hz="$HZ" 'BEGIN { print t / hz }')" "$other"

# percentiles COLUMN: "p50 p90 p99 max mean" of a column of wake.out
# (nearest-rank percentiles).
percentiles() {
	awk -v c="$1" '{ print $c }' "$WORK/wake.out" | sort -g |
		awk '{ v[NR] = $1; s += $1 }
			function rank(p,  k) { k = int(p * NR + 0.999999); if (k < 1) k = 1; return v[k] }
			END { printf "%9.3f %9.3f %9.3f %9.3f %9.3f\n", rank(0.50), rank(0.90), rank(0.99), v[NR], s / NR }'
}

echo
echo "== summary ($COUNT commits, milliseconds)"
printf '%-40s %9s %9s %9s %9s %9s\n' "" p50 p90 p99 max mean
printf '%-40s %s\n' "latency: COMMIT sent -> reply received" "$(percentiles 1)"
printf '%-40s %s\n' "  of which COMMIT round trip" "$(percentiles 2)"
printf '%-40s %s\n' "  COMMIT returned -> reply received" "$(percentiles 3)"
late=$(awk '$1 > 1000' "$WORK/wake.out" | wc -l)
if [ "$late" -gt 0 ]; then
	echo
	echo "WARNING: $late replies came more than 1 s after their COMMIT (a missed wake-up: the poll was"
	echo "         answered only by its wait=30 deadline or a later commit):"
	awk '$1 > 1000 { printf "         iteration %d: %.1f ms\n", $4, $1 }' "$WORK/wake.out"
fi
if [ "$other" -gt 10 ]; then
	echo
	echo "WARNING: $other% of the machine's CPU went to other processes during the run;"
	echo "         the figures are disturbed, run again on a quiet machine."
fi
